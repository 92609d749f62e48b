//! Metering (see `porchlight_core::usage`): the same numbers reach
//! `/v1/usage`, the Prometheus counters and the gateway's reports, from
//! which the controller keeps each Function's total in its status.

pub use porchlight_core::usage::{FunctionUsage, billed_ms, gb_seconds};
