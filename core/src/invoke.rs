//! The invoke contract between the gateway and an environment's shim.
//!
//! The shim serves an invoke endpoint that is wire-compatible with AWS's
//! Runtime Interface Emulator; the gateway is its client. Both sides build
//! and read the exchange through this module: the shim encodes an
//! [`InvokeReply`] with [`InvokeReply::encode`], the gateway decodes the
//! status, headers and body with [`InvokeReply::decode`]. A round-trip test
//! proves the two agree for every reply.
//!
//! | status | reply | meaning |
//! |---|---|---|
//! | 200 | [`InvokeReply::Done`] | the function answered; with `X-Amz-Function-Error` it failed (handler error, timeout, crash); with `X-Amz-Log-Result` the log tail asked for by `X-Amz-Log-Type: Tail` |
//! | 502 | [`InvokeReply::InitError`] | init failed; the body is the init error |
//! | 429 | [`InvokeReply::Busy`] | the environment already runs its concurrency |
//! | 503 | [`InvokeReply::ShuttingDown`] | the environment is stopping |
//! | 413 | [`InvokeReply::TooLarge`] | the event is over [`MAX_PAYLOAD_BYTES`] |
//! | 400 | [`InvokeReply::BadRequest`] | the event is not JSON, or its headers are malformed |
//! | other | [`InvokeReply::Unexpected`] | anything else (the shim never sends it) |

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// Path of the shim's invoke endpoint (as the Runtime Interface Emulator).
pub const INVOKE_PATH: &str = "/2015-03-31/functions/function/invocations";

/// The invoke route as the shim and the gateway register it (any function name).
pub const INVOKE_ROUTE: &str = "/2015-03-31/functions/{name}/invocations";

/// The Lambda Invoke API path of one function (the gateway's public path).
pub fn function_invoke_path(name: &str) -> String {
    format!("/2015-03-31/functions/{name}/invocations")
}

/// Readiness of an environment: 200 once init is done, 503 otherwise.
pub const READY_PATH: &str = "/ready";

/// Liveness of a process.
pub const LIVE_PATH: &str = "/live";

/// Prometheus metrics of a process.
pub const METRICS_PATH: &str = "/metrics";

/// Largest synchronous event or response, as in Lambda and its emulator
/// (`6 * 1024 * 1024 + 100` bytes).
pub const MAX_PAYLOAD_BYTES: usize = 6 * 1024 * 1024 + 100;

/// The value of [`header::LOG_TYPE`] that asks for the invocation's log tail.
pub const LOG_TYPE_TAIL: &str = "Tail";

/// How much of an invocation's log [`header::LOG_RESULT`] carries: its last
/// 4 KB, as Lambda's `--log-type Tail`.
pub const LOG_TAIL_BYTES: usize = 4 * 1024;

