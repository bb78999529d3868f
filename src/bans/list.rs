//! The daemon's side of the ban list: imposes bans (through the store, so every node and the
//! kernel follow), keeps the in-memory copy its listeners consult per connection, counts the
//! offences that lead to a ban, and refuses to ban what must never be banned.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use ipnet::IpNet;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::active::Active;
use super::config::BansConfig;
use super::{never_banned, BanKey, Source};
use crate::clock::now_unix;
use crate::metrics::{Metrics, SourceLabels};
use crate::store::{BanRow, NewBan, Store, StoreError};

/// How often the daemon looks at the store's ban version (the CLI's changes; other nodes'
/// on SQLite-less setups arrive at once through the change feed as well).
pub const POLL: Duration = Duration::from_secs(1);
/// Offence counters kept at most per source; past this the stale ones go, and new addresses
/// go uncounted while it stays full (an address-spraying attacker cannot grow memory).
const MAX_TRACKED: usize = 65_536;
/// A ban imposed here but not read back from the store yet (a slow or failed write) is kept
/// this long by refreshes.
const PENDING_GRACE: Duration = Duration::from_secs(60);
/// Automatic bans (every source but feeds and admins) stop at this many bans in force.
pub const MAX_BANS: usize = 200_000;
/// How often rows that ended long ago are deleted.
const FORGET_EVERY: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum ImposeError {
    /// The address is on the never-banned list; the text says why.
    #[error("{0} is never banned: {1}")]
    NeverBanned(String, String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Bans in force as last read, plus what this process imposed since.
#[derive(Debug, Default)]
struct Copy {
    active: Active,
    /// (key, end, source) of every row in force: the firewall's elements and the gauges.
    rows: Vec<(BanKey, i64, Source)>,
}

struct Inner {
    store: Store,
    metrics: Metrics,
    node: String,
    config: ArcSwap<BansConfig>,
    /// Never banned besides loopback and `allow`: `[http] trusted_proxies`, the Asterisk
    /// pbxguard relays to and the addresses it relays from (set from the configuration).
    exempt: ArcSwap<Vec<IpNet>>,
    copy: RwLock<Copy>,
    pending: Mutex<HashMap<BanKey, (i64, Source, Instant)>>,
    strikes: Mutex<HashMap<Source, HashMap<BanKey, VecDeque<Instant>>>>,
    generation: watch::Sender<u64>,
    version: AtomicI64,
    /// One refresh at a time: an older snapshot must never replace a newer one.
    refreshing: tokio::sync::Mutex<()>,
    /// When the last "too many bans" warning was logged.
    full_warned: Mutex<Option<Instant>>,
}

/// The ban list as the daemon uses it. Cloning shares it.
#[derive(Clone)]
pub struct Bans(Arc<Inner>);

impl std::fmt::Debug for Bans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bans").finish_non_exhaustive()
    }
}

impl Bans {
    pub fn new(config: BansConfig, store: Store, metrics: Metrics, node: String) -> Bans {
        Bans(Arc::new(Inner {
            store,
            metrics,
            node,
            config: ArcSwap::from_pointee(config),
            exempt: ArcSwap::from_pointee(Vec::new()),
            copy: RwLock::default(),
            pending: Mutex::default(),
            strikes: Mutex::default(),
            generation: watch::channel(0).0,
            version: AtomicI64::new(-1),
            refreshing: tokio::sync::Mutex::new(()),
            full_warned: Mutex::new(None),
        }))
    }

    pub fn config(&self) -> Arc<BansConfig> {
        self.0.config.load_full()
    }

    /// A reload: new rules for the next offence, and the firewall reconciles at once.
    pub fn set_config(&self, config: BansConfig, exempt: Vec<IpNet>) {
        self.0.config.store(Arc::new(config));
        self.0.exempt.store(Arc::new(exempt));
        self.bump();
    }

    /// Why `key` must never be banned, if it must not.
    pub fn never_banned(&self, key: &BanKey) -> Option<String> {
        never_banned(key, &self.0.config.load().allow, &self.0.exempt.load())
    }

    /// Seconds left on the ban covering `ip` (never for an address that must not be banned).
    pub fn banned(&self, ip: IpAddr) -> Option<i64> {
        let now = now_unix();
        let until = {
            let copy = self.0.copy.read().unwrap_or_else(|e| e.into_inner());
            copy.active.lookup(ip, now)?
        };
        if self.never_banned(&BanKey::host(ip)).is_some() {
            return None;
        }
        Some(until - now)
    }

