//! `omactl sessions …`: managing sessions, and their live side: prompting,
//! watching, cancelling and answering permission requests.

use std::{
    io::IsTerminal as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use clap::Subcommand;
use oma_proto::{
    ids::SessionId,
    pb::{self, answer_permission_request::Answer as PbAnswer, session_event::Kind},
};
use serde_json::{Value, json};

use super::{
    ConfirmArgs, Ctx, ListArgs,
    live::{self, Events, Interrupts, Lines, Next, Turn, TurnEnd},
    required,
};
use crate::{
    connection::collect_pages,
    error::{Failure, exit},
    output::{self, Table},
    render::{Renderer, Style},
    resolve::{self, Resource},
    view,
};

/// How long `approve` without `--option` looks for the request.
const FIND_REQUEST_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a session of an agent on its bound runtime.
    ///
    /// With --wait, the command waits until the machine has started the
    /// session (it is idle, ready for prompts) and prints it then. Exit code:
    /// 0 when it is ready; 1 when it fails to start (the reason in one
    /// sentence on stderr); 9 when it is not ready within --timeout (it may
    /// still start: `omactl sessions get` shows it).
    #[command(
        after_help = "Examples:\n  omactl sessions create --agent helper --title 'fix the flaky test'\n  omactl sessions create --agent helper --workspace web --base main --wait\n  id=$(omactl sessions create --agent agt_… --wait --timeout 5m -o name)"
    )]
    Create {
        /// The agent: its id (agt_…) or name.
        #[arg(long, value_name = "AGENT")]
        agent: String,
        /// A label for the session.
        #[arg(long)]
        title: Option<String>,
        /// Work in this workspace of the runtime (`omactl runtimes get`
        /// lists them): a worktree on a new branch for a git repository.
        #[arg(long, value_name = "WORKSPACE_ID")]
        workspace: Option<String>,
        /// Work in the workspace folder itself, not a worktree (one live
        /// session per workspace; the owner must allow it for git).
        #[arg(long, requires = "workspace", conflicts_with_all = ["base", "branch"])]
        direct: bool,
        /// Worktree: the branch, tag or commit the new branch starts from
        /// (default: the workspace's current HEAD).
        #[arg(long, value_name = "REF", requires = "workspace")]
        base: Option<String>,
        /// Worktree: the new branch's name (default: oma/<12 hex digits of
        /// the session id>).
        #[arg(long, value_name = "NAME", requires = "workspace")]
        branch: Option<String>,
        /// Start in this ACP session mode (else the agent's default mode).
        #[arg(long, value_name = "MODE_ID")]
        mode: Option<String>,
        /// Start with this model (else the agent's default model).
        #[arg(long, value_name = "MODEL_ID")]
        model: Option<String>,
        /// Wait until the session is ready (idle) and print it then.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits, e.g. 30s or 5m.
        #[arg(long, value_name = "DURATION", requires = "wait", default_value = "2m", value_parser = oma_proto::duration::parse)]
        timeout: Duration,
    },
    /// Switch a session's mode and/or model (`sessions get` lists what its
    /// agent offers).
    #[command(
        after_help = "Examples:\n  omactl sessions set ses_… --mode plan\n  omactl sessions set ses_… --model sonnet"
    )]
    Set {
        /// The session's id (ses_…).
        id: String,
        #[arg(long, value_name = "MODE_ID", required_unless_present = "model")]
        mode: Option<String>,
        #[arg(long, value_name = "MODEL_ID")]
        model: Option<String>,
    },
    /// List sessions, newest first.
    ///
    /// `-o wide` adds the ACP agent, workspace and branch, mode, model, last
    /// event seq, creator and update time; `-o name` prints only the ids.
    #[command(
        after_help = "Examples:\n  omactl sessions list --agent helper -o wide\n  omactl sessions list -o name | xargs -n1 omactl sessions delete --yes"
    )]
    List {
        /// Only this agent's sessions: its id (agt_…) or name.
        #[arg(long, value_name = "AGENT")]
        agent: Option<String>,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Show a session.
    #[command(after_help = "Examples:\n  omactl sessions get ses_…\n  omactl sessions get ses_… -o yaml")]
    Get {
        /// The session's id (ses_…).
        id: String,
    },
    /// Delete a session: the machine disposes of it and its log is deleted.
    #[command(
        after_help = "Examples:\n  omactl sessions delete ses_… --delete-branch\n  omactl sessions list --agent helper -o name | xargs -n1 omactl sessions delete --yes"
    )]
    Delete {
        /// The session's id (ses_…).
        id: String,
        /// A worktree session: delete its branch too (by default the
        /// worktree is removed and the branch kept).
        #[arg(long)]
        delete_branch: bool,
        #[command(flatten)]
        confirm: ConfirmArgs,
    },
    /// Print the session's changes in its workspace as a unified diff
    /// (fetched from the machine).
    #[command(after_help = "Examples:\n  omactl sessions diff ses_…\n  omactl sessions diff ses_… | git apply --3way")]
    Diff {
        /// The session's id (ses_…).
        id: String,
    },
    /// Prompt a session and print the turn until it ends.
    ///
    /// The agent's text is printed as it arrives; tool calls as
    /// `⏺ TITLE [STATUS]` lines (`* ` when stdout is not a terminal), plans as
    /// `[x]`/`[~]`/`[ ]` checklists, thoughts dimmed (`[thought] ` lines when
    /// stdout is not a terminal), permission requests as `? permission
    /// requested: …` lines, session errors as `error [CODE]: …` on stderr.
    /// When stdin and stdout are terminals, permission requests are asked
    /// about: `y` picks the first allow option, `n` rejects, an option id
    /// picks that option, an empty line or Ctrl-D leaves it to others.
    ///
    /// With `-o json`, one JSON object per event and line (JSON Lines); with
    /// `-o yaml`, one YAML document (`---`) per event.
    ///
    /// Exit code: 0 when the turn ends with end_turn; 130 when it is
    /// cancelled; 8 for max_tokens, max_turn_requests or refusal; 1 when it
    /// ends in an error. Ctrl-C cancels the turn (and waits for it to end); a
    /// second Ctrl-C exits at once with 130.
    #[command(
        after_help = "Examples:\n  omactl sessions prompt ses_… 'Fix the failing test in src/lib.rs'\n  omactl sessions prompt ses_… -f task.md --turn-id nightly-42\n  omactl sessions prompt ses_… 'Summarize the repo' -o json | jq -c 'select(.kind == \"turn_ended\")'"
    )]
    Prompt {
        /// The session's id (ses_…).
        #[arg(value_name = "SESSION_ID")]
        id: String,
        /// The prompt text.
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        text: Option<String>,
        /// Read the prompt text from this file (`-` = stdin).
        #[arg(long, short = 'f', value_name = "FILE")]
        file: Option<PathBuf>,
        /// The turn's id (1–64 of A-Z a-z 0-9 _ -), so a retried prompt runs
        /// once [default: the server picks one].
        #[arg(long, value_name = "ID")]
        turn_id: Option<String>,
    },
    /// Stream a session's events as they are stored: from its start (or
    /// --from-seq) until Ctrl-C or the session is deleted.
    ///
    /// Rendered as by `sessions prompt`, and turns show as their `> PROMPT`
    /// lines and a `· turn ended: REASON` line. `-o json` prints one JSON
    /// object per event and line, `-o yaml` one YAML document per event.
    ///
    /// Exit code: 0 when the session is deleted (with a note on stderr), 130
    /// on Ctrl-C; with --until-turn-end, that of the turn's stop reason, as
    /// for `sessions prompt`.
    #[command(
        after_help = "Examples:\n  omactl sessions watch ses_…\n  omactl sessions watch ses_… --from-seq 1 --until-turn-end -o json"
    )]
    Watch {
        /// The session's id (ses_…).
        #[arg(value_name = "SESSION_ID")]
        id: String,
        /// The first event to show [default: the first one].
        #[arg(long, value_name = "N", default_value_t = 1)]
        from_seq: u64,
        /// Stop after the next turn ends (its TurnEnded event).
        #[arg(long)]
        until_turn_end: bool,
    },
    /// Cancel the running turn of a session (no running turn is not an
    /// error).
    #[command(after_help = "Example: omactl sessions cancel ses_…")]
    Cancel {
        /// The session's id (ses_…).
        #[arg(value_name = "SESSION_ID")]
        id: String,
    },
    /// Allow a pending permission request.
    ///
    /// Without --option, the request is looked up in the session's events
    /// (for at most 5 seconds) and its first allow_once option (else its first
    /// allow_always option) is chosen.
    #[command(
        after_help = "Examples:\n  omactl sessions approve ses_… perm_…\n  omactl sessions approve ses_… perm_… --option allow_always"
    )]
    Approve {
        /// The session's id (ses_…).
        #[arg(value_name = "SESSION_ID")]
        id: String,
        /// The request's id, as printed with `? permission requested`.
        request_id: String,
        /// The option to select.
        #[arg(long, value_name = "OPTION_ID")]
        option: Option<String>,
    },
    /// Reject a pending permission request: its first reject option is
    /// selected (or, when it has none, it is answered `cancelled`).
    #[command(after_help = "Example: omactl sessions deny ses_… perm_…")]
    Deny {
        /// The session's id (ses_…).
        #[arg(value_name = "SESSION_ID")]
        id: String,
        /// The request's id, as printed with `? permission requested`.
        request_id: String,
    },
}

