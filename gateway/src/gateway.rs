//! The gateway's shared state, behind one handle: the registry of functions,
//! the synchronous and asynchronous invocation paths, the concurrency
//! reports, the memory budget and the metrics. Fields are private; what callers may do is a
//! method that says what happens. The HTTP routes see only [`Ingress`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use porchlight_core::GatewayReport;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::async_invoke::{AsyncInvoker, AsyncSettings, Stopped};
use crate::budget::{DEFAULT_MEMORY_BUDGET_MIB, MemoryBudget, Purpose, Reservation};
use crate::dead_letters::{DeadLetterList, PageRequest};
use crate::error::GatewayError;
use crate::forwarded::Forwarded;
use crate::metrics::Metrics;
use crate::queue::EventQueue;
use crate::queue::local::{LocalQueue, LocalSettings};
use crate::registry::{DispatchConfig, FunctionEntry, Registry};
use crate::report::ReportHub;
use crate::routes::Ingress;
use crate::sigv4::{Caller, KeyFile, SignedRequest};
use crate::sync_invoke::SyncInvoker;
use crate::upstream::Readiness;

pub use crate::sync_invoke::{
    ASYNC_PAYLOAD_LIMIT, InvocationResult, SYNC_PAYLOAD_LIMIT, TriggerKind,
};

/// Settings of the gateway core.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Queue and dispatch bounds.
    pub dispatch: DispatchConfig,
    /// Delay before the first async retry; doubled for the second (Lambda: 60 s).
    pub async_retry_base: Duration,
    /// Attempts of an async event that fails (Lambda: 1 + 2 retries).
    pub async_max_attempts: u32,
    /// Age after which an async event is given up (Lambda default: 6 h).
    pub async_max_age: Duration,
    /// Dead letters kept (oldest evicted first, and counted).
    pub dead_letter_capacity: usize,
    /// Bytes the gateway may hold for payloads, events and dead letters;
    /// past it, invocations get 429. Dead letters may take a quarter of it.
    pub memory_budget: usize,
    /// Identity of this gateway in reports.
    pub gateway_name: String,
    /// Access keys for signed (SigV4) Lambda API calls; `None`: unsigned
    /// calls are accepted.
    pub credentials: Option<Arc<KeyFile>>,
    /// The namespace whose functions callers name by bare name (others:
    /// `namespace.name`).
    pub home_namespace: String,
    /// How often a running async event is reported in progress to its store.
    pub async_progress_every: Duration,
}

impl GatewayConfig {
    /// The bounds of a gateway's own event queue (in memory or on a file).
    pub fn local_queue_settings(&self) -> LocalSettings {
        LocalSettings {
            depth: self.dispatch.async_queue_depth,
            dead_letter_capacity: self.dead_letter_capacity,
            dead_letter_bytes: self.memory_budget / 4,
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            dispatch: DispatchConfig::default(),
            async_retry_base: Duration::from_secs(60),
            async_max_attempts: 3,
            async_max_age: Duration::from_secs(6 * 3600),
            dead_letter_capacity: 1000,
            memory_budget: DEFAULT_MEMORY_BUDGET_MIB * 1024 * 1024,
            gateway_name: "local".to_string(),
            credentials: None,
            home_namespace: porchlight_core::names::DEFAULT_NAMESPACE.to_string(),
            async_progress_every: Duration::from_secs(10),
        }
    }
}

/// The gateway core, shared by every route and background task.
pub struct Gateway {
    registry: Arc<Registry>,
    sync: Arc<SyncInvoker>,
    asynchronous: Arc<AsyncInvoker>,
    reports: Arc<ReportHub>,
    budget: MemoryBudget,
    metrics: Metrics,
    ready: AtomicBool,
    credentials: Option<Arc<KeyFile>>,
}

impl Gateway {
    /// A gateway with no functions, whose async events wait in memory.
    pub fn new(config: GatewayConfig) -> Arc<Self> {
        let queue = Arc::new(LocalQueue::in_memory(config.local_queue_settings()));
        Gateway::with_queue(config, queue)
    }

