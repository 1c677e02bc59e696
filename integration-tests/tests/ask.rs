//! Permission policy `ask` means a person approves: the daemon puts each
//! agent in the mode in which it asks (its `ask` in agents.toml), the
//! manifest says how each agent is made to ask, and binding `ask` to an
//! agent that cannot be made to ask is refused unless the spec accepts it.
//! The scripted agent here starts in mode `yolo`, where it acts without
//! asking — as Claude's adapter does in its `auto` mode.

use oma_integration_tests::bin;
use oma_integration_tests::world::{World, agent_text, option, permission_decided, turn_end};
use oma_proto::pb;
use pb::session_event::Kind;

fn agents_toml(ask: &str) -> String {
    format!(
        "[[agent]]\nid = \"test\"\nname = \"Scripted agent starting in yolo\"\ncommand = \"{bin}\"\nask = \"{ask}\"\n\
         env = {{ OMA_TEST_AGENT_START_MODE = \"yolo\" }}\n\n\
         [[agent]]\nid = \"loose\"\nname = \"An agent that cannot be made to ask\"\ncommand = \"{bin}\"\nask = \"none\"\n",
        bin = bin("oma-test-agent").display()
    )
}

async fn world(ask: &str) -> World {
    World::builder()
        .agents_toml(agents_toml(ask))
        .policy(pb::PermissionPolicy::Ask)
        .logs_to_files()
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_that_asks_only_in_one_mode_is_put_in_it() {
    let w = world("mode:default").await;
    let runtime = w.runtime.clone().unwrap();
    let info = |id: &str| {
        runtime
            .manifest
            .as_ref()
            .unwrap()
            .acp_agents
            .iter()
            .find(|a| a.id == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(info("test").ask_support, pb::AskSupport::AcpMode as i32);
    assert_eq!(info("test").ask_mode_id, "default");
    assert_eq!(info("loose").ask_support, pb::AskSupport::None as i32);

    let session = w.session().await;
    let turn = w.prompt(&session, "permission\noptions").await;
    let asked = w.answer_next_permission(&turn, option("allow")).await;
    assert!(!asked.request_id.is_empty());
    let events = w.collect(&turn).await;
    // The event says who decided: the person, not just "the control plane".
    let decided = permission_decided(&events);
    assert!(decided.decided_by.starts_with("user:usr_"), "{decided:?}");
    assert_eq!(turn_end(&events).stop_reason, pb::StopReason::EndTurn as i32);
    assert!(agent_text(&events).contains("mode default"), "{}", agent_text(&events));
    // The session records the mode that was applied.
    let options = w.get_session(&session).await.options.unwrap();
    assert_eq!(options.mode_id, "default");
    w.assert_no_panic();
}

/// The control: without the switch the same agent acts without asking, so
/// the test above passes because of the switch.
#[tokio::test(flavor = "multi_thread")]
async fn without_the_switch_the_same_agent_acts_unasked() {
    let w = world("native").await;
    let session = w.session().await;
    let events = w.run_turn(&session, "permission").await;
    assert!(
        agent_text(&events).contains("acted without asking"),
        "{}",
        agent_text(&events)
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.kind, Some(Kind::PermissionRequested(_))))
    );
    w.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread")]
async fn ask_is_not_bound_to_an_agent_that_cannot_ask_unless_accepted() {
    let mut w = world("mode:default").await;
    let runtime_id = w.machine.runtime_id.clone();
    // An `ask` agent on `test`, to rebind below.
    let agent = w.create_agent_on(&runtime_id).await;
    let spec = |policy: pb::PermissionPolicy, accept: bool| {
        let mut spec = w.spec_on(&runtime_id);
        spec.runtime_binding.as_mut().unwrap().acp_agent_id = "loose".into();
        spec.permission_policy = policy as i32;
        spec.accept_unenforced_ask = accept;
        spec
    };
    let create = |spec: pb::AgentSpec| {
        let mut agents = w.clients.agents.clone();
        async move {
            agents
                .create_agent(pb::CreateAgentRequest {
                    spec: Some(spec),
                    allow_unknown_skills: false,
                })
                .await
        }
    };
    let refused = create(spec(pb::PermissionPolicy::Ask, false)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("cannot make ACP agent \"loose\" ask")
            && refused.message().contains("accept_unenforced_ask"),
        "{}",
        refused.message()
    );
    create(spec(pb::PermissionPolicy::Ask, true)).await.unwrap();
    create(spec(pb::PermissionPolicy::AllowOnce, false)).await.unwrap();
    // Rebinding an existing `ask` agent to it is refused the same way.
    let rebind = w
        .clients
        .agents
        .clone()
        .update_agent(pb::UpdateAgentRequest {
            agent_id: agent,
            spec: Some(spec(pb::PermissionPolicy::Ask, false)),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["runtime_binding".into()],
            }),
            expected_version: 0,
            allow_unknown_skills: false,
        })
        .await
        .unwrap_err();
    assert_eq!(rebind.code(), tonic::Code::FailedPrecondition);
    w.assert_no_panic();
}

/// Nobody answers an `ask` request: after `--permission-timeout` it is
/// decided `timeout` with the request's reject option, the agent gets that
/// answer, and the turn ends.
#[tokio::test(flavor = "multi_thread")]
async fn an_unanswered_request_is_rejected_after_the_timeout() {
    let w = World::builder()
        .policy(pb::PermissionPolicy::Ask)
        .serve_args(&["--permission-timeout", "1s"])
        .logs_to_files()
        .start()
        .await
        .unwrap();
    let session = w.session().await;
    let events = w.run_turn(&session, "permission").await;
    let decided = permission_decided(&events);
    assert_eq!(
        (decided.decided_by.as_str(), decided.option_id.as_str()),
        ("timeout", "reject")
    );
    assert_eq!(turn_end(&events).stop_reason, pb::StopReason::EndTurn as i32);
    assert!(agent_text(&events).contains("reject"), "{}", agent_text(&events));
    w.assert_no_panic();
}

/// A restart loses no timeout: the control plane is killed while a request
/// waits for a person, and the one started on the same database arms the
/// request's timeout again from when it was stored, so the turn still ends
/// (before, no timer survived the restart and the turn hung).
#[tokio::test(flavor = "multi_thread")]
async fn an_unanswered_request_is_rejected_after_the_timeout_across_a_restart() {
    let mut w = World::builder()
        .policy(pb::PermissionPolicy::Ask)
        // Long enough that the killed process cannot decide it first.
        .serve_args(&["--permission-timeout", "3s"])
        .logs_to_files()
        .start()
        .await
        .unwrap();
    let session = w.session().await;
    let turn = w.prompt(&session, "permission").await;
    let request = w.next_permission(&turn).await;
    oma_integration_tests::faults::restart_control_plane(&mut w.cp).unwrap();
    let events = w.collect(&turn).await;
    let decided = permission_decided(&events);
    assert_eq!(
        (
            decided.request_id.as_str(),
            decided.decided_by.as_str(),
            decided.option_id.as_str()
        ),
        (request.request_id.as_str(), "timeout", "reject")
    );
    assert_eq!(turn_end(&events).stop_reason, pb::StopReason::EndTurn as i32);
    w.assert_no_panic();
}
