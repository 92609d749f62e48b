//! The numbers of a run, computed from the raw records (no I/O here).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use porchlight_core::usage::FunctionUsage;

use crate::invoke::{InvocationRecord, Outcome};
use crate::scale::ScaleRow;

/// Latency percentiles of a set of invocations, in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LatencySummary {
    /// Invocations counted.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest value (exact).
    pub max: f64,
    /// Arithmetic mean (exact).
    pub mean: f64,
}

impl LatencySummary {
    /// Percentiles of `values` (microseconds) via an HDR histogram with three
    /// significant digits; `max` and `mean` are exact. `None` if empty.
    pub fn from_micros(values: impl IntoIterator<Item = u64>) -> Option<LatencySummary> {
        // 1 µs to one hour; longer values are recorded as one hour (max stays exact).
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)
            .expect("static histogram bounds are valid");
        let mut max = 0u64;
        let mut sum = 0u128;
        for value in values {
            // A zero-width latency still counts, as the smallest bucket.
            histogram.saturating_record(value.max(1));
            max = max.max(value);
            sum += u128::from(value);
        }
        let count = histogram.len();
        if count == 0 {
            return None;
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        // Percentiles never exceed the exact maximum (HDR reports bucket tops).
        let at = |q: f64| ms(histogram.value_at_quantile(q).min(max.max(1)));
        Some(LatencySummary {
            count,
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: ms(max),
            mean: round(sum as f64 / count as f64 / 1000.0, 3),
        })
    }
}

/// How the requests ended.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Requests the schedule asked for.
    pub attempted: u64,
    /// Requests actually sent.
    pub sent: u64,
    /// 2xx without function error.
    pub ok: u64,
    /// 2xx with `X-Amz-Function-Error`.
    pub function_errors: u64,
    /// 429.
    pub throttled: u64,
    /// Other HTTP statuses.
    pub http_errors: u64,
    /// No answer within `--timeout`.
    pub timeouts: u64,
    /// Connection failures.
    pub transport_errors: u64,
    /// Not sent because `--max-in-flight` requests were outstanding.
    pub dropped_by_client: u64,
}

impl Counts {
    fn add(&mut self, outcome: Outcome) {
        self.attempted += 1;
        if outcome != Outcome::DroppedByClient {
            self.sent += 1;
        }
        let counter = match outcome {
            Outcome::Ok => &mut self.ok,
            Outcome::FunctionError => &mut self.function_errors,
            Outcome::Throttled => &mut self.throttled,
            Outcome::HttpError => &mut self.http_errors,
            Outcome::Timeout => &mut self.timeouts,
            Outcome::TransportError => &mut self.transport_errors,
            Outcome::DroppedByClient => &mut self.dropped_by_client,
        };
        *counter += 1;
    }

    /// Function errors, HTTP errors, timeouts and transport errors.
    pub fn errors(&self) -> u64 {
        self.function_errors + self.http_errors + self.timeouts + self.transport_errors
    }
}

/// Cold starts and what they cost.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ColdStarts {
    /// Invocations the gateway marked as cold starts.
    pub count: u64,
    /// Their end-to-end latency.
    pub latency_ms: Option<LatencySummary>,
    /// The init duration the gateway reported for them.
    pub init_duration_ms: Option<LatencySummary>,
}

/// Invocations that were not cold starts themselves but queued while an
/// environment finished its init: they waited for a cold start (the
/// gateway's `X-Porchlight-Waited-For: cold-start`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WaitedForColdStart {
    /// How many.
    pub count: u64,
    /// Their end-to-end latency.
    pub latency_ms: Option<LatencySummary>,
}

/// Per-function figures, including how the function scaled.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionSummary {
    /// Function name.
    pub name: String,
    /// How its requests ended.
    pub requests: Counts,
    /// Cold starts seen.
    pub cold_starts: u64,
    /// Invocations that waited for a cold start other than their own.
    #[serde(default)]
    pub waited_for_cold_start: u64,
    /// Distinct environment ids that served it.
    pub environments_seen: usize,
    /// Highest desired environments observed.
    pub peak_desired: Option<u32>,
    /// Highest ready environments observed.
    pub peak_ready: Option<u32>,
    /// Ready count that "scaled up" means: `--scale-target`, else `peakReady`.
    pub scale_target: Option<u32>,
    /// From its first request to the first sample with at least one ready environment.
    pub time_to_first_ready_seconds: Option<f64>,
    /// From its first request to the first sample with `scaleTarget` ready environments.
    pub time_to_scale_up_seconds: Option<f64>,
    /// From the end of its last request to the first sample with 0 ready environments.
    pub time_to_zero_seconds: Option<f64>,
}

