//! The queue of one gateway: per function, the events due now (oldest
//! first) and those waiting for a retry's delay; in memory, and optionally
//! on a `redb` file in the data folder, written before an event is answered
//! 202 and read back at the next start.
//!
//! Writes go through one writer thread that commits whatever is waiting in
//! one transaction (a group commit), so many callers share each `fsync`.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::record::{decode_event, decode_letter, encode_event, encode_letter};

/// An event's description alone (its bytes go to their own table).
fn encode_head(event: &StoredEvent) -> Vec<u8> {
    encode_event(&StoredEvent {
        payload: bytes::Bytes::new(),
        ..event.clone()
    })
}
use super::{BoxFuture, Consumer, Delivery, EventQueue, QueueError, Settle, StoredEvent, now_ms};
use crate::budget::{Purpose, Reservation};
use crate::dead_letters::{DeadLetter, DeadLetterList, DeadLetters, PageRequest};

/// What describes each event (small: rewritten by each retry).
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// Each event's own bytes, written once.
const PAYLOADS: TableDefinition<u64, &[u8]> = TableDefinition::new("payloads");
const DEAD_LETTERS: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");
/// The last tick fired of each schedule (Unix seconds), by schedule key.
const TICKS: TableDefinition<&str, i64> = TableDefinition::new("schedule_ticks");

/// The file in the data folder.
pub const STORE_FILE: &str = "queue.redb";

/// Writes waiting for the writer thread at most (callers wait beyond).
const WRITE_BACKLOG: usize = 1024;
/// Writes committed together at most.
const GROUP_COMMIT: usize = 256;
/// redb's page cache.
const CACHE_BYTES: usize = 8 * 1024 * 1024;

/// Bounds of a local queue.
#[derive(Clone, Debug)]
pub struct LocalSettings {
    /// Events stored per function at most (more are refused with 429).
    pub depth: usize,
    /// Dead letters kept (the oldest are evicted and counted).
    pub dead_letter_capacity: usize,
    /// Bytes of dead letters kept.
    pub dead_letter_bytes: usize,
}

struct Kept {
    event: StoredEvent,
    delivered: u64,
    /// The event's bytes, held against the memory budget (none for events
    /// read back at start).
    held: Option<Reservation>,
}

#[derive(Default)]
struct Lane {
    ready: VecDeque<u64>,
    delayed: BTreeSet<(u64, u64)>,
    stored: usize,
    notify: Arc<Notify>,
}

impl Lane {
    fn notify(&self) -> Arc<Notify> {
        self.notify.clone()
    }
}

#[derive(Default)]
struct State {
    next_sequence: u64,
    lanes: HashMap<String, Lane>,
    events: HashMap<u64, Kept>,
    /// The last tick fired of each schedule.
    ticks: HashMap<String, i64>,
}

enum Op {
    /// An event's description, and its bytes when it is new.
    Put(u64, Vec<u8>, Option<bytes::Bytes>),
    /// A schedule's last tick, with the event fired for it if any (both in
    /// one transaction: a tick is stored fired exactly when its event is).
    Tick(String, i64, Option<(u64, Vec<u8>, bytes::Bytes)>),
    Remove(u64),
    Letter {
        remove: u64,
        sequence: u64,
        letter: Vec<u8>,
        evicted: Vec<u64>,
    },
    /// A dead letter redriven.
    RemoveLetter(u64),
}

struct Write {
    op: Op,
    done: oneshot::Sender<Result<(), String>>,
}

struct Inner {
    state: Mutex<State>,
    writer: Option<mpsc::Sender<Write>>,
    dead: DeadLetters,
    settings: LocalSettings,
    closed: CancellationToken,
    path: Option<PathBuf>,
}

/// A gateway's own queue, in memory or on a file.
#[derive(Clone)]
pub struct LocalQueue {
    inner: Arc<Inner>,
}

impl LocalQueue {
    /// A queue in memory only: nothing survives the process.
    pub fn in_memory(settings: LocalSettings) -> Self {
        LocalQueue::build(settings, None, None)
    }

