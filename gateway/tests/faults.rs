//! The dispatch path under faults: callers that go away, environments that
//! refuse, break or answer too much. A fake shim on 127.0.0.1:0 plays the
//! environment; the router runs in process.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use porchlight_api::FunctionSpec;
use porchlight_core::FunctionKey;
use porchlight_gateway::registry::EnvironmentInfo;
use porchlight_gateway::{Gateway, GatewayConfig, app};
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// How the fake shim behaves.
#[derive(Default)]
struct Shim {
    /// Requests answered 429 because the environment was busy.
    refused: AtomicU32,
    /// Requests still to refuse with 429 whatever the load.
    refuse_next: AtomicU32,
    /// Requests still to answer with a broken connection.
    break_next: AtomicU32,
    /// Requests still to answer with a body over any limit.
    oversize_next: AtomicU32,
    /// Requests that reached the handler.
    seen: AtomicU32,
}

/// A shim with room for one event at a time, each taking `work`.
async fn fake_shim(shim: Arc<Shim>, work: Duration) -> String {
    let slot = Arc::new(Semaphore::new(1));
    let router = axum::Router::new()
        .route(
            "/2015-03-31/functions/function/invocations",
            post(move |body: axum::body::Bytes| {
                let shim = shim.clone();
                let slot = slot.clone();
                async move {
                    shim.seen.fetch_add(1, Ordering::SeqCst);
                    let take = |n: &AtomicU32| {
                        n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
                            .is_ok()
                    };
                    if take(&shim.refuse_next) {
                        shim.refused.fetch_add(1, Ordering::SeqCst);
                        return busy();
                    }
                    // Like the real shim, the event runs in a task of its own
                    // that keeps the slot even if the caller goes away.
                    let Ok(permit) = slot.clone().try_acquire_owned() else {
                        shim.refused.fetch_add(1, Ordering::SeqCst);
                        return busy();
                    };
                    if take(&shim.break_next) {
                        drop(permit);
                        let broken = futures::stream::iter([Err::<axum::body::Bytes, _>(
                            std::io::Error::other("runtime crashed"),
                        )]);
                        return axum::response::Response::new(Body::from_stream(broken));
                    }
                    if take(&shim.oversize_next) {
                        drop(permit);
                        return axum::response::Response::new(Body::from(vec![b' '; 7 << 20]));
                    }
                    let event = tokio::spawn(async move {
                        tokio::time::sleep(work).await;
                        drop(permit);
                        body
                    });
                    axum::response::Response::new(Body::from(event.await.unwrap_or_default()))
                }
            }),
        )
        .route("/ready", get(|| async { r#"{"status":"ready"}"# }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{addr}")
}

fn busy() -> axum::response::Response {
    let mut r = axum::response::Response::new(Body::from(
        r#"{"errorType":"TooManyRequestsException","errorMessage":"busy"}"#,
    ));
    *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    r
}

fn gateway(base_url: &str) -> Arc<Gateway> {
    let gw = Gateway::new(GatewayConfig::default());
    let spec: FunctionSpec =
        serde_yaml::from_str("handler: app.h\ncode: {inline: x}\ntimeoutSeconds: 5\n")
            .expect("spec");
    let settings = spec.validate().expect("valid");
    let entry = gw
        .registry()
        .upsert(FunctionKey::new("default", "f"), spec, settings);
    entry.add_environment(EnvironmentInfo {
        id: "f-1".into(),
        base_url: base_url.into(),
        capacity: 1,
    });
    gw.set_ready(true);
    gw
}

async fn invoke(gw: &Arc<Gateway>, body: &str) -> (StatusCode, String, Option<String>) {
    let request = Request::post("/2015-03-31/functions/f/invocations")
        .body(Body::from(body.to_string()))
        .expect("request");
    let response = app(gw.clone()).oneshot(request).await.expect("infallible");
    let status = response.status();
    let function_error = response
        .headers()
        .get("x-amz-function-error")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        String::from_utf8_lossy(&bytes).into_owned(),
        function_error,
    )
}

#[tokio::test]
async fn a_caller_that_goes_away_keeps_the_slot_until_the_environment_is_done() {
    let shim = Arc::new(Shim::default());
    let gw = gateway(&fake_shim(shim.clone(), Duration::from_millis(300)).await);
    let first = {
        let gw = gw.clone();
        tokio::spawn(async move { invoke(&gw, r#"{"n":1}"#).await })
    };
    tokio::time::sleep(Duration::from_millis(80)).await;
    // The first caller hangs up while its event runs.
    first.abort();
    let (status, body, error) = invoke(&gw, r#"{"n":2}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(error, None, "{body}");
    assert_eq!(body, r#"{"n":2}"#);
    assert_eq!(
        shim.refused.load(Ordering::SeqCst),
        0,
        "the second event waited for the slot instead of being sent to a busy environment"
    );
}

#[tokio::test]
async fn an_environment_that_refuses_puts_the_event_back_in_the_queue() {
    let shim = Arc::new(Shim::default());
    // Busy for a while with work the gateway does not know about.
    shim.refuse_next.store(30, Ordering::SeqCst);
    let gw = gateway(&fake_shim(shim.clone(), Duration::from_millis(1)).await);
    let (status, body, error) = invoke(&gw, r#"{"n":1}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(error, None, "{body}");
    assert_eq!(body, r#"{"n":1}"#);
    assert_eq!(shim.refused.load(Ordering::SeqCst), 30);
}

#[tokio::test]
async fn a_broken_connection_does_not_leave_a_ghost_environment() {
    let shim = Arc::new(Shim::default());
    shim.break_next.store(1, Ordering::SeqCst);
    let gw = gateway(&fake_shim(shim.clone(), Duration::from_millis(1)).await);
    let (status, body, error) = invoke(&gw, r#"{"n":1}"#).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(error.as_deref(), Some("Unhandled"));
    assert!(body.contains("Runtime.ExitError"), "{body}");
    // The environment still answers: it is probed, found ready, and serves.
    let (status, body, error) =
        tokio::time::timeout(Duration::from_secs(3), invoke(&gw, r#"{"n":2}"#))
            .await
            .expect("answered well before the queue deadline");
    assert_eq!((status, error), (StatusCode::OK, None), "{body}");
    assert_eq!(body, r#"{"n":2}"#);
    let entry = gw.registry().get("f").expect("f");
    assert_eq!(entry.load().ready, 1, "counted ready again, and only once");
}

#[tokio::test]
async fn an_oversized_answer_is_a_function_error_not_a_dead_environment() {
    let shim = Arc::new(Shim::default());
    shim.oversize_next.store(1, Ordering::SeqCst);
    let gw = gateway(&fake_shim(shim.clone(), Duration::from_millis(1)).await);
    let (status, body, error) = invoke(&gw, r#"{"n":1}"#).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(error.as_deref(), Some("Unhandled"));
    assert!(body.contains("Function.ResponseSizeTooLarge"), "{body}");
    let entry = gw.registry().get("f").expect("f");
    assert_eq!(entry.load().ready, 1, "the environment stays routable");
    let (status, body, _) = tokio::time::timeout(Duration::from_secs(3), invoke(&gw, "{}"))
        .await
        .expect("answered at once");
    assert_eq!((status, body.as_str()), (StatusCode::OK, "{}"));
}

#[tokio::test]
async fn a_spec_change_keeps_the_events_waiting_for_an_environment() {
    let shim = Arc::new(Shim::default());
    let base_url = fake_shim(shim.clone(), Duration::from_millis(1)).await;
    let gw = Gateway::new(GatewayConfig::default());
    let spec = |timeout: u32| -> FunctionSpec {
        serde_yaml::from_str(&format!(
            "handler: app.h\ncode: {{inline: x}}\ntimeoutSeconds: {timeout}\n"
        ))
        .expect("spec")
    };
    let key = FunctionKey::new("default", "f");
    let first = spec(5);
    let settings = first.validate().expect("valid");
    gw.registry().upsert(key.clone(), first, settings);
    gw.set_ready(true);
    // An event waits for the function's first environment...
    let waiting = {
        let gw = gw.clone();
        tokio::spawn(async move { invoke(&gw, r#"{"n":1}"#).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...while the spec changes (`kubectl scale fn`, a new timeout, ...).
    let changed = spec(6);
    let settings = changed.validate().expect("valid");
    let entry = gw.registry().upsert(key, changed, settings);
    assert_eq!(entry.spec().timeout_seconds, 6);
    assert_eq!(entry.load().queued, 1, "the waiting event is still queued");
    entry.add_environment(EnvironmentInfo {
        id: "f-1".into(),
        base_url: base_url.as_str().into(),
        capacity: 1,
    });
    let (status, body, error) = tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .expect("served when the environment arrived")
        .expect("join");
    assert_eq!((status, error), (StatusCode::OK, None), "{body}");
    assert_eq!(body, r#"{"n":1}"#);
}
