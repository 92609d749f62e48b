//! HTTP routes: the Lambda Invoke API, the triggers, and the ops surface.
//!
//! The handlers depend on [`Ingress`], the few things they need from the
//! gateway, not on the gateway itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, RawQuery, Request, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use base64::Engine;
use bytes::Bytes;
use http_body_util::BodyExt;
use porchlight_core::GatewayReport;
use porchlight_core::invoke::{INVOKE_ROUTE, LIVE_PATH, METRICS_PATH, READY_PATH, header};
use porchlight_core::report::REPORT_PATH;
use serde_json::{Value, json};

use crate::dead_letters::DeadLetterList;
use crate::error::{GatewayError, function_arn};
use crate::events::{apigw, cloudevents, decode_query_component, s3};
use crate::registry::FunctionEntry;
use crate::sync_invoke::{ASYNC_PAYLOAD_LIMIT, InvocationResult, SYNC_PAYLOAD_LIMIT, TriggerKind};

/// What the HTTP handlers need from the gateway.
pub trait Ingress: Send + Sync + 'static {
    /// A function by name, or `ResourceNotFoundException`.
    fn function(&self, name: &str) -> Result<Arc<FunctionEntry>, GatewayError>;
    /// Every function, sorted by name.
    fn functions(&self) -> Vec<Arc<FunctionEntry>>;
    /// Runs one event and waits for its answer.
    fn invoke(
        &self,
        entry: &Arc<FunctionEntry>,
        payload: Bytes,
        request_id: &str,
        trigger: TriggerKind,
    ) -> impl Future<Output = Result<InvocationResult, GatewayError>> + Send;
    /// Accepts one event to run later: queued, or refused.
    fn enqueue(
        &self,
        entry: &Arc<FunctionEntry>,
        payload: Bytes,
        request_id: String,
        trigger: TriggerKind,
    ) -> Result<(), GatewayError>;
    /// Ready to take traffic.
    fn is_ready(&self) -> bool;
    /// The metrics, in Prometheus' text format.
    fn metrics_text(&self) -> String;
    /// The latest concurrency report.
    fn latest_report(&self) -> Arc<GatewayReport>;
    /// The first report with a sequence above `after`, waiting up to `wait`.
    fn report_after(
        &self,
        after: u64,
        wait: Duration,
    ) -> impl Future<Output = Arc<GatewayReport>> + Send;
    /// The dead letters, optionally of one function.
    fn dead_letters(&self, function: Option<&str>) -> DeadLetterList;
}

type Gw<G> = State<Arc<G>>;

/// The gateway's router.
pub fn app<G: Ingress>(gateway: Arc<G>) -> Router {
    Router::new()
        .route(INVOKE_ROUTE, post(invoke::<G>))
        .route("/2015-03-31/functions/{name}", get(get_function::<G>))
        .route("/2015-03-31/functions", get(list_functions::<G>))
        .route("/2015-03-31/functions/", get(list_functions::<G>))
        .route("/http/{name}", any(http_trigger::<G>))
        .route("/http/{name}/", any(http_trigger::<G>))
        .route("/http/{name}/{*path}", any(http_trigger::<G>))
        .route("/events/s3", post(s3_notification::<G>))
        .route("/events/cloudevents", post(cloud_event::<G>))
        .route("/v1/dead-letters", get(dead_letters::<G>))
        .route("/v1/functions", get(functions_status::<G>))
        .route(REPORT_PATH, get(concurrency::<G>))
        .route(LIVE_PATH, get(|| async { "ok" }))
        .route(READY_PATH, get(ready::<G>))
        .route(METRICS_PATH, get(metrics::<G>))
        .fallback(|| async { GatewayError::RouteNotFound("No route matches this request.".into()) })
        .with_state(gateway)
}

fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Bytes of an oversized body read and discarded before answering 413, so
/// that the client sees the answer rather than a reset connection.
const DRAIN_BEYOND_LIMIT: usize = 16 * 1024 * 1024;

