//! What the reconciler knows about the objects it owns, without asking the API.
//!
//! The controller already watches its Deployments, Services and ConfigMaps to
//! be woken when they change; these watches also fill reflector stores, so a
//! reconcile reads the current object from memory instead of a GET. Every
//! object the reconciler applies carries [`APPLIED_HASH`], the hash of what it
//! applied; when the cached object carries the hash of what it would apply now,
//! the apply is skipped. A healthy Function's periodic resync therefore costs
//! no API call at all, and a new Function costs one write per object.
//!
//! The stores hold trimmed objects: no managed fields anywhere, no pod template
//! in Deployments (the reconciler needs their replicas and status only), and
//! only the metadata of Services and ConfigMaps (inline code can be large).

use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use porchlight_api::Function;
use serde::Serialize;

use crate::resources;

/// Annotation on every object the reconciler applies: the hash of that object
/// as the reconciler rendered it (without this annotation).
pub use porchlight_core::names::APPLIED_HASH_ANNOTATION as APPLIED_HASH;

/// Readers of the owned-object stores.
#[derive(Clone)]
pub struct OwnedCaches {
    /// Deployments, without pod template or managed fields.
    pub deployments: Store<Deployment>,
    /// Services, metadata only.
    pub services: Store<PartialObjectMeta<Service>>,
    /// ConfigMaps, metadata only.
    pub config_maps: Store<PartialObjectMeta<ConfigMap>>,
    /// Every Secret's metadata (never its data: the watch asks for metadata
    /// only), for the versions of the Secrets Functions' environments read.
    pub secrets: Store<PartialObjectMeta<Secret>>,
}

/// The writing halves, fed by [`watch_owned`] (or by hand in tests).
pub struct OwnedWriters {
    /// Deployments.
    pub deployments: reflector::store::Writer<Deployment>,
    /// Services.
    pub services: reflector::store::Writer<PartialObjectMeta<Service>>,
    /// ConfigMaps.
    pub config_maps: reflector::store::Writer<PartialObjectMeta<ConfigMap>>,
    /// Secrets (metadata).
    pub secrets: reflector::store::Writer<PartialObjectMeta<Secret>>,
}

/// A new set of empty stores.
pub fn owned_caches() -> (OwnedCaches, OwnedWriters) {
    let (deployments, dw) = reflector::store();
    let (services, sw) = reflector::store();
    let (config_maps, cw) = reflector::store();
    let (secrets, xw) = reflector::store();
    (
        OwnedCaches {
            deployments,
            services,
            config_maps,
            secrets,
        },
        OwnedWriters {
            deployments: dw,
            services: sw,
            config_maps: cw,
            secrets: xw,
        },
    )
}

impl OwnedCaches {
    /// Waits until every store has its first full list (a no-op afterwards).
    pub async fn wait_until_ready(&self) {
        // An error means the writer was dropped: the watch is gone and the
        // controller is shutting down; reconciling from the API is still right.
        let _ = self.deployments.wait_until_ready().await;
        let _ = self.services.wait_until_ready().await;
        let _ = self.config_maps.wait_until_ready().await;
    }

    /// The cached Deployment `name` in `ns`.
    pub fn deployment(&self, ns: &str, name: &str) -> Option<Arc<Deployment>> {
        self.deployments.get(&ObjectRef::new(name).within(ns))
    }

    /// The applied hash of the cached Service `name` in `ns`.
    pub fn service_hash(&self, ns: &str, name: &str) -> Option<String> {
        let svc = self.services.get(&ObjectRef::new(name).within(ns))?;
        applied_hash(&svc.metadata).map(str::to_string)
    }

    /// The resource version of Secret `name` in `ns` (None: no such Secret),
    /// once the Secret watch has listed them all.
    pub async fn secret_version(&self, ns: &str, name: &str) -> Option<String> {
        // Bounded: a watch that cannot list (RBAC) must not stall reconciles.
        let listed = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            self.secrets.wait_until_ready(),
        )
        .await;
        if !matches!(listed, Ok(Ok(()))) {
            tracing::warn!(
                namespace = ns,
                secret = name,
                "the Secret watch has not listed yet; reading it as missing"
            );
        }
        self.secrets
            .get(&ObjectRef::new(name).within(ns))
            .and_then(|s| s.metadata.resource_version.clone())
    }

    /// The applied hash of the cached ConfigMap `name` in `ns`.
    pub fn config_map_hash(&self, ns: &str, name: &str) -> Option<String> {
        let cm = self.config_maps.get(&ObjectRef::new(name).within(ns))?;
        applied_hash(&cm.metadata).map(str::to_string)
    }
}

