//! The `Function` custom resource (`porchlight.dev/v1alpha1`).
//!
//! The same YAML is read by the controller from the API server and by the
//! gateway's local mode from a directory, so the types, defaults and
//! validation live here, once.

use std::collections::BTreeMap;
use std::time::Duration;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::duration::parse_duration;
pub use porchlight_core::autoscaler::ScalingSettings;
pub use porchlight_core::schedule::Schedule;

/// A function: code plus the settings of its execution environments.
// `printcolumn(type_ = ...)` repeats by design; clippy reads it as a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "porchlight.dev",
    version = "v1alpha1",
    kind = "Function",
    namespaced,
    shortname = "fn",
    category = "porchlight",
    status = "FunctionStatus",
    derive = "PartialEq",
    doc = "A Lambda-style function: idle until an event arrives, scaled on demand, back to zero when idle.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Runtime", type_ = "string", json_path = ".spec.runtime"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desiredReplicas"
    ),
    printcolumn(
        name = "Concurrency",
        type_ = "integer",
        json_path = ".status.observedConcurrency",
        description = "Events in flight plus queued, as last reported by the gateways"
    ),
    printcolumn(
        name = "Keep-Alive",
        type_ = "string",
        json_path = ".status.keepAlive.mode",
        priority = 1
    ),
    printcolumn(
        name = "Next-Prewarm",
        type_ = "string",
        json_path = ".status.keepAlive.nextPrewarm",
        priority = 1
    ),
    printcolumn(
        name = "URL",
        type_ = "string",
        json_path = ".status.url",
        priority = 1
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].message",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("!has(self.scaling) || !has(self.scaling.maxScale) || !has(self.scaling.minScale) || self.scaling.maxScale >= self.scaling.minScale").message("spec.scaling.maxScale must be greater than or equal to spec.scaling.minScale"))]
#[serde(rename_all = "camelCase")]
pub struct FunctionSpec {
    /// Language runtime: `python3.12` (any `python3.x`) runs the bundled Python
    /// bootstrap; `nodejs18.x`, `nodejs20.x` and `nodejs22.x` run the bundled
    /// Node.js bootstrap (with the Node.js of the runtime image); `provided`
    /// runs the `bootstrap` executable in the code.
    #[serde(default = "default_runtime")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self == 'provided' || self.matches('^python3\\\\.[0-9]+$') || self in ['nodejs18.x', 'nodejs20.x', 'nodejs22.x']").message("spec.runtime must be 'provided', 'python3.N', 'nodejs18.x', 'nodejs20.x' or 'nodejs22.x'"))]
    pub runtime: String,

    /// Handler, e.g. `app.lambda_handler` (module `app`, function `lambda_handler`),
    /// or for Node.js `index.handler` / `src/app.handler`. Required for
    /// `python3.x` and `nodejs*`; passed as `_HANDLER` to custom bootstraps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,

    /// Where the code comes from: exactly one of `inline`, `configMap`, `image`, `path`.
    pub code: FunctionCode,

    /// Environment variables for the runtime process.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,

    /// Environment variables whose values live in a Secret or ConfigMap of
    /// the Function's namespace: `NAME: {secretKeyRef: {name, key}}` or
    /// `{configMapKeyRef: {name, key}}`. The pod reads them; their values
    /// are never copied into the Function, its status, Events or the
    /// gateway's answers. Editing the Secret or ConfigMap rolls the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env_value_from: BTreeMap<String, EnvValueSource>,

    /// Every key of a Secret or ConfigMap as environment variables
    /// (`[{secretRef: {name}}, {configMapRef: {name}, prefix: APP_}]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub env_from: Vec<EnvFromSource>,

    /// Per-invocation timeout in seconds (Lambda: 1 to 900, default 3).
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 1, max = 900), extend("format" = "int32"))]
    pub timeout_seconds: u32,

    /// Memory of one execution environment in MiB (128 to 10240).
    #[serde(default = "default_memory_mib", rename = "memoryMiB")]
    #[schemars(range(min = 128, max = 10240), extend("format" = "int32"))]
    pub memory_mib: u32,

    /// Events one execution environment handles at once (Lambda: 1).
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 1000), extend("format" = "int32"))]
    pub concurrency: u32,

    /// Freeze an execution environment between invocations, as Lambda does
    /// (default `true`): once the runtime asks for its next event and none
    /// is waiting, every process of the runtime is stopped (SIGSTOP), so
    /// background threads, timers and child processes do not run while the
    /// environment is idle; it is thawed (SIGCONT) before the next event is
    /// delivered and before the environment stops, so SIGTERM handlers still
    /// run. Set `false` for a function whose background work must keep
    /// running between invocations (a heartbeat, a connection keep-alive, a
    /// flush on a timer).
    #[serde(default = "default_freeze")]
    pub freeze: bool,

    /// Autoscaling bounds and windows.
    #[serde(default)]
    pub scaling: Scaling,

    /// Warm environments requested through the scale subresource
    /// (`kubectl scale fn NAME --replicas N`). Acts as a floor, like
    /// provisioned concurrency; the autoscaler may go above it and
    /// `minScale`/`maxScale` still bound it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,

    /// Event sources besides direct invocation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub triggers: Vec<Trigger>,

    /// Asynchronous invocations (Lambda's event invoke config): retries,
    /// the age after which an event is given up, and where records of
    /// successes and failures go. Unset values take the gateway's defaults.
    #[serde(rename = "async", default, skip_serializing_if = "Option::is_none")]
    pub async_config: Option<AsyncConfig>,
}

/// How a function's asynchronous events are retried and where their
/// outcome is sent (Lambda's `PutFunctionEventInvokeConfig`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AsyncConfig {
    /// Retries after a function error (Lambda: 0 to 2, default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2), extend("format" = "int32"))]
    pub maximum_retry_attempts: Option<u32>,
    /// Seconds after which an event not yet done is given up (Lambda: 60 to
    /// 21,600); unset: the gateway's `--async-max-age` (default 21,600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 60, max = 21600), extend("format" = "int32"))]
    pub maximum_event_age_seconds: Option<u32>,
    /// Where a record of each outcome goes.
    #[serde(default, skip_serializing_if = "Destinations::is_empty")]
    pub destinations: Destinations,
}

