//! SIP credentials: the listable half (id, username); the password is a vault secret.

use super::tx::ExecuteWrite;
use super::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SipCredentialRow {
    pub id: String,
    pub username: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Store {
    /// Creates or updates; returns whether it was created.
    pub async fn put_sip_credential(
        &self,
        id: &str,
        username: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        with_db!(self, db => {
            let existed: Option<String> =
                sqlx::query_scalar("SELECT id FROM sip_credentials WHERE id = $1")
                    .bind(id)
                    .fetch_optional(db.pool)
                    .await?;
            sqlx::query(
                "INSERT INTO sip_credentials (id, username, created_at, updated_at) VALUES ($1, $2, $3, $3) \
                 ON CONFLICT(id) DO UPDATE SET username = excluded.username, updated_at = excluded.updated_at",
            )
            .bind(id)
            .bind(username)
            .bind(now)
            .execute_write(db)
            .await?;
            Ok(existed.is_none())
        })
    }

    pub async fn sip_credential(&self, id: &str) -> Result<Option<SipCredentialRow>, StoreError> {
        with_db!(self, db => {
            Ok(sqlx::query_as(
                "SELECT id, username, created_at, updated_at FROM sip_credentials WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(db.pool)
            .await?)
        })
    }

    /// Every credential, by id.
    pub async fn sip_credentials(&self) -> Result<Vec<SipCredentialRow>, StoreError> {
        with_db!(self, db => {
            Ok(sqlx::query_as(
                "SELECT id, username, created_at, updated_at FROM sip_credentials ORDER BY id",
            )
            .fetch_all(db.pool)
            .await?)
        })
    }

    pub async fn delete_sip_credential(&self, id: &str) -> Result<bool, StoreError> {
        with_db!(self, db => {
            let done = sqlx::query("DELETE FROM sip_credentials WHERE id = $1")
                .bind(id)
                .execute_write(db)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }
}
