//! Finishing a login with a second factor: a TOTP code or an emailed code, and the mailing of
//! that code. Every step goes through the password lockout; every wrong code is a login
//! failure in the history.

use zeroize::Zeroizing;

use crate::auth::email_code;
use crate::auth::login::{self, Client, Issued, LoginError};
use crate::auth::totp;
use crate::clock::rfc3339;
use crate::store::{Finish, PendingRow, UserRow};

use super::{email_allowed, email_key, live_pending, totp_secret_name, user_of, Mfa, MfaError};

/// Codes mailed for one login at most.
const MAX_EMAILS: i64 = 5;
/// Wrong tries after which an emailed code is void.
const MAX_EMAIL_CODE_FAILURES: i64 = 3;

/// A code sent to finish a login: the `mfa_token` of the login, the method, the code.
#[derive(Debug, Clone, Copy)]
pub struct CodeAttempt<'a> {
    pub token: &'a str,
    pub method: &'a str,
    pub code: &'a str,
}

/// The pending login behind `token`, if it may still be finished with `method`.
async fn pending_for(
    m: &Mfa<'_>,
    token: &str,
    method: &str,
    now: i64,
) -> Result<PendingRow, MfaError> {
    let row = live_pending(m.gate.store, m.cfg, token, "mfa", now)
        .await?
        .ok_or(MfaError::InvalidToken)?;
    if !row.methods.split(',').any(|x| x == method) {
        return Err(MfaError::MethodNotAllowed {
            methods: row.methods,
        });
    }
    Ok(row)
}

