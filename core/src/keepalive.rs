//! Adaptive keep-alive: when a function's environment should go after an
//! invocation, and when one should come back before the next.
//!
//! The hybrid histogram policy of Shahrad et al., "Serverless in the Wild"
//! (USENIX ATC 2020). Per function, an [`IdleHistogram`] counts idle times
//! (from the end of the function's last running invocation to the next
//! arrival) in 1-minute bins over 4 hours, plus the idle times beyond that.
//! After each invocation [`decide`] turns it into a [`Decision`]:
//!
//! - **Histogram**: when the histogram is representative, unload at once,
//!   load one environment again at the head percentile (5th, less a 10 %
//!   margin: the pre-warm point) and keep it until the tail percentile (99th,
//!   plus 10 %: the keep-alive point). A head in the first bin means no
//!   pre-warm: the environment simply stays from the end of the invocation.
//! - **Fixed**: too few idle times, or bin counts too even to show a pattern
//!   (coefficient of variation below 2): a fixed keep-alive window, no
//!   pre-warm. The paper keeps the whole histogram range (4 hours) here.
//! - **LongFixed**: most idle times are beyond the range. The paper predicts
//!   them with ARIMA; this keeps a longer fixed window instead.
//!
//! Whatever the rule, the keep-alive point is never earlier than
//! `min_keep_alive` (zero by default, as in the paper).
//!
//! Bins are `[k, k + 1)` minutes. The pre-warm point is the *lower* edge of
//! the head bin and the keep-alive point the *upper* edge of the tail bin, so
//! every idle time between the two percentiles falls inside the window
//! before any margin is applied (idle times are continuous here, not the
//! paper's whole minutes).
//!
//! Pure maths: time is passed in, nothing here reads a clock.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Width of one histogram bin.
pub const BIN_WIDTH: Duration = Duration::from_secs(60);

/// Bins in the histogram: 1-minute bins over 4 hours.
pub const BINS: usize = 240;

/// The idle times the bins cover; longer ones count as out of range.
pub const RANGE: Duration = Duration::from_secs(60 * BINS as u64);

/// Idle times of one function, in 1-minute bins over [`RANGE`], plus a count
/// of the idle times beyond it.
///
/// Counts are `u16`, 482 bytes in all. When a count would overflow, every
/// count is halved, which keeps the shape and slowly ages old history.
/// Serialised as the compact text of [`IdleHistogram::encode`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct IdleHistogram {
    bins: [u16; BINS],
    out_of_range: u16,
}

impl Default for IdleHistogram {
    fn default() -> Self {
        IdleHistogram {
            bins: [0; BINS],
            out_of_range: 0,
        }
    }
}

impl fmt::Debug for IdleHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdleHistogram({})", self.encode())
    }
}

/// Prefix of the encoded form, a version for later formats.
const ENCODING_VERSION: &str = "v1";

