//! Fuzzing of everything the gateway parses from untrusted input: API
//! Gateway events and handler results, S3 notifications, CloudEvents,
//! function names, ARNs and qualifiers, query strings, Function manifests,
//! and the routes that put them together.
//!
//! Each target runs `PORCHLIGHT_FUZZ_CASES` cases (default 256, a few
//! seconds for the whole file); `tests/fuzz.sh` runs them long. Inputs are
//! arbitrary bytes and text, and near-valid ones (JSON and YAML skeletons with
//! arbitrary values, header maps with arbitrary names and values) so that the
//! mapping code is reached, not only the first parse. Every target asserts
//! that nothing panics, plus what must hold of an answer.

mod fuzz {
    //! The runner all targets share.

    use std::cell::Cell;
    use std::time::{Duration, Instant};

    use proptest::strategy::Strategy;
    use proptest::test_runner::{Config, TestCaseResult, TestRunner};

    /// Cases per target: `PORCHLIGHT_FUZZ_CASES`, default 256.
    pub fn cases() -> u32 {
        std::env::var("PORCHLIGHT_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256)
    }

    /// Runs `property` on `cases()` inputs of `strategy` and prints how many
    /// executions the target made (shrinking included) and its slowest case.
    pub fn run<S: Strategy>(
        target: &str,
        strategy: S,
        property: impl Fn(S::Value) -> TestCaseResult,
    ) {
        let mut runner = TestRunner::new(Config {
            cases: cases(),
            failure_persistence: None,
            max_global_rejects: u32::MAX,
            ..Config::default()
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
}

mod inputs {
    //! Input generators shared by the targets.

    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;
    use http::{HeaderMap, HeaderName, HeaderValue};
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    /// Arbitrary JSON, nested a few levels.
    pub fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
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

    /// Text: arbitrary Unicode, or ASCII heavy in the characters parsers
    /// split and decode on.
    pub fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "([a-zA-Z0-9]|%[0-9A-Fa-f]{2}|%[0-9A-Fa-f]?|[+=&;:/.,\" *$-]){0,16}",
            Just(String::new()),
        ]
    }

    /// Bytes: arbitrary, UTF-8 text, or JSON nested far past any parser's depth limit.
    pub fn bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            4 => prop::collection::vec(any::<u8>(), 0..256),
            4 => text().prop_map(String::into_bytes),
            1 => (1usize..20_000, prop::sample::select(vec!["[", "{\"a\":", "[{\"Records\":"]))
                .prop_map(|(n, open)| open.repeat(n).into_bytes()),
        ]
    }

    /// A header name: one the parsers look for, or any token.
    pub fn header_name() -> impl Strategy<Value = HeaderName> {
        prop_oneof![
            prop::sample::select(vec![
                "content-type",
                "content-length",
                "cookie",
                "host",
                "user-agent",
                "ce-id",
                "ce-source",
                "ce-type",
                "ce-specversion",
                "ce-subject",
                "ce-",
                "x-amz-invocation-type",
                "x-amz-log-type",
                "x-amz-client-context",
            ])
            .prop_map(HeaderName::from_static),
            "(ce-)?[a-z0-9!#$%&'*+.^_`|~-]{1,16}"
                .prop_map(|n| HeaderName::from_bytes(n.as_bytes()).expect("a token is a name")),
        ]
    }

    /// A header value: one a parser acts on, text with escapes, or any bytes
    /// a header may carry (control characters but tab become spaces).
    pub fn header_value() -> impl Strategy<Value = HeaderValue> {
        let bytes = prop_oneof![
            prop::sample::select(vec![
                "1.0",
                "0.3",
                "\"quoted\"",
                "\"",
                "%C3%B6",
                "%FF",
                "%",
                "application/json",
                "application/json; charset=utf-8",
                "text/plain",
                "application/octet-stream",
                "application/cloudevents+json",
                "APPLICATION/CloudEvents+JSON; charset=UTF-8",
                "application/cloudevents-batch+json",
                "application/vnd.x+json",
                "Event",
                "RequestResponse",
                "DryRun",
                "Tail",
                "18446744073709551616",
                "0",
                "a=1; b=2;; ;c",
            ])
            .prop_map(|s| s.as_bytes().to_vec()),
            text().prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..40),
        ];
        bytes.prop_map(|b| {
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

    /// A header map, names repeating now and then.
    pub fn headers() -> impl Strategy<Value = HeaderMap> {
        prop::collection::vec((header_name(), header_value()), 0..10).prop_map(|pairs| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(k, v);
            }
            h
        })
    }

    /// A query string: arbitrary text, or `k=v` pairs with escapes.
    pub fn query() -> impl Strategy<Value = String> {
        let component = "([a-zA-Z0-9]|%[0-9A-Fa-f]{2}|%[0-9A-Fa-f]?|\\+|[ -~&&[^&=#]]|\\PC){0,8}";
        prop_oneof![
            text(),
            prop::collection::vec((component, prop::option::of(component)), 0..6).prop_map(|kv| {
                kv.into_iter()
                    .map(|(k, v)| match v {
                        Some(v) => format!("{k}={v}"),
                        None => k,
                    })
                    .collect::<Vec<_>>()
                    .join("&")
            }),
        ]
    }

    /// A string value in JSON that is sometimes not a string at all.
    pub fn maybe_string() -> impl Strategy<Value = (Option<Value>, bool)> {
        prop_oneof![
            6 => text().prop_map(|s| (Some(Value::String(s)), true)),
            1 => Just((None, false)),
            1 => json().prop_filter_map("not a string", |v| {
                (!v.is_string()).then_some((Some(v), false))
            }),
        ]
    }

    /// Base64 of arbitrary bytes, or something that is not base64.
    pub fn base64_body() -> impl Strategy<Value = (String, Option<Vec<u8>>)> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| (B64.encode(&b), Some(b))),
            "[A-Za-z0-9+/=!-]{1,12}".prop_map(|s| {
                let decoded = B64.decode(s.as_bytes()).ok();
                (s, decoded)
            }),
        ]
    }
}

mod apigw_request {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;
    use http::HeaderMap;
    use porchlight_api::function::PayloadFormat;
    use porchlight_gateway::events::apigw::{HttpRequestParts, request_event};
    use proptest::prelude::*;
    use serde_json::Value;
    use time::OffsetDateTime;

    use super::{fuzz, inputs};

    #[derive(Debug, Clone)]
    struct Input {
        v2: bool,
        method: String,
        path: String,
        proxy: Option<String>,
        query: String,
        headers: HeaderMap,
        body: Vec<u8>,
        source_ip: String,
        protocol: String,
        unix_seconds: i64,
    }

