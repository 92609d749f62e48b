//! Reaping orphans as PID 1.
//!
//! In a pod the shim is PID 1, so every process that loses its parent (a
//! runtime's helper that outlives the process that started it, the members
//! of a killed runtime's process group) becomes the shim's child. Tokio only
//! waits for the children it spawned; the others would stay zombies. On every
//! SIGCHLD the reaper waits for the exited children that are not the shim's
//! own runtimes. Those are registered while they are spawned, under the same
//! lock the reaper takes, so it can never take the exit status tokio is
//! waiting for, however early a runtime exits.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::{Mutex, MutexGuard};

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};

/// Children that tokio waits for: the reaper leaves them alone.
static MANAGED: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

fn managed() -> MutexGuard<'static, BTreeSet<i32>> {
    MANAGED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Spawns `command` as a child the shim waits for itself.
pub fn spawn_managed(command: &mut Command) -> std::io::Result<Child> {
    let mut managed = managed();
    let child = command.spawn()?;
    if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
        managed.insert(pid);
    }
    Ok(child)
}

/// `pid`, spawned by [`spawn_managed`], is no longer waited for by its
/// handle; if it is still unreaped, the reaper may take it.
pub fn release(pid: i32) {
    managed().remove(&pid);
}

/// Waits for every exited child of this process that no handle waits for.
/// Returns how many were reaped.
pub fn reap_orphans() -> usize {
    let managed = managed();
    let me = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
    let mut reaped = 0;
    for pid in exited_children(me) {
        if managed.contains(&pid) {
            continue;
        }
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => {}
            Ok(_) => reaped += 1,
        }
    }
    reaped
}

/// When this process is PID 1: reaps orphans on every SIGCHLD, until
/// dropped. Otherwise (orphans go to someone else) waits forever.
pub async fn reap_while_pid_1() -> Infallible {
    if std::process::id() != 1 {
        return std::future::pending().await;
    }
    let mut sigchld = match signal(SignalKind::child()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGCHLD: orphans will not be reaped");
            return std::future::pending().await;
        }
    };
    loop {
        let reaped = reap_orphans();
        if reaped > 0 {
            tracing::debug!(reaped, "reaped orphaned processes");
        }
        if sigchld.recv().await.is_none() {
            return std::future::pending().await;
        }
    }
}

/// Children of `parent` that have exited (zombies), from /proc.
fn exited_children(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| zombie_of(&stat))
                == Some(parent)
        })
        .collect()
}

/// The parent of the process whose `/proc/<pid>/stat` this is, if it is a
/// zombie.
fn zombie_of(stat: &str) -> Option<i32> {
    // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    (state == "Z").then_some(ppid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_name_zombies_and_their_parents() {
        assert_eq!(zombie_of("42 (sleep) Z 1 42 42 0 -1"), Some(1));
        assert_eq!(zombie_of("42 (a) b) (c) Z 7 42 42 0 -1"), Some(7));
        assert_eq!(zombie_of("42 (sleep) S 1 42 42 0 -1"), None);
        assert_eq!(zombie_of("garbage"), None);
    }
}
