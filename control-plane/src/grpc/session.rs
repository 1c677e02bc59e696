use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt as _};
use oma_proto::ids::{AgentId, SessionId};
use oma_proto::pb::{self, session_service_server::SessionService};
use oma_proto::validate::ValidationError;
use tonic::{Request, Response, Status};

use super::auth::caller;
use super::convert;
use super::status::invalid;
use crate::service::Service;
use crate::service::sessions::turns::{PermissionChoice, PromptRequest};
use crate::service::sessions::workspace::WorkspaceRequest;

pub struct SessionGrpc {
    pub service: Arc<Service>,
}

#[tonic::async_trait]
impl SessionService for SessionGrpc {
    async fn create_session(
        &self,
        request: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::CreateSessionResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let agent = AgentId::parse("agent_id", &req.agent_id).map_err(invalid)?;
        let workspace = req.workspace.map(WorkspaceRequest::from);
        let session = self
            .service
            .create_session(&caller, agent, &req.title, workspace, (req.mode_id, req.model_id))
            .await?;
        Ok(Response::new(pb::CreateSessionResponse {
            session: Some(convert::session(session)),
        }))
    }

    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        let caller = caller(&request)?;
        let id = SessionId::parse("session_id", &request.get_ref().session_id).map_err(invalid)?;
        let session = self.service.get_session(&caller, id).await?;
        Ok(Response::new(pb::GetSessionResponse {
            session: Some(convert::session(session)),
        }))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let agent = AgentId::parse_optional("agent_id", &req.agent_id).map_err(invalid)?;
        let page = self
            .service
            .list_sessions(&caller, agent, convert::page(req.page))
            .await?;
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: page.items.into_iter().map(convert::session).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn delete_session(
        &self,
        request: Request<pb::DeleteSessionRequest>,
    ) -> Result<Response<pb::DeleteSessionResponse>, Status> {
        let caller = caller(&request)?;
        let id = SessionId::parse("session_id", &request.get_ref().session_id).map_err(invalid)?;
        self.service
            .delete_session(&caller, id, request.get_ref().delete_branch)
            .await?;
        Ok(Response::new(pb::DeleteSessionResponse {}))
    }

    async fn prompt_session(
        &self,
        request: Request<pb::PromptSessionRequest>,
    ) -> Result<Response<pb::PromptSessionResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let session_id = SessionId::parse("session_id", &req.session_id).map_err(invalid)?;
        let (turn_id, from_seq) = self
            .service
            .prompt_session(
                &caller,
                PromptRequest {
                    session_id,
                    turn_id: req.turn_id,
                    prompt: req.prompt,
                },
            )
            .await?;
        Ok(Response::new(pb::PromptSessionResponse { turn_id, from_seq }))
    }

    async fn cancel_turn(
        &self,
        request: Request<pb::CancelTurnRequest>,
    ) -> Result<Response<pb::CancelTurnResponse>, Status> {
        let caller = caller(&request)?;
        let id = SessionId::parse("session_id", &request.get_ref().session_id).map_err(invalid)?;
        self.service.cancel_turn(&caller, id).await?;
        Ok(Response::new(pb::CancelTurnResponse {}))
    }

    async fn answer_permission(
        &self,
        request: Request<pb::AnswerPermissionRequest>,
    ) -> Result<Response<pb::AnswerPermissionResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let id = SessionId::parse("session_id", &req.session_id).map_err(invalid)?;
        let choice = match req.answer {
            Some(pb::answer_permission_request::Answer::OptionId(option)) if !option.is_empty() => {
                PermissionChoice::Option(option)
            }
            Some(pb::answer_permission_request::Answer::Reject(true)) => PermissionChoice::Reject,
            _ => {
                return Err(invalid(ValidationError::new(
                    "answer",
                    "is required: set option_id or reject",
                )));
            }
        };
        self.service
            .answer_permission(&caller, id, &req.request_id, choice)
            .await?;
        Ok(Response::new(pb::AnswerPermissionResponse {}))
    }

    type WatchSessionStream = Pin<Box<dyn Stream<Item = Result<pb::SessionEvent, Status>> + Send>>;

    async fn watch_session(
        &self,
        request: Request<pb::WatchSessionRequest>,
    ) -> Result<Response<Self::WatchSessionStream>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let id = SessionId::parse("session_id", &req.session_id).map_err(invalid)?;
        let events = self
            .service
            .watch_session(&caller, id, req.from_seq, req.until_turn_end)
            .await?;
        let stream = events.map(|item| item.map(Arc::unwrap_or_clone).map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn set_session_options(
        &self,
        request: Request<pb::SetSessionOptionsRequest>,
    ) -> Result<Response<pb::SetSessionOptionsResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let id = SessionId::parse("session_id", &req.session_id).map_err(invalid)?;
        self.service
            .set_session_options(&caller, id, &req.mode_id, &req.model_id)
            .await?;
        Ok(Response::new(pb::SetSessionOptionsResponse {}))
    }

    type GetSessionDiffStream = Pin<Box<dyn Stream<Item = Result<pb::GetSessionDiffResponse, Status>> + Send>>;

    async fn get_session_diff(
        &self,
        request: Request<pb::GetSessionDiffRequest>,
    ) -> Result<Response<Self::GetSessionDiffStream>, Status> {
        let caller = caller(&request)?;
        let id = SessionId::parse("session_id", &request.get_ref().session_id).map_err(invalid)?;
        let pieces = self.service.session_diff(&caller, id).await?;
        let stream = pieces.map(|piece| {
            piece
                .map(|p| pb::GetSessionDiffResponse {
                    chunk: p.data,
                    truncated: p.truncated,
                })
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
