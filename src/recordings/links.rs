//! Recording links as the API and the CLI manage them: minting, the admin's list, revocation.
//! Each use case is one operation here, so both write the same audit row and both make a
//! revocation known at once (see [`LinkNotice`]).

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::auth::sessions::announce;
use crate::clock::rfc3339;
use crate::recordings::config::RecordingsConfig;
use crate::store::{LinkFilter, LinkRow, Store};

use super::{link_id_from, token, LinkCache, LinkKeys, RecordingError, Root};

/// Largest page of the link list.
pub const MAX_LINKS_LIMIT: u32 = 1000;
pub const DEFAULT_LINKS_LIMIT: u32 = 100;

/// A freshly minted link.
#[derive(Debug, Clone)]
pub struct Minted {
    pub id: String,
    pub url: String,
    pub path: String,
    pub expires_at: i64,
}

/// Who asks for a link, for the audit log.
#[derive(Debug, Clone)]
pub struct Minter<'a> {
    pub name: &'a str,
    pub ip: &'a str,
}

/// What minting a link works with.
#[derive(Debug, Clone, Copy)]
pub struct Minting<'a> {
    pub store: &'a Store,
    pub keys: &'a LinkKeys,
    pub root: &'a Root,
    /// The `[recordings]` lifetimes (`link_ttl`, `max_link_ttl`).
    pub cfg: &'a RecordingsConfig,
    /// `[http] public_url`, the base of every link.
    pub public_url: Option<&'a str>,
}

/// Checks the path (normal form, beneath root, a regular file pbxguard can open), stores the
/// link (audited as `recording.link`) and returns its URL.
///
/// `node` names the node whose disk holds the file when it is not this one (several PBX hosts
/// on one database): the path is then checked for form only (the file is out of reach), the
/// node must have announced itself in the `nodes` table, and a download reaching any other
/// node is redirected to it.
pub async fn mint(
    m: Minting<'_>,
    input: &str,
    ttl: Option<Duration>,
    by: &Minter<'_>,
    node: Option<&str>,
) -> Result<Minted, RecordingError> {
    let ttl = ttl.unwrap_or(m.cfg.link_ttl);
    if ttl.as_secs() == 0 {
        return Err(RecordingError::TtlZero);
    }
    if ttl > m.cfg.max_link_ttl {
        return Err(RecordingError::TtlTooLong {
            asked: humantime::format_duration(ttl).to_string(),
            max: humantime::format_duration(m.cfg.max_link_ttl).to_string(),
        });
    }
    let base = m
        .public_url
        .map(|u| u.trim_end_matches('/').to_string())
        .filter(|u| !u.is_empty())
        .ok_or(RecordingError::NoPublicUrl)?;
    let own = m.store.node();
    let remote = node.filter(|n| Some(*n) != own);
    let path = match remote {
        None => m.root.check_file(input).await?,
        Some(name) => {
            let known = m.store.node_row(name).await?;
            if known.and_then(|n| n.public_url).is_none() {
                return Err(RecordingError::UnknownNode(name.to_string()));
            }
            m.root.normalise(input)?
        }
    };

    let mut id = [0u8; token::LINK_ID_LEN];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
    let now = crate::clock::now_unix();
    let expires_at = now.saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
    let token = m.keys.mint(&id, expires_at)?;
    let row = LinkRow {
        id: token::hex(&id),
        path: path.clone(),
        key_id: m.keys.signing_kid().unwrap_or_default(),
        minted_by: by.name.to_string(),
        minted_ip: by.ip.to_string(),
        created_at: now,
        expires_at,
        revoked_at: None,
        revoked_by: None,
        node: remote.or(own).map(str::to_string),
    };
    m.store.insert_link(&row).await?;
    let ip = if by.ip.is_empty() {
        String::new()
    } else {
        format!(" ip={}", by.ip)
    };
    let on = match remote {
        Some(name) => format!(" node={name}"),
        None => String::new(),
    };
    let detail = format!("link={}{ip}{on} expires_at={}", row.id, rfc3339(expires_at));
    m.store
        .audit(by.name, "recording.link", &path, &detail)
        .await?;
    Ok(Minted {
        id: row.id,
        url: format!("{base}/rec/{token}"),
        path,
        expires_at,
    })
}

