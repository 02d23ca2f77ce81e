//! Publishing with publisher confirms: one channel in confirm mode per connection, sends
//! serialized so that confirms keep their numbers, and a bound on the whole publish.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tokio::sync::Mutex as AsyncMutex;

use super::connection::{guarded, Failure, Shared, OPERATION_TIMEOUT};
use super::names::short;
use super::CONFIG_HINT;
use crate::capability::messaging::BrokerError;

/// How long RabbitMQ may take to confirm that it stored a published message.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// The bound on a whole publish (possibly reconnecting first), so that a guest never hangs on
/// a broker that is gone.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(12);

/// A channel in publisher-confirm mode.
pub(super) struct Publisher {
    pub(super) channel: Channel,
    /// Serializes sending: lapin numbers a confirm when the publish starts and queues its frames
    /// right after, so two concurrent publishes could otherwise swap numbers. Only the sending is
    /// serialized; the confirms are awaited concurrently.
    pub(super) sending: AsyncMutex<()>,
}

impl Shared {
    pub(super) async fn open_publisher(
        &self,
        connection: &Connection,
        broken: &AtomicBool,
    ) -> Result<Arc<Publisher>, BrokerError> {
        let channel = guarded(broken, OPERATION_TIMEOUT, connection.create_channel())
            .await
            .map_err(|failure| self.explain("open a channel", failure))?;
        guarded(
            broken,
            OPERATION_TIMEOUT,
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await
        .map_err(|failure| self.explain("enable publisher confirms", failure))?;
        Ok(Arc::new(Publisher {
            channel,
            sending: AsyncMutex::new(()),
        }))
    }

    /// Publishes one message and waits until RabbitMQ confirms that it stored it. `mandatory`:
    /// a message that reaches no queue is an error (for messages sent straight to one queue).
    pub(super) async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), BrokerError> {
        let exchange = short(exchange, "exchange name")?;
        let routing_key_short = short(routing_key, "routing key")?;
        let options = BasicPublishOptions {
            mandatory,
            immediate: false,
        };
        let attempt = async {
            // One retry, when the message could not even be sent: the connection may have died
            // since it was last used, and a fresh one usually works.
            let mut retried = false;
            loop {
                let link = self.link().await?;
                let sent = {
                    let _turn = link.publisher.sending.lock().await;
                    link.run(
                        OPERATION_TIMEOUT,
                        link.publisher.channel.basic_publish(
                            exchange.clone(),
                            routing_key_short.clone(),
                            options,
                            payload,
                            properties.clone(),
                        ),
                    )
                    .await
                };
                let confirm = match sent {
                    Ok(confirm) => confirm,
                    Err(Failure::Amqp(_)) if !retried => {
                        retried = true;
                        continue;
                    }
                    Err(failure) => return Err(self.explain("publish a message", failure)),
                };
                return match link.run(CONFIRM_TIMEOUT, confirm).await {
                    Ok(Confirmation::Ack(None)) => Ok(()),
                    Ok(Confirmation::Ack(Some(returned))) => Err(BrokerError::Unavailable(format!(
                        "RabbitMQ at {} could not deliver the message to `{routing_key}` ({}); the queue may have been deleted: restart the application to declare it again",
                        self.address, returned.reply_text
                    ))),
                    Ok(Confirmation::Nack(_)) => Err(BrokerError::Unavailable(format!(
                        "RabbitMQ at {} refused to store the message (negative confirm); it may be short of disk or memory: check its logs",
                        self.address
                    ))),
                    Ok(Confirmation::NotRequested) => Err(BrokerError::Unavailable(format!(
                        "RabbitMQ at {} did not confirm the message (publisher confirms are off on the channel); it may or may not have been stored",
                        self.address
                    ))),
                    Err(failure) => Err(self.explain("confirm a published message", failure)),
                };
            }
        };
        match tokio::time::timeout(PUBLISH_DEADLINE, attempt).await {
            Ok(result) => result,
            Err(_) => Err(BrokerError::Unavailable(format!(
                "RabbitMQ at {} did not accept the message within {} s; is it running? {CONFIG_HINT}",
                self.address,
                PUBLISH_DEADLINE.as_secs()
            ))),
        }
    }
}
