//! The two load drivers: a closed loop of concurrent callers and an open loop
//! of scheduled arrivals.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::invoke::{InvocationRecord, Invoker};
use crate::live::LiveStats;
use crate::profile::Profile;
use crate::workload::FunctionMix;

/// How often the closed loop re-reads the concurrency profile.
const CLOSED_LOOP_TICK: Duration = Duration::from_millis(10);

/// What every request needs.
#[derive(Debug)]
pub struct Driver {
    /// Sends the requests.
    pub invoker: Invoker,
    /// Which function each request goes to.
    pub mix: FunctionMix,
    /// The event every request carries.
    pub event: Bytes,
    /// Start of the run; all times are offsets from it.
    pub start: Instant,
    /// Counters and records.
    pub stats: Arc<LiveStats>,
    /// Requests scheduled so far (feeds `mix`).
    pub sequence: AtomicU64,
}

impl Driver {
    async fn invoke_next(&self, intended: Duration) -> InvocationRecord {
        let function = self.next_function();
        self.stats.sent();
        self.invoker
            .invoke(function, self.event.clone(), self.start, intended)
            .await
    }

    fn next_function(&self) -> usize {
        let function = self.mix.pick(self.sequence.fetch_add(1, Ordering::Relaxed));
        self.stats.attempt(function);
        function
    }
}

/// Closed loop: `profile` gives the number of concurrent callers over time.
/// Each caller sends its next request as soon as the previous one is answered,
/// so at most `level` requests are ever in flight. Returns when the profile
/// ends or `cancel` fires, after the callers' last requests finished.
pub async fn closed_loop(driver: Arc<Driver>, profile: &Profile, cancel: CancellationToken) {
    let callers = profile.peak().ceil() as usize;
    let (target_tx, target_rx) = watch::channel(0usize);
    let done = cancel.child_token();
    let tracker = TaskTracker::new();
    for index in 0..callers {
        let driver = driver.clone();
        let mut target = target_rx.clone();
        let done = done.clone();
        tracker.spawn(async move {
            loop {
                if done.is_cancelled() {
                    break;
                }
                if index < *target.borrow_and_update() {
                    let intended = driver.start.elapsed();
                    let record = driver.invoke_next(intended).await;
                    driver.stats.finish(record);
                } else {
                    tokio::select! {
                        changed = target.changed() => if changed.is_err() { break },
                        () = done.cancelled() => break,
                    }
                }
            }
        });
    }
    tracker.close();

    let mut tick = tokio::time::interval(CLOSED_LOOP_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cancel.cancelled() => break,
        }
        let Some(level) = profile.level_at(driver.start.elapsed()) else {
            break;
        };
        let level = level.round() as usize;
        target_tx.send_if_modified(|current| {
            let changed = *current != level;
            *current = level;
            changed
        });
    }
    done.cancel();
    tracker.wait().await;
}

/// Open loop: `profile` gives the arrival rate (requests per second) over time.
/// Requests go out at their intended send times whether or not earlier ones
/// were answered; latency counts from the intended time, so a stalled server
/// shows up as latency, not as a lower offered rate. When `max_in_flight`
/// requests are outstanding, a due request is recorded as dropped by the
/// client instead of being sent. Returns when the profile ends or `cancel`
/// fires, after every sent request finished.
pub async fn open_loop(
    driver: Arc<Driver>,
    profile: &Profile,
    max_in_flight: usize,
    cancel: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let tracker = TaskTracker::new();
    for intended in profile.arrivals() {
        tokio::select! {
            () = tokio::time::sleep_until(driver.start + intended) => {}
            () = cancel.cancelled() => break,
        }
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let driver = driver.clone();
                tracker.spawn(async move {
                    let record = driver.invoke_next(intended).await;
                    drop(permit);
                    driver.stats.finish(record);
                });
            }
            Err(_) => {
                let function = driver.next_function();
                driver
                    .stats
                    .finish(InvocationRecord::dropped(function, intended));
            }
        }
    }
    tracker.close();
    tracker.wait().await;
}
