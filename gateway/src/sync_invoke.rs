//! The synchronous invocation path: take a slot on an environment (waiting,
//! bounded), send the event, turn the answer into a Lambda outcome. The
//! decisions (what an answer means, when to try another environment, what
//! the caller gets without one) are pure functions below the I/O.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use opentelemetry::KeyValue;
use porchlight_core::trace::TraceContext;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::budget::{BudgetExceeded, MemoryBudget, Purpose, SharedHold};
use crate::error::GatewayError;
use crate::forwarded::Forwarded;
use crate::metrics::Metrics;
use crate::registry::{DispatchConfig, EnvironmentInfo, FunctionEntry, Waited};
use crate::telemetry;
use crate::upstream::{ANSWER_ROOM_WAIT, Readiness, UpstreamClient, UpstreamReply};
use porchlight_core::LambdaError;
use porchlight_core::error::fill_request_id;
use porchlight_core::invoke::{InvokeReply, UNHANDLED};

/// Lambda's synchronous payload limit (request and response).
pub const SYNC_PAYLOAD_LIMIT: usize = 6_291_456;
/// Lambda's asynchronous payload limit.
pub const ASYNC_PAYLOAD_LIMIT: usize = 1_048_576;

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
    /// A record of another function's async event (its `onSuccess` or
    /// `onFailure` destination).
    Destination,
    /// A schedule's tick.
    Schedule,
    /// A batch of a queue trigger's messages.
    Queue,
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
            TriggerKind::Destination => "destination",
            TriggerKind::Schedule => "schedule",
            TriggerKind::Queue => "queue",
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
    /// How long the invocation ran in the environment (what is billed).
    pub duration_ms: Option<f64>,
    /// Environment that ran it.
    pub environment: Arc<str>,
    /// The base64 tail of the invocation's log, when it was asked for and
    /// the environment ran the event.
    pub log_result: Option<String>,
    /// The body's bytes, held against the memory budget until the last
    /// clone of it is gone (sent to the caller, or dropped).
    pub held: SharedHold,
    /// How it queued in the gateway for an environment (`None`: it did not).
    pub waited: Option<Waited>,
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

/// Sends invocations to environments and records their outcome.
pub struct SyncInvoker {
    client: UpstreamClient,
    metrics: Metrics,
    dispatch: DispatchConfig,
    shutting_down: AtomicBool,
}

impl SyncInvoker {
    /// An invoker with its own pooled client, holding answers against `budget`.
    pub fn new(dispatch: DispatchConfig, metrics: Metrics, budget: MemoryBudget) -> Self {
        SyncInvoker {
            client: UpstreamClient::with_budget(budget, ANSWER_ROOM_WAIT),
            metrics,
            dispatch,
            shutting_down: AtomicBool::new(false),
        }
    }

    /// Refuses new invocations from now on.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Whether shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Asks an environment whether its init finished.
    pub async fn readiness(&self, base_url: &str) -> Readiness {
        self.client.readiness(base_url).await
    }