/// Header names, lower case as HTTP/2 and hyper carry them.
pub mod header {
    /// The invocation's request id (gateway to shim, and back on every reply).
    pub const REQUEST_ID: &str = "x-porchlight-request-id";
    /// Which environment ran the event.
    pub const ENVIRONMENT: &str = "x-porchlight-environment";
    /// `true` when the event waited for an init.
    pub const COLD_START: &str = "x-porchlight-cold-start";
    /// How long that init took, in milliseconds.
    pub const INIT_DURATION_MS: &str = "x-porchlight-init-duration-ms";
    /// How long the invocation ran in the environment, in milliseconds
    /// (what Lambda's REPORT line calls Duration; billing rounds it up).
    pub const DURATION_MS: &str = "x-porchlight-duration-ms";
    /// `true` when the environment restarts its runtime after this
    /// invocation (a timeout, a crash): the next event it takes waits for
    /// a new init.
    pub const REINIT: &str = "x-porchlight-reinit";
    /// `Unhandled` when the function failed (Lambda's header).
    pub const FUNCTION_ERROR: &str = "x-amz-function-error";
    /// X-Ray trace header, passed to the runtime as `_X_AMZN_TRACE_ID`.
    pub const TRACE_ID: &str = "x-amzn-trace-id";
    /// W3C trace context (the gateway's invoke span, to the environment).
    pub const TRACEPARENT: &str = "traceparent";
    /// Base64 JSON client context of the Invoke API.
    pub const CLIENT_CONTEXT: &str = "x-amz-client-context";
    /// `RequestResponse`, `Event` or `DryRun` (Invoke API).
    pub const INVOCATION_TYPE: &str = "x-amz-invocation-type";
    /// `Tail` asks for the log tail (Invoke API, and gateway to shim).
    pub const LOG_TYPE: &str = "x-amz-log-type";
    /// Base64 log tail in the Invoke API's answer (and in the shim's).
    pub const LOG_RESULT: &str = "x-amz-log-result";
    /// Gateway to caller: how long the invocation queued in the gateway for
    /// a slot on an environment, in milliseconds (only when it queued).
    pub const WAITED_MS: &str = "x-porchlight-waited-ms";
    /// Gateway to caller, with [`WAITED_MS`]: [`super::WAITED_FOR_COLD_START`]
    /// when an environment of the function finished its init while the
    /// invocation queued (it waited for a cold start, though not its own),
    /// else [`super::WAITED_FOR_ENVIRONMENT`].
    pub const WAITED_FOR: &str = "x-porchlight-waited-for";
    /// The version that ran (Invoke API).
    pub const EXECUTED_VERSION: &str = "x-amz-executed-version";
    /// AWS's request id header on every Invoke API answer.
    pub const AMZN_REQUEST_ID: &str = "x-amzn-requestid";
    /// The error type of an API error (AWS's JSON protocol).
    pub const AMZN_ERROR_TYPE: &str = "x-amzn-errortype";
}

/// [`header::WAITED_FOR`]: an environment finished its init while the
/// invocation queued.
pub const WAITED_FOR_COLD_START: &str = "cold-start";
/// [`header::WAITED_FOR`]: the invocation queued for a busy environment.
pub const WAITED_FOR_ENVIRONMENT: &str = "environment";

/// The value of [`header::FUNCTION_ERROR`] for a function that failed.
pub const UNHANDLED: &str = "Unhandled";

/// `Retry-After` seconds on 429 and 503.
pub const RETRY_AFTER_SECONDS: &str = "1";

/// What an environment answers to one invocation.
#[derive(Debug, Clone, PartialEq)]
pub enum InvokeReply {
    /// 200: the function's result, or its error when `function_error` is set.
    Done {
        /// The runtime's response body.
        body: Bytes,
        /// The content type the runtime gave (default `application/json`).
        content_type: Option<String>,
        /// `Some("Unhandled")` when the function failed.
        function_error: Option<String>,
        /// On a cold start, the init's duration in milliseconds.
        cold_start_ms: Option<f64>,
        /// How long the invocation ran, in milliseconds.
        duration_ms: Option<f64>,
        /// The base64 tail of the invocation's log, when it was asked for
        /// with [`header::LOG_TYPE`] `Tail`.
        log_result: Option<String>,
        /// The environment restarts its runtime after this invocation
        /// ([`header::REINIT`]).
        reinit: bool,
    },
    /// 502: init failed; the body is the init error.
    InitError {
        /// The init error, in Lambda's shape.
        body: Bytes,
    },
    /// 429: no room in this environment.
    Busy {
        /// The error body.
        body: Bytes,
    },
    /// 503: the environment is shutting down.
    ShuttingDown {
        /// The error body.
        body: Bytes,
    },
    /// 413: the event is too large.
    TooLarge {
        /// The error body.
        body: Bytes,
    },
    /// 400: the event is not JSON, or a header is malformed.
    BadRequest {
        /// The error body.
        body: Bytes,
    },
    /// Any other status.
    Unexpected {
        /// The status.
        status: u16,
        /// The body.
        body: Bytes,
    },
}

