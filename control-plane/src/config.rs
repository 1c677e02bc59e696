//! Command-line and environment configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::grpc::limits::{LimitsConfig, PeerRate};
use crate::service::ServiceConfig;
use crate::service::quotas::Quotas;
use crate::store::Backend;

/// Where the state lives.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DatabaseArgs {
    /// Folder for the embedded SQLite database (`oma.db`). Default: the
    /// user's data dir, e.g. ~/.local/share/oma-control-plane.
    #[arg(long, env = "OMA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Use this database instead of the embedded one:
    /// `postgres://user:pass@host/db` or `sqlite:///path/to/file.db`.
    #[arg(long, env = "OMA_DATABASE_URL", conflicts_with = "data_dir")]
    pub database_url: Option<String>,
}

impl DatabaseArgs {
    pub fn backend(&self) -> Result<Backend, String> {
        if let Some(url) = &self.database_url {
            return Ok(Backend::from_url(url));
        }
        Ok(Backend::Sqlite {
            path: self.data_dir()?.join("oma.db"),
        })
    }

    /// `--data-dir`, or the user's data dir.
    fn data_dir(&self) -> Result<PathBuf, String> {
        match &self.data_dir {
            Some(dir) => Ok(dir.clone()),
            None => Ok(dirs::data_dir()
                .ok_or("cannot find the user's data directory; pass --data-dir")?
                .join("oma-control-plane")),
        }
    }

    /// Where the first admin token is saved when stdout is no terminal and
    /// `--bootstrap-token-file` is not given: beside the embedded database.
    pub fn default_bootstrap_token_file(&self) -> Result<PathBuf, String> {
        Ok(self.data_dir()?.join("bootstrap-admin-token"))
    }
}

/// Where the secret store's key comes from (see `secrets_key`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SecretsKeyArgs {
    /// File holding the secret store's key: 32 random bytes, base64, mode
    /// 0600 or stricter. Without it: $OMA_SECRETS_KEY (the key itself,
    /// base64), else, on the embedded SQLite database, `secrets.key` beside
    /// the database (generated on first start); on PostgreSQL the secret
    /// store is off until a key is given.
    #[arg(long, env = "OMA_SECRETS_KEY_FILE", value_name = "FILE")]
    pub secrets_key_file: Option<PathBuf>,
}

impl SecretsKeyArgs {
    /// What `secrets_key::load` looks for; `env` is the value of
    /// `OMA_SECRETS_KEY` (read by the binary: tests never set process
    /// variables).
    pub fn key_config<'a>(
        &'a self,
        backend: &'a Backend,
        env: Option<&'a str>,
        may_generate: bool,
    ) -> crate::secrets_key::KeyConfig<'a> {
        crate::secrets_key::KeyConfig {
            file: self.secrets_key_file.as_deref(),
            env,
            backend,
            may_generate,
        }
    }
}

/// `oma-control-plane serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "OMA_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub secrets: SecretsKeyArgs,

    /// Serve Prometheus metrics at http://ADDR/metrics (plain HTTP, no
    /// token: bind it where only your scraper reaches it). Off by default.
    #[arg(long, env = "OMA_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// PEM certificate chain to serve TLS with.
    #[arg(long, env = "OMA_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "OMA_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Allow plaintext on a non-loopback address (only behind a proxy that
    /// terminates TLS).
    #[arg(long, env = "OMA_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,

    /// Write the first-start admin token to this file (mode 0600). Without
    /// it the token is printed when stdout is a terminal, and otherwise
    /// written to `bootstrap-admin-token` in the data dir.
    #[arg(long, env = "OMA_BOOTSTRAP_TOKEN_FILE")]
    pub bootstrap_token_file: Option<PathBuf>,

    /// How often runtimes must heartbeat; a stream silent for three intervals
    /// is declared dead and its runtime offline.
    #[arg(long, env = "OMA_HEARTBEAT_INTERVAL", default_value = "10s", value_parser = oma_proto::duration::parse)]
    pub heartbeat_interval: Duration,

    /// How long a permission request under the `ask` policy waits for a
    /// person before it is rejected.
    #[arg(long, env = "OMA_PERMISSION_TIMEOUT", default_value = "10m", value_parser = oma_proto::duration::parse)]
    pub permission_timeout: Duration,

    /// Requests handled at once across all connections; more are refused
    /// with RESOURCE_EXHAUSTED.
    #[arg(long, env = "OMA_MAX_REQUESTS_IN_FLIGHT", default_value_t = 2048)]
    pub max_requests_in_flight: usize,

    /// Requests handled at once on one connection.
    #[arg(long, env = "OMA_MAX_REQUESTS_PER_CONNECTION", default_value_t = 512)]
    pub max_requests_per_connection: usize,

    /// How long a call may take to answer (a stream only until it starts).
    #[arg(long, env = "OMA_REQUEST_TIMEOUT", default_value = "60s", value_parser = oma_proto::duration::parse)]
    pub request_timeout: Duration,

    /// Connect-code exchanges and failed authentications allowed per client
    /// address: `N/m` or `N/s`, optionally `,burst=B`; `off` disables.
    #[arg(long, env = "OMA_UNAUTHENTICATED_RATE", default_value = "60/m,burst=20", value_parser = parse_peer_rate)]
    pub unauthenticated_rate: PeerRateArg,

    /// Per-tenant quota: runtimes (paired machines).
    #[arg(long, env = "OMA_QUOTA_RUNTIMES", default_value_t = Quotas::default().runtimes)]
    pub quota_runtimes: u64,

    /// Per-tenant quota: agents.
    #[arg(long, env = "OMA_QUOTA_AGENTS", default_value_t = Quotas::default().agents)]
    pub quota_agents: u64,

    /// Per-tenant quota: sessions not deleted.
    #[arg(long, env = "OMA_QUOTA_SESSIONS", default_value_t = Quotas::default().sessions)]
    pub quota_sessions: u64,

    /// Per-tenant quota: connect codes that can still be used.
    #[arg(long, env = "OMA_QUOTA_CONNECT_CODES", default_value_t = Quotas::default().connect_codes)]
    pub quota_connect_codes: u64,

    /// Per-tenant quota: stored session events, e.g. `10GiB`; past it new
    /// turns are refused until sessions are deleted.
    #[arg(long, env = "OMA_QUOTA_STORED_BYTES", default_value = "10GiB", value_parser = parse_bytes)]
    pub quota_stored_bytes: u64,

    /// Most `WatchSession` streams one tenant may hold open at once; one
    /// more is answered RESOURCE_EXHAUSTED.
    #[arg(long, env = "OMA_MAX_WATCHERS_PER_TENANT", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_watchers_per_tenant: u32,

    /// How long a frame to a runtime may wait for room in its queue (bounded
    /// by count and bytes); a runtime that reads nothing for that long has
    /// its stream ended.
    #[arg(long, env = "OMA_RUNTIME_SEND_TIMEOUT", default_value = "10s", value_parser = oma_proto::duration::parse)]
    pub runtime_send_timeout: Duration,

    /// This replica's name among the control planes sharing one database
    /// (default: host name and listening port). The runtime streams it holds
    /// are leased under it; at start it marks offline only the runtimes of
    /// its own earlier life and those whose lease ran out. Keep it stable
    /// across restarts and distinct between replicas.
    #[arg(long, env = "OMA_REPLICA_ID")]
    pub replica_id: Option<String>,

    /// How long in-flight calls get to finish after SIGTERM/SIGINT.
    #[arg(long, env = "OMA_SHUTDOWN_GRACE", default_value = "10s", value_parser = oma_proto::duration::parse)]
    pub shutdown_grace: Duration,
}

