//! The autoscaler loop: gateway reports in, Deployment replicas out.
//!
//! One task owns one [`Autoscaler`] per Function. It ticks every second
//! (record the summed concurrency, decide, apply changes) and also decides at
//! once when a gateway pokes: a report with `poke: true` for a function whose
//! desired count is zero. Decisions go through a [`ScaleSink`] (the Deployment's
//! `spec.replicas` plus an Event in production, a recorder in tests) and into
//! the [`ScaleBook`], which the reconciler reads to write the status.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use kube::ResourceExt;
use kube::runtime::reflector::Store;
use porchlight_api::Function;
use porchlight_core::autoscaler::DecisionReason;
use porchlight_core::report::{AggregatedLoad, DEFAULT_REPORT_STALE_AFTER};
use porchlight_core::{
    Autoscaler, AutoscalerConfig, Decision, FunctionKey, GatewayReport, ReportAggregator,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::reconcile::validate_for_cluster;
use crate::{Error, Result};

/// The clock of the autoscaler: tokio's, so paused-time tests control it.
pub fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// RFC 3339 wall-clock time, for status fields.
pub fn wall_clock() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// A message from the gateway pollers.
#[derive(Clone, Debug)]
pub enum GatewayMessage {
    /// A gateway's latest report.
    Report(GatewayReport),
    /// A gateway went away (its pod is gone): forget its last report now.
    Gone(String),
}

/// What the autoscaler last decided for one function.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleRecord {
    /// Environments wanted, as applied to the Deployment.
    pub desired: u32,
    /// The concurrency the decision was based on (summed over gateways).
    pub observed_concurrency: f64,
    /// When the desired count last changed (RFC 3339).
    pub last_scale_time: Option<String>,
}

/// Decisions shared between the autoscaler loop (writer) and the reconciler
/// (reader, for status and for the replicas of a new Deployment). A plain
/// lock, never held across an await.
#[derive(Debug, Default)]
pub struct ScaleBook {
    records: RwLock<HashMap<FunctionKey, ScaleRecord>>,
}

impl ScaleBook {
    /// The record of a function.
    pub fn get(&self, key: &FunctionKey) -> Option<ScaleRecord> {
        self.records.read().ok()?.get(key).cloned()
    }

    /// Stores a record.
    pub fn set(&self, key: FunctionKey, record: ScaleRecord) {
        if let Ok(mut map) = self.records.write() {
            map.insert(key, record);
        }
    }

    /// Forgets a deleted function.
    pub fn remove(&self, key: &FunctionKey) {
        if let Ok(mut map) = self.records.write() {
            map.remove(key);
        }
    }
}

/// A change of a function's desired environment count.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleChange {
    /// The function.
    pub key: FunctionKey,
    /// The count before (None: unknown, e.g. just after a restart).
    pub from: Option<u32>,
    /// The new count.
    pub to: u32,
    /// Why.
    pub reason: DecisionReason,
    /// The concurrency the decision was based on.
    pub observed_concurrency: f64,
}

impl ScaleChange {
    /// The Event reason: `ScaledUp`, `ScaledDown` or `ScaledToZero`.
    pub fn event_reason(&self) -> &'static str {
        match (self.from, self.to) {
            (_, 0) => "ScaledToZero",
            (Some(from), to) if to < from => "ScaledDown",
            _ => "ScaledUp",
        }
    }

    /// The Event note.
    pub fn note(&self) -> String {
        let from = self.from.map_or_else(|| "?".to_string(), |n| n.to_string());
        format!(
            "Desired environments {from} -> {}: {} (concurrency {:.2})",
            self.to,
            self.reason.as_str(),
            self.observed_concurrency
        )
    }
}

