//! `porchlight-load`: drives invocations through a Porchlight gateway and reports
//! latency, cold starts and how the functions scaled.

pub mod drive;
pub mod error;
pub mod invoke;
pub mod live;
pub mod profile;
pub mod scale;
pub mod sign;
pub mod simulate;
pub mod summary;
pub mod workload;

pub use error::{Error, Result};
pub mod charts;
pub mod progress;
pub mod report;
pub mod run;

pub use run::{Load, RunConfig, RunOutput, run};
pub mod cli;
