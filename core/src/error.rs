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

#[cfg(test)]
mod tests {
    use super::*;

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
