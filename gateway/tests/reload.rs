//! Local mode's reload: the folder is watched, and a new, changed or
//! deleted manifest, or a changed `code.path` file, applies on the next
//! invocation without a restart. Every wait is a bounded poll (the watch
//! fires within a fraction of a second; up to 10 s is allowed).

mod common;

use std::time::Duration;

use common::{LocalGateway, python_function};
use serde_json::Value;

/// Polls every 100 ms for up to 10 s.
const TRIES: u32 = 100;
const EVERY: Duration = Duration::from_millis(100);

struct Answer {
    status: u16,
    error_type: Option<String>,
    body: String,
}

/// Starts local mode on `manifests` and waits (bounded) until it is ready.
async fn start(tag: &str, manifests: &[(&str, String)], extra: &[&str]) -> LocalGateway {
    let gw = LocalGateway::start(tag, manifests, extra);
    assert!(
        common::wait_ready(&gw).await,
        "never ready; log: {}",
        gw.log()
    );
    gw
}

async fn invoke(gw: &LocalGateway, name: &str, event: &str) -> Answer {
    let r = common::invoke(gw, name, event).await;
    Answer {
        status: r.status,
        error_type: r.header("x-amzn-errortype"),
        body: r.body,
    }
}

/// Invokes until the answer's body is `want` (bounded); returns whether it came.
async fn answers(gw: &LocalGateway, name: &str, want: &str) -> bool {
    common::poll(TRIES, EVERY, || async {
        let a = invoke(gw, name, "{}").await;
        (a.status == 200 && a.body == want).then_some(())
    })
    .await
    .is_some()
}

/// Waits (bounded) until the gateway's log has a line with every one of `parts`.
async fn logged(gw: &LocalGateway, parts: &[&str]) -> bool {
    common::poll(TRIES, EVERY, || async {
        gw.log()
            .lines()
            .any(|l| parts.iter().all(|p| l.contains(p)))
            .then_some(())
    })
    .await
    .is_some()
}

fn returning(name: &str, value: &str) -> String {
    python_function(
        name,
        &format!("def handler(event, context):\n    return \"{value}\""),
        "",
    )
}

fn write(gw: &LocalGateway, file: &str, yaml: &str) {
    std::fs::write(gw.dir.join("functions").join(file), yaml).expect("write manifest");
}

#[tokio::test]
async fn a_new_manifest_makes_its_function_invocable() {
    let gw = start(
        "reload-add",
        &[("hello.yaml", returning("hello", "hi"))],
        &[],
    )
    .await;
    assert!(
        gw.stdout_has(|l| l.contains("reload: watching")),
        "the banner says the folder is watched: {}",
        gw.stdout()
    );
    let missing = invoke(&gw, "world", "{}").await;
    assert_eq!(missing.status, 404, "{}", missing.body);

    write(&gw, "world.yaml", &returning("world", "new"));
    assert!(
        answers(&gw, "world", "\"new\"").await,
        "the new function never answered; log: {}",
        gw.log()
    );
    assert!(
        logged(&gw, &["reloaded world.yaml", "world added"]).await,
        "{}",
        gw.log()
    );
    let hello = invoke(&gw, "hello", "{}").await;
    assert_eq!((hello.status, hello.body.as_str()), (200, "\"hi\""));
}

#[tokio::test]
async fn edited_inline_code_runs_on_the_next_invocation_even_when_warm() {
    let gw = start(
        "reload-edit",
        &[("hello.yaml", returning("hello", "v1"))],
        &[],
    )
    .await;
    let first = invoke(&gw, "hello", "{}").await;
    assert_eq!(
        (first.status, first.body.as_str()),
        (200, "\"v1\""),
        "{}",
        gw.log()
    );

    // An environment is warm now; the edit drains it and starts a new one.
    write(&gw, "hello.yaml", &returning("hello", "v2"));
    assert!(
        answers(&gw, "hello", "\"v2\"").await,
        "the edit never applied; log: {}",
        gw.log()
    );
    assert!(
        logged(
            &gw,
            &[
                "reloaded hello.yaml",
                // One or more: the autoscaler may have started a second.
                "hello changed (",
                "draining)"
            ]
        )
        .await,
        "{}",
        gw.log()
    );
    for _ in 0..3 {
        let again = invoke(&gw, "hello", "{}").await;
        assert_eq!(again.body, "\"v2\"", "the old environment got an event");
    }
}

#[tokio::test]
async fn a_deleted_manifest_answers_resource_not_found() {
    let gw = start(
        "reload-delete",
        &[
            ("hello.yaml", returning("hello", "hi")),
            ("bye.yaml", returning("bye", "bye")),
        ],
        &[],
    )
    .await;
    assert_eq!(invoke(&gw, "bye", "{}").await.status, 200, "{}", gw.log());
    std::fs::remove_file(gw.dir.join("functions/bye.yaml")).expect("rm");
    let gone = common::poll(TRIES, EVERY, || async {
        let a = invoke(&gw, "bye", "{}").await;
        (a.status == 404).then_some(a)
    })
    .await
    .unwrap_or_else(|| panic!("bye still answers; log: {}", gw.log()));
    assert_eq!(
        gone.error_type.as_deref(),
        Some("ResourceNotFoundException")
    );
    let body: Value = serde_json::from_str(&gone.body).expect("json");
    assert_eq!(body["Type"], "User", "{body}");
    assert!(
        body["message"].as_str().unwrap_or("").contains("bye"),
        "{body}"
    );
    assert!(
        logged(&gw, &["reloaded bye.yaml", "bye removed"]).await,
        "{}",
        gw.log()
    );
    assert_eq!(invoke(&gw, "hello", "{}").await.status, 200);
}

