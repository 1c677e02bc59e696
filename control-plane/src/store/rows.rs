//! Row types and the queries on them. Every query that reads a tenant's data
//! takes the tenant id and filters on it: a row of another tenant is simply
//! not found.

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
    Ok(tenants::table.find(id).select(TenantRow::as_select()).first(conn).optional()?)
}

pub fn find_tenant_by_name(conn: &mut DbConn, name: &str) -> QueryResult<Option<TenantRow>> {
    Ok(tenants::table
        .filter(tenants::name.eq(name))
        .select(TenantRow::as_select())
        .first(conn)
        .optional()?)
}

pub fn list_tenants(conn: &mut DbConn) -> QueryResult<Vec<TenantRow>> {
    Ok(tenants::table.order(tenants::id.asc()).select(TenantRow::as_select()).load(conn)?)
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
        .first(conn)
        .optional()?)
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
        .set((connect_codes::used_at.eq(Some(at)), connect_codes::runtime_id.eq(Some(runtime_id))))
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
    Ok(runtimes::table.find(id).select(RuntimeRow::as_select()).first(conn).optional()?)
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
    let n =
        diesel::delete(agents::table.filter(agents::tenant_id.eq(tenant).and(agents::id.eq(id)))).execute(conn)?;
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
    pub last_seq: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

pub fn insert_session(conn: &mut DbConn, row: &SessionRow) -> QueryResult<()> {
    diesel::insert_into(sessions::table).values(row).execute(conn)?;
    Ok(())
}

pub fn get_session(conn: &mut DbConn, tenant: &str, id: &str) -> QueryResult<Option<SessionRow>> {
    Ok(sessions::table
        .filter(sessions::tenant_id.eq(tenant).and(sessions::id.eq(id)))
        .select(SessionRow::as_select())
        .first(conn)
        .optional()?)
}

/// Newest first.
pub fn list_sessions(conn: &mut DbConn, tenant: &str, agent: Option<&str>, page: &Page) -> QueryResult<Vec<SessionRow>> {
    let mut q = sessions::table
        .filter(sessions::tenant_id.eq(tenant))
        .order(sessions::id.desc())
        .limit(page.limit())
        .select(SessionRow::as_select())
        .into_boxed();
    if let Some(agent) = agent {
        q = q.filter(sessions::agent_id.eq(agent.to_owned()));
    }
    if let Some(after) = &page.after_id {
        q = q.filter(sessions::id.lt(after.clone()));
    }
    Ok(q.load(conn)?)
}

pub fn delete_session(conn: &mut DbConn, tenant: &str, id: &str) -> QueryResult<bool> {
    let n = diesel::delete(sessions::table.filter(sessions::tenant_id.eq(tenant).and(sessions::id.eq(id))))
        .execute(conn)?;
    if n > 0 {
        diesel::delete(session_events::table.filter(session_events::session_id.eq(id))).execute(conn)?;
    }
    Ok(n > 0)
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
pub fn list_audit(conn: &mut DbConn, tenant: &str, target: Option<&str>, page: &Page) -> QueryResult<Vec<AuditRow>> {
    let mut q = audit_log::table
        .filter(audit_log::tenant_id.eq(tenant))
        .order(audit_log::id.desc())
        .limit(page.limit())
        .select(AuditRow::as_select())
        .into_boxed();
    if let Some(target) = target {
        q = q.filter(audit_log::target_id.eq(target.to_owned()));
    }
    if let Some(after) = &page.after_id {
        q = q.filter(audit_log::id.lt(after.clone()));
    }
    Ok(q.load(conn)?)
}
