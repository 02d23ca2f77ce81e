//! `cargo xtask bench http`: requests/s and latency of one hello component under Mosaic,
//! under `wasmtime serve` of the same wasmtime version, and of a native hyper hello (the
//! ceiling), at 1 and 32 connections, all on loopback in one run; then swap latency (deploy
//! call until the new version answers) from a cold and a warm artifact cache. Writes the table
//! to bench/README.md. Bounded: a few seconds per measurement.
//!
//! `cargo xtask bench kv`, `sql` and `messaging` each write their own section of bench/README.md:
//! key-value and SQL operations through a guest per backend, and publish-to-handled latency and
//! messages/s through two guests on the embedded broker, RabbitMQ and NATS JetStream.
//!
//! `cargo xtask bench breaker` writes the latency of a call to a dead dependency with the
//! outbound circuit breaker off against the breaker open.
//!
//! `cargo xtask bench cluster` writes requests/s of one application on 1, 2 and 3 hosts of a
//! cluster (PostgreSQL as the store), and the time a deploy takes to reach every host.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::{cargo, run as run_command};

const WARMUP: Duration = Duration::from_secs(1);
const MEASURE: Duration = Duration::from_secs(5);
const CONNECTIONS: [usize; 2] = [1, 32];
const SWAP_SAMPLES: usize = 5;

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("http") => http(root),
        Some("kv") => key_value(root),
        Some("sql") => sql(root),
        Some("messaging") => messaging(root),
        Some("breaker") => breaker(root),
        Some("cluster") => cluster(root),
        Some("native-server") => native_server(args.get(1).context("native-server PORT")?.parse()?),
        Some(other) => {
            bail!("no benchmark named `{other}`; try `cargo xtask bench http`, `kv`, `sql`, `messaging`, `breaker` or `cluster`")
        }
        None => bail!("name a benchmark: cargo xtask bench http"),
    }
}

struct Stats {
    requests: u64,
    errors: u64,
    /// What the first failed request got (status and body, or the connection error).
    first_error: Option<String>,
    rps: f64,
    p50_us: u64,
    p99_us: u64,
}

/// What each request of [`load_request`] sends.
#[derive(Clone)]
enum Body {
    /// The same body every time.
    Fixed(&'static str),
    /// `PREFIX-<seq>`, numbered across all connections, until the series is used up.
    Numbered(Arc<Numbered>),
}

/// A series of numbered bodies, and the instant each one's request started.
struct Numbered {
    prefix: String,
    limit: usize,
    next: AtomicUsize,
    started: Mutex<Vec<Option<Instant>>>,
}

impl Numbered {
    fn new(prefix: String, limit: usize) -> Arc<Numbered> {
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
    fn sent(&self) -> Vec<(String, Instant)> {
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

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for_port(addr: SocketAddr, what: &str) -> Result<()> {
    let started = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        if started.elapsed() > Duration::from_secs(120) {
            bail!("{what} did not start listening on {addr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn wasmtime_version(root: &Path) -> Result<String> {
    let lock = std::fs::read_to_string(root.join("Cargo.lock"))?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"wasmtime\"" {
            if let Some(version) = lines.next().and_then(|l| l.strip_prefix("version = \"")) {
                return Ok(version.trim_end_matches('"').to_string());
            }
        }
    }
    bail!("wasmtime is not in Cargo.lock")
}

/// `wasmtime` of the same version as Mosaic's, installed from the wasmtime-cli crate once.
fn wasmtime_cli(root: &Path) -> Result<PathBuf> {
    let version = wasmtime_version(root)?;
    let tools = root.join("target/bench-tools").join(format!("wasmtime-{version}"));
    let binary = tools.join("bin/wasmtime");
    if !binary.exists() {
        eprintln!("installing wasmtime-cli {version} (once; this compiles wasmtime)");
        run_command(
            Command::new(cargo())
                .args(["install", "wasmtime-cli", "--locked", "--version"])
                .arg(format!("={version}"))
                .arg("--root")
                .arg(&tools),
        )?;
    }
    Ok(binary)
}

fn http(root: &Path) -> Result<()> {
    build_release_host(root)?;
    let wasmtime = wasmtime_cli(root)?;
    let mosaic = root.join("target/release/mosaic");
    // Throughput: the reference app's hello (imports only WASI and wasi:http, so `wasmtime
    // serve` runs it too). Swaps: the probe fixture, which has a v1 and a v2.
    let hello = root.join("components/target/wasm32-wasip2/release/hello.wasm");
    let probe = root.join("target/fixtures/probe.wasm");
    let probe_v2 = root.join("target/fixtures/probe-v2.wasm");
    let work = root.join("target/bench/http");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    std::fs::write(
        work.join("spin.toml"),
        format!(
            "spin_manifest_version = 2\n[application]\nname = \"bench\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"hello\"\n\
             [component.hello]\nsource = \"{}\"\n[[trigger.http]]\nroute = \"/probe/...\"\ncomponent = \"probe\"\n\
             [component.probe]\nsource = \"{}\"\n",
            hello.display(),
            probe.display()
        ),
    )?;

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut rows = Vec::new();

    let native_port = free_port()?;
    let native_addr: SocketAddr = ([127, 0, 0, 1], native_port).into();
    let native = Killed(
        Command::new(std::env::current_exe()?)
            .args(["bench", "native-server", &native_port.to_string()])
            .spawn()?,
    );
    wait_for_port(native_addr, "the native hyper server")?;

    let wasmtime_port = free_port()?;
    let wasmtime_addr: SocketAddr = ([127, 0, 0, 1], wasmtime_port).into();
    let serve = Killed(
        Command::new(&wasmtime)
            .args(["serve", "-S", "cli=y", "--addr", &wasmtime_addr.to_string()])
            .arg(&hello)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start wasmtime serve")?,
    );
    wait_for_port(wasmtime_addr, "wasmtime serve")?;

    let mosaic_port = free_port()?;
    let mosaic_addr: SocketAddr = ([127, 0, 0, 1], mosaic_port).into();
    let host = Killed(
        Command::new(&mosaic)
            .current_dir(&work)
            .env("MOSAIC_LOG", "warn")
            .args(["up", "--listen", &mosaic_addr.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start mosaic")?,
    );
    wait_for_port(mosaic_addr, "mosaic")?;

    for (name, addr) in [
        ("Mosaic", mosaic_addr),
        ("wasmtime serve", wasmtime_addr),
        ("native hyper (ceiling)", native_addr),
    ] {
        for connections in CONNECTIONS {
            runtime.block_on(load(addr, connections, WARMUP))?;
            let stats = runtime.block_on(load(addr, connections, MEASURE))?;
            eprintln!(
                "{name:<24} c={connections:<3} {:>9.0} req/s  p50 {:>6} us  p99 {:>6} us  ({} requests, {} errors)",
                stats.rps, stats.p50_us, stats.p99_us, stats.requests, stats.errors
            );
            rows.push((name, connections, stats));
        }
    }
    drop(serve);
    drop(native);

    let (cold, warm) = runtime.block_on(swap_latency(&work, mosaic_addr, &probe, &probe_v2))?;
    drop(host);

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let version = wasmtime_version(root)?;
    let throughput = |name: &str, c: usize| {
        rows.iter()
            .find(|(n, conns, _)| *n == name && *conns == c)
            .map(|(_, _, s)| s.rps)
            .unwrap_or(0.0)
    };
    let mut table = String::new();
    table.push_str("| server | connections | requests/s | p50 | p99 | errors |\n|---|---:|---:|---:|---:|---:|\n");
    for (name, connections, stats) in &rows {
        table.push_str(&format!(
            "| {name} | {connections} | {:.0} | {:.3} ms | {:.3} ms | {} |\n",
            stats.rps,
            stats.p50_us as f64 / 1000.0,
            stats.p99_us as f64 / 1000.0,
            stats.errors
        ));
    }
    let mut ratios = String::new();
    for c in CONNECTIONS {
        ratios.push_str(&format!(
            "- {c} connection(s): Mosaic / wasmtime serve = {:.2}x, Mosaic / native = {:.2}x\n",
            throughput("Mosaic", c) / throughput("wasmtime serve", c).max(1.0),
            throughput("Mosaic", c) / throughput("native hyper (ceiling)", c).max(1.0),
        ));
    }
    let swap = format!(
        "| artifact cache | samples | median | min | max |\n|---|---:|---:|---:|---:|\n| cold (compile) | {} | {:.1} ms | {:.1} ms | {:.1} ms |\n| warm (cached) | {} | {:.1} ms | {:.1} ms | {:.1} ms |\n",
        cold.len(),
        median(&cold),
        cold.iter().cloned().fold(f64::MAX, f64::min),
        cold.iter().cloned().fold(0.0, f64::max),
        warm.len(),
        median(&warm),
        warm.iter().cloned().fold(f64::MAX, f64::min),
        warm.iter().cloned().fold(0.0, f64::max),
    );
    let report = format!(
        "# Benchmarks\n\nWritten by `cargo xtask bench http` (do not edit by hand). One run, on this machine: {cpu}, {cores} cores shared by the load generator and the server.\n\n\
         ## HTTP: one hello component\n\nThe same component (`components/hello`, spin-sdk 5.2, `GET /` answers a short text) under Mosaic (release build) and `wasmtime serve -S cli=y` of wasmtime {version}, and a native hyper hello as the ceiling. Closed-loop HTTP/1.1 keep-alive load from a Rust client on loopback, {warm}s warm-up then {measure}s measured per row.\n\n{table}\n{ratios}\n\
         ## Swap latency\n\nOn the probe fixture (`tests/fixtures/probe`, {probe_kb} KB, v1 and v2): from the start of the deploy call (`POST /v1/components/probe/deploy` with the file) until a request answers from the new version, {SWAP_SAMPLES} samples each. Cold: the new version's compiled artifact was removed from the cache first; warm: the artifact was cached.\n\n{swap}",
        probe_kb = std::fs::metadata(&probe).map(|m| m.len() / 1024).unwrap_or(0),
        cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        warm = WARMUP.as_secs(),
        measure = MEASURE.as_secs(),
    );
    std::fs::create_dir_all(root.join("bench"))?;
    // Keep the sections other benchmarks wrote.
    let existing = std::fs::read_to_string(root.join("bench/README.md")).unwrap_or_default();
    // Everything after this benchmark's last section.
    let others = existing
        .find("## Swap latency")
        .and_then(|start| {
            existing[start..]
                .find("\n## ")
                .map(|next| &existing[start + next + 1..])
        })
        .unwrap_or("");
    std::fs::write(root.join("bench/README.md"), format!("{report}\n{others}"))?;
    println!("{report}");
    Ok(())
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

async fn load(addr: SocketAddr, connections: usize, duration: Duration) -> Result<Stats> {
    load_path(addr, "/", connections, duration).await
}

async fn load_path(addr: SocketAddr, path: &'static str, connections: usize, duration: Duration) -> Result<Stats> {
    load_request(&[addr], "GET", path.to_string(), Body::Fixed(""), connections, duration).await
}

/// The `q` quantile of ascending `sorted` samples (0 when there are none).
fn percentile(sorted: &[u64], q: f64) -> u64 {
    sorted
        .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0)
}

/// Closed-loop load: `connections` clients each sending `method path` with `body` until
/// `duration` is over (or a numbered `body` series is used up). The connections go to `addrs`
/// in turn (connection i to `addrs[i % addrs.len()]`). A request fails unless it answers 2xx.
async fn load_request(
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
                let connected = match tokio::net::TcpStream::connect(addr).await {
                    Ok(stream) => {
                        let _ = stream.set_nodelay(true);
                        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
                    }
                    Err(err) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("cannot connect to {addr}: {err}"));
                        continue;
                    }
                };
                let (mut sender, connection) = match connected {
                    Ok(handshake) => handshake,
                    Err(err) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("HTTP handshake with {addr}: {err}"));
                        continue;
                    }
                };
                tokio::spawn(connection);
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
                    let outcome = match sender.send_request(request).await {
                        Ok(response) => {
                            let status = response.status();
                            match response.into_body().collect().await {
                                Ok(_) if status.is_success() => Ok(()),
                                Ok(text) => Err(format!("{status} {}", String::from_utf8_lossy(&text.to_bytes()))),
                                Err(err) => Err(format!("{status}, then reading the body: {err}")),
                            }
                        }
                        Err(err) => Err(err.to_string()),
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

async fn admin_call(addr: SocketAddr, token: &str, path: &str, body: Bytes) -> Result<()> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::post(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::new(body))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let text = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("deploy failed: {status} {}", String::from_utf8_lossy(&text));
    }
    Ok(())
}

/// One POST; fails unless it answers 2xx.
async fn post_once(addr: SocketAddr, path: &str, body: &'static str) -> Result<()> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::post(path)
        .header(http::header::HOST, addr.to_string())
        .body(Full::new(Bytes::from_static(body.as_bytes())))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let text = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("POST {path} failed: {status} {}", String::from_utf8_lossy(&text));
    }
    Ok(())
}

async fn body_of(addr: SocketAddr, path: &str) -> Result<String> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Full::new(Bytes::new()))?;
    let response = sender.send_request(request).await?;
    Ok(String::from_utf8_lossy(&response.into_body().collect().await?.to_bytes()).to_string())
}

