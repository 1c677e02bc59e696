//! Connection scale: one process plays N paired machines. It pairs N
//! runtimes (connect code + exchange), then opens N runtime streams over a
//! few HTTP/2 connections (one per 100 streams), each with a real Hello and
//! heartbeats at the interval Welcome asks for, and reads what the control
//! plane sends. Measured: time until every stream has its Welcome, the
//! control plane's RSS per connected runtime, and its CPU while idle.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use oma_integration_tests::{ControlPlane, TestDatabase};
use oma_proto::pb;
use oma_proto::pb::runtime_stream_service_client::RuntimeStreamServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use super::procs::{cpu_time, rss_bytes, start_control_plane};

/// Streams per HTTP/2 connection.
const STREAMS_PER_CONNECTION: usize = 100;
/// RPCs in flight while pairing.
const PAIRING_CONCURRENCY: usize = 32;

pub struct Scale {
    pub runtimes: usize,
    pub pairing: Duration,
    pub connect_all: Duration,
    pub rss_before: u64,
    pub rss_after: u64,
    pub idle_window: Duration,
    pub idle_cpu: Duration,
    pub lost: usize,
    /// Calls retried after INTERNAL/UNAVAILABLE (SQLite "database is locked").
    pub pairing_retries: usize,
    pub stream_retries: usize,
}

impl Scale {
    pub fn rss_per_runtime(&self) -> u64 {
        self.rss_after.saturating_sub(self.rss_before) / self.runtimes.max(1) as u64
    }
}

/// A paired machine of the load generator.
pub struct Machine {
    pub machine_id: String,
    pub token: String,
}

/// Raises the soft open-files limit to the hard one (the control plane,
/// started afterwards, inherits it).
pub fn raise_nofile_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(_) => soft,
        },
        Ok((soft, _)) => soft,
        Err(_) => 0,
    }
}

/// Runs `call` until it succeeds, retrying what a real client would retry
/// (INTERNAL, UNAVAILABLE: e.g. SQLite's "database is locked") after a
/// jittered pause; every retry is counted.
async fn with_retries<T, F, Fut>(retries: &AtomicUsize, mut call: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let mut attempt = 0u32;
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(status) if attempt < MAX_ATTEMPTS && retryable(&status) => {
                attempt += 1;
                retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(status) => return Err(status.into()),
        }
    }
}

fn retryable(status: &tonic::Status) -> bool {
    matches!(status.code(), tonic::Code::Internal | tonic::Code::Unavailable)
}

/// Attempts per call before the load generator gives up.
const MAX_ATTEMPTS: u32 = 30;

/// Full jitter: uniform in 0..min(2 s, 20 ms × 2^attempt), oma-agent's
/// reconnect rule with a shorter base and cap.
fn backoff(attempt: u32) -> Duration {
    oma_agent::connection::Backoff {
        base: Duration::from_millis(20),
        cap: Duration::from_secs(2),
        healthy_after: Duration::ZERO,
    }
    .delay(attempt)
}

pub async fn pair(cp: &ControlPlane, n: usize, prefix: &str, retries: &AtomicUsize) -> anyhow::Result<Vec<Machine>> {
    let clients = cp.clients().await?;
    let codes: Vec<anyhow::Result<String>> = futures::stream::iter(0..n)
        .map(|_| {
            let runtimes = clients.runtimes.clone();
            async move {
                with_retries(retries, || {
                    let mut runtimes = runtimes.clone();
                    async move {
                        runtimes
                            .create_connect_code(pb::CreateConnectCodeRequest::default())
                            .await
                    }
                })
                .await
                .map(|r| r.into_inner().code)
            }
        })
        .buffer_unordered(PAIRING_CONCURRENCY)
        .collect()
        .await;
    let machines: Vec<anyhow::Result<Machine>> = futures::stream::iter(codes.into_iter().enumerate())
        .map(|(i, code)| {
            let runtimes = clients.runtimes.clone();
            async move {
                let machine_id = format!("{prefix}-{i:06}");
                let request = pb::ExchangeConnectCodeRequest {
                    code: code?,
                    machine_id: machine_id.clone(),
                    name: format!("bench-{i}"),
                    agent_version: "bench".into(),
                    os: "linux".into(),
                    arch: "x86_64".into(),
                };
                let response = with_retries(retries, || {
                    let mut runtimes = runtimes.clone();
                    let request = request.clone();
                    async move { runtimes.exchange_connect_code(request).await }
                })
                .await?
                .into_inner();
                Ok(Machine {
                    machine_id,
                    token: response.machine_token,
                })
            }
        })
        .buffer_unordered(PAIRING_CONCURRENCY)
        .collect()
        .await;
    machines.into_iter().collect()
}

