//! Relay latency: the test agent writes timestamped chunks at a fixed rate;
//! the time from its write to a reader's receive, read three ways side by
//! side: directly over the child's stdio (the floor), through an `ssh
//! localhost` pipe, and through the OMA relay (oma-agent → control plane →
//! a WatchSession client).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use oma_proto::pb::session_event::Kind;

use super::acp_client::AcpClient;
use super::env::Env;
use super::procs::bin;
use super::sshd::Sshd;
use super::stats::{Latency, sent_unix_ns, unix_ns};

/// One rate's results.
pub struct RateResult {
    pub rate: f64,
    pub count: u64,
    pub direct: Latency,
    /// `Err` says why there is no SSH baseline.
    pub ssh: Result<Latency, String>,
    pub relay: Latency,
    /// The relay split at oma-agent's stamp (`SessionEvent.time`, set when
    /// it reads the line): child → oma-agent, and oma-agent → watcher.
    pub relay_to_agent: Latency,
    pub relay_from_agent: Latency,
}

/// A relayed chunk: when the watcher got it, when the child wrote it, and
/// when oma-agent stamped it.
#[derive(Clone, Copy)]
pub struct RelaySample {
    pub received: u64,
    pub sent: u64,
    pub agent: u64,
}

pub fn timestamp_ns(t: &Option<prost_types::Timestamp>) -> u64 {
    t.as_ref()
        .map_or(0, |t| (t.seconds.max(0) as u64) * 1_000_000_000 + t.nanos.max(0) as u64)
}

/// Runs one prompt on a blocking client (its reads block a thread).
async fn blocking_prompt(slot: &mut Option<AcpClient>, script: String) -> anyhow::Result<Vec<(u64, u64)>> {
    let mut client = slot.take().context("the ACP client is gone")?;
    let (client, result) = tokio::task::spawn_blocking(move || {
        let result = client.prompt(&script);
        (client, result)
    })
    .await?;
    *slot = Some(client);
    result
}

/// Runs one turn through the relay and returns `(received, sent)` pairs, as
/// seen by a watcher attached before the prompt.
pub async fn relay_turn(
    env: &Env,
    session_id: &str,
    script: &str,
    deadline: Duration,
) -> anyhow::Result<Vec<RelaySample>> {
    let last = env.get_session(session_id).await?.last_seq;
    let mut stream = env.watch(session_id, last + 1).await?;
    let collector = tokio::spawn(async move {
        let mut samples = Vec::new();
        loop {
            let event = match tokio::time::timeout(deadline, stream.message()).await {
                Ok(Ok(Some(event))) => event,
                Ok(Ok(None)) => bail!("the watch ended before the turn did"),
                Ok(Err(status)) => bail!("the watch failed: {status}"),
                Err(_) => bail!("the turn did not end within {deadline:?}"),
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
                    anyhow::ensure!(end.error.is_empty(), "the turn ended with an error: {}", end.error);
                    return Ok(samples);
                }
                _ => {}
            }
        }
    });
    env.prompt(session_id, script).await?;
    collector.await?
}

fn test_agent_command(cwd: &Path) -> anyhow::Result<Command> {
    let mut command = Command::new(bin("oma-test-agent")?);
    command.current_dir(cwd);
    Ok(command)
}

/// Runs every rate on every path, rate by rate.
pub async fn run(
    env: &mut Env,
    rates: &[(f64, u64)],
    warmup: u64,
    ssh: Result<&Sshd, String>,
    work: &Path,
) -> anyhow::Result<Vec<RateResult>> {
    let cwd: PathBuf = work.join("latency-cwd");
    std::fs::create_dir_all(&cwd)?;
    let direct = {
        let command = test_agent_command(&cwd)?;
        let cwd = cwd.clone();
        tokio::task::spawn_blocking(move || AcpClient::start(command, &cwd)).await??
    };
    let mut direct = Some(direct);
    let mut ssh: Result<Option<AcpClient>, String> = match ssh {
        Ok(sshd) => {
            let command = sshd.command(&bin("oma-test-agent")?.display().to_string());
            let cwd = cwd.clone();
            match tokio::task::spawn_blocking(move || AcpClient::start(command, &cwd)).await? {
                Ok(client) => Ok(Some(client)),
                Err(e) => Err(format!("n/a (ssh: {e:#})")),
            }
        }
        Err(why) => Err(why),
    };
    let agent_id = env.agent_id.clone();
    let session_id = env
        .create_idle_sessions(&agent_id, 1)
        .await?
        .pop()
        .context("no session")?;

    // Warm every path up (first-use allocations, page faults, JIT-free but
    // cold caches) with a short turn whose samples are dropped.
    let warm = format!("chunks {warmup} 1000");
    blocking_prompt(&mut direct, warm.clone()).await?;
    if let Ok(slot) = &mut ssh {
        blocking_prompt(slot, warm.clone()).await?;
    }
    relay_turn(env, &session_id, &warm, Duration::from_secs(60)).await?;

    let mut results = Vec::new();
    for &(rate, count) in rates {
        let script = format!("chunks {count} {rate}");
        let deadline = Duration::from_secs_f64(count as f64 / rate) + Duration::from_secs(60);
        let direct_samples = blocking_prompt(&mut direct, script.clone()).await?;
        let ssh_result = match &mut ssh {
            Ok(slot) => match blocking_prompt(slot, script.clone()).await {
                Ok(samples) => Ok(Latency::of_pairs(&samples)),
                Err(e) => Err(format!("n/a (ssh: {e:#})")),
            },
            Err(why) => Err(why.clone()),
        };
        let relay_samples = relay_turn(env, &session_id, &script, deadline).await?;
        anyhow::ensure!(
            relay_samples.len() as u64 == count && direct_samples.len() as u64 == count,
            "expected {count} chunks, got {} relayed and {} direct",
            relay_samples.len(),
            direct_samples.len()
        );
        let pairs = |f: fn(&RelaySample) -> (u64, u64)| relay_samples.iter().map(f).collect::<Vec<_>>();
        results.push(RateResult {
            rate,
            count,
            direct: Latency::of_pairs(&direct_samples),
            ssh: ssh_result,
            relay: Latency::of_pairs(&pairs(|s| (s.received, s.sent))),
            relay_to_agent: Latency::of_pairs(&pairs(|s| (s.agent, s.sent))),
            relay_from_agent: Latency::of_pairs(&pairs(|s| (s.received, s.agent))),
        });
    }
    Ok(results)
}
