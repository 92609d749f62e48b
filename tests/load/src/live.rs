//! Counters shared by the load drivers, the scale sampler and the progress display.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::invoke::{InvocationRecord, Outcome};

/// Latest desired and ready environments of one function, as last observed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnvironmentCounts {
    /// Environments the autoscaler wants.
    pub desired: Option<u32>,
    /// Environments that finished init.
    pub ready: Option<u32>,
}

/// Live counters of a run, plus the records collected so far.
#[derive(Debug)]
pub struct LiveStats {
    /// Requests sent and not yet answered.
    pub in_flight: AtomicU64,
    /// Requests the schedule asked for (including those dropped by the client).
    pub attempted: AtomicU64,
    /// Responses and failures received (everything but client drops).
    pub completed: AtomicU64,
    /// 2xx without function error.
    pub ok: AtomicU64,
    /// Function errors, other HTTP errors, timeouts and transport errors.
    pub errors: AtomicU64,
    /// 429 answers.
    pub throttled: AtomicU64,
    /// Requests not sent because `--max-in-flight` were outstanding.
    pub dropped: AtomicU64,
    /// Cold starts seen.
    pub cold_starts: AtomicU64,
    per_function_attempted: Vec<AtomicU64>,
    environments: Mutex<Vec<EnvironmentCounts>>,
    records: Mutex<Vec<InvocationRecord>>,
}

impl LiveStats {
    /// Counters for `functions` functions.
    pub fn new(functions: usize) -> LiveStats {
        LiveStats {
            in_flight: AtomicU64::new(0),
            attempted: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            cold_starts: AtomicU64::new(0),
            per_function_attempted: (0..functions).map(|_| AtomicU64::new(0)).collect(),
            environments: Mutex::new(vec![EnvironmentCounts::default(); functions]),
            records: Mutex::new(Vec::new()),
        }
    }

    /// A request for `function` is about to be sent (or dropped).
    pub fn attempt(&self, function: usize) {
        self.attempted.fetch_add(1, Ordering::Relaxed);
        self.per_function_attempted[function].fetch_add(1, Ordering::Relaxed);
    }

    /// A request went out.
    pub fn sent(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// Stores a finished (or dropped) invocation and updates the counters.
    pub fn finish(&self, record: InvocationRecord) {
        match record.outcome {
            Outcome::DroppedByClient => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            outcome => {
                self.in_flight.fetch_sub(1, Ordering::Relaxed);
                self.completed.fetch_add(1, Ordering::Relaxed);
                let counter = match outcome {
                    Outcome::Ok => &self.ok,
                    Outcome::Throttled => &self.throttled,
                    _ => &self.errors,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if record.cold_start {
                    self.cold_starts.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.records
            .lock()
            .expect("records lock poisoned")
            .push(record);
    }

    /// Requests attempted so far for each function.
    pub fn attempted_per_function(&self) -> Vec<u64> {
        self.per_function_attempted
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// Latest observed environments per function.
    pub fn environments(&self) -> Vec<EnvironmentCounts> {
        self.environments
            .lock()
            .expect("environments lock poisoned")
            .clone()
    }

    /// Stores the latest observed environments.
    pub fn set_environments(&self, counts: Vec<EnvironmentCounts>) {
        *self
            .environments
            .lock()
            .expect("environments lock poisoned") = counts;
    }

    /// Takes the records collected so far, sorted by intended send time.
    pub fn take_records(&self) -> Vec<InvocationRecord> {
        let mut records = std::mem::take(&mut *self.records.lock().expect("records lock poisoned"));
        records.sort_by_key(|r| r.intended);
        records
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
