//! The autoscaler loop with paused tokio time and fake gateways.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use porchlight_api::{Function, FunctionStatus};
use porchlight_controller::metrics::Metrics;
use porchlight_controller::scaling::{FunctionSource, autoscaler_loop};
use porchlight_core::autoscaler::DecisionReason;
use porchlight_core::scaling::{GatewayMessage, LoopError, ScaleBook, ScaleChange, ScaleSink};
use porchlight_core::{FunctionKey, FunctionLoad, GatewayReport};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Default)]
struct Functions(Arc<Mutex<Vec<Arc<Function>>>>);

impl FunctionSource for Functions {
    fn functions(&self) -> Vec<Arc<Function>> {
        self.0.lock().unwrap().clone()
    }
}

#[derive(Clone, Default)]
struct Recorded(Arc<Mutex<Vec<(Instant, ScaleChange)>>>);

impl Recorded {
    fn changes(&self) -> Vec<(Instant, ScaleChange)> {
        self.0.lock().unwrap().clone()
    }
}

impl ScaleSink<Arc<Function>> for Recorded {
    type Error = porchlight_controller::Error;

    async fn apply(
        &self,
        _f: &Arc<Function>,
        change: &ScaleChange,
    ) -> porchlight_controller::Result<()> {
        self.0
            .lock()
            .unwrap()
            .push((Instant::now(), change.clone()));
        Ok(())
    }
}

fn function(scale_to_zero_after: &str) -> Arc<Function> {
    let mut f: Function = serde_yaml::from_str(&format!(
        r#"
apiVersion: porchlight.dev/v1alpha1
kind: Function
metadata: {{name: hello, namespace: demo}}
spec:
  handler: app.handler
  code: {{inline: "def handler(e, c): pass"}}
  scaling: {{maxScale: 50, scaleToZeroAfter: {scale_to_zero_after}}}
"#
    ))
    .expect("yaml");
    // Known to be at zero, as the status of a function that was idle says.
    f.status = Some(FunctionStatus {
        desired_replicas: Some(0),
        replicas: Some(0),
        ready_replicas: Some(0),
        ..FunctionStatus::default()
    });
    Arc::new(f)
}

fn report(gateway: &str, sequence: u64, poke: bool, concurrency: f64) -> GatewayMessage {
    GatewayMessage::Report(GatewayReport {
        gateway: gateway.into(),
        sequence,
        poke,
        functions: vec![FunctionLoad {
            namespace: "demo".into(),
            name: "hello".into(),
            in_flight: 0,
            queued: concurrency.ceil() as u32,
            average_concurrency: concurrency,
            ready_environments: 0,
            invocations_total: sequence,
            idle_ms: None,
            usage: None,
            busy_environments: Default::default(),
        }],
    })
}

struct Harness {
    functions: Functions,
    tx: mpsc::Sender<GatewayMessage>,
    sink: Recorded,
    metrics: Arc<Metrics>,
    book: Arc<ScaleBook>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), LoopError>>,
}

fn start(f: Arc<Function>) -> Harness {
    let functions = Functions::default();
    functions.0.lock().unwrap().push(f);
    let sink = Recorded::default();
    let metrics = Arc::new(Metrics::new());
    let book = Arc::new(ScaleBook::default());
    let (tx, rx) = mpsc::channel(16);
    let stop = CancellationToken::new();
    let l = autoscaler_loop(
        functions.clone(),
        sink.clone(),
        book.clone(),
        metrics.clone(),
    );
    let task = tokio::spawn(l.run(rx, stop.clone()));
    Harness {
        functions,
        tx,
        sink,
        metrics,
        book,
        stop,
        task,
    }
}

/// A gateway that reports `load(second)` every second, as the real ones do.
fn gateway(
    tx: mpsc::Sender<GatewayMessage>,
    name: &'static str,
    seconds: u64,
    load: impl Fn(u64) -> f64 + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for s in 0..seconds {
            if tx.send(report(name, s + 1, false, load(s))).await.is_err() {
                return;
            }
            sleep(Duration::from_secs(1)).await;
        }
    })
}

