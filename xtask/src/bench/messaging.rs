use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::load::{load_request, percentile, Body, Numbered, Stats};
use super::report::{self, cores, write_section};
use super::sink::Sink;
use super::{build_release_host, runtime, start_mosaic, unique_namespace};

/// `cargo xtask bench messaging`: publish-to-handled latency and messages/s through two guests
/// (the probe publishes with spin-sdk's `redis::Connection::publish`, the `subscriber` fixture
/// receives and reports to a sink here), on the embedded broker, RabbitMQ and NATS JetStream in
/// one run; writes its section of bench/README.md.
pub(super) fn run(root: &Path) -> Result<()> {
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
    let runtime = runtime()?;
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
    let ms = |us: u64| report::ms(us, 2);
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
        cores = cores(),
        repeats = repeats.join(", "),
    );
    write_section(root, "## Messaging through guests", &section)
}

/// What one messaging phase measured.
pub(super) struct Delivered {
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
pub(super) async fn publish_and_wait(
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

/// The server's version, as it announces it on connecting: NATS in its `INFO` line, RabbitMQ in
/// the server properties of `Connection.Start`. `None` if it cannot be read quickly.
pub(super) fn server_version(kind: &str, addr: SocketAddr) -> Option<String> {
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
