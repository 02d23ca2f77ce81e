//! `cargo xtask build|test|up|bench|fuzz`: builds the guest components (they target
//! wasm32-wasip2 and live in their own workspaces), runs the test suite, the benchmarks and the
//! fuzz targets.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

mod bench;
mod fuzz;

const USAGE: &str = "usage: cargo xtask <command>

  build            build the reference components and the test fixtures (wasm32-wasip2)
  test             build, then run every test of the workspace
  up [ARGS...]     build the components, then run the reference application (mosaic up ARGS)
  bench http       benchmark HTTP serving and swap latency; writes bench/README.md
  bench kv         key-value ops/s through a guest, embedded vs Redis; adds to bench/README.md
  bench sql        SQL statements/s through a guest, SQLite vs PostgreSQL; adds to bench/README.md
  bench messaging  publish-to-handled latency and msgs/s through guests, embedded vs RabbitMQ vs NATS;
                   adds to bench/README.md
  bench breaker    latency of calls to a dead dependency, outbound breaker off vs open; adds to bench/README.md
  bench cluster    requests/s on 1, 2 and 3 hosts of a cluster (PostgreSQL on 127.0.0.1:5432), and the time a
                   deploy takes to reach every host; adds to bench/README.md
  fuzz [SECONDS]   run each fuzz target of fuzz/ for SECONDS (default 30); installs cargo-fuzz if missing";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    match args.first().map(String::as_str) {
        Some("build") => build_all(&root),
        Some("test") => {
            build_all(&root)?;
            run(Command::new(cargo()).current_dir(&root).args(["build", "-p", "mosaic"]))?;
            run(Command::new(cargo())
                .current_dir(&root)
                .args(["test", "--workspace"])
                .args(&args[1..]))
        }
        Some("up") => {
            ensure_wasm_target();
            build_components(&root)?;
            run(Command::new(cargo())
                .current_dir(&root)
                .args(["run", "-p", "mosaic", "--", "up"])
                .args(&args[1..]))
        }
        Some("bench") => {
            build_all(&root)?;
            bench::run(&root, &args[1..])
        }
        Some("fuzz") => fuzz::run_all(&root, &args[1..]),
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

/// One build of a guest crate: (package, features, output name in target/fixtures).
const FIXTURES: &[(&str, &str, &str)] = &[
    ("probe", "", "probe"),
    ("probe", "v2", "probe-v2"),
    ("probe", "unhealthy", "probe-unhealthy"),
    ("plain", "", "plain"),
    ("counter", "", "counter"),
    ("subscriber", "", "subscriber"),
    ("subscriber", "v2", "subscriber-v2"),
];

fn build_all(root: &Path) -> Result<()> {
    ensure_wasm_target();
    build_fixtures(root)?;
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
        let built = workspace.join(format!("target/wasm32-wasip2/release/{package}.wasm"));
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
    build(&["-p", "products", "--features", "v2"])?;
    let built = workspace.join("target/wasm32-wasip2/release/products.wasm");
    let fixtures = root.join("target/fixtures");
    std::fs::create_dir_all(&fixtures)?;
    std::fs::copy(&built, fixtures.join("products-v2.wasm"))
        .with_context(|| format!("cannot copy {}", built.display()))?;
    build(&["--workspace"])?;
    eprintln!(
        "components built into {}",
        workspace.join("target/wasm32-wasip2/release").display()
    );
    Ok(())
}
