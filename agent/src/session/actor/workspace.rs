//! The session's workspace, seen from its actor: opening its checkout,
//! the instructions a workspace session gets with its first prompt, the
//! changes counted at a turn's end, and diffs asked for by the control plane.

use std::path::PathBuf;

use oma_proto::pb;

use super::Actor;
use crate::session::checkout::{self, Checkout};
use crate::session::private_dir;

/// Most bytes of diff one DiffRequest gets.
const MAX_DIFF_BYTES: usize = 8 * 1024 * 1024;
/// Bytes of diff per DiffChunk frame.
const DIFF_CHUNK_BYTES: usize = 64 * 1024;

impl Actor {
    /// The child's cwd: the session's private folder, or for a session with
    /// a workspace its worktree or the folder itself (opened now, or the one
    /// an earlier start opened). `None` when it cannot be opened: the
    /// session has failed, saying why.
    pub(super) async fn open_checkout(&mut self) -> Option<PathBuf> {
        let Some(request) = self.start.workspace.clone() else {
            return Some(self.dir.clone());
        };
        let paths = self.manager.config.paths.clone();
        let session_id = self.start.session_id.clone();
        let existing = self.state.checkout.clone();
        let opened =
            tokio::task::spawn_blocking(move || checkout::open(&paths, &session_id, &request, existing.as_ref()))
                .await
                .unwrap_or_else(|e| {
                    Err(checkout::CheckoutError {
                        code: "start_failed",
                        message: format!("opening the workspace failed: {e}"),
                    })
                });
        let opened = match opened {
            Ok(opened) => opened,
            Err(e) => {
                self.fail(e.code, &e.message).await;
                return None;
            }
        };
        if opened.direct
            && let Err(holder) = self.manager.direct.acquire(&opened.workspace_id, self.id())
        {
            let message = format!(
                "workspace {:?} is in use by session {holder}: direct mode allows one live session per workspace",
                opened.workspace_id
            );
            self.fail("workspace_busy", &message).await;
            return None;
        }
        let cwd = opened.cwd.clone();
        if self.state.checkout.as_ref() != Some(&opened) {
            let message = describe(&opened);
            self.state.checkout = Some(opened);
            self.save_state();
            self.emit(pb::session_event::Kind::Log(pb::SessionLog { message }), "");
        }
        Some(cwd)
    }

    /// The session's instructions, when this ACP session has not had them
    /// yet (workspace sessions only: the others read AGENTS.md and their
    /// skills from their private folder).
    pub(super) fn instructions_due(&self) -> Option<String> {
        self.state.checkout.as_ref()?;
        let acp_session = self.state.acp_session_id.as_ref()?;
        if self.state.instructions_sent_to.as_ref() == Some(acp_session) {
            return None;
        }
        let text = private_dir::instructions(&self.start, &self.dir.join(private_dir::INLINE_SKILLS_DIR));
        (!text.trim().is_empty()).then_some(text)
    }

    /// The turn's changes in the workspace (or why they could not be
    /// counted), then its end.
    pub(super) fn end_turn_with(&mut self, counted: Option<Option<Result<pb::WorkspaceChanges, String>>>) {
        self.changes = None;
        let Some((turn_id, ended)) = self.pending_end.take() else {
            return;
        };
        match counted.flatten() {
            Some(Ok(changes)) => self.emit(pb::session_event::Kind::WorkspaceChanges(changes), &turn_id),
            Some(Err(e)) => {
                let message = format!("cannot count the session's changes: {e}");
                self.emit(pb::session_event::Kind::Log(pb::SessionLog { message }), &turn_id);
            }
            None => {}
        }
        self.finish_turn(&turn_id, ended);
    }

    /// Sends the session's diff against its base as DiffChunk frames, made
    /// off the runtime. Without a stream there is nobody to send it to (the
    /// control plane gives up on its own).
    pub(super) fn diff(&mut self, request: pb::DiffRequest) {
        let Some(conn) = self.conn.clone() else { return };
        let opened = self.state.checkout.clone();
        let index = self
            .dir
            .join(format!(".oma-diff-index-{}", uuid::Uuid::new_v4().simple()));
        let max = request.max_bytes.min(MAX_DIFF_BYTES as u64) as usize;
        let request_id = request.request_id;
        tokio::spawn(async move {
            let made = tokio::task::spawn_blocking(move || {
                let opened = opened.ok_or("the session has no workspace")?;
                let base = opened
                    .base_commit
                    .as_deref()
                    .ok_or("the session's workspace is not a git repository")?;
                crate::git::diff(&opened.cwd, base, &index, max).map_err(|e| e.to_string().into())
            })
            .await
            .unwrap_or_else(|e| Err(std::borrow::Cow::Owned(e.to_string())));
            let chunk = |data: Vec<u8>, last: bool, truncated: bool, error: String| pb::AgentFrame {
                frame: Some(pb::agent_frame::Frame::DiffChunk(pb::DiffChunk {
                    request_id: request_id.clone(),
                    data,
                    last,
                    truncated,
                    error,
                })),
            };
            match made {
                Err(error) => {
                    let _ = conn.send(chunk(Vec::new(), true, false, error.into_owned())).await;
                }
                Ok((data, truncated)) => {
                    let pieces: Vec<&[u8]> = match data.is_empty() {
                        true => vec![&[][..]],
                        false => data.chunks(DIFF_CHUNK_BYTES).collect(),
                    };
                    let count = pieces.len();
                    for (i, piece) in pieces.into_iter().enumerate() {
                        let last = i + 1 == count;
                        if conn
                            .send(chunk(piece.to_vec(), last, last && truncated, String::new()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
    }
}

/// What the session log says when a session starts working somewhere.
fn describe(opened: &Checkout) -> String {
    match (&opened.branch, &opened.base_commit, opened.direct) {
        (Some(branch), Some(base), false) => format!(
            "working in a new worktree of workspace {:?} on branch {branch}, from commit {}",
            opened.workspace_id,
            &base[..base.len().min(12)]
        ),
        _ => format!("working directly in workspace {:?}", opened.workspace_id),
    }
}
