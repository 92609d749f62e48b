//! The memory budget, in-process (`oneshot`), with exact counts: what each
//! path holds, what it refuses with 429, and that the held bytes never pass
//! the budget. Environments, where needed, are fakes on 127.0.0.1:0.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use porchlight_api::FunctionSpec;
use porchlight_core::FunctionKey;
use porchlight_gateway::registry::{DispatchConfig, EnvironmentInfo, FunctionEntry};
use porchlight_gateway::{Gateway, GatewayConfig, app};
use serde_json::{Value, json};
use tower::ServiceExt;

const MIB: usize = 1024 * 1024;

const SPEC: &str = "handler: app.h\ncode: {inline: x}\ntimeoutSeconds: 1\ntriggers:\n  - s3: {bucket: uploads, events: ['s3:ObjectCreated:*']}\n  - cloudevents: {type: probe}\n";

/// A gateway with one function `f` and no environment (so what is accepted
/// stays held), a budget of `budget` bytes and `async_depth` async events.
fn gateway(budget: usize, async_depth: usize) -> (Arc<Gateway>, Arc<FunctionEntry>) {
    let gw = Gateway::new(GatewayConfig {
        memory_budget: budget,
        async_retry_base: Duration::from_millis(1),
        dispatch: DispatchConfig {
            async_queue_depth: async_depth,
            cold_start_allowance: Duration::from_secs(30),
            ..DispatchConfig::default()
        },
        ..GatewayConfig::default()
    });
    let spec: FunctionSpec = serde_yaml::from_str(SPEC).expect("spec");
    let settings = spec.validate().expect("valid");
    let entry = gw
        .registry()
        .upsert(FunctionKey::new("default", "f"), spec, settings);
    gw.set_ready(true);
    (gw, entry)
}

async fn send(gw: &Arc<Gateway>, req: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    let r = app(gw.clone()).oneshot(req).await.expect("infallible");
    let (parts, body) = r.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (parts.status, parts.headers, v)
}

/// A JSON payload of exactly `len` bytes.
fn payload(len: usize) -> String {
    let p = format!("{{\"pad\":\"{}\"}}", "x".repeat(len - 10));
    assert_eq!(p.len(), len);
    p
}

fn post(uri: &str, body: String, headers: &[(&str, &str)]) -> Request<Body> {
    let mut b = Request::post(uri).header("content-length", body.len().to_string());
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Body::from(body)).expect("request")
}

fn invoke(body: String, invocation_type: &str) -> Request<Body> {
    post(
        "/2015-03-31/functions/f/invocations",
        body,
        &[("x-amz-invocation-type", invocation_type)],
    )
}

fn assert_budget_throttle(status: StatusCode, headers: &HeaderMap, body: &Value) {
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(headers["x-amzn-errortype"], "TooManyRequestsException");
    assert_eq!(body["Reason"], "MemoryBudgetExceeded", "{body}");
}

fn metric(gw: &Gateway, line: &str) -> bool {
    use porchlight_gateway::routes::Ingress;
    gw.metrics_text().lines().any(|l| l == line)
}

#[tokio::test]
async fn sync_payloads_past_the_budget_are_refused_while_the_others_wait() {
    let (gw, _) = gateway(16 * MIB, 10);
    let body = payload(3_000_000);
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (gw, body) = (gw.clone(), body.clone());
        calls.spawn(async move { send(&gw, invoke(body, "RequestResponse")).await });
    }
    // Five payloads fit in 16 MiB and wait for an environment; five are
    // refused at once.
    for _ in 0..5 {
        let (s, h, b) = tokio::time::timeout(Duration::from_secs(10), calls.join_next())
            .await
            .expect("the refusals come at once")
            .expect("a call")
            .expect("joined");
        assert_budget_throttle(s, &h, &b);
    }
    assert_eq!(gw.budget().held(), 5 * body.len());
    assert!(gw.budget().peak() <= gw.budget().capacity());
    assert!(metric(
        &gw,
        "porchlight_gateway_memory_budget_refusals_total{purpose=\"sync\"} 5"
    ));
    assert!(metric(
        &gw,
        "porchlight_gateway_memory_budget_held_bytes{purpose=\"sync\"} 15000000"
    ));
    // A caller that goes away gives its bytes back.
    calls.shutdown().await;
    assert_eq!(gw.budget().held(), 0);
}

