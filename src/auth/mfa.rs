//! Which second factor a login needs after a correct password, and the tokens that carry a
//! login (or an enrollment) across the requests that finish it. The steps themselves live in
//! [`login`] (finishing a login with a code, mailing a code), [`enroll`] (TOTP enrollment) and
//! [`admin`] (policy, status, resets, exemptions).
//!
//! A user with confirmed TOTP gets `mfa_required` (`totp`). A user without TOTP to whom the
//! force policy applies (not exempt) gets `enroll_required` with an `enroll_token`, and — when
//! the user has an email address, `[mfa] email_fallback` is on and (for admins)
//! `email_for_admins` — also an `mfa_token` for an emailed code. Everyone else logs in with the
//! password alone. Tokens are 256 random bits, stored as SHA-256 hashes, single-use, bound to
//! the attempt (and to the password hash it was verified against), short-lived.

pub mod admin;
pub mod enroll;
pub mod login;
pub mod passkey;
pub mod recovery;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::auth::config::MfaConfig;
use crate::auth::login::{bounded, Client, Gate, LoginError};
use crate::mail::config::SmtpConfig;
use crate::store::{PendingRow, Store, StoreError, UserRow};
use crate::vault::{Vault, VaultError};

/// Vault secret of a user's confirmed TOTP secret (by user id: names may hold `@`).
pub fn totp_secret_name(user_id: i64) -> String {
    format!("mfa/totp/{user_id}")
}

/// Vault secret of an enrollment not confirmed yet.
pub fn pending_totp_secret_name(user_id: i64) -> String {
    format!("mfa/totp-pending/{user_id}")
}

/// Vault keys that key the hashes of emailed codes.
pub const MFA_KEY_PREFIX: &str = "keys/mfa/";
/// The setting that forces enrollment on everyone.
pub const FORCE_SETTING: &str = "mfa.force";

