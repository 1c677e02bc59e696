//! The `oma-agent` binary.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use oma_agent::connection::{Backoff, Daemon, DaemonExit, endpoint};
use oma_agent::credentials::{self, Credentials};
use oma_agent::detect::{self, DetectReport};
use oma_agent::logging::{self, LogFormat};
use oma_agent::paths::Paths;
use oma_agent::policy::Policy;
use oma_agent::service_unit::{self, ServiceManager, UnitSpec};
use oma_agent::session::manager::{Manager, ManagerConfig, ReportedAgent};
use oma_agent::skills::{self, SkillSource};
use oma_agent::status_file::{self, DaemonState};
use oma_agent::workspaces::Workspaces;
use oma_proto::pb;
use tokio_util::sync::CancellationToken;

/// Runs coding agents (ACP) on this machine for an OMA runtime control plane.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Where credentials, the machine id and agents.toml live.
    #[arg(long, global = true, env = "OMA_AGENT_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    /// Where sessions, the outbox and logs live.
    #[arg(long, global = true, env = "OMA_AGENT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// How log lines are written: `text` for people, `json` (one object a
    /// line, with the span fields) for a log collector.
    #[arg(long, global = true, env = "OMA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Pair this machine with a control plane using a connect code.
    Setup {
        /// The control plane's URL, e.g. https://oma.example.com:443.
        #[arg(long)]
        server: String,
        /// The connect code from `omactl runtimes connect`.
        #[arg(long)]
        code: String,
        /// A name for this machine (default: its host name).
        #[arg(long)]
        name: Option<String>,
        /// A PEM file of CA certificates to trust instead of the system's.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Replace credentials of another server.
        #[arg(long)]
        force: bool,
        /// Allow plaintext to a non-loopback server.
        #[arg(long)]
        insecure: bool,
        /// `json`: print one JSON object (runtime_id, runtime_name,
        /// tenant_id, server, config_dir, data_dir, credentials_file,
        /// agents_file, policy_file, agents, missing_agents) and nothing
        /// else on stdout; errors still go to stderr.
        #[arg(long, short = 'o', value_enum, default_value_t = SetupOutput::Text)]
        output: SetupOutput,
    },
    /// Run the daemon (what the service unit starts).
    Run(RunArgs),
    /// Show whether this machine is paired and connected, and its agents
    /// (exit 0 only when paired and running).
    Status {
        /// One JSON object: version, paired, runtime, server, daemon
        /// (running, pid, connected, status, since), sessions, agents.
        #[arg(long)]
        json: bool,
    },
    /// List the ACP agents found on this machine and how each is launched.
    Agents,
    /// Show this machine's local policy (policy.toml): its MCP servers, the
    /// MCP URL allow-list and which agents take server-sent credentials.
    Policy,
    /// Remove credentials, sessions and the service unit.
    Uninstall,
    /// Manage the systemd user unit / launchd agent that runs the daemon.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum SetupOutput {
    Text,
    Json,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// A turn ends with an error after the agent printed nothing this long.
    #[arg(long, env = "OMA_AGENT_IDLE_TIMEOUT", default_value = "600", value_parser = oma_proto::duration::parse)]
    idle_timeout: Duration,
    /// An agent must answer initialize and session/new within this.
    #[arg(long, env = "OMA_AGENT_STARTUP_TIMEOUT", default_value = "60", value_parser = oma_proto::duration::parse)]
    startup_timeout: Duration,
    /// The longest wait between reconnect attempts (e.g. 30s, 2m; a bare
    /// number is seconds).
    #[arg(long, env = "OMA_AGENT_RECONNECT_MAX", default_value = "30", value_parser = oma_proto::duration::parse)]
    reconnect_max: Duration,
    /// Allow plaintext to a non-loopback server.
    #[arg(long, env = "OMA_AGENT_INSECURE")]
    insecure: bool,
    /// The most sessions this machine holds at once (each runs its own ACP
    /// agent process); a start beyond it fails that session with an error
    /// naming this limit, and spawns nothing.
    #[arg(long, env = "OMA_AGENT_MAX_SESSIONS", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_sessions: u32,
    /// Write the log to this file instead of stderr, rotated past 10 MiB
    /// (4 older files kept as FILE.1 … FILE.4). The launchd agent uses it:
    /// launchd never rotates a job's output files.
    #[arg(long, env = "OMA_AGENT_LOG_FILE")]
    log_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum ServiceCommand {
    /// Write the unit and start it (restart on failure, logs to journald or
    /// ~/Library/Logs). The `run` options given here are what the service runs with.
    Install {
        /// Print what would be done without doing it.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Stop the service and remove its unit.
    Uninstall {
        #[arg(long)]
        dry_run: bool,
    },
    /// Show the service manager's view of the service.
    Status,
}

impl RunArgs {
    /// The same options as `run` arguments, every one spelled out (the
    /// service must not depend on the installing shell's environment).
    fn to_args(&self) -> Vec<String> {
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let mut args = vec![
            "--idle-timeout".to_owned(),
            ms(self.idle_timeout),
            "--startup-timeout".to_owned(),
            ms(self.startup_timeout),
            "--reconnect-max".to_owned(),
            ms(self.reconnect_max),
            "--max-sessions".to_owned(),
            self.max_sessions.to_string(),
        ];
        if self.insecure {
            args.push("--insecure".to_owned());
        }
        if let Some(file) = &self.log_file {
            args.extend(["--log-file".to_owned(), file.display().to_string()]);
        }
        args
    }
}

fn main() {
    let cli = Cli::parse();
    let log_file = match &cli.command {
        Command::Run(args) => args.log_file.as_deref(),
        _ => None,
    };
    if let Err(e) = logging::init(cli.log_format, log_file) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    let log_format = cli.log_format;
    let paths = Paths::resolve(cli.config_dir, cli.data_dir)?;
    // One thread: the daemon's work per event is small (a few µs), and on a
    // multi-threaded runtime every handoff on the live path (child reader →
    // session actor → gRPC body → HTTP/2 connection) could wake a parked
    // worker on another core, which is most of the relay's added latency.
    // Blocking work (skill scans) goes to the blocking pool.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match cli.command {
        Command::Setup {
            server,
            code,
            name,
            ca_file,
            force,
            insecure,
            output,
        } => runtime.block_on(setup(&paths, server, code, name, ca_file, force, insecure, output)),
        Command::Run(args) => runtime.block_on(daemon(&paths, args)),
        Command::Status { json } => status(&paths, json),
        Command::Agents => agents(&paths),
        Command::Policy => show_policy(&paths),
        Command::Uninstall => runtime.block_on(uninstall(&paths)),
        Command::Service { command } => service(&paths, command, log_format),
    }
}