#[tokio::test]
async fn async_events_are_held_until_finished_and_refused_past_the_budget() {
    let (gw, _) = gateway(8 * MIB, 1000);
    let body = payload(1_000_000);
    let mut accepted = 0;
    for i in 0..12 {
        let (s, h, b) = send(&gw, invoke(body.clone(), "Event")).await;
        if i < 8 {
            assert_eq!(s, StatusCode::ACCEPTED, "{b}");
            accepted += 1;
        } else {
            assert_budget_throttle(s, &h, &b);
        }
        assert!(gw.budget().held() <= gw.budget().capacity());
    }
    assert_eq!(gw.budget().held(), accepted * body.len());
    assert!(metric(
        &gw,
        "porchlight_gateway_memory_budget_refusals_total{purpose=\"async\"} 4"
    ));
    // A payload too big for the async limit is 413 and holds nothing.
    let (s, _, _) = send(&gw, invoke(payload(1_048_577), "Event")).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(gw.budget().held(), accepted * body.len());
}

fn s3_record(key: &str, pad: usize) -> Value {
    json!({
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2026-01-01T00:00:00.000Z", "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": "uploads"}, "object": {"key": key, "size": 1}},
        "pad": "y".repeat(pad),
    })
}

#[tokio::test]
async fn s3_fan_out_builds_no_event_for_a_full_queue() {
    let (gw, _) = gateway(32 * MIB, 10);
    let records: Vec<Value> = (0..12_000)
        .map(|i| s3_record(&format!("k{i}"), 100))
        .collect();
    let body = json!({ "Records": records }).to_string();
    let body_len = body.len();
    assert!(body_len > 5 * MIB / 2, "{body_len}");
    let (s, _, b) = send(&gw, post("/events/s3", body, &[])).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{b}");
    assert_eq!(b["Reason"], "AsyncQueueFull");
    assert_eq!(b["queued"]["f"], 10);
    assert_eq!(b["refused"]["f"], 11_990);
    // What was held: the body, its parsed index and ten events; never an
    // event per record.
    let peak = gw.budget().peak();
    assert!(peak <= 3 * body_len, "peak {peak} for a body of {body_len}");
    let held = gw.budget().held();
    assert!(held < 10 * 1024, "ten small events stay held: {held}");
}

#[tokio::test]
async fn s3_fan_out_stops_at_the_budget() {
    let (gw, _) = gateway(8 * MIB, 1000);
    let records: Vec<Value> = (0..6)
        .map(|i| s3_record(&format!("k{i}"), 900_000))
        .collect();
    let body = json!({ "Records": records }).to_string();
    let (s, h, b) = send(&gw, post("/events/s3", body, &[])).await;
    assert_budget_throttle(s, &h, &b);
    let queued = b["queued"]["f"].as_u64().unwrap_or(0);
    let refused = b["refused"]["f"].as_u64().unwrap_or(0);
    assert!(queued >= 1 && refused >= 1, "{b}");
    assert_eq!(queued + refused, 6);
    assert!(gw.budget().peak() <= gw.budget().capacity());
    // Once the notification is answered, only the queued events are held.
    assert!(gw.budget().held() <= queued as usize * 901_000);
}

#[tokio::test]
async fn cloudevents_batch_fan_out_checks_each_target() {
    let (gw, _) = gateway(32 * MIB, 3);
    let events: Vec<Value> = (0..10)
        .map(|i| json!({"specversion": "1.0", "type": "probe", "source": "s", "id": i.to_string(), "data": {"n": i}}))
        .collect();
    let (s, _, b) = send(
        &gw,
        post(
            "/events/cloudevents",
            Value::Array(events).to_string(),
            &[("content-type", "application/cloudevents-batch+json")],
        ),
    )
    .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{b}");
    assert_eq!(b["queued"]["f"], 3);
    assert_eq!(b["refused"]["f"], 7);
    assert!(gw.budget().peak() <= gw.budget().capacity());
}

