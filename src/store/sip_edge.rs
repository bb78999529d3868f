//! What the SIP edge keeps: which extension a web user's browser softphone may use (its bans
//! are in the one ban list, [`super::bans`]).

use super::tx::ExecuteWrite;
use super::{Store, StoreError};

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
}
