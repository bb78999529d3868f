//! Persistent state: sqlx over SQLite (WAL) by default, one file under `state_dir`; or
//! PostgreSQL when `[daemon] database` is a `postgres://` URL, so that several PBX hosts share
//! users, sessions and the vault.
//!
//! Every SQL statement of pbxguard lives in this module tree, written once with `$N`
//! placeholders in SQL both backends accept; [`with_db!`] runs a method body on whichever pool
//! the store holds, and [`tx::Dialect`] holds the few differences (how a write transaction
//! begins). Migrations are embedded in the binary (`migrations/` for SQLite,
//! `migrations/postgres/` with the same versions for PostgreSQL) and applied by `init` and
//! `serve`.

/// Runs `$body` with `$db` bound to the store's backend ([`tx::Db`] over a SQLite or a
/// PostgreSQL pool). The body is compiled once per backend, so one SQL text and one chain of
/// binds serve both.
macro_rules! with_db {
    ($store:expr, $db:ident => $body:expr) => {
        match &$store.backend {
            $crate::store::Backend::Sqlite(pool) => {
                let $db = $crate::store::tx::Db {
                    pool,
                    health: &$store.health,
                };
                $body
            }
            $crate::store::Backend::Postgres(pool) => {
                let $db = $crate::store::tx::Db {
                    pool,
                    health: &$store.health,
                };
                $body
            }
        }
    };
}

mod ami;
mod audit;
pub mod bans;
pub mod changes;
pub mod copy;
pub(crate) mod history;
mod links;
mod mfa;
mod nodes;
pub mod passkeys;
mod password;
mod secrets;
pub(crate) mod sessions;
mod settings;
mod sip;
mod sip_edge;
mod tx;
mod users;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgDatabaseError, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteError, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};

pub use ami::AmiClientRow;
pub use audit::{AuditEntry, AuditRunRow};
pub use bans::{BanRow, NewBan};
pub use history::{HistoryFilter, HistoryRow};
pub use links::{LinkFilter, LinkRow};
pub use mfa::{Finish, MfaStatusRow, PendingRow};
pub use nodes::NodeRow;
pub use passkeys::{AddRefusal, PasskeyRow, PasskeyUse};
pub use password::{read_password_file, PasswordFileError};
pub use secrets::{KeyRow, SecretRow};
pub use sessions::{NewHistory, SessionRow};
pub use settings::SettingChange;
pub use sip::SipCredentialRow;
pub use sip_edge::ExtensionSet;
pub use users::UserRow;

use tx::Health;

/// SQLite's migrations; the folder's subfolders are not part of it (sqlx reads files only), so
/// the checksums existing databases hold stay valid.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
/// The same versions and names for PostgreSQL. sqlx runs them holding a session-level
/// `pg_advisory_lock` (keyed by the database name), so nodes that start together on an empty
/// database migrate once: the others wait, then find every version applied.
static PG_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

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
    #[error(transparent)]
    PasswordFile(#[from] PasswordFileError),
    /// A password file given for a database that cannot use it, or beside a URL that already
    /// carries a password (which one would win is not obvious, so neither does).
    #[error("database {url}: {reason}")]
    PasswordConflict { url: String, reason: &'static str },
    #[error("applying database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database cannot take the write (or answer) now: disk full, I/O error, read-only
    /// file, a lock not granted within the busy timeout, no connection. Not a bug: the web tier
    /// answers 503 `store_unavailable`, the CLI exits 75.
    #[error("{0}")]
    Unavailable(#[source] Unavailable),
    #[error("database: {0}")]
    Query(#[source] sqlx::Error),
    /// The database did not answer in the time a caller allows (see `is_unavailable`).
    #[error("database unavailable: no answer in time")]
    TimedOut,
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
        matches!(self, StoreError::Unavailable(_) | StoreError::TimedOut)
    }
}

/// SQLite result codes (the primary code, the low byte of an extended one) that mean the
/// database cannot do it now rather than that the statement is wrong: BUSY, LOCKED, NOMEM,
/// READONLY, IOERR, FULL, CANTOPEN, PROTOCOL.
const UNAVAILABLE_CODES: [i32; 8] = [5, 6, 7, 8, 10, 13, 14, 15];

/// PostgreSQL SQLSTATE classes and codes that mean the same: connection exceptions (08),
/// insufficient resources (53), operator intervention such as a shutdown or a cancelled wait
/// (57), system errors (58), a read-only transaction (25006: a standby after a failover) and a
/// lock not granted in time (55P03: the write lock's timeout).
const PG_UNAVAILABLE_CLASSES: [&str; 4] = ["08", "53", "57", "58"];
const PG_UNAVAILABLE_CODES: [&str; 2] = ["25006", "55P03"];

fn unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            if let Some(pg) = d.try_downcast_ref::<PgDatabaseError>() {
                let code = pg.code();
                PG_UNAVAILABLE_CODES.contains(&code)
                    || PG_UNAVAILABLE_CLASSES.iter().any(|c| code.starts_with(c))
            } else if d.try_downcast_ref::<SqliteError>().is_some() {
                d.code()
                    .and_then(|c| c.parse::<i32>().ok())
                    .is_some_and(|c| UNAVAILABLE_CODES.contains(&(c & 0xff)))
            } else {
                false
            }
        }
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

/// The pool of the backend `[daemon] database` names.
#[derive(Clone, Debug)]
pub(crate) enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A handle to the database; cheap to clone (a pool).
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
    health: Arc<Health>,
    /// `[daemon] node_name` of the process writing: recorded on the sessions, history and
    /// audit rows it writes (`None` until [`Store::with_node`]).
    node: Option<Arc<str>>,
    coherence: Arc<changes::Coherence>,
}

