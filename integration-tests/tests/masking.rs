//! Secrets in events are masked on the machine (issue 13), through the real
//! daemon: a fake control plane sends a session a credential its owner
//! accepts; the scripted agent echoes it as is, in base64 and hex, in its
//! text, a tool call, a plan, an error and on stderr, and crashes; every
//! event the control plane receives carries `[masked:NAME]` instead, and
//! no file the daemon wrote (outbox, state file, the child's stderr log)
//! and no line it logged holds the value or a covered encoding of it. A
//! credential for an agent its owner did not opt in never reaches the
//! child; one too short to mask is dropped; and after a daemon restart the
//! session runs without its credentials (they were in memory only) and
//! says so.

use std::path::{Path, PathBuf};
use std::time::Duration;

use oma_integration_tests::hostile_cp::HostileControlPlane;
use oma_integration_tests::world::agent_text;
use oma_integration_tests::{AgentDaemon, bin, text_prompt, wait_until};
use oma_proto::masking::encodings;
use oma_proto::pb;
use oma_proto::pb::control_frame::Frame;
use oma_proto::pb::session_event::Kind;
use prost::Message as _;

const DEADLINE: Duration = Duration::from_secs(60);
/// The agent whose owner accepts server credentials, and one they do not.
const OPTED_IN: &str = "opted";
const NOT_OPTED_IN: &str = "other";
const MARKER: &str = "[masked:OPENAI_API_KEY]";

fn session_id() -> String {
    format!("ses_{:032x}", rand::random::<u128>())
}

fn secret(tag: &str) -> String {
    format!("sk-{tag}-{:032x}", rand::random::<u128>())
}

struct Machine {
    cp: HostileControlPlane,
    daemon: AgentDaemon,
    daemon_log: PathBuf,
    _logs: tempfile::TempDir,
    turns: u64,
}

impl Machine {
    async fn start() -> Machine {
        let cp = HostileControlPlane::start().unwrap();
        let agents_toml = format!(
            "[[agent]]\nid = \"{OPTED_IN}\"\ncommand = \"{bin}\"\n\n[[agent]]\nid = \"{NOT_OPTED_IN}\"\ncommand = \"{bin}\"\n",
            bin = bin("oma-test-agent").display()
        );
        let mut daemon = AgentDaemon::setup_with_agents_toml(&cp.url(), cp.connect_code(), &agents_toml).unwrap();
        daemon
            .set_policy(&format!("accept_credentials_for = [\"{OPTED_IN}\"]\n"))
            .unwrap();
        // The names the test sends must not be set in the daemon's own
        // environment (a credential never overrides the owner's).
        daemon.env_remove = ["OPENAI_API_KEY", "GEMINI_API_KEY", "ANTHROPIC_API_KEY"]
            .map(String::from)
            .to_vec();
        let logs = tempfile::tempdir().unwrap();
        let daemon_log = logs.path().join("oma-agent.log");
        daemon.stderr_log = Some(daemon_log.clone());
        // Everything the daemon logs, debug included.
        daemon.log_filter = "debug".into();
        daemon.start(&[]).unwrap();
        cp.wait_connected(0).await.unwrap();
        Machine {
            cp,
            daemon,
            daemon_log,
            _logs: logs,
            turns: 0,
        }
    }