impl IdleHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one idle time: from the end of the function's last running
    /// invocation to the arrival of the next.
    pub fn record_idle(&mut self, idle: Duration) {
        let bin = (idle.as_secs() / BIN_WIDTH.as_secs()) as usize;
        let slot = if bin < BINS {
            &mut self.bins[bin]
        } else {
            &mut self.out_of_range
        };
        if *slot == u16::MAX {
            self.halve();
        }
        let slot = if bin < BINS {
            &mut self.bins[bin]
        } else {
            &mut self.out_of_range
        };
        *slot += 1;
    }

    fn halve(&mut self) {
        for count in self.bins.iter_mut() {
            *count /= 2;
        }
        self.out_of_range /= 2;
    }

    /// The count of bin `index` (idle times of `index` to `index + 1` minutes).
    pub fn bin(&self, index: usize) -> u16 {
        self.bins.get(index).copied().unwrap_or(0)
    }

    /// Idle times longer than [`RANGE`].
    pub fn out_of_range(&self) -> u16 {
        self.out_of_range
    }

    /// Idle times within [`RANGE`].
    pub fn in_range(&self) -> u32 {
        self.bins.iter().map(|&c| u32::from(c)).sum()
    }

    /// All idle times counted.
    pub fn total(&self) -> u32 {
        self.in_range() + u32::from(self.out_of_range)
    }

    /// Coefficient of variation (standard deviation / mean) of the bin
    /// counts: high when idle times gather in a few bins, low when they
    /// spread evenly. Zero for an empty histogram.
    pub fn bin_cv(&self) -> f64 {
        let n = BINS as f64;
        let (sum, sum_sq) = self.bins.iter().fold((0.0, 0.0), |(s, q), &c| {
            let c = f64::from(c);
            (s + c, q + c * c)
        });
        if sum == 0.0 {
            return 0.0;
        }
        let mean = sum / n;
        let variance = (sum_sq / n - mean * mean).max(0.0);
        variance.sqrt() / mean
    }

    /// The first bin by which `percent` % of the in-range idle times are
    /// counted; `None` when the histogram has none.
    pub fn percentile_bin(&self, percent: f64) -> Option<usize> {
        let total = self.in_range();
        if total == 0 {
            return None;
        }
        let wanted = (percent / 100.0).clamp(0.0, 1.0) * f64::from(total);
        let mut seen = 0u32;
        for (index, &count) in self.bins.iter().enumerate() {
            seen += u32::from(count);
            if count > 0 && f64::from(seen) >= wanted {
                return Some(index);
            }
        }
        Some(BINS - 1)
    }

    /// Compact text for an annotation: `v1;oob=N;BIN=COUNT,...` listing only
    /// the bins that are not empty (at most about 2.5 KB, usually tens of
    /// bytes).
    pub fn encode(&self) -> String {
        let mut out = format!("{ENCODING_VERSION};oob={};", self.out_of_range);
        let mut first = true;
        for (index, &count) in self.bins.iter().enumerate() {
            if count > 0 {
                if !first {
                    out.push(',');
                }
                first = false;
                out.push_str(&format!("{index}={count}"));
            }
        }
        out
    }

    /// Reads the text of [`IdleHistogram::encode`].
    pub fn decode(text: &str) -> Result<Self, HistogramDecodeError> {
        let err = |why: &str| HistogramDecodeError(format!("{why} in `{text}`"));
        let mut parts = text.trim().splitn(3, ';');
        if parts.next() != Some(ENCODING_VERSION) {
            return Err(err("unknown version"));
        }
        let oob = parts
            .next()
            .and_then(|p| p.strip_prefix("oob="))
            .ok_or_else(|| err("missing oob="))?;
        let mut histogram = IdleHistogram {
            out_of_range: oob.parse().map_err(|_| err("bad oob count"))?,
            ..Default::default()
        };
        let bins = parts.next().ok_or_else(|| err("missing bins"))?;
        for pair in bins.split(',').filter(|p| !p.is_empty()) {
            let (index, count) = pair.split_once('=').ok_or_else(|| err("bad bin"))?;
            let index: usize = index.parse().map_err(|_| err("bad bin index"))?;
            let count: u16 = count.parse().map_err(|_| err("bad bin count"))?;
            if index >= BINS {
                return Err(err("bin index out of range"));
            }
            histogram.bins[index] = count;
        }
        Ok(histogram)
    }
}

/// Text that is not an encoded [`IdleHistogram`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistogramDecodeError(String);

impl fmt::Display for HistogramDecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not an idle histogram: {}", self.0)
    }
}

impl std::error::Error for HistogramDecodeError {}

impl FromStr for IdleHistogram {
    type Err = HistogramDecodeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::decode(text)
    }
}

impl From<IdleHistogram> for String {
    fn from(histogram: IdleHistogram) -> String {
        histogram.encode()
    }
}

impl TryFrom<String> for IdleHistogram {
    type Error = HistogramDecodeError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::decode(&text)
    }
}

