//! Opt-in: permission policy `ask` with REAL opencode, Codex and Gemini CLI
//! ACP agents from the npm registry, pointed at fake model APIs on 127.0.0.1
//! (`oma_integration_tests::fake_openai` for opencode and Codex,
//! `fake_gemini` for Gemini; no account, no model traffic). The fake model
//! asks the agent to write a file; with the policy `ask` the agent must ask
//! first (the daemon makes it: opencode through `OPENCODE_PERMISSION` in its
//! environment, Codex by switching its session to the `read-only` mode;
//! Gemini asks on its own), a denial leaves no file, and an approval writes
//! it. Controls show the asking is the daemon's doing: opencode with
//! `ask = "none"` and Codex in its `auto` mode write unasked. (Claude's
//! adapters are in `real_agents.rs`.)
//!
//! Runs only with `OMA_TEST_REAL_AGENTS=1`:
//!
//! ```sh
//! OMA_TEST_REAL_AGENTS=1 cargo test -p oma-integration-tests --test real_agents_ask -- --nocapture
//! ```
//!
//! `opencode-ai`, `@zed-industries/codex-acp` and `@google/gemini-cli` are
//! installed with `npm install` into `<cargo target dir>/real-agents/`
//! (pinned versions; `OMA_TEST_OPENCODE_VERSION`, `OMA_TEST_CODEX_ACP_VERSION`
//! and `OMA_TEST_GEMINI_CLI_VERSION` pick others). On Linux, Codex's sandbox
//! needs `bubblewrap`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use oma_integration_tests::fake_gemini::FakeGemini;
use oma_integration_tests::fake_openai::{self, FakeOpenAi};
use oma_integration_tests::real_agents::{Diagnostics, StopGracefully, enabled, install_dir, installed, log, toml_str};
use oma_integration_tests::world::{World, agent_text, option, reject, update_kinds};
use oma_integration_tests::{git, git_repo};
use oma_proto::pb;

/// The fake model endpoint an agent talks to.
enum Fake {
    OpenAi(FakeOpenAi),
    Gemini(FakeGemini),
}

impl Fake {
    async fn start(agent: &Agent) -> Fake {
        match agent.id {
            "gemini" => Fake::Gemini(FakeGemini::start().await.unwrap()),
            _ => Fake::OpenAi(FakeOpenAi::start().await.unwrap()),
        }
    }

    fn base_url(&self) -> String {
        match self {
            Fake::OpenAi(fake) => fake.base_url(),
            Fake::Gemini(fake) => fake.base_url(),
        }
    }

    fn summary(&self) -> String {
        match self {
            Fake::OpenAi(fake) => fake.summary(),
            Fake::Gemini(fake) => fake.summary(),
        }
    }
}

const TURN: Duration = Duration::from_secs(120);

/// One ACP agent on the fake OpenAI API.
struct Agent {
    /// The built-in id the daemon knows it by.
    id: &'static str,
    package: &'static str,
    version: &'static str,
    version_var: &'static str,
    /// The executable inside `node_modules`.
    bin: &'static str,
    args: &'static [&'static str],
    /// How the manifest must say the daemon makes it ask.
    ask: (pb::AskSupport, &'static str),
}

const OPENCODE: Agent = Agent {
    id: "opencode",
    package: "opencode-ai",
    version: "1.18.33",
    version_var: "OMA_TEST_OPENCODE_VERSION",
    bin: ".bin/opencode",
    args: &["acp"],
    ask: (pb::AskSupport::AgentConfig, ""),
};

const CODEX: Agent = Agent {
    id: "codex",
    package: "@zed-industries/codex-acp",
    version: "0.16.0",
    version_var: "OMA_TEST_CODEX_ACP_VERSION",
    bin: ".bin/codex-acp",
    args: &[],
    ask: (pb::AskSupport::AcpMode, "read-only"),
};

const GEMINI: Agent = Agent {
    id: "gemini",
    package: "@google/gemini-cli",
    version: "0.61.0",
    version_var: "OMA_TEST_GEMINI_CLI_VERSION",
    bin: ".bin/gemini",
    args: &["--experimental-acp", "-m", "gemini-2.5-flash"],
    ask: (pb::AskSupport::Native, ""),
};

