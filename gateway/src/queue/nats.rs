//! Async events on NATS JetStream, shared by every gateway that names the
//! same server.
//!
//! - Stream `PORCHLIGHT_ASYNC` (file storage, work-queue retention: a
//!   message is gone once acked), subjects `porchlight.async.<function>`
//!   for accepted events and `porchlight.retry.<function>` for events
//!   waiting for a retry, each bounded to the queue depth per function
//!   (a publish past it is refused: 429). `Nats-Msg-Id` is the request id,
//!   so a publish repeated after a lost answer is stored once.
//! - One durable pull consumer per function (`async-<function>`), shared by
//!   every gateway: explicit acks, an ack wait kept alive by in-progress acks
//!   while the function runs, a redelivery backoff for events whose gateway
//!   died, and a maximum of deliveries.
//! - A failed attempt stores a copy with its attempts counted and the time
//!   it is due (then the taken one is acked); a throttled one is given back
//!   with a delayed `nak`; a copy handed out before it is due is too.
//! - Stream `PORCHLIGHT_DEAD_LETTERS` (limits retention, bounded by count
//!   and bytes, the oldest dropped), subjects `porchlight.dead.<function>`.
//! - Key-value bucket `PORCHLIGHT_SCHEDULES`: the last tick fired of each
//!   schedule, shared by every gateway, which read it before firing a tick
//!   and after a restart. Two gateways firing the same tick at once publish
//!   the same `Nats-Msg-Id` (one per schedule and tick), and the stream's
//!   duplicate window keeps one.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures::StreamExt;

use super::record::{decode_event, decode_letter, encode_event, encode_letter};
use super::{BoxFuture, Consumer, Delivery, EventQueue, QueueError, Settle, StoredEvent, now_ms};
use crate::budget::Reservation;
use crate::dead_letters::{DeadLetter, DeadLetterList, PageRequest};

/// The stream of async events.
pub const EVENT_STREAM: &str = "PORCHLIGHT_ASYNC";
/// The key-value bucket of schedules' last ticks.
pub const SCHEDULE_BUCKET: &str = "PORCHLIGHT_SCHEDULES";
/// The stream of dead letters.
pub const DEAD_LETTER_STREAM: &str = "PORCHLIGHT_DEAD_LETTERS";
/// Deliveries of one stored copy at most; the last one is dead-lettered
/// without running (an event that keeps killing its gateway).
pub const MAX_DELIVER: i64 = 10_000;
/// How long a fetch waits for events before asking again.
const FETCH_WAIT: Duration = Duration::from_secs(1);

/// Where and how to keep events on JetStream.
#[derive(Clone, Debug)]
pub struct NatsSettings {
    /// `nats://HOST:PORT`.
    pub url: String,
    /// Events stored per function at most.
    pub depth: usize,
    /// How long a taken event may go without an ack or an in-progress ack
    /// before the server hands it to another gateway.
    pub ack_wait: Duration,
    /// Dead letters kept.
    pub dead_letter_capacity: usize,
    /// Bytes of dead letters kept.
    pub dead_letter_bytes: usize,
}

/// Async events and dead letters on NATS JetStream.
pub struct NatsQueue {
    js: jetstream::Context,
    events: stream::Stream,
    dead: stream::Stream,
    ticks: jetstream::kv::Store,
    settings: NatsSettings,
    closed: tokio_util::sync::CancellationToken,
}

