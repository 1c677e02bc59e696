//! Fault injection for the delivery tests and the soak: a TCP proxy between
//! an agent and the control plane that can cut, stall, delay or refuse on
//! command; kill -9 / restart helpers for the control plane (same database,
//! same port) and the agent daemon; a raw machine client that speaks the
//! runtime stream itself; and readers that check a session's log (every
//! event once, in order, no gap; every numbered `chunk <i>` once).
//!
//! The proxy runs on its own small tokio runtime, so a test that blocks its
//! own thread (waiting for a process line) never stalls the traffic.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use oma_proto::pb;
use oma_proto::pb::session_event::Kind;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use prost::Message as _;

use crate::{
    AgentDaemon, Bearer, Clients, ControlPlane, ControlPlaneOptions, Process, START_DEADLINE, TestDatabase,
    listening_addr,
};

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything at once.
    Forward,
    /// Forward nothing and close nothing: bytes wait (in the proxy and the
    /// kernel buffers) until the mode changes, like a dead network path.
    Stall,
    /// Forward every chunk this long after it was read (latency, not a
    /// throughput limit).
    Delay(Duration),
    /// Close new connections at once (existing ones keep forwarding), like
    /// a server that is down.
    Refuse,
}

#[derive(Clone, Default)]
struct Generation {
    token: CancellationToken,
    open: Arc<AtomicUsize>,
}

