//! The execution environment's state machine: init phases, the invocation
//! queue between the invoke endpoint and the runtime's `/next`, outcomes,
//! timeouts and freezing.
//!
//! All state sits behind one mutex that is never held across an `.await`.
//! Waiters are woken through a `watch` counter (phase and admission changes),
//! a `Notify` for events handed to `/next`, and a `Notify` for the supervisor
//! that owns the runtime process (see `supervisor.rs`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderValue;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use porchlight_core::LambdaError;
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::config::Settings;
use crate::error::NormalisedError;
use crate::logs::{FlushRequest, LogSink, LogTail, Stream};
use crate::metrics::{ErrorClass, InvocationOutcome, Metrics, RestartReason, ThawReason};
use crate::process;

/// Where the environment is in its lifecycle.
#[derive(Debug, Clone)]
pub enum Phase {
    /// The runtime of `generation` runs its init.
    Starting {
        generation: u64,
        since: Instant,
    },
    /// The runtime of `generation` asked for an event: init finished.
    Ready {
        generation: u64,
    },
    /// The init of `generation` failed; `reported` once an invocation got the error.
    InitFailed {
        generation: u64,
        error: NormalisedError,
        reported: bool,
    },
    /// Between a runtime's end and the start of the next one.
    Restarting,
    ShuttingDown,
}

/// What the runtime answered for one invocation.
#[derive(Debug)]
pub enum RuntimeAnswer {
    Response {
        body: Bytes,
        content_type: Option<HeaderValue>,
    },
    Error(NormalisedError),
    ResponseTooLarge,
    /// The runtime process ended while the invocation was in flight.
    Exited {
        status: String,
    },
}

/// How an invocation ended, as seen by the invoker.
#[derive(Debug)]
pub enum Outcome {
    Answer(RuntimeAnswer),
    Timeout,
    InitError(NormalisedError),
    Throttled,
    ShuttingDown,
    DuplicateRequestId,
}

/// An event admitted for invocation.
#[derive(Debug, Clone)]
pub struct InvokeRequest {
    pub request_id: Arc<str>,
    pub event: Bytes,
    pub trace_id: String,
    pub client_context: Option<String>,
    /// The caller wants the invocation's log tail.
    pub log_tail: bool,
}

/// The result of [`Environment::invoke`].
#[derive(Debug)]
pub struct InvokeResult {
    pub outcome: Outcome,
    /// Init duration when this was the first invocation after an init.
    pub cold_start: Option<Duration>,
    /// Time from handing the event over to the answer (None if never handed over).
    pub duration: Option<Duration>,
}

/// An event handed to the runtime by `/next`.
#[derive(Debug, Clone)]
pub struct NextEvent {
    pub request_id: Arc<str>,
    pub event: Bytes,
    pub deadline_ms: u64,
    pub trace_id: String,
    pub client_context: Option<String>,
}

/// Runtime API refusals, mapped to Lambda's status codes by `runtime_api.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiRefusal {
    /// 400 `InvalidRequestID`.
    InvalidRequestId,
    /// 403 `InvalidStateTransition`.
    InvalidStateTransition,
}

/// Why the supervisor must stop the current runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    Timeout,
}

#[derive(Debug)]
struct Invocation {
    generation: u64,
    delivered: bool,
    event: NextEvent,
    responder: oneshot::Sender<RuntimeAnswer>,
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    generation: u64,
    pgid: Option<Pid>,
    frozen: bool,
    init_duration: Duration,
    cold_start_claimed: bool,
    /// Error posted to `/init/error` by the current runtime.
    init_error: Option<NormalisedError>,
    /// `/next` calls of the current generation waiting for an event.
    next_waiters: usize,
    /// Invocations handed to the runtime and not answered yet.
    delivered: usize,
    queue: VecDeque<Arc<str>>,
    invocations: HashMap<Arc<str>, Invocation>,
    /// Invocations admitted and not finished (queued, waiting for init, in flight).
    admitted: usize,
    current_request_id: Option<Arc<str>>,
    /// The logs of invocations whose caller asked for a log tail.
    tails: HashMap<Arc<str>, LogTail>,
    /// Flush requests to the output pumps of the current runtime.
    output_flushes: Vec<mpsc::Sender<FlushRequest>>,
    restart_requested: bool,
    kill_requested: Option<(u64, KillReason)>,
}

