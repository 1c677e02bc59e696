//! One runtime stream, from Hello to its end: registration, Welcome, what
//! the machine is missing. Its frames are read in [`super::reader`] and
//! answered in [`super::acks`].

use std::collections::HashMap;
use std::sync::Arc;

use futures::{Stream, StreamExt as _};
use oma_proto::pb;
use prost::Message as _;
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::message::{AgentMessage, Hello};
use super::reader::IN_FLIGHT_BYTES;
use super::registry::{self, LiveRuntime, Outbound, OutboundFrames};
use super::start::start_session_frame;
use crate::service::runtimes::STATUS_ONLINE;
use crate::service::{Machine, Service, ServiceError, ServiceResult};
use crate::store::now_ms;
use crate::store::rows::{self, RuntimeHello, SESSION_TOMBSTONE, SessionHead};

/// What the stream's reader and acker need to know about its connection.
#[derive(Clone)]
pub(super) struct Conn {
    pub(super) machine: Machine,
    pub(super) epoch: i64,
    pub(super) outbound: Outbound,
    /// Ends this stream (the machine reconnects and resends what is not
    /// stored).
    pub(super) cancel: CancellationToken,
    /// The budget of [`IN_FLIGHT_BYTES`].
    pub(super) in_flight: Arc<Semaphore>,
}

/// What a new stream resends after Welcome.
enum Resend {
    Frame(Box<pb::ControlFrame>),
    /// A session the machine does not hold: its StartSession.
    Start(String),
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
            replica_id: Some(self.live_config.replica_id.clone()),
            lease_expires_at: Some(now + self.live_config.lease_ttl().as_millis() as i64),
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
                Resend::Frame(f) => *f,
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
                resend.push(Resend::Frame(Box::new(frame(pb::control_frame::Frame::Prompt(prompt)))));
                resend.extend(
                    self.decided_answers(&session_id)
                        .await?
                        .into_iter()
                        .map(|f| Resend::Frame(Box::new(f))),
                );
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
                    decided_by: r.decided_by.unwrap_or_default(),
                }))
            })
            .collect())
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
