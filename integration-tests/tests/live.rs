//! The live path end to end: `oma-control-plane`, a paired `oma-agent`, and
//! the scripted ACP test agent as real processes on 127.0.0.1.

use std::time::Duration;

use oma_integration_tests::world::{self, World, agent_text, turn_end, update_kinds};
use oma_integration_tests::{Clients, collect_turn, read_until_turn_end, wait_offline, wait_until};
use oma_proto::pb;
use oma_proto::pb::session_event::Kind;
use tonic::Code;

const TURN: Duration = Duration::from_secs(60);

/// Everything stored for the session, from seq 1, must be 1..=n with no gap.
async fn assert_log_contiguous(w: &World, session_id: &str) -> Vec<pb::SessionEvent> {
    // As many events as the session's last_seq says.
    let events = w.read_log(session_id, Duration::from_secs(10)).await;
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
    events
}

#[tokio::test]
async fn prompt_streams_every_update_kind_and_ends_the_turn() {
    let w = World::paired(pb::PermissionPolicy::AllowOnce).await;
    let session_id = w.session().await;
    let turn = w
        .prompt(&session_id, "echo hello\nall-kinds\nunknown-kind\nchunks 3")
        .await;
    let events = w.collect(&turn).await;
    assert!(matches!(
        events.iter().find(|e| e.turn_id == turn.id).unwrap().kind,
        Some(Kind::TurnStarted(_))
    ));
    assert!(agent_text(&events).starts_with("hello"), "{}", agent_text(&events));
    assert!(agent_text(&events).ends_with("chunk 1\nchunk 2\nchunk 3\n"));
    let kinds = update_kinds(&events);
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

    let session = w.get_session(&session_id).await;
    assert_eq!(session.status, pb::SessionStatus::Idle as i32);
    assert_log_contiguous(&w, &session_id).await;

    // The session directory holds AGENTS.md from the system prompt.
    let agents_md = std::fs::read_to_string(w.machine.session_dir(&session_id).join("AGENTS.md")).unwrap();
    assert_eq!(agents_md, "You are a test.");

    // Delete: the machine disposes of the session and removes its folder.
    w.clients
        .sessions
        .clone()
        .delete_session(pb::DeleteSessionRequest {
            session_id: session_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let dir = w.machine.session_dir(&session_id);
    wait_until("the session folder to be removed", Duration::from_secs(20), || {
        let gone = !dir.exists();
        async move { gone.then_some(()) }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn one_turn_at_a_time_cancel_crash_and_recovery() {
    let w = World::paired(pb::PermissionPolicy::AllowOnce).await;
    let session_id = w.session().await;
    let turn = w.prompt(&session_id, "sleep 30000").await;
    // Wait until the turn has started on the machine.
    w.watch_until(&turn, |e| matches!(e.kind, Some(Kind::TurnStarted(_))).then_some(()))
        .await;
    let second = w.try_prompt(&session_id, "echo no").await.unwrap_err();
    assert_eq!(second.code(), Code::FailedPrecondition);
    assert!(second.message().contains("still running"), "{}", second.message());
    w.clients
        .sessions
        .clone()
        .cancel_turn(pb::CancelTurnRequest {
            session_id: session_id.clone(),
        })
        .await
        .unwrap();
    let events = w.collect(&turn).await;
    assert_eq!(turn_end(&events).stop_reason, pb::StopReason::Cancelled as i32);

    // A crash mid-turn ends the turn with an error; the next prompt works.
    let events = w.run_turn(&session_id, "echo before\ncrash").await;
    let end = turn_end(&events);
    assert_eq!(end.stop_reason, pb::StopReason::Error as i32);
    assert!(end.error.contains("child_exited"), "{}", end.error);
    let events = w.run_turn(&session_id, "echo after").await;
    assert_eq!(turn_end(&events).stop_reason, pb::StopReason::EndTurn as i32);
    assert_eq!(agent_text(&events), "after");

    // Garbage on stdout: a clear error, then recovery again.
    let events = w.run_turn(&session_id, "garbage").await;
    assert!(
        turn_end(&events).error.contains("invalid_output"),
        "{:?}",
        turn_end(&events)
    );
    let events = w.run_turn(&session_id, "echo fine").await;
    assert_eq!(agent_text(&events), "fine");
    assert_log_contiguous(&w, &session_id).await;
}

#[tokio::test]
async fn permission_requests_are_decided_once_by_a_person() {
    let w = World::paired(pb::PermissionPolicy::Ask).await;
    let session_id = w.session().await;
    let turn = w.prompt(&session_id, "permission").await;
    let request = w.next_permission(&turn).await;
    let ids: Vec<&str> = request.options.iter().map(|o| o.option_id.as_str()).collect();
    assert_eq!(ids, ["allow", "always", "reject"]);
    let answer = |option: &str| w.answer(&session_id, &request.request_id, world::option(option));
    let bad = answer("bogus").await.unwrap_err();
    assert_eq!(
        bad.code(),
        Code::InvalidArgument,
        "an unknown option never counts as approval"
    );
    answer("allow").await.unwrap();
    let again = answer("reject").await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    let events = w.collect(&turn).await;
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
    let audit = w
        .clients
        .audit
        .clone()
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
    let mut w = World::paired(pb::PermissionPolicy::AllowOnce).await;
    let session_id = w.session().await;
    drop(w.machine.process.take()); // SIGKILL
    let runtime_id = w.machine.runtime_id.clone();
    wait_offline(&mut w.clients, &runtime_id, Duration::from_secs(60))
        .await
        .unwrap();
    let err = w.try_prompt(&session_id, "echo hi").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("is offline since"), "{}", err.message());

    // Back online; then the runtime is deleted: the daemon stops and says
    // how to pair again instead of retrying forever.
    w.machine.start(&[]).unwrap();
    w.wait_online().await.unwrap();
    w.clients
        .runtimes
        .delete_runtime(pb::DeleteRuntimeRequest {
            runtime_id: runtime_id.clone(),
        })
        .await
        .unwrap();
    let process = w.machine.process.as_mut().unwrap();
    let status = process.wait_exit(Duration::from_secs(60)).unwrap();
    assert_eq!(status.code(), Some(3), "a refused machine exits 3");
}

#[tokio::test]
async fn parallel_sessions_do_not_cross_talk_and_late_watchers_replay() {
    let w = World::paired(pb::PermissionPolicy::AllowOnce).await;
    let first = w.session().await;
    let second = w.session().await;
    let turn_a = w.prompt(&first, "chunks 200 2000\necho A-done").await;
    let turn_b = w.prompt(&second, "chunks 200 2000\necho B-done").await;
    // The second watcher on a connection of its own, as another client.
    let clients_b: Clients = w.cp.clients().await.unwrap();
    let (a, b) = tokio::join!(
        collect_turn(&w.clients, &first, turn_a.from_seq, &turn_a.id, TURN),
        collect_turn(&clients_b, &second, turn_b.from_seq, &turn_b.id, TURN),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.iter().all(|e| e.session_id == first));
    assert!(b.iter().all(|e| e.session_id == second));
    assert!(agent_text(&a).ends_with("A-done") && !agent_text(&a).contains("B-done"));
    assert!(agent_text(&b).ends_with("B-done") && !agent_text(&b).contains("A-done"));
    assert_eq!(agent_text(&a).matches("chunk ").count(), 200);

    // A watcher attaching late gets the whole log from seq 1, then the next
    // turn live, with no gap and no duplicate.
    let mut late = w
        .clients
        .sessions
        .clone()
        .watch_session(pb::WatchSessionRequest {
            session_id: first.clone(),
            from_seq: 1,
            until_turn_end: false,
        })
        .await
        .unwrap()
        .into_inner();
    let turn_c = w.prompt(&first, "chunks 50 500\necho C-done").await;
    let seen = read_until_turn_end(&mut late, &turn_c.id, TURN).await.unwrap();
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
    let w = World::paired(pb::PermissionPolicy::Ask).await;
    let session_id = w.session().await;
    let turn = w.prompt(&session_id, "permission").await;
    w.answer_next_permission(&turn, world::reject()).await;
    let events = w.collect(&turn).await;
    assert!(
        agent_text(&events).contains("permission: selected reject"),
        "{}",
        agent_text(&events)
    );
}

#[tokio::test]
async fn a_hung_agent_ends_the_turn_at_the_idle_timeout() {
    let mut w = World::paired(pb::PermissionPolicy::AllowOnce).await;
    let session_id = w.session().await;
    // Restart the daemon with a short idle timeout.
    drop(w.machine.process.take());
    w.machine.start(&["--idle-timeout", "2"]).unwrap();
    w.wait_online().await.unwrap();
    let events = w.run_turn(&session_id, "echo going\nhang").await;
    let end = turn_end(&events);
    assert_eq!(end.stop_reason, pb::StopReason::Error as i32);
    assert!(end.error.contains("idle_timeout"), "{}", end.error);
    let events = w.run_turn(&session_id, "echo alive").await;
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
    let mut w = World::paired(pb::PermissionPolicy::AllowOnce).await;
    let session_id = w.session().await;
    w.run_turn(&session_id, "echo first").await;

    // SIGTERM the daemon while a turn runs.
    let turn = w.prompt(&session_id, "chunks 5\nsleep 60000").await;
    let mut chunks = 0;
    w.watch_until(&turn, |e| {
        if matches!(e.kind, Some(Kind::Update(_))) {
            chunks += 1;
        }
        (chunks == 5).then_some(())
    })
    .await;
    let process = w.machine.process.as_mut().unwrap();
    process.signal("TERM").unwrap();
    assert!(
        process.wait_exit(Duration::from_secs(30)).unwrap().success(),
        "SIGTERM is a clean stop"
    );
    w.machine.start(&[]).unwrap();

    // The interrupted turn ends with a clear status …
    let events = w.collect(&turn).await;
    let end = turn_end(&events);
    assert_eq!(end.stop_reason, pb::StopReason::Error as i32);
    assert!(end.error.contains("interrupted"), "{}", end.error);
    assert_eq!(
        agent_text(&events).matches("chunk ").count(),
        5,
        "chunks read before the stop are kept"
    );

    // … and the next prompt resumes the same ACP session (session/load).
    let events = w.run_turn(&session_id, "echo resumed").await;
    assert_eq!(agent_text(&events), "resumed", "replayed history is not recorded twice");
    let all = assert_log_contiguous(&w, &session_id).await;
    let ids = acp_session_ids(&all);
    assert!(ids.len() >= 2, "{ids:?}");
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "the ACP session was not resumed: {ids:?}"
    );
}

#[tokio::test]
async fn a_sigkilled_daemon_reaps_the_agent_it_left_behind_when_it_restarts() {
    let mut w = World::paired(pb::PermissionPolicy::AllowOnce).await;
    let session_id = w.session().await;
    let turn = w.prompt(&session_id, "echo started\nsleep 600000").await;
    w.watch_until(&turn, |e| matches!(e.kind, Some(Kind::Update(_))).then_some(()))
        .await;
    let pgid = w.child_pgid(&session_id).expect("the child's group is recorded");
    drop(w.machine.process.take()); // SIGKILL: the child group survives the daemon
    assert!(
        std::path::Path::new(&format!("/proc/{pgid}")).exists(),
        "the agent outlives a SIGKILLed daemon"
    );
    w.machine.start(&[]).unwrap();
    wait_until("the orphaned agent to be reaped", Duration::from_secs(20), || {
        let gone = oma_integration_tests::one_machine::gone(pgid);
        async move { gone.then_some(()) }
    })
    .await
    .unwrap();
}

/// A restarted child numbers its permission requests from 1 again; the
/// session-wide ids must still be new, or the second request would be taken
/// for the first (already decided) one and the turn would hang.
#[tokio::test]
async fn permission_ids_stay_unique_across_child_restarts() {
    let w = World::paired(pb::PermissionPolicy::Ask).await;
    let session_id = w.session().await;
    let turn = w.prompt(&session_id, "permission").await;
    let first = w.answer_next_permission(&turn, world::option("allow")).await;
    w.collect(&turn).await;
    w.run_turn(&session_id, "crash").await;
    let turn = w.prompt(&session_id, "permission").await;
    let second = w.answer_next_permission(&turn, world::option("reject")).await;
    assert_ne!(first.request_id, second.request_id);
    let events = w.collect(&turn).await;
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
    let w = World::builder()
        .serve_args(&["--quota-stored-bytes", "1KiB"])
        .start()
        .await
        .unwrap();
    let session_id = w.session().await;
    let events = w.run_turn(&session_id, "chunks 20 100").await;
    assert_eq!(turn_end(&events).stop_reason, pb::StopReason::EndTurn as i32);
    let status = w.try_prompt(&session_id, "echo more").await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains("quota of 1024 bytes of stored session events"),
        "{status:?}"
    );
    // Deleting the session deletes its log, which frees the quota.
    w.clients
        .sessions
        .clone()
        .delete_session(pb::DeleteSessionRequest {
            session_id,
            ..Default::default()
        })
        .await
        .unwrap();
    let next = w.session().await;
    w.wait_idle(&next, TURN).await;
    w.prompt(&next, "echo again").await;
}
