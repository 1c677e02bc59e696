//! Session watches against the real `oma-control-plane`, on SQLite and
//! (when `OMA_TEST_POSTGRES_URL` is set) PostgreSQL: revoking a token,
//! deleting a user or the token's expiry ends a watch within 2 s with
//! UNAUTHENTICATED, deleting a runtime ends its stream within 2 s, a tenant
//! holds at most `--max-watchers-per-tenant` watches, and a watcher that
//! never reads blocks nobody and pins bounded memory.

use std::time::{Duration, Instant};

use oma_integration_tests::faults::{self, RawMachine, RawStream, StreamAnswer};
use oma_integration_tests::{Bearer, Clients, ControlPlane, TestDatabase, test_agent_spec, wait_until};
use oma_proto::pb;
use oma_proto::pb::agent_frame::Frame as Af;
use oma_proto::pb::control_frame::Frame as Cf;
use tonic::Code;
use tonic::transport::Channel;

/// The promise: a revoked right stops a watch within this.
const REVOCATION: Duration = Duration::from_secs(2);

/// A member with a paired (raw) machine, an agent on it and a session.
struct Member {
    channel: Channel,
    admin: Clients,
    clients: Clients,
    user_id: String,
    token_id: String,
    machine: RawMachine,
    session_id: String,
}

async fn start(test: &str, database: Option<TestDatabase>, extra_args: &[&str]) -> Option<(ControlPlane, Member)> {
    let database = match database {
        Some(db) => db,
        None => TestDatabase::postgres(test).unwrap()?,
    };
    let cp = faults::start_control_plane(database, extra_args).unwrap();
    let member = member(&cp, "mia").await;
    Some((cp, member))
}

async fn member(cp: &ControlPlane, name: &str) -> Member {
    let channel = cp.channel().await.unwrap();
    let mut admin = Clients::new(channel.clone(), Bearer::new(&cp.admin_token));
    let (user, token) = admin.new_user(name, pb::Role::Member).await.unwrap();
    let mut clients = Clients::new(channel.clone(), Bearer::new(&token.secret));
    let machine = RawMachine::pair(&mut clients, &format!("{name}-laptop")).await.unwrap();
    let session_id = session_on(&mut clients, &machine.runtime_id, name).await;
    Member {
        channel,
        admin,
        clients,
        user_id: user.id,
        token_id: token.token.unwrap().id,
        machine,
        session_id,
    }
}

async fn new_token(clients: &mut Clients, user_id: &str, ttl_seconds: u64) -> pb::CreateTokenResponse {
    clients
        .identity
        .create_token(pb::CreateTokenRequest {
            user_id: user_id.into(),
            name: format!("t{ttl_seconds}-{:08x}", rand::random::<u32>()),
            ttl_seconds,
        })
        .await
        .unwrap()
        .into_inner()
}

/// A session of a new agent bound to `runtime_id`.
async fn session_on(clients: &mut Clients, runtime_id: &str, name: &str) -> String {
    let spec = test_agent_spec(&format!("{name}-agent"), runtime_id, pb::PermissionPolicy::Unspecified);
    let agent_id = clients.create_agent(spec).await.unwrap();
    clients.create_session(&agent_id, "").await.unwrap()
}

async fn watch(clients: &mut Clients, session_id: &str) -> Result<tonic::Streaming<pb::SessionEvent>, tonic::Status> {
    Ok(clients
        .sessions
        .watch_session(pb::WatchSessionRequest {
            session_id: session_id.into(),
            from_seq: 1,
            until_turn_end: false,
        })
        .await?
        .into_inner())
}