/// Reads a body up to `limit` bytes, answering 413 beyond it.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, GatewayError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit + DRAIN_BEYOND_LIMIT) {
        return Err(GatewayError::TooLarge { limit });
    }
    let mut body = body;
    let mut buf = bytes::BytesMut::with_capacity(declared.unwrap_or(0).min(limit));
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| {
            GatewayError::InvalidParameter("Could not read the request body.".into())
        })?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen > limit + DRAIN_BEYOND_LIMIT {
                break;
            }
            if seen <= limit {
                buf.extend_from_slice(&data);
            }
        }
    }
    if seen > limit {
        return Err(GatewayError::TooLarge { limit });
    }
    Ok(buf.freeze())
}

/// Splits `NAME`, `NAME:QUALIFIER`, `ACCOUNT:function:NAME[:Q]` and full ARNs.
pub fn parse_function_name(raw: &str) -> (String, Option<String>) {
    let rest = match raw.find("function:") {
        Some(i) if raw.starts_with("arn:") || raw[..i].ends_with(':') => {
            &raw[i + "function:".len()..]
        }
        _ => raw,
    };
    match rest.split_once(':') {
        Some((name, q)) => (name.to_string(), Some(q.to_string())),
        None => (rest.to_string(), None),
    }
}

fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (decode_query_component(k) == key).then(|| decode_query_component(v))
    })
}

fn lookup(
    gw: &impl Ingress,
    raw_name: &str,
    query: Option<&str>,
) -> Result<Arc<FunctionEntry>, GatewayError> {
    let (name, qualifier) = parse_function_name(raw_name);
    let qualifier = qualifier.or_else(|| query_param(query, "Qualifier"));
    match qualifier.as_deref() {
        None | Some("$LATEST") => gw.function(&name),
        Some(q) => Err(GatewayError::FunctionNotFound {
            arn: format!("{}:{q}", function_arn(&name)),
        }),
    }
}

/// The `{name}` of a route. A name that is not UTF-8 once percent-decoded
/// (`%8A`) gets a Lambda-shaped 400 rather than axum's plain-text one.
fn name_param(path: Result<Path<String>, PathRejection>) -> Result<String, GatewayError> {
    path.map(|Path(name)| name).map_err(|_| {
        GatewayError::InvalidParameter(
            "1 validation error detected: Value at 'functionName' failed to satisfy constraint: Member must be valid UTF-8".into(),
        )
    })
}

fn lambda_headers(response: &mut Response, request_id: &str) {
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(header::AMZN_REQUEST_ID, v);
    }
}

fn with_request_id(e: GatewayError, request_id: &str) -> Response {
    let mut r = e.into_response();
    lambda_headers(&mut r, request_id);
    r
}

