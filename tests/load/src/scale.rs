//! Watching how many environments each function has while the load runs.
//!
//! A [`ScaleObserver`] answers "how many environments does each function want
//! and have right now"; the [`sample`] loop asks it once a second and records
//! the answer next to the load offered in that second.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use kube::api::{Api, ListParams};
use porchlight_api::Function;
use porchlight_core::usage::FunctionUsage;
use serde_json::Value;
use tokio::sync::{OnceCell, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::live::{EnvironmentCounts, LiveStats};
use crate::profile::Profile;

/// How often scale is sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// One function's environments at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FunctionScale {
    /// Function name.
    pub name: String,
    /// Environments the autoscaler wants.
    pub desired: Option<u32>,
    /// Environments that finished init and take events.
    pub ready: Option<u32>,
    /// Invocations in flight, as the platform sees them.
    pub in_flight: Option<u32>,
    /// Invocations queued in the gateway.
    pub queued: Option<u32>,
}

/// Where environment counts come from: the gateway's stats, or the Function status.
pub trait ScaleObserver: Send + Sync {
    /// Current scale of `functions` (one entry per name, in any order; missing
    /// names count as unknown). An `Err` is a one-line reason.
    fn observe<'a>(
        &'a self,
        functions: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<FunctionScale>, String>>;

    /// Where the observer looks, for the report.
    fn source(&self) -> String;

    /// What `functions` used so far, as the platform metered it (the
    /// gateway's `/v1/usage`, or the Functions' `status.usage`). Read before
    /// and after a run; the difference is the run's usage.
    fn usage<'a>(
        &'a self,
        functions: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<(String, FunctionUsage)>, String>>;
}

/// The usage of `functions` in a `/v1/usage` answer (`{"functions": [{"name",
/// ...counters}]}`); a function not listed has used nothing yet.
pub fn parse_gateway_usage(
    body: &Value,
    functions: &[String],
) -> Result<Vec<(String, FunctionUsage)>, String> {
    let list = body
        .get("functions")
        .and_then(Value::as_array)
        .ok_or("the gateway's usage has no `functions` list")?;
    Ok(functions
        .iter()
        .map(|name| {
            let used = list
                .iter()
                .find(|f| f.get("name").and_then(Value::as_str) == Some(name.as_str()))
                .and_then(|f| serde_json::from_value::<FunctionUsage>(f.clone()).ok())
                .unwrap_or_default();
            (name.clone(), used)
        })
        .collect())
}

/// Reads the gateway's `GET /v1/functions`.
#[derive(Debug, Clone)]
pub struct GatewayObserver {
    client: reqwest::Client,
    url: String,
}

impl GatewayObserver {
    /// Polls `url` (for example `http://127.0.0.1:8080/v1/functions`).
    pub fn new(url: impl Into<String>) -> Result<GatewayObserver, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(900))
            .build()?;
        Ok(GatewayObserver {
            client,
            url: url.into(),
        })
    }
}

impl ScaleObserver for GatewayObserver {
    fn observe<'a>(
        &'a self,
        functions: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<FunctionScale>, String>> {
        Box::pin(async move {
            let response = self
                .client
                .get(&self.url)
                .send()
                .await
                .map_err(|e| format!("GET {}: {e}", self.url))?;
            let status = response.status();
            if !status.is_success() {
                return Err(format!("GET {}: HTTP {status}", self.url));
            }
            let body: Value = response
                .json()
                .await
                .map_err(|e| format!("GET {}: {e}", self.url))?;
            parse_gateway_functions(&body, functions)
        })
    }

    fn source(&self) -> String {
        format!("gateway {}", self.url)
    }

    fn usage<'a>(
        &'a self,
        functions: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<(String, FunctionUsage)>, String>> {
        Box::pin(async move {
            // The usage is beside the function list: .../v1/functions -> .../v1/usage.
            let url = match self.url.strip_suffix("/functions") {
                Some(base) => format!("{base}/usage"),
                None => return Err(format!("cannot tell the usage URL from {}", self.url)),
            };
            let response = self
                .client
                .get(&url)
                .send()
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            let status = response.status();
            if !status.is_success() {
                return Err(format!("GET {url}: HTTP {status}"));
            }
            let body: Value = response
                .json()
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            parse_gateway_usage(&body, functions)
        })
    }
}

