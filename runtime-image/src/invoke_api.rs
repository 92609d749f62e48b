//! The invoke endpoint (wire-compatible with AWS's Runtime Interface
//! Emulator) and the ops endpoints `/live`, `/ready`, `/metrics`.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use bytes::Bytes;
use porchlight_core::LambdaError;
use porchlight_core::invoke::MAX_PAYLOAD_BYTES;

use crate::environment::{
    Environment, InvokeRequest, Outcome, Phase, RuntimeAnswer, outcome_label,
};
use crate::metrics::{ErrorClass, InvocationOutcome};
use crate::process;
use crate::runtime_api::{BodyError, read_limited};

pub const REQUEST_ID_HEADER: &str = "x-porchlight-request-id";
pub const ENVIRONMENT_HEADER: &str = "x-porchlight-environment";
pub const COLD_START_HEADER: &str = "x-porchlight-cold-start";
pub const INIT_DURATION_HEADER: &str = "x-porchlight-init-duration-ms";
const FUNCTION_ERROR_HEADER: &str = "x-amz-function-error";

/// The invoke endpoint and ops endpoints of `env`.
pub fn router(env: Arc<Environment>) -> Router {
    Router::new()
        .route("/2015-03-31/functions/{name}/invocations", post(invoke))
        .route("/live", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(env)
}

fn json(status: StatusCode, body: Bytes) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn not_found() -> Response {
    json(
        StatusCode::NOT_FOUND,
        LambdaError::new("ResourceNotFoundException", "No such endpoint").to_json(),
    )
}

async fn method_not_allowed() -> Response {
    json(
        StatusCode::METHOD_NOT_ALLOWED,
        LambdaError::new(
            "MethodNotAllowedException",
            "Method not allowed on this endpoint",
        )
        .to_json(),
    )
}

async fn ready(State(env): State<Arc<Environment>>) -> Response {
    match env.phase() {
        Phase::Ready { .. } => json(StatusCode::OK, Bytes::from_static(br#"{"status":"ready"}"#)),
        Phase::InitFailed { error, .. } => json(StatusCode::SERVICE_UNAVAILABLE, error.body),
        Phase::Starting { .. } | Phase::Restarting => json(
            StatusCode::SERVICE_UNAVAILABLE,
            LambdaError::new("NotReady", "The runtime has not finished its init").to_json(),
        ),
        Phase::ShuttingDown => json(
            StatusCode::SERVICE_UNAVAILABLE,
            LambdaError::new(
                "ServiceUnavailableException",
                "The environment is shutting down",
            )
            .to_json(),
        ),
    }
}

async fn metrics(State(env): State<Arc<Environment>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        env.metrics.render(),
    )
        .into_response()
}

/// A request id from the gateway is kept if it is a sane token.
fn request_id(headers: &HeaderMap) -> Arc<str> {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| Arc::from(uuid::Uuid::new_v4().to_string()), Arc::from)
}

fn trace_id(headers: &HeaderMap) -> String {
    if let Some(given) = headers
        .get("x-amzn-trace-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 512)
    {
        return given.to_owned();
    }
    let epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let random = uuid::Uuid::new_v4().simple().to_string();
    let parent = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "Root=1-{epoch:08x}-{};Parent={};Sampled=0",
        &random[..24],
        &parent[..16]
    )
}

/// Decodes `X-Amz-Client-Context` (base64 JSON).
fn client_context(headers: &HeaderMap) -> Result<Option<String>, LambdaError> {
    let Some(raw) = headers.get("x-amz-client-context") else {
        return Ok(None);
    };
    let invalid = || {
        LambdaError::new(
            "InvalidRequestContentException",
            "X-Amz-Client-Context must be base64-encoded JSON",
        )
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(raw.as_bytes())
        .map_err(|_| invalid())?;
    let text = String::from_utf8(decoded).map_err(|_| invalid())?;
    serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(|_| invalid())?;
    if HeaderValue::from_str(&text).is_err() {
        return Err(invalid());
    }
    Ok(Some(text))
}

/// Builds every invoke response, with the environment's headers.
struct Reply {
    status: StatusCode,
    body: Bytes,
    content_type: HeaderValue,
    function_error: bool,
    retry_after: bool,
}

impl Reply {
    fn error(status: StatusCode, error: &LambdaError) -> Self {
        Self {
            status,
            body: error.to_json(),
            content_type: HeaderValue::from_static("application/json"),
            function_error: false,
            retry_after: false,
        }
    }

    fn unhandled(body: Bytes) -> Self {
        Self {
            status: StatusCode::OK,
            body,
            content_type: HeaderValue::from_static("application/json"),
            function_error: true,
            retry_after: false,
        }
    }

    fn into_response(
        self,
        env: &Environment,
        request_id: &str,
        cold_start: Option<std::time::Duration>,
    ) -> Response {
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, self.content_type);
        if let Ok(v) = HeaderValue::from_str(request_id) {
            headers.insert(HeaderName::from_static(REQUEST_ID_HEADER), v);
        }
        if let Ok(v) = HeaderValue::from_str(&env.settings.environment_id) {
            headers.insert(HeaderName::from_static(ENVIRONMENT_HEADER), v);
        }
        if self.function_error {
            headers.insert(
                HeaderName::from_static(FUNCTION_ERROR_HEADER),
                HeaderValue::from_static("Unhandled"),
            );
        }
        if self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Some(init) = cold_start {
            headers.insert(
                HeaderName::from_static(COLD_START_HEADER),
                HeaderValue::from_static("true"),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("{:.3}", init.as_secs_f64() * 1000.0)) {
                headers.insert(HeaderName::from_static(INIT_DURATION_HEADER), v);
            }
        }
        response
    }
}

fn reject(
    env: &Environment,
    request_id: &str,
    status: StatusCode,
    error: LambdaError,
    class: ErrorClass,
) -> Response {
    env.metrics.invocation(InvocationOutcome::Rejected);
    env.metrics.error(class);
    let mut reply = Reply::error(status, &error);
    reply.retry_after = status == StatusCode::SERVICE_UNAVAILABLE;
    reply.into_response(env, request_id, None)
}

async fn invoke(State(env): State<Arc<Environment>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let request_id = request_id(&parts.headers);
    if env.is_shutting_down() {
        return reject(
            &env,
            &request_id,
            StatusCode::SERVICE_UNAVAILABLE,
            LambdaError::new(
                "ServiceUnavailableException",
                "The environment is shutting down",
            ),
            ErrorClass::ShuttingDown,
        );
    }
    let event = match read_limited(&parts.headers, body).await {
        Ok(event) if event.iter().all(u8::is_ascii_whitespace) => Bytes::from_static(b"{}"),
        Ok(event) => event,
        Err(BodyError::TooLarge) => {
            return reject(
                &env,
                &request_id,
                StatusCode::PAYLOAD_TOO_LARGE,
                LambdaError::new(
                    "RequestEntityTooLargeException",
                    format!(
                        "Request must be smaller than {MAX_PAYLOAD_BYTES} bytes for the InvokeFunction operation"
                    ),
                ),
                ErrorClass::InvalidRequest,
            );
        }
        Err(BodyError::Truncated) => {
            return reject(
                &env,
                &request_id,
                StatusCode::BAD_REQUEST,
                LambdaError::new(
                    "InvalidRequestContentException",
                    "The request body could not be read",
                ),
                ErrorClass::InvalidRequest,
            );
        }
    };
    if serde_json::from_slice::<serde::de::IgnoredAny>(&event).is_err() {
        return reject(
            &env,
            &request_id,
            StatusCode::BAD_REQUEST,
            LambdaError::new(
                "InvalidRequestContentException",
                "Could not parse request body into json: the event must be valid JSON",
            ),
            ErrorClass::InvalidRequest,
        );
    }
    let client_context = match client_context(&parts.headers) {
        Ok(cc) => cc,
        Err(e) => {
            return reject(
                &env,
                &request_id,
                StatusCode::BAD_REQUEST,
                e,
                ErrorClass::InvalidRequest,
            );
        }
    };
    let invoke_request = InvokeRequest {
        request_id: request_id.clone(),
        event,
        trace_id: trace_id(&parts.headers),
        client_context,
    };

    // The invocation runs in a task of its own, so that its timeout, its
    // answer and its REPORT line happen even if the caller goes away.
    let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
    let task_env = env.clone();
    tokio::spawn(async move {
        let result = task_env.invoke(invoke_request.clone()).await;
        let label = outcome_label(&result.outcome);
        let reply = reply_for(&task_env, &invoke_request.request_id, result.outcome);
        let _ = reply_tx.send((reply, result.cold_start));
        task_env.metrics.invocation(label);
        if let Some(duration) = result.duration {
            task_env
                .metrics
                .invocation_duration
                .observe(duration.as_secs_f64());
            if result.cold_start.is_some() {
                task_env.metrics.cold_starts.inc();
            }
            report(
                &task_env,
                &invoke_request.request_id,
                duration,
                result.cold_start,
            );
        }
    });
    match reply_rx.await {
        Ok((reply, cold_start)) => reply.into_response(&env, &request_id, cold_start),
        Err(_) => Reply::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &LambdaError::new("ServiceException", "The invocation ended without an answer"),
        )
        .into_response(&env, &request_id, None),
    }
}