/// Where the records of an async event's outcome go.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Destinations {
    /// A record of each event that succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_success: Option<Destination>,
    /// A record of each event given up (retries exhausted or too old);
    /// without it, the event goes to the dead letters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<Destination>,
}

impl Destinations {
    fn is_empty(&self) -> bool {
        self.on_success.is_none() && self.on_failure.is_none()
    }
}

/// One destination: another Function (invoked asynchronously with the
/// record as its event) or a NATS subject (needs the gateway on NATS).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[x_kube(validation = Rule::new("has(self.function) != has(self.subject)").message("each async destination needs exactly one of function or subject"))]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    /// A Function in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub function: Option<String>,
    /// A NATS subject the record is published to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub subject: Option<String>,
}

/// Lambda's default retries of an async event that fails.
pub const DEFAULT_MAXIMUM_RETRY_ATTEMPTS: u32 = 2;
/// Lambda's default and largest age of an async event, in seconds.
pub const MAXIMUM_EVENT_AGE_SECONDS: u32 = 21_600;

/// Where a function's code comes from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("[has(self.inline), has(self.configMap), has(self.image), has(self.path)].filter(x, x).size() == 1").message("spec.code needs exactly one of inline, configMap, image or path"))]
#[serde(rename_all = "camelCase")]
pub struct FunctionCode {
    /// Source of a single-file handler. Python code is written as `<module>.py`,
    /// the module being the first part of the handler; Node.js code as
    /// `<module>.mjs` when it has `import`/`export` statements, else `<module>.js`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
    /// A ConfigMap whose keys become files in the task root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapCode>,
    /// A container image that already holds the code (and, for `provided`,
    /// the bootstrap) in `/var/task`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Local mode only: a directory, relative to the manifest, used as task root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Where one environment variable's value comes from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("has(self.secretKeyRef) != has(self.configMapKeyRef)").message("each spec.envValueFrom entry needs exactly one of secretKeyRef or configMapKeyRef"))]
#[serde(rename_all = "camelCase")]
pub struct EnvValueSource {
    /// A key of a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeyRef>,
    /// A key of a ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeyRef>,
}

impl EnvValueSource {
    /// `secret NAME/KEY` or `configMap NAME/KEY`, for messages (never a value).
    pub fn describe(&self) -> String {
        match (&self.secret_key_ref, &self.config_map_key_ref) {
            (Some(r), _) => format!("secret {}/{}", r.name, r.key),
            (None, Some(r)) => format!("configMap {}/{}", r.name, r.key),
            (None, None) => "nothing".to_string(),
        }
    }
}

/// One key of a Secret or ConfigMap in the Function's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct KeyRef {
    /// The Secret's or ConfigMap's name.
    pub name: String,
    /// The key.
    pub key: String,
}

/// Every key of a Secret or ConfigMap, as environment variables.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("has(self.secretRef) != has(self.configMapRef)").message("each spec.envFrom entry needs exactly one of secretRef or configMapRef"))]
#[serde(rename_all = "camelCase")]
pub struct EnvFromSource {
    /// A Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<NameRef>,
    /// A ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<NameRef>,
    /// Put before every variable's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// A Secret or ConfigMap by name, in the Function's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NameRef {
    /// The name.
    pub name: String,
}

impl FunctionSpec {
    /// The Secrets the environment reads (by `envValueFrom` or `envFrom`), sorted.
    pub fn referenced_secrets(&self) -> Vec<&str> {
        self.referenced(|v| v.secret_key_ref.as_ref(), |e| e.secret_ref.as_ref())
    }

    /// The ConfigMaps the environment reads (by `envValueFrom` or `envFrom`), sorted.
    pub fn referenced_config_maps(&self) -> Vec<&str> {
        self.referenced(
            |v| v.config_map_key_ref.as_ref(),
            |e| e.config_map_ref.as_ref(),
        )
    }

    /// The names `by_key` and `by_name` pick from the environment's sources.
    fn referenced<'a>(
        &'a self,
        by_key: impl Fn(&'a EnvValueSource) -> Option<&'a KeyRef>,
        by_name: impl Fn(&'a EnvFromSource) -> Option<&'a NameRef>,
    ) -> Vec<&'a str> {
        let mut names: Vec<&str> = self
            .env_value_from
            .values()
            .filter_map(|v| by_key(v).map(|r| r.name.as_str()))
            .chain(
                self.env_from
                    .iter()
                    .filter_map(|e| by_name(e).map(|r| r.name.as_str())),
            )
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

/// A ConfigMap holding the function's files.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ConfigMapCode {
    /// Name of the ConfigMap, in the Function's namespace.
    pub name: String,
}

/// Autoscaling settings (anchors: Knative KPA defaults).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Scaling {
    /// Environments kept even when idle (0 = scale to zero).
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000), extend("format" = "int32"))]
    pub min_scale: u32,
    /// Upper bound on environments.
    #[serde(default = "default_max_scale")]
    #[schemars(range(min = 1, max = 1000), extend("format" = "int32"))]
    pub max_scale: u32,
    /// Fraction of `concurrency` the autoscaler aims to use per environment (0 < u <= 1).
    #[serde(default = "default_target_utilization")]
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 1.0").message("spec.scaling.targetUtilization must be in (0, 1]"))]
    pub target_utilization: f64,
    /// Idle time (nothing in flight or queued) after which the function scales to zero.
    #[serde(default = "default_scale_to_zero_after")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub scale_to_zero_after: String,
    /// Averaging window for steady load; the panic window is a tenth of it.
    #[serde(default = "default_stable_window")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub stable_window: String,
    /// How long an idle function keeps an environment: `fixed`
    /// (`scaleToZeroAfter` after every event) or `adaptive` (from the
    /// function's own idle times: scale to zero after an event, bring one
    /// environment back just before the next is expected, and keep it until
    /// the tail of its idle times has passed; a 20-minute window until 30
    /// idle times are known).
    #[serde(default, skip_serializing_if = "KeepAlivePolicy::is_fixed")]
    pub keep_alive: KeepAlivePolicy,
}

