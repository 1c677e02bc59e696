//! Row types and the queries on them. Every query that reads a tenant's
//! data takes the tenant id and filters on it: a row of another tenant is
//! simply not found.
//!
//! Lookups on the hot paths (authentication, event appends) `load` instead of
//! `.first()`: its bound LIMIT makes SQLite re-prepare the statement on every
//! call, which defeats the statement cache.

use diesel::prelude::*;

use super::schema::*;
use super::{DbConn, StoreError};

pub type QueryResult<T> = Result<T, StoreError>;

/// Keyset paging: rows after (or before, for newest-first lists) `after_id`.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub limit: usize,
    pub after_id: Option<String>,
}

impl Page {
    fn limit(&self) -> i64 {
        // One extra row tells whether another page exists.
        self.limit as i64 + 1
    }
}

/// Splits the extra row off a page query's result and returns the next
/// page's cursor.
pub fn finish_page<T>(mut rows: Vec<T>, page: &Page, id: impl Fn(&T) -> &str) -> (Vec<T>, Option<String>) {
    if rows.len() > page.limit {
        rows.truncate(page.limit);
        let next = rows.last().map(|r| id(r).to_owned());
        (rows, next)
    } else {
        (rows, None)
    }
}

// ---- tenants ---------------------------------------------------------------

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = tenants)]
pub struct TenantRow {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

pub fn insert_tenant(conn: &mut DbConn, row: &TenantRow) -> QueryResult<()> {
    diesel::insert_into(tenants::table).values(row).execute(conn)?;
    Ok(())
}

pub fn get_tenant(conn: &mut DbConn, id: &str) -> QueryResult<Option<TenantRow>> {
    Ok(tenants::table
        .find(id)
        .select(TenantRow::as_select())
        .first(conn)
        .optional()?)
}

pub fn find_tenant_by_name(conn: &mut DbConn, name: &str) -> QueryResult<Option<TenantRow>> {
    Ok(tenants::table
        .filter(tenants::name.eq(name))
        .select(TenantRow::as_select())
        .first(conn)
        .optional()?)
}

pub fn list_tenants(conn: &mut DbConn) -> QueryResult<Vec<TenantRow>> {
    Ok(tenants::table
        .order(tenants::id.asc())
        .select(TenantRow::as_select())
        .load(conn)?)
}

pub fn count_tenants(conn: &mut DbConn) -> QueryResult<i64> {
    Ok(tenants::table.count().get_result(conn)?)
}

// ---- users -----------------------------------------------------------------

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = users)]
pub struct UserRow {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub role: String,
    pub created_at: i64,
}

pub fn insert_user(conn: &mut DbConn, row: &UserRow) -> QueryResult<()> {
    diesel::insert_into(users::table).values(row).execute(conn)?;
    Ok(())
}

pub fn get_user(conn: &mut DbConn, tenant: &str, id: &str) -> QueryResult<Option<UserRow>> {
    Ok(users::table
        .filter(users::tenant_id.eq(tenant).and(users::id.eq(id)))
        .select(UserRow::as_select())
        .first(conn)
        .optional()?)
}

pub fn find_user_by_name(conn: &mut DbConn, tenant: &str, name: &str) -> QueryResult<Option<UserRow>> {
    Ok(users::table
        .filter(users::tenant_id.eq(tenant).and(users::name.eq(name)))
        .select(UserRow::as_select())
        .first(conn)
        .optional()?)
}

pub fn list_users(conn: &mut DbConn, tenant: &str, page: &Page) -> QueryResult<Vec<UserRow>> {
    let mut q = users::table
        .filter(users::tenant_id.eq(tenant))
        .order(users::id.asc())
        .limit(page.limit())
        .select(UserRow::as_select())
        .into_boxed();
    if let Some(after) = &page.after_id {
        q = q.filter(users::id.gt(after.clone()));
    }
    Ok(q.load(conn)?)
}

