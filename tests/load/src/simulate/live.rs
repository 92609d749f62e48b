//! `porchlight-load replay`: replays a slice of a trace against a real
//! gateway, time compressed, and compares the cold starts the gateway
//! reported with what the simulator predicts for the same arrivals.
//!
//! The simulator's model ([`super::replay`]) has one environment per
//! function that loads instantly; the live run is as close to that as a real
//! gateway gets: each replayed function has `maxScale: 1` and a fixed
//! keep-alive (`scaleToZeroAfter`) of the compared window divided by the
//! compression, each invocation sleeps its function's average execution
//! time divided by the compression, and a cold start is what the gateway's
//! `X-Porchlight-Cold-Start` header says (the first invocation a new
//! environment serves).
//!
//! What cannot match exactly, and why the comparison has a tolerance: the
//! autoscaler decides once a second, so a live environment stays up to about
//! a second longer than the compressed window (the live window is
//! `W/C .. W/C + 1 s`); and an environment takes a real time to start,
//! during which the simulator already counts it as loaded.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::TraceArrivals;
use super::replay::{Policy, replay};
use super::trace::{FunctionTrace, MINUTE_S, Trace, arrivals};
use crate::error::{Error, Result};
use crate::invoke::{InvocationRecord, Invoker, Outcome};
use crate::profile::parse_duration;
use crate::sign::Signer;

const REPLAY_HELP: &str = "\
Replays a slice of a trace against a running gateway, time compressed, and
compares the cold starts the gateway reports (X-Porchlight-Cold-Start) with
what the keep-alive simulator predicts for the same arrivals and a fixed
keep-alive window. Two steps, with the same flags:

  # 1. Write one Function manifest per replayed trace function and exit:
  porchlight-load replay --write-manifests /tmp/replay-functions
  # 2. Serve them in local mode, then replay:
  porchlight-gateway --local /tmp/replay-functions --quiet &
  porchlight-load replay --target http://127.0.0.1:8080

FUNCTIONS:
  The first --functions rows of the trace that are invoked in the slice and
  at most --max-per-minute times in any of its minutes and busy at most half
  of any minute (a busier function would need several environments, which
  the simulator does not model).
  Each is called replay-ROW, with maxScale 1 and scaleToZeroAfter =
  --keep-alive / --compress; each invocation sleeps the row's average
  execution time / --compress.

OUTPUT (in --out):
  replay.csv       per function: invocations, simulated and live cold starts
  replay.json      the same, the totals, and whether they agree within --tolerance
  invocations.csv  one row per invocation: trace and live time, latency,
                   status, cold start, environment
";

/// Flags of `porchlight-load replay`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_long_help = REPLAY_HELP, after_help = "See --help for the two steps and what is compared.")]
pub struct ReplayArgs {
    /// The trace and how its minutes become arrivals.
    #[command(flatten)]
    pub arrivals: TraceArrivals,

    /// First minute of the slice (0 is the trace's first).
    #[arg(long, default_value_t = 0)]
    pub start_minute: usize,

    /// Minutes of trace in the slice.
    #[arg(long, default_value_t = 30)]
    pub minutes: usize,

    /// How many trace functions to replay.
    #[arg(long, default_value_t = 20)]
    pub functions: usize,

    /// Skip functions invoked more often than this in any minute of the slice.
    #[arg(long, default_value_t = 10)]
    pub max_per_minute: u32,

    /// Trace seconds per live second (20: half an hour of trace in 90 s).
    #[arg(long, default_value_t = 20.0)]
    pub compress: f64,

    /// The fixed keep-alive window compared, in trace time.
    #[arg(long, default_value = "10m", value_parser = duration)]
    pub keep_alive: Duration,

    /// Write the replayed functions' manifests into this folder and exit.
    #[arg(long, value_name = "DIR")]
    pub write_manifests: Option<PathBuf>,

