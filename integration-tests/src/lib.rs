//! Test harness: starts the real OMA binaries as processes on 127.0.0.1 with
//! port 0, waits for conditions with deadlines (never sleeps to synchronise),
//! and cleans up (processes killed, temp dirs and PostgreSQL databases
//! dropped) when its handles drop.

pub mod fake_anthropic;
pub mod faults;
pub mod hostile_cp;
pub mod one_machine;
pub mod postgres;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
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
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is not built; run the tests with `cargo test --workspace` (or `cargo build --workspace` first)",
        path.display()
    );
    path
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
}

impl Process {
    pub fn spawn(mut command: Command, name: &str) -> anyhow::Result<Process> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
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
        })
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
                        "{} printed no expected line within {deadline:?}; stdout so far: {:?}",
                        self.name,
                        self.seen
                    )
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    bail!(
                        "{} exited ({status:?}) before printing the expected line; stdout: {:?}",
                        self.name,
                        self.seen
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
#[derive(Default)]
pub struct ControlPlaneOptions {
    /// PEM cert and key to serve TLS with.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// More `serve` flags, e.g. limits.
    pub extra_args: Vec<String>,
}

/// A running `oma-control-plane`.
pub struct ControlPlane {
    pub process: Process,
    pub addr: SocketAddr,
    /// The bootstrap admin's API token of tenant "default".
    pub admin_token: String,
    pub database: TestDatabase,
    pub tls: bool,
}

impl ControlPlane {
    /// Starts on a fresh embedded SQLite database.
    pub fn start_sqlite() -> anyhow::Result<ControlPlane> {
        Self::start(TestDatabase::sqlite()?, ControlPlaneOptions::default())
    }

    /// Starts on `database` (fresh: the bootstrap must run).
    pub fn start(database: TestDatabase, options: ControlPlaneOptions) -> anyhow::Result<ControlPlane> {
        let mut command = Command::new(bin("oma-control-plane"));
        command
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(database.serve_args());
        command.env("OMA_LOG", "warn");
        let tls = options.tls.is_some();
        if let Some((cert, key)) = &options.tls {
            command.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        command.args(&options.extra_args);
        let mut process = Process::spawn(command, "oma-control-plane")?;
        let admin_token = read_token_file(&process.wait_for_line(START_DEADLINE, bootstrap_token_path)?)?;
        let addr = process.wait_for_line(START_DEADLINE, |line| {
            line.strip_prefix("oma-control-plane listening on ")
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|a| a.parse::<SocketAddr>().ok())
        })?;
        Ok(ControlPlane {
            process,
            addr,
            admin_token,
            database,
            tls,
        })
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
}

impl AgentDaemon {
    /// Pairs a new machine with `code` (no daemon started yet).
    pub fn setup(server: &str, code: &str) -> anyhow::Result<AgentDaemon> {
        let agents_toml = format!(
            "[[agent]]\nid = \"test\"\nname = \"Scripted test agent\"\ncommand = \"{}\"\n",
            bin("oma-test-agent").display()
        );
        Self::setup_with_agents_toml(server, code, &agents_toml)
    }

    /// Pairs a new machine with `code` whose `agents.toml` is `agents_toml`
    /// (no daemon started yet).
    pub fn setup_with_agents_toml(server: &str, code: &str, agents_toml: &str) -> anyhow::Result<AgentDaemon> {
        let config_dir = tempfile::tempdir()?;
        let data_dir = tempfile::tempdir()?;
        std::fs::write(config_dir.path().join("agents.toml"), agents_toml)?;
        let output = Command::new(bin("oma-agent"))
            .arg("--config-dir")
            .arg(config_dir.path())
            .arg("--data-dir")
            .arg(data_dir.path())
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
        })
    }

    /// The `oma-agent` command with this machine's dirs.
    pub fn command(&self) -> Command {
        let mut command = Command::new(bin("oma-agent"));
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command
            .arg("--config-dir")
            .arg(self.config_dir.path())
            .arg("--data-dir")
            .arg(self.data_dir.path());
        command
    }

    /// Starts `oma-agent run` and waits for it to say it is running.
    pub fn start(&mut self, extra_args: &[&str]) -> anyhow::Result<()> {
        let mut command = self.command();
        command
            .args(["run", "--reconnect-max", "2"])
            .args(extra_args)
            .env("OMA_LOG", "warn");
        let mut process = Process::spawn(command, "oma-agent")?;
        process.wait_for_line(START_DEADLINE, |l| l.starts_with("oma-agent ").then_some(()))?;
        self.process = Some(process);
        Ok(())
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
    let runtimes = clients.runtimes.clone();
    wait_until("the runtime to come online", deadline, || {
        let mut runtimes = runtimes.clone();
        let runtime_id = runtime_id.to_owned();
        async move {
            let runtime = runtimes
                .get_runtime(oma_proto::pb::GetRuntimeRequest { runtime_id })
                .await
                .ok()?
                .into_inner()
                .runtime?;
            (runtime.status == oma_proto::pb::RuntimeStatus::Online as i32).then_some(runtime)
        }
    })
    .await
}

/// Waits until the control plane reports the runtime offline: after a
/// daemon exits, its stream's end reaches the control plane a moment later,
/// and until then the runtime still reads online (a restart's
/// `wait_online` would see the old stream).
pub async fn wait_offline(clients: &mut Clients, runtime_id: &str, deadline: Duration) -> anyhow::Result<()> {
    let runtimes = clients.runtimes.clone();
    wait_until("the runtime to go offline", deadline, || {
        let mut runtimes = runtimes.clone();
        let runtime_id = runtime_id.to_owned();
        async move {
            let runtime = runtimes
                .get_runtime(oma_proto::pb::GetRuntimeRequest { runtime_id })
                .await
                .ok()?
                .into_inner()
                .runtime?;
            (runtime.status == oma_proto::pb::RuntimeStatus::Offline as i32).then_some(())
        }
    })
    .await
}

/// Collects a session's events from `from_seq` until the turn `turn_id` ends.
pub async fn collect_turn(
    clients: &mut Clients,
    session_id: &str,
    from_seq: u64,
    turn_id: &str,
    deadline: Duration,
) -> anyhow::Result<Vec<oma_proto::pb::SessionEvent>> {
    let mut stream = clients
        .sessions
        .watch_session(oma_proto::pb::WatchSessionRequest {
            session_id: session_id.to_owned(),
            from_seq,
            until_turn_end: false,
        })
        .await?
        .into_inner();
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
        Err(_) => bail!("turn {turn_id} did not end within {deadline:?}; events so far: {events:#?}"),
    }
}
