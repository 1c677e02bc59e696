//! The laptop decides (DESIGN §3, invariant 4), through the real binaries:
//! an agent names a local MCP server by id and the ACP agent gets the
//! laptop's own command for it; an id the laptop does not define, a URL
//! outside its allow-list or a broken policy each end the session start with
//! an error event naming the rule, and no ACP child is ever spawned for
//! them (the scripted agent appends to a marker file whenever it starts).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use oma_integration_tests::world::agent_text;
use oma_integration_tests::{World, bin, test_agent_spec, wait_until};
use oma_proto::pb;
use oma_proto::pb::session_event::Kind;
use prost::Message as _;
use tonic::Code;

const DEADLINE: Duration = Duration::from_secs(60);

/// What the laptop's command for `fs` is: it must reach session/new as is
/// and never appear in anything the control plane sees.
const FS_COMMAND: &str = "/bin/sh";
const FS_SECRET: &str = "laptop-only-value";
const ALLOWED: &str = "http://127.0.0.1:9/mcp";

fn policy(with_fs: bool) -> String {
    let mut text = format!("mcp_url_allow_list = [\"{ALLOWED}\"]\n");
    if with_fs {
        text.push_str(&format!(
            "\n[[mcp_server]]\nid = \"fs\"\nname = \"Files\"\ndescription = \"the session's files\"\n\
             command = \"{FS_COMMAND}\"\nargs = [\"-c\", \"exit 0\"]\nenv = {{ FS_SECRET = \"{FS_SECRET}\" }}\n"
        ));
    }
    text
}

struct Setup {
    world: World,
    started_file: PathBuf,
    _marker_dir: tempfile::TempDir,
}

impl Setup {
    /// A paired machine whose test agent marks every start; not started.
    async fn new() -> Setup {
        let marker_dir = tempfile::tempdir().unwrap();
        let started_file = marker_dir.path().join("started");
        let agents_toml = format!(
            "[[agent]]\nid = \"test\"\ncommand = \"{}\"\nenv = {{ OMA_TEST_AGENT_STARTED_FILE = \"{}\" }}\n",
            bin("oma-test-agent").display(),
            started_file.display()
        );
        let world = World::builder()
            .agents_toml(agents_toml)
            .unstarted()
            .online_deadline(DEADLINE)
            .turn_deadline(DEADLINE)
            .start()
            .await
            .unwrap();
        Setup {
            world,
            started_file,
            _marker_dir: marker_dir,
        }
    }

    /// How many ACP children have started so far.
    fn children_started(&self) -> usize {
        std::fs::read_to_string(&self.started_file)
            .map(|text| text.lines().count())
            .unwrap_or(0)
    }

    fn spec(&self, name: &str, mcp_servers: Vec<pb::McpServer>) -> pb::AgentSpec {
        pb::AgentSpec {
            mcp_servers,
            ..test_agent_spec(name, &self.world.machine.runtime_id, pb::PermissionPolicy::Unspecified)
        }
    }

    async fn create_agent(&mut self, name: &str, mcp_servers: Vec<pb::McpServer>) -> Result<String, tonic::Status> {
        let spec = self.spec(name, mcp_servers);
        let agent = self
            .world
            .clients
            .agents
            .create_agent(pb::CreateAgentRequest {
                spec: Some(spec),
                allow_unknown_skills: false,
            })
            .await?
            .into_inner()
            .agent
            .unwrap();
        Ok(agent.id)
    }

    async fn new_session(&mut self, agent_id: &str) -> String {
        self.world.session_of(agent_id).await
    }

    /// Waits for the session start to fail; returns its error events.
    async fn start_failure(&mut self, session_id: &str) -> Vec<pb::SessionError> {
        let mut stream = self
            .world
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
        let mut errors = Vec::new();
        let mut seen = Vec::new();
        let result = tokio::time::timeout(DEADLINE, async {
            while let Some(event) = stream.message().await.unwrap() {
                match &event.kind {
                    Some(Kind::Error(error)) => errors.push(error.clone()),
                    Some(Kind::StatusChanged(s)) if s.status == pb::SessionStatus::Idle as i32 => {
                        panic!("session {session_id} started: {seen:#?}")
                    }
                    Some(Kind::StatusChanged(s)) if s.status == pb::SessionStatus::Failed as i32 => return,
                    _ => {}
                }
                seen.push(event);
            }
        })
        .await;
        assert!(result.is_ok(), "session {session_id} did not fail; events: {seen:#?}");
        errors
    }

