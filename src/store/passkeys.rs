//! Passkeys: the WebAuthn credentials of users (public keys and signature counters), the
//! registrations waiting for an authenticator's answer, and the passwordless opt-in.

use super::{Store, StoreError};

/// One registered passkey.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PasskeyRow {
    pub id: String,
    pub user_id: i64,
    pub name: String,
    /// The relying party id (host or domain name) the passkey was made for.
    pub rp_id: String,
    pub credential_id: String,
    pub user_handle: String,
    /// The verified credential as JSON (public key, algorithm, counter, flags).
    pub credential: String,
    pub sign_count: i64,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

const COLUMNS: &str = "id, user_id, name, rp_id, credential_id, user_handle, credential, sign_count, created_at, last_used_at";

/// A passkey that just signed a login: spent in the session's transaction, where its counter
/// must still be below the new one (or both stay 0, for authenticators that keep none).
#[derive(Debug, Clone)]
pub struct PasskeyUse<'a> {
    pub id: &'a str,
    pub user_id: i64,
    pub credential: &'a str,
    pub sign_count: i64,
}

/// `spend!(tx, &PasskeyUse, now)`: whether the passkey's counter moved forward (and its row
/// was updated) inside `tx`; a macro so that it compiles for either backend's transaction.
macro_rules! spend {
    ($tx:expr, $used:expr, $now:expr) => {{
        let used: &$crate::store::passkeys::PasskeyUse<'_> = $used;
        $tx.exec(
            sqlx::query(
                "UPDATE passkeys SET credential = $1, sign_count = $2, last_used_at = $3
                 WHERE id = $4 AND user_id = $5 AND (sign_count < $2 OR (sign_count = 0 AND $2 = 0))",
            )
            .bind(used.credential)
            .bind(used.sign_count)
            .bind($now)
            .bind(used.id)
            .bind(used.user_id),
        )
        .await?
        .rows_affected()
            == 1
    }};
}
pub(crate) use spend;

/// A registration waiting for the authenticator's answer.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Registration {
    pub name: String,
    pub user_handle: String,
    /// The ceremony's state (challenge, policy), as JSON.
    pub state: String,
    pub expires_at: i64,
}

/// Why a passkey could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddRefusal {
    NameTaken,
    CredentialTaken,
}

