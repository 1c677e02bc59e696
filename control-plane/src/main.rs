//! The `oma-control-plane` binary: `serve` (the default) and offline `admin`
//! commands that work straight on the database.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use oma_control_plane::config::{DatabaseArgs, SecretsKeyArgs, ServeArgs};
use oma_control_plane::secrets_key::{self, KEY_ENV, KeySource, LoadedKey};
use oma_control_plane::service::ServiceError;
use oma_control_plane::service::identity::offline;
use oma_control_plane::service::sealing::SecretsKey;
use oma_control_plane::service::secret_store;
use oma_control_plane::store::Store;
use oma_control_plane::{RunConfig, run};
use oma_proto::model::Role;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Identity, ServerTlsConfig};

/// The OMA runtime control plane: configure, start, watch and record coding
/// agents that run on your team's own machines.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    serve: ServeArgs,

    /// How log lines are written to stderr: `text` for people, `json` (one
    /// object a line, with the span fields) for a log collector.
    #[arg(long, global = true, env = "OMA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the gRPC API (what the binary does with no subcommand).
    Serve(ServeArgs),
    /// Administer the database directly, with no server running.
    Admin {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        secrets: SecretsKeyArgs,
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Create a tenant with an admin user, and print the admin's token once.
    CreateTenant {
        /// The tenant's name.
        name: String,
        /// The first admin's user name.
        #[arg(long, default_value = "admin")]
        admin: String,
    },
    /// List tenants.
    ListTenants,
    /// Mint an API token for a user (created if missing) and print it once.
    CreateToken {
        /// The tenant's name.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// The user's name.
        #[arg(long, default_value = "admin")]
        user: String,
        /// The role given to the user if it has to be created.
        #[arg(long, default_value = "admin", value_parser = ["admin", "member"])]
        role: String,
        /// A label for the token.
        #[arg(long, default_value = "admin-cli")]
        name: String,
        /// Lifetime, e.g. 30d; default: never expires.
        #[arg(long, value_parser = oma_proto::duration::parse)]
        ttl: Option<Duration>,
    },
    /// Create the database and apply migrations, then exit.
    Migrate,
    /// Re-encrypt every secret of every tenant under a new, random key, in
    /// one transaction, and save the new key.
    ///
    /// The current key is found as `serve` finds it (--secrets-key-file,
    /// OMA_SECRETS_KEY, or `secrets.key` beside the SQLite database). Stop
    /// every control plane on this database first (one still running holds
    /// the old key and can no longer read the secrets), then start them
    /// with the new key. The new key replaces the current key file (written
    /// beside it first, then renamed over it), or goes to --new-key-file;
    /// when the current key comes from OMA_SECRETS_KEY and --new-key-file is
    /// not given, it is printed once on stdout. On any error nothing changes.
    #[command(
        after_help = "Examples:\n  oma-control-plane admin rotate-secrets-key\n  oma-control-plane admin --database-url postgres://… --secrets-key-file /etc/oma/secrets.key rotate-secrets-key --new-key-file /etc/oma/secrets.key.2"
    )]
    RotateSecretsKey {
        /// Write the new key to this new file (mode 0600) instead; the
        /// current key file is left as it is.
        #[arg(long, value_name = "FILE")]
        new_key_file: Option<std::path::PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;

    match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(args)) => serve(args),
        Some(Command::Admin {
            database,
            secrets,
            command,
        }) => admin(&database, &secrets, command),
    }
}

/// Logs to stderr, filtered by `OMA_LOG` (`info` by default; the request
/// log is target `oma::request`).
fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("OMA_LOG").unwrap_or_else(|_| "info,h2=warn,tower=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).init(),
    }
}

