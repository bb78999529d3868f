//! Signed recording links and the recording server.
//!
//! A link is `public_url/rec/{token}` (see [`token`] for the format): a random link id under
//! an HMAC with the key id and expiry, while the path stays in the database. Serving checks the
//! signature before anything else, then the expiry (410), then the link row (revoked: 403),
//! then opens the file beneath `[recordings] root` again ([`paths`]) and answers with nginx's
//! Range and conditional rules ([`range`]), streaming the file ([`body`]). Every mint and every
//! request for a genuine link lands in the audit log ([`journal`]), never with the token.
//!
//! [`Root`] is the one place that decides what lies beneath `[recordings] root`; the daemon's
//! [`Recordings`] holds the root in force. Minting, listing and revoking links are operations
//! in [`links`], shared by the HTTP handlers and the CLI; [`keys`] rotates the link signing
//! key; [`serve`] is the feature's side of a download.

pub mod body;
pub mod config;
pub mod keys;
pub mod links;
pub mod paths;
pub mod range;
pub mod serve;
pub mod token;

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;

use crate::auth::sessions::StampError;
use crate::journal;
use crate::store::{LinkRow, Store, StoreError};
use crate::vault::{Vault, VaultError};
pub use links::{mint, Minted, Minter, Minting};
pub use paths::{PathError, Root};
pub use token::{LinkKeys, TokenError};

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("the link lifetime must be more than zero")]
    TtlZero,
    #[error("the link lifetime {asked} is longer than [recordings] max_link_ttl ({max})")]
    TtlTooLong { asked: String, max: String },
    #[error("links need [http] public_url in the configuration")]
    NoPublicUrl,
    #[error("no node named {0:?} has announced a public_url on this database")]
    UnknownNode(String),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Stamp(#[from] StampError),
    #[error("no such link: {0}")]
    NoSuchLink(String),
    #[error("name the link by its id (32 hex characters), its token or its URL")]
    NotALink,
    #[error("a link key named {0} already exists; run the command again")]
    KeyExists(String),
    #[error("deleting the retired link key {name}")]
    RetireKey {
        name: String,
        #[source]
        source: VaultError,
    },
}

/// The daemon's recording state: the recordings folder and the link keys (both swapped on
/// reload, the keys also when another process rotates them) and the download log.
#[derive(Debug)]
pub struct Recordings {
    /// `[recordings] root` in force: ask [`Recordings::root`].
    root: ArcSwap<Root>,
    pub keys: ArcSwap<LinkKeys>,
    pub journal: journal::Journal,
    /// Lets an unknown key id look for new keys at most once a second, so that a flood of
    /// made-up key ids cannot turn into disk reads.
    pub key_sync: SyncGate,
    /// Link rows by id, so a download does not query the database; dropped whenever the auth
    /// stamp says another process changed something (a CLI revocation), and per entry when the
    /// API revokes.
    pub links: LinkCache,
}

/// Entries kept at most; the cache is emptied wholesale beyond (one entry per live link that
/// was downloaded, so only a very busy host ever gets there).
const MAX_CACHED_LINKS: usize = 100_000;

#[derive(Debug, Default)]
pub struct LinkCache(std::sync::Mutex<CacheInner>);

#[derive(Debug, Default)]
pub struct CacheInner {
    map: std::collections::HashMap<String, Arc<LinkRow>>,
    /// Bumped by every forget and clear: a row read from the database before a revocation
    /// must not be cached after it.
    generation: u64,
}

impl LinkCache {
    pub fn get(&self, id: &str) -> Option<Arc<LinkRow>> {
        self.0.lock().ok()?.map.get(id).cloned()
    }

    /// Call before reading a row from the database; pass the value to [`LinkCache::insert`].
    pub fn generation(&self) -> u64 {
        self.0.lock().map(|c| c.generation).unwrap_or(u64::MAX)
    }

