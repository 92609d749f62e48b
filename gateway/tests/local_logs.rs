//! A function's logs as a developer meets them in local mode: `--log-type
//! Tail` through boto3 carries the invocation's real log, tracebacks print
//! as lines, per-invocation lines name the function, and `--quiet` leaves
//! them out.

mod common;

use common::{LocalGateway, python_function};
use serde_json::Value;

const SHOUT: &str = "import logging
logger = logging.getLogger()
logger.setLevel(logging.INFO)

def handler(event, context):
    print('shouting', event.get('word'))
    logger.info('logged at info')
    if event.get('fail'):
        raise ValueError('no word to shout')
    return event['word'].upper()
";

const TAIL_SCRIPT: &str = r#"
import base64, json, sys
import boto3
from botocore import UNSIGNED
from botocore.config import Config

client = boto3.client("lambda", endpoint_url=sys.argv[1], region_name="us-east-1",
                      config=Config(signature_version=UNSIGNED))
out = {}
for name, payload in (("ok", b'{"word": "hi"}'), ("failed", b'{"fail": true}')):
    r = client.invoke(FunctionName="shout", Payload=payload, LogType="Tail")
    out[name] = {
        "id": r["ResponseMetadata"]["RequestId"],
        "error": r.get("FunctionError"),
        "log": base64.b64decode(r["LogResult"]).decode(),
    }
print(json.dumps(out))
"#;

#[test]
fn boto3_log_type_tail_gets_the_invocations_real_log() {
    let Some(python) = common::sdk_python() else {
        return;
    };
    let gw = LocalGateway::start(
        "tail",
        &[("shout.yaml", python_function("shout", SHOUT, ""))],
        &[],
    );
    let got = common::python_json(&python, TAIL_SCRIPT, &gw);

    let ok = &got["ok"];
    let id = ok["id"].as_str().expect("a request id");
    let log = ok["log"].as_str().expect("a log");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(
        lines[0],
        format!("START RequestId: {id} Version: $LATEST"),
        "{log}"
    );
    assert!(lines.contains(&"shouting hi"), "{log}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("[INFO]\t") && l.ends_with(&format!("\t{id}\tlogged at info"))),
        "{log}"
    );
    assert!(
        lines.contains(&format!("END RequestId: {id}").as_str()),
        "{log}"
    );
    let report = lines.last().expect("a REPORT line");
    let duration = report
        .strip_prefix(&format!("REPORT RequestId: {id}\tDuration: "))
        .and_then(|rest| rest.split(" ms").next())
        .and_then(|ms| ms.parse::<f64>().ok());
    assert!(duration.is_some(), "{log}");
    // A cold start: the environment's init is in the first REPORT.
    assert!(report.contains("\tInit Duration: "), "{log}");

    let failed = &got["failed"];
    assert_eq!(failed["error"], "Unhandled");
    let log = failed["log"].as_str().expect("a log");
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        lines.contains(&"[ERROR] ValueError: no word to shout"),
        "{log}"
    );
    assert!(
        lines.contains(&"Traceback (most recent call last):"),
        "{log}"
    );
    assert!(
        lines
            .last()
            .is_some_and(|l| l.starts_with("REPORT RequestId: ")),
        "{log}"
    );
}

/// Invokes `shout` with `event`; the status and the request id.
async fn invoke(gw: &LocalGateway, event: &'static str) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(gw.url("/2015-03-31/functions/shout/invocations"))
        .body(event)
        .send()
        .await
        .expect("invoke");
    let id = response
        .headers()
        .get("x-amzn-requestid")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (response.status().as_u16(), id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_prints_tracebacks_as_lines_and_names_the_function() {
    let gw = LocalGateway::start(
        "terminal",
        &[("shout.yaml", python_function("shout", SHOUT, ""))],
        &[],
    );
    let (status, id) = invoke(&gw, r#"{"fail":true}"#).await;
    assert_eq!(status, 200);
    assert!(!id.is_empty());
    assert!(
        gw.stdout_has(|l| l == format!("{id}\tTraceback (most recent call last):")),
        "{}",
        gw.stdout()
    );
    assert!(!gw.stdout().contains('\r'), "{:?}", gw.stdout());
    assert!(
        gw.stdout_has(|l| l == format!("[shout] START RequestId: {id} Version: $LATEST")),
        "{}",
        gw.stdout()
    );
    assert!(gw.stdout_has(|l| l.starts_with(&format!("[shout] REPORT RequestId: {id}\t"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_local_mode_prints_no_per_invocation_lines() {
    let gw = LocalGateway::start(
        "quiet",
        &[("shout.yaml", python_function("shout", SHOUT, ""))],
        &["--quiet"],
    );
    let (status, id) = invoke(&gw, r#"{"word":"hi"}"#).await;
    assert_eq!(status, 200);
    assert!(gw.stdout_has(|l| l == format!("{id}\tshouting hi")));
    let stdout = gw.stdout();
    assert!(
        !stdout.contains("START RequestId") && !stdout.contains("REPORT RequestId"),
        "{stdout}"
    );
}

/// A failed init is logged as one (not followed by "environment ready"),
/// and the error the caller gets names its invocation (not `"requestId":""`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_init_failure_is_logged_as_one_and_names_the_invocation() {
    let gw = LocalGateway::start(
        "init-failure",
        &[(
            "shout.yaml",
            python_function("shout", "import module_that_does_not_exist\n", ""),
        )],
        &[],
    );
    let response = reqwest::Client::new()
        .post(gw.url("/2015-03-31/functions/shout/invocations"))
        .body("{}")
        .send()
        .await
        .expect("invoke");
    assert_eq!(response.status(), 200);
    let id = response
        .headers()
        .get("x-amzn-requestid")
        .and_then(|v| v.to_str().ok())
        .expect("a request id")
        .to_owned();
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["errorType"], "Runtime.ImportModuleError", "{body}");
    assert_eq!(body["requestId"], id.as_str(), "{body}");
    let log = gw.log();
    assert!(log.contains("init failed"), "{log}");
    assert!(!log.contains("environment ready"), "{log}");
}
