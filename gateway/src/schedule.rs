//! The schedule source: every gateway runs this loop over the schedule
//! triggers of its functions, and the store decides which tick is fired.
//!
//! For each schedule (a function's trigger index and expression, its
//! key in the store), on each pass:
//! - the tick due is the latest at or before now;
//! - a schedule the store has never seen starts now: the tick due is
//!   recorded as its last, unfired (no tick before the schedule existed
//!   is fired);
//! - a tick due after the last one recorded is fired: its Scheduled Event
//!   is stored as an async event and the tick recorded (one write on a
//!   gateway's own store; on JetStream the event first, then the tick,
//!   with the event's `Nats-Msg-Id` one per schedule and tick, so a second
//!   gateway firing the same tick stores nothing more).
//!
//! After a restart (or an outage of the store) only the latest missed
//! tick is due: it is fired once, late, as EventBridge does not replay a
//! backlog either; a tick already recorded is not fired again.
//!
//! The time comes from a [`Clock`], so tests can run a minute in a second.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::events::schedule::{request_id, schedule_key, scheduled_event};
use crate::gateway::Gateway;

/// Where schedules read the time.
pub trait Clock: Send + Sync + 'static {
    /// Now, in schedule time.
    fn now(&self) -> OffsetDateTime;
    /// Real time from now until the schedule time `at`.
    fn real_until(&self, at: OffsetDateTime) -> Duration;
}

/// The system's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn real_until(&self, at: OffsetDateTime) -> Duration {
        (at - OffsetDateTime::now_utc())
            .try_into()
            .unwrap_or(Duration::ZERO)
    }
}

/// For tests only: schedule time runs `scale` times faster than real time,
/// from 2026-01-01T00:00:00Z (so every gateway with the same scale reads
/// the same time; with 60, a schedule minute lasts a real second).
pub struct ScaledClock {
    scale: u32,
}

/// Where a [`ScaledClock`]'s time starts running faster.
const SCALED_ORIGIN: OffsetDateTime = time::macros::datetime!(2026-01-01 0:00 UTC);

impl ScaledClock {
    /// A clock `scale` (at least 1) times faster than real time.
    pub fn new(scale: u32) -> Self {
        ScaledClock {
            scale: scale.max(1),
        }
    }
}

impl Clock for ScaledClock {
    fn now(&self) -> OffsetDateTime {
        let real = OffsetDateTime::from(SystemTime::now());
        SCALED_ORIGIN + (real - SCALED_ORIGIN) * self.scale
    }

    fn real_until(&self, at: OffsetDateTime) -> Duration {
        (at - self.now())
            .try_into()
            .map(|d: Duration| d / self.scale)
            .unwrap_or(Duration::ZERO)
    }
}

/// How long a pass waits at most (new and changed functions are seen then).
const MAX_WAIT: Duration = Duration::from_secs(1);

/// Fires the schedules of `gateway`'s functions until `shutdown`.
pub async fn run(gateway: Arc<Gateway>, clock: Arc<dyn Clock>, shutdown: CancellationToken) {
    // The last tick known per schedule key (Unix seconds).
    let mut known: HashMap<String, i64> = HashMap::new();
    loop {
        let now = clock.now();
        let mut wait = MAX_WAIT;
        let mut seen = std::collections::HashSet::new();
        for entry in gateway.registry().all() {
            let spec = entry.spec();
            for (index, expression, schedule) in spec.schedules() {
                let key = schedule_key(entry.name(), index, &expression);
                seen.insert(key.clone());
                if let Some(next) = schedule.next_after(now) {
                    wait = wait.min(clock.real_until(next));
                }
                let Some(due) = schedule.latest_at_or_before(now) else {
                    continue;
                };
                let due_s = due.unix_timestamp();
                if known.get(&key).is_some_and(|last| *last >= due_s) {
                    continue;
                }
                // Due, or not seen yet: the store says what was fired.
                let store = gateway.event_store();
                let last = match store.last_tick(&key).await {
                    Ok(last) => last,
                    Err(e) => {
                        tracing::warn!(function = entry.name(), schedule = %expression, error = %e, "cannot read the schedule's last tick; trying again");
                        continue;
                    }
                };
                match last {
                    Some(last) if last >= due_s => {
                        known.insert(key, last);
                    }
                    None => match store.record_tick(key.clone(), due_s).await {
                        Ok(()) => {
                            tracing::info!(function = entry.name(), schedule = %expression, "schedule started");
                            known.insert(key, due_s);
                        }
                        Err(e) => {
                            tracing::warn!(function = entry.name(), schedule = %expression, error = %e, "cannot record the schedule's start; trying again")
                        }
                    },
                    Some(last) => {
                        let id = request_id(&key, due);
                        let late = schedule
                            .next_after(OffsetDateTime::from_unix_timestamp(last).unwrap_or(due))
                            .is_some_and(|first_missed| first_missed < due);
                        let payload = scheduled_event(entry.name(), index, &id, due).into();
                        match gateway
                            .fire_tick(&entry, payload, id.clone(), key.clone(), due_s)
                            .await
                        {
                            Ok(()) => {
                                tracing::info!(function = entry.name(), schedule = %expression, request_id = %id, tick = due_s, late, "schedule fired");
                                known.insert(key, due_s);
                            }
                            Err(e) => {
                                tracing::warn!(function = entry.name(), schedule = %expression, error = %e, "cannot fire the schedule's tick; trying again")
                            }
                        }
                    }
                }
            }
        }
        // Schedules removed or changed are forgotten here (their last tick
        // stays in the store).
        known.retain(|k, _| seen.contains(k));
        tokio::select! {
            _ = tokio::time::sleep(wait.max(Duration::from_millis(5))) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scaled_clock_runs_faster_from_a_shared_origin() {
        let clock = ScaledClock::new(60);
        let a = clock.now();
        let real = OffsetDateTime::now_utc();
        // 60 times the real time since the origin.
        let expected = SCALED_ORIGIN + (real - SCALED_ORIGIN) * 60_i32;
        assert!(
            (expected - a).abs() < time::Duration::seconds(60),
            "{a} {expected}"
        );
        let until = clock.real_until(a + time::Duration::minutes(1));
        assert!(until <= Duration::from_secs(1), "{until:?}");
        assert_eq!(
            clock.real_until(a - time::Duration::minutes(1)),
            Duration::ZERO
        );
    }
}
