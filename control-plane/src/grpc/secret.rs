//! `SecretService`: values in, metadata out. No response carries a value.

use std::sync::Arc;

use oma_proto::pb::{self, secret_service_server::SecretService};
use oma_proto::secret::SecretKind;
use tonic::{Request, Response, Status};

use super::auth::caller;
use super::convert;
use super::status::invalid;
use crate::service::Service;
use crate::service::sealing::SecretValue;
use crate::service::secret_store::{NewSecret, SecretUpdate};

pub struct SecretGrpc {
    pub service: Arc<Service>,
}

fn kind(value: i32) -> Result<Option<SecretKind>, Status> {
    SecretKind::from_wire("kind", value).map_err(invalid)
}

#[tonic::async_trait]
impl SecretService for SecretGrpc {
    async fn create_secret(
        &self,
        request: Request<pb::CreateSecretRequest>,
    ) -> Result<Response<pb::CreateSecretResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let new = NewSecret {
            kind: kind(req.kind)?,
            name: req.name,
            value: SecretValue::new(req.value),
        };
        let secret = self.service.create_secret(&caller, new).await?;
        Ok(Response::new(pb::CreateSecretResponse {
            secret: Some(convert::secret(secret)),
        }))
    }

    async fn get_secret(
        &self,
        request: Request<pb::GetSecretRequest>,
    ) -> Result<Response<pb::GetSecretResponse>, Status> {
        let caller = caller(&request)?;
        let secret = self.service.get_secret(&caller, &request.get_ref().name).await?;
        Ok(Response::new(pb::GetSecretResponse {
            secret: Some(convert::secret(secret)),
        }))
    }

    async fn list_secrets(
        &self,
        request: Request<pb::ListSecretsRequest>,
    ) -> Result<Response<pb::ListSecretsResponse>, Status> {
        let caller = caller(&request)?;
        let page = self
            .service
            .list_secrets(&caller, convert::page(request.into_inner().page))
            .await?;
        Ok(Response::new(pb::ListSecretsResponse {
            secrets: page.items.into_iter().map(convert::secret).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn update_secret(
        &self,
        request: Request<pb::UpdateSecretRequest>,
    ) -> Result<Response<pb::UpdateSecretResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let update = SecretUpdate {
            kind: kind(req.kind)?,
            value: SecretValue::new(req.value),
            expected_version: req.expected_version,
        };
        let secret = self.service.update_secret(&caller, &req.name, update).await?;
        Ok(Response::new(pb::UpdateSecretResponse {
            secret: Some(convert::secret(secret)),
        }))
    }

    async fn delete_secret(
        &self,
        request: Request<pb::DeleteSecretRequest>,
    ) -> Result<Response<pb::DeleteSecretResponse>, Status> {
        let caller = caller(&request)?;
        self.service.delete_secret(&caller, &request.get_ref().name).await?;
        Ok(Response::new(pb::DeleteSecretResponse {}))
    }
}
