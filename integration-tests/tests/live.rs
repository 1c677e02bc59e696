//! The live path end to end: `oma-control-plane`, a paired `oma-agent`, and
//! the scripted ACP test agent as real processes on 127.0.0.1.

use std::time::Duration;

use oma_integration_tests::{
    AgentDaemon, Bearer, Clients, ControlPlane, collect_turn, test_agent_spec, text_prompt, wait_online, wait_until,
};
use oma_proto::pb;
use oma_proto::pb::session_event::Kind;
use tonic::Code;

const TURN: Duration = Duration::from_secs(60);

/// Fields drop in order: the daemon stops before the control plane.
struct Setup {
    machine: AgentDaemon,
    clients: Clients,
    cp: ControlPlane,
}

async fn setup(policy: pb::PermissionPolicy) -> (Setup, String) {
    setup_with(policy, &[]).await
}

/// [`setup`] with more `oma-control-plane serve` flags.
async fn setup_with(policy: pb::PermissionPolicy, serve_args: &[&str]) -> (Setup, String) {
    let options = oma_integration_tests::ControlPlaneOptions {
        extra_args: serve_args.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    };
    let cp = ControlPlane::start(oma_integration_tests::TestDatabase::sqlite().unwrap(), options).unwrap();
    let mut clients = Clients::new(cp.channel().await.unwrap(), Bearer::new(&cp.admin_token));
    let code = clients.connect_code().await.unwrap();
    let mut machine = AgentDaemon::setup(&cp.url(), &code).unwrap();
    machine.start(&[]).unwrap();
    let runtime = wait_online(&mut clients, &machine.runtime_id, Duration::from_secs(30))
        .await
        .unwrap();
    let ids: Vec<String> = runtime.manifest.unwrap().acp_agents.into_iter().map(|a| a.id).collect();
    assert!(
        ids.contains(&"test".to_owned()),
        "manifest lacks the test agent: {ids:?}"
    );
    let agent_id = clients
        .create_agent(pb::AgentSpec {
            system_prompt: "You are a test.".into(),
            ..test_agent_spec("scripted", &machine.runtime_id, policy)
        })
        .await
        .unwrap();
    let session = clients
        .sessions
        .create_session(pb::CreateSessionRequest {
            agent_id,
            title: "live".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    (Setup { machine, clients, cp }, session.id)
}

async fn prompt(s: &mut Setup, session_id: &str, text: &str) -> (String, u64) {
    let response = s
        .clients
        .sessions
        .prompt_session(pb::PromptSessionRequest {
            session_id: session_id.into(),
            turn_id: String::new(),
            prompt: text_prompt(text),
        })
        .await
        .unwrap_or_else(|e| panic!("prompt {text:?}: {e}"))
        .into_inner();
    (response.turn_id, response.from_seq)
}

fn agent_text(events: &[pb::SessionEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Update(u)) => match &u.typed {
                Some(pb::session_update::Typed::AgentMessageChunk(c)) => match &c.content.as_ref()?.block {
                    Some(pb::content_block::Block::Text(t)) => Some(t.text.clone()),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn turn_end(events: &[pb::SessionEvent]) -> pb::TurnEnded {
    match &events.last().unwrap().kind {
        Some(Kind::TurnEnded(end)) => end.clone(),
        other => panic!("last event is not TurnEnded: {other:?}"),
    }
}

/// Everything stored for the session, from seq 1, must be 1..=n with no gap.
async fn assert_log_contiguous(s: &mut Setup, session_id: &str) -> Vec<pb::SessionEvent> {
    let session = s
        .clients
        .sessions
        .get_session(pb::GetSessionRequest {
            session_id: session_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    let mut stream = s
        .clients
        .sessions
        .watch_session(pb::WatchSessionRequest {
            session_id: session_id.into(),
            from_seq: 1,
            until_turn_end: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    while (events.len() as u64) < session.last_seq {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        events.push(event);
    }
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=session.last_seq).collect::<Vec<_>>());
    events
}

#[tokio::test]
async fn prompt_streams_every_update_kind_and_ends_the_turn() {
    let (mut s, session_id) = setup(pb::PermissionPolicy::AllowOnce).await;
    let (turn, from) = prompt(&mut s, &session_id, "echo hello\nall-kinds\nunknown-kind\nchunks 3").await;
    let events = collect_turn(&mut s.clients, &session_id, from, &turn, TURN)
        .await
        .unwrap();
    assert!(matches!(
        events.iter().find(|e| e.turn_id == turn).unwrap().kind,
        Some(Kind::TurnStarted(_))
    ));
    assert!(agent_text(&events).starts_with("hello"), "{}", agent_text(&events));
    assert!(agent_text(&events).ends_with("chunk 1\nchunk 2\nchunk 3\n"));
    let kinds: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Update(u)) => Some(u.kind.clone()),
            _ => None,
        })
        .collect();
    for kind in [
        "user_message_chunk",
        "agent_message_chunk",
        "agent_thought_chunk",
        "tool_call",
        "tool_call_update",
        "plan",
        "available_commands_update",
        "current_mode_update",
        "config_option_update",
        "session_info_update",
        "usage_update",
        "oma_future_kind",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} update in {kinds:?}");
    }
    let unknown = events
        .iter()
        .find_map(|e| match &e.kind {
            Some(Kind::Update(u)) if u.kind == "oma_future_kind" => Some(u.clone()),
            _ => None,
        })
        .unwrap();
    assert!(unknown.typed.is_none());
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&unknown.raw_json).unwrap()["payload"]["x"],
        1
    );
    assert_eq!(turn_end(&events).stop_reason, pb::StopReason::EndTurn as i32);

    let session = s
        .clients
        .sessions
        .get_session(pb::GetSessionRequest {
            session_id: session_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(session.status, pb::SessionStatus::Idle as i32);
    assert_log_contiguous(&mut s, &session_id).await;

    // The session directory holds AGENTS.md from the system prompt.
    let agents_md = std::fs::read_to_string(s.machine.session_dir(&session_id).join("AGENTS.md")).unwrap();
    assert_eq!(agents_md, "You are a test.");

    // Delete: the machine disposes of the session and removes its folder.
    s.clients
        .sessions
        .delete_session(pb::DeleteSessionRequest {
            session_id: session_id.clone(),
        })
        .await
        .unwrap();
    let dir = s.machine.session_dir(&session_id);
    wait_until("the session folder to be removed", Duration::from_secs(20), || {
        let gone = !dir.exists();
        async move { gone.then_some(()) }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn one_turn_at_a_time_cancel_crash_and_recovery() {
    let (mut s, session_id) = setup(pb::PermissionPolicy::AllowOnce).await;
    let (turn, from) = prompt(&mut s, &session_id, "sleep 30000").await;
    // Wait until the turn has started on the machine.
    let mut watch = s.clients.sessions.clone();
    let mut stream = watch
        .watch_session(pb::WatchSessionRequest {
            session_id: session_id.clone(),
            from_seq: from,
            until_turn_end: true,
        })
        .await
        .unwrap()
        .into_inner();
    loop {
        let event = stream.message().await.unwrap().unwrap();
        if matches!(event.kind, Some(Kind::TurnStarted(_))) {
            break;
        }
    }
    let second = s
        .clients
        .sessions
        .prompt_session(pb::PromptSessionRequest {
            session_id: session_id.clone(),
            turn_id: String::new(),
            prompt: text_prompt("echo no"),
        })
        .await
        .unwrap_err();
    assert_eq!(second.code(), Code::FailedPrecondition);
    assert!(second.message().contains("still running"), "{}", second.message());
    s.clients
        .sessions
        .cancel_turn(pb::CancelTurnRequest {
            session_id: session_id.clone(),
        })
        .await
        .unwrap();
    let events = collect_turn(&mut s.clients, &session_id, from, &turn, TURN)
        .await
        .unwrap();
    assert_eq!(turn_end(&events).stop_reason, pb::StopReason::Cancelled as i32);

    // A crash mid-turn ends the turn with an error; the next prompt works.
    let (turn, from) = prompt(&mut s, &session_id, "echo before\ncrash").await;
    let events = collect_turn(&mut s.clients, &session_id, from, &turn, TURN)
        .await
        .unwrap();
    let end = turn_end(&events);
    assert_eq!(end.stop_reason, pb::StopReason::Error as i32);
    assert!(end.error.contains("child_exited"), "{}", end.error);
    let (turn, from) = prompt(&mut s, &session_id, "echo after").await;
    let events = collect_turn(&mut s.clients, &session_id, from, &turn, TURN)
        .await
        .unwrap();
    assert_eq!(turn_end(&events).stop_reason, pb::StopReason::EndTurn as i32);
    assert_eq!(agent_text(&events), "after");

    // Garbage on stdout: a clear error, then recovery again.
    let (turn, from) = prompt(&mut s, &session_id, "garbage").await;
    let events = collect_turn(&mut s.clients, &session_id, from, &turn, TURN)
        .await
        .unwrap();
    assert!(
        turn_end(&events).error.contains("invalid_output"),
        "{:?}",
        turn_end(&events)
    );
    let (turn, from) = prompt(&mut s, &session_id, "echo fine").await;
    let events = collect_turn(&mut s.clients, &session_id, from, &turn, TURN)
        .await
        .unwrap();
    assert_eq!(agent_text(&events), "fine");
    assert_log_contiguous(&mut s, &session_id).await;
}

#[tokio::test]
async fn permission_requests_are_decided_once_by_a_person() {
    let (mut s, session_id) = setup(pb::PermissionPolicy::Ask).await;
    let (turn, from) = prompt(&mut s, &session_id, "permission").await;
    let mut stream = s
        .clients
        .sessions
        .watch_session(pb::WatchSessionRequest {
            session_id: session_id.clone(),
            from_seq: from,
            until_turn_end: true,
        })
        .await
        .unwrap()
        .into_inner();
    let request = loop {
        let event = tokio::time::timeout(TURN, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(Kind::PermissionRequested(request)) = event.kind {
            break request;
        }
    };
    let ids: Vec<&str> = request.options.iter().map(|o| o.option_id.as_str()).collect();
    assert_eq!(ids, ["allow", "always", "reject"]);
    let answer = |option: &str| pb::AnswerPermissionRequest {
        session_id: session_id.clone(),
        request_id: request.request_id.clone(),
        answer: Some(pb::answer_permission_request::Answer::OptionId(option.into())),
    };
    let bad = s.clients.sessions.answer_permission(answer("bogus")).await.unwrap_err();
    assert_eq!(
        bad.code(),
        Code::InvalidArgument,
        "an unknown option never counts as approval"
    );
    s.clients.sessions.answer_permission(answer("allow")).await.unwrap();
    let again = s
        .clients
        .sessions
        .answer_permission(answer("reject"))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    let events = collect_turn(&mut s.clients, &session_id, from, &turn, TURN)
        .await
        .unwrap();
    assert!(
        agent_text(&events).contains("permission: selected allow"),
        "{}",
        agent_text(&events)
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.kind, Some(Kind::PermissionDecided(d)) if d.option_id == "allow"))
    );
    let audit = s
        .clients
        .audit
        .list_audit_entries(pb::ListAuditEntriesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert!(
        audit
            .iter()
            .any(|e| e.action == "permission.answer" && e.detail_json.contains("allow"))
    );
}

#[tokio::test]
async fn offline_runtime_is_reported_and_a_revoked_machine_stops() {
    let (mut s, session_id) = setup(pb::PermissionPolicy::AllowOnce).await;
    drop(s.machine.process.take()); // SIGKILL
    let runtime_id = s.machine.runtime_id.clone();
    let runtimes = s.clients.runtimes.clone();
    wait_until("the runtime to go offline", Duration::from_secs(60), || {
        let mut runtimes = runtimes.clone();
        let runtime_id = runtime_id.clone();
        async move {
            let r = runtimes
                .get_runtime(pb::GetRuntimeRequest { runtime_id })
                .await
                .ok()?
                .into_inner()
                .runtime?;
            (r.status == pb::RuntimeStatus::Offline as i32).then_some(())
        }
    })
    .await
    .unwrap();
    let err = s
        .clients
        .sessions
        .prompt_session(pb::PromptSessionRequest {
            session_id: session_id.clone(),
            turn_id: String::new(),
            prompt: text_prompt("echo hi"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("is offline since"), "{}", err.message());

    // Back online; then the runtime is deleted: the daemon stops and says
    // how to pair again instead of retrying forever.
    s.machine.start(&[]).unwrap();
    wait_online(&mut s.clients, &runtime_id, Duration::from_secs(30))
        .await
        .unwrap();
    s.clients
        .runtimes
        .delete_runtime(pb::DeleteRuntimeRequest {
            runtime_id: runtime_id.clone(),
        })
        .await
        .unwrap();
    let process = s.machine.process.as_mut().unwrap();
    let status = process.wait_exit(Duration::from_secs(60)).unwrap();
    assert_eq!(status.code(), Some(3), "a refused machine exits 3");
    let _ = &s.cp;
}

async fn new_session(s: &mut Setup, agent_id: &str) -> String {
    s.clients
        .sessions
        .create_session(pb::CreateSessionRequest {
            agent_id: agent_id.into(),
            title: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap()
        .id
}

async fn agent_of(s: &mut Setup, session_id: &str) -> String {
    s.clients
        .sessions
        .get_session(pb::GetSessionRequest {
            session_id: session_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap()
        .agent_id
}

#[tokio::test]
async fn parallel_sessions_do_not_cross_talk_and_late_watchers_replay() {
    let (mut s, first) = setup(pb::PermissionPolicy::AllowOnce).await;
    let agent_id = agent_of(&mut s, &first).await;
    let second = new_session(&mut s, &agent_id).await;
    let (turn_a, from_a) = prompt(&mut s, &first, "chunks 200 2000\necho A-done").await;
    let (turn_b, from_b) = prompt(&mut s, &second, "chunks 200 2000\necho B-done").await;
    let mut clients_b = Clients::new(s.cp.channel().await.unwrap(), Bearer::new(&s.cp.admin_token));
    let (a, b) = tokio::join!(
        collect_turn(&mut s.clients, &first, from_a, &turn_a, TURN),
        collect_turn(&mut clients_b, &second, from_b, &turn_b, TURN),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.iter().all(|e| e.session_id == first));
    assert!(b.iter().all(|e| e.session_id == second));
    assert!(agent_text(&a).ends_with("A-done") && !agent_text(&a).contains("B-done"));
    assert!(agent_text(&b).ends_with("B-done") && !agent_text(&b).contains("A-done"));
    assert_eq!(agent_text(&a).matches("chunk ").count(), 200);

    // A watcher attaching late gets the whole log from seq 1, then the next
    // turn live, with no gap and no duplicate.
    let mut late = s
        .clients
        .sessions
        .watch_session(pb::WatchSessionRequest {
            session_id: first.clone(),
            from_seq: 1,
            until_turn_end: false,
        })
        .await
        .unwrap()
        .into_inner();
    let (turn_c, _) = prompt(&mut s, &first, "chunks 50 500\necho C-done").await;
    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout(TURN, late.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let done = event.turn_id == turn_c && matches!(event.kind, Some(Kind::TurnEnded(_)));
        seen.push(event);
        if done {
            break;
        }
    }
    let seqs: Vec<u64> = seen.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "late watch has a gap or a duplicate"
    );
    assert!(agent_text(&seen).contains("A-done") && agent_text(&seen).ends_with("C-done"));
}

#[tokio::test]
async fn deny_a_permission_request() {
    let (mut s, session_id) = setup(pb::PermissionPolicy::Ask).await;
    let (turn, from) = prompt(&mut s, &session_id, "permission").await;
    let mut stream = s
        .clients
        .sessions
        .watch_session(pb::WatchSessionRequest {
            session_id: session_id.clone(),
            from_seq: from,
            until_turn_end: true,
        })
        .await
        .unwrap()
        .into_inner();
    let request_id = loop {
        let event = tokio::time::timeout(TURN, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(Kind::PermissionRequested(request)) = event.kind {
            break request.request_id;
        }
    };
    s.clients
        .sessions
        .answer_permission(pb::AnswerPermissionRequest {
            session_id: session_id.clone(),
            request_id,
            answer: Some(pb::answer_permission_request::Answer::Reject(true)),
        })
        .await
        .unwrap();
    let events = collect_turn(&mut s.clients, &session_id, from, &turn, TURN)
        .await
        .unwrap();
    assert!(
        agent_text(&events).contains("permission: selected reject"),
        "{}",
        agent_text(&events)
    );
}

#[tokio::test]
async fn a_hung_agent_ends_the_turn_at_the_idle_timeout() {
    let (mut s, session_id) = setup(pb::PermissionPolicy::AllowOnce).await;
    // Restart the daemon with a short idle timeout.
    drop(s.machine.process.take());
    s.machine.start(&["--idle-timeout", "2"]).unwrap();
    wait_online(&mut s.clients, &s.machine.runtime_id.clone(), Duration::from_secs(30))
        .await
        .unwrap();
    let (turn, from) = prompt(&mut s, &session_id, "echo going\nhang").await;
    let events = collect_turn(&mut s.clients, &session_id, from, &turn, TURN)
        .await
        .unwrap();
    let end = turn_end(&events);
    assert_eq!(end.stop_reason, pb::StopReason::Error as i32);
    assert!(end.error.contains("idle_timeout"), "{}", end.error);
    let (turn, from) = prompt(&mut s, &session_id, "echo alive").await;
    let events = collect_turn(&mut s.clients, &session_id, from, &turn, TURN)
        .await
        .unwrap();
    assert_eq!(agent_text(&events), "alive");
}

fn acp_session_ids(events: &[pb::SessionEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::StatusChanged(c)) if !c.acp_session_id.is_empty() => Some(c.acp_session_id.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn daemon_restart_mid_turn_resumes_the_session_with_session_load() {
    let (mut s, session_id) = setup(pb::PermissionPolicy::AllowOnce).await;
    let (turn, from) = prompt(&mut s, &session_id, "echo first").await;
    collect_turn(&mut s.clients, &session_id, from, &turn, TURN)
        .await
        .unwrap();

    // SIGTERM the daemon while a turn runs.
    let (turn, from) = prompt(&mut s, &session_id, "chunks 5\nsleep 60000").await;
    let mut stream = s
        .clients
        .sessions
        .watch_session(pb::WatchSessionRequest {
            session_id: session_id.clone(),
            from_seq: from,
            until_turn_end: true,
        })
        .await
        .unwrap()
        .into_inner();
    let mut chunks = 0;
    while chunks < 5 {
        let event = tokio::time::timeout(TURN, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if matches!(event.kind, Some(Kind::Update(_))) {
            chunks += 1;
        }
    }
    let process = s.machine.process.as_mut().unwrap();
    process.signal("TERM").unwrap();
    assert!(
        process.wait_exit(Duration::from_secs(30)).unwrap().success(),
        "SIGTERM is a clean stop"
    );
    s.machine.start(&[]).unwrap();

    // The interrupted turn ends with a clear status …
    let events = collect_turn(&mut s.clients, &session_id, from, &turn, TURN)
        .await
        .unwrap();
    let end = turn_end(&events);
    assert_eq!(end.stop_reason, pb::StopReason::Error as i32);
    assert!(end.error.contains("interrupted"), "{}", end.error);
    assert_eq!(
        agent_text(&events).matches("chunk ").count(),
        5,
        "chunks read before the stop are kept"
    );

    // … and the next prompt resumes the same ACP session (session/load).
    let (turn, from) = prompt(&mut s, &session_id, "echo resumed").await;
    let events = collect_turn(&mut s.clients, &session_id, from, &turn, TURN)
        .await
        .unwrap();
    assert_eq!(agent_text(&events), "resumed", "replayed history is not recorded twice");
    let all = assert_log_contiguous(&mut s, &session_id).await;
    let ids = acp_session_ids(&all);
    assert!(ids.len() >= 2, "{ids:?}");
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "the ACP session was not resumed: {ids:?}"
    );
}

#[tokio::test]
async fn a_sigkilled_daemon_reaps_the_agent_it_left_behind_when_it_restarts() {
    let (mut s, session_id) = setup(pb::PermissionPolicy::AllowOnce).await;
    let (_turn, from) = prompt(&mut s, &session_id, "echo started\nsleep 600000").await;
    let mut stream = s
        .clients
        .sessions
        .watch_session(pb::WatchSessionRequest {
            session_id: session_id.clone(),
            from_seq: from,
            until_turn_end: true,
        })
        .await
        .unwrap()
        .into_inner();
    loop {
        let event = tokio::time::timeout(TURN, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if matches!(event.kind, Some(Kind::Update(_))) {
            break;
        }
    }
    let state_file = s
        .machine
        .data_dir
        .path()
        .join("outbox")
        .join(format!("{session_id}.state.json"));
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    let pgid = state["child"]["pgid"].as_i64().expect("the child's group is recorded");
    drop(s.machine.process.take()); // SIGKILL: the child group survives the daemon
    assert!(
        std::path::Path::new(&format!("/proc/{pgid}")).exists(),
        "the agent outlives a SIGKILLed daemon"
    );
    s.machine.start(&[]).unwrap();
    wait_until("the orphaned agent to be reaped", Duration::from_secs(20), || {
        let gone = std::fs::read_to_string(format!("/proc/{pgid}/stat"))
            .map(|stat| stat.contains(") Z "))
            .unwrap_or(true);
        async move { gone.then_some(()) }
    })
    .await
    .unwrap();
}

/// Waits for the next permission request of a turn and answers it.
async fn answer_next_permission(s: &mut Setup, session_id: &str, from: u64, option: &str) -> String {
    let mut stream = s
        .clients
        .sessions
        .watch_session(pb::WatchSessionRequest {
            session_id: session_id.into(),
            from_seq: from,
            until_turn_end: true,
        })
        .await
        .unwrap()
        .into_inner();
    let request_id = loop {
        let event = tokio::time::timeout(TURN, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(Kind::PermissionRequested(request)) = event.kind {
            break request.request_id;
        }
    };
    s.clients
        .sessions
        .answer_permission(pb::AnswerPermissionRequest {
            session_id: session_id.into(),
            request_id: request_id.clone(),
            answer: Some(pb::answer_permission_request::Answer::OptionId(option.into())),
        })
        .await
        .unwrap();
    request_id
}

/// A restarted child numbers its permission requests from 1 again; the
/// session-wide ids must still be new, or the second request would be taken
/// for the first (already decided) one and the turn would hang.
#[tokio::test]
async fn permission_ids_stay_unique_across_child_restarts() {
    let (mut s, session_id) = setup(pb::PermissionPolicy::Ask).await;
    let (turn, from) = prompt(&mut s, &session_id, "permission").await;
    let first = answer_next_permission(&mut s, &session_id, from, "allow").await;
    collect_turn(&mut s.clients, &session_id, from, &turn, TURN)
        .await
        .unwrap();
    let (turn, from) = prompt(&mut s, &session_id, "crash").await;
    collect_turn(&mut s.clients, &session_id, from, &turn, TURN)
        .await
        .unwrap();
    let (turn, from) = prompt(&mut s, &session_id, "permission").await;
    let second = answer_next_permission(&mut s, &session_id, from, "reject").await;
    assert_ne!(first, second);
    let events = collect_turn(&mut s.clients, &session_id, from, &turn, TURN)
        .await
        .unwrap();
    assert!(
        agent_text(&events).contains("permission: selected reject"),
        "{}",
        agent_text(&events)
    );
}

/// A tenant at its quota of stored event bytes finishes the running turn
/// but starts no new one, and says why.
#[tokio::test]
async fn a_tenant_over_its_stored_bytes_quota_starts_no_new_turn() {
    let (mut s, session_id) = setup_with(pb::PermissionPolicy::AllowOnce, &["--quota-stored-bytes", "1KiB"]).await;
    let (turn, from) = prompt(&mut s, &session_id, "chunks 20 100").await;
    let events = collect_turn(&mut s.clients, &session_id, from, &turn, TURN)
        .await
        .unwrap();
    assert_eq!(turn_end(&events).stop_reason, pb::StopReason::EndTurn as i32);
    let status = s
        .clients
        .sessions
        .prompt_session(pb::PromptSessionRequest {
            session_id: session_id.clone(),
            turn_id: String::new(),
            prompt: text_prompt("echo more"),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains("quota of 1024 bytes of stored session events"),
        "{status:?}"
    );
    // Deleting the session deletes its log, which frees the quota.
    let session = s
        .clients
        .sessions
        .get_session(pb::GetSessionRequest {
            session_id: session_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    s.clients
        .sessions
        .delete_session(pb::DeleteSessionRequest { session_id })
        .await
        .unwrap();
    let next = s
        .clients
        .sessions
        .create_session(pb::CreateSessionRequest {
            agent_id: session.agent_id,
            title: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    wait_until("the new session to be ready", TURN, || {
        let mut sessions = s.clients.sessions.clone();
        let id = next.id.clone();
        async move {
            let session = sessions
                .get_session(pb::GetSessionRequest { session_id: id })
                .await
                .ok()?
                .into_inner()
                .session?;
            (session.status == pb::SessionStatus::Idle as i32).then_some(())
        }
    })
    .await
    .unwrap();
    prompt(&mut s, &next.id, "echo again").await;
}
