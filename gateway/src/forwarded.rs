//! What a caller's request carries through to the environment besides its
//! event: the trace id (`X-Amzn-Trace-Id`, the runtime's `_X_AMZN_TRACE_ID`),
//! the Invoke API's client context (`context.client_context`), and whether
//! the invocation's log tail was asked for. Read once from the request's
//! headers; kept with an async event across its retries.

use axum::http::{HeaderMap, HeaderValue};
use base64::Engine as _;
use porchlight_core::invoke::header;
use porchlight_core::trace::{MAX_AMZN_TRACE_ID_LEN, TraceContext};

use crate::error::GatewayError;
use crate::upstream::PassOn;

/// Lambda's limit on `X-Amz-Client-Context`: 3,583 bytes of base64.
pub const MAX_CLIENT_CONTEXT_BYTES: usize = 3583;

/// What the environment gets with an event besides its payload.
#[derive(Clone, Debug, PartialEq)]
pub struct Forwarded {
    /// The `X-Amzn-Trace-Id` the environment gets: the caller's as sent,
    /// else converted from its `traceparent`, else a new one.
    pub trace_id: String,
    /// The trace as ids: the caller's when it sent a readable one, else
    /// the new one's.
    pub trace: TraceContext,
    /// Whether the caller sent the trace (its span is the parent of the
    /// gateway's), or the gateway created it.
    pub from_caller: bool,
    /// The client context as the caller sent it (base64 JSON, checked).
    pub client_context: Option<String>,
    /// `X-Amz-Log-Type: Tail` was asked for.
    pub log_tail: bool,
    /// The span an async event's spans continue (the `receive` span that
    /// accepted it), when spans are recorded.
    pub resumes: Option<TraceContext>,
}

impl Forwarded {
    /// The trace of a request with `headers`: an `X-Amzn-Trace-Id` is
    /// passed on as it is; else a `traceparent` is converted; else a new
    /// trace is created (not sampled unless `sampled_when_new`, as when the
    /// gateway records spans). Client context and log tail are the caller's
    /// to add ([`client_context`]).
    pub fn from_trace_headers(headers: &HeaderMap, sampled_when_new: bool) -> Self {
        let (trace_id, trace, from_caller) = read_trace(headers, || new_root(sampled_when_new));
        Forwarded {
            trace_id,
            trace,
            from_caller,
            client_context: None,
            log_tail: false,
            resumes: None,
        }
    }

    /// A new trace and nothing else (events from S3 and CloudEvents).
    pub fn new_trace(sampled: bool) -> Self {
        let trace = new_root(sampled);
        Forwarded {
            trace_id: trace.to_amzn_trace_id(),
            trace,
            from_caller: false,
            client_context: None,
            log_tail: false,
            resumes: None,
        }
    }

    /// As it was stored with an async event: the trace id (an unreadable
    /// one is kept as it is, and its spans get a new trace), the client
    /// context, and the `traceparent` of the span that accepted it.
    pub fn restored(
        trace_id: String,
        client_context: Option<String>,
        resumes: Option<&str>,
    ) -> Self {
        let (trace, from_caller) = match TraceContext::from_amzn_trace_id(&trace_id) {
            Some(t) => (t, true),
            None => (new_root(false), false),
        };
        Forwarded {
            trace_id,
            trace,
            from_caller,
            client_context,
            log_tail: false,
            resumes: resumes.and_then(TraceContext::from_traceparent),
        }
    }

    /// The headers the environment gets, with `traceparent` (the gateway's
    /// invoke span, or else the caller's span) when there is one.
    pub fn pass_on(&self, traceparent: Option<String>) -> PassOn {
        let value = |s: &str| HeaderValue::from_str(s).ok();
        PassOn {
            trace_id: value(&self.trace_id),
            traceparent: traceparent
                .or_else(|| self.trace.to_traceparent())
                .and_then(|t| HeaderValue::try_from(t).ok()),
            client_context: self.client_context.as_deref().and_then(value),
            log_tail: self.log_tail,
        }
    }
}