    /// A queue on `<dir>/queue.redb`, with the events and dead letters an
    /// earlier run left there (those read back hold no memory reservation:
    /// their count and bytes are bounded by the settings). Fails when
    /// another gateway has the file open.
    pub fn open(dir: &Path, settings: LocalSettings) -> Result<Self, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the data folder {}: {e}", dir.display()))?;
        let path = dir.join(STORE_FILE);
        // Events are read back only at start: a small cache keeps the
        // file's pages from growing the process (redb's default is 1 GiB).
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => format!(
                    "{} is in use by another gateway (give each its own --data-dir)",
                    path.display()
                ),
                e => format!("cannot open {}: {e}", path.display()),
            })?;
        let Contents {
            events,
            letters,
            ticks,
        } = read_all(&db).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let (tx, rx) = mpsc::channel(WRITE_BACKLOG);
        std::thread::Builder::new()
            .name("porchlight-queue-writer".into())
            .spawn(move || write_loop(db, rx))
            .map_err(|e| format!("cannot start the queue writer: {e}"))?;
        let queue = LocalQueue::build(settings, Some(tx), Some(path));
        {
            let mut state = queue.inner.state.lock().unwrap_or_else(|p| p.into_inner());
            state.ticks = ticks;
            for (sequence, event) in events {
                state.next_sequence = state.next_sequence.max(sequence);
                let lane = state.lanes.entry(event.function.clone()).or_default();
                lane.stored += 1;
                if event.not_before_ms > 0 {
                    lane.delayed.insert((event.not_before_ms, sequence));
                } else {
                    lane.ready.push_back(sequence);
                }
                state.events.insert(
                    sequence,
                    Kept {
                        event,
                        delivered: 0,
                        held: None,
                    },
                );
            }
        }
        let mut total = 0;
        let kept = letters.len() as u64;
        for (sequence, letter) in letters {
            total = total.max(sequence);
            queue.inner.dead.restore(sequence, letter);
        }
        queue
            .inner
            .dead
            .set_counts(total, total.saturating_sub(kept));
        Ok(queue)
    }

    fn build(
        settings: LocalSettings,
        writer: Option<mpsc::Sender<Write>>,
        path: Option<PathBuf>,
    ) -> Self {
        LocalQueue {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                writer,
                dead: DeadLetters::new(settings.dead_letter_capacity, settings.dead_letter_bytes),
                settings,
                closed: CancellationToken::new(),
                path,
            }),
        }
    }

    /// Stores `event` (and, with `tick`, records the schedule's tick in the
    /// same write).
    async fn store(
        &self,
        event: StoredEvent,
        held: Reservation,
        tick: Option<(String, i64)>,
    ) -> Result<(), QueueError> {
        let inner = &self.inner;
        if inner.closed.is_cancelled() {
            return Err(QueueError::Closed);
        }
        let function = event.function.clone();
        let sequence = {
            let mut state = inner.lock();
            let lane = state.lanes.entry(function.clone()).or_default();
            if lane.stored >= inner.settings.depth {
                return Err(QueueError::Full);
            }
            lane.stored += 1;
            state.next_sequence += 1;
            state.next_sequence
        };
        // The file gets the event's own bytes, shared, not copied.
        let head = encode_head(&event);
        let op = match &tick {
            Some((key, at)) => Op::Tick(
                key.clone(),
                *at,
                Some((sequence, head, event.payload.clone())),
            ),
            None => Op::Put(sequence, head, Some(event.payload.clone())),
        };
        let written = inner.write(op).await;
        if let Err(e) = written {
            let mut state = inner.lock();
            if let Some(lane) = state.lanes.get_mut(&function) {
                lane.stored = lane.stored.saturating_sub(1);
            }
            return Err(e);
        }
        let mut state = inner.lock();
        if let Some((key, at)) = tick {
            state.ticks.insert(key, at);
        }
        state.events.insert(
            sequence,
            Kept {
                event,
                delivered: 0,
                held: Some(held),
            },
        );
        let lane = state.lanes.entry(function).or_default();
        lane.ready.push_back(sequence);
        lane.notify.notify_one();
        Ok(())
    }

    /// Events stored for `function` (due, delayed or running).
    pub fn stored(&self, function: &str) -> usize {
        self.inner
            .lock()
            .lanes
            .get(function)
            .map_or(0, |l| l.stored)
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `op` to the file (nothing without one), waiting for its commit.
    async fn write(&self, op: Op) -> Result<(), QueueError> {
        let Some(writer) = &self.writer else {
            return Ok(());
        };
        let (done, answer) = oneshot::channel();
        writer
            .send(Write { op, done })
            .await
            .map_err(|_| QueueError::Store("the queue writer stopped".into()))?;
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(QueueError::Store(e)),
            Err(_) => Err(QueueError::Store("the queue writer stopped".into())),
        }
    }

    /// Puts a stored event back in its lane, due at `due_ms` (0: now).
    fn requeue(&self, function: &str, sequence: u64, due_ms: u64) {
        let mut state = self.lock();
        if let Some(kept) = state.events.get_mut(&sequence) {
            kept.event.not_before_ms = due_ms;
        }
        let lane = state.lanes.entry(function.to_string()).or_default();
        if due_ms == 0 {
            lane.ready.push_back(sequence);
        } else {
            lane.delayed.insert((due_ms, sequence));
        }
        lane.notify.notify_one();
    }

    fn forget(&self, function: &str, sequence: u64) {
        let mut state = self.lock();
        if state.events.remove(&sequence).is_some()
            && let Some(lane) = state.lanes.get_mut(function)
        {
            lane.stored = lane.stored.saturating_sub(1);
        }
    }
}

