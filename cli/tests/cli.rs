//! Runs the real `omactl` binary: offline behaviour, and RPCs against a
//! small in-process fake of the control plane.

use std::{
    io::Write as _,
    net::TcpListener as StdListener,
    path::{Path, PathBuf},
    pin::Pin,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use oma_proto::pb::{
    self,
    agent_service_server::{AgentService, AgentServiceServer},
    identity_service_server::{IdentityService, IdentityServiceServer},
    runtime_service_server::{RuntimeService, RuntimeServiceServer},
    session_event::Kind,
    session_service_server::{SessionService, SessionServiceServer},
};
use prost_types::Timestamp;
use tonic::{
    Request, Response, Status,
    codegen::tokio_stream::{self, Stream, wrappers::ReceiverStream},
};

const TOKEN: &str = "oma_0123456789abcdef0123456789abcdef.abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const AGENT: &str = "agt_0123456789abcdef0123456789abcdef";
const RUNTIME: &str = "rt_0123456789abcdef0123456789abcdef";
const USER: &str = "usr_0123456789abcdef0123456789abcdef";
const SESSION: &str = "ses_0123456789abcdef0123456789abcdef";
/// A session whose runtime is offline.
const OFFLINE: &str = "ses_00000000000000000000000000000000";

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `omactl` with a private config file and none of the `OMA_*` variables of
/// the environment running the tests.
fn omactl(config: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_omactl"));
    for var in [
        "OMA_CONTEXT",
        "OMA_SERVER",
        "OMA_TOKEN",
        "OMA_CA_FILE",
        "OMA_INSECURE",
        "OMA_OUTPUT",
    ] {
        command.env_remove(var);
    }
    let out = command.env("OMACTL_CONFIG", config).args(args).output().unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// `omactl` with `input` on stdin.
fn omactl_with_stdin(config: &Path, args: &[&str], input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_omactl"))
        .env_remove("OMA_OUTPUT")
        .env("OMACTL_CONFIG", config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn config_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("omactl").join("config.toml")
}

#[test]
fn completions_cover_every_shell_and_command() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = omactl(&config_in(&dir), &["completion", shell]);
        assert_eq!(out.code, 0, "{shell}: {}", out.stderr);
        for word in ["omactl", "sessions", "workspace", "delete-branch", "completion"] {
            assert!(out.stdout.contains(word), "{shell} completion lacks {word}");
        }
    }
    let out = omactl(&config_in(&dir), &["completion", "tcsh"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(!config_in(&dir).exists(), "generating touched the config");
}

#[test]
fn man_pages_are_written_for_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("man1");
    let out = omactl(&config_in(&dir), &["man", pages.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for page in [
        "omactl.1",
        "omactl-sessions.1",
        "omactl-sessions-create.1",
        "omactl-agents-update.1",
    ] {
        let text = std::fs::read_to_string(pages.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page} is no man page:\n{text}"
        );
        assert!(out.stdout.contains(page), "{page} not listed: {}", out.stdout);
    }
    let create = std::fs::read_to_string(pages.join("omactl-sessions-create.1")).unwrap();
    assert!(create.contains("workspace"), "{create}");
    assert!(!pages.join("omactl-help.1").exists());
}

#[test]
fn help_lists_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    let out = omactl(&config_in(&dir), &["--help"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for noun in [
        "context", "whoami", "users", "tokens", "runtimes", "agents", "sessions", "audit", "chat",
    ] {
        assert!(out.stdout.contains(noun), "{noun} missing from:\n{}", out.stdout);
    }
    let out = omactl(&config_in(&dir), &["agents", "update", "--help"]);
    assert!(out.stdout.contains("--expected-version"), "{}", out.stdout);
    assert_eq!(omactl(&config_in(&dir), &["users", "frobnicate"]).code, 2);
}

#[test]
fn contexts_round_trip_through_a_private_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(&dir);
    let set = omactl(
        &config,
        &[
            "context",
            "set",
            "local",
            "--server",
            "http://127.0.0.1:50051",
            "--token",
            TOKEN,
        ],
    );
    assert_eq!(set.code, 0, "{}", set.stderr);
    let set = omactl(
        &config,
        &["context", "set", "prod", "--server", "https://oma.example.com"],
    );
    assert_eq!(set.code, 0, "{}", set.stderr);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&config).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    let list = omactl(&config, &["context", "list"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    let lines: Vec<&str> = list.stdout.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{}", list.stdout);
    assert!(
        lines.iter().any(|l| l.starts_with("local") && l.ends_with("yes")),
        "{}",
        list.stdout
    );
    assert!(
        !list.stdout.contains(TOKEN),
        "the token must be masked:\n{}",
        list.stdout
    );

    assert_eq!(omactl(&config, &["context", "use", "prod"]).code, 0);
    let list = omactl(&config, &["context", "list", "-o", "json"]);
    let contexts: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    let current: Vec<&str> = contexts
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["current"] == true)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(current, ["prod"]);

    let show = omactl(&config, &["context", "show", "local"]);
    assert!(
        show.stdout.contains("oma_0123…") && !show.stdout.contains(TOKEN),
        "{}",
        show.stdout
    );

    let missing = omactl(&config, &["context", "use", "nope"]);
    assert_ne!(missing.code, 0);
    assert!(
        missing.stderr.starts_with("error: no context named \"nope\""),
        "{}",
        missing.stderr
    );

    assert_eq!(omactl(&config, &["context", "delete", "prod"]).code, 0);
    let list = omactl(&config, &["context", "list"]);
    assert!(!list.stdout.contains("prod"), "{}", list.stdout);
}

#[test]
fn plaintext_to_a_remote_host_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = omactl(
        &config_in(&dir),
        &["--server", "http://oma.example.com:50051", "--token", TOKEN, "whoami"],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(
        out.stderr.trim(),
        "error: refusing plaintext http:// to oma.example.com, which is not a loopback host: use an https:// URL, or pass --insecure if the network is trusted"
    );
}

#[test]
fn an_unreachable_server_is_one_sentence_and_exit_7() {
    let port = {
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let server = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let out = omactl(
        &config_in(&dir),
        &["--server", &server, "--token", TOKEN, "users", "list"],
    );
    assert_eq!(out.code, 7, "{}", out.stderr);
    let prefix = format!("error: cannot reach the control plane at {server}: ");
    assert!(out.stderr.starts_with(&prefix), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
}

#[test]
fn local_checks_need_no_server() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(&dir);
    let out = omactl(&config, &["--server", "http://127.0.0.1:1", "whoami"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(out.stderr.starts_with("error: no API token given"), "{}", out.stderr);
    let out = omactl(
        &config,
        &[
            "--server",
            "http://127.0.0.1:1",
            "--token",
            TOKEN,
            "sessions",
            "get",
            "ses_nope",
        ],
    );
    assert_eq!(out.code, 6, "{}", out.stderr);
    assert!(
        out.stderr.starts_with("error: invalid argument: session id:"),
        "{}",
        out.stderr
    );
    // `-o name` is refused before a command that prints no ids runs (a
    // token minted with it would lose its secret).
    for args in [
        &["tokens", "create", "--name", "x"][..],
        &["sessions", "prompt", "ses_0123456789abcdef0123456789abcdef", "hi"],
    ] {
        let mut full = vec!["--server", "http://127.0.0.1:1", "--token", TOKEN, "-o", "name"];
        full.extend_from_slice(args);
        let out = omactl(&config, &full);
        assert_eq!(out.code, 2, "{}", out.stderr);
        assert!(
            out.stderr.starts_with("error: -o name prints the ids")
                && out.stderr.contains(&format!("`omactl {} {}`", args[0], args[1])),
            "{}",
            out.stderr
        );
    }
    let out = omactl(&config, &["whoami"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    let out = omactl(
        &config,
        &[
            "--server",
            "http://127.0.0.1:1",
            "--token",
            TOKEN,
            "tokens",
            "create",
            "--name",
            "x",
            "--ttl",
            "3x",
        ],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
}

// ---- A fake control plane -------------------------------------------------

#[derive(Default, Clone)]
struct Fake {
    updates: Arc<Mutex<Vec<pb::UpdateAgentRequest>>>,
    exchange_auth: Arc<Mutex<Vec<Option<String>>>>,
    live: Arc<Mutex<Live>>,
}

/// How long an idle watch of the fake lasts before it is cut (past
/// omactl's one second of "stable").
const IDLE_CUT: Duration = Duration::from_millis(1100);

/// The one session of the fake: its log, and what was asked of it.
#[derive(Default)]
struct Live {
    log: Vec<pb::SessionEvent>,
    prompts: Vec<pb::PromptSessionRequest>,
    watches: Vec<pb::WatchSessionRequest>,
    answers: Vec<pb::AnswerPermissionRequest>,
    cancels: usize,
    /// The next watch breaks (UNAVAILABLE) after this many events.
    break_after: Option<usize>,
    /// The next this-many plain watches are cut (UNAVAILABLE) after
    /// [`IDLE_CUT`] without events, as a proxy cuts an idle stream.
    idle_cuts: usize,
    deleted: bool,
}

impl Live {
    fn push(&mut self, turn_id: &str, kind: Kind) {
        let seq = self.log.len() as u64 + 1;
        self.log.push(pb::SessionEvent {
            session_id: SESSION.into(),
            seq,
            time: now(),
            turn_id: turn_id.into(),
            kind: Some(kind),
        });
    }
}

fn update(kind: &str, typed: pb::session_update::Typed) -> Kind {
    Kind::Update(pb::SessionUpdate {
        kind: kind.into(),
        raw_json: format!(r#"{{"sessionUpdate":"{kind}"}}"#),
        typed: Some(typed),
    })
}

fn chunk(text: &str) -> Kind {
    update(
        "agent_message_chunk",
        pb::session_update::Typed::AgentMessageChunk(pb::ContentChunk {
            content: Some(pb::ContentBlock {
                block: Some(pb::content_block::Block::Text(pb::TextContent { text: text.into() })),
            }),
        }),
    )
}

fn tool(kind: &str, title: &str, status: pb::ToolCallStatus) -> Kind {
    let call = pb::ToolCall {
        tool_call_id: "call_1".into(),
        title: title.into(),
        status: status as i32,
        ..Default::default()
    };
    let typed = if kind == "tool_call" {
        pb::session_update::Typed::ToolCall(call)
    } else {
        pb::session_update::Typed::ToolCallUpdate(call)
    };
    update(kind, typed)
}

fn turn_ended(reason: pb::StopReason, error: &str) -> Kind {
    Kind::TurnEnded(pb::TurnEnded {
        stop_reason: reason as i32,
        error: error.into(),
        usage_json: String::new(),
    })
}

/// The events a prompt's text scripts: `echo TEXT`, `work` (tools, a plan,
/// a permission request; ends max_tokens), `fail`, `flaky` (the watch
/// breaks once mid-turn).
fn script(live: &mut Live, turn: &str, text: &str) {
    use pb::ToolCallStatus as S;
    let option = |id: &str, kind: pb::PermissionOptionKind| pb::PermissionOption {
        option_id: id.into(),
        name: id.into(),
        kind: kind as i32,
    };
    if let Some(echo) = text.strip_prefix("echo ") {
        live.push(turn, chunk(echo));
        live.push(turn, turn_ended(pb::StopReason::EndTurn, ""));
    } else if text == "work" {
        live.push(turn, chunk("Working."));
        live.push(turn, tool("tool_call", "Run tests", S::Pending));
        live.push(turn, tool("tool_call_update", "", S::Completed));
        let entry = |content: &str, status: &str| pb::PlanEntry {
            content: content.into(),
            priority: "high".into(),
            status: status.into(),
        };
        live.push(
            turn,
            update(
                "plan",
                pb::session_update::Typed::Plan(pb::Plan {
                    entries: vec![
                        entry("Look", "completed"),
                        entry("Fix", "in_progress"),
                        entry("Test", "pending"),
                    ],
                }),
            ),
        );
        live.push(
            turn,
            Kind::PermissionRequested(pb::PermissionRequested {
                request_id: "perm_1".into(),
                tool_call: Some(pb::ToolCall {
                    tool_call_id: "call_2".into(),
                    title: "Edit main.rs".into(),
                    ..Default::default()
                }),
                options: vec![
                    option("always", pb::PermissionOptionKind::AllowAlways),
                    option("allow", pb::PermissionOptionKind::AllowOnce),
                    option("reject", pb::PermissionOptionKind::RejectOnce),
                ],
                raw_json: "{}".into(),
            }),
        );
        live.push(
            turn,
            Kind::PermissionDecided(pb::PermissionDecided {
                request_id: "perm_1".into(),
                option_id: "reject".into(),
                cancelled: false,
                decided_by: "timeout".into(),
            }),
        );
        live.push(turn, turn_ended(pb::StopReason::MaxTokens, ""));
    } else if text == "fail" {
        live.push(
            turn,
            Kind::Error(pb::SessionError {
                code: "child_exited".into(),
                message: "the agent exited with status 3".into(),
            }),
        );
        live.push(
            turn,
            turn_ended(pb::StopReason::Error, "the agent exited with status 3"),
        );
    } else if text == "flaky" {
        live.break_after = Some(2);
        for piece in ["one ", "two ", "three ", "four"] {
            live.push(turn, chunk(piece));
        }
        live.push(turn, turn_ended(pb::StopReason::EndTurn, ""));
    } else {
        live.push(turn, chunk(&format!("unknown script: {text}")));
        live.push(turn, turn_ended(pb::StopReason::Refusal, ""));
    }
}

fn authorize<T>(request: &Request<T>) -> Result<(), Status> {
    let header = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
    if header == Some(&format!("Bearer {TOKEN}")) {
        Ok(())
    } else {
        Err(Status::unauthenticated(
            "the token is missing, malformed, expired or revoked",
        ))
    }
}

fn now() -> Option<Timestamp> {
    Some(Timestamp::from(SystemTime::now()))
}

fn user(i: usize) -> pb::User {
    pb::User {
        id: format!("usr_{i:032x}"),
        tenant_id: "ten_1".into(),
        name: format!("user{i}"),
        role: if i == 0 { pb::Role::Admin } else { pb::Role::Member } as i32,
        create_time: now(),
    }
}

fn stored_agent(version: u64) -> pb::Agent {
    pb::Agent {
        id: AGENT.into(),
        tenant_id: "ten_1".into(),
        version,
        spec: Some(pb::AgentSpec {
            name: "reviewer".into(),
            system_prompt: "You review code.".into(),
            permission_policy: pb::PermissionPolicy::AllowOnce as i32,
            runtime_binding: Some(pb::RuntimeBinding {
                runtime_id: RUNTIME.into(),
                acp_agent_id: "claude".into(),
                local_skill_blocklist: vec!["pdf".into()],
            }),
            mcp_servers: vec![pb::McpServer {
                name: "files".into(),
                transport: Some(pb::mcp_server::Transport::Local(pb::McpLocal {
                    server_id: "fs".into(),
                })),
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl IdentityService for Fake {
    async fn who_am_i(&self, request: Request<pb::WhoAmIRequest>) -> Result<Response<pb::WhoAmIResponse>, Status> {
        authorize(&request)?;
        Ok(Response::new(pb::WhoAmIResponse {
            tenant: Some(pb::Tenant {
                id: "ten_1".into(),
                name: "acme".into(),
                create_time: now(),
            }),
            user: Some(user(0)),
            token: Some(pb::ApiToken {
                id: "tok_1".into(),
                name: "ci".into(),
                ..Default::default()
            }),
        }))
    }
    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        authorize(&request)?;
        let r = request.into_inner();
        if r.name == "taken" {
            return Err(Status::already_exists("a user named \"taken\" already exists"));
        }
        Ok(Response::new(pb::CreateUserResponse {
            user: Some(pb::User {
                name: r.name,
                role: r.role,
                ..user(9)
            }),
        }))
    }
    /// Five users, at most two per page.
    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        authorize(&request)?;
        let page = request.into_inner().page.unwrap_or_default();
        let start: usize = page.page_token.parse().unwrap_or(0);
        let end = (start + (page.page_size as usize).clamp(1, 2)).min(5);
        Ok(Response::new(pb::ListUsersResponse {
            users: (start..end).map(user).collect(),
            next_page_token: if end < 5 { end.to_string() } else { String::new() },
        }))
    }
    async fn get_user(&self, request: Request<pb::GetUserRequest>) -> Result<Response<pb::GetUserResponse>, Status> {
        authorize(&request)?;
        Err(Status::not_found(format!(
            "user {} not found",
            request.into_inner().user_id
        )))
    }
    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::DeleteUserResponse>, Status> {
        authorize(&request)?;
        Err(Status::permission_denied("only admins may delete users"))
    }
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        authorize(&request)?;
        let r = request.into_inner();
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(pb::ApiToken {
                id: "tok_2".into(),
                user_id: USER.into(),
                name: r.name,
                expire_time: (r.ttl_seconds > 0).then_some(Timestamp {
                    seconds: 2_000_000_000,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            secret: format!("oma_fedcba9876543210fedcba9876543210.{}", "s".repeat(43)),
        }))
    }
    async fn list_tokens(&self, _: Request<pb::ListTokensRequest>) -> Result<Response<pb::ListTokensResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
    async fn revoke_token(
        &self,
        _: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
}

#[tonic::async_trait]
impl RuntimeService for Fake {
    async fn create_connect_code(
        &self,
        request: Request<pb::CreateConnectCodeRequest>,
    ) -> Result<Response<pb::CreateConnectCodeResponse>, Status> {
        authorize(&request)?;
        Ok(Response::new(pb::CreateConnectCodeResponse {
            code: "K7QX-2MPD-9WRT".into(),
            expire_time: Some(Timestamp::from(SystemTime::now() + Duration::from_secs(600))),
            owner_user_id: USER.into(),
        }))
    }
    async fn exchange_connect_code(
        &self,
        request: Request<pb::ExchangeConnectCodeRequest>,
    ) -> Result<Response<pb::ExchangeConnectCodeResponse>, Status> {
        let auth = request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap_or("?").to_owned());
        self.exchange_auth.lock().unwrap().push(auth);
        let r = request.into_inner();
        if r.code != "K7QX-2MPD-9WRT" {
            return Err(Status::not_found("unknown connect code"));
        }
        Ok(Response::new(pb::ExchangeConnectCodeResponse {
            runtime: Some(pb::Runtime {
                id: RUNTIME.into(),
                owner_user_id: USER.into(),
                name: if r.name.is_empty() {
                    r.machine_id.clone()
                } else {
                    r.name
                },
                machine_id: r.machine_id,
                status: pb::RuntimeStatus::Offline as i32,
                ..Default::default()
            }),
            machine_token: "sk_machine_secret".into(),
        }))
    }
    async fn list_runtimes(
        &self,
        _: Request<pb::ListRuntimesRequest>,
    ) -> Result<Response<pb::ListRuntimesResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
    async fn get_runtime(
        &self,
        request: Request<pb::GetRuntimeRequest>,
    ) -> Result<Response<pb::GetRuntimeResponse>, Status> {
        authorize(&request)?;
        let skill = |id: &str, source: pb::local_skill::Source, plugin: &str| pb::LocalSkill {
            id: id.into(),
            name: id.into(),
            description: format!("the {id} skill"),
            source: source as i32,
            plugin_name: plugin.into(),
        };
        Ok(Response::new(pb::GetRuntimeResponse {
            runtime: Some(pb::Runtime {
                id: RUNTIME.into(),
                name: "laptop".into(),
                status: pb::RuntimeStatus::Online as i32,
                manifest: Some(pb::Manifest {
                    acp_agents: vec![pb::AcpAgentInfo {
                        id: "claude".into(),
                        name: "Claude Code".into(),
                        version: "1.2.3".into(),
                        capabilities_json: r#"{"loadSession":true}"#.into(),
                        local_skills: vec![
                            skill("pdf", pb::local_skill::Source::Global, ""),
                            skill("review", pb::local_skill::Source::Plugin, "superpowers"),
                        ],
                        ..Default::default()
                    }],
                    local_mcp_servers: vec![pb::LocalMcpServer {
                        id: "fs".into(),
                        name: "Files".into(),
                        description: "read-only ~/src".into(),
                    }],
                    mcp_url_allow_list: vec!["https://mcp.example/tools".into()],
                    workspaces: Vec::new(),
                }),
                last_seen_time: now(),
                ..Default::default()
            }),
        }))
    }
    async fn delete_runtime(
        &self,
        _: Request<pb::DeleteRuntimeRequest>,
    ) -> Result<Response<pb::DeleteRuntimeResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
}

#[tonic::async_trait]
impl AgentService for Fake {
    async fn create_agent(
        &self,
        _: Request<pb::CreateAgentRequest>,
    ) -> Result<Response<pb::CreateAgentResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
    async fn get_agent(&self, request: Request<pb::GetAgentRequest>) -> Result<Response<pb::GetAgentResponse>, Status> {
        authorize(&request)?;
        Ok(Response::new(pb::GetAgentResponse {
            agent: Some(stored_agent(7)),
        }))
    }
    async fn list_agents(&self, _: Request<pb::ListAgentsRequest>) -> Result<Response<pb::ListAgentsResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
    async fn update_agent(
        &self,
        request: Request<pb::UpdateAgentRequest>,
    ) -> Result<Response<pb::UpdateAgentResponse>, Status> {
        authorize(&request)?;
        self.updates.lock().unwrap().push(request.into_inner());
        Ok(Response::new(pb::UpdateAgentResponse {
            agent: Some(stored_agent(8)),
        }))
    }
    async fn delete_agent(
        &self,
        _: Request<pb::DeleteAgentRequest>,
    ) -> Result<Response<pb::DeleteAgentResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::SessionEvent, Status>> + Send>>;

#[tonic::async_trait]
impl SessionService for Fake {
    async fn create_session(
        &self,
        _: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::CreateSessionResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
    async fn get_session(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        authorize(&request)?;
        Ok(Response::new(pb::GetSessionResponse {
            session: Some(pb::Session {
                id: request.into_inner().session_id,
                agent_id: AGENT.into(),
                runtime_id: RUNTIME.into(),
                status: pb::SessionStatus::Idle as i32,
                ..Default::default()
            }),
        }))
    }
    async fn list_sessions(
        &self,
        _: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
    async fn delete_session(
        &self,
        request: Request<pb::DeleteSessionRequest>,
    ) -> Result<Response<pb::DeleteSessionResponse>, Status> {
        authorize(&request)?;
        self.live.lock().unwrap().deleted = true;
        Ok(Response::new(pb::DeleteSessionResponse {}))
    }
    async fn prompt_session(
        &self,
        request: Request<pb::PromptSessionRequest>,
    ) -> Result<Response<pb::PromptSessionResponse>, Status> {
        authorize(&request)?;
        let r = request.into_inner();
        if r.session_id == OFFLINE {
            return Err(Status::failed_precondition(format!(
                "runtime {RUNTIME} is offline since 2025-01-01T00:00:00Z"
            )));
        }
        let text = match r.prompt.first().and_then(|b| b.block.as_ref()) {
            Some(pb::content_block::Block::Text(t)) => t.text.clone(),
            _ => return Err(Status::invalid_argument("prompt: a text block is required")),
        };
        let mut live = self.live.lock().unwrap();
        let turn_id = if r.turn_id.is_empty() {
            format!("turn_{}", live.prompts.len() + 1)
        } else {
            r.turn_id.clone()
        };
        live.prompts.push(r);
        let from_seq = live.log.len() as u64 + 1;
        live.push(&turn_id, Kind::TurnStarted(pb::TurnStarted::default()));
        script(&mut live, &turn_id, &text);
        Ok(Response::new(pb::PromptSessionResponse { turn_id, from_seq }))
    }
    async fn cancel_turn(
        &self,
        request: Request<pb::CancelTurnRequest>,
    ) -> Result<Response<pb::CancelTurnResponse>, Status> {
        authorize(&request)?;
        self.live.lock().unwrap().cancels += 1;
        Ok(Response::new(pb::CancelTurnResponse {}))
    }
    async fn answer_permission(
        &self,
        request: Request<pb::AnswerPermissionRequest>,
    ) -> Result<Response<pb::AnswerPermissionResponse>, Status> {
        authorize(&request)?;
        self.live.lock().unwrap().answers.push(request.into_inner());
        Ok(Response::new(pb::AnswerPermissionResponse {}))
    }

    type WatchSessionStream = EventStream;
    type GetSessionDiffStream = Pin<Box<dyn Stream<Item = Result<pb::GetSessionDiffResponse, Status>> + Send>>;

    async fn set_session_options(
        &self,
        _request: Request<pb::SetSessionOptionsRequest>,
    ) -> Result<Response<pb::SetSessionOptionsResponse>, Status> {
        Err(Status::unimplemented("not used by these tests"))
    }

    async fn get_session_diff(
        &self,
        _request: Request<pb::GetSessionDiffRequest>,
    ) -> Result<Response<Self::GetSessionDiffStream>, Status> {
        Err(Status::unimplemented("not used by these tests"))
    }

    /// The log from `from_seq` (up to the first TurnEnded with
    /// `until_turn_end`); without it, the stream then stays open until the
    /// session is deleted, and a deleted session is NOT_FOUND.
    async fn watch_session(
        &self,
        request: Request<pb::WatchSessionRequest>,
    ) -> Result<Response<Self::WatchSessionStream>, Status> {
        authorize(&request)?;
        let r = request.into_inner();
        let mut live = self.live.lock().unwrap();
        if live.deleted {
            return Err(Status::not_found(format!("session {} not found", r.session_id)));
        }
        live.watches.push(r.clone());
        let mut events: Vec<Result<pb::SessionEvent, Status>> = Vec::new();
        for event in live.log.iter().filter(|e| e.seq >= r.from_seq.max(1)) {
            let ends = matches!(event.kind, Some(Kind::TurnEnded(_)));
            events.push(Ok(event.clone()));
            if r.until_turn_end && ends {
                break;
            }
        }
        if let Some(n) = live.break_after.take() {
            events.truncate(n);
            events.push(Err(Status::unavailable("the control plane is restarting")));
            return Ok(Response::new(Box::pin(tokio_stream::iter(events))));
        }
        if r.until_turn_end {
            return Ok(Response::new(Box::pin(tokio_stream::iter(events))));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(events.len().max(1) + 1);
        if live.idle_cuts > 0 {
            live.idle_cuts -= 1;
            tokio::spawn(async move {
                for event in events {
                    let _ = tx.send(event).await;
                }
                tokio::time::sleep(IDLE_CUT).await;
                let _ = tx.send(Err(Status::unavailable("idle stream cut by a proxy"))).await;
            });
            return Ok(Response::new(Box::pin(ReceiverStream::new(rx))));
        }
        let fake = self.live.clone();
        tokio::spawn(async move {
            for event in events {
                let _ = tx.send(event).await;
            }
            while !fake.lock().unwrap().deleted {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Serves the fake on a loopback port; the runtime must outlive the test.
fn serve(fake: &Fake) -> (tokio::runtime::Runtime, String) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = tonic::transport::Server::builder()
        .add_service(IdentityServiceServer::new(fake.clone()))
        .add_service(RuntimeServiceServer::new(fake.clone()))
        .add_service(AgentServiceServer::new(fake.clone()))
        .add_service(SessionServiceServer::new(fake.clone()));
    runtime.spawn(router.serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)));
    (runtime, url)
}

#[test]
fn talks_to_a_control_plane() {
    let fake = Fake::default();
    let (_runtime, url) = serve(&fake);
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(&dir);
    assert_eq!(
        omactl(&config, &["context", "set", "fake", "--server", &url, "--token", TOKEN]).code,
        0
    );
    let run = |args: &[&str]| omactl(&config, args);

    let who = run(&["whoami"]);
    assert_eq!(who.code, 0, "{}", who.stderr);
    assert!(who.stdout.contains("tenant:  acme (ten_1)"), "{}", who.stdout);
    assert!(who.stdout.contains("role:    admin"), "{}", who.stdout);
    assert!(who.stdout.contains("expires: never"), "{}", who.stdout);
    let who: serde_json::Value = serde_json::from_str(&run(&["whoami", "-o", "json"]).stdout).unwrap();
    assert_eq!(who["user"]["role"], "admin");

    // Paging follows next_page_token to the end, or stops at --limit.
    let users: serde_json::Value = serde_json::from_str(&run(&["users", "list", "-o", "json"]).stdout).unwrap();
    assert_eq!(users.as_array().unwrap().len(), 5);
    let limited = run(&["users", "list", "--limit", "3"]);
    assert_eq!(limited.stdout.lines().count(), 4, "{}", limited.stdout);
    assert!(
        limited.stdout.lines().nth(1).unwrap().contains("admin"),
        "{}",
        limited.stdout
    );
    let yaml = run(&["users", "list", "-o", "yaml", "--limit", "1"]);
    assert!(yaml.stdout.contains("role: admin"), "{}", yaml.stdout);

    // Statuses become one sentence and an exit code.
    let missing = run(&["users", "get", USER]);
    assert_eq!(
        (missing.code, missing.stderr.trim()),
        (5, format!("error: not found: user {USER} not found").as_str())
    );
    let denied = run(&["users", "delete", USER]);
    assert_eq!(
        (denied.code, denied.stderr.trim()),
        (4, "error: permission denied: only admins may delete users")
    );
    let taken = run(&["users", "create", "taken"]);
    assert_eq!(taken.code, 6, "{}", taken.stderr);
    let bad_token = run(&["--token", "oma_wrong", "whoami"]);
    assert_eq!(bad_token.code, 3, "{}", bad_token.stderr);
    assert!(
        bad_token.stderr.starts_with("error: unauthenticated: "),
        "{}",
        bad_token.stderr
    );
    let created = run(&["users", "create", "bob", "--role", "admin", "-o", "json"]);
    let created: serde_json::Value = serde_json::from_str(&created.stdout).unwrap();
    assert_eq!(
        (created["name"].as_str(), created["role"].as_str()),
        (Some("bob"), Some("admin"))
    );

    // Tokens: the secret is printed once, on its own `secret:` line.
    let token = run(&["tokens", "create", "--name", "ci", "--ttl", "30d"]);
    assert_eq!(token.code, 0, "{}", token.stderr);
    let secret_line = token.stdout.lines().find(|l| l.starts_with("secret:")).unwrap();
    assert!(
        secret_line.split_whitespace().nth(1).unwrap().starts_with("oma_fedcba"),
        "{}",
        token.stdout
    );
    let token: serde_json::Value =
        serde_json::from_str(&run(&["tokens", "create", "--name", "ci", "-o", "json"]).stdout).unwrap();
    assert!(token["secret"].as_str().unwrap().starts_with("oma_"));
    assert_eq!(token["token"]["expire_time"], serde_json::Value::Null);

    // Pairing: the code and the exact setup line.
    let connect = run(&["runtimes", "connect"]);
    assert_eq!(connect.code, 0, "{}", connect.stderr);
    assert!(
        connect.stdout.starts_with("code:    K7QX-2MPD-9WRT\n"),
        "{}",
        connect.stdout
    );
    let setup = format!("oma-agent setup --server {url} --code K7QX-2MPD-9WRT");
    assert!(connect.stdout.lines().any(|l| l.trim() == setup), "{}", connect.stdout);
    let connect: serde_json::Value = serde_json::from_str(&run(&["runtimes", "connect", "-o", "json"]).stdout).unwrap();
    assert_eq!(
        (connect["code"].as_str(), connect["setup_command"].as_str()),
        (Some("K7QX-2MPD-9WRT"), Some(setup.as_str()))
    );

    // Exchange sends no token.
    let exchange = run(&[
        "runtimes",
        "exchange",
        "--code",
        "K7QX-2MPD-9WRT",
        "--machine-id",
        "m-1",
        "-o",
        "json",
    ]);
    assert_eq!(exchange.code, 0, "{}", exchange.stderr);
    let exchange: serde_json::Value = serde_json::from_str(&exchange.stdout).unwrap();
    assert_eq!(
        (exchange["runtime"]["id"].as_str(), exchange["machine_token"].as_str()),
        (Some(RUNTIME), Some("sk_machine_secret"))
    );
    assert_eq!(fake.exchange_auth.lock().unwrap().as_slice(), [None]);
    let exchange = run(&[
        "runtimes",
        "exchange",
        "--code",
        "K7QX-2MPD-9WRT",
        "--machine-id",
        "m-1",
    ]);
    assert!(
        exchange.stdout.contains("machine token: sk_machine_secret"),
        "{}",
        exchange.stdout
    );

    // The manifest: ACP agents with versions, local skills with source and plugin.
    let runtime = run(&["runtimes", "get", RUNTIME]);
    assert!(
        runtime.stdout.contains("claude     Claude Code  1.2.3"),
        "{}",
        runtime.stdout
    );
    assert!(
        runtime
            .stdout
            .lines()
            .any(|l| l.contains("review") && l.contains("plugin") && l.contains("superpowers")),
        "{}",
        runtime.stdout
    );
    let runtime: serde_json::Value =
        serde_json::from_str(&run(&["runtimes", "get", RUNTIME, "-o", "json"]).stdout).unwrap();
    assert_eq!(runtime["status"], "online");
    assert_eq!(
        runtime["manifest"]["acp_agents"][0]["local_skills"][0]["source"],
        "global"
    );
    assert_eq!(runtime["manifest"]["local_mcp_servers"][0]["id"], "fs");
    assert_eq!(
        runtime["manifest"]["mcp_url_allow_list"],
        serde_json::json!(["https://mcp.example/tools"])
    );

    let text = run(&["runtimes", "get", RUNTIME]).stdout;
    assert!(
        text.lines()
            .any(|l| l.contains("fs") && l.contains("Files") && l.contains("read-only ~/src")),
        "{text}"
    );
    assert!(text.contains("MCP URL allow-list: https://mcp.example/tools"), "{text}");

    // Updates name exactly the fields given; a partial binding keeps the rest.
    assert_eq!(
        run(&["agents", "update", AGENT, "--system-prompt", "Be brief."]).code,
        0
    );
    let bound = run(&["agents", "update", AGENT, "--acp-agent", "codex", "-o", "json"]);
    assert_eq!(bound.code, 0, "{}", bound.stderr);
    let shown: serde_json::Value = serde_json::from_str(&bound.stdout).unwrap();
    assert_eq!(shown["spec"]["permission_policy"], "allow_once");
    let nothing = run(&["agents", "update", AGENT]);
    assert_eq!(nothing.code, 2);
    assert!(
        nothing.stderr.starts_with("error: nothing to update"),
        "{}",
        nothing.stderr
    );
    let updates = fake.updates.lock().unwrap();
    assert_eq!(updates.len(), 2);
    assert_eq!(updates[0].update_mask.as_ref().unwrap().paths, ["system_prompt"]);
    assert_eq!(updates[0].spec.as_ref().unwrap().system_prompt, "Be brief.");
    assert_eq!(updates[0].expected_version, 0);
    assert_eq!(updates[1].update_mask.as_ref().unwrap().paths, ["runtime_binding"]);
    let binding = updates[1].spec.as_ref().unwrap().runtime_binding.clone().unwrap();
    assert_eq!(
        (
            binding.runtime_id.as_str(),
            binding.acp_agent_id.as_str(),
            binding.local_skill_blocklist
        ),
        (RUNTIME, "codex", vec!["pdf".to_owned()])
    );
    assert_eq!(updates[1].expected_version, 7);
    drop(updates);

    // MCP servers: a machine's local server by id, never a command line.
    let local = run(&["agents", "update", AGENT, "--mcp-local", "files=fs"]);
    assert_eq!(local.code, 0, "{}", local.stderr);
    let sent = fake.updates.lock().unwrap().last().cloned().unwrap();
    assert_eq!(sent.update_mask.unwrap().paths, ["mcp_servers"]);
    assert_eq!(
        sent.spec.unwrap().mcp_servers,
        [pb::McpServer {
            name: "files".into(),
            transport: Some(pb::mcp_server::Transport::Local(pb::McpLocal {
                server_id: "fs".into()
            })),
        }]
    );
    let stdio = run(&["agents", "update", AGENT, "--mcp-stdio", "fs=curl evil.example"]);
    assert_eq!(stdio.code, 2, "{}", stdio.stderr);
    assert!(stdio.stderr.contains("--mcp-local NAME=ID"), "{}", stdio.stderr);
    assert_eq!(fake.updates.lock().unwrap().len(), 3, "a refused flag sent nothing");
    let shown = run(&["agents", "get", AGENT]);
    assert!(
        shown
            .stdout
            .lines()
            .any(|l| l.contains("files") && l.contains("local") && l.contains("fs")),
        "{}",
        shown.stdout
    );
    let shown: serde_json::Value = serde_json::from_str(&run(&["agents", "get", AGENT, "-o", "json"]).stdout).unwrap();
    assert_eq!(
        shown["spec"]["mcp_servers"][0],
        serde_json::json!({"name": "files", "local": {"server_id": "fs"}})
    );
}

#[test]
fn prompts_follow_the_turn_to_its_end() {
    let fake = Fake::default();
    let (_runtime, url) = serve(&fake);
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(&dir);
    assert_eq!(
        omactl(&config, &["context", "set", "fake", "--server", &url, "--token", TOKEN]).code,
        0
    );
    let run = |args: &[&str]| omactl(&config, args);

    // Agent text as it came, ending with a newline; exit 0 on end_turn.
    let echo = run(&["sessions", "prompt", SESSION, "echo hi", "--turn-id", "t-echo"]);
    assert_eq!((echo.code, echo.stdout.as_str(), echo.stderr.as_str()), (0, "hi\n", ""));
    {
        let live = fake.live.lock().unwrap();
        assert_eq!(live.prompts[0].turn_id, "t-echo");
        let watch = &live.watches[0];
        assert_eq!((watch.from_seq, watch.until_turn_end), (1, true));
    }

    // Tool calls, the plan, the permission request; max_tokens exits 8
    // (2 is a usage error).
    let work = run(&["sessions", "prompt", SESSION, "work"]);
    assert_eq!(work.code, 8, "{}", work.stderr);
    assert_eq!(
        work.stdout,
        format!(
            "Working.\n\
             * Run tests [pending]\n\
             * Run tests [completed]\n\
             plan:\n  [x] Look\n  [~] Fix\n  [ ] Test\n\
             ? permission requested: Edit main.rs — options: always (allow_always), allow (allow_once), reject (reject_once); answer with: omactl sessions approve {SESSION} perm_1 [--option ID]\n\
             permission perm_1: reject (by timeout)\n"
        )
    );
    assert_eq!(work.stderr, "turn ended: max_tokens\n");

    // An error: the session error and the turn's error on stderr, exit 1.
    let fail = run(&["sessions", "prompt", SESSION, "fail"]);
    assert_eq!(fail.code, 1);
    assert_eq!(fail.stdout, "");
    assert_eq!(
        fail.stderr,
        "error [child_exited]: the agent exited with status 3\nerror: the agent exited with status 3\n"
    );

    // A broken watch is reopened from the last seen seq + 1: nothing missed
    // or printed twice.
    let flaky = run(&["sessions", "prompt", SESSION, "flaky"]);
    assert_eq!(flaky.code, 0, "{}", flaky.stderr);
    assert_eq!(flaky.stdout, "one two three four\n");
    assert!(flaky.stderr.contains("reconnecting"), "{}", flaky.stderr);
    {
        let live = fake.live.lock().unwrap();
        let first = live.prompts.len();
        assert_eq!(first, 4);
        let from: Vec<u64> = live.watches.iter().rev().take(2).map(|w| w.from_seq).collect();
        // The turn started at seq 15 (TurnStarted); the break came after 2 events.
        assert_eq!(from, [17, 15]);
    }

    // JSON Lines: one object per event.
    let json = run(&["-o", "json", "sessions", "prompt", SESSION, "echo json"]);
    assert_eq!(json.code, 0, "{}", json.stderr);
    let events: Vec<serde_json::Value> = json.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["turn_started", "update", "turn_ended"]);
    assert_eq!(events[1]["update"]["kind"], "agent_message_chunk");
    assert_eq!(events[1]["update"]["raw_json"]["sessionUpdate"], "agent_message_chunk");
    assert_eq!(events[1]["update"]["agent_message_chunk"]["content"]["text"], "json");
    assert_eq!(events[2]["turn_ended"]["stop_reason"], "end_turn");
    assert_eq!(events[2]["seq"].as_u64(), Some(events[0]["seq"].as_u64().unwrap() + 2));
    assert_eq!(events[0]["turn_id"], events[2]["turn_id"]);

    // The prompt from a file, or from stdin.
    let file = dir.path().join("prompt.txt");
    std::fs::write(&file, "echo from a file").unwrap();
    let from_file = run(&["sessions", "prompt", SESSION, "--file", file.to_str().unwrap()]);
    assert_eq!(from_file.stdout, "from a file\n", "{}", from_file.stderr);
    let from_stdin = omactl_with_stdin(&config, &["sessions", "prompt", SESSION, "--file", "-"], "echo piped");
    assert_eq!(from_stdin.stdout, "piped\n", "{}", from_stdin.stderr);

    // An offline runtime: the server's sentence, exit 6.
    let offline = run(&["sessions", "prompt", OFFLINE, "echo hi"]);
    assert_eq!(offline.code, 6);
    assert_eq!(
        offline.stderr.trim(),
        format!("error: failed precondition: runtime {RUNTIME} is offline since 2025-01-01T00:00:00Z")
    );
    let nothing = run(&["sessions", "prompt", SESSION, "  "]);
    assert_eq!(nothing.code, 2, "{}", nothing.stderr);

    // Approve without --option picks the first allow_once option.
    let approve = run(&["sessions", "approve", SESSION, "perm_1"]);
    assert_eq!(approve.code, 0, "{}", approve.stderr);
    assert_eq!(approve.stdout, "Permission perm_1 answered: allow (allow_once).\n");
    let approve = run(&[
        "-o", "json", "sessions", "approve", SESSION, "perm_1", "--option", "always",
    ]);
    let approve: serde_json::Value = serde_json::from_str(&approve.stdout).unwrap();
    assert_eq!(approve["option_id"], "always");
    assert_eq!(run(&["sessions", "deny", SESSION, "perm_1"]).code, 0);
    assert_eq!(run(&["sessions", "cancel", SESSION]).code, 0);
    {
        use pb::answer_permission_request::Answer;
        let live = fake.live.lock().unwrap();
        let answers: Vec<_> = live.answers.iter().map(|a| a.answer.clone().unwrap()).collect();
        assert_eq!(
            answers,
            [
                Answer::OptionId("allow".into()),
                Answer::OptionId("always".into()),
                Answer::Reject(true)
            ]
        );
        assert_eq!(live.cancels, 1);
    }

    // Watching until the next turn end, from the start.
    let watched = run(&["sessions", "watch", SESSION, "--until-turn-end"]);
    assert_eq!(watched.code, 0, "{}", watched.stderr);
    assert_eq!(watched.stdout, "hi\n· turn ended: end_turn\n");

    // Chat from a script: one prompt per line; exit 1 as a turn failed.
    let chat = omactl_with_stdin(
        &config,
        &["chat", "--session", SESSION],
        "echo first\n\nfail\necho last\n",
    );
    assert_eq!(chat.code, 1, "{}", chat.stderr);
    assert_eq!(chat.stdout, "first\nlast\n");
    assert!(
        chat.stderr.starts_with(&format!("session {SESSION}\n")),
        "{}",
        chat.stderr
    );
    assert!(
        chat.stderr.contains("error: the agent exited with status 3"),
        "{}",
        chat.stderr
    );
    let chat = omactl_with_stdin(
        &config,
        &["chat", "--session", SESSION],
        "echo only\n/quit\necho never\n",
    );
    assert_eq!((chat.code, chat.stdout.as_str()), (0, "only\n"), "{}", chat.stderr);

    // A plain watch runs until the session is deleted, through more idle
    // cuts than it has retries (each cut comes after a stream that worked).
    let watches_before = fake.live.lock().unwrap().watches.len();
    fake.live.lock().unwrap().idle_cuts = 7;
    let watch = Command::new(env!("CARGO_BIN_EXE_omactl"))
        .env_remove("OMA_OUTPUT")
        .env("OMACTL_CONFIG", &config)
        .args(["sessions", "watch", SESSION, "--from-seq", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while {
        let live = fake.live.lock().unwrap();
        live.idle_cuts > 0 || live.watches.len() < watches_before + 8
    } {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the watch did not outlive its idle cuts"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(run(&["sessions", "delete", SESSION]).code, 0);
    let out = watch.wait_with_output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.starts_with("hi\n· turn ended: end_turn\nWorking.\n"), "{stdout}");
    assert!(
        stderr.ends_with(&format!("\nsession {SESSION} was deleted; no more events\n")),
        "{stderr}"
    );
    assert!(
        stdout.contains("· turn ended: error: the agent exited with status 3\n"),
        "{stdout}"
    );
}

/// `omactl args…` on a pseudo-terminal (util-linux `script`), `input` typed
/// into it; its output (stdout and stderr, as the terminal shows them).
fn omactl_on_a_terminal(config: &Path, args: &[&str], input: &str) -> Option<(i32, String)> {
    if Command::new("script").arg("--version").output().is_err() {
        println!("SKIPPED: util-linux `script` is not installed, so there is no pseudo-terminal to test on");
        return None;
    }
    let mut line = String::from(env!("CARGO_BIN_EXE_omactl"));
    for arg in args {
        line.push_str(&format!(" '{arg}'"));
    }
    let mut child = Command::new("script")
        .args(["--quiet", "--return", "--command", &line, "/dev/null"])
        .env("OMACTL_CONFIG", config)
        .env_remove("OMA_OUTPUT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    Some((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

#[test]
fn deletes_ask_first_on_a_terminal_unless_yes() {
    let fake = Fake::default();
    let (_runtime, url) = serve(&fake);
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(&dir);
    assert_eq!(
        omactl(&config, &["context", "set", "fake", "--server", &url, "--token", TOKEN]).code,
        0
    );
    let deleted = || fake.live.lock().unwrap().deleted;

    let Some((code, shown)) = omactl_on_a_terminal(&config, &["sessions", "delete", SESSION], "n\n") else {
        return;
    };
    assert_eq!(code, 1, "{shown}");
    assert!(
        shown.contains(&format!("Delete session {SESSION} and its event log? [y/N]")),
        "{shown}"
    );
    assert!(shown.contains("nothing was done"), "{shown}");
    assert!(!deleted(), "a declined delete reached the server");

    let (code, shown) = omactl_on_a_terminal(&config, &["sessions", "delete", SESSION], "y\n").unwrap();
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains(&format!("Session {SESSION} deleted.")), "{shown}");
    assert!(deleted());

    fake.live.lock().unwrap().deleted = false;
    let (code, shown) = omactl_on_a_terminal(&config, &["sessions", "delete", "--yes", SESSION], "").unwrap();
    assert_eq!(code, 0, "{shown}");
    assert!(!shown.contains("[y/N]"), "--yes still asked: {shown}");
    assert!(deleted());

    // A script (no terminal) is never asked.
    fake.live.lock().unwrap().deleted = false;
    assert_eq!(omactl(&config, &["sessions", "delete", SESSION]).code, 0);
    assert!(deleted());
}

#[test]
fn login_checks_the_token_before_saving_it_and_reads_it_from_stdin() {
    let fake = Fake::default();
    let (_runtime, url) = serve(&fake);
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(&dir);

    // A token the server refuses is not saved.
    let bad = omactl_with_stdin(
        &config,
        &["login", "prod", "--server", &url, "--token-stdin"],
        "oma_0123456789abcdef0123456789abcdef.wrong\n",
    );
    assert_eq!(bad.code, 3, "{}", bad.stderr);
    assert!(!config.exists() || !std::fs::read_to_string(&config).unwrap().contains("prod"));

    // Piped without --token-stdin too (stdin is no terminal).
    let good = omactl_with_stdin(&config, &["login", "prod", "--server", &url], &format!("{TOKEN}\n"));
    assert_eq!(good.code, 0, "{}", good.stderr);
    assert!(
        good.stdout.contains("as user0 (admin) of tenant acme"),
        "{}",
        good.stdout
    );
    assert!(good.stdout.contains("context \"prod\" is current"), "{}", good.stdout);
    let who = omactl(&config, &["whoami"]);
    assert_eq!(who.code, 0, "{}", who.stderr);
    let saved = std::fs::read_to_string(&config).unwrap();
    assert!(
        saved.contains(TOKEN) && saved.contains("current_context = \"prod\""),
        "{saved}"
    );

    // --token-stdin works for any command and never with chat.
    let empty = tempfile::tempdir().unwrap();
    let other = config_in(&empty);
    let who = omactl_with_stdin(
        &other,
        &["whoami", "--server", &url, "--token-stdin"],
        &format!("{TOKEN}\n"),
    );
    assert_eq!(who.code, 0, "{}", who.stderr);
    let none = omactl_with_stdin(&other, &["whoami", "--server", &url, "--token-stdin"], "\n");
    assert_eq!(none.code, 2, "{}", none.stderr);
    assert!(none.stderr.contains("stdin held no token"), "{}", none.stderr);
    let chat = omactl_with_stdin(
        &other,
        &["chat", "--server", &url, "--token-stdin", "--session", SESSION],
        "x\n",
    );
    assert_eq!(chat.code, 2, "{}", chat.stderr);
    let both = omactl(&other, &["whoami", "--token", TOKEN, "--token-stdin"]);
    assert_eq!(both.code, 2, "{}", both.stderr);
}
