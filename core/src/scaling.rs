//! The autoscaler loop: gateway reports in, desired environment counts out.
//!
//! One loop, two deployments of it: the controller runs it with a sink that
//! patches each Function's Deployment, local mode runs it with a sink that
//! starts and stops local processes. Both feed it the same
//! [`GatewayReport`]s (the controller long-polls the gateways, local mode
//! follows its own gateway's reports in process), so a scaling behaviour
//! proven in one mode holds in the other.
//!
//! The loop owns one [`Autoscaler`] per function. It ticks every second
//! (record the summed concurrency, decide, apply changes) and also decides at
//! once when a gateway pokes: a report with `poke: true` for a function whose
//! desired count is zero. Where functions come from is a [`ScaleSource`];
//! where decisions go is a [`ScaleSink`]; the [`ScaleBook`] keeps the last
//! decision of each function for whoever writes status.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::autoscaler::{
    Autoscaler, AutoscalerConfig, Decision, DecisionReason, KeepAlive, KeepAliveState,
    KeepAliveSummary,
};
use crate::keepalive::{self, IdleHistogram};
use crate::report::{AggregatedLoad, DEFAULT_REPORT_STALE_AFTER};
use crate::usage::FunctionUsage;
use crate::{FunctionKey, GatewayReport, ReportAggregator};

/// The clock of the autoscaler: tokio's, so paused-time tests control it.
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// A message from the gateways.
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
    /// Environments wanted, as applied to the workload.
    pub desired: u32,
    /// The concurrency the decision was based on (summed over gateways).
    pub observed_concurrency: f64,
    /// When the desired count last changed (RFC 3339).
    pub last_scale_time: Option<String>,
    /// Where the function's keep-alive stands.
    pub keep_alive: Option<KeepAliveRecord>,
}

/// A function's keep-alive, as its status reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct KeepAliveRecord {
    /// Fixed or adaptive.
    pub policy: KeepAlive,
    /// The keep-alive for the idle time after the last event.
    pub decision: keepalive::Decision,
    /// When one environment is loaded again (RFC 3339), while that is ahead.
    pub next_prewarm: Option<String>,
    /// The function's idle times, kept so that a restart does not lose them.
    pub histogram: IdleHistogram,
}

impl KeepAliveRecord {
    /// The record of `state` at `now`.
    pub fn new(state: KeepAliveState, now: Instant) -> Self {
        KeepAliveRecord {
            policy: state.policy,
            decision: state.decision,
            next_prewarm: state
                .next_prewarm(now)
                .map(|at| wall_clock_after(at.saturating_duration_since(now))),
            histogram: state.histogram,
        }
    }

    /// Whether `summary` says something this record does not (the pre-warm
    /// time itself moves with the clock; only whether there is one counts).
    fn differs_from(&self, summary: &KeepAliveSummary) -> bool {
        self.policy != summary.policy
            || self.decision != summary.decision
            || self.next_prewarm.is_some() != summary.prewarm_ahead
            || self.histogram.total() != summary.idle_times
    }
}

/// Decisions shared between the loop (writer) and whoever reports them
/// (the reconciler's status, for one). A plain lock, never held across an await.
#[derive(Debug, Default)]
pub struct ScaleBook {
    records: RwLock<HashMap<FunctionKey, ScaleRecord>>,
    holding: AtomicBool,
    /// Usage per function: whether the total kept from before a restart is
    /// in (only then is the sum complete), and the sum.
    usage: RwLock<HashMap<FunctionKey, (bool, FunctionUsage)>>,
}

impl ScaleBook {
    /// True while no gateway reports: every function keeps its last count.
    pub fn is_holding(&self) -> bool {
        self.holding.load(Ordering::Relaxed)
    }

    /// The record of a function.
    pub fn get(&self, key: &FunctionKey) -> Option<ScaleRecord> {
        self.records.read().ok()?.get(key).cloned()
    }

    /// Looks at a function's record in place (no copy).
    fn inspect<R>(&self, key: &FunctionKey, f: impl FnOnce(&ScaleRecord) -> R) -> Option<R> {
        self.records.read().ok()?.get(key).map(f)
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
        if let Ok(mut map) = self.usage.write() {
            map.remove(key);
        }
    }

    /// Adds usage the gateways reported.
    pub fn add_usage(&self, key: &FunctionKey, used: &FunctionUsage) {
        if let Ok(mut map) = self.usage.write() {
            map.entry(key.clone()).or_default().1.add(used);
        }
    }

