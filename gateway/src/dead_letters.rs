//! Dead letters: async events that failed every attempt or expired, kept in
//! a ring bounded by count and by bytes (the oldest are evicted and counted)
//! for `/v1/dead-letters`, which reads it a page at a time. The ring is the
//! gateway's own queue's index (`queue::local`): in memory, and with a data
//! folder also on its file; on JetStream a stream plays its part.
//!
//! Each letter keeps the event and the last error as the JSON text they
//! arrived as, and holds their bytes against the memory budget (except
//! letters read back from a file at start).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use serde::{Serialize, Serializer};

use crate::budget::Reservation;

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
    /// The event, as JSON text.
    #[serde(serialize_with = "raw_json")]
    pub event: Bytes,
    /// Last error (the function's error JSON, or the gateway's), as JSON text.
    #[serde(serialize_with = "raw_json")]
    pub error: Bytes,
    /// Attempts made.
    pub attempts: u32,
    /// When it was dead-lettered (RFC 3339).
    pub time: String,
}

impl DeadLetter {
    /// Bytes the letter holds (what the ring's byte bound counts).
    pub fn size(&self) -> usize {
        self.event.len()
            + self.error.len()
            + self.function.len()
            + self.request_id.len()
            + self.time.len()
            + LETTER_OVERHEAD
    }
}

/// Bytes counted for a letter besides its text (the record and ring slot).
const LETTER_OVERHEAD: usize = 256;

/// Writes JSON text as it is (a string when it is not JSON), without
/// building a tree of it.
pub(crate) fn raw_json<S: Serializer>(text: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    let raw = std::str::from_utf8(text)
        .ok()
        .and_then(|t| serde_json::from_str::<&serde_json::value::RawValue>(t).ok());
    match raw {
        Some(raw) => raw.serialize(s),
        None => s.serialize_str(&String::from_utf8_lossy(text)),
    }
}

struct Kept {
    /// Position since start (the listing marker).
    sequence: u64,
    letter: DeadLetter,
    /// The letter's bytes, held against the memory budget.
    _held: Option<Reservation>,
}

#[derive(Default)]
struct Ring {
    letters: VecDeque<Kept>,
    bytes: usize,
}

/// A ring of dead letters bounded by count and by bytes; the oldest are
/// evicted and counted.
pub struct DeadLetters {
    ring: Mutex<Ring>,
    capacity: usize,
    max_bytes: usize,
    evicted: AtomicU64,
    total: AtomicU64,
}

/// One page of `GET /v1/dead-letters`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterList {
    /// Dead letters, oldest first.
    pub dead_letters: Vec<DeadLetter>,
    /// Where the next page starts (`?Marker=`), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
    /// Recorded since start.
    pub total: u64,
    /// Dropped from the ring because it was full (by count or by bytes).
    pub evicted: u64,
}

impl DeadLetterList {
    /// An empty page.
    pub fn empty() -> Self {
        DeadLetterList {
            dead_letters: Vec::new(),
            next_marker: None,
            total: 0,
            evicted: 0,
        }
    }

    /// About how many bytes the page takes as JSON.
    pub fn size(&self) -> usize {
        self.dead_letters
            .iter()
            .map(DeadLetter::size)
            .sum::<usize>()
            + LETTER_OVERHEAD
    }
}

/// Which page to read.
#[derive(Clone, Debug, PartialEq)]
pub struct PageRequest {
    /// Only this function's letters.
    pub function: Option<String>,
    /// Letters after this marker (a `nextMarker` of an earlier page).
    pub after: Option<u64>,
    /// At most this many letters.
    pub max_items: usize,
    /// At most about this many bytes (but always one letter, if any).
    pub max_bytes: usize,
}

