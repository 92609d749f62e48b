//! Schedule expressions in EventBridge's syntax, UTC: `rate(5 minutes)` and
//! `cron(0 12 * * ? *)`. Pure: parsing, and the ticks around a time that is
//! passed in.
//!
//! - `rate(N unit)`: N a positive integer, unit `minute`, `hour` or `day`
//!   (singular for 1, plural otherwise, as EventBridge requires). Ticks fall
//!   on whole multiples of the period since the Unix epoch, so every
//!   gateway computes the same ticks without talking to the others
//!   (`rate(1 hour)` fires on the hour, `rate(1 day)` at 00:00 UTC).
//! - `cron(minutes hours day-of-month month day-of-week year)`: six fields,
//!   `*`, `,`, `-` (a range may wrap: `FRI-MON`), `/` (`0/15`, `*/5`,
//!   `10-40/10`); months `1-12` or `JAN-DEC`; days of week `1-7` (1 is
//!   Sunday) or `SUN-SAT`; years 1970-2199. One of day-of-month and
//!   day-of-week must be `?`, the other not. Day-of-month also takes `L`
//!   (the last day), `LW` (the last weekday) and `NW` (the weekday nearest
//!   day N, within the month); day-of-week takes `L` (Saturday, the last
//!   day of the week), `NL` (the last such day of the month) and `N#K`
//!   (the K-th such day of the month).

use std::fmt;

use time::{Date, Month, OffsetDateTime, Time, UtcOffset};

/// The first and last years a cron expression may name.
pub const FIRST_YEAR: i32 = 1970;
/// The last year a cron expression may name.
pub const LAST_YEAR: i32 = 2199;

/// Why an expression is not a schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleError(pub String);

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ScheduleError {}

fn err<T>(text: impl Into<String>) -> Result<T, ScheduleError> {
    Err(ScheduleError(text.into()))
}

/// A parsed schedule expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// `rate(...)`: every this many seconds.
    Rate(u64),
    /// `cron(...)`.
    Cron(Box<Cron>),
}

