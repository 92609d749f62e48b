//! Asynchronous invocations (`Event`, S3, CloudEvents): a bounded queue per
//! function, retries on function error with doubling backoff (Lambda: two
//! retries, 1 min then 2 min apart), and a bounded ring of dead letters.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use porchlight_core::backoff;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use crate::error::GatewayError;
use crate::gateway::{Gateway, TriggerKind};
use crate::registry::FunctionEntry;

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
}

/// An async event that failed every attempt or expired.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// Function name.
    pub function: String,
    /// Request id of the event.
    pub request_id: String,
    /// Trigger that produced it.
    pub trigger: &'static str,
    /// The event (JSON, or a string when it is not JSON).
    pub event: serde_json::Value,
    /// Last error (the function's error JSON, or the gateway's).
    pub error: serde_json::Value,
    /// Attempts made.
    pub attempts: u32,
    /// When it was dead-lettered (RFC 3339).
    pub time: String,
}

/// A bounded ring of dead letters; the oldest is evicted and counted.
pub struct DeadLetters {
    ring: Mutex<VecDeque<DeadLetter>>,
    capacity: usize,
    evicted: AtomicU64,
    total: AtomicU64,
}

/// What `GET /v1/dead-letters` returns.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterList {
    /// Dead letters, oldest first.
    pub dead_letters: Vec<DeadLetter>,
    /// Recorded since start.
    pub total: u64,
    /// Dropped from the ring because it was full.
    pub evicted: u64,
}

