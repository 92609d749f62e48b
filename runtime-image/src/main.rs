use std::process::ExitCode;

fn main() -> ExitCode {
    porchlight_runtime::cli_main()
}
