//! `omactl agents …`: agent configurations.

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};
use clap::{Args, Subcommand};
use oma_proto::{
    model::{self, AgentField},
    pb,
};
use serde_json::{Value, json};

use super::{ConfirmArgs, Ctx, ListArgs, required};
use crate::{
    connection::collect_pages,
    error::Failure,
    output::{self, Table},
    resolve::{self, Resource},
    spec::{self, BindingPatch, Edit, Policy},
    view,
};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an agent from flags, a spec file, or both (flags replace the
    /// file's fields).
    #[command(
        after_help = "Examples:\n  omactl agents create helper --system-prompt 'You help.' --runtime dana-laptop --acp-agent claude\n  omactl agents create --from-file helper.yaml --permission-policy ask"
    )]
    Create(Box<CreateArgs>),
    /// Change exactly the fields given by flags (or present in --from-file);
    /// every other field stays as stored.
    #[command(
        after_help = "Examples:\n  omactl agents update helper --system-prompt-file prompt.md\n  omactl agents update agt_… --runtime ci-runner --expected-version 3\n  omactl agents get helper -o yaml > helper.yaml && omactl agents update helper --from-file helper.yaml"
    )]
    Update(Box<UpdateArgs>),
    /// Show an agent.
    #[command(after_help = "Examples:\n  omactl agents get helper\n  omactl agents get agt_… -o yaml")]
    Get {
        /// The agent: its id (agt_…) or name.
        #[arg(value_name = "AGENT")]
        id: String,
    },
    /// List the tenant's agents.
    ///
    /// `-o wide` adds the description, default mode and model, skill and MCP
    /// server counts, creator and creation time; `-o name` prints only the
    /// ids.
    #[command(after_help = "Examples:\n  omactl agents list -o wide\n  omactl agents list -o name")]
    List(ListArgs),
    /// Delete an agent; its sessions keep their records.
    #[command(after_help = "Examples:\n  omactl agents delete helper\n  omactl agents delete agt_… --yes")]
    Delete {
        /// The agent: its id (agt_…) or name.
        #[arg(value_name = "AGENT")]
        id: String,
        #[command(flatten)]
        confirm: ConfirmArgs,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The agent's name: lowercase letters, digits, '.', '_' and '-'
    /// [required unless the spec file has one].
    pub name: Option<String>,
    #[command(flatten)]
    pub spec: SpecArgs,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// The agent: its id (agt_…) or name.
    #[arg(value_name = "AGENT")]
    pub id: String,
    /// Rename the agent.
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Remove the runtime binding; the agent cannot start sessions until
    /// bound again.
    #[arg(long, conflicts_with_all = ["runtime", "acp_agent", "skill_blocklist"])]
    pub unbind: bool,
    /// Update only if the agent is still at this version (else the update
    /// is aborted).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub expected_version: Option<u64>,
}

