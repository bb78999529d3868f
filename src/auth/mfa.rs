//! Which second factor a login needs after a correct password, and the tokens that carry a
//! login (or an enrollment) across the requests that finish it.
//!
//! DESIGN.md §6: a user with confirmed TOTP gets `mfa_required` (`totp`). A user without TOTP to
//! whom the force policy applies (not exempt) gets `enroll_required` with an `enroll_token`, and
//! — when the user has an email address, `[mfa] email_fallback` is on and (for admins)
//! `email_for_admins` — also an `mfa_token` for an emailed code. Everyone else logs in with the
//! password alone. Tokens are 256 random bits, stored as SHA-256 hashes, single-use, bound to the
//! attempt (and to the password hash it was verified against), short-lived.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::app::App;
use crate::auth::login::{bounded, Client};
use crate::store::{PendingRow, StoreError, UserRow};
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

#[derive(Debug, thiserror::Error)]
pub enum MfaError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Vault(#[from] VaultError),
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
    },
    Enroll {
        enroll_token: String,
        email: Option<String>,
    },
}

pub async fn forced(app: &App) -> Result<bool, StoreError> {
    Ok(app.store.setting(FORCE_SETTING).await?.as_deref() == Some("on"))
}

/// Whether this user may finish a login with an emailed code.
pub fn email_allowed(app: &App, user: &UserRow) -> bool {
    let cfg = app.config.load();
    cfg.mfa.email_fallback
        && user.email.as_deref().is_some_and(|e| !e.is_empty())
        && (user.level < 9 || cfg.mfa.email_for_admins)
}

pub async fn after_password(
    app: &App,
    user: &UserRow,
    client: &Client,
    now: i64,
) -> Result<Next, MfaError> {
    let cfg = app.config.load_full();
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
    };
    if app.store.totp(user.id).await?.is_some() {
        let token = new_token();
        app.store
            .insert_pending(&[row("mfa", "totp", cfg.mfa.mfa_token_ttl, &token)])
            .await?;
        return Ok(Next::Mfa {
            token,
            methods: vec!["totp"],
        });
    }
    let exempt = app
        .store
        .exempt_until(user.id)
        .await?
        .is_some_and(|until| until > now);
    if !forced(app).await? || exempt {
        return Ok(Next::Session);
    }
    let enroll_token = new_token();
    let mut rows = vec![row("enroll", "", cfg.mfa.enroll_token_ttl, &enroll_token)];
    let email = email_allowed(app, user).then(new_token);
    if let Some(t) = &email {
        rows.push(row("mfa", "email", cfg.mfa.mfa_token_ttl, t));
    }
    app.store.insert_pending(&rows).await?;
    Ok(Next::Enroll {
        enroll_token,
        email,
    })
}

/// A pending row that may still be used at `now` for `kind`.
pub async fn live_pending(
    app: &App,
    token: &str,
    kind: &str,
    now: i64,
) -> Result<Option<PendingRow>, StoreError> {
    if !looks_like_token(token) {
        return Ok(None);
    }
    let max = i64::from(app.config.load().mfa.max_code_failures);
    Ok(app.store.pending(&hash_token(token)).await?.filter(|r| {
        r.kind == kind && r.used_at.is_none() && now < r.expires_at && r.failures < max
    }))
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
