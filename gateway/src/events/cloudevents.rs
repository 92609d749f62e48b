//! CloudEvents 1.0 over HTTP: binary mode (`ce-*` headers, body = data) and
//! structured mode (`application/cloudevents+json`), normalised to the
//! structured JSON form that handlers receive.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use http::HeaderMap;
use percent_encoding::percent_decode_str;
use porchlight_api::function::CloudEventsTrigger;
use serde_json::{Map, Value};

/// A CloudEvent in structured JSON form.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudEvent(pub Map<String, Value>);

impl CloudEvent {
    /// An attribute as a string.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(Value::as_str)
    }

    /// The JSON handlers receive.
    pub fn to_json(&self) -> Value {
        Value::Object(self.0.clone())
    }

    /// Whether a trigger wants this event.
    pub fn matches(&self, trigger: &CloudEventsTrigger) -> bool {
        self.attr("type") == Some(trigger.event_type.as_str())
            && trigger
                .source
                .as_deref()
                .is_none_or(|s| self.attr("source") == Some(s))
    }
}

const REQUIRED: [&str; 4] = ["id", "source", "specversion", "type"];

fn check_required(ev: &Map<String, Value>) -> Result<(), String> {
    let missing: Vec<&str> = REQUIRED
        .iter()
        .copied()
        .filter(|a| ev.get(*a).and_then(Value::as_str).is_none_or(str::is_empty))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "required CloudEvents attributes missing: {}",
            missing.join(", ")
        ));
    }
    if ev.get("specversion").and_then(Value::as_str) != Some("1.0") {
        return Err("specversion must be 1.0".into());
    }
    Ok(())
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
        let batch: Vec<Value> =
            serde_json::from_slice(body).map_err(|e| format!("batch is not a JSON array: {e}"))?;
        return batch.into_iter().map(structured).collect();
    }
    if media.starts_with("application/cloudevents") {
        let v: Value =
            serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
        return Ok(vec![structured(v)?]);
    }
    binary(headers, content_type, body).map(|e| vec![e])
}

fn structured(v: Value) -> Result<CloudEvent, String> {
    let Value::Object(map) = v else {
        return Err("a structured CloudEvent must be a JSON object".into());
    };
    check_required(&map)?;
    Ok(CloudEvent(map))
}

fn binary(headers: &HeaderMap, content_type: &str, body: &[u8]) -> Result<CloudEvent, String> {
    let mut map = Map::new();
    for (name, value) in headers {
        if let Some(attr) = name.as_str().strip_prefix("ce-") {
            if attr.is_empty() {
                continue;
            }
            let v = decode_header_value(value.as_bytes()).map_err(|e| format!("ce-{attr}: {e}"))?;
            map.insert(attr.to_string(), Value::String(v));
        }
    }
    check_required(&map)?;
    if !content_type.is_empty() {
        map.insert(
            "datacontenttype".into(),
            Value::String(content_type.to_string()),
        );
    }
    if !body.is_empty() {
        if is_json_content_type(content_type) {
            let data: Value =
                serde_json::from_slice(body).map_err(|e| format!("data is not JSON: {e}"))?;
            map.insert("data".into(), data);
        } else if let Ok(text) = std::str::from_utf8(body) {
            map.insert("data".into(), Value::String(text.to_string()));
        } else {
            map.insert("data_base64".into(), Value::String(B64.encode(body)));
        }
    }
    Ok(CloudEvent(map))
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
        assert_eq!(ev.attr("source"), Some("/orders eu"));
        assert_eq!(ev.attr("id"), Some("42"));
        assert_eq!(ev.attr("myext"), Some("Jörg"));
        assert_eq!(ev.attr("datacontenttype"), Some("application/json"));
        assert_eq!(ev.to_json()["data"]["n"], 1);
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
    }
}
