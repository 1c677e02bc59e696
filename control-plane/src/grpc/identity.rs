use std::sync::Arc;
use std::time::Duration;

use oma_proto::ids::{TokenId, UserId};
use oma_proto::model::Role;
use oma_proto::pb::{self, identity_service_server::IdentityService};
use tonic::{Request, Response, Status};

use super::auth::caller;
use super::convert;
use super::status::invalid;
use crate::service::Service;

pub struct IdentityGrpc {
    pub service: Arc<Service>,
}

#[tonic::async_trait]
impl IdentityService for IdentityGrpc {
    async fn who_am_i(&self, request: Request<pb::WhoAmIRequest>) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let caller = caller(&request)?;
        let who = self.service.who_am_i(&caller).await?;
        Ok(Response::new(pb::WhoAmIResponse {
            tenant: Some(convert::tenant(who.tenant)),
            user: Some(convert::user(who.user)),
            token: Some(convert::token(who.token)),
        }))
    }

    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let role = Role::from_wire("role", req.role).map_err(invalid)?;
        let user = self.service.create_user(&caller, &req.name, role).await?;
        Ok(Response::new(pb::CreateUserResponse {
            user: Some(convert::user(user)),
        }))
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let caller = caller(&request)?;
        let page = self
            .service
            .list_users(&caller, convert::page(request.into_inner().page))
            .await?;
        Ok(Response::new(pb::ListUsersResponse {
            users: page.items.into_iter().map(convert::user).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn get_user(&self, request: Request<pb::GetUserRequest>) -> Result<Response<pb::GetUserResponse>, Status> {
        let caller = caller(&request)?;
        let id = UserId::parse("user_id", &request.get_ref().user_id).map_err(invalid)?;
        let user = self.service.get_user(&caller, id).await?;
        Ok(Response::new(pb::GetUserResponse {
            user: Some(convert::user(user)),
        }))
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        let caller = caller(&request)?;
        let id = UserId::parse("user_id", &request.get_ref().user_id).map_err(invalid)?;
        self.service.delete_user(&caller, id).await?;
        Ok(Response::new(pb::DeleteUserResponse {}))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let user = UserId::parse_optional("user_id", &req.user_id).map_err(invalid)?;
        let ttl = (req.ttl_seconds > 0).then(|| Duration::from_secs(req.ttl_seconds));
        let new = self.service.create_token(&caller, user, &req.name, ttl).await?;
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(convert::token(new.token)),
            secret: new.bearer,
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let user = UserId::parse_optional("user_id", &req.user_id).map_err(invalid)?;
        let page = self.service.list_tokens(&caller, user, convert::page(req.page)).await?;
        Ok(Response::new(pb::ListTokensResponse {
            tokens: page.items.into_iter().map(convert::token).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let caller = caller(&request)?;
        let id = TokenId::parse("token_id", &request.get_ref().token_id).map_err(invalid)?;
        let token = self.service.revoke_token(&caller, id).await?;
        Ok(Response::new(pb::RevokeTokenResponse {
            token: Some(convert::token(token)),
        }))
    }
}