#[tokio::test(flavor = "multi_thread")]
async fn gemini_asks_before_it_writes() {
    if enabled() {
        ask_scenario(&GEMINI).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn opencode_asks_before_it_writes() {
    if enabled() {
        ask_scenario(&OPENCODE).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_asks_before_it_writes() {
    if enabled() {
        ask_scenario(&CODEX).await;
    }
}

/// A private HOME for the agent, outside /tmp: Codex refuses to put the
/// helper its sandbox runs (`codex-linux-sandbox`) under a temporary folder.
fn agent_home() -> tempfile::TempDir {
    let homes = install_dir("homes", "").with_file_name("homes");
    std::fs::create_dir_all(&homes).unwrap();
    tempfile::Builder::new().prefix("home-").tempdir_in(homes).unwrap()
}

/// The agent's environment: a private HOME, and the fake as its model.
fn agent_env(agent: &Agent, fake: &Fake, home: &Path) -> Vec<(&'static str, String)> {
    let home_str = home.to_string_lossy().into_owned();
    let mut env = vec![
        ("HOME", home_str.clone()),
        ("XDG_CONFIG_HOME", format!("{home_str}/.config")),
        ("XDG_DATA_HOME", format!("{home_str}/.local/share")),
        ("XDG_CACHE_HOME", format!("{home_str}/.cache")),
        ("XDG_STATE_HOME", format!("{home_str}/.local/state")),
        ("NO_PROXY", "127.0.0.1,localhost".to_owned()),
        ("FAKE_OPENAI_API_KEY", "sk-fake".to_owned()),
    ];
    match agent.id {
        "opencode" => {
            let config = serde_json::json!({
                "$schema": "https://opencode.ai/config.json",
                "autoupdate": false,
                "share": "disabled",
                "model": format!("fake/{}", fake_openai::MODEL),
                "small_model": format!("fake/{}", fake_openai::MODEL),
                "provider": {"fake": {
                    "npm": "@ai-sdk/openai-compatible",
                    "name": "Fake OpenAI",
                    "options": {"baseURL": fake.base_url(), "apiKey": "sk-fake"},
                    "models": {fake_openai::MODEL: {"name": "Fake GPT", "tool_call": true}},
                }},
            });
            env.extend([
                ("OPENCODE_CONFIG_CONTENT", config.to_string()),
                ("OPENCODE_DISABLE_AUTOUPDATE", "1".to_owned()),
                ("OPENCODE_DISABLE_MODELS_FETCH", "1".to_owned()),
                ("OPENCODE_DISABLE_LSP_DOWNLOAD", "1".to_owned()),
                ("OPENCODE_DISABLE_DEFAULT_PLUGINS", "1".to_owned()),
                ("OPENCODE_DISABLE_SHARE", "1".to_owned()),
            ]);
        }
        "gemini" => env.extend([
            ("GEMINI_API_KEY", "fake-key".to_owned()),
            ("GOOGLE_GEMINI_BASE_URL", fake.base_url()),
            ("GEMINI_CLI_NO_RELAUNCH", "true".to_owned()),
        ]),
        _ => {
            // Codex reads its provider from CODEX_HOME/config.toml, written
            // by the test before the daemon starts.
            env.push(("CODEX_HOME", format!("{home_str}/.codex")));
        }
    }
    env
}

fn codex_config(fake: &Fake) -> String {
    format!(
        "model = \"{model}\"\nmodel_provider = \"fake\"\n\n[model_providers.fake]\nname = \"Fake OpenAI\"\nbase_url = {url}\nenv_key = \"FAKE_OPENAI_API_KEY\"\nwire_api = \"responses\"\n",
        model = fake_openai::MODEL,
        url = toml_str(&fake.base_url()),
    )
}

fn agents_toml(agent: &Agent, command: &Path, env: &[(&str, String)]) -> String {
    let env_toml: Vec<String> = env.iter().map(|(k, v)| format!("{k} = {}", toml_str(v))).collect();
    format!(
        "[[agent]]\nid = \"{}\"\ncommand = {}\nargs = [{}]\nenv = {{ {} }}\n",
        agent.id,
        toml_str(&command.to_string_lossy()),
        agent.args.iter().map(|a| toml_str(a)).collect::<Vec<_>>().join(", "),
        env_toml.join(", "),
    )
}

/// Control plane and oma-agent with `agents_toml`, the agent spec bound to
/// `agent` with `policy`, and a git repository at `repo` declared as the
/// workspace `web`.
async fn start_world(
    agent: &Agent,
    agents_toml: String,
    policy: pb::PermissionPolicy,
    repo: &Path,
    fake: &Fake,
) -> World {
    git_repo(repo);
    let workspaces = format!(
        "[[workspace]]\nid = \"web\"\npath = {}\n",
        toml_str(&repo.to_string_lossy())
    );
    World::builder()
        .agents_toml(agents_toml)
        .acp_agent(agent.id)
        .agent_name(&format!("real-{}", agent.id))
        .policy(policy)
        .turn_deadline(TURN)
        .prepare(move |machine| {
            std::fs::write(machine.config_dir.path().join("workspaces.toml"), workspaces).unwrap();
        })
        .start()
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n--- the fake model endpoint received:\n{}", fake.summary()))
}

/// A session of the world's agent in the workspace `web` (`mode_id` empty:
/// the daemon's choice); returns it with its worktree, after a first turn.
async fn session_in_worktree(world: &World, mode_id: &str) -> (String, std::path::PathBuf) {
    let session = world
        .clients
        .sessions
        .clone()
        .create_session(pb::CreateSessionRequest {
            agent_id: world.agent_id.clone(),
            workspace: Some(pb::SessionWorkspace {
                workspace_id: "web".into(),
                ..Default::default()
            }),
            mode_id: mode_id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap()
        .id;
    let events = world.run_turn(&session, "hello").await;
    assert!(
        agent_text(&events).contains("says: hello"),
        "{:?}",
        update_kinds(&events)
    );
    let worktree = world.machine.data_dir.path().join("worktrees").join(&session);
    (session, worktree.canonicalize().unwrap())
}

fn asked(events: &[pb::SessionEvent]) -> bool {
    events
        .iter()
        .any(|e| matches!(e.kind, Some(pb::session_event::Kind::PermissionRequested(_))))
}

/// Control plane + oma-agent + the real agent on the fake model, policy
/// `ask`, in a worktree: a write is asked for; denied, no file; approved,
/// the file.
async fn ask_scenario(agent: &Agent) {
    let label = agent.package;
    let start = Instant::now();
    let version = std::env::var(agent.version_var).unwrap_or_else(|_| agent.version.into());
    let command = installed(agent.package, &version, agent.bin).unwrap();
    if agent.id == "codex" && cfg!(target_os = "linux") {
        assert!(
            Command::new("bwrap")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
            "Codex's sandbox on Linux runs commands through bubblewrap: install it (apt-get install bubblewrap)"
        );
    }
    let fake = Fake::start(agent).await;
    let home = agent_home();
    let env = agent_env(agent, &fake, home.path());
    if agent.id == "codex" {
        std::fs::create_dir_all(home.path().join(".codex")).unwrap();
        std::fs::write(home.path().join(".codex/config.toml"), codex_config(&fake)).unwrap();
    }
    let repo_root = tempfile::tempdir().unwrap();
    let repo = repo_root.path().join("web");
    let mut world = start_world(
        agent,
        agents_toml(agent, &command, &env),
        pb::PermissionPolicy::Ask,
        &repo,
        &fake,
    )
    .await;
    let _daemon = StopGracefully(world.machine.process.take().expect("the daemon runs"));
    let _diagnostics = Diagnostics {
        fake_summary: || fake.summary(),
        logs: world.machine.data_dir.path().join("logs"),
    };
    let manifest = world.runtime.as_ref().unwrap().manifest.clone().unwrap();
    let entry = manifest
        .acp_agents
        .iter()
        .find(|a| a.id == agent.id)
        .expect("the agent in the manifest");
    assert_eq!(
        (entry.ask_support, entry.ask_mode_id.as_str()),
        (agent.ask.0 as i32, agent.ask.1),
        "{entry:?}"
    );

    let (session, worktree) = session_in_worktree(&world, "").await;
    log(label, start, "turn 1 done");
    if !agent.ask.1.is_empty() {
        let options = world.get_session(&session).await.options.expect("options recorded");
        assert_eq!(options.mode_id, agent.ask.1, "{options:?}");
    }

    // Denied: the agent asked, nothing was written.
    let denied = worktree.join("denied.txt");
    let turn = world
        .prompt(&session, &format!("write {} should never exist", denied.display()))
        .await;
    let request = world.next_permission(&turn).await;
    log(label, start, &format!("asked: {:?}", request.options));
    assert!(!denied.exists(), "written before anyone answered");
    world.answer(&session, &request.request_id, reject()).await.unwrap();
    let events = world.collect(&turn).await;
    log(label, start, &format!("denied turn: {:?}", update_kinds(&events)));
    assert!(!denied.exists(), "a denied write happened");

    // Approved: written, in the worktree only.
    let target = worktree.join("hello.txt");
    let turn = world
        .prompt(&session, &format!("write {} hello from {}", target.display(), agent.id))
        .await;
    let request = world.next_permission(&turn).await;
    assert!(!target.exists(), "written before anyone approved");
    let allow = request
        .options
        .iter()
        .find(|o| o.kind == pb::PermissionOptionKind::AllowOnce as i32)
        .expect("an allow_once option")
        .option_id
        .clone();
    world
        .answer(&session, &request.request_id, option(&allow))
        .await
        .unwrap();
    let events = world.collect(&turn).await;
    log(label, start, &format!("approved turn: {:?}", update_kinds(&events)));
    assert_eq!(
        std::fs::read_to_string(&target).unwrap_or_default(),
        format!("hello from {}\n", agent.id)
    );
    assert_eq!(git(&repo, &["status", "--porcelain", "--untracked-files=all"]), "");

    // The control: Codex in the mode its sessions would otherwise use
    // (`auto`: its sandbox lets it write in its folder) writes unasked, so
    // the asking above is the daemon's doing.
    if agent.id == "codex" {
        let (session, worktree) = session_in_worktree(&world, "auto").await;
        let unasked = worktree.join("unasked.txt");
        let events = world
            .run_turn(&session, &format!("write {} written unasked", unasked.display()))
            .await;
        log(label, start, &format!("auto-mode turn: {:?}", update_kinds(&events)));
        assert!(
            !asked(&events),
            "Codex asked in its auto mode: {:?}",
            update_kinds(&events)
        );
        assert_eq!(
            std::fs::read_to_string(&unasked).unwrap_or_default(),
            "written unasked\n"
        );
    }
    log(label, start, "done");
}

/// The control for opencode: without the daemon's setting (`ask = "none"`)
/// it writes without asking, so the asking above is the daemon's doing.
#[tokio::test(flavor = "multi_thread")]
async fn opencode_without_the_setting_writes_unasked() {
    if !enabled() {
        return;
    }
    let agent = &OPENCODE;
    let start = Instant::now();
    let command = installed(agent.package, agent.version, agent.bin).unwrap();
    let fake = Fake::start(agent).await;
    let home = agent_home();
    let env = agent_env(agent, &fake, home.path());
    let repo_root = tempfile::tempdir().unwrap();
    let agents = agents_toml(agent, &command, &env) + "ask = \"none\"\n";
    let mut world = start_world(
        agent,
        agents,
        pb::PermissionPolicy::AllowOnce,
        &repo_root.path().join("web"),
        &fake,
    )
    .await;
    let _daemon = StopGracefully(world.machine.process.take().expect("the daemon runs"));
    let _diagnostics = Diagnostics {
        fake_summary: || fake.summary(),
        logs: world.machine.data_dir.path().join("logs"),
    };
    let (session, worktree) = session_in_worktree(&world, "").await;
    let target = worktree.join("unasked.txt");
    let events = world
        .run_turn(&session, &format!("write {} written unasked", target.display()))
        .await;
    log(agent.package, start, &format!("turn: {:?}", update_kinds(&events)));
    assert!(
        !asked(&events),
        "opencode asked without the setting: {:?}",
        update_kinds(&events)
    );
    assert_eq!(
        std::fs::read_to_string(&target).unwrap_or_default(),
        "written unasked\n"
    );
}
