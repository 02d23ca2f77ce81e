//! `cargo xtask build|test|up|bench|fuzz|component-imports`: builds the guest components (they
//! target wasm32-wasip2 and live in their own workspaces) and the Python and JavaScript
//! fixtures, runs the test suite, the benchmarks and the fuzz targets, and lists a component's
//! imports and exports.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

mod bench;
mod component;
mod fuzz;
mod javascript;
mod python;

const USAGE: &str = "usage: cargo xtask <command>

  build            build the reference components and the test fixtures (wasm32-wasip2), and the
                   Python fixture (tests/fixtures/python -> target/fixtures/python.wasm; needs python3
                   and PyPI the first time, for a venv with spin-sdk and componentize-py in
                   $CARGO_TARGET_DIR/python-sdk, else target/python-sdk), and the JavaScript fixture
                   (tests/fixtures/javascript -> target/fixtures/javascript.wasm; needs Node.js 20+ and
                   npm, and the npm registry the first time, for `npm ci` of its package-lock.json into
                   $CARGO_TARGET_DIR/js-sdk, else target/js-sdk)
  build python     build only the Python fixture
  build javascript build only the JavaScript fixture
  test [ARGS...]   build, then run every test of the workspace (cargo test --workspace ARGS); the
                   tests of a service that does not answer are left out and listed as ignored, unless
                   MOSAIC_REQUIRE_SERVICES=1 (CI), where they run and fail
  up [ARGS...]     build the components, then run the reference application (mosaic up ARGS)
  bench http       benchmark HTTP serving and swap latency; writes bench/README.md
  bench kv         key-value ops/s through a guest, embedded vs Redis; adds to bench/README.md
  bench sql        SQL statements/s through a guest, SQLite vs PostgreSQL; adds to bench/README.md
  bench messaging  publish-to-handled latency and msgs/s through guests, embedded vs RabbitMQ vs NATS;
                   adds to bench/README.md
  bench breaker    latency of calls to a dead dependency, outbound breaker off vs open; adds to bench/README.md
  bench cluster    requests/s on 1, 2 and 3 hosts of a cluster (PostgreSQL on 127.0.0.1:5432), and the time a
                   deploy takes to reach every host; adds to bench/README.md
  bench load ADDR PATH CONNECTIONS SECONDS
                   load a server already running (e.g. under perf record) with the benchmarks' client;
                   prints requests/s and latency, writes nothing
  spin-data        prepare the reference application's data for Spin: apply migrations/<service>/ to the
                   SQLite files spin-runtime-config.toml names (mosaic migrate), so that `spin up
                   --runtime-config-file spin-runtime-config.toml` finds its tables (README: Under Spin)
  fuzz [SECONDS]   run each fuzz target of fuzz/ for SECONDS (default 30); installs cargo-fuzz if missing
  component-imports FILE
                   print the top-level imports and exports of the component FILE (interface names such
                   as wasi:http/handler@0.3.0, and their kinds)";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    match args.first().map(String::as_str) {
        Some("build") => match &args[1..] {
            [] => build_all(&root),
            [only] if only == "python" => python::build(&root),
            [only] if only == "javascript" => javascript::build(&root),
            _ => bail!("usage: cargo xtask build [python|javascript]"),
        },
        Some("test") => {
            build_all(&root)?;
            run(Command::new(cargo()).current_dir(&root).args(["build", "-p", "mosaic"]))?;
            test(&root, &args[1..])
        }
        Some("up") => {
            ensure_wasm_target();
            build_components(&root)?;
            run(Command::new(cargo())
                .current_dir(&root)
                .args(["run", "-p", "mosaic", "--", "up"])
                .args(&args[1..]))
        }
        // The load generator alone builds nothing: it loads a server already running.
        Some("bench") if args.get(1).is_some_and(|name| name == "load") => bench::run(&root, &args[1..]),
        Some("bench") => {
            build_all(&root)?;
            bench::run(&root, &args[1..])
        }
        Some("spin-data") => match &args[1..] {
            [] => spin_data(&root),
            _ => bail!("usage: cargo xtask spin-data"),
        },
        Some("fuzz") => fuzz::run_all(&root, &args[1..]),
        Some("component-imports") => match &args[1..] {
            [file] => component::print(Path::new(file)),
            _ => bail!("usage: cargo xtask component-imports FILE"),
        },
        _ => {
            eprintln!("{USAGE}");
            bail!("unknown or missing command")
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

pub fn run(command: &mut Command) -> Result<()> {
    let status = command.status().with_context(|| format!("cannot run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

/// A service some tests need. Its tests sit in a module `needs_<service>` (nested for a test that
/// needs several) and are `#[ignore]`d with a reason naming the service, so that a plain `cargo
/// test` lists them as ignored instead of passing them unrun.
struct Service {
    /// The module of its tests: `--skip <module>::` leaves them out.
    module: &'static str,
    name: &'static str,
    check: Check,
}

enum Check {
    /// Answers a TCP connect within a second.
    Listens(&'static str),
    /// A program on PATH that starts (`PROGRAM --version` succeeds).
    Runs(&'static str),
}

const SERVICES: &[Service] = &[
    Service {
        module: "needs_postgres",
        name: "PostgreSQL",
        check: Check::Listens("127.0.0.1:5432"),
    },
    Service {
        module: "needs_mysql",
        name: "MySQL",
        check: Check::Listens("127.0.0.1:3306"),
    },
    Service {
        module: "needs_redis",
        name: "Redis",
        check: Check::Listens("127.0.0.1:6379"),
    },
    Service {
        module: "needs_rabbitmq",
        name: "RabbitMQ",
        check: Check::Listens("127.0.0.1:5672"),
    },
    Service {
        module: "needs_nats",
        name: "NATS",
        check: Check::Listens("127.0.0.1:4222"),
    },
    Service {
        module: "needs_mosquitto",
        name: "Mosquitto",
        check: Check::Listens("127.0.0.1:1883"),
    },
    Service {
        module: "needs_redis_server",
        name: "the redis-server binary",
        check: Check::Runs("redis-server"),
    },
];

impl Service {
    fn answers(&self) -> bool {
        match self.check {
            Check::Listens(addr) => addr.parse::<std::net::SocketAddr>().is_ok_and(|socket| {
                std::net::TcpStream::connect_timeout(&socket, std::time::Duration::from_secs(1)).is_ok()
            }),
            Check::Runs(program) => Command::new(program)
                .arg("--version")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|status| status.success()),
        }
    }

    fn describe(&self) -> String {
        match self.check {
            Check::Listens(addr) => format!("{} on {addr}", self.name),
            Check::Runs(_) => format!("{} on PATH", self.name),
        }
    }
}

/// `cargo test --workspace ARGS`, with the tests that need a service: all of them where
/// MOSAIC_REQUIRE_SERVICES=1 (a service that does not answer fails its tests) or where every
/// service answers; otherwise a second run takes the tests of the services that answer, and the
/// others stay listed as ignored by the first.
fn test(root: &Path, args: &[String]) -> Result<()> {
    // Cargo's own arguments come before `--`, the test harness's after it.
    let (cargo_args, harness_args) = match args.iter().position(|arg| arg == "--") {
        Some(split) => (&args[..split], &args[split + 1..]),
        None => (args, &[][..]),
    };
    let cargo_test = |harness: &[String]| {
        run(Command::new(cargo())
            .current_dir(root)
            .args(["test", "--workspace"])
            .args(cargo_args)
            .arg("--")
            .args(harness))
    };
    // Whoever picks ignored tests by hand keeps the choice.
    if harness_args
        .iter()
        .any(|arg| arg == "--ignored" || arg == "--include-ignored")
    {
        return cargo_test(harness_args);
    }
    let with = |extra: &[String]| -> Vec<String> { extra.iter().chain(harness_args).cloned().collect() };
    if std::env::var("MOSAIC_REQUIRE_SERVICES").as_deref() == Ok("1") {
        return cargo_test(&with(&["--include-ignored".to_string()]));
    }
    let (answering, missing): (Vec<&Service>, Vec<&Service>) = SERVICES.iter().partition(|service| service.answers());
    if missing.is_empty() {
        return cargo_test(&with(&["--include-ignored".to_string()]));
    }
    let names = |services: &[&Service]| services.iter().map(|s| s.describe()).collect::<Vec<_>>().join(", ");
    eprintln!(
        "not answering: {}. Their tests (modules {}) are listed as ignored; start the services \
         (README, \"Services\") to run them.",
        names(&missing),
        missing
            .iter()
            .map(|s| format!("{}::", s.module))
            .collect::<Vec<_>>()
            .join(", ")
    );
    cargo_test(harness_args)?;
    if answering.is_empty() {
        return Ok(());
    }
    eprintln!(
        "now the ignored tests of the services that answer: {}",
        names(&answering)
    );
    let mut extra = vec!["--ignored".to_string()];
    for service in &missing {
        extra.extend(["--skip".to_string(), format!("{}::", service.module)]);
    }
    let result = cargo_test(&with(&extra));
    eprintln!("not run (not answering): {}", names(&missing));
    result
}

/// The runtime config for running the reference application under Spin.
const SPIN_RUNTIME_CONFIG: &str = "spin-runtime-config.toml";

/// `cargo xtask spin-data`: the host's own migration runner (`mosaic migrate`, sqlx's SQLite)
/// applies `migrations/<service>/` to the database files of the Spin runtime config. Run from
/// the workspace root, as `spin up` is: Spin takes a database's relative path from there.
fn spin_data(root: &Path) -> Result<()> {
    run(Command::new(cargo())
        .current_dir(root)
        .args([
            "run",
            "--quiet",
            "-p",
            "mosaic",
            "--",
            "migrate",
            "--runtime-config-file",
        ])
        .arg(SPIN_RUNTIME_CONFIG))
}

/// One build of a guest crate: (package, features, output name in target/fixtures).
const FIXTURES: &[(&str, &str, &str)] = &[
    ("probe", "", "probe"),
    ("probe", "v2", "probe-v2"),
    ("probe", "unhealthy", "probe-unhealthy"),
    ("probe", "broken", "probe-broken"),
    ("ledger", "", "ledger"),
    ("plain", "", "plain"),
    ("counter", "", "counter"),
    ("subscriber", "", "subscriber"),
    ("subscriber", "v2", "subscriber-v2"),
    ("subscriber7", "", "subscriber7"),
    ("spin7", "", "spin7"),
    ("spin7", "v2", "spin7-v2"),
    ("spin7-caps", "", "spin7-caps"),
    ("mqtt-echo", "", "mqtt-echo"),
    ("greeter", "", "greeter"),
    ("greeter", "v2", "greeter-v2"),
    ("greeted", "", "greeted"),
    ("middleware", "", "middleware-auth"),
    ("middleware", "tagger", "middleware-tagger"),
];

fn build_all(root: &Path) -> Result<()> {
    ensure_wasm_target();
    build_fixtures(root)?;
    python::build(root)?;
    javascript::build(root)?;
    build_components(root)
}

/// rust-toolchain.toml lists the target, but rustup may be told not to install on its own
/// (RUSTUP_AUTO_INSTALL=0): ask for it explicitly. A missing rustup is fine; the build then
/// says what is wrong.
fn ensure_wasm_target() {
    let _ = Command::new("rustup")
        .args(["target", "add", "wasm32-wasip2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

fn build_fixtures(root: &Path) -> Result<()> {
    let workspace = root.join("tests/fixtures");
    let out = root.join("target/fixtures");
    std::fs::create_dir_all(&out)?;
    for (package, features, name) in FIXTURES {
        let mut command = Command::new(cargo());
        command.current_dir(&workspace).args([
            "build",
            "--quiet",
            "--release",
            "--target",
            "wasm32-wasip2",
            "-p",
            package,
        ]);
        if !features.is_empty() {
            command.args(["--features", features]);
        }
        run(&mut command)?;
        // A cdylib's file name has `_` where its package name has `-`.
        let file = package.replace('-', "_");
        let built = workspace.join(format!("target/wasm32-wasip2/release/{file}.wasm"));
        std::fs::copy(&built, out.join(format!("{name}.wasm")))
            .with_context(|| format!("cannot copy {}", built.display()))?;
    }
    eprintln!("fixtures built into {}", out.display());
    Ok(())
}

fn build_components(root: &Path) -> Result<()> {
    let workspace = root.join("components");
    if !workspace.join("Cargo.toml").exists() {
        return Ok(());
    }
    let build = |extra: &[&str]| {
        run(Command::new(cargo())
            .current_dir(&workspace)
            .args(["build", "--quiet", "--release", "--target", "wasm32-wasip2"])
            .args(extra))
    };
    // A second version of `products` (feature v2: it adds a field), to swap in: the tests and
    // the README's tour deploy it. Built first, because the v1 build below writes the same file.
    // And a bad build of it (`broken`: healthy, but a 500 on every other route), for the
    // canary walkthrough of the README.
    let built = workspace.join("target/wasm32-wasip2/release/products.wasm");
    let fixtures = root.join("target/fixtures");
    std::fs::create_dir_all(&fixtures)?;
    for feature in ["v2", "broken"] {
        build(&["-p", "products", "--features", feature])?;
        std::fs::copy(&built, fixtures.join(format!("products-{feature}.wasm")))
            .with_context(|| format!("cannot copy {}", built.display()))?;
    }
    build(&["--workspace"])?;
    eprintln!(
        "components built into {}",
        workspace.join("target/wasm32-wasip2/release").display()
    );
    Ok(())
}