impl DeadLetters {
    /// A ring holding at most `capacity` letters and `max_bytes` bytes.
    pub fn new(capacity: usize, max_bytes: usize) -> Self {
        DeadLetters {
            ring: Mutex::new(Ring::default()),
            capacity: capacity.max(1),
            max_bytes,
            evicted: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }

    /// Adds a letter whose bytes `held` counts; evicts the oldest until it
    /// fits. Returns the letter's sequence and those of the evicted ones.
    pub fn push(&self, letter: DeadLetter, held: Reservation) -> (u64, Vec<u64>) {
        self.insert(letter, Some(held))
    }

    /// Adds a letter whose bytes are not held against the budget (an event
    /// read back from a store at start had no reservation).
    pub fn push_unheld(&self, letter: DeadLetter) -> (u64, Vec<u64>) {
        self.insert(letter, None)
    }

    fn insert(&self, letter: DeadLetter, held: Option<Reservation>) -> (u64, Vec<u64>) {
        let sequence = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        let size = letter.size();
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let mut evicted = Vec::new();
        while !ring.letters.is_empty()
            && (ring.letters.len() >= self.capacity || ring.bytes + size > self.max_bytes)
        {
            if let Some(old) = ring.letters.pop_front() {
                ring.bytes -= old.letter.size();
                evicted.push(old.sequence);
            }
        }
        ring.bytes += size;
        ring.letters.push_back(Kept {
            sequence,
            letter,
            _held: held,
        });
        drop(ring);
        self.evicted
            .fetch_add(evicted.len() as u64, Ordering::Relaxed);
        (sequence, evicted)
    }

    /// Puts back a letter a store kept under `sequence` (read back in
    /// order of sequence, at start).
    pub fn restore(&self, sequence: u64, letter: DeadLetter) {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.bytes += letter.size();
        ring.letters.push_back(Kept {
            sequence,
            letter,
            _held: None,
        });
        drop(ring);
        self.total.fetch_max(sequence, Ordering::Relaxed);
    }

    /// Sets the counts read back from a store: letters recorded in all and
    /// evicted in all.
    pub fn set_counts(&self, total: u64, evicted: u64) {
        self.total.store(total, Ordering::Relaxed);
        self.evicted.store(evicted, Ordering::Relaxed);
    }

    /// The letters of `function` (only `request_id`'s, when given), oldest
    /// first, with their sequences.
    pub fn matching(&self, function: &str, request_id: Option<&str>) -> Vec<(u64, DeadLetter)> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.letters
            .iter()
            .filter(|k| {
                k.letter.function == function && request_id.is_none_or(|r| k.letter.request_id == r)
            })
            .map(|k| (k.sequence, k.letter.clone()))
            .collect()
    }

    /// Removes the letter kept under `sequence`; whether it was there.
    pub fn remove(&self, sequence: u64) -> bool {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(at) = ring.letters.binary_search_by_key(&sequence, |k| k.sequence) else {
            return false;
        };
        if let Some(kept) = ring.letters.remove(at) {
            ring.bytes -= kept.letter.size();
        }
        true
    }

    /// Bytes the ring holds.
    pub fn bytes(&self) -> usize {
        self.ring.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }

    /// One page, oldest first. The letters share their text with the ring,
    /// so a page copies no event.
    pub fn page(&self, request: &PageRequest) -> DeadLetterList {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let after = request.after.unwrap_or(0);
        // Sequences rise along the ring: skip to the first one past the marker.
        let start = ring.letters.partition_point(|k| k.sequence <= after);
        let mut page = Vec::new();
        let mut bytes = 0usize;
        let mut next_marker = None;
        let mut last = None;
        for kept in ring.letters.iter().skip(start) {
            if request
                .function
                .as_deref()
                .is_some_and(|f| kept.letter.function != f)
            {
                continue;
            }
            let size = kept.letter.size();
            if page.len() >= request.max_items
                || (!page.is_empty() && bytes + size > request.max_bytes)
            {
                next_marker = last.map(|s: u64| s.to_string());
                break;
            }
            bytes += size;
            last = Some(kept.sequence);
            page.push(kept.letter.clone());
        }
        DeadLetterList {
            dead_letters: page,
            next_marker,
            total: self.total.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
        }
    }
}

