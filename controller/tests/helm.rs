//! The Helm chart (deploy/helm/porchlight) against the kustomize base
//! (deploy/): rendered with `helm template`, both are parsed into objects,
//! keyed by apiVersion, kind, namespace and name, and compared exactly; each
//! value of the chart is checked against what the kustomize way of doing the
//! same thing (an overlay, deploy/tls-patch.yaml, deploy/monitoring)
//! produces. `helm` comes from PORCHLIGHT_HELM (tests/run.sh builds it).

mod manifests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use manifests::{docs, kustomize, parse_docs, root};
use serde_yaml::{Mapping, Value};

const CHART: &str = "deploy/helm/porchlight";
const NAMESPACE: &str = "porchlight-system";

/// The `helm` binary named by `PORCHLIGHT_HELM`. With `CI` set, a missing
/// one fails the test; otherwise the test is skipped with a message.
fn helm() -> Option<PathBuf> {
    let bin = std::env::var_os("PORCHLIGHT_HELM").map(PathBuf::from);
    if let Some(bin) = bin.filter(|b| b.is_file()) {
        return Some(bin);
    }
    let help = "set PORCHLIGHT_HELM to a helm binary (tests/run.sh builds one: GOFLAGS=-mod=mod GOBIN=~/.cache/porchlight/helm/v4.3.2 go install helm.sh/helm/v4/cmd/helm@v4.3.2)";
    if std::env::var_os("CI").is_some() {
        panic!("CI is set but no helm is available: {help}");
    }
    eprintln!("skipping: {help}");
    None
}

type Key = (String, String, String, String);

fn key(o: &Value) -> Key {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    (
        s(&o["apiVersion"]),
        s(&o["kind"]),
        s(&o["metadata"]["namespace"]),
        s(&o["metadata"]["name"]),
    )
}

fn by_key(objects: Vec<Value>) -> BTreeMap<Key, Value> {
    let mut map = BTreeMap::new();
    for o in objects {
        let k = key(&o);
        assert!(map.insert(k.clone(), o).is_none(), "{k:?} twice");
    }
    map
}

/// `helm template` of the chart in porchlight-system, CRDs included.
fn render(helm: &Path, set: &[&str]) -> Vec<Value> {
    let mut cmd = Command::new(helm);
    cmd.current_dir(root())
        .args(["template", "porchlight", CHART, "--namespace", NAMESPACE])
        .arg("--include-crds");
    for s in set {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().expect("run helm");
    assert!(
        out.status.success(),
        "helm template {set:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_docs("helm template", &String::from_utf8_lossy(&out.stdout))
}

fn yaml(v: &Value) -> String {
    serde_yaml::to_string(v).expect("yaml")
}

/// The same objects with the same content, or a message naming each
/// difference.
fn assert_same(what: &str, rendered: Vec<Value>, expected: Vec<Value>) {
    let rendered = by_key(rendered);
    let expected = by_key(expected);
    let mut problems = Vec::new();
    for k in expected.keys().filter(|k| !rendered.contains_key(*k)) {
        problems.push(format!("missing from the chart: {k:?}"));
    }
    for k in rendered.keys().filter(|k| !expected.contains_key(*k)) {
        problems.push(format!("only in the chart: {k:?}"));
    }
    for (k, want) in &expected {
        if let Some(got) = rendered.get(k)
            && got != want
        {
            problems.push(format!(
                "{k:?} differs.\n--- kustomize:\n{}--- chart:\n{}",
                yaml(want),
                yaml(got)
            ));
        }
    }
    assert!(problems.is_empty(), "{what}:\n{}", problems.join("\n"));
}

fn object<'a>(objects: &'a mut [Value], kind: &str, name: &str) -> &'a mut Value {
    objects
        .iter_mut()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn container<'a>(deployment: &'a mut Value, name: &str) -> &'a mut Value {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_sequence_mut()
        .expect("containers")
        .iter_mut()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The merge key of the lists a strategic merge patch of a Deployment
/// merges element by element (the rest are replaced).
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "containers" | "env" | "volumes" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        _ => None,
    }
}

/// `kubectl patch --type strategic` for the fields deploy/tls-patch.yaml
/// touches: maps merge, keyed lists merge by key, and elements the list did
/// not have come first, in the patch's order (as kubectl puts them).
fn strategic_merge(target: &mut Value, patch: &Value, field: &str) {
    match (target, patch) {
        (Value::Mapping(t), Value::Mapping(p)) => {
            for (k, pv) in p {
                let name = k.as_str().expect("a string key");
                match t.get_mut(k) {
                    Some(tv) => strategic_merge(tv, pv, name),
                    None => {
                        t.insert(k.clone(), pv.clone());
                    }
                }
            }
        }
        (Value::Sequence(t), Value::Sequence(p)) if merge_key(field).is_some() => {
            let mk = merge_key(field).expect("keyed");
            let mut added = Vec::new();
            for pe in p {
                match t.iter_mut().find(|te| te[mk] == pe[mk]) {
                    Some(te) => strategic_merge(te, pe, ""),
                    None => added.push(pe.clone()),
                }
            }
            t.splice(0..0, added);
        }
        (t, p) => *t = p.clone(),
    }
}

