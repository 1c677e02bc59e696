//! What the running daemon tells `oma-agent status` (`<data dir>/state.json`,
//! owner only): its pid, the connection, the last connection error with its
//! time, and the outbox backlog. The daemon rewrites it when the connection
//! changes and when the backlog changes (checked every second), and removes
//! it when it stops.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::fsutil;

/// The daemon's state as last written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonState {
    pub pid: u32,
    pub connected: bool,
    /// One line, e.g. `connected (epoch 3)` or `disconnected: …`.
    pub status: String,
    /// When `status` last changed (Unix seconds).
    pub since_unix: u64,
    /// The last connection or stream error since the daemon started (kept
    /// after it reconnects).
    #[serde(default)]
    pub last_error: Option<LastError>,
    /// Events stored in the outbox and not yet acknowledged by the control
    /// plane, by session id (sessions with none included).
    #[serde(default)]
    pub backlog: BTreeMap<String, u64>,
}

/// An error the daemon met, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    pub message: String,
    /// Unix seconds.
    pub at_unix: u64,
}

impl DaemonState {
    /// Events not yet acknowledged, over all sessions.
    pub fn backlog_total(&self) -> u64 {
        self.backlog.values().sum()
    }
}

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Replaces the file at `path` with `state` (atomically: a reader sees the
/// old state or the new one).
pub fn write(path: &Path, state: &DaemonState) -> io::Result<()> {
    let bytes = serde_json::to_vec(state).map_err(io::Error::other)?;
    fsutil::write_atomic(path, &bytes, fsutil::PRIVATE_FILE_MODE, fsutil::Durability::Cached)
}

/// The state at `path`; `None` when there is none or it does not parse.
pub fn read(path: &Path) -> Option<DaemonState> {
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_reads_back_and_an_older_file_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(read(&path), None);
        let state = DaemonState {
            pid: 7,
            connected: false,
            status: "disconnected: cannot connect".into(),
            since_unix: 100,
            last_error: Some(LastError {
                message: "cannot connect".into(),
                at_unix: 99,
            }),
            backlog: BTreeMap::from([("ses_a".into(), 3), ("ses_b".into(), 0), ("ses_c".into(), 4)]),
        };
        write(&path, &state).unwrap();
        assert_eq!(read(&path).as_ref(), Some(&state));
        assert_eq!(state.backlog_total(), 7);
        // What a daemon of the previous version wrote.
        std::fs::write(
            &path,
            r#"{"pid":7,"connected":true,"status":"connected (epoch 1)","since_unix":5}"#,
        )
        .unwrap();
        let old = read(&path).unwrap();
        assert_eq!((old.backlog_total(), old.last_error), (0, None));
        std::fs::write(&path, "{").unwrap();
        assert_eq!(read(&path), None);
    }
}
