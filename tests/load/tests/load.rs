//! The tool against an in-process fake gateway: rate accuracy, open-loop
//! timing under a stall, closed-loop concurrency, and the report files.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::Behaviour;
use porchlight_load::invoke::Outcome;
use porchlight_load::progress::ProgressMode;
use porchlight_load::report::{InvocationRow, ScaleCsvRow};
use porchlight_load::scale::{GatewayObserver, ScaleObserver};
use porchlight_load::summary::{Summary, render};
use porchlight_load::workload::WeightedFunction;
use porchlight_load::{Load, RunConfig, RunOutput, profile::Profile, run};
use tokio_util::sync::CancellationToken;

fn out_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("porchlight-load")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config(target: &str, load: Load, out: &str) -> RunConfig {
    RunConfig {
        target: target.to_string(),
        functions: vec![WeightedFunction::parse("hello").unwrap()],
        load,
        payload_size: 256,
        timeout: Duration::from_secs(10),
        max_in_flight: 1000,
        out: out_dir(out),
        observe_after: Duration::ZERO,
        scale_target: None,
        font: PathBuf::from(porchlight_load::charts::DEFAULT_FONT),
        progress: ProgressMode::Quiet,
        signer: None,
    }
}

async fn go(config: RunConfig, observer: Option<Arc<dyn ScaleObserver>>) -> RunOutput {
    run(config, observer, CancellationToken::new())
        .await
        .unwrap()
}

