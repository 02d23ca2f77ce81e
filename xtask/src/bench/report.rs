//! What the benchmarks print and write to bench/README.md: the table cells of a measurement,
//! and replacing a benchmark's section of the README while keeping the others'.

use std::path::Path;

use anyhow::Result;

use super::load::Stats;

/// `us` microseconds in milliseconds with `decimals` places: `1.234 ms`.
pub(super) fn ms(us: u64, decimals: usize) -> String {
    format!("{:.*} ms", decimals, us as f64 / 1000.0)
}

/// The table cells `requests/s | p50 | p99` of one measurement.
pub(super) fn rate_cells(stats: &Stats, decimals: usize) -> String {
    format!(
        "{:.0} | {} | {}",
        stats.rps,
        ms(stats.p50_us, decimals),
        ms(stats.p99_us, decimals)
    )
}

/// The same figures on a progress line, aligned from one line to the next.
pub(super) fn rate_progress(stats: &Stats) -> String {
    format!(
        "{:>9.0} req/s  p50 {:>6} us  p99 {:>6} us",
        stats.rps, stats.p50_us, stats.p99_us
    )
}

/// The cores of this machine, which the load generator shares with the servers.
pub(super) fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
}

/// The size of `file` in KB (0 if it cannot be read: the figure is only for the text).
pub(super) fn size_kb(file: &Path) -> u64 {
    std::fs::metadata(file).map(|m| m.len() / 1024).unwrap_or(0)
}

/// Where the section starting with `heading` starts in `readme`, and where the section after
/// it starts (if there is one).
fn find_section(readme: &str, heading: &str) -> Option<(usize, Option<usize>)> {
    let start = readme.find(heading)?;
    let after = start + heading.len();
    Some((start, readme[after..].find("\n## ").map(|i| after + i + 1)))
}

/// `readme` with the section starting with `heading` replaced by `section` (or `section`
/// appended).
fn replace_section(readme: &str, heading: &str, section: &str) -> String {
    let updated = match find_section(readme, heading) {
        Some((start, next)) => {
            let end = next.unwrap_or(readme.len());
            format!("{}{section}\n{}", &readme[..start], &readme[end..])
        }
        None => format!("{}\n\n{section}", readme.trim_end()),
    };
    updated.trim_end().to_string() + "\n"
}

/// `readme` with everything up to the end of the section starting with `last_heading`
/// replaced by `head`: the sections after it (other benchmarks') stay.
fn replace_head(readme: &str, last_heading: &str, head: &str) -> String {
    let others = find_section(readme, last_heading)
        .and_then(|(_, next)| next)
        .map(|next| &readme[next..])
        .unwrap_or("");
    format!("{head}\n{others}")
}

fn readme(root: &Path) -> Result<(std::path::PathBuf, String)> {
    std::fs::create_dir_all(root.join("bench"))?;
    let path = root.join("bench/README.md");
    let existing = std::fs::read_to_string(&path).unwrap_or_default();
    Ok((path, existing))
}

/// Replaces (or appends) the section starting with `heading` in bench/README.md, and prints it.
pub(super) fn write_section(root: &Path, heading: &str, section: &str) -> Result<()> {
    let (path, existing) = readme(root)?;
    std::fs::write(&path, replace_section(&existing, heading, section))?;
    println!("{section}");
    Ok(())
}

/// Writes `head` (the title and the HTTP benchmark's sections, ending with the one starting
/// with `last_heading`) at the top of bench/README.md, keeping the other benchmarks' sections,
/// and prints it.
pub(super) fn write_head(root: &Path, last_heading: &str, head: &str) -> Result<()> {
    let (path, existing) = readme(root)?;
    std::fs::write(&path, replace_head(&existing, last_heading, head))?;
    println!("{head}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const README: &str = "# Benchmarks\n\nintro\n\n## HTTP\n\nold http\n\n## Swap latency\n\nold swap\n\
                          ## Key-value\n\nold kv\n\n## SQL\n\nold sql\n";

    #[test]
    fn a_section_is_replaced_in_place_and_the_others_stay() {
        assert_eq!(
            replace_section(README, "## Key-value", "## Key-value\n\nnew kv\n"),
            "# Benchmarks\n\nintro\n\n## HTTP\n\nold http\n\n## Swap latency\n\nold swap\n\
             ## Key-value\n\nnew kv\n\n## SQL\n\nold sql\n"
        );
        assert_eq!(
            replace_section(README, "## SQL", "## SQL\n\nnew sql\n"),
            "# Benchmarks\n\nintro\n\n## HTTP\n\nold http\n\n## Swap latency\n\nold swap\n\
             ## Key-value\n\nold kv\n\n## SQL\n\nnew sql\n"
        );
    }

    #[test]
    fn a_new_section_is_appended_after_one_blank_line() {
        assert_eq!(
            replace_section("# Benchmarks\n\nintro\n\n\n", "## Cluster", "## Cluster\n\nrows\n"),
            "# Benchmarks\n\nintro\n\n## Cluster\n\nrows\n"
        );
        // As before the split: with no README yet (`cargo xtask bench http` writes its head),
        // the section still comes after a blank line.
        assert_eq!(replace_section("", "## Cluster", "## Cluster\n"), "\n\n## Cluster\n");
    }

    #[test]
    fn the_head_replaces_everything_up_to_the_next_benchmarks_section() {
        assert_eq!(
            replace_head(
                README,
                "## Swap latency",
                "# Benchmarks\n\nnew head\n## Swap latency\n\nnew swap\n"
            ),
            "# Benchmarks\n\nnew head\n## Swap latency\n\nnew swap\n\n## Key-value\n\nold kv\n\n## SQL\n\nold sql\n"
        );
        assert_eq!(
            replace_head("", "## Swap latency", "# Benchmarks\n"),
            "# Benchmarks\n\n"
        );
    }

    #[test]
    fn cells_and_progress_keep_their_widths_and_places() {
        let stats = Stats {
            requests: 10,
            errors: 0,
            first_error: None,
            rps: 12783.4,
            p50_us: 2345,
            p99_us: 10001,
        };
        assert_eq!(rate_cells(&stats, 3), "12783 | 2.345 ms | 10.001 ms");
        assert_eq!(rate_cells(&stats, 2), "12783 | 2.35 ms | 10.00 ms");
        assert_eq!(rate_progress(&stats), "    12783 req/s  p50   2345 us  p99  10001 us");
    }
}
