//! The error body every Porchlight component answers with, in Lambda's shape.

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

    /// The JSON text of this error.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"errorType":"ServiceException","errorMessage":"internal error"}"#.to_string()
        })
    }
}
