//! `porchlight-load simulate`: replays a production trace (the Azure
//! Functions 2019 sample) through fixed keep-alive windows and the adaptive
//! policy of `porchlight_core::keepalive`, and writes a report of cold
//! starts against wasted memory-time.
//!
//! The adaptive policy is the production code itself (`keepalive::decide`),
//! called once per idle period; nothing about it is re-implemented here.

pub mod chart;
pub mod evaluate;
pub mod goals;
pub mod live;
pub mod replay;
pub mod report;
pub mod trace;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use porchlight_core::keepalive::KeepAliveParams;

use crate::charts::DEFAULT_FONT;
use crate::error::{Error, Result};
use evaluate::{Candidate, Group, PolicyResult, evaluate_all};
use replay::Policy;
use trace::{Spread, Trace, arrivals};

const SIMULATE_HELP: &str = "\
Replays a trace of per-minute invocation counts through keep-alive policies:
fixed windows of 1, 5, 10, 20, 30, 60 and 120 minutes, and the adaptive
(hybrid histogram) policy of porchlight-core's keepalive module, with the
paper's parameters, with the parameters chosen for this replay, and with a
few variations of those. No gateway or cluster is involved.

MODEL:
  A function either has an environment loaded or not. An invocation that
  arrives while none is loaded (or pre-warmed) is a cold start; loading is
  taken as instant. Wasted memory-time is the time an environment is loaded
  without running an invocation, times the memory of the function's app, in
  GB-seconds. Each invocation runs for its function's average execution time.
  Arrivals inside a minute are placed by --spread (seeded, deterministic).

OUTPUT (in --out):
  REPORT.md     the results, whether the goals are met, and how to reproduce
  policies.csv  one row per policy
  tradeoff.png  wasted memory-time against the cold-start rate, per policy

EXAMPLES:
  # The committed report (from the repository root):
  porchlight-load simulate --trace ../shared/traces/azure-functions-2019 \\
      --out docs/keepalive

  # Another arrival spread, written elsewhere:
  porchlight-load simulate --spread even --out /tmp/keepalive-even

  # Print a wide sweep of the adaptive policy's parameters (writes nothing):
  porchlight-load simulate --explore
";

/// Flags of `porchlight-load simulate`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = SIMULATE_HELP, after_help = "See --help for the model, the output files and examples.")]
pub struct SimulateArgs {
    /// The trace and how its minutes become arrivals.
    #[command(flatten)]
    pub arrivals: TraceArrivals,

    /// Folder for REPORT.md, policies.csv and tradeoff.png (created if missing).
    #[arg(long, value_name = "DIR", default_value = "docs/keepalive")]
    pub out: PathBuf,

    /// TrueType font for chart text (the chart has no text if it is missing).
    #[arg(long, value_name = "FILE", default_value = DEFAULT_FONT)]
    pub font: PathBuf,

    /// Only print a wide sweep of the adaptive policy's parameters; write nothing.
    #[arg(long)]
    pub explore: bool,

    /// No progress lines on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

/// The trace a run reads and how the invocations it counts per minute
/// become arrival times (flags shared by `simulate` and `replay`).
#[derive(Debug, Clone, clap::Args)]
pub struct TraceArrivals {
    /// Folder with the trace's inv.csv, run.csv and mem.csv (Azure Functions 2019 columns).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "../shared/traces/azure-functions-2019"
    )]
    pub trace: PathBuf,

    /// How the invocations counted in one minute are placed inside it.
    #[arg(long, value_enum, default_value_t = SpreadKind::Uniform)]
    pub spread: SpreadKind,

    /// Seed for --spread uniform (the same seed gives the same arrivals).
    #[arg(long, default_value_t = 2019)]
    pub seed: u64,
}

impl TraceArrivals {
    /// The arrival model the flags ask for.
    pub fn spread(&self) -> Spread {
        match self.spread {
            SpreadKind::Uniform => Spread::Uniform { seed: self.seed },
            SpreadKind::Even => Spread::Even,
        }
    }
}

/// How arrivals are placed inside their minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SpreadKind {
    /// Uniformly at random, from a generator seeded with --seed and the function's row.
    Uniform,
    /// Evenly spaced: the i-th of n at (i + 0.5)/n of the minute.
    Even,
}

