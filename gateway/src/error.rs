//! The gateway's error type: every failure becomes a Lambda-shaped answer.
//!
//! The body is `{"errorType", "errorMessage"}` as Lambda's runtimes use, plus
//! `message` and the `X-Amzn-ErrorType` header so that AWS SDKs (botocore's
//! rest-json parser) recognise the error code. Messages never carry internal
//! details such as socket errors or file paths.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Default region and account used in ARNs (as LocalStack and the RIE do).
pub const REGION: &str = "us-east-1";
/// Account id used in ARNs.
pub const ACCOUNT: &str = "000000000000";

/// The ARN of a function, as Lambda prints it in error messages.
pub fn function_arn(name: &str) -> String {
    format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}")
}

/// Everything that can go wrong between a client and a handler.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum GatewayError {
    /// No such function (or no such version).
    #[error("Function not found: {arn}")]
    FunctionNotFound { arn: String },
    /// A route or trigger that does not exist.
    #[error("{0}")]
    RouteNotFound(String),
    /// The function's queue is full, or it waited past its deadline while
    /// environments were busy.
    #[error("Rate Exceeded.")]
    Throttled {
        retry_after: Duration,
        reason: &'static str,
    },
    /// Waited past the deadline while no environment became ready.
    #[error("No execution environment became ready in time.")]
    Unavailable { retry_after: Duration },
    /// Payload over the limit.
    #[error("{limit} bytes is the maximum payload size for this invocation type.")]
    TooLarge { limit: usize },
    /// No dead letter with the request id asked for.
    #[error("{0}")]
    DeadLetterNotFound(String),
    /// Body is not JSON where JSON is required.
    #[error("Could not parse request body into json: {0}")]
    InvalidJson(String),
    /// A request that is malformed in some other way.
    #[error("{0}")]
    InvalidParameter(String),
    /// A request header Lambda refuses as content (a client context that
    /// is not base64 JSON).
    #[error("{0}")]
    InvalidRequestContent(String),
    /// The environment died or could not be reached while handling the event.
    #[error("{0}")]
    Service(String),
    /// The gateway is shutting down.
    #[error("The gateway is shutting down.")]
    ShuttingDown,
    /// An async event could not be stored, so it was not accepted (or a
    /// listing of the store could not be read).
    #[error("The event store is unavailable; the event was not accepted. Retry later.")]
    EventStore,
    #[error("Missing Authentication Token")]
    MissingAuthenticationToken,
    #[error("The security token included in the request is invalid.")]
    UnrecognizedClient,
    #[error("{0}")]
    IncompleteSignature(String),
    #[error("{0}")]
    InvalidSignature(String),
    #[error("{0}")]
    AccessDenied(String),
}

impl GatewayError {
    /// Lambda's error type name (a bounded set, also used as a metric label).
    pub fn error_type(&self) -> &'static str {
        match self {
            GatewayError::FunctionNotFound { .. }
            | GatewayError::RouteNotFound(_)
            | GatewayError::DeadLetterNotFound(_) => "ResourceNotFoundException",
            GatewayError::Throttled { .. } => "TooManyRequestsException",
            GatewayError::Unavailable { .. }
            | GatewayError::ShuttingDown
            | GatewayError::EventStore => "ServiceUnavailableException",
            GatewayError::TooLarge { .. } => "RequestEntityTooLargeException",
            GatewayError::InvalidJson(_) | GatewayError::InvalidRequestContent(_) => {
                "InvalidRequestContentException"
            }
            GatewayError::InvalidParameter(_) => "InvalidParameterValueException",
            GatewayError::Service(_) => "ServiceException",
            GatewayError::MissingAuthenticationToken => "MissingAuthenticationTokenException",
            GatewayError::UnrecognizedClient => "UnrecognizedClientException",
            GatewayError::IncompleteSignature(_) => "IncompleteSignatureException",
            GatewayError::InvalidSignature(_) => "InvalidSignatureException",
            GatewayError::AccessDenied(_) => "AccessDeniedException",
        }
    }

    /// The HTTP status Lambda answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::FunctionNotFound { .. }
            | GatewayError::RouteNotFound(_)
            | GatewayError::DeadLetterNotFound(_) => StatusCode::NOT_FOUND,
            GatewayError::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Unavailable { .. }
            | GatewayError::ShuttingDown
            | GatewayError::EventStore => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::InvalidJson(_)
            | GatewayError::InvalidParameter(_)
            | GatewayError::InvalidRequestContent(_) => StatusCode::BAD_REQUEST,
            GatewayError::Service(_) => StatusCode::BAD_GATEWAY,
            GatewayError::MissingAuthenticationToken
            | GatewayError::UnrecognizedClient
            | GatewayError::IncompleteSignature(_)
            | GatewayError::InvalidSignature(_)
            | GatewayError::AccessDenied(_) => StatusCode::FORBIDDEN,
        }
    }

    /// Seconds a client should wait before retrying, when that applies.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GatewayError::Throttled { retry_after, .. }
            | GatewayError::Unavailable { retry_after } => Some(*retry_after),
            GatewayError::ShuttingDown | GatewayError::EventStore => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        let message = self.to_string();
        let mut body = serde_json::json!({
            "errorType": self.error_type(),
            "errorMessage": message,
            "message": message,
            "Type": if self.status().is_server_error() { "Service" } else { "User" },
        });
        if let GatewayError::Throttled { reason, .. } = self {
            body["Reason"] = serde_json::Value::String((*reason).to_string());
        }
        body.to_string()
    }

    /// A short label for metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            GatewayError::FunctionNotFound { .. }
            | GatewayError::RouteNotFound(_)
            | GatewayError::DeadLetterNotFound(_) => "not_found",
            GatewayError::Throttled { .. } => "throttled",
            GatewayError::Unavailable { .. } => "unavailable",
            GatewayError::TooLarge { .. } => "too_large",
            GatewayError::InvalidJson(_)
            | GatewayError::InvalidParameter(_)
            | GatewayError::InvalidRequestContent(_) => "bad_request",
            GatewayError::Service(_) => "service_error",
            GatewayError::ShuttingDown => "shutting_down",
            GatewayError::EventStore => "not_stored",
            GatewayError::MissingAuthenticationToken
            | GatewayError::UnrecognizedClient
            | GatewayError::IncompleteSignature(_)
            | GatewayError::InvalidSignature(_)
            | GatewayError::AccessDenied(_) => "forbidden",
        }
    }

    /// Builds the not-found error for a function name.
    pub fn not_found(name: &str) -> Self {
        GatewayError::FunctionNotFound {
            arn: function_arn(name),
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), self.body()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            porchlight_core::invoke::header::AMZN_ERROR_TYPE,
            HeaderValue::from_static(self.error_type()),
        );
        if let Some(after) = self.retry_after() {
            let secs = after.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                headers.insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_has_retry_after_and_lambda_shape() {
        let e = GatewayError::Throttled {
            retry_after: Duration::from_millis(300),
            reason: "ConcurrentInvocationLimitExceeded",
        };
        let r = e.clone().into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        assert_eq!(r.headers()["x-amzn-errortype"], "TooManyRequestsException");
        let body: serde_json::Value = serde_json::from_str(&e.body()).expect("json");
        assert_eq!(body["errorType"], "TooManyRequestsException");
        assert_eq!(body["errorMessage"], "Rate Exceeded.");
    }

    #[test]
    fn not_found_names_the_arn() {
        let e = GatewayError::not_found("nope");
        assert_eq!(
            e.to_string(),
            "Function not found: arn:aws:lambda:us-east-1:000000000000:function:nope"
        );
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
    }
}
