//! `porchlight-controller`: parse config, start logs, run, wait for shutdown.

use std::process::ExitCode;

use porchlight_controller::config::{Config, ConfigError, EXIT_CONFIG};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let config = match Config::from_args(std::env::args_os()) {
        Ok(c) => c,
        Err(ConfigError::Display(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(ConfigError::Invalid(line)) => {
            eprintln!("porchlight-controller: {line}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    init_logs(config.json_logs);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("porchlight-controller: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        if let Err(e) = porchlight_core::signal::cancel_on_signal(shutdown.clone(), false) {
            eprintln!("porchlight-controller: cannot install signal handlers: {e}");
            return ExitCode::from(70);
        }
        match porchlight_controller::app::run(config, shutdown).await {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "exiting");
                ExitCode::FAILURE
            }
        }
    })
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
