//! The relay between a logged-in client and its own Asterisk session.
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
//! reaches only the client that asked. An `Originate` also carries its own number
//! (`<tag>=<n>-<client's id>`), which ties Asterisk's final answer to the call the client's
//! limits count ([`super::originates`]).
//!
//! Policy: the client's policy is read afresh for every action, so a change the gateway's
//! re-check swaps in applies from the next action on. Actions that place or move calls also
//! pass the toll-fraud rules ([`super::calls`], the call limits), whose refusals are reported
//! through [`crate::dialing::Guard::refused`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::BufMut;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::calls::{self, Originate};
use super::classes;
use super::codec::{header_value, ClientFramer, Message, Reply};
use super::config::AmiConfig;
use super::login::challenge_answer;
use super::originates::{Answer, InFlight};
use super::policy::{lower, ClientPolicy, Rule as PolicyRule, Verdict};
use super::session::{answer, malformed, truncate, Accepted, Output, WriterEnd};
use super::upstream::Upstream;
use super::Gateway;
use crate::dialing::{Offender, Refused, Rule};
use crate::metrics::ResultLabels;
use crate::rate::Bucket;
use crate::store::AuditEntry;

/// A write of actions to Asterisk that makes no progress for this long ends the session.
const UPSTREAM_WRITE_STALL: Duration = Duration::from_secs(10);
/// Bytes taken from Asterisk in one read at most, so that one read adds a bounded piece to
/// the client's queue.
const UPSTREAM_READ: usize = 64 << 10;

/// State the two halves of a relay share.
struct Shared {
    tag: String,
    /// Answers made by pbxguard, waiting for the Ping that stands in for them.
    markers: Mutex<VecDeque<(u64, Vec<u8>)>>,
    /// The event classes the client asked for, within what it may read.
    mask: AtomicU32,
    read: u32,
    /// The session's Originates in flight.
    calls: InFlight,
}

/// Another session's tag: `pbxg` + 16 hex digits + `-`, `.`, `!` or `=`.
fn is_session_tag(v: &[u8]) -> bool {
    v.len() > 20
        && v.starts_with(b"pbxg")
        && v[4..20].iter().all(u8::is_ascii_hexdigit)
        && matches!(v[20], b'-' | b'.' | b'!' | b'=')
}

impl Shared {
    /// Asterisk's answer to this session's Originate number `n`.
    fn answer_originate(&self, n: u64, reply: &Reply) {
        if reply.is_event() {
            if reply.get("Event") == Some(b"OriginateResponse") {
                self.calls.answered(n, Answer::Event);
            }
        } else {
            let success = reply.get("Response") == Some(b"Success");
            self.calls.answered(n, Answer::Response { success });
        }
    }

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
            if let Some(mut rest) = value.strip_prefix(self.tag.as_bytes()) {
                if let Some(after) = rest.strip_prefix(b"=") {
                    // An Originate's answer: note it for the call limits, then restore the
                    // client's ActionID as for any other action.
                    let digits = after.iter().take_while(|b| b.is_ascii_digit()).count();
                    let n = std::str::from_utf8(&after[..digits])
                        .ok()
                        .and_then(|d| d.parse::<u64>().ok());
                    if let Some(n) = n {
                        self.answer_originate(n, &reply);
                    }
                    rest = &after[digits..];
                }
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
    /// The client's name (its policy may change; its name does not).
    name: String,
    /// Read for every action: the gateway's re-check swaps a changed policy in.
    policy: Arc<ArcSwap<ClientPolicy>>,
    peer: SocketAddr,
    /// The number of the last Originate forwarded.
    next_originate: u64,
    bucket: Bucket,
    next_marker: u64,
    /// The marker of the last message sent to Asterisk, when that was a stand-in Ping.
    open_marker: Option<u64>,
    warned_rate: bool,
    challenge: Option<String>,
}

impl Relay<'_> {
    fn audit(&self, action: &str, detail: String) {
        self.gw.ctx.journal.record(AuditEntry {
            at: crate::clock::now_unix(),
            actor: format!("ami:{}", self.name),
            action: action.to_string(),
            target: self.peer.ip().to_string(),
            detail,
            node: None,
        });
    }