impl Store {
    /// A user's passkeys, oldest first.
    pub async fn passkeys(&self, user_id: i64) -> Result<Vec<PasskeyRow>, StoreError> {
        with_db!(self, db => {
            Ok(sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM passkeys WHERE user_id = $1 ORDER BY created_at, id"
            ))
            .bind(user_id)
            .fetch_all(db.pool)
            .await?)
        })
    }

    /// Adds a verified passkey; a name the user already gave one, or a credential registered
    /// before (to anyone), is refused and nothing is written.
    pub async fn add_passkey(
        &self,
        row: &PasskeyRow,
    ) -> Result<Result<(), AddRefusal>, StoreError> {
        with_db!(self, db => {
            let mut tx = db.begin_write().await?;
            let name_taken: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM passkeys WHERE user_id = $1 AND name = $2",
            )
            .bind(row.user_id)
            .bind(&row.name)
            .fetch_one(&mut *tx)
            .await?;
            if name_taken > 0 {
                tx.rollback().await?;
                return Ok(Err(AddRefusal::NameTaken));
            }
            let done = tx
                .exec(
                    sqlx::query(&format!(
                        "INSERT INTO passkeys ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                         ON CONFLICT DO NOTHING"
                    ))
                    .bind(&row.id)
                    .bind(row.user_id)
                    .bind(&row.name)
                    .bind(&row.rp_id)
                    .bind(&row.credential_id)
                    .bind(&row.user_handle)
                    .bind(&row.credential)
                    .bind(row.sign_count)
                    .bind(row.created_at)
                    .bind(row.last_used_at),
                )
                .await?;
            if done.rows_affected() != 1 {
                tx.rollback().await?;
                return Ok(Err(AddRefusal::CredentialTaken));
            }
            tx.commit().await?;
            Ok(Ok(()))
        })
    }

    /// Removes one of a user's passkeys; the passwordless opt-in ends with the last one, and
    /// the recovery codes with the last second factor.
    pub async fn remove_passkey(&self, user_id: i64, id: &str) -> Result<bool, StoreError> {
        with_db!(self, db => {
            let mut tx = db.begin_write().await?;
            let done = tx
                .exec(
                    sqlx::query("DELETE FROM passkeys WHERE user_id = $1 AND id = $2")
                        .bind(user_id)
                        .bind(id),
                )
                .await?;
            tx.exec(
                sqlx::query(
                    "DELETE FROM passkey_passwordless WHERE user_id = $1
                     AND NOT EXISTS (SELECT 1 FROM passkeys WHERE user_id = $1)",
                )
                .bind(user_id),
            )
            .await?;
            // Codes of a user with no second factor left would come back to life with the
            // next one.
            tx.exec(
                sqlx::query(
                    "DELETE FROM mfa_recovery_codes WHERE user_id = $1
                     AND NOT EXISTS (SELECT 1 FROM passkeys WHERE user_id = $1)
                     AND NOT EXISTS (SELECT 1 FROM mfa_totp WHERE user_id = $1)",
                )
                .bind(user_id),
            )
            .await?;
            tx.commit().await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Keeps a registration's state until the authenticator answers.
    pub async fn put_passkey_registration(
        &self,
        token_hash: &str,
        user_id: i64,
        name: &str,
        user_handle: &str,
        state: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        with_db!(self, db => {
            let mut tx = db.begin_write().await?;
            tx.exec(
                sqlx::query(
                    "INSERT INTO passkey_registrations (token_hash, user_id, name, user_handle, state, expires_at)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(token_hash)
                .bind(user_id)
                .bind(name)
                .bind(user_handle)
                .bind(state)
                .bind(expires_at),
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Takes (and so uses up) a registration of `user_id` that has not expired.
    pub async fn take_passkey_registration(
        &self,
        token_hash: &str,
        user_id: i64,
        now: i64,
    ) -> Result<Option<Registration>, StoreError> {
        with_db!(self, db => {
            let mut tx = db.begin_write().await?;
            let found: Option<Registration> = sqlx::query_as(
                "SELECT name, user_handle, state, expires_at FROM passkey_registrations
                 WHERE token_hash = $1 AND user_id = $2",
            )
            .bind(token_hash)
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await?;
            let done = tx
                .exec(
                    sqlx::query("DELETE FROM passkey_registrations WHERE token_hash = $1")
                        .bind(token_hash),
                )
                .await?;
            tx.commit().await?;
            Ok(found.filter(|r| now < r.expires_at && done.rows_affected() == 1))
        })
    }

    /// Whether the user logs in with a passkey alone.
    pub async fn passwordless(&self, user_id: i64) -> Result<bool, StoreError> {
        with_db!(self, db => {
            let n: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM passkey_passwordless WHERE user_id = $1")
                    .bind(user_id)
                    .fetch_one(db.pool)
                    .await?;
            Ok(n == 1)
        })
    }

    /// Turns the passwordless opt-in on (only while the user has a passkey) or off; whether
    /// it is on afterwards.
    pub async fn set_passwordless(
        &self,
        user_id: i64,
        on: bool,
        now: i64,
    ) -> Result<bool, StoreError> {
        with_db!(self, db => {
            let mut tx = db.begin_write().await?;
            if on {
                tx.exec(
                    sqlx::query(
                        "INSERT INTO passkey_passwordless (user_id, enabled_at)
                         SELECT $1, $2 WHERE EXISTS (SELECT 1 FROM passkeys WHERE user_id = $1)
                         ON CONFLICT (user_id) DO NOTHING",
                    )
                    .bind(user_id)
                    .bind(now),
                )
                .await?;
            } else {
                tx.exec(
                    sqlx::query("DELETE FROM passkey_passwordless WHERE user_id = $1")
                        .bind(user_id),
                )
                .await?;
                // Passwordless logins already started end with the opt-in.
                tx.exec(
                    sqlx::query(
                        "UPDATE mfa_pending SET used_at = $1
                         WHERE user_id = $2 AND methods = 'webauthn' AND used_at IS NULL",
                    )
                    .bind(now)
                    .bind(user_id),
                )
                .await?;
            }
            let n: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM passkey_passwordless WHERE user_id = $1")
                    .bind(user_id)
                    .fetch_one(&mut *tx)
                    .await?;
            tx.commit().await?;
            Ok(n == 1)
        })
    }
}