impl InvokeReply {
    /// A successful answer.
    pub fn ok(body: Bytes, content_type: Option<String>) -> Self {
        InvokeReply::Done {
            body,
            content_type,
            function_error: None,
            cold_start_ms: None,
            duration_ms: None,
            log_result: None,
            reinit: false,
        }
    }

    /// A function error (handler error, timeout, crash): 200 + `Unhandled`.
    pub fn unhandled(body: Bytes) -> Self {
        InvokeReply::Done {
            body,
            content_type: None,
            function_error: Some(UNHANDLED.to_string()),
            cold_start_ms: None,
            duration_ms: None,
            log_result: None,
            reinit: false,
        }
    }

    /// Marks a `Done` reply as a cold start whose init took `init_ms`.
    pub fn with_cold_start(mut self, init_ms: f64) -> Self {
        if let InvokeReply::Done { cold_start_ms, .. } = &mut self {
            *cold_start_ms = Some(init_ms);
        }
        self
    }

    /// Records how long a `Done` reply's invocation ran.
    pub fn with_duration(mut self, ms: f64) -> Self {
        if let InvokeReply::Done { duration_ms, .. } = &mut self {
            *duration_ms = Some(ms);
        }
        self
    }

    /// Marks a `Done` reply as the last of its runtime: the environment
    /// re-initialises before its next event.
    pub fn with_reinit(mut self) -> Self {
        if let InvokeReply::Done { reinit, .. } = &mut self {
            *reinit = true;
        }
        self
    }

    /// Attaches the base64 log tail to a `Done` reply.
    pub fn with_log_result(mut self, tail_base64: String) -> Self {
        if let InvokeReply::Done { log_result, .. } = &mut self {
            *log_result = Some(tail_base64);
        }
        self
    }

