//! HTTP routes: the Lambda Invoke API, the triggers, and the ops surface.
//!
//! The handlers depend on [`Ingress`], the few things they need from the
//! gateway, not on the gateway itself.
//!
//! Every payload is read under a reservation of the memory budget (by its
//! `Content-Length`, or by the limit while it is read, then by its real
//! size), held while the gateway holds the bytes: a sync payload until its
//! answer is sent, an async one until its event is finished. The S3 and
//! CloudEvents fan-out checks the queue and the budget for each target
//! before building its event.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, RawQuery, Request, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use bytes::Bytes;
use http_body_util::BodyExt;
use porchlight_core::GatewayReport;
use porchlight_core::invoke::{
    INVOKE_ROUTE, LIVE_PATH, LOG_TYPE_TAIL, METRICS_PATH, READY_PATH, header,
};
use porchlight_core::report::REPORT_PATH;
use serde_json::{Value, json};
use tracing::Instrument as _;

use crate::budget::{Purpose, Reservation, SharedHold};
use crate::cors;
use crate::dead_letters::{DeadLetterList, PageRequest};
use crate::error::{GatewayError, function_arn};
use crate::events::{apigw, cloudevents, decode_query_component, s3};
use crate::forwarded::{self, Forwarded};
use crate::registry::FunctionEntry;
use crate::sigv4::{Caller, SignedRequest};
use crate::sync_invoke::{ASYNC_PAYLOAD_LIMIT, InvocationResult, SYNC_PAYLOAD_LIMIT, TriggerKind};
use crate::telemetry;
use porchlight_api::function::HttpAuth;

/// What the HTTP handlers need from the gateway.
pub trait Ingress: Send + Sync + 'static {
    /// A function by name, or `ResourceNotFoundException`.
    fn function(&self, name: &str) -> Result<Arc<FunctionEntry>, GatewayError>;
    /// Every function, sorted by name.
    fn functions(&self) -> Vec<Arc<FunctionEntry>>;
    /// Runs one event and waits for its answer; the environment gets what
    /// `forwarded` carries (trace id, client context, a log tail asked for).
    fn invoke(
        &self,
        entry: &Arc<FunctionEntry>,
        payload: Bytes,
        request_id: &str,
        trigger: TriggerKind,
        forwarded: &Forwarded,
    ) -> impl Future<Output = Result<InvocationResult, GatewayError>> + Send;
    /// Holds `bytes` against the memory budget, or refuses with 429.
    fn reserve(&self, bytes: usize, purpose: Purpose) -> Result<Reservation, GatewayError>;
    /// Whether `entry`'s async queue has room for one more event now.
    fn has_async_room(&self, entry: &FunctionEntry) -> bool;
    /// Async events of `entry` accepted and not finished, as far as this
    /// gateway knows (on a shared queue: those it is running).
    fn async_pending(&self, entry: &FunctionEntry) -> u64 {
        entry.status().async_pending
    }
    /// Accepts one event to run later, whose bytes `held` counts: stored
    /// (then answered 202) with what `forwarded` carries, or refused.
    fn enqueue(
        &self,
        entry: &Arc<FunctionEntry>,
        payload: Bytes,
        held: Reservation,
        request_id: String,
        trigger: TriggerKind,
        forwarded: Forwarded,
    ) -> impl Future<Output = Result<(), GatewayError>> + Send;
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
    /// One page of the dead letters.
    fn dead_letters(
        &self,
        page: &PageRequest,
    ) -> impl Future<Output = Result<DeadLetterList, GatewayError>> + Send;
    /// Stores `function`'s dead letters (only `request_id`'s, when given)
    /// as new events and removes them from the dead letters; how many.
    fn redrive(
        &self,
        function: &str,
        request_id: Option<&str>,
    ) -> impl Future<Output = Result<usize, GatewayError>> + Send;
    /// Verifies a Lambda API request's signature when the gateway requires
    /// one: who signed it, or `None` when signatures are off.
    fn authenticate(&self, _request: &SignedRequest<'_>) -> Result<Option<Caller>, GatewayError> {
        Ok(None)
    }
}

