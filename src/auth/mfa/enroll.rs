//! TOTP enrollment: a fresh secret kept pending in the vault, then confirmed with a first code.
//! A logged-in user enrolls with the session; a user the force policy stops at login enrolls
//! with the `enroll_token`, and confirming then also finishes that login.

use zeroize::Zeroizing;

use crate::auth::login::{self, Client, Issued, LoginError};
use crate::auth::totp;
use crate::store::{Finish, PendingRow, UserRow};
use crate::vault::VaultError;

use super::{live_pending, pending_totp_secret_name, totp_secret_name, user_of, Mfa, MfaError};

/// Who asks to enroll.
#[derive(Debug, Clone, Copy)]
pub enum Enroller<'a> {
    /// The user of a valid session (by name).
    Session(&'a str),
    /// A login stopped for enrollment, by its `enroll_token`.
    Token(&'a str),
}

/// An enrollment request whose user may enroll now (no confirmed TOTP yet).
#[derive(Debug)]
pub struct Enrolling {
    user: UserRow,
    /// The pending login, when enrolling with an `enroll_token`.
    pending: Option<Box<PendingRow>>,
}

/// A fresh secret, pending until confirmed.
#[derive(Debug)]
pub struct Enrollment {
    /// Base32, for typing into an authenticator.
    pub secret: Zeroizing<String>,
    pub otpauth_uri: Zeroizing<String>,
    pub qr_svg: String,
}

/// What a confirmed enrollment leads to, with the user's first recovery codes (shown once;
/// none when the user already holds a set).
#[derive(Debug)]
pub enum Confirmed {
    /// A logged-in user enrolled.
    Enrolled(Option<Vec<Zeroizing<String>>>),
    /// A forced login enrolled and is finished: its session.
    LoggedIn(Issued, Option<Vec<Zeroizing<String>>>),
}

impl Mfa<'_> {
    /// Checks that `who` may enroll now.
    pub async fn enrolling(&self, who: Enroller<'_>, now: i64) -> Result<Enrolling, MfaError> {
        let store = self.gate.store;
        let (pending, user) = match who {
            Enroller::Token(token) => {
                let row = live_pending(store, self.cfg, token, "enroll", now)
                    .await?
                    .ok_or(MfaError::InvalidToken)?;
                let user = user_of(store, &row).await?.ok_or(MfaError::InvalidToken)?;
                (Some(Box::new(row)), user)
            }
            Enroller::Session(name) => (None, store.user(name).await?.ok_or(MfaError::NoSession)?),
        };
        // A confirmed factor is replaced only after an admin reset: neither a stolen session
        // nor a stale enroll_token (the user enrolled meanwhile) may take it over.
        if store.totp(user.id).await?.is_some() {
            return Err(match pending {
                Some(_) => MfaError::InvalidToken,
                None => MfaError::AlreadyEnrolled,
            });
        }
        Ok(Enrolling { user, pending })
    }

    /// Stores a fresh secret as the user's pending enrollment (audited as `mfa.totp.enroll`).
    pub async fn enroll(&self, e: &Enrolling) -> Result<Enrollment, MfaError> {
        let user = &e.user;
        let secret = totp::new_secret();
        self.vault
            .set(&pending_totp_secret_name(user.id), &secret)
            .await?;
        let b32 = totp::encode_secret(&secret);
        let uri = totp::otpauth_uri(&self.cfg.totp_issuer, &user.name, &b32);
        let Some(qr_svg) = totp::qr_svg(&uri) else {
            tracing::error!("drawing the QR code failed");
            return Err(MfaError::Qr);
        };
        self.gate
            .store
            .audit(&user.name, "mfa.totp.enroll", &user.name, "")
            .await?;
        Ok(Enrollment {
            secret: b32,
            otpauth_uri: uri,
            qr_svg,
        })
    }

    /// Proves the authenticator works with a first code; with an `enroll_token` this also
    /// finishes the login (signed with the current key of `gate.auth`: bring the keys up to
    /// date first). Confirming is a second-factor attempt like any other: the lockout applies.
    pub async fn confirm(
        &self,
        e: Enrolling,
        code: &str,
        client: &Client,
        now: i64,
    ) -> Result<Confirmed, MfaError> {
        if !totp::well_formed(code) {
            return Err(MfaError::BadCode);
        }
        let ticket = self.admit(&e.user, client, now).await?;
        let result = self.confirm_admitted(e, code, client, now).await;
        self.gate.auth.pending.release(ticket).await;
        result
    }

    async fn confirm_admitted(
        &self,
        e: Enrolling,
        code: &str,
        client: &Client,
        now: i64,
    ) -> Result<Confirmed, MfaError> {
        let Enrolling { user, pending } = e;
        let pending_name = pending_totp_secret_name(user.id);
        let secret = match self.vault.get(&pending_name).await {
            Ok(s) => s,
            Err(VaultError::NotFound(_)) => return Err(MfaError::NoEnrollment),
            Err(e) => return Err(e.into()),
        };
        // An enroll_token has its tries too.
        if let Some(row) = &pending {
            self.claim(row, now).await?;
        }
        let Some(step) = totp::verify(&secret, code, now) else {
            self.wrong_code(None, &user, client).await;
            return Err(MfaError::InvalidCode);
        };
        // The row first: of two confirmations racing, one claims the account and the other
        // finds it taken, so a confirmed secret is never overwritten.
        let store = self.gate.store;
        if !store.confirm_totp(user.id, now, step).await? {
            return Err(MfaError::EnrolledMeanwhile);
        }
        self.vault.set(&totp_secret_name(user.id), &secret).await?;
        let _ = self.vault.remove(&pending_name).await;
        store
            .audit(&user.name, "mfa.totp.confirm", &user.name, "")
            .await?;
        tracing::info!(user = %user.name, "TOTP enrolled");
        let Some(row) = pending else {
            return Ok(Confirmed::Enrolled(
                self.first_recovery_codes(&user, now).await,
            ));
        };
        let finish = Finish {
            attempt: &row.attempt,
            totp_step: None,
            recovery: None,
            passkey: None,
        };
        match login::issue_session_after_mfa(self.gate, &user, client, &finish).await {
            // The codes only once the login stands: an answer that is not given shows none.
            Ok(issued) => {
                let codes = self.first_recovery_codes(&user, now).await;
                Ok(Confirmed::LoggedIn(issued, codes))
            }
            Err(LoginError::UserChanged) => Err(MfaError::InvalidToken),
            Err(e) => Err(e.into()),
        }
    }
}