/// Whether `url` names a PostgreSQL database (`postgres://` or `postgresql://`).
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl Store {
    /// Opens the database at `url`. `create` makes the file when it is absent (init, or serve
    /// with `init_if_missing`); otherwise a missing file is a clear error instead of an empty
    /// database that silently has no users or secrets. A PostgreSQL database must exist (an
    /// administrator creates it with its owner); `create` does not apply there.
    pub async fn open(url: &str, create: bool) -> Result<Store, StoreError> {
        Store::open_with_password_file(url, None, create).await
    }

    /// As [`Store::open`], with the PostgreSQL password read from `password_file` (`[daemon]
    /// database_password_file`) now, at each open, so a changed password needs no new config.
    pub async fn open_with_password_file(
        url: &str,
        password_file: Option<&Path>,
        create: bool,
    ) -> Result<Store, StoreError> {
        let backend = if is_postgres_url(url) {
            let password =
                match password_file {
                    Some(_) if url_has_password(url) => return Err(StoreError::PasswordConflict {
                        url: redacted_url(url),
                        reason:
                            "the URL carries a password and a password file is given too; keep one",
                    }),
                    Some(file) => Some(read_password_file(file)?),
                    None => None,
                };
            Backend::Postgres(open_postgres(url, password.as_ref()).await?)
        } else if password_file.is_some() {
            return Err(StoreError::PasswordConflict {
                url: redacted_url(url),
                reason: "a password file applies to PostgreSQL only",
            });
        } else {
            Backend::Sqlite(open_sqlite(url, create).await?)
        };
        // SQLite is one host's: nothing else can change it unseen (other processes on the
        // host tell the daemon through the auth stamp). PostgreSQL caches are trusted once
        // the change listener runs.
        let trusted = matches!(backend, Backend::Sqlite(_));
        Ok(Store {
            backend,
            health: Arc::default(),
            node: None,
            coherence: Arc::new(changes::Coherence::new(trusted)),
        })
    }

    /// The same store, recording `node` as the writer of the rows it adds.
    pub fn with_node(mut self, node: &str) -> Store {
        self.node = Some(Arc::from(node));
        self
    }

    /// The node this store writes as.
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// For the daemon: counts writes the database could not take into `counter`
    /// (`pbxguard_store_commit_failures_total`; the first counter given stays) and logs when
    /// writes start failing and when they work again, once each.
    pub fn watch_faults(&self, counter: prometheus_client::metrics::counter::Counter) {
        self.health.watch(counter);
    }

    /// Applies pending migrations; a no-op on an up-to-date database.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(pool) => MIGRATOR.run(pool).await?,
            Backend::Postgres(pool) => PG_MIGRATOR.run(pool).await?,
        }
        Ok(())
    }

    /// True when every embedded migration has been applied (used by `serve` without init).
    pub async fn is_current(&self) -> Result<bool, StoreError> {
        let (table_sql, count) = match &self.backend {
            Backend::Sqlite(_) => (
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
                MIGRATOR.iter().count(),
            ),
            Backend::Postgres(_) => (
                "SELECT tablename::TEXT FROM pg_tables
                 WHERE schemaname = current_schema() AND tablename = '_sqlx_migrations'",
                PG_MIGRATOR.iter().count(),
            ),
        };
        with_db!(self, db => {
            let table: Option<String> = sqlx::query_scalar(table_sql)
                .fetch_optional(db.pool)
                .await?;
            if table.is_none() {
                return Ok(false);
            }
            let applied: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
                    .fetch_one(db.pool)
                    .await?;
            Ok(applied as usize >= count)
        })
    }

    /// A cheap round trip, for health checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        with_db!(self, db => {
            sqlx::query("SELECT 1").execute(db.pool).await?;
        });
        Ok(())
    }

    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(pool) => pool.close().await,
            Backend::Postgres(pool) => pool.close().await,
        }
    }
}

