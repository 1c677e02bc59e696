//! `omactl context …`: named connection settings in the config file.

use anyhow::Result;
use clap::{ArgMatches, Subcommand, parser::ValueSource};
use serde_json::{Value, json};

use super::Ctx;
use crate::{
    config::{self, Config, Context},
    connection::{self, Settings},
    error::Failure,
    output::{self, Table},
};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or replace a context from the --server, --token, --ca-file and
    /// --insecure given on this command line. The first context becomes the
    /// current one.
    #[command(after_help = "Example: omactl context set prod --server https://oma.example.com --token oma_…")]
    Set {
        /// The context's name.
        name: String,
    },
    /// Make a context the current one.
    #[command(after_help = "Example: omactl context use prod")]
    Use {
        /// The context's name.
        name: String,
    },
    /// List the contexts (`-o name`: only their names).
    #[command(after_help = "Examples:\n  omactl context list\n  omactl context list -o name")]
    List,
    /// Show a context, its token masked.
    #[command(after_help = "Examples:\n  omactl context show\n  omactl context show prod -o json")]
    Show {
        /// The context's name [default: --context, else the current one].
        name: Option<String>,
    },
    /// Delete a context.
    #[command(after_help = "Example: omactl context delete old-staging")]
    Delete {
        /// The context's name.
        name: String,
    },
}

pub fn run(command: Command, ctx: &Ctx, matches: &ArgMatches) -> Result<()> {
    let path = &ctx.config_path;
    let mut config = Config::load(path)?;
    match command {
        Command::Set { name } => {
            check_name(&name)?;
            let given = |id: &str| given_on_command_line(matches, id);
            let global = &ctx.global;
            let server = global.server.clone().filter(|_| given("server")).ok_or_else(|| {
                Failure::usage(format!(
                    "give the context's server: omactl context set {name} --server URL"
                ))
            })?;
            let ca_file = match global.ca_file.as_ref().filter(|_| given("ca_file")) {
                Some(path) => Some(std::path::absolute(path)?),
                None => None,
            };
            let context = Context {
                server,
                token: global.token.clone().filter(|_| given("token") || global.token_stdin),
                ca_file,
                insecure: global.insecure && given("insecure"),
            };
            // Refuse now what every later command would refuse.
            connection::endpoint(&Settings {
                server: context.server.clone(),
                token: None,
                ca_file: context.ca_file.clone(),
                insecure: context.insecure,
            })?;
            config.contexts.insert(name.clone(), context);
            if config
                .current_context
                .as_ref()
                .is_none_or(|c| !config.contexts.contains_key(c))
            {
                config.current_context = Some(name.clone());
            }
            config.save(path)?;
            let current = config.current_context.as_deref() == Some(name.as_str());
            let data = view(&name, &config.contexts[&name], current);
            ctx.emit(&data, || {
                let note = if current { " (current)" } else { "" };
                format!("Context {name:?} saved in {}{note}.\n", path.display())
            })
        }
        Command::Use { name } => {
            config.context(&name)?;
            config.current_context = Some(name.clone());
            config.save(path)?;
            ctx.emit(&json!({ "current_context": name }), || {
                format!("Current context is now {name:?}.\n")
            })
        }
        Command::List => {
            let current = config.current_context.as_deref();
            let data: Vec<Value> = config
                .contexts
                .iter()
                .map(|(name, c)| view(name, c, current == Some(name.as_str())))
                .collect();
            ctx.emit(&Value::Array(data), || {
                let mut table = Table::new(&["NAME", "SERVER", "TOKEN", "CURRENT"]);
                for (name, c) in &config.contexts {
                    let is_current = if current == Some(name.as_str()) { "yes" } else { "no" };
                    table.row([name.clone(), c.server.clone(), masked(c), is_current.to_owned()]);
                }
                table.render()
            })
        }
        Command::Show { name } => {
            let name = name
                .or_else(|| ctx.global.context.clone())
                .or_else(|| config.current_context.clone())
                .ok_or_else(|| {
                    Failure::usage("there is no current context: name one, or create one with `omactl context set`")
                })?;
            let context = config.context(&name)?;
            let current = config.current_context.as_deref() == Some(name.as_str());
            ctx.emit(&view(&name, context, current), || {
                output::record(&[
                    ("name", name.clone()),
                    ("server", context.server.clone()),
                    ("token", masked(context)),
                    (
                        "ca file",
                        context
                            .ca_file
                            .as_ref()
                            .map(|p| p.display().to_string())
                            .unwrap_or_default(),
                    ),
                    ("insecure", context.insecure.to_string()),
                    ("current", current.to_string()),
                ])
            })
        }
        Command::Delete { name } => {
            config.context(&name)?;
            config.contexts.remove(&name);
            if config.current_context.as_deref() == Some(name.as_str()) {
                config.current_context = None;
            }
            config.save(path)?;
            ctx.emit(&json!({ "deleted": name }), || format!("Context {name:?} deleted.\n"))
        }
    }
}

/// Refuses a context name that could not be written or shown on one line.
pub fn check_name(name: &str) -> Result<(), Failure> {
    if name.trim().is_empty() || name.chars().any(char::is_control) {
        return Err(Failure::usage("a context name must be non-empty text on one line"));
    }
    Ok(())
}

/// Whether a global option was typed on the command line (not taken from its
/// environment variable, which must not leak into the file).
pub fn given_on_command_line(matches: &ArgMatches, id: &str) -> bool {
    let mut level = matches;
    loop {
        if level.value_source(id) == Some(ValueSource::CommandLine) {
            return true;
        }
        match level.subcommand() {
            Some((_, sub)) => level = sub,
            None => return false,
        }
    }
}

fn masked(context: &Context) -> String {
    context.token.as_deref().map(config::mask_token).unwrap_or_default()
}

fn view(name: &str, context: &Context, current: bool) -> Value {
    json!({
        "name": name,
        "server": context.server,
        "token": context.token.as_deref().map(config::mask_token),
        "ca_file": context.ca_file,
        "insecure": context.insecure,
        "current": current,
    })
}