    fn input() -> impl Strategy<Value = Input> {
        (
            any::<bool>(),
            prop_oneof!["[A-Z]{1,8}", inputs::text()],
            inputs::text(),
            prop::option::of(inputs::text()),
            inputs::query(),
            inputs::headers(),
            inputs::bytes(),
            inputs::text(),
            prop::sample::select(vec!["HTTP/1.1", "HTTP/2.0", "HTTP/1.0"]),
            // The years time can represent: -9999 to 9999.
            -377_705_116_800i64..=253_402_300_799,
        )
            .prop_map(
                |(v2, method, path, proxy, query, headers, body, ip, protocol, secs)| Input {
                    v2,
                    method,
                    path,
                    proxy,
                    query,
                    headers,
                    body,
                    source_ip: ip,
                    protocol: protocol.to_string(),
                    unix_seconds: secs,
                },
            )
    }

    /// The body field gives back exactly the bytes received.
    fn body_round_trips(event: &Value, body: &[u8]) -> Result<(), TestCaseError> {
        let field = event.get("body").unwrap_or(&Value::Null);
        let b64 = event["isBase64Encoded"].as_bool();
        if body.is_empty() {
            prop_assert!(field.is_null(), "an empty body is null or absent");
            prop_assert_eq!(b64, Some(false));
            return Ok(());
        }
        let text = field.as_str().expect("a non-empty body is a string");
        let decoded = if b64 == Some(true) {
            B64.decode(text).expect("isBase64Encoded bodies are base64")
        } else {
            text.as_bytes().to_vec()
        };
        prop_assert_eq!(decoded, body);
        Ok(())
    }

    fn nonempty_query_pairs(query: &str) -> usize {
        query.split('&').filter(|p| !p.is_empty()).count()
    }

    #[test]
    fn fuzz_apigw_request_to_event() {
        fuzz::run("apigw_request_to_event", input(), |i| {
            let parts = HttpRequestParts {
                method: &i.method,
                path: &i.path,
                proxy: i.proxy.as_deref(),
                query: &i.query,
                headers: &i.headers,
                body: &i.body,
                source_ip: &i.source_ip,
                request_id: "rid",
                protocol: &i.protocol,
                now: OffsetDateTime::from_unix_timestamp(i.unix_seconds).expect("in range"),
            };
            let format = if i.v2 {
                PayloadFormat::V2
            } else {
                PayloadFormat::V1
            };
            let event = request_event(format, &parts);
            // What the route sends: the event serialises and reads back the same.
            let wire = serde_json::to_vec(&event).expect("an event serialises");
            prop_assert_eq!(
                &serde_json::from_slice::<Value>(&wire).expect("JSON"),
                &event
            );
            body_round_trips(&event, &i.body)?;
            let time_field = if i.v2 {
                &event["requestContext"]["time"]
            } else {
                &event["requestContext"]["requestTime"]
            };
            prop_assert!(time_field.as_str().is_some_and(|t| t.ends_with(" +0000")));
            if i.v2 {
                prop_assert_eq!(&event["version"], "2.0");
                prop_assert_eq!(&event["rawPath"], i.path.as_str());
                prop_assert_eq!(&event["rawQueryString"], i.query.as_str());
                let headers = event["headers"].as_object().expect("headers object");
                prop_assert!(!headers.contains_key("cookie"), "cookies are split out");
                for (name, value) in headers {
                    let joined = i
                        .headers
                        .get_all(name.as_str())
                        .iter()
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                        .collect::<Vec<_>>()
                        .join(",");
                    prop_assert_eq!(value.as_str(), Some(joined.as_str()));
                }
                let cookies = event.get("cookies").and_then(Value::as_array);
                for c in cookies.into_iter().flatten() {
                    let c = c.as_str().expect("cookies are strings");
                    prop_assert!(!c.is_empty() && !c.contains(';') && c.trim() == c);
                }
            } else {
                prop_assert_eq!(&event["httpMethod"], i.method.as_str());
                prop_assert_eq!(&event["path"], i.path.as_str());
                let multi = event["multiValueHeaders"].as_object().expect("object");
                let values: usize = multi
                    .values()
                    .map(|v| v.as_array().expect("arrays").len())
                    .sum();
                prop_assert_eq!(values, i.headers.len());
                prop_assert_eq!(multi.len(), i.headers.keys_len());
                let pairs = nonempty_query_pairs(&i.query);
                let mqs = &event["multiValueQueryStringParameters"];
                if pairs == 0 {
                    prop_assert!(mqs.is_null() && event["queryStringParameters"].is_null());
                } else {
                    let n: usize = mqs
                        .as_object()
                        .expect("object")
                        .values()
                        .map(|v| v.as_array().expect("arrays").len())
                        .sum();
                    prop_assert_eq!(n, pairs);
                }
            }
            Ok(())
        });
    }
}

mod apigw_response {
    use porchlight_api::function::PayloadFormat;
    use porchlight_gateway::events::apigw::response_from_result;
    use proptest::prelude::*;
    use serde_json::{Map, Value, json};

    use super::{fuzz, inputs};

    /// A handler result and, when it is well-formed by construction, the
    /// status and body it must give.
    #[derive(Debug, Clone)]
    struct Result_ {
        v2: bool,
        bytes: Vec<u8>,
        expect: Option<(u16, Vec<u8>)>,
    }

    fn status() -> impl Strategy<Value = (Value, Option<u16>)> {
        prop_oneof![
            4 => (100u16..=599).prop_map(|s| (json!(s), Some(s))),
            2 => (100u16..=599).prop_map(|s| (json!(s.to_string()), Some(s))),
            1 => any::<i64>().prop_map(|n| (json!(n), None)),
            1 => any::<f64>().prop_map(|n| (json!(n), None)),
            1 => inputs::text().prop_map(|s| (json!(s), None)),
            1 => inputs::json().prop_map(|v| (v, None)),
        ]
    }

    /// `headers`, `multiValueHeaders` or `cookies`: well-formed or not.
    fn header_field(multi: bool) -> impl Strategy<Value = (Option<Value>, bool)> {
        let scalar = prop_oneof![
            4 => inputs::text().prop_map(|s| (json!(s), true)),
            1 => any::<i64>().prop_map(|n| (json!(n), true)),
            1 => any::<bool>().prop_map(|b| (json!(b), true)),
            1 => inputs::json().prop_map(|v| {
                let ok = v.is_string() || v.is_number() || v.is_boolean();
                (v, ok)
            }),
        ];
        let value = if multi {
            prop::collection::vec(scalar, 0..3)
                .prop_map(|vs| {
                    let ok = vs.iter().all(|(_, ok)| *ok);
                    (Value::Array(vs.into_iter().map(|(v, _)| v).collect()), ok)
                })
                .boxed()
        } else {
            scalar.boxed()
        };
        prop_oneof![
            3 => prop::collection::vec((inputs::text(), value), 0..5).prop_map(|kv| {
                let ok = kv.iter().all(|(_, (_, ok))| *ok);
                let map: Map<String, Value> = kv.into_iter().map(|(k, (v, _))| (k, v)).collect();
                (Some(Value::Object(map)), ok)
            }),
            1 => Just((None, true)),
            1 => Just((Some(Value::Null), true)),
            1 => inputs::json().prop_map(|v| (Some(v.clone()), v.is_object() && v.as_object().is_some_and(Map::is_empty))),
        ]
    }

