//! The headers and properties a RabbitMQ message carries (topic, trace context, and the
//! dead-letter record), read whatever AMQP type another publisher gave them.

use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;

pub(super) const TOPIC_HEADER: &str = "x-mosaic-topic";
pub(super) const SUBSCRIBER_HEADER: &str = "x-mosaic-subscriber";
pub(super) const ATTEMPTS_HEADER: &str = "x-mosaic-attempts";
pub(super) const ERROR_HEADER: &str = "x-mosaic-error";
pub(super) const DEAD_AT_HEADER: &str = "x-mosaic-dead-at-ms";
/// The W3C trace context of the publisher, under its standard name.
pub(super) const TRACEPARENT_HEADER: &str = "traceparent";

pub(super) fn header_text(headers: &Option<FieldTable>, key: &str) -> Option<String> {
    match headers.as_ref()?.inner().get(key)? {
        AMQPValue::LongString(text) => Some(String::from_utf8_lossy(text.as_bytes()).into_owned()),
        AMQPValue::ShortString(text) => Some(text.as_str().to_string()),
        _ => None,
    }
}

pub(super) fn header_number(headers: &Option<FieldTable>, key: &str) -> Option<u64> {
    match headers.as_ref()?.inner().get(key)? {
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::Timestamp(n) => Some(*n),
        AMQPValue::LongString(text) => std::str::from_utf8(text.as_bytes()).ok()?.trim().parse().ok(),
        AMQPValue::ShortString(text) => text.as_str().trim().parse().ok(),
        _ => None,
    }
}

pub(super) fn text_value(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text))
}

pub(super) fn number_value(number: u64) -> AMQPValue {
    // Signed 64-bit ('l') is the integer type every AMQP 0-9-1 client and RabbitMQ agree on.
    AMQPValue::LongLongInt(i64::try_from(number).unwrap_or(i64::MAX))
}

/// The AMQP timestamp property in milliseconds. Mosaic writes milliseconds; other publishers
/// follow the AMQP convention of seconds, which are told apart by size (a seconds value
/// stays below 10^11 until the year 5138).
pub(super) fn timestamp_ms(properties: &BasicProperties) -> Option<u64> {
    let stamp = (*properties.timestamp())?;
    Some(if stamp < 100_000_000_000 {
        stamp.saturating_mul(1000)
    } else {
        stamp
    })
}

#[cfg(test)]
mod tests {
    use lapin::types::ShortString;

    use super::*;

    #[test]
    fn headers_are_read_whatever_their_integer_type() {
        let mut table = FieldTable::default();
        table.insert(ShortString::from("a"), AMQPValue::LongLongInt(5));
        table.insert(ShortString::from("b"), AMQPValue::LongUInt(6));
        table.insert(ShortString::from("c"), text_value("7"));
        table.insert(ShortString::from("t"), text_value("order.created"));
        let headers = Some(table);
        assert_eq!(header_number(&headers, "a"), Some(5));
        assert_eq!(header_number(&headers, "b"), Some(6));
        assert_eq!(header_number(&headers, "c"), Some(7));
        assert_eq!(header_number(&headers, "missing"), None);
        assert_eq!(header_text(&headers, "t").as_deref(), Some("order.created"));
        assert_eq!(header_text(&None, "t"), None);
    }

    #[test]
    fn timestamps_in_seconds_become_milliseconds() {
        let ms = BasicProperties::default().with_timestamp(1_700_000_000_123);
        let seconds = BasicProperties::default().with_timestamp(1_700_000_000);
        assert_eq!(timestamp_ms(&ms), Some(1_700_000_000_123));
        assert_eq!(timestamp_ms(&seconds), Some(1_700_000_000_000));
        assert_eq!(timestamp_ms(&BasicProperties::default()), None);
    }
}
