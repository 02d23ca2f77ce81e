//! Settling a NATS delivery: acks that wait for the server, progress notes that keep a long
//! delivery leased, dead letters stored before the original is acked, and NAKs that hand a
//! dropped delivery back at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::message::Acker;
use async_nats::jetstream::AckKind;
use async_nats::HeaderMap;
use tokio::time::Instant;

use super::connection::Shared;
use super::headers::{
    encode_header_text, truncate_text, ATTEMPTS_HEADER, DEAD_AT_MS_HEADER, ERROR_HEADER, PUBLISHED_MS_HEADER,
    SUBSCRIBER_HEADER, TOPIC_HEADER,
};
use crate::capability::messaging::{now_unix_ms, BrokerError, NewDeadLetter, Settle};

/// How long a delivery stays leased without an ack or a progress note before NATS redelivers it.
pub(super) const ACK_WAIT: Duration = Duration::from_secs(30);
/// The longest error text kept with a dead letter (it travels in a header).
const MAX_ERROR_BYTES: usize = 16 * 1024;

/// Counts redelivery requests (NAKs) still on their way to the server, so that `consume` can let
/// them go out before it pulls.
#[derive(Default)]
pub(super) struct PendingNaks {
    in_flight: AtomicUsize,
    idle: tokio::sync::Notify,
}

/// One NAK on its way; dropping it marks it sent.
struct NakInFlight(Arc<PendingNaks>);

impl Drop for NakInFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl PendingNaks {
    fn begin(self: &Arc<Self>) -> NakInFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        NakInFlight(self.clone())
    }

    /// Asks the server to redeliver a message now rather than after `ACK_WAIT`. Runs in the
    /// background because it is called from `Drop`, which cannot wait; without a runtime the
    /// message simply comes back after `ACK_WAIT`.
    pub(super) fn spawn_nak(self: &Arc<Self>, acker: Acker) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let in_flight = self.begin();
        runtime.spawn(async move {
            let _in_flight = in_flight;
            if let Err(err) = acker.ack_with(AckKind::Nak(None)).await {
                tracing::debug!(error = %err, "could not ask NATS to redeliver a dropped message; it returns after the ack wait");
            }
        });
    }

    /// Waits (at most `limit`) until no NAK is on its way.
    pub(super) async fn settled(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            // Registered before the check, so that a notification in between is not missed.
            let idle = self.idle.notified();
            if self.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return;
            }
        }
    }
}

/// The broker side of one NATS delivery.
pub(super) struct NatsSettle {
    pub(super) shared: Arc<Shared>,
    pub(super) subscriber: String,
    /// Taken once the delivery is settled; still present on drop means unsettled.
    pub(super) acker: Option<Acker>,
    /// Renews the lease while the delivery is unsettled; stopped when it is dropped.
    pub(super) lease: Option<tokio::task::AbortHandle>,
}

/// A handler and its retries can take longer than ACK_WAIT: renewing the lease (a progress
/// note) every third of it keeps the server from delivering the message a second time while
/// this host still works on it. A host that dies stops renewing, and the message comes back.
pub(super) fn keep_leased(acker: Acker) -> Option<tokio::task::AbortHandle> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let task = runtime.spawn(async move {
        loop {
            tokio::time::sleep(ACK_WAIT / 3).await;
            if let Err(err) = acker.ack_with(AckKind::Progress).await {
                tracing::debug!(error = %err, "could not renew the lease of a NATS delivery");
            }
        }
    });
    Some(task.abort_handle())
}

impl NatsSettle {
    fn acker(&self) -> Result<&Acker, BrokerError> {
        self.acker
            .as_ref()
            .ok_or_else(|| BrokerError::Invalid("the delivery was already settled".to_string()))
    }
}

#[async_trait::async_trait]
impl Settle for NatsSettle {
    async fn ack(mut self: Box<Self>) -> Result<(), BrokerError> {
        let acker = self.acker()?;
        // A double ack waits for the server's confirmation, so an acked message is gone (and
        // `pending` says so) by the time this returns.
        let result = acker.double_ack().await;
        self.acker = None;
        result.map_err(|err| self.shared.unavailable("did not confirm an ack", err))
    }

    async fn failed_attempt(&self, _attempts: u32) -> Result<(), BrokerError> {
        // NATS counts deliveries, not attempts, and the trigger retries in place: a progress
        // note keeps the message leased (restarting ACK_WAIT) while it waits for its retry.
        self.acker()?
            .ack_with(AckKind::Progress)
            .await
            .map_err(|err| self.shared.unavailable("did not take a progress note", err))
    }

    async fn dead_letter(mut self: Box<Self>, letter: NewDeadLetter) -> Result<(), BrokerError> {
        self.acker()?;
        let mut headers = HeaderMap::new();
        headers.insert(SUBSCRIBER_HEADER, encode_header_text(&self.subscriber));
        headers.insert(TOPIC_HEADER, encode_header_text(&letter.topic));
        headers.insert(ATTEMPTS_HEADER, letter.attempts.to_string());
        headers.insert(
            ERROR_HEADER,
            encode_header_text(&truncate_text(&letter.error, MAX_ERROR_BYTES)),
        );
        headers.insert(DEAD_AT_MS_HEADER, now_unix_ms().to_string());
        if let Some(published_at_ms) = letter.published_at_ms {
            headers.insert(PUBLISHED_MS_HEADER, published_at_ms.to_string());
        }
        let subject = self.shared.names.dead_subject(&self.subscriber);
        // Stored first, then acked: a failure in between leaves the message in the queue (it is
        // redelivered and may be dead-lettered twice) rather than losing it.
        self.shared
            .publish_acked(subject, headers, &letter.payload, "did not store the dead letter")
            .await
            .map_err(|failed| failed.error)?;
        let result = self.acker()?.double_ack().await;
        self.acker = None;
        result.map_err(|err| {
            self.shared.unavailable(
                "stored the dead letter but did not confirm the ack of the original",
                err,
            )
        })
    }
}

impl Drop for NatsSettle {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.abort();
        }
        if let Some(acker) = self.acker.take() {
            self.shared.naks.spawn_nak(acker);
        }
    }
}
