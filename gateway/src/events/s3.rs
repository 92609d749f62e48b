//! S3 event notifications (`{"Records": [...]}` as S3, MinIO and Ceph send
//! them) and the matching of records to functions' `s3` triggers.

use bytes::Bytes;
use porchlight_api::function::S3Trigger;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::decode_query_component;

/// One notification record, with what matching needs pulled out. The
/// record itself stays the text it arrived as: parsing a notification
/// builds no JSON tree, whatever its size.
#[derive(Debug, Clone)]
pub struct S3Record<'a> {
    /// Bucket name.
    pub bucket: String,
    /// `ObjectCreated:Put` (the `s3:` prefix removed if present).
    pub event_name: String,
    /// The object key, URL-decoded (`+` is a space).
    pub key: String,
    /// The record as received.
    pub raw: &'a RawValue,
}

const EVENT_START: &str = r#"{"Records":["#;
const EVENT_END: &str = "]}";

impl S3Record<'_> {
    /// The size of [`S3Record::event`], known before it is built.
    pub fn event_len(&self) -> usize {
        EVENT_START.len() + self.raw.get().len() + EVENT_END.len()
    }

    /// The event a handler receives for this record (one record per
    /// invocation, as S3 does), as JSON text.
    pub fn event(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.event_len());
        out.extend_from_slice(EVENT_START.as_bytes());
        out.extend_from_slice(self.raw.get().as_bytes());
        out.extend_from_slice(EVENT_END.as_bytes());
        Bytes::from(out)
    }

    /// Bytes the parsed record holds besides the notification's text.
    pub fn parsed_size(&self) -> usize {
        std::mem::size_of::<Self>() + self.bucket.len() + self.event_name.len() + self.key.len()
    }
}

/// The one field of a notification that is read; the rest is skipped unread.
#[derive(Deserialize)]
struct Notification<'a> {
    #[serde(rename = "Records", borrow)]
    records: Option<&'a RawValue>,
}

/// The fields of a record that matching reads; the rest is skipped unread.
#[derive(Deserialize)]
struct RecordFields<'a> {
    #[serde(rename = "eventName", borrow)]
    event_name: Option<&'a RawValue>,
    #[serde(borrow)]
    s3: Option<S3Fields<'a>>,
}

#[derive(Deserialize)]
struct S3Fields<'a> {
    #[serde(borrow)]
    bucket: Option<Named<'a>>,
    #[serde(borrow)]
    object: Option<Keyed<'a>>,
}

#[derive(Deserialize)]
struct Named<'a> {
    #[serde(borrow)]
    name: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Keyed<'a> {
    #[serde(borrow)]
    key: Option<&'a RawValue>,
}

/// A JSON string's value; `None` for any other JSON.
fn string(raw: Option<&RawValue>) -> Option<String> {
    let raw = raw?.get();
    raw.starts_with('"')
        .then(|| serde_json::from_str::<String>(raw).ok())
        .flatten()
}

fn is_object(raw: &RawValue) -> bool {
    raw.get().starts_with('{')
}

/// Parses a notification body. MinIO's webhook shape (`EventName`, `Key`,
/// `Records`) is accepted too; only `Records` is used.
pub fn parse_notification(body: &[u8]) -> Result<Vec<S3Record<'_>>, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let top: &RawValue =
        serde_json::from_str(text).map_err(|e| format!("body is not JSON: {e}"))?;
    let records: Vec<&RawValue> = is_object(top)
        .then(|| serde_json::from_str::<Notification<'_>>(top.get()).ok())
        .flatten()
        .and_then(|n| n.records)
        .and_then(|r| serde_json::from_str(r.get()).ok())
        .ok_or_else(|| "body has no Records array".to_string())?;
    records
        .into_iter()
        .enumerate()
        .map(|(i, raw)| {
            let fields = if is_object(raw) {
                serde_json::from_str::<RecordFields<'_>>(raw.get()).ok()
            } else {
                None
            };
            let (event_name, s3) = match fields {
                Some(f) => (f.event_name, f.s3),
                None => (None, None),
            };
            let (bucket, object) = match s3 {
                Some(s3) => (s3.bucket, s3.object),
                None => (None, None),
            };
            let bucket = string(bucket.and_then(|b| b.name))
                .ok_or_else(|| format!("Records[{i}].s3.bucket.name is missing"))?;
            let key = string(object.and_then(|o| o.key))
                .ok_or_else(|| format!("Records[{i}].s3.object.key is missing"))?;
            let event_name =
                string(event_name).ok_or_else(|| format!("Records[{i}].eventName is missing"))?;
            Ok(S3Record {
                bucket,
                event_name: event_name
                    .strip_prefix("s3:")
                    .unwrap_or(&event_name)
                    .to_string(),
                key: decode_query_component(&key),
                raw,
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
    use serde_json::{Value, json};

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
        let body = record("uploads", "ObjectCreated:Put", "in/Happy+Face%21.jpg");
        let r = &parse_notification(&body).expect("ok")[0];
        assert_eq!(r.key, "in/Happy Face!.jpg");
        assert!(trigger_matches(&trigger(Some("in/"), Some(".jpg")), r));
        assert!(!trigger_matches(&trigger(Some("out/"), None), r));
        assert!(!trigger_matches(&trigger(None, Some(".png")), r));
        let body = record("uploads", "s3:ObjectCreated:Put", "a");
        let minio = &parse_notification(&body).expect("ok")[0];
        assert_eq!(minio.event_name, "ObjectCreated:Put");
        assert!(trigger_matches(&trigger(None, None), minio));
        let body = record("other", "ObjectCreated:Put", "a");
        let other = &parse_notification(&body).expect("ok")[0];
        assert!(!trigger_matches(&trigger(None, None), other));
        let event = r.event();
        assert_eq!(event.len(), r.event_len());
        let event: Value = serde_json::from_slice(&event).expect("json");
        assert_eq!(event["Records"][0]["s3"]["object"]["size"], 5);
        assert_eq!(event["Records"][0]["eventVersion"], "2.0");
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
        assert!(parse_notification(br#"{"Records":"x"}"#).is_err());
        assert!(parse_notification(br#"{"Records":[1]}"#).is_err());
        let wrong_type =
            br#"{"Records":[{"eventName":5,"s3":{"bucket":{"name":"b"},"object":{"key":"k"}}}]}"#;
        assert!(parse_notification(wrong_type).is_err());
        assert_eq!(
            parse_notification(br#"{"Records":[]}"#).expect("ok").len(),
            0
        );
    }
}