/// Everything `summary.json` holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// The gateway the load went to.
    pub target: String,
    /// `concurrency` (closed loop) or `rate` (open loop).
    pub mode: String,
    /// The load profile that ran.
    pub profile: String,
    /// Payload size in bytes.
    pub payload_bytes: usize,
    /// Length of the load phase, from the start to the end of the profile.
    pub load_seconds: f64,
    /// From the first intended send to the last response.
    pub active_seconds: f64,
    /// How the requests ended.
    pub requests: Counts,
    /// Successful (2xx) invocations per second over `activeSeconds`.
    pub throughput_rps: f64,
    /// Requests attempted per second over `activeSeconds`.
    pub offered_rps: f64,
    /// Latency of all 2xx invocations, from the intended send time.
    pub latency_ms: Option<LatencySummary>,
    /// Latency of the 2xx invocations that neither were cold starts nor
    /// waited for one.
    pub warm_latency_ms: Option<LatencySummary>,
    /// Cold starts.
    pub cold_starts: ColdStarts,
    /// Invocations that waited for a cold start other than their own.
    #[serde(default)]
    pub waited_for_cold_start: WaitedForColdStart,
    /// Distinct environment ids seen.
    pub environments_seen: usize,
    /// Where environment counts came from (`None` if not observed).
    pub scale_source: Option<String>,
    /// Scale observations that failed.
    pub scale_observation_failures: u64,
    /// Per function.
    pub functions: Vec<FunctionSummary>,
    /// What the run's functions used, as the platform metered it (the
    /// difference of its counters before and after the run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<RunUsage>,
}

/// The usage of a run: per function and in total.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunUsage {
    /// Where the counters were read.
    pub source: String,
    /// All functions together.
    pub total: FunctionUsage,
    /// Per function, in the run's order.
    pub functions: Vec<NamedUsage>,
}

/// One function's usage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamedUsage {
    /// The function.
    pub name: String,
    /// What it used.
    #[serde(flatten)]
    pub usage: FunctionUsage,
}

impl RunUsage {
    /// The difference between two readings of the same counters (a counter
    /// that went back started again: all of the later reading counts).
    pub fn between(
        source: String,
        before: &[(String, FunctionUsage)],
        after: &[(String, FunctionUsage)],
    ) -> RunUsage {
        let mut total = FunctionUsage::default();
        let functions = after
            .iter()
            .map(|(name, now)| {
                let earlier = before
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, u)| u.clone())
                    .unwrap_or_default();
                let usage = now.since(&earlier).unwrap_or_else(|| now.clone());
                total.add(&usage);
                NamedUsage {
                    name: name.clone(),
                    usage,
                }
            })
            .collect();
        RunUsage {
            source,
            total,
            functions,
        }
    }
}

/// What the run was, for the summary's header fields.
#[derive(Clone, Debug, Default)]
pub struct RunInfo {
    /// The gateway.
    pub target: String,
    /// `concurrency` or `rate`.
    pub mode: String,
    /// The profile, as text.
    pub profile: String,
    /// Payload size.
    pub payload_bytes: usize,
    /// Function names by index.
    pub functions: Vec<String>,
    /// `--scale-target`.
    pub scale_target: Option<u32>,
    /// Scale observer description.
    pub scale_source: Option<String>,
    /// Failed scale observations.
    pub scale_observation_failures: u64,
}

