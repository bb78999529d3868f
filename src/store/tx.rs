//! Write transactions that stay correct when the disk fails under them.
//!
//! sqlx's own `Transaction` keeps a nesting depth in the connection and assumes that a failed
//! `COMMIT` left the transaction open. For the errors a sick disk produces (full, I/O error)
//! SQLite has already rolled back, so the depth stays at 1 on a connection that is back in
//! autocommit mode; it returns to the pool, its next transaction becomes a `SAVEPOINT`, and when
//! the `RELEASE` of that one fails too SQLite leaves the connection inside a transaction that
//! nothing ever commits. From then on every "commit" on it only releases a nested savepoint:
//! requests are answered as done while nothing reaches the disk, and the connection holds the
//! write lock the others wait for (sqlx issue 3932; `tests::sqlx_transactions_after_failed_commits`
//! shows it).
//!
//! So every write runs here. `BEGIN IMMEDIATE`, `COMMIT` and `ROLLBACK` are plain statements on
//! a pooled connection (no depth counter to go wrong), and a connection whose transaction did
//! not end with a successful `COMMIT` or `ROLLBACK` — a failed `BEGIN`, statement, `COMMIT` or
//! `ROLLBACK`, or a future dropped midway — is closed rather than returned; closing rolls back
//! whatever SQLite still holds and releases the write lock. A connection SQLite could only open
//! read-only fails at its first write and is closed the same way, so the pool opens a fresh
//! one. The pool's release hook ([`outside_transaction`]) refuses any connection that comes
//! back inside a transaction all the same.
//!
//! A PostgreSQL store follows the same rule: a connection whose `COMMIT` failed or whose outcome
//! is unknown (reset mid-transaction) is closed, never reused. Only the beginning differs
//! ([`Dialect::begin`]): an advisory lock serialises PostgreSQL writers as `BEGIN IMMEDIATE`
//! serialises SQLite's.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use prometheus_client::metrics::counter::Counter;
use sqlx::pool::{PoolConnection, PoolConnectionMetadata};
use sqlx::postgres::{PgConnection, PgQueryResult};
use sqlx::query::Query;
use sqlx::sqlite::SqliteQueryResult;
use sqlx::{Database, Executor, IntoArguments, Pool, Postgres, Sqlite, SqliteConnection};
use tracing::{info, warn};

use super::changes::Change;
use super::StoreError;

/// The key of the transaction-level advisory lock every PostgreSQL write transaction takes
/// first (an arbitrary constant: "pbxguard" read as ASCII).
const WRITE_LOCK: i64 = 0x7062_7867_7561_7264;

/// What differs between the backends in a write transaction: how it begins (and so how writers
/// are serialised) and how a result counts its rows. Everything else is one SQL text.
pub(super) trait Dialect: Database {
    /// Opens the transaction and takes the database-wide write lock, waiting at most the busy
    /// timeout for it.
    fn begin(conn: &mut Self::Connection) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    /// Runs `COMMIT` or `ROLLBACK` as a plain statement (no depth counter).
    fn end(
        conn: &mut Self::Connection,
        sql: &'static str,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    fn rows_affected(done: &Self::QueryResult) -> u64;
    /// Queues a change notification for the other nodes; PostgreSQL delivers it when (and only
    /// if) the transaction commits. SQLite has one host and nothing to tell.
    fn notify(
        conn: &mut Self::Connection,
        payload: String,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

impl Dialect for Sqlite {
    async fn begin(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
        // IMMEDIATE takes the write lock now, waiting up to busy_timeout. A deferred
        // transaction would take it at its first write, where a reader that lost a race gets
        // SQLITE_BUSY at once, without waiting.
        sqlx::query("BEGIN IMMEDIATE").execute(conn).await.map(drop)
    }

    async fn end(conn: &mut SqliteConnection, sql: &'static str) -> Result<(), sqlx::Error> {
        sqlx::query(sql).execute(conn).await.map(drop)
    }

    fn rows_affected(done: &SqliteQueryResult) -> u64 {
        done.rows_affected()
    }

    async fn notify(_conn: &mut SqliteConnection, _payload: String) -> Result<(), sqlx::Error> {
        Ok(())
    }
}

impl Dialect for Postgres {
    async fn begin(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        // The same rule as SQLite's BEGIN IMMEDIATE: one writer at a time for the whole
        // database (every node), taken before the first read, so each read-modify-write of the
        // store sees and keeps what it read without a per-statement analysis or retries. Reads
        // outside write transactions are not blocked. The lock ends with the transaction, and
        // with the connection if the node dies. lock_timeout plays SQLite's busy timeout: a
        // wait that runs out is 55P03, classed unavailable.
        conn.execute(
            format!(
                "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = '{}ms'; \
                 SELECT pg_advisory_xact_lock({WRITE_LOCK})",
                super::BUSY_TIMEOUT.as_millis()
            )
            .as_str(),
        )
        .await
        .map(drop)
    }

    async fn end(conn: &mut PgConnection, sql: &'static str) -> Result<(), sqlx::Error> {
        sqlx::query(sql).execute(conn).await.map(drop)
    }

    fn rows_affected(done: &PgQueryResult) -> u64 {
        done.rows_affected()
    }

    async fn notify(conn: &mut PgConnection, payload: String) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(super::changes::CHANNEL)
            .bind(payload)
            .execute(conn)
            .await
            .map(drop)
    }
}

/// A backend's pool with the store's write health: what every statement of the store runs on.
pub(super) struct Db<'a, DB: Database> {
    pub(super) pool: &'a Pool<DB>,
    pub(super) health: &'a Arc<Health>,
}

impl<DB: Database> Clone for Db<'_, DB> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<DB: Database> Copy for Db<'_, DB> {}

impl<DB: Dialect> Db<'_, DB> {
    /// Opens a write transaction; every write of the store goes through one.
    pub(super) async fn begin_write(self) -> Result<WriteTx<DB>, StoreError> {
        WriteTx::begin(self.pool, self.health).await
    }
}