pub async fn run(command: Command, ctx: &Ctx) -> Result<()> {
    match command {
        Command::Create {
            agent,
            title,
            workspace,
            direct,
            base,
            branch,
            mode,
            model,
            wait,
            timeout,
        } => {
            let agent_id = resolve::id(ctx, Resource::Agent, "--agent", &agent).await?;
            let workspace = workspace.map(|workspace_id| pb::SessionWorkspace {
                workspace_id,
                mode: match direct {
                    true => pb::WorkspaceMode::Direct,
                    false if base.is_some() || branch.is_some() => pb::WorkspaceMode::Worktree,
                    false => pb::WorkspaceMode::Unspecified,
                } as i32,
                base_ref: base.unwrap_or_default(),
                branch: branch.unwrap_or_default(),
            });
            let request = pb::CreateSessionRequest {
                agent_id,
                title: title.unwrap_or_default(),
                workspace,
                mode_id: mode.unwrap_or_default(),
                model_id: model.unwrap_or_default(),
            };
            let client = ctx.api().await?.sessions();
            let response = client.clone().create_session(request).await?.into_inner();
            let session = required(response.session, "session")?;
            if !wait {
                return show(ctx, &session);
            }
            show(ctx, &wait_ready(&client, session, timeout).await?)
        }
        Command::List { agent, list } => {
            let agent_id = match agent {
                Some(agent) => resolve::id(ctx, Resource::Agent, "--agent", &agent).await?,
                None => String::new(),
            };
            let client = ctx.api().await?.sessions();
            let sessions = collect_pages(list.limit, |page| {
                let mut client = client.clone();
                let agent_id = agent_id.clone();
                async move {
                    let request = pb::ListSessionsRequest {
                        page: Some(page),
                        agent_id,
                    };
                    let r = client.list_sessions(request).await?.into_inner();
                    Ok((r.sessions, r.next_page_token))
                }
            })
            .await?;
            ctx.emit(&Value::Array(sessions.iter().map(view::session).collect()), || {
                let mut table = Table::with_wide(
                    &["ID", "AGENT", "STATUS", "RUNTIME", "TITLE", "CREATED"],
                    &[
                        "ACP AGENT",
                        "WORKSPACE",
                        "BRANCH",
                        "MODE",
                        "MODEL",
                        "LAST SEQ",
                        "CREATED BY",
                        "UPDATED",
                    ],
                    ctx.format().wide(),
                );
                for s in &sessions {
                    let workspace = s.workspace.clone().unwrap_or_default();
                    let (mode, model) = match &s.options {
                        Some(o) => (o.mode_id.clone(), o.model_id.clone()),
                        None => (s.requested_mode_id.clone(), s.requested_model_id.clone()),
                    };
                    table.row([
                        s.id.clone(),
                        s.agent_id.clone(),
                        view::session_status(s.status),
                        s.runtime_id.clone(),
                        s.title.clone(),
                        output::time(s.create_time.as_ref()),
                        s.acp_agent_id.clone(),
                        workspace.workspace_id,
                        workspace.branch,
                        mode,
                        model,
                        s.last_seq.to_string(),
                        s.created_by_user_id.clone(),
                        output::time(s.update_time.as_ref()),
                    ]);
                }
                table.render()
            })
        }
        Command::Get { id } => {
            let session_id = SessionId::parse("session id", &id)?.to_string();
            let response = ctx
                .api()
                .await?
                .sessions()
                .get_session(pb::GetSessionRequest { session_id })
                .await?
                .into_inner();
            show(ctx, &required(response.session, "session")?)
        }
        Command::Set { id, mode, model } => {
            let session_id = SessionId::parse("session id", &id)?.to_string();
            let request = pb::SetSessionOptionsRequest {
                session_id: session_id.clone(),
                mode_id: mode.clone().unwrap_or_default(),
                model_id: model.clone().unwrap_or_default(),
            };
            ctx.api().await?.sessions().set_session_options(request).await?;
            ctx.emit(&json!({ "session_id": session_id, "mode_id": mode, "model_id": model }), || {
                format!("Session {session_id}: switching to the asked mode/model; watch for the options_changed event.\n")
            })
        }
        Command::Diff { id } => {
            let session_id = SessionId::parse("session id", &id)?.to_string();
            let mut stream = ctx
                .api()
                .await?
                .sessions()
                .get_session_diff(pb::GetSessionDiffRequest { session_id })
                .await?
                .into_inner();
            let mut out = std::io::stdout().lock();
            let mut truncated = false;
            while let Some(piece) = stream.message().await? {
                std::io::Write::write_all(&mut out, &piece.chunk)?;
                truncated |= piece.truncated;
            }
            std::io::Write::flush(&mut out)?;
            if truncated {
                eprintln!("(the diff was cut at its size limit)");
            }
            Ok(())
        }
        Command::Delete {
            id,
            delete_branch,
            confirm,
        } => {
            let session_id = SessionId::parse("session id", &id)?.to_string();
            super::confirm(
                &confirm,
                &format!(
                    "Delete session {session_id} and its event log{}?",
                    if delete_branch { " and branch" } else { "" }
                ),
            )?;
            let request = pb::DeleteSessionRequest {
                session_id: session_id.clone(),
                delete_branch,
            };
            ctx.api().await?.sessions().delete_session(request).await?;
            ctx.emit(&json!({ "deleted": session_id }), || {
                format!("Session {session_id} deleted.\n")
            })
        }
        Command::Prompt {
            id,
            text,
            file,
            turn_id,
        } => {
            let session_id = SessionId::parse("session id", &id)?.to_string();
            let text = match (text, &file) {
                (Some(text), _) => text,
                (None, Some(path)) => read_prompt(path)?,
                (None, None) => return Err(Failure::usage("give the prompt as TEXT or with --file").into()),
            };
            if text.trim().is_empty() {
                return Err(Failure::usage("the prompt is empty").into());
            }
            // Answers are asked for on a terminal, unless stdin was the prompt.
            let ask = std::io::stdin().is_terminal()
                && std::io::stdout().is_terminal()
                && file.as_deref() != Some(Path::new("-"));
            prompt(ctx, &session_id, &text, turn_id.unwrap_or_default(), ask).await
        }
        Command::Watch {
            id,
            from_seq,
            until_turn_end,
        } => {
            let session_id = SessionId::parse("session id", &id)?.to_string();
            watch(ctx, &session_id, from_seq, until_turn_end).await
        }
        Command::Cancel { id } => {
            let session_id = SessionId::parse("session id", &id)?.to_string();
            live::cancel(&ctx.api().await?.sessions(), &session_id).await?;
            ctx.emit(&json!({ "session_id": session_id, "cancel_requested": true }), || {
                format!("Cancel requested for session {session_id}.\n")
            })
        }
        Command::Approve { id, request_id, option } => {
            let session_id = SessionId::parse("session id", &id)?.to_string();
            let client = ctx.api().await?.sessions();
            let (option_id, kind) = match option {
                Some(option) => (option, None),
                None => {
                    let request = live::find_request(&client, &session_id, &request_id, FIND_REQUEST_DEADLINE).await?;
                    let chosen = live::default_allow(&request.options).ok_or_else(|| {
                        let offered: Vec<String> = request
                            .options
                            .iter()
                            .map(|o| format!("{} ({})", o.option_id, view::option_kind(o.kind)))
                            .collect();
                        Failure::new(
                            exit::REJECTED,
                            format!(
                                "permission request {request_id} offers no allow option ({}); pass --option OPTION_ID",
                                offered.join(", ")
                            ),
                        )
                    })?;
                    (chosen.option_id.clone(), Some(view::option_kind(chosen.kind)))
                }
            };
            live::answer(&client, &session_id, &request_id, PbAnswer::OptionId(option_id.clone())).await?;
            let data = json!({
                "session_id": session_id,
                "request_id": request_id,
                "option_id": option_id,
                "option_kind": kind,
            });
            ctx.emit(&data, || match &kind {
                Some(kind) => format!("Permission {request_id} answered: {option_id} ({kind}).\n"),
                None => format!("Permission {request_id} answered: {option_id}.\n"),
            })
        }
        Command::Deny { id, request_id } => {
            let session_id = SessionId::parse("session id", &id)?.to_string();
            let client = ctx.api().await?.sessions();
            live::answer(&client, &session_id, &request_id, PbAnswer::Reject(true)).await?;
            let data = json!({ "session_id": session_id, "request_id": request_id, "rejected": true });
            ctx.emit(&data, || format!("Permission {request_id} rejected.\n"))
        }
    }
}

