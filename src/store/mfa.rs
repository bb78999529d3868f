//! Second-factor state: confirmed TOTP per user (with the last accepted time step), pending
//! logins and enrollments, the force policy, exemptions.

use super::sessions::SessionRow;
use super::tx::ExecuteWrite;
use super::{NewHistory, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PendingRow {
    pub token_hash: String,
    pub attempt: String,
    /// `mfa` or `enroll`.
    pub kind: String,
    pub user_id: i64,
    pub password_hash: String,
    /// `totp` or `email` for `mfa` rows.
    pub methods: String,
    pub ip: String,
    pub user_agent: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub failures: i64,
    pub used_at: Option<i64>,
    pub email_code_hash: Option<String>,
    pub email_sent_at: Option<i64>,
    pub email_code_failures: i64,
    pub emails_sent: i64,
    /// The passkey challenge of an `mfa` row that may be finished with one.
    pub webauthn_state: Option<String>,
}

const PENDING_COLUMNS: &str = "token_hash, attempt, kind, user_id, password_hash, methods, ip, user_agent, created_at, expires_at, failures, used_at, email_code_hash, email_sent_at, email_code_failures, emails_sent, webauthn_state";

/// One user's second factor as admins see it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MfaStatusRow {
    #[sqlx(rename = "user_name")]
    pub user: String,
    #[sqlx(try_from = "i64")]
    pub level: u8,
    pub email: Option<String>,
    pub totp_confirmed_at: Option<i64>,
    /// When the user's first passkey still held was added.
    pub passkey_since: Option<i64>,
    pub exempt_until: Option<i64>,
}

/// What must hold, in the same transaction, for a second factor to open a session.
#[derive(Debug, Clone)]
pub struct Finish<'a> {
    pub attempt: &'a str,
    /// `(user id, step)`: the TOTP step used, which must be later than the last one accepted.
    pub totp_step: Option<(i64, i64)>,
    /// `(user id, code hash)`: the recovery code used, which must still be unused.
    pub recovery: Option<(i64, &'a str)>,
    /// The passkey used, with its new counter: the counter must not have moved meanwhile.
    pub passkey: Option<super::passkeys::PasskeyUse<'a>>,
}

/// `end_sessions!(tx, user_id, now)`: revokes the user's sessions, voids the user's pending
/// logins and announces it, inside `tx` (a macro so that it compiles for either backend).
macro_rules! end_sessions {
    ($tx:expr, $user_id:expr, $now:expr) => {
        $tx.exec(
            sqlx::query(
                "UPDATE sessions SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
            )
            .bind($now)
            .bind($user_id),
        )
        .await?;
        $tx.exec(
            sqlx::query(
                "UPDATE mfa_pending SET used_at = $1 WHERE user_id = $2 AND used_at IS NULL",
            )
            .bind($now)
            .bind($user_id),
        )
        .await?;
        $tx.announce(&super::changes::Change::Sessions).await?;
    };
}

impl Store {
    /// `(confirmed_at, last_step)` of a user's TOTP.
    pub async fn totp(&self, user_id: i64) -> Result<Option<(i64, i64)>, StoreError> {
        with_db!(self, db => {
            Ok(
                sqlx::query_as("SELECT confirmed_at, last_step FROM mfa_totp WHERE user_id = $1")
                    .bind(user_id)
                    .fetch_optional(db.pool)
                    .await?,
            )
        })
    }

