//! Per-function async settings, destinations and dead-letter redrive, end
//! to end with the gateway binary in local mode: retries and the maximum
//! event age follow the function's `spec.async`, `onSuccess`/`onFailure`
//! records reach another function in Lambda's exact shape (or a NATS
//! subject), and a redriven dead letter runs again with its request id, on
//! the embedded store and on JetStream.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{
    LocalGateway, NatsServer, nats_server_binary, poll, python_function, read_markers, temp_dir,
};
use serde_json::{Value, json};

/// A function that records each attempt as `<request id>-<random>` in
/// `attempts`, fails while `fail_while` exists (always when it is empty),
/// and otherwise answers `{"answer": 42}`.
fn worker(name: &str, attempts: &Path, fail_while: &str, async_yaml: &str) -> String {
    std::fs::create_dir_all(attempts).expect("attempts dir");
    let code = r#"import os, uuid
def handler(event, context):
    d = os.environ["ATTEMPTS"]
    with open(os.path.join(d, context.aws_request_id + "-" + uuid.uuid4().hex), "w") as f:
        f.write("")
    gate = os.environ.get("FAIL_WHILE", "")
    if gate == "" or os.path.exists(gate):
        raise RuntimeError("failing on purpose")
    return {"answer": 42}"#;
    let fail = if fail_while.is_empty() {
        String::new()
    } else {
        format!("    FAIL_WHILE: {fail_while}\n")
    };
    python_function(
        name,
        code,
        &format!(
            "  env:\n    ATTEMPTS: {}\n{fail}{async_yaml}",
            attempts.display()
        ),
    )
}

/// A function that always succeeds.
fn succeeding(name: &str, attempts: &Path, async_yaml: &str) -> String {
    worker(name, attempts, "/nonexistent/never", async_yaml)
}

/// A destination function: writes each event it gets as a JSON file in `dir`.
fn sink(dir: &Path) -> String {
    std::fs::create_dir_all(dir).expect("sink dir");
    let code = r#"import json, os, uuid
def handler(event, context):
    with open(os.path.join(os.environ["SINK"], uuid.uuid4().hex + ".json"), "w") as f:
        json.dump(event, f)
    return {}"#;
    python_function(
        "sink",
        code,
        &format!("  env:\n    SINK: {}\n", dir.display()),
    )
}

