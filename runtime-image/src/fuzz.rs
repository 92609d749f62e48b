//! Fuzzing of what the shim reads from the runtime it serves: the Runtime
//! API's requests (paths, headers, bodies) and the error bodies runtimes
//! post. In the crate because the Runtime API and the environment are
//! private to it.
//!
//! Each target runs `PORCHLIGHT_FUZZ_CASES` cases (default 256);
//! `tests/fuzz.sh` runs them long.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use bytes::Bytes;
use clap::Parser as _;
use http_body_util::BodyExt as _;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseResult, TestRunner};
use serde_json::{Map, Value, json};
use tower::ServiceExt as _;

use crate::config::Config;
use crate::environment::{Environment, InvokeRequest, Outcome, RuntimeAnswer};
use crate::error::normalise_error;
use crate::runtime_api::router;

/// Cases per target: `PORCHLIGHT_FUZZ_CASES`, default 256.
fn cases() -> u32 {
    std::env::var("PORCHLIGHT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// Runs `property` on `cases()` inputs of `strategy` and prints how many
/// executions the target made (shrinking included) and its slowest case.
fn run<S: Strategy>(target: &str, strategy: S, property: impl Fn(S::Value) -> TestCaseResult) {
    let mut runner = TestRunner::new(RunnerConfig {
        cases: cases(),
        failure_persistence: None,
        max_global_rejects: u32::MAX,
        ..RunnerConfig::default()
    });
    let executions = Cell::new(0u64);
    let slowest = Cell::new(Duration::ZERO);
    let started = Instant::now();
    let result = runner.run(&strategy, |input| {
        executions.set(executions.get() + 1);
        let t = Instant::now();
        let r = property(input);
        slowest.set(slowest.get().max(t.elapsed()));
        r
    });
    println!(
        "fuzz target {target}: {} executions in {:.1} s, slowest {:.1} ms, {}",
        executions.get(),
        started.elapsed().as_secs_f64(),
        slowest.get().as_secs_f64() * 1000.0,
        if result.is_ok() {
            "no failures"
        } else {
            "FAILED"
        }
    );
    if let Err(e) = result {
        panic!("fuzz target {target}: {e}");
    }
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "([a-zA-Z0-9]|%[0-9A-Fa-f]{2}|%[0-9A-Fa-f]?|[+=&;:/.,\" *$-]){0,16}",
        Just(String::new()),
    ]
}

/// Arbitrary JSON, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((text(), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// An error body as runtimes post it: Lambda's shape with fields of any
/// type, plain text, arbitrary bytes, or text longer than the shim keeps.
fn error_body() -> impl Strategy<Value = Vec<u8>> {
    let field = |name: &'static str| prop::option::of(json_value()).prop_map(move |v| (name, v));
    let skeleton = (
        prop::collection::vec(
            prop_oneof![
                field("errorType"),
                field("errorMessage"),
                field("errorCause"),
                field("stackTrace"),
                field("requestId"),
            ],
            0..5,
        ),
        prop::option::of(text()).prop_map(|t| t.map(Value::String)),
    )
        .prop_map(|(fields, error_type)| {
            let mut map: Map<String, Value> = fields
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
                .collect();
            if let Some(t) = error_type {
                map.insert("errorType".into(), t);
            }
            serde_json::to_vec(&Value::Object(map)).expect("serialises")
        });
    prop_oneof![
        4 => skeleton,
        2 => prop::collection::vec(any::<u8>(), 0..256),
        2 => text().prop_map(String::into_bytes),
        1 => json_value().prop_map(|v| serde_json::to_vec(&v).expect("serialises")),
        1 => (60_000usize..70_000, prop::sample::select(vec!["x", "é", "\u{1F600}", "\u{FF}"]))
            .prop_map(|(n, s)| s.repeat(n / s.len()).into_bytes()),
        1 => (1usize..20_000).prop_map(|n| "[".repeat(n).into_bytes()),
    ]
}

fn header_value() -> impl Strategy<Value = HeaderValue> {
    prop_oneof![
        prop::sample::select(vec![
            "Runtime.Custom",
            "Unhandled",
            "application/json",
            "application/vnd.aws.lambda.error.cause+json",
            "0",
            "6291556",
            "6291557",
            "18446744073709551616",
            "-1",
            "",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        text().prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..200),
    ]
    .prop_map(|b| {
        let clean: Vec<u8> = b
            .into_iter()
            .map(|c| {
                if (c < 0x20 && c != b'\t') || c == 0x7f {
                    b' '
                } else {
                    c
                }
            })
            .collect();
        HeaderValue::from_bytes(&clean).expect("no control characters left")
    })
}

fn headers() -> impl Strategy<Value = HeaderMap> {
    let name = prop_oneof![
        prop::sample::select(vec![
            "lambda-runtime-function-error-type",
            "content-type",
            "content-length",
            "lambda-runtime-aws-request-id",
            "transfer-encoding",
        ])
        .prop_map(HeaderName::from_static),
        "[a-z0-9!#$%&'*+.^_`|~-]{1,16}"
            .prop_map(|n| HeaderName::from_bytes(n.as_bytes()).expect("a token is a name")),
    ];
    prop::collection::vec((name, header_value()), 0..5).prop_map(|pairs| {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k, v);
        }
        h
    })
}