    /// Records a confirmed enrollment, `step` (the confirming code's) spent; `false` when the
    /// user already has one (only an admin reset removes it).
    pub async fn confirm_totp(
        &self,
        user_id: i64,
        now: i64,
        step: i64,
    ) -> Result<bool, StoreError> {
        with_db!(self, db => {
            let done = sqlx::query(
                "INSERT INTO mfa_totp (user_id, confirmed_at, last_step) VALUES ($1, $2, $3)
                 ON CONFLICT(user_id) DO NOTHING",
            )
            .bind(user_id)
            .bind(now)
            .bind(step)
            .execute_write(db)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Removes a user's second factors (TOTP, recovery codes, passkeys and the passwordless
    /// opt-in) and revokes the user's sessions, in one transaction:
    /// `(whether there was a TOTP, how many passkeys were removed)`.
    pub async fn reset_totp(&self, user_id: i64, now: i64) -> Result<(bool, u64), StoreError> {
        with_db!(self, db => {
            let mut tx = db.begin_write().await?;
            let done = tx
                .exec(sqlx::query("DELETE FROM mfa_totp WHERE user_id = $1").bind(user_id))
                .await?;
            tx.exec(sqlx::query("DELETE FROM mfa_recovery_codes WHERE user_id = $1").bind(user_id))
                .await?;
            let keys = tx
                .exec(sqlx::query("DELETE FROM passkeys WHERE user_id = $1").bind(user_id))
                .await?;
            tx.exec(sqlx::query("DELETE FROM passkey_passwordless WHERE user_id = $1").bind(user_id))
                .await?;
            tx.exec(sqlx::query("DELETE FROM passkey_registrations WHERE user_id = $1").bind(user_id))
                .await?;
            end_sessions!(tx, user_id, now);
            tx.commit().await?;
            Ok((done.rows_affected() == 1, keys.rows_affected()))
        })
    }

    /// Removes the user's own TOTP (recovery codes too, unless a passkey remains) and revokes
    /// the user's sessions, in one transaction; whether there was one.
    pub async fn remove_totp(&self, user_id: i64, now: i64) -> Result<bool, StoreError> {
        with_db!(self, db => {
            let mut tx = db.begin_write().await?;
            let done = tx
                .exec(sqlx::query("DELETE FROM mfa_totp WHERE user_id = $1").bind(user_id))
                .await?;
            tx.exec(
                sqlx::query(
                    "DELETE FROM mfa_recovery_codes WHERE user_id = $1
                     AND NOT EXISTS (SELECT 1 FROM passkeys WHERE user_id = $1)",
                )
                .bind(user_id),
            )
            .await?;
            end_sessions!(tx, user_id, now);
            tx.commit().await?;
            Ok(done.rows_affected() == 1)
        })
    }

    pub async fn insert_pending(&self, rows: &[PendingRow]) -> Result<(), StoreError> {
        with_db!(self, db => {
            let mut tx = db.begin_write().await?;
            for r in rows {
                tx.exec(sqlx::query(
                    "INSERT INTO mfa_pending (token_hash, attempt, kind, user_id, password_hash, methods, ip, user_agent, created_at, expires_at, webauthn_state)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
                .bind(&r.token_hash)
                .bind(&r.attempt)
                .bind(&r.kind)
                .bind(r.user_id)
                .bind(&r.password_hash)
                .bind(&r.methods)
                .bind(&r.ip)
                .bind(&r.user_agent)
                .bind(r.created_at)
                .bind(r.expires_at)
                .bind(&r.webauthn_state))
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    pub async fn pending(&self, token_hash: &str) -> Result<Option<PendingRow>, StoreError> {
        with_db!(self, db => {
            Ok(sqlx::query_as(&format!(
                "SELECT {PENDING_COLUMNS} FROM mfa_pending WHERE token_hash = $1"
            ))
            .bind(token_hash)
            .fetch_optional(db.pool)
            .await?)
        })
    }

    /// Takes one of a pending login's `max` tries, in one statement, before a code is checked:
    /// parallel guesses cannot get more than `max` verdicts. `false` when none is left (or the
    /// row is used or expired).
    pub async fn claim_try(
        &self,
        token_hash: &str,
        max: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        with_db!(self, db => {
            let done = sqlx::query(
                "UPDATE mfa_pending SET failures = failures + 1
                 WHERE token_hash = $1 AND failures < $2 AND used_at IS NULL AND expires_at > $3",
            )
            .bind(token_hash)
            .bind(max)
            .bind(now)
            .execute_write(db)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Counts a wrong emailed code (three void it).
    pub async fn email_code_failure(&self, token_hash: &str) -> Result<(), StoreError> {
        with_db!(self, db => {
            sqlx::query(
                "UPDATE mfa_pending SET email_code_failures = email_code_failures + 1 WHERE token_hash = $1",
            )
            .bind(token_hash)
            .execute_write(db)
            .await?;
            Ok(())
        })
    }

    /// Reserves one mail for a pending login — at most `max` per login, none within `interval`
    /// of the previous one — in one statement, so parallel requests cannot all pass the check.
    /// `true` when reserved; hand the previous send time to [`Store::release_email`] if the mail
    /// then fails.
    pub async fn reserve_email(
        &self,
        token_hash: &str,
        now: i64,
        interval: i64,
        max: i64,
    ) -> Result<bool, StoreError> {
        with_db!(self, db => {
            // One statement: parallel requests cannot both pass the check.
            let done = sqlx::query(
                "UPDATE mfa_pending SET emails_sent = emails_sent + 1, email_sent_at = $1
                 WHERE token_hash = $2 AND emails_sent < $3
                   AND (email_sent_at IS NULL OR email_sent_at <= $1 - $4)",
            )
            .bind(now)
            .bind(token_hash)
            .bind(max)
            .bind(interval)
            .execute_write(db)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Gives a reservation back after the mail could not be sent.
    pub async fn release_email(
        &self,
        token_hash: &str,
        previous: Option<i64>,
    ) -> Result<(), StoreError> {
        with_db!(self, db => {
            sqlx::query(
                "UPDATE mfa_pending SET emails_sent = CASE WHEN emails_sent > 0 THEN emails_sent - 1 ELSE 0 END, email_sent_at = $1 WHERE token_hash = $2",
            )
            .bind(previous)
            .bind(token_hash)
            .execute_write(db)
            .await?;
            Ok(())
        })
    }

    /// Stores a freshly mailed code (replacing any earlier one) and extends the pending login
    /// to the code's lifetime.
    pub async fn set_email_code(
        &self,
        token_hash: &str,
        code_hash: &str,
        now: i64,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        with_db!(self, db => {
            sqlx::query(
                "UPDATE mfa_pending SET email_code_hash = $1, email_sent_at = $2, email_code_failures = 0,
                     expires_at = CASE WHEN expires_at > $3 THEN expires_at ELSE $3 END
                 WHERE token_hash = $4",
            )
            .bind(code_hash)
            .bind(now)
            .bind(expires_at)
            .bind(token_hash)
            .execute_write(db)
            .await?;
            Ok(())
        })
    }

    /// Creates the session of a login finished with a second factor. In one transaction: the
    /// attempt is used up (all its tokens), the TOTP step is spent (it must be later than the
    /// last one), the user must be unchanged, and the history row is written. `false` when any
    /// of it no longer holds — e.g. the same code won in a parallel request.
    pub async fn create_session_after_mfa(
        &self,
        s: &SessionRow,
        password_hash: &str,
        history: &NewHistory<'_>,
        finish: &Finish<'_>,
    ) -> Result<bool, StoreError> {
        with_db!(self, db => {
            let mut tx = db.begin_write().await?;
            let used = tx
                .exec(
                    sqlx::query(
                        "UPDATE mfa_pending SET used_at = $1 WHERE attempt = $2 AND used_at IS NULL",
                    )
                    .bind(s.created_at)
                    .bind(finish.attempt),
                )
                .await?;
            if used.rows_affected() == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            if let Some((user_id, step)) = finish.totp_step {
                let spent = tx
                    .exec(
                        sqlx::query(
                            "UPDATE mfa_totp SET last_step = $1 WHERE user_id = $2 AND last_step < $1",
                        )
                        .bind(step)
                        .bind(user_id),
                    )
                    .await?;
                if spent.rows_affected() != 1 {
                    tx.rollback().await?;
                    return Ok(false);
                }
            }
            if let Some((user_id, hash)) = finish.recovery {
                let spent = tx
                    .exec(
                        sqlx::query(
                            "UPDATE mfa_recovery_codes SET used_at = $1 WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL",
                        )
                        .bind(s.created_at)
                        .bind(user_id)
                        .bind(hash),
                    )
                    .await?;
                if spent.rows_affected() != 1 {
                    tx.rollback().await?;
                    return Ok(false);
                }
            }
            if let Some(used) = &finish.passkey {
                if !super::passkeys::spend!(tx, used, s.created_at) {
                    tx.rollback().await?;
                    return Ok(false);
                }
            }
            if !super::sessions::insert_session!(tx, self.node(), s, password_hash, history)? {
                tx.rollback().await?;
                return Ok(false);
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Replaces a user's recovery codes with `hashes` (the old set is void), in one
    /// transaction.
    pub async fn replace_recovery_codes(
        &self,
        user_id: i64,
        hashes: &[String],
        now: i64,
    ) -> Result<(), StoreError> {
        with_db!(self, db => {
            let mut tx = db.begin_write().await?;
            tx.exec(sqlx::query("DELETE FROM mfa_recovery_codes WHERE user_id = $1").bind(user_id))
                .await?;
            for h in hashes {
                tx.exec(
                    sqlx::query(
                        "INSERT INTO mfa_recovery_codes (user_id, code_hash, created_at) VALUES ($1, $2, $3)",
                    )
                    .bind(user_id)
                    .bind(h)
                    .bind(now),
                )
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// `(codes in the set, codes left unused)` of a user.
    pub async fn recovery_codes(&self, user_id: i64) -> Result<(i64, i64), StoreError> {
        with_db!(self, db => {
            Ok(sqlx::query_as(
                "SELECT COUNT(*), COUNT(*) - COUNT(used_at) FROM mfa_recovery_codes WHERE user_id = $1",
            )
            .bind(user_id)
            .fetch_one(db.pool)
            .await?)
        })
    }

    /// Whether `hash` is an unused recovery code of the user.
    pub async fn recovery_code_unused(&self, user_id: i64, hash: &str) -> Result<bool, StoreError> {
        with_db!(self, db => {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM mfa_recovery_codes WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL",
            )
            .bind(user_id)
            .bind(hash)
            .fetch_one(db.pool)
            .await?;
            Ok(n == 1)
        })
    }

    /// Spends a TOTP step outside a login (re-enrollment confirmed by a logged-in user).
    pub async fn spend_totp_step(&self, user_id: i64, step: i64) -> Result<bool, StoreError> {
        with_db!(self, db => {
            let done =
                sqlx::query("UPDATE mfa_totp SET last_step = $1 WHERE user_id = $2 AND last_step < $1")
                    .bind(step)
                    .bind(user_id)
                    .execute_write(db)
                    .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    pub async fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        with_db!(self, db => {
            Ok(
                sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
                    .bind(key)
                    .fetch_optional(db.pool)
                    .await?,
            )
        })
    }

    pub async fn set_setting(
        &self,
        key: &str,
        value: &str,
        by: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        with_db!(self, db => {
            sqlx::query(
                "INSERT INTO settings (key, value, updated_at, updated_by) VALUES ($1, $2, $3, $4)
                 ON CONFLICT(key) DO UPDATE SET value = $2, updated_at = $3, updated_by = $4",
            )
            .bind(key)
            .bind(value)
            .bind(now)
            .bind(by)
            .execute_write(db)
            .await?;
            Ok(())
        })
    }

    pub async fn exempt_until(&self, user_id: i64) -> Result<Option<i64>, StoreError> {
        with_db!(self, db => {
            Ok(
                sqlx::query_scalar("SELECT until FROM mfa_exemptions WHERE user_id = $1")
                    .bind(user_id)
                    .fetch_optional(db.pool)
                    .await?,
            )
        })
    }

    pub async fn set_exemption(
        &self,
        user_id: i64,
        until: i64,
        by: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        with_db!(self, db => {
            sqlx::query(
                "INSERT INTO mfa_exemptions (user_id, until, created_by, created_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT(user_id) DO UPDATE SET until = $2, created_by = $3, created_at = $4",
            )
            .bind(user_id)
            .bind(until)
            .bind(by)
            .bind(now)
            .execute_write(db)
            .await?;
            Ok(())
        })
    }

    pub async fn remove_exemption(&self, user_id: i64) -> Result<bool, StoreError> {
        with_db!(self, db => {
            let done = sqlx::query("DELETE FROM mfa_exemptions WHERE user_id = $1")
                .bind(user_id)
                .execute_write(db)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Every user with their second factor, by name; exemptions that ended are not shown.
    pub async fn mfa_status(&self, now: i64) -> Result<Vec<MfaStatusRow>, StoreError> {
        with_db!(self, db => {
            Ok(sqlx::query_as(
                "SELECT u.name AS user_name, u.level, u.email, t.confirmed_at AS totp_confirmed_at,
                     (SELECT MIN(p.created_at) FROM passkeys p WHERE p.user_id = u.id) AS passkey_since,
                     CASE WHEN e.until > $1 THEN e.until END AS exempt_until
                 FROM users u
                 LEFT JOIN mfa_totp t ON t.user_id = u.id
                 LEFT JOIN mfa_exemptions e ON e.user_id = u.id
                 ORDER BY u.name",
            )
            .bind(now)
            .fetch_all(db.pool)
            .await?)
        })
    }

    /// Deletes pending logins that ended before `before`, and exemptions that ended.
    pub async fn purge_mfa(&self, before: i64, now: i64) -> Result<u64, StoreError> {
        with_db!(self, db => {
            let mut tx = db.begin_write().await?;
            let done = tx
                .exec(sqlx::query("DELETE FROM mfa_pending WHERE expires_at < $1").bind(before))
                .await?;
            tx.exec(sqlx::query("DELETE FROM mfa_exemptions WHERE until < $1").bind(now))
                .await?;
            tx.exec(sqlx::query("DELETE FROM passkey_registrations WHERE expires_at < $1").bind(now))
                .await?;
            tx.commit().await?;
            Ok(done.rows_affected())
        })
    }
}