fn open_store(database: &DatabaseArgs) -> anyhow::Result<Store> {
    let backend = database.backend().map_err(anyhow::Error::msg)?;
    tracing::info!(database = %backend.describe(), "opening database");
    Store::open(&backend).with_context(|| format!("cannot open {}", backend.describe()))
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    args.check_tls_policy().map_err(anyhow::Error::msg)?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let cert = std::fs::read(cert).with_context(|| format!("cannot read --tls-cert {}", cert.display()))?;
            let key = std::fs::read(key).with_context(|| format!("cannot read --tls-key {}", key.display()))?;
            Some(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
        }
        _ => None,
    };
    let store = open_store(&args.database)?;
    let secrets_key = load_secrets_key(&args.database, &args.secrets, &store, true)?;
    if let Some(new) = offline::bootstrap(&store)? {
        println!(
            "first start: created tenant {:?} and admin user {:?}",
            new.tenant.name, new.admin.name
        );
        announce_bootstrap_token(&args, &new.bearer)?;
    }
    match &secrets_key {
        Some(LoadedKey {
            source: KeySource::Generated(path),
            key,
        }) => println!(
            "generated the secrets key {} in {} (mode 0600): back it up, without it the stored secrets are lost",
            key.id(),
            path.display()
        ),
        Some(loaded) => {
            tracing::info!(key_id = loaded.key.id(), source = %secrets_key::describe(&loaded.source), "secret store ready")
        }
        None => tracing::warn!(
            "no secrets key: the secret store is off until the control plane is started with --secrets-key-file or {KEY_ENV}"
        ),
    }
    let mut service_config = args.service_config();
    service_config.secrets_key = secrets_key.map(|loaded| loaded.key);

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let local = listener.local_addr()?;
        println!(
            "oma-control-plane listening on {local}{}",
            if tls.is_some() { " (tls)" } else { "" }
        );
        std::io::stdout().flush()?;
        tracing::info!(%local, tls = tls.is_some(), "serving");
        let metrics = match args.metrics_listen {
            Some(addr) => {
                let handle = oma_control_plane::metrics::install()?;
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on --metrics-listen {addr}"))?;
                let local = listener.local_addr()?;
                println!("oma-control-plane metrics on http://{local}/metrics");
                std::io::stdout().flush()?;
                Some((handle, listener))
            }
            None => None,
        };

        let shutdown = CancellationToken::new();
        let mut server = tokio::spawn(run(
            RunConfig {
                store,
                service: service_config,
                live: args.live_config(local.port()),
                limits: args.limits_config(),
                tls,
                metrics,
            },
            listener,
            shutdown.clone(),
        ));
        tokio::select! {
            result = wait_for_signal() => result?,
            result = &mut server => {
                result??;
                bail!("the server stopped on its own");
            }
        }
        tracing::info!("shutting down");
        shutdown.cancel();
        // In-flight calls (and watch streams) get the grace period; then the
        // process exits anyway.
        match tokio::time::timeout(args.shutdown_grace, server).await {
            Ok(result) => result??,
            Err(_) => {
                tracing::warn!(grace = ?args.shutdown_grace, "calls still running after the grace period; exiting")
            }
        }
        Ok(())
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// The first admin token goes only to a person at a terminal or into a
/// 0600 file: under systemd, docker or a CI runner stdout is a log that
/// others can read.
fn announce_bootstrap_token(args: &ServeArgs, bearer: &str) -> anyhow::Result<()> {
    let to_terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    if to_terminal {
        println!("admin token (shown once; store it now): {bearer}");
    }
    let path = match &args.bootstrap_token_file {
        Some(path) => path.clone(),
        None if to_terminal => return Ok(()),
        None => args
            .database
            .default_bootstrap_token_file()
            .map_err(anyhow::Error::msg)?,
    };
    write_secret_file(&path, bearer).with_context(|| {
        format!(
            "the first admin token could not be saved to {}; mint another with `oma-control-plane admin create-token`",
            path.display()
        )
    })?;
    println!("admin token written to {} (mode 0600; shown once)", path.display());
    Ok(())
}

/// Writes a new file readable by its owner only. An existing file (or a
/// symlink planted in its place) is removed first, never written through.
fn write_secret_file(path: &Path, secret: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(file, "{secret}")?;
    Ok(())
}

/// The secret store's key, found (or on SQLite generated) and checked
/// against the database's secrets; `None` when there is none and none is
/// needed.
fn load_secrets_key(
    database: &DatabaseArgs,
    args: &SecretsKeyArgs,
    store: &Store,
    may_generate: bool,
) -> anyhow::Result<Option<LoadedKey>> {
    let backend = database.backend().map_err(anyhow::Error::msg)?;
    let env = std::env::var(KEY_ENV).ok().filter(|v| !v.is_empty());
    secrets_key::load(&args.key_config(&backend, env.as_deref(), may_generate), store).map_err(anyhow::Error::msg)
}

