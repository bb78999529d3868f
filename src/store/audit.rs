//! The audit log: who changed what, for admins and incident response. Never holds secrets.

use super::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

impl Store {
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(crate::clock::now_unix())
        .bind(actor)
        .bind(action)
        .bind(target)
        .bind(detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Writes `entries` in one transaction (one sync to disk for the lot): the download log
    /// batches its rows this way so that a busy recording server does not fsync per file.
    pub async fn audit_many(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for e in entries {
            sqlx::query(
                "INSERT INTO audit_log (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(e.at)
            .bind(&e.actor)
            .bind(&e.action)
            .bind(&e.target)
            .bind(&e.detail)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Newest first.
    pub async fn audit_entries(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let rows: Vec<(i64, String, String, String, String)> = sqlx::query_as(
            "SELECT at, actor, action, target, detail FROM audit_log ORDER BY id DESC LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(at, actor, action, target, detail)| AuditEntry {
                at,
                actor,
                action,
                target,
                detail,
            })
            .collect())
    }
}
