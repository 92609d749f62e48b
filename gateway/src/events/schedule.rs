//! EventBridge's Scheduled Event, as a schedule trigger delivers it, and
//! the names that make one tick the same on every gateway: the schedule's
//! key in the store and the tick's request id. Pure functions only.

use porchlight_core::schedule::event_time;
use serde_json::json;
use time::OffsetDateTime;

use super::{fnv1a, stable_uuid};
use crate::error::{ACCOUNT, REGION};

/// The key of trigger `index` of `function` with `expression`, in the
/// store of last ticks (letters, digits, `-`, `_` and `.`, as a JetStream
/// key wants). A changed expression is a new schedule, started afresh.
pub fn schedule_key(function: &str, index: usize, expression: &str) -> String {
    let name: String = function
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let hash = fnv1a(0, &[function.as_bytes(), expression.as_bytes()]);
    format!("{name}.{index}.{hash:016x}")
}

/// The request id of the tick at `at` of the schedule `key`: a UUID that
/// every gateway computes alike, so that the same tick stored twice is
/// one event (JetStream's `Nats-Msg-Id`) and a doubled run is visible.
pub fn request_id(key: &str, at: OffsetDateTime) -> String {
    let tick = at.unix_timestamp().to_be_bytes();
    stable_uuid(1, &[key.as_bytes(), &tick])
}

/// The rule a schedule trigger stands for, as EventBridge names rules.
pub fn rule_arn(function: &str, index: usize) -> String {
    format!("arn:aws:events:{REGION}:{ACCOUNT}:rule/porchlight-{function}-{index}")
}

/// The Scheduled Event of trigger `index` of `function` for the tick at `at`.
pub fn scheduled_event(function: &str, index: usize, id: &str, at: OffsetDateTime) -> Vec<u8> {
    let event = json!({
        "version": "0",
        "id": id,
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT,
        "time": event_time(at),
        "region": REGION,
        "resources": [rule_arn(function, index)],
        "detail": {},
    });
    serde_json::to_vec(&event).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn the_event_has_eventbridge_shape() {
        let at = datetime!(2026-03-04 12:00 UTC);
        let key = schedule_key("hello", 0, "rate(1 minute)");
        let id = request_id(&key, at);
        let event: serde_json::Value =
            serde_json::from_slice(&scheduled_event("hello", 0, &id, at)).expect("json");
        assert_eq!(
            event,
            json!({
                "version": "0",
                "id": id,
                "detail-type": "Scheduled Event",
                "source": "aws.events",
                "account": "000000000000",
                "time": "2026-03-04T12:00:00Z",
                "region": "us-east-1",
                "resources": ["arn:aws:events:us-east-1:000000000000:rule/porchlight-hello-0"],
                "detail": {},
            })
        );
    }

    #[test]
    fn ids_are_stable_per_tick_and_differ_between_ticks() {
        let at = datetime!(2026-03-04 12:00 UTC);
        let key = schedule_key("hello", 0, "rate(1 minute)");
        let id = request_id(&key, at);
        assert_eq!(id, request_id(&key, at));
        assert_ne!(id, request_id(&key, datetime!(2026-03-04 12:01 UTC)));
        assert_ne!(
            id,
            request_id(&schedule_key("hello", 1, "rate(1 minute)"), at)
        );
        let parsed = uuid::Uuid::parse_str(&id).expect("a uuid");
        assert_eq!(parsed.get_version_num(), 8);
    }

    #[test]
    fn keys_are_safe_store_keys_and_follow_the_expression() {
        let key = schedule_key("team.hello_world", 2, "cron(0 12 * * ? *)");
        assert!(key.starts_with("team_hello_world.2."), "{key}");
        assert!(
            key.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        );
        assert_ne!(
            key,
            schedule_key("team.hello_world", 2, "cron(0 13 * * ? *)")
        );
        // The hash tells `a.b` from `a_b`, which the name alone does not.
        assert_ne!(
            schedule_key("a.b", 0, "rate(1 minute)"),
            schedule_key("a_b", 0, "rate(1 minute)")
        );
    }
}
