//! One AMI client connection: the banner, the login (answered by pbxguard, with Asterisk's
//! texts and timing), then the relay to the client's own Asterisk session.
//!
//! Ordering: Asterisk answers a session's actions strictly in turn. An answer pbxguard makes
//! itself (a refusal, a rate limit) must not overtake the answers to earlier forwarded actions,
//! list events included, so it rides on a `Ping` sent to Asterisk in its place: when that
//! Ping's answer comes back, pbxguard's answer goes out instead. The refused action itself never
//! reaches Asterisk.
//!
//! Attribution: every forwarded action carries an `ActionID` prefixed with this session's
//! random tag (restored before the client sees it). Asterisk broadcasts `OriginateResponse`
//! to every session; one whose ActionID carries another session's tag is dropped here, so it
//! reaches only the client that asked.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::classes;
use super::codec::{header_value, ClientFramer, Message, Reply};
use super::guards::{BanRules, Bucket};
use super::policy::{ClientPolicy, Verdict};
use super::upstream::{self, Upstream, UpstreamError};
use super::{try_slot, Gateway};
use crate::config::AmiConfig;
use crate::metrics::ResultLabels;
use crate::store::AuditEntry;

/// Asterisk sleeps this long before answering a failed login.
const AUTH_FAILURE_DELAY: Duration = Duration::from_secs(1);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes handed to one write to the client at most (coalesced small messages).
const WRITE_BATCH: usize = 64 << 10;
/// A write to the client that makes no progress for this long ends the session (Asterisk's
/// `writetimeout` is 100 ms; the output queue absorbs bursts, this catches a reader that
/// stopped altogether).
const WRITE_STALL: Duration = Duration::from_secs(10);
/// Output allowed to pile up before login: answers to a flood of junk stay small.
const UNAUTHENTICATED_OUTPUT: usize = 64 << 10;
/// Messages a connection may send before logging in; no client needs more than a few.
const MAX_MESSAGES_BEFORE_LOGIN: usize = 64;

