//! Applies autoscaler decisions to the cluster: `spec.replicas` of the
//! function's Deployment, plus a Kubernetes Event on the Function.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;

use porchlight_api::Function;
use porchlight_core::scaling::{ScaleChange, ScaleSink};
use serde_json::json;

use crate::resources::{selector, workload_name};
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

/// The annotation a ReplicaSet reads to choose which pods go first on a
/// scale-down: the lowest cost goes first, and a pod without it costs 0.
pub const POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// The deletion-cost patches a scale-down needs: a pod running invocations
/// costs its in-flight count, so the ReplicaSet removes idle pods first; an
/// idle pod loses a cost left from earlier. Pods already right are skipped.
/// `pods` holds each pod's name and its current annotation.
pub fn deletion_cost_patches(
    pods: &[(String, Option<String>)],
    busy: &BTreeMap<String, u32>,
) -> Vec<(String, Option<String>)> {
    pods.iter()
        .filter_map(|(name, current)| {
            let want = busy
                .get(name)
                .filter(|n| **n > 0)
                .map(|n| i32::try_from(*n).unwrap_or(i32::MAX).to_string());
            (want != *current).then(|| (name.clone(), want))
        })
        .collect()
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

impl KubeScaleSink {
    /// Sets the pod-deletion-cost of the function's pods from the busy
    /// environments the gateways reported, before the replica count drops.
    async fn mark_busy_pods(
        &self,
        ns: &str,
        function: &Function,
        change: &ScaleChange,
    ) -> Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let list = pods
            .list_metadata(&ListParams::default().labels(&selector(&function.name_any())))
            .await?;
        let current: Vec<(String, Option<String>)> = list
            .items
            .iter()
            .map(|p| {
                (
                    p.name_any(),
                    p.annotations().get(POD_DELETION_COST).cloned(),
                )
            })
            .collect();
        for (pod, cost) in deletion_cost_patches(&current, &change.busy_environments) {
            let patch = json!({"metadata": {"annotations": {POD_DELETION_COST: cost}}});
            pods.patch(&pod, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            tracing::debug!(function = %function.name_any(), %pod, ?cost, "pod deletion cost set");
        }
        Ok(())
    }
}

impl ScaleSink<Arc<Function>> for KubeScaleSink {
    type Error = Error;

    async fn apply(&self, function: &Arc<Function>, change: &ScaleChange) -> Result<()> {
        let ns = function.namespace().ok_or(Error::MissingNamespace)?;
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &ns);
        let name = workload_name(&function.name_any());
        let replicas = i32::try_from(change.to).unwrap_or(i32::MAX);
        let scaling_down = change.to > 0 && change.from.is_none_or(|from| change.to < from);
        if scaling_down {
            // Best effort: without the costs the scale-down still happens,
            // only with the ReplicaSet's own choice of pods.
            if let Err(error) = self.mark_busy_pods(&ns, function, change).await {
                tracing::warn!(function = %function.name_any(), %error, "marking busy pods before a scale-down failed");
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_pods_cost_their_load_and_idle_ones_lose_old_costs() {
        let pods = vec![
            ("fn-a-1".to_string(), None),
            ("fn-a-2".to_string(), Some("3".to_string())),
            ("fn-a-3".to_string(), Some("2".to_string())),
            ("fn-a-4".to_string(), None),
        ];
        let busy = BTreeMap::from([("fn-a-1".to_string(), 2), ("fn-a-3".to_string(), 2)]);
        assert_eq!(
            deletion_cost_patches(&pods, &busy),
            vec![
                ("fn-a-1".to_string(), Some("2".to_string())),
                ("fn-a-2".to_string(), None),
            ]
        );
        // A busy pod another gateway reported but that is gone: nothing to patch.
        let busy = BTreeMap::from([("gone".to_string(), 1)]);
        assert!(deletion_cost_patches(&pods[..1], &busy).is_empty());
    }
}
