//! The session manager: routes the control plane's frames to one actor task
//! per session (`actor.rs`), which owns that session's ACP child, its
//! outbox and its state file.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oma_proto::pb;
use tokio::sync::{mpsc, oneshot};

use super::actor::{Actor, now};
use super::checkout::DirectLocks;
use super::orphans::reap_orphan;
use super::state::{self, SessionState};
use crate::detect::DetectReport;
use crate::paths::Paths;

/// What the manager needs to run sessions.
pub struct ManagerConfig {
    pub paths: Paths,
    /// The agent table at start (rescans replace it: [`Manager::set_agents`]).
    pub agents: DetectReport,
    /// The user's Claude config (skills source); `None` when there is no home.
    pub skill_source: Option<crate::skills::SkillSource>,
    pub idle_timeout: Duration,
    pub startup_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Sessions held at once; a start beyond it is refused (one ACP child
    /// per session: a flood of starts must not become a flood of processes).
    pub max_sessions: usize,
}

pub(super) type Sender = mpsc::Sender<pb::AgentFrame>;

pub(super) enum Command {
    /// A (new) stream: the sender, and the last seq the server has stored
    /// (`None` for a session it has just started).
    Connected(Option<Sender>, Option<u64>),
    Prompt(pb::Prompt),
    Cancel,
    Answer(pb::PermissionAnswer),
    /// Apply the recorded ack (see [`Handle::acked`]).
    Ack,
    Describe(oneshot::Sender<u64>),
    /// Dispose of the session; `true`: delete a worktree session's branch too.
    Dispose(bool),
    /// Send the session's diff against its base as DiffChunk frames.
    Diff(pb::DiffRequest),
    /// Switch the session's mode and/or model (empty: unchanged).
    SetOptions {
        mode_id: String,
        model_id: String,
    },
    Shutdown(oneshot::Sender<()>),
}

struct Handle {
    tx: mpsc::Sender<Command>,
    cursors: Arc<Cursors>,
}

/// Where a session's outbox stands, shared by its actor and the manager.
#[derive(Debug, Default)]
pub(super) struct Cursors {
    /// The last seq stored in the outbox (set by the actor).
    pub(super) stored: AtomicU64,
    /// The highest seq the control plane has acknowledged. Acks are
    /// cumulative, so they are recorded here rather than queued: the
    /// connection loop must never wait for a session actor (an actor blocked
    /// on a full stream, waiting for the loop to read, would deadlock). For
    /// the same reason `oma-agent status` reads the backlog from here, not
    /// by asking the actors.
    pub(super) acked: AtomicU64,
}

impl Cursors {
    /// Events stored and not yet acknowledged.
    pub(super) fn backlog(&self) -> u64 {
        let stored = self.stored.load(Ordering::Relaxed);
        stored.saturating_sub(self.acked.load(Ordering::Relaxed))
    }
}

pub struct Manager {
    pub(super) config: Arc<ManagerConfig>,
    sessions: Mutex<HashMap<String, Handle>>,
    current: Mutex<Option<Sender>>,
    /// Which session holds each workspace in direct mode.
    pub(super) direct: DirectLocks,
    /// What each ACP agent said of itself in its last `initialize`.
    reported: Mutex<BTreeMap<String, ReportedAgent>>,
    /// The agent table, as last detected (PATH and agents.toml are rescanned
    /// with the manifest, so a newly installed agent needs no restart).
    agents: std::sync::RwLock<DetectReport>,
}

/// An ACP agent's own words from `initialize`, for the manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportedAgent {
    pub version: String,
    /// `agentCapabilities` as JSON.
    pub capabilities_json: String,
}

