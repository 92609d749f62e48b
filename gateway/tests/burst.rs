//! 1,000 concurrent invocations of a function at zero: every one answered
//! (200, or 429 with Retry-After), none lost, none run twice; environments
//! scale above one and back to zero after the idle window.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{LocalGateway, poll, python_function};
use serde_json::Value;

const BURST: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_from_zero_is_answered_exactly_once_and_scales_back_to_zero() {
    let log_dir = common::temp_dir("burst-log");
    let ledger = log_dir.join("ledger.txt");
    let code = r#"import os, time
def handler(event, context):
    time.sleep(0.005)
    fd = os.open(os.environ["LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, ("%s %d\n" % (context.aws_request_id, os.getpid())).encode())
    finally:
        os.close(fd)
    return {"requestId": context.aws_request_id}"#;
    let spec = format!(
        "  env:\n    LEDGER: {}\n  scaling:\n    maxScale: 8\n    scaleToZeroAfter: 2s\n    stableWindow: 4s\n",
        ledger.display()
    );
    let gw = LocalGateway::start(
        "burst",
        &[("burst.yaml", python_function("burst", code, &spec))],
        &["--queue-depth", "2000"],
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(BURST)
        .build()
        .expect("client");
    let url = gw.url("/2015-03-31/functions/burst/invocations");

    // Watch the environment count while the burst runs.
    let peak = Arc::new(AtomicU64::new(0));
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (http, url, peak, watching) = (
            http.clone(),
            gw.url("/v1/functions"),
            peak.clone(),
            watching.clone(),
        );
        tokio::spawn(async move {
            for _ in 0..2000 {
                if !watching.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(r) = http.get(&url).send().await
                    && let Ok(v) = r.json::<Value>().await
                {
                    let n = v["functions"][0]["ready"].as_u64().unwrap_or(0)
                        + v["functions"][0]["starting"].as_u64().unwrap_or(0);
                    peak.fetch_max(n, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let mut tasks = Vec::with_capacity(BURST);
    for i in 0..BURST {
        let (http, url) = (http.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(&url)
                .body(format!("{{\"n\":{i}}}"))
                .send()
                .await
                .expect("answered");
            let status = r.status().as_u16();
            let retry_after = r.headers().contains_key("retry-after");
            let request_id = r
                .headers()
                .get("x-amzn-requestid")
                .map(|v| v.to_str().unwrap_or("").to_string());
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (status, retry_after, request_id, body)
        }));
    }
    let mut ok_ids = HashSet::new();
    let mut throttled = 0;
    for t in tasks {
        let (status, retry_after, request_id, body) = t.await.expect("join");
        match status {
            200 => {
                let rid = request_id.expect("request id");
                assert_eq!(
                    body["requestId"],
                    rid.as_str(),
                    "the handler saw the gateway's request id"
                );
                assert!(ok_ids.insert(rid), "a request id answered twice");
            }
            429 | 503 => {
                assert!(retry_after, "{status} without Retry-After");
                throttled += 1;
            }
            other => panic!("unexpected status {other}: {body}; log: {}", gw.log()),
        }
    }
    watching.store(false, Ordering::SeqCst);
    let _ = watcher.await;
    assert_eq!(
        ok_ids.len() + throttled,
        BURST,
        "every invocation was answered"
    );

    let text = std::fs::read_to_string(&ledger).expect("ledger");
    let lines: Vec<&str> = text.lines().collect();
    let ran: HashSet<&str> = lines.iter().filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(lines.len(), ran.len(), "some invocation ran twice");
    assert_eq!(
        ran.len(),
        ok_ids.len(),
        "handler runs equal the 200 answers"
    );
    assert!(ok_ids.iter().all(|id| ran.contains(id.as_str())));
    let pids: HashSet<&str> = lines.iter().filter_map(|l| l.split(' ').nth(1)).collect();
    assert!(
        pids.len() > 1 && peak.load(Ordering::SeqCst) > 1,
        "scaled above one environment (pids {}, peak {})",
        pids.len(),
        peak.load(Ordering::SeqCst)
    );
    eprintln!(
        "burst: {} ok, {throttled} throttled, {} environments, peak {}",
        ok_ids.len(),
        pids.len(),
        peak.load(Ordering::SeqCst)
    );

    // Back to zero after the idle window (2 s) once panic mode ends.
    let zero = poll(300, Duration::from_millis(100), || {
        let (http, url) = (http.clone(), gw.url("/v1/functions"));
        async move {
            let v: Value = http.get(url).send().await.ok()?.json().await.ok()?;
            let f = &v["functions"][0];
            (f["ready"] == 0 && f["starting"] == 0 && f["draining"] == 0 && f["desired"] == 0)
                .then_some(())
        }
    })
    .await;
    assert!(
        zero.is_some(),
        "did not scale back to zero; log: {}",
        gw.log()
    );
    let _ = std::fs::remove_dir_all(&log_dir);
}
