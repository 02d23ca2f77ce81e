//! The JavaScript fixture: tests/fixtures/javascript, built with Spin's JavaScript SDK
//! (`@spinframework/build-tools`' `j2w`, i.e. ComponentizeJS on StarlingMonkey, and
//! `@spinframework/wasi-http-proxy`, whose WIT makes it export
//! `wasi:http/incoming-handler@0.2.3`, WASI 0.2) into target/fixtures/javascript.wasm.
//!
//! The fixture's package.json pins the SDK packages and its package-lock.json every package
//! under them (package.json also names `@bytecodealliance/preview2-shim`: build-tools 1.0.7
//! imports it without declaring it, and `npm ci` leaves it out otherwise). The tools are
//! installed with `npm ci` from that lock into
//! `<cargo target dir>/js-sdk/node_modules`, i.e. `$CARGO_TARGET_DIR/js-sdk` when that is set
//! (a tool cache like the Python venv: worktrees sharing a target dir share one install; a lock
//! file serialises builds that share it), else `target/js-sdk` in the workspace. `j2w` runs in
//! `js-sdk/fixture`, a copy of the fixture's sources: it writes files beside its input, and it
//! finds the packages whose WIT it merges by walking up to `js-sdk/node_modules`. The fixture
//! itself goes to the workspace's target/fixtures beside the others, where the tests look.
//!
//! A second build is quick: `npm ci` runs only when the install's stamp differs from the
//! fixture's package.json and package-lock.json, and `j2w` (about 30 s) only when the output is older than the
//! fixture's sources, the install or this xtask binary.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::python::{is_newer_than_all, target_dir};

/// ComponentizeJS 0.19 and jco 1.35 ask for Node.js 20 or later.
const NODE_MAJOR: u32 = 20;

/// Written into the install after a successful `npm ci`: the package.json and package-lock.json
/// it installed. Its mtime dates the install.
const INSTALLED_STAMP: &str = "mosaic-installed";

const INSTALL_HINT: &str = "the JavaScript fixture (tests/fixtures/javascript) needs Node.js 20 or later \
                            and npm on PATH (Debian/Ubuntu: apt-get install nodejs npm)";

pub fn build(root: &Path) -> Result<()> {
    let sdk = target_dir(root).join("js-sdk");
    std::fs::create_dir_all(&sdk).with_context(|| format!("cannot create {}", sdk.display()))?;
    let lock_path = sdk.with_extension("lock");
    let lock = File::create(&lock_path).with_context(|| format!("cannot create {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("cannot lock {}", lock_path.display()))?;

    let source = root.join("tests/fixtures/javascript");
    let out = root.join("target/fixtures/javascript.wasm");
    let manifests = manifests(&source)?;
    let installed = is_installed(&sdk, &manifests);

    let mut inputs = source_files(&source)?;
    inputs.push(sdk.join(INSTALLED_STAMP));
    inputs.extend(std::env::current_exe().ok());
    if installed && is_newer_than_all(&out, &inputs)? {
        eprintln!("javascript fixture up to date: {}", out.display());
        return Ok(());
    }

    check_node()?;
    if !installed {
        npm_ci(&sdk, &source, &manifests)?;
    }
    componentize(&sdk, &source, &out)
}

/// The fixture's package.json and package-lock.json, one after the other: what the stamp holds.
fn manifests(source: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    for file in ["package.json", "package-lock.json"] {
        let path = source.join(file);
        bytes.extend(std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?);
    }
    Ok(bytes)
}

/// The install in `sdk` is the one `manifests` ask for, and its `j2w` is there.
fn is_installed(sdk: &Path, manifests: &[u8]) -> bool {
    std::fs::read(sdk.join(INSTALLED_STAMP)).is_ok_and(|stamp| stamp == manifests) && j2w(sdk).exists()
}

fn j2w(sdk: &Path) -> PathBuf {
    sdk.join("node_modules/@spinframework/build-tools/dist/index.js")
}

/// `node` (20 or later) and `npm` run.
fn check_node() -> Result<()> {
    let output = match Command::new("node").arg("--version").output() {
        Ok(output) => output,
        Err(error) => bail!("cannot run node ({error}): {INSTALL_HINT}"),
    };
    if !output.status.success() {
        bail!("`node --version` failed ({}): {INSTALL_HINT}", output.status);
    }
    let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let major = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|major| major.parse::<u32>().ok());
    match major {
        Some(major) if major >= NODE_MAJOR => {}
        _ => bail!("node is {version}: {INSTALL_HINT}"),
    }
    match Command::new("npm")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => bail!("`npm --version` failed ({status}): {INSTALL_HINT}"),
        Err(error) => bail!("cannot run npm ({error}): {INSTALL_HINT}"),
    }
}

/// Installs exactly the fixture's package-lock.json into `sdk/node_modules`.
fn npm_ci(sdk: &Path, source: &Path, manifests: &[u8]) -> Result<()> {
    let started = Instant::now();
    let stamp = sdk.join(INSTALLED_STAMP);
    let _ = std::fs::remove_file(&stamp);
    for file in ["package.json", "package-lock.json"] {
        std::fs::copy(source.join(file), sdk.join(file))
            .with_context(|| format!("cannot copy {}/{file} into {}", source.display(), sdk.display()))?;
    }
    let status = Command::new("npm")
        .current_dir(sdk)
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .status()
        .context("cannot run npm ci")?;
    if !status.success() {
        bail!(
            "`npm ci` in {} failed ({status}): it installs the packages of {}/package-lock.json and needs \
             the npm registry (https://registry.npmjs.org, or the one in npm's config); see npm's message above",
            sdk.display(),
            source.display()
        );
    }
    if !j2w(sdk).exists() {
        bail!("after npm ci, {} is missing", j2w(sdk).display());
    }
    std::fs::write(&stamp, manifests)?;
    eprintln!(
        "installed the JavaScript SDK ({}/package-lock.json) into {} in {:.1} s",
        source.display(),
        sdk.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The fixture's files, without what npm or j2w write when run in it by hand (node_modules,
/// j2w's precompiled-source.js and *.buildData.json) and hidden files.
fn source_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name == "node_modules"
                || name.starts_with('.')
                || name.starts_with("precompiled-source.js")
                || name.ends_with(".buildData.json")
            {
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

/// Runs j2w in a fresh copy of the sources under `sdk`; the output appears under its final name
/// only once complete. j2w reports a failure but exits with 0, so success is the output file.
fn componentize(sdk: &Path, source: &Path, out: &Path) -> Result<()> {
    let started = Instant::now();
    let staging = sdk.join("fixture");
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
    let _ = std::fs::remove_file(&partial);
    let output = Command::new("node")
        .current_dir(&staging)
        .arg(j2w(sdk))
        .args(["-i", "src/index.js", "-o"])
        .arg(&partial)
        .stdin(Stdio::null())
        .output()
        .context("cannot run node")?;
    let built = std::fs::metadata(&partial).is_ok_and(|meta| meta.len() > 0);
    if !output.status.success() || !built {
        let _ = std::fs::remove_file(&partial);
        bail!(
            "j2w ({}) did not build {} ({}):\n{}{}",
            j2w(sdk).display(),
            source.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    std::fs::rename(&partial, out).with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!(
        "javascript fixture built into {} in {:.1} s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
