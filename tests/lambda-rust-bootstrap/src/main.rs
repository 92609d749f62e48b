//! A Lambda function for the runtime shim's tests, built with the unmodified
//! `lambda_runtime` crate. Event knobs:
//! - `{"fail": true}`: return an error (reported through `/error`);
//! - `{"sleep_ms": N}`: sleep N ms before answering;
//! - `{"exit": N}`: exit the process with code N mid-invocation.
//!
//! The answer echoes the event with the number of invocations this process has
//! handled (a module-level counter, to observe warm reuse and re-init), the
//! request id, the remaining time and the process id.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};

static INVOCATIONS: AtomicU64 = AtomicU64::new(0);

async fn handler(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let count = INVOCATIONS.fetch_add(1, Ordering::SeqCst) + 1;
    let (payload, context) = event.into_parts();
    if let Some(code) = payload.get("exit").and_then(Value::as_i64) {
        std::process::exit(i32::try_from(code).unwrap_or(1));
    }
    if let Some(ms) = payload.get("sleep_ms").and_then(Value::as_u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if payload.get("fail").and_then(Value::as_bool) == Some(true) {
        return Err("the event asked for a failure".into());
    }
    let remaining_ms = context
        .deadline()
        .duration_since(SystemTime::now())
        .map(|d| d.as_millis())
        .unwrap_or(0);
    Ok(json!({
        "event": payload,
        "count": count,
        "request_id": context.request_id,
        "remaining_ms": remaining_ms,
        "function_arn": context.invoked_function_arn,
        "pid": std::process::id(),
    }))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(handler)).await
}
