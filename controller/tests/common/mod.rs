//! A fake Kubernetes API server for reconcile tests: a tower-test mock
//! service answered by an in-memory object store that records every request.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::Client;
use kube::client::Body;
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use porchlight_api::Function;
use porchlight_controller::caches::{self, OwnedWriters};
use porchlight_controller::metrics::Metrics;
use porchlight_controller::reconcile::{Context, ReconcileSettings};
use porchlight_controller::resources::WorkloadSettings;
use porchlight_core::scaling::ScaleBook;
use serde_json::{Value, json};

/// One request the fake API server saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub body: Option<Value>,
}

#[derive(Default)]
pub struct State {
    pub objects: BTreeMap<String, Value>,
    /// The reconciler's caches, kept in line with `objects` as watches would.
    pub writers: Option<OwnedWriters>,
    pub seen: Vec<Seen>,
    /// Paths (without query) that answer 500 once each.
    pub fail: Vec<String>,
}

#[derive(Clone, Default)]
pub struct FakeApi {
    pub state: Arc<Mutex<State>>,
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": reason, "reason": reason, "code": code})
}

impl FakeApi {
    /// A client whose requests this fake answers, in namespace `demo`.
    pub fn client(&self) -> Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let me = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let (code, body) = me.answer(request).await;
                let response = Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&body).expect("json")))
                    .expect("response");
                send.send_response(response);
            }
        });
        Client::new(service, "demo")
    }

    pub fn put(&self, path: &str, object: Value) {
        let mut st = self.state.lock().unwrap();
        st.objects.insert(path.to_string(), object);
        mirror(&mut st);
    }

    /// Removes an object (as `kubectl delete` would, minus garbage collection).
    pub fn delete(&self, path: &str) {
        let mut st = self.state.lock().unwrap();
        st.objects.remove(path);
        mirror(&mut st);
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.state.lock().unwrap().objects.get(path).cloned()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn clear_seen(&self) {
        self.state.lock().unwrap().seen.clear();
    }

    pub fn fail_once(&self, path: &str) {
        self.state.lock().unwrap().fail.push(path.to_string());
    }

    /// Requests with this method whose path ends with `suffix`.
    pub fn requests(&self, method: Method, suffix: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == method && s.path.ends_with(suffix))
            .collect()
    }

    async fn answer(&self, request: Request<Body>) -> (StatusCode, Value) {
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let query = request.uri().query().unwrap_or("").to_string();
        let bytes = request.into_body().collect_bytes().await.expect("body");
        let body: Option<Value> = if bytes.is_empty() {
            None
        } else {
            Some(serde_json::from_slice(&bytes).expect("request body is JSON"))
        };
        let mut st = self.state.lock().unwrap();
        st.seen.push(Seen {
            method: method.clone(),
            path: path.clone(),
            query,
            body: body.clone(),
        });
        if let Some(i) = st.fail.iter().position(|p| *p == path) {
            st.fail.remove(i);
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                status(500, "InternalError"),
            );
        }
        let (object_path, subresource) = match path.strip_suffix("/status") {
            Some(base) => (base.to_string(), true),
            None => (path.clone(), false),
        };
        match method {
            Method::GET => match st.objects.get(&object_path) {
                Some(o) => (StatusCode::OK, o.clone()),
                None if is_collection(&path) => {
                    let prefix = format!("{path}/");
                    let items: Vec<Value> = st
                        .objects
                        .iter()
                        .filter(|(k, _)| k.starts_with(&prefix) && !k[prefix.len()..].contains('/'))
                        .map(|(_, v)| v.clone())
                        .collect();
                    (
                        StatusCode::OK,
                        json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items}),
                    )
                }
                None => (StatusCode::NOT_FOUND, status(404, "NotFound")),
            },
            Method::POST => {
                let body = body.expect("POST body");
                let name = body["metadata"]["name"].as_str().expect("name").to_string();
                let key = format!("{path}/{name}");
                if st.objects.contains_key(&key) {
                    return (StatusCode::CONFLICT, status(409, "AlreadyExists"));
                }
                st.objects.insert(key, body.clone());
                mirror(&mut st);
                (StatusCode::CREATED, body)
            }
            Method::PATCH => {
                let patch = body.expect("PATCH body");
                let existing = st.objects.get(&object_path).cloned();
                if subresource && existing.is_none() {
                    return (StatusCode::NOT_FOUND, status(404, "NotFound"));
                }
                let mut object = existing.unwrap_or(Value::Null);
                if object.is_null() {
                    object = json!({});
                }
                merge(&mut object, &patch);
                st.objects.insert(object_path, object.clone());
                mirror(&mut st);
                (StatusCode::OK, object)
            }
            _ => (
                StatusCode::METHOD_NOT_ALLOWED,
                status(405, "MethodNotAllowed"),
            ),
        }
    }
}

