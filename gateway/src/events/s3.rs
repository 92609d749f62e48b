//! S3 event notifications (`{"Records": [...]}` as S3, MinIO and Ceph send
//! them) and the matching of records to functions' `s3` triggers.

use porchlight_api::function::S3Trigger;
use serde_json::{Value, json};

use super::decode_query_component;

/// One notification record, with what matching needs pulled out.
#[derive(Debug, Clone, PartialEq)]
pub struct S3Record {
    /// Bucket name.
    pub bucket: String,
    /// `ObjectCreated:Put` (the `s3:` prefix removed if present).
    pub event_name: String,
    /// The object key, URL-decoded (`+` is a space).
    pub key: String,
    /// The record as received.
    pub raw: Value,
}

impl S3Record {
    /// The event a handler receives for this record (one record per invocation, as S3 does).
    pub fn event(&self) -> Value {
        json!({ "Records": [self.raw] })
    }
}

/// Parses a notification body. MinIO's webhook shape (`EventName`, `Key`,
/// `Records`) is accepted too; only `Records` is used.
pub fn parse_notification(body: &[u8]) -> Result<Vec<S3Record>, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let records = value
        .get("Records")
        .and_then(Value::as_array)
        .ok_or_else(|| "body has no Records array".to_string())?;
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let s = |ptr: &str| r.pointer(ptr).and_then(Value::as_str);
            let bucket = s("/s3/bucket/name")
                .ok_or_else(|| format!("Records[{i}].s3.bucket.name is missing"))?;
            let key = s("/s3/object/key")
                .ok_or_else(|| format!("Records[{i}].s3.object.key is missing"))?;
            let event_name =
                s("/eventName").ok_or_else(|| format!("Records[{i}].eventName is missing"))?;
            Ok(S3Record {
                bucket: bucket.to_string(),
                event_name: event_name
                    .strip_prefix("s3:")
                    .unwrap_or(event_name)
                    .to_string(),
                key: decode_query_component(key),
                raw: r.clone(),
            })
        })
        .collect()
}

/// Whether an event-name pattern (`s3:ObjectCreated:*`) matches a record's name.
pub fn event_name_matches(pattern: &str, event_name: &str) -> bool {
    let pattern = pattern.strip_prefix("s3:").unwrap_or(pattern);
    let event_name = event_name.strip_prefix("s3:").unwrap_or(event_name);
    match pattern.strip_suffix('*') {
        Some(prefix) => event_name.starts_with(prefix),
        None => pattern == event_name,
    }
}

/// Whether a trigger wants a record.
pub fn trigger_matches(trigger: &S3Trigger, record: &S3Record) -> bool {
    trigger.bucket == record.bucket
        && trigger
            .events
            .iter()
            .any(|p| event_name_matches(p, &record.event_name))
        && trigger
            .prefix
            .as_deref()
            .is_none_or(|p| record.key.starts_with(p))
        && trigger
            .suffix
            .as_deref()
            .is_none_or(|s| record.key.ends_with(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(bucket: &str, name: &str, key: &str) -> Vec<u8> {
        json!({"Records": [{
            "eventVersion": "2.0", "eventSource": "aws:s3", "eventName": name,
            "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 5}}
        }]})
        .to_string()
        .into_bytes()
    }

    fn trigger(prefix: Option<&str>, suffix: Option<&str>) -> S3Trigger {
        S3Trigger {
            bucket: "uploads".into(),
            events: vec!["s3:ObjectCreated:*".into()],
            prefix: prefix.map(str::to_string),
            suffix: suffix.map(str::to_string),
        }
    }

    #[test]
    fn decodes_keys_and_matches_wildcards() {
        let r = &parse_notification(&record(
            "uploads",
            "ObjectCreated:Put",
            "in/Happy+Face%21.jpg",
        ))
        .expect("ok")[0];
        assert_eq!(r.key, "in/Happy Face!.jpg");
        assert!(trigger_matches(&trigger(Some("in/"), Some(".jpg")), r));
        assert!(!trigger_matches(&trigger(Some("out/"), None), r));
        assert!(!trigger_matches(&trigger(None, Some(".png")), r));
        let minio =
            &parse_notification(&record("uploads", "s3:ObjectCreated:Put", "a")).expect("ok")[0];
        assert_eq!(minio.event_name, "ObjectCreated:Put");
        assert!(trigger_matches(&trigger(None, None), minio));
        let other = &parse_notification(&record("other", "ObjectCreated:Put", "a")).expect("ok")[0];
        assert!(!trigger_matches(&trigger(None, None), other));
        assert_eq!(r.event()["Records"][0]["s3"]["object"]["size"], 5);
    }

    #[test]
    fn event_names() {
        assert!(event_name_matches(
            "s3:ObjectCreated:*",
            "ObjectCreated:Copy"
        ));
        assert!(event_name_matches(
            "ObjectRemoved:Delete",
            "s3:ObjectRemoved:Delete"
        ));
        assert!(!event_name_matches(
            "s3:ObjectCreated:Put",
            "ObjectCreated:Post"
        ));
        assert!(!event_name_matches(
            "s3:ObjectRemoved:*",
            "ObjectCreated:Put"
        ));
    }

    #[test]
    fn rejects_malformed_notifications() {
        assert!(parse_notification(b"nope").is_err());
        assert!(parse_notification(b"{}").is_err());
        assert!(parse_notification(br#"{"Records":[{"eventName":"x"}]}"#).is_err());
        assert_eq!(
            parse_notification(br#"{"Records":[]}"#).expect("ok").len(),
            0
        );
    }
}
