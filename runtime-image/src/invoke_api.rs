//! The invoke endpoint (wire-compatible with AWS's Runtime Interface
//! Emulator) and the ops endpoints `/live`, `/ready`, `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use bytes::Bytes;
use porchlight_core::LambdaError;
use porchlight_core::invoke::{
    INVOKE_ROUTE, InvokeReply, LIVE_PATH, LOG_TYPE_TAIL, MAX_PAYLOAD_BYTES, METRICS_PATH,
    NOT_READY_ERROR_TYPE, READY_PATH, SHUTTING_DOWN_ERROR_TYPE, header,
};

use crate::config::Settings;
use crate::environment::{
    Environment, InvokeRequest, Outcome, Phase, RuntimeAnswer, outcome_label,
};
use crate::metrics::{ErrorClass, InvocationOutcome};
use crate::process;
use crate::runtime_api::{BodyError, read_limited};

/// The invoke endpoint and ops endpoints of `env`.
pub fn router(env: Arc<Environment>) -> Router {
    Router::new()
        .route(INVOKE_ROUTE, post(invoke))
        .route(LIVE_PATH, get(|| async { "ok" }))
        .route(READY_PATH, get(ready))
        .route(METRICS_PATH, get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(env)
}

fn json(status: StatusCode, body: Bytes) -> Response {
    (
        status,
        [(http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
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
    let (status, body) = readiness(env.phase());
    json(status, body)
}

/// What `/ready` answers in `phase` (read by the gateway as a
/// `porchlight_core::invoke::Readiness`).
fn readiness(phase: Phase) -> (StatusCode, Bytes) {
    match phase {
        Phase::Ready { .. } => (StatusCode::OK, Bytes::from_static(br#"{"status":"ready"}"#)),
        Phase::InitFailed { error, .. } => (StatusCode::SERVICE_UNAVAILABLE, error.body),
        Phase::Starting { .. } | Phase::Restarting => (
            StatusCode::SERVICE_UNAVAILABLE,
            LambdaError::new(
                NOT_READY_ERROR_TYPE,
                "The runtime has not finished its init",
            )
            .to_json(),
        ),
        Phase::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, shutting_down_error()),
    }
}

fn shutting_down_error() -> Bytes {
    LambdaError::new(SHUTTING_DOWN_ERROR_TYPE, "The environment is shutting down").to_json()
}

async fn metrics(State(env): State<Arc<Environment>>) -> Response {
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        env.metrics.render(),
    )
        .into_response()
}

/// A request id from the gateway is kept if it is a sane token.
fn request_id(headers: &HeaderMap) -> Arc<str> {
    headers
        .get(header::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| Arc::from(uuid::Uuid::new_v4().to_string()), Arc::from)
}

fn trace_id(headers: &HeaderMap) -> String {
    if let Some(given) = headers
        .get(header::TRACE_ID)
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
    let Some(raw) = headers.get(header::CLIENT_CONTEXT) else {
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

fn bad_request(error: &LambdaError) -> InvokeReply {
    InvokeReply::BadRequest {
        body: error.to_json(),
    }
}

/// Validates an invoke request whose body was read as `body`: the event
/// (an empty or blank body is `{}`), its JSON, and the client context. The
/// refusal is the reply to send.
#[expect(
    clippy::result_large_err,
    reason = "a refusal is answered at once; boxing it would only add an allocation"
)]
fn admit(
    request_id: Arc<str>,
    headers: &HeaderMap,
    body: Result<Bytes, BodyError>,
) -> Result<InvokeRequest, InvokeReply> {
    let event = match body {
        Ok(event) if event.iter().all(u8::is_ascii_whitespace) => Bytes::from_static(b"{}"),
        Ok(event) => event,
        Err(BodyError::TooLarge) => {
            return Err(InvokeReply::TooLarge {
                body: LambdaError::new(
                    "RequestEntityTooLargeException",
                    format!(
                        "Request must be smaller than {MAX_PAYLOAD_BYTES} bytes for the InvokeFunction operation"
                    ),
                )
                .to_json(),
            });
        }
        Err(BodyError::Truncated) => {
            return Err(bad_request(&LambdaError::new(
                "InvalidRequestContentException",
                "The request body could not be read",
            )));
        }
    };
    if serde_json::from_slice::<serde::de::IgnoredAny>(&event).is_err() {
        return Err(bad_request(&LambdaError::new(
            "InvalidRequestContentException",
            "Could not parse request body into json: the event must be valid JSON",
        )));
    }
    let client_context = client_context(headers).map_err(|e| bad_request(&e))?;
    let log_tail = headers
        .get(header::LOG_TYPE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(LOG_TYPE_TAIL.as_bytes()));
    Ok(InvokeRequest {
        request_id,
        event,
        trace_id: trace_id(headers),
        client_context,
        log_tail,
    })
}

/// The response carrying `reply`, with the headers every reply carries.
fn respond(reply: InvokeReply, request_id: &str, environment_id: &str) -> Response {
    let (status, encoded, body) = reply.encode();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    // Content type, request id and environment come first on the wire, then
    // the reply's own headers.
    if let Some(content_type) = encoded.get(http::header::CONTENT_TYPE) {
        headers.insert(http::header::CONTENT_TYPE, content_type.clone());
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(HeaderName::from_static(header::REQUEST_ID), v);
    }
    if let Ok(v) = HeaderValue::from_str(environment_id) {
        headers.insert(HeaderName::from_static(header::ENVIRONMENT), v);
    }
    for (name, value) in &encoded {
        if name != http::header::CONTENT_TYPE {
            headers.insert(name.clone(), value.clone());
        }
    }
    response
}

/// A request refused before it reached the environment.
fn reject(env: &Environment, request_id: &str, reply: InvokeReply, class: ErrorClass) -> Response {
    env.metrics.invocation(InvocationOutcome::Rejected);
    env.metrics.error(class);
    respond(reply, request_id, &env.settings.environment_id)
}

async fn invoke(State(env): State<Arc<Environment>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let request_id = request_id(&parts.headers);
    if env.is_shutting_down() {
        let reply = InvokeReply::ShuttingDown {
            body: shutting_down_error(),
        };
        return reject(&env, &request_id, reply, ErrorClass::ShuttingDown);
    }
    let body = read_limited(&parts.headers, body).await;
    let invoke_request = match admit(request_id.clone(), &parts.headers, body) {
        Ok(invoke_request) => invoke_request,
        Err(reply) => return reject(&env, &request_id, reply, ErrorClass::InvalidRequest),
    };

    // The invocation runs in a task of its own, so that its timeout, its
    // answer and its REPORT line happen even if the caller goes away.
    let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
    let task_env = env.clone();
    tokio::spawn(async move {
        let result = task_env.invoke(invoke_request.clone()).await;
        let label = outcome_label(&result.outcome);
        if let Some(class) = error_class(&result.outcome) {
            task_env.metrics.error(class);
        }
        let mut reply = reply_for(
            result.outcome,
            &invoke_request.request_id,
            &task_env.settings,
        );
        if let Some(init) = result.cold_start {
            reply = reply.with_cold_start(init.as_secs_f64() * 1000.0);
        }
        if let Some(duration) = result.duration {
            reply = reply.with_duration(duration.as_secs_f64() * 1000.0);
        }
        let end_and_report = |env: &Environment| {
            result.duration.map(|duration| {
                end_lines(env, &invoke_request.request_id, duration, result.cold_start)
            })
        };
        // The log tail ends with END and REPORT, so they are written before
        // the answer; otherwise after it, off the caller's path.
        let mut lines = None;
        if let Some(mut tail) = task_env.take_log_tail(&invoke_request.request_id) {
            lines = end_and_report(&task_env);
            for line in lines.iter().flatten() {
                tail.push_line(line.as_bytes());
            }
            let text = tail.into_text();
            reply = reply.with_log_result(base64::engine::general_purpose::STANDARD.encode(text));
        }
        let _ = reply_tx.send(reply);
        task_env.metrics.invocation(label);
        if let Some(duration) = result.duration {
            task_env
                .metrics
                .invocation_duration
                .observe(duration.as_secs_f64());
            if result.cold_start.is_some() {
                task_env.metrics.cold_starts.inc();
            }
        }
        if task_env.logs.prints_platform_lines() {
            for line in lines.or_else(|| end_and_report(&task_env)).iter().flatten() {
                task_env.logs.platform_line(line);
            }
        }
    });
    let reply = reply_rx.await.unwrap_or_else(|_| InvokeReply::Unexpected {
        status: StatusCode::INTERNAL_SERVER_ERROR.as_u16(),
        body: LambdaError::new("ServiceException", "The invocation ended without an answer")
            .to_json(),
    });
    respond(reply, &request_id, &env.settings.environment_id)
}

/// The `errors_total` class of an outcome, if it is an error the invoke side
/// counts (init errors are counted when the init fails).
fn error_class(outcome: &Outcome) -> Option<ErrorClass> {
    match outcome {
        Outcome::Answer(RuntimeAnswer::Response { .. }) | Outcome::InitError(_) => None,
        Outcome::Answer(RuntimeAnswer::Error(error)) => {
            Some(ErrorClass::of_error_type(&error.error_type))
        }
        Outcome::Answer(RuntimeAnswer::ResponseTooLarge) => Some(ErrorClass::ResponseTooLarge),
        Outcome::Answer(RuntimeAnswer::Exited { .. }) => Some(ErrorClass::RuntimeExit),
        Outcome::Timeout => Some(ErrorClass::Timeout),
        Outcome::Throttled => Some(ErrorClass::Throttled),
        Outcome::ShuttingDown => Some(ErrorClass::ShuttingDown),
        Outcome::DuplicateRequestId => Some(ErrorClass::InvalidRequest),
    }
}

/// The reply to an invocation of `request_id` that ended with `outcome`.
fn reply_for(outcome: Outcome, request_id: &str, settings: &Settings) -> InvokeReply {
    let unhandled = |error: LambdaError| InvokeReply::unhandled(error.to_json());
    match outcome {
        Outcome::Answer(RuntimeAnswer::Response { body, content_type }) => InvokeReply::ok(
            body,
            content_type.and_then(|ct| ct.to_str().ok().map(str::to_owned)),
        ),
        Outcome::Answer(RuntimeAnswer::Error(error)) => InvokeReply::unhandled(error.body),
        Outcome::Answer(RuntimeAnswer::ResponseTooLarge) => unhandled(LambdaError::new(
            "Function.ResponseSizeTooLarge",
            format!(
                "Response payload size exceeded maximum allowed payload size ({MAX_PAYLOAD_BYTES} bytes)."
            ),
        )),
        // The runtime is gone or about to be killed: the next event waits
        // for a new init, which the gateway is told so that it prefers a
        // warm environment.
        Outcome::Answer(RuntimeAnswer::Exited { status }) => unhandled(LambdaError::new(
            "Runtime.ExitError",
            format!("RequestId: {request_id} Error: Runtime exited with error: {status}"),
        ))
        .with_reinit(),
        Outcome::Timeout => unhandled(LambdaError::new(
            "Sandbox.Timeout",
            settings.timeout_message(),
        ))
        .with_reinit(),
        Outcome::InitError(error) => InvokeReply::InitError {
            body: porchlight_core::error::fill_request_id(error.body, request_id),
        },
        Outcome::Throttled => InvokeReply::Busy {
            body: LambdaError::new(
                "TooManyRequestsException",
                format!(
                    "Rate Exceeded. The environment already runs {} invocation(s) at once",
                    settings.concurrency
                ),
            )
            .to_json(),
        },
        Outcome::ShuttingDown => InvokeReply::ShuttingDown {
            body: shutting_down_error(),
        },
        Outcome::DuplicateRequestId => bad_request(&LambdaError::new(
            "InvalidRequestContentException",
            "An invocation with this X-Porchlight-Request-Id is already in flight",
        )),
    }
}

/// Lambda's `END` and `REPORT` lines.
fn end_lines(
    env: &Environment,
    request_id: &str,
    duration: Duration,
    cold_start: Option<Duration>,
) -> [String; 2] {
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
    [
        format!("END RequestId: {request_id}"),
        format!(
            "REPORT RequestId: {request_id}\tDuration: {ms:.2} ms\tBilled Duration: {billed} ms\tMemory Size: {memory} MB\tMax Memory Used: {used} MB{init}"
        ),
    ]
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use http_body_util::BodyExt as _;
    use serde_json::Value;
    use tower::ServiceExt as _;

    use super::*;
    use crate::config::Config;
    use crate::error::normalise_error;

    fn settings() -> Settings {
        Config::try_parse_from([
            "porchlight-runtime",
            "--runtime",
            "provided",
            "--environment-id",
            "env-test",
            "--concurrency",
            "2",
            "--timeout-seconds",
            "1.5",
        ])
        .unwrap()
        .validate()
        .unwrap()
    }

    fn error_type(body: &[u8]) -> String {
        let v: Value = serde_json::from_slice(body).unwrap();
        v["errorType"].as_str().unwrap().to_owned()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn admitted(pairs: &[(&'static str, &str)], body: &'static [u8]) -> InvokeRequest {
        admit(
            Arc::from("r-1"),
            &headers(pairs),
            Ok(Bytes::from_static(body)),
        )
        .expect("admitted")
    }

    fn refused(pairs: &[(&'static str, &str)], body: Result<Bytes, BodyError>) -> InvokeReply {
        admit(Arc::from("r-1"), &headers(pairs), body).expect_err("refused")
    }

    #[test]
    fn admit_takes_the_event_trace_and_client_context() {
        let request = admitted(&[(header::TRACE_ID, "Root=1-abc")], br#"{"a":1}"#);
        assert_eq!(&*request.request_id, "r-1");
        assert_eq!(&request.event[..], br#"{"a":1}"#);
        assert_eq!(request.trace_id, "Root=1-abc");
        assert_eq!(request.client_context, None);

        let context = base64::engine::general_purpose::STANDARD.encode(r#"{"custom":{"k":"v"}}"#);
        let request = admitted(&[(header::CLIENT_CONTEXT, &context)], b"[]");
        assert_eq!(
            request.client_context.as_deref(),
            Some(r#"{"custom":{"k":"v"}}"#)
        );
        assert!(
            request.trace_id.starts_with("Root=1-"),
            "{}",
            request.trace_id
        );
    }

    #[test]
    fn admit_turns_a_blank_body_into_an_empty_object() {
        assert_eq!(&admitted(&[], b"").event[..], b"{}");
        assert_eq!(&admitted(&[], b" \n\t").event[..], b"{}");
    }

    #[test]
    fn admit_refuses_what_lambda_refuses() {
        let too_large = refused(&[], Err(BodyError::TooLarge));
        assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            error_type(too_large.body()),
            "RequestEntityTooLargeException"
        );

        for reply in [
            refused(&[], Err(BodyError::Truncated)),
            refused(&[], Ok(Bytes::from_static(b"{not json"))),
            refused(
                &[(header::CLIENT_CONTEXT, "not base64!")],
                Ok(Bytes::from_static(b"{}")),
            ),
            refused(
                &[(
                    header::CLIENT_CONTEXT,
                    &base64::engine::general_purpose::STANDARD.encode("not json"),
                )],
                Ok(Bytes::from_static(b"{}")),
            ),
        ] {
            assert_eq!(reply.status(), StatusCode::BAD_REQUEST, "{reply:?}");
            assert_eq!(error_type(reply.body()), "InvalidRequestContentException");
        }
    }

    /// Status, `X-Amz-Function-Error`, `Retry-After`, and the body's errorType.
    fn shape(reply: &InvokeReply) -> (u16, Option<String>, Option<String>, Option<String>) {
        let (status, headers, body) = reply.clone().encode();
        let text = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
        let body_type = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("errorType")?.as_str().map(str::to_owned));
        (
            status.as_u16(),
            text(header::FUNCTION_ERROR),
            text(http::header::RETRY_AFTER.as_str()),
            body_type,
        )
    }

    fn shape_of(outcome: Outcome) -> (u16, Option<String>, Option<String>, Option<String>) {
        shape(&reply_for(outcome, "r-1", &settings()))
    }

    fn some(s: &str) -> Option<String> {
        Some(s.to_owned())
    }

    #[test]
    fn a_response_is_passed_through_with_its_content_type() {
        let reply = reply_for(
            Outcome::Answer(RuntimeAnswer::Response {
                body: Bytes::from_static(b"hello"),
                content_type: Some(HeaderValue::from_static("text/plain")),
            }),
            "r-1",
            &settings(),
        );
        let (status, headers, body) = reply.encode();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[http::header::CONTENT_TYPE], "text/plain");
        assert!(!headers.contains_key(header::FUNCTION_ERROR));
        assert_eq!(&body[..], b"hello");

        let reply = reply_for(
            Outcome::Answer(RuntimeAnswer::Response {
                body: Bytes::from_static(b"{}"),
                content_type: None,
            }),
            "r-1",
            &settings(),
        );
        let (_, headers, _) = reply.encode();
        assert_eq!(headers[http::header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn function_failures_are_200_unhandled() {
        let handler_error = normalise_error(
            br#"{"errorType":"ValueError","errorMessage":"bad"}"#,
            None,
            "Function.Unknown",
        );
        assert_eq!(
            shape_of(Outcome::Answer(RuntimeAnswer::Error(handler_error))),
            (200, some("Unhandled"), None, some("ValueError"))
        );
        assert_eq!(
            shape_of(Outcome::Answer(RuntimeAnswer::ResponseTooLarge)),
            (
                200,
                some("Unhandled"),
                None,
                some("Function.ResponseSizeTooLarge")
            )
        );
        assert_eq!(
            shape_of(Outcome::Timeout),
            (200, some("Unhandled"), None, some("Sandbox.Timeout"))
        );
        let crash = reply_for(
            Outcome::Answer(RuntimeAnswer::Exited {
                status: "exit status 3".into(),
            }),
            "r-9",
            &settings(),
        );
        assert_eq!(
            shape(&crash),
            (200, some("Unhandled"), None, some("Runtime.ExitError"))
        );
        let message: Value = serde_json::from_slice(crash.body()).unwrap();
        assert_eq!(
            message["errorMessage"],
            "RequestId: r-9 Error: Runtime exited with error: exit status 3"
        );
        let timeout = reply_for(Outcome::Timeout, "r-1", &settings());
        let message: Value = serde_json::from_slice(timeout.body()).unwrap();
        assert_eq!(message["errorMessage"], "Task timed out after 1.50 seconds");
        // Both end their runtime; an answer does not.
        let reinit = |r: &InvokeReply| matches!(r, InvokeReply::Done { reinit: true, .. });
        assert!(reinit(&timeout) && reinit(&crash));
        let handled = reply_for(
            Outcome::Answer(RuntimeAnswer::Response {
                body: Bytes::from_static(b"1"),
                content_type: None,
            }),
            "r-2",
            &settings(),
        );
        assert!(!reinit(&handled));
    }

    #[test]
    fn refusals_keep_their_statuses() {
        let init = normalise_error(
            b"boom",
            Some("Runtime.ImportModuleError"),
            "Runtime.Unknown",
        );
        assert_eq!(
            shape_of(Outcome::InitError(init)),
            (502, None, None, some("Runtime.ImportModuleError"))
        );
        assert_eq!(
            shape_of(Outcome::Throttled),
            (429, None, some("1"), some("TooManyRequestsException"))
        );
        assert_eq!(
            shape_of(Outcome::ShuttingDown),
            (503, None, some("1"), some(SHUTTING_DOWN_ERROR_TYPE))
        );
        assert_eq!(
            shape_of(Outcome::DuplicateRequestId),
            (400, None, None, some("InvalidRequestContentException"))
        );
    }

    #[test]
    fn only_invoke_side_errors_are_classified() {
        let error = |t: &str| normalise_error(b"{}", Some(t), "Function.Unknown");
        let cases = [
            (
                Outcome::Answer(RuntimeAnswer::Response {
                    body: Bytes::new(),
                    content_type: None,
                }),
                None,
            ),
            (Outcome::InitError(error("Runtime.Unknown")), None),
            (
                Outcome::Answer(RuntimeAnswer::Error(error("ValueError"))),
                Some(ErrorClass::Function),
            ),
            (
                Outcome::Answer(RuntimeAnswer::Error(error("Runtime.Custom"))),
                Some(ErrorClass::Runtime),
            ),
            (
                Outcome::Answer(RuntimeAnswer::ResponseTooLarge),
                Some(ErrorClass::ResponseTooLarge),
            ),
            (
                Outcome::Answer(RuntimeAnswer::Exited { status: "x".into() }),
                Some(ErrorClass::RuntimeExit),
            ),
            (Outcome::Timeout, Some(ErrorClass::Timeout)),
            (Outcome::Throttled, Some(ErrorClass::Throttled)),
            (Outcome::ShuttingDown, Some(ErrorClass::ShuttingDown)),
            (
                Outcome::DuplicateRequestId,
                Some(ErrorClass::InvalidRequest),
            ),
        ];
        for (outcome, class) in cases {
            assert_eq!(error_class(&outcome), class, "{outcome:?}");
        }
    }

    #[test]
    fn respond_adds_the_environment_s_headers_in_wire_order() {
        let reply = InvokeReply::unhandled(Bytes::from_static(b"{}")).with_cold_start(12.0);
        let response = respond(reply, "r-1", "env-1");
        let names: Vec<&str> = response.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "content-type",
                header::REQUEST_ID,
                header::ENVIRONMENT,
                header::FUNCTION_ERROR,
                header::COLD_START,
                header::INIT_DURATION_MS,
            ]
        );
        assert_eq!(response.headers()[header::INIT_DURATION_MS], "12.000");

        let busy = respond(
            InvokeReply::Busy {
                body: Bytes::from_static(b"{}"),
            },
            "r-2",
            "env-1",
        );
        assert_eq!(busy.status(), StatusCode::TOO_MANY_REQUESTS);
        let names: Vec<&str> = busy.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "content-type",
                header::REQUEST_ID,
                header::ENVIRONMENT,
                "retry-after",
            ]
        );
        assert_eq!(busy.headers()[header::REQUEST_ID], "r-2");
        assert_eq!(busy.headers()[header::ENVIRONMENT], "env-1");
    }

    #[test]
    fn readiness_bodies_are_the_ones_the_gateway_reads() {
        use porchlight_core::invoke::Readiness;
        let init = normalise_error(
            b"boom",
            Some("Runtime.ImportModuleError"),
            "Runtime.Unknown",
        );
        let cases = [
            (Phase::Ready { generation: 1 }, Readiness::Ready),
            (
                Phase::InitFailed {
                    generation: 1,
                    error: init,
                    reported: false,
                },
                Readiness::InitFailed,
            ),
            (
                Phase::Starting {
                    generation: 1,
                    since: std::time::Instant::now(),
                },
                Readiness::NotYet,
            ),
            (Phase::Restarting, Readiness::NotYet),
            (Phase::ShuttingDown, Readiness::ShuttingDown),
        ];
        for (phase, expected) in cases {
            let (status, body) = readiness(phase.clone());
            assert_eq!(Readiness::decode(status, &body), expected, "{phase:?}");
        }
    }

    async fn call(
        router: Router,
        path: &str,
        pairs: &[(&str, &str)],
        body: &'static [u8],
    ) -> Response {
        let mut request = Request::builder().method("POST").uri(path);
        for (name, value) in pairs {
            request = request.header(*name, *value);
        }
        router
            .oneshot(request.body(Body::from(body)).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_stopping_environment_refuses_with_retry_after() {
        let env = Environment::new(settings());
        env.begin_shutdown();
        let response = call(
            router(env),
            porchlight_core::invoke::INVOKE_PATH,
            &[(header::REQUEST_ID, "gw-1")],
            b"{}",
        )
        .await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "1");
        assert_eq!(response.headers()[header::REQUEST_ID], "gw-1");
        assert_eq!(response.headers()[header::ENVIRONMENT], "env-test");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(error_type(&body), SHUTTING_DOWN_ERROR_TYPE);
    }

    #[tokio::test]
    async fn a_bad_event_is_refused_before_the_runtime_sees_it() {
        let env = Environment::new(settings());
        let response = call(
            router(env.clone()),
            porchlight_core::invoke::INVOKE_PATH,
            &[],
            b"{not json",
        )
        .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(response.headers().contains_key(header::REQUEST_ID));
        assert_eq!(env.admitted(), 0);
    }
}
