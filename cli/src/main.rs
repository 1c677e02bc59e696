//! `omactl`: the admin CLI of the OMA runtime, over the public gRPC API.

mod commands;
mod config;
mod connection;
mod duration;
mod error;
mod output;
mod render;
mod resolve;
mod spec;
mod view;

use std::{io::Write, path::PathBuf, process::ExitCode};

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::{error::Failure, output::Format};

/// Administer an OMA runtime control plane: users, tokens, runtimes, agents,
/// sessions, secrets and the audit log.
#[derive(Debug, Parser)]
#[command(name = "omactl", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options of every command. Each overrides the same setting of the
/// selected context.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Use this context of the config file instead of the current one.
    #[arg(long, global = true, env = "OMA_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,
    /// Control plane URL: https://HOST:PORT, or http:// to a loopback host.
    #[arg(long, global = true, env = "OMA_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// API token (oma_…), sent as `authorization: Bearer <token>`.
    #[arg(long, global = true, env = "OMA_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Read the API token from the first line of stdin instead (it never
    /// lands in the shell's history or the process list).
    #[arg(long, global = true, conflicts_with = "token")]
    pub token_stdin: bool,
    /// PEM file of the CA to trust for https:// instead of the system roots.
    #[arg(long, global = true, env = "OMA_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Allow plaintext http:// to a host that is not loopback.
    #[arg(long, global = true, env = "OMA_INSECURE", value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure: bool,
    /// Output format (`wide` and `name` are for lists; `name` prints only
    /// ids, one per line, also for get, create and delete).
    #[arg(short, long, global = true, env = "OMA_OUTPUT", value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Config file [default: $OMACTL_CONFIG, else omactl/config.toml in the
    /// user's config dir: $XDG_CONFIG_HOME or ~/.config on Linux,
    /// ~/Library/Application Support on macOS, %APPDATA% on Windows].
    #[arg(long, global = true, env = "OMACTL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage contexts: named servers and tokens in the config file.
    #[command(
        subcommand,
        after_help = "Examples:\n  omactl context set prod --server https://oma.example.com\n  omactl context use prod"
    )]
    Context(commands::context::Command),
    /// Save a context for a control plane and a token, after checking the
    /// token there; it becomes the current context.
    ///
    /// The token is asked for without echo on a terminal, else read from
    /// the first line of stdin (or --token-stdin / --token / OMA_TOKEN).
    #[command(
        after_help = "Examples:\n  omactl login --server https://oma.example.com\n  pass show oma/ci | omactl login ci --server https://oma.example.com --token-stdin"
    )]
    Login(commands::login::Args),
    /// Show the tenant, user and token the token belongs to.
    #[command(after_help = "Examples:\n  omactl whoami\n  omactl --context prod whoami -o json")]
    Whoami,
    /// Manage the users of the tenant.
    #[command(
        subcommand,
        after_help = "Examples:\n  omactl users list\n  omactl users create dana"
    )]
    Users(commands::users::Command),
    /// Mint, list and revoke API tokens.
    #[command(
        subcommand,
        after_help = "Examples:\n  omactl tokens create --name laptop --ttl 30d\n  omactl tokens list"
    )]
    Tokens(commands::tokens::Command),
    /// Pair machines and manage runtimes. A runtime is named by its id
    /// (rt_…) or its name.
    #[command(
        subcommand,
        after_help = "Examples:\n  omactl runtimes connect\n  omactl runtimes list -o wide\n  omactl runtimes get dana-laptop"
    )]
    Runtimes(commands::runtimes::Command),
    /// Manage agent configurations. An agent is named by its id (agt_…) or
    /// its name.
    #[command(
        subcommand,
        after_help = "Examples:\n  omactl agents list\n  omactl agents get helper -o yaml"
    )]
    Agents(commands::agents::Command),
    /// Manage sessions of agents.
    #[command(
        subcommand,
        after_help = "Examples:\n  omactl sessions create --agent helper --wait\n  omactl sessions prompt ses_… 'echo hello'\n  omactl sessions list -o wide"
    )]
    Sessions(commands::sessions::Command),
    /// Read the audit log.
    #[command(subcommand, after_help = "Example: omactl audit list --since 24h")]
    Audit(commands::audit::Command),
    /// Manage the secret store: credentials kept encrypted by the control
    /// plane. Values are write-only: read from a file or stdin, never from
    /// the command line, and never printed.
    #[command(
        subcommand,
        after_help = "Examples:\n  pass show anthropic | omactl secrets create anthropic-key --kind api_key --value-stdin\n  omactl secrets list"
    )]
    Secrets(commands::secrets::Command),
    /// Talk with an agent: prompt after prompt in one session.
    ///
    /// Each line read from stdin is a prompt; its turn is printed as
    /// `sessions prompt` prints it (`-o json`: JSON Lines of the events).
    ///
    /// On a terminal, lines are read after a `> ` prompt; `/cancel` cancels
    /// the running turn, `/quit` or Ctrl-D quits; Ctrl-C cancels the running
    /// turn (a second one quits with 130) and quits at the `> ` prompt. When
    /// stdout is a terminal too, permission requests are asked about (`y`,
    /// `n`, an option id, or an empty line to leave it to others).
    ///
    /// When stdin is not a terminal, its lines are sent one after the other,
    /// each once the previous turn has ended, and the session's id is printed
    /// on stderr. Exit code: 0 at the end of stdin (or /quit), 1 if a turn
    /// ended in an error; a refused prompt exits at once with its error.
    #[command(
        after_help = "Examples:\n  omactl chat --agent helper --title 'pairing'\n  omactl chat --session ses_…\n  printf 'echo one\\necho two\\n' | omactl chat --agent helper"
    )]
    Chat(commands::chat::Args),
    /// Print the completion script of a shell.
    #[command(
        after_help = "Examples:\n  omactl completion bash > ~/.local/share/bash-completion/completions/omactl\n  omactl completion zsh > \"${fpath[1]}/_omactl\"\n  omactl completion fish > ~/.config/fish/completions/omactl.fish"
    )]
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (omactl.1 and one page per subcommand) into a folder.
    #[command(after_help = "Example: omactl man ~/.local/share/man/man1 && man omactl-sessions-create")]
    Man {
        /// The folder (created if missing).
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    // One crypto provider for rustls, chosen here rather than by feature
    // unification.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(error::exit::GENERIC, format!("cannot start the async runtime: {e}")))
        .and_then(|runtime| {
            let result = runtime.block_on(commands::run(cli, &matches));
            // A read of stdin (chat, answering permission requests) cannot be
            // cancelled: do not wait for it.
            runtime.shutdown_background();
            result
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if !failure.message.is_empty() {
                let _ = writeln!(std::io::stderr(), "error: {}", failure.message);
            }
            ExitCode::from(failure.exit)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command's `--help` ends with examples.
    #[test]
    fn every_command_has_examples() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
                let path = format!("{path} {}", sub.get_name());
                let help = sub
                    .get_after_help()
                    .or(sub.get_after_long_help())
                    .map(|h| h.to_string());
                if !help.is_some_and(|h| h.starts_with("Example")) {
                    missing.push(path.clone());
                }
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "omactl", &mut missing);
        assert!(missing.is_empty(), "without examples: {missing:?}");
    }
}