/// A parsed `cron(...)` expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    days_of_month: DayOfMonth,
    months: u16,
    days_of_week: DayOfWeek,
    years: [u64; 4],
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum DayOfMonth {
    Any,
    Days(u32),
    Last,
    LastWeekday,
    NearestWeekday(u8),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum DayOfWeek {
    Any,
    Days(u8),
    Last(u8),
    Nth(u8, u8),
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

impl Schedule {
    /// Parses `rate(...)` or `cron(...)`; the error says what is wrong.
    pub fn parse(expression: &str) -> Result<Schedule, ScheduleError> {
        let e = expression.trim();
        if let Some(inner) = e.strip_prefix("rate(").and_then(|r| r.strip_suffix(')')) {
            parse_rate(inner).map(Schedule::Rate)
        } else if let Some(inner) = e.strip_prefix("cron(").and_then(|r| r.strip_suffix(')')) {
            parse_cron(inner).map(|c| Schedule::Cron(Box::new(c)))
        } else {
            err(format!(
                "{expression:?} is neither rate(...) nor cron(...), e.g. \"rate(5 minutes)\" or \"cron(0 12 * * ? *)\""
            ))
        }
    }

    /// The first tick strictly after `t` (`None`: there is none, e.g. a
    /// cron expression whose years are past).
    pub fn next_after(&self, t: OffsetDateTime) -> Option<OffsetDateTime> {
        let t = t.to_offset(UtcOffset::UTC);
        match self {
            Schedule::Rate(every) => {
                let every = *every as i64;
                let s = t.unix_timestamp();
                from_unix((s.div_euclid(every) + 1) * every)
            }
            Schedule::Cron(c) => c.next_after(t),
        }
    }

    /// The last tick at or before `t` (`None`: there is none).
    pub fn latest_at_or_before(&self, t: OffsetDateTime) -> Option<OffsetDateTime> {
        let t = t.to_offset(UtcOffset::UTC);
        match self {
            Schedule::Rate(every) => {
                let every = *every as i64;
                let s = t.unix_timestamp();
                from_unix(s.div_euclid(every) * every)
            }
            Schedule::Cron(c) => c.latest_at_or_before(t),
        }
    }
}

fn from_unix(s: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(s).ok()
}

fn parse_rate(inner: &str) -> Result<u64, ScheduleError> {
    let mut parts = inner.split_whitespace();
    let (Some(value), Some(unit), None) = (parts.next(), parts.next(), parts.next()) else {
        return err(format!(
            "rate({inner}) needs a value and a unit, e.g. rate(5 minutes)"
        ));
    };
    let n: u64 = match value.parse() {
        Ok(n) if n > 0 => n,
        _ => {
            return err(format!(
                "rate({inner}): the value must be a positive whole number, got {value:?}"
            ));
        }
    };
    let (seconds, singular) = match unit {
        "minute" => (60, true),
        "minutes" => (60, false),
        "hour" => (3600, true),
        "hours" => (3600, false),
        "day" => (86_400, true),
        "days" => (86_400, false),
        _ => {
            return err(format!(
                "rate({inner}): the unit must be minute(s), hour(s) or day(s), got {unit:?}"
            ));
        }
    };
    if (n == 1) != singular {
        let want = if n == 1 {
            unit.trim_end_matches('s').to_string()
        } else {
            format!("{unit}s")
        };
        return err(format!(
            "rate({inner}): a value of {n} takes the unit {want:?}"
        ));
    }
    n.checked_mul(seconds)
        .filter(|s| *s <= 100 * 365 * 86_400)
        .ok_or_else(|| ScheduleError(format!("rate({inner}) is too long")))
}

fn parse_cron(inner: &str) -> Result<Cron, ScheduleError> {
    let fields: Vec<&str> = inner.split_whitespace().collect();
    if fields.len() != 6 {
        return err(format!(
            "cron({inner}) needs 6 fields (minutes hours day-of-month month day-of-week year), got {}",
            fields.len()
        ));
    }
    let minutes = numbers(fields[0], "minutes", 0, 59, &[])?;
    let hours = numbers(fields[1], "hours", 0, 23, &[])? as u32;
    let months = numbers(fields[3], "month", 1, 12, &MONTHS)? as u16;
    let years = years(fields[5])?;
    let days_of_month = day_of_month(fields[2])?;
    let days_of_week = day_of_week(fields[4])?;
    match (&days_of_month, &days_of_week) {
        (DayOfMonth::Any, DayOfWeek::Any) => {
            return err(format!(
                "cron({inner}): only one of day-of-month and day-of-week may be '?'"
            ));
        }
        (DayOfMonth::Any, _) | (_, DayOfWeek::Any) => {}
        _ => {
            return err(format!(
                "cron({inner}): one of day-of-month and day-of-week must be '?' (e.g. cron(0 12 * * ? *))"
            ));
        }
    }
    Ok(Cron {
        minutes,
        hours,
        days_of_month,
        months,
        days_of_week,
        years,
    })
}

/// One value: a number, or a name from `names` (index + `min`).
fn value(
    text: &str,
    field: &str,
    min: u32,
    max: u32,
    names: &[&str],
) -> Result<u32, ScheduleError> {
    let upper = text.to_ascii_uppercase();
    if let Some(i) = names.iter().position(|n| *n == upper) {
        return Ok(min + i as u32);
    }
    match text.parse::<u32>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => err(format!(
            "{field}: {text:?} is not a value from {min} to {max}{}",
            if names.is_empty() {
                String::new()
            } else {
                format!(" or {}-{}", names[0], names[names.len() - 1])
            }
        )),
    }
}

/// A field of values, ranges and steps as a set of bits (bit `v` for `v`).
fn numbers(
    text: &str,
    field: &str,
    min: u32,
    max: u32,
    names: &[&str],
) -> Result<u64, ScheduleError> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => match s.parse::<u32>() {
                Ok(s) if s > 0 => (r, Some(s)),
                _ => return err(format!("{field}: {part:?} needs a positive step after '/'")),
            },
            None => (part, None),
        };
        let (from, to) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (
                value(a, field, min, max, names)?,
                value(b, field, min, max, names)?,
            )
        } else if range.is_empty() {
            return err(format!("{field}: empty value in {text:?}"));
        } else {
            let v = value(range, field, min, max, names)?;
            // `5/15` runs from 5 to the end; a single value stays one.
            (v, if step.is_some() { max } else { v })
        };
        let step = step.unwrap_or(1);
        // A range may wrap around (`FRI-MON`, `22-2`).
        let span = if to >= from {
            to - from
        } else {
            max - from + 1 + to - min
        };
        let mut offset = 0;
        while offset <= span {
            let v = from + offset;
            let v = if v > max { v - (max - min + 1) } else { v };
            bits |= 1 << v;
            offset += step;
        }
    }
    Ok(bits)
}

