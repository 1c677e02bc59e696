//! JSON forms of the API messages (prost types do not derive `Serialize`):
//! proto field names, enums as lowercase words, timestamps as RFC 3339 UTC.

use oma_proto::pb;
use serde_json::{Value, json};

use crate::{output::time_value, spec::SpecFile};

/// An enum's name without its prefix, in lowercase (`ROLE_ADMIN` →
/// `admin`); `unknown(N)` for values this build does not know.
fn word(name: Option<&str>, prefix: &str, value: i32) -> String {
    name.map_or_else(
        || format!("unknown({value})"),
        |n| n.strip_prefix(prefix).unwrap_or(n).to_ascii_lowercase(),
    )
}

pub fn role(value: i32) -> String {
    word(pb::Role::try_from(value).ok().map(|e| e.as_str_name()), "ROLE_", value)
}

pub fn runtime_status(value: i32) -> String {
    word(
        pb::RuntimeStatus::try_from(value).ok().map(|e| e.as_str_name()),
        "RUNTIME_STATUS_",
        value,
    )
}

pub fn session_status(value: i32) -> String {
    word(
        pb::SessionStatus::try_from(value).ok().map(|e| e.as_str_name()),
        "SESSION_STATUS_",
        value,
    )
}

pub fn secret_kind(value: i32) -> String {
    word(
        pb::SecretKind::try_from(value).ok().map(|e| e.as_str_name()),
        "SECRET_KIND_",
        value,
    )
}

pub fn skill_source(value: i32) -> String {
    word(
        pb::local_skill::Source::try_from(value).ok().map(|e| e.as_str_name()),
        "SOURCE_",
        value,
    )
}

/// Raw JSON text as a value; kept as a string when it does not parse.
fn raw_json(text: &str) -> Value {
    if text.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

pub fn tenant(t: &pb::Tenant) -> Value {
    json!({ "id": t.id, "name": t.name, "create_time": time_value(t.create_time.as_ref()) })
}

pub fn user(u: &pb::User) -> Value {
    json!({
        "id": u.id,
        "tenant_id": u.tenant_id,
        "name": u.name,
        "role": role(u.role),
        "create_time": time_value(u.create_time.as_ref()),
    })
}

pub fn token(t: &pb::ApiToken) -> Value {
    json!({
        "id": t.id,
        "tenant_id": t.tenant_id,
        "user_id": t.user_id,
        "name": t.name,
        "create_time": time_value(t.create_time.as_ref()),
        "expire_time": time_value(t.expire_time.as_ref()),
        "revoke_time": time_value(t.revoke_time.as_ref()),
        "last_used_time": time_value(t.last_used_time.as_ref()),
    })
}

pub fn runtime(r: &pb::Runtime) -> Value {
    let agents: Vec<Value> = r
        .manifest
        .iter()
        .flat_map(|m| &m.acp_agents)
        .map(|a| {
            let skills: Vec<Value> = a
                .local_skills
                .iter()
                .map(|s| {
                    json!({
                        "id": s.id,
                        "name": s.name,
                        "description": s.description,
                        "source": skill_source(s.source),
                        "plugin_name": s.plugin_name,
                    })
                })
                .collect();
            json!({
                "id": a.id,
                "name": a.name,
                "version": a.version,
                "capabilities": raw_json(&a.capabilities_json),
                "local_skills": skills,
            })
        })
        .collect();
    json!({
        "id": r.id,
        "tenant_id": r.tenant_id,
        "owner_user_id": r.owner_user_id,
        "name": r.name,
        "machine_id": r.machine_id,
        "status": runtime_status(r.status),
        "create_time": time_value(r.create_time.as_ref()),
        "last_seen_time": time_value(r.last_seen_time.as_ref()),
        "status_time": time_value(r.status_time.as_ref()),
        "agent_version": r.agent_version,
        "os": r.os,
        "arch": r.arch,
        "manifest": {
            "acp_agents": agents,
            "local_mcp_servers": r.manifest.iter().flat_map(|m| &m.local_mcp_servers).map(|s| {
                json!({ "id": s.id, "name": s.name, "description": s.description })
            }).collect::<Vec<_>>(),
            "mcp_url_allow_list": r.manifest.iter().flat_map(|m| &m.mcp_url_allow_list).collect::<Vec<_>>(),
            "workspaces": r.manifest.iter().flat_map(|m| &m.workspaces).map(|w| {
                json!({
                    "id": w.id,
                    "name": w.name,
                    "is_git": w.is_git,
                    "current_branch": w.current_branch,
                    "default_branch": w.default_branch,
                    "remote_url": w.remote_url,
                    "direct_allowed": w.direct_allowed,
                    "problem": w.problem,
                })
            }).collect::<Vec<_>>(),
        },
    })
}

pub fn agent(a: &pb::Agent) -> Value {
    let spec = a.spec.as_ref().map_or(Value::Null, |s| {
        serde_json::to_value(SpecFile::from(s)).unwrap_or(Value::Null)
    });
    json!({
        "id": a.id,
        "tenant_id": a.tenant_id,
        "version": a.version,
        "created_by_user_id": a.created_by_user_id,
        "create_time": time_value(a.create_time.as_ref()),
        "update_time": time_value(a.update_time.as_ref()),
        "spec": spec,
    })
}

pub fn session(s: &pb::Session) -> Value {
    json!({
        "id": s.id,
        "tenant_id": s.tenant_id,
        "agent_id": s.agent_id,
        "runtime_id": s.runtime_id,
        "acp_agent_id": s.acp_agent_id,
        "created_by_user_id": s.created_by_user_id,
        "title": s.title,
        "status": session_status(s.status),
        "create_time": time_value(s.create_time.as_ref()),
        "update_time": time_value(s.update_time.as_ref()),
        "last_seq": s.last_seq,
        "agent_version": s.agent_version,
        "options": s.options.as_ref().map(session_options),
        "requested_mode_id": s.requested_mode_id,
        "requested_model_id": s.requested_model_id,
        "workspace": s.workspace.as_ref().map(|w| json!({
            "workspace_id": w.workspace_id,
            "mode": workspace_mode(w.mode),
            "base_ref": w.base_ref,
            "branch": w.branch,
        })),
    })
}

pub fn session_options(o: &pb::SessionOptions) -> Value {
    let choices = |list: &[pb::SessionChoice]| {
        list.iter()
            .map(|c| json!({ "id": c.id, "name": c.name, "description": c.description }))
            .collect::<Vec<_>>()
    };
    json!({
        "mode_id": o.mode_id,
        "modes": choices(&o.modes),
        "model_id": o.model_id,
        "models": choices(&o.models),
    })
}

/// `current (of a, b, c)`, or what was asked for before the agent said.
pub fn session_choice(offered: Option<(&String, &Vec<pb::SessionChoice>)>, requested: &str) -> String {
    match offered {
        Some((current, list)) if !list.is_empty() => format!(
            "{} (of {})",
            if current.is_empty() { "-" } else { current },
            list.iter().map(|c| c.id.as_str()).collect::<Vec<_>>().join(", ")
        ),
        _ if !requested.is_empty() => format!("{requested} (asked)"),
        _ => "-".into(),
    }
}

fn workspace_mode(mode: i32) -> &'static str {
    match pb::WorkspaceMode::try_from(mode) {
        Ok(pb::WorkspaceMode::Worktree) => "worktree",
        Ok(pb::WorkspaceMode::Direct) => "direct",
        _ => "unspecified",
    }
}

