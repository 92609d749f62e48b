//! SigV4 on the Lambda API with real clients that sign natively: boto3 and
//! the AWS CLI, unchanged, against a local gateway started with
//! `--auth-keys`. Right key, wrong secret, unknown key, unsigned, a key
//! limited to other functions, and a clock skewed past 5 minutes, each with
//! Lambda's error code as the client parses it.

mod common;

use common::{LocalGateway, python_function};

const KEYS: &str = "keys:
  - accessKeyId: AKIDPORCHLIGHTALL
    secretAccessKey: all-functions-secret
  - accessKeyId: AKIDPORCHLIGHTECHO
    secretAccessKey: echo-only-secret
    functions: [echo]
regions: [us-east-1]
";

const ECHO: &str = "def handler(e, c):\n    return e\n";

/// An HTTP API behind a trigger: answers with the path it was called on.
const WEB: &str =
    "def handler(e, c):\n    return {'statusCode': 200, 'body': 'hello ' + e['rawPath']}\n";

const PRIVATE_TRIGGER: &str = "  triggers:
    - http:
        payloadFormat: \"2.0\"
        auth: AWS_IAM
        cors:
          allowOrigins: [https://app.example.com]
          allowMethods: [GET, POST]
          allowHeaders: [content-type, authorization, x-amz-date]
          maxAge: 300
";

const HTTP_SCRIPT: &str = r#"
import sys, urllib.request, urllib.error
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

base = sys.argv[1]

def call(method, path, headers=None, sign=None):
    url = base + path
    headers = dict(headers or {})
    if sign:
        req = AWSRequest(method=method, url=url, data=b"", headers=headers)
        SigV4Auth(Credentials(*sign), "lambda", "us-east-1").add_auth(req)
        headers = dict(req.headers.items())
    r = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(r) as resp:
            return resp.status, resp.read().decode(), resp.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), e.headers

ALL = ("AKIDPORCHLIGHTALL", "all-functions-secret")
ECHO_ONLY = ("AKIDPORCHLIGHTECHO", "echo-only-secret")

status, body, h = call("GET", "/http/private/items", sign=ALL)
assert (status, body) == (200, "hello /items"), (status, body)
status, body, h = call("GET", "/http/private/items")
assert status == 403 and h["x-amzn-ErrorType"] == "MissingAuthenticationTokenException", (status, body)
status, body, h = call("GET", "/http/private/items", sign=("AKIDPORCHLIGHTALL", "wrong"))
assert status == 403 and h["x-amzn-ErrorType"] == "InvalidSignatureException", (status, body)
status, body, h = call("GET", "/http/private/items", sign=ECHO_ONLY)
assert status == 403 and h["x-amzn-ErrorType"] == "AccessDeniedException", (status, body)
# A public trigger stays public on a gateway with keys.
status, body, h = call("GET", "/http/public/x")
assert (status, body) == (200, "hello /x"), (status, body)

# CORS preflight, answered by the gateway (no signature needed), and the
# headers on a signed call from an allowed origin.
pre = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
       "Access-Control-Request-Headers": "content-type, authorization"}
status, body, h = call("OPTIONS", "/http/private/items", pre)
assert status == 200 and h["Access-Control-Allow-Origin"] == "https://app.example.com", (status, dict(h))
assert h["Access-Control-Max-Age"] == "300" and "POST" in h["Access-Control-Allow-Methods"], dict(h)
status, body, h = call("OPTIONS", "/http/private/items", dict(pre, Origin="https://evil.example"))
assert status == 200 and h.get("Access-Control-Allow-Origin") is None, dict(h)
status, body, h = call("GET", "/http/private/items", {"Origin": "https://app.example.com"}, sign=ALL)
assert status == 200 and h["Access-Control-Allow-Origin"] == "https://app.example.com", dict(h)
print("http triggers ok")
"#;

const BOTO3_SCRIPT: &str = r#"
import datetime, json, sys
import boto3, botocore.auth
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

