//! Per-tenant quotas: how much one tenant may hold, so that no tenant can
//! starve the others of the database or the control plane's memory. Each
//! is checked in the same transaction as the insert it guards (exact on
//! SQLite, whose writes are serialized; on PostgreSQL two concurrent
//! creates may overshoot by one each).

use super::{ServiceError, ServiceResult};
use crate::store::{DbConn, usage};

/// The limits; every one can be set by a `serve` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quotas {
    pub runtimes: u64,
    pub agents: u64,
    /// Sessions not deleted.
    pub sessions: u64,
    /// Connect codes that can still be used.
    pub connect_codes: u64,
    /// Bytes of stored session events; past it new turns are refused.
    pub stored_bytes: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            runtimes: 1_000,
            agents: 1_000,
            sessions: 10_000,
            connect_codes: 100,
            stored_bytes: 10 << 30,
        }
    }
}

/// What a quota counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    Runtimes,
    Agents,
    Sessions,
    ConnectCodes,
    StoredBytes,
}

impl Quota {
    /// Its label in the metrics (the `--quota-…` flag's word).
    fn name(self) -> &'static str {
        match self {
            Quota::Runtimes => "runtimes",
            Quota::Agents => "agents",
            Quota::Sessions => "sessions",
            Quota::ConnectCodes => "connect_codes",
            Quota::StoredBytes => "stored_bytes",
        }
    }

    fn limit(self, quotas: &Quotas) -> u64 {
        match self {
            Quota::Runtimes => quotas.runtimes,
            Quota::Agents => quotas.agents,
            Quota::Sessions => quotas.sessions,
            Quota::ConnectCodes => quotas.connect_codes,
            Quota::StoredBytes => quotas.stored_bytes,
        }
    }

    /// What the tenant holds now.
    fn used(self, conn: &mut DbConn, tenant: &str, now: i64) -> ServiceResult<u64> {
        let n = match self {
            Quota::Runtimes => usage::runtimes(conn, tenant)?,
            Quota::Agents => usage::agents(conn, tenant)?,
            Quota::Sessions => usage::sessions(conn, tenant)?,
            Quota::ConnectCodes => usage::open_connect_codes(conn, tenant, now)?,
            Quota::StoredBytes => usage::stored_bytes(conn, tenant)?,
        };
        Ok(n.max(0) as u64)
    }

    /// The sentence a refused caller reads.
    fn refusal(self, limit: u64) -> String {
        let (what, remedy, flag) = match self {
            Quota::Runtimes => (
                format!("{limit} runtimes"),
                "delete runtimes it no longer uses",
                "runtimes",
            ),
            Quota::Agents => (format!("{limit} agents"), "delete agents it no longer uses", "agents"),
            Quota::Sessions => (format!("{limit} sessions"), "delete finished sessions", "sessions"),
            Quota::ConnectCodes => (
                format!("{limit} unused connect codes"),
                "use them or let them expire",
                "connect-codes",
            ),
            Quota::StoredBytes => (
                format!("{limit} bytes of stored session events"),
                "delete sessions whose logs it no longer needs",
                "stored-bytes",
            ),
        };
        format!("this tenant has reached its quota of {what}: {remedy}, or ask the operator to raise --quota-{flag}")
    }
}

/// Refuses when the tenant already holds its quota of `quota` (so one more
/// would exceed it).
pub(crate) fn check(conn: &mut DbConn, quotas: &Quotas, tenant: &str, quota: Quota, now: i64) -> ServiceResult<()> {
    let limit = quota.limit(quotas);
    if quota.used(conn, tenant, now)? >= limit {
        metrics::counter!("oma_quota_refusals_total", "quota" => quota.name()).increment(1);
        return Err(ServiceError::ResourceExhausted(quota.refusal(limit)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_say_what_and_how_to_get_out() {
        let message = Quota::Runtimes.refusal(3);
        assert_eq!(
            message,
            "this tenant has reached its quota of 3 runtimes: delete runtimes it no longer uses, or ask the operator to raise --quota-runtimes"
        );
    }
}
