//! Session records. The live path (prompts, events, watchers) is routed to
//! the runtime's stream.

use oma_proto::ids::{AgentId, SessionId};
use oma_proto::validate;
use serde_json::json;

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

impl Service {
    pub async fn create_session(&self, caller: &Caller, agent_id: AgentId, title: &str) -> ServiceResult<SessionRow> {
        let title = validate::label("title", title, 200, false)?;
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
                let session = SessionRow {
                    id: SessionId::generate().to_string(),
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
                };
                rows::insert_session(conn, &session)?;
                record(
                    conn,
                    tenant,
                    &caller.actor(),
                    "session.create",
                    &session.id,
                    json!({"agent_id": session.agent_id, "runtime_id": session.runtime_id}),
                )?;
                Ok::<_, ServiceError>(session)
            })
            .await?;
        self.offer_start(&session).await;
        Ok(session)
    }

    pub async fn get_session(&self, caller: &Caller, session_id: SessionId) -> ServiceResult<SessionRow> {
        let caller = caller.clone();
        self.store
            .read("get_session", move |conn| {
                rights::session_to_see(conn, &caller, &session_id)
            })
            .await
    }

    pub async fn list_sessions(
        &self,
        caller: &Caller,
        agent_id: Option<AgentId>,
        page: PageRequest,
    ) -> ServiceResult<Paged<SessionRow>> {
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
    }

    pub async fn delete_session(&self, caller: &Caller, session_id: SessionId) -> ServiceResult<()> {
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
                    json!({"agent_id": session.agent_id}),
                )?;
                Ok::<_, ServiceError>(session)
            })
            .await?;
        // If the machine is offline it gets the dispose in its next Welcome.
        self.offer_dispose(&session.id, &session.runtime_id).await;
        Ok(())
    }
}
