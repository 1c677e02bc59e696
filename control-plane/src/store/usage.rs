//! How much of each kind a tenant holds: the counts its quotas are
//! checked against.

use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::BigInt;

use super::DbConn;
use super::rows::{QueryResult, SESSION_TOMBSTONE};
use super::schema::*;

pub fn runtimes(conn: &mut DbConn, tenant: &str) -> QueryResult<i64> {
    Ok(runtimes::table
        .filter(runtimes::tenant_id.eq(tenant))
        .count()
        .get_result(conn)?)
}

/// Connect codes that can still pair a machine.
pub fn open_connect_codes(conn: &mut DbConn, tenant: &str, now: i64) -> QueryResult<i64> {
    Ok(connect_codes::table
        .filter(
            connect_codes::tenant_id
                .eq(tenant)
                .and(connect_codes::used_at.is_null())
                .and(connect_codes::expires_at.gt(now)),
        )
        .count()
        .get_result(conn)?)
}

pub fn agents(conn: &mut DbConn, tenant: &str) -> QueryResult<i64> {
    Ok(agents::table
        .filter(agents::tenant_id.eq(tenant))
        .count()
        .get_result(conn)?)
}

/// Sessions not deleted.
pub fn sessions(conn: &mut DbConn, tenant: &str) -> QueryResult<i64> {
    Ok(sessions::table
        .filter(
            sessions::tenant_id
                .eq(tenant)
                .and(sessions::status.ne(SESSION_TOMBSTONE)),
        )
        .count()
        .get_result(conn)?)
}

/// Bytes of session events the tenant stores.
pub fn stored_bytes(conn: &mut DbConn, tenant: &str) -> QueryResult<i64> {
    // SUM of a BIGINT is NUMERIC on PostgreSQL: cast it back, on both.
    Ok(sessions::table
        .filter(sessions::tenant_id.eq(tenant))
        .select(sql::<BigInt>("CAST(COALESCE(SUM(stored_bytes), 0) AS BIGINT)"))
        .get_result(conn)?)
}

/// Sessions of every tenant by stored status (for the metrics).
pub fn sessions_by_status(conn: &mut DbConn) -> QueryResult<Vec<(String, i64)>> {
    Ok(sessions::table
        .group_by(sessions::status)
        .select((sessions::status, diesel::dsl::count_star()))
        .load(conn)?)
}
