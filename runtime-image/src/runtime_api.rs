//! The AWS Lambda Runtime API (2018-06-01) served on loopback to one runtime
//! process (one generation of the environment).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::config::MAX_PAYLOAD_BYTES;
use crate::environment::{ApiRefusal, Environment, RuntimeAnswer};
use crate::error::{LambdaError, normalise_error};

const ERROR_TYPE_HEADER: &str = "lambda-runtime-function-error-type";

#[derive(Clone)]
struct ApiState {
    env: Arc<Environment>,
    generation: u64,
}

/// The Runtime API of the runtime of `generation`.
pub fn router(env: Arc<Environment>, generation: u64) -> Router {
    Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(response),
        )
        .route(
            "/2018-06-01/runtime/invocation/{id}/error",
            post(invocation_error),
        )
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .route("/2018-06-01/ping", get(|| async { "pong" }))
        .fallback(not_found)
        .with_state(ApiState { env, generation })
}

fn json(status: StatusCode, body: Bytes) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn accepted() -> Response {
    json(
        StatusCode::ACCEPTED,
        Bytes::from_static(br#"{"status":"OK"}"#),
    )
}

fn refusal(refusal: ApiRefusal) -> Response {
    match refusal {
        ApiRefusal::InvalidRequestId => json(
            StatusCode::BAD_REQUEST,
            LambdaError::new("InvalidRequestID", "Invalid request ID").to_json(),
        ),
        ApiRefusal::InvalidStateTransition => json(
            StatusCode::FORBIDDEN,
            LambdaError::new(
                "InvalidStateTransition",
                "State transition failed for runtime: the request is not valid in the current state",
            )
            .to_json(),
        ),
    }
}

fn too_large() -> Response {
    json(
        StatusCode::PAYLOAD_TOO_LARGE,
        LambdaError::new(
            "RequestEntityTooLarge",
            format!("Exceeded maximum allowed payload size ({MAX_PAYLOAD_BYTES} bytes)."),
        )
        .to_json(),
    )
}

async fn not_found() -> Response {
    json(
        StatusCode::NOT_FOUND,
        LambdaError::new("NotFound", "No such Runtime API endpoint").to_json(),
    )
}

/// Why a request body could not be read.
pub enum BodyError {
    TooLarge,
    Truncated,
}

/// Reads a body of at most [`MAX_PAYLOAD_BYTES`].
pub async fn read_limited(headers: &HeaderMap, body: Body) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_PAYLOAD_BYTES as u64) {
        return Err(BodyError::TooLarge);
    }
    match Limited::new(body, MAX_PAYLOAD_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(BodyError::TooLarge),
        Err(_) => Err(BodyError::Truncated),
    }
}

fn truncated() -> Response {
    json(
        StatusCode::BAD_REQUEST,
        LambdaError::new("TruncatedHTTPRequest", "The request body could not be read").to_json(),
    )
}

async fn next(State(state): State<ApiState>) -> Response {
    match state.env.next_event(state.generation).await {
        Ok(event) => {
            let mut response = Response::new(Body::from(event.event));
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if let Ok(v) = HeaderValue::from_str(&event.request_id) {
                headers.insert("lambda-runtime-aws-request-id", v);
            }
            headers.insert(
                "lambda-runtime-deadline-ms",
                HeaderValue::from(event.deadline_ms),
            );
            if let Ok(v) = HeaderValue::from_str(&state.env.settings.function_arn) {
                headers.insert("lambda-runtime-invoked-function-arn", v);
            }
            if let Ok(v) = HeaderValue::from_str(&event.trace_id) {
                headers.insert("lambda-runtime-trace-id", v);
            }
            if let Some(cc) = event
                .client_context
                .as_deref()
                .and_then(|c| HeaderValue::from_str(c).ok())
            {
                headers.insert("lambda-runtime-client-context", cc);
            }
            response
        }
        Err(r) => refusal(r),
    }
}

async fn response(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    if let Err(r) = state.env.check_answerable(state.generation, &id) {
        return refusal(r);
    }
    let (parts, body) = request.into_parts();
    match read_limited(&parts.headers, body).await {
        Ok(body) => {
            let content_type = parts.headers.get(header::CONTENT_TYPE).cloned();
            match state.env.answer(
                state.generation,
                &id,
                RuntimeAnswer::Response { body, content_type },
            ) {
                Ok(()) => accepted(),
                Err(r) => refusal(r),
            }
        }
        Err(BodyError::TooLarge) => {
            let _ = state
                .env
                .answer(state.generation, &id, RuntimeAnswer::ResponseTooLarge);
            too_large()
        }
        Err(BodyError::Truncated) => truncated(),
    }
}

fn error_type_header(headers: &HeaderMap) -> Option<&str> {
    headers.get(ERROR_TYPE_HEADER).and_then(|v| v.to_str().ok())
}

async fn invocation_error(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    if let Err(r) = state.env.check_answerable(state.generation, &id) {
        return refusal(r);
    }
    let (parts, body) = request.into_parts();
    let body = match read_limited(&parts.headers, body).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => return too_large(),
        Err(BodyError::Truncated) => return truncated(),
    };
    // An X-Ray `errorCause` (content type
    // application/vnd.aws.lambda.error.cause+json) is dropped by normalisation.
    let error = normalise_error(&body, error_type_header(&parts.headers), "Function.Unknown");
    match state
        .env
        .answer(state.generation, &id, RuntimeAnswer::Error(error))
    {
        Ok(()) => accepted(),
        Err(r) => refusal(r),
    }
}

async fn init_error(State(state): State<ApiState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = match read_limited(&parts.headers, body).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => return too_large(),
        Err(BodyError::Truncated) => return truncated(),
    };
    let error = normalise_error(&body, error_type_header(&parts.headers), "Runtime.Unknown");
    match state.env.post_init_error(state.generation, error) {
        Ok(()) => accepted(),
        Err(r) => refusal(r),
    }
}
