//! Tier 3: the built shim driving runtime clients nobody here wrote —
//! unmodified `awslambdaric`, an unmodified `lambda_runtime` bootstrap, a
//! shell-script `bootstrap` as in AWS's custom-runtime tutorial — and the
//! bundled Python and Node.js bootstraps (Node.js: env `PORCHLIGHT_NODE` or
//! `node` on PATH).
//!
//! Needs: env `PORCHLIGHT_PYTHON` = a Python with `awslambdaric` installed,
//! and the Rust bootstrap built (`cargo build -p porchlight-test-rust-bootstrap`)
//! or env `PORCHLIGHT_RUST_BOOTSTRAP`. Missing ones skip, or fail when `CI` is set.

mod common;

use std::collections::HashSet;

use common::{Shim, process_state, task_root};
use serde_json::{Value, json};

const PY_APP: &str = r#"
import os, time
count = 0

def handler(event, context):
    global count
    count += 1
    print("handling", count)
    if event.get("fail"):
        raise ValueError("the event asked for a failure")
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if "exit" in event:
        os._exit(event["exit"])
    return {
        "count": count,
        "request_id": context.aws_request_id,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "function_name": context.function_name,
        "function_version": context.function_version,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "invoked_function_arn": context.invoked_function_arn,
        "log_group_name": context.log_group_name,
        "log_stream_name": context.log_stream_name,
        "client_custom": context.client_context.custom if context.client_context else None,
        "event": event,
    }
"#;

const PY_BROKEN: &str = "import module_that_does_not_exist\n";

/// AWS's custom-runtime tutorial bootstrap, plus a counter kept by the loop.
const SHELL_BOOTSTRAP: &str = r#"#!/bin/bash
set -euo pipefail
# Initialization - load function handler
source $LAMBDA_TASK_ROOT/"$(echo $_HANDLER | cut -d. -f1).sh"
COUNT=0
while true
do
  HEADERS="$(mktemp)"
  EVENT_DATA=$(curl -sS -LD "$HEADERS" "http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime/invocation/next")
  REQUEST_ID=$(grep -Fi Lambda-Runtime-Aws-Request-Id "$HEADERS" | tr -d '[:space:]' | cut -d: -f2)
  COUNT=$((COUNT + 1))
  RESPONSE=$($(echo "$_HANDLER" | cut -d. -f2) "$EVENT_DATA" "$COUNT")
  curl -sS "http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime/invocation/$REQUEST_ID/response" -d "$RESPONSE"
  rm -f "$HEADERS"
done
"#;

const SHELL_FUNCTION: &str = r#"function handler () {
  EVENT_DATA=$1
  echo "$EVENT_DATA" 1>&2;
  RESPONSE="{\"count\": $2, \"event\": $EVENT_DATA}"
  echo $RESPONSE
}
"#;

fn count(reply: &common::Reply) -> u64 {
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["count"]
        .as_u64()
        .unwrap_or_else(|| panic!("no count in {}", reply.text()))
}

fn assert_unhandled(reply: &common::Reply, error_type: &str) -> Value {
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.header("x-amz-function-error"),
        Some("Unhandled"),
        "{}",
        reply.text()
    );
    let body = reply.json();
    if !error_type.is_empty() {
        assert_eq!(body["errorType"], error_type, "{}", reply.text());
    }
    assert!(
        body["errorType"].as_str().is_some_and(|t| !t.is_empty()),
        "{}",
        reply.text()
    );
    assert!(body["errorMessage"].is_string(), "{}", reply.text());
    body
}

