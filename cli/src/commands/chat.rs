//! `omactl chat`: prompt after prompt in one session.

use std::io::{IsTerminal as _, Write as _};

use anyhow::Result;
use oma_proto::{ids::SessionId, pb};

use super::{
    Ctx,
    live::{self, Interrupts, Lines, Turn, TurnEnd},
    required,
};
use crate::{
    error::{Failure, classify, exit},
    render::{Renderer, Style},
    resolve::{self, Resource},
};

/// The options of `omactl chat` (documented on `Command::Chat`).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The agent to talk with, by id (agt_…) or name: a new session of it
    /// is created.
    #[arg(long, value_name = "AGENT", required_unless_present = "session")]
    pub agent: Option<String>,
    /// Continue this session (ses_…) instead of creating one.
    #[arg(long, value_name = "SESSION_ID")]
    pub session: Option<String>,
    /// A label for the new session.
    #[arg(long, conflicts_with = "session")]
    pub title: Option<String>,
}

pub async fn run(args: Args, ctx: &Ctx) -> Result<()> {
    let session_id = args
        .session
        .as_deref()
        .map(|s| SessionId::parse("--session", s).map(|id| id.to_string()))
        .transpose()?;
    let agent_id = match &args.agent {
        Some(agent) => Some(resolve::id(ctx, Resource::Agent, "--agent", agent).await?),
        None => None,
    };
    let server = ctx.settings()?.server.clone();
    let client = ctx.api().await?.sessions();
    let session = match session_id {
        Some(session_id) => {
            let response = client
                .clone()
                .get_session(pb::GetSessionRequest { session_id })
                .await?
                .into_inner();
            let session = required(response.session, "session")?;
            if let Some(agent) = agent_id.filter(|a| *a != session.agent_id) {
                return Err(Failure::new(
                    exit::REJECTED,
                    format!(
                        "session {} is a session of agent {}, not of {agent}",
                        session.id, session.agent_id
                    ),
                )
                .into());
            }
            session
        }
        None => {
            let request = pb::CreateSessionRequest {
                agent_id: agent_id.unwrap_or_default(),
                title: args.title.unwrap_or_default(),
                ..Default::default()
            };
            let response = client.clone().create_session(request).await?.into_inner();
            required(response.session, "session")?
        }
    };
    let session_id = session.id.as_str();

    let interactive = std::io::stdin().is_terminal();
    let ask = interactive && std::io::stdout().is_terminal();
    if interactive {
        eprintln!(
            "session {session_id} of agent {}; /cancel cancels the running turn, /quit or Ctrl-D quits",
            session.agent_id
        );
    } else {
        eprintln!("session {session_id}");
    }
    let mut lines = Lines::stdin();
    let mut interrupts = Interrupts::listen();
    let mut renderer = Renderer::new(ctx.format(), Style::detect(), session_id, false);
    let mut failed = false;
    loop {
        if interactive {
            eprint!("> ");
            let _ = std::io::stderr().flush();
        }
        let line = tokio::select! {
            line = lines.next() => line,
            () = interrupts.next() => {
                if interactive {
                    eprintln!();
                }
                return Err(Failure::silent(exit::INTERRUPTED).into());
            }
        };
        let Some(line) = line else {
            if interactive {
                eprintln!();
            }
            break;
        };
        match line.trim() {
            "" => continue,
            "/quit" => break,
            "/cancel" => {
                match live::cancel(&client, session_id).await {
                    Ok(()) => eprintln!("cancel requested"),
                    Err(status) => eprintln!("error: {}", classify(status.into(), Some(&server)).message),
                }
                continue;
            }
            _ => {}
        }
        let request = pb::PromptSessionRequest {
            session_id: session_id.to_owned(),
            turn_id: String::new(),
            prompt: live::text_prompt(line.trim_end()),
        };
        let mut prompter = client.clone();
        let started = tokio::select! {
            started = prompter.prompt_session(request) => started,
            () = interrupts.next() => return Err(Failure::silent(exit::INTERRUPTED).into()),
        };
        let started = match started {
            Ok(response) => response.into_inner(),
            // On a terminal a refused prompt is said and the next one read.
            Err(status) if interactive => {
                eprintln!("error: {}", classify(status.into(), Some(&server)).message);
                continue;
            }
            Err(status) => return Err(status.into()),
        };
        let turn = Turn {
            client: &client,
            session_id,
            server: &server,
            renderer: &mut renderer,
            interrupts: &mut interrupts,
            lines: interactive.then_some(&mut lines),
            ask,
            chat: true,
        };
        match turn.follow(&started.turn_id, started.from_seq).await? {
            TurnEnd::Ended(ended) => {
                if live::report(&ended) == exit::GENERIC {
                    failed = true;
                }
            }
            TurnEnd::Quit => break,
        }
    }
    if failed {
        Err(Failure::silent(exit::GENERIC).into())
    } else {
        Ok(())
    }
}
