//! The store: the only place that talks SQL. It owns the connection pool and
//! runs every query on blocking threads (diesel is synchronous), through
//! [`Store::read`] and [`Store::write`], which add the span and the retry of
//! transient errors (SQLite busy, PostgreSQL serialization failures).
//!
//! One schema and one set of queries serve both backends through diesel's
//! `MultiConnection`.

pub mod event_rows;
pub mod rows;
pub mod schema;
pub mod secrets;
pub mod usage;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, PooledConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/postgres");

/// A connection to either backend.
#[derive(diesel::MultiConnection)]
pub enum DbConn {
    Sqlite(diesel::SqliteConnection),
    Postgres(diesel::PgConnection),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] diesel::result::Error),
    #[error("connection pool: {0}")]
    Pool(String),
    #[error("migrations failed: {0}")]
    Migration(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("blocking task failed: {0}")]
    Join(String),
}

impl StoreError {
    /// Errors worth retrying the whole transaction for.
    pub fn is_transient(&self) -> bool {
        use diesel::result::{DatabaseErrorKind, Error};
        match self {
            StoreError::Db(Error::DatabaseError(DatabaseErrorKind::SerializationFailure, _)) => true,
            StoreError::Db(Error::DatabaseError(_, info)) => {
                let m = info.message();
                m.contains("database is locked") || m.contains("database table is locked")
            }
            _ => false,
        }
    }

    /// True for a unique-constraint violation (a taken name).
    pub fn is_unique_violation(&self) -> bool {
        matches!(
            self,
            StoreError::Db(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _
            ))
        )
    }
}

/// Which database the store runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// An embedded SQLite file.
    Sqlite { path: std::path::PathBuf },
    /// A PostgreSQL URL.
    Postgres { url: String },
}

impl Backend {
    /// `postgres://…`/`postgresql://…` is PostgreSQL; `sqlite://PATH` or a
    /// plain path is SQLite.
    pub fn from_url(url: &str) -> Self {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres { url: url.to_owned() }
        } else {
            let path = url.strip_prefix("sqlite://").unwrap_or(url);
            Backend::Sqlite { path: path.into() }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Backend::Sqlite { path } => format!("sqlite {}", path.display()),
            // Never log a password.
            Backend::Postgres { url } => match url.split_once('@') {
                Some((_, host)) => format!("postgres …@{host}"),
                None => format!("postgres {url}"),
            },
        }
    }
}

#[derive(Debug)]
struct SqlitePragmas;

impl CustomizeConnection<DbConn, diesel::r2d2::Error> for SqlitePragmas {
    fn on_acquire(&self, conn: &mut DbConn) -> Result<(), diesel::r2d2::Error> {
        if let DbConn::Sqlite(c) = conn {
            // busy_timeout makes concurrent writers wait, not fail; NORMAL is
            // durable across process crashes (not power loss) at a fraction
            // of the fsyncs. (WAL is set once, at open: it is persistent, and
            // switching to it needs a lock a fresh connection may not get.)
            // wal_autocheckpoint = 0: the checkpointer thread does that
            // work (see `Checkpointer`), not whichever commit crosses the
            // threshold.
            c.batch_execute(
                "PRAGMA busy_timeout = 10000; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
                 PRAGMA wal_autocheckpoint = 0;",
            )
            .map_err(diesel::r2d2::Error::QueryError)?;
        }
        Ok(())
    }
}

/// How often the SQLite WAL is copied back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Checkpoints a SQLite database's WAL on a thread of its own, beside the
/// writers. Left to SQLite, the connection whose commit pushes the WAL past
/// 1,000 pages does it, fsync of the database file included: that is the
/// event log's writer, every third of a second at 1,000 events/s, stalling
/// every event behind it for milliseconds (it was most of the relay's p99).
/// A PASSIVE checkpoint never blocks readers or writers; the thread ends
/// when the last clone of the store is dropped.
struct Checkpointer {
    _stop: std::sync::mpsc::Sender<()>,
}

