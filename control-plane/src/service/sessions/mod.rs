//! Sessions: their records (here), their turns (prompt, cancel, answer a
//! permission: [`turns`], routed to the runtime's stream) and watching
//! their events ([`watch`]).

pub mod diff;
pub mod options;
pub mod turns;
pub mod watch;
pub mod workspace;

use oma_proto::ids::{AgentId, SessionId};
use oma_proto::pb;
use oma_proto::validate;
use prost::Message as _;
use serde_json::json;

use self::workspace::{SessionWorkspace, WorkspaceRequest};

use super::agents::Agent;
use super::audit::record;
use super::quotas::{self, Quota};
use super::rights;
use super::runtimes::runtime_for_use;
use super::{Caller, PageRequest, Paged, Service, ServiceError, ServiceResult};
use crate::store::now_ms;
use crate::store::rows::{self, SessionRow};

pub const STATUS_PENDING: &str = "pending";
pub const STATUS_IDLE: &str = "idle";
pub const STATUS_RUNNING: &str = "running";
pub const STATUS_FAILED: &str = "failed";
pub const STATUS_DISPOSED: &str = "disposed";

/// A session as callers see it. The stored row keeps more (the agent spec
/// it started with, the running prompt, the ACP session id), which stays in
/// the store and the live path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub tenant_id: String,
    pub agent_id: String,
    pub runtime_id: String,
    pub acp_agent_id: String,
    pub created_by_user_id: String,
    pub title: String,
    pub status: SessionStatus,
    /// The version of the agent configuration the session started with.
    pub agent_version: u64,
    /// The highest event seq stored.
    pub last_seq: u64,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub updated_at: i64,
    /// Where it works on the machine; `None`: a private folder.
    pub workspace: Option<SessionWorkspace>,
    /// What its agent offers and has selected; `None` until it started.
    pub options: Option<options::SessionOptions>,
    /// What it was asked to start in (empty: the agent's own default).
    pub requested_mode_id: String,
    pub requested_model_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStatus {
    Pending,
    Idle,
    Running,
    Failed,
    Disposed,
    /// A stored value this build does not know (a newer replica wrote it).
    Unknown,
}

impl SessionStatus {
    pub fn from_stored(status: &str) -> SessionStatus {
        match status {
            STATUS_PENDING => SessionStatus::Pending,
            STATUS_IDLE => SessionStatus::Idle,
            STATUS_RUNNING => SessionStatus::Running,
            STATUS_FAILED => SessionStatus::Failed,
            STATUS_DISPOSED => SessionStatus::Disposed,
            _ => SessionStatus::Unknown,
        }
    }
}

