//! The schedule source, end to end with the gateway binary on a faster
//! clock (`--schedule-clock-scale`: a schedule minute lasts a real second
//! or two): `rate(1 minute)` fires once per tick across two gateways on one
//! JetStream, and a restart on the embedded store fires the latest missed
//! tick once, late, and no tick twice. Plus the JetStream store's part
//! alone: the same tick published by two gateways is stored once.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::{LocalGateway, NatsServer, nats_server_binary, poll, python_function, temp_dir};
use porchlight_gateway::budget::{MemoryBudget, Purpose};
use porchlight_gateway::gateway::TriggerKind;
use porchlight_gateway::queue::nats::{NatsQueue, NatsSettings};
use porchlight_gateway::queue::{EventQueue, StoredEvent};

/// A function on `rate(1 minute)` that writes each event it gets, with its
/// request id, to a file of its own in `markers`.
fn ticker(markers: &Path) -> String {
    let code = r#"import json, os, uuid
def handler(event, context):
    d = os.environ["MARKER_DIR"]
    name = os.path.join(d, uuid.uuid4().hex)
    with open(name + ".tmp", "w") as f:
        json.dump({"event": event, "request_id": context.aws_request_id}, f)
    os.rename(name + ".tmp", name + ".json")
    return {}"#;
    python_function(
        "ticker",
        code,
        &format!(
            "  env:\n    MARKER_DIR: {}\n  triggers:\n    - schedule: rate(1 minute)\n",
            markers.display()
        ),
    )
}

/// The runs recorded, by the event's `time`: each run's request id.
fn runs_by_tick(markers: &Path) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in common::read_markers(markers) {
        let event = &m["event"];
        assert_eq!(event["detail-type"], "Scheduled Event", "{m}");
        assert_eq!(event["source"], "aws.events", "{m}");
        assert_eq!(
            event["id"], m["request_id"],
            "the event id is the request id"
        );
        assert_eq!(
            event["resources"][0],
            "arn:aws:events:us-east-1:000000000000:rule/porchlight-ticker-0"
        );
        let time = event["time"].as_str().expect("time").to_string();
        out.entry(time)
            .or_default()
            .push(m["request_id"].as_str().expect("id").to_string());
    }
    out
}

fn minute_of(time: &str) -> i64 {
    let t = time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
        .expect("RFC 3339");
    assert_eq!(t.second(), 0, "{time} is on a whole minute");
    t.unix_timestamp() / 60
}

/// Waits (bounded) until at least `n` ticks ran.
async fn wait_ticks(markers: &Path, n: usize, seconds: u32) -> BTreeMap<String, Vec<String>> {
    poll(seconds * 5, Duration::from_millis(200), || {
        let runs = runs_by_tick(markers);
        async move { (runs.len() >= n).then_some(runs) }
    })
    .await
    .unwrap_or_else(|| panic!("{n} ticks did not run within {seconds} s"))
}