async fn invoke<G: Ingress>(
    State(gw): Gw<G>,
    raw_name: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let request_id = request_id();
    let result = match name_param(raw_name) {
        Ok(raw_name) => {
            invoke_inner(
                &*gw,
                &raw_name,
                query.as_deref(),
                &headers,
                body,
                &request_id,
            )
            .await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(r) => r,
        Err(e) => with_request_id(e, &request_id),
    }
}

async fn invoke_inner(
    gw: &impl Ingress,
    raw_name: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Body,
    request_id: &str,
) -> Result<Response, GatewayError> {
    let entry = lookup(gw, raw_name, query)?;
    let invocation_type = headers
        .get(header::INVOCATION_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("RequestResponse");
    let limit = match invocation_type {
        "RequestResponse" | "DryRun" => SYNC_PAYLOAD_LIMIT,
        "Event" => ASYNC_PAYLOAD_LIMIT,
        other => {
            return Err(GatewayError::InvalidParameter(format!(
                "1 validation error detected: Value '{other}' at 'invocationType' failed to satisfy constraint: Member must satisfy enum value set: [Event, RequestResponse, DryRun]"
            )));
        }
    };
    let payload = read_body(headers, body, limit).await?;
    let payload = if payload.iter().all(u8::is_ascii_whitespace) {
        Bytes::from_static(b"{}")
    } else {
        payload
    };
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&payload) {
        return Err(GatewayError::InvalidJson(e.to_string()));
    }
    let mut response = match invocation_type {
        "DryRun" => StatusCode::NO_CONTENT.into_response(),
        "Event" => {
            gw.enqueue(&entry, payload, request_id.to_string(), TriggerKind::Event)?;
            StatusCode::ACCEPTED.into_response()
        }
        _ => {
            let result = gw
                .invoke(&entry, payload, request_id, TriggerKind::Invoke)
                .await?;
            let mut r = (StatusCode::OK, result.body.clone()).into_response();
            let h = r.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            if let Some(fe) = result
                .function_error
                .as_deref()
                .and_then(|v| HeaderValue::from_str(v).ok())
            {
                h.insert(header::FUNCTION_ERROR, fe);
            }
            environment_headers(h, &result);
            if headers
                .get(header::LOG_TYPE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"tail"))
            {
                let log = format!(
                    "START RequestId: {request_id} Version: $LATEST\nEND RequestId: {request_id}\nREPORT RequestId: {request_id}\tEnvironment: {}\n",
                    result.environment
                );
                let encoded = base64::engine::general_purpose::STANDARD.encode(log);
                if let Ok(v) = HeaderValue::from_str(&encoded) {
                    h.insert(header::LOG_RESULT, v);
                }
            }
            r
        }
    };
    lambda_headers(&mut response, request_id);
    response.headers_mut().insert(
        header::EXECUTED_VERSION,
        HeaderValue::from_static("$LATEST"),
    );
    Ok(response)
}

/// Tells the caller which environment ran the event and whether it was a
/// cold start (with the init duration), for load tools and debugging.
fn environment_headers(h: &mut HeaderMap, result: &InvocationResult) {
    if let Ok(v) = HeaderValue::from_str(&result.environment) {
        h.insert(header::ENVIRONMENT, v);
    }
    if result.cold_start {
        h.insert(header::COLD_START, HeaderValue::from_static("true"));
        if let Some(ms) = result.init_duration_ms
            && let Ok(v) = HeaderValue::from_str(&format!("{ms:.1}"))
        {
            h.insert(header::INIT_DURATION_MS, v);
        }
    }
}

fn configuration(entry: &FunctionEntry) -> Value {
    let spec = entry.spec();
    let env: BTreeMap<_, _> = spec.env.iter().collect();
    json!({
        "FunctionName": entry.name(),
        "FunctionArn": function_arn(entry.name()),
        "Runtime": spec.runtime,
        "Handler": spec.handler,
        "Timeout": spec.timeout_seconds,
        "MemorySize": spec.memory_mib,
        "Version": "$LATEST",
        "State": "Active",
        "LastUpdateStatus": "Successful",
        "PackageType": "Zip",
        "Description": format!("{}/{}", entry.key().namespace, entry.key().name),
        "Environment": { "Variables": env },
    })
}

