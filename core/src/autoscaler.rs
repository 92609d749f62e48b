//! The autoscaler: how many execution environments a function needs.
//!
//! Modelled on Knative's KPA (see `docs/ARCHITECTURE.md`):
//! - the signal is concurrency (in flight + queued), averaged over a stable
//!   window (default 60 s) and a panic window (a tenth of it, 6 s);
//! - `desired = ceil(average / (concurrency_per_environment * target_utilization))`;
//! - panic mode starts when the panic-window demand reaches `panic_threshold`
//!   (200 %) of the ready environments, lasts until a stable window passes
//!   without that, and never scales down meanwhile; the panic signal is the
//!   higher of the panic-window average and the latest second, so a burst
//!   (or demand at zero after idle seconds) is seen at full size at once;
//! - scale-down is limited to halving per decision (`max_scale_down_rate`);
//! - scale to zero once nothing was in flight or queued for `scale_to_zero_after`
//!   (`KeepAlive::Fixed`), or, with `KeepAlive::Adaptive`, as the function's
//!   idle-time histogram says (`crate::keepalive`): unload at once, pre-warm
//!   one environment just before the next event is expected, keep it until
//!   the tail of the idle times has passed;
//! - scale from zero at once: any demand at zero yields at least one environment.
//!
//! Pure maths: time is passed in, nothing here sleeps or does I/O.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::keepalive::{self, IdleHistogram, KeepAliveParams};

/// How long an idle function keeps its environments.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeepAlive {
    /// `scale_to_zero_after` after the last event, for every function.
    #[default]
    Fixed,
    /// From the function's own idle times ([`crate::keepalive`]), with the
    /// parameters the trace replay settled on
    /// ([`KeepAliveParams::recommended`]).
    Adaptive,
}

impl KeepAlive {
    /// The spelling in a Function's spec and status.
    pub fn as_str(self) -> &'static str {
        match self {
            KeepAlive::Fixed => "fixed",
            KeepAlive::Adaptive => "adaptive",
        }
    }
}

/// Idle gaps shorter than this are not idle times: the gateways' samples
/// arrive about once a second, so a shorter gap is sampling, not a pause.
pub const MIN_IDLE_GAP: Duration = Duration::from_secs(2);

/// A Function's validated scaling settings, durations parsed
/// (`porchlight_api::FunctionSpec::validate` makes them).
#[derive(Clone, Debug, PartialEq)]
pub struct ScalingSettings {
    /// Lower bound on environments, including the scale-subresource floor.
    pub min_scale: u32,
    /// Upper bound on environments.
    pub max_scale: u32,
    /// Events one environment takes at once.
    pub concurrency_per_environment: u32,
    /// Target fraction of that concurrency.
    pub target_utilization: f64,
    /// Idle time before scaling to zero.
    pub scale_to_zero_after: Duration,
    /// Stable averaging window.
    pub stable_window: Duration,
    /// Fixed or adaptive keep-alive.
    pub keep_alive: KeepAlive,
}

/// Tunables of one function's autoscaler.
#[derive(Clone, Debug, PartialEq)]
pub struct AutoscalerConfig {
    /// Events one environment takes at once (the function's `concurrency`).
    pub concurrency_per_environment: f64,
    /// Fraction of that to aim for (Knative: 0.7).
    pub target_utilization: f64,
    /// Lower bound (0 allows scale to zero).
    pub min_scale: u32,
    /// Upper bound.
    pub max_scale: u32,
    /// Averaging window for steady load (Knative: 60 s).
    pub stable_window: Duration,
    /// Averaging window for bursts (Knative: 10 % of the stable window).
    pub panic_window: Duration,
    /// Panic when panic-window demand / ready environments reaches this (Knative: 2.0).
    pub panic_threshold: f64,
    /// Idle time before scaling to zero.
    pub scale_to_zero_after: Duration,
    /// At most this factor more environments per decision (Knative: 1000).
    pub max_scale_up_rate: f64,
    /// At most this factor fewer environments per decision (Knative: 2).
    pub max_scale_down_rate: f64,
    /// Fixed (`scale_to_zero_after`) or adaptive keep-alive.
    pub keep_alive: KeepAlive,
}