/// One execution environment.
pub struct Environment {
    pub settings: Settings,
    pub metrics: Metrics,
    pub logs: LogSink,
    inner: Mutex<Inner>,
    event_ready: Notify,
    supervisor_wake: Notify,
    changed: watch::Sender<u64>,
}

impl Environment {
    pub fn new(settings: Settings) -> Arc<Self> {
        let config = &settings.config;
        let logs = LogSink::new(&config.function_name, config.local_logs, config.quiet);
        Arc::new(Self {
            settings,
            metrics: Metrics::new(),
            logs,
            inner: Mutex::new(Inner {
                phase: Phase::Restarting,
                generation: 0,
                pgid: None,
                frozen: false,
                init_duration: Duration::ZERO,
                cold_start_claimed: false,
                init_error: None,
                next_waiters: 0,
                delivered: 0,
                queue: VecDeque::new(),
                invocations: HashMap::new(),
                admitted: 0,
                current_request_id: None,
                tails: HashMap::new(),
                output_flushes: Vec::new(),
                restart_requested: false,
                kill_requested: None,
            }),
            event_ready: Notify::new(),
            supervisor_wake: Notify::new(),
            changed: watch::Sender::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the state half-written
        // in a way that matters more than stopping would: keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub fn phase(&self) -> Phase {
        self.lock().phase.clone()
    }

    pub fn is_shutting_down(&self) -> bool {
        matches!(self.lock().phase, Phase::ShuttingDown)
    }

    pub fn admitted(&self) -> usize {
        self.lock().admitted
    }

    /// One line of the runtime's output: to the log, and to the log tail
    /// of the invocation in flight if its caller asked for one.
    pub fn runtime_output(&self, stream: Stream, line: &[u8]) {
        let request_id = {
            let mut inner = self.lock();
            let inner = &mut *inner;
            if let Some(id) = &inner.current_request_id
                && let Some(tail) = inner.tails.get_mut(id)
            {
                tail.push_line(line);
            }
            inner.current_request_id.clone()
        };
        self.logs.runtime_line(stream, request_id.as_deref(), line);
    }

    /// Where the output pumps of the runtime of `generation` take flush requests.
    pub fn set_output_flushes(&self, generation: u64, flushes: Vec<mpsc::Sender<FlushRequest>>) {
        let mut inner = self.lock();
        if inner.generation == generation {
            inner.output_flushes = flushes;
        }
    }

    /// Before the invocation `id` ends: when its caller wants its log tail,
    /// waits (briefly) until the output the runtime wrote so far was read.
    pub async fn flush_output_of(&self, id: &str) {
        let flushes = {
            let inner = self.lock();
            if !inner.tails.contains_key(id) {
                return;
            }
            inner.output_flushes.clone()
        };
        // Bounded as a whole: a pump stuck writing to a full stdout must
        // not hold the runtime's answer.
        let _ = tokio::time::timeout(OUTPUT_FLUSH_WAIT, flush_all(flushes)).await;
    }

    /// Takes the log of invocation `id` kept for its caller, if one asked.
    pub fn take_log_tail(&self, id: &str) -> Option<LogTail> {
        self.lock().tails.remove(id)
    }

    #[cfg(test)]
    pub fn next_waiters(&self) -> usize {
        self.lock().next_waiters
    }

    /// Process id of the runtime's leader (= its process group id).
    pub fn runtime_leader(&self) -> Option<Pid> {
        self.lock().pgid
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    // ----- supervisor side -------------------------------------------------

    /// Starts a new generation: a fresh runtime process begins its init.
    pub fn begin_generation(&self) -> u64 {
        let mut inner = self.lock();
        if matches!(inner.phase, Phase::ShuttingDown) {
            return inner.generation;
        }
        inner.generation += 1;
        let generation = inner.generation;
        inner.phase = Phase::Starting {
            generation,
            since: Instant::now(),
        };
        inner.pgid = None;
        inner.frozen = false;
        inner.cold_start_claimed = false;
        inner.init_error = None;
        inner.next_waiters = 0;
        inner.restart_requested = false;
        inner.kill_requested = None;
        inner.output_flushes.clear();
        drop(inner);
        self.bump();
        generation
    }

    pub fn set_process_group(&self, generation: u64, pgid: Pid) {
        let mut inner = self.lock();
        if inner.generation == generation {
            inner.pgid = Some(pgid);
        }
    }

    pub fn is_ready(&self, generation: u64) -> bool {
        matches!(self.lock().phase, Phase::Ready { generation: g } if g == generation)
    }

    pub fn init_error_posted(&self, generation: u64) -> bool {
        let inner = self.lock();
        inner.generation == generation && inner.init_error.is_some()
    }

    pub async fn supervisor_woken(&self) {
        self.supervisor_wake.notified().await;
    }

    /// Records a failed init; the error goes to the next invocation and /ready.
    pub fn init_failed(&self, generation: u64, fallback: LambdaError) -> NormalisedError {
        let mut inner = self.lock();
        let error = inner
            .init_error
            .take()
            .unwrap_or_else(|| NormalisedError::from_lambda(&fallback));
        if inner.generation == generation && !matches!(inner.phase, Phase::ShuttingDown) {
            inner.phase = Phase::InitFailed {
                generation,
                error: error.clone(),
                reported: false,
            };
        }
        inner.pgid = None;
        drop(inner);
        self.metrics.init(false);
        self.metrics.error(ErrorClass::Init);
        self.bump();
        error
    }

    /// Takes a restart request made by an invocation after a failed init.
    pub fn take_restart_request(&self) -> bool {
        std::mem::take(&mut self.lock().restart_requested)
    }

    pub fn take_kill_request(&self, generation: u64) -> Option<KillReason> {
        let mut inner = self.lock();
        match inner.kill_requested {
            Some((g, reason)) if g == generation => {
                inner.kill_requested = None;
                Some(reason)
            }
            Some(_) => {
                inner.kill_requested = None;
                None
            }
            None => None,
        }
    }

    /// The runtime of `generation` is gone: every invocation it held fails
    /// with `Runtime.ExitError`, and the environment waits for a new runtime.
    pub fn runtime_ended(&self, generation: u64, status: &str) {
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        let ids: Vec<Arc<str>> = inner
            .invocations
            .iter()
            .filter(|(_, inv)| inv.generation == generation)
            .map(|(id, _)| id.clone())
            .collect();
        let mut failed = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(inv) = remove_invocation(&mut inner, &id) {
                failed.push(inv);
            }
        }
        inner.queue.clear();
        inner.pgid = None;
        inner.frozen = false;
        inner.next_waiters = 0;
        if !matches!(inner.phase, Phase::ShuttingDown | Phase::InitFailed { .. }) {
            inner.phase = Phase::Restarting;
        }
        drop(inner);
        for inv in failed {
            let _ = inv.responder.send(RuntimeAnswer::Exited {
                status: status.to_owned(),
            });
        }
        self.bump();
    }

    /// Resumes a frozen runtime before it is stopped, so that its SIGTERM
    /// handlers run (a stopped process only handles a signal once it runs).
    pub fn thaw_for_stop(&self) {
        let mut inner = self.lock();
        self.thaw(&mut inner, ThawReason::Shutdown);
    }

    /// Stops (SIGSTOP) every process of the idle runtime: like Lambda's
    /// freeze, nothing of it runs until the next event or the stop.
    /// Called with the lock held, so that a thaw cannot overtake it.
    fn freeze(&self, inner: &mut Inner) {
        if inner.frozen {
            return;
        }
        let Some(pgid) = inner.pgid else {
            return;
        };
        process::signal_group(pgid, Signal::SIGSTOP);
        inner.frozen = true;
        self.metrics.freezes.inc();
    }

    /// Resumes (SIGCONT) the frozen runtime; nothing when it runs.
    fn thaw(&self, inner: &mut Inner, reason: ThawReason) {
        if !std::mem::take(&mut inner.frozen) {
            return;
        }
        let Some(pgid) = inner.pgid else {
            return;
        };
        let started = Instant::now();
        process::signal_group(pgid, Signal::SIGCONT);
        self.metrics
            .thaw_duration
            .observe(started.elapsed().as_secs_f64());
        self.metrics.thaw(reason);
    }

    /// Enters shutdown: /ready turns false, new invocations get 503.
    pub fn begin_shutdown(&self) {
        let mut inner = self.lock();
        inner.phase = Phase::ShuttingDown;
        drop(inner);
        self.bump();
    }

    // ----- Runtime API side ------------------------------------------------

    /// `GET /next` of the runtime of `generation`: blocks until an event arrives.
    pub async fn next_event(&self, generation: u64) -> Result<NextEvent, ApiRefusal> {
        let _waiter = {
            let mut inner = self.lock();
            if inner.generation != generation {
                return Err(ApiRefusal::InvalidStateTransition);
            }
            if let Phase::Starting {
                generation: g,
                since,
            } = inner.phase
                && g == generation
            {
                inner.init_duration = since.elapsed();
                inner.phase = Phase::Ready { generation };
                let init = inner.init_duration;
                drop(inner);
                self.metrics.init(true);
                self.metrics.init_duration.observe(init.as_secs_f64());
                self.supervisor_wake.notify_one();
                self.bump();
                inner = self.lock();
            }
            if inner.next_waiters + inner.delivered >= self.settings.concurrency {
                return Err(ApiRefusal::InvalidStateTransition);
            }
            inner.next_waiters += 1;
            WaiterGuard {
                env: self,
                generation,
            }
        };
        loop {
            let notified = self.event_ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut inner = self.lock();
                if inner.generation != generation {
                    return Err(ApiRefusal::InvalidStateTransition);
                }
                while let Some(id) = inner.queue.pop_front() {
                    let inner = &mut *inner;
                    if let Some(inv) = inner.invocations.get_mut(&id)
                        && inv.generation == generation
                        && !inv.delivered
                    {
                        inv.delivered = true;
                        let event = inv.event.clone();
                        inner.delivered += 1;
                        inner.current_request_id = Some(id);
                        return Ok(event);
                    }
                }
                if self.settings.config.freeze
                    && inner.delivered == 0
                    && !matches!(inner.phase, Phase::ShuttingDown)
                {
                    self.freeze(&mut inner);
                }
            }
            notified.await;
        }
    }

    /// Checks that `id` is an invocation the runtime of `generation` may answer.
    pub fn check_answerable(&self, generation: u64, id: &str) -> Result<(), ApiRefusal> {
        let inner = self.lock();
        match inner.invocations.get(id) {
            Some(inv) if inv.generation == generation && inv.delivered => Ok(()),
            _ => Err(ApiRefusal::InvalidRequestId),
        }
    }

    /// `/response` or `/error` for `id`: completes the invocation once.
    pub fn answer(
        &self,
        generation: u64,
        id: &str,
        answer: RuntimeAnswer,
    ) -> Result<(), ApiRefusal> {
        let mut inner = self.lock();
        match inner.invocations.get(id) {
            Some(inv) if inv.generation == generation && inv.delivered => {}
            _ => return Err(ApiRefusal::InvalidRequestId),
        }
        let inv = remove_invocation(&mut inner, id).ok_or(ApiRefusal::InvalidRequestId)?;
        drop(inner);
        let _ = inv.responder.send(answer);
        Ok(())
    }

    /// `/init/error`: kept and reported as the init error of `generation`.
    pub fn post_init_error(
        &self,
        generation: u64,
        error: NormalisedError,
    ) -> Result<(), ApiRefusal> {
        let mut inner = self.lock();
        match inner.phase {
            Phase::Starting { generation: g, .. } if g == generation => {
                if inner.init_error.is_none() {
                    inner.init_error = Some(error);
                }
                drop(inner);
                self.supervisor_wake.notify_one();
                Ok(())
            }
            _ => Err(ApiRefusal::InvalidStateTransition),
        }
    }

    // ----- invoke side -----------------------------------------------------

    /// Runs one invocation: admission, waiting for init, handing the event to
    /// the runtime and waiting for its answer within the function timeout.
    pub async fn invoke(self: &Arc<Self>, request: InvokeRequest) -> InvokeResult {
        let not_cold = |outcome| InvokeResult {
            outcome,
            cold_start: None,
            duration: None,
        };
        // Admission.
        {
            let mut inner = self.lock();
            if let Err(refusal) = admission(
                &inner.phase,
                inner.admitted,
                self.settings.concurrency,
                inner.invocations.contains_key(&request.request_id),
            ) {
                return not_cold(refusal);
            }
            inner.admitted += 1;
        }
        self.metrics.in_flight.inc();
        let _admission = AdmissionGuard { env: self };

        // Wait for a ready runtime, then queue the event.
        let mut changes = self.changed.subscribe();
        let mut saw_init = false;
        let mut restart_after: Option<u64> = None;
        let (receiver, generation, queued_at, cold_start) = loop {
            {
                let mut inner = self.lock();
                match &mut inner.phase {
                    Phase::Ready { generation } => {
                        let generation = *generation;
                        break self.enqueue(&mut inner, generation, &request);
                    }
                    Phase::Starting { .. } | Phase::Restarting => saw_init = true,
                    Phase::InitFailed {
                        generation,
                        error,
                        reported,
                    } => {
                        match after_init_failure(*generation, *reported, saw_init, restart_after) {
                            AfterInitFailure::Report => {
                                *reported = true;
                                return not_cold(Outcome::InitError(error.clone()));
                            }
                            AfterInitFailure::RetryInit => {
                                restart_after = Some(*generation);
                                inner.restart_requested = true;
                                drop(inner);
                                self.metrics.restart(RestartReason::InitRetry);
                                self.supervisor_wake.notify_one();
                            }
                            AfterInitFailure::Wait => {}
                        }
                    }
                    Phase::ShuttingDown => return not_cold(Outcome::ShuttingDown),
                }
            }
            if changes.changed().await.is_err() {
                return not_cold(Outcome::ShuttingDown);
            }
        };

        let mut receiver = receiver;
        let deadline = queued_at + self.settings.timeout;
        let answer = match tokio::time::timeout_at(deadline.into(), &mut receiver).await {
            Ok(answer) => answer.ok(),
            Err(_elapsed) => {
                self.flush_output_of(&request.request_id).await;
                let mut inner = self.lock();
                if remove_invocation(&mut inner, &request.request_id).is_some() {
                    inner.kill_requested = Some((generation, KillReason::Timeout));
                    // No further event may reach the runtime about to be killed.
                    if matches!(inner.phase, Phase::Ready { generation: g } if g == generation) {
                        inner.phase = Phase::Restarting;
                    }
                    drop(inner);
                    self.bump();
                    self.supervisor_wake.notify_one();
                    return InvokeResult {
                        outcome: Outcome::Timeout,
                        cold_start,
                        duration: Some(queued_at.elapsed()),
                    };
                }
                // The answer arrived together with the deadline.
                drop(inner);
                receiver.try_recv().ok()
            }
        };
        let answer = answer.unwrap_or(RuntimeAnswer::Exited {
            status: "unknown".to_owned(),
        });
        InvokeResult {
            outcome: Outcome::Answer(answer),
            cold_start,
            duration: Some(queued_at.elapsed()),
        }
    }

    fn enqueue(
        &self,
        inner: &mut Inner,
        generation: u64,
        request: &InvokeRequest,
    ) -> (
        oneshot::Receiver<RuntimeAnswer>,
        u64,
        Instant,
        Option<Duration>,
    ) {
        let (responder, receiver) = oneshot::channel();
        let now = Instant::now();
        let deadline_ms = (SystemTime::now() + self.settings.timeout)
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let cold_start = if inner.cold_start_claimed {
            None
        } else {
            inner.cold_start_claimed = true;
            Some(inner.init_duration)
        };
        let start = format!("START RequestId: {} Version: $LATEST", request.request_id);
        if request.log_tail {
            let mut tail = LogTail::default();
            tail.push_line(start.as_bytes());
            inner.tails.insert(request.request_id.clone(), tail);
        }
        let event = NextEvent {
            request_id: request.request_id.clone(),
            event: request.event.clone(),
            deadline_ms,
            trace_id: request.trace_id.clone(),
            client_context: request.client_context.clone(),
        };
        inner.invocations.insert(
            request.request_id.clone(),
            Invocation {
                generation,
                delivered: false,
                event,
                responder,
            },
        );
        inner.queue.push_back(request.request_id.clone());
        self.thaw(inner, ThawReason::Invocation);
        self.logs.platform_line(&start);
        self.event_ready.notify_one();
        (receiver, generation, now, cold_start)
    }

    /// Marks `generation` ready without a runtime process (tests of the
    /// Runtime API state machine).
    #[cfg(test)]
    pub fn force_ready(&self) -> u64 {
        let generation = self.begin_generation();
        self.lock().phase = Phase::Ready { generation };
        self.bump();
        generation
    }
}

/// Longest an invocation's end waits for the runtime's output to be read.
const OUTPUT_FLUSH_WAIT: Duration = Duration::from_millis(250);

/// Asks every pump to read what its pipe holds and waits until each has
/// (an ended pump answers at once).
async fn flush_all(flushes: Vec<mpsc::Sender<FlushRequest>>) {
    let mut acks = Vec::with_capacity(flushes.len());
    for flush in flushes {
        let (done, ack) = oneshot::channel();
        if flush.send(done).await.is_ok() {
            acks.push(ack);
        }
    }
    for ack in acks {
        let _ = ack.await;
    }
}

/// Whether an invocation may start: refused while stopping, when the
/// environment already runs its concurrency, or when its request id is in
/// flight already.
fn admission(
    phase: &Phase,
    admitted: usize,
    concurrency: usize,
    duplicate: bool,
) -> Result<(), Outcome> {
    if matches!(phase, Phase::ShuttingDown) {
        Err(Outcome::ShuttingDown)
    } else if admitted >= concurrency {
        Err(Outcome::Throttled)
    } else if duplicate {
        Err(Outcome::DuplicateRequestId)
    } else {
        Ok(())
    }
}

/// What an invocation waiting for init does when it finds the init failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterInitFailure {
    /// Answer with the init error.
    Report,
    /// Ask the supervisor for a new init, then wait for it.
    RetryInit,
    /// Keep waiting for the init already asked for.
    Wait,
}

