//! The accept loop shared by the HTTP trigger and the admin API: a cap on open connections,
//! backoff on accept errors, and a graceful drain at shutdown.
//!
//! It knows nothing of what it serves (no import of the rest of the host): each listener
//! hands it a hyper builder and a per-connection service. A connection may speak TLS
//! (`--tls-cert`/`--tls-key`): its handshake runs in the connection's own task.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::HttpService;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where connections come from: a TCP listener (plain or TLS), or a scripted source in tests.
pub trait Accept: Send {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// What makes an accepted connection ready to serve (a TLS handshake), awaited in the
    /// connection's own task so that a slow client holds up only itself.
    type Establish: Future<Output = io::Result<Self::Stream>> + Send + 'static;

    /// The next connection. Must be cancel-safe: the loop drops it when shutdown starts.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Establish, SocketAddr)>> + Send;
}

/// How long a client may take to establish its connection (the TLS handshake) before it is
/// closed.
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(10);

async fn accept_tcp(listener: &TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
    let (stream, client) = listener.accept().await?;
    // Answers are written whole; waiting for Nagle only adds latency.
    let _ = stream.set_nodelay(true);
    Ok((stream, client))
}

impl Accept for TcpListener {
    type Stream = TcpStream;
    type Establish = std::future::Ready<io::Result<TcpStream>>;

    async fn accept(&mut self) -> io::Result<(Self::Establish, SocketAddr)> {
        let (stream, client) = accept_tcp(self).await?;
        Ok((std::future::ready(Ok(stream)), client))
    }
}

/// `--tls-cert` and `--tls-key`: PEM files of the certificate chain and its private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The TLS configuration of `files`, with errors that name the file and what is wrong.
pub fn tls_acceptor(files: &TlsFiles) -> anyhow::Result<TlsAcceptor> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |path: &Path, what: &str| {
        std::fs::read(path).map_err(|err| anyhow::anyhow!("--tls-{what} {}: cannot read it: {err}", path.display()))
    };
    let cert_pem = read(&files.cert, "cert")?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| {
            anyhow::anyhow!(
                "--tls-cert {}: not a PEM certificate chain: {err}",
                files.cert.display()
            )
        })?;
    if chain.is_empty() {
        anyhow::bail!(
            "--tls-cert {}: no certificate in it (a PEM file with -----BEGIN CERTIFICATE-----)",
            files.cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key, "key")?).map_err(|err| {
        anyhow::anyhow!(
            "--tls-key {}: no PEM private key in it (PKCS#8, PKCS#1 or SEC1): {err}",
            files.key.display()
        )
    })?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| anyhow::anyhow!("TLS: {err}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|err| {
            anyhow::anyhow!(
                "--tls-cert {} and --tls-key {} do not make a usable pair: {err}",
                files.cert.display(),
                files.key.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A TCP listener whose connections speak TLS.
pub struct TlsListener {
    pub listener: TcpListener,
    pub acceptor: TlsAcceptor,
}

impl Accept for TlsListener {
    type Stream = tokio_rustls::server::TlsStream<TcpStream>;
    type Establish = tokio_rustls::Accept<TcpStream>;

    async fn accept(&mut self) -> io::Result<(Self::Establish, SocketAddr)> {
        let (stream, client) = accept_tcp(&self.listener).await?;
        Ok((self.acceptor.accept(stream), client))
    }
}

/// How many connections a listener keeps open and how long it waits for them at shutdown.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Beyond this many open connections the listener accepts no more until one closes (the
    /// kernel's backlog holds the waiting clients), so a flood cannot exhaust file descriptors.
    pub max_connections: usize,
    /// At shutdown: how long connections still open may take to finish.
    pub drain: Duration,
}

/// The wait after a failed accept: doubling from `FIRST` up to `MAX`, back to `FIRST` after an
/// accept succeeds. Accept errors (out of file descriptors, say) tend to persist; retrying at
/// once would spin a core and flood the log.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(10);
    pub const MAX: Duration = Duration::from_secs(1);

    pub fn new() -> Self {
        Self { next: Self::FIRST }
    }

    /// The wait before the next attempt after a failure.
    pub fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        wait
    }

    pub fn succeeded(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// Accepts connections and serves each with `service_for(client address)` until `shutdown`
/// turns true; then stops accepting and lets the connections in progress finish (requests in
/// flight get their answers), up to `limits.drain`. `name` names the listener in the log.
pub async fn serve<A, S, M>(
    name: &'static str,
    mut acceptor: A,
    builder: http1::Builder,
    mut service_for: M,
    limits: ConnectionLimits,
    mut shutdown: watch::Receiver<bool>,
) where
    A: Accept,
    M: FnMut(SocketAddr) -> S,
    S: HttpService<Incoming> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    S::ResBody: Send + 'static,
    <S::ResBody as Body>::Data: Send,
    <S::ResBody as Body>::Error: Into<BoxError>,
{
    let graceful = GracefulShutdown::new();
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut backoff = Backoff::new();
    loop {
        // Take a place before accepting: at the cap, the next client waits in the backlog
        // until a connection closes instead of being accepted and left unserved.
        let place = tokio::select! {
            place = open.clone().acquire_owned() => match place {
                Ok(place) => place,
                Err(_) => break, // never closed; nothing left to serve with if it were
            },
            _ = stopped(&mut shutdown) => break,
        };
        let accepted = tokio::select! {
            accepted = acceptor.accept() => accepted,
            _ = stopped(&mut shutdown) => break,
        };
        let (stream, client) = match accepted {
            Ok(pair) => {
                backoff.succeeded();
                pair
            }
            Err(err) => {
                let wait = backoff.failed();
                tracing::warn!(listener = name, error = %err, retry_in = ?wait, "accept failed");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    _ = stopped(&mut shutdown) => break,
                }
            }
        };
        let service = service_for(client);
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(ESTABLISH_TIMEOUT, stream).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => {
                    tracing::debug!(listener = name, error = %err, %client, "the connection could not be established");
                    return;
                }
                Err(_) => {
                    tracing::debug!(listener = name, %client, "the client did not establish its connection in time");
                    return;
                }
            };
            let connection = watcher.watch(builder.serve_connection(TokioIo::new(stream), service));
            if let Err(err) = connection.await {
                tracing::debug!(listener = name, error = %err, %client, "connection ended with an error");
            }
            drop(place);
        });
    }
    drop(acceptor);
    if tokio::time::timeout(limits.drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            listener = name,
            drain = ?limits.drain,
            "shutdown: connections still open at the drain deadline were cut"
        );
    }
}

