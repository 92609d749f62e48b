//! The queue source, end to end with the gateway binary on a real
//! `nats-server`: batches in the SQS event shape of 1 and of 10 records, a
//! batching window that gathers messages published apart, a partial batch
//! failure that delivers only the failed messages again, and a function
//! error that delivers the whole batch again; a message that keeps failing
//! becomes a dead letter on its fifth delivery. Every case settles: the
//! consumer ends with nothing pending and nothing unacked, so no message
//! can run again.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use common::{LocalGateway, NatsServer, nats_server_binary, poll, python_function, temp_dir};
use md5::{Digest, Md5};
use serde_json::Value;

/// A function that writes each batch it gets to a file of its own in
/// `markers`; `MODE` says how it answers: `ok`, `partial` (messages 3 and 7
/// fail on their first delivery), `error` (a first delivery raises) or
/// `always` (every delivery raises).
fn consumer_function(name: &str, markers: &Path, mode: &str, queue: &str) -> String {
    let code = r#"import json, os, uuid
def handler(event, context):
    d = os.environ["MARKER_DIR"]
    name = os.path.join(d, uuid.uuid4().hex)
    with open(name + ".tmp", "w") as f:
        json.dump({"event": event, "request_id": context.aws_request_id}, f)
    os.rename(name + ".tmp", name + ".json")
    records = event["Records"]
    first = [r for r in records if r["attributes"]["ApproximateReceiveCount"] == "1"]
    mode = os.environ["MODE"]
    if mode == "partial":
        failed = [r["messageId"] for r in first if json.loads(r["body"])["n"] in (3, 7)]
        return {"batchItemFailures": [{"itemIdentifier": i} for i in failed]}
    if mode == "error" and first:
        raise RuntimeError("the first delivery fails")
    if mode == "always":
        raise RuntimeError("every delivery fails")
    return {}"#;
    python_function(
        name,
        code,
        &format!(
            "  env:\n    MARKER_DIR: {}\n    MODE: {mode}\n  triggers:\n    - queue:\n{queue}",
            markers.display()
        ),
    )
}

/// The batches a function got, in the order they ran (by the file's time
/// is not reliable: by the receive counts and sizes the tests check instead).
fn batches(markers: &Path) -> Vec<Vec<Value>> {
    common::read_markers(markers)
        .into_iter()
        .map(|m| {
            m["event"]["Records"]
                .as_array()
                .cloned()
                .expect("a Records list")
        })
        .collect()
}

fn n_of(record: &Value) -> u64 {
    let body: Value = serde_json::from_str(record["body"].as_str().expect("body")).expect("JSON");
    body["n"].as_u64().expect("n")
}

fn receive_count(record: &Value) -> &str {
    record["attributes"]["ApproximateReceiveCount"]
        .as_str()
        .expect("a string")
}

/// Waits (bounded) until the function got `records` records in all.
async fn wait_records(markers: &Path, records: usize, gw: &LocalGateway) -> Vec<Vec<Value>> {
    poll(200, Duration::from_millis(200), || {
        let got = batches(markers);
        async move { (got.iter().map(Vec::len).sum::<usize>() >= records).then_some(got) }
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "{records} records did not arrive in {}; log: {}",
            markers.display(),
            gw.log()
        )
    })
}

/// Waits (bounded) until the consumer of `function` on `stream` has
/// delivered everything and has nothing unacked: nothing runs again.
async fn wait_settled(js: &jetstream::Context, stream: &str, function: &str, gw: &LocalGateway) {
    let name = format!("queue-{function}-0");
    let settled = poll(200, Duration::from_millis(200), || {
        let js = js.clone();
        let name = name.clone();
        async move {
            let stream = js.get_stream(stream).await.ok()?;
            let c = stream
                .get_consumer::<consumer::pull::Config>(&name)
                .await
                .ok()?;
            let info = c.get_info().await.ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        }
    })
    .await;
    assert!(
        settled.is_some(),
        "{stream} did not settle; log: {}",
        gw.log()
    );
}

async fn create_stream(js: &jetstream::Context, name: &str, subject: &str) {
    js.create_stream(stream::Config {
        name: name.to_string(),
        subjects: vec![subject.to_string()],
        ..Default::default()
    })
    .await
    .expect("create stream");
}

