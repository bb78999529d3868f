//! Password hashing: argon2id with OWASP's parameters (19 MiB, t=2, p=1), run on the blocking
//! pool behind a semaphore, so a login storm queues instead of stalling the async runtime or
//! exhausting memory (each hash holds 19 MiB while it runs).

use std::sync::Arc;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

/// OWASP Password Storage Cheat Sheet, argon2id option 2.
pub const MEMORY_KIB: u32 = 19 * 1024;
pub const ITERATIONS: u32 = 2;
pub const PARALLELISM: u32 = 1;
/// Shortest password accepted for new passwords.
pub const MIN_LEN: usize = 12;
/// Longest password accepted anywhere (bytes); bounds the work an attacker can ask for.
pub const MAX_LEN: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("the password must be at least {MIN_LEN} characters long")]
    TooShort,
    #[error("the password must be at most {MAX_LEN} bytes long")]
    TooLong,
    #[error("the password must not contain control characters")]
    Control,
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("password hashing task failed")]
    Task,
}

/// Checks a new password against the policy.
pub fn check_policy(password: &str) -> Result<(), PasswordError> {
    if password.chars().count() < MIN_LEN {
        return Err(PasswordError::TooShort);
    }
    if password.len() > MAX_LEN {
        return Err(PasswordError::TooLong);
    }
    if password.chars().any(char::is_control) {
        return Err(PasswordError::Control);
    }
    Ok(())
}

fn argon2() -> Argon2<'static> {
    // The constants above are valid parameters; Params::new only fails on out-of-range ones.
    let params = Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes synchronously (CLI use). Returns a PHC string.
pub fn hash_now(password: &[u8]) -> Result<String, PasswordError> {
    let salt = SaltString::generate(&mut OsRng);
    argon2()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Verifies synchronously; a malformed stored hash verifies as false.
pub fn verify_now(password: &[u8], phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => argon2().verify_password(password, &parsed).is_ok(),
        Err(_) => false,
    }
}

/// The daemon's hasher: bounded concurrency, and a dummy hash so unknown users cost the same.
#[derive(Clone)]
pub struct Hasher {
    permits: Arc<Semaphore>,
    dummy: Arc<String>,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher")
            .field("available", &self.permits.available_permits())
            .finish()
    }
}

impl Hasher {
    /// `concurrency` hashes at once; more wait their turn.
    pub fn new(concurrency: usize) -> Result<Hasher, PasswordError> {
        let mut random = Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, random.as_mut_slice());
        Ok(Hasher {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy: Arc::new(hash_now(random.as_slice())?),
        })
    }

    pub async fn hash(&self, password: Zeroizing<String>) -> Result<String, PasswordError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| PasswordError::Task)?;
        tokio::task::spawn_blocking(move || hash_now(password.as_bytes()))
            .await
            .map_err(|_| PasswordError::Task)?
    }

    /// Verifies against `phc`, or against the dummy hash when there is no user, so the answer
    /// takes the same time either way. Returns false for the dummy.
    pub async fn verify(
        &self,
        password: Zeroizing<String>,
        phc: Option<String>,
    ) -> Result<bool, PasswordError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| PasswordError::Task)?;
        let real = phc.is_some();
        let target = phc.unwrap_or_else(|| self.dummy.as_ref().clone());
        let ok = tokio::task::spawn_blocking(move || verify_now(password.as_bytes(), &target))
            .await
            .map_err(|_| PasswordError::Task)?;
        Ok(ok && real)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_with_owasp_parameters_and_verify() {
        let phc = hash_now(b"correct horse battery").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify_now(b"correct horse battery", &phc));
        assert!(!verify_now(b"correct horse batterx", &phc));
        assert!(!verify_now(b"x", "not a phc string"));
        assert_ne!(phc, hash_now(b"correct horse battery").unwrap(), "salted");
    }

    #[test]
    fn policy() {
        assert!(matches!(
            check_policy("short"),
            Err(PasswordError::TooShort)
        ));
        assert!(matches!(
            check_policy(&"x".repeat(1025)),
            Err(PasswordError::TooLong)
        ));
        assert!(matches!(
            check_policy("twelve chars\u{0}"),
            Err(PasswordError::Control)
        ));
        assert!(check_policy("a fine passphrase").is_ok());
        assert!(check_policy("ünïcödé-pässwörd").is_ok());
    }

    #[tokio::test]
    async fn unknown_users_verify_against_the_dummy_and_fail() {
        let h = Hasher::new(2).unwrap();
        assert!(!h
            .verify(Zeroizing::new("anything".into()), None)
            .await
            .unwrap());
        let phc = h
            .hash(Zeroizing::new("a fine passphrase".into()))
            .await
            .unwrap();
        assert!(h
            .verify(Zeroizing::new("a fine passphrase".into()), Some(phc))
            .await
            .unwrap());
    }
}