struct Shared {
    target: Mutex<SocketAddr>,
    mode: watch::Sender<Mode>,
    /// Cancelled by `cut`; every connection holds a child of the current
    /// one and counts itself in its open count.
    generation: Mutex<Generation>,
    open: AtomicUsize,
    accepted: AtomicU64,
    cut_connections: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

/// A TCP proxy on 127.0.0.1 (port 0) forwarding to a target that may move.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Proxy {
    /// Listens on 127.0.0.1:0 and forwards every connection to `target`.
    pub fn start(target: SocketAddr) -> anyhow::Result<Proxy> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fault-proxy")
            .enable_all()
            .build()?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target: Mutex::new(target),
            mode: watch::channel(Mode::Forward).0,
            generation: Mutex::new(Generation::default()),
            open: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            cut_connections: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
        });
        let accept_shared = shared.clone();
        runtime.spawn(async move {
            let listener = match TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("fault proxy: cannot listen: {e}");
                    return;
                }
            };
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                accept_shared.accepted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(connection(client, accept_shared.clone()));
            }
        });
        Ok(Proxy {
            addr,
            shared,
            runtime: Some(runtime),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL an agent is paired with (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where new connections go (existing ones stay where they are).
    pub fn set_target(&self, target: SocketAddr) {
        *self.shared.target.lock().expect("proxy lock") = target;
    }

    pub fn mode(&self) -> Mode {
        *self.shared.mode.borrow()
    }

    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.send_replace(mode);
    }

    /// Stops forwarding without closing anything.
    pub fn stall(&self) {
        self.set_mode(Mode::Stall);
    }

    /// Delays every chunk by `by`.
    pub fn delay(&self, by: Duration) {
        self.set_mode(Mode::Delay(by));
    }

    /// Closes new connections at once.
    pub fn refuse(&self) {
        self.set_mode(Mode::Refuse);
    }

    /// Back to forwarding everything at once.
    pub fn resume(&self) {
        self.set_mode(Mode::Forward);
    }

    /// Resets every open connection (RST both ways); returns how many it cut.
    pub fn cut(&self) -> usize {
        let old = std::mem::take(&mut *self.shared.generation.lock().expect("proxy lock"));
        old.token.cancel();
        let open = old.open.load(Ordering::SeqCst);
        self.shared.cut_connections.fetch_add(open as u64, Ordering::Relaxed);
        open
    }

    /// Connections forwarding now (none of them cut yet).
    pub fn open_connections(&self) -> usize {
        self.shared
            .generation
            .lock()
            .expect("proxy lock")
            .open
            .load(Ordering::SeqCst)
    }

    /// Connections accepted since the start.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Connections closed by `cut`.
    pub fn cut_connections(&self) -> u64 {
        self.shared.cut_connections.load(Ordering::Relaxed)
    }

    /// Bytes forwarded client → target and target → client.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.shared.bytes_up.load(Ordering::Relaxed),
            self.shared.bytes_down.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.generation.lock().expect("proxy lock").token.cancel();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Decrements the open-connection counts when a connection ends.
struct OpenGuard(Arc<Shared>, Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.1.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn connection(client: TcpStream, shared: Arc<Shared>) {
    if *shared.mode.borrow() == Mode::Refuse {
        let _ = client.set_zero_linger();
        return;
    }
    let generation = shared.generation.lock().expect("proxy lock").clone();
    let token = generation.token.child_token();
    let target = *shared.target.lock().expect("proxy lock");
    let server = tokio::select! {
        _ = token.cancelled() => return,
        server = TcpStream::connect(target) => match server {
            Ok(s) => s,
            Err(_) => {
                let _ = client.set_zero_linger();
                return;
            }
        },
    };
    for s in [&client, &server] {
        let _ = s.set_nodelay(true);
        // Every close is a reset: a cut looks like a network failure, and
        // thousands of cuts leave no TIME_WAIT behind.
        let _ = s.set_zero_linger();
    }
    // Counted in its generation before the check, so a cut either sees it
    // or has already cancelled it.
    generation.open.fetch_add(1, Ordering::SeqCst);
    shared.open.fetch_add(1, Ordering::SeqCst);
    let _guard = OpenGuard(shared.clone(), generation.open.clone());
    if token.is_cancelled() {
        return;
    }
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, shared.clone(), true);
    let down = pump(server_read, client_write, shared.clone(), false);
    tokio::select! {
        _ = token.cancelled() => {}
        _ = async { tokio::try_join!(up, down) } => {}
    }
}

/// Waits until the mode is not `Stall`; returns the mode then.
async fn unstalled(mode: &mut watch::Receiver<Mode>) -> Mode {
    loop {
        let current = *mode.borrow_and_update();
        if current != Mode::Stall {
            return current;
        }
        if mode.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Copies one direction: a reader stage stamps each chunk with the time it
/// is due, a writer stage writes it then. Both stop while stalled.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    shared: Arc<Shared>,
    up: bool,
) -> std::io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(64);
    let mut read_mode = shared.mode.subscribe();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            unstalled(&mut read_mode).await;
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            let due = match *read_mode.borrow() {
                Mode::Delay(by) => Instant::now() + by,
                _ => Instant::now(),
            };
            if tx.send((due, buf[..n].to_vec())).await.is_err() {
                return Ok(());
            }
        }
    };
    let mut write_mode = shared.mode.subscribe();
    let counter = if up { &shared.bytes_up } else { &shared.bytes_down };
    let writer = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due.into()).await;
            unstalled(&mut write_mode).await;
            to.write_all(&bytes).await?;
            counter.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        // The reader saw EOF: pass it on.
        let _ = to.shutdown().await;
        Ok::<_, std::io::Error>(())
    };
    tokio::try_join!(reader, writer)?;
    Ok(())
}

/// The log level of the processes these helpers start (`OMA_FAULTS_LOG`,
/// default `info`: their stderr goes to a file, see [`control_plane_log`]).
pub fn log_level() -> String {
    std::env::var("OMA_FAULTS_LOG").unwrap_or_else(|_| "info,h2=warn,tower=warn,hyper=warn".into())
}

/// A workspace binary (see [`crate::bin_dir`]).
pub fn binary(name: &str) -> PathBuf {
    crate::bin(name)
}

/// Where a control plane on `database` writes its stderr.
pub fn control_plane_log_path(database: &TestDatabase) -> PathBuf {
    match database {
        TestDatabase::Sqlite { dir } => dir.path().join("control-plane.stderr.log"),
        TestDatabase::Postgres { name, .. } => std::env::temp_dir().join(format!("{name}.control-plane.stderr.log")),
    }
}

/// Everything the control plane (all its restarts) wrote to stderr.
pub fn control_plane_log(cp: &ControlPlane) -> String {
    std::fs::read_to_string(control_plane_log_path(&cp.database)).unwrap_or_default()
}

/// Lines of a log that report a panic.
pub fn panics_in(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("panicked"))
        .map(str::to_owned)
        .collect()
}

