//! The secret store: credentials an admin gives the control plane (model API
//! keys, OAuth tokens, credential files), kept encrypted at rest (see
//! [`super::sealing`]) and never returned by any RPC. (Not to be confused
//! with [`super::secrets`], the hashing of bearer tokens.)
//!
//! Rights (also in [`super::rights`]): admins create, update and delete
//! secrets; every member of the tenant may read their metadata. Every
//! create, update, delete and use is in the audit log with the secret's
//! name and version, never its value.

use oma_proto::ids::{SecretId, TenantId};
use oma_proto::secret::{self as rules, SecretKind};
use oma_proto::validate::ValidationError;
use serde_json::json;

use super::audit::record;
use super::rights;
use super::sealing::{RowIdentity, SecretValue, SecretsKey};
use super::{Caller, PageRequest, Paged, Service, ServiceError, ServiceResult};
use crate::store::secrets::{self as rows, Sealed, SecretRow};
use crate::store::{DbConn, Store, StoreError, now_ms};

/// A secret's metadata: everything but the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub kind: SecretKind,
    pub version: u64,
    pub created_by_user_id: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_used_at: Option<i64>,
}

impl Secret {
    fn from_row(row: &SecretRow) -> Result<Secret, StoreError> {
        let kind = SecretKind::parse_stored(&row.kind)
            .ok_or_else(|| StoreError::Corrupt(format!("secret {} has kind {:?}", row.id, row.kind)))?;
        Ok(Secret {
            id: row.id.clone(),
            tenant_id: row.tenant_id.clone(),
            name: row.name.clone(),
            kind,
            version: row.version.max(0) as u64,
            created_by_user_id: row.created_by_user_id.clone(),
            created_at: row.created_at,
            updated_at: row.updated_at,
            last_used_at: row.last_used_at,
        })
    }
}

/// A `CreateSecret` as the service takes it.
#[derive(Debug)]
pub struct NewSecret {
    pub name: String,
    /// `None`: generic.
    pub kind: Option<SecretKind>,
    pub value: SecretValue,
}

/// An `UpdateSecret` as the service takes it.
#[derive(Debug)]
pub struct SecretUpdate {
    pub value: SecretValue,
    /// `None`: keep the stored kind.
    pub kind: Option<SecretKind>,
    /// 0 means any version.
    pub expected_version: u64,
}

/// A value handed out by [`Service::resolve_secret_values`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedSecret {
    pub name: String,
    pub kind: SecretKind,
    pub version: u64,
    pub value: SecretValue,
}

fn row_identity(row: &SecretRow) -> RowIdentity<'_> {
    RowIdentity {
        tenant_id: &row.tenant_id,
        secret_id: &row.id,
        version: row.version,
    }
}

fn open(key: &SecretsKey, row: &SecretRow) -> ServiceResult<SecretValue> {
    key.open(&row_identity(row), &row.key_id, &row.nonce, &row.ciphertext)
        .map_err(|e| ServiceError::Internal(e.to_string()))
}

fn not_found(name: &str) -> ServiceError {
    ServiceError::NotFound(format!("secret {name:?} not found"))
}

fn secret_of_tenant(conn: &mut DbConn, tenant: &str, name: &str) -> ServiceResult<SecretRow> {
    rows::get_by_name(conn, tenant, name)?.ok_or_else(|| not_found(name))
}

fn check_name(field: &str, name: &str) -> ServiceResult<String> {
    Ok(rules::name(field, name)?)
}

impl Service {
    /// The key, or why the secret store is off.
    fn secrets_key(&self) -> ServiceResult<SecretsKey> {
        self.config.secrets_key.clone().ok_or_else(|| {
            ServiceError::FailedPrecondition(
                "the secret store is off: this control plane was started without a secrets key \
                 (--secrets-key-file or OMA_SECRETS_KEY)"
                    .into(),
            )
        })
    }