/// How long an idle function keeps an environment.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum KeepAlivePolicy {
    /// `scaleToZeroAfter` after the last event.
    #[default]
    Fixed,
    /// From the function's idle-time histogram.
    Adaptive,
}

impl KeepAlivePolicy {
    fn is_fixed(&self) -> bool {
        *self == KeepAlivePolicy::Fixed
    }
}

impl From<KeepAlivePolicy> for porchlight_core::autoscaler::KeepAlive {
    fn from(p: KeepAlivePolicy) -> Self {
        match p {
            KeepAlivePolicy::Fixed => porchlight_core::autoscaler::KeepAlive::Fixed,
            KeepAlivePolicy::Adaptive => porchlight_core::autoscaler::KeepAlive::Adaptive,
        }
    }
}

impl Default for Scaling {
    fn default() -> Self {
        Scaling {
            min_scale: 0,
            max_scale: default_max_scale(),
            target_utilization: default_target_utilization(),
            scale_to_zero_after: default_scale_to_zero_after(),
            stable_window: default_stable_window(),
            keep_alive: KeepAlivePolicy::Fixed,
        }
    }
}

/// One event source. Exactly one field is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("[has(self.http), has(self.s3), has(self.cloudevents), has(self.schedule), has(self.queue)].filter(x, x).size() == 1").message("each trigger needs exactly one of http, s3, cloudevents, schedule or queue"))]
#[serde(rename_all = "camelCase")]
pub struct Trigger {
    /// HTTP requests on `/http/<name>/...` become API Gateway proxy events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpTrigger>,
    /// S3-style object notifications posted to the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Trigger>,
    /// CloudEvents 1.0 posted to the gateway, routed by type and source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloudevents: Option<CloudEventsTrigger>,
    /// An EventBridge schedule expression, UTC: `rate(5 minutes)` or
    /// `cron(0 12 * * ? *)`. Each tick delivers one Scheduled Event, once
    /// across every gateway, as an async event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^rate\\\\([1-9][0-9]* (minute|hour|day)s?\\\\)$') || self.matches('^cron\\\\([^ ]+( [^ ]+){5}\\\\)$')").message("a schedule must be rate(N minute|minutes|hour|hours|day|days) or cron with 6 fields, e.g. rate(5 minutes) or cron(0 12 * * ? *)"))]
    #[schemars(length(max = 256))]
    pub schedule: Option<String>,
    /// Messages of a NATS JetStream stream, delivered in batches in the SQS
    /// event shape (Lambda's event source mapping); needs the gateway on
    /// NATS (`--queue nats://...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueTrigger>,
}

/// A queue source: the stream it reads, and how it batches.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.subject) != has(self.stream)").message("a queue trigger needs exactly one of subject or stream"))]
#[x_kube(validation = Rule::new("!has(self.batchSize) || self.batchSize <= 10 || (has(self.maximumBatchingWindowSeconds) && self.maximumBatchingWindowSeconds >= 1)").message("a queue trigger with batchSize over 10 needs maximumBatchingWindowSeconds of at least 1"))]
#[serde(rename_all = "camelCase")]
pub struct QueueTrigger {
    /// A NATS subject (wildcards allowed): the gateway creates a JetStream
    /// stream over it, `PORCHLIGHT_Q_<subject>`, or binds the one there is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub subject: Option<String>,
    /// An existing JetStream stream, read whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub stream: Option<String>,
    /// Messages per invocation at most (Lambda: 1 to 10,000, default 10;
    /// over 10 needs a batching window of at least 1 s).
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 10000), extend("format" = "int32"))]
    pub batch_size: u32,
    /// Seconds to wait for a batch to fill, from its first message (0:
    /// what is there is sent at once).
    #[serde(default)]
    #[schemars(range(min = 0, max = 300), extend("format" = "int32"))]
    pub maximum_batching_window_seconds: u32,
    /// Batches in flight at most, per gateway replica (Lambda: 2 to 1,000);
    /// unset: as many as the function can run at its maximum scale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 1000), extend("format" = "int32"))]
    pub maximum_concurrency: Option<u32>,
}

fn default_batch_size() -> u32 {
    10
}

impl Default for QueueTrigger {
    fn default() -> Self {
        QueueTrigger {
            subject: None,
            stream: None,
            batch_size: default_batch_size(),
            maximum_batching_window_seconds: 0,
            maximum_concurrency: None,
        }
    }
}

impl QueueTrigger {
    /// What the schema and CEL rules check.
    fn problems(&self, i: usize) -> Vec<String> {
        let mut problems = Vec::new();
        let at = format!("spec.triggers[{i}].queue");
        let empty = |v: &Option<String>| v.as_deref().is_some_and(str::is_empty);
        if self.subject.is_some() == self.stream.is_some()
            || empty(&self.subject)
            || empty(&self.stream)
        {
            problems.push(format!("{at} needs exactly one of subject or stream"));
        }
        if !(1..=10_000).contains(&self.batch_size) {
            problems.push(format!(
                "{at}.batchSize must be 1 to 10000, got {}",
                self.batch_size
            ));
        }
        if self.maximum_batching_window_seconds > 300 {
            problems.push(format!(
                "{at}.maximumBatchingWindowSeconds must be 0 to 300, got {}",
                self.maximum_batching_window_seconds
            ));
        }
        if self.batch_size > 10 && self.maximum_batching_window_seconds < 1 {
            problems.push(format!(
                "{at}: batchSize over 10 needs maximumBatchingWindowSeconds of at least 1"
            ));
        }
        if let Some(c) = self.maximum_concurrency
            && !(2..=1000).contains(&c)
        {
            problems.push(format!(
                "{at}.maximumConcurrency must be 2 to 1000, got {c}"
            ));
        }
        problems
    }
}

/// API Gateway payload format of the HTTP trigger.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum PayloadFormat {
    /// REST API proxy integration (`httpMethod`, `path`, `multiValueHeaders`, ...).
    #[default]
    #[serde(rename = "1.0")]
    V1,
    /// HTTP API (`version: "2.0"`, `rawPath`, `requestContext.http`, ...).
    #[serde(rename = "2.0")]
    V2,
}

