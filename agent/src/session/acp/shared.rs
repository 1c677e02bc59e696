//! What the session handle, the supervisor, turn tasks and the connection's
//! handlers share: the session's state behind one lock, and the ordered
//! outputs (with the turn's end, which only one of them may emit).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use agent_client_protocol::RawJsonRpcId;
use oma_proto::pb;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::permissions::PendingPermission;
use super::supervisor::KillRequest;
use super::{AcpLaunch, AcpOutput};
use crate::process;

/// State shared by the session handle, the supervisor, turn tasks and the
/// connection's handlers.
pub(super) struct Shared {
    state: Mutex<State>,
    /// Held while a TurnEnded or Exited is emitted, so that Exited is last.
    pub(super) emit_lock: tokio::sync::Mutex<()>,
    outputs: mpsc::Sender<AcpOutput>,
    /// Cancelled by shutdown or drop of the session.
    pub(super) stop: CancellationToken,
    pub(super) kills: mpsc::UnboundedSender<KillRequest>,
    /// The session directory, canonical.
    pub(super) cwd: PathBuf,
    pub(super) advertise_read: bool,
    pub(super) advertise_write: bool,
    pub(super) stderr: process::StderrLog,
}

pub(super) struct State {
    pub(super) turn: Option<TurnState>,
    /// The child is gone or going; no new turn may start.
    pub(super) gone: bool,
    /// start() succeeded: Exited is reported from now on.
    pub(super) started: bool,
    /// Why the child is gone, once it is.
    pub(super) exit_description: Option<String>,
    pub(super) last_activity: Instant,
    pub(super) perms: HashMap<String, PendingPermission>,
    pub(super) perm_by_rpc_id: HashMap<RawJsonRpcId, String>,
    pub(super) next_perm: u64,
    pub(super) shutdown_grace: Option<Duration>,
    pub(super) connection: Option<JoinHandle<()>>,
}

pub(super) struct TurnState {
    pub(super) turn_id: String,
    pub(super) cancel_requested: bool,
}

pub(super) struct TurnEnd {
    pub(super) stop_reason: pb::StopReason,
    pub(super) error: Option<(String, String)>,
    pub(super) usage_json: Option<String>,
}

impl TurnEnd {
    pub(super) fn error(code: &str, message: impl Into<String>) -> Self {
        Self {
            stop_reason: pb::StopReason::Error,
            error: Some((code.to_owned(), message.into())),
            usage_json: None,
        }
    }
}

impl Shared {
    /// The state of a child just spawned: no turn yet, not started.
    pub(super) fn new(
        launch: &AcpLaunch,
        cwd: PathBuf,
        outputs: mpsc::Sender<AcpOutput>,
        kills: mpsc::UnboundedSender<KillRequest>,
        stderr: process::StderrLog,
    ) -> Self {
        Shared {
            state: Mutex::new(State {
                turn: None,
                gone: false,
                started: false,
                exit_description: None,
                last_activity: Instant::now(),
                perms: HashMap::new(),
                perm_by_rpc_id: HashMap::new(),
                next_perm: 0,
                shutdown_grace: None,
                connection: None,
            }),
            emit_lock: tokio::sync::Mutex::new(()),
            outputs,
            stop: CancellationToken::new(),
            kills,
            cwd,
            advertise_read: launch.advertise_read_text_file,
            advertise_write: launch.advertise_write_text_file,
            stderr,
        }
    }

    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn touch(&self) {
        self.state().last_activity = Instant::now();
    }

    pub(super) fn is_gone(&self) -> bool {
        self.state().gone
    }

    /// Emits one output; gives up when the session is being stopped and the
    /// receiver does not take it at once.
    pub(super) async fn emit(&self, output: AcpOutput) {
        if self.stop.is_cancelled() {
            let _ = self.outputs.try_send(output);
            return;
        }
        tokio::select! {
            biased;
            _ = self.outputs.send(output) => {}
            () = self.stop.cancelled() => {}
        }
    }

    /// Ends the running turn (only `turn_id`, when given) and emits
    /// TurnEnded; false when no such turn runs.
    pub(super) async fn end_turn(&self, turn_id: Option<&str>, end: TurnEnd) -> bool {
        let _emitting = self.emit_lock.lock().await;
        self.end_turn_locked(turn_id, end).await
    }

    /// [`Self::end_turn`] with the emit lock already held.
    pub(super) async fn end_turn_locked(&self, turn_id: Option<&str>, end: TurnEnd) -> bool {
        let running = match &self.state().turn {
            Some(turn) if turn_id.is_none_or(|id| id == turn.turn_id) => turn.turn_id.clone(),
            _ => return false,
        };
        self.emit(AcpOutput::TurnEnded {
            turn_id: running,
            stop_reason: end.stop_reason,
            error: end.error,
            usage_json: end.usage_json,
        })
        .await;
        self.state().turn = None;
        // The agent cannot wait for an answer after its turn ended.
        self.cancel_permissions();
        true
    }
}
