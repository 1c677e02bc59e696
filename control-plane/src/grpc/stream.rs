use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt as _};
use oma_proto::pb::{self, runtime_stream_service_server::RuntimeStreamService};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::auth::machine;
use crate::service::Service;

pub struct StreamGrpc {
    pub service: Arc<Service>,
}

#[tonic::async_trait]
impl RuntimeStreamService for StreamGrpc {
    type OpenStreamStream = Pin<Box<dyn Stream<Item = Result<pb::ControlFrame, Status>> + Send>>;

    async fn open_stream(
        &self,
        request: Request<Streaming<pb::AgentFrame>>,
    ) -> Result<Response<Self::OpenStreamStream>, Status> {
        let machine = machine(&request)?;
        let inbound = request
            .into_inner()
            .map(|r| r.map_err(|s| format!("{}: {}", s.code(), s.message())));
        let outbound = self.service.open_stream(machine, Box::pin(inbound)).await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(outbound).map(Ok))))
    }
}