pub fn count_admins(conn: &mut DbConn, tenant: &str) -> QueryResult<i64> {
    Ok(users::table
        .filter(users::tenant_id.eq(tenant).and(users::role.eq("admin")))
        .count()
        .get_result(conn)?)
}

pub fn delete_user(conn: &mut DbConn, tenant: &str, id: &str) -> QueryResult<bool> {
    diesel::delete(api_tokens::table.filter(api_tokens::tenant_id.eq(tenant).and(api_tokens::user_id.eq(id))))
        .execute(conn)?;
    let n = diesel::delete(users::table.filter(users::tenant_id.eq(tenant).and(users::id.eq(id)))).execute(conn)?;
    Ok(n > 0)
}

// ---- api tokens ------------------------------------------------------------

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = api_tokens)]
pub struct ApiTokenRow {
    pub id: String,
    pub tenant_id: String,
    pub user_id: String,
    pub name: String,
    pub secret_hash: Vec<u8>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

pub fn insert_token(conn: &mut DbConn, row: &ApiTokenRow) -> QueryResult<()> {
    diesel::insert_into(api_tokens::table).values(row).execute(conn)?;
    Ok(())
}

/// Looks a token up by id alone: used to authenticate, before the tenant is
/// known.
pub fn get_token_for_auth(conn: &mut DbConn, id: &str) -> QueryResult<Option<(ApiTokenRow, UserRow)>> {
    Ok(api_tokens::table
        .inner_join(users::table.on(users::id.eq(api_tokens::user_id)))
        .filter(api_tokens::id.eq(id))
        .select((ApiTokenRow::as_select(), UserRow::as_select()))
        .load(conn)?
        .into_iter()
        .next())
}

pub fn get_token(conn: &mut DbConn, tenant: &str, id: &str) -> QueryResult<Option<ApiTokenRow>> {
    Ok(api_tokens::table
        .filter(api_tokens::tenant_id.eq(tenant).and(api_tokens::id.eq(id)))
        .select(ApiTokenRow::as_select())
        .first(conn)
        .optional()?)
}

pub fn list_tokens(conn: &mut DbConn, tenant: &str, user: Option<&str>, page: &Page) -> QueryResult<Vec<ApiTokenRow>> {
    let mut q = api_tokens::table
        .filter(api_tokens::tenant_id.eq(tenant))
        .order(api_tokens::id.asc())
        .limit(page.limit())
        .select(ApiTokenRow::as_select())
        .into_boxed();
    if let Some(user) = user {
        q = q.filter(api_tokens::user_id.eq(user.to_owned()));
    }
    if let Some(after) = &page.after_id {
        q = q.filter(api_tokens::id.gt(after.clone()));
    }
    Ok(q.load(conn)?)
}

pub fn revoke_token(conn: &mut DbConn, tenant: &str, id: &str, at: i64) -> QueryResult<()> {
    diesel::update(
        api_tokens::table.filter(
            api_tokens::tenant_id
                .eq(tenant)
                .and(api_tokens::id.eq(id))
                .and(api_tokens::revoked_at.is_null()),
        ),
    )
    .set(api_tokens::revoked_at.eq(Some(at)))
    .execute(conn)?;
    Ok(())
}

pub fn touch_token(conn: &mut DbConn, id: &str, at: i64) -> QueryResult<()> {
    diesel::update(api_tokens::table.find(id))
        .set(api_tokens::last_used_at.eq(Some(at)))
        .execute(conn)?;
    Ok(())
}

// ---- connect codes ---------------------------------------------------------

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = connect_codes)]
pub struct ConnectCodeRow {
    pub id: String,
    pub tenant_id: String,
    pub owner_user_id: String,
    pub created_by_user_id: String,
    pub code_hash: Vec<u8>,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub runtime_id: Option<String>,
}

pub fn insert_connect_code(conn: &mut DbConn, row: &ConnectCodeRow) -> QueryResult<()> {
    diesel::insert_into(connect_codes::table).values(row).execute(conn)?;
    Ok(())
}