/// A link as admins (API and `recording list --json`) see it.
#[derive(Debug, Serialize)]
pub struct LinkView {
    pub id: String,
    pub path: String,
    pub minted_by: String,
    pub minted_ip: String,
    pub created_at: String,
    pub expires_at: String,
    /// `active`, `expired` or `revoked`.
    pub state: &'static str,
    pub revoked_at: Option<String>,
    pub revoked_by: Option<String>,
    /// The node whose disk holds the file.
    pub node: Option<String>,
}

impl LinkView {
    pub fn new(row: &LinkRow, now: i64) -> LinkView {
        let state = if row.revoked_at.is_some() {
            "revoked"
        } else if now >= row.expires_at {
            "expired"
        } else {
            "active"
        };
        LinkView {
            id: row.id.clone(),
            path: row.path.clone(),
            minted_by: row.minted_by.clone(),
            minted_ip: row.minted_ip.clone(),
            created_at: rfc3339(row.created_at),
            expires_at: rfc3339(row.expires_at),
            state,
            revoked_at: row.revoked_at.map(rfc3339),
            revoked_by: row.revoked_by.clone(),
            node: row.node.clone(),
        }
    }
}

/// Which links to list.
#[derive(Debug, Clone, Copy)]
pub struct ListQuery<'a> {
    /// Only links to this recording (any spelling root accepts).
    pub path: Option<&'a str>,
    /// Include expired and revoked links.
    pub all: bool,
    /// At most this many (1 to [`MAX_LINKS_LIMIT`]; out of range is clamped).
    pub limit: u32,
}

/// Links, newest first.
pub async fn list(
    store: &Store,
    root: &Root,
    q: ListQuery<'_>,
    now: i64,
) -> Result<Vec<LinkView>, RecordingError> {
    let filter = LinkFilter {
        path: q.path.map(|p| root.normalise(p)).transpose()?,
        all: q.all,
        limit: q.limit.clamp(1, MAX_LINKS_LIMIT),
    };
    let rows = store.links(&filter, now).await?;
    Ok(rows.iter().map(|r| LinkView::new(r, now)).collect())
}

/// Where a revocation has to be made known so that downloads stop at once.
#[derive(Debug, Clone, Copy)]
pub enum LinkNotice<'a> {
    /// Revoked inside the daemon: its link cache drops the row.
    Daemon(&'a LinkCache),
    /// Revoked by another process (the CLI): the auth stamp in this state folder empties the
    /// daemon's cache.
    Stamp(&'a Path),
}

impl LinkNotice<'_> {
    /// Drops the link (or every link: `None`) here. The other nodes sharing a PostgreSQL
    /// database were told by the revocation's own commit (see `store::changes`).
    async fn revoked(self, id: Option<&str>) -> Result<(), RecordingError> {
        match (self, id) {
            (LinkNotice::Daemon(cache), Some(id)) => cache.forget(id),
            (LinkNotice::Daemon(cache), None) => cache.clear(),
            (LinkNotice::Stamp(dir), _) => announce(dir)?,
        }
        Ok(())
    }
}

/// What a revocation found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    pub id: String,
    /// False when the link was revoked already.
    pub now: bool,
}

/// Revokes the link named by its id, token or URL (audited as `recording.revoke`).
pub async fn revoke(
    store: &Store,
    notice: LinkNotice<'_>,
    actor: &str,
    reference: &str,
    now: i64,
) -> Result<Revoked, RecordingError> {
    let id = link_id_from(reference).ok_or(RecordingError::NotALink)?;
    let Some(row) = store.link(&id).await? else {
        return Err(RecordingError::NoSuchLink(id));
    };
    let revoked = store.revoke_link(&id, actor, now).await?;
    // Forgotten even when it was already revoked: another process may have revoked it while
    // this daemon still holds it in its cache. A committed revocation is audited even when
    // telling others about it failed.
    let told = notice.revoked(Some(&id)).await;
    if revoked {
        store
            .audit(actor, "recording.revoke", &row.path, &format!("link={id}"))
            .await?;
    }
    told?;
    Ok(Revoked { id, now: revoked })
}

/// Revokes every live link to a recording (audited as `recording.revoke`); its normal form and
/// the number of links revoked.
pub async fn revoke_path(
    store: &Store,
    root: &Root,
    notice: LinkNotice<'_>,
    actor: &str,
    path: &str,
    now: i64,
) -> Result<(String, u64), RecordingError> {
    let rel = root.normalise(path)?;
    let n = store.revoke_links_to(&rel, actor, now).await?;
    let told = notice.revoked(None).await;
    store
        .audit(actor, "recording.revoke", &rel, &format!("links={n}"))
        .await?;
    told?;
    Ok((rel, n))
}
