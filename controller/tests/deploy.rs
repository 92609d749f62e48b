//! The manifests under deploy/ and examples/, checked without a cluster:
//! the CRD is what the Rust types generate, every document parses into its
//! Kubernetes type, pods are locked down, RBAC is least privilege.

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use porchlight_api::Function;
use serde::Deserialize;
use serde_yaml::Value;
use std::collections::BTreeMap;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn docs(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(root().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{file}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// Every document `kubectl apply -k DIR` applies, with its file: the
/// kustomization's resources, following directories into their own
/// kustomizations.
fn kustomized(dir: &str) -> Vec<(String, Value)> {
    let kustomization = &docs(&format!("{dir}/kustomization.yaml"))[0];
    let mut out = Vec::new();
    for r in kustomization["resources"].as_sequence().expect("resources") {
        let path = format!("{dir}/{}", r.as_str().expect("a path"));
        if root().join(&path).is_dir() {
            out.extend(kustomized(&path));
        } else {
            out.extend(docs(&path).into_iter().map(|d| (path.clone(), d)));
        }
    }
    out
}

fn typed<T: serde::de::DeserializeOwned>(doc: &Value) -> T {
    serde_yaml::from_value(doc.clone()).unwrap_or_else(|e| panic!("{e}: {doc:?}"))
}

#[test]
fn committed_crd_matches_the_rust_types() {
    let committed =
        std::fs::read_to_string(root().join("deploy/crd.yaml")).expect("deploy/crd.yaml");
    assert!(
        committed == porchlight_controller::crd_yaml(),
        "deploy/crd.yaml is stale: run `cargo run -p porchlight-controller --bin crdgen > deploy/crd.yaml`"
    );
}

fn check_schema(path: &str, s: &JSONSchemaProps, problems: &mut Vec<String>) {
    let open = s.x_kubernetes_preserve_unknown_fields == Some(true)
        || s.x_kubernetes_int_or_string == Some(true);
    if s.type_.is_none() && !open {
        problems.push(format!("{path}: no type (not structural)"));
    }
    let scalar_item = path.ends_with("[]") && s.type_.as_deref() != Some("object");
    if s.description.as_deref().is_none_or(str::is_empty) && !path.is_empty() && !scalar_item {
        problems.push(format!("{path}: no description for kubectl explain"));
    }
    for (name, p) in s.properties.iter().flatten() {
        if path.is_empty() && (name == "apiVersion" || name == "kind" || name == "metadata") {
            continue;
        }
        check_schema(&format!("{path}.{name}"), p, problems);
    }
    if let Some(items) = &s.items
        && let Ok(schema) =
            serde_json::from_value::<JSONSchemaProps>(serde_json::to_value(items).expect("json"))
    {
        let mut inner = Vec::new();
        check_schema(&format!("{path}[]"), &schema, &mut inner);
        problems.extend(inner);
    }
    for k in ["anyOf", "oneOf", "allOf", "not"] {
        let v = serde_json::to_value(s).expect("json");
        if v.get(k).is_some() {
            problems.push(format!("{path}: {k} (avoid for a structural schema)"));
        }
    }
}

#[test]
fn crd_schema_is_structural_and_explained() {
    let crd: CustomResourceDefinition = typed(&docs("deploy/crd.yaml")[0]);
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("functions.porchlight.dev")
    );
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    let sub = version.subresources.as_ref().expect("subresources");
    assert!(sub.status.is_some() && sub.scale.is_some());
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("schema");
    let mut problems = Vec::new();
    check_schema("", schema, &mut problems);
    assert!(problems.is_empty(), "{problems:#?}");
    let columns: Vec<_> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    for c in ["Ready", "Replicas", "Desired", "Age"] {
        assert!(columns.contains(&c), "printer column {c}");
    }
}

fn pods_are_locked_down(name: &str, pod: &PodSpec) {
    let pod_sc = pod.security_context.as_ref().expect("pod securityContext");
    assert_eq!(pod_sc.run_as_non_root, Some(true), "{name}");
    assert_eq!(pod.enable_service_links, Some(false), "{name}");
    for c in &pod.containers {
        let sc = c
            .security_context
            .as_ref()
            .expect("container securityContext");
        assert_eq!(
            sc.read_only_root_filesystem,
            Some(true),
            "{name}/{}",
            c.name
        );
        assert_eq!(
            sc.allow_privilege_escalation,
            Some(false),
            "{name}/{}",
            c.name
        );
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_string()])
        );
        assert!(
            c.readiness_probe.is_some() && c.liveness_probe.is_some(),
            "{name}/{} probes",
            c.name
        );
        assert!(
            c.resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .is_some(),
            "{name}: memory limit"
        );
    }
}