async fn get_function<G: Ingress>(
    State(gw): Gw<G>,
    raw_name: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Response {
    let entry = name_param(raw_name).and_then(|name| lookup(&*gw, &name, query.as_deref()));
    match entry {
        Ok(entry) => axum::Json(json!({
            "Configuration": configuration(&entry),
            "Code": { "RepositoryType": "Porchlight", "Location": "" },
        }))
        .into_response(),
        Err(e) => e.into_response(),
    }
}

async fn list_functions<G: Ingress>(State(gw): Gw<G>) -> Response {
    let functions: Vec<Value> = gw.functions().iter().map(|e| configuration(e)).collect();
    axum::Json(json!({ "Functions": functions })).into_response()
}

// ---------------------------------------------------------------- HTTP trigger

fn http_reply(reply: apigw::HttpReply) -> Response {
    let mut builder = Response::builder().status(reply.status);
    for (k, v) in &reply.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    builder
        .body(Body::from(reply.body))
        .unwrap_or_else(|_| http_reply(apigw::HttpReply::internal_server_error()))
}

async fn http_trigger<G: Ingress>(State(gw): Gw<G>, request: Request) -> Response {
    let request_id = request_id();
    match http_trigger_inner(&*gw, request, &request_id).await {
        Ok(r) => r,
        Err(e) => with_request_id(e, &request_id),
    }
}

async fn http_trigger_inner(
    gw: &impl Ingress,
    request: Request,
    request_id: &str,
) -> Result<Response, GatewayError> {
    let (parts, body) = request.into_parts();
    let full = parts.uri.path();
    let rest = full.strip_prefix("/http/").unwrap_or("");
    let (raw_name, sub) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let name = decode_query_component(raw_name);
    let entry = gw.function(&name)?;
    let Some(trigger) = entry.spec().http_trigger() else {
        return Err(GatewayError::RouteNotFound(format!(
            "Function {name} has no http trigger."
        )));
    };
    let format = trigger.payload_format;
    let body = read_body(&parts.headers, body, SYNC_PAYLOAD_LIMIT).await?;
    let source_ip = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "127.0.0.1".into());
    let proxy = sub.strip_prefix('/').filter(|p| !p.is_empty());
    let protocol = format!("{:?}", parts.version);
    let req = apigw::HttpRequestParts {
        method: parts.method.as_str(),
        path: sub,
        proxy,
        query: parts.uri.query().unwrap_or(""),
        headers: &parts.headers,
        body: &body,
        source_ip: &source_ip,
        request_id,
        protocol: &protocol,
        now: time::OffsetDateTime::now_utc(),
    };
    let event = apigw::request_event(format, &req);
    let payload = Bytes::from(serde_json::to_vec(&event).unwrap_or_default());
    let result = gw
        .invoke(&entry, payload, request_id, TriggerKind::Http)
        .await?;
    if result.function_error.is_some() {
        tracing::info!(
            request_id,
            function = entry.name(),
            "function error behind the http trigger"
        );
        return Ok(http_reply(apigw::HttpReply::internal_server_error()));
    }
    match apigw::response_from_result(format, &result.body) {
        Ok(reply) => Ok(http_reply(reply)),
        Err(apigw::Malformed(why)) => {
            tracing::warn!(
                request_id,
                function = entry.name(),
                problem = why,
                "Execution failed due to configuration error: Malformed Lambda proxy response"
            );
            Ok(http_reply(apigw::HttpReply::internal_server_error()))
        }
    }
}

// ------------------------------------------------------------ async triggers

/// What one notification fanned out to: events queued and refused per
/// function, notifications no function matched, and the last refusal.
#[derive(Debug, Default)]
struct FanOut {
    queued: BTreeMap<String, u32>,
    refused: BTreeMap<String, u32>,
    unmatched: u32,
    matched: usize,
    last_error: Option<GatewayError>,
}

/// Enqueues each incoming event for every function whose triggers match it
/// (`event_for` gives the function's event, or `None` when it does not match).
fn fan_out<E>(
    gw: &impl Ingress,
    incoming: &[E],
    trigger: TriggerKind,
    event_for: impl Fn(&FunctionEntry, &E) -> Option<Value>,
) -> FanOut {
    let functions = gw.functions();
    let mut targets = Vec::new();
    let mut out = FanOut::default();
    for item in incoming {
        let before = targets.len();
        for f in &functions {
            if let Some(event) = event_for(f, item) {
                targets.push((f.clone(), event));
            }
        }
        if targets.len() == before {
            out.unmatched += 1;
        }
    }
    out.matched = targets.len();
    for (entry, event) in targets {
        let payload = Bytes::from(serde_json::to_vec(&event).unwrap_or_default());
        let name = entry.name().to_string();
        if payload.len() > ASYNC_PAYLOAD_LIMIT {
            *out.refused.entry(name).or_default() += 1;
            out.last_error = Some(GatewayError::TooLarge {
                limit: ASYNC_PAYLOAD_LIMIT,
            });
            continue;
        }
        match gw.enqueue(&entry, payload, request_id(), trigger) {
            Ok(()) => *out.queued.entry(name).or_default() += 1,
            Err(e) => {
                *out.refused.entry(name).or_default() += 1;
                out.last_error = Some(e);
            }
        }
    }
    out
}

