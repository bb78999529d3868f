//! Asterisk's own security events: a monitoring session on Asterisk's AMI, logged in as the
//! gateway's upstream user with its event mask restricted to the `security` class, that hands
//! the address of every failed authentication or refused request to a sink (the ban list).
//!
//! This is what sees brute force that never passes pbxguard: desk phones and trunks talk to
//! Asterisk's own SIP port, and scanners hammer it. The upstream user needs the `security`
//! read class in manager.conf; without it Asterisk sends nothing and says nothing, so the
//! monitor warns when not even its own login shows up as an event, and `pbxguard audit
//! asterisk` reports the missing class.
//!
//! Parsing is strict, because some fields are the caller's words. pjsip puts the SIP From
//! user, unescaped, into `AccountID` (36 characters at most), and Asterisk 22 writes it into
//! the event as it is, line breaks included (`tests/asterisk_security.rs` shows it): a
//! scanner can add headers to the event, or end it and start another. So a security event is
//! taken only when every field Asterisk always writes for it is there, no header repeats, and
//! `RemoteAddress` directly follows `LocalAddress`. An injected `RemoteAddress` then either
//! repeats Asterisk's own or stands in an event that lacks the fields after `AccountID`; 36
//! characters cannot hold those fields and an address too.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use super::codec::{header_value, Reply, MAX_HEADERS, MAX_LINE};
use super::config::AmiConfig;
use super::upstream::{self, UpstreamError};
use crate::vault::Vault;

/// The security events that count against an address: failed authentications and refused
/// requests. `SuccessfulAuth`, `ChallengeSent` and the rest are ignored.
pub const EVENTS: [&str; 7] = [
    "InvalidAccountID",
    "InvalidPassword",
    "ChallengeResponseFailed",
    "FailedACL",
    "RequestNotAllowed",
    "UnexpectedAddress",
    "RequestBadFormat",
];

/// Fields Asterisk always writes for each of [`EVENTS`] (the required IEs of `sec_events[]`
/// in `main/security_events.c`), besides `Event` and `Privilege`.
fn required(event: &str) -> impl Iterator<Item = &'static str> {
    const COMMON: [&str; 7] = [
        "EventTV",
        "Severity",
        "Service",
        "EventVersion",
        "SessionID",
        "LocalAddress",
        "RemoteAddress",
    ];
    // (AccountID required, the event's own fields); RequestBadFormat's AccountID is optional.
    let (account, own): (bool, &'static [&'static str]) = match event {
        "RequestNotAllowed" => (true, &["RequestType"]),
        "RequestBadFormat" => (false, &["RequestType"]),
        "UnexpectedAddress" => (true, &["ExpectedAddress"]),
        "ChallengeResponseFailed" => (true, &["Challenge", "Response", "ExpectedResponse"]),
        _ => (true, &[]),
    };
    COMMON
        .into_iter()
        .chain(account.then_some("AccountID"))
        .chain(own.iter().copied())
}

/// The longest `RemoteAddress` Asterisk can write is `IPV6/WSS/` + 45 + `/65535`.
const MAX_ADDRESS_TEXT: usize = 64;
/// `AccountID` is kept for logs only, at most this many characters.
pub const MAX_ACCOUNT: usize = 64;
/// `Service` is a module's constant (`PJSIP`, `AMI`, `IAX2`, ...).
const MAX_SERVICE: usize = 32;

/// One failed authentication or refused request, from the address that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityEvent {
    /// One of [`EVENTS`].
    pub event: &'static str,
    pub address: IpAddr,
    /// The Asterisk service that raised it: `PJSIP`, `AMI`, ...
    pub service: String,
    /// The account tried, for logs: at most [`MAX_ACCOUNT`] characters, control characters
    /// replaced by `?`. The caller chose it (pjsip's is the SIP From user): never trust it.
    pub account: Option<String>,
}

/// A security event that counts but cannot be used: logged and skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Asterisk security event {event} skipped: {reason}")]
pub struct Skipped {
    pub event: &'static str,
    pub reason: SkipReason,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkipReason {
    #[error("RemoteAddress {0:?} is not an address as Asterisk writes one")]
    BadAddress(String),
    #[error("it lacks {0}, which Asterisk always writes (a field may have carried a line break)")]
    Missing(&'static str),
    #[error("header {0:?} appears twice (a field may have carried a line break)")]
    Repeated(String),
    #[error("RemoteAddress does not follow LocalAddress as Asterisk writes it")]
    Misplaced,
    #[error("line {0} is not a header")]
    NotAHeader(usize),
    #[error("more than {MAX_HEADERS} lines, or one longer than {MAX_LINE} bytes")]
    TooLarge,
    #[error("Service {0:?} is not a service name")]
    BadService(String),
}

/// The address in a `RemoteAddress` as Asterisk writes it (`ast_json_ipaddr`):
/// `IPV4/UDP/203.0.113.5/5060`, `IPV6/TCP/2001:db8::5/5060` (no brackets); the transport
/// (`UDP`, `TCP`, `TLS`, `WS`, `WSS`) is left out when Asterisk does not know it, and the port
/// is accepted missing. The family must match the address. Anything else (brackets, host
/// names, zone ids, spaces, lower case, other transports) is `None`.
pub fn parse_remote_address(text: &str) -> Option<IpAddr> {
    if text.is_empty() || text.len() > MAX_ADDRESS_TEXT {
        return None;
    }
    let mut parts = text.split('/');
    let family = parts.next()?;
    let mut next = parts.next()?;
    if matches!(next, "UDP" | "TCP" | "TLS" | "WS" | "WSS") {
        next = parts.next()?;
    }
    let address = next;
    if let Some(port) = parts.next() {
        let digits =
            !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
        if !digits || port.parse::<u32>().ok()? > 65_535 {
            return None;
        }
    }
    if parts.next().is_some() {
        return None;
    }
    // Rust's parsers take exactly the dotted quad and RFC 4291 text (no brackets, zone ids,
    // leading zeros in a quad or spaces), which is what getnameinfo() writes.
    match family {
        "IPV4" => address.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4),
        "IPV6" => address.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6),
        _ => None,
    }
}

