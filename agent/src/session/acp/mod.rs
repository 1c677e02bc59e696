//! One ACP session on one agent child process: the public API.
//!
//! The child's stdout is read line by line, and each line is teed:
//! a `session/update` notification is emitted as [`AcpOutput::Update`] with
//! the exact bytes of its `update` object (so kinds no schema knows are
//! relayed too), and every other line is then handed to the
//! `agent-client-protocol` connection, which does the typed protocol
//! (initialize, session/new|load, session/prompt, answering the agent's
//! requests). Because a line is emitted before the next one is handed on,
//! every update reaches the outputs before the prompt response that follows
//! it is processed.
//!
//! Failures end the running turn with an error code ([`ERROR_INVALID_OUTPUT`],
//! [`ERROR_CHILD_EXITED`], [`ERROR_ACP`], [`ERROR_IDLE_TIMEOUT`]); all but
//! [`ERROR_ACP`] also end the child, after which [`AcpOutput::Exited`] is the
//! last output.
//!
//! The parts, one job each: `shared` holds the state the others share,
//! `supervisor` owns the child and reads its stdout, `lines` splits and
//! classifies that output, `client` runs the typed ACP connection, `turn`
//! watches a running turn, `permissions` keeps the pending permission
//! requests, and `files` confines the agent's `fs/*` requests.

mod client;
mod files;
mod lines;
mod permissions;
mod shared;
mod supervisor;
mod turn;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

use agent_client_protocol::v1::ConnectionTo;
use agent_client_protocol::{Agent, UntypedMessage};
use futures::channel::mpsc as futures_mpsc;
use oma_proto::pb;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::process::{self, ChildSpec};
use shared::{Shared, TurnState};
use supervisor::Supervisor;

/// The longest line of output accepted from a child; a longer one ends the
/// turn with [`ERROR_INVALID_OUTPUT`] and the child is killed.
pub const MAX_LINE_BYTES: usize = 32 * 1024 * 1024;

/// The child printed something that is not a JSON line (or an overlong one).
pub const ERROR_INVALID_OUTPUT: &str = "invalid_output";
/// The child exited (or its connection ended) during the turn.
pub const ERROR_CHILD_EXITED: &str = "child_exited";
/// The agent answered the prompt with a JSON-RPC error; the child stays.
pub const ERROR_ACP: &str = "acp_error";
/// The child printed nothing for the idle timeout; it was killed.
pub const ERROR_IDLE_TIMEOUT: &str = "idle_timeout";
/// How long a mode or model switch may take to be answered.
const OPTION_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How to start one ACP session.
#[derive(Debug, Clone)]
pub struct AcpLaunch {
    /// Command, arguments and environment from the local agent table; cwd is
    /// the session directory.
    pub child: ChildSpec,
    pub stderr_log_file: Option<PathBuf>,
    /// Masks the child's stderr (in memory and in the file).
    pub stderr_masker: oma_proto::masking::Masker,
    pub advertise_read_text_file: bool,
    pub advertise_write_text_file: bool,
    /// Sent as `_meta: {"systemPrompt": {"append": ...}}` on session/new and
    /// session/load (understood by Claude).
    pub system_prompt_meta: Option<String>,
    /// The ACP `mcpServers` array as [`super::launch::decide`] built it from
    /// the owner's policy (`null` means none).
    pub mcp_servers: Value,
    /// Try session/load with this id first, when the agent advertises
    /// `loadSession`.
    pub resume_acp_session_id: Option<String>,
    /// initialize and session/new|load must finish within this.
    pub startup_timeout: Duration,
    /// During a turn: no output from the child for this long (while it is not
    /// waiting for a permission answer) ends the turn with an error and kills
    /// the child.
    pub idle_timeout: Duration,
}

/// What a session reports, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum AcpOutput {
    /// A `session/update` notification's `update` object, as the exact raw
    /// JSON text the child wrote.
    Update { raw_update: String },
    /// A `session/request_permission` request; answer it with
    /// [`AcpSession::answer_permission`]. `request_id` is unique within the
    /// session.
    PermissionRequest { request_id: String, raw_params: String },
    /// The end of a turn started with [`AcpSession::prompt`]. `error` is
    /// `(code, message)` when `stop_reason` is `ERROR`. Permission requests
    /// still pending are void from here (they were answered cancelled).
    TurnEnded {
        turn_id: String,
        stop_reason: pb::StopReason,
        error: Option<(String, String)>,
        usage_json: Option<String>,
    },
    /// A line for humans, e.g. that session/load failed.
    Log(String),
    /// The child is gone (crash, kill, EOF); no more outputs follow.
    Exited { description: String, stderr_tail: String },
}

