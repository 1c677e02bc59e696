//! A team-sized day on PostgreSQL: one control plane with thousands of
//! connected runtimes (played by the bench: real Hello, heartbeats) and one
//! real oma-agent whose sessions all stream at once, each watched by one
//! `WatchSession` client. Measured: latency from the test agent's stamp to
//! the watcher's receive over every session, events delivered, CPU per
//! event of the control plane and of oma-agent, the control plane's RSS,
//! and PostgreSQL's own CPU over the window.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use oma_integration_tests::TestDatabase;
use oma_proto::pb::session_event::Kind;

use super::env::Env;
use super::latency::{RelaySample, timestamp_ns};
use super::procs::{cpu_time, rss_bytes};
use super::scale;
use super::stats::{Latency, sent_unix_ns, unix_ns};

/// A watcher that receives nothing for this long gives up.
const STALL: Duration = Duration::from_secs(60);

pub struct TeamSizes {
    /// Runtimes the bench plays (besides the real oma-agent).
    pub runtimes: usize,
    /// Sessions on the real oma-agent, all streaming at once.
    pub sessions: usize,
    /// Events per second of each session.
    pub rate: u64,
    /// How long each session streams.
    pub window: Duration,
}

impl TeamSizes {
    pub fn new(smoke: bool) -> TeamSizes {
        if smoke {
            TeamSizes {
                runtimes: 5,
                sessions: 3,
                rate: 50,
                window: Duration::from_secs(2),
            }
        } else {
            TeamSizes {
                runtimes: 2000,
                sessions: 200,
                rate: 50,
                window: Duration::from_secs(30),
            }
        }
    }

    /// Chunks each session writes.
    pub fn per_session(&self) -> u64 {
        self.rate * self.window.as_secs()
    }
}

pub struct Team {
    pub runtimes: usize,
    pub sessions: usize,
    pub rate: u64,
    pub window: Duration,
    pub pairing: Duration,
    pub pairing_retries: usize,
    pub connect_all: Duration,
    pub stream_retries: usize,
    /// Runtime streams that ended before the bench stopped them.
    pub lost: usize,
    /// CreateSession of the first until every session is idle.
    pub sessions_start: Duration,
    pub expected: u64,
    pub delivered: u64,
    /// What went wrong in the watchers (stalls, turn errors).
    pub errors: Vec<String>,
    pub latency: Latency,
    /// The latency split at oma-agent's stamp (`SessionEvent.time`, set
    /// when it reads the line): child → oma-agent, oma-agent → watcher.
    pub to_agent: Latency,
    pub from_agent: Latency,
    /// The prompts until the last watcher saw its turn end.
    pub elapsed: Duration,
    pub cp_cpu: Duration,
    pub agent_cpu: Duration,
    pub postgres_cpu: Duration,
    /// Processes named `postgres` alive at the end of the window.
    pub postgres_procs: usize,
    /// With the runtimes connected, before the sessions.
    pub cp_rss_before: u64,
    pub cp_rss_after: u64,
    pub stuck_sessions: usize,
}

impl Team {
    /// CPU time per delivered event, in ns.
    pub fn per_event(&self, cpu: Duration) -> u64 {
        (cpu.as_nanos() / u128::from(self.delivered.max(1))) as u64
    }
}

/// utime+stime of every process whose `/proc/PID/comm` is `postgres` (the
/// server and its backends, whoever they serve).
fn postgres_cpu() -> HashMap<u32, Duration> {
    let mut out = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if std::fs::read_to_string(entry.path().join("comm")).is_ok_and(|c| c.trim_end() == "postgres") {
            out.insert(pid, cpu_time(pid));
        }
    }
    out
}

/// CPU used since `before` by the `postgres` processes alive now (one that
/// started in between counts from zero; one that exited is missed).
fn postgres_cpu_since(before: &HashMap<u32, Duration>) -> (Duration, usize) {
    let now = postgres_cpu();
    let used = now
        .iter()
        .map(|(pid, t)| t.saturating_sub(before.get(pid).copied().unwrap_or_default()))
        .sum();
    (used, now.len())
}

/// One watcher's take: the stamped chunks it received, and the error that
/// ended it early.
struct Watched {
    samples: Vec<RelaySample>,
    error: Option<String>,
}

async fn watch_turn(mut stream: tonic::Streaming<oma_proto::pb::SessionEvent>, session_id: String) -> Watched {
    let mut samples = Vec::new();
    let error = loop {
        let event = match tokio::time::timeout(STALL, stream.message()).await {
            Ok(Ok(Some(event))) => event,
            Ok(Ok(None)) => break Some("the watch ended before the turn did".to_owned()),
            Ok(Err(status)) => break Some(format!("the watch failed: {status}")),
            Err(_) => break Some(format!("nothing received for {STALL:?}")),
        };
        let at = unix_ns();
        match &event.kind {
            Some(Kind::Update(update)) => {
                if let Some(sent) = sent_unix_ns(&update.raw_json) {
                    samples.push(RelaySample {
                        received: at,
                        sent,
                        agent: timestamp_ns(&event.time),
                    });
                }
            }
            Some(Kind::TurnEnded(end)) => {
                break (!end.error.is_empty()).then(|| format!("the turn ended with an error: {}", end.error));
            }
            _ => {}
        }
    };
    let error = error.map(|e| format!("session {session_id}, after {} chunks: {e}", samples.len()));
    Watched { samples, error }
}

