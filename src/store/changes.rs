//! The change feed between nodes sharing a PostgreSQL database: a committed change that some
//! node may hold in a cache is announced with `NOTIFY`, and every node's listener drops what
//! it names. On SQLite (one host) announcing is a no-op; the auth stamp tells the local daemon.
//!
//! A node trusts its caches only while its listener is connected, since a notification sent
//! while it was away is lost: when the connection drops, [`Store::caches_trusted`] turns false
//! (every check reads the database) until the listener is back and everything cached was
//! dropped. A dead connection that the socket does not report (a network partition) is found
//! by the node's own heartbeat: it notifies itself every [`HEARTBEAT`] and treats a heartbeat
//! not heard within [`HEARTBEAT_DEADLINE`] as a lost connection.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Backend, Store, StoreError};

/// The PostgreSQL channel every node listens on.
pub const CHANNEL: &str = "pbxguard_changes";
/// How often a node checks its own listener end to end.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// A heartbeat not heard back within this is a lost listener.
pub const HEARTBEAT_DEADLINE: Duration = Duration::from_secs(3);
/// NOTIFY payloads are below 8000 bytes; ours are far shorter (ids are 32 hex characters).
const MAX_PAYLOAD: usize = 512;
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A listener connection that lasted this long was a healthy one.
const MIN_HEALTHY: Duration = Duration::from_secs(10);

/// A committed change that caches may hold a stale copy of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// One session ended (logout, revocation).
    Session(String),
    /// Any number of sessions ended, or users changed (level, disabled, password, MFA).
    Sessions,
    /// Signing keys changed (JWT or link keys): reload them and drop what depends on them.
    Keys,
    /// One recording link was revoked.
    Link(String),
    /// Links were revoked in bulk.
    Links,
    /// SIP bans changed.
    Bans,
    /// AMI clients changed.
    AmiClients,
    /// SIP credentials changed.
    SipCredentials,
    /// The MFA policy or an exemption changed.
    MfaPolicy,
    /// Runtime security settings changed: every node re-reads them.
    Settings,
    /// A heartbeat of node `0`: only that node acts on it.
    Heartbeat(String),
}

/// Whether an id may travel in a payload: what the store's ids are made of.
fn plain(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Change {
    pub fn encode(&self) -> String {
        match self {
            Change::Session(id) => format!("session:{id}"),
            Change::Sessions => "sessions".into(),
            Change::Keys => "keys".into(),
            Change::Link(id) => format!("link:{id}"),
            Change::Links => "links".into(),
            Change::Bans => "bans".into(),
            Change::AmiClients => "ami_clients".into(),
            Change::SipCredentials => "sip_credentials".into(),
            Change::MfaPolicy => "mfa_policy".into(),
            Change::Settings => "settings".into(),
            Change::Heartbeat(node) => format!("heartbeat:{node}"),
        }
    }

    /// Strict: anything else (another version's change, a hand-made NOTIFY) is `None`, which
    /// the listener treats as "drop everything": unknown news is never ignored.
    pub fn decode(payload: &str) -> Option<Change> {
        if payload.len() > MAX_PAYLOAD {
            return None;
        }
        let (kind, arg) = match payload.split_once(':') {
            Some((kind, arg)) if plain(arg) => (kind, Some(arg)),
            Some(_) => return None,
            None => (payload, None),
        };
        Some(match (kind, arg) {
            ("session", Some(id)) => Change::Session(id.to_string()),
            ("link", Some(id)) => Change::Link(id.to_string()),
            ("heartbeat", Some(node)) => Change::Heartbeat(node.to_string()),
            ("sessions", None) => Change::Sessions,
            ("keys", None) => Change::Keys,
            ("links", None) => Change::Links,
            ("bans", None) => Change::Bans,
            ("ami_clients", None) => Change::AmiClients,
            ("sip_credentials", None) => Change::SipCredentials,
            ("mfa_policy", None) => Change::MfaPolicy,
            ("settings", None) => Change::Settings,
            _ => return None,
        })
    }
}

/// What the listener tells the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// Another node (or this one) committed this change.
    Change(Change),
    /// Notifications may have been missed (the listener just (re)connected, or a payload was
    /// not understood): drop every cache and reload the keys.
    Everything,
}

/// Whether the caches may be trusted: on SQLite always; on PostgreSQL while the listener is
/// connected and has resynchronised.
#[derive(Debug)]
pub(super) struct Coherence {
    trusted: AtomicBool,
}

impl Coherence {
    pub(super) fn new(trusted: bool) -> Coherence {
        Coherence {
            trusted: AtomicBool::new(trusted),
        }
    }
}

impl Store {
    /// Whether cached sessions, links and keys can be used without asking the database.
    pub fn caches_trusted(&self) -> bool {
        self.coherence.trusted.load(Ordering::Acquire)
    }

    fn set_trusted(&self, trusted: bool) {
        let was = self.coherence.trusted.swap(trusted, Ordering::AcqRel);
        if was && !trusted {
            warn!("lost the database's change notifications: every check reads the database until they are back");
        } else if !was && trusted {
            info!("following the database's change notifications: caches in use");
        }
    }

