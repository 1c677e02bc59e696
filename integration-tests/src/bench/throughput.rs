//! Throughput of durably stored events, and replay to a late watcher.
//!
//! Throughput: every session's test agent writes `chunks N` at full speed;
//! the clock runs from the first prompt until each session's `last_seq`
//! (which the control plane advances in the same transaction that stores
//! the events) covers all N chunks. CPU time of the control plane, the
//! daemon and the test agents is read from `/proc` around the run.

use std::time::{Duration, Instant};

use anyhow::bail;

use super::env::Env;
use super::procs::{children, count_log_lines, cpu_time};

/// No stored event for this long means the run is stuck.
const STALL: Duration = Duration::from_secs(15);

pub struct Throughput {
    pub sessions: usize,
    pub events: u64,
    pub elapsed: Duration,
    pub cp_cpu: Duration,
    pub agent_cpu: Duration,
    pub children_cpu: Duration,
    pub session_ids: Vec<String>,
}

impl Throughput {
    pub fn per_sec(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// CPU time per event, in ns.
    pub fn cpu_per_event(&self, cpu: Duration) -> u64 {
        (cpu.as_nanos() / u128::from(self.events.max(1))) as u64
    }
}

/// CPU time of the daemon's children (the test agents) since `before`,
/// counting children that started in between from zero.
fn children_cpu_since(agent_pid: u32, before: &[(u32, Duration)]) -> Duration {
    children(agent_pid)
        .into_iter()
        .map(|pid| {
            let was = before
                .iter()
                .find(|(p, _)| *p == pid)
                .map_or(Duration::ZERO, |(_, t)| *t);
            cpu_time(pid).saturating_sub(was)
        })
        .sum()
}

/// Runs `sessions` concurrent sessions of `each` full-speed chunks on one
/// runtime.
pub async fn run(env: &mut Env, sessions: usize, each: u64) -> anyhow::Result<Throughput> {
    let agent_id = env.create_agent(&format!("throughput-{sessions}x{each}")).await?;
    let ids = env.create_idle_sessions(&agent_id, sessions).await?;
    let base: Vec<(String, u64)> = env
        .list_sessions(&agent_id)
        .await?
        .into_iter()
        .map(|s| (s.id, s.last_seq))
        .collect();
    // TurnStarted, then the chunks.
    let targets: Vec<(String, u64)> = base.iter().map(|(id, seq)| (id.clone(), seq + 1 + each)).collect();

    let cp_pid = env.cp.pid();
    let agent_pid = env.daemon_pid();
    let kids0: Vec<(u32, Duration)> = children(agent_pid).into_iter().map(|p| (p, cpu_time(p))).collect();
    let (cp0, agent0) = (cpu_time(cp_pid), cpu_time(agent_pid));
    let start = Instant::now();
    let script = format!("chunks {each}");
    let prompts = futures::future::join_all(ids.iter().map(|id| env.prompt(id, &script))).await;
    for prompt in prompts {
        prompt?;
    }
    let deadline = Duration::from_secs(120) + Duration::from_millis(each * sessions as u64 / 5);
    let poll = if sessions == 1 {
        Duration::from_millis(2)
    } else {
        Duration::from_millis(10)
    };
    let total_target: u64 = targets.iter().map(|(_, t)| t).sum();
    let mut progress = (0u64, Instant::now(), cpu_time(cp_pid), cpu_time(agent_pid));
    loop {
        // Events still missing across the sessions.
        let missing: u64 = if sessions == 1 {
            targets[0].1.saturating_sub(env.get_session(&ids[0]).await?.last_seq)
        } else {
            let now = env.list_sessions(&agent_id).await?;
            targets
                .iter()
                .map(|(id, target)| {
                    let seq = now.iter().find(|s| &s.id == id).map_or(0, |s| s.last_seq);
                    target.saturating_sub(seq)
                })
                .sum()
        };
        if missing == 0 {
            break;
        }
        if missing != progress.0 {
            progress = (missing, Instant::now(), cpu_time(cp_pid), cpu_time(agent_pid));
        } else if progress.1.elapsed() > STALL {
            bail!(
                "stalled: {missing} of {} events not stored and no progress for {STALL:?}, while the control \
                 plane used {:?} and oma-agent {:?} of CPU (control-plane log: {} \"events refused\", {} \
                 \"database is locked\")",
                total_target - base.iter().map(|(_, b)| b).sum::<u64>(),
                cpu_time(cp_pid).saturating_sub(progress.2),
                cpu_time(agent_pid).saturating_sub(progress.3),
                count_log_lines(&env.log_dir, "events refused"),
                count_log_lines(&env.log_dir, "database is locked")
            );
        }
        if start.elapsed() > deadline {
            bail!("{sessions} session(s) × {each} events not stored within {deadline:?}");
        }
        tokio::time::sleep(poll).await;
    }
    let elapsed = start.elapsed();
    let result = Throughput {
        sessions,
        events: each * sessions as u64,
        elapsed,
        cp_cpu: cpu_time(cp_pid).saturating_sub(cp0),
        agent_cpu: cpu_time(agent_pid).saturating_sub(agent0),
        children_cpu: children_cpu_since(agent_pid, &kids0),
        session_ids: ids.clone(),
    };
    // Let every turn end before the next scenario.
    for id in &ids {
        env.wait_idle(id, Duration::from_secs(120)).await?;
    }
    Ok(result)
}

/// Replays a whole session to a watcher attached from seq 1; returns the
/// number of events and the time until the last one arrived.
pub async fn replay(env: &Env, session_id: &str) -> anyhow::Result<(u64, Duration)> {
    let last = env.get_session(session_id).await?.last_seq;
    let start = Instant::now();
    let mut stream = env.watch(session_id, 1).await?;
    let mut count = 0u64;
    loop {
        match tokio::time::timeout(Duration::from_secs(60), stream.message()).await {
            Ok(Ok(Some(event))) => {
                count += 1;
                if event.seq >= last {
                    break;
                }
            }
            Ok(Ok(None)) => bail!("the watch ended after {count} of {last} events"),
            Ok(Err(status)) => bail!("the watch failed after {count} events: {status}"),
            Err(_) => bail!("the replay stalled after {count} of {last} events"),
        }
    }
    let elapsed = start.elapsed();
    anyhow::ensure!(count == last, "replayed {count} events, the session has {last}");
    Ok((count, elapsed))
}

/// How fast the test agent alone writes `chunks n` at full speed, read by
/// the direct stdio client: the ceiling of what one session can store.
pub fn source_rate(work: &std::path::Path, n: u64) -> anyhow::Result<Duration> {
    let cwd = work.join("source-cwd");
    std::fs::create_dir_all(&cwd)?;
    let mut command = std::process::Command::new(super::procs::bin("oma-test-agent")?);
    command.current_dir(&cwd);
    let mut client = super::acp_client::AcpClient::start(command, &cwd)?;
    let start = Instant::now();
    let samples = client.prompt(&format!("chunks {n}"))?;
    let elapsed = start.elapsed();
    anyhow::ensure!(samples.len() as u64 == n, "read {} of {n} chunks", samples.len());
    Ok(elapsed)
}
