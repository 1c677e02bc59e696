//! Command-line and environment configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
        let dir = match &self.data_dir {
            Some(dir) => dir.clone(),
            None => dirs::data_dir()
                .ok_or("cannot find the user's data directory; pass --data-dir")?
                .join("oma-control-plane"),
        };
        Ok(Backend::Sqlite {
            path: dir.join("oma.db"),
        })
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

    /// Also write the first-start admin token to this file (mode 0600).
    #[arg(long, env = "OMA_BOOTSTRAP_TOKEN_FILE")]
    pub bootstrap_token_file: Option<PathBuf>,

    /// How often runtimes must heartbeat; a stream silent for three intervals
    /// is declared dead and its runtime offline.
    #[arg(long, env = "OMA_HEARTBEAT_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    /// How long a permission request under the `ask` policy waits for a
    /// person before it is rejected.
    #[arg(long, env = "OMA_PERMISSION_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub permission_timeout: Duration,

    /// How long a frame to a runtime may wait for room in its queue (bounded
    /// by count and bytes); a runtime that reads nothing for that long has
    /// its stream ended.
    #[arg(long, env = "OMA_RUNTIME_SEND_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub runtime_send_timeout: Duration,

    /// How long in-flight calls get to finish after SIGTERM/SIGINT.
    #[arg(long, env = "OMA_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

impl ServeArgs {
    pub fn live_config(&self) -> crate::service::live::LiveConfig {
        crate::service::live::LiveConfig {
            heartbeat_interval: self.heartbeat_interval,
            permission_timeout: self.permission_timeout,
            send_timeout: self.runtime_send_timeout,
            ..Default::default()
        }
    }

    /// Refuses to serve plaintext beyond loopback unless told to.
    pub fn check_tls_policy(&self) -> Result<(), String> {
        if self.tls_cert.is_none() && !self.listen.ip().is_loopback() && !self.insecure_plaintext {
            return Err(format!(
                "refusing to serve plaintext on {}: pass --tls-cert and --tls-key, or --insecure-plaintext when a proxy terminates TLS",
                self.listen
            ));
        }
        Ok(())
    }
}

/// Parses `90s`, `5m`, `2h`, `1d` or plain seconds.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let (digits, unit) = value.split_at(value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{value:?} is not a duration: use e.g. 30s, 5m, 2h or 7d"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => return Ok(Duration::from_millis(n)),
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("{value:?} has unknown unit {unit:?}: use ms, s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("m").is_err());
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