/// HTTP trigger settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HttpTrigger {
    /// `"1.0"` (default) or `"2.0"`.
    #[serde(default)]
    pub payload_format: PayloadFormat,
    /// Who may call it, as Lambda function URLs: `NONE` (anyone, the
    /// default) or `AWS_IAM` (requests signed with SigV4, service `lambda`,
    /// by a key the gateway's `--auth-keys` allows for this function).
    #[serde(default)]
    pub auth: HttpAuth,
    /// Cross-origin requests, answered at the gateway as function URLs do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
}

/// Who may call an HTTP trigger.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum HttpAuth {
    /// Anyone.
    #[default]
    #[serde(rename = "NONE")]
    None,
    /// Callers that sign with SigV4.
    #[serde(rename = "AWS_IAM")]
    AwsIam,
}

/// CORS settings of an HTTP trigger (Lambda function URL's `Cors`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Cors {
    /// Origins allowed (`https://app.example.com`), or `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origins: Vec<String>,
    /// Methods allowed (`GET`, `POST`, ...), or `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    /// Request headers allowed, or `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    /// Response headers the browser may read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// Seconds a browser may cache a preflight answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400), extend("format" = "int32"))]
    pub max_age: Option<u32>,
    /// Whether cookies and credentials may be sent.
    #[serde(default)]
    pub allow_credentials: bool,
}

/// S3 notification filter.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct S3Trigger {
    /// Bucket name that must match exactly.
    pub bucket: String,
    /// Event names, e.g. `s3:ObjectCreated:*` (a trailing `*` matches any suffix).
    #[serde(default = "default_s3_events")]
    pub events: Vec<String>,
    /// Key prefix filter (applied to the decoded key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Key suffix filter (applied to the decoded key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
}

/// CloudEvents filter.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CloudEventsTrigger {
    /// The event `type` that must match exactly.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Optional `source` that must match exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// Observed state, written by the controller.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStatus {
    /// `Ready` (reasons: Ready, ScaledToZero, InitFailed, Pending, InvalidSpec).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<FunctionCondition>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Environments (pods) that exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Environments that finished init and take events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// The autoscaler's last decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// Events in flight plus queued, summed over gateways, at the last decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_concurrency: Option<i32>,
    /// When the desired count last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
    /// Where to invoke the function through the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Label selector of the environments, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Where the keep-alive stands (`spec.scaling.keepAlive`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<KeepAliveStatus>,
    /// What the function used, summed over the gateways' reports since the
    /// Function was created (see `UsageStatus`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageStatus>,
}

/// A function's keep-alive, as the autoscaler last decided it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct KeepAliveStatus {
    /// `fixed` or `adaptive`.
    pub policy: String,
    /// The rule in force: `fixed` (a fixed window), `histogram` (from the
    /// idle times) or `long_fixed` (most idle times are beyond 4 hours).
    pub mode: String,
    /// Seconds an environment stays after the last event.
    pub keep_alive_seconds: i64,
    /// Seconds after the last event at which one environment is loaded
    /// again (0: it stays loaded from the event on).
    pub prewarm_after_seconds: i64,
    /// When one environment is loaded again (RFC 3339), while the function
    /// is idle and that is ahead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_prewarm: Option<String>,
    /// Idle times recorded so far.
    pub idle_times: i64,
    /// The idle-time histogram in compact form (1-minute bins over 4 hours),
    /// kept here so that a controller restart does not lose it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_histogram: Option<String>,
}

/// What a function used, in Lambda's billing terms, and what keeping it
/// warm cost, as the gateways metered it (their `/v1/usage` and Prometheus
/// counters hold the same numbers per gateway). Updated with the status's
/// regular writes, not per invocation; usage metered while no controller
/// ran is in the gateways' counters but not here.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct UsageStatus {
    /// Invocations that ran in an environment.
    pub invocations: i64,
    /// Their billed duration in milliseconds (each rounded up to 1 ms).
    pub billed_duration_ms: i64,
    /// Billed duration x memory, in GB-seconds.
    pub gb_seconds: f64,
    /// Invocations that started an environment.
    pub cold_starts: i64,
    /// The init time of those environments, in milliseconds.
    pub init_duration_ms: f64,
    /// Environment-seconds ready but running nothing.
    pub idle_environment_seconds: f64,
    /// Those, x memory, in GB-seconds.
    pub idle_gb_seconds: f64,
}

impl UsageStatus {
    /// The status form of metered usage.
    pub fn from_usage(u: &porchlight_core::usage::FunctionUsage) -> UsageStatus {
        let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        UsageStatus {
            invocations: int(u.invocations),
            billed_duration_ms: int(u.billed_duration_ms),
            gb_seconds: u.gb_seconds,
            cold_starts: int(u.cold_starts),
            init_duration_ms: u.init_duration_ms,
            idle_environment_seconds: u.idle_environment_seconds,
            idle_gb_seconds: u.idle_gb_seconds,
        }
    }

    /// Back to metered usage (a restarted controller goes on from it).
    pub fn to_usage(&self) -> porchlight_core::usage::FunctionUsage {
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        let amount = |x: f64| if x.is_finite() { x.max(0.0) } else { 0.0 };
        porchlight_core::usage::FunctionUsage {
            invocations: count(self.invocations),
            billed_duration_ms: count(self.billed_duration_ms),
            gb_seconds: amount(self.gb_seconds),
            cold_starts: count(self.cold_starts),
            init_duration_ms: amount(self.init_duration_ms),
            idle_environment_seconds: amount(self.idle_environment_seconds),
            idle_gb_seconds: amount(self.idle_gb_seconds),
        }
    }
}

/// A status condition in the usual Kubernetes shape.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FunctionCondition {
    /// Condition type, e.g. `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// One-word reason in CamelCase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the status last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// The Node.js runtimes, as Lambda names them.
pub const NODE_RUNTIMES: [&str; 3] = ["nodejs18.x", "nodejs20.x", "nodejs22.x"];

/// Whether `runtime` is one of [`NODE_RUNTIMES`].
pub fn is_node_runtime(runtime: &str) -> bool {
    NODE_RUNTIMES.contains(&runtime)
}

