//! Reconcile: a Function becomes its ConfigMap, Deployment and Service, and
//! its status says how that went.
//!
//! Every write is a server-side apply under [`MANAGER`]; `spec.replicas` of
//! the Deployment alone belongs to the autoscaler's field manager, from the
//! Deployment's creation on.
//! Owned objects are read from the controller's watch caches ([`caches`]); an
//! object whose applied hash matches what would be applied now is not written
//! again, so a resync of a healthy Function makes no API call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use porchlight_api::function::{FunctionCondition, KeepAliveStatus, UsageStatus};
use porchlight_api::{Function, FunctionStatus};
use porchlight_core::ScalingSettings;
use serde_json::json;
use tracing::{info, warn};

use crate::caches::{self, OwnedCaches};
use crate::metrics::Metrics;
use crate::resources::{self, WorkloadSettings};
use crate::sink;
use crate::validation::{function_key, validate_for_cluster};
use crate::{Error, Result};
use porchlight_core::names::{self, reason};
use porchlight_core::scaling::{KeepAliveRecord, ScaleBook, ScaleRecord, wall_clock};

/// The field manager of everything the reconciler writes, status included.
pub const MANAGER: &str = "porchlight-controller";

/// How often a healthy Function is reconciled without a trigger.
pub const RESYNC: Duration = Duration::from_secs(300);

/// Settings of the reconciler.
#[derive(Clone, Debug)]
pub struct ReconcileSettings {
    /// What shapes every workload.
    pub workload: WorkloadSettings,
    /// Base of the invoke URL, e.g. `http://porchlight-gateway.porchlight-system.svc:8080`.
    pub url_base: String,
}

/// Everything a reconcile needs.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Settings.
    pub settings: ReconcileSettings,
    /// The autoscaler's decisions.
    pub book: Arc<ScaleBook>,
    /// The owned objects, as the watches last saw them.
    pub caches: OwnedCaches,
    /// Consecutive failures per Function, for the error backoff.
    failures: Mutex<HashMap<(String, String), u32>>,
}

