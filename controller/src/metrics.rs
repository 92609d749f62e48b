//! Prometheus metrics of the controller. Labels come only from bounded sets:
//! error classes, decision reasons, and the functions that exist.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// All controller metrics, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles started.
    pub reconciles: IntCounter,
    /// Reconciles that failed, by error class.
    pub reconcile_errors: IntCounterVec,
    /// Reconcile duration.
    pub reconcile_duration: Histogram,
    /// Functions whose spec failed validation (counted per reconcile).
    pub invalid_specs: IntCounter,
    /// Changes of a function's desired environment count, by reason.
    pub scale_decisions: IntCounterVec,
    /// Failed attempts to apply a decision to a Deployment.
    pub scale_errors: IntCounter,
    /// Immediate decisions triggered by a gateway's poke (demand at zero).
    pub wakes: IntCounter,
    /// Concurrency (in flight + queued, summed over gateways) fed to the autoscaler.
    pub observed_concurrency: GaugeVec,
    /// The autoscaler's desired environments.
    pub desired_environments: IntGaugeVec,
    /// Reports received from gateways.
    pub gateway_reports: IntCounter,
    /// Failed polls of a gateway.
    pub gateway_poll_errors: IntCounter,
    /// Gateways whose reports are trusted.
    pub gateways_live: IntGauge,
    /// 1 while no gateway reports and every desired count is held.
    pub holding: IntGauge,
    /// 1 while this replica holds the leader lease.
    pub leader: IntGauge,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("metric name and help are valid");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "porchlight_controller_reconcile_errors_total",
                "Reconciles that failed, by error class",
            ),
            &["error"],
        )
        .expect("valid metric");
        let reconcile_duration = Histogram::with_opts(
            HistogramOpts::new(
                "porchlight_controller_reconcile_duration_seconds",
                "Time spent in one reconcile",
            )
            .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]),
        )
        .expect("valid metric");
        let scale_decisions = IntCounterVec::new(
            Opts::new(
                "porchlight_autoscaler_scale_decisions_total",
                "Changes of a function's desired environment count, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let observed_concurrency = GaugeVec::new(
            Opts::new(
                "porchlight_autoscaler_observed_concurrency",
                "In flight plus queued invocations, summed over gateways",
            ),
            &["namespace", "function"],
        )
        .expect("valid metric");
        let desired_environments = IntGaugeVec::new(
            Opts::new(
                "porchlight_autoscaler_desired_environments",
                "Environments the autoscaler wants",
            ),
            &["namespace", "function"],
        )
        .expect("valid metric");
        let gateways_live = IntGauge::new(
            "porchlight_autoscaler_gateways_live",
            "Gateways whose reports are trusted",
        )
        .expect("valid metric");
        let holding = IntGauge::new(
            "porchlight_autoscaler_holding",
            "1 while no gateway reports and every desired count is held",
        )
        .expect("valid metric");
        let leader = IntGauge::new(
            "porchlight_controller_leader",
            "1 while this replica holds the leader lease",
        )
        .expect("valid metric");
        for m in [
            Box::new(reconcile_errors.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reconcile_duration.clone()),
            Box::new(scale_decisions.clone()),
            Box::new(observed_concurrency.clone()),
            Box::new(desired_environments.clone()),
            Box::new(gateways_live.clone()),
            Box::new(holding.clone()),
            Box::new(leader.clone()),
        ] {
            registry.register(m).expect("metric registered once");
        }
        Metrics {
            reconciles: counter(
                &registry,
                "porchlight_controller_reconciles_total",
                "Reconciles started",
            ),
            invalid_specs: counter(
                &registry,
                "porchlight_controller_invalid_specs_total",
                "Reconciles of a Function whose spec failed validation",
            ),
            scale_errors: counter(
                &registry,
                "porchlight_autoscaler_scale_errors_total",
                "Failed attempts to apply a scaling decision",
            ),
            wakes: counter(
                &registry,
                "porchlight_autoscaler_wakes_total",
                "Immediate decisions for a function at zero that got demand",
            ),
            gateway_reports: counter(
                &registry,
                "porchlight_autoscaler_gateway_reports_total",
                "Concurrency reports received from gateways",
            ),
            gateway_poll_errors: counter(
                &registry,
                "porchlight_autoscaler_gateway_poll_errors_total",
                "Failed polls of a gateway",
            ),
            registry,
            reconcile_errors,
            reconcile_duration,
            scale_decisions,
            observed_concurrency,
            desired_environments,
            gateways_live,
            holding,
            leader,
        }
    }

    /// Forgets the per-function series of a deleted function.
    pub fn forget_function(&self, namespace: &str, name: &str) {
        let _ = self
            .observed_concurrency
            .remove_label_values(&[namespace, name]);
        let _ = self
            .desired_environments
            .remove_label_values(&[namespace, name]);
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if encoder.encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
