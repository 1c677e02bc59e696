//! One prompt turn: runs the prompt's script and answers the prompt.
//!
//! A turn runs in a task spawned on the connection, never in the dispatch
//! loop, so it may wait for the client (permission requests) and for time.
//! A session/cancel for the turn's session is noticed while sleeping, between
//! chunks, between directives and at the end: from then on the turn stops and
//! answers `cancelled` (except `hang`, which ignores it).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agent_client_protocol::v1::schema::{
    AvailableCommand, AvailableCommandsUpdate, ConfigOptionUpdate, ContentBlock, ContentChunk, Cost, CurrentModeUpdate,
    PermissionOption, PermissionOptionKind, Plan, PlanEntry, PlanEntryPriority, PlanEntryStatus, PromptResponse,
    RequestPermissionOutcome, RequestPermissionRequest, SessionConfigOption, SessionConfigSelectOption,
    SessionInfoUpdate, SessionNotification, SessionUpdate, StopReason, ToolCall, ToolCallContent, ToolCallStatus,
    ToolCallUpdate, ToolCallUpdateFields, ToolKind, UsageUpdate,
};
use agent_client_protocol::v1::{ConnectionTo, Responder};
use agent_client_protocol::{Client, Error, UntypedMessage};
use tokio::sync::watch;

use crate::agent::{RunningTurn, TestAgent};
use crate::io::Marker;
use crate::script::Directive;
use crate::session::Session;

/// How a script ended.
enum End {
    /// Answer the prompt with this stop reason.
    Stop(StopReason),
    /// Answer the prompt with an internal error carrying this message.
    Error(String),
    /// Never answer.
    Hang,
}

pub struct Turn {
    agent: Arc<TestAgent>,
    session: Arc<Session>,
    cx: ConnectionTo<Client>,
    cancel: watch::Receiver<u64>,
    cancelled: bool,
    running: Option<RunningTurn>,
}

impl Turn {
    /// Prepares a turn. Call this in the prompt handler, so that a
    /// session/cancel dispatched after the prompt is seen by the turn.
    pub fn new(agent: Arc<TestAgent>, session: Arc<Session>, cx: ConnectionTo<Client>) -> Self {
        let cancel = session.cancel_receiver();
        let running = Some(agent.turn_started());
        Self {
            agent,
            session,
            cx,
            cancel,
            cancelled: false,
            running,
        }
    }

    /// Runs the script and answers the prompt. Never fails: an error would
    /// stop the whole connection.
    pub async fn run(mut self, script: Vec<Directive>, responder: Responder<PromptResponse>) -> Result<(), Error> {
        let end = self.run_script(script).await;
        let result = match end {
            End::Stop(reason) => responder.respond(PromptResponse::new(reason)),
            End::Error(message) => responder.respond_with_error(Error::new(-32603, message)),
            End::Hang => {
                log!(
                    "oma-test-agent: session {}: hanging; this prompt is never answered",
                    self.session.id
                );
                drop(self.running.take());
                std::future::pending::<()>().await;
                drop(responder);
                Ok(())
            }
        };
        if let Err(err) = result {
            log!(
                "oma-test-agent: session {}: cannot answer the prompt: {err:?}",
                self.session.id
            );
        }
        Ok(())
    }

    async fn run_script(&mut self, script: Vec<Directive>) -> End {
        for directive in script {
            if self.is_cancelled() {
                return End::Stop(StopReason::Cancelled);
            }
            if let Some(end) = self.run_directive(directive).await {
                return end;
            }
        }
        if self.is_cancelled() {
            End::Stop(StopReason::Cancelled)
        } else {
            End::Stop(StopReason::EndTurn)
        }
    }