impl Context {
    /// Builds a context.
    pub fn new(
        client: Client,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        settings: ReconcileSettings,
        book: Arc<ScaleBook>,
        caches: OwnedCaches,
    ) -> Self {
        Context {
            client,
            recorder,
            metrics,
            settings,
            book,
            caches,
            failures: Mutex::new(HashMap::new()),
        }
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

/// Reconciles one Function.
pub async fn reconcile(f: Arc<Function>, ctx: Arc<Context>) -> Result<Action> {
    ctx.metrics.reconciles.inc();
    ctx.caches.wait_until_ready().await;
    let _timer = ctx.metrics.reconcile_duration.start_timer();
    let ns = f.namespace().ok_or(Error::MissingNamespace)?;
    let name = f.name_any();
    let action = match validate_for_cluster(&f) {
        Err(problems) => invalid_spec(&f, &ctx, &ns, problems).await?,
        Ok(settings) => apply_workload(&f, &ctx, &ns, &settings).await?,
    };
    if let Ok(mut failures) = ctx.failures.lock() {
        failures.remove(&(ns, name));
    }
    Ok(action)
}

/// Counts the failure and requeues with exponential backoff (1 s .. 5 min).
pub fn error_policy(f: Arc<Function>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[error.metric_label()])
        .inc();
    let key = (f.namespace().unwrap_or_default(), f.name_any());
    let attempt = ctx
        .failures
        .lock()
        .map(|mut m| {
            let n = m.entry(key).or_insert(0);
            *n = n.saturating_add(1);
            *n
        })
        .unwrap_or(1);
    let delay = backoff(attempt);
    warn!(function = %f.name_any(), namespace = ?f.namespace(), %error, attempt, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// The delay before retry number `attempt` (1-based).
pub fn backoff(attempt: u32) -> Duration {
    porchlight_core::backoff::exponential(Duration::from_secs(1), attempt, Duration::from_secs(300))
}

async fn invalid_spec(
    f: &Function,
    ctx: &Context,
    ns: &str,
    problems: Vec<String>,
) -> Result<Action> {
    ctx.metrics.invalid_specs.inc();
    let message = problems.join("; ");
    let previous = ready_condition(f);
    let changed = previous.is_none_or(|c| {
        c.reason.as_deref() != Some(reason::INVALID_SPEC) || c.message.as_deref() != Some(&message)
    });
    let mut status = f.status.clone().unwrap_or_default();
    status.conditions = vec![condition(previous, "False", reason::INVALID_SPEC, &message)];
    status.observed_generation = f.metadata.generation;
    status.selector = Some(resources::selector(&f.name_any()));
    write_status(f, ctx, ns, &status).await?;
    if changed {
        publish(
            ctx,
            f,
            EventType::Warning,
            reason::INVALID_SPEC,
            "Validate",
            &message,
        )
        .await;
    }
    info!(function = %f.name_any(), namespace = ns, %message, "invalid spec");
    // Nothing to retry: a fixed spec is a new generation, which triggers a reconcile.
    Ok(Action::await_change())
}

async fn apply_workload(
    f: &Function,
    ctx: &Context,
    ns: &str,
    settings: &ScalingSettings,
) -> Result<Action> {
    let name = f.name_any();
    let hash = apply_code(f, ctx, ns).await?;
    let hash = resources::pod_hash(&hash, &env_source_versions(f, ctx, ns).await?);
    let book = ctx.book.get(&function_key(f));
    let initial = book.as_ref().map_or(settings.min_scale, |r| r.desired);
    let deployment = apply_deployment(f, ctx, ns, &hash, initial).await?;
    apply_service(f, ctx, ns).await?;

    // Status from the Deployment, the autoscaler and (when something is not
    // ready) the environments themselves.
    let observed = ObservedDeployment::of(&deployment);
    let trouble = if observed.lacks_ready() {
        environment_trouble(&ctx.client, ns, &name).await?
    } else {
        None
    };
    let mut status = next_status(
        f,
        &observed,
        book.as_ref(),
        ctx.book.is_holding(),
        trouble.as_ref(),
        &ctx.settings.url_base,
    );
    if let Some(used) = ctx.book.usage(&function_key(f)) {
        status.usage = Some(UsageStatus::from_usage(&used));
    }
    let newly_failed = newly_init_failed(f, &status);
    if f.status.as_ref() != Some(&status) {
        write_status(f, ctx, ns, &status).await?;
    }
    if newly_failed && let Some(message) = status.conditions.first().and_then(|c| c.message.clone())
    {
        publish(
            ctx,
            f,
            EventType::Warning,
            reason::INIT_FAILED,
            "Init",
            &message,
        )
        .await;
    }
    Ok(Action::requeue(RESYNC))
}

/// Applies the ConfigMap of inline code (unless the cache shows it applied)
/// and returns the hash of the code, read from the user's ConfigMap when the
/// code lives there, so edits to it roll the environments too.
async fn apply_code(f: &Function, ctx: &Context, ns: &str) -> Result<String> {
    let user_code = match &f.spec.code.config_map {
        Some(cm) => Api::<ConfigMap>::namespaced(ctx.client.clone(), ns)
            .get_opt(&cm.name)
            .await?
            .and_then(|c| c.data),
        None => None,
    };
    if let Some(mut cm) = resources::code_config_map(f) {
        let cm_name = resources::code_config_map_name(&f.name_any());
        let applied = caches::stamp(&mut cm);
        if ctx.caches.config_map_hash(ns, &cm_name).as_deref() != Some(applied.as_str()) {
            Api::<ConfigMap>::namespaced(ctx.client.clone(), ns)
                .patch(&cm_name, &apply_params(), &Patch::Apply(&cm))
                .await?;
        }
    }
    Ok(resources::code_hash(f, user_code.as_ref()))
}

/// The resource versions of the Secrets (from the metadata cache) and
/// ConfigMaps (one metadata GET each) the environment reads.
async fn env_source_versions(
    f: &Function,
    ctx: &Context,
    ns: &str,
) -> Result<Vec<(String, Option<String>)>> {
    let mut versions = Vec::new();
    for name in f.spec.referenced_secrets() {
        let version = ctx.caches.secret_version(ns, name).await;
        versions.push((format!("secret/{name}"), version));
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    for name in f.spec.referenced_config_maps() {
        let version = config_maps
            .get_metadata_opt(name)
            .await?
            .and_then(|m| m.metadata.resource_version);
        versions.push((format!("configMap/{name}"), version));
    }
    Ok(versions)
}

/// Applies the Deployment unless the cache shows it applied; a new one is
/// created with `initial` replicas (the autoscaler's count, or the floor).
async fn apply_deployment(
    f: &Function,
    ctx: &Context,
    ns: &str,
    hash: &str,
    initial: u32,
) -> Result<Deployment> {
    let name = f.name_any();
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let workload = resources::workload_name(&name);
    let mut d = resources::deployment(f, &ctx.settings.workload, hash, None);
    let applied = caches::stamp(&mut d);
    match ctx.caches.deployment(ns, &workload) {
        Some(cached) if caches::applied_hash(&cached.metadata) == Some(applied.as_str()) => {
            Ok((*cached).clone())
        }
        Some(_) => Ok(deployments
            .patch(&workload, &apply_params(), &Patch::Apply(&d))
            .await?),
        None => {
            // Created with the autoscaler's current count (or the floor) and
            // no environment more: replicas are the autoscaler's field from the
            // start. Three applies: the autoscaler's creates the object with
            // replicas, ours takes the rest, and the autoscaler's second one
            // (replicas only) lets go of the rest, so that a field later
            // dropped from our apply is really removed.
            let initial = i32::try_from(initial).unwrap_or(i32::MAX);
            let mut created = d.clone();
            if let Some(spec) = created.spec.as_mut() {
                spec.replicas = Some(initial);
            }
            let autoscaler = sink::autoscaler_apply_params();
            deployments
                .patch(&workload, &autoscaler, &Patch::Apply(&created))
                .await?;
            deployments
                .patch(&workload, &apply_params(), &Patch::Apply(&d))
                .await?;
            let created = deployments
                .patch(
                    &workload,
                    &autoscaler,
                    &Patch::Apply(sink::replicas_apply(&workload, initial)),
                )
                .await?;
            info!(function = %name, namespace = ns, replicas = initial, "created deployment");
            Ok(created)
        }
    }
}

/// Applies the headless Service unless the cache shows it applied.
async fn apply_service(f: &Function, ctx: &Context, ns: &str) -> Result<()> {
    let workload = resources::workload_name(&f.name_any());
    let mut service = resources::service(f);
    let applied = caches::stamp(&mut service);
    if ctx.caches.service_hash(ns, &workload).as_deref() != Some(applied.as_str()) {
        Api::<Service>::namespaced(ctx.client.clone(), ns)
            .patch(&workload, &apply_params(), &Patch::Apply(&service))
            .await?;
    }
    Ok(())
}

/// What a Function's Deployment says about its environments.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObservedDeployment {
    /// Pods that exist.
    pub replicas: i32,
    /// Pods that are ready.
    pub ready: i32,
    /// Pods wanted (`spec.replicas`).
    pub wanted: i32,
}

impl ObservedDeployment {
    /// Reads a Deployment.
    pub fn of(d: &Deployment) -> Self {
        let status = d.status.clone().unwrap_or_default();
        ObservedDeployment {
            replicas: status.replicas.unwrap_or(0),
            ready: status.ready_replicas.unwrap_or(0),
            wanted: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
        }
    }

    /// Some environment exists or is wanted but is not ready: worth asking the pods why.
    pub fn lacks_ready(&self) -> bool {
        self.replicas > self.ready || self.wanted > self.ready
    }
}

/// The status form of a keep-alive record.
pub fn keep_alive_status(k: &KeepAliveRecord) -> KeepAliveStatus {
    let seconds = |d: std::time::Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    KeepAliveStatus {
        policy: k.policy.as_str().to_string(),
        mode: k.decision.mode.as_str().to_string(),
        keep_alive_seconds: seconds(k.decision.keep_alive_until),
        prewarm_after_seconds: seconds(k.decision.prewarm_after),
        next_prewarm: k.next_prewarm.clone(),
        idle_times: i64::from(k.histogram.total()),
        idle_histogram: (k.histogram.total() > 0).then(|| k.histogram.encode()),
    }
}

/// The status a Function should have (pure): the Ready condition from the
/// environments and their trouble, the counts, and the autoscaler's record.
pub fn next_status(
    f: &Function,
    observed: &ObservedDeployment,
    book: Option<&ScaleRecord>,
    holding: bool,
    trouble: Option<&Trouble>,
    url_base: &str,
) -> FunctionStatus {
    let name = f.name_any();
    let previous_status = f.status.clone().unwrap_or_default();
    let ObservedDeployment {
        replicas,
        ready,
        wanted,
    } = *observed;
    let desired = book
        .map(|r| i32::try_from(r.desired).unwrap_or(i32::MAX))
        .or(previous_status.desired_replicas)
        .unwrap_or(wanted);
    let (cond_status, why, message) = if ready > 0 {
        (
            "True",
            reason::READY,
            format!("{ready} of {replicas} environments ready"),
        )
    } else if let Some(Trouble::InitFailed(msg)) = trouble {
        ("False", reason::INIT_FAILED, msg.clone())
    } else if desired == 0 && replicas == 0 {
        (
            "True",
            reason::SCALED_TO_ZERO,
            "No environments; the next event starts one".to_string(),
        )
    } else {
        let detail = match trouble {
            Some(Trouble::Waiting(msg)) => format!(": {msg}"),
            _ => String::new(),
        };
        (
            "False",
            reason::PENDING,
            format!("Waiting for environments to finish init{detail}"),
        )
    };
    let mut conditions = vec![condition(ready_condition(f), cond_status, why, &message)];
    if holding {
        let previous = f.status.as_ref().and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == names::SCALING_CONDITION)
        });
        let mut held = condition(
            previous,
            "False",
            reason::NO_GATEWAY_REPORTS,
            "No gateway reports load; the last desired count is held until one does",
        );
        held.type_ = names::SCALING_CONDITION.to_string();
        conditions.push(held);
    }
    FunctionStatus {
        conditions,
        observed_generation: f.metadata.generation,
        replicas: Some(replicas),
        ready_replicas: Some(ready),
        desired_replicas: Some(desired),
        observed_concurrency: book
            .map(|r| r.observed_concurrency.round() as i32)
            .or(previous_status.observed_concurrency),
        last_scale_time: book
            .and_then(|r| r.last_scale_time.clone())
            .or(previous_status.last_scale_time),
        url: Some(format!(
            "{}{}",
            url_base.trim_end_matches('/'),
            porchlight_core::invoke::function_invoke_path(&name)
        )),
        selector: Some(resources::selector(&name)),
        keep_alive: book
            .and_then(|r| r.keep_alive.as_ref())
            .map(keep_alive_status)
            .or(previous_status.keep_alive),
        usage: previous_status.usage,
    }
}

