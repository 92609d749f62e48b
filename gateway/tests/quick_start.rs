//! The quick start, word for word, on a machine with no AWS configuration:
//! the `aws` lines the local-mode banner, `--help` and `examples/hello.yaml`
//! print run as printed (the AWS CLI with an empty `HOME` and no `AWS_*`
//! variables), and the banner's curl lines answer.

mod common;

use std::path::Path;
use std::process::Command;

use common::LocalGateway;

const HELLO: &str = include_str!("../../examples/hello.yaml");
const USERS_API: &str = include_str!("../../examples/users-api.yaml");

/// The AWS CLI as on a fresh machine: no config, no credentials, no region.
fn fresh_aws(aws: &Path, home: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(aws);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .current_dir(home)
        .args(args);
    cmd.output().expect("aws")
}

/// Runs one printed `aws ...` line (pointed at this gateway) and checks the
/// function's answer in `out.json`.
fn run_printed_line(aws: &Path, line: &str, base: &str, source: &str) {
    let home = common::temp_dir("fresh-home");
    let line = line.replace("http://127.0.0.1:8080", base);
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"aws"), "{source}: {line}");
    let out = fresh_aws(aws, &home, &words[1..]);
    assert!(
        out.status.success(),
        "{source}: `{line}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let result = std::fs::read_to_string(home.join("out.json")).expect("out.json");
    assert!(result.contains("Hello from Lambda!"), "{source}: {result}");
    let _ = std::fs::remove_dir_all(&home);
}

fn aws_line(text: &str) -> String {
    text.lines()
        .map(|l| l.trim_start_matches('#').trim())
        .find(|l| l.starts_with("aws lambda invoke") && l.contains("hello"))
        .unwrap_or_else(|| panic!("no aws line in {text}"))
        .to_owned()
}

#[test]
fn printed_aws_lines_work_on_a_machine_without_aws_config() {
    let Some(python) = common::sdk_python() else {
        return;
    };
    let aws = python.parent().expect("venv bin").join("aws");
    let gw = LocalGateway::start("fresh", &[("hello.yaml", HELLO.to_string())], &[]);
    assert!(
        gw.stdout_has(|l| l.trim_start().starts_with("aws lambda invoke")),
        "{}",
        gw.stdout()
    );
    // The banner names this gateway's own address.
    run_printed_line(&aws, &aws_line(&gw.stdout()), &gw.base, "banner");

    let help = Command::new(env!("CARGO_BIN_EXE_porchlight-gateway"))
        .arg("--help")
        .output()
        .expect("--help");
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    run_printed_line(&aws, &aws_line(&help), &gw.base, "--help");

    run_printed_line(&aws, &aws_line(HELLO), &gw.base, "examples/hello.yaml");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_banners_curl_lines_answer() {
    let gw = LocalGateway::start(
        "banner",
        &[
            ("hello.yaml", HELLO.to_string()),
            ("users-api.yaml", USERS_API.to_string()),
        ],
        &[],
    );
    assert!(gw.stdout_has(|l| l.contains("/http/users-api/")));
    let banner = gw.stdout();
    let urls: Vec<&str> = banner
        .lines()
        .filter_map(|l| l.trim().strip_prefix("curl -s "))
        .filter(|rest| !rest.contains(' '))
        .collect();
    assert!(!urls.is_empty(), "{banner}");
    let http = reqwest::Client::new();
    for url in urls {
        let response = http.get(url).send().await.expect("GET");
        assert_eq!(response.status(), 200, "{url}");
    }
}