type Gw<G> = State<Arc<G>>;

/// The gateway's router: what end users call and the platform's own
/// endpoints, on one port (local mode's default).
pub fn app<G: Ingress>(gateway: Arc<G>) -> Router {
    with_fallbacks(public_routes().merge(internal_routes()), gateway)
}

/// What end users call: the Lambda Invoke API, HTTP triggers, S3
/// notifications and CloudEvents (the public listener).
pub fn public_app<G: Ingress>(gateway: Arc<G>) -> Router {
    with_fallbacks(public_routes(), gateway)
}

/// The platform's own endpoints: concurrency reports, function status, dead
/// letters, metrics and probes (the internal listener, for the controller,
/// Prometheus and the kubelet).
pub fn internal_app<G: Ingress>(gateway: Arc<G>) -> Router {
    with_fallbacks(internal_routes(), gateway)
}

fn public_routes<G: Ingress>() -> Router<Arc<G>> {
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
}

fn internal_routes<G: Ingress>() -> Router<Arc<G>> {
    Router::new()
        .route("/v1/dead-letters", get(dead_letters::<G>))
        .route("/v1/dead-letters/redrive", post(redrive::<G>))
        .route("/v1/functions", get(functions_status::<G>))
        .route("/v1/usage", get(usage::<G>))
        .route(REPORT_PATH, get(concurrency::<G>))
        .route(LIVE_PATH, get(|| async { "ok" }))
        .route(READY_PATH, get(ready::<G>))
        .route(METRICS_PATH, get(metrics::<G>))
}

fn with_fallbacks<G: Ingress>(routes: Router<Arc<G>>, gateway: Arc<G>) -> Router {
    routes
        .fallback(|| async { GatewayError::RouteNotFound("No route matches this request.".into()) })
        .method_not_allowed_fallback(|| async { method_not_allowed() })
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

/// Reads a body up to `limit` bytes under a reservation of the memory
/// budget: by `Content-Length` when declared, otherwise by the limit, then
/// shrunk to the body's real size. Refused with 429 past the budget.
pub async fn read_body_reserved(
    gw: &impl Ingress,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    purpose: Purpose,
) -> Result<(Bytes, Reservation), GatewayError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        // Answered 413; what is read of it first is not kept.
        if declared.is_some_and(|len| len <= limit + DRAIN_BEYOND_LIMIT) {
            let mut body = body;
            while let Some(Ok(_)) = body.frame().await {}
        }
        return Err(GatewayError::TooLarge { limit });
    }
    let mut held = gw.reserve(declared.unwrap_or(limit), purpose)?;
    let bytes = read_body(headers, body, limit).await?;
    held.shrink_to(bytes.len());
    Ok((bytes, held))
}

/// A response body that holds its bytes against the memory budget until
/// it is sent (or the client goes away).
struct HeldBody {
    data: Option<Bytes>,
    _held: (Reservation, SharedHold),
}

impl HeldBody {
    fn body(data: Bytes, held: (Reservation, SharedHold)) -> Body {
        Body::new(HeldBody {
            data: Some(data),
            _held: held,
        })
    }
}

