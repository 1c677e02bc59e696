//! `omactl audit …`.

use anyhow::Result;
use clap::Subcommand;
use oma_proto::pb;
use serde_json::Value;

use super::{Ctx, ListArgs};
use crate::{
    connection::collect_pages,
    output::{self, Table},
    view,
};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List audit entries, newest first (admin only).
    List {
        /// Only entries about this id (of any kind).
        #[arg(long, value_name = "ID")]
        target: Option<String>,
        #[command(flatten)]
        list: ListArgs,
    },
}

pub async fn run(command: Command, ctx: &Ctx) -> Result<()> {
    let Command::List { target, list } = command;
    let target_id = target.unwrap_or_default();
    let client = ctx.api().await?.audit();
    let entries = collect_pages(list.limit, |page| {
        let mut client = client.clone();
        let target_id = target_id.clone();
        async move {
            let request = pb::ListAuditEntriesRequest {
                page: Some(page),
                target_id,
            };
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
