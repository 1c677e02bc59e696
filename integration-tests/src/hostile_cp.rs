//! A hostile control plane: a fake server that pairs a real `oma-agent` and
//! then sends it whatever it likes, for the tests proving that nothing the
//! control plane sends runs code on the machine, writes outside a session's
//! folder, or stops the daemon serving its other sessions (DESIGN §3,
//! invariant 4).
//!
//! [`HostileControlPlane`] serves `RuntimeService.ExchangeConnectCode` (so
//! `oma-agent setup` pairs with it; its other methods are UNIMPLEMENTED) and
//! `RuntimeStreamService.OpenStream`, on 127.0.0.1 port 0, in plaintext, on
//! its own tokio runtime (a test blocking its thread on a process never
//! stalls the stream). Where the daemon needs an honest peer to stay up it
//! is one: it answers Hello with a Welcome (the cursor of every session the
//! daemon holds), echoes heartbeats, stores each event once and acks it.
//! Everything else is the test's: [`HostileControlPlane::send`] puts any
//! [`Outbound`] on the stream, a frame or any bytes as one gRPC message (the
//! generated server can only send well-formed `ControlFrame`s, so the stream
//! is served with its own codec).
//!
//! An attack is an [`Attack`]: a name and [`Step`]s (frames to send, what
//! the daemon must answer). [`Lab::run`] plays it, then checks the [`Canary`]
//! (no canary command ran, nothing outside the session folders changed or
//! appeared), the data dir's layout and modes, that the daemon still
//! heartbeats, and that a session started before any attack still completes
//! a turn. A new case is a few lines: a session bundle from
//! [`Lab::bundle`] with the hostile field set, and the expected answer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use oma_proto::pb;
use oma_proto::pb::control_frame::Frame;
use prost::Message as _;
use prost::bytes::BufMut as _;
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, Context, Poll, http};
use tonic::{Request, Response, Status, Streaming};

use crate::faults::agent_text;
use crate::{AgentDaemon, bin, text_prompt, wait_until};

/// How long the daemon gets for anything: a start, a turn, a reconnect.
pub const DEADLINE: Duration = Duration::from_secs(60);
/// The heartbeat interval Welcome asks for: short, so that "still
/// heartbeating" shows quickly.
const HEARTBEAT_MS: u32 = 200;
/// The ACP agents in the daemon's table, both the scripted test agent:
/// `claudish` as a Claude agent (skills in `.claude/skills/`, a private
/// `CLAUDE_CONFIG_DIR` built from `$HOME/.claude`), `plain` as any other
/// (skills in `.skills/` and inline in AGENTS.md).
pub const CLAUDISH: &str = "claudish";
pub const PLAIN: &str = "plain";
/// The AGENTS.md text of [`Lab::bundle`].
pub const AGENTS_MD: &str = "You are the hostile-control-plane test agent.";
/// The SKILL.md of the `lint` skill of [`Lab::bundle`].
pub const SKILL_MD: &str = "---\nname: lint\ndescription: runs the linter\n---\nRun the linter.\n";

/// What the fake server puts on the stream.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A well-formed frame.
    Frame(pb::ControlFrame),
    /// Any bytes, sent as one gRPC message (malformed frames).
    Raw(Vec<u8>),
}

impl From<Frame> for Outbound {
    fn from(frame: Frame) -> Outbound {
        Outbound::Frame(pb::ControlFrame { frame: Some(frame) })
    }
}

// ---------------------------------------------------------------------------
// The server