/// An answer as Asterisk formats it (`astman_send_response_full`).
fn answer(response: &str, action_id: Option<&[u8]>, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + message.len());
    out.extend_from_slice(b"Response: ");
    out.extend_from_slice(response.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(id) = action_id {
        out.extend_from_slice(b"ActionID: ");
        out.extend_from_slice(id);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Message: ");
    out.extend_from_slice(message.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out
}

/// The client's output queue; overflowing it ends the session (Asterisk drops slow readers
/// too, rather than buffering without bound).
#[derive(Clone)]
struct Output {
    tx: mpsc::UnboundedSender<Bytes>,
    queued: Arc<AtomicUsize>,
    /// Small until login (nothing legitimate is large before it), `max_output_bytes` after.
    limit: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct Overflow;

impl Output {
    fn send(&self, bytes: impl Into<Bytes>) -> Result<(), Overflow> {
        let bytes = bytes.into();
        let n = bytes.len();
        if self.queued.fetch_add(n, Ordering::AcqRel) + n > self.limit.load(Ordering::Acquire) {
            return Err(Overflow);
        }
        self.tx.send(bytes).map_err(|_| Overflow)
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    queued: Arc<AtomicUsize>,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while let Some(first) = rx.recv().await {
        // Small pieces waiting together go out in one write; a lone piece is written as is.
        let mut next = rx.try_recv().ok();
        let written = if next.is_none() {
            if !matches!(timeout(WRITE_STALL, w.write_all(&first)).await, Ok(Ok(()))) {
                return;
            }
            first.len()
        } else {
            batch.clear();
            batch.extend_from_slice(&first);
            while let Some(more) = next.take() {
                batch.extend_from_slice(&more);
                if batch.len() < WRITE_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            if !matches!(timeout(WRITE_STALL, w.write_all(&batch)).await, Ok(Ok(()))) {
                return;
            }
            batch.len()
        };
        if !matches!(timeout(WRITE_STALL, w.flush()).await, Ok(Ok(()))) {
            return;
        }
        queued.fetch_sub(written, Ordering::AcqRel);
    }
    let _ = w.shutdown().await;
}

/// Entry point for one accepted connection.
pub async fn run(
    gw: Arc<Gateway>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    stop: CancellationToken,
) {
    let Some(cfg) = gw.config() else { return };
    let counters = gw.clone();
    let Some(_client) = try_slot(&counters.clients, cfg.max_clients) else {
        debug!(%peer, "AMI connection refused: max_clients reached");
        gw.app
            .metrics
            .connections_refused
            .get_or_create(&crate::metrics::ListenerLabels { listener: "ami" })
            .inc();
        return;
    };
    // Asterisk's authlimit: over it, the connection is closed without a banner.
    let Some(unauth) = try_slot(&counters.unauthenticated, cfg.max_unauthenticated) else {
        debug!(%peer, "AMI connection refused: max_unauthenticated reached");
        return;
    };
    let _ = stream.set_nodelay(true);
    let tls = gw.tls.load_full();
    match tls {
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(s)) => client(gw, s, peer, stop, cfg, unauth).await,
                _ => {
                    debug!(%peer, "AMI TLS handshake failed");
                    gw.app
                        .metrics
                        .tls_handshake_failures
                        .get_or_create(&crate::metrics::ListenerLabels { listener: "ami" })
                        .inc();
                }
            }
        }
        None => client(gw, stream, peer, stop, cfg, unauth).await,
    }
}

/// What the login phase ended with.
struct Accepted {
    policy: ClientPolicy,
    upstream: Upstream,
    mask: u32,
    /// Messages the client pipelined after its Login.
    rest: VecDeque<Message>,
}

enum Login {
    Accepted(Box<Accepted>),
    Close,
}

async fn client<S>(
    gw: Arc<Gateway>,
    stream: S,
    peer: SocketAddr,
    stop: CancellationToken,
    cfg: AmiConfig,
    unauth: super::Slot<'_>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(stream);
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let out = Output {
        tx,
        queued: queued.clone(),
        limit: Arc::new(AtomicUsize::new(UNAUTHENTICATED_OUTPUT)),
    };
    let mut writer = tokio::spawn(write_loop(wr, rx, queued));
    let banner = format!("{}\r\n", gw.banner.load());
    let _ = out.send(banner.into_bytes());

    let mut framer = ClientFramer::default();
    let deadline = tokio::time::Instant::now() + cfg.auth_timeout;
    let login = tokio::select! {
        _ = stop.cancelled() => Login::Close,
        r = tokio::time::timeout_at(deadline, login(&gw, &cfg, &mut rd, &mut framer, &out, peer)) => {
            r.unwrap_or_else(|_| {
                debug!(%peer, "AMI client did not log in within auth_timeout");
                Login::Close
            })
        }
    };
    drop(unauth);
    if let Login::Accepted(accepted) = login {
        out.limit.store(cfg.max_output_bytes, Ordering::Release);
        let policy = accepted.policy.clone();
        gw.app.metrics.ami_sessions.inc();
        info!(client = %policy.name, %peer, "AMI client logged in");
        let (id, end) = gw.register(&policy.name, policy.updated_at, &stop);
        let why = relay(&gw, &cfg, (rd, framer), &out, peer, *accepted, end).await;
        gw.unregister(id);
        gw.app.metrics.ami_sessions.dec();
        info!(client = %policy.name, %peer, reason = why, "AMI client session ended");
    }
    drop(out);
    // The writer ends once the queue is drained; a client that stopped reading could hold it
    // forever (and with it the socket and the queued bytes), so it is cut off.
    if tokio::time::timeout(Duration::from_secs(5), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

async fn read_messages<R: AsyncRead + Unpin>(
    rd: &mut R,
    framer: &mut ClientFramer,
    queue: &mut VecDeque<Message>,
) -> bool {
    let mut buf = [0u8; 8192];
    match rd.read(&mut buf).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            let mut out = Vec::new();
            framer.push(&buf[..n], &mut out);
            queue.extend(out);
            true
        }
    }
}

/// Answers Asterisk gives to a message it cannot run, whoever the client is.
fn malformed(msg: &Message) -> Option<Vec<u8>> {
    let id = msg.action_id();
    if msg.line_too_long {
        return Some(answer(
            "Error",
            id,
            "Failed to parse message: line too long",
        ));
    }
    if msg.header_loss {
        return Some(answer(
            "Error",
            id,
            "Too many lines in message or allocation failure",
        ));
    }
    if msg.action().is_none() {
        return Some(answer("Error", id, "Missing action in request"));
    }
    None
}

fn lower(v: &[u8]) -> String {
    String::from_utf8_lossy(v).to_ascii_lowercase()
}

fn challenge_text() -> String {
    // `snprintf(challenge, 10, "%ld", ast_random())`: decimal, at most 9 characters.
    let mut s = (rand::random::<u32>() & 0x7fff_ffff).to_string();
    s.truncate(9);
    s
}

fn challenge_answer(msg: &Message, challenge: &mut Option<String>) -> Vec<u8> {
    let id = msg.action_id();
    if !msg
        .get("AuthType")
        .is_some_and(|t| t.eq_ignore_ascii_case(b"md5"))
    {
        return answer("Error", id, "Must specify AuthType");
    }
    let c = challenge.get_or_insert_with(challenge_text);
    let mut out = b"Response: Success\r\n".to_vec();
    if let Some(id) = id {
        out.extend_from_slice(b"ActionID: ");
        out.extend_from_slice(id);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("Challenge: {c}\r\n\r\n").as_bytes());
    out
}

async fn login<R: AsyncRead + Unpin>(
    gw: &Gateway,
    cfg: &AmiConfig,
    rd: &mut R,
    framer: &mut ClientFramer,
    out: &Output,
    peer: SocketAddr,
) -> Login {
    let mut queue = VecDeque::new();
    let mut challenge: Option<String> = None;
    let mut seen = 0;
    loop {
        while let Some(msg) = queue.pop_front() {
            seen += 1;
            if seen > MAX_MESSAGES_BEFORE_LOGIN {
                debug!(%peer, "AMI connection closed: too many messages before login");
                return Login::Close;
            }
            if let Some(err) = malformed(&msg) {
                if out.send(err).is_err() {
                    return Login::Close;
                }
                continue;
            }
            let action = lower(msg.action().unwrap_or_default());
            let id = msg.action_id();
            let reply = match action.as_str() {
                "challenge" => challenge_answer(&msg, &mut challenge),
                "logoff" => {
                    let _ = out.send(answer("Goodbye", id, "Thanks for all the fish."));
                    return Login::Close;
                }
                "login" => {
                    return match authenticate(gw, cfg, &msg, challenge.as_deref(), peer).await {
                        Ok((policy, upstream, mask)) => {
                            if out
                                .send(answer("Success", id, "Authentication accepted"))
                                .is_err()
                            {
                                return Login::Close;
                            }
                            Login::Accepted(Box::new(Accepted {
                                policy,
                                upstream,
                                mask,
                                rest: queue,
                            }))
                        }
                        Err(message) => {
                            let _ = out.send(answer("Error", id, message));
                            Login::Close
                        }
                    };
                }
                _ => answer("Error", id, "Permission denied"),
            };
            if out.send(reply).is_err() {
                return Login::Close;
            }
        }
        if !read_messages(rd, framer, &mut queue).await {
            return Login::Close;
        }
    }
}

/// Checks the client's credentials and gets it an Asterisk session. The error is the message
/// for the client: Asterisk's `Authentication failed` for every credential problem (after its
/// one-second delay), a plain statement when Asterisk itself cannot be reached.
async fn authenticate(
    gw: &Gateway,
    cfg: &AmiConfig,
    msg: &Message,
    challenge: Option<&str>,
    peer: SocketAddr,
) -> Result<(ClientPolicy, Upstream, u32), &'static str> {
    let username = lower(msg.get("Username").unwrap_or_default());
    let rules = BanRules {
        threshold: cfg.ban_threshold,
        window: cfg.ban_window,
        duration: cfg.ban_duration,
    };
    let metrics = &gw.app.metrics;
    let verdict = check_credentials(gw, msg, &username, challenge, peer).await;
    let username = truncate(&username, 64);
    let policy = match verdict {
        Ok(p) => p,
        Err(Failure { reason, counts }) => {
            let now = Instant::now();
            let banned = reason == BANNED;
            let user = (counts == Counts::AddressAndUser).then_some(username.as_str());
            if counts != Counts::Nothing && gw.bans.failure(peer.ip(), user, rules, now) {
                warn!(%peer, user = %username, duration = ?cfg.ban_duration, "AMI login ban started after repeated failures");
            }
            warn!(%peer, user = %username, reason, "AMI login failed");
            metrics
                .ami_logins
                .get_or_create(&ResultLabels {
                    result: if banned { "banned" } else { "failed" },
                })
                .inc();
            gw.app.recordings.journal.record(AuditEntry {
                at: crate::clock::now_unix(),
                actor: format!("ami:{username}"),
                action: "ami.login_failed".into(),
                target: peer.ip().to_string(),
                detail: reason.to_string(),
            });
            tokio::time::sleep(AUTH_FAILURE_DELAY).await;
            return Err("Authentication failed");
        }
    };
    let requested = msg
        .get("Events")
        .and_then(classes::strings_to_mask)
        .unwrap_or(u32::MAX);
    let mask = requested & policy.read;
    let events = classes::mask_text(mask);
    match gw.upstream_for(cfg, &events).await {
        Ok(up) => {
            metrics
                .ami_logins
                .get_or_create(&ResultLabels { result: "ok" })
                .inc();
            Ok((policy, up, mask))
        }
        Err(e) => {
            warn!(%peer, client = %policy.name, error = %e, "AMI login refused: Asterisk is unreachable");
            metrics
                .ami_logins
                .get_or_create(&ResultLabels {
                    result: "upstream_down",
                })
                .inc();
            Err("Asterisk is not reachable through pbxguard; try again later")
        }
    }
}

const BANNED: &str = "banned after repeated failures";

/// What a failed login counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counts {
    /// pbxguard's own trouble (store, vault), or an attempt while banned.
    Nothing,
    Address,
    /// A wrong secret for an existing user from an address it may log in from.
    AddressAndUser,
}

