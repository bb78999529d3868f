//! AMI gateway clients: the listable half (policy); the secret is a vault secret.

use super::tx::ExecuteWrite;
use super::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AmiClientRow {
    pub name: String,
    pub allow: String,
    pub events: String,
    pub permit: String,
    pub overrides: String,
    /// Comma list of dialplan contexts (names or `*` globs, case kept); empty for clients made
    /// before contexts existed.
    pub contexts: String,
    /// `None`: the `[dialing]` default.
    pub max_concurrent_calls: Option<i64>,
    pub max_call_attempts_per_minute: Option<i64>,
    /// Which secret the client has: set anew by [`Store::put_ami_client`] (a secret was set),
    /// kept by [`Store::update_ami_client`]; sessions opened under another value end.
    pub credential: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// The UPDATE both [`Store::put_ami_client`] and [`Store::update_ami_client`] run, bound.
macro_rules! update_query {
    ($row:expr) => {
        sqlx::query(
            "UPDATE ami_clients SET allow = $2, events = $3, permit = $4, overrides = $5, \
             contexts = $6, max_concurrent_calls = $7, max_call_attempts_per_minute = $8, \
             updated_at = $9 WHERE name = $1",
        )
        .bind(&$row.name)
        .bind(&$row.allow)
        .bind(&$row.events)
        .bind(&$row.permit)
        .bind(&$row.overrides)
        .bind(&$row.contexts)
        .bind($row.max_concurrent_calls)
        .bind($row.max_call_attempts_per_minute)
        .bind($row.updated_at)
    };
}

const COLUMNS: &str = "name, allow, events, permit, overrides, contexts, max_concurrent_calls, \
                       max_call_attempts_per_minute, credential, created_at, updated_at";

impl Store {
    /// Creates or replaces the policy and credential of `row.name`; returns whether it was
    /// created.
    pub async fn put_ami_client(&self, row: &AmiClientRow) -> Result<bool, StoreError> {
        with_db!(self, db => {
            // The insert tells us whether the row is new, without a read first.
            let mut tx = db.begin_write().await?;
            let inserted = tx.exec(sqlx::query(
                "INSERT INTO ami_clients (name, allow, events, permit, overrides, contexts, \
                 max_concurrent_calls, max_call_attempts_per_minute, credential, created_at, \
                 updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $10, $9, $9) \
                 ON CONFLICT(name) DO NOTHING",
            )
            .bind(&row.name)
            .bind(&row.allow)
            .bind(&row.events)
            .bind(&row.permit)
            .bind(&row.overrides)
            .bind(&row.contexts)
            .bind(row.max_concurrent_calls)
            .bind(row.max_call_attempts_per_minute)
            .bind(row.updated_at)
            .bind(row.credential))
            .await?;
            if inserted.rows_affected() == 1 {
                tx.commit().await?;
                return Ok(true);
            }
            tx.exec(update_query!(row)).await?;
            tx.exec(
                sqlx::query("UPDATE ami_clients SET credential = $2 WHERE name = $1")
                    .bind(&row.name)
                    .bind(row.credential),
            )
            .await?;
            tx.commit().await?;
            Ok(false)
        })
    }

    /// Replaces the policy of an existing client (`created_at` and `credential` are kept);
    /// false when there is no client `row.name`.
    pub async fn update_ami_client(&self, row: &AmiClientRow) -> Result<bool, StoreError> {
        with_db!(self, db => {
            let done = update_query!(row).execute_write(db).await?;
            Ok(done.rows_affected() == 1)
        })
    }

    pub async fn ami_client(&self, name: &str) -> Result<Option<AmiClientRow>, StoreError> {
        with_db!(self, db => {
            Ok(
                sqlx::query_as(&format!("SELECT {COLUMNS} FROM ami_clients WHERE name = $1"))
                    .bind(name)
                    .fetch_optional(db.pool)
                    .await?,
            )
        })
    }

    /// Every client, by name.
    pub async fn ami_clients(&self) -> Result<Vec<AmiClientRow>, StoreError> {
        with_db!(self, db => {
            Ok(
                sqlx::query_as(&format!("SELECT {COLUMNS} FROM ami_clients ORDER BY name"))
                    .fetch_all(db.pool)
                    .await?,
            )
        })
    }

    pub async fn delete_ami_client(&self, name: &str) -> Result<bool, StoreError> {
        with_db!(self, db => {
            let done = sqlx::query("DELETE FROM ami_clients WHERE name = $1")
                .bind(name)
                .execute_write(db)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }
}