    /// A gateway with no functions, whose async events wait in `queue`.
    pub fn with_queue(config: GatewayConfig, queue: Arc<dyn EventQueue>) -> Arc<Self> {
        let metrics = Metrics::new();
        let budget = MemoryBudget::new(config.memory_budget);
        let sync = Arc::new(SyncInvoker::new(
            config.dispatch.clone(),
            metrics.clone(),
            budget.clone(),
        ));
        let registry = Arc::new(Registry::with_home(
            config.dispatch.clone(),
            &config.home_namespace,
        ));
        let asynchronous = Arc::new(AsyncInvoker::new(
            sync.clone(),
            metrics.clone(),
            AsyncSettings {
                retry_base: config.async_retry_base,
                max_attempts: config.async_max_attempts,
                max_age: config.async_max_age,
                progress_every: config.async_progress_every,
            },
            queue,
            registry.clone(),
            budget.clone(),
        ));
        Arc::new(Gateway {
            registry,
            sync,
            asynchronous,
            reports: Arc::new(ReportHub::new(config.gateway_name)),
            budget,
            metrics,
            ready: AtomicBool::new(false),
            credentials: config.credentials,
        })
    }

    /// Runs a queue trigger's batch as one synchronous invocation, through
    /// the normal dispatch (it counts as demand).
    pub async fn invoke_batch(
        &self,
        entry: &Arc<FunctionEntry>,
        payload: Bytes,
        request_id: &str,
    ) -> Result<InvocationResult, GatewayError> {
        self.sync
            .invoke(
                entry,
                payload,
                request_id,
                TriggerKind::Queue,
                &Forwarded::new_trace(false),
            )
            .await
    }

    /// The functions and their queues (environment sources add, drain and
    /// remove environments here; the demand signal is [`Registry::demand`]).
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The memory budget.
    pub fn budget(&self) -> &MemoryBudget {
        &self.budget
    }

    /// The concurrency reports.
    pub fn reports(&self) -> &Arc<ReportHub> {
        &self.reports
    }

    /// Follows the concurrency reports as they are published.
    pub fn subscribe_reports(&self) -> watch::Receiver<Arc<GatewayReport>> {
        self.reports.subscribe()
    }

    /// The report loop (sample every 100 ms, publish every second or on a
    /// poke) until `shutdown`.
    pub fn run_reports(
        &self,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        self.reports
            .clone()
            .run(self.registry.clone(), self.metrics.clone(), shutdown)
    }