fn key() -> FunctionKey {
    FunctionKey::new("demo", "hello")
}

#[tokio::test(start_paused = true)]
async fn demand_at_zero_scales_up_at_once_on_a_poke() {
    let h = start(function("30s"));
    sleep(Duration::from_millis(3_300)).await;
    assert!(h.sink.changes().is_empty(), "idle at zero: nothing to do");

    let poked_at = Instant::now();
    h.tx.send(report("gw-a", 7, true, 1.0)).await.expect("send");
    sleep(Duration::from_millis(10)).await;
    let changes = h.sink.changes();
    assert_eq!(changes.len(), 1, "{changes:?}");
    let (at, change) = &changes[0];
    assert!(
        *at - poked_at < Duration::from_millis(100),
        "decided on the poke, not at the next tick"
    );
    assert_eq!(change.from, Some(0));
    assert!(
        change.to >= 1,
        "demand at zero yields at least one environment"
    );
    assert_eq!(change.reason, DecisionReason::WakeFromZero);
    assert_eq!(change.event_reason(), "ScaledUp");
    assert_eq!(h.metrics.wakes.get(), 1);
    assert_eq!(h.book.get(&key()).map(|r| r.desired), Some(change.to));
    // The gateway keeps reporting one queued event: once the 6 s panic window
    // is full of it, the count settles on 1 / 0.7 -> 2.
    let g = gateway(h.tx.clone(), "gw-a", 8, |_| 1.0);
    sleep(Duration::from_secs(8)).await;
    g.await.expect("gateway");
    assert_eq!(h.book.get(&key()).map(|r| r.desired), Some(2));
    h.stop.cancel();
    h.task.await.expect("join").expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn a_function_not_yet_reconciled_is_not_patched_but_booked() {
    let mut f = (*function("30s")).clone();
    f.status = None;
    let h = start(Arc::new(f));
    h.tx.send(report("gw-a", 1, true, 3.0)).await.expect("send");
    sleep(Duration::from_millis(2_500)).await;
    assert!(
        h.sink.changes().is_empty(),
        "no Deployment yet: nothing to patch, no Event"
    );
    assert_eq!(
        h.book.get(&key()).map(|r| r.desired),
        Some(5),
        "the reconciler creates the Deployment with 3 / 0.7 -> 5"
    );
    h.stop.cancel();
    h.task.await.expect("join").expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn an_idle_function_is_not_patched_after_its_first_reconcile() {
    let mut f = (*function("30s")).clone();
    f.status = None;
    let h = start(Arc::new(f.clone()));
    let load = gateway(h.tx.clone(), "gw-a", 6, |_| 0.0);
    sleep(Duration::from_millis(2_500)).await;
    f.status = Some(FunctionStatus {
        desired_replicas: Some(0),
        replicas: Some(0),
        ready_replicas: Some(0),
        ..FunctionStatus::default()
    });
    *h.functions.0.lock().unwrap() = vec![Arc::new(f)];
    sleep(Duration::from_millis(4_000)).await;
    assert!(
        h.sink.changes().is_empty(),
        "at the floor all along: no patch, no Event ({:?})",
        h.sink.changes()
    );
    load.await.expect("gateway");
    h.stop.cancel();
    h.task.await.expect("join").expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn a_count_booked_before_the_first_reconcile_is_applied_once_reconciled() {
    let mut f = (*function("30s")).clone();
    f.status = None;
    let h = start(Arc::new(f.clone()));
    h.tx.send(report("gw-a", 1, true, 3.0)).await.expect("send");
    sleep(Duration::from_millis(1_500)).await;
    assert!(h.sink.changes().is_empty(), "nothing to patch yet");
    // The reconciler had created the Deployment (at 0) just before the count
    // was booked; its status now carries the booked count, not the
    // Deployment's. The autoscaler must still apply the count once.
    f.status = Some(FunctionStatus {
        desired_replicas: Some(5),
        replicas: Some(0),
        ready_replicas: Some(0),
        ..FunctionStatus::default()
    });
    *h.functions.0.lock().unwrap() = vec![Arc::new(f)];
    let load = gateway(h.tx.clone(), "gw-a", 5, |_| 3.0);
    sleep(Duration::from_millis(5_500)).await;
    let changes = h.sink.changes();
    assert_eq!(changes.len(), 1, "applied exactly once: {changes:?}");
    assert_eq!(changes[0].1.to, 5);
    load.await.expect("gateway");
    h.stop.cancel();
    h.task.await.expect("join").expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn idle_function_scales_to_zero_after_its_window() {
    let h = start(function("5s"));
    // Busy for 3 s, then reporting nothing in flight.
    let g = gateway(h.tx.clone(), "gw-a", 20, |s| if s < 3 { 2.0 } else { 0.0 });
    sleep(Duration::from_secs(20)).await;
    g.await.expect("gateway");
    let changes = h.sink.changes();
    let first = changes.first().expect("scaled up");
    assert!(first.1.to >= 1);
    let (zero_at, last) = changes.last().expect("scaled down");
    assert_eq!(last.to, 0, "{changes:?}");
    assert_eq!(last.reason, DecisionReason::ScaleToZero);
    assert_eq!(last.event_reason(), "ScaledToZero");
    // Last demand at ~2 s; 5 s idle window: not before ~7 s.
    let since_start = *zero_at - first.0;
    assert!(
        since_start >= Duration::from_secs(6),
        "scaled to zero too early: {since_start:?}"
    );
    assert!(
        since_start <= Duration::from_secs(9),
        "scaled to zero too late: {since_start:?}"
    );
    h.stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn reports_from_two_gateways_are_summed() {
    let h = start(function("30s"));
    let a = gateway(h.tx.clone(), "gw-a", 10, |_| 3.5);
    let b = gateway(h.tx.clone(), "gw-b", 10, |_| 3.5);
    sleep(Duration::from_millis(9_500)).await;
    let observed = h
        .metrics
        .observed_concurrency
        .with_label_values(&["demo", "hello"])
        .get();
    assert!((observed - 7.0).abs() < 1e-9, "3.5 + 3.5, got {observed}");
    assert_eq!(
        h.book.get(&key()).map(|r| r.desired),
        Some(10),
        "7 / 0.7 = 10"
    );
    assert_eq!(h.metrics.gateways_live.get(), 2);
    a.await.expect("a");
    b.await.expect("b");
    h.stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_silent_gateway_is_dropped_after_five_seconds() {
    let h = start(function("30s"));
    let a = gateway(h.tx.clone(), "gw-a", 20, |_| 3.5);
    // gw-b reports twice, then its pod hangs.
    let b = gateway(h.tx.clone(), "gw-b", 2, |_| 3.5);
    sleep(Duration::from_millis(2_500)).await;
    let gauge = || {
        h.metrics
            .observed_concurrency
            .with_label_values(&["demo", "hello"])
            .get()
    };
    assert!((gauge() - 7.0).abs() < 1e-9, "both trusted: {}", gauge());
    sleep(Duration::from_secs(6)).await;
    assert!((gauge() - 3.5).abs() < 1e-9, "gw-b dropped: {}", gauge());
    assert_eq!(h.metrics.gateways_live.get(), 1);
    a.abort();
    b.await.expect("b");
    h.stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_gone_gateway_is_forgotten_at_once() {
    let h = start(function("30s"));
    h.tx.send(report("gw-a", 1, false, 3.5))
        .await
        .expect("send");
    h.tx.send(report("gw-b", 1, false, 3.5))
        .await
        .expect("send");
    sleep(Duration::from_millis(1_100)).await;
    h.tx.send(GatewayMessage::Gone("gw-b".into()))
        .await
        .expect("send");
    sleep(Duration::from_millis(1_000)).await;
    assert_eq!(h.metrics.gateways_live.get(), 1);
    h.stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn loop_fails_when_the_report_source_dies() {
    let h = start(function("30s"));
    drop(h.tx);
    let result = h.task.await.expect("join");
    assert!(result.is_err(), "a dead report source must end the process");
}

/// A sink whose every patch takes a second, like a slow API server.
#[derive(Clone, Default)]
struct Slow(Recorded);

impl ScaleSink<Arc<Function>> for Slow {
    type Error = porchlight_controller::Error;

    async fn apply(
        &self,
        f: &Arc<Function>,
        change: &ScaleChange,
    ) -> porchlight_controller::Result<()> {
        sleep(Duration::from_secs(1)).await;
        self.0.apply(f, change).await
    }
}

#[tokio::test(start_paused = true)]
async fn many_changes_at_once_are_applied_concurrently() {
    let functions = Functions::default();
    let mut loads = Vec::new();
    for i in 0..20 {
        let mut f = (*function("30s")).clone();
        f.metadata.name = Some(format!("f{i}"));
        functions.0.lock().unwrap().push(Arc::new(f));
        loads.push(FunctionLoad {
            namespace: "demo".into(),
            name: format!("f{i}"),
            queued: 1,
            average_concurrency: 1.0,
            ..FunctionLoad::default()
        });
    }
    let sink = Slow::default();
    let (tx, rx) = mpsc::channel(16);
    let stop = CancellationToken::new();
    let l = autoscaler_loop(
        functions,
        sink.clone(),
        Arc::new(ScaleBook::default()),
        Arc::new(Metrics::new()),
    );
    let task = tokio::spawn(l.run(rx, stop.clone()));
    sleep(Duration::from_millis(100)).await;
    let poked_at = Instant::now();
    tx.send(GatewayMessage::Report(GatewayReport {
        gateway: "gw-a".into(),
        sequence: 1,
        poke: true,
        functions: loads,
    }))
    .await
    .expect("send");
    sleep(Duration::from_millis(2_500)).await;
    let changes = sink.0.changes();
    assert_eq!(changes.len(), 20, "every function woke");
    let slowest = changes
        .iter()
        .map(|(at, _)| *at - poked_at)
        .max()
        .unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(3),
        "20 one-second patches, 16 at a time, take 2 s, not 20: {slowest:?}"
    );
    stop.cancel();
    task.await.expect("join").expect("clean stop");
}

#[tokio::test(start_paused = true)]
async fn silent_gateways_hold_every_count_instead_of_scaling_to_zero() {
    let h = start(function("5s"));
    let g = gateway(h.tx.clone(), "gw-a", 4, |_| 3.5);
    sleep(Duration::from_secs(4)).await;
    g.await.expect("gateway");
    let up = h.book.get(&key()).map(|r| r.desired).expect("scaled up");
    assert!(up >= 5, "3.5 / 0.7 = 5, got {up}");
    // Every gateway goes silent (a network partition, a gateway rollout):
    // long past the 5 s staleness and the 5 s idle window.
    sleep(Duration::from_secs(30)).await;
    assert_eq!(
        h.book.get(&key()).map(|r| r.desired),
        Some(up),
        "silence is not zero load: {:?}",
        h.sink.changes()
    );
    assert!(h.book.is_holding());
    assert_eq!(h.metrics.holding.get(), 1);
    // Reports resume, idle: the function scales to zero after its window.
    let g = gateway(h.tx.clone(), "gw-a", 12, |_| 0.0);
    sleep(Duration::from_secs(12)).await;
    g.await.expect("gateway");
    assert!(!h.book.is_holding());
    assert_eq!(h.metrics.holding.get(), 0);
    assert_eq!(h.book.get(&key()).map(|r| r.desired), Some(0));
    h.stop.cancel();
}
