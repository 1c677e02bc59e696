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
    let database_health = tokio::spawn(follow_the_database(service.clone(), health.clone()));

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
    // Then every runtime stream is ended at once, not after the grace
    // period: the machines reconnect to another replica right away.
    let draining = service.clone();
    let stopping = async move {
        shutdown.cancelled().await;
        // Stopped first, so it cannot say SERVING again afterwards.
        database_health.abort();
        let _ = database_health.await;
        set_health(&health, tonic_health::ServingStatus::NotServing).await;
        let ended = draining.live.registry.end_all();
        tracing::info!(
            runtime_streams = ended,
            "draining: runtime streams ended; their machines reconnect"
        );
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

/// How often health checks the database, and how long one check may take.
const DATABASE_CHECK_EVERY: Duration = Duration::from_secs(2);
const DATABASE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Health follows the database: NOT_SERVING while it cannot be reached
/// (a replica without its database can serve nothing), SERVING again once
/// it answers. Also exported as the `oma_database_up` gauge. Runs until
/// aborted at shutdown.
async fn follow_the_database(service: Arc<Service>, health: tonic_health::server::HealthReporter) {
    let mut up = true;
    metrics::gauge!("oma_database_up").set(1.0);
    let mut every = tokio::time::interval(DATABASE_CHECK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let error = match tokio::time::timeout(DATABASE_CHECK_TIMEOUT, service.store().ping()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {DATABASE_CHECK_TIMEOUT:?}")),
        };
        match (up, error) {
            (true, Some(error)) => {
                up = false;
                tracing::error!(
                    error,
                    "the database cannot be reached; health says NOT_SERVING until it can"
                );
                metrics::gauge!("oma_database_up").set(0.0);
                set_health(&health, tonic_health::ServingStatus::NotServing).await;
            }
            (false, None) => {
                up = true;
                tracing::info!("the database answers again; health says SERVING");
                metrics::gauge!("oma_database_up").set(1.0);
                set_health(&health, tonic_health::ServingStatus::Serving).await;
            }
            _ => {}
        }
    }
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
