//! Rows of the vault: encrypted secrets and the wrapped data keys they name.

use super::tx::ExecuteWrite;
use super::{Store, StoreError};

/// One encrypted secret as stored; only `vault` can make sense of `nonce` and `ciphertext`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SecretRow {
    pub name: String,
    pub key_id: String,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A data key wrapped under the master key.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyRow {
    pub id: String,
    pub generation: i64,
    pub nonce: Vec<u8>,
    pub wrapped: Vec<u8>,
    pub created_at: i64,
}

const SECRET_COLUMNS: &str = "name, key_id, nonce, ciphertext, created_at, updated_at";
const KEY_COLUMNS: &str = "id, generation, nonce, wrapped, created_at";

impl Store {
    pub async fn secret(&self, name: &str) -> Result<Option<SecretRow>, StoreError> {
        with_db!(self, db => {
            Ok(sqlx::query_as(&format!(
                "SELECT {SECRET_COLUMNS} FROM secrets WHERE name = $1"
            ))
            .bind(name)
            .fetch_optional(db.pool)
            .await?)
        })
    }

    pub async fn secrets(&self) -> Result<Vec<SecretRow>, StoreError> {
        with_db!(self, db => {
            Ok(sqlx::query_as(&format!(
                "SELECT {SECRET_COLUMNS} FROM secrets ORDER BY name"
            ))
            .fetch_all(db.pool)
            .await?)
        })
    }

