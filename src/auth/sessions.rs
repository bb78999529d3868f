//! Server-side session checks on every request, fast and revocable at once.
//!
//! The database is the truth; the daemon keeps a cache of sessions it has looked up so the
//! forward-auth check costs no SQL. Any process that changes users, sessions or signing keys
//! (the CLI runs separately, against the same database) commits first and then replaces the
//! *auth stamp* file in `state_dir`. The check `stat`s that file — one syscall — and drops the
//! whole cache when it changed, so a revocation applies from the very next request.
//!
//! `last_seen` is kept in memory on every check and written back at most once per
//! [`TOUCH_INTERVAL`]; after a cache drop the database value is at most that stale, which is
//! the accuracy of the idle expiry.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::config::AuthConfig;
use crate::store::changes::Change;
use crate::store::{SessionRow, Store, StoreError};

use super::jwt::Claims;

/// How often `last_seen` is written back per session.
pub const TOUCH_INTERVAL: i64 = 60;
/// The cache is dropped wholesale beyond this many entries (an attacker cannot make it grow:
/// only sessions that exist in the database get cached).
const MAX_CACHED: usize = 100_000;
pub const STAMP_FILE: &str = "auth.stamp";
/// `[daemon] store_outage_grace`'s default, in seconds.
const DEFAULT_OUTAGE_GRACE: i64 = 30;
/// How long the check waits for the database before it answers from the outage grace: the
/// web tier's forward-auth request must be answered within 3 s.
const LOOKUP_TIMEOUT: Duration = Duration::from_millis(2500);

/// Why a token's session is not acceptable. The check answers 401 for all of them; the
/// distinction is for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Deny {
    #[error("no such session")]
    Unknown,
    #[error("session revoked")]
    Revoked,
    #[error("session past its maximum lifetime")]
    Expired,
    #[error("session idle for too long")]
    Idle,
    #[error("user level changed or user disabled")]
    UserChanged,
    #[error("token does not match its session")]
    Mismatch,
}

#[derive(Debug, Clone)]
struct Cached {
    id: Arc<str>,
    user: Arc<str>,
    level: u8,
    created_at: i64,
    expires_at: i64,
    last_seen: i64,
    last_written: i64,
    /// When the database (or, with trusted caches, the cache) last confirmed the session:
    /// what a database outage's grace counts from.
    verified_at: i64,
}

/// An accepted session, as handlers need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: Arc<str>,
    pub user: Arc<str>,
    pub level: u8,
    pub created_at: i64,
    pub expires_at: i64,
}

/// The outcome of a check: the session, and whether `last_seen` is due to be written back.
#[derive(Debug)]
pub struct Checked {
    pub session: Session,
    pub touch: Option<i64>,
}

type StampId = (u64, i64, i64);

/// Replaces the auth stamp (new inode every time, so the change is always visible).
pub fn touch_stamp(state_dir: &Path) -> std::io::Result<()> {
    let tmp = state_dir.join(format!("{STAMP_FILE}.{}", crate::ids::random_hex(6)));
    std::fs::write(&tmp, crate::ids::random_hex(16))?;
    std::fs::rename(&tmp, state_dir.join(STAMP_FILE))
}

