//! Rows of the secret store. A row holds the value only as ciphertext (see
//! `service::sealing`); every query that reads a tenant's secrets filters on
//! the tenant, so another tenant's secret is simply not found.

use diesel::prelude::*;

use super::DbConn;
use super::rows::{Page, QueryResult};
use super::schema::secrets;

#[derive(Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = secrets)]
pub struct SecretRow {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub kind: String,
    pub version: i64,
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub created_by_user_id: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_used_at: Option<i64>,
}

/// Ciphertext is no secret, but nothing gains from printing it either.
impl std::fmt::Debug for SecretRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretRow")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("version", &self.version)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// A new value for a row: what `UpdateSecret` and key rotation write.
pub struct Sealed<'a> {
    pub key_id: &'a str,
    pub nonce: &'a [u8],
    pub ciphertext: &'a [u8],
}

pub fn insert(conn: &mut DbConn, row: &SecretRow) -> QueryResult<()> {
    diesel::insert_into(secrets::table).values(row).execute(conn)?;
    Ok(())
}

pub fn get_by_name(conn: &mut DbConn, tenant: &str, name: &str) -> QueryResult<Option<SecretRow>> {
    Ok(secrets::table
        .filter(secrets::tenant_id.eq(tenant).and(secrets::name.eq(name)))
        .select(SecretRow::as_select())
        .first(conn)
        .optional()?)
}

/// Ordered by name; the page cursor is the last name.
pub fn list(conn: &mut DbConn, tenant: &str, page: &Page) -> QueryResult<Vec<SecretRow>> {
    let mut q = secrets::table
        .filter(secrets::tenant_id.eq(tenant))
        .order(secrets::name.asc())
        .limit(page.limit as i64 + 1)
        .select(SecretRow::as_select())
        .into_boxed();
    if let Some(after) = &page.after_id {
        q = q.filter(secrets::name.gt(after.clone()));
    }
    Ok(q.load(conn)?)
}

/// Every secret of every tenant (key rotation, the startup key check).
pub fn all(conn: &mut DbConn) -> QueryResult<Vec<SecretRow>> {
    Ok(secrets::table
        .order(secrets::id.asc())
        .select(SecretRow::as_select())
        .load(conn)?)
}

/// The key ids the stored values are encrypted under, each once.
pub fn key_ids(conn: &mut DbConn) -> QueryResult<Vec<String>> {
    Ok(secrets::table
        .select(secrets::key_id)
        .distinct()
        .order(secrets::key_id.asc())
        .load(conn)?)
}

/// Replaces the value of the row at `version` with `sealed` (sealed for
/// `new_version`), and its kind. False when the row is gone or another
/// update got there first.
#[allow(clippy::too_many_arguments)]
pub fn update_value(
    conn: &mut DbConn,
    tenant: &str,
    id: &str,
    version: i64,
    new_version: i64,
    kind: &str,
    sealed: &Sealed<'_>,
    now: i64,
) -> QueryResult<bool> {
    let n = diesel::update(
        secrets::table.filter(
            secrets::tenant_id
                .eq(tenant)
                .and(secrets::id.eq(id))
                .and(secrets::version.eq(version)),
        ),
    )
    .set((
        secrets::version.eq(new_version),
        secrets::kind.eq(kind),
        secrets::key_id.eq(sealed.key_id),
        secrets::nonce.eq(sealed.nonce),
        secrets::ciphertext.eq(sealed.ciphertext),
        secrets::updated_at.eq(now),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// Re-encrypts a row in place (key rotation): same version, same times.
pub fn reseal(conn: &mut DbConn, id: &str, version: i64, sealed: &Sealed<'_>) -> QueryResult<bool> {
    let n = diesel::update(secrets::table.filter(secrets::id.eq(id).and(secrets::version.eq(version))))
        .set((
            secrets::key_id.eq(sealed.key_id),
            secrets::nonce.eq(sealed.nonce),
            secrets::ciphertext.eq(sealed.ciphertext),
        ))
        .execute(conn)?;
    Ok(n == 1)
}

pub fn mark_used(conn: &mut DbConn, tenant: &str, ids: &[String], now: i64) -> QueryResult<()> {
    diesel::update(secrets::table.filter(secrets::tenant_id.eq(tenant).and(secrets::id.eq_any(ids))))
        .set(secrets::last_used_at.eq(now))
        .execute(conn)?;
    Ok(())
}

pub fn delete(conn: &mut DbConn, tenant: &str, id: &str) -> QueryResult<bool> {
    let n =
        diesel::delete(secrets::table.filter(secrets::tenant_id.eq(tenant).and(secrets::id.eq(id)))).execute(conn)?;
    Ok(n > 0)
}
