//! Recording links: one row per minted link (the path never leaves this table and the audit
//! log), revocation marks, and the clean-up of long-expired rows.

use super::tx::ExecuteWrite;
use super::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LinkRow {
    pub id: String,
    pub path: String,
    pub key_id: String,
    pub minted_by: String,
    pub minted_ip: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub revoked_by: Option<String>,
    /// The node whose disk holds the file (`None`: this single host, or a link minted before
    /// node names existed: served wherever it is asked for).
    pub node: Option<String>,
}

const COLUMNS: &str =
    "id, path, key_id, minted_by, minted_ip, created_at, expires_at, revoked_at, revoked_by, node";

/// Which links a listing shows.
#[derive(Debug, Clone, Default)]
pub struct LinkFilter {
    pub path: Option<String>,
    /// Also expired and revoked links.
    pub all: bool,
    pub limit: u32,
}

impl Store {
    pub async fn insert_link(&self, row: &LinkRow) -> Result<(), StoreError> {
        with_db!(self, db => {
            sqlx::query(
                "INSERT INTO recording_links (id, path, key_id, minted_by, minted_ip, created_at, expires_at, node) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&row.id)
            .bind(&row.path)
            .bind(&row.key_id)
            .bind(&row.minted_by)
            .bind(&row.minted_ip)
            .bind(row.created_at)
            .bind(row.expires_at)
            .bind(row.node.as_deref())
            .execute_write(db)
            .await?;
            Ok(())
        })
    }

    pub async fn link(&self, id: &str) -> Result<Option<LinkRow>, StoreError> {
        with_db!(self, db => {
            Ok(sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM recording_links WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(db.pool)
            .await?)
        })
    }

    /// Newest first.
    pub async fn links(&self, filter: &LinkFilter, now: i64) -> Result<Vec<LinkRow>, StoreError> {
        with_db!(self, db => {
            Ok(sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM recording_links \
                 WHERE ($1 IS NULL OR path = $1) AND ($2 OR (revoked_at IS NULL AND expires_at > $3)) \
                 ORDER BY created_at DESC, id LIMIT $4"
            ))
            .bind(filter.path.as_deref())
            .bind(filter.all)
            .bind(now)
            .bind(i64::from(filter.limit))
            .fetch_all(db.pool)
            .await?)
        })
    }

    /// Revokes one link; false when there is no such link or it was already revoked.
    pub async fn revoke_link(&self, id: &str, by: &str, now: i64) -> Result<bool, StoreError> {
        with_db!(self, db => {
            let done = sqlx::query(
                "UPDATE recording_links SET revoked_at = $1, revoked_by = $2 WHERE id = $3 AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(by)
            .bind(id)
            .execute_announced(db, super::changes::Change::Link(id.to_string()))
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Revokes every unexpired link to `path`; returns how many.
    pub async fn revoke_links_to(&self, path: &str, by: &str, now: i64) -> Result<u64, StoreError> {
        with_db!(self, db => {
            let done = sqlx::query(
                "UPDATE recording_links SET revoked_at = $1, revoked_by = $2 \
                 WHERE path = $3 AND revoked_at IS NULL AND expires_at > $1",
            )
            .bind(now)
            .bind(by)
            .bind(path)
            .execute_announced(db, super::changes::Change::Links)
            .await?;
            Ok(done.rows_affected())
        })
    }

    /// Unexpired links signed with key `kid`.
    pub async fn live_links_signed_by(&self, kid: &str, now: i64) -> Result<i64, StoreError> {
        with_db!(self, db => {
            Ok(sqlx::query_scalar(
                "SELECT count(*) FROM recording_links WHERE key_id = $1 AND expires_at > $2",
            )
            .bind(kid)
            .bind(now)
            .fetch_one(db.pool)
            .await?)
        })
    }

    /// Deletes links that expired before `before` (the audit log keeps their story).
    pub async fn purge_links(&self, before: i64) -> Result<u64, StoreError> {
        with_db!(self, db => {
            let done = sqlx::query("DELETE FROM recording_links WHERE expires_at < $1")
                .bind(before)
                .execute_write(db)
                .await?;
            Ok(done.rows_affected())
        })
    }
}
