//! What a function's logs look like: Python's `logging` as Lambda's Python
//! runtime writes it (text and JSON, with the level control), through the
//! bundled bootstrap and through unmodified `awslambdaric`; the log tail of
//! one invocation (`X-Amz-Log-Type: Tail`); output for a terminal in local
//! mode (`--local-logs`, `--quiet`).

mod common;

use base64::Engine as _;
use common::{Shim, task_root};
use serde_json::{Value, json};

/// The pattern AWS documents for Python functions.
const PY_LOGGING: &str = r#"
import logging
logger = logging.getLogger()
logger.setLevel(logging.INFO)

def handler(event, context):
    print("printed by the handler")
    logger.info("info from the handler %s", 42)
    logger.debug("debug from the handler")
    if event.get("fail"):
        raise ValueError("the event asked for a failure")
    if event.get("big"):
        print("x" * event["big"])
    return {"ok": True}
"#;

/// No level set by the code: the root logger's level is the runtime's.
const PY_LEVELS: &str = r#"
import logging

def handler(event, context):
    logging.getLogger("app").debug("a debug record")
    logging.getLogger("app").info("an info record")
    logging.getLogger("app").error("an error record")
    return {}
"#;

fn bundled(files: &[(&str, &str)], args: &[&str], envs: &[(&str, &str)]) -> Shim {
    let python = common::plain_python();
    let root = task_root(files);
    let mut all = vec!["--runtime", "python3.12", "--handler", "app.handler"];
    all.extend_from_slice(args);
    let mut envs = envs.to_vec();
    envs.push(("PORCHLIGHT_PYTHON", &python));
    let shim = Shim::start(&root, &all, &envs);
    assert_eq!(shim.wait_ready().status, 200);
    shim
}

fn awslambdaric(python: &str, files: &[(&str, &str)], envs: &[(&str, &str)]) -> Shim {
    let root = task_root(files);
    let shim = Shim::start(
        &root,
        &[
            "--runtime",
            "python3.12",
            "--",
            python,
            "-m",
            "awslambdaric",
            "app.handler",
        ],
        envs,
    );
    assert_eq!(shim.wait_ready().status, 200);
    shim
}

fn request_id(reply: &common::Reply) -> String {
    reply
        .header("x-porchlight-request-id")
        .expect("a request id")
        .to_owned()
}

/// Lambda's text format: `[LEVEL]\t<yyyy-mm-ddThh:mm:ss.mmmZ>\t<request id>\t<message>`.
fn is_text_record(line: &str, level: &str, id: &str, message: &str) -> bool {
    let fields: Vec<&str> = line.split('\t').collect();
    let [l, timestamp, rid, msg] = fields[..] else {
        return false;
    };
    let ts = timestamp.as_bytes();
    l == format!("[{level}]")
        && rid == id
        && msg == message
        && ts.len() == 24
        && ts[10] == b'T'
        && ts[19] == b'.'
        && ts[23] == b'Z'
}

/// The Python runtime's text records, on lines of their own (a line that
/// already carries the request id is not prefixed with it again).
fn check_text_logging(shim: &Shim) {
    let reply = shim.invoke(&json!({}));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let id = request_id(&reply);
    assert!(
        shim.stdout_has(|l| is_text_record(l, "INFO", &id, "info from the handler 42")),
        "no INFO record for {id}: {:#?}",
        shim.stdout_lines()
    );
    assert!(shim.stdout_has(|l| l == format!("{id}\tprinted by the handler")));
    assert!(
        !shim.stdout_lines().iter().any(|l| l.contains("debug from")),
        "below the logger's level"
    );
}

#[test]
fn bundled_bootstrap_logs_as_lambdas_python_runtime() {
    let shim = bundled(&[("app.py", PY_LOGGING)], &[], &[]);
    check_text_logging(&shim);
}

#[test]
fn awslambdaric_logs_reach_the_log_once_formatted() {
    let Some(python) = common::python_with_awslambdaric() else {
        return;
    };
    let shim = awslambdaric(&python, &[("app.py", PY_LOGGING)], &[]);
    check_text_logging(&shim);
}