fn read_invocations(out: &RunConfig) -> Vec<InvocationRow> {
    csv::Reader::from_path(out.out.join("invocations.csv"))
        .unwrap()
        .deserialize()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn profile(text: &str) -> Profile {
    Profile::parse(text, None).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_arrival_rate_is_accurate_within_five_percent() {
    let (target, fake) = common::start(Behaviour {
        work: Duration::from_millis(2),
        ..Behaviour::default()
    })
    .await;
    let cfg = config(&target, Load::Rate(profile("200:2s")), "rate");
    let out = go(cfg.clone(), None).await;
    assert_eq!(out.summary.requests.attempted, 400);
    assert_eq!(out.summary.requests.ok, 400);
    assert_eq!(fake.received.load(Ordering::SeqCst), 400);

    // The rate actually sent, from the recorded send times.
    let rows = read_invocations(&cfg);
    let sent: Vec<f64> = rows.iter().map(|r| r.sent_ms.unwrap()).collect();
    let first = sent.iter().copied().fold(f64::INFINITY, f64::min);
    let last = sent.iter().copied().fold(0.0, f64::max);
    let rate = (sent.len() - 1) as f64 / ((last - first) / 1000.0);
    assert!(
        (rate - 200.0).abs() / 200.0 < 0.05,
        "sent at {rate:.1} req/s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_server_shows_as_latency_not_as_a_lower_rate() {
    // Requests arriving between 0.5 s and 1.3 s are held until 1.3 s.
    let (target, fake) = common::start(Behaviour {
        work: Duration::from_millis(1),
        stall: Some((Duration::from_millis(500), Duration::from_millis(1300))),
        ..Behaviour::default()
    })
    .await;
    let cfg = config(&target, Load::Rate(profile("100:2s")), "stall");
    let out = go(cfg.clone(), None).await;
    // Offered rate unchanged: all 200 requests were sent, on schedule.
    assert_eq!(out.summary.requests.attempted, 200);
    assert_eq!(out.summary.requests.sent, 200);
    assert_eq!(fake.received.load(Ordering::SeqCst), 200);
    let rows = read_invocations(&cfg);
    let late = rows
        .iter()
        .map(|r| r.sent_ms.unwrap() - r.intended_ms)
        .fold(0.0, f64::max);
    assert!(late < 100.0, "a send was {late:.1} ms late");
    // A request scheduled at ~0.6 s waited for the stall to end at 1.3 s.
    let stalled = rows.iter().find(|r| r.intended_ms >= 600.0).unwrap();
    assert!(
        stalled.latency_ms.unwrap() >= 1300.0 - stalled.intended_ms - 100.0,
        "{stalled:?}"
    );
    // ...and the stall dominates the tail.
    let latency = out.summary.latency_ms.unwrap();
    assert!(latency.p90 > 300.0, "{latency:?}");
    assert!(latency.max > 600.0, "{latency:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_never_exceeds_its_callers() {
    let (target, fake) = common::start(Behaviour {
        work: Duration::from_millis(15),
        ..Behaviour::default()
    })
    .await;
    let cfg = config(
        &target,
        Load::Concurrency(profile("3:0.4s,8:0.8s,2:0.4s")),
        "closed",
    );
    let out = go(cfg, None).await;
    let max = fake.max_in_flight.load(Ordering::SeqCst);
    assert!(max <= 8, "{max} requests in flight at once");
    assert!(max >= 2, "{max}");
    assert!(out.summary.requests.ok > 20);
    assert_eq!(out.summary.requests.errors(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_counts_requests_beyond_max_in_flight_as_dropped() {
    let (target, _fake) = common::start(Behaviour {
        work: Duration::from_millis(300),
        ..Behaviour::default()
    })
    .await;
    let mut cfg = config(&target, Load::Rate(profile("100:1s")), "dropped");
    cfg.max_in_flight = 5;
    let out = go(cfg, None).await;
    let r = &out.summary.requests;
    assert_eq!(r.attempted, 100);
    assert!(r.dropped_by_client > 50, "{r:?}");
    assert_eq!(r.sent + r.dropped_by_client, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_files_are_written_and_the_summary_matches_the_csv() {
    let (target, _fake) = common::start(Behaviour {
        work: Duration::from_millis(20),
        init: Duration::from_millis(60),
        throttle_every: Some(10),
        function_error_every: Some(7),
        idle_to_zero: Duration::from_millis(800),
        ..Behaviour::default()
    })
    .await;
    let mut cfg = config(&target, Load::Rate(profile("0:0.5s,80:1.5s")), "report");
    cfg.observe_after = Duration::from_secs(4);
    let observer: Arc<dyn ScaleObserver> =
        Arc::new(GatewayObserver::new(format!("{target}/v1/functions")).unwrap());
    let out = go(cfg.clone(), Some(observer)).await;

    for file in [
        "invocations.csv",
        "scale.csv",
        "summary.json",
        "latency.png",
        "environments.png",
    ] {
        let bytes = std::fs::read(cfg.out.join(file)).unwrap();
        assert!(bytes.len() > 100, "{file} is {} bytes", bytes.len());
        if file.ends_with(".png") {
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{file}");
        }
    }
    assert!(out.report.charts_have_text || !std::path::Path::new(&cfg.font).exists());

    let summary: Summary =
        serde_json::from_slice(&std::fs::read(cfg.out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary.requests, out.summary.requests);
    assert_eq!(summary.latency_ms, out.summary.latency_ms);
    assert_eq!(summary.functions.len(), 1);
    // The run's usage: the gateway's counters after, less before (the fake
    // had 1,000 invocations before the run); throttled calls did not run.
    let usage = summary.usage.clone().expect("the run's usage");
    let ran = summary.requests.ok + summary.requests.function_errors;
    assert_eq!(usage.total.invocations, ran, "{usage:?}");
    assert_eq!(usage.total.billed_duration_ms, ran * 20);
    assert_eq!(usage.functions.len(), 1);
    assert_eq!(usage.functions[0].name, "hello");
    assert!(render(&summary).contains(&format!("usage      {ran} invocations billed")));
    let rows = read_invocations(&cfg);
    let count = |o: Outcome| rows.iter().filter(|r| r.outcome == o).count() as u64;
    assert_eq!(rows.len() as u64, summary.requests.attempted);
    assert_eq!(summary.requests.attempted, 120);
    assert_eq!(count(Outcome::Ok), summary.requests.ok);
    assert_eq!(count(Outcome::Throttled), summary.requests.throttled);
    assert_eq!(
        count(Outcome::FunctionError),
        summary.requests.function_errors
    );
    assert_eq!(summary.requests.throttled, 12);
    assert!(summary.requests.function_errors > 0);
    let colds = rows.iter().filter(|r| r.cold_start).count() as u64;
    assert_eq!(colds, summary.cold_starts.count);
    assert!(colds >= 1);

    // Percentiles of the 2xx latencies, nearest rank, within HDR precision.
    let mut latencies: Vec<f64> = rows
        .iter()
        .filter(|r| r.outcome.is_success())
        .map(|r| r.latency_ms.unwrap())
        .collect();
    latencies.sort_by(f64::total_cmp);
    let latency = summary.latency_ms.clone().unwrap();
    assert_eq!(latency.count, latencies.len() as u64);
    for (q, got) in [(0.5, latency.p50), (0.9, latency.p90), (0.99, latency.p99)] {
        let rank = ((q * latencies.len() as f64).ceil() as usize).max(1);
        let want = latencies[rank - 1];
        assert!(
            (got - want).abs() <= want * 0.001 + 0.002,
            "q{q}: {got} vs {want}"
        );
    }
    assert!((latency.max - latencies.last().unwrap()).abs() < 0.002);

    // Scale: sampled every second, went up, and came back to zero after the load.
    let scale: Vec<ScaleCsvRow> = csv::Reader::from_path(cfg.out.join("scale.csv"))
        .unwrap()
        .deserialize()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(scale.len() >= 3, "{scale:?}");
    assert!(scale.iter().all(|r| r.function == "hello"));
    let peak = scale.iter().filter_map(|r| r.ready).max().unwrap();
    let f = &summary.functions[0];
    assert_eq!(f.peak_ready, Some(peak));
    assert!(peak >= 1);
    assert!(f.time_to_scale_up_seconds.is_some(), "{f:?}");
    assert!(f.time_to_zero_seconds.is_some(), "{f:?}");
    assert_eq!(scale.last().unwrap().ready, Some(0));
}