/// The trace to pass on: `(X-Amzn-Trace-Id, its ids, sent by the caller)`.
pub fn read_trace(
    headers: &HeaderMap,
    new: impl FnOnce() -> TraceContext,
) -> (String, TraceContext, bool) {
    if let Some(given) = headers
        .get(header::TRACE_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty() && v.len() <= MAX_AMZN_TRACE_ID_LEN)
    {
        if let Some(t) = TraceContext::from_amzn_trace_id(given) {
            return (given.to_string(), t, true);
        }
        // Passed on as Lambda passes it, though its spans get a new trace.
        return (given.to_string(), new(), false);
    }
    if let Some(t) = headers
        .get(header::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::from_traceparent)
    {
        return (t.to_amzn_trace_id(), t, true);
    }
    let t = new();
    (t.to_amzn_trace_id(), t, false)
}

/// `X-Amz-Client-Context`, checked as the environment will read it:
/// base64 of a JSON object, at most [`MAX_CLIENT_CONTEXT_BYTES`].
pub fn client_context(headers: &HeaderMap) -> Result<Option<String>, GatewayError> {
    let Some(raw) = headers.get(header::CLIENT_CONTEXT) else {
        return Ok(None);
    };
    let invalid = || {
        GatewayError::InvalidRequestContent(
            "Client context must be a valid Base64-encoded JSON object.".into(),
        )
    };
    if raw.len() > MAX_CLIENT_CONTEXT_BYTES {
        return Err(GatewayError::InvalidRequestContent(format!(
            "Client context must be at most {MAX_CLIENT_CONTEXT_BYTES} bytes of Base64-encoded JSON."
        )));
    }
    let text = raw.to_str().map_err(|_| invalid())?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| invalid())?;
    let json = std::str::from_utf8(&decoded).map_err(|_| invalid())?;
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(serde_json::Value::Object(_)) => {}
        _ => return Err(invalid()),
    }
    // The environment passes the decoded JSON on as a header value.
    if HeaderValue::from_str(json).is_err() {
        return Err(invalid());
    }
    Ok(Some(text.trim().to_string()))
}

/// A new trace, in Lambda's format.
fn new_root(sampled: bool) -> TraceContext {
    let mut t = TraceContext::new_root(unix_seconds(), rand::random());
    t.sampled = Some(sampled);
    t
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    fn fixed() -> TraceContext {
        TraceContext::new_root(0x6580_0000, [7; 20])
    }

    #[test]
    fn the_xray_header_wins_and_is_passed_as_it_is() {
        let given = "Root=1-65800000-0123456789abcdef01234567;Parent=1111111111111111;Sampled=1;Lineage=x:1";
        let h = headers(&[
            (header::TRACE_ID, given),
            (
                header::TRACEPARENT,
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ]);
        let (id, t, from_caller) = read_trace(&h, fixed);
        assert_eq!(id, given);
        assert!(from_caller);
        assert_eq!(t.parent_id, Some([0x11; 8]));
        // Unreadable, still passed on; its spans get the new trace.
        let (id, t, from_caller) = read_trace(&headers(&[(header::TRACE_ID, "Self=abc")]), fixed);
        assert_eq!((id.as_str(), t, from_caller), ("Self=abc", fixed(), false));
    }

    #[test]
    fn a_traceparent_is_converted_and_none_is_created() {
        let h = headers(&[(
            header::TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )]);
        let (id, _, from_caller) = read_trace(&h, fixed);
        assert_eq!(
            id,
            "Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=00f067aa0ba902b7;Sampled=0"
        );
        assert!(from_caller);
        let bad = headers(&[(header::TRACEPARENT, "00-zz-00f067aa0ba902b7-00")]);
        let (id, t, from_caller) = read_trace(&bad, fixed);
        assert_eq!((t, from_caller), (fixed(), false));
        assert_eq!(id, fixed().to_amzn_trace_id());
    }

    #[test]
    fn client_context_must_be_base64_json() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let ok = b64(r#"{"custom":{"k":"v"}}"#);
        assert_eq!(
            client_context(&headers(&[(header::CLIENT_CONTEXT, &ok)])).expect("valid"),
            Some(ok)
        );
        assert_eq!(client_context(&HeaderMap::new()).expect("none"), None);
        for bad in [
            "not base64!".to_string(),
            b64("not json"),
            b64("[1,2]"),
            b64("{\"a\":\n1}\n"),
            b64(&format!("{{\"k\":\"{}\"}}", "x".repeat(3000))),
        ] {
            let e =
                client_context(&headers(&[(header::CLIENT_CONTEXT, &bad)])).expect_err("refused");
            assert_eq!(e.error_type(), "InvalidRequestContentException", "{bad}");
        }
    }
}
