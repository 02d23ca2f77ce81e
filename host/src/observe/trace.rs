//! W3C trace context: the `traceparent` header a request or message carries, continued or started
//! by this host and passed on to the guest and its outbound calls.

/// A W3C trace context (`traceparent: 00-TRACEID-PARENTID-FLAGS`): the trace a request belongs
/// to and the span of this host's work on it. A request that arrives with a valid
/// `traceparent` continues that trace; any other starts one. The guest sees the header with
/// this span as parent, and the host adds it to the guest's outbound calls (in-process ones
/// included) unless the guest set one itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: String,
    pub span_id: String,
    pub flags: String,
}

pub const TRACEPARENT: &str = "traceparent";

impl TraceContext {
    /// The context a `traceparent` header carries, if it is valid.
    pub fn parse(value: &str) -> Option<TraceContext> {
        let mut parts = value.trim().split('-');
        let (Some(version), Some(trace_id), Some(parent_id), Some(flags)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let more_fields = parts.next().is_some();
        let hex = |text: &str, len: usize| {
            text.len() == len && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let all_zero = |text: &str| text.bytes().all(|b| b == b'0');
        // Version ff is invalid; version 00 has exactly four fields; later versions may add some.
        let valid = hex(version, 2)
            && version != "ff"
            && (version != "00" || !more_fields)
            && hex(trace_id, 32)
            && !all_zero(trace_id)
            && hex(parent_id, 16)
            && !all_zero(parent_id)
            && hex(flags, 2);
        valid.then(|| TraceContext {
            trace_id: trace_id.to_string(),
            span_id: parent_id.to_string(),
            flags: flags.to_string(),
        })
    }

    /// This hop's context: the incoming trace (or a new one, sampled) with a new span id.
    pub fn continue_or_start(headers: &http::HeaderMap) -> TraceContext {
        TraceContext::continue_or_start_from(headers.get(TRACEPARENT).and_then(|value| value.to_str().ok()))
    }

    /// This hop's context after a `traceparent` value (of a message, say), or a new trace.
    pub fn continue_or_start_from(traceparent: Option<&str>) -> TraceContext {
        TraceContext::continue_from(traceparent.and_then(TraceContext::parse).as_ref())
    }

    /// This hop's context under `parent` (a new span of its trace), or a new trace, sampled.
    pub fn continue_from(parent: Option<&TraceContext>) -> TraceContext {
        match parent {
            Some(parent) => parent.child(),
            None => TraceContext {
                trace_id: random_hex(16),
                span_id: random_hex(8),
                flags: "01".to_string(),
            },
        }
    }

    pub fn from_headers(headers: &http::HeaderMap) -> Option<TraceContext> {
        TraceContext::parse(headers.get(TRACEPARENT)?.to_str().ok()?)
    }

    /// A new span of the same trace under this one (for a call this span makes).
    pub fn child(&self) -> TraceContext {
        TraceContext {
            trace_id: self.trace_id.clone(),
            span_id: random_hex(8),
            flags: self.flags.clone(),
        }
    }

    /// The `traceparent` value naming this span as the parent.
    pub fn header_value(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, self.flags)
    }
}

/// `bytes` random bytes (8 or 16), as lowercase hex, never all zeros (the one invalid id).
fn random_hex(bytes: usize) -> String {
    let width = bytes * 2;
    loop {
        let value = rand::random::<u128>() >> (128 - 8 * bytes as u32);
        if value != 0 {
            return format!("{value:0width$x}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_parsed_continued_and_started() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceContext::parse(incoming).unwrap();
        assert_eq!(parsed.header_value(), incoming);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad:?}");
        }
        // A later version may carry more fields.
        assert!(TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra").is_some());
        let mut headers = http::HeaderMap::new();
        headers.insert(TRACEPARENT, incoming.parse().unwrap());
        let continued = TraceContext::continue_or_start(&headers);
        assert_eq!(continued.trace_id, parsed.trace_id);
        assert_ne!(continued.span_id, parsed.span_id);
        let started = TraceContext::continue_or_start(&http::HeaderMap::new());
        assert_eq!((started.trace_id.len(), started.span_id.len()), (32, 16));
        assert!(TraceContext::parse(&started.header_value()).is_some());
    }
}
