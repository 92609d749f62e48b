//! Local mode with the real shim: every ingress, bad input, async retries,
//! and real AWS clients (boto3, the AWS CLI) when available.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{LocalGateway, poll, python_function, read_markers};
use serde_json::{Value, json};

fn manifests(markers: &Path) -> Vec<(&'static str, String)> {
    let env = format!("  env:\n    MARKER_DIR: {}\n", markers.display());
    let marker_code = r#"import json, os, uuid
def handler(event, context):
    path = os.path.join(os.environ["MARKER_DIR"], uuid.uuid4().hex + ".json")
    with open(path, "w") as f:
        json.dump({"requestId": context.aws_request_id, "event": event, "pid": os.getpid()}, f)
    return event"#;
    let fail_code = r#"import json, os, uuid
def handler(event, context):
    path = os.path.join(os.environ["MARKER_DIR"], uuid.uuid4().hex + ".json")
    with open(path, "w") as f:
        json.dump({"requestId": context.aws_request_id, "event": event, "failed": True}, f)
    raise RuntimeError("boom")"#;
    vec![
        (
            "marker.yaml",
            python_function(
                "marker",
                marker_code,
                &format!(
                    "{env}  triggers:\n    - s3: {{bucket: uploads, prefix: in/, suffix: .txt}}\n    - cloudevents: {{type: com.example.ping}}\n"
                ),
            ),
        ),
        (
            "echo.yaml",
            python_function("echo", "def handler(event, context):\n    return event", ""),
        ),
        ("fail.yaml", python_function("fail", fail_code, &env)),
        (
            "badhttp.yaml",
            python_function(
                "badhttp",
                "def handler(event, context):\n    return {\"statusCode\": \"abc\", \"body\": 1}",
                "  triggers:\n    - http: {}\n",
            ),
        ),
        (
            "v2.yaml",
            python_function(
                "v2",
                "def handler(event, context):\n    return {\"path\": event[\"rawPath\"], \"q\": event.get(\"queryStringParameters\")}",
                "  triggers:\n    - http: {payloadFormat: \"2.0\"}\n",
            ),
        ),
        (
            "users-api.yaml",
            include_str!("../../examples/users-api.yaml").to_string(),
        ),
    ]
}

fn start(tag: &str) -> (LocalGateway, std::path::PathBuf) {
    let markers = common::temp_dir(&format!("{tag}-markers"));
    let gw = LocalGateway::start(tag, &manifests(&markers), &["--async-retry-base", "50ms"]);
    (gw, markers)
}

