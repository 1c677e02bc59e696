//! `omactl users …`.

use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use oma_proto::pb;
use serde_json::{Value, json};

use super::{ConfirmArgs, Ctx, ListArgs, required};
use crate::{
    connection::collect_pages,
    output::{self, Table},
    resolve::{self, Resource},
    view,
};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a user in the tenant (admin only).
    #[command(after_help = "Examples:\n  omactl users create dana\n  omactl users create ops --role admin")]
    Create {
        /// The user's name: lowercase letters, digits, '.', '_' and '-'.
        name: String,
        /// The user's role.
        #[arg(long, value_enum, default_value_t = Role::Member)]
        role: Role,
    },
    /// List the tenant's users.
    ///
    /// `-o wide` adds the tenant; `-o name` prints only the ids.
    #[command(after_help = "Examples:\n  omactl users list\n  omactl users list -o name")]
    List(ListArgs),
    /// Show a user.
    #[command(after_help = "Examples:\n  omactl users get dana\n  omactl users get usr_… -o json")]
    Get {
        /// The user: its id (usr_…) or name.
        #[arg(value_name = "USER")]
        id: String,
    },
    /// Delete a user and revoke its tokens (admin only).
    #[command(after_help = "Examples:\n  omactl users delete dana\n  omactl users delete usr_… --yes")]
    Delete {
        /// The user: its id (usr_…) or name.
        #[arg(value_name = "USER")]
        id: String,
        #[command(flatten)]
        confirm: ConfirmArgs,
    },
}

/// A user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// May use every RPC of the tenant, including the admin-only ones.
    Admin,
    /// May use the tenant's resources, but not the admin-only RPCs.
    Member,
}

pub async fn run(command: Command, ctx: &Ctx) -> Result<()> {
    match command {
        Command::Create { name, role } => {
            let role = match role {
                Role::Admin => pb::Role::Admin,
                Role::Member => pb::Role::Member,
            };
            let request = pb::CreateUserRequest {
                name,
                role: role as i32,
            };
            let response = ctx.api().await?.identity().create_user(request).await?.into_inner();
            show(ctx, &required(response.user, "user")?)
        }
        Command::List(list) => {
            let client = ctx.api().await?.identity();
            let users = collect_pages(list.limit, |page| {
                let mut client = client.clone();
                async move {
                    let r = client
                        .list_users(pb::ListUsersRequest { page: Some(page) })
                        .await?
                        .into_inner();
                    Ok((r.users, r.next_page_token))
                }
            })
            .await?;
            ctx.emit(&Value::Array(users.iter().map(view::user).collect()), || {
                let mut table = Table::with_wide(&["ID", "NAME", "ROLE", "CREATED"], &["TENANT"], ctx.format().wide());
                for u in &users {
                    table.row([
                        u.id.clone(),
                        u.name.clone(),
                        view::role(u.role),
                        output::time(u.create_time.as_ref()),
                        u.tenant_id.clone(),
                    ]);
                }
                table.render()
            })
        }
        Command::Get { id } => {
            let user_id = resolve::id(ctx, Resource::User, "USER", &id).await?;
            let response = ctx
                .api()
                .await?
                .identity()
                .get_user(pb::GetUserRequest { user_id })
                .await?
                .into_inner();
            show(ctx, &required(response.user, "user")?)
        }
        Command::Delete { id, confirm } => {
            let user_id = resolve::id(ctx, Resource::User, "USER", &id).await?;
            super::confirm(&confirm, &format!("Delete user {user_id} and revoke its tokens?"))?;
            ctx.api()
                .await?
                .identity()
                .delete_user(pb::DeleteUserRequest {
                    user_id: user_id.clone(),
                })
                .await?;
            ctx.emit(&json!({ "deleted": user_id }), || format!("User {user_id} deleted.\n"))
        }
    }
}

fn show(ctx: &Ctx, user: &pb::User) -> Result<()> {
    ctx.emit(&view::user(user), || {
        output::record(&[
            ("id", user.id.clone()),
            ("name", user.name.clone()),
            ("role", view::role(user.role)),
            ("tenant", user.tenant_id.clone()),
            ("created", output::time(user.create_time.as_ref())),
        ])
    })
}