async fn publish(js: &jetstream::Context, subject: &str, n: u64) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("order-kind", "test");
    js.publish_with_headers(
        subject.to_string(),
        headers,
        format!("{{\"n\":{n}}}").into(),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_windows_and_partial_failures() {
    let Some(bin) = nats_server_binary() else {
        return;
    };
    let nats = NatsServer::start(&bin, "queue-source");
    let client = async_nats::connect(nats.url.as_str())
        .await
        .expect("connect");
    let js = jetstream::new(client);
    // Streams the test owns, filled before the gateway starts, so each
    // batch takes what is stored.
    for (stream, subject) in [
        ("ONE", "t.one"),
        ("TEN", "t.ten"),
        ("PARTIAL", "t.partial"),
        ("ERR", "t.err"),
    ] {
        create_stream(&js, stream, subject).await;
    }
    for n in 0..10 {
        publish(&js, "t.one", n).await;
        publish(&js, "t.ten", n).await;
        publish(&js, "t.partial", n).await;
    }
    for n in 0..3 {
        publish(&js, "t.err", n).await;
    }
    let marks: BTreeMap<&str, _> = ["one", "ten", "window", "partial", "err"]
        .into_iter()
        .map(|f| (f, temp_dir(&format!("queue-{f}-markers"))))
        .collect();
    let manifests = [
        (
            "one.yaml",
            consumer_function(
                "one",
                &marks["one"],
                "ok",
                "        stream: ONE\n        batchSize: 1\n",
            ),
        ),
        (
            "ten.yaml",
            consumer_function(
                "ten",
                &marks["ten"],
                "ok",
                "        stream: TEN\n        batchSize: 10\n",
            ),
        ),
        (
            "window.yaml",
            consumer_function(
                "window",
                &marks["window"],
                "ok",
                "        subject: q.window\n        batchSize: 10\n        maximumBatchingWindowSeconds: 2\n",
            ),
        ),
        (
            "partial.yaml",
            consumer_function(
                "partial",
                &marks["partial"],
                "partial",
                "        stream: PARTIAL\n        batchSize: 10\n",
            ),
        ),
        (
            "err.yaml",
            consumer_function(
                "err",
                &marks["err"],
                "error",
                "        stream: ERR\n        batchSize: 10\n",
            ),
        ),
    ];
    let mut gw = LocalGateway::start("queue-source", &manifests, &["--queue", nats.url.as_str()]);

    // The window: the gateway creates the stream over the subject; five
    // messages published 100 ms apart make one batch within 2 s.
    let created = poll(150, Duration::from_millis(200), || {
        let js = js.clone();
        async move { js.get_stream("PORCHLIGHT_Q_q_window").await.ok() }
    })
    .await;
    assert!(
        created.is_some(),
        "no stream for q.window; log: {}",
        gw.log()
    );
    for n in 0..5 {
        publish(&js, "q.window", n).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Batch size 1: ten invocations of one record each.
    wait_records(&marks["one"], 10, &gw).await;
    wait_settled(&js, "ONE", "one", &gw).await;
    let one = batches(&marks["one"]);
    assert_eq!(one.len(), 10, "{one:?}");
    assert!(one.iter().all(|b| b.len() == 1), "{one:?}");
    let mut ns: Vec<u64> = one.iter().map(|b| n_of(&b[0])).collect();
    ns.sort_unstable();
    assert_eq!(ns, (0..10).collect::<Vec<_>>());

    // Batch size 10: one invocation of ten records, in the SQS shape.
    wait_records(&marks["ten"], 10, &gw).await;
    wait_settled(&js, "TEN", "ten", &gw).await;
    let ten = batches(&marks["ten"]);
    assert_eq!(ten.len(), 1, "one batch: {ten:?}");
    assert_eq!(ten[0].len(), 10);
    let ns: Vec<u64> = ten[0].iter().map(n_of).collect();
    assert_eq!(ns, (0..10).collect::<Vec<_>>(), "in stream order");
    let r = &ten[0][0];
    let mut keys: Vec<&str> = r
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "attributes",
            "awsRegion",
            "body",
            "eventSource",
            "eventSourceARN",
            "md5OfBody",
            "messageAttributes",
            "messageId",
            "receiptHandle"
        ]
    );
    assert_eq!(r["eventSource"], "aws:sqs");
    assert_eq!(
        r["eventSourceARN"],
        "arn:aws:sqs:us-east-1:000000000000:TEN"
    );
    assert_eq!(r["awsRegion"], "us-east-1");
    assert_eq!(r["body"], "{\"n\":0}");
    let md5: String = Md5::digest(b"{\"n\":0}")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(r["md5OfBody"], md5);
    assert_eq!(receive_count(r), "1");
    assert_eq!(
        r["messageAttributes"]["order-kind"],
        serde_json::json!({"stringValue": "test", "dataType": "String"})
    );
    for key in [
        "SentTimestamp",
        "ApproximateFirstReceiveTimestamp",
        "SenderId",
    ] {
        assert!(r["attributes"][key].is_string(), "{key}: {r}");
    }

    // The window: one batch of five.
    wait_records(&marks["window"], 5, &gw).await;
    wait_settled(&js, "PORCHLIGHT_Q_q_window", "window", &gw).await;
    let window = batches(&marks["window"]);
    assert_eq!(window.len(), 1, "one batch: {window:?}");
    assert_eq!(window[0].len(), 5);
    assert_eq!(
        window[0][0]["eventSourceARN"],
        "arn:aws:sqs:us-east-1:000000000000:q.window"
    );

    // A partial batch failure: ten, then only the two that failed, again.
    wait_records(&marks["partial"], 12, &gw).await;
    wait_settled(&js, "PARTIAL", "partial", &gw).await;
    let mut partial = batches(&marks["partial"]);
    partial.sort_by_key(Vec::len);
    assert_eq!(partial.len(), 2, "{partial:?}");
    let (again, first) = (&partial[0], &partial[1]);
    assert_eq!(first.len(), 10);
    assert!(first.iter().all(|r| receive_count(r) == "1"));
    let mut ns: Vec<u64> = again.iter().map(n_of).collect();
    ns.sort_unstable();
    assert_eq!(ns, [3, 7], "only the failed items run again");
    assert!(again.iter().all(|r| receive_count(r) == "2"), "{again:?}");
    for r in again {
        let before = first
            .iter()
            .find(|f| n_of(f) == n_of(r))
            .expect("in the first");
        assert_eq!(r["messageId"], before["messageId"], "a stable messageId");
    }

    // A function error: the whole batch again.
    wait_records(&marks["err"], 6, &gw).await;
    wait_settled(&js, "ERR", "err", &gw).await;
    let err = batches(&marks["err"]);
    assert_eq!(err.len(), 2, "{err:?}");
    for batch in &err {
        let mut ns: Vec<u64> = batch.iter().map(n_of).collect();
        ns.sort_unstable();
        assert_eq!(ns, [0, 1, 2]);
    }
    let mut counts: Vec<&str> = err.iter().map(|b| receive_count(&b[0])).collect();
    counts.sort_unstable();
    assert_eq!(counts, ["1", "2"]);

    let log = gw.log();
    assert!(gw.stop(), "stopped by itself; log: {log}");
    for (_, dir) in marks {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_failing_five_times_is_a_dead_letter() {
    let Some(bin) = nats_server_binary() else {
        return;
    };
    let nats = NatsServer::start(&bin, "queue-dead");
    let client = async_nats::connect(nats.url.as_str())
        .await
        .expect("connect");
    let js = jetstream::new(client);
    create_stream(&js, "DEAD", "t.dead").await;
    publish(&js, "t.dead", 42).await;
    let markers = temp_dir("queue-dead-markers");
    let manifest = consumer_function(
        "dead",
        &markers,
        "always",
        "        stream: DEAD\n        batchSize: 10\n",
    );
    let mut gw = LocalGateway::start(
        "queue-dead",
        &[("dead.yaml", manifest)],
        &["--queue", nats.url.as_str()],
    );
    // Delivered 5 times (1 + 2 + 4 + 8 s apart), then dead-lettered.
    let letters = poll(200, Duration::from_millis(200), || async {
        let v: Value = reqwest::get(gw.url("/v1/dead-letters?function=dead"))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let letters = v["deadLetters"].as_array().cloned().unwrap_or_default();
        (!letters.is_empty()).then_some(letters)
    })
    .await
    .unwrap_or_else(|| panic!("no dead letter; log: {}", gw.log()));
    wait_settled(&js, "DEAD", "dead", &gw).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter["trigger"], "queue");
    assert_eq!(letter["attempts"], 5);
    let record = &letter["event"]["Records"][0];
    assert_eq!(n_of(record), 42);
    assert_eq!(letter["requestId"], record["messageId"]);
    let runs = batches(&markers);
    let mut counts: Vec<String> = runs
        .iter()
        .map(|b| receive_count(&b[0]).to_string())
        .collect();
    counts.sort_unstable();
    assert_eq!(
        counts,
        ["1", "2", "3", "4", "5"],
        "five deliveries, no more"
    );
    assert!(gw.stop(), "stopped by itself");
    let _ = std::fs::remove_dir_all(markers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nats_a_queue_trigger_is_reported_at_load() {
    let markers = temp_dir("queue-off-markers");
    let manifest = consumer_function("off", &markers, "ok", "        subject: q.off\n");
    let mut gw = LocalGateway::start("queue-off", &[("off.yaml", manifest)], &[]);
    let warned = poll(100, Duration::from_millis(100), || async {
        gw.log()
            .lines()
            .any(|l| {
                l.contains("a queue trigger needs the gateway on NATS JetStream")
                    && l.contains("--queue nats://HOST:PORT")
            })
            .then_some(())
    })
    .await;
    assert!(warned.is_some(), "no warning; log: {}", gw.log());
    assert!(gw.stop(), "stopped by itself");
    let _ = std::fs::remove_dir_all(markers);
}
