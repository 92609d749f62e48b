//! The HTTP client to execution environments (the shim's invoke endpoint),
//! with pooled keep-alive connections. The shim's answers are read through
//! the contract in `porchlight_core::invoke`; this module adds only what
//! happens on the way (nothing reached the environment, it died, it went
//! silent).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::Request;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use porchlight_core::invoke::{INVOKE_PATH, InvokeReply, LOG_TYPE_TAIL, READY_PATH, header};

pub use porchlight_core::invoke::Readiness;

use crate::budget::{MemoryBudget, Purpose, SharedHold};

/// Largest response accepted from an environment (Lambda's sync limit plus slack).
const MAX_RESPONSE: usize = 6 * 1024 * 1024 + 1024;

/// What came of sending one event to an environment.
#[derive(Debug, Clone, PartialEq)]
pub enum UpstreamReply {
    /// The environment answered (see [`InvokeReply`] for what each answer means).
    Reply(InvokeReply),
    /// Could not connect: nothing was sent, safe to try elsewhere.
    Unreachable,
    /// The connection broke after the event was sent (the environment died).
    Died,
    /// No answer within the function timeout plus grace.
    TimedOut,
    /// The answer was larger than any the shim sends (a re-serialised error
    /// body, for one): the environment is fine, the answer is not.
    ResponseTooLarge,
    /// The answer did not fit in the gateway's memory budget in time.
    NoRoom,
}

/// What an invocation passes to its environment besides its event and
/// request id: the trace (`X-Amzn-Trace-Id`, and `traceparent` for the
/// gateway's invoke span), the client context, and a log tail asked for.
#[derive(Clone, Debug, Default)]
pub struct PassOn {
    /// `X-Amzn-Trace-Id`.
    pub trace_id: Option<http::HeaderValue>,
    /// `traceparent`.
    pub traceparent: Option<http::HeaderValue>,
    /// `X-Amz-Client-Context` (base64 JSON).
    pub client_context: Option<http::HeaderValue>,
    /// Ask for the invocation's log tail.
    pub log_tail: bool,
}

/// How long an answer waits for room in the memory budget before the
/// caller is refused: answers being sent give theirs back meanwhile.
pub const ANSWER_ROOM_WAIT: Duration = Duration::from_secs(5);

/// A pooled client for environments.
#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<HttpConnector, Full<Bytes>>,
    budget: Option<MemoryBudget>,
    room_wait: Duration,
}

impl Default for UpstreamClient {
    fn default() -> Self {
        Self::new()
    }
}

