use std::process::ExitCode;

fn main() -> ExitCode {
    porchlight_gateway::cli::main_from_args(std::env::args_os().collect())
}
