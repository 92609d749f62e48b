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
use porchlight_api::function::FunctionCondition;
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
use porchlight_core::scaling::{ScaleBook, wall_clock};

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
    let secs = 1u64 << attempt.saturating_sub(1).min(9);
    Duration::from_secs(secs.min(300))
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
        c.reason.as_deref() != Some("InvalidSpec") || c.message.as_deref() != Some(&message)
    });
    let mut status = f.status.clone().unwrap_or_default();
    status.conditions = vec![condition(previous, "False", "InvalidSpec", &message)];
    status.observed_generation = f.metadata.generation;
    status.selector = Some(resources::selector(&f.name_any()));
    write_status(f, ctx, ns, &status).await?;
    if changed {
        publish(
            ctx,
            f,
            EventType::Warning,
            "InvalidSpec",
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
    let client = ctx.client.clone();

    // Code: our ConfigMap for inline code; the user's ConfigMap is hashed so
    // edits to it roll the environments too.
    let user_code = match &f.spec.code.config_map {
        Some(cm) => Api::<ConfigMap>::namespaced(client.clone(), ns)
            .get_opt(&cm.name)
            .await?
            .and_then(|c| c.data),
        None => None,
    };
    if let Some(mut cm) = resources::code_config_map(f) {
        let cm_name = resources::code_config_map_name(&name);
        let applied = caches::stamp(&mut cm);
        if ctx.caches.config_map_hash(ns, &cm_name).as_deref() != Some(applied.as_str()) {
            Api::<ConfigMap>::namespaced(client.clone(), ns)
                .patch(&cm_name, &apply_params(), &Patch::Apply(&cm))
                .await?;
        }
    }
    let hash = resources::code_hash(f, user_code.as_ref());

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let workload = resources::workload_name(&name);
    let book = ctx.book.get(&function_key(f));
    let mut d = resources::deployment(f, &ctx.settings.workload, &hash, None);
    let applied = caches::stamp(&mut d);
    let deployment = match ctx.caches.deployment(ns, &workload) {
        Some(cached) if caches::applied_hash(&cached.metadata) == Some(applied.as_str()) => {
            (*cached).clone()
        }
        Some(_) => {
            deployments
                .patch(&workload, &apply_params(), &Patch::Apply(&d))
                .await?
        }
        None => {
            // Created with the autoscaler's current count (or the floor) and
            // no environment more: replicas are the autoscaler's field from the
            // start. Three applies: the autoscaler's creates the object with
            // replicas, ours takes the rest, and the autoscaler's second one
            // (replicas only) lets go of the rest, so that a field later
            // dropped from our apply is really removed.
            let initial = book.as_ref().map_or(settings.min_scale, |r| r.desired);
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
            created
        }
    };

    let mut service = resources::service(f);
    let applied = caches::stamp(&mut service);
    if ctx.caches.service_hash(ns, &workload).as_deref() != Some(applied.as_str()) {
        Api::<Service>::namespaced(client.clone(), ns)
            .patch(&workload, &apply_params(), &Patch::Apply(&service))
            .await?;
    }

    // Status from the Deployment, the autoscaler and (when something is not
    // ready) the environments themselves.
    let dstatus = deployment.status.clone().unwrap_or_default();
    let replicas = dstatus.replicas.unwrap_or(0);
    let ready = dstatus.ready_replicas.unwrap_or(0);
    let spec_replicas = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(0);
    let trouble = if replicas > ready || spec_replicas > ready {
        environment_trouble(&client, ns, &name).await?
    } else {
        None
    };
    let previous_status = f.status.clone().unwrap_or_default();
    let desired = book
        .as_ref()
        .map(|r| i32::try_from(r.desired).unwrap_or(i32::MAX))
        .or(previous_status.desired_replicas)
        .unwrap_or(spec_replicas);
    let previous = ready_condition(f);
    let (cond_status, reason, message) = if ready > 0 {
        (
            "True",
            "Ready",
            format!("{ready} of {replicas} environments ready"),
        )
    } else if let Some(Trouble::InitFailed(msg)) = &trouble {
        ("False", "InitFailed", msg.clone())
    } else if desired == 0 && replicas == 0 {
        (
            "True",
            "ScaledToZero",
            "No environments; the next event starts one".to_string(),
        )
    } else {
        let detail = match &trouble {
            Some(Trouble::Waiting(msg)) => format!(": {msg}"),
            _ => String::new(),
        };
        (
            "False",
            "Pending",
            format!("Waiting for environments to finish init{detail}"),
        )
    };
    let newly_failed = reason == "InitFailed"
        && previous.is_none_or(|c| c.reason.as_deref() != Some("InitFailed"));
    let status = FunctionStatus {
        conditions: vec![condition(previous, cond_status, reason, &message)],
        observed_generation: f.metadata.generation,
        replicas: Some(replicas),
        ready_replicas: Some(ready),
        desired_replicas: Some(desired),
        observed_concurrency: book
            .as_ref()
            .map(|r| r.observed_concurrency.round() as i32)
            .or(previous_status.observed_concurrency),
        last_scale_time: book
            .as_ref()
            .and_then(|r| r.last_scale_time.clone())
            .or(previous_status.last_scale_time),
        url: Some(format!(
            "{}/2015-03-31/functions/{name}/invocations",
            ctx.settings.url_base.trim_end_matches('/')
        )),
        selector: Some(resources::selector(&name)),
    };
    if f.status.as_ref() != Some(&status) {
        write_status(f, ctx, ns, &status).await?;
    }
    if newly_failed {
        publish(ctx, f, EventType::Warning, "InitFailed", "Init", &message).await;
    }
    Ok(Action::requeue(RESYNC))
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
                    .map(init_error_text)
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

/// A termination message as condition text: the shim's init error JSON
/// becomes `errorType: errorMessage`; anything else (log lines) stays as is.
pub fn init_error_text(message: &str) -> String {
    let parsed = serde_json::from_str::<serde_json::Value>(message.trim()).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
    };
    match (field("errorType"), field("errorMessage")) {
        (Some(t), Some(m)) => format!("{t}: {m}"),
        (Some(t), None) => t,
        _ => message.to_string(),
    }
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
        .find(|c| c.type_ == "Ready")
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
        type_: "Ready".to_string(),
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
            init_error_text(r#"{"errorType":"Runtime.ExitError","errorMessage":"exit status 7"}"#),
            "Runtime.ExitError: exit status 7"
        );
        assert_eq!(
            init_error_text("Traceback (most recent call last):\n  boom"),
            "Traceback (most recent call last):\n  boom",
            "log lines (FallbackToLogsOnError) stay as they are"
        );
        assert_eq!(init_error_text(r#"{"errorType":"X"}"#), "X");
    }
}
