//! The headers a NATS message carries (publish time, trace context, replay target, and the
//! dead-letter record), and the percent-encoding that keeps free text valid in a header value.

use async_nats::HeaderMap;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};

pub(super) const PUBLISHED_MS_HEADER: &str = "Mosaic-Published-Ms";
pub(super) const REPLAY_TO_HEADER: &str = "Mosaic-Replay-To";
pub(super) const SUBSCRIBER_HEADER: &str = "Mosaic-Subscriber";
pub(super) const TOPIC_HEADER: &str = "Mosaic-Topic";
pub(super) const ATTEMPTS_HEADER: &str = "Mosaic-Attempts";
pub(super) const ERROR_HEADER: &str = "Mosaic-Error";
pub(super) const DEAD_AT_MS_HEADER: &str = "Mosaic-Dead-At-Ms";
/// The W3C trace context of the publisher, under its standard name.
pub(super) const TRACEPARENT_HEADER: &str = "traceparent";

/// What free text in a header value has percent-encoded, besides every non-ASCII byte (which
/// `utf8_percent_encode` always encodes): control characters, DEL, and `%` itself. Messages
/// already stored were written with this set, so it must not change.
const HEADER_TEXT: &AsciiSet = &CONTROLS.add(b'%');

/// Header values cannot hold CR or LF, and surrounding spaces do not survive, so free text
/// (an error message, a component name) is percent-encoded: `%`, control characters, non-ASCII
/// bytes and spaces at either end.
pub(super) fn encode_header_text(text: &str) -> String {
    // A space is encoded only at the edges, which an `AsciiSet` cannot say.
    let (head, rest) = match text.strip_prefix(' ') {
        Some(rest) => ("%20", rest),
        None => ("", text),
    };
    let (middle, tail) = match rest.strip_suffix(' ') {
        Some(middle) => (middle, "%20"),
        None => (rest, ""),
    };
    format!("{head}{}{tail}", utf8_percent_encode(middle, HEADER_TEXT))
}

/// The text `encode_header_text` encoded; a `%` not followed by two hex digits stays as it is,
/// and bytes that do not decode to UTF-8 become U+FFFD.
pub(super) fn decode_header_text(encoded: &str) -> String {
    percent_decode_str(encoded).decode_utf8_lossy().into_owned()
}

/// `text` cut to at most `max` bytes on a character boundary.
pub(super) fn truncate_text(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} ... (cut at {max} bytes)", &text[..end])
}

pub(super) fn header_text<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers?.get(name).map(|value| value.as_str())
}

pub(super) fn header_number(headers: Option<&HeaderMap>, name: &str) -> Option<u64> {
    header_text(headers, name)?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_text_round_trips() {
        for text in [
            "handler returned an error",
            "line one\r\nline two",
            " padded ",
            "100% naïve",
            "",
            "%41",
        ] {
            let encoded = encode_header_text(text);
            assert!(!encoded.contains(['\r', '\n']), "{encoded}");
            assert_eq!(encoded.trim(), encoded, "{encoded:?}");
            assert_eq!(decode_header_text(&encoded), text);
        }
        assert_eq!(
            encode_header_text("handler returned an error"),
            "handler returned an error"
        );
        assert_eq!(decode_header_text("broken %4"), "broken %4");
    }

    /// Dead letters already in a stream were written with this exact encoding; it must read
    /// back the same and be written the same.
    #[test]
    fn header_text_encoding_is_the_stored_one() {
        for (text, encoded) in [
            (" ", "%20"),
            ("  ", "%20%20"),
            ("   ", "%20 %20"),
            (" a b ", "%20a b%20"),
            ("100% done", "100%25 done"),
            ("a\tb", "a%09b"),
            ("line\r\nnext", "line%0D%0Anext"),
            ("del\u{7f}", "del%7F"),
            ("naïve é", "na%C3%AFve %C3%A9"),
            ("~!\"#$&'()*+,/:;<=>?@[\\]^_`{|}", "~!\"#$&'()*+,/:;<=>?@[\\]^_`{|}"),
        ] {
            assert_eq!(encode_header_text(text), encoded, "{text:?}");
            assert_eq!(decode_header_text(encoded), text, "{encoded:?}");
        }
        // Lower-case escapes (from another writer) and invalid UTF-8 decode too.
        assert_eq!(decode_header_text("%c3%a9"), "é");
        assert_eq!(decode_header_text("%FF"), "\u{fffd}");
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        let text = "é".repeat(10);
        let cut = truncate_text(&text, 5);
        assert!(cut.starts_with("éé") && !cut.starts_with("ééé"), "{cut}");
        assert_eq!(truncate_text("short", 10), "short");
    }
}