/// Warm reuse, unique ids, remaining time, errors, timeout and crash resets:
/// the checks every runtime client must pass.
fn lifecycle_checks(
    shim: &Shim,
    timeout_ms: u64,
    fail: Value,
    sleep: Value,
    exit: Value,
    error_type: &str,
) {
    let ready = shim.wait_ready();
    assert_eq!(ready.status, 200, "{}", ready.text());

    // Init once: the module-level counter keeps counting across warm invocations.
    let mut ids = HashSet::new();
    let first = shim.invoke(&json!({"n": 1}));
    assert_eq!(first.header("x-porchlight-cold-start"), Some("true"));
    assert!(first.header("x-porchlight-init-duration-ms").is_some());
    assert_eq!(first.header("x-porchlight-environment"), Some("test-env"));
    assert_eq!(count(&first), 1);
    ids.insert(first.header("x-porchlight-request-id").unwrap().to_owned());
    for n in 2..=4 {
        let reply = shim.invoke(&json!({"n": n}));
        assert_eq!(count(&reply), n);
        assert_eq!(
            reply.header("x-porchlight-cold-start"),
            None,
            "warm invocation"
        );
        let body = reply.json();
        assert_eq!(
            body["request_id"],
            reply.header("x-porchlight-request-id").unwrap()
        );
        let remaining = body["remaining_ms"].as_u64().expect("remaining time");
        assert!(
            remaining > 0 && remaining <= timeout_ms,
            "remaining {remaining}"
        );
        assert!(
            ids.insert(body["request_id"].as_str().unwrap().to_owned()),
            "unique request ids"
        );
    }

    // The gateway's request id is the invocation's request id.
    let reply = shim.invoke_raw(br#"{"n":5}"#, &[("X-Porchlight-Request-Id", "gw-req-1")]);
    assert_eq!(reply.header("x-porchlight-request-id"), Some("gw-req-1"));
    assert_eq!(reply.json()["request_id"], "gw-req-1");
    assert_eq!(count(&reply), 5);

    // A handler error in Lambda's shape; the environment stays warm.
    assert_unhandled(&shim.invoke(&fail), error_type);
    assert_eq!(count(&shim.invoke(&json!({}))), 7);

    // Timeout: Sandbox.Timeout, then the runtime is re-initialised.
    let body = assert_unhandled(&shim.invoke(&sleep), "Sandbox.Timeout");
    assert!(
        body["errorMessage"]
            .as_str()
            .unwrap()
            .starts_with("Task timed out after "),
        "{body}"
    );
    let after = shim.invoke(&json!({}));
    assert_eq!(
        after.header("x-porchlight-cold-start"),
        Some("true"),
        "re-init after a timeout"
    );
    assert_eq!(count(&after), 1, "the counter restarts with the runtime");

    // Crash mid-invocation: Runtime.ExitError at once, then a restart.
    let crash = shim.invoke(&exit);
    let body = assert_unhandled(&crash, "Runtime.ExitError");
    let message = body["errorMessage"].as_str().unwrap();
    assert!(
        message.contains("Runtime exited with error: exit status 3"),
        "{message}"
    );
    assert!(message.starts_with(&format!(
        "RequestId: {}",
        crash.header("x-porchlight-request-id").unwrap()
    )));
    let after = shim.invoke(&json!({}));
    assert_eq!(count(&after), 1, "the runtime restarted after the crash");

    // Lambda-style log lines.
    let lines = shim.stdout_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("START RequestId: gw-req-1 Version: $LATEST"))
    );
    assert!(lines.iter().any(|l| l == "END RequestId: gw-req-1"));
    let report = lines
        .iter()
        .find(|l| l.starts_with("REPORT RequestId: gw-req-1\t"))
        .expect("a REPORT line");
    assert!(
        report.contains("\tDuration: ") && report.contains("\tBilled Duration: "),
        "{report}"
    );
    assert!(
        report.contains("\tMemory Size: 128 MB\tMax Memory Used: "),
        "{report}"
    );
    assert!(
        !report.contains("Init Duration"),
        "warm REPORT has no init duration: {report}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("REPORT ") && l.contains("\tInit Duration: "))
    );
}

#[test]
fn awslambdaric_runs_unmodified() {
    let Some(python) = common::python_with_awslambdaric() else {
        return;
    };
    let root = task_root(&[("app.py", PY_APP)]);
    let shim = Shim::start(
        &root,
        &[
            "--runtime",
            "python3.12",
            "--timeout-seconds",
            "2",
            "--",
            &python,
            "-m",
            "awslambdaric",
            "app.handler",
        ],
        &[],
    );
    lifecycle_checks(
        &shim,
        2000,
        json!({"fail": true}),
        json!({"sleep": 30}),
        json!({"exit": 3}),
        "ValueError",
    );
    let reply = shim.invoke(&json!({"fail": true}));
    let body = reply.json();
    assert_eq!(body["errorMessage"], "the event asked for a failure");
    assert!(body["stackTrace"].is_array());
    // Runtime output carries the request id.
    let id = reply.header("x-porchlight-request-id").unwrap();
    assert!(shim.stdout_has(|l| l.starts_with(&format!("{id}\t"))));
}

#[test]
fn awslambdaric_init_error_surfaces() {
    let Some(python) = common::python_with_awslambdaric() else {
        return;
    };
    let root = task_root(&[("broken.py", PY_BROKEN)]);
    let shim = Shim::start(
        &root,
        &[
            "--runtime",
            "python3.12",
            "--",
            &python,
            "-m",
            "awslambdaric",
            "broken.handler",
        ],
        &[],
    );
    let ready = shim.wait_ready();
    assert_eq!(ready.status, 503);
    assert_eq!(
        ready.json()["errorType"],
        "Runtime.ImportModuleError",
        "{}",
        ready.text()
    );
    let reply = shim.invoke(&json!({}));
    assert_eq!(reply.status, 502);
    assert_eq!(reply.json()["errorType"], "Runtime.ImportModuleError");
    // The next invocation retries the init, which fails again.
    let reply = shim.invoke(&json!({}));
    assert_eq!(reply.status, 502);
    let metrics = shim.request("GET", "/metrics", &[], b"").text();
    assert!(
        metrics.contains("porchlight_runtime_inits_total{result=\"error\"} 2"),
        "{metrics}"
    );
}

