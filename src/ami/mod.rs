//! The AMI gateway: clients (dialers, wallboards, the web tier) log in to pbxguard with their
//! own credentials; each gets its own session with Asterisk's AMI on loopback, logged in with
//! pbxguard's upstream secret, and every action passes the client's policy first.
//!
//! - [`codec`] reads client bytes exactly as Asterisk's `manager.c` does (limits included).
//! - [`classes`] is Asterisk's event-class arithmetic.
//! - [`clients`] is the clients' accounts as admins manage them (add, list, remove).
//! - [`policy`] is default deny plus the built-in refusals; [`calls`] the toll-fraud rules
//!   (contexts, destinations) for the actions that place or move calls.
//! - [`guards`] holds login lockouts by name (bans by address are in `crate::bans`; action
//!   rate limits are token buckets of [`crate::rate`]).
//! - [`upstream`] connects and logs in to Asterisk; this module keeps the banner, the
//!   reachability state and the pool of ready sessions; `session` runs one client connection,
//!   `login` its login phase and `relay` the relay to its Asterisk session.
//! - [`service`] starts, reloads and stops the gateway for the daemon.

pub mod calls;
pub mod classes;
pub mod clients;
pub mod codec;
pub mod config;
pub mod guards;
mod login;
pub mod originates;
pub mod policy;
mod relay;
mod routes;
pub mod security;
pub mod service;
mod session;
pub mod upstream;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use self::config::AmiConfig;
use crate::journal::Journal;
use crate::metrics::Metrics;
use crate::store::{AmiClientRow, Store};
use crate::vault::Vault;
use upstream::{Upstream, UpstreamError};

/// Sent when Asterisk has never been reached (Asterisk 22's AMI version, what 22.10.1 sends);
/// replaced by the real banner as soon as pbxguard has logged in once, and remembered across
/// restarts.
pub const DEFAULT_BANNER: &str = "Asterisk Call Manager/11.0.0";
const BANNER_SETTING: &str = "ami.banner";
/// Vault names of client secrets.
pub const CLIENT_SECRET_PREFIX: &str = "ami/clients/";

pub fn client_secret_name(name: &str) -> String {
    format!("{CLIENT_SECRET_PREFIX}{name}")
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("an AMI client name is 1 to 64 characters: letters, digits, '.', '_' or '-'")]
    Invalid,
}

/// Client names are matched case-insensitively by Asterisk, so they are stored in lower case.
pub fn normalise_name(name: &str) -> Result<String, NameError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(NameError::Invalid)
    }
}

/// The policy stored for a client, as the gateway applies it.
pub fn policy_from_row(row: &AmiClientRow) -> policy::ClientPolicy {
    let list = |s: &str| -> Vec<String> {
        s.split(',')
            .map(|x| x.trim().to_ascii_lowercase())
            .filter(|x| !x.is_empty())
            .collect()
    };
    policy::ClientPolicy {
        name: row.name.clone(),
        allow: list(&row.allow),
        // Never the security class, whatever the row says (see `classes::SECURITY`).
        read: classes::parse_class_list(&row.events).unwrap_or(0) & !classes::SECURITY,
        permit: list(&row.permit)
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect(),
        overrides: list(&row.overrides)
            .iter()
            .filter_map(|o| policy::Rule::parse(o))
            .collect(),
        // Not lower-cased: Asterisk's context names are case-sensitive.
        contexts: row
            .contexts
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect(),
        max_concurrent_calls: row.max_concurrent_calls.and_then(|n| u32::try_from(n).ok()),
        max_call_attempts_per_minute: row
            .max_call_attempts_per_minute
            .and_then(|n| u32::try_from(n).ok()),
        updated_at: row.updated_at,
    }
}

/// What the gateway uses of the rest of the daemon.
#[derive(Debug)]
pub struct Context {
    pub store: Store,
    /// Client secrets and the upstream secret.
    pub vault: Vault,
    pub metrics: Metrics,
    /// Failed logins and state-changing actions go to the high-volume audit log.
    pub journal: Journal,
    /// `[ami]` in force: set by [`service::Ami`] on start and reload, `None` once removed.
    pub config: ArcSwapOption<AmiConfig>,
    /// The toll-fraud rules: destinations and originates in flight.
    pub dialing: crate::dialing::Guard,
    /// The one ban list: banned addresses are refused; repeated failed logins ban.
    pub bans: crate::bans::Bans,
}

