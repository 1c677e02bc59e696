//! Test databases: a temp SQLite file, or a fresh PostgreSQL database per
//! test (created on the server named by `OMA_TEST_POSTGRES_URL`, dropped
//! afterwards).

use diesel::Connection as _;
use diesel::RunQueryDsl as _;
use diesel::pg::PgConnection;
use rand::Rng as _;
use tempfile::TempDir;

/// The environment variable naming a PostgreSQL server for tests, e.g.
/// `postgres://postgres@127.0.0.1:5432/postgres`.
pub const POSTGRES_URL_ENV: &str = "OMA_TEST_POSTGRES_URL";

pub enum TestDatabase {
    Sqlite {
        dir: TempDir,
    },
    Postgres {
        admin_url: String,
        name: String,
        url: String,
        /// For files the server writes beside its database (its first
        /// admin token).
        dir: TempDir,
    },
}

impl TestDatabase {
    pub fn sqlite() -> anyhow::Result<TestDatabase> {
        Ok(TestDatabase::Sqlite {
            dir: tempfile::tempdir()?,
        })
    }

    /// A fresh PostgreSQL database, or `None` (with a loud notice) when no
    /// server is configured.
    pub fn postgres(test: &str) -> anyhow::Result<Option<TestDatabase>> {
        let Ok(admin_url) = std::env::var(POSTGRES_URL_ENV) else {
            eprintln!(
                "\n*** SKIPPED {test} on PostgreSQL: set {POSTGRES_URL_ENV}=postgres://postgres@127.0.0.1:5432/postgres to run it ***\n"
            );
            return Ok(None);
        };
        let name = format!("oma_test_{:016x}", rand::rng().random::<u64>());
        let mut conn = PgConnection::establish(&admin_url)?;
        diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut conn)?;
        let url = match admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => anyhow::bail!("{POSTGRES_URL_ENV} must end in /<database>"),
        };
        Ok(Some(TestDatabase::Postgres {
            admin_url,
            name,
            url,
            dir: tempfile::tempdir()?,
        }))
    }

    /// The `oma-control-plane` flags selecting this database.
    pub fn args(&self) -> Vec<String> {
        match self {
            TestDatabase::Sqlite { dir } => vec!["--data-dir".into(), dir.path().display().to_string()],
            TestDatabase::Postgres { url, .. } => vec!["--database-url".into(), url.clone()],
        }
    }

    /// The `oma-control-plane serve` flags for this database: its selection
    /// and where the first start saves the admin token (stdout is no
    /// terminal here, so the server prints only the file's path).
    pub fn serve_args(&self) -> Vec<String> {
        let dir = match self {
            TestDatabase::Sqlite { dir } | TestDatabase::Postgres { dir, .. } => dir,
        };
        let mut args = self.args();
        args.push("--bootstrap-token-file".into());
        args.push(dir.path().join("bootstrap-admin-token").display().to_string());
        args
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let TestDatabase::Postgres { admin_url, name, .. } = self
            && let Ok(mut conn) = PgConnection::establish(admin_url)
        {
            let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn);
        }
    }
}
