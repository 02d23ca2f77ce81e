//! Helpers for the integration tests: fixtures, throwaway application directories, a real
//! host on ephemeral ports, an HTTP client, and the `mosaic` binary.

pub mod otlp;
pub mod sink;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mosaic::settings::Settings;
use mosaic::{Host, HostOptions};

pub fn workspace_root() -> PathBuf {
    // `cargo test` names the tested package's directory at run time too. The value compiled in
    // names the checkout that built this library last: worktrees that share a target directory
    // share this library's build, and cargo may find it fresh whichever checkout built it.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir.parent().expect("tests/ is in the workspace").to_owned()
}

/// A guest fixture built by `cargo xtask build` (probe, probe-v2, probe-unhealthy, plain,
/// counter, subscriber, subscriber-v2, subscriber7, spin7, spin7-v2, python from tests/fixtures/python,
/// and javascript from tests/fixtures/javascript).
pub fn fixture(name: &str) -> PathBuf {
    let path = workspace_root().join("target/fixtures").join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "fixture {} is missing: run the tests with `cargo xtask test` (it builds the fixtures)",
        path.display()
    );
    path
}

/// The `mosaic` binary, built by `cargo xtask test` before the tests run.
pub fn mosaic_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let path = target.join("debug/mosaic");
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo xtask test`",
        path.display()
    );
    path
}

/// A directory of its own for one test's application, removed when dropped.
pub struct AppDir {
    pub path: PathBuf,
}

impl AppDir {
    /// Writes `manifest` as spin.toml; `{probe}`-style placeholders become fixture paths.
    pub fn new(manifest: &str) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "mosaic-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        let mut text = manifest.to_string();
        for name in [
            "javascript",
            "python",
            "spin7-v2",
            "spin7",
            "probe-v2",
            "probe-unhealthy",
            "probe-broken",
            "probe",
            "plain",
            "counter",
            "subscriber-v2",
            "subscriber7",
            "subscriber",
            "spin7-caps",
            "ledger",
            "mqtt-echo",
            "greeter-v2",
            "greeter",
            "greeted",
            "middleware-auth",
            "middleware-tagger",
        ] {
            // Only the fixtures the manifest names need to be built.
            let placeholder = format!("{{{name}}}");
            if text.contains(&placeholder) {
                text = text.replace(&placeholder, &fixture(name).to_string_lossy());
            }
        }
        std::fs::write(path.join("spin.toml"), text).expect("write spin.toml");
        Self { path }
    }

    pub fn manifest(&self) -> PathBuf {
        self.path.join("spin.toml")
    }

    /// How many compiled artifacts the state directory holds.
    pub fn artifact_count(&self) -> usize {
        std::fs::read_dir(self.state_dir().join("artifacts"))
            .expect("artifacts")
            .count()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path.join(".mosaic")
    }

    pub async fn start(&self, settings: Settings) -> Host {
        self.start_with(settings, None).await
    }

    /// Starts a host with a runtime config (Spin's format) written into the app directory.
    pub async fn start_with(&self, settings: Settings, runtime_config: Option<&str>) -> Host {
        self.try_start_in(settings, runtime_config, None)
            .await
            .expect("the host starts")
    }

    /// Starts the app with the default settings, expecting it to be refused; returns why.
    pub async fn refusal(&self) -> String {
        match self.try_start_in(Settings::default(), None, None).await {
            Ok(host) => {
                host.shutdown().await;
                panic!("the host started")
            }
            Err(err) => format!("{err:#}"),
        }
    }

    /// Starts one more host of the same application with a state directory of its own
    /// (`state`, under the app directory), as another machine of a cluster would have.
    pub async fn start_in(&self, settings: Settings, runtime_config: Option<&str>, state: &str) -> Host {
        self.try_start_in(settings, runtime_config, Some(state))
            .await
            .expect("the host starts")
    }

    pub async fn try_start_in(
        &self,
        settings: Settings,
        runtime_config: Option<&str>,
        state: Option<&str>,
    ) -> anyhow::Result<Host> {
        let runtime_config_file = runtime_config.map(|text| {
            let path = self.path.join("runtime-config.toml");
            std::fs::write(&path, text).expect("write runtime config");
            path
        });
        Host::start(HostOptions {
            manifest: self.manifest(),
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            state_dir: state.map(|name| self.path.join(name)),
            settings: Some(settings),
            runtime_config_file,
            cluster: None,
            run: Default::default(),
        })
        .await
    }
}

impl Drop for AppDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The probe at `/probe/...` and `/items/:id`, the plain component at `/plain`.
pub const TWO_COMPONENTS: &str = r#"
spin_manifest_version = 2
[application]
name = "two"
[[trigger.http]]
route = "/probe/..."
component = "probe"
[[trigger.http]]
route = "/items/:id"
component = "probe"
[[trigger.http]]
route = "/plain"
component = "plain"
[component.probe]
source = "{probe}"
allowed_outbound_hosts = ["http://*.spin.internal", "http://self"]
[component.plain]
source = "{plain}"
"#;

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    /// The status, headers and whole body of `response`.
    pub async fn read(response: http::Response<hyper::body::Incoming>) -> Result<Reply, String> {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|err| err.to_string())?
            .to_bytes();
        Ok(Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).to_string(),
        })
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.body))
    }
}

pub type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn send(client: &HttpClient, method: &str, url: &str, body: impl Into<Bytes>) -> Result<Reply, String> {
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(body.into()))
        .map_err(|err| err.to_string())?;
    let response = client.request(request).await.map_err(|err| format!("{err:?}"))?;
    Reply::read(response).await
}

/// A call to `host`'s admin API with `authorization` (the header's whole value) if given.
pub async fn admin_request(host: &Host, method: &str, path: &str, authorization: Option<&str>, body: Vec<u8>) -> Reply {
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", host.admin_addr()));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let request = request.body(Full::new(Bytes::from(body))).expect("request");
    let response = client().request(request).await.expect("the admin API answers");
    Reply::read(response).await.expect("body")
}

/// A call to `host`'s admin API with its token.
pub async fn admin(host: &Host, method: &str, path: &str, body: Vec<u8>) -> Reply {
    let bearer = format!("Bearer {}", host.admin_token());
    admin_request(host, method, path, Some(&bearer), body).await
}

pub async fn get(client: &HttpClient, url: &str) -> Reply {
    send(client, "GET", url, Bytes::new())
        .await
        .unwrap_or_else(|err| panic!("GET {url}: {err}"))
}

/// The log lines of one test's hosts, so that the test can check that a failure was logged.
///
/// Tests of one binary run in parallel in one process, so a capture must not show a test the
/// lines of every other test's host. [`LogCapture::run`] runs its test on a runtime of its own
/// and marks every thread of that runtime (the test's own thread, the workers and the blocking
/// pool) as writing to this capture; the test's host runs on that runtime and nowhere else.
///
/// One subscriber serves the whole binary (installed on first use) and picks the capture by the
/// emitting thread. Per-thread subscribers (`tracing::dispatcher::set_default`) would be simpler,
/// but tracing caches each call site's interest across all of them, and a test starting or
/// ending its subscriber while another logs can leave a call site disabled: lines go missing.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

thread_local! {
    /// The capture this thread's log lines go to, if it belongs to a capturing test.
    static CAPTURING: std::cell::RefCell<Option<LogCapture>> = const { std::cell::RefCell::new(None) };
}

/// Where a log line goes: the emitting thread's capture, if any, and stderr.
struct ThreadsCapture;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for ThreadsCapture {
    type Writer = CaptureWriter;

    fn make_writer(&'a self) -> CaptureWriter {
        CaptureWriter(CAPTURING.with(|slot| slot.borrow().clone()))
    }
}

struct CaptureWriter(Option<LogCapture>);

impl std::io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(capture) = &self.0 {
            capture.0.lock().expect("log lock").extend_from_slice(buf);
        }
        std::io::stderr().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// Runs `test` on a multi-threaded runtime of its own (two workers, as the other tests have)
    /// and hands it the capture of everything logged there.
    pub fn run<F, Fut>(test: F)
    where
        F: FnOnce(LogCapture) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        static INSTALLED: std::sync::Once = std::sync::Once::new();
        INSTALLED.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("mosaic=info"))
                .with_ansi(false)
                .with_writer(ThreadsCapture)
                .finish();
            // Another subscriber may already be global (a test that set one): then captures
            // see nothing, and the test's log assertion says so.
            let _ = tracing::subscriber::set_global_default(subscriber);
        });
        let capture = LogCapture::default();
        let for_threads = capture.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || CAPTURING.with(|slot| *slot.borrow_mut() = Some(for_threads.clone())))
            .on_thread_stop(|| CAPTURING.with(|slot| drop(slot.borrow_mut().take())))
            .build()
            .unwrap_or_else(|err| panic!("cannot build the test's runtime: {err}"));
        CAPTURING.with(|slot| *slot.borrow_mut() = Some(capture.clone()));
        struct Unmark;
        impl Drop for Unmark {
            fn drop(&mut self) {
                CAPTURING.with(|slot| drop(slot.borrow_mut().take()));
            }
        }
        let _unmark = Unmark;
        runtime.block_on(test(capture));
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log lock")).to_string()
    }
}

/// A fixture's query of typed parameters (`p=TYPE:VALUE&p=...`, as the probe's and
/// spin7-caps' `/pg` and `/mysql` read them) with every value percent-encoded, so that a value
/// may hold `&`, `=`, `:`, spaces or any byte. The fixtures decode each value.
pub fn encode_typed_params(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.strip_prefix("p=").and_then(|p| p.split_once(':')) {
            Some((ty, value)) => {
                let value: String = value
                    .bytes()
                    .map(|b| {
                        if b.is_ascii_alphanumeric() || b"-._".contains(&b) {
                            (b as char).to_string()
                        } else {
                            format!("%{b:02X}")
                        }
                    })
                    .collect();
                format!("p={ty}:{value}")
            }
            None => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Fails the test unless a real backend answers at `addr` (a TCP connect within 1 s).
///
/// A test that needs a service is `#[ignore = "needs NAME on ADDR"]` and sits in a module
/// `needs_<service>` (nested for several), so that where the service is missing it shows as
/// ignored, never as passed. It runs where asked for with `--include-ignored`: `cargo xtask
/// test` asks for the tests of every service that answers (CI, with MOSAIC_REQUIRE_SERVICES=1,
/// for all of them), so an unreachable service reaching this check is a failure.
pub fn require_service(name: &str, addr: &str) {
    let socket: SocketAddr = addr
        .parse()
        .unwrap_or_else(|err| panic!("{name}: `{addr}` is not a socket address: {err}"));
    if let Err(err) = std::net::TcpStream::connect_timeout(&socket, std::time::Duration::from_secs(1)) {
        panic!(
            "{name} is not reachable at {addr} ({err}): start it (README, \"Services\"), or leave out the \
             ignored tests that need it (run without --include-ignored, or with `cargo xtask test`)"
        );
    }
}