    async fn prompt(&mut self, session_id: &str, text: &str) -> String {
        agent_text(&self.world.run_turn(session_id, text).await)
    }
}

fn local(name: &str, id: &str) -> pb::McpServer {
    pb::McpServer {
        name: name.into(),
        transport: Some(pb::mcp_server::Transport::Local(pb::McpLocal { server_id: id.into() })),
    }
}

fn http(name: &str, url: &str) -> pb::McpServer {
    pb::McpServer {
        name: name.into(),
        transport: Some(pb::mcp_server::Transport::Http(pb::McpHttp {
            url: url.into(),
            headers: vec![pb::NameValue {
                name: "X-Key".into(),
                value: "v".into(),
            }],
        })),
    }
}

fn sse(name: &str, url: &str) -> pb::McpServer {
    pb::McpServer {
        name: name.into(),
        transport: Some(pb::mcp_server::Transport::Sse(pb::McpHttp {
            url: url.into(),
            headers: vec![],
        })),
    }
}

fn assert_names_rule(errors: &[pb::SessionError], code: &str, policy_file: &Path) {
    let error = errors
        .iter()
        .find(|e| e.code == code)
        .unwrap_or_else(|| panic!("no {code} error in {errors:#?}"));
    assert!(error.message.contains(code), "{error:?}");
    assert!(
        error.message.contains(&policy_file.display().to_string()),
        "the message does not name the policy file: {error:?}"
    );
}

