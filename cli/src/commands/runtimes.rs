//! `omactl runtimes …`: pairing machines and managing runtimes.

use std::time::SystemTime;

use anyhow::Result;
use clap::Subcommand;
use oma_proto::pb;
use serde_json::{Value, json};

use super::{ConfirmArgs, Ctx, ListArgs, required};
use crate::{
    connection::collect_pages,
    duration,
    error::Failure,
    output::{self, Table},
    resolve::{self, Resource},
    view,
};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a single-use connect code and print the `oma-agent setup`
    /// command that pairs a machine with it.
    #[command(after_help = "Examples:\n  omactl runtimes connect\n  omactl runtimes connect --owner dana --ttl 30m")]
    Connect {
        /// The user who will own the runtime, by id (usr_…) or name
        /// [default: you]; only admins may name another user.
        #[arg(long, value_name = "USER")]
        owner: Option<String>,
        /// How long the code stays valid, e.g. 10m [default: 10m; at most 1h].
        #[arg(long, value_parser = duration::parse_seconds)]
        ttl: Option<u64>,
    },
    /// Exchange a connect code for a new runtime and its machine token, as
    /// `oma-agent setup` does (for scripts and tests; needs no API token).
    #[command(
        after_help = "Example: omactl runtimes exchange --code XXXX-XXXX-XXXX-XXXX --machine-id ci-runner-1 --name ci"
    )]
    Exchange {
        /// The connect code.
        #[arg(long)]
        code: String,
        /// The machine's stable id (1–128 printable characters).
        #[arg(long)]
        machine_id: String,
        /// A label for the runtime [default: the machine id].
        #[arg(long)]
        name: Option<String>,
    },
    /// List the tenant's runtimes.
    ///
    /// `-o wide` adds the OS and architecture, oma-agent version, machine id,
    /// workspaces and creation time; `-o name` prints only the ids.
    #[command(after_help = "Examples:\n  omactl runtimes list -o wide\n  omactl runtimes list -o name")]
    List(ListArgs),
    /// Show a runtime with its manifest: ACP agents and their local skills.
    #[command(after_help = "Examples:\n  omactl runtimes get dana-laptop\n  omactl runtimes get rt_… -o yaml")]
    Get {
        /// The runtime: its id (rt_…) or name.
        #[arg(value_name = "RUNTIME")]
        id: String,
    },
    /// Delete a runtime and revoke its machine token at once.
    #[command(after_help = "Examples:\n  omactl runtimes delete old-laptop\n  omactl runtimes delete rt_… --yes")]
    Delete {
        /// The runtime: its id (rt_…) or name.
        #[arg(value_name = "RUNTIME")]
        id: String,
        #[command(flatten)]
        confirm: ConfirmArgs,
    },
}

