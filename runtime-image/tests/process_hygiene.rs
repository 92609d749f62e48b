//! Tier 3: the built shim's care for its processes when it is killed, when
//! it is PID 1 of a pod, and when it is stopped during a long invocation.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Shim, process_state, task_root};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Polls `done` every 10 ms until it holds or `limit` has passed.
fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    done()
}

/// Whether `pid` still runs (a zombie has ended; only its entry is left).
fn runs(pid: i32) -> bool {
    process_state(pid).is_some_and(|state| state != 'Z')
}

/// The pid a bootstrap wrote to `<task root>/<name>`, once it did.
fn pid_written(root: &Path, name: &str) -> i32 {
    let path = root.join(name);
    let mut pid = None;
    wait_until(Duration::from_secs(10), || {
        pid = std::fs::read_to_string(&path)
            .ok()
            .and_then(|p| p.trim().parse().ok());
        pid.is_some()
    });
    pid.unwrap_or_else(|| panic!("the runtime never wrote {}", path.display()))
}

/// A runtime that ignores the polite signals and never ends by itself.
const STUBBORN_BOOTSTRAP: &str = r#"#!/bin/sh
trap '' TERM HUP INT
echo $$ > "$LAMBDA_TASK_ROOT/runtime.pid"
exec sleep 600
"#;

#[test]
fn the_runtime_dies_with_a_killed_shim() {
    let root = task_root(&[("bootstrap", STUBBORN_BOOTSTRAP)]);
    let mut shim = Shim::start(&root, &["--runtime", "provided"], &[]);
    let runtime = pid_written(&root, "runtime.pid");
    assert!(runs(runtime), "the runtime runs before the shim is killed");

    kill(Pid::from_raw(shim.child.id() as i32), Signal::SIGKILL).expect("SIGKILL the shim");
    shim.child.wait().expect("the shim is reaped");

    let gone = wait_until(Duration::from_secs(5), || !runs(runtime));
    if !gone {
        // Leave nothing behind before failing.
        let _ = kill(Pid::from_raw(runtime), Signal::SIGKILL);
    }
    assert!(gone, "runtime {runtime} outlived its shim by 5 s");
}

const SLOW_APP: &str = r#"
import time

def handler(event, context):
    time.sleep(event["sleep"])
    return {"slept": event["sleep"], "remaining_ms": context.get_remaining_time_in_millis()}
"#;

/// Longer than the shim's former fixed 10 s drain, shorter than the
/// function's timeout.
#[test]
fn sigterm_lets_an_invocation_within_its_timeout_finish() {
    let python = common::plain_python();
    let root = task_root(&[("app.py", SLOW_APP)]);
    let mut shim = Shim::start(
        &root,
        &[
            "--runtime",
            "python3.12",
            "--handler",
            "app.handler",
            "--timeout-seconds",
            "13",
        ],
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
            br#"{"sleep":10.5}"#,
        )
    });
    let in_flight = wait_until(Duration::from_secs(5), || {
        shim.request("GET", "/metrics", &[], b"")
            .text()
            .contains("porchlight_runtime_in_flight_invocations 1")
    });
    assert!(in_flight, "the invocation started");
    kill(Pid::from_raw(shim.child.id() as i32), Signal::SIGTERM).expect("SIGTERM the shim");

    let reply = slow.join().expect("the invocation thread");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.header("x-amz-function-error"),
        None,
        "{}",
        reply.text()
    );
    assert_eq!(reply.json()["slept"], 10.5, "{}", reply.text());
    let status = shim.terminate().expect("the shim exits");
    assert!(status.success(), "{status:?}");
}
