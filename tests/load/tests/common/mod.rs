//! A fake gateway on 127.0.0.1:0 that speaks the Invoke API and `/v1/functions`.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use tokio::time::Instant;

/// How the fake gateway behaves.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    /// Time each invocation takes.
    pub work: Duration,
    /// Requests that arrive within this window (from server start) are held
    /// until its end: a stalled gateway.
    pub stall: Option<(Duration, Duration)>,
    /// Every n-th request gets a 429.
    pub throttle_every: Option<u64>,
    /// Every n-th request gets a function error.
    pub function_error_every: Option<u64>,
    /// A new environment pays this init time (a cold start).
    pub init: Duration,
    /// Environments are dropped after this long without requests.
    pub idle_to_zero: Duration,
}

#[derive(Debug, Default)]
struct Environments {
    idle: Vec<u32>,
    total: u32,
    last_request: Option<Instant>,
}

/// Shared state and counters of the fake gateway.
#[derive(Debug)]
pub struct Fake {
    pub behaviour: Behaviour,
    pub started: Instant,
    pub received: AtomicU64,
    pub in_flight: AtomicU64,
    pub max_in_flight: AtomicU64,
    /// Invocations that ran (not throttled), for `/v1/usage`.
    pub ran: AtomicU64,
    environments: Mutex<Environments>,
}

/// Starts the fake gateway; returns its base URL and state.
pub async fn start(behaviour: Behaviour) -> (String, Arc<Fake>) {
    let fake = Arc::new(Fake {
        behaviour,
        started: Instant::now(),
        received: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        max_in_flight: AtomicU64::new(0),
        ran: AtomicU64::new(0),
        environments: Mutex::new(Environments::default()),
    });
    let app = Router::new()
        .route("/2015-03-31/functions/{name}/invocations", post(invoke))
        .route("/v1/functions", get(functions))
        .route("/v1/usage", get(usage))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), fake)
}

async fn invoke(State(fake): State<Arc<Fake>>, Path(name): Path<String>, body: String) -> Response {
    let n = fake.received.fetch_add(1, Ordering::SeqCst) + 1;
    let now = fake.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    fake.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let response = handle(&fake, &name, n, &body).await;
    fake.in_flight.fetch_sub(1, Ordering::SeqCst);
    response
}

async fn handle(fake: &Fake, name: &str, n: u64, body: &str) -> Response {
    let b = &fake.behaviour;
    assert!(serde_json::from_str::<serde_json::Value>(body).is_ok());
    if let Some((from, to)) = b.stall {
        let into = fake.started.elapsed();
        if into >= from && into < to {
            tokio::time::sleep_until(fake.started + to).await;
        }
    }
    if b.throttle_every
        .is_some_and(|every| n.is_multiple_of(every))
    {
        return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "{}").into_response();
    }
    let (environment, cold) = {
        let mut envs = fake.environments.lock().unwrap();
        envs.last_request = Some(Instant::now());
        match envs.idle.pop() {
            Some(id) => (id, false),
            None => {
                envs.total += 1;
                (envs.total, true)
            }
        }
    };
    if cold {
        tokio::time::sleep(b.init).await;
    }
    tokio::time::sleep(b.work).await;
    fake.ran.fetch_add(1, Ordering::SeqCst);
    fake.environments.lock().unwrap().idle.push(environment);
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-amzn-requestid",
        HeaderValue::from_str(&format!("req-{n}")).unwrap(),
    );
    headers.insert(
        "x-porchlight-environment",
        HeaderValue::from_str(&format!("{name}-env-{environment}")).unwrap(),
    );
    if cold {
        headers.insert("x-porchlight-cold-start", HeaderValue::from_static("true"));
        headers.insert(
            "x-porchlight-init-duration-ms",
            HeaderValue::from_str(&b.init.as_millis().to_string()).unwrap(),
        );
    }
    if b.function_error_every
        .is_some_and(|every| n.is_multiple_of(every))
    {
        headers.insert(
            "x-amz-function-error",
            HeaderValue::from_static("Unhandled"),
        );
        return (
            StatusCode::OK,
            headers,
            r#"{"errorMessage":"boom","errorType":"Error"}"#,
        )
            .into_response();
    }
    (StatusCode::OK, headers, r#"{"statusCode":200,"body":"hi"}"#).into_response()
}

/// Usage counters as the gateway's `/v1/usage` has them, counting from 1,000
/// invocations used before the run (so a run's usage is a difference).
pub const USAGE_BEFORE: u64 = 1_000;

async fn usage(State(fake): State<Arc<Fake>>) -> Json<serde_json::Value> {
    let ran = USAGE_BEFORE + fake.ran.load(Ordering::SeqCst);
    let ms = fake.behaviour.work.as_millis().max(1) as u64;
    Json(serde_json::json!({"functions": [{
        "name": "hello",
        "invocations": ran,
        "billedDurationMs": ran * ms,
        "gbSeconds": (ran * ms) as f64 / 1000.0 * 0.125,
    }]}))
}

async fn functions(State(fake): State<Arc<Fake>>) -> Json<serde_json::Value> {
    let mut envs = fake.environments.lock().unwrap();
    let idle_for = envs.last_request.map(|t| t.elapsed());
    if idle_for.is_some_and(|idle| idle >= fake.behaviour.idle_to_zero)
        && envs.idle.len() as u32 == envs.total
    {
        envs.idle.clear();
        envs.total = 0;
    }
    let busy = envs.total - envs.idle.len() as u32;
    Json(serde_json::json!([{
        "name": "hello",
        "desired": envs.total,
        "ready": envs.total,
        "inFlight": busy,
        "queued": 0,
    }]))
}