pub async fn run(command: Command, ctx: &Ctx) -> Result<()> {
    match command {
        Command::Connect { owner, ttl } => {
            let owner_user_id = match owner {
                Some(owner) => resolve::id(ctx, Resource::User, "--owner", &owner).await?,
                None => String::new(),
            };
            let ttl_seconds = u32::try_from(ttl.unwrap_or(0))
                .map_err(|_| Failure::usage("--ttl is far too long: a connect code lives at most 1h"))?;
            let api = ctx.api().await?;
            let settings = ctx.settings()?;
            let request = pb::CreateConnectCodeRequest {
                owner_user_id,
                ttl_seconds,
            };
            let response = api.runtimes().create_connect_code(request).await?.into_inner();
            let ca_file = settings.ca_file.as_ref().map(|p| p.display().to_string());
            let setup_command = setup_command(&settings.server, &response.code, ca_file.as_deref());
            let data = json!({
                "code": response.code,
                "expire_time": output::time_value(response.expire_time.as_ref()),
                "owner_user_id": response.owner_user_id,
                "setup_command": setup_command,
            });
            ctx.emit(&data, || {
                let left = response.expire_time.as_ref().map(|e| {
                    let now = prost_types::Timestamp::from(SystemTime::now());
                    format!(
                        " (in {})",
                        duration::human(e.seconds.saturating_sub(now.seconds).max(0) as u64)
                    )
                });
                let mut text = output::record(&[
                    ("code", response.code.clone()),
                    (
                        "expires",
                        output::time(response.expire_time.as_ref()) + left.as_deref().unwrap_or(""),
                    ),
                    ("owner", response.owner_user_id.clone()),
                ]);
                text.push_str("\nRun this on the machine to pair it (the code works once):\n\n");
                text.push_str(&format!("  {setup_command}\n"));
                text
            })
        }
        Command::Exchange { code, machine_id, name } => {
            let request = pb::ExchangeConnectCodeRequest {
                code,
                machine_id,
                name: name.unwrap_or_default(),
                ..Default::default()
            };
            let response = ctx
                .anonymous()
                .await?
                .runtimes()
                .exchange_connect_code(request)
                .await?
                .into_inner();
            let runtime = required(response.runtime, "runtime")?;
            let machine_token = response.machine_token;
            let data = json!({ "runtime": view::runtime(&runtime), "machine_token": machine_token });
            ctx.emit(&data, || {
                output::record(&[
                    ("runtime", runtime.id.clone()),
                    ("name", runtime.name.clone()),
                    ("machine id", runtime.machine_id.clone()),
                    ("owner", runtime.owner_user_id.clone()),
                    ("machine token", machine_token.clone()),
                ])
            })
        }
        Command::List(list) => {
            let client = ctx.api().await?.runtimes();
            let runtimes = collect_pages(list.limit, |page| {
                let mut client = client.clone();
                async move {
                    let r = client
                        .list_runtimes(pb::ListRuntimesRequest { page: Some(page) })
                        .await?
                        .into_inner();
                    Ok((r.runtimes, r.next_page_token))
                }
            })
            .await?;
            ctx.emit(&Value::Array(runtimes.iter().map(view::runtime).collect()), || {
                let mut table = Table::with_wide(
                    &["ID", "NAME", "OWNER", "STATUS", "LAST SEEN", "ACP AGENTS"],
                    &["OS/ARCH", "AGENT VERSION", "MACHINE ID", "WORKSPACES", "CREATED"],
                    ctx.format().wide(),
                );
                for r in &runtimes {
                    let agents: Vec<&str> = r
                        .manifest
                        .iter()
                        .flat_map(|m| &m.acp_agents)
                        .map(|a| a.id.as_str())
                        .collect();
                    let workspaces: Vec<&str> = r
                        .manifest
                        .iter()
                        .flat_map(|m| &m.workspaces)
                        .map(|w| w.id.as_str())
                        .collect();
                    table.row([
                        r.id.clone(),
                        r.name.clone(),
                        r.owner_user_id.clone(),
                        view::runtime_status(r.status),
                        output::time(r.last_seen_time.as_ref()),
                        agents.join(","),
                        os_arch(r),
                        r.agent_version.clone(),
                        r.machine_id.clone(),
                        workspaces.join(","),
                        output::time(r.create_time.as_ref()),
                    ]);
                }
                table.render()
            })
        }
        Command::Get { id } => {
            let runtime_id = resolve::id(ctx, Resource::Runtime, "RUNTIME", &id).await?;
            let response = ctx
                .api()
                .await?
                .runtimes()
                .get_runtime(pb::GetRuntimeRequest { runtime_id })
                .await?
                .into_inner();
            let runtime = required(response.runtime, "runtime")?;
            ctx.emit(&view::runtime(&runtime), || describe(&runtime))
        }
        Command::Delete { id, confirm } => {
            let runtime_id = resolve::id(ctx, Resource::Runtime, "RUNTIME", &id).await?;
            super::confirm(
                &confirm,
                &format!("Delete runtime {runtime_id}? Its machine is disconnected and must be paired again."),
            )?;
            let request = pb::DeleteRuntimeRequest {
                runtime_id: runtime_id.clone(),
            };
            ctx.api().await?.runtimes().delete_runtime(request).await?;
            ctx.emit(&json!({ "deleted": runtime_id }), || {
                format!("Runtime {runtime_id} deleted; its machine token is revoked.\n")
            })
        }
    }
}