/// Text a peer chose, for a log line: at most `max` characters, control characters as `?`.
fn printable(bytes: &[u8], max: usize) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The security event in `message`: `None` for anything else (responses, other events,
/// `SuccessfulAuth`, `ChallengeSent`); `Some(Err)` for one of [`EVENTS`] that cannot be used
/// (log it and go on).
pub fn event_of(message: &Reply) -> Option<Result<SecurityEvent, Skipped>> {
    let first = message.lines().next()?;
    let name = header_value(first, "Event")?;
    let event = *EVENTS.iter().find(|e| e.as_bytes() == name)?;
    Some(fields(event, message).map_err(|reason| Skipped { event, reason }))
}

fn fields(event: &'static str, message: &Reply) -> Result<SecurityEvent, SkipReason> {
    let mut names: Vec<&[u8]> = Vec::new();
    for (i, line) in message.lines().enumerate() {
        if i >= MAX_HEADERS || line.len() > MAX_LINE {
            return Err(SkipReason::TooLarge);
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(SkipReason::NotAHeader(i + 1))?;
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(u8::is_ascii_alphanumeric) {
            return Err(SkipReason::NotAHeader(i + 1));
        }
        if names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            return Err(SkipReason::Repeated(printable(name, 40)));
        }
        names.push(name);
    }
    let position = |field: &str| {
        names
            .iter()
            .position(|n| n.eq_ignore_ascii_case(field.as_bytes()))
    };
    for field in required(event) {
        if position(field).is_none() {
            return Err(SkipReason::Missing(field));
        }
    }
    let remote = position("RemoteAddress").ok_or(SkipReason::Missing("RemoteAddress"))?;
    if position("LocalAddress").map(|l| l + 1) != Some(remote) {
        return Err(SkipReason::Misplaced);
    }
    let value = |field: &str| message.get(field).unwrap_or_default();
    let text = value("RemoteAddress");
    let address = std::str::from_utf8(text)
        .ok()
        .and_then(parse_remote_address)
        .ok_or_else(|| SkipReason::BadAddress(printable(text, MAX_ADDRESS_TEXT + 16)))?;
    let service = value("Service");
    let service_ok = !service.is_empty()
        && service.len() <= MAX_SERVICE
        && service
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if !service_ok {
        return Err(SkipReason::BadService(printable(service, MAX_SERVICE)));
    }
    let account = message
        .get("AccountID")
        .filter(|a| !a.is_empty())
        .map(|a| printable(a, MAX_ACCOUNT));
    Ok(SecurityEvent {
        event,
        address,
        service: String::from_utf8_lossy(service).into_owned(),
        account,
    })
}

/// Where each security event goes, at once, on the monitor's task: keep it quick (count,
/// and hand a ban to a channel or a spawned task).
pub type Sink = Arc<dyn Fn(SecurityEvent) + Send + Sync>;

/// Where and as whom the monitor logs in: `[ami]`'s `upstream`, `upstream_username`,
/// `upstream_timeout` and the vault secret `upstream_secret` names. Read again before every
/// connection and checked every second while connected, so a reload applies at once.
#[derive(Clone)]
pub struct Settings {
    config: Arc<dyn Fn() -> Option<AmiConfig> + Send + Sync>,
    vault: Vault,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings").finish_non_exhaustive()
    }
}

impl Settings {
    /// Follows the gateway's `[ami]` as the AMI subsystem sets it on start and reload; while
    /// `[ami]` is absent, or `[bans] asterisk_events` is off, the monitor waits.
    pub fn of_gateway(ctx: Arc<super::Context>) -> Settings {
        let vault = ctx.vault.clone();
        Settings {
            config: Arc::new(move || {
                if !ctx.bans.config().asterisk_events {
                    return None;
                }
                ctx.config.load_full().map(|c| (*c).clone())
            }),
            vault,
        }
    }

    /// A fixed `[ami]`.
    pub fn fixed(config: AmiConfig, vault: Vault) -> Settings {
        Settings {
            config: Arc::new(move || Some(config.clone())),
            vault,
        }
    }

    fn current(&self) -> Option<AmiConfig> {
        (self.config)()
    }
}

/// What identifies the session the monitor holds: a change of any of these reconnects.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    addr: SocketAddr,
    user: String,
    secret: String,
}

impl Target {
    fn of(cfg: &AmiConfig) -> Target {
        Target {
            addr: cfg.upstream,
            user: cfg.upstream_username.clone(),
            secret: cfg.upstream_secret.clone(),
        }
    }
}

/// The monitor's counters, for status pages and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Logged in to Asterisk right now.
    pub connected: bool,
    /// A security event has arrived since the last login: the user has the `security` class.
    pub class_confirmed: bool,
    /// Events handed to the sink.
    pub events: u64,
    /// Security events skipped (unusable address, malformed).
    pub skipped: u64,
    /// Logins to Asterisk that succeeded (the first, then one per reconnection).
    pub logins: u64,
}

#[derive(Debug, Default)]
struct State {
    connected: AtomicBool,
    class_confirmed: AtomicBool,
    events: AtomicU64,
    skipped: AtomicU64,
    logins: AtomicU64,
    /// The "no security events" warning was logged (once per process, until events come).
    warned_class: AtomicBool,
}

/// The running monitor: a handle on its counters. It stops when the `stop` token given to
/// [`Monitor::spawn`] is cancelled.
#[derive(Debug, Clone)]
pub struct Monitor {
    state: Arc<State>,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("reading from Asterisk's AMI: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] super::codec::UpstreamFrameError),
    #[error("Asterisk's AMI did not answer a Ping within {0:?}")]
    Silent(Duration),
}

/// How a logged-in session ended.
enum End {
    Stop,
    /// `[ami]` changed or went: connect again with the new settings at once.
    Changed,
    Lost(SessionError),
}

/// Checks (settings, keepalive, class) run this often while connected.
const TICK: Duration = Duration::from_secs(1);
/// A session that received nothing for this long is sent a Ping.
const IDLE_PING: Duration = Duration::from_secs(20);
/// Asterisk reports every AMI login as `SuccessfulAuth`, the monitor's own included: when no
/// security event at all arrived this long after logging in, the class is probably missing.
const CLASS_GRACE: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// While `[ami]` is absent, look again this often.
const IDLE_CONFIG: Duration = Duration::from_secs(2);
/// Skipped events logged per minute at most; the rest are counted in one line.
const SKIP_LOGS_PER_MINUTE: u32 = 20;
const PING: &[u8] = b"Action: Ping\r\nActionID: pbxguard-security-ping\r\n\r\n";
const LOGOFF: &[u8] = b"Action: Logoff\r\nActionID: pbxguard-security-logoff\r\n\r\n";

impl Monitor {
    /// Starts the monitor on `tracker`; it runs until `stop`, reconnecting with backoff (1 s
    /// doubling to 30 s) whenever Asterisk goes away.
    pub fn spawn(
        tracker: &TaskTracker,
        stop: CancellationToken,
        settings: Settings,
        sink: Sink,
    ) -> Monitor {
        let state = Arc::new(State::default());
        let task = Task {
            settings,
            sink,
            state: state.clone(),
            stop,
            skip_log: SkipLog::new(Instant::now()),
        };
        tracker.spawn(task.run());
        Monitor { state }
    }