    fn cookies() -> impl Strategy<Value = (Option<Value>, bool)> {
        prop_oneof![
            3 => prop::collection::vec(inputs::text(), 0..4).prop_map(|cs| (Some(json!(cs)), true)),
            1 => Just((None, true)),
            1 => inputs::json().prop_map(|v| (Some(v.clone()), v.is_null() || v.as_array().is_some_and(Vec::is_empty))),
        ]
    }

    fn structured() -> impl Strategy<Value = Result_> {
        (
            any::<bool>(),
            status(),
            header_field(false),
            header_field(true),
            cookies(),
            prop_oneof![Just(None), any::<bool>().prop_map(Some)],
            prop_oneof![
                inputs::text().prop_map(|s| (Some(json!(s)), Some(s.into_bytes()), None)),
                inputs::base64_body().prop_map(|(s, b)| (Some(json!(s)), None, b)),
                Just((None, Some(Vec::new()), Some(Vec::new()))),
                inputs::json().prop_map(|v| (Some(v), None, None)),
            ],
            prop::collection::vec((inputs::text(), inputs::json()), 0..3),
        )
            .prop_map(|(v2, status, headers, multi, cookies, b64, body, extra)| {
                let mut obj: Map<String, Value> = extra.into_iter().collect();
                let (status, status_ok) = status;
                obj.insert("statusCode".into(), status);
                let mut ok = status_ok.is_some();
                for (name, (field, field_ok), counts) in [
                    ("headers", headers, true),
                    ("multiValueHeaders", multi, !v2),
                    ("cookies", cookies, v2),
                ] {
                    match field {
                        Some(f) => obj.insert(name.into(), f),
                        None => obj.remove(name),
                    };
                    ok &= field_ok || !counts;
                }
                match b64 {
                    Some(b) => obj.insert("isBase64Encoded".into(), json!(b)),
                    None => obj.remove("isBase64Encoded"),
                };
                let (body, plain, decoded) = body;
                match body {
                    Some(b) => obj.insert("body".into(), b),
                    None => obj.remove("body"),
                };
                let expected_body = if b64 == Some(true) { decoded } else { plain };
                let expect = match (ok, status_ok, expected_body) {
                    (true, Some(s), Some(b)) => Some((s, b)),
                    _ => None,
                };
                Result_ {
                    v2,
                    bytes: serde_json::to_vec(&Value::Object(obj)).expect("serialises"),
                    expect,
                }
            })
    }

    fn input() -> impl Strategy<Value = Result_> {
        prop_oneof![
            3 => structured(),
            1 => (any::<bool>(), inputs::bytes()).prop_map(|(v2, bytes)| Result_ { v2, bytes, expect: None }),
            1 => (any::<bool>(), inputs::json()).prop_map(|(v2, v)| Result_ {
                v2,
                bytes: serde_json::to_vec(&v).expect("serialises"),
                expect: None,
            }),
        ]
    }

    #[test]
    fn fuzz_apigw_result_to_http_response() {
        fuzz::run("apigw_result_to_http_response", input(), |r| {
            let format = if r.v2 {
                PayloadFormat::V2
            } else {
                PayloadFormat::V1
            };
            let reply = response_from_result(format, &r.bytes);
            if let Ok(reply) = &reply {
                prop_assert!((100..=599).contains(&reply.status));
                prop_assert!(http::StatusCode::from_u16(reply.status).is_ok());
                // What the route does with it: a response, or API Gateway's 502.
                let mut builder = http::Response::builder().status(reply.status);
                for (k, v) in &reply.headers {
                    builder = builder.header(k.as_str(), v.as_str());
                }
                let _ = builder.body(reply.body.clone());
            }
            if let Some((status, body)) = &r.expect {
                let reply = reply.expect("a well-formed result is accepted");
                prop_assert_eq!(reply.status, *status);
                prop_assert_eq!(&reply.body, body);
            }
            Ok(())
        });
    }
}

mod s3 {
    use porchlight_api::function::S3Trigger;
    use porchlight_gateway::events::decode_query_component;
    use porchlight_gateway::events::s3::{parse_notification, trigger_matches};
    use proptest::prelude::*;
    use serde_json::{Map, Value, json};

    use super::{fuzz, inputs};

    #[derive(Debug, Clone)]
    struct Notification {
        bytes: Vec<u8>,
        /// Records, when every one has a bucket, key and event name.
        expect: Option<Vec<(String, String, String)>>,
        trigger: S3Trigger,
    }

    fn record() -> impl Strategy<Value = (Value, Option<(String, String, String)>)> {
        (
            inputs::maybe_string(),
            inputs::maybe_string(),
            prop_oneof![
                4 => prop::sample::select(vec![
                    "ObjectCreated:Put",
                    "s3:ObjectCreated:Copy",
                    "ObjectRemoved:Delete",
                    "s3:",
                    "",
                ])
                .prop_map(|s| (Some(json!(s)), true)),
                2 => inputs::maybe_string(),
            ],
            prop::collection::vec((inputs::text(), inputs::json()), 0..3),
        )
            .prop_map(|((bucket, b_ok), (key, k_ok), (name, n_ok), extra)| {
                let mut bucket_obj = Map::new();
                if let Some(b) = &bucket {
                    bucket_obj.insert("name".into(), b.clone());
                }
                let mut object = Map::new();
                if let Some(k) = &key {
                    object.insert("key".into(), k.clone());
                }
                object.insert("size".into(), json!(5));
                let mut r: Map<String, Value> = extra.into_iter().collect();
                r.insert("eventSource".into(), json!("aws:s3"));
                r.insert("s3".into(), json!({"bucket": bucket_obj, "object": object}));
                match &name {
                    Some(n) => r.insert("eventName".into(), n.clone()),
                    None => r.remove("eventName"),
                };
                let expect = (b_ok && k_ok && n_ok).then(|| {
                    let s = |v: &Option<Value>| {
                        v.as_ref().and_then(Value::as_str).unwrap_or("").to_string()
                    };
                    (s(&bucket), s(&key), s(&name))
                });
                (Value::Object(r), expect)
            })
    }

