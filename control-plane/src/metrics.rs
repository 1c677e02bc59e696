//! Prometheus metrics: the recorder every `metrics::` call of the control
//! plane reports to, and the plain-HTTP listener serving them at `/metrics`.
//!
//! The listener is separate from the API: no token, no TLS, so that any
//! Prometheus can scrape it; bind it where only the scraper reaches it.
//! Without `--metrics-listen` no recorder is installed and every `metrics::`
//! call is a no-op.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::service::Service;

/// Latency buckets (seconds) of every `*_seconds` histogram: from 100 µs
/// (an event committed on a quiet machine) to 10 s (a slow RPC).
const SECONDS_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets of the events in one commit of the event log.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1_000.0, 2_500.0, 5_000.0,
];

/// How often the exporter's upkeep runs.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the process-wide recorder and returns the handle that renders
/// the exposition text.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full("oma_event_commit_batch_events".into()), BATCH_BUCKETS)?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| anyhow::anyhow!("a metrics recorder was already installed"))?;
    describe();
    Ok(handle)
}

/// The HELP lines of the metrics recorded across the control plane.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "oma_grpc_requests_total",
        "gRPC calls answered, by method and status code."
    );
    describe_histogram!(
        "oma_grpc_request_duration_seconds",
        "gRPC call latency by method (a streaming call: until its stream ends)."
    );
    describe_gauge!(
        "oma_runtimes_connected",
        "Runtimes with a live stream to this control plane."
    );
    describe_gauge!(
        "oma_sessions",
        "Sessions by status (pending, idle, running, failed; deleted ones not counted), counted at each scrape."
    );
    describe_counter!("oma_events_stored_total", "Session events committed to the event log.");
    describe_histogram!("oma_event_commit_batch_events", "Events per commit of the event log.");
    describe_histogram!("oma_event_commit_seconds", "Latency of one event-log commit.");
    describe_gauge!(
        "oma_event_log_queue_jobs",
        "Frames of events waiting for the event log's writer."
    );
    describe_gauge!("oma_watches_open", "Open WatchSession streams.");
    describe_counter!(
        "oma_watch_lagged_total",
        "Times a watcher fell out of the live ring and re-read from the database."
    );
    describe_counter!(
        "oma_quota_refusals_total",
        "Requests refused by a tenant quota, by quota."
    );
    describe_histogram!(
        "oma_store_operation_seconds",
        "Database operations by name, kind (read/write) and outcome."
    );
}

/// Serves `/metrics` on `listener` until `shutdown` fires.
pub async fn serve(
    handle: PrometheusHandle,
    listener: TcpListener,
    service: Arc<Service>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    tokio::spawn(upkeep(handle.clone(), shutdown.clone()));
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || scrape(handle.clone(), service.clone())),
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// One scrape: the session counts are read now (one grouped count, as
/// often as Prometheus asks), then everything is rendered.
async fn scrape(handle: PrometheusHandle, service: Arc<Service>) -> impl axum::response::IntoResponse {
    match service.session_counts().await {
        Ok(counts) => {
            for (status, count) in counts {
                metrics::gauge!("oma_sessions", "status" => status).set(count as f64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not count sessions for the metrics"),
    }
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        handle.render(),
    )
}

/// The exporter's upkeep: it drains the histograms' recent samples into
/// their buckets, so memory stays bounded between scrapes.
async fn upkeep(handle: PrometheusHandle, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(UPKEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => handle.run_upkeep(),
            _ = shutdown.cancelled() => return,
        }
    }
}
