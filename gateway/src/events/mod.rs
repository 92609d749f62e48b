//! Event mapping: HTTP requests, S3 notifications, CloudEvents, schedule ticks and queue batches to the JSON
//! events handlers receive, and handler results back. Pure functions only.

pub mod apigw;
pub mod cloudevents;
pub mod s3;
pub mod schedule;
pub mod sqs;

use percent_encoding::percent_decode_str;
use time::OffsetDateTime;

/// FNV-1a, 64 bits: a hash that is the same in every process and build.
pub(crate) fn fnv1a(seed: u64, parts: &[&[u8]]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for part in parts {
        for b in part.iter().chain(std::iter::once(&0xff)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// A UUID made from `parts` alone (hashed with `seed` and `seed + 1`), the
/// same in every process, gateway and build: for ids that a second
/// delivery or a second gateway must give alike.
pub(crate) fn stable_uuid(seed: u64, parts: &[&[u8]]) -> String {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&fnv1a(seed, parts).to_be_bytes());
    bytes[8..].copy_from_slice(&fnv1a(seed + 1, parts).to_be_bytes());
    // A version 8 (custom) UUID, RFC 9562 variant.
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(bytes).to_string()
}

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a space).
pub fn decode_query_component(s: &str) -> String {
    let spaced = s.replace('+', " ");
    percent_decode_str(&spaced).decode_utf8_lossy().into_owned()
}

/// `15/May/2020:06:01:09 +0000`, as API Gateway writes `requestTime`.
pub fn request_time(now: OffsetDateTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let now = now.to_offset(time::UtcOffset::UTC);
    format!(
        "{:02}/{}/{}:{:02}:{:02}:{:02} +0000",
        now.day(),
        MONTHS[usize::from(u8::from(now.month())) - 1],
        now.year(),
        now.hour(),
        now.minute(),
        now.second()
    )
}
