//! Per-function state: the queue of waiting invocations, the environments an
//! invocation can be dispatched to, and the counters the reports are made of.
//!
//! Environment sources (local processes, Kubernetes pods) only call
//! [`FunctionEntry::add_environment`], [`FunctionEntry::drain_environment`] and
//! [`FunctionEntry::remove_environment`]; the data path only calls
//! [`FunctionEntry::acquire`]. Locks are `std` mutexes held for a few
//! instructions, never across `.await`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use bytes::Bytes;
use porchlight_api::FunctionSpec;
use porchlight_core::FunctionKey;
use porchlight_core::ScalingSettings;
use porchlight_core::names::DEFAULT_NAMESPACE;
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;

use crate::error::GatewayError;
use crate::usage::FunctionUsage;

/// A ready environment as the data path sees it.
#[derive(Clone, Debug)]
pub struct EnvironmentInfo {
    /// Unique id (pod name, or `<function>-<n>` locally).
    pub id: Arc<str>,
    /// Base URL of the shim, e.g. `http://127.0.0.1:41234`.
    pub base_url: Arc<str>,
    /// Events it takes at once.
    pub capacity: u32,
}

#[derive(Debug)]
struct Environment {
    info: EnvironmentInfo,
    in_flight: u32,
    draining: bool,
    /// Marked after a failed connection: not routed to until a probe finds
    /// it answering again ([`FunctionEntry::recover_environment`]).
    unreachable: bool,
    /// Its last answer said it re-initialises (after a timeout or a crash):
    /// routed to only when no other environment has room, until an
    /// invocation it runs afterwards ends.
    reinit: bool,
    last_used: Instant,
    drained: Arc<Notify>,
    /// Notified when a probe gave up on it: whoever owns it replaces it.
    lost: Arc<Notify>,
}

/// A slot on an environment, handed to a waiting invocation.
#[derive(Debug)]
struct Grant {
    env: EnvironmentInfo,
    /// An environment was added (finished its init) while it waited.
    after_cold_start: bool,
}

struct Waiter {
    id: u64,
    tx: oneshot::Sender<Grant>,
    /// [`DispatchState::environments_added`] when it began to wait.
    added_before: u64,
}

/// How an invocation waited for its slot.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Waited {
    /// How long it queued.
    pub duration: Duration,
    /// An environment of the function finished its init meanwhile: the
    /// invocation waited for a cold start (its own, or one before it).
    pub for_cold_start: bool,
}

impl Waited {
    /// Both waits of an invocation tried twice, as one.
    pub fn and(self, other: Waited) -> Waited {
        Waited {
            duration: self.duration + other.duration,
            for_cold_start: self.for_cold_start || other.for_cold_start,
        }
    }
}

#[derive(Default)]
struct DispatchState {
    environments: Vec<Environment>,
    /// Environments added so far (each one's init has just finished).
    environments_added: u64,
    waiters: VecDeque<Waiter>,
    next_waiter: u64,
    /// The init error the platform reports for the function, if any.
    init_failure: Option<Bytes>,
    /// When the last invocation ended (the start of the current idle time).
    last_release: Option<Instant>,
}

/// Queue and dispatch settings shared by every function.
#[derive(Clone, Debug)]
pub struct DispatchConfig {
    /// Invocations that may wait per function.
    pub queue_depth: usize,
    /// Added to the function timeout to bound how long an invocation waits
    /// for an environment (covers a cold start).
    pub cold_start_allowance: Duration,
    /// Async events accepted but not finished, per function.
    pub async_queue_depth: usize,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            queue_depth: 1000,
            cold_start_allowance: Duration::from_secs(10),
            async_queue_depth: 1000,
        }
    }
}

/// Counters of one function, changed only through [`FunctionEntry`]'s methods.
#[derive(Default, Debug)]
struct FunctionCounters {
    /// Invocations accepted (monotonic, for reports).
    invocations: AtomicU64,
    /// Async events accepted and not yet finished (queued, running or waiting to retry).
    async_pending: AtomicU64,
    /// Async events waiting to be dispatched (not in backoff).
    async_waiting: AtomicU64,
    /// Environments the scaler wants (set by the environment source).
    desired: AtomicU64,
    /// Environments starting (set by the environment source).
    starting: AtomicU64,
}

