use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// The HTTP server in this process that the `subscriber` fixture reports each message to: it
/// keeps the instant each payload first arrived and counts the repeats, and answers 200.
pub(super) struct Sink {
    pub(super) addr: SocketAddr,
    pub(super) received: Arc<Mutex<Received>>,
}

#[derive(Default)]
pub(super) struct Received {
    first: HashMap<String, Instant>,
    repeats: u64,
}

impl Sink {
    pub(super) async fn start() -> Result<Sink> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Mutex::new(Received::default()));
        let shared = received.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let received = shared.clone();
                let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let received = received.clone();
                    async move {
                        let body = request.into_body().collect().await?.to_bytes();
                        let at = Instant::now();
                        let payload = String::from_utf8_lossy(&body).into_owned();
                        let mut received = received.lock().expect("sink records");
                        match received.first.entry(payload) {
                            std::collections::hash_map::Entry::Occupied(_) => received.repeats += 1,
                            std::collections::hash_map::Entry::Vacant(entry) => {
                                entry.insert(at);
                            }
                        }
                        Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::new())))
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Sink { addr, received })
    }

    pub(super) fn repeats(&self) -> u64 {
        self.received.lock().expect("sink records").repeats
    }

    /// The instant each of the `sent` payloads first reached the sink, in the same order;
    /// waits up to `limit` for the last of them, and fails naming the missing ones.
    pub(super) async fn receipts(&self, sent: &[(String, Instant)], limit: Duration) -> Result<Vec<Instant>> {
        let deadline = Instant::now() + limit;
        loop {
            let missing: Vec<&str> = {
                let received = self.received.lock().expect("sink records");
                let missing: Vec<&str> = sent
                    .iter()
                    .filter(|(payload, _)| !received.first.contains_key(payload))
                    .map(|(payload, _)| payload.as_str())
                    .collect();
                if missing.is_empty() {
                    return Ok(sent.iter().map(|(payload, _)| received.first[payload]).collect());
                }
                missing
            };
            if Instant::now() >= deadline {
                bail!(
                    "{} of {} published messages did not reach the sink within {limit:?}, e.g. {}",
                    missing.len(),
                    sent.len(),
                    missing.iter().take(5).copied().collect::<Vec<_>>().join(", ")
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
