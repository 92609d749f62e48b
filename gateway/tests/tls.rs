//! TLS on the public listener: boto3 and the AWS CLI invoke over HTTPS
//! against the gateway's certificate (given as their CA bundle), plain HTTP
//! to the TLS port gets no answer, the internal listener stays plain, and
//! a replaced certificate is served without a restart.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{LocalGateway, free_port, python_function};
use rustls::pki_types::{CertificateDer, ServerName};

const ECHO: &str = "def handler(e, c):\n    return e\n";

fn write_pair(dir: &Path) -> CertificateDer<'static> {
    let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("certificate");
    let der = c.cert.der().clone();
    // Written beside and renamed in, as a mounted Secret changes.
    for (name, text) in [
        ("tls.key", c.signing_key.serialize_pem()),
        ("tls.crt", c.cert.pem()),
    ] {
        let staged = dir.join(format!("{name}.new"));
        std::fs::write(&staged, text).expect("write");
        std::fs::rename(&staged, dir.join(name)).expect("rename");
    }
    der
}

/// One HTTPS GET trusting only `ca`: the status line and the certificate
/// the server presented, or `None` if the handshake failed.
fn https_get(
    port: u16,
    path: &str,
    ca: &CertificateDer<'static>,
) -> Option<(String, CertificateDer<'static>)> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    let _ = tls.read_to_string(&mut answer);
    let presented = conn.peer_certificates()?.first()?.clone();
    Some((answer.lines().next().unwrap_or("").to_string(), presented))
}

#[test]
fn https_with_real_clients_and_a_certificate_renewed_in_place() {
    let dir = common::temp_dir("tls-cert");
    let first = write_pair(&dir);
    let internal_port = free_port();
    let internal_at = format!("127.0.0.1:{internal_port}");
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let gw = LocalGateway::start(
        "tls",
        &[("echo.yaml", python_function("echo", ECHO, ""))],
        &[
            "--internal-listen",
            &internal_at,
            "--tls-cert",
            cert.to_str().expect("utf-8"),
            "--tls-key",
            key.to_str().expect("utf-8"),
        ],
    );
    let port: u16 = gw
        .base
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let https = format!("https://127.0.0.1:{port}");

    let (status, presented) = https_get(port, "/2015-03-31/functions/", &first).expect("handshake");
    assert!(status.contains("200"), "{status}\n{}", gw.log());
    assert_eq!(presented, first);

    // Plain HTTP to the TLS port: no HTTP answer.
    let mut plain = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    plain
        .write_all(b"GET /2015-03-31/functions/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/1.1 200"),
        "plain HTTP was served"
    );

    // The internal listener stays plain HTTP.
    let mut internal = TcpStream::connect(("127.0.0.1", internal_port)).expect("connect");
    internal
        .write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut answer = String::new();
    internal.read_to_string(&mut answer).expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // boto3 and the AWS CLI over HTTPS, trusting the certificate as their CA bundle.
    if let Some(python) = common::sdk_python() {
        let ca = dir.join("ca.pem");
        std::fs::copy(&cert, &ca).expect("ca");
        let script = r#"
import sys, json, boto3
from botocore.config import Config
client = boto3.client("lambda", endpoint_url=sys.argv[1], region_name="us-east-1",
    aws_access_key_id="x", aws_secret_access_key="x", verify=sys.argv[2],
    config=Config(retries={"max_attempts": 1}))
r = client.invoke(FunctionName="echo", Payload=b'{"over":"tls"}')
assert r["StatusCode"] == 200, r
assert json.loads(r["Payload"].read()) == {"over": "tls"}
"#;
        let out = std::process::Command::new(&python)
            .args(["-c", script, &https, ca.to_str().expect("utf-8")])
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .expect("python");
        assert!(
            out.status.success(),
            "boto3 over https: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            gw.log()
        );
        let aws = python.parent().expect("venv bin").join("aws");
        let outfile = dir.join("out.json");
        let out = std::process::Command::new(&aws)
            .args(["lambda", "invoke", "--endpoint-url", &https, "--ca-bundle"])
            .arg(&ca)
            .args(["--no-sign-request", "--region", "us-east-1"])
            .args(["--function-name", "echo"])
            .args(["--payload", r#"{"via":"cli"}"#])
            .arg(&outfile)
            .env("HOME", &dir)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_MAX_ATTEMPTS", "1")
            .output()
            .expect("aws");
        assert!(
            out.status.success(),
            "aws cli over https: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&outfile).expect("out")).expect("json");
        assert_eq!(v, serde_json::json!({"via": "cli"}));
    }

    // A renewed certificate is served without a restart.
    let second = write_pair(&dir);
    let mut served = None;
    for _ in 0..40 {
        if let Some((status, presented)) = https_get(port, "/2015-03-31/functions/", &second)
            && presented == second
            && status.contains("200")
        {
            served = Some(presented);
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        served.is_some(),
        "the renewed certificate is served\n{}",
        gw.log()
    );
}
