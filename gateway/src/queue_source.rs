//! The queue source (Lambda's event source mapping over SQS, on NATS
//! JetStream): every gateway runs one mapping per queue trigger of its
//! functions, all of them sharing one durable pull consumer per trigger.
//!
//! A mapping:
//! - binds its stream: a trigger's `stream`, or for a `subject` the stream
//!   `PORCHLIGHT_Q_<subject>` it creates over that subject (file storage,
//!   messages kept 4 days as SQS does by default), or the one there is;
//! - keeps the durable pull consumer `queue-<function>-<trigger index>`:
//!   explicit acks, an ack wait that outlasts the batching window, a wait
//!   for an environment and the function's timeout twice over, and no
//!   server-side maximum of deliveries (the mapping counts them);
//! - takes a batch: waits for one message, then up to `batchSize` within
//!   `maximumBatchingWindowSeconds` from it (0: what is there now), cut
//!   short at the synchronous payload limit (the rest is given back);
//! - runs it as one synchronous invocation through the normal dispatch
//!   (demand for the autoscaler), at most `maximumConcurrency` batches at
//!   once per mapping on this gateway;
//! - settles each message: acked when its batch succeeded and the answer's
//!   `batchItemFailures` does not name it; otherwise given back with a
//!   delay (1 s doubling per delivery, at most 60 s), or, on its
//!   [`MAX_RECEIVES`]th delivery, stored as a dead letter (trigger
//!   `queue`, event: a batch of that one record) and acked.
//!
//! A message is run again when its batch failed, when the gateway stopped
//! or died while running it (after the ack wait), or when an ack was lost.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use bytes::Bytes;
use futures::StreamExt;
use porchlight_api::QueueTrigger;
use porchlight_core::backoff;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::async_invoke::take_slot;
use crate::dead_letters::{DeadLetter, now_rfc3339};
use crate::error::GatewayError;
use crate::events::sqs::{self, BatchAnswer, QueueMessage};
use crate::gateway::{Gateway, SYNC_PAYLOAD_LIMIT};
use crate::queue::nats::token;
use crate::queue::now_ms;
use crate::registry::FunctionEntry;

/// Deliveries of a message at most: one that failed this many times goes
/// to the dead letters (SQS's `maxReceiveCount` of a redrive policy).
pub const MAX_RECEIVES: u64 = 5;
/// Delay before a failed message is delivered again, doubled per delivery.
const REDELIVERY_BASE: Duration = Duration::from_secs(1);
/// The longest delay before a failed message is delivered again.
const REDELIVERY_MAX: Duration = Duration::from_secs(60);
/// How long one wait for a first message lasts before asking again.
const FETCH_WAIT: Duration = Duration::from_secs(1);
/// How long a message is kept in a stream the gateway creates (SQS's default).
const RETENTION: Duration = Duration::from_secs(4 * 24 * 3600);

/// The stream a `subject` trigger reads (a name JetStream accepts).
pub fn stream_for_subject(subject: &str) -> String {
    let name: String = subject
        .chars()
        .map(|c| match c {
            '*' => 'S',
            '>' => 'G',
            c if c.is_ascii_alphanumeric() || c == '-' || c == '_' => c,
            _ => '_',
        })
        .collect();
    format!("PORCHLIGHT_Q_{name}")
}

