//! The controller's side of the shared autoscaler loop
//! ([`porchlight_core::scaling`]): Functions from the watch cache are its
//! source, [`crate::sink::KubeScaleSink`] its sink, the controller's metrics
//! its observer. What a Function's status says becomes the loop's view of
//! its Deployment.

use std::sync::Arc;

use kube::runtime::reflector::Store;
use porchlight_api::Function;
use porchlight_core::AutoscalerConfig;
use porchlight_core::keepalive::IdleHistogram;
use porchlight_core::scaling::{
    AutoscalerLoop, LoopEvent, ScaleBook, ScaleObserver, ScaleSink, ScaleSource, ScaleTarget,
    Workload,
};
use porchlight_core::usage::FunctionUsage;

use crate::metrics::Metrics;
use crate::validation::{function_key, validate_for_cluster};

/// Where the autoscaler finds the Functions that exist.
pub trait FunctionSource: Send + Sync {
    /// Every Function, as last seen.
    fn functions(&self) -> Vec<Arc<Function>>;
}

impl FunctionSource for Store<Function> {
    fn functions(&self) -> Vec<Arc<Function>> {
        self.state()
    }
}

/// A [`FunctionSource`] as the loop's [`ScaleSource`].
pub struct Functions<F>(pub F);

/// The loop's view of one Function: its settings, ready environments, and
/// what its status says of the Deployment (none yet before its first reconcile).
pub fn scale_target(f: Arc<Function>) -> Option<ScaleTarget<Arc<Function>>> {
    // Invalid specs are left as they are; the reconciler reports them.
    let settings = validate_for_cluster(&f).ok()?;
    let count = |n: Option<i32>| n.map(|n| n.max(0) as u32);
    let status = f.status.as_ref();
    let workload = match status {
        None => Workload::NotCreated,
        Some(s) => Workload::Exists {
            desired: count(s.desired_replicas),
            current: count(s.replicas),
            last_scale_time: s.last_scale_time.clone(),
        },
    };
    Some(ScaleTarget {
        key: function_key(&f),
        config: AutoscalerConfig::from_settings(&settings),
        ready: count(status.and_then(|s| s.ready_replicas)).unwrap_or(0),
        workload,
        handle: f,
    })
}

/// The idle times a Function's status kept (an unreadable histogram is
/// dropped: it only costs the history).
pub fn idle_times(f: &Function) -> Option<IdleHistogram> {
    let text = f
        .status
        .as_ref()?
        .keep_alive
        .as_ref()?
        .idle_histogram
        .as_ref()?;
    IdleHistogram::decode(text).ok()
}

impl<F: FunctionSource> ScaleSource for Functions<F> {
    type Handle = Arc<Function>;

    fn targets(&self) -> Vec<ScaleTarget<Arc<Function>>> {
        self.0
            .functions()
            .into_iter()
            .filter_map(scale_target)
            .collect()
    }

    fn idle_times(&self, f: &Arc<Function>) -> Option<IdleHistogram> {
        idle_times(f)
    }

    fn usage(&self, f: &Arc<Function>) -> Option<FunctionUsage> {
        Some(f.status.as_ref()?.usage.as_ref()?.to_usage())
    }
}

impl ScaleObserver for Metrics {
    fn observe(&self, event: LoopEvent<'_>) {
        match event {
            LoopEvent::Report => self.gateway_reports.inc(),
            LoopEvent::Wake(_) => self.wakes.inc(),
            LoopEvent::GatewaysLive(n) => self.gateways_live.set(n as i64),
            LoopEvent::Decided {
                key,
                observed,
                decision,
            } => {
                let labels = [key.namespace.as_str(), key.name.as_str()];
                self.observed_concurrency
                    .with_label_values(&labels)
                    .set(observed);
                self.desired_environments
                    .with_label_values(&labels)
                    .set(i64::from(decision.desired));
            }
            LoopEvent::Applied(change) => self
                .scale_decisions
                .with_label_values(&[change.reason.as_str()])
                .inc(),
            LoopEvent::ApplyFailed(_) => self.scale_errors.inc(),
            LoopEvent::Forgot(key) => self.forget_function(&key.namespace, &key.name),
            LoopEvent::Holding(on) => self.holding.set(i64::from(on)),
        }
    }
}

/// The controller's autoscaler loop.
pub type ControllerLoop<F, S> = AutoscalerLoop<Functions<F>, S>;

/// The loop over `functions`, applying through `sink`, recording into `book`
/// and counting into `metrics`.
pub fn autoscaler_loop<F: FunctionSource, S: ScaleSink<Arc<Function>>>(
    functions: F,
    sink: S,
    book: Arc<ScaleBook>,
    metrics: Arc<Metrics>,
) -> ControllerLoop<F, S> {
    AutoscalerLoop::new(Functions(functions), sink, book, metrics)
}
