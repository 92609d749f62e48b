//! Helpers for the shim's integration tests: spawn the built shim with a
//! runtime, talk HTTP/1.1 to it on 127.0.0.1, find the external runtimes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const SHIM: &str = env!("CARGO_BIN_EXE_porchlight-runtime");

/// A test that needs an external runtime we cannot find: fail under CI,
/// otherwise skip with a message that says how to get it.
pub fn missing(what: &str, how: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{what} is required when CI is set: {how}");
    }
    eprintln!("SKIPPED: {what} not available. {how}");
}

/// The Python interpreter that has `awslambdaric` (env `PORCHLIGHT_PYTHON`).
pub fn python_with_awslambdaric() -> Option<String> {
    let how = "Create a venv: python3 -m venv /root/.cache/porchlight/venv && \
               /root/.cache/porchlight/venv/bin/pip install awslambdaric==4.2.2, \
               then set PORCHLIGHT_PYTHON=/root/.cache/porchlight/venv/bin/python";
    let Some(python) = std::env::var("PORCHLIGHT_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
    else {
        missing("PORCHLIGHT_PYTHON", how);
        return None;
    };
    let ok = Command::new(&python)
        .args(["-c", "import awslambdaric"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        missing(&format!("awslambdaric in {python}"), how);
        return None;
    }
    Some(python)
}

/// A Python interpreter for the bundled bootstrap (no packages needed).
pub fn plain_python() -> String {
    std::env::var("PORCHLIGHT_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".to_owned())
}

/// Node.js for the bundled Node bootstrap: env `PORCHLIGHT_NODE`, else
/// `node` on PATH.
pub fn node() -> Option<String> {
    let node = std::env::var("PORCHLIGHT_NODE")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    let ok = Command::new(&node)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Some(node)
    } else {
        missing(
            &format!("Node.js ({node})"),
            "Install Node.js 18 or later (apt-get install nodejs), or set PORCHLIGHT_NODE",
        );
        None
    }
}

/// The `bootstrap` binary of `tests/lambda-rust-bootstrap`: env
/// `PORCHLIGHT_RUST_BOOTSTRAP`, else next to the shim in the target dir
/// (`cargo build -p porchlight-test-rust-bootstrap` puts it there).
pub fn rust_bootstrap() -> Option<PathBuf> {
    let candidate = std::env::var_os("PORCHLIGHT_RUST_BOOTSTRAP")
        .map(PathBuf::from)
        .or_else(|| Path::new(SHIM).parent().map(|d| d.join("bootstrap")));
    match candidate {
        Some(p) if p.is_file() => Some(p),
        _ => {
            missing(
                "the lambda_runtime test bootstrap",
                "Run `cargo build -p porchlight-test-rust-bootstrap` first, or set \
                 PORCHLIGHT_RUST_BOOTSTRAP to its binary",
            );
            None
        }
    }
}

/// A fresh task root with the given files.
pub fn task_root(files: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("porchlight-test-{}", uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, content) in files {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, content).unwrap();
        if name.ends_with("bootstrap") || name.ends_with(".sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    dir
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A running shim.
pub struct Shim {
    pub child: Child,
    pub addr: SocketAddr,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub task_root: PathBuf,
}

impl Shim {
    /// Starts the shim with `args` (listening on an ephemeral port) and waits
    /// until it reports its address.
    pub fn start(task_root: &Path, args: &[&str], envs: &[(&str, &str)]) -> Shim {
        Self::start_wrapped(&[], task_root, args, envs)
    }

    /// [`Shim::start`] under a wrapper command (`unshare ...`): the shim
    /// becomes `wrapper... <shim> <args>`, and `child` is the wrapper.
    pub fn start_wrapped(
        wrapper: &[&str],
        task_root: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Shim {
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(SHIM);
                command
            }
            None => Command::new(SHIM),
        };
        command
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--task-root")
            .arg(task_root)
            .arg("--environment-id")
            .arg("test-env")
            .args(args)
            .env("PORCHLIGHT_LOG", "info")
            // As every Function's environment by default (a test may pass
            // PORCHLIGHT_FREEZE=false in `envs`).
            .env("PORCHLIGHT_FREEZE", "true")
            .env_remove("PORCHLIGHT_RUNTIME")
            .env_remove("PORCHLIGHT_HANDLER")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn the shim");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let lines = stdout.clone();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                eprintln!("[shim stdout] {line}");
                lines.lock().unwrap().push(line);
            }
        });
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[shim stderr] {line}");
                if let Some(rest) = line.split("listen=").nth(1) {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the shim reports its listen address")
            .parse()
            .expect("a socket address");
        Shim {
            child,
            addr,
            stdout,
            task_root: task_root.to_path_buf(),
        }
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        http(self.addr, method, path, headers, body)
    }

    pub fn invoke(&self, event: &Value) -> Reply {
        self.invoke_raw(event.to_string().as_bytes(), &[])
    }

    pub fn invoke_raw(&self, body: &[u8], headers: &[(&str, &str)]) -> Reply {
        self.request(
            "POST",
            "/2015-03-31/functions/function/invocations",
            headers,
            body,
        )
    }

    /// Polls /ready until it answers 200, or 503 with an init error. Bounded.
    pub fn wait_ready(&self) -> Reply {
        for _ in 0..3000 {
            let reply = self.request("GET", "/ready", &[], b"");
            if reply.status == 200
                || reply
                    .json()
                    .get("errorType")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t != "NotReady")
            {
                return reply;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the shim never became ready");
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Whether a line of the shim's stdout matches `pred` within 5 s: the
    /// runtime's output travels through pipes and reader threads, and may
    /// come after the answer it belongs to.
    pub fn stdout_has(&self, pred: impl Fn(&str) -> bool) -> bool {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if self.stdout_lines().iter().any(|l| pred(l)) {
                return true;
            }
            if std::time::Instant::now() >= end {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Process ids of the shim's direct children (the runtime's leader).
    pub fn runtime_pids(&self) -> Vec<i32> {
        let me = self.child.id();
        let path = format!("/proc/{me}/task/{me}/children");
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Sends SIGTERM and waits (bounded) for the shim to exit.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..1500 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
        let _ = std::fs::remove_dir_all(&self.task_root);
    }
}

/// `State` field of /proc/<pid>/stat ('S', 'R', 'T', ...).
pub fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.trim_start().chars().next()
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) before reading a large body.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

/// Polls `done` every 10 ms until it holds or `limit` has passed.
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    done()
}
