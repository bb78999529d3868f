//! Login and roles for the web tier: passwords (argon2id on a bounded pool), HS256 JWTs with
//! rotating key ids, server-side sessions checked on every request, the forward-auth route
//! rules, throttling and the client-IP rule for the history.
//!
//! The use cases are operations here, shared by the HTTP handlers and the CLI: the login and
//! logout ([`login`]), the second factor ([`mfa`]), sessions and the history as admins see
//! them ([`admin`]) and accounts ([`users`]). They take what they need (the store, the vault,
//! the daemon's [`Auth`], a config section), never the whole daemon.

pub mod admin;
pub mod client_ip;
pub mod config;
pub mod email_code;
pub mod jwt;
pub mod login;
pub mod mfa;
pub mod password;
pub mod recovery;
pub mod roles;
pub mod routes;
pub mod sessions;
pub mod throttle;
pub mod totp;
pub mod users;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::auth::config::AuthConfig;
use crate::store::Store;
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

/// Why a request is not authenticated; all are 401 to the client.
#[derive(Debug)]
pub enum AuthFail {
    NoToken,
    BadToken(jwt::JwtError),
    Denied(sessions::Deny),
    Internal,
}

/// The daemon's authentication state.
#[derive(Debug)]
pub struct Auth {
    pub hasher: password::Hasher,
    /// Swapped when another process changes signing keys (seen through the auth stamp) and
    /// on SIGHUP.
    pub keyring: ArcSwap<jwt::Keyring>,
    pub sessions: sessions::Sessions,
    /// Login attempts in flight, for throttling.
    pub pending: throttle::Pending,
    /// Tokens whose signature and claims were verified, by exact text: the check sees the
    /// same token on every request of a session, and an HMAC plus two JSON parses per request
    /// was a quarter of its CPU. Only verified tokens get in, so it cannot be filled with junk;
    /// times are re-checked on every hit, and the server-side session still decides.
    verified: Mutex<HashMap<Box<str>, Arc<jwt::Claims>>>,
}

/// Verified tokens kept at most; the map is dropped wholesale beyond (a rare event: one entry
/// per live session).
const MAX_VERIFIED: usize = 100_000;

/// Concurrent argon2 computations: one core is always left to the async workers, so a login
/// storm slows logins down rather than every other request.
fn hash_concurrency() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .saturating_sub(1)
        .max(1)
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
            verified: Mutex::default(),
            pending: throttle::Pending::default(),
        })
    }

    /// Re-reads the signing keys from the vault; keeps the old ring if that fails.
    pub async fn reload_keys(&self, vault: &Vault) -> Result<(), AuthError> {
        let ring = jwt::Keyring::load(vault).await?;
        if ring.signing_kid().is_none() {
            return Err(AuthError::NoSigningKey);
        }
        self.keyring.store(Arc::new(ring));
        if let Ok(mut v) = self.verified.lock() {
            v.clear();
        }
        Ok(())
    }

    /// Verifies `token` and its server-side session at `now` (bring the keys and the session
    /// cache up to date first: another process may have changed them). A `last_seen` that is
    /// due is written back in the background.
    pub async fn authenticate(
        &self,
        store: &Store,
        cfg: &AuthConfig,
        token: Option<&str>,
        now: i64,
    ) -> Result<sessions::Session, AuthFail> {
        let token = token.ok_or(AuthFail::NoToken)?;
        let claims = self.verify(token, now).map_err(|e| {
            tracing::debug!(reason = %e, "token refused");
            AuthFail::BadToken(e)
        })?;
        match self.sessions.check(store, cfg, &claims, now).await {
            Ok(Ok(checked)) => {
                if let Some(at) = checked.touch {
                    let store = store.clone();
                    let id = checked.session.id.clone();
                    tokio::spawn(async move {
                        // The store logs a fault of the database once; other failures here.
                        match store.touch_session(&id, at).await {
                            Err(e) if !e.is_unavailable() => {
                                tracing::warn!(error = %e, "recording session activity failed")
                            }
                            _ => {}
                        }
                    });
                }
                Ok(checked.session)
            }
            Ok(Err(deny)) => {
                tracing::debug!(session = %claims.sid, reason = %deny, "session refused");
                Err(AuthFail::Denied(deny))
            }
            Err(e) => {
                tracing::error!(error = %e, "session lookup failed; refusing the request");
                Err(AuthFail::Internal)
            }
        }
    }

    /// Verifies a token (see [`jwt::Keyring::verify`]), remembering the result.
    pub fn verify(&self, token: &str, now: i64) -> Result<Arc<jwt::Claims>, jwt::JwtError> {
        if token.len() > jwt::MAX_TOKEN_LEN {
            return Err(jwt::JwtError::TooLong);
        }
        let hit = self
            .verified
            .lock()
            .ok()
            .and_then(|v| v.get(token).cloned());
        if let Some(claims) = hit {
            let leeway = jwt::LEEWAY_SECS as i64;
            let (exp, nbf) = (claims.exp as i64, claims.nbf as i64);
            if now > exp.saturating_add(leeway) || now < nbf.saturating_sub(leeway) {
                return Err(jwt::JwtError::Invalid(
                    "token expired or not yet valid".into(),
                ));
            }
            return Ok(claims);
        }
        let claims = Arc::new(self.keyring.load().verify(token)?);
        if let Ok(mut v) = self.verified.lock() {
            if v.len() >= MAX_VERIFIED {
                v.clear();
            }
            v.insert(token.into(), claims.clone());
        }
        Ok(claims)
    }
}
