//! Concurrency reports: a sampler reads every function's in flight + queued
//! every 100 ms, publishes a [`GatewayReport`] every second (or at once when a
//! function at zero gets demand), and updates the gauges.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use porchlight_core::{FunctionLoad, GatewayReport};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::registry::Registry;

/// Sampling period.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Samples per published report.
const SAMPLES_PER_REPORT: u32 = 10;
/// Longest long-poll.
pub const MAX_WAIT: Duration = Duration::from_secs(5);

#[derive(Default, Clone, Copy)]
struct Acc {
    sum: f64,
    count: u32,
}

/// Holds the latest report and the averages being built for the next one.
pub struct ReportHub {
    gateway: String,
    tx: watch::Sender<Arc<GatewayReport>>,
    acc: Mutex<HashMap<String, Acc>>,
    /// When the last sample was taken (idle time is metered between samples).
    last_sample: Mutex<Option<tokio::time::Instant>>,
}

impl ReportHub {
    /// A hub whose reports name this gateway.
    pub fn new(gateway: String) -> Self {
        let initial = GatewayReport {
            gateway: gateway.clone(),
            ..GatewayReport::default()
        };
        ReportHub {
            gateway,
            tx: watch::channel(Arc::new(initial)).0,
            acc: Mutex::new(HashMap::new()),
            last_sample: Mutex::new(None),
        }
    }

    /// The latest report.
    pub fn latest(&self) -> Arc<GatewayReport> {
        self.tx.borrow().clone()
    }

    /// Follows the reports as they are published (for in-process consumers).
    pub fn subscribe(&self) -> watch::Receiver<Arc<GatewayReport>> {
        self.tx.subscribe()
    }

    /// Waits for a report with `sequence > after`, up to `wait`.
    pub async fn wait_after(&self, after: u64, wait: Duration) -> Arc<GatewayReport> {
        let mut rx = self.tx.subscribe();
        let wait = wait.min(MAX_WAIT);
        let _ = tokio::time::timeout(wait, rx.wait_for(|r| r.sequence > after)).await;
        self.latest()
    }

    /// Adds one sample of every function's load, updates the gauges, and
    /// meters the idle environments since the last sample.
    pub fn sample(&self, registry: &Registry, metrics: &Metrics) {
        let now = tokio::time::Instant::now();
        let elapsed = self
            .last_sample
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(now)
            .map(|t| now.saturating_duration_since(t).min(SAMPLE_EVERY * 10));
        let mut acc = self.acc.lock().unwrap_or_else(|p| p.into_inner());
        for f in registry.all() {
            let load = f.load();
            let name = f.name();
            if let Some(elapsed) = elapsed.filter(|_| load.idle > 0) {
                let (seconds, gbs) = f.meter_idle(load.idle, elapsed);
                metrics
                    .idle_environment_seconds
                    .with_label_values(&[name])
                    .inc_by(seconds);
                metrics
                    .idle_gb_seconds
                    .with_label_values(&[name])
                    .inc_by(gbs);
            }
            let a = acc.entry(name.to_string()).or_default();
            a.sum += f64::from(load.concurrency());
            a.count += 1;
            let m = metrics;
            m.queue_depth
                .with_label_values(&[name])
                .set(i64::from(load.queued));
            m.in_flight
                .with_label_values(&[name])
                .set(i64::from(load.in_flight));
            m.environments
                .with_label_values(&[name, "ready"])
                .set(i64::from(load.ready));
            m.environments
                .with_label_values(&[name, "draining"])
                .set(i64::from(load.draining));
        }
    }

    /// Builds and publishes the next report from the samples so far.
    pub fn publish(&self, registry: &Registry, poke: bool) {
        let mut acc = std::mem::take(&mut *self.acc.lock().unwrap_or_else(|p| p.into_inner()));
        let mut functions = Vec::new();
        for f in registry.all() {
            let load = f.load();
            let a = acc.remove(f.name()).unwrap_or_default();
            let average = if a.count == 0 {
                f64::from(load.concurrency())
            } else {
                a.sum / f64::from(a.count)
            };
            if load.concurrency() == 0 && load.ready == 0 && average == 0.0 {
                continue;
            }
            functions.push(FunctionLoad {
                namespace: f.key().namespace.clone(),
                name: f.key().name.clone(),
                in_flight: load.in_flight,
                queued: load.queued,
                average_concurrency: average,
                ready_environments: load.ready,
                invocations_total: f.invocations_total(),
                busy_environments: f.busy_environments(),
                idle_ms: load
                    .idle_since
                    .map(|t| t.elapsed().as_millis().try_into().unwrap_or(u64::MAX)),
                usage: Some(f.usage()),
            });
        }
        let sequence = self.tx.borrow().sequence + 1;
        self.tx.send_replace(Arc::new(GatewayReport {
            gateway: self.gateway.clone(),
            sequence,
            poke,
            functions,
        }));
    }

    /// Samples every 100 ms and publishes every second or on a poke, until cancelled.
    pub async fn run(
        self: Arc<Self>,
        registry: Arc<Registry>,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) {
        let hub = &self;
        let mut pokes = registry.demand().subscribe();
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut samples = 0u32;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    hub.sample(&registry, &metrics);
                    samples += 1;
                    if samples >= SAMPLES_PER_REPORT {
                        samples = 0;
                        hub.publish(&registry, false);
                    }
                }
                changed = pokes.changed() => {
                    if changed.is_err() { return; }
                    hub.sample(&registry, &metrics);
                    hub.publish(&registry, true);
                }
            }
        }
    }
}
