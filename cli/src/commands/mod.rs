//! The commands, one module per noun.

pub mod agents;
pub mod audit;
pub mod chat;
pub mod context;
pub mod generate;
mod live;
pub mod login;
pub mod runtimes;
pub mod secrets;
pub mod sessions;
pub mod tokens;
pub mod users;
pub mod whoami;

use std::{cell::OnceCell, path::PathBuf};

use anyhow::{Result, anyhow};
use clap::{ArgMatches, Args};
use serde_json::Value;

use crate::{
    Cli, Command, GlobalArgs,
    config::{self, Config},
    connection::{Api, Settings},
    error::{Failure, classify},
    output::{self, Format},
};

/// What every command needs: the options, the config file and, once
/// resolved, the connection settings.
pub struct Ctx {
    pub global: GlobalArgs,
    pub config_path: PathBuf,
    settings: OnceCell<Settings>,
}

impl Ctx {
    pub fn format(&self) -> Format {
        self.global.output
    }

    /// The connection settings: flags over the selected context.
    pub fn settings(&self) -> Result<&Settings> {
        if let Some(settings) = self.settings.get() {
            return Ok(settings);
        }
        let config = Config::load(&self.config_path)?;
        let settings = Settings::resolve(&self.global, &config)?;
        Ok(self.settings.get_or_init(|| settings))
    }

    /// A connection that sends the API token.
    pub async fn api(&self) -> Result<Api> {
        Api::connect(self.settings()?, true).await
    }

    /// A connection without credentials (for `ExchangeConnectCode`).
    pub async fn anonymous(&self) -> Result<Api> {
        Api::connect(self.settings()?, false).await
    }

    /// Prints `data` in the chosen format; `table` renders the table form.
    pub fn emit(&self, data: &Value, table: impl FnOnce() -> String) -> Result<()> {
        output::emit(self.format(), data, table)
    }
}

/// `--limit` of list commands.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Stop after this many items [default: all, following every page].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
}

/// `--yes` of the commands that delete or revoke.
#[derive(Debug, Args)]
pub struct ConfirmArgs {
    /// Do not ask first (on a terminal the command asks; a script is never
    /// asked).
    #[arg(short = 'y', long)]
    pub yes: bool,
}

/// On a terminal, without `--yes`: asks `question [y/N]` and goes on only
/// on `y` or `yes`; anything else stops the command with exit code 1 and
/// nothing done. Without a terminal (scripts, pipes) it does not ask.
pub fn confirm(args: &ConfirmArgs, question: &str) -> Result<()> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    if args.yes || !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return Ok(());
    }
    let mut stderr = std::io::stderr();
    write!(stderr, "{question} [y/N] ")?;
    stderr.flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err(Failure::new(
            crate::error::exit::GENERIC,
            "nothing was done (answer y to go on, or pass --yes)",
        )
        .into()),
    }
}

/// A field the server must send, or an error saying it did not.
pub fn required<T>(value: Option<T>, what: &str) -> Result<T> {
    value.ok_or_else(|| anyhow!("the control plane answered without the {what}"))
}

/// Whether `command` prints resources that have ids (or, for contexts,
/// names): the ones `-o name` applies to. Checked before the command runs:
/// e.g. `tokens create -o name` would mint a token and lose its secret.
fn prints_resources(command: &Command) -> bool {
    use {runtimes::Command as R, sessions::Command as S, tokens::Command as T};
    matches!(
        command,
        Command::Users(_)
            | Command::Agents(_)
            | Command::Audit(_)
            | Command::Context(context::Command::List)
            | Command::Tokens(T::List { .. } | T::Revoke { .. })
            | Command::Runtimes(R::List(_) | R::Get { .. } | R::Delete { .. })
            | Command::Sessions(S::Create { .. } | S::List { .. } | S::Get { .. } | S::Delete { .. })
            | Command::Secrets(_)
    )
}

/// `omactl NOUN VERB` as typed (the names of the subcommands).
fn command_line(matches: &ArgMatches) -> String {
    let mut words = vec!["omactl"];
    let mut level = matches;
    while let Some((name, sub)) = level.subcommand() {
        words.push(name);
        level = sub;
    }
    words.join(" ")
}

/// Runs the parsed command line.
pub async fn run(cli: Cli, matches: &ArgMatches) -> Result<(), Failure> {
    let config_path = config::path(cli.global.config.as_deref()).map_err(|e| classify(e, None))?;
    let mut global = cli.global;
    if global.token_stdin {
        if matches!(cli.command, Command::Chat(_)) {
            return Err(Failure::usage(
                "chat reads its prompts from stdin: give the token with --token, OMA_TOKEN or a context",
            ));
        }
        if let Command::Secrets(command) = &cli.command
            && secrets::reads_stdin(command)
        {
            return Err(Failure::usage(
                "--value-stdin and --token-stdin both read stdin: give the token with --token, OMA_TOKEN or a context, or the value with --value-file",
            ));
        }
        global.token = Some(login::token_from_stdin().map_err(|e| classify(e, None))?);
    }
    if global.output == Format::Name && !prints_resources(&cli.command) {
        return Err(Failure::usage(format!(
            "-o name prints the ids of the resources a command lists, gets, creates or deletes, and `{}` prints none: use -o table, json or yaml",
            command_line(matches)
        )));
    }
    let ctx = Ctx {
        global,
        config_path,
        settings: OnceCell::new(),
    };
    let result = match cli.command {
        Command::Context(command) => context::run(command, &ctx, matches),
        Command::Login(args) => login::run(args, &ctx, matches).await,
        Command::Whoami => whoami::run(&ctx).await,
        Command::Users(command) => users::run(command, &ctx).await,
        Command::Tokens(command) => tokens::run(command, &ctx).await,
        Command::Runtimes(command) => runtimes::run(command, &ctx).await,
        Command::Agents(command) => agents::run(command, &ctx).await,
        Command::Sessions(command) => sessions::run(command, &ctx).await,
        Command::Audit(command) => audit::run(command, &ctx).await,
        Command::Secrets(command) => secrets::run(command, &ctx).await,
        Command::Chat(args) => chat::run(args, &ctx).await,
        Command::Completion { shell } => generate::completion(shell),
        Command::Man { dir } => generate::man(&dir),
    };
    result.map_err(|e| classify(e, ctx.settings.get().map(|s| s.server.as_str())))
}
