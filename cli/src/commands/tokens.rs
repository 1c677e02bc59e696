//! `omactl tokens …`.

use std::time::SystemTime;

use anyhow::Result;
use clap::Subcommand;
use oma_proto::{ids::TokenId, pb};
use serde_json::{Value, json};

use super::{ConfirmArgs, Ctx, ListArgs, required, whoami::expiry};
use crate::{
    connection::collect_pages,
    duration,
    output::{self, Table},
    resolve::{self, Resource},
    view,
};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mint an API token; its secret is printed once.
    #[command(
        after_help = "Examples:\n  omactl tokens create --name laptop --ttl 30d\n  omactl tokens create --user ci-bot --name ci -o json | jq -r .secret"
    )]
    Create {
        /// The user the token acts as, by id (usr_…) or name [default: you];
        /// admins may name any user of the tenant.
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// A label for the token.
        #[arg(long)]
        name: String,
        /// Lifetime, e.g. 30d, 12h, 3600s [default: never expires].
        #[arg(long, value_parser = duration::parse_seconds)]
        ttl: Option<u64>,
    },
    /// List tokens (never their secrets): yours, or the tenant's for admins.
    ///
    /// `-o wide` adds the revocation time; `-o name` prints only the ids.
    #[command(after_help = "Examples:\n  omactl tokens list\n  omactl tokens list --user dana -o wide")]
    List {
        /// Only this user's tokens: its id (usr_…) or name.
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Revoke a token at once.
    #[command(after_help = "Example: omactl tokens revoke tok_… --yes")]
    Revoke {
        /// The token's id (tok_…), not its secret.
        id: String,
        #[command(flatten)]
        confirm: ConfirmArgs,
    },
}

pub async fn run(command: Command, ctx: &Ctx) -> Result<()> {
    match command {
        Command::Create { user, name, ttl } => {
            let user_id = optional_user(ctx, user).await?;
            let request = pb::CreateTokenRequest {
                user_id,
                name,
                ttl_seconds: ttl.unwrap_or(0),
            };
            let response = ctx.api().await?.identity().create_token(request).await?.into_inner();
            let token = required(response.token, "token")?;
            let secret = response.secret;
            let data = json!({ "token": view::token(&token), "secret": secret });
            ctx.emit(&data, || {
                let mut text = output::record(&[
                    ("id", token.id.clone()),
                    ("name", token.name.clone()),
                    ("user", token.user_id.clone()),
                    ("expires", expiry(token.expire_time.as_ref())),
                    ("secret", secret.clone()),
                ]);
                text.push_str("\nThe secret is shown only this once: store it now.\n");
                text
            })
        }
        Command::List { user, list } => {
            let user_id = optional_user(ctx, user).await?;
            let client = ctx.api().await?.identity();
            let tokens = collect_pages(list.limit, |page| {
                let mut client = client.clone();
                let user_id = user_id.clone();
                async move {
                    let request = pb::ListTokensRequest {
                        page: Some(page),
                        user_id,
                    };
                    let r = client.list_tokens(request).await?.into_inner();
                    Ok((r.tokens, r.next_page_token))
                }
            })
            .await?;
            ctx.emit(&Value::Array(tokens.iter().map(view::token).collect()), || {
                let mut table = Table::with_wide(
                    &["ID", "NAME", "USER", "STATE", "EXPIRES", "LAST USED", "CREATED"],
                    &["REVOKED"],
                    ctx.format().wide(),
                );
                for t in &tokens {
                    table.row([
                        t.id.clone(),
                        t.name.clone(),
                        t.user_id.clone(),
                        state(t).to_owned(),
                        expiry(t.expire_time.as_ref()),
                        output::time(t.last_used_time.as_ref()),
                        output::time(t.create_time.as_ref()),
                        output::time(t.revoke_time.as_ref()),
                    ]);
                }
                table.render()
            })
        }
        Command::Revoke { id, confirm } => {
            let token_id = TokenId::parse("token id", &id)?.to_string();
            super::confirm(
                &confirm,
                &format!("Revoke token {token_id}? Whatever uses it stops working."),
            )?;
            let request = pb::RevokeTokenRequest { token_id };
            let response = ctx.api().await?.identity().revoke_token(request).await?.into_inner();
            let token = required(response.token, "token")?;
            ctx.emit(&view::token(&token), || {
                format!(
                    "Token {} ({}) revoked at {}.\n",
                    token.id,
                    token.name,
                    output::time(token.revoke_time.as_ref())
                )
            })
        }
    }
}

async fn optional_user(ctx: &Ctx, user: Option<String>) -> Result<String> {
    match user {
        Some(user) => resolve::id(ctx, Resource::User, "--user", &user).await,
        None => Ok(String::new()),
    }
}

/// `revoked`, `expired` or `active`.
fn state(token: &pb::ApiToken) -> &'static str {
    let now = prost_types::Timestamp::from(SystemTime::now());
    if token.revoke_time.is_some() {
        "revoked"
    } else if token
        .expire_time
        .as_ref()
        .is_some_and(|e| (e.seconds, e.nanos) <= (now.seconds, now.nanos))
    {
        "expired"
    } else {
        "active"
    }
}