/// The admin API's address and token of the host serving from the state directory `state`.
fn admin_endpoint(state: &Path) -> Result<(SocketAddr, String)> {
    let endpoint: serde_json::Value = serde_json::from_slice(&std::fs::read(state.join("admin.json"))?)?;
    let admin: SocketAddr = endpoint["addr"].as_str().context("admin.json has no addr")?.parse()?;
    let token = std::fs::read_to_string(state.join("admin-token"))?.trim().to_string();
    Ok((admin, token))
}

/// Deploys alternately v2 (artifact removed first: cold) and v1 (cached since start-up:
/// warm), timing each from the deploy call until the new version answers.
async fn swap_latency(work: &Path, app: SocketAddr, v1: &Path, v2: &Path) -> Result<(Vec<f64>, Vec<f64>)> {
    let state = work.join(".mosaic");
    let (admin, token) = admin_endpoint(&state)?;
    let (v1_bytes, v2_bytes) = (Bytes::from(std::fs::read(v1)?), Bytes::from(std::fs::read(v2)?));
    let cached_at_start: Vec<std::ffi::OsString> = std::fs::read_dir(state.join("artifacts"))?
        .flatten()
        .map(|entry| entry.file_name())
        .collect();
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..SWAP_SAMPLES {
        for (bytes, expected, is_cold) in [
            (&v2_bytes, "hello from probe v2", true),
            (&v1_bytes, "hello from probe v1", false),
        ] {
            if is_cold {
                // Only v2's artifact goes: the ones compiled at start-up (v1, hello) stay cached.
                for entry in std::fs::read_dir(state.join("artifacts"))?.flatten() {
                    if !cached_at_start.contains(&entry.file_name()) {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
            }
            let started = Instant::now();
            admin_call(admin, &token, "/v1/components/probe/deploy", bytes.clone()).await?;
            loop {
                let body = body_of(app, "/probe/hello").await?;
                if body == expected {
                    break;
                }
                if started.elapsed() > Duration::from_secs(30) {
                    bail!("the new version never answered: expected {expected:?}, the probe answers {body:?}");
                }
            }
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            if is_cold {
                cold.push(ms)
            } else {
                warm.push(ms)
            }
        }
    }
    Ok((cold, warm))
}

/// The ceiling: a native hyper server answering the same short text.
fn native_server(port: u16) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_request| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                        b"hello from native",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// Builds the release `mosaic` that every benchmark runs.
fn build_release_host(root: &Path) -> Result<()> {
    run_command(
        Command::new(cargo())
            .current_dir(root)
            .args(["build", "--release", "-p", "mosaic"]),
    )
}

/// Starts the release `mosaic up` on `manifest` (and a runtime config, and a `mosaic.toml`
/// beside the manifest) in a fresh directory target/bench/NAME, with `extra` arguments after
/// `up --listen ADDR` (relative paths in them are relative to that directory).
fn start_mosaic(
    root: &Path,
    name: &str,
    manifest: &str,
    runtime_config: Option<&str>,
    settings: Option<&str>,
    extra: &[&str],
) -> Result<(Killed, SocketAddr)> {
    let work = root.join("target/bench").join(name);
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    std::fs::write(work.join("spin.toml"), manifest)?;
    if let Some(settings) = settings {
        std::fs::write(work.join("mosaic.toml"), settings)?;
    }
    let port = free_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut command = Command::new(root.join("target/release/mosaic"));
    command
        .current_dir(&work)
        .env("MOSAIC_LOG", "warn")
        .args(["up", "--listen", &addr.to_string()])
        .args(extra)
        .stdout(Stdio::null());
    if let Some(config) = runtime_config {
        std::fs::write(work.join("runtime-config.toml"), config)?;
        command.args(["--runtime-config-file", "runtime-config.toml"]);
    }
    let host = Killed(command.spawn().context("cannot start mosaic")?);
    wait_for_port(addr, "mosaic")?;
    Ok((host, addr))
}

/// `cargo xtask bench kv`: key-value operations per second through a guest, the embedded
/// SQLite backend against Redis, in one run; appends its table to bench/README.md.
fn key_value(root: &Path) -> Result<()> {
    const CONNECTIONS: usize = 8;
    const KV_MEASURE: Duration = Duration::from_secs(3);
    let redis: SocketAddr = ([127, 0, 0, 1], 6379).into();
    if std::net::TcpStream::connect(redis).is_err() {
        bail!("Redis is not reachable at {redis}; start it (see the README) and run the benchmark again");
    }
    build_release_host(root)?;
    let fixtures = root.join("target/fixtures");
    let manifest = format!(
        "spin_manifest_version = 2\n[application]\nname = \"bench-kv\"\n\
         [[trigger.http]]\nroute = \"/probe/...\"\ncomponent = \"probe\"\n\
         [component.probe]\nsource = \"{}\"\nkey_value_stores = [\"default\", \"remote\"]\n\
         [[trigger.http]]\nroute = \"/counter/...\"\ncomponent = \"counter\"\n\
         [component.counter]\nsource = \"{}\"\nkey_value_stores = [\"default\", \"remote\"]\n",
        fixtures.join("probe.wasm").display(),
        fixtures.join("counter.wasm").display()
    );
    let config = "[key_value_store.remote]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:6379/10\"\n";
    let (_host, addr) = start_mosaic(root, "kv", &manifest, Some(config), None, &[])?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let operations: [(&str, &'static str, &'static str); 4] = [
        ("guest without key-value (baseline)", "/probe/hello", "/probe/hello"),
        (
            "set (spin key-value)",
            "/probe/kv?op=set&key=bench&value=0123456789",
            "/probe/kv?op=set&store=remote&key=bench&value=0123456789",
        ),
        (
            "get (spin key-value)",
            "/probe/kv?op=get&key=bench",
            "/probe/kv?op=get&store=remote&key=bench",
        ),
        (
            "increment (wasi:keyvalue atomics)",
            "/counter/incr?key=bench-counter",
            "/counter/incr?store=remote&key=bench-counter",
        ),
    ];
    let mut table = String::from(
        "| operation | embedded (SQLite) ops/s | p50 | p99 | Redis ops/s | p50 | p99 |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for (name, embedded, remote) in operations {
        let mut cells = Vec::new();
        for path in [embedded, remote] {
            cells.push(measure_cell(
                &runtime,
                addr,
                name,
                "GET",
                path.to_string(),
                "",
                CONNECTIONS,
                KV_MEASURE,
            )?);
        }
        table.push_str(&format!("| {name} | {} | {} |\n", cells[0], cells[1]));
    }
    let section = format!(
        "## Key-value through a guest\n\nWritten by `cargo xtask bench kv`. Each request is one HTTP request to a guest that does one operation on the store; \
         {CONNECTIONS} connections, {}s warm-up then {}s measured per cell, Mosaic release build, Redis on loopback (db 10).\n\n{table}",
        WARMUP.as_secs(),
        KV_MEASURE.as_secs()
    );
    write_section(root, "## Key-value through a guest", &section)
}

/// Warms up, then measures one request shape; returns the table cell "rate | p50 | p99".
#[allow(clippy::too_many_arguments)]
fn measure_cell(
    runtime: &tokio::runtime::Runtime,
    addr: SocketAddr,
    name: &str,
    method: &'static str,
    path: String,
    body: &'static str,
    connections: usize,
    duration: Duration,
) -> Result<String> {
    runtime.block_on(load_request(
        &[addr],
        method,
        path.clone(),
        Body::Fixed(body),
        connections,
        WARMUP,
    ))?;
    let stats = runtime.block_on(load_request(
        &[addr],
        method,
        path.clone(),
        Body::Fixed(body),
        connections,
        duration,
    ))?;
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
    Ok(format!(
        "{:.0} | {:.2} ms | {:.2} ms",
        stats.rps,
        stats.p50_us as f64 / 1000.0,
        stats.p99_us as f64 / 1000.0
    ))
}

/// Replaces (or appends) the section starting with `heading` in bench/README.md.
fn write_section(root: &Path, heading: &str, section: &str) -> Result<()> {
    let readme = root.join("bench/README.md");
    let existing = std::fs::read_to_string(&readme).unwrap_or_default();
    let updated = match existing.find(heading) {
        Some(start) => {
            let end = existing[start + heading.len()..]
                .find("\n## ")
                .map(|i| start + heading.len() + i + 1)
                .unwrap_or(existing.len());
            format!("{}{section}\n{}", &existing[..start], &existing[end..])
        }
        None => format!("{}\n\n{section}", existing.trim_end()),
    };
    std::fs::write(&readme, updated.trim_end().to_string() + "\n")?;
    println!("{section}");
    Ok(())
}

/// `cargo xtask bench sql`: SQL statements per second through a guest, embedded SQLite against
/// PostgreSQL, in one run; writes its section of bench/README.md.
fn sql(root: &Path) -> Result<()> {
    const CONNECTIONS: usize = 8;
    const SQL_MEASURE: Duration = Duration::from_secs(3);
    let postgres: SocketAddr = ([127, 0, 0, 1], 5432).into();
    if std::net::TcpStream::connect(postgres).is_err() {
        bail!("PostgreSQL is not reachable at {postgres}; start it (see the README) and run the benchmark again");
    }
    build_release_host(root)?;
    let manifest = format!(
        "spin_manifest_version = 2\n[application]\nname = \"bench-sql\"\n\
         [[trigger.http]]\nroute = \"/...\"\ncomponent = \"probe\"\n\
         [component.probe]\nsource = \"{}\"\nsqlite_databases = [\"default\"]\n\
         allowed_outbound_hosts = [\"postgres://127.0.0.1:5432\"]\n",
        root.join("target/fixtures/probe.wasm").display()
    );
    let (_host, addr) = start_mosaic(root, "sql", &manifest, None, None, &[])?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let pg = "/pg?addr=host=127.0.0.1%20user=postgres%20dbname=test";
    let setup = [
        (
            "/sql?db=default".to_string(),
            "CREATE TABLE IF NOT EXISTS bench (id INTEGER PRIMARY KEY, v TEXT)",
        ),
        ("/sql?db=default".to_string(), "DELETE FROM bench"),
        (
            format!("{pg}&op=execute"),
            "CREATE TABLE IF NOT EXISTS mosaic_bench (id SERIAL PRIMARY KEY, v TEXT)",
        ),
        (format!("{pg}&op=execute"), "TRUNCATE mosaic_bench"),
    ];
    for (path, statement) in setup {
        runtime.block_on(post_once(addr, &path, statement))?;
    }
    let operations: [(&str, String, String, &'static str, &'static str); 2] = [
        (
            "insert one row",
            "/sql?db=default&p=t:x".into(),
            format!("{pg}&op=execute&p=str:x"),
            "INSERT INTO bench (v) VALUES (?)",
            "INSERT INTO mosaic_bench (v) VALUES ($1)",
        ),
        (
            "select one row by key",
            "/sql?db=default&p=i:1".into(),
            format!("{pg}&p=i32:1"),
            "SELECT id, v FROM bench WHERE id = ?",
            "SELECT id, v FROM mosaic_bench WHERE id = $1",
        ),
    ];
    let mut table = String::from(
        "| statement | SQLite (embedded) stmts/s | p50 | p99 | PostgreSQL stmts/s | p50 | p99 |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for (name, sqlite_path, pg_path, sqlite_sql, pg_sql) in operations {
        let mut cells = Vec::new();
        for (path, statement) in [(sqlite_path, sqlite_sql), (pg_path, pg_sql)] {
            cells.push(measure_cell(
                &runtime,
                addr,
                name,
                "POST",
                path,
                statement,
                CONNECTIONS,
                SQL_MEASURE,
            )?);
        }
        table.push_str(&format!("| {name} | {} | {} |\n", cells[0], cells[1]));
    }
    let section = format!(
        "## SQL through a guest\n\nWritten by `cargo xtask bench sql`. Each request is one HTTP request to a guest that runs one \
         statement with a bound parameter (spin-sdk `sqlite` v2 against `pg4`); {CONNECTIONS} connections, {}s warm-up then {}s \
         measured per cell, Mosaic release build, PostgreSQL 15 on loopback.\n\n{table}",
        WARMUP.as_secs(),
        SQL_MEASURE.as_secs()
    );
    write_section(root, "## SQL through a guest", &section)
}

/// `cargo xtask bench breaker`: the probe calls a dead dependency (a listener in this process
/// that accepts connections and never answers) with `request_timeout_ms = 200` and no retries:
/// with the circuit breaker off every call waits for the timeout; with it on, once open (the
/// warm-up opens it), every call fails at once. A live dependency (answers at once) is the
/// baseline. Writes its section of bench/README.md.
fn breaker(root: &Path) -> Result<()> {
    const CONNECTIONS: usize = 8;
    const BREAKER_MEASURE: Duration = Duration::from_secs(3);
    const TIMEOUT_MS: u64 = 200;
    build_release_host(root)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let live = runtime.block_on(Sink::start())?;
    let dead = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let dead_addr = dead.local_addr()?;
    runtime.spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = dead.accept().await {
            held.push(stream);
        }
    });
    let manifest = format!(
        "spin_manifest_version = 2\n[application]\nname = \"bench-breaker\"\n\
         [[trigger.http]]\nroute = \"/probe/...\"\ncomponent = \"probe\"\n\
         [component.probe]\nsource = \"{}\"\nallowed_outbound_hosts = [\"http://127.0.0.1:*\"]\n",
        root.join("target/fixtures/probe.wasm").display()
    );
    // The probe answers 200 with the error text when its call fails (`error_status=200`), so
    // that a failed call is a measured request.
    let call = |addr: SocketAddr| format!("/probe/outbound?url=http://{addr}/&error_status=200");
    let off = format!("[outbound]\nrequest_timeout_ms = {TIMEOUT_MS}\nretries = 0\nbreaker_failures = 0\n");
    let on = format!("[outbound]\nrequest_timeout_ms = {TIMEOUT_MS}\nretries = 0\n");

    let (host, addr) = start_mosaic(root, "breaker-off", &manifest, None, Some(&off), &[])?;
    let dead_off = measure_cell(
        &runtime,
        addr,
        "dead dependency, breaker off",
        "GET",
        call(dead_addr),
        "",
        CONNECTIONS,
        BREAKER_MEASURE,
    )?;
    drop(host);

    let (_host, addr) = start_mosaic(root, "breaker-on", &manifest, None, Some(&on), &[])?;
    let live_on = measure_cell(
        &runtime,
        addr,
        "live dependency, breaker on",
        "GET",
        call(live.addr),
        "",
        CONNECTIONS,
        BREAKER_MEASURE,
    )?;
    let dead_open = measure_cell(
        &runtime,
        addr,
        "dead dependency, breaker open",
        "GET",
        call(dead_addr),
        "",
        CONNECTIONS,
        BREAKER_MEASURE,
    )?;
    let answer = runtime.block_on(body_of(addr, &call(dead_addr)))?;
    if !answer.contains("circuit open") {
        bail!("the breaker did not open for the dead dependency; the probe answered: {answer}");
    }

    let table = format!(
        "| dependency | outbound policy | calls/s | p50 | p99 |\n|---|---|---:|---:|---:|\n\
         | live (answers 200 at once) | breaker on (default) | {live_on} |\n\
         | dead (accepts, never answers) | breaker off (`breaker_failures = 0`) | {dead_off} |\n\
         | dead (accepts, never answers) | breaker on, open | {dead_open} |\n"
    );
    let section = format!(
        "## Outbound circuit breaker\n\nWritten by `cargo xtask bench breaker`. Each request is one HTTP request to the probe, \
         which makes one outbound GET (`/probe/outbound?url=...`) to a dependency on loopback; `[outbound] request_timeout_ms = {TIMEOUT_MS}`, \
         `retries = 0`, the breaker otherwise at its defaults (opens after 5 failures in a row within 10 s, stays open 5 s). \
         {CONNECTIONS} connections, {}s warm-up (which opens the breaker) then {}s measured per row, Mosaic release build. \
         An open breaker answers the guest at once with `ErrorCode::InternalError(Some(\"circuit open for 127.0.0.1:PORT: ...\"))`.\n\n{table}",
        WARMUP.as_secs(),
        BREAKER_MEASURE.as_secs()
    );
    write_section(root, "## Outbound circuit breaker", &section)
}