#[test]
fn fuzz_normalise_error() {
    let input = (
        error_body(),
        prop::option::of(prop_oneof![text(), "[ A-Za-z.]{120,140}"]),
        prop::sample::select(vec!["Function.Unknown", "Runtime.Unknown"]),
    );
    run(
        "normalise_error",
        input,
        |(body, header_type, default_type)| {
            let n = normalise_error(&body, header_type.as_deref(), default_type);
            let v: Value = serde_json::from_slice(&n.body).expect("the body is JSON");
            let object = v.as_object().expect("an object");
            prop_assert!(!n.error_type.is_empty());
            prop_assert_eq!(object.get("errorType"), Some(&json!(n.error_type)));
            let message = object["errorMessage"].as_str().expect("a string message");
            prop_assert!(!object.contains_key("errorCause"));
            match serde_json::from_slice::<Value>(&body) {
                Ok(Value::Object(original)) => {
                    // Every other field is kept as it was (serde_json may move a
                    // float by one ULP on its way through, so compare after the same trip).
                    for (k, value) in &original {
                        if !["errorType", "errorMessage", "errorCause"].contains(&k.as_str()) {
                            let trip: Value =
                                serde_json::from_str(&value.to_string()).expect("JSON");
                            prop_assert_eq!(object.get(k), Some(&trip));
                        }
                    }
                    if let Some(Value::String(t)) = original.get("errorType")
                        && !t.is_empty()
                    {
                        prop_assert_eq!(&n.error_type, t, "the body's type wins");
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    // Invalid UTF-8 may triple in size; nothing beyond that.
                    prop_assert!(message.len() <= 3 * 64 * 1024);
                }
            }
            Ok(())
        },
    );
}

const NEXT: &str = "/2018-06-01/runtime/invocation/next";

/// Request ids the invocations use and the paths name.
const IDS: [&str; 3] = ["req-1", "req-2", "9f1c0b6e-2f1e-4a7e-8a0c-000000000000"];

#[derive(Debug, Clone)]
struct ApiCall {
    method: String,
    path: String,
    /// The request id and whether this is `/response` (else `/error`), when
    /// the path was built to answer one.
    answers: Option<(String, bool)>,
    headers: HeaderMap,
    body: Vec<u8>,
}

#[derive(Debug, Clone)]
struct Scenario {
    concurrency: u32,
    /// The runtime is still in its init (else: ready).
    starting: bool,
    invocations: Vec<String>,
    calls: Vec<ApiCall>,
}

fn request_id() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(IDS.to_vec()).prop_map(String::from),
        1 => text(),
    ]
}