/// Tunables of the policy. [`Default`] holds the paper's values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeepAliveParams {
    /// Percentile of idle times at which to pre-warm (paper: 5).
    pub head_percentile: f64,
    /// Percentile of idle times until which to keep alive (paper: 99).
    pub tail_percentile: f64,
    /// Pre-warm this fraction earlier than the head (paper: 0.10).
    pub prewarm_margin: f64,
    /// Keep alive this fraction longer than the tail (paper: 0.10).
    pub keep_alive_margin: f64,
    /// Fewer idle times than this: not representative, use `fixed_keep_alive`.
    /// The paper gives no number; 10 is this crate's choice.
    pub min_samples: u32,
    /// Bin counts with a coefficient of variation below this are too even to
    /// show a pattern: use `fixed_keep_alive` (paper: 2).
    pub min_cv: f64,
    /// Keep-alive while the histogram is not representative (paper: the
    /// whole range, 4 hours).
    pub fixed_keep_alive: Duration,
    /// More than this fraction of idle times beyond the range: use
    /// `long_keep_alive` (the paper switches to ARIMA when "many" are).
    pub out_of_range_fraction: f64,
    /// Keep-alive when most idle times are beyond the range (the paper
    /// predicts with ARIMA instead; here a fixed window, 6 hours).
    pub long_keep_alive: Duration,
    /// The keep-alive point is never earlier than this, whatever the rule
    /// (the paper has no such floor: zero). A busy function's histogram
    /// can put its tail a minute or two after an invocation, and the 1 % of
    /// idle times beyond the tail are then many cold starts.
    pub min_keep_alive: Duration,
}

impl Default for KeepAliveParams {
    fn default() -> Self {
        KeepAliveParams {
            head_percentile: 5.0,
            tail_percentile: 99.0,
            prewarm_margin: 0.10,
            keep_alive_margin: 0.10,
            min_samples: 10,
            min_cv: 2.0,
            fixed_keep_alive: RANGE,
            out_of_range_fraction: 0.5,
            long_keep_alive: Duration::from_secs(6 * 3600),
            min_keep_alive: Duration::ZERO,
        }
    }
}

impl KeepAliveParams {
    /// The parameters the trace replay settled on (`docs/keepalive/REPORT.md`
    /// says why): the paper's, except a 20-minute window while a function's
    /// histogram is not representative, 30 idle times before it is, and a
    /// 20-minute floor under the keep-alive point. What `keepAlive: adaptive`
    /// uses.
    pub fn recommended() -> Self {
        let twenty_minutes = Duration::from_secs(20 * 60);
        KeepAliveParams {
            fixed_keep_alive: twenty_minutes,
            min_samples: 30,
            min_keep_alive: twenty_minutes,
            ..KeepAliveParams::default()
        }
    }
}

/// Which rule made a [`Decision`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Mode {
    /// The histogram is not representative: `fixed_keep_alive`, no pre-warm.
    Fixed,
    /// Pre-warm and keep alive from the histogram's percentiles.
    Histogram,
    /// Most idle times are beyond the range: `long_keep_alive`, no pre-warm.
    LongFixed,
}

impl Mode {
    /// A short label for metrics and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Fixed => "fixed",
            Mode::Histogram => "histogram",
            Mode::LongFixed => "long_fixed",
        }
    }
}

/// What to do with a function's environment from the moment its last
/// running invocation ends. Both times count from that moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Unload at once and have one environment ready again at this time;
    /// zero means keep the environment loaded from the end of the invocation.
    pub prewarm_after: Duration,
    /// Unload (scale to zero) at this time.
    pub keep_alive_until: Duration,
    /// The rule that decided.
    pub mode: Mode,
}

impl Decision {
    /// A fixed keep-alive window of `window` from the end of the invocation,
    /// no pre-warm: what a fixed `scaleToZeroAfter` does.
    pub fn fixed(window: Duration) -> Decision {
        Decision {
            prewarm_after: Duration::ZERO,
            keep_alive_until: window,
            mode: Mode::Fixed,
        }
    }

