//! What a Function must satisfy on a cluster, and how it is keyed. Both the
//! reconciler and the autoscaler ask; neither asks the other.

use kube::ResourceExt;
use porchlight_api::Function;
use porchlight_core::{FunctionKey, ScalingSettings};

/// Longest Function name: `fn-NAME` must be a DNS label (63 characters).
pub const MAX_NAME_LEN: usize = 60;

/// [`FunctionSpec::validate`](porchlight_api::FunctionSpec::validate) plus
/// what only holds on a cluster.
pub fn validate_for_cluster(f: &Function) -> Result<ScalingSettings, Vec<String>> {
    let mut problems = Vec::new();
    let name = f.name_any();
    if name.len() > MAX_NAME_LEN {
        problems.push(format!(
            "metadata.name must be at most {MAX_NAME_LEN} characters on a cluster (it names Service fn-NAME)"
        ));
    }
    if f.spec.code.path.is_some() {
        problems.push(
            "spec.code.path works in local mode only; use inline, configMap or image on a cluster"
                .to_string(),
        );
    }
    match f.spec.validate() {
        Ok(settings) if problems.is_empty() => Ok(settings),
        Ok(_) => Err(problems),
        Err(more) => {
            problems.extend(more);
            Err(problems)
        }
    }
}

/// The key of a Function.
pub fn function_key(f: &Function) -> FunctionKey {
    FunctionKey::new(f.namespace().unwrap_or_default(), f.name_any())
}
