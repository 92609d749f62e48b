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
//!
//! Unless told not to, it watches its folder (`watcher.rs`): a new, changed or
//! deleted manifest, or a changed file under a function's `code.path`, is
//! read again (`reload.rs`) and applied at once. A new function is
//! registered, a deleted one unregistered (callers get
//! `ResourceNotFoundException`) and a changed one redefined in place; the
//! environments of a changed or deleted function drain (their invocations
//! in flight finish with the code they started with) and a changed one gets
//! new environments, as many as the autoscaler wants.

pub mod manifests;
pub mod process;
pub mod reload;
pub mod strict;
pub mod watcher;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
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
use reload::{Catalog, Reload};
use watcher::{Changes, FolderWatch};

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

/// The functions the autoscaler loop scales in local mode, with their
/// settings: shared between the loop's source and the environment manager,
/// which changes them on a reload.
#[derive(Clone, Default)]
pub struct LocalTargets(Arc<RwLock<Vec<LocalTarget>>>);

/// One function the loop scales, with its autoscaler settings.
pub type LocalTarget = (AutoscalerConfig, Arc<FunctionEntry>);

impl LocalTargets {
    /// Adds `entry`, or updates its settings.
    fn set(&self, config: AutoscalerConfig, entry: &Arc<FunctionEntry>) {
        let mut targets = self.0.write().unwrap_or_else(|p| p.into_inner());
        match targets.iter_mut().find(|(_, e)| Arc::ptr_eq(e, entry)) {
            Some(target) => target.0 = config,
            None => targets.push((config, entry.clone())),
        }
    }

    /// Forgets `entry`: the loop stops scaling it.
    fn remove(&self, entry: &Arc<FunctionEntry>) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(_, e)| !Arc::ptr_eq(e, entry));
    }
}

/// The local functions as the autoscaler loop's source: those local mode
/// has now, their ready environments read from the registry.
pub struct LocalFunctions {
    functions: LocalTargets,
}

impl LocalFunctions {
    /// The shared list of functions the loop scales.
    pub fn targets_handle(&self) -> LocalTargets {
        self.functions.clone()
    }
}

impl ScaleSource for LocalFunctions {
    type Handle = ();

