//! Retry backoff, written once: `base × 2^(attempt-1)`, capped.

use std::time::Duration;

/// The delay before retry number `attempt` (1-based): `base` doubled per
/// earlier attempt, never above `max`.
pub fn exponential(base: Duration, attempt: u32, max: Duration) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(20);
    base.saturating_mul(factor).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps() {
        let s = Duration::from_secs;
        let d: Vec<Duration> = (0..=5).map(|a| exponential(s(1), a, s(10))).collect();
        assert_eq!(d, [s(1), s(1), s(2), s(4), s(8), s(10)]);
        assert_eq!(exponential(s(60), 1000, Duration::MAX), s(60) * (1 << 20));
    }
}
