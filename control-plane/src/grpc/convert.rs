//! Records of the service layer → wire messages.

use oma_proto::pb;

use crate::service::agents::Agent;
use crate::service::runtimes::Runtime;
use crate::service::secret_store::Secret;
use crate::service::sessions::{Session, SessionStatus};
use crate::store::rows::{ApiTokenRow, AuditRow, TenantRow, UserRow};

pub use crate::service::timestamp;

pub fn tenant(row: TenantRow) -> pb::Tenant {
    pb::Tenant {
        id: row.id,
        name: row.name,
        create_time: Some(timestamp(row.created_at)),
    }
}

/// A secret's metadata (the service's `Secret` holds no value to leak).
pub fn secret(secret: Secret) -> pb::Secret {
    pb::Secret {
        id: secret.id,
        tenant_id: secret.tenant_id,
        name: secret.name,
        kind: pb::SecretKind::from(secret.kind) as i32,
        version: secret.version,
        created_by_user_id: secret.created_by_user_id,
        create_time: Some(timestamp(secret.created_at)),
        update_time: Some(timestamp(secret.updated_at)),
        last_used_time: secret.last_used_at.map(timestamp),
    }
}

pub fn user(row: UserRow) -> pb::User {
    let role = match oma_proto::model::Role::parse_stored(&row.role) {
        Some(role) => pb::Role::from(role),
        None => pb::Role::Unspecified,
    };
    pb::User {
        id: row.id,
        tenant_id: row.tenant_id,
        name: row.name,
        role: role as i32,
        create_time: Some(timestamp(row.created_at)),
    }
}

pub fn token(row: ApiTokenRow) -> pb::ApiToken {
    pb::ApiToken {
        id: row.id,
        tenant_id: row.tenant_id,
        user_id: row.user_id,
        name: row.name,
        create_time: Some(timestamp(row.created_at)),
        expire_time: row.expires_at.map(timestamp),
        revoke_time: row.revoked_at.map(timestamp),
        last_used_time: row.last_used_at.map(timestamp),
    }
}

pub fn runtime(runtime: Runtime) -> pb::Runtime {
    let status = if runtime.online {
        pb::RuntimeStatus::Online
    } else {
        pb::RuntimeStatus::Offline
    };
    pb::Runtime {
        id: runtime.id,
        tenant_id: runtime.tenant_id,
        owner_user_id: runtime.owner_user_id,
        name: runtime.name,
        machine_id: runtime.machine_id,
        status: status as i32,
        create_time: Some(timestamp(runtime.created_at)),
        last_seen_time: runtime.last_seen_at.map(timestamp),
        status_time: Some(timestamp(runtime.status_at)),
        agent_version: runtime.agent_version,
        os: runtime.os,
        arch: runtime.arch,
        manifest: Some(runtime.manifest),
    }
}

pub fn agent(agent: Agent) -> pb::Agent {
    pb::Agent {
        id: agent.row.id,
        tenant_id: agent.row.tenant_id,
        spec: Some(agent.spec.into()),
        version: agent.row.version as u64,
        created_by_user_id: agent.row.created_by_user_id,
        create_time: Some(timestamp(agent.row.created_at)),
        update_time: Some(timestamp(agent.row.updated_at)),
    }
}

pub fn session_status(status: SessionStatus) -> pb::SessionStatus {
    match status {
        SessionStatus::Pending => pb::SessionStatus::Pending,
        SessionStatus::Idle => pb::SessionStatus::Idle,
        SessionStatus::Running => pb::SessionStatus::Running,
        SessionStatus::Failed => pb::SessionStatus::Failed,
        SessionStatus::Disposed => pb::SessionStatus::Disposed,
        SessionStatus::Unknown => pb::SessionStatus::Unspecified,
    }
}

pub fn session(session: Session) -> pb::Session {
    pb::Session {
        status: session_status(session.status) as i32,
        id: session.id,
        tenant_id: session.tenant_id,
        agent_id: session.agent_id,
        runtime_id: session.runtime_id,
        acp_agent_id: session.acp_agent_id,
        created_by_user_id: session.created_by_user_id,
        title: session.title,
        create_time: Some(timestamp(session.created_at)),
        update_time: Some(timestamp(session.updated_at)),
        last_seq: session.last_seq,
        agent_version: session.agent_version,
        workspace: session.workspace.as_ref().map(pb::SessionWorkspace::from),
        options: session.options.as_ref().map(pb::SessionOptions::from),
        requested_mode_id: session.requested_mode_id,
        requested_model_id: session.requested_model_id,
    }
}

pub fn audit(row: AuditRow) -> pb::AuditEntry {
    pb::AuditEntry {
        id: row.id,
        tenant_id: row.tenant_id,
        actor: row.actor,
        action: row.action,
        target_id: row.target_id,
        detail_json: row.detail,
        time: Some(timestamp(row.created_at)),
    }
}

/// A wire timestamp as milliseconds since the Unix epoch (saturating, so a
/// far-off time filters as "everything" or "nothing", never wraps).
pub fn millis(t: &prost_types::Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(t.nanos.clamp(0, 999_999_999) / 1_000_000))
}

pub fn page(page: Option<pb::PageRequest>) -> crate::service::PageRequest {
    let page = page.unwrap_or_default();
    crate::service::PageRequest {
        page_size: page.page_size,
        page_token: page.page_token,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_split_millis() {
        let t = timestamp(1_700_000_000_123);
        assert_eq!((t.seconds, t.nanos), (1_700_000_000, 123_000_000));
        let t = timestamp(-1);
        assert_eq!((t.seconds, t.nanos), (-1, 999_000_000));
        assert_eq!(millis(&timestamp(1_700_000_000_123)), 1_700_000_000_123);
        assert_eq!(millis(&timestamp(-1)), -1);
        let far = prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: 5,
        };
        assert_eq!(millis(&far), i64::MAX);
    }
}