/// The prompt text of `--file`: a file, or stdin for `-`.
fn read_prompt(path: &Path) -> Result<String> {
    if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("cannot read the prompt from stdin")
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    }
}

/// `sessions prompt`: PromptSession, then the turn's events until it ends.
async fn prompt(ctx: &Ctx, session_id: &str, text: &str, turn_id: String, ask: bool) -> Result<()> {
    let api = ctx.api().await?;
    let server = ctx.settings()?.server.clone();
    let client = api.sessions();
    let mut interrupts = Interrupts::listen();
    let request = pb::PromptSessionRequest {
        session_id: session_id.to_owned(),
        turn_id,
        prompt: live::text_prompt(text),
    };
    let mut prompter = client.clone();
    let started = tokio::select! {
        started = prompter.prompt_session(request) => started?.into_inner(),
        () = interrupts.next() => return Err(Failure::silent(exit::INTERRUPTED).into()),
    };
    let mut renderer = Renderer::new(ctx.format(), Style::detect(), session_id, false);
    let mut lines = ask.then(Lines::stdin);
    let turn = Turn {
        client: &client,
        session_id,
        server: &server,
        renderer: &mut renderer,
        interrupts: &mut interrupts,
        lines: lines.as_mut(),
        ask,
        chat: false,
    };
    match turn.follow(&started.turn_id, started.from_seq).await? {
        TurnEnd::Ended(ended) => match live::report(&ended) {
            0 => Ok(()),
            code => Err(Failure::silent(code).into()),
        },
        TurnEnd::Quit => Ok(()),
    }
}