impl AutoscalerConfig {
    /// Knative's defaults around a function's own settings.
    pub fn from_settings(settings: &ScalingSettings) -> Self {
        AutoscalerConfig {
            concurrency_per_environment: f64::from(settings.concurrency_per_environment.max(1)),
            target_utilization: settings.target_utilization,
            min_scale: settings.min_scale,
            max_scale: settings.max_scale,
            stable_window: settings.stable_window,
            panic_window: settings.stable_window / 10,
            panic_threshold: 2.0,
            scale_to_zero_after: settings.scale_to_zero_after,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            keep_alive: settings.keep_alive,
        }
    }

    /// Concurrency one environment should carry.
    pub fn target_per_environment(&self) -> f64 {
        (self.concurrency_per_environment * self.target_utilization).max(0.01)
    }
}

/// Why the desired count is what it is (a bounded set, fit for metric labels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecisionReason {
    /// Averaged load over the stable window.
    Stable,
    /// A burst: panic mode holds the count at or above its peak.
    Panic,
    /// Demand arrived while at zero.
    WakeFromZero,
    /// Nothing in flight or queued for `scale_to_zero_after`.
    ScaleToZero,
    /// Recently busy: kept at one environment until the idle window passes.
    HoldUntilIdle,
    /// Adaptive keep-alive: one environment loaded again before the next
    /// event is expected.
    PreWarm,
    /// Raised to `min_scale` or lowered to `max_scale`.
    Bounds,
}

impl DecisionReason {
    /// A short label for metrics and Events.
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionReason::Stable => "stable",
            DecisionReason::Panic => "panic",
            DecisionReason::WakeFromZero => "wake_from_zero",
            DecisionReason::ScaleToZero => "scale_to_zero",
            DecisionReason::HoldUntilIdle => "hold_until_idle",
            DecisionReason::PreWarm => "pre_warm",
            DecisionReason::Bounds => "bounds",
        }
    }
}

/// One scaling decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Environments the function should have.
    pub desired: u32,
    /// Whether panic mode is on.
    pub panicking: bool,
    /// Average concurrency over the stable window.
    pub stable_concurrency: f64,
    /// Average concurrency over the panic window.
    pub panic_concurrency: f64,
    /// What decided the count.
    pub reason: DecisionReason,
    /// The keep-alive in force for the idle time after the last event.
    pub keep_alive: keepalive::Decision,
}

/// Where a function's keep-alive stands, for its status.
#[derive(Clone, Debug, PartialEq)]
pub struct KeepAliveState {
    /// Fixed or adaptive.
    pub policy: KeepAlive,
    /// The decision for the current idle time.
    pub decision: keepalive::Decision,
    /// When the last event ended (the idle time's start), if the function
    /// is idle now.
    pub idle_since: Option<Instant>,
    /// The function's idle times.
    pub histogram: IdleHistogram,
}

/// The parts of a [`KeepAliveState`] a status shows, cheap to compare.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KeepAliveSummary {
    /// Fixed or adaptive.
    pub policy: KeepAlive,
    /// The decision for the current idle time.
    pub decision: keepalive::Decision,
    /// A pre-warm is ahead.
    pub prewarm_ahead: bool,
    /// Idle times recorded.
    pub idle_times: u32,
}

impl KeepAliveState {
    /// When one environment is loaded again, if the function is idle and
    /// that is still ahead.
    pub fn next_prewarm(&self, now: Instant) -> Option<Instant> {
        let at = self.idle_since? + self.decision.prewarm_after;
        (self.decision.prewarm_after > Duration::ZERO && at > now).then_some(at)
    }

    /// When the function scales to zero, if it is idle and that is ahead.
    pub fn unload_at(&self, now: Instant) -> Option<Instant> {
        let at = self.idle_since? + self.decision.keep_alive_until;
        (at > now).then_some(at)
    }
}

/// One second of samples.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    start: Instant,
    sum: f64,
    count: u32,
}

impl Bucket {
    fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum / f64::from(self.count)
        }
    }
}