    /// Runs one directive; `Some` ends the script.
    async fn run_directive(&mut self, directive: Directive) -> Option<End> {
        match directive {
            Directive::Echo(text) => self.message(text),
            Directive::Thought(text) => self.send(SessionUpdate::AgentThoughtChunk(text_chunk(text))),
            Directive::User(text) => self.send(SessionUpdate::UserMessageChunk(text_chunk(text))),
            Directive::Chunks { count, per_sec } => return self.chunks(count, per_sec).await,
            Directive::Tool => self.tool(),
            Directive::Plan => self.send(SessionUpdate::Plan(Plan::new(vec![
                PlanEntry::new("Read the code", PlanEntryPriority::High, PlanEntryStatus::Pending),
                PlanEntry::new("Write the test", PlanEntryPriority::Medium, PlanEntryStatus::InProgress),
                PlanEntry::new("Run the tests", PlanEntryPriority::Low, PlanEntryStatus::Completed),
            ]))),
            Directive::AllKinds => self.all_kinds(),
            Directive::UnknownKind => self.send_raw_update(serde_json::json!({
                "sessionUpdate": "oma_future_kind",
                "payload": { "x": 1 },
            })),
            Directive::Permission => self.permission().await,
            Directive::Sleep(ms) => {
                let cancelled = tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(ms)) => false,
                    () = self.wait_cancel() => true,
                };
                if cancelled {
                    return Some(End::Stop(StopReason::Cancelled));
                }
            }
            Directive::Stop(reason) => return Some(End::Stop(reason)),
            Directive::Error(message) => return Some(End::Error(message)),
            Directive::Crash(code) => {
                log!(
                    "oma-test-agent: session {}: crashing with exit code {code}",
                    self.session.id
                );
                let marker = self.agent.markers.register(Marker::Exit(code));
                self.notify(marker);
                // The writer thread exits the process when it reaches the marker.
                std::future::pending::<()>().await;
            }
            Directive::Garbage => {
                let marker = self
                    .agent
                    .markers
                    .register(Marker::Raw(b"this is not json {{{".to_vec()));
                self.notify(marker);
            }
            Directive::InvalidUtf8 => {
                let marker = self
                    .agent
                    .markers
                    .register(Marker::Raw(b"\xff\xfe this line is not UTF-8".to_vec()));
                self.notify(marker);
            }
            Directive::Hang => return Some(End::Hang),
            Directive::Big(bytes) => self.message("x".repeat(bytes)),
            Directive::Env(name) => self.message(match std::env::var_os(&name) {
                Some(value) => format!("env {name}={}", value.to_string_lossy()),
                None => format!("env {name} unset"),
            }),
            Directive::LeakEnv(name) => self.leak_env(&name),
            Directive::Cwd => self.message(format!("cwd {}", self.session.cwd.display())),
            Directive::Cat(path) => self.message(match std::fs::read_to_string(self.session.cwd.join(&path)) {
                Ok(content) => content,
                Err(err) => format!("cat {path}: {err}"),
            }),
            Directive::ListSkills => self.message(format!("skills: {}", list_skills())),
            Directive::SystemPrompt => self.message(format!(
                "system prompt: {}",
                self.session.system_prompt.as_deref().unwrap_or("<none>")
            )),
            Directive::Symlink { target, link } => {
                let result = plant_symlink(&self.session.cwd.join(&link), std::path::Path::new(&target));
                self.message(match result {
                    Ok(()) => format!("symlink {link} -> {target}"),
                    Err(err) => format!("symlink {link}: {err}"),
                })
            }
            Directive::McpServers => self.message(format!("mcp servers: {}", self.session.mcp_servers)),
            Directive::Options => {
                let mode = self.session.mode.lock().unwrap().clone();
                let model = self.session.model.lock().unwrap().clone();
                self.message(format!("mode {mode} model {model}"))
            }
            Directive::Instructions => {
                let instructions = self.session.instructions.lock().unwrap().clone();
                self.message(format!("instructions: {}", instructions.as_deref().unwrap_or("<none>")))
            }
            Directive::Write { path, text } => {
                let target = self.session.cwd.join(&path);
                let written = target
                    .parent()
                    .map_or(Ok(()), std::fs::create_dir_all)
                    .and_then(|()| std::fs::write(&target, format!("{text}\n")));
                self.message(match written {
                    Ok(()) => format!("wrote {path}"),
                    Err(err) => format!("write {path}: {err}"),
                })
            }
            Directive::Unknown(piece) => self.message(format!("unknown directive: {piece}")),
            Directive::Invalid { piece, reason } => self.message(format!("invalid directive: {piece}: {reason}")),
        }
        None
    }

    async fn chunks(&mut self, count: u64, per_sec: Option<f64>) -> Option<End> {
        let start = tokio::time::Instant::now();
        let period = per_sec.map(|rate| Duration::from_secs_f64(1.0 / rate));
        for seq in 1..=count {
            if let Some(period) = period {
                // Chunk `seq` is due (seq - 1) periods after the first one.
                let due = start + period.mul_f64((seq - 1) as f64);
                let cancelled = tokio::select! {
                    () = tokio::time::sleep_until(due) => false,
                    () = self.wait_cancel() => true,
                };
                if cancelled {
                    return Some(End::Stop(StopReason::Cancelled));
                }
            } else if self.is_cancelled() {
                return Some(End::Stop(StopReason::Cancelled));
            }
            let mut meta = serde_json::Map::new();
            meta.insert(
                "oma_test".into(),
                serde_json::json!({ "seq": seq, "sent_unix_ns": unix_ns() }),
            );
            self.send(SessionUpdate::AgentMessageChunk(
                text_chunk(format!("chunk {seq}\n")).meta(meta),
            ));
        }
        None
    }

    fn tool(&mut self) {
        let id = format!("tool-{}", self.agent.next_id());
        self.send(SessionUpdate::ToolCall(
            ToolCall::new(id.clone(), "Run tests")
                .kind(ToolKind::Execute)
                .status(ToolCallStatus::Pending),
        ));
        self.send(SessionUpdate::ToolCallUpdate(ToolCallUpdate::new(
            id.clone(),
            ToolCallUpdateFields::new().status(ToolCallStatus::InProgress),
        )));
        self.send(SessionUpdate::ToolCallUpdate(ToolCallUpdate::new(
            id,
            ToolCallUpdateFields::new()
                .status(ToolCallStatus::Completed)
                .content(vec![ToolCallContent::from("ok")]),
        )));
    }

    /// See [`Directive::LeakEnv`]. An unset variable is reported as such
    /// (`leak-env NAME unset`), nothing else is sent.
    fn leak_env(&mut self, name: &str) {
        use base64::Engine as _;
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        let Some(value) = std::env::var_os(name) else {
            self.message(format!("leak-env {name} unset"));
            return;
        };
        let value = value.to_string_lossy().into_owned();
        log!("oma-test-agent: leak-env {name}={value}");
        self.message(format!(
            "leak-env {name} plain {value} base64 {} base64url {} hex {}",
            STANDARD.encode(&value),
            URL_SAFE_NO_PAD.encode(&value),
            hex_of(&value)
        ));
        let stdout = format!("HOME=/home/agent\n{name}={value}\nPATH=/usr/bin\n");
        let id = format!("tool-{}", self.agent.next_id());
        self.send(SessionUpdate::ToolCall(
            ToolCall::new(id.clone(), format!("Run env | grep {name}"))
                .kind(ToolKind::Execute)
                .status(ToolCallStatus::Pending)
                .raw_input(serde_json::json!({ "command": "env" })),
        ));
        self.send(SessionUpdate::ToolCallUpdate(ToolCallUpdate::new(
            id,
            ToolCallUpdateFields::new()
                .status(ToolCallStatus::Completed)
                .content(vec![ToolCallContent::from(stdout.clone())])
                .raw_output(serde_json::json!({
                    "stdout": stdout,
                    "stdout_base64": STANDARD.encode(&stdout),
                    "exit_code": 0,
                })),
        )));
        self.send(SessionUpdate::Plan(Plan::new(vec![PlanEntry::new(
            format!("Rotate {value}"),
            PlanEntryPriority::High,
            PlanEntryStatus::Pending,
        )])));
    }

    fn all_kinds(&mut self) {
        let tool_id = format!("tool-{}", self.agent.next_id());
        let updates = [
            SessionUpdate::UserMessageChunk(text_chunk("all-kinds: user message")),
            SessionUpdate::AgentMessageChunk(text_chunk("all-kinds: agent message")),
            SessionUpdate::AgentThoughtChunk(text_chunk("all-kinds: agent thought")),
            SessionUpdate::ToolCall(
                ToolCall::new(tool_id.clone(), "Read file")
                    .kind(ToolKind::Read)
                    .status(ToolCallStatus::Pending),
            ),
            SessionUpdate::ToolCallUpdate(ToolCallUpdate::new(
                tool_id,
                ToolCallUpdateFields::new()
                    .status(ToolCallStatus::Completed)
                    .content(vec![ToolCallContent::from("ok")]),
            )),
            SessionUpdate::Plan(Plan::new(vec![PlanEntry::new(
                "Emit every update kind",
                PlanEntryPriority::High,
                PlanEntryStatus::InProgress,
            )])),
            SessionUpdate::AvailableCommandsUpdate(AvailableCommandsUpdate::new(vec![AvailableCommand::new(
                "test",
                "Run the tests",
            )])),
            SessionUpdate::CurrentModeUpdate(CurrentModeUpdate::new("default")),
            SessionUpdate::ConfigOptionUpdate(ConfigOptionUpdate::new(vec![SessionConfigOption::select(
                "model",
                "Model",
                "test-model",
                vec![
                    SessionConfigSelectOption::new("test-model", "Test model"),
                    SessionConfigSelectOption::new("other-model", "Other model"),
                ],
            )])),
            SessionUpdate::SessionInfoUpdate(
                SessionInfoUpdate::new()
                    .title("Test session".to_owned())
                    .updated_at("2025-01-01T00:00:00Z".to_owned()),
            ),
            SessionUpdate::UsageUpdate(UsageUpdate::new(1234, 200_000).cost(Cost::new(0.0123, "USD"))),
        ];
        for update in updates {
            self.send(update);
        }
    }

    async fn permission(&mut self) {
        // Like Claude in `auto` or opencode by default: in a mode that does
        // not ask, the agent just acts.
        let mode = self.session.mode.lock().unwrap().clone();
        if mode == "yolo" {
            self.message("acted without asking (mode yolo)".to_owned());
            return;
        }
        let tool_call = ToolCallUpdate::new(
            format!("perm-{}", self.agent.next_id()),
            ToolCallUpdateFields::new()
                .title("Write file".to_owned())
                .kind(ToolKind::Edit),
        );
        let request = RequestPermissionRequest::new(
            self.session.id.clone(),
            tool_call,
            vec![
                PermissionOption::new("allow", "Allow once", PermissionOptionKind::AllowOnce),
                PermissionOption::new("always", "Always allow", PermissionOptionKind::AllowAlways),
                PermissionOption::new("reject", "Reject", PermissionOptionKind::RejectOnce),
            ],
        );
        // This task is not the dispatch loop, so waiting here is safe.
        let text = match self.cx.send_request(request).block_task().await {
            Ok(response) => match response.outcome {
                RequestPermissionOutcome::Selected(selected) => format!("permission: selected {}", selected.option_id),
                RequestPermissionOutcome::Cancelled => "permission: cancelled".to_owned(),
                other => format!("permission: unexpected outcome {other:?}"),
            },
            Err(err) => format!("permission: error {}", err.message),
        };
        self.message(text);
    }

    fn message(&mut self, text: impl Into<String>) {
        self.send(SessionUpdate::AgentMessageChunk(text_chunk(text)));
    }

    /// Records and sends one typed update.
    fn send(&mut self, update: SessionUpdate) {
        let value = match serde_json::to_value(&update) {
            Ok(value) => value,
            Err(err) => {
                log!("oma-test-agent: cannot serialize an update: {err}");
                return;
            }
        };
        if let SessionUpdate::ToolCall(tool_call) = &update {
            // The schema leaves out the default status `pending`; real agents
            // send it, so write this update as JSON with the status spelled out.
            if value.get("status").is_none() {
                let mut value = value;
                value["status"] = serde_json::to_value(tool_call.status).expect("a status serializes");
                return self.send_raw_update(value);
            }
        }
        self.session.record(&value);
        let notification = SessionNotification::new(self.session.id.clone(), update);
        if let Err(err) = self.cx.send_notification(notification) {
            log!(
                "oma-test-agent: session {}: cannot send an update: {err:?}",
                self.session.id
            );
        }
    }

    /// Records and sends one update given as JSON (for kinds the schema lacks).
    fn send_raw_update(&mut self, update: serde_json::Value) {
        self.session.record(&update);
        let params = serde_json::json!({ "sessionId": self.session.id, "update": update });
        match UntypedMessage::new("session/update", params) {
            Ok(message) => self.notify(message),
            Err(err) => log!("oma-test-agent: cannot build a raw update: {err:?}"),
        }
    }

    fn notify(&mut self, message: UntypedMessage) {
        if let Err(err) = self.cx.send_notification(message) {
            log!(
                "oma-test-agent: session {}: cannot send a notification: {err:?}",
                self.session.id
            );
        }
    }

    /// Whether a session/cancel arrived since the turn started.
    fn is_cancelled(&mut self) -> bool {
        if !self.cancelled && self.cancel.has_changed().unwrap_or(false) {
            self.cancelled = true;
        }
        self.cancelled
    }

    /// Resolves once a session/cancel arrives (at once if one already did).
    async fn wait_cancel(&mut self) {
        if self.is_cancelled() {
            return;
        }
        if self.cancel.changed().await.is_ok() {
            self.cancelled = true;
        } else {
            // The session was replaced; nobody can cancel this turn any more.
            std::future::pending::<()>().await;
        }
    }
}

