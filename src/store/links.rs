//! Recording links: one row per minted link (the path never leaves this table and the audit
//! log), revocation marks, and the clean-up of long-expired rows.

use super::tx::ExecuteWrite;
use super::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
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
}

type Row = (
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    Option<i64>,
    Option<String>,
);

fn from_row(r: Row) -> LinkRow {
    LinkRow {
        id: r.0,
        path: r.1,
        key_id: r.2,
        minted_by: r.3,
        minted_ip: r.4,
        created_at: r.5,
        expires_at: r.6,
        revoked_at: r.7,
        revoked_by: r.8,
    }
}

const COLUMNS: &str =
    "id, path, key_id, minted_by, minted_ip, created_at, expires_at, revoked_at, revoked_by";

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
        sqlx::query(
            "INSERT INTO recording_links (id, path, key_id, minted_by, minted_ip, created_at, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&row.id)
        .bind(&row.path)
        .bind(&row.key_id)
        .bind(&row.minted_by)
        .bind(&row.minted_ip)
        .bind(row.created_at)
        .bind(row.expires_at)
        .execute_write(self)
        .await?;
        Ok(())
    }

    pub async fn link(&self, id: &str) -> Result<Option<LinkRow>, StoreError> {
        let row: Option<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM recording_links WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(from_row))
    }

    /// Newest first.
    pub async fn links(&self, filter: &LinkFilter, now: i64) -> Result<Vec<LinkRow>, StoreError> {
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM recording_links \
             WHERE (?1 IS NULL OR path = ?1) AND (?2 OR (revoked_at IS NULL AND expires_at > ?3)) \
             ORDER BY created_at DESC, id LIMIT ?4"
        ))
        .bind(filter.path.as_deref())
        .bind(filter.all)
        .bind(now)
        .bind(i64::from(filter.limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(from_row).collect())
    }

    /// Revokes one link; false when there is no such link or it was already revoked.
    pub async fn revoke_link(&self, id: &str, by: &str, now: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE recording_links SET revoked_at = ?, revoked_by = ? WHERE id = ? AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(by)
        .bind(id)
        .execute_write(self)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Revokes every unexpired link to `path`; returns how many.
    pub async fn revoke_links_to(&self, path: &str, by: &str, now: i64) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE recording_links SET revoked_at = ?1, revoked_by = ?2 \
             WHERE path = ?3 AND revoked_at IS NULL AND expires_at > ?1",
        )
        .bind(now)
        .bind(by)
        .bind(path)
        .execute_write(self)
        .await?;
        Ok(done.rows_affected())
    }

    /// Unexpired links signed with key `kid`.
    pub async fn live_links_signed_by(&self, kid: &str, now: i64) -> Result<i64, StoreError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM recording_links WHERE key_id = ? AND expires_at > ?",
        )
        .bind(kid)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(n)
    }

    /// Deletes links that expired before `before` (the audit log keeps their story).
    pub async fn purge_links(&self, before: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM recording_links WHERE expires_at < ?")
            .bind(before)
            .execute_write(self)
            .await?;
        Ok(done.rows_affected())
    }
}
