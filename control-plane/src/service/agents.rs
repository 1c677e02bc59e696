//! Agent configurations.

use oma_proto::ids::AgentId;
use oma_proto::model::{self, AgentField, AgentSpec, McpServer, PermissionPolicy, RuntimeBinding};
use oma_proto::pb;
use oma_proto::validate::ValidationError;
use prost::Message as _;
use serde_json::json;

use super::agent_mcp;
use super::audit::record;
use super::quotas::{self, Quota};
use super::rights;
use super::runtimes::runtime_for_use;
use super::{Caller, PageRequest, Paged, Service, ServiceError, ServiceResult};
use crate::store::rows::{self, AgentRow};
use crate::store::{DbConn, StoreError, now_ms};

/// A stored agent with its parsed spec.
#[derive(Debug, Clone)]
pub struct Agent {
    pub row: AgentRow,
    pub spec: AgentSpec,
}

impl Agent {
    pub(crate) fn from_row(row: AgentRow) -> Result<Agent, StoreError> {
        let spec =
            serde_json::from_str(&row.spec).map_err(|e| StoreError::Corrupt(format!("agent {} spec: {e}", row.id)))?;
        Ok(Agent { row, spec })
    }
}

/// An update request: the new values and which of them to apply.
#[derive(Debug, Clone)]
pub struct AgentUpdate {
    pub request: pb::AgentSpec,
    pub mask: Vec<String>,
    /// 0 means any version.
    pub expected_version: u64,
    pub allow_unknown_skills: bool,
}

fn encode_spec(spec: &AgentSpec) -> Result<String, ServiceError> {
    serde_json::to_string(spec).map_err(|e| ServiceError::Internal(format!("encoding agent spec: {e}")))
}

fn name_taken(name: &str) -> impl Fn(StoreError) -> ServiceError + '_ {
    move |e| {
        if e.is_unique_violation() {
            ServiceError::AlreadyExists(format!("an agent named {name:?} already exists in this tenant"))
        } else {
            e.into()
        }
    }
}

/// Checks the caller may bind the runtime, and that what the binding names
/// exists on it as far as the machine has reported: the ACP agent (a runtime
/// that never connected has reported no agents yet, so any id goes), the
/// agent's MCP servers (local ids and URLs the machine allows) and the
/// blocklisted local skills (unknown ones only with `allow_unknown_skills`).
fn check_binding(
    conn: &mut DbConn,
    caller: &Caller,
    binding: &RuntimeBinding,
    spec: &AgentSpec,
    allow_unknown_skills: bool,
) -> ServiceResult<()> {
    let mcp_servers: &[McpServer] = &spec.mcp_servers;
    let runtime = runtime_for_use(conn, caller, &binding.runtime_id)?;
    let manifest = if runtime.manifest.is_empty() {
        pb::Manifest::default()
    } else {
        pb::Manifest::decode(runtime.manifest.as_slice())
            .map_err(|e| StoreError::Corrupt(format!("runtime {} manifest: {e}", runtime.id)))?
    };
    let agent = manifest.acp_agents.iter().find(|a| a.id == binding.acp_agent_id);
    if !manifest.acp_agents.is_empty() && agent.is_none() {
        let known: Vec<&str> = manifest.acp_agents.iter().map(|a| a.id.as_str()).collect();
        return Err(ValidationError::new(
            "spec.runtime_binding.acp_agent_id",
            format!(
                "runtime {} has no ACP agent {:?}; it reports: {}",
                runtime.id,
                binding.acp_agent_id,
                known.join(", ")
            ),
        )
        .into());
    }
    agent_mcp::check(&runtime.id, runtime.last_seen_at.is_some(), &manifest, mcp_servers)?;
    if spec.permission_policy == PermissionPolicy::Ask
        && !spec.accept_unenforced_ask
        && let Some(agent) = agent
        && agent.ask_support == pb::AskSupport::None as i32
    {
        return Err(ServiceError::FailedPrecondition(format!(
            "runtime {} reports that it cannot make ACP agent {:?} ask before it acts, so with permission policy \
             `ask` it could edit files or run commands without anyone approving; choose allow_once or reject, \
             or set accept_unenforced_ask to bind it anyway",
            runtime.id, binding.acp_agent_id
        )));
    }
    if binding.local_skill_blocklist.is_empty() || allow_unknown_skills {
        return Ok(());
    }
    let mut known: Vec<String> = Vec::new();
    for skill in agent.map(|a| a.local_skills.as_slice()).unwrap_or_default() {
        known.push(skill.id.clone());
        if !skill.plugin_name.is_empty() {
            known.push(format!("{}:{}", skill.plugin_name, skill.id));
        }
    }
    known.sort();
    known.dedup();
    let unknown: Vec<&str> = binding
        .local_skill_blocklist
        .iter()
        .filter(|s| !known.contains(s))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        let valid = if known.is_empty() {
            format!(
                "runtime {} has reported no local skills for {:?}",
                runtime.id, binding.acp_agent_id
            )
        } else {
            format!("valid ids: {}", known.join(", "))
        };
        return Err(ValidationError::new(
            "spec.runtime_binding.local_skill_blocklist",
            format!(
                "unknown local skill(s) {}; {valid}; set allow_unknown_skills to block them anyway",
                unknown.join(", ")
            ),
        )
        .into());
    }
    Ok(())
}

