//! A hostile control plane against the real `oma-agent`: every attack below
//! is played by a fake server the daemon is paired with, and after each one
//! [`Lab::run`] checks that no canary command ran, nothing outside the
//! session folders changed or appeared (the user's `.bashrc` and `.claude`
//! keep their content, the data dir holds only the daemon's own files, with
//! private modes), and the daemon still heartbeats and still serves a
//! session started before the attacks.
//!
//! Adding a case: build a start with [`Lab::bundle`], set the hostile field,
//! and say what the daemon must answer, e.g.
//! `lab.run(Attack::new("…").start(start).failed(&id, "CODE", "THE RULE"))`.

use oma_integration_tests::hostile_cp::{
    AGENTS_MD, Attack, CLAUDISH, DEADLINE, Lab, Outbound, PLAIN, session_id, swapped_for_symlinks,
};
use oma_integration_tests::{git_repo, wait_until};
use oma_proto::pb;
use oma_proto::pb::control_frame::Frame;

/// A workspace the owner declared, a git repository with one commit on
/// `main`; every hostile start below names it (or not) and must leave it as
/// it was: no branch, no worktree, nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_names_from_the_server_never_reach_git_or_the_disk() {
    let repo_root = tempfile::tempdir().unwrap();
    let repo = repo_root.path().join("web");
    git_repo(&repo);
    let git = |args: &[&str]| oma_integration_tests::git(&repo, args);
    let workspaces = format!("[[workspace]]\nid = \"web\"\npath = \"{}\"\n", repo.display());
    let lab = Lab::start_with_config(64, None, Some(&workspaces)).await.unwrap();
    let canary = lab.canary.token.clone();
    let cases: Vec<(&str, pb::SessionWorkspace, &str, &str)> = vec![
        (
            "a path as the id",
            ws("../../etc", "", ""),
            "workspace_unknown",
            "not a valid workspace id",
        ),
        (
            "an undeclared id",
            ws("undeclared", "", ""),
            "workspace_unknown",
            "no workspace \"undeclared\"",
        ),
        (
            "an option as the branch",
            ws("web", &format!("--output=/tmp/{canary}"), ""),
            "workspace_branch_invalid",
            "starts with '-'",
        ),
        (
            "a branch climbing out",
            ws("web", "a/../../b", ""),
            "workspace_branch_invalid",
            "'..'",
        ),
        (
            "an option as the base",
            ws("web", "", &format!("--upload-pack=touch /tmp/{canary}")),
            "workspace_base_invalid",
            "starts with '-'",
        ),
        (
            "a base that names nothing",
            ws("web", "", "nowhere"),
            "workspace_base_not_found",
            "\"nowhere\"",
        ),
        (
            "an existing branch",
            ws("web", "main", ""),
            "workspace_branch_exists",
            "\"main\" already exists",
        ),
        (
            "direct mode the owner did not allow",
            pb::SessionWorkspace {
                mode: pb::WorkspaceMode::Direct as i32,
                ..ws("web", "", "")
            },
            "workspace_direct_not_allowed",
            "allow_direct",
        ),
    ];
    for (case, workspace, code, says) in cases {
        let id = session_id();
        let mut start = lab.bundle(PLAIN, &id);
        start.workspace = Some(workspace);
        lab.run(
            Attack::new(format!("workspace: {case}"))
                .start(start)
                .failed(&id, code, says),
        )
        .await
        .unwrap();
    }
    assert_eq!(git(&["status", "--porcelain", "--untracked-files=all"]), "");
    assert_eq!(git(&["branch", "--list", "--format=%(refname:short)"]).trim(), "main");
    assert_eq!(
        git(&["worktree", "list", "--porcelain"]).matches("worktree ").count(),
        1
    );
    assert!(!lab.daemon.data_dir.path().join("worktrees").exists());
}

fn ws(id: &str, branch: &str, base_ref: &str) -> pb::SessionWorkspace {
    pb::SessionWorkspace {
        workspace_id: id.into(),
        mode: pb::WorkspaceMode::Unspecified as i32,
        branch: branch.into(),
        base_ref: base_ref.into(),
    }
}