#[test]
fn every_manifest_parses_into_its_kubernetes_type() {
    let mut kinds = Vec::new();
    for (file, doc) in kustomized("deploy") {
        {
            let kind = doc["kind"].as_str().expect("kind").to_string();
            match kind.as_str() {
                "Namespace" => drop(typed::<Namespace>(&doc)),
                "CustomResourceDefinition" => drop(typed::<CustomResourceDefinition>(&doc)),
                "ServiceAccount" => drop(typed::<ServiceAccount>(&doc)),
                "ClusterRole" => drop(typed::<ClusterRole>(&doc)),
                "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(&doc)),
                "Role" => drop(typed::<Role>(&doc)),
                "RoleBinding" => drop(typed::<RoleBinding>(&doc)),
                "Service" => drop(typed::<Service>(&doc)),
                "Deployment" => drop(typed::<Deployment>(&doc)),
                "StatefulSet" => drop(typed::<StatefulSet>(&doc)),
                "ConfigMap" => drop(typed::<ConfigMap>(&doc)),
                "NetworkPolicy" => drop(typed::<NetworkPolicy>(&doc)),
                other => panic!("{file}: unexpected kind {other}"),
            }
            if kind == "Deployment" || kind == "StatefulSet" {
                let name = doc["metadata"]["name"].as_str().unwrap_or_default();
                pods_are_locked_down(name, &typed(&doc["spec"]["template"]["spec"]));
            }
            kinds.push(kind);
        }
    }
    for k in [
        "Namespace",
        "CustomResourceDefinition",
        "ClusterRole",
        "Deployment",
        "StatefulSet",
        "Service",
        "ServiceAccount",
        "NetworkPolicy",
    ] {
        assert!(kinds.iter().any(|x| x == k), "missing {k}");
    }
    let gateway_services: Vec<Service> = docs("deploy/gateway.yaml")
        .iter()
        .filter(|d| d["kind"] == "Service")
        .map(typed)
        .collect();
    assert_eq!(
        gateway_services[0].metadata.name.as_deref(),
        Some("porchlight-gateway")
    );
    assert_eq!(
        gateway_services[0]
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .expect("ports")[0]
            .port,
        8080
    );
}

fn allows(rules: &[PolicyRule], group: &str, resource: &str, verb: &str) -> bool {
    rules.iter().any(|r| {
        r.api_groups.iter().flatten().any(|g| g == group)
            && r.resources.iter().flatten().any(|x| x == resource)
            && r.verbs.iter().any(|v| v == verb)
    })
}