#[test]
fn lambda_runtime_crate_runs_unmodified() {
    let Some(bootstrap) = common::rust_bootstrap() else {
        return;
    };
    let root = task_root(&[]);
    let shim = Shim::start(
        &root,
        &["--timeout-seconds", "2", "--", bootstrap.to_str().unwrap()],
        &[],
    );
    lifecycle_checks(
        &shim,
        2000,
        json!({"fail": true}),
        json!({"sleep_ms": 30_000}),
        json!({"exit": 3}),
        // lambda_runtime reports the Rust type name of the error.
        "",
    );
    let reply = shim.invoke(&json!({"x": 1}));
    assert_eq!(reply.json()["event"], json!({"x": 1}));
    assert!(
        reply.json()["function_arn"]
            .as_str()
            .unwrap()
            .starts_with("arn:aws:lambda:")
    );
}

#[test]
fn concurrency_overflow_is_refused_at_once() {
    let Some(bootstrap) = common::rust_bootstrap() else {
        return;
    };
    let root = task_root(&[]);
    let shim = Shim::start(
        &root,
        &["--timeout-seconds", "30", "--", bootstrap.to_str().unwrap()],
        &[],
    );
    assert_eq!(shim.wait_ready().status, 200);
    let addr = shim.addr;
    let slow = std::thread::spawn(move || {
        common::http(
            addr,
            "POST",
            "/2015-03-31/functions/function/invocations",
            &[],
            br#"{"sleep_ms":1500}"#,
        )
    });
    // Wait (bounded) until the slow invocation holds the environment.
    let mut busy = false;
    for _ in 0..500 {
        let metrics = shim.request("GET", "/metrics", &[], b"").text();
        if metrics.contains("porchlight_runtime_in_flight_invocations 1") {
            busy = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(busy, "the slow invocation never started");
    let refused = shim.invoke(&json!({}));
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(refused.json()["errorType"], "TooManyRequestsException");
    assert_eq!(count(&slow.join().unwrap()), 1);
    assert_eq!(count(&shim.invoke(&json!({}))), 2);
}

#[test]
fn freeze_stops_the_idle_runtime() {
    let Some(bootstrap) = common::rust_bootstrap() else {
        return;
    };
    let root = task_root(&[]);
    let shim = Shim::start(&root, &["--freeze", "--", bootstrap.to_str().unwrap()], &[]);
    assert_eq!(shim.wait_ready().status, 200);
    let pids = shim.runtime_pids();
    assert_eq!(pids.len(), 1, "one runtime process: {pids:?}");
    let wait_for_state = |want: char| {
        (0..500).any(|_| {
            let state = process_state(pids[0]);
            if state == Some(want) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
            false
        })
    };
    assert!(wait_for_state('T'), "the idle runtime is stopped");
    for n in 1..=3 {
        assert_eq!(count(&shim.invoke(&json!({"n": n}))), n);
        assert!(wait_for_state('T'), "stopped again after invocation {n}");
    }
}

#[test]
fn shell_script_bootstrap_runs_unmodified() {
    let root = task_root(&[
        ("bootstrap", SHELL_BOOTSTRAP),
        ("function.sh", SHELL_FUNCTION),
    ]);
    let shim = Shim::start(
        &root,
        &["--runtime", "provided", "--handler", "function.handler"],
        &[],
    );
    assert_eq!(shim.wait_ready().status, 200);
    let mut ids = HashSet::new();
    for n in 1..=3 {
        let reply = shim.invoke(&json!({"n": n}));
        assert_eq!(
            count(&reply),
            n,
            "init once: the loop's counter keeps counting"
        );
        assert_eq!(reply.json()["event"], json!({"n": n}));
        assert!(ids.insert(reply.header("x-porchlight-request-id").unwrap().to_owned()));
    }
}

#[test]
fn a_runtime_that_exits_at_once_is_an_init_error() {
    let root = task_root(&[("bootstrap", "#!/bin/sh\necho starting >&2\nexit 7\n")]);
    let shim = Shim::start(&root, &["--runtime", "provided"], &[]);
    let ready = shim.wait_ready();
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["errorType"], "Runtime.ExitError");
    assert!(
        ready.json()["errorMessage"]
            .as_str()
            .unwrap()
            .contains("exit status 7")
    );
    assert_eq!(shim.invoke(&json!({})).status, 502);
    // The environment keeps serving.
    assert_eq!(shim.request("GET", "/live", &[], b"").status, 200);
}

#[test]
fn exit_on_init_error_writes_the_termination_log_and_exits_1() {
    let root = task_root(&[("bootstrap", "#!/bin/sh\necho starting >&2\nexit 7\n")]);
    let log = root.with_extension("termination-log");
    let mut shim = Shim::start(
        &root,
        &["--runtime", "provided", "--exit-on-init-error"],
        &[("PORCHLIGHT_TERMINATION_LOG", log.to_str().unwrap())],
    );
    let mut status = None;
    for _ in 0..1000 {
        if let Ok(Some(s)) = shim.child.try_wait() {
            status = Some(s);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let status = status.unwrap_or_else(|| shim.terminate().expect("exited"));
    assert_eq!(status.code(), Some(1), "{status:?}");
    let message: Value =
        serde_json::from_slice(&std::fs::read(&log).expect("termination log")).expect("JSON");
    let _ = std::fs::remove_file(&log);
    assert_eq!(message["errorType"], "Runtime.ExitError");
    assert!(
        message["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("exit status 7")),
        "{message}"
    );
}

#[test]
fn a_runtime_that_never_asks_for_an_event_times_out_its_init() {
    let root = task_root(&[("bootstrap", "#!/bin/sh\nexec sleep 600\n")]);
    let shim = Shim::start(
        &root,
        &["--runtime", "provided", "--init-timeout-seconds", "0.5"],
        &[],
    );
    let ready = shim.wait_ready();
    assert_eq!(ready.status, 503);
    assert_eq!(
        ready.json()["errorMessage"],
        "Init timed out after 0.50 seconds"
    );
}

#[test]
fn bundled_python_bootstrap_gives_lambdas_context() {
    let python = common::plain_python();
    let root = task_root(&[("app.py", PY_APP)]);
    let shim = Shim::start(
        &root,
        &[
            "--runtime",
            "python3.12",
            "--handler",
            "app.handler",
            "--function-name",
            "hello",
            "--timeout-seconds",
            "2",
        ],
        &[("PORCHLIGHT_PYTHON", &python)],
    );
    lifecycle_checks(
        &shim,
        2000,
        json!({"fail": true}),
        json!({"sleep": 30}),
        json!({"exit": 3}),
        "ValueError",
    );
    let context = r#"{"custom":{"k":"v"}}"#;
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(context);
    let reply = shim.invoke_raw(br#"{"a":[1,2]}"#, &[("X-Amz-Client-Context", &encoded)]);
    let body = reply.json();
    assert_context_names(&body);
    assert_eq!(body["client_custom"], json!({"k": "v"}));
    assert_eq!(body["event"], json!({"a": [1, 2]}));
    let error = shim.invoke(&json!({"fail": true})).json();
    assert_eq!(error["errorMessage"], "the event asked for a failure");
    let trace = error["stackTrace"].to_string();
    assert!(
        trace.contains("app.py") && !trace.contains("<string>"),
        "{trace}"
    );
}

#[test]
fn bundled_python_bootstrap_reports_import_errors() {
    let python = common::plain_python();
    for (files, handler, error_type) in [
        (
            vec![("broken.py", PY_BROKEN)],
            "broken.handler",
            "Runtime.ImportModuleError",
        ),
        (
            vec![("app.py", PY_APP)],
            "app.nothing_here",
            "Runtime.HandlerNotFound",
        ),
    ] {
        let root = task_root(&files);
        let shim = Shim::start(
            &root,
            &["--runtime", "python3.12", "--handler", handler],
            &[("PORCHLIGHT_PYTHON", &python)],
        );
        let ready = shim.wait_ready();
        assert_eq!(ready.status, 503);
        assert_eq!(ready.json()["errorType"], error_type, "{}", ready.text());
        let reply = shim.invoke_raw(b"{}", &[("X-Porchlight-Request-Id", "gw-init-1")]);
        assert_eq!(reply.status, 502);
        assert_eq!(reply.json()["errorType"], error_type);
        // The init error names the invocation it answers.
        assert_eq!(reply.json()["requestId"], "gw-init-1", "{}", reply.text());
    }
}

#[test]
fn bad_events_get_lambda_errors_and_the_shim_keeps_serving() {
    let python = common::plain_python();
    let root = task_root(&[("app.py", PY_APP)]);
    let shim = Shim::start(
        &root,
        &["--runtime", "python3.12", "--handler", "app.handler"],
        &[("PORCHLIGHT_PYTHON", &python)],
    );
    assert_eq!(shim.wait_ready().status, 200);

    let big = vec![b' '; porchlight_runtime::MAX_PAYLOAD_BYTES + 1];
    let reply = shim.invoke_raw(&big, &[]);
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert_eq!(reply.json()["errorType"], "RequestEntityTooLargeException");

    let reply = shim.invoke_raw(b"{not json", &[]);
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["errorType"], "InvalidRequestContentException");

    let reply = shim.invoke_raw(b"{}", &[("X-Amz-Client-Context", "***")]);
    assert_eq!(reply.status, 400);

    let reply = shim.request(
        "GET",
        "/2015-03-31/functions/function/invocations",
        &[],
        b"",
    );
    assert_eq!(reply.status, 405);
    assert!(reply.json()["errorType"].is_string());

    assert_eq!(count(&shim.invoke(&json!({}))), 1);
    // Any function name in the path is accepted.
    let reply = shim.request(
        "POST",
        "/2015-03-31/functions/hello/invocations",
        &[],
        b"{}",
    );
    assert_eq!(count(&reply), 2);
}

#[test]
fn sigterm_drains_and_stops() {
    let python = common::plain_python();
    let root = task_root(&[("app.py", PY_APP)]);
    let mut shim = Shim::start(
        &root,
        &["--runtime", "python3.12", "--handler", "app.handler"],
        &[("PORCHLIGHT_PYTHON", &python)],
    );
    assert_eq!(shim.wait_ready().status, 200);
    let addr = shim.addr;
    let slow = std::thread::spawn(move || {
        common::http(
            addr,
            "POST",
            "/2015-03-31/functions/function/invocations",
            &[],
            br#"{"sleep":0.5}"#,
        )
    });
    for _ in 0..500 {
        if shim
            .request("GET", "/metrics", &[], b"")
            .text()
            .contains("porchlight_runtime_in_flight_invocations 1")
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let pid = nix::unistd::Pid::from_raw(shim.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    // The in-flight invocation still completes.
    assert_eq!(count(&slow.join().unwrap()), 1);
    let status = shim.terminate().expect("the shim exits");
    assert!(status.success(), "{status:?}");
}

#[test]
fn bad_config_exits_64_with_one_line() {
    let out = std::process::Command::new(common::SHIM)
        .args(["--runtime", "cobol"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let out = std::process::Command::new(common::SHIM)
        .args(["--timeout-seconds", "soon", "--runtime", "provided"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

// ---------------------------------------------------------------------------
// The bundled Node.js bootstrap.

/// A CommonJS handler, async, with a module-level counter and every
/// context field in its answer.
const NODE_APP: &str = r#"
let count = 0;
console.log('init\nsecond line');
exports.handler = async (event, context) => {
  count += 1;
  console.log('handling', count, { n: event.n });
  console.warn('a warning');
  console.error('an error %d', 42);
  if (event.fail) {
    throw new RangeError('the event asked for a failure');
  }
  if (event.sleep) {
    await new Promise((resolve) => setTimeout(resolve, event.sleep * 1000));
  }
  if ('exit' in event) {
    process.exit(event.exit);
  }
  if (event.lost) {
    // Rejected, and nobody waits for it.
    Promise.reject(new Error('lost promise'));
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  const first = context.getRemainingTimeInMillis();
  await new Promise((resolve) => setTimeout(resolve, 30));
  return {
    count,
    request_id: context.awsRequestId,
    remaining_ms: context.getRemainingTimeInMillis(),
    remaining_first_ms: first,
    function_name: context.functionName,
    function_version: context.functionVersion,
    memory_limit_in_mb: context.memoryLimitInMB,
    invoked_function_arn: context.invokedFunctionArn,
    log_group_name: context.logGroupName,
    log_stream_name: context.logStreamName,
    waits: context.callbackWaitsForEmptyEventLoop,
    client_custom: context.clientContext ? context.clientContext.custom : null,
    identity: context.identity === undefined ? 'none' : context.identity,
    execution_env: process.env.AWS_EXECUTION_ENV,
    event,
  };
};
"#;

/// Callback handlers: `cb` answers after a timer unless the event asks not
/// to wait for the event loop; `forgets` never calls back; `never` is async
/// and never settles; `fails` calls back with an error, `fails_plain` with
/// a string.
const NODE_CALLBACKS: &str = r#"
exports.cb = (event, context, callback) => {
  context.callbackWaitsForEmptyEventLoop = !event.dont_wait;
  setTimeout(() => console.log('timer fired'), 400);
  callback(null, { answered: Date.now(), waits: context.callbackWaitsForEmptyEventLoop });
};
exports.forgets = (event, context, callback) => {
  setTimeout(() => console.log('done without calling back'), 50);
};
exports.never = async () => new Promise(() => {});
exports.fails = (event, context, callback) => callback(new TypeError('callback failure'));
exports.fails_plain = (event, context, callback) => callback('plain failure');
"#;

fn node_shim(files: &[(&str, &str)], handler: &str, extra: &[&str]) -> Option<Shim> {
    let node = common::node()?;
    let root = task_root(files);
    let mut args = vec![
        "--runtime",
        "nodejs20.x",
        "--handler",
        handler,
        "--function-name",
        "hello",
    ];
    args.extend_from_slice(extra);
    Some(Shim::start(&root, &args, &[("PORCHLIGHT_NODE", &node)]))
}

#[test]
fn bundled_node_bootstrap_gives_lambdas_context() {
    let Some(shim) = node_shim(
        &[("index.js", NODE_APP)],
        "index.handler",
        &["--timeout-seconds", "2"],
    ) else {
        return;
    };
    lifecycle_checks(
        &shim,
        2000,
        json!({"fail": true}),
        json!({"sleep": 30}),
        json!({"exit": 3}),
        "RangeError",
    );
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(r#"{"custom":{"k":"v"}}"#);
    let reply = shim.invoke_raw(br#"{"a":[1,2]}"#, &[("X-Amz-Client-Context", &encoded)]);
    let body = reply.json();
    assert_eq!(
        body["request_id"],
        reply.header("x-porchlight-request-id").unwrap()
    );
    assert_context_names(&body);
    assert_eq!(body["waits"], true);
    assert_eq!(body["client_custom"], json!({"k": "v"}));
    assert_eq!(body["identity"], "none");
    assert_eq!(body["execution_env"], "AWS_Lambda_nodejs20.x");
    assert_eq!(body["event"], json!({"a": [1, 2]}));
    let (first, then) = (
        body["remaining_first_ms"].as_u64().unwrap(),
        body["remaining_ms"].as_u64().unwrap(),
    );
    assert!(
        then < first && first <= 2000 && then >= 1000,
        "remaining time decreases within the deadline: {first} then {then}"
    );

    // A thrown error in Lambda's Node.js shape.
    let error = shim.invoke(&json!({"fail": true})).json();
    assert_eq!(error["errorType"], "RangeError");
    assert_eq!(error["errorMessage"], "the event asked for a failure");
    let trace: Vec<&str> = error["trace"]
        .as_array()
        .expect("a trace array")
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(trace[0], "RangeError: the event asked for a failure");
    assert!(trace.iter().any(|l| l.contains("index.js:")), "{trace:?}");
}

#[test]
fn bundled_node_bootstrap_logs_as_lambdas_node_runtime() {
    let Some(shim) = node_shim(&[("index.js", NODE_APP)], "index.handler", &[]) else {
        return;
    };
    assert_eq!(shim.wait_ready().status, 200);
    let reply = shim.invoke(&json!({"n": 7}));
    assert_eq!(count(&reply), 1);
    let id = reply.header("x-porchlight-request-id").unwrap().to_owned();
    // `2026-01-02T03:04:05.678Z`, as Date.toISOString writes it.
    let is_timestamp = |t: &str| {
        t.len() == 24
            && t.bytes().enumerate().all(|(i, b)| match i {
                4 | 7 => b == b'-',
                10 => b == b'T',
                13 | 16 => b == b':',
                19 => b == b'.',
                23 => b == b'Z',
                _ => b.is_ascii_digit(),
            })
    };
    let line = |level: &str, message: &str| {
        let (id, level, message) = (id.clone(), level.to_owned(), message.to_owned());
        move |l: &str| {
            let fields: Vec<&str> = l.splitn(4, '\t').collect();
            fields.len() == 4
                && is_timestamp(fields[0])
                && fields[1] == id
                && fields[2] == level
                && fields[3] == message
        }
    };
    assert!(shim.stdout_has(line("INFO", "handling 1 { n: 7 }")));
    assert!(shim.stdout_has(line("WARN", "a warning")));
    assert!(shim.stdout_has(line("ERROR", "an error 42")));
    // During init the request id is `undefined`, and a multi-line message
    // stays one line, its newlines turned into carriage returns.
    assert!(shim.stdout_has(|l| {
        let fields: Vec<&str> = l.splitn(4, '\t').collect();
        fields.len() == 4
            && is_timestamp(fields[0])
            && fields[1..] == ["undefined", "INFO", "init\rsecond line"]
    }));
    // The runtime's own record of a failed invocation.
    let failed = shim.invoke(&json!({"fail": true}));
    let id = failed.header("x-porchlight-request-id").unwrap().to_owned();
    assert!(shim.stdout_has(|l| l.contains(&format!(
        "\t{id}\tERROR\tInvoke Error \t{{\"errorType\":\"RangeError\""
    ))));
}

#[test]
fn bundled_node_bootstrap_loads_es_modules() {
    let esm = "import { platform } from 'node:os';\n\
               export const handler = async (event, context) => ({ kind: 'mjs', os: platform(), event });\n";
    let typed = "export function handler(event, context, callback) {\n  callback(null, { kind: 'type-module', id: context.awsRequestId });\n}\n";
    let cjs = "module.exports.nested = { handler: async () => ({ kind: 'cjs' }) };\n";
    for (files, handler, kind) in [
        (vec![("app.mjs", esm)], "app.handler", "mjs"),
        (
            vec![
                ("package.json", r#"{"type": "module"}"#),
                ("src/app.js", typed),
            ],
            "src/app.handler",
            "type-module",
        ),
        (vec![("lib.cjs", cjs)], "lib.nested.handler", "cjs"),
    ] {
        let Some(shim) = node_shim(&files, handler, &[]) else {
            return;
        };
        let ready = shim.wait_ready();
        assert_eq!(ready.status, 200, "{handler}: {}", ready.text());
        let reply = shim.invoke(&json!({"x": 1}));
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["kind"], kind, "{}", reply.text());
        if kind == "mjs" {
            assert_eq!(reply.json()["event"], json!({"x": 1}));
        }
        if kind == "type-module" {
            assert_eq!(
                reply.json()["id"],
                reply.header("x-porchlight-request-id").unwrap()
            );
        }
    }
}

#[test]
fn bundled_node_bootstrap_honours_callbacks_and_the_event_loop() {
    let Some(shim) = node_shim(&[("index.js", NODE_CALLBACKS)], "index.cb", &[]) else {
        return;
    };
    assert_eq!(shim.wait_ready().status, 200);
    // The callback's answer waits for the pending timer (400 ms) ...
    let started = std::time::Instant::now();
    let reply = shim.invoke(&json!({}));
    let waited = started.elapsed();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["waits"], true);
    assert!(
        waited >= std::time::Duration::from_millis(350),
        "answered after {waited:?}, before the event loop was empty"
    );
    let id = reply.header("x-porchlight-request-id").unwrap().to_owned();
    assert!(shim.stdout_has(|l| l.contains(&format!("\t{id}\tINFO\ttimer fired"))));
    // ... unless the function says not to wait.
    let started = std::time::Instant::now();
    let reply = shim.invoke(&json!({"dont_wait": true}));
    assert_eq!(reply.json()["waits"], false, "{}", reply.text());
    assert!(
        started.elapsed() < std::time::Duration::from_millis(350),
        "answered after {:?}",
        started.elapsed()
    );
}

#[test]
fn bundled_node_bootstrap_reports_callback_and_settling_errors() {
    for (handler, status_check) in [
        ("index.fails", Some(("TypeError", "callback failure"))),
        ("index.fails_plain", Some(("string", "plain failure"))),
        ("index.never", Some(("Runtime.NodeJsExit", ""))),
        ("index.forgets", None),
    ] {
        let Some(shim) = node_shim(&[("index.js", NODE_CALLBACKS)], handler, &[]) else {
            return;
        };
        assert_eq!(shim.wait_ready().status, 200);
        for _ in 0..2 {
            let reply = shim.invoke(&json!({}));
            match status_check {
                Some((error_type, message)) => {
                    let body = assert_unhandled(&reply, error_type);
                    if !message.is_empty() {
                        assert_eq!(body["errorMessage"], message);
                    }
                    assert!(body["trace"].is_array(), "{body}");
                }
                None => {
                    // Never called back: Lambda answers null once the
                    // event loop is empty.
                    assert_eq!(reply.status, 200, "{}", reply.text());
                    assert_eq!(reply.header("x-amz-function-error"), None);
                    assert_eq!(reply.text(), "null");
                }
            }
        }
    }
}

#[test]
fn bundled_node_bootstrap_exits_after_an_unhandled_rejection() {
    let Some(shim) = node_shim(&[("index.js", NODE_APP)], "index.handler", &[]) else {
        return;
    };
    assert_eq!(count(&shim.invoke(&json!({}))), 1);
    assert_eq!(count(&shim.invoke(&json!({}))), 2);
    let body = assert_unhandled(
        &shim.invoke(&json!({"lost": true})),
        "Runtime.UnhandledPromiseRejection",
    );
    assert_eq!(body["errorMessage"], "Error: lost promise");
    // The runtime exits (as Lambda's does) once the error is posted; the
    // shim starts it again.
    let restarted = (0..500).any(|_| {
        let metrics = shim.request("GET", "/metrics", &[], b"").text();
        if metrics.contains("porchlight_runtime_runtime_restarts_total{reason=\"crash\"} 1") {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        false
    });
    assert!(restarted, "the runtime did not exit after the rejection");
    let after = shim.invoke(&json!({}));
    assert_eq!(count(&after), 1, "a fresh runtime: {}", after.text());
    assert_eq!(after.header("x-porchlight-cold-start"), Some("true"));
}

#[test]
fn bundled_node_bootstrap_reports_init_errors() {
    let app = "exports.handler = async () => 1;\nexports.value = 3;\n";
    for (files, handler, error_type, message) in [
        (
            vec![("index.js", app)],
            "missing.handler",
            "Runtime.ImportModuleError",
            "Cannot find module 'missing'",
        ),
        (
            vec![(
                "app.mjs",
                "import nothing from 'no-such-package';\nexport const handler = 1;\n",
            )],
            "app.handler",
            "Runtime.ImportModuleError",
            "no-such-package",
        ),
        (
            vec![("index.js", app)],
            "index.nothing",
            "Runtime.HandlerNotFound",
            "index.nothing is undefined or not exported",
        ),
        (
            vec![("index.js", app)],
            "index.value",
            "Runtime.HandlerNotFound",
            "index.value is not a function",
        ),
        (
            vec![("index.js", "exports.handler = async (event => {;\n")],
            "index.handler",
            "Runtime.UserCodeSyntaxError",
            "SyntaxError",
        ),
        (
            vec![("index.js", "throw new URIError('bad at init');\n")],
            "index.handler",
            "URIError",
            "bad at init",
        ),
    ] {
        let Some(shim) = node_shim(&files, handler, &[]) else {
            return;
        };
        let ready = shim.wait_ready();
        assert_eq!(ready.status, 503, "{handler}: {}", ready.text());
        assert_eq!(ready.json()["errorType"], error_type, "{}", ready.text());
        assert!(
            ready.json()["errorMessage"]
                .as_str()
                .is_some_and(|m| m.contains(message)),
            "{}",
            ready.text()
        );
        let reply = shim.invoke_raw(b"{}", &[("X-Porchlight-Request-Id", "gw-init-1")]);
        assert_eq!(reply.status, 502);
        assert_eq!(reply.json()["errorType"], error_type);
        // Init output is logged with `undefined` for the request id.
        assert!(shim.stdout_has(|l| l.contains("\tundefined\tERROR\t")));
    }
}

#[test]
fn bundled_node_bootstrap_logs_json_when_asked() {
    let Some(node) = common::node() else {
        return;
    };
    let root = task_root(&[("index.js", NODE_APP)]);
    let shim = Shim::start(
        &root,
        &["--runtime", "nodejs20.x", "--handler", "index.handler"],
        &[
            ("PORCHLIGHT_NODE", &node),
            ("AWS_LAMBDA_LOG_FORMAT", "JSON"),
            ("AWS_LAMBDA_LOG_LEVEL", "WARN"),
        ],
    );
    let reply = shim.invoke(&json!({"n": 1}));
    assert_eq!(count(&reply), 1);
    let id = reply.header("x-porchlight-request-id").unwrap().to_owned();
    let record = |level: &str, message: &str| {
        let (id, level, message) = (id.clone(), level.to_owned(), message.to_owned());
        move |l: &str| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| {
                v["requestId"] == id.as_str()
                    && v["level"] == level.as_str()
                    && v["message"] == message.as_str()
                    && v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z'))
            })
        }
    };
    assert!(shim.stdout_has(record("WARN", "a warning")));
    assert!(shim.stdout_has(record("ERROR", "an error 42")));
    // Below AWS_LAMBDA_LOG_LEVEL: not written.
    assert!(!shim.stdout_lines().iter().any(|l| l.contains("handling")));
}

/// The function's names in a handler's `context`, as the test shims set them
/// (function `hello`, environment `test-env`), whichever runtime reports them.
fn assert_context_names(body: &serde_json::Value) {
    assert_eq!(body["function_name"], "hello");
    assert_eq!(body["function_version"], "$LATEST");
    assert_eq!(body["memory_limit_in_mb"], "128");
    assert_eq!(
        body["invoked_function_arn"],
        "arn:aws:lambda:us-east-1:000000000000:function:hello"
    );
    assert_eq!(body["log_group_name"], "/aws/lambda/hello");
    assert!(
        body["log_stream_name"]
            .as_str()
            .unwrap()
            .ends_with("[$LATEST]test-env")
    );
}
