//! The Porchlight gateway: where every event enters.
//!
//! - Ingress ([`routes`]): the Lambda Invoke API, an HTTP trigger (API Gateway
//!   proxy events 1.0/2.0), S3 notifications and CloudEvents, mapped by the pure
//!   functions in [`events`].
//! - Queue and dispatch ([`registry`]): one bounded queue per function; an
//!   event goes to a ready environment with room, most recently used first;
//!   events for a function at zero wait while the scaler is poked at once.
//! - Sync invocations ([`gateway`]) and async ones with retries and dead
//!   letters ([`async_invoke`]); the client to environments ([`upstream`]).
//! - Concurrency reports ([`report`]) for the controller and the metrics ([`metrics`]).
//! - Environment sources: [`local`] runs shim processes and scales them with
//!   the shared autoscaler; [`kubernetes`] watches Functions and their pods,
//!   adds, drains and removes environments as pods come and go, and leaves
//!   scaling to the controller, which reads the reports.

pub mod async_invoke;
pub mod cli;
pub mod error;
pub mod events;
pub mod gateway;
pub mod kubernetes;
pub mod local;
pub mod metrics;
pub mod registry;
pub mod report;
pub mod routes;
pub mod upstream;

pub use error::GatewayError;
pub use gateway::{Gateway, GatewayConfig};
pub use routes::app;

/// Now, as RFC 3339 (UTC).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