    /// The HTTP status that carries this reply.
    pub fn status(&self) -> StatusCode {
        match self {
            InvokeReply::Done { .. } => StatusCode::OK,
            InvokeReply::InitError { .. } => StatusCode::BAD_GATEWAY,
            InvokeReply::Busy { .. } => StatusCode::TOO_MANY_REQUESTS,
            InvokeReply::ShuttingDown { .. } => StatusCode::SERVICE_UNAVAILABLE,
            InvokeReply::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            InvokeReply::BadRequest { .. } => StatusCode::BAD_REQUEST,
            InvokeReply::Unexpected { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
        }
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        match self {
            InvokeReply::Done { body, .. }
            | InvokeReply::InitError { body }
            | InvokeReply::Busy { body }
            | InvokeReply::ShuttingDown { body }
            | InvokeReply::TooLarge { body }
            | InvokeReply::BadRequest { body }
            | InvokeReply::Unexpected { body, .. } => body,
        }
    }

    /// Status, headers and body as the shim sends them. The caller adds the
    /// headers every reply carries ([`header::REQUEST_ID`], [`header::ENVIRONMENT`]).
    pub fn encode(self) -> (StatusCode, HeaderMap, Bytes) {
        let status = self.status();
        let mut headers = HeaderMap::new();
        let content_type = match &self {
            InvokeReply::Done {
                content_type: Some(ct),
                ..
            } => HeaderValue::from_str(ct)
                .unwrap_or_else(|_| HeaderValue::from_static("application/json")),
            _ => HeaderValue::from_static("application/json"),
        };
        headers.insert(http::header::CONTENT_TYPE, content_type);
        if matches!(
            self,
            InvokeReply::Busy { .. } | InvokeReply::ShuttingDown { .. }
        ) {
            headers.insert(
                http::header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        let body = match self {
            InvokeReply::Done {
                body,
                function_error,
                cold_start_ms,
                duration_ms,
                log_result,
                reinit,
                ..
            } => {
                if reinit {
                    headers.insert(
                        HeaderName::from_static(header::REINIT),
                        HeaderValue::from_static("true"),
                    );
                }
                // Full precision: billing rounds it up, and must round the
                // same number the REPORT line does.
                if let Some(v) =
                    duration_ms.and_then(|ms| HeaderValue::from_str(&format!("{ms}")).ok())
                {
                    headers.insert(HeaderName::from_static(header::DURATION_MS), v);
                }
                if let Some(v) = function_error.and_then(|e| HeaderValue::from_str(&e).ok()) {
                    headers.insert(HeaderName::from_static(header::FUNCTION_ERROR), v);
                }
                if let Some(ms) = cold_start_ms {
                    headers.insert(
                        HeaderName::from_static(header::COLD_START),
                        HeaderValue::from_static("true"),
                    );
                    if let Ok(v) = HeaderValue::from_str(&format!("{ms:.3}")) {
                        headers.insert(HeaderName::from_static(header::INIT_DURATION_MS), v);
                    }
                }
                if let Some(v) = log_result.and_then(|t| HeaderValue::from_str(&t).ok()) {
                    headers.insert(HeaderName::from_static(header::LOG_RESULT), v);
                }
                body
            }
            InvokeReply::InitError { body }
            | InvokeReply::Busy { body }
            | InvokeReply::ShuttingDown { body }
            | InvokeReply::TooLarge { body }
            | InvokeReply::BadRequest { body }
            | InvokeReply::Unexpected { body, .. } => body,
        };
        (status, headers, body)
    }

    /// Reads an answer of the shim (the gateway's side of [`InvokeReply::encode`]).
    pub fn decode(status: StatusCode, headers: &HeaderMap, body: Bytes) -> Self {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        match status.as_u16() {
            200 => {
                let cold = text(header::COLD_START).is_some_and(|v| v.eq_ignore_ascii_case("true"));
                let cold_start_ms = cold.then(|| {
                    text(header::INIT_DURATION_MS)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0.0)
                });
                InvokeReply::Done {
                    content_type: text(http::header::CONTENT_TYPE.as_str())
                        .filter(|ct| *ct != "application/json")
                        .map(str::to_string),
                    function_error: text(header::FUNCTION_ERROR).map(str::to_string),
                    cold_start_ms,
                    duration_ms: text(header::DURATION_MS).and_then(|v| v.parse().ok()),
                    log_result: text(header::LOG_RESULT).map(str::to_string),
                    reinit: text(header::REINIT).is_some_and(|v| v.eq_ignore_ascii_case("true")),
                    body,
                }
            }
            502 => InvokeReply::InitError { body },
            429 => InvokeReply::Busy { body },
            503 => InvokeReply::ShuttingDown { body },
            413 => InvokeReply::TooLarge { body },
            400 => InvokeReply::BadRequest { body },
            status => InvokeReply::Unexpected { status, body },
        }
    }
}

/// What an environment's [`READY_PATH`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// 200: init done.
    Ready,
    /// 503 with an init error: invocations get the error (and retry the init).
    InitFailed,
    /// 503 `NotReady`, or no answer yet: still starting.
    NotYet,
    /// 503 `ServiceUnavailableException`: stopping.
    ShuttingDown,
}

/// `errorType` of the 503 body while init has not finished.
pub const NOT_READY_ERROR_TYPE: &str = "NotReady";
/// `errorType` of the 503 body while the environment stops.
pub const SHUTTING_DOWN_ERROR_TYPE: &str = "ServiceUnavailableException";

impl Readiness {
    /// Reads an answer of [`READY_PATH`].
    pub fn decode(status: StatusCode, body: &[u8]) -> Self {
        match status {
            StatusCode::OK => Readiness::Ready,
            StatusCode::SERVICE_UNAVAILABLE => {
                let kind = serde_json::from_slice::<serde_json::Value>(body)
                    .ok()
                    .and_then(|v| v.get("errorType")?.as_str().map(str::to_string));
                match kind.as_deref() {
                    None | Some(NOT_READY_ERROR_TYPE) => Readiness::NotYet,
                    Some(SHUTTING_DOWN_ERROR_TYPE) => Readiness::ShuttingDown,
                    Some(_) => Readiness::InitFailed,
                }
            }
            _ => Readiness::NotYet,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LambdaError;

    fn error(t: &str) -> Bytes {
        LambdaError::new(t, "m").to_json()
    }

    fn every_reply() -> Vec<InvokeReply> {
        vec![
            InvokeReply::ok(Bytes::from_static(b"{\"ok\":1}"), None),
            InvokeReply::ok(Bytes::from_static(b"hi"), Some("text/plain".into())),
            InvokeReply::ok(Bytes::from_static(b"{}"), None)
                .with_cold_start(12.5)
                .with_duration(101.25),
            InvokeReply::ok(Bytes::from_static(b"{}"), None).with_duration(0.5),
            InvokeReply::unhandled(error("ValueError")).with_log_result("U1RBUlQK".into()),
            InvokeReply::unhandled(error("Sandbox.Timeout")).with_reinit(),
            InvokeReply::unhandled(error("Runtime.ExitError")).with_cold_start(3.25),
            InvokeReply::InitError {
                body: error("Runtime.ImportModuleError"),
            },
            InvokeReply::Busy {
                body: error("TooManyRequestsException"),
            },
            InvokeReply::ShuttingDown {
                body: error("ServiceUnavailableException"),
            },
            InvokeReply::TooLarge {
                body: error("RequestEntityTooLargeException"),
            },
            InvokeReply::BadRequest {
                body: error("InvalidRequestContentException"),
            },
            InvokeReply::Unexpected {
                status: 500,
                body: error("ServiceException"),
            },
        ]
    }

    #[test]
    fn every_reply_decodes_to_what_was_encoded() {
        for reply in every_reply() {
            let (status, headers, body) = reply.clone().encode();
            assert_eq!(
                InvokeReply::decode(status, &headers, body),
                reply,
                "{status}"
            );
        }
    }

    #[test]
    fn statuses_are_the_emulator_s() {
        let statuses: Vec<u16> = every_reply().iter().map(|r| r.status().as_u16()).collect();
        assert_eq!(
            statuses,
            [
                200, 200, 200, 200, 200, 200, 200, 502, 429, 503, 413, 400, 500
            ]
        );
        let (_, headers, _) = InvokeReply::Busy { body: Bytes::new() }.encode();
        assert_eq!(headers[http::header::RETRY_AFTER], "1");
        let (_, headers, _) = InvokeReply::unhandled(Bytes::new()).encode();
        assert_eq!(headers[header::FUNCTION_ERROR], "Unhandled");
    }

    #[test]
    fn readiness_reads_the_shim_s_bodies() {
        assert_eq!(Readiness::decode(StatusCode::OK, b""), Readiness::Ready);
        let body = |t: &str| LambdaError::new(t, "x").to_json();
        assert_eq!(
            Readiness::decode(StatusCode::SERVICE_UNAVAILABLE, &body(NOT_READY_ERROR_TYPE)),
            Readiness::NotYet
        );
        assert_eq!(
            Readiness::decode(
                StatusCode::SERVICE_UNAVAILABLE,
                &body(SHUTTING_DOWN_ERROR_TYPE)
            ),
            Readiness::ShuttingDown
        );
        assert_eq!(
            Readiness::decode(
                StatusCode::SERVICE_UNAVAILABLE,
                &body("Runtime.ImportModuleError")
            ),
            Readiness::InitFailed
        );
        assert_eq!(
            Readiness::decode(StatusCode::NOT_FOUND, b""),
            Readiness::NotYet
        );
    }
}
