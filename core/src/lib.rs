//! What Porchlight's processes agree on, and its pure decisions.
//!
//! No Kubernetes dependency, so every binary can use it, the runtime shim
//! included: the invoke contract between the gateway and the shim
//! ([`invoke`]), the Lambda error body ([`error`]), the concurrency reports
//! from gateways to the controller ([`report`]), the names of labels,
//! annotations and conditions ([`names`]), the shim's settings ([`shim`]),
//! the autoscaler maths ([`autoscaler`]) and the autoscaler loop that local
//! mode and the controller share ([`scaling`]), the adaptive keep-alive
//! policy ([`keepalive`]), trace ids in X-Ray's and W3C's forms ([`trace`]), metering
//! ([`usage`]), EventBridge schedule expressions ([`schedule`]), plus small helpers
//! written once ([`signal`], [`backoff`], [`endpoint`]).

pub mod autoscaler;
pub mod backoff;
pub mod endpoint;
pub mod error;
pub mod invoke;
pub mod keepalive;
pub mod names;
pub mod report;
pub mod scaling;
pub mod schedule;
pub mod shim;
pub mod signal;
pub mod trace;
pub mod usage;

pub use autoscaler::{Autoscaler, AutoscalerConfig, Decision, ScalingSettings};
pub use error::LambdaError;
pub use invoke::InvokeReply;
pub use report::{FunctionKey, FunctionLoad, GatewayReport, ReportAggregator};
pub use shim::ShimSettings;
