//! `{{ name }}` templates over application variables, as Spin writes them in component
//! variables and in `allowed_outbound_hosts`.

/// Expands every `{{ name }}` of `template` with `lookup(name)`.
pub fn render(template: &str, mut lookup: impl FnMut(&str) -> Result<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(format!("the template \"{template}\" has a `{{{{` without its `}}}}`"));
        };
        out.push_str(&lookup(after[..end].trim())?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The variable names `template` refers to, in order.
pub fn names(template: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    render(template, |name| {
        names.push(name.to_string());
        Ok(String::new())
    })?;
    Ok(names)
}

pub fn is_template(text: &str) -> bool {
    text.contains("{{")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_names() {
        let rendered = render("https://{{ a }}.x/{{b}}", |name| Ok(name.to_uppercase())).unwrap();
        assert_eq!(rendered, "https://A.x/B");
        assert_eq!(names("{{ a }}:{{ b }}").unwrap(), ["a", "b"]);
        assert!(!is_template("https://x") && is_template("{{ a }}"));
    }

    #[test]
    fn unterminated_template() {
        let err = render("a {{ b", |_| Ok(String::new())).unwrap_err();
        assert!(err.contains("without its"), "{err}");
    }
}