#[allow(clippy::too_many_arguments)] // one per flag of `setup`
async fn setup(
    paths: &Paths,
    server: String,
    code: String,
    name: Option<String>,
    ca_file: Option<PathBuf>,
    force: bool,
    insecure: bool,
    output: SetupOutput,
) -> anyhow::Result<i32> {
    // Refuse before spending the single-use code.
    if let Some(existing) = credentials::load(paths)?
        && existing.server_url != server
        && !force
    {
        bail!(
            "this machine is already paired with {}; pass --force to pair it with {server} instead",
            existing.server_url
        );
    }
    let ca_file = ca_file
        .map(|p| std::fs::canonicalize(&p).with_context(|| format!("cannot find --ca-file {}", p.display())))
        .transpose()?;
    let endpoint = endpoint(&server, ca_file.as_deref(), insecure).map_err(anyhow::Error::msg)?;
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the control plane at {server}"))?;
    let machine_id = credentials::machine_id(paths)?;
    let mut client = pb::runtime_service_client::RuntimeServiceClient::new(channel);
    let response = client
        .exchange_connect_code(pb::ExchangeConnectCodeRequest {
            code,
            machine_id,
            name: name.unwrap_or_else(credentials::default_runtime_name),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("the control plane refused the code: {}", s.message()))?
        .into_inner();
    let runtime = response.runtime.context("the control plane returned no runtime")?;
    let creds = Credentials {
        server_url: server,
        runtime_id: runtime.id.clone(),
        machine_token: response.machine_token,
        ca_file,
        insecure,
        tenant_id: Some(runtime.tenant_id.clone()),
        paired_at: credentials::paired_at_now(),
    };
    credentials::save(paths, &creds, true)?;
    if output == SetupOutput::Json {
        // The pairing is done: a broken agents.toml is reported, not fatal.
        let (agents, missing, agents_error) = match detect_agents(paths) {
            Ok(report) => (
                report
                    .agents
                    .iter()
                    .map(|a| {
                        serde_json::json!({
                            "id": a.id,
                            "name": a.name,
                            "command": a.command,
                            "package": a.package.as_ref().map(|p| &p.name),
                            "version": a.package.as_ref().map(|p| &p.version),
                            "problems": a.problems,
                        })
                    })
                    .collect(),
                report.missing.iter().map(|m| m.to_string()).collect(),
                None,
            ),
            Err(e) => (Vec::new(), Vec::new(), Some(e.to_string())),
        };
        let value = serde_json::json!({
            "runtime_id": runtime.id,
            "runtime_name": runtime.name,
            "tenant_id": runtime.tenant_id,
            "server": creds.server_url,
            "config_dir": paths.config_dir,
            "data_dir": paths.data_dir,
            "credentials_file": paths.credentials_file(),
            "agents_file": paths.agents_config_file(),
            "policy_file": paths.policy_file(),
            "agents": agents,
            "missing_agents": missing,
            "agents_error": agents_error,
        });
        println!("{value}");
        return Ok(0);
    }
    println!("paired as runtime {} ({})", runtime.id, runtime.name);
    println!("credentials: {}", paths.credentials_file().display());
    println!("start the daemon with `oma-agent run`, or install it as a service with `oma-agent service install`");
    Ok(0)
}

/// Logs what is known to be wrong with the detected agents.
fn warn_problems(report: &DetectReport) {
    for agent in &report.agents {
        for problem in &agent.problems {
            tracing::warn!(agent = agent.id, command = %agent.command.display(), "{problem}");
        }
    }
}

fn detect_agents(paths: &Paths) -> anyhow::Result<DetectReport> {
    Ok(detect::detect_with_process_path(&paths.agents_config_file())?)
}

/// The user's Claude config folder: `$CLAUDE_CONFIG_DIR` or `~/.claude`.
fn skill_source() -> Option<SkillSource> {
    let home = dirs::home_dir()?;
    Some(SkillSource::from_env(
        &home,
        std::env::var_os("CLAUDE_CONFIG_DIR").as_deref(),
    ))
}

/// What this machine offers: its ACP agents, for Claude agents the user's
/// local skills, and from the owner's policy the local MCP servers (ids and
/// names only) and the MCP URL allow-list. Also returns a fingerprint of the
/// skills to detect changes.
fn manifest(
    report: &DetectReport,
    source: Option<&SkillSource>,
    policy: &Policy,
    workspaces: Vec<pb::Workspace>,
    reported: &BTreeMap<String, ReportedAgent>,
) -> (pb::Manifest, u64) {
    let found = source.map(skills::scan).unwrap_or_default();
    let local = skills::to_manifest(&found);
    let (local_mcp_servers, mcp_url_allow_list) = policy.manifest_parts();
    let manifest = pb::Manifest {
        acp_agents: report
            .agents
            .iter()
            .map(|a| {
                let (ask_support, ask_mode_id) = a.ask.to_manifest();
                // Version and capabilities once a session has started it.
                let own = reported.get(&a.id).cloned().unwrap_or_default();
                pb::AcpAgentInfo {
                    id: a.id.clone(),
                    name: a.name.clone(),
                    version: own.version,
                    capabilities_json: own.capabilities_json,
                    local_skills: if a.quirks.is_claude { local.clone() } else { Vec::new() },
                    ask_support: ask_support as i32,
                    ask_mode_id,
                    problems: a.problems.clone(),
                }
            })
            .collect(),
        local_mcp_servers,
        mcp_url_allow_list,
        workspaces,
    };
    (manifest, skills::fingerprint(&found))
}

/// What a rescan found, or — when it failed — the last good value; each
/// distinct failure is logged once (`broken` says what broke and what
/// happens meanwhile), not every 10 s.
fn or_last_good<T: Clone, E: std::fmt::Display>(
    loaded: Result<T, E>,
    last_good: &T,
    last_error: &mut Option<String>,
    broken: &str,
) -> T {
    match loaded {
        Ok(value) => {
            *last_error = None;
            value
        }
        Err(e) => {
            let message = e.to_string();
            if last_error.as_ref() != Some(&message) {
                tracing::warn!("{broken}: {message}");
                *last_error = Some(message);
            }
            last_good.clone()
        }
    }
}

/// What the last manifest was built from, to report only changes.
struct ManifestState {
    skills: u64,
    /// The last policy that loaded (a broken file keeps it in the manifest;
    /// sessions fail on it until it is fixed).
    policy: Policy,
    /// The last policy error logged (logged again only when it changes).
    policy_error: Option<String>,
    /// The workspaces as last reported (a broken file keeps them).
    workspaces: Vec<pb::Workspace>,
    workspaces_error: Option<String>,
    /// What the ACP agents said of themselves, as last reported.
    reported: BTreeMap<String, ReportedAgent>,
    /// The agent table as last detected, and the last error reading it.
    agents: DetectReport,
    agents_error: Option<String>,
}

async fn daemon(paths: &Paths, args: RunArgs) -> anyhow::Result<i32> {
    let creds = credentials::load(paths)?.context(
        "this machine is not paired: run `oma-agent setup --server URL --code CODE` (a code comes from `omactl runtimes connect`)",
    )?;
    let machine_id = credentials::machine_id(paths)?;
    // Start bundles, transcripts and logs live here: owner only.
    for path in paths
        .secure_data_dir()
        .with_context(|| format!("cannot create the data dir {}", paths.data_dir.display()))?
    {
        tracing::warn!(path = %path.display(), "was readable by others; now owner only");
    }
    let report = detect_agents(paths)?;
    for missing in &report.missing {
        tracing::info!("{missing}");
    }
    tracing::info!(agents = ?report.agents.iter().map(|a| &a.id).collect::<Vec<_>>(), "detected ACP agents");
    warn_problems(&report);
    // A broken policy stops the daemon here, with `file:line: why`.
    let policy = Policy::load_with_process_path(&paths.policy_file())?;
    tracing::info!(
        file = %policy.file.display(),
        local_mcp_servers = ?policy.mcp_servers.iter().map(|s| &s.id).collect::<Vec<_>>(),
        mcp_urls = policy.mcp_url_allow_list.len(),
        "local policy"
    );
    // A broken workspaces file stops the daemon here too, with `file:line: why`.
    let workspaces = Workspaces::load(&paths.workspaces_file())?;
    tracing::info!(
        file = %workspaces.file.display(),
        workspaces = ?workspaces.list.iter().map(|w| &w.id).collect::<Vec<_>>(),
        "local workspaces"
    );
    let reported_workspaces = workspaces.manifest();
    let source = skill_source();
    let (initial_manifest, fingerprint) = manifest(
        &report,
        source.as_ref(),
        &policy,
        reported_workspaces.clone(),
        &Default::default(),
    );
    let hello = pb::Hello {
        machine_id,
        instance_id: uuid::Uuid::new_v4().simple().to_string(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
        manifest: Some(initial_manifest),
        sessions: Vec::new(),
    };
    let refresh_source = source.clone();
    let refresh_paths = paths.clone();
    let manager = Manager::load(ManagerConfig {
        paths: paths.clone(),
        agents: report.clone(),
        skill_source: source.clone(),
        idle_timeout: args.idle_timeout,
        startup_timeout: args.startup_timeout,
        shutdown_grace: Duration::from_secs(5),
        max_sessions: args.max_sessions as usize,
    });
    let refresh_agents = manager.clone();
    let policy_file = paths.policy_file();
    let workspaces_file = paths.workspaces_file();
    let last = std::sync::Mutex::new(ManifestState {
        skills: fingerprint,
        policy,
        policy_error: None,
        workspaces: reported_workspaces,
        workspaces_error: None,
        reported: Default::default(),
        agents: report,
        agents_error: None,
    });
    let refresh_manifest: oma_agent::connection::ManifestSource = std::sync::Arc::new(move || {
        let mut last = last.lock().expect("manifest state lock");
        let last = &mut *last;
        let policy = or_last_good(
            Policy::load_with_process_path(&policy_file),
            &last.policy,
            &mut last.policy_error,
            "the local policy is broken (sessions fail to start until it is fixed)",
        );
        let workspaces = or_last_good(
            Workspaces::load(&workspaces_file).map(|w| w.manifest()),
            &last.workspaces,
            &mut last.workspaces_error,
            "the workspaces file is broken (the last good one is reported)",
        );
        // PATH and agents.toml again: a newly installed agent, or one the
        // owner added, is offered without a restart.
        let report = or_last_good(
            detect_agents(&refresh_paths),
            &last.agents,
            &mut last.agents_error,
            "agents.toml is broken (the last good agent table stays)",
        );
        if report != last.agents {
            tracing::info!(agents = ?report.agents.iter().map(|a| &a.id).collect::<Vec<_>>(), "the ACP agents changed");
            warn_problems(&report);
            refresh_agents.set_agents(report.clone());
        }
        let reported = refresh_agents.reported_agents();
        let (manifest, fingerprint) =
            manifest(&report, refresh_source.as_ref(), &policy, workspaces.clone(), &reported);
        let changed = last.skills != fingerprint
            || last.policy.manifest_parts() != policy.manifest_parts()
            || last.workspaces != workspaces
            || last.reported != reported
            || last.agents != report;
        last.agents = report;
        last.skills = fingerprint;
        last.policy = policy;
        last.workspaces = workspaces;
        last.reported = reported;
        changed.then_some(manifest)
    });
    let state_file = paths.state_file();
    let status_state = Arc::new(Mutex::new(DaemonState {
        pid: std::process::id(),
        status: "connecting".into(),
        since_unix: status_file::now_unix(),
        ..DaemonState::default()
    }));
    let backlog_writer = tokio::spawn(write_backlog(manager.clone(), status_state.clone(), state_file.clone()));
    let insecure = args.insecure || creds.insecure;
    let endpoint = endpoint(&creds.server_url, creds.ca_file.as_deref(), insecure).map_err(anyhow::Error::msg)?;
    let daemon = Daemon {
        endpoint,
        machine_token: creds.machine_token.clone(),
        hello,
        manager: manager.clone(),
        backoff: Backoff {
            cap: args.reconnect_max,
            ..Backoff::default()
        },
        refresh_manifest,
        on_status: Box::new(move |status| {
            let mut state = status_state.lock().expect("status lock");
            state.connected = status.is_connected();
            state.status = status.to_string();
            state.since_unix = status_file::now_unix();
            if let Some(error) = status.error() {
                state.last_error = Some(status_file::LastError {
                    message: error.to_owned(),
                    at_unix: state.since_unix,
                });
            }
            let _ = status_file::write(&state_file, &state);
        }),
    };
    let shutdown = CancellationToken::new();
    let signals = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            shutdown.cancel();
        })
    };
    println!(
        "oma-agent {} running as runtime {}",
        env!("CARGO_PKG_VERSION"),
        creds.runtime_id
    );
    let exit = daemon.run(shutdown).await;
    signals.abort();
    backlog_writer.abort();
    manager.shutdown().await;
    let _ = std::fs::remove_file(paths.state_file());
    Ok(match exit {
        DaemonExit::Shutdown => {
            tracing::info!("stopped");
            0
        }
        DaemonExit::Superseded => {
            println!("another oma-agent with these credentials took over; exiting");
            0
        }
        DaemonExit::Refused(why) => {
            eprintln!(
                "error: the control plane refused this machine's credentials ({why}); pair it again with \
                 `oma-agent setup --server {} --code CODE --force` (a code comes from `omactl runtimes connect`)",
                creds.server_url
            );
            refused_exit_code(std::env::var("XPC_SERVICE_NAME").ok().as_deref())
        }
    })
}

