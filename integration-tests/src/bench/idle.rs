//! Memory per idle session: oma-agent's RSS with no sessions, then with N
//! idle sessions of the scripted test agent (each one a child process
//! waiting for a prompt). The children's memory is summed apart: it is the
//! ACP agents' memory, not oma-agent's.

use std::time::{Duration, Instant};

use super::env::Env;
use super::procs::{children, rss_bytes};

/// Sessions per agent: `Env::list_sessions` reads one page of 1,000.
pub const PER_AGENT: usize = 500;

pub struct IdleSessions {
    pub sessions: usize,
    /// Agents the sessions were spread over (`PER_AGENT` each).
    pub agents: usize,
    /// CreateSession of the first session until the last one is idle.
    pub elapsed: Duration,
    pub agent_rss_before: u64,
    pub agent_rss_after: u64,
    /// oma-agent's direct children (the test agents) when measured.
    pub children: usize,
    pub children_rss: u64,
    /// Proportional set size of the children: shared pages (the binary,
    /// libc) counted once across them.
    pub children_pss: u64,
    pub cp_rss_before: u64,
    pub cp_rss_after: u64,
}

impl IdleSessions {
    pub fn per_session(&self) -> u64 {
        self.agent_rss_after.saturating_sub(self.agent_rss_before) / self.sessions.max(1) as u64
    }
}

/// `Pss` of a process from `/proc/PID/smaps_rollup`, in bytes (0 if
/// unreadable).
fn pss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// Creates `n` sessions on a fresh environment (no sessions yet) and
/// measures once every one is idle and the burst has settled.
pub async fn run(env: &mut Env, n: usize, settle: Duration) -> anyhow::Result<IdleSessions> {
    let agent_pid = env.daemon_pid();
    let cp_pid = env.cp.pid();
    anyhow::ensure!(
        children(agent_pid).is_empty(),
        "oma-agent already has children: the idle run needs an environment without sessions"
    );
    tokio::time::sleep(settle).await;
    let agent_rss_before = rss_bytes(agent_pid)?;
    let cp_rss_before = rss_bytes(cp_pid)?;

    let start = Instant::now();
    let mut made = 0;
    let mut agents = 0;
    while made < n {
        let batch = PER_AGENT.min(n - made);
        let agent_id = env.create_agent(&format!("idle-{agents}")).await?;
        agents += 1;
        env.create_idle_sessions(&agent_id, batch).await?;
        made += batch;
        eprintln!("oma-bench: idle: {made} of {n} sessions idle");
    }
    let elapsed = start.elapsed();
    // The daemon may restart once (a stuck session) inside
    // create_idle_sessions: read its pid again.
    let agent_pid = env.daemon_pid();
    tokio::time::sleep(settle).await;

    let kids = children(agent_pid);
    anyhow::ensure!(
        kids.len() == n,
        "{n} sessions are idle but oma-agent has {} children",
        kids.len()
    );
    let children_rss = kids.iter().map(|&pid| rss_bytes(pid).unwrap_or(0)).sum();
    let children_pss = kids.iter().map(|&pid| pss_bytes(pid)).sum();
    Ok(IdleSessions {
        sessions: n,
        agents,
        elapsed,
        agent_rss_before,
        agent_rss_after: rss_bytes(agent_pid)?,
        children: kids.len(),
        children_rss,
        children_pss,
        cp_rss_before,
        cp_rss_after: rss_bytes(cp_pid)?,
    })
}
