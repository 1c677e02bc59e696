//! The gRPC layer: thin handlers that authenticate, parse the request into
//! domain types, call the service and convert back. No SQL, no rules.

mod agent;
mod audit;
pub mod auth;
mod convert;
mod identity;
pub mod limits;
pub mod observe;
mod runtime;
mod secret;
mod session;
pub mod status;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use oma_proto::pb;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Server, ServerTlsConfig};

use crate::service::Service;

/// Serves every gRPC service on `listener` until `shutdown` fires, then
/// stops accepting and lets in-flight calls finish.
pub async fn serve(
    service: Arc<Service>,
    listener: TcpListener,
    tls: Option<ServerTlsConfig>,
    limits: limits::LimitsConfig,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let max = oma_proto::MAX_MESSAGE_BYTES;
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, tonic_health::ServingStatus::Serving).await;

    // Both reflection versions: grpcurl and many tools still ask v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(oma_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().expect("the embedded descriptor sets are valid");
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .expect("the embedded descriptor sets are valid");

    // Past the per-connection limit a call is refused at once
    // (RESOURCE_EXHAUSTED), not queued behind the others.
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .concurrency_limit_per_connection(limits.max_per_connection)
        .load_shed(true)
        .timeout(limits.request_timeout);
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    // On shutdown the health service says NOT_SERVING first (a load
    // balancer watching it stops sending calls here), then the server stops
    // accepting and lets in-flight calls finish.
    let stopping = async move {
        shutdown.cancelled().await;
        set_health(&health, tonic_health::ServingStatus::NotServing).await;
    };
    builder
        .layer(observe::ObserveLayer::new())
        .layer(auth::AuthLayer::new(
            service.clone(),
            Arc::new(limits::Limits::new(&limits)),
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            pb::identity_service_server::IdentityServiceServer::new(identity::IdentityGrpc {
                service: service.clone(),
            })
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        )
        .add_service(
            pb::runtime_service_server::RuntimeServiceServer::new(runtime::RuntimeGrpc {
                service: service.clone(),
            })
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        )
        .add_service(
            pb::agent_service_server::AgentServiceServer::new(agent::AgentGrpc {
                service: service.clone(),
            })
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        )
        .add_service(
            pb::session_service_server::SessionServiceServer::new(session::SessionGrpc {
                service: service.clone(),
            })
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        )
        .add_service(
            pb::runtime_stream_service_server::RuntimeStreamServiceServer::new(stream::StreamGrpc {
                service: service.clone(),
            })
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        )
        .add_service(
            pb::secret_service_server::SecretServiceServer::new(secret::SecretGrpc {
                service: service.clone(),
            })
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        )
        .add_service(
            pb::audit_service_server::AuditServiceServer::new(audit::AuditGrpc { service })
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .serve_with_incoming_shutdown(incoming, stopping)
        .await
}

/// What health reports: every service, and the server as a whole ("").
const SERVICES: [&str; 8] = [
    "",
    <pb::identity_service_server::IdentityServiceServer<identity::IdentityGrpc> as NamedService>::NAME,
    <pb::runtime_service_server::RuntimeServiceServer<runtime::RuntimeGrpc> as NamedService>::NAME,
    <pb::agent_service_server::AgentServiceServer<agent::AgentGrpc> as NamedService>::NAME,
    <pb::session_service_server::SessionServiceServer<session::SessionGrpc> as NamedService>::NAME,
    <pb::audit_service_server::AuditServiceServer<audit::AuditGrpc> as NamedService>::NAME,
    <pb::secret_service_server::SecretServiceServer<secret::SecretGrpc> as NamedService>::NAME,
    <pb::runtime_stream_service_server::RuntimeStreamServiceServer<stream::StreamGrpc> as NamedService>::NAME,
];

async fn set_health(health: &tonic_health::server::HealthReporter, status: tonic_health::ServingStatus) {
    for service in SERVICES {
        health.set_service_status(service, status).await;
    }
}
