//! The normalisation of the error bodies runtimes post, into Lambda's error
//! shape (`{"errorType","errorMessage"}`, [`LambdaError`] in `porchlight-core`).

use bytes::Bytes;
use porchlight_core::LambdaError;
use serde_json::{Map, Value};

/// Longest error message kept from a non-JSON error body.
const MAX_RAW_MESSAGE_BYTES: usize = 64 * 1024;

/// An error body posted by a runtime, rewritten so that it always holds a
/// string `errorType` and `errorMessage`.
#[derive(Debug, Clone)]
pub struct NormalisedError {
    pub error_type: String,
    pub body: Bytes,
}

impl NormalisedError {
    pub fn from_lambda(err: &LambdaError) -> Self {
        Self {
            error_type: err.error_type.clone(),
            body: err.to_json(),
        }
    }
}

/// Normalises an error body from `/invocation/{id}/error` or `/init/error`.
///
/// A JSON object keeps its fields (`stackTrace`, `requestId`, ...), gains the
/// missing `errorType` (from the `Lambda-Runtime-Function-Error-Type` header,
/// else `default_type`) and `errorMessage`, and loses an X-Ray `errorCause`.
/// Anything else becomes the message of a fresh error object.
pub fn normalise_error(
    body: &[u8],
    header_type: Option<&str>,
    default_type: &str,
) -> NormalisedError {
    let header_type = header_type
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 128);
    let fallback_type = header_type.unwrap_or(default_type).to_owned();
    let mut object = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => map,
        Ok(other) => {
            let mut map = Map::new();
            map.insert("errorMessage".into(), Value::String(other.to_string()));
            map
        }
        Err(_) => {
            let mut map = Map::new();
            let text = String::from_utf8_lossy(&body[..body.len().min(MAX_RAW_MESSAGE_BYTES)]);
            map.insert("errorMessage".into(), Value::String(text.into_owned()));
            map
        }
    };
    object.remove("errorCause");
    let error_type = match object.get("errorType") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        _ => fallback_type,
    };
    object.insert("errorType".into(), Value::String(error_type.clone()));
    match object.get("errorMessage") {
        Some(Value::String(_)) => {}
        Some(other) => {
            let text = other.to_string();
            object.insert("errorMessage".into(), Value::String(text));
        }
        None => {
            object.insert("errorMessage".into(), Value::String(String::new()));
        }
    }
    let body = serde_json::to_vec(&object).unwrap_or_else(|_| b"{}".to_vec());
    NormalisedError {
        error_type,
        body: Bytes::from(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(n: &NormalisedError) -> Value {
        serde_json::from_slice(&n.body).unwrap()
    }

    #[test]
    fn python_error_keeps_its_fields() {
        let body = br#"{"errorMessage":"bad thing","errorType":"ValueError","requestId":"r1","stackTrace":["x"]}"#;
        let n = normalise_error(body, None, "Function.Unknown");
        assert_eq!(n.error_type, "ValueError");
        let v = parsed(&n);
        assert_eq!(v["errorMessage"], "bad thing");
        assert_eq!(v["stackTrace"][0], "x");
        assert_eq!(v["requestId"], "r1");
    }

    #[test]
    fn body_type_wins_over_the_header() {
        let n = normalise_error(
            br#"{"errorType":"&str","errorMessage":"boom"}"#,
            Some("unhandled"),
            "Function.Unknown",
        );
        assert_eq!(n.error_type, "&str");
    }

    #[test]
    fn missing_fields_are_filled() {
        let n = normalise_error(b"", Some("Runtime.Custom"), "Function.Unknown");
        assert_eq!(parsed(&n)["errorType"], "Runtime.Custom");
        assert_eq!(parsed(&n)["errorMessage"], "");
        let n = normalise_error(b"plain text", None, "Function.Unknown");
        assert_eq!(parsed(&n)["errorType"], "Function.Unknown");
        assert_eq!(parsed(&n)["errorMessage"], "plain text");
        let n = normalise_error(
            br#"{"errorMessage":"m","errorType":"T","errorCause":{"x":1}}"#,
            None,
            "F",
        );
        assert!(parsed(&n).get("errorCause").is_none());
    }
}
