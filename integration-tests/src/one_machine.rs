//! One control plane (SQLite), one paired daemon whose `test` ACP agent is
//! the scripted agent with a chosen environment, and an agent bound to it:
//! what the many-sessions test and the bench's shutdown row share.

use std::path::Path;
use std::time::Duration;

use oma_proto::pb;

use crate::{AgentDaemon, Bearer, Clients, ControlPlane, bin, test_agent_spec, wait_online, wait_until};

/// Fields drop in order: the daemon stops before the control plane.
pub struct OneMachine {
    pub machine: AgentDaemon,
    pub clients: Clients,
    pub cp: ControlPlane,
    pub agent_id: String,
}

impl OneMachine {
    /// Starts it all; `agent_env` is the inside of the agent's TOML `env`
    /// table (e.g. `OMA_TEST_AGENT_IGNORE_EOF = "1"`), `daemon_args` go to
    /// `oma-agent run`.
    pub async fn start(agent_env: &str, daemon_args: &[&str]) -> anyhow::Result<OneMachine> {
        let cp = ControlPlane::start_sqlite()?;
        let mut clients = Clients::new(cp.channel().await?, Bearer::new(&cp.admin_token));
        let code = clients.connect_code().await?;
        let agents_toml = format!(
            "[[agent]]\nid = \"test\"\ncommand = \"{}\"\nenv = {{ {agent_env} }}\n",
            bin("oma-test-agent").display()
        );
        let mut machine = AgentDaemon::setup_with_agents_toml(&cp.url(), &code, &agents_toml)?;
        machine.start(daemon_args)?;
        wait_online(&mut clients, &machine.runtime_id, Duration::from_secs(30)).await?;
        let agent_id = clients
            .create_agent(test_agent_spec(
                "one-machine",
                &machine.runtime_id,
                pb::PermissionPolicy::AllowOnce,
            ))
            .await?;
        Ok(OneMachine {
            machine,
            clients,
            cp,
            agent_id,
        })
    }

    /// Creates `n` sessions and waits until each has started its child;
    /// returns the children's process groups.
    pub async fn start_sessions(&mut self, n: usize) -> anyhow::Result<Vec<i32>> {
        let mut session_ids = Vec::new();
        for _ in 0..n {
            let session = self
                .clients
                .sessions
                .create_session(pb::CreateSessionRequest {
                    agent_id: self.agent_id.clone(),
                    title: String::new(),
                })
                .await?
                .into_inner()
                .session
                .ok_or_else(|| anyhow::anyhow!("CreateSession answered without a session"))?;
            session_ids.push(session.id);
        }
        let data_dir = self.machine.data_dir.path().to_owned();
        wait_until("every session's child to start", Duration::from_secs(120), || {
            let pids: Option<Vec<i32>> = session_ids.iter().map(|id| child_pgid(&data_dir, id)).collect();
            async move { pids }
        })
        .await
    }
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