impl Checkpointer {
    fn start(pool: Pool<ConnectionManager<DbConn>>) -> Checkpointer {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("oma-sqlite-checkpoint".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY) {
                    let result = pool.get().map_err(|e| e.to_string()).and_then(|mut c| {
                        c.batch_execute("PRAGMA wal_checkpoint(PASSIVE);")
                            .map_err(|e| e.to_string())
                    });
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "a SQLite WAL checkpoint failed; the next one retries");
                    }
                }
            });
        if let Err(e) = spawned {
            // Without the thread the WAL only grows until a restart; say so.
            tracing::error!(error = %e, "cannot start the SQLite checkpoint thread");
        }
        Checkpointer { _stop: stop }
    }
}

/// The pool and the way to use it.
#[derive(Clone)]
pub struct Store {
    pool: Pool<ConnectionManager<DbConn>>,
    backend_name: &'static str,
    /// SQLite only.
    _checkpointer: Option<Arc<Checkpointer>>,
}

const MAX_ATTEMPTS: u32 = 5;

/// A database operation taking this long is logged as slow.
const SLOW_OPERATION: std::time::Duration = std::time::Duration::from_secs(1);

impl Store {
    /// Opens the database (creating a SQLite file and its folder if needed)
    /// and runs pending migrations.
    pub fn open(backend: &Backend) -> Result<Store, StoreError> {
        let (url, max_size, backend_name) = match backend {
            Backend::Sqlite { path } => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| StoreError::Pool(format!("cannot create {}: {e}", parent.display())))?;
                }
                (path.to_string_lossy().into_owned(), 8, "sqlite")
            }
            Backend::Postgres { url } => (url.clone(), 16, "postgres"),
        };
        let manager = ConnectionManager::<DbConn>::new(url);
        let pool = Pool::builder()
            .max_size(max_size)
            .connection_timeout(Duration::from_secs(10))
            .connection_customizer(Box::new(SqlitePragmas))
            .build(manager)
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        let checkpointer =
            matches!(backend, Backend::Sqlite { .. }).then(|| Arc::new(Checkpointer::start(pool.clone())));
        let store = Store {
            pool,
            backend_name,
            _checkpointer: checkpointer,
        };
        store.migrate()?;
        Ok(store)
    }

    /// Opens a SQLite file store; for tests and the embedded default.
    pub fn open_sqlite(path: &Path) -> Result<Store, StoreError> {
        Self::open(&Backend::Sqlite { path: path.to_owned() })
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend_name
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let result = match &mut *conn {
            DbConn::Sqlite(c) => {
                // WAL lets readers run beside the writer.
                c.batch_execute("PRAGMA journal_mode = WAL;").map_err(StoreError::Db)?;
                c.run_pending_migrations(SQLITE_MIGRATIONS).map(|v| v.len())
            }
            DbConn::Postgres(c) => c.run_pending_migrations(POSTGRES_MIGRATIONS).map(|v| v.len()),
        };
        let applied = result.map_err(|e| StoreError::Migration(e.to_string()))?;
        if applied > 0 {
            tracing::info!(applied, backend = self.backend_name, "applied migrations");
        }
        Ok(())
    }

    fn conn(&self) -> Result<PooledConnection<ConnectionManager<DbConn>>, StoreError> {
        self.pool.get().map_err(|e| StoreError::Pool(e.to_string()))
    }

    /// Runs `f` on a pooled connection on a blocking thread. `op` names
    /// the operation in its span and in the latency histogram.
    pub async fn read<T, E, F>(&self, op: &'static str, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut DbConn) -> Result<T, E> + Send + 'static,
    {
        let store = self.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            span.in_scope(|| {
                store.observed(op, "read", || {
                    let mut conn = store.conn()?;
                    f(&mut conn)
                })
            })
        })
        .await
        .map_err(|e| StoreError::Join(e.to_string()))?
    }

    /// Whether the database answers a trivial query (health checks).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.read("ping", |conn| {
            use diesel::RunQueryDsl as _;
            diesel::sql_query("SELECT 1").execute(conn).map_err(StoreError::Db)?;
            Ok::<_, StoreError>(())
        })
        .await
    }

    /// Runs `f` in a transaction on a blocking thread, retrying the whole
    /// transaction on transient errors. `f` may run more than once, so it
    /// must not have effects outside the transaction.
    pub async fn write<T, E, F>(&self, op: &'static str, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + AsStoreError + Send + 'static,
        F: FnMut(&mut DbConn) -> Result<T, E> + Send + 'static,
    {
        let store = self.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| store.write_blocking(op, f)))
            .await
            .map_err(|e| StoreError::Join(e.to_string()))?
    }

    /// [`Store::write`] for callers already on a blocking thread (offline
    /// admin commands, startup, the event log's writer).
    pub fn write_blocking<T, E, F>(&self, op: &'static str, f: F) -> Result<T, E>
    where
        E: From<StoreError> + AsStoreError,
        F: FnMut(&mut DbConn) -> Result<T, E>,
    {
        self.observed(op, "write", || self.transaction_with_retries(f))
    }

    /// The one place every database operation passes: a span naming it,
    /// its latency in the `oma_store_operation_seconds` histogram (by
    /// operation, kind and outcome; exported with the other metrics), and a
    /// warning when it is slow.
    fn observed<T, E>(&self, op: &'static str, kind: &'static str, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let span = tracing::debug_span!("store", op, kind, backend = self.backend_name);
        let _entered = span.enter();
        let started = std::time::Instant::now();
        let result = f();
        let elapsed = started.elapsed();
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::histogram!("oma_store_operation_seconds", "op" => op, "kind" => kind, "outcome" => outcome)
            .record(elapsed.as_secs_f64());
        if elapsed >= SLOW_OPERATION {
            tracing::warn!(op, kind, ?elapsed, "slow database operation");
        }
        result
    }

    fn transaction_with_retries<T, E, F>(&self, mut f: F) -> Result<T, E>
    where
        E: From<StoreError> + AsStoreError,
        F: FnMut(&mut DbConn) -> Result<T, E>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut conn = self.conn()?;
            let result = match &mut *conn {
                // SQLite: take the write lock up front (BEGIN IMMEDIATE), so a
                // busy database makes this transaction wait (busy_timeout)
                // instead of failing when a deferred reader tries to write.
                DbConn::Sqlite(_) => immediate_transaction(&mut conn, &mut f),
                DbConn::Postgres(_) => conn.transaction::<T, TxError<E>, _>(|c| f(c).map_err(TxError::App)),
            };
            match result {
                Ok(v) => return Ok(v),
                Err(TxError::App(e)) => {
                    let transient = e.as_store_error().is_some_and(StoreError::is_transient);
                    if !transient || attempt >= MAX_ATTEMPTS {
                        return Err(e);
                    }
                }
                Err(TxError::Db(e)) => {
                    let e = StoreError::Db(e);
                    if !e.is_transient() || attempt >= MAX_ATTEMPTS {
                        return Err(e.into());
                    }
                }
            }
            tracing::debug!(attempt, "transient database error; retrying the transaction");
            std::thread::sleep(Duration::from_millis(5 * u64::from(attempt)));
        }
    }
}

