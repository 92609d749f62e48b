//! The Kubernetes objects a Function becomes: pure builders, no I/O.
//!
//! Each Function `NAME` gets a ConfigMap `fn-NAME-code` (inline code only), a
//! Deployment `fn-NAME` whose pods run the Porchlight runtime shim, and a
//! headless Service `fn-NAME`. All carry an owner reference to the Function
//! (`controller: true`), so deleting the Function deletes them.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapEnvSource, ConfigMapKeySelector, ConfigMapVolumeSource,
    Container, ContainerPort, EmptyDirVolumeSource, EnvFromSource, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, ResourceRequirements, SeccompProfile, SecretEnvSource, SecretKeySelector,
    SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use porchlight_api::{Function, FunctionSpec};

pub use porchlight_core::names::{CODE_HASH_ANNOTATION, FUNCTION_LABEL};
use porchlight_core::shim::{RESERVED_ENV_PREFIX, var};
/// `app.kubernetes.io/managed-by` value on everything the controller makes.
pub const MANAGED_BY: &str = "porchlight";
/// Port of the shim's invoke endpoint and probes.
pub const INVOKE_PORT: i32 = 8080;
/// Where the code is mounted in the environment.
pub const TASK_ROOT: &str = "/var/task";
/// User and group the environments run as (the runtime image's `sbx_user`).
pub const RUNTIME_UID: i64 = 10001;
/// The environment's single container.
pub const CONTAINER_NAME: &str = "runtime";

/// Deployment and Service name of a function.
pub use porchlight_core::names::workload_name;

/// Name of the ConfigMap holding a function's inline code.
pub fn code_config_map_name(function: &str) -> String {
    format!("fn-{function}-code")
}

/// The label selector of a function's environments, as a string.
pub fn selector(function: &str) -> String {
    format!("{FUNCTION_LABEL}={function}")
}

/// Settings of the controller that shape every workload.
#[derive(Clone, Debug)]
pub struct WorkloadSettings {
    /// Image of the runtime shim, used unless the code is an image of its own.
    pub runtime_image: String,
    /// Image of the runtime shim with Node.js, for `nodejs*` functions
    /// without an image of their own.
    pub node_runtime_image: String,
}

impl WorkloadSettings {
    /// The image a function runs when its code is not an image.
    pub fn runtime_image_for(&self, runtime: &str) -> &str {
        if porchlight_api::function::is_node_runtime(runtime) {
            &self.node_runtime_image
        } else {
            &self.runtime_image
        }
    }
}

/// Labels on every object of a function; the pod template carries the same.
pub fn labels(function: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (FUNCTION_LABEL.to_string(), function.to_string()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            MANAGED_BY.to_string(),
        ),
        ("app.kubernetes.io/name".to_string(), function.to_string()),
        (
            "app.kubernetes.io/component".to_string(),
            "function".to_string(),
        ),
    ])
}

fn selector_labels(function: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(FUNCTION_LABEL.to_string(), function.to_string())])
}

/// The owner reference every child carries.
pub fn owner_reference(f: &Function) -> Option<OwnerReference> {
    f.controller_owner_ref(&())
}