pub fn find_connect_code(conn: &mut DbConn, code_hash: &[u8]) -> QueryResult<Option<ConnectCodeRow>> {
    Ok(connect_codes::table
        .filter(connect_codes::code_hash.eq(code_hash))
        .select(ConnectCodeRow::as_select())
        .first(conn)
        .optional()?)
}

/// Marks a code used, only if it still is unused: returns false when another
/// exchange won the race.
pub fn use_connect_code(conn: &mut DbConn, id: &str, runtime_id: &str, at: i64) -> QueryResult<bool> {
    let n = diesel::update(connect_codes::table.filter(connect_codes::id.eq(id).and(connect_codes::used_at.is_null())))
        .set((
            connect_codes::used_at.eq(Some(at)),
            connect_codes::runtime_id.eq(Some(runtime_id)),
        ))
        .execute(conn)?;
    Ok(n == 1)
}

// ---- runtimes --------------------------------------------------------------

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = runtimes)]
pub struct RuntimeRow {
    pub id: String,
    pub tenant_id: String,
    pub owner_user_id: String,
    pub name: String,
    pub machine_id: String,
    pub token_hash: Vec<u8>,
    pub created_at: i64,
    pub status: String,
    pub status_at: i64,
    pub last_seen_at: Option<i64>,
    pub agent_version: String,
    pub os: String,
    pub arch: String,
    pub manifest: Vec<u8>,
    pub connection_epoch: i64,
}

pub fn insert_runtime(conn: &mut DbConn, row: &RuntimeRow) -> QueryResult<()> {
    diesel::insert_into(runtimes::table).values(row).execute(conn)?;
    Ok(())
}

pub fn get_runtime(conn: &mut DbConn, tenant: &str, id: &str) -> QueryResult<Option<RuntimeRow>> {
    Ok(runtimes::table
        .filter(runtimes::tenant_id.eq(tenant).and(runtimes::id.eq(id)))
        .select(RuntimeRow::as_select())
        .first(conn)
        .optional()?)
}

/// Looks a runtime up by id alone: used to authenticate a machine token.
pub fn get_runtime_for_auth(conn: &mut DbConn, id: &str) -> QueryResult<Option<RuntimeRow>> {
    Ok(runtimes::table
        .find(id)
        .select(RuntimeRow::as_select())
        .load(conn)?
        .into_iter()
        .next())
}

pub fn list_runtimes(conn: &mut DbConn, tenant: &str, page: &Page) -> QueryResult<Vec<RuntimeRow>> {
    let mut q = runtimes::table
        .filter(runtimes::tenant_id.eq(tenant))
        .order(runtimes::id.asc())
        .limit(page.limit())
        .select(RuntimeRow::as_select())
        .into_boxed();
    if let Some(after) = &page.after_id {
        q = q.filter(runtimes::id.gt(after.clone()));
    }
    Ok(q.load(conn)?)
}

pub fn count_runtimes_owned_by(conn: &mut DbConn, tenant: &str, user: &str) -> QueryResult<i64> {
    Ok(runtimes::table
        .filter(runtimes::tenant_id.eq(tenant).and(runtimes::owner_user_id.eq(user)))
        .count()
        .get_result(conn)?)
}

pub fn delete_runtime(conn: &mut DbConn, tenant: &str, id: &str) -> QueryResult<bool> {
    let n = diesel::delete(runtimes::table.filter(runtimes::tenant_id.eq(tenant).and(runtimes::id.eq(id))))
        .execute(conn)?;
    Ok(n > 0)
}

// ---- agents ----------------------------------------------------------------

#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = agents)]
pub struct AgentRow {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub spec: String,
    pub runtime_id: Option<String>,
    pub version: i64,
    pub created_by_user_id: String,
    pub created_at: i64,
    pub updated_at: i64,
}