impl UpstreamClient {
    /// A client keeping idle connections for 90 s; answers are not counted
    /// against any budget.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .build(connector);
        UpstreamClient {
            client,
            budget: None,
            room_wait: ANSWER_ROOM_WAIT,
        }
    }

    /// A client that reserves every answer's bytes in `budget` before it
    /// reads them, waiting up to `room_wait` for room.
    pub fn with_budget(budget: MemoryBudget, room_wait: Duration) -> Self {
        UpstreamClient {
            budget: Some(budget),
            room_wait,
            ..Self::new()
        }
    }

    /// Sends one event to an environment and classifies the answer. The
    /// answer's bytes come back held against the budget, if there is one.
    /// `pass` says what else the environment gets.
    pub async fn invoke(
        &self,
        base_url: &str,
        request_id: &str,
        payload: Bytes,
        timeout: Duration,
        pass: &PassOn,
    ) -> (UpstreamReply, SharedHold) {
        let mut request = Request::post(format!("{base_url}{INVOKE_PATH}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(header::REQUEST_ID, request_id);
        if pass.log_tail {
            request = request.header(header::LOG_TYPE, LOG_TYPE_TAIL);
        }
        for (name, value) in [
            (header::TRACE_ID, &pass.trace_id),
            (header::TRACEPARENT, &pass.traceparent),
            (header::CLIENT_CONTEXT, &pass.client_context),
        ] {
            if let Some(value) = value {
                request = request.header(name, value.clone());
            }
        }
        let request = match request.body(Full::new(payload)) {
            Ok(r) => r,
            Err(_) => return (UpstreamReply::Unreachable, SharedHold::default()),
        };
        let fut = async {
            let response = match self.client.request(request).await {
                Ok(r) => r,
                Err(e) if e.is_connect() => return Err(UpstreamReply::Unreachable),
                Err(_) => return Err(UpstreamReply::Died),
            };
            let (parts, body) = response.into_parts();
            let declared = body.size_hint().exact().map(|n| n as usize);
            let (body, held) = self.read_answer(body, declared).await?;
            Ok((
                UpstreamReply::Reply(InvokeReply::decode(parts.status, &parts.headers, body)),
                held,
            ))
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(reply)) => (reply, SharedHold::default()),
            Err(_) => (UpstreamReply::TimedOut, SharedHold::default()),
        }
    }

    /// Reads an answer, its bytes reserved before they are read: all at once
    /// when the length is declared, frame by frame otherwise.
    async fn read_answer(
        &self,
        mut body: Incoming,
        declared: Option<usize>,
    ) -> Result<(Bytes, SharedHold), UpstreamReply> {
        if declared.is_some_and(|n| n > MAX_RESPONSE) {
            return Err(UpstreamReply::ResponseTooLarge);
        }
        let mut held = match &self.budget {
            Some(budget) => Some(
                budget
                    .reserve_within(declared.unwrap_or(0), Purpose::Sync, self.room_wait)
                    .await
                    .map_err(|_| UpstreamReply::NoRoom)?,
            ),
            None => None,
        };
        let mut buf = BytesMut::with_capacity(declared.unwrap_or(0));
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map_err(|_| UpstreamReply::Died)?.into_data() else {
                continue;
            };
            let len = buf.len() + data.len();
            if len > MAX_RESPONSE {
                return Err(UpstreamReply::ResponseTooLarge);
            }
            if let Some(held) = held.as_mut()
                && len > held.bytes()
            {
                held.try_resize(len).map_err(|_| UpstreamReply::NoRoom)?;
            }
            buf.extend_from_slice(&data);
        }
        Ok((buf.freeze(), held.map(SharedHold::new).unwrap_or_default()))
    }

    /// Asks an environment whether its init finished (`GET <base>/ready`).
    pub async fn readiness(&self, base_url: &str) -> Readiness {
        let Ok(uri) = format!("{base_url}{READY_PATH}").parse::<http::Uri>() else {
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
            Ok(Some((status, body))) => Readiness::decode(status, &body),
            _ => Readiness::NotYet,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shim on a random port that answers every request with `answer`.
    async fn shim(answer: InvokeReply) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new().fallback(move || {
            let answer = answer.clone();
            async move {
                let (status, headers, body) = answer.encode();
                (status, headers, body)
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn answers_are_read_through_the_contract() {
        let client = UpstreamClient::new();
        let cold = InvokeReply::unhandled(Bytes::from_static(b"{}")).with_cold_start(12.5);
        let url = shim(cold.clone()).await;
        let got = client
            .invoke(
                &url,
                "r1",
                Bytes::from_static(b"{}"),
                Duration::from_secs(5),
                &PassOn::default(),
            )
            .await
            .0;
        assert_eq!(got, UpstreamReply::Reply(cold));
        let busy = InvokeReply::Busy {
            body: Bytes::from_static(b"{}"),
        };
        let url = shim(busy.clone()).await;
        let got = client
            .invoke(
                &url,
                "r2",
                Bytes::from_static(b"{}"),
                Duration::from_secs(5),
                &PassOn::default(),
            )
            .await
            .0;
        assert_eq!(got, UpstreamReply::Reply(busy));
        assert_eq!(client.readiness(&url).await, Readiness::NotYet);
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        drop(listener);
        let got = UpstreamClient::new()
            .invoke(
                &url,
                "r",
                Bytes::new(),
                Duration::from_secs(5),
                &PassOn::default(),
            )
            .await
            .0;
        assert_eq!(got, UpstreamReply::Unreachable);
    }

    #[tokio::test]
    async fn answers_are_held_against_the_budget_before_they_are_read() {
        let budget = MemoryBudget::new(1000);
        let client = UpstreamClient::with_budget(budget.clone(), Duration::from_millis(100));
        let done = InvokeReply::ok(Bytes::from(vec![b'1'; 600]), None);
        let url = shim(done.clone()).await;
        let pass = PassOn::default();
        let invoke = || client.invoke(&url, "r", Bytes::new(), Duration::from_secs(5), &pass);
        let (got, held) = invoke().await;
        assert_eq!(
            (got, held.bytes(), budget.held()),
            (UpstreamReply::Reply(done.clone()), 600, 600)
        );
        // The first answer is still held (being sent, say): no room for the
        // second, which is refused without being read.
        let (got, none) = invoke().await;
        assert_eq!(
            (got, none.bytes(), budget.held()),
            (UpstreamReply::NoRoom, 0, 600)
        );
        assert!(budget.peak() <= 1000);
        drop(held);
        let (got, held) = invoke().await;
        assert_eq!((got, held.bytes()), (UpstreamReply::Reply(done), 600));
        drop(held);
        assert_eq!(budget.held(), 0);
    }
}