#[tokio::test]
async fn an_edited_code_path_file_changes_the_answer() {
    let code = common::temp_dir("reload-code");
    std::fs::write(
        code.join("app.py"),
        "def handler(event, context):\n    return \"one\"\n",
    )
    .expect("write code");
    let manifest = format!(
        "apiVersion: porchlight.dev/v1alpha1\nkind: Function\nmetadata:\n  name: pathfn\nspec:\n  runtime: python3.12\n  handler: app.handler\n  code:\n    path: {}\n",
        code.display()
    );
    let gw = start("reload-path", &[("pathfn.yaml", manifest)], &[]).await;
    let first = invoke(&gw, "pathfn", "{}").await;
    assert_eq!(
        (first.status, first.body.as_str()),
        (200, "\"one\""),
        "{}",
        gw.log()
    );

    // Same length, within the same second: a byte-code cache keyed by size
    // and mtime would still run "one".
    std::fs::write(
        code.join("app.py"),
        "def handler(event, context):\n    return \"two\"\n",
    )
    .expect("edit code");
    assert!(
        answers(&gw, "pathfn", "\"two\"").await,
        "the code edit never applied; log: {}",
        gw.log()
    );
    assert!(
        logged(&gw, &["reloaded pathfn.yaml", "pathfn changed"]).await,
        "{}",
        gw.log()
    );
    let _ = std::fs::remove_dir_all(&code);
}

#[tokio::test]
async fn a_typo_keeps_the_old_function_and_names_the_file_line_and_a_suggestion() {
    let gw = start(
        "reload-typo",
        &[("hello.yaml", returning("hello", "v1"))],
        &[],
    )
    .await;
    assert_eq!(
        invoke(&gw, "hello", "{}").await.body,
        "\"v1\"",
        "{}",
        gw.log()
    );

    let typo = python_function(
        "hello",
        "def handler(event, context):\n    return \"v2\"",
        "  timout: 3\n",
    );
    write(&gw, "hello.yaml", &typo);
    assert!(
        logged(
            &gw,
            &[
                "hello.yaml:12:",
                "timout",
                "did you mean `timeoutSeconds`?",
                "last good version"
            ]
        )
        .await,
        "no error naming the file, line and suggestion; log: {}",
        gw.log()
    );
    let kept = invoke(&gw, "hello", "{}").await;
    assert_eq!((kept.status, kept.body.as_str()), (200, "\"v1\""));
    assert!(
        !gw.log().contains("reloaded hello.yaml"),
        "a bad edit changed the function: {}",
        gw.log()
    );

    // Fixed: the edit applies, and local mode never stopped.
    write(&gw, "hello.yaml", &returning("hello", "v3"));
    assert!(answers(&gw, "hello", "\"v3\"").await, "{}", gw.log());
}

#[tokio::test]
async fn an_invocation_in_flight_during_a_change_finishes_with_the_old_code() {
    let slow = |value: &str| {
        python_function(
            "slow",
            &format!(
                "import time\ndef handler(event, context):\n    time.sleep(event.get(\"sleep\", 0))\n    return \"{value}\""
            ),
            "  timeoutSeconds: 30\n",
        )
    };
    let gw = start("reload-inflight", &[("slow.yaml", slow("old"))], &[]).await;
    let first = invoke(&gw, "slow", "{}").await;
    assert_eq!(first.body, "\"old\"", "{}", gw.log());

    let in_flight = {
        let url = gw.url("/2015-03-31/functions/slow/invocations");
        tokio::spawn(async move {
            let r = reqwest::Client::new()
                .post(url)
                .body(r#"{"sleep": 3}"#)
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .expect("invoke");
            let function_error = r.headers().contains_key("x-amz-function-error");
            (
                r.status().as_u16(),
                function_error,
                r.text().await.expect("body"),
            )
        })
    };
    // Wait until the gateway has it in flight.
    let status_url = gw.url("/v1/functions");
    let running = common::poll(TRIES, EVERY, || async {
        let v: Value = reqwest::get(&status_url).await.ok()?.json().await.ok()?;
        let functions = v["functions"].as_array()?.clone();
        functions
            .iter()
            .any(|f| f["name"] == "slow" && f["inFlight"].as_u64() == Some(1))
            .then_some(())
    })
    .await;
    assert!(
        running.is_some(),
        "the slow invocation never ran; log: {}",
        gw.log()
    );

    write(&gw, "slow.yaml", &slow("new"));
    assert!(answers(&gw, "slow", "\"new\"").await, "{}", gw.log());
    let (status, function_error, body) = tokio::time::timeout(Duration::from_secs(60), in_flight)
        .await
        .expect("the in-flight invocation finished")
        .expect("join");
    assert_eq!(
        (status, function_error, body.as_str()),
        (200, false, "\"old\""),
        "log: {}",
        gw.log()
    );
}

#[tokio::test]
async fn no_watch_says_so_in_the_banner() {
    let gw = start(
        "reload-off",
        &[("hello.yaml", returning("hello", "hi"))],
        &["--no-watch"],
    )
    .await;
    assert!(
        gw.stdout_has(|l| l.contains("reload: off (--no-watch)")),
        "{}",
        gw.stdout()
    );
    assert_eq!(invoke(&gw, "hello", "{}").await.status, 200);
}