/// True when `next` reports an init failure that the Function's current
/// status does not (so the Warning Event is published once).
fn newly_init_failed(f: &Function, next: &FunctionStatus) -> bool {
    let failed = |c: Option<&FunctionCondition>| {
        c.is_some_and(|c| c.reason.as_deref() == Some(reason::INIT_FAILED))
    };
    failed(next.conditions.first()) && !failed(ready_condition(f))
}

/// Why environments are not ready, as far as the pods tell.
#[derive(Clone, Debug, PartialEq)]
pub enum Trouble {
    /// The runtime exited during init (or crash-loops); the message is its last words.
    InitFailed(String),
    /// Something else holds the environment back (image pull, scheduling, ...).
    Waiting(String),
}

/// Looks at the function's pods for an init failure (best effort).
async fn environment_trouble(client: &Client, ns: &str, name: &str) -> Result<Option<Trouble>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(&resources::selector(name)))
        .await?;
    Ok(pod_trouble(&list.items))
}

/// Classifies pod states into a [`Trouble`]; init failures win.
pub fn pod_trouble(pods: &[Pod]) -> Option<Trouble> {
    let mut waiting = None;
    for pod in pods {
        let statuses = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref());
        for cs in statuses.into_iter().flatten() {
            if cs.name != resources::CONTAINER_NAME {
                continue;
            }
            let terminated = cs
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .or_else(|| cs.state.as_ref().and_then(|s| s.terminated.as_ref()));
            if let Some(t) = terminated
                && t.exit_code != 0
            {
                let text = t
                    .message
                    .as_deref()
                    .map(names::init_failure_message)
                    .or_else(|| t.reason.clone())
                    .unwrap_or_else(|| format!("exit code {}", t.exit_code));
                return Some(Trouble::InitFailed(truncate(text.trim(), 512)));
            }
            if let Some(w) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) {
                let reason = w.reason.clone().unwrap_or_default();
                if reason == "CrashLoopBackOff" {
                    return Some(Trouble::InitFailed(
                        "the runtime keeps exiting during init".into(),
                    ));
                }
                waiting.get_or_insert_with(|| {
                    Trouble::Waiting(match &w.message {
                        Some(m) => truncate(&format!("{reason}: {m}"), 512),
                        None => reason,
                    })
                });
            }
        }
        if waiting.is_none()
            && let Some(c) = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| {
                    cs.iter()
                        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
                })
        {
            waiting = Some(Trouble::Waiting(truncate(
                c.message.as_deref().unwrap_or("unschedulable"),
                512,
            )));
        }
    }
    waiting
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

