//! Modes and models: what the ACP agent offers is recorded on the session,
//! the agent's defaults and CreateSession choose where a session starts,
//! SetSessionOptions switches a live one, and a choice the agent does not
//! offer is refused listing the valid ones — through the real binaries and
//! the scripted agent (modes default/plan/yolo, models small/large).

use std::time::Duration;

use oma_integration_tests::wait_until;
use oma_integration_tests::world::{World, agent_text};
use oma_proto::pb;

const DEADLINE: Duration = Duration::from_secs(30);

async fn create(w: &World, mode_id: &str, model_id: &str) -> Result<String, tonic::Status> {
    w.clients
        .sessions
        .clone()
        .create_session(pb::CreateSessionRequest {
            agent_id: w.agent_id.clone(),
            mode_id: mode_id.into(),
            model_id: model_id.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().session.unwrap().id)
}

async fn set(w: &World, session_id: &str, mode_id: &str, model_id: &str) -> Result<(), tonic::Status> {
    w.clients
        .sessions
        .clone()
        .set_session_options(pb::SetSessionOptionsRequest {
            session_id: session_id.into(),
            mode_id: mode_id.into(),
            model_id: model_id.into(),
        })
        .await
        .map(drop)
}

/// Waits until the session's recorded options say `mode` and `model`.
async fn recorded(w: &World, session_id: &str, mode: &str, model: &str) -> pb::SessionOptions {
    wait_until(&format!("options {mode}/{model}"), DEADLINE, || async {
        let options = w.clients.get_session(session_id).await.ok()?.options?;
        (options.mode_id == mode && options.model_id == model).then_some(options)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn modes_and_models_are_recorded_chosen_and_switched() {
    let mut w = World::builder().logs_to_files().start().await.unwrap();
    // The agent's default mode; the session asks for its model.
    w.clients
        .agents
        .clone()
        .update_agent(pb::UpdateAgentRequest {
            agent_id: w.agent_id.clone(),
            spec: Some(pb::AgentSpec {
                default_mode_id: "plan".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["default_mode_id".into()],
            }),
            expected_version: 0,
            allow_unknown_skills: true,
        })
        .await
        .unwrap();
    let session = create(&w, "", "large").await.unwrap();
    let requested = w.get_session(&session).await;
    assert_eq!(
        (
            requested.requested_mode_id.as_str(),
            requested.requested_model_id.as_str()
        ),
        ("plan", "large")
    );
    let options = recorded(&w, &session, "plan", "large").await;
    let ids = |list: &[pb::SessionChoice]| list.iter().map(|c| c.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&options.modes), ["default", "plan", "yolo"]);
    assert_eq!(ids(&options.models), ["small", "large"]);
    assert!(agent_text(&w.run_turn(&session, "options").await).contains("mode plan model large"));

    // A switch on the live session reaches the agent and is recorded.
    set(&w, &session, "yolo", "").await.unwrap();
    recorded(&w, &session, "yolo", "large").await;
    assert!(agent_text(&w.run_turn(&session, "options").await).contains("mode yolo model large"));

    // Choices the agent does not offer are refused, listing the valid ones.
    let refused = set(&w, &session, "nope", "").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("valid: default, plan, yolo"),
        "{}",
        refused.message()
    );
    let refused = set(&w, &session, "", "huge").await.unwrap_err();
    assert!(
        refused.message().contains("valid: small, large"),
        "{}",
        refused.message()
    );
    let refused = set(&w, &session, "", "").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    // ... also at creation, now that this agent has said what it offers.
    let refused = create(&w, "nope", "").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("valid: default, plan, yolo"),
        "{}",
        refused.message()
    );

    // A restarted daemon's new child starts in the switched mode again.
    w.machine.restart().unwrap();
    w.wait_online().await.unwrap();
    assert!(agent_text(&w.run_turn(&session, "options").await).contains("mode yolo model large"));
    w.assert_no_panic();
}

/// The manifest carries what an ACP agent says of itself in `initialize`
/// (its version and capabilities) once a session has started it, without a
/// daemon restart.
#[tokio::test(flavor = "multi_thread")]
async fn agents_report_their_version_and_capabilities_in_the_manifest() {
    let w = World::builder().logs_to_files().start().await.unwrap();
    let before = w.runtime.clone().unwrap().manifest.unwrap();
    assert_eq!(before.acp_agents[0].version, "", "not started yet");
    let session = w.session().await;
    w.run_turn(&session, "echo hi").await;
    let agent = wait_until("the agent's version in the manifest", DEADLINE, || async {
        let runtime = w.clients.get_runtime(&w.machine.runtime_id).await.ok()?;
        let agent = runtime.manifest?.acp_agents.into_iter().find(|a| a.id == "test")?;
        (!agent.version.is_empty()).then_some(agent)
    })
    .await
    .unwrap();
    assert_eq!(agent.version, env!("CARGO_PKG_VERSION"));
    let capabilities: serde_json::Value = serde_json::from_str(&agent.capabilities_json).unwrap();
    assert_eq!(capabilities["loadSession"], true, "{capabilities}");

    // `oma-agent status --json` of this paired, running, connected machine.
    let out = w.machine.command().args(["status", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["paired"], true, "{status}");
    assert_eq!(status["runtime_id"], w.machine.runtime_id.as_str(), "{status}");
    assert_eq!(status["daemon"]["running"], true, "{status}");
    assert_eq!(status["daemon"]["connected"], true, "{status}");
    assert_eq!(status["sessions"], 1, "{status}");
    w.assert_no_panic();
}

/// An ACP agent added to agents.toml while the daemon runs is offered at
/// the next rescan and runs sessions, without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_added_to_agents_toml_is_offered_without_a_restart() {
    let mut w = World::builder().logs_to_files().start().await.unwrap();
    let pid = w.machine.pid();
    let file = w.machine.config_dir.path().join("agents.toml");
    let mut toml = std::fs::read_to_string(&file).unwrap();
    toml.push_str(&format!(
        "\n[[agent]]\nid = \"second\"\nname = \"Second\"\ncommand = \"{}\"\n",
        oma_integration_tests::bin("oma-test-agent").display()
    ));
    std::fs::write(&file, toml).unwrap();
    wait_until("the new agent in the manifest", DEADLINE, || async {
        let runtime = w.clients.get_runtime(&w.machine.runtime_id).await.ok()?;
        runtime
            .manifest?
            .acp_agents
            .iter()
            .any(|a| a.id == "second")
            .then_some(())
    })
    .await
    .unwrap();
    let mut spec = w.spec_on(&w.machine.runtime_id);
    spec.runtime_binding.as_mut().unwrap().acp_agent_id = "second".into();
    let agent = w.clients.create_agent(spec).await.unwrap();
    let session = w.session_of(&agent).await;
    let said = agent_text(&w.run_turn(&session, "echo from the second agent").await);
    assert!(said.contains("from the second agent"), "{said}");
    assert_eq!(w.machine.pid(), pid, "no restart");
    w.assert_no_panic();
}