    /// Gateway base URL.
    #[arg(
        long,
        env = "PORCHLIGHT_GATEWAY",
        default_value = "http://127.0.0.1:8080"
    )]
    pub target: String,

    /// Largest relative difference of the total cold starts that counts as agreement.
    #[arg(long, default_value_t = 0.10)]
    pub tolerance: f64,

    /// Exit with status 1 when live and simulated cold starts do not agree.
    #[arg(long)]
    pub check: bool,

    /// Folder for replay.csv and replay.json.
    #[arg(long, default_value = "porchlight-replay-report")]
    pub out: PathBuf,

    /// Send invokes unsigned even when AWS credentials are set.
    #[arg(long)]
    pub no_sign_request: bool,

    /// No progress lines.
    #[arg(short, long)]
    pub quiet: bool,
}

fn duration(text: &str) -> std::result::Result<Duration, String> {
    parse_duration(text).map_err(|e| e.to_string())
}

/// One replayed trace function.
#[derive(Clone, Debug, PartialEq)]
pub struct Replayed {
    /// Row in the trace (0 is the first function of inv.csv).
    pub row: usize,
    /// Function name served by the gateway.
    pub name: String,
    /// Arrivals in trace seconds from the start of the slice.
    pub arrivals: Vec<f64>,
    /// Average execution time, trace seconds.
    pub execution_s: f64,
}

/// The plan of a replay: which functions, their arrivals, the live settings.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The replayed functions.
    pub functions: Vec<Replayed>,
    /// Trace seconds per live second.
    pub compress: f64,
    /// The compared window, trace time.
    pub keep_alive: Duration,
    /// Length of the slice, trace seconds.
    pub horizon_s: f64,
}

impl Plan {
    /// Selects the functions of `args`' slice of `trace`.
    pub fn new(trace: &Trace, args: &ReplayArgs) -> Result<Plan> {
        if !(args.compress.is_finite() && args.compress >= 1.0) {
            return Err(Error::Config(format!(
                "--compress must be at least 1, got {}",
                args.compress
            )));
        }
        if args.minutes == 0 || args.start_minute + args.minutes > trace.minutes {
            return Err(Error::Config(format!(
                "the slice {}..{} is not inside the trace's {} minutes",
                args.start_minute,
                args.start_minute + args.minutes,
                trace.minutes
            )));
        }
        if args.functions == 0 {
            return Err(Error::Config("--functions must be at least 1".into()));
        }
        let live_window = args.keep_alive.as_secs_f64() / args.compress;
        if live_window < 1.0 {
            return Err(Error::Config(format!(
                "--keep-alive / --compress is {live_window:.2} s; the autoscaler decides once a second, so make it at least 1 s"
            )));
        }
        let spread = args.arrivals.spread();
        let slice = args.start_minute..args.start_minute + args.minutes;
        let functions: Vec<Replayed> = trace
            .functions
            .iter()
            .enumerate()
            .filter(|(_, f)| selectable(f, &slice, args.max_per_minute))
            .take(args.functions)
            .map(|(row, f)| Replayed {
                row,
                name: format!("replay-{row}"),
                arrivals: arrivals(&f.per_minute[slice.clone()], spread, row),
                execution_s: f.execution_s,
            })
            .collect();
        if functions.is_empty() {
            return Err(Error::Config(format!(
                "no function of the trace is invoked in minutes {}..{} at most {} times a minute",
                slice.start, slice.end, args.max_per_minute
            )));
        }
        Ok(Plan {
            functions,
            compress: args.compress,
            keep_alive: args.keep_alive,
            horizon_s: args.minutes as f64 * MINUTE_S,
        })
    }

    /// The live keep-alive window.
    pub fn live_keep_alive(&self) -> Duration {
        // Whole milliseconds: what a manifest can say.
        Duration::from_millis((self.keep_alive.as_secs_f64() / self.compress * 1e3).round() as u64)
    }

    /// Cold starts the simulator predicts per function (in plan order).
    pub fn simulated_cold_starts(&self) -> Vec<u64> {
        let policy = Policy::Fixed(self.keep_alive);
        self.functions
            .iter()
            .map(|f| replay(&f.arrivals, f.execution_s, self.horizon_s, &policy).cold_starts)
            .collect()
    }