/// What a refused skill name or path error names: the value itself, or the
/// rule when the value is empty or too long to quote.
fn named(value: &str, max: usize) -> String {
    if value.is_empty() {
        "must not be empty".into()
    } else if value.len() > max {
        "must be at most".into()
    } else {
        format!("{value:?}")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skill_names_and_paths_never_leave_the_session_folder() {
    let lab = Lab::start(64).await.unwrap();
    let mut names = vec![
        "..".to_owned(),
        ".".to_owned(),
        String::new(),
        ".claude".to_owned(),
        "a/b".to_owned(),
        "a\\b".to_owned(),
        "a\0b".to_owned(),
        "Upper".to_owned(),
        "x".repeat(65),
        format!("../{}", lab.canary.token),
        format!("/{}", lab.canary.token),
    ];
    names.push(lab.canary.home.join(".claude/skills/mine").display().to_string());
    for agent in [CLAUDISH, PLAIN] {
        let mut attack = Attack::new(format!("{agent}: skill names with path characters"));
        for name in &names {
            let id = session_id();
            let mut start = lab.bundle(agent, &id);
            start.skills[0].name = name.clone();
            attack = attack.start(start).failed(&id, "start_failed", &named(name, 64));
        }
        lab.run(attack).await.unwrap();

        let mut paths = lab.canary.escapes();
        paths.extend([String::new(), "x/".repeat(300), "SKILL.md/".to_owned()]);
        let mut attack = Attack::new(format!("{agent}: skill file paths that leave the skill folder"));
        for path in &paths {
            let id = session_id();
            let mut start = lab.bundle(agent, &id);
            start.skills[0].files[1].path = path.clone();
            attack = attack.start(start).failed(&id, "start_failed", &named(path, 512));
        }
        lab.run(attack).await.unwrap();

        // A good skill, then a bad one: nothing of the first is written.
        let id = session_id();
        let mut start = lab.bundle(agent, &id);
        let mut bad = start.skills[0].clone();
        bad.name = "second".into();
        bad.files[0].path = format!("../../{}", lab.canary.token);
        start.skills.push(bad);
        let mut twice = lab.bundle(agent, &session_id());
        twice.skills.push(twice.skills[0].clone());
        let twice_id = twice.session_id.clone();
        let mut file_twice = lab.bundle(agent, &session_id());
        file_twice.skills[0].files[1].path = "SKILL.md".into();
        let file_twice_id = file_twice.session_id.clone();
        lab.run(
            Attack::new(format!("{agent}: a bad skill after a good one, and duplicates"))
                .start(start)
                .failed(&id, "start_failed", "../../")
                .start(twice)
                .failed(&twice_id, "start_failed", "given twice")
                .start(file_twice)
                .failed(&file_twice_id, "start_failed", "twice"),
        )
        .await
        .unwrap();
    }
}

/// Whether `sessions/<id>` is somewhere that exists only if the daemon made
/// it (not the sessions folder itself, or one of the daemon's own folders).
fn names_a_new_place(id: &str) -> bool {
    !["", ".", "..", "../outbox", "../../", "../sessions"].contains(&id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_and_blocklists_with_path_characters_or_commands_go_nowhere() {
    let lab = Lab::start(64).await.unwrap();
    let t = lab.canary.token.clone();
    let valid = session_id();
    let bad_ids = [
        format!("../../{t}"),
        format!("ses_../../../{t}"),
        format!("/tmp/{t}"),
        format!("{valid}/../../{t}"),
        format!("{valid}\0"),
        valid.to_uppercase(),
        "..".to_owned(),
        ".".to_owned(),
        String::new(),
        "ses_".to_owned() + &"0".repeat(10_000),
    ];
    let mut attack = Attack::new("starts with path-like session ids");
    for id in &bad_ids {
        attack = attack.start(lab.bundle(PLAIN, id));
    }
    for id in bad_ids.iter().filter(|id| names_a_new_place(id)) {
        attack = attack.absent(id);
    }
    lab.run(attack).await.unwrap();

    // Commands for sessions that do not exist, or whose ids are paths,
    // including the daemon's own folders.
    let unknown = session_id();
    let mut targets: Vec<String> = bad_ids.to_vec();
    targets.extend([
        unknown.clone(),
        "../outbox".into(),
        "../../".into(),
        "../sessions".into(),
    ]);
    let mut attack = Attack::new("prompts, cancels, answers, acks and disposes for unknown and path-like ids");
    for id in &targets {
        attack = attack
            .send(Frame::Prompt(pb::Prompt {
                session_id: id.clone(),
                turn_id: format!("../../{t}"),
                prompt: oma_integration_tests::text_prompt("echo should never run"),
                requested_by_user_id: "../../root".into(),
            }))
            .send(Frame::Cancel(pb::Cancel {
                session_id: id.clone(),
                turn_id: format!("../{t}"),
            }))
            .send(Frame::PermissionAnswer(pb::PermissionAnswer {
                session_id: id.clone(),
                request_id: format!("g1.../../{t}"),
                option_id: "allow\0".into(),
                cancelled: false,
                decided_by: "user:\0".into(),
            }))
            .send(Frame::EventAck(pb::EventAck {
                session_id: id.clone(),
                seq: u64::MAX,
            }))
            .send(Frame::DisposeSession(pb::DisposeSession {
                session_id: id.clone(),
                delete_branch: false,
            }));
    }
    // Hostile request ids and options for the normal session itself.
    attack = attack.send(Frame::PermissionAnswer(pb::PermissionAnswer {
        session_id: lab.normal.clone(),
        request_id: format!("../../{t}"),
        option_id: format!("../../{t}"),
        cancelled: false,
        decided_by: format!("../../{t}"),
    }));
    for id in targets.iter().filter(|id| names_a_new_place(id)) {
        attack = attack.absent(id);
    }
    lab.run(attack).await.unwrap();

    // The agent is named by its id in the machine's own table: a command
    // line or a path names nothing.
    let command = lab.canary.command.display().to_string();
    let mut attack = Attack::new("ACP agent ids that are command lines or paths");
    for agent in [
        command.clone(),
        format!("sh -c {command}"),
        format!("{PLAIN} {command}"),
        format!("../../../../../../../..{command}"),
        "/bin/sh".to_owned(),
        String::new(),
    ] {
        let id = session_id();
        attack = attack
            .start(lab.bundle(&agent, &id))
            .failed(&id, "agent_not_found", &format!("{agent:?}"));
    }
    lab.run(attack).await.unwrap();

    // Seqs the session never numbered.
    let id = session_id();
    let mut start = lab.bundle(PLAIN, &id);
    start.last_stored_seq = u64::MAX;
    lab.run(
        Attack::new("a start claiming more stored events than a session can number, an ack of events never sent")
            .start(start)
            .refused(&id, "invalid_start", "more than a session can number")
            .send(Frame::EventAck(pb::EventAck {
                session_id: lab.normal.clone(),
                seq: u64::MAX,
            })),
    )
    .await
    .unwrap();

    // A blocklist is names matched against the local skills, never paths.
    let id = session_id();
    let mut start = lab.bundle(CLAUDISH, &id);
    start.local_skill_blocklist = vec![
        format!("../../{t}"),
        "/etc/passwd".into(),
        lab.canary.home.join(".claude/skills/mine").display().to_string(),
        "../mine".into(),
        "mine/".into(),
        "mine\0".into(),
        "a/b".into(),
        "..".into(),
        ".".into(),
        String::new(),
        "*".into(),
        "x".repeat(10_000),
    ];
    lab.run(
        Attack::new("a blocklist of path-like entries")
            .start(start)
            .ready(&id)
            .turn(&id, "list-skills", "skills: mine"),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_swapping_files_for_symlinks_never_redirects_the_daemon() {
    let lab = Lab::start(64).await.unwrap();
    for agent in [CLAUDISH, PLAIN] {
        for attack in swapped_for_symlinks(&lab, agent) {
            lab.run(attack).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_frames_cost_at_most_a_reconnect() {
    let lab = Lab::start(64).await.unwrap();
    let too_big = "x".repeat(oma_proto::MAX_MESSAGE_BYTES + 1024);

    lab.run(
        Attack::new("a prompt larger than the message limit")
            .send(Frame::Prompt(pb::Prompt {
                session_id: lab.normal.clone(),
                turn_id: "trn_oversized".into(),
                prompt: oma_integration_tests::text_prompt(&too_big),
                requested_by_user_id: String::new(),
            }))
            .reconnects(),
    )
    .await
    .unwrap();

    let id = session_id();
    let mut start = lab.bundle(PLAIN, &id);
    start.agents_md = too_big.clone();
    lab.run(
        Attack::new("a start larger than the message limit")
            .send(Frame::StartSession(start))
            .reconnects()
            .absent(&id),
    )
    .await
    .unwrap();

    // Each of these breaks the decoding of the stream.
    let malformed: [(&str, Vec<u8>); 4] = [
        ("bytes that are not protobuf", vec![0xff; 64]),
        // field 3 (Prompt) holding field 1 (session_id) of invalid UTF-8
        ("a string that is not UTF-8", vec![0x1a, 0x04, 0x0a, 0x02, 0xff, 0xfe]),
        // field 2 (StartSession) announcing 127 bytes and holding none
        ("a truncated message", vec![0x12, 0x7f]),
        // field 3 with a length of 2^63
        (
            "an absurd length",
            vec![0x1a, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
        ),
    ];
    for (name, bytes) in malformed {
        lab.run(Attack::new(name).send(Outbound::Raw(bytes)).reconnects())
            .await
            .unwrap();
    }

    // Well-formed but meaningless: ignored, on the same stream.
    let mut attack = Attack::new("empty frames, unknown fields, a late Welcome, a heartbeat storm")
        .send(Outbound::Raw(Vec::new()))
        // field 99, a varint: a frame kind from the future
        .send(Outbound::Raw(vec![0x98, 0x06, 0x01]))
        .send(Frame::Welcome(pb::Welcome {
            runtime_id: "../../rt".into(),
            connection_epoch: u64::MAX,
            heartbeat_interval_ms: 1,
            sessions: vec![pb::SessionCursor {
                session_id: format!("../../{}", lab.canary.token),
                last_stored_seq: u64::MAX,
            }],
            unknown_session_ids: vec![format!("../../{}", lab.canary.token), "../outbox".into()],
        }));
    // (Superseded is left out: it stops the daemon by design, as when
    // another daemon with these credentials takes over.)
    for n in 0..2000 {
        attack = attack.send(Frame::Heartbeat(pb::Heartbeat { sent_at_ms: n }));
    }
    let attack = attack.turn(&lab.normal, "echo still here", "still here").same_stream();
    lab.run(attack).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_session_starts_spawn_at_most_the_limit() {
    const MAX: usize = 8;
    const STARTS: usize = 2000;
    let lab = Lab::start(MAX as u32).await.unwrap();
    let ids: Vec<String> = (0..STARTS).map(|_| session_id()).collect();
    for id in &ids {
        lab.cp.send(Frame::StartSession(lab.bundle(PLAIN, id))).await.unwrap();
    }
    let (ready, refused) = wait_until("every start to be answered", DEADLINE, || async {
        let ready: Vec<&String> = ids.iter().filter(|id| lab.cp.is_ready(id)).collect();
        let refused: Vec<&String> = ids.iter().filter(|id| lab.cp.failure(id).is_some()).collect();
        (ready.len() + refused.len() == STARTS).then_some((ready, refused))
    })
    .await
    .unwrap();
    // The normal session holds one place.
    assert_eq!(ready.len(), MAX - 1, "sessions started");
    assert_eq!(refused.len(), STARTS - (MAX - 1));
    for id in &refused {
        let error = lab.cp.failure(id).unwrap();
        assert_eq!(error.code, "session_limit", "{error:?}");
        assert!(error.message.contains(&format!("--max-sessions {MAX}")), "{error:?}");
        let events = lab.cp.events(id);
        assert!(
            events
                .iter()
                .any(|e| matches!(&e.kind, Some(pb::session_event::Kind::Error(logged)) if *logged == error)),
            "no error event for {id}: {events:?}"
        );
        assert!(!lab.session_dir(id).exists());
    }
    // Nothing was spawned for them: one folder and at most one child per
    // held session.
    let sessions = lab.daemon.data_dir.path().join("sessions");
    assert_eq!(std::fs::read_dir(&sessions).unwrap().count(), MAX);
    assert!(children_in(&sessions) <= MAX, "{} children", children_in(&sessions));
    lab.assert_unharmed("thousands of starts").await.unwrap();

    // Room again once sessions are disposed of.
    let ready: Vec<String> = ready.into_iter().cloned().collect();
    lab.dispose(&ready).await.unwrap();
    let again = session_id();
    lab.run(
        Attack::new("a start after the flood")
            .start(lab.bundle(PLAIN, &again))
            .ready(&again)
            .turn(&again, "cat AGENTS.md", AGENTS_MD),
    )
    .await
    .unwrap();
}

/// Processes whose working directory is inside `dir`.
fn children_in(dir: &std::path::Path) -> usize {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
                .filter(|e| std::fs::read_link(e.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(dir)))
                .count()
        })
        .unwrap_or(0)
}

/// The owner's policy for the MCP and credential attacks: one local MCP
/// server, one allowed URL prefix, and credentials accepted for `plain`
/// (so the fixed allow-list and the owner's own variables are what stop
/// the rest).
fn owner_policy() -> String {
    format!(
        "accept_credentials_for = [\"{PLAIN}\"]\n\
         mcp_url_allow_list = [\"https://mcp.example.com/tools\"]\n\n\
         [[mcp_server]]\nid = \"fs\"\nname = \"Files\"\ncommand = \"{}\"\nargs = [\"--root\", \"/srv\"]\n",
        oma_integration_tests::bin("oma-test-agent").display()
    )
}

fn local(name: &str, id: &str) -> pb::McpServer {
    pb::McpServer {
        name: name.into(),
        transport: Some(pb::mcp_server::Transport::Local(pb::McpLocal { server_id: id.into() })),
    }
}

fn http(name: &str, url: &str, sse: bool) -> pb::McpServer {
    let http = pb::McpHttp {
        url: url.into(),
        headers: vec![pb::NameValue {
            name: "authorization".into(),
            value: "Bearer stolen".into(),
        }],
    };
    pb::McpServer {
        name: name.into(),
        transport: Some(match sse {
            true => pb::mcp_server::Transport::Sse(http),
            false => pb::mcp_server::Transport::Http(http),
        }),
    }
}

/// A protobuf field: key, then a length-delimited value.
fn field(number: u32, bytes: &[u8]) -> Vec<u8> {
    use prost::encoding::{WireType, encode_key, encode_varint};
    let mut out = Vec::new();
    encode_key(number, WireType::LengthDelimited, &mut out);
    encode_varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

/// The MCP servers and environment a hostile control plane names: nothing
/// runs but what the owner's policy defines, no URL outside its allow-list
/// is handed on, and no variable outside the fixed list (or one the owner
/// set) reaches the child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_commands_urls_and_environment_never_reach_the_child() {
    use prost::Message as _;
    let lab = Lab::start_with_policy(64, Some(&owner_policy())).await.unwrap();
    let canary = lab.canary.command.display().to_string();

    // A command line in the fields the contract had before it stopped
    // carrying them: McpServer's `stdio` (field 2, reserved now) and
    // StartSession's `mcp_servers_json` (field 7, reserved now). An old or
    // hostile server can still put those bytes on the wire.
    let legacy_stdio = [
        field(1, canary.as_bytes()),
        field(2, b"--evil"),
        field(3, &[field(1, b"LD_PRELOAD"), field(2, canary.as_bytes())].concat()),
    ]
    .concat();
    let mut smuggled = vec![];
    let json_only = session_id();
    let stdio_entry = session_id();
    for (id, servers) in [
        (&json_only, Vec::new()),
        (&stdio_entry, [field(1, b"evil"), field(2, &legacy_stdio)].concat()),
    ] {
        let mut start = lab.bundle(PLAIN, id).encode_to_vec();
        let json = format!(r#"[{{"name":"evil","command":"{canary}","args":[],"env":[]}}]"#);
        start.extend(field(7, json.as_bytes()));
        if !servers.is_empty() {
            start.extend(field(10, &servers));
        }
        smuggled.push(Outbound::Raw(field(2, &start)));
    }
    let mut attack = Attack::new("a command line in the contract's retired MCP fields");
    for frame in smuggled {
        attack = attack.send(frame);
    }
    lab.run(
        attack
            .ready(&json_only)
            .turn(&json_only, "mcp-servers", "mcp servers: []")
            .failed(&stdio_entry, "mcp_server_invalid", "local reference or an http/sse URL"),
    )
    .await
    .unwrap();
    lab.dispose(&[json_only]).await.unwrap();

    // Local references: only what the policy defines, by exact id.
    let mut attack = Attack::new("local MCP references the policy does not define");
    for id in ["../canary", "fs/../../x", "FS", "fs ", "", "fs\0", &canary] {
        let sid = session_id();
        let mut start = lab.bundle(PLAIN, &sid);
        start.mcp_servers = vec![local("x", id)];
        let code = if id.is_empty() || id.contains(['/', ' ', '\0']) {
            "mcp_server_invalid"
        } else {
            "mcp_local_unknown"
        };
        attack = attack.start(start).failed(&sid, code, "");
    }
    // The one the policy defines runs with the owner's command, not the
    // server's: the child is handed the policy's command line.
    let defined = session_id();
    let mut start = lab.bundle(PLAIN, &defined);
    start.mcp_servers = vec![local("files", "fs")];
    attack = attack
        .start(start)
        .ready(&defined)
        .turn(&defined, "mcp-servers", "\"args\":[\"--root\",\"/srv\"]");
    lab.run(attack).await.unwrap();

    // URLs: the allow-list is scheme, host, port and a path prefix on a
    // segment boundary; userinfo and encoded separators never match.
    let mut attack = Attack::new("MCP URLs outside the owner's allow-list");
    const NOT_ALLOWED: &str = "mcp_url_not_allowed";
    const INVALID: &str = "mcp_server_invalid";
    for (url, sse, code) in [
        ("https://evil.example/tools", false, NOT_ALLOWED),
        ("http://mcp.example.com/tools", false, NOT_ALLOWED),
        ("https://mcp.example.com:8443/tools", false, NOT_ALLOWED),
        ("https://mcp.example.com.evil.example/tools", true, NOT_ALLOWED),
        ("https://mcp.example.com/toolsmith", true, NOT_ALLOWED),
        // Resolved to /admin before it is matched.
        ("https://mcp.example.com/tools/../admin", false, NOT_ALLOWED),
        ("https://mcp.example.com@evil.example/tools", false, INVALID),
        ("https://evil.example@mcp.example.com/tools", false, INVALID),
        // WHATWG parsing takes %2e%2e for `..` and resolves it too.
        ("https://mcp.example.com/tools/%2e%2e/admin", false, NOT_ALLOWED),
        // An encoded separator is refused: servers decode it differently.
        ("https://mcp.example.com/tools/..%2fadmin", false, INVALID),
        ("file:///etc/passwd", false, INVALID),
    ] {
        let sid = session_id();
        let mut start = lab.bundle(PLAIN, &sid);
        start.mcp_servers = vec![http("remote", url, sse)];
        attack = attack.start(start).failed(&sid, code, "refused");
    }
    let allowed = session_id();
    let mut start = lab.bundle(PLAIN, &allowed);
    start.mcp_servers = vec![http("remote", "https://mcp.example.com/tools/search", false)];
    attack = attack
        .start(start)
        .ready(&allowed)
        .turn(&allowed, "mcp-servers", "https://mcp.example.com/tools/search");
    lab.run(attack).await.unwrap();

    // Environment: only model API keys, never a loader, interpreter or
    // PATH override, never a base URL (the policy does not allow them),
    // never one the owner set, and only for agents the owner opted in.
    let env = session_id();
    let mut start = lab.bundle(PLAIN, &env);
    for (name, value) in [
        ("LD_PRELOAD", canary.as_str()),
        ("NODE_OPTIONS", "--require /tmp/evil.js"),
        ("PATH", "/tmp/evil"),
        ("HOME", "/tmp/evil"),
        ("ANTHROPIC_BASE_URL", "https://evil.example"),
        ("ANTHROPIC_API_KEY", "sk-from-server"),
    ] {
        start.credentials.insert(name.into(), value.into());
    }
    let not_opted_in = session_id();
    let mut other = lab.bundle(CLAUDISH, &not_opted_in);
    other
        .credentials
        .insert("ANTHROPIC_API_KEY".into(), "sk-from-server".into());
    lab.run(
        Attack::new("server-sent environment")
            .start(start)
            .ready(&env)
            .errored(&env, "credential_not_allowed", "LD_PRELOAD")
            .errored(&env, "credential_not_allowed", "NODE_OPTIONS")
            .errored(&env, "credential_not_allowed", "PATH")
            .errored(&env, "credential_not_allowed", "HOME")
            .errored(&env, "credential_base_url_not_allowed", "ANTHROPIC_BASE_URL")
            .turn(&env, "env LD_PRELOAD", "env LD_PRELOAD unset")
            .turn(&env, "env NODE_OPTIONS", "env NODE_OPTIONS unset")
            .turn(&env, "env HOME", &format!("env HOME={}", lab.canary.home.display()))
            .turn(&env, "env ANTHROPIC_BASE_URL", "env ANTHROPIC_BASE_URL unset")
            // Taken (the child has it), and masked in the events that echo it.
            .turn(
                &env,
                "env ANTHROPIC_API_KEY",
                "env ANTHROPIC_API_KEY=[masked:ANTHROPIC_API_KEY]",
            )
            .start(other)
            .ready(&not_opted_in)
            .errored(&not_opted_in, "credentials_not_accepted", "ANTHROPIC_API_KEY")
            .turn(&not_opted_in, "env ANTHROPIC_API_KEY", "env ANTHROPIC_API_KEY unset"),
    )
    .await
    .unwrap();
    assert!(!lab.canary.marker.exists(), "the canary command ran");
}
