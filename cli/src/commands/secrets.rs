//! `omactl secrets …`: the secret store. Values go in from a file or stdin,
//! never from the command line, and never come back out.

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand, ValueEnum};
use oma_proto::{ids::SecretId, pb, secret as rules};
use serde_json::{Value, json};

use super::{ConfirmArgs, Ctx, ListArgs, required};
use crate::{
    connection::collect_pages,
    error::{Failure, exit},
    output::{self, Table},
    view,
};

const VALUE_HELP: &str = "The value is read from --value-file or stdin (--value-stdin), never from the command line, \
where it would land in the shell's history and the process list. One trailing newline is dropped, except for \
--kind file, whose bytes are kept exactly. At most 64 KiB. No command ever prints a value back.";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Store a new secret (admins only).
    #[command(
        long_about = format!("Store a new secret (admins only).\n\n{VALUE_HELP}"),
        after_help = "Examples:\n  pass show anthropic | omactl secrets create anthropic-key --kind api_key --value-stdin\n  omactl secrets create codex-login --kind file --value-file ~/.codex/auth.json"
    )]
    Create {
        /// The secret's name: lowercase letters, digits, '.', '_' and '-',
        /// unique in the tenant.
        name: String,
        #[arg(long, value_enum, default_value_t = Kind::Generic)]
        kind: Kind,
        #[command(flatten)]
        value: ValueArgs,
    },
    /// List the tenant's secrets: names, kinds, versions and times, never
    /// values.
    ///
    /// `-o wide` adds the id and who created it; `-o name` prints only the
    /// ids.
    #[command(after_help = "Examples:\n  omactl secrets list\n  omactl secrets list -o wide")]
    List {
        #[command(flatten)]
        list: ListArgs,
    },
    /// Show one secret's metadata (never its value).
    #[command(after_help = "Example: omactl secrets get anthropic-key -o yaml")]
    Get {
        /// The secret: its name or id (sec_…).
        #[arg(value_name = "SECRET")]
        secret: String,
    },
    /// Replace a secret's value; its version goes up by one (admins only).
    #[command(
        long_about = format!("Replace a secret's value; its version goes up by one (admins only).\n\n{VALUE_HELP}"),
        after_help = "Examples:\n  pass show anthropic | omactl secrets update anthropic-key --value-stdin\n  omactl secrets update codex-login --value-file ~/.codex/auth.json --expected-version 3"
    )]
    Update {
        /// The secret: its name or id (sec_…).
        #[arg(value_name = "SECRET")]
        secret: String,
        /// A new kind [default: keep the stored one].
        #[arg(long, value_enum)]
        kind: Option<Kind>,
        /// Refuse the update (exit 6) unless the secret is at this version.
        #[arg(long, value_name = "N")]
        expected_version: Option<u64>,
        #[command(flatten)]
        value: ValueArgs,
    },
    /// Delete a secret and its value (admins only).
    #[command(
        after_help = "Examples:\n  omactl secrets delete anthropic-key\n  omactl secrets list -o name | xargs -n1 omactl secrets delete --yes"
    )]
    Delete {
        /// The secret: its name or id (sec_…).
        #[arg(value_name = "SECRET")]
        secret: String,
        #[command(flatten)]
        confirm: ConfirmArgs,
    },
}

/// Where the value comes from: exactly one of the two.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ValueArgs {
    /// Read the value from this file.
    #[arg(long, value_name = "PATH")]
    pub value_file: Option<PathBuf>,
    /// Read the value from stdin, to its end.
    #[arg(long)]
    pub value_stdin: bool,
}

/// A secret's kind, as typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum Kind {
    Generic,
    ApiKey,
    OauthToken,
    File,
}

impl From<Kind> for pb::SecretKind {
    fn from(kind: Kind) -> pb::SecretKind {
        match kind {
            Kind::Generic => pb::SecretKind::Generic,
            Kind::ApiKey => pb::SecretKind::ApiKey,
            Kind::OauthToken => pb::SecretKind::OauthToken,
            Kind::File => pb::SecretKind::File,
        }
    }
}

/// Whether a command reads stdin for the value (it then cannot also read
/// the token there).
pub fn reads_stdin(command: &Command) -> bool {
    matches!(
        command,
        Command::Create { value, .. } | Command::Update { value, .. } if value.value_stdin
    )
}

/// The value to send: the file's or stdin's bytes, less one trailing
/// newline unless the kind is `file`.
fn read_value(args: &ValueArgs, keep_exactly: bool) -> Result<Vec<u8>> {
    let mut bytes = match &args.value_file {
        Some(path) => std::fs::read(path).with_context(|| format!("cannot read --value-file {}", path.display()))?,
        None => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .lock()
                .read_to_end(&mut bytes)
                .context("cannot read the value from stdin")?;
            bytes
        }
    };
    if !keep_exactly {
        if bytes.ends_with(b"\r\n") {
            bytes.truncate(bytes.len() - 2);
        } else if bytes.ends_with(b"\n") {
            bytes.truncate(bytes.len() - 1);
        }
    }
    rules::value("value", &bytes)?;
    Ok(bytes)
}