/// Reads the gateway's function list leniently. Accepts a list of objects, or
/// an object with a `functions` list or map. Field names may be
/// `desired`/`desiredEnvironments`/`desiredReplicas`, `ready`/
/// `readyEnvironments`/`readyReplicas`, `inFlight`, `queued`. A function the
/// gateway does not list has no environments (0 desired, 0 ready).
pub fn parse_gateway_functions(
    body: &Value,
    functions: &[String],
) -> Result<Vec<FunctionScale>, String> {
    let list = body.get("functions").unwrap_or(body);
    let entries: Vec<(Option<&str>, &Value)> = match list {
        Value::Array(items) => items.iter().map(|v| (None, v)).collect(),
        Value::Object(map) => map.iter().map(|(k, v)| (Some(k.as_str()), v)).collect(),
        _ => return Err("the gateway's function list is neither a list nor a map".into()),
    };
    let number = |v: &Value, keys: &[&str]| -> Option<u32> {
        keys.iter().find_map(|k| {
            let field = v.get(*k)?;
            field
                .as_u64()
                .or_else(|| field.as_f64().map(|f| f.max(0.0).round() as u64))
                .map(|n| n.min(u64::from(u32::MAX)) as u32)
        })
    };
    let mut out = Vec::with_capacity(functions.len());
    for name in functions {
        let entry = entries.iter().find_map(|(key, value)| {
            let listed = value
                .get("name")
                .and_then(Value::as_str)
                .or(*key)
                .unwrap_or_default();
            let matches = listed == name
                || listed
                    .rsplit_once('/')
                    .is_some_and(|(_, short)| short == name);
            matches.then_some(*value)
        });
        out.push(match entry {
            Some(v) => FunctionScale {
                name: name.clone(),
                desired: number(v, &["desired", "desiredEnvironments", "desiredReplicas"]),
                ready: number(
                    v,
                    &[
                        "ready",
                        "readyEnvironments",
                        "readyReplicas",
                        "ready_environments",
                    ],
                ),
                in_flight: number(v, &["inFlight", "in_flight"]),
                queued: number(v, &["queued"]),
            },
            None => FunctionScale {
                name: name.clone(),
                desired: Some(0),
                ready: Some(0),
                in_flight: None,
                queued: None,
            },
        });
    }
    Ok(out)
}

/// How long one LIST of the Functions may take, so that a slow API server
/// does not stretch the one-second sampling.
const KUBERNETES_TIMEOUT: Duration = Duration::from_millis(900);

/// Reads `status.desiredReplicas` and `status.readyReplicas` of the `Function`
/// objects in one namespace, with one LIST per observation.
///
/// The client comes from the usual inference (`KUBECONFIG`, `~/.kube/config`,
/// or the in-cluster service account) and is built on the first observation,
/// so constructing the observer never needs a cluster.
pub struct KubernetesObserver {
    namespace: String,
    client: OnceCell<kube::Client>,
}

impl std::fmt::Debug for KubernetesObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesObserver")
            .field("namespace", &self.namespace)
            .field("connected", &self.client.initialized())
            .finish()
    }
}

impl KubernetesObserver {
    /// Observes the Functions of `namespace`.
    pub fn new(namespace: impl Into<String>) -> KubernetesObserver {
        KubernetesObserver {
            namespace: namespace.into(),
            client: OnceCell::new(),
        }
    }

    async fn client(&self) -> Result<&kube::Client, String> {
        self.client
            .get_or_try_init(|| async {
                kube::Client::try_default()
                    .await
                    .map_err(|e| one_line(&format!("Kubernetes client: {e}")))
            })
            .await
    }
}

impl ScaleObserver for KubernetesObserver {
    fn observe<'a>(
        &'a self,
        functions: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<FunctionScale>, String>> {
        Box::pin(async move {
            let client = self.client().await?.clone();
            let api: Api<Function> = Api::namespaced(client, &self.namespace);
            let what = format!(
                "LIST functions.porchlight.dev in namespace {}",
                self.namespace
            );
            let list = tokio::time::timeout(KUBERNETES_TIMEOUT, api.list(&ListParams::default()))
                .await
                .map_err(|_| {
                    format!(
                        "{what}: no answer within {} ms",
                        KUBERNETES_TIMEOUT.as_millis()
                    )
                })?
                .map_err(|e| one_line(&format!("{what}: {e}")))?;
            Ok(function_scales(&list.items, functions))
        })
    }

    fn source(&self) -> String {
        format!("Function status in namespace {}", self.namespace)
    }

