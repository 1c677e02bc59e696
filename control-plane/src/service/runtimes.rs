//! Pairing (connect codes) and runtimes.

use std::time::Duration;

use oma_proto::ids::{ConnectCodeId, RuntimeId, UserId};
use oma_proto::pb;
use oma_proto::validate::{self, ValidationError};
use prost::Message as _;
use serde_json::json;

use super::audit::record;
use super::quotas::{self, Quota};
use super::secrets;
use super::{Caller, PageRequest, Paged, Service, ServiceError, ServiceResult};
use crate::store::rows::{self, ConnectCodeRow, RuntimeRow};
use crate::store::{DbConn, now_ms};

/// Longest connect-code lifetime.
pub const MAX_CONNECT_CODE_TTL: Duration = Duration::from_secs(3600);

pub const STATUS_ONLINE: &str = "online";
pub const STATUS_OFFLINE: &str = "offline";

/// A paired machine as callers see it: what it reported in its last Hello
/// and whether its stream is up. Its token hash and connection epoch stay
/// in the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Runtime {
    pub id: String,
    pub tenant_id: String,
    pub owner_user_id: String,
    pub name: String,
    pub machine_id: String,
    pub online: bool,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// When `online` last changed.
    pub status_at: i64,
    pub last_seen_at: Option<i64>,
    pub agent_version: String,
    pub os: String,
    pub arch: String,
    /// Its ACP agents and local skills. One that fails to decode is shown
    /// empty rather than failing a whole listing; the machine's next Hello
    /// replaces it.
    pub manifest: pb::Manifest,
}

impl From<RuntimeRow> for Runtime {
    fn from(row: RuntimeRow) -> Runtime {
        let manifest = pb::Manifest::decode(row.manifest.as_slice()).unwrap_or_else(|e| {
            tracing::warn!(runtime_id = %row.id, error = %e, "stored manifest does not decode");
            pb::Manifest::default()
        });
        Runtime {
            online: row.status == STATUS_ONLINE,
            id: row.id,
            tenant_id: row.tenant_id,
            owner_user_id: row.owner_user_id,
            name: row.name,
            machine_id: row.machine_id,
            created_at: row.created_at,
            status_at: row.status_at,
            last_seen_at: row.last_seen_at,
            agent_version: row.agent_version,
            os: row.os,
            arch: row.arch,
            manifest,
        }
    }
}

#[derive(Debug)]
pub struct NewConnectCode {
    /// Shown once.
    pub code: String,
    pub expires_at: i64,
    pub owner_user_id: String,
}

/// What the agent sends with a connect code.
#[derive(Debug, Clone)]
pub struct ExchangeRequest {
    pub code: String,
    pub machine_id: String,
    pub name: String,
    pub agent_version: String,
    pub os: String,
    pub arch: String,
}

#[derive(Debug)]
pub struct Paired {
    pub runtime: Runtime,
    /// Shown once.
    pub machine_token: String,
}

/// Loads a runtime of the caller's tenant and checks the caller may run
/// things on it: its owner or a tenant admin. A teammate must never be able
/// to run code on someone else's machine.
pub(crate) fn runtime_for_use(conn: &mut DbConn, caller: &Caller, runtime_id: &RuntimeId) -> ServiceResult<RuntimeRow> {
    let runtime = rows::get_runtime(conn, caller.tenant_id.as_str(), runtime_id.as_str())?
        .ok_or_else(|| ServiceError::not_found("runtime", runtime_id))?;
    super::rights::require_runtime_use(caller, &runtime)?;
    Ok(runtime)
}

/// The connect code with this hash, if it can still pair a machine.
fn usable_connect_code(conn: &mut DbConn, code_hash: &[u8], now: i64) -> ServiceResult<ConnectCodeRow> {
    let code = rows::find_connect_code(conn, code_hash)?
        .ok_or_else(|| ServiceError::NotFound("connect code not found: check it or create a new one".into()))?;
    if code.used_at.is_some() {
        return Err(ServiceError::FailedPrecondition(
            "this connect code was already used; create a new one with `omactl runtimes connect`".into(),
        ));
    }
    if code.expires_at <= now {
        return Err(ServiceError::FailedPrecondition(
            "this connect code has expired; create a new one with `omactl runtimes connect`".into(),
        ));
    }
    Ok(code)
}