/// The name of the secret `arg` names: `arg` itself, or for an id (sec_…)
/// the name of the secret that has it.
async fn secret_name(ctx: &Ctx, arg: &str) -> Result<String> {
    if SecretId::parse("SECRET", arg).is_err() {
        rules::name("SECRET", arg)?;
        return Ok(arg.to_owned());
    }
    list_all(ctx, None)
        .await?
        .into_iter()
        .find(|s| s.id == arg)
        .map(|s| s.name)
        .ok_or_else(|| Failure::new(exit::NOT_FOUND, format!("secret {arg} not found")).into())
}

async fn list_all(ctx: &Ctx, limit: Option<u32>) -> Result<Vec<pb::Secret>> {
    let client = ctx.api().await?.secrets();
    Ok(collect_pages(limit, |page| {
        let mut client = client.clone();
        async move {
            let r = client
                .list_secrets(pb::ListSecretsRequest { page: Some(page) })
                .await?
                .into_inner();
            Ok((r.secrets, r.next_page_token))
        }
    })
    .await?)
}

fn record(secret: &pb::Secret) -> String {
    output::record(&[
        ("name", secret.name.clone()),
        ("id", secret.id.clone()),
        ("kind", view::secret_kind(secret.kind)),
        ("version", secret.version.to_string()),
        ("created", output::time(secret.create_time.as_ref())),
        ("updated", output::time(secret.update_time.as_ref())),
        ("last used", output::time(secret.last_used_time.as_ref())),
    ])
}

pub async fn run(command: Command, ctx: &Ctx) -> Result<()> {
    match command {
        Command::Create { name, kind, value } => {
            rules::name("NAME", &name)?;
            let value = read_value(&value, kind == Kind::File)?;
            let request = pb::CreateSecretRequest {
                name,
                kind: pb::SecretKind::from(kind) as i32,
                value,
            };
            let response = ctx.api().await?.secrets().create_secret(request).await?.into_inner();
            let secret = required(response.secret, "secret")?;
            ctx.emit(&view::secret(&secret), || record(&secret))
        }
        Command::List { list } => {
            let secrets = list_all(ctx, list.limit).await?;
            ctx.emit(&Value::Array(secrets.iter().map(view::secret).collect()), || {
                let mut table = Table::with_wide(
                    &["NAME", "KIND", "VERSION", "UPDATED", "LAST USED"],
                    &["ID", "CREATED BY", "CREATED"],
                    ctx.format().wide(),
                );
                for s in &secrets {
                    table.row([
                        s.name.clone(),
                        view::secret_kind(s.kind),
                        s.version.to_string(),
                        output::time(s.update_time.as_ref()),
                        output::time(s.last_used_time.as_ref()),
                        s.id.clone(),
                        s.created_by_user_id.clone(),
                        output::time(s.create_time.as_ref()),
                    ]);
                }
                table.render()
            })
        }
        Command::Get { secret } => {
            let name = secret_name(ctx, &secret).await?;
            let response = ctx
                .api()
                .await?
                .secrets()
                .get_secret(pb::GetSecretRequest { name })
                .await?
                .into_inner();
            let secret = required(response.secret, "secret")?;
            ctx.emit(&view::secret(&secret), || record(&secret))
        }
        Command::Update {
            secret,
            kind,
            expected_version,
            value,
        } => {
            let name = secret_name(ctx, &secret).await?;
            let value = read_value(&value, kind == Some(Kind::File))?;
            let request = pb::UpdateSecretRequest {
                name,
                value,
                kind: kind.map_or(pb::SecretKind::Unspecified, pb::SecretKind::from) as i32,
                expected_version: expected_version.unwrap_or(0),
            };
            let response = ctx.api().await?.secrets().update_secret(request).await?.into_inner();
            let secret = required(response.secret, "secret")?;
            ctx.emit(&view::secret(&secret), || record(&secret))
        }
        Command::Delete { secret, confirm } => {
            let name = secret_name(ctx, &secret).await?;
            let client = ctx.api().await?.secrets();
            let stored = required(
                client
                    .clone()
                    .get_secret(pb::GetSecretRequest { name: name.clone() })
                    .await?
                    .into_inner()
                    .secret,
                "secret",
            )?;
            super::confirm(
                &confirm,
                &format!(
                    "Delete secret {name} (version {})? Its value is gone for good.",
                    stored.version
                ),
            )?;
            client
                .clone()
                .delete_secret(pb::DeleteSecretRequest { name: name.clone() })
                .await?;
            ctx.emit(&json!({ "deleted": stored.id }), || {
                format!("Secret {name} ({}) deleted.\n", stored.id)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_file(content: &[u8], keep: bool) -> Result<Vec<u8>> {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), content).unwrap();
        read_value(
            &ValueArgs {
                value_file: Some(file.path().to_owned()),
                value_stdin: false,
            },
            keep,
        )
    }

    #[test]
    fn one_trailing_newline_is_dropped_except_for_files() {
        assert_eq!(from_file(b"sk-1\n", false).unwrap(), b"sk-1");
        assert_eq!(from_file(b"sk-1\r\n", false).unwrap(), b"sk-1");
        assert_eq!(from_file(b"sk-1\n\n", false).unwrap(), b"sk-1\n");
        assert_eq!(from_file(b"{}\n", true).unwrap(), b"{}\n");
        let empty = from_file(b"\n", false).unwrap_err().to_string();
        assert_eq!(empty, "value: must not be empty");
        let big = from_file(&vec![b'a'; 64 * 1024 + 1], true).unwrap_err().to_string();
        assert!(big.contains("more than the limit of 65536 bytes"), "{big}");
    }
}