fn api_call() -> impl Strategy<Value = ApiCall> {
    // An id is written with `%` escaped, so the path names exactly it.
    let answer = (request_id(), any::<bool>()).prop_map(|(id, response)| {
        let kind = if response { "response" } else { "error" };
        let path = format!(
            "/2018-06-01/runtime/invocation/{}/{kind}",
            id.replace('%', "%25")
        );
        (path, Some((id, response)))
    });
    let path = prop_oneof![
        3 => Just((NEXT.to_string(), None)),
        7 => answer,
        1 => Just(("/2018-06-01/runtime/init/error".to_string(), None)),
        1 => Just(("/2018-06-01/ping".to_string(), None)),
        1 => (text(), text()).prop_map(|(id, rest)| (format!("/2018-06-01/runtime/invocation/{id}/{rest}"), None)),
        1 => text().prop_map(|t| (format!("/{t}"), None)),
    ];
    let method = prop_oneof![
        6 => Just("POST".to_string()),
        3 => Just("GET".to_string()),
        1 => prop::sample::select(vec!["PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]).prop_map(String::from),
        1 => "[A-Z]{1,10}",
    ];
    let body = prop_oneof![
        3 => error_body(),
        1 => json_value().prop_map(|v| serde_json::to_vec(&v).expect("serialises")),
        1 => Just(Vec::new()),
    ];
    (method, path, headers(), body).prop_map(|(method, (path, answers), headers, body)| ApiCall {
        method,
        path,
        answers,
        headers,
        body,
    })
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        1u32..=3,
        any::<bool>(),
        prop::collection::vec(request_id().prop_map(|id| id.replace('%', "_")), 0..4),
        prop::collection::vec(api_call(), 1..10),
    )
        .prop_map(|(concurrency, starting, invocations, calls)| Scenario {
            concurrency,
            starting,
            invocations,
            calls,
        })
}

fn environment(concurrency: u32) -> Arc<Environment> {
    let concurrency = concurrency.to_string();
    let settings = Config::try_parse_from([
        "porchlight-runtime",
        "--runtime",
        "provided",
        "--environment-id",
        "env-fuzz",
        "--concurrency",
        concurrency.as_str(),
    ])
    .expect("arguments")
    .validate()
    .expect("valid");
    Environment::new(settings)
}

/// What cannot be in a URI: escaped in generated paths (`%` stays).
fn uri(path: &str) -> String {
    let mut out = String::new();
    for c in path.chars() {
        if c.is_ascii_graphic() && !"\"#<>`{}|\\^[]".contains(c) {
            out.push(c);
        } else {
            let mut buf = [0; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

/// An error answer: Lambda's JSON shape.
fn lambda_shaped(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body)
        .is_ok_and(|v| v["errorType"].is_string() && v["errorMessage"].is_string())
}

/// One scenario: invocations in flight, then the calls a runtime (a broken
/// or hostile one) makes. Every call is answered (a `/next` may park: no
/// event is coming), below 500, errors in Lambda's shape, and an accepted
/// answer reaches its invocation.
async fn play(s: &Scenario) -> TestCaseResult {
    let env = environment(s.concurrency);
    let generation = if s.starting {
        env.begin_generation()
    } else {
        env.force_ready()
    };
    let api = router(env.clone(), generation);
    let invocations: Vec<_> = s
        .invocations
        .iter()
        .map(|id| {
            let env = env.clone();
            let request = InvokeRequest {
                request_id: Arc::from(id.as_str()),
                event: Bytes::from_static(br#"{"hello":"world"}"#),
                trace_id: "Root=1-00000000-000000000000000000000000".into(),
                client_context: None,
                log_tail: true,
            };
            (
                id.clone(),
                tokio::spawn(async move { env.invoke(request).await.outcome }),
            )
        })
        .collect();
    tokio::task::yield_now().await;
    // Bodies the shim accepted (202) as the answer of each request id.
    let mut accepted: HashMap<String, (bool, Vec<u8>)> = HashMap::new();
    // A 202 to a path with an id escaped some other way.
    let mut answered_unknown = false;
    for call in &s.calls {
        let Ok(mut request) = Request::builder()
            .method(call.method.as_str())
            .uri(uri(&call.path))
            .body(Body::from(call.body.clone()))
        else {
            continue;
        };
        *request.headers_mut() = call.headers.clone();
        let answer =
            tokio::time::timeout(Duration::from_secs(60), api.clone().oneshot(request)).await;
        let Ok(response) = answer else {
            let parks = call.path == NEXT && ["GET", "HEAD"].contains(&call.method.as_str());
            prop_assert!(parks, "no answer to {} {}", call.method, call.path);
            continue;
        };
        let response = response.expect("infallible");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        prop_assert!(
            status.as_u16() < 500,
            "{status} for {} {}",
            call.method,
            call.path
        );
        if !status.is_success() && call.method != "HEAD" {
            prop_assert!(
                lambda_shaped(&body),
                "{status} for {} {} is not Lambda-shaped: {:?}",
                call.method,
                call.path,
                String::from_utf8_lossy(&body)
            );
        }
        if status == StatusCode::ACCEPTED {
            match &call.answers {
                Some((id, response)) => {
                    let first = accepted.insert(id.clone(), (*response, call.body.clone()));
                    prop_assert!(first.is_none(), "{id} was answered twice");
                }
                None => {
                    answered_unknown |= call.path.starts_with("/2018-06-01/runtime/invocation/")
                }
            }
        }
    }
    for (id, handle) in invocations {
        let outcome = if handle.is_finished() || accepted.contains_key(&id) {
            tokio::time::timeout(Duration::from_secs(60), handle)
                .await
                .expect("an answered invocation finishes")
                .expect("the invocation did not panic")
        } else {
            handle.abort();
            continue;
        };
        match (&outcome, accepted.get(&id)) {
            (Outcome::Answer(RuntimeAnswer::Response { body, .. }), Some((true, sent))) => {
                prop_assert_eq!(&body[..], &sent[..]);
            }
            (Outcome::Answer(RuntimeAnswer::Error(e)), Some((false, _))) => {
                prop_assert!(lambda_shaped(&e.body));
            }
            (Outcome::Answer(RuntimeAnswer::Response { .. } | RuntimeAnswer::Error(_)), None) => {
                prop_assert!(
                    answered_unknown,
                    "{id} got an answer the API never accepted"
                );
            }
            (Outcome::DuplicateRequestId | Outcome::Throttled, _) => {}
            (other, Some(_)) => prop_assert!(
                s.invocations.iter().filter(|i| **i == id).count() > 1,
                "{id} was accepted, yet ended {other:?}"
            ),
            (_, None) => {}
        }
    }
    Ok(())
}

#[test]
fn fuzz_runtime_api() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    run("runtime_api", scenario(), |s| runtime.block_on(play(&s)));
}
