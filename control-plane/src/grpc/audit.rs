use std::sync::Arc;

use oma_proto::pb::{self, audit_service_server::AuditService};
use tonic::{Request, Response, Status};

use super::auth::caller;
use super::convert;
use crate::service::Service;
use crate::service::audit::AuditFilter;

pub struct AuditGrpc {
    pub service: Arc<Service>,
}

#[tonic::async_trait]
impl AuditService for AuditGrpc {
    async fn list_audit_entries(
        &self,
        request: Request<pb::ListAuditEntriesRequest>,
    ) -> Result<Response<pb::ListAuditEntriesResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let nonempty = |s: String| (!s.is_empty()).then_some(s);
        let filter = AuditFilter {
            target_id: nonempty(req.target_id),
            since_ms: req.since.as_ref().map(convert::millis),
            until_ms: req.until.as_ref().map(convert::millis),
            action: nonempty(req.action),
            actor: nonempty(req.actor),
        };
        let page = self
            .service
            .list_audit(&caller, filter, convert::page(req.page))
            .await?;
        Ok(Response::new(pb::ListAuditEntriesResponse {
            entries: page.items.into_iter().map(convert::audit).collect(),
            next_page_token: page.next_page_token,
        }))
    }
}
