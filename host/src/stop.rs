//! The host's stop signal: a `watch` channel that turns true once, when the host shuts down.
//! Listeners, subscription runners and the cluster reconciler wait on it.

use tokio::sync::watch;

/// Resolves once the host is told to stop.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}
