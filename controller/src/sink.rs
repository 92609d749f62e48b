//! Applies autoscaler decisions to the cluster: `spec.replicas` of the
//! function's Deployment, plus a Kubernetes Event on the Function.

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use std::sync::Arc;

use porchlight_api::Function;
use porchlight_core::scaling::{ScaleChange, ScaleSink};
use serde_json::json;

use crate::resources::workload_name;
use crate::{Error, Result};

/// Field manager that owns `spec.replicas` of function Deployments. The
/// reconciler applies everything else under [`crate::reconcile::MANAGER`]
/// and never sets replicas after creation, so the two never fight.
pub const AUTOSCALER_MANAGER: &str = "porchlight-autoscaler";

/// Server-side apply under [`AUTOSCALER_MANAGER`] (forced: the field is ours).
pub fn autoscaler_apply_params() -> PatchParams {
    PatchParams::apply(AUTOSCALER_MANAGER).force()
}

/// The autoscaler's whole applied configuration of a Deployment: its replicas.
pub fn replicas_apply(deployment: &str, replicas: i32) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": deployment},
        "spec": {"replicas": replicas},
    })
}

/// The production [`ScaleSink`].
#[derive(Clone)]
pub struct KubeScaleSink {
    client: Client,
    reporter: Reporter,
}

impl KubeScaleSink {
    /// A sink using this client, reporting Events as `reporter`.
    pub fn new(client: Client, reporter: Reporter) -> Self {
        KubeScaleSink { client, reporter }
    }
}

impl ScaleSink<Arc<Function>> for KubeScaleSink {
    type Error = Error;

    async fn apply(&self, function: &Arc<Function>, change: &ScaleChange) -> Result<()> {
        let ns = function.namespace().ok_or(Error::MissingNamespace)?;
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &ns);
        let name = workload_name(&function.name_any());
        let replicas = i32::try_from(change.to).unwrap_or(i32::MAX);
        api.patch(
            &name,
            &autoscaler_apply_params(),
            &Patch::Apply(replicas_apply(&name, replicas)),
        )
        .await?;
        let event = Event {
            type_: EventType::Normal,
            reason: change.event_reason().to_string(),
            note: Some(change.note()),
            action: "Scale".to_string(),
            secondary: None,
        };
        // A fresh Recorder per decision: kube's Recorder folds Events with the
        // same reason into one series and keeps the first note, which would
        // hide every scale after the first ("0 -> 1" forever).
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        if let Err(error) = recorder.publish(&event, &function.object_ref(&())).await {
            // The scale itself happened; a lost Event is logged, not retried.
            tracing::warn!(function = %function.name_any(), error = %Error::Event(error), "publishing scale event failed");
        }
        Ok(())
    }
}