/// A function name as one subject token (names are DNS labels or
/// subdomains: a dot becomes `_`, which they never contain).
pub(crate) fn token(function: &str) -> String {
    function
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn store_error(what: &str, e: impl std::fmt::Display) -> QueueError {
    QueueError::Store(format!("{what}: {e}"))
}

impl NatsQueue {
    /// Connects and makes sure the streams exist.
    pub async fn connect(settings: NatsSettings) -> Result<Self, String> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .name("porchlight-gateway")
            .connect(settings.url.as_str())
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", settings.url))?;
        let js = jetstream::new(client);
        let depth = settings.depth.max(1) as i64;
        let events = js
            .get_or_create_stream(stream::Config {
                name: EVENT_STREAM.to_string(),
                subjects: vec!["porchlight.async.*".into(), "porchlight.retry.*".into()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                max_messages_per_subject: depth,
                discard: stream::DiscardPolicy::New,
                discard_new_per_subject: true,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot create the stream {EVENT_STREAM}: {e}"))?;
        let dead = js
            .get_or_create_stream(stream::Config {
                name: DEAD_LETTER_STREAM.to_string(),
                subjects: vec!["porchlight.dead.*".into()],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                max_messages: settings.dead_letter_capacity.max(1) as i64,
                max_bytes: settings.dead_letter_bytes.max(1) as i64,
                discard: stream::DiscardPolicy::Old,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot create the stream {DEAD_LETTER_STREAM}: {e}"))?;
        let ticks = js
            .create_or_update_key_value(jetstream::kv::Config {
                bucket: SCHEDULE_BUCKET.to_string(),
                history: 1,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot create the bucket {SCHEDULE_BUCKET}: {e}"))?;
        Ok(NatsQueue {
            js,
            events,
            dead,
            ticks,
            settings,
            closed: tokio_util::sync::CancellationToken::new(),
        })
    }
}

/// Publishes and waits for the stream's acknowledgement.
async fn publish(
    js: &jetstream::Context,
    subject: String,
    id: String,
    body: Vec<u8>,
) -> Result<(), QueueError> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
    let ack = js
        .publish_with_headers(subject, headers, body.into())
        .await
        .map_err(|e| store_error("publish", e))?;
    match ack.await {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("maximum messages per subject") => Err(QueueError::Full),
        Err(e) => Err(store_error("publish", e)),
    }
}

impl NatsQueue {
    /// The dead-letter stream's state.
    async fn dead_info(&self) -> Result<stream::Info, QueueError> {
        self.dead
            .get_info()
            .await
            .map_err(|e| store_error("dead letters", e))
    }

    /// The first dead letter on `subject` at or after `sequence`, if any.
    async fn next_dead_letter(
        &self,
        subject: &str,
        sequence: u64,
    ) -> Result<Option<jetstream::message::StreamMessage>, QueueError> {
        match self
            .dead
            .raw_message_builder()
            .sequence(sequence)
            .next_by_subject(subject.to_string())
            .send()
            .await
        {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(store_error("dead letters", e)),
        }
    }
}

impl EventQueue for NatsQueue {
    fn describe(&self) -> String {
        format!("NATS JetStream at {}", self.settings.url)
    }

    fn is_durable(&self) -> bool {
        true
    }

    fn stored_events(&self) -> Option<usize> {
        None
    }

    fn stored_for(&self, _function: &str) -> Option<usize> {
        None
    }

    fn publish(
        &self,
        event: StoredEvent,
        held: Reservation,
    ) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move {
            if self.closed.is_cancelled() {
                return Err(QueueError::Closed);
            }
            let subject = format!("porchlight.async.{}", token(&event.function));
            // A redriven event is told apart from its first publish, which
            // the stream may still remember.
            let id = if event.redriven {
                format!("{}/redrive/{}", event.request_id, event.accepted_at_ms)
            } else {
                event.request_id.clone()
            };
            let body = encode_event(&event);
            drop(event);
            // The copy sent to the server counts until the server has it.
            let mut held = held;
            if held.try_resize(body.len()).is_err() {
                return Err(QueueError::Budget);
            }
            let result = publish(&self.js, subject, id, body).await;
            // The server keeps the bytes now.
            drop(held);
            result
        })
    }

    fn publish_tick(
        &self,
        event: StoredEvent,
        held: Reservation,
        key: String,
        tick: i64,
    ) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move {
            // Published first: a gateway that dies before recording the
            // tick fires it again after its restart, with the same id.
            self.publish(event, held).await?;
            self.record_tick(key, tick).await
        })
    }

    fn last_tick<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<i64>, QueueError>> {
        Box::pin(async move {
            let value = self
                .ticks
                .get(key)
                .await
                .map_err(|e| store_error("schedule", e))?;
            Ok(value.and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok()))
        })
    }

    fn record_tick(&self, key: String, tick: i64) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move {
            // Compare and set: a slower gateway never moves a tick back.
            for _ in 0..5 {
                let entry = self
                    .ticks
                    .entry(key.as_str())
                    .await
                    .map_err(|e| store_error("schedule", e))?;
                let value = bytes::Bytes::from(tick.to_string());
                let written = match entry {
                    Some(e) if e.operation == jetstream::kv::Operation::Put => {
                        let last = std::str::from_utf8(&e.value)
                            .ok()
                            .and_then(|v| v.parse::<i64>().ok());
                        if last.is_some_and(|l| l >= tick) {
                            return Ok(());
                        }
                        self.ticks.update(&key, value, e.revision).await.is_ok()
                    }
                    _ => self.ticks.create(&key, value).await.is_ok(),
                };
                if written {
                    return Ok(());
                }
            }
            Err(QueueError::Store(format!(
                "schedule {key}: the last tick kept changing"
            )))
        })
    }

    fn has_room(&self, _function: &str) -> bool {
        // The stream's per-subject bound decides, across every gateway.
        true
    }

    fn consumer(&self, function: &str) -> BoxFuture<'_, Result<Box<dyn Consumer>, QueueError>> {
        let t = token(function);
        Box::pin(async move {
            let name = format!("async-{t}");
            let ack_wait = self.settings.ack_wait;
            let config = consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subjects: vec![
                    format!("porchlight.async.{t}"),
                    format!("porchlight.retry.{t}"),
                ],
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait,
                // The first redelivery after ack_wait, later ones further apart.
                backoff: vec![ack_wait, ack_wait * 2, ack_wait * 4, ack_wait * 8],
                max_deliver: MAX_DELIVER,
                max_ack_pending: 10_000,
                ..Default::default()
            };
            let consumer = self
                .events
                .get_or_create_consumer(&name, config)
                .await
                .map_err(|e| store_error("consumer", e))?;
            Ok(Box::new(NatsConsumer {
                consumer,
                js: self.js.clone(),
                function: t,
                batch: None,
                buffered: VecDeque::new(),
                closed: self.closed.clone(),
            }) as Box<dyn Consumer>)
        })
    }

    fn dead_letters<'a>(
        &'a self,
        page: &'a PageRequest,
    ) -> BoxFuture<'a, Result<DeadLetterList, QueueError>> {
        Box::pin(async move {
            let info = self.dead_info().await?;
            let subject = match &page.function {
                Some(f) => format!("porchlight.dead.{}", token(f)),
                None => "porchlight.dead.*".to_string(),
            };
            let mut sequence = page
                .after
                .unwrap_or(0)
                .saturating_add(1)
                .max(info.state.first_sequence);
            let mut out = DeadLetterList::empty();
            out.total = info.state.last_sequence;
            out.evicted = info.state.last_sequence.saturating_sub(info.state.messages);
            let mut bytes = 0usize;
            let mut last = None;
            // Bounded by the page (one more letter tells whether more follow).
            for _ in 0..=page.max_items.min(10_000) {
                if sequence > info.state.last_sequence {
                    break;
                }
                let Some(message) = self.next_dead_letter(&subject, sequence).await? else {
                    break;
                };
                sequence = message.sequence + 1;
                let Some(letter) = decode_letter(&message.payload) else {
                    continue;
                };
                let size = letter.size();
                if out.dead_letters.len() >= page.max_items
                    || (!out.dead_letters.is_empty() && bytes + size > page.max_bytes)
                {
                    out.next_marker = last.map(|s: u64| s.to_string());
                    break;
                }
                bytes += size;
                last = Some(message.sequence);
                out.dead_letters.push(letter);
            }
            Ok(out)
        })
    }

    fn find_dead_letters<'a>(
        &'a self,
        function: &'a str,
        request_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<(u64, DeadLetter)>, QueueError>> {
        Box::pin(async move {
            let info = self.dead_info().await?;
            let subject = format!("porchlight.dead.{}", token(function));
            let mut sequence = info.state.first_sequence.max(1);
            let mut out = Vec::new();
            // The stream is bounded by count, so this walk is too.
            while sequence <= info.state.last_sequence {
                let Some(message) = self.next_dead_letter(&subject, sequence).await? else {
                    break;
                };
                sequence = message.sequence + 1;
                if let Some(letter) = decode_letter(&message.payload)
                    && letter.function == function
                    && request_id.is_none_or(|r| letter.request_id == r)
                {
                    out.push((message.sequence, letter));
                }
            }
            Ok(out)
        })
    }

    fn remove_dead_letter(&self, sequence: u64) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move {
            match self.dead.delete_message(sequence).await {
                Ok(_) => Ok(()),
                Err(e) if e.to_string().contains("no message found") => Ok(()),
                Err(e) => Err(store_error("remove a dead letter", e)),
            }
        })
    }

    fn publishes_to_subjects(&self) -> bool {
        true
    }

    fn publish_record<'a>(
        &'a self,
        subject: &'a str,
        record: bytes::Bytes,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            // A plain publish: subscribers get it, and so does a stream
            // that takes the subject.
            let client = self.js.client();
            client
                .publish(subject.to_string(), record)
                .await
                .map_err(|e| store_error("publish a record", e))?;
            client
                .flush()
                .await
                .map_err(|e| store_error("publish a record", e))
        })
    }

    fn jetstream(&self) -> Option<jetstream::Context> {
        Some(self.js.clone())
    }

    fn put_dead_letter(&self, letter: DeadLetter) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move {
            let subject = format!("porchlight.dead.{}", token(&letter.function));
            let id = format!("dead/{}/{}", letter.request_id, letter.time);
            publish(&self.js, subject, id, encode_letter(&letter)).await
        })
    }

    fn close(&self) {
        self.closed.cancel();
    }
}