pub fn insert_agent(conn: &mut DbConn, row: &AgentRow) -> QueryResult<()> {
    diesel::insert_into(agents::table).values(row).execute(conn)?;
    Ok(())
}

pub fn get_agent(conn: &mut DbConn, tenant: &str, id: &str) -> QueryResult<Option<AgentRow>> {
    Ok(agents::table
        .filter(agents::tenant_id.eq(tenant).and(agents::id.eq(id)))
        .select(AgentRow::as_select())
        .first(conn)
        .optional()?)
}

pub fn list_agents(conn: &mut DbConn, tenant: &str, page: &Page) -> QueryResult<Vec<AgentRow>> {
    let mut q = agents::table
        .filter(agents::tenant_id.eq(tenant))
        .order(agents::id.asc())
        .limit(page.limit())
        .select(AgentRow::as_select())
        .into_boxed();
    if let Some(after) = &page.after_id {
        q = q.filter(agents::id.gt(after.clone()));
    }
    Ok(q.load(conn)?)
}

/// Writes an updated agent if its stored version is still `prior_version`;
/// false when a concurrent update got there first.
pub fn update_agent(conn: &mut DbConn, row: &AgentRow, prior_version: i64) -> QueryResult<bool> {
    let n = diesel::update(
        agents::table.filter(
            agents::tenant_id
                .eq(&row.tenant_id)
                .and(agents::id.eq(&row.id))
                .and(agents::version.eq(prior_version)),
        ),
    )
    .set(row)
    .execute(conn)?;
    Ok(n == 1)
}

pub fn delete_agent(conn: &mut DbConn, tenant: &str, id: &str) -> QueryResult<bool> {
    let n = diesel::delete(agents::table.filter(agents::tenant_id.eq(tenant).and(agents::id.eq(id)))).execute(conn)?;
    Ok(n > 0)
}

// ---- sessions --------------------------------------------------------------

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = sessions)]
pub struct SessionRow {
    pub id: String,
    pub tenant_id: String,
    pub agent_id: String,
    pub runtime_id: String,
    pub acp_agent_id: String,
    pub created_by_user_id: String,
    pub title: String,
    pub status: String,
    pub agent_version: i64,
    pub spec: String,
    pub acp_session_id: Option<String>,
    pub current_turn_id: Option<String>,
    pub current_prompt: Option<Vec<u8>>,
    pub last_seq: i64,
    pub created_at: i64,
    pub updated_at: i64,
    /// JSON of the session's workspace (see `service::sessions::SessionWorkspace`).
    pub workspace: Option<String>,
    /// JSON of what the agent offers (see `service::sessions::options`).
    pub options: Option<String>,
    /// What the session was asked to start in (empty: the agent's own).
    pub mode_id: String,
    pub model_id: String,
}

pub fn insert_session(conn: &mut DbConn, row: &SessionRow) -> QueryResult<()> {
    diesel::insert_into(sessions::table).values(row).execute(conn)?;
    Ok(())
}

/// Deleted sessions (tombstones awaiting the machine's dispose) are not
/// found.
pub fn get_session(conn: &mut DbConn, tenant: &str, id: &str) -> QueryResult<Option<SessionRow>> {
    Ok(sessions::table
        .filter(sessions::tenant_id.eq(tenant).and(sessions::id.eq(id)))
        .filter(sessions::status.ne(SESSION_TOMBSTONE))
        .select(SessionRow::as_select())
        .first(conn)
        .optional()?)
}

