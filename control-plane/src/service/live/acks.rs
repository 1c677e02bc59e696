//! The acker of a runtime stream: acks go out in order once each append is
//! durable, coalesced per session, followed by what the commit decided.

use std::collections::HashMap;

use oma_proto::pb;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use super::event_log::Appended;
use super::stream::{Conn, frame};
use crate::service::{Service, ServiceError};

/// Most answered appends one ack round takes (bounds the work between two
/// waits, not the acks: the rest follow in the next round).
const MAX_COALESCED_ACKS: usize = 1024;

/// An append whose ack goes out once it is durable.
pub(super) struct PendingAck {
    pub(super) session_id: String,
    pub(super) wait: oneshot::Receiver<Result<Appended, ServiceError>>,
    /// Its bytes of the in-flight budget, returned once it is answered.
    pub(super) in_flight: OwnedSemaphorePermit,
}

impl Service {
    /// Answers each append once it is durable: the ack, then what the
    /// commit decided (policy answers, permission timeouts, a dispose). Sends
    /// that time out end the stream (the machine stopped reading); the
    /// effects here still happen. Acks are cumulative: of the appends
    /// answered together (a commit answers its whole batch at once), a
    /// session's later ack covers its earlier ones.
    pub(super) async fn send_acks(self, conn: Conn, mut rx: mpsc::Receiver<PendingAck>) {
        let runtime_id = conn.machine.runtime_id.to_string();
        let mut refused = 0u64;
        let mut next: Option<PendingAck> = None;
        loop {
            let first = match next.take() {
                Some(pending) => pending,
                None => match rx.recv().await {
                    Some(pending) => pending,
                    None => break,
                },
            };
            let mut answered = vec![(first.session_id, first.wait.await, first.in_flight)];
            while answered.len() < MAX_COALESCED_ACKS {
                let Ok(mut pending) = rx.try_recv() else { break };
                match pending.wait.try_recv() {
                    Err(oneshot::error::TryRecvError::Empty) => {
                        next = Some(pending);
                        break;
                    }
                    Ok(answer) => answered.push((pending.session_id, Ok(answer), pending.in_flight)),
                    Err(oneshot::error::TryRecvError::Closed) => {}
                }
            }
            // An ack that a later one of the same session covers is left
            // out, unless the commit decided something for it (the order of
            // acks and decisions stays as the commits made them).
            let mut last_of_session: HashMap<&str, usize> = HashMap::new();
            for (i, (session_id, answer, _)) in answered.iter().enumerate() {
                // Only an ack that goes out can cover earlier ones.
                if matches!(answer, Ok(Ok(_))) {
                    last_of_session.insert(session_id.as_str(), i);
                }
            }
            let last_of_session: Vec<bool> = answered
                .iter()
                .enumerate()
                .map(|(i, (session_id, _, _))| last_of_session.get(session_id.as_str()) == Some(&i))
                .collect();
            for ((session_id, answer, _in_flight), is_last) in answered.into_iter().zip(last_of_session) {
                match answer {
                    Ok(Ok(appended)) => {
                        if is_last || appended.decided_something() {
                            let ack = pb::EventAck {
                                session_id: session_id.clone(),
                                seq: appended.last_stored_seq,
                            };
                            let _ = conn.outbound.send(frame(pb::control_frame::Frame::EventAck(ack))).await;
                        }
                        self.apply_commit_effects(&conn, session_id, appended).await;
                    }
                    Ok(Err(ServiceError::NotFound(e))) => {
                        // Not this runtime's session: never stored, never acked.
                        // Said once per stream: a machine naming a thousand
                        // sessions per frame must not flood the log.
                        refused += 1;
                        if refused == 1 {
                            tracing::warn!(runtime_id, session_id, error = %e, "events refused");
                        }
                    }
                    Ok(Err(e)) => {
                        // Not stored (the database failed even after retries):
                        // end the stream; the machine still holds the events and
                        // resends them after it reconnects.
                        tracing::error!(runtime_id, session_id, error = %e, "storing events failed; ending the stream");
                        conn.cancel.cancel();
                    }
                    Err(_) => {}
                }
            }
        }
        if refused > 1 {
            tracing::warn!(
                runtime_id,
                refused,
                "events for sessions this runtime does not own were refused"
            );
        }
    }

    /// What a commit decided beyond the ack.
    async fn apply_commit_effects(&self, conn: &Conn, session_id: String, appended: Appended) {
        for answer in appended.policy_answers {
            let _ = conn
                .outbound
                .send(frame(pb::control_frame::Frame::PermissionAnswer(answer)))
                .await;
        }
        for request_id in appended.awaiting_person {
            self.start_permission_timeout(session_id.clone(), request_id);
        }
        if appended.gap {
            // Events are missing before what arrived: end the stream so the
            // machine reconnects and resends from the cursor in its next
            // Welcome.
            tracing::warn!(
                runtime_id = %conn.machine.runtime_id,
                session_id,
                "ending the stream to get missing events resent"
            );
            conn.cancel.cancel();
        }
        if appended.session_deleted {
            let _ = conn
                .outbound
                .send(frame(pb::control_frame::Frame::DisposeSession(pb::DisposeSession {
                    session_id,
                    delete_branch: false,
                })))
                .await;
        }
    }
}
