//! The AWS Lambda Runtime API (2018-06-01) served on loopback to one runtime
//! process (one generation of the environment).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use porchlight_core::LambdaError;
use porchlight_core::invoke::MAX_PAYLOAD_BYTES;

use crate::environment::{ApiRefusal, Environment, RuntimeAnswer};
use crate::error::normalise_error;

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
        .method_not_allowed_fallback(method_not_allowed)
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

async fn method_not_allowed() -> Response {
    json(
        StatusCode::METHOD_NOT_ALLOWED,
        LambdaError::new(
            "MethodNotAllowed",
            "This Runtime API endpoint does not take this method",
        )
        .to_json(),
    )
}

/// The `{id}` of a route. One that is not UTF-8 once percent-decoded
/// (`%FF`) names no invocation: `InvalidRequestID`, in Lambda's shape,
/// rather than axum's plain-text rejection.
fn request_id_param(id: Result<Path<String>, PathRejection>) -> Result<String, ApiRefusal> {
    id.map(|Path(id)| id)
        .map_err(|_| ApiRefusal::InvalidRequestId)
}

/// Why a request body could not be read.
pub enum BodyError {
    TooLarge,
    Truncated,
}

/// Reads a body of at most [`MAX_PAYLOAD_BYTES`]. A larger one is read to
/// its end and discarded (up to [`DRAIN_BYTES`] within [`DRAIN_FOR`]), so
/// that a client still sending sees the 413 instead of a broken pipe.
pub async fn read_limited(headers: &HeaderMap, body: Body) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_PAYLOAD_BYTES as u64) {
        drain(body).await;
        return Err(BodyError::TooLarge);
    }
    let mut body = body;
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(BodyError::Truncated);
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        len += data.len();
        if len > MAX_PAYLOAD_BYTES {
            drain(body).await;
            return Err(BodyError::TooLarge);
        }
        chunks.push(data);
    }
    // One chunk (the usual case) is passed on without a copy.
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            let mut joined = BytesMut::with_capacity(len);
            for c in chunks {
                joined.extend_from_slice(&c);
            }
            joined.freeze()
        }
    })
}

