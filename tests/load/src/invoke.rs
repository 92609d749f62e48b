//! One invocation through the gateway's Lambda Invoke API, and what we record about it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderMap;
use tokio::time::Instant;

use crate::error::Result;
use crate::sign::Signer;

use porchlight_core::invoke::header;

/// Response header with the gateway's request id.
pub const REQUEST_ID_HEADER: &str = header::AMZN_REQUEST_ID;
/// Response header set when the handler returned an error.
pub const FUNCTION_ERROR_HEADER: &str = header::FUNCTION_ERROR;
/// Response header naming the environment that served the invocation.
pub const ENVIRONMENT_HEADER: &str = header::ENVIRONMENT;
/// Response header set to `true` when the invocation paid a cold start.
pub const COLD_START_HEADER: &str = header::COLD_START;
/// Response header with the cold start's init duration in milliseconds.
pub const INIT_DURATION_HEADER: &str = header::INIT_DURATION_MS;
/// Response header with how long the invocation queued in the gateway.
pub const WAITED_MS_HEADER: &str = header::WAITED_MS;
/// Response header saying what it queued for (`cold-start`: an
/// environment's init finished meanwhile).
pub const WAITED_FOR_HEADER: &str = header::WAITED_FOR;

/// How an invocation ended, from the caller's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// 2xx and no function error.
    Ok,
    /// 2xx with `X-Amz-Function-Error`: the platform worked, the handler failed.
    FunctionError,
    /// 429: the gateway shed the request.
    Throttled,
    /// Any other HTTP status.
    HttpError,
    /// No complete answer within `--timeout`.
    Timeout,
    /// Connection refused, reset, or similar.
    TransportError,
    /// Never sent: the open loop already had `--max-in-flight` requests outstanding.
    DroppedByClient,
}

impl Outcome {
    /// The gateway answered with a 2xx (the invocation ran).
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Ok | Outcome::FunctionError)
    }

    /// A failure that is neither a throttle nor a client-side drop.
    pub fn is_error(self) -> bool {
        matches!(
            self,
            Outcome::FunctionError
                | Outcome::HttpError
                | Outcome::Timeout
                | Outcome::TransportError
        )
    }
}

/// Everything recorded about one invocation. Times are offsets from the start of the run.
#[derive(Clone, Debug, PartialEq)]
pub struct InvocationRecord {
    /// Index of the function in the run's function list.
    pub function: usize,
    /// When the schedule meant to send it.
    pub intended: Duration,
    /// When it was actually sent (`None` if dropped by the client).
    pub sent: Option<Duration>,
    /// From the intended send time to the end of the response (`None` if dropped).
    pub latency: Option<Duration>,
    /// HTTP status, 0 if there was none.
    pub status: u16,
    /// How it ended.
    pub outcome: Outcome,
    /// The invocation paid a cold start.
    pub cold_start: bool,
    /// Init duration reported for a cold start.
    pub init_duration_ms: Option<f64>,
    /// Not a cold start itself, but it queued while an environment of the
    /// function finished its init: it waited for a cold start.
    pub waited_for_cold_start: bool,
    /// How long it queued in the gateway for an environment.
    pub waited_ms: Option<f64>,
    /// Environment that served it.
    pub environment: Option<String>,
    /// Request id from the gateway.
    pub request_id: Option<String>,
}

impl InvocationRecord {
    /// A request the open loop could not send.
    pub fn dropped(function: usize, intended: Duration) -> InvocationRecord {
        InvocationRecord {
            function,
            intended,
            sent: None,
            latency: None,
            status: 0,
            outcome: Outcome::DroppedByClient,
            cold_start: false,
            init_duration_ms: None,
            waited_for_cold_start: false,
            waited_ms: None,
            environment: None,
            request_id: None,
        }
    }

    /// When the response ended, if it did.
    pub fn completed(&self) -> Option<Duration> {
        self.latency.map(|l| self.intended + l)
    }
}

/// Sends invocations to one gateway.
#[derive(Clone, Debug)]
pub struct Invoker {
    client: reqwest::Client,
    urls: Vec<String>,
    /// Signs each invoke when the gateway requires SigV4.
    signer: Option<Arc<Signer>>,
}

