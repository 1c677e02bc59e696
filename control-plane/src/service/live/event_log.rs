//! The session event log's writer: group commit.
//!
//! Every runtime stream hands its events to one writer task. The writer
//! takes whatever is pending across all streams and sessions, stores it in
//! one transaction, and only after the commit answers each stream (which
//! then acks to its machine) and publishes to watchers. Each event is stored
//! at exactly the seq the machine gave it: a seq already stored is a resend
//! and is skipped, a gap stops that session's batch (the machine resends
//! from the last stored seq after its next Welcome).
//!
//! One job never fails another: frames are validated before they get here,
//! and should a job still hit a database error, the batch is stored again
//! with a savepoint around each job, so that only the failing job is
//! answered with the error (its stream ends; its machine resends) and every
//! other runtime's events in the batch are stored and acked. Transient
//! errors (SQLite busy, serialization failures) retry the whole batch.

use std::collections::HashMap;
use std::sync::Arc;

use oma_proto::model::{AgentSpec, PermissionPolicy};
use oma_proto::pb;
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};

use super::hub::Hub;
use super::permissions::{Offered, PolicyDecision, decide};
use crate::service::ServiceError;
use crate::service::sessions::{STATUS_FAILED, STATUS_IDLE, STATUS_PENDING, STATUS_RUNNING};
use crate::store::event_rows::{self, EventRow};
use crate::store::rows::{self, PermissionRow, SESSION_TOMBSTONE};
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

impl Appended {
    /// Whether the commit decided anything beyond the cursor.
    pub fn decided_something(&self) -> bool {
        !self.policy_answers.is_empty() || !self.awaiting_person.is_empty() || self.session_deleted || self.gap
    }

    /// An answer that only moves the ack cursor.
    fn cursor(last_stored_seq: u64) -> Appended {
        Appended {
            last_stored_seq,
            policy_answers: Vec::new(),
            awaiting_person: Vec::new(),
            session_deleted: false,
            gap: false,
        }
    }
}

#[derive(Clone)]
pub struct EventLog {
    tx: mpsc::Sender<AppendJob>,
}