/// Runs the team day on a fresh PostgreSQL database.
pub async fn run(sizes: &TeamSizes, log_dir: &Path) -> anyhow::Result<Team> {
    // Before the control plane starts: it inherits the limit.
    scale::raise_nofile_limit();
    let database = TestDatabase::postgres("oma-bench team")?.context("no PostgreSQL configured")?;
    let mut env = Env::start(database, log_dir).await?;
    let cp_pid = env.cp.pid();

    eprintln!("oma-bench: team: pairing {} runtimes", sizes.runtimes);
    let pairing_retries = AtomicUsize::new(0);
    let start = Instant::now();
    let machines = scale::pair(&env.cp, sizes.runtimes, "team-machine", &pairing_retries).await?;
    let pairing = start.elapsed();
    eprintln!("oma-bench: team: connecting {} runtimes", sizes.runtimes);
    let connected = scale::connect(&env.cp.url(), machines).await?;
    let connect_all = connected.connect_all;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cp_rss_before = rss_bytes(cp_pid)?;

    eprintln!("oma-bench: team: starting {} sessions", sizes.sessions);
    let agent_id = env.create_agent("team").await?;
    let start = Instant::now();
    let ids = env.create_idle_sessions(&agent_id, sizes.sessions).await?;
    let sessions_start = start.elapsed();
    let agent_pid = env.daemon_pid();

    // One watcher per session, attached before the prompt from the next
    // seq (so it misses nothing, whenever the server starts sending).
    let last_seqs: HashMap<String, u64> = env
        .list_sessions(&agent_id)
        .await?
        .into_iter()
        .map(|s| (s.id, s.last_seq))
        .collect();
    let mut watchers = Vec::with_capacity(ids.len());
    for id in &ids {
        let from = last_seqs.get(id).copied().unwrap_or(0) + 1;
        let stream = env.watch(id, from).await?;
        watchers.push(tokio::spawn(watch_turn(stream, id.clone())));
    }

    let per_session = sizes.per_session();
    eprintln!(
        "oma-bench: team: {} sessions × {per_session} chunks at {}/s",
        sizes.sessions, sizes.rate
    );
    let pg0 = postgres_cpu();
    let (cp0, agent0) = (cpu_time(cp_pid), cpu_time(agent_pid));
    let start = Instant::now();
    let script = format!("chunks {per_session} {}", sizes.rate);
    let prompts = futures::future::join_all(ids.iter().map(|id| env.prompt(id, &script))).await;
    for prompt in prompts {
        prompt?;
    }
    let mut samples = Vec::with_capacity((per_session as usize) * ids.len());
    let mut errors = Vec::new();
    for watcher in watchers {
        let watched = watcher.await?;
        samples.extend(watched.samples);
        errors.extend(watched.error);
    }
    let elapsed = start.elapsed();
    let cp_cpu = cpu_time(cp_pid).saturating_sub(cp0);
    let agent_cpu = cpu_time(agent_pid).saturating_sub(agent0);
    let (postgres_cpu, postgres_procs) = postgres_cpu_since(&pg0);
    let cp_rss_after = rss_bytes(cp_pid)?;
    let lost = connected.lost();
    let stream_retries = connected.stream_retries();
    let delivered = samples.len() as u64;
    let pairs = |f: fn(&RelaySample) -> (u64, u64)| samples.iter().map(f).collect::<Vec<_>>();
    let latency = Latency::of_pairs(&pairs(|s| (s.received, s.sent)));
    let to_agent = Latency::of_pairs(&pairs(|s| (s.agent, s.sent)));
    let from_agent = Latency::of_pairs(&pairs(|s| (s.received, s.agent)));

    // The control plane goes first, so it does not record the disconnects.
    let stuck_sessions = env.stuck_sessions;
    drop(env);
    connected.close().await;
    Ok(Team {
        runtimes: sizes.runtimes,
        sessions: sizes.sessions,
        rate: sizes.rate,
        window: sizes.window,
        pairing,
        pairing_retries: pairing_retries.load(Ordering::Relaxed),
        connect_all,
        stream_retries,
        lost,
        sessions_start,
        expected: per_session * sizes.sessions as u64,
        delivered,
        errors,
        latency,
        to_agent,
        from_agent,
        elapsed,
        cp_cpu,
        agent_cpu,
        postgres_cpu,
        postgres_procs,
        cp_rss_before,
        cp_rss_after,
        stuck_sessions,
    })
}