impl DeadLetters {
    /// A ring holding at most `capacity` letters.
    pub fn new(capacity: usize) -> Self {
        DeadLetters {
            ring: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            evicted: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }

    /// Adds a letter; returns true when an old one was evicted.
    pub fn push(&self, letter: DeadLetter) -> bool {
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let evicted = ring.len() >= self.capacity;
        if evicted {
            ring.pop_front();
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        ring.push_back(letter);
        evicted
    }

    /// A copy of the ring, optionally for one function.
    pub fn list(&self, function: Option<&str>) -> DeadLetterList {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        DeadLetterList {
            dead_letters: ring
                .iter()
                .filter(|d| function.is_none_or(|f| d.function == f))
                .cloned()
                .collect(),
            total: self.total.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
        }
    }
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

/// Accepts an async event for `entry`: queued, or refused with 429.
pub fn enqueue(
    gateway: &Arc<Gateway>,
    entry: &Arc<FunctionEntry>,
    payload: Bytes,
    request_id: String,
    trigger: TriggerKind,
) -> Result<(), GatewayError> {
    if gateway.is_shutting_down() {
        return Err(GatewayError::ShuttingDown);
    }
    let depth = gateway.config.dispatch.async_queue_depth as u64;
    let pending = &entry.counters.async_pending;
    if pending.fetch_add(1, Ordering::SeqCst) >= depth {
        pending.fetch_sub(1, Ordering::SeqCst);
        gateway
            .metrics
            .throttles
            .with_label_values(&[entry.name(), "async_queue_full"])
            .inc();
        gateway
            .metrics
            .invocations
            .with_label_values(&[entry.name(), trigger.as_str(), "throttled"])
            .inc();
        return Err(GatewayError::Throttled {
            retry_after: Duration::from_secs(1),
            reason: "AsyncQueueFull",
        });
    }
    let tx = {
        let mut slot = entry.async_tx.lock().unwrap_or_else(|p| p.into_inner());
        match &*slot {
            Some(tx) => tx.clone(),
            None => {
                let (tx, rx) = mpsc::channel(gateway.config.dispatch.async_queue_depth.max(1));
                *slot = Some(tx.clone());
                let gw = gateway.clone();
                let e = entry.clone();
                gateway
                    .tasks
                    .spawn(async move { run_worker(gw, e, rx).await });
                tx
            }
        }
    };
    entry.counters.async_waiting.fetch_add(1, Ordering::SeqCst);
    let event = AsyncEvent {
        request_id,
        payload,
        trigger,
        accepted_at: Instant::now(),
    };
    if tx.try_send(event).is_err() {
        // Cannot happen while `async_pending` bounds the channel; answer anyway.
        entry.counters.async_waiting.fetch_sub(1, Ordering::SeqCst);
        pending.fetch_sub(1, Ordering::SeqCst);
        return Err(GatewayError::Throttled {
            retry_after: Duration::from_secs(1),
            reason: "AsyncQueueFull",
        });
    }
    if entry.load().ready == 0 {
        gateway.registry.demand().poke(entry.name());
    }
    Ok(())
}

async fn run_worker(
    gateway: Arc<Gateway>,
    entry: Arc<FunctionEntry>,
    mut rx: mpsc::Receiver<AsyncEvent>,
) {
    // Events in flight at once: what the function can run at its maximum scale.
    let parallel = (entry.settings.max_scale as usize)
        .saturating_mul(entry.settings.concurrency_per_environment as usize)
        .clamp(1, 10_000);
    let slots = Arc::new(Semaphore::new(parallel));
    while let Some(event) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let gw = gateway.clone();
        let e = entry.clone();
        let s = slots.clone();
        gateway.tasks.spawn(async move {
            run_event(gw, e, event, permit, s).await;
        });
    }
}

async fn run_event(
    gateway: Arc<Gateway>,
    entry: Arc<FunctionEntry>,
    event: AsyncEvent,
    mut permit: tokio::sync::OwnedSemaphorePermit,
    slots: Arc<Semaphore>,
) {
    let cfg = &gateway.config;
    let mut attempts = 0u32;
    let mut waiting = true;
    let last_error: serde_json::Value = loop {
        if waiting {
            entry.counters.async_waiting.fetch_sub(1, Ordering::SeqCst);
        }
        let result = gateway
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
                break serde_json::Value::Null;
            }
            Ok(r) => (
                serde_json::from_slice(&r.body).unwrap_or_else(|_| {
                    serde_json::Value::String(String::from_utf8_lossy(&r.body).into_owned())
                }),
                false,
            ),
            Err(e) => {
                let throttled = matches!(
                    e,
                    GatewayError::Throttled { .. } | GatewayError::Unavailable { .. }
                );
                (
                    serde_json::json!({"errorType": e.error_type(), "errorMessage": e.to_string()}),
                    throttled,
                )
            }
        };
        if !throttled {
            attempts += 1;
        }
        if gateway.is_shutting_down() {
            break error;
        }
        match retry_decision(
            attempts,
            throttled,
            event.accepted_at.elapsed(),
            cfg.async_retry_base,
            cfg.async_max_attempts,
            cfg.async_max_age,
        ) {
            RetryDecision::Done | RetryDecision::GiveUp => break error,
            RetryDecision::RetryAfter(delay) => {
                tracing::info!(
                    request_id = %event.request_id,
                    function = entry.name(),
                    attempts,
                    delay_ms = delay.as_millis() as u64,
                    "async invocation failed; retrying"
                );
                gateway
                    .metrics
                    .async_retries
                    .with_label_values(&[entry.name()])
                    .inc();
                tokio::time::sleep(delay).await;
                entry.counters.async_waiting.fetch_add(1, Ordering::SeqCst);
                waiting = true;
                permit = match slots.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => {
                        entry.counters.async_waiting.fetch_sub(1, Ordering::SeqCst);
                        break error;
                    }
                };
            }
        }
    };
    if !last_error.is_null() {
        tracing::warn!(
            request_id = %event.request_id,
            function = entry.name(),
            attempts,
            "async invocation failed every attempt; recorded as a dead letter"
        );
        gateway
            .metrics
            .dead_letters
            .with_label_values(&[entry.name()])
            .inc();
        let evicted = gateway.dead_letters.push(DeadLetter {
            function: entry.name().to_string(),
            request_id: event.request_id.clone(),
            trigger: event.trigger.as_str(),
            event: serde_json::from_slice(&event.payload).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&event.payload).into_owned())
            }),
            error: last_error,
            attempts,
            time: crate::now_rfc3339(),
        });
        if evicted {
            gateway.metrics.dead_letters_evicted.inc();
        }
    }
    entry.counters.async_pending.fetch_sub(1, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn dead_letter_ring_evicts_oldest_and_counts() {
        let d = DeadLetters::new(2);
        for i in 0..3 {
            d.push(DeadLetter {
                function: "f".into(),
                request_id: format!("r{i}"),
                trigger: "event",
                event: serde_json::Value::Null,
                error: serde_json::Value::Null,
                attempts: 3,
                time: String::new(),
            });
        }
        let l = d.list(None);
        assert_eq!(l.evicted, 1);
        assert_eq!(l.total, 3);
        assert_eq!(l.dead_letters[0].request_id, "r1");
        assert!(d.list(Some("g")).dead_letters.is_empty());
    }
}
