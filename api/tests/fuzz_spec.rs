//! Fuzzing of `FunctionSpec::validate` on arbitrary specs: it never panics,
//! every refusal names at least one problem on one line, and what it accepts
//! is within bounds and runs the autoscaler without trouble.
//!
//! Runs `PORCHLIGHT_FUZZ_CASES` cases (default 256); `tests/fuzz.sh` runs it long.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use porchlight_api::FunctionSpec;
use porchlight_api::function::{
    CloudEventsTrigger, ConfigMapCode, FunctionCode, HttpTrigger, PayloadFormat, QueueTrigger,
    S3Trigger, Scaling, Trigger,
};
use porchlight_core::{Autoscaler, AutoscalerConfig};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseResult, TestRunner};

/// Cases per target: `PORCHLIGHT_FUZZ_CASES`, default 256.
fn cases() -> u32 {
    std::env::var("PORCHLIGHT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// Runs `property` on `cases()` inputs and prints the executions made.
fn run<S: Strategy>(target: &str, strategy: S, property: impl Fn(S::Value) -> TestCaseResult) {
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
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

fn text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[a-z0-9.:*/-]{0,12}", Just(String::new()),]
}

/// A duration as written in a spec: valid, huge, or not a duration.
fn duration() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,3}(ms|s|m|h)",
        "[0-9]{15,25}(ms|s|m|h)",
        "0(ms|s)",
        text(),
    ]
}

fn small_or_any() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..2000, 10_000u32..11_000, any::<u32>()]
}

fn trigger() -> impl Strategy<Value = Trigger> {
    let http = prop::option::of(prop::sample::select(vec![
        PayloadFormat::V1,
        PayloadFormat::V2,
    ]))
    .prop_map(|f| {
        f.map(|payload_format| HttpTrigger {
            payload_format,
            ..HttpTrigger::default()
        })
    });
    let s3 = prop::option::of(
        (
            text(),
            prop::collection::vec(text(), 0..3),
            prop::option::of(text()),
            prop::option::of(text()),
        )
            .prop_map(|(bucket, events, prefix, suffix)| S3Trigger {
                bucket,
                events,
                prefix,
                suffix,
            }),
    );
    let cloudevents = prop::option::of(
        (text(), prop::option::of(text()))
            .prop_map(|(event_type, source)| CloudEventsTrigger { event_type, source }),
    );
    let schedule = prop::option::of(prop::sample::select(vec![
        "rate(1 minute)".to_string(),
        "rate(1 minutes)".to_string(),
        "cron(0 12 * * ? *)".to_string(),
        "cron(0 12 * * * *)".to_string(),
        "every minute".to_string(),
    ]));
    let queue = prop::option::of(
        (
            prop::option::of(text()),
            prop::option::of(text()),
            small_or_any(),
            small_or_any(),
            prop::option::of(small_or_any()),
        )
            .prop_map(
                |(subject, stream, batch_size, window, concurrency)| QueueTrigger {
                    subject,
                    stream,
                    batch_size,
                    maximum_batching_window_seconds: window,
                    maximum_concurrency: concurrency,
                },
            ),
    );
    (http, s3, cloudevents, schedule, queue).prop_map(|(http, s3, cloudevents, schedule, queue)| {
        Trigger {
            http,
            s3,
            cloudevents,
            schedule,
            queue,
        }
    })
}

fn spec() -> impl Strategy<Value = FunctionSpec> {
    let runtime = prop_oneof![
        Just("python3.12".to_string()),
        Just("provided".to_string()),
        "python3\\.[0-9]{0,3}[a-z]?",
        text(),
    ];
    let handler = prop::option::of(prop_oneof!["[a-z]{0,4}\\.[a-z]{0,4}", text()]);
    let code = (
        prop::option::of(text()),
        prop::option::of(text().prop_map(|name| ConfigMapCode { name })),
        prop::option::of(text()),
        prop::option::of(text()),
    )
        .prop_map(|(inline, config_map, image, path)| FunctionCode {
            inline,
            config_map,
            image,
            path,
        });
    let scaling = (
        small_or_any(),
        small_or_any(),
        prop_oneof![
            0.0f64..=1.0,
            any::<f64>(),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::MIN_POSITIVE)
        ],
        duration(),
        duration(),
        prop_oneof![
            Just(porchlight_api::function::KeepAlivePolicy::Fixed),
            Just(porchlight_api::function::KeepAlivePolicy::Adaptive)
        ],
    )
        .prop_map(
            |(
                min_scale,
                max_scale,
                target_utilization,
                scale_to_zero_after,
                stable_window,
                keep_alive,
            )| {
                Scaling {
                    min_scale,
                    max_scale,
                    target_utilization,
                    scale_to_zero_after,
                    stable_window,
                    keep_alive,
                }
            },
        );
    (
        (
            runtime,
            handler,
            code,
            prop::collection::btree_map(text(), text(), 0..3),
        ),
        (small_or_any(), small_or_any(), small_or_any()),
        scaling,
        prop::option::of(any::<i32>()),
        prop::collection::vec(trigger(), 0..20),
    )
        .prop_map(
            |(
                (runtime, handler, code, env),
                (timeout_seconds, memory_mib, concurrency),
                scaling,
                replicas,
                triggers,
            )| {
                FunctionSpec {
                    runtime,
                    handler,
                    code,
                    env: env.into_iter().collect::<BTreeMap<_, _>>(),
                    env_value_from: BTreeMap::new(),
                    env_from: Vec::new(),
                    timeout_seconds,
                    memory_mib,
                    concurrency,
                    freeze: true,
                    scaling,
                    replicas,
                    triggers,
                    async_config: None,
                }
            },
        )
}

#[test]
fn fuzz_function_spec_validate() {
    run("function_spec_validate", spec(), |spec| {
        match spec.validate() {
            Ok(s) => {
                prop_assert!((1..=1000).contains(&s.max_scale));
                prop_assert!(s.min_scale <= s.max_scale);
                prop_assert!(s.target_utilization > 0.0 && s.target_utilization <= 1.0);
                prop_assert!((1..=1000).contains(&s.concurrency_per_environment));
                prop_assert!(s.stable_window >= Duration::from_secs(1));
                prop_assert!((1..=900).contains(&spec.timeout_seconds));
                prop_assert!(spec.triggers.len() <= 16);
                for (_, q) in spec.queues() {
                    prop_assert!(q.subject.is_some() != q.stream.is_some());
                    prop_assert!((1..=10_000).contains(&q.batch_size));
                    prop_assert!(q.maximum_batching_window_seconds <= 300);
                    prop_assert!(q.batch_size <= 10 || q.maximum_batching_window_seconds >= 1);
                    prop_assert!(
                        q.maximum_concurrency
                            .is_none_or(|c| (2..=1000).contains(&c))
                    );
                }
                // What validation accepts, the autoscaler runs with.
                let t0 = Instant::now();
                let mut autoscaler = Autoscaler::new(AutoscalerConfig::from_settings(&s), t0, 0);
                for (i, load) in [0.0, 5.0, 1e9, f64::NAN, 0.0].into_iter().enumerate() {
                    let now = t0 + Duration::from_millis(700 * i as u64);
                    autoscaler.record(now, load);
                    let d = autoscaler.decide(now, i as u32);
                    prop_assert!(d.desired <= s.max_scale);
                }
            }
            Err(problems) => {
                prop_assert!(!problems.is_empty());
                for p in &problems {
                    prop_assert!(p.starts_with("spec."), "{p:?}");
                }
            }
        }
        Ok(())
    });
}