    pub fn stats(&self) -> Stats {
        let s = &self.state;
        Stats {
            connected: s.connected.load(Ordering::Acquire),
            class_confirmed: s.class_confirmed.load(Ordering::Acquire),
            events: s.events.load(Ordering::Relaxed),
            skipped: s.skipped.load(Ordering::Relaxed),
            logins: s.logins.load(Ordering::Relaxed),
        }
    }
}

struct Task {
    settings: Settings,
    sink: Sink,
    state: Arc<State>,
    stop: CancellationToken,
    skip_log: SkipLog,
}

/// A peer can cause skipped events at will: at most `SKIP_LOGS_PER_MINUTE` lines a minute,
/// then one line with the count of the rest.
#[derive(Debug)]
struct SkipLog {
    window: Instant,
    logged: u32,
    quiet: u64,
}

impl SkipLog {
    fn new(now: Instant) -> SkipLog {
        SkipLog {
            window: now,
            logged: 0,
            quiet: 0,
        }
    }

    /// Starts a new minute when the last one is over; returns how many went unlogged in it.
    fn roll(&mut self, now: Instant) -> Option<u64> {
        if now.saturating_duration_since(self.window) < Duration::from_secs(60) {
            return None;
        }
        let quiet = std::mem::replace(self, SkipLog::new(now)).quiet;
        (quiet > 0).then_some(quiet)
    }

