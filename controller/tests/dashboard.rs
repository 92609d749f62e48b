//! deploy/monitoring/dashboard.json queries only metrics the controller
//! exposes: its registry, with one series in each labelled family, must
//! hold every `porchlight_controller_*` and `porchlight_autoscaler_*` series
//! a query names, with the label keys the query filters on. The gateway's
//! names are checked by gateway/tests/monitoring.rs against a running gateway.

#[path = "../../gateway/tests/common/dashboard.rs"]
mod dashboard;
mod manifests;

use std::collections::BTreeSet;

use dashboard::{exposed, selectors};
use manifests::root;
use porchlight_controller::metrics::Metrics;

#[test]
fn every_controller_metric_the_dashboard_queries_is_registered() {
    let m = Metrics::new();
    // A labelled family is exposed once it has a series: one each, with
    // labels from the sets the controller uses.
    m.reconcile_errors.with_label_values(&["kube"]).inc();
    m.scale_decisions.with_label_values(&["scale_up"]).inc();
    m.observed_concurrency
        .with_label_values(&["default", "hello"])
        .set(1.0);
    m.desired_environments
        .with_label_values(&["default", "hello"])
        .set(1);
    m.reconcile_duration.observe(0.01);
    let series = exposed(&m.render());

    let wanted: Vec<(String, BTreeSet<String>)> = dashboard::queries(&root())
        .iter()
        .flat_map(|q| selectors(q))
        .filter(|(n, _)| {
            n.starts_with("porchlight_controller_") || n.starts_with("porchlight_autoscaler_")
        })
        .collect();
    assert!(
        wanted.len() >= 5,
        "the dashboard's controller queries: {wanted:?}"
    );
    let mut problems = Vec::new();
    for (name, labels) in &wanted {
        match series.get(name) {
            None => problems.push(format!("{name} is not registered by the controller")),
            Some(keys) => {
                for l in labels.difference(keys) {
                    problems.push(format!("{name} has no label {l} (it has {keys:?})"));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n--- registered: {:?}",
        problems.join("\n"),
        series.keys().collect::<Vec<_>>()
    );
}
