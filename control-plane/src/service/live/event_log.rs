//! The session event log's writer: group commit.
//!
//! Every runtime stream hands its events to one writer task. The writer
//! takes whatever is pending across all streams and sessions, stores it in
//! one transaction, and only after the commit answers each stream (which
//! then acks to its machine) and publishes to watchers. Each event is stored
//! at exactly the seq the machine gave it: a seq already stored is a resend
//! and is skipped, a gap stops that session's batch (the machine resends
//! from the last stored seq after its next Welcome).

use std::sync::Arc;

use oma_proto::model::{AgentSpec, PermissionPolicy};
use oma_proto::pb;
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};

use super::hub::Hub;
use crate::service::ServiceError;
use crate::service::sessions::{STATUS_FAILED, STATUS_IDLE, STATUS_PENDING, STATUS_RUNNING};
use crate::store::rows::{self, EventRow, PermissionRow, SESSION_TOMBSTONE};
use crate::store::{DbConn, Store, StoreError, now_ms};

/// Most events one transaction takes.
const MAX_BATCH_EVENTS: usize = 5000;

/// Events of one session from one stream.
pub struct AppendJob {
    pub tenant_id: String,
    pub runtime_id: String,
    pub session_id: String,
    pub events: Vec<pb::SessionEvent>,
    pub reply: oneshot::Sender<Result<Appended, ServiceError>>,
}

/// What happened to a job.
#[derive(Debug, Clone)]
pub struct Appended {
    /// The highest seq now durably stored for the session (ack this).
    pub last_stored_seq: u64,
    /// Permission answers decided by the agent's policy, to send to the
    /// machine now.
    pub policy_answers: Vec<pb::PermissionAnswer>,
    /// Permission requests that wait for a person (start their timeout).
    pub awaiting_person: Vec<String>,
    /// The session is deleted: the machine should dispose of it.
    pub session_deleted: bool,
    /// The events skipped a seq: the machine must resend from
    /// `last_stored_seq + 1` (it does after a reconnect).
    pub gap: bool,
}

#[derive(Clone)]
pub struct EventLog {
    tx: mpsc::Sender<AppendJob>,
}

impl EventLog {
    /// Starts the writer task.
    pub fn start(store: Store, hub: Arc<Hub>) -> EventLog {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(writer(store, hub, rx));
        EventLog { tx }
    }

    /// Queues events; the answer comes after they are durable.
    pub async fn append(&self, job: AppendJob) -> Result<(), ServiceError> {
        self.tx
            .send(job)
            .await
            .map_err(|_| ServiceError::Internal("the event writer has stopped".into()))
    }
}