impl ServeArgs {
    /// The live path's settings; `port` is the one listened on (part of the
    /// default replica id).
    pub fn live_config(&self, port: u16) -> crate::service::live::LiveConfig {
        crate::service::live::LiveConfig {
            heartbeat_interval: self.heartbeat_interval,
            permission_timeout: self.permission_timeout,
            send_timeout: self.runtime_send_timeout,
            replica_id: self.replica_id.clone().unwrap_or_else(|| default_replica_id(port)),
            ..Default::default()
        }
    }

    pub fn service_config(&self) -> ServiceConfig {
        ServiceConfig {
            quotas: Quotas {
                runtimes: self.quota_runtimes,
                agents: self.quota_agents,
                sessions: self.quota_sessions,
                connect_codes: self.quota_connect_codes,
                stored_bytes: self.quota_stored_bytes,
            },
            max_watchers_per_tenant: self.max_watchers_per_tenant as usize,
            ..ServiceConfig::default()
        }
    }

    pub fn limits_config(&self) -> LimitsConfig {
        LimitsConfig {
            max_in_flight: self.max_requests_in_flight.max(1),
            max_per_connection: self.max_requests_per_connection.max(1),
            request_timeout: self.request_timeout,
            peer_rate: self.unauthenticated_rate.0,
        }
    }

    /// Refuses to serve plaintext beyond loopback unless told to.
    pub fn check_tls_policy(&self) -> Result<(), String> {
        if self.tls_cert.is_none() && !self.listen.ip().to_canonical().is_loopback() && !self.insecure_plaintext {
            return Err(format!(
                "refusing to serve plaintext on {}: pass --tls-cert and --tls-key, or --insecure-plaintext when a proxy terminates TLS",
                self.listen
            ));
        }
        Ok(())
    }
}

/// A parsed `--unauthenticated-rate` (`None`: off).
#[derive(Debug, Clone, Copy)]
pub struct PeerRateArg(pub Option<PeerRate>);

fn parse_peer_rate(value: &str) -> Result<PeerRateArg, String> {
    PeerRate::parse(value).map(PeerRateArg)
}

/// Parses a size: `10GiB`, `500 MB`, or plain bytes.
fn parse_bytes(value: &str) -> Result<u64, String> {
    value
        .trim()
        .parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|_| format!("{value:?} is not a size: use e.g. 10GiB, 500MiB or a number of bytes"))
}

/// `<host name>:<port>`: stable across restarts, distinct between replicas
/// on different hosts or ports.
fn default_replica_id(port: u16) -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("10GiB").unwrap(), 10 << 30);
        assert_eq!(parse_bytes("512").unwrap(), 512);
        assert!(parse_bytes("ten").is_err());
    }

    #[test]
    fn backend_selection() {
        let db = DatabaseArgs {
            data_dir: Some("/tmp/x".into()),
            database_url: None,
        };
        assert_eq!(
            db.backend().unwrap(),
            Backend::Sqlite {
                path: "/tmp/x/oma.db".into()
            }
        );
        let db = DatabaseArgs {
            data_dir: None,
            database_url: Some("postgres://u@h/d".into()),
        };
        assert!(matches!(db.backend().unwrap(), Backend::Postgres { .. }));
    }
}
