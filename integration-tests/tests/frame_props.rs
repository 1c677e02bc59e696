//! Property test of the control plane's runtime-stream frame handling: a
//! paired machine (spoken for by the test itself) opens stream after
//! stream and sends random frames — every oneof case and none, random
//! seqs, its own session, another runtime's session, unknown and garbage
//! session ids. Whatever it sends, the server stays up (a new stream is
//! welcomed and answers a heartbeat), never stores anything for a session
//! this runtime does not own, never leaves a gap or a duplicate in its own
//! session's log, and never panics. Hostile shapes are drawn on purpose:
//! NUL bytes and other control characters, ids far over the 128-byte limit,
//! batches naming up to (and past) the most sessions a frame may name. A
//! refused frame ends only that stream, with a precise status: never
//! INTERNAL (which would mean machine input reached the database). It runs
//! on PostgreSQL too when `OMA_TEST_POSTGRES_URL` is set.
//!
//! `PROPTEST_CASES=20000 cargo test -p oma-integration-tests --test frame_props`
//! (or `scripts/fuzz.sh`) runs it for longer.

use std::sync::Mutex;
use std::time::Duration;

use oma_integration_tests::faults::{self, RawMachine, RawStream, StreamAnswer};
use oma_integration_tests::{TestDatabase, World};
use oma_proto::pb;
use oma_proto::pb::agent_frame::Frame as Af;
use oma_proto::pb::control_frame::Frame as Cf;
use oma_proto::pb::session_event::Kind;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tonic::Code;

#[derive(Debug, Clone)]
enum Sid {
    Theirs,
    Ours,
    Unknown(u128),
    Garbage(String),
    /// Our session's id with a NUL byte in it.
    Nul,
    /// An id of this many bytes (over the limit).
    Long(usize),
}

#[derive(Debug, Clone)]
enum Seq {
    Zero,
    /// The next one the server expects.
    Next,
    /// One already stored (a resend).
    Stored,
    /// A little ahead (a gap).
    Ahead(u64),
    Any(u64),
}

#[derive(Debug, Clone)]
enum FrameSpec {
    Empty,
    Hello,
    Heartbeat(u64),
    Ready(Sid, String, bool),
    Event(Sid, Seq, EventKind),
    Batch(Vec<(Sid, Seq, EventKind)>),
    Failed(Sid, String),
    Disposed(Sid),
    Ack(String),
    Manifest(Vec<String>),
    /// A batch over this many unknown sessions, then one event of ours.
    ManySessions(usize, Seq),
}

#[derive(Debug, Clone)]
enum EventKind {
    None,
    Log(String),
    Update(String, String),
    TurnStarted(String),
    TurnEnded(String, i32, String),
    Status(i32, String),
    Permission(String, Vec<(String, i32)>),
    Decided(String, String, bool),
    Error(String),
}

fn sid() -> impl Strategy<Value = Sid> {
    prop_oneof![
        3 => Just(Sid::Ours),
        3 => Just(Sid::Theirs),
        1 => any::<u128>().prop_map(Sid::Unknown),
        1 => any::<String>().prop_map(Sid::Garbage),
        1 => Just(Sid::Nul),
        1 => (129usize..4000).prop_map(Sid::Long),
    ]
}

fn sid_not_ours() -> impl Strategy<Value = Sid> {
    prop_oneof![
        3 => Just(Sid::Theirs),
        1 => any::<u128>().prop_map(Sid::Unknown),
        1 => any::<String>().prop_map(Sid::Garbage),
        1 => Just(Sid::Nul),
        1 => (129usize..4000).prop_map(Sid::Long),
    ]
}

/// `len` hex digits: incompressible, so no index can shrink it below its
/// size limit.
fn hex(len: usize, salt: u64) -> String {
    let mut x = salt | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from_digit((x % 16) as u32, 16).unwrap()
        })
        .collect()
}

fn seq() -> impl Strategy<Value = Seq> {
    prop_oneof![
        1 => Just(Seq::Zero),
        6 => Just(Seq::Next),
        2 => Just(Seq::Stored),
        1 => (2u64..5).prop_map(Seq::Ahead),
        1 => any::<u64>().prop_map(Seq::Any),
    ]
}

fn short() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just(String::new()),
        8 => "[a-z0-9_-]{1,12}",
        2 => any::<String>(),
        1 => "[a-z]{0,4}".prop_map(|s| format!("{s}\0")),
        1 => ("[a-z]{0,4}", prop::sample::select(vec!['\n', '\r', '\t', '\u{1b}', '\u{7f}', '\u{85}'])).prop_map(|(s, c)| format!("{s}{c}x")),
        1 => (129usize..3000, any::<u64>()).prop_map(|(n, salt)| hex(n, salt)),
    ]
}