/// Newest first. With `visible_to`, only the sessions that user created or
/// that run on a runtime it owns.
pub fn list_sessions(
    conn: &mut DbConn,
    tenant: &str,
    agent: Option<&str>,
    visible_to: Option<&str>,
    page: &Page,
) -> QueryResult<Vec<SessionRow>> {
    let mut q = sessions::table
        .filter(sessions::tenant_id.eq(tenant))
        .filter(sessions::status.ne(SESSION_TOMBSTONE))
        .order(sessions::id.desc())
        .limit(page.limit())
        .select(SessionRow::as_select())
        .into_boxed();
    if let Some(agent) = agent {
        q = q.filter(sessions::agent_id.eq(agent.to_owned()));
    }
    if let Some(user) = visible_to {
        let owned_runtimes = runtimes::table
            .filter(runtimes::tenant_id.eq(tenant.to_owned()))
            .filter(runtimes::owner_user_id.eq(user.to_owned()))
            .select(runtimes::id);
        q = q.filter(
            sessions::created_by_user_id
                .eq(user.to_owned())
                .or(sessions::runtime_id.eq_any(owned_runtimes)),
        );
    }
    if let Some(after) = &page.after_id {
        q = q.filter(sessions::id.lt(after.clone()));
    }
    Ok(q.load(conn)?)
}

/// The sessions on a runtime that work in a workspace and are not deleted
/// or failed: (id, workspace JSON). For the one-direct-session rule and
/// branch names.
pub fn workspace_sessions_on_runtime(conn: &mut DbConn, runtime: &str) -> QueryResult<Vec<(String, String)>> {
    let found: Vec<(String, Option<String>)> = sessions::table
        .filter(sessions::runtime_id.eq(runtime))
        .filter(sessions::workspace.is_not_null())
        .filter(sessions::status.ne(SESSION_TOMBSTONE))
        .filter(sessions::status.ne(crate::service::sessions::STATUS_FAILED))
        .select((sessions::id, sessions::workspace))
        .load(conn)?;
    Ok(found.into_iter().filter_map(|(id, w)| Some((id, w?))).collect())
}

/// Records what a session's agent offers and has selected.
pub fn set_session_options(conn: &mut DbConn, session_id: &str, options: &str) -> QueryResult<()> {
    diesel::update(sessions::table.filter(sessions::id.eq(session_id)))
        .set(sessions::options.eq(Some(options)))
        .execute(conn)?;
    Ok(())
}

/// The options the newest session of this ACP agent on this runtime
/// recorded, to check a new session's choice before it starts.
pub fn latest_options(conn: &mut DbConn, runtime: &str, acp_agent: &str) -> QueryResult<Option<String>> {
    Ok(sessions::table
        .filter(sessions::runtime_id.eq(runtime))
        .filter(sessions::acp_agent_id.eq(acp_agent))
        .filter(sessions::options.is_not_null())
        .order(sessions::id.desc())
        .select(sessions::options)
        .first::<Option<String>>(conn)
        .optional()?
        .flatten())
}

/// The status of a deleted session whose machine has not yet confirmed the
/// dispose. Such rows are invisible to the API.
pub const SESSION_TOMBSTONE: &str = "disposed";

/// Deletes the session's events and leaves a tombstone until the machine
/// confirms it disposed of the session.
pub fn tombstone_session(conn: &mut DbConn, tenant: &str, id: &str, at: i64) -> QueryResult<bool> {
    let n = diesel::update(sessions::table.filter(sessions::tenant_id.eq(tenant).and(sessions::id.eq(id))))
        .set((
            sessions::status.eq(SESSION_TOMBSTONE),
            sessions::current_turn_id.eq(None::<String>),
            sessions::current_prompt.eq(None::<Vec<u8>>),
            // Its events go now: they no longer count against the quota.
            sessions::stored_bytes.eq(0),
            sessions::updated_at.eq(at),
        ))
        .execute(conn)?;
    if n > 0 {
        diesel::delete(session_events::table.filter(session_events::session_id.eq(id))).execute(conn)?;
        diesel::delete(permission_requests::table.filter(permission_requests::session_id.eq(id))).execute(conn)?;
    }
    Ok(n > 0)
}