impl Invoker {
    /// An invoker for `functions` behind the gateway at `target`
    /// (for example `http://127.0.0.1:8080`).
    pub fn new(
        target: &str,
        functions: &[String],
        timeout: Duration,
        pool: usize,
    ) -> Result<Invoker> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(pool)
            .tcp_nodelay(true)
            .build()?;
        let base = target.trim_end_matches('/');
        let urls = functions
            .iter()
            .map(|name| {
                format!(
                    "{base}{}",
                    porchlight_core::invoke::function_invoke_path(name)
                )
            })
            .collect();
        Ok(Invoker {
            client,
            urls,
            signer: None,
        })
    }

    /// Signs every invoke with `signer` (SigV4, service `lambda`).
    pub fn signed(mut self, signer: Option<Signer>) -> Invoker {
        self.signer = signer.map(Arc::new);
        self
    }

    /// Invokes function `function` with `event`. `intended` is when the schedule
    /// meant to send it; `start` is the start of the run. Latency counts from
    /// `intended`, so a late send shows up as latency.
    pub async fn invoke(
        &self,
        function: usize,
        event: Bytes,
        start: Instant,
        intended: Duration,
    ) -> InvocationRecord {
        let sent = start.elapsed();
        let mut record = InvocationRecord {
            function,
            intended,
            sent: Some(sent),
            latency: None,
            status: 0,
            outcome: Outcome::TransportError,
            cold_start: false,
            init_duration_ms: None,
            waited_for_cold_start: false,
            waited_ms: None,
            environment: None,
            request_id: None,
        };
        let url = &self.urls[function];
        let mut request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(signer) = &self.signer {
            match signer.headers("POST", url, &[("content-type", "application/json")], &event) {
                Ok(headers) => {
                    for (k, v) in headers {
                        request = request.header(k, v);
                    }
                }
                Err(e) => {
                    // Counted as a transport error: nothing was sent.
                    eprintln!("porchlight-load: cannot sign the request: {e}");
                    record.latency = Some(start.elapsed().saturating_sub(intended));
                    return record;
                }
            }
        }
        let response = request.body(event).send().await;
        let outcome = match response {
            Ok(response) => {
                let status = response.status();
                record.status = status.as_u16();
                let function_error = read_headers(response.headers(), &mut record);
                // The invocation ends when its whole response has arrived.
                match response.bytes().await {
                    Ok(_) if status.is_success() => {
                        if function_error {
                            Outcome::FunctionError
                        } else {
                            Outcome::Ok
                        }
                    }
                    Ok(_) if status.as_u16() == 429 => Outcome::Throttled,
                    Ok(_) => Outcome::HttpError,
                    Err(e) if e.is_timeout() => Outcome::Timeout,
                    Err(_) => Outcome::TransportError,
                }
            }
            Err(e) if e.is_timeout() => Outcome::Timeout,
            Err(_) => Outcome::TransportError,
        };
        record.outcome = outcome;
        record.latency = Some(start.elapsed().saturating_sub(intended));
        record
    }
}

/// Copies the Porchlight headers into `record`; returns whether the handler failed.
fn read_headers(headers: &HeaderMap, record: &mut InvocationRecord) -> bool {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    record.request_id = text(REQUEST_ID_HEADER);
    record.environment = text(ENVIRONMENT_HEADER);
    record.cold_start = text(COLD_START_HEADER).is_some_and(|v| v.eq_ignore_ascii_case("true"));
    record.init_duration_ms = text(INIT_DURATION_HEADER).and_then(|v| v.parse().ok());
    record.waited_ms = text(WAITED_MS_HEADER).and_then(|v| v.parse().ok());
    record.waited_for_cold_start = !record.cold_start
        && text(WAITED_FOR_HEADER)
            .is_some_and(|v| v == porchlight_core::invoke::WAITED_FOR_COLD_START);
    headers.contains_key(FUNCTION_ERROR_HEADER)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn recorded(pairs: &[(&'static str, &'static str)]) -> InvocationRecord {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.insert(*k, HeaderValue::from_static(v));
        }
        let mut record = InvocationRecord::dropped(0, Duration::ZERO);
        read_headers(&headers, &mut record);
        record
    }

    #[test]
    fn a_caller_that_queued_behind_a_cold_start_is_told_apart() {
        let waited = recorded(&[
            (WAITED_MS_HEADER, "412.5"),
            (WAITED_FOR_HEADER, "cold-start"),
        ]);
        assert!(waited.waited_for_cold_start && !waited.cold_start);
        assert_eq!(waited.waited_ms, Some(412.5));
        // Its own cold start is counted as one, not as a wait.
        let cold = recorded(&[
            (COLD_START_HEADER, "true"),
            (WAITED_MS_HEADER, "400.0"),
            (WAITED_FOR_HEADER, "cold-start"),
        ]);
        assert!(cold.cold_start && !cold.waited_for_cold_start);
        let busy = recorded(&[
            (WAITED_MS_HEADER, "3.0"),
            (WAITED_FOR_HEADER, "environment"),
        ]);
        assert!(!busy.waited_for_cold_start && !busy.cold_start);
        assert!(!recorded(&[]).waited_for_cold_start);
    }
}
