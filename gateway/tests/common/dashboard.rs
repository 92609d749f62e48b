//! Reading deploy/monitoring/dashboard.json's queries and a Prometheus text
//! exposition, for the tests that check the dashboard against the metrics
//! the gateway (gateway/tests/monitoring.rs) and the controller
//! (controller/tests/dashboard.rs) expose.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every query of the dashboard in the repository at `root`: panel targets
/// and template variables.
pub fn queries(root: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(root.join("deploy/monitoring/dashboard.json"))
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
pub fn selectors(query: &str) -> Vec<(String, BTreeSet<String>)> {
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
pub fn exposed(text: &str) -> BTreeMap<String, BTreeSet<String>> {
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