/// Removes a tombstone once the machine has disposed of the session.
pub fn purge_session(conn: &mut DbConn, runtime_id: &str, id: &str) -> QueryResult<()> {
    diesel::delete(
        sessions::table.filter(
            sessions::id
                .eq(id)
                .and(sessions::runtime_id.eq(runtime_id))
                .and(sessions::status.eq(SESSION_TOMBSTONE)),
        ),
    )
    .execute(conn)?;
    Ok(())
}

/// What a stream needs of each session when its machine says Hello: all but
/// the spec, which holds megabytes of skills (a resent start reads it then).
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = sessions)]
pub struct SessionHead {
    pub id: String,
    pub status: String,
    pub last_seq: i64,
    pub current_turn_id: Option<String>,
    pub current_prompt: Option<Vec<u8>>,
}

/// Every session of a runtime, tombstones included, without its spec.
pub fn session_heads_of_runtime(conn: &mut DbConn, runtime_id: &str) -> QueryResult<Vec<SessionHead>> {
    Ok(sessions::table
        .filter(sessions::runtime_id.eq(runtime_id))
        .order(sessions::id.asc())
        .select(SessionHead::as_select())
        .load(conn)?)
}

/// A session of `runtime_id`, tombstones included (the stream's view).
pub fn session_of_runtime(conn: &mut DbConn, runtime_id: &str, id: &str) -> QueryResult<Option<SessionRow>> {
    Ok(sessions::table
        .filter(sessions::id.eq(id).and(sessions::runtime_id.eq(runtime_id)))
        .select(SessionRow::as_select())
        .load(conn)?
        .into_iter()
        .next())
}

/// The runtime of a session, by session id alone (internal timers).
pub fn session_of_runtime_any(conn: &mut DbConn, id: &str) -> QueryResult<Option<String>> {
    Ok(sessions::table
        .find(id)
        .select(sessions::runtime_id)
        .first(conn)
        .optional()?)
}

pub fn set_session_status(conn: &mut DbConn, id: &str, status: &str, at: i64) -> QueryResult<()> {
    diesel::update(sessions::table.find(id).filter(sessions::status.ne(SESSION_TOMBSTONE)))
        .set((sessions::status.eq(status), sessions::updated_at.eq(at)))
        .execute(conn)?;
    Ok(())
}

pub fn set_acp_session_id(conn: &mut DbConn, id: &str, acp_session_id: &str) -> QueryResult<()> {
    diesel::update(sessions::table.find(id))
        .set(sessions::acp_session_id.eq(Some(acp_session_id)))
        .execute(conn)?;
    Ok(())
}

/// Records a started turn, unless one is already running.
pub fn begin_turn(
    conn: &mut DbConn,
    id: &str,
    turn_id: &str,
    prompt: &[u8],
    status: &str,
    at: i64,
) -> QueryResult<bool> {
    let n = diesel::update(sessions::table.find(id).filter(sessions::current_turn_id.is_null()))
        .set((
            sessions::current_turn_id.eq(Some(turn_id)),
            sessions::current_prompt.eq(Some(prompt)),
            sessions::status.eq(status),
            sessions::updated_at.eq(at),
        ))
        .execute(conn)?;
    Ok(n == 1)
}

/// Clears the running turn if it is `turn_id` (or any, when `None`).
pub fn finish_turn(conn: &mut DbConn, id: &str, turn_id: Option<&str>, status: &str, at: i64) -> QueryResult<()> {
    let mut q = diesel::update(sessions::table)
        .filter(sessions::id.eq(id).and(sessions::status.ne(SESSION_TOMBSTONE)))
        .into_boxed();
    if let Some(turn_id) = turn_id {
        q = q.filter(sessions::current_turn_id.eq(turn_id.to_owned()));
    }
    q.set((
        sessions::current_turn_id.eq(None::<String>),
        sessions::current_prompt.eq(None::<Vec<u8>>),
        sessions::status.eq(status),
        sessions::updated_at.eq(at),
    ))
    .execute(conn)?;
    Ok(())
}

