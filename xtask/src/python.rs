//! The Python fixture: tests/fixtures/python, built with Spin's Python SDK and componentize-py
//! (world `spin:up/http-trigger@4.1.0`, WASI 0.3) into target/fixtures/python.wasm.
//!
//! The tools live in a virtual environment made with the machine's `python3`:
//! `<cargo target dir>/python-sdk`, i.e. `$CARGO_TARGET_DIR/python-sdk` when that is set (a
//! tool cache like the compiled crates, so worktrees sharing a target dir share one venv and
//! install it once; a lock file serialises builds that share it), else `target/python-sdk`
//! in the workspace. The fixture itself goes to the workspace's target/fixtures beside the
//! others, where the tests look.
//!
//! A second build is quick: pip runs only when the venv lacks the pinned versions, and
//! componentize-py (about 10 s) only when the output is older than the fixture's sources, the
//! venv's install or this xtask binary.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime};

use anyhow::{bail, Context, Result};

/// Pinned: the versions the fixture is written against.
const SPIN_SDK: &str = "5.0.0";
const COMPONENTIZE_PY: &str = "0.25.1";
const WORLD: &str = "spin:up/http-trigger@4.1.0";

/// Written into the venv after a successful pip install; its mtime dates the install.
const INSTALLED_STAMP: &str = "mosaic-installed";

pub fn build(root: &Path) -> Result<()> {
    let venv = target_dir(root).join("python-sdk");
    std::fs::create_dir_all(venv.parent().expect("the venv is inside the target dir"))?;
    let lock_path = venv.with_extension("lock");
    let lock = File::create(&lock_path).with_context(|| format!("cannot create {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("cannot lock {}", lock_path.display()))?;

    ensure_venv(&venv)?;

    let source = root.join("tests/fixtures/python");
    let out = root.join("target/fixtures/python.wasm");
    let mut inputs = source_files(&source)?;
    inputs.push(venv.join(INSTALLED_STAMP));
    inputs.extend(std::env::current_exe().ok());
    if is_newer_than_all(&out, &inputs)? {
        eprintln!("python fixture up to date: {}", out.display());
        return Ok(());
    }
    componentize(root, &venv, &source, &out)
}

/// `CARGO_TARGET_DIR` (relative to the current directory, as cargo reads it) or the
/// workspace's target/.
pub(crate) fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|dir| !dir.is_empty()) {
        Some(dir) => std::env::current_dir()
            .map(|cwd| cwd.join(&dir))
            .unwrap_or_else(|_| PathBuf::from(dir)),
        None => root.join("target"),
    }
}

fn venv_python(venv: &Path) -> PathBuf {
    venv.join("bin/python")
}

/// Makes `venv` a virtual environment with exactly the pinned spin-sdk and componentize-py.
fn ensure_venv(venv: &Path) -> Result<()> {
    let python = venv_python(venv);
    if python.exists() {
        match installed_versions(&python) {
            Some((sdk, tool)) if sdk == SPIN_SDK && tool == COMPONENTIZE_PY => return Ok(()),
            Some(_) => {}
            // A venv whose interpreter no longer runs (its base python3 was removed or
            // upgraded): start again.
            None if python_runs(&python) => {}
            None => {
                eprintln!("{} does not run: recreating {}", python.display(), venv.display());
                std::fs::remove_dir_all(venv).with_context(|| format!("cannot remove {}", venv.display()))?;
            }
        }
    }
    if !python.exists() {
        create_venv(venv)?;
    }
    pip_install(venv)
}

/// The installed versions of spin-sdk and componentize-py; `None` when the interpreter does
/// not run or either is missing.
fn installed_versions(python: &Path) -> Option<(String, String)> {
    let output = Command::new(python)
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('spin-sdk')); print(m.version('componentize-py'))",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let mut lines = text.lines();
    Some((lines.next()?.to_owned(), lines.next()?.to_owned()))
}