/// Checks `check` every 10 ms until it holds or `limit` has passed; returns whether it held.
pub async fn wait_until<F, Fut>(limit: std::time::Duration, check: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    check().await
}

/// [`wait_until`] for a check that needs no waiting itself.
pub async fn eventually(limit: std::time::Duration, done: impl Fn() -> bool) -> bool {
    wait_until(limit, || std::future::ready(done())).await
}

/// A name no other test run uses, for keys in shared backends.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// Settings in which the `probe` component of [`TWO_COMPONENTS`] opts into a deploy probe of
/// its health route (`/probe/health`, which the `probe-unhealthy` build answers with a 503).
pub fn probed_settings() -> Settings {
    let mut settings = Settings::default();
    settings
        .probe
        .insert("probe".into(), mosaic::settings::ProbeSettings::path("/probe/health"));
    settings
}

/// A deploy of a fixture as `component`, the way the admin API asks for one.
pub fn deploy_request(component: &str, fixture_name: &str) -> mosaic::deploy::DeployRequest {
    mosaic::deploy::DeployRequest::deploy(component, std::fs::read(fixture(fixture_name)).expect("fixture"), None)
}

/// A `mosaic` process, killed when dropped. `base` is the HTTP address it printed.
pub struct MosaicProcess {
    pub child: std::process::Child,
    pub base: String,
}

