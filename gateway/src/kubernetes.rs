//! The Kubernetes environment source: Functions and their pods from the API server.
//!
//! The gateway watches `Function`s and the pods labelled
//! `porchlight.dev/function` in each namespace it serves (two reflectors per
//! namespace, or two cluster-wide for `*`), and after every change brings
//! the registry in line with what the API says. Functions of the home
//! namespace are named by their bare name, others as `namespace.name`:
//! - a valid Function is registered (re-registered only when its spec changed,
//!   so status updates never drop environments); an invalid one is skipped
//!   with a warning, a deleted one removed;
//! - a pod that is Ready, has an IP and is not terminating is routable at
//!   `http://<pod IP>:8080`; one that is terminating or no longer Ready is
//!   drained (no new events, in-flight ones finish); a deleted one is forgotten.
//!
//! The Function's `status.desiredReplicas` (the controller's autoscaler
//! decision) is what `/v1/functions` reports as `desired`. While its status
//! says `InitFailed` and no pod is Ready, invocations get that init error at
//! once (200 with `X-Amz-Function-Error: Unhandled`, as Lambda answers an
//! init failure) instead of waiting for an environment that cannot start.
//!
//! Scaling is the controller's: it reads this gateway's concurrency reports
//! (`/v1/concurrency`), including the immediate poke when a function at zero
//! gets demand, and changes the Deployment's replicas.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, ResourceExt};
use porchlight_api::Function;
use porchlight_core::FunctionKey;
use porchlight_core::endpoint::pod_url;
use porchlight_core::names::{
    FUNCTION_KIND, FUNCTION_LABEL, READY_CONDITION, init_failure_error, reason, workload_name,
};
use tokio_util::sync::CancellationToken;

use crate::gateway::Gateway;
use crate::registry::{EnvironmentInfo, Registry};

/// Kubernetes' pod condition that says a pod passes its readiness probe.
const POD_READY_CONDITION: &str = "Ready";

/// The namespaces a gateway serves: its home namespace (functions named by
/// bare name) and more (functions named `namespace.name`), or every one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Namespaces {
    /// These namespaces, the home one first.
    Listed(Vec<String>),
    /// Every namespace (needs cluster-wide read rights).
    All,
}

impl Namespaces {
    /// The home namespace and `more` (`*` among them: all of them).
    pub fn new(home: &str, more: &[String]) -> Self {
        if more.iter().any(|n| n.trim() == "*") {
            return Namespaces::All;
        }
        let mut listed = vec![home.to_string()];
        for n in more.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
            if !listed.iter().any(|l| l == n) {
                listed.push(n.to_string());
            }
        }
        Namespaces::Listed(listed)
    }
}

impl std::fmt::Display for Namespaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Namespaces::All => f.write_str("every namespace"),
            Namespaces::Listed(l) if l.len() == 1 => write!(f, "namespace {}", l[0]),
            Namespaces::Listed(l) => write!(f, "namespaces {}", l.join(", ")),
        }
    }
}

/// Settings of the Kubernetes source.
#[derive(Clone, Debug)]
pub struct KubernetesConfig {
    /// Namespaces whose Functions this gateway serves.
    pub namespaces: Namespaces,
    /// Port of the shim's invoke endpoint in every pod.
    pub environment_port: u16,
}

/// How the gateway may use one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodRoute {
    /// Ready, with an IP, not terminating: route events to it.
    Routable {
        /// `http://<ip>:<port>`.
        base_url: String,
    },
    /// Terminating or not Ready: finish what it has, send nothing new.
    Drain,
}

/// Whether a pod belongs to the Function it is labelled with: its
/// controller is the ReplicaSet of the Function's Deployment (`fn-NAME-*`),
/// or the Function itself. A label alone proves nothing: anyone who can
/// create a pod can put it on.
pub fn owned_by_function(pod: &Pod, function: &str) -> bool {
    let replica_sets = format!("{}-", workload_name(function));
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .filter(|o| o.controller == Some(true))
        .any(|o| {
            (o.kind == "ReplicaSet" && o.name.starts_with(&replica_sets))
                || (o.kind == FUNCTION_KIND && o.name == function)
        })
}

