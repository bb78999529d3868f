//! What the SIP edge keeps: which extension a web user's browser softphone may use, and the
//! bans by client address (shared with the CLI, which lists and lifts them).

use super::tx::ExecuteWrite;
use super::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SipBanRow {
    pub ip: String,
    pub reason: String,
    pub created_at: i64,
    pub expires_at: i64,
}

/// The outcome of binding an extension to a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtensionSet {
    Done,
    NoSuchUser,
    /// Another user has it.
    Taken(String),
}

impl Store {
    /// Binds `extension` to `user` (`None` removes the binding).
    pub async fn set_user_extension(
        &self,
        user: &str,
        extension: Option<&str>,
        now: i64,
    ) -> Result<ExtensionSet, StoreError> {
        with_db!(self, db => {
            if let Some(ext) = extension {
                let holder: Option<String> =
                    sqlx::query_scalar("SELECT name FROM users WHERE sip_extension = $1 AND name <> $2")
                        .bind(ext)
                        .bind(user)
                        .fetch_optional(db.pool)
                        .await?;
                if let Some(other) = holder {
                    return Ok(ExtensionSet::Taken(other));
                }
            }
            let done = sqlx::query("UPDATE users SET sip_extension = $1, updated_at = $2 WHERE name = $3")
                .bind(extension)
                .bind(now)
                .bind(user)
                .execute_write(db)
                .await;
            match done {
                Ok(d) if d.rows_affected() == 1 => Ok(ExtensionSet::Done),
                Ok(_) => Ok(ExtensionSet::NoSuchUser),
                // Lost a race with another writer taking the same extension.
                Err(StoreError::Query(sqlx::Error::Database(e))) if e.is_unique_violation() => {
                    Ok(ExtensionSet::Taken(String::from("another user")))
                }
                Err(e) => Err(e),
            }
        })
    }

    pub async fn user_extension(&self, user: &str) -> Result<Option<String>, StoreError> {
        with_db!(self, db => {
            // No such user and a user without an extension both read as none.
            let row: Option<Option<String>> =
                sqlx::query_scalar("SELECT sip_extension FROM users WHERE name = $1")
                    .bind(user)
                    .fetch_optional(db.pool)
                    .await?;
            Ok(row.flatten())
        })
    }

    /// Every user with an extension: (user, extension), by user.
    pub async fn user_extensions(&self) -> Result<Vec<(String, String)>, StoreError> {
        with_db!(self, db => {
            Ok(sqlx::query_as(
                "SELECT name, sip_extension FROM users WHERE sip_extension IS NOT NULL ORDER BY name",
            )
            .fetch_all(db.pool)
            .await?)
        })
    }

    /// Records (or extends) a ban.
    pub async fn put_sip_ban(
        &self,
        ip: &str,
        reason: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        with_db!(self, db => {
            sqlx::query(
                "INSERT INTO sip_bans (ip, reason, created_at, expires_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT(ip) DO UPDATE SET reason = excluded.reason, \
                 expires_at = CASE WHEN sip_bans.expires_at > excluded.expires_at \
                 THEN sip_bans.expires_at ELSE excluded.expires_at END",
            )
            .bind(ip)
            .bind(reason)
            .bind(now)
            .bind(expires_at)
            .execute_write(db)
            .await?;
            Ok(())
        })
    }

    /// Bans still in force at `now`, soonest to end first. Expired rows are deleted on the way
    /// when the database takes writes; the list does not depend on it (the edge reads it every
    /// few seconds, also while writes fail).
    pub async fn sip_bans(&self, now: i64) -> Result<Vec<SipBanRow>, StoreError> {
        with_db!(self, db => {
            if let Err(e) = sqlx::query("DELETE FROM sip_bans WHERE expires_at <= $1")
                .bind(now)
                .execute_write(db)
                .await
            {
                tracing::debug!(error = %e, "deleting expired SIP bans failed");
            }
            Ok(sqlx::query_as(
                "SELECT ip, reason, created_at, expires_at FROM sip_bans WHERE expires_at > $1
                 ORDER BY expires_at, ip",
            )
            .bind(now)
            .fetch_all(db.pool)
            .await?)
        })
    }

    /// Lifts one ban (`Some`) or all of them (`None`); returns how many went.
    pub async fn delete_sip_bans(&self, ip: Option<&str>) -> Result<u64, StoreError> {
        with_db!(self, db => {
            let done = match ip {
                Some(ip) => {
                    sqlx::query("DELETE FROM sip_bans WHERE ip = $1")
                        .bind(ip)
                        .execute_write(db)
                        .await?
                }
                None => {
                    sqlx::query("DELETE FROM sip_bans")
                        .execute_write(db)
                        .await?
                }
            };
            Ok(done.rows_affected())
        })
    }
}