struct Failure {
    reason: &'static str,
    counts: Counts,
}

fn fail(reason: &'static str, counts: Counts) -> Result<ClientPolicy, Failure> {
    Err(Failure { reason, counts })
}

async fn check_credentials(
    gw: &Gateway,
    msg: &Message,
    username: &str,
    challenge: Option<&str>,
    peer: SocketAddr,
) -> Result<ClientPolicy, Failure> {
    if gw
        .bans
        .check(peer.ip(), Some(username), Instant::now())
        .is_some()
    {
        return fail(BANNED, Counts::Nothing);
    }
    let Ok(name) = super::normalise_name(username) else {
        return fail("unknown user", Counts::Address);
    };
    let row = match gw.app.store.ami_client(&name).await {
        Ok(Some(row)) => row,
        Ok(None) => return fail("unknown user", Counts::Address),
        Err(e) => {
            warn!(error = %e, "AMI client lookup failed");
            return fail("store unavailable", Counts::Nothing);
        }
    };
    let policy = super::policy_from_row(&row);
    let ip = crate::web::canonical_ip(peer.ip());
    if !policy.permit.iter().any(|net| net.contains(&ip)) {
        return fail(
            "source address not in the client's permit list",
            Counts::Address,
        );
    }
    let secret = match gw.app.vault.get(&super::client_secret_name(&name)).await {
        Ok(s) => s,
        Err(e) => {
            warn!(client = %name, error = %e, "AMI client secret unavailable");
            return fail("secret unavailable", Counts::Nothing);
        }
    };
    let md5 = msg
        .get("AuthType")
        .is_some_and(|t| t.eq_ignore_ascii_case(b"md5"));
    // Digests of equal length are compared, so the time taken says nothing about lengths.
    let same = |a: &[u8], b: &[u8]| bool::from(Sha256::digest(a).ct_eq(&Sha256::digest(b)));
    let ok = if md5 {
        match (challenge, msg.get("Key")) {
            (Some(c), Some(key)) => same(upstream::md5_key(c.as_bytes(), &secret).as_bytes(), key),
            _ => false,
        }
    } else {
        same(&secret, msg.get("Secret").unwrap_or_default())
    };
    if ok {
        Ok(policy)
    } else {
        fail("wrong secret or key", Counts::AddressAndUser)
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// Sends `Events` on a pooled session and consumes the answer.
pub(super) async fn set_events(
    up: &mut Upstream,
    events: &str,
    timeout: Duration,
) -> Result<(), UpstreamError> {
    let action =
        format!("Action: Events\r\nActionID: pbxguard-events\r\nEventMask: {events}\r\n\r\n");
    let exchange = async {
        up.stream.write_all(action.as_bytes()).await?;
        let mut replies = Vec::new();
        loop {
            up.framer.messages(&mut replies)?;
            if let Some(pos) = replies
                .iter()
                .position(|r| r.get("ActionID") == Some(b"pbxguard-events"))
            {
                // Anything else that arrived first (none expected) is dropped with it.
                replies.drain(..=pos);
                return Ok(());
            }
            if up.stream.read_buf(up.framer.buffer()).await? == 0 {
                return Err(UpstreamError::Closed);
            }
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| UpstreamError::Closed)?
}

/// State the two halves of a relay share.
struct Shared {
    tag: String,
    /// Answers made by pbxguard, waiting for the Ping that stands in for them.
    markers: Mutex<VecDeque<(u64, Vec<u8>)>>,
    /// The event classes the client asked for, within what it may read.
    mask: AtomicU32,
    read: u32,
}

/// Another session's tag: `pbxg` + 16 hex digits + `-`, `.` or `!`.
fn is_session_tag(v: &[u8]) -> bool {
    v.len() > 20
        && v.starts_with(b"pbxg")
        && v[4..20].iter().all(u8::is_ascii_hexdigit)
        && matches!(v[20], b'-' | b'.' | b'!')
}

impl Shared {
    /// What the client gets for one message from Asterisk, if anything.
    fn deliver(&self, reply: Reply) -> Option<Bytes> {
        let id_line = reply
            .lines()
            .position(|l| header_value(l, "ActionID").is_some());
        // Which line to replace (with `Some(new)`) or drop (`None`) before the client sees it.
        let mut edit: Option<(usize, Option<Vec<u8>>)> = None;
        if let Some(i) = id_line {
            let value = reply
                .lines()
                .nth(i)
                .and_then(|l| header_value(l, "ActionID"))
                .unwrap_or_default();
            if let Some(rest) = value.strip_prefix(self.tag.as_bytes()) {
                match rest.first() {
                    Some(b'-') => {
                        let mut line = b"ActionID: ".to_vec();
                        line.extend_from_slice(&rest[1..]);
                        edit = Some((i, Some(line)));
                    }
                    Some(b'.') => edit = Some((i, None)),
                    Some(b'!') => {
                        let n: u64 = std::str::from_utf8(&rest[1..]).ok()?.parse().ok()?;
                        let mut markers = self.markers.lock().unwrap_or_else(|e| e.into_inner());
                        let pos = markers.iter().position(|(m, _)| *m == n)?;
                        return markers.remove(pos).map(|(_, bytes)| Bytes::from(bytes));
                    }
                    _ => {}
                }
            } else if is_session_tag(value) && reply.is_event() {
                // Another client's broadcast. Its OriginateResponse belongs to that client
                // alone; anything else (a UserEvent carries its sender's headers) is shown with
                // the sender's own ActionID, as Asterisk would.
                if reply.get("Event") == Some(b"OriginateResponse") {
                    return None;
                }
                let rest = &value[20..];
                edit = match rest.first() {
                    Some(b'-') => {
                        let mut line = b"ActionID: ".to_vec();
                        line.extend_from_slice(&rest[1..]);
                        Some((i, Some(line)))
                    }
                    Some(b'.') => Some((i, None)),
                    _ => return None,
                };
            }
        }
        if reply.is_event() {
            if let Some(p) = reply.get("Privilege") {
                let cat = classes::privilege_mask(p);
                let mask = self.mask.load(Ordering::Acquire);
                if self.read & cat != cat || mask & cat != cat {
                    return None;
                }
            }
        }
        let Some((i, replacement)) = edit else {
            return Some(reply.raw);
        };
        let mut out = Vec::with_capacity(reply.raw.len() + 2);
        for (n, line) in reply.lines().enumerate() {
            let line = if n == i {
                match &replacement {
                    Some(new) => new.as_slice(),
                    None => continue,
                }
            } else {
                line
            };
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        Some(Bytes::from(out))
    }
}

/// Actions that only read; every other forwarded action is written to the audit log.
fn is_read_only(action: &str) -> bool {
    const EXACT: &[&str] = &[
        "ping",
        "events",
        "logoff",
        "challenge",
        "login",
        "status",
        "getvar",
        "extensionstate",
        "presencestate",
        "mailboxstatus",
        "mailboxcount",
        "getconfig",
        "getconfigjson",
        "listcategories",
        "coresettings",
        "corestatus",
        "queuestatus",
        "queuesummary",
        "queues",
        "sippeers",
        "iaxpeers",
        "iaxpeerlist",
        "agents",
        "parkedcalls",
        "waitevent",
        "dbget",
        "bridgeinfo",
        "devicestatelist",
        "presencestatelist",
        "mailboxlist",
    ];
    const PREFIXES: &[&str] = &[
        "show",
        "list",
        "coreshow",
        "pjsipshow",
        "sipshow",
        "confbridgelist",
        "bridgelist",
    ];
    EXACT.contains(&action) || PREFIXES.iter().any(|p| action.starts_with(p))
}

/// The headers worth keeping in the audit log: everything but the action, its id and secrets.
fn audit_detail(msg: &Message) -> String {
    const SKIP: &[&str] = &["Action", "ActionID", "Secret", "Key", "Password"];
    let mut parts = Vec::new();
    for line in &msg.lines {
        if SKIP.iter().any(|h| header_value(line, h).is_some()) {
            continue;
        }
        parts.push(String::from_utf8_lossy(line).into_owned());
    }
    truncate(&parts.join("; "), 1000)
}

struct Relay<'a> {
    gw: &'a Gateway,
    cfg: &'a AmiConfig,
    shared: Arc<Shared>,
    policy: ClientPolicy,
    peer: SocketAddr,
    bucket: Bucket,
    next_marker: u64,
    /// The marker of the last message sent to Asterisk, when that was a stand-in Ping.
    open_marker: Option<u64>,
    warned_rate: bool,
    challenge: Option<String>,
}

impl Relay<'_> {
    fn audit(&self, action: &str, detail: String) {
        self.gw.app.recordings.journal.record(AuditEntry {
            at: crate::clock::now_unix(),
            actor: format!("ami:{}", self.policy.name),
            action: action.to_string(),
            target: self.peer.ip().to_string(),
            detail,
        });
    }

    fn count(&self, result: &'static str) {
        self.gw
            .app
            .metrics
            .ami_actions
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// The bytes to send to Asterisk for one client message.
    fn handle(&mut self, mut msg: Message) -> Vec<u8> {
        let raw_action = msg.action().unwrap_or_default().to_vec();
        let action = lower(&raw_action);
        let shown = truncate(&String::from_utf8_lossy(&raw_action), 64);
        // Every message counts, junk included: each costs Asterisk a round trip.
        let local = if !self.bucket.take(
            self.cfg.action_rate,
            self.cfg.action_burst,
            Instant::now(),
        ) {
            self.count("rate_limited");
            if !self.warned_rate {
                warn!(client = %self.policy.name, peer = %self.peer, action = %shown, "AMI actions refused: rate limit (logged once per session)");
                self.warned_rate = true;
            }
            Some(answer(
                "Error",
                msg.action_id(),
                &format!(
                    "Rate limit exceeded ({} actions per second); action not run",
                    self.cfg.action_rate
                ),
            ))
        } else if let Some(err) = malformed(&msg) {
            Some(err)
        } else {
            let id = msg.action_id().map(<[u8]>::to_vec);
            let id = id.as_deref();
            match action.as_str() {
                "login" => Some(answer("Success", id, "Already authenticated")),
                "challenge" => Some(challenge_answer(&msg, &mut self.challenge)),
                _ => match self.policy.decide(&action, &msg) {
                    Verdict::Refuse(refusal) => {
                        self.count("refused");
                        let rule = refusal.rule.map(|r| r.name()).unwrap_or("not_allowed");
                        warn!(client = %self.policy.name, peer = %self.peer, action = %shown, rule, "AMI action refused");
                        self.audit(
                            "ami.refused",
                            truncate(
                                &format!(
                                    "{shown} ({rule}): {}; {}",
                                    refusal.message,
                                    audit_detail(&msg)
                                ),
                                1000,
                            ),
                        );
                        Some(answer("Error", id, &refusal.message))
                    }
                    Verdict::Pass { overrides } => {
                        if overrides.is_empty() {
                            self.count("forwarded");
                        } else {
                            self.count("override");
                            let rules: Vec<&str> = overrides.iter().map(|r| r.name()).collect();
                            warn!(client = %self.policy.name, peer = %self.peer, action = %shown, overrides = ?rules,
                                "AMI action passed ONLY because of a configured override of a built-in refusal");
                        }
                        if !is_read_only(&action) || !overrides.is_empty() {
                            self.audit(&format!("ami.{shown}"), audit_detail(&msg));
                        }
                        if action == "events" {
                            self.rewrite_event_mask(&mut msg);
                        }
                        if self.tag_action_id(&mut msg) {
                            None
                        } else {
                            Some(answer(
                                "Error",
                                id,
                                "ActionID too long to forward (pbxguard needs 21 more bytes of the line)",
                            ))
                        }
                    }
                },
            }
        };
        match local {
            Some(bytes) => self.answer_locally(bytes),
            None => {
                self.open_marker = None;
                msg.to_bytes()
            }
        }
    }

    /// Queues pbxguard's own answer behind everything sent so far; returns the Ping to send
    /// (nothing when the previous message was also answered here: the answer joins its Ping,
    /// so a flood of refusals costs Asterisk one round trip, not one each).
    fn answer_locally(&mut self, bytes: Vec<u8>) -> Vec<u8> {
        let mut markers = self
            .shared
            .markers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let (Some(open), Some(back)) = (self.open_marker, markers.back_mut()) {
            if back.0 == open {
                back.1.extend_from_slice(&bytes);
                return Vec::new();
            }
        }
        self.next_marker += 1;
        let n = self.next_marker;
        markers.push_back((n, bytes));
        self.open_marker = Some(n);
        format!("Action: Ping\r\nActionID: {}!{n}\r\n\r\n", self.shared.tag).into_bytes()
    }

    /// Puts this session's tag in front of the ActionID Asterisk will read (adding one when
    /// there is none), so that answers and broadcasts can be attributed. False when there is
    /// no room (the line would not fit Asterisk's buffer, or the message has 128 lines): such
    /// an action is refused rather than sent untagged, whose broadcasts could not be kept
    /// from other clients.
    fn tag_action_id(&self, msg: &mut Message) -> bool {
        match msg.action_id_line() {
            Some(i) if msg.action_id().is_some() => {
                let value = header_value(&msg.lines[i], "ActionID").unwrap_or_default();
                let mut line = format!("ActionID: {}-", self.shared.tag).into_bytes();
                line.extend_from_slice(value);
                if line.len() > super::codec::MAX_FORWARD_LINE {
                    return false;
                }
                msg.lines[i] = line;
                true
            }
            // No ActionID (or an empty one, which Asterisk ignores): ours goes first.
            _ if msg.lines.len() < super::codec::MAX_HEADERS => {
                msg.lines
                    .insert(0, format!("ActionID: {}.", self.shared.tag).into_bytes());
                true
            }
            _ => false,
        }
    }

    /// `Events` asks Asterisk for the client's classes within what the client may read. When
    /// that leaves nothing although the client asked for something, Asterisk is asked for the
    /// `test` class (which the filter here drops) so that it still answers `Events: On`.
    fn rewrite_event_mask(&self, msg: &mut Message) {
        let Some(i) = msg
            .lines
            .iter()
            .position(|l| header_value(l, "EventMask").is_some())
        else {
            return;
        };
        let value = header_value(&msg.lines[i], "EventMask").unwrap_or_default();
        let Some(requested) = classes::strings_to_mask(value) else {
            return;
        };
        let mask = requested & self.shared.read;
        self.shared.mask.store(mask, Ordering::Release);
        let text = if mask == 0 && requested != 0 {
            "test".to_string()
        } else {
            classes::mask_text(mask)
        };
        msg.lines[i] = format!("EventMask: {text}").into_bytes();
    }
}

/// Relays between the client (`input`: its reader and the framer holding any partial message)
/// and its Asterisk session until either side ends; returns why.
async fn relay<R: AsyncRead + Unpin>(
    gw: &Gateway,
    cfg: &AmiConfig,
    input: (R, ClientFramer),
    out: &Output,
    peer: SocketAddr,
    accepted: Accepted,
    stop: CancellationToken,
) -> &'static str {
    let (mut rd, mut framer) = input;
    let Accepted {
        policy,
        upstream,
        mask,
        rest: mut queue,
    } = accepted;
    let shared = Arc::new(Shared {
        tag: format!("pbxg{:016x}", rand::random::<u64>()),
        markers: Mutex::new(VecDeque::new()),
        mask: AtomicU32::new(mask),
        read: policy.read,
    });
    let Upstream {
        stream,
        framer: mut up_framer,
        ..
    } = upstream;
    let (mut up_rd, mut up_wr) = stream.into_split();
    let mut relay = Relay {
        gw,
        cfg,
        shared: shared.clone(),
        policy,
        peer,
        bucket: Bucket::new(cfg.action_burst, Instant::now()),
        next_marker: 0,
        open_marker: None,
        warned_rate: false,
        challenge: None,
    };

    // Its own task: Asterisk's output is drained even while a write to Asterisk waits (else a
    // burst of actions could stall both directions and Asterisk's writetimeout cut the session).
    let mut from_asterisk = {
        let shared = shared.clone();
        let out = out.clone();
        let slow = gw.app.metrics.ami_slow_clients.clone();
        tokio::spawn(async move {
            let mut replies = Vec::new();
            let mut batch = Vec::new();
            loop {
                if up_framer.messages(&mut replies).is_err() {
                    return "Asterisk sent an oversized message";
                }
                // Everything one read brought goes to the client as one piece.
                let mut single = None;
                for reply in replies.drain(..) {
                    if let Some(bytes) = shared.deliver(reply) {
                        match single.take() {
                            None if batch.is_empty() => single = Some(bytes),
                            prev => {
                                if let Some(prev) = prev {
                                    batch.extend_from_slice(&prev);
                                }
                                batch.extend_from_slice(&bytes);
                            }
                        }
                    }
                }
                let piece = match single {
                    Some(b) => Some(b),
                    None if !batch.is_empty() => Some(Bytes::from(std::mem::take(&mut batch))),
                    None => None,
                };
                if let Some(piece) = piece {
                    if out.send(piece).is_err() {
                        slow.inc();
                        return "the client read too slowly (output queue full)";
                    }
                }
                match up_rd.read_buf(up_framer.buffer()).await {
                    Ok(0) | Err(_) => return "Asterisk closed the session",
                    Ok(_) => {}
                }
            }
        })
    };

    let mut buf = vec![0u8; 8192];
    let mut to_asterisk = Vec::new();
    let why = loop {
        to_asterisk.clear();
        while let Some(msg) = queue.pop_front() {
            to_asterisk.extend_from_slice(&relay.handle(msg));
        }
        if !to_asterisk.is_empty()
            && !matches!(
                timeout(WRITE_STALL, up_wr.write_all(&to_asterisk)).await,
                Ok(Ok(()))
            )
        {
            break "Asterisk stopped taking actions";
        }
        tokio::select! {
            _ = stop.cancelled() => break "ended by pbxguard (shutdown, or the client was removed or changed)",
            why = &mut from_asterisk => {
                let why = why.unwrap_or("the Asterisk reader failed");
                if why.starts_with("the client") {
                    warn!(client = %relay.policy.name, %peer, "AMI client disconnected: output queue full (slow reader)");
                }
                return why;
            }
            r = rd.read(&mut buf) => match r {
                Ok(0) | Err(_) => break "the client disconnected",
                Ok(n) => {
                    let mut msgs = Vec::new();
                    framer.push(&buf[..n], &mut msgs);
                    queue.extend(msgs);
                }
            }
        }
    };
    from_asterisk.abort();
    // Log off politely so Asterisk does not report a dropped manager session.
    let _ = tokio::time::timeout(
        Duration::from_millis(200),
        up_wr.write_all(b"Action: Logoff\r\n\r\n"),
    )
    .await;
    why
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(read: u32, mask: u32) -> Shared {
        Shared {
            tag: "pbxg0123456789abcdef".into(),
            markers: Mutex::new(VecDeque::new()),
            mask: AtomicU32::new(mask),
            read,
        }
    }

    fn reply(lines: &[&str]) -> Reply {
        Reply::from_lines(lines)
    }

    #[test]
    fn action_ids_are_restored_or_removed() {
        let s = shared(0, 0);
        let got = s
            .deliver(reply(&[
                "Response: Success",
                "ActionID: pbxg0123456789abcdef-42 ",
                "Ping: Pong",
            ]))
            .unwrap();
        assert_eq!(
            &got[..],
            b"Response: Success\r\nActionID: 42 \r\nPing: Pong\r\n\r\n"
        );
        let got = s
            .deliver(reply(&[
                "Response: Success",
                "ActionID: pbxg0123456789abcdef.",
                "Ping: Pong",
            ]))
            .unwrap();
        assert_eq!(&got[..], b"Response: Success\r\nPing: Pong\r\n\r\n");
    }

    #[test]
    fn another_sessions_originate_response_is_dropped() {
        let call = 1 << 1;
        let s = shared(call, call);
        let foreign = reply(&[
            "Event: OriginateResponse",
            "Privilege: call,all",
            "ActionID: pbxgfedcba9876543210-1",
            "Response: Success",
        ]);
        assert!(s.deliver(foreign).is_none());
        let own = reply(&[
            "Event: OriginateResponse",
            "Privilege: call,all",
            "ActionID: pbxg0123456789abcdef-1",
            "Response: Success",
        ]);
        assert!(s.deliver(own).is_some());
    }

    #[test]
    fn events_filtered_by_allowed_and_requested_classes() {
        let call = 1 << 1;
        let system = 1;
        let s = shared(call, call);
        assert!(s
            .deliver(reply(&["Event: Newchannel", "Privilege: call,all"]))
            .is_some());
        assert!(s
            .deliver(reply(&["Event: FullyBooted", "Privilege: system,all"]))
            .is_none());
        // Every class of the event must be allowed, as in Asterisk.
        assert!(s
            .deliver(reply(&["Event: X", "Privilege: call,system,all"]))
            .is_none());
        let asked_nothing = shared(call | system, 0);
        assert!(asked_nothing
            .deliver(reply(&["Event: Newchannel", "Privilege: call,all"]))
            .is_none());
        // List items carry no Privilege: they belong to the session's own request.
        assert!(s
            .deliver(reply(&[
                "Event: CoreShowChannel",
                "ActionID: pbxg0123456789abcdef-7"
            ]))
            .is_some());
    }

    #[test]
    fn another_sessions_user_event_keeps_its_own_action_id() {
        let user = 1 << 6;
        let s = shared(user, user);
        let got = s
            .deliver(reply(&[
                "Event: UserEvent",
                "Privilege: user,all",
                "ActionID: pbxgfedcba9876543210-7",
                "UserEvent: hello",
            ]))
            .unwrap();
        assert_eq!(
            &got[..],
            b"Event: UserEvent\r\nPrivilege: user,all\r\nActionID: 7\r\nUserEvent: hello\r\n\r\n"
        );
        let got = s
            .deliver(reply(&[
                "Event: UserEvent",
                "Privilege: user,all",
                "ActionID: pbxgfedcba9876543210.",
                "UserEvent: hi",
            ]))
            .unwrap();
        assert_eq!(
            &got[..],
            b"Event: UserEvent\r\nPrivilege: user,all\r\nUserEvent: hi\r\n\r\n"
        );
    }

    #[test]
    fn markers_replace_the_ping_answer() {
        let s = shared(0, 0);
        s.markers.lock().unwrap().push_back((3, b"LOCAL".to_vec()));
        let got = s.deliver(reply(&[
            "Response: Success",
            "ActionID: pbxg0123456789abcdef!3",
            "Ping: Pong",
        ]));
        assert_eq!(got.as_deref(), Some(&b"LOCAL"[..]));
        assert!(s.markers.lock().unwrap().is_empty());
    }

    #[test]
    fn read_only_actions() {
        assert!(is_read_only("coreshowchannels"));
        assert!(is_read_only("pjsipshowendpoints"));
        assert!(!is_read_only("originate"));
        assert!(!is_read_only("command"));
        assert!(!is_read_only("queueadd"));
    }

    #[test]
    fn audit_detail_never_holds_secrets() {
        let m = Message::from_pairs(&[
            ("Action", "Originate"),
            ("Secret", "s3cr3t"),
            ("Key", "abc"),
            ("Channel", "PJSIP/100"),
        ]);
        let d = audit_detail(&m);
        assert!(!d.contains("s3cr3t") && !d.contains("abc"));
        assert!(d.contains("Channel: PJSIP/100"));
    }
}