impl Context {
    pub fn new(
        store: Store,
        vault: Vault,
        metrics: Metrics,
        journal: Journal,
        dialing: crate::dialing::Guard,
        bans: crate::bans::Bans,
    ) -> Context {
        Context {
            store,
            vault,
            metrics,
            journal,
            config: ArcSwapOption::empty(),
            dialing,
            bans,
        }
    }
}

/// State shared by every AMI client session.
pub struct Gateway {
    ctx: Arc<Context>,
    banner: ArcSwap<String>,
    upstream_up: AtomicBool,
    /// Whether pbxguard has logged in to Asterisk since it started (logged once).
    greeted: AtomicBool,
    /// Wakes the monitor when a session finds Asterisk unreachable.
    monitor_wake: tokio::sync::Notify,
    /// Wakes the monitor when a client's login found Asterisk reachable again.
    up_wake: tokio::sync::Notify,
    /// While Asterisk is down, client logins try it themselves one at a time ...
    probe: tokio::sync::Mutex<()>,
    /// ... and not within PROBE_GAP of the last failed attempt.
    last_failure: Mutex<Option<Instant>>,
    pool: Mutex<Vec<Upstream>>,
    pool_wake: tokio::sync::Notify,
    lockouts: guards::Lockouts,
    unauthenticated: AtomicUsize,
    clients: AtomicUsize,
    tls: ArcSwapOption<rustls::ServerConfig>,
    /// Logged-in sessions by id.
    live: Mutex<HashMap<u64, Live>>,
    next_session: AtomicU64,
}

/// A logged-in session as the re-check sees it.
struct Live {
    client: String,
    /// The client's address (canonical form), checked against a changed permit list.
    ip: IpAddr,
    /// The policy the session's relay reads for every action; swapped in place by the re-check.
    policy: Arc<ArcSwap<policy::ClientPolicy>>,
    /// The stored row's `credential` when the session logged in.
    credential: i64,
    /// Ends the session.
    token: CancellationToken,
}

/// How often open sessions are checked against the stored clients: a changed policy applies
/// to them in place, a removed client (or one whose session no longer fits) ends them.
const RECHECK: Duration = Duration::from_secs(5);

/// What an open session does when its client's stored policy is `new` (`None`: removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Follow {
    Keep,
    /// Apply the new policy to the session in place.
    Update,
    /// End the session, for this reason.
    End(&'static str),
}

/// How a session from `ip` logged in under `current` follows its client's new policy: allowed
/// actions, contexts, overrides and call limits change in place; a session the client could
/// not open now (removed, address no longer permitted) ends, and so does one whose event
/// classes changed, since Asterisk's event mask for the session was set at login. A session
/// opened with a secret since replaced (`credential`, the stored row's at login) ends too:
/// replacing a secret is how an admin shuts out whoever else knows the old one.
pub fn follow(
    current: &policy::ClientPolicy,
    credential: i64,
    new: Option<(&policy::ClientPolicy, i64)>,
    ip: IpAddr,
) -> Follow {
    let Some((new, new_credential)) = new else {
        return Follow::End("the client was removed");
    };
    if new_credential != credential {
        return Follow::End("its secret was replaced");
    }
    if new == current {
        return Follow::Keep;
    }
    if !new.permit.iter().any(|net| net.contains(&ip)) {
        return Follow::End("its permit list no longer admits the session's address");
    }
    if new.read != current.read {
        return Follow::End("its event classes changed (Asterisk's event mask is set at login)");
    }
    Follow::Update
}
/// While Asterisk is down, a client login tries to reach it when the last attempt failed at
/// least this long ago: logins recover within about a second of Asterisk's return, whatever
/// the monitor's backoff, and a crowd of clients costs Asterisk one attempt per second.
const PROBE_GAP: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

/// Holds one slot of a counter; gives it back when dropped.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn try_slot(counter: &AtomicUsize, max: usize) -> Option<Slot<'_>> {
    let prev = counter.fetch_add(1, Ordering::AcqRel);
    let slot = Slot(counter);
    (prev < max).then_some(slot)
}

