//! The error body every Porchlight component answers with, in Lambda's shape.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// `{"errorType": "...", "errorMessage": "..."}`, as Lambda and its runtimes use.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LambdaError {
    /// A bounded, machine-readable class such as `ResourceNotFoundException`.
    pub error_type: String,
    /// A human-readable message. Never carries internal details.
    pub error_message: String,
}

impl LambdaError {
    /// Builds an error body.
    pub fn new(error_type: impl Into<String>, error_message: impl Into<String>) -> Self {
        LambdaError {
            error_type: error_type.into(),
            error_message: error_message.into(),
        }
    }

    /// The JSON text of this error, as an HTTP body.
    pub fn to_json(&self) -> Bytes {
        match serde_json::to_vec(self) {
            Ok(v) => Bytes::from(v),
            Err(_) => Bytes::from_static(
                br#"{"errorType":"ServiceException","errorMessage":"internal error"}"#,
            ),
        }
    }
}

/// An error body with an empty `requestId` (an init error: the runtime
/// reported it before any invocation existed) with the id of the invocation
/// it answers filled in. Any other body is returned as it is.
pub fn fill_request_id(body: Bytes, request_id: &str) -> Bytes {
    let Ok(serde_json::Value::Object(mut object)) = serde_json::from_slice(&body) else {
        return body;
    };
    match object.get("requestId") {
        Some(serde_json::Value::String(id)) if id.is_empty() => {}
        _ => return body,
    }
    object.insert("requestId".into(), request_id.into());
    serde_json::to_vec(&object).map_or(body, Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_request_id_is_filled_and_nothing_else_changes() {
        let init = Bytes::from_static(
            br#"{"errorMessage":"m","errorType":"Runtime.ImportModuleError","requestId":"","stackTrace":[]}"#,
        );
        assert_eq!(
            &fill_request_id(init, "r-1")[..],
            br#"{"errorMessage":"m","errorType":"Runtime.ImportModuleError","requestId":"r-1","stackTrace":[]}"#
        );
        for body in [
            &br#"{"errorType":"E","requestId":"r-0"}"#[..],
            br#"{"errorType":"Sandbox.Timeout","errorMessage":"m"}"#,
            b"not json",
        ] {
            assert_eq!(&fill_request_id(Bytes::from_static(body), "r-1")[..], body);
        }
    }

    #[test]
    fn serialises_in_lambda_s_shape() {
        let body = LambdaError::new("Sandbox.Timeout", "Task timed out").to_json();
        assert_eq!(
            &body[..],
            br#"{"errorType":"Sandbox.Timeout","errorMessage":"Task timed out"}"#
        );
        let back: LambdaError = serde_json::from_slice(&body).expect("parses");
        assert_eq!(back.error_type, "Sandbox.Timeout");
    }
}