/// The agent fields settable by flags. A list flag replaces the whole list.
#[derive(Debug, Args)]
pub struct SpecArgs {
    /// Read an agent spec: YAML, or JSON when the name ends in .json; `-`
    /// reads stdin. The format is what `agents get -o yaml` prints under
    /// `spec`.
    #[arg(long, value_name = "FILE")]
    pub from_file: Option<PathBuf>,
    /// Free text for humans.
    #[arg(long)]
    pub description: Option<String>,
    /// The system prompt.
    #[arg(long, value_name = "TEXT", conflicts_with = "system_prompt_file")]
    pub system_prompt: Option<String>,
    /// Read the system prompt from a file.
    #[arg(long, value_name = "FILE")]
    pub system_prompt_file: Option<PathBuf>,
    /// A prompt appended after the system prompt, read from FILE; repeat in
    /// order. Replaces the agent's appendable prompts.
    #[arg(long, value_name = "NAME=FILE")]
    pub append_prompt: Vec<String>,
    /// A skill folder holding SKILL.md, read recursively and named after
    /// the folder; repeatable. Replaces the agent's skills.
    #[arg(long, value_name = "DIR")]
    pub skill: Vec<PathBuf>,
    /// An MCP server the runtime's machine defines itself, by its id there
    /// (`[[mcp_server]]` in the machine's policy.toml; `omactl runtimes get`
    /// lists them), e.g. 'files=fs'; repeatable. The --mcp-* flags together
    /// replace the agent's MCP servers.
    #[arg(long, value_name = "NAME=ID")]
    pub mcp_local: Vec<String>,
    /// Removed: the control plane never sends a command line to a machine.
    #[arg(long, hide = true)]
    pub mcp_stdio: Vec<String>,
    /// An MCP server over streamable HTTP; repeatable. The URL must be on
    /// the runtime's MCP URL allow-list (its machine's policy.toml).
    #[arg(long, value_name = "NAME=URL")]
    pub mcp_http: Vec<String>,
    /// An MCP server over SSE; repeatable. Same allow-list as --mcp-http.
    #[arg(long, value_name = "NAME=URL")]
    pub mcp_sse: Vec<String>,
    /// How the ACP agent's permission requests are answered.
    #[arg(long, value_enum)]
    pub permission_policy: Option<Policy>,
    /// The ACP session mode new sessions start in ('' for the agent's own).
    #[arg(long, value_name = "MODE_ID")]
    pub default_mode: Option<String>,
    /// The model new sessions start with ('' for the agent's own).
    #[arg(long, value_name = "MODEL_ID")]
    pub default_model: Option<String>,
    /// With --permission-policy ask: bind even to an ACP agent its machine
    /// reports it cannot make ask (it may act without anyone approving).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub accept_unenforced_ask: Option<bool>,
    /// The runtime sessions run on: its id (rt_…) or name. With
    /// --acp-agent and --skill-blocklist it sets the runtime binding; on
    /// update, the parts not given are kept from the stored binding.
    #[arg(long, value_name = "RUNTIME")]
    pub runtime: Option<String>,
    /// The ACP agent on the runtime, by its id in the manifest, e.g. claude.
    #[arg(long, value_name = "ID")]
    pub acp_agent: Option<String>,
    /// Local skill ids the ACP agent must not see, comma-separated ('' for
    /// none).
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    pub skill_blocklist: Option<Vec<String>>,
    /// Accept --skill-blocklist ids the runtime has never reported (by
    /// default the control plane refuses them and lists the valid ids).
    #[arg(long)]
    pub allow_unknown_skills: bool,
}

pub async fn run(command: Command, ctx: &Ctx) -> Result<()> {
    match command {
        Command::Create(args) => {
            let mut edit = build_edit(&args.spec, args.name)?;
            if edit.spec.name.is_empty() {
                bail!(Failure::usage(
                    "give the agent a NAME (omactl agents create NAME …), or a name in the --from-file spec"
                ));
            }
            resolve_runtime(ctx, &mut edit).await?;
            if edit.binding.touched() {
                edit.spec.runtime_binding = edit.binding.resolve(None)?;
            }
            model::AgentSpec::try_from(edit.spec.clone())?;
            let request = pb::CreateAgentRequest {
                spec: Some(edit.spec),
                allow_unknown_skills: args.spec.allow_unknown_skills,
            };
            let response = ctx.api().await?.agents().create_agent(request).await?.into_inner();
            show(ctx, &required(response.agent, "agent")?)
        }
        Command::Update(args) => {
            let mut edit = update_edit(&args)?;
            let mask = edit.mask();
            if mask.is_empty() {
                bail!(Failure::usage(
                    "nothing to update: give the fields to change, e.g. --system-prompt TEXT (see `omactl agents update --help`)"
                ));
            }
            let agent_id = resolve::id(ctx, Resource::Agent, "AGENT", &args.id).await?;
            resolve_runtime(ctx, &mut edit).await?;
            let client = ctx.api().await?.agents();
            let mut expected_version = args.expected_version.unwrap_or(0);
            if edit.binding.touched() {
                let stored = if edit.binding.complete() {
                    None
                } else {
                    // Fill in the parts not given from the stored binding,
                    // and make sure nobody changed it in between.
                    let request = pb::GetAgentRequest {
                        agent_id: agent_id.clone(),
                    };
                    let agent = required(client.clone().get_agent(request).await?.into_inner().agent, "agent")?;
                    if expected_version == 0 {
                        expected_version = agent.version;
                    }
                    agent.spec.and_then(|s| s.runtime_binding)
                };
                edit.spec.runtime_binding = edit.binding.resolve(stored.as_ref())?;
            }
            let request = pb::UpdateAgentRequest {
                agent_id,
                spec: Some(edit.spec),
                update_mask: Some(prost_types::FieldMask { paths: mask }),
                expected_version,
                allow_unknown_skills: args.spec.allow_unknown_skills,
            };
            let response = client.clone().update_agent(request).await?.into_inner();
            show(ctx, &required(response.agent, "agent")?)
        }
        Command::Get { id } => {
            let agent_id = resolve::id(ctx, Resource::Agent, "AGENT", &id).await?;
            let response = ctx
                .api()
                .await?
                .agents()
                .get_agent(pb::GetAgentRequest { agent_id })
                .await?
                .into_inner();
            show(ctx, &required(response.agent, "agent")?)
        }
        Command::List(list) => {
            let client = ctx.api().await?.agents();
            let agents = collect_pages(list.limit, |page| {
                let mut client = client.clone();
                async move {
                    let r = client
                        .list_agents(pb::ListAgentsRequest { page: Some(page) })
                        .await?
                        .into_inner();
                    Ok((r.agents, r.next_page_token))
                }
            })
            .await?;
            ctx.emit(&Value::Array(agents.iter().map(view::agent).collect()), || {
                let mut table = Table::with_wide(
                    &["ID", "NAME", "VERSION", "POLICY", "RUNTIME", "ACP AGENT", "UPDATED"],
                    &[
                        "DESCRIPTION",
                        "DEFAULT MODE",
                        "DEFAULT MODEL",
                        "SKILLS",
                        "MCP SERVERS",
                        "CREATED BY",
                        "CREATED",
                    ],
                    ctx.format().wide(),
                );
                for a in &agents {
                    let spec = a.spec.clone().unwrap_or_default();
                    let binding = spec.runtime_binding.unwrap_or_default();
                    table.row([
                        a.id.clone(),
                        spec.name,
                        a.version.to_string(),
                        Policy::from_pb(spec.permission_policy).word().to_owned(),
                        binding.runtime_id,
                        binding.acp_agent_id,
                        output::time(a.update_time.as_ref()),
                        spec.description,
                        spec.default_mode_id,
                        spec.default_model_id,
                        spec.skills.len().to_string(),
                        spec.mcp_servers.len().to_string(),
                        a.created_by_user_id.clone(),
                        output::time(a.create_time.as_ref()),
                    ]);
                }
                table.render()
            })
        }
        Command::Delete { id, confirm } => {
            let agent_id = resolve::id(ctx, Resource::Agent, "AGENT", &id).await?;
            super::confirm(&confirm, &format!("Delete agent {agent_id}?"))?;
            let request = pb::DeleteAgentRequest {
                agent_id: agent_id.clone(),
            };
            ctx.api().await?.agents().delete_agent(request).await?;
            ctx.emit(&json!({ "deleted": agent_id }), || {
                format!("Agent {agent_id} deleted.\n")
            })
        }
    }
}

