//! Signed invokes: with AWS credentials the tool signs every invoke (SigV4,
//! service `lambda`) so that a gateway requiring signatures accepts them;
//! the verifier here is the gateway's own.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use porchlight_gateway::sigv4::{Credentials, SignedRequest};
use porchlight_load::progress::ProgressMode;
use porchlight_load::sign::Signer;
use porchlight_load::workload::WeightedFunction;
use porchlight_load::{Load, RunConfig, profile::Profile, run};
use tokio_util::sync::CancellationToken;

struct Verifier {
    credentials: Credentials,
    accepted: AtomicU64,
    refused: AtomicU64,
}

async fn verify(
    State(v): State<Arc<Verifier>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let request = SignedRequest {
        method: method.as_str(),
        path: uri.path(),
        query: uri.query().unwrap_or(""),
        headers: &headers,
        body: &body,
    };
    match v
        .credentials
        .verify(&request, time::OffsetDateTime::now_utc())
    {
        Ok(caller) if caller.may_invoke("hello") => {
            v.accepted.fetch_add(1, Ordering::SeqCst);
            StatusCode::OK
        }
        _ => {
            v.refused.fetch_add(1, Ordering::SeqCst);
            StatusCode::FORBIDDEN
        }
    }
}

async fn start() -> (String, Arc<Verifier>) {
    let v = Arc::new(Verifier {
        credentials: Credentials::parse(
            "keys:\n  - {accessKeyId: AKIDLOAD, secretAccessKey: load-secret, functions: [hello]}\n",
        )
        .expect("keys"),
        accepted: AtomicU64::new(0),
        refused: AtomicU64::new(0),
    });
    let app = Router::new().fallback(verify).with_state(v.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), v)
}

fn config(target: &str, signer: Option<Signer>, out: &str) -> RunConfig {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("porchlight-load-signed")
        .join(out);
    let _ = std::fs::remove_dir_all(&dir);
    RunConfig {
        target: target.to_string(),
        functions: vec![WeightedFunction::parse("hello").expect("function")],
        load: Load::Rate(Profile::parse("100:1s", None).expect("profile")),
        payload_size: 64,
        timeout: Duration::from_secs(10),
        max_in_flight: 100,
        out: dir,
        observe_after: Duration::ZERO,
        scale_target: None,
        font: PathBuf::from(porchlight_load::charts::DEFAULT_FONT),
        progress: ProgressMode::Quiet,
        signer,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_invokes_pass_the_gateways_verifier_and_unsigned_ones_do_not() {
    let (target, v) = start().await;
    let signed = Signer::new("AKIDLOAD", "load-secret", "us-east-1");
    let out = run(
        config(&target, Some(signed), "signed"),
        None,
        CancellationToken::new(),
    )
    .await
    .expect("run");
    assert_eq!(out.summary.requests.attempted, 100);
    assert_eq!(out.summary.requests.ok, 100, "every signed invoke accepted");
    assert_eq!(v.accepted.load(Ordering::SeqCst), 100);
    assert_eq!(v.refused.load(Ordering::SeqCst), 0);

    for (name, signer) in [
        ("unsigned", None),
        (
            "wrong-secret",
            Some(Signer::new("AKIDLOAD", "not-the-secret", "us-east-1")),
        ),
    ] {
        let out = run(
            config(&target, signer, name),
            None,
            CancellationToken::new(),
        )
        .await
        .expect("run");
        assert_eq!(out.summary.requests.ok, 0, "{name}: none accepted");
    }
    assert_eq!(v.accepted.load(Ordering::SeqCst), 100);
    assert_eq!(v.refused.load(Ordering::SeqCst), 200);
}