    /// Whether an invocation arriving `idle` after the end of the last one
    /// finds an environment ready (otherwise it is a cold start).
    pub fn is_warm_at(&self, idle: Duration) -> bool {
        idle >= self.prewarm_after && idle <= self.keep_alive_until
    }

    /// How long an environment sits loaded and unused during an idle time of
    /// `idle` (the next arrival, or the end of the observation, ends it).
    pub fn loaded_during(&self, idle: Duration) -> Duration {
        idle.min(self.keep_alive_until)
            .saturating_sub(self.prewarm_after)
    }
}

fn scaled(base: Duration, factor: f64) -> Duration {
    Duration::from_secs_f64((base.as_secs_f64() * factor).max(0.0))
}

/// The policy's decision for a function with idle-time history `histogram`.
pub fn decide(histogram: &IdleHistogram, params: &KeepAliveParams) -> Decision {
    let mut decision = decide_by_rule(histogram, params);
    decision.keep_alive_until = decision.keep_alive_until.max(params.min_keep_alive);
    decision
}

fn decide_by_rule(histogram: &IdleHistogram, params: &KeepAliveParams) -> Decision {
    let fixed = |mode, keep_alive_until| Decision {
        prewarm_after: Duration::ZERO,
        keep_alive_until,
        mode,
    };
    let total = histogram.total();
    if total == 0 || total < params.min_samples {
        return fixed(Mode::Fixed, params.fixed_keep_alive);
    }
    let beyond = f64::from(histogram.out_of_range()) / f64::from(total);
    if beyond > params.out_of_range_fraction {
        return fixed(Mode::LongFixed, params.long_keep_alive);
    }
    if histogram.bin_cv() < params.min_cv {
        return fixed(Mode::Fixed, params.fixed_keep_alive);
    }
    let (Some(head), Some(tail)) = (
        histogram.percentile_bin(params.head_percentile),
        histogram.percentile_bin(params.tail_percentile),
    ) else {
        return fixed(Mode::Fixed, params.fixed_keep_alive);
    };
    let prewarm_after = scaled(BIN_WIDTH * head as u32, 1.0 - params.prewarm_margin);
    let keep_alive_until = scaled(
        BIN_WIDTH * (tail as u32 + 1),
        1.0 + params.keep_alive_margin,
    )
    .max(prewarm_after);
    Decision {
        prewarm_after,
        keep_alive_until,
        mode: Mode::Histogram,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn minutes(m: f64) -> Duration {
        Duration::from_secs_f64(m * 60.0)
    }

    fn histogram(idle: impl IntoIterator<Item = Duration>) -> IdleHistogram {
        let mut h = IdleHistogram::new();
        for gap in idle {
            h.record_idle(gap);
        }
        h
    }

    fn close(a: Duration, b: Duration) -> bool {
        a.abs_diff(b) < Duration::from_millis(1)
    }

    #[test]
    fn periodic_every_two_minutes_prewarms_before_and_keeps_past_it() {
        // Invoked every 2 minutes, each run ending 1 s in: idle 119 s, bin 1.
        let h = histogram(std::iter::repeat_n(secs(119), 50));
        let d = decide(&h, &KeepAliveParams::default());
        assert_eq!(d.mode, Mode::Histogram);
        assert!(close(d.prewarm_after, minutes(0.9)), "{d:?}");
        assert!(close(d.keep_alive_until, minutes(2.2)), "{d:?}");
        assert!(d.is_warm_at(secs(119)));
        assert!(!d.is_warm_at(secs(30)));

        // Idle exactly 2 minutes (bin 2): pre-warm at 1.8 min.
        let h = histogram(std::iter::repeat_n(secs(120), 50));
        let d = decide(&h, &KeepAliveParams::default());
        assert!(close(d.prewarm_after, minutes(1.8)), "{d:?}");
        assert!(close(d.keep_alive_until, minutes(3.3)), "{d:?}");
        assert!(d.is_warm_at(secs(120)));
        assert!(close(d.loaded_during(secs(120)), secs(12)));
    }

    #[test]
    fn head_in_the_first_bin_keeps_alive_from_the_end() {
        // Mostly 20 s apart, now and then 3 minutes.
        let idle = (0..100).map(|i| if i % 10 == 0 { secs(190) } else { secs(20) });
        let d = decide(&histogram(idle), &KeepAliveParams::default());
        assert_eq!(d.mode, Mode::Histogram);
        assert_eq!(d.prewarm_after, Duration::ZERO);
        assert!(close(d.keep_alive_until, minutes(4.4)), "{d:?}");
        assert!(d.is_warm_at(secs(1)));
        assert_eq!(d.loaded_during(secs(20)), secs(20));
        assert!(close(d.loaded_during(secs(3600)), minutes(4.4)));
    }

    #[test]
    fn too_few_samples_fall_back_to_the_fixed_window() {
        let params = KeepAliveParams::default();
        for n in [0, 1, 9] {
            let d = decide(&histogram(std::iter::repeat_n(secs(119), n)), &params);
            assert_eq!(d.mode, Mode::Fixed);
            assert_eq!(d.prewarm_after, Duration::ZERO);
            assert_eq!(d.keep_alive_until, RANGE);
        }
        let params = KeepAliveParams {
            fixed_keep_alive: secs(600),
            ..params
        };
        let d = decide(&histogram([secs(5)]), &params);
        assert_eq!(d.keep_alive_until, secs(600));
    }

    #[test]
    fn mostly_beyond_the_range_takes_the_long_window() {
        let idle = (0..20).map(|i| if i < 14 { secs(5 * 3600) } else { secs(300) });
        let d = decide(&histogram(idle), &KeepAliveParams::default());
        assert_eq!(d.mode, Mode::LongFixed);
        assert_eq!(d.prewarm_after, Duration::ZERO);
        assert_eq!(d.keep_alive_until, secs(6 * 3600));
    }

    #[test]
    fn evenly_spread_idle_times_are_not_a_pattern() {
        // One idle time in each of 120 bins: CV = 1 < 2.
        let h = histogram((0..120).map(|m| secs(m * 60 + 30)));
        assert!((h.bin_cv() - 1.0).abs() < 1e-9, "{}", h.bin_cv());
        let d = decide(&h, &KeepAliveParams::default());
        assert_eq!(d.mode, Mode::Fixed);
        assert_eq!(d.keep_alive_until, RANGE);
        // In 40 bins: CV = sqrt(5) > 2, a pattern.
        let h = histogram((0..40).map(|m| secs(m * 60 + 30)));
        assert!(h.bin_cv() > 2.0);
        assert_eq!(
            decide(&h, &KeepAliveParams::default()).mode,
            Mode::Histogram
        );
    }

    #[test]
    fn margins_and_percentiles_are_parameters() {
        let idle = (0..100).map(|i| secs(if i < 50 { 10 * 60 + 5 } else { 30 * 60 + 5 }));
        let h = histogram(idle);
        let params = KeepAliveParams {
            prewarm_margin: 0.0,
            keep_alive_margin: 0.0,
            ..Default::default()
        };
        let d = decide(&h, &params);
        assert_eq!(d.prewarm_after, minutes(10.0));
        assert_eq!(d.keep_alive_until, minutes(31.0));
        let d = decide(
            &h,
            &KeepAliveParams {
                tail_percentile: 40.0,
                ..params
            },
        );
        assert_eq!(d.keep_alive_until, minutes(11.0));
    }

    #[test]
    fn min_keep_alive_is_a_floor_for_every_rule() {
        let params = KeepAliveParams {
            min_keep_alive: minutes(10.0),
            fixed_keep_alive: minutes(5.0),
            ..Default::default()
        };
        // Histogram: tail in the first bin (1.1 min) is raised to 10 min.
        let d = decide(&histogram(std::iter::repeat_n(secs(20), 50)), &params);
        assert_eq!(d.mode, Mode::Histogram);
        assert_eq!(d.prewarm_after, Duration::ZERO);
        assert_eq!(d.keep_alive_until, minutes(10.0));
        // Fixed fallback shorter than the floor.
        let d = decide(&IdleHistogram::new(), &params);
        assert_eq!((d.mode, d.keep_alive_until), (Mode::Fixed, minutes(10.0)));
        // A pre-warm point is kept; a tail beyond the floor is unchanged.
        let d = decide(
            &histogram(std::iter::repeat_n(secs(20 * 60 + 5), 50)),
            &params,
        );
        assert!(close(d.prewarm_after, minutes(18.0)), "{d:?}");
        assert!(close(d.keep_alive_until, minutes(23.1)), "{d:?}");
        assert_eq!(Decision::fixed(minutes(3.0)).keep_alive_until, minutes(3.0));
    }

    #[test]
    fn percentiles_count_whole_samples() {
        let h = histogram([secs(10), secs(70), secs(130), secs(190)]);
        assert_eq!(h.percentile_bin(5.0), Some(0));
        assert_eq!(h.percentile_bin(25.0), Some(0));
        assert_eq!(h.percentile_bin(26.0), Some(1));
        assert_eq!(h.percentile_bin(99.0), Some(3));
        assert_eq!(h.percentile_bin(100.0), Some(3));
        assert_eq!(IdleHistogram::new().percentile_bin(50.0), None);
    }

    #[test]
    fn counts_halve_instead_of_overflowing() {
        let mut h = IdleHistogram::new();
        for _ in 0..u32::from(u16::MAX) {
            h.record_idle(secs(5));
        }
        h.record_idle(secs(65));
        h.record_idle(secs(65));
        assert_eq!(h.bin(0), u16::MAX);
        h.record_idle(secs(5));
        assert_eq!(h.bin(0), u16::MAX / 2 + 1);
        assert_eq!(h.bin(1), 1);
        h.record_idle(RANGE + secs(1));
        assert_eq!(h.out_of_range(), 1);
        assert_eq!(h.total(), u32::from(u16::MAX / 2) + 3);
    }

    #[test]
    fn encodes_compactly_and_round_trips() {
        let mut h = histogram([secs(5), secs(5), secs(125), secs(239 * 60 + 59)]);
        h.record_idle(RANGE);
        let text = h.encode();
        assert_eq!(text, "v1;oob=1;0=2,2=1,239=1");
        assert_eq!(IdleHistogram::decode(&text).unwrap(), h);
        assert_eq!(text.parse::<IdleHistogram>().unwrap(), h);
        assert_eq!(IdleHistogram::new().encode(), "v1;oob=0;");
        assert_eq!(
            IdleHistogram::decode("v1;oob=0;").unwrap(),
            IdleHistogram::new()
        );

        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<IdleHistogram>(&json).unwrap(), h);

        for bad in [
            "",
            "v2;oob=0;",
            "v1;0=1",
            "v1;oob=x;",
            "v1;oob=0;240=1",
            "v1;oob=0;1=70000",
            "v1;oob=0;1",
        ] {
            assert!(IdleHistogram::decode(bad).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<IdleHistogram>("\"v9\"").is_err());
    }

    #[test]
    fn every_idle_time_between_the_percentiles_is_warm_without_margins() {
        let params = KeepAliveParams {
            prewarm_margin: 0.0,
            keep_alive_margin: 0.0,
            head_percentile: 0.0,
            tail_percentile: 100.0,
            ..Default::default()
        };
        let idle: Vec<Duration> = (0..30).map(|i| secs(300 + i * 7)).collect();
        let d = decide(&histogram(idle.iter().copied()), &params);
        assert_eq!(d.mode, Mode::Histogram);
        assert!(idle.iter().all(|&gap| d.is_warm_at(gap)), "{d:?}");
    }
}
