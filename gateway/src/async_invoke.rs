//! Asynchronous invocations (`Event`, S3, CloudEvents): accepted into the
//! event queue (`crate::queue`) and answered 202 once stored; one worker per
//! function takes them, runs them through the synchronous path (so they
//! count as demand), and settles each: ack on completion, a retry stored
//! with doubling backoff on a function error (Lambda: two retries, 1 min
//! then 2 min apart), a dead letter once the attempts or the age are spent.
//! Nothing waits in a task during a retry's delay: the event waits in the
//! store, so a stop never waits for it and a restart resumes it.
//!
//! A function's `spec.async` overrides the gateway's retries and maximum
//! age, and names destinations: a record of each success goes to
//! `onSuccess`, of each event given up to `onFailure` (in place of the
//! dead letter, unless delivering the record fails). A destination is a
//! Function (the record becomes an async event for it, stored in the same
//! queue) or a NATS subject.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use opentelemetry::KeyValue;
use porchlight_core::backoff;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use porchlight_api::Destination;
use porchlight_core::FunctionKey;

use crate::budget::{MemoryBudget, Purpose, Reservation};
use crate::dead_letters::{DeadLetter, DeadLetterList, PageRequest, now_rfc3339};
use crate::destinations::{Condition, Response, record};
use crate::error::GatewayError;
use crate::forwarded::Forwarded;
use crate::metrics::Metrics;
use crate::queue::{Delivery, EventQueue, QueueError, Settle, StoredEvent, decode_trigger, now_ms};
use crate::registry::{FunctionEntry, Registry};
use crate::sync_invoke::{SyncInvoker, TriggerKind};
use crate::telemetry;

/// Why an attempt failed, and whether it counts as an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum RetryDecision {
    /// Done (success).
    Done,
    /// Retry after this delay.
    RetryAfter(Duration),
    /// Give up (dead letter or `onFailure` destination), and why.
    GiveUp(Condition),
}

/// The retry policy (pure): `attempts` made so far, `age` of the event,
/// whether the last failure was a throttle (which Lambda retries without
/// counting it as an attempt, until the event is too old). A retry that
/// would only be due once the event is too old is given up now, as
/// `EventAgeExceeded`: Lambda would drop it then, unrun.
pub fn retry_decision(
    attempts: u32,
    throttled: bool,
    age: Duration,
    base: Duration,
    max_attempts: u32,
    max_age: Duration,
) -> RetryDecision {
    if age >= max_age {
        return RetryDecision::GiveUp(Condition::EventAgeExceeded);
    }
    if throttled {
        // Lambda backs off 1 s to 5 min on throttles; here capped by the base.
        let delay = base
            .min(Duration::from_secs(1))
            .max(Duration::from_millis(10));
        return RetryDecision::RetryAfter(delay.min(max_age - age));
    }
    if attempts >= max_attempts {
        return RetryDecision::GiveUp(Condition::RetriesExhausted);
    }
    let delay = backoff::exponential(base, attempts, Duration::MAX);
    if age.saturating_add(delay) >= max_age {
        return RetryDecision::GiveUp(Condition::EventAgeExceeded);
    }
    RetryDecision::RetryAfter(delay)
}

/// Retries and bounds of async invocations.
#[derive(Clone, Debug)]
pub struct AsyncSettings {
    /// Delay before the first retry; doubled for the second (Lambda: 60 s).
    pub retry_base: Duration,
    /// Attempts of an event that fails (Lambda: 1 + 2 retries), unless
    /// the function's `spec.async.maximumRetryAttempts` says otherwise.
    pub max_attempts: u32,
    /// Age after which an event is given up (Lambda default: 6 h), unless
    /// the function's `spec.async.maximumEventAgeSeconds` says otherwise.
    pub max_age: Duration,
    /// How often a running event is reported as still in progress to its
    /// store (a third of JetStream's ack wait).
    pub progress_every: Duration,
}

impl AsyncSettings {
    /// The attempts and maximum age of `entry`'s events: its own
    /// `spec.async`, else these.
    pub fn for_function(&self, entry: &FunctionEntry) -> (u32, Duration) {
        let spec = entry.spec();
        let config = spec.async_config.as_ref();
        let attempts = config
            .and_then(|c| c.maximum_retry_attempts)
            .map_or(self.max_attempts, |retries| retries + 1);
        let age = config
            .and_then(|c| c.maximum_event_age_seconds)
            .map_or(self.max_age, |s| Duration::from_secs(u64::from(s)));
        (attempts, age)
    }
}

