//! The Porchlight gateway: where every event enters.
//!
//! - Ingress ([`routes`]): the Lambda Invoke API, an HTTP trigger (API Gateway
//!   proxy events 1.0/2.0), S3 notifications and CloudEvents, mapped by the pure
//!   functions in [`events`].
//! - Queue and dispatch ([`registry`]): one bounded queue per function; an
//!   event goes to a ready environment with room, most recently used first;
//!   events for a function at zero wait while the scaler is poked at once.
//! - Sync invocations ([`sync_invoke`]) and async ones with retries
//!   ([`async_invoke`]) ending in [`dead_letters`]; the client to
//!   environments ([`upstream`]); all behind one handle, [`gateway::Gateway`],
//!   of which the routes see only the narrow [`routes::Ingress`].
//! - Schedule triggers ([`schedule`]): each tick fired once across gateways,
//!   as an async event.
//! - Concurrency reports ([`report`]) for the controller and the metrics ([`metrics`]).
//! - What an invocation carries to its environment besides its event (trace
//!   id, client context: [`forwarded`]), and the optional OpenTelemetry spans
//!   of invocations ([`telemetry`]).
//! - Environment sources: [`local`] runs shim processes and scales them with
//!   the shared autoscaler; [`kubernetes`] watches Functions and their pods,
//!   adds, drains and removes environments as pods come and go, and leaves
//!   scaling to the controller, which reads the reports.

pub mod async_invoke;
pub mod budget;
pub mod cli;
pub mod cors;
pub mod dead_letters;
pub mod destinations;
pub mod error;
pub mod events;
pub mod forwarded;
pub mod gateway;
pub mod kubernetes;
pub mod listener;
pub mod local;
pub mod metrics;
pub mod queue;
pub mod queue_source;
pub mod registry;
pub mod report;
pub mod reread;
pub mod routes;
pub mod schedule;
pub mod sigv4;
pub mod sync_invoke;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod usage;

pub use dead_letters::now_rfc3339;
pub use error::GatewayError;
pub use gateway::{Gateway, GatewayConfig};
pub use routes::app;
