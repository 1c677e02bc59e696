use std::sync::Arc;
use std::time::Duration;

use oma_proto::ids::{RuntimeId, UserId};
use oma_proto::pb::{self, runtime_service_server::RuntimeService};
use tonic::{Request, Response, Status};

use super::auth::caller;
use super::convert;
use super::status::invalid;
use crate::service::Service;
use crate::service::runtimes::ExchangeRequest;

pub struct RuntimeGrpc {
    pub service: Arc<Service>,
}

#[tonic::async_trait]
impl RuntimeService for RuntimeGrpc {
    async fn create_connect_code(
        &self,
        request: Request<pb::CreateConnectCodeRequest>,
    ) -> Result<Response<pb::CreateConnectCodeResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let owner = UserId::parse_optional("owner_user_id", &req.owner_user_id).map_err(invalid)?;
        let ttl = (req.ttl_seconds > 0).then(|| Duration::from_secs(req.ttl_seconds.into()));
        let code = self.service.create_connect_code(&caller, owner, ttl).await?;
        Ok(Response::new(pb::CreateConnectCodeResponse {
            code: code.code,
            expire_time: Some(convert::timestamp(code.expires_at)),
            owner_user_id: code.owner_user_id,
        }))
    }

    async fn exchange_connect_code(
        &self,
        request: Request<pb::ExchangeConnectCodeRequest>,
    ) -> Result<Response<pb::ExchangeConnectCodeResponse>, Status> {
        let req = request.into_inner();
        let paired = self
            .service
            .exchange_connect_code(ExchangeRequest {
                code: req.code,
                machine_id: req.machine_id,
                name: req.name,
                agent_version: req.agent_version,
                os: req.os,
                arch: req.arch,
            })
            .await?;
        Ok(Response::new(pb::ExchangeConnectCodeResponse {
            runtime: Some(convert::runtime(paired.runtime)),
            machine_token: paired.machine_token,
        }))
    }

    async fn list_runtimes(
        &self,
        request: Request<pb::ListRuntimesRequest>,
    ) -> Result<Response<pb::ListRuntimesResponse>, Status> {
        let caller = caller(&request)?;
        let page = self
            .service
            .list_runtimes(&caller, convert::page(request.into_inner().page))
            .await?;
        Ok(Response::new(pb::ListRuntimesResponse {
            runtimes: page.items.into_iter().map(convert::runtime).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn get_runtime(
        &self,
        request: Request<pb::GetRuntimeRequest>,
    ) -> Result<Response<pb::GetRuntimeResponse>, Status> {
        let caller = caller(&request)?;
        let id = RuntimeId::parse("runtime_id", &request.get_ref().runtime_id).map_err(invalid)?;
        let runtime = self.service.get_runtime(&caller, id).await?;
        Ok(Response::new(pb::GetRuntimeResponse {
            runtime: Some(convert::runtime(runtime)),
        }))
    }

    async fn delete_runtime(
        &self,
        request: Request<pb::DeleteRuntimeRequest>,
    ) -> Result<Response<pb::DeleteRuntimeResponse>, Status> {
        let caller = caller(&request)?;
        let id = RuntimeId::parse("runtime_id", &request.get_ref().runtime_id).map_err(invalid)?;
        self.service.delete_runtime(&caller, id).await?;
        Ok(Response::new(pb::DeleteRuntimeResponse {}))
    }
}