/// What [`AcpSession::start`] learned.
#[derive(Debug, Clone, PartialEq)]
pub struct AcpStarted {
    pub acp_session_id: String,
    /// Whether session/load resumed the requested session.
    pub resumed: bool,
    pub agent_name: String,
    pub agent_version: String,
    /// The agent's `agentCapabilities` as JSON.
    pub capabilities_json: String,
    /// The modes and models the session offers (from session/new or
    /// session/load), and the config option that holds the model.
    pub options: pb::SessionOptions,
    pub model_config_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AcpError {
    #[error("cannot start the agent: {0}")]
    Spawn(#[source] io::Error),
    #[error("the session directory {} is not usable: {source}", path.display())]
    SessionDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the agent did not start within {after:?}{}", stderr_suffix(stderr_tail))]
    StartupTimeout { after: Duration, stderr_tail: String },
    #[error("the agent failed to start: {message}{}", stderr_suffix(stderr_tail))]
    Startup { message: String, stderr_tail: String },
    #[error("a turn is already running")]
    TurnRunning,
    #[error("the agent process is gone")]
    Exited,
    #[error("no pending permission request {0}")]
    UnknownPermission(String),
    #[error("permission request {request_id} has no option {option_id}")]
    UnknownOption { request_id: String, option_id: String },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

fn stderr_suffix(tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("; stderr: {tail}")
    }
}

/// One ACP session on one child. Dropping it kills the child's group.
pub struct AcpSession {
    /// The child's pid, which is also its process group id.
    pid: i32,
    shared: Arc<Shared>,
    cx: ConnectionTo<Agent>,
    acp_session_id: String,
    idle_timeout: Duration,
    supervisor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for AcpSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcpSession")
            .field("acp_session_id", &self.acp_session_id)
            .field("alive", &self.is_alive())
            .finish_non_exhaustive()
    }
}

impl AcpSession {
    /// Spawns the child, initializes it and opens the ACP session (loading
    /// `resume_acp_session_id` when possible). Outputs go to `outputs` from
    /// now on, including updates replayed by session/load.
    pub async fn start(
        launch: AcpLaunch,
        outputs: mpsc::Sender<AcpOutput>,
    ) -> Result<(AcpSession, AcpStarted), AcpError> {
        let cwd = tokio::fs::canonicalize(&launch.child.cwd)
            .await
            .map_err(|source| AcpError::SessionDir {
                path: launch.child.cwd.clone(),
                source,
            })?;
        let mut spec = launch.child.clone();
        spec.cwd = cwd.clone();
        let mut child = process::spawn_logged(&spec, launch.stderr_log_file.clone(), launch.stderr_masker.clone())
            .map_err(AcpError::Spawn)?;
        let pid = child.pid();
        let (Some(stdin), Some(stdout)) = (child.take_stdin(), child.take_stdout()) else {
            return Err(AcpError::Spawn(io::Error::other("the child's stdio is not piped")));
        };

        let (kills, kill_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::new(
            &launch,
            cwd.clone(),
            outputs,
            kills,
            child.stderr_log().clone(),
        ));

        let (to_connection, from_reader) = futures_mpsc::unbounded();
        let (cx_tx, cx_rx) = oneshot::channel();
        // The child's tasks log under the session's span.
        let connection =
            tokio::spawn(client::run_connection(shared.clone(), stdin, from_reader, cx_tx).in_current_span());
        shared.state().connection = Some(connection);
        let supervisor = Supervisor::new(shared.clone(), child, stdout, kill_rx, to_connection);
        let mut supervisor = Some(tokio::spawn(supervisor.run().in_current_span()));

        let handshake = client::handshake(&shared, &launch, &cwd, cx_rx);
        let result = tokio::time::timeout(launch.startup_timeout, handshake).await;
        let failure = match result {
            Ok(Ok((cx, started))) => {
                let mut state = shared.state();
                if state.gone {
                    AcpError::Startup {
                        message: "the agent process exited right after starting".to_owned(),
                        stderr_tail: String::new(),
                    }
                } else {
                    state.started = true;
                    drop(state);
                    let session = AcpSession {
                        pid,
                        shared,
                        cx,
                        acp_session_id: started.acp_session_id.clone(),
                        idle_timeout: launch.idle_timeout,
                        supervisor: supervisor.take(),
                    };
                    return Ok((session, started));
                }
            }
            Ok(Err(message)) => AcpError::Startup {
                message,
                stderr_tail: String::new(),
            },
            Err(_) => AcpError::StartupTimeout {
                after: launch.startup_timeout,
                stderr_tail: String::new(),
            },
        };
        // Startup failed: kill the group, then report with the stderr tail.
        shared.stop.cancel();
        if let Some(supervisor) = supervisor.take() {
            let _ = supervisor.await;
        }
        let stderr_tail = shared.stderr.tail();
        let exit = shared.state().exit_description.clone();
        Err(match failure {
            AcpError::Startup { message, .. } => AcpError::Startup {
                message: match exit {
                    Some(exit) if !message.contains(&exit) => format!("{message} ({exit})"),
                    _ => message,
                },
                stderr_tail,
            },
            AcpError::StartupTimeout { after, .. } => AcpError::StartupTimeout { after, stderr_tail },
            other => other,
        })
    }