impl Manager {
    /// Loads the sessions a previous run left (their state files), ready to
    /// resume on the next Welcome. Children start lazily, on the next prompt.
    pub fn load(config: ManagerConfig) -> Arc<Manager> {
        let agents = std::sync::RwLock::new(config.agents.clone());
        let manager = Arc::new(Manager {
            config: Arc::new(config),
            sessions: Mutex::new(HashMap::new()),
            current: Mutex::new(None),
            direct: DirectLocks::default(),
            reported: Mutex::new(BTreeMap::new()),
            agents,
        });
        for (session_id, state) in state::saved(&manager.config.paths) {
            let Some(start) = state.start_session() else {
                continue;
            };
            if let Some(record) = &state.child {
                reap_orphan(record);
            }
            match manager.spawn_actor(start, state, false) {
                Ok(()) => tracing::info!(session_id, "resuming session"),
                Err(e) => tracing::error!(session_id, error = %e, "cannot resume session"),
            }
        }
        manager
    }

    /// The sessions held, with the last seq each has numbered (for Hello).
    pub async fn held(&self) -> Vec<pb::HeldSession> {
        let handles = self.senders();
        let mut held = Vec::new();
        for (session_id, tx) in handles {
            let (reply, wait) = oneshot::channel();
            if tx.send(Command::Describe(reply)).await.is_ok()
                && let Ok(last_sent_seq) = wait.await
            {
                held.push(pb::HeldSession {
                    session_id,
                    last_sent_seq,
                });
            }
        }
        held
    }

    /// A stream is up: hand every session the sender and its cursor, dispose
    /// of what the server no longer knows.
    pub async fn connected(&self, tx: Sender, welcome: &pb::Welcome) {
        *self.current.lock().expect("current lock") = Some(tx.clone());
        let cursors: HashMap<&str, u64> = welcome
            .sessions
            .iter()
            .map(|c| (c.session_id.as_str(), c.last_stored_seq))
            .collect();
        for id in &welcome.unknown_session_ids {
            self.send(id, Command::Dispose(false)).await;
        }
        let handles = self.senders();
        for (id, handle) in handles {
            if welcome.unknown_session_ids.contains(&id) {
                continue;
            }
            let _ = handle
                .send(Command::Connected(Some(tx.clone()), cursors.get(id.as_str()).copied()))
                .await;
        }
    }

    /// The stream is gone: sessions keep running and buffer their events.
    pub async fn disconnected(&self) {
        *self.current.lock().expect("current lock") = None;
        let handles: Vec<mpsc::Sender<Command>> = self
            .sessions
            .lock()
            .expect("sessions lock")
            .values()
            .map(|h| h.tx.clone())
            .collect();
        for handle in handles {
            let _ = handle.send(Command::Connected(None, None)).await;
        }
    }

    /// Each session's id and command sender, copied out of the lock so
    /// that no await happens while it is held.
    fn senders(&self) -> Vec<(String, mpsc::Sender<Command>)> {
        self.sessions
            .lock()
            .expect("sessions lock")
            .iter()
            .map(|(id, h)| (id.clone(), h.tx.clone()))
            .collect()
    }

    async fn send(&self, session_id: &str, command: Command) -> bool {
        let tx = self
            .sessions
            .lock()
            .expect("sessions lock")
            .get(session_id)
            .map(|h| h.tx.clone());
        match tx {
            Some(tx) => tx.send(command).await.is_ok(),
            None => false,
        }
    }

