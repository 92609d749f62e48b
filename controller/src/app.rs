//! Wiring: the client, the ops server, the lease, the Function controller,
//! the autoscaler loop and the gateway pollers. Every long-running part is a
//! critical task: if one ends unexpectedly, `run` returns an error and the
//! process exits non-zero.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client};
use porchlight_api::Function;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::caches::{
    function_of_pod, functions_using_config_map, functions_using_secret, owned_caches, watch_owned,
};
use crate::config::Config;
use crate::gateways;
use crate::leader::Leader;
use crate::metrics::Metrics;
use crate::ops::{self, Health};
use crate::reconcile::{self, Context, ReconcileSettings};
use crate::resources::{FUNCTION_LABEL, MANAGED_BY, WorkloadSettings};
use crate::scaling::autoscaler_loop;
use crate::sink::KubeScaleSink;
use crate::{Error, Result};
use porchlight_core::scaling::{GatewayMessage, ScaleBook};

/// Bound of the channel from gateway pollers to the autoscaler.
pub const REPORT_CHANNEL: usize = 256;

/// Builds the Kubernetes client: `--kubeconfig` (and `--context`) if given,
/// else in-cluster config, else `$KUBECONFIG` / `~/.kube/config`.
pub async fn client(config: &Config) -> Result<Client> {
    let options = kube::config::KubeConfigOptions {
        context: config.args.context.clone(),
        ..Default::default()
    };
    let kube_config = match &config.args.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(config_error)?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(config_error)?
        }
        None if config.args.context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(config_error)?,
        None => kube::Config::infer().await.map_err(config_error)?,
    };
    Ok(Client::try_from(kube_config)?)
}

fn config_error(e: impl std::fmt::Display) -> Error {
    Error::KubeConfig(e.to_string())
}

/// Runs the controller until `shutdown` is cancelled or a critical task fails.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());

    let listener = TcpListener::bind(config.args.listen).await?;
    let ops_addr = listener.local_addr()?;
    info!(addr = %ops_addr, "ops server listening (/live, /ready, /metrics)");
    let ops_shutdown = shutdown.clone();
    let ops = tokio::spawn(
        axum::serve(listener, ops::app(health.clone(), metrics.clone()))
            .with_graceful_shutdown(async move { ops_shutdown.cancelled().await })
            .into_future(),
    );

    let client = client(&config).await?;
    // Not ready as soon as shutdown starts; the work then winds down and the
    // lease is released so a standby takes over without waiting for expiry.
    let work = shutdown.child_token();
    let unready = {
        let (health, shutdown) = (health.clone(), shutdown.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            health.set_ready(false);
        })
    };
    let result = lead_and_work(&config, client, metrics, health.clone(), work.clone()).await;
    health.set_ready(false);
    shutdown.cancel();
    unready.abort();
    if let Err(e) = ops.await {
        warn!(error = %e, "ops server task failed");
    }
    result
}

async fn lead_and_work(
    config: &Config,
    client: Client,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    work: CancellationToken,
) -> Result<()> {
    if !config.args.leader_election {
        info!("leader election disabled: working at once");
        metrics.leader.set(1);
        return work_as_leader(config, client, metrics, health, work).await;
    }
    let leader = Leader::new(
        client.clone(),
        &config.args.namespace,
        &config.args.lease_name,
        &config.identity,
        config.args.lease_seconds,
    )
    .await?;
    let (tx, mut rx) = watch::channel(false);
    health.set_ready(true);
    info!(identity = %config.identity, lease = %config.args.lease_name, "standing by for the leader lease");
    let lease = leader.run(tx);
    tokio::pin!(lease);
    // Wait for leadership while renewing attempts run.
    loop {
        tokio::select! {
            r = &mut lease => return r.and(Err(Error::TaskEnded("lease"))),
            _ = work.cancelled() => return Ok(()),
            changed = rx.changed() => {
                if changed.is_err() { return Err(Error::TaskEnded("lease")); }
                if *rx.borrow() { break; }
            }
        }
    }
    metrics.leader.set(1);
    health.set_ready(false);
    let result = tokio::select! {
        r = &mut lease => r.and(Err(Error::TaskEnded("lease"))),
        r = work_as_leader(config, client, metrics.clone(), health, work.clone()) => r,
    };
    work.cancel();
    metrics.leader.set(0);
    match tokio::time::timeout(Duration::from_secs(5), leader.release()).await {
        Ok(Ok(())) => info!("released the leader lease"),
        Ok(Err(e)) => warn!(error = %e, "releasing the lease failed; it expires by itself"),
        Err(_) => warn!("releasing the lease timed out; it expires by itself"),
    }
    result
}

/// What the end of a critical task means: its own error, or, when it just
/// stopped, a clean end only if the work was cancelled.
pub fn task_ended(what: &'static str, result: Result<()>, cancelled: bool) -> Result<()> {
    match result {
        Err(e) => Err(e),
        Ok(()) if cancelled => Ok(()),
        Ok(()) => Err(Error::TaskEnded(what)),
    }
}