/// Why a second-factor step did not go through. The refusals come first; the web tier answers
/// each with its own status, the CLI with its own sentence.
#[derive(Debug, thiserror::Error)]
pub enum MfaError {
    #[error("this login step is unknown, used, expired or locked")]
    InvalidToken,
    #[error("wrong, expired or already used code")]
    InvalidCode,
    #[error("the code is exactly 6 digits")]
    BadCode,
    #[error("a recovery code is 12 letters and digits, as xxxx-xxxx-xxxx")]
    BadRecoveryCode,
    #[error("recovery codes come with a second factor: set up TOTP or a passkey first")]
    NoSecondFactor,
    #[error("passkeys need [http] public_url with a host name (browsers refuse an IP address)")]
    NoRelyingParty,
    #[error("a passkey name has 1 to 64 characters and no control characters")]
    BadPasskeyName,
    #[error("you already have a passkey of that name")]
    PasskeyNameTaken,
    #[error("this authenticator is registered already")]
    PasskeyTaken,
    #[error("at most 10 passkeys per user")]
    TooManyPasskeys,
    #[error("this registration is unknown, used or expired: start again")]
    InvalidRegistration,
    #[error("the authenticator's answer was not accepted")]
    PasskeyRejected,
    #[error("credential is not a WebAuthn credential as the browser gives it")]
    BadCredential,
    #[error("no such passkey")]
    NoSuchPasskey,
    #[error("passwordless login needs a passkey first")]
    NoPasskey,
    #[error("the passkey's signature counter went back (a copied authenticator?): refused")]
    PasskeyCloned,
    #[error("WebAuthn: {0}")]
    Webauthn(String),
    #[error("this account's passkeys belong to another host name and it has no other second factor here")]
    NoUsableFactor,
    #[error("wrong password")]
    WrongPassword,
    #[error("this login is finished with: {methods}")]
    MethodNotAllowed { methods: String },
    #[error("too many failed logins; try again in {retry_after} s")]
    Throttled { retry_after: u64 },
    #[error("no valid session")]
    NoSession,
    #[error("no email address may receive codes for this account")]
    NoEmail,
    #[error("too many codes for this login")]
    TooManyCodes,
    #[error("a code was just sent; wait {wait} s")]
    ResendTooSoon { wait: i64 },
    #[error("the code could not be mailed")]
    SmtpUnavailable,
    #[error("TOTP is already set up for this account")]
    AlreadyEnrolled,
    #[error("TOTP was set up for this account meanwhile")]
    EnrolledMeanwhile,
    #[error("no enrollment is waiting")]
    NoEnrollment,
    #[error("drawing the QR code failed")]
    Qr,
    #[error("no such user")]
    NoSuchUser,
    #[error("this user has no exemption")]
    NotExempt,
    #[error("an exemption ends in the future and at most 90 days away")]
    BadUntil,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Login(#[from] LoginError),
    #[error(transparent)]
    Stamp(#[from] super::sessions::StampError),
}

/// What the second-factor steps of a login work with: the login's own [`Gate`], the vault
/// (TOTP secrets, the email-code key, the SMTP password) and the `[mfa]` and `[smtp]`
/// sections in force.
#[derive(Debug, Clone, Copy)]
pub struct Mfa<'a> {
    pub gate: Gate<'a>,
    pub vault: &'a Vault,
    pub cfg: &'a MfaConfig,
    pub smtp: &'a SmtpConfig,
    /// `[http] public_url`: the passkeys' relying party.
    pub public_url: Option<&'a str>,
}

/// A fresh opaque token (43 characters of base64url).
pub fn new_token() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// How tokens are stored and looked up.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `token` has the shape of ours (so a JWT or junk is not even looked up).
pub fn looks_like_token(token: &str) -> bool {
    token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// What a correct password leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Session,
    Mfa {
        token: String,
        methods: Vec<&'static str>,
        /// The options for `navigator.credentials.get` when a passkey may finish the login.
        webauthn: Option<serde_json::Value>,
    },
    Enroll {
        enroll_token: String,
        email: Option<String>,
    },
}

/// Whether the force policy is on: as stored by an admin, else `[mfa] force`.
pub async fn forced(store: &Store, cfg: &MfaConfig) -> Result<bool, StoreError> {
    Ok(match store.setting(FORCE_SETTING).await?.as_deref() {
        Some("on") => true,
        Some("off") => false,
        _ => cfg.force,
    })
}

/// Whether a user with this address and level may finish a login with an emailed code.
pub fn email_allowed(cfg: &MfaConfig, email: Option<&str>, level: u8) -> bool {
    cfg.email_fallback
        && email.is_some_and(|e| !e.is_empty())
        && (level < 9 || cfg.email_for_admins)
}

/// What a correct password leads to for `user`: a session at once, a code, or enrollment. The
/// pending rows that carry the login on are stored here. `rp` is the passkeys' relying party
/// (`None` when `public_url` can be none).
pub async fn after_password(
    store: &Store,
    cfg: &MfaConfig,
    rp: Option<&passkey::RelyingParty>,
    user: &UserRow,
    client: &Client,
    now: i64,
) -> Result<Next, MfaError> {
    let attempt = crate::ids::random_hex(16);
    let row = |kind: &str, methods: &str, ttl: std::time::Duration, token: &str| PendingRow {
        token_hash: hash_token(token),
        attempt: attempt.clone(),
        kind: kind.to_string(),
        user_id: user.id,
        password_hash: user.password_hash.clone(),
        methods: methods.to_string(),
        ip: client.ip.clone(),
        user_agent: bounded(&client.user_agent, 256),
        created_at: now,
        expires_at: now + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2),
        failures: 0,
        used_at: None,
        email_code_hash: None,
        email_sent_at: None,
        email_code_failures: 0,
        emails_sent: 0,
        webauthn_state: None,
    };
    let totp = store.totp(user.id).await?.is_some();
    let keys = store.passkeys(user.id).await?;
    if totp || !keys.is_empty() {
        let token = new_token();
        let mut methods = Vec::new();
        if totp {
            methods.push("totp");
        }
        let challenge = passkey::login_challenge(rp, &keys)?;
        if challenge.is_some() {
            methods.push("webauthn");
        }
        // A recovery code finishes the login of a user who lost the phone, while one is left.
        if store.recovery_codes(user.id).await?.1 > 0 {
            methods.push("recovery");
        }
        if methods.is_empty() {
            // Passkeys made for another host's name only: the password alone must not do.
            return Err(MfaError::NoUsableFactor);
        }
        let mut pending = row("mfa", &methods.join(","), cfg.mfa_token_ttl, &token);
        let webauthn = challenge.map(|c| {
            pending.webauthn_state = Some(c.state);
            c.options
        });
        store.insert_pending(&[pending]).await?;
        return Ok(Next::Mfa {
            token,
            methods,
            webauthn,
        });
    }
    let exempt = store
        .exempt_until(user.id)
        .await?
        .is_some_and(|until| until > now);
    if !forced(store, cfg).await? || exempt {
        return Ok(Next::Session);
    }
    let enroll_token = new_token();
    let mut rows = vec![row("enroll", "", cfg.enroll_token_ttl, &enroll_token)];
    let email = email_allowed(cfg, user.email.as_deref(), user.level).then(new_token);
    if let Some(t) = &email {
        rows.push(row("mfa", "email", cfg.mfa_token_ttl, t));
    }
    store.insert_pending(&rows).await?;
    Ok(Next::Enroll {
        enroll_token,
        email,
    })
}