/// `BEGIN IMMEDIATE … COMMIT` around `f`, rolling back on any error. It
/// goes through diesel's transaction manager of the inner connection, so
/// transactions diesel opens inside `f` (its SQLite batch insert does)
/// become savepoints.
fn immediate_transaction<T, E, F>(conn: &mut DbConn, f: &mut F) -> Result<T, TxError<E>>
where
    F: FnMut(&mut DbConn) -> Result<T, E>,
{
    use diesel::connection::{AnsiTransactionManager, TransactionManager};
    let DbConn::Sqlite(inner) = conn else {
        unreachable!("immediate_transaction is only called for SQLite");
    };
    AnsiTransactionManager::begin_transaction_sql(inner, "BEGIN IMMEDIATE")?;
    let result = f(conn).map_err(TxError::App);
    let DbConn::Sqlite(inner) = conn else { unreachable!() };
    let end = match result.is_ok() {
        true => AnsiTransactionManager::commit_transaction(inner),
        false => AnsiTransactionManager::rollback_transaction(inner),
    };
    match end {
        Ok(()) => result,
        Err(e) => {
            let _ = AnsiTransactionManager::rollback_transaction(inner);
            Err(TxError::Db(e))
        }
    }
}

/// Lets [`Store::write`] see whether an application error wraps a transient
/// database error.
pub trait AsStoreError {
    fn as_store_error(&self) -> Option<&StoreError>;
}

impl AsStoreError for StoreError {
    fn as_store_error(&self) -> Option<&StoreError> {
        Some(self)
    }
}

enum TxError<E> {
    App(E),
    Db(diesel::result::Error),
}