/// Polls the gateways for reports: the pods found by label, or the fixed
/// URLs given on the command line.
async fn poll_gateways(
    config: &Config,
    client: Client,
    reports: mpsc::Sender<GatewayMessage>,
    metrics: Arc<Metrics>,
    work: &CancellationToken,
) -> Result<()> {
    if config.args.gateway_urls.is_empty() {
        gateways::poll_discovered(
            client,
            config.args.namespace.clone(),
            reports,
            metrics,
            work.clone(),
        )
        .await
    } else {
        gateways::poll_static(
            config.args.gateway_urls.clone(),
            reports,
            metrics,
            work.clone(),
        )
        .await
    }
}

async fn work_as_leader(
    config: &Config,
    client: Client,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    work: CancellationToken,
) -> Result<()> {
    let reporter = Reporter {
        controller: "porchlight-controller".into(),
        instance: Some(config.identity.clone()),
    };
    let recorder = Recorder::new(client.clone(), reporter.clone());
    let book = Arc::new(ScaleBook::default());
    let (caches, writers) = owned_caches();
    let ctx = Arc::new(Context::new(
        client.clone(),
        recorder,
        metrics.clone(),
        ReconcileSettings {
            workload: WorkloadSettings {
                runtime_image: config.args.runtime_image.clone(),
                node_runtime_image: config.args.node_runtime_image.clone(),
            },
            url_base: config.url_base.clone(),
        },
        book.clone(),
        caches,
    ));

    let functions: Api<Function> = Api::all(client.clone());
    let owned =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"));
    // The owned objects wake their Function and fill the reconciler's caches.
    let watches = watch_owned(&client, owned, writers);
    let controller = Controller::new(functions, watcher::Config::default().any_semantic());
    let function_store = controller.store();
    let secret_users = function_store.clone();
    let controller = controller
        .owns_stream(watches.deployments)
        .owns_stream(watches.services)
        .owns_stream(watches.config_maps)
        // Environment pods wake their Function too (init failures, pending
        // pods); metadata only, nothing stored.
        .watches(
            Api::<PartialObjectMeta<Pod>>::all(client.clone()),
            watcher::Config::default().labels(&format!(
                "{FUNCTION_LABEL},app.kubernetes.io/managed-by={MANAGED_BY}"
            )),
            |pod| function_of_pod(&pod),
        )
        // So do the users' ConfigMaps that hold Functions' code (metadata only).
        .watches(
            Api::<PartialObjectMeta<ConfigMap>>::all(client.clone()),
            watcher::Config::default(),
            move |cm| functions_using_config_map(&function_store, &cm),
        )
        // And the Secrets their environments read (metadata only): an edit
        // rolls the pods.
        .watches_stream(watches.secrets, move |secret| {
            functions_using_secret(&secret_users, &secret)
        })
        .with_config(controller::Config::default().concurrency(config.args.reconcile_concurrency));
    let store = controller.store();
    let graceful = work.clone();
    let reconciling = controller
        .graceful_shutdown_on(async move { graceful.cancelled().await })
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|r| {
            match r {
                Ok((obj, _)) => tracing::debug!(function = %obj.name, "reconciled"),
                Err(controller::Error::ReconcilerFailed(..)) => {} // counted in error_policy
                Err(controller::Error::ObjectNotFound(obj)) => {
                    tracing::debug!(%obj, "reconcile skipped: gone")
                }
                Err(e) => warn!(error = %e, "controller stream error (retrying)"),
            }
            futures::future::ready(())
        });

    let (reports_tx, reports_rx) = mpsc::channel(REPORT_CHANNEL);
    let sink = KubeScaleSink::new(client.clone(), reporter);
    let autoscaler = autoscaler_loop(store.clone(), sink, book, metrics.clone());
    let gateways = poll_gateways(config, client.clone(), reports_tx, metrics.clone(), &work);
    let synced = {
        let store = store.clone();
        let health = health.clone();
        async move {
            if store.wait_until_ready().await.is_ok() {
                info!("function cache synced");
                health.set_ready(true);
            }
            std::future::pending::<()>().await;
        }
    };

    let result = tokio::select! {
        _ = reconciling => task_ended("function controller", Ok(()), work.is_cancelled()),
        r = autoscaler.run(reports_rx, work.clone()) => task_ended(
            "autoscaler",
            r.map_err(|_| Error::TaskEnded("gateway report source")),
            work.is_cancelled(),
        ),
        r = gateways => task_ended("gateway pollers", r, work.is_cancelled()),
        _ = synced => Ok(()),
        _ = work.cancelled() => Ok(()),
    };
    if let Err(e) = &result {
        error!(error = %e, "critical task ended");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_critical_task_may_only_end_when_the_work_is_cancelled() {
        assert!(task_ended("x", Ok(()), true).is_ok());
        assert!(matches!(
            task_ended("x", Ok(()), false),
            Err(Error::TaskEnded("x"))
        ));
        assert!(matches!(
            task_ended("x", Err(Error::MissingNamespace), true),
            Err(Error::MissingNamespace)
        ));
    }
}