/// Reads the watch until it ends with an error (events before it are
/// fine); panics when it ends cleanly or not within `deadline`.
async fn ends_with(stream: &mut tonic::Streaming<pb::SessionEvent>, deadline: Duration) -> tonic::Status {
    let result = tokio::time::timeout(deadline, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the watch ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await;
    result.unwrap_or_else(|_| panic!("the watch was still open after {deadline:?}"))
}

fn log_event(session_id: &str, seq: u64, text: String) -> pb::SessionEvent {
    pb::SessionEvent {
        session_id: session_id.into(),
        seq,
        kind: Some(pb::session_event::Kind::Log(pb::SessionLog { message: text })),
        ..Default::default()
    }
}

/// Sends events `seqs` of the session as one batch and waits for the ack of
/// the last.
async fn send_acked(stream: &mut RawStream, session_id: &str, seqs: std::ops::RangeInclusive<u64>, size: usize) {
    let last = *seqs.end();
    let events = seqs
        .map(|seq| log_event(session_id, seq, format!("{seq:08}").repeat(size / 8)))
        .collect();
    assert!(stream.send(Some(Af::Events(pb::SessionEventBatch { events }))).await);
    let acked = stream
        .next_matching(Duration::from_secs(60), |frame| {
            matches!(frame, Cf::EventAck(ack) if ack.session_id == session_id && ack.seq >= last).then_some(())
        })
        .await;
    if let Err(other) = acked {
        panic!("no ack up to {last}: {other:?}");
    }
}

/// The next event of a live watch, which must be `seq`.
async fn next_is(stream: &mut tonic::Streaming<pb::SessionEvent>, seq: u64) {
    let event = tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("the watch went silent")
        .expect("the watch failed")
        .expect("the watch ended");
    assert_eq!(event.seq, seq);
}

async fn revocation(mut cp: ControlPlane, mut m: Member) {
    let mut raw = m.machine.open(m.channel.clone(), m.machine.hello()).await.unwrap();
    let sid = m.session_id.clone();

    // Three watches of the member: one per token, and a bystander admin.
    let second = new_token(&mut m.admin, &m.user_id, 0).await;
    let mut second_clients = Clients::new(m.channel.clone(), Bearer::new(&second.secret));
    let mut revoked = watch(&mut m.clients, &sid).await.unwrap();
    let mut survivor = watch(&mut second_clients, &sid).await.unwrap();
    let mut bystander = watch(&mut m.admin, &sid).await.unwrap();

    let at = Instant::now();
    m.admin
        .identity
        .revoke_token(pb::RevokeTokenRequest {
            token_id: m.token_id.clone(),
        })
        .await
        .unwrap();
    let status = ends_with(&mut revoked, REVOCATION).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("revoked"), "{}", status.message());
    assert!(at.elapsed() <= REVOCATION, "ended after {:?}", at.elapsed());
    // The other token of the same user, and another user, still watch.
    send_acked(&mut raw, &sid, 1..=1, 8).await;
    next_is(&mut survivor, 1).await;
    next_is(&mut bystander, 1).await;

    // Deleting a user ends that user's watches (a second admin here: a
    // member who owns a runtime cannot be deleted).
    let bob = m
        .admin
        .identity
        .create_user(pb::CreateUserRequest {
            name: "bob".into(),
            role: pb::Role::Admin as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    let bob_token = new_token(&mut m.admin, &bob.id, 0).await;
    let mut bob_clients = Clients::new(m.channel.clone(), Bearer::new(&bob_token.secret));
    let mut bobs = watch(&mut bob_clients, &sid).await.unwrap();
    next_is(&mut bobs, 1).await;
    let at = Instant::now();
    m.admin
        .identity
        .delete_user(pb::DeleteUserRequest { user_id: bob.id })
        .await
        .unwrap();
    let status = ends_with(&mut bobs, REVOCATION).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("deleted"), "{}", status.message());
    assert!(at.elapsed() <= REVOCATION, "ended after {:?}", at.elapsed());
    send_acked(&mut raw, &sid, 2..=2, 8).await;
    next_is(&mut survivor, 2).await;
    next_is(&mut bystander, 2).await;
    // Neither can start a new watch.
    for clients in [&mut m.clients, &mut bob_clients] {
        assert_eq!(watch(clients, &sid).await.unwrap_err().code(), Code::Unauthenticated);
    }

    // A token that expires during a watch ends it at expiry.
    let short = new_token(&mut m.admin, &m.user_id, 2).await;
    let created = Instant::now();
    let mut short_clients = Clients::new(m.channel.clone(), Bearer::new(&short.secret));
    let mut expiring = watch(&mut short_clients, &sid).await.unwrap();
    let status = ends_with(&mut expiring, Duration::from_secs(2) + REVOCATION).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("expired"), "{}", status.message());
    assert!(
        created.elapsed() >= Duration::from_millis(1500),
        "ended before expiry, after {:?}",
        created.elapsed()
    );
    next_is_still_served(&mut raw, &sid, &mut survivor, 3).await;
    assert!(faults::panics_in(&faults::control_plane_log(&cp)).is_empty());
    faults::kill_control_plane(&mut cp).unwrap();
}

