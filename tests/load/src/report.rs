//! Writes a run's report folder: raw series as CSV, `summary.json`, and charts.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::charts;
use crate::error::{Error, Result};
use crate::invoke::InvocationRecord;
use crate::scale::ScaleRow;
use crate::summary::Summary;

/// File names inside the report folder.
pub const INVOCATIONS_CSV: &str = "invocations.csv";
/// Per-second scale samples.
pub const SCALE_CSV: &str = "scale.csv";
/// The summary.
pub const SUMMARY_JSON: &str = "summary.json";
/// Latency chart.
pub const LATENCY_PNG: &str = "latency.png";
/// Environments chart.
pub const ENVIRONMENTS_PNG: &str = "environments.png";

/// One row of `invocations.csv`. Times in milliseconds since the start of the run.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct InvocationRow {
    /// Function name.
    pub function: String,
    /// Intended send time.
    pub intended_ms: f64,
    /// Actual send time (empty if dropped by the client).
    pub sent_ms: Option<f64>,
    /// From the intended send time to the end of the response.
    pub latency_ms: Option<f64>,
    /// HTTP status (0 if none).
    pub status: u16,
    /// `ok`, `function_error`, `throttled`, `http_error`, `timeout`, `transport_error`, `dropped_by_client`.
    pub outcome: crate::invoke::Outcome,
    /// The gateway marked it as a cold start.
    pub cold_start: bool,
    /// Init duration of the cold start.
    pub init_duration_ms: Option<f64>,
    /// Not a cold start, but it queued while an environment finished its init.
    #[serde(default)]
    pub waited_for_cold_start: bool,
    /// How long it queued in the gateway for an environment.
    #[serde(default)]
    pub waited_ms: Option<f64>,
    /// Environment that served it.
    pub environment: Option<String>,
    /// Gateway request id.
    pub request_id: Option<String>,
}

/// One row of `scale.csv`.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct ScaleCsvRow {
    /// Seconds since the start of the run.
    pub t_s: f64,
    /// Function name.
    pub function: String,
    /// The profile's level (callers or req/s); 0 after the load.
    pub profile_level: f64,
    /// Requests per second offered to this function since the previous sample.
    pub offered_rps: f64,
    /// Desired environments (empty if unknown).
    pub desired: Option<u32>,
    /// Ready environments.
    pub ready: Option<u32>,
    /// In flight, as the platform sees it.
    pub in_flight: Option<u32>,
    /// Queued in the gateway.
    pub queued: Option<u32>,
}

fn ms(d: std::time::Duration) -> f64 {
    // Microsecond resolution, printed without float noise.
    (d.as_micros() as f64) / 1000.0
}

/// Paths of the files written.
#[derive(Debug, Clone)]
pub struct ReportFiles {
    /// Every file written, in order.
    pub files: Vec<PathBuf>,
    /// Whether the charts have text (a font was found).
    pub charts_have_text: bool,
}

/// Everything needed to write a report.
#[derive(Debug)]
pub struct ReportInput<'a> {
    /// Function names by index.
    pub functions: &'a [String],
    /// All invocations.
    pub records: &'a [InvocationRecord],
    /// Scale samples.
    pub scale: &'a [ScaleRow],
    /// The summary.
    pub summary: &'a Summary,
    /// Font for chart text.
    pub font: &'a Path,
}

/// Writes the report into `dir` (created if needed).
pub fn write(dir: &Path, input: &ReportInput<'_>) -> Result<ReportFiles> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut files = Vec::new();

    let path = dir.join(INVOCATIONS_CSV);
    let mut csv = csv::Writer::from_path(&path)?;
    for r in input.records {
        csv.serialize(InvocationRow {
            function: input.functions[r.function].clone(),
            intended_ms: ms(r.intended),
            sent_ms: r.sent.map(ms),
            latency_ms: r.latency.map(ms),
            status: r.status,
            outcome: r.outcome,
            cold_start: r.cold_start,
            init_duration_ms: r.init_duration_ms,
            waited_for_cold_start: r.waited_for_cold_start,
            waited_ms: r.waited_ms,
            environment: r.environment.clone(),
            request_id: r.request_id.clone(),
        })?;
    }
    csv.flush().map_err(|e| Error::io(&path, e))?;
    files.push(path);

    let path = dir.join(SCALE_CSV);
    let mut csv = csv::Writer::from_path(&path)?;
    for row in input.scale {
        csv.serialize(ScaleCsvRow {
            t_s: (ms(row.t)).round() / 1000.0,
            function: input.functions[row.function].clone(),
            profile_level: row.profile_level,
            offered_rps: (row.offered_rps * 100.0).round() / 100.0,
            desired: row.scale.desired,
            ready: row.scale.ready,
            in_flight: row.scale.in_flight,
            queued: row.scale.queued,
        })?;
    }
    csv.flush().map_err(|e| Error::io(&path, e))?;
    files.push(path);

    let path = dir.join(SUMMARY_JSON);
    let json = serde_json::to_vec_pretty(input.summary)?;
    fs::write(&path, json).map_err(|e| Error::io(&path, e))?;
    files.push(path);

    let text = charts::load_font(input.font);
    let path = dir.join(LATENCY_PNG);
    charts::latency_chart(&path, input.records, text)?;
    files.push(path);
    let path = dir.join(ENVIRONMENTS_PNG);
    charts::environments_chart(
        &path,
        input.scale,
        input.functions,
        input.summary.load_seconds,
        text,
    )?;
    files.push(path);

    Ok(ReportFiles {
        files,
        charts_have_text: text,
    })
}