async fn open_sqlite(url: &str, create: bool) -> Result<SqlitePool, StoreError> {
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
    SqlitePoolOptions::new()
        .max_connections(8)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .after_release(tx::outside_transaction)
        .connect_with(options)
        .await
        .map_err(|source| StoreError::Open {
            url: url.to_string(),
            source,
        })
}

async fn open_postgres(
    url: &str,
    password: Option<&secrecy::SecretString>,
) -> Result<PgPool, StoreError> {
    // The URL may carry a password: errors name the database without it.
    let shown = redacted_url(url);
    // sqlx's TLS uses ring, the rest of the daemon aws-lc-rs; with both in rustls, sqlx's
    // `sslmode=verify-ca` verifier asks for the process-wide provider and panics when none is
    // installed yet (`pbxguard` CLI commands open the store before any TLS listener exists).
    crate::tls::install_provider();
    let mut options = PgConnectOptions::from_str(url).map_err(|source| StoreError::Open {
        url: shown.clone(),
        source,
    })?;
    if let Some(password) = password {
        use secrecy::ExposeSecret;
        options = options.password(password.expose_secret());
    }
    PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .after_release(tx::pg_outside_transaction)
        .connect_with(options)
        .await
        .map_err(|source| StoreError::Open { url: shown, source })
}

/// `url` with its password (in the user part, or a `password=` query option) replaced by
/// `***`: how errors and messages show a database URL.
pub fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let shown: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if is_password_key(key) => format!("{key}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{path}?{}", shown.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// Whether a PostgreSQL URL carries a password: in its user part (`USER:PASSWORD@`) or as a
/// `password=` query option.
pub fn url_has_password(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let in_user_part = authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'));
    let in_query = tail.split_once('?').is_some_and(|(_, query)| {
        query
            .split('&')
            .any(|pair| is_password_key(pair.split_once('=').map_or(pair, |(k, _)| k)))
    });
    in_user_part || in_query
}

/// A query key sqlx reads as the password, however it is percent-encoded.
fn is_password_key(key: &str) -> bool {
    percent_encoding::percent_decode_str(key).decode_utf8_lossy() == "password"
}

#[cfg(test)]
mod url_tests {
    use super::*;

    #[test]
    fn a_password_in_a_postgres_url_is_never_shown() {
        assert_eq!(
            redacted_url("postgres://pbx:s3cr%40t@db.example.org:5432/pbx?sslmode=verify-full"),
            "postgres://pbx:***@db.example.org:5432/pbx?sslmode=verify-full"
        );
        assert_eq!(
            redacted_url("postgresql://pbx@db/pbx"),
            "postgresql://pbx@db/pbx"
        );
        assert_eq!(
            redacted_url("postgres:///pbx?host=/run/postgresql"),
            "postgres:///pbx?host=/run/postgresql"
        );
        assert_eq!(
            redacted_url("postgres://pbx@db/pbx?sslmode=require&password=s3cr%40t&host=/run"),
            "postgres://pbx@db/pbx?sslmode=require&password=***&host=/run"
        );
        assert_eq!(
            redacted_url("postgres://pbx:a@db?pass%77ord=b"),
            "postgres://pbx:***@db?pass%77ord=***"
        );
        assert!(is_postgres_url("postgresql://pbx@db/pbx"));
        assert!(!is_postgres_url("sqlite:///var/lib/pbxguard/pbxguard.db"));
    }

    #[test]
    fn a_password_is_found_in_the_user_part_and_in_the_query() {
        for url in [
            "postgres://pbx:pw@db/pbx",
            "postgres://pbx:@db/pbx",
            "postgresql://pbx@db/pbx?password=pw",
            "postgres://pbx@db/pbx?sslmode=require&password=",
            "postgres://pbx@db/pbx?pass%77ord=pw",
        ] {
            assert!(url_has_password(url), "{url}");
        }
        for url in [
            "postgres://pbx@db/pbx",
            "postgres://db/pbx?sslmode=verify-full&sslrootcert=/etc/ca.pem",
            "postgres:///pbx?host=/run/postgresql&user=pbx",
            "postgres://pbx@db/pbx?passwords=x",
        ] {
            assert!(!url_has_password(url), "{url}");
        }
    }
}