/// `sessions watch`: the session's events until Ctrl-C, the session is
/// deleted or (with `until_turn_end`) a turn ends.
async fn watch(ctx: &Ctx, session_id: &str, from_seq: u64, until_turn_end: bool) -> Result<()> {
    let client = ctx.api().await?.sessions();
    let mut interrupts = Interrupts::listen();
    let mut renderer = Renderer::new(ctx.format(), Style::detect(), session_id, true);
    let mut events = Events::new(client, session_id, from_seq, until_turn_end);
    loop {
        tokio::select! {
            next = events.next() => match next {
                Ok(Next::Event(e)) => {
                    renderer.event(&e).write()?;
                    if let (true, Some(Kind::TurnEnded(ended))) = (until_turn_end, &e.kind) {
                        renderer.end_line().write()?;
                        return match live::report(ended) {
                            0 => Ok(()),
                            code => Err(Failure::silent(code).into()),
                        };
                    }
                }
                Ok(Next::Reconnecting(note)) => renderer.note(&note).write()?,
                Err(status) if status.code() == tonic::Code::NotFound && events.opened() => {
                    renderer.note(&format!("session {session_id} was deleted; no more events")).write()?;
                    return Ok(());
                }
                Err(status) => {
                    renderer.end_line().write()?;
                    return Err(status.into());
                }
            },
            () = interrupts.next() => {
                renderer.end_line().write()?;
                return Err(Failure::silent(exit::INTERRUPTED).into());
            }
        }
    }
}