/// The options of a control plane on `database` whose stderr goes to
/// [`control_plane_log_path`] at [`log_level`].
pub fn logged_options(database: &TestDatabase, extra_args: &[&str]) -> ControlPlaneOptions {
    ControlPlaneOptions {
        extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
        stderr_log: Some(control_plane_log_path(database)),
        log_filter: Some(log_level()),
        ..Default::default()
    }
}

/// Starts a plaintext control plane on a fresh `database` with extra
/// `serve` flags (e.g. `--heartbeat-interval 1s`). Its stderr goes to
/// [`control_plane_log_path`].
pub fn start_control_plane(database: TestDatabase, extra_args: &[&str]) -> anyhow::Result<ControlPlane> {
    let options = logged_options(&database, extra_args);
    ControlPlane::start(database, options)
}

/// SIGKILLs the control plane and waits until it is gone.
pub fn kill_control_plane(cp: &mut ControlPlane) -> anyhow::Result<()> {
    if cp.process.wait_exit(Duration::ZERO).is_err() {
        let _ = cp.process.signal("KILL");
        cp.process.wait_exit(Duration::from_secs(30))?;
    }
    Ok(())
}

/// Starts the control plane again on the same database and, when it can be
/// bound again within a few seconds, the same port (so clients' channels
/// reconnect by themselves); else on a new port. Kills the old process first
/// if it still runs; starts it as it was started (its `options`). Returns
/// the address it listens on.
pub fn restart_control_plane(cp: &mut ControlPlane) -> anyhow::Result<SocketAddr> {
    kill_control_plane(cp)?;
    let start = Instant::now();
    let mut last_error = None;
    while start.elapsed() < Duration::from_secs(10) {
        let mut process = ControlPlane::spawn(&cp.database, &cp.options, &cp.addr.to_string())?;
        match process.wait_for_line(START_DEADLINE, listening_addr) {
            Ok(addr) => {
                cp.process = process;
                cp.addr = addr;
                return Ok(addr);
            }
            Err(e) => {
                last_error = Some(e);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    eprintln!(
        "faults: port {} stays taken ({last_error:?}); moving to a new port",
        cp.addr
    );
    start_on_a_new_port(cp)
}

/// Kills the control plane (if it still runs) and starts another on the
/// same database on a new port, as another replica taking over would be.
/// Returns the address it listens on.
pub fn replace_control_plane(cp: &mut ControlPlane) -> anyhow::Result<SocketAddr> {
    kill_control_plane(cp)?;
    start_on_a_new_port(cp)
}

/// Starts another replica on the control plane's database beside the
/// running one, on a new port. Returns its process (killed when dropped)
/// and address.
pub fn start_another_replica(cp: &ControlPlane) -> anyhow::Result<(Process, SocketAddr)> {
    let mut process = ControlPlane::spawn(&cp.database, &cp.options, "127.0.0.1:0")?;
    let addr = process.wait_for_line(START_DEADLINE, listening_addr)?;
    Ok((process, addr))
}

fn start_on_a_new_port(cp: &mut ControlPlane) -> anyhow::Result<SocketAddr> {
    let mut process = ControlPlane::spawn(&cp.database, &cp.options, "127.0.0.1:0")?;
    let addr = process.wait_for_line(START_DEADLINE, listening_addr)?;
    cp.process = process;
    cp.addr = addr;
    Ok(addr)
}

/// The pid of a control plane.
pub fn control_plane_pid(cp: &ControlPlane) -> Option<u32> {
    Some(cp.pid())
}

/// The resident set size of a process, in KiB (`VmRSS` of /proc/PID/status).
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Pairs a new machine with `server` (e.g. a [`Proxy`]'s URL, which its
/// credentials then hold) whose agent table holds the scripted test agent
/// as `test`.
pub fn pair_agent(server: &str, code: &str) -> anyhow::Result<AgentDaemon> {
    AgentDaemon::setup(server, code)
}

/// Where a daemon with this data dir writes its stderr.
pub fn agent_log_path(data_dir: &Path) -> PathBuf {
    data_dir.join("oma-agent.stderr.log")
}

/// Starts `oma-agent --config-dir C --data-dir D run ARGS` with its stderr
/// in the data dir ([`agent_log_path`]) and waits for it to say it runs.
pub fn spawn_agent(config_dir: &Path, data_dir: &Path, args: &[&str]) -> anyhow::Result<Process> {
    let mut command = AgentDaemon::command_in(config_dir, data_dir)?;
    command.arg("run").args(args).env("OMA_LOG", log_level());
    let mut process = Process::spawn_logged(command, "oma-agent", &agent_log_path(data_dir))?;
    process.wait_for_line(START_DEADLINE, |l| l.starts_with("oma-agent ").then_some(()))?;
    Ok(process)
}

/// Makes the daemon's stderr go to [`agent_log_path`] at [`log_level`].
pub fn log_agent_to_file(machine: &mut AgentDaemon) {
    machine.stderr_log = Some(agent_log_path(machine.data_dir.path()));
    machine.log_filter = log_level();
}

/// Starts `oma-agent run` with exactly `args` (unlike
/// [`AgentDaemon::start`], which adds `--reconnect-max 2`), its stderr in
/// the data dir.
pub fn start_agent(machine: &mut AgentDaemon, args: &[&str]) -> anyhow::Result<()> {
    log_agent_to_file(machine);
    machine.start_exactly(args)
}

/// Everything the daemon (all its restarts) wrote to stderr.
pub fn agent_log(machine: &AgentDaemon) -> String {
    std::fs::read_to_string(agent_log_path(machine.data_dir.path())).unwrap_or_default()
}

/// What the daemon's on-disk outbox says about a session: the highest seq
/// it numbered (so: read from the child, or made by the daemon) and the
/// events it still holds unacknowledged.
#[derive(Debug, Default)]
pub struct OutboxView {
    pub acked: u64,
    pub last_seq: u64,
    pub pending: Vec<pb::SessionEvent>,
}

/// Reads `<data dir>/outbox/<session>.{log,ack}` (records of a u32 LE
/// length and an encoded SessionEvent) while the daemon is stopped.
pub fn read_outbox(data_dir: &Path, session_id: &str) -> OutboxView {
    let dir = data_dir.join("outbox");
    let acked = std::fs::read_to_string(dir.join(format!("{session_id}.ack")))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let mut view = OutboxView {
        acked,
        last_seq: acked,
        pending: Vec::new(),
    };
    let bytes = std::fs::read(dir.join(format!("{session_id}.log"))).unwrap_or_default();
    let mut rest = bytes.as_slice();
    while rest.len() >= 4 {
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if rest.len() < 4 + len {
            break;
        }
        let Ok(event) = pb::SessionEvent::decode(&rest[4..4 + len]) else {
            break;
        };
        rest = &rest[4 + len..];
        view.last_seq = view.last_seq.max(event.seq);
        if event.seq > acked {
            view.pending.push(event);
        }
    }
    view
}

/// SIGKILLs the daemon (its ACP children are not told).
pub fn kill_agent(machine: &mut AgentDaemon) -> anyhow::Result<()> {
    machine.kill()
}

/// SIGTERMs the daemon and returns its exit status.
pub fn term_agent(machine: &mut AgentDaemon, deadline: Duration) -> anyhow::Result<std::process::ExitStatus> {
    let mut process = machine.process.take().context("the agent is not running")?;
    process.signal("TERM")?;
    process.wait_exit(deadline)
}

pub use crate::READ_LIMIT;

/// A session's stored `last_seq`.
pub async fn last_seq(clients: &Clients, session_id: &str) -> anyhow::Result<u64> {
    Ok(clients.get_session(session_id).await?.last_seq)
}

/// A session's status.
pub async fn session_status(clients: &Clients, session_id: &str) -> anyhow::Result<pb::SessionStatus> {
    let session = clients.get_session(session_id).await?;
    Ok(pb::SessionStatus::try_from(session.status).unwrap_or(pb::SessionStatus::Unspecified))
}

/// Reads the whole stored log of a session back with WatchSession from seq
/// 1 (as many events as `last_seq` says), within `deadline`.
pub async fn read_log(
    clients: &Clients,
    session_id: &str,
    deadline: Duration,
) -> anyhow::Result<Vec<pb::SessionEvent>> {
    let last = last_seq(clients, session_id).await?;
    let mut sessions = clients.sessions.clone().max_decoding_message_size(READ_LIMIT);
    let mut stream = sessions
        .watch_session(pb::WatchSessionRequest {
            session_id: session_id.into(),
            from_seq: 1,
            until_turn_end: false,
        })
        .await?
        .into_inner();
    let mut events = Vec::with_capacity(last as usize);
    let read = tokio::time::timeout(deadline, async {
        while (events.len() as u64) < last {
            match stream.message().await? {
                Some(event) => events.push(event),
                None => bail!("the watch ended after {} of {last} events", events.len()),
            }
        }
        Ok(())
    })
    .await;
    match read {
        Ok(r) => r?,
        Err(_) => bail!(
            "read only {} of {last} events of {session_id} within {deadline:?}",
            events.len()
        ),
    }
    Ok(events)
}

/// Collects a session's events from `from_seq` until the turn `turn_id`
/// ends ([`crate::collect_turn`]).
pub async fn watch_turn(
    clients: &Clients,
    session_id: &str,
    from_seq: u64,
    turn_id: &str,
    deadline: Duration,
) -> anyhow::Result<Vec<pb::SessionEvent>> {
    crate::collect_turn(clients, session_id, from_seq, turn_id, deadline).await
}

/// Where a list of seqs departs from 1, 2, 3 … n.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SeqReport {
    pub count: u64,
    /// Numbers in 1..=max missing.
    pub missing: Vec<u64>,
    /// Numbers seen more than once (each extra copy listed).
    pub duplicated: Vec<u64>,
    /// Positions where a number is not larger than the one before.
    pub out_of_order: u64,
}

impl SeqReport {
    pub fn of(numbers: impl IntoIterator<Item = u64>, expected_max: Option<u64>) -> SeqReport {
        let mut report = SeqReport::default();
        let mut seen = HashSet::new();
        let mut previous: Option<u64> = None;
        let mut max = 0;
        for n in numbers {
            report.count += 1;
            if !seen.insert(n) {
                report.duplicated.push(n);
            }
            if previous.is_some_and(|p| n <= p) {
                report.out_of_order += 1;
            }
            previous = Some(n);
            max = max.max(n);
        }
        let max = expected_max.unwrap_or(max);
        report.missing = (1..=max).filter(|n| !seen.contains(n)).collect();
        report
    }

    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.duplicated.is_empty() && self.out_of_order == 0
    }
}

/// `chunk <i>` numbers of the chunk events (the test agent's `chunks N`)
/// of one turn, in log order.
pub fn chunk_numbers(events: &[pb::SessionEvent], turn_id: &str) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e.turn_id == turn_id)
        .filter_map(|e| agent_text_of(e)?.strip_prefix("chunk ")?.trim_end().parse().ok())
        .collect()
}

