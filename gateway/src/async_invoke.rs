//! Asynchronous invocations (`Event`, S3, CloudEvents): accepted into the
//! event queue (`crate::queue`) and answered 202 once stored; one worker per
//! function takes them, runs them through the synchronous path (so they
//! count as demand), and settles each: ack on completion, a retry stored
//! with doubling backoff on a function error (Lambda: two retries, 1 min
//! then 2 min apart), a dead letter once the attempts or the age are spent.
//! Nothing waits in a task during a retry's delay: the event waits in the
//! store, so a stop never waits for it and a restart resumes it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use opentelemetry::KeyValue;
use porchlight_core::backoff;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::budget::{Purpose, Reservation};
use crate::dead_letters::{DeadLetter, DeadLetterList, PageRequest, now_rfc3339};
use crate::error::GatewayError;
use crate::forwarded::Forwarded;
use crate::metrics::Metrics;
use crate::queue::{Delivery, EventQueue, QueueError, StoredEvent, now_ms};
use crate::registry::FunctionEntry;
use crate::sync_invoke::{SyncInvoker, TriggerKind};
use crate::telemetry;

/// Why an attempt failed, and whether it counts as an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum RetryDecision {
    /// Done (success).
    Done,
    /// Retry after this delay.
    RetryAfter(Duration),
    /// Give up: dead letter.
    GiveUp,
}

/// The retry policy (pure): `attempts` made so far, `age` of the event,
/// whether the last failure was a throttle (which Lambda retries without
/// counting it as an attempt, until the event is too old).
pub fn retry_decision(
    attempts: u32,
    throttled: bool,
    age: Duration,
    base: Duration,
    max_attempts: u32,
    max_age: Duration,
) -> RetryDecision {
    if age >= max_age {
        return RetryDecision::GiveUp;
    }
    if throttled {
        // Lambda backs off 1 s to 5 min on throttles; here capped by the base.
        let delay = base
            .min(Duration::from_secs(1))
            .max(Duration::from_millis(10));
        return RetryDecision::RetryAfter(delay.min(max_age - age));
    }
    if attempts >= max_attempts {
        return RetryDecision::GiveUp;
    }
    RetryDecision::RetryAfter(backoff::exponential(base, attempts, Duration::MAX))
}

/// Retries and bounds of async invocations.
#[derive(Clone, Debug)]
pub struct AsyncSettings {
    /// Delay before the first retry; doubled for the second (Lambda: 60 s).
    pub retry_base: Duration,
    /// Attempts of an event that fails (Lambda: 1 + 2 retries).
    pub max_attempts: u32,
    /// Age after which an event is given up (Lambda default: 6 h).
    pub max_age: Duration,
    /// How often a running event is reported as still in progress to its
    /// store (a third of JetStream's ack wait).
    pub progress_every: Duration,
}

/// Most bytes of a function's error kept with a dead letter; a longer one
/// is kept as the start of its text.
pub const DEAD_LETTER_ERROR_LIMIT: usize = 64 * 1024;

/// How a stop went.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stopped {
    /// Events still running when the bound ran out (left stored: they run
    /// again after the next start, or on another gateway).
    pub interrupted: usize,
    /// Whether the store keeps events across a restart.
    pub durable: bool,
    /// Events still in this gateway's own store (not yet run, or waiting
    /// for a retry), when it knows.
    pub stored: Option<usize>,
}

/// The worker of one function entry (a replaced entry gets a new one).
struct Worker {
    entry: Arc<FunctionEntry>,
    stop: CancellationToken,
}

/// Accepts async events into the queue, and runs one worker per function
/// that takes them, runs them through the synchronous path and settles
/// them: ack, retry later, or dead letter.
pub struct AsyncInvoker {
    invoker: Arc<SyncInvoker>,
    metrics: Metrics,
    settings: AsyncSettings,
    queue: Arc<dyn EventQueue>,
    workers: Mutex<HashMap<String, Worker>>,
    tasks: TaskTracker,
    stop: CancellationToken,
    running: AtomicUsize,
}

impl AsyncInvoker {
    /// An invoker over `queue`, with no workers yet.
    pub fn new(
        invoker: Arc<SyncInvoker>,
        metrics: Metrics,
        settings: AsyncSettings,
        queue: Arc<dyn EventQueue>,
    ) -> Self {
        AsyncInvoker {
            invoker,
            metrics,
            settings,
            queue,
            workers: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            running: AtomicUsize::new(0),
        }
    }

    /// The store, for the banner and logs.
    pub fn queue(&self) -> &Arc<dyn EventQueue> {
        &self.queue
    }

