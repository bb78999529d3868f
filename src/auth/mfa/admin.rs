//! The admin's side of the second factor, from the API or the CLI: every user's status, the
//! force policy, resets (a lost phone) and exemptions. Each use case is one operation, so both
//! write the same audit row.

use serde::Serialize;

use crate::auth::config::MfaConfig;
use crate::auth::sessions::Notice;
use crate::clock::rfc3339;
use crate::store::{Store, StoreError};
use crate::vault::{Vault, VaultError};

use super::{
    email_allowed, forced, named_user, pending_totp_secret_name, totp_secret_name, MfaError,
    FORCE_SETTING,
};

/// Longest exemption an admin may grant in one go.
pub const MAX_EXEMPTION_SECS: i64 = 90 * 24 * 3600;

/// One user's second factor (`user, method, enrolled_at, exempt_until`), as the API and
/// `mfa status --json` show it.
#[derive(Debug, Serialize)]
pub struct MfaStatusView {
    pub user: String,
    /// `totp`, `passkey`, `totp+passkey`, `email` or `none`.
    pub method: &'static str,
    pub enrolled_at: Option<String>,
    pub exempt_until: Option<String>,
}

/// Every user's second factor.
pub async fn status(
    store: &Store,
    cfg: &MfaConfig,
    now: i64,
) -> Result<Vec<MfaStatusView>, StoreError> {
    let rows = store.mfa_status(now).await?;
    Ok(rows
        .into_iter()
        .map(|r| MfaStatusView {
            method: match (r.totp_confirmed_at, r.passkey_since) {
                (Some(_), Some(_)) => "totp+passkey",
                (Some(_), None) => "totp",
                (None, Some(_)) => "passkey",
                (None, None) if email_allowed(cfg, r.email.as_deref(), r.level) => "email",
                (None, None) => "none",
            },
            enrolled_at: match (r.totp_confirmed_at, r.passkey_since) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
            .map(rfc3339),
            exempt_until: r.exempt_until.map(rfc3339),
            user: r.user,
        })
        .collect())
}

/// Whether enrollment is forced on everyone.
pub async fn policy(store: &Store, cfg: &MfaConfig) -> Result<bool, StoreError> {
    forced(store, cfg).await
}

/// Forces enrollment on everyone, or stops forcing it (audited as `mfa.policy`).
pub async fn set_policy(
    store: &Store,
    actor: &str,
    force: bool,
    now: i64,
) -> Result<(), StoreError> {
    let value = if force { "on" } else { "off" };
    store.set_setting(FORCE_SETTING, value, actor, now).await?;
    store.tell(crate::store::changes::Change::MfaPolicy).await;
    store.audit(actor, "mfa.policy", "force", value).await
}

/// What a reset did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reset {
    /// The user's name as stored.
    pub user: String,
    /// Whether the user had confirmed TOTP.
    pub had_totp: bool,
    /// Passkeys removed with it.
    pub passkeys: u64,
}

/// Removes a user's TOTP (and a pending enrollment), recovery codes, passkeys and the
/// passwordless opt-in, and ends the user's sessions (audited as `mfa.reset`).
pub async fn reset(
    store: &Store,
    vault: &Vault,
    notice: Notice<'_>,
    actor: &str,
    name: &str,
    now: i64,
) -> Result<Reset, MfaError> {
    let user = named_user(store, name).await?;
    for secret in [totp_secret_name(user.id), pending_totp_secret_name(user.id)] {
        match vault.remove(&secret).await {
            Ok(()) | Err(VaultError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let (had_totp, passkeys) = store.reset_totp(user.id, now).await?;
    let detail = if passkeys > 0 {
        format!("{passkeys} passkeys removed")
    } else {
        String::new()
    };
    store.audit(actor, "mfa.reset", &user.name, &detail).await?;
    notice.sessions_ended(store).await?;
    Ok(Reset {
        user: user.name,
        had_totp,
        passkeys,
    })
}

/// The user's own removal of the authenticator app (from the account page, after the
/// password): the TOTP secret goes, the recovery codes too unless a passkey remains, and the
/// user's sessions end (audited as `mfa.totp.remove`). Passkeys stay.
pub async fn remove_totp(
    store: &Store,
    vault: &Vault,
    notice: Notice<'_>,
    name: &str,
    now: i64,
) -> Result<bool, MfaError> {
    let user = named_user(store, name).await?;
    for secret in [totp_secret_name(user.id), pending_totp_secret_name(user.id)] {
        match vault.remove(&secret).await {
            Ok(()) | Err(VaultError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let had = store.remove_totp(user.id, now).await?;
    store
        .audit(&user.name, "mfa.totp.remove", &user.name, "")
        .await?;
    notice.sessions_ended(store).await?;
    Ok(had)
}

/// Lets a user log in without enrolling until `until` (at most [`MAX_EXEMPTION_SECS`] away);
/// audited as `mfa.exempt`. The user's name as stored.
pub async fn exempt(
    store: &Store,
    actor: &str,
    name: &str,
    until: i64,
    now: i64,
) -> Result<String, MfaError> {
    let user = named_user(store, name).await?;
    if until <= now || until - now > MAX_EXEMPTION_SECS {
        return Err(MfaError::BadUntil);
    }
    store.set_exemption(user.id, until, actor, now).await?;
    store.tell(crate::store::changes::Change::MfaPolicy).await;
    let detail = format!("until={}", rfc3339(until));
    store
        .audit(actor, "mfa.exempt", &user.name, &detail)
        .await?;
    Ok(user.name)
}

/// Ends a user's exemption now (audited as `mfa.unexempt`). The user's name as stored.
pub async fn unexempt(store: &Store, actor: &str, name: &str) -> Result<String, MfaError> {
    let user = named_user(store, name).await?;
    if !store.remove_exemption(user.id).await? {
        return Err(MfaError::NotExempt);
    }
    store.tell(crate::store::changes::Change::MfaPolicy).await;
    store.audit(actor, "mfa.unexempt", &user.name, "").await?;
    Ok(user.name)
}