    /// The manifest of one replayed function.
    pub fn manifest(&self, f: &Replayed) -> String {
        let timeout = (f.execution_s / self.compress).ceil() as u64 + 5;
        format!(
            "# Trace row {row}: average execution {exec:.3} s, replayed {compress}x faster.\n\
             apiVersion: porchlight.dev/v1alpha1\n\
             kind: Function\n\
             metadata:\n  name: {name}\n\
             spec:\n  runtime: python3.12\n  handler: app.handler\n  code:\n    inline: |\n      \
             import time\n      \
             def handler(event, context):\n          \
             time.sleep(event.get(\"sleep\", 0))\n          \
             return {{\"row\": {row}}}\n  \
             timeoutSeconds: {timeout}\n  \
             scaling:\n    maxScale: 1\n    scaleToZeroAfter: {window}ms\n",
            row = f.row,
            exec = f.execution_s,
            compress = self.compress,
            name = f.name,
            window = self.live_keep_alive().as_millis(),
        )
    }

    /// Writes every manifest into `dir`.
    pub fn write_manifests(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        for f in &self.functions {
            let path = dir.join(format!("{}.yaml", f.name));
            std::fs::write(&path, self.manifest(f)).map_err(|e| Error::io(&path, e))?;
        }
        Ok(())
    }
}

/// Invoked in the slice, at most `max_per_minute` times in any minute, and
/// busy at most half of any minute (one environment serves it without a
/// queue building up, as the simulator's single environment does).
fn selectable(f: &FunctionTrace, slice: &std::ops::Range<usize>, max_per_minute: u32) -> bool {
    let counts = &f.per_minute[slice.clone()];
    counts.iter().any(|&c| c > 0)
        && counts
            .iter()
            .all(|&c| c <= max_per_minute && f64::from(c) * f.execution_s <= MINUTE_S / 2.0)
}

/// Live and simulated cold starts of one function.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionComparison {
    /// Function name.
    pub name: String,
    /// Trace row.
    pub row: usize,
    /// Invocations sent.
    pub invocations: u64,
    /// Predicted by the simulator.
    pub simulated_cold_starts: u64,
    /// Reported by the gateway.
    pub live_cold_starts: u64,
    /// Invocations that did not end in a 2xx answer.
    pub failed: u64,
}

/// The outcome of a live replay.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Comparison {
    /// Per function, in plan order.
    pub functions: Vec<FunctionComparison>,
    /// Sum of the simulated cold starts.
    pub simulated_cold_starts: u64,
    /// Sum of the live ones.
    pub live_cold_starts: u64,
    /// (live - simulated) / simulated.
    pub relative_difference: f64,
    /// The tolerance applied.
    pub tolerance: f64,
    /// |relative difference| within the tolerance and no failed invocation.
    pub agrees: bool,
    /// Trace seconds per live second.
    pub compress: f64,
    /// The compared keep-alive window, trace seconds.
    pub keep_alive_s: f64,
    /// The live window, seconds.
    pub live_keep_alive_s: f64,
    /// Length of the live replay, seconds.
    pub live_duration_s: f64,
}

impl Comparison {
    /// Combines per-function counts.
    pub fn new(
        plan: &Plan,
        functions: Vec<FunctionComparison>,
        tolerance: f64,
        took: Duration,
    ) -> Comparison {
        let simulated: u64 = functions.iter().map(|f| f.simulated_cold_starts).sum();
        let live: u64 = functions.iter().map(|f| f.live_cold_starts).sum();
        let failed: u64 = functions.iter().map(|f| f.failed).sum();
        let relative_difference = if simulated == 0 {
            if live == 0 { 0.0 } else { f64::INFINITY }
        } else {
            (live as f64 - simulated as f64) / simulated as f64
        };
        Comparison {
            functions,
            simulated_cold_starts: simulated,
            live_cold_starts: live,
            relative_difference,
            tolerance,
            agrees: failed == 0 && relative_difference.abs() <= tolerance,
            compress: plan.compress,
            keep_alive_s: plan.keep_alive.as_secs_f64(),
            live_keep_alive_s: plan.live_keep_alive().as_secs_f64(),
            live_duration_s: took.as_secs_f64(),
        }
    }