// ---- permission requests -----------------------------------------------------

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = permission_requests)]
pub struct PermissionRow {
    pub session_id: String,
    pub request_id: String,
    pub tenant_id: String,
    /// Comma-free JSON array of the offered option ids.
    pub option_ids: String,
    pub reject_option_id: Option<String>,
    pub created_at: i64,
    pub decided_at: Option<i64>,
    pub decided_by: Option<String>,
    pub option_id: Option<String>,
}

/// Inserts a request unless it is already recorded (a resent event).
pub fn insert_permission(conn: &mut DbConn, row: &PermissionRow) -> QueryResult<()> {
    if get_permission(conn, &row.session_id, &row.request_id)?.is_none() {
        diesel::insert_into(permission_requests::table)
            .values(row)
            .execute(conn)?;
    }
    Ok(())
}

pub fn get_permission(conn: &mut DbConn, session_id: &str, request_id: &str) -> QueryResult<Option<PermissionRow>> {
    Ok(permission_requests::table
        .find((session_id, request_id))
        .select(PermissionRow::as_select())
        .first(conn)
        .optional()?)
}

/// Every request still waiting for a decision, in every session: after a
/// restart each gets its timeout armed again.
pub fn pending_permissions(conn: &mut DbConn) -> QueryResult<Vec<PermissionRow>> {
    Ok(permission_requests::table
        .filter(permission_requests::decided_at.is_null())
        .select(PermissionRow::as_select())
        .load(conn)?)
}

