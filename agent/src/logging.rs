//! The daemon's log: filtered by `OMA_LOG`, written as text for people or
//! as JSON lines with the span fields for a log collector (the control
//! plane's `--log-format`, the same words), to stderr or to a file rotated
//! by size.
//!
//! Why a file of its own: launchd never rotates the files a job's
//! `StandardOutPath`/`StandardErrorPath` name, so a daemon that logs to
//! stderr there fills the disk over months. systemd's journald rotates, so
//! the systemd unit keeps stderr.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::Mutex;

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use tracing_subscriber::fmt::writer::BoxMakeWriter;

use crate::fsutil::PRIVATE_FILE_MODE;

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// For people.
    #[default]
    Text,
    /// One JSON object a line, with the current span's fields.
    Json,
}

/// A log file is rotated once it passes this size...
pub const LOG_FILE_BYTES: usize = 10 * 1024 * 1024;
/// ...and this many rotated files (`<file>.1` newest) are kept beside it.
pub const ROTATED_FILES_KEPT: usize = 4;

/// The default filter when `OMA_LOG` is unset.
const DEFAULT_FILTER: &str = "info,h2=warn,tower=warn";

/// An appending writer to `path` (created owner-only, with its folder) that
/// moves the file to `<path>.1` (and older ones one number up, dropping the
/// oldest beyond `keep`) once it has passed `max_bytes`. Lines stay whole: a
/// file is cut only between writes, and each log line is one write.
pub fn rotating_file(path: &Path, max_bytes: usize, keep: usize) -> io::Result<FileRotate<AppendCount>> {
    let path = std::path::absolute(path)?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", parent.display())))?;
    }
    let mut options = OpenOptions::new();
    options.read(true).create(true).append(true).mode(PRIVATE_FILE_MODE);
    // The crate drops writes silently when it cannot open the file: open
    // it once here to say why instead.
    options
        .open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open the log file {}: {e}", path.display())))?;
    Ok(FileRotate::new(
        &path,
        AppendCount::new(keep),
        ContentLimit::BytesSurpassed(max_bytes.max(1)),
        Compression::None,
        Some(options),
    ))
}

/// Installs the process's logger: `format` to `file` (rotated at
/// [`LOG_FILE_BYTES`], [`ROTATED_FILES_KEPT`] old files kept) or to stderr.
pub fn init(format: LogFormat, file: Option<&Path>) -> io::Result<()> {
    use tracing_subscriber::util::SubscriberInitExt as _;
    let subscriber = match file {
        Some(path) => {
            let file = rotating_file(path, LOG_FILE_BYTES, ROTATED_FILES_KEPT)?;
            subscriber(format, BoxMakeWriter::new(Mutex::new(file)), false)
        }
        None => subscriber(
            format,
            BoxMakeWriter::new(io::stderr),
            std::io::IsTerminal::is_terminal(&io::stderr()),
        ),
    };
    subscriber.init();
    Ok(())
}

/// The logger: `OMA_LOG`'s filter (or [`DEFAULT_FILTER`]), `format`, to
/// `writer`, with colours when `ansi`.
pub fn subscriber(format: LogFormat, writer: BoxMakeWriter, ansi: bool) -> Box<dyn tracing::Subscriber + Send + Sync> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OMA_LOG").unwrap_or_else(|_| DEFAULT_FILTER.into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
        LogFormat::Json => Box::new(builder.json().with_current_span(true).with_span_list(false).finish()),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn the_file_is_rotated_by_size_and_old_ones_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/oma-agent.log");
        let mut log = rotating_file(&path, 1000, 2).unwrap();
        let line = |i: usize| format!("{i:04} {}\n", "x".repeat(94));
        for i in 0..50 {
            log.write_all(line(i).as_bytes()).unwrap();
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        let current = read(&path);
        let first = read(&dir.path().join("logs/oma-agent.log.1"));
        let second = read(&dir.path().join("logs/oma-agent.log.2"));
        assert!(
            !dir.path().join("logs/oma-agent.log.3").exists(),
            "only two old files are kept"
        );
        for text in [&current, &first, &second] {
            // A file is cut once past the limit: at most one line beyond it.
            assert!(text.len() <= 1100, "{}", text.len());
            assert!(text.lines().all(|l| l.len() == 99), "lines stay whole");
        }
        // Newest last: .2, then .1, then the current file, with no gap.
        let all: Vec<String> = [second, first, current].concat().lines().map(str::to_owned).collect();
        assert!(all.last().unwrap().starts_with("0049 "));
        let first_kept: usize = all[0][..4].parse().unwrap();
        let expected: Vec<String> = (first_kept..50).map(|i| line(i).trim_end().to_owned()).collect();
        assert_eq!(all, expected);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_log_file_that_cannot_be_opened_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = rotating_file(dir.path(), 1000, 2).err().unwrap().to_string();
        assert!(err.starts_with("cannot open the log file"), "{err}");
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "").unwrap();
        let err = rotating_file(&blocker.join("x.log"), 1000, 2)
            .err()
            .unwrap()
            .to_string();
        assert!(err.starts_with("cannot create"), "{err}");
    }

    #[test]
    fn json_lines_carry_the_span_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oma-agent.log");
        let file = rotating_file(&path, LOG_FILE_BYTES, 1).unwrap();
        let subscriber = subscriber(LogFormat::Json, BoxMakeWriter::new(Mutex::new(file)), false);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("session", session_id = "ses_1");
            let _entered = span.enter();
            tracing::warn!(code = 7, "disconnected");
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["level"], "WARN", "{line}");
        assert_eq!(line["fields"]["message"], "disconnected", "{line}");
        assert_eq!(line["fields"]["code"], 7, "{line}");
        assert_eq!(line["span"]["session_id"], "ses_1", "{line}");
    }
}
