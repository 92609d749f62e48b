//! deploy/monitoring/dashboard.json queries only metrics the gateway
//! exposes: a gateway in local mode runs a success, a cold start, an async
//! event that fails into a dead letter, one held pending until released, a
//! throttle and a refused signature,
//! and every `porchlight_gateway_*` series a query names (histograms by
//! their `_bucket`/`_sum`/`_count` series), with the label keys it filters
//! on, must be in its internal `/metrics`. The controller's names are
//! checked by controller/tests/dashboard.rs.

mod common;

use common::dashboard::{exposed, selectors};

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::{LocalGateway, free_port, poll, python_function, temp_dir};

const PREFIXES: &[&str] = &[
    "porchlight_gateway_",
    "porchlight_controller_",
    "porchlight_autoscaler_",
];

async fn scrape(internal: &str) -> String {
    reqwest::get(format!("{internal}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

const HELLO: &str = "def handler(event, context):\n    return 'hello'\n";
const BOOM: &str = "def handler(event, context):\n    raise ValueError('boom')\n";
const HELD: &str = "import os, time\ndef handler(event, context):\n    for _ in range(600):\n        if os.path.exists(event['release']):\n            return 'released'\n        time.sleep(0.05)\n    return 'gave up'\n";
const SLOW: &str =
    "import time\ndef handler(event, context):\n    time.sleep(1)\n    return 'slow'\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_exposed() {
    let queries = common::dashboard::queries(&Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    let wanted: Vec<(String, BTreeSet<String>)> =
        queries.iter().flat_map(|q| selectors(q)).collect();
    assert!(wanted.len() >= 20, "the dashboard's queries: {queries:?}");
    for (name, _) in &wanted {
        assert!(
            PREFIXES.iter().any(|p| name.starts_with(p)),
            "{name} belongs to neither the gateway nor the controller"
        );
    }

    let internal_at = format!("127.0.0.1:{}", free_port());
    let gw = LocalGateway::start(
        "monitoring",
        &[
            ("hello.yaml", python_function("hello", HELLO, "")),
            ("boom.yaml", python_function("boom", BOOM, "")),
            (
                "held.yaml",
                python_function("held", HELD, "  timeoutSeconds: 60\n"),
            ),
            (
                "slow.yaml",
                python_function("slow", SLOW, "  scaling: {maxScale: 1}\n"),
            ),
        ],
        &[
            "--internal-listen",
            &internal_at,
            "--async-retry-base",
            "50ms",
            "--queue-depth",
            "1",
        ],
    );
    let internal = format!("http://{internal_at}");
    let client = reqwest::Client::new();
    let invoke =
        |name: &str| client.post(gw.url(&format!("/2015-03-31/functions/{name}/invocations")));

    // A success, on a cold start.
    let r = invoke("hello").body("{}").send().await.expect("invoke");
    assert_eq!(r.status(), 200);

    // An async event that fails every attempt: two retries, a dead letter.
    let r = invoke("boom")
        .header("x-amz-invocation-type", "Event")
        .body("{}")
        .send()
        .await
        .expect("async invoke");
    assert_eq!(r.status(), 202);

    // An async event that runs until released is pending until then.
    let dir = temp_dir("monitoring-keys");
    let release = dir.join("release");
    let r = invoke("held")
        .header("x-amz-invocation-type", "Event")
        .body(serde_json::json!({"release": release}).to_string())
        .send()
        .await
        .expect("async invoke");
    assert_eq!(r.status(), 202);
    let pending = |n: u32| {
        let internal = internal.clone();
        move || {
            let internal = internal.clone();
            async move {
                let text = scrape(&internal).await;
                text.contains(&format!(
                    "porchlight_gateway_async_pending_events{{function=\"held\"}} {n}\n"
                ))
                .then_some(())
            }
        }
    };
    assert!(
        poll(10, Duration::from_millis(100), pending(1))
            .await
            .is_some(),
        "the held event is not pending: {}",
        scrape(&internal).await
    );
    std::fs::write(&release, "").expect("release");
    assert!(
        poll(300, Duration::from_millis(100), pending(0))
            .await
            .is_some(),
        "the released event is still pending: {}",
        scrape(&internal).await
    );

    // One environment, one waiting place: a third concurrent call is refused.
    let mut throttled = false;
    for _ in 0..5 {
        let calls = (0..3).map(|_| invoke("slow").body("{}").send());
        let answers = futures::future::join_all(calls).await;
        if answers
            .iter()
            .any(|a| a.as_ref().is_ok_and(|r| r.status() == 429))
        {
            throttled = true;
            break;
        }
    }
    assert!(throttled, "no call was throttled; log: {}", gw.log());

    let metrics = poll(200, Duration::from_millis(100), || {
        let internal = internal.clone();
        async move {
            let text = scrape(&internal).await;
            text.contains("porchlight_gateway_dead_letters_total{function=\"boom\"} 1")
                .then_some(text)
        }
    })
    .await
    .unwrap_or_else(|| panic!("no dead letter; log: {}", gw.log()));

    // A gateway that requires signatures refuses an unsigned call.
    let keys = dir.join("keys.yaml");
    std::fs::write(
        &keys,
        "keys:\n  - {accessKeyId: AKIDMONITORING, secretAccessKey: monitoring-secret}\n",
    )
    .expect("keys");
    let signed_internal = format!("127.0.0.1:{}", free_port());
    let signed = LocalGateway::start(
        "monitoring-signed",
        &[("hello.yaml", python_function("hello", HELLO, ""))],
        &[
            "--internal-listen",
            &signed_internal,
            "--auth-keys",
            keys.to_str().expect("utf-8"),
        ],
    );
    let r = client
        .post(signed.url("/2015-03-31/functions/hello/invocations"))
        .body("{}")
        .send()
        .await
        .expect("unsigned invoke");
    assert_eq!(r.status(), 403);
    let signed_metrics = scrape(&format!("http://{signed_internal}")).await;

    let mut series = exposed(&metrics);
    for (name, keys) in exposed(&signed_metrics) {
        series.entry(name).or_default().extend(keys);
    }
    let mut problems = Vec::new();
    for (name, labels) in wanted
        .iter()
        .filter(|(n, _)| n.starts_with("porchlight_gateway_"))
    {
        match series.get(name) {
            None => problems.push(format!("{name} is not in the gateway's /metrics")),
            Some(keys) => {
                for l in labels.difference(keys) {
                    problems.push(format!("{name} has no label {l} (it has {keys:?})"));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n--- /metrics:\n{metrics}",
        problems.join("\n")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