/// One line: `web (worktree, branch oma/…, from main)`, or `-`.
pub fn session_workspace(w: Option<&pb::SessionWorkspace>) -> String {
    let Some(w) = w else { return "-".into() };
    match pb::WorkspaceMode::try_from(w.mode) {
        Ok(pb::WorkspaceMode::Direct) => format!("{} (direct)", w.workspace_id),
        _ => format!(
            "{} (worktree, branch {}, from {})",
            w.workspace_id,
            w.branch,
            if w.base_ref.is_empty() { "HEAD" } else { &w.base_ref }
        ),
    }
}

/// A secret's metadata (the message has no value to show).
pub fn secret(s: &pb::Secret) -> Value {
    json!({
        "id": s.id,
        "name": s.name,
        "kind": secret_kind(s.kind),
        "version": s.version,
        "created_by_user_id": s.created_by_user_id,
        "create_time": time_value(s.create_time.as_ref()),
        "update_time": time_value(s.update_time.as_ref()),
        "last_used_time": time_value(s.last_used_time.as_ref()),
    })
}

pub fn audit_entry(e: &pb::AuditEntry) -> Value {
    json!({
        "id": e.id,
        "tenant_id": e.tenant_id,
        "actor": e.actor,
        "action": e.action,
        "target_id": e.target_id,
        "detail": raw_json(&e.detail_json),
        "time": time_value(e.time.as_ref()),
    })
}

/// An enum word, or JSON null for the unset (0) value: in tool call updates
/// unset means "unchanged".
fn set_word(value: i32, word: impl Fn(i32) -> String) -> Value {
    if value == 0 {
        Value::Null
    } else {
        Value::String(word(value))
    }
}

