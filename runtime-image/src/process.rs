//! The runtime process: its command line, its reserved Lambda environment
//! variables, its process group, and best-effort memory accounting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::config::{RuntimeKind, Settings};
use crate::{launcher, reaper};

/// The dependency-free Python bootstrap, run with `python3 -c` when the
/// image does not ship it as a file.
pub const PYTHON_BOOTSTRAP: &str = include_str!("../bootstrap/python/bootstrap.py");

/// The dependency-free Node bootstrap, run with `node -e` when the image
/// does not ship it as a file.
pub const NODE_BOOTSTRAP: &str = include_str!("../bootstrap/node/bootstrap.js");

/// `LAMBDA_RUNTIME_DIR` exported to the runtime.
const RUNTIME_DIR: &str = "/var/runtime";

/// The program and arguments that start the runtime.
pub fn runtime_command(settings: &Settings) -> (String, Vec<String>) {
    let config = &settings.config;
    if let Some((program, args)) = config.command.split_first() {
        return (program.clone(), args.to_vec());
    }
    match &settings.runtime {
        RuntimeKind::Python(_) if config.python_bootstrap.is_file() => (
            config.python.clone(),
            vec![config.python_bootstrap.to_string_lossy().into_owned()],
        ),
        RuntimeKind::Python(_) => (
            config.python.clone(),
            vec!["-c".to_owned(), PYTHON_BOOTSTRAP.to_owned()],
        ),
        RuntimeKind::Node(_) if config.node_bootstrap.is_file() => (
            config.node.clone(),
            vec![config.node_bootstrap.to_string_lossy().into_owned()],
        ),
        RuntimeKind::Node(_) => (
            config.node.clone(),
            vec!["-e".to_owned(), NODE_BOOTSTRAP.to_owned()],
        ),
        RuntimeKind::Provided | RuntimeKind::Image => (
            config
                .task_root
                .join("bootstrap")
                .to_string_lossy()
                .into_owned(),
            Vec::new(),
        ),
    }
}

/// Log stream name in Lambda's format: `YYYY/MM/DD/[$LATEST]<environment>`.
fn log_stream_name(environment_id: &str) -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}/{:02}/{:02}/[$LATEST]{}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        environment_id
    )
}

/// The reserved Lambda variables set for the runtime.
pub fn runtime_env(settings: &Settings, runtime_api: SocketAddr) -> Vec<(String, String)> {
    let config = &settings.config;
    let mut env = vec![
        ("AWS_LAMBDA_RUNTIME_API".to_owned(), runtime_api.to_string()),
        (
            "AWS_LAMBDA_FUNCTION_NAME".to_owned(),
            config.function_name.clone(),
        ),
        (
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE".to_owned(),
            config.memory_mib.to_string(),
        ),
        (
            "AWS_LAMBDA_FUNCTION_VERSION".to_owned(),
            "$LATEST".to_owned(),
        ),
        (
            "AWS_LAMBDA_LOG_GROUP_NAME".to_owned(),
            format!("/aws/lambda/{}", config.function_name),
        ),
        (
            "AWS_LAMBDA_LOG_STREAM_NAME".to_owned(),
            log_stream_name(&settings.environment_id),
        ),
        ("AWS_REGION".to_owned(), config.region.clone()),
        ("AWS_DEFAULT_REGION".to_owned(), config.region.clone()),
        ("AWS_EXECUTION_ENV".to_owned(), settings.execution_env()),
        (
            "AWS_LAMBDA_INITIALIZATION_TYPE".to_owned(),
            "on-demand".to_owned(),
        ),
        (
            "LAMBDA_TASK_ROOT".to_owned(),
            config.task_root.to_string_lossy().into_owned(),
        ),
        ("LAMBDA_RUNTIME_DIR".to_owned(), RUNTIME_DIR.to_owned()),
        ("TZ".to_owned(), ":UTC".to_owned()),
        // Runtime output is a pipe: keep Python's lines flowing per line.
        ("PYTHONUNBUFFERED".to_owned(), "1".to_owned()),
    ];
    if let Some(handler) = &config.handler {
        env.push(("_HANDLER".to_owned(), handler.clone()));
    }
    if settings.concurrency > 1 {
        env.push((
            "AWS_LAMBDA_MAX_CONCURRENCY".to_owned(),
            settings.concurrency.to_string(),
        ));
    }
    env
}

/// A started runtime process, leader of its own process group.
pub struct RuntimeProcess {
    pub child: Child,
    pub pgid: Pid,
}

impl Drop for RuntimeProcess {
    /// Whatever way the shim leaves the runtime (a normal stop, an error, a
    /// panic), no process of its group outlives the handle.
    fn drop(&mut self) {
        signal_group(self.pgid, Signal::SIGKILL);
        reaper::release(self.pgid.as_raw());
    }
}

