//! One session's actor: owns the session's ACP child, its outbox and its
//! state file; numbers the session's events, stores them, then sends them.
//!
//! Why actors: each session's events must be numbered and sent in one order,
//! and a slow or crashed child must never hold up another session or the
//! stream. The connection hands each actor the current stream sender
//! together with the control plane's cursor, so an actor always resends its
//! unacknowledged events before it sends anything new on a fresh stream.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use oma_proto::pb;
use tokio::sync::{mpsc, oneshot};

use super::acp::{AcpLaunch, AcpOutput, AcpSession};
use super::checkout;
use super::frames::{FRAME_EVENTS, fit_in_a_frame, frames_of};
use super::launch;
use super::manager::{Command, Cursors, Manager, Sender};
use super::private_dir;
use super::state::{ChildRecord, SessionState, state_path};
use super::translate;
use crate::outbox::SessionOutbox;
use crate::policy::Policy;
use crate::process::ChildSpec;

mod masking;
mod options;
mod workspace;

/// Turn ids remembered per session, so a resent Prompt runs once.
const SEEN_TURNS: usize = 1000;
/// Ready outputs handled in one actor iteration stop at this many events
/// or bytes of records: one outbox write and (usually) one frame.
const DRAIN_EVENTS: usize = FRAME_EVENTS;
const DRAIN_BYTES: usize = 1024 * 1024;

pub(super) struct Actor {
    cursors: Arc<Cursors>,
    manager: Arc<Manager>,
    dir: PathBuf,
    start: pb::StartSession,
    state: SessionState,
    outbox: SessionOutbox,
    conn: Option<Sender>,
    acp: Option<AcpSession>,
    outputs: Option<mpsc::Receiver<AcpOutput>>,
    running_turn: Option<String>,
    /// Stored in the outbox, not yet sent (see [`Actor::save_state`]).
    stored_unsent: Vec<pb::SessionEvent>,
    /// A turn's end held back while its workspace changes are counted (the
    /// changes are part of the turn, so they come before its end).
    pending_end: Option<(String, pb::TurnEnded)>,
    changes: Option<oneshot::Receiver<Option<Result<pb::WorkspaceChanges, String>>>>,
    /// What the current child's session offers and has selected, and the
    /// config option holding its model.
    options: pb::SessionOptions,
    model_config_id: Option<String>,
    /// The ACP mode that makes this session's agent ask before it acts (its
    /// table entry's `ask`), the mode a session starts in unless one was chosen.
    ask_mode: Option<String>,
    /// Masks the credentials the session's children got in every event.
    masker: masking::SessionMasker,
}

impl Actor {
    /// The actor of one session, its outbox numbering after the server's
    /// last stored seq; it does nothing until [`Self::run`].
    pub(super) fn new(
        manager: Arc<Manager>,
        start: pb::StartSession,
        state: SessionState,
        conn: Option<Sender>,
        cursors: Arc<Cursors>,
    ) -> std::io::Result<Actor> {
        let mut outbox = SessionOutbox::open(&manager.config.paths.outbox_dir(), &start.session_id)?;
        outbox.start_after(start.last_stored_seq)?;
        let dir = manager
            .config
            .paths
            .session_dir(&start.session_id)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        // A direct session held its folder before the daemon restarted.
        if let Some(c) = state.checkout.as_ref().filter(|c| c.direct) {
            let _ = manager.direct.acquire(&c.workspace_id, &start.session_id);
        }
        let actor = Actor {
            cursors,
            manager,
            dir,
            start,
            state,
            outbox,
            conn,
            acp: None,
            outputs: None,
            running_turn: None,
            stored_unsent: Vec::new(),
            pending_end: None,
            changes: None,
            options: pb::SessionOptions::default(),
            model_config_id: None,
            ask_mode: None,
            masker: Default::default(),
        };
        actor.publish_cursors();
        Ok(actor)
    }