    /// Caches `row` unless something was revoked since `generation` was taken.
    pub fn insert(&self, row: Arc<LinkRow>, generation: u64) {
        if let Ok(mut c) = self.0.lock() {
            if c.generation != generation {
                return;
            }
            if c.map.len() >= MAX_CACHED_LINKS {
                c.map.clear();
            }
            c.map.insert(row.id.clone(), row);
        }
    }

    pub fn forget(&self, id: &str) {
        if let Ok(mut c) = self.0.lock() {
            c.map.remove(id);
            c.generation += 1;
        }
    }

    pub fn clear(&self) {
        if let Ok(mut c) = self.0.lock() {
            c.map.clear();
            c.generation += 1;
        }
    }
}

/// At most one pass per second.
#[derive(Debug, Default)]
pub struct SyncGate(AtomicI64);

impl SyncGate {
    pub fn allow(&self, now: i64) -> bool {
        let last = self.0.load(Ordering::Relaxed);
        now > last
            && self
                .0
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

impl Recordings {
    /// Loads the keys and starts the download log writer (needs a runtime); `overflow` counts
    /// download rows that could not be queued.
    pub async fn start(
        vault: &Vault,
        store: Store,
        overflow: prometheus_client::metrics::counter::Counter,
        root: Root,
    ) -> Result<Recordings, VaultError> {
        root.warn_unless_folder();
        Ok(Recordings {
            root: ArcSwap::from_pointee(root),
            keys: ArcSwap::from_pointee(LinkKeys::load(vault).await?),
            journal: journal::Journal::start(store, overflow),
            key_sync: SyncGate::default(),
            links: LinkCache::default(),
        })
    }

    pub async fn reload_keys(&self, vault: &Vault) -> Result<(), VaultError> {
        self.keys.store(Arc::new(LinkKeys::load(vault).await?));
        Ok(())
    }

    /// The recordings folder in force.
    pub fn root(&self) -> Arc<Root> {
        self.root.load_full()
    }

    /// A reload's `[recordings] root`.
    pub fn set_root(&self, root: Root) {
        root.warn_unless_folder();
        self.root.store(Arc::new(root));
    }
}

/// The link an admin names: its id (32 hex), its token, or its whole URL.
pub fn link_id_from(reference: &str) -> Option<String> {
    let r = reference.trim();
    if let Some(id) = token::parse_link_id(r) {
        return Some(token::hex(&id));
    }
    let tail = r
        .split(['?', '#'])
        .next()
        .unwrap_or(r)
        .rsplit('/')
        .next()
        .unwrap_or(r);
    token::decode(tail).ok().map(|l| l.id_hex())
}

/// `Content-Type` by extension, for the formats Asterisk records in.
pub fn content_type(path: &str) -> &'static str {
    let ext = Path::new(path)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        // `wav49` recordings are GSM in a WAV container, named .WAV.
        "wav" => "audio/wav",
        "gsm" => "audio/x-gsm",
        "mp3" => "audio/mpeg",
        "ogg" | "oga" | "opus" => "audio/ogg",
        "flac" => "audio/flac",
        _ => "application/octet-stream",
    }
}

/// `attachment; filename="…"` with the file's own name reduced to characters that need no
/// quoting anywhere (the name is only offered for saving; it never appears in a URL).
pub fn disposition(path: &str) -> String {
    let name = path.rsplit('/').next().unwrap_or(path);
    let mut safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe.trim_matches('.').is_empty() {
        safe = "recording".to_string();
    }
    format!("attachment; filename=\"{safe}\"")
}