    /// Adds the total kept from before a restart (once per function).
    pub fn restore_usage(&self, key: &FunctionKey, kept: Option<FunctionUsage>) {
        if let Ok(mut map) = self.usage.write() {
            let entry = map.entry(key.clone()).or_default();
            if !entry.0 {
                entry.0 = true;
                if let Some(kept) = kept {
                    entry.1.add(&kept);
                }
            }
        }
    }

    /// A function's usage total, once it includes what was kept from before
    /// a restart.
    pub fn usage(&self, key: &FunctionKey) -> Option<FunctionUsage> {
        let map = self.usage.read().ok()?;
        map.get(key)
            .filter(|(restored, _)| *restored)
            .map(|(_, u)| u.clone())
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
    /// Environments running invocations when the decision was made (pod
    /// name -> in flight): a scale-down should remove the others first.
    pub busy_environments: BTreeMap<String, u32>,
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

/// What the source knows of a function's workload.
#[derive(Clone, Debug, PartialEq)]
pub enum Workload {
    /// It does not exist yet (a Function never reconciled): decisions are
    /// booked for whoever creates it, not applied.
    NotCreated,
    /// It exists.
    Exists {
        /// The count it was last given, as far as the source knows.
        desired: Option<u32>,
        /// The environments it has now.
        current: Option<u32>,
        /// When its count last changed (RFC 3339), as the source last wrote it.
        last_scale_time: Option<String>,
    },
}

/// One function as the loop sees it.
#[derive(Clone, Debug)]
pub struct ScaleTarget<T> {
    /// The function.
    pub key: FunctionKey,
    /// Its autoscaler's settings.
    pub config: AutoscalerConfig,
    /// Environments ready to take events.
    pub ready: u32,
    /// Its workload.
    pub workload: Workload,
    /// What the sink needs to apply a change (the Function object, for one).
    pub handle: T,
}

/// Where the loop finds the functions that exist. Functions with an invalid
/// spec are left out.
pub trait ScaleSource: Send + Sync {
    /// What the sink gets with each change.
    type Handle: Clone + Send + Sync;
    /// Every function, as last seen.
    fn targets(&self) -> Vec<ScaleTarget<Self::Handle>>;

    /// Idle times kept from before a restart (a Function's status), asked
    /// once per function when the loop first sees it.
    fn idle_times(&self, _handle: &Self::Handle) -> Option<IdleHistogram> {
        None
    }

    /// Usage kept from before a restart (a Function's status), asked once
    /// per function when the loop first sees it.
    fn usage(&self, _handle: &Self::Handle) -> Option<FunctionUsage> {
        None
    }
}

/// Where decisions go.
pub trait ScaleSink<T>: Send + Sync {
    /// Why an apply failed (it is retried on the next tick).
    type Error: std::fmt::Display + Send;
    /// Applies a new desired count to the function's workload.
    fn apply(
        &self,
        handle: &T,
        change: &ScaleChange,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// Something that happened in the loop, for metrics.
#[derive(Debug)]
pub enum LoopEvent<'a> {
    /// A gateway report arrived.
    Report,
    /// Demand at zero decided at once.
    Wake(&'a FunctionKey),
    /// Gateways whose reports are trusted, at a tick.
    GatewaysLive(usize),
    /// A decision: the concurrency it saw and the count it wants.
    Decided {
        /// The function.
        key: &'a FunctionKey,
        /// The sample fed to its autoscaler.
        observed: f64,
        /// The decision.
        decision: &'a Decision,
    },
    /// A change was applied.
    Applied(&'a ScaleChange),
    /// Applying a change failed.
    ApplyFailed(&'a ScaleChange),
    /// A function went away.
    Forgot(&'a FunctionKey),
    /// No gateway reports (true): every count is held; or reports resumed (false).
    Holding(bool),
}

/// Counts what the loop does (metrics); the default counts nothing.
pub trait ScaleObserver: Send + Sync {
    /// Called for every [`LoopEvent`].
    fn observe(&self, _event: LoopEvent<'_>) {}
}

impl ScaleObserver for () {}

/// Why the loop stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum LoopError {
    /// The report source ended: scaling on no data is not safe.
    ReportsEnded,
}

impl std::fmt::Display for LoopError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the gateway report source ended")
    }
}

impl std::error::Error for LoopError {}

/// The sample fed to the autoscaler: the gateways' average since their last
/// report, or the current count when the average has not caught up yet.
pub fn sample(load: &AggregatedLoad) -> f64 {
    if load.average_concurrency > 0.0 {
        load.average_concurrency
    } else {
        f64::from(load.concurrency)
    }
}

/// Functions with demand in a poke: only those can need a decision at once.
pub fn poked_functions(report: &GatewayReport) -> Vec<FunctionKey> {
    if !report.poke {
        return Vec::new();
    }
    report
        .functions
        .iter()
        .filter(|l| l.concurrency() > 0 || l.average_concurrency > 0.0)
        .map(|l| l.key())
        .collect()
}

/// RFC 3339 wall-clock time, for status fields.
pub fn wall_clock() -> String {
    wall_clock_after(Duration::ZERO)
}

/// RFC 3339 wall-clock time `ahead` from now, to the second.
pub fn wall_clock_after(ahead: Duration) -> String {
    let at = time::OffsetDateTime::now_utc() + ahead;
    at.replace_nanosecond(0)
        .unwrap_or(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Scaling changes applied at once.
const APPLY_CONCURRENCY: usize = 16;

struct FunctionScaler<T> {
    autoscaler: Autoscaler,
    target: ScaleTarget<T>,
    /// Count last applied to the workload (None: not known yet).
    applied: Option<u32>,
    /// A count was booked before the workload existed. Whoever created it may
    /// have done so just before (with the floor), while the source reports
    /// the booked count, so the source cannot say what the workload has: the
    /// count is applied once, whatever the source says.
    booked_before_creation: bool,
    last_scale_time: Option<String>,
    /// When the scale-down now waiting was first decided (see
    /// [`AutoscalerLoop::decide`]).
    scale_down_decided: Option<Instant>,
}

/// A decision waiting to be applied.
struct Pending<T> {
    handle: T,
    change: ScaleChange,
    panicking: bool,
    keep_alive: KeepAliveRecord,
}

/// What the loop should do for one function now (pure).
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Nothing: the workload already has the count.
    Keep,
    /// Book the count for whoever creates the workload.
    Book,
    /// Apply the count to the workload.
    Apply,
}

/// The decision after the autoscaler's: apply, book or keep. `applied` is
/// updated from the source's view the first time the workload exists.
pub fn next_step(
    desired: u32,
    floor: u32,
    workload: &Workload,
    applied: &mut Option<u32>,
    booked_before_creation: &mut bool,
) -> Step {
    if applied.is_none() {
        match workload {
            Workload::NotCreated => {
                // Only a count other than the floor (what the workload is
                // created with when nothing is booked) can miss it.
                *booked_before_creation |= desired != floor;
                return Step::Book;
            }
            Workload::Exists { desired: known, .. } if !*booked_before_creation => {
                *applied = *known;
            }
            Workload::Exists { .. } => {}
        }
    }
    if *applied == Some(desired) {
        Step::Keep
    } else {
        Step::Apply
    }
}

/// A change and how applying it went.
type Applied<T, E> = (Pending<T>, Result<(), E>);

/// The autoscaler loop for every function of a source.
pub struct AutoscalerLoop<S: ScaleSource, K> {
    source: S,
    sink: K,
    book: Arc<ScaleBook>,
    observer: Arc<dyn ScaleObserver>,
    aggregator: ReportAggregator,
    scalers: HashMap<FunctionKey, FunctionScaler<S::Handle>>,
    tick: Duration,
    ever_reported: bool,
}

impl<S: ScaleSource, K: ScaleSink<S::Handle>> AutoscalerLoop<S, K> {
    /// A loop that ticks every second and drops gateways silent for 5 s.
    pub fn new(source: S, sink: K, book: Arc<ScaleBook>, observer: Arc<dyn ScaleObserver>) -> Self {
        AutoscalerLoop {
            source,
            sink,
            book,
            observer,
            aggregator: ReportAggregator::new(DEFAULT_REPORT_STALE_AFTER),
            scalers: HashMap::new(),
            tick: Duration::from_secs(1),
            ever_reported: false,
        }
    }

    /// The sink (tests inspect it).
    pub fn sink(&self) -> &K {
        &self.sink
    }

    /// Runs until `shutdown`; fails when the report source ends.
    pub async fn run(
        mut self,
        mut reports: mpsc::Receiver<GatewayMessage>,
        shutdown: CancellationToken,
    ) -> Result<(), LoopError> {
        let mut tick = tokio::time::interval(self.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                msg = reports.recv() => match msg {
                    Some(msg) => self.on_message(msg).await,
                    None => return Err(LoopError::ReportsEnded),
                },
                _ = tick.tick() => self.on_tick().await,
            }
        }
    }

    /// Handles one message; a poke for a function at zero decides at once.
    pub async fn on_message(&mut self, msg: GatewayMessage) {
        let now = now();
        let report = match msg {
            GatewayMessage::Gone(gateway) => {
                self.aggregator.remove_gateway(&gateway);
                return;
            }
            GatewayMessage::Report(report) => report,
        };
        self.observer.observe(LoopEvent::Report);
        self.ever_reported = true;
        let demand = poked_functions(&report);
        for (key, used) in self.aggregator.ingest(now, report) {
            self.book.add_usage(&key, &used);
        }
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
                self.observer.observe(LoopEvent::Wake(&key));
                let load = totals.get(&key).cloned().unwrap_or_default();
                debug!(function = %key, concurrency = load.concurrency, "demand at zero: deciding now");
                pending.extend(self.decide(&key, now, &load));
            }
        }
        self.apply_all(pending).await;
    }

    /// One tick: sync the function list, record, decide and apply for each.
    /// With no gateway reporting, nothing is decided: silence is not zero
    /// load, and scaling every function to zero on it would be wrong.
    pub async fn on_tick(&mut self) {
        let now = now();
        self.sync_functions(now);
        let live = self.aggregator.live_gateways(now);
        self.observer.observe(LoopEvent::GatewaysLive(live));
        if !self.hold_while_silent(live) {
            return;
        }
        let totals = self.aggregator.totals(now);
        let keys: Vec<FunctionKey> = self.scalers.keys().cloned().collect();
        let mut pending = Vec::new();
        for key in keys {
            let load = totals.get(&key).cloned().unwrap_or_default();
            pending.extend(self.decide(&key, now, &load));
        }
        self.apply_all(pending).await;
    }

    /// Holds every count while no gateway reports; true when deciding may go on.
    fn hold_while_silent(&mut self, live_gateways: usize) -> bool {
        let silent = live_gateways == 0;
        if silent != self.book.is_holding() {
            self.book.holding.store(silent, Ordering::Relaxed);
            self.observer.observe(LoopEvent::Holding(silent));
            if silent && self.ever_reported {
                warn!("no gateway reports: every function keeps its desired count until one does");
            } else if silent {
                info!("waiting for the first gateway report before deciding");
            } else {
                info!("gateway reports resumed: scaling decisions resume");
            }
        }
        !silent
    }

    /// The desired count the loop holds for a function (tests).
    pub fn desired(&self, key: &FunctionKey) -> Option<u32> {
        self.scalers.get(key).map(|s| s.autoscaler.last_desired())
    }

    /// Records the load and decides; returns a change to apply, if any.
    fn decide(
        &mut self,
        key: &FunctionKey,
        now: Instant,
        load: &AggregatedLoad,
    ) -> Option<Pending<S::Handle>> {
        let scaler = self.scalers.get_mut(key)?;
        let observed = sample(load);
        scaler.autoscaler.record(now, observed);
        // Nothing runs now: the idle time starts when the last invocation
        // ended, which the gateways know to the millisecond (an invocation
        // shorter than their sampling period is never seen in flight).
        if load.concurrency == 0
            && let Some(ended) = load.last_active
        {
            scaler.autoscaler.record_idle_since(now, ended);
        }
        let decision = scaler.autoscaler.decide(now, scaler.target.ready);
        self.observer.observe(LoopEvent::Decided {
            key,
            observed,
            decision: &decision,
        });
        let step = next_step(
            decision.desired,
            scaler.autoscaler.config().min_scale,
            &scaler.target.workload,
            &mut scaler.applied,
            &mut scaler.booked_before_creation,
        );
        // A scale-down to fewer environments (not to zero) waits until every
        // gateway has reported after it was decided (a second at most): it
        // marks the busy pods to keep, and reports are up to a second old, so
        // an invocation that started since the last one would lose its pod.
        // A scale to zero keeps no pod and is not held: its timing is the
        // keep-alive's, and an event that arrives meanwhile starts a new
        // environment at once (the gateway pokes) while the old one drains.
        let scaling_down = step == Step::Apply
            && decision.desired > 0
            && scaler.applied.is_some_and(|from| decision.desired < from);
        let step = if !scaling_down {
            scaler.scale_down_decided = None;
            step
        } else {
            let decided = *scaler.scale_down_decided.get_or_insert(now);
            if self.aggregator.all_reported_after(decided, now) {
                scaler.scale_down_decided = None;
                step
            } else {
                return None;
            }
        };
        let keep_alive = || KeepAliveRecord::new(scaler.autoscaler.keep_alive_state(), now);
        match step {
            Step::Keep => {
                // New idle times or a new keep-alive reach the record (and
                // the status with its next write) without a scaling change.
                // Compared in summary first: most ticks change nothing, and
                // the full record copies the histogram.
                let summary = scaler.autoscaler.keep_alive_summary(now);
                let stale = self.book.inspect(key, |r| {
                    r.keep_alive
                        .as_ref()
                        .is_none_or(|k| k.differs_from(&summary))
                });
                if stale == Some(true)
                    && let Some(mut record) = self.book.get(key)
                {
                    record.keep_alive = Some(keep_alive());
                    self.book.set(key.clone(), record);
                }
                None
            }
            Step::Book => {
                self.book.set(
                    key.clone(),
                    ScaleRecord {
                        desired: decision.desired,
                        observed_concurrency: observed,
                        last_scale_time: scaler.last_scale_time.clone(),
                        keep_alive: Some(keep_alive()),
                    },
                );
                None
            }
            Step::Apply => Some(Pending {
                handle: scaler.target.handle.clone(),
                change: ScaleChange {
                    key: key.clone(),
                    from: scaler.applied,
                    to: decision.desired,
                    reason: decision.reason,
                    observed_concurrency: observed,
                    busy_environments: load.busy_environments.clone(),
                },
                panicking: decision.panicking,
                keep_alive: keep_alive(),
            }),
        }
    }

    /// Applies changes, several at once so that a large batch (or one slow
    /// apply) does not hold up the rest, then records them.
    async fn apply_all(&mut self, pending: Vec<Pending<S::Handle>>) {
        if pending.is_empty() {
            return;
        }
        let sink = &self.sink;
        let results: Vec<Applied<S::Handle, K::Error>> = futures::stream::iter(pending)
            .map(|p| async move {
                let result = sink.apply(&p.handle, &p.change).await;
                (p, result)
            })
            .buffer_unordered(APPLY_CONCURRENCY)
            .collect()
            .await;
        for (p, result) in results {
            self.record_applied(p, result);
        }
    }

    fn record_applied(&mut self, p: Pending<S::Handle>, result: Result<(), K::Error>) {
        let Pending {
            change,
            panicking,
            keep_alive,
            ..
        } = p;
        let key = &change.key;
        match result {
            Ok(()) => {
                info!(function = %key, from = ?change.from, to = change.to, reason = change.reason.as_str(),
                    concurrency = change.observed_concurrency, panicking, "scaled");
                self.observer.observe(LoopEvent::Applied(&change));
                let Some(scaler) = self.scalers.get_mut(key) else {
                    return;
                };
                scaler.applied = Some(change.to);
                scaler.booked_before_creation = false;
                scaler.last_scale_time = Some(wall_clock());
                self.book.set(
                    key.clone(),
                    ScaleRecord {
                        desired: change.to,
                        observed_concurrency: change.observed_concurrency,
                        last_scale_time: scaler.last_scale_time.clone(),
                        keep_alive: Some(keep_alive),
                    },
                );
            }
            Err(error) => {
                // Retried on the next tick: `applied` still differs.
                self.observer.observe(LoopEvent::ApplyFailed(&change));
                warn!(function = %key, to = change.to, %error, "applying scaling decision failed");
            }
        }
    }

    /// Adds new functions, updates changed ones, forgets deleted ones.
    fn sync_functions(&mut self, now: Instant) {
        let mut seen = HashMap::with_capacity(self.scalers.len());
        for target in self.source.targets() {
            let key = target.key.clone();
            match self.scalers.get_mut(&key) {
                Some(s) => {
                    if s.autoscaler.config() != &target.config {
                        s.autoscaler.set_config(target.config.clone());
                    }
                    s.target = target;
                }
                None => {
                    let (known, current, last_scale_time) = match &target.workload {
                        Workload::NotCreated => (None, None, None),
                        Workload::Exists {
                            desired,
                            current,
                            last_scale_time,
                        } => (*desired, *current, last_scale_time.clone()),
                    };
                    let applied = self.book.get(&key).map(|r| r.desired).or(known);
                    let start = applied.or(current).unwrap_or(0);
                    let mut autoscaler = Autoscaler::new(target.config.clone(), now, start);
                    if let Some(idle) = self.source.idle_times(&target.handle) {
                        autoscaler.restore_idle_times(idle);
                    }
                    self.book
                        .restore_usage(&key, self.source.usage(&target.handle));
                    self.scalers.insert(
                        key.clone(),
                        FunctionScaler {
                            autoscaler,
                            target,
                            applied,
                            booked_before_creation: false,
                            last_scale_time,
                            scale_down_decided: None,
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
            self.observer.observe(LoopEvent::Forgot(&key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exists(desired: Option<u32>) -> Workload {
        Workload::Exists {
            desired,
            current: desired,
            last_scale_time: None,
        }
    }

    #[test]
    fn a_workload_not_created_gets_a_booking() {
        let (mut applied, mut booked) = (None, false);
        assert_eq!(
            next_step(0, 0, &Workload::NotCreated, &mut applied, &mut booked),
            Step::Book
        );
        assert!(!booked, "the floor cannot miss the workload");
        assert_eq!(
            next_step(3, 0, &Workload::NotCreated, &mut applied, &mut booked),
            Step::Book
        );
        assert!(booked);
        // Created since, with a status that reports the booked count: the
        // count is applied once all the same.
        assert_eq!(
            next_step(3, 0, &exists(Some(3)), &mut applied, &mut booked),
            Step::Apply
        );
    }

    #[test]
    fn a_known_count_is_kept_and_a_new_one_applied() {
        let (mut applied, mut booked) = (None, false);
        assert_eq!(
            next_step(2, 0, &exists(Some(2)), &mut applied, &mut booked),
            Step::Keep
        );
        assert_eq!(applied, Some(2));
        assert_eq!(
            next_step(4, 0, &exists(Some(2)), &mut applied, &mut booked),
            Step::Apply
        );
        let (mut applied, mut booked) = (None, false);
        assert_eq!(
            next_step(0, 0, &exists(None), &mut applied, &mut booked),
            Step::Apply,
            "unknown: applied, to be sure"
        );
    }

    #[test]
    fn only_pokes_with_demand_decide_at_once() {
        let mut report = GatewayReport {
            gateway: "g".into(),
            sequence: 1,
            poke: false,
            functions: vec![
                crate::FunctionLoad {
                    namespace: "d".into(),
                    name: "busy".into(),
                    queued: 1,
                    ..Default::default()
                },
                crate::FunctionLoad {
                    namespace: "d".into(),
                    name: "idle".into(),
                    ready_environments: 1,
                    ..Default::default()
                },
            ],
        };
        assert!(poked_functions(&report).is_empty());
        report.poke = true;
        assert_eq!(poked_functions(&report), [FunctionKey::new("d", "busy")]);
    }

    /// Function d/f with these bounds and keep-alive, `at` environments
    /// (ready and in its workload), a 30 s idle window and 60 s stable window.
    fn target(min_scale: u32, max_scale: u32, keep_alive: KeepAlive, at: u32) -> ScaleTarget<()> {
        let settings = crate::ScalingSettings {
            min_scale,
            max_scale,
            concurrency_per_environment: 1,
            target_utilization: 0.7,
            scale_to_zero_after: Duration::from_secs(30),
            stable_window: Duration::from_secs(60),
            keep_alive,
        };
        ScaleTarget {
            key: FunctionKey::new("d", "f"),
            config: AutoscalerConfig::from_settings(&settings),
            ready: at,
            workload: exists(Some(at)),
            handle: (),
        }
    }

    /// Gateway g's report of `load` for function d/f.
    fn report_of(sequence: u64, poke: bool, load: crate::FunctionLoad) -> GatewayMessage {
        GatewayMessage::Report(GatewayReport {
            gateway: "g".into(),
            sequence,
            poke,
            functions: vec![crate::FunctionLoad {
                namespace: "d".into(),
                name: "f".into(),
                ..load
            }],
        })
    }

    struct OneFunction(Option<IdleHistogram>, KeepAlive);

    impl ScaleSource for OneFunction {
        type Handle = ();
        fn targets(&self) -> Vec<ScaleTarget<()>> {
            vec![target(0, 5, self.1, 0)]
        }
        fn idle_times(&self, _: &()) -> Option<IdleHistogram> {
            self.0.clone()
        }
    }

    struct Accept;

    impl ScaleSink<()> for Accept {
        type Error = String;
        async fn apply(&self, _: &(), _: &ScaleChange) -> Result<(), String> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn restored_idle_times_decide_and_reach_the_record() {
        let mut idle = IdleHistogram::new();
        for _ in 0..40 {
            idle.record_idle(Duration::from_secs(178));
        }
        let book = Arc::new(ScaleBook::default());
        let mut l = AutoscalerLoop::new(
            OneFunction(Some(idle), KeepAlive::Adaptive),
            Accept,
            book.clone(),
            Arc::new(()),
        );
        let report = |sequence, concurrency| {
            report_of(
                sequence,
                true,
                crate::FunctionLoad {
                    in_flight: concurrency,
                    ..Default::default()
                },
            )
        };
        l.on_message(report(1, 1)).await;
        let record = book.get(&FunctionKey::new("d", "f")).expect("record");
        assert!(record.desired >= 1, "woken by the event");
        let k = record.keep_alive.expect("keep-alive");
        assert_eq!(k.policy, KeepAlive::Adaptive);
        assert_eq!(k.histogram.total(), 40, "the restored idle times");
        assert_eq!(k.decision.mode, keepalive::Mode::Histogram);
        assert!(k.next_prewarm.is_none(), "busy: no pre-warm ahead");

        // Idle: unloaded, with the pre-warm time in the record.
        for s in 2..12 {
            tokio::time::advance(Duration::from_secs(1)).await;
            l.on_message(report(s, 0)).await;
            l.on_tick().await;
        }
        let record = book.get(&FunctionKey::new("d", "f")).expect("record");
        assert_eq!(record.desired, 0);
        assert!(
            record
                .keep_alive
                .expect("keep-alive")
                .next_prewarm
                .is_some()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn invocations_too_short_to_be_sampled_keep_the_environment() {
        // A function called every 20 s whose invocations end between two
        // samples: no report shows one in flight, only the time since the
        // last one ended tells.
        let book = Arc::new(ScaleBook::default());
        let mut l = AutoscalerLoop::new(
            OneFunction(None, KeepAlive::Fixed),
            Accept,
            book.clone(),
            Arc::new(()),
        );
        let report = |sequence: u64, in_flight, idle_ms| {
            report_of(
                sequence,
                in_flight > 0,
                crate::FunctionLoad {
                    in_flight,
                    ready_environments: u32::from(sequence > 1),
                    idle_ms,
                    ..Default::default()
                },
            )
        };
        let desired = || {
            book.get(&FunctionKey::new("d", "f"))
                .expect("record")
                .desired
        };
        l.on_message(report(1, 1, None)).await;
        assert!(desired() >= 1, "woken by the first event");
        // The last call ended this many seconds before second s.
        let since_call = |s: u64| (s - 1) % 20;
        for s in 2..=120u64 {
            tokio::time::advance(Duration::from_secs(1)).await;
            l.on_message(report(s, 0, Some(since_call(s) * 1000 + 300)))
                .await;
            l.on_tick().await;
            assert!(desired() >= 1, "second {s}: still called every 20 s");
        }
        // The calls stop (the last ended at 120.7 s): zero once the 30 s
        // window has passed, and not before.
        for s in 121..=160u64 {
            tokio::time::advance(Duration::from_secs(1)).await;
            l.on_message(report(s, 0, Some((s - 121) * 1000 + 300)))
                .await;
            l.on_tick().await;
            let expected = if s < 151 { 1 } else { 0 };
            assert_eq!(desired().min(1), expected, "second {s}");
        }
        let k = book
            .get(&FunctionKey::new("d", "f"))
            .and_then(|r| r.keep_alive)
            .expect("keep-alive");
        assert_eq!(k.histogram.total(), 6, "the gaps between the calls");
    }

    /// One function whose bounds the test sets, at two environments.
    struct Bounded(std::sync::Mutex<(u32, u32)>);

    impl ScaleSource for Bounded {
        type Handle = ();
        fn targets(&self) -> Vec<ScaleTarget<()>> {
            let (min_scale, max_scale) = *self.0.lock().expect("bounds");
            vec![target(min_scale, max_scale, KeepAlive::Fixed, 2)]
        }
    }

    #[derive(Default)]
    struct Record(std::sync::Mutex<Vec<ScaleChange>>);

    impl ScaleSink<()> for Record {
        type Error = String;
        async fn apply(&self, _: &(), change: &ScaleChange) -> Result<(), String> {
            self.0.lock().expect("changes").push(change.clone());
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_scale_down_waits_for_reports_that_show_the_busy_environments() {
        let mut l = AutoscalerLoop::new(
            Bounded(std::sync::Mutex::new((2, 2))),
            Record::default(),
            Arc::new(ScaleBook::default()),
            Arc::new(()),
        );
        let report = |sequence: u64, busy: &[&str]| {
            report_of(
                sequence,
                false,
                crate::FunctionLoad {
                    in_flight: busy.len() as u32,
                    ready_environments: 2,
                    busy_environments: busy.iter().map(|e| (e.to_string(), 1)).collect(),
                    ..Default::default()
                },
            )
        };
        l.on_message(report(1, &[])).await;
        l.on_tick().await;
        assert!(
            l.sink().0.lock().expect("changes").is_empty(),
            "at its bounds"
        );

        // The bounds drop to one while an invocation has just started on
        // env-b, after the gateway's last report: the scale-down waits.
        *l.source.0.lock().expect("bounds") = (1, 1);
        l.on_tick().await;
        assert_eq!(l.desired(&FunctionKey::new("d", "f")), Some(1));
        assert!(
            l.sink().0.lock().expect("changes").is_empty(),
            "no report since the decision: not applied yet"
        );
        tokio::time::advance(Duration::from_millis(500)).await;
        l.on_tick().await;
        assert!(l.sink().0.lock().expect("changes").is_empty());

        // The next report shows env-b busy: the change marks it.
        tokio::time::advance(Duration::from_millis(500)).await;
        l.on_message(report(2, &["env-b"])).await;
        l.on_tick().await;
        let changes = l.sink().0.lock().expect("changes").clone();
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!((changes[0].from, changes[0].to), (Some(2), 1));
        assert_eq!(
            changes[0].busy_environments,
            BTreeMap::from([("env-b".to_string(), 1)])
        );
        // Applied once: the next ticks keep it.
        tokio::time::advance(Duration::from_secs(1)).await;
        l.on_message(report(3, &["env-b"])).await;
        l.on_tick().await;
        assert_eq!(l.sink().0.lock().expect("changes").len(), 1);
    }

    struct KeptUsage;

    impl ScaleSource for KeptUsage {
        type Handle = ();
        fn targets(&self) -> Vec<ScaleTarget<()>> {
            OneFunction(None, KeepAlive::Fixed).targets()
        }
        fn usage(&self, _: &()) -> Option<FunctionUsage> {
            Some(FunctionUsage {
                invocations: 1_000,
                billed_duration_ms: 50_000,
                ..Default::default()
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn usage_goes_on_from_the_kept_total_with_the_gateways_growth() {
        let book = Arc::new(ScaleBook::default());
        let mut l = AutoscalerLoop::new(KeptUsage, Accept, book.clone(), Arc::new(()));
        let key = FunctionKey::new("d", "f");
        let report = |sequence: u64, invocations: u64| {
            report_of(
                sequence,
                false,
                crate::FunctionLoad {
                    ready_environments: 1,
                    usage: Some(FunctionUsage {
                        invocations,
                        billed_duration_ms: invocations * 20,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
        };
        // The gateway was running before: its first counters are a baseline.
        l.on_message(report(1, 40)).await;
        assert_eq!(
            book.usage(&key),
            None,
            "not complete before the kept total is in"
        );
        l.on_tick().await;
        for (s, n) in [(2, 45), (3, 52)] {
            tokio::time::advance(Duration::from_secs(1)).await;
            l.on_message(report(s, n)).await;
        }
        let u = book.usage(&key).expect("usage");
        assert_eq!((u.invocations, u.billed_duration_ms), (1_012, 50_240));
    }

    #[test]
    fn change_names_its_event() {
        let change = |from, to| ScaleChange {
            key: FunctionKey::new("d", "f"),
            from,
            to,
            reason: DecisionReason::Stable,
            busy_environments: BTreeMap::new(),
            observed_concurrency: 1.0,
        };
        assert_eq!(change(Some(0), 1).event_reason(), "ScaledUp");
        assert_eq!(change(Some(3), 1).event_reason(), "ScaledDown");
        assert_eq!(change(Some(3), 0).event_reason(), "ScaledToZero");
        assert_eq!(change(None, 2).event_reason(), "ScaledUp");
        assert_eq!(
            change(None, 2).note(),
            "Desired environments ? -> 2: stable (concurrency 1.00)"
        );
    }
}