async fn next_is_still_served(
    raw: &mut RawStream,
    sid: &str,
    survivor: &mut tonic::Streaming<pb::SessionEvent>,
    seq: u64,
) {
    send_acked(raw, sid, seq..=seq, 8).await;
    next_is(survivor, seq).await;
}

#[tokio::test]
async fn revoking_deleting_or_expiring_ends_watches_sqlite() {
    let (cp, m) = start("", Some(TestDatabase::sqlite().unwrap()), &[]).await.unwrap();
    revocation(cp, m).await;
}

#[tokio::test]
async fn revoking_deleting_or_expiring_ends_watches_postgres() {
    let Some((cp, m)) = start("revoking_deleting_or_expiring_ends_watches_postgres", None, &[]).await else {
        return;
    };
    revocation(cp, m).await;
}

async fn runtime_deletion(mut m: Member) {
    let mut raw = m.machine.open(m.channel.clone(), m.machine.hello()).await.unwrap();
    let at = Instant::now();
    m.clients
        .runtimes
        .delete_runtime(pb::DeleteRuntimeRequest {
            runtime_id: m.machine.runtime_id.clone(),
        })
        .await
        .unwrap();
    loop {
        let left = REVOCATION.saturating_sub(at.elapsed());
        match raw.next(left).await {
            StreamAnswer::Frame(_) => continue,
            StreamAnswer::Closed | StreamAnswer::Status(_) => break,
            StreamAnswer::Silent => panic!("the deleted runtime's stream was still open after {REVOCATION:?}"),
        }
    }
    assert!(at.elapsed() <= REVOCATION + Duration::from_millis(100));
    // And it cannot come back.
    let again = m.machine.open(m.channel.clone(), m.machine.hello()).await;
    assert_eq!(again.err().map(|s| s.code()), Some(Code::Unauthenticated));
}

#[tokio::test]
async fn deleting_a_runtime_ends_its_stream_within_two_seconds_sqlite() {
    let (_cp, m) = start("", Some(TestDatabase::sqlite().unwrap()), &[]).await.unwrap();
    runtime_deletion(m).await;
}

#[tokio::test]
async fn deleting_a_runtime_ends_its_stream_within_two_seconds_postgres() {
    let Some((_cp, m)) = start(
        "deleting_a_runtime_ends_its_stream_within_two_seconds_postgres",
        None,
        &[],
    )
    .await
    else {
        return;
    };
    runtime_deletion(m).await;
}

