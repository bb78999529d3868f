//! The nodes sharing one database: each running daemon keeps its row current, so that a
//! download reaching the wrong node can be sent to the node that holds the file.

use super::tx::ExecuteWrite;
use super::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct NodeRow {
    pub name: String,
    /// `[http] public_url` of that node, if it serves HTTP.
    pub public_url: Option<String>,
    pub started_at: i64,
    pub seen_at: i64,
}

impl Store {
    /// Records that node `name` runs with `public_url`; `started` on its first call after a
    /// start (sets `started_at`), otherwise only `seen_at` and the URL change.
    pub async fn put_node(
        &self,
        name: &str,
        public_url: Option<&str>,
        now: i64,
        started: bool,
    ) -> Result<(), StoreError> {
        let sql = if started {
            "INSERT INTO nodes (name, public_url, started_at, seen_at) VALUES ($1, $2, $3, $3)
             ON CONFLICT (name) DO UPDATE SET public_url = excluded.public_url,
                 started_at = excluded.started_at, seen_at = excluded.seen_at"
        } else {
            "INSERT INTO nodes (name, public_url, started_at, seen_at) VALUES ($1, $2, $3, $3)
             ON CONFLICT (name) DO UPDATE SET public_url = excluded.public_url,
                 seen_at = excluded.seen_at"
        };
        with_db!(self, db => {
            sqlx::query(sql)
                .bind(name)
                .bind(public_url)
                .bind(now)
                .execute_write(db)
                .await?;
            Ok(())
        })
    }

    pub async fn node_row(&self, name: &str) -> Result<Option<NodeRow>, StoreError> {
        with_db!(self, db => {
            Ok(sqlx::query_as(
                "SELECT name, public_url, started_at, seen_at FROM nodes WHERE name = $1",
            )
            .bind(name)
            .fetch_optional(db.pool)
            .await?)
        })
    }

    /// Every node, by name.
    pub async fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        with_db!(self, db => {
            Ok(sqlx::query_as(
                "SELECT name, public_url, started_at, seen_at FROM nodes ORDER BY name",
            )
            .fetch_all(db.pool)
            .await?)
        })
    }
}