fn accepted(out: FanOut) -> Response {
    let body = json!({ "queued": out.queued, "refused": out.refused, "unmatched": out.unmatched });
    match out.last_error {
        None => (StatusCode::ACCEPTED, axum::Json(body)).into_response(),
        Some(e) => {
            let mut r = e.clone().into_response();
            let mut merged: Value = serde_json::from_str(&e.body()).unwrap_or(Value::Null);
            merged["queued"] = body["queued"].clone();
            merged["refused"] = body["refused"].clone();
            *r.body_mut() = Body::from(merged.to_string());
            r
        }
    }
}

async fn s3_notification<G: Ingress>(State(gw): Gw<G>, headers: HeaderMap, body: Body) -> Response {
    let body = match read_body(&headers, body, SYNC_PAYLOAD_LIMIT).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let records = match s3::parse_notification(&body) {
        Ok(r) => r,
        Err(why) => return GatewayError::InvalidJson(why).into_response(),
    };
    let out = fan_out(&*gw, &records, TriggerKind::S3, |f, record| {
        f.spec()
            .triggers
            .iter()
            .filter_map(|t| t.s3.as_ref())
            .any(|t| s3::trigger_matches(t, record))
            .then(|| record.event())
    });
    accepted(out)
}

async fn cloud_event<G: Ingress>(State(gw): Gw<G>, headers: HeaderMap, body: Body) -> Response {
    let body = match read_body(&headers, body, SYNC_PAYLOAD_LIMIT).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let events = match cloudevents::parse_request(&headers, &body) {
        Ok(e) => e,
        Err(why) => return GatewayError::InvalidParameter(why).into_response(),
    };
    let out = fan_out(&*gw, &events, TriggerKind::CloudEvents, |f, ev| {
        f.spec()
            .triggers
            .iter()
            .filter_map(|t| t.cloudevents.as_ref())
            .any(|t| ev.matches(t))
            .then(|| ev.to_json())
    });
    if out.matched == 0 {
        return GatewayError::RouteNotFound(
            "No function has a cloudevents trigger matching this event's type and source.".into(),
        )
        .into_response();
    }
    accepted(out)
}

// ------------------------------------------------------------------------ ops

async fn ready<G: Ingress>(State(gw): Gw<G>) -> Response {
    if gw.is_ready() {
        "ready".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

async fn metrics<G: Ingress>(State(gw): Gw<G>) -> Response {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        gw.metrics_text(),
    )
        .into_response()
}

async fn concurrency<G: Ingress>(State(gw): Gw<G>, RawQuery(query): RawQuery) -> Response {
    let q = query.as_deref();
    let after = query_param(q, "after").and_then(|v| v.parse::<u64>().ok());
    let wait_ms = query_param(q, "waitMs")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1000);
    let report = match after {
        Some(after) => gw.report_after(after, Duration::from_millis(wait_ms)).await,
        None => gw.latest_report(),
    };
    axum::Json(&*report).into_response()
}

async fn functions_status<G: Ingress>(State(gw): Gw<G>) -> Response {
    let functions: Vec<Value> = gw
        .functions()
        .iter()
        .map(|f| {
            let status = f.status();
            json!({
                "namespace": f.key().namespace,
                "name": f.key().name,
                "desired": status.desired,
                "starting": status.starting,
                "ready": status.load.ready,
                "draining": status.load.draining,
                "inFlight": status.load.in_flight,
                "queued": status.load.queued,
                "asyncPending": status.async_pending,
                "invocations": status.invocations,
            })
        })
        .collect();
    axum::Json(json!({ "functions": functions })).into_response()
}