/// Resolves once the host is told to stop (or the sender is gone, which means the same).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::time::Instant;

    /// Scripted accept results; records when each attempt was made.
    struct Script {
        outcomes: std::collections::VecDeque<io::Result<tokio::io::DuplexStream>>,
        attempts: Arc<Mutex<Vec<Instant>>>,
    }

    impl Accept for Script {
        type Stream = tokio::io::DuplexStream;
        type Establish = std::future::Ready<io::Result<tokio::io::DuplexStream>>;

        async fn accept(&mut self) -> io::Result<(Self::Establish, SocketAddr)> {
            let count = {
                let mut attempts = self.attempts.lock().unwrap();
                attempts.push(Instant::now());
                attempts.len()
            };
            // A loop that retries without waiting never yields; stop it rather than hang.
            assert!(count < 1_000, "the accept loop spins: {count} attempts");
            match self.outcomes.pop_front() {
                Some(outcome) => {
                    outcome.map(|stream| (std::future::ready(Ok(stream)), SocketAddr::from(([127, 0, 0, 1], 1))))
                }
                None => Err(io::Error::other("out of file descriptors (scripted)")),
            }
        }
    }

    fn refusal() -> io::Result<tokio::io::DuplexStream> {
        Err(io::Error::other("scripted failure"))
    }

    /// Runs the loop over `outcomes` (then failures only) for `for_how_long` of paused time and
    /// returns the waits between attempts, in milliseconds.
    async fn gaps(outcomes: Vec<io::Result<tokio::io::DuplexStream>>, for_how_long: Duration) -> Vec<u128> {
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let script = Script {
            outcomes: outcomes.into(),
            attempts: attempts.clone(),
        };
        let (stop, stopped) = watch::channel(false);
        let service = |_client| {
            hyper::service::service_fn(|_request: hyper::Request<Incoming>| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
            })
        };
        let limits = ConnectionLimits {
            max_connections: 10,
            drain: Duration::from_secs(1),
        };
        let task = tokio::spawn(serve("test", script, http1::Builder::new(), service, limits, stopped));
        tokio::time::sleep(for_how_long).await;
        stop.send(true).unwrap();
        task.await.unwrap();
        let attempts = attempts.lock().unwrap();
        attempts
            .windows(2)
            .map(|pair| (pair[1] - pair[0]).as_millis())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn accept_errors_back_off_doubling_up_to_a_second() {
        let gaps = gaps(Vec::new(), Duration::from_millis(4_300)).await;
        assert_eq!(gaps, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000], "{gaps:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_successful_accept_resets_the_backoff() {
        let (stream, _client_end) = tokio::io::duplex(1024);
        let outcomes = vec![refusal(), refusal(), refusal(), Ok(stream)];
        let gaps = gaps(outcomes, Duration::from_millis(100)).await;
        // Three failures (10, 20, 40), the success, then the next attempt at once; its failure
        // waits 10 ms again, not 80.
        assert_eq!(gaps[..5], [10, 20, 40, 0, 10], "{gaps:?}");
    }

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let mut backoff = Backoff::new();
        let waits: Vec<u128> = (0..9).map(|_| backoff.failed().as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        backoff.succeeded();
        assert_eq!(backoff.failed(), Backoff::FIRST);
    }
}
