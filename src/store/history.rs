//! The login history: every attempt with time, name as typed, client IP, user agent, result.
//! Throttling reads its recent failures from here, so locks survive a restart.

use super::sessions::NewHistory;
use super::tx::ExecuteWrite;
use super::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct HistoryRow {
    pub at: i64,
    /// The name as typed.
    #[sqlx(rename = "username")]
    pub user: String,
    pub ip: String,
    pub user_agent: String,
    pub result: String,
    /// The node that answered the attempt.
    pub node: Option<String>,
}

/// What the console's history page filters on (each `None` matches everything).
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter<'a> {
    /// The name as typed, any case.
    pub user: Option<&'a str>,
    pub result: Option<&'a str>,
    pub ip: Option<&'a str>,
    /// Unix seconds, inclusive.
    pub from: Option<i64>,
    /// Unix seconds, exclusive.
    pub to: Option<i64>,
    pub limit: u32,
}

/// Results that count towards a lockout.
pub const FAILURE_RESULTS: &str = "('bad_password', 'unknown_user', 'disabled', 'mfa_failed')";

/// Inserts a history row inside the caller's write transaction: `insert_history!(tx, node, h)`, an
/// expression of type `Result<(), StoreError>`. A macro because it is compiled once per backend,
/// like the bodies of [`with_db!`].
macro_rules! insert_history {
    ($tx:expr, $node:expr, $h:expr) => {{
        let node: Option<&str> = $node;
        let h: &$crate::store::NewHistory<'_> = $h;
        $tx.exec(
            sqlx::query(
                "INSERT INTO login_history (at, username, ip, user_agent, result, node)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(h.at)
            .bind(h.username)
            .bind(h.ip)
            .bind(h.user_agent)
            .bind(h.result)
            .bind(node),
        )
        .await
        .map(drop)
    }};
}
pub(super) use insert_history;

impl Store {
    pub async fn record_login(&self, h: &NewHistory<'_>) -> Result<(), StoreError> {
        with_db!(self, db => {
            let mut tx = db.begin_write().await?;
            insert_history!(tx, self.node(), h)?;
            tx.commit().await
        })
    }

    /// Attempts matching `f`, newest first.
    pub async fn history_filtered(
        &self,
        f: &HistoryFilter<'_>,
    ) -> Result<Vec<HistoryRow>, StoreError> {
        with_db!(self, db => {
            Ok(sqlx::query_as(
                "SELECT at, username, ip, user_agent, result, node FROM login_history
                 WHERE ($1 IS NULL OR lower(username) = lower($2))
                   AND ($3 IS NULL OR result = $4)
                   AND ($5 IS NULL OR ip = $6)
                   AND ($7 IS NULL OR at >= $8)
                   AND ($9 IS NULL OR at < $10)
                 ORDER BY id DESC LIMIT $11",
            )
            .bind(f.user)
            .bind(f.user)
            .bind(f.result)
            .bind(f.result)
            .bind(f.ip)
            .bind(f.ip)
            .bind(f.from)
            .bind(f.from)
            .bind(f.to)
            .bind(f.to)
            .bind(i64::from(f.limit))
            .fetch_all(db.pool)
            .await?)
        })
    }

    /// Each user's last successful login (unix seconds), by name as typed in lower case.
    pub async fn last_logins(&self) -> Result<Vec<(String, i64)>, StoreError> {
        with_db!(self, db => {
            Ok(sqlx::query_as(
                "SELECT lower(username), MAX(at) FROM login_history WHERE result = 'ok' GROUP BY lower(username)",
            )
            .fetch_all(db.pool)
            .await?)
        })
    }

    /// Newest first.
    pub async fn history(
        &self,
        user: Option<&str>,
        limit: u32,
    ) -> Result<Vec<HistoryRow>, StoreError> {
        with_db!(self, db => {
            Ok(sqlx::query_as(
                "SELECT at, username, ip, user_agent, result, node FROM login_history
                 WHERE ($1 IS NULL OR lower(username) = lower($2)) ORDER BY id DESC LIMIT $3",
            )
            .bind(user)
            .bind(user)
            .bind(i64::from(limit))
            .fetch_all(db.pool)
            .await?)
        })
    }

    /// Times of the newest `limit` failures for an account (`account` in lower case; every
    /// case variant typed counts) since `since`, ignoring failures before the account's last
    /// successful login (a success resets the count).
    pub async fn account_failures(
        &self,
        username: &str,
        since: i64,
        limit: u32,
    ) -> Result<Vec<i64>, StoreError> {
        with_db!(self, db => {
            let rows: Vec<i64> = sqlx::query_scalar(&format!(
                "SELECT at FROM login_history
                 WHERE lower(username) = $1 AND at >= $2 AND result IN {FAILURE_RESULTS}
                   AND id > COALESCE((SELECT MAX(id) FROM login_history WHERE lower(username) = $3 AND result = 'ok'), 0)
                 ORDER BY id DESC LIMIT $4"
            ))
            .bind(username)
            .bind(since)
            .bind(username)
            .bind(i64::from(limit))
            .fetch_all(db.pool)
            .await?;
            Ok(rows)
        })
    }

    /// Times of the newest `limit` failures from a client IP since `since`. Successes do not
    /// reset this count: an attacker must not clear it by logging into an account of their own.
    pub async fn ip_failures(
        &self,
        ip: &str,
        since: i64,
        limit: u32,
    ) -> Result<Vec<i64>, StoreError> {
        with_db!(self, db => {
            let rows: Vec<i64> = sqlx::query_scalar(&format!(
                "SELECT at FROM login_history WHERE ip = $1 AND at >= $2 AND result IN {FAILURE_RESULTS}
                 ORDER BY id DESC LIMIT $3"
            ))
            .bind(ip)
            .bind(since)
            .bind(i64::from(limit))
            .fetch_all(db.pool)
            .await?;
            Ok(rows)
        })
    }
}

impl Store {
    /// Deletes history rows older than `before`; returns how many.
    pub async fn purge_history(&self, before: i64) -> Result<u64, StoreError> {
        with_db!(self, db => {
            let done = sqlx::query("DELETE FROM login_history WHERE at < $1")
                .bind(before)
                .execute_write(db)
                .await?;
            Ok(done.rows_affected())
        })
    }
}