    fn trigger() -> impl Strategy<Value = S3Trigger> {
        (
            prop_oneof![Just("uploads".to_string()), inputs::text()],
            prop::collection::vec(
                prop_oneof![
                    Just("s3:ObjectCreated:*".to_string()),
                    Just("*".to_string()),
                    inputs::text()
                ],
                0..3,
            ),
            prop::option::of(inputs::text()),
            prop::option::of(inputs::text()),
        )
            .prop_map(|(bucket, events, prefix, suffix)| S3Trigger {
                bucket,
                events,
                prefix,
                suffix,
            })
    }

    fn input() -> impl Strategy<Value = Notification> {
        let structured = (prop::collection::vec(record(), 0..5), any::<bool>()).prop_map(|(records, minio)| {
            let expect = records.iter().map(|(_, e)| e.clone()).collect::<Option<Vec<_>>>();
            let records: Vec<Value> = records.into_iter().map(|(r, _)| r).collect();
            let body = if minio {
                json!({"EventName": "s3:ObjectCreated:Put", "Key": "uploads/x", "Records": records})
            } else {
                json!({ "Records": records })
            };
            (serde_json::to_vec(&body).expect("serialises"), expect)
        });
        let other = prop_oneof![
            inputs::bytes(),
            inputs::json()
                .prop_map(|v| serde_json::to_vec(&json!({ "Records": v })).expect("serialises")),
        ]
        .prop_map(|b| (b, None));
        (prop_oneof![3 => structured, 1 => other], trigger()).prop_map(
            |((bytes, expect), trigger)| Notification {
                bytes,
                expect,
                trigger,
            },
        )
    }

    #[test]
    fn fuzz_s3_notification() {
        fuzz::run("s3_notification", input(), |n| {
            let parsed = parse_notification(&n.bytes);
            match (&parsed, &n.expect) {
                (Ok(records), Some(expect)) => {
                    prop_assert_eq!(records.len(), expect.len());
                    for (r, (bucket, key, name)) in records.iter().zip(expect) {
                        prop_assert_eq!(&r.bucket, bucket);
                        prop_assert_eq!(&r.key, &decode_query_component(key));
                        prop_assert_eq!(&r.event_name, name.strip_prefix("s3:").unwrap_or(name));
                        let event: Value =
                            serde_json::from_slice(&r.event()).expect("the event is JSON");
                        let raw: Value = serde_json::from_str(r.raw.get()).expect("JSON");
                        prop_assert_eq!(&event["Records"][0], &raw);
                    }
                }
                (Err(e), Some(_)) => {
                    prop_assert!(false, "a well-formed notification was refused: {e}")
                }
                (Ok(records), None) => {
                    // Parsed from arbitrary input: every record is whole.
                    let value: Value = serde_json::from_slice(&n.bytes).expect("it was JSON");
                    let raw = value["Records"].as_array().expect("Records is an array");
                    prop_assert_eq!(records.len(), raw.len(), "never a partial list");
                }
                (Err(_), None) => {}
            }
            if let Ok(records) = &parsed {
                for r in records {
                    if trigger_matches(&n.trigger, r) {
                        prop_assert_eq!(&n.trigger.bucket, &r.bucket);
                        prop_assert!(
                            n.trigger
                                .prefix
                                .as_deref()
                                .is_none_or(|p| r.key.starts_with(p))
                        );
                        prop_assert!(
                            n.trigger
                                .suffix
                                .as_deref()
                                .is_none_or(|s| r.key.ends_with(s))
                        );
                    }
                }
            }
            Ok(())
        });
    }

