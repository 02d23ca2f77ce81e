//! `[messaging]` in mosaic.toml: the broker that carries the messages and the delivery policy of
//! every subscription. `settings::Settings` holds it as its `messaging` section and calls its check.

use std::time::Duration;

use serde::Deserialize;

/// Which broker carries the messages of `fermyon:spin/redis` publish and `[[trigger.redis]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// A durable log in the state directory (SQLite); no external service.
    #[default]
    Embedded,
    RabbitMQ,
    Nats,
}

/// `[messaging]`: the broker and the delivery policy of every subscription.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MessagingSettings {
    pub broker: BrokerKind,
    /// The broker's address: `amqp://user:password@host:5672/%2f` or `nats://host:4222`.
    pub url: Option<String>,
    /// Keeps the exchanges, queues and streams of one application apart from another's on a
    /// shared broker. Defaults to the application's name.
    pub namespace: Option<String>,
    /// Attempts at one message before it goes to the dead-letter store.
    pub max_deliver: u32,
    /// Wait before the first retry; doubled on each further retry up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// Deliveries handled at once per subscription; 1 keeps the publish order.
    pub concurrency: u32,
    /// Largest payload a guest may publish.
    pub max_message_bytes: u64,
    /// Per subscribing component: `[messaging.subscriptions.NAME] concurrency = 4`.
    pub subscriptions: std::collections::BTreeMap<String, SubscriptionPolicy>,
}

impl Default for MessagingSettings {
    fn default() -> Self {
        Self {
            broker: BrokerKind::Embedded,
            url: None,
            namespace: None,
            max_deliver: 5,
            retry_initial_ms: 200,
            retry_max_ms: 30_000,
            concurrency: 1,
            max_message_bytes: 512 * 1024,
            subscriptions: Default::default(),
        }
    }
}

/// What a subscription may set for itself; unset values come from `[messaging]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionPolicy {
    pub concurrency: Option<u32>,
    pub max_deliver: Option<u32>,
    pub retry_initial_ms: Option<u64>,
    pub retry_max_ms: Option<u64>,
}

/// The delivery policy of one subscription, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryPolicy {
    pub concurrency: u32,
    pub max_deliver: u32,
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

impl DeliveryPolicy {
    /// The wait before retry number `retry` (1 for the first retry): exponential, capped.
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1).min(30));
        self.retry_initial.saturating_mul(factor).min(self.retry_max)
    }
}

impl MessagingSettings {
    pub fn policy_of(&self, component: &str) -> DeliveryPolicy {
        let own = self.subscriptions.get(component).cloned().unwrap_or_default();
        DeliveryPolicy {
            concurrency: own.concurrency.unwrap_or(self.concurrency),
            max_deliver: own.max_deliver.unwrap_or(self.max_deliver),
            retry_initial: Duration::from_millis(own.retry_initial_ms.unwrap_or(self.retry_initial_ms)),
            retry_max: Duration::from_millis(own.retry_max_ms.unwrap_or(self.retry_max_ms)),
        }
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        let mut counts = vec![
            ("messaging.max_deliver".to_string(), self.max_deliver),
            ("messaging.concurrency".to_string(), self.concurrency),
        ];
        for (name, policy) in &self.subscriptions {
            counts.push((
                format!("messaging.subscriptions.{name}.max_deliver"),
                policy.max_deliver.unwrap_or(1),
            ));
            counts.push((
                format!("messaging.subscriptions.{name}.concurrency"),
                policy.concurrency.unwrap_or(1),
            ));
        }
        if let Some((key, _)) = counts.iter().find(|(_, value)| *value == 0) {
            return Err(format!("`{key}` must be at least 1"));
        }
        if self.max_message_bytes == 0 {
            return Err("`messaging.max_message_bytes` must be greater than 0".into());
        }
        match (self.broker, &self.url) {
            (BrokerKind::Embedded, Some(_)) => Err(
                "`messaging.url` is set but `messaging.broker` is \"embedded\" (the default); set broker = \"rabbitmq\" or \"nats\", or drop url".into(),
            ),
            (BrokerKind::RabbitMQ | BrokerKind::Nats, None) => Err(format!(
                "`messaging.broker` = \"{}\" needs `messaging.url`, e.g. {}",
                if self.broker == BrokerKind::Nats { "nats" } else { "rabbitmq" },
                if self.broker == BrokerKind::Nats { "\"nats://127.0.0.1:4222\"" } else { "\"amqp://guest:guest@127.0.0.1:5672/%2f\"" }
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messaging_settings_are_checked_and_resolved() {
        let settings: MessagingSettings = toml::from_str(
            "broker = \"rabbitmq\"\nurl = \"amqp://127.0.0.1\"\nmax_deliver = 3\n\
             [subscriptions.orders]\nconcurrency = 4\n",
        )
        .unwrap();
        settings.check().unwrap();
        let policy = settings.policy_of("orders");
        assert_eq!((policy.concurrency, policy.max_deliver), (4, 3));
        assert_eq!(settings.policy_of("other").concurrency, 1);
        assert_eq!(policy.backoff(1), Duration::from_millis(200));
        assert_eq!(policy.backoff(3), Duration::from_millis(800));
        assert_eq!(policy.backoff(40), Duration::from_secs(30));
        let missing_url: MessagingSettings = toml::from_str("broker = \"nats\"\n").unwrap();
        assert!(missing_url.check().unwrap_err().contains("messaging.url"));
        let zero: MessagingSettings = toml::from_str("[subscriptions.x]\nmax_deliver = 0\n").unwrap();
        assert!(zero
            .check()
            .unwrap_err()
            .contains("messaging.subscriptions.x.max_deliver"));
    }
}
