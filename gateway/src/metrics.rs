//! Prometheus metrics (`porchlight_gateway_*`). Labels come from bounded
//! sets only: function names, outcomes and reasons; never URLs or error text.

use prometheus::{
    CounterVec, Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The gateway's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Invocations by function, trigger and outcome.
    pub invocations: IntCounterVec,
    /// Invocations waiting for an environment.
    pub queue_depth: IntGaugeVec,
    /// Invocations dispatched and not answered.
    pub in_flight: IntGaugeVec,
    /// Environments by state (`ready`, `draining`).
    pub environments: IntGaugeVec,
    /// Refusals by reason (`queue_full`, `deadline`, `async_queue_full`).
    pub throttles: IntCounterVec,
    /// Cold starts observed.
    pub cold_starts: IntCounterVec,
    /// Time from acceptance to answer, seconds.
    pub latency: HistogramVec,
    /// Async events that ended as dead letters.
    pub dead_letters: IntCounterVec,
    /// Dead letters evicted from the full ring.
    pub dead_letters_evicted: IntCounter,
    /// Async retries.
    pub async_retries: IntCounterVec,
    /// Async events accepted and not finished (set when scraped).
    pub async_pending: IntGaugeVec,
    /// Queue trigger batches run, by outcome.
    pub queue_batches: IntCounterVec,
    /// Queue trigger messages settled, by outcome.
    pub queue_messages: IntCounterVec,
    /// Queue trigger batches running now on this gateway.
    pub queue_in_flight: IntGaugeVec,
    /// Scaling decisions (local mode) by reason.
    pub scaling_decisions: IntCounterVec,
    /// Lambda API requests refused for their signature, by error type.
    pub auth_failures: IntCounterVec,
    /// Billed duration (each invocation rounded up to 1 ms), seconds.
    pub billed_seconds: CounterVec,
    /// Billed duration x memory.
    pub gb_seconds: CounterVec,
    /// Init time of the environments cold starts waited for, seconds.
    pub init_seconds: CounterVec,
    /// Environment-seconds ready but running nothing.
    pub idle_environment_seconds: CounterVec,
    /// Those, x memory.
    pub idle_gb_seconds: CounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn float_counter(r: &Registry, name: &str, help: &str) -> CounterVec {
    let c = CounterVec::new(Opts::new(name, help), &["function"]).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let r = Registry::new();
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "porchlight_gateway_invocation_duration_seconds",
                "Time from acceptance of a synchronous invocation to its answer",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0,
            ]),
            &["function"],
        )
        .expect("valid metric");
        r.register(Box::new(latency.clone()))
            .expect("unique metric");
        let evicted = IntCounter::new(
            "porchlight_gateway_dead_letters_evicted_total",
            "Dead letters dropped from the full ring (oldest first)",
        )
        .expect("valid metric");
        r.register(Box::new(evicted.clone()))
            .expect("unique metric");
        Metrics {
            invocations: counter(
                &r,
                "porchlight_gateway_invocations_total",
                "Invocations by function, trigger and outcome",
                &["function", "trigger", "outcome"],
            ),
            queue_depth: gauge(
                &r,
                "porchlight_gateway_queue_depth",
                "Invocations waiting for an environment (sampled)",
                &["function"],
            ),
            in_flight: gauge(
                &r,
                "porchlight_gateway_in_flight",
                "Invocations dispatched to an environment and not answered (sampled)",
                &["function"],
            ),
            environments: gauge(
                &r,
                "porchlight_gateway_environments",
                "Environments the gateway routes to, by state",
                &["function", "state"],
            ),
            throttles: counter(
                &r,
                "porchlight_gateway_throttles_total",
                "Invocations refused with 429 or 503, by reason",
                &["function", "reason"],
            ),
            cold_starts: counter(
                &r,
                "porchlight_gateway_cold_starts_total",
                "Invocations answered by an environment that had just initialised",
                &["function"],
            ),
            latency,
            dead_letters: counter(
                &r,
                "porchlight_gateway_dead_letters_total",
                "Async events that failed every attempt or expired",
                &["function"],
            ),
            dead_letters_evicted: evicted,
            async_retries: counter(
                &r,
                "porchlight_gateway_async_retries_total",
                "Async invocations retried after a function error",
                &["function"],
            ),
            queue_batches: counter(
                &r,
                "porchlight_gateway_queue_batches_total",
                "Batches of queue trigger messages run, by outcome (success, partial, failed)",
                &["function", "outcome"],
            ),
            queue_messages: counter(
                &r,
                "porchlight_gateway_queue_messages_total",
                "Queue trigger messages settled, by outcome (acked, redelivered, dead_lettered)",
                &["function", "outcome"],
            ),
            queue_in_flight: gauge(
                &r,
                "porchlight_gateway_queue_batches_in_flight",
                "Batches of queue trigger messages running on this gateway",
                &["function"],
            ),
            async_pending: gauge(
                &r,
                "porchlight_gateway_async_pending_events",
                "Async events accepted and not finished: stored in this gateway's own store, or running here when the store is shared (NATS)",
                &["function"],
            ),
            scaling_decisions: counter(
                &r,
                "porchlight_gateway_scaling_decisions_total",
                "Changes of the desired environment count in local mode, by reason",
                &["function", "reason"],
            ),
            auth_failures: counter(
                &r,
                "porchlight_gateway_auth_failures_total",
                "Lambda API requests refused for their signature, by Lambda error type",
                &["error_type"],
            ),
            billed_seconds: float_counter(
                &r,
                "porchlight_gateway_billed_duration_seconds_total",
                "Billed duration of invocations (each rounded up to 1 ms, as Lambda bills)",
            ),
            gb_seconds: float_counter(
                &r,
                "porchlight_gateway_gb_seconds_total",
                "Billed duration x the function's memory, GB-seconds",
            ),
            init_seconds: float_counter(
                &r,
                "porchlight_gateway_init_duration_seconds_total",
                "Init time of environments that cold starts waited for",
            ),
            idle_environment_seconds: float_counter(
                &r,
                "porchlight_gateway_idle_environment_seconds_total",
                "Environment-seconds ready but running no invocation (the platform's cost)",
            ),
            idle_gb_seconds: float_counter(
                &r,
                "porchlight_gateway_idle_gb_seconds_total",
                "Idle environment-seconds x the function's memory, GB-seconds",
            ),
            registry: r,
        }
    }

    /// Counts a refused signature (`error_type` is one of Lambda's five).
    pub fn record_auth_failure(&self, error_type: &str) {
        self.auth_failures.with_label_values(&[error_type]).inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if encoder.encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