const BUCKET: Duration = Duration::from_secs(1);

/// The autoscaler state of one function.
#[derive(Clone, Debug)]
pub struct Autoscaler {
    config: AutoscalerConfig,
    buckets: VecDeque<Bucket>,
    last_busy: Option<Instant>,
    /// Whether the latest sample had anything in flight or queued.
    busy_now: bool,
    /// Idle times seen (kept whatever the policy, so switching to adaptive
    /// starts with history).
    idle: IdleHistogram,
    params: KeepAliveParams,
    panic_since: Option<Instant>,
    last_panic_trigger: Option<Instant>,
    max_panic_desired: u32,
    last_desired: u32,
}

impl Autoscaler {
    /// A fresh autoscaler; `current` is the environment count it starts from.
    /// Starting with more than one environment starts in panic mode, so lost
    /// history can not cause a scale-down (as Knative does after a restart).
    pub fn new(config: AutoscalerConfig, now: Instant, current: u32) -> Self {
        let restarted_busy = current > 1;
        Autoscaler {
            config,
            buckets: VecDeque::new(),
            last_busy: if current > 0 { Some(now) } else { None },
            busy_now: false,
            idle: IdleHistogram::new(),
            params: KeepAliveParams::recommended(),
            panic_since: restarted_busy.then_some(now),
            last_panic_trigger: restarted_busy.then_some(now),
            max_panic_desired: if restarted_busy { current } else { 0 },
            last_desired: current,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &AutoscalerConfig {
        &self.config
    }

    /// Replaces the configuration (the Function changed); history is kept.
    pub fn set_config(&mut self, config: AutoscalerConfig) {
        self.config = config;
    }

    /// The last desired count.
    pub fn last_desired(&self) -> u32 {
        self.last_desired
    }

    /// Starts from idle times kept elsewhere (a Function's status, after a
    /// restart).
    pub fn restore_idle_times(&mut self, histogram: IdleHistogram) {
        self.idle = histogram;
    }

    /// The keep-alive for the idle time after the last event.
    pub fn keep_alive_decision(&self) -> keepalive::Decision {
        match self.config.keep_alive {
            KeepAlive::Fixed => keepalive::Decision::fixed(self.config.scale_to_zero_after),
            KeepAlive::Adaptive => keepalive::decide(&self.idle, &self.params),
        }
    }

    /// What a status shows of the keep-alive, without copying the
    /// histogram: compared every tick, so that the full state is built only
    /// when something changed.
    pub fn keep_alive_summary(&self, now: Instant) -> KeepAliveSummary {
        let decision = self.keep_alive_decision();
        let idle_since = if self.busy_now { None } else { self.last_busy };
        let prewarm_ahead = idle_since.is_some_and(|since| {
            decision.prewarm_after > Duration::ZERO && since + decision.prewarm_after > now
        });
        KeepAliveSummary {
            policy: self.config.keep_alive,
            decision,
            prewarm_ahead,
            idle_times: self.idle.total(),
        }
    }

    /// Where the keep-alive stands.
    pub fn keep_alive_state(&self) -> KeepAliveState {
        KeepAliveState {
            policy: self.config.keep_alive,
            decision: self.keep_alive_decision(),
            idle_since: if self.busy_now { None } else { self.last_busy },
            histogram: self.idle.clone(),
        }
    }

    /// Records that nothing runs now and the last invocation ended at
    /// `ended` (as the gateways measured it). The idle time counts from
    /// there, not from the sample that last saw load (up to a report
    /// period later), and an invocation no sample saw in flight still
    /// counts as an event.
    pub fn record_idle_since(&mut self, now: Instant, ended: Instant) {
        let ended = ended.min(now);
        if !self.busy_now {
            match self.last_busy {
                // Already counted from there or later.
                Some(last) if last >= ended => return,
                Some(last) => {
                    // An invocation ran between two samples.
                    let gap = ended.saturating_duration_since(last);
                    if gap >= MIN_IDLE_GAP {
                        self.idle.record_idle(gap);
                    }
                }
                None => {}
            }
        }
        self.last_busy = Some(ended);
        self.busy_now = false;
    }

    /// Records a concurrency sample (in flight + queued, summed over gateways).
    /// Returns true when this is demand for a function at zero, which the
    /// caller should act on at once rather than at its next tick.
    pub fn record(&mut self, now: Instant, concurrency: f64) -> bool {
        let concurrency = if concurrency.is_finite() {
            concurrency.max(0.0)
        } else {
            0.0
        };
        if concurrency > 0.0 {
            if !self.busy_now
                && let Some(ended) = self.last_busy
            {
                let gap = now.saturating_duration_since(ended);
                if gap >= MIN_IDLE_GAP {
                    self.idle.record_idle(gap);
                }
            }
            self.last_busy = Some(now);
        }
        self.busy_now = concurrency > 0.0;
        match self.buckets.back_mut() {
            Some(b) if now >= b.start && now.duration_since(b.start) < BUCKET => {
                b.sum += concurrency;
                b.count += 1;
            }
            Some(b) if now < b.start => {
                // A sample from the past (clock skew between callers): fold it in.
                b.sum += concurrency;
                b.count += 1;
            }
            _ => self.buckets.push_back(Bucket {
                start: now,
                sum: concurrency,
                count: 1,
            }),
        }
        self.trim(now);
        concurrency > 0.0 && self.last_desired == 0
    }

    fn trim(&mut self, now: Instant) {
        let keep = self.config.stable_window.max(self.config.panic_window) + BUCKET;
        while let Some(front) = self.buckets.front() {
            if now.saturating_duration_since(front.start) > keep {
                self.buckets.pop_front();
            } else {
                break;
            }
        }
    }

    /// Mean of the per-second means over the buckets that started within `window`.
    fn average(&self, now: Instant, window: Duration) -> f64 {
        let mut sum = 0.0;
        let mut n = 0u32;
        for b in self.buckets.iter().rev() {
            if now.saturating_duration_since(b.start) >= window {
                break;
            }
            sum += b.mean();
            n += 1;
        }
        if n == 0 { 0.0 } else { sum / f64::from(n) }
    }

    /// Decides the desired environment count given how many are ready now.
    pub fn decide(&mut self, now: Instant, ready: u32) -> Decision {
        self.trim(now);
        let cfg = &self.config;
        let target = cfg.target_per_environment();
        let stable = self.average(now, cfg.stable_window);
        // A burst must register within about a second, not after the panic
        // window has filled: take the latest second when it is higher.
        let panic = self
            .average(now, cfg.panic_window)
            .max(self.average(now, BUCKET));
        let ready_for_rates = ready.max(1);

        let to_count = |c: f64| -> u32 {
            let n = (c / target).ceil();
            if n >= f64::from(u32::MAX) {
                u32::MAX
            } else {
                n.max(0.0) as u32
            }
        };
        let max_up = (cfg.max_scale_up_rate * f64::from(ready_for_rates)).ceil() as u32;
        let max_down = (f64::from(ready_for_rates) / cfg.max_scale_down_rate).floor() as u32;
        let clamp_rate = |n: u32| -> u32 {
            let n = n.min(max_up.max(1));
            if ready > 0 { n.max(max_down) } else { n }
        };
        let stable_desired = clamp_rate(to_count(stable));
        let panic_desired = clamp_rate(to_count(panic));

        // Panic mode: enter or extend when the burst reaches the threshold.
        if ready > 0 && f64::from(to_count(panic)) / f64::from(ready) >= cfg.panic_threshold {
            if self.panic_since.is_none() {
                self.panic_since = Some(now);
            }
            self.last_panic_trigger = Some(now);
        } else if ready == 0 && panic > 0.0 {
            // Bursting from zero: treat as a panic so the count ratchets up.
            if self.panic_since.is_none() {
                self.panic_since = Some(now);
            }
            self.last_panic_trigger = Some(now);
        }
        if let Some(t) = self.last_panic_trigger
            && now.saturating_duration_since(t) >= cfg.stable_window
        {
            self.panic_since = None;
            self.last_panic_trigger = None;
            self.max_panic_desired = 0;
        }
        let panicking = self.panic_since.is_some();

        let (mut desired, mut reason) = if panicking {
            let d = stable_desired
                .max(panic_desired)
                .max(self.max_panic_desired);
            self.max_panic_desired = d;
            (d, DecisionReason::Panic)
        } else {
            (stable_desired, DecisionReason::Stable)
        };

        let keep_alive = self.keep_alive_decision();
        let idle_for = match self.last_busy {
            Some(_) if self.busy_now => Some(Duration::ZERO),
            Some(t) => Some(now.saturating_duration_since(t)),
            None => None,
        };
        let prewarm_wait = !self.busy_now && idle_for.is_some_and(|i| i < keep_alive.prewarm_after);
        match idle_for {
            Some(idle) if idle < keep_alive.keep_alive_until && !prewarm_wait => {
                let prewarmed = keep_alive.prewarm_after > Duration::ZERO && !self.busy_now;
                if desired == 0 {
                    desired = 1;
                    reason = if prewarmed {
                        DecisionReason::PreWarm
                    } else if self.last_desired == 0 {
                        DecisionReason::WakeFromZero
                    } else {
                        DecisionReason::HoldUntilIdle
                    };
                } else if self.last_desired == 0 {
                    reason = if prewarmed {
                        DecisionReason::PreWarm
                    } else {
                        DecisionReason::WakeFromZero
                    };
                }
            }
            _ => {
                // Idle for the whole window (or never busy): nothing is needed.
                if !panicking || panic == 0.0 {
                    desired = 0;
                    reason = DecisionReason::ScaleToZero;
                    self.panic_since = None;
                    self.last_panic_trigger = None;
                    self.max_panic_desired = 0;
                }
            }
        }

        let bounded = desired.clamp(cfg.min_scale.min(cfg.max_scale), cfg.max_scale);
        if bounded != desired {
            desired = bounded;
            reason = DecisionReason::Bounds;
        }
        if panicking && desired < self.max_panic_desired {
            // max_scale lowered below the panic peak: remember the bound, not the peak.
            self.max_panic_desired = desired;
        }
        self.last_desired = desired;
        Decision {
            desired,
            panicking: self.panic_since.is_some(),
            stable_concurrency: stable,
            panic_concurrency: panic,
            reason,
            keep_alive,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config() -> AutoscalerConfig {
        AutoscalerConfig {
            concurrency_per_environment: 1.0,
            target_utilization: 0.7,
            min_scale: 0,
            max_scale: 50,
            stable_window: Duration::from_secs(60),
            panic_window: Duration::from_secs(6),
            panic_threshold: 2.0,
            scale_to_zero_after: Duration::from_secs(30),
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            keep_alive: KeepAlive::Fixed,
        }
    }

    /// Drives the autoscaler with one sample and one decision per second,
    /// with `ready` following `desired` after one tick, and returns the decisions.
    fn drive(
        a: &mut Autoscaler,
        t0: Instant,
        from_s: u64,
        to_s: u64,
        load: impl Fn(u64) -> f64,
        ready: &mut u32,
    ) -> Vec<Decision> {
        let mut out = Vec::new();
        for s in from_s..to_s {
            let now = t0 + Duration::from_secs(s);
            a.record(now, load(s));
            let d = a.decide(now, *ready);
            *ready = d.desired;
            out.push(d);
        }
        out
    }

    #[test]
    fn idle_function_stays_at_zero() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(config(), t0, 0);
        let mut ready = 0;
        let ds = drive(&mut a, t0, 0, 120, |_| 0.0, &mut ready);
        assert!(ds.iter().all(|d| d.desired == 0));
    }

    #[test]
    fn first_event_at_zero_wakes_at_once() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(config(), t0, 0);
        assert!(
            a.record(t0, 1.0),
            "demand at zero must ask for an immediate decision"
        );
        let d = a.decide(t0, 0);
        assert_eq!(d.desired, 2, "1 / 0.7 rounds up to 2");
        assert!(!a.record(t0, 1.0), "no longer at zero");
    }

    #[test]
    fn demand_after_idle_seconds_is_seen_at_full_size() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(config(), t0, 0);
        let mut ready = 0;
        // Gateways report zero every second for a while, then 7 events arrive.
        drive(&mut a, t0, 0, 20, |_| 0.0, &mut ready);
        let now = t0 + Duration::from_secs(20);
        assert!(a.record(now, 7.0));
        let d = a.decide(now, 0);
        assert_eq!(d.desired, 10, "7 / 0.7 at once, not a ramp of one a second");
    }

    #[test]
    fn steady_load_settles_on_concurrency_over_target() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(config(), t0, 0);
        let mut ready = 0;
        let ds = drive(&mut a, t0, 0, 180, |_| 7.0, &mut ready);
        assert_eq!(ds.last().map(|d| d.desired), Some(10), "7 / 0.7 = 10");
        assert!(
            !ds.last().is_some_and(|d| d.panicking),
            "panic ends after a calm stable window"
        );
    }