/// The module path of a Node.js handler, relative to the task root and
/// without extension: `src/app` for `src/app.handler` (the file name ends at
/// its first dot, the rest is a property path). `None` for a handler the
/// bundled bootstrap cannot load.
pub fn node_handler_module(handler: &str) -> Option<String> {
    let (dir, file) = match handler.rsplit_once('/') {
        Some((dir, file)) => (Some(dir), file),
        None => (None, handler),
    };
    let (module, property) = file.split_once('.')?;
    if module.is_empty()
        || property.is_empty()
        || handler.contains("..")
        || handler.starts_with('/')
        || dir.is_some_and(|d| d.is_empty() || d.split('/').any(str::is_empty))
    {
        return None;
    }
    Some(match dir {
        Some(dir) => format!("{dir}/{module}"),
        None => module.to_string(),
    })
}

/// Where inline Node.js code is written, relative to the task root:
/// `<module>.mjs` when the source has `import` or `export` statements (an ES
/// module), else `<module>.js` (CommonJS), as the bundled bootstrap loads them.
pub fn node_inline_file(handler: &str, source: &str) -> Option<String> {
    let module = node_handler_module(handler)?;
    let esm = source.lines().map(str::trim_start).any(|l| {
        l.starts_with("export ")
            || l.starts_with("export{")
            || (l.starts_with("import ") && !l.starts_with("import ("))
            || l.starts_with("import{")
    });
    Some(format!("{module}.{}", if esm { "mjs" } else { "js" }))
}

fn default_runtime() -> String {
    "python3.12".to_string()
}
fn default_timeout_seconds() -> u32 {
    3
}
fn default_memory_mib() -> u32 {
    128
}
fn default_concurrency() -> u32 {
    1
}
fn default_freeze() -> bool {
    true
}
fn default_max_scale() -> u32 {
    10
}
fn default_target_utilization() -> f64 {
    0.7
}
fn default_scale_to_zero_after() -> String {
    "30s".to_string()
}
fn default_stable_window() -> String {
    "60s".to_string()
}
fn default_s3_events() -> Vec<String> {
    vec!["s3:ObjectCreated:*".to_string()]
}

impl FunctionSpec {
    /// The shim settings that follow from this spec, for an environment of
    /// the function `name`; each mode adds its own (listen address, task
    /// root, identity).
    pub fn shim_settings(&self, name: &str) -> porchlight_core::ShimSettings {
        porchlight_core::ShimSettings {
            function_name: Some(name.to_string()),
            handler: self.handler.clone(),
            runtime: Some(self.runtime.clone()),
            timeout_seconds: Some(self.timeout_seconds),
            memory_mib: Some(self.memory_mib),
            concurrency: Some(self.concurrency),
            freeze: self.freeze,
            // A stop (a scale-down, a rollout) lets invocations in flight
            // run to their timeout.
            shutdown_grace_seconds: Some(porchlight_core::shim::shutdown_grace_seconds(
                self.timeout_seconds,
            )),
            ..porchlight_core::ShimSettings::default()
        }
    }