    /// Routes one control frame.
    pub async fn handle(self: &Arc<Self>, frame: pb::control_frame::Frame) {
        use pb::control_frame::Frame;
        match frame {
            Frame::StartSession(start) => {
                if crate::paths::validate_session_id(&start.session_id).is_err() {
                    tracing::warn!(
                        session_id = start.session_id,
                        "refusing a session id that is not ses_<hex>"
                    );
                    return;
                }
                let held = {
                    let sessions = self.sessions.lock().expect("sessions lock");
                    if sessions.contains_key(&start.session_id) {
                        return; // a resend: starts are idempotent
                    }
                    sessions.len()
                };
                // The control plane stores seqs as i64; a start after that
                // leaves no number for this session's events.
                if start.last_stored_seq > i64::MAX as u64 {
                    let message = format!(
                        "the start says {} events are stored: more than a session can number",
                        start.last_stored_seq
                    );
                    self.refuse_start(&start.session_id, None, "invalid_start", &message)
                        .await;
                    return;
                }
                let max = self.config.max_sessions;
                if held >= max {
                    let message = format!(
                        "this machine already holds {held} sessions, the most its oma-agent allows \
                         (--max-sessions {max}); dispose of a session or raise the limit"
                    );
                    self.refuse_start(
                        &start.session_id,
                        Some(start.last_stored_seq),
                        "session_limit",
                        &message,
                    )
                    .await;
                    return;
                }
                let (session_id, last_stored_seq) = (start.session_id.clone(), start.last_stored_seq);
                let state = SessionState::new(&start);
                if let Err(e) = self.spawn_actor(start, state, true) {
                    let message = format!("cannot create the session: {e}");
                    self.refuse_start(&session_id, Some(last_stored_seq), "start_failed", &message)
                        .await;
                }
            }
            Frame::Prompt(prompt) => {
                let session_id = prompt.session_id.clone();
                if !self.send(&session_id, Command::Prompt(prompt)).await {
                    tracing::warn!(session_id, "prompt for a session this machine does not hold");
                }
            }
            Frame::Cancel(cancel) => {
                self.send(&cancel.session_id, Command::Cancel).await;
            }
            Frame::PermissionAnswer(answer) => {
                let session_id = answer.session_id.clone();
                self.send(&session_id, Command::Answer(answer)).await;
            }
            Frame::DisposeSession(dispose) => {
                if !self
                    .send(&dispose.session_id, Command::Dispose(dispose.delete_branch))
                    .await
                {
                    self.send_frame(pb::agent_frame::Frame::SessionDisposed(pb::SessionDisposed {
                        session_id: dispose.session_id,
                    }))
                    .await;
                }
            }
            Frame::EventAck(ack) => {
                let handle = self
                    .sessions
                    .lock()
                    .expect("sessions lock")
                    .get(&ack.session_id)
                    .map(|h| (h.tx.clone(), h.cursors.clone()));
                if let Some((tx, cursors)) = handle {
                    cursors.acked.fetch_max(ack.seq, Ordering::Relaxed);
                    // A wake-up only; if the actor is busy it applies the
                    // ack on its next turn.
                    let _ = tx.try_send(Command::Ack);
                }
            }
            Frame::DiffRequest(request) => {
                if oma_proto::validate::opaque_id("request_id", &request.request_id, true).is_err() {
                    tracing::warn!("refusing a diff request with an unusable id");
                    return;
                }
                let (session_id, request_id) = (request.session_id.clone(), request.request_id.clone());
                if !self.send(&session_id, Command::Diff(request)).await {
                    self.send_frame(pb::agent_frame::Frame::DiffChunk(pb::DiffChunk {
                        request_id,
                        last: true,
                        error: "this machine does not hold the session".into(),
                        ..Default::default()
                    }))
                    .await;
                }
            }
            Frame::ApplyOptions(apply) => {
                let command = Command::SetOptions {
                    mode_id: apply.mode_id,
                    model_id: apply.model_id,
                };
                self.send(&apply.session_id, command).await;
            }
            Frame::Welcome(_) | Frame::Superseded(_) | Frame::Heartbeat(_) => {}
        }
    }