#[test]
fn rbac_is_least_privilege_and_sufficient() {
    let rbac_kinds = [
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    ];
    let all: Vec<Value> = kustomized("deploy")
        .into_iter()
        .map(|(_, d)| d)
        .filter(|d| rbac_kinds.iter().any(|k| d["kind"] == *k))
        .collect();
    let mut rules_of = std::collections::BTreeMap::<String, Vec<PolicyRule>>::new();
    for doc in &all {
        let rules: Vec<PolicyRule> = match doc["kind"].as_str() {
            Some("ClusterRole") => typed::<ClusterRole>(doc).rules.unwrap_or_default(),
            Some("Role") => typed::<Role>(doc).rules.unwrap_or_default(),
            Some("ClusterRoleBinding") => {
                let b: ClusterRoleBinding = typed(doc);
                assert_ne!(b.role_ref.name, "cluster-admin");
                continue;
            }
            _ => continue,
        };
        for r in &rules {
            for list in [
                r.api_groups.clone().unwrap_or_default(),
                r.resources.clone().unwrap_or_default(),
                r.verbs.clone(),
            ] {
                assert!(!list.iter().any(|x| x == "*"), "wildcard in {r:?}");
            }
            if r.resources.iter().flatten().any(|x| x == "secrets") {
                // Only the controller, only to watch metadata: never get,
                // never write, and nothing else in the same rule.
                assert_eq!(doc["metadata"]["name"], "porchlight-controller", "{r:?}");
                assert_eq!(r.resources.as_deref(), Some(&["secrets".to_string()][..]));
                assert_eq!(r.verbs, vec!["list", "watch"], "{r:?}");
            }
        }
        let name = doc["metadata"]["name"].as_str().expect("name").to_string();
        rules_of.entry(name).or_default().extend(rules);
    }
    let c = [
        rules_of["porchlight-controller"].clone(),
        rules_of["porchlight-controller-leader"].clone(),
    ]
    .concat();
    for (group, resource, verbs) in [
        ("porchlight.dev", "functions", &["list", "watch"][..]),
        ("porchlight.dev", "functions/status", &["patch"]),
        ("porchlight.dev", "functions/scale", &["get"]),
        (
            "apps",
            "deployments",
            &["get", "list", "watch", "create", "patch"],
        ),
        ("", "services", &["list", "watch", "patch"]),
        ("", "configmaps", &["get", "list", "watch", "patch"]),
        ("", "pods", &["list", "watch", "patch"]),
        ("", "secrets", &["list", "watch"]),
        ("events.k8s.io", "events", &["create", "patch"]),
        ("coordination.k8s.io", "leases", &["get", "create", "patch"]),
    ] {
        for v in verbs {
            assert!(
                allows(&c, group, resource, v),
                "controller may not {v} {group}/{resource}"
            );
        }
    }
    assert!(
        !allows(&c, "apps", "deployments", "delete"),
        "deletion is the garbage collector's job"
    );
    // The gateway's rights are namespaced: a Role in the namespace it serves.
    for doc in &all {
        if doc["metadata"]["name"] == "porchlight-gateway" && doc["kind"] != "ServiceAccount" {
            assert!(
                doc["kind"] == "Role" || doc["kind"] == "RoleBinding",
                "the gateway gets no cluster-wide rights: {doc:?}"
            );
            assert_eq!(doc["metadata"]["namespace"], "default");
        }
    }
    let g = &rules_of["porchlight-gateway"];
    for (group, resource) in [("porchlight.dev", "functions"), ("", "pods")] {
        for v in ["list", "watch"] {
            assert!(
                allows(g, group, resource, v),
                "gateway may not {v} {resource}"
            );
        }
    }
    assert!(!g.iter().any(|r| {
        r.verbs
            .iter()
            .any(|v| ["create", "patch", "update", "delete"].contains(&v.as_str()))
    }));
}

#[test]
fn examples_are_valid_functions_on_a_cluster() {
    let dir = root().join("examples");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return; // examples/ is written elsewhere; nothing to check yet.
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        for d in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(d).expect("yaml");
            if v["kind"] != "Function" {
                continue;
            }
            let f: Function =
                serde_yaml::from_value(v).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if f.spec.code.path.is_some() {
                continue; // local-mode example
            }
            let mut f = f;
            f.metadata.namespace.get_or_insert_with(|| "default".into());
            if let Err(problems) = porchlight_controller::validation::validate_for_cluster(&f) {
                panic!("{}: {problems:?}", path.display());
            }
        }
    }
}

/// Whether `selector` selects an object labelled `labels` (matchLabels and
/// matchExpressions, as the API server evaluates them).
fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            other => panic!("unknown operator {other}"),
        }
    });
    by_labels && by_expressions
}

/// The pod labels of the Deployment or StatefulSet `name` in `file`.
fn pod_labels(file: &str, name: &str) -> BTreeMap<String, String> {
    let workload = docs(file)
        .into_iter()
        .find(|d| {
            (d["kind"] == "Deployment" || d["kind"] == "StatefulSet")
                && d["metadata"]["name"] == name
        })
        .unwrap_or_else(|| panic!("{name} in {file}"));
    typed(&workload["spec"]["template"]["metadata"]["labels"])
}

/// A pod, by its namespace and labels.
struct Pod<'a> {
    namespace: &'a str,
    labels: &'a BTreeMap<String, String>,
}