async fn dead_letters<G: Ingress>(State(gw): Gw<G>, RawQuery(query): RawQuery) -> Response {
    let function = query_param(query.as_deref(), "function");
    axum::Json(gw.dead_letters(function.as_deref())).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    /// An ingress with no functions: the routes need nothing more.
    struct Empty;

    impl Ingress for Empty {
        fn function(&self, name: &str) -> Result<Arc<FunctionEntry>, GatewayError> {
            Err(GatewayError::not_found(name))
        }
        fn functions(&self) -> Vec<Arc<FunctionEntry>> {
            Vec::new()
        }
        async fn invoke(
            &self,
            _: &Arc<FunctionEntry>,
            _: Bytes,
            _: &str,
            _: TriggerKind,
        ) -> Result<InvocationResult, GatewayError> {
            Err(GatewayError::ShuttingDown)
        }
        fn enqueue(
            &self,
            _: &Arc<FunctionEntry>,
            _: Bytes,
            _: String,
            _: TriggerKind,
        ) -> Result<(), GatewayError> {
            Err(GatewayError::ShuttingDown)
        }
        fn is_ready(&self) -> bool {
            false
        }
        fn metrics_text(&self) -> String {
            String::new()
        }
        fn latest_report(&self) -> Arc<GatewayReport> {
            Arc::default()
        }
        async fn report_after(&self, _: u64, _: Duration) -> Arc<GatewayReport> {
            Arc::default()
        }
        fn dead_letters(&self, _: Option<&str>) -> DeadLetterList {
            DeadLetterList {
                dead_letters: Vec::new(),
                total: 0,
                evicted: 0,
            }
        }
    }

    async fn status(uri: &str, method: &str) -> (StatusCode, HeaderMap) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from("{}"))
            .expect("request");
        let r = app(Arc::new(Empty)).oneshot(req).await.expect("infallible");
        (r.status(), r.headers().clone())
    }

    #[tokio::test]
    async fn routes_work_against_any_ingress() {
        let (code, headers) = status("/2015-03-31/functions/nope/invocations", "POST").await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        assert!(headers.contains_key("x-amzn-requestid"));
        assert_eq!(
            status("/ready", "GET").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(status("/v1/functions", "GET").await.0, StatusCode::OK);
        let (code, _) = status("/events/cloudevents", "POST").await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "no ce- headers");
    }

    /// Found by `gateway/tests/fuzz_parsers.rs`: a name that percent-decodes
    /// to invalid UTF-8 got axum's plain-text 400.
    #[tokio::test]
    async fn name_percent_8a_gets_a_lambda_shaped_400() {
        for (uri, method) in [
            ("/2015-03-31/functions/%8A/invocations", "POST"),
            ("/2015-03-31/functions/%8A", "GET"),
        ] {
            let req = Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::from("{}"))
                .expect("request");
            let r = app(Arc::new(Empty)).oneshot(req).await.expect("infallible");
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{uri}");
            let body = r.into_body().collect().await.expect("body").to_bytes();
            let v: Value = serde_json::from_slice(&body).expect("JSON");
            assert_eq!(v["errorType"], "InvalidParameterValueException", "{uri}");
        }
    }

    #[test]
    fn function_names_in_every_form() {
        assert_eq!(parse_function_name("hello"), ("hello".into(), None));
        assert_eq!(
            parse_function_name("hello:$LATEST"),
            ("hello".into(), Some("$LATEST".into()))
        );
        assert_eq!(
            parse_function_name("arn:aws:lambda:us-east-1:000000000000:function:hello"),
            ("hello".into(), None)
        );
        assert_eq!(
            parse_function_name("arn:aws:lambda:us-east-1:000000000000:function:hello:7"),
            ("hello".into(), Some("7".into()))
        );
        assert_eq!(
            parse_function_name("123456789012:function:hello"),
            ("hello".into(), None)
        );
    }
}
