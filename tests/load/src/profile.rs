//! Load profiles: how many concurrent callers, or how many requests per
//! second, at each moment of a run.
//!
//! Syntax (the same for concurrency and for arrival rate):
//!
//! - `50`: a constant level for the whole `--duration`.
//! - `0:5s,50:20s,0:30s`: stages `LEVEL:DURATION`, run in order (a burst 0 -> 50 -> 0).
//! - `10..100:30s`: a linear ramp from 10 to 100 over 30 seconds.
//!
//! Durations take `ms`, `s`, `m` or `h` (`1.5s`, `500ms`, `2m`); a bare number is seconds.

use std::fmt;
use std::time::Duration;

use crate::error::{Error, Result};

/// One stage of a profile: a level (or a linear ramp between two levels) held for a time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stage {
    /// Level at the start of the stage.
    pub from: f64,
    /// Level at the end of the stage (equal to `from` unless the stage is a ramp).
    pub to: f64,
    /// How long the stage lasts.
    pub duration: Duration,
}

impl Stage {
    fn level_at(&self, into: Duration) -> f64 {
        if self.from == self.to || self.duration.is_zero() {
            return self.from;
        }
        let frac = (into.as_secs_f64() / self.duration.as_secs_f64()).clamp(0.0, 1.0);
        self.from + (self.to - self.from) * frac
    }
}

/// A sequence of stages.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    stages: Vec<Stage>,
}

impl Profile {
    /// Parses a profile. A bare level needs `default_duration` (the `--duration` flag).
    pub fn parse(text: &str, default_duration: Option<Duration>) -> Result<Profile> {
        let text = text.trim();
        if text.is_empty() {
            return Err(Error::Config("empty load profile".into()));
        }
        let mut stages = Vec::new();
        for part in text.split(',') {
            let part = part.trim();
            let (level, duration) = match part.split_once(':') {
                Some((level, duration)) => (level, parse_duration(duration)?),
                None => {
                    let duration = default_duration.ok_or_else(|| {
                        Error::Config(format!(
                            "stage `{part}` has no duration: write LEVEL:DURATION or pass --duration"
                        ))
                    })?;
                    (part, duration)
                }
            };
            let (from, to) = match level.split_once("..") {
                Some((from, to)) => (parse_level(from)?, parse_level(to)?),
                None => {
                    let level = parse_level(level)?;
                    (level, level)
                }
            };
            stages.push(Stage { from, to, duration });
        }
        let profile = Profile { stages };
        if profile.total().is_zero() {
            return Err(Error::Config("the load profile lasts zero seconds".into()));
        }
        Ok(profile)
    }

    /// A constant level for `duration`.
    pub fn constant(level: f64, duration: Duration) -> Profile {
        Profile {
            stages: vec![Stage {
                from: level,
                to: level,
                duration,
            }],
        }
    }

    /// The stages, in order.
    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    /// Total length of all stages.
    pub fn total(&self) -> Duration {
        self.stages.iter().map(|s| s.duration).sum()
    }

    /// Highest level of any stage.
    pub fn peak(&self) -> f64 {
        self.stages
            .iter()
            .map(|s| s.from.max(s.to))
            .fold(0.0, f64::max)
    }

    /// Cuts the profile at `limit` (the `--duration` bound).
    pub fn truncated(&self, limit: Duration) -> Profile {
        let mut left = limit;
        let mut stages = Vec::new();
        for stage in &self.stages {
            if left.is_zero() {
                break;
            }
            if stage.duration <= left {
                stages.push(*stage);
                left -= stage.duration;
            } else {
                stages.push(Stage {
                    from: stage.from,
                    to: stage.level_at(left),
                    duration: left,
                });
                left = Duration::ZERO;
            }
        }
        Profile { stages }
    }

    /// The level at `t` since the start, or `None` once the profile has ended.
    pub fn level_at(&self, t: Duration) -> Option<f64> {
        let mut start = Duration::ZERO;
        for stage in &self.stages {
            let end = start + stage.duration;
            if t < end {
                return Some(stage.level_at(t - start));
            }
            start = end;
        }
        None
    }

    /// Intended send times for an arrival-rate profile (levels are requests per second),
    /// as offsets from the start of the run, in order.
    pub fn arrivals(&self) -> Arrivals<'_> {
        Arrivals {
            profile: self,
            stage: 0,
            stage_start: 0.0,
            index_in_stage: 0,
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, stage) in self.stages.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if stage.from == stage.to {
                write!(f, "{}:{}s", stage.from, stage.duration.as_secs_f64())?;
            } else {
                write!(
                    f,
                    "{}..{}:{}s",
                    stage.from,
                    stage.to,
                    stage.duration.as_secs_f64()
                )?;
            }
        }
        Ok(())
    }
}

/// Iterator over the intended send times of an arrival-rate profile.
///
/// The k-th send of a stage happens when the number of requests the stage
/// should have offered so far (the area under its rate) reaches k, computed in
/// closed form, so the schedule never drifts: a constant stage at rate `r`
/// sends at exactly `start + k / r`.
#[derive(Debug)]
pub struct Arrivals<'a> {
    profile: &'a Profile,
    stage: usize,
    stage_start: f64,
    index_in_stage: u64,
}