    pub(super) fn id(&self) -> &str {
        &self.start.session_id
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Command>, fresh: bool) {
        if fresh {
            self.start_child().await;
        } else if let Some(turn) = self.state.running_turn.take() {
            // The daemon stopped during this turn; its child is gone. Unless
            // it was killed between numbering the turn's end and saving the
            // state: then the end is in the outbox already, and a second one
            // would end the turn twice.
            let ended =
                self.outbox.pending().last().is_some_and(|e| {
                    e.turn_id == turn && matches!(e.kind, Some(pb::session_event::Kind::TurnEnded(_)))
                });
            if !ended {
                self.emit(
                    turn_ended_error("interrupted", "the oma-agent daemon restarted during this turn"),
                    &turn,
                );
            }
            self.save_state();
        }
        loop {
            // Every iteration ends here: what it numbered is stored and sent
            // before the actor waits again (and before any command runs).
            self.flush().await;
            let reading = self.outputs.is_some() && !self.outbox.is_full();
            tokio::select! {
                command = rx.recv() => {
                    let Some(command) = command else { break };
                    match command {
                        Command::Connected(tx, stored) => self.connected(tx, stored).await,
                        Command::Prompt(prompt) => self.prompt(prompt).await,
                        Command::Cancel => {
                            if let Some(acp) = &self.acp { acp.cancel(); }
                        }
                        Command::Answer(answer) => self.answer(answer),
                        Command::Ack => self.apply_ack(),

                        Command::Describe(reply) => { let _ = reply.send(self.outbox.last_seq()); }
                        Command::Dispose(delete_branch) => {
                            self.dispose(delete_branch).await;
                            return;
                        }
                        Command::Diff(request) => self.diff(request),
                        Command::SetOptions { mode_id, model_id } => self.set_options(mode_id, model_id).await,
                        Command::Shutdown(done) => {
                            if let Some(acp) = self.acp.take() {
                                acp.shutdown(self.manager.config.shutdown_grace).await;
                            }
                            self.state.child = None;
                            self.save_state();
                            let _ = done.send(());
                            return;
                        }
                    }
                }
                counted = recv_changes(&mut self.changes) => self.end_turn_with(counted),
                output = recv(&mut self.outputs), if reading => match output {
                    Some(output) => {
                        self.output(output);
                        self.drain_ready_outputs();
                    }
                    None => { self.outputs = None; self.acp = None; }
                },
            }
        }
        self.flush().await;
    }