/// A function known to the gateway. Its state changes only through methods
/// that say what happens; nothing outside reaches its counters or queue.
pub struct FunctionEntry {
    key: FunctionKey,
    /// What it used since the gateway started (`crate::usage`).
    usage: Mutex<FunctionUsage>,
    /// How callers name it at this gateway (see [`FunctionKey::address`]).
    address: String,
    /// Spec and settings as last applied; replaced in place on a change, so
    /// the queue, its waiters and the counts in flight carry over.
    definition: RwLock<Definition>,
    counters: FunctionCounters,
    dispatch: Mutex<DispatchState>,
    queue_depth: usize,
    demand: Arc<DemandSignal>,
}

/// What `/v1/functions` says about one function.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FunctionStatus {
    /// Environments the scaler wants.
    pub desired: u64,
    /// Environments starting.
    pub starting: u64,
    /// Load right now.
    pub load: LoadSnapshot,
    /// Async events accepted and not finished.
    pub async_pending: u64,
    /// Invocations accepted since start.
    pub invocations: u64,
}

/// Load of one function at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LoadSnapshot {
    /// Dispatched and not answered.
    pub in_flight: u32,
    /// Waiting for an environment, plus async events waiting for dispatch.
    pub queued: u32,
    /// Environments taking events.
    pub ready: u32,
    /// Environments finishing their last events before they stop.
    pub draining: u32,
    /// Ready environments running nothing.
    pub idle: u32,
    /// When the last invocation ended, if nothing runs or waits now.
    pub idle_since: Option<Instant>,
}

impl LoadSnapshot {
    /// In flight plus queued.
    pub fn concurrency(&self) -> u32 {
        self.in_flight + self.queued
    }
}

/// Signals demand at zero to the report publisher, which sends an early
/// report (a poke) so the autoscaler loop decides at once.
#[derive(Debug)]
pub struct DemandSignal {
    tx: watch::Sender<u64>,
}

impl DemandSignal {
    fn new() -> Self {
        DemandSignal {
            tx: watch::channel(0).0,
        }
    }

