//! `omactl sessions …`.

use anyhow::Result;
use clap::Subcommand;
use oma_proto::{
    ids::{AgentId, SessionId},
    pb,
};
use serde_json::{Value, json};

use super::{Ctx, ListArgs, required};
use crate::{
    connection::collect_pages,
    output::{self, Table},
    view,
};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a session of an agent on its bound runtime.
    Create {
        /// The agent's id (agt_…).
        #[arg(long, value_name = "AGENT_ID")]
        agent: String,
        /// A label for the session.
        #[arg(long)]
        title: Option<String>,
    },
    /// List sessions, newest first.
    List {
        /// Only this agent's sessions.
        #[arg(long, value_name = "AGENT_ID")]
        agent: Option<String>,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Show a session.
    Get {
        /// The session's id (ses_…).
        id: String,
    },
    /// Delete a session: the machine disposes of it and its log is deleted.
    Delete {
        /// The session's id (ses_…).
        id: String,
    },
}

pub async fn run(command: Command, ctx: &Ctx) -> Result<()> {
    match command {
        Command::Create { agent, title } => {
            let agent_id = AgentId::parse("--agent", &agent)?.to_string();
            let request = pb::CreateSessionRequest {
                agent_id,
                title: title.unwrap_or_default(),
            };
            let response = ctx.api().await?.sessions().create_session(request).await?.into_inner();
            show(ctx, &required(response.session, "session")?)
        }
        Command::List { agent, list } => {
            let agent_id = match agent {
                Some(agent) => AgentId::parse("--agent", &agent)?.to_string(),
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
                let mut table = Table::new(&["ID", "AGENT", "STATUS", "RUNTIME", "TITLE", "CREATED"]);
                for s in &sessions {
                    table.row([
                        s.id.clone(),
                        s.agent_id.clone(),
                        view::session_status(s.status),
                        s.runtime_id.clone(),
                        s.title.clone(),
                        output::time(s.create_time.as_ref()),
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
        Command::Delete { id } => {
            let session_id = SessionId::parse("session id", &id)?.to_string();
            let request = pb::DeleteSessionRequest {
                session_id: session_id.clone(),
            };
            ctx.api().await?.sessions().delete_session(request).await?;
            ctx.emit(&json!({ "deleted": session_id }), || {
                format!("Session {session_id} deleted.\n")
            })
        }
    }
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
            ("created by", s.created_by_user_id.clone()),
            ("created", output::time(s.create_time.as_ref())),
            ("updated", output::time(s.update_time.as_ref())),
            ("last seq", s.last_seq.to_string()),
        ])
    })
}
