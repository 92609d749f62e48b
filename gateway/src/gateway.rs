//! The gateway's shared state and its synchronous invocation path: take a
//! slot on an environment (waiting, bounded), send the event, classify the
//! answer into a Lambda outcome.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::async_invoke::DeadLetters;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::registry::{DispatchConfig, FunctionEntry, Registry};
use crate::report::ReportHub;
use crate::upstream::{UpstreamClient, UpstreamReply};

/// Lambda's synchronous payload limit (request and response).
pub const SYNC_PAYLOAD_LIMIT: usize = 6_291_456;
/// Lambda's asynchronous payload limit.
pub const ASYNC_PAYLOAD_LIMIT: usize = 1_048_576;

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
    /// Identity of this gateway in reports.
    pub gateway_name: String,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            dispatch: DispatchConfig::default(),
            async_retry_base: Duration::from_secs(60),
            async_max_attempts: 3,
            async_max_age: Duration::from_secs(6 * 3600),
            dead_letter_capacity: 1000,
            gateway_name: "local".to_string(),
        }
    }
}

/// Where an invocation came from (a bounded set, used as a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TriggerKind {
    /// Lambda Invoke API, RequestResponse.
    Invoke,
    /// Lambda Invoke API, Event.
    Event,
    /// HTTP trigger.
    Http,
    /// S3 notification.
    S3,
    /// CloudEvent.
    CloudEvents,
}

impl TriggerKind {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Invoke => "invoke",
            TriggerKind::Event => "event",
            TriggerKind::Http => "http",
            TriggerKind::S3 => "s3",
            TriggerKind::CloudEvents => "cloudevents",
        }
    }
}

/// A handler's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct InvocationResult {
    /// Result or error JSON.
    pub body: Bytes,
    /// `Unhandled` (or `Handled`) when the function failed.
    pub function_error: Option<String>,
    /// Whether the environment initialised for this event.
    pub cold_start: bool,
    /// The environment's init duration, on cold starts.
    pub init_duration_ms: Option<f64>,
    /// Environment that ran it.
    pub environment: Arc<str>,
}

impl InvocationResult {
    /// The outcome label for metrics.
    pub fn outcome(&self) -> &'static str {
        if self.function_error.is_some() {
            "function_error"
        } else {
            "success"
        }
    }
}

/// The gateway core, shared by every route and background task.
pub struct Gateway {
    /// Functions and their queues.
    pub registry: Registry,
    /// Client to environments.
    pub client: UpstreamClient,
    /// Metrics.
    pub metrics: Metrics,
    /// Dead letters of async events.
    pub dead_letters: DeadLetters,
    /// Concurrency reports.
    pub reports: ReportHub,
    /// Settings.
    pub config: GatewayConfig,
    /// Async invocations and other background work, awaited at shutdown.
    pub tasks: TaskTracker,
    shutting_down: AtomicBool,
    ready: AtomicBool,
}

impl Gateway {
    /// A gateway with no functions.
    pub fn new(config: GatewayConfig) -> Arc<Self> {
        Arc::new(Gateway {
            registry: Registry::new(config.dispatch.clone()),
            client: UpstreamClient::new(),
            metrics: Metrics::new(),
            dead_letters: DeadLetters::new(config.dead_letter_capacity),
            reports: ReportHub::new(config.gateway_name.clone()),
            config,
            tasks: TaskTracker::new(),
            shutting_down: AtomicBool::new(false),
            ready: AtomicBool::new(false),
        })
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
        self.shutting_down.store(true, Ordering::SeqCst);
        for f in self.registry.all() {
            f.close_waiters();
        }
    }

    /// Whether shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Looks a function up.
    pub fn function(&self, name: &str) -> Result<Arc<FunctionEntry>, GatewayError> {
        self.registry
            .get(name)
            .ok_or_else(|| GatewayError::not_found(name))
    }