    /// Whether this skipped event gets its own line.
    fn admit(&mut self) -> bool {
        if self.logged < SKIP_LOGS_PER_MINUTE {
            self.logged += 1;
            true
        } else {
            self.quiet += 1;
            false
        }
    }
}

impl Task {
    async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        // Logged once per outage, not once per attempt.
        let mut failing = false;
        loop {
            let Some(cfg) = self.settings.current() else {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = tokio::time::sleep(IDLE_CONFIG) => continue,
                }
            };
            let attempt = tokio::select! {
                _ = self.stop.cancelled() => return,
                a = self.connect(&cfg) => a,
            };
            match attempt {
                Ok(mut up) => {
                    backoff = BACKOFF_MIN;
                    if failing {
                        info!("reading Asterisk's security events again");
                        failing = false;
                    } else {
                        info!(user = %cfg.upstream_username, "reading Asterisk's security events");
                    }
                    self.state.logins.fetch_add(1, Ordering::Relaxed);
                    self.state.connected.store(true, Ordering::Release);
                    let end = self.session(&mut up, &cfg).await;
                    self.state.connected.store(false, Ordering::Release);
                    self.state.class_confirmed.store(false, Ordering::Release);
                    match end {
                        End::Stop => {
                            logoff(&mut up).await;
                            return;
                        }
                        End::Changed => {
                            logoff(&mut up).await;
                            if self.settings.current().is_some() {
                                info!("[ami] upstream changed: reconnecting for security events");
                            } else {
                                info!(
                                    "[ami] is gone: security events are not read until it is back"
                                );
                            }
                            continue;
                        }
                        End::Lost(e) => {
                            warn!(error = %e, "lost the session with Asterisk's AMI that reads its security events; reconnecting");
                            failing = true;
                        }
                    }
                }
                Err(e) => {
                    if failing {
                        debug!(error = %e, retry_in = ?backoff, "still cannot log in to Asterisk's AMI for security events");
                    } else {
                        warn!(error = %e, retry_in = ?backoff, "cannot log in to Asterisk's AMI for its security events; brute force on Asterisk goes unbanned until it works");
                        failing = true;
                    }
                }
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Logs in with the event mask restricted to `security`; the secret comes from the vault
    /// and never reaches a log (the MD5 challenge keeps it off the socket too).
    async fn connect(&self, cfg: &AmiConfig) -> Result<upstream::Upstream, UpstreamError> {
        let secret: Zeroizing<Vec<u8>> = self
            .settings
            .vault
            .get(&cfg.upstream_secret)
            .await
            .map_err(|e| UpstreamError::LoginRefused {
                user: cfg.upstream_username.clone(),
                message: format!("the vault secret is unavailable: {e}"),
            })?;
        upstream::connect(
            cfg.upstream,
            &cfg.upstream_username,
            &secret,
            "security",
            cfg.upstream_timeout,
        )
        .await
    }

    async fn session(&mut self, up: &mut upstream::Upstream, cfg: &AmiConfig) -> End {
        let target = Target::of(cfg);
        let logged_in = Instant::now();
        let mut last_heard = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut replies = Vec::new();
        loop {
            // Messages already buffered (the login may have read past its answer) first.
            if let Err(e) = up.framer.messages(&mut replies) {
                return End::Lost(e.into());
            }
            for reply in replies.drain(..) {
                self.handle(&reply);
            }
            tokio::select! {
                // A stop wins over whatever else is ready (Asterisk closing at shutdown too).
                biased;
                _ = self.stop.cancelled() => return End::Stop,
                read = up.stream.read_buf(up.framer.buffer()) => match read {
                    Ok(0) => return End::Lost(UpstreamError::Closed.into()),
                    Ok(_) => {
                        last_heard = Instant::now();
                        ping_sent = None;
                    }
                    Err(e) => return End::Lost(e.into()),
                },
                _ = tick.tick() => {
                    match self.settings.current() {
                        Some(now) if Target::of(&now) == target => {}
                        _ => return End::Changed,
                    }
                    if let Some(sent) = ping_sent {
                        if sent.elapsed() > cfg.upstream_timeout {
                            return End::Lost(SessionError::Silent(cfg.upstream_timeout));
                        }
                    } else if last_heard.elapsed() >= IDLE_PING {
                        if let Err(e) = up.stream.write_all(PING).await {
                            return End::Lost(e.into());
                        }
                        ping_sent = Some(Instant::now());
                    }
                    self.check_class(logged_in, &cfg.upstream_username);
                    self.flush_skip_summary();
                }
            }
        }
    }

    /// Warns once when no security event has arrived `CLASS_GRACE` after login: Asterisk
    /// accepts the `Events: security` login whatever the user's read classes, and the only
    /// sign of a missing class is silence (the monitor's own `SuccessfulAuth` never comes).
    fn check_class(&self, logged_in: Instant, user: &str) {
        if self.state.class_confirmed.load(Ordering::Acquire) || logged_in.elapsed() < CLASS_GRACE {
            return;
        }
        if !self.state.warned_class.swap(true, Ordering::AcqRel) {
            warn!(
                user,
                "no security event arrived since logging in to Asterisk's AMI, not even this \
                 login's own SuccessfulAuth: the upstream user probably lacks the security read \
                 class (manager.conf: read = ...,security), so brute force on Asterisk's own SIP \
                 port and AMI goes unbanned; `pbxguard audit asterisk` checks manager.conf"
            );
        }
    }

    fn handle(&mut self, reply: &Reply) {
        if !reply.is_event() {
            // Ping answers and the like.
            return;
        }
        // With the mask restricted to `security`, any event proves the class.
        if !self.state.class_confirmed.swap(true, Ordering::AcqRel)
            && self.state.warned_class.swap(false, Ordering::AcqRel)
        {
            info!("Asterisk's security events arrive now");
        }
        match event_of(reply) {
            None => {}
            Some(Ok(ev)) => {
                debug!(event = ev.event, address = %ev.address, service = %ev.service, account = ?ev.account, "Asterisk security event");
                self.state.events.fetch_add(1, Ordering::Relaxed);
                (self.sink)(ev);
            }
            Some(Err(skipped)) => {
                self.state.skipped.fetch_add(1, Ordering::Relaxed);
                self.log_skipped(&skipped);
            }
        }
    }

    fn log_skipped(&mut self, skipped: &Skipped) {
        self.flush_skip_summary();
        if self.skip_log.admit() {
            warn!("{skipped}");
        }
    }

    fn flush_skip_summary(&mut self) {
        if let Some(count) = self.skip_log.roll(Instant::now()) {
            warn!(
                count,
                "more Asterisk security events skipped in the last minute (not logged one by one)"
            );
        }
    }
}

/// Says goodbye so that Asterisk does not log a dropped connection; best effort.
async fn logoff(up: &mut upstream::Upstream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), up.stream.write_all(LOGOFF)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn remote_addresses_as_asterisk_writes_them() {
        for t in ["UDP", "TCP", "TLS", "WS", "WSS"] {
            assert_eq!(
                parse_remote_address(&format!("IPV4/{t}/203.0.113.5/5060")),
                Some(ip("203.0.113.5")),
                "{t}"
            );
            assert_eq!(
                parse_remote_address(&format!("IPV6/{t}/2001:db8::5/5061")),
                Some(ip("2001:db8::5")),
                "{t}"
            );
        }
        // Without the transport (Asterisk leaves it out when it has none or several) and
        // without the port.
        assert_eq!(
            parse_remote_address("IPV4/198.51.100.7/40000"),
            Some(ip("198.51.100.7"))
        );
        assert_eq!(
            parse_remote_address("IPV4/UDP/198.51.100.7"),
            Some(ip("198.51.100.7"))
        );
        assert_eq!(
            parse_remote_address("IPV6/2001:db8:1::9"),
            Some(ip("2001:db8:1::9"))
        );
        assert_eq!(
            parse_remote_address("IPV6/UDP/2001:db8:0:0:1:0:0:1/0"),
            Some(ip("2001:db8::1:0:0:1"))
        );
        assert_eq!(parse_remote_address("IPV6/TCP/::1/65535"), Some(ip("::1")));
        let longest = format!(
            "IPV6/WSS/{}/65535",
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
        );
        assert!(parse_remote_address(&longest).is_some());
    }

    #[test]
    fn forms_asterisk_never_writes_are_refused() {
        let long = format!("IPV4/UDP/192.0.2.1/{}", "5".repeat(100));
        for bad in [
            "",
            "IPV4",
            "IPV4/",
            "IPV4/UDP",
            "IPV4/UDP/",
            "IPV4/UDP//5060",
            "IPV6/UDP/[2001:db8::5]/5060",
            "IPV6/UDP/[2001:db8::5]:5060",
            "IPV4/UDP/203.0.113.5:5060",
            "IPV4/UDP/pbx.example.com/5060",
            "IPV4/UDP/localhost/5060",
            "IPV6/UDP/fe80::1%eth0/5060",
            "IPV4/UDP/203.0.113.5/5060/",
            "IPV4/UDP/203.0.113.5/5060/x",
            "IPV4/UDP/203.0.113.5/65536",
            "IPV4/UDP/203.0.113.5/-1",
            "IPV4/UDP/203.0.113.5/",
            "IPV4/UDP/203.0.113.5/+5",
            "IPV4/UDP/203.0.113.5/123456",
            "IPV4/SCTP/203.0.113.5/5060",
            "IPV4/udp/203.0.113.5/5060",
            "ipv4/UDP/203.0.113.5/5060",
            "IPV4/UDP/UDP/203.0.113.5/5060",
            "IPV6/UDP/203.0.113.5/5060",
            "IPV4/UDP/2001:db8::5/5060",
            "IPV4/UDP/203.0.113.005/5060",
            "IPV4/UDP/203.0.113/5060",
            "IPV4/UDP/203.0.113.256/5060",
            " IPV4/UDP/203.0.113.5/5060",
            "IPV4/UDP/203.0.113.5/5060 ",
            "IPV4/UDP/ 203.0.113.5/5060",
            "IPV4/UDP/203.0.113.5\r\n/5060",
            "IPV6/UDP/(null)/(null)",
            "(null)",
            "IPV4/UDP/203.0.113.5/5060\0",
            "IPV4/UDP/٢٠٣.0.113.5/5060",
            &long,
        ] {
            assert_eq!(parse_remote_address(bad), None, "{bad:?}");
        }
        // Garbage of every length up to well past the limit: no panic.
        let junk: Vec<u8> = (0u32..600).map(|i| (i * 7919 % 251) as u8).collect();
        for n in 0..junk.len() {
            let text = String::from_utf8_lossy(&junk[..n]);
            let _ = parse_remote_address(&text);
        }
    }

