//! Local mode and the controller run the same autoscaler loop: the same
//! report sequence, through local mode's sink (the environment manager's
//! desired counts) and through the controller's (server-side applies of
//! `spec.replicas` to a fake API server), gives the same decisions at the
//! same times.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{DEPLOYMENTS, FakeApi};
use http::Method;
use kube::runtime::events::Reporter;
use porchlight_api::{Function, FunctionStatus};
use porchlight_controller::metrics::Metrics;
use porchlight_controller::scaling::{FunctionSource, autoscaler_loop};
use porchlight_controller::sink::KubeScaleSink;
use porchlight_core::AutoscalerConfig;
use porchlight_core::scaling::{AutoscalerLoop, GatewayMessage, ScaleBook};
use porchlight_core::{FunctionKey, FunctionLoad, GatewayReport};
use porchlight_gateway::local::autoscaler_parts;
use porchlight_gateway::{Gateway, GatewayConfig};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

const YAML: &str = r#"
apiVersion: porchlight.dev/v1alpha1
kind: Function
metadata: {name: hello, namespace: demo}
spec:
  handler: app.handler
  code: {inline: "def handler(e, c): pass"}
  scaling: {maxScale: 20, scaleToZeroAfter: 5s}
"#;

fn function() -> Function {
    let mut f: Function = serde_yaml::from_str(YAML).expect("yaml");
    f.status = Some(FunctionStatus {
        desired_replicas: Some(0),
        replicas: Some(0),
        ready_replicas: Some(0),
        ..FunctionStatus::default()
    });
    f
}

/// A gateway's reports: idle, a poke at zero, a ramp, a burst, then quiet
/// long enough to scale to zero. `(ms after start, poke, concurrency)`.
/// Reports arrive half-way between the loop's ticks, as a gateway's own
/// clock would have them, so no report races a tick in either run.
fn script() -> Vec<(u64, bool, f64)> {
    let mut out = vec![(2_300, true, 1.0)];
    let loads = [1.0, 1.0, 2.0, 3.0, 3.0, 9.0, 14.0, 14.0, 6.0, 2.0, 1.0];
    for (i, load) in loads.into_iter().enumerate() {
        out.push((3_500 + 1_000 * i as u64, false, load));
    }
    for i in 0..20 {
        out.push((14_500 + 1_000 * i, false, 0.0));
    }
    out
}

fn report(sequence: u64, poke: bool, concurrency: f64) -> GatewayMessage {
    GatewayMessage::Report(GatewayReport {
        gateway: "gw-a".into(),
        sequence,
        poke,
        functions: vec![FunctionLoad {
            namespace: "demo".into(),
            name: "hello".into(),
            queued: concurrency.ceil() as u32,
            average_concurrency: concurrency,
            ..FunctionLoad::default()
        }],
    })
}

/// Sends the script, then stops the loop; decisions are stamped with the
/// time since `start`, in milliseconds.
async fn feed(tx: &mpsc::Sender<GatewayMessage>, start: Instant) {
    for (seq, (at, poke, load)) in script().into_iter().enumerate() {
        sleep_until(start + Duration::from_millis(at)).await;
        tx.send(report(seq as u64 + 1, poke, load))
            .await
            .expect("loop alive");
    }
    sleep(Duration::from_millis(500)).await;
}

struct OneFunction(Arc<Function>);

impl FunctionSource for OneFunction {
    fn functions(&self) -> Vec<Arc<Function>> {
        vec![self.0.clone()]
    }
}

#[tokio::test(start_paused = true)]
async fn local_mode_and_the_controller_decide_alike() {
    // Local mode: the gateway's registry entry, its source and sink.
    let gateway = Gateway::new(GatewayConfig::default());
    let f = function();
    let settings = f.spec.validate().expect("valid");
    let entry = gateway.registry().upsert(
        FunctionKey::new("demo", "hello"),
        f.spec.clone(),
        settings.clone(),
    );
    let (source, sink, mut desired) =
        autoscaler_parts(vec![(AutoscalerConfig::from_settings(&settings), entry)]);
    let (tx, rx) = mpsc::channel(16);
    let stop = CancellationToken::new();
    let local = tokio::spawn(
        AutoscalerLoop::new(source, sink, Arc::new(ScaleBook::default()), Arc::new(()))
            .run(rx, stop.clone()),
    );
    let start = Instant::now();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(d) = desired.recv().await {
                seen.lock()
                    .unwrap()
                    .push(((Instant::now() - start).as_millis(), d.count));
            }
        })
    };
    feed(&tx, start).await;
    stop.cancel();
    local.await.expect("join").expect("clean stop");
    recorder.await.expect("recorder");
    let local_decisions = seen.lock().unwrap().clone();

    // The controller: the Function as the watch cache holds it, the
    // Deployment patcher against a fake API server.
    let api = FakeApi::default();
    let client = api.client();
    let reporter = Reporter {
        controller: "porchlight-controller".into(),
        instance: None,
    };
    let (tx, rx) = mpsc::channel(16);
    let stop = CancellationToken::new();
    let controller = tokio::spawn(
        autoscaler_loop(
            OneFunction(Arc::new(function())),
            KubeScaleSink::new(client, reporter),
            Arc::new(ScaleBook::default()),
            Arc::new(Metrics::new()),
        )
        .run(rx, stop.clone()),
    );
    let start = Instant::now();
    let patches = {
        let api = api.clone();
        tokio::spawn(async move {
            // Stamp each patch when the fake server sees it.
            let mut stamped: Vec<(u128, u32)> = Vec::new();
            let mut counted = 0;
            loop {
                let now = api.requests(Method::PATCH, "/deployments/fn-hello");
                for p in &now[counted..] {
                    let replicas = p.body.as_ref().expect("body")["spec"]["replicas"]
                        .as_u64()
                        .expect("replicas only");
                    stamped.push(((Instant::now() - start).as_millis(), replicas as u32));
                }
                counted = now.len();
                if Instant::now() - start > Duration::from_secs(40) {
                    return stamped;
                }
                sleep(Duration::from_millis(1)).await;
            }
        })
    };
    feed(&tx, start).await;
    stop.cancel();
    controller.await.expect("join").expect("clean stop");
    let controller_decisions = patches.await.expect("patches");
    assert!(
        api.get(&format!("{DEPLOYMENTS}/fn-hello")).is_some(),
        "the controller's sink patched the Deployment"
    );

    let counts = |d: &[(u128, u32)]| d.iter().map(|(_, n)| *n).collect::<Vec<_>>();
    assert!(
        local_decisions.len() >= 4,
        "woke, scaled up, down and to zero: {local_decisions:?}"
    );
    assert!(
        local_decisions
            .first()
            .is_some_and(|d| d.0 < 2_400 && d.1 >= 1),
        "woke on the poke: {local_decisions:?}"
    );
    assert_eq!(
        local_decisions.last().map(|d| d.1),
        Some(0),
        "scaled to zero"
    );
    assert_eq!(
        counts(&local_decisions),
        counts(&controller_decisions),
        "same counts in the same order: local {local_decisions:?}, controller {controller_decisions:?}"
    );
    for (l, c) in local_decisions.iter().zip(&controller_decisions) {
        assert!(
            c.0.abs_diff(l.0) <= 5,
            "same time: local {local_decisions:?}, controller {controller_decisions:?}"
        );
    }
}