impl Service {
    pub async fn create_connect_code(
        &self,
        caller: &Caller,
        owner: Option<UserId>,
        ttl: Option<Duration>,
    ) -> ServiceResult<NewConnectCode> {
        let ttl = ttl.unwrap_or(self.config.default_connect_code_ttl);
        if ttl > MAX_CONNECT_CODE_TTL {
            return Err(ValidationError::new("ttl_seconds", "must be at most 3600 (one hour)").into());
        }
        let owner = owner.unwrap_or_else(|| caller.user_id.clone());
        if owner != caller.user_id {
            caller.require_admin("pairing a machine for another user")?;
        }
        let caller = caller.clone();
        let quotas = self.config.quotas.clone();
        self.store
            .write("create_connect_code", move |conn| {
                let tenant = caller.tenant_id.as_str();
                rows::get_user(conn, tenant, owner.as_str())?.ok_or_else(|| ServiceError::not_found("user", &owner))?;
                quotas::check(conn, &quotas, tenant, Quota::ConnectCodes, now_ms())?;
                let code = secrets::new_connect_code();
                let canonical = secrets::normalize_connect_code(&code)
                    .ok_or_else(|| ServiceError::Internal("generated connect code does not normalize".into()))?;
                let now = now_ms();
                let row = ConnectCodeRow {
                    id: ConnectCodeId::generate().to_string(),
                    tenant_id: tenant.to_owned(),
                    owner_user_id: owner.to_string(),
                    created_by_user_id: caller.user_id.to_string(),
                    code_hash: secrets::hash(&canonical),
                    created_at: now,
                    expires_at: now + ttl.as_millis() as i64,
                    used_at: None,
                    runtime_id: None,
                };
                rows::insert_connect_code(conn, &row)?;
                record(
                    conn,
                    tenant,
                    &caller.actor(),
                    "connect_code.create",
                    &row.id,
                    json!({"owner_user_id": row.owner_user_id, "expires_at": row.expires_at}),
                )?;
                Ok(NewConnectCode {
                    code,
                    expires_at: row.expires_at,
                    owner_user_id: row.owner_user_id,
                })
            })
            .await
    }

    /// Unauthenticated: the code is the credential.
    pub async fn exchange_connect_code(&self, request: ExchangeRequest) -> ServiceResult<Paired> {
        if request.code.trim().is_empty() {
            return Err(
                ValidationError::new("code", "is required: the connect code from `omactl runtimes connect`").into(),
            );
        }
        let canonical = secrets::normalize_connect_code(&request.code).ok_or_else(|| {
            ValidationError::new(
                "code",
                "is not a connect code: expected 16 letters and digits like ABCD-EFGH-JKMN-PQRS",
            )
        })?;
        let machine_id = validate::label("machine_id", &request.machine_id, 128, true)?;
        let name = if request.name.is_empty() {
            machine_id.clone()
        } else {
            validate::label("name", &request.name, 100, true)?
        };
        let agent_version = validate::label("agent_version", &request.agent_version, 64, false)?;
        let os = validate::label("os", &request.os, 64, false)?;
        let arch = validate::label("arch", &request.arch, 64, false)?;
        let code_hash = secrets::hash(&canonical);

        // Anyone may call this: refuse unknown, used and expired codes with a
        // read, so guesses never take the write lock that every tenant's
        // event commits need. The write checks again (the code may be used
        // in between).
        let hash = code_hash.clone();
        self.store
            .read("exchange_connect_code", move |conn| {
                usable_connect_code(conn, &hash, now_ms()).map(|_| ())
            })
            .await?;
        let quotas = self.config.quotas.clone();
        self.store
            .write("exchange_connect_code", move |conn| {
                let now = now_ms();
                let code = usable_connect_code(conn, &code_hash, now)?;
                // Checked before the code is spent: the owner can retry it
                // once a runtime is deleted.
                quotas::check(conn, &quotas, &code.tenant_id, Quota::Runtimes, now)?;
                let runtime_id = RuntimeId::generate();
                if !rows::use_connect_code(conn, &code.id, runtime_id.as_str(), now)? {
                    return Err(ServiceError::FailedPrecondition("this connect code was already used; create a new one".into()));
                }
                let minted = secrets::mint_machine_token(runtime_id.as_str());
                let runtime = RuntimeRow {
                    id: runtime_id.to_string(),
                    tenant_id: code.tenant_id.clone(),
                    owner_user_id: code.owner_user_id.clone(),
                    name: name.clone(),
                    machine_id: machine_id.clone(),
                    token_hash: minted.secret_hash,
                    created_at: now,
                    status: STATUS_OFFLINE.to_owned(),
                    status_at: now,
                    last_seen_at: None,
                    agent_version: agent_version.clone(),
                    os: os.clone(),
                    arch: arch.clone(),
                    manifest: Vec::new(),
                    connection_epoch: 0,
                };
                rows::insert_runtime(conn, &runtime)?;
                record(
                    conn,
                    &code.tenant_id,
                    &format!("runtime:{}", runtime.id),
                    "runtime.pair",
                    &runtime.id,
                    json!({"connect_code_id": code.id, "machine_id": machine_id, "name": name, "owner_user_id": code.owner_user_id}),
                )?;
                Ok(Paired {
                    runtime: runtime.into(),
                    machine_token: minted.bearer,
                })
            })
            .await
    }

