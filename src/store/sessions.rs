//! Server-side sessions: the truth behind every JWT (`sid`), so revocation is immediate.

use super::changes::Change;
use super::tx::ExecuteWrite;
use super::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SessionRow {
    pub id: String,
    pub user_id: i64,
    #[sqlx(rename = "user_name")]
    pub user: String,
    /// The level the session was created with; a token is void when the user's level differs.
    #[sqlx(try_from = "i64")]
    pub level: u8,
    pub created_at: i64,
    pub last_seen: i64,
    /// Absolute end (`session_max_lifetime` after creation).
    pub expires_at: i64,
    pub ip: String,
    pub user_agent: String,
    pub revoked_at: Option<i64>,
    /// The user's state now (joined), so one lookup answers the whole check.
    #[sqlx(try_from = "i64")]
    pub user_level: u8,
    pub user_disabled: bool,
    /// The node that created the session (`[daemon] node_name`); set by the store on insert.
    pub node: Option<String>,
}

const SESSION_SELECT: &str =
    "SELECT s.id, s.user_id, u.name AS user_name, s.level, s.created_at, s.last_seen,
        s.expires_at, s.ip, s.user_agent, s.revoked_at, u.level AS user_level,
        u.disabled AS user_disabled, s.node
     FROM sessions s JOIN users u ON u.id = s.user_id";

/// A login attempt as the history keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewHistory<'a> {
    pub at: i64,
    pub username: &'a str,
    pub ip: &'a str,
    pub user_agent: &'a str,
    pub result: &'a str,
}

/// Inserts the session and its history row, if the user is still as the password step saw it
/// (same password hash and level, enabled); `false` (nothing written) otherwise. Part of the
/// caller's transaction.
///
/// `insert_session!(tx, node, session, password_hash, history)`: an expression of type
/// `Result<bool, StoreError>`, a macro so that it compiles for either backend's transaction.
macro_rules! insert_session {
    ($tx:expr, $node:expr, $s:expr, $password_hash:expr, $history:expr) => {{
        let s: &$crate::store::SessionRow = $s;
        let node: Option<&str> = $node;
        let password_hash: &str = $password_hash;
        match $tx
            .exec(
                sqlx::query(
                    "INSERT INTO sessions (id, user_id, level, created_at, last_seen, expires_at, ip, user_agent, node)
                     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $10 WHERE EXISTS (
                         SELECT 1 FROM users
                         WHERE id = $2 AND password_hash = $9 AND level = $3 AND disabled = FALSE)",
                )
                .bind(&s.id)
                .bind(s.user_id)
                .bind(i64::from(s.level))
                .bind(s.created_at)
                .bind(s.last_seen)
                .bind(s.expires_at)
                .bind(&s.ip)
                .bind(&s.user_agent)
                .bind(password_hash)
                .bind(node),
            )
            .await
        {
            Ok(done) if done.rows_affected() == 1 => {
                $crate::store::history::insert_history!($tx, node, $history).map(|()| true)
            }
            Ok(_) => Ok(false),
            Err(e) => Err(e),
        }
    }};
}
pub(super) use insert_session;

impl Store {
    /// Creates a session and its `ok` history row in one transaction: a login whose history
    /// cannot be written does not happen.
    ///
    /// The session is created only if the user is still as the password step saw it (same
    /// password hash and level, enabled): a password change or disable committed in between
    /// ends the login too. Returns `false` (nothing written) otherwise.
    pub async fn create_session(
        &self,
        s: &SessionRow,
        password_hash: &str,
        history: &NewHistory<'_>,
    ) -> Result<bool, StoreError> {
        with_db!(self, db => {
            let mut tx = db.begin_write().await?;
            if !insert_session!(tx, self.node(), s, password_hash, history)? {
                tx.rollback().await?;
                return Ok(false);
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    pub async fn session(&self, id: &str) -> Result<Option<SessionRow>, StoreError> {
        with_db!(self, db => {
            Ok(sqlx::query_as(&format!("{SESSION_SELECT} WHERE s.id = $1"))
                .bind(id)
                .fetch_optional(db.pool)
                .await?)
        })
    }

    /// Sessions that are neither revoked nor past either expiry, newest first.
    pub async fn live_sessions(
        &self,
        user: Option<&str>,
        now: i64,
        idle: i64,
    ) -> Result<Vec<SessionRow>, StoreError> {
        with_db!(self, db => {
            Ok(sqlx::query_as(&format!(
                "{SESSION_SELECT} WHERE s.revoked_at IS NULL AND s.expires_at > $1 AND s.last_seen + $2 > $1
                   AND ($3 IS NULL OR u.name = $3)
                 ORDER BY s.created_at DESC, s.id"
            ))
            .bind(now)
            .bind(idle)
            .bind(user)
            .fetch_all(db.pool)
            .await?)
        })
    }

    /// Records activity; only moves `last_seen` forward.
    pub async fn touch_session(&self, id: &str, last_seen: i64) -> Result<(), StoreError> {
        with_db!(self, db => {
            sqlx::query("UPDATE sessions SET last_seen = $1 WHERE id = $2 AND last_seen < $3")
                .bind(last_seen)
                .bind(id)
                .bind(last_seen)
                .execute_write(db)
                .await?;
            Ok(())
        })
    }

    /// `true` when a live session was revoked.
    pub async fn revoke_session(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        with_db!(self, db => {
            let done =
                sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                    .bind(now)
                    .bind(id)
                    .execute_announced(db, Change::Session(id.to_string()))
                    .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Revokes a session and records the logout in the history, in one transaction.
    pub async fn logout(&self, id: &str, history: &NewHistory<'_>) -> Result<bool, StoreError> {
        with_db!(self, db => {
            let mut tx = db.begin_write().await?;
            let done = tx
                .exec(
                    sqlx::query(
                        "UPDATE sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                    )
                    .bind(history.at)
                    .bind(id),
                )
                .await?;
            super::history::insert_history!(tx, self.node(), history)?;
            if done.rows_affected() == 1 {
                tx.announce(&Change::Session(id.to_string())).await?;
            }
            tx.commit().await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Revokes every live session of a user; `None` when the user does not exist.
    pub async fn revoke_user_sessions(
        &self,
        user: &str,
        now: i64,
    ) -> Result<Option<u64>, StoreError> {
        with_db!(self, db => {
            let id: Option<i64> = sqlx::query_scalar("SELECT id FROM users WHERE name = $1")
                .bind(user)
                .fetch_optional(db.pool)
                .await?;
            let Some(id) = id else {
                return Ok(None);
            };
            let done = sqlx::query(
                "UPDATE sessions SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(id)
            .execute_announced(db, Change::Sessions)
            .await?;
            Ok(Some(done.rows_affected()))
        })
    }

    pub async fn revoke_all_sessions(&self, now: i64) -> Result<u64, StoreError> {
        with_db!(self, db => {
            let done = sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE revoked_at IS NULL")
                .bind(now)
                .execute_announced(db, Change::Sessions)
                .await?;
            Ok(done.rows_affected())
        })
    }

    /// Deletes sessions that ended before `before` (revoked or expired); the history keeps the
    /// record of each login.
    pub async fn purge_sessions(&self, before: i64) -> Result<u64, StoreError> {
        with_db!(self, db => {
            let done = sqlx::query(
                "DELETE FROM sessions WHERE expires_at < $1 OR (revoked_at IS NOT NULL AND revoked_at < $2)",
            )
            .bind(before)
            .bind(before)
            .execute_write(db)
            .await?;
            Ok(done.rows_affected())
        })
    }
}
