//! `omactl audit …`.

use anyhow::Result;
use clap::Subcommand;
use oma_proto::pb;
use serde_json::Value;

use std::time::SystemTime;

use super::Ctx;
use crate::{
    connection::collect_pages,
    output::{self, Table},
    view,
};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List audit entries, newest first (admin only).
    #[command(
        after_help = "Examples:\n  omactl audit list --since 24h\n  omactl audit list --action session. --actor user:usr_… --limit 20\n  omactl audit list --since 2026-12-01T00:00:00Z --until 2026-12-02T00:00:00Z --all -o json"
    )]
    List {
        /// Only entries about this id (of any kind).
        #[arg(long, value_name = "ID")]
        target: Option<String>,
        /// Only entries this recent: a duration back from now (24h, 7d) or a
        /// time (2026-12-01T09:00:00Z).
        #[arg(long, value_name = "WHEN", value_parser = parse_when)]
        since: Option<SystemTime>,
        /// Only entries before this: a duration back from now or a time.
        #[arg(long, value_name = "WHEN", value_parser = parse_when)]
        until: Option<SystemTime>,
        /// Only this action (session.delete), or every action of a noun
        /// (session.).
        #[arg(long, value_name = "ACTION")]
        action: Option<String>,
        /// Only this actor (user:usr_…, runtime:rt_…, system).
        #[arg(long, value_name = "ACTOR")]
        actor: Option<String>,
        /// Stop after this many entries.
        #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..), conflicts_with = "all")]
        limit: u32,
        /// Every matching entry, following every page.
        #[arg(long)]
        all: bool,
    },
}

/// A time, or a duration back from now.
fn parse_when(text: &str) -> Result<SystemTime, String> {
    if let Ok(ago) = oma_proto::duration::parse(text) {
        return SystemTime::now()
            .checked_sub(ago)
            .ok_or_else(|| format!("{text:?} reaches back before 1970"));
    }
    humantime::parse_rfc3339_weak(text.trim())
        .map_err(|_| format!("{text:?} is neither a duration (24h, 7d) nor a time (2026-12-01T09:00:00Z)"))
}

fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}

pub async fn run(command: Command, ctx: &Ctx) -> Result<()> {
    let Command::List {
        target,
        since,
        until,
        action,
        actor,
        limit,
        all,
    } = command;
    let request = pb::ListAuditEntriesRequest {
        page: None,
        target_id: target.unwrap_or_default(),
        since: since.map(timestamp),
        until: until.map(timestamp),
        action: action.unwrap_or_default(),
        actor: actor.unwrap_or_default(),
    };
    let client = ctx.api().await?.audit();
    let entries = collect_pages((!all).then_some(limit), |page| {
        let mut client = client.clone();
        let request = pb::ListAuditEntriesRequest {
            page: Some(page),
            ..request.clone()
        };
        async move {
            let r = client.list_audit_entries(request).await?.into_inner();
            Ok((r.entries, r.next_page_token))
        }
    })
    .await?;
    ctx.emit(&Value::Array(entries.iter().map(view::audit_entry).collect()), || {
        let mut table = Table::new(&["TIME", "ACTOR", "ACTION", "TARGET", "DETAIL"]);
        for e in &entries {
            table.row([
                output::time(e.time.as_ref()),
                e.actor.clone(),
                e.action.clone(),
                e.target_id.clone(),
                e.detail_json.clone(),
            ]);
        }
        table.render()
    })
}