    fn targets(&self) -> Vec<ScaleTarget<()>> {
        self.functions
            .0
            .read()
            .unwrap_or_else(|p| p.into_inner())
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
    let functions = LocalTargets(Arc::new(RwLock::new(functions)));
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

/// Where local mode's functions come from, for reading them again.
#[derive(Clone, Debug)]
pub struct FolderSettings {
    /// The manifest folder.
    pub dir: PathBuf,
    /// Where inline code is written.
    pub code_dir: PathBuf,
    /// `--secrets-dir`.
    pub secrets_dir: Option<PathBuf>,
}

/// The local environment source.
pub struct LocalSource {
    config: LocalConfig,
    functions: Vec<LoadedFunction>,
    folder: Option<FolderSettings>,
}

impl LocalSource {
    /// A source for already loaded functions.
    pub fn new(config: LocalConfig, functions: Vec<LoadedFunction>) -> Self {
        LocalSource {
            config,
            functions,
            folder: None,
        }
    }

    /// Registers the functions (without environments yet), so that they
    /// are served from the first request on; [`LocalSource::run`] finds
    /// them registered.
    pub fn register(&self, gateway: &Gateway) {
        for f in &self.functions {
            gateway
                .registry()
                .upsert(f.key.clone(), f.spec.clone(), f.settings.clone());
        }
    }

    /// Watches the folder the functions came from and applies its changes.
    pub fn watching(mut self, folder: FolderSettings) -> Self {
        self.folder = Some(folder);
        self
    }

    /// Registers the functions, then scales them until `shutdown`; then
    /// drains and stops every environment.
    pub async fn run(self, gateway: Arc<Gateway>, shutdown: CancellationToken) {
        let mut managed: HashMap<String, FunctionEnvironments> = HashMap::new();
        let mut targets = Vec::new();
        for f in &self.functions {
            let entry =
                gateway
                    .registry()
                    .upsert(f.key.clone(), f.spec.clone(), f.settings.clone());
            targets.push((AutoscalerConfig::from_settings(&f.settings), entry.clone()));
            managed.insert(
                f.key.name.clone(),
                FunctionEnvironments::new(Arc::new(f.clone()), entry, 0),
            );
        }
        let mut watched = self.folder.as_ref().and_then(|folder| {
            let catalog = Catalog::new(
                &folder.dir,
                &folder.code_dir,
                folder.secrets_dir.as_deref(),
                &self.functions,
            );
            match FolderWatch::start(&folder.dir) {
                Ok((watch, changes)) => Some((catalog, watch, changes)),
                Err(e) => {
                    tracing::warn!(folder = %folder.dir.display(), error = %e,
                        "cannot watch the folder; changes need a restart");
                    None
                }
            }
        });
        if let Some((_, watch, _)) = &mut watched {
            watch.set_code_folders(code_folders(&managed));
        }
        // The shared autoscaler loop, fed by this gateway's own reports.
        let (source, sink, mut desired_rx) = autoscaler_parts(targets);
        let targets = source.targets_handle();
        // Environment numbers of functions that were removed, so that one
        // defined again never reuses the id of an environment still stopping.
        let mut retired_ids: HashMap<String, u64> = HashMap::new();
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
            let changed = async {
                match watched.as_mut() {
                    Some((_, _, changes)) => changes.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(changes) = changed => {
                    if let Some((catalog, watch, _)) = watched.as_mut() {
                        let reload = read_again(catalog, watch.manifests(), &changes);
                        let mut folder = Folder {
                            managed: &mut managed,
                            targets: &targets,
                            retired_ids: &mut retired_ids,
                        };
                        folder.apply(reload, &ctx, Instant::now());
                        watch.set_code_folders(code_folders(&managed));
                    }
                }
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

/// The code folders (`code.path`) of the functions, for the watch.
fn code_folders(managed: &HashMap<String, FunctionEnvironments>) -> Vec<PathBuf> {
    managed
        .values()
        .filter(|m| m.function.spec.code.path.is_some())
        .map(|m| m.function.task_root.clone())
        .collect()
}

/// Reads the folder again after `changes`. A function's code changed when
/// a changed path lies under its `code.path`. A manifest that does not
/// read is reported when it is among the changes, not again at every
/// change of another file.
fn read_again(catalog: &mut Catalog, manifests: &Path, changes: &Changes) -> Reload {
    let under = |root: &Path| changes.missed || changes.paths.iter().any(|p| p.starts_with(root));
    let mut reload = catalog.rescan(|f| f.spec.code.path.is_some() && under(&f.task_root));
    reload.problems.retain(|problem| {
        let file = Path::new(&problem.file).file_name();
        changes.missed
            || changes
                .paths
                .iter()
                .any(|p| p.parent() == Some(manifests) && p.file_name() == file)
    });
    reload
}

/// `N environment(s) draining`, or nothing when none is.
fn draining_note(draining: usize) -> String {
    match draining {
        0 => String::new(),
        1 => " (1 environment draining)".to_string(),
        n => format!(" ({n} environments draining)"),
    }
}

/// Local mode's functions as the environment manager holds them, for
/// applying a reload.
struct Folder<'a> {
    managed: &'a mut HashMap<String, FunctionEnvironments>,
    targets: &'a LocalTargets,
    retired_ids: &'a mut HashMap<String, u64>,
}

impl Folder<'_> {
    /// Applies what a reading of the folder changed, and logs one line per
    /// manifest file it touched.
    fn apply(&mut self, reload: Reload, ctx: &Ctx, now: Instant) {
        for problem in &reload.problems {
            tracing::error!(
                "cannot reload {problem}; the functions it defined keep their last good version"
            );
        }
        let mut by_file: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut note = |f: &LoadedFunction, what: String| {
            let file = f.file.file_name().map_or_else(
                || f.file.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            by_file.entry(file).or_default().push(what);
        };
        for f in &reload.removed {
            let draining = self.remove(&f.key.name, ctx);
            note(
                f,
                format!("{} removed{}", f.key.name, draining_note(draining)),
            );
        }
        for f in reload.changed {
            let name = f.key.name.clone();
            let f = Arc::new(f);
            let same_key = self
                .managed
                .get(&name)
                .is_some_and(|m| m.function.key == f.key);
            let draining = if same_key {
                self.change(f.clone(), ctx, now)
            } else {
                let draining = self.remove(&name, ctx);
                self.add(f.clone(), ctx);
                draining
            };
            note(&f, format!("{name} changed{}", draining_note(draining)));
        }
        for f in reload.added {
            let f = Arc::new(f);
            self.add(f.clone(), ctx);
            note(&f, format!("{} added", f.key.name));
        }
        for (file, what) in by_file {
            tracing::info!("reloaded {file}: {}", what.join(", "));
        }
    }

    /// Defines (or redefines) a function in the registry and the
    /// autoscaler's targets.
    fn register(&self, function: &LoadedFunction, ctx: &Ctx) -> Arc<FunctionEntry> {
        let entry = ctx.gateway.registry().upsert(
            function.key.clone(),
            function.spec.clone(),
            function.settings.clone(),
        );
        self.targets
            .set(AutoscalerConfig::from_settings(&function.settings), &entry);
        entry
    }

    fn add(&mut self, function: Arc<LoadedFunction>, ctx: &Ctx) {
        let entry = self.register(&function, ctx);
        let name = function.key.name.clone();
        let next_id = self.retired_ids.remove(&name).unwrap_or(0);
        self.managed
            .insert(name, FunctionEnvironments::new(function, entry, next_id));
    }

    /// Redefines a function in place and replaces its environments; returns
    /// how many drain.
    fn change(&mut self, function: Arc<LoadedFunction>, ctx: &Ctx, now: Instant) -> usize {
        if !self.managed.contains_key(&function.key.name) {
            return 0;
        }
        self.register(&function, ctx);
        let Some(m) = self.managed.get_mut(&function.key.name) else {
            return 0;
        };
        m.function = function;
        m.failures = 0;
        m.retry_at = None;
        let draining = m.stop_all();
        m.reconcile(ctx, now);
        draining
    }

    /// Unregisters a function (callers get `ResourceNotFoundException`)
    /// and drains its environments; returns how many drain.
    fn remove(&mut self, name: &str, ctx: &Ctx) -> usize {
        let Some(mut m) = self.managed.remove(name) else {
            return 0;
        };
        ctx.gateway.registry().remove(m.entry.name());
        self.targets.remove(&m.entry);
        m.entry.set_desired(0);
        let draining = m.stop_all();
        m.entry.set_starting(0);
        // Waiting invocations are answered now rather than at their deadline.
        m.entry.close_waiters();
        self.retired_ids.insert(name.to_string(), m.next_id);
        draining
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
    fn new(function: Arc<LoadedFunction>, entry: Arc<FunctionEntry>, next_id: u64) -> Self {
        FunctionEnvironments {
            function,
            entry,
            envs: HashMap::new(),
            desired: 0,
            next_id,
            failures: 0,
            retry_at: None,
        }
    }

    /// Drains every environment not already stopping (they finish their
    /// invocations in flight, then stop); returns how many.
    fn stop_all(&mut self) -> usize {
        let mut draining = 0;
        for (id, e) in self.envs.iter_mut() {
            if e.state == EnvState::Stopping {
                continue;
            }
            e.state = EnvState::Stopping;
            drop(self.entry.drain_environment(id));
            e.stop.cancel();
            draining += 1;
        }
        self.publish_counts();
        draining
    }

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
    if stop.is_cancelled() {
        // Replaced (a reload) or scaled away while its init ran.
        process.stop(config.stop_grace).await;
        let _ = events.send(exited(true)).await;
        return;
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
