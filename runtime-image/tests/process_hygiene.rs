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
