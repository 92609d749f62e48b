//! SQS's event shape, as a queue trigger delivers a batch of messages, and
//! the partial batch failure answer (`batchItemFailures`) read back. Pure
//! functions only.

use std::collections::HashSet;

use md5::{Digest, Md5};
use serde_json::{Map, Value, json};

use super::stable_uuid;
use crate::error::{ACCOUNT, REGION};

/// One message of a batch, as the mapping read it.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueMessage {
    /// The stream it is kept in.
    pub stream: String,
    /// Its sequence in the stream.
    pub sequence: u64,
    /// The payload.
    pub payload: bytes::Bytes,
    /// Its NATS headers (the first value of each).
    pub headers: Vec<(String, String)>,
    /// Times it was handed out, this one included.
    pub delivered: u64,
    /// When it was published (milliseconds since the Unix epoch).
    pub sent_ms: u64,
    /// When it was first handed out, as far as this gateway knows.
    pub first_received_ms: u64,
}

/// The `messageId` of the message at `sequence` of `stream`: a UUID that
/// is the same on every delivery and every gateway.
pub fn message_id(stream: &str, sequence: u64) -> String {
    stable_uuid(3, &[stream.as_bytes(), &sequence.to_be_bytes()])
}

/// The queue a trigger stands for (its subject, or its stream's name).
pub fn queue_arn(source: &str) -> String {
    format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{source}")
}

/// The SQS record of `message`, read through the trigger on `source`.
pub fn record(message: &QueueMessage, source: &str) -> Value {
    let body = String::from_utf8_lossy(&message.payload);
    let md5 = hex(&Md5::digest(body.as_bytes()));
    let attributes: Map<String, Value> = message
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), json!({"stringValue": v, "dataType": "String"})))
        .collect();
    json!({
        "messageId": message_id(&message.stream, message.sequence),
        "receiptHandle": format!("{}:{}:{}", message.stream, message.sequence, message.delivered),
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": message.delivered.to_string(),
            "SentTimestamp": message.sent_ms.to_string(),
            "SenderId": ACCOUNT,
            "ApproximateFirstReceiveTimestamp": message.first_received_ms.to_string(),
        },
        "messageAttributes": attributes,
        "md5OfBody": md5,
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn(source),
        "awsRegion": REGION,
    })
}

