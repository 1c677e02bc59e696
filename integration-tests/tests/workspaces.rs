//! Sessions on real code: a git repository made by the test is offered as a
//! workspace in the daemon's `workspaces.toml`; sessions work in worktrees
//! of their own (or, in direct mode, in a folder), through the real
//! binaries and the scripted agent.

use std::path::PathBuf;
use std::time::Duration;

use oma_integration_tests::world::{World, agent_text, turn_end};
use oma_integration_tests::{Bearer, Clients, Omactl, bin, git, git_repo, wait_until};
use oma_proto::pb;
use pb::session_event::Kind;
use tempfile::TempDir;

const DEADLINE: Duration = Duration::from_secs(30);

/// The folders a test offers: `web` (a git repository with one commit on
/// `main` and a credentialed remote), `notes` (a plain folder) and
/// `scratch` (a plain folder the test may delete).
struct Folders {
    root: TempDir,
}

impl Folders {
    fn new() -> Folders {
        let root = tempfile::tempdir().unwrap();
        let web = root.path().join("web");
        git_repo(&web);
        std::fs::write(web.join(".gitignore"), "target/\n").unwrap();
        git(&web, &["add", "."]);
        git(&web, &["commit", "--quiet", "-m", "ignore build output"]);
        git(
            &web,
            &[
                "remote",
                "add",
                "origin",
                "https://bot:ghp_secret@example.com/acme/web.git",
            ],
        );
        for plain in ["notes", "scratch"] {
            std::fs::create_dir_all(root.path().join(plain)).unwrap();
        }
        std::fs::create_dir_all(root.path().join("agent-state")).unwrap();
        Folders { root }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    fn workspaces_toml(&self) -> String {
        ["web", "notes", "scratch"]
            .iter()
            .map(|id| format!("[[workspace]]\nid = \"{id}\"\npath = \"{}\"\n", self.path(id).display()))
            .collect()
    }

    /// The scripted agent, keeping its transcripts outside the workspaces
    /// (as a real agent keeps them in its home).
    fn agents_toml(&self) -> String {
        format!(
            "[[agent]]\nid = \"test\"\nname = \"Scripted test agent\"\ncommand = \"{}\"\nenv = {{ OMA_TEST_AGENT_STATE_DIR = \"{}\" }}\n",
            bin("oma-test-agent").display(),
            self.path("agent-state").display()
        )
    }
}

async fn world(folders: &Folders) -> World {
    let workspaces = folders.workspaces_toml();
    World::builder()
        .agents_toml(folders.agents_toml())
        .system_prompt("You are a test.")
        .logs_to_files()
        .prepare(move |machine| {
            std::fs::write(machine.config_dir.path().join("workspaces.toml"), workspaces).unwrap();
        })
        .start()
        .await
        .unwrap()
}

fn workspace(id: &str) -> pb::SessionWorkspace {
    pb::SessionWorkspace {
        workspace_id: id.into(),
        ..Default::default()
    }
}

async fn create(w: &World, ws: pb::SessionWorkspace) -> Result<String, tonic::Status> {
    w.clients
        .sessions
        .clone()
        .create_session(pb::CreateSessionRequest {
            agent_id: w.agent_id.clone(),
            title: String::new(),
            workspace: Some(ws),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().session.unwrap().id)
}

fn changes(events: &[pb::SessionEvent]) -> pb::WorkspaceChanges {
    events
        .iter()
        .find_map(|e| match &e.kind {
            Some(Kind::WorkspaceChanges(c)) => Some(c.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no workspace changes in {events:#?}"))
}

async fn diff(w: &World, session_id: &str) -> Result<String, tonic::Status> {
    let mut stream = w
        .clients
        .sessions
        .clone()
        .get_session_diff(pb::GetSessionDiffRequest {
            session_id: session_id.into(),
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(piece) = stream.message().await? {
        out.extend_from_slice(&piece.chunk);
    }
    Ok(String::from_utf8(out).unwrap())
}

fn worktree(w: &World, session_id: &str) -> PathBuf {
    w.machine
        .data_dir
        .path()
        .join("worktrees")
        .join(session_id)
        .canonicalize()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_sessions_on_one_repository_work_in_worktrees_of_their_own() {
    let folders = Folders::new();
    let mut w = world(&folders).await;
    let repo = folders.path("web");

    // The manifest reports the workspaces, the remote without its token.
    let runtime = w.runtime.clone().unwrap();
    let reported = &runtime.manifest.as_ref().unwrap().workspaces;
    let web = reported.iter().find(|ws| ws.id == "web").unwrap();
    assert!(web.is_git && !web.direct_allowed, "{web:?}");
    assert_eq!(
        (web.current_branch.as_str(), web.default_branch.as_str()),
        ("main", "main")
    );
    assert_eq!(web.remote_url, "https://example.com/acme/web.git");
    let notes = reported.iter().find(|ws| ws.id == "notes").unwrap();
    assert!(!notes.is_git && notes.direct_allowed, "{notes:?}");
    let manifest_text = format!("{runtime:?}");
    assert!(
        !manifest_text.contains(&*folders.root.path().to_string_lossy()),
        "a path left the machine"
    );

    let one = create(&w, workspace("web")).await.unwrap();
    let two = create(
        &w,
        pb::SessionWorkspace {
            branch: "fix/flaky-test".into(),
            ..workspace("web")
        },
    )
    .await
    .unwrap();
    let session = w.get_session(&one).await;
    let ws = session.workspace.unwrap();
    assert_eq!(ws.mode, pb::WorkspaceMode::Worktree as i32);
    assert_eq!(ws.branch, format!("oma/{}", &one[4..16]));

    let (first, second) = tokio::join!(
        w.run_turn(&one, "write src/a.txt from one\ncwd"),
        w.run_turn(&two, "write b.txt from two")
    );
    assert_eq!(turn_end(&first).stop_reason, pb::StopReason::EndTurn as i32);
    assert!(
        agent_text(&first).contains(&format!("cwd {}", worktree(&w, &one).display())),
        "{}",
        agent_text(&first)
    );

    // Each turn's changes come before its end, counted against the base.
    let counted = changes(&first);
    assert_eq!(counted.base_commit, git(&repo, &["rev-parse", "HEAD"]));
    assert_eq!(
        (counted.files_changed, counted.insertions, counted.deletions),
        (1, 1, 0)
    );
    assert_eq!(counted.files[0].path, "src/a.txt");
    assert_eq!(counted.files[0].status, "added");
    let ends_after = first
        .iter()
        .position(|e| matches!(e.kind, Some(Kind::WorkspaceChanges(_))))
        < first.iter().position(|e| matches!(e.kind, Some(Kind::TurnEnded(_))));
    assert!(ends_after, "the changes come before the turn's end");
    assert_eq!(changes(&second).files[0].path, "b.txt");

    // Each worktree holds only its own change; the owner's checkout is
    // untouched and clean; both branches exist.
    let (wt_one, wt_two) = (worktree(&w, &one), worktree(&w, &two));
    assert!(wt_one.join("src/a.txt").exists() && !wt_one.join("b.txt").exists());
    assert!(wt_two.join("b.txt").exists() && !wt_two.join("src/a.txt").exists());
    assert_eq!(git(&repo, &["status", "--porcelain"]), "");
    assert!(!repo.join("b.txt").exists() && !repo.join("src").exists());
    assert_eq!(git(&repo, &["rev-parse", "--abbrev-ref", "HEAD"]), "main");
    let branches = git(&repo, &["branch", "--list", "--format=%(refname:short)"]);
    assert!(
        branches.contains(&ws.branch) && branches.contains("fix/flaky-test"),
        "{branches}"
    );

    // The product's own files never show in the worktree: only the agent's edit.
    assert_eq!(
        git(&wt_one, &["status", "--porcelain", "--untracked-files=all"]),
        "?? src/a.txt"
    );
    // ... and the instructions reached the agent with its first prompt.
    let said = agent_text(&w.run_turn(&one, "instructions").await);
    assert!(
        said.contains(oma_proto::workspace::INSTRUCTIONS_HEADER) && said.contains("You are a test."),
        "{said}"
    );
    assert_eq!(
        git(&wt_one, &["status", "--porcelain", "--untracked-files=all"]),
        "?? src/a.txt"
    );

    // The full diff on demand: exactly the agent's edit.
    let patch = diff(&w, &one).await.unwrap();
    assert!(
        patch.contains("+++ b/src/a.txt") && patch.contains("+from one"),
        "{patch}"
    );
    assert!(!patch.contains("b.txt\n") && !patch.contains("AGENTS"), "{patch}");

    // A daemon restart resumes in the same worktree, the edit still there.
    w.machine.restart().unwrap();
    w.wait_online().await.unwrap();
    let after = agent_text(&w.run_turn(&one, "cwd\ncat src/a.txt").await);
    assert!(
        after.contains(&format!("cwd {}", wt_one.display())) && after.contains("from one"),
        "{after}"
    );

    // Dispose removes the worktree and keeps the branch (or deletes it when asked).
    w.clients
        .sessions
        .clone()
        .delete_session(pb::DeleteSessionRequest {
            session_id: one.clone(),
            delete_branch: false,
        })
        .await
        .unwrap();
    w.clients
        .sessions
        .clone()
        .delete_session(pb::DeleteSessionRequest {
            session_id: two.clone(),
            delete_branch: true,
        })
        .await
        .unwrap();
    wait_until("both worktrees to be removed", DEADLINE, || async {
        (!wt_one.exists() && !wt_two.exists()).then_some(())
    })
    .await
    .unwrap();
    wait_until("the second branch to be deleted", DEADLINE, || async {
        (!git(&repo, &["branch", "--list", "--format=%(refname:short)"]).contains("fix/flaky-test")).then_some(())
    })
    .await
    .unwrap();
    let branches = git(&repo, &["branch", "--list", "--format=%(refname:short)"]);
    assert!(branches.contains(&ws.branch), "{branches}");
    assert_eq!(
        git(&repo, &["worktree", "list", "--porcelain"])
            .matches("worktree ")
            .count(),
        1
    );
    assert_eq!(git(&repo, &["status", "--porcelain"]), "");
    w.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_workspace_requests_get_clear_errors_and_touch_nothing() {
    let folders = Folders::new();
    let w = world(&folders).await;
    let repo = folders.path("web");
    let branches_before = git(&repo, &["branch", "--list"]);

    let unknown = create(&w, workspace("api")).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::InvalidArgument);
    assert!(
        unknown.message().contains("web, notes, scratch"),
        "{}",
        unknown.message()
    );
    for branch in ["a..b", "-x", "--upload-pack=evil"] {
        let refused = create(
            &w,
            pb::SessionWorkspace {
                branch: branch.into(),
                ..workspace("web")
            },
        )
        .await
        .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{branch}");
        assert!(refused.message().contains("workspace.branch"), "{}", refused.message());
    }
    let direct_on_git = create(
        &w,
        pb::SessionWorkspace {
            mode: pb::WorkspaceMode::Direct as i32,
            ..workspace("web")
        },
    )
    .await
    .unwrap_err();
    assert_eq!(direct_on_git.code(), tonic::Code::FailedPrecondition);
    let worktree_on_folder = create(
        &w,
        pb::SessionWorkspace {
            mode: pb::WorkspaceMode::Worktree as i32,
            ..workspace("notes")
        },
    )
    .await
    .unwrap_err();
    assert_eq!(worktree_on_folder.code(), tonic::Code::InvalidArgument);

    // A base ref the repository does not have: the machine says so.
    let no_base = create(
        &w,
        pb::SessionWorkspace {
            base_ref: "no-such-branch".into(),
            ..workspace("web")
        },
    )
    .await
    .unwrap();
    let error = wait_until("the start's error", DEADLINE, || async {
        w.read_log(&no_base, DEADLINE).await.iter().find_map(|e| match &e.kind {
            Some(Kind::Error(err)) => Some(err.clone()),
            _ => None,
        })
    })
    .await
    .unwrap();
    assert_eq!(error.code, "workspace_base_not_found", "{error:?}");
    assert!(error.message.contains("no-such-branch"), "{error:?}");

    // Direct mode: one live session per workspace, the second names the first.
    let holder = create(&w, workspace("notes")).await.unwrap();
    let second = create(&w, workspace("notes")).await.unwrap_err();
    assert_eq!(second.code(), tonic::Code::FailedPrecondition);
    assert!(second.message().contains(&holder), "{}", second.message());
    let wrote = agent_text(&w.run_turn(&holder, "write todo.txt buy milk\ncwd").await);
    let notes = folders.path("notes").canonicalize().unwrap();
    assert!(wrote.contains(&format!("cwd {}", notes.display())), "{wrote}");
    assert_eq!(std::fs::read_to_string(notes.join("todo.txt")).unwrap(), "buy milk\n");
    // A folder that is not git has no diff.
    let no_diff = diff(&w, &holder).await.unwrap_err();
    assert_eq!(no_diff.code(), tonic::Code::FailedPrecondition);

    // The folder deleted under a live session: the next turn says so.
    let scratch = create(&w, workspace("scratch")).await.unwrap();
    w.run_turn(&scratch, "echo ok").await;
    std::fs::remove_dir_all(folders.path("scratch")).unwrap();
    let end = turn_end(&w.run_turn(&scratch, "write x.txt y").await);
    assert_eq!(end.stop_reason, pb::StopReason::Error as i32);
    assert!(end.error.contains("workspace_missing"), "{end:?}");
    assert!(!folders.path("scratch").exists(), "nothing was recreated");

    // Nothing outside the workspaces was touched.
    assert_eq!(git(&repo, &["status", "--porcelain"]), "");
    assert_eq!(git(&repo, &["branch", "--list"]), branches_before);
    let worktrees = w.machine.data_dir.path().join("worktrees");
    let made = std::fs::read_dir(&worktrees).map(|d| d.count()).unwrap_or(0);
    assert_eq!(made, 0, "no worktree was created");
    w.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread")]
async fn workspaces_toml_edits_reach_the_manifest_without_a_restart() {
    let folders = Folders::new();
    let w = world(&folders).await;
    let pid = w.machine.pid();
    let manifest = || async { w.clients.get_runtime(&w.machine.runtime_id).await.ok()?.manifest };
    // A new workspace is offered, and a deleted folder is reported as such.
    let extra = folders.path("extra");
    std::fs::create_dir_all(&extra).unwrap();
    let toml = format!(
        "{}[[workspace]]\nid = \"extra\"\npath = \"{}\"\n",
        folders.workspaces_toml(),
        extra.display()
    );
    std::fs::write(w.machine.config_dir.path().join("workspaces.toml"), toml).unwrap();
    std::fs::remove_dir_all(folders.path("scratch")).unwrap();
    let reported = wait_until("the edited workspaces in the manifest", DEADLINE, || async {
        let m = manifest().await?;
        let extra = m.workspaces.iter().any(|ws| ws.id == "extra");
        let gone = m.workspaces.iter().find(|ws| ws.id == "scratch")?;
        (extra && !gone.problem.is_empty()).then_some(m)
    })
    .await
    .unwrap();
    let scratch = reported.workspaces.iter().find(|ws| ws.id == "scratch").unwrap();
    assert!(scratch.problem.contains("does not exist"), "{scratch:?}");
    // The control plane takes the new one and refuses the broken one.
    create(&w, workspace("extra")).await.unwrap();
    let refused = create(&w, workspace("scratch")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains("does not exist"), "{}", refused.message());
    assert_eq!(w.machine.pid(), pid, "no restart");
    w.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread")]
async fn diffs_and_switches_are_only_for_those_who_may() {
    let folders = Folders::new();
    let w = world(&folders).await;
    let session = create(&w, workspace("web")).await.unwrap();
    let counted = w.run_turn(&session, "write secret.txt the code").await;
    assert_eq!(changes(&counted).files_changed, 1);

    let channel = w.cp.channel().await.unwrap();
    let mut admin = Clients::new(channel.clone(), Bearer::new(&w.cp.admin_token));
    let (_, token) = admin.new_user("mia", pb::Role::Member).await.unwrap();
    let token = token.secret;
    let other_tenant = w.cp.create_tenant("beta").unwrap();
    for (who, clients, code) in [
        (
            "a member who neither created the session nor owns the machine",
            Clients::new(channel.clone(), Bearer::new(&token)),
            tonic::Code::PermissionDenied,
        ),
        (
            "another tenant's admin",
            Clients::new(channel.clone(), Bearer::new(&other_tenant)),
            tonic::Code::NotFound,
        ),
    ] {
        let diff = clients
            .sessions
            .clone()
            .get_session_diff(pb::GetSessionDiffRequest {
                session_id: session.clone(),
            })
            .await;
        let refused = match diff {
            Err(status) => status,
            Ok(stream) => {
                let mut stream = stream.into_inner();
                let first = stream.message().await;
                panic!("{who} got a diff stream: {first:?}");
            }
        };
        assert_eq!(refused.code(), code, "{who}: {refused:?}");
        let switch = clients
            .sessions
            .clone()
            .set_session_options(pb::SetSessionOptionsRequest {
                session_id: session.clone(),
                mode_id: "yolo".into(),
                model_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(switch.code(), code, "{who}: {switch:?}");
    }
    // The agent's mode is as it was.
    assert!(agent_text(&w.run_turn(&session, "options").await).contains("mode default"));
    w.assert_no_panic();
}

/// The same through the real `omactl`: create on a workspace with a mode,
/// see options and workspace in `sessions get`, switch, diff, delete.
#[tokio::test(flavor = "multi_thread")]
async fn omactl_drives_workspaces_modes_and_diffs() {
    let folders = Folders::new();
    let w = world(&folders).await;
    let cli = Omactl::new(&w.cp.url(), &w.cp.admin_token).unwrap();
    let runtime = cli.json(&["runtimes", "get", &w.machine.runtime_id]).unwrap();
    let ids: Vec<&str> = runtime["manifest"]["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|ws| ws["id"].as_str())
        .collect();
    assert_eq!(ids, ["web", "notes", "scratch"], "{runtime}");
    let created = cli
        .json(&[
            "sessions",
            "create",
            "--agent",
            &w.agent_id,
            "--workspace",
            "web",
            "--branch",
            "cli/work",
            "--mode",
            "plan",
        ])
        .unwrap();
    let session = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["workspace"]["branch"], "cli/work", "{created}");
    assert_eq!(created["requested_mode_id"], "plan", "{created}");
    w.run_turn(&session, "write docs/cli.md made by the cli test").await;
    let got = wait_until("the options in sessions get", DEADLINE, || async {
        let got = cli.json(&["sessions", "get", &session]).ok()?;
        (got["options"]["mode_id"] == "plan").then_some(got)
    })
    .await
    .unwrap();
    assert_eq!(got["options"]["models"][1]["id"], "large", "{got}");
    cli.json(&["sessions", "set", &session, "--model", "large"]).unwrap();
    wait_until("the model switch", DEADLINE, || async {
        let got = cli.json(&["sessions", "get", &session]).ok()?;
        (got["options"]["model_id"] == "large").then_some(())
    })
    .await
    .unwrap();
    let refused = cli.run(&["sessions", "set", &session, "--mode", "nope"]).unwrap();
    assert_eq!(refused.status.code(), Some(6), "invalid input exits 6");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("valid: default, plan, yolo"));
    let diff = cli.run(&["sessions", "diff", &session]).unwrap();
    assert!(diff.status.success(), "{}", String::from_utf8_lossy(&diff.stderr));
    let patch = String::from_utf8_lossy(&diff.stdout);
    assert!(
        patch.contains("+++ b/docs/cli.md") && patch.contains("+made by the cli test"),
        "{patch}"
    );
    cli.json(&["sessions", "delete", &session, "--delete-branch"]).unwrap();
    let repo = folders.path("web");
    wait_until("the branch to be deleted", DEADLINE, || async {
        (!git(&repo, &["branch", "--list", "cli/work"]).contains("cli/work")).then_some(())
    })
    .await
    .unwrap();
    w.assert_no_panic();
}