    /// Invokes synchronously and records metrics.
    pub async fn invoke(
        &self,
        entry: &Arc<FunctionEntry>,
        payload: Bytes,
        request_id: &str,
        trigger: TriggerKind,
    ) -> Result<InvocationResult, GatewayError> {
        let started = Instant::now();
        let result = self.invoke_inner(entry, payload, request_id).await;
        let outcome = match &result {
            Ok(r) => {
                if r.cold_start {
                    self.metrics
                        .cold_starts
                        .with_label_values(&[entry.name()])
                        .inc();
                }
                r.outcome()
            }
            Err(e) => {
                if let GatewayError::Throttled { .. } | GatewayError::Unavailable { .. } = e {
                    let reason = if matches!(e, GatewayError::Unavailable { .. }) {
                        "no_environment"
                    } else {
                        "concurrency"
                    };
                    self.metrics
                        .throttles
                        .with_label_values(&[entry.name(), reason])
                        .inc();
                }
                e.outcome()
            }
        };
        self.metrics
            .invocations
            .with_label_values(&[entry.name(), trigger.as_str(), outcome])
            .inc();
        self.metrics
            .latency
            .with_label_values(&[entry.name()])
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(r) => tracing::debug!(
                request_id,
                function = entry.name(),
                environment = &*r.environment,
                outcome,
                "invocation finished"
            ),
            Err(e) => tracing::debug!(
                request_id,
                function = entry.name(),
                outcome,
                error = %e,
                "invocation refused"
            ),
        }
        result
    }

    async fn invoke_inner(
        &self,
        entry: &Arc<FunctionEntry>,
        payload: Bytes,
        request_id: &str,
    ) -> Result<InvocationResult, GatewayError> {
        if self.is_shutting_down() {
            return Err(GatewayError::ShuttingDown);
        }
        entry
            .counters
            .invocations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let deadline = Instant::now() + entry.wait_bound(&self.config.dispatch);
        let timeout_secs = entry.spec.timeout_seconds;
        // The shim enforces the function timeout; this only guards against a
        // shim that stops answering.
        let upstream_timeout =
            Duration::from_secs(u64::from(timeout_secs)) + Duration::from_secs(5);
        // Retry elsewhere only when nothing reached a handler.
        for _ in 0..8 {
            let lease = match entry.acquire(deadline).await {
                Ok(lease) => lease,
                Err(e) => {
                    // The platform reports that this function's init fails:
                    // the caller gets that error, as from Lambda.
                    if let Some(body) = entry.current_init_failure() {
                        return Ok(InvocationResult {
                            body,
                            function_error: Some("Unhandled".into()),
                            cold_start: false,
                            init_duration_ms: None,
                            environment: Arc::from("none"),
                        });
                    }
                    return Err(e);
                }
            };
            let env = lease.environment().clone();
            let reply = self
                .client
                .invoke(&env.base_url, request_id, payload.clone(), upstream_timeout)
                .await;
            let done = |body: Bytes,
                        function_error: Option<String>,
                        cold_start: bool,
                        init_duration_ms: Option<f64>| {
                Ok(InvocationResult {
                    body,
                    function_error,
                    cold_start,
                    init_duration_ms,
                    environment: env.id.clone(),
                })
            };
            match reply {
                UpstreamReply::Done {
                    body,
                    function_error,
                    cold_start,
                    init_duration_ms,
                } => return done(body, function_error, cold_start, init_duration_ms),
                UpstreamReply::InitError { body } => {
                    return done(body, Some("Unhandled".into()), true, None);
                }
                UpstreamReply::Died => {
                    tracing::warn!(
                        request_id,
                        function = entry.name(),
                        environment = &*env.id,
                        "environment connection broke during an invocation"
                    );
                    entry.mark_unreachable(&env.id);
                    let body = porchlight_core::LambdaError::new(
                        "Runtime.ExitError",
                        format!("RequestId: {request_id} Error: Runtime exited without providing a reason"),
                    )
                    .to_json();
                    return done(Bytes::from(body), Some("Unhandled".into()), false, None);
                }
                UpstreamReply::TimedOut => {
                    let body = porchlight_core::LambdaError::new(
                        "Sandbox.Timeout",
                        format!("RequestId: {request_id} Error: Task timed out after {timeout_secs}.00 seconds"),
                    )
                    .to_json();
                    return done(Bytes::from(body), Some("Unhandled".into()), false, None);
                }
                UpstreamReply::TooLarge => {
                    return Err(GatewayError::TooLarge {
                        limit: SYNC_PAYLOAD_LIMIT,
                    });
                }
                UpstreamReply::BadRequest { .. } => {
                    return Err(GatewayError::InvalidJson(
                        "the execution environment rejected the payload".into(),
                    ));
                }
                UpstreamReply::Unexpected { status } => {
                    tracing::warn!(request_id, function = entry.name(), %status,
                        "environment answered with an unexpected status");
                    return Err(GatewayError::Service(
                        "The execution environment gave an unexpected answer.".into(),
                    ));
                }
                UpstreamReply::Busy => {
                    drop(lease);
                    tokio::task::yield_now().await;
                }
                UpstreamReply::Unreachable | UpstreamReply::ShuttingDown => {
                    tracing::warn!(
                        request_id,
                        function = entry.name(),
                        environment = &*env.id,
                        "environment unreachable; trying another"
                    );
                    entry.mark_unreachable(&env.id);
                    drop(lease);
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        Err(GatewayError::Service(
            "No execution environment could take the invocation.".into(),
        ))
    }
}
