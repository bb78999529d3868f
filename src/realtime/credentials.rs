//! SIP credentials as admins (and Asterisk's realtime writes) manage them: the row Asterisk
//! looks up (`id`, `username`) in the store, the password in the vault under `sip/<id>`.
//! Passwords go in and never come back out through these operations.

use serde::Serialize;

use super::{secret_name, validate_id, validate_username, RealtimeError};
use crate::clock::rfc3339;
use crate::store::{Store, StoreError};
use crate::vault::{Vault, VaultError};

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(transparent)]
    Invalid(#[from] RealtimeError),
    #[error("empty password")]
    EmptyPassword,
    #[error("the password must be UTF-8 text")]
    NotUtf8,
    #[error("no SIP credential {0}")]
    NoSuchCredential(String),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who changes a credential, as the audit log records it.
#[derive(Debug, Clone, Copy)]
pub enum By<'a> {
    /// An admin (the CLI's actor string).
    Admin(&'a str),
    /// Asterisk, writing through the realtime interface.
    Asterisk,
}

/// A password Asterisk can use: non-empty text.
pub fn check_password(password: &[u8]) -> Result<(), CredentialError> {
    if password.is_empty() {
        return Err(CredentialError::EmptyPassword);
    }
    if std::str::from_utf8(password).is_err() {
        return Err(CredentialError::NotUtf8);
    }
    Ok(())
}

/// Creates or replaces a credential (audited as `sip.credential.set`); true when it is new.
/// The vault is written first: a row never names a password that is not there.
pub async fn set(
    store: &Store,
    vault: &Vault,
    by: By<'_>,
    id: &str,
    username: &str,
    password: &[u8],
    now: i64,
) -> Result<bool, CredentialError> {
    validate_id(id)?;
    validate_username(username)?;
    check_password(password)?;
    vault.set(&secret_name(id), password).await?;
    let created = store.put_sip_credential(id, username, now).await?;
    store
        .tell(crate::store::changes::Change::SipCredentials)
        .await;
    let (actor, detail) = match by {
        By::Admin(actor) => (actor, format!("username={username}")),
        By::Asterisk => ("asterisk", "via realtime".to_string()),
    };
    store
        .audit(actor, "sip.credential.set", id, &detail)
        .await?;
    Ok(created)
}

/// A credential as `sip credential list` shows it (never the password).
#[derive(Debug, Serialize)]
pub struct CredentialView {
    pub id: String,
    pub username: String,
    pub created_at: String,
    pub updated_at: String,
}

/// Every credential, by id.
pub async fn list(store: &Store) -> Result<Vec<CredentialView>, StoreError> {
    Ok(store
        .sip_credentials()
        .await?
        .into_iter()
        .map(|r| CredentialView {
            id: r.id,
            username: r.username,
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
        })
        .collect())
}

/// Deletes a credential and its password (audited as `sip.credential.rm`).
pub async fn remove(
    store: &Store,
    vault: &Vault,
    actor: &str,
    id: &str,
) -> Result<(), CredentialError> {
    validate_id(id)?;
    if !store.delete_sip_credential(id).await? {
        return Err(CredentialError::NoSuchCredential(id.to_string()));
    }
    // The row is gone first, so Asterisk stops getting the credential even if this fails.
    if let Err(e) = vault.remove(&secret_name(id)).await {
        tracing::warn!(error = %e, "the credential's vault secret was already gone");
    }
    store
        .tell(crate::store::changes::Change::SipCredentials)
        .await;
    store.audit(actor, "sip.credential.rm", id, "").await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_non_empty_text() {
        assert!(check_password("pässword".as_bytes()).is_ok());
        assert!(matches!(
            check_password(b""),
            Err(CredentialError::EmptyPassword)
        ));
        assert!(matches!(
            check_password(b"\xff\xfe"),
            Err(CredentialError::NotUtf8)
        ));
    }
}
