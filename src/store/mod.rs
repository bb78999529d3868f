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
mod users;

use std::path::Path;
use std::str::FromStr;
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

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {url}: {source}")]
    Open { url: String, source: sqlx::Error },
    #[error("database not initialised at {0} (run `pbxguard init`)")]
    Missing(String),
    #[error("applying database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database: {0}")]
    Query(#[from] sqlx::Error),
}

/// A handle to the database; cheap to clone (a pool).
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
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
            .busy_timeout(Duration::from_secs(10));
        let filename = options.get_filename().to_path_buf();
        if !create && filename != Path::new(":memory:") && !filename.exists() {
            return Err(StoreError::Missing(filename.display().to_string()));
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open {
                url: url.to_string(),
                source,
            })?;
        Ok(Store { pool })
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