    /// Handles the outputs the child has already produced, so that a burst
    /// becomes one outbox write and one frame. Bounded, so that commands
    /// (a cancel, an answer) wait at most one batch.
    fn drain_ready_outputs(&mut self) {
        loop {
            let (events, bytes) = self.outbox.unflushed();
            if events >= DRAIN_EVENTS || bytes >= DRAIN_BYTES || self.outbox.is_full() {
                return;
            }
            let Some(outputs) = &mut self.outputs else { return };
            match outputs.try_recv() {
                Ok(output) => self.output(output),
                Err(mpsc::error::TryRecvError::Empty) => return,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.outputs = None;
                    self.acp = None;
                    return;
                }
            }
        }
    }

    /// Tells the manager where the outbox stands (for `oma-agent status`).
    fn publish_cursors(&self) {
        use std::sync::atomic::Ordering;
        self.cursors.stored.store(self.outbox.last_seq(), Ordering::Relaxed);
        self.cursors.acked.fetch_max(self.outbox.acked(), Ordering::Relaxed);
    }

    fn apply_ack(&mut self) {
        let seq = self.cursors.acked.load(std::sync::atomic::Ordering::Relaxed);
        if seq > self.outbox.acked()
            && let Err(e) = self.outbox.ack(seq)
        {
            tracing::error!(session_id = self.id(), error = %e, "cannot record an ack");
        }
    }

    async fn connected(&mut self, tx: Option<Sender>, stored: Option<u64>) {
        self.conn = tx;
        if let Some(stored) = stored
            && let Err(e) = self.outbox.ack(stored)
        {
            tracing::error!(session_id = self.id(), error = %e, "cannot record the server's cursor");
        }
        let Some(conn) = self.conn.clone() else { return };
        self.flush().await; // (empty: the loop flushes before each command)
        let pending: Vec<pb::SessionEvent> = self.outbox.pending().cloned().collect();
        self.send_events(&conn, pending).await;
    }

    /// Numbers one event and buffers it in the outbox. Nothing is sent here:
    /// the run loop flushes after every iteration, and [`Self::send_frame`]
    /// flushes before any other frame, so the events of one iteration reach
    /// the file with one write and the stream as one frame, in order.
    fn emit(&mut self, kind: pb::session_event::Kind, turn_id: &str) {
        let mut event = pb::SessionEvent {
            session_id: self.start.session_id.clone(),
            seq: 0,
            time: Some(now()),
            turn_id: turn_id.to_owned(),
            kind: Some(kind),
        };
        self.masker.event(&mut event);
        fit_in_a_frame(&mut event);
        self.outbox.push(event);
    }

    /// Writes the buffered events to the outbox (one write); they wait in
    /// `stored_unsent` for the next [`Self::flush`].
    fn store(&mut self) {
        match self.outbox.flush() {
            Ok(events) => self.stored_unsent.extend(events),
            Err(e) => tracing::error!(session_id = self.id(), error = %e, "cannot store events in the outbox"),
        }
        self.publish_cursors();
    }

    /// Stores the buffered events (one write) and, if connected, sends them
    /// (if not, they wait in the outbox for the resend after Welcome).
    async fn flush(&mut self) {
        self.store();
        let events = std::mem::take(&mut self.stored_unsent);
        if events.is_empty() {
            return;
        }
        if let Some(conn) = self.conn.clone() {
            // Waiting here is the backpressure: a slow stream slows this
            // session's reading of its child, nothing else. If the stream is
            // gone the events stay in the outbox for the next resend.
            self.send_events(&conn, events).await;
        }
    }

    /// Sends events in frames bounded by count and by bytes (a frame must
    /// fit in one gRPC message); the one path for live sends and resends.
    /// False once the stream is gone.
    async fn send_events(&mut self, conn: &Sender, events: Vec<pb::SessionEvent>) -> bool {
        for events in frames_of(events) {
            let frame = pb::agent_frame::Frame::Events(pb::SessionEventBatch { events });
            if conn.send(pb::AgentFrame { frame: Some(frame) }).await.is_err() {
                self.conn = None;
                return false;
            }
        }
        true
    }

    /// Sends a frame other than events, after the events numbered before it.
    async fn send_frame(&mut self, frame: pb::agent_frame::Frame) {
        self.flush().await;
        if let Some(conn) = &self.conn
            && conn.send(pb::AgentFrame { frame: Some(frame) }).await.is_err()
        {
            self.conn = None;
        }
    }

    /// Saves the state file, after storing the events numbered before it:
    /// a state that says a turn ended must never be on disk without that
    /// turn's end (a kill in between would leave the turn running forever).
    pub(super) fn save_state(&mut self) {
        self.store();
        if let Err(e) = self.state.save(&self.manager.config.paths, self.id()) {
            tracing::error!(session_id = self.id(), error = %e, "cannot save session state");
        }
    }

    /// Prepares the directory and starts (or restarts) the ACP child.
    async fn start_child(&mut self) -> bool {
        let config = self.manager.config.clone();
        let Some(entry) = self.manager.agent(&self.start.acp_agent_id) else {
            let message = format!(
                "this machine has no ACP agent {:?}; `oma-agent agents` lists the ones it has",
                self.start.acp_agent_id
            );
            self.fail("agent_not_found", &message).await;
            return false;
        };
        // The owner's policy, read again at every start so edits apply
        // without a restart; it decides what the child gets before anything
        // is written or spawned.
        let policy_file = config.paths.policy_file();
        let policy = match Policy::load_with_process_path(&policy_file) {
            Ok(policy) => policy,
            Err(e) => {
                self.fail("policy_invalid", &format!("this machine's policy is broken: {e}"))
                    .await;
                return false;
            }
        };
        let daemon_env: BTreeSet<String> = std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()).collect();
        let mut launch = match launch::decide(&self.start, &entry, &policy, &daemon_env) {
            Ok(launch) => launch,
            Err(refusals) => {
                let (last, earlier) = refusals.split_last().expect("a refusal");
                for refusal in earlier {
                    let error = pb::SessionError {
                        code: refusal.rule.code().into(),
                        message: refusal.message.clone(),
                    };
                    self.emit(pb::session_event::Kind::Error(error), "");
                }
                self.fail(last.rule.code(), &last.message).await;
                return false;
            }
        };
        self.mask_credentials(&mut launch);
        self.note_lost_credentials();
        for refusal in &launch.dropped {
            tracing::warn!(
                session_id = self.id(),
                rule = refusal.rule.code(),
                "{}",
                refusal.message
            );
            let error = pb::SessionError {
                code: refusal.rule.code().into(),
                message: refusal.message.clone(),
            };
            self.emit(pb::session_event::Kind::Error(error), "");
        }
        let Some(cwd) = self.open_checkout().await else {
            return false;
        };
        // A workspace session gets its instructions with its first prompt
        // (see [`Self::prompt`]): its skills' files wait in the private
        // folder, nothing is written into the workspace.
        let in_workspace = self.state.checkout.is_some();
        let layout = match in_workspace {
            true => crate::detect::SkillsLayout::InlineAgentsMd,
            false => entry.quirks.skills_layout,
        };
        if let Err(e) = private_dir::prepare(&self.dir, &self.start, layout) {
            self.fail("start_failed", &format!("cannot prepare the session directory: {e}"))
                .await;
            return false;
        }
        let mut env = launch.env;
        self.ask_mode = match &entry.ask {
            crate::detect::AskSupport::Mode(mode) => Some(mode.clone()),
            _ => None,
        };
        let blocklist = self.start.local_skill_blocklist.clone();
        if entry.quirks.is_claude {
            // A private CLAUDE_CONFIG_DIR of symlinks to the user's own, with
            // only the allowed skills; rebuilt on every start, never written
            // into the user's real config.
            if let Some(source) = &config.skill_source {
                match crate::skills::build_config_dir(source, &self.dir, &blocklist) {
                    Ok(path) => env.push(("CLAUDE_CONFIG_DIR".into(), path.display().to_string())),
                    Err(e) => {
                        self.fail(
                            "start_failed",
                            &format!("cannot build the private Claude config dir: {e}"),
                        )
                        .await;
                        return false;
                    }
                }
            }
        } else if !blocklist.is_empty() && !self.state.blocklist_noted {
            self.state.blocklist_noted = true;
            self.save_state();
            let message = format!(
                "ACP agent {:?} is not a Claude agent: it ignores the local skill blocklist ({})",
                entry.id,
                blocklist.join(", ")
            );
            self.emit(pb::session_event::Kind::Log(pb::SessionLog { message }), "");
        }
        let acp_launch = AcpLaunch {
            child: ChildSpec {
                command: entry.command.clone(),
                args: entry.args.clone(),
                cwd,
                env,
            },
            stderr_log_file: Some(
                config
                    .paths
                    .log_dir()
                    .join(format!("{}.stderr.log", self.start.session_id)),
            ),
            stderr_masker: self.masker.masker(),
            advertise_read_text_file: entry.quirks.advertise_read_text_file,
            advertise_write_text_file: entry.quirks.advertise_write_text_file,
            system_prompt_meta: (entry.quirks.system_prompt_in_meta
                && !in_workspace
                && !self.start.system_prompt.is_empty())
            .then(|| self.start.system_prompt.clone()),
            mcp_servers: launch.mcp_servers,
            resume_acp_session_id: self.state.acp_session_id.clone(),
            startup_timeout: config.startup_timeout,
            idle_timeout: config.idle_timeout,
        };
        let _ = std::fs::create_dir_all(config.paths.log_dir());
        // The start can take a while: what is numbered so far goes out first.
        self.flush().await;
        let (out_tx, mut out_rx) = mpsc::channel(1024);
        self.state.generation += 1;
        self.save_state();
        // session/load replays the whole history as updates before it
        // answers; drain them while it runs, or a long history would fill
        // the channel and stall the start until its timeout.
        let mut early = Vec::new();
        let started = {
            let start = AcpSession::start(acp_launch, out_tx);
            tokio::pin!(start);
            loop {
                tokio::select! {
                    result = &mut start => break result,
                    Some(output) = out_rx.recv() => early.push(output),
                }
            }
        };
        match started {
            Ok((acp, started)) => {
                self.manager.note_agent(
                    &entry.id,
                    super::manager::ReportedAgent {
                        version: started.agent_version.clone(),
                        capabilities_json: started.capabilities_json.clone(),
                    },
                );
                self.state.acp_session_id = Some(started.acp_session_id.clone());
                self.state.child = Some(ChildRecord {
                    pgid: acp.pid(),
                    command: entry.command.clone(),
                });
                self.save_state();
                self.acp = Some(acp);
                // session/load replays the history as updates, all of them
                // before its answer: they are in the log already, so they are
                // not recorded again. Anything else is kept, in order.
                let mut kept = Vec::new();
                let mut replayed = 0usize;
                while let Ok(output) = out_rx.try_recv() {
                    early.push(output);
                }
                for output in early {
                    match output {
                        AcpOutput::Update { .. } if started.resumed => replayed += 1,
                        other => kept.push(other),
                    }
                }
                self.outputs = Some(out_rx);
                for output in kept {
                    self.output(output);
                }
                if replayed > 0 {
                    tracing::info!(
                        session_id = self.id(),
                        replayed,
                        "resumed; replayed history not re-recorded"
                    );
                }
                self.emit(
                    pb::session_event::Kind::StatusChanged(pb::SessionStatusChanged {
                        status: pb::SessionStatus::Idle as i32,
                        acp_session_id: started.acp_session_id.clone(),
                    }),
                    "",
                );
                self.send_frame(pb::agent_frame::Frame::SessionReady(pb::SessionReady {
                    session_id: self.start.session_id.clone(),
                    acp_session_id: started.acp_session_id,
                    resumed: started.resumed,
                }))
                .await;
                self.options = started.options;
                self.model_config_id = started.model_config_id;
                self.apply_wanted_options().await;
                true
            }
            Err(e) => {
                self.fail("start_failed", &e.to_string()).await;
                false
            }
        }
    }

    /// The session cannot run: say why, as an event and a frame.
    async fn fail(&mut self, code: &str, message: &str) {
        let mut error = pb::SessionError {
            code: code.into(),
            message: message.into(),
        };
        self.masker.error(&mut error);
        tracing::warn!(
            session_id = self.id(),
            code = error.code.as_str(),
            message = error.message.as_str(),
            "session failed"
        );
        self.emit(pb::session_event::Kind::Error(error.clone()), "");
        self.emit(
            pb::session_event::Kind::StatusChanged(pb::SessionStatusChanged {
                status: pb::SessionStatus::Failed as i32,
                acp_session_id: String::new(),
            }),
            "",
        );
        self.send_frame(pb::agent_frame::Frame::SessionFailed(pb::SessionFailed {
            session_id: self.start.session_id.clone(),
            error: Some(error),
        }))
        .await;
    }

    async fn prompt(&mut self, prompt: pb::Prompt) {
        if self.state.seen_turns.contains(&prompt.turn_id) {
            return; // resent after a reconnect: each turn runs once
        }
        self.state.seen_turns.push(prompt.turn_id.clone());
        if self.state.seen_turns.len() > SEEN_TURNS {
            self.state.seen_turns.remove(0);
        }
        self.save_state();
        let turn_id = prompt.turn_id.clone();
        self.emit(
            pb::session_event::Kind::TurnStarted(pb::TurnStarted {
                prompt: prompt.prompt.clone(),
                requested_by_user_id: prompt.requested_by_user_id.clone(),
            }),
            &turn_id,
        );
        if let Some(running) = &self.running_turn {
            let message = format!("turn {running} is still running; one turn at a time");
            self.emit(turn_ended_error("turn_running", &message), &turn_id);
            return;
        }
        // The folder can vanish under a live session (deleted, unmounted):
        // the turn says so rather than letting the agent fail on it.
        if let Some(gone) = self.state.checkout.as_ref().and_then(checkout::missing) {
            self.emit(turn_ended_error("workspace_missing", &gone), &turn_id);
            return;
        }
        if self.acp.as_ref().is_none_or(|a| !a.is_alive()) {
            self.acp = None;
            self.outputs = None;
            if !self.start_child().await {
                self.emit(
                    turn_ended_error("start_failed", "the agent could not be started"),
                    &turn_id,
                );
                return;
            }
        }
        let mut blocks: Vec<serde_json::Value> = prompt.prompt.iter().map(translate::content_block_to_acp).collect();
        let instructions = self.instructions_due();
        if let Some(text) = &instructions {
            blocks.insert(0, serde_json::json!({"type": "text", "text": text}));
        }
        let result = match &self.acp {
            Some(acp) => acp.prompt(turn_id.clone(), blocks),
            None => Err(super::acp::AcpError::Exited),
        };
        match result {
            Ok(()) => {
                self.running_turn = Some(turn_id.clone());
                self.state.running_turn = Some(turn_id);
                if instructions.is_some() {
                    self.state.instructions_sent_to = self.state.acp_session_id.clone();
                }
                self.save_state();
            }
            Err(e) => self.emit(turn_ended_error("acp_error", &e.to_string()), &turn_id),
        }
    }

    fn answer(&mut self, answer: pb::PermissionAnswer) {
        let option = (!answer.cancelled).then(|| answer.option_id.clone());
        let Some(acp) = &self.acp else { return };
        // An answer for an earlier child's request has nobody to go to.
        let prefix = format!("g{}.", self.state.generation);
        let Some(child_request_id) = answer.request_id.strip_prefix(&prefix) else {
            tracing::debug!(
                session_id = self.id(),
                request_id = answer.request_id,
                "answer for an earlier child"
            );
            return;
        };
        match acp.answer_permission(child_request_id, option) {
            Ok(()) => {
                let turn = self.running_turn.clone().unwrap_or_default();
                self.emit(
                    pb::session_event::Kind::PermissionDecided(pb::PermissionDecided {
                        request_id: answer.request_id,
                        option_id: answer.option_id,
                        cancelled: answer.cancelled,
                        // The control plane's word on who decided, when it
                        // is a usable id (an older one sends none).
                        decided_by: Some(answer.decided_by)
                            .filter(|by| oma_proto::validate::opaque_id("decided_by", by, true).is_ok())
                            .unwrap_or_else(|| "control-plane".into()),
                    }),
                    &turn,
                );
            }
            // Already answered (a resend after reconnect) or gone with its turn.
            Err(e) => tracing::debug!(session_id = self.id(), error = %e, "permission answer not applied"),
        }
    }

    fn output(&mut self, output: AcpOutput) {
        let turn = self.running_turn.clone().unwrap_or_default();
        match output {
            AcpOutput::Update { raw_update } => {
                let update = translate::update_from_raw(&raw_update).unwrap_or_else(|_| pb::SessionUpdate {
                    kind: String::new(),
                    raw_json: raw_update,
                    typed: None,
                });
                let changes_options = matches!(update.kind.as_str(), "current_mode_update" | "config_option_update");
                let raw = changes_options.then(|| update.raw_json.clone());
                self.emit(pb::session_event::Kind::Update(update), &turn);
                if let Some(raw) = raw
                    && let Ok(value) = serde_json::from_str::<serde_json::Value>(&raw)
                    && oma_proto::session_options::apply_update(&mut self.options, &value)
                {
                    self.emit(pb::session_event::Kind::OptionsChanged(self.options.clone()), &turn);
                }
            }
            AcpOutput::PermissionRequest { request_id, raw_params } => {
                let in_session = format!("g{}.{request_id}", self.state.generation);
                match translate::permission_requested(in_session, raw_params) {
                    Ok(requested) => self.emit(pb::session_event::Kind::PermissionRequested(requested), &turn),
                    // Unusable ids: refused here, never sent to the server.
                    Err(message) => {
                        if let Some(acp) = &self.acp {
                            let _ = acp.answer_permission(&request_id, None);
                        }
                        let shown = self.masker.text(&message);
                        tracing::warn!(session_id = self.id(), message = %shown, "refused a permission request");
                        let code = "invalid_permission_request".into();
                        self.emit(
                            pb::session_event::Kind::Error(pb::SessionError { code, message }),
                            &turn,
                        );
                    }
                }
            }
            AcpOutput::TurnEnded {
                turn_id,
                stop_reason,
                error,
                usage_json,
            } => {
                let error = error
                    .map(|(code, message)| format!("{code}: {message}"))
                    .unwrap_or_default();
                let ended = pb::TurnEnded {
                    stop_reason: stop_reason as i32,
                    error,
                    usage_json: usage_json.unwrap_or_default(),
                };
                match self.state.checkout.clone().filter(|c| c.base_commit.is_some()) {
                    // Counting runs git: off the runtime, and the turn ends
                    // when it is done (see [`Self::end_turn_with`]).
                    Some(opened) => {
                        let dir = self.dir.clone();
                        let (tx, rx) = oneshot::channel();
                        tokio::task::spawn_blocking(move || {
                            let counted = checkout::changes(&opened, &dir).map(|r| r.map_err(|e| e.to_string()));
                            let _ = tx.send(counted);
                        });
                        self.pending_end = Some((turn_id, ended));
                        self.changes = Some(rx);
                    }
                    None => self.finish_turn(&turn_id, ended),
                }
            }
            AcpOutput::Log(message) => self.emit(pb::session_event::Kind::Log(pb::SessionLog { message }), &turn),
            AcpOutput::Exited {
                description,
                stderr_tail,
            } => {
                let mut message = format!("the agent process ended: {description}");
                if !stderr_tail.is_empty() {
                    message.push_str(&format!("; stderr: {}", last_chars(&stderr_tail, 2000)));
                }
                self.emit(pb::session_event::Kind::Log(pb::SessionLog { message }), &turn);
                self.acp = None;
                self.outputs = None;
                self.state.child = None;
                self.save_state();
            }
        }
    }

    fn finish_turn(&mut self, turn_id: &str, ended: pb::TurnEnded) {
        self.emit(pb::session_event::Kind::TurnEnded(ended), turn_id);
        self.running_turn = None;
        self.state.running_turn = None;
        self.save_state();
    }

    async fn dispose(mut self, delete_branch: bool) {
        if let Some(acp) = self.acp.take() {
            acp.shutdown(self.manager.config.shutdown_grace).await;
        }
        let session_id = self.start.session_id.clone();
        if let Some(opened) = self.state.checkout.clone() {
            if opened.direct {
                self.manager.direct.release(&opened.workspace_id, &session_id);
            }
            let closed = tokio::task::spawn_blocking(move || checkout::close(&opened, delete_branch)).await;
            match closed {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(session_id, error = %e, "cannot remove the session's worktree"),
                Err(e) => tracing::error!(session_id, error = %e, "cannot remove the session's worktree"),
            }
        }
        if let Err(e) = private_dir::remove(&self.dir) {
            tracing::error!(session_id, error = %e, "cannot remove the session directory");
        }
        let _ = std::fs::remove_file(state_path(&self.manager.config.paths, &session_id));
        let _ = std::fs::remove_file(
            self.manager
                .config
                .paths
                .log_dir()
                .join(format!("{session_id}.stderr.log")),
        );
        self.manager.forget(&session_id);
        let conn = self.conn.clone();
        if let Err(e) = self.outbox.remove() {
            tracing::error!(session_id, error = %e, "cannot remove the session outbox");
        }
        if let Some(conn) = conn {
            let frame = pb::agent_frame::Frame::SessionDisposed(pb::SessionDisposed {
                session_id: session_id.clone(),
            });
            let _ = conn.send(pb::AgentFrame { frame: Some(frame) }).await;
        }
        tracing::info!(session_id, "session disposed");
    }
}

