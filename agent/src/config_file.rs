//! The owner's local TOML files (`agents.toml`, `policy.toml`,
//! `workspaces.toml`): read when present, parse errors placed at
//! `line:column` so each file's error can say `file:line:column: why`.

use std::fs;
use std::io;
use std::path::Path;

/// The file's text, or `None` when it does not exist (every one of these
/// files is optional).
pub fn read_optional(path: &Path) -> io::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Where in `text` a TOML error is (1-based line and column), when it says.
pub fn error_location(text: &str, err: &toml::de::Error) -> (Option<usize>, Option<usize>) {
    match err.span() {
        Some(span) => {
            let (line, column) = crate::detect::line_column(text, span.start);
            (Some(line), Some(column))
        }
        None => (None, None),
    }
}
