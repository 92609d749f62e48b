//! A policy's results over a whole trace: cold-start rates overall and for
//! the functions ranked by theirs, and the memory-time wasted.

use std::time::Duration;

use super::replay::{FunctionOutcome, Policy, replay};
use super::trace::Trace;

/// Where a policy sits in the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// A fixed keep-alive window (today's `scaleToZeroAfter`).
    Fixed,
    /// The adaptive policy with the paper's parameters.
    Paper,
    /// The adaptive policy with the parameters this replay settled on.
    Chosen,
    /// The chosen parameters with other margins: with [`Group::Chosen`],
    /// the adaptive line of the chart.
    MarginSweep,
    /// The chosen parameters with one other knob changed.
    Variation,
}

/// A policy with its name and its place in the report.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// Short name, e.g. `fixed 10 min`.
    pub label: String,
    /// Its place in the report.
    pub group: Group,
    /// The policy.
    pub policy: Policy,
}

/// A policy's results over a trace.
#[derive(Clone, Debug)]
pub struct PolicyResult {
    /// The policy.
    pub candidate: Candidate,
    /// Invocations replayed.
    pub invocations: u64,
    /// Cold starts among them.
    pub cold_starts: u64,
    /// Cold-start rate of the median function (functions ranked by rate).
    pub median_function_rate: f64,
    /// Cold-start rate of the 75th-percentile function.
    pub p75_function_rate: f64,
    /// Environment-seconds loaded without running an invocation, times the
    /// function's memory, in GB-seconds (1 GB = 1024 MB).
    pub wasted_gb_s: f64,
    /// Idle periods decided by each adaptive mode (fixed, histogram, long fixed).
    pub decisions: [u64; 3],
    /// Of `wasted_gb_s`, the part under each mode's decisions.
    pub wasted_by_mode: [f64; 3],
    /// Seconds the replay took (one thread).
    pub replay_s: f64,
    /// Per function, in trace order: (invocations, cold starts, wasted GB-s).
    pub per_function: Vec<(u64, u64, f64)>,
}

impl PolicyResult {
    /// Cold starts / invocations over all functions.
    pub fn overall_rate(&self) -> f64 {
        if self.invocations == 0 {
            0.0
        } else {
            self.cold_starts as f64 / self.invocations as f64
        }
    }
}

/// The value at percentile `p` (0..=100) of `sorted`, nearest rank.
pub fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Replays every function of `trace` (arrivals per function in `arrivals`)
/// under `candidate`.
pub fn evaluate(trace: &Trace, arrivals: &[Vec<f64>], candidate: &Candidate) -> PolicyResult {
    let started = std::time::Instant::now();
    let horizon = trace.horizon_s();
    let mut rates = Vec::with_capacity(trace.functions.len());
    let mut total = FunctionOutcome::default();
    let mut wasted_gb_s = 0.0;
    let mut wasted_by_mode = [0.0; 3];
    let mut per_function = Vec::with_capacity(trace.functions.len());
    for (function, arrivals) in trace.functions.iter().zip(arrivals) {
        let out = replay(arrivals, function.execution_s, horizon, &candidate.policy);
        let wasted = out.idle_loaded_s * function.memory_mb / 1024.0;
        per_function.push((out.invocations, out.cold_starts, wasted));
        if out.invocations > 0 {
            rates.push(out.cold_start_rate());
        }
        total.invocations += out.invocations;
        total.cold_starts += out.cold_starts;
        for (sum, n) in total.decisions.iter_mut().zip(out.decisions) {
            *sum += n;
        }
        wasted_gb_s += wasted;
        for (sum, s) in wasted_by_mode.iter_mut().zip(out.idle_loaded_by_mode_s) {
            *sum += s * function.memory_mb / 1024.0;
        }
    }
    rates.sort_by(f64::total_cmp);
    PolicyResult {
        candidate: candidate.clone(),
        invocations: total.invocations,
        cold_starts: total.cold_starts,
        median_function_rate: nearest_rank(&rates, 50.0),
        p75_function_rate: nearest_rank(&rates, 75.0),
        wasted_gb_s,
        decisions: total.decisions,
        wasted_by_mode,
        replay_s: started.elapsed().as_secs_f64(),
        per_function,
    }
}

/// Threads [`evaluate_all`] uses for `candidates` policies: one per core,
/// at most one per policy.
pub fn workers(candidates: usize) -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(candidates.max(1))
}

/// [`evaluate`] for every candidate, spread over the available cores;
/// `done` hears of each result as it comes. The results are in
/// `candidates` order.
pub fn evaluate_all(
    trace: &Trace,
    arrivals: &[Vec<f64>],
    candidates: &[Candidate],
    done: &(dyn Fn(&PolicyResult, Duration) + Sync),
) -> Vec<PolicyResult> {
    let workers = workers(candidates.len());
    let mut results: Vec<Option<PolicyResult>> = vec![None; candidates.len()];
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|worker| {
                scope.spawn(move || {
                    candidates
                        .iter()
                        .enumerate()
                        .skip(worker)
                        .step_by(workers)
                        .map(|(i, c)| {
                            let result = evaluate(trace, arrivals, c);
                            done(&result, Duration::from_secs_f64(result.replay_s));
                            (i, result)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for handle in handles {
            for (i, result) in handle.join().expect("a replay thread panicked") {
                results[i] = Some(result);
            }
        }
    });
    results.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v = [0.1, 0.2, 0.3, 0.4];
        assert_eq!(nearest_rank(&v, 50.0), 0.2);
        assert_eq!(nearest_rank(&v, 75.0), 0.3);
        assert_eq!(nearest_rank(&v, 76.0), 0.4);
        assert_eq!(nearest_rank(&v, 0.0), 0.1);
        assert_eq!(nearest_rank(&[], 50.0), 0.0);
    }
}
