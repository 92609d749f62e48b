//! Replaying arrivals under a keep-alive policy: which invocations are cold
//! starts and how long an environment sits loaded and unused.
//!
//! The model is the keep-alive decision only, as in the paper: a function
//! either has an environment loaded or not. An arrival while one of its
//! invocations runs, or while an environment is loaded, is warm; any other
//! arrival is a cold start (loading is taken as instant). How many
//! environments a busy function needs is the autoscaler's business and the
//! same under every policy, so concurrent invocations share the one
//! environment here. Idle time is measured from the end of the last running
//! invocation (start + average execution time) to the next arrival, and
//! that is what the adaptive policy's histogram learns.

use std::time::Duration;

use porchlight_core::keepalive::{self, Decision, IdleHistogram, KeepAliveParams, Mode};

/// A keep-alive policy to replay.
#[derive(Clone, Debug, PartialEq)]
pub enum Policy {
    /// Keep the environment this long after the last invocation ends (what
    /// `scaleToZeroAfter` does today).
    Fixed(Duration),
    /// The hybrid histogram policy of `porchlight_core::keepalive`.
    Adaptive(KeepAliveParams),
}

/// What one function saw under one policy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FunctionOutcome {
    /// Invocations replayed.
    pub invocations: u64,
    /// Those that found no environment.
    pub cold_starts: u64,
    /// Seconds an environment was loaded without running an invocation.
    pub idle_loaded_s: f64,
    /// Idle periods decided by each mode, in [`MODES`] order (adaptive only).
    pub decisions: [u64; 3],
    /// Of `idle_loaded_s`, the seconds under a decision of each mode, in
    /// [`MODES`] order (a fixed window counts as [`Mode::Fixed`]).
    pub idle_loaded_by_mode_s: [f64; 3],
}

/// The adaptive policy's modes, in the order of [`FunctionOutcome::decisions`].
pub const MODES: [Mode; 3] = [Mode::Fixed, Mode::Histogram, Mode::LongFixed];

fn slot(mode: Mode) -> usize {
    MODES.iter().position(|&m| m == mode).unwrap_or(0)
}

impl FunctionOutcome {
    fn add_loaded(&mut self, decision: &Decision, idle: Duration) {
        let loaded = decision.loaded_during(idle).as_secs_f64();
        self.idle_loaded_s += loaded;
        self.idle_loaded_by_mode_s[slot(decision.mode)] += loaded;
    }

    /// Cold starts / invocations (0 without invocations).
    pub fn cold_start_rate(&self) -> f64 {
        if self.invocations == 0 {
            0.0
        } else {
            self.cold_starts as f64 / self.invocations as f64
        }
    }
}

fn decision_for(policy: &Policy, histogram: &IdleHistogram, out: &mut FunctionOutcome) -> Decision {
    match policy {
        Policy::Fixed(window) => Decision::fixed(*window),
        Policy::Adaptive(params) => {
            let decision = keepalive::decide(histogram, params);
            out.decisions[slot(decision.mode)] += 1;
            decision
        }
    }
}

/// Replays one function: `arrivals` in seconds from the start, in order;
/// each invocation runs `execution_s`; the observation ends at `horizon_s`
/// (an environment still loaded then counts as idle up to it, not after).
/// No environment is loaded before the first arrival.
pub fn replay(
    arrivals: &[f64],
    execution_s: f64,
    horizon_s: f64,
    policy: &Policy,
) -> FunctionOutcome {
    let mut out = FunctionOutcome::default();
    let mut histogram = IdleHistogram::new();
    // End of the running invocations, once there has been one.
    let mut busy_until: Option<f64> = None;
    for &arrival in arrivals {
        out.invocations += 1;
        match busy_until {
            None => out.cold_starts += 1,
            Some(end) if arrival <= end => {}
            Some(end) => {
                // The decision was taken when the last invocation ended; the
                // histogram has not changed since.
                let idle = Duration::from_secs_f64(arrival - end);
                let decision = decision_for(policy, &histogram, &mut out);
                if !decision.is_warm_at(idle) {
                    out.cold_starts += 1;
                }
                out.add_loaded(&decision, idle);
                histogram.record_idle(idle);
            }
        }
        let finish = arrival + execution_s;
        busy_until = Some(busy_until.map_or(finish, |end| end.max(finish)));
    }
    if let Some(end) = busy_until
        && end < horizon_s
    {
        let decision = decision_for(policy, &histogram, &mut out);
        out.add_loaded(&decision, Duration::from_secs_f64(horizon_s - end));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minutes(m: u64) -> Duration {
        Duration::from_secs(m * 60)
    }

    #[test]
    fn overlapping_invocations_share_the_environment() {
        // Three arrivals while the first still runs, then one 10 s after the end.
        let out = replay(
            &[0.0, 1.0, 2.0, 14.0],
            4.0,
            20.0,
            &Policy::Fixed(minutes(1)),
        );
        assert_eq!(out.invocations, 4);
        assert_eq!(out.cold_starts, 1);
        // Idle 6..14 (8 s) and 18..20 (2 s, cut at the horizon).
        assert!((out.idle_loaded_s - 10.0).abs() < 1e-9, "{out:?}");
        assert_eq!(out.decisions, [0, 0, 0]);
    }

    #[test]
    fn prewarmed_environment_is_loaded_only_from_the_prewarm_point() {
        // Every 2 minutes, 1 s runs: idle 119 s; after 10 idle times the
        // histogram (bin 1) pre-warms at 54 s and keeps until 132 s.
        let arrivals: Vec<f64> = (0..=20).map(|i| f64::from(i) * 120.0).collect();
        let params = KeepAliveParams {
            fixed_keep_alive: minutes(10),
            ..Default::default()
        };
        let out = replay(&arrivals, 1.0, 2400.0, &Policy::Adaptive(params));
        assert_eq!(out.cold_starts, 1);
        assert_eq!(out.decisions, [10, 10, 0]);
        // 10 idle times fully loaded (119 s), 10 loaded from 54 s (65 s),
        // and after the last run (2400 - 2401 < 0): nothing.
        let expected = 10.0 * 119.0 + 10.0 * 65.0;
        assert!((out.idle_loaded_s - expected).abs() < 1e-6, "{out:?}");
    }
}