/// `cargo xtask bench cluster`: one application on 1, 2 and 3 hosts of one cluster (PostgreSQL
/// on loopback as the store), total requests/s with the load spread over the hosts; then, at 3
/// hosts, the time a deploy through host 1 takes until every host answers the new version.
/// Writes its section of bench/README.md.
fn cluster(root: &Path) -> Result<()> {
    const HOSTS: usize = 3;
    const CLUSTER_CONNECTIONS: usize = 32;
    const RECONCILE_INTERVAL_MS: u64 = 2_000;
    const HOST_TIMEOUT_MS: u64 = 10_000;
    const STORE: &str = "host=127.0.0.1 user=postgres dbname=test";
    const PATH: &str = "/probe/hello";
    const V1: &str = "hello from probe v1";
    const V2: &str = "hello from probe v2";
    /// Bounds a host's start-up and the rollout.
    const BOUND: Duration = Duration::from_secs(120);
    let begun = Instant::now();
    let postgres: SocketAddr = ([127, 0, 0, 1], 5432).into();
    if std::net::TcpStream::connect(postgres).is_err() {
        bail!("PostgreSQL is not reachable at {postgres}; start it (see the README) and run the benchmark again");
    }
    build_release_host(root)?;
    let fixtures = root.join("target/fixtures");
    let v2_file = fixtures.join("probe-v2.wasm");
    let manifest = format!(
        "spin_manifest_version = 2\n[application]\nname = \"bench-cluster\"\n\
         [[trigger.http]]\nroute = \"/probe/...\"\ncomponent = \"probe\"\n\
         [component.probe]\nsource = \"{}\"\n",
        fixtures.join("probe.wasm").display()
    );
    // This run's desired versions stay apart from earlier runs' in the shared database.
    let namespace = unique_namespace()?;
    let settings = format!(
        "[cluster]\nnamespace = \"{namespace}\"\nreconcile_interval_ms = {RECONCILE_INTERVAL_MS}\n\
         host_timeout_ms = {HOST_TIMEOUT_MS}\n"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let measure = |addrs: &[SocketAddr], pids: &[u32], label: &str| -> Result<(Stats, CpuUse)> {
        let load = |duration| {
            runtime.block_on(load_request(
                addrs,
                "GET",
                PATH.to_string(),
                Body::Fixed(""),
                CLUSTER_CONNECTIONS,
                duration,
            ))
        };
        load(WARMUP)?;
        let before = (Instant::now(), cpu_snapshot(pids)?);
        let stats = load(MEASURE)?;
        let cpu = CpuUse::between(&before, &(Instant::now(), cpu_snapshot(pids)?), stats.requests);
        if stats.errors > 0 {
            bail!(
                "{label}: {} failed requests, the first: {}",
                stats.errors,
                stats.first_error.unwrap_or_default()
            );
        }
        eprintln!(
            "{label:<22} c={CLUSTER_CONNECTIONS} {:>9.0} req/s  p50 {:>6} us  p99 {:>6} us  ({} requests); \
             hosts {:.2} cores (kernel {:.2}), load generator {:.2}, others {:.2}, idle {:.0}%; host CPU {:.0} us/request \
             (kernel {:.0})",
            stats.rps,
            stats.p50_us,
            stats.p99_us,
            stats.requests,
            cpu.hosts_cores,
            cpu.hosts_kernel_cores,
            cpu.generator_cores,
            cpu.others_cores,
            cpu.idle * 100.0,
            cpu.host_us_per_request,
            cpu.host_kernel_us_per_request
        );
        Ok((stats, cpu))
    };

    // The baseline: the same host alone, without --cluster.
    let (alone, addr) = start_mosaic(root, "cluster-alone", &manifest, None, None, &[])?;
    runtime.block_on(wait_for_body(addr, PATH, V1, BOUND))?;
    let (baseline, _) = measure(&[addr], &[alone.0.id()], "alone (no cluster)")?;
    drop(alone);

    // The hosts join one after the other; each row loads the hosts up at that point.
    let mut hosts = Vec::new();
    let mut rows: Vec<(usize, Stats, CpuUse)> = Vec::new();
    for n in 1..=HOSTS {
        let name = format!("cluster-{n}");
        let (host, addr) = start_mosaic(
            root,
            &name,
            &manifest,
            None,
            Some(&settings),
            &["--config", "mosaic.toml", "--cluster", STORE, "--state-dir", "state"],
        )?;
        runtime.block_on(wait_for_body(addr, PATH, V1, BOUND))?;
        hosts.push((host, addr, root.join("target/bench").join(&name).join("state")));
        let addrs: Vec<SocketAddr> = hosts.iter().map(|(_, addr, _)| *addr).collect();
        let pids: Vec<u32> = hosts.iter().map(|(host, _, _)| host.0.id()).collect();
        let (stats, cpu) = measure(&addrs, &pids, &format!("{n} host(s)"))?;
        rows.push((n, stats, cpu));
    }

    let addrs: Vec<SocketAddr> = hosts.iter().map(|(_, addr, _)| *addr).collect();
    let (admin, token) = admin_endpoint(&hosts[0].2)?;
    let v2 = Bytes::from(std::fs::read(&v2_file).with_context(|| format!("cannot read {}", v2_file.display()))?);
    let rollout = runtime.block_on(rollout(admin, &token, v2, &addrs, PATH, V2, BOUND))?;
    drop(hosts);
    let ms = |duration: Duration| duration.as_secs_f64() * 1000.0;
    let requests: u64 = rollout.watched.iter().map(|w| w.requests).sum();
    let non_200: u64 = rollout.watched.iter().map(|w| w.non_200).sum();
    let unanswered: u64 = rollout.watched.iter().map(|w| w.unanswered).sum();
    let back_to_old: u64 = rollout.watched.iter().map(|w| w.back_to_old).sum();
    let mut per_host = Vec::new();
    for (i, watched) in rollout.watched.iter().enumerate() {
        let Some(at) = watched.converged_after else {
            bail!(
                "host {} never answered v2 within {BOUND:?} of the deploy; the first error: {}",
                i + 1,
                watched.first_error.clone().unwrap_or_default()
            );
        };
        per_host.push(format!("host {}: {:.0} ms", i + 1, ms(at)));
    }
    let everywhere = rollout
        .watched
        .iter()
        .filter_map(|w| w.converged_after)
        .max()
        .unwrap_or_default();
    eprintln!(
        "rollout: every host answers v2 after {:.0} ms ({}; deploy call {:.0} ms); {requests} polls, {non_200} non-200, \
         {unanswered} unanswered, {back_to_old} old after new",
        ms(everywhere),
        per_host.join(", "),
        ms(rollout.deploy_call)
    );
    if let Some(error) = rollout.watched.iter().find_map(|w| w.first_error.clone()) {
        eprintln!("rollout: the first failed poll: {error}");
    }

    let one = rows[0].1.rps;
    let mut table = String::from(
        "| hosts | connections | requests/s | p50 | p99 | ratio vs 1 host |\n|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut cpu_table = String::from(
        "| hosts | host CPU | of it kernel | load generator CPU | other processes | machine idle | host CPU per request | of it kernel |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (n, stats, cpu) in &rows {
        table.push_str(&format!(
            "| {n} | {CLUSTER_CONNECTIONS} | {:.0} | {:.3} ms | {:.3} ms | {:.2}x |\n",
            stats.rps,
            stats.p50_us as f64 / 1000.0,
            stats.p99_us as f64 / 1000.0,
            stats.rps / one.max(1.0)
        ));
        cpu_table.push_str(&format!(
            "| {n} | {:.2} cores | {:.2} cores | {:.2} cores | {:.2} cores | {:.0}% | {:.0} µs | {:.0} µs |\n",
            cpu.hosts_cores,
            cpu.hosts_kernel_cores,
            cpu.generator_cores,
            cpu.others_cores,
            cpu.idle * 100.0,
            cpu.host_us_per_request,
            cpu.host_kernel_us_per_request
        ));
    }
    let spread = |n: usize| {
        (0..n)
            .map(|host| (CLUSTER_CONNECTIONS + n - 1 - host) / n)
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(" + ")
    };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let (first_cpu, (last_hosts, last_stats, last_cpu)) = (&rows[0].2, rows.last().expect("three rows"));
    let ratio = last_stats.rps / one.max(1.0);
    let busiest_idle = rows.iter().map(|(_, _, cpu)| cpu.idle).fold(0.0, f64::max);
    let generator = rows.iter().map(|(_, _, cpu)| cpu.generator_cores);
    let (generator_min, generator_max) = generator.fold((f64::MAX, 0.0f64), |(lo, hi), c| (lo.min(c), hi.max(c)));
    let saved = first_cpu.host_us_per_request - last_cpu.host_us_per_request;
    let saved_kernel = first_cpu.host_kernel_us_per_request - last_cpu.host_kernel_us_per_request;
    let why = if ratio > 1.05 && saved > 0.0 {
        format!(
            "{last_hosts} hosts still serve {ratio:.2}x the requests/s of 1 host, because each request costs the hosts \
             less CPU when the connections are spread over processes: {:.0} µs of host CPU per request at 1 host \
             ({:.0} µs of it in the kernel), {:.0} µs at {last_hosts} hosts ({:.0} µs in the kernel); {} of the \
             difference is kernel time. So the ratio measures how one host process fares with {CLUSTER_CONNECTIONS} \
             connections on this machine, not how a cluster scales.",
            first_cpu.host_us_per_request,
            first_cpu.host_kernel_us_per_request,
            last_cpu.host_us_per_request,
            last_cpu.host_kernel_us_per_request,
            if saved_kernel > 0.5 * saved { "most" } else { "less than half" },
        )
    } else {
        format!(
            "{last_hosts} hosts serve {ratio:.2}x the requests/s of 1 host ({:.0} and {:.0} µs of host CPU per \
             request): the processes share the same cores.",
            first_cpu.host_us_per_request, last_cpu.host_us_per_request,
        )
    };
    let difference = (one - baseline.rps) / baseline.rps.max(1.0) * 100.0;
    let overhead = if difference.abs() <= 5.0 {
        format!(
            "Cluster mode adds nothing measurable to the request path: 1 cluster host and the host alone differ by \
             {difference:+.1}%."
        )
    } else {
        format!(
            "1 cluster host served {:.1}% {} than the host alone, more than the few % that separate two runs.",
            difference.abs(),
            if difference < 0.0 {
                "fewer requests/s"
            } else {
                "more requests/s"
            }
        )
    };
    let others = rows.iter().map(|(_, _, cpu)| cpu.others_cores).fold(0.0, f64::max);
    let quiet = if others > 0.1 {
        format!(
            "**Not a quiet machine:** other processes took up to {others:.2} cores during a measured row of this run, so \
             the rows are not comparable with each other; run the benchmark again with nothing else running.\n\n"
        )
    } else {
        String::new()
    };
    let statements_per_s = |hosts: usize| hosts as f64 * 2.0 * 1000.0 / RECONCILE_INTERVAL_MS as f64;
    let section = format!(
        "## Cluster: 1, 2 and 3 hosts\n\nWritten by `cargo xtask bench cluster`. One application (the probe fixture; \
         `GET {PATH}` answers a short text) on 1, 2 and 3 Mosaic hosts (release build) of one cluster, each its own process \
         `mosaic up --cluster \"{STORE}\" --config mosaic.toml --state-dir DIR --listen 127.0.0.1:PORT` with \
         `[cluster] namespace = \"{namespace}\"` (new for each run), `reconcile_interval_ms = {RECONCILE_INTERVAL_MS}`, \
         `host_timeout_ms = {HOST_TIMEOUT_MS}`; the store is PostgreSQL on loopback. The hosts join one after the other, \
         and each row loads the hosts up at that point: {CLUSTER_CONNECTIONS} closed-loop HTTP/1.1 keep-alive connections \
         given to the hosts in turn (connection i to host i mod N: {}; {}; {}), {}s warm-up then {}s measured. Every \
         request answered 200. For reference, the same host alone (no `--cluster`): {:.0} requests/s, p50 {:.3} ms, \
         p99 {:.3} ms.\n\n{table}\n\
         Where the CPU went in each measured {}s (from /proc: user and kernel time of the host processes and of the load \
         generator, the benchmark's own process; busy and idle time of the machine):\n\n{cpu_table}\n{quiet}\
         **Rollout at {HOSTS} hosts.** `POST /v1/components/probe/deploy` of probe v2 ({} KB) through host 1's admin API, \
         while one connection per host polls `GET {PATH}` in a closed loop: every host answered v2 **{:.0} ms** after the \
         deploy call started ({}; the deploy call itself returned after {:.0} ms). Host 1 runs the whole pipeline before \
         the new desired version goes to the store; the others hear the `NOTIFY`, fetch the source from PostgreSQL by \
         digest and compile it themselves (each host has its own artifact cache, and v2 was new to all of them), on the \
         same cores that serve the polls. During the rollout the pollers sent {requests} requests: **{non_200} non-200 \
         answers**, {unanswered} requests without an answer, {back_to_old} answers of v1 from a host that had already \
         answered v2.\n\n\
         **What this shows, and what it does not.** All hosts and the load generator share this machine's {cores} cores, \
         so more hosts cannot add CPU here: in every row the machine was at most {:.0}% idle. {why} {overhead}\n\n\
         *Paper estimate, not measured*, for one host per machine of this kind with the load generated elsewhere, \
         behind a load balancer: in cluster mode the request path does not touch PostgreSQL at all (a request runs on \
         the host's own loaded version). PostgreSQL sees only deploys (one transaction writing the desired version and \
         its source, then one read of the source per host) and each host's reconcile every {RECONCILE_INTERVAL_MS} ms \
         (one read of the desired versions and one write of its report, its heartbeat: {:.0} statements/s at 3 hosts, \
         plus one idle `LISTEN` connection per host). That takes nothing measurable from the throughput, so N hosts \
         ≈ N × the 1-host rate: 2 hosts ≈ {:.0}, 3 hosts ≈ {:.0} requests/s. A floor rather than a ceiling: the load \
         generator took {generator_min:.2} to {generator_max:.2} cores here, which a host of its own would have; each \
         host would still carry the per-request cost measured at 1 host, as it runs with threads on all its cores. The \
         limit then moves to the load balancer and the network; PostgreSQL only sets how fast a rollout reaches every \
         host.\n",
        spread(1),
        spread(2),
        spread(3),
        WARMUP.as_secs(),
        MEASURE.as_secs(),
        baseline.rps,
        baseline.p50_us as f64 / 1000.0,
        baseline.p99_us as f64 / 1000.0,
        MEASURE.as_secs(),
        std::fs::metadata(&v2_file).map(|m| m.len() / 1024).unwrap_or(0),
        ms(everywhere),
        per_host.join(", "),
        ms(rollout.deploy_call),
        busiest_idle * 100.0,
        statements_per_s(3),
        2.0 * one,
        3.0 * one,
    );
    eprintln!("bench cluster took {:.0} s", begun.elapsed().as_secs_f64());
    write_section(root, "## Cluster: 1, 2 and 3 hosts", &section)
}

/// CPU time so far, in clock ticks of /proc (USER_HZ, 100 a second on Linux): user and kernel
/// time of some processes, this process's (the load generator's) total, and the machine's idle
/// and total time over all cores.
struct CpuSnapshot {
    hosts_user: u64,
    hosts_kernel: u64,
    generator: u64,
    machine_idle: u64,
    machine_total: u64,
}

/// Ticks of /proc/stat and /proc/PID/stat a second.
const USER_HZ: f64 = 100.0;

fn cpu_snapshot(pids: &[u32]) -> Result<CpuSnapshot> {
    // utime and stime, the 14th and 15th fields; after the command name in parentheses.
    let times = |stat: &str| -> Result<(u64, u64)> {
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("unexpected /proc/PID/stat")?
            .1
            .split_whitespace()
            .collect();
        let field = |i: usize| -> Result<u64> { Ok(fields.get(i).context("short /proc/PID/stat")?.parse()?) };
        Ok((field(11)?, field(12)?))
    };
    let (mut hosts_user, mut hosts_kernel) = (0, 0);
    for pid in pids {
        let (user, kernel) = times(&std::fs::read_to_string(format!("/proc/{pid}/stat"))?)?;
        hosts_user += user;
        hosts_kernel += kernel;
    }
    let (user, kernel) = times(&std::fs::read_to_string("/proc/self/stat")?)?;
    // `cpu user nice system idle iowait irq softirq steal ...` (guest time is within user).
    let machine = std::fs::read_to_string("/proc/stat")?;
    let ticks: Vec<u64> = machine
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("cpu "))
        .context("unexpected /proc/stat")?
        .split_whitespace()
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    Ok(CpuSnapshot {
        hosts_user,
        hosts_kernel,
        generator: user + kernel,
        machine_idle: ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0),
        machine_total: ticks.iter().sum(),
    })
}

