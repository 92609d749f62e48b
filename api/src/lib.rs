//! Shared Porchlight types and pure logic.
//!
//! Nothing here does I/O: the `Function` resource and its validation, the
//! concurrency reports that gateways send to the controller, the autoscaler
//! maths, and the Lambda error shape. Both the gateway and the controller
//! depend on this crate, so the rules they share are written once.

pub mod autoscaler;
pub mod duration;
pub mod error;
pub mod function;
pub mod stats;

pub use autoscaler::{Autoscaler, AutoscalerConfig, Decision};
pub use error::LambdaError;
pub use function::{Function, FunctionSpec, FunctionStatus};
pub use stats::{FunctionKey, FunctionLoad, GatewayReport, ReportAggregator};
