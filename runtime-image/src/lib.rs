//! `porchlight-runtime`: the shim that turns a process into a Lambda
//! execution environment.
//!
//! It starts the language runtime (the bundled Python bootstrap,
//! `awslambdaric`, a `lambda_runtime` binary, a shell `bootstrap`, ...) in
//! its own process group, serves it the AWS Lambda Runtime API on loopback,
//! and serves the gateway an invoke endpoint compatible with AWS's Runtime
//! Interface Emulator, plus `/live`, `/ready` and `/metrics`.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod config;
mod environment;
mod error;
#[cfg(test)]
mod fuzz;
mod invoke_api;
mod launcher;
mod logs;
mod metrics;
mod process;
mod reaper;
mod runtime_api;
mod server;
mod supervisor;

pub use config::{Config, ConfigError, RuntimeKind, Settings};
pub use launcher::{LAUNCH_RUNTIME_ARG, RuntimeLauncher};
pub use porchlight_core::invoke::MAX_PAYLOAD_BYTES;
pub use process::PYTHON_BOOTSTRAP;

/// Exit code of a bad configuration (EX_USAGE).
pub const EXIT_BAD_CONFIG: u8 = 64;

/// How long open invoke connections may take to finish after the runtime stopped.
const CONNECTION_DRAIN: std::time::Duration = std::time::Duration::from_secs(1);

// Whoever stops the shim gives it this long after its drain (core's
// contract with the controller and the local gateway).
const _: () = assert!(
    supervisor::TERMINATE_GRACE.as_secs() + CONNECTION_DRAIN.as_secs()
        <= porchlight_core::shim::SHUTDOWN_STOP_SECONDS as u64
);

/// Runs one execution environment until `shutdown` is cancelled, then drains
/// it: /ready turns false, new invocations get 503, in-flight ones finish
/// within the grace period, and the runtime is stopped.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let settings = config.validate()?;
    run_validated(settings, shutdown).await
}

/// [`run`] for a configuration already validated.
pub async fn run_validated(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listen = settings.config.listen;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        environment = %settings.environment_id,
        function = %settings.config.function_name,
        "execution environment starting"
    );
    let env = environment::Environment::new(settings);
    let stop_serving = CancellationToken::new();
    let server = tokio::spawn(server::serve_until(
        listener,
        invoke_api::router(env.clone()),
        stop_serving.clone(),
        CONNECTION_DRAIN,
    ));
    let result = supervisor::supervise(env.clone(), shutdown.clone()).await;
    if result.is_err() {
        env.begin_shutdown();
    }
    // The supervisor returns once the runtime is stopped; answers already
    // computed still reach their callers before the listener closes.
    stop_serving.cancel();
    if let Err(e) = server.await {
        tracing::warn!(error = %e, "invoke server task failed");
    }
    tracing::info!("execution environment stopped");
    result
}

/// Entry point of the `porchlight-runtime` binary.
pub fn cli_main() -> ExitCode {
    cli_main_from(std::env::args_os())
}

/// [`cli_main`] with explicit arguments (the first one is the program name),
/// for binaries that embed the shim behind a subcommand.
///
/// The shim starts its runtime by running its own binary
/// (`/proc/self/exe`) with [`LAUNCH_RUNTIME_ARG`] as the first argument; a
/// binary that embeds the shim must hand such a command line to this
/// function as it is.
pub fn cli_main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    if launcher::is_launch(&args) {
        return launcher::launch(&args[2..]);
    }
    let config = match Config::try_parse_from(args) {
        Ok(config) => config,
        Err(e) => return exit_for_cli_error("porchlight-runtime", &e),
    };
    let mut settings = match config.validate() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("porchlight-runtime: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    settings.runtime_launcher = Some(RuntimeLauncher::this_binary());
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("porchlight-runtime: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        // A second signal does not cut the drain short: the grace period
        // bounds it, and whoever stops the shim (the kubelet, the local
        // gateway) follows up with SIGKILL.
        porchlight_core::signal::cancel_on_signal(shutdown.clone(), false)?;
        tokio::select! {
            result = run_validated(settings, shutdown) => result,
            never = reaper::reap_while_pid_1() => match never {},
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "execution environment failed");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env(porchlight_core::shim::LOG_FILTER_ENV)
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// What a command line that did not parse ends with: `--help` and
/// `--version` print and succeed; anything else is one line on stderr
/// (`program: problem`) and exit code 64 (EX_USAGE).
pub fn exit_for_cli_error(program: &str, e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let text = e.to_string();
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ");
    eprintln!("{program}: {line}");
    ExitCode::from(EXIT_BAD_CONFIG)
}
