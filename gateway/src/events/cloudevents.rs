//! CloudEvents 1.0 over HTTP: binary mode (`ce-*` headers, body = data) and
//! structured mode (`application/cloudevents+json`), normalised to the
//! structured JSON form that handlers receive.
//!
//! A structured event is passed on as the text it arrived as and a binary
//! one is written once; neither builds a JSON tree of the data, so parsing
//! costs about the request's own size.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http::HeaderMap;
use percent_encoding::percent_decode_str;
use porchlight_api::function::CloudEventsTrigger;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// A CloudEvent in structured JSON form, with the attributes that matching reads.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudEvent {
    /// `type`.
    pub event_type: String,
    /// `source`.
    pub source: String,
    /// The structured JSON handlers receive.
    pub json: Bytes,
}

impl CloudEvent {
    /// The event as a JSON value (for inspection; the fan-out passes [`CloudEvent::json`] on).
    pub fn to_json(&self) -> Value {
        serde_json::from_slice(&self.json).unwrap_or(Value::Null)
    }

    /// Whether a trigger wants this event.
    pub fn matches(&self, trigger: &CloudEventsTrigger) -> bool {
        self.event_type == trigger.event_type
            && trigger.source.as_deref().is_none_or(|s| self.source == s)
    }

    /// Bytes the parsed event holds.
    pub fn parsed_size(&self) -> usize {
        std::mem::size_of::<Self>() + self.event_type.len() + self.source.len() + self.json.len()
    }
}

const REQUIRED: [&str; 4] = ["id", "source", "specversion", "type"];

/// The required attributes of a structured event; the rest is skipped unread.
#[derive(Deserialize)]
struct Required<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    source: Option<&'a RawValue>,
    #[serde(borrow)]
    specversion: Option<&'a RawValue>,
    #[serde(rename = "type", borrow)]
    event_type: Option<&'a RawValue>,
}

/// A JSON string's value; `None` for any other JSON.
fn string(raw: Option<&RawValue>) -> Option<String> {
    let raw = raw?.get();
    raw.starts_with('"')
        .then(|| serde_json::from_str::<String>(raw).ok())
        .flatten()
}

/// Checks the required attributes (`get` reads one as a string) and returns
/// `type` and `source`.
fn check_required(get: impl Fn(&str) -> Option<String>) -> Result<(String, String), String> {
    let values: Vec<Option<String>> = REQUIRED
        .iter()
        .map(|a| get(a).filter(|v| !v.is_empty()))
        .collect();
    let missing: Vec<&str> = REQUIRED
        .iter()
        .zip(&values)
        .filter(|(_, v)| v.is_none())
        .map(|(a, _)| *a)
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "required CloudEvents attributes missing: {}",
            missing.join(", ")
        ));
    }
    let [_, source, specversion, event_type] =
        <[Option<String>; 4]>::try_from(values).map_err(|_| "attributes".to_string())?;
    if specversion.as_deref() != Some("1.0") {
        return Err("specversion must be 1.0".into());
    }
    Ok((event_type.unwrap_or_default(), source.unwrap_or_default()))
}

fn is_json_content_type(ct: &str) -> bool {
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || media == "text/json" || media.ends_with("+json")
}

/// Decodes a binary-mode header value: an optional surrounding pair of double
/// quotes is removed, then percent-decoding is applied once; invalid UTF-8 is an error.
fn decode_header_value(raw: &[u8]) -> Result<String, String> {
    let s = std::str::from_utf8(raw).map_err(|_| "header value is not UTF-8".to_string())?;
    let s = s
        .strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .unwrap_or(s);
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| "header value decodes to invalid UTF-8".to_string())
}

/// Parses a request into CloudEvents (a batch yields several).
pub fn parse_request(headers: &HeaderMap, body: &[u8]) -> Result<Vec<CloudEvent>, String> {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media.starts_with("application/cloudevents-batch") {
        let batch: Vec<&RawValue> = std::str::from_utf8(body)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str(t).map_err(|e| e.to_string()))
            .map_err(|e| format!("batch is not a JSON array: {e}"))?;
        return batch.into_iter().map(structured).collect();
    }
    if media.starts_with("application/cloudevents") {
        let v: &RawValue = std::str::from_utf8(body)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str(t).map_err(|e| e.to_string()))
            .map_err(|e| format!("body is not JSON: {e}"))?;
        return Ok(vec![structured(v)?]);
    }
    binary(headers, content_type, body).map(|e| vec![e])
}