/// `AWS_LAMBDA_LOG_FORMAT=JSON` and `AWS_LAMBDA_LOG_LEVEL`: one JSON object
/// a record, at the level asked for.
fn check_json_logging(shim: &Shim) {
    let reply = shim.invoke(&json!({}));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let id = request_id(&reply);
    let records = || -> Vec<Value> {
        shim.stdout_lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["requestId"] == id.as_str())
            .collect()
    };
    assert!(
        shim.stdout_has(|l| l.contains("an error record")),
        "{:#?}",
        shim.stdout_lines()
    );
    let records = records();
    let messages: Vec<&str> = records
        .iter()
        .map(|r| r["message"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        messages,
        ["a debug record", "an info record", "an error record"]
    );
    assert_eq!(records[0]["level"], "DEBUG");
    assert_eq!(records[2]["level"], "ERROR");
    assert_eq!(records[2]["logger"], "app");
    let timestamp = records[2]["timestamp"].as_str().expect("a timestamp");
    assert!(
        timestamp.ends_with('Z') && timestamp.contains('T'),
        "{timestamp}"
    );
}

const JSON_DEBUG: [(&str, &str); 2] = [
    ("AWS_LAMBDA_LOG_FORMAT", "JSON"),
    ("AWS_LAMBDA_LOG_LEVEL", "DEBUG"),
];

#[test]
fn bundled_bootstrap_follows_the_log_format_and_level() {
    let shim = bundled(&[("app.py", PY_LEVELS)], &[], &JSON_DEBUG);
    check_json_logging(&shim);

    // The level alone, in text format.
    let shim = bundled(
        &[("app.py", PY_LEVELS)],
        &[],
        &[("AWS_LAMBDA_LOG_LEVEL", "ERROR")],
    );
    let id = request_id(&shim.invoke(&json!({})));
    assert!(shim.stdout_has(|l| is_text_record(l, "ERROR", &id, "an error record")));
    assert!(
        !shim
            .stdout_lines()
            .iter()
            .any(|l| l.contains("an info record")),
        "{:#?}",
        shim.stdout_lines()
    );
}

#[test]
fn awslambdaric_follows_the_log_format_and_level() {
    let Some(python) = common::python_with_awslambdaric() else {
        return;
    };
    let shim = awslambdaric(&python, &[("app.py", PY_LEVELS)], &JSON_DEBUG);
    check_json_logging(&shim);
}

fn log_tail(reply: &common::Reply) -> String {
    let encoded = reply.header("x-amz-log-result").expect("a log tail");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("base64");
    String::from_utf8(bytes).expect("UTF-8")
}

const TAIL: (&str, &str) = ("X-Amz-Log-Type", "Tail");