    /// Stores a new secret at version 1. Admin only.
    pub async fn create_secret(&self, caller: &Caller, new: NewSecret) -> ServiceResult<Secret> {
        let key = self.secrets_key()?;
        rights::require_secret_management(caller)?;
        let name = check_name("name", &new.name)?;
        rules::value("value", new.value.expose())?;
        let kind = new.kind.unwrap_or(SecretKind::Generic);
        let tenant = caller.tenant_id.to_string();
        let actor = caller.actor();
        let created_by = caller.user_id.to_string();
        self.store
            .write("create_secret", move |conn| {
                let id = SecretId::generate().to_string();
                let now = now_ms();
                let sealed = key.seal(
                    &RowIdentity {
                        tenant_id: &tenant,
                        secret_id: &id,
                        version: 1,
                    },
                    new.value.expose(),
                );
                let row = SecretRow {
                    id: id.clone(),
                    tenant_id: tenant.clone(),
                    name: name.clone(),
                    kind: kind.as_str().to_owned(),
                    version: 1,
                    key_id: sealed.key_id,
                    nonce: sealed.nonce,
                    ciphertext: sealed.ciphertext,
                    created_by_user_id: created_by.clone(),
                    created_at: now,
                    updated_at: now,
                    last_used_at: None,
                };
                rows::insert(conn, &row).map_err(|e| {
                    if e.is_unique_violation() {
                        ServiceError::AlreadyExists(format!("a secret named {name:?} already exists in this tenant"))
                    } else {
                        e.into()
                    }
                })?;
                record(
                    conn,
                    &tenant,
                    &actor,
                    "secret.create",
                    &id,
                    json!({ "name": name, "kind": kind.as_str(), "version": 1 }),
                )?;
                Ok(Secret::from_row(&row)?)
            })
            .await
    }

    /// One secret's metadata.
    pub async fn get_secret(&self, caller: &Caller, name: &str) -> ServiceResult<Secret> {
        self.secrets_key()?;
        let name = check_name("name", name)?;
        let tenant = caller.tenant_id.to_string();
        self.store
            .read("get_secret", move |conn| {
                Ok(Secret::from_row(&secret_of_tenant(conn, &tenant, &name)?)?)
            })
            .await
    }

