//! A local HTTP server that the `subscriber` fixture reports each message to: it counts every
//! attempt and every success per payload, remembers which version handled it, and answers 500
//! to the attempts a test wants to fail (so the guest's handler returns `Err`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

#[derive(Default)]
struct Record {
    /// payload → attempts that reached the sink.
    attempts: BTreeMap<String, u32>,
    /// payload → successful handlings (more than one is a redelivery after success).
    handled: BTreeMap<String, u32>,
    /// payload → the version that handled it last.
    versions: BTreeMap<String, String>,
    /// Every success in arrival order.
    order: Vec<String>,
    /// payload → the `traceparent` of its last attempt (the host adds it to outbound calls).
    traceparents: BTreeMap<String, String>,
}

/// The sink and its records.
pub struct Sink {
    pub addr: SocketAddr,
    record: Arc<Mutex<Record>>,
    failure_percent: Arc<AtomicU32>,
    delay_ms: Arc<AtomicU32>,
}

impl Sink {
    pub async fn start() -> Sink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the sink");
        let addr = listener.local_addr().expect("sink address");
        let record = Arc::new(Mutex::new(Record::default()));
        let failure_percent = Arc::new(AtomicU32::new(0));
        let delay_ms = Arc::new(AtomicU32::new(0));
        let (shared, failures, delay) = (record.clone(), failure_percent.clone(), delay_ms.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (record, failures, delay) = (shared.clone(), failures.clone(), delay.clone());
                let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let (record, failures, delay) = (record.clone(), failures.clone(), delay.clone());
                    async move {
                        let wait = delay.load(Ordering::SeqCst);
                        if wait > 0 {
                            tokio::time::sleep(std::time::Duration::from_millis(u64::from(wait))).await;
                        }
                        let version = request
                            .headers()
                            .get("x-subscriber-version")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("?")
                            .to_string();
                        let traceparent = request
                            .headers()
                            .get("traceparent")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        let body = request
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let payload = String::from_utf8_lossy(&body).to_string();
                        if let Some(traceparent) = traceparent {
                            let mut record = record.lock().expect("sink record");
                            record.traceparents.insert(payload.clone(), traceparent);
                        }
                        let status = record_attempt(&record, &payload, &version, failures.load(Ordering::SeqCst));
                        let mut response = hyper::Response::new(Full::new(Bytes::new()));
                        *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Sink {
            addr,
            record,
            failure_percent,
            delay_ms,
        }
    }

    /// The URL the subscriber posts to, and the host to allow in its manifest entry.
    pub fn url(&self) -> String {
        format!("http://{}/sink", self.addr)
    }
    pub fn allowed_host(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on, this share of attempts (chosen by a hash of payload and attempt number, so
    /// a run is repeatable) answers 500.
    pub fn fail_percent(&self, percent: u32) {
        self.failure_percent.store(percent, Ordering::SeqCst);
    }

    /// From now on, each report waits this long before it is answered (a slow handler).
    pub fn delay_ms(&self, millis: u32) {
        self.delay_ms.store(millis, Ordering::SeqCst);
    }

    fn with<T>(&self, read: impl FnOnce(&Record) -> T) -> T {
        read(&self.record.lock().expect("sink record"))
    }

    /// Payloads handled successfully at least once.
    pub fn handled_count(&self) -> usize {
        self.with(|r| r.handled.len())
    }
    pub fn handled(&self, payload: &str) -> u32 {
        self.with(|r| r.handled.get(payload).copied().unwrap_or(0))
    }
    pub fn attempts(&self, payload: &str) -> u32 {
        self.with(|r| r.attempts.get(payload).copied().unwrap_or(0))
    }
    pub fn total_attempts(&self) -> u64 {
        self.with(|r| r.attempts.values().map(|n| u64::from(*n)).sum())
    }
    pub fn version_of(&self, payload: &str) -> Option<String> {
        self.with(|r| r.versions.get(payload).cloned())
    }
    /// The `traceparent` the subscriber's report of `payload` carried.
    pub fn traceparent_of(&self, payload: &str) -> Option<String> {
        self.with(|r| r.traceparents.get(payload).cloned())
    }
    /// Successes in the order they arrived.
    pub fn order(&self) -> Vec<String> {
        self.with(|r| r.order.clone())
    }
    pub fn handled_payloads(&self) -> Vec<String> {
        self.with(|r| r.handled.keys().cloned().collect())
    }

    /// An application whose probe publishes at `/probe/publish?channel=C` and whose
    /// `subscriber` receives `channel` (a pattern) and reports each message here.
    pub fn manifest(&self, channel: &str) -> String {
        self.manifest_with(channel, "subscriber")
    }

    /// [`Sink::manifest`] with the subscriber built from fixture `subscriber_fixture` (e.g.
    /// `subscriber7`, the spin-sdk 7 one).
    pub fn manifest_with(&self, channel: &str, subscriber_fixture: &str) -> String {
        format!(
            r#"
spin_manifest_version = 2
[application]
name = "messaging-test"
[[trigger.http]]
route = "/probe/..."
component = "probe"
[[trigger.redis]]
channel = "{channel}"
component = "subscriber"
[component.probe]
source = "{{probe}}"
allowed_outbound_hosts = ["redis://127.0.0.1:6379"]
[component.subscriber]
source = "{{{subscriber_fixture}}}"
allowed_outbound_hosts = ["{allowed}"]
[component.subscriber.variables]
sink = "{url}"
"#,
            allowed = self.allowed_host(),
            url = self.url()
        )
    }

    /// Waits until `done` holds, up to `limit`; returns whether it did.
    pub async fn wait_for(&self, limit: std::time::Duration, done: impl Fn(&Sink) -> bool) -> bool {
        crate::eventually(limit, || done(self)).await
    }
}

fn record_attempt(record: &Mutex<Record>, payload: &str, version: &str, failure_percent: u32) -> u16 {
    let mut record = record.lock().expect("sink record");
    let attempt = {
        let attempts = record.attempts.entry(payload.to_string()).or_default();
        *attempts += 1;
        *attempts
    };
    if failure_percent > 0 && pseudo_random(payload, attempt) % 100 < failure_percent {
        return 500;
    }
    *record.handled.entry(payload.to_string()).or_default() += 1;
    record.versions.insert(payload.to_string(), version.to_string());
    record.order.push(payload.to_string());
    200
}

/// FNV-1a of the payload and the attempt number: spread like a random draw, but repeatable.
fn pseudo_random(payload: &str, attempt: u32) -> u32 {
    let mut hash: u64 = 0xcbf29ce484222325;
    for byte in payload.bytes().chain(attempt.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    (hash >> 32) as u32
}
