//! One scale-test run: drive the load, watch scale, write the report.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::drive::{self, Driver};
use crate::error::{Error, Result};
use crate::invoke::Invoker;
use crate::live::LiveStats;
use crate::profile::Profile;
use crate::progress::{self, Phase, ProgressMode};
use crate::report::{self, ReportFiles, ReportInput};
use crate::scale::{self, SamplerState, ScaleObserver};
use crate::summary::{self, RunInfo, RunUsage, Summary};
use crate::workload::{FunctionMix, WeightedFunction, padded_event};

/// The shape of the load.
#[derive(Clone, Debug, PartialEq)]
pub enum Load {
    /// Closed loop: the profile is the number of concurrent callers.
    Concurrency(Profile),
    /// Open loop: the profile is the arrival rate in requests per second.
    Rate(Profile),
}

impl Load {
    /// The profile.
    pub fn profile(&self) -> &Profile {
        match self {
            Load::Concurrency(p) | Load::Rate(p) => p,
        }
    }

    /// `concurrency` or `rate`.
    pub fn mode(&self) -> &'static str {
        match self {
            Load::Concurrency(_) => "concurrency",
            Load::Rate(_) => "rate",
        }
    }
}

/// A validated run configuration.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Gateway base URL.
    pub target: String,
    /// Functions and weights.
    pub functions: Vec<WeightedFunction>,
    /// The load.
    pub load: Load,
    /// Event size in bytes.
    pub payload_size: usize,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Open loop: most requests outstanding at once.
    pub max_in_flight: usize,
    /// Report folder.
    pub out: PathBuf,
    /// Keep watching scale this long after the load, or until all functions are at zero.
    pub observe_after: Duration,
    /// Ready environments that count as "scaled up".
    pub scale_target: Option<u32>,
    /// Font for chart text.
    pub font: PathBuf,
    /// Progress display.
    pub progress: ProgressMode,
    /// Signs invokes (SigV4) when set.
    pub signer: Option<crate::sign::Signer>,
}

/// What a run produced.
#[derive(Debug)]
pub struct RunOutput {
    /// The numbers.
    pub summary: Summary,
    /// The report files.
    pub report: ReportFiles,
}

/// Most concurrent callers a closed loop may have.
pub const MAX_CALLERS: f64 = 20_000.0;

/// Runs the load, watches scale with `observer` (if any), and writes the report.
/// `cancel` stops the load early; the report is still written.
pub async fn run(
    config: RunConfig,
    observer: Option<Arc<dyn ScaleObserver>>,
    cancel: CancellationToken,
) -> Result<RunOutput> {
    let profile = config.load.profile().clone();
    if let Load::Concurrency(p) = &config.load
        && p.peak() > MAX_CALLERS
    {
        return Err(Error::Config(format!(
            "at most {MAX_CALLERS} concurrent callers"
        )));
    }
    if config.max_in_flight == 0 {
        return Err(Error::Config("--max-in-flight must be at least 1".into()));
    }
    let mix = FunctionMix::new(&config.functions)?;
    let names = mix.names().to_vec();
    let pool = match &config.load {
        Load::Concurrency(p) => p.peak().ceil() as usize,
        Load::Rate(_) => config.max_in_flight,
    };
    let invoker =
        Invoker::new(&config.target, &names, config.timeout, pool)?.signed(config.signer.clone());
    let stats = Arc::new(LiveStats::new(names.len()));
    let start = Instant::now();
    let driver = Arc::new(Driver {
        invoker,
        mix,
        event: padded_event(config.payload_size),
        start,
        stats: stats.clone(),
        sequence: AtomicU64::new(0),
    });

    // The platform's metering before the load, to report the run's usage.
    let usage_before = match &observer {
        Some(o) => o.usage(&names).await.ok(),
        None => None,
    };

    let background = CancellationToken::new();
    let (sampler_tx, mut sampler_rx) = watch::channel(SamplerState::default());
    let sampler = observer.as_ref().map(|observer| {
        tokio::spawn(scale::sample(
            observer.clone(),
            names.clone(),
            profile.clone(),
            start,
            stats.clone(),
            sampler_tx,
            background.clone(),
        ))
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Load);
    let progress = tokio::spawn(progress::show(
        config.progress,
        stats.clone(),
        names.clone(),
        start,
        profile.total(),
        phase_rx,
        background.clone(),
    ));

    match &config.load {
        Load::Concurrency(p) => drive::closed_loop(driver.clone(), p, cancel.clone()).await,
        Load::Rate(p) => {
            drive::open_loop(driver.clone(), p, config.max_in_flight, cancel.clone()).await
        }
    }
    let drained = start.elapsed();
    let load_end = drained.min(profile.total());

    // Keep watching until every function is back at zero, or for `observe_after`.
    if sampler.is_some() && !cancel.is_cancelled() && !config.observe_after.is_zero() {
        phase_tx.send_replace(Phase::Observe {
            since: drained,
            limit: config.observe_after,
        });
        let back_to_zero = sampler_rx.wait_for(|s| {
            // Stop early when the observer never worked, or when everything is at zero.
            (!s.ever_observed && s.failures >= 3) || s.all_zero_at.is_some_and(|t| t >= drained)
        });
        tokio::select! {
            _ = back_to_zero => {}
            () = tokio::time::sleep(config.observe_after) => {}
            () = cancel.cancelled() => {}
        }
    }
    background.cancel();
    let scale_rows = match sampler {
        Some(handle) => handle.await.unwrap_or_default(),
        None => Vec::new(),
    };
    let _ = progress.await;

    let records = stats.take_records();
    let info = RunInfo {
        target: config.target.clone(),
        mode: config.load.mode().to_string(),
        profile: profile.to_string(),
        payload_bytes: driver.event.len(),
        functions: names.clone(),
        scale_target: config.scale_target,
        scale_source: observer.as_ref().map(|o| o.source()),
        scale_observation_failures: sampler_rx.borrow().failures,
    };
    let mut summary = summary::summarize(&info, &records, &scale_rows, load_end);
    if let (Some(observer), Some(before)) = (&observer, &usage_before) {
        match observer.usage(&names).await {
            Ok(after) => {
                summary.usage = Some(RunUsage::between(observer.source(), before, &after));
            }
            Err(e) => eprintln!("porchlight-load: usage after the run: {e}"),
        }
    }
    let report = report::write(
        &config.out,
        &ReportInput {
            functions: &names,
            records: &records,
            scale: &scale_rows,
            summary: &summary,
            font: &config.font,
        },
    )?;
    Ok(RunOutput { summary, report })
}