/// The fake control plane. Dropping it stops the server.
pub struct HostileControlPlane {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

struct Shared {
    connect_code: String,
    machine_token: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The current stream: its number and its sender.
    out: Option<(u64, mpsc::Sender<Result<Outbound, Status>>)>,
    /// Streams answered with a Welcome.
    streams: u64,
    heartbeats: u64,
    /// Each session's events by seq, each stored once.
    events: HashMap<String, BTreeMap<u64, pb::SessionEvent>>,
    ready: HashSet<String>,
    failed: HashMap<String, pb::SessionError>,
    disposed: HashSet<String>,
}

impl State {
    /// The highest seq of a session stored with no gap before it.
    fn stored(&self, session_id: &str) -> u64 {
        let mut last = 0;
        for seq in self.events.get(session_id).into_iter().flat_map(BTreeMap::keys) {
            if *seq != last + 1 {
                break;
            }
            last = *seq;
        }
        last
    }
}

impl HostileControlPlane {
    /// Listens on 127.0.0.1:0.
    pub fn start() -> anyhow::Result<HostileControlPlane> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("hostile-cp")
            .enable_all()
            .build()?;
        let shared = Arc::new(Shared {
            connect_code: format!("hostile-{:016x}", rand::random::<u64>()),
            machine_token: format!("{}{:032x}", oma_proto::MACHINE_TOKEN_PREFIX, rand::random::<u128>()),
            state: Mutex::new(State::default()),
        });
        // Bound here, not with block_on: the caller may be inside a runtime.
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let listener = {
            let _inside = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let router = tonic::transport::Server::builder()
            .add_service(pb::runtime_service_server::RuntimeServiceServer::new(Pairing(
                shared.clone(),
            )))
            .add_service(StreamRoute(shared.clone()));
        runtime.spawn(router.serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)));
        Ok(HostileControlPlane {
            addr,
            shared,
            runtime: Some(runtime),
        })
    }

    /// The URL a machine pairs with.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The one connect code it accepts (any number of times).
    pub fn connect_code(&self) -> &str {
        &self.shared.connect_code
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().expect("hostile cp state")
    }

    /// Streams answered with a Welcome so far.
    pub fn streams(&self) -> u64 {
        self.state().streams
    }

    /// Heartbeats received so far (all streams).
    pub fn heartbeats(&self) -> u64 {
        self.state().heartbeats
    }

    /// Whether a stream is up now.
    pub fn connected(&self) -> bool {
        self.state().out.is_some()
    }

    /// A session's stored events, in seq order.
    pub fn events(&self, session_id: &str) -> Vec<pb::SessionEvent> {
        self.state()
            .events
            .get(session_id)
            .map(|events| events.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether the daemon said the session is ready (its child runs).
    pub fn is_ready(&self, session_id: &str) -> bool {
        self.state().ready.contains(session_id)
    }

    /// The error of a SessionFailed the daemon sent for the session.
    pub fn failure(&self, session_id: &str) -> Option<pb::SessionError> {
        self.state().failed.get(session_id).cloned()
    }

    /// Whether the daemon said the session is disposed.
    pub fn is_disposed(&self, session_id: &str) -> bool {
        self.state().disposed.contains(session_id)
    }

    /// Waits for a stream beyond the first `streams` ones to be up.
    pub async fn wait_connected(&self, streams: u64) -> anyhow::Result<()> {
        wait_until("the daemon to connect", DEADLINE, || async {
            (self.streams() > streams && self.connected()).then_some(())
        })
        .await
    }

    /// Puts a frame (or bytes) on the current stream, waiting for one if the
    /// daemon is reconnecting.
    pub async fn send(&self, out: impl Into<Outbound>) -> anyhow::Result<()> {
        let tx = wait_until("a stream to send on", DEADLINE, || async {
            self.state().out.as_ref().map(|(_, tx)| tx.clone())
        })
        .await?;
        tx.send(Ok(out.into()))
            .await
            .map_err(|_| anyhow::anyhow!("the stream closed while sending"))
    }
}

impl Drop for HostileControlPlane {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Pairs any machine that brings the connect code.
struct Pairing(Arc<Shared>);

#[tonic::async_trait]
impl pb::runtime_service_server::RuntimeService for Pairing {
    async fn create_connect_code(
        &self,
        _: Request<pb::CreateConnectCodeRequest>,
    ) -> Result<Response<pb::CreateConnectCodeResponse>, Status> {
        Err(Status::unimplemented("a hostile control plane only pairs"))
    }

    async fn exchange_connect_code(
        &self,
        request: Request<pb::ExchangeConnectCodeRequest>,
    ) -> Result<Response<pb::ExchangeConnectCodeResponse>, Status> {
        let request = request.into_inner();
        if request.code != self.0.connect_code {
            return Err(Status::not_found("no such connect code"));
        }
        Ok(Response::new(pb::ExchangeConnectCodeResponse {
            runtime: Some(pb::Runtime {
                id: "rt_hostile".into(),
                tenant_id: "ten_hostile".into(),
                name: request.name,
                machine_id: request.machine_id,
                ..Default::default()
            }),
            machine_token: self.0.machine_token.clone(),
        }))
    }

    async fn list_runtimes(
        &self,
        _: Request<pb::ListRuntimesRequest>,
    ) -> Result<Response<pb::ListRuntimesResponse>, Status> {
        Err(Status::unimplemented("a hostile control plane only pairs"))
    }

    async fn get_runtime(&self, _: Request<pb::GetRuntimeRequest>) -> Result<Response<pb::GetRuntimeResponse>, Status> {
        Err(Status::unimplemented("a hostile control plane only pairs"))
    }

    async fn delete_runtime(
        &self,
        _: Request<pb::DeleteRuntimeRequest>,
    ) -> Result<Response<pb::DeleteRuntimeResponse>, Status> {
        Err(Status::unimplemented("a hostile control plane only pairs"))
    }
}

/// `RuntimeStreamService.OpenStream`, served with [`HostileCodec`].
#[derive(Clone)]
struct StreamRoute(Arc<Shared>);

impl tonic::server::NamedService for StreamRoute {
    const NAME: &'static str = pb::runtime_stream_service_server::SERVICE_NAME;
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for StreamRoute {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let shared = self.0.clone();
        Box::pin(async move {
            if request.uri().path() != "/oma.v1.RuntimeStreamService/OpenStream" {
                return Ok(Status::unimplemented("no such method").into_http());
            }
            // No limit on what it sends: oversized frames are an attack.
            let mut grpc = tonic::server::Grpc::new(HostileCodec)
                .apply_max_message_size_config(Some(oma_proto::MAX_MESSAGE_BYTES), Some(usize::MAX));
            Ok(grpc.streaming(OpenStream(shared), request).await)
        })
    }
}

struct OpenStream(Arc<Shared>);

impl tonic::server::StreamingService<pb::AgentFrame> for OpenStream {
    type Response = Outbound;
    type ResponseStream = ReceiverStream<Result<Outbound, Status>>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<pb::AgentFrame>>) -> Self::Future {
        let shared = self.0.clone();
        Box::pin(async move {
            let expected = format!("Bearer {}", shared.machine_token);
            let token = request
                .metadata()
                .get(oma_proto::AUTHORIZATION_HEADER)
                .and_then(|v| v.to_str().ok());
            if token != Some(expected.as_str()) {
                return Err(Status::unauthenticated("not this machine's token"));
            }
            let (tx, rx) = mpsc::channel(4096);
            tokio::spawn(read_stream(shared, request.into_inner(), tx));
            Ok(Response::new(ReceiverStream::new(rx)))
        })
    }
}

/// The honest part: Welcome, heartbeat echoes, storing and acking events,
/// recording ready/failed/disposed.
async fn read_stream(
    shared: Arc<Shared>,
    mut inbound: Streaming<pb::AgentFrame>,
    tx: mpsc::Sender<Result<Outbound, Status>>,
) {
    static STREAM_IDS: AtomicU64 = AtomicU64::new(1);
    let stream_id = STREAM_IDS.fetch_add(1, Ordering::Relaxed);
    while let Ok(Some(frame)) = inbound.message().await {
        let Some(frame) = frame.frame else { continue };
        let replies = record(&shared, stream_id, &tx, frame);
        for reply in replies {
            if tx.send(Ok(reply.into())).await.is_err() {
                break;
            }
        }
    }
    let mut state = shared.state.lock().expect("hostile cp state");
    if state.out.as_ref().is_some_and(|(id, _)| *id == stream_id) {
        state.out = None;
    }
}

fn record(
    shared: &Shared,
    stream_id: u64,
    tx: &mpsc::Sender<Result<Outbound, Status>>,
    frame: pb::agent_frame::Frame,
) -> Vec<Frame> {
    use pb::agent_frame::Frame as In;
    let mut state = shared.state.lock().expect("hostile cp state");
    match frame {
        In::Hello(hello) => {
            state.streams += 1;
            state.out = Some((stream_id, tx.clone()));
            let sessions = hello
                .sessions
                .iter()
                .map(|held| pb::SessionCursor {
                    session_id: held.session_id.clone(),
                    last_stored_seq: state.stored(&held.session_id),
                })
                .collect();
            vec![Frame::Welcome(pb::Welcome {
                runtime_id: "rt_hostile".into(),
                connection_epoch: state.streams,
                heartbeat_interval_ms: HEARTBEAT_MS,
                sessions,
                unknown_session_ids: Vec::new(),
            })]
        }
        In::Heartbeat(beat) => {
            state.heartbeats += 1;
            vec![Frame::Heartbeat(beat)]
        }
        In::Event(frame) => store(&mut state, frame.event.into_iter().collect()),
        In::Events(batch) => store(&mut state, batch.events),
        In::SessionReady(ready) => {
            state.ready.insert(ready.session_id);
            Vec::new()
        }
        In::SessionFailed(failed) => {
            state.failed.insert(failed.session_id, failed.error.unwrap_or_default());
            Vec::new()
        }
        In::SessionDisposed(disposed) => {
            state.disposed.insert(disposed.session_id);
            Vec::new()
        }
        In::Ack(_) | In::ManifestUpdate(_) => Vec::new(),
    }
}

fn store(state: &mut State, events: Vec<pb::SessionEvent>) -> Vec<Frame> {
    let mut touched = Vec::new();
    for event in events {
        if !touched.contains(&event.session_id) {
            touched.push(event.session_id.clone());
        }
        state
            .events
            .entry(event.session_id.clone())
            .or_default()
            .entry(event.seq)
            .or_insert(event);
    }
    touched
        .into_iter()
        .map(|session_id| {
            let seq = state.stored(&session_id);
            Frame::EventAck(pb::EventAck { session_id, seq })
        })
        .collect()
}

/// Encodes [`Outbound`] (a frame, or raw bytes as they are) and decodes
/// `AgentFrame`s.
#[derive(Clone, Copy)]
struct HostileCodec;

impl Codec for HostileCodec {
    type Encode = Outbound;
    type Decode = pb::AgentFrame;
    type Encoder = HostileCodec;
    type Decoder = HostileCodec;

    fn encoder(&mut self) -> HostileCodec {
        *self
    }

    fn decoder(&mut self) -> HostileCodec {
        *self
    }
}

impl Encoder for HostileCodec {
    type Item = Outbound;
    type Error = Status;

    fn encode(&mut self, item: Outbound, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        match item {
            Outbound::Frame(frame) => frame.encode(buf).map_err(|e| Status::internal(e.to_string())),
            Outbound::Raw(bytes) => {
                buf.put_slice(&bytes);
                Ok(())
            }
        }
    }
}

impl Decoder for HostileCodec {
    type Item = pb::AgentFrame;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<pb::AgentFrame>, Status> {
        pb::AgentFrame::decode(buf)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

// ---------------------------------------------------------------------------
// The canary

/// What must stay untouched: a fake home (the daemon's `HOME`) with a
/// `.bashrc` and a `.claude` config, a command that would leave a marker if
/// anyone ran it, and a unique name that attacks use for paths outside the
/// session folder (none may ever appear).
pub struct Canary {
    root: TempDir,
    /// The daemon's `HOME`: `.bashrc`, `.claude/settings.json`,
    /// `.claude/skills/mine/SKILL.md`.
    pub home: PathBuf,
    /// Exists only if [`Canary::command`] ran.
    pub marker: PathBuf,
    /// An executable that creates [`Canary::marker`]: name it wherever an
    /// attack smuggles a command.
    pub command: PathBuf,
    /// A file name no legitimate write uses.
    pub token: String,
    home_before: Vec<(String, String)>,
}

impl Canary {
    pub fn new() -> anyhow::Result<Canary> {
        let root = tempfile::tempdir()?;
        let home = root.path().join("home");
        let skill = home.join(".claude/skills/mine");
        std::fs::create_dir_all(&skill)?;
        std::fs::write(home.join(".bashrc"), "# the user's own .bashrc (canary)\n")?;
        std::fs::write(home.join(".claude/settings.json"), "{\"canary\": true}\n")?;
        std::fs::write(
            skill.join("SKILL.md"),
            "---\nname: mine\ndescription: the user's own skill\n---\nMine.\n",
        )?;
        let marker = root.path().join("CANARY-RAN");
        let command = root.path().join("canary.sh");
        std::fs::write(&command, format!("#!/bin/sh\ntouch '{}'\n", marker.display()))?;
        std::fs::set_permissions(&command, std::fs::Permissions::from_mode(0o755))?;
        let home_before = snapshot(&home);
        Ok(Canary {
            token: format!("oma-escape-{:016x}", rand::random::<u64>()),
            root,
            home,
            marker,
            command,
            home_before,
        })
    }

    /// Paths that leave a folder: climbing out by `..` (up to the root from
    /// any session folder), absolute, and sneaking `..` in the middle; each
    /// ends in [`Canary::token`].
    pub fn escapes(&self) -> Vec<String> {
        let t = &self.token;
        let mut paths: Vec<String> = (1..=12).map(|up| format!("{}{t}", "../".repeat(up))).collect();
        paths.extend([
            format!("{}/{t}", self.root.path().display()),
            format!("/tmp/{t}"),
            format!("/{t}"),
            format!("a/../../{t}"),
            format!("a/./../{t}"),
            format!("./{t}"),
            format!("a//{t}"),
            format!("..\\..\\{t}"),
            format!("a\\..\\..\\{t}"),
            format!("a\0/../../{t}"),
            format!("{t}\0"),
        ]);
        paths
    }

    /// No canary command ran; the home is as it was; the token names
    /// nothing in or around the daemon's folders.
    fn check(&self, daemon: &AgentDaemon) -> anyhow::Result<()> {
        ensure!(!self.marker.exists(), "a canary command ran");
        ensure!(
            snapshot(&self.home) == self.home_before,
            "the home changed: {:#?}",
            snapshot(&self.home)
        );
        let mut places = vec![
            self.root.path().to_path_buf(),
            daemon.config_dir.path().to_path_buf(),
            daemon.data_dir.path().to_path_buf(),
        ];
        for dir in places.clone() {
            places.extend(dir.ancestors().skip(1).map(Path::to_path_buf));
        }
        places.sort();
        places.dedup();
        let sessions = daemon.data_dir.path().join("sessions");
        for place in places {
            let deep = place.starts_with(self.root.path())
                || place.starts_with(daemon.config_dir.path())
                || place.starts_with(daemon.data_dir.path());
            for path in list(&place, deep, &sessions) {
                ensure!(
                    !path.to_string_lossy().contains(&self.token),
                    "an attack wrote {}",
                    path.display()
                );
            }
        }
        Ok(())
    }
}

/// The entries of `dir`, and with `deep` all below it except inside
/// session folders (`skip`'s children), never following symlinks.
fn list(dir: &Path, deep: bool, skip: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if deep && is_dir && dir != skip {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out
}

/// Every path under `root` with its content (or link target), sorted.
fn snapshot(root: &Path) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = list(root, true, Path::new(""))
        .into_iter()
        .map(|path| {
            let key = path.strip_prefix(root).unwrap_or(&path).display().to_string();
            let value = match std::fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() => format!("-> {:?}", std::fs::read_link(&path).ok()),
                Ok(m) if m.is_dir() => "dir".to_owned(),
                Ok(_) => String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default()).into_owned(),
                Err(e) => format!("error: {e}"),
            };
            (key, value)
        })
        .collect();
    out.sort();
    out
}

// ---------------------------------------------------------------------------
// Attacks

/// A named attack: steps played in order by [`Lab::run`].
#[derive(Debug)]
pub struct Attack {
    pub name: String,
    pub steps: Vec<Step>,
}

/// One step of an attack.
#[derive(Debug)]
pub enum Step {
    /// Put a frame (or bytes) on the stream.
    Send(Outbound),
    /// Send a StartSession; a session with a well-formed id is disposed of
    /// after the attack.
    Start(pb::StartSession),
    /// The daemon reports the session ready (its child runs).
    Ready(String),
    /// The daemon fails the session (SessionFailed, and an error event)
    /// with this code and a message containing `contains`, and no folder
    /// exists for it.
    Failed {
        session_id: String,
        code: String,
        contains: String,
    },
    /// Prompt the session with a test-agent script; the turn ends and its
    /// agent text contains `expect`.
    Turn {
        session_id: String,
        script: String,
        expect: String,
    },
    /// The session logged a message containing `contains`.
    Logged { session_id: String, contains: String },
    /// `<session dir>/<relative>` is a regular file (not a symlink) whose
    /// text contains `contains`.
    File {
        session_id: String,
        relative: String,
        contains: String,
    },
    /// The attack broke the stream: the daemon connects again.
    Reconnects,
    /// The stream the attack began on is still the one up (put it after a
    /// step that proves the daemon read what came before, e.g. a turn).
    SameStream,
    /// Nothing exists where the daemon would put this session's folder
    /// (joined as is: a path-like id names a place outside), and the
    /// session was never reported ready.
    Absent(String),
}

impl Step {
    /// A short description for error messages (frames can be huge).
    fn describe(&self) -> String {
        match self {
            Step::Send(Outbound::Frame(frame)) => {
                let kind = format!("{:?}", frame.frame).chars().take(120).collect::<String>();
                format!("send a {}-byte frame {kind}…", frame.encoded_len())
            }
            Step::Send(Outbound::Raw(bytes)) => format!("send {} raw bytes", bytes.len()),
            Step::Start(start) => format!(
                "start session {:?} of {:?} ({} bytes)",
                start.session_id,
                start.acp_agent_id,
                start.encoded_len()
            ),
            other => format!("{other:?}").chars().take(300).collect(),
        }
    }
}

impl Attack {
    pub fn new(name: impl Into<String>) -> Attack {
        Attack {
            name: name.into(),
            steps: Vec::new(),
        }
    }

    pub fn step(mut self, step: Step) -> Attack {
        self.steps.push(step);
        self
    }

    pub fn send(self, frame: impl Into<Outbound>) -> Attack {
        self.step(Step::Send(frame.into()))
    }

    pub fn start(self, start: pb::StartSession) -> Attack {
        self.step(Step::Start(start))
    }

    pub fn ready(self, session_id: &str) -> Attack {
        self.step(Step::Ready(session_id.to_owned()))
    }

    pub fn failed(self, session_id: &str, code: &str, contains: &str) -> Attack {
        self.step(Step::Failed {
            session_id: session_id.to_owned(),
            code: code.to_owned(),
            contains: contains.to_owned(),
        })
    }

    pub fn turn(self, session_id: &str, script: &str, expect: &str) -> Attack {
        self.step(Step::Turn {
            session_id: session_id.to_owned(),
            script: script.to_owned(),
            expect: expect.to_owned(),
        })
    }

    pub fn logged(self, session_id: &str, contains: &str) -> Attack {
        self.step(Step::Logged {
            session_id: session_id.to_owned(),
            contains: contains.to_owned(),
        })
    }

    pub fn file(self, session_id: &str, relative: &str, contains: &str) -> Attack {
        self.step(Step::File {
            session_id: session_id.to_owned(),
            relative: relative.to_owned(),
            contains: contains.to_owned(),
        })
    }

    pub fn reconnects(self) -> Attack {
        self.step(Step::Reconnects)
    }

    pub fn same_stream(self) -> Attack {
        self.step(Step::SameStream)
    }

    pub fn absent(self, session_id: &str) -> Attack {
        self.step(Step::Absent(session_id.to_owned()))
    }
}

/// A fresh, well-formed session id.
pub fn session_id() -> String {
    format!("ses_{:032x}", rand::random::<u128>())
}

fn is_session_id(id: &str) -> bool {
    id.strip_prefix("ses_")
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

// ---------------------------------------------------------------------------
// The lab

/// A hostile control plane, a real daemon paired with it (its `HOME` is the
/// canary's), and a normal session started before any attack.
pub struct Lab {
    pub cp: HostileControlPlane,
    pub daemon: AgentDaemon,
    pub canary: Canary,
    /// A `plain` session started before any attack; prompted after each.
    pub normal: String,
    config_before: Vec<(String, String)>,
    turns: AtomicU64,
}

impl Lab {
    /// Pairs and starts a daemon (`oma-agent run --max-sessions
    /// max_sessions`) and its normal session.
    pub async fn start(max_sessions: u32) -> anyhow::Result<Lab> {
        let canary = Canary::new()?;
        let cp = HostileControlPlane::start()?;
        let agents_toml = format!(
            "[[agent]]\nid = \"{CLAUDISH}\"\nname = \"Scripted agent as Claude\"\ncommand = \"{bin}\"\nclaude = true\n\n\
             [[agent]]\nid = \"{PLAIN}\"\nname = \"Scripted agent\"\ncommand = \"{bin}\"\n",
            bin = bin("oma-test-agent").display()
        );
        let mut daemon = AgentDaemon::setup_with_agents_toml(&cp.url(), cp.connect_code(), &agents_toml)?;
        daemon.env = vec![("HOME".into(), canary.home.display().to_string())];
        daemon.start(&["--max-sessions", &max_sessions.to_string()])?;
        cp.wait_connected(0).await?;
        let config_before = snapshot(daemon.config_dir.path());
        let lab = Lab {
            cp,
            daemon,
            canary,
            normal: session_id(),
            config_before,
            turns: AtomicU64::new(0),
        };
        lab.cp.send(Frame::StartSession(lab.bundle(PLAIN, &lab.normal))).await?;
        lab.wait_ready(&lab.normal).await?;
        lab.assert_unharmed("no attack yet").await?;
        Ok(lab)
    }

    /// A well-formed start: AGENTS.md [`AGENTS_MD`] and one skill, `lint`.
    pub fn bundle(&self, acp_agent_id: &str, session_id: &str) -> pb::StartSession {
        pb::StartSession {
            session_id: session_id.to_owned(),
            acp_agent_id: acp_agent_id.to_owned(),
            agents_md: AGENTS_MD.to_owned(),
            system_prompt: AGENTS_MD.to_owned(),
            skills: vec![pb::SkillBundle {
                name: "lint".into(),
                files: vec![
                    pb::SkillBundleFile {
                        path: "SKILL.md".into(),
                        content: SKILL_MD.as_bytes().to_vec(),
                    },
                    pb::SkillBundleFile {
                        path: "bin/run.sh".into(),
                        content: b"#!/bin/sh\necho lint\n".to_vec(),
                    },
                ],
            }],
            ..Default::default()
        }
    }

    /// The folder of a session on the machine.
    pub fn session_dir(&self, session_id: &str) -> PathBuf {
        self.daemon.session_dir(session_id)
    }

    pub async fn wait_ready(&self, session_id: &str) -> anyhow::Result<()> {
        wait_until(&format!("session {session_id} to be ready"), DEADLINE, || async {
            if let Some(error) = self.cp.failure(session_id) {
                return Some(Err(anyhow::anyhow!("session {session_id} failed: {error:?}")));
            }
            self.cp.is_ready(session_id).then_some(Ok(()))
        })
        .await?
    }

    /// Prompts a session with a test-agent script and returns the turn's
    /// agent text once it ended.
    pub async fn turn(&self, session_id: &str, script: &str) -> anyhow::Result<String> {
        let n = self.turns.fetch_add(1, Ordering::Relaxed);
        let turn_id = format!("trn_{n:04}{:028x}", rand::random::<u128>() >> 16);
        self.cp
            .send(Frame::Prompt(pb::Prompt {
                session_id: session_id.to_owned(),
                turn_id: turn_id.clone(),
                prompt: text_prompt(script),
                requested_by_user_id: String::new(),
            }))
            .await?;
        let events = wait_until(&format!("turn {turn_id} of {session_id} to end"), DEADLINE, || async {
            let events: Vec<_> = self
                .cp
                .events(session_id)
                .into_iter()
                .filter(|e| e.turn_id == turn_id)
                .collect();
            events
                .iter()
                .any(|e| matches!(e.kind, Some(pb::session_event::Kind::TurnEnded(_))))
                .then_some(events)
        })
        .await?;
        Ok(agent_text(&events))
    }

    /// Plays an attack, checks that nothing got through, and disposes of
    /// the sessions it started.
    pub async fn run(&self, attack: Attack) -> anyhow::Result<()> {
        let name = attack.name.clone();
        let streams = self.cp.streams();
        let mut started = Vec::new();
        for (i, step) in attack.steps.into_iter().enumerate() {
            let what = step.describe();
            self.step(step, streams, &mut started)
                .await
                .with_context(|| format!("attack {name:?}, step {i}: {what}"))?;
        }
        self.assert_unharmed(&name)
            .await
            .with_context(|| format!("after attack {name:?}"))?;
        self.dispose(&started)
            .await
            .with_context(|| format!("disposing of the sessions of attack {name:?}"))
    }

    async fn step(&self, step: Step, streams: u64, started: &mut Vec<String>) -> anyhow::Result<()> {
        match step {
            Step::Send(out) => self.cp.send(out).await?,
            Step::Start(start) => {
                if is_session_id(&start.session_id) {
                    started.push(start.session_id.clone());
                }
                self.cp.send(Frame::StartSession(start)).await?;
            }
            Step::Ready(session_id) => self.wait_ready(&session_id).await?,
            Step::Failed {
                session_id,
                code,
                contains,
            } => {
                let error = wait_until(&format!("session {session_id} to fail"), DEADLINE, || async {
                    self.cp.failure(&session_id)
                })
                .await?;
                ensure!(
                    error.code == code && error.message.contains(&contains),
                    "expected a {code} error naming {contains:?}, got {error:?}"
                );
                let logged = self.cp.events(&session_id).into_iter().any(|e| {
                    matches!(&e.kind, Some(pb::session_event::Kind::Error(logged)) if *logged == error)
                });
                ensure!(logged, "no error event for {session_id}: {:?}", self.cp.events(&session_id));
                ensure!(!self.cp.is_ready(&session_id), "{session_id} failed and was ready");
                let dir = self.session_dir(&session_id);
                ensure!(!dir.exists(), "a folder was made for a refused session: {}", dir.display());
            }
            Step::Turn {
                session_id,
                script,
                expect,
            } => {
                let text = self.turn(&session_id, &script).await?;
                ensure!(text.contains(&expect), "expected {expect:?} in the agent's text {text:?}");
            }
            Step::Logged { session_id, contains } => {
                wait_until(&format!("{session_id} to log {contains:?}"), DEADLINE, || async {
                    self.cp
                        .events(&session_id)
                        .iter()
                        .any(|e| matches!(&e.kind, Some(pb::session_event::Kind::Log(l)) if l.message.contains(&contains)))
                        .then_some(())
                })
                .await?
            }
            Step::File {
                session_id,
                relative,
                contains,
            } => {
                let path = self.session_dir(&session_id).join(&relative);
                let meta = std::fs::symlink_metadata(&path).with_context(|| path.display().to_string())?;
                ensure!(meta.is_file(), "{} is not a regular file: {meta:?}", path.display());
                let text = std::fs::read_to_string(&path)?;
                ensure!(text.contains(&contains), "{} holds {text:?}", path.display());
            }
            Step::Reconnects => self.cp.wait_connected(streams).await?,
            Step::SameStream => ensure!(
                self.cp.streams() == streams && self.cp.connected(),
                "the daemon reconnected ({} streams, was {streams})",
                self.cp.streams()
            ),
            Step::Absent(session_id) => {
                let dir = self.session_dir(&session_id);
                ensure!(
                    std::fs::symlink_metadata(&dir).is_err(),
                    "{} exists",
                    dir.display()
                );
                ensure!(!self.cp.is_ready(&session_id), "{session_id:?} was started");
            }
        }
        Ok(())
    }

    /// Disposes of sessions and waits until the daemon says so and their
    /// folders are gone.
    pub async fn dispose(&self, sessions: &[String]) -> anyhow::Result<()> {
        for session_id in sessions {
            self.cp
                .send(Frame::DisposeSession(pb::DisposeSession {
                    session_id: session_id.clone(),
                }))
                .await?;
        }
        wait_until("the sessions to be disposed of", DEADLINE, || async {
            sessions
                .iter()
                .all(|id| self.cp.is_disposed(id) && !self.session_dir(id).exists())
                .then_some(())
        })
        .await
    }

    /// The canary is untouched, the data dir holds only what the daemon
    /// keeps (private), the config dir is unchanged, the daemon keeps
    /// heartbeating, and the normal session completes a turn.
    /// The turn comes first: once it ended, the daemon has handled every
    /// frame sent before it.
    pub async fn assert_unharmed(&self, case: &str) -> anyhow::Result<()> {
        let beats = self.cp.heartbeats();
        // `;` and newlines separate directives in a script.
        let alive = format!("alive after {}", case.replace([';', '\n'], ","));
        let text = self.turn(&self.normal, &format!("echo {alive}")).await?;
        ensure!(text.contains(&alive), "the normal session answered {text:?}");
        wait_until("two more heartbeats", DEADLINE, || async {
            (self.cp.heartbeats() >= beats + 2).then_some(())
        })
        .await?;
        self.canary.check(&self.daemon)?;
        self.check_data_dir()?;
        ensure!(
            snapshot(self.daemon.config_dir.path()) == self.config_before,
            "the config dir changed"
        );
        Ok(())
    }

    /// Only `sessions/<id>/`, `outbox/<id>.*`, `logs/<id>.*` and
    /// `state.json`, with 0700 folders and 0600 files.
    fn check_data_dir(&self) -> anyhow::Result<()> {
        let data = self.daemon.data_dir.path();
        let mode = |path: &Path| std::fs::symlink_metadata(path).map(|m| m.permissions().mode() & 0o777);
        for dir in [
            data.to_path_buf(),
            data.join("sessions"),
            data.join("outbox"),
            data.join("logs"),
        ] {
            ensure!(mode(&dir)? == 0o700, "{} is not 0700", dir.display());
        }
        ensure!(
            self.session_dir(&self.normal).is_dir(),
            "the normal session's folder is gone"
        );
        let names = |dir: &Path| -> anyhow::Result<Vec<String>> {
            std::fs::read_dir(dir)?
                .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
                .collect()
        };
        for name in names(data)? {
            let temporary = name.starts_with(".state.json.tmp-");
            ensure!(
                ["sessions", "outbox", "logs", "state.json"].contains(&name.as_str()) || temporary,
                "unexpected {name:?} in the data dir"
            );
            if name == "state.json" {
                ensure!(
                    mode(&data.join(&name)).is_ok_and(|m| m == 0o600),
                    "state.json is not 0600"
                );
            }
        }
        for name in names(&data.join("sessions"))? {
            ensure!(is_session_id(&name), "unexpected sessions/{name:?}");
        }
        for folder in ["outbox", "logs"] {
            for name in names(&data.join(folder))? {
                let id = name.trim_start_matches('.').split('.').next().unwrap_or_default();
                ensure!(is_session_id(id), "unexpected {folder}/{name:?}");
                if let Ok(m) = mode(&data.join(folder).join(&name)) {
                    ensure!(m == 0o600, "{folder}/{name} is {m:o}, not 0600");
                }
            }
        }
        Ok(())
    }
}

/// The attacks on a session's files that need the child's help: it swaps
/// what the daemon wrote for symlinks to the user's files, crashes, and the
/// daemon prepares the folder again for the next child.
pub fn swapped_for_symlinks(lab: &Lab, acp_agent_id: &str) -> Vec<Attack> {
    let home = lab.canary.home.display().to_string();
    let skills_dir = if acp_agent_id == CLAUDISH {
        ".claude/skills"
    } else {
        ".skills"
    };
    let mut attacks = Vec::new();
    let plants = |links: &[(&str, String)]| {
        let script: Vec<String> = links
            .iter()
            .map(|(link, target)| format!("symlink {target} {link}"))
            .collect();
        let said: String = links
            .iter()
            .map(|(link, target)| format!("symlink {link} -> {target}"))
            .collect();
        (format!("{}; crash", script.join("; ")), said)
    };
    let scripts = [
        (
            "AGENTS.md, .claude, .claude-config and .skills swapped for symlinks into the home",
            plants(&[
                ("AGENTS.md", format!("{home}/.bashrc")),
                (".claude", format!("{home}/.claude")),
                (".claude-config", format!("{home}/.claude")),
                (".skills", format!("{home}/.claude/skills")),
            ]),
        ),
        (
            "the skills folder swapped for a symlink to the user's skills",
            plants(&[(skills_dir, format!("{home}/.claude/skills"))]),
        ),
        (
            "a skill swapped for a symlink to the user's skill",
            plants(&[(&format!("{skills_dir}/lint"), format!("{home}/.claude/skills/mine"))]),
        ),
    ];
    for (name, (script, said)) in scripts {
        let session = session_id();
        attacks.push(
            Attack::new(format!("{acp_agent_id}: {name}"))
                .start(lab.bundle(acp_agent_id, &session))
                .ready(&session)
                .turn(&session, &script, &said)
                .logged(&session, "the agent process ended")
                // The next prompt starts a new child: the folder is prepared again.
                .turn(&session, "cat AGENTS.md", AGENTS_MD)
                .file(&session, "AGENTS.md", AGENTS_MD)
                .file(&session, &format!("{skills_dir}/lint/SKILL.md"), "Run the linter.")
                .turn(&session, &format!("cat {skills_dir}/lint/SKILL.md"), "Run the linter."),
        );
    }
    attacks
}