/// The edit of `agents update`: the flags, `--unbind` and the spec file.
fn update_edit(args: &UpdateArgs) -> Result<Edit> {
    let mut edit = build_edit(&args.spec, args.name.clone())?;
    if args.unbind {
        edit.binding = BindingPatch {
            unbind: true,
            ..Default::default()
        };
    }
    Ok(edit)
}

/// The fields the spec file and the flags set (flags win), with `name`.
fn build_edit(args: &SpecArgs, name: Option<String>) -> Result<Edit> {
    let mut edit = Edit::default();
    if let Some(path) = &args.from_file {
        let file = spec::load_file(path)?;
        let base = match path.parent() {
            Some(dir) if path != Path::new("-") && !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        edit.apply_file(file, base)?;
    }
    if let Some(name) = name {
        edit.spec.name = name;
        edit.set(AgentField::Name);
    }
    if let Some(description) = &args.description {
        edit.spec.description = description.clone();
        edit.set(AgentField::Description);
    }
    if let Some(prompt) = &args.system_prompt {
        edit.set_system_prompt(prompt.clone());
    } else if let Some(path) = &args.system_prompt_file {
        edit.set_system_prompt(read_text(path)?);
    }
    if !args.append_prompt.is_empty() {
        let prompts = args
            .append_prompt
            .iter()
            .map(|item| {
                let (name, file) = split_pair("--append-prompt", "NAME=FILE", item)?;
                Ok(pb::AppendablePrompt {
                    name: name.to_owned(),
                    content: read_text(Path::new(file))?,
                })
            })
            .collect::<Result<_>>()?;
        edit.set_appendable_prompts(prompts);
    }
    if !args.skill.is_empty() {
        let skills = args
            .skill
            .iter()
            .map(|dir| spec::load_skill_dir(dir))
            .collect::<Result<_>>()?;
        edit.set_skills(skills);
    }
    if !args.mcp_stdio.is_empty() {
        return Err(Failure::usage(
            "--mcp-stdio was removed: the control plane never sends a command line to a machine; \
             define the server as [[mcp_server]] in the machine's policy.toml and name it with --mcp-local NAME=ID",
        )
        .into());
    }
    if !(args.mcp_local.is_empty() && args.mcp_http.is_empty() && args.mcp_sse.is_empty()) {
        edit.set_mcp_servers(mcp_servers(args)?);
    }
    if let Some(policy) = args.permission_policy {
        edit.set_policy(policy);
    }
    if let Some(mode) = &args.default_mode {
        edit.set_default_mode(mode.clone());
    }
    if let Some(model) = &args.default_model {
        edit.set_default_model(model.clone());
    }
    if let Some(accept) = args.accept_unenforced_ask {
        edit.set_accept_unenforced_ask(accept);
    }
    if let Some(runtime) = &args.runtime {
        // An id or a name: see resolve_runtime.
        edit.binding.runtime_id = Some(runtime.clone());
    }
    if let Some(acp_agent) = &args.acp_agent {
        edit.binding.acp_agent_id = Some(acp_agent.clone());
    }
    if let Some(blocklist) = &args.skill_blocklist {
        edit.binding.blocklist = Some(blocklist.iter().filter(|s| !s.is_empty()).cloned().collect());
    }
    Ok(edit)
}

/// The runtime of the edit's binding (from --runtime or the spec file) as
/// an id: a name is looked up.
async fn resolve_runtime(ctx: &Ctx, edit: &mut Edit) -> Result<()> {
    if let Some(runtime) = &edit.binding.runtime_id {
        edit.binding.runtime_id = Some(resolve::id(ctx, Resource::Runtime, "--runtime", runtime).await?);
    }
    Ok(())
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| anyhow!("cannot read {}: {e}", path.display()))
}

