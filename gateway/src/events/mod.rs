//! Event mapping: HTTP requests, S3 notifications, CloudEvents, schedule ticks and queue batches to the JSON
//! events handlers receive, and handler results back. Pure functions only.

pub mod apigw;
pub mod cloudevents;
pub mod s3;
pub mod schedule;
pub mod sqs;

use percent_encoding::percent_decode_str;
use time::OffsetDateTime;

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
