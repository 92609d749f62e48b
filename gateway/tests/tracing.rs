//! Trace ids and client context reach the function as Lambda passes them
//! (`_X_AMZN_TRACE_ID`, `context.client_context`), sync and async, and
//! with `--otlp-endpoint` the gateway's spans reach an OTLP collector in
//! the caller's trace.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use common::{LocalGateway, poll, python_function, read_markers};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use serde_json::Value;

/// Answers (and with `record`, writes down) what the function sees.
const SEES: &str = r#"import json, os, uuid

def handler(event, context):
    cc = context.client_context
    seen = {
        "trace": os.environ.get("_X_AMZN_TRACE_ID"),
        "custom": cc.custom if cc else None,
        "env": cc.env if cc else None,
        "app_title": cc.client.app_title if cc and cc.client else None,
    }
    if event.get("record"):
        path = os.path.join(os.environ["MARKER_DIR"], uuid.uuid4().hex + ".json")
        with open(path, "w") as f:
            json.dump(seen, f)
    if event.get("fail"):
        raise ValueError("try again")
    return seen
"#;

const GIVEN: &str = "Root=1-65800000-0123456789abcdef01234567;Parent=53995c3f42cd8ad8;Sampled=1";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn start(tag: &str, markers: &Path, extra: &[&str]) -> LocalGateway {
    let env = format!("  env:\n    MARKER_DIR: {}\n", markers.display());
    LocalGateway::start(
        tag,
        &[("sees.yaml", python_function("sees", SEES, &env))],
        extra,
    )
}

async fn invoke(gw: &LocalGateway, headers: &[(&str, &str)], event: &str) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(gw.url("/2015-03-31/functions/sees/invocations"))
        .body(event.to_string());
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.expect("invoke");
    let status = response.status().as_u16();
    let body = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

/// `Root=1-<8 hex>-<24 hex>;Parent=<16 hex>;Sampled=<0|1>`.
fn is_lambda_trace_id(id: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let fields: Vec<&str> = id.split(';').collect();
    let [root, parent, sampled] = fields[..] else {
        return false;
    };
    let root: Vec<&str> = root
        .strip_prefix("Root=1-")
        .unwrap_or("")
        .split('-')
        .collect();
    root.len() == 2
        && hex(root[0], 8)
        && hex(root[1], 24)
        && parent.strip_prefix("Parent=").is_some_and(|p| hex(p, 16))
        && (sampled == "Sampled=0" || sampled == "Sampled=1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_ids_reach_the_function_as_lambda_passes_them() {
    let markers = common::temp_dir("trace-markers");
    let gw = start("trace", &markers, &[]);
    // (a) An X-Amzn-Trace-Id arrives as it was sent.
    let (status, seen) = invoke(&gw, &[("X-Amzn-Trace-Id", GIVEN)], "{}").await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["trace"], GIVEN);
    // It wins over a traceparent.
    let both = [("X-Amzn-Trace-Id", GIVEN), ("traceparent", TRACEPARENT)];
    assert_eq!(invoke(&gw, &both, "{}").await.1["trace"], GIVEN);
    // (b) A traceparent arrives converted.
    let (_, seen) = invoke(&gw, &[("traceparent", TRACEPARENT)], "{}").await;
    assert_eq!(
        seen["trace"],
        "Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=00f067aa0ba902b7;Sampled=1"
    );
    // (c) None: a well-formed one, new for each invocation, its root
    // starting with the time.
    let (_, first) = invoke(&gw, &[], "{}").await;
    let (_, second) = invoke(&gw, &[], "{}").await;
    let (first, second) = (
        first["trace"].as_str().unwrap_or_default().to_string(),
        second["trace"].as_str().unwrap_or_default().to_string(),
    );
    assert!(is_lambda_trace_id(&first), "{first}");
    assert!(is_lambda_trace_id(&second), "{second}");
    assert_ne!(first, second);
    assert!(first.ends_with(";Sampled=0"), "{first}");
    let seconds = u64::from_str_radix(&first[7..15], 16).expect("hex");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(now.abs_diff(seconds) < 3600, "{first}");
    // A malformed traceparent is not a trace: a new one is made.
    let (_, seen) = invoke(&gw, &[("traceparent", "00-nope-00-01")], "{}").await;
    assert!(is_lambda_trace_id(
        seen["trace"].as_str().unwrap_or_default()
    ));
}