    /// Inserts or replaces a secret, keeping its original `created_at`.
    /// Returns `false` (and writes nothing) when the row's data key no longer exists: a
    /// rotation committed after the caller picked the key, and the caller must seal again.
    pub async fn put_secret(&self, row: &SecretRow) -> Result<bool, StoreError> {
        with_db!(self, db => {
            let done = sqlx::query(
                "INSERT INTO secrets (name, key_id, nonce, ciphertext, created_at, updated_at)
                 SELECT $1, $2, $3, $4, $5, $6 WHERE EXISTS (SELECT 1 FROM vault_keys WHERE id = $7)
                 ON CONFLICT (name) DO UPDATE SET key_id = excluded.key_id, nonce = excluded.nonce,
                     ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
            )
            .bind(&row.name)
            .bind(&row.key_id)
            .bind(&row.nonce)
            .bind(&row.ciphertext)
            .bind(row.created_at)
            .bind(row.updated_at)
            .bind(&row.key_id)
            .execute_write(db)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Inserts a secret only when the name is free; returns whether it was written. Used for
    /// keys that `init` generates, so a second `init` never replaces them.
    pub async fn put_secret_if_absent(&self, row: &SecretRow) -> Result<bool, StoreError> {
        with_db!(self, db => {
            let done = sqlx::query(
                "INSERT INTO secrets (name, key_id, nonce, ciphertext, created_at, updated_at)
                 SELECT $1, $2, $3, $4, $5, $6 WHERE EXISTS (SELECT 1 FROM vault_keys WHERE id = $7)
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(&row.name)
            .bind(&row.key_id)
            .bind(&row.nonce)
            .bind(&row.ciphertext)
            .bind(row.created_at)
            .bind(row.updated_at)
            .bind(&row.key_id)
            .execute_write(db)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Inserts a secret only when no secret's name starts with `prefix`; returns whether it was
    /// written. `init` makes each signing key this way: the check and the insert are one
    /// statement inside the write lock, so two nodes that init one database at the same moment
    /// leave one key under each prefix, not one each.
    pub async fn put_secret_if_none_under(
        &self,
        row: &SecretRow,
        prefix: &str,
    ) -> Result<bool, StoreError> {
        with_db!(self, db => {
            // substr, not LIKE: a prefix may hold `_`, which LIKE reads as a wildcard.
            let done = sqlx::query(
                "INSERT INTO secrets (name, key_id, nonce, ciphertext, created_at, updated_at)
                 SELECT $1, $2, $3, $4, $5, $6
                 WHERE EXISTS (SELECT 1 FROM vault_keys WHERE id = $7)
                   AND NOT EXISTS (SELECT 1 FROM secrets WHERE substr(name, 1, length($8)) = $9)
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(&row.name)
            .bind(&row.key_id)
            .bind(&row.nonce)
            .bind(&row.ciphertext)
            .bind(row.created_at)
            .bind(row.updated_at)
            .bind(&row.key_id)
            .bind(prefix)
            .bind(prefix)
            .execute_write(db)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    pub async fn delete_secret(&self, name: &str) -> Result<bool, StoreError> {
        with_db!(self, db => {
            let done = sqlx::query("DELETE FROM secrets WHERE name = $1")
                .bind(name)
                .execute_write(db)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    pub async fn data_key(&self, id: &str) -> Result<Option<KeyRow>, StoreError> {
        with_db!(self, db => {
            Ok(sqlx::query_as(&format!(
                "SELECT {KEY_COLUMNS} FROM vault_keys WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(db.pool)
            .await?)
        })
    }

    /// The newest data key generation, which encrypts every new secret.
    pub async fn current_data_key(&self) -> Result<Option<KeyRow>, StoreError> {
        with_db!(self, db => {
            Ok(sqlx::query_as(&format!(
                "SELECT {KEY_COLUMNS} FROM vault_keys ORDER BY generation DESC LIMIT 1"
            ))
            .fetch_optional(db.pool)
            .await?)
        })
    }

    pub async fn data_keys(&self) -> Result<Vec<KeyRow>, StoreError> {
        with_db!(self, db => {
            Ok(sqlx::query_as(&format!(
                "SELECT {KEY_COLUMNS} FROM vault_keys ORDER BY generation"
            ))
            .fetch_all(db.pool)
            .await?)
        })
    }

    /// Stores the first data key; does nothing when one exists (so `init` is idempotent and
    /// two concurrent inits cannot both create generation 1).
    pub async fn insert_first_data_key(&self, key: &KeyRow) -> Result<bool, StoreError> {
        with_db!(self, db => {
            let done = sqlx::query(
                "INSERT INTO vault_keys (id, generation, nonce, wrapped, created_at)
                 SELECT $1, $2, $3, $4, $5 WHERE NOT EXISTS (SELECT 1 FROM vault_keys)",
            )
            .bind(&key.id)
            .bind(key.generation)
            .bind(&key.nonce)
            .bind(&key.wrapped)
            .bind(key.created_at)
            .execute_write(db)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Replaces every data key by `new_key` and every secret by its re-encryption, in one
    /// transaction: either all secrets move to the new key or none does, and the old keys are
    /// deleted only by the same commit. `reencrypt` gets each row and returns the new one.
    pub async fn rotate_data_key<E>(
        &self,
        new_key: &KeyRow,
        mut reencrypt: impl FnMut(&SecretRow) -> Result<SecretRow, E>,
    ) -> Result<Result<usize, E>, StoreError> {
        with_db!(self, db => {
            // BEGIN IMMEDIATE takes the write lock before we read, so a concurrent `secret set`
            // waits instead of writing under the old key between our read and commit.
            let mut tx = db.begin_write().await?;
            let rows: Vec<SecretRow> = sqlx::query_as(&format!(
                "SELECT {SECRET_COLUMNS} FROM secrets ORDER BY name"
            ))
            .fetch_all(&mut *tx)
            .await?;
            tx.exec(sqlx::query("INSERT INTO vault_keys (id, generation, nonce, wrapped, created_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(&new_key.id)
                .bind(new_key.generation)
                .bind(&new_key.nonce)
                .bind(&new_key.wrapped)
                .bind(new_key.created_at))
                .await?;
            let count = rows.len();
            for row in rows {
                let new = match reencrypt(&row) {
                    Ok(new) => new,
                    Err(e) => {
                        tx.rollback().await?;
                        return Ok(Err(e));
                    }
                };
                tx.exec(sqlx::query("UPDATE secrets SET key_id = $1, nonce = $2, ciphertext = $3, updated_at = $4 WHERE name = $5")
                    .bind(&new.key_id)
                    .bind(&new.nonce)
                    .bind(&new.ciphertext)
                    .bind(new.updated_at)
                    .bind(&new.name))
                    .await?;
            }
            tx.exec(sqlx::query("DELETE FROM vault_keys WHERE id <> $1").bind(&new_key.id))
                .await?;
            tx.commit().await?;
            Ok(Ok(count))
        })
    }
}