    /// An event as Asterisk 22 writes it to a session: `Event`, `Privilege`, then the fields.
    fn reply(text: &str) -> Reply {
        let lines: Vec<&str> = text.lines().collect();
        Reply::from_lines(&lines)
    }

    // Field sets as main/security_events.c writes them (required fields, then the optional
    // ones Asterisk 22's reporters fill in: main/manager.c for AMI, res_pjsip/security_events.c
    // for PJSIP).
    const INVALID_ACCOUNT_PJSIP: &str = "Event: InvalidAccountID\n\
        Privilege: security,all\n\
        EventTV: 2026-12-07T20:41:02.114+0000\n\
        Severity: Error\n\
        Service: PJSIP\n\
        EventVersion: 1\n\
        AccountID: admin\n\
        SessionID: 5e3b0f6e-1c1d-4b1a-9d0f-3f1e0c9a7b21\n\
        LocalAddress: IPV4/UDP/192.0.2.10/5060\n\
        RemoteAddress: IPV4/UDP/203.0.113.5/5060";
    const INVALID_PASSWORD_AMI: &str = "Event: InvalidPassword\n\
        Privilege: security,all\n\
        EventTV: 2026-12-07T20:41:03.551+0000\n\
        Severity: Error\n\
        Service: AMI\n\
        EventVersion: 2\n\
        AccountID: pbxguard\n\
        SessionID: 0x7f2c5c0041d8\n\
        LocalAddress: IPV4/TCP/127.0.0.1/5038\n\
        RemoteAddress: IPV6/TCP/2001:db8:1::66/51512\n\
        SessionTV: 2026-12-07T20:41:03.549+0000";
    const CHALLENGE_FAILED_PJSIP: &str = "Event: ChallengeResponseFailed\n\
        Privilege: security,all\n\
        EventTV: 2026-12-07T20:41:04.010+0000\n\
        Severity: Error\n\
        Service: PJSIP\n\
        EventVersion: 1\n\
        AccountID: 1001\n\
        SessionID: 8d3c6a0b7f4e\n\
        LocalAddress: IPV4/UDP/127.0.0.1/5060\n\
        RemoteAddress: IPV4/UDP/198.51.100.23/5060\n\
        Challenge: 1733604064/4b0b8c1d3a3e9f1f2a6c7d8e9f0a1b2c\n\
        Response: 0123456789abcdef0123456789abcdef\n\
        ExpectedResponse: ";
    const FAILED_ACL_PJSIP: &str = "Event: FailedACL\n\
        Privilege: security,all\n\
        EventTV: 2026-12-07T20:41:05.200+0000\n\
        Severity: Error\n\
        Service: PJSIP\n\
        EventVersion: 1\n\
        AccountID: 1001\n\
        SessionID: a84c1e2e\n\
        LocalAddress: IPV6/TLS/2001:db8::10/5061\n\
        RemoteAddress: IPV6/TLS/2001:db8:2::7/43110\n\
        ACLName: not_match_endpoint_acl";
    const NOT_ALLOWED_AMI: &str = "Event: RequestNotAllowed\n\
        Privilege: security,all\n\
        EventTV: 2026-12-07T20:41:06.000+0000\n\
        Severity: Error\n\
        Service: AMI\n\
        EventVersion: 1\n\
        AccountID: wallboard\n\
        SessionID: 0x7f2c5c004a10\n\
        LocalAddress: IPV4/TCP/127.0.0.1/5038\n\
        RemoteAddress: IPV4/TCP/192.0.2.44/40222\n\
        RequestType: Action: Originate\n\
        SessionTV: 2026-12-07T20:41:05.990+0000";
    const UNEXPECTED_ADDRESS: &str = "Event: UnexpectedAddress\n\
        Privilege: security,all\n\
        EventTV: 2026-12-07T20:41:07.000+0000\n\
        Severity: Error\n\
        Service: IAX2\n\
        EventVersion: 2\n\
        AccountID: trunk\n\
        SessionID: 0x55d0\n\
        LocalAddress: IPV4/UDP/192.0.2.10/4569\n\
        RemoteAddress: IPV4/UDP/203.0.113.9/4569\n\
        ExpectedAddress: IPV4/UDP/198.51.100.1/4569";
    const BAD_FORMAT_AMI: &str = "Event: RequestBadFormat\n\
        Privilege: security,all\n\
        EventTV: 2026-12-07T20:41:08.000+0000\n\
        Severity: Error\n\
        Service: AMI\n\
        EventVersion: 1\n\
        SessionID: 0x7f2c5c004a10\n\
        LocalAddress: IPV4/TCP/127.0.0.1/5038\n\
        RemoteAddress: IPV4/TCP/192.0.2.45/40223\n\
        RequestType: Action: FakeActionBLAH\n\
        SessionTV: 2026-12-07T20:41:07.990+0000\n\
        AccountID: wallboard";

    fn ok(text: &str) -> SecurityEvent {
        match event_of(&reply(text)) {
            Some(Ok(ev)) => ev,
            other => panic!("{other:?} for\n{text}"),
        }
    }

    fn skipped(text: &str) -> SkipReason {
        match event_of(&reply(text)) {
            Some(Err(s)) => s.reason,
            other => panic!("{other:?} for\n{text}"),
        }
    }