url = sys.argv[1]
# No retries: a refused signature must surface as it is.
once = Config(retries={"total_max_attempts": 1})

def client(key="AKIDPORCHLIGHTALL", secret="all-functions-secret", config=once, region="us-east-1"):
    return boto3.client("lambda", endpoint_url=url, region_name=region,
                        aws_access_key_id=key, aws_secret_access_key=secret, config=config)

def refused(c, code, status=403, function="echo"):
    try:
        c.invoke(FunctionName=function, Payload=b"{}")
    except ClientError as e:
        got = (e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"])
        assert got == (code, status), (got, e.response)
        return e.response["Error"]["Message"]
    raise SystemExit(f"expected {code}")

c = client()
r = c.invoke(FunctionName="echo", Payload=json.dumps({"signed": True}))
assert r["StatusCode"] == 200 and json.loads(r["Payload"].read()) == {"signed": True}, r
r = c.invoke(FunctionName="arn:aws:lambda:us-east-1:000000000000:function:other", Qualifier="$LATEST", Payload=b'{"n": 1}')
assert json.loads(r["Payload"].read()) == {"n": 1}, r
r = c.invoke(FunctionName="echo", InvocationType="Event", Payload=b"{}")
assert r["StatusCode"] == 202, r
f = c.get_function(FunctionName="echo")["Configuration"]
assert f["Environment"]["Variables"] == {"GREETING": "hi"}, f
assert sorted(x["FunctionName"] for x in c.list_functions()["Functions"]) == ["echo", "other", "private", "public"]

m = refused(client(secret="wrong"), "InvalidSignatureException")
assert "signature we calculated does not match" in m, m
m = refused(client(key="AKIDUNKNOWN"), "UnrecognizedClientException")
assert m == "The security token included in the request is invalid.", m
refused(client(config=Config(signature_version=UNSIGNED, retries={"total_max_attempts": 1})), "MissingAuthenticationTokenException")
m = refused(client(region="eu-west-1"), "InvalidSignatureException")
assert "valid region" in m, m

echo_only = client("AKIDPORCHLIGHTECHO", "echo-only-secret")
assert echo_only.invoke(FunctionName="echo", Payload=b"{}")["StatusCode"] == 200
m = refused(echo_only, "AccessDeniedException", function="other")
assert "AKIDPORCHLIGHTECHO is not authorized to perform: lambda:InvokeFunction" in m, m
assert [x["FunctionName"] for x in echo_only.list_functions()["Functions"]] == ["echo"]

real = botocore.auth.get_current_datetime
for skew, words in ((-6, "Signature expired"), (6, "Signature not yet current")):
    botocore.auth.get_current_datetime = lambda: real() + datetime.timedelta(minutes=skew)
    m = refused(client(), "InvalidSignatureException")
    assert m.startswith(words), m
botocore.auth.get_current_datetime = lambda: real() - datetime.timedelta(minutes=4)
assert client().invoke(FunctionName="echo", Payload=b"{}")["StatusCode"] == 200
print("boto3 signed ok")
"#;

#[test]
fn boto3_and_the_aws_cli_sign_and_lambdas_errors_come_back() {
    let Some(python) = common::sdk_python() else {
        return;
    };
    let dir = common::temp_dir("signed-keys");
    let keys = dir.join("keys.yaml");
    std::fs::write(&keys, KEYS).expect("keys");
    let gw = LocalGateway::start(
        "signed",
        &[
            (
                "echo.yaml",
                python_function("echo", ECHO, "  env:\n    GREETING: hi\n"),
            ),
            ("other.yaml", python_function("other", ECHO, "")),
            (
                "private.yaml",
                python_function("private", WEB, PRIVATE_TRIGGER),
            ),
            (
                "public.yaml",
                python_function(
                    "public",
                    WEB,
                    "  triggers:\n    - http: {payloadFormat: \"2.0\"}\n",
                ),
            ),
        ],
        &["--auth-keys", keys.to_str().expect("utf-8 path")],
    );
    // Runs one of the scripts against the gateway; it must succeed.
    let run = |what: &str, script: &str| {
        let out = std::process::Command::new(&python)
            .args(["-c", script, &gw.base])
            .env("HOME", &dir)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE")
            .output()
            .expect("python");
        assert!(
            out.status.success(),
            "{what}: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            gw.log()
        );
    };
    run("boto3", BOTO3_SCRIPT);
    run("http triggers", HTTP_SCRIPT);

    // The AWS CLI, configured as `aws configure` would (a credentials file).
    let aws_dir = dir.join(".aws");
    std::fs::create_dir_all(&aws_dir).expect("dir");
    std::fs::write(
        aws_dir.join("credentials"),
        "[default]\naws_access_key_id = AKIDPORCHLIGHTECHO\naws_secret_access_key = echo-only-secret\n[wrong]\naws_access_key_id = AKIDPORCHLIGHTECHO\naws_secret_access_key = not-the-secret\n",
    )
    .expect("credentials");
    std::fs::write(
        aws_dir.join("config"),
        "[default]\nregion = us-east-1\n[profile wrong]\nregion = us-east-1\n",
    )
    .expect("config");
    let aws = python.parent().expect("venv bin").join("aws");
    let outfile = dir.join("out.json");
    let payload = dir.join("in.json");
    std::fs::write(&payload, r#"{"via":"signed-cli"}"#).expect("payload");
    let cli = |profile: &str, function: &str| {
        std::process::Command::new(&aws)
            .args([
                "lambda",
                "invoke",
                "--endpoint-url",
                &gw.base,
                "--profile",
                profile,
            ])
            .args(["--function-name", function, "--payload"])
            .arg(format!("fileb://{}", payload.display()))
            .arg(&outfile)
            .env("HOME", &dir)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_MAX_ATTEMPTS", "1")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .output()
            .expect("aws")
    };
    let ok = cli("default", "echo");
    assert!(
        ok.status.success(),
        "aws cli: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&outfile).expect("out")).expect("json");
    assert_eq!(result, serde_json::json!({"via": "signed-cli"}));
    for (profile, function, code) in [
        ("wrong", "echo", "InvalidSignatureException"),
        ("default", "other", "AccessDeniedException"),
    ] {
        let out = cli(profile, function);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{profile} {function} must fail");
        assert!(
            stderr.contains(&format!("({code})")),
            "{profile} {function}: {stderr}"
        );
    }

    // Keys rotate without a restart: the file is replaced (as a mounted
    // Secret is), the new key works and the dropped one is unknown.
    std::fs::write(
        aws_dir.join("credentials"),
        "[default]\naws_access_key_id = AKIDPORCHLIGHTECHO\naws_secret_access_key = echo-only-secret\n[rotated]\naws_access_key_id = AKIDROTATED\naws_secret_access_key = rotated-secret\n",
    )
    .expect("credentials");
    std::fs::write(
        aws_dir.join("config"),
        "[default]\nregion = us-east-1\n[profile rotated]\nregion = us-east-1\n",
    )
    .expect("config");
    let staged = dir.join("keys.yaml.new");
    std::fs::write(
        &staged,
        "keys:\n  - {accessKeyId: AKIDROTATED, secretAccessKey: rotated-secret, functions: [echo]}\n",
    )
    .expect("new keys");
    std::fs::rename(&staged, &keys).expect("replace keys");
    let mut rotated = false;
    for _ in 0..30 {
        if cli("rotated", "echo").status.success() {
            rotated = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert!(rotated, "the rotated key is accepted\n{}", gw.log());
    let old = cli("default", "echo");
    assert!(
        String::from_utf8_lossy(&old.stderr).contains("(UnrecognizedClientException)"),
        "the dropped key is unknown: {}",
        String::from_utf8_lossy(&old.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