/// Lambda's behaviour after a failed init: the invocation that waited for
/// that init (`saw_init`), or the first one to find it (`!reported`), gets
/// the error; a later one retries the init once and gets the error of the
/// retried init (a `failed_generation` newer than `retried_after`).
fn after_init_failure(
    failed_generation: u64,
    reported: bool,
    saw_init: bool,
    retried_after: Option<u64>,
) -> AfterInitFailure {
    let fresh = retried_after.is_some_and(|g| failed_generation > g);
    if !reported || saw_init || fresh {
        AfterInitFailure::Report
    } else if retried_after.is_none() {
        AfterInitFailure::RetryInit
    } else {
        AfterInitFailure::Wait
    }
}

fn remove_invocation(inner: &mut Inner, id: &str) -> Option<Invocation> {
    let inv = inner.invocations.remove(id)?;
    if inv.delivered {
        inner.delivered = inner.delivered.saturating_sub(1);
    }
    if inner.current_request_id.as_deref() == Some(id) {
        inner.current_request_id = None;
    }
    Some(inv)
}

/// Counts a `/next` call as waiting while it lives.
struct WaiterGuard<'a> {
    env: &'a Environment,
    generation: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        let mut inner = self.env.lock();
        if inner.generation == self.generation {
            inner.next_waiters = inner.next_waiters.saturating_sub(1);
        }
    }
}