/// `sessions create --wait`: the session once it is ready (idle), read
/// again; a failure to start, a deletion or `timeout` is an error.
async fn wait_ready(client: &live::Client, session: pb::Session, timeout: Duration) -> Result<pb::Session> {
    let id = session.id.clone();
    let ready = pb::SessionStatus::try_from(session.status) == Ok(pb::SessionStatus::Idle);
    let start = if ready {
        live::Start::Ready
    } else {
        match tokio::time::timeout(timeout, live::wait_ready(client, &id)).await {
            Ok(start) => start?,
            Err(_) => {
                let status = get(client, &id)
                    .await
                    .map_or_else(|_| "unknown".to_owned(), |s| view::session_status(s.status));
                return Err(Failure::new(
                    exit::TIMED_OUT,
                    format!(
                        "session {id} was not ready within {} (it is {status}): `omactl sessions get {id}` shows it, or wait longer with --timeout",
                        humantime::format_duration(timeout)
                    ),
                )
                .into());
            }
        }
    };
    match start {
        live::Start::Ready => get(client, &id).await,
        live::Start::Failed(why) => {
            Err(Failure::new(exit::GENERIC, format!("session {id} failed to start: {why}")).into())
        }
        live::Start::Gone => {
            Err(Failure::new(exit::NOT_FOUND, format!("session {id} was deleted before it was ready")).into())
        }
    }
}