/// What a store file holds: events and dead letters, each by sequence.
struct Contents {
    events: Vec<(u64, StoredEvent)>,
    letters: Vec<(u64, DeadLetter)>,
    ticks: HashMap<String, i64>,
}

fn read_all(db: &Database) -> Result<Contents, String> {
    let init = db.begin_write().map_err(|e| e.to_string())?;
    init.open_table(EVENTS).map_err(|e| e.to_string())?;
    init.open_table(PAYLOADS).map_err(|e| e.to_string())?;
    init.open_table(DEAD_LETTERS).map_err(|e| e.to_string())?;
    init.open_table(TICKS).map_err(|e| e.to_string())?;
    init.commit().map_err(|e| e.to_string())?;
    let read = db.begin_read().map_err(|e| e.to_string())?;
    let mut events = Vec::new();
    let table = read.open_table(EVENTS).map_err(|e| e.to_string())?;
    let payloads = read.open_table(PAYLOADS).map_err(|e| e.to_string())?;
    for row in table.iter().map_err(|e| e.to_string())? {
        let (k, v) = row.map_err(|e| e.to_string())?;
        let payload = payloads.get(k.value()).map_err(|e| e.to_string())?;
        match (decode_event(v.value()), payload) {
            (Some(mut event), Some(payload)) => {
                event.payload = bytes::Bytes::copy_from_slice(payload.value());
                events.push((k.value(), event));
            }
            _ => tracing::warn!(
                sequence = k.value(),
                "an unreadable stored event was skipped"
            ),
        }
    }
    let mut letters = Vec::new();
    let table = read.open_table(DEAD_LETTERS).map_err(|e| e.to_string())?;
    for row in table.iter().map_err(|e| e.to_string())? {
        let (k, v) = row.map_err(|e| e.to_string())?;
        if let Some(letter) = decode_letter(v.value()) {
            letters.push((k.value(), letter));
        }
    }
    let mut ticks = HashMap::new();
    let table = read.open_table(TICKS).map_err(|e| e.to_string())?;
    for row in table.iter().map_err(|e| e.to_string())? {
        let (k, v) = row.map_err(|e| e.to_string())?;
        ticks.insert(k.value().to_string(), v.value());
    }
    Ok(Contents {
        events,
        letters,
        ticks,
    })
}

/// The writer thread: one transaction for everything waiting.
fn write_loop(db: Database, mut rx: mpsc::Receiver<Write>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < GROUP_COMMIT {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let result = commit(&db, &batch);
        for w in batch {
            let _ = w.done.send(result.clone());
        }
    }
}