    /// The tenant's secrets' metadata, by name.
    pub async fn list_secrets(&self, caller: &Caller, page: PageRequest) -> ServiceResult<Paged<Secret>> {
        self.secrets_key()?;
        let page = page.to_page()?;
        let tenant = caller.tenant_id.to_string();
        self.store
            .read("list_secrets", move |conn| {
                let rows = rows::list(conn, &tenant, &page)?;
                let paged = Paged::from_rows(rows, &page, |r| &r.name);
                let items = paged
                    .items
                    .iter()
                    .map(Secret::from_row)
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Paged {
                    items,
                    next_page_token: paged.next_page_token,
                })
            })
            .await
    }

    /// Replaces a secret's value (and kind) and adds 1 to its version.
    /// Admin only.
    pub async fn update_secret(&self, caller: &Caller, name: &str, update: SecretUpdate) -> ServiceResult<Secret> {
        let key = self.secrets_key()?;
        let name = check_name("name", name)?;
        rules::value("value", update.value.expose())?;
        let caller = caller.clone();
        self.store
            .write("update_secret", move |conn| {
                let tenant = caller.tenant_id.as_str();
                let row = secret_of_tenant(conn, tenant, &name)?;
                rights::require_secret_management(&caller)?;
                if update.expected_version != 0 && update.expected_version != row.version as u64 {
                    return Err(ServiceError::Aborted(format!(
                        "secret {name:?} is at version {}, not the expected {}; read it again and retry",
                        row.version, update.expected_version
                    )));
                }
                let kind = match update.kind {
                    Some(kind) => kind,
                    None => Secret::from_row(&row)?.kind,
                };
                let version = row.version + 1;
                let sealed = key.seal(
                    &RowIdentity {
                        tenant_id: tenant,
                        secret_id: &row.id,
                        version,
                    },
                    update.value.expose(),
                );
                let now = now_ms();
                let sealed_ref = Sealed {
                    key_id: &sealed.key_id,
                    nonce: &sealed.nonce,
                    ciphertext: &sealed.ciphertext,
                };
                if !rows::update_value(
                    conn,
                    tenant,
                    &row.id,
                    row.version,
                    version,
                    kind.as_str(),
                    &sealed_ref,
                    now,
                )? {
                    return Err(ServiceError::Aborted(format!(
                        "secret {name:?} changed during the update; retry"
                    )));
                }
                record(
                    conn,
                    tenant,
                    &caller.actor(),
                    "secret.update",
                    &row.id,
                    json!({ "name": name, "kind": kind.as_str(), "version": version }),
                )?;
                let stored = SecretRow {
                    version,
                    kind: kind.as_str().to_owned(),
                    updated_at: now,
                    ..row
                };
                Ok(Secret::from_row(&stored)?)
            })
            .await
    }

    /// Deletes a secret and its value. Admin only.
    pub async fn delete_secret(&self, caller: &Caller, name: &str) -> ServiceResult<()> {
        self.secrets_key()?;
        let name = check_name("name", name)?;
        let caller = caller.clone();
        self.store
            .write("delete_secret", move |conn| {
                let tenant = caller.tenant_id.as_str();
                let row = secret_of_tenant(conn, tenant, &name)?;
                rights::require_secret_management(&caller)?;
                rows::delete(conn, tenant, &row.id)?;
                record(
                    conn,
                    tenant,
                    &caller.actor(),
                    "secret.delete",
                    &row.id,
                    json!({ "name": name, "version": row.version }),
                )?;
                Ok(())
            })
            .await
    }

    /// The values of the tenant's secrets `names`, in that order (each name
    /// once), for the control plane to hand to a session. Records each
    /// secret's `last_used_at` and a `secret.use` audit entry (actor
    /// `actor`, with `purpose`, e.g. the session it is for) in the same
    /// transaction. A name the tenant has no secret by is NOT_FOUND, and
    /// nothing is recorded.
    ///
    /// Nothing calls it yet: session start will, when agents reference
    /// provider credentials (issue 13's second part).
    pub async fn resolve_secret_values(
        &self,
        tenant_id: &TenantId,
        names: &[String],
        actor: &str,
        purpose: &str,
    ) -> ServiceResult<Vec<ResolvedSecret>> {
        let key = self.secrets_key()?;
        let mut wanted: Vec<String> = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let name = check_name(&format!("names[{i}]"), name)?;
            if !wanted.contains(&name) {
                wanted.push(name);
            }
        }
        let (tenant, actor, purpose) = (tenant_id.to_string(), actor.to_owned(), purpose.to_owned());
        self.store
            .write("resolve_secret_values", move |conn| {
                let now = now_ms();
                let mut resolved = Vec::with_capacity(wanted.len());
                let mut ids = Vec::with_capacity(wanted.len());
                for name in &wanted {
                    let row = secret_of_tenant(conn, &tenant, name)?;
                    let value = open(&key, &row)?;
                    let secret = Secret::from_row(&row)?;
                    record(
                        conn,
                        &tenant,
                        &actor,
                        "secret.use",
                        &row.id,
                        json!({ "name": name, "version": row.version, "purpose": purpose }),
                    )?;
                    ids.push(row.id);
                    resolved.push(ResolvedSecret {
                        name: name.clone(),
                        kind: secret.kind,
                        version: secret.version,
                        value,
                    });
                }
                rows::mark_used(conn, &tenant, &ids, now)?;
                Ok(resolved)
            })
            .await
    }
}

/// What a key rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub secrets: usize,
    pub tenants: usize,
}

/// Re-encrypts every secret of every tenant from `old` to `new` in one
/// transaction: either all of them are under `new` afterwards, or (on any
/// error, e.g. a value `old` cannot decrypt) none changed. Each tenant
/// with secrets gets a `secret.rotate_key` audit entry (actor `system`).
/// For the offline admin command: a control plane still running with `old`
/// could not read the values afterwards.
pub fn rotate_key(store: &Store, old: &SecretsKey, new: &SecretsKey) -> ServiceResult<Rotation> {
    if old.id() == new.id() {
        return Err(ServiceError::InvalidArgument(ValidationError::new(
            "new key",
            "is the current key; a rotation needs a different one",
        )));
    }
    store.write_blocking("rotate_secrets_key", |conn| {
        let all = rows::all(conn)?;
        let mut per_tenant: std::collections::BTreeMap<String, usize> = Default::default();
        for row in &all {
            let value = old
                .open(&row_identity(row), &row.key_id, &row.nonce, &row.ciphertext)
                .map_err(|e| ServiceError::FailedPrecondition(format!("{e}; nothing was changed")))?;
            let sealed = new.seal(&row_identity(row), value.expose());
            let sealed = Sealed {
                key_id: &sealed.key_id,
                nonce: &sealed.nonce,
                ciphertext: &sealed.ciphertext,
            };
            if !rows::reseal(conn, &row.id, row.version, &sealed)? {
                return Err(ServiceError::Aborted(format!(
                    "secret {} changed during the rotation; nothing was changed: stop every control plane on this database and run it again",
                    row.id
                )));
            }
            *per_tenant.entry(row.tenant_id.clone()).or_default() += 1;
        }
        for (tenant, count) in &per_tenant {
            record(
                conn,
                tenant,
                "system",
                "secret.rotate_key",
                tenant,
                json!({ "old_key_id": old.id(), "new_key_id": new.id(), "secrets": count }),
            )?;
        }
        Ok(Rotation {
            secrets: all.len(),
            tenants: per_tenant.len(),
        })
    })
}

