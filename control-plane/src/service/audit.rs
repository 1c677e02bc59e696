//! The audit log: every mutation is recorded in the same transaction as the
//! change itself, so a change without its entry (or the reverse) cannot be
//! stored.

use oma_proto::ids::AuditId;
use serde_json::Value;

use super::{Caller, PageRequest, Paged, Service, ServiceResult};
use crate::store::rows::{self, AuditRow};
use crate::store::{DbConn, StoreError, now_ms};

/// Appends one entry. `detail` must never hold secrets.
pub fn record(
    conn: &mut DbConn,
    tenant_id: &str,
    actor: &str,
    action: &str,
    target_id: &str,
    detail: Value,
) -> Result<(), StoreError> {
    rows::insert_audit(
        conn,
        &AuditRow {
            id: AuditId::generate().to_string(),
            tenant_id: tenant_id.to_owned(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            target_id: target_id.to_owned(),
            detail: detail.to_string(),
            created_at: now_ms(),
        },
    )
}

impl Service {
    /// Newest first. Admin only.
    pub async fn list_audit(
        &self,
        caller: &Caller,
        target_id: String,
        page: PageRequest,
    ) -> ServiceResult<Paged<AuditRow>> {
        caller.require_admin("reading the audit log")?;
        let page = page.to_page()?;
        let tenant = caller.tenant_id.to_string();
        self.store
            .read("list_audit", move |conn| {
                let target = (!target_id.is_empty()).then_some(target_id.as_str());
                let rows = rows::list_audit(conn, &tenant, target, &page)?;
                Ok(Paged::from_rows(rows, &page, |r| &r.id))
            })
            .await
    }
}
