//! The owner's local TOML files (`agents.toml`, `policy.toml`,
//! `workspaces.toml`): read when present, and every failure to read or
//! parse one said the same way, `file:line:column: why`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A local config file that cannot be read, or whose content is wrong at a
/// place in it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file exists but cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Not valid TOML, unknown keys or wrong types (or, for files with no
    /// error of their own, a value that is not usable).
    #[error("{}{}: {message}", path.display(), location(*line, *column))]
    Parse {
        /// The config file.
        path: PathBuf,
        /// 1-based line of the problem, when known.
        line: Option<usize>,
        /// 1-based column of the problem, when known.
        column: Option<usize>,
        /// What is wrong.
        message: String,
    },
}

impl ConfigFileError {
    /// A problem at byte `offset` of the file's `text`.
    pub fn at(path: &Path, text: &str, offset: usize, message: String) -> ConfigFileError {
        let (line, column) = crate::detect::line_column(text, offset);
        ConfigFileError::Parse {
            path: path.to_path_buf(),
            line: Some(line),
            column: Some(column),
            message,
        }
    }
}

/// The file's text, or `None` when it does not exist (every one of these
/// files is optional).
pub fn read_optional(path: &Path) -> Result<Option<String>, ConfigFileError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConfigFileError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// `text` (the content of `path`) as TOML, its error placed at
/// `line:column`.
pub fn parse_toml<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigFileError> {
    toml::from_str(text).map_err(|err| {
        let (line, column) = match err.span() {
            Some(span) => {
                let (line, column) = crate::detect::line_column(text, span.start);
                (Some(line), Some(column))
            }
            None => (None, None),
        };
        ConfigFileError::Parse {
            path: path.to_path_buf(),
            line,
            column,
            message: err.message().trim().to_owned(),
        }
    })
}

/// `:line:column`, `:line` or nothing.
fn location(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(line), Some(column)) => format!(":{line}:{column}"),
        (Some(line), None) => format!(":{line}"),
        _ => String::new(),
    }
}
