//! Callers that queue behind a cold start are told so: the environment's
//! first invocation is the cold start, the others that waited for that init
//! carry `X-Porchlight-Waited-For: cold-start` and how long they queued.

mod common;

use common::{LocalGateway, python_function};

struct Answer {
    status: u16,
    cold_start: bool,
    waited_for: Option<String>,
    waited_ms: Option<f64>,
}

async fn invoke(gw: &LocalGateway) -> Answer {
    let r = common::invoke(gw, "one", "{}").await;
    Answer {
        status: r.status,
        cold_start: r.header("x-porchlight-cold-start").is_some(),
        waited_for: r.header("x-porchlight-waited-for"),
        waited_ms: r
            .header("x-porchlight-waited-ms")
            .and_then(|v| v.parse().ok()),
    }
}

#[tokio::test]
async fn callers_queued_behind_a_cold_start_are_told_so() {
    let manifest = python_function(
        "one",
        "import time\ndef handler(event, context):\n    time.sleep(0.2)\n    return 1",
        "  scaling:\n    maxScale: 1\n",
    );
    let gw = LocalGateway::start("queued", &[("one.yaml", manifest)], &["--no-watch"]);
    assert!(
        common::wait_ready(&gw).await,
        "never ready; log: {}",
        gw.log()
    );

    // Three callers at zero, one environment: all three queue for its init.
    let answers = futures::future::join_all([invoke(&gw), invoke(&gw), invoke(&gw)]).await;
    assert!(answers.iter().all(|a| a.status == 200), "{}", gw.log());
    let cold = answers.iter().filter(|a| a.cold_start).count();
    assert_eq!(cold, 1, "one cold start; log: {}", gw.log());
    for a in answers.iter().filter(|a| !a.cold_start) {
        assert_eq!(a.waited_for.as_deref(), Some("cold-start"));
        assert!(a.waited_ms.is_some_and(|ms| ms > 0.0));
    }

    // Warm and idle: taken at once, nothing to tell.
    let warm = invoke(&gw).await;
    assert_eq!(warm.status, 200);
    assert!(!warm.cold_start);
    assert_eq!((warm.waited_for, warm.waited_ms), (None, None));
}
