//! The edge's bans as admins see and lift them. They live in the store (see [`super::guards`]),
//! so a lifted ban reaches the running daemon at its next refresh, within seconds.

use serde::Serialize;

use super::guards::parse_ban_key;
use crate::clock::rfc3339;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum BanError {
    #[error("{0:?} is not an IP address (IPv6 bans may be given as PREFIX/64)")]
    BadAddress(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A ban as `sip ban list` shows it.
#[derive(Debug, Serialize)]
pub struct BanView {
    /// The ban key: an IPv4 address, or an IPv6 `prefix/64`.
    pub address: String,
    pub reason: String,
    pub created_at: String,
    pub expires_at: String,
}

/// The bans in force at `now`, soonest to end first.
pub async fn list(store: &Store, now: i64) -> Result<Vec<BanView>, StoreError> {
    Ok(store
        .sip_bans(now)
        .await?
        .into_iter()
        .map(|r| BanView {
            address: r.ip,
            reason: r.reason,
            created_at: rfc3339(r.created_at),
            expires_at: rfc3339(r.expires_at),
        })
        .collect())
}

/// The ban key an admin's text (`192.0.2.7`, `2001:db8::5`, `2001:db8::/64`) names.
pub fn key_of(address: &str) -> Result<String, BanError> {
    parse_ban_key(address).ok_or_else(|| BanError::BadAddress(address.to_string()))
}

/// What [`lift`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifted {
    /// The ban key asked for; `None` when every ban was lifted.
    pub key: Option<String>,
    /// How many bans went (0 when the address was not banned).
    pub count: u64,
}

/// Lifts the ban covering `address`, or every ban when `None` (audited as `sip.ban.rm`, also
/// when there was nothing to lift: the admin's intent is what the log keeps).
pub async fn lift(store: &Store, actor: &str, address: Option<&str>) -> Result<Lifted, BanError> {
    let key = address.map(key_of).transpose()?;
    let count = store.delete_sip_bans(key.as_deref()).await?;
    store.tell(crate::store::changes::Change::Bans).await;
    let target = key.as_deref().unwrap_or("all");
    store.audit(actor, "sip.ban.rm", target, "").await?;
    Ok(Lifted { key, count })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_name_their_ban_key() {
        assert_eq!(key_of("2001:db8:1:2::9").unwrap(), "2001:db8:1:2::/64");
        assert_eq!(key_of("::ffff:192.0.2.7").unwrap(), "192.0.2.7");
        let e = key_of("192.0.2.0/24").unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"192.0.2.0/24\" is not an IP address (IPv6 bans may be given as PREFIX/64)"
        );
    }
}
