//! Rotating the link signing key (`recording rotate-key`). Links signed with earlier keys stay
//! valid until they expire; a key is deleted only once no valid link can use it. The running
//! daemon learns of the new key through the auth stamp.

use std::path::Path;
use std::time::Duration;

use crate::auth::sessions::{announce, tell_nodes};
use crate::clock::{now_unix, rfc3339};
use crate::recordings::config::RecordingsConfig;
use crate::store::changes::Change;
use crate::store::Store;
use crate::vault::{Vault, SIGNING_KEY_LEN};

use super::token::LINK_KEY_PREFIX;
use super::RecordingError;

/// What [`rotate_key`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRotation {
    /// The id of the key that signs from now on.
    pub kid: String,
    /// Vault names of the keys deleted because no valid link can use them any more.
    pub retired: Vec<String>,
}

/// Starts signing links with a new key (audited as `recording.rotate_key`) and deletes the
/// keys no valid link can use (`recording.retire_key` each), then touches the auth stamp in
/// `stamp_dir` so the daemon loads the new key.
pub async fn rotate_key(
    store: &Store,
    vault: &Vault,
    cfg: &RecordingsConfig,
    stamp_dir: &Path,
    actor: &str,
) -> Result<KeyRotation, RecordingError> {
    let keys = vault.keys_under(LINK_KEY_PREFIX).await?;
    // Keys are ordered by creation second; make sure the new one is strictly the newest.
    if keys.iter().any(|k| k.created_at == rfc3339(now_unix())) {
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let kid = crate::ids::random_hex(4);
    let name = format!("{LINK_KEY_PREFIX}{kid}");
    if !vault.generate_if_absent(&name, SIGNING_KEY_LEN).await? {
        return Err(RecordingError::KeyExists(name));
    }
    store
        .audit(actor, "recording.rotate_key", &name, "")
        .await?;

    // A key is retired when it was replaced (by the next one) longer ago than the longest link
    // lifetime AND no unexpired link in the database names it — the second condition keeps
    // links minted under an earlier, longer max_link_ttl working.
    let max = i64::try_from(cfg.max_link_ttl.as_secs()).unwrap_or(i64::MAX);
    let now = now_unix();
    let mut retired = Vec::new();
    for pair in keys.windows(2) {
        let old = &pair[0].name;
        if store
            .live_links_signed_by(&old[LINK_KEY_PREFIX.len()..], now)
            .await?
            > 0
        {
            continue;
        }
        let replaced_at = time::OffsetDateTime::parse(
            &pair[1].created_at,
            &time::format_description::well_known::Rfc3339,
        )
        .map(|t| t.unix_timestamp())
        .unwrap_or(now);
        if now - replaced_at > max {
            vault
                .remove(old)
                .await
                .map_err(|source| RecordingError::RetireKey {
                    name: old.clone(),
                    source,
                })?;
            store.audit(actor, "recording.retire_key", old, "").await?;
            retired.push(old.clone());
        }
    }
    let here = announce(stamp_dir);
    tell_nodes(store, Change::Keys).await?;
    here?;
    Ok(KeyRotation { kid, retired })
}