/// Most bytes of a refused body read and discarded.
pub const DRAIN_BYTES: usize = 4 * MAX_PAYLOAD_BYTES;
/// Longest a refused body is read.
pub const DRAIN_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads and discards what is left of a refused body, within bounds.
async fn drain(mut body: Body) {
    let discard = async {
        let mut drained = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                drained += data.len();
                if drained > DRAIN_BYTES {
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_FOR, discard).await;
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
    id: Result<Path<String>, PathRejection>,
    request: Request,
) -> Response {
    let id = match request_id_param(id) {
        Ok(id) => id,
        Err(r) => return refusal(r),
    };
    if let Err(r) = state.env.check_answerable(state.generation, &id) {
        return refusal(r);
    }
    // What the runtime wrote before it answered belongs to the invocation.
    state.env.flush_output_of(&id).await;
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
    id: Result<Path<String>, PathRejection>,
    request: Request,
) -> Response {
    let id = match request_id_param(id) {
        Ok(id) => id,
        Err(r) => return refusal(r),
    };
    if let Err(r) = state.env.check_answerable(state.generation, &id) {
        return refusal(r);
    }
    // What the runtime wrote before it answered belongs to the invocation.
    state.env.flush_output_of(&id).await;
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::Request as HttpRequest;
    use clap::Parser as _;
    use tower::ServiceExt as _;

    use super::*;
    use crate::config::Config;
    use crate::environment::{InvokeRequest, Outcome};

    fn environment(concurrency: &str) -> Arc<Environment> {
        let settings = Config::try_parse_from([
            "porchlight-runtime",
            "--runtime",
            "provided",
            "--environment-id",
            "env-test",
            "--concurrency",
            concurrency,
        ])
        .unwrap()
        .validate()
        .unwrap();
        Environment::new(settings)
    }

    /// An environment whose init is done, and the Runtime API of its runtime.
    fn ready(concurrency: &str) -> (Arc<Environment>, Router, u64) {
        let env = environment(concurrency);
        let generation = env.force_ready();
        let api = router(env.clone(), generation);
        (env, api, generation)
    }

    async fn call(
        router: &Router,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (StatusCode, HeaderMap, serde_json::Value) {
        let mut request = HttpRequest::builder().method(method).uri(path);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = router
            .clone()
            .oneshot(request.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            headers,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    fn invoke(env: &Arc<Environment>, id: &str) -> tokio::task::JoinHandle<Outcome> {
        let env = env.clone();
        let request = InvokeRequest {
            request_id: Arc::from(id),
            event: Bytes::from_static(br#"{"hello":"world"}"#),
            trace_id: "Root=1-00000000-000000000000000000000000".into(),
            client_context: None,
            log_tail: false,
        };
        tokio::spawn(async move { env.invoke(request).await.outcome })
    }

    const NEXT: &str = "/2018-06-01/runtime/invocation/next";

    #[tokio::test]
    async fn next_hands_over_the_event_with_lambdas_headers() {
        let (env, api, _) = ready("1");
        let invocation = invoke(&env, "req-1");
        let (status, headers, body) = call(&api, "GET", NEXT, &[], vec![]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, serde_json::json!({"hello": "world"}));
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers["lambda-runtime-aws-request-id"], "req-1");
        assert!(
            headers["lambda-runtime-deadline-ms"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                > 0
        );
        assert_eq!(
            headers["lambda-runtime-invoked-function-arn"],
            "arn:aws:lambda:us-east-1:000000000000:function:function"
        );
        assert!(headers.contains_key("lambda-runtime-trace-id"));

        let (status, _, body) = call(
            &api,
            "POST",
            "/2018-06-01/runtime/invocation/req-1/response",
            &[],
            b"\"done\"".to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(body, serde_json::json!({"status": "OK"}));
        match invocation.await.unwrap() {
            Outcome::Answer(RuntimeAnswer::Response { body, .. }) => {
                assert_eq!(&body[..], b"\"done\"")
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn unknown_stale_and_second_responses_are_invalid_request_ids() {
        let (env, api, generation) = ready("1");
        let (status, _, body) = call(
            &api,
            "POST",
            "/2018-06-01/runtime/invocation/nope/response",
            &[],
            b"{}".to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["errorType"], "InvalidRequestID");
        assert_eq!(body["errorMessage"], "Invalid request ID");

        let invocation = invoke(&env, "req-2");
        // Queued but not handed over yet: not answerable.
        tokio::task::yield_now().await;
        let _ = call(&api, "GET", NEXT, &[], vec![]).await;
        let path = "/2018-06-01/runtime/invocation/req-2/response";
        assert_eq!(
            call(&api, "POST", path, &[], b"1".to_vec()).await.0,
            StatusCode::ACCEPTED
        );
        let (status, _, body) = call(&api, "POST", path, &[], b"2".to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "second response");
        assert_eq!(body["errorType"], "InvalidRequestID");
        let (status, _, _) = call(
            &api,
            "POST",
            "/2018-06-01/runtime/invocation/req-2/error",
            &[],
            b"{}".to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "error after the response");
        assert!(matches!(
            invocation.await.unwrap(),
            Outcome::Answer(RuntimeAnswer::Response { .. })
        ));

        // A runtime of another generation cannot answer.
        let invocation = invoke(&env, "req-3");
        let _ = call(&api, "GET", NEXT, &[], vec![]).await;
        let stale = router(env.clone(), generation + 7);
        let (status, _, _) = call(
            &stale,
            "POST",
            "/2018-06-01/runtime/invocation/req-3/response",
            &[],
            b"1".to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let _ = call(
            &api,
            "POST",
            "/2018-06-01/runtime/invocation/req-3/response",
            &[],
            b"1".to_vec(),
        )
        .await;
        invocation.await.unwrap();
    }

    #[tokio::test]
    async fn a_second_concurrent_next_is_an_invalid_state_transition() {
        let (env, api, _) = ready("1");
        let waiting = {
            let api = api.clone();
            tokio::spawn(async move { call(&api, "GET", NEXT, &[], vec![]).await })
        };
        // Bounded wait until the first /next is parked.
        for _ in 0..1000 {
            if !waiting.is_finished() && env_waiting(&env) {
                break;
            }
            tokio::task::yield_now().await;
        }
        let (status, _, body) = call(&api, "GET", NEXT, &[], vec![]).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["errorType"], "InvalidStateTransition");
        // The parked /next still gets the next event.
        let invocation = invoke(&env, "req-4");
        let (status, headers, _) = waiting.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["lambda-runtime-aws-request-id"], "req-4");
        // With the event outstanding, another /next is refused too.
        assert_eq!(
            call(&api, "GET", NEXT, &[], vec![]).await.0,
            StatusCode::FORBIDDEN
        );
        let _ = call(
            &api,
            "POST",
            "/2018-06-01/runtime/invocation/req-4/response",
            &[],
            b"1".to_vec(),
        )
        .await;
        invocation.await.unwrap();
    }

    fn env_waiting(env: &Environment) -> bool {
        env.next_waiters() > 0
    }

    #[tokio::test]
    async fn concurrency_allows_as_many_nexts() {
        let (env, api, _) = ready("2");
        let a = invoke(&env, "a");
        let b = invoke(&env, "b");
        let (s1, h1, _) = call(&api, "GET", NEXT, &[], vec![]).await;
        let (s2, h2, _) = call(&api, "GET", NEXT, &[], vec![]).await;
        assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
        assert_ne!(
            h1["lambda-runtime-aws-request-id"],
            h2["lambda-runtime-aws-request-id"]
        );
        // A third event is beyond the environment's concurrency.
        let c = invoke(&env, "c");
        assert!(matches!(c.await.unwrap(), Outcome::Throttled));
        for id in ["a", "b"] {
            let path = format!("/2018-06-01/runtime/invocation/{id}/response");
            assert_eq!(
                call(&api, "POST", &path, &[], b"1".to_vec()).await.0,
                StatusCode::ACCEPTED
            );
        }
        a.await.unwrap();
        b.await.unwrap();
    }

    #[tokio::test]
    async fn oversized_bodies_are_refused() {
        let (env, api, _) = ready("1");
        let invocation = invoke(&env, "big");
        let _ = call(&api, "GET", NEXT, &[], vec![]).await;
        let big = vec![b'x'; MAX_PAYLOAD_BYTES + 1];
        let (status, _, body) = call(
            &api,
            "POST",
            "/2018-06-01/runtime/invocation/big/response",
            &[],
            big.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["errorType"], "RequestEntityTooLarge");
        assert!(matches!(
            invocation.await.unwrap(),
            Outcome::Answer(RuntimeAnswer::ResponseTooLarge)
        ));
        let (status, _, _) = call(&api, "POST", "/2018-06-01/runtime/init/error", &[], big).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        // Exactly at the limit is fine.
        let invocation = invoke(&env, "edge");
        let _ = call(&api, "GET", NEXT, &[], vec![]).await;
        let edge = vec![b'x'; MAX_PAYLOAD_BYTES];
        let (status, _, _) = call(
            &api,
            "POST",
            "/2018-06-01/runtime/invocation/edge/response",
            &[],
            edge,
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        invocation.await.unwrap();
    }

    #[tokio::test]
    async fn errors_with_and_without_the_error_type_header() {
        let (env, api, _) = ready("1");

        // awslambdaric: no header, a full JSON body.
        let invocation = invoke(&env, "py");
        let _ = call(&api, "GET", NEXT, &[], vec![]).await;
        let body = br#"{"errorMessage":"bad thing","errorType":"ValueError","requestId":"py","stackTrace":["x"]}"#;
        let (status, _, _) = call(
            &api,
            "POST",
            "/2018-06-01/runtime/invocation/py/error",
            &[("content-type", "application/json")],
            body.to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        match invocation.await.unwrap() {
            Outcome::Answer(RuntimeAnswer::Error(e)) => {
                assert_eq!(e.error_type, "ValueError");
                let v: serde_json::Value = serde_json::from_slice(&e.body).unwrap();
                assert_eq!(v["stackTrace"][0], "x");
            }
            other => panic!("unexpected {other:?}"),
        }

        // A bare runtime: the header and no body.
        let invocation = invoke(&env, "sh");
        let _ = call(&api, "GET", NEXT, &[], vec![]).await;
        let (status, _, _) = call(
            &api,
            "POST",
            "/2018-06-01/runtime/invocation/sh/error",
            &[("lambda-runtime-function-error-type", "Runtime.Custom")],
            vec![],
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        match invocation.await.unwrap() {
            Outcome::Answer(RuntimeAnswer::Error(e)) => {
                assert_eq!(e.error_type, "Runtime.Custom");
                let v: serde_json::Value = serde_json::from_slice(&e.body).unwrap();
                assert_eq!(v["errorMessage"], "");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn init_error_is_kept_while_starting_and_refused_after() {
        let env = environment("1");
        let generation = env.begin_generation();
        let api = router(env.clone(), generation);
        let body = br#"{"errorMessage":"Unable to import module 'x'","errorType":"Runtime.ImportModuleError","stackTrace":[]}"#;
        let (status, _, _) = call(
            &api,
            "POST",
            "/2018-06-01/runtime/init/error",
            &[(
                "lambda-runtime-function-error-type",
                "Runtime.ImportModuleError",
            )],
            body.to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert!(env.init_error_posted(generation));
        let error = env.init_failed(
            generation,
            LambdaError::new("Runtime.ExitError", "exit status 1"),
        );
        assert_eq!(error.error_type, "Runtime.ImportModuleError");
        // The first invocation gets the init error at once.
        let outcome = tokio::time::timeout(Duration::from_secs(5), invoke(&env, "first"))
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(outcome, Outcome::InitError(e) if e.error_type == "Runtime.ImportModuleError")
        );

        let (_, api, _) = ready("1");
        let (status, _, body) = call(
            &api,
            "POST",
            "/2018-06-01/runtime/init/error",
            &[],
            b"{}".to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["errorType"], "InvalidStateTransition");
    }

    /// Found by `src/fuzz.rs`: a wrong method got an empty 405.
    #[tokio::test]
    async fn get_on_invocation_req_1_error_gets_a_lambda_shaped_405() {
        let (_, api, _) = ready("1");
        let (status, _, body) = call(
            &api,
            "GET",
            "/2018-06-01/runtime/invocation/req-1/error",
            &[],
            vec![],
        )
        .await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body["errorType"], "MethodNotAllowed");
        assert!(body["errorMessage"].is_string());
    }

    /// Found by `src/fuzz.rs`: an id that is not UTF-8 once decoded got
    /// axum's plain-text 400.
    #[tokio::test]
    async fn response_for_id_percent_ff_is_an_invalid_request_id() {
        let (_, api, _) = ready("1");
        for kind in ["response", "error"] {
            let path = format!("/2018-06-01/runtime/invocation/%FF/{kind}");
            let (status, _, body) = call(&api, "POST", &path, &[], b"{}".to_vec()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{kind}");
            assert_eq!(body["errorType"], "InvalidRequestID", "{kind}");
        }
    }

    #[tokio::test]
    async fn unknown_paths_get_json_errors() {
        let (_, api, _) = ready("1");
        let (status, _, body) =
            call(&api, "GET", "/2020-01-01/extension/event/next", &[], vec![]).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body["errorType"].is_string());
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_invocation_times_out_and_asks_for_a_kill() {
        let (env, api, generation) = ready("1");
        let invocation = invoke(&env, "slow");
        let _ = call(&api, "GET", NEXT, &[], vec![]).await;
        // Paused time: the 3 s timeout elapses without waiting.
        assert!(matches!(invocation.await.unwrap(), Outcome::Timeout));
        assert!(env.take_kill_request(generation).is_some());
        let (status, _, _) = call(
            &api,
            "POST",
            "/2018-06-01/runtime/invocation/slow/response",
            &[],
            b"1".to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "a late response is stale");
    }
}