/// The body of a multi-range answer and its length, laid out as nginx does: for each range
/// `CRLF--B CRLF Content-Type: T CRLF Content-Range: bytes s-e/len CRLF CRLF <data>`, then
/// `CRLF--B-- CRLF`.
pub fn multipart(
    ranges: &[(u64, u64)],
    len: u64,
    content_type: &str,
    boundary: &str,
) -> (Vec<body::Part>, u64) {
    let mut parts = Vec::with_capacity(ranges.len() * 2 + 1);
    let mut total = 0u64;
    for &(start, end) in ranges {
        let head = format!(
            "\r\n--{boundary}\r\nContent-Type: {content_type}\r\nContent-Range: bytes {start}-{}/{len}\r\n\r\n",
            end - 1
        );
        total += head.len() as u64 + (end - start);
        parts.push(body::Part::Bytes(Bytes::from(head)));
        parts.push(body::Part::File {
            offset: start,
            len: end - start,
        });
    }
    let tail = format!("\r\n--{boundary}--\r\n");
    total += tail.len() as u64;
    parts.push(body::Part::Bytes(Bytes::from(tail)));
    (parts, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_and_names() {
        assert_eq!(content_type("2026/a.wav"), "audio/wav");
        assert_eq!(content_type("a.WAV"), "audio/wav");
        assert_eq!(content_type("a.gsm"), "audio/x-gsm");
        assert_eq!(content_type("a.opus"), "audio/ogg");
        assert_eq!(content_type("a"), "application/octet-stream");
        assert_eq!(
            disposition("2026/11/29/20261129-101500_5551234567_agent1-all.wav"),
            "attachment; filename=\"20261129-101500_5551234567_agent1-all.wav\""
        );
        assert_eq!(
            disposition("x/a\"b;c é.wav"),
            "attachment; filename=\"a_b_c__.wav\""
        );
        assert_eq!(disposition(".."), "attachment; filename=\"recording\"");
    }

    #[test]
    fn multipart_layout_and_length() {
        let (parts, total) = multipart(&[(0, 2), (8, 10)], 10, "audio/wav", "B");
        let mut text = Vec::new();
        for p in &parts {
            match p {
                body::Part::Bytes(b) => text.extend_from_slice(b),
                body::Part::File { offset, len } => {
                    text.extend(std::iter::repeat_n(b'x', *len as usize));
                    assert!(*offset == 0 || *offset == 8);
                }
            }
        }
        let want = "\r\n--B\r\nContent-Type: audio/wav\r\nContent-Range: bytes 0-1/10\r\n\r\nxx\
                    \r\n--B\r\nContent-Type: audio/wav\r\nContent-Range: bytes 8-9/10\r\n\r\nxx\
                    \r\n--B--\r\n";
        assert_eq!(String::from_utf8(text).unwrap(), want);
        assert_eq!(total, want.len() as u64);
    }

    #[test]
    fn admins_name_links_by_id_token_or_url() {
        let keys = LinkKeys::from_keys(&[("01020304".to_string(), &[3u8; 32][..])]);
        let id = [0xabu8; 16];
        let t = keys.mint(&id, 99).unwrap();
        let hex = token::hex(&id);
        assert_eq!(link_id_from(&hex).as_deref(), Some(hex.as_str()));
        assert_eq!(link_id_from(&t).as_deref(), Some(hex.as_str()));
        assert_eq!(
            link_id_from(&format!("https://pbx.example.com:8443/rec/{t}")).as_deref(),
            Some(hex.as_str())
        );
        assert_eq!(link_id_from("https://pbx/rec/nonsense"), None);
    }

    fn row(id: &str) -> Arc<LinkRow> {
        Arc::new(LinkRow {
            id: id.into(),
            path: "a.wav".into(),
            key_id: "k".into(),
            minted_by: "x".into(),
            minted_ip: String::new(),
            created_at: 0,
            expires_at: 10,
            revoked_at: None,
            revoked_by: None,
            node: None,
        })
    }

    #[test]
    fn a_row_read_before_a_revocation_is_not_cached_after_it() {
        let cache = LinkCache::default();
        let before = cache.generation();
        cache.forget("a"); // the revocation lands while the row is read
        cache.insert(row("a"), before);
        assert!(cache.get("a").is_none());
        let now = cache.generation();
        cache.insert(row("a"), now);
        assert!(cache.get("a").is_some());
        cache.clear();
        assert!(cache.get("a").is_none());
    }

    #[test]
    fn key_sync_at_most_once_a_second() {
        let gate = SyncGate::default();
        assert!(gate.allow(100));
        assert!(!gate.allow(100));
        assert!(gate.allow(101));
    }
}