    #[test]
    fn each_counted_event_is_read() {
        let cases = [
            (
                INVALID_ACCOUNT_PJSIP,
                "InvalidAccountID",
                "203.0.113.5",
                "PJSIP",
                Some("admin"),
            ),
            (
                INVALID_PASSWORD_AMI,
                "InvalidPassword",
                "2001:db8:1::66",
                "AMI",
                Some("pbxguard"),
            ),
            (
                CHALLENGE_FAILED_PJSIP,
                "ChallengeResponseFailed",
                "198.51.100.23",
                "PJSIP",
                Some("1001"),
            ),
            (
                FAILED_ACL_PJSIP,
                "FailedACL",
                "2001:db8:2::7",
                "PJSIP",
                Some("1001"),
            ),
            (
                NOT_ALLOWED_AMI,
                "RequestNotAllowed",
                "192.0.2.44",
                "AMI",
                Some("wallboard"),
            ),
            (
                UNEXPECTED_ADDRESS,
                "UnexpectedAddress",
                "203.0.113.9",
                "IAX2",
                Some("trunk"),
            ),
            (
                BAD_FORMAT_AMI,
                "RequestBadFormat",
                "192.0.2.45",
                "AMI",
                Some("wallboard"),
            ),
        ];
        let mut seen = Vec::new();
        for (text, event, addr, service, account) in cases {
            let ev = ok(text);
            assert_eq!(
                ev,
                SecurityEvent {
                    event,
                    address: ip(addr),
                    service: service.into(),
                    account: account.map(String::from),
                }
            );
            seen.push(ev.event);
        }
        assert_eq!(seen, EVENTS, "every counted event has a case");
        // RequestBadFormat's AccountID is optional: an AMI request before login has none.
        let anonymous = BAD_FORMAT_AMI.replace("\nAccountID: wallboard", "");
        assert_eq!(ok(&anonymous).account, None);
        // An empty AccountID is none too.
        let empty = INVALID_ACCOUNT_PJSIP.replace("AccountID: admin", "AccountID: ");
        assert_eq!(ok(&empty).account, None);
    }

    #[test]
    fn other_messages_are_ignored() {
        for text in [
            "Event: SuccessfulAuth\nPrivilege: security,all\nService: AMI\nAccountID: pbxguard\n\
             SessionID: 0x1\nLocalAddress: IPV4/TCP/127.0.0.1/5038\nRemoteAddress: IPV4/TCP/127.0.0.1/5000\n\
             UsingPassword: 0",
            "Event: ChallengeSent\nPrivilege: security,all\nService: PJSIP\nAccountID: 1001\n\
             SessionID: x\nLocalAddress: IPV4/UDP/127.0.0.1/5060\nRemoteAddress: IPV4/UDP/203.0.113.5/5060\n\
             Challenge: abc",
            "Event: SessionLimit\nPrivilege: security,all\nRemoteAddress: IPV4/TCP/203.0.113.5/1",
            "Event: Newchannel\nPrivilege: call,all\nChannel: PJSIP/1001-00000001",
            "Response: Success\nActionID: pbxguard-security-ping\nPing: Pong",
            // Names are Asterisk's exact spelling.
            "Event: invalidpassword\nPrivilege: security,all\nRemoteAddress: IPV4/TCP/203.0.113.5/1",
            // Event must be the first line.
            "Privilege: security,all\nEvent: InvalidPassword\nRemoteAddress: IPV4/TCP/203.0.113.5/1",
            "RemoteAddress: IPV4/TCP/203.0.113.5/1",
        ] {
            assert_eq!(event_of(&reply(text)), None, "{text}");
        }
        assert_eq!(event_of(&Reply::from_lines::<&str>(&[])), None);
    }

    #[test]
    fn an_unusable_address_is_skipped_with_the_reason() {
        for bad in [
            "IPV6/UDP/[2001:db8::5]/5060",
            "IPV4/UDP/attacker.example/5060",
            "(null)",
            "",
        ] {
            let text = INVALID_ACCOUNT_PJSIP.replace("IPV4/UDP/203.0.113.5/5060", bad);
            assert!(
                matches!(skipped(&text), SkipReason::BadAddress(ref t) if t == bad),
                "{bad}"
            );
        }
        // The address text is bounded and printable in the reason.
        let huge = format!("IPV4/UDP/{}\u{7}", "9".repeat(5000));
        let text = INVALID_ACCOUNT_PJSIP.replace("IPV4/UDP/203.0.113.5/5060", &huge[..900]);
        let SkipReason::BadAddress(shown) = skipped(&text) else {
            panic!()
        };
        assert!(shown.chars().count() <= MAX_ADDRESS_TEXT + 16);
        let e = Skipped {
            event: "InvalidPassword",
            reason: SkipReason::BadAddress("a\u{1b}[31m".into()),
        };
        assert!(!e.to_string().contains('\u{1b}'), "{e}");
    }

    /// pjsip copies the SIP From user, unescaped, into AccountID, and the digest's nonce and
    /// response into Challenge and Response; Asterisk writes them into the event as they are.
    /// A line break there must not get a chosen address banned.
    #[test]
    fn a_field_that_carried_a_line_break_is_not_believed() {
        // Injected before the real RemoteAddress: the header repeats.
        let text = INVALID_ACCOUNT_PJSIP.replace(
            "AccountID: admin",
            "AccountID: x\nRemoteAddress: IPV4/UDP/192.0.2.1/5060",
        );
        assert_eq!(skipped(&text), SkipReason::Repeated("RemoteAddress".into()));
        // Both address headers injected where the real ones would be missing.
        let text = "Event: InvalidAccountID\nPrivilege: security,all\nEventTV: t\nSeverity: Error\n\
                    Service: PJSIP\nEventVersion: 1\nAccountID: x\nLocalAddress: IPV4/UDP/192.0.2.10/5060\n\
                    RemoteAddress: IPV4/UDP/192.0.2.1/5060";
        assert_eq!(skipped(text), SkipReason::Missing("SessionID"));
        // A blank line injected into Response ends the real event early: it lacks its last
        // required field.
        let cut = CHALLENGE_FAILED_PJSIP.replace("\nExpectedResponse: ", "");
        assert_eq!(skipped(&cut), SkipReason::Missing("ExpectedResponse"));
        // Out of Asterisk's order.
        let text = FAILED_ACL_PJSIP.replace(
            "LocalAddress: IPV6/TLS/2001:db8::10/5061\nRemoteAddress: IPV6/TLS/2001:db8:2::7/43110",
            "RemoteAddress: IPV6/TLS/2001:db8:2::7/43110\nLocalAddress: IPV6/TLS/2001:db8::10/5061",
        );
        assert_eq!(skipped(&text), SkipReason::Misplaced);
        // Case-insensitive repeats count (Asterisk's header lookup is).
        let text = format!("{INVALID_PASSWORD_AMI}\nremoteaddress: IPV4/TCP/192.0.2.1/1");
        assert!(matches!(skipped(&text), SkipReason::Repeated(_)));
        // A line that is not a header.
        let text = format!("{INVALID_PASSWORD_AMI}\njust text");
        assert_eq!(skipped(&text), SkipReason::NotAHeader(12));
    }