pub fn stop_reason(value: i32) -> String {
    word(
        pb::StopReason::try_from(value).ok().map(|e| e.as_str_name()),
        "STOP_REASON_",
        value,
    )
}

pub fn tool_kind(value: i32) -> String {
    word(
        pb::ToolKind::try_from(value).ok().map(|e| e.as_str_name()),
        "TOOL_KIND_",
        value,
    )
}

pub fn tool_status(value: i32) -> String {
    word(
        pb::ToolCallStatus::try_from(value).ok().map(|e| e.as_str_name()),
        "TOOL_CALL_STATUS_",
        value,
    )
}

pub fn option_kind(value: i32) -> String {
    word(
        pb::PermissionOptionKind::try_from(value).ok().map(|e| e.as_str_name()),
        "PERMISSION_OPTION_KIND_",
        value,
    )
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// An ACP content block, shaped like ACP's own JSON (`type` tag).
pub fn content_block(b: &pb::ContentBlock) -> Value {
    use pb::content_block::Block;
    match &b.block {
        Some(Block::Text(t)) => json!({ "type": "text", "text": t.text }),
        Some(Block::Image(i)) => json!({
            "type": "image",
            "mime_type": i.mime_type,
            "data": base64(&i.data),
            "uri": i.uri,
        }),
        Some(Block::Audio(a)) => json!({ "type": "audio", "mime_type": a.mime_type, "data": base64(&a.data) }),
        Some(Block::ResourceLink(l)) => json!({
            "type": "resource_link",
            "uri": l.uri,
            "name": l.name,
            "mime_type": l.mime_type,
            "title": l.title,
            "description": l.description,
            "size": l.size,
        }),
        Some(Block::Resource(r)) => {
            let mut value = json!({ "type": "resource", "uri": r.uri, "mime_type": r.mime_type });
            match &r.contents {
                Some(pb::embedded_resource::Contents::Text(text)) => value["text"] = json!(text),
                Some(pb::embedded_resource::Contents::Blob(blob)) => value["blob"] = json!(base64(blob)),
                None => {}
            }
            value
        }
        None => Value::Null,
    }
}

pub fn tool_call(t: &pb::ToolCall) -> Value {
    json!({
        "tool_call_id": t.tool_call_id,
        "title": t.title,
        "kind": set_word(t.kind, tool_kind),
        "status": set_word(t.status, tool_status),
        "content": raw_json(&t.content_json),
        "locations": raw_json(&t.locations_json),
        "raw_input": raw_json(&t.raw_input_json),
        "raw_output": raw_json(&t.raw_output_json),
    })
}

fn chunk(c: &pb::ContentChunk) -> Value {
    json!({ "content": c.content.as_ref().map_or(Value::Null, content_block) })
}

/// The typed view of an update and the name of its kind.
fn typed_update(typed: &pb::session_update::Typed) -> (&'static str, Value) {
    use pb::session_update::Typed;
    match typed {
        Typed::UserMessageChunk(c) => ("user_message_chunk", chunk(c)),
        Typed::AgentMessageChunk(c) => ("agent_message_chunk", chunk(c)),
        Typed::AgentThoughtChunk(c) => ("agent_thought_chunk", chunk(c)),
        Typed::ToolCall(t) => ("tool_call", tool_call(t)),
        Typed::ToolCallUpdate(t) => ("tool_call_update", tool_call(t)),
        Typed::Plan(p) => {
            let entries: Vec<Value> = p
                .entries
                .iter()
                .map(|e| json!({ "content": e.content, "priority": e.priority, "status": e.status }))
                .collect();
            ("plan", json!({ "entries": entries }))
        }
        Typed::AvailableCommandsUpdate(a) => {
            let commands: Vec<Value> = a
                .commands
                .iter()
                .map(|c| json!({ "name": c.name, "description": c.description, "input_hint": c.input_hint }))
                .collect();
            ("available_commands_update", json!({ "commands": commands }))
        }
        Typed::CurrentModeUpdate(m) => ("current_mode_update", json!({ "current_mode_id": m.current_mode_id })),
        Typed::ConfigOptionUpdate(c) => (
            "config_option_update",
            json!({ "config_options": raw_json(&c.config_options_json) }),
        ),
        Typed::SessionInfoUpdate(i) => (
            "session_info_update",
            json!({ "title": i.title, "updated_at": i.updated_at }),
        ),
        Typed::UsageUpdate(u) => (
            "usage_update",
            json!({ "used": u.used, "size": u.size, "cost": raw_json(&u.cost_json) }),
        ),
    }
}

/// The name of an event's kind: the proto field name of its `kind` oneof
/// (`update`, `turn_started`, …), `unknown` when this build does not know it.
pub fn event_kind(e: &pb::SessionEvent) -> &'static str {
    use pb::session_event::Kind;
    match &e.kind {
        Some(Kind::Update(_)) => "update",
        Some(Kind::TurnStarted(_)) => "turn_started",
        Some(Kind::TurnEnded(_)) => "turn_ended",
        Some(Kind::PermissionRequested(_)) => "permission_requested",
        Some(Kind::PermissionDecided(_)) => "permission_decided",
        Some(Kind::StatusChanged(_)) => "status_changed",
        Some(Kind::Error(_)) => "error",
        Some(Kind::Log(_)) => "log",
        Some(Kind::WorkspaceChanges(_)) => "workspace_changes",
        Some(Kind::OptionsChanged(_)) => "options_changed",
        None => "unknown",
    }
}