/// The table form of `runtimes get`: the runtime, its ACP agents, and the
/// local skills of each.
fn describe(r: &pb::Runtime) -> String {
    let status = match &r.status_time {
        Some(since) => format!("{} since {}", view::runtime_status(r.status), output::time(Some(since))),
        None => view::runtime_status(r.status),
    };
    let mut text = output::record(&[
        ("id", r.id.clone()),
        ("name", r.name.clone()),
        ("owner", r.owner_user_id.clone()),
        ("machine id", r.machine_id.clone()),
        ("status", status),
        ("last seen", output::time(r.last_seen_time.as_ref())),
        ("agent version", r.agent_version.clone()),
        ("os/arch", os_arch(r)),
        ("created", output::time(r.create_time.as_ref())),
    ]);
    let agents: Vec<&pb::AcpAgentInfo> = r.manifest.iter().flat_map(|m| &m.acp_agents).collect();
    if agents.is_empty() {
        text.push_str("\nNo ACP agents reported yet.\n");
        text.push_str(&describe_mcp(r));
        return text;
    }
    let mut table = Table::new(&["ACP AGENT", "NAME", "VERSION", "LOCAL SKILLS"]);
    for a in &agents {
        table.row([
            a.id.clone(),
            a.name.clone(),
            a.version.clone(),
            a.local_skills.len().to_string(),
        ]);
    }
    text.push('\n');
    text.push_str(&table.render());
    if agents.iter().any(|a| !a.local_skills.is_empty()) {
        let mut skills = Table::new(&["ACP AGENT", "SKILL", "SOURCE", "PLUGIN", "DESCRIPTION"]);
        for a in &agents {
            for s in &a.local_skills {
                skills.row([
                    a.id.clone(),
                    s.id.clone(),
                    view::skill_source(s.source),
                    s.plugin_name.clone(),
                    s.description.clone(),
                ]);
            }
        }
        text.push('\n');
        text.push_str(&skills.render());
    }
    text.push_str(&describe_mcp(r));
    text
}

/// `linux/x86_64`, or empty before the machine said.
fn os_arch(r: &pb::Runtime) -> String {
    if r.os.is_empty() {
        String::new()
    } else {
        format!("{}/{}", r.os, r.arch)
    }
}

/// The MCP servers the machine defines itself (agents name them with
/// `--mcp-local NAME=ID`) and the HTTP/SSE URLs it allows.
fn describe_mcp(r: &pb::Runtime) -> String {
    let Some(manifest) = &r.manifest else {
        return String::new();
    };
    let mut text = String::new();
    if !manifest.local_mcp_servers.is_empty() {
        let mut table = Table::new(&["LOCAL MCP SERVER", "NAME", "DESCRIPTION"]);
        for m in &manifest.local_mcp_servers {
            table.row([m.id.clone(), m.name.clone(), m.description.clone()]);
        }
        text.push('\n');
        text.push_str(&table.render());
    }
    if r.last_seen_time.is_some() {
        let urls = if manifest.mcp_url_allow_list.is_empty() {
            "none (no HTTP/SSE MCP server is allowed)".to_owned()
        } else {
            manifest.mcp_url_allow_list.join(", ")
        };
        text.push_str(&format!("\nMCP URL allow-list: {urls}\n"));
    }
    text
}

/// The `oma-agent setup` line to run on the machine, each word quoted for a
/// POSIX shell only when it needs to be.
fn setup_command(server: &str, code: &str, ca_file: Option<&str>) -> String {
    let mut words = vec!["oma-agent", "setup", "--server", server, "--code", code];
    if let Some(ca_file) = ca_file {
        words.extend(["--ca-file", ca_file]);
    }
    shell_words::join(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_line_quotes_only_when_needed() {
        assert_eq!(
            setup_command("https://oma.example:443", "ABCD-1234", None),
            "oma-agent setup --server https://oma.example:443 --code ABCD-1234"
        );
        let line = setup_command("https://oma.example", "c", Some("/tmp/it's my ca.pem"));
        assert_eq!(
            line,
            r"oma-agent setup --server https://oma.example --code c --ca-file '/tmp/it'\''s my ca.pem'"
        );
        // What a shell reads back is the words as given.
        assert_eq!(
            shell_words::split(&line).unwrap().last().map(String::as_str),
            Some("/tmp/it's my ca.pem")
        );
        assert!(setup_command("https://oma.example", "", None).ends_with("--code ''"));
    }
}