/// Relists every owned object into the reconciler's caches.
fn mirror(st: &mut State) {
    let Some(w) = st.writers.as_mut() else {
        return;
    };
    w.deployments.apply_watcher_event(&watcher::Event::Init);
    w.services.apply_watcher_event(&watcher::Event::Init);
    w.config_maps.apply_watcher_event(&watcher::Event::Init);
    for (path, object) in &st.objects {
        if path.starts_with(&format!("{DEPLOYMENTS}/")) {
            let mut d: Deployment = serde_json::from_value(object.clone()).expect("deployment");
            caches::trim_deployment(&mut d);
            w.deployments
                .apply_watcher_event(&watcher::Event::InitApply(d));
        } else if path.starts_with(&format!("{SERVICES}/")) {
            let m: PartialObjectMeta<Service> =
                serde_json::from_value(object.clone()).expect("service");
            w.services
                .apply_watcher_event(&watcher::Event::InitApply(m));
        } else if path.starts_with(&format!("{CONFIGMAPS}/")) {
            let m: PartialObjectMeta<ConfigMap> =
                serde_json::from_value(object.clone()).expect("configmap");
            w.config_maps
                .apply_watcher_event(&watcher::Event::InitApply(m));
        }
    }
    w.deployments.apply_watcher_event(&watcher::Event::InitDone);
    w.services.apply_watcher_event(&watcher::Event::InitDone);
    w.config_maps.apply_watcher_event(&watcher::Event::InitDone);
}

fn is_collection(path: &str) -> bool {
    // /api/v1/namespaces/NS/KIND or /apis/G/V/namespaces/NS/KIND
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.first() {
        Some(&"api") => parts.len() == 5,
        Some(&"apis") => parts.len() == 6,
        _ => false,
    }
}

pub const FUNCTIONS: &str = "/apis/porchlight.dev/v1alpha1/namespaces/demo/functions";
pub const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/demo/deployments";
pub const SERVICES: &str = "/api/v1/namespaces/demo/services";
pub const CONFIGMAPS: &str = "/api/v1/namespaces/demo/configmaps";
pub const PODS: &str = "/api/v1/namespaces/demo/pods";
pub const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/demo/events";

pub fn context(api: &FakeApi) -> (Arc<Context>, Arc<Metrics>, Arc<ScaleBook>) {
    let client = api.client();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "porchlight-controller".into(),
            instance: Some("test".into()),
        },
    );
    let metrics = Arc::new(Metrics::new());
    let book = Arc::new(ScaleBook::default());
    let (caches, writers) = caches::owned_caches();
    {
        let mut st = api.state.lock().unwrap();
        st.writers = Some(writers);
        mirror(&mut st);
    }
    let ctx = Context::new(
        client,
        recorder,
        metrics.clone(),
        ReconcileSettings {
            workload: WorkloadSettings {
                runtime_image: "porchlight/runtime-python:dev".into(),
                node_runtime_image: "porchlight/runtime-node:dev".into(),
            },
            url_base: "http://porchlight-gateway.porchlight-system.svc:8080".into(),
        },
        book.clone(),
        caches,
    );
    (Arc::new(ctx), metrics, book)
}

/// A Function as the API server would hand it over (uid, generation), and
/// stored in the fake so status patches find it.
pub fn function(api: &FakeApi, yaml: &str) -> Arc<Function> {
    let mut f: Function = serde_yaml::from_str(yaml).expect("function yaml");
    f.metadata.uid = Some("0b5e-uid".into());
    f.metadata.generation = Some(1);
    let name = f.metadata.name.clone().expect("name");
    api.put(
        &format!("{FUNCTIONS}/{name}"),
        serde_json::to_value(&f).expect("json"),
    );
    Arc::new(f)
}

pub const HELLO: &str = r#"
apiVersion: porchlight.dev/v1alpha1
kind: Function
metadata: {name: hello, namespace: demo}
spec:
  runtime: python3.12
  handler: app.lambda_handler
  timeoutSeconds: 10
  memoryMiB: 256
  env: {GREETING: hello}
  code:
    inline: |
      def lambda_handler(event, context):
          return {"statusCode": 200, "body": "Hello from Lambda!"}
"#;
