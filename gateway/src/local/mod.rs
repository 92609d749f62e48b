//! Local mode: functions from a directory of manifests, environments as
//! local shim processes, scaled by the shared autoscaler loop.
//!
//! The loop is the controller's ([`porchlight_core::scaling`]), fed the same
//! way: by this gateway's own concurrency reports (every second, and at once
//! on demand at zero), followed in process. Its sink hands each new desired
//! count to the environment manager, which plays the part a Deployment plays
//! on a cluster: it starts or drains environments to match, and replaces
//! those that crash (with backoff). Each environment has a task that owns its
//! process: it waits for `/ready`, adds the environment to the registry, and
//! on stop drains it, then SIGTERMs its process group.

pub mod manifests;
pub mod process;
pub mod strict;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use porchlight_core::GatewayReport;
use porchlight_core::autoscaler::AutoscalerConfig;
use porchlight_core::scaling::{
    AutoscalerLoop, GatewayMessage, LoopEvent, ScaleBook, ScaleChange, ScaleObserver, ScaleSink,
    ScaleSource, ScaleTarget, Workload,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::registry::{EnvironmentInfo, FunctionEntry};
use crate::upstream::Readiness;
use manifests::LoadedFunction;
use process::{EnvironmentProcess, Launcher, free_port};

/// Settings of local mode.
#[derive(Clone, Debug)]
pub struct LocalConfig {
    /// How environments are started.
    pub launcher: Launcher,
    /// Longest init before an environment is killed and replaced.
    pub init_timeout: Duration,
    /// SIGTERM to SIGKILL.
    pub stop_grace: Duration,
    /// No START/END/REPORT lines from the environments.
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EnvState {
    Starting,
    Ready,
    Stopping,
}

struct LocalEnv {
    state: EnvState,
    stop: CancellationToken,
}

/// One function's environments, kept at the count the autoscaler wants.
struct FunctionEnvironments {
    function: Arc<LoadedFunction>,
    entry: Arc<FunctionEntry>,
    envs: HashMap<Arc<str>, LocalEnv>,
    desired: u32,
    next_id: u64,
    failures: u32,
    retry_at: Option<Instant>,
}

#[derive(Debug)]
enum EnvEvent {
    Ready {
        function: String,
        id: Arc<str>,
    },
    Exited {
        function: String,
        id: Arc<str>,
        expected: bool,
    },
}

/// A new desired count from the autoscaler loop.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// The function's name.
    pub function: String,
    /// Environments it should have.
    pub count: u32,
}

/// The local functions as the autoscaler loop's source: every function is
/// always there, its ready environments read from the registry.
pub struct LocalFunctions {
    functions: Vec<(AutoscalerConfig, Arc<FunctionEntry>)>,
}

impl ScaleSource for LocalFunctions {
    type Handle = ();

    fn targets(&self) -> Vec<ScaleTarget<()>> {
        self.functions
            .iter()
            .map(|(config, entry)| ScaleTarget {
                key: entry.key().clone(),
                config: config.clone(),
                ready: entry.load().ready,
                // Local environments start at zero when the gateway starts.
                workload: Workload::Exists {
                    desired: Some(0),
                    current: Some(0),
                    last_scale_time: None,
                },
                handle: (),
            })
            .collect()
    }
}

/// The loop's sink in local mode: the environment manager.
pub struct LocalScaleSink {
    desired: mpsc::Sender<Desired>,
}

impl ScaleSink<()> for LocalScaleSink {
    type Error = &'static str;

    async fn apply(&self, _: &(), change: &ScaleChange) -> Result<(), Self::Error> {
        self.desired
            .send(Desired {
                function: change.key.name.clone(),
                count: change.to,
            })
            .await
            .map_err(|_| "local mode is stopping")
    }
}

/// Counts the loop's decisions in the gateway's metrics.
pub struct LocalObserver(pub Metrics);

/// Local mode's source and sink for the shared autoscaler loop, and where
/// the sink's desired counts arrive.
pub fn autoscaler_parts(
    functions: Vec<(AutoscalerConfig, Arc<FunctionEntry>)>,
) -> (LocalFunctions, LocalScaleSink, mpsc::Receiver<Desired>) {
    let (desired, rx) = mpsc::channel(1024);
    (LocalFunctions { functions }, LocalScaleSink { desired }, rx)
}

impl ScaleObserver for LocalObserver {
    fn observe(&self, event: LoopEvent<'_>) {
        if let LoopEvent::Applied(change) = event {
            self.0
                .scaling_decisions
                .with_label_values(&[&change.key.name, change.reason.as_str()])
                .inc();
        }
    }
}

/// Follows this gateway's reports in process, as the controller's pollers
/// follow a gateway's long-poll: every published report goes to the loop.
async fn forward_reports(
    mut reports: watch::Receiver<Arc<GatewayReport>>,
    loop_tx: mpsc::Sender<GatewayMessage>,
) {
    while reports.changed().await.is_ok() {
        let report = (**reports.borrow_and_update()).clone();
        if loop_tx.send(GatewayMessage::Report(report)).await.is_err() {
            return;
        }
    }
}

/// The local environment source.
pub struct LocalSource {
    config: LocalConfig,
    functions: Vec<LoadedFunction>,
}

impl LocalSource {
    /// A source for already loaded functions.
    pub fn new(config: LocalConfig, functions: Vec<LoadedFunction>) -> Self {
        LocalSource { config, functions }
    }

    /// Registers the functions, then scales them until `shutdown`; then
    /// drains and stops every environment.
    pub async fn run(self, gateway: Arc<Gateway>, shutdown: CancellationToken) {
        let mut managed: HashMap<String, FunctionEnvironments> = HashMap::new();
        let mut targets = Vec::new();
        for f in self.functions {
            let entry =
                gateway
                    .registry()
                    .upsert(f.key.clone(), f.spec.clone(), f.settings.clone());
            targets.push((AutoscalerConfig::from_settings(&f.settings), entry.clone()));
            managed.insert(
                f.key.name.clone(),
                FunctionEnvironments {
                    function: Arc::new(f),
                    entry,
                    envs: HashMap::new(),
                    desired: 0,
                    next_id: 0,
                    failures: 0,
                    retry_at: None,
                },
            );
        }
        // The shared autoscaler loop, fed by this gateway's own reports.
        let (source, sink, mut desired_rx) = autoscaler_parts(targets);
        let (reports_tx, reports_rx) = mpsc::channel::<GatewayMessage>(64);
        let autoscaler = AutoscalerLoop::new(
            source,
            sink,
            Arc::new(ScaleBook::default()),
            Arc::new(LocalObserver(gateway.metrics().clone())),
        );
        let scaling = CancellationToken::new();
        let autoscaler = tokio::spawn(autoscaler.run(reports_rx, scaling.clone()));
        let forwarder = tokio::spawn(forward_reports(gateway.subscribe_reports(), reports_tx));

        gateway.set_ready(true);
        let tracker = TaskTracker::new();
        let (events_tx, mut events) = mpsc::channel::<EnvEvent>(1024);
        let ctx = Ctx {
            gateway: gateway.clone(),
            config: self.config,
            tracker: tracker.clone(),
            events: events_tx,
        };
        loop {
            let next_retry = managed.values().filter_map(|m| m.retry_at).min();
            let retry = async {
                match next_retry {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(d) = desired_rx.recv() => {
                    if let Some(m) = managed.get_mut(&d.function) {
                        m.desired = d.count;
                        m.entry.set_desired(d.count);
                        m.reconcile(&ctx, Instant::now());
                    }
                }
                _ = retry => {
                    let now = Instant::now();
                    for m in managed.values_mut().filter(|m| m.retry_at.is_some_and(|t| t <= now)) {
                        m.reconcile(&ctx, now);
                    }
                }
                Some(ev) = events.recv() => {
                    let now = Instant::now();
                    match ev {
                        EnvEvent::Ready { function, id } => {
                            if let Some(m) = managed.get_mut(&function) {
                                m.failures = 0;
                                if let Some(e) = m.envs.get_mut(&id)
                                    && e.state == EnvState::Starting
                                {
                                    e.state = EnvState::Ready;
                                }
                                m.publish_counts();
                            }
                        }
                        EnvEvent::Exited { function, id, expected } => {
                            if let Some(m) = managed.get_mut(&function) {
                                m.envs.remove(&id);
                                if !expected {
                                    m.failures = m.failures.saturating_add(1);
                                    let backoff = crash_backoff(m.failures);
                                    m.retry_at = Some(now + backoff);
                                    tracing::warn!(function = %function, environment = %id,
                                        retry_in_ms = backoff.as_millis() as u64,
                                        "environment exited unexpectedly; it will be replaced");
                                }
                                m.reconcile(&ctx, now);
                            }
                        }
                    }
                }
            }
        }
        scaling.cancel();
        forwarder.abort();
        let _ = autoscaler.await;
        // Environment tasks report into a closed channel from here on.
        drop(events);
        tracing::info!("stopping every environment");
        for m in managed.values() {
            for e in m.envs.values() {
                e.stop.cancel();
            }
        }
        tracker.close();
        let bound = ctx.config.stop_grace + Duration::from_secs(35);
        if tokio::time::timeout(bound, tracker.wait()).await.is_err() {
            tracing::warn!(
                "environments did not stop in time; they are killed with their process groups"
            );
        }
    }
}

/// The wait before replacing an environment after its `failures`-th crash in a row.
fn crash_backoff(failures: u32) -> Duration {
    porchlight_core::backoff::exponential(
        Duration::from_millis(200),
        failures,
        Duration::from_secs(10),
    )
}

struct Ctx {
    gateway: Arc<Gateway>,
    config: LocalConfig,
    tracker: TaskTracker,
    events: mpsc::Sender<EnvEvent>,
}

/// What to do to bring `active` environments (starting or ready) to
/// `desired` (pure): how many to start, or which to drain. Starting ones
/// are drained first, then ready ones from the least recently used.
fn plan(
    desired: u32,
    starting: &[Arc<str>],
    ready_most_recent_first: &[(Arc<str>, u32)],
) -> (u32, Vec<Arc<str>>) {
    let active = (starting.len() + ready_most_recent_first.len()) as u32;
    if desired >= active {
        return (desired - active, Vec::new());
    }
    // Idle before busy, then least recently used first: a scale-down never
    // drains an environment running an invocation while an idle one is left.
    let mut ready: Vec<(usize, &(Arc<str>, u32))> =
        ready_most_recent_first.iter().rev().enumerate().collect();
    ready.sort_by_key(|(lru_rank, (_, in_flight))| (*in_flight > 0, *in_flight, *lru_rank));
    let victims = starting
        .iter()
        .chain(ready.into_iter().map(|(_, (id, _))| id))
        .take((active - desired) as usize)
        .cloned()
        .collect();
    (0, victims)
}

impl FunctionEnvironments {
    fn publish_counts(&self) {
        let starting = self
            .envs
            .values()
            .filter(|e| e.state == EnvState::Starting)
            .count();
        self.entry.set_starting(starting as u32);
    }

    /// Starts or drains environments until the count is the desired one.
    fn reconcile(&mut self, ctx: &Ctx, now: Instant) {
        let ids_in = |state: EnvState| -> Vec<Arc<str>> {
            self.envs
                .iter()
                .filter(|(_, e)| e.state == state)
                .map(|(id, _)| id.clone())
                .collect()
        };
        let starting = ids_in(EnvState::Starting);
        let ready: Vec<(Arc<str>, u32)> = self
            .entry
            .environments_by_recency()
            .into_iter()
            .filter(|(id, _)| {
                self.envs
                    .get(id)
                    .is_some_and(|e| e.state == EnvState::Ready)
            })
            .collect();
        // Ready environments the registry does not list yet still count.
        let mut ready_all = ready;
        for id in ids_in(EnvState::Ready) {
            if !ready_all.iter().any(|(known, _)| *known == id) {
                ready_all.insert(0, (id, 0));
            }
        }
        let (start, victims) = plan(self.desired, &starting, &ready_all);
        if start > 0 {
            if self.retry_at.is_some_and(|t| now < t) {
                return;
            }
            self.retry_at = None;
            for _ in 0..start {
                self.start_one(ctx);
            }
        }
        for id in victims {
            if let Some(e) = self.envs.get_mut(&id) {
                tracing::debug!(function = %self.function.key.name, environment = %id, "draining environment");
                e.state = EnvState::Stopping;
                // Stop routing at once; the environment task finishes the drain.
                drop(self.entry.drain_environment(&id));
                e.stop.cancel();
            }
        }
        self.publish_counts();
    }

    fn start_one(&mut self, ctx: &Ctx) {
        self.next_id += 1;
        let id: Arc<str> = format!("{}-{}", self.function.key.name, self.next_id).into();
        let stop = CancellationToken::new();
        self.envs.insert(
            id.clone(),
            LocalEnv {
                state: EnvState::Starting,
                stop: stop.clone(),
            },
        );
        let task = run_environment(
            ctx.gateway.clone(),
            ctx.config.clone(),
            self.function.clone(),
            self.entry.clone(),
            id,
            stop,
            ctx.events.clone(),
        );
        ctx.tracker.spawn(task);
    }
}

async fn run_environment(
    gateway: Arc<Gateway>,
    config: LocalConfig,
    function: Arc<LoadedFunction>,
    entry: Arc<FunctionEntry>,
    id: Arc<str>,
    stop: CancellationToken,
    events: mpsc::Sender<EnvEvent>,
) {
    let name = function.key.name.clone();
    let exited = |expected: bool| EnvEvent::Exited {
        function: name.clone(),
        id: id.clone(),
        expected,
    };
    let spawned = free_port().and_then(|port| {
        EnvironmentProcess::spawn(&config.launcher, config.quiet, &function, &id, port)
            .map(|p| (port, p))
    });
    let (port, mut process) = match spawned {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(function = %name, environment = %id, error = %e, "cannot start environment");
            let _ = events.send(exited(false)).await;
            return;
        }
    };
    let base_url: Arc<str> = format!("http://127.0.0.1:{port}").into();
    let started = Instant::now();
    // Wait for init (true: done, false: failed), the process's exit, or a stop.
    let outcome = {
        let wait_ready = async {
            loop {
                // Poll tightly at first: the cold start is on the critical path.
                let delay = if started.elapsed() < Duration::from_secs(2) {
                    Duration::from_millis(2)
                } else {
                    Duration::from_millis(50)
                };
                match gateway.readiness(&base_url).await {
                    Readiness::Ready => return Some(true),
                    Readiness::InitFailed => return Some(false),
                    Readiness::ShuttingDown => return None,
                    Readiness::NotYet => {}
                }
                if started.elapsed() > config.init_timeout {
                    return None;
                }
                tokio::time::sleep(delay).await;
            }
        };
        tokio::select! {
            init = wait_ready => init.ok_or(false),
            status = process.wait() => {
                tracing::warn!(function = %name, environment = %id, status = ?status.ok(), "environment exited during init");
                let _ = events.send(exited(false)).await;
                return;
            }
            _ = stop.cancelled() => Err(true),
        }
    };
    let init_done = match outcome {
        Ok(init_done) => init_done,
        Err(expected) => {
            if !expected {
                tracing::warn!(function = %name, environment = %id, "environment did not finish init in time");
            }
            process.stop(config.stop_grace).await;
            let _ = events.send(exited(expected)).await;
            return;
        }
    };
    if init_done {
        tracing::info!(
            function = %name,
            environment = %id,
            init_ms = started.elapsed().as_millis() as u64,
            "environment ready"
        );
    } else {
        // Routed all the same, as Lambda does: an invocation gets the init
        // error and the next one retries the init.
        tracing::warn!(
            function = %name,
            environment = %id,
            "environment's init failed; invocations get its error and retry the init"
        );
    }
    entry.add_environment(EnvironmentInfo {
        id: id.clone(),
        base_url,
        capacity: function.spec.concurrency.max(1),
    });
    let _ = events
        .send(EnvEvent::Ready {
            function: name.clone(),
            id: id.clone(),
        })
        .await;
    let lost = entry.environment_lost(&id);
    tokio::select! {
        status = process.wait() => {
            entry.remove_environment(&id);
            tracing::warn!(function = %name, environment = %id, status = ?status.ok(), "environment exited");
            let _ = events.send(exited(false)).await;
        }
        _ = lost => {
            // Unreachable and not answering its probes: replace it.
            entry.remove_environment(&id);
            process.stop(config.stop_grace).await;
            tracing::warn!(function = %name, environment = %id, "environment stopped answering; it is replaced");
            let _ = events.send(exited(false)).await;
        }
        _ = stop.cancelled() => {
            let drained = entry.drain_environment(&id);
            let bound = Duration::from_secs(u64::from(function.spec.timeout_seconds)) + Duration::from_secs(5);
            if tokio::time::timeout(bound, drained).await.is_err() {
                tracing::warn!(function = %name, environment = %id, "drain did not finish in time; stopping anyway");
            }
            entry.remove_environment(&id);
            process.stop(config.stop_grace).await;
            tracing::info!(function = %name, environment = %id, "environment stopped");
            let _ = events.send(exited(true)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<Arc<str>> {
        names.iter().map(|n| Arc::from(*n)).collect()
    }

    fn idle(names: &[&str]) -> Vec<(Arc<str>, u32)> {
        names.iter().map(|n| (Arc::from(*n), 0)).collect()
    }

    #[test]
    fn plan_starts_what_is_missing() {
        assert_eq!(plan(3, &ids(&["s1"]), &idle(&["r1"])), (1, vec![]));
        assert_eq!(plan(2, &ids(&["s1"]), &idle(&["r1"])), (0, vec![]));
    }

    #[test]
    fn plan_drains_starting_then_least_recently_used() {
        let (start, victims) = plan(1, &ids(&["s1"]), &idle(&["new", "mid", "old"]));
        assert_eq!(start, 0);
        assert_eq!(victims, ids(&["s1", "old", "mid"]));
        let (_, victims) = plan(0, &[], &idle(&["new", "old"]));
        assert_eq!(victims, ids(&["old", "new"]));
    }

    #[test]
    fn plan_drains_idle_environments_before_busy_ones() {
        // "old" has run one long invocation since before the others were used.
        let ready: Vec<(Arc<str>, u32)> =
            vec![("new".into(), 0), ("mid".into(), 2), ("old".into(), 1)];
        assert_eq!(plan(2, &[], &ready).1, ids(&["new"]));
        assert_eq!(plan(1, &[], &ready).1, ids(&["new", "old"]));
        assert_eq!(plan(0, &[], &ready).1, ids(&["new", "old", "mid"]));
    }

    #[test]
    fn crashes_back_off_up_to_ten_seconds() {
        assert_eq!(crash_backoff(1), Duration::from_millis(200));
        assert_eq!(crash_backoff(2), Duration::from_millis(400));
        assert_eq!(crash_backoff(20), Duration::from_secs(10));
    }
}
