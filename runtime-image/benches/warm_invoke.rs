//! Warm-invocation benchmark of the shim against AWS's Runtime Interface
//! Emulator (RIE) driving the same runtime and handler, in one run:
//! latency p50/p99 and throughput (one client, one keep-alive connection,
//! sequential invocations, as an environment runs one at a time), shim RSS,
//! and shim start-to-ready with the bundled Python bootstrap.
//!
//! `BENCH_MODE=freeze` measures instead what freezing the idle runtime costs
//! (`--freeze`, on for every Function by default): per runtime, two shims,
//! one frozen between invocations and one not, driven in alternation in the
//! same run so that both see the same machine; the ratio is against the
//! shim without freeze.
//!
//! Run: `runtime-image/bench/build-rie.sh`,
//! `cargo build --release -p porchlight-test-rust-bootstrap`, then
//! `cargo bench -p porchlight-runtime`. Env: `PORCHLIGHT_RIE` (default
//! /root/.cache/porchlight/bin/aws-lambda-rie), `PORCHLIGHT_RUST_BOOTSTRAP`
//! (default: `bootstrap` next to the shim), `PORCHLIGHT_PYTHON` (default
//! python3), `BENCH_INVOCATIONS` (default 3000).

use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

const SHIM: &str = env!("CARGO_BIN_EXE_porchlight-runtime");
const EVENT: &[u8] = br#"{"hello":"world","n":1}"#;
const PY_HANDLER: &str = "def handler(event, context):\n    return event\n";
const PY_EMPTY_HANDLER: &str = "def handler(event, context):\n    return None\n";
const WARMUP: usize = 200;

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..300 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_port(addr: SocketAddr) {
    for _ in 0..3000 {
        if StdStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("nothing listens on {addr}");
}

/// GET /ready until 200 (bounded); returns when ready.
fn wait_ready(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    for _ in 0..20_000 {
        if let Ok(mut s) = StdStream::connect(addr) {
            let _ = s.set_nodelay(true);
            let _ = s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut buf = [0u8; 16];
            if let Ok(n) = s.read(&mut buf)
                && buf[..n].starts_with(b"HTTP/1.1 200")
            {
                return true;
            }
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    false
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

struct Stats {
    p50_us: u64,
    p99_us: u64,
    per_sec: f64,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// One keep-alive connection to the invoke endpoint at `addr`.
async fn connect(addr: SocketAddr) -> Sender {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// One invocation of the benchmark's event.
async fn once(sender: &mut Sender) {
    let request = Request::post("/2015-03-31/functions/function/invocations")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(EVENT)))
        .unwrap();
    let response = sender.send_request(request).await.expect("invoke");
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(status.is_success(), "{status} {body:?}");
}

fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap()
}

fn stats(hist: &Histogram<u64>, per_sec: f64) -> Stats {
    Stats {
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        per_sec,
    }
}

/// `n` invocations each of the environments at `a` and `b`, in alternation
/// (a, b, a, b, ...), so that both are measured under the same conditions;
/// each waits idle while the other runs.
async fn drive_alternating(a: SocketAddr, b: SocketAddr, n: usize) -> (Stats, Stats) {
    let mut senders = [connect(a).await, connect(b).await];
    let mut hists = [histogram(), histogram()];
    for _ in 0..WARMUP {
        for sender in &mut senders {
            once(sender).await;
        }
    }
    let mut busy = [Duration::ZERO; 2];
    for _ in 0..n {
        for (i, sender) in senders.iter_mut().enumerate() {
            let t = Instant::now();
            once(sender).await;
            let took = t.elapsed();
            busy[i] += took;
            hists[i].record(took.as_micros().max(1) as u64).unwrap();
        }
    }
    let rate = |busy: Duration| n as f64 / busy.as_secs_f64();
    (
        stats(&hists[0], rate(busy[0])),
        stats(&hists[1], rate(busy[1])),
    )
}

async fn drive(addr: SocketAddr, n: usize) -> Stats {
    let mut sender = connect(addr).await;
    let mut hist = histogram();
    for _ in 0..WARMUP {
        once(&mut sender).await;
    }
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        once(&mut sender).await;
        hist.record(t.elapsed().as_micros().max(1) as u64).unwrap();
    }
    stats(&hist, n as f64 / start.elapsed().as_secs_f64())
}

fn spawn_shim(port: u16, task_root: &Path, runtime_args: &[&str], python: &str) -> Proc {
    spawn_shim_with(port, task_root, &[], runtime_args, python)
}

/// The shim with `flags` before the runtime's arguments (which may end
/// with `-- command`).
fn spawn_shim_with(
    port: u16,
    task_root: &Path,
    flags: &[&str],
    runtime_args: &[&str],
    python: &str,
) -> Proc {
    let child = Command::new(SHIM)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--environment-id",
            "bench",
            "--timeout-seconds",
            "30",
        ])
        .arg("--task-root")
        .arg(task_root)
        .args(flags)
        .args(runtime_args)
        .env("PORCHLIGHT_LOG", "warn")
        .env("PORCHLIGHT_PYTHON", python)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the shim");
    Proc(child)
}