impl EventLog {
    /// Starts the writer on a thread of its own: it blocks on the database
    /// anyway, and a thread that owns the loop saves a blocking-pool handoff
    /// and a task wakeup per batch.
    pub fn start(store: Store, hub: Arc<Hub>) -> EventLog {
        let (tx, rx) = mpsc::channel(4096);
        std::thread::Builder::new()
            .name("oma-event-log".into())
            .spawn(move || writer(&store, &hub, rx))
            .expect("cannot start the event log's writer thread");
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

/// Takes whatever is pending across all streams and sessions (up to
/// [`MAX_BATCH_EVENTS`]) and commits it as one batch; ends when every
/// sender is gone.
fn writer(store: &Store, hub: &Hub, mut rx: mpsc::Receiver<AppendJob>) {
    while let Some(first) = rx.blocking_recv() {
        let mut count = first.events.len();
        let mut jobs = vec![first];
        while count < MAX_BATCH_EVENTS {
            match rx.try_recv() {
                Ok(job) => {
                    count += job.events.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        metrics::gauge!("oma_event_log_queue_jobs").set(rx.len() as f64);
        commit_batch(store, hub, jobs);
    }
}

/// The jobs of one session in a batch, merged: the session is looked up
/// once, its events go into the batch's one multi-row INSERT, and its
/// `last_seq` is updated once, however many frames they came in.
struct SessionAppend {
    tenant_id: String,
    runtime_id: String,
    session_id: String,
    events: Vec<pb::SessionEvent>,
    /// The batch's jobs merged here, in arrival order (indices into the
    /// batch's replies).
    jobs: Vec<usize>,
}

/// One session's result inside the transaction.
struct SessionResult {
    appended: Appended,
    stored: Vec<Arc<pb::SessionEvent>>,
}

/// Whether the sessions of a batch are stored together (one transaction,
/// the fast path) or each inside its own savepoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isolation {
    Batch,
    PerSession,
}

/// Merges the jobs of a batch by session, keeping the order of first
/// arrival. The key includes the runtime and tenant the job came from, so
/// a job naming another runtime's session is kept apart and refused on its
/// own; two streams of one runtime (a superseded one still draining) merge
/// harmlessly, as their events are deduplicated by seq.
fn merge_by_session(
    jobs: Vec<AppendJob>,
) -> (Vec<SessionAppend>, Vec<oneshot::Sender<Result<Appended, ServiceError>>>) {
    let mut index: HashMap<(String, String, String), usize> = HashMap::new();
    let mut merged: Vec<SessionAppend> = Vec::new();
    let mut replies = Vec::with_capacity(jobs.len());
    for (n, job) in jobs.into_iter().enumerate() {
        replies.push(job.reply);
        let key = (job.tenant_id, job.runtime_id, job.session_id);
        match index.get(&key) {
            Some(&i) => {
                merged[i].events.extend(job.events);
                merged[i].jobs.push(n);
            }
            None => {
                index.insert(key.clone(), merged.len());
                let (tenant_id, runtime_id, session_id) = key;
                merged.push(SessionAppend {
                    tenant_id,
                    runtime_id,
                    session_id,
                    events: job.events,
                    jobs: vec![n],
                });
            }
        }
    }
    (merged, replies)
}

fn commit_batch(store: &Store, hub: &Hub, jobs: Vec<AppendJob>) {
    let (sessions, replies) = merge_by_session(jobs);
    let started = std::time::Instant::now();
    let mut result = store.write_blocking("append_events", |conn| {
        store_sessions(conn, &sessions, Isolation::Batch)
    });
    if let Err(e) = &result
        && !e.is_transient()
        && sessions.len() > 1
    {
        // One session's database error must not fail the others: store the
        // batch again with each session in its own savepoint. (Savepoints
        // cost round trips on PostgreSQL, so only a failed batch pays them.)
        tracing::warn!(error = %e, sessions = sessions.len(), "a batch failed; storing its sessions one by one");
        result = store.write_blocking("append_events_one_by_one", |conn| {
            store_sessions(conn, &sessions, Isolation::PerSession)
        });
    }
    let events: usize = sessions.iter().map(|s| s.events.len()).sum();
    metrics::histogram!("oma_event_commit_seconds").record(started.elapsed().as_secs_f64());
    metrics::histogram!("oma_event_commit_batch_events").record(events as f64);
    let jobs = replies.len();
    let mut replies: Vec<_> = replies.into_iter().map(Some).collect();
    let mut answer = |job: usize, value: Result<Appended, ServiceError>| {
        if let Some(reply) = replies[job].take() {
            let _ = reply.send(value);
        }
    };
    match result {
        Ok(results) => {
            for (session, result) in sessions.iter().zip(results) {
                let (last_job, earlier_jobs) = session.jobs.split_last().expect("a merged session has a job");
                match result {
                    Ok(done) => {
                        metrics::counter!("oma_events_stored_total").increment(done.stored.len() as u64);
                        hub.publish(&session.session_id, &done.stored);
                        // Earlier jobs are acked up to the same cursor; what
                        // the commit decided goes out once, with the last.
                        for &job in earlier_jobs {
                            answer(job, Ok(Appended::cursor(done.appended.last_stored_seq)));
                        }
                        answer(*last_job, Ok(done.appended));
                    }
                    Err(e) => {
                        if !matches!(e, ServiceError::NotFound(_)) {
                            tracing::error!(
                                runtime_id = session.runtime_id,
                                session_id = session.session_id,
                                error = %e,
                                "storing a runtime's events failed"
                            );
                        }
                        for &job in earlier_jobs {
                            answer(job, Err(copy_of(&e)));
                        }
                        answer(*last_job, Err(e));
                    }
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "storing session events failed");
            let message = e.to_string();
            for job in 0..jobs {
                answer(job, Err(ServiceError::Internal(message.clone())));
            }
        }
    }
}

/// The same refusal for each merged job (errors are not `Clone`): a refusal
/// stays a refusal, anything else ends the stream as any failure does.
fn copy_of(e: &ServiceError) -> ServiceError {
    match e {
        ServiceError::NotFound(message) => ServiceError::NotFound(message.clone()),
        other => ServiceError::Internal(other.to_string()),
    }
}

/// Stores every session of a batch inside the caller's transaction. The
/// outer error fails the whole batch; the inner one answers one session.
fn store_sessions(
    conn: &mut DbConn,
    sessions: &[SessionAppend],
    isolation: Isolation,
) -> Result<Vec<Result<SessionResult, ServiceError>>, StoreError> {
    use diesel::Connection as _;
    match isolation {
        Isolation::Batch => append_sessions(conn, sessions),
        // A nested transaction is a savepoint: a failing session rolls back
        // only its own writes, and the transaction goes on.
        Isolation::PerSession => {
            let mut results = Vec::with_capacity(sessions.len());
            for session in sessions.chunks(1) {
                let result = match conn.transaction(|c| append_sessions(c, session)) {
                    Ok(mut one) => one.pop().expect("one result per session"),
                    Err(e) if e.is_transient() => return Err(e),
                    Err(e) => Err(ServiceError::Store(e)),
                };
                results.push(result);
            }
            Ok(results)
        }
    }
}

/// Stores the events of the given sessions: one lookup of all of them, one
/// multi-row INSERT of every new event, and their cursors updated together.
/// The outer error is a database error (the caller's transaction fails);
/// an inner one refuses that session's events alone without rolling back
/// the others.
fn append_sessions(
    conn: &mut DbConn,
    sessions: &[SessionAppend],
) -> Result<Vec<Result<SessionResult, ServiceError>>, StoreError> {
    let ids: Vec<&str> = sessions.iter().map(|s| s.session_id.as_str()).collect();
    let mut rows_by_id: HashMap<String, event_rows::SessionCursorRow> = event_rows::session_cursors(conn, &ids)?
        .into_iter()
        .map(|row| (row.id.clone(), row))
        .collect();
    let now = now_ms();
    let mut event_rows = Vec::new();
    let mut cursors = Vec::new();
    let mut results = Vec::with_capacity(sessions.len());
    for append in sessions {
        let refusal = || {
            ServiceError::NotFound(format!(
                "session {} is not a session of this runtime",
                append.session_id
            ))
        };
        // Taken, not borrowed: a session twice in one batch would be two
        // streams' jobs (see merge_by_session); the second is refused.
        let session = match rows_by_id.remove(&append.session_id) {
            Some(row) if row.runtime_id == append.runtime_id && row.tenant_id == append.tenant_id => row,
            Some(row) => {
                rows_by_id.insert(row.id.clone(), row);
                results.push(Err(refusal()));
                continue;
            }
            None => {
                results.push(Err(refusal()));
                continue;
            }
        };
        let first_row = event_rows.len();
        let result = new_events(conn, &session, &append.events, now, &mut event_rows)?;
        if event_rows.len() > first_row {
            let bytes: usize = event_rows[first_row..].iter().map(|r| r.payload.len()).sum();
            cursors.push(event_rows::Cursor {
                session_id: session.id.clone(),
                last_seq: result.appended.last_stored_seq as i64,
                added_bytes: bytes as i64,
            });
        }
        results.push(Ok(result));
    }
    event_rows::insert_events(conn, &event_rows)?;
    event_rows::set_last_seqs(conn, &cursors, now)?;
    Ok(results)
}

/// Decides which of a session's events are new (each at exactly the seq the
/// machine gave it), applies their effects and appends their rows.
fn new_events(
    conn: &mut DbConn,
    session: &event_rows::SessionCursorRow,
    events: &[pb::SessionEvent],
    now: i64,
    event_rows: &mut Vec<EventRow>,
) -> Result<SessionResult, StoreError> {
    let session_id = session.id.as_str();
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
        return Ok(SessionResult {
            appended,
            stored: Vec::new(),
        });
    }
    let mut last = session.last_seq as u64;
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
        apply_effects(conn, session_id, &mut policy, &event, now, &mut appended)?;
        event_rows.push(EventRow {
            session_id: session_id.to_owned(),
            seq: event.seq as i64,
            created_at: now,
            payload: event.encode_to_vec(),
        });
        last = event.seq;
        stored.push(Arc::new(event));
    }
    appended.last_stored_seq = last;
    Ok(SessionResult { appended, stored })
}

/// What an event changes beyond the log: the session's status, its turn,
/// and permission requests.
fn apply_effects(
    conn: &mut DbConn,
    session_id: &str,
    policy: &mut Option<PermissionPolicy>,
    event: &pb::SessionEvent,
    now: i64,
    appended: &mut Appended,
) -> Result<(), StoreError> {
    use pb::session_event::Kind;
    match &event.kind {
        Some(Kind::TurnStarted(_)) => rows::set_session_status(conn, session_id, STATUS_RUNNING, now)?,
        Some(Kind::OptionsChanged(options)) => {
            let stored = crate::service::sessions::options::SessionOptions::from(options).to_stored();
            rows::set_session_options(conn, session_id, &stored)?
        }
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
            let offered = Offered::of(request);
            rows::insert_permission(
                conn,
                &PermissionRow {
                    session_id: session_id.to_owned(),
                    request_id: request.request_id.clone(),
                    tenant_id: String::new(),
                    option_ids: serde_json::to_string(&offered.option_ids).unwrap_or_else(|_| "[]".into()),
                    reject_option_id: offered.reject.clone(),
                    created_at: now,
                    decided_at: None,
                    decided_by: None,
                    option_id: None,
                },
            )?;
            // Read only when a request comes: the spec is the widest column
            // of the session, and most events need none of it.
            let policy = match *policy {
                Some(policy) => policy,
                None => {
                    let spec = event_rows::session_spec(conn, session_id)?.unwrap_or_default();
                    let read = serde_json::from_str::<AgentSpec>(&spec)
                        .map(|s| s.permission_policy)
                        .unwrap_or_default();
                    *policy = Some(read);
                    read
                }
            };
            match decide(policy, &offered) {
                PolicyDecision::AskPerson => appended.awaiting_person.push(request.request_id.clone()),
                PolicyDecision::Answer(option_id) => {
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
                            decided_by: "policy".into(),
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

#[cfg(test)]
mod tests {
    use diesel::connection::SimpleConnection as _;

    use super::*;
    use crate::store::Backend;
    use crate::store::rows::{SessionRow, TenantRow};

    /// A fresh store: a temp SQLite file, or a fresh PostgreSQL database
    /// (dropped afterwards) on the server `OMA_TEST_POSTGRES_URL` names.
    struct TestDb {
        store: Store,
        _dir: Option<tempfile::TempDir>,
        postgres: Option<(String, String)>,
    }

    impl TestDb {
        fn sqlite() -> TestDb {
            let dir = tempfile::tempdir().unwrap();
            TestDb {
                store: Store::open_sqlite(&dir.path().join("oma.db")).unwrap(),
                _dir: Some(dir),
                postgres: None,
            }
        }

        fn postgres() -> Option<TestDb> {
            use diesel::{Connection as _, RunQueryDsl as _};
            let Ok(admin_url) = std::env::var("OMA_TEST_POSTGRES_URL") else {
                eprintln!("*** SKIPPED the PostgreSQL variant: set OMA_TEST_POSTGRES_URL to run it ***");
                return None;
            };
            let name = format!("oma_unit_{:016x}", rand::random::<u64>());
            let mut admin = diesel::PgConnection::establish(&admin_url).unwrap();
            diesel::sql_query(format!("CREATE DATABASE {name}"))
                .execute(&mut admin)
                .unwrap();
            let (base, _) = admin_url.rsplit_once('/').unwrap();
            let store = Store::open(&Backend::Postgres {
                url: format!("{base}/{name}"),
            })
            .unwrap();
            Some(TestDb {
                store,
                _dir: None,
                postgres: Some((admin_url, name)),
            })
        }

        fn is_postgres(&self) -> bool {
            self.postgres.is_some()
        }

        /// A tenant and one session per `(session, runtime)`.
        fn sessions(&self, sessions: &[(&str, &str)]) {
            self.sessions_with_spec(sessions, "{}");
        }

        /// As `sessions`, with the agent spec the sessions snapshot.
        fn sessions_with_spec(&self, sessions: &[(&str, &str)], spec: &str) {
            let spec = spec.to_owned();
            let sessions: Vec<(String, String)> = sessions
                .iter()
                .map(|(s, r)| ((*s).to_owned(), (*r).to_owned()))
                .collect();
            self.store
                .write_blocking("sessions_with_spec", move |conn| {
                    rows::insert_tenant(
                        conn,
                        &TenantRow {
                            id: "ten_a".into(),
                            name: "a".into(),
                            created_at: 0,
                        },
                    )?;
                    for (id, runtime) in &sessions {
                        let mut row = session_row(id, runtime);
                        row.spec = spec.clone();
                        rows::insert_session(conn, &row)?;
                    }
                    Ok::<_, StoreError>(())
                })
                .unwrap();
        }

        /// Makes every insert of an event of `session_id` fail, as a
        /// database error would.
        fn poison(&self, session_id: &str) {
            let sql = if self.is_postgres() {
                format!(
                    "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'poisoned'; END $$;
                     CREATE TRIGGER poison BEFORE INSERT ON session_events FOR EACH ROW
                     WHEN (NEW.session_id = '{session_id}') EXECUTE FUNCTION poison();"
                )
            } else {
                format!(
                    "CREATE TRIGGER poison BEFORE INSERT ON session_events WHEN NEW.session_id = '{session_id}'
                     BEGIN SELECT RAISE(ABORT, 'poisoned'); END;"
                )
            };
            self.store
                .write_blocking("poison", move |conn| conn.batch_execute(&sql).map_err(StoreError::from))
                .unwrap();
        }

        fn stored(&self, session_id: &str) -> (Vec<u64>, i64) {
            let sid = session_id.to_owned();
            self.store
                .write_blocking("stored", move |conn| {
                    let seqs = event_rows::events_from(conn, &sid, 1, 1000)?
                        .into_iter()
                        .map(|r| r.seq as u64)
                        .collect();
                    let last = rows::session_of_runtime_any(conn, &sid)?;
                    let last_seq = match last {
                        Some(runtime) => rows::session_of_runtime(conn, &runtime, &sid)?.map_or(0, |s| s.last_seq),
                        None => 0,
                    };
                    Ok::<_, StoreError>((seqs, last_seq))
                })
                .unwrap()
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            use diesel::{Connection as _, RunQueryDsl as _};
            if let Some((admin_url, name)) = &self.postgres
                && let Ok(mut admin) = diesel::PgConnection::establish(admin_url)
            {
                let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin);
            }
        }
    }

    fn session_row(id: &str, runtime: &str) -> SessionRow {
        SessionRow {
            id: id.into(),
            tenant_id: "ten_a".into(),
            agent_id: "agt_a".into(),
            runtime_id: runtime.into(),
            acp_agent_id: "test".into(),
            created_by_user_id: "usr_a".into(),
            title: String::new(),
            status: STATUS_IDLE.into(),
            agent_version: 1,
            spec: "{}".into(),
            acp_session_id: None,
            current_turn_id: None,
            current_prompt: None,
            last_seq: 0,
            created_at: 0,
            updated_at: 0,
            workspace: None,
            options: None,
            mode_id: String::new(),
            model_id: String::new(),
        }
    }

    fn log(session_id: &str, seq: u64) -> pb::SessionEvent {
        pb::SessionEvent {
            session_id: session_id.into(),
            seq,
            time: None,
            turn_id: String::new(),
            kind: Some(pb::session_event::Kind::Log(pb::SessionLog {
                message: format!("event {seq}"),
            })),
        }
    }

    fn job(
        runtime: &str,
        session: &str,
        events: Vec<pb::SessionEvent>,
    ) -> (AppendJob, oneshot::Receiver<Result<Appended, ServiceError>>) {
        let (reply, wait) = oneshot::channel();
        let job = AppendJob {
            tenant_id: "ten_a".into(),
            runtime_id: runtime.into(),
            session_id: session.into(),
            events,
            reply,
        };
        (job, wait)
    }

    /// A batch holds a job that hits a database error between two jobs of
    /// other runtimes: only that job fails, the others are stored and
    /// answered, and nothing of the failing job is half-written.
    async fn a_failing_job_fails_alone(db: TestDb) {
        db.sessions(&[
            ("ses_good", "rt_good"),
            ("ses_poison", "rt_bad"),
            ("ses_other", "rt_other"),
        ]);
        db.poison("ses_poison");
        let hub = Hub::default();
        let (good, good_wait) = job("rt_good", "ses_good", (1..=3).map(|n| log("ses_good", n)).collect());
        let (bad, bad_wait) = job("rt_bad", "ses_poison", (1..=2).map(|n| log("ses_poison", n)).collect());
        let (other, other_wait) = job("rt_other", "ses_other", vec![log("ses_other", 1)]);
        commit_batch(&db.store, &hub, vec![good, bad, other]);

        assert_eq!(good_wait.await.unwrap().unwrap().last_stored_seq, 3);
        assert_eq!(other_wait.await.unwrap().unwrap().last_stored_seq, 1);
        let err = bad_wait.await.unwrap().unwrap_err();
        assert!(matches!(err, ServiceError::Store(_)), "{err:?}");
        assert_eq!(db.stored("ses_good"), (vec![1, 2, 3], 3));
        assert_eq!(db.stored("ses_other"), (vec![1], 1));
        assert_eq!(db.stored("ses_poison"), (vec![], 0));

        // The next batch is served as usual.
        let (good, good_wait) = job("rt_good", "ses_good", vec![log("ses_good", 4)]);
        commit_batch(&db.store, &hub, vec![good]);
        assert_eq!(good_wait.await.unwrap().unwrap().last_stored_seq, 4);
    }

    #[tokio::test]
    async fn a_failing_job_fails_alone_on_sqlite() {
        a_failing_job_fails_alone(TestDb::sqlite()).await;
    }

    #[tokio::test]
    async fn a_failing_job_fails_alone_on_postgres() {
        if let Some(db) = TestDb::postgres() {
            a_failing_job_fails_alone(db).await;
        }
    }

    /// What once stopped every runtime's events on PostgreSQL: a NUL byte in
    /// a permission request id (PostgreSQL refuses NUL in TEXT). Frames are
    /// validated before they get here; this proves the log itself still
    /// keeps such a job from failing the others.
    #[tokio::test]
    async fn a_nul_byte_in_a_key_fails_only_its_job_on_postgres() {
        let Some(db) = TestDb::postgres() else { return };
        db.sessions(&[("ses_good", "rt_good"), ("ses_bad", "rt_bad")]);
        let hub = Hub::default();
        let mut poisoned = log("ses_bad", 1);
        poisoned.kind = Some(pb::session_event::Kind::PermissionRequested(pb::PermissionRequested {
            request_id: "perm\0-1".into(),
            tool_call: None,
            options: vec![],
            raw_json: String::new(),
        }));
        let (bad, bad_wait) = job("rt_bad", "ses_bad", vec![poisoned]);
        let (good, good_wait) = job("rt_good", "ses_good", vec![log("ses_good", 1), log("ses_good", 2)]);
        commit_batch(&db.store, &hub, vec![bad, good]);
        assert!(bad_wait.await.unwrap().is_err());
        assert_eq!(good_wait.await.unwrap().unwrap().last_stored_seq, 2);
        assert_eq!(db.stored("ses_good"), (vec![1, 2], 2));
        assert_eq!(db.stored("ses_bad"), (vec![], 0));
    }

    // ---- the conformance suite: every rule of the log, on both backends ----

    /// Runs each named async test on SQLite and (when configured) on
    /// PostgreSQL.
    macro_rules! on_both_backends {
        ($($name:ident),* $(,)?) => {$(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    super::$name(super::TestDb::sqlite()).await;
                }

                #[tokio::test]
                async fn postgres() {
                    if let Some(db) = super::TestDb::postgres() {
                        super::$name(db).await;
                    }
                }
            }
        )*};
    }

    on_both_backends!(
        resends_are_stored_once,
        a_gap_stores_up_to_it_and_asks_for_a_resend,
        jobs_of_one_session_merge_into_one_append,
        policy_answers_go_out_once_per_request,
        a_deleted_session_is_acked_and_not_stored,
        another_runtimes_session_is_refused_beside_the_owners_job,
    );

    fn commit(db: &TestDb, jobs: Vec<AppendJob>) {
        commit_batch(&db.store, &Hub::default(), jobs);
    }

    fn logs(session: &str, seqs: impl IntoIterator<Item = u64>) -> Vec<pb::SessionEvent> {
        seqs.into_iter().map(|n| log(session, n)).collect()
    }

    async fn resends_are_stored_once(db: TestDb) {
        db.sessions(&[("ses_a", "rt_a")]);
        let (first, first_wait) = job("rt_a", "ses_a", logs("ses_a", 1..=3));
        commit(&db, vec![first]);
        assert_eq!(first_wait.await.unwrap().unwrap().last_stored_seq, 3);
        // A reconnect resends 2 and 3 with a new 4; only 4 is new.
        let (resend, resend_wait) = job("rt_a", "ses_a", logs("ses_a", 2..=4));
        commit(&db, vec![resend]);
        assert_eq!(resend_wait.await.unwrap().unwrap().last_stored_seq, 4);
        assert_eq!(db.stored("ses_a"), (vec![1, 2, 3, 4], 4));
    }

    async fn a_gap_stores_up_to_it_and_asks_for_a_resend(db: TestDb) {
        db.sessions(&[("ses_a", "rt_a")]);
        let (gappy, wait) = job("rt_a", "ses_a", logs("ses_a", [1, 2, 4, 5]));
        commit(&db, vec![gappy]);
        let appended = wait.await.unwrap().unwrap();
        assert!(appended.gap);
        assert_eq!(appended.last_stored_seq, 2);
        assert_eq!(db.stored("ses_a"), (vec![1, 2], 2));
    }

    async fn jobs_of_one_session_merge_into_one_append(db: TestDb) {
        db.sessions(&[("ses_a", "rt_a"), ("ses_b", "rt_b")]);
        let hub = Arc::new(Hub::default());
        let mut watcher = hub.subscribe("ses_a");
        let (a1, a1_wait) = job("rt_a", "ses_a", logs("ses_a", 1..=2));
        let (b1, b1_wait) = job("rt_b", "ses_b", logs("ses_b", 1..=1));
        // Out of order across frames, and a resend of 2 inside the batch.
        let (a2, a2_wait) = job("rt_a", "ses_a", logs("ses_a", [4, 2]));
        let (a3, a3_wait) = job("rt_a", "ses_a", logs("ses_a", [3, 5]));
        commit_batch(&db.store, &hub, vec![a1, b1, a2, a3]);
        for wait in [a1_wait, a2_wait, a3_wait] {
            let appended = wait.await.unwrap().unwrap();
            assert_eq!(appended.last_stored_seq, 5);
            assert!(!appended.gap);
        }
        assert_eq!(b1_wait.await.unwrap().unwrap().last_stored_seq, 1);
        assert_eq!(db.stored("ses_a"), (vec![1, 2, 3, 4, 5], 5));
        assert_eq!(db.stored("ses_b"), (vec![1], 1));
        // Both cursors moved in one update (PostgreSQL): each session's
        // stored bytes are its own events' bytes.
        for session in ["ses_a", "ses_b"] {
            let sid = session.to_owned();
            let (counted, actual) = db
                .store
                .write_blocking("jobs_of_one_session_merge_into_one_append", move |conn| {
                    use crate::store::schema::sessions;
                    use diesel::{QueryDsl as _, RunQueryDsl as _};
                    let counted: i64 = sessions::table.find(&sid).select(sessions::stored_bytes).first(conn)?;
                    let actual: usize = event_rows::events_from(conn, &sid, 1, 1000)?
                        .iter()
                        .map(|r| r.payload.len())
                        .sum();
                    Ok::<_, StoreError>((counted, actual as i64))
                })
                .unwrap();
            assert_eq!(counted, actual, "{session}");
        }
        // Watchers get each event once, in order: the ring holds exactly
        // 1..=5 (a second publish of any would have restarted it).
        for seq in 1..=5 {
            match tokio::time::timeout(std::time::Duration::from_secs(5), watcher.next(seq)).await {
                Ok(super::super::hub::Next::Event(event)) => assert_eq!(event.seq, seq),
                _ => panic!("event {seq} was not published exactly once"),
            }
        }
    }

    fn permission_requested(session: &str, seq: u64, request_id: &str) -> pb::SessionEvent {
        let option = |id: &str, kind: pb::PermissionOptionKind| pb::PermissionOption {
            option_id: id.into(),
            name: id.into(),
            kind: kind as i32,
        };
        let mut event = log(session, seq);
        event.kind = Some(pb::session_event::Kind::PermissionRequested(pb::PermissionRequested {
            request_id: request_id.into(),
            tool_call: None,
            options: vec![
                option("yes", pb::PermissionOptionKind::AllowOnce),
                option("no", pb::PermissionOptionKind::RejectOnce),
            ],
            raw_json: String::new(),
        }));
        event
    }

    async fn policy_answers_go_out_once_per_request(db: TestDb) {
        db.sessions_with_spec(&[("ses_a", "rt_a")], r#"{"name":"a","permission_policy":"allow_once"}"#);
        let (first, first_wait) = job("rt_a", "ses_a", vec![permission_requested("ses_a", 1, "g1.7")]);
        let (second, second_wait) = job("rt_a", "ses_a", logs("ses_a", [2]));
        // The request again in a resend: already decided, not answered twice.
        let (resend, resend_wait) = job("rt_a", "ses_a", vec![permission_requested("ses_a", 1, "g1.7")]);
        commit(&db, vec![first, second, resend]);
        let mut answers = Vec::new();
        for wait in [first_wait, second_wait, resend_wait] {
            let appended = wait.await.unwrap().unwrap();
            assert_eq!(appended.last_stored_seq, 2);
            assert!(appended.awaiting_person.is_empty());
            answers.extend(appended.policy_answers);
        }
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert_eq!(answers[0].request_id, "g1.7");
        assert_eq!(answers[0].option_id, "yes");
    }

    async fn a_deleted_session_is_acked_and_not_stored(db: TestDb) {
        db.sessions(&[("ses_a", "rt_a")]);
        db.store
            .write_blocking("a_deleted_session_is_acked_and_not_stored", |conn| {
                rows::tombstone_session(conn, "ten_a", "ses_a", 1)
            })
            .unwrap();
        let (late, wait) = job("rt_a", "ses_a", logs("ses_a", 1..=3));
        commit(&db, vec![late]);
        let appended = wait.await.unwrap().unwrap();
        assert!(appended.session_deleted);
        assert_eq!(appended.last_stored_seq, 3, "acked so the machine stops resending");
        assert_eq!(db.stored("ses_a").0, Vec::<u64>::new());
    }

    async fn another_runtimes_session_is_refused_beside_the_owners_job(db: TestDb) {
        db.sessions(&[("ses_a", "rt_a")]);
        // The hostile job comes first and last in the batch, around the
        // owner's: neither order lets it in.
        let (hostile, hostile_wait) = job("rt_evil", "ses_a", logs("ses_a", 1..=2));
        let (owner, owner_wait) = job("rt_a", "ses_a", logs("ses_a", 1..=1));
        let (hostile_again, hostile_again_wait) = job("rt_evil", "ses_a", logs("ses_a", 2..=3));
        commit(&db, vec![hostile, owner, hostile_again]);
        assert_eq!(owner_wait.await.unwrap().unwrap().last_stored_seq, 1);
        for wait in [hostile_wait, hostile_again_wait] {
            let err = wait.await.unwrap().unwrap_err();
            assert!(matches!(err, ServiceError::NotFound(_)), "{err:?}");
        }
        let mut other_tenant = job("rt_a", "ses_a", logs("ses_a", 2..=2));
        other_tenant.0.tenant_id = "ten_evil".into();
        commit(&db, vec![other_tenant.0]);
        assert!(matches!(other_tenant.1.await.unwrap(), Err(ServiceError::NotFound(_))));
        assert_eq!(db.stored("ses_a"), (vec![1], 1));
    }
}