/// The text of a prompt: its text blocks joined with newlines.
/// The instructions block a client put first (it starts with OMA's
/// header), and the script text of the rest.
pub fn split_instructions(prompt: &[ContentBlock]) -> (Option<String>, String) {
    match prompt.first() {
        Some(ContentBlock::Text(text)) if text.text.starts_with(oma_proto::workspace::INSTRUCTIONS_HEADER) => {
            (Some(text.text.clone()), prompt_text(&prompt[1..]))
        }
        _ => (None, prompt_text(prompt)),
    }
}

pub fn prompt_text(prompt: &[ContentBlock]) -> String {
    prompt
        .iter()
        .filter_map(|block| match block {
            ContentBlock::Text(text) => Some(text.text.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn text_chunk(text: impl Into<String>) -> ContentChunk {
    ContentChunk::new(ContentBlock::from(text.into()))
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX))
}

/// The folder names under `$CLAUDE_CONFIG_DIR/skills`, sorted and joined with
/// commas, or `<none>`.
fn list_skills() -> String {
    let Some(config_dir) = std::env::var_os("CLAUDE_CONFIG_DIR") else {
        return "<none>".to_owned();
    };
    let Ok(entries) = std::fs::read_dir(std::path::Path::new(&config_dir).join("skills")) else {
        return "<none>".to_owned();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.path().is_dir())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    if names.is_empty() {
        return "<none>".to_owned();
    }
    names.sort();
    names.join(",")
}

/// Replaces whatever is at `link` (never following a link there) with a
/// symlink to `target`.
fn plant_symlink(link: &std::path::Path, target: &std::path::Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(link) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(link)?,
        Ok(_) => std::fs::remove_file(link)?,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    std::os::unix::fs::symlink(target, link)
}

/// Lower-case hex of a text's bytes.
fn hex_of(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}