/// Now, as RFC 3339 (UTC).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{MemoryBudget, Purpose};

    fn letter(function: &str, i: usize, event: &str) -> DeadLetter {
        DeadLetter {
            function: function.into(),
            request_id: format!("r{i}"),
            trigger: "event",
            event: Bytes::from(event.to_string()),
            error: Bytes::from_static(br#"{"errorMessage":"boom"}"#),
            attempts: 3,
            time: String::new(),
        }
    }

    fn all(d: &DeadLetters, function: Option<&str>) -> DeadLetterList {
        d.page(&PageRequest {
            function: function.map(str::to_string),
            after: None,
            max_items: usize::MAX,
            max_bytes: usize::MAX,
        })
    }

    fn push(d: &DeadLetters, budget: &MemoryBudget, l: DeadLetter) -> u64 {
        let held = budget
            .try_reserve(l.size(), Purpose::DeadLetter)
            .expect("fits");
        d.push(l, held).1.len() as u64
    }

    #[test]
    fn dead_letter_ring_evicts_oldest_and_counts() {
        let budget = MemoryBudget::new(1 << 20);
        let d = DeadLetters::new(2, usize::MAX);
        for i in 0..3 {
            push(&d, &budget, letter("f", i, "{}"));
        }
        let l = all(&d, None);
        assert_eq!(l.evicted, 1);
        assert_eq!(l.total, 3);
        assert_eq!(l.dead_letters[0].request_id, "r1");
        assert!(all(&d, Some("g")).dead_letters.is_empty());
        assert_eq!(
            budget.held(),
            d.bytes(),
            "evicted letters give their bytes back"
        );
    }

    #[test]
    fn the_ring_is_bounded_by_bytes_too() {
        let budget = MemoryBudget::new(1 << 20);
        let big = format!("\"{}\"", "x".repeat(1000));
        let one = letter("f", 0, &big).size();
        let d = DeadLetters::new(1000, one * 3);
        for i in 0..10 {
            push(&d, &budget, letter("f", i, &big));
            assert!(d.bytes() <= one * 3);
        }
        let l = all(&d, None);
        assert_eq!(l.dead_letters.len(), 3);
        assert_eq!(l.evicted, 7);
        assert_eq!(l.dead_letters[0].request_id, "r7");
        assert_eq!(budget.held(), one * 3);
    }

    #[test]
    fn pages_follow_the_marker_and_stop_at_their_bounds() {
        let budget = MemoryBudget::new(1 << 20);
        let d = DeadLetters::new(100, usize::MAX);
        for i in 0..10 {
            let f = if i % 2 == 0 { "even" } else { "odd" };
            push(&d, &budget, letter(f, i, &format!("{{\"n\":{i}}}")));
        }
        let mut request = PageRequest {
            function: Some("odd".into()),
            after: None,
            max_items: 2,
            max_bytes: usize::MAX,
        };
        let mut seen = Vec::new();
        loop {
            let page = d.page(&request);
            assert!(page.dead_letters.len() <= 2);
            seen.extend(page.dead_letters.iter().map(|l| l.request_id.clone()));
            match page.next_marker {
                Some(m) => request.after = Some(m.parse().expect("number")),
                None => break,
            }
        }
        assert_eq!(seen, ["r1", "r3", "r5", "r7", "r9"]);
        // A byte bound still returns one letter per page.
        let page = d.page(&PageRequest {
            function: None,
            after: None,
            max_items: 100,
            max_bytes: 1,
        });
        assert_eq!(page.dead_letters.len(), 1);
        assert_eq!(page.next_marker.as_deref(), Some("1"));
    }

    #[test]
    fn letters_are_found_by_function_and_request_and_removed() {
        let budget = MemoryBudget::new(1 << 20);
        let d = DeadLetters::new(100, usize::MAX);
        for i in 0..6 {
            let f = if i % 2 == 0 { "even" } else { "odd" };
            push(&d, &budget, letter(f, i, "{}"));
        }
        let odd = d.matching("odd", None);
        let ids: Vec<&str> = odd.iter().map(|(_, l)| l.request_id.as_str()).collect();
        assert_eq!(ids, ["r1", "r3", "r5"]);
        let one = d.matching("odd", Some("r3"));
        assert_eq!(one.len(), 1);
        assert!(d.matching("even", Some("r3")).is_empty());
        assert!(d.remove(one[0].0));
        assert!(!d.remove(one[0].0), "removed once");
        let left: Vec<String> = all(&d, None)
            .dead_letters
            .into_iter()
            .map(|l| l.request_id)
            .collect();
        assert_eq!(left, ["r0", "r1", "r2", "r4", "r5"]);
        assert_eq!(
            budget.held(),
            d.bytes(),
            "a removed letter gives its bytes back"
        );
    }

    #[test]
    fn letters_serialize_their_json_as_it_is() {
        let mut l = letter("f", 0, r#"{"order": 42}"#);
        l.error = Bytes::from_static(b"not json");
        let v = serde_json::to_value(&l).expect("json");
        assert_eq!(v["event"]["order"], 42);
        assert_eq!(v["error"], "not json");
        assert_eq!(v["requestId"], "r0");
    }
}