    /// Changes (a number that grows) whenever the bans in force may have changed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.generation.subscribe()
    }

    fn bump(&self) {
        self.0.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Bans `key` through the store and puts it in force here at once. A first ban lasts
    /// `base` (`[bans] duration` when `None`); an earlier one of this source on the address
    /// doubles it, up to `[bans] max_duration`.
    pub async fn impose(
        &self,
        key: BanKey,
        source: Source,
        reason: &str,
        base: Option<Duration>,
    ) -> Result<BanRow, ImposeError> {
        if let Some(why) = self.never_banned(&key) {
            return Err(ImposeError::NeverBanned(key.to_string(), why));
        }
        let config = self.0.config.load();
        let base = base.unwrap_or(config.duration).as_secs().max(1) as i64;
        let max = config.max_duration.as_secs() as i64;
        let address = key.to_string();
        let row = self
            .0
            .store
            .put_ban(&NewBan {
                address: &address,
                source: source.as_str(),
                reason,
                node: &self.0.node,
                now: now_unix(),
                base_secs: base,
                max_secs: max,
            })
            .await?;
        self.0
            .metrics
            .bans
            .get_or_create(&SourceLabels {
                source: source.as_str(),
            })
            .inc();
        {
            let mut copy = self.0.copy.write().unwrap_or_else(|e| e.into_inner());
            copy.active.insert(key, row.expires_at);
            copy.rows.push((key, row.expires_at, source));
        }
        // In the store now: the next refresh reads it back (or finds it lifted meanwhile).
        self.0
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        info!(address = %address, source = source.as_str(), reason, hits = row.hits, expires_at = row.expires_at, "banned");
        if let Err(e) = self
            .0
            .store
            .audit(
                source.as_str(),
                &format!("ban.{}", source.as_str()),
                &address,
                reason,
            )
            .await
        {
            debug!(error = %e, "auditing a ban failed");
        }
        self.bump();
        Ok(row)
    }

    /// [`Bans::impose`] from a hot path: `ip` is refused here from now on, and the store
    /// write (and with it the firewall and the other nodes) follows in the background.
    /// Returns false for an address that is never banned.
    pub fn impose_soon(
        &self,
        ip: IpAddr,
        source: Source,
        reason: &'static str,
        base: Option<Duration>,
    ) -> bool {
        let key = BanKey::host(ip);
        if let Some(why) = self.never_banned(&key) {
            debug!(address = %key, source = source.as_str(), why, "not banned");
            return false;
        }
        if self.full() {
            return false;
        }
        let until = now_unix() + base.unwrap_or(self.0.config.load().duration).as_secs() as i64;
        {
            let mut copy = self.0.copy.write().unwrap_or_else(|e| e.into_inner());
            copy.active.insert(key, until);
        }
        self.0
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (until, source, Instant::now()));
        self.bump();
        let bans = self.clone();
        tokio::spawn(async move {
            if let Err(e) = bans.impose(key, source, reason, base).await {
                warn!(address = %key, error = %e, "storing a ban failed; it holds on this node until the next refresh after {}s", PENDING_GRACE.as_secs());
            }
        });
        true
    }

    /// Whether the automatic bans in force reached [`MAX_BANS`] (spoofed sources must not
    /// grow the list, the store and the kernel's sets without bound); warns once a minute.
    fn full(&self) -> bool {
        let len = self
            .0
            .copy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .active
            .len();
        if len < MAX_BANS {
            return false;
        }
        let mut warned = self.0.full_warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
            *warned = Some(Instant::now());
            warn!(bans = len, "the ban list is full: new offenders are not banned until bans end (see [bans] allow and the sources in the list)");
        }
        true
    }

    /// Whether the list was read from the store at least once (the firewall waits for it:
    /// an empty copy must not empty the kernel's sets at start).
    pub fn loaded(&self) -> bool {
        self.0.version.load(Ordering::Acquire) >= 0
    }

    /// Counts one offence of `source` from `ip`; the `threshold`-th within `window` bans it.
    /// Returns whether this offence started a ban.
    pub fn strike(
        &self,
        ip: IpAddr,
        source: Source,
        reason: &'static str,
        threshold: u32,
        window: Duration,
        base: Option<Duration>,
    ) -> bool {
        if threshold == 0 {
            return false;
        }
        // Offences of an address already banned change nothing (and a spoofing attacker
        // cannot make them rewrite the ban).
        if self.banned(ip).is_some() {
            return false;
        }
        let key = BanKey::host(ip);
        let now = Instant::now();
        let crossed = {
            let mut all = self.0.strikes.lock().unwrap_or_else(|e| e.into_inner());
            let strikes = all.entry(source).or_default();
            if strikes.len() >= MAX_TRACKED && !strikes.contains_key(&key) {
                strikes.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
                // Still full of live counters (an address-spraying attack): the new address
                // goes uncounted rather than resetting everyone else's count.
                if strikes.len() >= MAX_TRACKED {
                    return false;
                }
            }
            let q = strikes.entry(key).or_default();
            while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
                q.pop_front();
            }
            q.push_back(now);
            let crossed = q.len() >= threshold as usize;
            if crossed {
                strikes.remove(&key);
            }
            crossed
        };
        crossed && self.impose_soon(ip, source, reason, base)
    }

    /// Re-reads the bans in force when the store's version moved (or `force`). Returns
    /// whether the copy changed.
    pub async fn refresh(&self, force: bool) -> Result<bool, StoreError> {
        let _one = self.0.refreshing.lock().await;
        let version = self.0.store.ban_version().await?;
        if !force && version == self.0.version.load(Ordering::Acquire) {
            return Ok(false);
        }
        let now = now_unix();
        let rows = self.0.store.bans(now).await?;
        let mut fresh = Copy::default();
        for r in &rows {
            let (Ok(key), Some(source)) = (BanKey::parse(&r.address), Source::parse(&r.source))
            else {
                debug!(address = %r.address, source = %r.source, "skipping a ban row this version cannot read");
                continue;
            };
            fresh.active.insert(key, r.expires_at);
            fresh.rows.push((key, r.expires_at, source));
        }
        {
            let mut pending = self.0.pending.lock().unwrap_or_else(|e| e.into_inner());
            let clock = Instant::now();
            pending.retain(|key, (until, _, at)| {
                clock.saturating_duration_since(*at) < PENDING_GRACE
                    && *until > now
                    && !fresh.active.has(key, now)
            });
            for (key, (until, source, _)) in pending.iter() {
                fresh.active.insert(*key, *until);
                fresh.rows.push((*key, *until, *source));
            }
        }
        let mut per_source: HashMap<Source, i64> = HashMap::new();
        for (_, _, s) in &fresh.rows {
            *per_source.entry(*s).or_default() += 1;
        }
        for s in Source::ALL {
            self.0
                .metrics
                .bans_active
                .get_or_create(&SourceLabels { source: s.as_str() })
                .set(per_source.get(&s).copied().unwrap_or(0));
        }
        *self.0.copy.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        self.0.version.store(version, Ordering::Release);
        self.bump();
        Ok(true)
    }

    /// The bans in force that the kernel should hold: one element per key (the latest end),
    /// without what must never be banned.
    pub fn elements(&self) -> Vec<super::nft::Element> {
        let now = now_unix();
        let mut by_key: HashMap<BanKey, i64> = HashMap::new();
        {
            let copy = self.0.copy.read().unwrap_or_else(|e| e.into_inner());
            for (key, until, _) in &copy.rows {
                if *until > now {
                    let e = by_key.entry(*key).or_insert(*until);
                    *e = (*e).max(*until);
                }
            }
        }
        let mut out: Vec<super::nft::Element> = by_key
            .into_iter()
            .filter(|(key, _)| self.never_banned(key).is_none())
            .map(|(key, until)| super::nft::Element {
                net: key.net(),
                expires_at: until,
            })
            .collect();
        out.sort_by_key(|e| e.net);
        out
    }

    /// A feed's good refresh: its rows become exactly `update.entries` (less what must never
    /// be banned), each in force for `update.ttl`.
    pub async fn replace_feed(&self, update: super::feeds::FeedUpdate) {
        let mut skipped = 0usize;
        let addresses: Vec<String> = update
            .entries
            .iter()
            .filter(|k| {
                let never = self.never_banned(k).is_some();
                skipped += usize::from(never);
                !never
            })
            .map(|k| k.to_string())
            .collect();
        if skipped > 0 {
            info!(feed = %update.feed, skipped, "feed entries left out: never banned (loopback, [bans] allow, trusted or relay addresses)");
        }
        let now = now_unix();
        let until = now.saturating_add(update.ttl.as_secs() as i64);
        match self
            .0
            .store
            .replace_feed_bans(&update.feed, &addresses, now, until, &self.0.node)
            .await
        {
            Ok((added, removed)) => {
                debug!(feed = %update.feed, entries = addresses.len(), added, removed, "feed applied");
                if added > 0 {
                    self.0
                        .metrics
                        .bans
                        .get_or_create(&SourceLabels { source: "feed" })
                        .inc_by(added);
                }
                if let Err(e) = self.refresh(true).await {
                    debug!(error = %e, "re-reading the bans after a feed failed");
                }
            }
            Err(e) => {
                warn!(feed = %update.feed, error = %e, "storing a feed's list failed; its earlier list stays in force")
            }
        }
    }

    /// Drops the rows of feeds no longer configured (`keep`: the configured names).
    pub async fn drop_feeds_except(&self, keep: &[String]) {
        let rows = match self.0.store.bans(i64::MIN).await {
            Ok(rows) => rows,
            Err(e) => {
                debug!(error = %e, "listing feed bans failed");
                return;
            }
        };
        let mut gone: Vec<&str> = rows
            .iter()
            .filter(|r| r.source == "feed" && !keep.contains(&r.origin))
            .map(|r| r.origin.as_str())
            .collect();
        gone.sort_unstable();
        gone.dedup();
        for feed in gone {
            match self
                .0
                .store
                .replace_feed_bans(feed, &[], now_unix(), 0, &self.0.node)
                .await
            {
                Ok((_, removed)) => {
                    info!(feed, removed, "bans of a feed no longer configured lifted")
                }
                Err(e) => warn!(feed, error = %e, "lifting the bans of a removed feed failed"),
            }
        }
    }

    /// The earliest end among the bans in force (the firewall looks again then).
    pub fn next_expiry(&self) -> Option<i64> {
        let now = now_unix();
        let copy = self.0.copy.read().unwrap_or_else(|e| e.into_inner());
        copy.rows.iter().map(|r| r.1).filter(|e| *e > now).min()
    }

    /// Follows the store until `stop`: its version every [`POLL`], at once when `changed`
    /// is notified (another node's change), and deletes long-ended rows hourly.
    pub fn start(
        &self,
        tracker: &TaskTracker,
        stop: CancellationToken,
        changed: Arc<tokio::sync::Notify>,
    ) {
        let bans = self.clone();
        tracker.spawn(async move {
            let mut failing = false;
            let mut forgot = Instant::now();
            loop {
                let force = tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(POLL) => false,
                    _ = changed.notified() => true,
                };
                match bans.refresh(force).await {
                    Ok(_) if failing => {
                        failing = false;
                        info!("reading the ban list works again");
                    }
                    Ok(_) => {}
                    Err(e) if !failing => {
                        failing = true;
                        warn!(error = %e, "reading the ban list failed; the bans in memory stay in force");
                    }
                    Err(_) => {}
                }
                if forgot.elapsed() >= FORGET_EVERY {
                    forgot = Instant::now();
                    if let Err(e) = bans.0.store.forget_bans(now_unix()).await {
                        debug!(error = %e, "deleting long-ended bans failed");
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn bans(config: &str) -> (tempfile::TempDir, Bans) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("b.db").display());
        let store = Store::open(&url, true).await.unwrap();
        store.migrate().await.unwrap();
        let raw: super::super::config::RawBans = toml::from_str(config).unwrap();
        let mut c = crate::problems::Checker::default();
        let cfg = BansConfig::from_raw(raw, &mut c);
        assert!(c.is_empty());
        let bans = Bans::new(cfg.clone(), store, Metrics::new(), "pbx1".into());
        bans.set_config(cfg, vec!["198.51.100.200/32".parse().unwrap()]);
        (dir, bans)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn the_threshold_th_offence_bans_at_once_and_the_store_follows() {
        let (_dir, b) = bans("").await;
        let window = Duration::from_secs(60);
        let attacker = ip("192.0.2.66");
        for _ in 0..2 {
            assert!(!b.strike(
                attacker,
                Source::Asterisk,
                "InvalidPassword",
                3,
                window,
                None
            ));
        }
        assert_eq!(b.banned(attacker), None);
        let changes = b.subscribe();
        assert!(b.strike(
            attacker,
            Source::Asterisk,
            "InvalidPassword",
            3,
            window,
            None
        ));
        // In force here before the store write.
        assert!(b.banned(attacker).is_some_and(|left| left > 3500));
        assert!(changes.has_changed().unwrap());
        let end = Instant::now() + Duration::from_secs(5);
        let rows = loop {
            let rows = b.0.store.bans(now_unix()).await.unwrap();
            if !rows.is_empty() || Instant::now() > end {
                break rows;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].source.as_str(), rows[0].node.as_str()),
            ("asterisk", "pbx1")
        );
        // A refresh keeps it; a lift in the store (the CLI) ends it here.
        assert!(b.refresh(false).await.unwrap());
        assert!(b.banned(attacker).is_some());
        assert!(!b.refresh(false).await.unwrap(), "nothing changed");
        b.0.store
            .delete_bans(Some("192.0.2.66"), now_unix())
            .await
            .unwrap();
        assert!(b.refresh(false).await.unwrap());
        assert_eq!(b.banned(attacker), None);
        let audit = b.0.store.audit_entries_by_action("ban.", 10).await.unwrap();
        assert_eq!(audit[0].action, "ban.asterisk");
    }

    #[tokio::test]
    async fn what_must_never_be_banned_is_not() {
        let (_dir, b) = bans("allow = [\"192.0.2.128/25\"]").await;
        let window = Duration::from_secs(60);
        for never in [
            "127.0.0.1",
            "::1",
            "192.0.2.129",
            "198.51.100.200",
            "::ffff:127.0.0.1",
        ] {
            for _ in 0..3 {
                b.strike(ip(never), Source::Sip, "auth_failures", 1, window, None);
            }
            assert_eq!(b.banned(ip(never)), None, "{never}");
            let e = b
                .impose(BanKey::host(ip(never)), Source::Manual, "x", None)
                .await
                .unwrap_err();
            assert!(matches!(e, ImposeError::NeverBanned(..)), "{never}: {e}");
        }
        let e = b
            .impose(
                BanKey::parse("192.0.2.0/24").unwrap(),
                Source::Feed,
                "x",
                None,
            )
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "192.0.2.0/24 is never banned: it overlaps 192.0.2.128/25 in [bans] allow"
        );
        assert!(b.0.store.bans(now_unix()).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_renewal_in_force_is_not_doubled_and_ipv6_is_banned_by_its_64() {
        let (_dir, b) = bans("duration = \"1h\"\nmax_duration = \"3h\"").await;
        let host = BanKey::host(ip("2001:db8:1:2::5"));
        let first = b.impose(host, Source::Asterisk, "x", None).await.unwrap();
        let second = b.impose(host, Source::Asterisk, "x", None).await.unwrap();
        assert_eq!(first.address, "2001:db8:1:2::/64");
        assert_eq!(
            second.hits, 1,
            "several nodes banning on one event: one offence"
        );
        assert!(second.expires_at - second.created_at <= 3601);
        assert!(b.banned(ip("2001:db8:1:2:ffff::1")).is_some());
        assert!(b.banned(ip("2001:db8:1:3::1")).is_none());
        let elements = b.elements();
        assert_eq!(elements.len(), 1);
        assert_eq!(elements[0].net.to_string(), "2001:db8:1:2::/64");
        assert!(b.next_expiry().is_some());
        // Offences from a banned address change nothing.
        let window = Duration::from_secs(60);
        for _ in 0..5 {
            let started = b.strike(
                ip("2001:db8:1:2::7"),
                Source::Asterisk,
                "x",
                1,
                window,
                None,
            );
            assert!(!started);
        }
        // Link-local and multicast are never banned.
        for never in ["fe80::1", "ff02::1", "169.254.1.1", "224.0.0.5"] {
            assert!(
                b.never_banned(&BanKey::host(ip(never))).is_some(),
                "{never}"
            );
        }
    }

    #[tokio::test]
    async fn an_allow_list_added_later_takes_the_ban_out_of_force() {
        let (_dir, b) = bans("").await;
        b.impose(
            BanKey::parse("192.0.2.0/24").unwrap(),
            Source::Feed,
            "x",
            None,
        )
        .await
        .unwrap();
        assert!(b.banned(ip("192.0.2.10")).is_some());
        let mut cfg = (*b.config()).clone();
        cfg.allow = vec!["192.0.2.10/32".parse().unwrap()];
        b.set_config(cfg, Vec::new());
        assert_eq!(b.banned(ip("192.0.2.10")), None);
        assert!(
            b.elements().is_empty(),
            "the kernel gets no overlapping prefix"
        );
    }
}