    /// The child's pid (= its process group id).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The ACP session id (new or resumed).
    pub fn acp_session_id(&self) -> &str {
        &self.acp_session_id
    }

    /// Starts a turn with these ACP content blocks; its end arrives as
    /// [`AcpOutput::TurnEnded`] with this `turn_id`.
    pub fn prompt(&self, turn_id: String, prompt: Vec<Value>) -> Result<(), AcpError> {
        let message = UntypedMessage::new(
            "session/prompt",
            json!({ "sessionId": self.acp_session_id, "prompt": prompt }),
        )
        .map_err(|err| AcpError::InvalidRequest(err.to_string()))?;
        let mut state = self.shared.state();
        if state.gone {
            return Err(AcpError::Exited);
        }
        if state.turn.is_some() {
            return Err(AcpError::TurnRunning);
        }
        state.turn = Some(TurnState {
            turn_id: turn_id.clone(),
            cancel_requested: false,
        });
        state.last_activity = Instant::now();
        // Sent while the state is locked, so that a cancel() that follows is
        // queued after the prompt.
        let sent = self.cx.send_request(message);
        drop(state);
        let span = tracing::info_span!("turn", turn_id = %turn_id);
        tokio::spawn(turn::run_turn(self.shared.clone(), turn_id, sent, self.idle_timeout).instrument(span));
        Ok(())
    }

    /// Switches the session's mode (ACP `session/set_mode`).
    pub async fn set_mode(&self, mode_id: &str) -> Result<(), String> {
        let params = json!({ "sessionId": self.acp_session_id, "modeId": mode_id });
        self.call("session/set_mode", params).await.map(drop)
    }

    /// Sets a config option (ACP `session/set_config_option`); returns the
    /// agent's answer (its `configOptions` as they are now).
    pub async fn set_config_option(&self, config_id: &str, value: &str) -> Result<Value, String> {
        let params = json!({ "sessionId": self.acp_session_id, "configId": config_id, "value": value });
        self.call("session/set_config_option", params).await
    }

    /// A request to the agent and its answer, within the startup timeout's
    /// order of time (an agent that never answers must not hold the
    /// session's actor).
    async fn call(&self, method: &str, params: Value) -> Result<Value, String> {
        if self.shared.is_gone() {
            return Err("the agent process is gone".into());
        }
        match tokio::time::timeout(OPTION_CALL_TIMEOUT, client::request(&self.cx, method, params)).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "{method}: the agent did not answer within {OPTION_CALL_TIMEOUT:?}"
            )),
        }
    }

    /// Cancels the running turn (ACP `session/cancel`) and answers every
    /// pending permission request `cancelled`. The turn still ends with its
    /// own TurnEnded (normally `cancelled`).
    pub fn cancel(&self) {
        let running = {
            let mut state = self.shared.state();
            let gone = state.gone;
            match state.turn.as_mut() {
                Some(turn) if !gone => {
                    turn.cancel_requested = true;
                    true
                }
                _ => false,
            }
        };
        if running {
            let notification = UntypedMessage::new("session/cancel", json!({ "sessionId": self.acp_session_id }));
            match notification.map(|notification| self.cx.send_notification(notification)) {
                Ok(Ok(())) => {}
                Ok(Err(err)) | Err(err) => tracing::debug!("cannot send session/cancel: {err}"),
            }
        }
        self.shared.cancel_permissions();
    }

    /// Answers a permission request reported as [`AcpOutput::PermissionRequest`]:
    /// with one of its options, or `None` for cancelled.
    pub fn answer_permission(&self, request_id: &str, option_id: Option<String>) -> Result<(), AcpError> {
        self.shared.answer_permission(request_id, option_id)
    }

    /// Whether the child still runs (and can take prompts).
    pub fn is_alive(&self) -> bool {
        !self.shared.is_gone()
    }

    /// The last few KiB of the child's stderr.
    pub fn stderr_tail(&self) -> String {
        self.shared.stderr.tail()
    }

    /// Stops the child's process group (stdin closed, then SIGTERM, then
    /// SIGKILL within `grace`) and waits until it is reaped. A running turn
    /// ends with [`ERROR_CHILD_EXITED`] if the outputs receiver takes it at
    /// once.
    pub async fn shutdown(mut self, grace: Duration) {
        self.shared.state().shutdown_grace = Some(grace);
        self.shared.stop.cancel();
        if let Some(supervisor) = self.supervisor.take() {
            let _ = supervisor.await;
        }
    }
}