fn reply_for(env: &Environment, request_id: &str, outcome: Outcome) -> Reply {
    let metrics = &env.metrics;
    match outcome {
        Outcome::Answer(RuntimeAnswer::Response { body, content_type }) => Reply {
            status: StatusCode::OK,
            body,
            content_type: content_type
                .unwrap_or_else(|| HeaderValue::from_static("application/json")),
            function_error: false,
            retry_after: false,
        },
        Outcome::Answer(RuntimeAnswer::Error(error)) => {
            metrics.error(ErrorClass::of_error_type(&error.error_type));
            Reply::unhandled(error.body)
        }
        Outcome::Answer(RuntimeAnswer::ResponseTooLarge) => {
            metrics.error(ErrorClass::ResponseTooLarge);
            Reply::unhandled(
                LambdaError::new(
                    "Function.ResponseSizeTooLarge",
                    format!("Response payload size exceeded maximum allowed payload size ({MAX_PAYLOAD_BYTES} bytes)."),
                )
                .to_json(),
            )
        }
        Outcome::Answer(RuntimeAnswer::Exited { status }) => {
            metrics.error(ErrorClass::RuntimeExit);
            Reply::unhandled(
                LambdaError::new(
                    "Runtime.ExitError",
                    format!("RequestId: {request_id} Error: Runtime exited with error: {status}"),
                )
                .to_json(),
            )
        }
        Outcome::Timeout => {
            metrics.error(ErrorClass::Timeout);
            Reply::unhandled(
                LambdaError::new("Sandbox.Timeout", env.settings.timeout_message()).to_json(),
            )
        }
        Outcome::InitError(error) => Reply {
            status: StatusCode::BAD_GATEWAY,
            body: error.body,
            content_type: HeaderValue::from_static("application/json"),
            function_error: false,
            retry_after: false,
        },
        Outcome::Throttled => {
            metrics.error(ErrorClass::Throttled);
            let mut reply = Reply::error(
                StatusCode::TOO_MANY_REQUESTS,
                &LambdaError::new(
                    "TooManyRequestsException",
                    format!(
                        "Rate Exceeded. The environment already runs {} invocation(s) at once",
                        env.settings.concurrency
                    ),
                ),
            );
            reply.retry_after = true;
            reply
        }
        Outcome::ShuttingDown => {
            metrics.error(ErrorClass::ShuttingDown);
            let mut reply = Reply::error(
                StatusCode::SERVICE_UNAVAILABLE,
                &LambdaError::new(
                    "ServiceUnavailableException",
                    "The environment is shutting down",
                ),
            );
            reply.retry_after = true;
            reply
        }
        Outcome::DuplicateRequestId => {
            metrics.error(ErrorClass::InvalidRequest);
            Reply::error(
                StatusCode::BAD_REQUEST,
                &LambdaError::new(
                    "InvalidRequestContentException",
                    "An invocation with this X-Porchlight-Request-Id is already in flight",
                ),
            )
        }
    }
}

/// Lambda's `END` and `REPORT` lines.
fn report(
    env: &Environment,
    request_id: &str,
    duration: std::time::Duration,
    cold_start: Option<std::time::Duration>,
) {
    let ms = duration.as_secs_f64() * 1000.0;
    let billed = ms.ceil().max(1.0) as u64;
    let memory = env.settings.config.memory_mib;
    let used = env
        .runtime_leader()
        .and_then(process::max_memory_used_mib)
        .unwrap_or(0);
    let init = cold_start
        .map(|d| format!("\tInit Duration: {:.2} ms", d.as_secs_f64() * 1000.0))
        .unwrap_or_default();
    env.logs
        .stdout_line(&format!("END RequestId: {request_id}"));
    env.logs.stdout_line(&format!(
        "REPORT RequestId: {request_id}\tDuration: {ms:.2} ms\tBilled Duration: {billed} ms\tMemory Size: {memory} MB\tMax Memory Used: {used} MB{init}"
    ));
}
