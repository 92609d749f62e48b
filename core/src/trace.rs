//! Trace ids as callers send them: X-Ray's `X-Amzn-Trace-Id`
//! (`Root=1-<8 hex seconds>-<24 hex>;Parent=<16 hex>;Sampled=<0|1>`) and
//! W3C's `traceparent` (`00-<32 hex trace>-<16 hex parent>-<2 hex flags>`),
//! and the conversions between them. Both name the same 128-bit trace: the
//! X-Ray root's two hex parts, joined, are the W3C trace id.
//!
//! Pure functions: the gateway reads a caller's headers with them, and
//! creates a trace id when the caller sent none.

/// The longest `X-Amzn-Trace-Id` passed on (the shim takes no longer one).
pub const MAX_AMZN_TRACE_ID_LEN: usize = 512;

/// A caller's trace: its id, the span that called (when it says), and
/// whether it is sampled (when it says).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// The 128-bit trace id.
    pub trace_id: [u8; 16],
    /// The caller's span (X-Ray's `Parent`, W3C's parent id).
    pub parent_id: Option<[u8; 8]>,
    /// Whether the caller records this trace.
    pub sampled: Option<bool>,
}

impl TraceContext {
    /// Reads a W3C `traceparent`. Version `00` must be exactly its four
    /// fields; a later version may add fields after them (the spec's
    /// forward compatibility); `ff`, all-zero ids and upper-case hex are
    /// invalid.
    pub fn from_traceparent(value: &str) -> Option<TraceContext> {
        let value = value.trim();
        let b = value.as_bytes();
        if b.len() < 55 || !value.is_ascii() {
            return None;
        }
        let version = hex_bytes::<1>(&value[0..2])?[0];
        if version == 0xff || (version == 0 && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
            return None;
        }
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let trace_id = hex_bytes::<16>(&value[3..35])?;
        let parent_id = hex_bytes::<8>(&value[36..52])?;
        let flags = hex_bytes::<1>(&value[53..55])?[0];
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceContext {
            trace_id,
            parent_id: Some(parent_id),
            sampled: Some(flags & 1 == 1),
        })
    }

    /// Reads the `Root`, `Parent` and `Sampled` fields of an
    /// `X-Amzn-Trace-Id`; `None` without a well-formed `Root`.
    pub fn from_amzn_trace_id(value: &str) -> Option<TraceContext> {
        let mut root = None;
        let mut parent_id = None;
        let mut sampled = None;
        for field in value.split(';') {
            let Some((key, v)) = field.trim().split_once('=') else {
                continue;
            };
            match key {
                "Root" => root = parse_root(v),
                "Parent" => parent_id = hex_bytes::<8>(v).filter(|p| *p != [0; 8]),
                "Sampled" => {
                    sampled = match v {
                        "1" => Some(true),
                        "0" => Some(false),
                        _ => None,
                    }
                }
                _ => {}
            }
        }
        Some(TraceContext {
            trace_id: root?,
            parent_id,
            sampled,
        })
    }

    /// As an `X-Amzn-Trace-Id`: `Root=1-<8 hex>-<24 hex>`, then `Parent`
    /// and `Sampled` when known.
    pub fn to_amzn_trace_id(&self) -> String {
        let mut out = String::with_capacity(72);
        out.push_str("Root=1-");
        push_hex(&mut out, &self.trace_id[..4]);
        out.push('-');
        push_hex(&mut out, &self.trace_id[4..]);
        if let Some(parent) = &self.parent_id {
            out.push_str(";Parent=");
            push_hex(&mut out, parent);
        }
        if let Some(sampled) = self.sampled {
            out.push_str(if sampled { ";Sampled=1" } else { ";Sampled=0" });
        }
        out
    }

    /// As a W3C `traceparent` (version `00`), when the calling span is
    /// known; unknown sampling is sent as not sampled.
    pub fn to_traceparent(&self) -> Option<String> {
        let parent = self.parent_id?;
        Some(traceparent(
            self.trace_id,
            parent,
            self.sampled.unwrap_or(false),
        ))
    }

    /// A new trace as Lambda creates one for a caller that sent none: the
    /// root's first 4 bytes are the time in Unix seconds (X-Ray refuses
    /// other roots), then 12 random bytes; a random calling span; not sampled.
    pub fn new_root(unix_seconds: u64, random: [u8; 20]) -> TraceContext {
        let mut trace_id = [0u8; 16];
        trace_id[..4].copy_from_slice(&(unix_seconds as u32).to_be_bytes());
        trace_id[4..].copy_from_slice(&random[..12]);
        let mut parent = [0u8; 8];
        parent.copy_from_slice(&random[12..]);
        // An all-zero span id is invalid; the chance is 2^-64, the cost nil.
        if parent == [0; 8] {
            parent[7] = 1;
        }
        TraceContext {
            trace_id,
            parent_id: Some(parent),
            sampled: Some(false),
        }
    }
}

