//! What a machine is told to start a session with: the StartSession frame,
//! built from the session's snapshot of its agent.

use oma_proto::model::AgentSpec;
use oma_proto::pb;

use crate::service::ServiceResult;
use crate::store::rows::SessionRow;

/// The StartSession frame for a session, from its snapshot of the agent.
pub(crate) fn start_session_frame(session: &SessionRow) -> ServiceResult<pb::StartSession> {
    let spec: AgentSpec = serde_json::from_str(&session.spec)
        .map_err(|e| crate::store::StoreError::Corrupt(format!("session {} spec: {e}", session.id)))?;
    Ok(pb::StartSession {
        session_id: session.id.clone(),
        acp_agent_id: session.acp_agent_id.clone(),
        agents_md: spec.agents_md(),
        system_prompt: spec.system_prompt.clone(),
        skills: spec
            .skills
            .iter()
            .map(|s| pb::SkillBundle {
                name: s.name.clone(),
                files: s
                    .files
                    .iter()
                    .map(|f| pb::SkillBundleFile {
                        path: f.path.clone(),
                        content: f.content.clone(),
                    })
                    .collect(),
            })
            .collect(),
        local_skill_blocklist: spec
            .runtime_binding
            .as_ref()
            .map(|b| b.local_skill_blocklist.clone())
            .unwrap_or_default(),
        // Local references and URLs only: the machine resolves and checks
        // them against its own policy.
        mcp_servers: spec.mcp_servers.iter().cloned().map(pb::McpServer::from).collect(),
        // No credentials are sent yet (they would come from the secret store
        // and reach only machines whose owner opted in).
        credentials: Default::default(),
        last_stored_seq: session.last_seq as u64,
    })
}