async fn watch_cap(cp: ControlPlane, mut m: Member) {
    let sid = m.session_id.clone();
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(watch(&mut m.clients, &sid).await.unwrap());
    }
    let refused = watch(&mut m.clients, &sid).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("--max-watchers-per-tenant"),
        "{}",
        refused.message()
    );
    // The admin is in the same tenant: the cap is the tenant's.
    assert_eq!(
        watch(&mut m.admin, &sid).await.unwrap_err().code(),
        Code::ResourceExhausted
    );
    // Another tenant is not affected.
    let other_token = cp.create_tenant("beta").unwrap();
    let mut other = Clients::new(m.channel.clone(), Bearer::new(&other_token));
    let machine = RawMachine::pair(&mut other, "beta-laptop").await.unwrap();
    let theirs = session_on(&mut other, &machine.runtime_id, "beta").await;
    let _theirs = watch(&mut other, &theirs).await.unwrap();
    // A closed watch frees its slot (the server notices the client left).
    open.pop();
    wait_until("a closed watch to free its slot", Duration::from_secs(10), || {
        let mut clients = m.clients.sessions.clone();
        let sid = sid.clone();
        async move {
            clients
                .watch_session(pb::WatchSessionRequest {
                    session_id: sid,
                    from_seq: 1,
                    until_turn_end: false,
                })
                .await
                .ok()
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_tenant_holds_at_most_its_cap_of_watches_sqlite() {
    let args = ["--max-watchers-per-tenant", "3"];
    let (cp, m) = start("", Some(TestDatabase::sqlite().unwrap()), &args).await.unwrap();
    watch_cap(cp, m).await;
}

#[tokio::test]
async fn a_tenant_holds_at_most_its_cap_of_watches_postgres() {
    let args = ["--max-watchers-per-tenant", "3"];
    let Some((cp, m)) = start("a_tenant_holds_at_most_its_cap_of_watches_postgres", None, &args).await else {
        return;
    };
    watch_cap(cp, m).await;
}

/// Events of this many bytes each, this many of them: far more than a
/// watch may queue and the hub may keep.
const BIG_EVENT: usize = 256 << 10;
const BIG_EVENTS: u64 = 400;

async fn never_reading_watcher(cp: ControlPlane, mut m: Member) {
    let sid = m.session_id.clone();
    let mut raw = m.machine.open(m.channel.clone(), m.machine.hello()).await.unwrap();
    let pid = faults::control_plane_pid(&cp).expect("the control plane's pid");
    let rss_before = faults::vm_rss_kib(pid).unwrap();
    // Its own connection, like a separate client that stopped reading.
    let mut slow_clients = cp.clients().await.unwrap();
    let mut slow = watch(&mut slow_clients, &sid).await.unwrap();
    let mut fast = watch(&mut m.clients, &sid).await.unwrap();

    // The machine's events are stored and acked, and the reading watcher
    // gets each of them, while the other reads nothing.
    let mut seq = 0;
    let mut rss_peak = rss_before;
    while seq < BIG_EVENTS {
        let batch = (seq + 1)..=(seq + 8).min(BIG_EVENTS);
        let last = *batch.end();
        send_acked(&mut raw, &sid, batch, BIG_EVENT).await;
        for s in (seq + 1)..=last {
            next_is(&mut fast, s).await;
        }
        seq = last;
        rss_peak = rss_peak.max(faults::vm_rss_kib(pid).unwrap());
    }
    let grown_mib = (rss_peak.saturating_sub(rss_before)) / 1024;
    eprintln!("control plane RSS grew by {grown_mib} MiB while {BIG_EVENTS} events of {BIG_EVENT} bytes went by");
    assert!(
        grown_mib < 64,
        "a watcher that does not read pinned memory: RSS grew by {grown_mib} MiB for {} MiB of events",
        (BIG_EVENTS as usize * BIG_EVENT) >> 20
    );

    // When it reads at last, it gets every event once, in order (from the
    // log where the live feed moved on without it).
    for s in 1..=BIG_EVENTS {
        next_is(&mut slow, s).await;
    }
    assert!(faults::panics_in(&faults::control_plane_log(&cp)).is_empty());
}

#[tokio::test]
async fn a_watcher_that_never_reads_blocks_nobody_sqlite() {
    let (cp, m) = start("", Some(TestDatabase::sqlite().unwrap()), &[]).await.unwrap();
    never_reading_watcher(cp, m).await;
}

#[tokio::test]
async fn a_watcher_that_never_reads_blocks_nobody_postgres() {
    let Some((cp, m)) = start("a_watcher_that_never_reads_blocks_nobody_postgres", None, &[]).await else {
        return;
    };
    never_reading_watcher(cp, m).await;
}