    /// One page of the dead letters.
    pub async fn dead_letters(&self, page: &PageRequest) -> Result<DeadLetterList, GatewayError> {
        self.queue.dead_letters(page).await.map_err(|e| {
            tracing::error!(error = %e, "cannot read the dead letters");
            GatewayError::EventStore
        })
    }

    /// Events of `entry` stored and not finished (this gateway's own store),
    /// or those it is running (a shared store).
    pub fn pending(&self, entry: &FunctionEntry) -> u64 {
        match self.queue.stored_for(entry.name()) {
            Some(n) => n as u64,
            None => entry.status().async_pending,
        }
    }

    /// Whether `entry`'s queue may have room for one more event now.
    pub fn has_room(&self, entry: &FunctionEntry) -> bool {
        self.queue.has_room(entry.name())
    }

    /// Stops taking events, lets the events running finish for up to
    /// `bound`, and says how many were still running. Events waiting for a
    /// retry are not waited for: they stay in the store.
    pub async fn finish(&self, bound: Duration) -> Stopped {
        self.stop.cancel();
        self.queue.close();
        self.tasks.close();
        let _ = tokio::time::timeout(bound, self.tasks.wait()).await;
        Stopped {
            interrupted: self.running.load(Ordering::SeqCst),
            durable: self.queue.is_durable(),
            stored: self.queue.stored_events(),
        }
    }

    /// Starts a worker for every function in `functions` that has none
    /// (events stored by an earlier run, or by another gateway, are taken
    /// without waiting for a new one).
    pub fn serve(self: &Arc<Self>, functions: &[Arc<FunctionEntry>]) {
        for entry in functions {
            self.worker_for(entry);
        }
    }

    /// Accepts an async event for `entry`, whose bytes `held` counts:
    /// answered once the store has it, or refused (429 when the function's
    /// queue is full, 503 when the store failed). What `forwarded` carries
    /// is stored with it, for every attempt.
    pub async fn enqueue(
        self: &Arc<Self>,
        entry: &Arc<FunctionEntry>,
        payload: Bytes,
        held: Reservation,
        request_id: String,
        trigger: TriggerKind,
        forwarded: Forwarded,
    ) -> Result<(), GatewayError> {
        self.store(entry, payload, held, request_id, trigger, forwarded, None)
            .await
    }