impl<E> From<diesel::result::Error> for TxError<E> {
    fn from(e: diesel::result::Error) -> Self {
        TxError::Db(e)
    }
}

/// Milliseconds since the Unix epoch, the stored time format.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::event_rows;
    use crate::store::rows::{self, TenantRow};

    /// The WAL reaches the database file through the checkpoint thread,
    /// while no pooled connection (the event log's writer among them)
    /// checkpoints on commit. Without the thread the file would not grow;
    /// with SQLite's own auto-checkpoint the pragma below would say 1000.
    #[test]
    fn the_wal_is_checkpointed_beside_the_writers_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oma.db");
        let store = Store::open_sqlite(&path).unwrap();
        let auto: i64 = store
            .write_blocking("test", |conn| {
                #[derive(QueryableByName)]
                struct Pages {
                    #[diesel(sql_type = diesel::sql_types::BigInt)]
                    wal_autocheckpoint: i64,
                }
                let rows: Vec<Pages> = diesel::sql_query("PRAGMA wal_autocheckpoint").load(conn)?;
                Ok::<_, StoreError>(rows[0].wal_autocheckpoint)
            })
            .unwrap();
        assert_eq!(auto, 0, "pooled connections must not checkpoint on commit");
        // Settle, then measure the file before the writes.
        std::thread::sleep(CHECKPOINT_EVERY * 2);
        let before = std::fs::metadata(&path).unwrap().len();
        for i in 0..2000 {
            store
                .write_blocking("test", |conn| {
                    rows::insert_tenant(
                        conn,
                        &TenantRow {
                            id: format!("ten_{i}"),
                            name: format!("{i}-{}", "x".repeat(200)),
                            created_at: i,
                        },
                    )
                })
                .unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&path).unwrap().len() <= before {
            assert!(
                std::time::Instant::now() < deadline,
                "the database file did not grow: the WAL was never checkpointed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Many writers that read before they write, at once. With deferred
    /// transactions SQLite answers some of them "database is locked" at the
    /// read-to-write upgrade (the busy timeout does not apply there), which
    /// once lost session events; BEGIN IMMEDIATE makes them queue instead.
    #[test]
    fn concurrent_read_then_write_transactions_all_commit_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("oma.db")).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        store
                            .write_blocking("test", |conn| {
                                let before = rows::count_tenants(conn)?;
                                rows::insert_tenant(
                                    conn,
                                    &TenantRow {
                                        id: format!("ten_{t}_{i}"),
                                        name: format!("t{t}-{i}"),
                                        created_at: before,
                                    },
                                )
                            })
                            .unwrap_or_else(|e| panic!("writer {t} transaction {i}: {e}"));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let count = store.write_blocking("test", rows::count_tenants).unwrap();
        assert_eq!(count, 800);
    }

    /// diesel's SQLite multi-row insert opens its own transaction: inside a
    /// write it must become a savepoint, not fail ("cannot start a
    /// transaction within a transaction" once stopped every event append).
    #[test]
    fn batch_inserts_nest_inside_write_transactions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("oma.db")).unwrap();
        let events: Vec<event_rows::EventRow> = (1..=500)
            .map(|seq| event_rows::EventRow {
                session_id: "ses_x".into(),
                seq,
                created_at: 0,
                payload: vec![1, 2, 3],
            })
            .collect();
        store
            .write_blocking("test", |conn| event_rows::insert_events(conn, &events))
            .unwrap();
        let stored = store
            .write_blocking("test", |conn| event_rows::events_from(conn, "ses_x", 1, 1000))
            .unwrap();
        assert_eq!(stored.len(), 500);
        // A failing write rolls back its batch insert too.
        let more: Vec<event_rows::EventRow> = (501..=510)
            .map(|seq| event_rows::EventRow {
                session_id: "ses_x".into(),
                seq,
                created_at: 0,
                payload: vec![],
            })
            .collect();
        let failed: Result<(), StoreError> = store.write_blocking("test", |conn| {
            event_rows::insert_events(conn, &more)?;
            Err(StoreError::Corrupt("abort".into()))
        });
        assert!(failed.is_err());
        let stored = store
            .write_blocking("test", |conn| event_rows::events_from(conn, "ses_x", 1, 1000))
            .unwrap();
        assert_eq!(stored.len(), 500);
    }
}
