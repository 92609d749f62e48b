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

/// Local mode refuses a manifest with a typo, as `kubectl` does, naming
/// the file, the line and what was probably meant; before, `timout: 3` ran
/// with the default timeout and `kind: Funtion` gave "0 function(s)".
#[test]
fn a_typo_in_a_manifest_stops_local_mode_with_its_line_and_a_suggestion() {
    let cases = [
        (
            "  timeoutSeconds: 3",
            "  timout: 3",
            ":14: ",
            "unknown field `spec.timout`; did you mean `timeoutSeconds`?",
        ),
        (
            "kind: Function",
            "kind: Funtion",
            ":4: ",
            "kind `Funtion` is not served here; did you mean `Function`?",
        ),
        (
            "apiVersion: porchlight.dev/v1alpha1",
            "apiVersion: porchlight.dev/v1",
            ":3: ",
            "apiVersion `porchlight.dev/v1` is not served here; did you mean `porchlight.dev/v1alpha1`?",
        ),
    ];
    for (right, wrong, at, message) in cases {
        assert!(HELLO.contains(right), "{right}");
        let dir = common::temp_dir("typo");
        std::fs::write(dir.join("hello.yaml"), HELLO.replacen(right, wrong, 1)).expect("write");
        let stderr_file = dir.join("stderr.log");
        let mut gateway = Command::new(env!("CARGO_BIN_EXE_porchlight-gateway"))
            .arg("--local")
            .arg(&dir)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&stderr_file).expect("stderr"))
            .spawn()
            .expect("gateway");
        // A manifest it accepts would keep it serving: wait 10 s at most.
        let status = (0..200).find_map(|_| {
            let status = gateway.try_wait().expect("wait");
            if status.is_none() {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            status
        });
        if status.is_none() {
            let _ = gateway.kill();
            let _ = gateway.wait();
        }
        let stderr = std::fs::read_to_string(&stderr_file).unwrap_or_default();
        assert_eq!(status.and_then(|s| s.code()), Some(64), "{wrong}: {stderr}");
        assert!(
            stderr.contains(&format!("hello.yaml{at}document 1: {message}")),
            "{wrong}: {stderr}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
