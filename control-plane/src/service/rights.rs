//! Who may do what to runtimes, agents and sessions: every rule in one place,
//! so no RPC can drift from the others.
//!
//! Another tenant's id is never found: every lookup here filters by the
//! caller's tenant, so it answers NOT_FOUND before any rule is consulted (no
//! existence oracle). Inside the tenant, a caller without the right gets
//! PERMISSION_DENIED with one sentence saying who may.
//!
//! | what | who |
//! |---|---|
//! | use a runtime (bind an agent to it, start a session on it, delete it) | its owner, an admin |
//! | update or delete an agent bound to a runtime | that runtime's owner, an admin |
//! | update or delete an unbound agent, or one whose runtime is gone | its creator, an admin |
//! | prompt, cancel, answer, delete a session | its runtime's owner, an admin |
//! | delete a session whose runtime is gone | its creator, an admin |
//! | see a session (get, list, watch) | its creator, its runtime's owner, an admin |
//! | create, update or delete a secret | an admin |
//! | see a secret's metadata (get, list; never its value) | every member of the tenant |
//!
//! A new binding in an agent update is checked as a runtime use of the new
//! runtime, on top of the right to manage the agent as stored.

use oma_proto::ids::{AgentId, SessionId};

use super::agents::Agent;
use super::{Caller, ServiceError, ServiceResult};
use crate::store::DbConn;
use crate::store::rows::{self, RuntimeRow, SessionRow};

fn is(caller: &Caller, user_id: &str) -> bool {
    caller.user_id.as_str() == user_id
}

pub(crate) fn may_use_runtime(caller: &Caller, runtime: &RuntimeRow) -> bool {
    caller.is_admin() || is(caller, &runtime.owner_user_id)
}

/// `runtime_owner` is the owner of the agent's stored runtime binding;
/// `None` when it is unbound or its runtime no longer exists.
pub(crate) fn may_manage_agent(caller: &Caller, created_by: &str, runtime_owner: Option<&str>) -> bool {
    caller.is_admin() || is(caller, runtime_owner.unwrap_or(created_by))
}

/// `runtime_owner` is `None` when the session's runtime no longer exists.
pub(crate) fn may_drive_session(caller: &Caller, session: &SessionRow, runtime_owner: Option<&str>) -> bool {
    caller.is_admin() || is(caller, runtime_owner.unwrap_or(&session.created_by_user_id))
}

pub(crate) fn may_see_session(caller: &Caller, session: &SessionRow, runtime_owner: Option<&str>) -> bool {
    caller.is_admin() || is(caller, &session.created_by_user_id) || runtime_owner.is_some_and(|o| is(caller, o))
}

/// Refuses a caller who may not use `runtime`.
pub(crate) fn require_runtime_use(caller: &Caller, runtime: &RuntimeRow) -> ServiceResult<()> {
    if may_use_runtime(caller, runtime) {
        return Ok(());
    }
    Err(ServiceError::PermissionDenied(format!(
        "runtime {} belongs to another user; only its owner or an admin may run agents on it",
        runtime.id
    )))
}

/// Refuses a caller who may not create, update or delete secrets: only
/// admins may (a secret is shared by the whole tenant, and its value reaches
/// sessions on machines its creator does not own).
pub(crate) fn require_secret_management(caller: &Caller) -> ServiceResult<()> {
    caller.require_admin("creating, updating or deleting a secret")
}

/// The owner of a runtime of the tenant, `None` when it no longer exists.
fn runtime_owner(conn: &mut DbConn, tenant: &str, runtime_id: &str) -> ServiceResult<Option<String>> {
    Ok(rows::get_runtime(conn, tenant, runtime_id)?.map(|r| r.owner_user_id))
}

/// Loads an agent the caller may update or delete.
pub(crate) fn agent_to_manage(conn: &mut DbConn, caller: &Caller, agent_id: &AgentId) -> ServiceResult<Agent> {
    let tenant = caller.tenant_id.as_str();
    let row =
        rows::get_agent(conn, tenant, agent_id.as_str())?.ok_or_else(|| ServiceError::not_found("agent", agent_id))?;
    let owner = match &row.runtime_id {
        Some(runtime_id) => runtime_owner(conn, tenant, runtime_id)?,
        None => None,
    };
    if may_manage_agent(caller, &row.created_by_user_id, owner.as_deref()) {
        return Agent::from_row(row).map_err(Into::into);
    }
    Err(ServiceError::PermissionDenied(match (&row.runtime_id, owner) {
        (Some(runtime_id), Some(_)) => format!(
            "agent {agent_id} is bound to runtime {runtime_id}, which belongs to another user; only that runtime's owner or an admin may change or delete it"
        ),
        (Some(runtime_id), None) => format!(
            "agent {agent_id} is bound to runtime {runtime_id}, which no longer exists; only the agent's creator or an admin may change or delete it"
        ),
        (None, _) => {
            format!("agent {agent_id} is not bound to a runtime; only its creator or an admin may change or delete it")
        }
    }))
}