/// The CPU used between two snapshots: in cores (CPU seconds per second), and per request.
struct CpuUse {
    hosts_cores: f64,
    hosts_kernel_cores: f64,
    generator_cores: f64,
    /// What the rest of the machine used: busy time minus the hosts' and the generator's.
    others_cores: f64,
    /// Fraction of the machine's time (all cores) that was idle.
    idle: f64,
    host_us_per_request: f64,
    host_kernel_us_per_request: f64,
}

impl CpuUse {
    fn between(before: &(Instant, CpuSnapshot), after: &(Instant, CpuSnapshot), requests: u64) -> CpuUse {
        let ((start, a), (end, b)) = (before, after);
        let seconds = end.duration_since(*start).as_secs_f64().max(1e-6);
        let cores = |ticks: u64| ticks as f64 / USER_HZ / seconds;
        let per_request = |ticks: u64| ticks as f64 / USER_HZ * 1e6 / requests.max(1) as f64;
        let hosts = (b.hosts_user + b.hosts_kernel).saturating_sub(a.hosts_user + a.hosts_kernel);
        let kernel = b.hosts_kernel.saturating_sub(a.hosts_kernel);
        let generator = b.generator.saturating_sub(a.generator);
        let total = b.machine_total.saturating_sub(a.machine_total);
        let busy = total.saturating_sub(b.machine_idle.saturating_sub(a.machine_idle));
        CpuUse {
            hosts_cores: cores(hosts),
            hosts_kernel_cores: cores(kernel),
            generator_cores: cores(generator),
            others_cores: (cores(busy) - cores(hosts) - cores(generator)).max(0.0),
            idle: 1.0 - busy as f64 / total.max(1) as f64,
            host_us_per_request: per_request(hosts),
            host_kernel_us_per_request: per_request(kernel),
        }
    }
}

