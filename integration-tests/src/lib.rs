//! Test harness: starts the real OMA binaries as processes on 127.0.0.1 with
//! port 0, waits for conditions with deadlines (never sleeps to synchronise),
//! and cleans up (processes killed, temp dirs and PostgreSQL databases
//! dropped) when its handles drop.

pub mod fake_anthropic;
pub mod fake_gemini;
pub mod fake_http;
pub mod fake_openai;
pub mod faults;
pub mod hostile_cp;
pub mod one_machine;
pub mod postgres;
pub mod real_agents;

/// The bench's bare tonic relay (`proto/relay_floor.proto`): the floor of
/// the relay's architecture that `oma-bench` measures beside it.
#[allow(clippy::all, missing_docs)]
pub mod relay_floor {
    tonic::include_proto!("oma.bench.v1");
}
pub mod world;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tempfile::TempDir;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub use postgres::TestDatabase;
pub use world::{Turn, World};

/// How long a process gets to print its "listening" line.
pub const START_DEADLINE: Duration = Duration::from_secs(60);

/// The folder holding the workspace's built binaries (`target/<profile>`):
/// test executables live in its `deps/`, package binaries (soak, bench) in
/// it directly. `OMA_FAULTS_BIN_DIR` names another folder (e.g. a copy that
/// a parallel `cargo build` cannot replace mid-run).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("OMA_FAULTS_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("exe dir");
    match dir.file_name() {
        Some(name) if name == "deps" => dir.parent().expect("target dir").to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

/// The path of a workspace binary. `cargo test --workspace` builds them all
/// before running any test.
pub fn bin(name: &str) -> PathBuf {
    try_bin(name).unwrap_or_else(|e| {
        panic!("{e}; run the tests with `cargo test --workspace` (or `cargo build --workspace` first)")
    })
}

/// Runs git in `dir` with a fixed test identity; its stdout (trimmed at the
/// end). Panics with git's complaint when it fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
}

/// A git repository at `dir` (created) with one commit of `README.md` on `main`.
pub fn git_repo(dir: &Path) {
    std::fs::create_dir_all(dir).expect("create the repository folder");
    git(dir, &["init", "--quiet", "--initial-branch", "main"]);
    std::fs::write(dir.join("README.md"), "web\n").expect("write README.md");
    git(dir, &["add", "."]);
    git(dir, &["commit", "--quiet", "-m", "first"]);
}

/// The path of a workspace binary, or an error saying it is not built.
pub fn try_bin(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir().join(name);
    anyhow::ensure!(path.exists(), "{} is not built", path.display());
    Ok(path)
}

/// Polls `check` until it returns `Some`, or fails after `deadline`.
pub async fn wait_until<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if start.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A child process killed on drop, whose stdout lines are collected.
pub struct Process {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    name: String,
    /// The file its stderr is appended to (`None`: this process's stderr).
    pub stderr_log: Option<PathBuf>,
}

impl Process {
    /// Starts `command`; its stderr is this process's.
    pub fn spawn(command: Command, name: &str) -> anyhow::Result<Process> {
        Self::spawn_to(command, name, None)
    }

    /// Starts `command` with its stderr appended to `stderr_log` (created
    /// when missing; a restart appends to the same file).
    pub fn spawn_logged(command: Command, name: &str, stderr_log: &Path) -> anyhow::Result<Process> {
        Self::spawn_to(command, name, Some(stderr_log))
    }