impl Service {
    pub async fn create_agent(
        &self,
        caller: &Caller,
        spec: AgentSpec,
        allow_unknown_skills: bool,
    ) -> ServiceResult<Agent> {
        let caller = caller.clone();
        let quotas = self.config.quotas.clone();
        self.store
            .write("create_agent", move |conn| {
                if let Some(binding) = &spec.runtime_binding {
                    check_binding(conn, &caller, binding, &spec, allow_unknown_skills)?;
                }
                let now = now_ms();
                quotas::check(conn, &quotas, caller.tenant_id.as_str(), Quota::Agents, now)?;
                let row = AgentRow {
                    id: AgentId::generate().to_string(),
                    tenant_id: caller.tenant_id.to_string(),
                    name: spec.name.clone(),
                    spec: encode_spec(&spec)?,
                    runtime_id: spec.runtime_binding.as_ref().map(|b| b.runtime_id.to_string()),
                    version: 1,
                    created_by_user_id: caller.user_id.to_string(),
                    created_at: now,
                    updated_at: now,
                };
                rows::insert_agent(conn, &row).map_err(name_taken(&spec.name))?;
                record(
                    conn,
                    &row.tenant_id,
                    &caller.actor(),
                    "agent.create",
                    &row.id,
                    json!({"name": spec.name, "runtime_id": row.runtime_id}),
                )?;
                Ok(Agent {
                    row,
                    spec: spec.clone(),
                })
            })
            .await
    }

    pub async fn get_agent(&self, caller: &Caller, agent_id: AgentId) -> ServiceResult<Agent> {
        let tenant = caller.tenant_id.to_string();
        self.store
            .read("get_agent", move |conn| {
                let row = rows::get_agent(conn, &tenant, agent_id.as_str())?
                    .ok_or_else(|| ServiceError::not_found("agent", &agent_id))?;
                Ok(Agent::from_row(row)?)
            })
            .await
    }

    pub async fn list_agents(&self, caller: &Caller, page: PageRequest) -> ServiceResult<Paged<Agent>> {
        let page = page.to_page()?;
        let tenant = caller.tenant_id.to_string();
        self.store
            .read("list_agents", move |conn| {
                let rows = rows::list_agents(conn, &tenant, &page)?;
                let agents = rows.into_iter().map(Agent::from_row).collect::<Result<Vec<_>, _>>()?;
                Ok(Paged::from_rows(agents, &page, |a| &a.row.id))
            })
            .await
    }

    pub async fn update_agent(&self, caller: &Caller, agent_id: AgentId, update: AgentUpdate) -> ServiceResult<Agent> {
        let fields = AgentField::parse_mask(&update.mask)?;
        let caller = caller.clone();
        self.store
            .write("update_agent", move |conn| {
                let tenant = caller.tenant_id.as_str();
                // The right to change the agent as stored, then (below) the
                // right to use a new binding's runtime.
                let current = rights::agent_to_manage(conn, &caller, &agent_id)?;
                if update.expected_version != 0 && update.expected_version != current.row.version as u64 {
                    return Err(ServiceError::Aborted(format!(
                        "agent {agent_id} is at version {}, not {}; fetch it again and retry",
                        current.row.version, update.expected_version
                    )));
                }
                let spec = model::merge_update(&current.spec, update.request.clone(), &fields)?;
                // MCP servers are checked against the bound runtime too; the
                // blocklist only when the binding itself changes.
                let binding_changed = fields.contains(&AgentField::RuntimeBinding);
                if (binding_changed || fields.contains(&AgentField::McpServers))
                    && let Some(binding) = &spec.runtime_binding
                {
                    let allow_unknown_skills = update.allow_unknown_skills || !binding_changed;
                    check_binding(conn, &caller, binding, &spec, allow_unknown_skills)?;
                }
                let row = AgentRow {
                    name: spec.name.clone(),
                    spec: encode_spec(&spec)?,
                    runtime_id: spec.runtime_binding.as_ref().map(|b| b.runtime_id.to_string()),
                    version: current.row.version + 1,
                    updated_at: now_ms(),
                    ..current.row.clone()
                };
                if !rows::update_agent(conn, &row, current.row.version).map_err(name_taken(&spec.name))? {
                    return Err(ServiceError::Aborted(format!(
                        "agent {agent_id} changed concurrently; retry"
                    )));
                }
                let paths: Vec<&str> = fields.iter().map(|f| f.path()).collect();
                record(
                    conn,
                    tenant,
                    &caller.actor(),
                    "agent.update",
                    &row.id,
                    json!({"fields": paths, "version": row.version}),
                )?;
                Ok(Agent { row, spec })
            })
            .await
    }

    pub async fn delete_agent(&self, caller: &Caller, agent_id: AgentId) -> ServiceResult<()> {
        let caller = caller.clone();
        self.store
            .write("delete_agent", move |conn| {
                let tenant = caller.tenant_id.as_str();
                let agent = rights::agent_to_manage(conn, &caller, &agent_id)?;
                rows::delete_agent(conn, tenant, agent_id.as_str())?;
                record(
                    conn,
                    tenant,
                    &caller.actor(),
                    "agent.delete",
                    agent_id.as_str(),
                    json!({"name": agent.row.name}),
                )?;
                Ok(())
            })
            .await
    }
}
