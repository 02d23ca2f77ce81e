//! `cargo xtask fuzz [SECONDS]`: runs every cargo-fuzz target of `fuzz/` for SECONDS each
//! (default 30), installing cargo-fuzz first if it is missing. It runs on the pinned stable
//! toolchain: without a sanitizer (`--sanitizer none`) cargo-fuzz needs no nightly flag.
//! A target that panics, or spends more than [`UNIT_TIMEOUT_SECS`] on one input, fails the
//! command; the input is left in `fuzz/artifacts/TARGET/` (see docs/fuzzing.md).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{cargo, run};

/// The fuzz targets, as `fuzz/Cargo.toml` names them.
const TARGETS: &[&str] = &["manifest", "routes", "allowed_hosts", "topics"];

/// The cargo-fuzz that CI installs when none is there.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// One input that takes longer than this is a failure (a parser must answer at once).
const UNIT_TIMEOUT_SECS: u64 = 10;

const DEFAULT_SECONDS: u64 = 30;

pub fn run_all(root: &Path, args: &[String]) -> Result<()> {
    let seconds = match args.first() {
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|&seconds| seconds > 0)
            .with_context(|| format!("`{text}` is not a number of seconds; try `cargo xtask fuzz 60`"))?,
        None => DEFAULT_SECONDS,
    };
    ensure_cargo_fuzz()?;
    let fuzz = root.join("fuzz");
    let mut failed = Vec::new();
    for target in TARGETS {
        // libFuzzer adds what it finds to the first directory (ignored by git); the committed
        // seeds, if any, are read from the second.
        let corpus = fuzz.join("corpus").join(target);
        std::fs::create_dir_all(&corpus).with_context(|| format!("cannot create {}", corpus.display()))?;
        let mut command = Command::new(cargo());
        command
            .current_dir(&fuzz)
            .args(["fuzz", "run", "--sanitizer", "none", target])
            .arg(&corpus);
        let seeds = fuzz.join("seeds").join(target);
        if seeds.is_dir() {
            command.arg(&seeds);
        }
        command
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-timeout={UNIT_TIMEOUT_SECS}"));
        let dictionary = fuzz.join(format!("{target}.dict"));
        if dictionary.is_file() {
            command.arg(format!("-dict={}", dictionary.display()));
        }
        eprintln!("== fuzz {target} for {seconds} s");
        let started = Instant::now();
        match run(&mut command) {
            Ok(()) => eprintln!(
                "fuzz {target}: no failure ({:.0} s with its build)",
                started.elapsed().as_secs_f64()
            ),
            Err(err) => {
                eprintln!("fuzz {target}: {err:#}");
                failed.push(*target);
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "fuzz target(s) {} failed: the input is in fuzz/artifacts/TARGET/; replay it with \
             `cd fuzz && cargo fuzz run --sanitizer none TARGET FILE`, then add a unit test for it \
             beside the code",
            failed.join(", ")
        );
    }
    Ok(())
}

fn ensure_cargo_fuzz() -> Result<()> {
    let installed = Command::new(cargo())
        .args(["fuzz", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if installed {
        return Ok(());
    }
    eprintln!("== cargo install cargo-fuzz {CARGO_FUZZ_VERSION}");
    run(Command::new(cargo()).args(["install", "cargo-fuzz", "--locked", "--version", CARGO_FUZZ_VERSION]))
}