impl Iterator for Arrivals<'_> {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        loop {
            let stage = self.profile.stages.get(self.stage)?;
            let length = stage.duration.as_secs_f64();
            match nth_arrival(stage, self.index_in_stage as f64) {
                Some(into) if into < length => {
                    self.index_in_stage += 1;
                    return Some(Duration::from_secs_f64(self.stage_start + into));
                }
                _ => {
                    self.stage += 1;
                    self.stage_start += length;
                    self.index_in_stage = 0;
                }
            }
        }
    }
}

/// Time into `stage` at which the area under its rate reaches `k`:
/// solves `from * t + (to - from) / (2 * length) * t^2 = k`.
fn nth_arrival(stage: &Stage, k: f64) -> Option<f64> {
    let length = stage.duration.as_secs_f64();
    let a = if length > 0.0 {
        (stage.to - stage.from) / (2.0 * length)
    } else {
        0.0
    };
    let b = stage.from;
    if a == 0.0 {
        return (b > 0.0).then(|| k / b);
    }
    let discriminant = b * b + 4.0 * a * k;
    if discriminant < 0.0 {
        return None;
    }
    let t = (-b + discriminant.sqrt()) / (2.0 * a);
    (t >= 0.0).then_some(t)
}

fn parse_level(text: &str) -> Result<f64> {
    let text = text.trim();
    let level: f64 = text
        .parse()
        .map_err(|_| Error::Config(format!("`{text}` is not a number")))?;
    if !level.is_finite() || level < 0.0 {
        return Err(Error::Config(format!(
            "level `{text}` must be zero or positive"
        )));
    }
    Ok(level)
}

/// Parses `500ms`, `1.5s`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| Error::Config(format!("`{text}` is not a duration (try 500ms, 5s, 2m)")))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => {
            return Err(Error::Config(format!(
                "`{text}`: unknown unit `{unit}` (use ms, s, m or h)"
            )));
        }
    };
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| Error::Config(format!("`{text}` is not a valid duration")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn parses_stages_and_constant_levels() {
        let p = Profile::parse("0:5s,50:20s,0:30s", None).unwrap();
        assert_eq!(p.total(), secs(55.0));
        assert_eq!(p.peak(), 50.0);
        assert_eq!(p.level_at(secs(4.9)), Some(0.0));
        assert_eq!(p.level_at(secs(5.0)), Some(50.0));
        assert_eq!(p.level_at(secs(25.0)), Some(0.0));
        assert_eq!(p.level_at(secs(55.0)), None);

        let c = Profile::parse("8", Some(secs(3.0))).unwrap();
        assert_eq!(c, Profile::constant(8.0, secs(3.0)));
        assert!(Profile::parse("8", None).is_err());
    }

    #[test]
    fn parses_ramps_and_units() {
        let p = Profile::parse("10..20:2s, 5:500ms", None).unwrap();
        assert_eq!(p.level_at(secs(1.0)), Some(15.0));
        assert_eq!(p.level_at(secs(2.2)), Some(5.0));
        assert_eq!(p.total(), secs(2.5));
        assert_eq!(parse_duration("2m").unwrap(), secs(120.0));
        assert_eq!(parse_duration("1.5").unwrap(), secs(1.5));
    }

    #[test]
    fn rejects_bad_profiles() {
        for bad in ["", "x:5s", "5:xs", "-1:5s", "5:5y", "0:0s", "1:5s,,2:5s"] {
            assert!(Profile::parse(bad, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn truncation_cuts_at_the_bound() {
        let p = Profile::parse("0..100:10s,100:10s", None).unwrap();
        let t = p.truncated(secs(5.0));
        assert_eq!(t.total(), secs(5.0));
        assert_eq!(t.stages()[0].to, 50.0);
    }

    #[test]
    fn constant_rate_arrivals_are_exact() {
        let p = Profile::parse("100:2s", None).unwrap();
        let times: Vec<_> = p.arrivals().collect();
        assert_eq!(times.len(), 200);
        assert_eq!(times[0], Duration::ZERO);
        assert!((times[199].as_secs_f64() - 1.99).abs() < 1e-9);
    }

    #[test]
    fn burst_arrivals_skip_idle_stages() {
        let p = Profile::parse("0:1s,10:1s,0:1s,20:0.5s", None).unwrap();
        let times: Vec<_> = p.arrivals().collect();
        assert_eq!(times.len(), 20);
        assert_eq!(times[0], secs(1.0));
        assert!(times[9] < secs(2.0));
        assert_eq!(times[10], secs(3.0));
        assert!(times.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn ramp_arrivals_match_the_area_under_the_ramp() {
        // 0 -> 100 req/s over 4 s: 200 requests; 100 -> 0 likewise.
        for text in ["0..100:4s", "100..0:4s"] {
            let p = Profile::parse(text, None).unwrap();
            let times: Vec<_> = p.arrivals().collect();
            assert!(
                (199..=201).contains(&times.len()),
                "{text}: {}",
                times.len()
            );
            assert!(times.windows(2).all(|w| w[0] < w[1]));
        }
    }
}
