//! The `oma-agent` binary.

mod cli;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use oma_agent::logging::{self, LogFormat};
use oma_agent::paths::Paths;

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
    Setup(SetupArgs),
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
struct SetupArgs {
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
    /// Another replica of the same control plane (repeat for each): the
    /// daemon moves to the next URL each time its stream is lost, so a
    /// replica that dies costs one failed attempt. Checked like --server.
    #[arg(long = "also-server", value_name = "URL")]
    also_server: Vec<String>,
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

impl RunArgs {
    /// The same options as `run` arguments, every one spelled out (the
    /// service must not depend on the installing shell's environment).
    pub(crate) fn to_args(&self) -> Vec<String> {
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
        Command::Setup(args) => runtime.block_on(cli::setup::setup(&paths, args)),
        Command::Run(args) => runtime.block_on(cli::daemon::daemon(&paths, args)),
        Command::Status { json } => cli::status::status(&paths, json),
        Command::Agents => cli::agents::agents(&paths),
        Command::Policy => cli::policy::show_policy(&paths),
        Command::Uninstall => runtime.block_on(cli::uninstall::uninstall(&paths)),
        Command::Service { command } => cli::service::service(&paths, command, log_format),
    }
}

#[cfg(test)]
mod tests {

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
