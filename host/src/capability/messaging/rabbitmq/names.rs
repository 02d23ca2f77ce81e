//! The names of a namespace's exchange and queues on RabbitMQ, and the AMQP short strings they
//! travel as.

use lapin::types::ShortString;

use super::connection::Shared;
use crate::capability::messaging::BrokerError;

/// Queue and binding names derived from the namespace and a subscriber.
pub(super) fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// An AMQP short string (names, routing keys), which RabbitMQ limits to 255 bytes.
pub(super) fn short(text: &str, what: &str) -> Result<ShortString, BrokerError> {
    ShortString::try_new(text).map_err(|_| {
        BrokerError::Invalid(format!(
            "the RabbitMQ {what} `{text}` is {} bytes; the longest allowed is 255 (shorten the application or component name)",
            text.len()
        ))
    })
}

impl Shared {
    pub(super) fn queue_name(&self, subscriber: &str) -> String {
        format!("mosaic.{}.{}", self.namespace, sanitize(subscriber))
    }

    pub(super) fn dead_queue_name(&self, subscriber: &str) -> String {
        format!("{}.dead", self.queue_name(subscriber))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize("shop.eu west"), "shop_eu_west");
        assert_eq!(sanitize("order-worker_2"), "order-worker_2");
    }

    #[test]
    fn overlong_names_are_refused_not_panicked_on() {
        assert!(short(&"q".repeat(256), "queue name").is_err());
        assert!(short("mosaic.app.worker", "queue name").is_ok());
    }
}