    fn count(&self, result: &'static str) {
        self.gw
            .ctx
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
                warn!(client = %self.name, peer = %self.peer, action = %shown, "AMI actions refused: rate limit (logged once per session)");
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
                _ => match self
                    .policy
                    .load_full()
                    .decide(&action, &msg, &self.cfg.recordings_root)
                {
                    Verdict::Refuse(refusal) => {
                        self.count("refused");
                        let rule = refusal.rule.map(|r| r.name()).unwrap_or("not_allowed");
                        warn!(client = %self.name, peer = %self.peer, action = %shown, rule, "AMI action refused");
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
                        self.pass(&action, &shown, &mut msg, &overrides, id)
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

    /// An action the client's policy allows: the toll-fraud rules for calls, then forwarded
    /// (`None`) or answered here (`Some`).
    fn pass(
        &mut self,
        action: &str,
        shown: &str,
        msg: &mut Message,
        overrides: &[PolicyRule],
        id: Option<&[u8]>,
    ) -> Option<Vec<u8>> {
        let policy = self.policy.load_full();
        let dialing = &self.gw.ctx.dialing;
        let originate = match calls::check(&policy, action, msg, |d| dialing.check_named(d)) {
            Ok(o) => o,
            Err(refusal) => {
                let message = refusal.message();
                return Some(self.refuse_call(refusal.rule, refusal.what, &message, id));
            }
        };
        let prefix = match originate {
            Some(_) => format!("{}={}", self.shared.tag, self.next_originate + 1),
            None => self.shared.tag.clone(),
        };
        if !tag_action_id(msg, &prefix) {
            return Some(answer(
                "Error",
                id,
                "ActionID too long to forward (pbxguard needs 21 more bytes of the line)",
            ));
        }
        if let Some(o) = originate {
            if let Some(refused) = self.begin_originate(o, &policy, msg, id) {
                return Some(refused);
            }
        }
        if overrides.is_empty() {
            self.count("forwarded");
        } else {
            self.count("override");
            let rules: Vec<&str> = overrides.iter().map(|r| r.name()).collect();
            warn!(client = %self.name, peer = %self.peer, action = %shown, overrides = ?rules,
                "AMI action passed ONLY because of a configured override of a built-in refusal");
        }
        if !is_read_only(action) || !overrides.is_empty() {
            self.audit(&format!("ami.{shown}"), audit_detail(msg));
        }
        if action == "events" {
            self.rewrite_event_mask(msg);
        }
        None
    }

    /// Counts an Originate against the client's call limits; the refusal to answer when a
    /// limit is reached.
    fn begin_originate(
        &mut self,
        originate: Originate,
        policy: &ClientPolicy,
        msg: &Message,
        id: Option<&[u8]>,
    ) -> Option<Vec<u8>> {
        let limits = policy.limits(self.gw.ctx.dialing.limits());
        let n = self.next_originate + 1;
        match self
            .shared
            .calls
            .begin(n, originate, limits, Instant::now())
        {
            Ok(()) => {
                self.next_originate = n;
                None
            }
            Err(limited) => {
                let message = format!(
                    "Refused by pbxguard ({}): {}; try again in {} s",
                    limited.rule.name(),
                    limited.rule.explain(),
                    limited.retry_after.as_secs().max(1)
                );
                let channel = String::from_utf8_lossy(msg.get("Channel").unwrap_or_default());
                Some(self.refuse_call(limited.rule, channel.into_owned(), &message, id))
            }
        }
    }

    /// A call action refused by the toll-fraud rules: counted, reported (log, metric, audit
    /// row, alert) and answered; never forwarded.
    fn refuse_call(&self, rule: Rule, what: String, message: &str, id: Option<&[u8]>) -> Vec<u8> {
        self.count("refused");
        self.gw.ctx.dialing.refused(Refused {
            rule,
            offender: Offender::AmiClient(self.name.clone()),
            address: crate::net::canonical_ip(self.peer.ip()),
            destination: what,
        });
        answer("Error", id, message)
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

/// Puts `prefix` (the session's tag, with an Originate's number) in front of the ActionID
/// Asterisk will read (adding one when there is none), so that answers and broadcasts can be
/// attributed. False when there is no room (the line would not fit Asterisk's buffer, or the
/// message has 128 lines): such an action is refused rather than sent untagged, whose
/// broadcasts could not be kept from other clients.
fn tag_action_id(msg: &mut Message, prefix: &str) -> bool {
    match msg.action_id_line() {
        Some(i) if msg.action_id().is_some() => {
            let value = header_value(&msg.lines[i], "ActionID").unwrap_or_default();
            let mut line = format!("ActionID: {prefix}-").into_bytes();
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
                .insert(0, format!("ActionID: {prefix}.").into_bytes());
            true
        }
        _ => false,
    }
}

/// Why the session ends when the client's writer has ended.
fn writer_ended(
    gw: &Gateway,
    cfg: &AmiConfig,
    client: &str,
    peer: SocketAddr,
    end: WriterEnd,
) -> &'static str {
    match end {
        WriterEnd::Stalled => {
            gw.ctx.metrics.ami_slow_clients.inc();
            warn!(client, %peer, write_timeout = ?cfg.write_timeout,
                "AMI client disconnected: it accepted no bytes for write_timeout");
            "the client accepted no bytes for write_timeout"
        }
        WriterEnd::Failed => "the client disconnected",
    }
}

/// Relays between the client (`input`: its reader and the framer holding any partial message)
/// and its Asterisk session until either side ends; returns why.
pub(super) async fn relay<R: AsyncRead + Unpin>(
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
        credential: _,
    } = accepted;
    let (name, read) = {
        let p = policy.load();
        (p.name.clone(), p.read)
    };
    let tag = format!("pbxg{:016x}", rand::random::<u64>());
    let calls = InFlight::new(
        Arc::new(gw.ctx.dialing.clone()),
        Offender::AmiClient(name.clone()),
        &tag,
    );
    let shared = Arc::new(Shared {
        tag,
        markers: Mutex::new(VecDeque::new()),
        mask: AtomicU32::new(mask),
        read,
        calls,
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
        name,
        policy,
        peer,
        next_originate: 0,
        bucket: Bucket::new(cfg.action_burst, Instant::now()),
        next_marker: 0,
        open_marker: None,
        warned_rate: false,
        challenge: None,
    };

    // Its own task: Asterisk's output is read even while a write to Asterisk waits (else a
    // burst of actions could stall both directions and Asterisk's writetimeout cut the session).
    // Backpressure: while the client's queue is above max_output_bytes this session is not
    // read, until the queue is down to half; Asterisk then meets the same slow reader it would
    // meet without pbxguard (its writetimeout applies to it), and pbxguard's memory stays
    // bounded. Only a client that accepts no bytes at all for write_timeout is cut off.
    let high_water = cfg.max_output_bytes;
    let mut from_asterisk = {
        let shared = shared.clone();
        let out = out.clone();
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
                        return "the client's output queue overflowed";
                    }
                }
                if out.queued() > high_water {
                    out.room().await;
                }
                match up_rd
                    .read_buf(&mut up_framer.buffer().limit(UPSTREAM_READ))
                    .await
                {
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
                timeout(UPSTREAM_WRITE_STALL, up_wr.write_all(&to_asterisk)).await,
                Ok(Ok(()))
            )
        {
            break "Asterisk stopped taking actions";
        }
        tokio::select! {
            _ = stop.cancelled() => break "ended by pbxguard (shutdown; or the client was removed, or its permit list or event classes changed)",
            why = &mut from_asterisk => {
                // A send that failed because the writer ended is told as the writer's reason.
                match out.writer_end() {
                    Some(end) => break writer_ended(gw, cfg, &relay.name, peer, end),
                    None => break why.unwrap_or("the Asterisk reader failed"),
                }
            }
            end = out.writer_ended() => break writer_ended(gw, cfg, &relay.name, peer, end),
            // While the client is behind on its output, its input waits in the socket too
            // (TCP pushes back, as with Asterisk itself): else answers pbxguard makes itself
            // (refusals, rate limits), which wait for a Pong the paused reader does not read,
            // would pile up without bound.
            () = out.room(), if out.queued() > high_water => {}
            r = rd.read(&mut buf), if out.queued() <= high_water => match r {
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
    // Asterisk may still be placing this session's calls: they stay counted until their
    // deadlines.
    shared.calls.finish();
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
    use crate::dialing::limits::Limiter;

    fn shared_with(read: u32, mask: u32, limiter: Arc<Limiter>) -> Shared {
        let tag = "pbxg0123456789abcdef";
        Shared {
            tag: tag.into(),
            markers: Mutex::new(VecDeque::new()),
            mask: AtomicU32::new(mask),
            read,
            calls: InFlight::new(limiter, Offender::AmiClient("d".into()), tag),
        }
    }

    fn shared(read: u32, mask: u32) -> Shared {
        shared_with(read, mask, Arc::new(Limiter::default()))
    }

    #[test]
    fn an_originates_answers_end_its_call_and_keep_the_clients_action_id() {
        let limiter = Arc::new(Limiter::default());
        let s = shared_with(0, 0, limiter.clone());
        let key = Offender::AmiClient("d".into()).key();
        let limits = crate::dialing::Limits {
            max_concurrent: 5,
            max_per_minute: 0,
        };
        let sync = Originate {
            asynchronous: false,
            timeout: None,
        };
        let asynchronous = Originate {
            asynchronous: true,
            timeout: None,
        };
        s.calls.begin(7, sync, limits, Instant::now()).unwrap();
        s.calls
            .begin(8, asynchronous, limits, Instant::now())
            .unwrap();
        assert_eq!(limiter.active(&key), 2);
        let got = s
            .deliver(reply(&[
                "Response: Success",
                "ActionID: pbxg0123456789abcdef=7-same",
                "Message: Originate successfully queued",
            ]))
            .unwrap();
        assert_eq!(
            &got[..],
            b"Response: Success\r\nActionID: same\r\nMessage: Originate successfully queued\r\n\r\n"
        );
        assert_eq!(limiter.active(&key), 1);
        // The asynchronous one: its Response does not end it, its event does, and a client
        // without an ActionID gets none back.
        let got = s
            .deliver(reply(&[
                "Response: Success",
                "ActionID: pbxg0123456789abcdef=8.",
                "Message: Originate successfully queued",
            ]))
            .unwrap();
        assert_eq!(
            &got[..],
            b"Response: Success\r\nMessage: Originate successfully queued\r\n\r\n"
        );
        assert_eq!(limiter.active(&key), 1);
        // Delivered or not (this session does not read call events), the event ends it.
        assert!(s
            .deliver(reply(&[
                "Event: OriginateResponse",
                "Privilege: call,all",
                "ActionID: pbxg0123456789abcdef=8.",
                "Response: Failure",
            ]))
            .is_none());
        assert_eq!(limiter.active(&key), 0);
        // Another session's Originate answer never reaches this client.
        assert!(s
            .deliver(reply(&[
                "Event: OriginateResponse",
                "Privilege: call,all",
                "ActionID: pbxgfedcba9876543210=1-x",
            ]))
            .is_none());
    }

    #[test]
    fn an_originate_carries_its_number_in_the_action_id() {
        let mut m = Message::from_pairs(&[("Action", "Originate"), ("ActionID", "abc")]);
        assert!(tag_action_id(&mut m, "pbxg0123456789abcdef=3"));
        assert_eq!(m.action_id(), Some(&b"pbxg0123456789abcdef=3-abc"[..]));
        let mut m = Message::from_pairs(&[("Action", "Originate")]);
        assert!(tag_action_id(&mut m, "pbxg0123456789abcdef=4"));
        assert_eq!(m.action_id(), Some(&b"pbxg0123456789abcdef=4."[..]));
        let long = "x".repeat(1000);
        let mut m = Message::from_pairs(&[("Action", "Originate"), ("ActionID", &long)]);
        assert!(!tag_action_id(&mut m, "pbxg0123456789abcdef=5"));
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
