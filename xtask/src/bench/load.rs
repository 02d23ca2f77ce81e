use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use http_body_util::Full;

use super::client::{connect, exchange};

use super::report::rate_cells;
use super::WARMUP;

pub(super) struct Stats {
    pub(super) requests: u64,
    pub(super) errors: u64,
    /// What the first failed request got (status and body, or the connection error).
    pub(super) first_error: Option<String>,
    pub(super) rps: f64,
    pub(super) p50_us: u64,
    pub(super) p99_us: u64,
}

/// What each request of [`load_request`] sends.
#[derive(Clone)]
pub(super) enum Body {
    /// The same body every time.
    Fixed(&'static str),
    /// `PREFIX-<seq>`, numbered across all connections, until the series is used up.
    Numbered(Arc<Numbered>),
}

/// A series of numbered bodies, and the instant each one's request started.
pub(super) struct Numbered {
    prefix: String,
    limit: usize,
    next: AtomicUsize,
    started: Mutex<Vec<Option<Instant>>>,
}

impl Numbered {
    pub(super) fn new(prefix: String, limit: usize) -> Arc<Numbered> {
        Arc::new(Numbered {
            prefix,
            limit,
            next: AtomicUsize::new(0),
            started: Mutex::new(vec![None; limit]),
        })
    }

    fn payload(&self, seq: usize) -> String {
        format!("{}-{seq}", self.prefix)
    }

    /// The requests sent, in number order: (payload, instant its request started).
    pub(super) fn sent(&self) -> Vec<(String, Instant)> {
        let started = self.started.lock().expect("start instants");
        started
            .iter()
            .enumerate()
            .filter_map(|(seq, at)| at.map(|at| (self.payload(seq), at)))
            .collect()
    }
}

impl Body {
    /// The next body and its number in a series; `None` once a series is used up.
    fn next(&self) -> Option<(Bytes, Option<usize>)> {
        match self {
            Body::Fixed(text) => Some((Bytes::from_static(text.as_bytes()), None)),
            Body::Numbered(series) => {
                let seq = series.next.fetch_add(1, Ordering::Relaxed);
                (seq < series.limit).then(|| (Bytes::from(series.payload(seq)), Some(seq)))
            }
        }
    }

    fn started(&self, seq: Option<usize>, at: Instant) {
        if let (Body::Numbered(series), Some(seq)) = (self, seq) {
            series.started.lock().expect("start instants")[seq] = Some(at);
        }
    }
}

/// Closed-loop `GET path` without a body; see [`load_request`].
pub(super) async fn load_get(
    addrs: &[SocketAddr],
    path: &str,
    connections: usize,
    duration: Duration,
) -> Result<Stats> {
    load_request(addrs, "GET", path.to_string(), Body::Fixed(""), connections, duration).await
}

/// `cargo xtask bench load ADDR PATH CONNECTIONS SECONDS`: GETs `PATH` of the server at `ADDR`.
pub(super) fn run_standalone(args: &[String]) -> Result<()> {
    let usage = "cargo xtask bench load ADDR PATH CONNECTIONS SECONDS (e.g. 127.0.0.1:3000 / 32 10)";
    let [addr, path, connections, seconds] = args else {
        bail!("usage: {usage}");
    };
    fn parse<T: std::str::FromStr>(text: &str, usage: &str) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        text.parse()
            .map_err(|err| anyhow::anyhow!("{text}: {err}; usage: {usage}"))
    }
    let addr: SocketAddr = parse(addr, usage)?;
    let connections: usize = parse(connections, usage)?;
    let seconds: u64 = parse(seconds, usage)?;
    let runtime = super::runtime()?;
    let stats = runtime.block_on(load_get(&[addr], path, connections, Duration::from_secs(seconds)))?;
    println!(
        "{addr}{path} c={connections}: {}  ({} requests, {} errors{})",
        super::report::rate_progress(&stats),
        stats.requests,
        stats.errors,
        stats
            .first_error
            .map(|first| format!(", first: {first}"))
            .unwrap_or_default()
    );
    Ok(())
}