fn commit(db: &Database, batch: &[Write]) -> Result<(), String> {
    let tx = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut events = tx.open_table(EVENTS).map_err(|e| e.to_string())?;
        let mut payloads = tx.open_table(PAYLOADS).map_err(|e| e.to_string())?;
        let mut letters = tx.open_table(DEAD_LETTERS).map_err(|e| e.to_string())?;
        let mut ticks = tx.open_table(TICKS).map_err(|e| e.to_string())?;
        for w in batch {
            match &w.op {
                Op::Tick(key, tick, event) => {
                    ticks
                        .insert(key.as_str(), *tick)
                        .map_err(|e| e.to_string())?;
                    if let Some((k, head, payload)) = event {
                        events
                            .insert(k, head.as_slice())
                            .map_err(|e| e.to_string())?;
                        payloads
                            .insert(k, payload.as_ref())
                            .map_err(|e| e.to_string())?;
                    }
                }
                Op::Put(k, head, payload) => {
                    events
                        .insert(k, head.as_slice())
                        .map_err(|e| e.to_string())?;
                    if let Some(payload) = payload {
                        payloads
                            .insert(k, payload.as_ref())
                            .map_err(|e| e.to_string())?;
                    }
                }
                Op::Remove(k) => {
                    events.remove(k).map_err(|e| e.to_string())?;
                    payloads.remove(k).map_err(|e| e.to_string())?;
                }
                Op::Letter {
                    remove,
                    sequence,
                    letter,
                    evicted,
                } => {
                    events.remove(remove).map_err(|e| e.to_string())?;
                    payloads.remove(remove).map_err(|e| e.to_string())?;
                    letters
                        .insert(sequence, letter.as_slice())
                        .map_err(|e| e.to_string())?;
                    for k in evicted {
                        letters.remove(k).map_err(|e| e.to_string())?;
                    }
                }
                Op::RemoveLetter(k) => {
                    letters.remove(k).map_err(|e| e.to_string())?;
                }
            }
        }
    }
    tx.commit().map_err(|e| e.to_string())
}

impl EventQueue for LocalQueue {
    fn describe(&self) -> String {
        match &self.inner.path {
            Some(p) => format!("embedded store {}", p.display()),
            None => "in memory (not durable)".to_string(),
        }
    }

    fn is_durable(&self) -> bool {
        self.inner.writer.is_some()
    }

    fn stored_for(&self, function: &str) -> Option<usize> {
        Some(self.stored(function))
    }

    fn stored_events(&self) -> Option<usize> {
        Some(self.inner.lock().lanes.values().map(|l| l.stored).sum())
    }

    fn publish(
        &self,
        event: StoredEvent,
        held: Reservation,
    ) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(self.store(event, held, None))
    }

    fn publish_tick(
        &self,
        event: StoredEvent,
        held: Reservation,
        key: String,
        tick: i64,
    ) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(self.store(event, held, Some((key, tick))))
    }

    fn last_tick<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<i64>, QueueError>> {
        let last = self.inner.lock().ticks.get(key).copied();
        Box::pin(async move { Ok(last) })
    }

    fn record_tick(&self, key: String, tick: i64) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move {
            self.inner.write(Op::Tick(key.clone(), tick, None)).await?;
            self.inner.lock().ticks.insert(key, tick);
            Ok(())
        })
    }

    fn has_room(&self, function: &str) -> bool {
        self.stored(function) < self.inner.settings.depth
    }

    fn consumer(&self, function: &str) -> BoxFuture<'_, Result<Box<dyn Consumer>, QueueError>> {
        let consumer = LocalConsumer {
            inner: self.inner.clone(),
            function: function.to_string(),
        };
        Box::pin(async move { Ok(Box::new(consumer) as Box<dyn Consumer>) })
    }

    fn dead_letters<'a>(
        &'a self,
        page: &'a PageRequest,
    ) -> BoxFuture<'a, Result<DeadLetterList, QueueError>> {
        Box::pin(async move { Ok(self.inner.dead.page(page)) })
    }

    fn find_dead_letters<'a>(
        &'a self,
        function: &'a str,
        request_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<(u64, DeadLetter)>, QueueError>> {
        Box::pin(async move { Ok(self.inner.dead.matching(function, request_id)) })
    }

    fn remove_dead_letter(&self, sequence: u64) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move {
            self.inner.write(Op::RemoveLetter(sequence)).await?;
            self.inner.dead.remove(sequence);
            Ok(())
        })
    }

    fn close(&self) {
        self.inner.closed.cancel();
    }
}

struct LocalConsumer {
    inner: Arc<Inner>,
    function: String,
}

impl LocalConsumer {
    /// The next due event, or how long until one is due.
    fn take(&self) -> (Option<Delivery>, Option<Duration>, Arc<Notify>) {
        let now = now_ms();
        let mut state = self.inner.lock();
        let state = &mut *state;
        let lane = state.lanes.entry(self.function.clone()).or_default();
        while let Some(&(due, sequence)) = lane.delayed.first() {
            if due > now {
                break;
            }
            lane.delayed.pop_first();
            lane.ready.push_back(sequence);
        }
        let notify = lane.notify();
        let wait = lane
            .delayed
            .first()
            .map(|(due, _)| Duration::from_millis(due - now));
        while let Some(sequence) = lane.ready.pop_front() {
            let Some(kept) = state.events.get_mut(&sequence) else {
                continue;
            };
            kept.delivered += 1;
            if !lane.ready.is_empty() {
                lane.notify.notify_one();
            }
            let delivery = Delivery {
                event: kept.event.clone(),
                delivered: kept.delivered,
                settle: Box::new(LocalSettle {
                    inner: self.inner.clone(),
                    function: self.function.clone(),
                    sequence,
                }),
            };
            return (Some(delivery), None, notify);
        }
        (None, wait, notify)
    }
}

