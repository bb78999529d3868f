//! Login and roles for the web tier: passwords (argon2id on a bounded pool), HS256 JWTs with
//! rotating key ids, server-side sessions checked on every request, the forward-auth route
//! rules, throttling and the client-IP rule for the history.

pub mod client_ip;
pub mod jwt;
pub mod login;
pub mod password;
pub mod roles;
pub mod routes;
pub mod sessions;
pub mod throttle;

use std::path::Path;

use arc_swap::ArcSwap;

use crate::vault::{Vault, VaultError};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Password(#[from] password::PasswordError),
    #[error("no JWT signing key in the vault (run `pbxguard init`)")]
    NoSigningKey,
}

/// The daemon's authentication state.
#[derive(Debug)]
pub struct Auth {
    pub hasher: password::Hasher,
    /// Swapped when another process changes signing keys (seen through the auth stamp) and
    /// on SIGHUP.
    pub keyring: ArcSwap<jwt::Keyring>,
    pub sessions: sessions::Sessions,
}

/// Concurrent argon2 computations: one per core keeps latency flat without oversubscribing.
fn hash_concurrency() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

impl Auth {
    pub async fn new(vault: &Vault, state_dir: &Path) -> Result<Auth, AuthError> {
        let keyring = jwt::Keyring::load(vault).await?;
        if keyring.signing_kid().is_none() {
            return Err(AuthError::NoSigningKey);
        }
        Ok(Auth {
            hasher: password::Hasher::new(hash_concurrency())?,
            keyring: ArcSwap::from_pointee(keyring),
            sessions: sessions::Sessions::new(state_dir),
        })
    }

    /// Re-reads the signing keys from the vault; keeps the old ring if that fails.
    pub async fn reload_keys(&self, vault: &Vault) -> Result<(), AuthError> {
        let ring = jwt::Keyring::load(vault).await?;
        if ring.signing_kid().is_none() {
            return Err(AuthError::NoSigningKey);
        }
        self.keyring.store(std::sync::Arc::new(ring));
        Ok(())
    }
}
