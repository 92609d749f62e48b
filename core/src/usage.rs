//! Metering: what each function used, in Lambda's billing terms, and what
//! the platform spent keeping it warm. Per function, since the gateway
//! started:
//! - invocations that ran in an environment, their billed duration (each
//!   rounded up to 1 ms, as Lambda bills) and GB-seconds (billed duration x
//!   the function's memory);
//! - cold starts and their init time;
//! - environment-seconds an environment was ready but running nothing, and
//!   the GB-seconds of that idle time (sampled with the load, several times
//!   a second).
//!
//! The gateway answers `/v1/usage` with it as JSON, exports the same numbers
//! as Prometheus counters and sends them with its reports; the controller
//! adds up the reports' growth into each Function's `status.usage`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Lambda's billed duration of an invocation that ran `duration_ms`:
/// rounded up to the millisecond, at least 1 ms (as the REPORT line says).
pub fn billed_ms(duration_ms: f64) -> u64 {
    if duration_ms.is_finite() && duration_ms > 0.0 {
        (duration_ms.ceil() as u64).max(1)
    } else {
        1
    }
}

/// GB-seconds of `ms` milliseconds at `memory_mib`.
pub fn gb_seconds(ms: f64, memory_mib: u32) -> f64 {
    ms / 1000.0 * f64::from(memory_mib) / 1024.0
}

/// One function's usage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FunctionUsage {
    /// Invocations that ran in an environment.
    pub invocations: u64,
    /// Their billed duration, each rounded up to 1 ms.
    pub billed_duration_ms: u64,
    /// Billed duration x memory.
    pub gb_seconds: f64,
    /// Invocations that started an environment.
    pub cold_starts: u64,
    /// The init time of those environments.
    pub init_duration_ms: f64,
    /// Environment-seconds ready but running nothing.
    pub idle_environment_seconds: f64,
    /// Those, x memory.
    pub idle_gb_seconds: f64,
}

impl FunctionUsage {
    /// An invocation that ran `duration_ms` (and initialised its environment
    /// for `init_ms` first, on a cold start), at `memory_mib`. Returns the
    /// billed milliseconds and GB-seconds it added.
    pub fn record_invocation(
        &mut self,
        duration_ms: f64,
        init_ms: Option<f64>,
        memory_mib: u32,
    ) -> (u64, f64) {
        let billed = billed_ms(duration_ms);
        let gbs = gb_seconds(billed as f64, memory_mib);
        self.invocations += 1;
        self.billed_duration_ms += billed;
        self.gb_seconds += gbs;
        if let Some(init) = init_ms {
            self.cold_starts += 1;
            self.init_duration_ms += init.max(0.0);
        }
        (billed, gbs)
    }

    /// `idle` environments were ready and running nothing for `elapsed`.
    /// Returns the environment-seconds and GB-seconds it added.
    pub fn record_idle(&mut self, idle: u32, elapsed: Duration, memory_mib: u32) -> (f64, f64) {
        let seconds = f64::from(idle) * elapsed.as_secs_f64();
        let gbs = gb_seconds(seconds * 1000.0, memory_mib);
        self.idle_environment_seconds += seconds;
        self.idle_gb_seconds += gbs;
        (seconds, gbs)
    }

    /// What was used since `earlier`, a reading of the same counters; None
    /// when a counter went back (the counters started again from zero).
    pub fn since(&self, earlier: &FunctionUsage) -> Option<FunctionUsage> {
        let grew = self.invocations >= earlier.invocations
            && self.billed_duration_ms >= earlier.billed_duration_ms
            && self.cold_starts >= earlier.cold_starts
            && self.idle_environment_seconds >= earlier.idle_environment_seconds;
        grew.then(|| FunctionUsage {
            invocations: self.invocations - earlier.invocations,
            billed_duration_ms: self.billed_duration_ms - earlier.billed_duration_ms,
            gb_seconds: (self.gb_seconds - earlier.gb_seconds).max(0.0),
            cold_starts: self.cold_starts - earlier.cold_starts,
            init_duration_ms: (self.init_duration_ms - earlier.init_duration_ms).max(0.0),
            idle_environment_seconds: self.idle_environment_seconds
                - earlier.idle_environment_seconds,
            idle_gb_seconds: (self.idle_gb_seconds - earlier.idle_gb_seconds).max(0.0),
        })
    }

    /// Adds `other` to these totals.
    pub fn add(&mut self, other: &FunctionUsage) {
        self.invocations += other.invocations;
        self.billed_duration_ms += other.billed_duration_ms;
        self.gb_seconds += other.gb_seconds;
        self.cold_starts += other.cold_starts;
        self.init_duration_ms += other.init_duration_ms;
        self.idle_environment_seconds += other.idle_environment_seconds;
        self.idle_gb_seconds += other.idle_gb_seconds;
    }

    /// Nothing used.
    pub fn is_empty(&self) -> bool {
        self == &FunctionUsage::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn billing_rounds_each_invocation_up_to_a_millisecond() {
        assert_eq!(billed_ms(0.2), 1);
        assert_eq!(billed_ms(100.0), 100);
        assert_eq!(billed_ms(100.001), 101);
        assert_eq!(billed_ms(0.0), 1);
        assert_eq!(billed_ms(f64::NAN), 1);
        let mut u = FunctionUsage::default();
        assert_eq!(u.record_invocation(99.2, None, 1024), (100, 0.1));
        assert_eq!(u.record_invocation(0.4, Some(250.0), 512), (1, 0.0005));
        assert_eq!(u.invocations, 2);
        assert_eq!(u.billed_duration_ms, 101);
        assert!((u.gb_seconds - 0.1005).abs() < 1e-12);
        assert_eq!((u.cold_starts, u.init_duration_ms), (1, 250.0));
    }

    #[test]
    fn growth_since_an_earlier_reading_and_a_restart() {
        let mut earlier = FunctionUsage::default();
        earlier.record_invocation(10.0, Some(100.0), 1024);
        let mut now = earlier.clone();
        now.record_invocation(20.0, None, 1024);
        now.record_idle(1, Duration::from_secs(2), 1024);
        let d = now.since(&earlier).expect("grew");
        assert_eq!(
            (d.invocations, d.billed_duration_ms, d.cold_starts),
            (1, 20, 0)
        );
        assert!((d.idle_environment_seconds - 2.0).abs() < 1e-12);
        let mut total = earlier.clone();
        total.add(&d);
        assert_eq!(total.invocations, now.invocations);
        assert!((total.gb_seconds - now.gb_seconds).abs() < 1e-12);
        // Counters that went back started again.
        assert_eq!(FunctionUsage::default().since(&now), None);
    }

    #[test]
    fn idle_time_counts_environments_and_memory() {
        let mut u = FunctionUsage::default();
        u.record_idle(2, Duration::from_millis(250), 2048);
        u.record_idle(0, Duration::from_secs(10), 2048);
        u.record_idle(1, Duration::from_millis(500), 2048);
        assert!((u.idle_environment_seconds - 1.0).abs() < 1e-12);
        assert!((u.idle_gb_seconds - 2.0).abs() < 1e-12);
    }
}