    /// Takes an environment out of routing after a failed connection and
    /// probes it in the background: back in routing once `/ready` answers,
    /// given up (its owner replaces it) after [`PROBE_FOR`].
    fn probe_unreachable(&self, entry: &Arc<FunctionEntry>, env: &EnvironmentInfo) {
        if !entry.mark_unreachable(&env.id) {
            return;
        }
        let client = self.client.clone();
        let entry = entry.clone();
        let env = env.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut attempt = 0;
            while started.elapsed() < PROBE_FOR {
                if client.readiness(&env.base_url).await == Readiness::Ready {
                    if entry.recover_environment(&env.id) {
                        tracing::info!(
                            function = entry.name(),
                            environment = &*env.id,
                            "environment answers again; routing to it resumed"
                        );
                    }
                    return;
                }
                attempt += 1;
                tokio::time::sleep(porchlight_core::backoff::exponential(
                    Duration::from_millis(20),
                    attempt,
                    Duration::from_secs(1),
                ))
                .await;
            }
            tracing::warn!(
                function = entry.name(),
                environment = &*env.id,
                "environment does not answer; it is given up"
            );
            entry.lose_environment(&env.id);
        });
    }

    /// Invokes synchronously and records metrics; the environment gets
    /// what `forwarded` carries (trace id, client context, log tail).
    pub async fn invoke(
        &self,
        entry: &Arc<FunctionEntry>,
        payload: Bytes,
        request_id: &str,
        trigger: TriggerKind,
        forwarded: &Forwarded,
    ) -> Result<InvocationResult, GatewayError> {
        let started = Instant::now();
        let result = self
            .invoke_inner(entry, payload, request_id, forwarded)
            .await;
        let outcome = match &result {
            Ok(r) => {
                if r.cold_start {
                    self.metrics
                        .cold_starts
                        .with_label_values(&[entry.name()])
                        .inc();
                }
                if let Some(ms) = r.duration_ms {
                    let (billed, gbs) = entry.meter_invocation(ms, r.init_duration_ms);
                    let m = &self.metrics;
                    m.billed_seconds
                        .with_label_values(&[entry.name()])
                        .inc_by(billed as f64 / 1000.0);
                    m.gb_seconds.with_label_values(&[entry.name()]).inc_by(gbs);
                    if let Some(init) = r.init_duration_ms {
                        m.init_seconds
                            .with_label_values(&[entry.name()])
                            .inc_by(init.max(0.0) / 1000.0);
                    }
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
        forwarded: &Forwarded,
    ) -> Result<InvocationResult, GatewayError> {
        if self.is_shutting_down() {
            return Err(GatewayError::ShuttingDown);
        }
        entry.record_invocation();
        let deadline = Instant::now() + entry.wait_bound(&self.dispatch);
        let timeout_seconds = entry.spec().timeout_seconds;
        let upstream_timeout = upstream_timeout(timeout_seconds);
        let mut unreachable = 0;
        let mut busy = 0;
        let mut waited: Option<Waited> = None;
        loop {
            let resumes = forwarded.resumes.as_ref();
            let acquired = entry
                .acquire(deadline)
                .instrument(telemetry::queue_wait(resumes))
                .await;
            let lease = match acquired {
                Ok(lease) => lease,
                Err(e) => return no_environment(e, entry.current_init_failure(), request_id),
            };
            let acquired = telemetry::enabled().then(SystemTime::now);
            waited = match (waited, lease.waited()) {
                (Some(before), Some(now)) => Some(before.and(now)),
                (before, now) => before.or(now),
            };
            let env = lease.environment().clone();
            let span = telemetry::invoke(&env.id, resumes);
            let pass = forwarded.pass_on(telemetry::traceparent_of(&span));
            // The attempt runs in a task of its own that holds the slot until
            // the environment answers: a caller that goes away must not free
            // a slot the environment is still using.
            let attempt = {
                let client = self.client.clone();
                let payload = payload.clone();
                let request_id = request_id.to_string();
                let base_url = env.base_url.clone();
                tokio::spawn(
                    async move {
                        let answer = client
                            .invoke(&base_url, &request_id, payload, upstream_timeout, &pass)
                            .await;
                        (answer, lease)
                    }
                    .instrument(span),
                )
            };
            let Ok(((reply, held), mut lease)) = attempt.await else {
                return Err(GatewayError::Service(
                    "The invocation ended without an answer.".into(),
                ));
            };
            if let UpstreamReply::Reply(InvokeReply::Unexpected { status, .. }) = &reply {
                tracing::warn!(
                    request_id,
                    function = entry.name(),
                    status,
                    "environment answered with an unexpected status"
                );
            }
            if let UpstreamReply::Reply(InvokeReply::Done { reinit: true, .. }) = &reply {
                lease.environment_reinitialises();
            }
            match next_step(reply, request_id, timeout_seconds, &env.id) {
                Step::Answer(result) => {
                    if let (Ok(r), Some(acquired)) = (&result, acquired) {
                        record_cold_start(r, acquired, resumes);
                    }
                    return result.map(|r| InvocationResult { held, waited, ..r });
                }
                Step::AnswerAndDrain(result) => {
                    tracing::warn!(
                        request_id,
                        function = entry.name(),
                        environment = &*env.id,
                        "environment connection broke during an invocation"
                    );
                    self.probe_unreachable(entry, &env);
                    return Ok(result);
                }
                Step::TryAgain => {
                    // The environment is busy although the gateway counted a
                    // free slot: keep the slot a little while, then queue again.
                    busy += 1;
                    let wait =
                        busy_backoff(busy).min(deadline.saturating_duration_since(Instant::now()));
                    tokio::time::sleep(wait).await;
                    drop(lease);
                }
                Step::TryAnother => {
                    tracing::warn!(
                        request_id,
                        function = entry.name(),
                        environment = &*env.id,
                        "environment unreachable; trying another"
                    );
                    self.probe_unreachable(entry, &env);
                    drop(lease);
                    unreachable += 1;
                    if unreachable >= MAX_DISPATCH_ATTEMPTS {
                        break;
                    }
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

/// The `cold start` span of an answer that waited for an init: the init
/// ended when the environment took the event (it was routed as soon as
/// it was ready), and took the time the environment reports.
fn record_cold_start(r: &InvocationResult, acquired: SystemTime, resumes: Option<&TraceContext>) {
    let (true, Some(init_ms)) = (r.cold_start, r.init_duration_ms) else {
        return;
    };
    let Some(parent) = telemetry::parent_context(resumes) else {
        return;
    };
    let init = Duration::from_secs_f64(init_ms.max(0.0) / 1000.0);
    telemetry::record(
        "cold start",
        &parent,
        acquired.checked_sub(init).unwrap_or(acquired),
        acquired,
        vec![
            KeyValue::new("faas.coldstart", true),
            KeyValue::new("porchlight.init_duration_ms", init_ms),
            KeyValue::new("porchlight.environment", r.environment.to_string()),
        ],
    );
}

/// Environments tried for one invocation while nothing reaches a handler.
const MAX_DISPATCH_ATTEMPTS: usize = 8;

/// How long a busy environment keeps the slot of an event it refused before
/// the event queues again: 5 ms doubling to 200 ms.
pub fn busy_backoff(attempt: u32) -> Duration {
    porchlight_core::backoff::exponential(
        Duration::from_millis(5),
        attempt,
        Duration::from_millis(200),
    )
}

/// How long an unreachable environment is probed before it is given up.
const PROBE_FOR: Duration = Duration::from_secs(10);

/// How long the gateway waits for an environment's answer. The shim enforces
/// the function timeout; this only guards against a shim that stops answering.
pub fn upstream_timeout(timeout_seconds: u32) -> Duration {
    Duration::from_secs(u64::from(timeout_seconds)) + Duration::from_secs(5)
}

/// What the caller gets when no environment took the invocation in time:
/// the init error the platform reports for the function (as Lambda answers
/// a failed init), else the gateway's refusal.
pub fn no_environment(
    refusal: GatewayError,
    init_failure: Option<Bytes>,
    request_id: &str,
) -> Result<InvocationResult, GatewayError> {
    match init_failure {
        Some(body) => Ok(InvocationResult {
            body: fill_request_id(body, request_id),
            function_error: Some(UNHANDLED.into()),
            cold_start: false,
            init_duration_ms: None,
            duration_ms: None,
            environment: Arc::from("none"),
            log_result: None,
            held: SharedHold::default(),
            waited: None,
        }),
        None => Err(refusal),
    }
}

/// What to do after one attempt on an environment.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Answer the caller.
    Answer(Result<InvocationResult, GatewayError>),
    /// The environment broke with the event in hand: answer with Lambda's
    /// error for a runtime that exited, and route nothing more to it.
    AnswerAndDrain(InvocationResult),
    /// The environment was full (the gateway's view was stale): try again.
    TryAgain,
    /// Nothing reached a handler (unreachable, or stopping): route nothing
    /// more to it and try another.
    TryAnother,
}

/// Turns an environment's answer into the next step (pure).
pub fn next_step(
    reply: UpstreamReply,
    request_id: &str,
    timeout_seconds: u32,
    environment: &Arc<str>,
) -> Step {
    let function_error = |body: Bytes, cold_start: bool| InvocationResult {
        body,
        function_error: Some(UNHANDLED.into()),
        cold_start,
        init_duration_ms: None,
        duration_ms: None,
        environment: environment.clone(),
        log_result: None,
        held: SharedHold::default(),
        waited: None,
    };
    match reply {
        UpstreamReply::Reply(InvokeReply::Done {
            body,
            function_error,
            cold_start_ms,
            duration_ms,
            log_result,
            ..
        }) => Step::Answer(Ok(InvocationResult {
            body,
            function_error,
            cold_start: cold_start_ms.is_some(),
            init_duration_ms: cold_start_ms,
            duration_ms,
            environment: environment.clone(),
            log_result,
            held: SharedHold::default(),
            waited: None,
        })),
        UpstreamReply::Reply(InvokeReply::InitError { body }) => Step::Answer(Ok(
            function_error(fill_request_id(body, request_id), true),
        )),
        UpstreamReply::Died => Step::AnswerAndDrain(function_error(
            LambdaError::new(
                "Runtime.ExitError",
                format!("RequestId: {request_id} Error: Runtime exited without providing a reason"),
            )
            .to_json(),
            false,
        )),
        UpstreamReply::ResponseTooLarge => Step::Answer(Ok(function_error(
            LambdaError::new(
                "Function.ResponseSizeTooLarge",
                format!(
                    "Response payload size exceeded maximum allowed payload size ({SYNC_PAYLOAD_LIMIT} bytes)."
                ),
            )
            .to_json(),
            false,
        ))),
        UpstreamReply::TimedOut => Step::Answer(Ok(function_error(
            LambdaError::new(
                "Sandbox.Timeout",
                format!(
                    "RequestId: {request_id} Error: Task timed out after {timeout_seconds}.00 seconds"
                ),
            )
            .to_json(),
            false,
        ))),
        UpstreamReply::Reply(InvokeReply::TooLarge { .. }) => {
            Step::Answer(Err(GatewayError::TooLarge {
                limit: SYNC_PAYLOAD_LIMIT,
            }))
        }
        UpstreamReply::Reply(InvokeReply::BadRequest { .. }) => {
            Step::Answer(Err(GatewayError::InvalidJson(
                "the execution environment rejected the payload".into(),
            )))
        }
        UpstreamReply::Reply(InvokeReply::Unexpected { .. }) => {
            Step::Answer(Err(GatewayError::Service(
                "The execution environment gave an unexpected answer.".into(),
            )))
        }
        UpstreamReply::NoRoom => Step::Answer(Err(BudgetExceeded {
            requested: 0,
            purpose: Purpose::Sync,
        }
        .into())),
        UpstreamReply::Reply(InvokeReply::Busy { .. }) => Step::TryAgain,
        UpstreamReply::Unreachable | UpstreamReply::Reply(InvokeReply::ShuttingDown { .. }) => {
            Step::TryAnother
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(reply: UpstreamReply) -> Step {
        next_step(reply, "r1", 3, &Arc::from("env-1"))
    }

    fn error_type(result: &InvocationResult) -> String {
        let v: serde_json::Value = serde_json::from_slice(&result.body).expect("json");
        v["errorType"].as_str().unwrap_or_default().to_string()
    }

    #[test]
    fn answers_carry_the_function_s_result_and_cold_start() {
        let reply = InvokeReply::ok(Bytes::from_static(b"1"), None).with_cold_start(7.5);
        let Step::Answer(Ok(r)) = step(UpstreamReply::Reply(reply)) else {
            panic!("an answer");
        };
        assert_eq!(&r.body[..], b"1");
        assert!(r.cold_start);
        assert_eq!(r.init_duration_ms, Some(7.5));
        assert_eq!(r.function_error, None);
        assert_eq!(&*r.environment, "env-1");
        let init = InvokeReply::InitError {
            body: Bytes::from_static(b"{}"),
        };
        let Step::Answer(Ok(r)) = step(UpstreamReply::Reply(init)) else {
            panic!("an answer");
        };
        assert_eq!(r.function_error.as_deref(), Some("Unhandled"));
        assert!(r.cold_start);
    }

    #[test]
    fn a_dead_or_silent_environment_is_a_function_error() {
        let Step::AnswerAndDrain(r) = step(UpstreamReply::Died) else {
            panic!("answer and drain");
        };
        assert_eq!(error_type(&r), "Runtime.ExitError");
        let Step::Answer(Ok(r)) = step(UpstreamReply::TimedOut) else {
            panic!("an answer");
        };
        assert_eq!(error_type(&r), "Sandbox.Timeout");
        assert!(String::from_utf8_lossy(&r.body).contains("after 3.00 seconds"));
    }

    #[test]
    fn only_answers_that_reached_no_handler_are_retried() {
        let body = Bytes::new;
        assert_eq!(
            step(UpstreamReply::Reply(InvokeReply::Busy { body: body() })),
            Step::TryAgain
        );
        assert_eq!(step(UpstreamReply::Unreachable), Step::TryAnother);
        assert_eq!(
            step(UpstreamReply::Reply(InvokeReply::ShuttingDown {
                body: body()
            })),
            Step::TryAnother
        );
        assert!(matches!(
            step(UpstreamReply::Reply(InvokeReply::TooLarge { body: body() })),
            Step::Answer(Err(GatewayError::TooLarge { .. }))
        ));
        assert!(matches!(
            step(UpstreamReply::Reply(InvokeReply::BadRequest {
                body: body()
            })),
            Step::Answer(Err(GatewayError::InvalidJson(_)))
        ));
        assert!(matches!(
            step(UpstreamReply::Reply(InvokeReply::Unexpected {
                status: 500,
                body: body()
            })),
            Step::Answer(Err(GatewayError::Service(_)))
        ));
    }

    #[test]
    fn without_an_environment_the_reported_init_error_wins() {
        let refusal = GatewayError::Unavailable {
            retry_after: Duration::from_secs(2),
        };
        assert!(matches!(
            no_environment(refusal.clone(), None, "r1"),
            Err(GatewayError::Unavailable { .. })
        ));
        let r = no_environment(refusal, Some(Bytes::from_static(b"{}")), "r1").expect("init error");
        assert_eq!(r.function_error.as_deref(), Some("Unhandled"));
        assert_eq!(&*r.environment, "none");
    }
}
