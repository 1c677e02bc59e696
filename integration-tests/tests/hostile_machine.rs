//! A hostile machine, on SQLite and on PostgreSQL (`OMA_TEST_POSTGRES_URL`):
//! a paired runtime, spoken for by the test, sends what a broken or malicious
//! `oma-agent` could. NUL bytes and oversized strings in every id the control
//! plane stores, keys on or logs; batches over many sessions (its own,
//! another tenant's, another runtime's, unknown, deleted); floods; and
//! streams that never read what they are sent.
//!
//! Each time only that runtime is refused (with a status naming the field)
//! or has its stream ended, nothing it sent is half-stored, and a
//! well-behaved runtime streaming at the same time gets every ack and a
//! complete log. The server's memory stays bounded and it keeps serving.

use std::time::{Duration, Instant};

use anyhow::bail;
use oma_integration_tests::faults::{self, RawMachine, RawStream, StreamAnswer, control_plane_log, panics_in};
use oma_integration_tests::{Bearer, Clients, ControlPlane, TestDatabase, test_agent_spec, wait_until};
use oma_proto::pb;
use oma_proto::pb::agent_frame::Frame as Af;
use oma_proto::pb::control_frame::Frame as Cf;
use oma_proto::pb::session_event::Kind;
use oma_proto::validate::{MAX_FRAME_EVENTS, MAX_FRAME_SESSIONS};
use tokio_util::sync::CancellationToken;
use tonic::Code;

/// The server's send timeout in these tests (`--runtime-send-timeout`).
const SEND_TIMEOUT: Duration = Duration::from_secs(2);
const CP_ARGS: &[&str] = &["--runtime-send-timeout", "2s", "--heartbeat-interval", "30s"];

/// A control plane, a well-behaved runtime, a hostile runtime of the same
/// tenant, and a runtime of another tenant.
struct World {
    cp: ControlPlane,
    clients: Clients,
    good: RawMachine,
    good_session: String,
    bad: RawMachine,
    bad_session: String,
    /// A session of the hostile runtime, deleted (its tombstone waits for
    /// the machine's dispose).
    bad_deleted: String,
    foreign_clients: Clients,
    foreign_session: String,
    foreign_last: u64,
}

async fn world(database: TestDatabase) -> World {
    let cp = faults::start_control_plane(database, CP_ARGS).unwrap();
    let mut clients = Clients::new(cp.channel().await.unwrap(), Bearer::new(&cp.admin_token));
    let (good, _, good_session) = machine_with_session(&cp, &mut clients, "good").await;
    let (bad, bad_agent, bad_session) = machine_with_session(&cp, &mut clients, "bad").await;
    let bad_deleted = create_session(&mut clients, &bad_agent).await;
    clients
        .sessions
        .delete_session(pb::DeleteSessionRequest {
            session_id: bad_deleted.clone(),
            ..Default::default()
        })
        .await
        .unwrap();

    let token = cp.create_tenant("other").unwrap();
    let mut foreign_clients = Clients::new(cp.channel().await.unwrap(), Bearer::new(&token));
    let (foreign, _, foreign_session) = machine_with_session(&cp, &mut foreign_clients, "foreign").await;
    let mut stream = open(&cp, &foreign, &[&foreign_session]).await;
    let frames = vec![events_frame(vec![
        event(&foreign_session, 1, "theirs"),
        event(&foreign_session, 2, "theirs"),
    ])];
    acks_until(&mut stream, frames, &foreign_session, 2).await;
    drop(stream);
    World {
        cp,
        clients,
        good,
        good_session,
        bad,
        bad_session,
        bad_deleted,
        foreign_clients,
        foreign_session,
        foreign_last: 2,
    }
}

/// Pairs a raw machine, binds an agent to it and creates a session (which
/// the server starts on it).
async fn machine_with_session(cp: &ControlPlane, clients: &mut Clients, name: &str) -> (RawMachine, String, String) {
    let machine = RawMachine::pair(clients, name).await.unwrap();
    // Connected once, so its manifest names `test`.
    let mut stream = open(cp, &machine, &[]).await;
    let agent = create_agent(clients, &machine.runtime_id, Vec::new()).await;
    let session = create_session(clients, &agent).await;
    loop {
        match stream.next(Duration::from_secs(10)).await {
            StreamAnswer::Frame(Cf::StartSession(start)) if start.session_id == session => break,
            StreamAnswer::Frame(_) => {}
            other => panic!("no StartSession for {session}: {other:?}"),
        }
    }
    (machine, agent, session)
}

