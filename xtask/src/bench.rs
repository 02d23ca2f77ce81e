//! `cargo xtask bench http`.

use std::path::Path;

use anyhow::{bail, Result};

pub fn run(_root: &Path, args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some(other) => bail!("no benchmark named `{other}`"),
        None => bail!("name a benchmark: cargo xtask bench http"),
    }
}