fn event_kind() -> impl Strategy<Value = EventKind> {
    prop_oneof![
        Just(EventKind::None),
        short().prop_map(EventKind::Log),
        (short(), any::<String>()).prop_map(|(k, raw)| EventKind::Update(k, raw)),
        short().prop_map(EventKind::TurnStarted),
        (short(), -1i32..8, short()).prop_map(|(t, r, e)| EventKind::TurnEnded(t, r, e)),
        (-1i32..7, short()).prop_map(|(s, id)| EventKind::Status(s, id)),
        (short(), prop::collection::vec((short(), -1i32..6), 0..4)).prop_map(|(r, o)| EventKind::Permission(r, o)),
        (short(), short(), any::<bool>()).prop_map(|(r, o, c)| EventKind::Decided(r, o, c)),
        short().prop_map(EventKind::Error),
    ]
}

fn frame() -> impl Strategy<Value = FrameSpec> {
    prop_oneof![
        1 => Just(FrameSpec::Empty),
        1 => Just(FrameSpec::Hello),
        2 => any::<u64>().prop_map(FrameSpec::Heartbeat),
        1 => (sid(), short(), any::<bool>()).prop_map(|(s, a, r)| FrameSpec::Ready(s, a, r)),
        8 => (sid(), seq(), event_kind()).prop_map(|(s, q, k)| FrameSpec::Event(s, q, k)),
        3 => prop::collection::vec((sid(), seq(), event_kind()), 0..6).prop_map(FrameSpec::Batch),
        1 => (sid(), short()).prop_map(|(s, m)| FrameSpec::Failed(s, m)),
        1 => sid_not_ours().prop_map(FrameSpec::Disposed),
        1 => short().prop_map(FrameSpec::Ack),
        1 => prop::collection::vec(short(), 0..3).prop_map(FrameSpec::Manifest),
        1 => (prop_oneof![1usize..50, 990usize..1010], seq()).prop_map(|(n, q)| FrameSpec::ManySessions(n, q)),
    ]
}

/// The world (its daemon's session `theirs` has a finished turn) and a raw
/// machine of the same tenant with a session of its own, `ours`.
struct Fuzz {
    world: World,
    raw: RawMachine,
    theirs: String,
    theirs_last: u64,
    ours: String,
}

/// What the checks remember between cases.
struct Memory {
    /// Our session's log is checked up to here.
    ours_checked: u64,
    streams_ended: u64,
    streams_alive: u64,
}

async fn fuzz(database: TestDatabase) -> Fuzz {
    let mut world = World::builder()
        .database(database)
        .through_proxy()
        .logs_to_files()
        .daemon_args_exactly(&["--reconnect-max", "1"])
        .agent_name("fuzz")
        .system_prompt("")
        .start()
        .await
        .unwrap();
    let theirs = world.session().await;
    world.run_turn(&theirs, "chunks 3").await;
    let theirs_last = faults::last_seq(&world.clients, &theirs).await.unwrap();
    let (raw, _stream, ours) = world.raw_machine_with_session("fuzz").await;
    Fuzz {
        world,
        raw,
        theirs,
        theirs_last,
        ours,
    }
}

impl Fuzz {
    fn sid(&self, sid: &Sid) -> String {
        match sid {
            Sid::Theirs => self.theirs.clone(),
            Sid::Ours => self.ours.clone(),
            Sid::Unknown(n) => format!("ses_{n:032x}"),
            Sid::Garbage(s) => s.clone(),
            Sid::Nul => format!("{}\0", self.ours),
            Sid::Long(n) => hex(*n, *n as u64),
        }
    }

    fn seq(&self, seq: &Seq, sid: &Sid, ours_next: &mut u64) -> u64 {
        let next = match sid {
            Sid::Ours => *ours_next,
            Sid::Theirs => self.theirs_last + 1,
            _ => 1,
        };
        let value = match seq {
            Seq::Zero => 0,
            Seq::Next => next,
            Seq::Stored => next.saturating_sub(1),
            Seq::Ahead(n) => next + n,
            Seq::Any(n) => *n,
        };
        if matches!(sid, Sid::Ours) && value == *ours_next {
            *ours_next += 1;
        }
        value
    }