/// Where decisions go.
pub trait ScaleSink: Send + Sync {
    /// Applies a new desired count to the function's workload.
    fn apply(
        &self,
        function: &Function,
        change: &ScaleChange,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// Where the autoscaler finds the Functions that exist.
pub trait FunctionSource: Send + Sync {
    /// Every Function, as last seen.
    fn functions(&self) -> Vec<Arc<Function>>;
}

impl FunctionSource for Store<Function> {
    fn functions(&self) -> Vec<Arc<Function>> {
        self.state()
    }
}

/// The key of a Function.
pub fn function_key(f: &Function) -> FunctionKey {
    FunctionKey::new(f.namespace().unwrap_or_default(), f.name_any())
}

struct FunctionScaler {
    autoscaler: Autoscaler,
    function: Arc<Function>,
    /// Count last applied to the Deployment (None: not known yet).
    applied: Option<u32>,
    /// A count was booked before the first reconcile. The reconciler may have
    /// created the Deployment just before it (with the floor), while its
    /// status reports the booked count, so the status cannot say what the
    /// Deployment has: the count is applied once, whatever the status says.
    booked_before_reconcile: bool,
    last_scale_time: Option<String>,
}

/// The sample fed to the autoscaler: the gateways' average since their last
/// report, or the current count when the average has not caught up yet.
pub fn sample(load: &AggregatedLoad) -> f64 {
    if load.average_concurrency > 0.0 {
        load.average_concurrency
    } else {
        f64::from(load.concurrency)
    }
}

/// Scaling patches in flight at once.
const APPLY_CONCURRENCY: usize = 16;

/// A decision waiting to be applied.
struct Pending {
    function: Arc<Function>,
    change: ScaleChange,
    panicking: bool,
}

/// The autoscaler loop for every function.
pub struct AutoscalerLoop<F, S> {
    functions: F,
    sink: S,
    book: Arc<ScaleBook>,
    metrics: Arc<Metrics>,
    aggregator: ReportAggregator,
    scalers: HashMap<FunctionKey, FunctionScaler>,
    tick: Duration,
}

impl<F: FunctionSource, S: ScaleSink> AutoscalerLoop<F, S> {
    /// A loop that ticks every second and drops gateways silent for 5 s.
    pub fn new(functions: F, sink: S, book: Arc<ScaleBook>, metrics: Arc<Metrics>) -> Self {
        AutoscalerLoop {
            functions,
            sink,
            book,
            metrics,
            aggregator: ReportAggregator::new(DEFAULT_REPORT_STALE_AFTER),
            scalers: HashMap::new(),
            tick: Duration::from_secs(1),
        }
    }

    /// The sink (tests inspect it).
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// Runs until `shutdown`; fails when the report source ends.
    pub async fn run(
        mut self,
        mut reports: mpsc::Receiver<GatewayMessage>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let mut tick = tokio::time::interval(self.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                msg = reports.recv() => match msg {
                    Some(msg) => self.on_message(msg).await,
                    None => return Err(Error::TaskEnded("gateway report source")),
                },
                _ = tick.tick() => self.on_tick().await,
            }
        }
    }

    /// Handles one message; a poke for a function at zero decides at once.
    pub async fn on_message(&mut self, msg: GatewayMessage) {
        let now = now();
        match msg {
            GatewayMessage::Gone(gateway) => self.aggregator.remove_gateway(&gateway),
            GatewayMessage::Report(report) => {
                self.metrics.gateway_reports.inc();
                let demand: Vec<FunctionKey> = if report.poke {
                    report
                        .functions
                        .iter()
                        .filter(|l| l.concurrency() > 0 || l.average_concurrency > 0.0)
                        .map(|l| l.key())
                        .collect()
                } else {
                    Vec::new()
                };
                self.aggregator.ingest(now, report);
                if demand.is_empty() {
                    return;
                }
                if demand.iter().any(|k| !self.scalers.contains_key(k)) {
                    self.sync_functions(now);
                }
                let totals = self.aggregator.totals(now);
                let mut pending = Vec::new();
                for key in demand {
                    let at_zero = self
                        .scalers
                        .get(&key)
                        .is_some_and(|s| s.autoscaler.last_desired() == 0);
                    if at_zero {
                        self.metrics.wakes.inc();
                        let load = totals.get(&key).cloned().unwrap_or_default();
                        debug!(function = %key, concurrency = load.concurrency, "demand at zero: deciding now");
                        pending.extend(self.decide(&key, now, &load));
                    }
                }
                self.apply_all(pending).await;
            }
        }
    }

    /// One tick: sync the function list, record, decide and apply for each.
    pub async fn on_tick(&mut self) {
        let now = now();
        self.sync_functions(now);
        let totals = self.aggregator.totals(now);
        self.metrics
            .gateways_live
            .set(self.aggregator.live_gateways(now) as i64);
        let keys: Vec<FunctionKey> = self.scalers.keys().cloned().collect();
        let mut pending = Vec::new();
        for key in keys {
            let load = totals.get(&key).cloned().unwrap_or_default();
            pending.extend(self.decide(&key, now, &load));
        }
        self.apply_all(pending).await;
    }

    /// The desired count the loop holds for a function (tests).
    pub fn desired(&self, key: &FunctionKey) -> Option<u32> {
        self.scalers.get(key).map(|s| s.autoscaler.last_desired())
    }

    /// Records the load and decides; returns a change to apply, if any.
    fn decide(
        &mut self,
        key: &FunctionKey,
        now: std::time::Instant,
        load: &AggregatedLoad,
    ) -> Option<Pending> {
        let scaler = self.scalers.get_mut(key)?;
        let observed = sample(load);
        scaler.autoscaler.record(now, observed);
        let ready = scaler
            .function
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
            .max(0) as u32;
        let decision: Decision = scaler.autoscaler.decide(now, ready);
        let labels = [key.namespace.as_str(), key.name.as_str()];
        self.metrics
            .observed_concurrency
            .with_label_values(&labels)
            .set(observed);
        self.metrics
            .desired_environments
            .with_label_values(&labels)
            .set(i64::from(decision.desired));
        if scaler.applied.is_none() {
            match scaler.function.status.as_ref() {
                None => {
                    // Never reconciled: its Deployment does not exist yet, so
                    // there is nothing to patch. The reconciler creates it with
                    // the count recorded here.
                    self.book.set(
                        key.clone(),
                        ScaleRecord {
                            desired: decision.desired,
                            observed_concurrency: observed,
                            last_scale_time: scaler.last_scale_time.clone(),
                        },
                    );
                    // Only a count other than the floor (what the reconciler
                    // creates the Deployment with when nothing is booked yet)
                    // can have missed the Deployment.
                    scaler.booked_before_reconcile |=
                        decision.desired != scaler.autoscaler.config().min_scale;
                    return None;
                }
                // Reconciled since this scaler started: the status says what
                // the Deployment was given (unless a count was booked early).
                Some(status) if !scaler.booked_before_reconcile => {
                    scaler.applied = status.desired_replicas.map(|n| n.max(0) as u32);
                }
                Some(_) => {}
            }
        }
        if scaler.applied == Some(decision.desired) {
            return None;
        }
        Some(Pending {
            function: scaler.function.clone(),
            change: ScaleChange {
                key: key.clone(),
                from: scaler.applied,
                to: decision.desired,
                reason: decision.reason,
                observed_concurrency: observed,
            },
            panicking: decision.panicking,
        })
    }

    /// Applies changes to the cluster, several at once so that a large batch
    /// (or one slow API call) does not hold up the rest, then records them.
    async fn apply_all(&mut self, pending: Vec<Pending>) {
        if pending.is_empty() {
            return;
        }
        let sink = &self.sink;
        let results: Vec<(Pending, Result<()>)> = futures::stream::iter(pending)
            .map(|p| async move {
                let result = sink.apply(&p.function, &p.change).await;
                (p, result)
            })
            .buffer_unordered(APPLY_CONCURRENCY)
            .collect()
            .await;
        for (p, result) in results {
            self.record_applied(p, result);
        }
    }

    fn record_applied(&mut self, p: Pending, result: Result<()>) {
        let Pending {
            change, panicking, ..
        } = p;
        let key = &change.key;
        match result {
            Ok(()) => {
                info!(function = %key, from = ?change.from, to = change.to, reason = change.reason.as_str(),
                    concurrency = change.observed_concurrency, panicking, "scaled");
                self.metrics
                    .scale_decisions
                    .with_label_values(&[change.reason.as_str()])
                    .inc();
                let Some(scaler) = self.scalers.get_mut(key) else {
                    return;
                };
                scaler.applied = Some(change.to);
                scaler.booked_before_reconcile = false;
                scaler.last_scale_time = Some(wall_clock());
                self.book.set(
                    key.clone(),
                    ScaleRecord {
                        desired: change.to,
                        observed_concurrency: change.observed_concurrency,
                        last_scale_time: scaler.last_scale_time.clone(),
                    },
                );
            }
            Err(error) => {
                // Retried on the next tick: `applied` still differs.
                self.metrics.scale_errors.inc();
                warn!(function = %key, to = change.to, %error, "applying scaling decision failed");
            }
        }
    }

    /// Adds new Functions, updates changed ones, forgets deleted ones.
    fn sync_functions(&mut self, now: std::time::Instant) {
        let mut seen = HashMap::with_capacity(self.scalers.len());
        for f in self.functions.functions() {
            let key = function_key(&f);
            let Ok(settings) = validate_for_cluster(&f) else {
                // Invalid specs are left as they are; the reconciler reports them.
                continue;
            };
            let config = AutoscalerConfig::from_settings(&settings);
            match self.scalers.get_mut(&key) {
                Some(s) => {
                    if s.autoscaler.config() != &config {
                        s.autoscaler.set_config(config);
                    }
                    s.function = f;
                }
                None => {
                    let status = f.status.as_ref();
                    let last_scale_time = status.and_then(|s| s.last_scale_time.clone());
                    let applied = self.book.get(&key).map(|r| r.desired).or_else(|| {
                        status
                            .and_then(|s| s.desired_replicas)
                            .map(|n| n.max(0) as u32)
                    });
                    let current = applied
                        .or_else(|| status.and_then(|s| s.replicas).map(|n| n.max(0) as u32))
                        .unwrap_or(0);
                    self.scalers.insert(
                        key.clone(),
                        FunctionScaler {
                            autoscaler: Autoscaler::new(config, now, current),
                            function: f,
                            applied,
                            booked_before_reconcile: false,
                            last_scale_time,
                        },
                    );
                }
            }
            seen.insert(key, ());
        }
        let gone: Vec<FunctionKey> = self
            .scalers
            .keys()
            .filter(|k| !seen.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            self.scalers.remove(&key);
            self.book.remove(&key);
            self.metrics.forget_function(&key.namespace, &key.name);
        }
    }
}
