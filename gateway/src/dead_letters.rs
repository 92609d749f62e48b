//! Dead letters: async events that failed every attempt or expired, kept in
//! a bounded ring (the oldest is evicted and counted) for `/v1/dead-letters`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

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

/// Now, as RFC 3339 (UTC).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

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