#[test]
fn chart_crd_is_the_committed_crd() {
    let chart = std::fs::read(root().join(CHART).join("crds/crd.yaml")).expect("chart CRD");
    let deploy = std::fs::read(root().join("deploy/crd.yaml")).expect("deploy/crd.yaml");
    assert!(
        chart == deploy,
        "deploy/helm/porchlight/crds/crd.yaml differs from deploy/crd.yaml: cp deploy/crd.yaml deploy/helm/porchlight/crds/crd.yaml"
    );
}

#[test]
fn chart_passes_helm_lint() {
    let Some(helm) = helm() else { return };
    for set in [
        &[][..],
        &[
            "functionNamespaces={team-b}",
            "tls.enabled=true",
            "monitoring.podMonitor.enabled=true",
        ][..],
    ] {
        let mut cmd = Command::new(&helm);
        cmd.current_dir(root())
            .args(["lint", "--strict", CHART, "--namespace", NAMESPACE]);
        for s in set {
            cmd.args(["--set", s]);
        }
        let out = cmd.output().expect("run helm lint");
        assert!(
            out.status.success(),
            "helm lint {set:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn default_values_render_the_kustomize_base() {
    let Some(helm) = helm() else { return };
    let expected = kustomize("deploy", None);
    assert!(
        expected.len() >= 15,
        "the walk found {} objects",
        expected.len()
    );
    assert_same("defaults", render(&helm, &[]), expected);
}

#[test]
fn a_function_namespace_renders_the_function_namespace_overlay() {
    let Some(helm) = helm() else { return };
    // The README's way: an overlay of deploy/function-namespace with
    // `namespace: team-b`, and the namespace in the gateway's
    // PORCHLIGHT_NAMESPACES (`kubectl set env` adds it last).
    let mut expected = kustomize("deploy", None);
    expected.extend(kustomize("deploy/function-namespace", Some("team-b")));
    let gateway = container(
        object(&mut expected, "Deployment", "porchlight-gateway"),
        "gateway",
    );
    let env = gateway["env"].as_sequence_mut().expect("env");
    let mut var = Mapping::new();
    var.insert("name".into(), "PORCHLIGHT_NAMESPACES".into());
    var.insert("value".into(), "team-b".into());
    env.push(Value::Mapping(var));
    assert_same(
        "functionNamespaces={team-b}",
        render(&helm, &["functionNamespaces={team-b}"]),
        expected,
    );

    let two = render(&helm, &["functionNamespaces={team-b,team-c}"]);
    let roles: Vec<&str> = two
        .iter()
        .filter(|o| o["kind"] == "Role" && o["metadata"]["name"] == "porchlight-gateway")
        .map(|o| o["metadata"]["namespace"].as_str().expect("namespace"))
        .collect();
    assert_eq!(roles, ["default", "team-b", "team-c"]);
    let mut two = two;
    let gateway = container(
        object(&mut two, "Deployment", "porchlight-gateway"),
        "gateway",
    );
    let namespaces = gateway["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "PORCHLIGHT_NAMESPACES")
        .expect("PORCHLIGHT_NAMESPACES");
    assert_eq!(namespaces["value"], "team-b,team-c");
}

#[test]
fn tls_renders_the_tls_patch() {
    let Some(helm) = helm() else { return };
    let mut expected = kustomize("deploy", None);
    let patch = &docs("deploy/tls-patch.yaml")[0];
    strategic_merge(
        object(&mut expected, "Deployment", "porchlight-gateway"),
        patch,
        "",
    );
    assert_same(
        "tls.enabled=true",
        render(&helm, &["tls.enabled=true"]),
        expected,
    );
}

#[test]
fn monitoring_renders_deploy_monitoring() {
    let Some(helm) = helm() else { return };
    let mut expected = kustomize("deploy", None);
    expected.extend(kustomize("deploy/monitoring", None));
    assert_same(
        "monitoring.podMonitor.enabled=true",
        render(&helm, &["monitoring.podMonitor.enabled=true"]),
        expected,
    );
}

#[test]
fn auth_off_drops_the_keys_and_nothing_else() {
    let Some(helm) = helm() else { return };
    let mut expected = kustomize("deploy", None);
    let deployment = object(&mut expected, "Deployment", "porchlight-gateway");
    let spec = deployment["spec"]["template"]["spec"]
        .as_mapping_mut()
        .expect("pod spec");
    spec.remove("volumes").expect("the keys volume");
    let gateway = container(deployment, "gateway")
        .as_mapping_mut()
        .expect("container");
    gateway.remove("volumeMounts").expect("the keys mount");
    let env = gateway
        .get_mut("env")
        .and_then(Value::as_sequence_mut)
        .expect("env");
    let before = env.len();
    env.retain(|e| e["name"] != "PORCHLIGHT_AUTH_KEYS");
    assert_eq!(env.len(), before - 1);
    assert_same(
        "auth.enabled=false",
        render(&helm, &["auth.enabled=false"]),
        expected,
    );
}

/// `nats.enabled=false` drops the chart's NATS (its objects and policy);
/// the gateways then use `nats.url`, or with none keep events in memory.
#[test]
fn nats_off_drops_its_objects_and_points_the_gateways_at_the_url() {
    let Some(helm) = helm() else { return };
    let without = |url: Option<&str>| {
        let mut expected = kustomize("deploy", None);
        let before = expected.len();
        expected.retain(|o| o["metadata"]["name"] != "porchlight-nats");
        assert_eq!(
            before - expected.len(),
            4,
            "ConfigMap, Service, StatefulSet, NetworkPolicy"
        );
        let deployment = object(&mut expected, "Deployment", "porchlight-gateway");
        let env = container(deployment, "gateway")["env"]
            .as_sequence_mut()
            .expect("env");
        let queue = env
            .iter_mut()
            .find(|e| e["name"] == "PORCHLIGHT_QUEUE")
            .expect("PORCHLIGHT_QUEUE");
        assert_eq!(queue["value"], "nats://porchlight-nats:4222");
        match url {
            Some(url) => queue["value"] = Value::from(url),
            None => env.retain(|e| e["name"] != "PORCHLIGHT_QUEUE"),
        }
        expected
    };
    assert_same(
        "nats.enabled=false",
        render(&helm, &["nats.enabled=false"]),
        without(None),
    );
    assert_same(
        "nats.enabled=false, nats.url",
        render(
            &helm,
            &["nats.enabled=false", "nats.url=nats://queue.example:4222"],
        ),
        without(Some("nats://queue.example:4222")),
    );
}

/// Every image the chart names, with the container or variable naming it.
fn images(objects: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    for d in objects
        .iter()
        .filter(|o| o["kind"] == "Deployment" || o["kind"] == "StatefulSet")
    {
        for c in d["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .expect("containers")
        {
            out.push(c["image"].as_str().expect("image").to_string());
            for e in c["env"].as_sequence().into_iter().flatten() {
                if e["name"] == "PORCHLIGHT_RUNTIME_IMAGE"
                    || e["name"] == "PORCHLIGHT_NODE_RUNTIME_IMAGE"
                {
                    out.push(e["value"].as_str().expect("value").to_string());
                }
            }
        }
    }
    out.sort();
    out
}

#[test]
fn values_reach_the_objects() {
    let Some(helm) = helm() else { return };
    let mut objects = render(
        &helm,
        &[
            "image.registry=registry.example.com/team",
            "image.tag=v0.1.0",
            "image.pullPolicy=Always",
            "controller.replicas=2",
            "gateway.replicas=3",
            "gateway.resources.limits.memory=1Gi",
            "controller.resources.requests.cpu=200m",
            "logLevel=debug",
            "namespace.create=false",
            "nats.storage=5Gi",
            "nats.storageClassName=fast",
            "nats.resources.limits.memory=1Gi",
        ],
    );
    // The names deploy/images.sh pushes, with the registry and tag given.
    let listed: Vec<String> = std::fs::read_to_string(root().join("deploy/images.txt"))
        .expect("deploy/images.txt")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().next().expect("a name").to_string())
        .collect();
    let want: Vec<String> = [
        "controller",
        "gateway",
        "nats",
        "runtime-node",
        "runtime-python",
    ]
    .iter()
    .map(|n| {
        assert!(
            listed.iter().any(|l| l == n),
            "{n} is not in deploy/images.txt"
        );
        format!("registry.example.com/team/{n}:v0.1.0")
    })
    .collect();
    assert_eq!(images(&objects), want);
    assert!(!objects.iter().any(|o| o["kind"] == "Namespace"));

    let controller = object(&mut objects, "Deployment", "porchlight-controller");
    assert_eq!(controller["spec"]["replicas"], 2);
    let c = container(controller, "controller");
    assert_eq!(c["imagePullPolicy"], "Always");
    assert_eq!(c["resources"]["requests"]["cpu"], "200m");
    assert_eq!(c["resources"]["requests"]["memory"], "64Mi");
    let log = c["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "RUST_LOG")
        .expect("RUST_LOG");
    assert_eq!(log["value"], "debug,kube=warn");

    let gateway = object(&mut objects, "Deployment", "porchlight-gateway");
    assert_eq!(gateway["spec"]["replicas"], 3);
    let g = container(gateway, "gateway");
    assert_eq!(g["resources"]["limits"]["memory"], "1Gi");
    let log = g["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "RUST_LOG")
        .expect("RUST_LOG");
    assert_eq!(log["value"], "debug");

    let nats = object(&mut objects, "StatefulSet", "porchlight-nats");
    let claim = &nats["spec"]["volumeClaimTemplates"][0]["spec"];
    assert_eq!(claim["storageClassName"], "fast");
    assert_eq!(claim["resources"]["requests"]["storage"], "5Gi");
    let n = container(nats, "nats");
    assert_eq!(n["imagePullPolicy"], "Always");
    assert_eq!(n["resources"]["limits"]["memory"], "1Gi");
}