/// Holds one unit of the environment's concurrency while it lives.
struct AdmissionGuard<'a> {
    env: &'a Environment,
}

impl Drop for AdmissionGuard<'_> {
    fn drop(&mut self) {
        let mut inner = self.env.lock();
        inner.admitted = inner.admitted.saturating_sub(1);
        drop(inner);
        self.env.metrics.in_flight.dec();
        self.env.bump();
    }
}

/// Maps an outcome to the metric outcome label.
pub fn outcome_label(outcome: &Outcome) -> InvocationOutcome {
    match outcome {
        Outcome::Answer(RuntimeAnswer::Response { .. }) => InvocationOutcome::Success,
        Outcome::Answer(RuntimeAnswer::Error(_))
        | Outcome::Answer(RuntimeAnswer::ResponseTooLarge) => InvocationOutcome::Error,
        Outcome::Answer(RuntimeAnswer::Exited { .. }) => InvocationOutcome::Crash,
        Outcome::Timeout => InvocationOutcome::Timeout,
        Outcome::InitError(_) => InvocationOutcome::InitError,
        Outcome::Throttled => InvocationOutcome::Throttled,
        Outcome::ShuttingDown | Outcome::DuplicateRequestId => InvocationOutcome::Rejected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_refuses_in_lambda_s_order() {
        let ready = Phase::Ready { generation: 1 };
        assert!(admission(&ready, 0, 1, false).is_ok());
        assert!(admission(&Phase::Restarting, 1, 2, false).is_ok());
        assert!(matches!(
            admission(&Phase::ShuttingDown, 5, 1, true),
            Err(Outcome::ShuttingDown)
        ));
        assert!(matches!(
            admission(&ready, 1, 1, true),
            Err(Outcome::Throttled)
        ));
        assert!(matches!(
            admission(&ready, 0, 1, true),
            Err(Outcome::DuplicateRequestId)
        ));
    }

    #[test]
    fn a_failed_init_is_reported_then_retried_once() {
        use AfterInitFailure::*;
        // The first invocation to find it, or one that waited for it, reports it.
        assert_eq!(after_init_failure(1, false, false, None), Report);
        assert_eq!(after_init_failure(1, true, true, None), Report);
        // A later one retries the init, once.
        assert_eq!(after_init_failure(1, true, false, None), RetryInit);
        assert_eq!(after_init_failure(1, true, false, Some(1)), Wait);
        // The retried init failed too: that error is reported.
        assert_eq!(after_init_failure(2, true, false, Some(1)), Report);
    }
}
