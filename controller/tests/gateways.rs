//! The gateway poller against a fake gateway on 127.0.0.1:0.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::routing::get;
use porchlight_controller::gateways::{gateway_urls, poll_gateway};
use porchlight_controller::metrics::Metrics;
use porchlight_core::scaling::GatewayMessage;
use porchlight_core::{FunctionLoad, GatewayReport};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Poll {
    after: u64,
    wait_ms: u64,
}

#[derive(Clone, Default)]
struct Fake {
    polls: Arc<Mutex<Vec<Poll>>>,
}

async fn concurrency(
    State(fake): State<Fake>,
    Query(poll): Query<Poll>,
) -> axum::Json<GatewayReport> {
    fake.polls.lock().unwrap().push(poll.clone());
    axum::Json(GatewayReport {
        gateway: "gw-a".into(),
        sequence: poll.after + 1,
        poke: poll.after == 1,
        functions: vec![FunctionLoad {
            namespace: "demo".into(),
            name: "hello".into(),
            queued: 1,
            average_concurrency: 1.0,
            ..FunctionLoad::default()
        }],
    })
}

#[tokio::test]
async fn poller_long_polls_with_the_last_sequence() {
    let fake = Fake::default();
    let app = Router::new()
        .route("/v1/concurrency", get(concurrency))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let (tx, mut rx) = mpsc::channel(4);
    let cancel = CancellationToken::new();
    let poller = tokio::spawn(poll_gateway(
        reqwest::Client::new(),
        format!("http://{addr}/"),
        tx,
        Arc::new(Metrics::new()),
        cancel.clone(),
    ));
    let mut reports = Vec::new();
    for _ in 0..3 {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(GatewayMessage::Report(r))) => reports.push(r),
            other => panic!("expected a report, got {other:?}"),
        }
    }
    cancel.cancel();
    poller.await.expect("poller stops when cancelled");
    assert_eq!(
        reports.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(reports[1].poke);
    let polls = fake.polls.lock().unwrap().clone();
    assert_eq!(
        polls[0],
        Poll {
            after: 0,
            wait_ms: 1000
        }
    );
    assert_eq!(
        polls[1].after, 1,
        "asks for what is newer than the last report"
    );
    assert_eq!(polls[2].after, 2);
}

#[tokio::test]
async fn poller_survives_a_gateway_that_is_down() {
    // Nothing listens on this port (bound, then dropped).
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let (tx, _rx) = mpsc::channel(1);
    let metrics = Arc::new(Metrics::new());
    let cancel = CancellationToken::new();
    let poller = tokio::spawn(poll_gateway(
        reqwest::Client::new(),
        format!("http://{addr}"),
        tx,
        metrics.clone(),
        cancel.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(metrics.gateway_poll_errors.get() >= 1);
    assert!(!poller.is_finished(), "keeps retrying");
    cancel.cancel();
    poller.await.expect("stops");
}

#[test]
fn only_ready_gateway_pods_are_polled() {
    let pod = |name: &str, ip: Option<&str>, ready: &str| {
        Arc::new(
            serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(serde_json::json!({
                "metadata": {"name": name},
                "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": ready}]}
            }))
            .expect("pod"),
        )
    };
    let urls = gateway_urls(&[
        pod("a", Some("10.0.0.1"), "True"),
        pod("b", Some("10.0.0.2"), "False"),
        pod("c", None, "True"),
        pod("d", Some("fd00::1"), "True"),
    ]);
    assert_eq!(urls.len(), 2);
    assert_eq!(urls["a"], "http://10.0.0.1:8081", "the internal listener");
    assert_eq!(urls["d"], "http://[fd00::1]:8081");
}