impl hyper::body::Body for HeldBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.data.take().map(|d| Ok(hyper::body::Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
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
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let request_id = request_id();
    let forwarded = Forwarded::from_trace_headers(&headers, telemetry::enabled());
    let result = match name_param(raw_name) {
        Ok(raw_name) => {
            let span = telemetry::receive(
                &raw_name,
                &request_id,
                "invoke",
                &forwarded.trace,
                forwarded.from_caller,
            );
            invoke_inner(
                &*gw,
                &raw_name,
                &uri,
                &headers,
                body,
                &request_id,
                forwarded,
            )
            .instrument(span)
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
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
    request_id: &str,
    mut forwarded: Forwarded,
) -> Result<Response, GatewayError> {
    let invocation_type = match headers.get(header::INVOCATION_TYPE) {
        None => "RequestResponse",
        Some(v) => v.to_str().map_err(|_| {
            GatewayError::InvalidParameter(
                "1 validation error detected: Value at 'invocationType' failed to satisfy constraint: Member must satisfy enum value set: [Event, RequestResponse, DryRun]".into(),
            )
        })?,
    };
    let limit = match invocation_type {
        "RequestResponse" | "DryRun" => SYNC_PAYLOAD_LIMIT,
        "Event" => ASYNC_PAYLOAD_LIMIT,
        other => {
            return Err(GatewayError::InvalidParameter(format!(
                "1 validation error detected: Value '{other}' at 'invocationType' failed to satisfy constraint: Member must satisfy enum value set: [Event, RequestResponse, DryRun]"
            )));
        }
    };
    let purpose = if invocation_type == "Event" {
        Purpose::Async
    } else {
        Purpose::Sync
    };
    let (payload, mut held) = read_body_reserved(gw, headers, body, limit, purpose).await?;
    // Who calls comes first: an unsigned caller learns nothing, not even
    // whether the function exists.
    let caller = authenticate(gw, "POST", uri, headers, &payload)?;
    let entry = lookup(gw, raw_name, uri.query())?;
    if let Some(caller) = &caller {
        caller.check(entry.name())?;
    }
    let payload = if payload.iter().all(u8::is_ascii_whitespace) {
        Bytes::from_static(b"{}")
    } else {
        payload
    };
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&payload) {
        return Err(GatewayError::InvalidJson(e.to_string()));
    }
    forwarded.client_context = forwarded::client_context(headers)?;
    let mut response = match invocation_type {
        "DryRun" => StatusCode::NO_CONTENT.into_response(),
        "Event" => {
            forwarded.resumes = telemetry::current();
            gw.enqueue(
                &entry,
                payload,
                held,
                request_id.to_string(),
                TriggerKind::Event,
                forwarded,
            )
            .await?;
            StatusCode::ACCEPTED.into_response()
        }
        _ => {
            // The payload's bytes stay held through the call; then the
            // answer's (reserved before they were read), until it is sent.
            forwarded.log_tail = headers
                .get(header::LOG_TYPE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(LOG_TYPE_TAIL.as_bytes()));
            let result = gw
                .invoke(&entry, payload, request_id, TriggerKind::Invoke, &forwarded)
                .await?;
            if result.held.bytes() > 0 {
                held.shrink_to(0);
            } else {
                // An answer the gateway wrote itself: hold it if it fits.
                let _ = held.try_resize(result.body.len());
            }
            let body = HeldBody::body(result.body.clone(), (held, result.held.clone()));
            let mut r = (StatusCode::OK, body).into_response();
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
            // The environment's own tail of the invocation's log (none when
            // no environment ran the event).
            if let Some(v) = result
                .log_result
                .as_deref()
                .and_then(|t| HeaderValue::from_str(t).ok())
            {
                h.insert(header::LOG_RESULT, v);
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

/// Tells the caller which environment ran the event, whether it was a
/// cold start (with the init duration) and how it queued for an
/// environment, for load tools and debugging.
fn environment_headers(h: &mut HeaderMap, result: &InvocationResult) {
    if let Some(waited) = result.waited {
        if let Ok(v) =
            HeaderValue::from_str(&format!("{:.1}", waited.duration.as_secs_f64() * 1000.0))
        {
            h.insert(header::WAITED_MS, v);
        }
        h.insert(
            header::WAITED_FOR,
            HeaderValue::from_static(if waited.for_cold_start {
                porchlight_core::invoke::WAITED_FOR_COLD_START
            } else {
                porchlight_core::invoke::WAITED_FOR_ENVIRONMENT
            }),
        );
    }
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

/// Verifies the signature of a Lambda API request (see [`Ingress::authenticate`]).
fn authenticate(
    gw: &impl Ingress,
    method: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Option<Caller>, GatewayError> {
    gw.authenticate(&SignedRequest {
        method,
        path: uri.path(),
        query: uri.query().unwrap_or(""),
        headers,
        body,
    })
}

/// A function's configuration, as Lambda's GetFunction and ListFunctions
/// answer it. Environment variables go only to a signed caller; without
/// signatures (`caller` None) Lambda's error shape for variables it cannot
/// return says why.
fn configuration(entry: &FunctionEntry, caller: Option<&Caller>) -> Value {
    let spec = entry.spec();
    let environment = match caller {
        Some(_) => {
            // Values from Secrets and ConfigMaps are never returned: only
            // where they come from.
            let mut env: BTreeMap<String, String> = spec.env.clone();
            for (name, source) in &spec.env_value_from {
                env.insert(name.clone(), format!("<from {}>", source.describe()));
            }
            json!({ "Variables": env })
        }
        None => json!({ "Error": {
            "ErrorCode": "AccessDeniedException",
            "Message": "Environment variables are returned only to signed callers; start the gateway with --auth-keys.",
        }}),
    };
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
        "Environment": environment,
    })
}

async fn get_function<G: Ingress>(
    State(gw): Gw<G>,
    raw_name: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let answer = (|| {
        let caller = authenticate(&*gw, "GET", &uri, &headers, b"")?;
        let entry = lookup(&*gw, &name_param(raw_name)?, uri.query())?;
        if let Some(caller) = &caller {
            caller.check(entry.name())?;
        }
        Ok::<_, GatewayError>(json!({
            "Configuration": configuration(&entry, caller.as_ref()),
            "Code": { "RepositoryType": "Porchlight", "Location": "" },
        }))
    })();
    match answer {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Every function, or with signatures the ones the caller may invoke.
async fn list_functions<G: Ingress>(State(gw): Gw<G>, uri: Uri, headers: HeaderMap) -> Response {
    let caller = match authenticate(&*gw, "GET", &uri, &headers, b"") {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    let functions: Vec<Value> = gw
        .functions()
        .iter()
        .filter(|e| caller.as_ref().is_none_or(|c| c.may_invoke(e.name())))
        .map(|e| configuration(e, caller.as_ref()))
        .collect();
    axum::Json(json!({ "Functions": functions })).into_response()
}

/// A known path with a method it does not take, in Lambda's error shape.
fn method_not_allowed() -> Response {
    let mut response = (
        StatusCode::METHOD_NOT_ALLOWED,
        [(CONTENT_TYPE, "application/json")],
        porchlight_core::LambdaError::new(
            "MethodNotAllowedException",
            "The method is not allowed on this endpoint.",
        )
        .to_json(),
    )
        .into_response();
    response.headers_mut().insert(
        header::AMZN_ERROR_TYPE,
        HeaderValue::from_static("MethodNotAllowedException"),
    );
    response
}

// ---------------------------------------------------------------- HTTP trigger

/// Headers a handler may not set: the gateway frames the response itself
/// (a wrong `content-length` would hang the client) and owns the connection.
const HOP_BY_HOP: [&str; 8] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
];

fn http_reply(reply: apigw::HttpReply) -> Response {
    let mut builder = Response::builder().status(reply.status);
    for (k, v) in &reply.headers {
        if HOP_BY_HOP.iter().any(|h| k.eq_ignore_ascii_case(h)) {
            continue;
        }
        builder = builder.header(k.as_str(), v.as_str());
    }
    builder
        .body(Body::from(reply.body))
        .unwrap_or_else(|_| http_reply(apigw::HttpReply::internal_server_error()))
}

async fn http_trigger<G: Ingress>(State(gw): Gw<G>, request: Request) -> Response {
    let request_id = request_id();
    let forwarded = Forwarded::from_trace_headers(request.headers(), telemetry::enabled());
    let name = request
        .uri()
        .path()
        .strip_prefix("/http/")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default();
    let span = telemetry::receive(
        name,
        &request_id,
        "http",
        &forwarded.trace,
        forwarded.from_caller,
    );
    match http_trigger_inner(&*gw, request, &request_id, &forwarded)
        .instrument(span)
        .await
    {
        Ok(r) => r,
        Err(e) => with_request_id(e, &request_id),
    }
}

async fn http_trigger_inner(
    gw: &impl Ingress,
    request: Request,
    request_id: &str,
    forwarded: &Forwarded,
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
    let spec = entry.spec();
    let Some(trigger) = spec.http_trigger() else {
        return Err(GatewayError::RouteNotFound(format!(
            "Function {name} has no http trigger."
        )));
    };
    // CORS is the gateway's, as for function URLs: preflights never reach
    // the function (nor need a signature), answers get the trigger's headers.
    if let Some(c) = &trigger.cors
        && cors::is_preflight(&parts.method, &parts.headers)
    {
        return Ok(cors::preflight(c, &parts.headers));
    }
    let answer = http_trigger_call(
        gw,
        &parts,
        body,
        (sub, &entry, trigger),
        request_id,
        forwarded,
    )
    .await;
    let mut response = answer.unwrap_or_else(|e| with_request_id(e, request_id));
    if let Some(c) = &trigger.cors {
        cors::decorate(c, &parts.headers, &mut response);
    }
    Ok(response)
}

/// One call through an HTTP trigger: its auth, the API Gateway event, the
/// invocation and the mapping of the function's answer.
async fn http_trigger_call(
    gw: &impl Ingress,
    parts: &axum::http::request::Parts,
    body: Body,
    (sub, entry, trigger): (
        &str,
        &Arc<FunctionEntry>,
        &porchlight_api::function::HttpTrigger,
    ),
    request_id: &str,
    forwarded: &Forwarded,
) -> Result<Response, GatewayError> {
    let format = trigger.payload_format;
    let (body, mut held) =
        read_body_reserved(gw, &parts.headers, body, SYNC_PAYLOAD_LIMIT, Purpose::Sync).await?;
    if trigger.auth == HttpAuth::AwsIam {
        match authenticate(gw, parts.method.as_str(), &parts.uri, &parts.headers, &body)? {
            Some(caller) => caller.check(entry.name())?,
            None => {
                return Err(GatewayError::AccessDenied(format!(
                    "The http trigger of {} takes signed requests only (auth: AWS_IAM), and this gateway has no access keys (--auth-keys).",
                    entry.name()
                )));
            }
        }
    }
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
    drop(event);
    drop(body);
    // The event replaces the body (it holds it, base64-encoded or not).
    held.try_resize(payload.len())?;
    let result = gw
        .invoke(entry, payload, request_id, TriggerKind::Http, forwarded)
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

impl FanOut {
    fn refuse(&mut self, entry: &FunctionEntry, error: GatewayError) {
        *self.refused.entry(entry.name().to_string()).or_default() += 1;
        self.last_error = Some(error);
    }
}

/// How the fan-out sees one incoming event: which functions want it, and
/// its event, whose size is known before it is built.
trait Incoming {
    fn wanted_by(&self, function: &FunctionEntry) -> bool;
    fn event_len(&self) -> usize;
    fn event(&self) -> Bytes;
}

impl Incoming for s3::S3Record<'_> {
    fn wanted_by(&self, f: &FunctionEntry) -> bool {
        f.spec()
            .triggers
            .iter()
            .filter_map(|t| t.s3.as_ref())
            .any(|t| s3::trigger_matches(t, self))
    }
    fn event_len(&self) -> usize {
        s3::S3Record::event_len(self)
    }
    fn event(&self) -> Bytes {
        s3::S3Record::event(self)
    }
}

impl Incoming for cloudevents::CloudEvent {
    fn wanted_by(&self, f: &FunctionEntry) -> bool {
        f.spec()
            .triggers
            .iter()
            .filter_map(|t| t.cloudevents.as_ref())
            .any(|t| self.matches(t))
    }
    fn event_len(&self) -> usize {
        self.json.len()
    }
    fn event(&self) -> Bytes {
        self.json.clone()
    }
}

/// Enqueues each incoming event for every function that wants it. Each
/// target's room is checked (its queue, then the memory budget for the
/// event's exact size) before its event is built, so a refused target
/// costs nothing but its count.
async fn fan_out<E: Incoming>(gw: &impl Ingress, incoming: &[E], trigger: TriggerKind) -> FanOut {
    let functions = gw.functions();
    let mut out = FanOut::default();
    for item in incoming {
        let mut wanted = false;
        for entry in functions.iter().filter(|f| item.wanted_by(f)) {
            wanted = true;
            out.matched += 1;
            let size = item.event_len();
            if size > ASYNC_PAYLOAD_LIMIT {
                out.refuse(
                    entry,
                    GatewayError::TooLarge {
                        limit: ASYNC_PAYLOAD_LIMIT,
                    },
                );
                continue;
            }
            if !gw.has_async_room(entry) {
                out.refuse(
                    entry,
                    GatewayError::Throttled {
                        retry_after: Duration::from_secs(1),
                        reason: "AsyncQueueFull",
                    },
                );
                continue;
            }
            let held = match gw.reserve(size, Purpose::Async) {
                Ok(held) => held,
                Err(e) => {
                    out.refuse(entry, e);
                    continue;
                }
            };
            let forwarded = Forwarded::new_trace(false);
            match gw
                .enqueue(entry, item.event(), held, request_id(), trigger, forwarded)
                .await
            {
                Ok(()) => *out.queued.entry(entry.name().to_string()).or_default() += 1,
                Err(e) => out.refuse(entry, e),
            }
        }
        if !wanted {
            out.unmatched += 1;
        }
    }
    out
}

/// Reads an S3 or CloudEvents request under a fan-out reservation.
async fn read_fan_out(
    gw: &impl Ingress,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Bytes, Reservation), GatewayError> {
    read_body_reserved(gw, headers, body, SYNC_PAYLOAD_LIMIT, Purpose::FanOut).await
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
    let (body, mut held) = match read_fan_out(&*gw, &headers, body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let records = match s3::parse_notification(&body) {
        Ok(r) => r,
        Err(why) => return GatewayError::InvalidJson(why).into_response(),
    };
    let parsed: usize = records.iter().map(s3::S3Record::parsed_size).sum();
    if let Err(e) = held.try_resize(body.len() + parsed) {
        return GatewayError::from(e).into_response();
    }
    accepted(fan_out(&*gw, &records, TriggerKind::S3).await)
}

async fn cloud_event<G: Ingress>(State(gw): Gw<G>, headers: HeaderMap, body: Body) -> Response {
    let (body, mut held) = match read_fan_out(&*gw, &headers, body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let events = match cloudevents::parse_request(&headers, &body) {
        Ok(e) => e,
        Err(why) => return GatewayError::InvalidParameter(why).into_response(),
    };
    let parsed: usize = events
        .iter()
        .map(cloudevents::CloudEvent::parsed_size)
        .sum();
    if let Err(e) = held.try_resize(body.len() + parsed) {
        return GatewayError::from(e).into_response();
    }
    let out = fan_out(&*gw, &events, TriggerKind::CloudEvents).await;
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
            // `name` is the address callers use (`namespace.name` outside
            // the home namespace).
            json!({
                "namespace": f.key().namespace,
                "name": f.name(),
                "desired": status.desired,
                "starting": status.starting,
                "ready": status.load.ready,
                "draining": status.load.draining,
                "inFlight": status.load.in_flight,
                "queued": status.load.queued,
                "asyncPending": gw.async_pending(f),
                "invocations": status.invocations,
            })
        })
        .collect();
    axum::Json(json!({ "functions": functions })).into_response()
}

/// `GET /v1/usage`: what each function used since the gateway started, in
/// Lambda's billing terms, and the idle time the platform spent on it.
async fn usage<G: Ingress>(State(gw): Gw<G>) -> Response {
    let functions: Vec<Value> = gw
        .functions()
        .iter()
        .map(|f| {
            let mut v = serde_json::to_value(f.usage()).unwrap_or_else(|_| json!({}));
            v["namespace"] = json!(f.key().namespace);
            v["name"] = json!(f.name());
            v["memoryMiB"] = json!(f.spec().memory_mib);
            v
        })
        .collect();
    axum::Json(json!({ "functions": functions })).into_response()
}

/// Dead letters per page unless `MaxItems` asks for fewer (Lambda's list
/// calls answer 50); never more than [`DEAD_LETTER_PAGE_MAX_ITEMS`].
pub const DEAD_LETTER_PAGE_ITEMS: usize = 50;
/// Most dead letters on one page.
pub const DEAD_LETTER_PAGE_MAX_ITEMS: usize = 1000;
/// About the most bytes of one page (at least one letter is always sent).
pub const DEAD_LETTER_PAGE_BYTES: usize = 8 * 1024 * 1024;

/// `GET /v1/dead-letters[?function=][&MaxItems=][&Marker=]`: one page,
/// oldest first, with `nextMarker` when more follow. The page shares the
/// letters' bytes with the ring; its JSON is held against the budget until sent.
async fn dead_letters<G: Ingress>(State(gw): Gw<G>, RawQuery(query): RawQuery) -> Response {
    match dead_letter_page(&*gw, query.as_deref()).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn dead_letter_page(
    gw: &impl Ingress,
    query: Option<&str>,
) -> Result<Response, GatewayError> {
    let param =
        |upper: &str, lower: &str| query_param(query, upper).or_else(|| query_param(query, lower));
    let max_items = match param("MaxItems", "maxItems") {
        None => DEAD_LETTER_PAGE_ITEMS,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=DEAD_LETTER_PAGE_MAX_ITEMS).contains(n))
            .ok_or_else(|| {
                GatewayError::InvalidParameter(format!(
                    "MaxItems must be a whole number from 1 to {DEAD_LETTER_PAGE_MAX_ITEMS}."
                ))
            })?,
    };
    let after = match param("Marker", "marker") {
        None => None,
        Some(v) => Some(v.parse::<u64>().map_err(|_| {
            GatewayError::InvalidParameter("Marker is not one this gateway gave out.".into())
        })?),
    };
    let request = PageRequest {
        function: query_param(query, "function"),
        after,
        max_items,
        max_bytes: DEAD_LETTER_PAGE_BYTES,
    };
    // The page's JSON is about its letters' size; reserve it before writing it.
    let page = gw.dead_letters(&request).await?;
    let mut held = gw.reserve(page.size(), Purpose::Listing)?;
    let body = Bytes::from(serde_json::to_vec(&page).unwrap_or_default());
    drop(page);
    held.shrink_to(body.len());
    let mut r = HeldBody::body(body, (held, SharedHold::default())).into_response();
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}

/// What `POST /v1/dead-letters/redrive` takes.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RedriveRequest {
    function: String,
    #[serde(default)]
    request_id: Option<String>,
}

/// Most bytes of a redrive request.
const REDRIVE_BODY_LIMIT: usize = 64 * 1024;

/// `POST /v1/dead-letters/redrive` with `{"function": NAME}` (all of its
/// dead letters) or `{"function": NAME, "requestId": ID}` (one): stores
/// them again as new events (same request id, attempts and age starting
/// over) and removes them from the dead letters. Answers `{"redriven": N}`.
async fn redrive<G: Ingress>(State(gw): Gw<G>, headers: HeaderMap, body: Body) -> Response {
    let run = async {
        let body = read_body(&headers, body, REDRIVE_BODY_LIMIT).await?;
        let request: RedriveRequest = serde_json::from_slice(&body).map_err(|e| {
            GatewayError::InvalidParameter(format!(
                "The body must be {{\"function\": NAME}} or {{\"function\": NAME, \"requestId\": ID}}: {e}"
            ))
        })?;
        if request.function.is_empty() || request.request_id.as_deref() == Some("") {
            return Err(GatewayError::InvalidParameter(
                "function and requestId must not be empty.".into(),
            ));
        }
        let (name, _) = parse_function_name(&request.function);
        gw.redrive(&name, request.request_id.as_deref()).await
    };
    match run.await {
        Ok(n) => axum::Json(json!({ "redriven": n })).into_response(),
        Err(e) => e.into_response(),
    }
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
            _: &Forwarded,
        ) -> Result<InvocationResult, GatewayError> {
            Err(GatewayError::ShuttingDown)
        }
        fn reserve(&self, bytes: usize, purpose: Purpose) -> Result<Reservation, GatewayError> {
            Ok(crate::budget::MemoryBudget::new(usize::MAX).try_reserve(bytes, purpose)?)
        }
        fn has_async_room(&self, _: &FunctionEntry) -> bool {
            false
        }
        async fn enqueue(
            &self,
            _: &Arc<FunctionEntry>,
            _: Bytes,
            _: Reservation,
            _: String,
            _: TriggerKind,
            _: Forwarded,
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
        async fn dead_letters(&self, _: &PageRequest) -> Result<DeadLetterList, GatewayError> {
            Ok(DeadLetterList::empty())
        }
        async fn redrive(&self, name: &str, _: Option<&str>) -> Result<usize, GatewayError> {
            Err(GatewayError::not_found(name))
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

    #[tokio::test]
    async fn redrive_answers_in_lambdas_error_shape() {
        for (body, code, error_type) in [
            (
                "{}",
                StatusCode::BAD_REQUEST,
                "InvalidParameterValueException",
            ),
            (
                "not json",
                StatusCode::BAD_REQUEST,
                "InvalidParameterValueException",
            ),
            (
                r#"{"function":"f","requestId":""}"#,
                StatusCode::BAD_REQUEST,
                "InvalidParameterValueException",
            ),
            (
                r#"{"function":"f","other":1}"#,
                StatusCode::BAD_REQUEST,
                "InvalidParameterValueException",
            ),
            (
                r#"{"function":"nope"}"#,
                StatusCode::NOT_FOUND,
                "ResourceNotFoundException",
            ),
        ] {
            let req = Request::builder()
                .method("POST")
                .uri("/v1/dead-letters/redrive")
                .body(Body::from(body))
                .expect("request");
            let r = app(Arc::new(Empty)).oneshot(req).await.expect("infallible");
            assert_eq!(r.status(), code, "{body}");
            let bytes = r.into_body().collect().await.expect("body").to_bytes();
            let v: Value = serde_json::from_slice(&bytes).expect("JSON");
            assert_eq!(v["errorType"], error_type, "{body}");
            assert!(v["errorMessage"].is_string(), "{body}");
        }
        // Only on the internal listener, as the dead-letter listing.
        let req = Request::builder()
            .method("POST")
            .uri("/v1/dead-letters/redrive")
            .body(Body::from(r#"{"function":"nope"}"#))
            .expect("request");
        let r = public_app(Arc::new(Empty))
            .oneshot(req)
            .await
            .expect("infallible");
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
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
