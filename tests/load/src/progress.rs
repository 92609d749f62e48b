//! Live progress in the terminal while a run goes on.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::live::LiveStats;

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// A live bar on a terminal, a plain line every 5 s otherwise.
    Auto,
    /// Nothing.
    Quiet,
}

/// Which part of the run is going on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Phase {
    /// Sending load.
    Load,
    /// Load over; watching environments go back to zero, up to this long.
    Observe {
        /// When observation started (since the start of the run).
        since: Duration,
        /// The `--observe-after` bound.
        limit: Duration,
    },
}

/// Draws progress until `cancel` fires.
pub async fn show(
    mode: ProgressMode,
    stats: Arc<LiveStats>,
    functions: Vec<String>,
    start: Instant,
    load_length: Duration,
    phase: watch::Receiver<Phase>,
    cancel: CancellationToken,
) {
    if mode == ProgressMode::Quiet {
        return;
    }
    let terminal = std::io::stderr().is_terminal();
    let bar = if terminal {
        let bar = ProgressBar::with_draw_target(
            Some(load_length.as_secs().max(1)),
            ProgressDrawTarget::stderr_with_hz(4),
        );
        bar.set_style(
            ProgressStyle::with_template("{prefix:>8} [{bar:24.cyan/blue}] {pos:>4}/{len}s {msg}")
                .expect("static progress template")
                .progress_chars("=> "),
        );
        Some(bar)
    } else {
        None
    };
    let mut window: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last_line = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cancel.cancelled() => break,
        }
        let now = Instant::now();
        let elapsed = start.elapsed();
        let completed = LiveStats::get(&stats.completed);
        window.push_back((now, completed));
        while window.len() > 2 && now - window[0].0 > Duration::from_secs(1) {
            window.pop_front();
        }
        let rate = match (window.front(), window.back()) {
            (Some(a), Some(b)) if b.0 > a.0 => (b.1 - a.1) as f64 / (b.0 - a.0).as_secs_f64(),
            _ => 0.0,
        };
        let environments = stats
            .environments()
            .iter()
            .zip(&functions)
            .map(|(e, name)| {
                let n = |v: Option<u32>| v.map_or("?".to_string(), |v| v.to_string());
                format!("{name} {}/{}", n(e.ready), n(e.desired))
            })
            .collect::<Vec<_>>()
            .join(" ");
        let (prefix, position, remaining) = match *phase.borrow() {
            Phase::Load => (
                "load",
                elapsed.min(load_length),
                load_length.saturating_sub(elapsed),
            ),
            Phase::Observe { since, limit } => {
                let into = elapsed.saturating_sub(since);
                ("observe", into.min(limit), limit.saturating_sub(into))
            }
        };
        let message = format!(
            "{}s left | {:.0}/s | in flight {} | ok {} | err {} | 429 {} | dropped {} | cold {} | ready/desired {}",
            remaining.as_secs(),
            rate,
            LiveStats::get(&stats.in_flight),
            LiveStats::get(&stats.ok),
            LiveStats::get(&stats.errors),
            LiveStats::get(&stats.throttled),
            LiveStats::get(&stats.dropped),
            LiveStats::get(&stats.cold_starts),
            environments,
        );
        match &bar {
            Some(bar) => {
                if let Phase::Observe { limit, .. } = *phase.borrow() {
                    bar.set_length(limit.as_secs().max(1));
                }
                bar.set_prefix(prefix);
                bar.set_position(position.as_secs());
                bar.set_message(message);
            }
            None => {
                if now - last_line >= Duration::from_secs(5) {
                    last_line = now;
                    eprintln!("[{prefix} {:>5.0}s] {message}", elapsed.as_secs_f64());
                }
            }
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}