/// The [`APPLIED_HASH`] annotation of an object.
pub fn applied_hash(meta: &ObjectMeta) -> Option<&str> {
    meta.annotations
        .as_ref()?
        .get(APPLIED_HASH)
        .map(String::as_str)
}

/// Hashes `obj` as rendered and stores the hash in its [`APPLIED_HASH`] annotation.
pub fn stamp<K: Resource + Serialize>(obj: &mut K) -> String {
    obj.annotations_mut().remove(APPLIED_HASH);
    let rendered = serde_json::to_vec(&*obj).unwrap_or_default();
    let hash = resources::stable_hash([rendered.as_slice()]);
    obj.annotations_mut()
        .insert(APPLIED_HASH.to_string(), hash.clone());
    hash
}

/// The Function an environment pod belongs to (from its
/// `porchlight.dev/function` label), so that a pod's changes (an init that
/// crashes, a pod stuck pending) reach the Function's status at once.
pub fn function_of_pod(pod: &PartialObjectMeta<Pod>) -> Option<ObjectRef<Function>> {
    let name = pod.labels().get(resources::FUNCTION_LABEL)?;
    let ns = pod.namespace()?;
    Some(ObjectRef::new(name).within(&ns))
}

/// The Functions whose code lives in the user's ConfigMap `cm`, so that an
/// edit to it rolls their environments at once (the code hash on the pod
/// template covers its data). The controller's own ConfigMaps never match.
pub fn functions_using_config_map(
    functions: &Store<Function>,
    cm: &PartialObjectMeta<ConfigMap>,
) -> Vec<ObjectRef<Function>> {
    let owned = cm
        .labels()
        .get("app.kubernetes.io/managed-by")
        .is_some_and(|v| v == resources::MANAGED_BY);
    let (Some(ns), false) = (cm.namespace(), owned) else {
        return Vec::new();
    };
    let name = cm.name_any();
    functions
        .state()
        .iter()
        .filter(|f| {
            f.namespace().as_deref() == Some(ns.as_str())
                && (f
                    .spec
                    .code
                    .config_map
                    .as_ref()
                    .is_some_and(|c| c.name == name)
                    || f.spec.referenced_config_maps().contains(&name.as_str()))
        })
        .map(|f| ObjectRef::from_obj(&**f))
        .collect()
}

