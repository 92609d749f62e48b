//! The supervisor owns the runtime process: it starts it when the environment
//! starts, watches its init (first `/next`, `/init/error`, exit, init
//! timeout), restarts it after a crash or a timeout, retries a failed init
//! when an invocation asks, and stops it on shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use nix::sys::signal::Signal;
use porchlight_core::LambdaError;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::environment::{Environment, KillReason, Phase};
use crate::error::NormalisedError;
use crate::logs::{Stream, flush_channel, pump};
use crate::metrics::RestartReason;
use crate::process::{self, RuntimeProcess, describe_exit};
use crate::runtime_api;
use crate::server::{ScopedServer, spawn_scoped};

/// How long a runtime that posted `/init/error` may take to exit by itself.
const INIT_ERROR_EXIT_GRACE: Duration = Duration::from_secs(1);
/// How long a runtime has between SIGTERM and SIGKILL at shutdown.
pub(crate) const TERMINATE_GRACE: Duration = Duration::from_secs(2);

enum InitEnd {
    Ready,
    Failed(LambdaError),
    Shutdown,
}

enum RunEnd {
    Exited(String),
    Killed(KillReason),
    Shutdown,
}

/// Runs the environment's runtime until `shutdown` is cancelled and the
/// runtime has been drained and stopped.
pub async fn supervise(env: Arc<Environment>, shutdown: CancellationToken) -> anyhow::Result<()> {
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let generation = env.begin_generation();
        let listener = TcpListener::bind(env.settings.config.runtime_api)
            .await
            .with_context(|| {
                format!(
                    "cannot bind the Runtime API on {}",
                    env.settings.config.runtime_api
                )
            })?;
        let api = spawn_scoped(listener, runtime_api::router(env.clone(), generation))
            .context("cannot serve the Runtime API")?;
        let mut runtime = match process::spawn(&env.settings, api.local_addr()) {
            Ok(runtime) => runtime,
            Err(e) => {
                let (program, _) = process::runtime_command(&env.settings);
                let error = LambdaError::new(
                    "Runtime.InvalidEntrypoint",
                    format!("Runtime failed to start: {program}: {e}"),
                );
                tracing::error!(generation, error = %error.error_message, "init failed");
                let error = env.init_failed(generation, error);
                drop(api);
                if env.settings.config.exit_on_init_error {
                    return Err(exit_after_init_error(&env, &error));
                }
                if !wait_for_retry(&env, &shutdown).await {
                    return Ok(());
                }
                continue;
            }
        };
        env.set_process_group(generation, runtime.pgid);
        start_pumps(&env, generation, &mut runtime);
        tracing::info!(generation, pid = runtime.pgid.as_raw(), runtime_api = %api.local_addr(), "runtime started");

        match watch_init(&env, generation, &mut runtime, &shutdown).await {
            InitEnd::Ready => {
                tracing::info!(generation, "init finished");
            }
            InitEnd::Failed(fallback) => {
                stop_group(&mut runtime).await;
                let error = env.init_failed(generation, fallback);
                tracing::error!(generation, error_type = %error.error_type, "init failed");
                drop(api);
                if env.settings.config.exit_on_init_error {
                    return Err(exit_after_init_error(&env, &error));
                }
                if !wait_for_retry(&env, &shutdown).await {
                    return Ok(());
                }
                continue;
            }
            InitEnd::Shutdown => {
                env.begin_shutdown();
                terminate(
                    &env,
                    &mut runtime,
                    generation,
                    Instant::now() + TERMINATE_GRACE,
                )
                .await;
                return Ok(());
            }
        }

        match watch_run(&env, generation, &mut runtime, &shutdown).await {
            RunEnd::Exited(status) => {
                tracing::warn!(generation, %status, "runtime exited; restarting it");
                process::signal_group(runtime.pgid, Signal::SIGKILL);
                env.runtime_ended(generation, &status);
                env.metrics.restart(RestartReason::Crash);
            }
            RunEnd::Killed(KillReason::Timeout) => {
                tracing::warn!(generation, "invocation timed out; restarting the runtime");
                let status = stop_group(&mut runtime).await;
                env.runtime_ended(generation, &status);
                env.metrics.restart(RestartReason::Timeout);
            }
            RunEnd::Shutdown => {
                drain_and_stop(&env, generation, &mut runtime, api).await;
                return Ok(());
            }
        }
        drop(api);
    }
}

/// Starts the tasks that copy the runtime's stdout and stderr to the log.
fn start_pumps(env: &Arc<Environment>, generation: u64, runtime: &mut RuntimeProcess) {
    let outputs = [
        (
            Stream::Stdout,
            runtime.child.stdout.take().map(|o| o.into_owned_fd()),
        ),
        (
            Stream::Stderr,
            runtime.child.stderr.take().map(|o| o.into_owned_fd()),
        ),
    ];
    let mut flushes = Vec::with_capacity(2);
    for (stream, fd) in outputs {
        let receiver =
            match fd.map(|fd| fd.and_then(tokio::net::unix::pipe::Receiver::from_owned_fd)) {
                Some(Ok(receiver)) => receiver,
                Some(Err(e)) => {
                    tracing::warn!(?stream, error = %e, "cannot read the runtime's output");
                    continue;
                }
                None => continue,
            };
        let (flush, flush_requests) = flush_channel();
        flushes.push(flush);
        let env = env.clone();
        tokio::spawn(pump(
            stream,
            receiver,
            flush_requests,
            move |stream, line| env.runtime_output(stream, line),
        ));
    }
    env.set_output_flushes(generation, flushes);
}

