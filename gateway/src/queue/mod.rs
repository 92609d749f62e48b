//! Where async events wait: one interface, [`EventQueue`], over three
//! stores. An event is answered 202 only once its store took it
//! ([`EventQueue::publish`]); a worker takes it ([`Consumer::next`]), runs
//! it and settles it ([`Delivery`]): ack on completion, stored again with a
//! delay for a retry, released for a throttle, moved to the dead letters
//! when its attempts or its age are spent. An event taken and not settled
//! (its gateway stopped or died while running it) is handed out again.
//!
//! - [`local::LocalQueue`] in memory: today's behaviour, nothing survives
//!   the process (Kubernetes mode without `--queue` or `--data-dir`).
//! - [`local::LocalQueue`] on a file (`redb`): local mode's durable default,
//!   one gateway per data folder.
//! - [`nats::NatsQueue`]: NATS JetStream, shared by any number of gateways.
//!
//! Each store also keeps the last tick fired of every schedule
//! ([`EventQueue::last_tick`]), so that a restart fires a missed tick once.

pub mod local;
pub mod nats;
mod record;

pub use record::decode_trigger;

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::dead_letters::{DeadLetter, DeadLetterList, PageRequest};
use crate::forwarded::Forwarded;
use crate::sync_invoke::TriggerKind;

/// A boxed future, so that the queue traits can be used as objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An async event as its store keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    /// The request id: the same on every attempt, before and after a restart.
    pub request_id: String,
    /// The function it is for.
    pub function: String,
    /// Where it came from.
    pub trigger: TriggerKind,
    /// The event JSON.
    pub payload: Bytes,
    /// When it was accepted (milliseconds since the Unix epoch).
    pub accepted_at_ms: u64,
    /// Attempts that ended in a function error so far.
    pub attempts: u32,
    /// Not to run before this time (milliseconds since the Unix epoch).
    pub not_before_ms: u64,
    /// The `X-Amzn-Trace-Id` the environment gets, the same on every
    /// attempt (events stored before it was kept have none: they get a new one).
    pub trace_id: Option<String>,
    /// The caller's client context (base64 JSON).
    pub client_context: Option<String>,
    /// The `traceparent` of the span that accepted the event, which its
    /// spans continue (when spans are recorded).
    pub resumes: Option<String>,
    /// Published again from the dead letters (not stored: it only makes
    /// the publish one that a store's de-duplication tells apart from the
    /// event's first).
    pub redriven: bool,
}

impl StoredEvent {
    /// A new event, accepted now.
    pub fn new(request_id: String, function: &str, trigger: TriggerKind, payload: Bytes) -> Self {
        StoredEvent {
            request_id,
            function: function.to_string(),
            trigger,
            payload,
            accepted_at_ms: now_ms(),
            attempts: 0,
            not_before_ms: 0,
            trace_id: None,
            client_context: None,
            resumes: None,
            redriven: false,
        }
    }

    /// The event with what its environment gets besides the event.
    pub fn forwarding(self, forwarded: Forwarded) -> Self {
        StoredEvent {
            trace_id: Some(forwarded.trace_id),
            client_context: forwarded.client_context,
            resumes: forwarded.resumes.and_then(|r| r.to_traceparent()),
            ..self
        }
    }

    /// What its environment gets besides the event, on any attempt.
    pub fn forwarded(&self) -> Forwarded {
        match &self.trace_id {
            Some(id) => Forwarded::restored(
                id.clone(),
                self.client_context.clone(),
                self.resumes.as_deref(),
            ),
            None => Forwarded::new_trace(false),
        }
    }

    /// How old the event is at `now_ms`.
    pub fn age(&self, now_ms: u64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(self.accepted_at_ms))
    }
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why a store could not do what was asked.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum QueueError {
    /// The function has as many events stored as it may.
    #[error("the function's async queue is full")]
    Full,
    /// The store failed (disk, connection, server); the text is for logs only.
    #[error("the event store failed: {0}")]
    Store(String),
    /// The queue is closed (the gateway is stopping).
    #[error("the event queue is closed")]
    Closed,
    /// No room in the memory budget for the copy written to the store.
    #[error("the memory budget has no room to write the event")]
    Budget,
}