impl Drop for AcpSession {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::translate::update_from_raw;
    use pb::session_update::Typed;
    use std::path::Path;

    /// The scripted ACP agent of the integration tests, when it is built.
    fn test_agent() -> Option<PathBuf> {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
        let path = target.join("debug/oma-test-agent");
        if path.is_file() {
            Some(path)
        } else {
            eprintln!(
                "skipping: {} is not built (cargo build -p oma-integration-tests --bin oma-test-agent)",
                path.display()
            );
            None
        }
    }

    fn launch(agent: &Path, dir: &Path) -> AcpLaunch {
        AcpLaunch {
            child: ChildSpec {
                command: agent.to_owned(),
                args: Vec::new(),
                cwd: dir.to_owned(),
                env: Vec::new(),
            },
            stderr_log_file: None,
            stderr_masker: Default::default(),
            advertise_read_text_file: true,
            advertise_write_text_file: true,
            system_prompt_meta: None,
            mcp_servers: Value::Null,
            resume_acp_session_id: None,
            startup_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(30),
        }
    }

    struct Harness {
        session: AcpSession,
        started: AcpStarted,
        rx: mpsc::Receiver<AcpOutput>,
        dir: tempfile::TempDir,
    }

    async fn start_in(dir: tempfile::TempDir, tweak: impl FnOnce(&mut AcpLaunch)) -> Option<Result<Harness, AcpError>> {
        let agent = test_agent()?;
        let mut launch = launch(&agent, dir.path());
        tweak(&mut launch);
        let (tx, rx) = mpsc::channel(64);
        Some(AcpSession::start(launch, tx).await.map(|(session, started)| Harness {
            session,
            started,
            rx,
            dir,
        }))
    }

    async fn start(tweak: impl FnOnce(&mut AcpLaunch)) -> Option<Harness> {
        let dir = tempfile::tempdir().unwrap();
        Some(start_in(dir, tweak).await?.expect("the test agent starts"))
    }

    fn text(script: &str) -> Vec<Value> {
        vec![json!({ "type": "text", "text": script })]
    }

    async fn next(rx: &mut mpsc::Receiver<AcpOutput>) -> AcpOutput {
        tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("an output within 30 s")
            .expect("the outputs are open")
    }

    /// The outputs of a turn: what came before TurnEnded, and TurnEnded's fields.
    async fn turn(
        rx: &mut mpsc::Receiver<AcpOutput>,
        id: &str,
    ) -> (Vec<AcpOutput>, pb::StopReason, Option<(String, String)>) {
        let mut before = Vec::new();
        loop {
            match next(rx).await {
                AcpOutput::TurnEnded {
                    turn_id,
                    stop_reason,
                    error,
                    ..
                } => {
                    assert_eq!(turn_id, id);
                    return (before, stop_reason, error);
                }
                other => before.push(other),
            }
        }
    }

    /// The text of an agent_message_chunk update.
    fn message(output: &AcpOutput) -> Option<String> {
        let AcpOutput::Update { raw_update } = output else {
            return None;
        };
        match update_from_raw(raw_update).ok()?.typed? {
            Typed::AgentMessageChunk(pb::ContentChunk {
                content:
                    Some(pb::ContentBlock {
                        block: Some(pb::content_block::Block::Text(text)),
                    }),
            }) => Some(text.text),
            _ => None,
        }
    }

    fn messages(outputs: &[AcpOutput]) -> Vec<String> {
        outputs.iter().filter_map(message).collect()
    }

