//! The fake server: pairing, and the runtime stream served with its own
//! codec so that it can send any bytes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use oma_proto::pb;
use oma_proto::pb::control_frame::Frame;
use prost::Message as _;
use prost::bytes::BufMut as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, Context, Poll, http};
use tonic::{Request, Response, Status, Streaming};

use super::DEADLINE;
use crate::wait_until;

/// The heartbeat interval Welcome asks for: short, so that "still
/// heartbeating" shows quickly.
const HEARTBEAT_MS: u32 = 200;

/// What the fake server puts on the stream.
#[derive(Debug, Clone)]
// One value per frame sent by a test: its size does not matter.
#[allow(clippy::large_enum_variant)]
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
        In::Ack(_) | In::ManifestUpdate(_) | In::DiffChunk(_) | In::Deregister(_) => Vec::new(),
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