/// `admin rotate-secrets-key`: the new key is on disk (or about to be
/// printed) before the transaction commits, so no outcome leaves secrets
/// under a key nobody has.
fn rotate_secrets_key(
    database: &DatabaseArgs,
    args: &SecretsKeyArgs,
    store: &Store,
    new_key_file: Option<&Path>,
) -> anyhow::Result<()> {
    let Some(current) = load_secrets_key(database, args, store, false)? else {
        bail!("no secrets key is configured and the database holds no secrets: there is nothing to rotate");
    };
    let new = SecretsKey::generate();
    // Where the new key goes before the rotation commits, and where it
    // must end up.
    let (staged, replace) = match (new_key_file, current.source.file()) {
        (Some(path), _) => (Some(path.to_owned()), None),
        (None, Some(current_file)) => {
            let mut staged = current_file.as_os_str().to_owned();
            staged.push(".new");
            let staged = std::path::PathBuf::from(staged);
            if staged.exists() {
                bail!(
                    "{} exists: an earlier rotation may have stopped before replacing {}; if the secrets are under that key, move it there, else delete it, and run this again",
                    staged.display(),
                    current_file.display()
                );
            }
            (Some(staged), Some(current_file.to_owned()))
        }
        (None, None) => (None, None),
    };
    if let Some(path) = &staged {
        secrets_key::write_key_file(path, &new)
            .with_context(|| format!("cannot write the new secrets key to {}", path.display()))?;
    }
    let rotation = match secret_store::rotate_key(store, &current.key, &new) {
        Ok(rotation) => rotation,
        Err(e) => {
            if let Some(path) = &staged {
                let _ = std::fs::remove_file(path);
            }
            bail!("{e}");
        }
    };
    println!(
        "re-encrypted {} secrets of {} tenants from key {} to key {}",
        rotation.secrets,
        rotation.tenants,
        current.key.id(),
        new.id()
    );
    match (staged, replace) {
        (Some(staged), Some(current_file)) => {
            std::fs::rename(&staged, &current_file).with_context(|| {
                format!(
                    "the secrets are now under the new key, which is in {}: move it to {} before the next start",
                    staged.display(),
                    current_file.display()
                )
            })?;
            println!("the new key replaced {} (mode 0600)", current_file.display());
        }
        (Some(staged), None) => println!(
            "the new key is in {} (mode 0600): start the control plane with --secrets-key-file {}",
            staged.display(),
            staged.display()
        ),
        (None, _) => println!(
            "new secrets key (set {KEY_ENV} to it before the next start; shown once): {}",
            new.to_base64()
        ),
    }
    Ok(())
}

fn admin(database: &DatabaseArgs, secrets: &SecretsKeyArgs, command: AdminCommand) -> anyhow::Result<()> {
    let store = open_store(database)?;
    let result = match command {
        AdminCommand::RotateSecretsKey { new_key_file } => {
            return rotate_secrets_key(database, secrets, &store, new_key_file.as_deref());
        }
        AdminCommand::Migrate => {
            println!("database is migrated");
            Ok(())
        }
        AdminCommand::CreateTenant { name, admin } => offline::create_tenant(&store, &name, &admin).map(|new| {
            println!(
                "tenant {} ({}) with admin {} ({})",
                new.tenant.name, new.tenant.id, new.admin.name, new.admin.id
            );
            println!("admin token (shown once; store it now): {}", new.bearer);
        }),
        AdminCommand::ListTenants => offline::list_tenants(&store).map(|tenants| {
            for t in tenants {
                println!("{}\t{}", t.id, t.name);
            }
        }),
        AdminCommand::CreateToken {
            tenant,
            user,
            role,
            name,
            ttl,
        } => {
            let role = Role::parse_stored(&role).unwrap_or(Role::Member);
            offline::create_token(&store, &tenant, &user, role, &name, ttl).map(|(user, new)| {
                println!(
                    "token {} for user {} ({}, {})",
                    new.token.id, user.name, user.id, user.role
                );
                println!("token (shown once; store it now): {}", new.bearer);
            })
        }
    };
    result.map_err(|e: ServiceError| anyhow::anyhow!("{e}"))
}
