//! `omactl login`: a context saved only once its token has been checked at
//! the control plane, with the token never typed on the command line.

use std::io::IsTerminal as _;

use anyhow::Result;
use oma_proto::pb;
use serde_json::json;

use super::{Ctx, required};
use crate::{
    config::{Config, Context},
    connection::{Api, Settings},
    error::Failure,
    view,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The context's name.
    #[arg(default_value = "default")]
    name: String,
}

pub async fn run(args: Args, ctx: &Ctx, matches: &clap::ArgMatches) -> Result<()> {
    let name = args.name;
    super::context::check_name(&name)?;
    let global = &ctx.global;
    let server = global
        .server
        .clone()
        .ok_or_else(|| Failure::usage(format!("give the control plane: omactl login {name} --server URL")))?;
    let ca_file = match &global.ca_file {
        Some(path) => Some(std::path::absolute(path)?),
        None => None,
    };
    let token = match &global.token {
        Some(token) => token.clone(),
        None => ask_token()?,
    };
    let settings = Settings {
        server: server.clone(),
        token: Some(token.clone()),
        ca_file: ca_file.clone(),
        insecure: global.insecure,
    };
    let who = Api::connect(&settings, true)
        .await?
        .identity()
        .who_am_i(pb::WhoAmIRequest {})
        .await?
        .into_inner();
    let tenant = required(who.tenant, "tenant")?;
    let user = required(who.user, "user")?;

    let path = &ctx.config_path;
    let mut config = Config::load(path)?;
    config.contexts.insert(
        name.clone(),
        Context {
            server: server.clone(),
            token: Some(token),
            ca_file,
            // Saved only when typed: an OMA_INSECURE of this shell must not
            // become the context's.
            insecure: global.insecure && super::context::given_on_command_line(matches, "insecure"),
        },
    );
    config.current_context = Some(name.clone());
    config.save(path)?;
    let data = json!({
        "context": name,
        "server": server,
        "tenant": view::tenant(&tenant),
        "user": view::user(&user),
    });
    ctx.emit(&data, || {
        format!(
            "Logged in to {server} as {} ({}) of tenant {}; context {name:?} is current ({}).\n",
            user.name,
            view::role(user.role),
            tenant.name,
            path.display()
        )
    })
}

/// Without echo on a terminal; else the first line of stdin.
fn ask_token() -> Result<String> {
    if std::io::stdin().is_terminal() {
        let token = rpassword::prompt_password("API token (oma_…): ")?;
        let token = token.trim();
        if token.is_empty() {
            return Err(Failure::usage("no token given").into());
        }
        return Ok(token.to_owned());
    }
    token_from_stdin()
}

/// The token on the first line of stdin (`--token-stdin`).
pub fn token_from_stdin() -> Result<String> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let token = line.trim();
    if token.is_empty() {
        return Err(Failure::usage("stdin held no token: pipe the API token (oma_…) as its first line").into());
    }
    Ok(token.to_owned())
}
