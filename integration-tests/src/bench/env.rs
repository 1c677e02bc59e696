//! One benchmark environment: a control plane on a database, a paired
//! `oma-agent` whose `test` agent is the scripted ACP test agent, and admin
//! clients; plus the session helpers every scenario uses.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use futures::StreamExt as _;
use oma_integration_tests::{AgentDaemon, Clients, ControlPlane, TestDatabase, wait_online};
use oma_proto::pb;
use oma_proto::pb::session_event::Kind;

use super::procs::{start_control_plane, start_daemon};

/// Field order is drop order: the daemon stops before the control plane.
pub struct Env {
    pub daemon: AgentDaemon,
    pub clients: Clients,
    pub cp: ControlPlane,
    pub log_dir: std::path::PathBuf,
    /// The bench's agent (policy allow_once) on the daemon's runtime.
    pub agent_id: String,
    /// Sessions that did not start until the daemon reconnected (their
    /// first events were refused by the control plane).
    pub stuck_sessions: usize,
}

impl Env {
    pub async fn start(database: TestDatabase, log_dir: &Path) -> anyhow::Result<Env> {
        let cp = start_control_plane(database, log_dir)?;
        let mut clients = cp.clients().await?;
        let daemon = start_daemon(&cp, &mut clients, log_dir).await?;
        wait_online(&mut clients, &daemon.runtime_id, Duration::from_secs(30)).await?;
        eprintln!(
            "oma-bench: control plane pid {}, oma-agent pid {} (for `perf record -p`)",
            cp.pid(),
            daemon.pid().unwrap_or(0)
        );
        let mut env = Env {
            daemon,
            clients,
            cp,
            log_dir: log_dir.to_owned(),
            agent_id: String::new(),
            stuck_sessions: 0,
        };
        env.agent_id = env.create_agent("bench").await?;
        Ok(env)
    }

    /// The daemon's process id (0 while it is not running).
    pub fn daemon_pid(&self) -> u32 {
        self.daemon.pid().unwrap_or(0)
    }

    /// A new agent bound to the daemon's `test` ACP agent.
    pub async fn create_agent(&mut self, name: &str) -> anyhow::Result<String> {
        self.clients
            .create_agent(pb::AgentSpec {
                system_prompt: "You are a benchmark.".into(),
                ..oma_integration_tests::test_agent_spec(name, &self.daemon.runtime_id, pb::PermissionPolicy::AllowOnce)
            })
            .await
    }

    /// Creates a session of `agent_id` (does not wait for it to start).
    pub async fn create_session(&self, agent_id: &str) -> anyhow::Result<String> {
        self.clients.create_session(agent_id, "bench").await
    }

    /// Creates `count` sessions of `agent_id` (a few at a time) and waits
    /// until every one is idle (its ACP child is up). Sessions still not
    /// idle after a while are counted as stuck and the daemon is restarted
    /// once, which makes it resend what the control plane never acked.
    pub async fn create_idle_sessions(&mut self, agent_id: &str, count: usize) -> anyhow::Result<Vec<String>> {
        let ids: Vec<anyhow::Result<String>> = futures::stream::iter(0..count)
            .map(|_| self.create_session(agent_id))
            .buffered(8)
            .collect()
            .await;
        let ids = ids.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
        match self
            .wait_all_idle(agent_id, &ids, Duration::from_secs(10 + count as u64 / 10))
            .await
        {
            Ok(()) => return Ok(ids),
            Err(stuck) => {
                self.stuck_sessions += stuck;
                eprintln!("oma-bench: {stuck} session(s) stuck pending; restarting oma-agent so it resends");
                self.daemon.restart()?;
            }
        }
        match self
            .wait_all_idle(agent_id, &ids, Duration::from_secs(60 + count as u64))
            .await
        {
            Ok(()) => Ok(ids),
            Err(stuck) => bail!("{stuck} of {count} sessions never became idle, even after a daemon restart"),
        }
    }

    /// Waits until every session in `ids` is idle; `Err(stuck)` after
    /// `deadline`.
    async fn wait_all_idle(&self, agent_id: &str, ids: &[String], deadline: Duration) -> Result<(), usize> {
        let start = Instant::now();
        loop {
            let idle = match self.list_sessions(agent_id).await {
                Ok(sessions) => sessions
                    .iter()
                    .filter(|s| ids.contains(&s.id) && s.status == pb::SessionStatus::Idle as i32)
                    .count(),
                Err(_) => 0,
            };
            if idle == ids.len() {
                return Ok(());
            }
            if start.elapsed() > deadline {
                return Err(ids.len() - idle);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every session of an agent (up to 1000).
    pub async fn list_sessions(&self, agent_id: &str) -> anyhow::Result<Vec<pb::Session>> {
        Ok(self
            .clients
            .sessions
            .clone()
            .list_sessions(pb::ListSessionsRequest {
                page: Some(pb::PageRequest {
                    page_size: 1000,
                    page_token: String::new(),
                }),
                agent_id: agent_id.to_owned(),
            })
            .await?
            .into_inner()
            .sessions)
    }

    pub async fn get_session(&self, session_id: &str) -> anyhow::Result<pb::Session> {
        self.clients.get_session(session_id).await
    }

    /// Sends a prompt; returns the turn id.
    pub async fn prompt(&self, session_id: &str, script: &str) -> anyhow::Result<String> {
        Ok(self.clients.prompt(session_id, script).await?.id)
    }

    /// Waits until a session is idle again (its turn's end is stored).
    pub async fn wait_idle(&self, session_id: &str, deadline: Duration) -> anyhow::Result<pb::Session> {
        let start = Instant::now();
        loop {
            let session = self.get_session(session_id).await?;
            if session.status == pb::SessionStatus::Idle as i32 {
                return Ok(session);
            }
            if start.elapsed() > deadline {
                bail!("session {session_id} not idle within {deadline:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A WatchSession stream from `from_seq`.
    pub async fn watch(&self, session_id: &str, from_seq: u64) -> anyhow::Result<tonic::Streaming<pb::SessionEvent>> {
        Ok(self
            .clients
            .sessions
            .clone()
            .watch_session(pb::WatchSessionRequest {
                session_id: session_id.to_owned(),
                from_seq,
                until_turn_end: false,
            })
            .await?
            .into_inner())
    }
}

pub fn is_idle_status(event: &pb::SessionEvent) -> bool {
    matches!(&event.kind, Some(Kind::StatusChanged(s)) if s.status == pb::SessionStatus::Idle as i32)
}
