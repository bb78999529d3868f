//! Rows of the `settings` table that the runtime security settings own (the `settings`
//! module above): read as a whole, changed in one transaction with their audit rows and
//! the announcement to the other nodes.

use super::changes::Change;
use super::{Store, StoreError};

/// One changed row, and what the audit log says about it.
#[derive(Debug, Clone)]
pub struct SettingChange<'a> {
    pub row: &'a str,
    pub value: String,
    /// The audit row's target: the setting's contract name.
    pub name: &'a str,
    /// The audit row's detail: old and new value.
    pub detail: String,
}

impl Store {
    /// Every row whose key is one of `rows`.
    pub async fn settings(&self, rows: &[&str]) -> Result<Vec<(String, String)>, StoreError> {
        let all: Vec<(String, String)> = with_db!(self, db => {
            sqlx::query_as("SELECT key, value FROM settings ORDER BY key")
                .fetch_all(db.pool)
                .await?
        });
        Ok(all
            .into_iter()
            .filter(|(k, _)| rows.contains(&k.as_str()))
            .collect())
    }

    /// Writes `changes` with one audit row each (`settings.set`), and announces them to the
    /// other nodes with the commit: all of it or nothing.
    pub async fn change_settings(
        &self,
        changes: &[SettingChange<'_>],
        actor: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        with_db!(self, db => {
            let mut tx = db.begin_write().await?;
            for c in changes {
                tx.exec(
                    sqlx::query(
                        "INSERT INTO settings (key, value, updated_at, updated_by) VALUES ($1, $2, $3, $4)
                         ON CONFLICT(key) DO UPDATE SET value = $2, updated_at = $3, updated_by = $4",
                    )
                    .bind(c.row)
                    .bind(&c.value)
                    .bind(now)
                    .bind(actor),
                )
                .await?;
                tx.exec(
                    sqlx::query(
                        "INSERT INTO audit_log (at, actor, action, target, detail, node) VALUES ($1, $2, 'settings.set', $3, $4, $5)",
                    )
                    .bind(now)
                    .bind(actor)
                    .bind(c.name)
                    .bind(&c.detail)
                    .bind(self.node()),
                )
                .await?;
            }
            tx.announce(&Change::Settings).await?;
            tx.commit().await?;
            Ok(())
        })
    }
}