/// Whether writes currently fail, so that the daemon logs a fault when it starts and when it
/// ends instead of once per request; and the count behind
/// `pbxguard_store_commit_failures_total`. Nothing is logged until [`Health::watch`] (the CLI
/// reports its own failure in one line).
#[derive(Debug, Default)]
pub(super) struct Health {
    failing: AtomicBool,
    /// Failed writes since the current fault began.
    in_fault: AtomicU64,
    counter: OnceLock<Counter>,
}

impl Health {
    /// Converts a failed step of a write into its [`StoreError`], counting it when the
    /// database could not take the write.
    fn failed(&self, step: &'static str, e: sqlx::Error) -> StoreError {
        let e = StoreError::from(e);
        if e.is_unavailable() {
            if let Some(c) = self.counter.get() {
                c.inc();
            }
            self.in_fault.fetch_add(1, Ordering::Relaxed);
            if !self.failing.swap(true, Ordering::AcqRel) && self.counter.get().is_some() {
                warn!(error = %e, step, "database writes are failing; every write answers store_unavailable until one commits again");
            }
        }
        e
    }

    fn committed(&self) {
        if self.failing.swap(false, Ordering::AcqRel) {
            let failed = self.in_fault.swap(0, Ordering::Relaxed);
            if self.counter.get().is_some() {
                info!(failed_writes = failed, "database writes work again");
            }
        }
    }

    pub(super) fn watch(&self, counter: Counter) {
        let _ = self.counter.set(counter);
    }
}

/// An open write transaction on one pooled connection; derefs to the connection for queries.
/// End it with [`WriteTx::commit`] or [`WriteTx::rollback`]; dropped otherwise, it closes the
/// connection.
pub(super) struct WriteTx<DB: Dialect> {
    conn: PoolConnection<DB>,
    health: Arc<Health>,
    ended: bool,
    /// Whether a statement changed rows: only such a commit proves that writes work again
    /// (one that changed nothing succeeds without touching the disk).
    wrote: bool,
}

impl<DB: Dialect> WriteTx<DB> {
    pub(super) async fn begin(
        pool: &Pool<DB>,
        health: &Arc<Health>,
    ) -> Result<WriteTx<DB>, StoreError> {
        let mut conn = pool
            .acquire()
            .await
            .map_err(|e| health.failed("acquire", e))?;
        if let Err(e) = DB::begin(&mut conn).await {
            // Lock wait over, or (should never be) already inside a transaction: not reused.
            conn.close_on_drop();
            return Err(health.failed("begin", e));
        }
        Ok(WriteTx {
            conn,
            health: health.clone(),
            ended: false,
            wrote: false,
        })
    }

