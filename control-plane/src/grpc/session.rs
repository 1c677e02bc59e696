use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use oma_proto::ids::{AgentId, SessionId};
use oma_proto::pb::{self, session_service_server::SessionService};
use tonic::{Request, Response, Status};

use super::auth::caller;
use super::convert;
use super::status::invalid;
use crate::service::Service;

pub struct SessionGrpc {
    pub service: Arc<Service>,
}

/// The live path needs a connected `oma-agent`, which speaks
/// `RuntimeStreamService.OpenStream`; until a release serves that stream no
/// runtime can run a turn, and these RPCs say so instead of pretending.
fn live_path_unavailable(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "{rpc} needs the runtime stream, which this control plane version does not serve yet"
    ))
}

#[tonic::async_trait]
impl SessionService for SessionGrpc {
    async fn create_session(&self, request: Request<pb::CreateSessionRequest>) -> Result<Response<pb::CreateSessionResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let agent = AgentId::parse("agent_id", &req.agent_id).map_err(invalid)?;
        let session = self.service.create_session(&caller, agent, &req.title).await?;
        Ok(Response::new(pb::CreateSessionResponse {
            session: Some(convert::session(session)),
        }))
    }

    async fn get_session(&self, request: Request<pb::GetSessionRequest>) -> Result<Response<pb::GetSessionResponse>, Status> {
        let caller = caller(&request)?;
        let id = SessionId::parse("session_id", &request.get_ref().session_id).map_err(invalid)?;
        let session = self.service.get_session(&caller, id).await?;
        Ok(Response::new(pb::GetSessionResponse {
            session: Some(convert::session(session)),
        }))
    }

    async fn list_sessions(&self, request: Request<pb::ListSessionsRequest>) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let agent = AgentId::parse_optional("agent_id", &req.agent_id).map_err(invalid)?;
        let page = self.service.list_sessions(&caller, agent, convert::page(req.page)).await?;
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: page.items.into_iter().map(convert::session).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn delete_session(&self, request: Request<pb::DeleteSessionRequest>) -> Result<Response<pb::DeleteSessionResponse>, Status> {
        let caller = caller(&request)?;
        let id = SessionId::parse("session_id", &request.get_ref().session_id).map_err(invalid)?;
        self.service.delete_session(&caller, id).await?;
        Ok(Response::new(pb::DeleteSessionResponse {}))
    }

    async fn prompt_session(&self, request: Request<pb::PromptSessionRequest>) -> Result<Response<pb::PromptSessionResponse>, Status> {
        let caller = caller(&request)?;
        let id = SessionId::parse("session_id", &request.get_ref().session_id).map_err(invalid)?;
        self.service.get_session(&caller, id).await?;
        Err(live_path_unavailable("PromptSession"))
    }

    async fn cancel_turn(&self, request: Request<pb::CancelTurnRequest>) -> Result<Response<pb::CancelTurnResponse>, Status> {
        let caller = caller(&request)?;
        let id = SessionId::parse("session_id", &request.get_ref().session_id).map_err(invalid)?;
        self.service.get_session(&caller, id).await?;
        Err(live_path_unavailable("CancelTurn"))
    }

    async fn answer_permission(
        &self,
        request: Request<pb::AnswerPermissionRequest>,
    ) -> Result<Response<pb::AnswerPermissionResponse>, Status> {
        let caller = caller(&request)?;
        let id = SessionId::parse("session_id", &request.get_ref().session_id).map_err(invalid)?;
        self.service.get_session(&caller, id).await?;
        Err(live_path_unavailable("AnswerPermission"))
    }

    type WatchSessionStream = Pin<Box<dyn Stream<Item = Result<pb::SessionEvent, Status>> + Send>>;

    async fn watch_session(&self, request: Request<pb::WatchSessionRequest>) -> Result<Response<Self::WatchSessionStream>, Status> {
        let caller = caller(&request)?;
        let id = SessionId::parse("session_id", &request.get_ref().session_id).map_err(invalid)?;
        self.service.get_session(&caller, id).await?;
        Err(live_path_unavailable("WatchSession"))
    }
}
