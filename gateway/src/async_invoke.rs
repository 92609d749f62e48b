//! Asynchronous invocations (`Event`, S3, CloudEvents): a bounded queue per
//! function, retries on function error with doubling backoff (Lambda: two
//! retries, 1 min then 2 min apart), and dead letters for events that fail
//! every attempt. An event's bytes are held against the memory budget from
//! acceptance until it is answered, and then by its dead letter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use porchlight_core::backoff;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::budget::{Purpose, Reservation};
use crate::dead_letters::{DeadLetter, DeadLetterList, DeadLetters, PageRequest, now_rfc3339};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::registry::FunctionEntry;
use crate::sync_invoke::{SyncInvoker, TriggerKind};

/// One accepted async event.
#[derive(Debug)]
pub struct AsyncEvent {
    /// The gateway's request id.
    pub request_id: String,
    /// The event JSON.
    pub payload: Bytes,
    /// Source of the event.
    pub trigger: TriggerKind,
    /// When it was accepted.
    pub accepted_at: Instant,
    /// The payload's bytes, held against the memory budget.
    pub held: Reservation,
}

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

/// Retries and queue bounds of async invocations.
#[derive(Clone, Debug)]
pub struct AsyncSettings {
    /// Delay before the first retry; doubled for the second (Lambda: 60 s).
    pub retry_base: Duration,
    /// Attempts of an event that fails (Lambda: 1 + 2 retries).
    pub max_attempts: u32,
    /// Age after which an event is given up (Lambda default: 6 h).
    pub max_age: Duration,
    /// Events accepted but not finished, per function.
    pub queue_depth: usize,
    /// Dead letters kept (oldest evicted first, and counted).
    pub dead_letter_capacity: usize,
    /// Bytes of dead letters kept (oldest evicted first, and counted).
    pub dead_letter_bytes: usize,
}

/// Most bytes of a function's error kept with a dead letter; a longer one
/// is kept as the start of its text.
pub const DEAD_LETTER_ERROR_LIMIT: usize = 64 * 1024;

/// The queue of one function and the entry its worker serves.
struct Queue {
    entry: Arc<FunctionEntry>,
    tx: mpsc::Sender<AsyncEvent>,
}

/// Accepts async events, runs them through the synchronous path with
/// retries, and keeps the dead letters.
pub struct AsyncInvoker {
    invoker: Arc<SyncInvoker>,
    metrics: Metrics,
    settings: AsyncSettings,
    dead_letters: DeadLetters,
    /// One queue and worker per function entry (a replaced entry gets a new one).
    queues: Mutex<HashMap<String, Queue>>,
    tasks: TaskTracker,
}

impl AsyncInvoker {
    /// An invoker with no queues yet.
    pub fn new(invoker: Arc<SyncInvoker>, metrics: Metrics, settings: AsyncSettings) -> Self {
        AsyncInvoker {
            invoker,
            metrics,
            dead_letters: DeadLetters::new(
                settings.dead_letter_capacity,
                settings.dead_letter_bytes,
            ),
            settings,
            queues: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
        }
    }

    /// One page of the dead letters.
    pub fn dead_letters(&self, page: &PageRequest) -> DeadLetterList {
        self.dead_letters.page(page)
    }

    /// Whether `entry`'s queue has room for one more event now.
    pub fn has_room(&self, entry: &FunctionEntry) -> bool {
        entry.status().async_pending < self.settings.queue_depth as u64
    }

    /// Stops taking work and waits up to `bound` for events in flight;
    /// returns false when some were abandoned.
    pub async fn finish(&self, bound: Duration) -> bool {
        // Without their senders the workers end once their queues are empty;
        // with them, every worker would wait forever and so would this.
        self.queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.tasks.close();
        tokio::time::timeout(bound, self.tasks.wait()).await.is_ok()
    }

    /// Accepts an async event for `entry`, whose bytes `held` counts:
    /// queued, or refused with 429.
    pub fn enqueue(
        self: &Arc<Self>,
        entry: &Arc<FunctionEntry>,
        payload: Bytes,
        held: Reservation,
        request_id: String,
        trigger: TriggerKind,
    ) -> Result<(), GatewayError> {
        if self.invoker.is_shutting_down() {
            return Err(GatewayError::ShuttingDown);
        }
        if !entry.try_accept_async(self.settings.queue_depth) {
            self.metrics
                .throttles
                .with_label_values(&[entry.name(), "async_queue_full"])
                .inc();
            self.metrics
                .invocations
                .with_label_values(&[entry.name(), trigger.as_str(), "throttled"])
                .inc();
            return Err(GatewayError::Throttled {
                retry_after: Duration::from_secs(1),
                reason: "AsyncQueueFull",
            });
        }
        let tx = self.queue_of(entry);
        entry.async_enqueued();
        let event = AsyncEvent {
            request_id,
            payload,
            trigger,
            accepted_at: Instant::now(),
            held: held.repurpose(Purpose::Async),
        };
        if tx.try_send(event).is_err() {
            // Cannot happen while `try_accept_async` bounds the channel; answer anyway.
            entry.async_dispatched();
            entry.async_finished();
            return Err(GatewayError::Throttled {
                retry_after: Duration::from_secs(1),
                reason: "AsyncQueueFull",
            });
        }
        if entry.load().ready == 0 {
            entry.signal_demand();
        }
        Ok(())
    }