impl Mfa<'_> {
    /// Finishes a login with a code and opens its session (signed with the current key of
    /// `gate.auth`: bring the keys up to date first).
    pub async fn finish(
        &self,
        attempt: CodeAttempt<'_>,
        client: &Client,
        now: i64,
    ) -> Result<Issued, MfaError> {
        let row = pending_for(self, attempt.token, attempt.method, now).await?;
        if attempt.method == "recovery" {
            if crate::auth::recovery::normalize(attempt.code).is_none() {
                return Err(MfaError::BadRecoveryCode);
            }
        } else if !totp::well_formed(attempt.code) {
            return Err(MfaError::BadCode);
        }
        let user = user_of(self.gate.store, &row)
            .await?
            .ok_or(MfaError::InvalidToken)?;
        let ticket = self.admit(&user, client, now).await?;
        let result = match self.claim(&row, now).await {
            Ok(()) => self.check_code(&row, &user, client, attempt, now).await,
            Err(e) => Err(e),
        };
        self.gate.auth.pending.release(ticket).await;
        result
    }

    async fn check_code(
        &self,
        row: &PendingRow,
        user: &UserRow,
        client: &Client,
        attempt: CodeAttempt<'_>,
        now: i64,
    ) -> Result<Issued, MfaError> {
        let mut recovery_hash = None;
        let totp_step = if attempt.method == "recovery" {
            let hash = self.recovery_hash(user, attempt.code).await?;
            if !self.gate.store.recovery_code_unused(user.id, &hash).await? {
                self.wrong_code(None, user, client).await;
                return Err(MfaError::InvalidCode);
            }
            recovery_hash = Some(hash);
            None
        } else if attempt.method == "totp" {
            let secret = self.vault.get(&totp_secret_name(user.id)).await?;
            let last = self
                .gate
                .store
                .totp(user.id)
                .await?
                .map(|(_, last)| last)
                .unwrap_or(i64::MAX);
            match totp::verify(&secret, attempt.code, now) {
                Some(step) if step > last => Some((user.id, step)),
                _ => {
                    self.wrong_code(None, user, client).await;
                    return Err(MfaError::InvalidCode);
                }
            }
        } else {
            if !self.emailed_code_matches(row, attempt.code, now).await? {
                self.wrong_code(Some(row), user, client).await;
                return Err(MfaError::InvalidCode);
            }
            None
        };
        let finish = Finish {
            attempt: &row.attempt,
            totp_step,
            recovery: recovery_hash.as_deref().map(|h| (user.id, h)),
            passkey: None,
        };
        match login::issue_session_after_mfa(self.gate, user, client, &finish).await {
            Ok(issued) => {
                if finish.recovery.is_some() {
                    self.recovery_used(user, client).await;
                }
                Ok(issued)
            }
            // Another request finished this login (or spent this code) first.
            Err(LoginError::UserChanged) => Err(MfaError::InvalidCode),
            Err(e) => Err(e.into()),
        }
    }

    async fn emailed_code_matches(
        &self,
        row: &PendingRow,
        code: &str,
        now: i64,
    ) -> Result<bool, MfaError> {
        let ttl = i64::try_from(self.cfg.email_code_ttl.as_secs()).unwrap_or(600);
        let key = email_key(self.vault).await?;
        Ok(match (&row.email_code_hash, row.email_sent_at) {
            (Some(hash), Some(sent)) => {
                row.email_code_failures < MAX_EMAIL_CODE_FAILURES
                    && email_code::fresh(sent, ttl, now)
                    && email_code::matches(&key, &row.attempt, code, hash)
            }
            _ => false,
        })
    }

    /// Mails a code for the login of `token`; the code's expiry once the SMTP server took it.
    pub async fn mail_code(&self, token: &str, client: &Client, now: i64) -> Result<i64, MfaError> {
        let row = pending_for(self, token, "email", now).await?;
        let user = user_of(self.gate.store, &row)
            .await?
            .ok_or(MfaError::InvalidToken)?;
        let address = user
            .email
            .clone()
            .filter(|_| email_allowed(self.cfg, user.email.as_deref(), user.level))
            .ok_or(MfaError::NoEmail)?;
        // A locked account gets no mail either.
        let ticket = self.admit(&user, client, now).await?;
        let result = self.send_code(&row, &user, &address, now).await;
        self.gate.auth.pending.release(ticket).await;
        result
    }

    async fn send_code(
        &self,
        row: &PendingRow,
        user: &UserRow,
        address: &str,
        now: i64,
    ) -> Result<i64, MfaError> {
        let store = self.gate.store;
        let interval = i64::try_from(self.cfg.email_resend_interval.as_secs()).unwrap_or(30);
        let previous = row.email_sent_at;
        if !store
            .reserve_email(&row.token_hash, now, interval, MAX_EMAILS)
            .await?
        {
            let wait = row
                .email_sent_at
                .map(|sent| sent + interval - now)
                .filter(|w| *w > 0)
                .unwrap_or(interval);
            return Err(if row.emails_sent >= MAX_EMAILS {
                MfaError::TooManyCodes
            } else {
                MfaError::ResendTooSoon { wait }
            });
        }
        let key = email_key(self.vault).await?;
        let code = email_code::new_code();
        let hash = email_code::keyed_hash(&key, &row.attempt, &code);
        let ttl = i64::try_from(self.cfg.email_code_ttl.as_secs()).unwrap_or(600);
        let expires_at = now + ttl;
        let issuer = &self.cfg.totp_issuer;
        let text = Zeroizing::new(format!(
            "Your {issuer} login code is {code}\n\n\
             It is valid until {until} ({minutes} minutes) for the login you just started.\n\n\
             If you did not just log in, someone else knows your password: tell your administrator.\n",
            code = code.as_str(),
            until = rfc3339(expires_at),
            minutes = ttl / 60,
        ));
        let subject = format!("{issuer} login code");
        let sent = crate::mail::send(self.smtp, self.vault, address, &subject, text.to_string());
        if let Err(e) = sent.await {
            // Nothing was stored: an earlier code (if any) stays as it was.
            tracing::error!(error = %e, user = %user.name, "mailing a login code failed");
            if let Err(e) = store.release_email(&row.token_hash, previous).await {
                tracing::error!(error = %e, "giving back a mail reservation failed");
            }
            return Err(MfaError::SmtpUnavailable);
        }
        store
            .set_email_code(&row.token_hash, &hash, now, expires_at)
            .await?;
        tracing::info!(user = %user.name, "login code mailed");
        Ok(expires_at)
    }
}