fn spawn_rie(rie: &Path, port: u16, task_root: &Path, command: &[&str]) -> Proc {
    let child = Command::new(rie)
        .args([
            "--runtime-interface-emulator-address",
            &format!("127.0.0.1:{port}"),
            "--runtime-api-address",
            &format!("127.0.0.1:{}", free_port()),
            "--log-level",
            "error",
        ])
        .args(command)
        .current_dir(task_root)
        .env("AWS_LAMBDA_FUNCTION_TIMEOUT", "30")
        .env("LAMBDA_TASK_ROOT", task_root)
        .env("_HANDLER", "app.handler")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the emulator");
    Proc(child)
}

struct Row {
    name: String,
    shim: Stats,
    rie: Option<Stats>,
    shim_rss_kib: u64,
    rie_rss_kib: u64,
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("BENCH_INVOCATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let python = std::env::var("PORCHLIGHT_PYTHON").unwrap_or_else(|_| "python3".into());
    let rie = std::env::var_os("PORCHLIGHT_RIE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root/.cache/porchlight/bin/aws-lambda-rie"));
    let rie = rie.is_file().then_some(rie);
    if rie.is_none() {
        eprintln!("warning: no aws-lambda-rie (run runtime-image/bench/build-rie.sh); no baseline");
    }
    let rust_bootstrap = std::env::var_os("PORCHLIGHT_RUST_BOOTSTRAP")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(SHIM).parent().unwrap().join("bootstrap"));

    let root = std::env::temp_dir().join(format!("porchlight-bench-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("app.py"), PY_HANDLER).unwrap();
    let bootstrap_py = root.join("porchlight_bootstrap.py");
    std::fs::write(&bootstrap_py, porchlight_runtime::PYTHON_BOOTSTRAP).unwrap();
    let empty_root = root.join("empty");
    std::fs::create_dir_all(&empty_root).unwrap();
    std::fs::write(empty_root.join("app.py"), PY_EMPTY_HANDLER).unwrap();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();

    let mut cases: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
    if rust_bootstrap.is_file() {
        let b = rust_bootstrap.to_string_lossy().into_owned();
        cases.push((
            "lambda_runtime (Rust)".into(),
            vec!["--".into(), b.clone()],
            vec![b],
        ));
    } else {
        eprintln!(
            "warning: no Rust bootstrap at {} (cargo build --release -p porchlight-test-rust-bootstrap)",
            rust_bootstrap.display()
        );
    }
    cases.push((
        "bundled Python bootstrap".into(),
        vec![
            "--runtime".into(),
            "python3.12".into(),
            "--handler".into(),
            "app.handler".into(),
        ],
        vec![
            python.clone(),
            bootstrap_py.to_string_lossy().into_owned(),
            "app.handler".into(),
        ],
    ));

    if std::env::var("BENCH_MODE").is_ok_and(|m| m == "freeze") {
        freeze_cost(&rt, &root, &cases, &python, n);
        let _ = std::fs::remove_dir_all(&root);
        return;
    }

    for (name, shim_args, rie_command) in cases {
        let port = free_port();
        let args: Vec<&str> = shim_args.iter().map(String::as_str).collect();
        let shim = spawn_shim(port, &root, &args, &python);
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        assert!(wait_ready(addr), "the shim never became ready");
        let shim_stats = rt.block_on(drive(addr, n));
        let shim_rss = rss_kib(shim.0.id(), "VmRSS:");
        drop(shim);

        let (rie_stats, rie_rss) = match &rie {
            Some(rie) => {
                let port = free_port();
                let command: Vec<&str> = rie_command.iter().map(String::as_str).collect();
                let proc = spawn_rie(rie, port, &root, &command);
                let addr: SocketAddr = ([127, 0, 0, 1], port).into();
                wait_for_port(addr);
                let stats = rt.block_on(drive(addr, n));
                let rss = rss_kib(proc.0.id(), "VmRSS:");
                (Some(stats), rss)
            }
            None => (None, 0),
        };
        rows.push(Row {
            name,
            shim: shim_stats,
            rie: rie_stats,
            shim_rss_kib: shim_rss,
            rie_rss_kib: rie_rss,
        });
    }

    // Start to ready with the bundled Python bootstrap and an empty handler.
    let mut starts = Vec::new();
    for _ in 0..15 {
        let port = free_port();
        let t = Instant::now();
        let shim = spawn_shim(
            port,
            &empty_root,
            &["--runtime", "python3.12", "--handler", "app.handler"],
            &python,
        );
        assert!(wait_ready(([127, 0, 0, 1], port).into()), "not ready");
        starts.push(t.elapsed());
        drop(shim);
    }
    starts.sort();
    let _ = std::fs::remove_dir_all(&root);

    println!();
    println!(
        "warm invocations: {n} sequential on one keep-alive connection, after {WARMUP} warm-up; event {} B",
        EVENT.len()
    );
    println!(
        "{:<26} {:>9} {:>9} {:>10} | {:>9} {:>9} {:>10} | {:>9} {:>9} {:>9}",
        "runtime",
        "shim p50",
        "shim p99",
        "shim inv/s",
        "RIE p50",
        "RIE p99",
        "RIE inv/s",
        "p50 ratio",
        "p99 ratio",
        "tput ratio"
    );
    for row in &rows {
        let us = |v: u64| format!("{:.0} us", v as f64);
        match &row.rie {
            Some(rie) => println!(
                "{:<26} {:>9} {:>9} {:>10.0} | {:>9} {:>9} {:>10.0} | {:>9.2} {:>9.2} {:>9.2}",
                row.name,
                us(row.shim.p50_us),
                us(row.shim.p99_us),
                row.shim.per_sec,
                us(rie.p50_us),
                us(rie.p99_us),
                rie.per_sec,
                row.shim.p50_us as f64 / rie.p50_us as f64,
                row.shim.p99_us as f64 / rie.p99_us as f64,
                row.shim.per_sec / rie.per_sec,
            ),
            None => println!(
                "{:<26} {:>9} {:>9} {:>10.0} | (no RIE baseline)",
                row.name,
                us(row.shim.p50_us),
                us(row.shim.p99_us),
                row.shim.per_sec
            ),
        }
    }
    println!("(ratios are shim / RIE: latency below 1 and throughput above 1 favour the shim)");
    for row in &rows {
        println!(
            "RSS after the run, {}: shim {:.1} MiB, RIE {:.1} MiB (target: shim < 10 MiB)",
            row.name,
            row.shim_rss_kib as f64 / 1024.0,
            row.rie_rss_kib as f64 / 1024.0
        );
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "shim start to ready, bundled Python bootstrap, empty handler ({} runs): min {:.1} ms, median {:.1} ms, max {:.1} ms (target < 50 ms)",
        starts.len(),
        ms(starts[0]),
        ms(starts[starts.len() / 2]),
        ms(starts[starts.len() - 1])
    );
}

/// `BENCH_MODE=freeze`: warm latency with and without freezing the idle
/// runtime, per runtime, in the same run.
fn freeze_cost(
    rt: &tokio::runtime::Runtime,
    root: &Path,
    cases: &[(String, Vec<String>, Vec<String>)],
    python: &str,
    n: usize,
) {
    println!();
    println!(
        "warm invocations: {n} per environment, alternating between an environment frozen \
         between invocations (--freeze) and one that is not, after {WARMUP} warm-up each"
    );
    println!(
        "{:<26} {:>9} {:>9} | {:>9} {:>9} | {:>9} {:>9} | {:>12}",
        "runtime",
        "p50 off",
        "p99 off",
        "p50 on",
        "p99 on",
        "p50 ratio",
        "p99 ratio",
        "thaw (shim)"
    );
    for (name, shim_args, _) in cases {
        let args: Vec<&str> = shim_args.iter().map(String::as_str).collect();
        let (plain_port, frozen_port) = (free_port(), free_port());
        let plain = spawn_shim_with(plain_port, root, &[], &args, python);
        let frozen = spawn_shim_with(frozen_port, root, &["--freeze"], &args, python);
        let plain_addr: SocketAddr = ([127, 0, 0, 1], plain_port).into();
        let frozen_addr: SocketAddr = ([127, 0, 0, 1], frozen_port).into();
        assert!(wait_ready(plain_addr), "the shim never became ready");
        assert!(wait_ready(frozen_addr), "the shim never became ready");
        let (base, with_freeze) = rt.block_on(drive_alternating(plain_addr, frozen_addr, n));
        let thaw = rt.block_on(thaw_seconds(frozen_addr));
        drop((plain, frozen));
        println!(
            "{:<26} {:>6} us {:>6} us | {:>6} us {:>6} us | {:>9.2} {:>9.2} | {:>12}",
            name,
            base.p50_us,
            base.p99_us,
            with_freeze.p50_us,
            with_freeze.p99_us,
            with_freeze.p50_us as f64 / base.p50_us as f64,
            with_freeze.p99_us as f64 / base.p99_us as f64,
            thaw.map_or("?".to_owned(), |t| format!("{:.1} us", t * 1e6)),
        );
    }
    println!(
        "(ratios are frozen / not frozen; thaw (shim) is the mean time of the shim's SIGCONT, \
         from porchlight_runtime_thaw_duration_seconds)"
    );
}

/// Mean of the shim's `thaw_duration_seconds` histogram, from its /metrics.
async fn thaw_seconds(addr: SocketAddr) -> Option<f64> {
    let mut sender = connect(addr).await;
    let request = Request::get("/metrics")
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.ok()?;
    let body = response.into_body().collect().await.ok()?.to_bytes();
    let text = String::from_utf8_lossy(&body);
    let value = |name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    };
    let sum = value("porchlight_runtime_thaw_duration_seconds_sum")?;
    let count = value("porchlight_runtime_thaw_duration_seconds_count")?;
    (count > 0.0).then(|| sum / count)
}
