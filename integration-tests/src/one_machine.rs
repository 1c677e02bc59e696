//! One control plane (SQLite), one paired daemon whose `test` ACP agent is
//! the scripted agent with a chosen environment, and an agent bound to it:
//! what the many-sessions test and the bench's shutdown row share.

use std::path::Path;

use oma_proto::pb;

use crate::{World, bin};

/// Starts it all; `agent_env` is the inside of the agent's TOML `env`
/// table (e.g. `OMA_TEST_AGENT_IGNORE_EOF = "1"`), `daemon_args` go to
/// `oma-agent run` (after `--reconnect-max 2`). Sessions:
/// [`World::start_sessions`].
pub async fn start(agent_env: &str, daemon_args: &[&str]) -> anyhow::Result<World> {
    let agents_toml = format!(
        "[[agent]]\nid = \"test\"\ncommand = \"{}\"\nenv = {{ {agent_env} }}\n",
        bin("oma-test-agent").display()
    );
    World::builder()
        .agents_toml(agents_toml)
        .daemon_args(daemon_args)
        .agent_name("one-machine")
        .system_prompt("")
        .policy(pb::PermissionPolicy::AllowOnce)
        .start()
        .await
}

/// The process group recorded for a session's running child, once started.
pub fn child_pgid(data_dir: &Path, session_id: &str) -> Option<i32> {
    let state = std::fs::read(data_dir.join("outbox").join(format!("{session_id}.state.json"))).ok()?;
    let state: serde_json::Value = serde_json::from_slice(&state).ok()?;
    state["child"]["pgid"].as_i64().map(|pgid| pgid as i32)
}

/// Gone, or a zombie waiting for whoever inherited it.
pub fn gone(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| stat.contains(") Z "))
}
