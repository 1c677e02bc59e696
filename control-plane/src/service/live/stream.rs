//! One runtime stream, from Hello to its end.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use oma_proto::pb;
use oma_proto::validate::{MAX_FRAME_SESSIONS, ValidationError};
use prost::Message as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::event_log::{AppendJob, Appended};
use super::message::{AgentMessage, Hello};
use super::registry::{self, LiveRuntime, Outbound, OutboundFrames};
use super::start::start_session_frame;
use crate::service::runtimes::STATUS_ONLINE;
use crate::service::{Machine, Service, ServiceError, ServiceResult};
use crate::store::now_ms;
use crate::store::rows::{self, RuntimeHello, SESSION_TOMBSTONE, SessionHead};

/// Bytes of one runtime's events handed to the event log and not yet
/// committed. The reader waits for commits beyond this, so a machine that
/// sends faster than the database stores holds bounded memory (it is held
/// back by flow control instead). At least the largest message.
const IN_FLIGHT_BYTES: usize = 4 * oma_proto::MAX_MESSAGE_BYTES;

/// Most answered appends one ack round takes (bounds the work between two
/// waits, not the acks: the rest follow in the next round).
const MAX_COALESCED_ACKS: usize = 1024;

/// What the stream reader needs to know about its connection.
#[derive(Clone)]
struct Conn {
    machine: Machine,
    epoch: i64,
    outbound: Outbound,
    /// Ends this stream (the machine reconnects and resends what is not
    /// stored).
    cancel: CancellationToken,
    /// The budget of [`IN_FLIGHT_BYTES`].
    in_flight: Arc<Semaphore>,
}

/// What a new stream resends after Welcome.
enum Resend {
    Frame(pb::ControlFrame),
    /// A session the machine does not hold: its StartSession.
    Start(String),
}

/// An append whose ack goes out once it is durable.
struct PendingAck {
    session_id: String,
    wait: oneshot::Receiver<Result<Appended, ServiceError>>,
    /// Its bytes of the in-flight budget, returned once it is answered.
    in_flight: OwnedSemaphorePermit,
}

impl Service {
    /// Accepts a runtime stream: waits for Hello, registers the stream
    /// (superseding an older one), answers Welcome, resends what the machine
    /// is missing, and spawns the reader. Returns the outbound frames.
    pub async fn open_stream<S>(
        &self,
        machine: Machine,
        mut inbound: S,
    ) -> ServiceResult<(OutboundFrames, oneshot::Receiver<ServiceError>)>
    where
        S: Stream<Item = Result<AgentMessage, ServiceError>> + Send + Unpin + 'static,
    {
        let first = tokio::time::timeout(self.live_config.hello_timeout, inbound.next())
            .await
            .map_err(|_| ServiceError::FailedPrecondition("no Hello within the hello timeout".into()))?;
        let hello = match first {
            Some(Ok(AgentMessage::Hello(hello))) => hello,
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
        // (The frame was validated on receipt: ids, labels, manifest.)

        // Register under a new epoch.
        let runtime_id = machine.runtime_id.to_string();
        let now = now_ms();
        let hello_row = RuntimeHello {
            status: STATUS_ONLINE.to_owned(),
            status_at: now,
            last_seen_at: Some(now),
            agent_version: hello.agent_version.clone(),
            os: hello.os.clone(),
            arch: hello.arch.clone(),
            manifest: hello.manifest.clone(),
            connection_epoch: 0,
        };
        let rid = runtime_id.clone();
        let (epoch, sessions) = self
            .store
            .write("open_stream", move |conn| {
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
                Ok::<_, ServiceError>((epoch, rows::session_heads_of_runtime(conn, &rid)?))
            })
            .await?;

        let cancel = CancellationToken::new();
        let (outbound, mut frames) = registry::outbound(&runtime_id, self.live_config.send_timeout, cancel.clone());
        let live = LiveRuntime {
            epoch,
            instance_id: hello.instance_id.clone(),
            outbound: outbound.clone(),
            cancel: cancel.clone(),
        };
        if let Some(old) = self.live.registry.register(&runtime_id, live) {
            tracing::info!(
                runtime_id,
                old_epoch = old.epoch,
                epoch,
                "a new stream supersedes the old one"
            );
            old.outbound
                .end_with(frame(pb::control_frame::Frame::Superseded(pb::Superseded {
                    by_instance_id: hello.instance_id.clone(),
                })));
        }
        tracing::info!(runtime_id, epoch, instance_id = hello.instance_id, "runtime connected");

        let conn = Conn {
            machine,
            epoch,
            outbound: outbound.clone(),
            cancel: cancel.clone(),
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT_BYTES)),
        };
        // Welcome first (ahead of anything queued since the registration),
        // then whatever the machine is missing.
        let (welcome, resend) = match self.welcome(&runtime_id, epoch, &hello, sessions).await {
            Ok(welcome) => welcome,
            Err(e) => {
                // Registered but never served: unregister it now.
                outbound.end();
                self.stream_ended(&conn).await;
                return Err(e);
            }
        };
        frames.lead_with(frame(pb::control_frame::Frame::Welcome(welcome)));
        // Resent beside the reader, which must keep reading (heartbeats,
        // acks) while a large backlog waits for room in the queue.
        // Every task of this stream logs under its runtime and epoch.
        let span = tracing::info_span!("runtime_stream", runtime_id = %runtime_id, epoch = conn.epoch);
        tokio::spawn(
            self.clone()
                .resend(runtime_id.clone(), outbound, resend)
                .instrument(span.clone()),
        );