/// The function a pod serves and how to use it; `None` for pods that are
/// not its environments (no label, not owned by its workload) or have no IP
/// yet and were never routable.
pub fn pod_route(pod: &Pod, port: u16) -> Option<(String, PodRoute)> {
    let function = pod.labels().get(FUNCTION_LABEL)?.clone();
    if !owned_by_function(pod, &function) {
        return None;
    }
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == POD_READY_CONDITION && c.status == "True")
        });
    let ip = status
        .and_then(|s| s.pod_ip.as_deref())
        .filter(|ip| !ip.is_empty());
    match ip {
        Some(ip) if ready && !terminating => Some((
            function,
            PodRoute::Routable {
                base_url: pod_url(ip, port),
            },
        )),
        _ => Some((function, PodRoute::Drain)),
    }
}

/// The init error a Function's status reports (`Ready=False`, reason
/// `InitFailed`, message `errorType: errorMessage` as the controller writes
/// it), as the Lambda error body callers get.
pub fn init_failure(f: &Function) -> Option<Bytes> {
    let c = f
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == READY_CONDITION)?;
    if c.status != "False" || c.reason.as_deref() != Some(reason::INIT_FAILED) {
        return None;
    }
    Some(init_failure_error(c.message.as_deref()))
}

/// The key of a Function or of one of its pods.
fn key_of(namespace: Option<String>, name: String) -> FunctionKey {
    FunctionKey::new(namespace.unwrap_or_default(), name)
}

/// Brings the registry in line with the Functions and pods the API reports.
/// Functions and environments are keyed by address (see
/// [`FunctionKey::address`]), so namespaces never mix.
pub fn sync(registry: &Registry, functions: &[Arc<Function>], pods: &[Arc<Pod>], port: u16) {
    // Functions first: register new or changed ones, drop vanished or invalid ones.
    let mut wanted: HashMap<String, (FunctionKey, &Function)> = HashMap::new();
    for f in functions {
        let key = key_of(f.namespace(), f.name_any());
        if key.name.contains('.') {
            // `namespace.name` would be ambiguous; a cluster cannot run it
            // anyway (its Service `fn-NAME` must be a DNS label).
            tracing::warn!(function = %key, "a function name with a dot is not served");
            continue;
        }
        wanted.insert(registry.address_of(&key), (key, f));
    }
    for (name, (key, f)) in &wanted {
        let current = registry.get(name).filter(|e| *e.spec() == f.spec);
        let entry = match current {
            Some(entry) => Some(entry),
            None => match f.spec.validate() {
                Ok(settings) => {
                    tracing::info!(function = %name, "function registered or updated");
                    Some(registry.upsert(key.clone(), f.spec.clone(), settings))
                }
                Err(problems) => {
                    if registry.remove(name).is_some() {
                        tracing::warn!(function = %name, ?problems, "function spec became invalid; no longer served");
                    } else {
                        tracing::warn!(function = %name, ?problems, "invalid function spec; not served");
                    }
                    None
                }
            },
        };
        // The autoscaler's count, as the controller last wrote it, for
        // /v1/functions; and the init error it reports, for callers.
        if let Some(entry) = entry {
            let desired = f
                .status
                .as_ref()
                .and_then(|s| s.desired_replicas)
                .map_or(0, |d| u32::try_from(d).unwrap_or(0));
            entry.set_desired(desired);
            entry.set_init_failure(init_failure(f));
        }
    }
    for entry in registry.all() {
        if !wanted.contains_key(entry.name()) {
            registry.remove(entry.name());
            entry.close_waiters();
            tracing::info!(function = entry.name(), "function deleted");
        }
    }

    // Then environments: per function, the pods and what to do with each.
    let mut routes: BTreeMap<String, HashMap<String, PodRoute>> = BTreeMap::new();
    for pod in pods {
        if let Some((function, route)) = pod_route(pod, port) {
            routes
                .entry(registry.address_of(&key_of(pod.namespace(), function)))
                .or_default()
                .insert(pod.name_any(), route);
        }
    }
    let none = HashMap::new();
    for entry in registry.all() {
        let pods = routes.get(entry.name()).unwrap_or(&none);
        let capacity = entry.spec().concurrency.max(1);
        let known: HashMap<Arc<str>, bool> = entry.environment_states().into_iter().collect();
        for (pod_name, route) in pods {
            let draining = known.get(pod_name.as_str()).copied();
            match route {
                PodRoute::Routable { base_url } => {
                    if draining == Some(true) {
                        // Ready again after a readiness blip: route to it anew.
                        entry.remove_environment(pod_name);
                    }
                    if draining != Some(false) {
                        entry.add_environment(EnvironmentInfo {
                            id: pod_name.as_str().into(),
                            base_url: base_url.as_str().into(),
                            capacity,
                        });
                    }
                }
                PodRoute::Drain => {
                    if draining == Some(false) {
                        // In-flight invocations finish; nothing new is sent.
                        drop(entry.drain_environment(pod_name));
                    }
                }
            }
        }
        for id in known.keys() {
            if !pods.contains_key(&**id) {
                entry.remove_environment(id);
            }
        }
    }
}

