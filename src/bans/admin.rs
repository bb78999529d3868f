//! The ban list as admins see and change it: `pbxguard ban …` and `/api/v1/admin/bans`. Both
//! work on the store; a running daemon follows within a second (the ban version it polls).

use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;

use super::config::BansConfig;
use super::{never_banned, BanKey, KeyError, Source};
use crate::clock::{now_unix, rfc3339};
use crate::store::{BanRow, NewBan, Store, StoreError};

/// Longest manual ban: ten years (a "permanent" ban that still shows when it ends).
pub const MAX_MANUAL: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Reasons are for people; a bounded line.
pub const MAX_REASON: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum BanError {
    #[error(transparent)]
    Address(#[from] KeyError),
    #[error("{0} is never banned: {1}")]
    NeverBanned(String, String),
    #[error("the duration must be between 1 second and 10 years")]
    Duration,
    #[error("the reason is longer than {MAX_REASON} characters or holds control characters")]
    Reason,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A ban as `ban list --json` and the admin API show it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BanView {
    /// `192.0.2.66`, or a prefix such as `2001:db8:1::/64`.
    pub address: String,
    /// `sip`, `ami`, `http`, `asterisk`, `feed`, `manual`.
    pub source: String,
    pub reason: String,
    pub created_at: String,
    pub expires_at: String,
    /// Offences that made or renewed the ban.
    pub hits: i64,
    /// The node that imposed it.
    pub node: String,
}

impl From<&BanRow> for BanView {
    fn from(r: &BanRow) -> BanView {
        BanView {
            address: r.address.clone(),
            source: r.source.clone(),
            reason: r.reason.clone(),
            created_at: rfc3339(r.created_at),
            expires_at: rfc3339(r.expires_at),
            hits: r.hits,
            node: r.node.clone(),
        }
    }
}

/// The bans in force, soonest to end first.
pub async fn list(store: &Store) -> Result<Vec<BanView>, StoreError> {
    Ok(store
        .bans(now_unix())
        .await?
        .iter()
        .map(BanView::from)
        .collect())
}

/// What an admin asks to ban.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub address: &'a str,
    /// `[bans] duration` when `None`.
    pub duration: Option<Duration>,
    pub reason: Option<&'a str>,
}

/// Bans an address or prefix by hand (source `manual`), refusing what must never be banned
/// (`exempt`: the daemon's trusted and relay networks from the configuration). Audited as
/// `ban.add`.
pub async fn add(
    store: &Store,
    config: &BansConfig,
    exempt: &[IpNet],
    actor: &str,
    node: &str,
    req: &Request<'_>,
) -> Result<BanView, BanError> {
    let key = BanKey::parse(req.address)?;
    if let Some(why) = never_banned(&key, &config.allow, exempt) {
        return Err(BanError::NeverBanned(key.to_string(), why));
    }
    let duration = req.duration.unwrap_or(config.duration);
    if duration < Duration::from_secs(1) || duration > MAX_MANUAL {
        return Err(BanError::Duration);
    }
    let reason = req.reason.unwrap_or("banned by an admin").trim();
    if reason.chars().count() > MAX_REASON || reason.chars().any(char::is_control) {
        return Err(BanError::Reason);
    }
    let reason = if reason.is_empty() {
        "banned by an admin"
    } else {
        reason
    };
    let address = key.to_string();
    let secs = duration.as_secs() as i64;
    let row = store
        .put_ban(&NewBan {
            address: &address,
            source: Source::Manual.as_str(),
            reason,
            node,
            now: now_unix(),
            base_secs: secs,
            max_secs: secs,
        })
        .await?;
    store
        .audit(
            actor,
            "ban.add",
            &address,
            &format!("{reason} ({})", rfc3339(row.expires_at)),
        )
        .await?;
    Ok(BanView::from(&row))
}

/// What [`remove`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lifted {
    /// The ban key asked for; `None` when every ban was lifted.
    pub address: Option<String>,
    /// How many bans in force went (0 when the address was not banned).
    pub count: u64,
}

/// Lifts every source's ban of `address` (as its key: an IPv6 address lifts its /64), or
/// every ban when `None`. Audited as `ban.rm`, also when there was nothing to lift.
pub async fn remove(store: &Store, actor: &str, address: Option<&str>) -> Result<Lifted, BanError> {
    let key = address
        .map(BanKey::parse)
        .transpose()?
        .map(|k| k.to_string());
    let count = store.delete_bans(key.as_deref(), now_unix()).await?;
    store
        .audit(actor, "ban.rm", key.as_deref().unwrap_or("all"), "")
        .await?;
    Ok(Lifted {
        address: key,
        count,
    })
}
