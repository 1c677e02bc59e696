//! One runtime stream, from Hello to its end.

use std::time::Duration;

use futures::{Stream, StreamExt as _};
use oma_proto::pb;
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::event_log::{AppendJob, Appended};
use super::registry::{LiveRuntime, OUTBOUND_CAPACITY};
use super::start::start_session_frame;
use crate::service::runtimes::STATUS_ONLINE;
use crate::service::{Machine, Service, ServiceError, ServiceResult};
use crate::store::now_ms;
use crate::store::rows::{self, RuntimeHello, SESSION_TOMBSTONE, SessionRow};
use oma_proto::validate::ValidationError;

/// What the stream reader needs to know about its connection.
#[derive(Clone)]
struct Conn {
    machine: Machine,
    epoch: i64,
    tx: mpsc::Sender<pb::ControlFrame>,
    /// Ends this stream (the machine reconnects and resends what is not
    /// stored).
    cancel: CancellationToken,
}

impl Service {
    /// Accepts a runtime stream: waits for Hello, registers the stream
    /// (superseding an older one), answers Welcome, resends what the machine
    /// is missing, and spawns the reader. Returns the outbound frames.
    pub async fn open_stream<S>(
        &self,
        machine: Machine,
        mut inbound: S,
    ) -> ServiceResult<(mpsc::Receiver<pb::ControlFrame>, oneshot::Receiver<ServiceError>)>
    where
        S: Stream<Item = Result<pb::AgentFrame, ServiceError>> + Send + Unpin + 'static,
    {
        let first = tokio::time::timeout(self.live_config.hello_timeout, inbound.next())
            .await
            .map_err(|_| ServiceError::FailedPrecondition("no Hello within the hello timeout".into()))?;
        let hello = match first {
            Some(Ok(pb::AgentFrame {
                frame: Some(pb::agent_frame::Frame::Hello(hello)),
            })) => hello,
            Some(Ok(_)) => {
                return Err(oma_proto::validate::ValidationError::new(
                    "frame",
                    "the first frame of a stream must be Hello",
                )
                .into());
            }
            Some(Err(e)) => return Err(e),
            None => return Err(ServiceError::FailedPrecondition("stream closed before Hello".into())),
        };
        if hello.machine_id != machine.machine_id {
            return Err(ServiceError::PermissionDenied(format!(
                "this machine token was paired with machine id {:?}, not {:?}; pair this machine with `oma-agent setup`",
                machine.machine_id, hello.machine_id
            )));
        }
        let manifest = hello.manifest.clone().unwrap_or_default();
        check_manifest(&manifest)?;

        // Register under a new epoch.
        let runtime_id = machine.runtime_id.to_string();
        let now = now_ms();
        let hello_row = RuntimeHello {
            status: STATUS_ONLINE.to_owned(),
            status_at: now,
            last_seen_at: Some(now),
            agent_version: truncate(&hello.agent_version, 64),
            os: truncate(&hello.os, 64),
            arch: truncate(&hello.arch, 64),
            manifest: manifest.encode_to_vec(),
            connection_epoch: 0,
        };
        let rid = runtime_id.clone();
        let (epoch, sessions) = self
            .store
            .write(move |conn| {
                let runtime = rows::get_runtime_for_auth(conn, &rid)?
                    .ok_or_else(|| ServiceError::Unauthenticated("the runtime was deleted; pair again".into()))?;
                let epoch = runtime.connection_epoch + 1;
                rows::runtime_hello(
                    conn,
                    &rid,
                    &RuntimeHello {
                        connection_epoch: epoch,
                        ..hello_row.clone()
                    },
                )?;
                Ok::<_, ServiceError>((epoch, rows::sessions_of_runtime(conn, &rid)?))
            })
            .await?;

        let (tx, rx) = mpsc::channel(OUTBOUND_CAPACITY);
        let cancel = CancellationToken::new();
        let live = LiveRuntime {
            epoch,
            instance_id: hello.instance_id.clone(),
            tx: tx.clone(),
            cancel: cancel.clone(),
        };
        if let Some(old) = self.live.registry.register(&runtime_id, live) {
            tracing::info!(
                runtime_id,
                old_epoch = old.epoch,
                epoch,
                "a new stream supersedes the old one"
            );
            let _ = old
                .tx
                .try_send(frame(pb::control_frame::Frame::Superseded(pb::Superseded {
                    by_instance_id: hello.instance_id.clone(),
                })));
            old.cancel.cancel();
        }
        tracing::info!(runtime_id, epoch, instance_id = hello.instance_id, "runtime connected");

        // Welcome, then whatever the machine is missing.
        let (welcome, resend) = self.welcome(&runtime_id, epoch, &hello, sessions).await?;
        let _ = tx.send(frame(pb::control_frame::Frame::Welcome(welcome))).await;
        for f in resend {
            let _ = tx.send(f).await;
        }

        let conn = Conn {
            machine,
            epoch,
            tx,
            cancel: cancel.clone(),
        };
        let service = self.clone();
        let (error_tx, error_rx) = oneshot::channel();
        tokio::spawn(async move {
            let error = service.read_stream(conn.clone(), inbound, cancel).await;
            service.stream_ended(&conn).await;
            if let Some(error) = error {
                let _ = error_tx.send(error);
            }
        });
        Ok((rx, error_rx))
    }

