//! The router in-process (`oneshot`) against a fake environment on 127.0.0.1:0.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::post;
use http_body_util::BodyExt;
use porchlight_api::FunctionSpec;
use porchlight_core::FunctionKey;
use porchlight_gateway::registry::EnvironmentInfo;
use porchlight_gateway::{Gateway, GatewayConfig, app};
use tower::ServiceExt;

/// A fake shim: the event's `reply` field picks the answer.
async fn fake_environment() -> String {
    let router = axum::Router::new().route(
        "/2015-03-31/functions/function/invocations",
        post(|body: axum::body::Bytes| async move {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if v["body"].as_str() == Some("framing-headers") {
                return (
                    StatusCode::OK,
                    [("x-porchlight-cold-start", "false")],
                    r#"{"statusCode":200,"headers":{"content-length":"999","transfer-encoding":"chunked","connection":"upgrade","x-ok":"1"},"body":"ok"}"#
                        .to_string(),
                )
                    .into_response_parts();
            }
            match v["reply"].as_str() {
                Some("init-error") => (
                    StatusCode::BAD_GATEWAY,
                    [("x-porchlight-cold-start", "true")],
                    r#"{"errorType":"Runtime.ImportModuleError","errorMessage":"no module"}"#
                        .to_string(),
                )
                    .into_response_parts(),
                Some("cold") => (
                    StatusCode::OK,
                    [
                        ("x-porchlight-cold-start", "true"),
                        ("x-porchlight-init-duration-ms", "42.5"),
                    ],
                    "{}".to_string(),
                )
                    .into_response_parts(),
                Some("http-v1") => (
                    StatusCode::OK,
                    [("x-porchlight-cold-start", "false")],
                    r#"{"statusCode":201,"headers":{"x-a":"1"},"body":"made"}"#.to_string(),
                )
                    .into_response_parts(),
                _ => (
                    StatusCode::OK,
                    [("x-porchlight-cold-start", "false")],
                    body_string(&body),
                )
                    .into_response_parts(),
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{addr}")
}

trait IntoParts {
    fn into_response_parts(self) -> axum::response::Response;
}
impl<T: axum::response::IntoResponse> IntoParts for T {
    fn into_response_parts(self) -> axum::response::Response {
        self.into_response()
    }
}

fn body_string(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn gateway(base_url: &str) -> Arc<Gateway> {
    let gw = Gateway::new(GatewayConfig::default());
    let spec: FunctionSpec = serde_yaml::from_str(
        "handler: app.h\ncode: {inline: x}\ntriggers:\n  - http: {}\n  - cloudevents: {type: t}\n",
    )
    .expect("spec");
    let settings = spec.validate().expect("valid");
    let entry = gw
        .registry()
        .upsert(FunctionKey::new("default", "f"), spec, settings);
    entry.add_environment(EnvironmentInfo {
        id: "f-1".into(),
        base_url: base_url.into(),
        capacity: 4,
    });
    gw.set_ready(true);
    gw
}

async fn send(
    gw: &Arc<Gateway>,
    req: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let r = app(gw.clone()).oneshot(req).await.expect("infallible");
    let (parts, body) = r.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, body_string(&bytes))
}

fn invoke(name: &str, body: &str) -> Request<Body> {
    Request::post(format!("/2015-03-31/functions/{name}/invocations"))
        .body(Body::from(body.to_string()))
        .expect("request")
}

#[tokio::test]
async fn invoke_api_maps_every_outcome() {
    let gw = gateway(&fake_environment().await);
    let (s, h, b) = send(&gw, invoke("f", r#"{"x":1}"#)).await;
    assert_eq!((s, b.as_str()), (StatusCode::OK, r#"{"x":1}"#));
    assert_eq!(h["x-amz-executed-version"], "$LATEST");
    assert_eq!(h["x-porchlight-environment"], "f-1");
    assert!(!h.contains_key("x-porchlight-cold-start"), "a warm start");

    // A cold start is passed on to the caller with its init duration.
    let (s, h, _) = send(&gw, invoke("f", r#"{"reply":"cold"}"#)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["x-porchlight-cold-start"], "true");
    assert_eq!(h["x-porchlight-init-duration-ms"], "42.5");

    // An init error (shim 502) is a 200 with X-Amz-Function-Error, as Lambda answers.
    let (s, h, b) = send(&gw, invoke("f", r#"{"reply":"init-error"}"#)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["x-amz-function-error"], "Unhandled");
    assert!(b.contains("Runtime.ImportModuleError"));

    let (s, _, b) = send(
        &gw,
        invoke(
            "arn%3Aaws%3Alambda%3Aus-east-1%3A000000000000%3Afunction%3Af",
            "{}",
        ),
    )
    .await;
    assert_eq!((s, b.as_str()), (StatusCode::OK, "{}"));
    let (s, _, _) = send(&gw, invoke("f:7", "{}")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = send(&gw, invoke("f", "")).await;
    assert_eq!(s, StatusCode::OK, "an empty payload is {{}}");

    let mut dry = invoke("f", "{}");
    dry.headers_mut()
        .insert("x-amz-invocation-type", "DryRun".parse().expect("hv"));
    assert_eq!(send(&gw, dry).await.0, StatusCode::NO_CONTENT);
    let mut event = invoke("f", "{}");
    event
        .headers_mut()
        .insert("x-amz-invocation-type", "Event".parse().expect("hv"));
    assert_eq!(send(&gw, event).await.0, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn http_trigger_and_ops_routes() {
    let gw = gateway(&fake_environment().await);
    // The fake echoes the event for anything but `reply`: a v1 event is not a
    // valid proxy result (no statusCode), so API Gateway's 502 comes back.
    let (s, _, b) = send(
        &gw,
        Request::get("/http/f/users?a=1")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert_eq!(b, r#"{"message":"Internal server error"}"#);
    let (s, h, b) = send(
        &gw,
        Request::post("/http/f/")
            .body(Body::from(r#"{"reply":"http-v1"}"#))
            .expect("req"),
    )
    .await;
    // The body is wrapped in an API Gateway event, so `reply` is not at the top: 502 again.
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{h:?} {b}");

    // A handler cannot frame the response: a wrong content-length would
    // hang the client.
    let (s, h, b) = send(
        &gw,
        Request::post("/http/f/")
            .body(Body::from("framing-headers"))
            .expect("req"),
    )
    .await;
    assert_eq!((s, b.as_str()), (StatusCode::OK, "ok"));
    assert_eq!(h["x-ok"], "1");
    assert!(
        h.get("transfer-encoding").is_none() && h.get("connection").is_none(),
        "{h:?}"
    );
    assert!(h.get("content-length").is_none_or(|v| v == "2"), "{h:?}");
    // A method an endpoint does not take, and an invocation type that is not
    // text, get Lambda-shaped refusals.
    let (s, h, b) = send(
        &gw,
        Request::delete("/2015-03-31/functions/f/invocations")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(h["x-amzn-errortype"], "MethodNotAllowedException");
    assert!(
        b.contains(r#""errorType":"MethodNotAllowedException""#),
        "{b}"
    );
    let (s, _, b) = send(
        &gw,
        Request::post("/2015-03-31/functions/f/invocations")
            .header("x-amz-invocation-type", &[0xC3u8, 0xA9][..])
            .body(Body::from("{}"))
            .expect("req"),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert!(b.contains("invocationType"), "{b}");

    let (s, _, b) = send(
        &gw,
        Request::get("/v1/functions")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(b.contains(r#""name":"f""#));
    let (s, _, b) = send(
        &gw,
        Request::get("/v1/concurrency")
            .body(Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(b.contains(r#""sequence""#));
    let (s, _, _) = send(
        &gw,
        Request::get("/ready").body(Body::empty()).expect("req"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, b) = send(
        &gw,
        Request::get("/metrics").body(Body::empty()).expect("req"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(b.contains("porchlight_gateway_invocations_total"));
}