/// Decides a request if it is still undecided; false when it was decided
/// already (each request is decided exactly once).
pub fn decide_permission(
    conn: &mut DbConn,
    session_id: &str,
    request_id: &str,
    option_id: Option<&str>,
    decided_by: &str,
    at: i64,
) -> QueryResult<bool> {
    let n = diesel::update(
        permission_requests::table
            .find((session_id, request_id))
            .filter(permission_requests::decided_at.is_null()),
    )
    .set((
        permission_requests::decided_at.eq(Some(at)),
        permission_requests::decided_by.eq(Some(decided_by)),
        permission_requests::option_id.eq(option_id),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

// ---- runtime connections -----------------------------------------------------

/// What a Hello changes on the runtime row.
#[derive(Debug, Clone, AsChangeset)]
#[diesel(table_name = runtimes)]
pub struct RuntimeHello {
    pub status: String,
    pub status_at: i64,
    pub last_seen_at: Option<i64>,
    pub agent_version: String,
    pub os: String,
    pub arch: String,
    pub manifest: Vec<u8>,
    pub connection_epoch: i64,
    /// The replica holding the stream, and until when (see `renew_leases`).
    pub replica_id: Option<String>,
    pub lease_expires_at: Option<i64>,
}

pub fn runtime_hello(conn: &mut DbConn, id: &str, hello: &RuntimeHello) -> QueryResult<()> {
    diesel::update(runtimes::table.find(id)).set(hello).execute(conn)?;
    Ok(())
}

/// Marks the runtime offline if `epoch` is still its current connection.
pub fn runtime_gone(conn: &mut DbConn, id: &str, epoch: i64, at: i64) -> QueryResult<()> {
    diesel::update(runtimes::table.find(id).filter(runtimes::connection_epoch.eq(epoch)))
        .set((
            runtimes::status.eq("offline"),
            runtimes::status_at.eq(at),
            runtimes::last_seen_at.eq(Some(at)),
        ))
        .execute(conn)?;
    Ok(())
}

pub fn touch_runtime(conn: &mut DbConn, id: &str, epoch: i64, at: i64) -> QueryResult<()> {
    diesel::update(runtimes::table.find(id).filter(runtimes::connection_epoch.eq(epoch)))
        .set(runtimes::last_seen_at.eq(Some(at)))
        .execute(conn)?;
    Ok(())
}

pub fn set_runtime_manifest(conn: &mut DbConn, id: &str, manifest: &[u8]) -> QueryResult<()> {
    diesel::update(runtimes::table.find(id))
        .set(runtimes::manifest.eq(manifest))
        .execute(conn)?;
    Ok(())
}

/// At a replica's start: marks offline the runtimes it held in its earlier
/// life (no stream can be live here yet) and those whose lease ran out or
/// that have none; runtimes of other live replicas stay online.
pub fn mark_offline_at_start(conn: &mut DbConn, replica_id: &str, at: i64) -> QueryResult<usize> {
    Ok(diesel::update(
        runtimes::table.filter(
            runtimes::status.eq("online").and(
                runtimes::replica_id
                    .eq(replica_id)
                    .or(runtimes::replica_id.is_null())
                    .or(runtimes::lease_expires_at.is_null())
                    .or(runtimes::lease_expires_at.lt(at)),
            ),
        ),
    )
    .set((runtimes::status.eq("offline"), runtimes::status_at.eq(at)))
    .execute(conn)?)
}

/// Renews the leases of the runtimes whose streams `replica_id` holds.
pub fn renew_leases(conn: &mut DbConn, replica_id: &str, until: i64) -> QueryResult<usize> {
    Ok(
        diesel::update(runtimes::table.filter(runtimes::status.eq("online").and(runtimes::replica_id.eq(replica_id))))
            .set(runtimes::lease_expires_at.eq(Some(until)))
            .execute(conn)?,
    )
}

/// Marks offline the runtimes whose lease ran out: their replica died
/// without saying so (a replica holding a stream renews its lease).
pub fn expire_leases(conn: &mut DbConn, at: i64) -> QueryResult<usize> {
    Ok(diesel::update(
        runtimes::table.filter(
            runtimes::status.eq("online").and(
                runtimes::lease_expires_at
                    .is_null()
                    .or(runtimes::lease_expires_at.lt(at)),
            ),
        ),
    )
    .set((runtimes::status.eq("offline"), runtimes::status_at.eq(at)))
    .execute(conn)?)
}

// ---- audit -----------------------------------------------------------------

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = audit_log)]
pub struct AuditRow {
    pub id: String,
    pub tenant_id: String,
    pub actor: String,
    pub action: String,
    pub target_id: String,
    pub detail: String,
    pub created_at: i64,
}

pub fn insert_audit(conn: &mut DbConn, row: &AuditRow) -> QueryResult<()> {
    diesel::insert_into(audit_log::table).values(row).execute(conn)?;
    Ok(())
}

/// Newest first.
pub fn list_audit(
    conn: &mut DbConn,
    tenant: &str,
    filter: &crate::service::audit::AuditFilter,
    page: &Page,
) -> QueryResult<Vec<AuditRow>> {
    let mut q = audit_log::table
        .filter(audit_log::tenant_id.eq(tenant))
        .order(audit_log::id.desc())
        .limit(page.limit())
        .select(AuditRow::as_select())
        .into_boxed();
    if let Some(target) = &filter.target_id {
        q = q.filter(audit_log::target_id.eq(target.clone()));
    }
    if let Some(since) = filter.since_ms {
        q = q.filter(audit_log::created_at.ge(since));
    }
    if let Some(until) = filter.until_ms {
        q = q.filter(audit_log::created_at.lt(until));
    }
    match filter.action.as_deref() {
        // A noun's prefix: checked to hold no LIKE wildcards (`_` is one,
        // so it is escaped).
        Some(prefix) if prefix.ends_with('.') => {
            q = q.filter(
                audit_log::action
                    .like(format!("{}%", prefix.replace('_', "\\_")))
                    .escape('\\'),
            );
        }
        Some(action) => q = q.filter(audit_log::action.eq(action.to_owned())),
        None => {}
    }
    if let Some(actor) = &filter.actor {
        q = q.filter(audit_log::actor.eq(actor.clone()));
    }
    if let Some(after) = &page.after_id {
        q = q.filter(audit_log::id.lt(after.clone()));
    }
    Ok(q.load(conn)?)
}