/// Polls `path` on `addr` until it answers `expected` (errors count as not yet), for at most
/// `bound`.
async fn wait_for_body(addr: SocketAddr, path: &str, expected: &str, bound: Duration) -> Result<()> {
    let started = Instant::now();
    loop {
        let answer = body_of(addr, path).await;
        if matches!(&answer, Ok(body) if body == expected) {
            return Ok(());
        }
        if started.elapsed() > bound {
            bail!("{addr}{path} did not answer {expected:?} within {bound:?}; the last answer: {answer:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What one host answered while a rollout went on.
#[derive(Default)]
struct Watched {
    /// From the deploy call's start until the host first answered the new version.
    converged_after: Option<Duration>,
    requests: u64,
    /// Answers with a status other than 200.
    non_200: u64,
    /// Requests that got no (complete) answer: connection or protocol errors.
    unanswered: u64,
    /// Answers of the old version after the host had answered the new one.
    back_to_old: u64,
    first_error: Option<String>,
}

/// What a rollout through one host took.
struct Rollout {
    deploy_call: Duration,
    /// Per host, in the order of `hosts`.
    watched: Vec<Watched>,
}

/// Deploys `file` as the probe through the admin API at `admin`, while one connection per host
/// polls `path` in a closed loop, until every host answered `new_body` (or `bound` is over).
async fn rollout(
    admin: SocketAddr,
    token: &str,
    file: Bytes,
    hosts: &[SocketAddr],
    path: &'static str,
    new_body: &'static str,
    bound: Duration,
) -> Result<Rollout> {
    let converged = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + bound;
    let started = Arc::new(Mutex::new(None::<Instant>));
    let pollers: Vec<_> = hosts
        .iter()
        .map(|&addr| {
            tokio::spawn(watch_version(
                addr,
                path,
                new_body,
                converged.clone(),
                hosts.len(),
                started.clone(),
                deadline,
            ))
        })
        .collect();
    // Every poller is under way (and sees the old version) before the deploy starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let begun = Instant::now();
    *started.lock().expect("deploy start") = Some(begun);
    let deployed = admin_call(admin, token, "/v1/components/probe/deploy", file).await;
    let deploy_call = begun.elapsed();
    if deployed.is_err() {
        // Stops the pollers.
        converged.fetch_add(hosts.len(), Ordering::Relaxed);
    }
    let mut watched = Vec::new();
    for poller in pollers {
        watched.push(poller.await?);
    }
    deployed?;
    Ok(Rollout { deploy_call, watched })
}

/// One rollout poller: `GET path` on `addr` over a keep-alive connection, again and again, until
/// every one of the `hosts` pollers saw `new_body` (counted in `converged`) or `deadline`.
async fn watch_version(
    addr: SocketAddr,
    path: &'static str,
    new_body: &'static str,
    converged: Arc<AtomicUsize>,
    hosts: usize,
    started: Arc<Mutex<Option<Instant>>>,
    deadline: Instant,
) -> Watched {
    let mut watched = Watched::default();
    let going = || converged.load(Ordering::Relaxed) < hosts && Instant::now() < deadline;
    'connect: while going() {
        let connected = match tokio::net::TcpStream::connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|err| err.to_string())
            }
            Err(err) => Err(err.to_string()),
        };
        let (mut sender, connection) = match connected {
            Ok(handshake) => handshake,
            Err(err) => {
                watched.unanswered += 1;
                watched
                    .first_error
                    .get_or_insert_with(|| format!("connecting to {addr}: {err}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        tokio::spawn(connection);
        while going() {
            let request = hyper::Request::get(path)
                .header(http::header::HOST, addr.to_string())
                .body(Full::new(Bytes::new()))
                .expect("static request");
            let answer = match sender.send_request(request).await {
                Ok(response) => {
                    let status = response.status();
                    response
                        .into_body()
                        .collect()
                        .await
                        .map(|body| (status, body.to_bytes()))
                        .map_err(|err| format!("{status}, then reading the body: {err}"))
                }
                Err(err) => Err(err.to_string()),
            };
            watched.requests += 1;
            let (status, body) = match answer {
                Ok(answer) => answer,
                Err(err) => {
                    watched.unanswered += 1;
                    watched
                        .first_error
                        .get_or_insert_with(|| format!("GET {addr}{path}: {err}"));
                    continue 'connect;
                }
            };
            if status != http::StatusCode::OK {
                watched.non_200 += 1;
                watched
                    .first_error
                    .get_or_insert_with(|| format!("GET {addr}{path}: {status} {}", String::from_utf8_lossy(&body)));
                continue;
            }
            if body == new_body.as_bytes() {
                if watched.converged_after.is_none() {
                    let begun = started.lock().expect("deploy start").unwrap_or_else(Instant::now);
                    watched.converged_after = Some(begun.elapsed());
                    converged.fetch_add(1, Ordering::Relaxed);
                }
            } else if watched.converged_after.is_some() {
                watched.back_to_old += 1;
            }
        }
    }
    watched
}

/// A name no earlier run used: keeps this run's queues, streams or cluster rows apart from
/// earlier runs' on shared servers.
fn unique_namespace() -> Result<String> {
    Ok(format!(
        "bench-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    ))
}

/// `cargo xtask bench messaging`: publish-to-handled latency and messages/s through two guests
/// (the probe publishes with spin-sdk's `redis::Connection::publish`, the `subscriber` fixture
/// receives and reports to a sink here), on the embedded broker, RabbitMQ and NATS JetStream in
/// one run; writes its section of bench/README.md.
fn messaging(root: &Path) -> Result<()> {
    const CHANNEL: &str = "bench.events";
    const CONCURRENCY: u32 = 8;
    const WARMUP_MESSAGES: usize = 50;
    const LATENCY_MESSAGES: usize = 500;
    const PUBLISHERS: usize = 8;
    const THROUGHPUT_MESSAGES: usize = 8_000;
    const THROUGHPUT_TIME: Duration = Duration::from_secs(4);
    /// Bounds a publishing phase that is slower than expected.
    const PUBLISH_BOUND: Duration = Duration::from_secs(30);
    /// How long the published messages have to reach the sink.
    const DRAIN: Duration = Duration::from_secs(60);
    let brokers = [
        ("embedded", "embedded", None),
        (
            "RabbitMQ",
            "rabbitmq",
            Some(("127.0.0.1:5672", "amqp://guest:guest@127.0.0.1:5672/%2f")),
        ),
        (
            "NATS JetStream",
            "nats",
            Some(("127.0.0.1:4222", "nats://127.0.0.1:4222")),
        ),
    ];
    build_release_host(root)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let sink = runtime.block_on(Sink::start())?;
    let fixtures = root.join("target/fixtures");
    let manifest = format!(
        "spin_manifest_version = 2\n[application]\nname = \"bench-messaging\"\n\
         [[trigger.http]]\nroute = \"/probe/...\"\ncomponent = \"probe\"\n\
         [[trigger.redis]]\nchannel = \"{CHANNEL}\"\ncomponent = \"subscriber\"\n\
         [component.probe]\nsource = \"{}\"\nallowed_outbound_hosts = [\"redis://127.0.0.1:6379\"]\n\
         [component.subscriber]\nsource = \"{}\"\nallowed_outbound_hosts = [\"http://{sink}\"]\n\
         [component.subscriber.variables]\nsink = \"http://{sink}/sink\"\n",
        fixtures.join("probe.wasm").display(),
        fixtures.join("subscriber.wasm").display(),
        sink = sink.addr,
    );
    // Queues, exchanges and streams of this run stay apart from earlier runs' on the servers.
    let namespace = unique_namespace()?;
    let path = format!("/probe/publish?channel={CHANNEL}");
    let ms = |us: u64| format!("{:.2} ms", us as f64 / 1000.0);
    let mut table = String::from(
        "| broker | messages | publish p50 | publish p99 | e2e p50 | e2e p99 | messages | published msgs/s | handled msgs/s | e2e p50 | e2e p99 |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut servers = Vec::new();
    let mut repeats = Vec::new();
    for (label, kind, server) in brokers {
        let mut settings =
            format!("[messaging]\nbroker = \"{kind}\"\nnamespace = \"{namespace}\"\nconcurrency = {CONCURRENCY}\n");
        if let Some((addr, url)) = server {
            let addr: SocketAddr = addr.parse()?;
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
                eprintln!("{label}: not reachable at {addr}, skipped");
                table.push_str(&format!("| {label} | not reachable at {addr} |{}\n", " |".repeat(9)));
                continue;
            }
            settings.push_str(&format!("url = \"{url}\"\n"));
            servers.push(match server_version(kind, addr) {
                Some(version) => format!("{label} {version}"),
                None => label.to_string(),
            });
        }
        let (host, addr) = start_mosaic(
            root,
            &format!("messaging-{kind}"),
            &manifest,
            None,
            Some(&settings),
            &[],
        )?;
        let repeats_before = sink.repeats();
        let phase = |name: &str, count: usize, publishers: usize, bound: Duration| {
            let run = format!("m-{kind}-{name}");
            let started = Instant::now();
            let outcome = runtime.block_on(publish_and_wait(
                addr,
                &sink,
                &path,
                Numbered::new(run.clone(), count),
                publishers,
                bound,
                DRAIN,
            ));
            let delivered = outcome.with_context(|| format!("{label}, {name}"))?;
            eprintln!(
                "{label:<15} {name:<10} {:>5} msgs in {:>5.1}s: {:>6.0} published/s, {:>6.0} handled/s; publish p50 {} p99 {}; e2e p50 {} p99 {}",
                delivered.publish.requests,
                started.elapsed().as_secs_f64(),
                delivered.publish.rps,
                delivered.handled_rate,
                ms(delivered.publish.p50_us),
                ms(delivered.publish.p99_us),
                ms(delivered.e2e_p50_us),
                ms(delivered.e2e_p99_us),
            );
            anyhow::Ok(delivered)
        };
        phase("warmup", WARMUP_MESSAGES, 1, PUBLISH_BOUND)?;
        let latency = phase("latency", LATENCY_MESSAGES, 1, PUBLISH_BOUND)?;
        let throughput = phase("throughput", THROUGHPUT_MESSAGES, PUBLISHERS, THROUGHPUT_TIME)?;
        drop(host);
        repeats.push(format!("{label} {}", sink.repeats() - repeats_before));
        table.push_str(&format!(
            "| {label} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {} | {} |\n",
            latency.publish.requests,
            ms(latency.publish.p50_us),
            ms(latency.publish.p99_us),
            ms(latency.e2e_p50_us),
            ms(latency.e2e_p99_us),
            throughput.publish.requests,
            throughput.publish.rps,
            throughput.handled_rate,
            ms(throughput.e2e_p50_us),
            ms(throughput.e2e_p99_us),
        ));
    }
    let section = format!(
        "## Messaging through guests\n\nWritten by `cargo xtask bench messaging`. On each HTTP request (`POST {path}`) the probe guest \
         publishes the body (`m-<run>-<seq>`) with spin-sdk's `redis::Connection::publish`; Mosaic hands it to the broker, and the \
         request answers once the broker holds it durably. The `subscriber` guest (`[[trigger.redis]] channel = \"{CHANNEL}\"`, \
         `concurrency = {CONCURRENCY}`) receives each message and POSTs it to a sink in the benchmark process. *publish* is the HTTP \
         publish call (guest and durable accept by the broker); *e2e* runs from the start of that call until the sink received the \
         message (publish to handled, through both guests).\n\n\
         - Left (latency): after {WARMUP_MESSAGES} warm-up messages, 1 publisher sends {LATENCY_MESSAGES} messages one after the \
         other, not waiting for the sink.\n\
         - Right (throughput): {PUBLISHERS} publisher connections for {}s or {THROUGHPUT_MESSAGES} messages, whichever comes \
         first; *published msgs/s* counts the publishes answered, *handled msgs/s* is messages / (first publish start to last \
         receipt). When publishing outpaces handling the queue grows, and e2e then includes the wait in the queue.\n\n\
         Every publish answered 200 and every message reached the sink (the benchmark fails otherwise). Mosaic release build, \
         one broker per host run, namespace `{namespace}`; brokers: embedded (SQLite in the state directory){servers}. All on \
         loopback, on {cores} cores shared by the load generator, the sink, the host and the brokers.\n\n{table}\n\
         Repeats seen by the sink (a message handled again, which at-least-once allows): {repeats}.\n",
        THROUGHPUT_TIME.as_secs(),
        servers = servers.iter().map(|s| format!(", {s}")).collect::<String>(),
        cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        repeats = repeats.join(", "),
    );
    write_section(root, "## Messaging through guests", &section)
}

/// What one messaging phase measured.
struct Delivered {
    /// The publish calls.
    publish: Stats,
    e2e_p50_us: u64,
    e2e_p99_us: u64,
    /// Messages / (first publish start to last receipt).
    handled_rate: f64,
}

/// Publishes the `series` through `path` from `publishers` connections (for at most `bound`),
/// then waits up to `drain` until every message reached the sink. Fails on any failed publish
/// or any message missing.
async fn publish_and_wait(
    addr: SocketAddr,
    sink: &Sink,
    path: &str,
    series: Arc<Numbered>,
    publishers: usize,
    bound: Duration,
    drain: Duration,
) -> Result<Delivered> {
    let publish = load_request(
        &[addr],
        "POST",
        path.to_string(),
        Body::Numbered(series.clone()),
        publishers,
        bound,
    )
    .await?;
    if publish.errors > 0 {
        bail!(
            "{} publishes failed, the first: {}",
            publish.errors,
            publish.first_error.unwrap_or_default()
        );
    }
    let sent = series.sent();
    if sent.is_empty() {
        bail!("nothing was published in {bound:?}");
    }
    let receipts = sink.receipts(&sent, drain).await?;
    let mut e2e: Vec<u64> = sent
        .iter()
        .zip(&receipts)
        .map(|((_, started), received)| received.saturating_duration_since(*started).as_micros() as u64)
        .collect();
    e2e.sort_unstable();
    let first = sent.iter().map(|(_, started)| *started).min().expect("one sent");
    let last = receipts.iter().copied().max().expect("one received");
    Ok(Delivered {
        publish,
        e2e_p50_us: percentile(&e2e, 0.50),
        e2e_p99_us: percentile(&e2e, 0.99),
        handled_rate: sent.len() as f64 / last.saturating_duration_since(first).as_secs_f64().max(1e-6),
    })
}

/// The HTTP server in this process that the `subscriber` fixture reports each message to: it
/// keeps the instant each payload first arrived and counts the repeats, and answers 200.
struct Sink {
    addr: SocketAddr,
    received: Arc<Mutex<Received>>,
}

#[derive(Default)]
struct Received {
    first: HashMap<String, Instant>,
    repeats: u64,
}

impl Sink {
    async fn start() -> Result<Sink> {
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

    fn repeats(&self) -> u64 {
        self.received.lock().expect("sink records").repeats
    }

    /// The instant each of the `sent` payloads first reached the sink, in the same order;
    /// waits up to `limit` for the last of them, and fails naming the missing ones.
    async fn receipts(&self, sent: &[(String, Instant)], limit: Duration) -> Result<Vec<Instant>> {
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

/// The server's version, as it announces it on connecting: NATS in its `INFO` line, RabbitMQ in
/// the server properties of `Connection.Start`. `None` if it cannot be read quickly.
fn server_version(kind: &str, addr: SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    if kind == "rabbitmq" {
        stream.write_all(b"AMQP\x00\x00\x09\x01").ok()?;
    }
    let mut greeting = vec![0u8; 4096];
    let mut length = 0;
    // Enough for the INFO line or the Connection.Start frame.
    while length < greeting.len() {
        match stream.read(&mut greeting[length..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => length += n,
        }
        if greeting[..length].contains(&b'\n') || (kind == "rabbitmq" && length > 512) {
            break;
        }
    }
    let greeting = &greeting[..length];
    if kind == "nats" {
        let line = std::str::from_utf8(greeting)
            .ok()?
            .lines()
            .next()?
            .strip_prefix("INFO ")?;
        let info: serde_json::Value = serde_json::from_str(line).ok()?;
        return info["version"].as_str().map(str::to_string);
    }
    // A field-table entry: short-string key `version`, type `S`, 32-bit length, the text.
    let key = b"\x07versionS";
    let at = greeting.windows(key.len()).position(|w| w == key)? + key.len();
    let size = u32::from_be_bytes(greeting.get(at..at + 4)?.try_into().ok()?) as usize;
    String::from_utf8(greeting.get(at + 4..at + 4 + size)?.to_vec()).ok()
}