    fn usage<'a>(
        &'a self,
        functions: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<(String, FunctionUsage)>, String>> {
        Box::pin(async move {
            let client = self.client().await?.clone();
            let api: Api<Function> = Api::namespaced(client, &self.namespace);
            let list = tokio::time::timeout(KUBERNETES_TIMEOUT, api.list(&ListParams::default()))
                .await
                .map_err(|_| "LIST functions: no answer".to_string())?
                .map_err(|e| one_line(&format!("LIST functions: {e}")))?;
            Ok(functions
                .iter()
                .map(|name| {
                    let used = list
                        .items
                        .iter()
                        .find(|f| f.metadata.name.as_deref() == Some(name.as_str()))
                        .and_then(|f| f.status.as_ref()?.usage.as_ref())
                        .map(|u| u.to_usage())
                        .unwrap_or_default();
                    (name.clone(), used)
                })
                .collect())
        })
    }
}

/// Maps listed `Function` objects to the scale of `functions`, by
/// `metadata.name`: `status.desiredReplicas` is desired and
/// `status.readyReplicas` ready. A Function that is not listed has no
/// environments (0 desired, 0 ready); one without a status yet (or without
/// those fields) is unknown. `status.observedConcurrency` is in flight plus
/// queued summed over gateways at the autoscaler's last decision, so it fills
/// neither `in_flight` nor `queued`.
pub fn function_scales(items: &[Function], functions: &[String]) -> Vec<FunctionScale> {
    let count = |n: Option<i32>| n.map(|n| u32::try_from(n).unwrap_or(0));
    functions
        .iter()
        .map(|name| {
            let found = items
                .iter()
                .find(|f| f.metadata.name.as_deref() == Some(name.as_str()));
            match found {
                Some(f) => {
                    let status = f.status.as_ref();
                    FunctionScale {
                        name: name.clone(),
                        desired: count(status.and_then(|s| s.desired_replicas)),
                        ready: count(status.and_then(|s| s.ready_replicas)),
                        in_flight: None,
                        queued: None,
                    }
                }
                None => FunctionScale {
                    name: name.clone(),
                    desired: Some(0),
                    ready: Some(0),
                    in_flight: None,
                    queued: None,
                },
            }
        })
        .collect()
}

/// Collapses an error message to one line.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// One function's scale and offered load in one sampled second.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleRow {
    /// When the sample was taken, from the start of the run.
    pub t: Duration,
    /// Index of the function.
    pub function: usize,
    /// The profile's level (callers or requests per second) at `t`; 0 after the load.
    pub profile_level: f64,
    /// Requests per second the tool offered this function since the previous sample.
    pub offered_rps: f64,
    /// Observed scale (all `None` if the observation failed).
    pub scale: FunctionScale,
}

/// What the sampler tells the run about scale-down.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SamplerState {
    /// At least one observation succeeded.
    pub ever_observed: bool,
    /// Time of the latest sample in which every function had 0 ready (and 0 or
    /// unknown desired) environments.
    pub all_zero_at: Option<Duration>,
    /// Observations that failed.
    pub failures: u64,
}