/// The Functions whose environment reads Secret `secret`, so that an edit
/// to it rolls their pods.
pub fn functions_using_secret(
    functions: &Store<Function>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<Function>> {
    let (Some(ns), name) = (secret.namespace(), secret.name_any()) else {
        return Vec::new();
    };
    functions
        .state()
        .iter()
        .filter(|f| {
            f.namespace().as_deref() == Some(ns.as_str())
                && f.spec.referenced_secrets().contains(&name.as_str())
        })
        .map(|f| ObjectRef::from_obj(&**f))
        .collect()
}

/// The metadata of every Secret, reflected into `writer`; yields the touched
/// ones, for `Controller::watches_stream`.
fn watch_secrets(
    client: &Client,
    writer: reflector::store::Writer<PartialObjectMeta<Secret>>,
) -> Touched<PartialObjectMeta<Secret>> {
    // An Api of PartialObjectMeta asks the API server for metadata only: no
    // Secret's data ever reaches the controller.
    watcher(
        Api::<PartialObjectMeta<Secret>>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(trim_meta)
    .reflect(writer)
    .touched_objects()
    .boxed()
}

/// What the Deployment store keeps of a Deployment.
pub fn trim_deployment(d: &mut Deployment) {
    d.metadata.managed_fields = None;
    if let Some(spec) = d.spec.as_mut() {
        spec.template = Default::default();
    }
}

fn trim_meta<K>(m: &mut PartialObjectMeta<K>) {
    m.metadata.managed_fields = None;
}

/// A stream of the objects a watch saw change.
pub type Touched<K> = BoxStream<'static, Result<K, watcher::Error>>;

/// The streams of [`watch_owned`].
pub struct Watches {
    /// Owned Deployments.
    pub deployments: Touched<Deployment>,
    /// Owned Services.
    pub services: Touched<PartialObjectMeta<Service>>,
    /// Owned ConfigMaps.
    pub config_maps: Touched<PartialObjectMeta<ConfigMap>>,
    /// Every Secret (metadata).
    pub secrets: Touched<PartialObjectMeta<Secret>>,
}

/// The owned-object watches (filtered by `config`) and the Secret metadata
/// watch (every Secret), reflected into `writers`; each stream yields the
/// touched objects, ready for `Controller::owns_stream` / `watches_stream`.
pub fn watch_owned(client: &Client, config: watcher::Config, writers: OwnedWriters) -> Watches {
    let secrets = watch_secrets(client, writers.secrets);
    let deployments = watcher(Api::<Deployment>::all(client.clone()), config.clone())
        .default_backoff()
        .modify(trim_deployment)
        .reflect(writers.deployments)
        .touched_objects()
        .boxed();
    let services = watcher(
        Api::<PartialObjectMeta<Service>>::all(client.clone()),
        config.clone(),
    )
    .default_backoff()
    .modify(trim_meta)
    .reflect(writers.services)
    .touched_objects()
    .boxed();
    let config_maps = watcher(
        Api::<PartialObjectMeta<ConfigMap>>::all(client.clone()),
        config,
    )
    .default_backoff()
    .modify(trim_meta)
    .reflect(writers.config_maps)
    .touched_objects()
    .boxed();
    Watches {
        deployments,
        services,
        config_maps,
        secrets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn stamp_is_stable_and_ignores_its_own_annotation() {
        let mut cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some("fn-hello-code".into()),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([("app.py".into(), "x = 1".into())])),
            ..ConfigMap::default()
        };
        let first = stamp(&mut cm);
        assert_eq!(applied_hash(&cm.metadata), Some(first.as_str()));
        assert_eq!(stamp(&mut cm), first, "re-stamping gives the same hash");
        cm.data = Some(BTreeMap::from([("app.py".into(), "x = 2".into())]));
        assert_ne!(stamp(&mut cm), first, "new content, new hash");
    }

    #[test]
    fn user_config_maps_map_to_the_functions_that_use_them() {
        let (store, mut writer) = reflector::store::<Function>();
        let function = |name: &str, ns: &str, code: &str| {
            let mut f: Function = serde_yaml::from_str(&format!(
                "apiVersion: porchlight.dev/v1alpha1\nkind: Function\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{handler: app.h, code: {code}}}\n"
            ))
            .expect("function");
            f.metadata.uid = Some(name.into());
            f
        };
        for f in [
            function("a", "demo", "{configMap: {name: shared}}"),
            function("b", "demo", "{configMap: {name: shared}}"),
            function("c", "other", "{configMap: {name: shared}}"),
            function("d", "demo", "{inline: x}"),
        ] {
            writer.apply_watcher_event(&watcher::Event::Apply(f));
        }
        let mut cm: PartialObjectMeta<ConfigMap> = PartialObjectMeta::default();
        cm.metadata.name = Some("shared".into());
        cm.metadata.namespace = Some("demo".into());
        let mut names: Vec<String> = functions_using_config_map(&store, &cm)
            .into_iter()
            .map(|r| r.name)
            .collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        cm.metadata.labels = Some(BTreeMap::from([(
            "app.kubernetes.io/managed-by".to_string(),
            resources::MANAGED_BY.to_string(),
        )]));
        assert!(functions_using_config_map(&store, &cm).is_empty());
    }

    #[test]
    fn pods_map_to_their_function() {
        let mut pod: PartialObjectMeta<Pod> = PartialObjectMeta::default();
        pod.metadata.namespace = Some("demo".into());
        assert_eq!(function_of_pod(&pod), None, "no label, no Function");
        pod.metadata.labels = Some(BTreeMap::from([(
            resources::FUNCTION_LABEL.to_string(),
            "hello".to_string(),
        )]));
        assert_eq!(
            function_of_pod(&pod),
            Some(ObjectRef::new("hello").within("demo"))
        );
    }

    #[test]
    fn trimmed_deployments_keep_replicas_and_status() {
        let mut d = Deployment {
            spec: Some(k8s_openapi::api::apps::v1::DeploymentSpec {
                replicas: Some(3),
                template: k8s_openapi::api::core::v1::PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        name: Some("x".into()),
                        ..ObjectMeta::default()
                    }),
                    spec: None,
                },
                ..Default::default()
            }),
            status: Some(k8s_openapi::api::apps::v1::DeploymentStatus {
                ready_replicas: Some(2),
                ..Default::default()
            }),
            ..Deployment::default()
        };
        d.metadata.managed_fields = Some(vec![Default::default()]);
        trim_deployment(&mut d);
        assert!(d.metadata.managed_fields.is_none());
        let spec = d.spec.as_ref().expect("spec");
        assert_eq!(spec.replicas, Some(3));
        assert!(spec.template.metadata.is_none());
        assert_eq!(d.status.and_then(|s| s.ready_replicas), Some(2));
    }
}