/// Splits `NAME=VALUE`; both parts must be non-empty.
fn split_pair<'a>(flag: &str, form: &str, item: &'a str) -> Result<(&'a str, &'a str)> {
    match item.split_once('=') {
        Some((name, value)) if !name.is_empty() && !value.trim().is_empty() => Ok((name, value)),
        _ => Err(Failure::usage(format!("{flag} takes {form}, got {item:?}")).into()),
    }
}

fn mcp_servers(args: &SpecArgs) -> Result<Vec<pb::McpServer>> {
    use pb::mcp_server::Transport;
    let mut servers = Vec::new();
    for item in &args.mcp_local {
        let (name, server_id) = split_pair("--mcp-local", "NAME=ID", item)?;
        servers.push(pb::McpServer {
            name: name.to_owned(),
            transport: Some(Transport::Local(pb::McpLocal {
                server_id: server_id.to_owned(),
            })),
        });
    }
    for (flag, items) in [("--mcp-http", &args.mcp_http), ("--mcp-sse", &args.mcp_sse)] {
        for item in items {
            let (name, url) = split_pair(flag, "NAME=URL", item)?;
            let http = pb::McpHttp {
                url: url.to_owned(),
                headers: Vec::new(),
            };
            servers.push(pb::McpServer {
                name: name.to_owned(),
                transport: Some(if flag == "--mcp-http" {
                    Transport::Http(http)
                } else {
                    Transport::Sse(http)
                }),
            });
        }
    }
    Ok(servers)
}

fn show(ctx: &Ctx, agent: &pb::Agent) -> Result<()> {
    ctx.emit(&view::agent(agent), || describe(agent))
}

