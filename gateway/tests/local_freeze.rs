//! Local mode freezes a function's environment between invocations, as
//! Lambda and the pods do, unless the function sets `freeze: false`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{LocalGateway, invoke, poll, python_function};
use serde_json::Value;

/// A module that starts a thread counting into `$MARKER_DIR/<name>-<pid>`
/// every 10 ms (local mode may start more than one environment); the
/// handler answers with the runtime's pid.
fn ticking(name: &str, markers: &Path, extra_spec: &str) -> String {
    let code = format!(
        r#"import os, threading, time
path = os.path.join(os.environ["MARKER_DIR"], "{name}-%d" % os.getpid())
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
    return {{"pid": os.getpid()}}"#
    );
    let spec = format!(
        "  env:\n    MARKER_DIR: {}\n{extra_spec}",
        markers.display()
    );
    python_function(name, &code, &spec)
}

fn ticks(markers: &Path, name: &str, pid: i64) -> Option<u64> {
    std::fs::read_to_string(markers.join(format!("{name}-{pid}")))
        .ok()
        .and_then(|t| t.trim().parse().ok())
}

/// `State` field of /proc/<pid>/stat ('S', 'R', 'T', ...).
fn process_state(pid: i64) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Whether every thread of `pid` is stopped: a group stop reaches each
/// thread on its own, the leader's state alone says little.
fn all_threads_stopped(pid: i64) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|stat| stat.rsplit_once(')')?.1.trim_start().chars().next())
            == Some('T')
    })
}

async fn runtime_pid(gw: &LocalGateway, name: &str) -> i64 {
    let r = invoke(gw, name, "{}").await;
    assert_eq!(r.status, 200, "{} {}", r.body, gw.log());
    let body: Value = serde_json::from_str(&r.body).expect("json");
    body["pid"].as_i64().expect("a pid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environments_freeze_between_invocations_unless_told_not_to() {
    let markers = common::temp_dir("freeze-markers");
    let gw = LocalGateway::start(
        "freeze",
        &[
            ("frozen.yaml", ticking("frozen", &markers, "")),
            ("busy.yaml", ticking("busy", &markers, "  freeze: false\n")),
        ],
        &[],
    );
    assert!(common::wait_ready(&gw).await, "{}", gw.log());

    // Default settings: frozen once idle, and nothing of it runs.
    let pid = runtime_pid(&gw, "frozen").await;
    let frozen = poll(500, Duration::from_millis(10), || async {
        all_threads_stopped(pid).then_some(())
    })
    .await;
    assert!(frozen.is_some(), "the idle runtime is frozen: {}", gw.log());
    let before = ticks(&markers, "frozen", pid);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        ticks(&markers, "frozen", pid),
        before,
        "its background thread does not run while idle: {}",
        gw.log()
    );
    // The next event thaws it.
    assert_eq!(
        runtime_pid(&gw, "frozen").await,
        pid,
        "the same environment"
    );

    // `freeze: false`: the background thread keeps counting while idle.
    let pid = runtime_pid(&gw, "busy").await;
    let first = ticks(&markers, "busy", pid).unwrap_or(0);
    let advanced = poll(500, Duration::from_millis(20), || async {
        ticks(&markers, "busy", pid).filter(|n| *n > first + 5)
    })
    .await;
    assert!(advanced.is_some(), "the background thread runs while idle");
    assert_ne!(process_state(pid), Some('T'), "not frozen");
    let _ = std::fs::remove_dir_all(&markers);
}