/// Starts the runtime in its own process group with piped output, through
/// the launcher when the settings name one.
pub fn spawn(settings: &Settings, runtime_api: SocketAddr) -> std::io::Result<RuntimeProcess> {
    let (program, args) = runtime_command(settings);
    let task_root = &settings.config.task_root;
    let mut command = match &settings.runtime_launcher {
        Some(launcher) => {
            // Found here rather than by the launcher's exec, so that a
            // missing entrypoint still fails the spawn itself.
            let path = std::env::var_os("PATH");
            let file = launcher::resolve(Path::new(&program), task_root, path.as_deref())?;
            let mut command = Command::new(&launcher.program);
            command.arg0("porchlight-runtime").args(launcher.args(
                std::process::id(),
                &file,
                &args,
            ));
            command
        }
        None => {
            let mut command = Command::new(resolve_program(&program, task_root));
            command.args(&args);
            command
        }
    };
    command
        .envs(runtime_env(settings, runtime_api))
        .current_dir(&settings.config.task_root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = reaper::spawn_managed(&mut command)?;
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .ok_or_else(|| std::io::Error::other("runtime exited before it got a pid"))?;
    Ok(RuntimeProcess {
        child,
        pgid: Pid::from_raw(pid),
    })
}

/// Relative programs with a path (`./bootstrap`) are resolved from the task
/// root, like the runtime's working directory; bare names go through `PATH`.
fn resolve_program(program: &str, task_root: &Path) -> PathBuf {
    let path = Path::new(program);
    if path.is_relative() && program.contains('/') {
        task_root.join(path)
    } else {
        path.to_path_buf()
    }
}

/// Sends `signal` to a process group; a group that is already gone is fine.
pub fn signal_group(pgid: Pid, signal: Signal) {
    if let Err(e) = killpg(pgid, signal)
        && e != nix::errno::Errno::ESRCH
    {
        tracing::warn!(pgid = pgid.as_raw(), ?signal, error = %e, "cannot signal the runtime");
    }
}

/// `exit status N` or `signal: killed`, as Lambda words a runtime's end.
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return format!("exit status {code}");
    }
    match status.signal().and_then(|s| Signal::try_from(s).ok()) {
        Some(Signal::SIGKILL) => "signal: killed".to_owned(),
        Some(Signal::SIGTERM) => "signal: terminated".to_owned(),
        Some(Signal::SIGSEGV) => "signal: segmentation fault".to_owned(),
        Some(Signal::SIGABRT) => "signal: aborted".to_owned(),
        Some(other) => format!("signal: {}", other.as_str()),
        None => "exit status unknown".to_owned(),
    }
}

/// Peak memory of the runtime's process tree in MiB (sum of `VmHWM` of the
/// leader and its descendants, read from /proc; best effort).
pub fn max_memory_used_mib(leader: Pid) -> Option<u64> {
    let mut total_kib = 0u64;
    let mut stack = vec![leader.as_raw()];
    let mut seen = 0usize;
    while let Some(pid) = stack.pop() {
        seen += 1;
        if seen > 256 {
            break;
        }
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        total_kib += status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0);
        if let Ok(children) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
            stack.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<i32>().ok()),
            );
        }
    }
    (total_kib > 0).then(|| total_kib.div_ceil(1024))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn settings(args: &[&str]) -> Settings {
        let mut argv = vec![
            "porchlight-runtime",
            "--runtime",
            "python3.12",
            "--handler",
            "app.h",
            "--python",
            "python3",
        ];
        argv.extend_from_slice(args);
        crate::config::Config::try_parse_from(argv)
            .expect("parses")
            .validate()
            .expect("valid")
    }

    #[test]
    fn python_bootstrap_runs_from_the_image_file_when_present() {
        let dir = std::env::temp_dir().join(format!("porchlight-bootstrap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("bootstrap.py");
        std::fs::write(&file, PYTHON_BOOTSTRAP).expect("write");
        let path = file.to_string_lossy().into_owned();
        let (program, args) = runtime_command(&settings(&["--python-bootstrap", &path]));
        assert_eq!((program.as_str(), args), ("python3", vec![path]));

        let missing = dir.join("missing.py").to_string_lossy().into_owned();
        let (_, args) = runtime_command(&settings(&["--python-bootstrap", &missing]));
        assert_eq!(args, vec!["-c".to_owned(), PYTHON_BOOTSTRAP.to_owned()]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn node_bootstrap_runs_from_the_image_file_when_present() {
        let dir =
            std::env::temp_dir().join(format!("porchlight-node-bootstrap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("bootstrap.js");
        std::fs::write(&file, NODE_BOOTSTRAP).expect("write");
        let path = file.to_string_lossy().into_owned();
        let node = |extra: &[&str]| {
            let mut argv = vec![
                "porchlight-runtime",
                "--runtime",
                "nodejs20.x",
                "--handler",
                "index.handler",
            ];
            argv.extend_from_slice(extra);
            crate::config::Config::try_parse_from(argv)
                .expect("parses")
                .validate()
                .expect("valid")
        };
        let (program, args) = runtime_command(&node(&["--node-bootstrap", &path]));
        assert_eq!((program.as_str(), args), ("node", vec![path]));

        let missing = dir.join("missing.js").to_string_lossy().into_owned();
        let settings = node(&["--node-bootstrap", &missing, "--node", "/opt/node/bin/node"]);
        let (program, args) = runtime_command(&settings);
        assert_eq!(program, "/opt/node/bin/node");
        assert_eq!(args, vec!["-e".to_owned(), NODE_BOOTSTRAP.to_owned()]);
        assert!(
            runtime_env(&settings, "127.0.0.1:9001".parse().unwrap()).contains(&(
                "AWS_EXECUTION_ENV".to_owned(),
                "AWS_Lambda_nodejs20.x".to_owned()
            ))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