/// The tail of a failed invocation: its own output, the traceback as lines,
/// START, END and a REPORT with the real duration.
fn check_tail(shim: &Shim) {
    let reply = shim.invoke_raw(br#"{"fail":true}"#, &[TAIL]);
    assert_eq!(reply.header("x-amz-function-error"), Some("Unhandled"));
    let id = request_id(&reply);
    let tail = log_tail(&reply);
    let lines: Vec<&str> = tail.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some(format!("START RequestId: {id} Version: $LATEST").as_str()),
        "{tail}"
    );
    assert!(lines.contains(&"printed by the handler"), "{tail}");
    assert!(
        lines
            .iter()
            .any(|l| is_text_record(l, "INFO", &id, "info from the handler 42")),
        "{tail}"
    );
    assert!(
        lines.contains(&"[ERROR] ValueError: the event asked for a failure"),
        "{tail}"
    );
    assert!(
        lines.contains(&"Traceback (most recent call last):"),
        "{tail}"
    );
    assert!(lines.iter().any(|l| l.contains("app.py")), "{tail}");
    assert!(
        lines.contains(&format!("END RequestId: {id}").as_str()),
        "{tail}"
    );
    let report = lines.last().expect("a last line");
    assert!(
        report.starts_with(&format!("REPORT RequestId: {id}\tDuration: "))
            && report.contains(" ms\tBilled Duration: ")
            && report.contains("\tMax Memory Used: "),
        "{tail}"
    );

    // Lambda's cap: the last 4 KB, so a long output leaves only its end.
    let reply = shim.invoke_raw(br#"{"big":10000}"#, &[TAIL]);
    let tail = log_tail(&reply);
    assert!(tail.len() <= 4096 && tail.len() > 4000, "{}", tail.len());
    assert!(tail.contains("xxxxxxxx\nEND RequestId: "), "{tail}");
    assert!(
        tail.lines()
            .last()
            .unwrap()
            .starts_with("REPORT RequestId: ")
    );

    // Nobody asked: no tail.
    let reply = shim.invoke(&json!({}));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-amz-log-result"), None);
}

#[test]
fn a_log_tail_has_the_invocations_real_log() {
    let shim = bundled(&[("app.py", PY_LOGGING)], &[], &[]);
    check_tail(&shim);
}

#[test]
fn a_log_tail_through_awslambdaric() {
    let Some(python) = common::python_with_awslambdaric() else {
        return;
    };
    let shim = awslambdaric(&python, &[("app.py", PY_LOGGING)], &[]);
    check_tail(&shim);
}

#[test]
fn local_logs_print_tracebacks_as_lines_and_name_the_function() {
    let shim = bundled(
        &[("app.py", PY_LOGGING)],
        &["--local-logs", "--function-name", "greeter"],
        &[],
    );
    let reply = shim.invoke(&json!({"fail": true}));
    let id = request_id(&reply);
    assert!(
        shim.stdout_has(|l| l == format!("{id}\tTraceback (most recent call last):")),
        "{:#?}",
        shim.stdout_lines()
    );
    assert!(
        !shim.stdout_lines().iter().any(|l| l.contains('\r')),
        "{:#?}",
        shim.stdout_lines()
    );
    assert!(shim.stdout_has(|l| l == format!("[greeter] START RequestId: {id} Version: $LATEST")));
    assert!(shim.stdout_has(|l| l.starts_with(&format!("[greeter] REPORT RequestId: {id}\t"))));

    // Without it (a pod's log), the record stays one line, as in CloudWatch.
    let shim = bundled(&[("app.py", PY_LOGGING)], &[], &[]);
    let id = request_id(&shim.invoke(&json!({"fail": true})));
    assert!(shim.stdout_has(|l| l.starts_with(&format!(
        "{id}\t[ERROR] ValueError: the event asked for a failure\rTraceback (most recent call last):\r"
    ))));
    assert!(shim.stdout_has(|l| l == format!("START RequestId: {id} Version: $LATEST")));
}

#[test]
fn quiet_leaves_out_the_per_invocation_lines_but_not_the_tail() {
    let shim = bundled(&[("app.py", PY_LOGGING)], &["--quiet"], &[]);
    let reply = shim.invoke_raw(b"{}", &[TAIL]);
    let id = request_id(&reply);
    assert!(log_tail(&reply).contains(&format!("END RequestId: {id}")));
    assert!(shim.stdout_has(|l| l == format!("{id}\tprinted by the handler")));
    let lines = shim.stdout_lines();
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("START ") || l.starts_with("END ") || l.starts_with("REPORT ")),
        "{lines:#?}"
    );
}

#[test]
fn a_syntax_error_points_at_the_users_line() {
    let shim = {
        let python = common::plain_python();
        let root = task_root(&[("app.py", "def handler(event, context):\n    return {\n")]);
        Shim::start(
            &root,
            &["--runtime", "python3.12", "--handler", "app.handler"],
            &[("PORCHLIGHT_PYTHON", &python)],
        )
    };
    let ready = shim.wait_ready();
    let error = ready.json();
    assert_eq!(error["errorType"], "Runtime.UserCodeSyntaxError", "{error}");
    let trace: Vec<&str> = error["stackTrace"]
        .as_array()
        .expect("a stack trace")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(trace.len(), 1, "{trace:?}");
    assert!(
        trace[0].contains("app.py\" Line 2") && trace[0].contains("return {"),
        "{trace:?}"
    );
}