async fn writer(store: Store, hub: Arc<Hub>, mut rx: mpsc::Receiver<AppendJob>) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        let mut count = jobs[0].events.len();
        while count < MAX_BATCH_EVENTS {
            match rx.try_recv() {
                Ok(job) => {
                    count += job.events.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        commit_batch(&store, &hub, jobs).await;
    }
}

/// One job's result inside the transaction.
struct JobResult {
    appended: Appended,
    stored: Vec<Arc<pb::SessionEvent>>,
}

async fn commit_batch(store: &Store, hub: &Hub, jobs: Vec<AppendJob>) {
    let (metas, replies): (Vec<_>, Vec<_>) = jobs
        .into_iter()
        .map(|j| ((j.tenant_id, j.runtime_id, j.session_id, j.events), j.reply))
        .unzip();
    let metas = Arc::new(metas);
    let input = metas.clone();
    let result = store
        .write(move |conn| {
            let mut results = Vec::with_capacity(input.len());
            for (tenant, runtime, session, events) in input.iter() {
                // A database error fails the whole batch (and is retried as
                // one transaction); a refused job fails alone.
                results.push(append_session(conn, tenant, runtime, session, events)?);
            }
            Ok::<_, ServiceError>(results)
        })
        .await;
    match result {
        Ok(results) => {
            for (((_, _, session_id, _), reply), result) in metas.iter().zip(replies).zip(results) {
                match result {
                    Ok(job) => {
                        hub.publish(session_id, &job.stored);
                        let _ = reply.send(Ok(job.appended));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "storing session events failed");
            let message = e.to_string();
            for reply in replies {
                let _ = reply.send(Err(ServiceError::Internal(message.clone())));
            }
        }
    }
}

/// Stores one session's events inside the batch transaction. The outer
/// error is a database error (the batch fails); the inner one refuses this
/// job alone (not the runtime's session) without rolling back the others.
fn append_session(
    conn: &mut DbConn,
    tenant: &str,
    runtime: &str,
    session_id: &str,
    events: &[pb::SessionEvent],
) -> Result<Result<JobResult, ServiceError>, StoreError> {
    let refusal = || ServiceError::NotFound(format!("session {session_id} is not a session of this runtime"));
    let Some(session) = rows::session_of_runtime(conn, runtime, session_id)? else {
        return Ok(Err(refusal()));
    };
    if session.tenant_id != tenant {
        return Ok(Err(refusal()));
    }
    let mut appended = Appended {
        last_stored_seq: session.last_seq as u64,
        policy_answers: Vec::new(),
        awaiting_person: Vec::new(),
        session_deleted: session.status == SESSION_TOMBSTONE,
        gap: false,
    };
    if appended.session_deleted {
        // Acknowledge so the machine stops resending; nothing is kept.
        appended.last_stored_seq = events
            .iter()
            .map(|e| e.seq)
            .max()
            .unwrap_or(0)
            .max(appended.last_stored_seq);
        return Ok(Ok(JobResult {
            appended,
            stored: Vec::new(),
        }));
    }
    let now = now_ms();
    let mut last = session.last_seq as u64;
    let mut rows_out = Vec::new();
    let mut stored = Vec::new();
    let mut policy: Option<PermissionPolicy> = None;
    let mut sorted: Vec<&pb::SessionEvent> = events.iter().collect();
    sorted.sort_by_key(|e| e.seq);
    for event in sorted {
        if event.seq <= last {
            continue; // a resend of a stored event
        }
        if event.seq != last + 1 {
            tracing::warn!(
                session_id,
                expected = last + 1,
                got = event.seq,
                "gap in session events; the machine must resend"
            );
            appended.gap = true;
            break;
        }
        let mut event = event.clone();
        event.session_id = session_id.to_owned();
        if event.time.is_none() {
            event.time = Some(crate::service::timestamp(now));
        }
        apply_effects(
            conn,
            &session.id,
            &session.spec,
            &mut policy,
            &event,
            now,
            &mut appended,
        )?;
        rows_out.push(EventRow {
            session_id: session_id.to_owned(),
            seq: event.seq as i64,
            created_at: now,
            payload: event.encode_to_vec(),
        });
        last = event.seq;
        stored.push(Arc::new(event));
    }
    if !rows_out.is_empty() {
        rows::insert_events(conn, &rows_out)?;
        rows::set_last_seq(conn, session_id, last as i64, now)?;
    }
    appended.last_stored_seq = last;
    Ok(Ok(JobResult { appended, stored }))
}

/// What an event changes beyond the log: the session's status, its turn,
/// and permission requests.
fn apply_effects(
    conn: &mut DbConn,
    session_id: &str,
    spec_json: &str,
    policy: &mut Option<PermissionPolicy>,
    event: &pb::SessionEvent,
    now: i64,
    appended: &mut Appended,
) -> Result<(), StoreError> {
    use pb::session_event::Kind;
    match &event.kind {
        Some(Kind::TurnStarted(_)) => rows::set_session_status(conn, session_id, STATUS_RUNNING, now)?,
        Some(Kind::TurnEnded(_)) => rows::finish_turn(conn, session_id, Some(&event.turn_id), STATUS_IDLE, now)?,
        Some(Kind::StatusChanged(change)) => {
            if !change.acp_session_id.is_empty() {
                rows::set_acp_session_id(conn, session_id, &change.acp_session_id)?;
            }
            match pb::SessionStatus::try_from(change.status) {
                Ok(pb::SessionStatus::Idle) => rows::set_session_status(conn, session_id, STATUS_IDLE, now)?,
                Ok(pb::SessionStatus::Pending) => rows::set_session_status(conn, session_id, STATUS_PENDING, now)?,
                Ok(pb::SessionStatus::Failed) => rows::finish_turn(conn, session_id, None, STATUS_FAILED, now)?,
                _ => {}
            }
        }
        Some(Kind::PermissionRequested(request)) => {
            let option_ids: Vec<&str> = request.options.iter().map(|o| o.option_id.as_str()).collect();
            let find = |kind: pb::PermissionOptionKind| {
                request
                    .options
                    .iter()
                    .find(|o| o.kind == kind as i32)
                    .map(|o| o.option_id.clone())
            };
            let reject =
                find(pb::PermissionOptionKind::RejectOnce).or_else(|| find(pb::PermissionOptionKind::RejectAlways));
            rows::insert_permission(
                conn,
                &PermissionRow {
                    session_id: session_id.to_owned(),
                    request_id: request.request_id.clone(),
                    tenant_id: String::new(),
                    option_ids: serde_json::to_string(&option_ids).unwrap_or_else(|_| "[]".into()),
                    reject_option_id: reject.clone(),
                    created_at: now,
                    decided_at: None,
                    decided_by: None,
                    option_id: None,
                },
            )?;
            let policy = *policy.get_or_insert_with(|| {
                serde_json::from_str::<AgentSpec>(spec_json)
                    .map(|s| s.permission_policy)
                    .unwrap_or_default()
            });
            // allow_once, never allow_always: Gemini refuses the latter in an
            // untrusted folder, and "always" would outlive this request.
            let decision = match policy {
                PermissionPolicy::Ask => None,
                PermissionPolicy::AllowOnce => Some(find(pb::PermissionOptionKind::AllowOnce)),
                PermissionPolicy::Reject => Some(reject),
            };
            match decision {
                None => appended.awaiting_person.push(request.request_id.clone()),
                Some(option_id) => {
                    if rows::decide_permission(
                        conn,
                        session_id,
                        &request.request_id,
                        option_id.as_deref(),
                        "policy",
                        now,
                    )? {
                        appended.policy_answers.push(pb::PermissionAnswer {
                            session_id: session_id.to_owned(),
                            request_id: request.request_id.clone(),
                            cancelled: option_id.is_none(),
                            option_id: option_id.unwrap_or_default(),
                        });
                    }
                }
            }
        }
        Some(Kind::PermissionDecided(decided)) => {
            // The machine cancelled it (turn cancelled or ended): record that
            // unless a decision exists already.
            let option = (!decided.cancelled).then_some(decided.option_id.as_str());
            rows::decide_permission(conn, session_id, &decided.request_id, option, &decided.decided_by, now)?;
        }
        _ => {}
    }
    Ok(())
}