    /// Accepts the event of a schedule's tick, recording the tick as the
    /// schedule `key`'s last fired with it (see [`EventQueue::publish_tick`]).
    pub async fn enqueue_tick(
        self: &Arc<Self>,
        entry: &Arc<FunctionEntry>,
        payload: Bytes,
        held: Reservation,
        request_id: String,
        key: String,
        tick: i64,
    ) -> Result<(), GatewayError> {
        let forwarded = Forwarded::new_trace(false);
        self.store(
            entry,
            payload,
            held,
            request_id,
            TriggerKind::Schedule,
            forwarded,
            Some((key, tick)),
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn store(
        self: &Arc<Self>,
        entry: &Arc<FunctionEntry>,
        payload: Bytes,
        held: Reservation,
        request_id: String,
        trigger: TriggerKind,
        forwarded: Forwarded,
        tick: Option<(String, i64)>,
    ) -> Result<(), GatewayError> {
        if self.invoker.is_shutting_down() || self.stop.is_cancelled() {
            return Err(GatewayError::ShuttingDown);
        }
        self.worker_for(entry);
        let event =
            StoredEvent::new(request_id, entry.name(), trigger, payload).forwarding(forwarded);
        let request_id = event.request_id.clone();
        let held = held.repurpose(Purpose::Async);
        let stored = match tick {
            Some((key, at)) => self.queue.publish_tick(event, held, key, at).await,
            None => self.queue.publish(event, held).await,
        };
        match stored {
            Ok(()) => {
                if entry.load().ready == 0 {
                    entry.signal_demand();
                }
                Ok(())
            }
            Err(QueueError::Full) => {
                self.metrics
                    .throttles
                    .with_label_values(&[entry.name(), "async_queue_full"])
                    .inc();
                self.metrics
                    .invocations
                    .with_label_values(&[entry.name(), trigger.as_str(), "throttled"])
                    .inc();
                Err(GatewayError::Throttled {
                    retry_after: Duration::from_secs(1),
                    reason: "AsyncQueueFull",
                })
            }
            Err(QueueError::Closed) => Err(GatewayError::ShuttingDown),
            Err(QueueError::Budget) => Err(GatewayError::Throttled {
                retry_after: Duration::from_secs(1),
                reason: "MemoryBudgetExceeded",
            }),
            Err(QueueError::Store(e)) => {
                tracing::error!(%request_id, function = entry.name(), error = %e, "an async event could not be stored; refused");
                self.metrics
                    .invocations
                    .with_label_values(&[entry.name(), trigger.as_str(), "not_stored"])
                    .inc();
                Err(GatewayError::EventStore)
            }
        }
    }

    /// Starts `entry`'s worker unless it has one.
    fn worker_for(self: &Arc<Self>, entry: &Arc<FunctionEntry>) {
        if self.stop.is_cancelled() {
            return;
        }
        let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = workers.get(entry.name())
            && Arc::ptr_eq(&w.entry, entry)
        {
            return;
        }
        // New, or registered anew: the old worker takes nothing more and
        // finishes what it runs.
        let stop = self.stop.child_token();
        if let Some(old) = workers.insert(
            entry.name().to_string(),
            Worker {
                entry: entry.clone(),
                stop: stop.clone(),
            },
        ) {
            old.stop.cancel();
        }
        let this = self.clone();
        let e = entry.clone();
        self.tasks
            .spawn(async move { this.run_worker(e, stop).await });
    }

    async fn run_worker(self: Arc<Self>, entry: Arc<FunctionEntry>, stop: CancellationToken) {
        let mut consumer = loop {
            match self.queue.consumer(entry.name()).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(function = entry.name(), error = %e, "cannot take async events yet; trying again");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
        };
        // Events in flight at once: what the function can run at its maximum scale.
        let settings = entry.settings();
        let parallel = (settings.max_scale as usize)
            .saturating_mul(settings.concurrency_per_environment as usize)
            .clamp(1, 10_000);
        let slots = Arc::new(Semaphore::new(parallel));
        loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                _ = stop.cancelled() => return,
            };
            let room = 1 + slots.available_permits();
            let delivery = tokio::select! {
                d = consumer.next(room) => d,
                _ = stop.cancelled() => return,
            };
            match delivery {
                Ok(Some(delivery)) => {
                    let this = self.clone();
                    let e = entry.clone();
                    this.running.fetch_add(1, Ordering::SeqCst);
                    self.tasks.spawn(async move {
                        this.run_event(&e, delivery).await;
                        this.running.fetch_sub(1, Ordering::SeqCst);
                        drop(permit);
                    });
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(function = entry.name(), error = %e, "cannot take async events; trying again");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
        }
    }

    /// Runs one attempt of a taken event and settles it.
    async fn run_event(&self, entry: &Arc<FunctionEntry>, delivery: Delivery) {
        let Delivery {
            event,
            delivered,
            settle,
        } = delivery;
        let cfg = &self.settings;
        if delivered > 1 {
            tracing::info!(request_id = %event.request_id, function = entry.name(), delivered, "an async event taken before and not settled runs again");
        }
        let pending = entry.try_accept_async(usize::MAX);
        let forwarded = event.forwarded();
        record_queue_wait(&event, &forwarded);
        let invoke = self.invoker.invoke(
            entry,
            event.payload.clone(),
            &event.request_id,
            event.trigger,
            &forwarded,
        );
        tokio::pin!(invoke);
        // A long invocation keeps its event taken.
        let result = loop {
            tokio::select! {
                r = &mut invoke => break r,
                _ = tokio::time::sleep(cfg.progress_every) => {
                    if let Err(e) = settle.in_progress().await {
                        tracing::warn!(request_id = %event.request_id, error = %e, "cannot extend the event's ack wait");
                    }
                }
            }
        };
        let settled = match result {
            Ok(r) if r.function_error.is_none() => settle.ack().await.map(|()| "done"),
            Err(GatewayError::ShuttingDown) => {
                // Not an attempt: it stays stored and runs after the next
                // start (or on another gateway).
                settle.release(Duration::ZERO).await.map(|()| "given back")
            }
            outcome => {
                let (error, throttled) = match outcome {
                    Ok(r) => (error_to_keep(&r.body), false),
                    Err(e) => {
                        let throttled = matches!(
                            e,
                            GatewayError::Throttled { .. } | GatewayError::Unavailable { .. }
                        );
                        let error = serde_json::json!({"errorType": e.error_type(), "errorMessage": e.to_string()});
                        (Bytes::from(error.to_string()), throttled)
                    }
                };
                let attempts = event.attempts + u32::from(!throttled);
                match retry_decision(
                    attempts,
                    throttled,
                    event.age(now_ms()),
                    cfg.retry_base,
                    cfg.max_attempts,
                    cfg.max_age,
                ) {
                    RetryDecision::RetryAfter(delay) if throttled => {
                        settle.release(delay).await.map(|()| "throttled")
                    }
                    RetryDecision::RetryAfter(delay) => {
                        tracing::info!(
                            request_id = %event.request_id,
                            function = entry.name(),
                            attempts,
                            delay_ms = delay.as_millis() as u64,
                            "async invocation failed; retrying"
                        );
                        self.metrics
                            .async_retries
                            .with_label_values(&[entry.name()])
                            .inc();
                        let mut again = event.clone();
                        again.attempts = attempts;
                        settle.retry(again, delay).await.map(|()| "retry stored")
                    }
                    RetryDecision::Done | RetryDecision::GiveUp => {
                        tracing::warn!(
                            request_id = %event.request_id,
                            function = entry.name(),
                            attempts,
                            "async invocation failed every attempt; recorded as a dead letter"
                        );
                        self.metrics
                            .dead_letters
                            .with_label_values(&[entry.name()])
                            .inc();
                        let letter = DeadLetter {
                            function: entry.name().to_string(),
                            request_id: event.request_id.clone(),
                            trigger: event.trigger.as_str(),
                            event: event.payload.clone(),
                            error,
                            attempts,
                            time: now_rfc3339(),
                        };
                        settle.dead_letter(letter).await.map(|evicted| {
                            if evicted > 0 {
                                self.metrics.dead_letters_evicted.inc_by(evicted);
                            }
                            "dead-lettered"
                        })
                    }
                }
            }
        };
        if let Err(e) = settled {
            // Left as it was in the store: it is handed out again.
            tracing::warn!(request_id = %event.request_id, function = entry.name(), error = %e, "cannot settle an async event; it will run again");
        }
        if pending {
            entry.async_finished();
        }
    }
}

/// The `queue wait` span of an async event: from when it was accepted (or
/// its retry was due) until a worker took it.
fn record_queue_wait(event: &StoredEvent, forwarded: &Forwarded) {
    if !telemetry::enabled() {
        return;
    }
    let Some(parent) = telemetry::parent_context(forwarded.resumes.as_ref()) else {
        return;
    };
    let since = event.accepted_at_ms.max(event.not_before_ms);
    telemetry::record(
        "queue wait",
        &parent,
        UNIX_EPOCH + Duration::from_millis(since),
        SystemTime::now(),
        vec![
            KeyValue::new("porchlight.queue", "async"),
            KeyValue::new("porchlight.attempt", i64::from(event.attempts) + 1),
        ],
    );
}

/// A function's error as it is kept with a dead letter: its JSON, or the
/// start of it as a string when it is not JSON or too long; copied, so that
/// it holds no larger buffer.
fn error_to_keep(body: &[u8]) -> Bytes {
    if body.len() <= DEAD_LETTER_ERROR_LIMIT
        && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
    {
        return Bytes::copy_from_slice(body);
    }
    let start = &body[..body.len().min(DEAD_LETTER_ERROR_LIMIT)];
    let text = serde_json::Value::String(String::from_utf8_lossy(start).into_owned());
    Bytes::from(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_kept_as_json_and_bounded() {
        assert_eq!(&error_to_keep(br#"{"a":1}"#)[..], br#"{"a":1}"#);
        assert_eq!(&error_to_keep(b"boom")[..], br#""boom""#);
        let long = format!("\"{}\"", "x".repeat(DEAD_LETTER_ERROR_LIMIT * 2));
        let kept = error_to_keep(long.as_bytes());
        assert!(kept.len() <= DEAD_LETTER_ERROR_LIMIT + 16);
        assert!(serde_json::from_slice::<serde_json::Value>(&kept).is_ok());
    }

    #[test]
    fn lambda_retry_schedule() {
        let base = Duration::from_secs(60);
        let age = Duration::from_secs(1);
        let max_age = Duration::from_secs(6 * 3600);
        assert_eq!(
            retry_decision(1, false, age, base, 3, max_age),
            RetryDecision::RetryAfter(Duration::from_secs(60))
        );
        assert_eq!(
            retry_decision(2, false, age, base, 3, max_age),
            RetryDecision::RetryAfter(Duration::from_secs(120))
        );
        assert_eq!(
            retry_decision(3, false, age, base, 3, max_age),
            RetryDecision::GiveUp
        );
        // Throttles do not use up attempts but expire with the event.
        assert!(matches!(
            retry_decision(3, true, age, base, 3, max_age),
            RetryDecision::RetryAfter(_)
        ));
        assert_eq!(
            retry_decision(0, true, max_age, base, 3, max_age),
            RetryDecision::GiveUp
        );
    }
}
