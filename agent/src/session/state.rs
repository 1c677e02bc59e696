//! The session state file: what a session must remember across a daemon
//! restart (its start, the turns it ran, its child), beside its outbox.

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use oma_proto::pb;
use prost::Message as _;
use serde::{Deserialize, Serialize};

use crate::fsutil::{Durability, PRIVATE_FILE_MODE, write_atomic};
use crate::paths::Paths;

/// A state file is named `<session id>` and this, in the outbox directory.
const SUFFIX: &str = ".state.json";

/// Persisted per session, beside its outbox.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct SessionState {
    /// The encoded StartSession frame (base64), to restart the child after a
    /// crash or a daemon restart; without its credentials, which are kept
    /// in memory only (never on disk).
    start: String,
    /// The names of the credentials the start carried (never the values):
    /// after a daemon restart the session says they are gone.
    #[serde(default)]
    pub(super) credential_names: Vec<String>,
    pub(super) acp_session_id: Option<String>,
    pub(super) seen_turns: Vec<String>,
    pub(super) running_turn: Option<String>,
    /// The "ignores the blocklist" note was logged (once per session).
    #[serde(default)]
    pub(super) blocklist_noted: bool,
    /// The running child's process group and command, so a daemon killed
    /// with SIGKILL can reap the group it left behind on its next start.
    #[serde(default)]
    pub(super) child: Option<ChildRecord>,
    /// Counts child starts. A child numbers its permission requests from 1
    /// again, so the session-wide request id is `g<generation>.<child id>`
    /// (a restarted child must never reuse an id already decided).
    #[serde(default)]
    pub(super) generation: u32,
    /// Where the session works when it has a workspace (its worktree or the
    /// folder), once opened.
    #[serde(default)]
    pub(super) checkout: Option<super::checkout::Checkout>,
    /// The ACP session that has been given the session's instructions
    /// (workspace sessions get them with their first prompt, so nothing of
    /// the product's is written into the workspace).
    #[serde(default)]
    pub(super) instructions_sent_to: Option<String>,
    /// The mode and model the session should be in (from its start, then
    /// every switch asked since), applied again to every new child.
    #[serde(default)]
    pub(super) wanted_mode: Option<String>,
    #[serde(default)]
    pub(super) wanted_model: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ChildRecord {
    pub(super) pgid: i32,
    pub(super) command: PathBuf,
}

impl SessionState {
    /// A new session's state: its start (without credentials) and nothing
    /// else yet.
    pub(super) fn new(start: &pb::StartSession) -> SessionState {
        let mut kept = start.clone();
        let mut credential_names: Vec<String> = std::mem::take(&mut kept.credentials).into_keys().collect();
        credential_names.sort();
        SessionState {
            start: B64.encode(kept.encode_to_vec()),
            credential_names,
            ..Default::default()
        }
    }

    /// The StartSession frame the session was created with (`None` if it
    /// does not decode).
    pub(super) fn start_session(&self) -> Option<pb::StartSession> {
        B64.decode(&self.start)
            .ok()
            .and_then(|b| pb::StartSession::decode(b.as_slice()).ok())
    }

    /// Writes the state file of `session_id`.
    pub(super) fn save(&self, paths: &Paths, session_id: &str) -> std::io::Result<()> {
        let path = state_path(paths, session_id);
        serde_json::to_vec(self)
            .map_err(std::io::Error::other)
            .and_then(|bytes| write_atomic(&path, &bytes, PRIVATE_FILE_MODE, Durability::Cached))
    }
}

pub(super) fn state_path(paths: &Paths, session_id: &str) -> PathBuf {
    paths.outbox_dir().join(format!("{session_id}{SUFFIX}"))
}

/// The state files a previous run left, with their session ids. A file
/// whose name is not a session id is skipped; one that cannot be read is
/// logged and skipped.
pub(super) fn saved(paths: &Paths) -> impl Iterator<Item = (String, SessionState)> {
    let entries = std::fs::read_dir(paths.outbox_dir()).into_iter().flatten().flatten();
    entries.filter_map(|entry| {
        let name = entry.file_name().to_string_lossy().into_owned();
        let session_id = name.strip_suffix(SUFFIX)?;
        if crate::paths::validate_session_id(session_id).is_err() {
            return None;
        }
        let Some(state) = std::fs::read(entry.path())
            .ok()
            .and_then(|b| serde_json::from_slice::<SessionState>(&b).ok())
        else {
            tracing::warn!(session_id, "unreadable session state; ignoring it");
            return None;
        };
        Some((session_id.to_owned(), state))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_never_written_only_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path().join("config"), dir.path().join("data"));
        std::fs::create_dir_all(paths.outbox_dir()).unwrap();
        let session_id = "ses_0123456789abcdef0123456789abcdef";
        let start = pb::StartSession {
            session_id: session_id.into(),
            agents_md: "instructions".into(),
            credentials: [("ANTHROPIC_API_KEY".to_owned(), "sk-ant-secret-value".to_owned())].into(),
            ..Default::default()
        };
        let state = SessionState::new(&start);
        state.save(&paths, session_id).unwrap();
        let bytes = std::fs::read(state_path(&paths, session_id)).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("ANTHROPIC_API_KEY"), "{text}");
        let (_, saved) = saved(&paths).next().unwrap();
        let restored = saved.start_session().unwrap();
        assert!(restored.credentials.is_empty());
        assert_eq!(restored.agents_md, "instructions");
        assert_eq!(saved.credential_names, ["ANTHROPIC_API_KEY"]);
        // Nor in any encoding of it (the start is stored as base64).
        for form in oma_proto::masking::encodings("sk-ant-secret-value") {
            assert!(!text.contains(&form), "{form} in {text}");
        }
    }
}
