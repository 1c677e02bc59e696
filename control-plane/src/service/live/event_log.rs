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

/// Whether the jobs of a batch run bare (one transaction, the fast path)
/// or each inside its own savepoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isolation {
    Batch,
    PerJob,
}

type Meta = (String, String, String, Vec<pb::SessionEvent>);

async fn commit_batch(store: &Store, hub: &Hub, jobs: Vec<AppendJob>) {
    let (metas, replies): (Vec<Meta>, Vec<_>) = jobs
        .into_iter()
        .map(|j| ((j.tenant_id, j.runtime_id, j.session_id, j.events), j.reply))
        .unzip();
    let metas = Arc::new(metas);
    let input = metas.clone();
    let mut result = store.write(move |conn| run_jobs(conn, &input, Isolation::Batch)).await;
    if let Err(e) = &result
        && !e.is_transient()
        && metas.len() > 1
    {
        // One job's database error must not fail the others: store the
        // batch again with each job in its own savepoint. (Savepoints cost
        // round trips on PostgreSQL, so only a failed batch pays them.)
        tracing::warn!(error = %e, jobs = metas.len(), "a batch failed; storing its jobs one by one");
        let input = metas.clone();
        result = store.write(move |conn| run_jobs(conn, &input, Isolation::PerJob)).await;
    }
    match result {
        Ok(results) => {
            for (((_, runtime_id, session_id, _), reply), result) in metas.iter().zip(replies).zip(results) {
                match result {
                    Ok(job) => {
                        hub.publish(session_id, &job.stored);
                        let _ = reply.send(Ok(job.appended));
                    }
                    Err(e) => {
                        if !matches!(e, ServiceError::NotFound(_)) {
                            tracing::error!(runtime_id, session_id, error = %e, "storing a runtime's events failed");
                        }
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

/// Runs every job of a batch inside the caller's transaction. The outer
/// error fails the whole batch; the inner one answers one job.
fn run_jobs(
    conn: &mut DbConn,
    jobs: &[Meta],
    isolation: Isolation,
) -> Result<Vec<Result<JobResult, ServiceError>>, StoreError> {
    use diesel::Connection as _;
    let mut results = Vec::with_capacity(jobs.len());
    for (tenant, runtime, session, events) in jobs {
        let result = match isolation {
            Isolation::Batch => append_session(conn, tenant, runtime, session, events)?,
            // A nested transaction is a savepoint: a failing job rolls back
            // only its own writes, and the transaction goes on.
            Isolation::PerJob => match conn.transaction(|c| append_session(c, tenant, runtime, session, events)) {
                Ok(result) => result,
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => Err(ServiceError::Store(e)),
            },
        };
        results.push(result);
    }
    Ok(results)
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
        let bytes: usize = rows_out.iter().map(|r| r.payload.len()).sum();
        rows::set_last_seq(conn, session_id, last as i64, bytes as i64, now)?;
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
            let sessions: Vec<(String, String)> = sessions
                .iter()
                .map(|(s, r)| ((*s).to_owned(), (*r).to_owned()))
                .collect();
            self.store
                .write_blocking(move |conn| {
                    rows::insert_tenant(
                        conn,
                        &TenantRow {
                            id: "ten_a".into(),
                            name: "a".into(),
                            created_at: 0,
                        },
                    )?;
                    for (id, runtime) in &sessions {
                        rows::insert_session(conn, &session_row(id, runtime))?;
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
                .write_blocking(move |conn| conn.batch_execute(&sql).map_err(StoreError::from))
                .unwrap();
        }

        fn stored(&self, session_id: &str) -> (Vec<u64>, i64) {
            let sid = session_id.to_owned();
            self.store
                .write_blocking(move |conn| {
                    let seqs = rows::events_from(conn, &sid, 1, 1000)?
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
        commit_batch(&db.store, &hub, vec![good, bad, other]).await;

        assert_eq!(good_wait.await.unwrap().unwrap().last_stored_seq, 3);
        assert_eq!(other_wait.await.unwrap().unwrap().last_stored_seq, 1);
        let err = bad_wait.await.unwrap().unwrap_err();
        assert!(matches!(err, ServiceError::Store(_)), "{err:?}");
        assert_eq!(db.stored("ses_good"), (vec![1, 2, 3], 3));
        assert_eq!(db.stored("ses_other"), (vec![1], 1));
        assert_eq!(db.stored("ses_poison"), (vec![], 0));

        // The next batch is served as usual.
        let (good, good_wait) = job("rt_good", "ses_good", vec![log("ses_good", 4)]);
        commit_batch(&db.store, &hub, vec![good]).await;
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
        commit_batch(&db.store, &hub, vec![bad, good]).await;
        assert!(bad_wait.await.unwrap().is_err());
        assert_eq!(good_wait.await.unwrap().unwrap().last_stored_seq, 2);
        assert_eq!(db.stored("ses_good"), (vec![1, 2], 2));
        assert_eq!(db.stored("ses_bad"), (vec![], 0));
    }
}