    /// Checks what the CRD schema and CEL rules check, for local mode and for
    /// objects stored before a rule existed. Returns every problem found.
    pub fn validate(&self) -> Result<ScalingSettings, Vec<String>> {
        let mut problems = Vec::new();
        let python = self
            .runtime
            .strip_prefix("python3.")
            .is_some_and(|minor| !minor.is_empty() && minor.bytes().all(|b| b.is_ascii_digit()));
        let node = is_node_runtime(&self.runtime);
        if !python && !node && self.runtime != "provided" {
            problems.push(format!(
                "spec.runtime must be 'provided', 'python3.N', 'nodejs18.x', 'nodejs20.x' or 'nodejs22.x', got '{}'",
                self.runtime
            ));
        }
        if python {
            match self.handler.as_deref() {
                Some(h) if h.contains('.') && !h.starts_with('.') && !h.ends_with('.') => {}
                Some(h) => problems.push(format!(
                    "spec.handler must look like 'module.function', got '{h}'"
                )),
                None => problems.push("spec.handler is required for python runtimes".to_string()),
            }
        }
        if node {
            match self.handler.as_deref() {
                Some(h) if node_handler_module(h).is_some() => {}
                Some(h) => problems.push(format!(
                    "spec.handler must look like 'index.handler' or 'dir/file.handler', got '{h}'"
                )),
                None => problems.push("spec.handler is required for nodejs runtimes".to_string()),
            }
        }
        let sources = [
            self.code.inline.is_some(),
            self.code.config_map.is_some(),
            self.code.image.is_some(),
            self.code.path.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            problems.push(
                "spec.code needs exactly one of inline, configMap, image or path".to_string(),
            );
        }
        if !(1..=900).contains(&self.timeout_seconds) {
            problems.push(format!(
                "spec.timeoutSeconds must be between 1 and 900, got {}",
                self.timeout_seconds
            ));
        }
        if !(128..=10240).contains(&self.memory_mib) {
            problems.push(format!(
                "spec.memoryMiB must be between 128 and 10240, got {}",
                self.memory_mib
            ));
        }
        if !(1..=1000).contains(&self.concurrency) {
            problems.push(format!(
                "spec.concurrency must be between 1 and 1000, got {}",
                self.concurrency
            ));
        }
        let s = &self.scaling;
        if s.max_scale < 1 || s.max_scale > 1000 {
            problems.push(format!(
                "spec.scaling.maxScale must be between 1 and 1000, got {}",
                s.max_scale
            ));
        }
        if s.max_scale < s.min_scale {
            problems.push(format!(
                "spec.scaling.maxScale must be greater than or equal to spec.scaling.minScale ({} < {})",
                s.max_scale, s.min_scale
            ));
        }
        if !(s.target_utilization > 0.0 && s.target_utilization <= 1.0) {
            problems.push(format!(
                "spec.scaling.targetUtilization must be in (0, 1], got {}",
                s.target_utilization
            ));
        }
        let scale_to_zero_after = parse_duration(&s.scale_to_zero_after)
            .map_err(|e| format!("spec.scaling.scaleToZeroAfter: {e}"));
        let stable_window = parse_duration(&s.stable_window)
            .map_err(|e| format!("spec.scaling.stableWindow: {e}"))
            .and_then(|w| {
                if w < Duration::from_secs(1) {
                    Err("spec.scaling.stableWindow must be at least 1s".to_string())
                } else {
                    Ok(w)
                }
            });
        for (name, source) in &self.env_value_from {
            if (source.secret_key_ref.is_some()) == (source.config_map_key_ref.is_some()) {
                problems.push(format!(
                    "spec.envValueFrom.{name} needs exactly one of secretKeyRef or configMapKeyRef"
                ));
            }
            if self.env.contains_key(name) {
                problems.push(format!(
                    "spec.envValueFrom.{name} is also in spec.env: give it once"
                ));
            }
        }
        for (i, e) in self.env_from.iter().enumerate() {
            if (e.secret_ref.is_some()) == (e.config_map_ref.is_some()) {
                problems.push(format!(
                    "spec.envFrom[{i}] needs exactly one of secretRef or configMapRef"
                ));
            }
        }
        if let Some(r) = self.replicas
            && r < 0
        {
            problems.push(format!("spec.replicas must not be negative, got {r}"));
        }
        if self.triggers.len() > 16 {
            problems.push(format!(
                "spec.triggers must have at most 16 entries, got {}",
                self.triggers.len()
            ));
        }
        for (i, t) in self.triggers.iter().enumerate() {
            let kinds = [
                t.http.is_some(),
                t.s3.is_some(),
                t.cloudevents.is_some(),
                t.schedule.is_some(),
                t.queue.is_some(),
            ];
            if kinds.iter().filter(|k| **k).count() != 1 {
                problems.push(format!(
                    "spec.triggers[{i}] needs exactly one of http, s3, cloudevents, schedule or queue"
                ));
            }
            if let Some(q) = &t.queue {
                problems.extend(q.problems(i));
            }
            if let Some(expression) = &t.schedule
                && let Err(e) = Schedule::parse(expression)
            {
                problems.push(format!("spec.triggers[{i}].schedule: {e}"));
            }
            if let Some(cors) = t.http.as_ref().and_then(|h| h.cors.as_ref())
                && cors.allow_credentials
                && cors.allow_origins.iter().any(|o| o == "*")
            {
                problems.push(format!(
                    "spec.triggers[{i}].http.cors: allowCredentials cannot be used with the '*' origin"
                ));
            }
            if let Some(s3) = &t.s3
                && s3.bucket.is_empty()
            {
                problems.push(format!("spec.triggers[{i}].s3.bucket must not be empty"));
            }
            if let Some(ce) = &t.cloudevents
                && ce.event_type.is_empty()
            {
                problems.push(format!(
                    "spec.triggers[{i}].cloudevents.type must not be empty"
                ));
            }
        }
        if let Some(a) = &self.async_config {
            problems.extend(a.problems());
        }
        match (scale_to_zero_after, stable_window) {
            (Ok(scale_to_zero_after), Ok(stable_window)) if problems.is_empty() => {
                let floor = self.replicas.unwrap_or(0).max(0) as u32;
                Ok(ScalingSettings {
                    min_scale: s.min_scale.max(floor.min(s.max_scale)),
                    max_scale: s.max_scale,
                    concurrency_per_environment: self.concurrency,
                    target_utilization: s.target_utilization,
                    scale_to_zero_after,
                    stable_window,
                    keep_alive: s.keep_alive.into(),
                })
            }
            (a, b) => {
                problems.extend(a.err());
                problems.extend(b.err());
                Err(problems)
            }
        }
    }

    /// The async settings, when the function has any.
    pub fn async_settings(&self) -> Option<&AsyncConfig> {
        self.async_config.as_ref()
    }

    /// The HTTP trigger, if the function declares one.
    pub fn http_trigger(&self) -> Option<&HttpTrigger> {
        self.triggers.iter().find_map(|t| t.http.as_ref())
    }

    /// The schedule triggers that parse: each with its index in
    /// `spec.triggers` and its expression.
    pub fn schedules(&self) -> Vec<(usize, String, Schedule)> {
        self.triggers
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let e = t.schedule.as_ref()?;
                Some((i, e.clone(), Schedule::parse(e).ok()?))
            })
            .collect()
    }

    /// The queue triggers: each with its index in `spec.triggers`.
    pub fn queues(&self) -> Vec<(usize, &QueueTrigger)> {
        self.triggers
            .iter()
            .enumerate()
            .filter_map(|(i, t)| Some((i, t.queue.as_ref()?)))
            .collect()
    }
}

impl AsyncConfig {
    /// What the schema and CEL rules check.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(n) = self.maximum_retry_attempts
            && n > 2
        {
            problems.push(format!(
                "spec.async.maximumRetryAttempts must be between 0 and 2, got {n}"
            ));
        }
        if let Some(n) = self.maximum_event_age_seconds
            && !(60..=MAXIMUM_EVENT_AGE_SECONDS).contains(&n)
        {
            problems.push(format!(
                "spec.async.maximumEventAgeSeconds must be between 60 and 21600, got {n}"
            ));
        }
        let d = &self.destinations;
        for (name, dest) in [("onSuccess", &d.on_success), ("onFailure", &d.on_failure)] {
            let Some(dest) = dest else { continue };
            match (dest.function.as_deref(), dest.subject.as_deref()) {
                (Some(f), None) if !f.is_empty() => {}
                (None, Some(s)) if valid_subject(s) => {}
                (None, Some(s)) => problems.push(format!(
                    "spec.async.destinations.{name}.subject is not a NATS subject one can publish to: '{s}'"
                )),
                _ => problems.push(format!(
                    "spec.async.destinations.{name} needs exactly one of function or subject"
                )),
            }
        }
        problems
    }
}