async fn markers_matching(dir: &Path, n: usize, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    poll(200, Duration::from_millis(50), || {
        let found: Vec<Value> = read_markers(dir).into_iter().filter(|m| pred(m)).collect();
        async move { (found.len() >= n).then_some(found) }
    })
    .await
    .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_reach_handlers_and_shutdown_leaves_no_process() {
    let (mut gw, markers) = start("triggers");
    let http = reqwest::Client::new();

    // HTTP trigger, payload format 1.0, the example API.
    let r = http
        .post(gw.url("/http/users-api/users"))
        .header("content-type", "application/json")
        .body(r#"{"name":"Ada","email":"ada@example.org"}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 201, "{}", gw.log());
    assert_eq!(r.headers()["content-type"], "application/json");
    let user: Value = r.json().await.expect("json");
    assert_eq!(user["name"], "Ada");
    let r = http
        .post(gw.url("/http/users-api/users"))
        .body("{nope")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 400);
    let r = http
        .get(gw.url("/http/users-api/users"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    let list: Value = r.json().await.expect("json");
    assert_eq!(list["users"][0]["name"], "Ada");

    // Payload format 2.0: a bare JSON result becomes 200 application/json.
    let r = http
        .get(gw.url("/http/v2/a/b?x=1&x=2"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body, json!({"path": "/a/b", "q": {"x": "1,2"}}));

    // S3 notification: URL-encoded key, prefix and suffix filters.
    let notification = json!({"EventName": "s3:ObjectCreated:Put", "Key": "uploads/in/My+File%21.txt", "Records": [
        {"eventVersion": "2.0", "eventSource": "minio:s3", "eventName": "s3:ObjectCreated:Put",
         "s3": {"bucket": {"name": "uploads"}, "object": {"key": "in/My+File%21.txt", "size": 7}}},
        {"eventVersion": "2.0", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
         "s3": {"bucket": {"name": "uploads"}, "object": {"key": "out/skip.txt", "size": 1}}}
    ]});
    let r = http
        .post(gw.url("/events/s3"))
        .json(&notification)
        .send()
        .await
        .expect("s3");
    assert_eq!(r.status(), 202);
    let ack: Value = r.json().await.expect("json");
    assert_eq!(ack["queued"]["marker"], 1);
    assert_eq!(ack["unmatched"], 1);
    let got = markers_matching(&markers, 1, |m| m["event"]["Records"][0]["s3"].is_object()).await;
    assert_eq!(got.len(), 1, "{}", gw.log());
    assert_eq!(
        got[0]["event"]["Records"][0]["s3"]["object"]["key"],
        "in/My+File%21.txt"
    );

    // CloudEvents, binary mode then structured mode.
    let r = http
        .post(gw.url("/events/cloudevents"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "b-1")
        .header("ce-type", "com.example.ping")
        .header("ce-source", "/tests%20binary")
        .header("content-type", "application/json")
        .body(r#"{"mode":"binary"}"#)
        .send()
        .await
        .expect("ce");
    assert_eq!(r.status(), 202);
    let structured = json!({"specversion": "1.0", "id": "s-1", "type": "com.example.ping", "source": "/tests", "data": {"mode": "structured"}});
    let r = http
        .post(gw.url("/events/cloudevents"))
        .header(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        )
        .body(structured.to_string())
        .send()
        .await
        .expect("ce");
    assert_eq!(r.status(), 202);
    let got = markers_matching(&markers, 2, |m| m["event"]["specversion"] == "1.0").await;
    assert_eq!(got.len(), 2, "{}", gw.log());
    let binary = got
        .iter()
        .find(|m| m["event"]["id"] == "b-1")
        .expect("binary event");
    assert_eq!(binary["event"]["source"], "/tests binary");
    assert_eq!(binary["event"]["data"]["mode"], "binary");
    assert!(
        got.iter()
            .any(|m| m["event"]["data"]["mode"] == "structured")
    );
    let r = http
        .post(gw.url("/events/cloudevents"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "x")
        .header("ce-type", "com.example.unknown")
        .header("ce-source", "/t")
        .send()
        .await
        .expect("ce");
    assert_eq!(r.status(), 404);
    let r = http
        .post(gw.url("/events/cloudevents"))
        .header("ce-type", "com.example.ping")
        .send()
        .await
        .expect("ce");
    assert_eq!(r.status(), 400);

    // Graceful shutdown stops every environment process.
    let pids: Vec<i64> = read_markers(&markers)
        .iter()
        .filter_map(|m| m["pid"].as_i64())
        .collect();
    assert!(!pids.is_empty());
    assert!(
        gw.stop(),
        "gateway did not exit after SIGTERM: {}",
        gw.log()
    );
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "environment process {pid} outlived the gateway"
        );
    }
    let _ = std::fs::remove_dir_all(&markers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_lambda_shaped_answers() {
    let (gw, markers) = start("bad");
    let http = reqwest::Client::new();
    let invoke = |name: &str| gw.url(&format!("/2015-03-31/functions/{name}/invocations"));

    let r = http
        .post(invoke("nope"))
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["x-amzn-errortype"], "ResourceNotFoundException");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["errorType"], "ResourceNotFoundException");
    assert_eq!(
        body["errorMessage"],
        "Function not found: arn:aws:lambda:us-east-1:000000000000:function:nope"
    );

    let r = http
        .post(invoke("echo"))
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["errorType"], "InvalidRequestContentException");

    let big = format!("\"{}\"", "x".repeat(6_291_456));
    let r = http
        .post(invoke("echo"))
        .body(big)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["errorType"], "RequestEntityTooLargeException");
    let r = http
        .post(invoke("echo"))
        .header("x-amz-invocation-type", "Event")
        .body(format!("\"{}\"", "x".repeat(1_048_577)))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 413);

    let r = http
        .get(gw.url("/no/such/route"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 404);
    let r = http.get(gw.url("/http/echo/")).send().await.expect("send");
    assert_eq!(r.status(), 404, "echo has no http trigger");
    let r = http.get(gw.url("/http/nope/")).send().await.expect("send");
    assert_eq!(r.status(), 404);

    let r = http
        .get(gw.url("/http/badhttp/x"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 502);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body, json!({"message": "Internal server error"}));

    let r = http
        .post(invoke("echo"))
        .body(r#"{"a":1}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-amz-executed-version"], "$LATEST");
    assert!(r.headers().contains_key("x-amzn-requestid"));
    let environment = r.headers()["x-porchlight-environment"].clone();
    assert_eq!(r.json::<Value>().await.expect("json"), json!({"a": 1}));
    // The next event reuses the warm environment: no cold-start header.
    let r = http
        .post(invoke("echo"))
        .body(r#"{"a":2}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-porchlight-environment"], environment);
    assert!(!r.headers().contains_key("x-porchlight-cold-start"));

    let r = http
        .post(invoke("fail"))
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-amz-function-error"], "Unhandled");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["errorMessage"], "boom");

    let r = http
        .post(invoke("echo"))
        .header("x-amz-invocation-type", "DryRun")
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 204);
    let r = http
        .post(invoke("echo"))
        .header("x-amz-invocation-type", "Bogus")
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
    let r = http
        .post(gw.url("/events/s3"))
        .body("nope")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
    let _ = std::fs::remove_dir_all(&markers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_async_event_is_retried_twice_then_dead_lettered() {
    let (gw, markers) = start("dlq");
    let http = reqwest::Client::new();
    let r = http
        .post(gw.url("/2015-03-31/functions/fail/invocations"))
        .header("x-amz-invocation-type", "Event")
        .body(r#"{"order": 42}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 202);
    let request_id = r.headers()["x-amzn-requestid"]
        .to_str()
        .expect("id")
        .to_string();
    let letters = poll(200, Duration::from_millis(50), || {
        let http = http.clone();
        let url = gw.url("/v1/dead-letters");
        async move {
            let v: Value = http.get(url).send().await.ok()?.json().await.ok()?;
            (v["deadLetters"].as_array()?.len() == 1).then_some(v)
        }
    })
    .await
    .unwrap_or_else(|| panic!("no dead letter; log: {}", gw.log()));
    let letter = &letters["deadLetters"][0];
    assert_eq!(letter["function"], "fail");
    assert_eq!(letter["requestId"], request_id.as_str());
    assert_eq!(letter["attempts"], 3);
    assert_eq!(letter["event"]["order"], 42);
    assert_eq!(letter["error"]["errorMessage"], "boom");
    let attempts = read_markers(&markers)
        .into_iter()
        .filter(|m| m["requestId"] == request_id.as_str())
        .count();
    assert_eq!(attempts, 3, "one attempt and two retries reach the handler");
    let metrics = http
        .get(gw.url("/metrics"))
        .send()
        .await
        .expect("m")
        .text()
        .await
        .expect("t");
    assert!(metrics.contains("porchlight_gateway_dead_letters_total{function=\"fail\"} 1"));
    let _ = std::fs::remove_dir_all(&markers);
}

const BOTO3_SCRIPT: &str = r#"
import json, sys, boto3, botocore
c = boto3.client("lambda", endpoint_url=sys.argv[1], region_name="us-east-1",
                 aws_access_key_id="test", aws_secret_access_key="test")
r = c.invoke(FunctionName="echo", Payload=json.dumps({"via": "boto3"}))
assert r["StatusCode"] == 200, r
assert r["ExecutedVersion"] == "$LATEST", r
assert json.loads(r["Payload"].read()) == {"via": "boto3"}
r = c.invoke(FunctionName="arn:aws:lambda:us-east-1:000000000000:function:echo", Qualifier="$LATEST", Payload=b"{}")
assert r["StatusCode"] == 200, r
r = c.invoke(FunctionName="fail", Payload=b"{}")
assert r["FunctionError"] == "Unhandled", r
assert json.loads(r["Payload"].read())["errorMessage"] == "boom"
r = c.invoke(FunctionName="marker", InvocationType="Event", Payload=json.dumps({"via": "boto3-async"}))
assert r["StatusCode"] == 202, r
try:
    c.invoke(FunctionName="nope", Payload=b"{}")
    raise SystemExit("expected ResourceNotFoundException")
except c.exceptions.ResourceNotFoundException as e:
    assert "Function not found" in str(e), e
names = [f["FunctionName"] for f in c.list_functions()["Functions"]]
assert "echo" in names, names
assert c.get_function(FunctionName="echo")["Configuration"]["Handler"] == "app.handler"
print("boto3 ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_and_aws_cli_work_unchanged() {
    let Some(python) = common::sdk_python() else {
        return;
    };
    let (gw, markers) = start("sdk");
    let home = common::temp_dir("sdk-home");
    let aws_env = |cmd: &mut std::process::Command| {
        cmd.env("HOME", &home)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_PROFILE");
    };
    let mut cmd = std::process::Command::new(&python);
    cmd.args(["-c", BOTO3_SCRIPT, &gw.base]);
    aws_env(&mut cmd);
    let out = cmd.output().expect("python");
    assert!(
        out.status.success(),
        "boto3: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );
    let got = markers_matching(&markers, 1, |m| m["event"]["via"] == "boto3-async").await;
    assert_eq!(got.len(), 1, "boto3 async event reached the handler");

    let aws = python.parent().expect("venv bin").join("aws");
    let payload = home.join("in.json");
    let outfile = home.join("out.json");
    // `aws lambda invoke` with `extra` flags and `event`; returns its JSON output.
    let cli_invoke = |function: &str, extra: &[&str], event: &str| -> Value {
        std::fs::write(&payload, event).expect("payload");
        let mut cmd = std::process::Command::new(&aws);
        cmd.args([
            "lambda",
            "invoke",
            "--endpoint-url",
            &gw.base,
            "--function-name",
            function,
        ])
        .args(extra)
        .arg("--payload")
        .arg(format!("fileb://{}", payload.display()))
        .arg(&outfile);
        aws_env(&mut cmd);
        let out = cmd.output().expect("aws");
        assert!(
            out.status.success(),
            "aws cli {extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("cli output")
    };
    let meta = cli_invoke("echo", &[], r#"{"via":"cli"}"#);
    assert_eq!(meta["StatusCode"], 200);
    let result: Value =
        serde_json::from_str(&std::fs::read_to_string(&outfile).expect("out")).expect("json");
    assert_eq!(result, json!({"via": "cli"}));

    let meta = cli_invoke(
        "marker",
        &["--invocation-type", "Event"],
        r#"{"via":"cli-async"}"#,
    );
    assert_eq!(meta["StatusCode"], 202);
    let got = markers_matching(&markers, 1, |m| m["event"]["via"] == "cli-async").await;
    assert_eq!(got.len(), 1, "CLI async event reached the handler");
    let _ = std::fs::remove_dir_all(&markers);
    let _ = std::fs::remove_dir_all(&home);
}