async fn get(client: &live::Client, session_id: &str) -> Result<pb::Session> {
    let request = pb::GetSessionRequest {
        session_id: session_id.to_owned(),
    };
    let response = client.clone().get_session(request).await?.into_inner();
    required(response.session, "session")
}

fn show(ctx: &Ctx, s: &pb::Session) -> Result<()> {
    ctx.emit(&view::session(s), || {
        output::record(&[
            ("id", s.id.clone()),
            ("title", s.title.clone()),
            ("status", view::session_status(s.status)),
            ("agent", format!("{} (version {})", s.agent_id, s.agent_version)),
            ("runtime", s.runtime_id.clone()),
            ("acp agent", s.acp_agent_id.clone()),
            ("workspace", view::session_workspace(s.workspace.as_ref())),
            (
                "mode",
                view::session_choice(s.options.as_ref().map(|o| (&o.mode_id, &o.modes)), &s.requested_mode_id),
            ),
            (
                "model",
                view::session_choice(
                    s.options.as_ref().map(|o| (&o.model_id, &o.models)),
                    &s.requested_model_id,
                ),
            ),
            ("created by", s.created_by_user_id.clone()),
            ("created", output::time(s.create_time.as_ref())),
            ("updated", output::time(s.update_time.as_ref())),
            ("last seq", s.last_seq.to_string()),
        ])
    })
}