/// A subject a message can be published to: dot-separated tokens, none
/// empty, no wildcards or whitespace.
fn valid_subject(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.split('.')
            .all(|t| !t.is_empty() && t != "*" && t != ">" && !t.chars().any(char::is_whitespace))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    fn hello() -> FunctionSpec {
        serde_yaml::from_str(
            r#"
runtime: python3.12
handler: app.lambda_handler
code:
  inline: |
    def lambda_handler(event, context):
        return {"statusCode": 200, "body": "Hello from Lambda!"}
"#,
        )
        .expect("valid yaml")
    }

    #[test]
    fn defaults_follow_lambda_and_knative() {
        let spec = hello();
        assert_eq!(spec.timeout_seconds, 3);
        assert_eq!(spec.memory_mib, 128);
        assert_eq!(spec.concurrency, 1);
        assert!(spec.freeze, "frozen between invocations, as in Lambda");
        assert_eq!(spec.scaling.min_scale, 0);
        assert_eq!(spec.scaling.target_utilization, 0.7);
        let settings = spec.validate().expect("valid");
        assert_eq!(settings.scale_to_zero_after, Duration::from_secs(30));
        assert_eq!(settings.stable_window, Duration::from_secs(60));
    }

    #[test]
    fn environments_drain_for_longer_than_the_timeout() {
        let mut spec = hello();
        spec.timeout_seconds = 60;
        let shim = spec.shim_settings("hello");
        assert_eq!(shim.timeout_seconds, Some(60));
        assert_eq!(shim.shutdown_grace_seconds, Some(62));
    }

    #[test]
    fn the_shim_freezes_unless_the_spec_says_not_to() {
        let mut spec = hello();
        assert!(spec.shim_settings("hello").freeze);
        spec.freeze = false;
        assert!(!spec.shim_settings("hello").freeze);
        let off: FunctionSpec =
            serde_yaml::from_str("handler: app.h\ncode: {inline: x}\nfreeze: false\n")
                .expect("valid yaml");
        assert!(!off.freeze);
    }

    #[test]
    fn validate_reports_every_problem() {
        let mut spec = hello();
        spec.runtime = "ruby".into();
        spec.scaling.min_scale = 5;
        spec.scaling.max_scale = 2;
        spec.timeout_seconds = 0;
        spec.code.image = Some("x".into());
        spec.scaling.scale_to_zero_after = "soon".into();
        let problems = spec.validate().expect_err("invalid");
        assert_eq!(problems.len(), 5, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("maxScale")));
        assert!(problems.iter().any(|p| p.contains("scaleToZeroAfter")));
    }

    #[test]
    fn node_runtimes_validate_with_a_handler() {
        for runtime in NODE_RUNTIMES {
            let mut spec = hello();
            spec.runtime = runtime.into();
            spec.handler = Some("src/app.handler".into());
            assert!(spec.validate().is_ok(), "{runtime}");
            spec.handler = None;
            let problems = spec.validate().expect_err("no handler");
            assert!(problems[0].contains("required for nodejs"), "{problems:?}");
            spec.handler = Some("index".into());
            assert!(spec.validate().is_err(), "a handler without a function");
        }
        let mut spec = hello();
        spec.runtime = "nodejs16.x".into();
        let problems = spec.validate().expect_err("an old runtime");
        assert!(problems[0].contains("'nodejs22.x'"), "{problems:?}");
    }

    #[test]
    fn node_handlers_name_a_module_path() {
        assert_eq!(
            node_handler_module("index.handler").as_deref(),
            Some("index")
        );
        assert_eq!(
            node_handler_module("src/app.handler").as_deref(),
            Some("src/app")
        );
        assert_eq!(
            node_handler_module("app.lib.handler").as_deref(),
            Some("app")
        );
        for bad in [
            "index",
            ".handler",
            "index.",
            "../x.handler",
            "/abs/x.handler",
            "a//b.h",
        ] {
            assert_eq!(node_handler_module(bad), None, "{bad}");
        }
        assert_eq!(
            node_inline_file("index.handler", "exports.handler = async () => 1;").as_deref(),
            Some("index.js")
        );
        assert_eq!(
            node_inline_file(
                "src/app.handler",
                "import os from 'os';\nexport const handler = 1;"
            )
            .as_deref(),
            Some("src/app.mjs")
        );
    }

    #[test]
    fn schedules_are_validated_with_their_field() {
        let mut spec = hello();
        spec.triggers = vec![
            Trigger {
                schedule: Some("rate(1 minute)".into()),
                ..Default::default()
            },
            Trigger {
                schedule: Some("cron(0 12 * * * *)".into()),
                ..Default::default()
            },
            Trigger {
                schedule: Some("rate(5 minutes)".into()),
                s3: Some(S3Trigger {
                    bucket: "b".into(),
                    events: default_s3_events(),
                    prefix: None,
                    suffix: None,
                }),
                ..Default::default()
            },
        ];
        let problems = spec.validate().expect_err("invalid");
        assert_eq!(
            problems,
            vec![
                "spec.triggers[1].schedule: cron(0 12 * * * *): one of day-of-month and day-of-week must be '?' (e.g. cron(0 12 * * ? *))".to_string(),
                "spec.triggers[2] needs exactly one of http, s3, cloudevents, schedule or queue".to_string(),
            ]
        );
        spec.triggers.truncate(1);
        spec.validate().expect("valid");
        let schedules = spec.schedules();
        assert_eq!(schedules.len(), 1);
        assert_eq!(schedules[0].0, 0);
        assert_eq!(schedules[0].2, Schedule::Rate(60));
        let crd = serde_json::to_string(&Function::crd()).expect("serialises");
        assert!(crd.contains("a schedule must be rate(N minute"));
    }

    #[test]
    fn queue_triggers_are_validated_as_lambda_does() {
        let queue = |q: QueueTrigger| Trigger {
            queue: Some(q),
            ..Default::default()
        };
        let mut spec = hello();
        spec.triggers = vec![
            queue(QueueTrigger {
                subject: Some("orders.>".into()),
                ..Default::default()
            }),
            queue(QueueTrigger {
                subject: Some("a".into()),
                stream: Some("B".into()),
                ..Default::default()
            }),
            queue(QueueTrigger::default()),
            queue(QueueTrigger {
                stream: Some("ORDERS".into()),
                batch_size: 100,
                ..Default::default()
            }),
            queue(QueueTrigger {
                stream: Some("ORDERS".into()),
                batch_size: 0,
                maximum_batching_window_seconds: 301,
                maximum_concurrency: Some(1),
                ..Default::default()
            }),
        ];
        let problems = spec.validate().expect_err("invalid");
        assert_eq!(
            problems,
            vec![
                "spec.triggers[1].queue needs exactly one of subject or stream".to_string(),
                "spec.triggers[2].queue needs exactly one of subject or stream".to_string(),
                "spec.triggers[3].queue: batchSize over 10 needs maximumBatchingWindowSeconds of at least 1".to_string(),
                "spec.triggers[4].queue.batchSize must be 1 to 10000, got 0".to_string(),
                "spec.triggers[4].queue.maximumBatchingWindowSeconds must be 0 to 300, got 301".to_string(),
                "spec.triggers[4].queue.maximumConcurrency must be 2 to 1000, got 1".to_string(),
            ]
        );
        spec.triggers.truncate(1);
        spec.validate().expect("valid");
        assert_eq!(spec.queues().len(), 1);
        let parsed: QueueTrigger = serde_json::from_str(r#"{"stream":"ORDERS"}"#).expect("parses");
        assert_eq!(parsed.batch_size, 10);
        assert_eq!(parsed.maximum_batching_window_seconds, 0);
        let crd = serde_json::to_string(&Function::crd()).expect("serialises");
        assert!(crd.contains("a queue trigger needs exactly one of subject or stream"));
        assert!(crd.contains("batchSize over 10 needs maximumBatchingWindowSeconds"));
        assert!(crd.contains(r#""maximum":10000"#) || crd.contains(r#""maximum":10000.0"#));
    }

    #[test]
    fn scale_subresource_replicas_is_a_floor_within_bounds() {
        let mut spec = hello();
        spec.replicas = Some(3);
        assert_eq!(spec.validate().expect("valid").min_scale, 3);
        spec.scaling.max_scale = 2;
        assert_eq!(spec.validate().expect("valid").min_scale, 2);
        spec.replicas = Some(0);
        spec.scaling.min_scale = 1;
        assert_eq!(spec.validate().expect("valid").min_scale, 1);
    }

    #[test]
    fn crd_has_scale_subresource_columns_and_cel_rules() {
        let crd = serde_json::to_string(&Function::crd()).expect("serialises");
        assert!(crd.contains(r#""specReplicasPath":".spec.replicas""#));
        assert!(crd.contains(r#""statusReplicasPath":".status.replicas""#));
        assert!(crd.contains(r#""shortNames":["fn"]"#));
        assert!(crd.contains("x-kubernetes-validations"));
        assert!(crd.contains("maxScale must be greater than or equal to"));
        assert!(crd.contains(r#""name":"Desired""#));
    }

    #[test]
    fn the_resource_is_named_as_the_core_names_it() {
        use kube::Resource;
        assert_eq!(Function::group(&()), porchlight_core::names::GROUP);
        assert_eq!(
            Function::api_version(&()),
            porchlight_core::names::API_VERSION
        );
        assert_eq!(Function::kind(&()), porchlight_core::names::FUNCTION_KIND);
    }

    #[test]
    fn async_settings_read_from_yaml_and_are_checked() {
        let mut spec: FunctionSpec = serde_yaml::from_str(
            r#"
handler: app.handler
code: {inline: "x"}
async:
  maximumRetryAttempts: 0
  maximumEventAgeSeconds: 60
  destinations:
    onSuccess: {function: audit}
    onFailure: {subject: orders.failed}
"#,
        )
        .expect("valid yaml");
        let a = spec.async_config.clone().expect("async block");
        assert_eq!(a.maximum_retry_attempts, Some(0));
        assert_eq!(a.maximum_event_age_seconds, Some(60));
        assert_eq!(
            a.destinations
                .on_success
                .as_ref()
                .and_then(|d| d.function.as_deref()),
            Some("audit")
        );
        assert_eq!(
            a.destinations
                .on_failure
                .as_ref()
                .and_then(|d| d.subject.as_deref()),
            Some("orders.failed")
        );
        assert!(spec.validate().is_ok());
        // Written back under `async`, camelCase, unset fields left out.
        let v = serde_json::to_value(&spec).expect("json");
        assert_eq!(v["async"]["maximumRetryAttempts"], 0);
        assert_eq!(
            v["async"]["destinations"]["onFailure"]["subject"],
            "orders.failed"
        );
        assert!(
            v["async"]["destinations"]["onSuccess"]
                .get("subject")
                .is_none()
        );
        // A spec without the block writes none.
        assert!(
            serde_json::to_value(hello())
                .expect("json")
                .get("async")
                .is_none()
        );

        let a = spec.async_config.as_mut().expect("async block");
        a.maximum_retry_attempts = Some(3);
        a.maximum_event_age_seconds = Some(59);
        a.destinations.on_success = Some(Destination {
            function: Some("a".into()),
            subject: Some("b".into()),
        });
        a.destinations.on_failure = Some(Destination {
            function: None,
            subject: Some("orders.*".into()),
        });
        let problems = spec.validate().expect_err("invalid");
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("maximumRetryAttempts")));
        assert!(
            problems
                .iter()
                .any(|p| p.contains("maximumEventAgeSeconds"))
        );
        assert!(problems.iter().any(|p| p.contains(
            "spec.async.destinations.onSuccess needs exactly one of function or subject"
        )));
        assert!(problems.iter().any(|p| p.contains("onFailure.subject")));
    }

    #[test]
    fn crd_bounds_the_async_settings_and_asks_for_one_destination_kind() {
        let crd = serde_json::to_value(Function::crd()).expect("serialises");
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["async"];
        let props = &spec["properties"];
        let bound = |field: &str, which: &str| props[field][which].as_f64();
        assert_eq!(bound("maximumRetryAttempts", "minimum"), Some(0.0));
        assert_eq!(bound("maximumRetryAttempts", "maximum"), Some(2.0));
        assert_eq!(bound("maximumEventAgeSeconds", "minimum"), Some(60.0));
        assert_eq!(bound("maximumEventAgeSeconds", "maximum"), Some(21600.0));
        let on_failure = &props["destinations"]["properties"]["onFailure"];
        assert_eq!(
            on_failure["x-kubernetes-validations"][0]["rule"],
            "has(self.function) != has(self.subject)"
        );
        assert_eq!(
            on_failure["x-kubernetes-validations"][0]["message"],
            "each async destination needs exactly one of function or subject"
        );
    }
}
