//! `porchlight-load`: see `porchlight-load --help`.

use std::process::ExitCode;

use clap::Parser;
use porchlight_load::cli::{Args, Command};
use porchlight_load::summary::render;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::Simulate(simulate)) = args.command {
        return match porchlight_load::simulate::run(simulate) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("porchlight-load simulate: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Replay(replay)) = args.command {
        let check = replay.check;
        return match porchlight_load::simulate::live::run(replay).await {
            Ok(None) => ExitCode::SUCCESS,
            Ok(Some(comparison)) => {
                print!("{}", comparison.render());
                if check && !comparison.agrees {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => {
                eprintln!("porchlight-load replay: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let (config, observer) = match args.into_config() {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("porchlight-load: {e}");
            return ExitCode::from(64);
        }
    };
    let out = config.out.clone();
    let cancel = CancellationToken::new();
    let on_interrupt = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: stopping the load and writing the report");
            on_interrupt.cancel();
        }
    });
    match porchlight_load::run(config, observer, cancel).await {
        Ok(output) => {
            print!("{}", render(&output.summary));
            println!("report: {}", out.display());
            if !output.report.charts_have_text {
                eprintln!("note: no usable font found (--font); charts were drawn without text");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("porchlight-load: {e}");
            ExitCode::FAILURE
        }
    }
}
