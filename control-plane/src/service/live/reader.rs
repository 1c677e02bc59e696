//! The reader of a runtime stream: each checked message from the machine,
//! and its events handed to the event log within the in-flight budget.

use std::collections::HashMap;
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use oma_proto::pb;
use oma_proto::validate::{MAX_FRAME_SESSIONS, ValidationError};
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::acks::PendingAck;
use super::event_log::AppendJob;
use super::message::AgentMessage;
use super::stream::{Conn, frame};
use crate::service::{Service, ServiceError, ServiceResult};
use crate::store::now_ms;
use crate::store::rows;

/// Bytes of one runtime's events handed to the event log and not yet
/// committed. The reader waits for commits beyond this, so a machine that
/// sends faster than the database stores holds bounded memory (it is held
/// back by flow control instead). At least the largest message.
pub(super) const IN_FLIGHT_BYTES: usize = 4 * oma_proto::MAX_MESSAGE_BYTES;

impl Service {
    /// Reads frames until the stream ends; returns why when the machine
    /// (not the network) is at fault, so the stream ends with that status.
    pub(super) async fn read_stream<S>(
        &self,
        conn: Conn,
        mut inbound: S,
        cancel: CancellationToken,
    ) -> Option<ServiceError>
    where
        S: Stream<Item = Result<AgentMessage, ServiceError>> + Send + Unpin + 'static,
    {
        let runtime_id = conn.machine.runtime_id.to_string();
        // Acks go out in order, after each append is durable, without
        // making the reader wait for commits (so batches can form).
        let (ack_tx, ack_rx) = mpsc::channel::<PendingAck>(4096);
        let acker = tokio::spawn(self.clone().send_acks(conn.clone(), ack_rx).in_current_span());
        let dead_after = self.live_config.heartbeat_interval * 3;
        let mut last_touch = std::time::Instant::now();
        let mut final_error = None;
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => break,
                next = tokio::time::timeout(dead_after, inbound.next()) => next,
            };
            let message = match next {
                Err(_) => {
                    tracing::warn!(
                        runtime_id,
                        ?dead_after,
                        "no frame from the runtime in time; declaring the stream dead"
                    );
                    break;
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    tracing::info!(runtime_id, error = %e, "runtime stream failed");
                    // A refused frame is the machine's fault: say why.
                    final_error =
                        matches!(e, ServiceError::ResourceExhausted(_) | ServiceError::InvalidArgument(_)).then_some(e);
                    break;
                }
                Ok(Some(Ok(message))) => message,
            };
            if !self.live.registry.is_current(&runtime_id, conn.epoch) {
                break; // superseded: frames of a stale stream are ignored
            }
            if last_touch.elapsed() > Duration::from_secs(30) {
                last_touch = std::time::Instant::now();
                let rid = runtime_id.clone();
                let epoch = conn.epoch;
                let _ = self
                    .store
                    .write("touch_runtime", move |c| {
                        Ok::<_, ServiceError>(rows::touch_runtime(c, &rid, epoch, now_ms())?)
                    })
                    .await;
            }
            // Also cut short when the stream is ended meanwhile (e.g. the
            // machine stopped reading its acks while this waits for room):
            // whatever was not acked is resent after the reconnect.
            let handled = tokio::select! {
                _ = cancel.cancelled() => break,
                handled = self.handle_frame(&conn, message, &ack_tx) => handled,
            };
            if let Err(e) = handled {
                tracing::warn!(runtime_id, error = %e, "bad frame from runtime; closing the stream");
                final_error = Some(e);
                break;
            }
        }
        drop(ack_tx);
        let _ = acker.await;
        final_error
    }

    async fn handle_frame(
        &self,
        conn: &Conn,
        message: AgentMessage,
        ack_tx: &mpsc::Sender<PendingAck>,
    ) -> ServiceResult<()> {
        let runtime_id = conn.machine.runtime_id.to_string();
        match message {
            AgentMessage::Heartbeat { sent_at_ms } => {
                // A runtime that does not take it in time is ended by the send.
                let echo = pb::Heartbeat { sent_at_ms };
                let _ = conn
                    .outbound
                    .send(frame(pb::control_frame::Frame::Heartbeat(echo)))
                    .await;
            }
            AgentMessage::Events(events) => self.queue_events(conn, events, ack_tx).await?,
            AgentMessage::SessionReady {
                session_id,
                acp_session_id,
            } => {
                self.store
                    .write("session_ready", move |c| {
                        if rows::session_of_runtime(c, &runtime_id, &session_id)?.is_some() {
                            rows::set_acp_session_id(c, &session_id, &acp_session_id)?;
                        }
                        Ok::<_, ServiceError>(())
                    })
                    .await?;
            }
            AgentMessage::SessionFailed { session_id } => {
                self.store
                    .write("session_failed", move |c| {
                        if rows::session_of_runtime(c, &runtime_id, &session_id)?.is_some() {
                            rows::finish_turn(c, &session_id, None, crate::service::sessions::STATUS_FAILED, now_ms())?;
                        }
                        Ok::<_, ServiceError>(())
                    })
                    .await?;
            }
            AgentMessage::SessionDisposed { session_id } => {
                self.store
                    .write("session_disposed", move |c| {
                        Ok::<_, ServiceError>(rows::purge_session(c, &runtime_id, &session_id)?)
                    })
                    .await?;
            }
            AgentMessage::ManifestUpdate { manifest } => {
                self.store
                    .write("manifest_update", move |c| {
                        Ok::<_, ServiceError>(rows::set_runtime_manifest(c, &runtime_id, &manifest)?)
                    })
                    .await?;
            }
            AgentMessage::Ack => {}
            AgentMessage::DiffChunk(chunk) => {
                self.live.diffs.deliver(&runtime_id, chunk);
            }
            AgentMessage::Deregister => self.deregister_runtime(&runtime_id).await?,
            AgentMessage::Hello(_) => {
                return Err(ServiceError::FailedPrecondition(
                    "Hello may only be the first frame".into(),
                ));
            }
        }
        Ok(())
    }

    /// Hands a frame's events to the event log, one job per session in the
    /// order they came, and their acks to the acker.
    async fn queue_events(
        &self,
        conn: &Conn,
        events: Vec<pb::SessionEvent>,
        ack_tx: &mpsc::Sender<PendingAck>,
    ) -> ServiceResult<()> {
        // Group by session, keeping order, in one pass (a frame over many
        // sessions once cost a linear search per event). Nothing is queued
        // before the whole frame is known to be within the limits.
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut by_session: Vec<(String, Vec<pb::SessionEvent>, usize)> = Vec::new();
        for event in events {
            let bytes = event.encoded_len();
            if let Some(&i) = index.get(event.session_id.as_str()) {
                by_session[i].1.push(event);
                by_session[i].2 += bytes;
                continue;
            }
            if by_session.len() == MAX_FRAME_SESSIONS {
                return Err(ValidationError::new(
                    "events.events",
                    format!("names more than {MAX_FRAME_SESSIONS} sessions; a frame carries events of at most {MAX_FRAME_SESSIONS}"),
                )
                .into());
            }
            index.insert(event.session_id.clone(), by_session.len());
            by_session.push((event.session_id.clone(), vec![event], bytes));
        }
        for (session_id, events, bytes) in by_session {
            // Waits while this runtime's earlier events are being committed.
            let in_flight = conn
                .in_flight
                .clone()
                .acquire_many_owned(bytes.clamp(1, IN_FLIGHT_BYTES) as u32)
                .await
                .map_err(|_| ServiceError::Internal("the in-flight budget was closed".into()))?;
            let (reply, wait) = oneshot::channel();
            self.live
                .event_log
                .append(AppendJob {
                    tenant_id: conn.machine.tenant_id.to_string(),
                    runtime_id: conn.machine.runtime_id.to_string(),
                    session_id: session_id.clone(),
                    events,
                    reply,
                })
                .await?;
            ack_tx
                .send(PendingAck {
                    session_id,
                    wait,
                    in_flight,
                })
                .await
                .map_err(|_| ServiceError::Internal("ack task ended".into()))?;
        }
        Ok(())
    }
}
