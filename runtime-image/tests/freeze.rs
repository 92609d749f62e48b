//! Tier 3: the built shim freezing its idle runtime as Lambda does, with the
//! bundled Python bootstrap: background work stops between invocations, a
//! stop thaws the runtime so that its SIGTERM handler runs, and `/metrics`
//! counts freezes and thaws.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Shim, process_state, task_root, wait_until};
use serde_json::json;

/// A handler whose module starts a thread that counts into `ticks` every 10 ms.
const TICKING_APP: &str = r#"
import os, threading, time
path = os.path.join(os.environ["LAMBDA_TASK_ROOT"], "ticks")

def tick():
    n = 0
    while True:
        n += 1
        with open(path + ".tmp", "w") as f:
            f.write(str(n))
        os.replace(path + ".tmp", path)
        time.sleep(0.01)

threading.Thread(target=tick, daemon=True).start()

def handler(event, context):
    return {"ok": True}
"#;

/// A handler whose module writes `terminated` when the runtime gets SIGTERM.
const SIGTERM_APP: &str = r#"
import os, signal, sys

def on_term(signum, frame):
    with open(os.path.join(os.environ["LAMBDA_TASK_ROOT"], "terminated"), "w") as f:
        f.write("SIGTERM handled")
    sys.exit(0)

signal.signal(signal.SIGTERM, on_term)

def handler(event, context):
    return {"ok": True}
"#;

fn python_shim(root: &Path, freeze: &str) -> Shim {
    let python = common::plain_python();
    let shim = Shim::start(
        root,
        &["--runtime", "python3.12", "--handler", "app.handler"],
        &[
            ("PORCHLIGHT_PYTHON", &python),
            ("PORCHLIGHT_FREEZE", freeze),
        ],
    );
    assert_eq!(shim.wait_ready().status, 200);
    shim
}

fn runtime_pid(shim: &Shim) -> i32 {
    let pids = shim.runtime_pids();
    assert_eq!(pids.len(), 1, "one runtime process: {pids:?}");
    pids[0]
}

/// Waits (bounded) until every thread of `pid` is stopped: a group stop
/// reaches each thread on its own, the leader's state alone says little.
fn stopped(pid: i32) -> bool {
    wait_until(Duration::from_secs(5), || {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        tasks.flatten().all(|task| {
            let tid = task.file_name().to_string_lossy().parse().unwrap_or(0);
            process_state_of(pid, tid) == Some('T')
        })
    })
}

/// `State` of thread `tid` of `pid`.
fn process_state_of(pid: i32, tid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn ticks(root: &Path) -> Option<u64> {
    std::fs::read_to_string(root.join("ticks"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
}

/// The value of the sample `name` (with its labels) in the metrics text.
fn sample(shim: &Shim, name: &str) -> Option<f64> {
    let text = shim.request("GET", "/metrics", &[], b"").text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn background_work_stops_between_invocations_when_frozen() {
    let root = task_root(&[("app.py", TICKING_APP)]);
    let shim = python_shim(&root, "true");
    let pid = runtime_pid(&shim);
    assert_eq!(shim.invoke(&json!({})).status, 200);
    assert!(stopped(pid), "the idle runtime is frozen");
    let before = ticks(&root);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        ticks(&root),
        before,
        "the counting thread does not run while the environment is idle"
    );
    // The next event thaws it; once idle again, it is frozen again.
    assert_eq!(shim.invoke(&json!({})).status, 200);
    assert!(stopped(pid), "frozen again after the invocation");
    let again = ticks(&root);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ticks(&root), again, "still nothing runs while idle");
}

#[test]
fn background_work_keeps_running_without_freeze() {
    let root = task_root(&[("app.py", TICKING_APP)]);
    let shim = python_shim(&root, "false");
    let pid = runtime_pid(&shim);
    assert_eq!(shim.invoke(&json!({})).status, 200);
    let first = ticks(&root).unwrap_or(0);
    let advanced = wait_until(Duration::from_secs(10), || {
        ticks(&root).is_some_and(|n| n > first + 5)
    });
    assert!(
        advanced,
        "the counting thread runs while the environment is idle"
    );
    assert_ne!(process_state(pid), Some('T'), "not frozen");
}

#[test]
fn sigterm_to_the_shim_runs_the_frozen_runtimes_sigterm_handler() {
    let root = task_root(&[("app.py", SIGTERM_APP)]);
    let mut shim = python_shim(&root, "true");
    let pid = runtime_pid(&shim);
    assert_eq!(shim.invoke(&json!({})).status, 200);
    assert!(stopped(pid), "the idle runtime is frozen");
    let status = shim.terminate().expect("the shim exits");
    assert!(status.success(), "{status:?}");
    let written = std::fs::read_to_string(root.join("terminated"));
    assert_eq!(
        written.ok().as_deref(),
        Some("SIGTERM handled"),
        "the runtime was thawed before its SIGTERM"
    );
}

#[test]
fn metrics_count_freezes_and_thaws() {
    let root = task_root(&[("app.py", "def handler(event, context):\n    return 1\n")]);
    let shim = python_shim(&root, "true");
    let pid = runtime_pid(&shim);
    assert!(stopped(pid), "frozen once ready and idle");
    for _ in 0..3 {
        assert_eq!(shim.invoke(&json!({})).status, 200);
        assert!(stopped(pid), "frozen again");
    }
    // One freeze after the init, one after each invocation; one thaw
    // before each invocation.
    let counted = wait_until(Duration::from_secs(5), || {
        sample(&shim, "porchlight_runtime_freezes_total") == Some(4.0)
    });
    assert!(
        counted,
        "{}",
        shim.request("GET", "/metrics", &[], b"").text()
    );
    assert_eq!(
        sample(
            &shim,
            r#"porchlight_runtime_thaws_total{reason="invocation"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &shim,
            r#"porchlight_runtime_thaws_total{reason="shutdown"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(&shim, "porchlight_runtime_thaw_duration_seconds_count"),
        Some(3.0)
    );
}

#[test]
fn without_freeze_nothing_is_frozen_or_counted() {
    let root = task_root(&[("app.py", "def handler(event, context):\n    return 1\n")]);
    let shim = python_shim(&root, "false");
    let pid = runtime_pid(&shim);
    for _ in 0..3 {
        assert_eq!(shim.invoke(&json!({})).status, 200);
    }
    assert_ne!(process_state(pid), Some('T'));
    assert_eq!(sample(&shim, "porchlight_runtime_freezes_total"), Some(0.0));
    assert_eq!(
        sample(
            &shim,
            r#"porchlight_runtime_thaws_total{reason="invocation"}"#
        ),
        Some(0.0)
    );
}

#[test]
fn a_frozen_runtime_that_ignores_sigterm_is_still_killed() {
    let app = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n\
               def handler(event, context):\n    return 1\n";
    let root = task_root(&[("app.py", app)]);
    let mut shim = python_shim(&root, "true");
    let pid = runtime_pid(&shim);
    assert_eq!(shim.invoke(&json!({})).status, 200);
    assert!(stopped(pid), "the idle runtime is frozen");
    // SIGKILL follows SIGTERM; the shim does not wait on a stopped process.
    let status = shim.terminate().expect("the shim exits");
    assert!(status.success(), "{status:?}");
    assert!(
        wait_until(Duration::from_secs(5), || process_state(pid)
            .is_none_or(|s| s == 'Z')),
        "the runtime is gone"
    );
}