/// A session event: `session_id`, `seq`, `time`, `turn_id`, `kind` (the
/// oneof's field name), and the kind's body under a key of the same name.
/// An update carries its ACP `kind`, the agent's `raw_json` parsed, and the
/// typed view under its kind's name when this build knows it.
pub fn session_event(e: &pb::SessionEvent) -> Value {
    use pb::session_event::Kind;
    let kind = event_kind(e);
    let body = match &e.kind {
        Some(Kind::Update(u)) => {
            let mut body = json!({ "kind": u.kind, "raw_json": raw_json(&u.raw_json) });
            if let Some(typed) = &u.typed {
                let (name, value) = typed_update(typed);
                body[name] = value;
            }
            body
        }
        Some(Kind::TurnStarted(t)) => json!({
            "prompt": t.prompt.iter().map(content_block).collect::<Vec<_>>(),
            "requested_by_user_id": t.requested_by_user_id,
        }),
        Some(Kind::TurnEnded(t)) => json!({
            "stop_reason": stop_reason(t.stop_reason),
            "error": t.error,
            "usage": raw_json(&t.usage_json),
        }),
        Some(Kind::PermissionRequested(p)) => {
            let options: Vec<Value> = p
                .options
                .iter()
                .map(|o| json!({ "option_id": o.option_id, "name": o.name, "kind": option_kind(o.kind) }))
                .collect();
            json!({
                "request_id": p.request_id,
                "tool_call": p.tool_call.as_ref().map_or(Value::Null, tool_call),
                "options": options,
                "raw_json": raw_json(&p.raw_json),
            })
        }
        Some(Kind::PermissionDecided(d)) => json!({
            "request_id": d.request_id,
            "option_id": d.option_id,
            "cancelled": d.cancelled,
            "decided_by": d.decided_by,
        }),
        Some(Kind::StatusChanged(s)) => json!({
            "status": session_status(s.status),
            "acp_session_id": s.acp_session_id,
        }),
        Some(Kind::Error(err)) => json!({ "code": err.code, "message": err.message }),
        Some(Kind::OptionsChanged(o)) => session_options(o),
        Some(Kind::WorkspaceChanges(c)) => json!({
            "base_commit": c.base_commit,
            "files_changed": c.files_changed,
            "insertions": c.insertions,
            "deletions": c.deletions,
            "files": c.files.iter().map(|f| json!({
                "path": f.path,
                "status": f.status,
                "insertions": f.insertions,
                "deletions": f.deletions,
                "binary": f.binary,
            })).collect::<Vec<_>>(),
            "truncated": c.truncated,
        }),
        Some(Kind::Log(l)) => json!({ "message": l.message }),
        None => Value::Null,
    };
    let mut value = json!({
        "session_id": e.session_id,
        "seq": e.seq,
        "time": time_value(e.time.as_ref()),
        "turn_id": e.turn_id,
        "kind": kind,
    });
    if !body.is_null() {
        value[kind] = body;
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_are_lowercase_words() {
        assert_eq!(role(pb::Role::Admin as i32), "admin");
        assert_eq!(runtime_status(pb::RuntimeStatus::Online as i32), "online");
        assert_eq!(session_status(pb::SessionStatus::Idle as i32), "idle");
        assert_eq!(skill_source(pb::local_skill::Source::Plugin as i32), "plugin");
        assert_eq!(role(99), "unknown(99)");
        let spec = pb::AgentSpec {
            permission_policy: pb::PermissionPolicy::AllowOnce as i32,
            ..Default::default()
        };
        let value = agent(&pb::Agent {
            spec: Some(spec),
            ..Default::default()
        });
        assert_eq!(value["spec"]["permission_policy"], "allow_once");
    }
}