/// One of `slots` once free, or `None` once `stop` is cancelled (or the
/// semaphore closed): how a worker waits for room to start one more.
pub(crate) async fn take_slot(
    slots: &Arc<Semaphore>,
    stop: &CancellationToken,
) -> Option<OwnedSemaphorePermit> {
    tokio::select! {
        p = slots.clone().acquire_owned() => p.ok(),
        _ = stop.cancelled() => None,
    }
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
    registry: Arc<Registry>,
    budget: MemoryBudget,
    workers: Mutex<HashMap<String, Worker>>,
    tasks: TaskTracker,
    stop: CancellationToken,
    running: AtomicUsize,
}

impl AsyncInvoker {
    /// An invoker over `queue`, with no workers yet; destinations are
    /// looked up in `registry`, and their records held against `budget`.
    pub fn new(
        invoker: Arc<SyncInvoker>,
        metrics: Metrics,
        settings: AsyncSettings,
        queue: Arc<dyn EventQueue>,
        registry: Arc<Registry>,
        budget: MemoryBudget,
    ) -> Self {
        AsyncInvoker {
            invoker,
            metrics,
            settings,
            queue,
            registry,
            budget,
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

    /// Stores `entry`'s dead letters again as new events (only
    /// `request_id`'s, when given): the same request id, attempts and age
    /// starting over; each is removed from the dead letters once stored.
    /// Answers how many were redriven.
    pub async fn redrive(
        self: &Arc<Self>,
        entry: &Arc<FunctionEntry>,
        request_id: Option<&str>,
    ) -> Result<usize, GatewayError> {
        let letters = self
            .queue
            .find_dead_letters(entry.name(), request_id)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "cannot read the dead letters");
                GatewayError::EventStore
            })?;
        if let Some(id) = request_id
            && letters.is_empty()
        {
            return Err(GatewayError::DeadLetterNotFound(format!(
                "No dead letter of {} has the request id {id}.",
                entry.name()
            )));
        }
        let mut redriven = 0;
        for (sequence, letter) in letters {
            let trigger = decode_trigger(letter.trigger).unwrap_or(TriggerKind::Event);
            let held = self
                .budget
                .try_reserve(letter.event.len(), Purpose::Async)?;
            let mut event =
                StoredEvent::new(letter.request_id, entry.name(), trigger, letter.event);
            event.redriven = true;
            let request_id = event.request_id.clone();
            self.store(entry, event, held, None).await?;
            // Stored before it is removed: a failure here leaves the letter
            // listed, and a second redrive would run it twice.
            if let Err(e) = self.queue.remove_dead_letter(sequence).await {
                tracing::error!(%request_id, function = entry.name(), error = %e, "a redriven dead letter could not be removed");
                return Err(GatewayError::EventStore);
            }
            tracing::info!(%request_id, function = entry.name(), "dead letter redriven");
            redriven += 1;
        }
        Ok(redriven)
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
        let event =
            StoredEvent::new(request_id, entry.name(), trigger, payload).forwarding(forwarded);
        self.store(entry, event, held, None).await
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
        let event = StoredEvent::new(request_id, entry.name(), TriggerKind::Schedule, payload)
            .forwarding(Forwarded::new_trace(false));
        self.store(entry, event, held, Some((key, tick))).await
    }

    /// Stores `event` for `entry` (see [`AsyncInvoker::enqueue`]); with a
    /// schedule's key and tick, records the tick with it.
    async fn store(
        self: &Arc<Self>,
        entry: &Arc<FunctionEntry>,
        event: StoredEvent,
        held: Reservation,
        tick: Option<(String, i64)>,
    ) -> Result<(), GatewayError> {
        if self.invoker.is_shutting_down() || self.stop.is_cancelled() {
            return Err(GatewayError::ShuttingDown);
        }
        self.worker_for(entry);
        let request_id = event.request_id.clone();
        let trigger = event.trigger;
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
        if !self.queue.publishes_to_subjects()
            && let Some(config) = entry.spec().async_config.as_ref()
        {
            let d = &config.destinations;
            for (which, dest) in [("onSuccess", &d.on_success), ("onFailure", &d.on_failure)] {
                if let Some(subject) = dest.as_ref().and_then(|d| d.subject.as_deref()) {
                    tracing::warn!(
                        function = entry.name(),
                        destination = which,
                        subject,
                        "a subject destination needs the gateway on NATS (--queue nats://...); its records cannot be sent (those of failures go to the dead letters)"
                    );
                }
            }
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
            let Some(permit) = take_slot(&slots, &stop).await else {
                return;
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
    async fn run_event(self: &Arc<Self>, entry: &Arc<FunctionEntry>, delivery: Delivery) {
        let Delivery {
            event,
            delivered,
            settle,
        } = delivery;
        let cfg = &self.settings;
        let (max_attempts, max_age) = cfg.for_function(entry);
        let age = event.age(now_ms());
        if age >= max_age {
            // Lambda discards an event older than the function's maximum
            // age without running it (it waited out a throttle, an outage
            // or a stopped gateway).
            let error = serde_json::json!({
                "errorType": "EventAgeExceeded",
                "errorMessage": format!(
                    "the event waited {} s, past the function's maximum event age of {} s, and was not run",
                    age.as_secs(),
                    max_age.as_secs()
                ),
            });
            let settled = self
                .give_up(
                    entry,
                    settle.as_ref(),
                    &event,
                    Condition::EventAgeExceeded,
                    event.attempts,
                    None,
                    Bytes::from(error.to_string()),
                )
                .await;
            if let Err(e) = settled {
                tracing::warn!(request_id = %event.request_id, function = entry.name(), error = %e, "cannot settle an async event; it will be taken again");
            }
            return;
        }
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
            Ok(r) if r.function_error.is_none() => {
                if let Some(dest) = destination(entry, Condition::Success) {
                    let response = Response {
                        status_code: 200,
                        function_error: None,
                        payload: r.body.clone(),
                    };
                    let sent = self
                        .send_record(
                            entry,
                            &dest,
                            &event,
                            Condition::Success,
                            event.attempts + 1,
                            Some(&response),
                        )
                        .await;
                    if let Err(e) = sent {
                        // The event is done; its record is lost (as Lambda's
                        // are when a destination refuses them).
                        tracing::warn!(request_id = %event.request_id, function = entry.name(), error = %e, "the onSuccess record could not be sent");
                    }
                }
                settle.ack().await.map(|()| "done")
            }
            Err(GatewayError::ShuttingDown) => {
                // Not an attempt: it stays stored and runs after the next
                // start (or on another gateway).
                settle.release(Duration::ZERO).await.map(|()| "given back")
            }
            outcome => {
                let (error, throttled, response) = match outcome {
                    Ok(r) => {
                        let error = error_to_keep(&r.body);
                        let response = Response {
                            status_code: 200,
                            function_error: r.function_error.clone(),
                            payload: error.clone(),
                        };
                        (error, false, response)
                    }
                    Err(e) => {
                        let throttled = matches!(
                            e,
                            GatewayError::Throttled { .. } | GatewayError::Unavailable { .. }
                        );
                        let error = serde_json::json!({"errorType": e.error_type(), "errorMessage": e.to_string()});
                        let error = Bytes::from(error.to_string());
                        let response = Response {
                            status_code: e.status().as_u16(),
                            function_error: None,
                            payload: error.clone(),
                        };
                        (error, throttled, response)
                    }
                };
                let attempts = event.attempts + u32::from(!throttled);
                match retry_decision(
                    attempts,
                    throttled,
                    event.age(now_ms()),
                    cfg.retry_base,
                    max_attempts,
                    max_age,
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
                    RetryDecision::GiveUp(condition) => {
                        self.give_up(
                            entry,
                            settle.as_ref(),
                            &event,
                            condition,
                            attempts,
                            Some(&response),
                            error,
                        )
                        .await
                    }
                    RetryDecision::Done => settle.ack().await.map(|()| "done"),
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

impl AsyncInvoker {
    /// Ends `event` for good after `attempts` (its last `response`, none
    /// when it never ran): its record goes to the onFailure destination, or
    /// failing that it becomes a dead letter with `error`.
    #[allow(clippy::too_many_arguments)]
    async fn give_up(
        self: &Arc<Self>,
        entry: &Arc<FunctionEntry>,
        settle: &dyn Settle,
        event: &StoredEvent,
        condition: Condition,
        attempts: u32,
        response: Option<&Response>,
        error: Bytes,
    ) -> Result<&'static str, QueueError> {
        let mut sent = false;
        if let Some(dest) = destination(entry, condition) {
            match self
                .send_record(entry, &dest, event, condition, attempts, response)
                .await
            {
                Ok(()) => sent = true,
                Err(e) => tracing::warn!(
                    request_id = %event.request_id,
                    function = entry.name(),
                    error = %e,
                    "the onFailure record could not be sent; the event goes to the dead letters"
                ),
            }
        }
        if sent {
            tracing::info!(
                request_id = %event.request_id,
                function = entry.name(),
                attempts,
                condition = condition.as_str(),
                "async invocation given up; its record went to the onFailure destination"
            );
            return settle.ack().await.map(|()| "sent to onFailure");
        }
        tracing::warn!(
            request_id = %event.request_id,
            function = entry.name(),
            attempts,
            condition = condition.as_str(),
            "async invocation given up; recorded as a dead letter"
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

    /// Sends the record of `event`'s outcome to `dest`: a Function gets it
    /// as an async event of its own (a new request id), a subject gets it
    /// published.
    async fn send_record(
        self: &Arc<Self>,
        source: &Arc<FunctionEntry>,
        dest: &Destination,
        event: &StoredEvent,
        condition: Condition,
        invokes: u32,
        response: Option<&Response>,
    ) -> Result<(), String> {
        let body = record(
            source.name(),
            &event.request_id,
            condition,
            invokes,
            &event.payload,
            response,
        );
        if let Some(name) = dest.function.as_deref() {
            let key = FunctionKey::new(source.key().namespace.clone(), name);
            let address = self.registry.address_of(&key);
            let target = self
                .registry
                .get(&address)
                .ok_or_else(|| format!("the destination function {address} does not exist"))?;
            if Arc::ptr_eq(&target, source) {
                return Err("a function cannot be its own destination".into());
            }
            let held = self
                .budget
                .try_reserve(body.len(), Purpose::Async)
                .map_err(|e| e.to_string())?;
            let request_id = uuid::Uuid::new_v4().to_string();
            return self
                .enqueue(
                    &target,
                    body,
                    held,
                    request_id,
                    TriggerKind::Destination,
                    Forwarded::new_trace(false),
                )
                .await
                .map_err(|e| e.to_string());
        }
        match dest.subject.as_deref() {
            Some(subject) => self
                .queue
                .publish_record(subject, body)
                .await
                .map_err(|e| e.to_string()),
            None => Err("the destination names no function and no subject".into()),
        }
    }
}

/// Where the record of an event that ended with `condition` goes, if the
/// function names a destination for it.
fn destination(entry: &FunctionEntry, condition: Condition) -> Option<Destination> {
    let spec = entry.spec();
    let d = &spec.async_config.as_ref()?.destinations;
    match condition {
        Condition::Success => d.on_success.clone(),
        Condition::RetriesExhausted | Condition::EventAgeExceeded => d.on_failure.clone(),
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
            RetryDecision::GiveUp(Condition::RetriesExhausted)
        );
        // Throttles do not use up attempts but expire with the event.
        assert!(matches!(
            retry_decision(3, true, age, base, 3, max_age),
            RetryDecision::RetryAfter(_)
        ));
        assert_eq!(
            retry_decision(0, true, max_age, base, 3, max_age),
            RetryDecision::GiveUp(Condition::EventAgeExceeded)
        );
    }

    #[test]
    fn a_functions_settings_override_the_gateways() {
        let base = Duration::from_secs(60);
        let age = Duration::from_secs(1);
        // maximumRetryAttempts 0: one attempt, then given up.
        assert_eq!(
            retry_decision(1, false, age, base, 1, Duration::from_secs(21_600)),
            RetryDecision::GiveUp(Condition::RetriesExhausted)
        );
        // maximumRetryAttempts 1: one retry.
        assert_eq!(
            retry_decision(1, false, age, base, 2, Duration::from_secs(21_600)),
            RetryDecision::RetryAfter(base)
        );
        // maximumEventAgeSeconds 90: the first retry (at 61 s) is in time,
        // the second (at about 3 min) would not be: given up now.
        let max_age = Duration::from_secs(90);
        assert_eq!(
            retry_decision(1, false, age, base, 3, max_age),
            RetryDecision::RetryAfter(base)
        );
        assert_eq!(
            retry_decision(2, false, Duration::from_secs(62), base, 3, max_age),
            RetryDecision::GiveUp(Condition::EventAgeExceeded)
        );
        // Older than its maximum: given up whatever the attempts.
        assert_eq!(
            retry_decision(0, false, max_age, base, 3, max_age),
            RetryDecision::GiveUp(Condition::EventAgeExceeded)
        );
    }

    fn spec(yaml: &str) -> porchlight_api::FunctionSpec {
        serde_yaml::from_str(yaml).expect("a spec")
    }

    #[test]
    fn settings_come_from_the_function_else_the_gateway() {
        let gateway = AsyncSettings {
            retry_base: Duration::from_secs(60),
            max_attempts: 3,
            max_age: Duration::from_secs(3600),
            progress_every: Duration::from_secs(10),
        };
        let registry = Registry::new(crate::registry::DispatchConfig::default());
        let plain = spec("handler: a.b\ncode: {inline: x}\n");
        let own = spec(
            "handler: a.b\ncode: {inline: x}\nasync: {maximumRetryAttempts: 0, maximumEventAgeSeconds: 120}\n",
        );
        let half = spec("handler: a.b\ncode: {inline: x}\nasync: {maximumRetryAttempts: 1}\n");
        let entry = |name: &str, s: porchlight_api::FunctionSpec| {
            let settings = s.validate().expect("valid");
            registry.upsert(FunctionKey::new("default", name), s, settings)
        };
        assert_eq!(
            gateway.for_function(&entry("plain", plain)),
            (3, Duration::from_secs(3600))
        );
        assert_eq!(
            gateway.for_function(&entry("own", own)),
            (1, Duration::from_secs(120))
        );
        assert_eq!(
            gateway.for_function(&entry("half", half)),
            (2, Duration::from_secs(3600))
        );
    }
}