/// Watches Functions and pods until `shutdown`; marks the gateway ready once
/// both caches are synced. Returns an error only if the watches end, so the
/// caller can exit and let Kubernetes restart the gateway.
pub async fn run(
    client: Client,
    config: KubernetesConfig,
    gateway: Arc<Gateway>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let apis: Vec<(Api<Function>, Api<Pod>)> = match &config.namespaces {
        Namespaces::All => vec![(Api::all(client.clone()), Api::all(client))],
        Namespaces::Listed(names) => names
            .iter()
            .map(|ns| {
                (
                    Api::namespaced(client.clone(), ns),
                    Api::namespaced(client.clone(), ns),
                )
            })
            .collect(),
    };
    // One Function and one pod reflector per namespace (a Role in each is
    // all the gateway needs), merged into one stream of changes.
    let mut stores = Vec::new();
    let mut streams = Vec::new();
    for (functions, pods) in apis {
        let (function_store, function_writer) = reflector::store();
        let (pod_store, pod_writer) = reflector::store();
        streams.push(
            reflector(
                function_writer,
                watcher(functions, watcher::Config::default()),
            )
            .default_backoff()
            .map_ok(|_| ())
            .boxed(),
        );
        streams.push(
            reflector(
                pod_writer,
                watcher(pods, watcher::Config::default().labels(FUNCTION_LABEL)),
            )
            .default_backoff()
            .map_ok(|_| ())
            .boxed(),
        );
        stores.push((function_store, pod_store));
    }
    let mut events = futures::stream::select_all(streams);
    let mut synced = false;
    tracing::info!(namespaces = %config.namespaces, "watching Functions and their pods");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            event = events.next() => match event {
                None => anyhow::bail!("the Function and Pod watches ended"),
                Some(Err(e)) => tracing::warn!(error = %e, "watch error; retrying with backoff"),
                Some(Ok(())) => {
                    if !synced {
                        let all_ready = stores.iter().all(|(f, p)| {
                            futures::FutureExt::now_or_never(f.wait_until_ready()).is_some()
                                && futures::FutureExt::now_or_never(p.wait_until_ready()).is_some()
                        });
                        if !all_ready {
                            continue;
                        }
                        synced = true;
                        tracing::info!("caches synced; serving");
                    }
                    let functions: Vec<_> = stores.iter().flat_map(|(f, _)| f.state()).collect();
                    let pods: Vec<_> = stores.iter().flat_map(|(_, p)| p.state()).collect();
                    sync(
                        gateway.registry(),
                        &functions,
                        &pods,
                        config.environment_port,
                    );
                    gateway.set_ready(true);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::DispatchConfig;
    use crate::routes::Ingress;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

    fn function(name: &str, max_scale: u32) -> Arc<Function> {
        let spec = serde_yaml::from_str(&format!(
            "handler: app.h\ncode: {{inline: x}}\nconcurrency: 2\nscaling: {{maxScale: {max_scale}}}\n"
        ))
        .expect("spec");
        let mut f = Function::new(name, spec);
        f.metadata.namespace = Some("default".into());
        Arc::new(f)
    }

    fn pod(
        name: &str,
        function: &str,
        ip: Option<&str>,
        ready: bool,
        terminating: bool,
    ) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                labels: Some([(FUNCTION_LABEL.to_string(), function.to_string())].into()),
                owner_references: Some(vec![OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "ReplicaSet".into(),
                    name: format!("fn-{function}-6d4cf56db6"),
                    controller: Some(true),
                    ..Default::default()
                }]),
                deletion_timestamp: terminating.then(|| Time(Default::default())),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus {
                pod_ip: ip.map(str::to_string),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        })
    }

    fn states(registry: &Registry, name: &str) -> Vec<(String, bool)> {
        let mut v: Vec<_> = registry
            .get(name)
            .expect("registered")
            .environment_states()
            .into_iter()
            .map(|(id, d)| (id.to_string(), d))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn routes_only_pods_the_function_owns() {
        let owned = pod("hello-1", "hello", Some("10.88.0.5"), true, false);
        assert!(pod_route(&owned, 8080).is_some());
        let mut stray = (*owned).clone();
        stray.metadata.owner_references = None;
        assert_eq!(pod_route(&stray, 8080), None, "a label alone is not enough");
        let mut other = (*owned).clone();
        other.metadata.owner_references.as_mut().expect("owners")[0].name =
            "fn-other-6d4cf56db6".into();
        assert_eq!(pod_route(&other, 8080), None);
        let mut not_controller = (*owned).clone();
        not_controller
            .metadata
            .owner_references
            .as_mut()
            .expect("owners")[0]
            .controller = None;
        assert_eq!(pod_route(&not_controller, 8080), None);
        let mut claimed = (*owned).clone();
        claimed.metadata.owner_references = Some(vec![OwnerReference {
            api_version: porchlight_core::names::API_VERSION.into(),
            kind: FUNCTION_KIND.into(),
            name: "hello".into(),
            controller: Some(true),
            ..Default::default()
        }]);
        assert!(
            pod_route(&claimed, 8080).is_some(),
            "owned by the Function itself"
        );
    }

    #[test]
    fn routes_only_ready_pods_with_an_ip() {
        let f = pod("a", "hello", Some("10.88.0.5"), true, false);
        assert_eq!(
            pod_route(&f, 8080),
            Some((
                "hello".into(),
                PodRoute::Routable {
                    base_url: "http://10.88.0.5:8080".into()
                }
            ))
        );
        let v6 = pod("a", "hello", Some("fd00::5"), true, false);
        assert!(
            matches!(pod_route(&v6, 8080), Some((_, PodRoute::Routable { base_url })) if base_url == "http://[fd00::5]:8080")
        );
        for p in [
            pod("a", "hello", None, true, false),
            pod("a", "hello", Some("10.88.0.5"), false, false),
            pod("a", "hello", Some("10.88.0.5"), true, true),
        ] {
            assert_eq!(pod_route(&p, 8080), Some(("hello".into(), PodRoute::Drain)));
        }
    }

    fn in_namespace<T: Clone + kube::Resource>(o: &Arc<T>, namespace: &str) -> Arc<T> {
        let mut o = (**o).clone();
        o.meta_mut().namespace = Some(namespace.into());
        Arc::new(o)
    }

    #[test]
    fn namespaces_keep_functions_of_the_same_name_apart() {
        let registry = Registry::new(DispatchConfig::default());
        let home = function("hello", 5);
        let team = in_namespace(&function("hello", 7), "team-b");
        let home_pod = pod("hello-1", "hello", Some("10.88.0.5"), true, false);
        let team_pod = in_namespace(
            &pod("hello-2", "hello", Some("10.88.0.6"), true, false),
            "team-b",
        );
        sync(&registry, &[home, team], &[home_pod, team_pod], 8080);
        let names: Vec<_> = registry
            .all()
            .iter()
            .map(|e| e.name().to_string())
            .collect();
        assert_eq!(names, vec!["hello", "team-b.hello"]);
        assert_eq!(states(&registry, "hello"), vec![("hello-1".into(), false)]);
        assert_eq!(
            states(&registry, "team-b.hello"),
            vec![("hello-2".into(), false)]
        );
        let team = registry.get("team-b.hello").expect("entry");
        assert_eq!(team.key(), &FunctionKey::new("team-b", "hello"));
        assert_eq!(team.settings().max_scale, 7);

        // A name with a dot would be ambiguous: not served.
        let dotted = function("team-b.hello", 5);
        sync(&registry, &[dotted], &[], 8080);
        assert!(registry.all().is_empty());
    }

    #[test]
    fn the_home_namespace_comes_first_and_star_means_all() {
        assert_eq!(
            Namespaces::new("default", &["team-b".into(), "default".into(), " ".into()]),
            Namespaces::Listed(vec!["default".into(), "team-b".into()])
        );
        assert_eq!(
            Namespaces::new("default", &["team-b".into(), "*".into()]),
            Namespaces::All
        );
        assert_eq!(
            Namespaces::new("default", &[]).to_string(),
            "namespace default"
        );
    }

    #[test]
    fn sync_follows_pods_through_their_life() {
        let registry = Registry::new(DispatchConfig::default());
        let fns = vec![function("hello", 5)];
        sync(&registry, &fns, &[], 8080);
        assert!(states(&registry, "hello").is_empty(), "registered at zero");

        let p1 = pod("hello-1", "hello", Some("10.88.0.5"), true, false);
        let p2 = pod("hello-2", "hello", None, false, false);
        sync(&registry, &fns, &[p1.clone(), p2], 8080);
        assert_eq!(states(&registry, "hello"), vec![("hello-1".into(), false)]);
        let entry = registry.get("hello").expect("entry");

        // Status-only updates (same spec) keep the entry and its environments.
        sync(&registry, &fns, std::slice::from_ref(&p1), 8080);
        assert!(Arc::ptr_eq(&entry, &registry.get("hello").expect("entry")));

        // Terminating: drained, still known; deleted: forgotten.
        let p1_terminating = pod("hello-1", "hello", Some("10.88.0.5"), true, true);
        sync(&registry, &fns, &[p1_terminating], 8080);
        assert_eq!(states(&registry, "hello"), vec![("hello-1".into(), true)]);
        sync(&registry, &fns, &[], 8080);
        assert!(states(&registry, "hello").is_empty());
    }

    #[test]
    fn desired_comes_from_the_function_status() {
        let registry = Registry::new(DispatchConfig::default());
        let desired = |r: &Registry| r.get("hello").expect("entry").status().desired;
        sync(&registry, &[function("hello", 5)], &[], 8080);
        assert_eq!(desired(&registry), 0, "no status yet");
        let mut scaled = (*function("hello", 5)).clone();
        scaled.status = Some(porchlight_api::FunctionStatus {
            desired_replicas: Some(3),
            ..Default::default()
        });
        sync(&registry, &[Arc::new(scaled)], &[], 8080);
        assert_eq!(desired(&registry), 3);
        sync(&registry, &[function("hello", 5)], &[], 8080);
        assert_eq!(desired(&registry), 0);
    }

    fn failing(name: &str, message: &str) -> Arc<Function> {
        let mut f = (*function(name, 5)).clone();
        f.status = Some(porchlight_api::FunctionStatus {
            conditions: vec![porchlight_api::function::FunctionCondition {
                type_: "Ready".into(),
                status: "False".into(),
                reason: Some("InitFailed".into()),
                message: Some(message.into()),
                last_transition_time: None,
            }],
            ..Default::default()
        });
        Arc::new(f)
    }

    #[test]
    fn init_failure_comes_from_the_ready_condition() {
        let body = init_failure(&failing(
            "hello",
            "Runtime.ImportModuleError: Unable to import module 'app': No module named 'x'",
        ))
        .expect("failure");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["errorType"], "Runtime.ImportModuleError");
        assert_eq!(
            v["errorMessage"],
            "Unable to import module 'app': No module named 'x'"
        );
        let body = init_failure(&failing("hello", "the runtime keeps exiting during init"))
            .expect("failure");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["errorType"], "Runtime.InitError");
        assert_eq!(v["errorMessage"], "the runtime keeps exiting during init");
        assert!(init_failure(&function("hello", 5)).is_none(), "no status");
    }

    #[tokio::test]
    async fn a_function_whose_init_fails_answers_at_once() {
        use crate::forwarded::Forwarded;
        use crate::gateway::{Gateway, GatewayConfig, TriggerKind};
        let gateway = Gateway::new(GatewayConfig::default());
        sync(gateway.registry(), &[function("hello", 5)], &[], 8080);
        let entry = gateway.registry().get("hello").expect("entry");
        // A caller waits for an environment (the function is at zero) ...
        let waiting = {
            let (gateway, entry) = (gateway.clone(), entry.clone());
            tokio::spawn(async move {
                gateway
                    .invoke(
                        &entry,
                        Bytes::from_static(b"{}"),
                        "r1",
                        TriggerKind::Invoke,
                        &Forwarded::new_trace(false),
                    )
                    .await
            })
        };
        for _ in 0..100 {
            if entry.load().queued == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(entry.load().queued, 1);
        // ... until the status says the init fails: then it gets the error.
        let broken = failing("hello", "Runtime.ExitError: exit status 1");
        sync(gateway.registry(), std::slice::from_ref(&broken), &[], 8080);
        let result = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("answered at once")
            .expect("task")
            .expect("a function error, not a gateway error");
        assert_eq!(result.function_error.as_deref(), Some("Unhandled"));
        let v: serde_json::Value = serde_json::from_slice(&result.body).expect("json");
        assert_eq!(v["errorType"], "Runtime.ExitError");
        // New callers get it without waiting.
        let again = gateway
            .invoke(
                &entry,
                Bytes::from_static(b"{}"),
                "r2",
                TriggerKind::Invoke,
                &Forwarded::new_trace(false),
            )
            .await
            .expect("function error");
        assert_eq!(again.function_error.as_deref(), Some("Unhandled"));
        // A Ready pod wins over the reported failure.
        let p = pod("hello-1", "hello", Some("10.88.0.5"), true, false);
        sync(gateway.registry(), &[broken], &[p], 8080);
        assert!(entry.current_init_failure().is_none());
    }

    #[test]
    fn spec_changes_apply_in_place_and_deleted_or_invalid_functions_go() {
        let registry = Registry::new(DispatchConfig::default());
        sync(
            &registry,
            &[function("hello", 5), function("other", 5)],
            &[],
            8080,
        );
        let before = registry.get("hello").expect("entry");
        sync(
            &registry,
            &[function("hello", 6), function("other", 5)],
            &[],
            8080,
        );
        let after = registry.get("hello").expect("entry");
        assert!(
            Arc::ptr_eq(&before, &after),
            "the same entry: its queue and waiters carry over"
        );
        assert_eq!(after.settings().max_scale, 6);

        let mut broken = (*function("other", 5)).clone();
        broken.spec.runtime = "cobol".into();
        sync(
            &registry,
            &[function("hello", 6), Arc::new(broken)],
            &[],
            8080,
        );
        assert!(
            registry.get("other").is_none(),
            "invalid specs are not served"
        );
        sync(&registry, &[], &[], 8080);
        assert!(registry.all().is_empty());
    }

    #[tokio::test]
    async fn capacity_is_the_function_concurrency() {
        let registry = Registry::new(DispatchConfig::default());
        let p = pod("hello-1", "hello", Some("10.88.0.5"), true, false);
        sync(&registry, &[function("hello", 5)], &[p], 8080);
        let entry = registry.get("hello").expect("entry");
        let soon = tokio::time::Instant::now() + std::time::Duration::from_millis(50);
        let first = entry.acquire(soon).await.expect("first slot");
        let second = entry.acquire(soon).await.expect("second slot");
        assert_eq!(
            first.environment().base_url.as_ref(),
            "http://10.88.0.5:8080"
        );
        assert!(
            entry.acquire(soon).await.is_err(),
            "concurrency 2: no third slot"
        );
        drop((first, second));
    }
}