/// Loads a session of the tenant with its runtime's owner (`None` when the
/// runtime no longer exists).
fn session_with_owner(
    conn: &mut DbConn,
    caller: &Caller,
    session_id: &SessionId,
) -> ServiceResult<(SessionRow, Option<String>)> {
    let tenant = caller.tenant_id.as_str();
    let session = rows::get_session(conn, tenant, session_id.as_str())?
        .ok_or_else(|| ServiceError::not_found("session", session_id))?;
    let owner = runtime_owner(conn, tenant, &session.runtime_id)?;
    Ok((session, owner))
}

/// Loads a session the caller may prompt, cancel, answer or delete.
pub(crate) fn session_to_drive(
    conn: &mut DbConn,
    caller: &Caller,
    session_id: &SessionId,
) -> ServiceResult<SessionRow> {
    let (session, owner) = session_with_owner(conn, caller, session_id)?;
    if may_drive_session(caller, &session, owner.as_deref()) {
        return Ok(session);
    }
    Err(ServiceError::PermissionDenied(match owner {
        Some(_) => format!(
            "session {session_id} runs on runtime {}, which belongs to another user; only that runtime's owner or an admin may prompt, cancel, answer or delete it",
            session.runtime_id
        ),
        None => format!(
            "session {session_id} ran on runtime {}, which no longer exists; only the session's creator or an admin may delete it",
            session.runtime_id
        ),
    }))
}

/// Loads a session the caller may see (get or watch).
pub(crate) fn session_to_see(conn: &mut DbConn, caller: &Caller, session_id: &SessionId) -> ServiceResult<SessionRow> {
    let (session, owner) = session_with_owner(conn, caller, session_id)?;
    if may_see_session(caller, &session, owner.as_deref()) {
        return Ok(session);
    }
    Err(ServiceError::PermissionDenied(format!(
        "session {session_id} belongs to another user; only its creator, its runtime's owner or an admin may see it"
    )))
}

#[cfg(test)]
mod tests {
    use oma_proto::ids::{TenantId, TokenId, UserId};
    use oma_proto::model::Role;

    use super::*;

    fn caller(user: &str, role: Role) -> Caller {
        Caller {
            tenant_id: TenantId::from_trusted("ten_1".into()),
            user_id: UserId::from_trusted(user.into()),
            role,
            token_id: TokenId::from_trusted("tok_1".into()),
        }
    }

    fn session(created_by: &str) -> SessionRow {
        SessionRow {
            id: "ses_1".into(),
            tenant_id: "ten_1".into(),
            agent_id: "agt_1".into(),
            runtime_id: "rt_1".into(),
            acp_agent_id: "test".into(),
            created_by_user_id: created_by.into(),
            title: String::new(),
            status: "idle".into(),
            agent_version: 1,
            spec: "{}".into(),
            acp_session_id: None,
            current_turn_id: None,
            current_prompt: None,
            last_seq: 0,
            created_at: 0,
            updated_at: 0,
            workspace: None,
            options: None,
            mode_id: String::new(),
            model_id: String::new(),
        }
    }

    #[test]
    fn agents_follow_the_stored_binding_then_the_creator() {
        let (admin, owner, creator, other) = (
            caller("admin", Role::Admin),
            caller("owner", Role::Member),
            caller("creator", Role::Member),
            caller("other", Role::Member),
        );
        // Bound to an existing runtime: its owner decides, not the creator.
        assert!(may_manage_agent(&owner, "creator", Some("owner")));
        assert!(may_manage_agent(&admin, "creator", Some("owner")));
        assert!(!may_manage_agent(&creator, "creator", Some("owner")));
        assert!(!may_manage_agent(&other, "creator", Some("owner")));
        // Unbound, or the runtime is gone: the creator.
        assert!(may_manage_agent(&creator, "creator", None));
        assert!(may_manage_agent(&admin, "creator", None));
        assert!(!may_manage_agent(&other, "creator", None));
    }

    #[test]
    fn sessions_are_driven_by_the_runtime_owner_and_seen_by_three() {
        let s = session("creator");
        let (admin, owner, creator, other) = (
            caller("admin", Role::Admin),
            caller("owner", Role::Member),
            caller("creator", Role::Member),
            caller("other", Role::Member),
        );
        assert!(may_drive_session(&owner, &s, Some("owner")));
        assert!(may_drive_session(&admin, &s, Some("owner")));
        assert!(!may_drive_session(&creator, &s, Some("owner")));
        assert!(!may_drive_session(&other, &s, Some("owner")));
        // The runtime is gone: the creator may still clean up.
        assert!(may_drive_session(&creator, &s, None));
        assert!(!may_drive_session(&owner, &s, None));

        for who in [&admin, &owner, &creator] {
            assert!(may_see_session(who, &s, Some("owner")), "{who:?}");
        }
        assert!(!may_see_session(&other, &s, Some("owner")));
        assert!(!may_see_session(&owner, &s, None));
        assert!(may_see_session(&creator, &s, None));
    }
}
