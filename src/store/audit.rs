//! The audit log: who changed what, for admins and incident response. Never holds secrets.

use super::tx::ExecuteWrite;
use super::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditEntry {
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
    /// The node that wrote the row; the store sets it on insert.
    pub node: Option<String>,
}

impl Store {
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        with_db!(self, db => {
            sqlx::query(
                "INSERT INTO audit_log (at, actor, action, target, detail, node) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(crate::clock::now_unix())
            .bind(actor)
            .bind(action)
            .bind(target)
            .bind(detail)
            .bind(self.node())
            .execute_write(db)
            .await?;
            Ok(())
        })
    }

    /// Writes `entries` in one transaction (one sync to disk for the lot): the download log
    /// batches its rows this way so that a busy recording server does not fsync per file.
    /// Multi-row INSERTs of up to 400 rows (2 400 bound values, far below SQLite's limit): each
    /// statement is one trip to the database thread, not one per row.
    pub async fn audit_many(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        with_db!(self, db => {
            let mut tx = db.begin_write().await?;
            for chunk in entries.chunks(400) {
                let mut q = sqlx::QueryBuilder::new(
                    "INSERT INTO audit_log (at, actor, action, target, detail, node) ",
                );
                q.push_values(chunk, |mut row, e| {
                    row.push_bind(e.at)
                        .push_bind(&e.actor)
                        .push_bind(&e.action)
                        .push_bind(&e.target)
                        .push_bind(&e.detail)
                        .push_bind(self.node());
                });
                tx.exec(q.build()).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Newest first, only actions starting with `prefix` (empty: all).
    pub async fn audit_entries_by_action(
        &self,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        // A prefix compared with substr() rather than LIKE: `_` and `%` in action names
        // (`dialing.refused.deny_prefix`) must not act as wildcards.
        with_db!(self, db => {
            Ok(sqlx::query_as(
                "SELECT at, actor, action, target, detail, node FROM audit_log \
                 WHERE substr(action, 1, $1) = $2 ORDER BY id DESC LIMIT $3",
            )
            .bind(i32::try_from(prefix.len()).unwrap_or(i32::MAX))
            .bind(prefix)
            .bind(i64::from(limit))
            .fetch_all(db.pool)
            .await?)
        })
    }

    /// Newest first.
    pub async fn audit_entries(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        with_db!(self, db => {
            Ok(sqlx::query_as(
                "SELECT at, actor, action, target, detail, node FROM audit_log ORDER BY id DESC LIMIT $1",
            )
            .bind(i64::from(limit))
            .fetch_all(db.pool)
            .await?)
        })
    }
}

/// A node's last scheduled `audit asterisk`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditRunRow {
    pub node: String,
    pub at: i64,
    /// Why the audit could not run; empty when it did.
    pub error: String,
    /// The findings as a JSON array.
    pub findings: String,
}

impl Store {
    /// Replaces this node's last audit run.
    pub async fn put_audit_run(
        &self,
        at: i64,
        error: &str,
        findings: &str,
    ) -> Result<(), StoreError> {
        let node = self.node().unwrap_or("").to_string();
        with_db!(self, db => {
            sqlx::query(
                "INSERT INTO audit_runs (node, at, error, findings) VALUES ($1, $2, $3, $4)
                 ON CONFLICT(node) DO UPDATE SET at = $2, error = $3, findings = $4",
            )
            .bind(&node)
            .bind(at)
            .bind(error)
            .bind(findings)
            .execute_write(db)
            .await?;
            Ok(())
        })
    }

    /// Every node's last audit run, by node.
    pub async fn audit_runs(&self) -> Result<Vec<AuditRunRow>, StoreError> {
        with_db!(self, db => {
            Ok(sqlx::query_as("SELECT node, at, error, findings FROM audit_runs ORDER BY node")
                .fetch_all(db.pool)
                .await?)
        })
    }
}