async fn create_agent(clients: &mut Clients, runtime_id: &str, skills: Vec<pb::Skill>) -> String {
    let name = format!("hostile-{:08x}", rand::random::<u32>());
    let spec = pb::AgentSpec {
        skills,
        ..test_agent_spec(&name, runtime_id, pb::PermissionPolicy::Ask)
    };
    clients.create_agent(spec).await.unwrap()
}

async fn create_session(clients: &mut Clients, agent_id: &str) -> String {
    clients.create_session(agent_id, "").await.unwrap()
}

async fn open(cp: &ControlPlane, machine: &RawMachine, held: &[&str]) -> RawStream {
    try_open(cp, machine, hello_holding(machine, held)).await.unwrap()
}

async fn try_open(cp: &ControlPlane, machine: &RawMachine, hello: pb::Hello) -> Result<RawStream, tonic::Status> {
    machine.open(cp.channel().await.unwrap(), hello).await
}

/// Opens a stream that will never be read past its Welcome, on a channel
/// that buffers at most 16 KiB it has not read (a client chooses its own
/// window; the default 2 MiB would take thousands of frames to fill).
async fn open_unread(cp: &ControlPlane, machine: &RawMachine, held: &[&str]) -> RawStream {
    let channel = tonic::transport::Endpoint::from_shared(cp.url())
        .unwrap()
        .initial_stream_window_size(16 * 1024)
        .connect()
        .await
        .unwrap();
    machine.open(channel, hello_holding(machine, held)).await.unwrap()
}

fn hello_holding(machine: &RawMachine, held: &[&str]) -> pb::Hello {
    let mut hello = machine.hello();
    hello.sessions = held
        .iter()
        .map(|id| pb::HeldSession {
            session_id: (*id).to_owned(),
            last_sent_seq: 0,
        })
        .collect();
    hello
}

fn event(session_id: &str, seq: u64, text: &str) -> pb::SessionEvent {
    pb::SessionEvent {
        session_id: session_id.into(),
        seq,
        kind: Some(Kind::Log(pb::SessionLog { message: text.into() })),
        ..Default::default()
    }
}

fn with_kind(session_id: &str, seq: u64, kind: Kind) -> pb::SessionEvent {
    pb::SessionEvent {
        kind: Some(kind),
        ..event(session_id, seq, "")
    }
}

fn events_frame(events: Vec<pb::SessionEvent>) -> Option<Af> {
    Some(Af::Events(pb::SessionEventBatch { events }))
}

/// Sends frames, then reads until the ack of `session` reaches `seq` (acks
/// go out in the order the frames came); returns every frame seen.
async fn acks_until(stream: &mut RawStream, frames: Vec<Option<Af>>, session: &str, seq: u64) -> Vec<Cf> {
    for frame in frames {
        assert!(stream.send(frame).await, "the stream closed");
    }
    let mut seen = Vec::new();
    loop {
        match stream.next(Duration::from_secs(30)).await {
            StreamAnswer::Frame(Cf::EventAck(ack)) if ack.session_id == session && ack.seq >= seq => {
                seen.push(Cf::EventAck(ack));
                return seen;
            }
            StreamAnswer::Frame(frame) => seen.push(frame),
            other => panic!("no ack of {session} up to {seq}: {other:?}; before it: {seen:?}"),
        }
    }
}

/// Reads a stream to its end, skipping frames.
async fn end_of(stream: &mut RawStream) -> StreamAnswer {
    loop {
        match stream.next(Duration::from_secs(20)).await {
            StreamAnswer::Frame(_) => {}
            other => return other,
        }
    }
}

/// A random id of `len` hex digits: incompressible, so an index cannot
/// shrink it below its size limit.
fn random_hex(len: usize) -> String {
    (0..len)
        .map(|_| char::from_digit(rand::random::<u32>() % 16, 16).unwrap())
        .collect()
}

async fn last_seq(clients: &Clients, session_id: &str) -> u64 {
    faults::last_seq(clients, session_id).await.unwrap()
}

