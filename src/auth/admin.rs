//! Sessions and the login history as admins see and manage them, through the API or the CLI.
//! Each use case is one operation here, so both write the same audit row and both make the
//! change known (see [`Notice`]).

use serde::Serialize;

use crate::auth::config::AuthConfig;
use crate::clock::rfc3339;
use crate::store::{HistoryRow, SessionRow, Store, StoreError};
use crate::vault::{Vault, VaultError};

use super::jwt::Keyring;
use super::sessions::{Notice, StampError};

/// Largest page of the login history.
pub const MAX_HISTORY_LIMIT: u32 = 1000;
pub const DEFAULT_HISTORY_LIMIT: u32 = 100;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Stamp(#[from] StampError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("no live session with that id")]
    NoSuchSession,
    #[error("no such user")]
    NoSuchUser,
    #[error("limit must be between 1 and {MAX_HISTORY_LIMIT}")]
    BadLimit,
}

/// A session as admins (API and `session list --json`) see it.
#[derive(Debug, Serialize)]
pub struct SessionView {
    pub id: String,
    pub user: String,
    pub created_at: String,
    pub last_seen: String,
    pub ip: String,
    pub user_agent: String,
    /// The earlier of the absolute expiry and the idle expiry.
    pub expires_at: String,
    /// The node that created it (several hosts on one database).
    pub node: Option<String>,
}

impl SessionView {
    pub fn new(row: &SessionRow, idle_secs: i64) -> SessionView {
        SessionView {
            id: row.id.clone(),
            user: row.user.clone(),
            created_at: rfc3339(row.created_at),
            last_seen: rfc3339(row.last_seen),
            ip: row.ip.clone(),
            user_agent: row.user_agent.clone(),
            expires_at: rfc3339(row.expires_at.min(row.last_seen + idle_secs)),
            node: row.node.clone(),
        }
    }
}

/// One login attempt as admins (API and `history --json`) see it.
#[derive(Debug, Serialize)]
pub struct HistoryView {
    pub at: String,
    pub user: String,
    pub ip: String,
    pub user_agent: String,
    pub result: String,
    /// The node that answered.
    pub node: Option<String>,
}

impl From<HistoryRow> for HistoryView {
    fn from(r: HistoryRow) -> HistoryView {
        HistoryView {
            at: rfc3339(r.at),
            user: r.user,
            ip: r.ip,
            user_agent: r.user_agent,
            result: r.result,
            node: r.node,
        }
    }
}

/// Live sessions (of one user, or everyone's), newest first.
pub async fn sessions(
    store: &Store,
    cfg: &AuthConfig,
    user: Option<&str>,
    now: i64,
) -> Result<Vec<SessionView>, StoreError> {
    let idle = cfg.session_idle_timeout.as_secs() as i64;
    let rows = store.live_sessions(user, now, idle).await?;
    Ok(rows.iter().map(|r| SessionView::new(r, idle)).collect())
}

/// The newest `limit` login attempts (of one user, or everyone's).
pub async fn history(
    store: &Store,
    user: Option<&str>,
    limit: u32,
) -> Result<Vec<HistoryView>, AdminError> {
    if limit == 0 || limit > MAX_HISTORY_LIMIT {
        return Err(AdminError::BadLimit);
    }
    let rows = store.history(user, limit).await?;
    Ok(rows.into_iter().map(HistoryView::from).collect())
}

/// Ends one live session; audited as `session.revoke`.
pub async fn revoke_session(
    store: &Store,
    notice: Notice<'_>,
    actor: &str,
    id: &str,
    now: i64,
) -> Result<(), AdminError> {
    if !store.revoke_session(id, now).await? {
        return Err(AdminError::NoSuchSession);
    }
    // The revocation is committed: it is audited even when telling others about it failed.
    let told = notice.session_ended(store, id).await;
    store.audit(actor, "session.revoke", id, "").await?;
    told?;
    Ok(())
}

/// Ends every session of a user; audited as `session.revoke-user`. The number ended.
pub async fn revoke_user_sessions(
    store: &Store,
    notice: Notice<'_>,
    actor: &str,
    name: &str,
    now: i64,
) -> Result<u64, AdminError> {
    let n = store
        .revoke_user_sessions(name, now)
        .await?
        .ok_or(AdminError::NoSuchUser)?;
    let told = notice.sessions_ended(store).await;
    store
        .audit(actor, "session.revoke-user", name, &format!("{n} sessions"))
        .await?;
    told?;
    Ok(n)
}

/// Ends every session of every user; audited as `session.revoke` of `all`. The number ended.
pub async fn revoke_all_sessions(
    store: &Store,
    notice: Notice<'_>,
    actor: &str,
    now: i64,
) -> Result<u64, AdminError> {
    let n = store.revoke_all_sessions(now).await?;
    let told = notice.sessions_ended(store).await;
    store
        .audit(actor, "session.revoke", "all", &format!("{n} sessions"))
        .await?;
    told?;
    Ok(n)
}

/// Replaces the JWT signing key and revokes every session: everyone must log in again
/// (audited as `secret.rotate-key` on `keys/jwt`). The new key id and the sessions revoked.
pub async fn logout_all(
    vault: &Vault,
    notice: Notice<'_>,
    actor: &str,
    now: i64,
) -> Result<(String, u64), AdminError> {
    let kid = Keyring::replace(vault).await?;
    let store = vault.store();
    let n = store.revoke_all_sessions(now).await?;
    notice.keys_changed(store).await?;
    let detail = format!("new signing key {kid}; {n} sessions revoked");
    store
        .audit(actor, "secret.rotate-key", "keys/jwt", &detail)
        .await?;
    Ok((kid, n))
}