/// The pods a policy's ingress rule on `port` admits, among `pods`.
fn admitted_on(policy: &NetworkPolicy, port: i32, pods: &[(&str, Pod<'_>)]) -> Vec<String> {
    let spec = policy.spec.as_ref().expect("spec");
    let mut out = Vec::new();
    for rule in spec.ingress.iter().flatten() {
        let on_port = rule.ports.iter().flatten().any(|p| {
            p.port == Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port))
        });
        if !on_port {
            continue;
        }
        for (name, pod) in pods {
            let from_anywhere = rule.from.as_ref().is_none_or(Vec::is_empty);
            let admitted = from_anywhere
                || rule.from.iter().flatten().any(|peer| {
                    let ns_labels = BTreeMap::from([(
                        "kubernetes.io/metadata.name".to_string(),
                        pod.namespace.to_string(),
                    )]);
                    let ns_ok = match &peer.namespace_selector {
                        Some(sel) => selects(sel, &ns_labels),
                        None => Some(pod.namespace) == policy.metadata.namespace.as_deref(),
                    };
                    let pod_ok = peer
                        .pod_selector
                        .as_ref()
                        .is_none_or(|sel| selects(sel, pod.labels));
                    ns_ok && pod_ok
                });
            if admitted {
                out.push((*name).to_string());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn network_policies_select_the_pods_they_mean() {
    use porchlight_controller::resources::{self, INVOKE_PORT, WorkloadSettings};
    let gateway = pod_labels("deploy/gateway.yaml", "porchlight-gateway");
    let controller = pod_labels("deploy/controller.yaml", "porchlight-controller");
    let nats = pod_labels("deploy/nats.yaml", "porchlight-nats");
    let mut f: Function = serde_yaml::from_str(
        "apiVersion: porchlight.dev/v1alpha1\nkind: Function\nmetadata: {name: hello, namespace: default}\nspec: {handler: app.h, code: {inline: x}}\n",
    )
    .expect("function");
    f.metadata.uid = Some("uid".into());
    let rendered = resources::deployment(
        &f,
        &WorkloadSettings {
            runtime_image: "img".into(),
            node_runtime_image: "node-img".into(),
        },
        "h",
        Some(1),
    );
    let function = rendered
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.labels)
        .expect("function pod labels");
    let pods = [
        (
            "gateway",
            Pod {
                namespace: "porchlight-system",
                labels: &gateway,
            },
        ),
        (
            "controller",
            Pod {
                namespace: "porchlight-system",
                labels: &controller,
            },
        ),
        (
            "function",
            Pod {
                namespace: "default",
                labels: &function,
            },
        ),
        (
            "nats",
            Pod {
                namespace: "porchlight-system",
                labels: &nats,
            },
        ),
    ];
    let policies: BTreeMap<String, NetworkPolicy> = kustomized("deploy")
        .iter()
        .filter(|(_, d)| d["kind"] == "NetworkPolicy")
        .map(|(_, d)| {
            let p: NetworkPolicy = typed(d);
            (p.metadata.name.clone().expect("name"), p)
        })
        .collect();
    let selected = |name: &str| -> Vec<&str> {
        let p = &policies[name];
        let sel = &p.spec.as_ref().expect("spec").pod_selector;
        pods.iter()
            .filter(|(_, pod)| {
                Some(pod.namespace) == p.metadata.namespace.as_deref()
                    && sel.as_ref().is_some_and(|s| selects(s, pod.labels))
            })
            .map(|(n, _)| *n)
            .collect()
    };
    assert_eq!(selected("porchlight-gateway"), vec!["gateway"]);
    assert_eq!(selected("porchlight-controller"), vec!["controller"]);
    assert_eq!(selected("porchlight-functions"), vec!["function"]);
    assert_eq!(selected("porchlight-nats"), vec!["nats"]);
    // NATS: clients are the gateways only.
    assert_eq!(
        admitted_on(&policies["porchlight-nats"], 4222, &pods),
        vec!["gateway"]
    );
    assert!(admitted_on(&policies["porchlight-nats"], 8222, &pods).is_empty());
    // Function pods: invocations from the gateway only.
    assert_eq!(
        admitted_on(&policies["porchlight-functions"], INVOKE_PORT, &pods),
        vec!["gateway"]
    );
    // The gateway: public port from anywhere, internal port from the controller.
    assert_eq!(
        admitted_on(&policies["porchlight-gateway"], 8080, &pods),
        vec!["controller", "function", "gateway", "nats"]
    );
    assert_eq!(
        admitted_on(
            &policies["porchlight-gateway"],
            i32::from(porchlight_controller::gateways::GATEWAY_PORT),
            &pods
        ),
        vec!["controller"]
    );
    // The controller: its metrics port only.
    assert_eq!(
        admitted_on(&policies["porchlight-controller"], 9090, &pods).len(),
        4
    );
    assert!(admitted_on(&policies["porchlight-controller"], 8080, &pods).is_empty());
}
