use std::path::Path;

use anyhow::Result;

/// Replaces (or appends) the section starting with `heading` in bench/README.md.
pub(super) fn write_section(root: &Path, heading: &str, section: &str) -> Result<()> {
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