/// The event of a batch: `{"Records": [...]}`.
pub fn event(records: Vec<Value>) -> Value {
    json!({ "Records": records })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a successful answer says of its batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchAnswer {
    /// Every message succeeded.
    AllDone,
    /// These messages (`messageId`s, each once, all in the batch) failed;
    /// the others succeeded.
    Failed(Vec<String>),
    /// The answer names a message not in the batch, or is malformed: the
    /// whole batch failed (as Lambda treats it); the text says why.
    Invalid(String),
}

/// Reads a handler's successful answer to a batch of `ids`, as Lambda
/// does: an empty answer, `null`, or one without `batchItemFailures` (or
/// with an empty list or `null`) means all succeeded; an answer that is
/// not JSON, or an entry without a valid `itemIdentifier` of the batch,
/// means the whole batch failed.
pub fn batch_answer(body: &[u8], ids: &HashSet<String>) -> BatchAnswer {
    if body.iter().all(u8::is_ascii_whitespace) {
        return BatchAnswer::AllDone;
    }
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return BatchAnswer::Invalid("the answer is not JSON".into());
    };
    let Some(failures) = value.as_object().and_then(|o| o.get("batchItemFailures")) else {
        return BatchAnswer::AllDone;
    };
    let list = match failures {
        Value::Null => return BatchAnswer::AllDone,
        Value::Array(list) => list,
        _ => return BatchAnswer::Invalid("batchItemFailures is not a list".into()),
    };
    let mut failed: Vec<String> = Vec::new();
    for item in list {
        let id = match item.get("itemIdentifier") {
            Some(Value::String(id)) if !id.is_empty() => id,
            _ => {
                return BatchAnswer::Invalid(format!(
                    "a batchItemFailures entry has no itemIdentifier: {item}"
                ));
            }
        };
        if !ids.contains(id) {
            return BatchAnswer::Invalid(format!("itemIdentifier {id} is not in the batch"));
        }
        if !failed.contains(id) {
            failed.push(id.clone());
        }
    }
    if failed.is_empty() {
        BatchAnswer::AllDone
    } else {
        BatchAnswer::Failed(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> QueueMessage {
        QueueMessage {
            stream: "PORCHLIGHT_Q_orders".into(),
            sequence: 7,
            payload: bytes::Bytes::from_static(b"Hello from SQS!"),
            headers: vec![("trace".into(), "abc".into())],
            delivered: 2,
            sent_ms: 1_523_232_000_000,
            first_received_ms: 1_523_232_000_001,
        }
    }

    #[test]
    fn a_record_has_sqs_keys_exactly() {
        let r = record(&message(), "orders.new");
        let keys: Vec<&str> = r
            .as_object()
            .expect("object")
            .keys()
            .map(|k| k.as_str())
            .collect();
        let mut expected = vec![
            "messageId",
            "receiptHandle",
            "body",
            "attributes",
            "messageAttributes",
            "md5OfBody",
            "eventSource",
            "eventSourceARN",
            "awsRegion",
        ];
        expected.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, expected);
        let mut attrs: Vec<&str> = r["attributes"]
            .as_object()
            .expect("object")
            .keys()
            .map(|k| k.as_str())
            .collect();
        attrs.sort_unstable();
        assert_eq!(
            attrs,
            [
                "ApproximateFirstReceiveTimestamp",
                "ApproximateReceiveCount",
                "SenderId",
                "SentTimestamp"
            ]
        );
        assert_eq!(r["body"], "Hello from SQS!");
        // AWS's own example message has this body and digest.
        assert_eq!(r["md5OfBody"], "7b270e59b47ff90a553787216d55d91d");
        assert_eq!(r["eventSource"], "aws:sqs");
        assert_eq!(
            r["eventSourceARN"],
            "arn:aws:sqs:us-east-1:000000000000:orders.new"
        );
        assert_eq!(r["awsRegion"], "us-east-1");
        assert_eq!(r["attributes"]["ApproximateReceiveCount"], "2");
        assert_eq!(r["attributes"]["SentTimestamp"], "1523232000000");
        assert_eq!(
            r["messageAttributes"]["trace"],
            json!({"stringValue": "abc", "dataType": "String"})
        );
        assert_eq!(r["messageId"], message_id("PORCHLIGHT_Q_orders", 7));
        let batch = event(vec![r]);
        assert_eq!(batch["Records"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn message_ids_are_stable_and_distinct() {
        assert_eq!(message_id("S", 1), message_id("S", 1));
        assert_ne!(message_id("S", 1), message_id("S", 2));
        assert_ne!(message_id("S", 1), message_id("T", 1));
        let id = uuid::Uuid::parse_str(&message_id("S", 1)).expect("a UUID");
        assert_eq!(id.get_version_num(), 8);
    }

    #[test]
    fn batch_answers_are_read_as_lambda_does() {
        let ids: HashSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let answer = |s: &str| batch_answer(s.as_bytes(), &ids);
        assert_eq!(answer("null"), BatchAnswer::AllDone);
        assert_eq!(answer(""), BatchAnswer::AllDone);
        assert_eq!(answer(r#"{"ok":true}"#), BatchAnswer::AllDone);
        assert_eq!(answer(r#""done""#), BatchAnswer::AllDone);
        assert!(matches!(answer("{not json"), BatchAnswer::Invalid(_)));
        assert_eq!(answer(r#"{"batchItemFailures":[]}"#), BatchAnswer::AllDone);
        assert_eq!(
            answer(r#"{"batchItemFailures":null}"#),
            BatchAnswer::AllDone
        );
        assert_eq!(
            answer(
                r#"{"batchItemFailures":[{"itemIdentifier":"b"},{"itemIdentifier":"a"},{"itemIdentifier":"b"}]}"#
            ),
            BatchAnswer::Failed(vec!["b".into(), "a".into()])
        );
        assert!(matches!(
            answer(r#"{"batchItemFailures":[{"itemIdentifier":"z"}]}"#),
            BatchAnswer::Invalid(m) if m.contains("z is not in the batch")
        ));
        for malformed in [
            r#"{"batchItemFailures":"a"}"#,
            r#"{"batchItemFailures":[{"id":"a"}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":""}]}"#,
            r#"{"batchItemFailures":[{"itemIdentifier":3}]}"#,
            r#"{"batchItemFailures":["a"]}"#,
        ] {
            assert!(
                matches!(answer(malformed), BatchAnswer::Invalid(_)),
                "{malformed}"
            );
        }
    }
}