    fn event(&self, sid: &Sid, seq: &Seq, kind: &EventKind, ours_next: &mut u64) -> pb::SessionEvent {
        let turn_id = match kind {
            EventKind::TurnStarted(turn) | EventKind::TurnEnded(turn, ..) => turn.clone(),
            _ => String::new(),
        };
        let kind = match kind.clone() {
            EventKind::None => None,
            EventKind::Log(message) => Some(Kind::Log(pb::SessionLog { message })),
            EventKind::Update(kind, raw_json) => Some(Kind::Update(pb::SessionUpdate {
                kind,
                raw_json,
                typed: None,
            })),
            EventKind::TurnStarted(_) => Some(Kind::TurnStarted(pb::TurnStarted::default())),
            EventKind::TurnEnded(_, reason, error) => Some(Kind::TurnEnded(pb::TurnEnded {
                stop_reason: reason,
                error,
                usage_json: String::new(),
            })),
            EventKind::Status(status, acp_session_id) => {
                Some(Kind::StatusChanged(pb::SessionStatusChanged { status, acp_session_id }))
            }
            EventKind::Permission(request_id, options) => Some(Kind::PermissionRequested(pb::PermissionRequested {
                request_id,
                tool_call: None,
                options: options
                    .into_iter()
                    .map(|(option_id, kind)| pb::PermissionOption {
                        option_id,
                        name: "n".into(),
                        kind,
                    })
                    .collect(),
                raw_json: "{}".into(),
            })),
            EventKind::Decided(request_id, option_id, cancelled) => {
                Some(Kind::PermissionDecided(pb::PermissionDecided {
                    request_id,
                    option_id,
                    cancelled,
                    decided_by: "fuzz".into(),
                }))
            }
            EventKind::Error(message) => Some(Kind::Error(pb::SessionError {
                code: "fuzz".into(),
                message,
            })),
        };
        pb::SessionEvent {
            session_id: self.sid(sid),
            seq: self.seq(seq, sid, ours_next),
            time: None,
            turn_id,
            kind,
        }
    }

    fn frame(&self, spec: &FrameSpec, ours_next: &mut u64) -> Option<Af> {
        Some(match spec {
            FrameSpec::Empty => return None,
            FrameSpec::Hello => Af::Hello(self.raw.hello()),
            FrameSpec::Heartbeat(at) => Af::Heartbeat(pb::Heartbeat { sent_at_ms: *at }),
            FrameSpec::Ready(sid, acp, resumed) => Af::SessionReady(pb::SessionReady {
                session_id: self.sid(sid),
                acp_session_id: acp.clone(),
                resumed: *resumed,
            }),
            FrameSpec::Event(sid, seq, kind) => Af::Event(pb::SessionEventFrame {
                event: Some(self.event(sid, seq, kind, ours_next)),
            }),
            FrameSpec::Batch(events) => Af::Events(pb::SessionEventBatch {
                events: events
                    .iter()
                    .map(|(sid, seq, kind)| self.event(sid, seq, kind, ours_next))
                    .collect(),
            }),
            FrameSpec::Failed(sid, message) => Af::SessionFailed(pb::SessionFailed {
                session_id: self.sid(sid),
                error: Some(pb::SessionError {
                    code: "fuzz".into(),
                    message: message.clone(),
                }),
            }),
            FrameSpec::Disposed(sid) => Af::SessionDisposed(pb::SessionDisposed {
                session_id: self.sid(sid),
            }),
            FrameSpec::Ack(command_id) => Af::Ack(pb::ControlAck {
                command_id: command_id.clone(),
            }),
            FrameSpec::Manifest(ids) => Af::ManifestUpdate(pb::ManifestUpdate {
                manifest: Some(pb::Manifest {
                    acp_agents: ids
                        .iter()
                        .map(|id| pb::AcpAgentInfo {
                            id: id.clone(),
                            ..Default::default()
                        })
                        .chain(std::iter::once(pb::AcpAgentInfo {
                            id: "test".into(),
                            ..Default::default()
                        }))
                        .collect(),
                    ..Default::default()
                }),
            }),
            FrameSpec::ManySessions(n, seq) => Af::Events(pb::SessionEventBatch {
                events: (0..*n as u128)
                    .map(|i| Sid::Unknown(u128::MAX - i))
                    .chain(std::iter::once(Sid::Ours))
                    .map(|sid| self.event(&sid, seq, &EventKind::Log("many".into()), ours_next))
                    .collect(),
            }),
        })
    }

    async fn open(&self) -> Result<RawStream, TestCaseError> {
        let last = faults::last_seq(&self.world.clients, &self.ours)
            .await
            .map_err(|e| TestCaseError::fail(format!("the server stopped answering: {e}")))?;
        let mut hello = self.raw.hello();
        hello.sessions = vec![pb::HeldSession {
            session_id: self.ours.clone(),
            last_sent_seq: last,
        }];
        let channel = self
            .world
            .cp
            .channel()
            .await
            .map_err(|e| TestCaseError::fail(format!("cannot connect: {e}")))?;
        self.raw
            .open(channel, hello)
            .await
            .map_err(|e| TestCaseError::fail(format!("a new stream was refused: {e:?}")))
    }