    #[test]
    fn sizes_are_bounded() {
        let mut text = INVALID_PASSWORD_AMI.to_string();
        for i in 0..MAX_HEADERS {
            text.push_str(&format!("\nX{i}: y"));
        }
        assert_eq!(skipped(&text), SkipReason::TooLarge);
        let long = INVALID_PASSWORD_AMI.replace(
            "SessionID: 0x7f2c5c0041d8",
            &format!("SessionID: {}", "a".repeat(MAX_LINE)),
        );
        assert_eq!(skipped(&long), SkipReason::TooLarge);
        // The account kept for logs is bounded and printable.
        let account = format!("{}\u{7}tail", "é".repeat(200));
        let text =
            INVALID_ACCOUNT_PJSIP.replace("AccountID: admin", &format!("AccountID: {account}"));
        let got = ok(&text).account.unwrap();
        assert_eq!(got.chars().count(), MAX_ACCOUNT);
        let text = INVALID_ACCOUNT_PJSIP.replace("AccountID: admin", "AccountID: a\u{7}b\u{1b}");
        assert_eq!(ok(&text).account.as_deref(), Some("a?b?"));
        // Service is a module's name, nothing else.
        for bad in ["", "PJ SIP", "PJSIP\u{1b}", &"P".repeat(40)] {
            let text = INVALID_ACCOUNT_PJSIP.replace("Service: PJSIP", &format!("Service: {bad}"));
            assert!(
                matches!(skipped(&text), SkipReason::BadService(_)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn random_messages_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(21);
        let pieces = [
            "Event: InvalidPassword",
            "Event: FailedACL",
            "RemoteAddress: IPV4/UDP/203.0.113.5/5060",
            "RemoteAddress: IPV6/UDP/2001:db8::5/5060",
            "LocalAddress: IPV4/UDP/127.0.0.1/5060",
            "Service: PJSIP",
            "AccountID: \u{0}\u{ff}",
            "SessionID: 1",
            "EventTV: x",
            "Severity: Error",
            "EventVersion: 1",
            ":",
            "",
            "x",
        ];
        for _ in 0..2000 {
            let n = rng.gen_range(0..20);
            let lines: Vec<Vec<u8>> = (0..n)
                .map(|_| {
                    let mut l = pieces[rng.gen_range(0..pieces.len())].as_bytes().to_vec();
                    if rng.gen_bool(0.1) {
                        l.push(rng.gen());
                    }
                    l
                })
                .collect();
            let _ = event_of(&Reply::from_lines(&lines));
        }
    }

    /// Asterisk 22.10.1's own bytes for a REGISTER whose From user was
    /// `%0D%0ARemoteAddress%3A%20IPV4/192.0.2.1` and then `...192.0.2.1%0D%0A`, through the
    /// framer the monitor reads with.
    #[test]
    fn asterisks_bytes_with_an_injected_line_name_no_address() {
        let bytes = b"Event: InvalidAccountID\r\nPrivilege: security,all\r\n\
            EventTV: 2026-12-07T20:54:09.820+0000\r\nSeverity: Error\r\nService: PJSIP\r\n\
            EventVersion: 1\r\nAccountID: \r\nRemoteAddress: IPV4/192.0.2.1\r\n\
            SessionID: 0fa51f0dde446133\r\nLocalAddress: IPV4/UDP/127.0.0.1/36845\r\n\
            RemoteAddress: IPV4/UDP/127.0.0.2/43626\r\n\r\n\
            Event: InvalidAccountID\r\nPrivilege: security,all\r\n\
            EventTV: 2026-12-07T20:54:09.821+0000\r\nSeverity: Error\r\nService: PJSIP\r\n\
            EventVersion: 1\r\nAccountID: \r\nRemoteAddress: IPV4/192.0.2.1\r\n\r\n\
            SessionID: 07c189cd7ebe09f7\r\nLocalAddress: IPV4/UDP/127.0.0.1/36845\r\n\
            RemoteAddress: IPV4/UDP/127.0.0.2/48100\r\n\r\n";
        let mut framer = super::super::codec::UpstreamFramer::default();
        framer.buffer().extend_from_slice(bytes);
        let mut out = Vec::new();
        framer.messages(&mut out).unwrap();
        assert_eq!(out.len(), 3);
        let got: Vec<_> = out.iter().map(event_of).collect();
        assert!(
            matches!(&got[0], Some(Err(s)) if s.reason == SkipReason::Repeated("RemoteAddress".into())),
            "{got:?}"
        );
        assert!(
            matches!(&got[1], Some(Err(s)) if s.reason == SkipReason::Missing("SessionID")),
            "{got:?}"
        );
        // The rest of the event is no event.
        assert_eq!(got[2], None);
    }

    #[test]
    fn skipped_events_are_logged_at_most_twenty_a_minute() {
        let start = Instant::now();
        let mut log = SkipLog::new(start);
        let admitted = (0..25).filter(|_| log.admit()).count();
        assert_eq!(admitted, 20);
        assert_eq!(log.roll(start + Duration::from_secs(59)), None);
        assert_eq!(log.roll(start + Duration::from_secs(60)), Some(5));
        assert!(log.admit(), "a new minute logs again");
        assert_eq!(
            log.roll(start + Duration::from_secs(200)),
            None,
            "nothing went unlogged"
        );
    }

    // ---- the session, against a stand-in for Asterisk's AMI ----------------------------------

    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::TcpListener;

    /// A stand-in AMI: banner, MD5 challenge, login (recording what it was asked), then
    /// `events` and silence until the connection drops.
    async fn fake_ami(
        events: Vec<String>,
    ) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let tx = tx.clone();
                let events = events.clone();
                tokio::spawn(async move {
                    let (r, mut w) = stream.into_split();
                    let mut r = BufReader::new(r);
                    w.write_all(b"Asterisk Call Manager/11.0.0\r\n")
                        .await
                        .unwrap();
                    let mut msg = String::new();
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line != "\r\n" {
                            msg.push_str(&line);
                            continue;
                        }
                        let m = std::mem::take(&mut msg);
                        let _ = tx.send(m.clone());
                        if m.contains("Action: Challenge") {
                            w.write_all(b"Response: Success\r\nActionID: pbxguard-challenge\r\nChallenge: 123456789\r\n\r\n").await.unwrap();
                        } else if m.contains("Action: Login") {
                            w.write_all(b"Response: Success\r\nActionID: pbxguard-login\r\nMessage: Authentication accepted\r\n\r\n").await.unwrap();
                            for e in &events {
                                w.write_all(e.replace('\n', "\r\n").as_bytes())
                                    .await
                                    .unwrap();
                                w.write_all(b"\r\n\r\n").await.unwrap();
                            }
                        }
                    }
                });
            }
        });
        (addr, rx)
    }

    fn config(addr: SocketAddr) -> AmiConfig {
        let (mut cfg, problems) = crate::problems::convert_section("", AmiConfig::from_raw);
        assert!(problems.is_empty());
        cfg.upstream = addr;
        cfg.upstream_timeout = Duration::from_secs(2);
        cfg
    }

    async fn vault(dir: &std::path::Path) -> Vault {
        let url = format!("sqlite://{}", dir.join("v.db").display());
        let store = crate::store::Store::open(&url, true).await.unwrap();
        store.migrate().await.unwrap();
        let vault = Vault::new(crate::vault::Key::random(), store);
        vault.initialise().await.unwrap();
        vault.set("ami/upstream", b"secret").await.unwrap();
        vault
    }

    async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<SecurityEvent>) -> SecurityEvent {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an event within 5 s")
            .expect("the sink is alive")
    }

    #[tokio::test]
    async fn the_session_logs_in_for_security_events_only_and_follows_the_settings() {
        let dir = tempfile::tempdir().unwrap();
        let vault = vault(dir.path()).await;
        let (first, mut first_seen) = fake_ami(vec![
            "Event: SuccessfulAuth\nPrivilege: security,all\nService: AMI".into(),
            INVALID_PASSWORD_AMI.into(),
            INVALID_ACCOUNT_PJSIP
                .replace("IPV4/UDP/203.0.113.5/5060", "IPV4/UDP/[203.0.113.5]/5060"),
            FAILED_ACL_PJSIP.into(),
        ])
        .await;
        let (second, mut second_seen) = fake_ami(vec![NOT_ALLOWED_AMI.into()]).await;
        let current = Arc::new(std::sync::Mutex::new(Some(config(first))));
        let settings = Settings {
            config: {
                let current = current.clone();
                Arc::new(move || current.lock().unwrap().clone())
            },
            vault,
        };
        let (tx, mut got) = tokio::sync::mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let monitor = Monitor::spawn(
            &tracker,
            stop.clone(),
            settings,
            Arc::new(move |ev| {
                let _ = tx.send(ev);
            }),
        );
        assert_eq!(next(&mut got).await.address, ip("2001:db8:1::66"));
        // The bracketed address is skipped; the stream goes on.
        assert_eq!(next(&mut got).await.address, ip("2001:db8:2::7"));
        let challenge = first_seen.recv().await.unwrap();
        assert!(challenge.contains("AuthType: MD5"), "{challenge}");
        let login = first_seen.recv().await.unwrap();
        assert!(login.contains("Events: security\r\n"), "{login}");
        assert!(login.contains("Username: pbxguard\r\n"), "{login}");
        assert!(
            login.contains(&format!(
                "Key: {}\r\n",
                upstream::md5_key(b"123456789", b"secret")
            )),
            "{login}"
        );
        assert!(
            !login.contains("secret\r\n"),
            "the secret crossed the socket: {login}"
        );
        let stats = monitor.stats();
        assert_eq!(
            (stats.events, stats.skipped, stats.logins),
            (2, 1, 1),
            "{stats:?}"
        );
        assert!(stats.connected && stats.class_confirmed, "{stats:?}");

        // A reload moves [ami] upstream: the monitor says goodbye and follows.
        *current.lock().unwrap() = Some(config(second));
        assert_eq!(next(&mut got).await.address, ip("192.0.2.44"));
        let logoff = first_seen.recv().await.unwrap();
        assert!(logoff.contains("Action: Logoff"), "{logoff}");
        assert!(second_seen
            .recv()
            .await
            .unwrap()
            .contains("Action: Challenge"));
        assert_eq!(monitor.stats().logins, 2);

        // [ami] removed: the monitor leaves and waits.
        *current.lock().unwrap() = None;
        let logoff = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let m = second_seen.recv().await.unwrap();
                if m.contains("Logoff") {
                    return m;
                }
            }
        })
        .await
        .unwrap();
        assert!(logoff.contains("pbxguard-security-logoff"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!monitor.stats().connected);

        stop.cancel();
        tracker.close();
        tokio::time::timeout(Duration::from_secs(5), tracker.wait())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_missing_vault_secret_is_retried_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let vault = vault(dir.path()).await;
        let (addr, mut seen) = fake_ami(vec![INVALID_PASSWORD_AMI.into()]).await;
        let mut cfg = config(addr);
        cfg.upstream_secret = "ami/later".into();
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let (tx, mut got) = tokio::sync::mpsc::unbounded_channel();
        let monitor = Monitor::spawn(
            &tracker,
            stop.clone(),
            Settings::fixed(cfg, vault.clone()),
            Arc::new(move |ev| {
                let _ = tx.send(ev);
            }),
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Without its secret the monitor does not even connect.
        assert!(seen.try_recv().is_err());
        assert_eq!(monitor.stats(), Stats::default());
        vault.set("ami/later", b"secret").await.unwrap();
        assert_eq!(next(&mut got).await.event, "InvalidPassword");
        assert_eq!(monitor.stats().logins, 1);
        stop.cancel();
        tracker.close();
        tokio::time::timeout(Duration::from_secs(5), tracker.wait())
            .await
            .unwrap();
    }
}
