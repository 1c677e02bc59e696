use std::sync::Arc;

use oma_proto::ids::AgentId;
use oma_proto::model::AgentSpec;
use oma_proto::pb::{self, agent_service_server::AgentService};
use oma_proto::validate::ValidationError;
use tonic::{Request, Response, Status};

use super::auth::caller;
use super::convert;
use super::status::invalid;
use crate::service::Service;
use crate::service::agents::AgentUpdate;

pub struct AgentGrpc {
    pub service: Arc<Service>,
}

fn required_spec(spec: Option<pb::AgentSpec>) -> Result<pb::AgentSpec, Status> {
    spec.ok_or_else(|| invalid(ValidationError::new("spec", "is required")))
}

#[tonic::async_trait]
impl AgentService for AgentGrpc {
    async fn create_agent(
        &self,
        request: Request<pb::CreateAgentRequest>,
    ) -> Result<Response<pb::CreateAgentResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let spec = AgentSpec::try_from(required_spec(req.spec)?).map_err(invalid)?;
        let agent = self
            .service
            .create_agent(&caller, spec, req.allow_unknown_skills)
            .await?;
        Ok(Response::new(pb::CreateAgentResponse {
            agent: Some(convert::agent(agent)),
        }))
    }

    async fn get_agent(&self, request: Request<pb::GetAgentRequest>) -> Result<Response<pb::GetAgentResponse>, Status> {
        let caller = caller(&request)?;
        let id = AgentId::parse("agent_id", &request.get_ref().agent_id).map_err(invalid)?;
        let agent = self.service.get_agent(&caller, id).await?;
        Ok(Response::new(pb::GetAgentResponse {
            agent: Some(convert::agent(agent)),
        }))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let caller = caller(&request)?;
        let page = self
            .service
            .list_agents(&caller, convert::page(request.into_inner().page))
            .await?;
        Ok(Response::new(pb::ListAgentsResponse {
            agents: page.items.into_iter().map(convert::agent).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn update_agent(
        &self,
        request: Request<pb::UpdateAgentRequest>,
    ) -> Result<Response<pb::UpdateAgentResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let id = AgentId::parse("agent_id", &req.agent_id).map_err(invalid)?;
        let update = AgentUpdate {
            request: required_spec(req.spec)?,
            mask: req.update_mask.map(|m| m.paths).unwrap_or_default(),
            expected_version: req.expected_version,
            allow_unknown_skills: req.allow_unknown_skills,
        };
        let agent = self.service.update_agent(&caller, id, update).await?;
        Ok(Response::new(pb::UpdateAgentResponse {
            agent: Some(convert::agent(agent)),
        }))
    }

    async fn delete_agent(
        &self,
        request: Request<pb::DeleteAgentRequest>,
    ) -> Result<Response<pb::DeleteAgentResponse>, Status> {
        let caller = caller(&request)?;
        let id = AgentId::parse("agent_id", &request.get_ref().agent_id).map_err(invalid)?;
        self.service.delete_agent(&caller, id).await?;
        Ok(Response::new(pb::DeleteAgentResponse {}))
    }
}
