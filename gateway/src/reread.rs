//! Files the gateway reads again while it runs (the access keys, the TLS
//! certificate): a mounted Secret changes in place, and a rotation must not
//! need a restart. A change that does not parse keeps what is in force.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Calls `reload` every `period` until `stop`; `reload` says whether what
/// it reads changed (`Ok(true)`), or why it cannot be used.
pub async fn reread_every(
    period: Duration,
    stop: CancellationToken,
    what: &'static str,
    reload: impl Fn() -> Result<bool, String>,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => match reload() {
                Ok(true) => tracing::info!(what, "reloaded"),
                Ok(false) => {}
                Err(e) => tracing::error!(what, error = %e, "invalid; what is in force stays"),
            },
        }
    }
}
