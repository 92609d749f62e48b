//! Metering against a run with known durations: each invocation's REPORT
//! line (from `--log-type Tail`) states its billed duration; `/v1/usage` and
//! the Prometheus counters must add up to exactly those, GB-seconds must be
//! billed duration x memory, and a warm environment left idle must be
//! metered as idle time.

mod common;

use base64::Engine as _;
use common::{LocalGateway, free_port, poll, python_function};
use serde_json::Value;
use std::time::Duration;

const NAP: &str = "import time\ndef handler(event, context):\n    time.sleep(event['nap'])\n    return event['nap']\n";

fn billed_in_report(log: &str) -> u64 {
    let report = log
        .lines()
        .find(|l| l.starts_with("REPORT"))
        .unwrap_or_else(|| panic!("no REPORT line in {log}"));
    let field = report
        .split('\t')
        .find_map(|f| f.strip_prefix("Billed Duration: "))
        .expect("billed duration");
    field.trim_end_matches(" ms").parse().expect("a number")
}

async fn usage_of(internal: &str, name: &str) -> Value {
    let all: Value = reqwest::get(format!("{internal}/v1/usage"))
        .await
        .expect("usage")
        .json()
        .await
        .expect("json");
    all["functions"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["name"] == name).cloned())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn usage_adds_up_to_the_billed_durations_the_reports_state() {
    let internal_at = format!("127.0.0.1:{}", free_port());
    let gw = LocalGateway::start(
        "usage",
        &[(
            "nap.yaml",
            python_function("nap", NAP, "  memoryMiB: 512\n"),
        )],
        &["--internal-listen", &internal_at],
    );
    let internal = format!("http://{internal_at}");
    let client = reqwest::Client::new();
    let mut billed = 0u64;
    for nap in [0.05, 0.12, 0.0, 0.2, 0.03] {
        let r = client
            .post(gw.url("/2015-03-31/functions/nap/invocations"))
            .header("x-amz-log-type", "Tail")
            .body(format!(r#"{{"nap": {nap}}}"#))
            .send()
            .await
            .expect("invoke");
        assert_eq!(r.status(), 200);
        let tail = r
            .headers()
            .get("x-amz-log-result")
            .and_then(|v| v.to_str().ok())
            .map(|t| {
                base64::engine::general_purpose::STANDARD
                    .decode(t)
                    .expect("base64")
            })
            .expect("a log tail");
        billed += billed_in_report(&String::from_utf8_lossy(&tail));
    }
    let u = usage_of(&internal, "nap").await;
    assert_eq!(u["invocations"], 5, "{u}");
    assert_eq!(u["billedDurationMs"], billed, "{u}");
    assert!(billed >= 400, "the naps alone are 400 ms: {billed}");
    let gbs = u["gbSeconds"].as_f64().expect("gb-s");
    assert!((gbs - billed as f64 / 1000.0 * 0.5).abs() < 1e-9, "{u}");
    assert_eq!(u["memoryMiB"], 512);
    assert_eq!(u["coldStarts"], 1, "{u}");
    assert!(u["initDurationMs"].as_f64().expect("init") > 0.0, "{u}");

    // The environment stays warm and idle: that is metered, and grows.
    let idle = poll(100, Duration::from_millis(50), || async {
        let u = usage_of(&internal, "nap").await;
        let s = u["idleEnvironmentSeconds"].as_f64()?;
        (s >= 0.5).then_some(u)
    })
    .await
    .expect("idle time metered");
    let seconds = idle["idleEnvironmentSeconds"].as_f64().expect("seconds");
    let idle_gbs = idle["idleGbSeconds"].as_f64().expect("gb-s");
    assert!((idle_gbs - seconds * 0.5).abs() < 1e-6, "{idle}");

    // The same numbers as Prometheus counters.
    let metrics = reqwest::get(format!("{internal}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let counter = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{function=\"nap\"}}")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    assert!(
        (counter("porchlight_gateway_billed_duration_seconds_total") - billed as f64 / 1000.0)
            .abs()
            < 1e-9
    );
    assert!((counter("porchlight_gateway_gb_seconds_total") - gbs).abs() < 1e-9);
    assert!(counter("porchlight_gateway_idle_environment_seconds_total") >= 0.5);
    assert!(counter("porchlight_gateway_init_duration_seconds_total") > 0.0);
}
