//! Destination records: what an async event's `onSuccess` or `onFailure`
//! destination receives, in Lambda's shape (`version`, `timestamp`,
//! `requestContext`, `requestPayload`, `responseContext`,
//! `responsePayload`). The payloads are written as the JSON text they
//! arrived as.

use bytes::Bytes;
use serde::Serialize;

use crate::dead_letters::raw_json;
use crate::error::function_arn;

/// Why a record was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Condition {
    /// The event ran and the function returned.
    Success,
    /// Every attempt the function's settings allow ended in an error.
    RetriesExhausted,
    /// The event grew older than the function's maximum event age.
    EventAgeExceeded,
}

impl Condition {
    /// As Lambda writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Success => "Success",
            Condition::RetriesExhausted => "RetriesExhausted",
            Condition::EventAgeExceeded => "EventAgeExceeded",
        }
    }
}

/// How the last attempt ended, as the record's `responseContext` tells it.
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    /// The Invoke API's status for that attempt (200 when the function ran).
    pub status_code: u16,
    /// `Unhandled` or `Handled` when the function failed.
    pub function_error: Option<String>,
    /// What the function returned (or the error), as JSON text.
    pub payload: Bytes,
}

/// [`raw_json`] of a payload that may be absent (then skipped).
fn raw_json_opt<S: serde::Serializer>(text: &Option<&Bytes>, s: S) -> Result<S::Ok, S::Error> {
    match text {
        Some(text) => raw_json(text, s),
        None => s.serialize_none(),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Record<'a> {
    version: &'static str,
    timestamp: String,
    request_context: RequestContext<'a>,
    #[serde(serialize_with = "raw_json")]
    request_payload: &'a Bytes,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_context: Option<ResponseContext<'a>>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "raw_json_opt"
    )]
    response_payload: Option<&'a Bytes>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RequestContext<'a> {
    request_id: &'a str,
    function_arn: String,
    condition: &'static str,
    approximate_invoke_count: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseContext<'a> {
    status_code: u16,
    executed_version: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_error: Option<&'a str>,
}

/// The record of `function`'s event `request_id` (whose payload was
/// `request`), after `invokes` attempts, as JSON. An event that never ran
/// (too old before its first attempt) has no response: its record has no
/// `responseContext` and no `responsePayload`.
pub fn record(
    function: &str,
    request_id: &str,
    condition: Condition,
    invokes: u32,
    request: &Bytes,
    response: Option<&Response>,
) -> Bytes {
    let record = Record {
        version: "1.0",
        timestamp: timestamp(),
        request_context: RequestContext {
            request_id,
            function_arn: format!("{}:$LATEST", function_arn(function)),
            condition: condition.as_str(),
            approximate_invoke_count: invokes,
        },
        request_payload: request,
        response_context: response.map(|r| ResponseContext {
            status_code: r.status_code,
            executed_version: "$LATEST",
            function_error: r.function_error.as_deref(),
        }),
        response_payload: response.map(|r| &r.payload),
    };
    Bytes::from(serde_json::to_vec(&record).unwrap_or_default())
}

/// Now, as Lambda writes a record's time: UTC, milliseconds, `Z`.
fn timestamp() -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn keys(v: &Value) -> Vec<&str> {
        let mut k: Vec<&str> = v
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        k.sort_unstable();
        k
    }

    #[test]
    fn a_failure_record_has_lambdas_keys_and_values() {
        let response = Response {
            status_code: 200,
            function_error: Some("Unhandled".into()),
            payload: Bytes::from_static(br#"{"errorMessage":"boom","errorType":"RuntimeError"}"#),
        };
        let r = record(
            "orders",
            "r-1",
            Condition::RetriesExhausted,
            3,
            &Bytes::from_static(br#"{"order": 42}"#),
            Some(&response),
        );
        let v: Value = serde_json::from_slice(&r).expect("JSON");
        assert_eq!(
            keys(&v),
            [
                "requestContext",
                "requestPayload",
                "responseContext",
                "responsePayload",
                "timestamp",
                "version"
            ]
        );
        assert_eq!(v["version"], "1.0");
        assert_eq!(
            keys(&v["requestContext"]),
            [
                "approximateInvokeCount",
                "condition",
                "functionArn",
                "requestId"
            ]
        );
        assert_eq!(v["requestContext"]["requestId"], "r-1");
        assert_eq!(
            v["requestContext"]["functionArn"],
            "arn:aws:lambda:us-east-1:000000000000:function:orders:$LATEST"
        );
        assert_eq!(v["requestContext"]["condition"], "RetriesExhausted");
        assert_eq!(v["requestContext"]["approximateInvokeCount"], 3);
        assert_eq!(v["requestPayload"]["order"], 42);
        assert_eq!(
            keys(&v["responseContext"]),
            ["executedVersion", "functionError", "statusCode"]
        );
        assert_eq!(v["responseContext"]["statusCode"], 200);
        assert_eq!(v["responseContext"]["executedVersion"], "$LATEST");
        assert_eq!(v["responseContext"]["functionError"], "Unhandled");
        assert_eq!(v["responsePayload"]["errorMessage"], "boom");
        // 2026-01-01T00:00:00.000Z
        let t = v["timestamp"].as_str().expect("a string");
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[19] == b'.', "{t}");
    }

    #[test]
    fn a_success_record_has_no_function_error() {
        let response = Response {
            status_code: 200,
            function_error: None,
            payload: Bytes::from_static(b"\"ok\""),
        };
        let r = record(
            "f",
            "r",
            Condition::Success,
            1,
            &Bytes::from_static(b"not json"),
            Some(&response),
        );
        let v: Value = serde_json::from_slice(&r).expect("JSON");
        assert_eq!(
            keys(&v["responseContext"]),
            ["executedVersion", "statusCode"]
        );
        assert_eq!(v["requestContext"]["condition"], "Success");
        assert_eq!(v["responsePayload"], "ok");
        // A payload that is not JSON is sent as a string.
        assert_eq!(v["requestPayload"], "not json");
    }

    #[test]
    fn a_record_of_an_event_that_never_ran_has_no_response() {
        let r = record(
            "f",
            "r",
            Condition::EventAgeExceeded,
            0,
            &Bytes::from_static(b"{}"),
            None,
        );
        let v: Value = serde_json::from_slice(&r).expect("JSON");
        assert_eq!(
            keys(&v),
            ["requestContext", "requestPayload", "timestamp", "version"]
        );
        assert_eq!(v["requestContext"]["condition"], "EventAgeExceeded");
        assert_eq!(v["requestContext"]["approximateInvokeCount"], 0);
    }
}
