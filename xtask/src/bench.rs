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
        Some("native-server") => native_server(args.get(1).context("native-server PORT")?.parse()?),
        Some(other) => {
            bail!("no benchmark named `{other}`; try `cargo xtask bench http`, `kv`, `sql`, `messaging` or `breaker`")
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
    load_request(addr, "GET", path.to_string(), Body::Fixed(""), connections, duration).await
}

/// The `q` quantile of ascending `sorted` samples (0 when there are none).
fn percentile(sorted: &[u64], q: f64) -> u64 {
    sorted
        .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0)
}

/// Closed-loop load: `connections` clients each sending `method path` with `body` until
/// `duration` is over (or a numbered `body` series is used up). A request fails unless it
/// answers 2xx.
async fn load_request(
    addr: SocketAddr,
    method: &'static str,
    path: String,
    body: Body,
    connections: usize,
    duration: Duration,
) -> Result<Stats> {
    let begun = Instant::now();
    let deadline = begun + duration;
    let mut tasks = Vec::new();
    for _ in 0..connections {
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

/// Deploys alternately v2 (artifact removed first: cold) and v1 (cached since start-up:
/// warm), timing each from the deploy call until the new version answers.
async fn swap_latency(work: &Path, app: SocketAddr, v1: &Path, v2: &Path) -> Result<(Vec<f64>, Vec<f64>)> {
    let state = work.join(".mosaic");
    let endpoint: serde_json::Value = serde_json::from_slice(&std::fs::read(state.join("admin.json"))?)?;
    let admin: SocketAddr = endpoint["addr"].as_str().context("admin.json has no addr")?.parse()?;
    let token = std::fs::read_to_string(state.join("admin-token"))?.trim().to_string();
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
/// beside the manifest) in a fresh directory.
fn start_mosaic(
    root: &Path,
    name: &str,
    manifest: &str,
    runtime_config: Option<&str>,
    settings: Option<&str>,
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
    let (_host, addr) = start_mosaic(root, "kv", &manifest, Some(config), None)?;
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
        addr,
        method,
        path.clone(),
        Body::Fixed(body),
        connections,
        WARMUP,
    ))?;
    let stats = runtime.block_on(load_request(
        addr,
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
    let (_host, addr) = start_mosaic(root, "sql", &manifest, None, None)?;
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

    let (host, addr) = start_mosaic(root, "breaker-off", &manifest, None, Some(&off))?;
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

    let (_host, addr) = start_mosaic(root, "breaker-on", &manifest, None, Some(&on))?;
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
    let namespace = format!(
        "bench-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    );
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
        let (host, addr) = start_mosaic(root, &format!("messaging-{kind}"), &manifest, None, Some(&settings))?;
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
        addr,
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