impl From<SessionRow> for Session {
    fn from(row: SessionRow) -> Session {
        let workspace = SessionWorkspace::from_stored(&row.id, row.workspace.as_deref()).unwrap_or_else(|e| {
            tracing::error!(session_id = row.id, error = %e, "unreadable session workspace");
            None
        });
        Session {
            workspace,
            options: options::SessionOptions::from_stored(row.options.as_deref()),
            requested_mode_id: row.mode_id,
            requested_model_id: row.model_id,
            status: SessionStatus::from_stored(&row.status),
            id: row.id,
            tenant_id: row.tenant_id,
            agent_id: row.agent_id,
            runtime_id: row.runtime_id,
            acp_agent_id: row.acp_agent_id,
            created_by_user_id: row.created_by_user_id,
            title: row.title,
            agent_version: row.agent_version.max(0) as u64,
            last_seq: row.last_seq.max(0) as u64,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

impl Service {
    /// Sessions of every tenant by status for the metrics: each live status
    /// present (0 when none, so a gauge falls back), deleted ones left out.
    pub async fn session_counts(&self) -> ServiceResult<Vec<(&'static str, i64)>> {
        let stored = self
            .store
            .read("count_sessions_by_status", |conn| {
                crate::store::usage::sessions_by_status(conn).map_err(ServiceError::from)
            })
            .await?;
        let mut counts: Vec<(&'static str, i64)> =
            [STATUS_PENDING, STATUS_IDLE, STATUS_RUNNING, STATUS_FAILED, "unknown"]
                .into_iter()
                .map(|status| (status, 0))
                .collect();
        for (status, n) in stored {
            let label = match SessionStatus::from_stored(&status) {
                SessionStatus::Pending => STATUS_PENDING,
                SessionStatus::Idle => STATUS_IDLE,
                SessionStatus::Running => STATUS_RUNNING,
                SessionStatus::Failed => STATUS_FAILED,
                SessionStatus::Disposed => continue,
                SessionStatus::Unknown => "unknown",
            };
            if let Some(entry) = counts.iter_mut().find(|(s, _)| *s == label) {
                entry.1 += n;
            }
        }
        Ok(counts)
    }

    pub async fn create_session(
        &self,
        caller: &Caller,
        agent_id: AgentId,
        title: &str,
        workspace: Option<WorkspaceRequest>,
        choice: (String, String),
    ) -> ServiceResult<Session> {
        let title = validate::label("title", title, 200, false)?;
        validate::opaque_id("mode_id", &choice.0, false)?;
        validate::opaque_id("model_id", &choice.1, false)?;
        let caller = caller.clone();
        let quotas = self.config.quotas.clone();
        let session: SessionRow = self
            .store
            .write("create_session", move |conn| {
                let tenant = caller.tenant_id.as_str();
                let row = rows::get_agent(conn, tenant, agent_id.as_str())?
                    .ok_or_else(|| ServiceError::not_found("agent", &agent_id))?;
                let agent = Agent::from_row(row)?;
                let binding = agent.spec.runtime_binding.as_ref().ok_or_else(|| {
                    ServiceError::FailedPrecondition(format!(
                        "agent {} is not bound to a runtime; set its runtime binding first",
                        agent.spec.name
                    ))
                })?;
                let runtime = runtime_for_use(conn, &caller, &binding.runtime_id).map_err(|e| match e {
                    // The binding outlived its runtime: say so instead of a
                    // bare "runtime not found".
                    ServiceError::NotFound(_) => ServiceError::FailedPrecondition(format!(
                        "agent {} is bound to runtime {}, which no longer exists; rebind it",
                        agent.spec.name, binding.runtime_id
                    )),
                    other => other,
                })?;
                let now = now_ms();
                quotas::check(conn, &quotas, tenant, Quota::Sessions, now)?;
                let id = SessionId::generate().to_string();
                let workspace = match workspace.clone() {
                    None => None,
                    Some(request) => {
                        let manifest = pb::Manifest::decode(runtime.manifest.as_slice()).unwrap_or_default();
                        let others: Vec<(String, SessionWorkspace)> =
                            rows::workspace_sessions_on_runtime(conn, &runtime.id)?
                                .into_iter()
                                .filter_map(|(sid, json)| {
                                    SessionWorkspace::from_stored(&sid, Some(&json))
                                        .ok()
                                        .flatten()
                                        .map(|w| (sid, w))
                                })
                                .collect();
                        Some(workspace::resolve(request, &id, &runtime.id, &manifest, &others)?)
                    }
                };
                // The request's choice, else the agent's defaults; checked
                // against what this agent offered its last session here.
                let mode_id = Some(choice.0.clone())
                    .filter(|m| !m.is_empty())
                    .unwrap_or(agent.spec.default_mode_id.clone());
                let model_id = Some(choice.1.clone())
                    .filter(|m| !m.is_empty())
                    .unwrap_or(agent.spec.default_model_id.clone());
                let known = rows::latest_options(conn, &runtime.id, &binding.acp_agent_id)?;
                options::check_stored(known.as_deref(), &mode_id, &model_id)?;
                let session = SessionRow {
                    id,
                    tenant_id: tenant.to_owned(),
                    agent_id: agent.row.id.clone(),
                    runtime_id: runtime.id.clone(),
                    acp_agent_id: binding.acp_agent_id.clone(),
                    created_by_user_id: caller.user_id.to_string(),
                    title: title.clone(),
                    status: STATUS_PENDING.to_owned(),
                    agent_version: agent.row.version,
                    spec: agent.row.spec.clone(),
                    acp_session_id: None,
                    current_turn_id: None,
                    current_prompt: None,
                    last_seq: 0,
                    created_at: now,
                    updated_at: now,
                    workspace: workspace.as_ref().map(SessionWorkspace::to_stored),
                    options: None,
                    mode_id,
                    model_id,
                };
                rows::insert_session(conn, &session)?;
                record(
                    conn,
                    tenant,
                    &caller.actor(),
                    "session.create",
                    &session.id,
                    json!({"agent_id": session.agent_id, "runtime_id": session.runtime_id, "workspace": workspace}),
                )?;
                Ok::<_, ServiceError>(session)
            })
            .await?;
        self.offer_start(&session).await;
        Ok(session.into())
    }

    pub async fn get_session(&self, caller: &Caller, session_id: SessionId) -> ServiceResult<Session> {
        let caller = caller.clone();
        let row = self
            .store
            .read("get_session", move |conn| {
                rights::session_to_see(conn, &caller, &session_id)
            })
            .await?;
        Ok(row.into())
    }

    pub async fn list_sessions(
        &self,
        caller: &Caller,
        agent_id: Option<AgentId>,
        page: PageRequest,
    ) -> ServiceResult<Paged<Session>> {
        let page = page.to_page()?;
        let tenant = caller.tenant_id.to_string();
        // Filtered in the query, so pages stay full and the cursor exact.
        let visible_to = (!caller.is_admin()).then(|| caller.user_id.to_string());
        self.store
            .read("list_sessions", move |conn| {
                if let Some(agent) = &agent_id {
                    rows::get_agent(conn, &tenant, agent.as_str())?
                        .ok_or_else(|| ServiceError::not_found("agent", agent))?;
                }
                let rows = rows::list_sessions(
                    conn,
                    &tenant,
                    agent_id.as_ref().map(|a| a.as_str()),
                    visible_to.as_deref(),
                    &page,
                )?;
                Ok(Paged::from_rows(rows, &page, |r| &r.id))
            })
            .await
            .map(|page: Paged<SessionRow>| page.map(Session::from))
    }

    /// Deletes a session; `delete_branch`: a worktree session's branch goes
    /// too (when the machine is online now; else the branch stays).
    pub async fn delete_session(
        &self,
        caller: &Caller,
        session_id: SessionId,
        delete_branch: bool,
    ) -> ServiceResult<()> {
        let caller = caller.clone();
        let session = self
            .store
            .write("delete_session", move |conn| {
                let tenant = caller.tenant_id.as_str();
                let session = rights::session_to_drive(conn, &caller, &session_id)?;
                rows::tombstone_session(conn, tenant, session_id.as_str(), now_ms())?;
                record(
                    conn,
                    tenant,
                    &caller.actor(),
                    "session.delete",
                    session_id.as_str(),
                    json!({"agent_id": session.agent_id, "delete_branch": delete_branch}),
                )?;
                Ok::<_, ServiceError>(session)
            })
            .await?;
        // If the machine is offline it gets the dispose in its next Welcome.
        self.offer_dispose(&session.id, &session.runtime_id, delete_branch)
            .await;
        Ok(())
    }
}
