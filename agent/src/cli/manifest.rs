//! The manifest the daemon reports: what it is built from, and a rescan that keeps the last good parts.

use std::collections::BTreeMap;

use oma_agent::detect::DetectReport;
use oma_agent::policy::Policy;
use oma_agent::session::manager::ReportedAgent;
use oma_agent::skills::{self, SkillSource};
use oma_proto::pb;

/// The user's Claude config folder: `$CLAUDE_CONFIG_DIR` or `~/.claude`.
pub(crate) fn skill_source() -> Option<SkillSource> {
    let home = dirs::home_dir()?;
    Some(SkillSource::from_env(
        &home,
        std::env::var_os("CLAUDE_CONFIG_DIR").as_deref(),
    ))
}

/// What this machine offers: its ACP agents, for Claude agents the user's
/// local skills, and from the owner's policy the local MCP servers (ids and
/// names only) and the MCP URL allow-list. Also returns a fingerprint of the
/// skills to detect changes.
pub(crate) fn manifest(
    report: &DetectReport,
    source: Option<&SkillSource>,
    policy: &Policy,
    workspaces: Vec<pb::Workspace>,
    reported: &BTreeMap<String, ReportedAgent>,
) -> (pb::Manifest, u64) {
    let found = source.map(skills::scan).unwrap_or_default();
    let local = skills::to_manifest(&found);
    let (local_mcp_servers, mcp_url_allow_list) = policy.manifest_parts();
    let manifest = pb::Manifest {
        acp_agents: report
            .agents
            .iter()
            .map(|a| {
                let (ask_support, ask_mode_id) = a.ask.to_manifest();
                // Version and capabilities once a session has started it.
                let own = reported.get(&a.id).cloned().unwrap_or_default();
                pb::AcpAgentInfo {
                    id: a.id.clone(),
                    name: a.name.clone(),
                    version: own.version,
                    capabilities_json: own.capabilities_json,
                    local_skills: if a.quirks.is_claude { local.clone() } else { Vec::new() },
                    ask_support: ask_support as i32,
                    ask_mode_id,
                    problems: a.problems.clone(),
                }
            })
            .collect(),
        local_mcp_servers,
        mcp_url_allow_list,
        workspaces,
    };
    (manifest, skills::fingerprint(&found))
}

/// What a rescan found, or — when it failed — the last good value; each
/// distinct failure is logged once (`broken` says what broke and what
/// happens meanwhile), not every 10 s.
pub(crate) fn or_last_good<T: Clone, E: std::fmt::Display>(
    loaded: Result<T, E>,
    last_good: &T,
    last_error: &mut Option<String>,
    broken: &str,
) -> T {
    match loaded {
        Ok(value) => {
            *last_error = None;
            value
        }
        Err(e) => {
            let message = e.to_string();
            if last_error.as_ref() != Some(&message) {
                tracing::warn!("{broken}: {message}");
                *last_error = Some(message);
            }
            last_good.clone()
        }
    }
}

/// What the last manifest was built from, to report only changes.
pub(crate) struct ManifestState {
    pub(crate) skills: u64,
    /// The last policy that loaded (a broken file keeps it in the manifest;
    /// sessions fail on it until it is fixed).
    pub(crate) policy: Policy,
    /// The last policy error logged (logged again only when it changes).
    pub(crate) policy_error: Option<String>,
    /// The workspaces as last reported (a broken file keeps them).
    pub(crate) workspaces: Vec<pb::Workspace>,
    pub(crate) workspaces_error: Option<String>,
    /// What the ACP agents said of themselves, as last reported.
    pub(crate) reported: BTreeMap<String, ReportedAgent>,
    /// The agent table as last detected, and the last error reading it.
    pub(crate) agents: DetectReport,
    pub(crate) agents_error: Option<String>,
}
