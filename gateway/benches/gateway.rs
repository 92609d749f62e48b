//! Gateway benchmarks, in one run (`cargo bench -p porchlight-gateway`):
//! 1. warm invocation latency through gateway + shim against straight to the
//!    shim, and against the floor of any proxy: a bare hyper forwarder (this
//!    bench binary re-run as a child process) between the same client and shim;
//! 2. throughput with 2 and with 8 environments;
//! 3. cold start from zero to first response in local mode (Python bootstrap);
//! 4. gateway RSS with 1,000 functions loaded (no environments) against 1.
//!
//! Results are printed; nothing is asserted (numbers depend on the machine).

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

const BIN: &str = env!("CARGO_BIN_EXE_porchlight-gateway");

fn free_port() -> u16 {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..100 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `PORCHLIGHT_BENCH_FREEZE=false` runs every function with `freeze: false`
/// (what freezing idle environments costs, against the default, in one run).
const FREEZE: &str = "PORCHLIGHT_BENCH_FREEZE";

fn function(name: &str, extra: &str) -> String {
    let freeze = match std::env::var(FREEZE).as_deref() {
        Ok("false") => "  freeze: false\n",
        _ => "",
    };
    format!(
        "apiVersion: porchlight.dev/v1alpha1\nkind: Function\nmetadata:\n  name: {name}\nspec:\n  runtime: python3.12\n  handler: app.handler\n  code:\n    inline: |\n      def handler(event, context):\n          return event\n{freeze}{extra}---\n"
    )
}

fn wait_port(port: u16) {
    for _ in 0..400 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("port {port} never opened");
}

fn start_gateway(dir: &Path) -> (Proc, String) {
    let port = free_port();
    let child = Command::new(BIN)
        .arg("--local")
        .arg(dir)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        // Async events in a store of this run's own, not the user's.
        .arg("--data-dir")
        .arg(std::env::temp_dir().join(format!("porchlight-bench-{}-{port}", std::process::id())))
        .env("PORCHLIGHT_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gateway");
    wait_port(port);
    (Proc(child), format!("http://127.0.0.1:{port}"))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

async fn latency(client: &reqwest::Client, url: &str, n: usize) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    for i in 0..n {
        let t = Instant::now();
        let r = client
            .post(url)
            .body(format!("{{\"i\":{i}}}"))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await.expect("body");
        h.record(t.elapsed().as_micros() as u64).expect("record");
    }
    h
}

async fn throughput(
    client: &reqwest::Client,
    url: &str,
    workers: usize,
    for_: Duration,
) -> (f64, u64) {
    let done = Arc::new(AtomicU64::new(0));
    let throttled = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (client, url, done, throttled) = (
            client.clone(),
            url.to_string(),
            done.clone(),
            throttled.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while start.elapsed() < for_ {
                match client.post(&url).body("{}").send().await {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.bytes().await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        throttled.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    (
        done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64(),
        throttled.load(Ordering::Relaxed),
    )
}

fn p(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn temp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("porchlight-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("dir");
    d
}

/// Environment variable that turns this binary into the bare forwarder:
/// `LISTEN_PORT UPSTREAM_URL`.
const BARE_PROXY: &str = "PORCHLIGHT_BENCH_BARE_PROXY";

async fn forward(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    upstream: hyper::Uri,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, std::io::Error> {
    use http_body_util::{BodyExt, Full};
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let request = hyper::Request::post(upstream)
        .header("content-type", "application/json")
        .body(Full::new(body))
        .map_err(std::io::Error::other)?;
    let response = client
        .request(request)
        .await
        .map_err(std::io::Error::other)?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    Ok(hyper::Response::from_parts(parts, Full::new(body)))
}

/// The least a proxy can do: accept HTTP/1.1 with keep-alive, read the body,
/// POST it to the upstream over pooled keep-alive connections, and copy the
/// answer back. No routing, queues, metrics or headers.
async fn bare_proxy(spec: String) {
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let (port, upstream) = spec.split_once(' ').expect("PORT URL");
    let upstream: hyper::Uri = upstream.parse().expect("upstream URL");
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Full<bytes::Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port.parse::<u16>().expect("port")))
        .await
        .expect("bind");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (client, upstream) = (client.clone(), upstream.clone());
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (client, upstream) = (client.clone(), upstream.clone());
                    async move { forward(&client, upstream, req).await }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Ok(spec) = std::env::var(BARE_PROXY) {
        bare_proxy(spec).await;
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .expect("client");

    // 1 + 2: warm latency and throughput.
    let dir = temp("warm");
    let fns = dir.join("functions");
    std::fs::create_dir_all(&fns).expect("dir");
    let mut yaml = function("warm", "  scaling: {minScale: 1, maxScale: 1}\n");
    yaml.push_str(&function("two", "  scaling: {minScale: 2, maxScale: 2}\n"));
    yaml.push_str(&function(
        "eight",
        "  scaling: {minScale: 8, maxScale: 8}\n",
    ));
    std::fs::write(fns.join("fns.yaml"), yaml).expect("write");
    let (_gw, base) = start_gateway(&fns);
    // The same shim, straight (the gateway's embedded runtime subcommand).
    let shim_port = free_port();
    let code = dir.join("direct");
    std::fs::create_dir_all(&code).expect("dir");
    std::fs::write(
        code.join("app.py"),
        "def handler(event, context):\n    return event\n",
    )
    .expect("code");
    let _shim = Proc(
        Command::new(BIN)
            .args([
                "runtime",
                "--listen",
                &format!("127.0.0.1:{shim_port}"),
                "--function-name",
                "direct",
            ])
            .args([
                "--runtime",
                "python3.12",
                "--handler",
                "app.handler",
                "--task-root",
            ])
            .arg(&code)
            .env("PORCHLIGHT_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("shim"),
    );
    wait_port(shim_port);
    let direct_url =
        format!("http://127.0.0.1:{shim_port}/2015-03-31/functions/function/invocations");
    let gw_url = format!("{base}/2015-03-31/functions/warm/invocations");
    let bare_port = free_port();
    let _bare = Proc(
        Command::new(std::env::current_exe().expect("this bench"))
            .env(BARE_PROXY, format!("{bare_port} {direct_url}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("bare proxy"),
    );
    wait_port(bare_port);
    let bare_url = format!("http://127.0.0.1:{bare_port}/");
    // Warm up both paths (init, connections, minScale environments).
    for _ in 0..200 {
        let ok_direct = client
            .post(&direct_url)
            .body("{}")
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        let ok_gw = client
            .post(&gw_url)
            .body("{}")
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ok_direct && ok_gw {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = latency(&client, &direct_url, 200).await;
    let _ = latency(&client, &gw_url, 200).await;
    let _ = latency(&client, &bare_url, 200).await;
    // Interleaved rounds, so that drift on a shared machine hits all three alike.
    let n = 2000;
    let mut direct = Histogram::<u64>::new(3).expect("histogram");
    let mut through = Histogram::<u64>::new(3).expect("histogram");
    let mut bare = Histogram::<u64>::new(3).expect("histogram");
    for _ in 0..10 {
        direct
            .add(latency(&client, &direct_url, n / 10).await)
            .expect("add");
        through
            .add(latency(&client, &gw_url, n / 10).await)
            .expect("add");
        bare.add(latency(&client, &bare_url, n / 10).await)
            .expect("add");
    }
    println!("warm invocation latency, {n} sequential requests (ms):");
    println!(
        "  straight to the shim   p50 {:.3}  p90 {:.3}  p99 {:.3}",
        p(&direct, 0.5),
        p(&direct, 0.9),
        p(&direct, 0.99)
    );
    println!(
        "  through the gateway    p50 {:.3}  p90 {:.3}  p99 {:.3}",
        p(&through, 0.5),
        p(&through, 0.9),
        p(&through, 0.99)
    );
    println!(
        "  through a bare proxy   p50 {:.3}  p90 {:.3}  p99 {:.3}",
        p(&bare, 0.5),
        p(&bare, 0.9),
        p(&bare, 0.99)
    );
    println!(
        "  gateway/shim ratio at p50: {:.3} (target <= 1.20)",
        p(&through, 0.5) / p(&direct, 0.5)
    );
    println!(
        "  bare proxy/shim ratio at p50: {:.3} (the floor of any extra hop here)",
        p(&bare, 0.5) / p(&direct, 0.5)
    );
    println!(
        "  added at p50: gateway {:.0} us, bare proxy {:.0} us",
        (p(&through, 0.5) - p(&direct, 0.5)) * 1000.0,
        (p(&bare, 0.5) - p(&direct, 0.5)) * 1000.0
    );

    for (name, envs) in [("two", 2usize), ("eight", 8)] {
        let url = format!("{base}/2015-03-31/functions/{name}/invocations");
        for _ in 0..100 {
            let _ = client.post(&url).body("{}").send().await;
        }
        let (rps, refused) = throughput(&client, &url, envs * 2, Duration::from_secs(3)).await;
        println!(
            "throughput with {envs} environments ({} clients, 3 s): {rps:.0} invocations/s ({refused} refused)",
            envs * 2
        );
    }

    // 3: cold starts, one per function, each at zero.
    let cold_dir = temp("cold");
    let mut yaml = String::new();
    let trials = 20;
    for i in 0..trials {
        yaml.push_str(&function(&format!("cold-{i}"), ""));
    }
    std::fs::write(cold_dir.join("fns.yaml"), yaml).expect("write");
    let (_cold_gw, cold_base) = start_gateway(&cold_dir);
    let mut cold = Histogram::<u64>::new(3).expect("histogram");
    for i in 0..trials {
        let url = format!("{cold_base}/2015-03-31/functions/cold-{i}/invocations");
        let t = Instant::now();
        let r = client.post(&url).body("{}").send().await.expect("send");
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await;
        cold.record(t.elapsed().as_micros() as u64).expect("record");
    }
    println!(
        "cold start from zero to first response, {trials} functions (ms): p50 {:.1}  p90 {:.1}  max {:.1} (target p50 < 100)",
        p(&cold, 0.5),
        p(&cold, 0.9),
        cold.max() as f64 / 1000.0
    );

    // 4: RSS with 1 and with 1,000 functions loaded, no environments.
    let mut rss = Vec::new();
    for count in [1usize, 1000] {
        let d = temp(&format!("rss{count}"));
        let yaml: String = (0..count)
            .map(|i| function(&format!("f-{i}"), "  triggers:\n    - http: {}\n"))
            .collect();
        std::fs::write(d.join("fns.yaml"), yaml).expect("write");
        let (gw, base) = start_gateway(&d);
        // Let the sampler run a few rounds over every function.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let _ = client.get(format!("{base}/v1/functions")).send().await;
        let _ = client.get(format!("{base}/metrics")).send().await;
        rss.push((count, rss_kib(gw.0.id())));
        drop(gw);
        let _ = std::fs::remove_dir_all(&d);
    }
    println!(
        "gateway RSS: {} KiB with {} function, {} KiB with {} functions (ratio {:.2}, {:.1} KiB per function)",
        rss[0].1,
        rss[0].0,
        rss[1].1,
        rss[1].0,
        rss[1].1 as f64 / rss[0].1.max(1) as f64,
        (rss[1].1 as f64 - rss[0].1 as f64) / 999.0
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&cold_dir);
}
