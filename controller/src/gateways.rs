//! Finding gateways and long-polling their concurrency reports.
//!
//! Each gateway gets one poller task that asks
//! `GET <gateway>/v1/concurrency?after=<seq>&waitMs=<ms>` in a loop. The
//! gateway answers at once when it has a newer report or a poke (demand for a
//! function at zero), otherwise after `waitMs`. Reports go into one bounded
//! channel; a full channel makes the pollers wait (reports are never dropped,
//! so a poke is never lost).
//!
//! Gateways come from `--gateway-url` flags, or from the Pods labelled
//! `app.kubernetes.io/name=porchlight-gateway` in the controller's namespace.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use porchlight_core::GatewayReport;
use porchlight_core::report::REPORT_PATH;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::{Error, Result};
use porchlight_core::scaling::GatewayMessage;

/// Label selector of gateway pods.
pub const GATEWAY_SELECTOR: &str = "app.kubernetes.io/name=porchlight-gateway";
/// Port of the gateway's internal listener (reports; `--internal-listen`).
pub const GATEWAY_PORT: u16 = 8081;
/// How long one long-poll may wait at the gateway.
pub const POLL_WAIT: Duration = Duration::from_millis(1000);

/// Polls one gateway until cancelled.
pub async fn poll_gateway(
    http: reqwest::Client,
    base_url: String,
    tx: mpsc::Sender<GatewayMessage>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut after: u64 = 0;
    let mut failures: u32 = 0;
    let base = base_url.trim_end_matches('/').to_string();
    loop {
        let url = format!(
            "{base}{REPORT_PATH}?after={after}&waitMs={}",
            POLL_WAIT.as_millis()
        );
        let request = http
            .get(&url)
            .timeout(POLL_WAIT + Duration::from_secs(3))
            .send();
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            r = request => r,
        };
        let report = match outcome {
            Ok(resp) if resp.status().is_success() => resp
                .json::<GatewayReport>()
                .await
                .map_err(|e| e.to_string()),
            Ok(resp) => Err(format!("status {}", resp.status())),
            Err(e) => Err(e.to_string()),
        };
        match report {
            Ok(report) => {
                failures = 0;
                // A restarted gateway counts from zero again: follow it.
                after = report.sequence;
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    sent = tx.send(GatewayMessage::Report(report)) => if sent.is_err() { return },
                }
            }
            Err(error) => {
                metrics.gateway_poll_errors.inc();
                failures = failures.saturating_add(1);
                let delay =
                    Duration::from_millis(250u64 << failures.min(4)).min(Duration::from_secs(4));
                if failures == 1 || failures.is_multiple_of(20) {
                    warn!(gateway = %base, %error, failures, "polling gateway failed");
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Runs one poller per URL until cancelled.
pub async fn poll_static(
    urls: Vec<String>,
    tx: mpsc::Sender<GatewayMessage>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> Result<()> {
    let http = reqwest::Client::new();
    let tasks: Vec<_> = urls
        .into_iter()
        .map(|url| {
            tokio::spawn(poll_gateway(
                http.clone(),
                url,
                tx.clone(),
                metrics.clone(),
                cancel.child_token(),
            ))
        })
        .collect();
    cancel.cancelled().await;
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// The poll URL of each ready gateway pod, by pod name.
pub fn gateway_urls(pods: &[Arc<Pod>]) -> HashMap<String, String> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let status = p.status.as_ref()?;
            let ready = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let ip = status.pod_ip.as_ref()?;
            ready.then(|| {
                (
                    p.name_any(),
                    porchlight_core::endpoint::pod_url(ip, GATEWAY_PORT),
                )
            })
        })
        .collect()
}

/// Watches gateway pods in `namespace` and keeps one poller per ready pod.
/// Fails when the watch ends (the process should exit and restart).
pub async fn poll_discovered(
    client: Client,
    namespace: String,
    tx: mpsc::Sender<GatewayMessage>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(client, &namespace);
    let (reader, writer) = reflector::store::<Pod>();
    let watch = watcher(api, watcher::Config::default().labels(GATEWAY_SELECTOR))
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .for_each(|r| {
            if let Err(error) = r {
                warn!(%error, "gateway pod watch error (retrying)");
            }
            futures::future::ready(())
        });
    let supervise = supervise(reader, tx, metrics, cancel.clone());
    tokio::select! {
        _ = cancel.cancelled() => Ok(()),
        _ = watch => Err(Error::TaskEnded("gateway pod watch")),
        r = supervise => r,
    }
}

async fn supervise(
    reader: Store<Pod>,
    tx: mpsc::Sender<GatewayMessage>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> Result<()> {
    let http = reqwest::Client::new();
    let mut pollers: HashMap<String, (String, CancellationToken)> = HashMap::new();
    let mut every = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = every.tick() => {}
        }
        let wanted = gateway_urls(&reader.state());
        let stale: Vec<String> = pollers
            .iter()
            .filter(|(pod, (url, _))| wanted.get(*pod) != Some(url))
            .map(|(pod, _)| pod.clone())
            .collect();
        for pod in stale {
            if let Some((url, token)) = pollers.remove(&pod) {
                token.cancel();
                debug!(gateway = %pod, %url, "gateway gone");
                if tx.send(GatewayMessage::Gone(pod)).await.is_err() {
                    return Err(Error::TaskEnded("autoscaler"));
                }
            }
        }
        for (pod, url) in wanted {
            if pollers.contains_key(&pod) {
                continue;
            }
            info!(gateway = %pod, %url, "polling gateway");
            let token = cancel.child_token();
            tokio::spawn(poll_gateway(
                http.clone(),
                url.clone(),
                tx.clone(),
                metrics.clone(),
                token.clone(),
            ));
            pollers.insert(pod, (url, token));
        }
    }
}