    /// Whether several nodes may share this database (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// Tells every node that `change` was committed (after the commit: a node must not drop a
    /// cache entry and read the old row back). A no-op on SQLite.
    pub async fn announce(&self, change: &Change) -> Result<(), StoreError> {
        if let Backend::Postgres(pool) = &self.backend {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(change.encode())
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    /// [`Store::announce`] for a change no node caches without a periodic refresh (bans, AMI
    /// clients, SIP credentials, the MFA policy): a failure is logged, not returned, as the
    /// change itself is committed and reaches every node by that refresh anyway.
    pub async fn tell(&self, change: Change) {
        if let Err(e) = self.announce(&change).await {
            warn!(error = %e, change = %change.encode(), "change not announced to the other nodes");
        }
    }

    /// Follows the change feed until `stop`, calling `heard` for each change, and
    /// [`Heard::Everything`] each time the listener (re)connects. Reconnects by itself. Returns
    /// at once on SQLite.
    pub async fn follow_changes<F, Fut>(&self, node: &str, heard: F, stop: CancellationToken)
    where
        F: Fn(Heard) -> Fut,
        Fut: Future<Output = ()>,
    {
        let Backend::Postgres(pool) = &self.backend else {
            return;
        };
        // Its own pool: the listener holds its connection for good and must not take one of
        // the request pool's. Two: a listener given up on a dead connection still holds its
        // one while it closes, and the next one must not wait for that.
        let options = (*pool.connect_options()).clone();
        let listen_pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(super::ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        let mut backoff = Duration::from_millis(100);
        loop {
            if stop.is_cancelled() {
                break;
            }
            let began = tokio::time::Instant::now();
            match self.listen_once(&listen_pool, node, &heard, &stop).await {
                // Only a connection that lived a while resets the backoff, so that one that
                // keeps failing at once does not reconnect (and drop every cache) ten times
                // a second.
                Ok(()) if began.elapsed() >= MIN_HEALTHY => backoff = Duration::from_millis(100),
                Ok(()) => {}
                Err(e) => debug!(error = %e, "change listener: not connected"),
            }
            self.set_trusted(false);
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        listen_pool.close().await;
    }

    /// One connection's life: LISTEN, resynchronise, relay notifications; returns when the
    /// connection is lost, a heartbeat goes unanswered, or `stop`.
    async fn listen_once<F, Fut>(
        &self,
        pool: &PgPool,
        node: &str,
        heard: &F,
        stop: &CancellationToken,
    ) -> Result<(), StoreError>
    where
        F: Fn(Heard) -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.eager_reconnect(false);
        listener.listen(CHANNEL).await?;
        // Listening first, then dropping the caches: a change committed in between is either
        // in the dropped state or heard.
        heard(Heard::Everything).await;
        self.set_trusted(true);
        let mine = Change::Heartbeat(node.to_string());
        let mut beat = tokio::time::interval(HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut due: Option<tokio::time::Instant> = None;
        loop {
            let deadline = due.map(|d| d + HEARTBEAT_DEADLINE);
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = beat.tick(), if due.is_none() => {
                    due = Some(tokio::time::Instant::now());
                    // On the listener's own connection (notifications arriving meanwhile are
                    // buffered), so a busy request pool cannot fail it.
                    let sent = tokio::time::timeout(
                        HEARTBEAT_DEADLINE,
                        sqlx::query("SELECT pg_notify($1, $2)")
                            .bind(CHANNEL)
                            .bind(mine.encode())
                            .execute(&mut listener),
                    )
                    .await;
                    if !matches!(sent, Ok(Ok(_))) {
                        debug!("change listener heartbeat not sent");
                        return Ok(());
                    }
                }
                _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await },
                    if deadline.is_some() => {
                    debug!("change listener heartbeat not heard back in time");
                    return Ok(());
                }
                n = listener.try_recv() => match n? {
                    None => return Ok(()),
                    Some(n) => match Change::decode(n.payload()) {
                        Some(c) if c == mine => due = None,
                        Some(Change::Heartbeat(_)) => {}
                        Some(c) => heard(Heard::Change(c)).await,
                        None => {
                            warn!(payload_len = n.payload().len(), "change notification not understood; dropping every cache");
                            heard(Heard::Everything).await;
                        }
                    },
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip_and_junk_is_refused() {
        for c in [
            Change::Session("0123abcd".into()),
            Change::Sessions,
            Change::Keys,
            Change::Link("ff00".into()),
            Change::Links,
            Change::Bans,
            Change::AmiClients,
            Change::SipCredentials,
            Change::MfaPolicy,
            Change::Settings,
            Change::Heartbeat("pbx-a.example".into()),
        ] {
            assert_eq!(Change::decode(&c.encode()), Some(c));
        }
        for junk in [
            "",
            "session",
            "session:",
            "session:a b",
            "sessions:x",
            "keys:",
            "nonsense",
            "link:ü",
            &format!("session:{}", "a".repeat(600)),
        ] {
            assert_eq!(Change::decode(junk), None, "{junk:?}");
        }
    }
}