    /// Runs a write statement, counted like a failed commit when the database cannot take it
    /// (a read-only connection, for one, gets as far as this).
    pub(super) async fn exec<'q>(
        &mut self,
        query: Query<'q, DB, <DB as Database>::Arguments<'q>>,
    ) -> Result<DB::QueryResult, StoreError>
    where
        for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
        <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
    {
        let done = query
            .execute(&mut *self.conn)
            .await
            .map_err(|e| self.health.failed("write", e))?;
        self.wrote |= DB::rows_affected(&done) > 0;
        Ok(done)
    }

    /// Announces `change` to every node with the commit (atomically: a rolled-back change is
    /// never announced, a committed one always is, to every listener connected then).
    pub(super) async fn announce(&mut self, change: &Change) -> Result<(), StoreError> {
        DB::notify(&mut self.conn, change.encode())
            .await
            .map_err(|e| self.health.failed("write", e))
    }

    pub(super) async fn commit(mut self) -> Result<(), StoreError> {
        match DB::end(&mut self.conn, "COMMIT").await {
            Ok(()) => {
                self.ended = true;
                if self.wrote {
                    self.health.committed();
                }
                Ok(())
            }
            // The database may have rolled back already or may still hold the transaction
            // (or, over a network, the outcome is unknown): the connection is closed on drop
            // either way.
            Err(e) => Err(self.health.failed("commit", e)),
        }
    }

    pub(super) async fn rollback(mut self) -> Result<(), StoreError> {
        DB::end(&mut self.conn, "ROLLBACK").await?;
        self.ended = true;
        Ok(())
    }
}

impl<DB: Dialect> std::ops::Deref for WriteTx<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        &self.conn
    }
}

impl<DB: Dialect> std::ops::DerefMut for WriteTx<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        &mut self.conn
    }
}

impl<DB: Dialect> Drop for WriteTx<DB> {
    fn drop(&mut self) {
        if !self.ended {
            self.conn.close_on_drop();
        }
    }
}

/// The SQLite pool's `after_release` hook: a connection that comes back inside a transaction is
/// closed instead of being handed to the next request. `BEGIN DEFERRED` takes no lock, and
/// fails only there ("cannot start a transaction within a transaction").
pub(super) fn outside_transaction(
    conn: &mut SqliteConnection,
    _meta: PoolConnectionMetadata,
) -> Pin<Box<dyn Future<Output = Result<bool, sqlx::Error>> + Send + '_>> {
    Box::pin(async move {
        let clean = conn.execute("BEGIN DEFERRED; ROLLBACK").await.is_ok();
        if !clean {
            warn!("a database connection came back inside a transaction; closed");
        }
        Ok(clean)
    })
}

/// The same hook for PostgreSQL, where `BEGIN` inside a transaction is only a warning. Outside
/// a transaction block every statement is its own transaction, so its start time is the
/// statement's; inside one, `now()` is the block's older start. A connection in a failed
/// block answers with an error: closed too.
pub(super) fn pg_outside_transaction(
    conn: &mut PgConnection,
    _meta: PoolConnectionMetadata,
) -> Pin<Box<dyn Future<Output = Result<bool, sqlx::Error>> + Send + '_>> {
    Box::pin(async move {
        // A bare string goes as a simple query. A prepared one (extended protocol) gets a new
        // statement time at Execute, after its implicit transaction began at Bind: never
        // equal, so every connection was closed after every use.
        let clean = match conn.fetch_one("SELECT now() = statement_timestamp()").await {
            Ok(row) => sqlx::Row::try_get::<bool, _>(&row, 0).unwrap_or(false),
            Err(_) => false,
        };
        if !clean {
            warn!("a database connection came back inside a transaction; closed");
        }
        Ok(clean)
    })
}

/// One write statement in its own transaction.
pub(super) trait ExecuteWrite<DB: Dialect> {
    fn execute_write(
        self,
        db: Db<'_, DB>,
    ) -> impl Future<Output = Result<DB::QueryResult, StoreError>> + Send;

    /// The same, announcing `change` with its commit when the statement changed a row.
    fn execute_announced(
        self,
        db: Db<'_, DB>,
        change: Change,
    ) -> impl Future<Output = Result<DB::QueryResult, StoreError>> + Send;
}

impl<'q, DB: Dialect> ExecuteWrite<DB> for Query<'q, DB, <DB as Database>::Arguments<'q>>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
{
    async fn execute_write(self, db: Db<'_, DB>) -> Result<DB::QueryResult, StoreError> {
        let mut tx = db.begin_write().await?;
        let done = tx.exec(self).await?;
        tx.commit().await?;
        Ok(done)
    }

