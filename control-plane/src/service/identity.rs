//! Tenants, users and API tokens.

use std::time::Duration;

use oma_proto::ids::{TenantId, TokenId, UserId};
use oma_proto::model::Role;
use oma_proto::validate::{self, ValidationError};
use serde_json::json;

use super::audit::record;
use super::secrets;
use super::{Caller, PageRequest, Paged, Service, ServiceError, ServiceResult};
use crate::store::rows::{self, ApiTokenRow, TenantRow, UserRow};
use crate::store::{DbConn, Store, now_ms};

/// Longest token lifetime.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A new tenant with its first admin and that admin's token.
#[derive(Debug)]
pub struct NewTenant {
    pub tenant: TenantRow,
    pub admin: UserRow,
    pub token: ApiTokenRow,
    /// Shown once.
    pub bearer: String,
}

/// A minted API token.
#[derive(Debug)]
pub struct NewToken {
    pub token: ApiTokenRow,
    /// Shown once.
    pub bearer: String,
}

/// Everything `WhoAmI` returns.
#[derive(Debug)]
pub struct WhoAmI {
    pub tenant: TenantRow,
    pub user: UserRow,
    pub token: ApiTokenRow,
}

fn insert_token_row(
    conn: &mut DbConn,
    tenant_id: &str,
    user_id: &str,
    name: &str,
    ttl: Option<Duration>,
) -> Result<NewToken, ServiceError> {
    let id = TokenId::generate();
    let minted = secrets::mint_api_token(id.as_str());
    let now = now_ms();
    let token = ApiTokenRow {
        id: id.to_string(),
        tenant_id: tenant_id.to_owned(),
        user_id: user_id.to_owned(),
        name: name.to_owned(),
        secret_hash: minted.secret_hash,
        created_at: now,
        expires_at: ttl.map(|t| now + t.as_millis() as i64),
        revoked_at: None,
        last_used_at: None,
    };
    rows::insert_token(conn, &token)?;
    Ok(NewToken {
        token,
        bearer: minted.bearer,
    })
}

/// Creates a tenant, its admin user and a token, in one transaction. Used by
/// first-start bootstrap and the offline `admin create-tenant` command.
fn create_tenant_tx(conn: &mut DbConn, name: &str, admin_name: &str, actor: &str) -> Result<NewTenant, ServiceError> {
    let tenant = TenantRow {
        id: TenantId::generate().to_string(),
        name: name.to_owned(),
        created_at: now_ms(),
    };
    rows::insert_tenant(conn, &tenant).map_err(|e| {
        if e.is_unique_violation() {
            ServiceError::AlreadyExists(format!("a tenant named {name:?} already exists"))
        } else {
            e.into()
        }
    })?;
    let admin = UserRow {
        id: UserId::generate().to_string(),
        tenant_id: tenant.id.clone(),
        name: admin_name.to_owned(),
        role: Role::Admin.as_str().to_owned(),
        created_at: tenant.created_at,
    };
    rows::insert_user(conn, &admin)?;
    let NewToken { token, bearer } = insert_token_row(conn, &tenant.id, &admin.id, "bootstrap", None)?;
    record(
        conn,
        &tenant.id,
        actor,
        "tenant.create",
        &tenant.id,
        json!({"name": name, "admin": admin_name}),
    )?;
    Ok(NewTenant {
        tenant,
        admin,
        token,
        bearer,
    })
}

/// Offline administration straight on the database (no server needed).
pub mod offline {
    use super::*;

    /// Creates the first tenant if the database has none. Returns it only
    /// when it was created now, so the token is printed exactly once.
    pub fn bootstrap(store: &Store) -> ServiceResult<Option<NewTenant>> {
        store.write_blocking("bootstrap", |conn| {
            if rows::count_tenants(conn)? > 0 {
                return Ok(None);
            }
            create_tenant_tx(conn, "default", "admin", "system").map(Some)
        })
    }

    pub fn create_tenant(store: &Store, name: &str, admin_name: &str) -> ServiceResult<NewTenant> {
        let name = validate::slug("tenant name", name)?;
        let admin_name = validate::slug("admin name", admin_name)?;
        store.write_blocking("create_tenant", |conn| {
            create_tenant_tx(conn, &name, &admin_name, "system")
        })
    }

    pub fn list_tenants(store: &Store) -> ServiceResult<Vec<TenantRow>> {
        store.write_blocking("list_tenants", |conn| Ok(rows::list_tenants(conn)?))
    }