    async fn expect_exited(rx: &mut mpsc::Receiver<AcpOutput>) -> (String, String) {
        loop {
            match next(rx).await {
                AcpOutput::Exited {
                    description,
                    stderr_tail,
                } => {
                    let rest = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
                    assert!(matches!(rest, Err(_) | Ok(None)), "nothing follows Exited: {rest:?}");
                    return (description, stderr_tail);
                }
                AcpOutput::Log(_) => {}
                other => panic!("expected Exited, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn echo_then_end_turn() {
        let Some(mut h) = start(|_| {}).await else { return };
        assert_eq!(h.started.agent_name, "oma-test-agent");
        assert!(!h.started.agent_version.is_empty());
        assert!(!h.started.resumed);
        assert!(h.started.acp_session_id.starts_with("test-"));
        let capabilities: Value = serde_json::from_str(&h.started.capabilities_json).unwrap();
        assert_eq!(capabilities["loadSession"], json!(true));

        h.session.prompt("t1".into(), text("echo hi")).unwrap();
        let (before, stop, error) = turn(&mut h.rx, "t1").await;
        assert_eq!(messages(&before), vec!["hi".to_owned()]);
        assert_eq!(before.len(), 1);
        assert_eq!(stop, pb::StopReason::EndTurn);
        assert_eq!(error, None);

        // The child stays for the next turn.
        h.session.prompt("t2".into(), text("chunks 200\nstop refusal")).unwrap();
        let (before, stop, _) = turn(&mut h.rx, "t2").await;
        let expected: Vec<String> = (1..=200).map(|n| format!("chunk {n}\n")).collect();
        assert_eq!(messages(&before), expected, "every update, in order, before TurnEnded");
        assert_eq!(stop, pb::StopReason::Refusal);
        assert!(h.session.is_alive());
        h.session.shutdown(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn thousands_of_updates_keep_their_order() {
        let Some(mut h) = start(|_| {}).await else { return };
        let started = std::time::Instant::now();
        h.session.prompt("t".into(), text("chunks 20000")).unwrap();
        let (before, stop, _) = turn(&mut h.rx, "t").await;
        eprintln!("20000 updates relayed in {:?}", started.elapsed());
        assert_eq!(stop, pb::StopReason::EndTurn);
        assert_eq!(before.len(), 20_000);
        for (n, output) in before.iter().enumerate() {
            assert_eq!(message(output), Some(format!("chunk {}\n", n + 1)));
        }
        h.session.shutdown(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn every_kind_is_relayed_and_typed() {
        let Some(mut h) = start(|_| {}).await else { return };
        h.session.prompt("t".into(), text("all-kinds\nunknown-kind")).unwrap();
        let (before, stop, _) = turn(&mut h.rx, "t").await;
        assert_eq!(stop, pb::StopReason::EndTurn);
        let updates: Vec<pb::SessionUpdate> = before
            .iter()
            .map(|output| match output {
                AcpOutput::Update { raw_update } => update_from_raw(raw_update).unwrap(),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        let kinds: Vec<&str> = updates.iter().map(|update| update.kind.as_str()).collect();
        assert_eq!(
            kinds,
            vec![
                "user_message_chunk",
                "agent_message_chunk",
                "agent_thought_chunk",
                "tool_call",
                "tool_call_update",
                "plan",
                "available_commands_update",
                "current_mode_update",
                "config_option_update",
                "session_info_update",
                "usage_update",
                "oma_future_kind",
            ]
        );
        for update in &updates[..11] {
            assert!(update.typed.is_some(), "typed view of {}", update.raw_json);
        }
        let unknown = updates.last().unwrap();
        assert_eq!(unknown.typed, None);
        assert_eq!(
            unknown.raw_json,
            r#"{"sessionUpdate":"oma_future_kind","payload":{"x":1}}"#
        );
        h.session.shutdown(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn cancel_ends_a_sleeping_turn_quickly() {
        let Some(mut h) = start(|_| {}).await else { return };
        h.session
            .prompt("t".into(), text("echo start\nsleep 10000\necho never"))
            .unwrap();
        assert!(matches!(
            h.session.prompt("t-again".into(), text("echo no")),
            Err(AcpError::TurnRunning)
        ));
        assert_eq!(message(&next(&mut h.rx).await).as_deref(), Some("start"));
        let cancelled_at = std::time::Instant::now();
        h.session.cancel();
        let (before, stop, error) = turn(&mut h.rx, "t").await;
        assert!(before.is_empty(), "{before:?}");
        assert_eq!(stop, pb::StopReason::Cancelled);
        assert_eq!(error, None);
        assert!(cancelled_at.elapsed() < Duration::from_secs(3));
        // The session goes on.
        h.session.prompt("t2".into(), text("echo again")).unwrap();
        let (before, stop, _) = turn(&mut h.rx, "t2").await;
        assert_eq!(messages(&before), vec!["again".to_owned()]);
        assert_eq!(stop, pb::StopReason::EndTurn);
        h.session.shutdown(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn cancel_right_after_prompt_reaches_the_turn() {
        let Some(mut h) = start(|_| {}).await else { return };
        h.session.prompt("t".into(), text("sleep 10000")).unwrap();
        h.session.cancel();
        let (_, stop, _) = turn(&mut h.rx, "t").await;
        assert_eq!(stop, pb::StopReason::Cancelled);
        h.session.shutdown(Duration::from_secs(2)).await;
    }

    async fn permission_request(rx: &mut mpsc::Receiver<AcpOutput>) -> (String, String) {
        match next(rx).await {
            AcpOutput::PermissionRequest { request_id, raw_params } => (request_id, raw_params),
            other => panic!("expected a permission request, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn permission_is_asked_and_answered() {
        let Some(mut h) = start(|launch| launch.idle_timeout = Duration::from_millis(300)).await else {
            return;
        };
        h.session.prompt("t".into(), text("permission\npermission")).unwrap();
        let (request_id, raw_params) = permission_request(&mut h.rx).await;
        assert_eq!(request_id, "perm-1");
        let params: Value = serde_json::from_str(&raw_params).unwrap();
        let (tool_call, options) = crate::session::translate::permission_from_acp(&params);
        assert_eq!(tool_call.title, "Write file");
        assert_eq!(options.len(), 3);
        assert_eq!(params["sessionId"], json!(h.started.acp_session_id));

        // Waiting for a person does not count as idle.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(h.session.is_alive());
        assert!(matches!(
            h.session.answer_permission("perm-9", Some("allow".into())),
            Err(AcpError::UnknownPermission(_))
        ));
        assert!(matches!(
            h.session.answer_permission(&request_id, Some("maybe".into())),
            Err(AcpError::UnknownOption { .. })
        ));
        h.session.answer_permission(&request_id, Some("allow".into())).unwrap();
        assert!(matches!(
            h.session.answer_permission(&request_id, Some("allow".into())),
            Err(AcpError::UnknownPermission(_))
        ));
        assert_eq!(
            message(&next(&mut h.rx).await).as_deref(),
            Some("permission: selected allow")
        );
        let (second, _) = permission_request(&mut h.rx).await;
        assert_eq!(second, "perm-2");
        h.session.answer_permission(&second, None).unwrap();
        let (before, stop, _) = turn(&mut h.rx, "t").await;
        assert_eq!(messages(&before), vec!["permission: cancelled".to_owned()]);
        assert_eq!(stop, pb::StopReason::EndTurn);
        h.session.shutdown(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn cancel_answers_pending_permissions_cancelled() {
        let Some(mut h) = start(|_| {}).await else { return };
        h.session.prompt("t".into(), text("permission\necho after")).unwrap();
        let (request_id, _) = permission_request(&mut h.rx).await;
        h.session.cancel();
        let (before, stop, _) = turn(&mut h.rx, "t").await;
        assert_eq!(messages(&before), vec!["permission: cancelled".to_owned()]);
        assert_eq!(stop, pb::StopReason::Cancelled);
        assert!(h.session.answer_permission(&request_id, Some("allow".into())).is_err());
        h.session.shutdown(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn crash_ends_the_turn_then_exits() {
        let Some(mut h) = start(|launch| {
            launch
                .child
                .env
                .push(("OMA_TEST_AGENT_STDERR_LINES".into(), "2".into()));
        })
        .await
        else {
            return;
        };
        h.session.prompt("t".into(), text("echo before\ncrash 5")).unwrap();
        let (before, stop, error) = turn(&mut h.rx, "t").await;
        assert_eq!(messages(&before), vec!["before".to_owned()]);
        assert_eq!(stop, pb::StopReason::Error);
        let (code, message) = error.unwrap();
        assert_eq!(code, ERROR_CHILD_EXITED);
        assert!(message.contains("exit status: 5"), "{message}");
        assert!(message.contains("crashing with exit code 5"), "stderr tail: {message}");
        let (description, stderr_tail) = expect_exited(&mut h.rx).await;
        assert!(description.contains("exit status: 5"), "{description}");
        assert!(stderr_tail.contains("stderr line 2 of 2"), "{stderr_tail}");
        assert!(!h.session.is_alive());
        assert!(matches!(
            h.session.prompt("t2".into(), text("echo x")),
            Err(AcpError::Exited)
        ));
    }

    #[tokio::test]
    async fn garbage_and_invalid_utf8_are_invalid_output() {
        for (script, quoted) in [
            ("garbage", "this is not json {{{"),
            ("invalid-utf8", "this line is not UTF-8"),
        ] {
            let Some(mut h) = start(|_| {}).await else { return };
            h.session
                .prompt("t".into(), text(&format!("echo ok\n{script}\nsleep 5000")))
                .unwrap();
            let (before, stop, error) = turn(&mut h.rx, "t").await;
            assert_eq!(messages(&before), vec!["ok".to_owned()]);
            assert_eq!(stop, pb::StopReason::Error);
            let (code, message) = error.unwrap();
            assert_eq!(code, ERROR_INVALID_OUTPUT);
            assert!(message.contains(quoted), "{message}");
            let (description, _) = expect_exited(&mut h.rx).await;
            assert!(description.contains("killed"), "{description}");
            assert!(!h.session.is_alive());
        }
    }

    #[tokio::test]
    async fn prompt_error_keeps_the_child() {
        let Some(mut h) = start(|_| {}).await else { return };
        h.session
            .prompt("t".into(), text("error the model is on fire"))
            .unwrap();
        let (_, stop, error) = turn(&mut h.rx, "t").await;
        assert_eq!(stop, pb::StopReason::Error);
        let (code, message) = error.unwrap();
        assert_eq!(code, ERROR_ACP);
        assert!(message.contains("the model is on fire"), "{message}");
        assert!(h.session.is_alive());
        h.session.prompt("t2".into(), text("echo fine")).unwrap();
        let (before, stop, _) = turn(&mut h.rx, "t2").await;
        assert_eq!(messages(&before), vec!["fine".to_owned()]);
        assert_eq!(stop, pb::StopReason::EndTurn);
        h.session.shutdown(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn hang_hits_the_idle_timeout() {
        let Some(mut h) = start(|launch| launch.idle_timeout = Duration::from_millis(500)).await else {
            return;
        };
        // Output resets the idle timer: 10 chunks over ~0.9 s do not time out.
        h.session.prompt("t0".into(), text("chunks 10 10")).unwrap();
        let (_, stop, _) = turn(&mut h.rx, "t0").await;
        assert_eq!(stop, pb::StopReason::EndTurn);

        let started = std::time::Instant::now();
        h.session.prompt("t".into(), text("hang")).unwrap();
        let (_, stop, error) = turn(&mut h.rx, "t").await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(started.elapsed() >= Duration::from_millis(500));
        assert_eq!(stop, pb::StopReason::Error);
        assert_eq!(error.unwrap().0, ERROR_IDLE_TIMEOUT);
        assert!(!h.session.is_alive());
        expect_exited(&mut h.rx).await;
    }

    #[tokio::test]
    async fn big_updates_arrive_whole() {
        let Some(mut h) = start(|_| {}).await else { return };
        h.session.prompt("t".into(), text("big 10485760")).unwrap();
        let (before, stop, _) = turn(&mut h.rx, "t").await;
        assert_eq!(stop, pb::StopReason::EndTurn);
        let texts = messages(&before);
        assert_eq!(texts.len(), 1);
        assert_eq!(texts[0].len(), 10_485_760);
        assert!(texts[0].bytes().all(|byte| byte == b'x'));
        h.session.shutdown(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn overlong_lines_are_invalid_output() {
        let Some(mut h) = start(|_| {}).await else { return };
        h.session
            .prompt("t".into(), text(&format!("big {}", MAX_LINE_BYTES + 1)))
            .unwrap();
        let (_, stop, error) = turn(&mut h.rx, "t").await;
        assert_eq!(stop, pb::StopReason::Error);
        let (code, message) = error.unwrap();
        assert_eq!(code, ERROR_INVALID_OUTPUT);
        assert!(message.contains("longer than"), "{message}");
        expect_exited(&mut h.rx).await;
    }

    #[tokio::test]
    async fn resume_replays_through_session_load() {
        let Some(mut first) = start(|_| {}).await else { return };
        first.session.prompt("t".into(), text("echo remember me")).unwrap();
        turn(&mut first.rx, "t").await;
        let id = first.started.acp_session_id.clone();
        first.session.shutdown(Duration::from_secs(2)).await;

        let resume = id.clone();
        let mut second = start_in(first.dir, |launch| launch.resume_acp_session_id = Some(resume))
            .await
            .unwrap()
            .unwrap();
        assert!(second.started.resumed);
        assert_eq!(second.started.acp_session_id, id);
        let replayed = next(&mut second.rx).await;
        assert_eq!(message(&replayed).as_deref(), Some("remember me"));
        second.session.prompt("t2".into(), text("echo still here")).unwrap();
        let (before, _, _) = turn(&mut second.rx, "t2").await;
        assert_eq!(messages(&before), vec!["still here".to_owned()]);
        second.session.shutdown(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn failed_load_falls_back_to_a_new_session() {
        let Some(mut h) = start(|launch| launch.resume_acp_session_id = Some("test-00000000deadbeef".into())).await
        else {
            return;
        };
        assert!(!h.started.resumed);
        assert_ne!(h.started.acp_session_id, "test-00000000deadbeef");
        match next(&mut h.rx).await {
            AcpOutput::Log(line) => {
                // One "session/load failed", then the agent's own words.
                assert!(line.starts_with("session/load failed: "), "{line}");
                assert_eq!(line.matches("session/load failed").count(), 1, "{line}");
                assert!(
                    line.ends_with("started a new session; earlier context was lost"),
                    "{line}"
                );
            }
            other => panic!("expected a log line, got {other:?}"),
        }

        let Some(mut h) = start(|launch| {
            launch.resume_acp_session_id = Some("test-00000000deadbeef".into());
            launch
                .child
                .env
                .push(("OMA_TEST_AGENT_LOAD_SESSION".into(), "0".into()));
        })
        .await
        else {
            return;
        };
        assert!(!h.started.resumed);
        assert!(matches!(next(&mut h.rx).await, AcpOutput::Log(line) if line.contains("not supported")));
    }

    #[tokio::test]
    async fn environment_cwd_and_system_prompt() {
        let Some(mut h) = start(|launch| {
            launch.child.env.push(("CLAUDECODE".into(), "1".into()));
            launch.child.env.push(("OMA_TEST_VALUE".into(), "42".into()));
            launch.system_prompt_meta = Some("Be brief.".into());
        })
        .await
        else {
            return;
        };
        h.session
            .prompt(
                "t".into(),
                text("env CLAUDECODE\nenv OMA_TEST_VALUE\ncwd\nsystem-prompt"),
            )
            .unwrap();
        let (before, _, _) = turn(&mut h.rx, "t").await;
        let cwd = h.dir.path().canonicalize().unwrap();
        assert_eq!(
            messages(&before),
            vec![
                "env CLAUDECODE unset".to_owned(),
                "env OMA_TEST_VALUE=42".to_owned(),
                format!("cwd {}", cwd.display()),
                "system prompt: Be brief.".to_owned(),
            ]
        );
        h.session.shutdown(Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn startup_failures() {
        let Some(agent) = test_agent() else { return };
        let dir = tempfile::tempdir().unwrap();
        let mut slow = launch(&agent, dir.path());
        slow.child
            .env
            .push(("OMA_TEST_AGENT_STARTUP_DELAY_MS".into(), "10000".into()));
        slow.startup_timeout = Duration::from_millis(300);
        let (tx, _rx) = mpsc::channel(8);
        let started = std::time::Instant::now();
        let err = AcpSession::start(slow, tx).await.unwrap_err();
        assert!(
            matches!(&err, AcpError::StartupTimeout { stderr_tail, .. } if stderr_tail.contains("startup delay")),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));

        let mut missing = launch(Path::new("/nonexistent/acp-agent"), dir.path());
        missing.startup_timeout = Duration::from_secs(1);
        let (tx, _rx) = mpsc::channel(8);
        assert!(matches!(AcpSession::start(missing, tx).await, Err(AcpError::Spawn(_))));

        let mut no_dir = launch(&agent, &dir.path().join("missing"));
        no_dir.startup_timeout = Duration::from_secs(1);
        let (tx, _rx) = mpsc::channel(8);
        assert!(matches!(
            AcpSession::start(no_dir, tx).await,
            Err(AcpError::SessionDir { .. })
        ));

        // Not an ACP agent at all: it exits at once.
        let mut not_acp = launch(Path::new("/bin/sh"), dir.path());
        not_acp.child.args = vec!["-c".into(), "echo 'not an agent' >&2; exit 9".into()];
        let (tx, _rx) = mpsc::channel(8);
        let err = AcpSession::start(not_acp, tx).await.unwrap_err();
        assert!(
            matches!(&err, AcpError::Startup { message, stderr_tail } if message.contains("exit status: 9") && stderr_tail.contains("not an agent")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn shutdown_stops_an_agent_that_ignores_eof() {
        let Some(mut h) = start(|launch| {
            launch.child.env.push(("OMA_TEST_AGENT_IGNORE_EOF".into(), "1".into()));
        })
        .await
        else {
            return;
        };
        h.session.prompt("t".into(), text("sleep 60000")).unwrap();
        let started = std::time::Instant::now();
        h.session.shutdown(Duration::from_millis(400)).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        // The outputs end (TurnEnded/Exited are best effort during shutdown).
        while let Some(output) = tokio::time::timeout(Duration::from_secs(5), h.rx.recv()).await.unwrap() {
            assert!(
                matches!(output, AcpOutput::TurnEnded { .. } | AcpOutput::Exited { .. }),
                "{output:?}"
            );
        }
    }
}