    async fn execute_announced(
        self,
        db: Db<'_, DB>,
        change: Change,
    ) -> Result<DB::QueryResult, StoreError> {
        let mut tx = db.begin_write().await?;
        let done = tx.exec(self).await?;
        if DB::rows_affected(&done) > 0 {
            tx.announce(&change).await?;
        }
        tx.commit().await?;
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;
    use std::sync::atomic::AtomicBool;

    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

    use sqlx::SqlitePool;

    use super::*;
    use crate::store::{AuditEntry, Backend, Store};

    fn entry(action: &str) -> AuditEntry {
        AuditEntry {
            at: 1,
            actor: "test".into(),
            action: action.into(),
            target: String::new(),
            detail: String::new(),
            node: None,
        }
    }

    async fn fresh(dir: &tempfile::TempDir) -> (String, Store) {
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::open(&url, true).await.unwrap();
        store.migrate().await.unwrap();
        (url, store)
    }

    /// One connection whose commits fail while `fail` is set (SQLite's commit hook turns the
    /// COMMIT into a rollback and reports an error, as a full disk or an I/O error does).
    async fn one_flaky_connection(url: &str, fail: &Arc<AtomicBool>) -> SqlitePool {
        let fail = fail.clone();
        SqlitePoolOptions::new()
            .max_connections(1)
            .after_connect(move |conn, _| {
                let fail = fail.clone();
                Box::pin(async move {
                    conn.lock_handle()
                        .await?
                        .set_commit_hook(move || !fail.load(Ordering::SeqCst));
                    Ok(())
                })
            })
            .after_release(outside_transaction)
            .connect_with(
                SqliteConnectOptions::from_str(url)
                    .unwrap()
                    .journal_mode(SqliteJournalMode::Wal),
            )
            .await
            .unwrap()
    }

    async fn actions(url: &str) -> Vec<String> {
        // A separate store: only what was committed to the file.
        let other = Store::open(url, false).await.unwrap();
        let mut got: Vec<String> = other
            .audit_entries(100)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.action)
            .collect();
        got.sort();
        other.close().await;
        got
    }

    /// The root cause of the lost logins (sqlx issue 3932), kept as a test so that an sqlx
    /// upgrade that fixes it shows up here: after two failed commits, sqlx's `Transaction`
    /// leaves the pooled connection inside a transaction, and the next "successful" commit
    /// saves nothing.
    #[tokio::test]
    async fn sqlx_transactions_after_failed_commits() {
        let dir = tempfile::tempdir().unwrap();
        let (url, store) = fresh(&dir).await;
        store.close().await;
        let fail = Arc::new(AtomicBool::new(true));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .after_connect({
                let fail = fail.clone();
                move |conn, _| {
                    let fail = fail.clone();
                    Box::pin(async move {
                        conn.lock_handle()
                            .await?
                            .set_commit_hook(move || !fail.load(Ordering::SeqCst));
                        Ok(())
                    })
                }
            })
            .connect(&url)
            .await
            .unwrap();
        let insert =
            "INSERT INTO audit_log (at, actor, action, target, detail) VALUES (1, 't', ?, '', '')";
        for action in ["lost1", "lost2"] {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query(insert)
                .bind(action)
                .execute(&mut *tx)
                .await
                .unwrap();
            assert!(tx.commit().await.is_err());
        }
        fail.store(false, Ordering::SeqCst);
        let mut tx = pool.begin().await.unwrap();
        sqlx::query(insert)
            .bind("acknowledged")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.expect("sqlx reports the commit as done");
        let mut conn = pool.acquire().await.unwrap();
        let begin = conn.execute("BEGIN").await.unwrap_err().to_string();
        assert!(begin.contains("within a transaction"), "{begin}");
        drop(conn);
        assert!(
            actions(&url).await.is_empty(),
            "an acknowledged commit was saved: sqlx may have fixed this"
        );
        pool.close().await;
    }

