//! The repository's manifests as YAML values: single files, and what
//! `kubectl kustomize DIR` builds from deploy/'s kustomizations.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value;

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The non-empty documents of a multi-document YAML text.
pub fn parse_docs(what: &str, text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{what}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// The documents of one file, relative to the repository root.
pub fn docs(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(root().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    parse_docs(file, &text)
}

/// Kinds `namespace:` in a kustomization leaves alone.
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
];
const NAMESPACED: &[&str] = &[
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "Deployment",
    "Service",
    "NetworkPolicy",
    "PodMonitor",
];

/// What `kubectl kustomize DIR` builds, for the kustomizations of this
/// repository: `resources` (files, and directories with their own
/// kustomization) and `namespace`, which sets the namespace of every
/// namespaced object. Any other field fails the walk rather than being
/// ignored. `namespace` overrides the kustomization's own, as an overlay
/// that sets `namespace:` over DIR does.
pub fn kustomize(dir: &str, namespace: Option<&str>) -> Vec<Value> {
    let kustomization = &docs(&format!("{dir}/kustomization.yaml"))[0];
    for key in kustomization.as_mapping().expect("a mapping").keys() {
        let key = key.as_str().expect("a string key");
        assert!(
            ["apiVersion", "kind", "resources", "namespace"].contains(&key),
            "{dir}/kustomization.yaml uses `{key}`, which this walk does not apply: teach it"
        );
    }
    let namespace = namespace.or(kustomization["namespace"].as_str());
    let mut out = Vec::new();
    for r in kustomization["resources"].as_sequence().expect("resources") {
        let path = format!("{dir}/{}", r.as_str().expect("a path"));
        if root().join(&path).is_dir() {
            out.extend(kustomize(&path, None));
        } else {
            out.extend(docs(&path));
        }
    }
    if let Some(ns) = namespace {
        for o in &mut out {
            let kind = o["kind"].as_str().expect("kind").to_string();
            if NAMESPACED.contains(&kind.as_str()) {
                o["metadata"]["namespace"] = Value::from(ns);
            } else {
                assert!(
                    CLUSTER_SCOPED.contains(&kind.as_str()),
                    "is {kind} namespaced? add it to NAMESPACED or CLUSTER_SCOPED"
                );
            }
            if let Some(subjects) = o.get("subjects").and_then(Value::as_sequence) {
                // kustomize moves only ServiceAccount subjects named `default`.
                assert!(
                    subjects.iter().all(|s| s["name"] != "default"),
                    "a binding of the `default` ServiceAccount: the walk does not follow kustomize there"
                );
            }
        }
    }
    out
}
