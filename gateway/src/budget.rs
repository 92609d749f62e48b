//! The memory budget: one count of the bytes the gateway holds for callers
//! (sync payloads in flight, async events queued or waiting for a retry, the
//! S3/CloudEvents fan-out, dead letters, dead-letter listings).
//!
//! Bytes are reserved before they are materialised (by `Content-Length`, by
//! the limit being read, or by the exact size of an event about to be built)
//! and a [`Reservation`] gives them back when it is dropped. Past the budget
//! a reservation is refused, and the caller answers 429 rather than grow
//! toward the pod's memory limit. The held bytes never exceed the budget.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::error::GatewayError;

/// The default budget: 192 of the gateway pod's 512 MiB. Measured, the
/// process grows by up to about 1.4 times what it holds (allocator slack,
/// HTTP buffers of many connections at once), on top of about 25 MiB at
/// rest: 192 MiB stays near 300 MiB, leaving room for what is not counted
/// (responses from environments, requests being parsed).
pub const DEFAULT_MEMORY_BUDGET_MIB: usize = 192;

/// How often a reservation waiting for room looks again.
const ROOM_POLL: Duration = Duration::from_millis(10);

/// What a reservation holds bytes for (a bounded set, used as a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A synchronous payload, from reading it to the end of its invocation.
    Sync,
    /// An async event, from acceptance through its retries.
    Async,
    /// An S3 notification or CloudEvents request being fanned out.
    FanOut,
    /// A dead letter kept for `/v1/dead-letters`.
    DeadLetter,
    /// A page of dead letters being answered.
    Listing,
}

impl Purpose {
    const ALL: [Purpose; 5] = [
        Purpose::Sync,
        Purpose::Async,
        Purpose::FanOut,
        Purpose::DeadLetter,
        Purpose::Listing,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Sync => "sync",
            Purpose::Async => "async",
            Purpose::FanOut => "fan_out",
            Purpose::DeadLetter => "dead_letter",
            Purpose::Listing => "listing",
        }
    }
}

/// A reservation did not fit in the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{requested} bytes for {purpose:?} do not fit in the memory budget")]
pub struct BudgetExceeded {
    /// Bytes asked for.
    pub requested: usize,
    /// What for.
    pub purpose: Purpose,
}

impl From<BudgetExceeded> for GatewayError {
    fn from(_: BudgetExceeded) -> Self {
        GatewayError::Throttled {
            retry_after: Duration::from_secs(1),
            reason: "MemoryBudgetExceeded",
        }
    }
}

struct Inner {
    capacity: usize,
    held: AtomicUsize,
    peak: AtomicUsize,
    registry: Registry,
    held_by: IntGaugeVec,
    peak_gauge: IntGauge,
    reservations: IntCounterVec,
    refusals: IntCounterVec,
}

impl Inner {
    /// Adds `bytes` to the held count unless that would pass the capacity.
    fn take(&self, bytes: usize) -> bool {
        let mut held = self.held.load(Ordering::Relaxed);
        loop {
            let Some(next) = held.checked_add(bytes).filter(|n| *n <= self.capacity) else {
                return false;
            };
            match self
                .held
                .compare_exchange_weak(held, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    let before = self.peak.fetch_max(next, Ordering::Relaxed);
                    if next > before {
                        self.peak_gauge.set(gauge_value(next));
                    }
                    return true;
                }
                Err(now) => held = now,
            }
        }
    }

    fn give_back(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::AcqRel);
    }

    fn held_gauge(&self, purpose: Purpose) -> IntGauge {
        self.held_by.with_label_values(&[purpose.as_str()])
    }
}