/// Serves a fake environment's invoke endpoint on 127.0.0.1:0; its URL.
async fn environment(answer: axum::routing::MethodRouter) -> String {
    let router = axum::Router::new().route("/2015-03-31/functions/function/invocations", answer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{addr}")
}

/// A fake environment whose function fails every event.
async fn failing_environment() -> String {
    environment(axum::routing::post(|| async {
        (
            StatusCode::OK,
            [("x-amz-function-error", "Unhandled")],
            r#"{"errorType":"Boom","errorMessage":"boom"}"#,
        )
    }))
    .await
}

async fn get(gw: &Arc<Gateway>, uri: &str) -> (StatusCode, Value) {
    let (s, _, v) = send(gw, Request::get(uri).body(Body::empty()).expect("req")).await;
    (s, v)
}

#[tokio::test]
async fn dead_letters_are_bounded_by_bytes_and_listed_a_page_at_a_time() {
    // 16 MiB: dead letters may hold 4 MiB, eight letters of 500 kB.
    let (gw, entry) = gateway(16 * MIB, 1000);
    entry.add_environment(EnvironmentInfo {
        id: "f-1".into(),
        base_url: failing_environment().await.into(),
        capacity: 4,
    });
    for _ in 0..20 {
        let (s, _, b) = send(&gw, invoke(payload(500_000), "Event")).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    }
    let mut settled = false;
    for _ in 0..400 {
        let (_, v) = get(&gw, "/v1/dead-letters?MaxItems=1").await;
        if v["total"] == 20 {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(settled, "twenty dead letters");
    let (s, all) = get(&gw, "/v1/dead-letters?MaxItems=1000").await;
    assert_eq!(s, StatusCode::OK);
    let kept = all["deadLetters"].as_array().map_or(0, Vec::len);
    assert_eq!(kept, 8, "4 MiB of 500 kB letters");
    assert_eq!(all["evicted"], 12);
    assert!(all.get("nextMarker").is_none());
    assert_eq!(all["deadLetters"][0]["error"]["errorMessage"], "boom");
    assert_eq!(all["deadLetters"][0]["attempts"], 3);
    assert_eq!(
        all["deadLetters"][0]["event"]["pad"].as_str().map(str::len),
        Some(500_000 - 10)
    );
    // Only the dead letters are held now, within their quarter of the budget.
    let held = gw.budget().held();
    assert!((8 * 500_000..=4 * MIB).contains(&held), "{held}");
    assert!(gw.budget().peak() <= gw.budget().capacity());

    // Pages of three, following the marker, give the same letters in order.
    let mut ids = Vec::new();
    let mut uri = "/v1/dead-letters?MaxItems=3".to_string();
    loop {
        let (s, page) = get(&gw, &uri).await;
        assert_eq!(s, StatusCode::OK);
        let letters = page["deadLetters"].as_array().cloned().unwrap_or_default();
        assert!(letters.len() <= 3);
        ids.extend(letters.iter().map(|l| l["requestId"].clone()));
        match page["nextMarker"].as_str() {
            Some(m) => uri = format!("/v1/dead-letters?MaxItems=3&Marker={m}"),
            None => break,
        }
    }
    let expected: Vec<Value> = all["deadLetters"]
        .as_array()
        .map(|l| l.iter().map(|x| x["requestId"].clone()).collect())
        .unwrap_or_default();
    assert_eq!(ids, expected);
    let (s, _) = get(&gw, "/v1/dead-letters?function=other").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        get(&gw, "/v1/dead-letters?MaxItems=0").await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        get(&gw, "/v1/dead-letters?Marker=x").await.0,
        StatusCode::BAD_REQUEST
    );
    assert!(metric(
        &gw,
        &format!("porchlight_gateway_memory_budget_held_bytes{{purpose=\"dead_letter\"}} {held}")
    ));
}

/// A fake environment whose function answers `len` bytes to every event.
async fn answering_environment(len: usize) -> String {
    let answer = payload(len);
    environment(axum::routing::post(move || async move {
        (StatusCode::OK, answer)
    }))
    .await
}

#[tokio::test]
async fn sync_answers_are_held_before_they_are_read_until_they_are_sent() {
    let (gw, entry) = gateway(5 * MIB, 10);
    entry.add_environment(EnvironmentInfo {
        id: "f-1".into(),
        base_url: answering_environment(3 * MIB).await.into(),
        capacity: 4,
    });
    // The first answer is not sent yet (its body unread): its 3 MiB stay held.
    let first = app(gw.clone())
        .oneshot(invoke(payload(100), "RequestResponse"))
        .await
        .expect("infallible");
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(gw.budget().held(), 3 * MIB);
    // The second answer has no room: it waits, unread, for the first to go.
    let second = tokio::spawn({
        let gw = gw.clone();
        async move { send(&gw, invoke(payload(100), "RequestResponse")).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!second.is_finished(), "the second answer waits for room");
    assert!(gw.budget().peak() <= gw.budget().capacity());
    drop(first);
    let (status, _, body) = second.await.expect("joined");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["pad"].as_str().map(str::len), Some(3 * MIB - 10));
    assert_eq!(gw.budget().held(), 0);
    // An answer that never finds room is refused with Lambda's throttle.
    let first = app(gw.clone())
        .oneshot(invoke(payload(100), "RequestResponse"))
        .await
        .expect("infallible");
    let (s, h, b) = send(&gw, invoke(payload(100), "RequestResponse")).await;
    assert_budget_throttle(s, &h, &b);
    assert_eq!(gw.budget().held(), 3 * MIB);
    assert!(gw.budget().peak() <= gw.budget().capacity());
    drop(first);
    assert_eq!(gw.budget().held(), 0);
}