fn python_runs(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "pass"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn create_venv(venv: &Path) -> Result<()> {
    let started = Instant::now();
    let version = Command::new("python3").arg("--version").output();
    let version = match version {
        Ok(output) if output.status.success() => String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        Ok(output) => bail!(
            "`python3 --version` failed ({}): the Python fixture needs Python 3.10 or later on PATH as python3",
            output.status
        ),
        Err(error) => bail!(
            "cannot run python3 ({error}): the Python fixture (tests/fixtures/python) needs Python 3.10 or \
             later on PATH as python3, with its venv module (Debian/Ubuntu: apt-get install python3 python3-venv)"
        ),
    };
    if venv.exists() {
        std::fs::remove_dir_all(venv).with_context(|| format!("cannot remove {}", venv.display()))?;
    }
    let status = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(venv)
        .status()
        .context("cannot run python3 -m venv")?;
    if !status.success() {
        // A half-made venv would be taken for a broken one next time; leave nothing.
        let _ = std::fs::remove_dir_all(venv);
        bail!(
            "`python3 -m venv {}` failed ({status}) with {version}: install Python's venv module with \
             ensurepip (Debian/Ubuntu: apt-get install python3-venv)",
            venv.display()
        );
    }
    eprintln!(
        "python venv {} created with {version} in {:.1} s",
        venv.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn pip_install(venv: &Path) -> Result<()> {
    let started = Instant::now();
    let stamp = venv.join(INSTALLED_STAMP);
    let _ = std::fs::remove_file(&stamp);
    let sdk = format!("spin-sdk=={SPIN_SDK}");
    let tool = format!("componentize-py=={COMPONENTIZE_PY}");
    let status = Command::new(venv_python(venv))
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
        .args([&sdk, &tool])
        .status()
        .context("cannot run pip in the venv")?;
    if !status.success() {
        bail!(
            "pip could not install {sdk} and {tool} into {} ({status}): it needs PyPI (https://pypi.org) \
             or the index in PIP_INDEX_URL; see pip's message above",
            venv.display()
        );
    }
    match installed_versions(&venv_python(venv)) {
        Some((got_sdk, got_tool)) if got_sdk == SPIN_SDK && got_tool == COMPONENTIZE_PY => {}
        got => bail!(
            "after pip install, {} has {got:?} instead of {sdk} and {tool}",
            venv.display()
        ),
    }
    std::fs::write(&stamp, format!("{sdk}\n{tool}\n"))?;
    eprintln!(
        "installed {sdk} and {tool} into {} in {:.1} s",
        venv.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The fixture's files, without Python's caches and hidden files.
fn source_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name();
            if name == "__pycache__" || name.to_string_lossy().starts_with('.') {
                continue;
            }
            if entry.file_type()?.is_dir() {
                pending.push(entry.path());
            } else {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|meta| meta.modified()).ok()
}

pub(crate) fn is_newer_than_all(out: &Path, inputs: &[PathBuf]) -> Result<bool> {
    let Some(built) = modified(out) else {
        return Ok(false);
    };
    for input in inputs {
        let changed = modified(input).with_context(|| format!("cannot read the mtime of {}", input.display()))?;
        if changed >= built {
            return Ok(false);
        }
    }
    Ok(true)
}

/// componentize-py bundles every file of the directory it runs in, so it runs in a copy of the
/// sources (no `__pycache__`, nothing written into tests/); the output appears under its final
/// name only once complete.
fn componentize(root: &Path, venv: &Path, source: &Path, out: &Path) -> Result<()> {
    let started = Instant::now();
    let staging = root.join("target/python-fixture");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).with_context(|| format!("cannot remove {}", staging.display()))?;
    }
    for file in source_files(source)? {
        let copy = staging.join(file.strip_prefix(source).expect("listed under the source"));
        std::fs::create_dir_all(copy.parent().expect("a file has a parent"))?;
        std::fs::copy(&file, &copy).with_context(|| format!("cannot copy {}", file.display()))?;
    }
    std::fs::create_dir_all(out.parent().expect("target/fixtures"))?;
    let partial = out.with_extension("wasm.partial");
    // componentize-py finds the SDK (its WIT and its `componentize-py.toml`) in the
    // site-packages of the venv named by VIRTUAL_ENV, not in the interpreter's own path.
    let status = Command::new(venv.join("bin/componentize-py"))
        .current_dir(&staging)
        .env("VIRTUAL_ENV", venv)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .args(["--quiet", "-w", WORLD, "componentize", "app", "-o"])
        .arg(&partial)
        .status()
        .context("cannot run componentize-py")?;
    if !status.success() {
        let _ = std::fs::remove_file(&partial);
        bail!("componentize-py failed ({status}) on {}", source.display());
    }
    std::fs::rename(&partial, out).with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!(
        "python fixture built into {} in {:.1} s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