async fn recv_changes<T>(rx: &mut Option<oneshot::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.await.ok(),
        None => std::future::pending().await,
    }
}

async fn recv(outputs: &mut Option<mpsc::Receiver<AcpOutput>>) -> Option<AcpOutput> {
    match outputs {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn turn_ended_error(code: &str, message: &str) -> pb::session_event::Kind {
    pb::session_event::Kind::TurnEnded(pb::TurnEnded {
        stop_reason: pb::StopReason::Error as i32,
        error: format!("{code}: {message}"),
        usage_json: String::new(),
    })
}

fn last_chars(text: &str, n: usize) -> &str {
    let count = text.chars().count();
    if count <= n {
        return text;
    }
    let skip = text.char_indices().nth(count - n).map(|(i, _)| i).unwrap_or(0);
    &text[skip..]
}

pub(super) fn now() -> prost_types::Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::DetectReport;
    use crate::paths::Paths;
    use crate::session::manager::ManagerConfig;
    use std::time::Duration;

    const SESSION: &str = "ses_0123456789abcdef0123456789abcdef";
    const TURN: &str = "turn_1";

    fn event(kind: pb::session_event::Kind) -> pb::SessionEvent {
        pb::SessionEvent {
            session_id: SESSION.into(),
            seq: 0,
            time: None,
            turn_id: TURN.into(),
            kind: Some(kind),
        }
    }

    /// What a daemon killed during turn [`TURN`] leaves: the state file says
    /// the turn runs, and the outbox holds its events (`ended`: its end too,
    /// numbered just before the kill). Returns the last seq the restarted
    /// daemon holds.
    async fn restart_after_kill(ended: bool) -> u64 {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path().join("config"), dir.path().join("data"));
        let mut outbox = SessionOutbox::open(&paths.outbox_dir(), SESSION).unwrap();
        outbox.push(event(pb::session_event::Kind::TurnStarted(pb::TurnStarted::default())));
        if ended {
            outbox.push(event(pb::session_event::Kind::TurnEnded(pb::TurnEnded::default())));
        }
        outbox.flush().unwrap();
        drop(outbox);
        let start = pb::StartSession {
            session_id: SESSION.into(),
            acp_agent_id: "test".into(),
            ..Default::default()
        };
        let mut state = SessionState::new(&start);
        state.running_turn = Some(TURN.into());
        std::fs::write(state_path(&paths, SESSION), serde_json::to_vec(&state).unwrap()).unwrap();

        let manager = Manager::load(ManagerConfig {
            paths,
            agents: DetectReport::default(),
            skill_source: None,
            idle_timeout: Duration::from_secs(60),
            startup_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(1),
            max_sessions: 8,
        });
        // The actor ends the interrupted turn before it answers anything.
        let held = manager.held().await;
        assert_eq!(held.len(), 1);
        held[0].last_sent_seq
    }

    #[tokio::test]
    async fn a_turn_cut_by_a_restart_ends_interrupted() {
        assert_eq!(restart_after_kill(false).await, 2);
    }

    /// A kill between numbering a turn's end and saving the state once made
    /// the restarted daemon end that turn a second time (found by the soak).
    #[tokio::test]
    async fn a_turn_whose_end_was_numbered_before_the_kill_is_not_ended_twice() {
        assert_eq!(restart_after_kill(true).await, 2);
    }

    fn test_manager(dir: &std::path::Path) -> Arc<Manager> {
        Manager::load(ManagerConfig {
            paths: Paths::new(dir.join("config"), dir.join("data")),
            agents: DetectReport::default(),
            skill_source: None,
            idle_timeout: Duration::from_secs(60),
            startup_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(1),
            max_sessions: 8,
        })
    }

    /// An actor reading `outputs`, sending on `conn`, with no child.
    fn test_actor(manager: &Arc<Manager>, outputs: mpsc::Receiver<AcpOutput>, conn: Sender) -> Actor {
        let paths = &manager.config.paths;
        Actor {
            cursors: Arc::default(),
            manager: manager.clone(),
            dir: paths.session_dir(SESSION).unwrap(),
            start: pb::StartSession {
                session_id: SESSION.into(),
                ..Default::default()
            },
            state: SessionState::default(),
            outbox: SessionOutbox::open(&paths.outbox_dir(), SESSION).unwrap(),
            conn: Some(conn),
            acp: None,
            outputs: Some(outputs),
            running_turn: None,
            stored_unsent: Vec::new(),
            pending_end: None,
            changes: None,
            options: pb::SessionOptions::default(),
            model_config_id: None,
            ask_mode: None,
            masker: Default::default(),
        }
    }

    fn log(i: usize) -> AcpOutput {
        AcpOutput::Log(format!("line {i}"))
    }

    async fn next_events(frames: &mut mpsc::Receiver<pb::AgentFrame>) -> Vec<u64> {
        match frames.recv().await.and_then(|f| f.frame) {
            Some(pb::agent_frame::Frame::Events(batch)) => batch.events.iter().map(|e| e.seq).collect(),
            other => panic!("expected an events frame, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn ready_outputs_become_one_frame() {
        let dir = tempfile::tempdir().unwrap();
        let manager = test_manager(dir.path());
        let (out_tx, out_rx) = mpsc::channel(1024);
        for i in 0..100 {
            out_tx.send(log(i)).await.unwrap();
        }
        let (conn, mut frames) = mpsc::channel(16);
        let (commands, rx) = mpsc::channel(1);
        let actor = tokio::spawn(test_actor(&manager, out_rx, conn).run(rx, false));
        assert_eq!(next_events(&mut frames).await, (1..=100).collect::<Vec<_>>());

        // Later outputs: numbered after them, in order.
        out_tx.send(log(100)).await.unwrap();
        assert_eq!(next_events(&mut frames).await, vec![101]);
        drop(commands);
        actor.await.unwrap();
        let outbox = SessionOutbox::open(&manager.config.paths.outbox_dir(), SESSION).unwrap();
        assert_eq!(outbox.pending().count(), 101, "all stored before sent");
    }

    #[tokio::test]
    async fn the_backlog_is_what_is_stored_and_not_acknowledged() {
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().unwrap();
        let manager = test_manager(dir.path());
        let (out_tx, out_rx) = mpsc::channel(1024);
        for i in 0..10 {
            out_tx.send(log(i)).await.unwrap();
        }
        let (conn, mut frames) = mpsc::channel(16);
        let (commands, rx) = mpsc::channel(1);
        let actor = test_actor(&manager, out_rx, conn);
        let cursors = actor.cursors.clone();
        let task = tokio::spawn(actor.run(rx, false));
        assert_eq!(next_events(&mut frames).await.len(), 10);
        assert_eq!(cursors.backlog(), 10, "sent is not acknowledged");
        // An ack counts at once, before the actor applies it.
        cursors.acked.fetch_max(4, Ordering::Relaxed);
        assert_eq!(cursors.backlog(), 6);
        commands.send(Command::Ack).await.unwrap();
        out_tx.send(log(10)).await.unwrap();
        assert_eq!(next_events(&mut frames).await, vec![11]);
        assert_eq!(cursors.backlog(), 7);
        // The control plane's cursor on a new stream counts as an ack too.
        let (conn, _frames) = mpsc::channel(16);
        commands.send(Command::Connected(Some(conn), Some(11))).await.unwrap();
        drop(commands);
        task.await.unwrap();
        assert_eq!(cursors.backlog(), 0);
    }

    #[tokio::test]
    async fn a_burst_is_cut_into_bounded_frames() {
        let dir = tempfile::tempdir().unwrap();
        let manager = test_manager(dir.path());
        let burst = DRAIN_EVENTS * 2 + 10;
        let (out_tx, out_rx) = mpsc::channel(1024);
        for i in 0..burst {
            out_tx.send(log(i)).await.unwrap();
        }
        drop(out_tx);
        let (conn, mut frames) = mpsc::channel(16);
        let (_commands, rx) = mpsc::channel(1);
        tokio::spawn(test_actor(&manager, out_rx, conn).run(rx, false));
        let mut seqs = Vec::new();
        while seqs.len() < burst {
            let frame = next_events(&mut frames).await;
            assert!(!frame.is_empty() && frame.len() <= FRAME_EVENTS, "{}", frame.len());
            seqs.extend(frame);
        }
        assert_eq!(seqs, (1..=burst as u64).collect::<Vec<_>>());
    }

    /// A turn's end is stored before a state that says no turn runs: a kill
    /// between the two once could leave the turn running forever.
    #[tokio::test]
    async fn the_state_never_runs_ahead_of_the_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let manager = test_manager(dir.path());
        let (_out_tx, out_rx) = mpsc::channel(1);
        let (conn, _frames) = mpsc::channel(16);
        let mut actor = test_actor(&manager, out_rx, conn);
        actor.running_turn = Some(TURN.into());
        actor.state.running_turn = Some(TURN.into());
        actor.output(AcpOutput::TurnEnded {
            turn_id: TURN.into(),
            stop_reason: pb::StopReason::EndTurn,
            error: None,
            usage_json: None,
        });
        // As a kill right now would leave them: the state file and the outbox.
        let state: SessionState =
            serde_json::from_slice(&std::fs::read(state_path(&manager.config.paths, SESSION)).unwrap()).unwrap();
        assert_eq!(state.running_turn, None);
        let outbox = SessionOutbox::open(&manager.config.paths.outbox_dir(), SESSION).unwrap();
        let ended = outbox
            .pending()
            .any(|e| e.turn_id == TURN && matches!(e.kind, Some(pb::session_event::Kind::TurnEnded(_))));
        assert!(ended, "the state says the turn ended, the outbox does not");
    }
}