/// The change is in the database, but the running daemon or the other nodes were not told.
#[derive(Debug, thiserror::Error)]
pub enum StampError {
    #[error("the change is stored, but the daemon could not be told: cannot write {}", .path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Nodes whose change listener is connected drop their caches when it reconnects; until
    /// then they may act on the old state.
    #[error("the change is stored, but the other nodes could not be told: {0}")]
    Nodes(#[source] StoreError),
}

/// Tells the daemon, from another process, that auth state changed: it drops its caches and
/// reloads its keys on its next request.
pub fn announce(state_dir: &Path) -> Result<(), StampError> {
    touch_stamp(state_dir).map_err(|source| StampError::File {
        path: state_dir.join(STAMP_FILE),
        source,
    })
}

/// Tells the nodes sharing the database (PostgreSQL) about `change`; a no-op on SQLite.
pub async fn tell_nodes(store: &Store, change: Change) -> Result<(), StampError> {
    store.announce(&change).await.map_err(StampError::Nodes)
}

/// Where a change that may end sessions has to be made known so that it applies at once.
#[derive(Debug, Clone, Copy)]
pub enum Notice<'a> {
    /// The change is made inside the daemon: its own cache drops what changed.
    Daemon(&'a Sessions),
    /// The change is made by another process (the CLI): the auth stamp in this state folder
    /// tells the daemon.
    Stamp(&'a Path),
}

/// The other nodes sharing a PostgreSQL database learn of ended sessions from the store
/// itself: the write that ends them announces it with its commit (see `store::changes`).
impl Notice<'_> {
    /// One session ended.
    pub async fn session_ended(self, _store: &Store, id: &str) -> Result<(), StampError> {
        self.local(Some(id))
    }

    /// Any number of sessions ended (a user's, everyone's, or users changed).
    pub async fn sessions_ended(self, _store: &Store) -> Result<(), StampError> {
        self.local(None)
    }

    /// Signing keys changed: every node reloads them (announced here, after the vault's
    /// commit; both are attempted even if the first fails).
    pub async fn keys_changed(self, store: &Store) -> Result<(), StampError> {
        let here = self.local(None);
        let there = tell_nodes(store, Change::Keys).await;
        here.and(there)
    }

    fn local(self, id: Option<&str>) -> Result<(), StampError> {
        match (self, id) {
            (Notice::Daemon(sessions), Some(id)) => sessions.forget(id),
            (Notice::Daemon(sessions), None) => sessions.clear(),
            (Notice::Stamp(dir), _) => announce(dir)?,
        }
        Ok(())
    }
}

fn read_stamp(path: &Path) -> Option<StampId> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.ino(), m.mtime(), m.mtime_nsec()))
}

#[derive(Debug)]
pub struct Sessions {
    stamp_path: PathBuf,
    inner: Mutex<Inner>,
    /// Woken whenever sessions may have ended (logout, revocation, another process's change),
    /// so that the SIP edge closes their WebSockets at once instead of at its next check.
    ended: tokio::sync::Notify,
    /// `[daemon] store_outage_grace` in seconds (see [`Sessions::set_outage_grace`]).
    outage_grace: AtomicI64,
    /// When a lookup last found the database unavailable (unix seconds; 0: never).
    last_failure: AtomicI64,
}

#[derive(Debug, Default)]
struct Inner {
    stamp: Option<StampId>,
    map: HashMap<String, Cached>,
    /// Bumped whenever entries are dropped. A lookup that read the database before a drop must
    /// not put its (possibly revoked-since) row back afterwards.
    generation: u64,
}

impl Sessions {
    pub fn new(state_dir: &Path) -> Sessions {
        let stamp_path = state_dir.join(STAMP_FILE);
        Sessions {
            inner: Mutex::new(Inner {
                stamp: read_stamp(&stamp_path),
                map: HashMap::new(),
                generation: 0,
            }),
            stamp_path,
            ended: tokio::sync::Notify::new(),
            outage_grace: AtomicI64::new(DEFAULT_OUTAGE_GRACE),
            last_failure: AtomicI64::new(0),
        }
    }

    /// Resolves after sessions may have ended (see the field).
    pub async fn may_have_ended(&self) {
        self.ended.notified().await
    }

    /// Drops the cache if another process changed auth state; returns whether it did.
    pub fn sync(&self) -> bool {
        let now = read_stamp(&self.stamp_path);
        let Ok(mut inner) = self.inner.lock() else {
            return false;
        };
        if inner.stamp != now {
            inner.stamp = now;
            inner.map.clear();
            inner.generation += 1;
            self.ended.notify_one();
            true
        } else {
            false
        }
    }