    async fn welcome(
        &self,
        runtime_id: &str,
        epoch: i64,
        hello: &pb::Hello,
        sessions: Vec<SessionRow>,
    ) -> ServiceResult<(pb::Welcome, Vec<pb::ControlFrame>)> {
        let held: std::collections::HashMap<&str, u64> = hello
            .sessions
            .iter()
            .map(|s| (s.session_id.as_str(), s.last_sent_seq))
            .collect();
        let mut welcome = pb::Welcome {
            runtime_id: runtime_id.to_owned(),
            connection_epoch: epoch as u64,
            heartbeat_interval_ms: self.live_config.heartbeat_interval.as_millis() as u32,
            sessions: Vec::new(),
            unknown_session_ids: Vec::new(),
        };
        let mut resend = Vec::new();
        let mut purge = Vec::new();
        for session in &sessions {
            let is_held = held.contains_key(session.id.as_str());
            if session.status == SESSION_TOMBSTONE {
                if is_held {
                    welcome.unknown_session_ids.push(session.id.clone());
                } else {
                    purge.push(session.id.clone());
                }
                continue;
            }
            if is_held {
                welcome.sessions.push(pb::SessionCursor {
                    session_id: session.id.clone(),
                    last_stored_seq: session.last_seq as u64,
                });
            } else {
                resend.push(frame(pb::control_frame::Frame::StartSession(start_session_frame(
                    session,
                )?)));
            }
            if let (Some(_), Some(prompt)) = (&session.current_turn_id, &session.current_prompt)
                && let Ok(prompt) = pb::Prompt::decode(prompt.as_slice())
            {
                resend.push(frame(pb::control_frame::Frame::Prompt(prompt)));
                resend.extend(self.decided_answers(&session.id).await?);
            }
        }
        let known: std::collections::HashSet<&str> = sessions.iter().map(|s| s.id.as_str()).collect();
        for held_id in held.keys() {
            if !known.contains(held_id) {
                welcome.unknown_session_ids.push((*held_id).to_owned());
            }
        }
        if !purge.is_empty() {
            let rid = runtime_id.to_owned();
            self.store
                .write(move |conn| {
                    for id in &purge {
                        rows::purge_session(conn, &rid, id)?;
                    }
                    Ok::<_, ServiceError>(())
                })
                .await?;
        }
        Ok((welcome, resend))
    }