async fn runtime_status(clients: &Clients, runtime_id: &str) -> pb::RuntimeStatus {
    let runtime = clients
        .runtimes
        .clone()
        .get_runtime(pb::GetRuntimeRequest {
            runtime_id: runtime_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .runtime
        .unwrap();
    pb::RuntimeStatus::try_from(runtime.status).unwrap()
}

// ---------------------------------------------------------------------------
// The well-behaved runtime

/// What the well-behaved runtime sent and had acked.
#[derive(Debug)]
struct Steady {
    sent: u64,
    acked: u64,
}

/// Streams batches of events to `session` on its own stream, reading every
/// ack, until `stop`; then waits for the last ack. Fails if its stream ends
/// or any ack names another session.
async fn steady(mut stream: RawStream, session: String, stop: CancellationToken) -> anyhow::Result<Steady> {
    let mut sent = 0u64;
    let mut acked = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(25));
    let mut sending = true;
    let mut deadline = None;
    loop {
        tokio::select! {
            _ = tick.tick(), if sending => {
                // At least two frames, however quickly the hostile side
                // was answered meanwhile.
                if stop.is_cancelled() && sent >= 20 {
                    sending = false;
                    deadline = Some(Instant::now() + Duration::from_secs(30));
                } else {
                    let events = (sent + 1..=sent + 10).map(|seq| event(&session, seq, &format!("steady {seq}"))).collect();
                    if !stream.send(events_frame(events)).await {
                        bail!("the well-behaved stream closed after {acked} of {sent} acks");
                    }
                    sent += 10;
                }
            }
            answer = stream.next(Duration::from_secs(5)) => match answer {
                StreamAnswer::Frame(Cf::EventAck(ack)) => {
                    if ack.session_id != session {
                        bail!("an ack of another session: {ack:?}");
                    }
                    acked = acked.max(ack.seq);
                }
                StreamAnswer::Frame(_) | StreamAnswer::Silent => {}
                other => bail!("the well-behaved stream ended after {acked} of {sent} acks: {other:?}"),
            },
        }
        if !sending && acked == sent {
            return Ok(Steady { sent, acked });
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            bail!("only {acked} of {sent} events acked");
        }
    }
}

/// The well-behaved runtime, streaming in the background.
struct SteadyRun {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<Steady>>,
}

impl SteadyRun {
    async fn start(world: &World) -> SteadyRun {
        let held = [world.good_session.as_str()];
        let stream = open(&world.cp, &world.good, &held).await;
        assert_eq!(
            stream.welcome.sessions[0].last_stored_seq, 0,
            "the steady session starts empty"
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn(steady(stream, world.good_session.clone(), stop.clone()));
        SteadyRun { stop, task }
    }

    /// Stops it and proves every event it sent was acked and is stored
    /// once, in order.
    async fn finish(self, world: &World) {
        self.stop.cancel();
        let steady = self.task.await.unwrap().unwrap();
        eprintln!("the well-behaved runtime meanwhile: {steady:?}");
        assert!(steady.sent >= 20, "the steady runtime hardly ran: {steady:?}");
        assert_eq!(steady.acked, steady.sent);
        let log = faults::read_log(&world.clients, &world.good_session, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(log.len() as u64, steady.sent, "the steady log is not complete");
        let problems = faults::log_problems(&log, &[]);
        assert!(problems.is_empty(), "{problems:#?}");
        assert!(
            log.iter().all(|e| faults::agent_text_of(e).is_none()
                && matches!(&e.kind, Some(Kind::Log(l)) if l.message == format!("steady {}", e.seq))),
            "something else was stored in the steady session"
        );
    }
}

impl World {
    /// Another tenant's session is untouched, and nothing panicked.
    async fn assert_untouched(&self) {
        assert_eq!(
            last_seq(&self.foreign_clients, &self.foreign_session).await,
            self.foreign_last
        );
        let log = faults::read_log(&self.foreign_clients, &self.foreign_session, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(
            log.iter()
                .all(|e| matches!(&e.kind, Some(Kind::Log(l)) if l.message == "theirs")),
            "another tenant's session was written to: {log:?}"
        );
        let panics = panics_in(&control_plane_log(&self.cp));
        assert!(panics.is_empty(), "the control plane panicked: {panics:#?}");
    }

    /// A new stream of the hostile machine is welcomed and served.
    async fn assert_serves_the_machine_again(&self) {
        let held = [self.bad_session.as_str()];
        let mut stream = open(&self.cp, &self.bad, &held).await;
        stream
            .ping(Duration::from_secs(20))
            .await
            .expect("a new stream is served");
    }
}

// ---------------------------------------------------------------------------
// Bad strings in every field

/// One refused frame: what it is, the frame, and the field its status names.
struct Refusal {
    what: &'static str,
    frame: Option<Af>,
    field: String,
}

fn refusals(world: &World) -> Vec<Refusal> {
    let ours = world.bad_session.as_str();
    let nul = "ses\0nul";
    // Over the ~2.7 KB a PostgreSQL index entry may hold.
    let long = random_hex(3000);
    let ok = || event(ours, 1, "must not be stored");
    let request = |request_id: &str, options: Vec<(&str, i32)>| {
        Kind::PermissionRequested(pb::PermissionRequested {
            request_id: request_id.into(),
            tool_call: None,
            options: options
                .into_iter()
                .map(|(option_id, kind)| pb::PermissionOption {
                    option_id: option_id.into(),
                    name: "Allow".into(),
                    kind,
                })
                .collect(),
            raw_json: "{}".into(),
        })
    };
    let allow = pb::PermissionOptionKind::AllowOnce as i32;
    let reject = pb::PermissionOptionKind::RejectOnce as i32;
    let decided = |request_id: &str, option_id: &str, decided_by: &str| {
        Kind::PermissionDecided(pb::PermissionDecided {
            request_id: request_id.into(),
            option_id: option_id.into(),
            cancelled: false,
            decided_by: decided_by.into(),
        })
    };
    // Each bad event comes after a valid one in the same frame: a refused
    // frame is refused whole, so the valid one must not be stored either.
    let batch = |what: &'static str, bad: pb::SessionEvent, field: &str| Refusal {
        what,
        frame: events_frame(vec![ok(), bad]),
        field: format!("events.events[1].{field}"),
    };
    let mut manifest = world.bad.hello().manifest.unwrap();
    manifest.acp_agents[0].local_skills.push(pb::LocalSkill {
        id: "pdf".into(),
        name: "PDF\0".into(),
        ..Default::default()
    });
    vec![
        batch("a NUL session id", event(nul, 2, "x"), "session_id"),
        batch("a 3 KB session id", event(&long, 2, "x"), "session_id"),
        batch(
            "a NUL turn id",
            pb::SessionEvent {
                turn_id: "turn\0".into(),
                ..event(ours, 2, "x")
            },
            "turn_id",
        ),
        batch(
            "a NUL permission request id",
            with_kind(ours, 2, request("perm\0-1", vec![("allow", allow)])),
            "permission_requested.request_id",
        ),
        batch(
            "a 3 KB permission request id",
            with_kind(ours, 2, request(&long, vec![("allow", allow)])),
            "permission_requested.request_id",
        ),
        batch(
            "a NUL option id",
            with_kind(ours, 2, request("perm-1", vec![("allow", allow), ("re\0ject", reject)])),
            "permission_requested.options[1].option_id",
        ),
        batch(
            "a 3 KB option id",
            with_kind(ours, 2, request("perm-1", vec![(&long, allow)])),
            "permission_requested.options[0].option_id",
        ),
        batch(
            "a repeated option id",
            with_kind(ours, 2, request("perm-1", vec![("allow", allow), ("allow", reject)])),
            "permission_requested.options[1].option_id",
        ),
        batch(
            "a NUL decided_by",
            with_kind(ours, 2, decided("perm-1", "allow", "user:\0")),
            "permission_decided.decided_by",
        ),
        batch(
            "a 3 KB decided option id",
            with_kind(ours, 2, decided("perm-1", &long, "policy")),
            "permission_decided.option_id",
        ),
        batch(
            "a NUL ACP session id in a status change",
            with_kind(
                ours,
                2,
                Kind::StatusChanged(pb::SessionStatusChanged {
                    status: pb::SessionStatus::Idle as i32,
                    acp_session_id: "acp\0".into(),
                }),
            ),
            "status_changed.acp_session_id",
        ),
        Refusal {
            what: "seq 0",
            frame: events_frame(vec![ok(), event(ours, 0, "x")]),
            field: "events.events[1].seq".into(),
        },
        Refusal {
            what: "a 3 KB ACP session id in SessionReady",
            frame: Some(Af::SessionReady(pb::SessionReady {
                session_id: ours.into(),
                acp_session_id: long.clone(),
                resumed: false,
            })),
            field: "session_ready.acp_session_id".into(),
        },
        Refusal {
            what: "a NUL session id in SessionFailed",
            frame: Some(Af::SessionFailed(pb::SessionFailed {
                session_id: nul.into(),
                error: None,
            })),
            field: "session_failed.session_id".into(),
        },
        Refusal {
            what: "a 3 KB session id in SessionDisposed",
            frame: Some(Af::SessionDisposed(pb::SessionDisposed {
                session_id: long.clone(),
            })),
            field: "session_disposed.session_id".into(),
        },
        Refusal {
            what: "a NUL command id in an ack",
            frame: Some(Af::Ack(pb::ControlAck {
                command_id: "c\0".into(),
            })),
            field: "ack.command_id".into(),
        },
        Refusal {
            what: "a NUL skill name in a manifest update",
            frame: Some(Af::ManifestUpdate(pb::ManifestUpdate {
                manifest: Some(manifest),
            })),
            field: "manifest_update.manifest.acp_agents[0].local_skills[0].name".into(),
        },
        Refusal {
            what: "more events than a frame may carry",
            frame: events_frame(
                (1..=MAX_FRAME_EVENTS as u64 + 1)
                    .map(|seq| event(ours, seq, "x"))
                    .collect(),
            ),
            field: "events.events".into(),
        },
        Refusal {
            what: "more sessions than a frame may name",
            frame: events_frame(
                std::iter::once(ok())
                    .chain((0..MAX_FRAME_SESSIONS).map(|_| event(&format!("ses_{}", random_hex(32)), 1, "x")))
                    .collect(),
            ),
            field: "events.events".into(),
        },
    ]
}

/// Hellos that are refused before any Welcome, with the field they name.
fn bad_hellos(machine: &RawMachine) -> Vec<(&'static str, pb::Hello, &'static str)> {
    let base = || machine.hello();
    let mut held_nul = base();
    held_nul.sessions = vec![pb::HeldSession {
        session_id: "ses\0".into(),
        last_sent_seq: 0,
    }];
    let mut version = base();
    version.manifest.as_mut().unwrap().acp_agents[0].version = random_hex(3000);
    vec![
        (
            "a NUL instance id",
            pb::Hello {
                instance_id: "i\0".into(),
                ..base()
            },
            "hello.instance_id",
        ),
        (
            "a 3 KB instance id",
            pb::Hello {
                instance_id: random_hex(3000),
                ..base()
            },
            "hello.instance_id",
        ),
        ("a NUL held session id", held_nul, "hello.sessions[0].session_id"),
        (
            "a 3 KB agent version in the manifest",
            version,
            "hello.manifest.acp_agents[0].version",
        ),
        (
            "a NUL agent version",
            pb::Hello {
                agent_version: "0.1\0".into(),
                ..base()
            },
            "hello.agent_version",
        ),
    ]
}

async fn bad_strings_are_refused_naming_the_field(database: TestDatabase) {
    let world = world(database).await;
    let steady = SteadyRun::start(&world).await;
    let held = [world.bad_session.as_str(), world.bad_deleted.as_str()];
    let mut failures = Vec::new();
    for refusal in refusals(&world) {
        let mut stream = open(&world.cp, &world.bad, &held).await;
        assert!(stream.send(refusal.frame).await);
        match end_of(&mut stream).await {
            StreamAnswer::Status(s)
                if s.code() == Code::InvalidArgument && s.message().starts_with(&format!("{}: ", refusal.field)) => {}
            other => failures.push(format!("{}: {other:?}", refusal.what)),
        }
        // Nothing of the frame was stored.
        let stored = last_seq(&world.clients, &world.bad_session).await;
        if stored != 0 {
            failures.push(format!("{}: the hostile session has {stored} events", refusal.what));
        }
    }
    for (what, hello, field) in bad_hellos(&world.bad) {
        match try_open(&world.cp, &world.bad, hello).await {
            Err(s) if s.code() == Code::InvalidArgument && s.message().starts_with(&format!("{field}: ")) => {}
            Err(s) => failures.push(format!("{what}: {s:?}")),
            Ok(_) => failures.push(format!("{what}: welcomed")),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // Refusals never quote what they refused: no NUL reached the log.
    let log = control_plane_log(&world.cp);
    assert!(!log.contains('\0'), "a NUL byte reached the server's log");

    steady.finish(&world).await;
    world.assert_untouched().await;
    world.assert_serves_the_machine_again().await;
    assert_eq!(last_seq(&world.clients, &world.bad_session).await, 0);
}

#[tokio::test]
async fn bad_strings_are_refused_naming_the_field_sqlite() {
    bad_strings_are_refused_naming_the_field(TestDatabase::sqlite().unwrap()).await;
}

#[tokio::test]
async fn bad_strings_are_refused_naming_the_field_postgres() {
    if let Some(db) = TestDatabase::postgres("bad_strings_are_refused_naming_the_field_postgres").unwrap() {
        bad_strings_are_refused_naming_the_field(db).await;
    }
}

// ---------------------------------------------------------------------------
// A batch over many sessions

async fn a_batch_over_many_sessions_stores_only_its_own(database: TestDatabase) {
    let world = world(database).await;
    let steady = SteadyRun::start(&world).await;
    let ours = world.bad_session.clone();
    let held = [ours.as_str(), world.bad_deleted.as_str()];
    let mut stream = open(&world.cp, &world.bad, &held).await;

    // Its own session first, then its deleted one, another runtime's,
    // another tenant's, odd and unknown ids: as many sessions as a frame
    // may name, events interleaved.
    let mut others: Vec<String> = vec![
        world.good_session.clone(),
        world.foreign_session.clone(),
        String::new(),
        "../../etc/passwd".into(),
    ];
    while others.len() < MAX_FRAME_SESSIONS - 2 {
        others.push(format!("ses_{}", random_hex(32)));
    }
    let mut events = vec![event(&ours, 1, "ours 1"), event(&world.bad_deleted, 1, "gone")];
    for (i, other) in others.iter().enumerate() {
        events.push(event(other, 1_000_000 + i as u64, "forged"));
        if i % 100 == 0 {
            events.push(event(&ours, 2 + i as u64 / 100, &format!("ours {}", 2 + i / 100)));
        }
    }
    let own_last = 1 + others.len().div_ceil(100) as u64;
    let started = Instant::now();
    // A marker: once its ack is in, every ack of the batch is.
    let seen = acks_until(
        &mut stream,
        vec![
            events_frame(events),
            events_frame(vec![event(&ours, own_last + 1, "marker")]),
        ],
        &ours,
        own_last + 1,
    )
    .await;
    eprintln!(
        "a batch over {MAX_FRAME_SESSIONS} sessions answered in {:?}",
        started.elapsed()
    );
    // Acks are cumulative and a commit merges the jobs of a session, so the
    // marker's cursor may come with the first frame's ack, before the
    // deleted session's answer: read on until that answer too.
    let mut seen = seen;
    let mut disposed = false;
    let mut checked = 0;
    while !disposed {
        for frame in &seen[checked..] {
            match frame {
                Cf::EventAck(ack) if ack.session_id == ours => {}
                // A deleted session is acked (so the machine stops resending)
                // and disposed, never stored.
                Cf::EventAck(ack) if ack.session_id == world.bad_deleted => {}
                Cf::DisposeSession(d) if d.session_id == world.bad_deleted => disposed = true,
                other => panic!("the hostile runtime got {other:?}"),
            }
        }
        checked = seen.len();
        if !disposed {
            match stream.next(Duration::from_secs(30)).await {
                StreamAnswer::Frame(frame) => seen.push(frame),
                other => panic!("the deleted session was not disposed: {other:?}; before it: {seen:?}"),
            }
        }
    }
    stream
        .ping(Duration::from_secs(20))
        .await
        .expect("the stream is still served");

    // Its own events are stored in order; nothing else is.
    let log = faults::read_log(&world.clients, &ours, Duration::from_secs(30))
        .await
        .unwrap();
    let texts: Vec<String> = log
        .iter()
        .map(|e| match &e.kind {
            Some(Kind::Log(l)) => l.message.clone(),
            other => format!("{other:?}"),
        })
        .collect();
    let mut expected: Vec<String> = (1..=own_last).map(|n| format!("ours {n}")).collect();
    expected.push("marker".into());
    assert_eq!(texts, expected);
    let deleted = world
        .clients
        .sessions
        .clone()
        .get_session(pb::GetSessionRequest {
            session_id: world.bad_deleted.clone(),
        })
        .await;
    assert_eq!(deleted.unwrap_err().code(), Code::NotFound);
    drop(stream);

    steady.finish(&world).await;
    world.assert_untouched().await;
}

#[tokio::test]
async fn a_batch_over_many_sessions_stores_only_its_own_sqlite() {
    a_batch_over_many_sessions_stores_only_its_own(TestDatabase::sqlite().unwrap()).await;
}

#[tokio::test]
async fn a_batch_over_many_sessions_stores_only_its_own_postgres() {
    if let Some(db) = TestDatabase::postgres("a_batch_over_many_sessions_stores_only_its_own_postgres").unwrap() {
        a_batch_over_many_sessions_stores_only_its_own(db).await;
    }
}

// ---------------------------------------------------------------------------
// Streams that never read

/// RSS of the control plane, in MiB.
fn rss_mib(cp: &ControlPlane) -> u64 {
    let pid = faults::control_plane_pid(cp).expect("the control plane's pid");
    faults::vm_rss_kib(pid).expect("its VmRSS") / 1024
}

/// How far the control plane's memory may grow over a hostile run. Its
/// queues hold at most 16 MiB of frames to a runtime and 64 MiB of a
/// runtime's uncommitted events (about 50 MiB is seen here), while the
/// floods push hundreds of MiB through it: ten unread streams that are each
/// resent 20 MiB of starts pinned over 200 MiB before the queues were
/// bounded by bytes and ended on a send timeout.
const RSS_GROWTH_LIMIT_MIB: u64 = 160;

/// Waits until a runtime is offline (its stream was ended).
async fn wait_offline(world: &World, runtime_id: &str, deadline: Duration) {
    let clients = &world.clients;
    wait_until("the runtime to go offline", deadline, || async {
        (runtime_status(clients, runtime_id).await == pb::RuntimeStatus::Offline).then_some(())
    })
    .await
    .unwrap();
}

fn big_skill(bytes: usize) -> pb::Skill {
    pb::Skill {
        name: "big".into(),
        files: vec![
            pb::SkillFile {
                path: "SKILL.md".into(),
                content: b"---\nname: big\ndescription: a big skill\n---\n".to_vec(),
            },
            pb::SkillFile {
                path: "data.txt".into(),
                content: random_hex(bytes).into_bytes(),
            },
        ],
    }
}

async fn streams_that_never_read_are_ended_and_memory_stays_bounded(database: TestDatabase) {
    let mut world = world(database).await;
    let ours = world.bad_session.clone();
    // Sessions whose starts are large: what a reconnecting machine that
    // holds none of them is sent again (in 3; the other streams hold them).
    let big_agent = create_agent(&mut world.clients, &world.bad.runtime_id, vec![big_skill(1024 * 1024)]).await;
    let mut big_sessions = Vec::new();
    for _ in 0..20 {
        big_sessions.push(create_session(&mut world.clients, &big_agent).await);
    }
    let held: Vec<&str> = std::iter::once(ours.as_str())
        .chain(big_sessions.iter().map(String::as_str))
        .collect();
    let steady = SteadyRun::start(&world).await;
    let rss_before = rss_mib(&world.cp);
    let mut rss_peak = rss_before;

    // 1. Control frames it never reads: each CancelTurn queues a Cancel.
    // Once its window and queue are full, the next call waits the send
    // timeout and fails precisely; no call hangs.
    let stream = open_unread(&world.cp, &world.bad, &held).await;
    world
        .clients
        .sessions
        .prompt_session(pb::PromptSessionRequest {
            session_id: ours.clone(),
            turn_id: String::new(),
            prompt: oma_integration_tests::text_prompt("echo never read"),
        })
        .await
        .unwrap();
    let mut cancels = 0;
    let (status, took) = loop {
        let started = Instant::now();
        let result = world
            .clients
            .sessions
            .cancel_turn(pb::CancelTurnRequest {
                session_id: ours.clone(),
            })
            .await;
        match result {
            Ok(_) => cancels += 1,
            Err(status) => break (status, started.elapsed()),
        }
        assert!(cancels < 20_000, "a runtime that never reads took {cancels} frames");
    };
    eprintln!("{cancels} cancels queued, then one waited {took:?}: {status:?}");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("stopped reading"), "{status:?}");
    assert!(
        took >= SEND_TIMEOUT - Duration::from_millis(200) && took < SEND_TIMEOUT + Duration::from_secs(5),
        "the failing call took {took:?}"
    );
    wait_offline(&world, &world.bad.runtime_id, Duration::from_secs(10)).await;
    // Later calls fail at once, saying since when it is offline.
    let started = Instant::now();
    let err = world
        .clients
        .sessions
        .cancel_turn(pb::CancelTurnRequest {
            session_id: ours.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("offline"), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(stream);
    rss_peak = rss_peak.max(rss_mib(&world.cp));
    eprintln!("after control frames it never read: peak {rss_peak} MiB");

    // 2. Acks it never reads: its own events, one per frame, as fast as
    // the server takes them. The stream is ended; what was stored is
    // complete, and its next Welcome says how far.
    let stream = open_unread(&world.cp, &world.bad, &held).await;
    let tx = stream.tx.clone();
    let session = ours.clone();
    let flood = tokio::spawn(async move {
        for seq in 1..=1_000_000u64 {
            let frame = pb::AgentFrame {
                frame: Some(Af::Event(pb::SessionEventFrame {
                    event: Some(event(&session, seq, &format!("flood {seq}"))),
                })),
            };
            if tx.send(frame).await.is_err() {
                return;
            }
        }
    });
    wait_offline(&world, &world.bad.runtime_id, Duration::from_secs(60)).await;
    flood.abort();
    drop(stream);
    rss_peak = rss_peak.max(rss_mib(&world.cp));
    let stored = last_seq(&world.clients, &ours).await;
    eprintln!("{stored} events stored before the stream that never read its acks was ended");
    assert!(stored > 1000, "the flood hardly started: {stored}");
    let log = faults::read_log(&world.clients, &ours, Duration::from_secs(60))
        .await
        .unwrap();
    let problems = faults::log_problems(&log, &[]);
    assert!(problems.is_empty(), "{problems:#?}");
    let mut again = open(&world.cp, &world.bad, &held).await;
    let cursor = again.welcome.sessions.iter().find(|c| c.session_id == ours).unwrap();
    assert_eq!(cursor.last_stored_seq, stored);
    again.ping(Duration::from_secs(30)).await.expect("served again");
    drop(again);
    eprintln!("after acks it never read: peak {rss_peak} MiB");

    // 3. Starts it never reads: a machine that holds none of its sessions
    // is sent each one's start (1 MiB each) again, stream after stream.
    let mut unread = Vec::new();
    for _ in 0..10 {
        unread.push(open_unread(&world.cp, &world.bad, &[]).await);
        rss_peak = rss_peak.max(rss_mib(&world.cp));
    }
    wait_offline(&world, &world.bad.runtime_id, Duration::from_secs(30)).await;
    rss_peak = rss_peak.max(rss_mib(&world.cp));
    drop(unread);
    eprintln!("after starts it never read: peak {rss_peak} MiB");

    // 4. Large events for sessions it does not own, never reading: each is
    // refused, none is kept.
    let mut stream = open(&world.cp, &world.bad, &held).await;
    let big = "x".repeat(4 * 1024 * 1024);
    for _ in 0..64 {
        let forged = event(&format!("ses_{}", random_hex(32)), 1, &big);
        assert!(stream.send(events_frame(vec![forged])).await, "the stream was ended");
    }
    rss_peak = rss_peak.max(rss_mib(&world.cp));
    stream.ping(Duration::from_secs(60)).await.expect("still served");
    rss_peak = rss_peak.max(rss_mib(&world.cp));
    drop(stream);

    let rss_after = rss_mib(&world.cp);
    eprintln!("control plane RSS: {rss_before} MiB before, {rss_peak} MiB at the peak, {rss_after} MiB after");
    assert!(
        rss_peak < rss_before + RSS_GROWTH_LIMIT_MIB,
        "the control plane grew from {rss_before} to {rss_peak} MiB"
    );
    steady.finish(&world).await;
    world.assert_untouched().await;
    world.assert_serves_the_machine_again().await;
    // The sessions of a machine that never read are still there to start.
    for session in &big_sessions {
        assert_eq!(
            faults::session_status(&world.clients, session).await.unwrap(),
            pb::SessionStatus::Pending
        );
    }
}

#[tokio::test]
async fn streams_that_never_read_are_ended_and_memory_stays_bounded_sqlite() {
    streams_that_never_read_are_ended_and_memory_stays_bounded(TestDatabase::sqlite().unwrap()).await;
}

#[tokio::test]
async fn streams_that_never_read_are_ended_and_memory_stays_bounded_postgres() {
    let name = "streams_that_never_read_are_ended_and_memory_stays_bounded_postgres";
    if let Some(db) = TestDatabase::postgres(name).unwrap() {
        streams_that_never_read_are_ended_and_memory_stays_bounded(db).await;
    }
}