fn years(text: &str) -> Result<[u64; 4], ScheduleError> {
    let mut bits = [0u64; 4];
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => match s.parse::<u32>() {
                Ok(s) if s > 0 => (r, s),
                _ => return err(format!("year: {part:?} needs a positive step after '/'")),
            },
            None => (part, 1),
        };
        let y = |t: &str| value(t, "year", FIRST_YEAR as u32, LAST_YEAR as u32, &[]);
        let (from, to) = if range == "*" {
            (FIRST_YEAR as u32, LAST_YEAR as u32)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (y(a)?, y(b)?);
            if a > b {
                return err(format!("year: {part:?} runs backwards"));
            }
            (a, b)
        } else {
            let v = y(range)?;
            (
                v,
                if part.contains('/') {
                    LAST_YEAR as u32
                } else {
                    v
                },
            )
        };
        let mut v = from;
        while v <= to {
            let i = (v - FIRST_YEAR as u32) as usize;
            bits[i / 64] |= 1 << (i % 64);
            v += step;
        }
    }
    Ok(bits)
}

fn day_of_month(text: &str) -> Result<DayOfMonth, ScheduleError> {
    match text {
        "?" => return Ok(DayOfMonth::Any),
        "L" => return Ok(DayOfMonth::Last),
        "LW" => return Ok(DayOfMonth::LastWeekday),
        _ => {}
    }
    if let Some(d) = text.strip_suffix('W') {
        return value(d, "day-of-month", 1, 31, &[]).map(|d| DayOfMonth::NearestWeekday(d as u8));
    }
    if text.contains(['L', 'W', '#', '?']) {
        return err(format!(
            "day-of-month: {text:?} mixes 'L', 'W' or '?' with other values"
        ));
    }
    numbers(text, "day-of-month", 1, 31, &[]).map(|b| DayOfMonth::Days(b as u32))
}

fn day_of_week(text: &str) -> Result<DayOfWeek, ScheduleError> {
    let day = |t: &str| value(t, "day-of-week", 1, 7, &WEEKDAYS).map(|d| d as u8);
    match text {
        "?" => return Ok(DayOfWeek::Any),
        "L" => return Ok(DayOfWeek::Days(1 << 7)),
        _ => {}
    }
    if let Some((d, n)) = text.split_once('#') {
        let n = match n.parse::<u8>() {
            Ok(n) if (1..=5).contains(&n) => n,
            _ => {
                return err(format!(
                    "day-of-week: {text:?}: the number after '#' must be 1 to 5"
                ));
            }
        };
        return Ok(DayOfWeek::Nth(day(d)?, n));
    }
    if let Some(d) = text.strip_suffix('L') {
        return Ok(DayOfWeek::Last(day(d)?));
    }
    if text.contains(['L', 'W', '?']) {
        return err(format!(
            "day-of-week: {text:?} mixes 'L' or '?' with other values"
        ));
    }
    if text.contains('/') {
        return err(format!("day-of-week: {text:?}: '/' is not allowed here"));
    }
    numbers(text, "day-of-week", 1, 7, &WEEKDAYS).map(|b| DayOfWeek::Days(b as u8))
}

fn days_in_month(date: Date) -> u8 {
    date.month().length(date.year())
}

/// The weekday closest to `day` in `date`'s month, never leaving it
/// (`None` when the month is shorter than `day`).
fn nearest_weekday(date: Date, day: u8) -> Option<u8> {
    let last = days_in_month(date);
    if day > last {
        return None;
    }
    let d = date.replace_day(day).ok()?;
    Some(match d.weekday() {
        time::Weekday::Saturday if day == 1 => 3,
        time::Weekday::Saturday => day - 1,
        time::Weekday::Sunday if day == last => day - 2,
        time::Weekday::Sunday => day + 1,
        _ => day,
    })
}

impl Cron {
    fn year_ok(&self, year: i32) -> bool {
        if !(FIRST_YEAR..=LAST_YEAR).contains(&year) {
            return false;
        }
        let i = (year - FIRST_YEAR) as usize;
        self.years[i / 64] & (1 << (i % 64)) != 0
    }

