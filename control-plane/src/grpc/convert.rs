//! Stored rows → wire messages.

use oma_proto::pb;
use prost::Message as _;

use crate::service::agents::Agent;
use crate::service::runtimes::STATUS_ONLINE;
use crate::service::sessions;
use crate::store::rows::{ApiTokenRow, AuditRow, RuntimeRow, SessionRow, TenantRow, UserRow};

pub use crate::service::timestamp;

pub fn tenant(row: TenantRow) -> pb::Tenant {
    pb::Tenant {
        id: row.id,
        name: row.name,
        create_time: Some(timestamp(row.created_at)),
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

pub fn runtime(row: RuntimeRow) -> pb::Runtime {
    let status = if row.status == STATUS_ONLINE {
        pb::RuntimeStatus::Online
    } else {
        pb::RuntimeStatus::Offline
    };
    // A manifest that fails to decode is shown as empty rather than failing
    // the whole listing; it is replaced on the machine's next Hello.
    let manifest = pb::Manifest::decode(row.manifest.as_slice()).unwrap_or_else(|e| {
        tracing::warn!(runtime_id = %row.id, error = %e, "stored manifest does not decode");
        pb::Manifest::default()
    });
    pb::Runtime {
        id: row.id,
        tenant_id: row.tenant_id,
        owner_user_id: row.owner_user_id,
        name: row.name,
        machine_id: row.machine_id,
        status: status as i32,
        create_time: Some(timestamp(row.created_at)),
        last_seen_time: row.last_seen_at.map(timestamp),
        status_time: Some(timestamp(row.status_at)),
        agent_version: row.agent_version,
        os: row.os,
        arch: row.arch,
        manifest: Some(manifest),
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

pub fn session_status(status: &str) -> pb::SessionStatus {
    match status {
        sessions::STATUS_PENDING => pb::SessionStatus::Pending,
        sessions::STATUS_IDLE => pb::SessionStatus::Idle,
        sessions::STATUS_RUNNING => pb::SessionStatus::Running,
        sessions::STATUS_FAILED => pb::SessionStatus::Failed,
        sessions::STATUS_DISPOSED => pb::SessionStatus::Disposed,
        _ => pb::SessionStatus::Unspecified,
    }
}

pub fn session(row: SessionRow) -> pb::Session {
    pb::Session {
        status: session_status(&row.status) as i32,
        id: row.id,
        tenant_id: row.tenant_id,
        agent_id: row.agent_id,
        runtime_id: row.runtime_id,
        acp_agent_id: row.acp_agent_id,
        created_by_user_id: row.created_by_user_id,
        title: row.title,
        create_time: Some(timestamp(row.created_at)),
        update_time: Some(timestamp(row.updated_at)),
        last_seq: row.last_seq as u64,
        agent_version: row.agent_version as u64,
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
    }
}