fn meta(f: &Function, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: f.namespace(),
        labels: Some(labels(&f.name_any())),
        owner_references: owner_reference(f).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// The Python module a handler names: everything before the last dot.
pub fn handler_module(handler: &str) -> &str {
    handler.rsplit_once('.').map(|(m, _)| m).unwrap_or(handler)
}

/// ConfigMap key and mounted path of inline code.
///
/// Python: key `<module>.py`, mounted at `<module with dots as slashes>.py` so
/// `pkg.mod.handler` imports. Node.js: mounted where the bundled bootstrap
/// loads the handler's module (`src/app.mjs` or `src/app.js`), key the same
/// path with dots for slashes. `provided`: the inline text is the `bootstrap`.
pub fn inline_code_file(f: &Function) -> (String, String) {
    if f.spec.runtime == "provided" {
        return ("bootstrap".to_string(), "bootstrap".to_string());
    }
    if porchlight_api::function::is_node_runtime(&f.spec.runtime)
        && let Some(path) = porchlight_api::function::node_inline_file(
            f.spec.handler.as_deref().unwrap_or("index.handler"),
            f.spec.code.inline.as_deref().unwrap_or(""),
        )
    {
        return (path.replace('/', "."), path);
    }
    let module = handler_module(
        f.spec
            .handler
            .as_deref()
            .unwrap_or("lambda_function.handler"),
    );
    (
        format!("{module}.py"),
        format!("{}.py", module.replace('.', "/")),
    )
}

/// The ConfigMap with the function's inline code, if the code is inline.
pub fn code_config_map(f: &Function) -> Option<ConfigMap> {
    let inline = f.spec.code.inline.as_ref()?;
    let (key, _) = inline_code_file(f);
    Some(ConfigMap {
        metadata: meta(f, code_config_map_name(&f.name_any())),
        data: Some(BTreeMap::from([(key, inline.clone())])),
        ..ConfigMap::default()
    })
}

/// A stable 64-bit FNV-1a hash, hex encoded. Stable across builds and Rust
/// versions (unlike `DefaultHasher`), so a controller upgrade does not roll
/// every function.
pub fn stable_hash<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain(std::iter::once(&0xffu8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// The hash of a function's code. `config_map_data` is the content of the
/// user's ConfigMap when the code lives there (so edits to it roll too).
pub fn code_hash(f: &Function, config_map_data: Option<&BTreeMap<String, String>>) -> String {
    let code = &f.spec.code;
    let mut parts: Vec<&[u8]> = vec![f.spec.runtime.as_bytes()];
    if let Some(inline) = &code.inline {
        parts.extend([b"inline".as_slice(), inline.as_bytes()]);
    }
    if let Some(cm) = &code.config_map {
        parts.extend([b"configMap".as_slice(), cm.name.as_bytes()]);
        for (k, v) in config_map_data.into_iter().flatten() {
            parts.extend([k.as_bytes(), v.as_bytes()]);
        }
    }
    if let Some(image) = &code.image {
        parts.extend([b"image".as_slice(), image.as_bytes()]);
    }
    stable_hash(parts)
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

fn http_probe(path: &str, period: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::Int(INVOKE_PORT),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(1),
        failure_threshold: Some(failure_threshold),
        success_threshold: Some(1),
        ..Probe::default()
    }
}

/// How long the kubelet waits between SIGTERM and SIGKILL: the shim's
/// shutdown grace (invocations in flight run to their timeout), then what it
/// takes to stop the runtime, plus a second of slack.
fn termination_grace_seconds(spec: &FunctionSpec) -> i64 {
    let grace = porchlight_core::shim::shutdown_grace_seconds(spec.timeout_seconds);
    i64::from(grace) + i64::from(porchlight_core::shim::SHUTDOWN_STOP_SECONDS) + 1
}

/// The environment variables of the shim, then the user's.
fn container_env(f: &Function) -> Vec<EnvVar> {
    let s = &f.spec;
    let shim = porchlight_core::ShimSettings {
        listen: Some(format!("0.0.0.0:{INVOKE_PORT}")),
        task_root: Some(TASK_ROOT.to_string()),
        // A failed init ends the container with the error as its termination
        // message: the kubelet retries the init with backoff and the
        // reconciler reports the error as InitFailed.
        exit_on_init_error: true,
        ..s.shim_settings(&f.name_any())
    };
    let mut out: Vec<EnvVar> = shim
        .to_env()
        .into_iter()
        .map(|(name, value)| env(name, value))
        .collect();
    // The environment's identity is its pod's name.
    out.push(EnvVar {
        name: var::ENVIRONMENT_ID.env.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".to_string(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    });
    // User variables may not override the shim's contract.
    out.extend(
        s.env
            .iter()
            .filter(|(k, _)| !k.starts_with(RESERVED_ENV_PREFIX))
            .map(|(k, v)| env(k, v.clone())),
    );
    // Values from Secrets and ConfigMaps: references only, the kubelet
    // reads them.
    out.extend(
        s.env_value_from
            .iter()
            .filter(|(k, _)| !k.starts_with(RESERVED_ENV_PREFIX))
            .map(|(k, source)| EnvVar {
                name: k.clone(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: source.secret_key_ref.as_ref().map(|r| SecretKeySelector {
                        name: r.name.clone(),
                        key: r.key.clone(),
                        optional: None,
                    }),
                    config_map_key_ref: source.config_map_key_ref.as_ref().map(|r| {
                        ConfigMapKeySelector {
                            name: r.name.clone(),
                            key: r.key.clone(),
                            optional: None,
                        }
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            }),
    );
    out
}

/// The container's `envFrom`: whole Secrets and ConfigMaps. Variables in
/// `env` (the shim's among them) win over these, as Kubernetes defines.
fn container_env_from(f: &Function) -> Option<Vec<EnvFromSource>> {
    let sources: Vec<EnvFromSource> = f
        .spec
        .env_from
        .iter()
        .map(|e| EnvFromSource {
            prefix: e.prefix.clone(),
            secret_ref: e.secret_ref.as_ref().map(|r| SecretEnvSource {
                name: r.name.clone(),
                optional: None,
            }),
            config_map_ref: e.config_map_ref.as_ref().map(|r| ConfigMapEnvSource {
                name: r.name.clone(),
                optional: None,
            }),
        })
        .collect();
    (!sources.is_empty()).then_some(sources)
}

/// The pod template's hash: the code's, and when the environment reads
/// Secrets or ConfigMaps, their resource versions (`None`: missing), so
/// that editing or creating one rolls the pods. Without them it is the
/// code hash unchanged.
pub fn pod_hash(code_hash: &str, sources: &[(String, Option<String>)]) -> String {
    if sources.is_empty() {
        return code_hash.to_string();
    }
    let parts: Vec<String> = std::iter::once(code_hash.to_string())
        .chain(
            sources
                .iter()
                .map(|(what, version)| format!("{what}={}", version.as_deref().unwrap_or("-"))),
        )
        .collect();
    stable_hash(parts.iter().map(|p| p.as_bytes()))
}

/// CPU request proportional to memory, as Lambda does (1769 MiB = one vCPU).
fn cpu_request_millis(memory_mib: u32) -> u32 {
    (memory_mib.saturating_mul(1000) / 1769).max(50)
}

/// The function's Deployment. `replicas` is set only when the Deployment is
/// created: afterwards the autoscaler owns `spec.replicas`.
pub fn deployment(
    f: &Function,
    settings: &WorkloadSettings,
    code_hash: &str,
    replicas: Option<i32>,
) -> Deployment {
    let name = f.name_any();
    let s = &f.spec;
    let image = s
        .code
        .image
        .clone()
        .unwrap_or_else(|| settings.runtime_image_for(&s.runtime).to_string());

    let mut volumes = vec![Volume {
        name: "tmp".to_string(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity("512Mi".to_string())),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "tmp".to_string(),
        mount_path: "/tmp".to_string(),
        ..VolumeMount::default()
    }];
    let code_source = match (&s.code.inline, &s.code.config_map) {
        (Some(_), _) => {
            let (key, path) = inline_code_file(f);
            Some((
                code_config_map_name(&name),
                Some(vec![KeyToPath {
                    key,
                    path,
                    ..KeyToPath::default()
                }]),
            ))
        }
        (None, Some(cm)) => Some((cm.name.clone(), None)),
        (None, None) => None,
    };
    if let Some((config_map, items)) = code_source {
        volumes.push(Volume {
            name: "code".to_string(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map,
                items,
                // 0755: a `provided` bootstrap must be executable.
                default_mode: Some(0o755),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "code".to_string(),
            mount_path: TASK_ROOT.to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }

    let memory = Quantity(format!("{}Mi", s.memory_mib));
    let container = Container {
        name: CONTAINER_NAME.to_string(),
        image: Some(image),
        image_pull_policy: Some("IfNotPresent".to_string()),
        ports: Some(vec![ContainerPort {
            name: Some("invoke".to_string()),
            container_port: INVOKE_PORT,
            protocol: Some("TCP".to_string()),
            ..ContainerPort::default()
        }]),
        env: Some(container_env(f)),
        env_from: container_env_from(f),
        volume_mounts: Some(mounts),
        readiness_probe: Some(http_probe("/ready", 1, 1)),
        liveness_probe: Some(http_probe("/live", 10, 3)),
        resources: Some(ResourceRequirements {
            limits: Some(BTreeMap::from([("memory".to_string(), memory.clone())])),
            requests: Some(BTreeMap::from([
                ("memory".to_string(), memory),
                (
                    "cpu".to_string(),
                    Quantity(format!("{}m", cpu_request_millis(s.memory_mib))),
                ),
            ])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        // The shim's init error ends up in the pod status when it exits.
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        ..Container::default()
    };

    let pod_labels = labels(&name);
    Deployment {
        metadata: meta(f, workload_name(&name)),
        spec: Some(DeploymentSpec {
            replicas,
            selector: LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..LabelSelector::default()
            },
            revision_history_limit: Some(3),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_string()),
                // Keep capacity while code rolls: surge, never go below.
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("25%".to_string())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(
                        CODE_HASH_ANNOTATION.to_string(),
                        code_hash.to_string(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    enable_service_links: Some(false),
                    automount_service_account_token: Some(false),
                    termination_grace_period_seconds: Some(termination_grace_seconds(s)),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        // The runtime image's user (`sbx_user`); images of
                        // their own run as this user too.
                        run_as_user: Some(RUNTIME_UID),
                        run_as_group: Some(RUNTIME_UID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_string(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// The headless Service of a function (the gateway routes to pod IPs).
pub fn service(f: &Function) -> Service {
    let name = f.name_any();
    Service {
        metadata: meta(f, workload_name(&name)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            selector: Some(selector_labels(&name)),
            ports: Some(vec![ServicePort {
                name: Some("invoke".to_string()),
                port: INVOKE_PORT,
                target_port: Some(IntOrString::Int(INVOKE_PORT)),
                protocol: Some("TCP".to_string()),
                ..ServicePort::default()
            }]),
            publish_not_ready_addresses: Some(false),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn function(yaml: &str) -> Function {
        let mut f: Function = serde_yaml::from_str(yaml).expect("valid function yaml");
        f.metadata.uid = Some("uid-1".into());
        f
    }

    const HELLO: &str = r#"
apiVersion: porchlight.dev/v1alpha1
kind: Function
metadata: {name: hello, namespace: demo}
spec:
  runtime: python3.12
  handler: pkg.app.lambda_handler
  timeoutSeconds: 30
  memoryMiB: 256
  env: {GREETING: hi, PORCHLIGHT_LISTEN: "evil"}
  code:
    inline: |
      def lambda_handler(event, context):
          return "hi"
"#;

    #[test]
    fn secrets_reach_the_pod_as_references_never_as_values() {
        let f = function(
            r#"
apiVersion: porchlight.dev/v1alpha1
kind: Function
metadata: {name: db, namespace: demo}
spec:
  handler: app.h
  code: {inline: "x = 1"}
  env: {PLAIN: visible}
  envValueFrom:
    DB_PASSWORD: {secretKeyRef: {name: db, key: password}}
    DB_HOST: {configMapKeyRef: {name: settings, key: host}}
    PORCHLIGHT_LISTEN: {secretKeyRef: {name: evil, key: listen}}
  envFrom:
    - secretRef: {name: api-keys}
    - {configMapRef: {name: flags}, prefix: FLAG_}
"#,
        );
        let settings = WorkloadSettings {
            runtime_image: "img:1".into(),
            node_runtime_image: "node-img:1".into(),
        };
        let d = deployment(&f, &settings, "h", Some(1));
        let rendered = serde_json::to_string(&d).expect("json");
        let c = &d.spec.expect("spec").template.spec.expect("pod").containers[0];
        let env = c.env.as_ref().expect("env");
        let by_name = |n: &str| env.iter().find(|e| e.name == n).cloned();
        let password = by_name("DB_PASSWORD").expect("DB_PASSWORD");
        assert_eq!(password.value, None);
        let key = password
            .value_from
            .expect("from")
            .secret_key_ref
            .expect("secret");
        assert_eq!((key.name.as_str(), key.key.as_str()), ("db", "password"));
        let host = by_name("DB_HOST")
            .expect("DB_HOST")
            .value_from
            .expect("from");
        assert_eq!(host.config_map_key_ref.expect("cm").name, "settings");
        assert_eq!(
            by_name("PLAIN").and_then(|e| e.value).as_deref(),
            Some("visible")
        );
        assert!(
            !rendered.contains("\"evil\""),
            "a reserved variable cannot come from a Secret either"
        );
        let from = c.env_from.as_ref().expect("envFrom");
        assert_eq!(
            from[0].secret_ref.as_ref().expect("secret").name,
            "api-keys"
        );
        assert_eq!(from[1].prefix.as_deref(), Some("FLAG_"));
        assert_eq!(f.spec.referenced_secrets(), vec!["api-keys", "db", "evil"]);
        assert_eq!(f.spec.referenced_config_maps(), vec!["flags", "settings"]);
    }

    #[test]
    fn node_functions_run_the_node_image_with_their_module_file() {
        let f = function(
            r#"
apiVersion: porchlight.dev/v1alpha1
kind: Function
metadata: {name: hello-node, namespace: default}
spec:
  runtime: nodejs20.x
  handler: src/app.handler
  code: {inline: "export const handler = async () => 1;"}
"#,
        );
        assert_eq!(
            inline_code_file(&f),
            ("src.app.mjs".to_string(), "src/app.mjs".to_string())
        );
        let settings = WorkloadSettings {
            runtime_image: "img:1".into(),
            node_runtime_image: "node-img:1".into(),
        };
        let d = deployment(&f, &settings, "h", Some(1));
        let pod = d.spec.expect("spec").template.spec.expect("pod");
        assert_eq!(pod.containers[0].image.as_deref(), Some("node-img:1"));
        assert_eq!(
            deployment(&function(HELLO), &settings, "h", Some(1))
                .spec
                .expect("spec")
                .template
                .spec
                .expect("pod")
                .containers[0]
                .image
                .as_deref(),
            Some("img:1"),
            "python functions keep the default runtime image"
        );
        let map = code_config_map(&f).expect("inline code");
        assert!(map.data.expect("data").contains_key("src.app.mjs"));
    }

    #[test]
    fn the_pod_hash_follows_the_versions_of_the_secrets_it_reads() {
        assert_eq!(pod_hash("code", &[]), "code", "no sources: the code hash");
        let v = |n: &str| vec![("secret/db".to_string(), Some(n.to_string()))];
        assert_eq!(pod_hash("code", &v("7")), pod_hash("code", &v("7")));
        assert_ne!(
            pod_hash("code", &v("7")),
            pod_hash("code", &v("8")),
            "edited"
        );
        assert_ne!(
            pod_hash("code", &v("7")),
            pod_hash("code", &[("secret/db".to_string(), None)]),
            "created or deleted"
        );
        assert_ne!(pod_hash("code", &v("7")), pod_hash("other", &v("7")));
    }

    #[test]
    fn inline_code_becomes_module_file() {
        let f = function(HELLO);
        let cm = code_config_map(&f).expect("inline code");
        assert_eq!(cm.metadata.name.as_deref(), Some("fn-hello-code"));
        assert!(cm.data.expect("data").contains_key("pkg.app.py"));
        assert_eq!(inline_code_file(&f).1, "pkg/app.py");
    }

    #[test]
    fn pods_drain_invocations_to_their_timeout_before_the_kubelet_kills_them() {
        let mut f = function(HELLO);
        f.spec.timeout_seconds = 60;
        let d = deployment(
            &f,
            &WorkloadSettings {
                runtime_image: "img:1".into(),
                node_runtime_image: "node-img:1".into(),
            },
            "h",
            Some(1),
        );
        let pod = d.spec.expect("spec").template.spec.expect("pod");
        let env: BTreeMap<_, _> = pod.containers[0]
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.clone()))
            .collect();
        let grace: i64 = env["PORCHLIGHT_SHUTDOWN_GRACE_SECONDS"]
            .as_deref()
            .expect("the shim's shutdown grace is set")
            .parse()
            .expect("a number");
        assert!(grace > 60, "an invocation of 60 s fits the drain: {grace}");
        let kill_after = pod.termination_grace_period_seconds.expect("grace period");
        assert!(
            kill_after >= grace + i64::from(porchlight_core::shim::SHUTDOWN_STOP_SECONDS),
            "the kubelet waits for the drain and the runtime's stop: {kill_after} vs {grace}"
        );
    }

    #[test]
    fn pods_freeze_their_runtime_unless_the_function_says_not_to() {
        let freeze_env = |f: &Function| {
            let d = deployment(
                f,
                &WorkloadSettings {
                    runtime_image: "img:1".into(),
                    node_runtime_image: "node-img:1".into(),
                },
                "h",
                Some(1),
            );
            let pod = d.spec.expect("spec").template.spec.expect("pod");
            pod.containers[0]
                .env
                .iter()
                .flatten()
                .find(|e| e.name == "PORCHLIGHT_FREEZE")
                .map(|e| e.value.clone())
        };
        let f = function(HELLO);
        assert!(f.spec.freeze, "on by default");
        assert_eq!(freeze_env(&f), Some(Some("true".to_string())));
        let off = function(&HELLO.replace(
            "  timeoutSeconds: 30",
            "  timeoutSeconds: 30\n  freeze: false",
        ));
        assert!(!off.spec.freeze);
        // The shim's own default is not to freeze: no variable at all.
        assert_eq!(freeze_env(&off), None);
    }

    #[test]
    fn deployment_has_contract_env_probes_and_security() {
        let f = function(HELLO);
        let d = deployment(
            &f,
            &WorkloadSettings {
                runtime_image: "img:1".into(),
                node_runtime_image: "node-img:1".into(),
            },
            "h",
            Some(0),
        );
        let spec = d.spec.expect("spec");
        assert_eq!(spec.replicas, Some(0));
        let pod = spec.template.spec.expect("pod");
        assert_eq!(pod.termination_grace_period_seconds, Some(36));
        assert_eq!(pod.enable_service_links, Some(false));
        assert_eq!(pod.automount_service_account_token, Some(false));
        let c = &pod.containers[0];
        assert_eq!(c.name, "runtime");
        assert_eq!(c.image.as_deref(), Some("img:1"));
        let env: BTreeMap<_, _> = c
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.clone()))
            .collect();
        assert_eq!(env["PORCHLIGHT_LISTEN"].as_deref(), Some("0.0.0.0:8080"));
        assert_eq!(
            env["PORCHLIGHT_HANDLER"].as_deref(),
            Some("pkg.app.lambda_handler")
        );
        assert_eq!(env["PORCHLIGHT_MEMORY_MIB"].as_deref(), Some("256"));
        assert_eq!(
            env["PORCHLIGHT_ENVIRONMENT_ID"], None,
            "from the downward API"
        );
        assert_eq!(env["GREETING"].as_deref(), Some("hi"));
        assert_eq!(
            c.env
                .iter()
                .flatten()
                .filter(|e| e.name == "PORCHLIGHT_LISTEN")
                .count(),
            1
        );
        let sc = c.security_context.as_ref().expect("security context");
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        let probe = c.readiness_probe.as_ref().expect("readiness");
        assert_eq!(probe.period_seconds, Some(1));
        let limits = c
            .resources
            .as_ref()
            .and_then(|r| r.limits.clone())
            .expect("limits");
        assert_eq!(limits["memory"], Quantity("256Mi".into()));
        let owner = &d.metadata.owner_references.expect("owner")[0];
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.kind, "Function");
    }

    #[test]
    fn image_code_uses_its_image_and_mounts_no_code() {
        let mut f = function(HELLO);
        f.spec.code.inline = None;
        f.spec.code.image = Some("me/fn:2".into());
        assert!(code_config_map(&f).is_none());
        let d = deployment(
            &f,
            &WorkloadSettings {
                runtime_image: "img:1".into(),
                node_runtime_image: "node-img:1".into(),
            },
            "h",
            None,
        );
        let pod = d.spec.and_then(|s| s.template.spec).expect("pod");
        assert_eq!(pod.containers[0].image.as_deref(), Some("me/fn:2"));
        assert!(pod.volumes.iter().flatten().all(|v| v.name != "code"));
    }

    #[test]
    fn code_hash_changes_with_code_only() {
        let f = function(HELLO);
        let mut g = f.clone();
        g.spec.memory_mib = 512;
        assert_eq!(code_hash(&f, None), code_hash(&g, None));
        g.spec.code.inline = Some("def lambda_handler(e, c): return 1".into());
        assert_ne!(code_hash(&f, None), code_hash(&g, None));
        assert_eq!(
            stable_hash([b"a".as_slice()]),
            stable_hash([b"a".as_slice()])
        );
    }
}