    /// Answers already decided for a session's running turn: resent after a
    /// reconnect in case the machine never got them (it ignores repeats).
    async fn decided_answers(&self, session_id: &str) -> ServiceResult<Vec<pb::ControlFrame>> {
        let sid = session_id.to_owned();
        let rows = self
            .store
            .read(move |conn| {
                use crate::store::schema::permission_requests as p;
                use diesel::prelude::*;
                Ok::<_, ServiceError>(
                    p::table
                        .filter(p::session_id.eq(&sid).and(p::decided_at.is_not_null()))
                        .select(rows::PermissionRow::as_select())
                        .load(conn)
                        .map_err(crate::store::StoreError::from)?,
                )
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                frame(pb::control_frame::Frame::PermissionAnswer(pb::PermissionAnswer {
                    session_id: r.session_id,
                    request_id: r.request_id,
                    cancelled: r.option_id.is_none(),
                    option_id: r.option_id.unwrap_or_default(),
                }))
            })
            .collect())
    }

    /// Reads frames until the stream ends; returns why when the machine
    /// (not the network) is at fault, so the stream ends with that status.
    async fn read_stream<S>(&self, conn: Conn, mut inbound: S, cancel: CancellationToken) -> Option<ServiceError>
    where
        S: Stream<Item = Result<pb::AgentFrame, ServiceError>> + Send + Unpin + 'static,
    {
        let runtime_id = conn.machine.runtime_id.to_string();
        // Acks go out in order, after each append is durable, without
        // making the reader wait for commits (so batches can form).
        let (ack_tx, ack_rx) = mpsc::channel::<(String, oneshot::Receiver<Result<Appended, ServiceError>>)>(4096);
        let acker = tokio::spawn(self.clone().send_acks(conn.clone(), ack_rx));
        let dead_after = self.live_config.heartbeat_interval * 3;
        let mut last_touch = std::time::Instant::now();
        let mut final_error = None;
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => break,
                next = tokio::time::timeout(dead_after, inbound.next()) => next,
            };
            let frame = match next {
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
                    final_error = matches!(e, ServiceError::ResourceExhausted(_)).then_some(e);
                    break;
                }
                Ok(Some(Ok(frame))) => frame,
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
                    .write(move |c| Ok::<_, ServiceError>(rows::touch_runtime(c, &rid, epoch, now_ms())?))
                    .await;
            }
            if let Err(e) = self.handle_frame(&conn, frame, &ack_tx).await {
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
        frame_in: pb::AgentFrame,
        ack_tx: &mpsc::Sender<(String, oneshot::Receiver<Result<Appended, ServiceError>>)>,
    ) -> ServiceResult<()> {
        use pb::agent_frame::Frame;
        let runtime_id = conn.machine.runtime_id.to_string();
        match frame_in.frame {
            Some(Frame::Heartbeat(h)) => {
                let _ = conn.tx.send(frame(pb::control_frame::Frame::Heartbeat(h))).await;
            }
            Some(Frame::Event(e)) => {
                let event = e
                    .event
                    .ok_or_else(|| ServiceError::FailedPrecondition("event frame without an event".into()))?;
                self.queue_events(conn, vec![event], ack_tx).await?;
            }
            Some(Frame::Events(batch)) => self.queue_events(conn, batch.events, ack_tx).await?,
            Some(Frame::SessionReady(ready)) => {
                let rid = runtime_id.clone();
                self.store
                    .write(move |c| {
                        if rows::session_of_runtime(c, &rid, &ready.session_id)?.is_some() {
                            rows::set_acp_session_id(c, &ready.session_id, &ready.acp_session_id)?;
                        }
                        Ok::<_, ServiceError>(())
                    })
                    .await?;
            }
            Some(Frame::SessionFailed(failed)) => {
                let rid = runtime_id.clone();
                self.store
                    .write(move |c| {
                        if rows::session_of_runtime(c, &rid, &failed.session_id)?.is_some() {
                            rows::finish_turn(
                                c,
                                &failed.session_id,
                                None,
                                crate::service::sessions::STATUS_FAILED,
                                now_ms(),
                            )?;
                        }
                        Ok::<_, ServiceError>(())
                    })
                    .await?;
            }
            Some(Frame::SessionDisposed(disposed)) => {
                let rid = runtime_id.clone();
                self.store
                    .write(move |c| Ok::<_, ServiceError>(rows::purge_session(c, &rid, &disposed.session_id)?))
                    .await?;
            }
            Some(Frame::ManifestUpdate(update)) => {
                let manifest = update.manifest.unwrap_or_default();
                check_manifest(&manifest)?;
                let bytes = manifest.encode_to_vec();
                self.store
                    .write(move |c| Ok::<_, ServiceError>(rows::set_runtime_manifest(c, &runtime_id, &bytes)?))
                    .await?;
            }
            Some(Frame::Ack(_)) => {}
            Some(Frame::Hello(_)) => {
                return Err(ServiceError::FailedPrecondition(
                    "Hello may only be the first frame".into(),
                ));
            }
            None => {
                return Err(ValidationError::new("frame", "is empty or of a kind this server does not know").into());
            }
        }
        Ok(())
    }

    async fn queue_events(
        &self,
        conn: &Conn,
        events: Vec<pb::SessionEvent>,
        ack_tx: &mpsc::Sender<(String, oneshot::Receiver<Result<Appended, ServiceError>>)>,
    ) -> ServiceResult<()> {
        // Group by session, keeping order.
        let mut by_session: Vec<(String, Vec<pb::SessionEvent>)> = Vec::new();
        for event in events {
            if event.seq == 0 {
                return Err(ValidationError::new("event.seq", "an event with seq 0: seqs start at 1").into());
            }
            match by_session.iter_mut().find(|(s, _)| *s == event.session_id) {
                Some((_, list)) => list.push(event),
                None => by_session.push((event.session_id.clone(), vec![event])),
            }
        }
        for (session_id, events) in by_session {
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
                .send((session_id, wait))
                .await
                .map_err(|_| ServiceError::Internal("ack task ended".into()))?;
        }
        Ok(())
    }

    async fn send_acks(
        self,
        conn: Conn,
        mut rx: mpsc::Receiver<(String, oneshot::Receiver<Result<Appended, ServiceError>>)>,
    ) {
        while let Some((session_id, wait)) = rx.recv().await {
            match wait.await {
                Ok(Ok(appended)) => {
                    let _ = conn
                        .tx
                        .send(frame(pb::control_frame::Frame::EventAck(pb::EventAck {
                            session_id: session_id.clone(),
                            seq: appended.last_stored_seq,
                        })))
                        .await;
                    for answer in appended.policy_answers {
                        let _ = conn
                            .tx
                            .send(frame(pb::control_frame::Frame::PermissionAnswer(answer)))
                            .await;
                    }
                    for request_id in appended.awaiting_person {
                        self.start_permission_timeout(session_id.clone(), request_id);
                    }
                    if appended.gap {
                        // Events are missing before what arrived: end the
                        // stream so the machine reconnects and resends from
                        // the cursor in its next Welcome.
                        tracing::warn!(session_id, "ending the stream to get missing events resent");
                        conn.cancel.cancel();
                    }
                    if appended.session_deleted {
                        let _ = conn
                            .tx
                            .send(frame(pb::control_frame::Frame::DisposeSession(pb::DisposeSession {
                                session_id: session_id.clone(),
                            })))
                            .await;
                    }
                }
                Ok(Err(ServiceError::NotFound(e))) => {
                    // Not this runtime's session: never stored, never acked.
                    tracing::warn!(session_id, error = %e, "events refused");
                }
                Ok(Err(e)) => {
                    // Not stored (the database failed even after retries):
                    // end the stream; the machine still holds the events and
                    // resends them after it reconnects.
                    tracing::error!(session_id, error = %e, "storing events failed; ending the stream");
                    conn.cancel.cancel();
                }
                Err(_) => {}
            }
        }
    }

    async fn stream_ended(&self, conn: &Conn) {
        let runtime_id = conn.machine.runtime_id.to_string();
        if self.live.registry.unregister(&runtime_id, conn.epoch) {
            let epoch = conn.epoch;
            let rid = runtime_id.clone();
            let result = self
                .store
                .write(move |c| Ok::<_, ServiceError>(rows::runtime_gone(c, &rid, epoch, now_ms())?))
                .await;
            if let Err(e) = result {
                tracing::error!(runtime_id, error = %e, "could not mark the runtime offline");
            }
            tracing::info!(runtime_id, epoch, "runtime disconnected");
        }
    }
}

pub(crate) fn frame(f: pb::control_frame::Frame) -> pb::ControlFrame {
    pb::ControlFrame { frame: Some(f) }
}

fn truncate(value: &str, max: usize) -> String {
    value.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// A manifest is the machine's word about itself: bounded and well-formed.
fn check_manifest(manifest: &pb::Manifest) -> ServiceResult<()> {
    if manifest.acp_agents.len() > 256 {
        return Err(oma_proto::validate::ValidationError::new("manifest.acp_agents", "more than 256 agents").into());
    }
    for (i, agent) in manifest.acp_agents.iter().enumerate() {
        oma_proto::validate::slug(&format!("manifest.acp_agents[{i}].id"), &agent.id)?;
        if agent.local_skills.len() > 10_000 {
            return Err(oma_proto::validate::ValidationError::new(
                format!("manifest.acp_agents[{i}].local_skills"),
                "more than 10000 skills",
            )
            .into());
        }
    }
    Ok(())
}