/// A pending row that may still be used at `now` for `kind`.
pub async fn live_pending(
    store: &Store,
    cfg: &MfaConfig,
    token: &str,
    kind: &str,
    now: i64,
) -> Result<Option<PendingRow>, StoreError> {
    if !looks_like_token(token) {
        return Ok(None);
    }
    let max = i64::from(cfg.max_code_failures);
    Ok(store.pending(&hash_token(token)).await?.filter(|r| {
        r.kind == kind && r.used_at.is_none() && now < r.expires_at && r.failures < max
    }))
}

/// The user a pending row belongs to, if the attempt still holds (same password, enabled).
async fn user_of(store: &Store, row: &PendingRow) -> Result<Option<UserRow>, StoreError> {
    Ok(store
        .user_by_id(row.user_id)
        .await?
        .filter(|u| !u.disabled && u.password_hash == row.password_hash))
}

/// The user named by an admin (any case).
async fn named_user(store: &Store, name: &str) -> Result<UserRow, MfaError> {
    store
        .user(&name.to_ascii_lowercase())
        .await?
        .ok_or(MfaError::NoSuchUser)
}

impl Mfa<'_> {
    /// The password lockout, per account and per client address, for every second-factor
    /// step; a refusal is recorded as `throttled`. Hand the ticket back with
    /// `pending.release`.
    async fn admit(
        &self,
        user: &UserRow,
        client: &Client,
        now: i64,
    ) -> Result<super::throttle::Ticket, MfaError> {
        let gate = self.gate;
        match gate
            .auth
            .pending
            .admit(gate.store, gate.cfg, &user.name, &client.ip, now)
            .await?
        {
            Ok(t) => Ok(t),
            Err(retry_after) => {
                let recorded =
                    crate::auth::login::record_failure(gate, &user.name, client, "throttled");
                if let Err(e) = recorded.await {
                    tracing::error!(error = %e, "recording a throttled attempt failed");
                }
                Err(MfaError::Throttled { retry_after })
            }
        }
    }

    /// Takes one try of a pending login before its code is checked.
    async fn claim(&self, row: &PendingRow, now: i64) -> Result<(), MfaError> {
        let max = i64::from(self.cfg.max_code_failures);
        if self.gate.store.claim_try(&row.token_hash, max, now).await? {
            Ok(())
        } else {
            Err(MfaError::InvalidToken)
        }
    }

    /// A wrong code (its try was already taken with [`Mfa::claim`], if it had a pending row):
    /// written to the login history as `mfa_failed`, which feeds the account and IP lockout;
    /// a wrong emailed code also counts against the code of `emailed`.
    async fn wrong_code(&self, emailed: Option<&PendingRow>, user: &UserRow, client: &Client) {
        if let Some(row) = emailed {
            if let Err(e) = self.gate.store.email_code_failure(&row.token_hash).await {
                tracing::error!(error = %e, "counting a wrong emailed code failed");
            }
        }
        let recorded =
            crate::auth::login::record_failure(self.gate, &user.name, client, "mfa_failed");
        if let Err(e) = recorded.await {
            tracing::error!(error = %e, "recording a second-factor failure failed");
        }
    }
}

/// The key emailed codes are hashed with; created when absent (installs from before 2FA).
pub async fn email_key(vault: &Vault) -> Result<zeroize::Zeroizing<Vec<u8>>, VaultError> {
    let keys = vault.keys_under(MFA_KEY_PREFIX).await?;
    let name = match keys.last() {
        Some(k) => k.name.clone(),
        None => {
            let name = format!("{MFA_KEY_PREFIX}{}", crate::ids::random_hex(4));
            vault.generate_if_absent(&name, 32).await?;
            name
        }
    };
    vault.get(&name).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let t = new_token();
        assert!(looks_like_token(&t));
        assert_ne!(t, new_token());
        assert_eq!(hash_token(&t).len(), 64);
        assert!(!hash_token(&t).contains(&t));
        for bad in ["", "eyJhbGciOi.x.y", &t[..42], &format!("{}=", &t[..42])] {
            assert!(!looks_like_token(bad), "{bad}");
        }
    }
}