pub fn hello(machine_id: &str) -> pb::AgentFrame {
    pb::AgentFrame {
        frame: Some(pb::agent_frame::Frame::Hello(pb::Hello {
            machine_id: machine_id.to_owned(),
            instance_id: format!("inst-{machine_id}"),
            agent_version: "bench".into(),
            os: "linux".into(),
            arch: "x86_64".into(),
            manifest: Some(pb::Manifest {
                acp_agents: vec![pb::AcpAgentInfo {
                    id: "test".into(),
                    name: "Scripted test agent".into(),
                    version: "0".into(),
                    capabilities_json: "{}".into(),
                    local_skills: vec![],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            sessions: vec![],
        })),
    }
}

/// Opens one machine's stream and waits for its Welcome, retrying like the
/// daemon does (jittered backoff) when the control plane refuses for now.
pub async fn open(
    channel: &Channel,
    machine: &Machine,
    retries: &AtomicUsize,
) -> Result<
    (
        mpsc::Sender<pb::AgentFrame>,
        tonic::Streaming<pb::ControlFrame>,
        Duration,
    ),
    String,
> {
    let token: tonic::metadata::MetadataValue<_> = format!("Bearer {}", machine.token)
        .parse()
        .map_err(|_| "the machine token is not ASCII".to_owned())?;
    let mut attempt = 0u32;
    loop {
        let (tx, rx) = mpsc::channel::<pb::AgentFrame>(8);
        let _ = tx.send(hello(&machine.machine_id)).await;
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        request.metadata_mut().insert("authorization", token.clone());
        let mut client = RuntimeStreamServiceClient::new(channel.clone());
        let error = match client.open_stream(request).await {
            Ok(response) => {
                let mut inbound = response.into_inner();
                match inbound.message().await {
                    Ok(Some(pb::ControlFrame {
                        frame: Some(pb::control_frame::Frame::Welcome(welcome)),
                    })) => {
                        let interval = Duration::from_millis(u64::from(welcome.heartbeat_interval_ms.max(100)));
                        return Ok((tx, inbound, interval));
                    }
                    Ok(other) => return Err(format!("expected Welcome, got {other:?}")),
                    Err(status) => status,
                }
            }
            Err(status) => status,
        };
        if attempt >= MAX_ATTEMPTS || !retryable(&error) {
            return Err(format!("OpenStream: {error}"));
        }
        attempt += 1;
        retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(backoff(attempt)).await;
    }
}

/// One machine's stream: Hello, Welcome (reported on `ready`), then
/// heartbeats until `stop`; a stream that ends early counts in `lost`.
async fn machine_stream(
    channel: Channel,
    machine: Machine,
    ready: mpsc::UnboundedSender<Result<(), String>>,
    stop: CancellationToken,
    counters: Arc<Counters>,
) {
    let (tx, mut inbound, interval) = match open(&channel, &machine, &counters.stream_retries).await {
        Ok(opened) => opened,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = heartbeat.tick() => {
                let beat = pb::Heartbeat { sent_at_ms: super::stats::unix_ns() / 1_000_000 };
                if tx.send(pb::AgentFrame { frame: Some(pb::agent_frame::Frame::Heartbeat(beat)) }).await.is_err() {
                    counters.lost.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            message = inbound.message() => match message {
                Ok(Some(_)) => {}
                _ => {
                    if !stop.is_cancelled() {
                        counters.lost.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
            },
        }
    }
}

#[derive(Default)]
struct Counters {
    lost: AtomicUsize,
    stream_retries: AtomicUsize,
}

/// Streams opened by [`connect`]: heartbeating until `stop` is cancelled.
pub struct Connected {
    pub stop: CancellationToken,
    counters: Arc<Counters>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The first open until the last Welcome.
    pub connect_all: Duration,
}

impl Connected {
    /// Streams that ended before `stop`.
    pub fn lost(&self) -> usize {
        self.counters.lost.load(Ordering::Relaxed)
    }

    pub fn stream_retries(&self) -> usize {
        self.counters.stream_retries.load(Ordering::Relaxed)
    }

    /// Stops every stream and waits for its task.
    pub async fn close(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Opens one stream per machine over `machines.len() / 100` HTTP/2
/// connections to `url` and waits until every one has its Welcome.
pub async fn connect(url: &str, machines: Vec<Machine>) -> anyhow::Result<Connected> {
    let n = machines.len();
    let connections = n.div_ceil(STREAMS_PER_CONNECTION);
    let stop = CancellationToken::new();
    let counters = Arc::new(Counters::default());
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let start = Instant::now();
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        channels.push(
            Endpoint::from_shared(url.to_owned())?
                .tcp_nodelay(true)
                .connect()
                .await
                .context("cannot connect to the control plane")?,
        );
    }
    let mut tasks = Vec::with_capacity(n);
    for (i, machine) in machines.into_iter().enumerate() {
        tasks.push(tokio::spawn(machine_stream(
            channels[i / STREAMS_PER_CONNECTION].clone(),
            machine,
            ready_tx.clone(),
            stop.clone(),
            counters.clone(),
        )));
    }
    drop(ready_tx);
    let deadline = Duration::from_secs(120 + n as u64 / 50);
    let mut ok = 0usize;
    let mut errors = Vec::new();
    while ok + errors.len() < n {
        match tokio::time::timeout(deadline.saturating_sub(start.elapsed()), ready_rx.recv()).await {
            Ok(Some(Ok(()))) => ok += 1,
            Ok(Some(Err(e))) => errors.push(e),
            Ok(None) => break,
            Err(_) => break,
        }
    }
    let connect_all = start.elapsed();
    if ok < n {
        stop.cancel();
        bail!(
            "only {ok} of {n} runtimes connected within {deadline:?}; first error: {:?}",
            errors.first()
        );
    }
    Ok(Connected {
        stop,
        counters,
        tasks,
        connect_all,
    })
}

pub async fn run(n: usize, idle_window: Duration, log_dir: &std::path::Path) -> anyhow::Result<Scale> {
    let limit = raise_nofile_limit();
    let connections = n.div_ceil(STREAMS_PER_CONNECTION);
    if limit != 0 && (connections as u64) * 2 + 256 > limit {
        bail!("the open-files limit ({limit}) is too low for {connections} connections");
    }
    let cp = start_control_plane(TestDatabase::sqlite()?, log_dir)?;
    let pairing_start = Instant::now();
    let pairing_retries = AtomicUsize::new(0);
    let machines = pair(&cp, n, "bench-machine", &pairing_retries).await?;
    let pairing = pairing_start.elapsed();

    // Let the pairing burst settle before the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_bytes(cp.pid())?;
    let connected = connect(&cp.url(), machines).await?;
    let connect_all = connected.connect_all;

    // Memory once the burst is over; then CPU over an idle window, during
    // which every stream heartbeats as a real daemon would.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = rss_bytes(cp.pid())?;
    let cpu0 = cpu_time(cp.pid());
    tokio::time::sleep(idle_window).await;
    let idle_cpu = cpu_time(cp.pid()).saturating_sub(cpu0);
    let lost = connected.lost();
    let stream_retries = connected.stream_retries();

    // The control plane goes first, so it does not record N disconnects.
    drop(cp);
    connected.close().await;
    Ok(Scale {
        runtimes: n,
        pairing,
        connect_all,
        rss_before,
        rss_after,
        idle_window,
        idle_cpu,
        lost,
        pairing_retries: pairing_retries.load(Ordering::Relaxed),
        stream_retries,
    })
}