async fn watch_init(
    env: &Environment,
    generation: u64,
    runtime: &mut RuntimeProcess,
    shutdown: &CancellationToken,
) -> InitEnd {
    let timeout = env.settings.init_timeout;
    let init_deadline = Instant::now() + timeout;
    let mut exit_grace: Option<Instant> = None;
    loop {
        if env.is_ready(generation) {
            return InitEnd::Ready;
        }
        if exit_grace.is_none() && env.init_error_posted(generation) {
            exit_grace = Some(Instant::now() + INIT_ERROR_EXIT_GRACE);
        }
        let deadline = exit_grace.map_or(init_deadline, |g| g.min(init_deadline));
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return InitEnd::Shutdown,
            status = runtime.child.wait() => {
                let status = status.map_or_else(|e| e.to_string(), describe_exit);
                if env.is_ready(generation) {
                    // Asked for an event and exited at once: treat as a crash
                    // right after init, which the run phase reports.
                    return InitEnd::Ready;
                }
                return InitEnd::Failed(LambdaError::new(
                    "Runtime.ExitError",
                    format!("Runtime exited with error: {status}"),
                ));
            }
            () = env.supervisor_woken() => {}
            () = tokio::time::sleep_until(deadline) => {
                if exit_grace.is_some() && Instant::now() < init_deadline {
                    return InitEnd::Failed(LambdaError::new("Runtime.Unknown", "init error"));
                }
                return InitEnd::Failed(LambdaError::new(
                    "Sandbox.Timeout",
                    format!("Init timed out after {:.2} seconds", timeout.as_secs_f64()),
                ));
            }
        }
    }
}

async fn watch_run(
    env: &Environment,
    generation: u64,
    runtime: &mut RuntimeProcess,
    shutdown: &CancellationToken,
) -> RunEnd {
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return RunEnd::Shutdown,
            status = runtime.child.wait() => {
                return RunEnd::Exited(status.map_or_else(|e| e.to_string(), describe_exit));
            }
            () = env.supervisor_woken() => {
                if let Some(reason) = env.take_kill_request(generation) {
                    return RunEnd::Killed(reason);
                }
            }
        }
    }
}

/// After a failed init: waits until an invocation asks for a retry.
/// Returns false on shutdown.
/// `--exit-on-init-error`: the init error goes to the termination log (best
/// effort) and the environment stops, so that the caller of [`supervise`]
/// exits non-zero.
fn exit_after_init_error(env: &Environment, error: &NormalisedError) -> anyhow::Error {
    let path = &env.settings.config.termination_log;
    if let Err(e) = std::fs::write(path, &error.body) {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the termination log");
    }
    env.begin_shutdown();
    anyhow::anyhow!(
        "init failed ({}); exiting as --exit-on-init-error asks",
        error.error_type
    )
}

async fn wait_for_retry(env: &Environment, shutdown: &CancellationToken) -> bool {
    loop {
        if env.take_restart_request() {
            return true;
        }
        tokio::select! {
            () = shutdown.cancelled() => {
                env.begin_shutdown();
                return false;
            }
            () = env.supervisor_woken() => {}
        }
    }
}

/// SIGKILLs the runtime's process group and reaps the leader.
async fn stop_group(runtime: &mut RuntimeProcess) -> String {
    process::signal_group(runtime.pgid, Signal::SIGKILL);
    match runtime.child.wait().await {
        Ok(status) => describe_exit(status),
        Err(e) => e.to_string(),
    }
}

/// SIGTERM, then SIGKILL at `kill_at`, of the runtime's process group.
async fn terminate(
    env: &Environment,
    runtime: &mut RuntimeProcess,
    generation: u64,
    kill_at: Instant,
) {
    // A frozen runtime only handles SIGTERM once it runs again; no freeze
    // follows once the environment is shutting down.
    env.thaw_for_stop();
    process::signal_group(runtime.pgid, Signal::SIGTERM);
    // Whatever else stopped it (a SIGTSTP of its own).
    process::signal_group(runtime.pgid, Signal::SIGCONT);
    let status = match tokio::time::timeout_at(kill_at, runtime.child.wait()).await {
        Ok(Ok(status)) => describe_exit(status),
        Ok(Err(e)) => e.to_string(),
        Err(_) => stop_group(runtime).await,
    };
    process::signal_group(runtime.pgid, Signal::SIGKILL);
    tracing::info!(%status, "runtime stopped");
    env.runtime_ended(generation, &status);
}

/// Graceful shutdown: no new invocations, in-flight ones finish within the
/// grace period, then the runtime is stopped.
async fn drain_and_stop(
    env: &Environment,
    generation: u64,
    runtime: &mut RuntimeProcess,
    api: ScopedServer,
) {
    env.begin_shutdown();
    let grace_end = Instant::now() + env.settings.shutdown_grace;
    let mut changes = env.subscribe();
    tracing::info!(
        in_flight = env.admitted(),
        "shutting down: draining in-flight invocations"
    );
    let mut exited = None;
    while env.admitted() > 0 {
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { break },
            status = runtime.child.wait() => {
                exited = Some(status.map_or_else(|e| e.to_string(), describe_exit));
                break;
            }
            () = tokio::time::sleep_until(grace_end) => {
                tracing::warn!(in_flight = env.admitted(), "grace period over with invocations in flight");
                break;
            }
        }
    }
    match exited {
        Some(status) => {
            process::signal_group(runtime.pgid, Signal::SIGKILL);
            env.runtime_ended(generation, &status);
        }
        None => {
            terminate(env, runtime, generation, Instant::now() + TERMINATE_GRACE).await;
        }
    }
    drop(api);
    debug_assert!(matches!(env.phase(), Phase::ShuttingDown));
}
