//! `oma-control-plane`: the gRPC API (`grpc/`) over a service layer
//! (`service/`) over a store (`store/`).

pub mod config;
pub mod grpc;
pub mod metrics;
pub mod secrets_key;
pub mod service;
pub mod store;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::ServerTlsConfig;

use crate::service::live::LiveConfig;
use crate::service::{Service, ServiceConfig};
use crate::store::Store;

/// Everything `run` needs, already loaded (tests build it directly).
pub struct RunConfig {
    pub store: Store,
    pub service: ServiceConfig,
    pub live: LiveConfig,
    pub tls: Option<ServerTlsConfig>,
    pub limits: grpc::limits::LimitsConfig,
    /// The Prometheus recorder's handle and the listener to serve
    /// `/metrics` on (`--metrics-listen`).
    pub metrics: Option<(metrics_exporter_prometheus::PrometheusHandle, TcpListener)>,
}

/// Serves the API on an already-bound listener until `shutdown` fires.
pub async fn run(
    config: RunConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let service = Arc::new(Service::new(config.store, config.service, config.live));
    tracing::info!(replica_id = %service.live_config.replica_id, "this replica's id (runtime leases are held under it)");
    if let Err(e) = service.mark_runtimes_offline().await {
        tracing::error!(error = %e, "could not reset runtime statuses");
    }
    match service.rearm_permission_timeouts().await {
        Ok(0) => {}
        Ok(pending) => tracing::info!(
            pending,
            "permission requests waiting for a person: their timeouts are armed again"
        ),
        Err(e) => tracing::error!(error = %e, "could not arm the timeouts of pending permission requests"),
    }
    tokio::spawn({
        let (service, shutdown) = (service.clone(), shutdown.clone());
        async move { service.keep_leases(shutdown).await }
    });
    if let Some((handle, metrics_listener)) = config.metrics {
        let (service, shutdown) = (service.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(handle, metrics_listener, service, shutdown).await {
                tracing::error!(error = %e, "the metrics listener stopped");
            }
        });
    }
    grpc::serve(service, listener, config.tls, config.limits, shutdown).await
}
