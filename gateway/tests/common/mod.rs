//! A gateway in local mode, started as a child process on a free port.

#![allow(dead_code)]

pub mod dashboard;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running gateway; stopped (SIGTERM, then SIGKILL) on drop.
pub struct LocalGateway {
    pub child: Child,
    pub base: String,
    pub dir: PathBuf,
}

pub fn free_port() -> u16 {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A fresh temporary directory for one test.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "porchlight-gw-test-{tag}-{}-{}",
        std::process::id(),
        uuid_like()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn uuid_like() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The venv Python with boto3 and awscli, if the environment provides one.
/// With `CI` set, a missing one fails the test; otherwise it is skipped.
pub fn sdk_python() -> Option<PathBuf> {
    let python = std::env::var_os("PORCHLIGHT_PYTHON").map(PathBuf::from);
    let ok = python.as_ref().is_some_and(|p| {
        Command::new(p)
            .args(["-c", "import boto3, awscli"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if ok {
        return python;
    }
    let help = "set PORCHLIGHT_PYTHON to a Python with boto3 and awscli: python3 -m venv /root/.cache/porchlight/venv && /root/.cache/porchlight/venv/bin/pip install awslambdaric==4.2.2 boto3 awscli && export PORCHLIGHT_PYTHON=/root/.cache/porchlight/venv/bin/python";
    if std::env::var_os("CI").is_some() {
        panic!("CI is set but no SDK Python is available: {help}");
    }
    eprintln!("skipping: {help}");
    None
}

impl LocalGateway {
    /// Writes `manifests` (file name, YAML) into a directory and starts
    /// `porchlight-gateway --local` on it, waiting until it listens.
    pub fn start(tag: &str, manifests: &[(&str, String)], extra: &[&str]) -> LocalGateway {
        let gw = LocalGateway::spawn(tag, manifests, extra);
        if !gw.wait_listening() {
            panic!("gateway did not start; log: {}", gw.log());
        }
        gw
    }

    /// Like [`LocalGateway::start`], without waiting for anything.
    pub fn spawn(tag: &str, manifests: &[(&str, String)], extra: &[&str]) -> LocalGateway {
        let dir = temp_dir(tag);
        let fns = dir.join("functions");
        std::fs::create_dir_all(&fns).expect("dir");
        for (name, yaml) in manifests {
            std::fs::write(fns.join(name), yaml).expect("write manifest");
        }
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_porchlight-gateway"))
            .arg("--local")
            .arg(&fns)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .env("PORCHLIGHT_LOG", "info")
            // Each test's async events in a store of its own (a test that
            // restarts on the same store passes --data-dir).
            .env("XDG_DATA_HOME", dir.join("data"))
            .stdout(std::fs::File::create(dir.join("stdout.log")).expect("stdout"))
            .stderr(std::fs::File::create(dir.join("gateway.log")).expect("log"))
            .spawn()
            .expect("spawn gateway");
        LocalGateway {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    /// Waits (bounded, 10 s) until the gateway accepts connections.
    pub fn wait_listening(&self) -> bool {
        let addr = self.base.trim_start_matches("http://");
        for _ in 0..200 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Waits (bounded) for the process to exit by itself; its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default()
    }

    /// What the gateway and its environments printed on stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout.log")).unwrap_or_default()
    }

    /// Waits (bounded, 10 s) until stdout has a line matching `pred`.
    pub fn stdout_has(&self, pred: impl Fn(&str) -> bool) -> bool {
        for _ in 0..200 {
            if self.stdout().lines().any(&pred) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM and wait (bounded); returns whether it exited by itself.
    pub fn stop(&mut self) -> bool {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..200 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for LocalGateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A Python function manifest.
pub fn python_function(name: &str, body: &str, extra_spec: &str) -> String {
    let code: String = body.lines().map(|l| format!("      {l}\n")).collect();
    format!(
        "apiVersion: porchlight.dev/v1alpha1\nkind: Function\nmetadata:\n  name: {name}\nspec:\n  runtime: python3.12\n  handler: app.handler\n  code:\n    inline: |\n{code}{extra_spec}"
    )
}

/// Runs a Python `script` with the gateway's base URL as its argument, with
/// an empty HOME (no AWS configuration), and returns what it printed, as
/// JSON; a failed script fails the test with its output and the log.
pub fn python_json(python: &Path, script: &str, gw: &LocalGateway) -> serde_json::Value {
    let out = Command::new(python)
        .args(["-c", script, &gw.base])
        .env("HOME", gw.dir.join("no-home"))
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "python: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );
    serde_json::from_slice(&out.stdout).expect("the script prints JSON")
}

/// One answer of the Invoke API.
pub struct Invoked {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Invoked {
    /// A response header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

/// Invokes `name` with `event` (RequestResponse, up to 30 s).
pub async fn invoke(gw: &LocalGateway, name: &str, event: &str) -> Invoked {
    let r = reqwest::Client::new()
        .post(gw.url(&format!("/2015-03-31/functions/{name}/invocations")))
        .body(event.to_string())
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("invoke");
    Invoked {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: r.text().await.expect("body"),
    }
}

/// Waits (up to 10 s) until the gateway's `/ready` answers 200.
pub async fn wait_ready(gw: &LocalGateway) -> bool {
    poll(100, Duration::from_millis(100), || async {
        let r = reqwest::get(gw.url("/ready")).await.ok()?;
        r.status().is_success().then_some(())
    })
    .await
    .is_some()
}

/// Polls `f` up to `tries` times, `every` apart, until it returns Some.
pub async fn poll<T, F, Fut>(tries: u32, every: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..tries {
        if let Some(v) = f().await {
            return Some(v);
        }
        tokio::time::sleep(every).await;
    }
    None
}

pub fn read_markers(dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if let Ok(text) = std::fs::read_to_string(e.path())
                && let Ok(v) = serde_json::from_str(&text)
            {
                out.push(v);
            }
        }
    }
    out
}

/// A `nats-server` with JetStream on a free loopback port, its store in a
/// temporary directory; killed on drop.
pub struct NatsServer {
    child: Child,
    pub url: String,
    dir: PathBuf,
}

/// The `nats-server` binary named by `PORCHLIGHT_NATS_SERVER` (tests/run.sh
/// installs it). With `CI` set, a missing one fails the test; otherwise the
/// test is skipped with a message.
pub fn nats_server_binary() -> Option<PathBuf> {
    let bin = std::env::var_os("PORCHLIGHT_NATS_SERVER").map(PathBuf::from);
    if let Some(bin) = bin.filter(|b| b.is_file()) {
        return Some(bin);
    }
    let help = "set PORCHLIGHT_NATS_SERVER to a nats-server binary (tests/run.sh builds one: GOFLAGS=-mod=mod GOBIN=~/.cache/porchlight/nats-server/v2.14.10 go install github.com/nats-io/nats-server/v2@v2.14.10)";
    if std::env::var_os("CI").is_some() {
        panic!("CI is set but no nats-server is available: {help}");
    }
    eprintln!("skipping: {help}");
    None
}

impl NatsServer {
    /// Starts one, waiting (bounded) until it accepts connections.
    pub fn start(bin: &Path, tag: &str) -> NatsServer {
        NatsServer::start_on(bin, tag, free_port())
    }

    /// [`NatsServer::start`] on a given loopback port.
    pub fn start_on(bin: &Path, tag: &str, port: u16) -> NatsServer {
        let dir = temp_dir(&format!("nats-{tag}"));
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.join("store"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("nats.log")).expect("log"))
            .spawn()
            .expect("spawn nats-server");
        let server = NatsServer {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            dir,
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nats-server did not start");
    }
}

impl NatsServer {
    /// Kills the server (its store stays until drop).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