struct NatsConsumer {
    consumer: consumer::PullConsumer,
    js: jetstream::Context,
    function: String,
    batch: Option<consumer::pull::Batch>,
    buffered: VecDeque<jetstream::Message>,
    closed: tokio_util::sync::CancellationToken,
}

impl NatsConsumer {
    /// The next message of the current batch, starting one for at most
    /// `room` events when there is none; `None` when a batch ended empty.
    async fn next_message(
        &mut self,
        room: usize,
    ) -> Result<Option<jetstream::Message>, QueueError> {
        if let Some(m) = self.buffered.pop_front() {
            return Ok(Some(m));
        }
        if self.batch.is_none() {
            let batch = self
                .consumer
                .batch()
                .max_messages(room.clamp(1, 256))
                .expires(FETCH_WAIT)
                .messages()
                .await
                .map_err(|e| store_error("fetch", e))?;
            self.batch = Some(batch);
        }
        let Some(batch) = self.batch.as_mut() else {
            return Ok(None);
        };
        match batch.next().await {
            Some(Ok(m)) => Ok(Some(m)),
            Some(Err(e)) => {
                self.batch = None;
                Err(store_error("fetch", e))
            }
            None => {
                self.batch = None;
                Ok(None)
            }
        }
    }
}

impl Consumer for NatsConsumer {
    fn next(&mut self, room: usize) -> BoxFuture<'_, Result<Option<Delivery>, QueueError>> {
        Box::pin(async move {
            loop {
                if self.closed.is_cancelled() {
                    return Ok(None);
                }
                let closed = self.closed.clone();
                let message = tokio::select! {
                    m = self.next_message(room) => m?,
                    _ = closed.cancelled() => return Ok(None),
                };
                let Some(message) = message else {
                    continue;
                };
                let delivered = message.info().map(|i| i.delivered as u64).unwrap_or(1);
                let Some(event) = decode_event(&message.payload) else {
                    tracing::warn!(function = %self.function, "an unreadable event was removed from the stream");
                    let _ = message.ack_with(AckKind::Term).await;
                    continue;
                };
                let now = now_ms();
                if event.not_before_ms > now {
                    let wait = Duration::from_millis(event.not_before_ms - now);
                    message
                        .ack_with(AckKind::Nak(Some(wait)))
                        .await
                        .map_err(|e| store_error("nak", e))?;
                    continue;
                }
                let settle = NatsSettle {
                    message,
                    js: self.js.clone(),
                    function: self.function.clone(),
                };
                if delivered >= MAX_DELIVER as u64 {
                    tracing::warn!(request_id = %event.request_id, function = %self.function, delivered, "event delivered too often; dead-lettered without running");
                    let letter = DeadLetter {
                        function: event.function.clone(),
                        request_id: event.request_id.clone(),
                        trigger: event.trigger.as_str(),
                        event: event.payload.clone(),
                        error: bytes::Bytes::from_static(
                            br#"{"errorType":"MaxDeliveriesReached","errorMessage":"The event was handed out the most times allowed without an answer."}"#,
                        ),
                        attempts: event.attempts,
                        time: crate::dead_letters::now_rfc3339(),
                    };
                    settle.dead_letter(letter).await?;
                    continue;
                }
                return Ok(Some(Delivery {
                    event,
                    delivered,
                    settle: Box::new(settle),
                }));
            }
        })
    }
}

