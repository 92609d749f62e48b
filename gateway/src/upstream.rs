//! The HTTP client to execution environments (the shim's invoke endpoint),
//! with pooled keep-alive connections, and the classification of its answers.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Path of the shim's invoke endpoint (as the Runtime Interface Emulator).
pub const INVOKE_PATH: &str = "/2015-03-31/functions/function/invocations";
/// Header carrying the gateway's request id to the shim.
pub const REQUEST_ID_HEADER: &str = "x-porchlight-request-id";

/// Largest response accepted from an environment (Lambda's sync limit plus slack).
const MAX_RESPONSE: usize = 6 * 1024 * 1024 + 1024;

/// What an environment answered.
#[derive(Debug, Clone, PartialEq)]
pub enum UpstreamReply {
    /// 200: a result, or a function error when `function_error` is set.
    Done {
        body: Bytes,
        function_error: Option<String>,
        cold_start: bool,
        init_duration_ms: Option<f64>,
    },
    /// 502: init failed; the body is the init error.
    InitError { body: Bytes },
    /// 429: the environment has no room (the gateway's view was stale).
    Busy,
    /// 503: the environment is shutting down.
    ShuttingDown,
    /// 413 from the shim.
    TooLarge,
    /// 400 from the shim (not JSON).
    BadRequest { body: Bytes },
    /// Could not connect: nothing was sent, safe to try elsewhere.
    Unreachable,
    /// The connection broke after the event was sent (the environment died).
    Died,
    /// No answer within the function timeout plus grace.
    TimedOut,
    /// Any other status.
    Unexpected { status: StatusCode },
}

/// A pooled client for environments.
#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for UpstreamClient {
    fn default() -> Self {
        Self::new()
    }
}

impl UpstreamClient {
    /// A client keeping idle connections for 90 s.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .build(connector);
        UpstreamClient { client }
    }

    /// Sends one event to an environment and classifies the answer.
    pub async fn invoke(
        &self,
        base_url: &str,
        request_id: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> UpstreamReply {
        let request = match Request::post(format!("{base_url}{INVOKE_PATH}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(REQUEST_ID_HEADER, request_id)
            .body(Full::new(payload))
        {
            Ok(r) => r,
            Err(_) => return UpstreamReply::Unreachable,
        };
        let fut = async {
            let response = match self.client.request(request).await {
                Ok(r) => r,
                Err(e) if e.is_connect() => return UpstreamReply::Unreachable,
                Err(_) => return UpstreamReply::Died,
            };
            let (parts, body) = response.into_parts();
            let body = match Limited::new(body, MAX_RESPONSE).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return UpstreamReply::Died,
            };
            classify(parts.status, &parts.headers, body)
        };
        tokio::time::timeout(timeout, fut)
            .await
            .unwrap_or(UpstreamReply::TimedOut)
    }

    /// Asks an environment whether its init finished (`GET <base>/ready`).
    pub async fn readiness(&self, base_url: &str) -> Readiness {
        let Ok(uri) = format!("{base_url}/ready").parse::<http::Uri>() else {
            return Readiness::NotYet;
        };
        let Ok(req) = Request::get(uri).body(Full::new(Bytes::new())) else {
            return Readiness::NotYet;
        };
        let fut = async {
            let r = self.client.request(req).await.ok()?;
            let status = r.status();
            let body = Limited::new(r.into_body(), 64 * 1024)
                .collect()
                .await
                .ok()?
                .to_bytes();
            Some((status, body))
        };
        match tokio::time::timeout(Duration::from_secs(1), fut).await {
            Ok(Some((StatusCode::OK, _))) => Readiness::Ready,
            Ok(Some((StatusCode::SERVICE_UNAVAILABLE, body))) => {
                let kind = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| {
                        v.get("errorType")
                            .and_then(|t| t.as_str())
                            .map(str::to_string)
                    });
                match kind.as_deref() {
                    None | Some("NotReady") => Readiness::NotYet,
                    Some("ServiceUnavailableException") => Readiness::ShuttingDown,
                    Some(_) => Readiness::InitFailed,
                }
            }
            _ => Readiness::NotYet,
        }
    }
}

/// What an environment's `/ready` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Init done.
    Ready,
    /// Init failed: invocations get the init error (and trigger a re-init).
    InitFailed,
    /// Still starting, or not answering yet.
    NotYet,
    /// Stopping.
    ShuttingDown,
}

/// Maps the shim's status and headers to a reply (pure, for tests).
pub fn classify(status: StatusCode, headers: &HeaderMap, body: Bytes) -> UpstreamReply {
    match status.as_u16() {
        200 => UpstreamReply::Done {
            function_error: headers
                .get("x-amz-function-error")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            cold_start: headers
                .get("x-porchlight-cold-start")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true")),
            init_duration_ms: headers
                .get("x-porchlight-init-duration-ms")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
            body,
        },
        502 => UpstreamReply::InitError { body },
        429 => UpstreamReply::Busy,
        503 => UpstreamReply::ShuttingDown,
        413 => UpstreamReply::TooLarge,
        400 => UpstreamReply::BadRequest { body },
        _ => UpstreamReply::Unexpected { status },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_shim_answers() {
        let mut h = HeaderMap::new();
        h.insert("x-amz-function-error", "Unhandled".parse().expect("hv"));
        h.insert("x-porchlight-cold-start", "true".parse().expect("hv"));
        match classify(StatusCode::OK, &h, Bytes::from_static(b"{}")) {
            UpstreamReply::Done {
                function_error,
                cold_start,
                ..
            } => {
                assert_eq!(function_error.as_deref(), Some("Unhandled"));
                assert!(cold_start);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            classify(StatusCode::BAD_GATEWAY, &HeaderMap::new(), Bytes::new()),
            UpstreamReply::InitError { .. }
        ));
        assert_eq!(
            classify(
                StatusCode::TOO_MANY_REQUESTS,
                &HeaderMap::new(),
                Bytes::new()
            ),
            UpstreamReply::Busy
        );
    }
}