const CLIENT_CONTEXT_SCRIPT: &str = r#"
import base64, json, sys
import boto3
from botocore import UNSIGNED
from botocore.config import Config

client = boto3.client("lambda", endpoint_url=sys.argv[1], region_name="us-east-1",
                      config=Config(signature_version=UNSIGNED))
context = {"custom": {"tenant": "blue"}, "env": {"locale": "en-GB"},
           "client": {"app_title": "porch"}}
r = client.invoke(FunctionName="sees", Payload=b"{}",
                  ClientContext=base64.b64encode(json.dumps(context).encode()).decode())
print(json.dumps({"status": r["StatusCode"], "seen": json.loads(r["Payload"].read())}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_s_client_context_reaches_the_handler() {
    let Some(python) = common::sdk_python() else {
        return;
    };
    let markers = common::temp_dir("cc-markers");
    let gw = start("client-context", &markers, &[]);
    // (d) boto3's invoke(ClientContext=...).
    let v = common::python_json(&python, CLIENT_CONTEXT_SCRIPT, &gw);
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["seen"]["custom"]["tenant"], "blue", "{v}");
    assert_eq!(v["seen"]["env"]["locale"], "en-GB", "{v}");
    assert_eq!(v["seen"]["app_title"], "porch", "{v}");
    // Without one, the handler has none.
    assert_eq!(invoke(&gw, &[], "{}").await.1["custom"], Value::Null);
    // (f) Not base64 JSON: Lambda's 400, and no invocation.
    let not_json = base64::engine::general_purpose::STANDARD.encode("not json");
    for bad in ["%%% not base64", not_json.as_str()] {
        let (status, body) = invoke(&gw, &[("X-Amz-Client-Context", bad)], "{}").await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(
            body["errorType"], "InvalidRequestContentException",
            "{body}"
        );
        assert!(
            body["errorMessage"]
                .as_str()
                .is_some_and(|m| m.contains("Base64")),
            "{body}"
        );
    }
}

/// The markers of an async event's three attempts, once all three ran.
async fn three_attempts(gw: &LocalGateway, markers: &Path) -> Vec<Value> {
    poll(200, Duration::from_millis(50), || async {
        let m = read_markers(markers);
        (m.len() >= 3).then_some(m)
    })
    .await
    .unwrap_or_else(|| panic!("three attempts: {:?}\n{}", read_markers(markers), gw.log()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_event_keeps_its_trace_and_client_context_on_every_attempt() {
    let markers = common::temp_dir("async-markers");
    let gw = start("trace-async", &markers, &["--async-retry-base", "50ms"]);
    let context = base64::engine::general_purpose::STANDARD.encode(r#"{"custom":{"n":1}}"#);
    // (e) An Event invoke that fails every time: three attempts, each with
    // the trace id and client context the caller sent.
    let (status, _) = invoke(
        &gw,
        &[
            ("X-Amz-Invocation-Type", "Event"),
            ("X-Amzn-Trace-Id", GIVEN),
            ("X-Amz-Client-Context", &context),
        ],
        r#"{"record": true, "fail": true}"#,
    )
    .await;
    assert_eq!(status, 202);
    let seen = three_attempts(&gw, &markers).await;
    for s in &seen {
        assert_eq!(s["trace"], GIVEN, "{seen:?}");
        assert_eq!(s["custom"]["n"], 1, "{seen:?}");
    }
    // An Event invoke without a trace gets one, the same on each attempt.
    let _ = std::fs::remove_dir_all(&markers);
    std::fs::create_dir_all(&markers).expect("markers");
    let (status, _) = invoke(
        &gw,
        &[("X-Amz-Invocation-Type", "Event")],
        r#"{"record": true, "fail": true}"#,
    )
    .await;
    assert_eq!(status, 202);
    let seen = three_attempts(&gw, &markers).await;
    let first = seen[0]["trace"].as_str().unwrap_or_default();
    assert!(is_lambda_trace_id(first), "{first}");
    assert!(seen.iter().all(|s| s["trace"] == first), "{seen:?}");
    // A bad client context is refused before anything is stored.
    let (status, body) = invoke(
        &gw,
        &[
            ("X-Amz-Invocation-Type", "Event"),
            ("X-Amz-Client-Context", "%%%"),
        ],
        "{}",
    )
    .await;
    assert_eq!(
        (status, &body["errorType"]),
        (400, &Value::from("InvalidRequestContentException"))
    );
}

// ------------------------------------------------------------- OpenTelemetry

/// An OTLP/HTTP collector on a loopback port: every span it receives.
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
}

async fn collector() -> Collector {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let kept = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: bytes::Bytes| {
            let kept = kept.clone();
            async move {
                let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                    return axum::http::StatusCode::BAD_REQUEST;
                };
                let mut kept = kept.lock().expect("lock");
                for resource in request.resource_spans {
                    let service = resource
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .any(|a| {
                            a.key == "service.name"
                                && format!("{:?}", a.value).contains("porchlight-gateway")
                        });
                    assert!(service, "spans come from porchlight-gateway");
                    for scope in resource.scope_spans {
                        kept.extend(scope.spans);
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    Collector {
        url: format!("http://{addr}"),
        spans,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_continue_the_caller_s_trace_in_an_otlp_collector() {
    let collector = collector().await;
    let markers = common::temp_dir("otel-markers");
    let mut gw = start("otel", &markers, &["--otlp-endpoint", &collector.url]);
    // The first invocation causes the cold start.
    let (status, seen) = invoke(&gw, &[("traceparent", TRACEPARENT)], "{}").await;
    assert_eq!(status, 200, "{seen}");
    // The function still sees the caller's trace.
    assert!(
        seen["trace"]
            .as_str()
            .is_some_and(|t| t.starts_with("Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;")),
        "{seen}"
    );
    // A stop exports what is buffered.
    assert!(gw.stop(), "the gateway stops by itself");
    let spans = poll(100, Duration::from_millis(50), || async {
        let spans = collector.spans.lock().expect("lock").clone();
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        ["receive", "queue wait", "cold start", "invoke"]
            .iter()
            .all(|n| names.contains(n))
            .then_some(spans)
    })
    .await
    .unwrap_or_else(|| {
        let names: Vec<String> = collector
            .spans
            .lock()
            .expect("lock")
            .iter()
            .map(|s| s.name.clone())
            .collect();
        panic!("spans: {names:?}\n{}", gw.log())
    });
    let by_name: HashMap<&str, &Span> = spans.iter().map(|s| (s.name.as_str(), s)).collect();
    // One trace: the caller's.
    for s in &spans {
        assert_eq!(
            hex(&s.trace_id),
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "{}",
            s.name
        );
    }
    // receive is the child of the caller's span; the others, of receive.
    let receive = by_name["receive"];
    assert_eq!(hex(&receive.parent_span_id), "00f067aa0ba902b7");
    for name in ["queue wait", "cold start", "invoke"] {
        assert_eq!(
            by_name[name].parent_span_id, receive.span_id,
            "{name} is a child of receive"
        );
    }
    // Spans nest in time: the invoke within the receive.
    let invoke = by_name["invoke"];
    assert!(receive.start_time_unix_nano <= invoke.start_time_unix_nano);
    assert!(invoke.end_time_unix_nano <= receive.end_time_unix_nano);
    // The logs carry no span lines.
    assert!(!gw.log().contains("queue wait"), "{}", gw.log());
}

/// A fake environment that answers `{}` and keeps the headers it got.
async fn fake_environment(got: Arc<Mutex<Vec<axum::http::HeaderMap>>>) -> String {
    let router = axum::Router::new()
        .route(
            "/2015-03-31/functions/function/invocations",
            axum::routing::post(move |headers: axum::http::HeaderMap| {
                let got = got.clone();
                async move {
                    got.lock().expect("lock").push(headers);
                    "{}"
                }
            }),
        )
        .route(
            "/ready",
            axum::routing::get(|| async { r#"{"status":"ready"}"# }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

/// In process (the only test here that installs the gateway's telemetry
/// in the test process; the others run the gateway as a child).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_gets_a_traceparent_of_the_invoke_span() {
    use porchlight_gateway::registry::EnvironmentInfo;
    use porchlight_gateway::{Gateway, GatewayConfig, app, telemetry};
    use tower::ServiceExt as _;

    let collector = collector().await;
    let exporter = telemetry::init(false, Some(&collector.url))
        .expect("telemetry")
        .expect("an exporter");
    let got = Arc::default();
    let url = fake_environment(Arc::clone(&got)).await;
    let gw = Gateway::new(GatewayConfig::default());
    let spec: porchlight_api::FunctionSpec =
        serde_yaml::from_str("handler: app.h\ncode: {inline: x}\n").expect("spec");
    let settings = spec.validate().expect("valid");
    let entry = gw.registry().upsert(
        porchlight_core::FunctionKey::new("default", "f"),
        spec,
        settings,
    );
    entry.add_environment(EnvironmentInfo {
        id: "f-1".into(),
        base_url: url.into(),
        capacity: 1,
    });
    gw.set_ready(true);
    let context = base64::engine::general_purpose::STANDARD.encode(r#"{"custom":{"a":1}}"#);
    let call = |headers: &[(&str, &str)]| {
        let mut request = axum::http::Request::post("/2015-03-31/functions/f/invocations");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        app(gw.clone()).oneshot(request.body(axum::body::Body::from("{}")).expect("request"))
    };
    let r = call(&[
        ("traceparent", TRACEPARENT),
        ("X-Amz-Client-Context", &context),
    ])
    .await
    .expect("answer");
    assert_eq!(r.status(), 200);
    let r = call(&[]).await.expect("answer");
    assert_eq!(r.status(), 200);
    tokio::task::spawn_blocking(move || exporter.shutdown())
        .await
        .expect("flushed");
    let got: Vec<axum::http::HeaderMap> = got.lock().expect("lock").clone();
    assert_eq!(got.len(), 2);
    let header = |h: &axum::http::HeaderMap, name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    // The caller's trace, in both forms; the client context as sent.
    assert_eq!(
        header(&got[0], "x-amzn-trace-id"),
        "Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=00f067aa0ba902b7;Sampled=1"
    );
    assert_eq!(header(&got[0], "x-amz-client-context"), context);
    let spans = poll(100, Duration::from_millis(50), || async {
        let spans = collector.spans.lock().expect("lock").clone();
        (spans.iter().filter(|s| s.name == "invoke").count() == 2).then_some(spans)
    })
    .await
    .expect("two invoke spans");
    // The traceparent names the invoke span: the environment's own spans
    // would be its children.
    let traceparent = header(&got[0], "traceparent");
    let invoke = spans
        .iter()
        .find(|s| s.name == "invoke" && hex(&s.trace_id) == "4bf92f3577b34da6a3ce929d0e0e4736")
        .expect("the first invoke span");
    assert_eq!(
        traceparent,
        format!(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
            hex(&invoke.span_id)
        )
    );
    // Without a trace from the caller, the gateway's (sampled, as it
    // records it) is the one the environment gets, and its spans' trace.
    let created = header(&got[1], "x-amzn-trace-id");
    assert!(is_lambda_trace_id(&created), "{created}");
    assert!(created.ends_with(";Sampled=1"), "{created}");
    let trace = created[7..15].to_string() + &created[16..40];
    let receive = spans
        .iter()
        .find(|s| s.name == "receive" && hex(&s.trace_id) == trace)
        .expect("the second receive span is in the created trace");
    assert!(receive.parent_span_id.is_empty(), "the trace's first span");
    assert!(
        header(&got[1], "traceparent").starts_with(&format!("00-{trace}-")),
        "{:?}",
        got[1]
    );
}