impl MosaicProcess {
    /// Runs `mosaic ARGS --listen 127.0.0.1:0` in `dir` and waits for its address.
    pub fn start(dir: &Path, args: &[&str]) -> MosaicProcess {
        Self::start_with_env(dir, args, &[])
    }

    pub fn start_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> MosaicProcess {
        Self::spawn(dir, args, env, std::process::Stdio::inherit())
    }

    /// Like [`MosaicProcess::start`], with the host's log (its stderr) written to `log`.
    pub fn start_logging_to(dir: &Path, args: &[&str], log: &Path) -> MosaicProcess {
        Self::start_with_env_logging_to(dir, args, &[], log)
    }

    /// Like [`MosaicProcess::start_with_env`], with the host's log written to `log`.
    pub fn start_with_env_logging_to(dir: &Path, args: &[&str], env: &[(&str, &str)], log: &Path) -> MosaicProcess {
        let file = std::fs::File::create(log).expect("create the log file");
        Self::spawn(dir, args, env, std::process::Stdio::from(file))
    }

    fn spawn(dir: &Path, args: &[&str], env: &[(&str, &str)], stderr: std::process::Stdio) -> MosaicProcess {
        let mut all: Vec<&str> = args.to_vec();
        if !args.contains(&"--listen") {
            all.extend(["--listen", "127.0.0.1:0"]);
        }
        let mut child = std::process::Command::new(mosaic_bin())
            .current_dir(dir)
            .envs(env.iter().copied())
            .args(&all)
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("mosaic starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        let base = loop {
            let line = lines
                .next()
                .expect("mosaic printed its address before exiting")
                .expect("stdout readable");
            if let Some(addr) = line.strip_prefix("Serving ") {
                break addr.trim().to_string();
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        MosaicProcess { child, base }
    }

    /// SIGTERM: a graceful stop.
    pub fn terminate(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// SIGKILL: the host dies at once, mid-work.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn wait(&mut self, limit: std::time::Duration) -> std::process::ExitStatus {
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("child status") {
                return status;
            }
            assert!(started.elapsed() < limit, "mosaic did not exit within {limit:?}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for MosaicProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What came back on a raw connection.
#[derive(Debug)]
pub struct RawAnswer {
    /// Everything the server sent (lossy UTF-8).
    pub text: String,
    /// Whether the server closed the connection (rather than the wait running out).
    pub closed: bool,
}

impl RawAnswer {
    /// The status code of the answer (`HTTP/1.1 404 Not Found ...`), if there is one.
    pub fn status(&self) -> Option<u16> {
        let rest = self
            .text
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| self.text.strip_prefix("HTTP/1.0 "))?;
        rest.get(..3)?.parse().ok()
    }
}

/// Sends `request` as raw bytes on a fresh connection and reads until the server closes it or
/// `limit` passes. For what a well-behaved HTTP client cannot send: malformed heads, invalid
/// methods, spoofed `Host` headers, bodies that never end.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], limit: std::time::Duration) -> RawAnswer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    // The server may answer and close before reading everything, so write beside the reading;
    // a failed write is fine.
    let request = request.to_vec();
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
        writer // kept open: closing it would end the request early
    });
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(limit, reader.read_to_end(&mut answer))
        .await
        .is_ok();
    writing.abort();
    RawAnswer {
        text: String::from_utf8_lossy(&answer).to_string(),
        closed,
    }
}

/// A TCP relay to a real backend that a test can cut (every connection dropped, new ones
/// refused) and restore: the backend "goes down" for this test only, and comes back.
pub struct TcpRelay {
    pub port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl TcpRelay {
    pub async fn start(target: SocketAddr) -> TcpRelay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the relay");
        let port = listener.local_addr().expect("relay address").port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let generation = Arc::new(tokio::sync::watch::channel(0u64).0);
        let (accept_up, accept_generation) = (up.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !accept_up.load(Ordering::SeqCst) {
                    continue; // dropped at once: the connection is refused
                }
                let mut cut = accept_generation.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        TcpRelay { port, up, generation }
    }

    /// Drops every relayed connection and refuses new ones until [`TcpRelay::restore`].
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|generation| *generation += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}
