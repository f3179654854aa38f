//! W3C Trace Context (`traceparent`), carried from the ingest request to every destination
//! call: in the HTTP request header, then in the AMQP message headers.
//! Format: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.

use std::fmt;

use rand::Rng;

/// A parsed or freshly started `traceparent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    /// 16-byte trace id, lowercase hex.
    pub trace_id: String,
    /// 8-byte id of the parent span, lowercase hex.
    pub parent_id: String,
    /// Trace flags (`01` = sampled).
    pub flags: u8,
}

impl TraceParent {
    /// Starts a new sampled trace.
    pub fn new_root() -> Self {
        let mut rng = rand::rng();
        Self {
            trace_id: hex::encode(rng.random::<[u8; 16]>()),
            parent_id: hex::encode(rng.random::<[u8; 8]>()),
            flags: 1,
        }
    }

    /// Parses a `traceparent` header value; `None` when it is not a valid version-00 value
    /// (an all-zero trace or parent id is invalid per the spec).
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace_id, parent_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex_of = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let valid = version == "00"
            && parts.next().is_none()
            && hex_of(trace_id, 32)
            && hex_of(parent_id, 16)
            && hex_of(flags, 2)
            && trace_id.bytes().any(|b| b != b'0')
            && parent_id.bytes().any(|b| b != b'0');
        valid.then(|| Self {
            trace_id: trace_id.to_owned(),
            parent_id: parent_id.to_owned(),
            flags: u8::from_str_radix(flags, 16).unwrap_or(0),
        })
    }

    /// The same trace with a new span id: what a service sends on after its own work.
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id.clone(),
            parent_id: hex::encode(rand::rng().random::<[u8; 8]>()),
            flags: self.flags,
        }
    }

    /// Continues `incoming` when it is a valid `traceparent`, else starts a new trace.
    pub fn continue_or_start(incoming: Option<&str>) -> Self {
        incoming
            .and_then(Self::parse)
            .map(|t| t.child())
            .unwrap_or_else(Self::new_root)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_trace_round_trips_through_its_header_form() {
        let t = TraceParent::new_root();
        let s = t.to_string();
        assert_eq!(s.len(), 55);
        assert_eq!(TraceParent::parse(&s), Some(t));
    }

    #[test]
    fn a_child_keeps_the_trace_id_and_changes_the_span() {
        let t =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let c = TraceParent::continue_or_start(Some(&t.to_string()));
        assert_eq!(c.trace_id, t.trace_id);
        assert_ne!(c.parent_id, t.parent_id);
    }

    #[test]
    fn malformed_values_start_a_new_trace() {
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }
}