/// Closed-loop load: `connections` clients each sending `method path` with `body` until
/// `duration` is over (or a numbered `body` series is used up). The connections go to `addrs`
/// in turn (connection i to `addrs[i % addrs.len()]`). A request fails unless it answers 2xx.
pub(super) async fn load_request(
    addrs: &[SocketAddr],
    method: &'static str,
    path: String,
    body: Body,
    connections: usize,
    duration: Duration,
) -> Result<Stats> {
    let begun = Instant::now();
    let deadline = begun + duration;
    if addrs.is_empty() {
        bail!("no address to send the load to");
    }
    let mut tasks = Vec::new();
    for connection in 0..connections {
        let addr = addrs[connection % addrs.len()];
        let (path, body) = (path.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies: Vec<u64> = Vec::new();
            let mut errors = 0u64;
            let mut first_error = None;
            'connect: while Instant::now() < deadline {
                let mut sender = match connect(addr).await {
                    Ok(sender) => sender,
                    Err(err) => {
                        errors += 1;
                        first_error.get_or_insert(err);
                        continue;
                    }
                };
                while Instant::now() < deadline {
                    let Some((bytes, seq)) = body.next() else {
                        break 'connect;
                    };
                    let request = hyper::Request::builder()
                        .method(method)
                        .uri(path.as_str())
                        .header(http::header::HOST, addr.to_string())
                        .body(Full::new(bytes))
                        .expect("static request");
                    let started = Instant::now();
                    body.started(seq, started);
                    let outcome = match exchange(&mut sender, request).await {
                        Ok((status, _)) if status.is_success() => Ok(()),
                        Ok((status, text)) => Err(format!("{status} {}", String::from_utf8_lossy(&text))),
                        Err(err) => Err(err),
                    };
                    if let Err(err) = outcome {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{method} {path}: {err}"));
                        continue 'connect;
                    }
                    latencies.push(started.elapsed().as_micros() as u64);
                }
            }
            (latencies, errors, first_error)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for task in tasks {
        let (latencies, task_errors, task_error) = task.await?;
        all.extend(latencies);
        errors += task_errors;
        first_error = first_error.or(task_error);
    }
    all.sort_unstable();
    Ok(Stats {
        requests: all.len() as u64,
        errors,
        first_error,
        // A used-up series ends before the deadline.
        rps: all.len() as f64 / duration.min(begun.elapsed()).as_secs_f64(),
        p50_us: percentile(&all, 0.50),
        p99_us: percentile(&all, 0.99),
    })
}

/// The `q` quantile of ascending `sorted` samples (0 when there are none).
pub(super) fn percentile(sorted: &[u64], q: f64) -> u64 {
    sorted
        .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0)
}

/// How the kv, sql and breaker benchmarks measure each cell of their tables.
pub(super) struct CellLoad<'a> {
    pub(super) runtime: &'a tokio::runtime::Runtime,
    pub(super) connections: usize,
    pub(super) duration: Duration,
}

impl CellLoad<'_> {
    /// Warms up, then measures one request shape; returns the table cells "rate | p50 | p99".
    pub(super) fn measure(
        &self,
        addr: SocketAddr,
        name: &str,
        method: &'static str,
        path: String,
        body: &'static str,
    ) -> Result<String> {
        let CellLoad {
            runtime,
            connections,
            duration,
        } = *self;
        let load = |duration| {
            runtime.block_on(load_request(
                &[addr],
                method,
                path.clone(),
                Body::Fixed(body),
                connections,
                duration,
            ))
        };
        load(WARMUP)?;
        let stats = load(duration)?;
        if stats.errors > 0 {
            bail!(
                "{name} on {path}: {} errors, the first: {}",
                stats.errors,
                stats.first_error.unwrap_or_default()
            );
        }
        eprintln!(
            "{name:<36} {path:<70} {:>8.0}/s p50 {} us p99 {} us",
            stats.rps, stats.p50_us, stats.p99_us
        );
        Ok(rate_cells(&stats, 2))
    }
}