/// The ids of the keys the stored secrets are sealed with, each once.
pub fn stored_key_ids(store: &Store) -> Result<Vec<String>, StoreError> {
    store.write_blocking("secret_key_ids", rows::key_ids)
}

#[cfg(test)]
mod tests {
    use oma_proto::ids::{TokenId, UserId};
    use oma_proto::model::Role;

    use super::*;
    use crate::service::{ServiceConfig, live::LiveConfig};
    use crate::store::rows::{self as base_rows, TenantRow};

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
        service: Service,
        admin: Caller,
        member: Caller,
        other_admin: Caller,
    }

    fn caller(tenant: &str, user: &str, role: Role) -> Caller {
        Caller {
            tenant_id: TenantId::from_trusted(tenant.into()),
            user_id: UserId::from_trusted(user.into()),
            role,
            token_id: TokenId::from_trusted("tok_1".into()),
        }
    }

    fn fixture(key: Option<SecretsKey>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("oma.db")).unwrap();
        for tenant in ["ten_a", "ten_b"] {
            store
                .write_blocking("test", |conn| {
                    base_rows::insert_tenant(
                        conn,
                        &TenantRow {
                            id: tenant.into(),
                            name: tenant.into(),
                            created_at: 0,
                        },
                    )
                })
                .unwrap();
        }
        let config = ServiceConfig {
            secrets_key: key,
            ..ServiceConfig::default()
        };
        Fixture {
            service: Service::new(store.clone(), config, LiveConfig::default()),
            store,
            _dir: dir,
            admin: caller("ten_a", "usr_admin", Role::Admin),
            member: caller("ten_a", "usr_member", Role::Member),
            other_admin: caller("ten_b", "usr_other", Role::Admin),
        }
    }

    fn new(name: &str, value: &[u8]) -> NewSecret {
        NewSecret {
            name: name.into(),
            kind: Some(SecretKind::ApiKey),
            value: SecretValue::new(value.to_vec()),
        }
    }

    fn audit_of(store: &Store, tenant: &str) -> Vec<base_rows::AuditRow> {
        let filter = crate::service::audit::AuditFilter::default();
        let page = base_rows::Page {
            limit: 1000,
            after_id: None,
        };
        let tenant = tenant.to_owned();
        store
            .write_blocking("test", move |conn| base_rows::list_audit(conn, &tenant, &filter, &page))
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn create_update_delete_and_rights() {
        let f = fixture(Some(SecretsKey::generate()));
        let s = &f.service;
        let created = s.create_secret(&f.admin, new("anthropic", b"sk-one")).await.unwrap();
        assert_eq!((created.version, created.kind), (1, SecretKind::ApiKey));
        let taken = s.create_secret(&f.admin, new("anthropic", b"x")).await.unwrap_err();
        assert!(matches!(taken, ServiceError::AlreadyExists(_)), "{taken}");
        // Another tenant may take the same name, and never sees the first.
        s.create_secret(&f.other_admin, new("anthropic", b"sk-b"))
            .await
            .unwrap();
        assert_eq!(
            s.list_secrets(&f.other_admin, PageRequest::default())
                .await
                .unwrap()
                .items
                .len(),
            1
        );

        // Members read metadata, and change nothing.
        assert_eq!(s.get_secret(&f.member, "anthropic").await.unwrap(), created);
        let denied = s.create_secret(&f.member, new("mine", b"x")).await.unwrap_err();
        assert!(matches!(denied, ServiceError::PermissionDenied(_)), "{denied}");
        let update = || SecretUpdate {
            value: SecretValue::new(b"sk-two".to_vec()),
            kind: None,
            expected_version: 0,
        };
        let denied = s.update_secret(&f.member, "anthropic", update()).await.unwrap_err();
        assert!(matches!(denied, ServiceError::PermissionDenied(_)), "{denied}");
        let denied = s.delete_secret(&f.member, "anthropic").await.unwrap_err();
        assert!(matches!(denied, ServiceError::PermissionDenied(_)), "{denied}");
        assert_eq!(s.get_secret(&f.admin, "anthropic").await.unwrap(), created);

        // Another tenant's admin: not found, whatever the call.
        for err in [
            s.get_secret(&f.other_admin, "nope").await.unwrap_err(),
            s.update_secret(&f.other_admin, "nope", update()).await.unwrap_err(),
            s.delete_secret(&f.other_admin, "nope").await.unwrap_err(),
        ] {
            assert!(matches!(err, ServiceError::NotFound(_)), "{err}");
        }

        let updated = s.update_secret(&f.admin, "anthropic", update()).await.unwrap();
        assert_eq!((updated.version, updated.kind), (2, SecretKind::ApiKey));
        let stale = s
            .update_secret(
                &f.admin,
                "anthropic",
                SecretUpdate {
                    expected_version: 1,
                    ..update()
                },
            )
            .await
            .unwrap_err();
        assert!(matches!(stale, ServiceError::Aborted(_)), "{stale}");
        let values = s
            .resolve_secret_values(&f.admin.tenant_id, &["anthropic".into()], "user:usr_admin", "test")
            .await
            .unwrap();
        assert_eq!(values[0].value.expose(), b"sk-two");

        s.delete_secret(&f.admin, "anthropic").await.unwrap();
        assert!(matches!(
            s.get_secret(&f.admin, "anthropic").await.unwrap_err(),
            ServiceError::NotFound(_)
        ));
        // The other tenant's secret of the same name is untouched.
        assert_eq!(s.get_secret(&f.other_admin, "anthropic").await.unwrap().version, 1);

        let actions: Vec<String> = audit_of(&f.store, "ten_a").into_iter().map(|a| a.action).collect();
        assert_eq!(
            actions,
            ["secret.delete", "secret.use", "secret.update", "secret.create"],
            "newest first, and the refused calls left nothing"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn bad_values_are_refused_with_the_limit() {
        let f = fixture(Some(SecretsKey::generate()));
        let err = f
            .service
            .create_secret(&f.admin, new("big", &vec![b'x'; 64 * 1024 + 1]))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "value: is 65537 bytes, more than the limit of 65536 bytes (64 KiB)"
        );
        let err = f.service.create_secret(&f.admin, new("empty", b"")).await.unwrap_err();
        assert_eq!(err.to_string(), "value: must not be empty");
        let err = f
            .service
            .create_secret(&f.admin, new("Bad Name", b"v"))
            .await
            .unwrap_err();
        assert!(matches!(err, ServiceError::InvalidArgument(_)), "{err}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn without_a_key_the_store_is_off() {
        let f = fixture(None);
        let err = f
            .service
            .list_secrets(&f.admin, PageRequest::default())
            .await
            .unwrap_err();
        assert!(matches!(err, ServiceError::FailedPrecondition(_)), "{err}");
        assert!(err.to_string().contains("--secrets-key-file"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn resolving_records_use_and_never_the_value() {
        let f = fixture(Some(SecretsKey::generate()));
        let s = &f.service;
        s.create_secret(&f.admin, new("openai", b"sk-openai-value"))
            .await
            .unwrap();
        s.create_secret(&f.admin, new("gemini", b"gm-value")).await.unwrap();
        assert_eq!(s.get_secret(&f.admin, "openai").await.unwrap().last_used_at, None);

        let names = ["gemini".to_owned(), "openai".to_owned(), "gemini".to_owned()];
        let values = s
            .resolve_secret_values(&f.admin.tenant_id, &names, "user:usr_admin", "session ses_x")
            .await
            .unwrap();
        let got: Vec<(&str, &[u8])> = values.iter().map(|v| (v.name.as_str(), v.value.expose())).collect();
        assert_eq!(got, [("gemini", &b"gm-value"[..]), ("openai", &b"sk-openai-value"[..])]);
        assert!(s.get_secret(&f.admin, "openai").await.unwrap().last_used_at.is_some());

        let audit = audit_of(&f.store, "ten_a");
        let uses: Vec<_> = audit.iter().filter(|a| a.action == "secret.use").collect();
        assert_eq!(uses.len(), 2);
        assert!(uses.iter().all(|a| a.detail.contains("session ses_x")));
        for entry in &audit {
            assert!(!entry.detail.contains("value"), "{}", entry.detail);
        }

        // Another tenant's name is not found, and an unknown name records nothing.
        let before = audit_of(&f.store, "ten_b").len();
        let err = s
            .resolve_secret_values(&f.other_admin.tenant_id, &["openai".into()], "system", "x")
            .await
            .unwrap_err();
        assert!(matches!(err, ServiceError::NotFound(_)), "{err}");
        assert_eq!(audit_of(&f.store, "ten_b").len(), before);
        let err = s
            .resolve_secret_values(&f.admin.tenant_id, &["openai".into(), "missing".into()], "system", "x")
            .await
            .unwrap_err();
        assert!(matches!(err, ServiceError::NotFound(_)), "{err}");
        assert_eq!(audit_of(&f.store, "ten_a").len(), audit.len());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_ciphertext_moved_to_another_row_does_not_decrypt() {
        let f = fixture(Some(SecretsKey::generate()));
        let s = &f.service;
        s.create_secret(&f.admin, new("one", b"value-one")).await.unwrap();
        s.create_secret(&f.admin, new("two", b"value-two")).await.unwrap();
        // Copy one's ciphertext and nonce onto two, as an attacker with
        // write access to the database could.
        f.store
            .write_blocking("test", |conn| {
                use diesel::prelude::*;

                use crate::store::schema::secrets;
                let one = rows::get_by_name(conn, "ten_a", "one")?.unwrap();
                diesel::update(secrets::table.filter(secrets::name.eq("two")))
                    .set((secrets::nonce.eq(one.nonce), secrets::ciphertext.eq(one.ciphertext)))
                    .execute(conn)?;
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let err = s
            .resolve_secret_values(&f.admin.tenant_id, &["two".into()], "system", "x")
            .await
            .unwrap_err();
        assert!(matches!(err, ServiceError::Internal(_)), "{err}");
        assert!(err.to_string().contains("does not decrypt"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn rotation_keeps_every_secret_readable_under_the_new_key_only() {
        let old = SecretsKey::generate();
        let f = fixture(Some(old.clone()));
        f.service.create_secret(&f.admin, new("a", b"value-a")).await.unwrap();
        f.service
            .create_secret(&f.other_admin, new("b", b"value-b"))
            .await
            .unwrap();
        f.service
            .update_secret(
                &f.admin,
                "a",
                SecretUpdate {
                    value: SecretValue::new(b"value-a2".to_vec()),
                    kind: None,
                    expected_version: 0,
                },
            )
            .await
            .unwrap();
        let new_key = SecretsKey::generate();
        assert!(rotate_key(&f.store, &old, &old).is_err());
        let wrong = SecretsKey::generate();
        let err = rotate_key(&f.store, &wrong, &new_key).unwrap_err();
        assert!(err.to_string().contains("nothing was changed"), "{err}");
        assert_eq!(stored_key_ids(&f.store).unwrap(), [old.id().to_owned()]);

        let rotation = rotate_key(&f.store, &old, &new_key).unwrap();
        assert_eq!(rotation, Rotation { secrets: 2, tenants: 2 });
        assert_eq!(stored_key_ids(&f.store).unwrap(), [new_key.id().to_owned()]);

        let rotated = Service::new(
            f.store.clone(),
            ServiceConfig {
                secrets_key: Some(new_key),
                ..ServiceConfig::default()
            },
            LiveConfig::default(),
        );
        let a = rotated
            .resolve_secret_values(&f.admin.tenant_id, &["a".into()], "system", "x")
            .await
            .unwrap();
        assert_eq!((a[0].value.expose(), a[0].version), (&b"value-a2"[..], 2));
        let b = rotated
            .resolve_secret_values(&f.other_admin.tenant_id, &["b".into()], "system", "x")
            .await
            .unwrap();
        assert_eq!(b[0].value.expose(), b"value-b");
        // The old key reads nothing any more.
        let err = f
            .service
            .resolve_secret_values(&f.admin.tenant_id, &["a".into()], "system", "x")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("encrypted under key"), "{err}");
        assert!(
            audit_of(&f.store, "ten_b")
                .iter()
                .any(|a| a.action == "secret.rotate_key")
        );
    }
}