/// Runs the mappings of `gateway`'s queue triggers until `shutdown`, then
/// lets the batches running finish (bounded).
pub async fn run(gateway: Arc<Gateway>, shutdown: CancellationToken) {
    let tasks = TaskTracker::new();
    let mut mappings: HashMap<String, (Arc<FunctionEntry>, CancellationToken)> = HashMap::new();
    let mut warned: HashSet<String> = HashSet::new();
    loop {
        let js = gateway.event_store().jetstream();
        let mut seen = HashSet::new();
        for entry in gateway.registry().all() {
            let spec = entry.spec();
            for (index, trigger) in spec.queues() {
                let key = format!(
                    "{}/{index}/{}",
                    entry.name(),
                    serde_json::to_string(trigger).unwrap_or_default()
                );
                seen.insert(key.clone());
                let Some(js) = &js else {
                    if warned.insert(key) {
                        tracing::warn!(
                            function = entry.name(),
                            trigger = index,
                            "a queue trigger needs the gateway on NATS JetStream (start it with --queue nats://HOST:PORT); its messages are not read"
                        );
                    }
                    continue;
                };
                if mappings
                    .get(&key)
                    .is_some_and(|(e, _)| Arc::ptr_eq(e, &entry))
                {
                    continue;
                }
                // New, or the function registered anew: the old mapping
                // takes nothing more and finishes its batches.
                if let Some((_, stop)) = mappings.remove(&key) {
                    stop.cancel();
                }
                let stop = shutdown.child_token();
                let mapping = Arc::new(Mapping {
                    gateway: gateway.clone(),
                    entry: entry.clone(),
                    index,
                    trigger: trigger.clone(),
                    js: js.clone(),
                    first_received: Mutex::new(HashMap::new()),
                    tasks: tasks.clone(),
                });
                tasks.spawn(mapping.run(stop.clone()));
                mappings.insert(key, (entry.clone(), stop));
            }
        }
        mappings.retain(|key, (_, stop)| {
            let keep = seen.contains(key);
            if !keep {
                stop.cancel();
            }
            keep
        });
        warned.retain(|key| seen.contains(key));
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    tasks.close();
    if tokio::time::timeout(Duration::from_secs(5), tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("queue batches still running at the stop are delivered again later");
    }
}

/// One queue trigger of one function on this gateway.
struct Mapping {
    gateway: Arc<Gateway>,
    entry: Arc<FunctionEntry>,
    index: usize,
    trigger: QueueTrigger,
    js: jetstream::Context,
    /// When this gateway first saw each message not yet settled (stream sequence: ms).
    first_received: Mutex<HashMap<u64, u64>>,
    tasks: TaskTracker,
}

impl Mapping {
    /// The subject or stream it reads, as its ARN names it.
    fn source(&self) -> &str {
        self.trigger
            .subject
            .as_deref()
            .or(self.trigger.stream.as_deref())
            .unwrap_or_default()
    }

    fn window(&self) -> Duration {
        Duration::from_secs(u64::from(self.trigger.maximum_batching_window_seconds))
    }

    /// Binds the stream and the consumer.
    async fn bind(&self) -> Result<consumer::PullConsumer, String> {
        let stream = match (&self.trigger.subject, &self.trigger.stream) {
            (Some(subject), _) => {
                let name = stream_for_subject(subject);
                self.js
                    .get_or_create_stream(stream::Config {
                        name: name.clone(),
                        subjects: vec![subject.clone()],
                        retention: stream::RetentionPolicy::Limits,
                        storage: stream::StorageType::File,
                        max_age: RETENTION,
                        discard: stream::DiscardPolicy::Old,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| format!("cannot create or bind the stream {name}: {e}"))?
            }
            (None, Some(name)) => self
                .js
                .get_stream(name)
                .await
                .map_err(|e| format!("cannot bind the stream {name}: {e}"))?,
            (None, None) => return Err("the trigger names no subject or stream".into()),
        };
        let name = format!("queue-{}-{}", token(self.entry.name()), self.index);
        let timeout = Duration::from_secs(u64::from(self.entry.spec().timeout_seconds));
        let concurrency = self.concurrency();
        let config = consumer::pull::Config {
            durable_name: Some(name.clone()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.window() + timeout * 2 + Duration::from_secs(60),
            deliver_policy: consumer::DeliverPolicy::All,
            max_deliver: -1,
            max_ack_pending: (self.trigger.batch_size as i64 * concurrency as i64 * 2).max(1000),
            ..Default::default()
        };
        // Updated when it exists (a changed timeout or batch size), else created.
        match stream.update_consumer(config.clone()).await {
            Ok(c) => Ok(c),
            Err(_) => stream
                .create_consumer(config)
                .await
                .map_err(|e| format!("cannot create the consumer {name}: {e}")),
        }
    }

    /// Batches in flight at once on this gateway.
    fn concurrency(&self) -> usize {
        match self.trigger.maximum_concurrency {
            Some(c) => c as usize,
            None => {
                let s = self.entry.settings();
                (s.max_scale as usize)
                    .saturating_mul(s.concurrency_per_environment as usize)
                    .clamp(1, 1000)
            }
        }
    }

    async fn run(self: Arc<Self>, stop: CancellationToken) {
        let consumer = loop {
            match self.bind().await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(function = self.entry.name(), trigger = self.index, error = %e, "queue trigger not reading yet; trying again");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
        };
        tracing::info!(
            function = self.entry.name(),
            trigger = self.index,
            source = self.source(),
            "queue trigger reading"
        );
        let slots = Arc::new(Semaphore::new(self.concurrency()));
        loop {
            let Some(permit) = take_slot(&slots, &stop).await else {
                return;
            };
            match self.gather(&consumer, &stop).await {
                Ok(batch) if batch.is_empty() => {}
                Ok(batch) => {
                    let this = self.clone();
                    self.tasks.spawn(async move {
                        this.run_batch(batch).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!(function = self.entry.name(), trigger = self.index, error = %e, "cannot take queue messages; trying again");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
        }
    }

    /// Takes one batch: waits for a first message, then gathers up to the
    /// batch size within the window. Empty when stopped (what was taken is
    /// given back).
    async fn gather(
        &self,
        consumer: &consumer::PullConsumer,
        stop: &CancellationToken,
    ) -> Result<Vec<jetstream::Message>, String> {
        let want = self.trigger.batch_size.max(1) as usize;
        let mut out: Vec<jetstream::Message> = Vec::new();
        while out.is_empty() {
            let pull = consumer
                .batch()
                .max_messages(1)
                .expires(FETCH_WAIT)
                .messages();
            let taken = tokio::select! {
                t = take(pull) => t?,
                _ = stop.cancelled() => return Ok(Vec::new()),
            };
            out.extend(taken);
        }
        let window = self.window();
        if window.is_zero() {
            if want > out.len() {
                // What is there now, without waiting.
                let more = take(consumer.fetch().max_messages(want - out.len()).messages()).await;
                match more {
                    Ok(more) => out.extend(more),
                    Err(e) => tracing::debug!(error = %e, "no more messages for the batch"),
                }
            }
            return Ok(out);
        }
        let deadline = tokio::time::Instant::now() + window;
        while out.len() < want {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left < Duration::from_millis(10) {
                break;
            }
            let pull = consumer
                .batch()
                .max_messages(want - out.len())
                .expires(left)
                .messages();
            tokio::select! {
                t = take(pull) => match t {
                    Ok(more) => out.extend(more),
                    Err(e) => {
                        tracing::debug!(error = %e, "batch window ended early");
                        break;
                    }
                },
                _ = stop.cancelled() => {
                    give_back(&out, Duration::ZERO).await;
                    return Ok(Vec::new());
                }
            }
        }
        Ok(out)
    }

    /// Runs one batch and settles its messages.
    async fn run_batch(&self, messages: Vec<jetstream::Message>) {
        let name = self.entry.name();
        let metrics = self.gateway.metrics();
        let in_flight = metrics.queue_in_flight.with_label_values(&[name]);
        in_flight.inc();
        let now = now_ms();
        let mut records = Vec::with_capacity(messages.len());
        let mut batch = Vec::with_capacity(messages.len());
        let mut size = 16usize;
        let mut over = Vec::new();
        for message in messages {
            let Some(m) = self.read(&message, now) else {
                tracing::warn!(
                    function = name,
                    "a queue message without JetStream metadata was dropped"
                );
                let _ = message.ack_with(AckKind::Term).await;
                continue;
            };
            let record = sqs::record(&m, self.source());
            if m.delivered > MAX_RECEIVES {
                // Handed out too often without an answer (its gateways
                // stopped or died): not run again.
                self.dead_letter(&message, &m, record, MAX_RECEIVES_ERROR.into())
                    .await;
                continue;
            }
            let len = record.to_string().len() + 1;
            if !batch.is_empty() && size + len > SYNC_PAYLOAD_LIMIT {
                over.push(message);
                continue;
            }
            size += len;
            records.push(record);
            batch.push((message, m));
        }
        // Past the payload limit: given back for the next batch.
        give_back(&over, Duration::ZERO).await;
        if batch.is_empty() {
            in_flight.dec();
            return;
        }
        let ids: Vec<String> = records
            .iter()
            .map(|r| r["messageId"].as_str().unwrap_or_default().to_string())
            .collect();
        let payload = Bytes::from(sqs::event(records.clone()).to_string());
        let request_id = uuid::Uuid::new_v4().to_string();
        let result = self
            .gateway
            .invoke_batch(&self.entry, payload, &request_id)
            .await;
        let (failed, error, outcome): (HashSet<String>, Bytes, &str) = match result {
            Ok(r) if r.function_error.is_none() => {
                let set: HashSet<String> = ids.iter().cloned().collect();
                match sqs::batch_answer(&r.body, &set) {
                    BatchAnswer::AllDone => (HashSet::new(), Bytes::new(), "success"),
                    BatchAnswer::Failed(f) => (
                        f.into_iter().collect(),
                        Bytes::from_static(
                            br#"{"errorType":"BatchItemFailure","errorMessage":"The function reported this message as failed."}"#,
                        ),
                        "partial",
                    ),
                    BatchAnswer::Invalid(why) => {
                        tracing::warn!(function = name, %request_id, reason = %why, "the batch answer is not valid: the whole batch failed");
                        let error = serde_json::json!({"errorType": "InvalidBatchResponse", "errorMessage": why});
                        (set, Bytes::from(error.to_string()), "failed")
                    }
                }
            }
            Ok(r) => (ids.iter().cloned().collect(), r.body, "failed"),
            Err(GatewayError::ShuttingDown) => {
                // Not run: given back at once, for another gateway or the next start.
                let taken: Vec<_> = batch.into_iter().map(|(m, _)| m).collect();
                give_back(&taken, Duration::ZERO).await;
                in_flight.dec();
                return;
            }
            Err(e) => {
                let error =
                    serde_json::json!({"errorType": e.error_type(), "errorMessage": e.to_string()});
                (
                    ids.iter().cloned().collect(),
                    Bytes::from(error.to_string()),
                    "failed",
                )
            }
        };
        metrics
            .queue_batches
            .with_label_values(&[name, outcome])
            .inc();
        if outcome != "success" {
            tracing::info!(function = name, %request_id, messages = batch.len(), failed = failed.len(), "queue batch failed in part or whole; those messages are delivered again");
        }
        let settles = batch
            .into_iter()
            .zip(records)
            .zip(ids)
            .map(|(((message, m), record), id)| {
                let failed = failed.contains(&id);
                let error = error.clone();
                async move {
                    if !failed {
                        self.settled(m.sequence);
                        match message.double_ack().await {
                            Ok(()) => self.count("acked"),
                            Err(e) => {
                                tracing::warn!(function = name, message_id = %id, error = %e, "cannot ack a queue message; it may run again")
                            }
                        }
                    } else if m.delivered >= MAX_RECEIVES {
                        self.dead_letter(&message, &m, record, error).await;
                    } else {
                        let delay = backoff::exponential(
                            REDELIVERY_BASE,
                            m.delivered as u32,
                            REDELIVERY_MAX,
                        );
                        give_back(std::slice::from_ref(&message), delay).await;
                        self.count("redelivered");
                    }
                }
            });
        futures::future::join_all(settles).await;
        in_flight.dec();
    }

    fn count(&self, outcome: &str) {
        self.gateway
            .metrics()
            .queue_messages
            .with_label_values(&[self.entry.name(), outcome])
            .inc();
    }

    /// Forgets when a settled message was first seen.
    fn settled(&self, sequence: u64) {
        self.first_received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&sequence);
    }

    /// The message as its record is made of.
    fn read(&self, message: &jetstream::Message, now: u64) -> Option<QueueMessage> {
        let info = message.info().ok()?;
        let sent_ms = u64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        let first_received_ms = {
            let mut seen = self
                .first_received
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if seen.len() > 100_000 {
                seen.clear();
            }
            *seen
                .entry(info.stream_sequence)
                .or_insert(if info.delivered <= 1 {
                    now
                } else {
                    // First handed out elsewhere, or before a restart.
                    sent_ms
                })
        };
        let headers = message
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .filter_map(|(k, v)| Some((k.to_string(), v.first()?.to_string())))
            .collect();
        Some(QueueMessage {
            stream: info.stream.to_string(),
            sequence: info.stream_sequence,
            payload: message.payload.clone(),
            headers,
            delivered: info.delivered.max(1) as u64,
            sent_ms,
            first_received_ms,
        })
    }

    /// Stores `message` as a dead letter and acks it (given back for a
    /// later try when the letter cannot be stored).
    async fn dead_letter(
        &self,
        message: &jetstream::Message,
        m: &QueueMessage,
        record: serde_json::Value,
        error: Bytes,
    ) {
        let name = self.entry.name();
        let id = sqs::message_id(&m.stream, m.sequence);
        let letter = DeadLetter {
            function: name.to_string(),
            request_id: id.clone(),
            trigger: crate::sync_invoke::TriggerKind::Queue.as_str(),
            event: Bytes::from(sqs::event(vec![record]).to_string()),
            error: if error.is_empty() {
                Bytes::from_static(b"null")
            } else {
                error
            },
            attempts: m.delivered.min(u64::from(u32::MAX)) as u32,
            time: now_rfc3339(),
        };
        match self.gateway.event_store().put_dead_letter(letter).await {
            Ok(()) => {
                tracing::warn!(function = name, message_id = %id, delivered = m.delivered, "queue message given up; recorded as a dead letter");
                self.gateway
                    .metrics()
                    .dead_letters
                    .with_label_values(&[name])
                    .inc();
                self.count("dead_lettered");
                self.settled(m.sequence);
                if let Err(e) = message.double_ack().await {
                    tracing::warn!(function = name, message_id = %id, error = %e, "cannot ack a dead-lettered queue message");
                }
            }
            Err(e) => {
                tracing::warn!(function = name, message_id = %id, error = %e, "cannot store a queue message's dead letter; it is delivered again");
                give_back(std::slice::from_ref(message), REDELIVERY_MAX).await;
            }
        }
    }
}

const MAX_RECEIVES_ERROR: &str = r#"{"errorType":"MaxReceivesReached","errorMessage":"The message was handed out the most times allowed without an answer."}"#;

/// Reads a pull request's messages to its end.
async fn take<S, E, F>(pull: F) -> Result<Vec<jetstream::Message>, String>
where
    F: std::future::Future<Output = Result<S, E>>,
    S: futures::Stream<Item = Result<jetstream::Message, async_nats::Error>> + Unpin,
    E: std::fmt::Display,
{
    let mut stream = pull.await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    while let Some(m) = stream.next().await {
        match m {
            Ok(m) => out.push(m),
            Err(e) if out.is_empty() => return Err(e.to_string()),
            Err(_) => break,
        }
    }
    Ok(out)
}

/// Gives messages back, to be delivered again after `delay`.
async fn give_back(messages: &[jetstream::Message], delay: Duration) {
    let delay = (!delay.is_zero()).then_some(delay);
    let naks = messages.iter().map(|m| m.ack_with(AckKind::Nak(delay)));
    for r in futures::future::join_all(naks).await {
        if let Err(e) = r {
            tracing::debug!(error = %e, "cannot give a queue message back; it is delivered again after the ack wait");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_name_streams_jetstream_accepts() {
        assert_eq!(stream_for_subject("orders.new"), "PORCHLIGHT_Q_orders_new");
        assert_eq!(stream_for_subject("orders.*.>"), "PORCHLIGHT_Q_orders_S_G");
    }
}
