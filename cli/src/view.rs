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
        "manifest": { "acp_agents": agents },
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