    async fn start_session(&self, session_id: &str, acp_agent_id: &str, credentials: &[(&str, &str)]) {
        let start = pb::StartSession {
            session_id: session_id.to_owned(),
            acp_agent_id: acp_agent_id.to_owned(),
            agents_md: "You are the masking test agent.".into(),
            credentials: credentials
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        self.cp.send(Frame::StartSession(start)).await.unwrap();
        wait_until(&format!("session {session_id} to be ready"), DEADLINE, || async {
            if let Some(error) = self.cp.failure(session_id) {
                panic!("session {session_id} failed: {error:?}");
            }
            self.cp.is_ready(session_id).then_some(())
        })
        .await
        .unwrap();
    }

    /// Runs a test-agent script as a turn; its events once it ended.
    async fn turn(&mut self, session_id: &str, script: &str) -> Vec<pb::SessionEvent> {
        self.turns += 1;
        let turn_id = format!("trn_{:04}{:028x}", self.turns, rand::random::<u128>() >> 16);
        self.cp
            .send(Frame::Prompt(pb::Prompt {
                session_id: session_id.to_owned(),
                turn_id: turn_id.clone(),
                prompt: text_prompt(script),
                requested_by_user_id: String::new(),
            }))
            .await
            .unwrap();
        wait_until(&format!("turn {turn_id} to end"), DEADLINE, || async {
            let events: Vec<_> = self
                .cp
                .events(session_id)
                .into_iter()
                .filter(|e| e.turn_id == turn_id)
                .collect();
            events
                .iter()
                .any(|e| matches!(e.kind, Some(Kind::TurnEnded(_))))
                .then_some(events)
        })
        .await
        .unwrap()
    }
}

/// Fails when `bytes` hold `value` or any encoding of it the masker covers.
fn assert_clean(bytes: &[u8], value: &str, what: &str) {
    for form in encodings(value) {
        assert!(
            !bytes.windows(form.len()).any(|w| w == form.as_bytes()),
            "{what} holds the secret as {form:?}:\n{}",
            String::from_utf8_lossy(bytes)
        );
    }
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => out.extend(files(&path)),
            Ok(t) if t.is_file() => out.push(path),
            _ => {}
        }
    }
    out
}

fn errors(events: &[pb::SessionEvent]) -> Vec<pb::SessionError> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Error(error)) => Some(error.clone()),
            _ => None,
        })
        .collect()
}

