use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt as _};
use oma_proto::pb::{self, runtime_stream_service_server::RuntimeStreamService};
use tonic::{Request, Response, Status, Streaming};

use super::auth::machine;
use crate::service::live::message::AgentMessage;
use crate::service::{Service, ServiceError};

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
        // Every frame is checked before the service acts on it: a refused
        // one ends this stream with INVALID_ARGUMENT naming the field.
        let inbound = request.into_inner().map(|r| -> Result<AgentMessage, ServiceError> {
            let frame = r.map_err(inbound_error)?;
            Ok(AgentMessage::try_from(frame)?)
        });
        let (outbound, error) = self.service.open_stream(machine, Box::pin(inbound)).await?;
        // The frames, then, if the machine broke the rules, the status that
        // says how.
        let end = futures::stream::once(error).filter_map(|e| async move { e.ok().map(|e| Err(Status::from(e))) });
        Ok(Response::new(Box::pin(outbound.map(Ok).chain(end))))
    }
}

/// A failed read from the machine: an oversized message is the machine's
/// fault and gets a precise status; anything else is the network's.
fn inbound_error(status: Status) -> ServiceError {
    match status.code() {
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => ServiceError::ResourceExhausted(format!(
            "a frame is too large: {}; the limit is {} bytes",
            status.message(),
            oma_proto::MAX_MESSAGE_BYTES
        )),
        code => ServiceError::FailedPrecondition(format!("the stream failed: {code}: {}", status.message())),
    }
}