    /// The sender of `entry`'s queue, starting its worker on first use.
    fn queue_of(self: &Arc<Self>, entry: &Arc<FunctionEntry>) -> mpsc::Sender<AsyncEvent> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(q) = queues.get(entry.name())
            && Arc::ptr_eq(&q.entry, entry)
        {
            return q.tx.clone();
        }
        // New, or registered anew: the old worker (if any) finishes what it
        // holds and ends with its sender.
        let (tx, rx) = mpsc::channel(self.settings.queue_depth.max(1));
        queues.insert(
            entry.name().to_string(),
            Queue {
                entry: entry.clone(),
                tx: tx.clone(),
            },
        );
        let this = self.clone();
        let e = entry.clone();
        self.tasks
            .spawn(async move { this.run_worker(e, rx).await });
        tx
    }

    async fn run_worker(
        self: Arc<Self>,
        entry: Arc<FunctionEntry>,
        mut rx: mpsc::Receiver<AsyncEvent>,
    ) {
        // Events in flight at once: what the function can run at its maximum scale.
        let settings = entry.settings();
        let parallel = (settings.max_scale as usize)
            .saturating_mul(settings.concurrency_per_environment as usize)
            .clamp(1, 10_000);
        let slots = Arc::new(Semaphore::new(parallel));
        while let Some(event) = rx.recv().await {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            let this = self.clone();
            let e = entry.clone();
            let s = slots.clone();
            self.tasks.spawn(async move {
                this.run_event(e, event, permit, s).await;
            });
        }
    }

    async fn run_event(
        &self,
        entry: Arc<FunctionEntry>,
        event: AsyncEvent,
        mut permit: OwnedSemaphorePermit,
        slots: Arc<Semaphore>,
    ) {
        let cfg = &self.settings;
        let mut attempts = 0u32;
        let mut waiting = true;
        let last_error: Option<Bytes> = loop {
            if waiting {
                entry.async_dispatched();
            }
            let result = self
                .invoker
                .invoke(
                    &entry,
                    event.payload.clone(),
                    &event.request_id,
                    event.trigger,
                )
                .await;
            drop(permit);
            let (error, throttled) = match result {
                Ok(r) if r.function_error.is_none() => {
                    break None;
                }
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
            if !throttled {
                attempts += 1;
            }
            if self.invoker.is_shutting_down() {
                break Some(error);
            }
            match retry_decision(
                attempts,
                throttled,
                event.accepted_at.elapsed(),
                cfg.retry_base,
                cfg.max_attempts,
                cfg.max_age,
            ) {
                RetryDecision::Done | RetryDecision::GiveUp => break Some(error),
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
                    tokio::time::sleep(delay).await;
                    entry.async_enqueued();
                    waiting = true;
                    permit = match slots.clone().acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => {
                            entry.async_dispatched();
                            break Some(error);
                        }
                    };
                }
            }
        };
        if let Some(error) = last_error {
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
            let AsyncEvent {
                request_id,
                payload,
                trigger,
                held,
                ..
            } = event;
            let mut letter = DeadLetter {
                function: entry.name().to_string(),
                request_id,
                trigger: trigger.as_str(),
                event: payload,
                error,
                attempts,
                time: now_rfc3339(),
            };
            // The event's bytes move to its dead letter; the error and the
            // record are added if they fit, or the error is left out.
            let mut held = held.repurpose(Purpose::DeadLetter);
            if held.try_resize(letter.size()).is_err() {
                letter.error = Bytes::from_static(
                    br#"{"errorType":"ErrorNotKept","errorMessage":"The error was not kept: the gateway's memory budget was spent."}"#,
                );
            }
            let evicted = self.dead_letters.push(letter, held);
            if evicted > 0 {
                self.metrics.dead_letters_evicted.inc_by(evicted);
            }
        }
        entry.async_finished();
    }
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
