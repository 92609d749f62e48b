//! Local mode: functions from a directory of manifests, environments as
//! local shim processes, scaled by the shared autoscaler.
//!
//! One task owns the scaler state of every function: it samples load every
//! 100 ms, decides every second and at once on a poke (demand at zero), and
//! starts or drains environments to match. Each environment has a task that
//! owns its process: it waits for `/ready`, adds the environment to the
//! registry, and on stop drains it, then SIGTERMs its process group.

pub mod manifests;
pub mod process;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use porchlight_core::autoscaler::{Autoscaler, AutoscalerConfig};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::gateway::Gateway;
use crate::registry::{EnvironmentInfo, FunctionEntry};
use crate::report::SAMPLE_EVERY;
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

struct FunctionScaler {
    function: Arc<LoadedFunction>,
    entry: Arc<FunctionEntry>,
    autoscaler: Autoscaler,
    envs: HashMap<Arc<str>, LocalEnv>,
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
        let now = Instant::now().into_std();
        let mut scalers: HashMap<String, FunctionScaler> = HashMap::new();
        for f in self.functions {
            let entry =
                gateway
                    .registry()
                    .upsert(f.key.clone(), f.spec.clone(), f.settings.clone());
            let autoscaler = Autoscaler::new(AutoscalerConfig::from_settings(&f.settings), now, 0);
            scalers.insert(
                f.key.name.clone(),
                FunctionScaler {
                    function: Arc::new(f),
                    entry,
                    autoscaler,
                    envs: HashMap::new(),
                    next_id: 0,
                    failures: 0,
                    retry_at: None,
                },
            );
        }
        gateway.set_ready(true);
        let tracker = TaskTracker::new();
        let (events_tx, mut events) = mpsc::channel::<EnvEvent>(1024);
        let ctx = Ctx {
            gateway: gateway.clone(),
            config: self.config,
            tracker: tracker.clone(),
            events: events_tx,
        };
        let mut pokes = gateway.registry().demand().subscribe();
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut samples = 0u32;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    samples += 1;
                    let decide = samples.is_multiple_of(10);
                    let now = Instant::now();
                    for s in scalers.values_mut() {
                        let load = s.entry.load();
                        let poke = s.autoscaler.record(now.into_std(), f64::from(load.concurrency()));
                        if decide || poke || s.retry_at.is_some_and(|t| now >= t) {
                            s.scale(&ctx, now);
                        }
                    }
                }
                changed = pokes.changed() => {
                    if changed.is_err() { break; }
                    let now = Instant::now();
                    for name in gateway.registry().demand().take_poked() {
                        if let Some(s) = scalers.get_mut(&name) {
                            let load = s.entry.load();
                            s.autoscaler.record(now.into_std(), f64::from(load.concurrency().max(1)));
                            s.scale(&ctx, now);
                        }
                    }
                }
                Some(ev) = events.recv() => {
                    let now = Instant::now();
                    match ev {
                        EnvEvent::Ready { function, id } => {
                            if let Some(s) = scalers.get_mut(&function) {
                                s.failures = 0;
                                if let Some(e) = s.envs.get_mut(&id)
                                    && e.state == EnvState::Starting
                                {
                                    e.state = EnvState::Ready;
                                }
                                s.publish_counts();
                            }
                        }
                        EnvEvent::Exited { function, id, expected } => {
                            if let Some(s) = scalers.get_mut(&function) {
                                s.envs.remove(&id);
                                if !expected {
                                    s.failures = s.failures.saturating_add(1);
                                    let backoff = Duration::from_millis(100)
                                        .saturating_mul(1 << s.failures.min(7))
                                        .min(Duration::from_secs(10));
                                    s.retry_at = Some(now + backoff);
                                    tracing::warn!(function = %function, environment = %id,
                                        retry_in_ms = backoff.as_millis() as u64,
                                        "environment exited unexpectedly; it will be replaced");
                                }
                                s.publish_counts();
                            }
                        }
                    }
                }
            }
        }
        // Environment tasks report into a closed channel from here on.
        drop(events);
        tracing::info!("stopping every environment");
        for s in scalers.values() {
            for e in s.envs.values() {
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

struct Ctx {
    gateway: Arc<Gateway>,
    config: LocalConfig,
    tracker: TaskTracker,
    events: mpsc::Sender<EnvEvent>,
}

impl FunctionScaler {
    fn publish_counts(&self) {
        let starting = self
            .envs
            .values()
            .filter(|e| e.state == EnvState::Starting)
            .count();
        self.entry.set_starting(starting as u32);
    }

    fn scale(&mut self, ctx: &Ctx, now: Instant) {
        let ready = self
            .envs
            .values()
            .filter(|e| e.state == EnvState::Ready)
            .count() as u32;
        let before = self.autoscaler.last_desired();
        let decision = self.autoscaler.decide(now.into_std(), ready);
        let desired = decision.desired;
        let name = self.function.key.name.clone();
        self.entry.set_desired(desired);
        if desired != before {
            tracing::info!(
                function = %name,
                desired,
                ready,
                reason = decision.reason.as_str(),
                panicking = decision.panicking,
                stable_concurrency = decision.stable_concurrency,
                panic_concurrency = decision.panic_concurrency,
                "scaling decision"
            );
            ctx.gateway
                .metrics()
                .scaling_decisions
                .with_label_values(&[&name, decision.reason.as_str()])
                .inc();
        }
        let active: Vec<Arc<str>> = self
            .envs
            .iter()
            .filter(|(_, e)| e.state != EnvState::Stopping)
            .map(|(id, _)| id.clone())
            .collect();
        let active_n = active.len() as u32;
        if desired > active_n {
            if self.retry_at.is_some_and(|t| now < t) {
                return;
            }
            self.retry_at = None;
            for _ in active_n..desired {
                self.start_one(ctx);
            }
        } else if desired < active_n {
            let mut victims: Vec<Arc<str>> = self
                .envs
                .iter()
                .filter(|(_, e)| e.state == EnvState::Starting)
                .map(|(id, _)| id.clone())
                .collect();
            // Least recently used ready environments go first.
            let mut by_recency = self.entry.environments_by_recency();
            by_recency.reverse();
            victims.extend(by_recency.into_iter().map(|(id, _)| id).filter(|id| {
                self.envs
                    .get(id)
                    .is_some_and(|e| e.state == EnvState::Ready)
            }));
            for id in victims.into_iter().take((active_n - desired) as usize) {
                if let Some(e) = self.envs.get_mut(&id) {
                    tracing::debug!(function = %name, environment = %id, "draining environment");
                    e.state = EnvState::Stopping;
                    // Stop routing at once; the environment task finishes the drain.
                    drop(self.entry.drain_environment(&id));
                    e.stop.cancel();
                }
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
        EnvironmentProcess::spawn(&config.launcher, &function, &id, port).map(|p| (port, p))
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
    // Wait for init, the process's exit, or a stop.
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
                    Readiness::Ready | Readiness::InitFailed => return true,
                    Readiness::ShuttingDown => return false,
                    Readiness::NotYet => {}
                }
                if started.elapsed() > config.init_timeout {
                    return false;
                }
                tokio::time::sleep(delay).await;
            }
        };
        tokio::select! {
            ok = wait_ready => if ok { Ok(()) } else { Err(false) },
            status = process.wait() => {
                tracing::warn!(function = %name, environment = %id, status = ?status.ok(), "environment exited during init");
                let _ = events.send(exited(false)).await;
                return;
            }
            _ = stop.cancelled() => Err(true),
        }
    };
    match outcome {
        Ok(()) => {}
        Err(expected) => {
            if !expected {
                tracing::warn!(function = %name, environment = %id, "environment did not finish init in time");
            }
            process.stop(config.stop_grace).await;
            let _ = events.send(exited(expected)).await;
            return;
        }
    }
    tracing::info!(
        function = %name,
        environment = %id,
        init_ms = started.elapsed().as_millis() as u64,
        "environment ready"
    );
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
    tokio::select! {
        status = process.wait() => {
            entry.remove_environment(&id);
            tracing::warn!(function = %name, environment = %id, status = ?status.ok(), "environment exited");
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
