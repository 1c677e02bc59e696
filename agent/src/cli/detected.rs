//! The ACP agents detected on this machine (PATH and agents.toml), as the commands read them.

use oma_agent::detect::{self, DetectReport};
use oma_agent::paths::Paths;

/// Logs what is known to be wrong with the detected agents.
pub(crate) fn warn_problems(report: &DetectReport) {
    for agent in &report.agents {
        for problem in &agent.problems {
            tracing::warn!(agent = agent.id, command = %agent.command.display(), "{problem}");
        }
    }
}

pub(crate) fn detect_agents(paths: &Paths) -> anyhow::Result<DetectReport> {
    Ok(detect::detect_with_process_path(&paths.agents_config_file())?)
}
