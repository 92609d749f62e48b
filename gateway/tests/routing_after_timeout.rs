//! After a timeout the shim restarts its runtime, and the next event sent
//! to that environment waits for the new init. With another environment
//! warm and idle, the gateway sends the next call there instead.

mod common;

use std::time::Duration;

use common::{LocalGateway, python_function};
use serde_json::Value;

struct Answer {
    status: u16,
    environment: String,
    cold_start: bool,
    function_error: bool,
    body: String,
}

async fn invoke(gw: &LocalGateway, event: &str) -> Answer {
    let r = common::invoke(gw, "sleepy", event).await;
    Answer {
        status: r.status,
        environment: r.header("x-porchlight-environment").unwrap_or_default(),
        cold_start: r.header("x-porchlight-cold-start").is_some(),
        function_error: r.header("x-amz-function-error").is_some(),
        body: r.body,
    }
}

#[tokio::test]
async fn the_call_after_a_timeout_goes_to_the_warm_environment() {
    let manifest = python_function(
        "sleepy",
        "import time\ndef handler(event, context):\n    time.sleep(event.get(\"sleep\", 0))\n    return \"done\"",
        "  timeoutSeconds: 1\n  scaling:\n    minScale: 2\n    maxScale: 2\n",
    );
    let gw = LocalGateway::start(
        "after-timeout",
        &[("sleepy.yaml", manifest)],
        &["--no-watch"],
    );
    let status = gw.url("/v1/functions");
    let two_ready = common::poll(200, Duration::from_millis(100), || async {
        let v: Value = reqwest::get(&status).await.ok()?.json().await.ok()?;
        let ready = v["functions"]
            .as_array()?
            .iter()
            .find(|f| f["name"] == "sleepy")?["ready"]
            .as_u64()?;
        (ready == 2).then_some(())
    })
    .await;
    assert!(
        two_ready.is_some(),
        "two environments never got ready; log: {}",
        gw.log()
    );

    // Each environment once, so that neither call below pays an init
    // (two calls at once; again if both went to the same one).
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..5 {
        let warm: Vec<Answer> = futures::future::join_all([
            invoke(&gw, r#"{"sleep": 0.3}"#),
            invoke(&gw, r#"{"sleep": 0.3}"#),
        ])
        .await;
        assert!(warm.iter().all(|a| a.status == 200 && !a.function_error));
        seen.extend(warm.into_iter().map(|a| a.environment));
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "both environments ran once: {seen:?}");

    let timed_out = invoke(&gw, r#"{"sleep": 5}"#).await;
    assert!(
        timed_out.function_error && timed_out.body.contains("Sandbox.Timeout"),
        "{}",
        timed_out.body
    );
    let next = invoke(&gw, "{}").await;
    assert_eq!((next.status, next.body.as_str()), (200, "\"done\""));
    assert_ne!(
        next.environment, timed_out.environment,
        "the call went to the environment that re-initialises"
    );
    assert!(
        !next.cold_start,
        "the call after a timeout paid a cold start"
    );
}