/// The fixed windows compared, in minutes.
pub const FIXED_MINUTES: [u64; 7] = [1, 5, 10, 20, 30, 60, 120];

/// The fixed window the goals compare against, in minutes (the paper's baseline).
pub const BASELINE_MINUTES: u64 = 10;

fn minutes(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

/// The adaptive policy's parameters this replay settled on (REPORT.md lists
/// them next to the defaults and says why): the paper's, except the window
/// used while a function's histogram is not representative, the samples it
/// takes to be representative, and a floor under the keep-alive point.
///
/// They top the `--explore` sweep: most fixed windows dominated on (cold
/// starts, wasted memory-time). With the 20-minute floor, any fallback up to
/// 20 minutes acts as 20 minutes; 20 is written to say so.
pub fn chosen_params() -> KeepAliveParams {
    KeepAliveParams::recommended()
}

/// Margins of the adaptive line (pre-warm and keep-alive margins alike),
/// around the chosen parameters.
pub const MARGINS: [f64; 6] = [0.0, 0.05, 0.10, 0.20, 0.30, 0.50];

fn label_params(p: &KeepAliveParams) -> String {
    format!(
        "fallback {} min, min samples {}, floor {} min, tail p{}, margin {:.0} %",
        p.fixed_keep_alive.as_secs() / 60,
        p.min_samples,
        p.min_keep_alive.as_secs() / 60,
        p.tail_percentile,
        p.keep_alive_margin * 100.0
    )
}

/// Every policy the report compares, in report order.
pub fn candidates() -> Vec<Candidate> {
    let mut out: Vec<Candidate> = FIXED_MINUTES
        .iter()
        .map(|&m| Candidate {
            label: format!("fixed {m} min"),
            group: Group::Fixed,
            policy: Policy::Fixed(minutes(m)),
        })
        .collect();
    out.push(Candidate {
        label: "adaptive, paper defaults".into(),
        group: Group::Paper,
        policy: Policy::Adaptive(KeepAliveParams::default()),
    });
    let chosen = chosen_params();
    for margin in MARGINS {
        let params = KeepAliveParams {
            prewarm_margin: margin,
            keep_alive_margin: margin,
            ..chosen.clone()
        };
        let is_chosen = params == chosen;
        out.push(Candidate {
            label: if is_chosen {
                format!("adaptive, chosen (margin {:.0} %)", margin * 100.0)
            } else {
                format!("adaptive, chosen with margin {:.0} %", margin * 100.0)
            },
            group: if is_chosen {
                Group::Chosen
            } else {
                Group::MarginSweep
            },
            policy: Policy::Adaptive(params),
        });
    }
    // One knob at a time away from the chosen parameters.
    let variations: [(&str, KeepAliveParams); 9] = [
        (
            "fallback 60 min",
            KeepAliveParams {
                fixed_keep_alive: minutes(60),
                ..chosen.clone()
            },
        ),
        (
            "fallback 240 min (paper)",
            KeepAliveParams {
                fixed_keep_alive: minutes(240),
                ..chosen.clone()
            },
        ),
        (
            "min samples 10",
            KeepAliveParams {
                min_samples: 10,
                ..chosen.clone()
            },
        ),
        (
            "min samples 100",
            KeepAliveParams {
                min_samples: 100,
                ..chosen.clone()
            },
        ),
        (
            "no floor (paper)",
            KeepAliveParams {
                min_keep_alive: Duration::ZERO,
                ..chosen.clone()
            },
        ),
        (
            "floor 10 min",
            KeepAliveParams {
                min_keep_alive: minutes(10),
                ..chosen.clone()
            },
        ),
        (
            "floor 30 min",
            KeepAliveParams {
                min_keep_alive: minutes(30),
                ..chosen.clone()
            },
        ),
        (
            "tail p95",
            KeepAliveParams {
                tail_percentile: 95.0,
                ..chosen.clone()
            },
        ),
        (
            "tail p99.9",
            KeepAliveParams {
                tail_percentile: 99.9,
                ..chosen.clone()
            },
        ),
    ];
    for (what, params) in variations {
        out.push(Candidate {
            label: format!("adaptive, chosen with {what}"),
            group: Group::Variation,
            policy: Policy::Adaptive(params),
        });
    }
    out
}

/// A wide grid of the adaptive policy's parameters, for `--explore`.
fn exploration() -> Vec<Candidate> {
    let mut out = Vec::new();
    for fallback in [5, 10, 20, 60, 240] {
        for min_samples in [5, 10, 30, 100] {
            for floor in [0, 10, 20, 30] {
                for tail in [95.0, 99.0, 99.9] {
                    let params = KeepAliveParams {
                        fixed_keep_alive: minutes(fallback),
                        min_samples,
                        min_keep_alive: minutes(floor),
                        tail_percentile: tail,
                        ..KeepAliveParams::default()
                    };
                    out.push(Candidate {
                        label: label_params(&params),
                        group: Group::Variation,
                        policy: Policy::Adaptive(params),
                    });
                }
            }
        }
    }
    out
}

/// Runs the replay and writes the report (or, with `--explore`, prints the sweep).
pub fn run(args: SimulateArgs) -> Result<()> {
    let started = Instant::now();
    let say = |line: String| {
        if !args.quiet {
            eprintln!("{line}");
        }
    };
    say(format!(
        "reading the trace in {}",
        args.arrivals.trace.display()
    ));
    let trace = Trace::load(&args.arrivals.trace)?;
    let spread = args.arrivals.spread();
    let all_arrivals: Vec<Vec<f64>> = trace
        .functions
        .iter()
        .enumerate()
        .map(|(i, f)| arrivals(&f.per_minute, spread, i))
        .collect();
    let invocations: usize = all_arrivals.iter().map(Vec::len).sum();
    let read_s = started.elapsed().as_secs_f64();
    say(format!(
        "{} functions, {} invocations over {} minutes, read and spread in {:.1} s",
        trace.functions.len(),
        invocations,
        trace.minutes,
        read_s
    ));

    let candidates = if args.explore {
        let mut c = candidates();
        c.retain(|c| c.group == Group::Fixed);
        c.extend(exploration());
        c
    } else {
        candidates()
    };
    let total = candidates.len();
    say(format!("replaying {total} policies over the whole trace"));
    let done = std::sync::atomic::AtomicUsize::new(0);
    let replay_started = Instant::now();
    let results = evaluate_all(&trace, &all_arrivals, &candidates, &|r, took| {
        let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if !args.quiet {
            eprintln!(
                "  [{n:>3}/{total}] {:<52} {:>6} cold starts, {:>12.0} GB-s wasted ({:.2} s)",
                r.candidate.label,
                r.cold_starts,
                r.wasted_gb_s,
                took.as_secs_f64()
            );
        }
    });
    let replay_s = replay_started.elapsed().as_secs_f64();
    let per_policy_s =
        results.iter().map(|r| r.replay_s).sum::<f64>() / results.len().max(1) as f64;
    say(format!(
        "replayed {total} policies in {replay_s:.1} s ({per_policy_s:.2} s per policy on one core)"
    ));

    if args.explore {
        print!("{}", report::exploration_table(&results));
        return Ok(());
    }
    print!("{}", report::text_table(&results));
    let run = report::RunInfo {
        trace_folder: args.arrivals.trace.display().to_string(),
        spread,
        invocations: invocations as u64,
        replay_s,
        per_policy_s,
        threads: evaluate::workers(total),
    };
    write_report(&args, &trace, &run, &results)
}

fn write_report(
    args: &SimulateArgs,
    trace: &Trace,
    run: &report::RunInfo,
    results: &[PolicyResult],
) -> Result<()> {
    std::fs::create_dir_all(&args.out).map_err(|e| Error::io(&args.out, e))?;
    let text = crate::charts::load_font(&args.font);
    chart::tradeoff_chart(&args.out.join(report::TRADEOFF_PNG), results, text)?;
    report::write(&args.out, trace, run, results)?;
    println!("report: {}", args.out.join(report::REPORT_MD).display());
    if !text {
        eprintln!("note: no usable font found (--font); the chart was drawn without text");
    }
    Ok(())
}