    /// Records demand at zero (the report names the function) and wakes subscribers.
    pub fn poke(&self) {
        self.tx.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that changes at every poke.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A slot on an environment. Dropping it frees the slot and hands it to the
/// next waiter.
pub struct Lease {
    entry: Arc<FunctionEntry>,
    env: EnvironmentInfo,
    released: bool,
    reinit: bool,
    waited: Option<Waited>,
}

impl Lease {
    /// The environment this lease is on.
    pub fn environment(&self) -> &EnvironmentInfo {
        &self.env
    }

    /// How the invocation waited for this slot (`None`: taken at once).
    pub fn waited(&self) -> Option<Waited> {
        self.waited
    }

    /// The environment answered that it re-initialises: once the slot is
    /// free, other environments with room are preferred to it.
    pub fn environment_reinitialises(&mut self) {
        self.reinit = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.released {
            self.released = true;
            self.entry.release(&self.env.id, self.reinit);
        }
    }
}

#[derive(Clone)]
struct Definition {
    spec: Arc<FunctionSpec>,
    settings: Arc<ScalingSettings>,
}

impl FunctionEntry {
    fn new(
        key: FunctionKey,
        address: String,
        spec: FunctionSpec,
        settings: ScalingSettings,
        config: &DispatchConfig,
        demand: Arc<DemandSignal>,
    ) -> Self {
        FunctionEntry {
            key,
            address,
            definition: RwLock::new(Definition {
                spec: Arc::new(spec),
                settings: Arc::new(settings),
            }),
            counters: FunctionCounters::default(),
            usage: Mutex::new(FunctionUsage::default()),
            dispatch: Mutex::new(DispatchState::default()),
            queue_depth: config.queue_depth,
            demand,
        }
    }

    /// The function's name as callers give it: its name in the gateway's
    /// home namespace, `namespace.name` in any other.
    pub fn name(&self) -> &str {
        &self.address
    }

    /// Namespace and name.
    pub fn key(&self) -> &FunctionKey {
        &self.key
    }

    /// The spec as applied.
    pub fn spec(&self) -> Arc<FunctionSpec> {
        self.definition
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .spec
            .clone()
    }

    /// The parsed scaling settings.
    pub fn settings(&self) -> Arc<ScalingSettings> {
        self.definition
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .settings
            .clone()
    }

    /// Applies a changed spec in place: queued and waiting events, the
    /// environments and every count stay; what follows from the spec (the
    /// timeout, the triggers) applies from the next event on.
    fn redefine(&self, spec: FunctionSpec, settings: ScalingSettings) {
        *self.definition.write().unwrap_or_else(|p| p.into_inner()) = Definition {
            spec: Arc::new(spec),
            settings: Arc::new(settings),
        };
    }

    /// Counts an invocation accepted for dispatch.
    pub fn record_invocation(&self) {
        self.counters.invocations.fetch_add(1, Ordering::Relaxed);
    }

    /// Invocations accepted since the gateway started.
    pub fn invocations_total(&self) -> u64 {
        self.counters.invocations.load(Ordering::Relaxed)
    }

    /// Records how many environments the scaler wants.
    pub fn set_desired(&self, environments: u32) {
        self.counters
            .desired
            .store(u64::from(environments), Ordering::Relaxed);
    }

    /// Records how many environments are starting.
    pub fn set_starting(&self, environments: u32) {
        self.counters
            .starting
            .store(u64::from(environments), Ordering::Relaxed);
    }

    /// Accepts one async event unless `bound` are already pending.
    pub fn try_accept_async(&self, bound: usize) -> bool {
        let pending = &self.counters.async_pending;
        if pending.fetch_add(1, Ordering::SeqCst) >= bound as u64 {
            pending.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// An accepted async event waits for dispatch (counted as queued).
    pub fn async_enqueued(&self) {
        self.counters.async_waiting.fetch_add(1, Ordering::SeqCst);
    }

    /// An async event stopped waiting (dispatched, or given up).
    pub fn async_dispatched(&self) {
        self.counters.async_waiting.fetch_sub(1, Ordering::SeqCst);
    }

    /// An accepted async event is done (answered, dead-lettered or refused).
    pub fn async_finished(&self) {
        self.counters.async_pending.fetch_sub(1, Ordering::SeqCst);
    }

    /// Signals demand for this function to whoever scales it.
    pub fn signal_demand(&self) {
        self.demand.poke();
    }

    /// Counts and load, for `/v1/functions`.
    pub fn status(&self) -> FunctionStatus {
        FunctionStatus {
            desired: self.counters.desired.load(Ordering::Relaxed),
            starting: self.counters.starting.load(Ordering::Relaxed),
            load: self.load(),
            async_pending: self.counters.async_pending.load(Ordering::Relaxed),
            invocations: self.invocations_total(),
        }
    }

    /// Meters an invocation that ran `duration_ms` (after an init of
    /// `init_ms`, on a cold start): the billed milliseconds and GB-seconds.
    pub fn meter_invocation(&self, duration_ms: f64, init_ms: Option<f64>) -> (u64, f64) {
        let memory = self.spec().memory_mib;
        lock(&self.usage).record_invocation(duration_ms, init_ms, memory)
    }

    /// Meters `idle` environments idle for `elapsed`: environment-seconds
    /// and GB-seconds.
    pub fn meter_idle(&self, idle: u32, elapsed: Duration) -> (f64, f64) {
        let memory = self.spec().memory_mib;
        lock(&self.usage).record_idle(idle, elapsed, memory)
    }

    /// What it used since the gateway started.
    pub fn usage(&self) -> FunctionUsage {
        lock(&self.usage).clone()
    }

    /// Current load.
    pub fn load(&self) -> LoadSnapshot {
        let st = lock(&self.dispatch);
        let mut snap = LoadSnapshot {
            queued: st.waiters.len() as u32,
            ..LoadSnapshot::default()
        };
        for e in &st.environments {
            snap.in_flight += e.in_flight;
            if e.draining {
                snap.draining += 1;
            } else {
                snap.ready += 1;
                if e.in_flight == 0 {
                    snap.idle += 1;
                }
            }
        }
        let last_release = st.last_release;
        drop(st);
        snap.queued += self.counters.async_waiting.load(Ordering::Relaxed) as u32;
        if snap.concurrency() == 0 {
            snap.idle_since = last_release;
        }
        snap
    }

    /// Environments running invocations (draining ones too), with how many:
    /// reported so that a scale-down removes idle environments first.
    pub fn busy_environments(&self) -> BTreeMap<String, u32> {
        let st = lock(&self.dispatch);
        st.environments
            .iter()
            .filter(|e| e.in_flight > 0)
            .map(|e| (e.info.id.to_string(), e.in_flight))
            .collect()
    }

    /// Ids of routable environments, most recently used first, with in flight counts.
    pub fn environments_by_recency(&self) -> Vec<(Arc<str>, u32)> {
        let st = lock(&self.dispatch);
        let mut v: Vec<_> = st
            .environments
            .iter()
            .filter(|e| !e.draining)
            .map(|e| (e.last_used, e.info.id.clone(), e.in_flight))
            .collect();
        drop(st);
        v.sort_by_key(|e| std::cmp::Reverse(e.0));
        v.into_iter().map(|(_, id, n)| (id, n)).collect()
    }

    /// Every known environment's id and whether it is draining.
    pub fn environment_states(&self) -> Vec<(Arc<str>, bool)> {
        let st = lock(&self.dispatch);
        st.environments
            .iter()
            .map(|e| (e.info.id.clone(), e.draining))
            .collect()
    }

    /// Adds a ready environment and hands its slots to waiting invocations.
    pub fn add_environment(&self, info: EnvironmentInfo) {
        let mut st = lock(&self.dispatch);
        if st.environments.iter().any(|e| e.info.id == info.id) {
            return;
        }
        st.environments.push(Environment {
            info,
            in_flight: 0,
            draining: false,
            unreachable: false,
            reinit: false,
            last_used: Instant::now(),
            drained: Arc::new(Notify::new()),
            lost: Arc::new(Notify::new()),
        });
        st.environments_added += 1;
        let idx = st.environments.len() - 1;
        Self::hand_out(&mut st, idx);
    }

    /// Stops routing to an environment. The returned future completes once it
    /// has nothing in flight (at once if it is unknown).
    pub fn drain_environment(&self, id: &str) -> impl Future<Output = ()> + Send + 'static {
        let notify = {
            let mut st = lock(&self.dispatch);
            match st.environments.iter_mut().find(|e| &*e.info.id == id) {
                Some(e) => {
                    e.draining = true;
                    e.unreachable = false;
                    (e.in_flight > 0).then(|| e.drained.clone())
                }
                None => None,
            }
        };
        async move {
            if let Some(n) = notify {
                n.notified().await;
            }
        }
    }

    /// Forgets an environment (stopped or crashed).
    pub fn remove_environment(&self, id: &str) {
        let mut st = lock(&self.dispatch);
        if let Some(pos) = st.environments.iter().position(|e| &*e.info.id == id) {
            let e = st.environments.swap_remove(pos);
            e.drained.notify_one();
        }
    }

    /// Stops routing to an environment that failed (connection refused or
    /// broken). Returns true the first time, when the caller should probe it.
    pub fn mark_unreachable(&self, id: &str) -> bool {
        let mut st = lock(&self.dispatch);
        match st.environments.iter_mut().find(|e| &*e.info.id == id) {
            Some(e) if !e.draining => {
                e.draining = true;
                e.unreachable = true;
                true
            }
            _ => false,
        }
    }

    /// Routes to an unreachable environment again: a probe found it
    /// answering. An environment drained on purpose stays drained.
    pub fn recover_environment(&self, id: &str) -> bool {
        let mut st = lock(&self.dispatch);
        let Some(idx) = st
            .environments
            .iter()
            .position(|e| &*e.info.id == id && e.unreachable)
        else {
            return false;
        };
        let e = &mut st.environments[idx];
        e.unreachable = false;
        e.draining = false;
        Self::hand_out(&mut st, idx);
        true
    }

    /// A probe gave up on an unreachable environment: it stays out of
    /// routing and its owner is told to replace it.
    pub fn lose_environment(&self, id: &str) {
        let st = lock(&self.dispatch);
        if let Some(e) = st
            .environments
            .iter()
            .find(|e| &*e.info.id == id && e.unreachable)
        {
            e.lost.notify_one();
        }
    }

    /// Completes when a probe gave up on this environment (never, if it is unknown).
    pub fn environment_lost(&self, id: &str) -> impl Future<Output = ()> + Send + 'static {
        let lost = {
            let st = lock(&self.dispatch);
            st.environments
                .iter()
                .find(|e| &*e.info.id == id)
                .map(|e| e.lost.clone())
        };
        async move {
            match lost {
                Some(n) => n.notified().await,
                None => std::future::pending().await,
            }
        }
    }

    fn release(&self, id: &str, reinit: bool) {
        let mut st = lock(&self.dispatch);
        let Some(idx) = st.environments.iter().position(|e| &*e.info.id == id) else {
            return;
        };
        {
            let e = &mut st.environments[idx];
            e.in_flight = e.in_flight.saturating_sub(1);
            e.last_used = Instant::now();
            // The last answer says whether its runtime starts again.
            e.reinit = reinit;
            if e.draining && e.in_flight == 0 {
                e.drained.notify_one();
            }
        }
        st.last_release = Some(st.environments[idx].last_used);
        Self::hand_out(&mut st, idx);
    }

    /// Gives free slots of environment `idx` to waiters, oldest first.
    fn hand_out(st: &mut DispatchState, idx: usize) {
        loop {
            let e = &st.environments[idx];
            if e.draining || e.in_flight >= e.info.capacity {
                return;
            }
            let Some(waiter) = st.waiters.pop_front() else {
                return;
            };
            let grant = Grant {
                env: e.info.clone(),
                after_cold_start: st.environments_added > waiter.added_before,
            };
            if waiter.tx.send(grant).is_ok() {
                let e = &mut st.environments[idx];
                e.in_flight += 1;
                e.last_used = Instant::now();
            }
        }
    }

    /// Takes a free slot at once, preferring the most recently used
    /// environment that is not re-initialising (whose next event would wait
    /// for an init).
    fn try_take(st: &mut DispatchState) -> Option<EnvironmentInfo> {
        let best = st
            .environments
            .iter_mut()
            .filter(|e| !e.draining && e.in_flight < e.info.capacity)
            .max_by_key(|e| (!e.reinit, e.last_used))?;
        best.in_flight += 1;
        best.last_used = Instant::now();
        Some(best.info.clone())
    }

    /// How long an invocation may wait for an environment.
    pub fn wait_bound(&self, config: &DispatchConfig) -> Duration {
        Duration::from_secs(u64::from(self.spec().timeout_seconds)) + config.cold_start_allowance
    }

    /// Waits for a slot on an environment, up to `deadline`. Refuses at once
    /// when the queue is full; signals demand at once when the function has no
    /// environment.
    pub async fn acquire(self: &Arc<Self>, deadline: Instant) -> Result<Lease, GatewayError> {
        let (waiter_id, rx, at_zero) = {
            let mut st = lock(&self.dispatch);
            if let Some(env) = Self::try_take(&mut st) {
                return Ok(self.lease(env, None));
            }
            if st.waiters.len() >= self.queue_depth {
                return Err(GatewayError::Throttled {
                    retry_after: Duration::from_secs(1),
                    reason: "ConcurrentInvocationLimitExceeded",
                });
            }
            let at_zero = !st.environments.iter().any(|e| !e.draining);
            if at_zero && st.init_failure.is_some() {
                // Known to fail its init: answer now (the caller turns this
                // into the init error), and still ask for an environment, as
                // the next event retries the init in Lambda.
                drop(st);
                self.demand.poke();
                return Err(GatewayError::Unavailable {
                    retry_after: Duration::from_secs(2),
                });
            }
            let (tx, rx) = oneshot::channel();
            let id = st.next_waiter;
            st.next_waiter += 1;
            let added_before = st.environments_added;
            st.waiters.push_back(Waiter {
                id,
                tx,
                added_before,
            });
            (id, rx, at_zero)
        };
        let queued_at = Instant::now();
        let waited = |grant: &Grant| {
            Some(Waited {
                duration: queued_at.elapsed(),
                for_cold_start: grant.after_cold_start,
            })
        };
        if at_zero {
            self.demand.poke();
        }
        let mut rx = rx;
        match tokio::time::timeout_at(deadline, &mut rx).await {
            Ok(Ok(grant)) => {
                let waited = waited(&grant);
                Ok(self.lease(grant.env, waited))
            }
            Ok(Err(_)) => Err(GatewayError::ShuttingDown),
            Err(_) => {
                let had_ready = {
                    let mut st = lock(&self.dispatch);
                    st.waiters.retain(|w| w.id != waiter_id);
                    st.environments.iter().any(|e| !e.draining)
                };
                // A grant may have arrived between the timeout and the lock.
                if let Ok(grant) = rx.try_recv() {
                    let waited = waited(&grant);
                    return Ok(self.lease(grant.env, waited));
                }
                if had_ready {
                    Err(GatewayError::Throttled {
                        retry_after: Duration::from_secs(1),
                        reason: "ConcurrentInvocationLimitExceeded",
                    })
                } else {
                    Err(GatewayError::Unavailable {
                        retry_after: Duration::from_secs(2),
                    })
                }
            }
        }
    }

    fn lease(self: &Arc<Self>, env: EnvironmentInfo, waited: Option<Waited>) -> Lease {
        Lease {
            entry: self.clone(),
            env,
            released: false,
            reinit: false,
            waited,
        }
    }

    /// Records, or clears, the init error that the platform reports for this
    /// function (Kubernetes mode: the Function's `InitFailed` condition).
    /// While it is set and no environment takes events, invocations are
    /// answered with it at once ([`Self::current_init_failure`]) and those
    /// already waiting are woken to get it too.
    pub fn set_init_failure(&self, failure: Option<Bytes>) {
        let mut st = lock(&self.dispatch);
        let wake = failure.is_some()
            && st.init_failure.is_none()
            && !st.environments.iter().any(|e| !e.draining);
        st.init_failure = failure;
        if wake {
            st.waiters.clear();
        }
    }

    /// The init error to answer with now: one is reported and no environment
    /// takes events.
    pub fn current_init_failure(&self) -> Option<Bytes> {
        let st = lock(&self.dispatch);
        if st.environments.iter().any(|e| !e.draining) {
            None
        } else {
            st.init_failure.clone()
        }
    }

    /// Fails every waiter (shutdown).
    pub fn close_waiters(&self) {
        lock(&self.dispatch).waiters.clear();
    }
}

/// All functions this gateway serves.
pub struct Registry {
    /// Keyed by address.
    functions: RwLock<HashMap<String, Arc<FunctionEntry>>>,
    /// The namespace whose functions are addressed by bare name.
    home: String,
    config: DispatchConfig,
    demand: Arc<DemandSignal>,
}

impl Registry {
    /// An empty registry whose home namespace is `default`.
    pub fn new(config: DispatchConfig) -> Self {
        Registry::with_home(config, DEFAULT_NAMESPACE)
    }

    /// An empty registry that addresses the functions of `home` by bare
    /// name and those of other namespaces as `namespace.name`.
    pub fn with_home(config: DispatchConfig, home: &str) -> Self {
        Registry {
            functions: RwLock::new(HashMap::new()),
            home: home.to_string(),
            config,
            demand: Arc::new(DemandSignal::new()),
        }
    }

    /// How callers name the function `key` here.
    pub fn address_of(&self, key: &FunctionKey) -> String {
        key.address(&self.home)
    }

    /// Queue settings.
    pub fn config(&self) -> &DispatchConfig {
        &self.config
    }

    /// The demand signal (pokes for functions at zero).
    pub fn demand(&self) -> &Arc<DemandSignal> {
        &self.demand
    }

    /// Adds a function, or applies a changed spec to the one registered in
    /// place (its queue, waiters, environments and counts carry over; on a
    /// cluster the Deployment rolls the environments themselves).
    pub fn upsert(
        &self,
        key: FunctionKey,
        spec: FunctionSpec,
        settings: ScalingSettings,
    ) -> Arc<FunctionEntry> {
        let address = self.address_of(&key);
        if let Some(entry) = self.get(&address).filter(|e| e.key == key) {
            entry.redefine(spec, settings);
            return entry;
        }
        let entry = Arc::new(FunctionEntry::new(
            key,
            address.clone(),
            spec,
            settings,
            &self.config,
            self.demand.clone(),
        ));
        self.functions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(address, entry.clone());
        entry
    }

    /// Removes a function (by address).
    pub fn remove(&self, name: &str) -> Option<Arc<FunctionEntry>> {
        self.functions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
    }

    /// Looks a function up by address.
    pub fn get(&self, name: &str) -> Option<Arc<FunctionEntry>> {
        self.functions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Every function, sorted by address.
    pub fn all(&self) -> Vec<Arc<FunctionEntry>> {
        let mut v: Vec<_> = self
            .functions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.address.cmp(&b.address));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(depth: usize) -> (Registry, Arc<FunctionEntry>) {
        let spec: FunctionSpec =
            serde_yaml::from_str("handler: app.h\ncode: {inline: 'x'}\ntimeoutSeconds: 1\n")
                .expect("spec");
        let settings = spec.validate().expect("valid");
        let reg = Registry::new(DispatchConfig {
            queue_depth: depth,
            ..DispatchConfig::default()
        });
        let e = reg.upsert(FunctionKey::new("default", "f"), spec, settings);
        (reg, e)
    }

    fn env(id: &str, capacity: u32) -> EnvironmentInfo {
        EnvironmentInfo {
            id: id.into(),
            base_url: format!("http://127.0.0.1/{id}").into(),
            capacity,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waits_at_zero_pokes_and_is_served_when_an_environment_arrives() {
        let (reg, e) = entry(10);
        let mut pokes = reg.demand().subscribe();
        let e2 = e.clone();
        let task = tokio::spawn(async move {
            let lease = e2.acquire(Instant::now() + Duration::from_secs(5)).await?;
            Ok::<_, GatewayError>(lease.environment().id.to_string())
        });
        pokes.changed().await.expect("poked");
        assert_eq!(e.load().queued, 1);
        e.add_environment(env("a", 1));
        assert_eq!(task.await.expect("join").expect("lease"), "a");
        // Taken at once: no wait to tell.
        let warm = e.acquire(Instant::now() + Duration::from_secs(1)).await;
        assert_eq!(warm.expect("lease").waited(), None);
        let load = e.load();
        assert!(
            load.idle_since.is_some(),
            "the invocation ended: idle since then"
        );
        assert_eq!(
            LoadSnapshot {
                idle_since: None,
                ..load
            },
            LoadSnapshot {
                in_flight: 0,
                queued: 0,
                ready: 1,
                draining: 0,
                idle: 1,
                idle_since: None,
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_is_refused_and_deadline_gives_503_at_zero() {
        let (_reg, e) = entry(1);
        let e2 = e.clone();
        let waiting = tokio::spawn(async move {
            e2.acquire(Instant::now() + Duration::from_secs(2))
                .await
                .map(|_| ())
        });
        tokio::task::yield_now().await;
        let refused = e.acquire(Instant::now() + Duration::from_secs(2)).await;
        assert!(matches!(refused, Err(GatewayError::Throttled { .. })));
        let timed_out = waiting.await.expect("join");
        assert!(matches!(timed_out, Err(GatewayError::Unavailable { .. })));
        assert_eq!(e.load().queued, 0, "a timed-out waiter leaves the queue");
    }

    #[tokio::test(start_paused = true)]
    async fn prefers_most_recently_used_and_respects_capacity() {
        let (_reg, e) = entry(10);
        e.add_environment(env("old", 1));
        tokio::time::advance(Duration::from_millis(10)).await;
        e.add_environment(env("new", 1));
        let deadline = Instant::now() + Duration::from_secs(1);
        let l1 = e.acquire(deadline).await.expect("lease");
        assert_eq!(&*l1.environment().id, "new");
        let l2 = e.acquire(deadline).await.expect("lease");
        assert_eq!(&*l2.environment().id, "old");
        drop(l2);
        tokio::time::advance(Duration::from_millis(10)).await;
        drop(l1);
        // "new" was released last, so it is preferred again.
        let l3 = e.acquire(deadline).await.expect("lease");
        assert_eq!(&*l3.environment().id, "new");
        // Both full: the next one waits and, with environments ready, is throttled.
        let _l4 = e.acquire(deadline).await.expect("lease");
        let r = e.acquire(deadline).await;
        assert!(matches!(r, Err(GatewayError::Throttled { .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_queued_behind_a_cold_start_is_told_so() {
        let (_reg, e) = entry(10);
        let deadline = Instant::now() + Duration::from_secs(5);
        let waiting = |e: &Arc<FunctionEntry>| {
            let e = e.clone();
            tokio::spawn(async move {
                let lease = e.acquire(deadline).await.expect("lease");
                tokio::time::sleep(Duration::from_millis(100)).await;
                (lease.environment().id.to_string(), lease.waited())
            })
        };
        let first = waiting(&e);
        let second = waiting(&e);
        tokio::time::sleep(Duration::from_millis(400)).await;
        // The environment's init finishes: the first takes its slot, the
        // second gets it after the first (a warm slot, but it waited for
        // the cold start all the same).
        e.add_environment(env("a", 1));
        let (id, waited) = first.await.expect("join");
        assert_eq!(id, "a");
        let waited = waited.expect("queued");
        assert!(waited.for_cold_start);
        assert_eq!(waited.duration, Duration::from_millis(400));
        let (_, waited) = second.await.expect("join");
        let waited = waited.expect("queued");
        assert!(waited.for_cold_start);
        assert_eq!(waited.duration, Duration::from_millis(500));
        // Queued for a busy environment only: not a cold start's wait.
        let busy = e.acquire(deadline).await.expect("lease");
        let third = waiting(&e);
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(busy);
        let (_, waited) = third.await.expect("join");
        assert_eq!(
            waited,
            Some(Waited {
                duration: Duration::from_millis(50),
                for_cold_start: false
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_environment_that_re_initialises_is_taken_last() {
        let (_reg, e) = entry(10);
        e.add_environment(env("warm", 1));
        tokio::time::advance(Duration::from_millis(10)).await;
        e.add_environment(env("reset", 1));
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut timed_out = e.acquire(deadline).await.expect("lease");
        assert_eq!(&*timed_out.environment().id, "reset");
        timed_out.environment_reinitialises();
        drop(timed_out);
        // Released last, yet the warm one is preferred while it has room.
        let next = e.acquire(deadline).await.expect("lease");
        assert_eq!(&*next.environment().id, "warm");
        // With no other room it still takes events (they wait for its init),
        // and one that ends normally makes it a plain environment again.
        let other = e.acquire(deadline).await.expect("lease");
        assert_eq!(&*other.environment().id, "reset");
        drop(next);
        tokio::time::advance(Duration::from_millis(10)).await;
        drop(other);
        let l = e.acquire(deadline).await.expect("lease");
        assert_eq!(&*l.environment().id, "reset");
        drop(l);
    }

    #[tokio::test(start_paused = true)]
    async fn draining_environment_gets_nothing_new_and_signals_when_empty() {
        let (_reg, e) = entry(10);
        e.add_environment(env("a", 2));
        let deadline = Instant::now() + Duration::from_secs(1);
        let lease = e.acquire(deadline).await.expect("lease");
        let drained = e.drain_environment("a");
        let r = e.acquire(deadline).await;
        assert!(matches!(r, Err(GatewayError::Unavailable { .. })));
        let mut drained = Box::pin(drained);
        assert!(futures::poll!(drained.as_mut()).is_pending());
        drop(lease);
        drained.await;
    }
}