fn structured(raw: &RawValue) -> Result<CloudEvent, String> {
    let text = raw.get();
    let required = text
        .starts_with('{')
        .then(|| serde_json::from_str::<Required<'_>>(text).ok())
        .flatten()
        .ok_or_else(|| "a structured CloudEvent must be a JSON object".to_string())?;
    let (event_type, source) = check_required(|a| match a {
        "id" => string(required.id),
        "source" => string(required.source),
        "specversion" => string(required.specversion),
        _ => string(required.event_type),
    })?;
    Ok(CloudEvent {
        event_type,
        source,
        json: Bytes::copy_from_slice(text.as_bytes()),
    })
}

/// A value of the structured form written from binary mode.
#[derive(Serialize)]
#[serde(untagged)]
enum Field<'a> {
    Text(String),
    Json(&'a RawValue),
}

fn binary(headers: &HeaderMap, content_type: &str, body: &[u8]) -> Result<CloudEvent, String> {
    let mut map: BTreeMap<String, Field<'_>> = BTreeMap::new();
    for (name, value) in headers {
        if let Some(attr) = name.as_str().strip_prefix("ce-") {
            if attr.is_empty() {
                continue;
            }
            let v = decode_header_value(value.as_bytes()).map_err(|e| format!("ce-{attr}: {e}"))?;
            map.insert(attr.to_string(), Field::Text(v));
        }
    }
    let (event_type, source) = check_required(|a| match map.get(a) {
        Some(Field::Text(v)) => Some(v.clone()),
        _ => None,
    })?;
    if !content_type.is_empty() {
        map.insert(
            "datacontenttype".into(),
            Field::Text(content_type.to_string()),
        );
    }
    if !body.is_empty() {
        if is_json_content_type(content_type) {
            let data: &RawValue = std::str::from_utf8(body)
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::from_str(t).map_err(|e| e.to_string()))
                .map_err(|e| format!("data is not JSON: {e}"))?;
            map.insert("data".into(), Field::Json(data));
        } else if let Ok(text) = std::str::from_utf8(body) {
            map.insert("data".into(), Field::Text(text.to_string()));
        } else {
            map.insert("data_base64".into(), Field::Text(B64.encode(body)));
        }
    }
    let json = serde_json::to_vec(&map).map_err(|e| format!("cannot write the event: {e}"))?;
    Ok(CloudEvent {
        event_type,
        source,
        json: Bytes::from(json),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        m
    }

    #[test]
    fn binary_mode_decodes_headers_and_json_data() {
        let headers = h(&[
            ("ce-specversion", "1.0"),
            ("ce-type", "com.example.order.created"),
            ("ce-source", "/orders%20eu"),
            ("ce-id", "\"42\""),
            ("ce-myext", "J%C3%B6rg"),
            ("content-type", "application/json"),
        ]);
        let ev = &parse_request(&headers, br#"{"n":1}"#).expect("valid")[0];
        assert_eq!(ev.source, "/orders eu");
        let json = ev.to_json();
        assert_eq!(json["id"], "42");
        assert_eq!(json["myext"], "Jörg");
        assert_eq!(json["datacontenttype"], "application/json");
        assert_eq!(json["data"]["n"], 1);
        let trig = CloudEventsTrigger {
            event_type: "com.example.order.created".into(),
            source: Some("/orders eu".into()),
        };
        assert!(ev.matches(&trig));
        let other_source = CloudEventsTrigger {
            source: Some("/elsewhere".into()),
            ..trig
        };
        assert!(!ev.matches(&other_source));
    }

    #[test]
    fn binary_mode_text_and_bytes() {
        let base = [
            ("ce-specversion", "1.0"),
            ("ce-type", "t"),
            ("ce-source", "s"),
            ("ce-id", "1"),
        ];
        let mut pairs = base.to_vec();
        pairs.push(("content-type", "text/plain"));
        let ev = &parse_request(&h(&pairs), b"hello").expect("valid")[0];
        assert_eq!(ev.to_json()["data"], "hello");
        let mut pairs = base.to_vec();
        pairs.push(("content-type", "application/octet-stream"));
        let ev = &parse_request(&h(&pairs), &[0xff, 0xfe]).expect("valid")[0];
        assert_eq!(ev.to_json()["data_base64"], "//4=");
    }

    #[test]
    fn structured_mode_and_batches() {
        let headers = h(&[(
            "content-type",
            "application/cloudevents+json; charset=UTF-8",
        )]);
        let body = br#"{"specversion":"1.0","type":"t","source":"s","id":"1","data":{"x":true}}"#;
        let ev = &parse_request(&headers, body).expect("valid")[0];
        assert_eq!(ev.to_json()["data"]["x"], true);
        assert_eq!(&ev.json[..], &body[..], "passed on as it arrived");
        let batch = h(&[("content-type", "application/cloudevents-batch+json")]);
        let body = format!(
            "[{},{}]",
            String::from_utf8_lossy(body),
            String::from_utf8_lossy(body)
        );
        assert_eq!(
            parse_request(&batch, body.as_bytes()).expect("valid").len(),
            2
        );
    }

    #[test]
    fn missing_attributes_are_rejected() {
        let err = parse_request(&h(&[("ce-type", "t")]), b"").expect_err("invalid");
        assert!(err.contains("id, source, specversion"), "{err}");
        let headers = h(&[("content-type", "application/cloudevents+json")]);
        assert!(parse_request(&headers, br#"{"type":"t"}"#).is_err());
        assert!(parse_request(&headers, b"nope").is_err());
        let v03 = br#"{"specversion":"0.3","type":"t","source":"s","id":"1"}"#;
        assert!(parse_request(&headers, v03).is_err());
        let not_strings = br#"{"specversion":"1.0","type":1,"source":"s","id":"1"}"#;
        assert!(parse_request(&headers, not_strings).is_err());
        assert!(parse_request(&headers, b"[1]").is_err());
        let batch = h(&[("content-type", "application/cloudevents-batch+json")]);
        assert!(parse_request(&batch, b"{}").is_err());
    }
}
