//! One ACP session on one agent child process.
//!
//! The child's stdout is read here, line by line, and each line is teed:
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

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tracing::Instrument as _;

use agent_client_protocol::v1::schema::{
    ReadTextFileRequest, ReadTextFileResponse, RequestPermissionOutcome, RequestPermissionRequest,
    RequestPermissionResponse, SelectedPermissionOutcome, WriteTextFileRequest, WriteTextFileResponse,
};
use agent_client_protocol::v1::{ConnectionTo, Responder};
use agent_client_protocol::{Agent, Client, Lines, RawJsonRpcId, UntypedMessage};
use futures::channel::mpsc as futures_mpsc;
use oma_proto::pb;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWriteExt as _, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::process::{self, AcpChild, ChildSpec};
use crate::session::translate::stop_reason_from_acp;

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

/// How much of an invalid line is quoted in the error.
const QUOTE_BYTES: usize = 200;
/// How long a child whose stdout closed gets to exit before it is signalled.
const EOF_GRACE: Duration = Duration::from_secs(2);
/// The largest file `fs/read_text_file` reads.
const MAX_READ_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// How to start one ACP session.
#[derive(Debug, Clone)]
pub struct AcpLaunch {
    /// Command, arguments and environment from the local agent table; cwd is
    /// the session directory.
    pub child: ChildSpec,
    pub stderr_log_file: Option<PathBuf>,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpStarted {
    pub acp_session_id: String,
    /// Whether session/load resumed the requested session.
    pub resumed: bool,
    pub agent_name: String,
    pub agent_version: String,
    /// The agent's `agentCapabilities` as JSON.
    pub capabilities_json: String,
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

/// State shared by the session handle, the supervisor, turn tasks and the
/// connection's handlers.
struct Shared {
    state: Mutex<State>,
    /// Held while a TurnEnded or Exited is emitted, so that Exited is last.
    emit_lock: tokio::sync::Mutex<()>,
    outputs: mpsc::Sender<AcpOutput>,
    /// Cancelled by shutdown or drop of the session.
    stop: CancellationToken,
    kills: mpsc::UnboundedSender<KillRequest>,
    /// The session directory, canonical.
    cwd: PathBuf,
    advertise_read: bool,
    advertise_write: bool,
    stderr: process::StderrLog,
}

struct State {
    turn: Option<TurnState>,
    /// The child is gone or going; no new turn may start.
    gone: bool,
    /// start() succeeded: Exited is reported from now on.
    started: bool,
    /// Why the child is gone, once it is.
    exit_description: Option<String>,
    last_activity: Instant,
    perms: HashMap<String, PendingPermission>,
    perm_by_rpc_id: HashMap<RawJsonRpcId, String>,
    next_perm: u64,
    shutdown_grace: Option<Duration>,
    connection: Option<JoinHandle<()>>,
}

struct TurnState {
    turn_id: String,
    cancel_requested: bool,
}

struct PendingPermission {
    option_ids: Vec<String>,
    /// Set once the connection dispatched the request.
    responder: Option<Responder<RequestPermissionResponse>>,
    /// An answer given before the responder arrived (`Some(None)` = cancelled).
    answer: Option<Option<String>>,
}

struct KillRequest {
    code: &'static str,
    message: String,
}

struct TurnEnd {
    stop_reason: pb::StopReason,
    error: Option<(String, String)>,
    usage_json: Option<String>,
}

impl TurnEnd {
    fn error(code: &str, message: impl Into<String>) -> Self {
        Self {
            stop_reason: pb::StopReason::Error,
            error: Some((code.to_owned(), message.into())),
            usage_json: None,
        }
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn touch(&self) {
        self.state().last_activity = Instant::now();
    }

    fn is_gone(&self) -> bool {
        self.state().gone
    }

    /// Emits one output; gives up when the session is being stopped and the
    /// receiver does not take it at once.
    async fn emit(&self, output: AcpOutput) {
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
    async fn end_turn(&self, turn_id: Option<&str>, end: TurnEnd) -> bool {
        let _emitting = self.emit_lock.lock().await;
        self.end_turn_locked(turn_id, end).await
    }

    /// [`Self::end_turn`] with the emit lock already held.
    async fn end_turn_locked(&self, turn_id: Option<&str>, end: TurnEnd) -> bool {
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

    /// Whether a turn runs whose cancel was requested.
    fn turn_cancelled(state: &State) -> bool {
        state.turn.as_ref().is_some_and(|turn| turn.cancel_requested)
    }

    /// The reader saw a `session/request_permission` request: register it
    /// (before the connection dispatches it) and report it, unless the turn
    /// is being cancelled, in which case it is answered cancelled.
    async fn permission_seen(&self, rpc_id: RawJsonRpcId, raw_params: &str) {
        let request: RequestPermissionRequest = match serde_json::from_str(raw_params) {
            Ok(request) => request,
            Err(err) => {
                // The connection answers it with an invalid-params error.
                self.emit(AcpOutput::Log(format!(
                    "the agent sent a malformed session/request_permission ({err}): {}",
                    quote(raw_params.as_bytes())
                )))
                .await;
                return;
            }
        };
        let option_ids = request.options.iter().map(|o| o.option_id.to_string()).collect();
        let request_id = {
            let mut state = self.state();
            state.next_perm += 1;
            let request_id = format!("perm-{}", state.next_perm);
            let cancelled = Self::turn_cancelled(&state);
            state.perm_by_rpc_id.insert(rpc_id, request_id.clone());
            state.perms.insert(
                request_id.clone(),
                PendingPermission {
                    option_ids,
                    responder: None,
                    answer: cancelled.then_some(None),
                },
            );
            if cancelled {
                return;
            }
            request_id
        };
        self.emit(AcpOutput::PermissionRequest {
            request_id,
            raw_params: raw_params.to_owned(),
        })
        .await;
    }

    /// The connection dispatched a permission request: answer it if the
    /// answer is known, else keep its responder until it is.
    fn permission_dispatched(
        self: &Arc<Self>,
        request: RequestPermissionRequest,
        responder: Responder<RequestPermissionResponse>,
    ) {
        let mut state = self.state();
        let known = state.perm_by_rpc_id.remove(responder.raw_id());
        if let Some(request_id) = known
            && let Some(pending) = state.perms.get_mut(&request_id)
        {
            match pending.answer.take() {
                Some(answer) => {
                    state.perms.remove(&request_id);
                    drop(state);
                    respond_permission(responder, answer);
                }
                None => pending.responder = Some(responder),
            }
            return;
        }
        // Not seen by the reader (e.g. a `null` id): report it now.
        if Self::turn_cancelled(&state) {
            drop(state);
            respond_permission(responder, None);
            return;
        }
        state.next_perm += 1;
        let request_id = format!("perm-{}", state.next_perm);
        state.perms.insert(
            request_id.clone(),
            PendingPermission {
                option_ids: request.options.iter().map(|o| o.option_id.to_string()).collect(),
                responder: Some(responder),
                answer: None,
            },
        );
        drop(state);
        let raw_params = serde_json::to_string(&request).unwrap_or_default();
        let shared = self.clone();
        tokio::spawn(async move {
            shared
                .emit(AcpOutput::PermissionRequest { request_id, raw_params })
                .await;
        });
    }

    /// Answers every pending permission request with `cancelled`.
    fn cancel_permissions(&self) {
        let responders: Vec<_> = {
            let mut state = self.state();
            let mut responders = Vec::new();
            state.perms.retain(|_, pending| {
                if let Some(responder) = pending.responder.take() {
                    responders.push(responder);
                    false
                } else {
                    pending.answer.get_or_insert(None);
                    true
                }
            });
            responders
        };
        for responder in responders {
            respond_permission(responder, None);
        }
    }
}

fn respond_permission(responder: Responder<RequestPermissionResponse>, option_id: Option<String>) {
    let outcome = match option_id {
        Some(option_id) => RequestPermissionOutcome::Selected(SelectedPermissionOutcome::new(option_id)),
        None => RequestPermissionOutcome::Cancelled,
    };
    if let Err(err) = responder.respond(RequestPermissionResponse::new(outcome)) {
        tracing::debug!("cannot answer a permission request: {err}");
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
        let mut child = process::spawn_logged(&spec, launch.stderr_log_file.clone()).map_err(AcpError::Spawn)?;
        let pid = child.pid();
        let (Some(stdin), Some(stdout)) = (child.take_stdin(), child.take_stdout()) else {
            return Err(AcpError::Spawn(io::Error::other("the child's stdio is not piped")));
        };

        let (kills, kill_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
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
            cwd: cwd.clone(),
            advertise_read: launch.advertise_read_text_file,
            advertise_write: launch.advertise_write_text_file,
            stderr: child.stderr_log().clone(),
        });

        let (to_connection, from_reader) = futures_mpsc::unbounded();
        let (cx_tx, cx_rx) = oneshot::channel();
        // The child's tasks log under the session's span.
        let connection = tokio::spawn(run_connection(shared.clone(), stdin, from_reader, cx_tx).in_current_span());
        shared.state().connection = Some(connection);
        let supervisor = Supervisor {
            shared: shared.clone(),
            child,
            reader: LineReader::new(stdout, MAX_LINE_BYTES),
            kill_rx,
            to_connection,
        };
        let mut supervisor = Some(tokio::spawn(supervisor.run().in_current_span()));

        let handshake = handshake(&shared, &launch, &cwd, cx_rx);
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

    /// The ACP session id (new or resumed).
    /// The child's pid (= its process group id).
    pub fn pid(&self) -> i32 {
        self.pid
    }

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
        tokio::spawn(run_turn(self.shared.clone(), turn_id, sent, self.idle_timeout).instrument(span));
        Ok(())
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
        let mut state = self.shared.state();
        let Some(pending) = state.perms.get_mut(request_id) else {
            return Err(AcpError::UnknownPermission(request_id.to_owned()));
        };
        if pending.answer.is_some() {
            return Err(AcpError::UnknownPermission(request_id.to_owned()));
        }
        if let Some(option_id) = &option_id
            && !pending.option_ids.contains(option_id)
        {
            return Err(AcpError::UnknownOption {
                request_id: request_id.to_owned(),
                option_id: option_id.clone(),
            });
        }
        state.last_activity = Instant::now();
        let Some(pending) = state.perms.get_mut(request_id) else {
            return Err(AcpError::UnknownPermission(request_id.to_owned()));
        };
        match pending.responder.take() {
            Some(responder) => {
                state.perms.remove(request_id);
                drop(state);
                respond_permission(responder, option_id);
            }
            None => pending.answer = Some(option_id),
        }
        Ok(())
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

/// initialize, then session/load or session/new.
async fn handshake(
    shared: &Shared,
    launch: &AcpLaunch,
    cwd: &Path,
    cx_rx: oneshot::Receiver<ConnectionTo<Agent>>,
) -> Result<(ConnectionTo<Agent>, AcpStarted), String> {
    let cx = cx_rx
        .await
        .map_err(|_| "the ACP connection ended before it started".to_owned())?;
    let init = request(
        &cx,
        "initialize",
        json!({
            "protocolVersion": 1,
            "clientCapabilities": {
                "fs": {
                    "readTextFile": launch.advertise_read_text_file,
                    "writeTextFile": launch.advertise_write_text_file,
                },
                "terminal": false,
            },
            "clientInfo": { "name": "oma-agent", "version": env!("CARGO_PKG_VERSION") },
        }),
    )
    .await?;
    let capabilities = init.get("agentCapabilities").cloned().unwrap_or_else(|| json!({}));
    let can_load = capabilities.get("loadSession").and_then(Value::as_bool) == Some(true);
    let info = |key: &str| {
        init.get("agentInfo")
            .and_then(|info| info.get(key))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };

    let mut params = serde_json::Map::new();
    params.insert("cwd".into(), json!(cwd));
    let mcp_servers = match &launch.mcp_servers {
        Value::Null => json!([]),
        servers => servers.clone(),
    };
    params.insert("mcpServers".into(), mcp_servers);
    if let Some(prompt) = &launch.system_prompt_meta {
        params.insert("_meta".into(), json!({ "systemPrompt": { "append": prompt } }));
    }

    let mut resumed = None;
    if let Some(id) = &launch.resume_acp_session_id {
        if can_load {
            let mut load = params.clone();
            load.insert("sessionId".into(), json!(id));
            match request(&cx, "session/load", Value::Object(load)).await {
                Ok(_) => resumed = Some(id.clone()),
                Err(err) if shared.is_gone() => return Err(err),
                Err(err) => {
                    shared
                        .emit(AcpOutput::Log(format!(
                            "session/load failed ({err}): started a new session; earlier context was lost"
                        )))
                        .await;
                }
            }
        } else {
            shared
                .emit(AcpOutput::Log(
                    "session/load is not supported by this agent: started a new session; earlier context was lost"
                        .to_owned(),
                ))
                .await;
        }
    }
    let (acp_session_id, resumed) = match resumed {
        Some(id) => (id, true),
        None => {
            let created = request(&cx, "session/new", Value::Object(params)).await?;
            (crate::session::translate::session_id_from_acp(&created)?, false)
        }
    };
    Ok((
        cx,
        AcpStarted {
            acp_session_id,
            resumed,
            agent_name: info("name"),
            agent_version: info("version"),
            capabilities_json: capabilities.to_string(),
        },
    ))
}

/// Sends a request and waits for its result (never call this in a handler).
async fn request(cx: &ConnectionTo<Agent>, method: &str, params: Value) -> Result<Value, String> {
    let message = UntypedMessage::new(method, params).map_err(|err| format!("{method}: {}", rpc_error_text(&err)))?;
    cx.send_request(message)
        .block_task()
        .await
        .map_err(|err| format!("{method} failed: {}", rpc_error_text(&err)))
}

fn rpc_error_text(err: &agent_client_protocol::Error) -> String {
    let mut text = format!("{} (code {})", err.message, i32::from(err.code));
    if let Some(data) = &err.data {
        text.push_str(&format!(": {data}"));
    }
    text
}

/// Runs the typed ACP connection over the lines the supervisor hands on and
/// the child's stdin. When it ends, the supervisor is told to stop the child.
async fn run_connection(
    shared: Arc<Shared>,
    stdin: tokio::process::ChildStdin,
    from_reader: futures_mpsc::UnboundedReceiver<io::Result<String>>,
    cx_tx: oneshot::Sender<ConnectionTo<Agent>>,
) {
    let to_child = futures::sink::unfold(stdin, async |mut stdin, line: String| {
        let mut bytes = line.into_bytes();
        bytes.push(b'\n');
        stdin.write_all(&bytes).await?;
        stdin.flush().await?;
        Ok::<_, io::Error>(stdin)
    });
    let transport = Lines::new(to_child, from_reader);
    let result = Client
        .v1()
        .name("oma-agent")
        .on_receive_request(
            {
                let shared = shared.clone();
                async move |request: RequestPermissionRequest,
                            responder: Responder<RequestPermissionResponse>,
                            _cx: ConnectionTo<Agent>| {
                    shared.permission_dispatched(request, responder);
                    Ok(())
                }
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            {
                let shared = shared.clone();
                async move |request: ReadTextFileRequest,
                            responder: Responder<ReadTextFileResponse>,
                            _cx: ConnectionTo<Agent>| {
                    if !shared.advertise_read {
                        return responder.respond_with_error(agent_client_protocol::Error::method_not_found());
                    }
                    let cwd = shared.cwd.clone();
                    tokio::spawn(async move {
                        let result = read_text_file(&cwd, &request).await;
                        let _ = responder.respond_with_result(result);
                    });
                    Ok(())
                }
            },
            agent_client_protocol::on_receive_request!(),
        )
        .on_receive_request(
            {
                let shared = shared.clone();
                async move |request: WriteTextFileRequest,
                            responder: Responder<WriteTextFileResponse>,
                            _cx: ConnectionTo<Agent>| {
                    if !shared.advertise_write {
                        return responder.respond_with_error(agent_client_protocol::Error::method_not_found());
                    }
                    let cwd = shared.cwd.clone();
                    tokio::spawn(async move {
                        let result = write_text_file(&cwd, &request).await;
                        let _ = responder.respond_with_result(result);
                    });
                    Ok(())
                }
            },
            agent_client_protocol::on_receive_request!(),
        )
        // Other notifications were relayed (or ignored) by the reader already.
        .on_receive_notification(
            async |_notification: UntypedMessage, _cx: ConnectionTo<Agent>| Ok(()),
            agent_client_protocol::on_receive_notification!(),
        )
        .connect_with(transport, async move |cx: ConnectionTo<Agent>| {
            let _ = cx_tx.send(cx.clone());
            cx.incoming_closed().await;
            Ok(())
        })
        .await;
    let message = match result {
        Ok(()) => "the ACP connection closed".to_owned(),
        Err(err) => format!("the ACP connection failed: {err}"),
    };
    let _ = shared.kills.send(KillRequest {
        code: ERROR_CHILD_EXITED,
        message,
    });
}

/// Waits for a prompt's result, watching the idle timeout, and ends the turn.
async fn run_turn(
    shared: Arc<Shared>,
    turn_id: String,
    sent: agent_client_protocol::v1::SentRequest<Value>,
    idle: Duration,
) {
    let response = sent.block_task();
    tokio::pin!(response);
    let result = loop {
        let (deadline, expired) = {
            let state = shared.state();
            let waiting = state.perms.values().any(|pending| pending.answer.is_none());
            let now = Instant::now();
            if waiting {
                (later(now, idle), false)
            } else {
                let deadline = later(state.last_activity, idle);
                (deadline, deadline <= now)
            }
        };
        if expired {
            break None;
        }
        tokio::select! {
            result = &mut response => break Some(result),
            () = tokio::time::sleep_until(deadline) => {}
            () = shared.stop.cancelled() => return,
        }
    };
    let end = match result {
        None => {
            shared.state().gone = true;
            let message = format!("the agent printed nothing for {idle:?}; its process was killed");
            shared
                .end_turn(Some(&turn_id), TurnEnd::error(ERROR_IDLE_TIMEOUT, message.clone()))
                .await;
            let _ = shared.kills.send(KillRequest {
                code: ERROR_IDLE_TIMEOUT,
                message,
            });
            return;
        }
        Some(Ok(response)) => match response.get("stopReason").and_then(Value::as_str) {
            Some(reason) => TurnEnd {
                stop_reason: stop_reason_from_acp(reason),
                error: None,
                usage_json: response
                    .get("usage")
                    .filter(|usage| !usage.is_null())
                    .map(Value::to_string),
            },
            None => TurnEnd::error(
                ERROR_ACP,
                format!(
                    "the prompt response has no stopReason: {}",
                    quote(response.to_string().as_bytes())
                ),
            ),
        },
        Some(Err(err)) => {
            if shared.is_gone()
                || agent_client_protocol::is_incoming_transport_closed(&err)
                || agent_client_protocol::is_connection_terminated(&err)
            {
                // The supervisor ends the turn with the child's exit.
                return;
            }
            TurnEnd::error(ERROR_ACP, rpc_error_text(&err))
        }
    };
    shared.end_turn(Some(&turn_id), end).await;
}

/// `at + after`, saturating at about a year from `at` (an idle timeout may
/// be set huge to mean "never").
fn later(at: Instant, after: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(365 * 24 * 3600);
    at.checked_add(after.min(FAR)).unwrap_or(at)
}

/// Why the supervisor stopped reading.
enum EndCause {
    Eof,
    ReadError(io::Error),
    InvalidOutput(String),
    Kill(KillRequest),
    Stop,
}

/// Owns the child: reads its stdout, tees each line, and stops the child.
struct Supervisor {
    shared: Arc<Shared>,
    child: AcpChild,
    reader: LineReader<tokio::process::ChildStdout>,
    kill_rx: mpsc::UnboundedReceiver<KillRequest>,
    to_connection: futures_mpsc::UnboundedSender<io::Result<String>>,
}

impl Supervisor {
    async fn run(mut self) {
        let cause = loop {
            tokio::select! {
                biased;
                () = self.shared.stop.cancelled() => break EndCause::Stop,
                Some(kill) = self.kill_rx.recv() => break EndCause::Kill(kill),
                read = self.reader.next_line() => match read {
                    Ok(ReadLine::Line(line)) => {
                        if let Err(cause) = self.handle_line(line).await {
                            break cause;
                        }
                    }
                    Ok(ReadLine::TooLong) => {
                        break EndCause::InvalidOutput(format!(
                            "the agent printed a line longer than {MAX_LINE_BYTES} bytes"
                        ));
                    }
                    Ok(ReadLine::Eof) => break EndCause::Eof,
                    Err(err) => break EndCause::ReadError(err),
                },
            }
        };
        self.finish(cause).await;
    }

    /// Tees one line: updates and permission requests are reported, and
    /// everything but updates goes on to the connection.
    async fn handle_line(&mut self, line: Vec<u8>) -> Result<(), EndCause> {
        self.shared.touch();
        let line = match String::from_utf8(line) {
            Ok(line) => line,
            Err(err) => {
                return Err(EndCause::InvalidOutput(format!(
                    "the agent printed a line that is not UTF-8: {}",
                    quote(err.as_bytes())
                )));
            }
        };
        if line.trim().is_empty() {
            return Ok(());
        }
        match classify(&line) {
            Line::NotJson => {
                return Err(EndCause::InvalidOutput(format!(
                    "the agent printed a line that is not JSON: {}",
                    quote(line.as_bytes())
                )));
            }
            Line::Update(raw_update) => {
                self.shared.emit(AcpOutput::Update { raw_update }).await;
                self.shared.touch();
                return Ok(());
            }
            Line::MalformedUpdate => {
                self.shared
                    .emit(AcpOutput::Log(format!(
                        "ignored a session/update without an update object: {}",
                        quote(line.as_bytes())
                    )))
                    .await;
                return Ok(());
            }
            Line::Permission { id, raw_params } => {
                self.shared.permission_seen(id, &raw_params).await;
                self.shared.touch();
            }
            Line::Other => {}
        }
        // The connection may be gone already; the child is then being stopped.
        let _ = self.to_connection.unbounded_send(Ok(line));
        Ok(())
    }

    async fn finish(mut self, cause: EndCause) {
        self.shared.state().gone = true;
        // Pending requests fail from here; turn tasks leave the turn to us.
        self.to_connection.close_channel();
        let status = match &cause {
            EndCause::Eof | EndCause::ReadError(_) => self.child.terminate(EOF_GRACE).await,
            EndCause::Kill(kill) if kill.code == ERROR_CHILD_EXITED => self.child.terminate(EOF_GRACE).await,
            EndCause::Stop => {
                let grace = self.shared.state().shutdown_grace;
                match grace {
                    Some(grace) => self.child.terminate(grace).await,
                    None => self.child.kill().await,
                }
            }
            EndCause::InvalidOutput(_) | EndCause::Kill(_) => self.child.kill().await,
        };
        let status = match status {
            Some(status) => status.to_string(),
            None => "exit status unknown".to_owned(),
        };
        let stderr_tail = self.child.stderr_log().tail();
        let with_tail = |message: String| {
            if stderr_tail.is_empty() {
                message
            } else {
                format!("{message}; stderr: {stderr_tail}")
            }
        };
        let (turn_end, description) = match cause {
            EndCause::Eof => {
                let message = format!("the agent process exited ({status})");
                (TurnEnd::error(ERROR_CHILD_EXITED, with_tail(message.clone())), message)
            }
            EndCause::ReadError(err) => {
                let message = format!("cannot read the agent's output ({err}); the agent process ended ({status})");
                (TurnEnd::error(ERROR_CHILD_EXITED, with_tail(message.clone())), message)
            }
            EndCause::InvalidOutput(message) => {
                let description = format!("{message}; the agent process was killed ({status})");
                (TurnEnd::error(ERROR_INVALID_OUTPUT, message), description)
            }
            EndCause::Kill(KillRequest { code, message }) => {
                let description = format!("{message}; the agent process ended ({status})");
                let turn_end = if code == ERROR_CHILD_EXITED {
                    TurnEnd::error(code, with_tail(description.clone()))
                } else {
                    TurnEnd::error(code, message)
                };
                (turn_end, description)
            }
            EndCause::Stop => {
                let message = format!("the session was shut down; the agent process ended ({status})");
                (TurnEnd::error(ERROR_CHILD_EXITED, message.clone()), message)
            }
        };
        let started = {
            let mut state = self.shared.state();
            state.exit_description = Some(description.clone());
            state.perms.clear();
            state.perm_by_rpc_id.clear();
            if let Some(connection) = state.connection.take() {
                connection.abort();
            }
            state.started
        };
        if !started {
            return;
        }
        let _emitting = self.shared.emit_lock.lock().await;
        self.shared.end_turn_locked(None, turn_end).await;
        self.shared
            .emit(AcpOutput::Exited {
                description,
                stderr_tail,
            })
            .await;
    }
}

/// What a line of output is.
#[derive(Debug, PartialEq)]
enum Line {
    NotJson,
    /// A session/update notification; its `update` object's raw text.
    Update(String),
    /// A session/update notification without an `update` object.
    MalformedUpdate,
    Permission {
        id: RawJsonRpcId,
        raw_params: String,
    },
    /// Anything else valid JSON: for the connection.
    Other,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct UpdateParams<'a> {
    #[serde(borrow, default)]
    update: Option<&'a RawValue>,
}

fn classify(line: &str) -> Line {
    let is_json = || serde_json::from_str::<serde::de::IgnoredAny>(line).is_ok();
    // A JSON-RPC message is an object; anything else is for the connection
    // to reject (if it is JSON at all).
    if !line.trim_start().starts_with('{') {
        return if is_json() { Line::Other } else { Line::NotJson };
    }
    let Ok(envelope) = serde_json::from_str::<Envelope<'_>>(line) else {
        return if is_json() { Line::Other } else { Line::NotJson };
    };
    match (envelope.method.as_deref(), envelope.id, envelope.params) {
        (Some("session/update"), None, params) => {
            match params.and_then(|params| serde_json::from_str::<UpdateParams<'_>>(params.get()).ok()) {
                Some(UpdateParams { update: Some(update) }) => Line::Update(update.get().to_owned()),
                _ => Line::MalformedUpdate,
            }
        }
        (Some("session/request_permission"), Some(id), Some(params)) => {
            match serde_json::from_str::<RawJsonRpcId>(id.get()) {
                Ok(id) => Line::Permission {
                    id,
                    raw_params: params.get().to_owned(),
                },
                Err(_) => Line::Other,
            }
        }
        _ => Line::Other,
    }
}

/// The first [`QUOTE_BYTES`] of a line, quoted.
fn quote(bytes: &[u8]) -> String {
    let cut = bytes.len().min(QUOTE_BYTES);
    let text = String::from_utf8_lossy(&bytes[..cut]);
    if bytes.len() > cut {
        format!("{text:?} (first {cut} of {} bytes)", bytes.len())
    } else {
        format!("{text:?}")
    }
}

enum ReadLine {
    Line(Vec<u8>),
    TooLong,
    Eof,
}

/// Splits a byte stream into lines of at most `max` bytes. Cancel safe: a
/// partly read line stays in the buffer.
struct LineReader<R> {
    inner: BufReader<R>,
    buf: Vec<u8>,
    max: usize,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    fn new(inner: R, max: usize) -> Self {
        Self {
            inner: BufReader::with_capacity(64 * 1024, inner),
            buf: Vec::new(),
            max,
        }
    }

    /// The next line without its `\n` (and `\r`); a last line without a
    /// newline counts too.
    async fn next_line(&mut self) -> io::Result<ReadLine> {
        loop {
            let available = self.inner.fill_buf().await?;
            if available.is_empty() {
                if self.buf.is_empty() {
                    return Ok(ReadLine::Eof);
                }
                return Ok(ReadLine::Line(std::mem::take(&mut self.buf)));
            }
            let newline = available.iter().position(|&byte| byte == b'\n');
            let chunk = &available[..newline.unwrap_or(available.len())];
            if self.buf.len() + chunk.len() > self.max {
                return Ok(ReadLine::TooLong);
            }
            self.buf.extend_from_slice(chunk);
            let consumed = newline.map_or(chunk.len(), |at| at + 1);
            self.inner.consume(consumed);
            if newline.is_some() {
                let mut line = std::mem::take(&mut self.buf);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(ReadLine::Line(line));
            }
        }
    }
}

fn fs_error(message: impl Into<String>) -> agent_client_protocol::Error {
    agent_client_protocol::Error::new(-32602, message.into())
}

fn io_fs_error(path: &Path, err: &io::Error) -> agent_client_protocol::Error {
    let code = if err.kind() == io::ErrorKind::NotFound {
        -32002
    } else {
        -32603
    };
    agent_client_protocol::Error::new(code, format!("{}: {err}", path.display()))
}

/// Resolves a path an agent asked for: absolute, without `..`, inside the
/// session directory `cwd` (canonical) also after resolving symlinks. For a
/// write, missing parent directories inside `cwd` are created.
async fn confine(cwd: &Path, requested: &Path, for_write: bool) -> Result<PathBuf, agent_client_protocol::Error> {
    if !requested.is_absolute() {
        return Err(fs_error(format!("{}: the path must be absolute", requested.display())));
    }
    if requested.components().any(|part| matches!(part, Component::ParentDir)) {
        return Err(fs_error(format!(
            "{}: the path must not contain `..`",
            requested.display()
        )));
    }
    let outside = || {
        fs_error(format!(
            "{}: the path is outside the session directory {}",
            requested.display(),
            cwd.display()
        ))
    };
    if !requested.starts_with(cwd) {
        return Err(outside());
    }
    match tokio::fs::canonicalize(requested).await {
        Ok(real) if real.starts_with(cwd) => Ok(real),
        Ok(_) => Err(outside()),
        Err(err) if err.kind() == io::ErrorKind::NotFound && for_write => {
            if tokio::fs::symlink_metadata(requested).await.is_ok() {
                return Err(fs_error(format!(
                    "{}: the path is a dangling symlink",
                    requested.display()
                )));
            }
            let (Some(parent), Some(name)) = (requested.parent(), requested.file_name()) else {
                return Err(outside());
            };
            // The nearest existing ancestor must be inside before anything is created.
            let mut ancestor = parent;
            let real_ancestor = loop {
                match tokio::fs::canonicalize(ancestor).await {
                    Ok(real) => break real,
                    Err(err) if err.kind() == io::ErrorKind::NotFound => match ancestor.parent() {
                        Some(up) => ancestor = up,
                        None => return Err(io_fs_error(requested, &err)),
                    },
                    Err(err) => return Err(io_fs_error(requested, &err)),
                }
            };
            if !real_ancestor.starts_with(cwd) {
                return Err(outside());
            }
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|err| io_fs_error(parent, &err))?;
            let real_parent = tokio::fs::canonicalize(parent)
                .await
                .map_err(|err| io_fs_error(parent, &err))?;
            if !real_parent.starts_with(cwd) {
                return Err(outside());
            }
            Ok(real_parent.join(name))
        }
        Err(err) => Err(io_fs_error(requested, &err)),
    }
}

async fn read_text_file(
    cwd: &Path,
    request: &ReadTextFileRequest,
) -> Result<ReadTextFileResponse, agent_client_protocol::Error> {
    let path = confine(cwd, &request.path, false).await?;
    let metadata = tokio::fs::metadata(&path)
        .await
        .map_err(|err| io_fs_error(&path, &err))?;
    if !metadata.is_file() {
        return Err(fs_error(format!("{}: not a file", request.path.display())));
    }
    if metadata.len() > MAX_READ_FILE_BYTES {
        return Err(fs_error(format!(
            "{}: the file is larger than {MAX_READ_FILE_BYTES} bytes",
            request.path.display()
        )));
    }
    let bytes = tokio::fs::read(&path).await.map_err(|err| io_fs_error(&path, &err))?;
    let text = String::from_utf8(bytes).map_err(|_| fs_error(format!("{}: not UTF-8 text", request.path.display())))?;
    if request.line.is_none() && request.limit.is_none() {
        return Ok(ReadTextFileResponse::new(text));
    }
    let skip = request.line.map_or(0, |line| line.saturating_sub(1)) as usize;
    let take = request.limit.map_or(usize::MAX, |limit| limit as usize);
    let selected: String = text.split_inclusive('\n').skip(skip).take(take).collect();
    Ok(ReadTextFileResponse::new(selected))
}

async fn write_text_file(
    cwd: &Path,
    request: &WriteTextFileRequest,
) -> Result<WriteTextFileResponse, agent_client_protocol::Error> {
    let path = confine(cwd, &request.path, true).await?;
    tokio::fs::write(&path, request.content.as_bytes())
        .await
        .map_err(|err| io_fs_error(&path, &err))?;
    Ok(WriteTextFileResponse::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::translate::update_from_raw;
    use pb::session_update::Typed;

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
                assert!(line.starts_with("session/load failed ("), "{line}");
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

    #[test]
    fn lines_are_classified() {
        assert_eq!(classify("not json"), Line::NotJson);
        assert_eq!(classify("{\"a\":"), Line::NotJson);
        assert_eq!(classify("[1,2]"), Line::Other);
        assert_eq!(classify(r#"["session/update", null, {"update": {}}]"#), Line::Other);
        assert_eq!(
            classify(
                r#"{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s","update":{ "sessionUpdate" : "x" }}}"#
            ),
            Line::Update(r#"{ "sessionUpdate" : "x" }"#.to_owned())
        );
        assert_eq!(
            classify(r#"{"jsonrpc":"2.0","method":"session\/update","params":{"update":{"a":"\u00e9"}}}"#),
            Line::Update(r#"{"a":"\u00e9"}"#.to_owned())
        );
        assert_eq!(
            classify(r#"{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":"s"}}"#),
            Line::MalformedUpdate
        );
        assert_eq!(
            classify(r#"{"jsonrpc":"2.0","id":"p1","method":"session/request_permission","params":{"x":[1]}}"#),
            Line::Permission {
                id: RawJsonRpcId::Str("p1".into()),
                raw_params: r#"{"x":[1]}"#.into()
            }
        );
        assert_eq!(
            classify(r#"{"jsonrpc":"2.0","id":7,"method":"session/request_permission","params":{}}"#),
            Line::Permission {
                id: RawJsonRpcId::Number(7),
                raw_params: "{}".into()
            }
        );
        assert_eq!(
            classify(r#"{"jsonrpc":"2.0","id":1,"result":{"stopReason":"end_turn"}}"#),
            Line::Other
        );
        assert_eq!(
            classify(r#"{"jsonrpc":"2.0","id":1,"method":"session/update","params":{}}"#),
            Line::Other
        );
        assert_eq!(classify(r#"{"method":5}"#), Line::Other);
    }

    #[tokio::test]
    async fn line_reader_splits_and_caps() {
        let input: &[u8] = b"one\r\ntwo\n\nthree-is-long\nfour";
        let mut reader = LineReader::new(input, 8);
        let mut lines = Vec::new();
        loop {
            match reader.next_line().await.unwrap() {
                ReadLine::Line(line) => lines.push(String::from_utf8(line).unwrap()),
                ReadLine::TooLong => {
                    lines.push("<too long>".into());
                    break;
                }
                ReadLine::Eof => break,
            }
        }
        assert_eq!(lines, vec!["one", "two", "", "<too long>"]);

        let input: &[u8] = b"a\nlast";
        let mut reader = LineReader::new(input, 8);
        assert!(matches!(reader.next_line().await.unwrap(), ReadLine::Line(line) if line == b"a"));
        assert!(matches!(reader.next_line().await.unwrap(), ReadLine::Line(line) if line == b"last"));
        assert!(matches!(reader.next_line().await.unwrap(), ReadLine::Eof));
    }

    #[test]
    fn quotes_are_bounded() {
        assert_eq!(quote(b"abc"), "\"abc\"");
        let long = vec![b'y'; 1000];
        let quoted = quote(&long);
        assert!(quoted.starts_with(&format!("\"{}\"", "y".repeat(200))));
        assert!(quoted.ends_with("(first 200 of 1000 bytes)"));
    }

    #[tokio::test]
    async fn fs_paths_are_confined_to_the_session_dir() {
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path().canonicalize().unwrap();
        std::fs::write(cwd.join("notes.txt"), "a\nb\nc\nd\n").unwrap();
        std::fs::write(outside.path().join("secret.txt"), "secret").unwrap();
        std::os::unix::fs::symlink(outside.path(), cwd.join("escape")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("nothing"), cwd.join("dangling")).unwrap();

        let read = |path: PathBuf, line: Option<u32>, limit: Option<u32>| {
            let mut request = ReadTextFileRequest::new("s", path);
            request.line = line;
            request.limit = limit;
            request
        };
        let cwd_ref = &cwd;
        let content = |request: ReadTextFileRequest| async move {
            read_text_file(cwd_ref, &request).await.map(|response| response.content)
        };
        assert_eq!(
            content(read(cwd.join("notes.txt"), None, None)).await.unwrap(),
            "a\nb\nc\nd\n"
        );
        assert_eq!(
            content(read(cwd.join("notes.txt"), Some(2), Some(2))).await.unwrap(),
            "b\nc\n"
        );
        assert_eq!(
            content(read(cwd.join("./notes.txt"), Some(4), None)).await.unwrap(),
            "d\n"
        );
        for path in [
            PathBuf::from("notes.txt"),
            cwd.join("../notes.txt"),
            cwd.join("escape/secret.txt"),
            outside.path().join("secret.txt"),
            cwd.join("missing.txt"),
            cwd.clone(),
        ] {
            assert!(
                content(read(path.clone(), None, None)).await.is_err(),
                "{}",
                path.display()
            );
        }

        let write = |path: PathBuf| WriteTextFileRequest::new("s", path, "written");
        write_text_file(&cwd, &write(cwd.join("new/deeper/file.txt")))
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(cwd.join("new/deeper/file.txt")).unwrap(),
            "written"
        );
        write_text_file(&cwd, &write(cwd.join("notes.txt"))).await.unwrap();
        assert_eq!(std::fs::read_to_string(cwd.join("notes.txt")).unwrap(), "written");
        for path in [
            cwd.join("escape/new.txt"),
            cwd.join("escape/sub/new.txt"),
            cwd.join("dangling"),
            cwd.join("a/../../x.txt"),
            outside.path().join("x.txt"),
            PathBuf::from("relative.txt"),
        ] {
            assert!(
                write_text_file(&cwd, &write(path.clone())).await.is_err(),
                "{}",
                path.display()
            );
        }
        assert!(!outside.path().join("new.txt").exists());
        assert!(!outside.path().join("sub").exists());
        assert!(!outside.path().join("nothing").exists());
    }
}