fn gauge_value(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// The gateway's memory budget; cheap to clone (one shared count).
#[derive(Clone)]
pub struct MemoryBudget {
    inner: Arc<Inner>,
}

impl MemoryBudget {
    /// A budget of `capacity` bytes, with its metrics
    /// (`porchlight_gateway_memory_budget_*`).
    pub fn new(capacity: usize) -> Self {
        let registry = Registry::new();
        let size = IntGauge::new(
            "porchlight_gateway_memory_budget_bytes",
            "Bytes the gateway may hold for payloads, events and dead letters",
        )
        .expect("valid metric");
        size.set(gauge_value(capacity));
        let peak_gauge = IntGauge::new(
            "porchlight_gateway_memory_budget_held_peak_bytes",
            "Most bytes held against the memory budget at once since start",
        )
        .expect("valid metric");
        let held_by = IntGaugeVec::new(
            Opts::new(
                "porchlight_gateway_memory_budget_held_bytes",
                "Bytes held against the memory budget, by purpose",
            ),
            &["purpose"],
        )
        .expect("valid metric");
        let reservations = IntCounterVec::new(
            Opts::new(
                "porchlight_gateway_memory_budget_reservations_total",
                "Reservations granted by the memory budget, by purpose",
            ),
            &["purpose"],
        )
        .expect("valid metric");
        let refusals = IntCounterVec::new(
            Opts::new(
                "porchlight_gateway_memory_budget_refusals_total",
                "Reservations refused because the memory budget was spent, by purpose",
            ),
            &["purpose"],
        )
        .expect("valid metric");
        for purpose in Purpose::ALL {
            let label = [purpose.as_str()];
            held_by.with_label_values(&label);
            reservations.with_label_values(&label);
            refusals.with_label_values(&label);
        }
        for c in [
            Box::new(size) as Box<dyn prometheus::core::Collector>,
            Box::new(peak_gauge.clone()),
            Box::new(held_by.clone()),
            Box::new(reservations.clone()),
            Box::new(refusals.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        MemoryBudget {
            inner: Arc::new(Inner {
                capacity,
                held: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                registry,
                held_by,
                peak_gauge,
                reservations,
                refusals,
            }),
        }
    }

    /// The budget's size in bytes.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.inner.held.load(Ordering::Acquire)
    }

    /// The most bytes held at once since start.
    pub fn peak(&self) -> usize {
        self.inner.peak.load(Ordering::Relaxed)
    }

    /// Reserves `bytes` for `purpose`, or refuses when they do not fit.
    pub fn try_reserve(
        &self,
        bytes: usize,
        purpose: Purpose,
    ) -> Result<Reservation, BudgetExceeded> {
        let label = [purpose.as_str()];
        if !self.inner.take(bytes) {
            self.inner.refusals.with_label_values(&label).inc();
            return Err(BudgetExceeded {
                requested: bytes,
                purpose,
            });
        }
        self.inner.reservations.with_label_values(&label).inc();
        self.inner.held_gauge(purpose).add(gauge_value(bytes));
        Ok(Reservation {
            inner: self.inner.clone(),
            bytes,
            purpose,
        })
    }

    /// Reserves `bytes` for `purpose`, waiting up to `wait` for room while
    /// other callers give theirs back (an answer being sent, an event done);
    /// one refusal is counted when none came.
    pub async fn reserve_within(
        &self,
        bytes: usize,
        purpose: Purpose,
        wait: Duration,
    ) -> Result<Reservation, BudgetExceeded> {
        let deadline = tokio::time::Instant::now() + wait;
        while !self.inner.take(bytes) {
            if bytes > self.inner.capacity || tokio::time::Instant::now() >= deadline {
                self.inner
                    .refusals
                    .with_label_values(&[purpose.as_str()])
                    .inc();
                return Err(BudgetExceeded {
                    requested: bytes,
                    purpose,
                });
            }
            tokio::time::sleep(ROOM_POLL).await;
        }
        self.inner
            .reservations
            .with_label_values(&[purpose.as_str()])
            .inc();
        self.inner.held_gauge(purpose).add(gauge_value(bytes));
        Ok(Reservation {
            inner: self.inner.clone(),
            bytes,
            purpose,
        })
    }

    /// The budget's metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if TextEncoder::new()
            .encode(&self.inner.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Bytes held against the budget; given back when dropped.
pub struct Reservation {
    inner: Arc<Inner>,
    bytes: usize,
    purpose: Purpose,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("bytes", &self.bytes)
            .field("purpose", &self.purpose)
            .finish()
    }
}

impl Reservation {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// What the bytes are held for.
    pub fn purpose(&self) -> Purpose {
        self.purpose
    }

    /// Holds `bytes` instead: giving back always works, growing only when
    /// the difference fits (otherwise nothing changes).
    pub fn try_resize(&mut self, bytes: usize) -> Result<(), BudgetExceeded> {
        if bytes <= self.bytes {
            let freed = self.bytes - bytes;
            self.inner.give_back(freed);
            self.inner.held_gauge(self.purpose).sub(gauge_value(freed));
        } else {
            let more = bytes - self.bytes;
            if !self.inner.take(more) {
                self.inner
                    .refusals
                    .with_label_values(&[self.purpose.as_str()])
                    .inc();
                return Err(BudgetExceeded {
                    requested: more,
                    purpose: self.purpose,
                });
            }
            self.inner.held_gauge(self.purpose).add(gauge_value(more));
        }
        self.bytes = bytes;
        Ok(())
    }

    /// Gives back what is held beyond `bytes` (the real size, once known).
    pub fn shrink_to(&mut self, bytes: usize) {
        if bytes < self.bytes {
            let _ = self.try_resize(bytes);
        }
    }

    /// The same bytes, now held for another purpose.
    pub fn repurpose(mut self, purpose: Purpose) -> Reservation {
        let bytes = gauge_value(self.bytes);
        self.inner.held_gauge(self.purpose).sub(bytes);
        self.inner.held_gauge(purpose).add(bytes);
        self.purpose = purpose;
        self
    }
}

/// A reservation shared by the clones of what it holds (an answer kept by a
/// result and by the body sending it); given back when the last clone goes.
#[derive(Clone, Default)]
pub struct SharedHold(Option<Arc<Reservation>>);

impl SharedHold {
    /// Shares `held`.
    pub fn new(held: Reservation) -> Self {
        SharedHold(Some(Arc::new(held)))
    }

    /// Bytes held (0 when nothing is).
    pub fn bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |r| r.bytes())
    }
}

impl std::fmt::Debug for SharedHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedHold({} bytes)", self.bytes())
    }
}