impl Gateway {
    pub async fn new(ctx: Arc<Context>, tls: Option<Arc<rustls::ServerConfig>>) -> Arc<Gateway> {
        let banner = match ctx.store.setting(BANNER_SETTING).await {
            Ok(Some(b)) if b.starts_with(upstream::BANNER_PREFIX) => b,
            _ => DEFAULT_BANNER.to_string(),
        };
        Arc::new(Gateway {
            ctx,
            banner: ArcSwap::from_pointee(banner),
            upstream_up: AtomicBool::new(true),
            greeted: AtomicBool::new(false),
            monitor_wake: tokio::sync::Notify::new(),
            up_wake: tokio::sync::Notify::new(),
            probe: tokio::sync::Mutex::new(()),
            last_failure: Mutex::new(None),
            pool: Mutex::new(Vec::new()),
            pool_wake: tokio::sync::Notify::new(),
            lockouts: guards::Lockouts::default(),
            unauthenticated: AtomicUsize::new(0),
            clients: AtomicUsize::new(0),
            tls: ArcSwapOption::new(tls),
            live: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(0),
        })
    }

    /// Registers a logged-in session of `client` from `ip`, whose relay reads `policy`; the
    /// returned token is cancelled when the session must end (see [`follow`]). Call
    /// [`Gateway::unregister`] when the session ends.
    fn register(
        &self,
        client: &str,
        ip: IpAddr,
        policy: Arc<ArcSwap<policy::ClientPolicy>>,
        credential: i64,
        parent: &CancellationToken,
    ) -> (u64, CancellationToken) {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let token = parent.child_token();
        self.live.lock().unwrap_or_else(|e| e.into_inner()).insert(
            id,
            Live {
                client: client.to_string(),
                ip: crate::net::canonical_ip(ip),
                policy,
                credential,
                token: token.clone(),
            },
        );
        (id, token)
    }