    /// Mints a token for `user` of `tenant` (both by name), creating the user
    /// with `role` if it does not exist.
    pub fn create_token(
        store: &Store,
        tenant: &str,
        user: &str,
        role: Role,
        name: &str,
        ttl: Option<Duration>,
    ) -> ServiceResult<(UserRow, NewToken)> {
        let user = validate::slug("user name", user)?;
        let name = validate::label("token name", name, 100, true)?;
        if ttl.is_some_and(|t| t > MAX_TOKEN_TTL) {
            return Err(ValidationError::new("ttl", "must be at most 10 years").into());
        }
        store.write_blocking("create_token", |conn| {
            let tenant = rows::find_tenant_by_name(conn, tenant)?.ok_or_else(|| {
                ServiceError::NotFound(format!("no tenant named {tenant:?}; see `admin list-tenants`"))
            })?;
            let user_row = match rows::find_user_by_name(conn, &tenant.id, &user)? {
                Some(u) => u,
                None => {
                    let row = UserRow {
                        id: UserId::generate().to_string(),
                        tenant_id: tenant.id.clone(),
                        name: user.clone(),
                        role: role.as_str().to_owned(),
                        created_at: now_ms(),
                    };
                    rows::insert_user(conn, &row)?;
                    record(
                        conn,
                        &tenant.id,
                        "system",
                        "user.create",
                        &row.id,
                        json!({"name": user, "role": role.as_str()}),
                    )?;
                    row
                }
            };
            let new = insert_token_row(conn, &tenant.id, &user_row.id, &name, ttl)?;
            record(
                conn,
                &tenant.id,
                "system",
                "token.create",
                &new.token.id,
                json!({"user_id": user_row.id, "name": name}),
            )?;
            Ok((user_row, new))
        })
    }
}

impl Service {
    pub async fn who_am_i(&self, caller: &Caller) -> ServiceResult<WhoAmI> {
        let caller = caller.clone();
        self.store
            .read("who_am_i", move |conn| {
                let tenant = rows::get_tenant(conn, caller.tenant_id.as_str())?
                    .ok_or_else(|| ServiceError::Internal("caller's tenant is missing".into()))?;
                let user = rows::get_user(conn, caller.tenant_id.as_str(), caller.user_id.as_str())?
                    .ok_or_else(|| ServiceError::Internal("caller's user is missing".into()))?;
                let token = rows::get_token(conn, caller.tenant_id.as_str(), caller.token_id.as_str())?
                    .ok_or_else(|| ServiceError::Internal("caller's token is missing".into()))?;
                Ok(WhoAmI { tenant, user, token })
            })
            .await
    }

    pub async fn create_user(&self, caller: &Caller, name: &str, role: Role) -> ServiceResult<UserRow> {
        caller.require_admin("creating users")?;
        let name = validate::slug("name", name)?;
        let caller = caller.clone();
        self.store
            .write("create_user", move |conn| {
                let row = UserRow {
                    id: UserId::generate().to_string(),
                    tenant_id: caller.tenant_id.to_string(),
                    name: name.clone(),
                    role: role.as_str().to_owned(),
                    created_at: now_ms(),
                };
                rows::insert_user(conn, &row).map_err(|e| {
                    if e.is_unique_violation() {
                        ServiceError::AlreadyExists(format!("a user named {name:?} already exists in this tenant"))
                    } else {
                        e.into()
                    }
                })?;
                record(
                    conn,
                    &row.tenant_id,
                    &caller.actor(),
                    "user.create",
                    &row.id,
                    json!({"name": name, "role": role.as_str()}),
                )?;
                Ok(row)
            })
            .await
    }

    pub async fn list_users(&self, caller: &Caller, page: PageRequest) -> ServiceResult<Paged<UserRow>> {
        let page = page.to_page()?;
        let tenant = caller.tenant_id.to_string();
        self.store
            .read("list_users", move |conn| {
                let rows = rows::list_users(conn, &tenant, &page)?;
                Ok(Paged::from_rows(rows, &page, |r| &r.id))
            })
            .await
    }

    pub async fn get_user(&self, caller: &Caller, user_id: UserId) -> ServiceResult<UserRow> {
        let tenant = caller.tenant_id.to_string();
        self.store
            .read("get_user", move |conn| {
                rows::get_user(conn, &tenant, user_id.as_str())?
                    .ok_or_else(|| ServiceError::not_found("user", &user_id))
            })
            .await
    }