    pub fn clear(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.map.clear();
            inner.generation += 1;
        }
        self.ended.notify_one();
    }

    pub fn forget(&self, id: &str) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.map.remove(id);
            inner.generation += 1;
        }
        self.ended.notify_one();
    }

    fn generation(&self) -> u64 {
        self.inner.lock().map(|i| i.generation).unwrap_or(0)
    }

    /// While the database is unreachable, sessions verified at most this long ago are
    /// still accepted (zero: none).
    pub fn set_outage_grace(&self, grace: Duration) {
        let secs = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
        self.outage_grace.store(secs, Ordering::Relaxed);
    }

    /// Accepts `claims` if their session is live; `Ok(Err(deny))` when it is not.
    ///
    /// With trusted caches (see [`Store::caches_trusted`]) a cached session is answered
    /// without SQL. Otherwise every check reads the database; when the database cannot answer
    /// within [`LOOKUP_TIMEOUT`], a session this node verified within the outage grace is
    /// still accepted, and anything else is the database's error.
    pub async fn check(
        &self,
        store: &Store,
        cfg: &AuthConfig,
        claims: &Claims,
        now: i64,
    ) -> Result<Result<Checked, Deny>, StoreError> {
        let idle = cfg.session_idle_timeout.as_secs() as i64;
        if store.caches_trusted() {
            if let Some(answer) = self.check_cached(claims, idle, now, Use::Trusted) {
                return Ok(answer);
            }
        }
        // In an outage every lookup would wait for the pool's timeout first: once one failed,
        // the next second's checks answer from the grace at once.
        if self.failed_recently() {
            return self.in_outage(claims, idle, now, StoreError::TimedOut);
        }
        let generation = self.generation();
        let looked_up = match tokio::time::timeout(LOOKUP_TIMEOUT, store.session(&claims.sid)).await
        {
            Ok(Ok(row)) => row,
            Ok(Err(e)) if e.is_unavailable() => {
                self.note_failure();
                return self.in_outage(claims, idle, now, e);
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                self.note_failure();
                return self.in_outage(claims, idle, now, StoreError::TimedOut);
            }
        };
        let Some(row) = looked_up else {
            self.drop_entry(&claims.sid);
            return Ok(Err(Deny::Unknown));
        };
        let mut cached = match admit(&row) {
            Ok(c) => c,
            Err(d) => {
                self.drop_entry(&claims.sid);
                return Ok(Err(d));
            }
        };
        let kept = match self.inner.lock() {
            Ok(mut inner) if inner.generation == generation => {
                if inner.map.len() >= MAX_CACHED {
                    inner.map.clear();
                    inner.generation += 1;
                }
                inner
                    .map
                    .entry(claims.sid.clone())
                    .or_insert(cached.clone());
                true
            }
            _ => false,
        };
        if !kept {
            // Entries were dropped while we read: this row is the database's answer for now,
            // but it is not cached (a revocation may have committed since), and the check is
            // not repeated, so that it stays within its time.
            return Ok(decide(&mut cached, claims, idle, now));
        }
        Ok(self
            .check_cached(claims, idle, now, Use::Verified)
            .unwrap_or(Err(Deny::Unknown)))
    }

    /// The database cannot answer: a session verified within the grace is accepted (and
    /// counted in the log), anything else gets the database's error.
    fn in_outage(
        &self,
        claims: &Claims,
        idle: i64,
        now: i64,
        error: StoreError,
    ) -> Result<Result<Checked, Deny>, StoreError> {
        let grace = self.outage_grace.load(Ordering::Relaxed);
        match self.check_cached(claims, idle, now, Use::Grace(grace)) {
            Some(answer) => {
                tracing::debug!(session = %claims.sid, "database unavailable: session accepted within the outage grace");
                Ok(answer)
            }
            None => Err(error),
        }
    }

    fn note_failure(&self) {
        self.last_failure
            .store(crate::clock::now_unix(), Ordering::Relaxed);
    }

    fn failed_recently(&self) -> bool {
        let at = self.last_failure.load(Ordering::Relaxed);
        at != 0 && crate::clock::now_unix() - at < 1
    }

    fn drop_entry(&self, id: &str) {
        if let Ok(mut inner) = self.inner.lock() {
            if inner.map.remove(id).is_some() {
                inner.generation += 1;
            }
        }
    }

    /// The whole decision under one lock, without allocating beyond two reference counts;
    /// `None` when the session is not cached (or, in an outage, not verified recently enough).
    fn check_cached(
        &self,
        claims: &Claims,
        idle: i64,
        now: i64,
        how: Use,
    ) -> Option<Result<Checked, Deny>> {
        let mut inner = self.inner.lock().ok()?;
        let c = inner.map.get_mut(claims.sid.as_str())?;
        match how {
            Use::Trusted | Use::Verified => c.verified_at = now,
            // Whole seconds: "verified within the last N s" is a difference below N (zero:
            // never).
            Use::Grace(limit) if now.saturating_sub(c.verified_at) >= limit => return None,
            Use::Grace(_) => {}
        }
        Some(decide(c, claims, idle, now))
    }
}

