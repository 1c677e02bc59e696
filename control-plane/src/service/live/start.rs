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
        mcp_servers_json: mcp_servers_json(&spec),
        credentials: Default::default(),
        last_stored_seq: session.last_seq as u64,
    })
}

/// ACP `mcpServers`: stdio entries carry no type tag; http/sse do.
fn mcp_servers_json(spec: &AgentSpec) -> String {
    use oma_proto::model::McpTransport;
    use serde_json::json;
    let pairs = |items: &[(String, String)]| {
        items
            .iter()
            .map(|(n, v)| json!({"name": n, "value": v}))
            .collect::<Vec<_>>()
    };
    let servers: Vec<serde_json::Value> = spec
        .mcp_servers
        .iter()
        .map(|m| match &m.transport {
            McpTransport::Stdio { command, args, env } => {
                json!({"name": m.name, "command": command, "args": args, "env": pairs(env)})
            }
            McpTransport::Http { url, headers } => {
                json!({"type": "http", "name": m.name, "url": url, "headers": pairs(headers)})
            }
            McpTransport::Sse { url, headers } => {
                json!({"type": "sse", "name": m.name, "url": url, "headers": pairs(headers)})
            }
        })
        .collect();
    serde_json::Value::Array(servers).to_string()
}