/// Keeps the backlog in the status file current: every second, rewritten
/// when it changed (a file write per second at most, none when idle).
async fn write_backlog(manager: Arc<Manager>, state: Arc<Mutex<DaemonState>>, state_file: PathBuf) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let backlog = manager.backlog();
        let mut state = state.lock().expect("status lock");
        if state.backlog != backlog {
            state.backlog = backlog;
            let _ = status_file::write(&state_file, &state);
        }
    }
}

/// The exit code when the control plane refuses the credentials: 3, which
/// the systemd unit does not restart (`RestartPreventExitStatus=3`). launchd
/// cannot spare one exit code from `KeepAlive`, so under its job (whose
/// label it passes as `XPC_SERVICE_NAME`) the daemon exits 0 instead:
/// restarting every few seconds cannot help until the machine is paired again.
fn refused_exit_code(launchd_job: Option<&str>) -> i32 {
    match launchd_job {
        Some(label) if label == oma_agent::service_unit::launchd::LABEL => 0,
        _ => 3,
    }
}

fn pid_alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

/// Prints whether this machine is paired and its daemon runs (as text, or
/// one JSON object); exits 0 only when both hold (1 otherwise), so scripts
/// and health checks can rely on it.
fn status(paths: &Paths, json: bool) -> anyhow::Result<i32> {
    let creds = credentials::load(paths)?;
    let state = status_file::read(&paths.state_file()).filter(|s| pid_alive(s.pid));
    // Sessions the machine holds: one state file each, beside the outboxes.
    let sessions = std::fs::read_dir(paths.outbox_dir())
        .map(|dir| {
            dir.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".state.json"))
                .count()
        })
        .unwrap_or(0);
    let report = detect_agents(paths)?;
    let ids: Vec<&str> = report.agents.iter().map(|a| a.id.as_str()).collect();
    let ok = creds.is_some() && state.is_some();
    if json {
        let value = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "paired": creds.is_some(),
            "runtime_id": creds.as_ref().map(|c| c.runtime_id.clone()),
            "server": creds.as_ref().map(|c| c.server_url.clone()),
            "daemon": {
                "running": state.is_some(),
                "pid": state.as_ref().map(|s| s.pid),
                "connected": state.as_ref().is_some_and(|s| s.connected),
                "status": state.as_ref().map(|s| s.status.clone()),
                "since_unix": state.as_ref().map(|s| s.since_unix),
            },
            "sessions": sessions,
            "backlog": state.as_ref().map(|s| serde_json::json!({
                "total": s.backlog_total(),
                "sessions": s.backlog,
            })),
            "last_error": state.as_ref().and_then(|s| s.last_error.as_ref()).map(|e| serde_json::json!({
                "message": e.message,
                "at_unix": e.at_unix,
            })),
            "agents": ids,
        });
        println!("{value}");
        return Ok(if ok { 0 } else { 1 });
    }
    match &creds {
        None => println!("paired:    no (run `oma-agent setup --server URL --code CODE`)"),
        Some(c) => println!("paired:    yes, runtime {} at {}", c.runtime_id, c.server_url),
    }
    match &state {
        Some(s) => println!("daemon:    running (pid {}), {}", s.pid, s.status),
        None => println!("daemon:    not running"),
    }
    println!("sessions:  {sessions}");
    if let Some(s) = &state {
        let waiting: Vec<String> = s
            .backlog
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(id, n)| format!("{id} {n}"))
            .collect();
        if waiting.is_empty() {
            println!("backlog:   none (every stored event is acknowledged)");
        } else {
            println!(
                "backlog:   {} events not yet acknowledged ({})",
                s.backlog_total(),
                waiting.join(", ")
            );
        }
        if let Some(e) = &s.last_error {
            println!("last error: {} (at {})", e.message, unix_time(e.at_unix));
        }
    }
    println!(
        "agents:    {}",
        if ids.is_empty() {
            "none found".to_owned()
        } else {
            ids.join(", ")
        }
    );
    Ok(if ok { 0 } else { 1 })
}