    /// A few lines for the terminal.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{:<14} {:>6} {:>10} {:>6} {:>7}\n",
            "function", "calls", "simulated", "live", "failed"
        );
        for f in &self.functions {
            out.push_str(&format!(
                "{:<14} {:>6} {:>10} {:>6} {:>7}\n",
                f.name, f.invocations, f.simulated_cold_starts, f.live_cold_starts, f.failed
            ));
        }
        out.push_str(&format!(
            "cold starts: live {} against simulated {} ({:+.1} %), fixed keep-alive {} min of trace = {:.1} s live, {}x compressed, {:.0} s: {}\n",
            self.live_cold_starts,
            self.simulated_cold_starts,
            self.relative_difference * 100.0,
            self.keep_alive_s / 60.0,
            self.live_keep_alive_s,
            self.compress,
            self.live_duration_s,
            if self.agrees {
                format!("agree within {:.0} %", self.tolerance * 100.0)
            } else {
                format!("do NOT agree within {:.0} %", self.tolerance * 100.0)
            }
        ));
        out
    }

    /// Writes replay.csv and replay.json into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let csv_path = dir.join("replay.csv");
        let mut w = csv::Writer::from_path(&csv_path)?;
        w.write_record([
            "function",
            "row",
            "invocations",
            "simulated_cold_starts",
            "live_cold_starts",
            "failed",
        ])?;
        for f in &self.functions {
            w.write_record([
                f.name.clone(),
                f.row.to_string(),
                f.invocations.to_string(),
                f.simulated_cold_starts.to_string(),
                f.live_cold_starts.to_string(),
                f.failed.to_string(),
            ])?;
        }
        w.flush().map_err(|e| Error::io(&csv_path, e))?;
        let json_path = dir.join("replay.json");
        let json = serde_json::to_vec_pretty(self)?;
        std::fs::write(&json_path, json).map_err(|e| Error::io(&json_path, e))
    }
}

/// Most invocations outstanding at once (a safety bound; the selection
/// keeps the replay far below it).
const MAX_IN_FLIGHT: usize = 256;

/// Sends every arrival of `plan` at its compressed time and compares the
/// gateway's cold starts with the simulator's.
pub async fn drive(
    plan: &Plan,
    target: &str,
    signer: Option<Signer>,
    tolerance: f64,
    quiet: bool,
) -> Result<(Comparison, Vec<InvocationRecord>)> {
    let names: Vec<String> = plan.functions.iter().map(|f| f.name.clone()).collect();
    let longest = plan
        .functions
        .iter()
        .map(|f| f.execution_s / plan.compress)
        .fold(0.0, f64::max);
    let timeout = Duration::from_secs_f64(longest + 30.0);
    let invoker = Arc::new(Invoker::new(target, &names, timeout, 16)?.signed(signer));
    let mut schedule: Vec<(f64, usize)> = plan
        .functions
        .iter()
        .enumerate()
        .flat_map(|(i, f)| f.arrivals.iter().map(move |&t| (t / plan.compress, i)))
        .collect();
    schedule.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = schedule.len();
    let length = plan.horizon_s / plan.compress;
    if !quiet {
        eprintln!(
            "replaying {total} invocations of {} functions over {length:.0} s",
            plan.functions.len()
        );
    }
    let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut next_progress = 10.0;
    for (sent, (at, function)) in schedule.into_iter().enumerate() {
        let intended = Duration::from_secs_f64(at);
        tokio::time::sleep_until(start + intended).await;
        if !quiet && at >= next_progress {
            eprintln!("  {at:>5.0} s: {sent}/{total} sent");
            next_progress += 10.0;
        }
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let sleep = plan.functions[function].execution_s / plan.compress;
        let event = Bytes::from(format!("{{\"sleep\": {sleep:.6}}}"));
        let invoker = invoker.clone();
        tasks.spawn(async move {
            let record = invoker.invoke(function, event, start, intended).await;
            drop(permit);
            record
        });
    }
    let mut counts: Vec<FunctionComparison> = plan
        .functions
        .iter()
        .zip(plan.simulated_cold_starts())
        .map(|(f, simulated)| FunctionComparison {
            name: f.name.clone(),
            row: f.row,
            invocations: 0,
            simulated_cold_starts: simulated,
            live_cold_starts: 0,
            failed: 0,
        })
        .collect();
    let mut records = Vec::with_capacity(total);
    while let Some(joined) = tasks.join_next().await {
        let Ok(record) = joined else { continue };
        records.push(record.clone());
        let c = &mut counts[record.function];
        c.invocations += 1;
        if record.cold_start {
            c.live_cold_starts += 1;
        }
        if record.outcome != Outcome::Ok {
            c.failed += 1;
        }
    }
    records.sort_by_key(|r| r.intended);
    Ok((
        Comparison::new(plan, counts, tolerance, start.elapsed()),
        records,
    ))
}