    fn unregister(&self, id: u64) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// Brings open sessions in line with the stored clients (see [`follow`]).
    async fn recheck_sessions(&self) {
        let names: HashSet<String> = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|l| l.client.clone())
            .collect();
        for name in names {
            let new = match self.ctx.store.ami_client(&name).await {
                Ok(row) => row.map(|r| (policy_from_row(&r), r.credential)),
                Err(e) => {
                    warn!(error = %e, "cannot re-check AMI clients");
                    return;
                }
            };
            let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            for l in live
                .values()
                .filter(|l| l.client == name && !l.token.is_cancelled())
            {
                let stored = new.as_ref().map(|(p, c)| (p, *c));
                match follow(&l.policy.load(), l.credential, stored, l.ip) {
                    Follow::Keep => {}
                    Follow::Update => {
                        if let Some((new, _)) = &new {
                            l.policy.store(Arc::new(new.clone()));
                            info!(client = %name, "AMI session follows the client's changed policy");
                        }
                    }
                    Follow::End(why) => {
                        info!(client = %name, reason = why, "ending AMI session");
                        l.token.cancel();
                    }
                }
            }
        }
    }

    /// New TLS material after a reload; applies from the next handshake.
    pub fn set_tls(&self, tls: Option<Arc<rustls::ServerConfig>>) {
        self.tls.store(tls);
    }

    fn config(&self) -> Option<AmiConfig> {
        self.ctx.config.load().as_deref().cloned()
    }

    async fn learn_banner(&self, banner: &str) {
        if !self.greeted.swap(true, Ordering::AcqRel) {
            info!(banner, "logged in to Asterisk's AMI");
        }
        if **self.banner.load() == banner {
            return;
        }
        info!(banner, "learned Asterisk's AMI banner");
        self.banner.store(Arc::new(banner.to_string()));
        if let Err(e) = self
            .ctx
            .store
            .set_setting(BANNER_SETTING, banner, "ami", crate::clock::now_unix())
            .await
        {
            warn!(error = %e, "cannot remember Asterisk's AMI banner");
        }
    }

    fn set_up(&self, up: bool) {
        let was = self.upstream_up.swap(up, Ordering::AcqRel);
        self.ctx.metrics.ami_upstream_up.set(i64::from(up));
        if was && !up {
            warn!("Asterisk's AMI is unreachable; AMI logins fail until it is back");
            self.monitor_wake.notify_one();
        } else if !was && up {
            info!("Asterisk's AMI is reachable again");
            self.up_wake.notify_one();
        }
    }

    /// A fresh logged-in session, with Asterisk asked for `events` (its syntax).
    async fn connect(&self, cfg: &AmiConfig, events: &str) -> Result<Upstream, UpstreamError> {
        let secret: Zeroizing<Vec<u8>> = match self.ctx.vault.get(&cfg.upstream_secret).await {
            Ok(s) => s,
            Err(e) => {
                return Err(UpstreamError::LoginRefused {
                    user: cfg.upstream_username.clone(),
                    message: format!("the vault secret is unavailable: {e}"),
                })
            }
        };
        let result = upstream::connect(
            cfg.upstream,
            &cfg.upstream_username,
            &secret,
            events,
            cfg.upstream_timeout,
        )
        .await;
        match &result {
            Ok(up) => {
                *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = None;
                self.learn_banner(&up.banner).await;
                self.set_up(true);
            }
            Err(_) => {
                *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                self.set_up(false);
            }
        }
        result
    }

    /// A session for a client that just logged in: from the pool when one is ready (then told
    /// the client's event mask), else a new one. While Asterisk is known down, the login tries
    /// it at once: one login at a time, at most once per PROBE_GAP; other logins wait for that
    /// attempt and then fail at once while it failed recently. So logins work again as soon as
    /// Asterisk answers, not when the monitor's backoff ends.
    async fn upstream_for(&self, cfg: &AmiConfig, events: &str) -> Result<Upstream, UpstreamError> {
        if !self.upstream_up.load(Ordering::Acquire) {
            let _probe = self.probe.lock().await;
            if !self.upstream_up.load(Ordering::Acquire) {
                let recent = self
                    .last_failure
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_some_and(|at| at.elapsed() < PROBE_GAP);
                if recent {
                    return Err(UpstreamError::Down);
                }
                return self.connect(cfg, events).await;
            }
        }
        loop {
            let pooled = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let Some(mut up) = pooled else { break };
            self.pool_wake.notify_one();
            if !up.is_fresh() {
                continue;
            }
            if events == "off" {
                return Ok(up);
            }
            match upstream::set_events(&mut up, events, cfg.upstream_timeout).await {
                Ok(()) => return Ok(up),
                Err(e) => warn!(error = %e, "a pooled Asterisk session failed; using a new one"),
            }
        }
        self.connect(cfg, events).await
    }

    /// Keeps the pool filled and, while Asterisk is down, retries with backoff (1 s to 30 s);
    /// a client login that reaches Asterisk first resets the backoff and refills the pool.
    async fn maintain(self: Arc<Self>, stop: CancellationToken) {
        let mut backoff = Duration::from_secs(1);
        // The first round always logs in once: that learns the banner before clients arrive.
        let mut first = true;
        loop {
            let Some(cfg) = self.config() else { return };
            let wanted = if self.upstream_up.load(Ordering::Acquire) {
                cfg.pool_size
                    .saturating_sub(self.pool.lock().unwrap_or_else(|e| e.into_inner()).len())
            } else {
                0
            };
            let probe = first || !self.upstream_up.load(Ordering::Acquire) || wanted > 0;
            first = false;
            let mut failed = false;
            if probe {
                match self.connect(&cfg, "off").await {
                    Ok(mut up) => {
                        backoff = Duration::from_secs(1);
                        if wanted > 0 {
                            self.pool.lock().unwrap_or_else(|e| e.into_inner()).push(up);
                            continue;
                        }
                        let _ = up.stream.write_all(b"Action: Logoff\r\n\r\n").await;
                    }
                    Err(e) => {
                        warn!(error = %e, retry_in = ?backoff, "cannot log in to Asterisk's AMI");
                        failed = true;
                    }
                }
            }
            let wait = if failed {
                let w = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                w
            } else {
                Duration::from_secs(60)
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.monitor_wake.notified(), if !failed => {}
                _ = self.pool_wake.notified(), if !failed => {}
                _ = self.up_wake.notified() => backoff = Duration::from_secs(1),
            }
        }
    }

    /// Logs in to Asterisk once at start (learning the banner), then keeps the pool and the
    /// reachability state up to date until `stop`.
    pub fn start_maintenance(self: &Arc<Self>, tracker: &TaskTracker, stop: CancellationToken) {
        tracker.spawn(self.clone().maintain(stop.clone()));
        let gw = self.clone();
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(RECHECK);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => gw.recheck_sessions().await,
                }
            }
        });
    }
}

