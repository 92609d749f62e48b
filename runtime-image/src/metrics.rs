//! Prometheus metrics of one execution environment, in a registry of its own.
//! Every label comes from a bounded set.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// How an invocation ended, as counted in `invocations_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvocationOutcome {
    Success,
    Error,
    Timeout,
    Crash,
    InitError,
    Throttled,
    Rejected,
}

impl InvocationOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Error => "error",
            Self::Timeout => "timeout",
            Self::Crash => "crash",
            Self::InitError => "init_error",
            Self::Throttled => "throttled",
            Self::Rejected => "rejected",
        }
    }
}

/// Bounded classes of error types, as counted in `errors_total{class}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// An error raised by the handler (`ValueError`, a Rust error type, ...).
    Function,
    /// A `Runtime.*` error reported by the runtime.
    Runtime,
    Timeout,
    RuntimeExit,
    ResponseTooLarge,
    Init,
    Throttled,
    InvalidRequest,
    ShuttingDown,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Function => "function",
            Self::Runtime => "runtime",
            Self::Timeout => "timeout",
            Self::RuntimeExit => "runtime_exit",
            Self::ResponseTooLarge => "response_too_large",
            Self::Init => "init",
            Self::Throttled => "throttled",
            Self::InvalidRequest => "invalid_request",
            Self::ShuttingDown => "shutting_down",
        }
    }

    /// Classifies an `errorType` reported by a runtime.
    pub fn of_error_type(error_type: &str) -> Self {
        if error_type.starts_with("Runtime.") {
            Self::Runtime
        } else {
            Self::Function
        }
    }
}

/// Why the runtime process was restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartReason {
    Timeout,
    Crash,
    InitRetry,
}

impl RestartReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Crash => "crash",
            Self::InitRetry => "init_retry",
        }
    }
}

/// Why a frozen runtime was resumed, as counted in `thaws_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThawReason {
    /// An event is about to be delivered.
    Invocation,
    /// The environment stops: the runtime's SIGTERM handlers must run.
    Shutdown,
}

impl ThawReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Invocation => "invocation",
            Self::Shutdown => "shutdown",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    invocations: IntCounterVec,
    errors: IntCounterVec,
    pub invocation_duration: Histogram,
    pub init_duration: Histogram,
    inits: IntCounterVec,
    pub cold_starts: IntCounter,
    pub in_flight: IntGauge,
    restarts: IntCounterVec,
    pub freezes: IntCounter,
    thaws: IntCounterVec,
    pub thaw_duration: Histogram,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let opts = |name: &str, help: &str| Opts::new(name, help).namespace("porchlight_runtime");
        let hopts = |name: &str, help: &str, buckets: Vec<f64>| {
            HistogramOpts::new(name, help)
                .namespace("porchlight_runtime")
                .buckets(buckets)
        };
        let invocations = IntCounterVec::new(
            opts("invocations_total", "Invocations by outcome."),
            &["outcome"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            opts(
                "errors_total",
                "Invocation and init errors by class of error type.",
            ),
            &["class"],
        )
        .expect("valid metric");
        let invocation_duration = Histogram::with_opts(hopts(
            "invocation_duration_seconds",
            "Time from handing an event to the runtime to its answer.",
            vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0, 300.0, 900.0,
            ],
        ))
        .expect("valid metric");
        let init_duration = Histogram::with_opts(hopts(
            "init_duration_seconds",
            "Time from starting the runtime to its first request for an event.",
            vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
        ))
        .expect("valid metric");
        let inits =
            IntCounterVec::new(opts("inits_total", "Runtime inits by result."), &["result"])
                .expect("valid metric");
        let cold_starts = IntCounter::with_opts(opts(
            "cold_starts_total",
            "Invocations that were the first after an init.",
        ))
        .expect("valid metric");
        let in_flight = IntGauge::with_opts(opts(
            "in_flight_invocations",
            "Invocations admitted and not yet answered.",
        ))
        .expect("valid metric");
        let restarts = IntCounterVec::new(
            opts("runtime_restarts_total", "Runtime restarts by reason."),
            &["reason"],
        )
        .expect("valid metric");
        let freezes = IntCounter::with_opts(opts(
            "freezes_total",
            "Times the idle runtime was frozen (SIGSTOP of its process group).",
        ))
        .expect("valid metric");
        let thaws = IntCounterVec::new(
            opts(
                "thaws_total",
                "Times the frozen runtime was resumed (SIGCONT), by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        for reason in [ThawReason::Invocation, ThawReason::Shutdown] {
            thaws.with_label_values(&[reason.as_str()]);
        }
        let thaw_duration = Histogram::with_opts(hopts(
            "thaw_duration_seconds",
            "Time the shim takes to resume the frozen runtime's process group.",
            vec![
                0.000_005, 0.00001, 0.000_025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005, 0.01,
            ],
        ))
        .expect("valid metric");
        for c in [
            Box::new(invocations.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(errors.clone()),
            Box::new(invocation_duration.clone()),
            Box::new(init_duration.clone()),
            Box::new(inits.clone()),
            Box::new(cold_starts.clone()),
            Box::new(in_flight.clone()),
            Box::new(restarts.clone()),
            Box::new(freezes.clone()),
            Box::new(thaws.clone()),
            Box::new(thaw_duration.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Self {
            registry,
            invocations,
            errors,
            invocation_duration,
            init_duration,
            inits,
            cold_starts,
            in_flight,
            restarts,
            freezes,
            thaws,
            thaw_duration,
        }
    }

    pub fn invocation(&self, outcome: InvocationOutcome) {
        self.invocations
            .with_label_values(&[outcome.as_str()])
            .inc();
    }

    pub fn error(&self, class: ErrorClass) {
        self.errors.with_label_values(&[class.as_str()]).inc();
    }

    pub fn init(&self, ok: bool) {
        self.inits
            .with_label_values(&[if ok { "success" } else { "error" }])
            .inc();
    }

    pub fn restart(&self, reason: RestartReason) {
        self.restarts.with_label_values(&[reason.as_str()]).inc();
    }

    pub fn thaw(&self, reason: ThawReason) {
        self.thaws.with_label_values(&[reason.as_str()]).inc();
    }

    /// The registry in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