        let service = self.clone();
        let (error_tx, error_rx) = oneshot::channel();
        tokio::spawn(
            async move {
                let error = service.read_stream(conn.clone(), inbound, cancel).await;
                service.stream_ended(&conn).await;
                if let Some(error) = error {
                    let _ = error_tx.send(error);
                }
            }
            .instrument(span),
        );
        Ok((frames, error_rx))
    }

    /// Sends what a new stream's machine is missing. Starts are built one
    /// at a time, when there is room for them: each can be megabytes, and a
    /// machine that does not read must not make the server hold them all.
    async fn resend(self, runtime_id: String, outbound: Outbound, resend: Vec<Resend>) {
        for item in resend {
            let f = match item {
                Resend::Frame(f) => f,
                Resend::Start(session_id) => match self.start_frame(&runtime_id, session_id).await {
                    Some(f) => f,
                    None => continue,
                },
            };
            if outbound.send(f).await.is_err() {
                break; // the stream ended (or stopped reading and was ended)
            }
        }
    }

    /// The StartSession frame of a session of this runtime, unless it is
    /// gone meanwhile.
    async fn start_frame(&self, runtime_id: &str, session_id: String) -> Option<pb::ControlFrame> {
        let rid = runtime_id.to_owned();
        let sid = session_id.clone();
        let row = self
            .store
            .read("start_frame", move |conn| {
                Ok::<_, ServiceError>(rows::session_of_runtime(conn, &rid, &sid)?)
            })
            .await;
        match row {
            Ok(Some(session)) if session.status != SESSION_TOMBSTONE => match start_session_frame(&session) {
                Ok(start) => Some(frame(pb::control_frame::Frame::StartSession(start))),
                Err(e) => {
                    tracing::error!(runtime_id, session_id, error = %e, "cannot build a StartSession frame");
                    None
                }
            },
            Ok(_) => None,
            Err(e) => {
                tracing::error!(runtime_id, session_id, error = %e, "cannot read a session to resend its start");
                None
            }
        }
    }

    async fn welcome(
        &self,
        runtime_id: &str,
        epoch: i64,
        hello: &Hello,
        sessions: Vec<SessionHead>,
    ) -> ServiceResult<(pb::Welcome, Vec<Resend>)> {
        let held: HashMap<&str, u64> = hello
            .held_sessions
            .iter()
            .map(|s| (s.session_id.as_str(), s.last_sent_seq))
            .collect();
        let known: std::collections::HashSet<&str> = sessions.iter().map(|s| s.id.as_str()).collect();
        let mut welcome = pb::Welcome {
            runtime_id: runtime_id.to_owned(),
            connection_epoch: epoch as u64,
            heartbeat_interval_ms: self.live_config.heartbeat_interval.as_millis() as u32,
            sessions: Vec::new(),
            unknown_session_ids: held
                .keys()
                .filter(|id| !known.contains(*id))
                .map(|id| (*id).to_owned())
                .collect(),
        };
        let mut resend = Vec::new();
        let mut purge = Vec::new();
        for session in sessions {
            let is_held = held.contains_key(session.id.as_str());
            if session.status == SESSION_TOMBSTONE {
                if is_held {
                    welcome.unknown_session_ids.push(session.id);
                } else {
                    purge.push(session.id);
                }
                continue;
            }
            let running = match (&session.current_turn_id, &session.current_prompt) {
                (Some(_), Some(prompt)) => pb::Prompt::decode(prompt.as_slice()).ok(),
                _ => None,
            };
            let session_id = session.id.clone();
            if is_held {
                welcome.sessions.push(pb::SessionCursor {
                    session_id: session.id.clone(),
                    last_stored_seq: session.last_seq as u64,
                });
            } else {
                resend.push(Resend::Start(session.id));
            }
            if let Some(prompt) = running {
                resend.push(Resend::Frame(frame(pb::control_frame::Frame::Prompt(prompt))));
                resend.extend(self.decided_answers(&session_id).await?.into_iter().map(Resend::Frame));
            }
        }
        if !purge.is_empty() {
            let rid = runtime_id.to_owned();
            self.store
                .write("welcome", move |conn| {
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
            .read("decided_answers", move |conn| {
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

    /// Answers each append once it is durable: the ack, then what the
    /// commit decided (policy answers, permission timeouts, a dispose). Sends
    /// that time out end the stream (the machine stopped reading); the
    /// effects here still happen. Acks are cumulative: of the appends
    /// answered together (a commit answers its whole batch at once), a
    /// session's later ack covers its earlier ones.
    async fn send_acks(self, conn: Conn, mut rx: mpsc::Receiver<PendingAck>) {
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
                })))
                .await;
        }
    }

    async fn stream_ended(&self, conn: &Conn) {
        let runtime_id = conn.machine.runtime_id.to_string();
        if self.live.registry.unregister(&runtime_id, conn.epoch) {
            let epoch = conn.epoch;
            let rid = runtime_id.clone();
            let result = self
                .store
                .write("stream_ended", move |c| {
                    Ok::<_, ServiceError>(rows::runtime_gone(c, &rid, epoch, now_ms())?)
                })
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