/// Writes one row per invocation of the live run.
pub fn write_invocations(dir: &Path, plan: &Plan, records: &[InvocationRecord]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join("invocations.csv");
    let mut w = csv::Writer::from_path(&path)?;
    w.write_record([
        "function",
        "trace_s",
        "intended_s",
        "latency_ms",
        "status",
        "cold_start",
        "environment",
    ])?;
    for r in records {
        w.write_record([
            plan.functions[r.function].name.clone(),
            format!("{:.3}", r.intended.as_secs_f64() * plan.compress),
            format!("{:.3}", r.intended.as_secs_f64()),
            r.latency
                .map(|l| format!("{:.1}", l.as_secs_f64() * 1e3))
                .unwrap_or_default(),
            r.status.to_string(),
            r.cold_start.to_string(),
            r.environment.clone().unwrap_or_default(),
        ])?;
    }
    w.flush().map_err(|e| Error::io(&path, e))
}

/// Runs `porchlight-load replay`.
pub async fn run(args: ReplayArgs) -> Result<Option<Comparison>> {
    let trace = Trace::load(&args.arrivals.trace)?;
    let plan = Plan::new(&trace, &args)?;
    if let Some(dir) = &args.write_manifests {
        plan.write_manifests(dir)?;
        println!(
            "wrote {} manifests to {} (scaleToZeroAfter {} ms, maxScale 1); serve them with: porchlight-gateway --local {} --quiet",
            plan.functions.len(),
            dir.display(),
            plan.live_keep_alive().as_millis(),
            dir.display()
        );
        return Ok(None);
    }
    let signer = if args.no_sign_request {
        None
    } else {
        Signer::from_env()
    };
    let (comparison, records) =
        drive(&plan, &args.target, signer, args.tolerance, args.quiet).await?;
    comparison.write(&args.out)?;
    write_invocations(&args.out, &plan, &records)?;
    Ok(Some(comparison))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::{SpreadKind, minutes};

    fn function(per_minute: Vec<u32>, execution_s: f64) -> FunctionTrace {
        FunctionTrace {
            function: "f".into(),
            app: "a".into(),
            per_minute,
            execution_s,
            memory_mb: 128.0,
        }
    }

    fn args() -> ReplayArgs {
        ReplayArgs {
            arrivals: TraceArrivals {
                trace: PathBuf::new(),
                spread: SpreadKind::Even,
                seed: 1,
            },
            start_minute: 1,
            minutes: 3,
            functions: 2,
            max_per_minute: 5,
            compress: 60.0,
            keep_alive: minutes(1),
            write_manifests: None,
            target: String::new(),
            tolerance: 0.1,
            check: false,
            out: PathBuf::new(),
            no_sign_request: true,
            quiet: true,
        }
    }

    fn trace() -> Trace {
        Trace {
            functions: vec![
                // Too busy in the slice: too many calls, or too long ones.
                function(vec![0, 9, 0, 0], 1.0),
                function(vec![0, 1, 0, 0], 31.0),
                // Not invoked in the slice.
                function(vec![3, 0, 0, 0], 1.0),
                function(vec![0, 1, 0, 2], 0.5),
                function(vec![5, 0, 1, 0], 2.0),
                // Beyond --functions.
                function(vec![0, 1, 1, 1], 1.0),
            ],
            minutes: 4,
        }
    }

    #[test]
    fn the_plan_takes_the_first_selectable_rows_of_the_slice() {
        let plan = Plan::new(&trace(), &args()).unwrap();
        let rows: Vec<usize> = plan.functions.iter().map(|f| f.row).collect();
        assert_eq!(rows, vec![3, 4]);
        // Even spread, from the slice's start: minute 1 of the trace is 0 s.
        assert_eq!(plan.functions[0].arrivals, vec![30.0, 135.0, 165.0]);
        assert_eq!(plan.functions[1].arrivals, vec![90.0]);
        assert_eq!(plan.horizon_s, 180.0);
        assert_eq!(plan.live_keep_alive(), Duration::from_secs(1));
    }

    #[test]
    fn the_simulator_predicts_with_the_fixed_window() {
        let plan = Plan::new(&trace(), &args()).unwrap();
        // Row 3: 30 s (cold), ends 30.5; next at 135 s, 104.5 s idle > 60 s:
        // cold; 165 s is 29.5 s after 135.5: warm. Row 4: one cold start.
        assert_eq!(plan.simulated_cold_starts(), vec![2, 1]);
    }

    #[test]
    fn manifests_say_what_the_live_run_needs() {
        let plan = Plan::new(&trace(), &args()).unwrap();
        let m = plan.manifest(&plan.functions[0]);
        let doc: serde_yaml::Value = serde_yaml::from_str(&m).unwrap();
        assert_eq!(doc["metadata"]["name"], "replay-3");
        assert_eq!(doc["spec"]["scaling"]["maxScale"], 1);
        assert_eq!(doc["spec"]["scaling"]["scaleToZeroAfter"], "1000ms");
        let code = doc["spec"]["code"]["inline"].as_str().unwrap();
        assert!(
            code.contains("time.sleep(event.get(\"sleep\", 0))"),
            "{code}"
        );
    }

    #[test]
    fn bad_flags_are_refused() {
        let t = trace();
        let mut a = args();
        a.compress = 0.5;
        assert!(Plan::new(&t, &a).is_err());
        let mut a = args();
        a.minutes = 10;
        assert!(Plan::new(&t, &a).is_err());
        let mut a = args();
        a.keep_alive = Duration::from_secs(30);
        assert!(
            Plan::new(&t, &a).is_err(),
            "0.5 s live is below the autoscaler's tick"
        );
        let mut a = args();
        a.max_per_minute = 0;
        assert!(Plan::new(&t, &a).is_err());
    }

    #[test]
    fn agreement_is_the_relative_difference_of_the_totals() {
        let plan = Plan::new(&trace(), &args()).unwrap();
        let f = |sim, live, failed| FunctionComparison {
            name: "f".into(),
            row: 0,
            invocations: 10,
            simulated_cold_starts: sim,
            live_cold_starts: live,
            failed,
        };
        let c = Comparison::new(&plan, vec![f(10, 11, 0), f(10, 10, 0)], 0.1, Duration::ZERO);
        assert!((c.relative_difference - 0.05).abs() < 1e-12);
        assert!(c.agrees);
        let c = Comparison::new(&plan, vec![f(10, 13, 0)], 0.1, Duration::ZERO);
        assert!(!c.agrees);
        let c = Comparison::new(&plan, vec![f(10, 10, 1)], 0.1, Duration::ZERO);
        assert!(!c.agrees, "a failed invocation is not agreement");
    }
}