    async fn case(&self, memory: &Mutex<Memory>, frames: Vec<FrameSpec>) -> Result<(), TestCaseError> {
        let mut stream = self.open().await?;
        let mut ours_next = stream
            .welcome
            .sessions
            .iter()
            .find(|c| c.session_id == self.ours)
            .map_or(1, |c| c.last_stored_seq + 1);
        for spec in &frames {
            let frame = self.frame(spec, &mut ours_next);
            if !stream.send(frame).await {
                break;
            }
        }
        // The stream either answers a heartbeat or has ended; never hangs.
        match stream.ping(Duration::from_secs(20)).await {
            Ok(frames) => {
                for frame in frames {
                    if let Cf::EventAck(ack) = frame {
                        prop_assert_ne!(&ack.session_id, &self.theirs, "acked another runtime's session");
                    }
                }
                memory.lock().unwrap().streams_alive += 1;
            }
            Err(StreamAnswer::Status(status)) => {
                // Refused with a precise status, never a database error.
                prop_assert!(
                    matches!(
                        status.code(),
                        Code::InvalidArgument | Code::FailedPrecondition | Code::ResourceExhausted
                    ),
                    "the stream ended with {status:?}"
                );
                memory.lock().unwrap().streams_ended += 1
            }
            Err(StreamAnswer::Closed) => memory.lock().unwrap().streams_ended += 1,
            Err(other) => {
                return Err(TestCaseError::fail(format!(
                    "the stream neither answered nor ended: {other:?}"
                )));
            }
        }
        drop(stream);

        // Another runtime's session: untouched.
        let theirs = self
            .world
            .clients
            .get_session(&self.theirs)
            .await
            .map_err(|e| TestCaseError::fail(format!("the other session is gone: {e:#}")))?;
        prop_assert_eq!(
            theirs.last_seq,
            self.theirs_last,
            "another runtime wrote to the session"
        );
        prop_assert_eq!(theirs.status, pb::SessionStatus::Idle as i32);

        // Our session: what was stored since the last case is contiguous.
        let checked = memory.lock().unwrap().ours_checked;
        let last = faults::last_seq(&self.world.clients, &self.ours)
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        if last > checked {
            let mut stream = self
                .world
                .clients
                .sessions
                .clone()
                .watch_session(pb::WatchSessionRequest {
                    session_id: self.ours.clone(),
                    from_seq: checked + 1,
                    until_turn_end: false,
                })
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?
                .into_inner();
            for expected in checked + 1..=last {
                let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
                    .await
                    .map_err(|_| TestCaseError::fail("the watch stalled"))?
                    .map_err(|e| TestCaseError::fail(e.to_string()))?
                    .ok_or_else(|| TestCaseError::fail("the watch ended"))?;
                prop_assert_eq!(event.seq, expected, "our log has a gap or a duplicate");
                prop_assert_eq!(&event.session_id, &self.ours);
            }
            memory.lock().unwrap().ours_checked = last;
        }
        Ok(())
    }
}

#[test]
fn random_frames_never_crash_the_server_nor_touch_another_runtimes_session() {
    random_frames(TestDatabase::sqlite().unwrap());
}

#[test]
fn random_frames_never_crash_the_server_nor_touch_another_runtimes_session_postgres() {
    let name = "random_frames_never_crash_the_server_nor_touch_another_runtimes_session_postgres";
    if let Some(database) = TestDatabase::postgres(name).unwrap() {
        random_frames(database);
    }
}

fn random_frames(database: TestDatabase) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let fuzz = runtime.block_on(fuzz(database));
    let memory = Mutex::new(Memory {
        ours_checked: 0,
        streams_ended: 0,
        streams_alive: 0,
    });
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    let mut runner = TestRunner::new(Config {
        cases,
        // Every case is a real stream: shrinking is cheap enough but slow.
        max_shrink_iters: 256,
        ..Config::default()
    });
    let result = runner.run(&prop::collection::vec(frame(), 1..8), |frames| {
        runtime.block_on(fuzz.case(&memory, frames))
    });
    let memory = memory.into_inner().unwrap();
    eprintln!(
        "{cases} cases: {} streams ended by the server, {} still answering; our session stored {} events",
        memory.streams_ended, memory.streams_alive, memory.ours_checked
    );
    let panics = faults::panics_in(&faults::control_plane_log(&fuzz.world.cp));
    assert!(panics.is_empty(), "the control plane panicked: {panics:#?}");
    if let Err(e) = result {
        panic!("{e}");
    }
    // The real daemon's session still works.
    let events = runtime.block_on(fuzz.world.run_turn(&fuzz.theirs, "echo still here"));
    assert_eq!(faults::agent_text(&events), "still here");
}
