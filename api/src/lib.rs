//! The `Function` custom resource and its validation.
//!
//! What every process must agree on without Kubernetes (the invoke contract,
//! reports, names, the autoscaler) lives in `porchlight-core`; this crate
//! adds the resource the controller and the gateway read from the API server
//! (and local mode reads from manifests).

pub mod duration;
pub mod function;

pub use function::{
    AsyncConfig, Destination, Destinations, Function, FunctionSpec, FunctionStatus, QueueTrigger,
};