/// A Unix time in RFC 3339 (UTC).
fn unix_time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

fn agents(paths: &Paths) -> anyhow::Result<i32> {
    let report = detect_agents(paths)?;
    if report.agents.is_empty() {
        println!(
            "no ACP agent found on PATH or in {}",
            paths.agents_config_file().display()
        );
    }
    for agent in &report.agents {
        let mut line = format!("{:<10} {}", agent.id, agent.command.display());
        for arg in &agent.args {
            line.push(' ');
            line.push_str(arg);
        }
        match &agent.package {
            Some(package) => println!("{line}    ({:?}, {package})", agent.source),
            None => println!("{line}    ({:?})", agent.source),
        }
        for problem in &agent.problems {
            println!("           problem: {problem}");
        }
    }
    for missing in &report.missing {
        println!("missing    {missing}");
    }
    for disabled in &report.disabled {
        println!("disabled   {disabled}");
    }
    Ok(0)
}

fn show_policy(paths: &Paths) -> anyhow::Result<i32> {
    let file = paths.policy_file();
    let policy = Policy::load_with_process_path(&file)?;
    if file.exists() {
        println!("policy: {}", file.display());
    } else {
        println!("policy: {} (absent: nothing below is allowed)", file.display());
    }
    println!("local MCP servers (agents name them with --mcp-local NAME=ID):");
    if policy.mcp_servers.is_empty() {
        println!("  none");
    }
    for server in &policy.mcp_servers {
        let mut line = format!("  {:<10} {}", server.id, server.command.display());
        for arg in &server.args {
            line.push(' ');
            line.push_str(arg);
        }
        if !server.env.is_empty() {
            // Names only: values may be secrets.
            let names: Vec<&str> = server.env.keys().map(String::as_str).collect();
            line.push_str(&format!("    (env: {})", names.join(", ")));
        }
        println!("{line}");
    }
    println!("MCP URL allow-list (http/sse servers):");
    if policy.mcp_url_allow_list.is_empty() {
        println!("  none: no HTTP/SSE MCP server is allowed");
    }
    for url in &policy.mcp_url_allow_list {
        println!("  {url}");
    }
    if policy.accept_credentials_for.is_empty() {
        println!("server-sent credentials: taken for no ACP agent");
    } else {
        let ids: Vec<&str> = policy.accept_credentials_for.iter().map(String::as_str).collect();
        println!("server-sent credentials: taken for {}", ids.join(", "));
    }
    println!(
        "server-set base URLs (*_BASE_URL): {}",
        if policy.allow_server_base_url {
            "allowed"
        } else {
            "not allowed"
        }
    );
    Ok(0)
}