    /// A start this machine will not run: the same error event, failed
    /// status and SessionFailed frame as a session that fails to start
    /// ([`Actor::fail`]), the events numbered after `stored` (the server's
    /// last stored seq; `None`: no events, only the frame). No actor,
    /// outbox or folder is created, so nothing is kept: if the frames are
    /// lost, the server resends the start at the next Welcome.
    async fn refuse_start(&self, session_id: &str, stored: Option<u64>, code: &str, message: &str) {
        tracing::warn!(session_id, code, message, "refusing a session start");
        let error = pb::SessionError {
            code: code.into(),
            message: message.into(),
        };
        let event = |seq: u64, kind| pb::SessionEvent {
            session_id: session_id.to_owned(),
            seq,
            time: Some(now()),
            turn_id: String::new(),
            kind: Some(kind),
        };
        if let Some(seq) = stored {
            let events = vec![
                event(seq + 1, pb::session_event::Kind::Error(error.clone())),
                event(
                    seq + 2,
                    pb::session_event::Kind::StatusChanged(pb::SessionStatusChanged {
                        status: pb::SessionStatus::Failed as i32,
                        acp_session_id: String::new(),
                    }),
                ),
            ];
            self.send_frame(pb::agent_frame::Frame::Events(pb::SessionEventBatch { events }))
                .await;
        }
        self.send_frame(pb::agent_frame::Frame::SessionFailed(pb::SessionFailed {
            session_id: session_id.to_owned(),
            error: Some(error),
        }))
        .await;
    }

    async fn send_frame(&self, frame: pb::agent_frame::Frame) {
        let tx = self.current.lock().expect("current lock").clone();
        if let Some(tx) = tx {
            let _ = tx.send(pb::AgentFrame { frame: Some(frame) }).await;
        }
    }

    /// Stops every child (keeping session directories: sessions live on at
    /// the control plane and resume on the next start).
    pub async fn shutdown(&self) {
        let handles: Vec<mpsc::Sender<Command>> = self
            .sessions
            .lock()
            .expect("sessions lock")
            .drain()
            .map(|(_, h)| h.tx)
            .collect();
        // Every actor is told first, then all are awaited: each may wait the
        // grace for a child that ignores its stdin closing, and those waits
        // run side by side (n sessions take one grace, not n).
        let mut waits = Vec::with_capacity(handles.len());
        for handle in handles {
            let (done, wait) = oneshot::channel();
            if handle.send(Command::Shutdown(done)).await.is_ok() {
                waits.push(wait);
            }
        }
        futures::future::join_all(waits).await;
    }

    fn spawn_actor(self: &Arc<Self>, start: pb::StartSession, state: SessionState, fresh: bool) -> std::io::Result<()> {
        let session_id = start.session_id.clone();
        let cursors = Arc::new(Cursors::default());
        let conn = self.current.lock().expect("current lock").clone();
        let mut actor = Actor::new(self.clone(), start, state, conn, cursors.clone())?;
        let (tx, rx) = mpsc::channel(256);
        actor.save_state();
        self.sessions
            .lock()
            .expect("sessions lock")
            .insert(session_id, Handle { tx, cursors });
        let span = tracing::info_span!("session", session_id = %actor.id());
        tokio::spawn(tracing::Instrument::instrument(actor.run(rx, fresh), span));
        Ok(())
    }

    /// Events stored in each session's outbox and not yet acknowledged by
    /// the control plane, by session id.
    pub fn backlog(&self) -> BTreeMap<String, u64> {
        self.sessions
            .lock()
            .expect("sessions lock")
            .iter()
            .map(|(id, h)| (id.clone(), h.cursors.backlog()))
            .collect()
    }

    /// Records what an ACP agent reported when a session started it.
    pub(super) fn note_agent(&self, acp_agent_id: &str, reported: ReportedAgent) {
        self.reported
            .lock()
            .expect("reported lock")
            .insert(acp_agent_id.to_owned(), reported);
    }

    /// What each ACP agent reported of itself, by id (those started since
    /// the daemon started).
    pub fn reported_agents(&self) -> BTreeMap<String, ReportedAgent> {
        self.reported.lock().expect("reported lock").clone()
    }

    /// The runnable ACP agent with this id, as of the last scan.
    pub(super) fn agent(&self, id: &str) -> Option<crate::detect::AcpAgentEntry> {
        self.agents.read().expect("agents lock").find(id).cloned()
    }

    /// Replaces the agent table (a rescan found changes).
    pub fn set_agents(&self, report: DetectReport) {
        *self.agents.write().expect("agents lock") = report;
    }

    pub(super) fn forget(&self, session_id: &str) {
        self.sessions.lock().expect("sessions lock").remove(session_id);
    }
}