/// The decision about a session entry at `now` (and its `last_seen` moved on).
fn decide(c: &mut Cached, claims: &Claims, idle: i64, now: i64) -> Result<Checked, Deny> {
    if *c.user != *claims.sub || c.level != claims.lvl {
        return Err(Deny::Mismatch);
    }
    if now >= c.expires_at {
        return Err(Deny::Expired);
    }
    if now - c.last_seen > idle {
        return Err(Deny::Idle);
    }
    c.last_seen = c.last_seen.max(now);
    let touch = (now - c.last_written >= TOUCH_INTERVAL).then_some(now);
    if let Some(t) = touch {
        c.last_written = t;
    }
    Ok(Checked {
        session: Session {
            id: c.id.clone(),
            user: c.user.clone(),
            level: c.level,
            created_at: c.created_at,
            expires_at: c.expires_at,
        },
        touch,
    })
}

/// How a cache entry is used.
#[derive(Debug, Clone, Copy)]
enum Use {
    /// The caches are coherent: the entry is as good as the database.
    Trusted,
    /// Just read from the database.
    Verified,
    /// The database is unreachable: only if verified less than this many seconds ago.
    Grace(i64),
}

/// A database row becomes a cache entry only when it is acceptable as a whole.
fn admit(row: &SessionRow) -> Result<Cached, Deny> {
    if row.revoked_at.is_some() {
        return Err(Deny::Revoked);
    }
    if row.user_disabled || row.level != row.user_level {
        return Err(Deny::UserChanged);
    }
    Ok(Cached {
        id: row.id.as_str().into(),
        user: row.user.as_str().into(),
        level: row.level,
        created_at: row.created_at,
        expires_at: row.expires_at,
        last_seen: row.last_seen,
        last_written: row.last_seen,
        verified_at: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sid: &str) -> Claims {
        Claims {
            sub: "alice".into(),
            lvl: 2,
            role: "agent".into(),
            sid: sid.into(),
            iat: 0,
            nbf: 0,
            exp: u64::MAX,
            iss: String::new(),
            aud: String::new(),
        }
    }

    /// A session verified at `at`, cached.
    fn cached(sessions: &Sessions, sid: &str, at: i64) {
        let mut inner = sessions.inner.lock().unwrap();
        inner.map.insert(
            sid.into(),
            Cached {
                id: sid.into(),
                user: "alice".into(),
                level: 2,
                created_at: at,
                expires_at: at + 28_800,
                last_seen: at,
                last_written: at,
                verified_at: at,
            },
        );
    }

    #[test]
    fn an_outage_accepts_only_sessions_verified_within_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let sessions = Sessions::new(dir.path());
        sessions.set_outage_grace(Duration::from_secs(30));
        cached(&sessions, "s1", 1_000);
        let c = claims("s1");
        let accepted = |now| {
            sessions
                .in_outage(&c, 3_600, now, StoreError::TimedOut)
                .is_ok_and(|r| r.is_ok())
        };
        assert!(accepted(1_000));
        assert!(accepted(1_029));
        assert!(!accepted(1_030), "30 s after the last verification");
        // Answering from the grace does not extend it.
        assert!(!accepted(1_031));
        // An unknown session gets the database's error, not a denial.
        assert!(sessions
            .in_outage(&claims("nope"), 3_600, 1_000, StoreError::TimedOut)
            .is_err());
    }

    #[test]
    fn a_zero_grace_fails_closed_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let sessions = Sessions::new(dir.path());
        sessions.set_outage_grace(Duration::ZERO);
        cached(&sessions, "s1", 1_000);
        assert!(sessions
            .in_outage(&claims("s1"), 3_600, 1_000, StoreError::TimedOut)
            .is_err());
    }
}
