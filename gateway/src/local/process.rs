//! One local execution environment: a `porchlight-gateway runtime ...` child
//! process (the embedded shim) in its own process group, on a free loopback port.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use porchlight_core::ShimSettings;
use porchlight_core::shim;

use super::manifests::LoadedFunction;

/// The gateway's pid, for the embedded shim to check that its parent still
/// lives once its parent-death signal is armed.
const PARENT_PID_ENV: &str = "PORCHLIGHT_PARENT_PID";

/// How environments are started.
#[derive(Clone, Debug)]
pub struct Launcher {
    /// Program to run.
    pub program: PathBuf,
    /// Arguments before the shim flags (`["runtime"]` for the embedded shim).
    pub prefix: Vec<OsString>,
}

impl Launcher {
    /// The embedded shim: this very binary with the hidden `runtime` subcommand.
    pub fn embedded() -> std::io::Result<Self> {
        Ok(Launcher {
            program: std::env::current_exe()?,
            prefix: vec!["runtime".into()],
        })
    }

    /// A separate `porchlight-runtime` binary.
    pub fn binary(path: PathBuf) -> Self {
        Launcher {
            program: path,
            prefix: Vec::new(),
        }
    }
}

/// A free loopback port (closed again before use, so a small race remains;
/// a lost race shows as a crashed environment and is replaced).
pub fn free_port() -> std::io::Result<u16> {
    let l = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    Ok(l.local_addr()?.port())
}

/// The environment process.
pub struct EnvironmentProcess {
    child: Child,
    pgid: Option<Pid>,
    /// Least time between SIGTERM and SIGKILL: what the shim may take to
    /// drain its invocations and stop its runtime.
    shim_stop: Duration,
}

/// What a shim started with `shim` may take from SIGTERM until it exits:
/// its shutdown grace, then the stop of its runtime.
pub fn shim_stop_time(shim: &ShimSettings) -> Duration {
    let grace = shim.shutdown_grace_seconds.unwrap_or(0);
    Duration::from_secs(u64::from(grace) + u64::from(shim::SHUTDOWN_STOP_SECONDS))
}

impl EnvironmentProcess {
    /// Starts the shim for `function` listening on `port`; `quiet` leaves
    /// out its START/END/REPORT lines.
    pub fn spawn(
        launcher: &Launcher,
        quiet: bool,
        function: &LoadedFunction,
        environment_id: &str,
        port: u16,
    ) -> std::io::Result<Self> {
        let spec = &function.spec;
        let shim = ShimSettings {
            listen: Some(format!("127.0.0.1:{port}")),
            task_root: Some(function.task_root.to_string_lossy().into_owned()),
            environment_id: Some(environment_id.to_string()),
            // Read in a terminal, with several functions side by side.
            local_logs: true,
            quiet,
            ..spec.shim_settings(&function.key.name)
        };
        let mut cmd = Command::new(&launcher.program);
        cmd.args(&launcher.prefix).args(shim.to_args());
        // Python caches compiled code keyed by the source's size and mtime
        // in whole seconds: an edit of the same length within a second
        // would run the old code. Local code changes, so nothing is cached
        // (a function may still set the variable itself).
        cmd.env("PYTHONDONTWRITEBYTECODE", "1")
            .envs(&spec.env)
            .envs(&function.resolved_env)
            .env(PARENT_PID_ENV, std::process::id().to_string())
            .stdin(std::process::Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd.spawn()?;
        let pgid = child.id().map(|id| Pid::from_raw(id as i32));
        Ok(EnvironmentProcess {
            child,
            pgid,
            shim_stop: shim_stop_time(&shim),
        })
    }

    /// Waits for the process to exit.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// SIGTERM to the group, then SIGKILL after `grace`, or after the time
    /// the shim may take to drain and stop if that is longer (a shim with
    /// nothing in flight exits at once).
    pub async fn stop(&mut self, grace: Duration) {
        let grace = grace.max(self.shim_stop);
        if let Some(pgid) = self.pgid {
            let _ = killpg(pgid, Signal::SIGTERM);
        }
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            self.kill();
            let _ = tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await;
        }
        // Whatever the shim left in its group.
        self.kill();
    }

    /// SIGKILL to the group at once.
    pub fn kill(&mut self) {
        if let Some(pgid) = self.pgid {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

impl Drop for EnvironmentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Entry of the hidden `runtime` subcommand: arranges to receive SIGTERM when
/// the gateway dies, then runs the shim.
pub fn run_embedded_shim(args: Vec<OsString>) -> std::process::ExitCode {
    #[cfg(target_os = "linux")]
    {
        // The kernel signals us when the thread that spawned us exits; the
        // gateway spawns from long-lived runtime worker threads.
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM);
        if let Some(parent) = std::env::var(PARENT_PID_ENV)
            .ok()
            .and_then(|p| p.parse::<i32>().ok())
            && nix::unistd::getppid().as_raw() != parent
        {
            // The gateway died before the death signal was armed.
            return std::process::ExitCode::from(1);
        }
    }
    let argv = std::iter::once(OsString::from("porchlight-runtime")).chain(args);
    porchlight_runtime::cli_main_from(argv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_waits_for_the_shim_s_drain_and_its_runtime_s_stop() {
        let spec: porchlight_api::FunctionSpec =
            serde_yaml::from_str("runtime: provided\ntimeoutSeconds: 60\ncode: {inline: x}\n")
                .expect("spec");
        let settings = spec.shim_settings("slow");
        let grace = settings.shutdown_grace_seconds.expect("a shutdown grace");
        assert!(grace > 60, "{grace}");
        assert_eq!(
            shim_stop_time(&settings),
            Duration::from_secs(u64::from(grace + shim::SHUTDOWN_STOP_SECONDS))
        );
    }
}