/// The `tick` (Unix seconds) of a "schedule fired" log line.
fn tick_of(line: &str) -> Option<i64> {
    let at = line.find("tick=")? + "tick=".len();
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn fired_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("schedule fired"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_fires_once_per_tick_across_two_gateways() {
    let Some(bin) = nats_server_binary() else {
        return;
    };
    let nats = NatsServer::start(&bin, "schedule");
    let markers = temp_dir("schedule-two-markers");
    let extra = [
        "--queue",
        nats.url.as_str(),
        // A schedule minute lasts two real seconds.
        "--schedule-clock-scale",
        "30",
    ];
    let mut a = LocalGateway::start("schedule-a", &[("t.yaml", ticker(&markers))], &extra);
    let mut b = LocalGateway::start("schedule-b", &[("t.yaml", ticker(&markers))], &extra);
    wait_ticks(&markers, 6, 45).await;
    assert!(a.stop(), "gateway a stopped by itself");
    assert!(b.stop(), "gateway b stopped by itself");
    let (log_a, log_b) = (a.log(), b.log());
    let runs = runs_by_tick(&markers);
    // Every tick once: none doubled across the gateways.
    for (time, ids) in &runs {
        assert_eq!(ids.len(), 1, "the tick {time} ran {} times", ids.len());
    }
    // And none skipped between the first and the last.
    let minutes: Vec<i64> = runs.keys().map(|t| minute_of(t)).collect();
    for pair in minutes.windows(2) {
        assert_eq!(pair[1] - pair[0], 1, "ticks {minutes:?}");
    }
    eprintln!(
        "ticks fired by a: {}, by b: {}",
        fired_lines(&log_a).len(),
        fired_lines(&log_b).len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_tick_fires_once_late_after_a_restart() {
    let markers = temp_dir("schedule-restart-markers");
    let data = temp_dir("schedule-restart-data");
    let data_arg = data.display().to_string();
    // A schedule minute lasts a real second.
    let extra = [
        "--data-dir",
        data_arg.as_str(),
        "--schedule-clock-scale",
        "60",
    ];
    let mut first = LocalGateway::start("schedule-r1", &[("t.yaml", ticker(&markers))], &extra);
    wait_ticks(&markers, 2, 30).await;
    assert!(first.stop(), "stopped by itself");
    let log_first = first.log();
    drop(first);
    let before = runs_by_tick(&markers);
    // The last tick fired before the stop (it may run only after the restart).
    let last_before = fired_lines(&log_first)
        .iter()
        .filter_map(|l| tick_of(l))
        .max()
        .expect("a tick fired")
        / 60;
    // Down for several schedule minutes.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut second = LocalGateway::start("schedule-r2", &[("t.yaml", ticker(&markers))], &extra);
    wait_ticks(&markers, before.len() + 3, 30).await;
    assert!(second.stop(), "stopped by itself");
    let log_second = second.log();
    let runs = runs_by_tick(&markers);
    for (time, ids) in &runs {
        assert_eq!(ids.len(), 1, "the tick {time} ran {} times", ids.len());
    }
    let minutes: Vec<i64> = runs.keys().map(|t| minute_of(t)).collect();
    let after: Vec<i64> = minutes
        .iter()
        .copied()
        .filter(|m| *m > last_before)
        .collect();
    // The ticks missed while down: only the latest is fired, late, once.
    let late: Vec<&str> = fired_lines(&log_second)
        .into_iter()
        .filter(|l| l.contains("late=true") || l.contains("\"late\":true"))
        .collect();
    assert_eq!(late.len(), 1, "one late tick: {late:?}\n{log_second}");
    assert!(
        after[0] - last_before >= 3,
        "the first tick after the restart ({}) is the latest missed one, several minutes after the last before ({last_before}): {minutes:?}",
        after[0]
    );
    for pair in after.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            1,
            "after the restart, every tick: {after:?}"
        );
    }
    // The first run fired nothing late, and started the schedule.
    assert!(log_first.contains("schedule started"), "{log_first}");
    assert!(!log_second.contains("schedule started"), "{log_second}");
    assert!(
        fired_lines(&log_first)
            .iter()
            .all(|l| !l.contains("late=true")),
        "{log_first}"
    );
}

fn tick_event(id: &str) -> StoredEvent {
    StoredEvent::new(
        id.to_string(),
        "ticker",
        TriggerKind::Schedule,
        Bytes::from_static(b"{}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_stores_a_tick_fired_by_two_gateways_once() {
    let Some(bin) = nats_server_binary() else {
        return;
    };
    let nats = NatsServer::start(&bin, "schedule-store");
    let connect = || {
        NatsQueue::connect(NatsSettings {
            url: nats.url.clone(),
            depth: 100,
            ack_wait: Duration::from_secs(1),
            dead_letter_capacity: 100,
            dead_letter_bytes: 1 << 20,
        })
    };
    let (a, b) = (connect().await.expect("a"), connect().await.expect("b"));
    let budget = MemoryBudget::new(1 << 20);
    let held = || budget.try_reserve(2, Purpose::Async).expect("room");
    assert_eq!(a.last_tick("ticker.0.x").await, Ok(None));
    a.publish_tick(tick_event("tick-60"), held(), "ticker.0.x".into(), 60)
        .await
        .expect("stored");
    b.publish_tick(tick_event("tick-60"), held(), "ticker.0.x".into(), 60)
        .await
        .expect("stored");
    assert_eq!(b.last_tick("ticker.0.x").await, Ok(Some(60)));
    // A slower gateway never moves the last tick back.
    a.publish_tick(tick_event("tick-120"), held(), "ticker.0.x".into(), 120)
        .await
        .expect("stored");
    b.record_tick("ticker.0.x".into(), 60).await.expect("kept");
    assert_eq!(a.last_tick("ticker.0.x").await, Ok(Some(120)));
    // Two events in the stream, not three.
    let mut consumer = a.consumer("ticker").await.expect("consumer");
    let mut ids = Vec::new();
    while let Ok(Ok(Some(d))) =
        tokio::time::timeout(Duration::from_secs(3), consumer.next(10)).await
    {
        ids.push(d.event.request_id.clone());
        d.settle.ack().await.expect("acked");
    }
    assert_eq!(ids, ["tick-60", "tick-120"]);
}