/// The table form of one agent: a record, the system prompt, then tables of
/// prompts, skills and MCP servers.
fn describe(agent: &pb::Agent) -> String {
    let spec = agent.spec.clone().unwrap_or_default();
    let (runtime, blocklist) = match &spec.runtime_binding {
        Some(b) => (
            format!("{} (ACP agent {})", b.runtime_id, b.acp_agent_id),
            b.local_skill_blocklist.join(", "),
        ),
        None => ("unbound".to_owned(), String::new()),
    };
    let mut text = output::record(&[
        ("id", agent.id.clone()),
        ("name", spec.name.clone()),
        ("description", spec.description.clone()),
        ("version", agent.version.to_string()),
        (
            "permission policy",
            Policy::from_pb(spec.permission_policy).word().to_owned(),
        ),
        ("runtime", runtime),
        ("skill blocklist", blocklist),
        ("created by", agent.created_by_user_id.clone()),
        ("created", output::time(agent.create_time.as_ref())),
        ("updated", output::time(agent.update_time.as_ref())),
    ]);
    if !spec.system_prompt.is_empty() {
        text.push_str("\nSystem prompt:\n");
        for line in spec.system_prompt.lines() {
            text.push_str(&format!("  {line}\n"));
        }
    }
    if !spec.appendable_prompts.is_empty() {
        let mut table = Table::new(&["APPENDABLE PROMPT", "BYTES"]);
        for p in &spec.appendable_prompts {
            table.row([p.name.clone(), p.content.len().to_string()]);
        }
        text.push('\n');
        text.push_str(&table.render());
    }
    if !spec.skills.is_empty() {
        let mut table = Table::new(&["SKILL", "FILES", "BYTES"]);
        for s in &spec.skills {
            let bytes: usize = s.files.iter().map(|f| f.content.len()).sum();
            table.row([s.name.clone(), s.files.len().to_string(), bytes.to_string()]);
        }
        text.push('\n');
        text.push_str(&table.render());
    }
    if !spec.mcp_servers.is_empty() {
        use pb::mcp_server::Transport;
        let mut table = Table::new(&["MCP SERVER", "TRANSPORT", "TARGET"]);
        for m in &spec.mcp_servers {
            let (kind, target) = match &m.transport {
                Some(Transport::Local(l)) => ("local", l.server_id.clone()),
                Some(Transport::Http(h)) => ("http", h.url.clone()),
                Some(Transport::Sse(h)) => ("sse", h.url.clone()),
                None => ("none", String::new()),
            };
            table.row([m.name.clone(), kind.to_owned(), target]);
        }
        text.push('\n');
        text.push_str(&table.render());
    }
    text
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Update {
        #[command(flatten)]
        args: UpdateArgs,
    }

    const RT: &str = "rt_0123456789abcdef0123456789abcdef";

    fn mask(flags: &[&str]) -> Vec<String> {
        let argv = ["update", "agt_0123456789abcdef0123456789abcdef"].iter().chain(flags);
        let parsed = Update::try_parse_from(argv).unwrap();
        update_edit(&parsed.args).unwrap().mask()
    }

    #[test]
    fn mask_names_exactly_the_flags_given() {
        assert_eq!(mask(&["--system-prompt", "Be brief."]), ["system_prompt"]);
        assert_eq!(mask(&["--description", ""]), ["description"]);
        assert_eq!(
            mask(&["--permission-policy", "allow-once", "--name", "x"]),
            ["name", "permission_policy"]
        );
        assert_eq!(mask(&["--mcp-http", "web=https://mcp.example"]), ["mcp_servers"]);
        assert_eq!(mask(&["--acp-agent", "codex"]), ["runtime_binding"]);
        assert_eq!(mask(&["--skill-blocklist", "a,b"]), ["runtime_binding"]);
        assert_eq!(mask(&["--unbind"]), ["runtime_binding"]);
        assert!(mask(&[]).is_empty());
    }

    #[test]
    fn binding_flags_fill_a_patch() {
        let argv = [
            "update",
            "agt_0123456789abcdef0123456789abcdef",
            "--runtime",
            RT,
            "--skill-blocklist",
            "",
        ];
        let parsed = Update::try_parse_from(argv).unwrap();
        let edit = update_edit(&parsed.args).unwrap();
        assert_eq!(edit.binding.runtime_id.as_deref(), Some(RT));
        assert_eq!(edit.binding.blocklist, Some(vec![]));
        assert!(!edit.binding.complete());
        assert!(Update::try_parse_from(["update", "agt_x", "--unbind", "--runtime", RT]).is_err());
        // Not an id: kept as given, to be looked up by name (resolve_runtime).
        let named = Update::try_parse_from(["update", "helper", "--runtime", "dana-laptop"]).unwrap();
        assert_eq!(
            update_edit(&named.args).unwrap().binding.runtime_id.as_deref(),
            Some("dana-laptop")
        );
    }

    #[test]
    fn mcp_local_names_a_server_of_the_machine_and_stdio_is_gone() {
        let argv = [
            "update",
            "agt_0123456789abcdef0123456789abcdef",
            "--mcp-local",
            "files=fs",
            "--mcp-http",
            "web=https://mcp.example/x",
        ];
        let parsed = Update::try_parse_from(argv).unwrap();
        let edit = update_edit(&parsed.args).unwrap();
        assert_eq!(edit.mask(), ["mcp_servers"]);
        assert_eq!(edit.spec.mcp_servers[0].name, "files");
        assert_eq!(
            edit.spec.mcp_servers[0].transport,
            Some(pb::mcp_server::Transport::Local(pb::McpLocal {
                server_id: "fs".into()
            }))
        );
        for bad in ["fs", "=fs", "files="] {
            let parsed = Update::try_parse_from(["update", "agt_x", "--mcp-local", bad]).unwrap();
            assert!(update_edit(&parsed.args).is_err(), "{bad}");
        }
        let parsed = Update::try_parse_from(["update", "agt_x", "--mcp-stdio", "fs=curl evil.example"]).unwrap();
        let err = update_edit(&parsed.args).unwrap_err().to_string();
        assert!(err.contains("--mcp-local") && err.contains("policy.toml"), "{err}");
    }
}
