//! `oma-relay-floor`: the bare tonic relay `oma-bench` measures beside the
//! real one — a publisher's client stream in, a watcher's server stream
//! out, through a broadcast channel; the control plane's transport (tonic,
//! h2, a multi-thread tokio runtime) without its database, auth or acks. It
//! listens on 127.0.0.1 with a free port, prints `listening on ADDR` and
//! serves until killed.

use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use oma_integration_tests::relay_floor::relay_floor_server::{RelayFloor, RelayFloorServer};
use oma_integration_tests::relay_floor::{Chunk, Empty};
use tokio::sync::broadcast;
use tonic::{Request, Response, Status, Streaming};

struct Relay {
    chunks: broadcast::Sender<Chunk>,
}

#[tonic::async_trait]
impl RelayFloor for Relay {
    async fn publish(&self, request: Request<Streaming<Chunk>>) -> Result<Response<Empty>, Status> {
        let mut inbound = request.into_inner();
        while let Some(chunk) = inbound.message().await? {
            // No watcher yet is not an error: the chunk is dropped.
            let _ = self.chunks.send(chunk);
        }
        Ok(Response::new(Empty {}))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<Chunk, Status>> + Send>>;

    async fn watch(&self, _: Request<Empty>) -> Result<Response<Self::WatchStream>, Status> {
        let chunks = tokio_stream::wrappers::BroadcastStream::new(self.chunks.subscribe())
            .map(|chunk| chunk.map_err(|lagged| Status::data_loss(lagged.to_string())));
        Ok(Response::new(Box::pin(chunks)))
    }
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening on {}", listener.local_addr()?);
        let relay = Relay {
            chunks: broadcast::channel(4096).0,
        };
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(RelayFloorServer::new(relay))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await?;
        Ok(())
    })
}