    fn month_ok(&self, month: Month) -> bool {
        self.months & (1 << u8::from(month)) != 0
    }

    fn day_ok(&self, date: Date) -> bool {
        let day = date.day();
        let last = days_in_month(date);
        let dom = match &self.days_of_month {
            DayOfMonth::Any => true,
            DayOfMonth::Days(bits) => bits & (1 << day) != 0,
            DayOfMonth::Last => day == last,
            DayOfMonth::LastWeekday => nearest_weekday(date, last) == Some(day),
            DayOfMonth::NearestWeekday(n) => nearest_weekday(date, *n) == Some(day),
        };
        let weekday = date.weekday().number_from_sunday();
        let dow = match &self.days_of_week {
            DayOfWeek::Any => true,
            DayOfWeek::Days(bits) => bits & (1 << weekday) != 0,
            DayOfWeek::Last(d) => weekday == *d && day + 7 > last,
            DayOfWeek::Nth(d, n) => weekday == *d && (day - 1) / 7 + 1 == *n,
        };
        dom && dow
    }

    /// The first (hour, minute) at or after `from` that the expression names.
    fn first_time_from(&self, from: Time) -> Option<Time> {
        for h in from.hour()..24 {
            if self.hours & (1 << h) == 0 {
                continue;
            }
            let start = if h == from.hour() { from.minute() } else { 0 };
            if let Some(m) = (start..60).find(|m| self.minutes & (1 << m) != 0) {
                return Time::from_hms(h, m, 0).ok();
            }
        }
        None
    }

    /// The last (hour, minute) at or before `until` that the expression names.
    fn last_time_until(&self, until: Time) -> Option<Time> {
        for h in (0..=until.hour()).rev() {
            if self.hours & (1 << h) == 0 {
                continue;
            }
            let end = if h == until.hour() {
                until.minute()
            } else {
                59
            };
            if let Some(m) = (0..=end).rev().find(|m| self.minutes & (1 << m) != 0) {
                return Time::from_hms(h, m, 0).ok();
            }
        }
        None
    }

    fn next_after(&self, t: OffsetDateTime) -> Option<OffsetDateTime> {
        // The next whole minute after `t`.
        let start = t.replace_second(0).ok()?.replace_nanosecond(0).ok()? + time::Duration::MINUTE;
        let mut date = start.date();
        let mut from = start.time();
        loop {
            if date.year() > LAST_YEAR {
                return None;
            }
            if !self.year_ok(date.year()) {
                date = Date::from_calendar_date(date.year() + 1, Month::January, 1).ok()?;
                from = Time::MIDNIGHT;
                continue;
            }
            if !self.month_ok(date.month()) {
                let (y, m) = match date.month() {
                    Month::December => (date.year() + 1, Month::January),
                    m => (date.year(), m.next()),
                };
                date = Date::from_calendar_date(y, m, 1).ok()?;
                from = Time::MIDNIGHT;
                continue;
            }
            if self.day_ok(date)
                && let Some(at) = self.first_time_from(from)
            {
                return Some(date.with_time(at).assume_utc());
            }
            date = date.next_day()?;
            from = Time::MIDNIGHT;
        }
    }

    fn latest_at_or_before(&self, t: OffsetDateTime) -> Option<OffsetDateTime> {
        let end_of_day = Time::from_hms(23, 59, 0).ok()?;
        let mut date = t.date();
        let mut until = t.time();
        loop {
            if date.year() < FIRST_YEAR {
                return None;
            }
            if !self.year_ok(date.year()) {
                date = Date::from_calendar_date(date.year() - 1, Month::December, 31).ok()?;
                until = end_of_day;
                continue;
            }
            if !self.month_ok(date.month()) {
                // The last day of the month before.
                date = date.replace_day(1).ok()?.previous_day()?;
                until = end_of_day;
                continue;
            }
            if self.day_ok(date)
                && let Some(at) = self.last_time_until(until)
            {
                return Some(date.with_time(at).assume_utc());
            }
            date = date.previous_day()?;
            until = end_of_day;
        }
    }
}