struct NatsSettle {
    message: jetstream::Message,
    js: jetstream::Context,
    function: String,
}

impl Settle for NatsSettle {
    fn ack(&self) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move {
            self.message
                .double_ack()
                .await
                .map_err(|e| store_error("ack", e))
        })
    }

    fn retry(&self, event: StoredEvent, delay: Duration) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move {
            let mut event = event;
            event.not_before_ms = now_ms() + delay.as_millis() as u64;
            // Unique per attempt of each life of the event (a redriven one
            // starts its attempts again).
            let id = format!(
                "{}/{}/{}",
                event.request_id, event.accepted_at_ms, event.attempts
            );
            let subject = format!("porchlight.retry.{}", self.function);
            match publish(&self.js, subject, id, encode_event(&event)).await {
                Ok(()) => self
                    .message
                    .double_ack()
                    .await
                    .map_err(|e| store_error("ack", e)),
                Err(QueueError::Full) => {
                    // No room for the copy: give the taken one back instead
                    // (its attempts are not counted this time).
                    tracing::warn!(request_id = %event.request_id, function = %self.function, "no room to store a retry; the event is given back uncounted");
                    self.release(delay).await
                }
                Err(e) => Err(e),
            }
        })
    }

    fn release(&self, delay: Duration) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move {
            let delay = (!delay.is_zero()).then_some(delay);
            self.message
                .ack_with(AckKind::Nak(delay))
                .await
                .map_err(|e| store_error("nak", e))
        })
    }

    fn in_progress(&self) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move {
            self.message
                .ack_with(AckKind::Progress)
                .await
                .map_err(|e| store_error("in progress", e))
        })
    }

    fn dead_letter(&self, letter: DeadLetter) -> BoxFuture<'_, Result<u64, QueueError>> {
        Box::pin(async move {
            let subject = format!("porchlight.dead.{}", self.function);
            let id = format!("dead/{}/{}", letter.request_id, letter.time);
            publish(&self.js, subject, id, encode_letter(&letter)).await?;
            self.message
                .double_ack()
                .await
                .map_err(|e| store_error("ack", e))?;
            // The stream drops its oldest letters itself; the listing counts them.
            Ok(0)
        })
    }
}
