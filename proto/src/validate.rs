//! Input validation shared by the control plane (which enforces it) and the
//! clients (which can check early). Every failure names the field and says
//! what to fix.

use std::fmt;

/// A field of a request that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// The field path, e.g. `spec.runtime_binding.runtime_id`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl fmt::Display) -> Self {
        Self {
            field: field.into(),
            message: message.to_string(),
        }
    }

    /// Prefixes the field path with `parent.`.
    pub fn within(mut self, parent: &str) -> Self {
        self.field = format!("{parent}.{}", self.field);
        self
    }
}

pub type Validated<T> = Result<T, ValidationError>;

/// Longest slug (names of users, agents, skills, prompts).
pub const MAX_SLUG_CHARS: usize = 64;

/// A slug: 1–64 characters of `[a-z0-9._-]`, starting with a letter or digit.
pub fn slug(field: &str, value: &str) -> Validated<String> {
    if value.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if value.chars().count() > MAX_SLUG_CHARS {
        return Err(ValidationError::new(
            field,
            format!(
                "must be at most {MAX_SLUG_CHARS} characters, got {}",
                value.chars().count()
            ),
        ));
    }
    let first_ok = value
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let all_ok = value
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if !first_ok || !all_ok {
        return Err(ValidationError::new(
            field,
            format!(
                "{value:?} is not a valid name: use lowercase letters, digits, '.', '_' and '-', starting with a letter or digit"
            ),
        ));
    }
    Ok(value.to_owned())
}

/// Free text of at most `max_chars` characters with no control characters
/// other than newline and tab. May be empty unless `required`.
pub fn text(field: &str, value: &str, max_chars: usize, required: bool) -> Validated<String> {
    if required && value.trim().is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    let count = value.chars().count();
    if count > max_chars {
        return Err(ValidationError::new(
            field,
            format!("must be at most {max_chars} characters, got {count}"),
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
    {
        return Err(ValidationError::new(
            field,
            format!("must not contain control character U+{:04X}", c as u32),
        ));
    }
    Ok(value.to_owned())
}

/// A single-line label: like [`text`] but without line breaks.
pub fn label(field: &str, value: &str, max_chars: usize, required: bool) -> Validated<String> {
    let value = text(field, value, max_chars, required)?;
    if value.contains(['\n', '\r', '\t']) {
        return Err(ValidationError::new(field, "must be a single line"));
    }
    Ok(value)
}

/// A byte-size limit on a large field.
pub fn max_bytes(field: &str, len: usize, max: usize) -> Validated<()> {
    if len > max {
        return Err(ValidationError::new(
            field,
            format!("is {len} bytes, more than the limit of {max} bytes"),
        ));
    }
    Ok(())
}

/// A relative path inside a skill folder: `/`-separated, no `..`, no empty,
/// `.`-only or hidden-traversal segments, no leading `/`, no backslashes.
pub fn relative_path(field: &str, value: &str) -> Validated<String> {
    if value.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if value.len() > 512 {
        return Err(ValidationError::new(field, "must be at most 512 bytes"));
    }
    if value.starts_with('/') || value.contains('\\') || value.contains('\0') {
        return Err(ValidationError::new(
            field,
            format!("{value:?} must be a relative '/'-separated path"),
        ));
    }
    for segment in value.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(ValidationError::new(
                field,
                format!("{value:?} must not contain empty, '.' or '..' segments"),
            ));
        }
    }
    Ok(value.to_owned())
}

/// Page size: 0 means the default; more than [`MAX_PAGE_SIZE`] is refused.
pub fn page_size(value: u32) -> Validated<usize> {
    match value {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n as usize > MAX_PAGE_SIZE => Err(ValidationError::new(
            "page.page_size",
            format!("must be at most {MAX_PAGE_SIZE}, got {n}"),
        )),
        n => Ok(n as usize),
    }
}

pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert!(slug("name", "reviewer-1.a_b").is_ok());
        assert!(slug("name", "").is_err());
        assert!(slug("name", "-x").is_err());
        assert!(slug("name", "Upper").is_err());
        assert!(slug("name", "a/b").is_err());
        assert!(slug("name", &"a".repeat(65)).is_err());
        assert!(slug("name", &"a".repeat(64)).is_ok());
    }

    #[test]
    fn texts() {
        assert!(text("t", "line\nline", 20, false).is_ok());
        assert!(text("t", "bell\u{7}", 20, false).is_err());
        assert!(text("t", " ", 20, true).is_err());
        assert!(label("t", "a\nb", 20, false).is_err());
    }

    #[test]
    fn paths() {
        assert!(relative_path("p", "SKILL.md").is_ok());
        assert!(relative_path("p", "scripts/run.sh").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a/../b", "a//b", "./a", "a\\b"] {
            assert!(relative_path("p", bad).is_err(), "{bad}");
        }
    }
}