    pub async fn delete_user(&self, caller: &Caller, user_id: UserId) -> ServiceResult<()> {
        caller.require_admin("deleting users")?;
        let tenant = caller.tenant_id.to_string();
        let deleted = user_id.to_string();
        let caller = caller.clone();
        self.store
            .write("delete_user", move |conn| {
                let tenant = caller.tenant_id.as_str();
                let user = rows::get_user(conn, tenant, user_id.as_str())?
                    .ok_or_else(|| ServiceError::not_found("user", &user_id))?;
                if user.role == Role::Admin.as_str() && rows::count_admins(conn, tenant)? <= 1 {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "user {} is the tenant's last admin; make another admin first",
                        user.name
                    )));
                }
                let owned = rows::count_runtimes_owned_by(conn, tenant, user_id.as_str())?;
                if owned > 0 {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "user {} still owns {owned} runtime(s); delete them first",
                        user.name
                    )));
                }
                rows::delete_user(conn, tenant, user_id.as_str())?;
                record(
                    conn,
                    tenant,
                    &caller.actor(),
                    "user.delete",
                    user_id.as_str(),
                    json!({"name": user.name}),
                )?;
                Ok::<_, ServiceError>(())
            })
            .await?;
        // After the commit: a watch that read the user before it sees the
        // deletion here, one that reads after finds no token.
        self.live.watchers.end_user(&tenant, &deleted);
        Ok(())
    }

    /// `user_id` `None` means the caller.
    pub async fn create_token(
        &self,
        caller: &Caller,
        user_id: Option<UserId>,
        name: &str,
        ttl: Option<Duration>,
    ) -> ServiceResult<NewToken> {
        let name = validate::label("name", name, 100, true)?;
        if ttl.is_some_and(|t| t > MAX_TOKEN_TTL) {
            return Err(ValidationError::new("ttl_seconds", "must be at most 10 years (315360000 seconds)").into());
        }
        let user_id = user_id.unwrap_or_else(|| caller.user_id.clone());
        if user_id != caller.user_id {
            caller.require_admin("creating tokens for other users")?;
        }
        let caller = caller.clone();
        self.store
            .write("create_token", move |conn| {
                let tenant = caller.tenant_id.as_str();
                rows::get_user(conn, tenant, user_id.as_str())?
                    .ok_or_else(|| ServiceError::not_found("user", &user_id))?;
                let new = insert_token_row(conn, tenant, user_id.as_str(), &name, ttl)?;
                record(
                    conn,
                    tenant,
                    &caller.actor(),
                    "token.create",
                    &new.token.id,
                    json!({"user_id": user_id.as_str(), "name": name, "expires_at": new.token.expires_at}),
                )?;
                Ok(new)
            })
            .await
    }

    pub async fn list_tokens(
        &self,
        caller: &Caller,
        user_id: Option<UserId>,
        page: PageRequest,
    ) -> ServiceResult<Paged<ApiTokenRow>> {
        let page = page.to_page()?;
        // Members see only their own tokens, whatever they ask for.
        let user_filter = match (caller.is_admin(), user_id) {
            (true, filter) => filter,
            (false, Some(other)) if other != caller.user_id => {
                return Err(ServiceError::PermissionDenied(
                    "listing other users' tokens needs the admin role".into(),
                ));
            }
            (false, _) => Some(caller.user_id.clone()),
        };
        let tenant = caller.tenant_id.to_string();
        self.store
            .read("list_tokens", move |conn| {
                if let Some(user) = &user_filter {
                    rows::get_user(conn, &tenant, user.as_str())?
                        .ok_or_else(|| ServiceError::not_found("user", user))?;
                }
                let rows = rows::list_tokens(conn, &tenant, user_filter.as_ref().map(|u| u.as_str()), &page)?;
                Ok(Paged::from_rows(rows, &page, |r| &r.id))
            })
            .await
    }

    pub async fn revoke_token(&self, caller: &Caller, token_id: TokenId) -> ServiceResult<ApiTokenRow> {
        let revoked = token_id.to_string();
        let caller = caller.clone();
        let token = self
            .store
            .write("revoke_token", move |conn| {
                let tenant = caller.tenant_id.as_str();
                let token = rows::get_token(conn, tenant, token_id.as_str())?
                    .ok_or_else(|| ServiceError::not_found("token", &token_id))?;
                if token.user_id != caller.user_id.as_str() {
                    caller.require_admin("revoking other users' tokens")?;
                }
                rows::revoke_token(conn, tenant, token_id.as_str(), now_ms())?;
                if token.revoked_at.is_none() {
                    record(
                        conn,
                        tenant,
                        &caller.actor(),
                        "token.revoke",
                        token_id.as_str(),
                        json!({"user_id": token.user_id}),
                    )?;
                }
                rows::get_token(conn, tenant, token_id.as_str())?
                    .ok_or_else(|| ServiceError::not_found("token", &token_id))
            })
            .await?;
        // After the commit (see `watch_session` for why that order is safe).
        self.live.watchers.end_token(&revoked);
        Ok(token)
    }
}