    pub async fn list_runtimes(&self, caller: &Caller, page: PageRequest) -> ServiceResult<Paged<Runtime>> {
        let page = page.to_page()?;
        let tenant = caller.tenant_id.to_string();
        self.store
            .read("list_runtimes", move |conn| {
                let rows = rows::list_runtimes(conn, &tenant, &page)?;
                Ok(Paged::from_rows(rows, &page, |r| &r.id))
            })
            .await
            .map(|page: Paged<RuntimeRow>| page.map(Runtime::from))
    }

    pub async fn get_runtime(&self, caller: &Caller, runtime_id: RuntimeId) -> ServiceResult<Runtime> {
        let tenant = caller.tenant_id.to_string();
        let row = self
            .store
            .read("get_runtime", move |conn| {
                rows::get_runtime(conn, &tenant, runtime_id.as_str())?
                    .ok_or_else(|| ServiceError::not_found("runtime", &runtime_id))
            })
            .await?;
        Ok(row.into())
    }

    /// Deleting the row is what revokes the machine token: authentication
    /// looks the runtime up on every request.
    pub async fn delete_runtime(&self, caller: &Caller, runtime_id: RuntimeId) -> ServiceResult<()> {
        let caller = caller.clone();
        let runtime_id: String = self
            .store
            .write("delete_runtime", move |conn| {
                let runtime = runtime_for_use(conn, &caller, &runtime_id)?;
                rows::delete_runtime(conn, caller.tenant_id.as_str(), runtime_id.as_str())?;
                record(
                    conn,
                    caller.tenant_id.as_str(),
                    &caller.actor(),
                    "runtime.delete",
                    runtime_id.as_str(),
                    json!({"name": runtime.name, "machine_id": runtime.machine_id}),
                )?;
                Ok::<_, ServiceError>(runtime.id)
            })
            .await?;
        // Its token is revoked: end its stream now, not at the next frame.
        self.disconnect_runtime(&runtime_id);
        Ok(())
    }

    /// The machine asked to be forgotten (`oma-agent uninstall`, on its
    /// authenticated stream): its runtime is deleted as DeleteRuntime would,
    /// token and all, and audited as the machine's act.
    pub async fn deregister_runtime(&self, runtime_id: &str) -> ServiceResult<()> {
        let rid = runtime_id.to_owned();
        self.store
            .write("deregister_runtime", move |conn| {
                let Some(runtime) = rows::get_runtime_for_auth(conn, &rid)? else {
                    return Ok::<_, ServiceError>(());
                };
                rows::delete_runtime(conn, &runtime.tenant_id, &rid)?;
                record(
                    conn,
                    &runtime.tenant_id,
                    &format!("runtime:{rid}"),
                    "runtime.deregister",
                    &rid,
                    json!({"name": runtime.name, "machine_id": runtime.machine_id}),
                )?;
                Ok(())
            })
            .await?;
        self.disconnect_runtime(runtime_id);
        Ok(())
    }
}