impl Consumer for LocalConsumer {
    fn next(&mut self, _room: usize) -> BoxFuture<'_, Result<Option<Delivery>, QueueError>> {
        Box::pin(async move {
            loop {
                if self.inner.closed.is_cancelled() {
                    return Ok(None);
                }
                let (delivery, wait, notify) = self.take();
                if delivery.is_some() {
                    return Ok(delivery);
                }
                let wait = wait.unwrap_or(Duration::from_secs(3600));
                tokio::select! {
                    _ = notify.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.inner.closed.cancelled() => return Ok(None),
                }
            }
        })
    }
}

struct LocalSettle {
    inner: Arc<Inner>,
    function: String,
    sequence: u64,
}

impl Settle for LocalSettle {
    fn ack(&self) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move {
            let written = self.inner.write(Op::Remove(self.sequence)).await;
            self.inner.forget(&self.function, self.sequence);
            written
        })
    }

    fn retry(&self, event: StoredEvent, delay: Duration) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move {
            let mut event = event;
            event.not_before_ms = now_ms() + delay.as_millis() as u64;
            let due = event.not_before_ms;
            let written = self
                .inner
                .write(Op::Put(self.sequence, encode_head(&event), None))
                .await;
            {
                let mut state = self.inner.lock();
                if let Some(kept) = state.events.get_mut(&self.sequence) {
                    kept.event = event;
                }
            }
            self.inner.requeue(&self.function, self.sequence, due);
            written
        })
    }

    fn release(&self, delay: Duration) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move {
            let due = if delay.is_zero() {
                0
            } else {
                now_ms() + delay.as_millis() as u64
            };
            self.inner.requeue(&self.function, self.sequence, due);
            Ok(())
        })
    }

    fn in_progress(&self) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async { Ok(()) })
    }

    fn dead_letter(&self, letter: DeadLetter) -> BoxFuture<'_, Result<u64, QueueError>> {
        Box::pin(async move {
            let bytes = encode_letter(&letter);
            // The event's bytes move to its dead letter (or as much as fits).
            let held = {
                let mut state = self.inner.lock();
                state
                    .events
                    .get_mut(&self.sequence)
                    .and_then(|k| k.held.take())
            };
            let (sequence, evicted) = match held {
                Some(held) => {
                    let mut held = held.repurpose(Purpose::DeadLetter);
                    let _ = held.try_resize(letter.size());
                    self.inner.dead.push(letter, held)
                }
                None => self.inner.dead.push_unheld(letter),
            };
            let count = evicted.len() as u64;
            let written = self
                .inner
                .write(Op::Letter {
                    remove: self.sequence,
                    sequence,
                    letter: bytes,
                    evicted,
                })
                .await;
            self.inner.forget(&self.function, self.sequence);
            written.map(|()| count)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::MemoryBudget;
    use crate::sync_invoke::TriggerKind;
    use bytes::Bytes;

    fn settings(depth: usize) -> LocalSettings {
        LocalSettings {
            depth,
            dead_letter_capacity: 100,
            dead_letter_bytes: 1 << 20,
        }
    }

    fn event(i: usize) -> StoredEvent {
        StoredEvent::new(
            format!("r{i}"),
            "f",
            TriggerKind::Event,
            Bytes::from(format!("{{\"n\":{i}}}")),
        )
    }

    async fn publish(
        q: &LocalQueue,
        budget: &MemoryBudget,
        e: StoredEvent,
    ) -> Result<(), QueueError> {
        let held = budget
            .try_reserve(e.payload.len(), Purpose::Async)
            .expect("room");
        q.publish(e, held).await
    }

    async fn take(c: &mut Box<dyn Consumer>) -> Delivery {
        tokio::time::timeout(Duration::from_secs(5), c.next(1))
            .await
            .expect("an event within 5 s")
            .expect("no store error")
            .expect("queue open")
    }

    fn letter(e: &StoredEvent) -> DeadLetter {
        DeadLetter {
            function: e.function.clone(),
            request_id: e.request_id.clone(),
            trigger: e.trigger.as_str(),
            event: e.payload.clone(),
            error: Bytes::from_static(br#"{"errorMessage":"boom"}"#),
            attempts: 3,
            time: String::new(),
        }
    }

    #[tokio::test]
    async fn schedule_ticks_persist_with_their_events() {
        let dir = tempdir();
        let budget = MemoryBudget::new(1 << 20);
        {
            let q = LocalQueue::open(&dir, settings(100)).expect("open");
            assert_eq!(q.last_tick("f.0.x").await, Ok(None));
            q.record_tick("f.0.x".into(), 60).await.expect("started");
            let mut e = event(1);
            e.trigger = TriggerKind::Schedule;
            let held = budget.try_reserve(8, Purpose::Async).expect("room");
            q.publish_tick(e, held, "f.0.x".into(), 120)
                .await
                .expect("fired");
            assert_eq!(q.last_tick("f.0.x").await, Ok(Some(120)));
        }
        let q = reopen(&dir).await;
        assert_eq!(q.last_tick("f.0.x").await, Ok(Some(120)));
        assert_eq!(q.last_tick("f.1.x").await, Ok(None));
        let mut c = q.consumer("f").await.expect("consumer");
        let d = take(&mut c).await;
        assert_eq!(
            (d.event.request_id.as_str(), d.event.trigger),
            ("r1", TriggerKind::Schedule)
        );
    }

    #[tokio::test]
    async fn events_persist_across_reopen_and_acks_remove_them() {
        let dir = tempdir();
        let budget = MemoryBudget::new(1 << 20);
        {
            let q = LocalQueue::open(&dir, settings(100)).expect("open");
            for i in 0..5 {
                publish(&q, &budget, event(i)).await.expect("stored");
            }
            let mut c = q.consumer("f").await.expect("consumer");
            let first = take(&mut c).await;
            assert_eq!(first.event.request_id, "r0");
            first.settle.ack().await.expect("acked");
            // Taken and not settled: it comes back after a restart.
            let second = take(&mut c).await;
            assert_eq!(second.event.request_id, "r1");
            assert!(
                LocalQueue::open(&dir, settings(100)).is_err(),
                "a second gateway cannot open the same file"
            );
            q.close();
        }
        // The writer thread lets go of the file once its queue is dropped.
        let q = reopen(&dir).await;
        let mut c = q.consumer("f").await.expect("consumer");
        let mut seen = Vec::new();
        for _ in 0..4 {
            let d = take(&mut c).await;
            seen.push(d.event.request_id.clone());
            d.settle.ack().await.expect("acked");
        }
        assert_eq!(seen, ["r1", "r2", "r3", "r4"]);
        assert_eq!(q.stored("f"), 0);
        drop(c);
        drop(q);
        let q = reopen(&dir).await;
        assert_eq!(q.stored("f"), 0, "acked events are gone from the file");
    }

    #[tokio::test]
    async fn a_retry_keeps_its_count_and_waits_its_delay_across_reopen() {
        let dir = tempdir();
        let budget = MemoryBudget::new(1 << 20);
        {
            let q = LocalQueue::open(&dir, settings(100)).expect("open");
            publish(&q, &budget, event(0)).await.expect("stored");
            publish(&q, &budget, event(1)).await.expect("stored");
            let mut c = q.consumer("f").await.expect("consumer");
            let d = take(&mut c).await;
            let mut again = d.event.clone();
            again.attempts = 1;
            d.settle
                .retry(again, Duration::from_millis(300))
                .await
                .expect("stored again");
            // The delayed event does not block the next one.
            let next = take(&mut c).await;
            assert_eq!(next.event.request_id, "r1");
            next.settle.ack().await.expect("acked");
            // Released without counting: due again at once.
            let d = take(&mut c).await;
            assert_eq!(d.event.request_id, "r0");
            assert_eq!(d.event.attempts, 1);
            assert!(d.event.not_before_ms > d.event.accepted_at_ms);
            let mut again = d.event.clone();
            again.attempts = 2;
            d.settle
                .retry(again, Duration::from_millis(400))
                .await
                .expect("stored again");
        }
        let q = reopen(&dir).await;
        let mut c = q.consumer("f").await.expect("consumer");
        let d = take(&mut c).await;
        assert_eq!(d.event.request_id, "r0");
        assert_eq!(d.event.attempts, 2, "the count survives a restart");
        assert!(
            now_ms() >= d.event.not_before_ms,
            "not handed out before its delay"
        );
        d.settle.release(Duration::ZERO).await.expect("released");
        let d = take(&mut c).await;
        assert_eq!(d.delivered, 2);
    }

    #[tokio::test]
    async fn a_full_lane_refuses_and_a_closed_queue_ends_its_consumers() {
        let budget = MemoryBudget::new(1 << 20);
        let q = LocalQueue::in_memory(settings(2));
        publish(&q, &budget, event(0)).await.expect("stored");
        publish(&q, &budget, event(1)).await.expect("stored");
        assert!(!q.has_room("f"));
        assert_eq!(publish(&q, &budget, event(2)).await, Err(QueueError::Full));
        assert!(q.has_room("g"));
        let mut c = q.consumer("g").await.expect("consumer");
        let waiting = tokio::spawn(async move { c.next(1).await.map(|d| d.is_none()) });
        q.close();
        let ended = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("ends within 5 s")
            .expect("joined");
        assert_eq!(ended, Ok(true));
    }

    #[tokio::test]
    async fn dead_letters_persist_and_paginate() {
        let dir = tempdir();
        let budget = MemoryBudget::new(1 << 20);
        {
            let q = LocalQueue::open(&dir, settings(100)).expect("open");
            for i in 0..7 {
                publish(&q, &budget, event(i)).await.expect("stored");
            }
            let mut c = q.consumer("f").await.expect("consumer");
            for _ in 0..7 {
                let d = take(&mut c).await;
                d.settle.dead_letter(letter(&d.event)).await.expect("moved");
            }
            assert_eq!(q.stored("f"), 0);
        }
        let q = reopen(&dir).await;
        assert_eq!(q.stored("f"), 0, "dead-lettered events are not run again");
        let mut request = PageRequest {
            function: Some("f".into()),
            after: None,
            max_items: 3,
            max_bytes: usize::MAX,
        };
        let mut seen = Vec::new();
        for _ in 0..10 {
            let page = q.dead_letters(&request).await.expect("page");
            assert!(page.dead_letters.len() <= 3);
            assert_eq!(page.total, 7);
            seen.extend(page.dead_letters.iter().map(|l| l.request_id.clone()));
            match page.next_marker {
                Some(m) => request.after = Some(m.parse().expect("number")),
                None => break,
            }
        }
        assert_eq!(seen, ["r0", "r1", "r2", "r3", "r4", "r5", "r6"]);
        assert_eq!(
            q.dead_letters(&request).await.expect("page").dead_letters[0].error,
            Bytes::from_static(br#"{"errorMessage":"boom"}"#)
        );
    }

    /// Opens `dir` again once the previous queue's writer let go of it.
    #[tokio::test]
    async fn a_removed_dead_letter_stays_removed_across_reopen() {
        let dir = tempdir();
        let budget = MemoryBudget::new(1 << 20);
        let q = LocalQueue::open(&dir, settings(10)).expect("open");
        for i in 0..3 {
            publish(&q, &budget, event(i)).await.expect("stored");
        }
        let mut c = q.consumer("f").await.expect("consumer");
        for _ in 0..3 {
            let d = take(&mut c).await;
            d.settle
                .dead_letter(letter(&d.event))
                .await
                .expect("letter");
        }
        let found = q.find_dead_letters("f", Some("r1")).await.expect("find");
        assert_eq!(found.len(), 1);
        assert!(
            q.find_dead_letters("g", None)
                .await
                .expect("find")
                .is_empty()
        );
        q.remove_dead_letter(found[0].0).await.expect("remove");
        drop(c);
        drop(q);
        let q = reopen(&dir).await;
        let left: Vec<String> = q
            .find_dead_letters("f", None)
            .await
            .expect("find")
            .into_iter()
            .map(|(_, l)| l.request_id)
            .collect();
        assert_eq!(left, ["r0", "r2"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    async fn reopen(dir: &Path) -> LocalQueue {
        for _ in 0..100 {
            if let Ok(q) = LocalQueue::open(dir, settings(100)) {
                return q;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the store was not released within 2 s");
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "porchlight-queue-test-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }
}