    #[test]
    fn burst_panics_and_does_not_scale_down_while_panicking() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(config(), t0, 1);
        let mut ready = 1;
        drive(&mut a, t0, 0, 70, |_| 0.5, &mut ready);
        assert_eq!(ready, 1);
        // Burst of 30 for 5 seconds, then back to 0.5.
        let ds = drive(&mut a, t0, 70, 75, |_| 30.0, &mut ready);
        assert!(ds[0].panicking, "a 60x burst panics on the first tick");
        let peak = ds.iter().map(|d| d.desired).max().unwrap_or(0);
        assert_eq!(
            peak, 43,
            "the latest second counts at once: 30 / 0.7 rounds up to 43"
        );
        let after = drive(&mut a, t0, 75, 120, |_| 0.5, &mut ready);
        for d in &after {
            if d.panicking {
                assert!(d.desired >= peak, "no scale-down in panic: {d:?}");
            }
        }
        let calm = drive(&mut a, t0, 120, 300, |_| 0.5, &mut ready);
        assert_eq!(calm.last().map(|d| d.desired), Some(1));
    }

    #[test]
    fn scales_to_zero_only_after_idle_window() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(config(), t0, 0);
        let mut ready = 0;
        drive(&mut a, t0, 0, 10, |_| 3.0, &mut ready);
        assert!(ready >= 1);
        let idle = drive(&mut a, t0, 10, 60, |_| 0.0, &mut ready);
        // Last busy at s=9: still held at s=38, zero from s=39 on.
        assert!(idle[..29].iter().all(|d| d.desired >= 1), "{idle:?}");
        let zero_at = idle.iter().position(|d| d.desired == 0).map(|i| i + 10);
        assert_eq!(zero_at, Some(39));
        assert_eq!(idle[29].reason, DecisionReason::ScaleToZero);
    }

    #[test]
    fn min_scale_holds_when_idle_and_max_scale_caps_bursts() {
        let t0 = Instant::now();
        let mut cfg = config();
        cfg.min_scale = 2;
        cfg.max_scale = 5;
        let mut a = Autoscaler::new(cfg, t0, 0);
        let mut ready = 0;
        let ds = drive(&mut a, t0, 0, 5, |_| 0.0, &mut ready);
        assert!(ds.iter().all(|d| d.desired == 2));
        let ds = drive(&mut a, t0, 5, 10, |_| 1000.0, &mut ready);
        assert!(ds.iter().all(|d| d.desired == 5));
    }

    #[test]
    fn scale_down_at_most_halves_per_decision() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(config(), t0, 0);
        let mut ready = 0;
        drive(&mut a, t0, 0, 200, |_| 14.0, &mut ready);
        assert_eq!(ready, 20);
        let ds = drive(&mut a, t0, 200, 230, |_| 0.7, &mut ready);
        let mut prev = 20;
        for d in ds {
            assert!(d.desired * 2 >= prev, "{prev} -> {}", d.desired);
            prev = d.desired;
        }
    }

    #[test]
    fn restart_with_many_environments_starts_in_panic() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(config(), t0, 8);
        a.record(t0, 0.5);
        let d = a.decide(t0, 8);
        assert!(d.panicking);
        assert_eq!(d.desired, 8, "lost history must not cause a scale-down");
    }

    #[test]
    fn flapping_load_does_not_flap_the_count() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(config(), t0, 0);
        let mut ready = 0;
        drive(
            &mut a,
            t0,
            0,
            120,
            |s| if s % 2 == 0 { 6.0 } else { 1.0 },
            &mut ready,
        );
        let ds = drive(
            &mut a,
            t0,
            120,
            240,
            |s| if s % 2 == 0 { 6.0 } else { 1.0 },
            &mut ready,
        );
        let min = ds.iter().map(|d| d.desired).min().unwrap_or(0);
        let max = ds.iter().map(|d| d.desired).max().unwrap_or(0);
        assert!(max - min <= 1, "count moved between {min} and {max}");
        assert!((5..=6).contains(&max), "3.5 / 0.7 = 5, got {max}");
    }

    /// One event every `period` seconds, busy for its first 2 seconds (half
    /// an environment's target: one environment), for `cycles` periods from
    /// second 0; returns the decisions, one a second.
    fn periodic(a: &mut Autoscaler, t0: Instant, period: u64, cycles: u64) -> Vec<Decision> {
        let mut ready = 0;
        drive(
            a,
            t0,
            0,
            period * cycles,
            |s| if s % period < 2 { 0.5 } else { 0.0 },
            &mut ready,
        )
    }

    #[test]
    fn adaptive_keep_alive_prewarms_a_periodic_function_before_its_next_event() {
        let t0 = Instant::now();
        let adaptive = AutoscalerConfig {
            keep_alive: KeepAlive::Adaptive,
            ..config()
        };
        let mut a = Autoscaler::new(adaptive, t0, 0);
        // Every 3 minutes: idle times of 178 s, in the 2-3 minute bin.
        let ds = periodic(&mut a, t0, 180, 40);
        let state = a.keep_alive_state();
        assert_eq!(state.histogram.total(), 39, "one idle time per gap");
        assert_eq!(state.histogram.bin(2), 39);
        let k = state.decision;
        assert_eq!(k.mode, keepalive::Mode::Histogram);
        // Pre-warm at 2 minutes less 10 %; keep until the 20-minute floor.
        assert_eq!(k.prewarm_after, Duration::from_secs(108));
        assert_eq!(k.keep_alive_until, Duration::from_secs(20 * 60));

        // The last cycle, from second 39 * 180: busy, then unloaded once the
        // burst has left the panic window (6 s), loaded again 108 s after the
        // event's end, ready when the next event comes at 180 s.
        let last = &ds[39 * 180..];
        assert!(last[0].desired >= 1, "the event runs");
        let idle_end = 1; // the last busy second
        for (s, d) in last.iter().enumerate().skip(idle_end + 7) {
            let idle = (s - idle_end) as u64;
            if idle < 108 {
                assert_eq!(
                    d.desired, 0,
                    "unloaded while the next event is far, at idle {idle} s: {d:?}"
                );
            } else {
                assert_eq!(d.desired, 1, "pre-warmed at idle {idle} s: {d:?}");
            }
        }
        assert_eq!(last[idle_end + 108].reason, DecisionReason::PreWarm);
        let now = t0 + Duration::from_secs(40 * 180 - 1);
        assert!(state.next_prewarm(now).is_none(), "pre-warm already passed");
        let earlier = t0 + Duration::from_secs(39 * 180 + 30);
        let mut b = a.clone();
        b.record(earlier, 0.0);
        assert!(b.keep_alive_state().unload_at(earlier).is_some());

        // Once warm, the environment stays until the keep-alive point; then zero.
        let mut ready = 1;
        let after = drive(&mut a, t0, 40 * 180, 40 * 180 + 1200, |_| 0.0, &mut ready);
        assert!(after[..1000].iter().all(|d| d.desired == 1));
        assert_eq!(after.last().map(|d| d.desired), Some(0));
    }

    #[test]
    fn fixed_keep_alive_cold_starts_the_same_periodic_function() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(config(), t0, 0);
        let ds = periodic(&mut a, t0, 180, 40);
        assert_eq!(
            a.keep_alive_decision(),
            keepalive::Decision::fixed(Duration::from_secs(30))
        );
        // Idle 30 s after each event, then zero: every event starts cold.
        let last = &ds[39 * 180..];
        assert_eq!(last[20].desired, 1);
        assert_eq!(last[100].desired, 0);
        assert_eq!(last[179].desired, 0, "nothing ready for the next event");
        assert_eq!(
            a.keep_alive_state().histogram.total(),
            39,
            "recorded either way"
        );
    }

    #[test]
    fn adaptive_keep_alive_falls_back_to_a_fixed_window_without_history() {
        let t0 = Instant::now();
        let adaptive = AutoscalerConfig {
            keep_alive: KeepAlive::Adaptive,
            ..config()
        };
        let mut a = Autoscaler::new(adaptive, t0, 0);
        let ds = periodic(&mut a, t0, 180, 5);
        let k = a.keep_alive_decision();
        assert_eq!(k.mode, keepalive::Mode::Fixed, "4 idle times are too few");
        assert_eq!(k.prewarm_after, Duration::ZERO);
        assert_eq!(k.keep_alive_until, Duration::from_secs(20 * 60));
        // Kept warm from the event on: the next events find it ready.
        assert!(ds[2..].iter().all(|d| d.desired == 1));
        // Restored history decides at once.
        let mut b = Autoscaler::new(
            AutoscalerConfig {
                keep_alive: KeepAlive::Adaptive,
                ..config()
            },
            t0,
            0,
        );
        let mut known = IdleHistogram::new();
        for _ in 0..40 {
            known.record_idle(Duration::from_secs(178));
        }
        b.restore_idle_times(known);
        assert_eq!(b.keep_alive_decision().mode, keepalive::Mode::Histogram);
    }

    #[test]
    fn decay_after_load_is_gradual_not_a_cliff() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(config(), t0, 0);
        let mut ready = 0;
        drive(&mut a, t0, 0, 120, |_| 7.0, &mut ready);
        assert_eq!(ready, 10);
        let ds = drive(&mut a, t0, 120, 150, |_| 0.7, &mut ready);
        assert!(
            ds[0].desired >= 9,
            "one quiet second barely moves the stable average"
        );
        assert!(ds.last().is_some_and(|d| d.desired < 10 && d.desired >= 1));
    }

    proptest! {
        #[test]
        fn desired_always_within_bounds(
            loads in proptest::collection::vec(0.0f64..500.0, 1..200),
            min in 0u32..5,
            extra in 0u32..60,
            cc in 1u32..10,
        ) {
            let t0 = Instant::now();
            let mut cfg = config();
            cfg.min_scale = min;
            cfg.max_scale = min + extra.max(1);
            cfg.concurrency_per_environment = f64::from(cc);
            let mut a = Autoscaler::new(cfg.clone(), t0, 0);
            let mut ready = 0;
            for (i, load) in loads.iter().enumerate() {
                let now = t0 + Duration::from_millis(500 * i as u64);
                a.record(now, *load);
                let d = a.decide(now, ready);
                prop_assert!(d.desired >= cfg.min_scale && d.desired <= cfg.max_scale, "{d:?}");
                if *load > 0.0 {
                    prop_assert!(d.desired >= 1, "demand never maps to zero environments");
                }
                ready = d.desired;
            }
        }

        #[test]
        fn enough_capacity_for_sustained_load(load in 0.1f64..300.0, cc in 1u32..8) {
            let t0 = Instant::now();
            let mut cfg = config();
            cfg.max_scale = 1000;
            cfg.concurrency_per_environment = f64::from(cc);
            let mut a = Autoscaler::new(cfg.clone(), t0, 0);
            let mut ready = 0;
            let mut last = 0;
            for s in 0..200u64 {
                let now = t0 + Duration::from_secs(s);
                a.record(now, load);
                last = a.decide(now, ready).desired;
                ready = last;
            }
            let capacity = f64::from(last) * f64::from(cc);
            prop_assert!(capacity >= load, "{last} environments x {cc} < load {load}");
            prop_assert!(capacity * cfg.target_utilization <= load + f64::from(cc), "over-provisioned: {last} for {load}");
        }
    }
}
