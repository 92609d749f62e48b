//! deploy/monitoring/dashboard.json queries only metrics the controller
//! exposes: its registry, with one series in each labelled family, must
//! hold every `porchlight_controller_*` and `porchlight_autoscaler_*` series
//! a query names, with the label keys the query filters on. The gateway's
//! names are checked by gateway/tests/monitoring.rs against a running gateway.

mod manifests;

use std::collections::{BTreeMap, BTreeSet};

use manifests::root;
use porchlight_controller::metrics::Metrics;

/// Every query of the dashboard: panel targets and template variables.
fn queries() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("deploy/monitoring/dashboard.json"))
        .expect("deploy/monitoring/dashboard.json");
    let d: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    let mut panels: Vec<&serde_json::Value> =
        d["panels"].as_array().expect("panels").iter().collect();
    while let Some(p) = panels.pop() {
        panels.extend(p["panels"].as_array().into_iter().flatten());
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(t["expr"].as_str().expect("a PromQL expr").to_string());
        }
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(q) = v["query"]["query"].as_str() {
            out.push(q.to_string());
        }
    }
    out
}

/// Each metric a query names, with the label keys its selector matches on.
fn selectors(query: &str) -> Vec<(String, BTreeSet<String>)> {
    let mut out = Vec::new();
    let bytes = query.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut i = 0;
    while i < bytes.len() {
        if !ident(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && ident(bytes[i]) {
            i += 1;
        }
        let word = &query[start..i];
        if !word.starts_with("porchlight_") {
            continue;
        }
        let mut labels = BTreeSet::new();
        if bytes.get(i) == Some(&b'{') {
            let end = query[i..].find('}').expect("a closed selector") + i;
            for matcher in query[i + 1..end].split(',') {
                let key: String = matcher
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !key.is_empty() {
                    labels.insert(key);
                }
            }
            i = end + 1;
        }
        out.push((word.to_string(), labels));
    }
    out
}

/// Series names in a text exposition, with the label keys each carries.
fn exposed(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let keys = out.entry(line[..name_end].to_string()).or_default();
        if line[name_end..].starts_with('{') {
            let end = line.find('}').expect("closed labels");
            for pair in line[name_end + 1..end].split(',') {
                if let Some((k, _)) = pair.split_once('=') {
                    keys.insert(k.to_string());
                }
            }
        }
    }
    out
}

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

    let wanted: Vec<(String, BTreeSet<String>)> = queries()
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