    fn spawn_to(mut command: Command, name: &str, stderr_log: Option<&Path>) -> anyhow::Result<Process> {
        let stderr = match stderr_log {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("cannot open {}", path.display()))?,
            ),
            None => Stdio::inherit(),
        };
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(stderr);
        let mut child = command.spawn().with_context(|| format!("cannot start {name}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Process {
            child,
            lines: rx,
            seen: Vec::new(),
            name: name.to_owned(),
            stderr_log: stderr_log.map(Path::to_path_buf),
        })
    }

    /// Where to look for its stderr, for error messages.
    fn stderr_note(&self) -> String {
        self.stderr_log
            .as_ref()
            .map(|path| format!(" (stderr: {})", path.display()))
            .unwrap_or_default()
    }

    /// Waits for a stdout line for which `pick` returns `Some`.
    pub fn wait_for_line<T>(
        &mut self,
        deadline: Duration,
        mut pick: impl FnMut(&str) -> Option<T>,
    ) -> anyhow::Result<T> {
        if let Some(found) = self.seen.iter().find_map(|l| pick(l)) {
            return Ok(found);
        }
        let start = Instant::now();
        loop {
            let left = deadline.checked_sub(start.elapsed()).unwrap_or_default();
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = pick(&line);
                    self.seen.push(line);
                    if let Some(found) = found {
                        return Ok(found);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!(
                        "{} printed no expected line within {deadline:?}; stdout so far: {:?}{}",
                        self.name,
                        self.seen,
                        self.stderr_note()
                    )
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    bail!(
                        "{} exited ({status:?}) before printing the expected line; stdout: {:?}{}",
                        self.name,
                        self.seen,
                        self.stderr_note()
                    )
                }
            }
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} failed");
        Ok(())
    }

    /// Waits for the process to exit, up to `deadline`.
    pub fn wait_exit(&mut self, deadline: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > deadline {
                bail!("{} did not exit within {deadline:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Options for starting a control plane.
#[derive(Default, Clone)]
pub struct ControlPlaneOptions {
    /// PEM cert and key to serve TLS with.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// More `serve` flags, e.g. limits.
    pub extra_args: Vec<String>,
    /// The file its stderr is appended to (every restart's too); `None`:
    /// this process's stderr.
    pub stderr_log: Option<PathBuf>,
    /// Its `OMA_LOG` filter; `None`: `warn`.
    pub log_filter: Option<String>,
}

/// A running `oma-control-plane`.
pub struct ControlPlane {
    pub process: Process,
    pub addr: SocketAddr,
    /// The bootstrap admin's API token of tenant "default".
    pub admin_token: String,
    pub database: TestDatabase,
    pub tls: bool,
    /// What it was started with (a restart starts it the same way).
    pub options: ControlPlaneOptions,
}

impl ControlPlane {
    /// Starts on a fresh embedded SQLite database.
    pub fn start_sqlite() -> anyhow::Result<ControlPlane> {
        Self::start(TestDatabase::sqlite()?, ControlPlaneOptions::default())
    }

    /// Starts on `database` (fresh: the bootstrap must run) on a free
    /// loopback port, and waits until it listens.
    pub fn start(database: TestDatabase, options: ControlPlaneOptions) -> anyhow::Result<ControlPlane> {
        let mut process = Self::spawn(&database, &options, "127.0.0.1:0")?;
        let admin_token = read_token_file(&process.wait_for_line(START_DEADLINE, bootstrap_token_path)?)?;
        let addr = process.wait_for_line(START_DEADLINE, listening_addr)?;
        Ok(ControlPlane {
            process,
            addr,
            admin_token,
            database,
            tls: options.tls.is_some(),
            options,
        })
    }

    /// `oma-control-plane serve` on `database`, listening on `listen`, not
    /// waited for (its "listening" line: [`listening_addr`]).
    pub fn spawn(database: &TestDatabase, options: &ControlPlaneOptions, listen: &str) -> anyhow::Result<Process> {
        let mut command = Command::new(try_bin("oma-control-plane")?);
        command
            .arg("serve")
            .arg("--listen")
            .arg(listen)
            .args(database.serve_args());
        command.env("OMA_LOG", options.log_filter.as_deref().unwrap_or("warn"));
        if let Some((cert, key)) = &options.tls {
            command.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        command.args(&options.extra_args);
        match &options.stderr_log {
            Some(log) => Process::spawn_logged(command, "oma-control-plane", log),
            None => Process::spawn(command, "oma-control-plane"),
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Clients with the bootstrap admin's token, on a new connection.
    pub async fn clients(&self) -> anyhow::Result<Clients> {
        Ok(Clients::new(self.channel().await?, Bearer::new(&self.admin_token)))
    }

    /// The URL clients use.
    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// A plaintext channel to the server.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(Channel::from_shared(self.url())?.connect().await?)
    }

    /// Runs an offline `oma-control-plane admin …` command on this server's
    /// database and returns its stdout.
    pub fn admin(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new(bin("oma-control-plane"))
            .arg("admin")
            .args(self.database.args())
            .args(args)
            .env("OMA_LOG", "warn")
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "admin {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8(output.stdout)?)
    }

    /// Creates a tenant offline and returns its admin token.
    pub fn create_tenant(&self, name: &str) -> anyhow::Result<String> {
        let out = self.admin(&["create-tenant", name])?;
        token_line(&out).context("create-tenant printed no token")
    }
}

/// The address in the control plane's line `oma-control-plane listening on
/// ADDR …`.
pub fn listening_addr(line: &str) -> Option<SocketAddr> {
    line.strip_prefix("oma-control-plane listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse::<SocketAddr>().ok())
}

/// The file named by the control plane's first-start line `admin token
/// written to PATH (…)`.
pub fn bootstrap_token_path(line: &str) -> Option<PathBuf> {
    let rest = line.strip_prefix("admin token written to ")?;
    Some(PathBuf::from(rest.rsplit_once(" (").map_or(rest, |(path, _)| path)))
}

/// The token in a file the control plane wrote (mode 0600, one line).
pub fn read_token_file(path: &std::path::Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    anyhow::ensure!(mode == 0o600, "{} has mode {mode:o}, not 600", path.display());
    Ok(std::fs::read_to_string(path)?.trim().to_owned())
}

/// The token from a line `… (shown once; store it now): TOKEN`.
pub fn token_line(out: &str) -> Option<String> {
    out.lines().find_map(|l| {
        l.split_once("(shown once; store it now): ")
            .map(|(_, t)| t.trim().to_owned())
    })
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(pub Option<MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    pub fn new(token: &str) -> Bearer {
        Bearer(Some(format!("Bearer {token}").parse().expect("ascii token")))
    }

    pub fn none() -> Bearer {
        Bearer(None)
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;

/// Typed clients of every public service, all with one token.
pub struct Clients {
    pub identity: oma_proto::pb::identity_service_client::IdentityServiceClient<Authed>,
    pub runtimes: oma_proto::pb::runtime_service_client::RuntimeServiceClient<Authed>,
    pub agents: oma_proto::pb::agent_service_client::AgentServiceClient<Authed>,
    pub sessions: oma_proto::pb::session_service_client::SessionServiceClient<Authed>,
    pub audit: oma_proto::pb::audit_service_client::AuditServiceClient<Authed>,
}

impl Clients {
    pub fn new(channel: Channel, bearer: Bearer) -> Clients {
        use oma_proto::pb::*;
        Clients {
            identity: identity_service_client::IdentityServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            runtimes: runtime_service_client::RuntimeServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            agents: agent_service_client::AgentServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            sessions: session_service_client::SessionServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            audit: audit_service_client::AuditServiceClient::with_interceptor(channel, bearer),
        }
    }

    /// A fresh connect code of this caller.
    pub async fn connect_code(&mut self) -> anyhow::Result<String> {
        Ok(self
            .runtimes
            .create_connect_code(oma_proto::pb::CreateConnectCodeRequest::default())
            .await?
            .into_inner()
            .code)
    }

    /// Creates an agent from `spec`; returns its id.
    pub async fn create_agent(&mut self, spec: oma_proto::pb::AgentSpec) -> anyhow::Result<String> {
        let agent = self
            .agents
            .create_agent(oma_proto::pb::CreateAgentRequest {
                spec: Some(spec),
                allow_unknown_skills: false,
            })
            .await?
            .into_inner()
            .agent
            .ok_or_else(|| anyhow::anyhow!("CreateAgent answered without an agent"))?;
        Ok(agent.id)
    }

    /// Creates a session of `agent_id` (its start is not waited for);
    /// returns its id.
    pub async fn create_session(&self, agent_id: &str, title: &str) -> anyhow::Result<String> {
        self.create_session_in(agent_id, title, None).await
    }

    /// [`Self::create_session`] in a workspace of the runtime.
    pub async fn create_session_in(
        &self,
        agent_id: &str,
        title: &str,
        workspace: Option<oma_proto::pb::SessionWorkspace>,
    ) -> anyhow::Result<String> {
        let session = self
            .sessions
            .clone()
            .create_session(oma_proto::pb::CreateSessionRequest {
                agent_id: agent_id.to_owned(),
                title: title.to_owned(),
                workspace,
                ..Default::default()
            })
            .await?
            .into_inner()
            .session
            .ok_or_else(|| anyhow::anyhow!("CreateSession answered without a session"))?;
        Ok(session.id)
    }

    /// Prompts the session with `text`: the turn it started.
    pub async fn prompt(&self, session_id: &str, text: &str) -> Result<Turn, tonic::Status> {
        let response = self
            .sessions
            .clone()
            .prompt_session(oma_proto::pb::PromptSessionRequest {
                session_id: session_id.into(),
                turn_id: String::new(),
                prompt: text_prompt(text),
            })
            .await?
            .into_inner();
        Ok(Turn {
            session_id: session_id.into(),
            id: response.turn_id,
            from_seq: response.from_seq,
        })
    }

    /// A runtime as the control plane has it now.
    pub async fn get_runtime(&self, runtime_id: &str) -> anyhow::Result<oma_proto::pb::Runtime> {
        self.runtimes
            .clone()
            .get_runtime(oma_proto::pb::GetRuntimeRequest {
                runtime_id: runtime_id.to_owned(),
            })
            .await?
            .into_inner()
            .runtime
            .ok_or_else(|| anyhow::anyhow!("GetRuntime answered without a runtime"))
    }

    /// A new user of this caller's tenant and an API token for it (no expiry).
    pub async fn new_user(
        &mut self,
        name: &str,
        role: oma_proto::pb::Role,
    ) -> anyhow::Result<(oma_proto::pb::User, oma_proto::pb::CreateTokenResponse)> {
        let user = self
            .identity
            .create_user(oma_proto::pb::CreateUserRequest {
                name: name.to_owned(),
                role: role as i32,
            })
            .await?
            .into_inner()
            .user
            .ok_or_else(|| anyhow::anyhow!("CreateUser answered without a user"))?;
        let token = self
            .identity
            .create_token(oma_proto::pb::CreateTokenRequest {
                user_id: user.id.clone(),
                name: format!("{name}-{:08x}", rand::random::<u32>()),
                ttl_seconds: 0,
            })
            .await?
            .into_inner();
        Ok((user, token))
    }

    /// A session as the control plane has it now.
    pub async fn get_session(&self, session_id: &str) -> anyhow::Result<oma_proto::pb::Session> {
        self.sessions
            .clone()
            .get_session(oma_proto::pb::GetSessionRequest {
                session_id: session_id.to_owned(),
            })
            .await?
            .into_inner()
            .session
            .ok_or_else(|| anyhow::anyhow!("GetSession answered without a session"))
    }
}

/// An agent spec named `name`, bound to the ACP agent `test` (the scripted
/// agent) of `runtime_id`, answering permissions by `policy`.
pub fn test_agent_spec(
    name: &str,
    runtime_id: &str,
    policy: oma_proto::pb::PermissionPolicy,
) -> oma_proto::pb::AgentSpec {
    oma_proto::pb::AgentSpec {
        name: name.into(),
        permission_policy: policy as i32,
        runtime_binding: Some(oma_proto::pb::RuntimeBinding {
            runtime_id: runtime_id.into(),
            acp_agent_id: "test".into(),
            local_skill_blocklist: vec![],
        }),
        ..Default::default()
    }
}

/// Runs the real `omactl` against a control plane with a private config file.
pub struct Omactl {
    pub server: String,
    pub token: String,
    pub config_dir: TempDir,
    pub extra: Vec<String>,
}

impl Omactl {
    pub fn new(server: &str, token: &str) -> anyhow::Result<Omactl> {
        Ok(Omactl {
            server: server.to_owned(),
            token: token.to_owned(),
            config_dir: tempfile::tempdir()?,
            extra: Vec::new(),
        })
    }

    /// Runs `omactl --server S --token T <args>`.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(Command::new(bin("omactl"))
            .env("OMACTL_CONFIG", self.config_dir.path().join("config.toml"))
            .env_remove("OMA_SERVER")
            .env_remove("OMA_TOKEN")
            .arg("--server")
            .arg(&self.server)
            .arg("--token")
            .arg(&self.token)
            .args(&self.extra)
            .args(args)
            .stdin(Stdio::null())
            .output()?)
    }

    /// Runs with `-o json`, requires success, and parses stdout.
    pub fn json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut full = vec!["-o", "json"];
        full.extend_from_slice(args);
        let output = self.run(&full)?;
        anyhow::ensure!(
            output.status.success(),
            "omactl {args:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "omactl {args:?} printed no JSON: {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }
}

/// A paired `oma-agent` with private config and data dirs, whose agent
/// table holds the scripted test agent as `test`.
pub struct AgentDaemon {
    pub config_dir: TempDir,
    pub data_dir: TempDir,
    pub server: String,
    pub process: Option<Process>,
    pub runtime_id: String,
    /// Extra environment for `oma-agent run` (e.g. a fake HOME).
    pub env: Vec<(String, String)>,
    /// Variables of this process's environment that `oma-agent run` must
    /// not inherit.
    pub env_remove: Vec<String>,
    /// The file the stderr of `oma-agent run` is appended to; `None`: this
    /// process's stderr.
    pub stderr_log: Option<PathBuf>,
    /// The `OMA_LOG` filter of `oma-agent run`.
    pub log_filter: String,
    /// The `run` flags of the last start (a restart uses them again).
    run_args: Vec<String>,
}

/// The flags [`AgentDaemon::start`] puts before its own.
pub const DAEMON_RUN_ARGS: &[&str] = &["--reconnect-max", "2"];

impl AgentDaemon {
    /// Pairs a new machine with `code` (no daemon started yet).
    pub fn setup(server: &str, code: &str) -> anyhow::Result<AgentDaemon> {
        Self::setup_with_agents_toml(server, code, &test_agents_toml())
    }

    /// Pairs a new machine with `code` whose `agents.toml` is `agents_toml`
    /// (no daemon started yet).
    pub fn setup_with_agents_toml(server: &str, code: &str, agents_toml: &str) -> anyhow::Result<AgentDaemon> {
        let config_dir = tempfile::tempdir()?;
        let data_dir = tempfile::tempdir()?;
        std::fs::write(config_dir.path().join("agents.toml"), agents_toml)?;
        let output = Self::command_in(config_dir.path(), data_dir.path())?
            .args(["setup", "--server", server, "--code", code, "--name", "test-machine"])
            .env("OMA_LOG", "warn")
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "oma-agent setup failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8(output.stdout)?;
        let runtime_id = stdout
            .lines()
            .find_map(|l| l.strip_prefix("paired as runtime "))
            .and_then(|rest| rest.split_whitespace().next())
            .context("setup printed no runtime id")?
            .to_owned();
        Ok(AgentDaemon {
            config_dir,
            data_dir,
            server: server.to_owned(),
            process: None,
            runtime_id,
            env: Vec::new(),
            env_remove: Vec::new(),
            stderr_log: None,
            log_filter: "warn".into(),
            run_args: Vec::new(),
        })
    }

    /// `oma-agent --config-dir C --data-dir D`.
    pub fn command_in(config_dir: &Path, data_dir: &Path) -> anyhow::Result<Command> {
        let mut command = Command::new(try_bin("oma-agent")?);
        command
            .arg("--config-dir")
            .arg(config_dir)
            .arg("--data-dir")
            .arg(data_dir);
        Ok(command)
    }

    /// The `oma-agent` command with this machine's dirs and environment.
    pub fn command(&self) -> Command {
        let mut command =
            Self::command_in(self.config_dir.path(), self.data_dir.path()).unwrap_or_else(|e| panic!("{e}"));
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        for name in &self.env_remove {
            command.env_remove(name);
        }
        command
    }

    /// Starts `oma-agent run --reconnect-max 2 <extra_args>` and waits for
    /// it to say it is running.
    pub fn start(&mut self, extra_args: &[&str]) -> anyhow::Result<()> {
        let args: Vec<&str> = DAEMON_RUN_ARGS.iter().chain(extra_args).copied().collect();
        self.start_exactly(&args)
    }

    /// Starts `oma-agent run <args>` (nothing added) and waits for it to say
    /// it is running.
    pub fn start_exactly(&mut self, args: &[&str]) -> anyhow::Result<()> {
        let mut command = self.command();
        command.arg("run").args(args).env("OMA_LOG", &self.log_filter);
        let mut process = match &self.stderr_log {
            Some(log) => Process::spawn_logged(command, "oma-agent", log)?,
            None => Process::spawn(command, "oma-agent")?,
        };
        process.wait_for_line(START_DEADLINE, |l| l.starts_with("oma-agent ").then_some(()))?;
        self.process = Some(process);
        self.run_args = args.iter().map(|a| a.to_string()).collect();
        Ok(())
    }

    /// SIGKILLs the daemon (its ACP children are not told) and waits until
    /// it is gone.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut process) = self.process.take() {
            let _ = process.signal("KILL");
            process.wait_exit(Duration::from_secs(30))?;
        }
        Ok(())
    }

    /// SIGKILLs the daemon and starts it again with the flags of its last
    /// start: it reconnects and resends what the control plane has not
    /// acknowledged.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill()?;
        let args = std::mem::take(&mut self.run_args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.start_exactly(&args)
    }

    /// The running daemon's process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::id)
    }

    /// This machine's local policy file (`<config dir>/policy.toml`).
    pub fn policy_file(&self) -> PathBuf {
        self.config_dir.path().join("policy.toml")
    }

    /// Writes this machine's `policy.toml`: before `start` it is what the
    /// daemon starts with; afterwards the next session start reads it.
    pub fn set_policy(&self, policy_toml: &str) -> anyhow::Result<()> {
        std::fs::write(self.policy_file(), policy_toml)?;
        Ok(())
    }

    /// The folder of a session on this machine.
    pub fn session_dir(&self, session_id: &str) -> PathBuf {
        self.data_dir.path().join("sessions").join(session_id)
    }
}

/// The scripted test agent as the ACP agent `test` (an `agents.toml`).
pub fn test_agents_toml() -> String {
    format!(
        "[[agent]]\nid = \"test\"\nname = \"Scripted test agent\"\ncommand = \"{}\"\n",
        bin("oma-test-agent").display()
    )
}

/// A text prompt.
pub fn text_prompt(text: &str) -> Vec<oma_proto::pb::ContentBlock> {
    vec![oma_proto::pb::ContentBlock {
        block: Some(oma_proto::pb::content_block::Block::Text(oma_proto::pb::TextContent {
            text: text.to_owned(),
        })),
    }]
}

/// Waits until the runtime is online (its stream is up).
pub async fn wait_online(
    clients: &mut Clients,
    runtime_id: &str,
    deadline: Duration,
) -> anyhow::Result<oma_proto::pb::Runtime> {
    wait_runtime_status(clients, runtime_id, oma_proto::pb::RuntimeStatus::Online, deadline).await
}

/// Waits until the control plane reports the runtime offline: after a
/// daemon exits, its stream's end reaches the control plane a moment later,
/// and until then the runtime still reads online (a restart's
/// `wait_online` would see the old stream).
pub async fn wait_offline(clients: &mut Clients, runtime_id: &str, deadline: Duration) -> anyhow::Result<()> {
    wait_runtime_status(clients, runtime_id, oma_proto::pb::RuntimeStatus::Offline, deadline).await?;
    Ok(())
}

/// Waits until the control plane reports the runtime in `status`.
pub async fn wait_runtime_status(
    clients: &Clients,
    runtime_id: &str,
    status: oma_proto::pb::RuntimeStatus,
    deadline: Duration,
) -> anyhow::Result<oma_proto::pb::Runtime> {
    let what = format!("runtime {runtime_id} to be {status:?}");
    wait_until(&what, deadline, || async {
        let runtime = clients
            .runtimes
            .clone()
            .get_runtime(oma_proto::pb::GetRuntimeRequest {
                runtime_id: runtime_id.to_owned(),
            })
            .await
            .ok()?
            .into_inner()
            .runtime?;
        (runtime.status == status as i32).then_some(runtime)
    })
    .await
}

/// The largest message the event readers accept (a 10 MiB update is an
/// event of ~20 MiB).
pub const READ_LIMIT: usize = 64 * 1024 * 1024;

/// Collects a session's events from `from_seq` until the turn `turn_id`
/// ends, within `deadline`.
pub async fn collect_turn(
    clients: &Clients,
    session_id: &str,
    from_seq: u64,
    turn_id: &str,
    deadline: Duration,
) -> anyhow::Result<Vec<oma_proto::pb::SessionEvent>> {
    let start = Instant::now();
    let mut sessions = clients.sessions.clone().max_decoding_message_size(READ_LIMIT);
    let watch = sessions.watch_session(oma_proto::pb::WatchSessionRequest {
        session_id: session_id.to_owned(),
        from_seq,
        until_turn_end: false,
    });
    let mut stream = match tokio::time::timeout(deadline, watch).await {
        Ok(stream) => stream?.into_inner(),
        Err(_) => bail!("WatchSession of {session_id} did not answer within {deadline:?}"),
    };
    read_until_turn_end(&mut stream, turn_id, deadline.saturating_sub(start.elapsed())).await
}

/// Reads a watch until the turn `turn_id` ends (its TurnEnded is the last
/// event returned), within `deadline`.
pub async fn read_until_turn_end(
    stream: &mut tonic::Streaming<oma_proto::pb::SessionEvent>,
    turn_id: &str,
    deadline: Duration,
) -> anyhow::Result<Vec<oma_proto::pb::SessionEvent>> {
    let mut events = Vec::new();
    let result = tokio::time::timeout(deadline, async {
        while let Some(event) = stream.message().await? {
            let done = event.turn_id == turn_id
                && matches!(event.kind, Some(oma_proto::pb::session_event::Kind::TurnEnded(_)));
            events.push(event);
            if done {
                return Ok::<_, anyhow::Error>(());
            }
        }
        bail!("the watch ended before turn {turn_id} did")
    })
    .await;
    match result {
        Ok(r) => r.map(|_| events),
        // A long turn's events would drown the message: the last few say
        // where it stood.
        Err(_) => bail!(
            "turn {turn_id} did not end within {deadline:?}; {} events so far, the last ones: {:#?}",
            events.len(),
            &events[events.len().saturating_sub(20)..]
        ),
    }
}