    /// Marks the gateway ready (functions loaded) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Ready to take traffic.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.is_shutting_down()
    }

    /// Refuses new invocations from now on and fails those still waiting.
    pub fn begin_shutdown(&self) {
        self.sync.begin_shutdown();
        for f in self.registry.all() {
            f.close_waiters();
        }
    }

    /// Whether shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        self.sync.is_shutting_down()
    }

    /// Stops taking async events and waits up to `bound` for those
    /// running; events waiting for a retry stay in the store.
    pub async fn finish_async(&self, bound: Duration) -> Stopped {
        self.asynchronous.finish(bound).await
    }

    /// Where async events wait.
    pub fn describe_queue(&self) -> String {
        self.asynchronous.queue().describe()
    }

    /// Keeps a worker taking async events for every registered function
    /// (events stored by an earlier run or another gateway run without
    /// waiting for a new one), until `shutdown`.
    pub fn run_async_workers(
        &self,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        let registry = self.registry.clone();
        let asynchronous = self.asynchronous.clone();
        async move {
            loop {
                asynchronous.serve(&registry.all());
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }

    /// The store of async events, which also keeps schedules' last ticks.
    pub fn event_store(&self) -> &Arc<dyn EventQueue> {
        self.asynchronous.queue()
    }

    /// Stores the event of a schedule's tick for `entry`, recording the
    /// tick as the schedule `key`'s last fired with it.
    pub async fn fire_tick(
        &self,
        entry: &Arc<FunctionEntry>,
        payload: Bytes,
        request_id: String,
        key: String,
        tick: i64,
    ) -> Result<(), GatewayError> {
        let held = self.budget.try_reserve(payload.len(), Purpose::Async)?;
        self.asynchronous
            .enqueue_tick(entry, payload, held, request_id, key, tick)
            .await
    }

    /// Looks a function up.
    pub fn function(&self, name: &str) -> Result<Arc<FunctionEntry>, GatewayError> {
        self.registry
            .get(name)
            .ok_or_else(|| GatewayError::not_found(name))
    }

    /// One page of the dead letters.
    pub async fn dead_letters(&self, page: &PageRequest) -> Result<DeadLetterList, GatewayError> {
        self.asynchronous.dead_letters(page).await
    }

    /// Runs `function`'s dead letters again (only `request_id`'s, when
    /// given); answers how many.
    pub async fn redrive(
        &self,
        function: &str,
        request_id: Option<&str>,
    ) -> Result<usize, GatewayError> {
        let entry = self.function(function)?;
        self.asynchronous.redrive(&entry, request_id).await
    }

    /// Asks an environment whether its init finished.
    pub async fn readiness(&self, base_url: &str) -> Readiness {
        self.sync.readiness(base_url).await
    }
}

impl Ingress for Gateway {
    fn function(&self, name: &str) -> Result<Arc<FunctionEntry>, GatewayError> {
        Gateway::function(self, name)
    }

    fn functions(&self) -> Vec<Arc<FunctionEntry>> {
        self.registry.all()
    }

    fn invoke(
        &self,
        entry: &Arc<FunctionEntry>,
        payload: Bytes,
        request_id: &str,
        trigger: TriggerKind,
        forwarded: &Forwarded,
    ) -> impl Future<Output = Result<InvocationResult, GatewayError>> + Send {
        self.sync
            .invoke(entry, payload, request_id, trigger, forwarded)
    }

    fn authenticate(&self, request: &SignedRequest<'_>) -> Result<Option<Caller>, GatewayError> {
        let Some(keys) = &self.credentials else {
            return Ok(None);
        };
        match keys
            .credentials()
            .verify(request, time::OffsetDateTime::now_utc())
        {
            Ok(caller) => Ok(Some(caller)),
            Err(e) => {
                self.metrics.record_auth_failure(e.error_type());
                Err(e)
            }
        }
    }

    fn reserve(&self, bytes: usize, purpose: Purpose) -> Result<Reservation, GatewayError> {
        Ok(self.budget.try_reserve(bytes, purpose)?)
    }

    fn has_async_room(&self, entry: &FunctionEntry) -> bool {
        self.asynchronous.has_room(entry)
    }

    fn async_pending(&self, entry: &FunctionEntry) -> u64 {
        self.asynchronous.pending(entry)
    }

    fn enqueue(
        &self,
        entry: &Arc<FunctionEntry>,
        payload: Bytes,
        held: Reservation,
        request_id: String,
        trigger: TriggerKind,
        forwarded: Forwarded,
    ) -> impl Future<Output = Result<(), GatewayError>> + Send {
        self.asynchronous
            .enqueue(entry, payload, held, request_id, trigger, forwarded)
    }

    fn is_ready(&self) -> bool {
        Gateway::is_ready(self)
    }

    fn metrics_text(&self) -> String {
        for f in self.registry.all() {
            let pending = i64::try_from(self.asynchronous.pending(&f)).unwrap_or(i64::MAX);
            self.metrics
                .async_pending
                .with_label_values(&[f.name()])
                .set(pending);
        }
        let mut text = self.metrics.render();
        text.push_str(&self.budget.render());
        text
    }

    fn latest_report(&self) -> Arc<GatewayReport> {
        self.reports.latest()
    }

    fn report_after(
        &self,
        after: u64,
        wait: Duration,
    ) -> impl Future<Output = Arc<GatewayReport>> + Send {
        self.reports.wait_after(after, wait)
    }

    fn dead_letters(
        &self,
        page: &PageRequest,
    ) -> impl Future<Output = Result<DeadLetterList, GatewayError>> + Send {
        Gateway::dead_letters(self, page)
    }

    fn redrive(
        &self,
        function: &str,
        request_id: Option<&str>,
    ) -> impl Future<Output = Result<usize, GatewayError>> + Send {
        Gateway::redrive(self, function, request_id)
    }
}