/// Rounds to `decimals` places, so the JSON reads cleanly.
fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Computes the summary from the raw records and scale samples.
pub fn summarize(
    info: &RunInfo,
    records: &[InvocationRecord],
    scale: &[ScaleRow],
    load_end: Duration,
) -> Summary {
    let mut requests = Counts::default();
    for r in records {
        requests.add(r.outcome);
    }
    let successes = || records.iter().filter(|r| r.outcome.is_success());
    let latency = |r: &InvocationRecord| r.latency.map(micros);
    let first_intended = records.iter().map(|r| r.intended).min();
    let last_completed = records.iter().filter_map(|r| r.completed()).max();
    let active = match (first_intended, last_completed) {
        (Some(first), Some(last)) if last > first => (last - first).as_secs_f64(),
        _ => 0.0,
    };
    let per_second = |n: u64| if active > 0.0 { n as f64 / active } else { 0.0 };
    let colds: Vec<&InvocationRecord> = records.iter().filter(|r| r.cold_start).collect();
    let waited: Vec<&InvocationRecord> = records
        .iter()
        .filter(|r| r.waited_for_cold_start && !r.cold_start)
        .collect();
    let environments_seen = |function: Option<usize>| {
        records
            .iter()
            .filter(|r| function.is_none_or(|f| r.function == f))
            .filter_map(|r| r.environment.as_deref())
            .collect::<HashSet<_>>()
            .len()
    };

    let functions = info
        .functions
        .iter()
        .enumerate()
        .map(|(index, name)| {
            let mine: Vec<&InvocationRecord> =
                records.iter().filter(|r| r.function == index).collect();
            let mut counts = Counts::default();
            for r in &mine {
                counts.add(r.outcome);
            }
            let samples: Vec<&ScaleRow> = scale.iter().filter(|s| s.function == index).collect();
            let peak_desired = samples.iter().filter_map(|s| s.scale.desired).max();
            let peak_ready = samples.iter().filter_map(|s| s.scale.ready).max();
            let scale_target = info.scale_target.or(peak_ready).filter(|t| *t > 0);
            let first = mine.iter().map(|r| r.intended).min();
            let last = mine.iter().filter_map(|r| r.completed()).max();
            let first_sample_after = |from: Duration, pred: &dyn Fn(u32) -> bool| {
                samples
                    .iter()
                    .filter(|s| s.t >= from)
                    .find(|s| s.scale.ready.is_some_and(pred))
                    .map(|s| round((s.t - from).as_secs_f64(), 3))
            };
            FunctionSummary {
                name: name.clone(),
                requests: counts,
                cold_starts: mine.iter().filter(|r| r.cold_start).count() as u64,
                waited_for_cold_start: mine
                    .iter()
                    .filter(|r| r.waited_for_cold_start && !r.cold_start)
                    .count() as u64,
                environments_seen: environments_seen(Some(index)),
                peak_desired,
                peak_ready,
                scale_target,
                time_to_first_ready_seconds: first
                    .and_then(|first| first_sample_after(first, &|ready| ready >= 1)),
                time_to_scale_up_seconds: first.zip(scale_target).and_then(|(first, target)| {
                    first_sample_after(first, &|ready| ready >= target)
                }),
                time_to_zero_seconds: last
                    .and_then(|last| first_sample_after(last, &|ready| ready == 0)),
            }
        })
        .collect();

    Summary {
        target: info.target.clone(),
        mode: info.mode.clone(),
        profile: info.profile.clone(),
        payload_bytes: info.payload_bytes,
        load_seconds: round(load_end.as_secs_f64(), 3),
        active_seconds: round(active, 3),
        throughput_rps: round(per_second(requests.ok + requests.function_errors), 2),
        offered_rps: round(per_second(requests.attempted), 2),
        requests,
        latency_ms: LatencySummary::from_micros(successes().filter_map(latency)),
        warm_latency_ms: LatencySummary::from_micros(
            successes()
                .filter(|r| !r.cold_start && !r.waited_for_cold_start)
                .filter_map(latency),
        ),
        waited_for_cold_start: WaitedForColdStart {
            count: waited.len() as u64,
            latency_ms: LatencySummary::from_micros(waited.iter().filter_map(|r| latency(r))),
        },
        cold_starts: ColdStarts {
            count: colds.len() as u64,
            latency_ms: LatencySummary::from_micros(colds.iter().filter_map(|r| latency(r))),
            init_duration_ms: LatencySummary::from_micros(
                colds
                    .iter()
                    .filter_map(|r| r.init_duration_ms)
                    .map(|ms| (ms * 1000.0).max(0.0) as u64),
            ),
        },
        environments_seen: environments_seen(None),
        scale_source: info.scale_source.clone(),
        scale_observation_failures: info.scale_observation_failures,
        usage: None,
        functions,
    }
}

