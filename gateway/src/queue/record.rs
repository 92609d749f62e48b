//! How events and dead letters are written into a store: one JSON line of
//! what describes the event, then the event's own bytes as they arrived.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::StoredEvent;
use crate::dead_letters::DeadLetter;
use crate::sync_invoke::TriggerKind;

#[derive(Serialize, Deserialize)]
struct Head<'a> {
    #[serde(rename = "r")]
    request_id: &'a str,
    #[serde(rename = "f")]
    function: &'a str,
    #[serde(rename = "t")]
    trigger: &'a str,
    #[serde(rename = "a")]
    accepted_at_ms: u64,
    #[serde(rename = "n")]
    attempts: u32,
    #[serde(rename = "b")]
    not_before_ms: u64,
    #[serde(rename = "x", default, skip_serializing_if = "Option::is_none", borrow)]
    trace_id: Option<Cow<'a, str>>,
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none", borrow)]
    client_context: Option<Cow<'a, str>>,
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none", borrow)]
    resumes: Option<Cow<'a, str>>,
}

/// The trigger named by `text` (as [`TriggerKind::as_str`] writes it).
pub fn decode_trigger(text: &str) -> Option<TriggerKind> {
    [
        TriggerKind::Invoke,
        TriggerKind::Event,
        TriggerKind::Http,
        TriggerKind::S3,
        TriggerKind::CloudEvents,
        TriggerKind::Destination,
        TriggerKind::Schedule,
        TriggerKind::Queue,
    ]
    .into_iter()
    .find(|t| t.as_str() == text)
}

/// An event as bytes.
pub fn encode_event(event: &StoredEvent) -> Vec<u8> {
    let head = Head {
        request_id: &event.request_id,
        function: &event.function,
        trigger: event.trigger.as_str(),
        accepted_at_ms: event.accepted_at_ms,
        attempts: event.attempts,
        not_before_ms: event.not_before_ms,
        trace_id: event.trace_id.as_deref().map(Cow::Borrowed),
        client_context: event.client_context.as_deref().map(Cow::Borrowed),
        resumes: event.resumes.as_deref().map(Cow::Borrowed),
    };
    let mut out = serde_json::to_vec(&head).unwrap_or_default();
    out.push(b'\n');
    out.extend_from_slice(&event.payload);
    out
}

/// An event from its bytes, or `None` when they are not one.
pub fn decode_event(bytes: &[u8]) -> Option<StoredEvent> {
    let split = bytes.iter().position(|b| *b == b'\n')?;
    let head: Head<'_> = serde_json::from_slice(&bytes[..split]).ok()?;
    Some(StoredEvent {
        request_id: head.request_id.to_string(),
        function: head.function.to_string(),
        trigger: decode_trigger(head.trigger)?,
        payload: Bytes::copy_from_slice(&bytes[split + 1..]),
        accepted_at_ms: head.accepted_at_ms,
        attempts: head.attempts,
        not_before_ms: head.not_before_ms,
        trace_id: head.trace_id.map(Cow::into_owned),
        client_context: head.client_context.map(Cow::into_owned),
        resumes: head.resumes.map(Cow::into_owned),
        redriven: false,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LetterIn {
    function: String,
    request_id: String,
    trigger: String,
    event: Box<serde_json::value::RawValue>,
    error: Box<serde_json::value::RawValue>,
    attempts: u32,
    time: String,
}

/// A dead letter as bytes (its JSON, as `/v1/dead-letters` lists it).
pub fn encode_letter(letter: &DeadLetter) -> Vec<u8> {
    serde_json::to_vec(letter).unwrap_or_default()
}

/// A dead letter from its bytes.
pub fn decode_letter(bytes: &[u8]) -> Option<DeadLetter> {
    let l: LetterIn = serde_json::from_slice(bytes).ok()?;
    Some(DeadLetter {
        function: l.function,
        request_id: l.request_id,
        trigger: decode_trigger(&l.trigger)?.as_str(),
        event: Bytes::copy_from_slice(l.event.get().as_bytes()),
        error: Bytes::copy_from_slice(l.error.get().as_bytes()),
        attempts: l.attempts,
        time: l.time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_and_letters_round_trip() {
        let mut e = StoredEvent::new(
            "r-1".into(),
            "f",
            TriggerKind::S3,
            Bytes::from_static(b"{\"a\":\n1}"),
        );
        e.attempts = 2;
        e.not_before_ms = 7;
        assert_eq!(decode_event(&encode_event(&e)), Some(e.clone()));
        // Passed on as the caller sent it, quotes and all.
        e.trace_id = Some(r#"Root=1-65800000-0123456789abcdef01234567;Self="a\b""#.into());
        e.client_context = Some("e30=".into());
        e.resumes = Some("00-65800000012345678abcdef012345678-00f067aa0ba902b7-01".into());
        assert_eq!(decode_event(&encode_event(&e)), Some(e.clone()));
        // Stored before the trace was kept: read, with none.
        let old = br#"{"r":"r-1","f":"f","t":"s3","a":1,"n":0,"b":0}
{}"#;
        let read = decode_event(old).expect("an event");
        assert_eq!(
            (read.trace_id, read.client_context, read.resumes),
            (None, None, None)
        );
        assert_eq!(decode_event(b"no head"), None);
        let l = DeadLetter {
            function: "f".into(),
            request_id: "r".into(),
            trigger: "cloudevents",
            event: Bytes::from_static(br#"{"x":[1,2]}"#),
            error: Bytes::from_static(br#"{"errorMessage":"boom"}"#),
            attempts: 3,
            time: "2026-01-01T00:00:00Z".into(),
        };
        assert_eq!(decode_letter(&encode_letter(&l)), Some(l));
    }
}
