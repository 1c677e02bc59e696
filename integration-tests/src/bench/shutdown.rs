//! Daemon shutdown: SIGTERM to oma-agent while N sessions have live ACP
//! children that ignore their stdin closing (as some real agents do), until
//! the daemon exits; then whether any child is left.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use oma_integration_tests::one_machine::{self, gone};

/// The test agent's environment: it keeps running when its stdin closes.
const IGNORES_STDIN_CLOSE: &str = "OMA_TEST_AGENT_IGNORE_EOF = \"1\"";

pub struct Shutdown {
    pub sessions: usize,
    /// SIGTERM → the daemon's exit.
    pub elapsed: Duration,
    /// Children still running after the daemon exited.
    pub left: usize,
}

pub async fn run(sessions: usize) -> anyhow::Result<Shutdown> {
    let mut world = one_machine::start(IGNORES_STDIN_CLOSE, &[]).await?;
    let children = world.start_sessions(sessions).await?;
    let daemon = world.machine.process.as_mut().context("oma-agent is not running")?;
    let started = Instant::now();
    daemon.signal("TERM")?;
    let status = daemon.wait_exit(Duration::from_secs(60))?;
    let elapsed = started.elapsed();
    anyhow::ensure!(status.success(), "oma-agent exited with {status}");
    let left = children.iter().filter(|pid| !gone(**pid)).count();
    Ok(Shutdown {
        sessions,
        elapsed,
        left,
    })
}
