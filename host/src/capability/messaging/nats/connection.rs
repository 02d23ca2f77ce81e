//! The client connection shared by the broker, its consumers and its deliveries: failing fast
//! while the client is not connected, errors that say where and what to check, and the
//! publish that waits for the stream's acknowledgement.

use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State as ConnectionState;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use tokio::time::Instant;

use super::names::Names;
use super::settle::PendingNaks;
use crate::capability::messaging::BrokerError;

/// How long one JetStream API call or publish ack may take before the server counts as unavailable.
pub(super) const API_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an operation waits for a client that is still (re)connecting before it fails.
pub(super) const CONNECT_GRACE: Duration = Duration::from_secs(3);

/// What consumers and deliveries need from their broker.
pub(super) struct Shared {
    pub(super) client: async_nats::Client,
    pub(super) jetstream: jetstream::Context,
    /// The server address without credentials, for error messages.
    pub(super) shown_url: String,
    pub(super) names: Names,
    pub(super) naks: Arc<PendingNaks>,
}

/// Why a publish failed, and whether it was because the stream is gone (deleted, or a server
/// that restarted without its data), which creating the streams again repairs.
pub(super) struct PublishFailed {
    pub(super) error: BrokerError,
    pub(super) stream_missing: bool,
}

impl PublishFailed {
    pub(super) fn other(error: BrokerError) -> Self {
        Self {
            error,
            stream_missing: false,
        }
    }
}

impl Shared {
    /// An error for an operation the server did not carry out, saying where and what to check.
    pub(super) fn unavailable(&self, what: &str, err: impl Display) -> BrokerError {
        BrokerError::Unavailable(format!(
            "NATS at {} {what} ({err}); is nats-server running with JetStream (-js)? The broker is set by [messaging] url in mosaic.toml",
            self.shown_url
        ))
    }

    /// Fails fast while the client is not connected, instead of queueing the request until a
    /// reconnect (when it would be sent after its caller was already told it failed).
    pub(super) async fn wait_connected(&self) -> Result<(), BrokerError> {
        let deadline = Instant::now() + CONNECT_GRACE;
        loop {
            if self.client.connection_state() == ConnectionState::Connected {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.unavailable("is unreachable", format_args!("no connection after {CONNECT_GRACE:?}")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Publishes to a stream subject and returns once the stream stored the message.
    pub(super) async fn publish_acked(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: &[u8],
        what: &str,
    ) -> Result<u64, PublishFailed> {
        self.wait_connected().await.map_err(PublishFailed::other)?;
        let payload = bytes::Bytes::copy_from_slice(payload);
        let publish = async {
            let ack = self.jetstream.publish_with_headers(subject, headers, payload).await?;
            ack.await
        };
        // The context bounds both steps by API_TIMEOUT; the outer bound only guards against a hang.
        match tokio::time::timeout(API_TIMEOUT * 2, publish).await {
            Ok(Ok(ack)) => Ok(ack.sequence),
            Ok(Err(err)) => match err.kind() {
                PublishErrorKind::MaxPayloadExceeded => Err(PublishFailed::other(BrokerError::Invalid(format!(
                    "the message is too large for NATS at {} ({err})",
                    self.shown_url
                )))),
                PublishErrorKind::StreamNotFound => Err(PublishFailed {
                    error: self.unavailable(what, "no stream takes the subject"),
                    stream_missing: true,
                }),
                _ => Err(PublishFailed::other(self.unavailable(what, err))),
            },
            Err(_) => Err(PublishFailed::other(
                self.unavailable(what, format_args!("no answer within {:?}", API_TIMEOUT * 2)),
            )),
        }
    }

    pub(super) async fn stream(&self, name: &str) -> Result<stream::Stream<()>, BrokerError> {
        self.jetstream
            .get_stream_no_info(name)
            .await
            .map_err(|err| BrokerError::Invalid(format!("`{name}` cannot name a NATS stream ({err})")))
    }
}