/// Attempts recorded for `request_id`.
fn attempts_of(dir: &Path, request_id: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("{request_id}-"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Waits (bounded) until `name` is registered.
async fn registered(gw: &LocalGateway, name: &str) {
    let found = poll(100, Duration::from_millis(100), || async move {
        let text = reqwest::get(gw.url("/v1/functions"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.contains(&format!("\"{name}\"")).then_some(())
    })
    .await;
    assert!(found.is_some(), "{name} not registered; log: {}", gw.log());
}

/// Sends an `Event` invoke; answers its request id.
async fn send_event(gw: &LocalGateway, name: &str, body: &str) -> String {
    registered(gw, name).await;
    let r = reqwest::Client::new()
        .post(gw.url(&format!("/2015-03-31/functions/{name}/invocations")))
        .header("x-amz-invocation-type", "Event")
        .body(body.to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 202, "{}", gw.log());
    r.headers()
        .get("x-amzn-requestid")
        .and_then(|v| v.to_str().ok())
        .expect("a request id")
        .to_string()
}

/// Waits (bounded, 60 s) for the sink's record of `request_id`.
async fn record_of(gw: &LocalGateway, sink: &Path, request_id: &str) -> Value {
    let found = poll(300, Duration::from_millis(200), || {
        let records = read_markers(sink);
        async move {
            records
                .into_iter()
                .find(|r| r["requestContext"]["requestId"] == request_id)
        }
    })
    .await;
    found.unwrap_or_else(|| panic!("no record of {request_id}; log: {}", gw.log()))
}

/// Waits until `request_id` has run twice (a redriven dead letter).
async fn ran_twice(gw: &LocalGateway, attempts: &Path, request_id: &str) {
    let ran = poll(300, Duration::from_millis(200), || {
        let n = attempts_of(attempts, request_id);
        async move { (n == 2).then_some(()) }
    })
    .await;
    assert!(
        ran.is_some(),
        "the redriven event did not run; log: {}",
        gw.log()
    );
}

/// The dead letters of `function`.
async fn dead_letters(gw: &LocalGateway, function: &str) -> Vec<Value> {
    let v: Value = reqwest::get(gw.url(&format!("/v1/dead-letters?function={function}")))
        .await
        .expect("list")
        .json()
        .await
        .expect("JSON");
    v["deadLetters"].as_array().cloned().unwrap_or_default()
}

/// Waits (bounded, 60 s) for `function`'s dead letter of `request_id`.
async fn dead_letter_of(gw: &LocalGateway, function: &str, request_id: &str) -> Value {
    let found = poll(300, Duration::from_millis(200), || async move {
        dead_letters(gw, function)
            .await
            .into_iter()
            .find(|l| l["requestId"] == request_id)
    })
    .await;
    found.unwrap_or_else(|| panic!("no dead letter of {request_id}; log: {}", gw.log()))
}

/// `POST /v1/dead-letters/redrive`: status and answer.
async fn redrive(gw: &LocalGateway, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(gw.url("/v1/dead-letters/redrive"))
        .json(&body)
        .send()
        .await
        .expect("redrive");
    let status = r.status().as_u16();
    (status, r.json().await.expect("JSON"))
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort_unstable();
    k
}

/// Checks a record's every key and value but the timestamp.
fn assert_record(
    record: &Value,
    function: &str,
    request_id: &str,
    condition: &str,
    invokes: u64,
    request: &Value,
) {
    assert_eq!(
        keys(record),
        [
            "requestContext",
            "requestPayload",
            "responseContext",
            "responsePayload",
            "timestamp",
            "version"
        ],
        "{record}"
    );
    assert_eq!(record["version"], "1.0");
    let t = record["timestamp"].as_str().expect("timestamp");
    assert!(t.len() == 24 && t.ends_with('Z'), "{t}");
    assert_eq!(
        record["requestContext"],
        json!({
            "requestId": request_id,
            "functionArn": format!("arn:aws:lambda:us-east-1:000000000000:function:{function}:$LATEST"),
            "condition": condition,
            "approximateInvokeCount": invokes,
        })
    );
    assert_eq!(&record["requestPayload"], request);
    if condition == "Success" {
        assert_eq!(
            record["responseContext"],
            json!({"statusCode": 200, "executedVersion": "$LATEST"})
        );
        assert_eq!(record["responsePayload"], json!({"answer": 42}));
    } else {
        assert_eq!(
            record["responseContext"],
            json!({"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"})
        );
        assert_eq!(
            record["responsePayload"]["errorMessage"],
            "failing on purpose"
        );
        assert_eq!(record["responsePayload"]["errorType"], "RuntimeError");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_follow_the_functions_settings_and_records_reach_a_function() {
    let work = temp_dir("async-settings");
    let sink_dir = work.join("sink");
    let on_failure = "  async:\n    maximumRetryAttempts: 0\n    destinations:\n      onFailure: {function: sink}\n";
    let manifests = [
        ("sink.yaml", sink(&sink_dir)),
        (
            "once.yaml",
            worker("once", &work.join("once"), "", on_failure),
        ),
        (
            "twice.yaml",
            worker(
                "twice",
                &work.join("twice"),
                "",
                "  async: {maximumRetryAttempts: 1}\n",
            ),
        ),
        ("plain.yaml", worker("plain", &work.join("plain"), "", "")),
        (
            "ok.yaml",
            succeeding(
                "ok",
                &work.join("ok"),
                "  async:\n    destinations:\n      onSuccess: {function: sink}\n",
            ),
        ),
    ];
    // Retries 100 ms then 200 ms apart, so that a test takes no minutes.
    let gw = LocalGateway::start(
        "async-settings",
        &manifests,
        &["--async-retry-base", "100ms"],
    );

    // maximumRetryAttempts 0: one attempt, then the onFailure record.
    let request = json!({"order": 7, "items": ["a", "b"]});
    let once = send_event(&gw, "once", &request.to_string()).await;
    let record = record_of(&gw, &sink_dir, &once).await;
    assert_record(&record, "once", &once, "RetriesExhausted", 1, &request);
    assert_eq!(attempts_of(&work.join("once"), &once), 1);
    assert!(
        dead_letters(&gw, "once").await.is_empty(),
        "with an onFailure destination nothing is dead-lettered"
    );

    // maximumRetryAttempts 1: two attempts, then a dead letter (no destination).
    let twice = send_event(&gw, "twice", "{}").await;
    let letter = dead_letter_of(&gw, "twice", &twice).await;
    assert_eq!(letter["attempts"], 2, "{letter}");
    assert_eq!(attempts_of(&work.join("twice"), &twice), 2);

    // No spec.async: the gateway's default, three attempts.
    let plain = send_event(&gw, "plain", "{}").await;
    let letter = dead_letter_of(&gw, "plain", &plain).await;
    assert_eq!(letter["attempts"], 3, "{letter}");
    assert_eq!(attempts_of(&work.join("plain"), &plain), 3);

    // onSuccess: the record of a success, the function's answer in it.
    let request = json!({"hello": "world"});
    let ok = send_event(&gw, "ok", &request.to_string()).await;
    let record = record_of(&gw, &sink_dir, &ok).await;
    assert_record(&record, "ok", &ok, "Success", 1, &request);

    // The sink got exactly those two records.
    assert_eq!(read_markers(&sink_dir).len(), 2);
    drop(gw);
    let _ = std::fs::remove_dir_all(&work);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_would_outlive_its_maximum_age_is_given_up_as_event_age_exceeded() {
    let work = temp_dir("async-age");
    let sink_dir = work.join("sink");
    let aged = "  async:\n    maximumEventAgeSeconds: 60\n    destinations:\n      onFailure: {function: sink}\n";
    let manifests = [
        ("sink.yaml", sink(&sink_dir)),
        ("aged.yaml", worker("aged", &work.join("aged"), "", aged)),
    ];
    // The first retry would be due 61 s after the event arrived: past the
    // function's maximum age of 60 s, so it is given up at once.
    let gw = LocalGateway::start("async-age", &manifests, &["--async-retry-base", "61s"]);
    let request = json!({"n": 1});
    let aged_id = send_event(&gw, "aged", &request.to_string()).await;
    let record = record_of(&gw, &sink_dir, &aged_id).await;
    assert_record(&record, "aged", &aged_id, "EventAgeExceeded", 1, &request);
    assert_eq!(attempts_of(&work.join("aged"), &aged_id), 1);
    drop(gw);
    let _ = std::fs::remove_dir_all(&work);
}

/// An event already older than the maximum age when a worker takes it
/// (it waited for the function's only environment) is not run: its record
/// says so, with no invocation and no response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_past_its_maximum_age_before_its_first_attempt_is_not_run() {
    let work = temp_dir("async-stale");
    let sink_dir = work.join("sink");
    let attempts = work.join("slow");
    std::fs::create_dir_all(&attempts).expect("attempts dir");
    let code = r#"import os, time, uuid
def handler(event, context):
    with open(os.path.join(os.environ["ATTEMPTS"], context.aws_request_id + "-" + uuid.uuid4().hex), "w") as f:
        f.write("")
    time.sleep(event.get("sleep", 0))
    return {"answer": 42}"#;
    let slow = python_function(
        "slow",
        code,
        &format!(
            "  env:\n    ATTEMPTS: {}\n  scaling: {{maxScale: 1}}\n  async:\n    destinations:\n      onFailure: {{function: sink}}\n",
            attempts.display()
        ),
    );
    let manifests = [("sink.yaml", sink(&sink_dir)), ("slow.yaml", slow)];
    // Events older than 2 s are not run (the gateway's default maximum age).
    let gw = LocalGateway::start("async-stale", &manifests, &["--async-max-age", "2s"]);
    let first = send_event(&gw, "slow", r#"{"sleep": 4}"#).await;
    let request = json!({"n": 2});
    let stale = send_event(&gw, "slow", &request.to_string()).await;
    let record = record_of(&gw, &sink_dir, &stale).await;
    assert_eq!(
        keys(&record),
        ["requestContext", "requestPayload", "timestamp", "version"],
        "{record}"
    );
    assert_eq!(record["requestContext"]["condition"], "EventAgeExceeded");
    assert_eq!(record["requestContext"]["approximateInvokeCount"], 0);
    assert_eq!(record["requestPayload"], request);
    assert_eq!(attempts_of(&attempts, &stale), 0, "the stale event ran");
    assert_eq!(attempts_of(&attempts, &first), 1);
    drop(gw);
    let _ = std::fs::remove_dir_all(&work);
}

/// Two events of a function that fails while a flag file exists become
/// dead letters; with the flag gone, one is redriven by request id, then
/// the rest by function: each runs again with its own request id and
/// leaves the dead letters.
async fn redrive_runs_dead_letters_again(tag: &str, extra: &[&str]) {
    let work = temp_dir(tag);
    let attempts = work.join("attempts");
    let flag = work.join("failing");
    std::fs::write(&flag, "").expect("flag");
    let manifest = worker(
        "flaky",
        &attempts,
        flag.to_str().expect("utf-8"),
        "  async: {maximumRetryAttempts: 0}\n",
    );
    let gw = LocalGateway::start(tag, &[("flaky.yaml", manifest)], extra);
    let first = send_event(&gw, "flaky", r#"{"n":1}"#).await;
    let second = send_event(&gw, "flaky", r#"{"n":2}"#).await;
    let letter = dead_letter_of(&gw, "flaky", &first).await;
    assert_eq!(letter["event"], json!({"n": 1}));
    dead_letter_of(&gw, "flaky", &second).await;
    assert_eq!(attempts_of(&attempts, &first), 1);
    std::fs::remove_file(&flag).expect("flag");

    // Unknown ones: Lambda's not-found shape.
    let (status, v) = redrive(&gw, json!({"function": "flaky", "requestId": "nope"})).await;
    assert_eq!(
        (status, v["errorType"].as_str()),
        (404, Some("ResourceNotFoundException")),
        "{v}"
    );
    let (status, v) = redrive(&gw, json!({"function": "nobody"})).await;
    assert_eq!(
        (status, v["errorType"].as_str()),
        (404, Some("ResourceNotFoundException")),
        "{v}"
    );
    let (status, v) = redrive(&gw, json!({"requestId": first})).await;
    assert_eq!(
        (status, v["errorType"].as_str()),
        (400, Some("InvalidParameterValueException")),
        "{v}"
    );

    // One, by request id: it runs again (same request id) and succeeds.
    let (status, v) = redrive(&gw, json!({"function": "flaky", "requestId": first})).await;
    assert_eq!((status, v.clone()), (200, json!({"redriven": 1})), "{v}");
    ran_twice(&gw, &attempts, &first).await;
    let left: Vec<Value> = dead_letters(&gw, "flaky").await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["requestId"], second.as_str());

    // The rest, by function.
    let (status, v) = redrive(&gw, json!({"function": "flaky"})).await;
    assert_eq!((status, v.clone()), (200, json!({"redriven": 1})), "{v}");
    ran_twice(&gw, &attempts, &second).await;
    assert!(dead_letters(&gw, "flaky").await.is_empty());
    // Both succeeded: neither came back as a dead letter nor ran a third time.
    let (status, v) = redrive(&gw, json!({"function": "flaky"})).await;
    assert_eq!((status, v.clone()), (200, json!({"redriven": 0})), "{v}");
    assert_eq!(attempts_of(&attempts, &first), 2);
    assert_eq!(attempts_of(&attempts, &second), 2);
    drop(gw);
    let _ = std::fs::remove_dir_all(&work);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_runs_a_dead_letter_again_on_the_embedded_store() {
    let data = temp_dir("redrive-data");
    redrive_runs_dead_letters_again(
        "redrive-file",
        &["--data-dir", data.to_str().expect("utf-8")],
    )
    .await;
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_runs_a_dead_letter_again_on_jetstream() {
    let Some(bin) = nats_server_binary() else {
        return;
    };
    let nats = NatsServer::start(&bin, "redrive");
    redrive_runs_dead_letters_again(
        "redrive-nats",
        &["--queue", &nats.url, "--queue-ack-wait", "2s"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_failure_record_is_published_to_a_nats_subject() {
    let Some(bin) = nats_server_binary() else {
        return;
    };
    let nats = NatsServer::start(&bin, "subject");
    let client = async_nats::connect(nats.url.as_str())
        .await
        .expect("connect");
    let mut records = client.subscribe("orders.failed").await.expect("subscribe");
    client.flush().await.expect("flush");
    let work = temp_dir("subject");
    let manifest = worker(
        "orders",
        &work.join("attempts"),
        "",
        "  async:\n    maximumRetryAttempts: 0\n    destinations:\n      onFailure: {subject: orders.failed}\n",
    );
    let gw = LocalGateway::start(
        "subject",
        &[("orders.yaml", manifest)],
        &["--queue", &nats.url, "--queue-ack-wait", "2s"],
    );
    let request = json!({"order": 1});
    let id = send_event(&gw, "orders", &request.to_string()).await;
    let message = tokio::time::timeout(
        Duration::from_secs(60),
        futures::StreamExt::next(&mut records),
    )
    .await
    .unwrap_or_else(|_| panic!("no record within 60 s; log: {}", gw.log()))
    .expect("a message");
    let record: Value = serde_json::from_slice(&message.payload).expect("JSON");
    assert_record(&record, "orders", &id, "RetriesExhausted", 1, &request);
    assert!(dead_letters(&gw, "orders").await.is_empty());
    drop(gw);
    let _ = std::fs::remove_dir_all(&work);
}