/// A W3C `traceparent` (version `00`).
pub fn traceparent(trace_id: [u8; 16], parent_id: [u8; 8], sampled: bool) -> String {
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    push_hex(&mut out, &trace_id);
    out.push('-');
    push_hex(&mut out, &parent_id);
    out.push_str(if sampled { "-01" } else { "-00" });
    out
}

/// `1-<8 hex>-<24 hex>`, the X-Ray root, as a 128-bit trace id.
fn parse_root(v: &str) -> Option<[u8; 16]> {
    let rest = v.strip_prefix("1-")?;
    let (time, random) = rest.split_once('-')?;
    let time = hex_bytes::<4>(time)?;
    let random = hex_bytes::<12>(random)?;
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&time);
    id[4..].copy_from_slice(&random);
    (id != [0; 16]).then_some(id)
}

/// Exactly `2 * N` lower-case hex digits as bytes.
fn hex_bytes<const N: usize>(text: &str) -> Option<[u8; N]> {
    let b = text.as_bytes();
    if b.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// Lower-case hex, by table: this runs on every invocation.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_becomes_an_xray_header() {
        let t = TraceContext::from_traceparent(TP).expect("valid");
        assert_eq!(
            t.to_amzn_trace_id(),
            "Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=00f067aa0ba902b7;Sampled=1"
        );
        let unsampled = TP.replace("-01", "-00");
        let t = TraceContext::from_traceparent(&unsampled).expect("valid");
        assert!(t.to_amzn_trace_id().ends_with(";Sampled=0"));
        assert_eq!(t.to_traceparent().as_deref(), Some(&*unsampled));
    }

    #[test]
    fn an_xray_header_names_the_same_trace() {
        let t = TraceContext::from_amzn_trace_id(
            "Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=00f067aa0ba902b7;Sampled=1;Lineage=a:1",
        )
        .expect("valid");
        assert_eq!(t.to_traceparent().as_deref(), Some(TP));
        let root_only =
            TraceContext::from_amzn_trace_id("Root=1-4bf92f35-77b34da6a3ce929d0e0e4736")
                .expect("valid");
        assert_eq!(root_only.parent_id, None);
        assert_eq!(root_only.sampled, None);
        assert_eq!(root_only.to_traceparent(), None);
        assert_eq!(
            root_only.to_amzn_trace_id(),
            "Root=1-4bf92f35-77b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::from_traceparent(bad), None, "{bad:?}");
        }
        // A later version may carry more fields.
        assert!(
            TraceContext::from_traceparent(
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more"
            )
            .is_some()
        );
        for bad in [
            "",
            "Parent=00f067aa0ba902b7",
            "Root=2-4bf92f35-77b34da6a3ce929d0e0e4736",
            "Root=1-4bf92f3-77b34da6a3ce929d0e0e4736",
            "Root=1-4bf92f35-77b34da6a3ce929d0e0e473",
            "Root=1-00000000-000000000000000000000000",
        ] {
            assert_eq!(TraceContext::from_amzn_trace_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_new_root_is_lambda_s_format() {
        let mut random = [0u8; 20];
        for (i, b) in random.iter_mut().enumerate() {
            *b = i as u8 + 1;
        }
        let t = TraceContext::new_root(0x6580_0000, random);
        assert_eq!(
            t.to_amzn_trace_id(),
            "Root=1-65800000-0102030405060708090a0b0c;Parent=0d0e0f1011121314;Sampled=0"
        );
    }

    proptest! {
        #[test]
        fn both_forms_round_trip(trace in any::<[u8; 16]>(), parent in any::<[u8; 8]>(), sampled in any::<bool>()) {
            prop_assume!(trace != [0; 16] && parent != [0; 8]);
            let t = TraceContext { trace_id: trace, parent_id: Some(parent), sampled: Some(sampled) };
            let tp = t.to_traceparent().expect("has a parent");
            prop_assert_eq!(TraceContext::from_traceparent(&tp), Some(t));
            prop_assert_eq!(TraceContext::from_amzn_trace_id(&t.to_amzn_trace_id()), Some(t));
        }

        #[test]
        fn any_text_is_read_without_panic(s in ".{0,80}") {
            let _ = TraceContext::from_traceparent(&s);
            let _ = TraceContext::from_amzn_trace_id(&s);
        }
    }
}