fn ready_condition(f: &Function) -> Option<&FunctionCondition> {
    f.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == names::READY_CONDITION)
}

/// A Ready condition; the transition time moves only when the status does.
fn condition(
    previous: Option<&FunctionCondition>,
    status: &str,
    reason: &str,
    message: &str,
) -> FunctionCondition {
    let last_transition_time = match previous {
        Some(p) if p.status == status && p.last_transition_time.is_some() => {
            p.last_transition_time.clone()
        }
        _ => Some(wall_clock()),
    };
    FunctionCondition {
        type_: names::READY_CONDITION.to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        last_transition_time,
    }
}

async fn write_status(
    f: &Function,
    ctx: &Context,
    ns: &str,
    status: &FunctionStatus,
) -> Result<()> {
    let api: Api<Function> = Api::namespaced(ctx.client.clone(), ns);
    let body = json!({
        "apiVersion": Function::api_version(&()),
        "kind": Function::kind(&()),
        "status": status,
    });
    api.patch_status(&f.name_any(), &apply_params(), &Patch::Apply(body))
        .await?;
    Ok(())
}

async fn publish(
    ctx: &Context,
    f: &Function,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(truncate(note, 1000)),
        action: action.to_string(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &f.object_ref(&())).await {
        warn!(function = %f.name_any(), error = %Error::Event(error), "publishing event failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn termination_messages_become_condition_text() {
        assert_eq!(
            names::init_failure_message(
                r#"{"errorType":"Runtime.ExitError","errorMessage":"exit status 7"}"#
            ),
            "Runtime.ExitError: exit status 7"
        );
        assert_eq!(
            names::init_failure_message("Traceback (most recent call last):\n  boom"),
            "Traceback (most recent call last):\n  boom",
            "log lines (FallbackToLogsOnError) stay as they are"
        );
        assert_eq!(names::init_failure_message(r#"{"errorType":"X"}"#), "X");
    }

    fn function() -> Function {
        serde_yaml::from_str(
            r#"
apiVersion: porchlight.dev/v1alpha1
kind: Function
metadata: {name: hello, namespace: demo, generation: 4}
spec:
  handler: app.handler
  code: {inline: "def handler(e, c): pass"}
"#,
        )
        .expect("yaml")
    }

    fn observed(replicas: i32, ready: i32, wanted: i32) -> ObservedDeployment {
        ObservedDeployment {
            replicas,
            ready,
            wanted,
        }
    }

    fn ready_reason(status: &FunctionStatus) -> (&str, &str) {
        let c = &status.conditions[0];
        (c.status.as_str(), c.reason.as_deref().unwrap_or(""))
    }

    #[test]
    fn status_says_why_environments_are_or_are_not_ready() {
        let f = function();
        let s = next_status(&f, &observed(2, 1, 2), None, false, None, "http://gw");
        assert_eq!(ready_reason(&s), ("True", reason::READY));
        assert_eq!(
            s.conditions[0].message.as_deref(),
            Some("1 of 2 environments ready")
        );
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!(
            s.url.as_deref(),
            Some("http://gw/2015-03-31/functions/hello/invocations")
        );
        let failed = Trouble::InitFailed("Runtime.ImportModuleError: no app".into());
        let s = next_status(
            &f,
            &observed(1, 0, 1),
            None,
            false,
            Some(&failed),
            "http://gw",
        );
        assert_eq!(ready_reason(&s), ("False", reason::INIT_FAILED));
        let s = next_status(&f, &observed(0, 0, 0), None, false, None, "http://gw");
        assert_eq!(ready_reason(&s), ("True", reason::SCALED_TO_ZERO));
        let waiting = Trouble::Waiting("ErrImagePull: no such image".into());
        let s = next_status(
            &f,
            &observed(1, 0, 1),
            None,
            false,
            Some(&waiting),
            "http://gw",
        );
        assert_eq!(ready_reason(&s), ("False", reason::PENDING));
        assert!(
            s.conditions[0]
                .message
                .as_deref()
                .is_some_and(|m| m.ends_with(": ErrImagePull: no such image"))
        );
    }

    #[test]
    fn the_autoscaler_s_record_is_the_desired_count() {
        let f = function();
        let record = ScaleRecord {
            desired: 3,
            observed_concurrency: 2.4,
            last_scale_time: Some("2026-01-01T00:00:00Z".into()),
            keep_alive: None,
        };
        let s = next_status(
            &f,
            &observed(1, 1, 1),
            Some(&record),
            false,
            None,
            "http://gw",
        );
        assert_eq!(s.desired_replicas, Some(3));
        assert_eq!(s.observed_concurrency, Some(2));
        assert_eq!(s.last_scale_time.as_deref(), Some("2026-01-01T00:00:00Z"));
        let s = next_status(&f, &observed(1, 1, 1), None, false, None, "http://gw");
        assert_eq!(
            s.desired_replicas,
            Some(1),
            "without a record: the Deployment's count"
        );
    }

    #[test]
    fn the_keep_alive_is_in_the_status_and_its_idle_times_survive_a_restart() {
        use porchlight_core::autoscaler::KeepAlive;
        use porchlight_core::keepalive::{Decision, IdleHistogram, Mode};
        let mut f = function();
        let mut idle = IdleHistogram::new();
        for _ in 0..40 {
            idle.record_idle(Duration::from_secs(178));
        }
        let record = ScaleRecord {
            desired: 0,
            observed_concurrency: 0.0,
            last_scale_time: None,
            keep_alive: Some(KeepAliveRecord {
                policy: KeepAlive::Adaptive,
                decision: Decision {
                    prewarm_after: Duration::from_secs(108),
                    keep_alive_until: Duration::from_secs(1200),
                    mode: Mode::Histogram,
                },
                next_prewarm: Some("2026-01-01T00:01:48Z".into()),
                histogram: idle.clone(),
            }),
        };
        let s = next_status(
            &f,
            &observed(0, 0, 0),
            Some(&record),
            false,
            None,
            "http://gw",
        );
        let k = s.keep_alive.clone().expect("keep-alive status");
        assert_eq!(
            (k.policy.as_str(), k.mode.as_str()),
            ("adaptive", "histogram")
        );
        assert_eq!((k.prewarm_after_seconds, k.keep_alive_seconds), (108, 1200));
        assert_eq!(k.next_prewarm.as_deref(), Some("2026-01-01T00:01:48Z"));
        assert_eq!(k.idle_times, 40);
        // A restarted controller reads the idle times back from the status,
        // and keeps the status it had until the autoscaler decides again.
        f.status = Some(s);
        assert_eq!(crate::scaling::idle_times(&f), Some(idle));
        let again = next_status(&f, &observed(0, 0, 0), None, false, None, "http://gw");
        assert_eq!(again.keep_alive, Some(k));
    }

    #[test]
    fn a_held_count_is_said_in_a_scaling_condition() {
        let f = function();
        let s = next_status(&f, &observed(2, 2, 2), None, true, None, "http://gw");
        assert_eq!(ready_reason(&s), ("True", reason::READY));
        let held = &s.conditions[1];
        assert_eq!(held.type_, names::SCALING_CONDITION);
        assert_eq!(held.status, "False");
        assert_eq!(held.reason.as_deref(), Some(reason::NO_GATEWAY_REPORTS));
        let s = next_status(&f, &observed(2, 2, 2), None, false, None, "http://gw");
        assert_eq!(s.conditions.len(), 1);
    }

    #[test]
    fn an_init_failure_is_announced_once() {
        let mut f = function();
        let failed = Trouble::InitFailed("Runtime.ExitError: exit status 1".into());
        let next = next_status(
            &f,
            &observed(1, 0, 1),
            None,
            false,
            Some(&failed),
            "http://gw",
        );
        assert!(newly_init_failed(&f, &next));
        f.status = Some(next.clone());
        assert!(!newly_init_failed(&f, &next));
    }
}