fn logs(events: &[pb::SessionEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Log(log)) => Some(log.message.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_echoed_by_the_agent_are_masked_everywhere() {
    let mut m = Machine::start().await;
    let key = secret("openai");
    let other_key = secret("gemini");

    // The opted-in agent: the key is taken, a 5-byte one is dropped.
    let opted = session_id();
    m.start_session(
        &opted,
        OPTED_IN,
        &[("OPENAI_API_KEY", key.as_str()), ("ANTHROPIC_API_KEY", "short")],
    )
    .await;
    let events = m
        .turn(
            &opted,
            "env OPENAI_API_KEY\nleak-env OPENAI_API_KEY\nenv ANTHROPIC_API_KEY",
        )
        .await;
    let text = agent_text(&events);
    // The child got the key (it is set, not unset) and every echo of it is
    // the marker: plain, base64, URL-safe base64 and hex.
    assert!(text.contains(&format!("env OPENAI_API_KEY={MARKER}")), "{text}");
    assert!(
        text.contains(&format!(
            "leak-env OPENAI_API_KEY plain {MARKER} base64 {MARKER} base64url {MARKER} hex {MARKER}"
        )),
        "{text}"
    );
    assert!(text.contains("env ANTHROPIC_API_KEY unset"), "{text}");
    let tool_output = events
        .iter()
        .find_map(|e| match &e.kind {
            Some(Kind::Update(pb::SessionUpdate {
                typed: Some(pb::session_update::Typed::ToolCallUpdate(call)),
                ..
            })) => Some(call.raw_output_json.clone()),
            _ => None,
        })
        .expect("the leak-env tool call's update");
    // `NAME=value` in the tool's stdout, and that stdout in base64 (the
    // value at an offset of its own there).
    let output: serde_json::Value = serde_json::from_str(&tool_output).expect("still valid JSON");
    assert!(
        output["stdout"]
            .as_str()
            .unwrap()
            .contains(&format!("OPENAI_API_KEY={MARKER}")),
        "{output}"
    );
    assert!(output["stdout_base64"].as_str().unwrap().contains(MARKER), "{output}");

    // An error that quotes the key, then a crash whose stderr tail (the
    // child printed the key there) goes into an event.
    let events = m.turn(&opted, &format!("error the key {key} was refused")).await;
    let ended = events
        .iter()
        .find_map(|e| match &e.kind {
            Some(Kind::TurnEnded(ended)) => Some(ended.clone()),
            _ => None,
        })
        .unwrap();
    assert!(
        ended.error.contains(&format!("the key {MARKER} was refused")),
        "{ended:?}"
    );
    let events = m.turn(&opted, "leak-env OPENAI_API_KEY\ncrash 3").await;
    assert!(agent_text(&events).contains(MARKER));
    wait_until("the crash to be logged", DEADLINE, || async {
        let logs = logs(&m.cp.events(&opted));
        (logs.contains("the agent process ended") && logs.contains(&format!("leak-env OPENAI_API_KEY={MARKER}")))
            .then_some(())
    })
    .await
    .unwrap();
    // The next prompt starts a new child, which gets the key again.
    let events = m.turn(&opted, "env OPENAI_API_KEY").await;
    assert!(agent_text(&events).contains(&format!("env OPENAI_API_KEY={MARKER}")));

    // The agent its owner did not opt in never gets the server's key.
    let other = session_id();
    m.start_session(&other, NOT_OPTED_IN, &[("GEMINI_API_KEY", other_key.as_str())])
        .await;
    let events = m.turn(&other, "leak-env GEMINI_API_KEY").await;
    assert_eq!(agent_text(&events), "leak-env GEMINI_API_KEY unset");
    let refused = errors(&m.cp.events(&other));
    assert!(
        refused
            .iter()
            .any(|e| e.code == "credentials_not_accepted" && e.message.contains("GEMINI_API_KEY")),
        "{refused:?}"
    );
    let refused = errors(&m.cp.events(&opted));
    assert!(
        refused
            .iter()
            .any(|e| e.code == "credential_too_short" && e.message.contains("ANTHROPIC_API_KEY")),
        "{refused:?}"
    );

    // Nothing the control plane received holds either value.
    for session in [&opted, &other] {
        let events = m.cp.events(session);
        assert!(!events.is_empty());
        for event in &events {
            let bytes = event.encode_to_vec();
            assert_clean(&bytes, &key, &format!("event {} of {session}", event.seq));
            assert_clean(&bytes, &other_key, &format!("event {} of {session}", event.seq));
        }
    }
    let masked_events =
        m.cp.events(&opted)
            .iter()
            .filter(|e| String::from_utf8_lossy(&e.encode_to_vec()).contains(MARKER))
            .count();
    assert!(masked_events >= 6, "{masked_events} events carry the marker");

    // Nor any file the daemon wrote: its outbox (event logs, state files),
    // the child's stderr log (which did get the echo, masked), its status
    // file, its config. Not the session folders: they are the child's own
    // working folders, where an agent keeps what it likes (the scripted
    // agent's transcript holds the key, as a real agent's would).
    let sessions = m.daemon.data_dir.path().join("sessions");
    let data_files: Vec<PathBuf> = files(m.daemon.data_dir.path())
        .into_iter()
        .filter(|file| !file.starts_with(&sessions))
        .collect();
    let outbox = m.daemon.data_dir.path().join("outbox");
    for name in [format!("{opted}.log"), format!("{opted}.state.json")] {
        assert!(data_files.contains(&outbox.join(&name)), "no {name} in {data_files:?}");
    }
    let stderr_log = m
        .daemon
        .data_dir
        .path()
        .join("logs")
        .join(format!("{opted}.stderr.log"));
    let stderr = std::fs::read_to_string(&stderr_log).unwrap();
    assert!(
        stderr.contains(&format!("leak-env OPENAI_API_KEY={MARKER}")),
        "{stderr}"
    );
    for file in data_files.iter().chain(&files(m.daemon.config_dir.path())) {
        let bytes = std::fs::read(file).unwrap();
        assert_clean(&bytes, &key, &file.display().to_string());
        assert_clean(&bytes, &other_key, &file.display().to_string());
    }

    // A daemon restart: the session resumes from its state file, which has
    // no credentials, so its new child runs without them and says why.
    let streams = m.cp.streams();
    m.daemon.restart().unwrap();
    m.cp.wait_connected(streams).await.unwrap();
    let events = m.turn(&opted, "env OPENAI_API_KEY").await;
    assert_eq!(agent_text(&events), "env OPENAI_API_KEY unset");
    let logs = logs(&m.cp.events(&opted));
    assert!(
        logs.contains("credentials for this session (ANTHROPIC_API_KEY, OPENAI_API_KEY) are kept in memory only"),
        "{logs}"
    );

    // And nothing the daemon logged (debug level, two runs) holds them.
    let daemon_log = std::fs::read(&m.daemon_log).unwrap();
    assert!(
        String::from_utf8_lossy(&daemon_log).contains(&opted),
        "the daemon logged nothing about the session"
    );
    assert_clean(&daemon_log, &key, "the daemon's log");
    assert_clean(&daemon_log, &other_key, "the daemon's log");
}