#[tokio::test]
async fn the_laptop_resolves_local_mcp_servers_and_refuses_the_rest_without_spawning() {
    let mut s = Setup::new().await;
    s.world.machine.set_policy(&policy(true)).unwrap();

    // Agents created before the machine ever connected: the control plane
    // knows nothing of its policy yet and accepts them, so these reach the
    // laptop as a hostile control plane would send them.
    let ok = s
        .create_agent(
            "ok",
            vec![local("files", "fs"), http("web", &format!("{ALLOWED}/tools"))],
        )
        .await
        .unwrap();
    let unknown = s.create_agent("unknown", vec![local("files", "nope")]).await.unwrap();
    let outside = s
        .create_agent("outside", vec![sse("events", &format!("{ALLOWED}x"))])
        .await
        .unwrap();

    s.world.machine.start(&[]).unwrap();
    let runtime = s.world.wait_online().await.unwrap();
    let manifest = runtime.manifest.unwrap();
    assert_eq!(
        manifest.local_mcp_servers,
        [pb::LocalMcpServer {
            id: "fs".into(),
            name: "Files".into(),
            description: "the session's files".into(),
        }]
    );
    assert_eq!(manifest.mcp_url_allow_list, [ALLOWED]);
    let reported = manifest.encode_to_vec();
    for secret in [FS_COMMAND, FS_SECRET, "FS_SECRET", "exit 0"] {
        assert!(
            !reported.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the manifest reports {secret:?}"
        );
    }

    // Now that it has reported, the control plane refuses early.
    let status = s.create_agent("late", vec![local("files", "nope")]).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("nope") && status.message().contains("valid ids: fs"),
        "{status:?}"
    );
    let status = s
        .create_agent("late", vec![http("web", "http://127.0.0.1:9/mcpx")])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("allow-list"), "{status:?}");
    let status = s
        .world
        .clients
        .agents
        .update_agent(pb::UpdateAgentRequest {
            agent_id: ok.clone(),
            spec: Some(pb::AgentSpec {
                mcp_servers: vec![http("web", "http://127.0.0.1:9/")],
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["mcp_servers".into()],
            }),
            expected_version: 0,
            allow_unknown_skills: false,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // The local reference reaches session/new as the laptop's own command.
    let session = s.new_session(&ok).await;
    let text = s.prompt(&session, "mcp-servers").await;
    let json = text.strip_prefix("mcp servers: ").unwrap_or_else(|| panic!("{text}"));
    let servers: serde_json::Value = serde_json::from_str(json).unwrap();
    let servers = servers.as_array().unwrap();
    assert_eq!(servers.len(), 2, "{servers:#?}");
    let files = servers.iter().find(|m| m["name"] == "files").unwrap();
    assert_eq!(files["command"], FS_COMMAND);
    assert_eq!(files["args"], serde_json::json!(["-c", "exit 0"]));
    assert_eq!(
        files["env"],
        serde_json::json!([{"name": "FS_SECRET", "value": FS_SECRET}])
    );
    let web = servers.iter().find(|m| m["name"] == "web").unwrap();
    assert_eq!(
        (web["type"].as_str(), web["url"].as_str()),
        (Some("http"), Some("http://127.0.0.1:9/mcp/tools"))
    );
    assert_eq!(s.children_started(), 1);

    // An id the laptop does not define and a URL outside its allow-list:
    // an error event naming the rule and the file, nothing spawned, nothing
    // written into a session folder.
    let policy_file = s.world.machine.policy_file();
    for (agent, rule) in [(&unknown, "mcp_local_unknown"), (&outside, "mcp_url_not_allowed")] {
        let session = s.new_session(agent).await;
        let errors = s.start_failure(&session).await;
        assert_names_rule(&errors, rule, &policy_file);
        assert!(
            !s.world.machine.session_dir(&session).exists(),
            "{rule}: a session folder was made"
        );
    }
    assert_eq!(s.children_started(), 1, "a refused session spawned a child");

    // The policy is read again at every session start: without `fs`, the
    // same agent is refused; a broken file fails the start with file:line.
    s.world.machine.set_policy(&policy(false)).unwrap();
    let session = s.new_session(&ok).await;
    assert_names_rule(&s.start_failure(&session).await, "mcp_local_unknown", &policy_file);
    s.world
        .machine
        .set_policy("mcp_url_allow_list = [\n  \"https://a.example@evil.example/\",\n]\n")
        .unwrap();
    let session = s.new_session(&ok).await;
    let errors = s.start_failure(&session).await;
    let broken = errors.iter().find(|e| e.code == "policy_invalid").unwrap();
    assert!(
        broken.message.contains(&format!("{}:2", policy_file.display())),
        "{broken:?}"
    );
    assert_eq!(s.children_started(), 1, "a refused session spawned a child");

    // The daemon is still connected and serving.
    s.world.machine.set_policy(&policy(true)).unwrap();
    let session = s.new_session(&ok).await;
    assert_eq!(s.prompt(&session, "echo still here").await, "still here");
    assert_eq!(s.children_started(), 2);
}

#[tokio::test]
async fn a_broken_policy_stops_the_daemon_at_start_with_file_and_line() {
    let mut s = Setup::new().await;
    s.world
        .machine
        .set_policy("allow_server_base_url = false\n\n[[mcp_server]]\nid = \"fs\"\ncommand = \"/no/such/mcp\"\n")
        .unwrap();
    let mut child = s
        .world
        .machine
        .command()
        .arg("run")
        .env("OMA_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "oma-agent run kept running on a broken policy"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    let location = format!("{}:4", s.world.machine.policy_file().display());
    assert!(
        stderr.contains(&location) && stderr.contains("/no/such/mcp"),
        "{stderr}"
    );
    // It never connected.
    let runtime = s
        .world
        .clients
        .runtimes
        .get_runtime(pb::GetRuntimeRequest {
            runtime_id: s.world.machine.runtime_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .runtime
        .unwrap();
    assert!(runtime.last_seen_time.is_none());

    // `oma-agent policy` shows the same error, then the fixed policy.
    let out = s.world.machine.command().arg("policy").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&location));
    s.world.machine.set_policy(&policy(true)).unwrap();
    let out = s.world.machine.command().arg("policy").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(shown.contains("fs") && shown.contains(FS_COMMAND), "{shown}");
    assert!(
        shown.contains("(env: FS_SECRET)") && !shown.contains(FS_SECRET),
        "{shown}"
    );
    assert!(shown.contains(ALLOWED), "{shown}");
    assert!(shown.contains("taken for no ACP agent"), "{shown}");

    // And with it the daemon starts.
    s.world.machine.start(&[]).unwrap();
    wait_until("the runtime to report its policy", DEADLINE, || {
        let mut runtimes = s.world.clients.runtimes.clone();
        let runtime_id = s.world.machine.runtime_id.clone();
        async move {
            let runtime = runtimes
                .get_runtime(pb::GetRuntimeRequest { runtime_id })
                .await
                .ok()?
                .into_inner()
                .runtime?;
            (runtime.manifest?.local_mcp_servers.len() == 1).then_some(())
        }
    })
    .await
    .unwrap();
}
