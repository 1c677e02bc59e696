//! The audit log: every mutation is recorded in the same transaction as the
//! change itself, so a change without its entry (or the reverse) cannot be
//! stored.

use oma_proto::ids::AuditId;
use oma_proto::validate::ValidationError;
use serde_json::Value;

use super::{Caller, PageRequest, Paged, Service, ServiceError, ServiceResult};
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

/// Which entries a listing returns; every field narrows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub target_id: Option<String>,
    /// Milliseconds since the Unix epoch, inclusive.
    pub since_ms: Option<i64>,
    /// Milliseconds since the Unix epoch, exclusive.
    pub until_ms: Option<i64>,
    /// An action, or a noun's prefix ending with `.`.
    pub action: Option<String>,
    pub actor: Option<String>,
}

impl AuditFilter {
    /// Refuses a filter that could only ever match nothing by mistake, or
    /// that is not an action name.
    pub fn check(&self) -> ServiceResult<()> {
        if let (Some(since), Some(until)) = (self.since_ms, self.until_ms)
            && since >= until
        {
            return Err(ServiceError::InvalidArgument(ValidationError::new(
                "since",
                "must be before until",
            )));
        }
        if let Some(action) = &self.action
            && (action.len() > 64 || !action.chars().all(|c| c.is_ascii_lowercase() || c == '_' || c == '.'))
        {
            return Err(ServiceError::InvalidArgument(ValidationError::new(
                "action",
                format!(
                    "{action:?} is not an action name: use e.g. session.delete, or session. for every session action"
                ),
            )));
        }
        if let Some(actor) = &self.actor
            && (actor.len() > 128 || actor.chars().any(char::is_control))
        {
            return Err(ServiceError::InvalidArgument(ValidationError::new(
                "actor",
                "must be e.g. user:usr_…, runtime:rt_… or system",
            )));
        }
        Ok(())
    }
}

impl Service {
    /// Newest first. Admin only.
    pub async fn list_audit(
        &self,
        caller: &Caller,
        filter: AuditFilter,
        page: PageRequest,
    ) -> ServiceResult<Paged<AuditRow>> {
        caller.require_admin("reading the audit log")?;
        filter.check()?;
        let page = page.to_page()?;
        let tenant = caller.tenant_id.to_string();
        self.store
            .read("list_audit", move |conn| {
                let rows = rows::list_audit(conn, &tenant, &filter, &page)?;
                Ok(Paged::from_rows(rows, &page, |r| &r.id))
            })
            .await
    }
}
