//! Persistent state: sqlx over SQLite (WAL) by default, one file under `state_dir`.
//!
//! Every SQL statement of pbxguard lives in this module tree, so that a second backend
//! (PostgreSQL, for several PBX hosts sharing users) touches one place. Migrations are embedded
//! in the binary and applied by `init` and `serve`.

mod ami;
mod audit;
mod history;
mod links;
mod mfa;
mod secrets;
mod sessions;
mod sip;
mod sip_edge;
mod tx;
mod users;

#[cfg(test)]
mod rows_tests;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use ami::AmiClientRow;
pub use audit::AuditEntry;
pub use history::HistoryRow;
pub use links::{LinkFilter, LinkRow};
pub use mfa::{Finish, MfaStatusRow, PendingRow};
pub use secrets::{KeyRow, SecretRow};
pub use sessions::{NewHistory, SessionRow};
pub use sip::SipCredentialRow;
pub use sip_edge::{ExtensionSet, SipBanRow};
pub use users::UserRow;

use tx::{Health, WriteTx};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long a write waits for another writer's lock. Writers hold it for one transaction (a
/// few milliseconds and one disk sync), so the wait only runs out when something is wrong; and
/// a request that reads, hashes a password and writes stays well under the 5 s after which a
/// client should see an answer.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a request waits for one of the pool's connections.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {url}: {source}")]
    Open { url: String, source: sqlx::Error },
    #[error("database not initialised at {0} (run `pbxguard init`)")]
    Missing(String),
    #[error("applying database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database cannot take the write (or answer) now: disk full, I/O error, read-only
    /// file, a lock not granted within the busy timeout, no connection. Not a bug: the web tier
    /// answers 503 `store_unavailable`, the CLI exits 75.
    #[error("{0}")]
    Unavailable(#[source] Unavailable),
    #[error("database: {0}")]
    Query(#[source] sqlx::Error),
}

/// The cause of [`StoreError::Unavailable`]; the type [`is_unavailable`] finds in an error's
/// chain, however many layers wrap it.
#[derive(Debug, thiserror::Error)]
#[error("database unavailable: {0}")]
pub struct Unavailable(sqlx::Error);

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        if unavailable(&e) {
            StoreError::Unavailable(Unavailable(e))
        } else {
            StoreError::Query(e)
        }
    }
}

impl StoreError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// SQLite result codes (the primary code, the low byte of an extended one) that mean the
/// database cannot do it now rather than that the statement is wrong: BUSY, LOCKED, NOMEM,
/// READONLY, IOERR, FULL, CANTOPEN, PROTOCOL.
const UNAVAILABLE_CODES: [i32; 8] = [5, 6, 7, 8, 10, 13, 14, 15];

fn unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => d
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| UNAVAILABLE_CODES.contains(&(c & 0xff))),
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// True when `e`, or anything in its chain of sources, is a [`StoreError::Unavailable`]: the
/// one test the web tier and the CLI make, whatever module error wraps the store's.
pub fn is_unavailable(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.is::<Unavailable>() {
            return true;
        }
        if let Some(s) = e.downcast_ref::<StoreError>() {
            return s.is_unavailable();
        }
        next = e.source();
    }
    false
}

/// A handle to the database; cheap to clone (a pool).
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    health: Arc<Health>,
}

impl Store {
    /// Opens the database at `url`. `create` makes the file when it is absent (init, or serve
    /// with `init_if_missing`); otherwise a missing file is a clear error instead of an empty
    /// database that silently has no users or secrets.
    pub async fn open(url: &str, create: bool) -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|source| StoreError::Open {
                url: url.to_string(),
                source,
            })?
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a completed `secret set` must survive power loss, not only a crash.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let filename = options.get_filename().to_path_buf();
        if !create && filename != Path::new(":memory:") && !filename.exists() {
            return Err(StoreError::Missing(filename.display().to_string()));
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_release(tx::outside_transaction)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open {
                url: url.to_string(),
                source,
            })?;
        Ok(Store {
            pool,
            health: Arc::default(),
        })
    }

    /// For the daemon: counts writes the database could not take into `counter`
    /// (`pbxguard_store_commit_failures_total`; the first counter given stays) and logs when
    /// writes start failing and when they work again, once each.
    pub fn watch_faults(&self, counter: prometheus_client::metrics::counter::Counter) {
        self.health.watch(counter);
    }

    /// Opens a write transaction (see [`tx`]); every write of the store goes through one.
    async fn begin_write(&self) -> Result<WriteTx, StoreError> {
        WriteTx::begin(&self.pool, &self.health).await
    }

    /// Applies pending migrations; a no-op on an up-to-date database.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// True when every embedded migration has been applied (used by `serve` without init).
    pub async fn is_current(&self) -> Result<bool, StoreError> {
        let table: Option<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_optional(&self.pool)
        .await?;
        if table.is_none() {
            return Ok(false);
        }
        let applied: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success = 1")
                .fetch_one(&self.pool)
                .await?;
        Ok(applied as usize >= MIGRATOR.iter().count())
    }

    /// A cheap round trip, for health checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}