/// Removes the service, tells the control plane to forget this machine
/// (when it can be reached: its runtime and token are deleted there), and
/// removes the credentials and the data dir.
async fn uninstall(paths: &Paths) -> anyhow::Result<i32> {
    if let Ok(manager) = ServiceManager::current() {
        match service_unit::uninstall(manager, false) {
            Ok(report) => {
                for warning in report.warnings {
                    println!("note: {warning}");
                }
            }
            Err(e) => println!("note: {e}"),
        }
    }
    if let Some(creds) = credentials::load(paths)? {
        let hello = pb::Hello {
            machine_id: credentials::machine_id(paths)?,
            instance_id: uuid::Uuid::new_v4().simple().to_string(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            manifest: None,
            sessions: Vec::new(),
        };
        let deregistered = match endpoint(&creds.server_url, creds.ca_file.as_deref(), creds.insecure) {
            Ok(endpoint) => oma_agent::connection::deregister(endpoint, &creds.machine_token, hello).await,
            Err(e) => Err(e),
        };
        match deregistered {
            Ok(()) => println!(
                "the control plane at {} forgot runtime {} (its token no longer works)",
                creds.server_url, creds.runtime_id
            ),
            Err(why) => println!(
                "note: could not reach the control plane to remove runtime {} ({why}); delete it there with \
                 `omactl runtimes delete {}`",
                creds.runtime_id, creds.runtime_id
            ),
        }
    }
    if credentials::remove(paths)? {
        println!("removed credentials {}", paths.credentials_file().display());
    }
    match std::fs::remove_dir_all(&paths.data_dir) {
        Ok(()) => println!("removed {}", paths.data_dir.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => bail!("cannot remove {}: {e}", paths.data_dir.display()),
    }
    println!(
        "the machine id in {} is kept, so pairing again keeps this machine's identity",
        paths.config_dir.display()
    );
    Ok(0)
}

fn service(paths: &Paths, command: ServiceCommand, log_format: LogFormat) -> anyhow::Result<i32> {
    let manager = ServiceManager::current()?;
    match command {
        ServiceCommand::Install { dry_run, run } => {
            let mut args = vec!["run".to_owned()];
            args.extend(["--config-dir".to_owned(), paths.config_dir.display().to_string()]);
            args.extend(["--data-dir".to_owned(), paths.data_dir.display().to_string()]);
            if log_format == LogFormat::Json {
                args.extend(["--log-format".to_owned(), "json".to_owned()]);
            }
            args.extend(run.to_args());
            let spec = UnitSpec::for_current_exe(args)?;
            let report = service_unit::install(&spec, manager, dry_run)?;
            println!("{} unit: {}", report.manager, report.unit_path.display());
            if dry_run {
                println!("{}", report.contents);
            }
            for command in report.commands {
                println!("{}: {command}", if dry_run { "would run" } else { "ran" });
            }
            for note in report.notes {
                println!("note: {note}");
            }
        }
        ServiceCommand::Uninstall { dry_run } => {
            let report = service_unit::uninstall(manager, dry_run)?;
            println!(
                "{} unit {}: {}",
                report.manager,
                report.unit_path.display(),
                if report.removed { "removed" } else { "not present" }
            );
            for warning in report.warnings {
                println!("note: {warning}");
            }
        }
        ServiceCommand::Status => {
            let report = service_unit::status(manager)?;
            println!("{}", report.output);
            return Ok(report.exit_code.unwrap_or(1));
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {

    #[test]
    fn refused_credentials_stop_the_service_under_both_managers() {
        assert_eq!(refused_exit_code(None), 3);
        assert_eq!(refused_exit_code(Some("com.apple.Terminal")), 3);
        assert_eq!(refused_exit_code(Some("dev.oma.agent")), 0);
    }

    use super::*;

    #[test]
    fn max_sessions_defaults_and_refuses_zero() {
        let run = |extra: &[&str]| {
            Cli::try_parse_from(["oma-agent", "run"].iter().chain(extra)).map(|cli| match cli.command {
                Command::Run(args) => args.max_sessions,
                other => panic!("{other:?}"),
            })
        };
        assert_eq!(run(&[]).unwrap(), 64);
        assert_eq!(run(&["--max-sessions", "3"]).unwrap(), 3);
        assert!(run(&["--max-sessions", "0"]).is_err());
    }
}
