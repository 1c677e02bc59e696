//! `omactl whoami`.

use anyhow::Result;
use oma_proto::pb;
use serde_json::json;

use super::{Ctx, required};
use crate::{output, view};

pub async fn run(ctx: &Ctx) -> Result<()> {
    let response = ctx
        .api()
        .await?
        .identity()
        .who_am_i(pb::WhoAmIRequest {})
        .await?
        .into_inner();
    let tenant = required(response.tenant, "tenant")?;
    let user = required(response.user, "user")?;
    let token = required(response.token, "token")?;
    let data = json!({
        "tenant": view::tenant(&tenant),
        "user": view::user(&user),
        "token": view::token(&token),
    });
    ctx.emit(&data, || {
        output::record(&[
            ("tenant", format!("{} ({})", tenant.name, tenant.id)),
            ("user", format!("{} ({})", user.name, user.id)),
            ("role", view::role(user.role)),
            ("token", format!("{} ({})", token.name, token.id)),
            ("expires", expiry(token.expire_time.as_ref())),
        ])
    })
}

/// An expiry time, or `never`.
pub fn expiry(ts: Option<&prost_types::Timestamp>) -> String {
    ts.map_or_else(|| "never".to_owned(), |t| output::time(Some(t)))
}