/// The summary as a few lines of text for the terminal.
pub fn render(summary: &Summary) -> String {
    let mut out = String::new();
    let r = &summary.requests;
    let latency = |l: &Option<LatencySummary>| match l {
        Some(l) => format!(
            "p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms  (n={})",
            l.p50, l.p90, l.p99, l.max, l.count
        ),
        None => "none".to_string(),
    };
    let seconds = |s: Option<f64>| s.map_or("not reached".to_string(), |s| format!("{s:.1} s"));
    let _ = writeln!(
        out,
        "{} load ({}) against {} for {:.1} s, payload {} B",
        summary.mode, summary.profile, summary.target, summary.load_seconds, summary.payload_bytes
    );
    let _ = writeln!(
        out,
        "requests   {} attempted, {} ok, {} function errors, {} throttled (429), {} HTTP errors, {} timeouts, {} transport errors, {} dropped by client",
        r.attempted,
        r.ok,
        r.function_errors,
        r.throttled,
        r.http_errors,
        r.timeouts,
        r.transport_errors,
        r.dropped_by_client
    );
    let _ = writeln!(
        out,
        "throughput {:.1} invocations/s (offered {:.1} req/s over {:.1} s active)",
        summary.throughput_rps, summary.offered_rps, summary.active_seconds
    );
    let _ = writeln!(out, "latency    {}", latency(&summary.latency_ms));
    let _ = writeln!(out, "warm       {}", latency(&summary.warm_latency_ms));
    let _ = writeln!(
        out,
        "cold       {} cold starts; latency {}",
        summary.cold_starts.count,
        latency(&summary.cold_starts.latency_ms)
    );
    let _ = writeln!(
        out,
        "waited     {} waited for a cold start; latency {}",
        summary.waited_for_cold_start.count,
        latency(&summary.waited_for_cold_start.latency_ms)
    );
    if let Some(init) = &summary.cold_starts.init_duration_ms {
        let _ = writeln!(
            out,
            "init       p50 {:.1} ms  max {:.1} ms",
            init.p50, init.max
        );
    }
    match &summary.scale_source {
        Some(source) => {
            let _ = writeln!(
                out,
                "scale      from {source} ({} failed observations)",
                summary.scale_observation_failures
            );
        }
        None => {
            let _ = writeln!(out, "scale      not observed");
        }
    }
    if let Some(u) = &summary.usage {
        let t = &u.total;
        let _ = writeln!(
            out,
            "usage      {} invocations billed {:.3} s ({:.3} GB-s); {} cold starts, init {:.3} s; idle environments {:.1} s ({:.3} GB-s) [from {}]",
            t.invocations,
            t.billed_duration_ms as f64 / 1000.0,
            t.gb_seconds,
            t.cold_starts,
            t.init_duration_ms / 1000.0,
            t.idle_environment_seconds,
            t.idle_gb_seconds,
            u.source
        );
    }
    for f in &summary.functions {
        let _ = writeln!(
            out,
            "  {}: peak {} ready / {} desired, {} environments seen; first ready after {}, scaled up ({} ready) after {}, back to zero after {}",
            f.name,
            f.peak_ready.map_or("?".into(), |v| v.to_string()),
            f.peak_desired.map_or("?".into(), |v| v.to_string()),
            f.environments_seen,
            seconds(f.time_to_first_ready_seconds),
            f.scale_target.map_or("?".into(), |v| v.to_string()),
            seconds(f.time_to_scale_up_seconds),
            seconds(f.time_to_zero_seconds),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scale::FunctionScale;

    /// Nearest-rank percentile of sorted values.
    fn nearest_rank(sorted: &[u64], q: f64) -> u64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).max(1);
        sorted[rank - 1]
    }

    #[test]
    fn percentiles_match_nearest_rank_within_hdr_precision() {
        // A skewed distribution: mostly fast, a slow tail.
        let mut values: Vec<u64> = (0..10_000u64)
            .map(|i| {
                if i % 50 == 0 {
                    250_000 + i * 7
                } else {
                    800 + (i * 37) % 4000
                }
            })
            .collect();
        let s = LatencySummary::from_micros(values.iter().copied()).unwrap();
        values.sort_unstable();
        for (q, got) in [(0.5, s.p50), (0.9, s.p90), (0.99, s.p99)] {
            let want = nearest_rank(&values, q) as f64 / 1000.0;
            assert!(
                (got - want).abs() <= want * 0.001 + 0.001,
                "q{q}: {got} vs {want}"
            );
        }
        assert_eq!(s.max, *values.last().unwrap() as f64 / 1000.0);
        let mean = values.iter().sum::<u64>() as f64 / values.len() as f64 / 1000.0;
        assert!((s.mean - mean).abs() < 0.001);
        assert_eq!(s.count, 10_000);
    }

    #[test]
    fn simple_percentiles() {
        let s = LatencySummary::from_micros((1..=100).map(|ms| ms * 1000)).unwrap();
        // HDR percentiles are exact to three significant digits.
        for (got, want) in [(s.p50, 50.0), (s.p90, 90.0), (s.p99, 99.0)] {
            assert!((got - want).abs() <= want * 0.001, "{got} vs {want}");
        }
        assert_eq!(s.max, 100.0);
        assert!(LatencySummary::from_micros([]).is_none());
    }

    fn record(function: usize, at_ms: u64, latency_ms: u64, outcome: Outcome) -> InvocationRecord {
        InvocationRecord {
            function,
            intended: Duration::from_millis(at_ms),
            sent: Some(Duration::from_millis(at_ms)),
            latency: Some(Duration::from_millis(latency_ms)),
            status: 200,
            outcome,
            cold_start: false,
            init_duration_ms: None,
            waited_for_cold_start: false,
            waited_ms: None,
            environment: Some(format!("env-{}", at_ms % 3)),
            request_id: None,
        }
    }

    fn row(t_s: u64, ready: u32, desired: u32) -> ScaleRow {
        ScaleRow {
            t: Duration::from_secs(t_s),
            function: 0,
            profile_level: 0.0,
            offered_rps: 0.0,
            scale: FunctionScale {
                name: "f".into(),
                desired: Some(desired),
                ready: Some(ready),
                in_flight: None,
                queued: None,
            },
        }
    }

    #[test]
    fn scale_timings_use_the_first_sample_that_reaches_the_peak_and_zero() {
        let mut records: Vec<_> = (0..10)
            .map(|i| record(0, 2000 + i * 100, 50, Outcome::Ok))
            .collect();
        records[0].cold_start = true;
        records[0].init_duration_ms = Some(120.0);
        // Two callers queued behind that cold start: neither warm nor cold.
        for r in &mut records[1..3] {
            r.waited_for_cold_start = true;
            r.waited_ms = Some(400.0);
            r.latency = Some(Duration::from_millis(450));
        }
        records.push(record(0, 3000, 10, Outcome::Throttled));
        let scale: Vec<_> = [
            (0, 0, 0),
            (1, 0, 0),
            (2, 0, 1),
            (3, 1, 3),
            (4, 3, 3),
            (5, 3, 3),
            (6, 2, 0),
            (8, 0, 0),
        ]
        .into_iter()
        .map(|(t, ready, desired)| row(t, ready, desired))
        .collect();
        let info = RunInfo {
            functions: vec!["f".into()],
            ..RunInfo::default()
        };
        let s = summarize(&info, &records, &scale, Duration::from_secs(3));
        let f = &s.functions[0];
        assert_eq!(f.peak_ready, Some(3));
        assert_eq!(f.time_to_first_ready_seconds, Some(1.0));
        assert_eq!(f.time_to_scale_up_seconds, Some(2.0));
        // Last response ends at 3.0 s + 10 ms; the first sample at zero after it is at 8 s.
        assert_eq!(f.time_to_zero_seconds, Some(4.99));
        assert_eq!(s.requests.throttled, 1);
        assert_eq!(s.requests.ok, 10);
        assert_eq!(s.cold_starts.count, 1);
        assert_eq!(s.cold_starts.init_duration_ms.as_ref().unwrap().max, 120.0);
        assert_eq!(s.warm_latency_ms.as_ref().unwrap().count, 7);
        assert_eq!(s.warm_latency_ms.as_ref().unwrap().max, 50.0);
        assert_eq!(s.waited_for_cold_start.count, 2);
        assert_eq!(
            s.waited_for_cold_start.latency_ms.as_ref().unwrap().p50,
            450.0
        );
        assert_eq!(s.functions[0].waited_for_cold_start, 2);
        assert!(
            render(&s).contains("2 waited for a cold start"),
            "{}",
            render(&s)
        );
        assert_eq!(s.environments_seen, 3);

        let with_target = RunInfo {
            scale_target: Some(5),
            ..info
        };
        let s = summarize(&with_target, &records, &scale, Duration::from_secs(3));
        assert_eq!(s.functions[0].time_to_scale_up_seconds, None);
    }
}