/// Accepts AMI clients on `listener` until `stop`; client sessions end when `sessions` is
/// cancelled (a changed listen address closes the old socket but keeps its sessions).
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    tracker: TaskTracker,
    stop: CancellationToken,
    sessions: CancellationToken,
) {
    let addr = listener.local_addr().ok();
    info!(listen = ?addr, "AMI gateway listening");
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer): (tokio::net::TcpStream, SocketAddr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "AMI accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let own = stream.local_addr().is_ok_and(|l| l.ip() == peer.ip());
        if !own && gateway.ctx.bans.banned(peer.ip()).is_some() {
            debug!(%peer, "closing an AMI connection from a banned address");
            continue;
        }
        let gw = gateway.clone();
        let end = sessions.child_token();
        tracker.spawn(async move { session::run(gw, stream, peer, end).await });
    }
    info!("AMI gateway stopped accepting");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> AmiClientRow {
        AmiClientRow {
            name: "dialer".into(),
            allow: "Originate,Queue*".into(),
            events: "call".into(),
            permit: "192.0.2.0/24".into(),
            overrides: "".into(),
            contexts: "Sales, out-*".into(),
            max_concurrent_calls: Some(200),
            max_call_attempts_per_minute: None,
            credential: 42,
            created_at: 1,
            updated_at: 1,
        }
    }

    #[test]
    fn a_row_becomes_the_policy_the_gateway_applies() {
        let p = policy_from_row(&row());
        assert_eq!(p.allow, ["originate", "queue*"]);
        // Contexts keep their case: Asterisk's are case-sensitive.
        assert_eq!(p.contexts, ["Sales", "out-*"]);
        assert!(p.allows_context("Sales") && p.allows_context("out-intl"));
        assert!(!p.allows_context("sales") && !p.allows_context("default"));
        let defaults = crate::dialing::Limits {
            max_concurrent: 10,
            max_per_minute: 30,
        };
        assert_eq!(
            p.limits(defaults),
            crate::dialing::Limits {
                max_concurrent: 200,
                max_per_minute: 30
            }
        );
    }

    #[test]
    fn open_sessions_follow_a_changed_policy_in_place() {
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let current = policy_from_row(&row());
        assert_eq!(follow(&current, 42, Some((&current, 42)), ip), Follow::Keep);
        for changed in [
            AmiClientRow {
                allow: "Originate".into(),
                ..row()
            },
            AmiClientRow {
                contexts: "support".into(),
                ..row()
            },
            AmiClientRow {
                overrides: "command".into(),
                ..row()
            },
            AmiClientRow {
                max_call_attempts_per_minute: Some(5),
                ..row()
            },
            AmiClientRow {
                permit: "192.0.2.0/24,198.51.100.0/24".into(),
                updated_at: 9,
                ..row()
            },
        ] {
            let new = policy_from_row(&changed);
            assert_eq!(
                follow(&current, 42, Some((&new, 42)), ip),
                Follow::Update,
                "{changed:?}"
            );
        }
        assert!(matches!(follow(&current, 42, None, ip), Follow::End(_)));
        let elsewhere = policy_from_row(&AmiClientRow {
            permit: "198.51.100.0/24".into(),
            ..row()
        });
        assert!(matches!(
            follow(&current, 42, Some((&elsewhere, 42)), ip),
            Follow::End(why) if why.contains("permit")
        ));
        let other_events = policy_from_row(&AmiClientRow {
            events: "call,agent".into(),
            ..row()
        });
        assert!(matches!(
            follow(&current, 42, Some((&other_events, 42)), ip),
            Follow::End(why) if why.contains("event")
        ));
    }

    #[test]
    fn a_replaced_secret_ends_open_sessions() {
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let current = policy_from_row(&row());
        // Same policy, new secret (`ami user add` again, or remove + add).
        assert!(matches!(
            follow(&current, 42, Some((&current, 7)), ip),
            Follow::End(why) if why.contains("secret")
        ));
        // And with a changed policy too: the secret decides first.
        let changed = policy_from_row(&AmiClientRow {
            allow: "Originate".into(),
            ..row()
        });
        assert!(matches!(
            follow(&current, 42, Some((&changed, 7)), ip),
            Follow::End(why) if why.contains("secret")
        ));
    }
}