pub use crate::world::{agent_text, agent_text_of};

/// The TurnEnded event of a turn.
pub fn turn_end<'a>(events: &'a [pb::SessionEvent], turn_id: &str) -> Option<&'a pb::TurnEnded> {
    events.iter().find_map(|e| match &e.kind {
        Some(Kind::TurnEnded(end)) if e.turn_id == turn_id => Some(end),
        _ => None,
    })
}

/// Checks a whole log: seqs exactly 1..=n, one TurnEnded per turn that
/// started, and (for each `(turn, n)` in `chunk_turns`) the chunk numbers
/// 1..=n each once in order (`None`: a prefix 1..=max, for a turn that was
/// cut short). Returns a description of every problem.
pub fn log_problems(events: &[pb::SessionEvent], chunk_turns: &[(String, Option<u64>)]) -> Vec<String> {
    let mut problems = Vec::new();
    let seqs = SeqReport::of(events.iter().map(|e| e.seq), Some(events.len() as u64));
    if !seqs.is_clean() {
        problems.push(format!(
            "seqs are not 1..={}: missing {:?}, duplicated {:?}, {} out of order",
            events.len(),
            truncated(&seqs.missing),
            truncated(&seqs.duplicated),
            seqs.out_of_order
        ));
    }
    let mut started = Vec::new();
    let mut ended = Vec::new();
    for e in events {
        match &e.kind {
            Some(Kind::TurnStarted(_)) => started.push(e.turn_id.clone()),
            Some(Kind::TurnEnded(_)) => ended.push(e.turn_id.clone()),
            _ => {}
        }
    }
    for turn in &started {
        let n = ended.iter().filter(|t| *t == turn).count();
        if n != 1 {
            problems.push(format!("turn {turn} has {n} TurnEnded events"));
        }
    }
    for (turn, expected) in chunk_turns {
        let chunks = SeqReport::of(chunk_numbers(events, turn), *expected);
        if !chunks.is_clean() {
            problems.push(format!(
                "turn {turn}: {} chunks; missing {:?}, duplicated {:?}, {} out of order",
                chunks.count,
                truncated(&chunks.missing),
                truncated(&chunks.duplicated),
                chunks.out_of_order
            ));
        }
    }
    problems
}

