//! Controller benchmarks (`cargo bench -p porchlight-controller`).
//!
//! Every figure is reported next to a baseline measured in the same run, so
//! the ratio means something on a shared, noisy machine:
//! - autoscaler decision (record + decide) for one function, against the
//!   cost of the record alone;
//! - one tick over 10,000 functions (raw maths, and the whole loop with a
//!   no-op sink), against an empty loop over the same map, and against the
//!   one-second tick budget;
//! - resident memory with 1,000 Functions in the reflector cache (plus their
//!   autoscaler state), against the process before it.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::runtime::reflector;
use kube::runtime::watcher::Event;
use porchlight_api::Function;
use porchlight_controller::metrics::Metrics;
use porchlight_controller::scaling::{FunctionSource, autoscaler_loop};
use porchlight_core::ScalingSettings;
use porchlight_core::scaling::{GatewayMessage, ScaleBook, ScaleChange, ScaleSink};
use porchlight_core::{Autoscaler, AutoscalerConfig, FunctionKey, FunctionLoad, GatewayReport};

fn config() -> AutoscalerConfig {
    AutoscalerConfig::from_settings(&ScalingSettings {
        min_scale: 0,
        max_scale: 1000,
        concurrency_per_environment: 1,
        target_utilization: 0.7,
        scale_to_zero_after: Duration::from_secs(30),
        stable_window: Duration::from_secs(60),
        keep_alive: porchlight_core::autoscaler::KeepAlive::Fixed,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median over `runs` of the time per iteration of `f(iterations)`, in ns.
fn time_per_iter(runs: usize, iterations: u64, mut f: impl FnMut(u64)) -> f64 {
    median(
        (0..runs)
            .map(|_| {
                let start = Instant::now();
                f(iterations);
                start.elapsed().as_nanos() as f64 / iterations as f64
            })
            .collect(),
    )
}

fn load(i: u64, s: u64) -> f64 {
    // A mix: a third idle, the rest with a slowly varying load.
    if i.is_multiple_of(3) {
        0.0
    } else {
        ((i * 7 + s) % 13) as f64 * 0.5
    }
}

fn bench_one_function() {
    let t0 = Instant::now();
    let iterations = 200_000;
    let mut a = Autoscaler::new(config(), t0, 0);
    let record_only = time_per_iter(7, iterations, |n| {
        for s in 0..n {
            black_box(a.record(t0 + Duration::from_millis(s * 250), load(1, s)));
        }
    });
    let mut a = Autoscaler::new(config(), t0, 0);
    let mut ready = 0;
    let decide = time_per_iter(7, iterations, |n| {
        for s in 0..n {
            let now = t0 + Duration::from_millis(s * 250);
            a.record(now, load(1, s));
            ready = black_box(a.decide(now, ready)).desired;
        }
    });
    println!(
        "autoscaler, one function: record+decide {decide:.0} ns, record alone {record_only:.0} ns (ratio {:.1}x)",
        decide / record_only
    );
}

fn bench_ten_thousand_functions() {
    const N: u64 = 10_000;
    let t0 = Instant::now();
    let mut map: HashMap<FunctionKey, (Autoscaler, u32)> = (0..N)
        .map(|i| {
            (
                FunctionKey::new("bench", format!("fn-{i}")),
                (Autoscaler::new(config(), t0, 0), 0),
            )
        })
        .collect();
    // Warm the windows up: 70 simulated seconds.
    for s in 0..70 {
        let now = t0 + Duration::from_secs(s);
        for (i, (a, ready)) in map.values_mut().enumerate() {
            a.record(now, load(i as u64, s));
            *ready = a.decide(now, *ready).desired;
        }
    }
    let mut second = 70;
    let ticks = median(
        (0..9)
            .map(|_| {
                second += 1;
                let now = t0 + Duration::from_secs(second);
                let start = Instant::now();
                for (i, (a, ready)) in map.values_mut().enumerate() {
                    a.record(now, load(i as u64, second));
                    *ready = black_box(a.decide(now, *ready)).desired;
                }
                start.elapsed().as_nanos() as f64
            })
            .collect(),
    );
    let empty = median(
        (0..9)
            .map(|_| {
                let start = Instant::now();
                let mut sum = 0u64;
                for (a, ready) in map.values_mut() {
                    sum = sum.wrapping_add(u64::from(*ready) + u64::from(a.last_desired()));
                }
                black_box(sum);
                start.elapsed().as_nanos() as f64
            })
            .collect(),
    );
    println!(
        "autoscaler, 10,000 functions: one tick {:.2} ms ({:.0} ns per function), empty loop over the map {:.3} ms (ratio {:.0}x), {:.2}% of the 1 s tick",
        ticks / 1e6,
        ticks / N as f64,
        empty / 1e6,
        ticks / empty,
        ticks / 1e9 * 100.0
    );
}

struct Store(Vec<Arc<Function>>);
impl FunctionSource for Store {
    fn functions(&self) -> Vec<Arc<Function>> {
        self.0.clone()
    }
}

struct NoopSink;
impl ScaleSink<Arc<Function>> for NoopSink {
    type Error = porchlight_controller::Error;

    async fn apply(
        &self,
        _f: &Arc<Function>,
        _c: &ScaleChange,
    ) -> porchlight_controller::Result<()> {
        Ok(())
    }
}

fn function(i: usize) -> Function {
    let mut f: Function = serde_yaml::from_str(&format!(
        r#"
apiVersion: porchlight.dev/v1alpha1
kind: Function
metadata: {{name: fn-{i}, namespace: bench, uid: "00000000-0000-0000-0000-{i:012}", resourceVersion: "{i}", generation: 1}}
spec:
  runtime: python3.12
  handler: app.lambda_handler
  env: {{TABLE: users-{i}, STAGE: prod}}
  code:
    inline: |
      import json, os
      TABLE = os.environ["TABLE"]
      def lambda_handler(event, context):
          body = json.loads(event.get("body") or "{{}}")
          return {{"statusCode": 200, "body": json.dumps({{"table": TABLE, "n": len(body)}})}}
  timeoutSeconds: 30
  memoryMiB: 256
  scaling: {{maxScale: 50, scaleToZeroAfter: 30s}}
  triggers:
    - http: {{payloadFormat: "2.0"}}
"#
    ))
    .expect("function yaml");
    f.status = Some(porchlight_api::FunctionStatus {
        replicas: Some(1),
        ready_replicas: Some(1),
        desired_replicas: Some(1),
        url: Some(format!(
            "http://porchlight-gateway.porchlight-system.svc:8080/2015-03-31/functions/fn-{i}/invocations"
        )),
        selector: Some(format!("porchlight.dev/function=fn-{i}")),
        ..Default::default()
    });
    f
}

fn bench_loop_tick(rt: &tokio::runtime::Runtime) {
    const N: usize = 10_000;
    let functions: Vec<Arc<Function>> = (0..N).map(|i| Arc::new(function(i))).collect();
    let metrics = Arc::new(Metrics::new());
    let mut l = autoscaler_loop(
        Store(functions),
        NoopSink,
        Arc::new(ScaleBook::default()),
        metrics,
    );
    let report = GatewayMessage::Report(GatewayReport {
        gateway: "gw".into(),
        sequence: 1,
        poke: false,
        functions: (0..N)
            .map(|i| FunctionLoad {
                namespace: "bench".into(),
                name: format!("fn-{i}"),
                in_flight: (i % 4) as u32,
                queued: 0,
                average_concurrency: (i % 4) as f64,
                ready_environments: 1,
                invocations_total: 0,
                idle_ms: None,
                usage: None,
                busy_environments: Default::default(),
            })
            .collect(),
    });
    let per_tick = rt.block_on(async {
        l.on_message(report.clone()).await;
        l.on_tick().await; // first tick creates the state
        median({
            let mut v = Vec::new();
            for _ in 0..7 {
                l.on_message(report.clone()).await;
                let start = Instant::now();
                l.on_tick().await;
                v.push(start.elapsed().as_nanos() as f64);
            }
            v
        })
    });
    println!(
        "autoscaler loop, 10,000 functions (sync from cache + validate + aggregate + decide + metrics): one tick {:.1} ms ({:.1}% of the 1 s tick)",
        per_tick / 1e6,
        per_tick / 1e9 * 100.0
    );
}

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn bench_memory(rt: &tokio::runtime::Runtime) {
    const N: usize = 1_000;
    let before = rss_kib().unwrap_or(0);
    let (reader, mut writer) = reflector::store::<Function>();
    writer.apply_watcher_event(&Event::Init);
    for i in 0..N {
        writer.apply_watcher_event(&Event::InitApply(function(i)));
    }
    writer.apply_watcher_event(&Event::InitDone);
    let cached = rss_kib().unwrap_or(0);
    let book = Arc::new(ScaleBook::default());
    let mut l = autoscaler_loop(reader.clone(), NoopSink, book, Arc::new(Metrics::new()));
    rt.block_on(async {
        for _ in 0..61 {
            l.on_tick().await;
        }
    });
    let with_autoscalers = rss_kib().unwrap_or(0);
    let json_bytes: usize = reader
        .state()
        .iter()
        .map(|f| serde_json::to_vec(&**f).map(|v| v.len()).unwrap_or(0))
        .sum();
    println!(
        "memory, 1,000 Functions: RSS {before} KiB before, {cached} KiB with the reflector cache (+{} KiB, {:.1} KiB per function; their JSON is {:.1} KiB each), {with_autoscalers} KiB with 61 s of autoscaler state (+{} KiB)",
        cached.saturating_sub(before),
        cached.saturating_sub(before) as f64 / N as f64,
        json_bytes as f64 / N as f64 / 1024.0,
        with_autoscalers.saturating_sub(cached),
    );
    black_box((reader, writer, l));
}

fn main() {
    // `cargo test --benches` passes --bench-less args; run only under `cargo bench`.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    bench_memory(&rt);
    bench_one_function();
    bench_ten_thousand_functions();
    bench_loop_tick(&rt);
}