/// A time as EventBridge writes it: RFC 3339, UTC, `Z`, whole seconds.
pub fn event_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn next(expr: &str, t: OffsetDateTime) -> OffsetDateTime {
        Schedule::parse(expr)
            .expect("valid")
            .next_after(t)
            .expect("a next tick")
    }

    fn latest(expr: &str, t: OffsetDateTime) -> OffsetDateTime {
        Schedule::parse(expr)
            .expect("valid")
            .latest_at_or_before(t)
            .expect("a tick")
    }

    fn error(expr: &str) -> String {
        Schedule::parse(expr).expect_err(expr).to_string()
    }

    #[test]
    fn rates_parse_with_aws_singular_and_plural() {
        assert_eq!(Schedule::parse("rate(1 minute)"), Ok(Schedule::Rate(60)));
        assert_eq!(Schedule::parse("rate(5 minutes)"), Ok(Schedule::Rate(300)));
        assert_eq!(Schedule::parse("rate(1 hour)"), Ok(Schedule::Rate(3600)));
        assert_eq!(Schedule::parse("rate(2 days)"), Ok(Schedule::Rate(172_800)));
        assert_eq!(
            error("rate(1 minutes)"),
            "rate(1 minutes): a value of 1 takes the unit \"minute\""
        );
        assert_eq!(
            error("rate(5 minute)"),
            "rate(5 minute): a value of 5 takes the unit \"minutes\""
        );
        assert_eq!(
            error("rate(0 minutes)"),
            "rate(0 minutes): the value must be a positive whole number, got \"0\""
        );
        assert_eq!(
            error("rate(5 seconds)"),
            "rate(5 seconds): the unit must be minute(s), hour(s) or day(s), got \"seconds\""
        );
        assert_eq!(
            error("rate(5)"),
            "rate(5) needs a value and a unit, e.g. rate(5 minutes)"
        );
        assert!(error("every 5 minutes").contains("neither rate(...) nor cron(...)"));
        assert!(error("rate(-1 minute)").contains("positive whole number"));
    }

    #[test]
    fn rate_ticks_fall_on_multiples_of_the_period() {
        let t = datetime!(2026-03-04 10:07:30 UTC);
        assert_eq!(next("rate(5 minutes)", t), datetime!(2026-03-04 10:10 UTC));
        assert_eq!(
            latest("rate(5 minutes)", t),
            datetime!(2026-03-04 10:05 UTC)
        );
        assert_eq!(next("rate(1 day)", t), datetime!(2026-03-05 0:00 UTC));
        // A tick is not after itself, and is at or before itself.
        let tick = datetime!(2026-03-04 10:10 UTC);
        assert_eq!(
            next("rate(5 minutes)", tick),
            datetime!(2026-03-04 10:15 UTC)
        );
        assert_eq!(latest("rate(5 minutes)", tick), tick);
    }

    #[test]
    fn cron_parses_every_documented_form() {
        for ok in [
            "cron(0 12 * * ? *)",
            "cron(15 10 ? * 6L 2019-2022)",
            "cron(0 18 ? * MON-FRI *)",
            "cron(0 8 1 * ? *)",
            "cron(0/15 * * * ? *)",
            "cron(0/10 * ? * MON-FRI *)",
            "cron(0/5 8-17 ? * MON-FRI *)",
            "cron(0 9 ? * 2#1 *)",
            "cron(0 0 L * ? *)",
            "cron(0 0 LW * ? *)",
            "cron(0 0 15W * ? *)",
            "cron(30 2 ? JAN,JUL SUN *)",
            "cron(*/5 22-2 ? * FRI-MON *)",
            "cron(0 0 1 */3 ? 2030/2)",
            "cron(0 0 ? * L *)",
        ] {
            assert!(
                Schedule::parse(ok).is_ok(),
                "{ok}: {:?}",
                Schedule::parse(ok)
            );
        }
    }

    #[test]
    fn cron_errors_say_what_is_wrong() {
        assert_eq!(
            error("cron(0 12 * * *)"),
            "cron(0 12 * * *) needs 6 fields (minutes hours day-of-month month day-of-week year), got 5"
        );
        assert_eq!(
            error("cron(0 12 * * * *)"),
            "cron(0 12 * * * *): one of day-of-month and day-of-week must be '?' (e.g. cron(0 12 * * ? *))"
        );
        assert_eq!(
            error("cron(0 12 ? * ? *)"),
            "cron(0 12 ? * ? *): only one of day-of-month and day-of-week may be '?'"
        );
        assert_eq!(
            error("cron(60 12 * * ? *)"),
            "minutes: \"60\" is not a value from 0 to 59"
        );
        assert_eq!(
            error("cron(0 24 * * ? *)"),
            "hours: \"24\" is not a value from 0 to 23"
        );
        assert_eq!(
            error("cron(0 0 * FOO ? *)"),
            "month: \"FOO\" is not a value from 1 to 12 or JAN-DEC"
        );
        assert_eq!(
            error("cron(0 0 ? * 8 *)"),
            "day-of-week: \"8\" is not a value from 1 to 7 or SUN-SAT"
        );
        assert_eq!(
            error("cron(0 0 ? * 2#6 *)"),
            "day-of-week: \"2#6\": the number after '#' must be 1 to 5"
        );
        assert_eq!(
            error("cron(0 0 ? * */2 *)"),
            "day-of-week: \"*/2\": '/' is not allowed here"
        );
        assert_eq!(
            error("cron(0/0 * * * ? *)"),
            "minutes: \"0/0\" needs a positive step after '/'"
        );
        assert_eq!(
            error("cron(0 0 * * ? 2200)"),
            "year: \"2200\" is not a value from 1970 to 2199"
        );
        assert_eq!(
            error("cron(0 0 32 * ? *)"),
            "day-of-month: \"32\" is not a value from 1 to 31"
        );
        assert!(error("cron(0 0 L,5 * ? *)").contains("mixes"));
        assert!(error("cron(0 0 1,,2 * ? *)").contains("empty value"));
    }

    #[test]
    fn cron_steps_ranges_and_names() {
        let t = datetime!(2026-03-04 10:07:30 UTC); // a Wednesday
        assert_eq!(
            next("cron(0/15 * * * ? *)", t),
            datetime!(2026-03-04 10:15 UTC)
        );
        assert_eq!(
            next("cron(10-40/10 * * * ? *)", t),
            datetime!(2026-03-04 10:10 UTC)
        );
        assert_eq!(
            next("cron(0 12 * * ? *)", t),
            datetime!(2026-03-04 12:00 UTC)
        );
        assert_eq!(
            latest("cron(0 12 * * ? *)", t),
            datetime!(2026-03-03 12:00 UTC)
        );
        // Weekends only, with a wrapping range of hours.
        assert_eq!(
            next("cron(0 23-1 ? * SAT,SUN *)", t),
            datetime!(2026-03-07 0:00 UTC)
        );
        assert_eq!(
            next("cron(0 18 ? * MON-FRI *)", t),
            datetime!(2026-03-04 18:00 UTC)
        );
        assert_eq!(
            next("cron(0 0 ? * FRI-MON *)", t),
            datetime!(2026-03-06 0:00 UTC)
        );
        // The next whole minute after a tick, never the tick itself.
        let tick = datetime!(2026-03-04 10:15 UTC);
        assert_eq!(
            next("cron(* * * * ? *)", tick),
            datetime!(2026-03-04 10:16 UTC)
        );
        assert_eq!(latest("cron(* * * * ? *)", tick), tick);
    }

    #[test]
    fn cron_crosses_month_and_year_ends() {
        let t = datetime!(2026-01-31 12:30 UTC);
        assert_eq!(
            next("cron(0 8 31 * ? *)", t),
            datetime!(2026-03-31 8:00 UTC)
        );
        assert_eq!(next("cron(0 0 L * ? *)", t), datetime!(2026-02-28 0:00 UTC));
        assert_eq!(
            next("cron(0 0 L * ? *)", datetime!(2026-02-01 0:00 UTC)),
            datetime!(2026-02-28 0:00 UTC)
        );
        assert_eq!(
            next("cron(59 23 31 DEC ? *)", datetime!(2026-12-31 23:59 UTC)),
            datetime!(2027-12-31 23:59 UTC)
        );
        assert_eq!(
            latest("cron(0 8 31 * ? *)", t),
            datetime!(2026-01-31 8:00 UTC)
        );
        assert_eq!(
            latest("cron(0 8 31 * ? *)", datetime!(2026-04-15 0:00 UTC)),
            datetime!(2026-03-31 8:00 UTC)
        );
        // Years.
        assert_eq!(
            next("cron(0 0 1 1 ? 2030/2)", t),
            datetime!(2030-01-01 0:00 UTC)
        );
        assert!(
            Schedule::parse("cron(0 0 1 1 ? 2020)")
                .unwrap()
                .next_after(t)
                .is_none()
        );
        assert_eq!(
            latest("cron(0 0 1 1 ? 2020)", t),
            datetime!(2020-01-01 0:00 UTC)
        );
    }

    #[test]
    fn cron_knows_leap_years() {
        let t = datetime!(2026-03-01 0:00 UTC);
        assert_eq!(
            next("cron(0 0 29 2 ? *)", t),
            datetime!(2028-02-29 0:00 UTC)
        );
        assert_eq!(
            latest("cron(0 0 29 2 ? *)", t),
            datetime!(2024-02-29 0:00 UTC)
        );
        assert_eq!(next("cron(0 0 L 2 ? *)", t), datetime!(2027-02-28 0:00 UTC));
        assert_eq!(
            next("cron(0 0 L 2 ? *)", datetime!(2027-03-01 0:00 UTC)),
            datetime!(2028-02-29 0:00 UTC)
        );
        // 2100 is not a leap year.
        assert_eq!(
            next("cron(0 0 29 2 ? 2097-2199)", t),
            datetime!(2104-02-29 0:00 UTC)
        );
        // A day that never comes.
        assert!(
            Schedule::parse("cron(0 0 30 2 ? *)")
                .unwrap()
                .next_after(t)
                .is_none()
        );
    }

    #[test]
    fn day_of_week_rules() {
        let t = datetime!(2026-03-01 0:00 UTC); // a Sunday
        // 1 is Sunday, 7 Saturday; the day-of-month is '?'.
        assert_eq!(next("cron(0 9 ? * 1 *)", t), datetime!(2026-03-01 9:00 UTC));
        assert_eq!(next("cron(0 9 ? * 7 *)", t), datetime!(2026-03-07 9:00 UTC));
        // The first Monday, the third Friday, the last Friday of the month.
        assert_eq!(
            next("cron(0 9 ? * 2#1 *)", t),
            datetime!(2026-03-02 9:00 UTC)
        );
        assert_eq!(
            next("cron(0 9 ? * FRI#3 *)", t),
            datetime!(2026-03-20 9:00 UTC)
        );
        assert_eq!(
            next("cron(0 9 ? * 6L *)", t),
            datetime!(2026-03-27 9:00 UTC)
        );
        // The fifth Monday: not in April 2026, so June.
        assert_eq!(
            next("cron(0 9 ? * 2#5 *)", datetime!(2026-04-01 0:00 UTC)),
            datetime!(2026-06-29 9:00 UTC)
        );
        // 'L' alone: the last day of the week, Saturday.
        assert_eq!(next("cron(0 9 ? * L *)", t), datetime!(2026-03-07 9:00 UTC));
        // Day-of-month with '?' in day-of-week: every 1st, whatever its weekday.
        assert_eq!(next("cron(0 8 1 * ? *)", t), datetime!(2026-03-01 8:00 UTC));
    }

    #[test]
    fn nearest_weekday_stays_in_the_month() {
        // 2026-08-01 is a Saturday: 1W is Monday the 3rd, not July 31st.
        let aug = datetime!(2026-07-31 12:00 UTC);
        assert_eq!(
            next("cron(0 0 1W * ? *)", aug),
            datetime!(2026-08-03 0:00 UTC)
        );
        // 2026-03-15 is a Sunday: 15W is Monday the 16th.
        let march = datetime!(2026-03-01 0:00 UTC);
        assert_eq!(
            next("cron(0 0 15W * ? *)", march),
            datetime!(2026-03-16 0:00 UTC)
        );
        // 2026-05-31 is a Sunday, the month's last day: LW is Friday the 29th.
        assert_eq!(
            next("cron(0 0 LW * ? *)", datetime!(2026-05-01 0:00 UTC)),
            datetime!(2026-05-29 0:00 UTC)
        );
        // 31W in a 30-day month does not fire.
        assert_eq!(
            next("cron(0 0 31W * ? *)", datetime!(2026-04-01 0:00 UTC)),
            datetime!(2026-05-29 0:00 UTC)
        );
    }

    #[test]
    fn event_time_is_whole_seconds_with_z() {
        assert_eq!(
            event_time(datetime!(2026-03-04 10:07:30.25 +02:00)),
            "2026-03-04T08:07:30Z"
        );
    }
}