fn truncated(numbers: &[u64]) -> String {
    if numbers.len() <= 20 {
        format!("{numbers:?}")
    } else {
        format!("{:?} … ({} in all)", &numbers[..20], numbers.len())
    }
}

/// A machine paired by hand (no `oma-agent`): the tests speak the runtime
/// stream with it directly.
#[derive(Debug, Clone)]
pub struct RawMachine {
    pub runtime_id: String,
    pub machine_id: String,
    pub token: String,
}

impl RawMachine {
    /// Pairs a new machine with a fresh connect code of `clients`' user.
    pub async fn pair(clients: &mut Clients, name: &str) -> anyhow::Result<RawMachine> {
        let code = clients.connect_code().await?;
        let machine_id = format!("raw-{:016x}", rand::random::<u64>());
        let response = clients
            .runtimes
            .exchange_connect_code(pb::ExchangeConnectCodeRequest {
                code,
                machine_id: machine_id.clone(),
                name: name.into(),
                agent_version: "0.0.0-raw".into(),
                os: "linux".into(),
                arch: "x86_64".into(),
            })
            .await?
            .into_inner();
        Ok(RawMachine {
            runtime_id: response.runtime.context("no runtime")?.id,
            machine_id,
            token: response.machine_token,
        })
    }

    /// A Hello with this machine's id, offering the ACP agent `test`.
    pub fn hello(&self) -> pb::Hello {
        pb::Hello {
            machine_id: self.machine_id.clone(),
            instance_id: format!("{:016x}", rand::random::<u64>()),
            agent_version: "0.0.0-raw".into(),
            os: "linux".into(),
            arch: "x86_64".into(),
            manifest: Some(pb::Manifest {
                acp_agents: vec![pb::AcpAgentInfo {
                    id: "test".into(),
                    name: "raw".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            sessions: Vec::new(),
        }
    }

    /// The stream client, with limits far above the server's.
    pub fn client(
        &self,
        channel: Channel,
    ) -> oma_proto::pb::runtime_stream_service_client::RuntimeStreamServiceClient<crate::Authed> {
        oma_proto::pb::runtime_stream_service_client::RuntimeStreamServiceClient::with_interceptor(
            channel,
            Bearer::new(&self.token),
        )
        .max_decoding_message_size(READ_LIMIT)
        .max_encoding_message_size(READ_LIMIT)
    }

    /// Opens a stream with `hello` as its first frame and waits for Welcome.
    pub async fn open(&self, channel: Channel, hello: pb::Hello) -> Result<RawStream, tonic::Status> {
        let (tx, rx) = mpsc::channel(64);
        tx.send(pb::AgentFrame {
            frame: Some(pb::agent_frame::Frame::Hello(hello)),
        })
        .await
        .expect("the channel is open");
        let mut inbound = self
            .client(channel)
            .open_stream(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let welcome = match tokio::time::timeout(Duration::from_secs(30), inbound.message()).await {
            Ok(Ok(Some(pb::ControlFrame {
                frame: Some(pb::control_frame::Frame::Welcome(w)),
            }))) => w,
            Ok(Err(status)) => return Err(status),
            other => return Err(tonic::Status::unknown(format!("no Welcome: {other:?}"))),
        };
        Ok(RawStream {
            tx,
            inbound,
            welcome,
            beat: 0,
        })
    }
}

/// A raw machine with a session of its own: paired as `name` by
/// `clients`' user, connected once (so its manifest names `test`), with an
/// agent `spec(runtime_id)` bound to it and a session of that agent, which
/// the server has started on it (its StartSession came, each frame within
/// 10 s). Returns the machine, its open stream and the session id.
pub async fn raw_machine_with_session(
    cp: &ControlPlane,
    clients: &mut Clients,
    name: &str,
    spec: impl FnOnce(&str) -> pb::AgentSpec,
) -> anyhow::Result<(RawMachine, RawStream, String)> {
    let raw = RawMachine::pair(clients, name).await?;
    let mut stream = raw.open(cp.channel().await?, raw.hello()).await?;
    let agent_id = clients.create_agent(spec(&raw.runtime_id)).await?;
    let session_id = clients.create_session(&agent_id, "").await?;
    stream
        .next_matching(Duration::from_secs(10), |frame| {
            matches!(frame, pb::control_frame::Frame::StartSession(start) if start.session_id == session_id)
                .then_some(())
        })
        .await
        .map_err(|other| anyhow::anyhow!("no StartSession for {session_id}: {other:?}"))?;
    Ok((raw, stream, session_id))
}

/// An open raw runtime stream.
pub struct RawStream {
    pub tx: mpsc::Sender<pb::AgentFrame>,
    pub inbound: tonic::Streaming<pb::ControlFrame>,
    pub welcome: pb::Welcome,
    beat: u64,
}

/// How a raw stream answered.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // a test helper, moved rarely
pub enum StreamAnswer {
    /// A frame came.
    Frame(pb::control_frame::Frame),
    /// The server ended the stream with OK (no status).
    Closed,
    /// The server ended the stream with an error status.
    Status(tonic::Status),
    /// Nothing within the deadline.
    Silent,
}

impl RawStream {
    /// Sends a frame (false when the stream is gone).
    pub async fn send(&self, frame: Option<pb::agent_frame::Frame>) -> bool {
        self.tx.send(pb::AgentFrame { frame }).await.is_ok()
    }

    /// The next frame, the end, or silence.
    pub async fn next(&mut self, deadline: Duration) -> StreamAnswer {
        match tokio::time::timeout(deadline, self.inbound.message()).await {
            Err(_) => StreamAnswer::Silent,
            Ok(Ok(Some(pb::ControlFrame { frame: Some(frame) }))) => StreamAnswer::Frame(frame),
            Ok(Ok(Some(pb::ControlFrame { frame: None }))) => {
                StreamAnswer::Status(tonic::Status::internal("the server sent an empty frame"))
            }
            Ok(Ok(None)) => StreamAnswer::Closed,
            Ok(Err(status)) => StreamAnswer::Status(status),
        }
    }

    /// Reads frames until `pick` takes one; each frame must come within
    /// `silence`. `Err` with how the stream answered instead (it ended, or
    /// went silent).
    pub async fn next_matching<T>(
        &mut self,
        silence: Duration,
        mut pick: impl FnMut(&pb::control_frame::Frame) -> Option<T>,
    ) -> Result<T, StreamAnswer> {
        loop {
            match self.next(silence).await {
                StreamAnswer::Frame(frame) => {
                    if let Some(found) = pick(&frame) {
                        return Ok(found);
                    }
                }
                other => return Err(other),
            }
        }
    }

    /// Sends a heartbeat and waits for its echo, collecting what comes
    /// before it. `Err` with how the stream answered when no echo comes:
    /// proof the stream is (or is not) still served.
    pub async fn ping(&mut self, deadline: Duration) -> Result<Vec<pb::control_frame::Frame>, StreamAnswer> {
        self.beat += 1;
        let sent_at_ms = 1_000_000 + self.beat;
        if !self
            .send(Some(pb::agent_frame::Frame::Heartbeat(pb::Heartbeat { sent_at_ms })))
            .await
        {
            return Err(StreamAnswer::Closed);
        }
        let start = Instant::now();
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_sub(start.elapsed());
            match self.next(left).await {
                StreamAnswer::Frame(pb::control_frame::Frame::Heartbeat(h)) if h.sent_at_ms == sent_at_ms => {
                    return Ok(before);
                }
                StreamAnswer::Frame(frame) => before.push(frame),
                other => return Err(other),
            }
        }
    }
}