    /// A notification with one record missing a field is refused whole.
    #[test]
    fn fuzz_s3_one_bad_record_refuses_the_notification() {
        fuzz::run(
            "s3_one_bad_record",
            (
                prop::collection::vec(inputs::text(), 0..4),
                0usize..4,
                inputs::text(),
            ),
            |(keys, bad_at, bucket)| {
                let mut records: Vec<Value> = keys
                    .iter()
                    .map(|k| json!({"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}, "object": {"key": k}}}))
                    .collect();
                let bad_at = bad_at.min(records.len());
                records.insert(
                    bad_at,
                    json!({"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}}}),
                );
                let body = serde_json::to_vec(&json!({ "Records": records })).expect("serialises");
                prop_assert!(parse_notification(&body).is_err());
                Ok(())
            },
        );
    }
}

mod cloudevents {
    use crate::attr;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;
    use http::{HeaderMap, HeaderName, HeaderValue};
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    use porchlight_api::function::CloudEventsTrigger;
    use porchlight_gateway::events::cloudevents::parse_request;
    use proptest::prelude::*;
    use serde_json::{Map, Value, json};

    use super::{fuzz, inputs};

    /// A binary-mode attribute header value: written plainly, quoted,
    /// percent-encoded, or broken, with the text it must decode to.
    fn attribute(
        valid: &'static str,
    ) -> impl Strategy<Value = (Option<HeaderValue>, Option<String>)> {
        let text = prop_oneof![Just(valid.to_string()), inputs::text()];
        prop_oneof![
            3 => text.clone().prop_map(|s| {
                let encoded = utf8_percent_encode(&s, NON_ALPHANUMERIC).to_string();
                (Some(HeaderValue::from_str(&encoded).expect("ASCII")), Some(s))
            }),
            1 => text.prop_map(|s| {
                let encoded = format!("\"{}\"", utf8_percent_encode(&s, NON_ALPHANUMERIC));
                (Some(HeaderValue::from_str(&encoded).expect("ASCII")), Some(s))
            }),
            1 => "[a-zA-Z0-9./:-]{1,12}".prop_map(|s| (Some(HeaderValue::from_str(&s).expect("ASCII")), Some(s))),
            1 => inputs::header_value().prop_map(|v| (Some(v), None)),
            1 => Just((None, None)),
        ]
    }

    #[derive(Debug, Clone)]
    struct Binary {
        headers: HeaderMap,
        body: Vec<u8>,
        /// The decoded id, source, type and specversion, when all decode.
        attrs: Option<[String; 4]>,
        json_body: bool,
    }

    fn binary() -> impl Strategy<Value = Binary> {
        (
            attribute("42"),
            attribute("/orders"),
            attribute("com.example.created"),
            attribute("1.0"),
            prop::option::of(inputs::header_value()),
            inputs::headers(),
            prop_oneof![
                inputs::bytes(),
                inputs::json().prop_map(|v| serde_json::to_vec(&v).expect("serialises")),
            ],
        )
            .prop_map(|(id, source, ty, spec, content_type, extra, body)| {
                let mut headers = extra;
                let mut decoded = Vec::new();
                for (name, (value, text)) in [
                    ("ce-id", id),
                    ("ce-source", source),
                    ("ce-type", ty),
                    ("ce-specversion", spec),
                ] {
                    headers.remove(name);
                    if let Some(v) = value {
                        headers.insert(HeaderName::from_static(name), v);
                    }
                    decoded.push(text);
                }
                if let Some(ct) = content_type {
                    headers.insert(http::header::CONTENT_TYPE, ct);
                }
                let ct = headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_ascii_lowercase();
                let media = ct.split(';').next().unwrap_or("").trim().to_string();
                let structured = media.starts_with("application/cloudevents");
                let json_body =
                    media == "application/json" || media == "text/json" || media.ends_with("+json");
                // Other ce- headers must decode too for the event to be accepted.
                let others_decode = headers.iter().all(|(k, v)| {
                    !k.as_str().starts_with("ce-")
                        || std::str::from_utf8(v.as_bytes()).is_ok_and(|s| {
                            let s = s
                                .strip_prefix('"')
                                .and_then(|x| x.strip_suffix('"'))
                                .unwrap_or(s);
                            percent_encoding::percent_decode_str(s)
                                .decode_utf8()
                                .is_ok()
                        })
                });
                let attrs = decoded
                    .into_iter()
                    .collect::<Option<Vec<_>>>()
                    .filter(|a| {
                        !structured
                            && others_decode
                            && a.iter().all(|s| !s.is_empty())
                            && a[3] == "1.0"
                    })
                    .map(|a| [a[0].clone(), a[1].clone(), a[2].clone(), a[3].clone()]);
                Binary {
                    headers,
                    body,
                    attrs,
                    json_body,
                }
            })
    }

    fn trigger() -> impl Strategy<Value = CloudEventsTrigger> {
        (
            prop_oneof![Just("com.example.created".to_string()), inputs::text()],
            prop::option::of(prop_oneof![Just("/orders".to_string()), inputs::text()]),
        )
            .prop_map(|(event_type, source)| CloudEventsTrigger { event_type, source })
    }

    #[test]
    fn fuzz_cloudevents_binary_mode() {
        fuzz::run(
            "cloudevents_binary",
            (binary(), trigger()),
            |(b, trigger)| {
                let parsed = parse_request(&b.headers, &b.body);
                if let Ok(events) = &parsed {
                    for ev in events {
                        for a in ["id", "source", "type"] {
                            prop_assert!(
                                attr(ev, a).as_deref().is_some_and(|v| !v.is_empty()),
                                "{a} is required"
                            );
                        }
                        prop_assert_eq!(attr(ev, "specversion"), Some(String::from("1.0")));
                        if ev.matches(&trigger) {
                            prop_assert_eq!(
                                attr(ev, "type"),
                                Some(String::from(trigger.event_type.as_str()))
                            );
                        }
                    }
                }
                let Some([id, source, ty, _]) = &b.attrs else {
                    return Ok(());
                };
                let body_ok = b.body.is_empty()
                    || !b.json_body
                    || serde_json::from_slice::<Value>(&b.body).is_ok();
                if !body_ok {
                    prop_assert!(
                        parsed.is_err(),
                        "data that is not JSON under a JSON content type"
                    );
                    return Ok(());
                }
                let events = parsed.expect("a well-formed binary event is accepted");
                prop_assert_eq!(events.len(), 1);
                let ev = &events[0];
                prop_assert_eq!(attr(ev, "id"), Some(String::from(id.as_str())));
                prop_assert_eq!(attr(ev, "source"), Some(String::from(source.as_str())));
                prop_assert_eq!(attr(ev, "type"), Some(String::from(ty.as_str())));
                let json = ev.to_json();
                if b.body.is_empty() {
                    prop_assert!(json.get("data").is_none() && json.get("data_base64").is_none());
                } else if b.json_body {
                    prop_assert_eq!(
                        &json["data"],
                        &serde_json::from_slice::<Value>(&b.body).expect("JSON")
                    );
                } else if let Ok(text) = std::str::from_utf8(&b.body) {
                    prop_assert_eq!(&json["data"], text);
                } else {
                    let encoded = B64.encode(&b.body);
                    prop_assert_eq!(&json["data_base64"], encoded.as_str());
                }
                Ok(())
            },
        );
    }

    /// One structured event: a JSON object whose required attributes are
    /// strings (or not, or missing), and whether it must be accepted.
    fn structured_event() -> impl Strategy<Value = (Value, bool)> {
        (
            inputs::maybe_string(),
            inputs::maybe_string(),
            inputs::maybe_string(),
            prop_oneof![
                3 => Just((Some(json!("1.0")), true)),
                1 => inputs::maybe_string(),
            ],
            prop::collection::vec((inputs::text(), inputs::json()), 0..4),
        )
            .prop_map(|(id, source, ty, spec, extra)| {
                let mut map: Map<String, Value> = extra.into_iter().collect();
                let mut ok = true;
                for (name, (value, _)) in [
                    ("id", id),
                    ("source", source),
                    ("type", ty),
                    ("specversion", spec),
                ] {
                    match value {
                        Some(v) => map.insert(name.into(), v),
                        None => map.remove(name),
                    };
                    let v = map.get(name).and_then(Value::as_str);
                    ok &= v.is_some_and(|s| !s.is_empty())
                        && (name != "specversion" || v == Some("1.0"));
                }
                (Value::Object(map), ok)
            })
    }

    #[test]
    fn fuzz_cloudevents_structured_mode() {
        let input = (
            prop::sample::select(vec![
                "application/cloudevents+json",
                "Application/CloudEvents+JSON; charset=utf-8",
                "application/cloudevents-batch+json",
                "application/cloudevents-batch+json; charset=utf-8",
            ]),
            prop::collection::vec(structured_event(), 0..4),
            prop_oneof![4 => Just(None), 1 => inputs::bytes().prop_map(Some)],
        );
        fuzz::run(
            "cloudevents_structured",
            input,
            |(content_type, events, raw)| {
                let batch = content_type.to_ascii_lowercase().contains("batch");
                let mut headers = HeaderMap::new();
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static(content_type),
                );
                let (body, expect) = match (&raw, batch) {
                    (Some(raw), _) => (raw.clone(), None),
                    (None, true) => {
                        let all_ok = events.iter().all(|(_, ok)| *ok);
                        let values: Vec<Value> = events.iter().map(|(v, _)| v.clone()).collect();
                        (
                            serde_json::to_vec(&values).expect("serialises"),
                            Some((all_ok, events.len())),
                        )
                    }
                    (None, false) => match events.first() {
                        Some((v, ok)) => {
                            (serde_json::to_vec(v).expect("serialises"), Some((*ok, 1)))
                        }
                        None => (b"{}".to_vec(), Some((false, 0))),
                    },
                };
                let parsed = parse_request(&headers, &body);
                if let Ok(events) = &parsed {
                    for ev in events {
                        prop_assert_eq!(attr(ev, "specversion"), Some(String::from("1.0")));
                        prop_assert!(attr(ev, "id").as_deref().is_some_and(|v| !v.is_empty()));
                    }
                }
                if let Some((ok, n)) = expect {
                    match &parsed {
                        Ok(events) => {
                            prop_assert!(
                                ok,
                                "an event without its required attributes was accepted"
                            );
                            prop_assert_eq!(events.len(), n);
                        }
                        Err(_) => prop_assert!(!ok, "well-formed events were refused"),
                    }
                }
                Ok(())
            },
        );
    }
}

mod names {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    use porchlight_gateway::events::decode_query_component;
    use porchlight_gateway::routes::parse_function_name;
    use proptest::prelude::*;

    use super::{fuzz, inputs};

    /// A function name in one of the forms Lambda takes, and what it names.
    fn named() -> impl Strategy<Value = (String, Option<(String, Option<String>)>)> {
        let name = "[a-zA-Z0-9_-]{1,20}";
        let qualifier = prop::option::of(prop_oneof![
            Just("$LATEST".to_string()),
            "[a-zA-Z0-9_$-]{1,8}".prop_map(String::from)
        ]);
        let form = prop::sample::select(vec![0u8, 1, 2]);
        prop_oneof![
            (name, qualifier, form, "[a-z0-9-]{1,12}", "[0-9]{12}").prop_map(
                |(n, q, form, region, account)| {
                    let tail = match &q {
                        Some(q) => format!("{n}:{q}"),
                        None => n.clone(),
                    };
                    let raw = match form {
                        0 => tail,
                        1 => format!("{account}:function:{tail}"),
                        _ => format!("arn:aws:lambda:{region}:{account}:function:{tail}"),
                    };
                    (raw, Some((n, q)))
                }
            ),
            inputs::text().prop_map(|s| (s, None)),
            "(arn:|function:|:|[a-z]{1,3}){0,8}".prop_map(|s| (s, None)),
        ]
    }

    #[test]
    fn fuzz_function_name_arn_and_qualifier() {
        fuzz::run("function_name_arn_qualifier", named(), |(raw, expect)| {
            let (name, qualifier) = parse_function_name(&raw);
            prop_assert!(!name.contains(':'), "a name never keeps a colon: {name:?}");
            prop_assert!(raw.contains(name.as_str()));
            if let Some(q) = &qualifier {
                let tail = format!("{name}:{q}");
                prop_assert!(raw.ends_with(&tail));
            }
            if let Some(expect) = expect {
                prop_assert_eq!((name, qualifier), expect);
            }
            Ok(())
        });
    }

    #[test]
    fn fuzz_query_component_decoding() {
        fuzz::run("decode_query_component", inputs::text(), |s| {
            let decoded = decode_query_component(&s);
            if !s.contains(['%', '+']) {
                prop_assert_eq!(&decoded, &s);
            }
            // Form-encoding anything decodes back to it.
            let encoded = utf8_percent_encode(&s, NON_ALPHANUMERIC).to_string();
            prop_assert_eq!(decode_query_component(&encoded), s);
            Ok(())
        });
    }
}

mod manifests {
    use std::path::Path;

    use porchlight_gateway::local::manifests::parse_manifest;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::{fuzz, inputs};

    /// A YAML scalar for a field: what it expects, or anything.
    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<u32>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[0-9]{1,22}(ms|s|m|h|d)?".prop_map(Value::from),
            prop::sample::select(vec![
                "python3.12",
                "provided",
                "python3.",
                "1.0",
                "2.0",
                "app.handler",
                ".",
                "30s",
                "0ms"
            ])
            .prop_map(Value::from),
            inputs::json(),
        ]
    }

    /// Fields of a Function, each present or not, with values that fit or not.
    fn spec() -> impl Strategy<Value = Value> {
        let field = |name: &'static str| prop::option::of(scalar()).prop_map(move |v| (name, v));
        let trigger = prop_oneof![
            prop::option::of(scalar()).prop_map(|f| match f {
                Some(f) => json!({"http": {"payloadFormat": f}}),
                None => json!({"http": {}}),
            }),
            (scalar(), prop::option::of(prop::collection::vec(scalar(), 0..3)), prop::option::of(scalar()))
                .prop_map(|(bucket, events, prefix)| json!({"s3": {"bucket": bucket, "events": events, "prefix": prefix}})),
            (scalar(), prop::option::of(scalar())).prop_map(|(t, s)| json!({"cloudevents": {"type": t, "source": s}})),
            inputs::json(),
        ];
        (
            prop::collection::vec(
                prop_oneof![
                    field("runtime"),
                    field("handler"),
                    field("timeoutSeconds"),
                    field("memoryMiB"),
                    field("concurrency"),
                    field("replicas"),
                ],
                0..6,
            ),
            prop::collection::vec(
                prop_oneof![
                    field("minScale"),
                    field("maxScale"),
                    field("targetUtilization"),
                    field("scaleToZeroAfter"),
                    field("stableWindow"),
                ],
                0..5,
            ),
            prop_oneof![
                3 => inputs::text().prop_map(|s| json!({ "inline": s })),
                1 => Just(json!({ "path": "." })),
                1 => inputs::json(),
            ],
            prop::collection::vec(trigger, 0..3),
            prop::option::of(prop::collection::btree_map(inputs::text(), scalar(), 0..3)),
        )
            .prop_map(|(fields, scaling, code, triggers, env)| {
                let mut spec = serde_json::Map::new();
                for (k, v) in fields {
                    if let Some(v) = v {
                        spec.insert(k.into(), v);
                    }
                }
                let scaling: serde_json::Map<String, Value> = scaling
                    .into_iter()
                    .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
                    .collect();
                spec.insert("scaling".into(), Value::Object(scaling));
                spec.insert("code".into(), code);
                spec.insert("triggers".into(), Value::Array(triggers));
                if let Some(env) = env {
                    spec.insert("env".into(), json!(env));
                }
                Value::Object(spec)
            })
    }

    /// A manifest file: documents of Functions and of other kinds, sometimes
    /// cut, spliced with text, or written with YAML's aliases and tags.
    fn manifest() -> impl Strategy<Value = String> {
        let document = (
            spec(),
            prop_oneof![Just("f".to_string()), inputs::text()],
            any::<bool>(),
        )
            .prop_map(|(spec, name, ours)| {
                let doc = json!({
                    "apiVersion": if ours { "porchlight.dev/v1alpha1" } else { "v1" },
                    "kind": if ours { "Function" } else { "ConfigMap" },
                    "metadata": {"name": name},
                    "spec": spec,
                });
                serde_yaml::to_string(&doc).expect("serialises")
            });
        let file = prop::collection::vec(document, 0..3)
            .prop_map(|docs| docs.join("---\n"))
            .boxed();
        prop_oneof![
            4 => file.clone(),
            2 => (file.clone(), any::<prop::sample::Index>(), inputs::text()).prop_map(|(f, at, insert)| {
                let mut at = at.index(f.len() + 1);
                while !f.is_char_boundary(at) {
                    at -= 1;
                }
                format!("{}{insert}{}", &f[..at], &f[at..])
            }),
            2 => (file, any::<prop::sample::Index>()).prop_map(|(f, at)| {
                let mut at = at.index(f.len() + 1);
                while !f.is_char_boundary(at) {
                    at -= 1;
                }
                f[..at].to_string()
            }),
            1 => any::<String>(),
            1 => prop::sample::select(vec![
                // Aliases that expand far (a "billion laughs").
                "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n",
                "apiVersion: porchlight.dev/v1alpha1\nkind: Function\nmetadata: {name: a}\nspec: &s {code: {inline: x}, handler: a.b, x: *s}\n",
                "apiVersion: porchlight.dev/v1alpha1\nkind: !!binary aGk=\nspec: !Tag {}\n",
                "apiVersion: porchlight.dev/v1alpha1\nkind: Function\nmetadata: {name: a}\nspec: {code: {inline: x}, handler: a.b, timeoutSeconds: .nan, scaling: {targetUtilization: .inf}}\n",
                "--- !!map\n? [a, b]\n: c\n",
                "%YAML 1.2\n---\n{",
            ]).prop_map(String::from),
            1 => (1usize..1_000).prop_map(|n| format!("apiVersion: porchlight.dev/v1alpha1\nkind: Function\nspec: {}", "[".repeat(n))),
        ]
    }

    #[test]
    fn fuzz_function_manifest() {
        fuzz::run("function_manifest", manifest(), |text| {
            let file = Path::new("fns.yaml");
            match parse_manifest(file, &text) {
                Err(e) => {
                    prop_assert!(
                        !e.to_string().contains('\n'),
                        "a manifest error is one line: {e:?}"
                    );
                    prop_assert_eq!(e.file.as_str(), "fns.yaml");
                }
                Ok(functions) => {
                    for f in &functions {
                        match f.spec.validate() {
                            Ok(s) => {
                                prop_assert!(
                                    s.min_scale <= s.max_scale && (1..=1000).contains(&s.max_scale)
                                );
                                prop_assert!(
                                    s.target_utilization > 0.0 && s.target_utilization <= 1.0
                                );
                            }
                            Err(problems) => {
                                prop_assert!(!problems.is_empty());
                            }
                        }
                        // Written back out, the manifest reads the same.
                        if !f.spec.scaling.target_utilization.is_nan() {
                            let again = serde_yaml::to_string(f).expect("serialises");
                            let back = parse_manifest(file, &again).expect("its own output parses");
                            prop_assert_eq!(back.len(), 1);
                            prop_assert_eq!(&back[0], f);
                        }
                    }
                }
            }
            Ok(())
        });
    }
}

mod routes {
    //! The whole router, with a stand-in gateway that has three functions
    //! and answers every invocation with an arbitrary handler result.

    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::body::Body;
    use bytes::Bytes;
    use http::{HeaderMap, Request};
    use http_body_util::BodyExt;
    use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
    use porchlight_api::FunctionSpec;
    use porchlight_core::{FunctionKey, GatewayReport};
    use porchlight_gateway::GatewayError;
    use porchlight_gateway::budget::{MemoryBudget, Purpose, Reservation};
    use porchlight_gateway::dead_letters::{DeadLetterList, PageRequest};
    use porchlight_gateway::forwarded::Forwarded;
    use porchlight_gateway::registry::{DispatchConfig, FunctionEntry, Registry};
    use porchlight_gateway::routes::{Ingress, app};
    use porchlight_gateway::sync_invoke::{InvocationResult, TriggerKind};
    use proptest::prelude::*;
    use serde_json::Value;
    use tower::ServiceExt;

    use super::{fuzz, inputs};

    struct StandIn {
        registry: Registry,
        result: Mutex<InvocationResult>,
    }

    fn is_json(payload: &[u8]) -> bool {
        serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok()
    }

    impl Ingress for StandIn {
        fn function(&self, name: &str) -> Result<Arc<FunctionEntry>, GatewayError> {
            self.registry
                .get(name)
                .ok_or_else(|| GatewayError::not_found(name))
        }
        fn functions(&self) -> Vec<Arc<FunctionEntry>> {
            self.registry.all()
        }
        async fn invoke(
            &self,
            _: &Arc<FunctionEntry>,
            payload: Bytes,
            _: &str,
            _: TriggerKind,
            _: &Forwarded,
        ) -> Result<InvocationResult, GatewayError> {
            assert!(is_json(&payload), "the gateway sends a handler JSON");
            Ok(self.result.lock().expect("lock").clone())
        }
        fn reserve(&self, bytes: usize, purpose: Purpose) -> Result<Reservation, GatewayError> {
            Ok(MemoryBudget::new(usize::MAX).try_reserve(bytes, purpose)?)
        }
        fn has_async_room(&self, _: &FunctionEntry) -> bool {
            true
        }
        async fn enqueue(
            &self,
            _: &Arc<FunctionEntry>,
            payload: Bytes,
            _: Reservation,
            _: String,
            _: TriggerKind,
            _: Forwarded,
        ) -> Result<(), GatewayError> {
            assert!(is_json(&payload), "the gateway queues JSON events");
            Ok(())
        }
        fn is_ready(&self) -> bool {
            true
        }
        fn metrics_text(&self) -> String {
            String::new()
        }
        fn latest_report(&self) -> Arc<GatewayReport> {
            Arc::default()
        }
        async fn report_after(&self, _: u64, _: Duration) -> Arc<GatewayReport> {
            Arc::default()
        }
        async fn dead_letters(&self, _: &PageRequest) -> Result<DeadLetterList, GatewayError> {
            Ok(DeadLetterList::empty())
        }
        async fn redrive(&self, name: &str, _: Option<&str>) -> Result<usize, GatewayError> {
            Err(GatewayError::not_found(name))
        }
    }

    fn stand_in() -> Arc<StandIn> {
        let registry = Registry::new(DispatchConfig::default());
        for (name, triggers) in [
            (
                "v1",
                "[{http: {}}, {s3: {bucket: uploads}}, {cloudevents: {type: com.example.created}}]",
            ),
            ("v2", "[{http: {payloadFormat: '2.0'}}]"),
            ("plain", "[]"),
        ] {
            let spec: FunctionSpec = serde_yaml::from_str(&format!(
                "{{handler: app.h, code: {{inline: x}}, triggers: {triggers}}}"
            ))
            .expect("spec");
            let settings = spec.validate().expect("valid");
            registry.upsert(FunctionKey::new("default", name), spec, settings);
        }
        Arc::new(StandIn {
            registry,
            result: Mutex::new(InvocationResult {
                body: Bytes::new(),
                function_error: None,
                cold_start: false,
                init_duration_ms: None,
                duration_ms: None,
                environment: Arc::from("env"),
                log_result: None,
                held: Default::default(),
                waited: None,
            }),
        })
    }

    /// Characters escaped in a generated path or query: what cannot be in a
    /// URI at all. `%`, `/`, `?`, `&`, `=`, `+` and `:` stay as they are.
    const URI_UNSAFE: &AsciiSet = &CONTROLS
        .add(b' ')
        .add(b'"')
        .add(b'#')
        .add(b'<')
        .add(b'>')
        .add(b'`')
        .add(b'{')
        .add(b'}')
        .add(b'|')
        .add(b'\\')
        .add(b'^')
        .add(b'[')
        .add(b']');

    fn path() -> impl Strategy<Value = String> {
        let name = prop_oneof![
            prop::sample::select(vec![
                "v1",
                "v2",
                "plain",
                "nope",
                "v1:$LATEST",
                "v1:7",
                "v1%3A1"
            ])
            .prop_map(String::from),
            "arn:aws:lambda:us-east-1:000000000000:function:(v1|v2|plain)(:\\$LATEST|:1)?"
                .prop_map(String::from),
            inputs::text(),
        ];
        prop_oneof![
            name.clone()
                .prop_map(|n| format!("/2015-03-31/functions/{n}/invocations")),
            name.clone()
                .prop_map(|n| format!("/2015-03-31/functions/{n}")),
            (name, inputs::text()).prop_map(|(n, rest)| format!("/http/{n}/{rest}")),
            prop::sample::select(vec![
                "/http/v1",
                "/http/v2/",
                "/events/s3",
                "/events/cloudevents",
                "/v1/dead-letters",
                "/v1/functions",
                "/v1/concurrency",
                "/ready",
                "/live",
                "/metrics",
                "/2015-03-31/functions/",
            ])
            .prop_map(String::from),
            inputs::text().prop_map(|t| format!("/{t}")),
        ]
    }

    #[derive(Debug, Clone)]
    struct Case {
        method: String,
        uri: String,
        headers: HeaderMap,
        body: Vec<u8>,
        result: Vec<u8>,
        function_error: Option<String>,
        environment: String,
    }

    fn case() -> impl Strategy<Value = Case> {
        (
            prop_oneof![
                4 => prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]).prop_map(String::from),
                1 => "[A-Z]{1,10}",
            ],
            path(),
            prop::option::of(inputs::query()),
            inputs::headers(),
            prop_oneof![
                inputs::bytes(),
                inputs::json().prop_map(|v| serde_json::to_vec(&v).expect("serialises")),
            ],
            prop_oneof![
                inputs::bytes(),
                inputs::json().prop_map(|v| serde_json::to_vec(&v).expect("serialises")),
                (100u16..=599, inputs::headers(), inputs::text(), any::<bool>()).prop_map(|(status, headers, body, v2)| {
                    let headers: serde_json::Map<String, Value> = headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned())))
                        .collect();
                    let mut r = serde_json::json!({"statusCode": status, "headers": headers, "body": body});
                    if v2 {
                        r["cookies"] = serde_json::json!([body]);
                    }
                    serde_json::to_vec(&r).expect("serialises")
                }),
            ],
            prop::option::of(prop_oneof![Just("Unhandled".to_string()), inputs::text()]),
            inputs::text(),
        )
            .prop_map(|(method, path, query, headers, body, result, function_error, environment)| {
                let mut uri = utf8_percent_encode(&path, URI_UNSAFE).to_string();
                if let Some(q) = query {
                    uri.push('?');
                    uri.push_str(&utf8_percent_encode(&q, URI_UNSAFE).to_string());
                }
                Case { method, uri, headers, body, result, function_error, environment }
            })
    }

    /// An error answer of the gateway: Lambda's JSON shape.
    fn lambda_shaped(body: &[u8]) -> bool {
        serde_json::from_slice::<Value>(body)
            .is_ok_and(|v| v["errorType"].is_string() && v["errorMessage"].is_string())
    }

    #[test]
    fn fuzz_gateway_routes() {
        let gateway = stand_in();
        let router = app(gateway.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        fuzz::run("gateway_routes", case(), |c| {
            let Ok(mut request) = Request::builder()
                .method(c.method.as_str())
                .uri(c.uri.as_str())
                .body(Body::from(c.body.clone()))
            else {
                // Not a request hyper would hand over.
                return Ok(());
            };
            *request.headers_mut() = c.headers.clone();
            *gateway.result.lock().expect("lock") = InvocationResult {
                body: Bytes::from(c.result.clone()),
                function_error: c.function_error.clone(),
                cold_start: c.function_error.is_none(),
                init_duration_ms: Some(12.5),
                duration_ms: Some(3.0),
                environment: Arc::from(c.environment.as_str()),
                log_result: None,
                held: Default::default(),
                waited: None,
            };
            let (status, body) = runtime.block_on(async {
                let response =
                    tokio::time::timeout(Duration::from_secs(10), router.clone().oneshot(request))
                        .await
                        .expect("the gateway answers")
                        .expect("infallible");
                let status = response.status();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .expect("body")
                    .to_bytes();
                (status, body)
            });
            let path = c.uri.split('?').next().unwrap_or("");
            if path.starts_with("/http/") {
                // Behind the http trigger the status is the handler's.
                return Ok(());
            }
            prop_assert!(status.as_u16() < 500, "{status} for {} {}", c.method, c.uri);
            // HEAD answers carry no body; axum answers a wrong method with an empty 405.
            if status.is_client_error()
                && status != http::StatusCode::METHOD_NOT_ALLOWED
                && c.method != "HEAD"
            {
                prop_assert!(
                    lambda_shaped(&body),
                    "{status} for {} {} is not Lambda-shaped: {:?}",
                    c.method,
                    c.uri,
                    String::from_utf8_lossy(&body)
                );
            }
            Ok(())
        });
    }
}

/// A CloudEvent's attribute, as its structured JSON carries it.
fn attr(ev: &porchlight_gateway::events::cloudevents::CloudEvent, name: &str) -> Option<String> {
    ev.to_json().get(name)?.as_str().map(str::to_string)
}