/// Samples scale every [`SAMPLE_INTERVAL`] until `cancel` fires. Returns the rows.
pub async fn sample(
    observer: Arc<dyn ScaleObserver>,
    functions: Vec<String>,
    profile: Profile,
    start: Instant,
    stats: Arc<LiveStats>,
    state: watch::Sender<SamplerState>,
    cancel: CancellationToken,
) -> Vec<ScaleRow> {
    let mut rows = Vec::new();
    let mut tick = tokio::time::interval_at(start, SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut previous_attempted = vec![0u64; functions.len()];
    let mut previous_t = Duration::ZERO;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cancel.cancelled() => break,
        }
        let observed = tokio::select! {
            observed = observer.observe(&functions) => observed,
            () = cancel.cancelled() => break,
        };
        let t = start.elapsed();
        let attempted = stats.attempted_per_function();
        let elapsed = (t - previous_t).as_secs_f64();
        let profile_level = profile.level_at(t).unwrap_or(0.0);
        let scales: Vec<FunctionScale> = match observed {
            Ok(list) => functions
                .iter()
                .map(|name| {
                    list.iter()
                        .find(|s| &s.name == name)
                        .cloned()
                        .unwrap_or_else(|| FunctionScale {
                            name: name.clone(),
                            ..FunctionScale::default()
                        })
                })
                .collect(),
            Err(reason) => {
                state.send_modify(|s| s.failures += 1);
                if rows.is_empty() {
                    eprintln!("scale observation failed (charts will lack environments): {reason}");
                }
                functions
                    .iter()
                    .map(|name| FunctionScale {
                        name: name.clone(),
                        ..FunctionScale::default()
                    })
                    .collect()
            }
        };
        let observed_any = scales.iter().any(|s| s.ready.is_some());
        let all_zero = observed_any
            && scales
                .iter()
                .all(|s| s.ready == Some(0) && s.desired.unwrap_or(0) == 0);
        state.send_modify(|s| {
            s.ever_observed |= observed_any;
            s.all_zero_at = all_zero.then_some(t);
        });
        stats.set_environments(
            scales
                .iter()
                .map(|s| EnvironmentCounts {
                    desired: s.desired,
                    ready: s.ready,
                })
                .collect(),
        );
        for (function, scale) in scales.into_iter().enumerate() {
            let offered = attempted[function] - previous_attempted[function];
            rows.push(ScaleRow {
                t,
                function,
                profile_level,
                offered_rps: if elapsed > 0.0 {
                    offered as f64 / elapsed
                } else {
                    0.0
                },
                scale,
            });
        }
        previous_attempted = attempted;
        previous_t = t;
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn reads_a_plain_list() {
        let body = json!([
            {"name": "hello", "desired": 3, "ready": 2, "inFlight": 5, "queued": 1, "extra": "x"},
            {"name": "other", "desired": 1, "ready": 1}
        ]);
        let out = parse_gateway_functions(&body, &names(&["hello", "missing"])).unwrap();
        assert_eq!(
            out[0],
            FunctionScale {
                name: "hello".into(),
                desired: Some(3),
                ready: Some(2),
                in_flight: Some(5),
                queued: Some(1)
            }
        );
        assert_eq!(out[1].ready, Some(0));
        assert_eq!(out[1].desired, Some(0));
    }

    #[test]
    fn reads_wrapped_lists_maps_and_namespaced_names() {
        let body = json!({"functions": [{"name": "default/hello", "desiredEnvironments": 4, "readyEnvironments": 4}]});
        let out = parse_gateway_functions(&body, &names(&["hello"])).unwrap();
        assert_eq!((out[0].desired, out[0].ready), (Some(4), Some(4)));

        let body = json!({"functions": {"hello": {"desiredReplicas": 2, "readyReplicas": 1}}});
        let out = parse_gateway_functions(&body, &names(&["hello"])).unwrap();
        assert_eq!((out[0].desired, out[0].ready), (Some(2), Some(1)));

        let body = json!([{"name": "hello"}]);
        let out = parse_gateway_functions(&body, &names(&["hello"])).unwrap();
        assert_eq!(out[0].ready, None);

        assert!(parse_gateway_functions(&json!("nope"), &names(&["hello"])).is_err());
    }

    fn function(name: &str, status: Option<Value>) -> Function {
        let mut object = json!({
            "apiVersion": "porchlight.dev/v1alpha1",
            "kind": "Function",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"handler": "app.handler", "code": {"inline": "x"}}
        });
        if let Some(status) = status {
            object["status"] = status;
        }
        serde_json::from_value(object).expect("a valid Function")
    }

    #[test]
    fn maps_function_status() {
        let items = vec![
            function(
                "hello",
                Some(json!({
                    "replicas": 4,
                    "readyReplicas": 3,
                    "desiredReplicas": 5,
                    "observedConcurrency": 7
                })),
            ),
            function("new", None),
            function("partial", Some(json!({"conditions": []}))),
            function(
                "odd",
                Some(json!({"readyReplicas": -1, "desiredReplicas": 0})),
            ),
        ];
        let out = function_scales(
            &items,
            &names(&["hello", "new", "missing", "partial", "odd"]),
        );
        assert_eq!(
            out[0],
            FunctionScale {
                name: "hello".into(),
                desired: Some(5),
                ready: Some(3),
                in_flight: None,
                queued: None
            }
        );
        assert_eq!(
            out[1],
            FunctionScale {
                name: "new".into(),
                ..FunctionScale::default()
            }
        );
        assert_eq!(
            out[2],
            FunctionScale {
                name: "missing".into(),
                desired: Some(0),
                ready: Some(0),
                in_flight: None,
                queued: None
            }
        );
        assert_eq!((out[3].desired, out[3].ready), (None, None));
        assert_eq!((out[4].desired, out[4].ready), (Some(0), Some(0)));
        assert_eq!(out.len(), 5);
    }

    #[test]
    fn kubernetes_observer_needs_no_cluster_until_it_observes() {
        let observer = KubernetesObserver::new("x");
        assert_eq!(observer.source(), "Function status in namespace x");
        assert!(format!("{observer:?}").contains("connected: false"));
    }

    #[test]
    fn one_line_collapses_whitespace() {
        assert_eq!(one_line("a\n  b\tc "), "a b c");
    }
}
