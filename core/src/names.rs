//! Names the controller, the gateway and the load tool must spell alike:
//! labels, annotations, the Function's conditions and their reasons, and how
//! an init failure travels in a condition's message.

use bytes::Bytes;

use crate::LambdaError;

/// The API group of Porchlight's resources.
pub const GROUP: &str = "porchlight.dev";
/// `apiVersion` of the `Function` resource.
pub const API_VERSION: &str = "porchlight.dev/v1alpha1";
/// `kind` of the `Function` resource.
pub const FUNCTION_KIND: &str = "Function";

/// The namespace a Function is in when its manifest names none, and the
/// gateway's home namespace unless configured otherwise.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Label on every environment pod (and its Deployment's selector): the Function's name.
pub const FUNCTION_LABEL: &str = "porchlight.dev/function";
/// Annotation on the pod template: the hash of the function's code, so a code change rolls pods.
pub const CODE_HASH_ANNOTATION: &str = "porchlight.dev/code-hash";
/// Annotation on every applied object: the hash of what was applied.
pub const APPLIED_HASH_ANNOTATION: &str = "porchlight.dev/applied-hash";

/// Name of a Function's Deployment and Service.
pub fn workload_name(function: &str) -> String {
    format!("fn-{function}")
}

/// The Function's main condition type.
pub const READY_CONDITION: &str = "Ready";
/// Set (False) while the autoscaler holds every count because no gateway reports.
pub const SCALING_CONDITION: &str = "Scaling";

/// Reasons of the `Ready` condition.
pub mod reason {
    /// Environments are ready.
    pub const READY: &str = "Ready";
    /// Scaled to zero: ready to start on the next event.
    pub const SCALED_TO_ZERO: &str = "ScaledToZero";
    /// The runtime's init failed; the message is [`super::init_failure_message`].
    pub const INIT_FAILED: &str = "InitFailed";
    /// Environments are not ready yet (scheduling, image pull, init).
    pub const PENDING: &str = "Pending";
    /// The spec breaks a rule; the message lists every problem.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// No gateway reports load: the last desired count is held.
    pub const NO_GATEWAY_REPORTS: &str = "NoGatewayReports";
}

/// The condition message of an `InitFailed` Function, from the init error
/// the shim wrote to its termination log (`{"errorType","errorMessage"}`):
/// `errorType: errorMessage`. Text that is not such an error is kept as it is.
pub fn init_failure_message(termination_message: &str) -> String {
    let parsed = serde_json::from_str::<serde_json::Value>(termination_message.trim()).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
    };
    match (field("errorType"), field("errorMessage")) {
        (Some(t), Some(m)) => format!("{t}: {m}"),
        (Some(t), None) => t,
        _ => termination_message.to_string(),
    }
}

/// The Lambda error body callers get for an `InitFailed` condition message
/// (the reverse of [`init_failure_message`]).
pub fn init_failure_error(message: Option<&str>) -> Bytes {
    let message = message.unwrap_or("The function's init failed.");
    let (error_type, error_message) = match message.split_once(": ") {
        Some((t, m)) if !t.is_empty() && !t.contains(char::is_whitespace) => (t, m),
        _ => ("Runtime.InitError", message),
    };
    LambdaError::new(error_type, error_message).to_json()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_init_error_survives_the_condition_message() {
        let written =
            LambdaError::new("Runtime.ImportModuleError", "No module named 'app': x").to_json();
        let message = init_failure_message(std::str::from_utf8(&written).expect("utf-8"));
        assert_eq!(
            message,
            "Runtime.ImportModuleError: No module named 'app': x"
        );
        let back: LambdaError =
            serde_json::from_slice(&init_failure_error(Some(&message))).expect("json");
        assert_eq!(
            back,
            LambdaError::new("Runtime.ImportModuleError", "No module named 'app': x")
        );
    }

    #[test]
    fn other_messages_become_runtime_init_errors() {
        assert_eq!(init_failure_message("OOMKilled"), "OOMKilled");
        let back: LambdaError = serde_json::from_slice(&init_failure_error(Some(
            "the runtime keeps exiting during init",
        )))
        .expect("json");
        assert_eq!(back.error_type, "Runtime.InitError");
        assert_eq!(back.error_message, "the runtime keeps exiting during init");
        let back: LambdaError = serde_json::from_slice(&init_failure_error(None)).expect("json");
        assert_eq!(back.error_type, "Runtime.InitError");
    }
}