/// A store of async events and of dead letters.
pub trait EventQueue: Send + Sync + 'static {
    /// Which store this is, for logs and the banner.
    fn describe(&self) -> String;
    /// Whether events survive a restart of the gateway.
    fn is_durable(&self) -> bool;
    /// Events this gateway's own store holds (`None` for a shared store).
    fn stored_events(&self) -> Option<usize>;
    /// Events of `function` this gateway's own store holds (`None` for a
    /// shared store).
    fn stored_for(&self, function: &str) -> Option<usize>;
    /// Stores `event`; `Ok` only once it is stored (on disk, or in the
    /// JetStream stream). `held` is the event's memory reservation, which
    /// the store keeps as long as it keeps the event's bytes in memory.
    fn publish(
        &self,
        event: StoredEvent,
        held: crate::budget::Reservation,
    ) -> BoxFuture<'_, Result<(), QueueError>>;
    /// Stores `event`, fired for the schedule `key`'s tick `tick` (Unix
    /// seconds), and records the tick as the schedule's last: both or
    /// neither on a gateway's own store; on JetStream the event's
    /// `Nats-Msg-Id` (its request id, one per schedule and tick) drops a
    /// second gateway's copy of the same tick.
    fn publish_tick(
        &self,
        event: StoredEvent,
        held: crate::budget::Reservation,
        key: String,
        tick: i64,
    ) -> BoxFuture<'_, Result<(), QueueError>>;
    /// The last tick fired (or a schedule's starting point) of the schedule `key`.
    fn last_tick<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<i64>, QueueError>>;
    /// Records `tick` as the last of the schedule `key` without firing it
    /// (a new schedule starts from now: no tick before it is fired).
    fn record_tick(&self, key: String, tick: i64) -> BoxFuture<'_, Result<(), QueueError>>;
    /// Whether `function` may have one more event stored now (a hint taken
    /// before building a fan-out event; `publish` decides).
    fn has_room(&self, function: &str) -> bool;
    /// Takes `function`'s events as they become due.
    fn consumer(&self, function: &str) -> BoxFuture<'_, Result<Box<dyn Consumer>, QueueError>>;
    /// One page of the dead letters.
    fn dead_letters<'a>(
        &'a self,
        page: &'a PageRequest,
    ) -> BoxFuture<'a, Result<DeadLetterList, QueueError>>;
    /// The dead letters of `function` (only `request_id`'s, when given),
    /// oldest first, each with the sequence it is kept under.
    fn find_dead_letters<'a>(
        &'a self,
        function: &'a str,
        request_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<(u64, DeadLetter)>, QueueError>>;
    /// Removes the dead letter kept under `sequence` (once it was redriven).
    fn remove_dead_letter(&self, sequence: u64) -> BoxFuture<'_, Result<(), QueueError>>;
    /// Whether [`EventQueue::publish_record`] can reach a subject (a store on NATS).
    fn publishes_to_subjects(&self) -> bool {
        false
    }
    /// Publishes a destination record to a NATS subject.
    fn publish_record<'a>(
        &'a self,
        subject: &'a str,
        record: Bytes,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        let _ = (subject, record);
        Box::pin(async {
            Err(QueueError::Store(
                "a subject destination needs the gateway on NATS (--queue nats://...)".into(),
            ))
        })
    }
    /// The JetStream connection, for queue triggers (a store on NATS).
    fn jetstream(&self) -> Option<async_nats::jetstream::Context> {
        None
    }
    /// Stores a dead letter that is not an event of this store (a queue
    /// trigger's message given up).
    fn put_dead_letter(&self, letter: DeadLetter) -> BoxFuture<'_, Result<(), QueueError>> {
        let _ = letter;
        Box::pin(async {
            Err(QueueError::Store(
                "this store takes no outside dead letters".into(),
            ))
        })
    }
    /// Stops handing out events: every consumer's `next` answers `None`.
    fn close(&self);
}

/// Takes one function's events.
pub trait Consumer: Send {
    /// The next due event, waiting for one; `room` is how many this caller
    /// can start now (at least 1), so a store that fetches in batches never
    /// takes more than will run. `None` once the queue is closed.
    fn next(&mut self, room: usize) -> BoxFuture<'_, Result<Option<Delivery>, QueueError>>;
}

/// How a taken event is settled.
pub trait Settle: Send + Sync {
    /// Done: remove it.
    fn ack(&self) -> BoxFuture<'_, Result<(), QueueError>>;
    /// Store `event` (the same request, its attempts counted) to run again
    /// after `delay`, in place of the taken one.
    fn retry(&self, event: StoredEvent, delay: Duration) -> BoxFuture<'_, Result<(), QueueError>>;
    /// Give it back without counting an attempt, due after `delay`.
    fn release(&self, delay: Duration) -> BoxFuture<'_, Result<(), QueueError>>;
    /// Still running: keep it taken (JetStream's in-progress ack).
    fn in_progress(&self) -> BoxFuture<'_, Result<(), QueueError>>;
    /// Replace it with its dead letter; answers how many older letters
    /// were evicted to make room (when the store knows).
    fn dead_letter(&self, letter: DeadLetter) -> BoxFuture<'_, Result<u64, QueueError>>;
}

/// One taken event and how to settle it.
pub struct Delivery {
    /// The event.
    pub event: StoredEvent,
    /// Times the store handed this stored copy out, this one included
    /// (more than 1 after a gateway stopped or died while running it).
    pub delivered: u64,
    /// Settles it.
    pub settle: Box<dyn Settle>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("event", &self.event)
            .field("delivered", &self.delivered)
            .finish_non_exhaustive()
    }
}
