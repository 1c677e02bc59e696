//! Runtime leases: which replica holds each runtime's stream, kept in the
//! database so that replicas sharing it agree on who is online. A replica
//! renews the leases of its streams every heartbeat interval and marks
//! offline any runtime whose lease ran out (its replica died without
//! saying so); at its start it marks offline only what it held itself.

use tokio_util::sync::CancellationToken;

use crate::service::{Service, ServiceError, ServiceResult};
use crate::store::{now_ms, rows};

impl Service {
    /// After a start no stream is live here yet: the runtimes this replica
    /// held in its earlier life go offline, and those whose lease ran out;
    /// the runtimes of other live replicas stay online.
    pub async fn mark_runtimes_offline(&self) -> ServiceResult<usize> {
        let replica_id = self.live_config.replica_id.clone();
        self.store
            .write("mark_runtimes_offline", move |conn| {
                Ok::<_, ServiceError>(rows::mark_offline_at_start(conn, &replica_id, now_ms())?)
            })
            .await
    }

    /// Renews this replica's leases and expires the others' stale ones,
    /// every heartbeat interval, until `shutdown`.
    pub async fn keep_leases(&self, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(self.live_config.heartbeat_interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ttl_ms = self.live_config.lease_ttl().as_millis() as i64;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            let replica_id = self.live_config.replica_id.clone();
            let result = self
                .store
                .write("keep_leases", move |conn| {
                    let now = now_ms();
                    rows::renew_leases(conn, &replica_id, now + ttl_ms)?;
                    Ok::<_, ServiceError>(rows::expire_leases(conn, now)?)
                })
                .await;
            match result {
                Ok(0) => {}
                Ok(expired) => tracing::info!(
                    expired,
                    "runtimes whose replica stopped renewing their lease are offline"
                ),
                Err(e) => tracing::warn!(error = %e, "could not renew the runtime leases; the next interval retries"),
            }
        }
    }
}