/// Two holds are alike when they hold as many bytes (what they hold is the
/// same budget's).
impl PartialEq for SharedHold {
    fn eq(&self, other: &Self) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.inner.give_back(self.bytes);
        self.inner
            .held_gauge(self.purpose)
            .sub(gauge_value(self.bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_refused_past_the_budget_and_given_back_on_drop() {
        let budget = MemoryBudget::new(100);
        let a = budget.try_reserve(60, Purpose::Sync).expect("fits");
        let refused = budget.try_reserve(41, Purpose::Async).expect_err("full");
        assert_eq!(refused.requested, 41);
        let mut b = budget
            .try_reserve(40, Purpose::Async)
            .expect("fits exactly");
        assert_eq!(budget.held(), 100);
        assert!(b.try_resize(41).is_err(), "growing past the budget fails");
        assert_eq!(b.bytes(), 40, "a refused resize changes nothing");
        b.shrink_to(10);
        assert_eq!(budget.held(), 70);
        let b = b.repurpose(Purpose::DeadLetter);
        drop(a);
        assert_eq!(budget.held(), 10);
        drop(b);
        assert_eq!(budget.held(), 0);
        assert_eq!(budget.peak(), 100);
        let text = budget.render();
        assert!(text.contains("porchlight_gateway_memory_budget_bytes 100"));
        assert!(text.contains("porchlight_gateway_memory_budget_held_peak_bytes 100"));
        assert!(
            text.contains("porchlight_gateway_memory_budget_refusals_total{purpose=\"async\"} 2")
        );
        assert!(
            text.contains(
                "porchlight_gateway_memory_budget_reservations_total{purpose=\"sync\"} 1"
            )
        );
        assert!(
            text.contains("porchlight_gateway_memory_budget_held_bytes{purpose=\"dead_letter\"} 0")
        );
    }

    #[tokio::test]
    async fn a_reservation_waits_for_room_within_its_bound() {
        let budget = MemoryBudget::new(100);
        let first = budget.try_reserve(80, Purpose::Sync).expect("fits");
        let wait = Duration::from_millis(50);
        let refused = budget.reserve_within(30, Purpose::Sync, wait).await;
        assert!(refused.is_err(), "no room came within the wait");
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move {
                budget
                    .reserve_within(30, Purpose::Sync, Duration::from_secs(5))
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        drop(first);
        let second = waiting.await.expect("task").expect("room came");
        assert_eq!((second.bytes(), budget.held()), (30, 30));
        assert!(
            budget
                .reserve_within(101, Purpose::Sync, wait)
                .await
                .is_err(),
            "never fits"
        );
        let text = budget.render();
        assert!(
            text.contains("porchlight_gateway_memory_budget_refusals_total{purpose=\"sync\"} 2"),
            "{text}"
        );
        let shared = SharedHold::new(second);
        let clone = shared.clone();
        drop(shared);
        assert_eq!((clone.bytes(), budget.held()), (30, 30));
        drop(clone);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn held_bytes_never_pass_the_budget_under_contention() {
        let budget = MemoryBudget::new(1000);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for i in 0..10_000usize {
                        if let Ok(mut r) = budget.try_reserve(i % 300, Purpose::FanOut) {
                            assert!(budget.held() <= 1000);
                            let _ = r.try_resize(i % 500);
                            assert!(budget.held() <= 1000);
                        }
                    }
                });
            }
        });
        assert_eq!(budget.held(), 0);
        assert!(budget.peak() <= 1000);
    }

    #[test]
    fn a_refusal_is_lambdas_throttle() {
        let e: GatewayError = BudgetExceeded {
            requested: 1,
            purpose: Purpose::Sync,
        }
        .into();
        assert_eq!(e.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
    }
}
