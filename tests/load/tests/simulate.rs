//! The trace replay on a tiny hand-made trace whose answer is worked out by
//! hand, and the report it writes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use porchlight_core::keepalive::KeepAliveParams;
use porchlight_load::simulate::evaluate::{Candidate, Group, PolicyResult, evaluate};
use porchlight_load::simulate::replay::Policy;
use porchlight_load::simulate::trace::{Spread, Trace, arrivals};
use porchlight_load::simulate::{SimulateArgs, SpreadKind, TraceArrivals};

/// Two functions over 30 minutes.
///
/// - `periodic` (app `x`, 1024 MB, runs 1 s): one invocation in minutes 0,
///   2 and 4. Evenly spread: arrivals at 30, 150 and 270 s; idle 119 s,
///   119 s, then 1,529 s to the end of the trace (1,800 s).
/// - `burst` (app `y`, 512 MB, runs 0.5 s): two invocations in minute 5:
///   arrivals at 315 and 345 s; idle 29.5 s, then 1,454.5 s to the end.
fn write_trace(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("porchlight-load-simulate")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let minutes: Vec<String> = (1..=30).map(|m| format!("minute_{m}")).collect();
    let mut periodic = vec!["0"; 30];
    periodic[0] = "1";
    periodic[2] = "1";
    periodic[4] = "1";
    let mut burst = vec!["0"; 30];
    burst[5] = "2";
    let inv = format!(
        "HashFunction,HashApp,HashOwner,{}\nperiodic,x,o,{}\nburst,y,o,{}\n",
        minutes.join(","),
        periodic.join(","),
        burst.join(",")
    );
    std::fs::write(dir.join("inv.csv"), inv).unwrap();
    std::fs::write(
        dir.join("run.csv"),
        "HashFunction,HashApp,HashOwner,Count,Average,Minimum,Maximum\n\
         periodic,x,o,3,1000,1000,1000\nburst,y,o,2,500,500,500\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("mem.csv"),
        "HashApp,HashOwner,SampleCount,AverageAllocatedMb\nx,o,1,1024\ny,o,1,512\n",
    )
    .unwrap();
    dir
}

fn replay(folder: &Path, policy: Policy) -> PolicyResult {
    let trace = Trace::load(folder).unwrap();
    assert_eq!(trace.minutes, 30);
    let arrivals: Vec<Vec<f64>> = trace
        .functions
        .iter()
        .enumerate()
        .map(|(i, f)| arrivals(&f.per_minute, Spread::Even, i))
        .collect();
    assert_eq!(arrivals[0], vec![30.0, 150.0, 270.0]);
    assert_eq!(arrivals[1], vec![315.0, 345.0]);
    let candidate = Candidate {
        label: "under test".into(),
        group: Group::Variation,
        policy,
    };
    evaluate(&trace, &arrivals, &candidate)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

#[test]
fn fixed_windows_on_the_tiny_trace() {
    let folder = write_trace("fixed");

    // 10 minutes: only the first invocations are cold. Wasted:
    // periodic (119 + 119 + 600) s x 1 GB, burst (29.5 + 600) s x 0.5 GB.
    let r = replay(&folder, Policy::Fixed(Duration::from_secs(600)));
    assert_eq!((r.invocations, r.cold_starts), (5, 2));
    assert!(close(r.wasted_gb_s, 838.0 + 314.75), "{r:?}");
    // Rates 1/3 and 1/2: median (nearest rank) 1/3, 75th percentile 1/2.
    assert!(close(r.median_function_rate, 1.0 / 3.0));
    assert!(close(r.p75_function_rate, 0.5));

    // 1 minute: every periodic invocation is cold.
    let r = replay(&folder, Policy::Fixed(Duration::from_secs(60)));
    assert_eq!(r.cold_starts, 4);
    assert!(close(r.wasted_gb_s, 180.0 + 44.75), "{r:?}");
    assert_eq!(r.per_function[0], (3, 3, 180.0));
}

#[test]
fn the_adaptive_policy_on_the_tiny_trace() {
    let folder = write_trace("adaptive");

    // Paper defaults: fewer than 10 idle times, so the 4-hour fallback
    // decides all five idle periods and keeps everything to the end.
    let r = replay(&folder, Policy::Adaptive(KeepAliveParams::default()));
    assert_eq!(r.cold_starts, 2);
    assert_eq!(r.decisions, [5, 0, 0]);
    assert!(close(r.wasted_gb_s, 1767.0 + 742.0), "{r:?}");

    // Representative from one idle time, no margins, 1-minute fallback.
    // periodic: idle 119 s under the fallback (cold, 60 s loaded); then the
    // histogram (bin 1) pre-warms at 60 s and keeps to 120 s: the third
    // invocation is warm (59 s loaded), and 60 s are loaded after it.
    // burst: 29.5 s under the fallback (warm); then bin 0 keeps to 60 s.
    let params = KeepAliveParams {
        min_samples: 1,
        prewarm_margin: 0.0,
        keep_alive_margin: 0.0,
        fixed_keep_alive: Duration::from_secs(60),
        ..Default::default()
    };
    let r = replay(&folder, Policy::Adaptive(params));
    assert_eq!(r.cold_starts, 3);
    assert_eq!(r.decisions, [2, 3, 0]);
    assert!(close(r.wasted_gb_s, 179.0 + 44.75), "{r:?}");
    // It dominates fixed 1 minute (4 cold starts, 224.75 GB-s) on this trace.
}

#[test]
fn simulate_writes_the_report_chart_and_csv() {
    let folder = write_trace("report");
    let out = folder.join("out");
    porchlight_load::simulate::run(SimulateArgs {
        arrivals: TraceArrivals {
            trace: folder.clone(),
            spread: SpreadKind::Uniform,
            seed: 7,
        },
        out: out.clone(),
        font: PathBuf::from(porchlight_load::charts::DEFAULT_FONT),
        explore: false,
        quiet: true,
    })
    .unwrap();
    let report = std::fs::read_to_string(out.join("REPORT.md")).unwrap();
    for needle in [
        "Azure Functions trace 2019",
        "CC-BY 4.0",
        "## Goals",
        "fixed 10 min",
        "adaptive, paper defaults",
        "uniformly at random",
    ] {
        assert!(report.contains(needle), "REPORT.md lacks {needle:?}");
    }
    let png = std::fs::read(out.join("tradeoff.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let csv = std::fs::read_to_string(out.join("policies.csv")).unwrap();
    assert_eq!(
        csv.lines().count(),
        1 + porchlight_load::simulate::candidates().len()
    );
}
