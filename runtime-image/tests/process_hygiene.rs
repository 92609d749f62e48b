//! Tier 3: the built shim's care for its processes when it is killed, when
//! it is PID 1 of a pod, and when it is stopped during a long invocation.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Shim, process_state, task_root, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

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

/// A runtime whose helpers outlive the processes that started them: each
/// `( sleep & )` leaves an orphan that ends 0.2 s later.
const ORPHANING_BOOTSTRAP: &str = r#"#!/bin/sh
for i in 1 2 3; do ( sleep 0.2 & ) ; done
echo $$ > "$LAMBDA_TASK_ROOT/runtime.pid"
exec sleep 600
"#;

/// Direct children of `parent` (host pids), with their state.
fn children_of(parent: i32) -> Vec<(i32, char)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
            let state = fields.next()?.chars().next()?;
            let ppid: i32 = fields.next()?.parse().ok()?;
            (ppid == parent).then_some((pid, state))
        })
        .collect()
}

#[test]
fn as_pid_1_the_shim_reaps_orphaned_processes() {
    let usable = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !usable {
        common::missing(
            "`unshare --pid --fork --mount-proc` (util-linux, as root)",
            "Run the tests as root on Linux with util-linux installed",
        );
        return;
    }
    let root = task_root(&[("bootstrap", ORPHANING_BOOTSTRAP)]);
    // `--kill-child`: should the test fail, the namespace goes with unshare.
    let mut shim = Shim::start_wrapped(
        &["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"],
        &root,
        &["--runtime", "provided"],
        &[],
    );
    // The shim is unshare's only child, and PID 1 of the new namespace.
    let unshare = shim.child.id() as i32;
    let mut shim_pid = None;
    wait_until(Duration::from_secs(5), || {
        shim_pid = children_of(unshare).first().map(|(pid, _)| *pid);
        shim_pid.is_some()
    });
    let shim_pid = shim_pid.expect("unshare started the shim");
    let _ = pid_written(&root, "runtime.pid");

    // Three orphans end 0.2 s after the runtime started; the runtime itself
    // (the one process left) keeps running.
    let reaped = wait_until(Duration::from_secs(5), || children_of(shim_pid).len() == 1);
    let children = children_of(shim_pid);
    let zombies = children.iter().filter(|(_, state)| *state == 'Z').count();

    let _ = kill(Pid::from_raw(shim_pid), Signal::SIGTERM);
    let stopped = wait_until(Duration::from_secs(10), || {
        matches!(shim.child.try_wait(), Ok(Some(_)))
    });
    assert!(reaped, "children of the shim after 5 s: {children:?}");
    assert_eq!(zombies, 0, "{children:?}");
    assert!(stopped, "the shim stops on SIGTERM as PID 1");
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