    /// The same sequence through the store: each failed commit closes its connection, and the
    /// next write is a real transaction on a fresh one.
    #[tokio::test]
    async fn failed_commits_close_the_connection_and_the_next_write_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let (url, store) = fresh(&dir).await;
        store.close().await;
        let fail = Arc::new(AtomicBool::new(true));
        let store = Store {
            backend: Backend::Sqlite(one_flaky_connection(&url, &fail).await),
            health: Arc::default(),
            node: None,
            coherence: Arc::new(crate::store::changes::Coherence::new(true)),
        };
        for action in ["lost1", "lost2", "lost3"] {
            assert!(store.audit_many(&[entry(action)]).await.is_err());
        }
        fail.store(false, Ordering::SeqCst);
        store.audit_many(&[entry("acknowledged")]).await.unwrap();
        store
            .audit("single", "acknowledged2", "", "")
            .await
            .unwrap();
        assert_eq!(actions(&url).await, ["acknowledged", "acknowledged2"]);
        store.close().await;
    }

    /// A write dropped halfway (a client that hung up) neither commits nor keeps the lock.
    #[tokio::test]
    async fn a_write_dropped_midway_rolls_back_and_releases_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let (url, store) = fresh(&dir).await;
        let Backend::Sqlite(pool) = &store.backend else {
            unreachable!("a SQLite store")
        };
        let mut tx = WriteTx::begin(pool, &store.health).await.unwrap();
        sqlx::query("INSERT INTO audit_log (at, actor, action, target, detail) VALUES (1, 't', 'dropped', '', '')")
            .execute(&mut *tx)
            .await
            .unwrap();
        drop(tx);
        let started = std::time::Instant::now();
        store.audit("t", "after", "", "").await.unwrap();
        // Well under the busy timeout: nothing held the write lock.
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(actions(&url).await, ["after"]);
        store.close().await;
    }

    /// A connection handed back inside a transaction (whatever left it there) is closed by the
    /// release hook, not given to the next request.
    #[tokio::test]
    async fn a_connection_back_inside_a_transaction_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (url, store) = fresh(&dir).await;
        store.close().await;
        let fail = Arc::new(AtomicBool::new(false));
        let pool = one_flaky_connection(&url, &fail).await;
        let mut conn = pool.acquire().await.unwrap();
        conn.execute("BEGIN IMMEDIATE").await.unwrap();
        drop(conn);
        let mut conn = pool.acquire().await.unwrap();
        conn.execute("BEGIN IMMEDIATE").await.unwrap();
        conn.execute("ROLLBACK").await.unwrap();
        drop(conn);
        pool.close().await;
    }

    /// A connection that can only read (SQLite opened the file read-only) refuses the write at
    /// BEGIN IMMEDIATE with an error classed as unavailable, however deep it is wrapped.
    #[tokio::test]
    async fn a_read_only_connection_is_unavailable_for_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (url, store) = fresh(&dir).await;
        store.close().await;
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                SqliteConnectOptions::from_str(&url)
                    .unwrap()
                    .read_only(true),
            )
            .await
            .unwrap();
        let counter = Counter::default();
        let store = Store {
            backend: Backend::Sqlite(pool),
            health: Arc::default(),
            node: None,
            coherence: Arc::new(crate::store::changes::Coherence::new(true)),
        };
        store.watch_faults(counter.clone());
        let e = store.audit("t", "refused", "", "").await.unwrap_err();
        assert!(e.is_unavailable(), "{e}");
        #[derive(Debug, thiserror::Error)]
        enum Wrapper {
            #[error(transparent)]
            Store(#[from] StoreError),
        }
        let wrapped = Wrapper::from(e);
        assert!(crate::store::is_unavailable(&wrapped));
        let anyhow = anyhow::Error::from(wrapped).context("doing something");
        assert!(anyhow.chain().any(crate::store::is_unavailable));
        assert_eq!(counter.get(), 1);
        // Reads still work on it.
        assert!(store.audit_entries(10).await.unwrap().is_empty());
        store.close().await;
    }

    #[test]
    fn only_faults_of_the_database_are_unavailable() {
        assert!(StoreError::from(sqlx::Error::PoolTimedOut).is_unavailable());
        assert!(!StoreError::from(sqlx::Error::RowNotFound).is_unavailable());
        let plain = std::io::Error::other("not a store error");
        assert!(!crate::store::is_unavailable(&plain));
    }

    #[test]
    fn a_fault_is_counted_per_write_and_ends_with_a_commit() {
        let health = Health::default();
        let counter = Counter::default();
        health.watch(counter.clone());
        for _ in 0..3 {
            assert!(health
                .failed("commit", sqlx::Error::PoolTimedOut)
                .is_unavailable());
        }
        assert!(!health
            .failed("commit", sqlx::Error::RowNotFound)
            .is_unavailable());
        assert_eq!(counter.get(), 3);
        assert!(health.failing.load(Ordering::SeqCst));
        health.committed();
        assert!(!health.failing.load(Ordering::SeqCst));
        assert_eq!(health.in_fault.load(Ordering::SeqCst), 0);
    }
}
