//! Users of the web tier (agents, supervisors, managers, admins).

use super::tx::ExecuteWrite;
use super::{Store, StoreError};
use crate::clock::now_unix;

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UserRow {
    pub id: i64,
    pub name: String,
    /// Read as the integer every backend stores; the schema keeps it within 1..=9.
    #[sqlx(try_from = "i64")]
    pub level: u8,
    pub email: Option<String>,
    /// PHC string (argon2id); never leaves the process.
    pub password_hash: String,
    pub disabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

const USER_COLUMNS: &str =
    "id, name, level, email, password_hash, disabled, created_at, updated_at";

/// Revokes every live session of `user_id` inside an open transaction.
/// `revoke_in_tx!(tx, user_id, now)`: `Result<u64, StoreError>` (a macro: one body per backend).
macro_rules! revoke_in_tx {
    ($tx:expr, $user_id:expr, $now:expr) => {
        $tx.exec(
            sqlx::query(
                "UPDATE sessions SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
            )
            .bind($now)
            .bind($user_id),
        )
        .await
        .map(|done| done.rows_affected())
    };
}

/// What a user change did: `None` when the user does not exist.
pub type Changed = Option<u64>;

impl Store {
    /// Adds a user; `false` when the name is taken.
    pub async fn insert_user(
        &self,
        name: &str,
        level: u8,
        email: Option<&str>,
        password_hash: &str,
    ) -> Result<bool, StoreError> {
        with_db!(self, db => {
            let now = now_unix();
            let done = sqlx::query(
                "INSERT INTO users (name, level, email, password_hash, disabled, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, FALSE, $5, $6) ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(i64::from(level))
            .bind(email)
            .bind(password_hash)
            .bind(now)
            .bind(now)
            .execute_write(db)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    pub async fn user(&self, name: &str) -> Result<Option<UserRow>, StoreError> {
        with_db!(self, db => {
            Ok(
                sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users WHERE name = $1"))
                    .bind(name)
                    .fetch_optional(db.pool)
                    .await?,
            )
        })
    }

    pub async fn user_by_id(&self, id: i64) -> Result<Option<UserRow>, StoreError> {
        with_db!(self, db => {
            Ok(
                sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(db.pool)
                    .await?,
            )
        })
    }

    pub async fn users(&self) -> Result<Vec<UserRow>, StoreError> {
        with_db!(self, db => {
            Ok(
                sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY name"))
                    .fetch_all(db.pool)
                    .await?,
            )
        })
    }

    /// Applies `set` (an UPDATE of one user by id) and, when `end_sessions`, revokes that
    /// user's sessions in the same transaction, so no request can slip in between.
    async fn change_user(
        &self,
        name: &str,
        set: &str,
        value: Value<'_>,
        end_sessions: bool,
    ) -> Result<Changed, StoreError> {
        with_db!(self, db => {
            let now = now_unix();
            let mut tx = db.begin_write().await?;
            let id: Option<i64> = sqlx::query_scalar("SELECT id FROM users WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(id) = id else {
                tx.rollback().await?;
                return Ok(None);
            };
            let sql = format!("UPDATE users SET {set} = $1, updated_at = $2 WHERE id = $3");
            let query = sqlx::query(&sql);
            let query = match value {
                Value::Int(v) => query.bind(v),
                Value::Bool(v) => query.bind(v),
                Value::Text(v) => query.bind(v),
                Value::OptText(v) => query.bind(v),
            };
            tx.exec(query.bind(now).bind(id)).await?;
            if set == "password_hash" {
                // A new password (the user's or an admin's, after a compromise) also ends
                // logging in with a passkey alone: the owner turns it on again.
                tx.exec(sqlx::query("DELETE FROM passkey_passwordless WHERE user_id = $1").bind(id))
                    .await?;
            }
            let revoked = if end_sessions {
                revoke_in_tx!(tx, id, now)?
            } else {
                0
            };
            // Cached sessions hold the user's level and state: every change drops them.
            tx.announce(&super::changes::Change::Sessions).await?;
            tx.commit().await?;
            Ok(Some(revoked))
        })
    }

    /// Returns the number of sessions ended, or `None` for an unknown user.
    pub async fn set_user_level(&self, name: &str, level: u8) -> Result<Changed, StoreError> {
        self.change_user(name, "level", Value::Int(i64::from(level)), true)
            .await
    }

    pub async fn set_user_disabled(
        &self,
        name: &str,
        disabled: bool,
    ) -> Result<Changed, StoreError> {
        self.change_user(name, "disabled", Value::Bool(disabled), disabled)
            .await
    }

    pub async fn set_user_password(
        &self,
        name: &str,
        password_hash: &str,
    ) -> Result<Changed, StoreError> {
        self.change_user(name, "password_hash", Value::Text(password_hash), true)
            .await
    }

    pub async fn set_user_email(
        &self,
        name: &str,
        email: Option<&str>,
    ) -> Result<Changed, StoreError> {
        self.change_user(name, "email", Value::OptText(email), false)
            .await
    }
}

/// A value for [`Store::change_user`]; the column name is always one of ours, never input.
enum Value<'a> {
    Int(i64),
    Bool(bool),
    Text(&'a str),
    OptText(Option<&'a str>),
}
