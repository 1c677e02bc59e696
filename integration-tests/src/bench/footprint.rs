//! Footprint: the daemon idle, the control plane's cold start, and what
//! starting a session costs beyond the ACP agent's own start.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;
use oma_integration_tests::{Bearer, Clients, ControlPlane, START_DEADLINE, TestDatabase, listening_addr};
use oma_proto::pb;
use tonic::transport::Endpoint;

use super::acp_client::AcpClient;
use super::env::{Env, is_idle_status};
use super::procs::{CpuSnapshot, bin, cpu_time, rss_bytes, start_control_plane};

pub struct Idle {
    pub rss: u64,
    pub window: Duration,
    /// Precise (per-thread schedstat) CPU time over the window.
    pub cpu: Duration,
    /// The same from `/proc/PID/stat` (10 ms ticks, counts exited threads).
    pub cpu_ticks: Duration,
}

/// RSS and CPU of an idle process over `window`.
pub async fn idle(pid: u32, window: Duration) -> anyhow::Result<Idle> {
    let before = CpuSnapshot::take(pid);
    let ticks = cpu_time(pid);
    tokio::time::sleep(window).await;
    let cpu = CpuSnapshot::take(pid).since(&before);
    let cpu_ticks = cpu_time(pid).saturating_sub(ticks);
    Ok(Idle {
        rss: rss_bytes(pid)?,
        window,
        cpu,
        cpu_ticks,
    })
}

/// Polls WhoAmI until it answers.
async fn first_whoami(url: &str, token: &str, deadline: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if let Ok(channel) = Endpoint::from_shared(url.to_owned())?.connect().await {
            let mut clients = Clients::new(channel, Bearer::new(token));
            if clients.identity.who_am_i(pb::WhoAmIRequest::default()).await.is_ok() {
                return Ok(());
            }
        }
        if start.elapsed() > deadline {
            bail!("no WhoAmI answer within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Control-plane cold start: spawn → first successful WhoAmI, on a fresh
/// database (migrations and bootstrap included) and then again on the
/// same database (a restart).
pub async fn cold_start(database: TestDatabase, log_dir: &Path) -> anyhow::Result<(Duration, Duration)> {
    let deadline = Duration::from_secs(60);
    let start = Instant::now();
    let cp = start_control_plane(database, log_dir)?;
    first_whoami(&cp.url(), &cp.admin_token, deadline).await?;
    let fresh = start.elapsed();
    let ControlPlane {
        process,
        admin_token,
        database,
        options,
        ..
    } = cp;
    drop(process);
    let start = Instant::now();
    let mut process = ControlPlane::spawn(&database, &options, "127.0.0.1:0")?;
    let addr = process.wait_for_line(START_DEADLINE, listening_addr)?;
    first_whoami(&format!("http://{addr}"), &admin_token, deadline).await?;
    let restart = start.elapsed();
    drop(process);
    drop(database);
    Ok((fresh, restart))
}

/// Session start through OMA (CreateSession → the idle status event) and
/// the test agent's own start over stdio (spawn → session/new answered).
/// A session whose start events the control plane refused is counted in
/// `env.stuck_sessions` (the daemon is restarted to resend) and left out.
pub async fn session_start(env: &mut Env, runs: usize, work: &Path) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let mut oma = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let session_id = env.create_session(&env.agent_id).await?;
        let mut stream = env.watch(&session_id, 1).await?;
        let mut restarted = false;
        loop {
            let wait = if restarted { 60 } else { 10 };
            match tokio::time::timeout(Duration::from_secs(wait), stream.message()).await {
                Ok(Ok(Some(event))) if is_idle_status(&event) => break,
                Ok(Ok(Some(_))) => {}
                Err(_) if !restarted => {
                    env.stuck_sessions += 1;
                    eprintln!("oma-bench: session {session_id} stuck pending; restarting oma-agent so it resends");
                    env.daemon.restart()?;
                    restarted = true;
                }
                other => bail!("session {session_id} did not become idle: {other:?}"),
            }
        }
        if !restarted {
            oma.push(start.elapsed());
        }
    }
    let cwd = work.join("start-cwd");
    std::fs::create_dir_all(&cwd)?;
    let mut direct = Vec::with_capacity(runs);
    for _ in 0..runs {
        let mut command = Command::new(bin("oma-test-agent")?);
        command.current_dir(&cwd);
        let cwd = cwd.clone();
        let elapsed = tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            let client = AcpClient::start(command, &cwd)?;
            let elapsed = start.elapsed();
            drop(client);
            anyhow::Ok(elapsed)
        })
        .await??;
        direct.push(elapsed);
    }
    Ok((oma, direct))
}
