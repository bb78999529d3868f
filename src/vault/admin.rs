//! Secrets as admins manage them by name (`pbxguard secret …`): every read and change leaves
//! an audit row (`secret.set`, `secret.get`, `secret.rm`, `secret.rotate-key`); values never
//! appear in one.

use zeroize::Zeroizing;

use super::{validate_name, Key, Vault, VaultError};

/// Stores a secret (audited as `secret.set`).
pub async fn set(vault: &Vault, actor: &str, name: &str, value: &[u8]) -> Result<(), VaultError> {
    validate_name(name)?;
    vault.set(name, value).await?;
    vault.store().audit(actor, "secret.set", name, "").await?;
    Ok(())
}

/// A secret's value, for an admin (audited as `secret.get` before it is handed over, so no
/// read goes unrecorded).
pub async fn get(vault: &Vault, actor: &str, name: &str) -> Result<Zeroizing<Vec<u8>>, VaultError> {
    validate_name(name)?;
    let value = vault.get(name).await?;
    vault.store().audit(actor, "secret.get", name, "").await?;
    Ok(value)
}

/// Deletes a secret (audited as `secret.rm`).
pub async fn remove(vault: &Vault, actor: &str, name: &str) -> Result<(), VaultError> {
    validate_name(name)?;
    vault.remove(name).await?;
    vault.store().audit(actor, "secret.rm", name, "").await?;
    Ok(())
}

/// A new data-key generation, wrapped under `new_master` when given (audited as
/// `secret.rotate-key` on `vault`); the audit row's detail, `k1 -> k2 (N secrets)`.
pub async fn rotate(
    vault: &Vault,
    actor: &str,
    new_master: Option<&Key>,
) -> Result<String, VaultError> {
    let r = vault.rotate(new_master).await?;
    let mut detail = format!(
        "{} -> {} ({} secrets)",
        r.old_key_ids.join(","),
        r.new_key_id,
        r.secrets
    );
    if new_master.is_some() {
        detail.push_str(", new master key");
    }
    vault
        .store()
        .audit(actor, "secret.rotate-key", "vault", &detail)
        .await?;
    Ok(detail)
}
