//! The proxy itself (RFC 3261 §16, stateless apart from a small table of INVITEs in flight
//! and, over UDP towards Asterisk, the client transactions of [`super::transaction`]): what
//! crosses from a client to Asterisk and back, and every check on the way.
//!
//! Client requests always go to Asterisk, whatever their Request-URI or `Route` say: the
//! edge is no open relay. Everything we add towards Asterisk (`Via`, `Record-Route`, `Path`)
//! names our loopback address and carries a MAC'd token of the client connection, so answers
//! and requests coming back find that connection. Towards clients we add our own `Via` and a
//! `Record-Route` naming the address they reached us on (double record-routing, RFC 5658).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::calls::Dialog;
use super::config::SipConfig;
use super::dial::{self, CallKey, NoSlot};
use super::digest::Challenge;
use super::flow::{Flow, Flows, Kind};
use super::guards::Rates;
use super::message::{answer_forwarded, error_response, Message, Method, Via};
use super::reauth::{CancelTarget, Resends, Sent, MAX_ATTEMPTS};
use super::sdp::{self, MediaPolicy, Refusal};
use super::transaction::{self, Answer, Due, Key, Started, Transactions};
use super::upstream::Upstream;
use crate::dialing::{Refused, Rule};
use crate::metrics::ResultLabels;

/// The URI parameter and `Via` parameter carrying our flow token.
pub const TOKEN_PARAM: &str = "pbxg";
/// INVITEs in flight remembered for tearing down a refused answer, at most, and how long.
const MAX_PENDING: usize = 50_000;
const PENDING_TTL: Duration = Duration::from_secs(300);
/// How far the CSeq of a BYE the edge sends in a client's name is past the client's last.
const TEARDOWN_CSEQ_STEP: u32 = 100;
/// Requests Asterisk never answered are reported at most this often (with their count).
const TIMEOUT_REPORT: Duration = Duration::from_secs(10);

/// A REGISTER awaiting Asterisk's answer: its connection, Contacts, the user it registers
/// (its From user: the endpoint pjsip identifies and authenticates), and when it went.
type RegisterInFlight = (u64, Vec<String>, Option<String>, Instant);

/// The edge's answer to one challenge: what to put where.
struct Credentials<'a> {
    challenge: &'a Challenge,
    /// `Authorization` (for a 401) or `Proxy-Authorization` (407).
    header: &'static str,
    username: &'a str,
    password: &'a [u8],
}

/// What we sent Asterisk for one client INVITE: enough to CANCEL it or ACK its failure.
#[derive(Debug, Clone)]
struct Pending {
    flow: u64,
    request_uri: String,
    from: String,
    to: String,
    call_id: String,
    cseq: u32,
    /// We cancelled it ourselves: its final answer is ours to ACK and swallow.
    cancelled: bool,
    at: Instant,
}

pub struct Edge {
    pub(super) ctx: Arc<super::Context>,
    pub flows: Flows,
    /// The one ban list (shared with the rest of the daemon).
    pub bans: crate::bans::Bans,
    rates: Rates,
    /// Swapped when a reload moves the Asterisk side.
    upstream: ArcSwap<Upstream>,
    /// Client connections open (TLS and WSS), for `max_connections`, and per address.
    pub(super) connections: Arc<AtomicUsize>,
    pub(super) per_ip: Arc<Mutex<HashMap<String, usize>>>,
    /// TLS for the SIP listener and for the WebSocket listener (ALPN http/1.1); swapped on
    /// reload, applied from the next handshake.
    pub tls: ArcSwapOption<rustls::ServerConfig>,
    pub wss_tls: ArcSwapOption<rustls::ServerConfig>,
    /// Our branch -> the client INVITE it carries.
    pending: Mutex<HashMap<String, Pending>>,
    /// Client branches whose INVITE we answered ourselves; their ACK stops here.
    absorb: Mutex<HashMap<String, Instant>>,
    /// Our branch -> (flow, Contacts, user) of a REGISTER awaiting Asterisk's answer.
    registers: Mutex<HashMap<String, RegisterInFlight>>,
    /// The calls phones place, each holding a slot in its extension's limits.
    dial_slots: dial::Slots,
    /// Requests sent to Asterisk over UDP, until answered (retransmission, duplicates).
    transactions: Mutex<Transactions>,
    /// Wakes the timer task when a transaction's first timer is earlier than any it knew.
    pub(super) timer_wake: Notify,
    /// Requests that timed out since the last report, and when that was.
    timeouts: Mutex<(u64, Option<Instant>)>,
    /// Requests of ticket-bound WebSockets until answered: re-sent with credentials when
    /// Asterisk challenges them.
    resends: Mutex<Resends>,
    /// Extensions bound to web users (`user set-extension`): only their tickets may use them,
    /// never a TLS client. Re-read with the bans.
    bound_extensions: ArcSwap<HashSet<String>>,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge").finish_non_exhaustive()
    }
}

fn policy(cfg: &SipConfig) -> MediaPolicy {
    MediaPolicy {
        crypto_suites: cfg.crypto_suites.clone(),
        allow_t38: cfg.allow_t38,
    }
}

fn host_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    }
}

/// Methods whose request may start a dialog or refresh its target: these get our
/// `Record-Route`, so the dialog's later requests come through us.
fn record_routes(method: &Method) -> bool {
    matches!(
        method,
        Method::Invite | Method::Subscribe | Method::Refer | Method::Notify | Method::Update
    )
}

/// What a body means to the media policy, by the method of a request or, for a response, of
/// the request it answers (its CSeq method).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyRole {
    /// Offers and answers of a session (RFC 3261 §13.2.1, RFC 3262, RFC 3311): the SRTP
    /// policy applies, and a refusal ends the exchange (488, or the call's teardown).
    Session,
    /// A capability description (an OPTIONS answer, RFC 3261 §11.2): neither offer nor answer,
    /// and nothing pjsip reads (qualify looks at the status code alone). Removed, so it is
    /// neither judged as an offer nor relayed: no plain-RTP SDP ever crosses, and pjmedia's
    /// parser is never reached by an SDP we did not check.
    Capability,
    /// Any other method: pjsip sets no media up from its body. SDP in it is still checked; a
    /// refused request gets 488, a refused answer loses its body but is still relayed, so
    /// the transaction completes.
    Other,
}

fn body_role(method: &Method) -> BodyRole {
    match method {
        Method::Invite | Method::Update | Method::Prack | Method::Ack => BodyRole::Session,
        Method::Options => BodyRole::Capability,
        _ => BodyRole::Other,
    }
}

/// The role of a response's body, from its CSeq method.
fn answer_role(msg: &Message) -> BodyRole {
    msg.cseq().map_or(BodyRole::Other, |(_, m)| body_role(&m))
}

/// Removes a message's body and the headers that describe it.
fn strip_body(msg: &mut Message) {
    if msg.body().is_empty() && msg.content_type().is_none() {
        return;
    }
    msg.set_body(None, Vec::new());
    msg.remove_where(|name| {
        matches!(
            name.to_ascii_lowercase().as_str(),
            "content-encoding" | "content-disposition" | "content-language"
        )
    });
}

/// A response built from the headers of `msg` (a response whose own `Via` are the ones to
/// answer along): used to answer an INVITE ourselves after refusing what came back for it.
fn restatus(msg: &Message, code: u16, reason: &str, extra: &[(&str, String)]) -> Bytes {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for via in msg.vias() {
        out.push_str(&format!("Via: {via}\r\n"));
    }
    for name in ["From", "To", "Call-ID", "CSeq"] {
        if let Some(v) = msg.header(name) {
            out.push_str(&format!("{name}: {v}\r\n"));
        }
    }
    for (name, value) in extra {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    Bytes::from(out)
}

fn label(result: &'static str) -> ResultLabels {
    ResultLabels { result }
}

impl Edge {
    pub fn new(ctx: Arc<super::Context>, upstream: Arc<Upstream>) -> Edge {
        Edge {
            bans: ctx.bans.clone(),
            ctx,
            flows: Flows::new(),
            rates: Rates::default(),
            upstream: ArcSwap::new(upstream),
            connections: Arc::default(),
            per_ip: Arc::default(),
            tls: ArcSwapOption::empty(),
            wss_tls: ArcSwapOption::empty(),
            pending: Mutex::default(),
            absorb: Mutex::default(),
            registers: Mutex::default(),
            dial_slots: dial::Slots::default(),
            transactions: Mutex::default(),
            timer_wake: Notify::new(),
            timeouts: Mutex::default(),
            resends: Mutex::default(),
            bound_extensions: ArcSwap::from_pointee(HashSet::new()),
        }
    }

    pub fn up(&self) -> Arc<Upstream> {
        self.upstream.load_full()
    }

    /// Points the edge at a new Asterisk side (reload). Transactions in flight are
    /// forgotten: their answers would come to the old socket.
    pub fn set_upstream(&self, upstream: Arc<Upstream>) {
        self.upstream.store(upstream);
        self.transactions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Sends a request to Asterisk (`branch`: our Via's). Over UDP it is kept for
    /// retransmission until answered, and an ACK is kept for its INVITE's failure answer;
    /// `origin` is the client connection owed a 408 if Asterisk never answers.
    fn send_request(&self, branch: &str, method: &Method, bytes: Bytes, origin: Option<u64>) {
        let up = self.up();
        if up.is_udp() {
            let now = Instant::now();
            let mut txs = self.transactions.lock().unwrap_or_else(|e| e.into_inner());
            if *method == Method::Ack {
                txs.ack(branch, &bytes);
            } else {
                let earliest = txs.next_due();
                let key = Key {
                    branch: branch.to_string(),
                    method: method.clone(),
                };
                match txs.start(key, bytes.clone(), origin, now) {
                    Started::Tracked => {
                        if earliest.is_none_or(|e| e > now + transaction::T1) {
                            self.timer_wake.notify_one();
                        }
                    }
                    Started::Full => {
                        drop(txs);
                        self.count_client("untracked");
                        debug!("the transaction table is full; relaying a request without retransmission");
                    }
                    Started::Duplicate => {}
                }
            }
        }
        up.send(bytes);
    }

    /// When the next retransmission or time-out is due.
    pub(super) fn next_timer(&self) -> Option<Instant> {
        self.transactions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_due()
    }

    /// Retransmits what is due and answers 408 for what timed out (Timers A, B, E, F).
    pub(super) fn run_timers(&self, now: Instant) {
        let mut due = Vec::new();
        self.transactions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .poll(now, &mut due);
        if due.is_empty() {
            return;
        }
        let up = self.up();
        for d in due {
            match d {
                Due::Retransmit(bytes) => {
                    self.count_client("retransmitted");
                    up.send(bytes);
                }
                Due::TimedOut {
                    request,
                    origin,
                    invite,
                } => self.timed_out(&request, origin, invite, now),
            }
        }
    }

    /// Asterisk never answered a client's request: the client gets 408 (RFC 3261 §16.8), so
    /// a phone on a reliable transport does not wait for ever.
    fn timed_out(&self, request: &[u8], origin: u64, invite: bool, now: Instant) {
        self.count_client("timeout");
        {
            let mut t = self.timeouts.lock().unwrap_or_else(|e| e.into_inner());
            t.0 += 1;
            if t.1
                .is_none_or(|last| now.duration_since(last) >= TIMEOUT_REPORT)
            {
                warn!(
                    requests = t.0,
                    after = ?transaction::TIMEOUT,
                    "Asterisk did not answer requests relayed over UDP; their senders got 408"
                );
                *t = (0, Some(now));
            }
        }
        let Some(flow) = self.flows.get(origin) else {
            return;
        };
        let Some((mut resp, client_branch)) = answer_forwarded(request, 408, "Request Timeout")
        else {
            return;
        };
        let parsed = Message::parse(request).ok();
        let call = parsed.as_ref().and_then(|m| {
            let key = CallKey::of_caller(m)?;
            let (cseq, method) = m.cseq()?;
            Some((
                key,
                cseq,
                method,
                m.to().and_then(|t| t.tag().map(str::to_owned)),
            ))
        });
        if invite {
            // The client's ACK for our 408 is ours too.
            if let Some(b) = &client_branch {
                self.absorb_ack_for(b);
            }
            // The 408 is the INVITE's final answer.
            if let Some((key, cseq, _, _)) = &call {
                self.dial_slots
                    .answered(&self.ctx.dialing, key, *cseq, 408, None, now);
            }
        }
        if let Some((key, _, Method::Bye, tag)) = &call {
            // A BYE nobody answered ends the dialog for the phone (RFC 3261 §15.1.1).
            self.dial_slots
                .bye_answered(&self.ctx.dialing, key, tag.as_deref(), 408);
        }
        if flow.binding.is_some() {
            resp = self.renumber_timeout(&flow, request, resp);
        }
        flow.send(Bytes::from(resp));
    }

    /// A 408 built from what we sent a bound WebSocket's request as: it gets the client's
    /// CSeq back, and the request is forgotten (no answer will come to free its place).
    fn renumber_timeout(&self, flow: &Flow, request: &[u8], resp: Vec<u8>) -> Vec<u8> {
        let branch = Message::parse(request)
            .ok()
            .and_then(|m| m.top_via())
            .and_then(|v| v.branch().map(str::to_owned));
        let kept = branch.and_then(|b| {
            self.resends
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .finish(&b)
        });
        let Ok(mut msg) = Message::parse(&resp) else {
            return resp;
        };
        let (Some(n), Some((_, method))) = (
            self.client_cseq_of(flow, &msg, kept.map(|s| s.client_cseq)),
            msg.cseq(),
        ) else {
            return resp;
        };
        msg.set_cseq(n, &method);
        msg.to_bytes()
    }

    fn count_client(&self, result: &'static str) {
        self.ctx
            .metrics
            .sip_client_messages
            .get_or_create(&label(result))
            .inc();
    }

    fn count_upstream(&self, result: &'static str) {
        self.ctx
            .metrics
            .sip_upstream_messages
            .get_or_create(&label(result))
            .inc();
    }

    fn agent(&self) -> String {
        self.ctx
            .config
            .load()
            .as_ref()
            .and_then(|c| c.sip.public_host.clone())
            .unwrap_or_else(|| "pbxguard".to_string())
    }

    /// Our `Via` towards Asterisk for a request from `flow`.
    fn upstream_via(&self, flow: u64, flag: char, incoming_branch: &str) -> Via {
        let local = self.up().local();
        Via {
            transport: self.up().via_transport().to_string(),
            host: host_of(local.ip()),
            port: Some(local.port()),
            params: vec![
                (
                    "branch".into(),
                    Some(self.flows.branch(flow, incoming_branch)),
                ),
                ("rport".into(), None),
                (TOKEN_PARAM.into(), Some(self.flows.token(flow, flag))),
            ],
        }
    }

    /// `<sip:127.0.0.1:5070;transport=udp;lr;pbxg=...>`: how Asterisk reaches `flow`.
    fn loopback_uri(&self, flow: u64) -> String {
        let local = self.up().local();
        format!(
            "<sip:{}:{};transport={};lr;{TOKEN_PARAM}={}>",
            host_of(local.ip()),
            local.port(),
            self.up().uri_transport(),
            self.flows.token(flow, 'n')
        )
    }

    /// How the client behind `flow` reaches us again: the address it connected to.
    fn public_uri(&self, flow: &Flow, cfg: &SipConfig) -> String {
        let host = cfg
            .public_host
            .clone()
            .unwrap_or_else(|| host_of(flow.local.ip()));
        format!(
            "<sip:{host}:{};transport={};lr;{TOKEN_PARAM}={}>",
            flow.local.port(),
            flow.kind.uri_param(),
            self.flows.token(flow.id, 'n')
        )
    }

    /// Answers a client request ourselves.
    fn answer(
        &self,
        flow: &Flow,
        req: &Message,
        code: u16,
        reason: &str,
        extra: &[(&str, String)],
    ) {
        if req.method() == Some(&Method::Ack) {
            return;
        }
        if req.method() == Some(&Method::Invite) && code >= 300 {
            // The client's ACK for this answer is ours too.
            if let Some(branch) = req.top_via().and_then(|v| v.branch().map(str::to_owned)) {
                self.absorb_ack_for(&branch);
            }
        }
        let tag = crate::ids::random_hex(8);
        let resp = req.response(code, reason, &tag, extra);
        flow.send(Bytes::from(resp.to_bytes()));
    }

    /// Answers a request from Asterisk ourselves.
    fn answer_upstream(&self, req: &Message, code: u16, reason: &str, extra: &[(&str, String)]) {
        if req.method() == Some(&Method::Ack) {
            return;
        }
        if req.method() == Some(&Method::Invite) && code >= 300 {
            // Asterisk's ACK for this answer is hop by hop: ours to keep.
            self.absorb_upstream_ack(req);
        }
        let tag = crate::ids::random_hex(8);
        let resp = req.response(code, reason, &tag, extra);
        self.up().send(Bytes::from(resp.to_bytes()));
    }

    fn warning(&self, refusal: &Refusal) -> (&'static str, String) {
        ("Warning", sdp::warning_value(&self.agent(), refusal))
    }

    /// Bans the address of `flow` (and closes every connection from it).
    fn ban_now(&self, ip: IpAddr, reason: &'static str, duration: Duration) {
        if self
            .bans
            .impose_soon(ip, crate::bans::Source::Sip, reason, Some(duration))
        {
            self.banned(ip, reason);
        }
    }

    /// Counts the ban and closes every connection the banned address has open.
    fn banned(&self, ip: IpAddr, reason: &'static str) {
        self.ctx
            .metrics
            .sip_bans
            .get_or_create(&label(reason))
            .inc();
        info!(address = %crate::bans::BanKey::host(ip), reason, "SIP edge banned a client address");
        for flow in self.flows.all() {
            if self.bans.banned(flow.peer.ip()).is_some() {
                flow.close.cancel();
            }
        }
    }

    // ---- client -> Asterisk -----------------------------------------------------------------

    /// One message from a client connection (one framed message or one WebSocket message).
    pub fn from_client(&self, flow: &Arc<Flow>, raw: &[u8]) {
        let cfg = self.ctx.config.load();
        let Some(sip) = cfg.as_ref().map(|c| &c.sip) else {
            return;
        };
        // Every message costs a token, answers and unparseable ones included, before any work.
        let now = Instant::now();
        if !self
            .rates
            .allow_ip(flow.peer.ip(), sip.rate_per_ip, sip.burst_per_ip, now)
        {
            self.count_client("rate_limited");
            if let Ok(req) = Message::parse(raw) {
                if req.method().is_some() {
                    self.answer(
                        flow,
                        &req,
                        503,
                        "Service Unavailable",
                        &[("Retry-After", "5".into())],
                    );
                }
            }
            return;
        }
        let msg = match Message::parse(raw) {
            Ok(m) => m,
            Err(e) => {
                self.count_client("invalid");
                debug!(peer = %flow.peer, error = %e, "refusing an invalid SIP message");
                if let Some(resp) = error_response(raw, &e) {
                    flow.send(Bytes::from(resp));
                }
                return;
            }
        };
        if msg.status().is_some() {
            self.client_response(flow, msg, sip);
        } else {
            self.client_request(flow, msg, sip);
        }
    }

    fn client_request(&self, flow: &Arc<Flow>, mut msg: Message, sip: &SipConfig) {
        let now = Instant::now();
        let Some(method) = msg.method().cloned() else {
            return;
        };
        if let Some(ua) = msg.user_agent() {
            if super::guards::is_scanner(ua, &sip.blocked_user_agents) {
                self.count_client("scanner");
                // A ticketed WebSocket belongs to a logged-in user: cutting it off is enough,
                // and an insider cannot get the office's shared address banned this way.
                if flow.binding.is_none() {
                    self.ban_now(flow.peer.ip(), "scanner", sip.ban_duration);
                }
                flow.close.cancel();
                return;
            }
        }
        let user_ok = flow.binding.as_ref().is_none_or(|b| {
            self.rates
                .allow_user(&b.extension, sip.rate_per_user, sip.burst_per_user, now)
        });
        if !user_ok {
            self.count_client("rate_limited");
            self.answer(
                flow,
                &msg,
                503,
                "Service Unavailable",
                &[("Retry-After", "5".into())],
            );
            return;
        }
        if let Method::Other(_) = method {
            self.count_client("unsupported");
            self.answer(
                flow,
                &msg,
                501,
                "Not Implemented",
                &[("Allow", ALLOW.to_string())],
            );
            return;
        }
        if method == Method::Ack && self.absorbed(&msg) {
            return;
        }
        match msg.max_forwards() {
            Some(0) | None => {
                self.count_client("too_many_hops");
                self.answer(flow, &msg, 483, "Too Many Hops", &[]);
                return;
            }
            Some(n) => msg.set_max_forwards(n - 1),
        }
        let claim = match &flow.binding {
            Some(_) => check_identity(flow, &msg, &method).map_err(str::to_string),
            None => self.check_unbound_claim(&msg, &method),
        };
        if let Err(why) = claim {
            self.count_client("identity_mismatch");
            debug!(peer = %flow.peer, why, "refusing a request outside the session's extension");
            let refusal = Refusal { reason: why };
            self.answer(flow, &msg, 403, "Forbidden", &[self.warning(&refusal)]);
            return;
        }
        // A phone places a call: what it dials is checked before anything else is looked at,
        // and the call takes a slot in its extension's limits once nothing else refuses it.
        let new_call =
            method == Method::Invite && msg.to().and_then(|t| t.tag().map(str::to_owned)).is_none();
        if new_call {
            if let Some(dest) = dial::dialled(&msg) {
                if let Err(rule) = self.ctx.dialing.check_number(dest) {
                    let destination = dest.to_string();
                    self.refuse_call(flow, &msg, rule, destination, None);
                    return;
                }
            }
        }
        if method == Method::Refer {
            let checked = match dial::transfer_target(&msg) {
                dial::Transfer::To(dest) => {
                    self.ctx.dialing.check_number(&dest).map_err(|r| (r, dest))
                }
                dial::Transfer::Nothing => Ok(()),
                dial::Transfer::Unreadable => Err((
                    Rule::DialCharacters,
                    msg.header("Refer-To").unwrap_or_default().to_string(),
                )),
            };
            if let Err((rule, destination)) = checked {
                self.refuse_call(flow, &msg, rule, destination, None);
                return;
            }
        }
        if flow.binding.is_some() {
            // The edge authenticates for a bound WebSocket; whatever credentials the browser
            // sends are not its to give.
            msg.remove_all("Authorization");
            msg.remove_all("Proxy-Authorization");
        }
        if body_role(&method) == BodyRole::Capability {
            strip_body(&mut msg);
        } else if let Err(refusal) = self.check_media(&msg, flow.kind, sip) {
            self.count_client("media_refused");
            info!(peer = %flow.peer, reason = %refusal, method = method.as_str(), "refused media offer");
            self.answer(
                flow,
                &msg,
                488,
                "Not Acceptable Here",
                &[self.warning(&refusal)],
            );
            return;
        }
        if new_call && !self.place_call(flow, &msg, now) {
            return;
        }
        strip_identities(&mut msg, sip);
        if let Some(b) = &flow.binding {
            msg.push_back(&sip.identity_header, b.extension.clone());
        }
        let Some(mut top) = msg.top_via() else {
            return;
        };
        top.set_param("received", Some(flow.peer.ip().to_string()));
        if top.param("rport").is_some() {
            top.set_param("rport", Some(flow.peer.port().to_string()));
        }
        msg.set_top_via(&top);
        let incoming = top.branch().unwrap_or_default().to_string();
        // Only Asterisk is behind us: a client's route set has nothing left to say.
        msg.remove_all("Route");
        let has_credentials =
            msg.header("Authorization").is_some() || msg.header("Proxy-Authorization").is_some();
        let via = self.upstream_via(flow.id, if has_credentials { 'a' } else { 'n' }, &incoming);
        msg.push_front("Via", via.to_string());
        let in_dialog = msg.to().and_then(|t| t.tag().map(str::to_owned)).is_some();
        if record_routes(&method) && !in_dialog {
            msg.push_front("Record-Route", self.public_uri(flow, sip));
            msg.push_front("Record-Route", self.loopback_uri(flow.id));
        }
        if method == Method::Register {
            msg.push_front("Path", self.loopback_uri(flow.id));
            add_supported_path(&mut msg);
            if let Some(branch) = via.branch() {
                self.remember_register(branch, flow.id, &msg);
            }
        }
        let mut branch = via.branch().unwrap_or_default().to_string();
        let client_cseq = msg.cseq().map(|(n, _)| n);
        if flow.binding.is_some() {
            match self.renumber_for_edge_auth(flow, &mut msg, &method, branch) {
                Some(b) => branch = b,
                None => return,
            }
        }
        self.track_client_request(flow, &msg, &method, client_cseq);
        if method == Method::Invite {
            if let Some(via) = msg.top_via() {
                self.remember_invite(flow.id, &via, &msg);
            }
        }
        let bytes = Bytes::from(msg.to_bytes());
        // pjsip challenges only requests outside a dialog: those are kept for the edge to
        // answer; answers to in-dialog ones are renumbered by the call's offset alone.
        let in_dialog = msg.to().and_then(|t| t.tag().map(str::to_owned)).is_some();
        let challengeable = !in_dialog && !matches!(method, Method::Ack | Method::Cancel);
        if let (true, Some(_), Some(n)) = (challengeable, &flow.binding, client_cseq) {
            let sent = Sent::new(flow.id, bytes.clone(), n, incoming, branch.clone());
            let kept = self
                .resends
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keep(&branch, sent);
            if !kept {
                self.count_client("untracked");
            }
        }
        self.count_client("forwarded");
        self.send_request(&branch, &method, bytes, Some(flow.id));
    }

    /// A phone's new call takes a slot in its extension's limits (the same call again keeps
    /// the one it has); `false` when it was refused, and answered.
    fn place_call(&self, flow: &Flow, msg: &Message, now: Instant) -> bool {
        let (Some(key), Some(mut attempt)) = (CallKey::of_caller(msg), CallKey::attempt(msg))
        else {
            // The parser requires Call-ID, From and CSeq: not reached.
            return true;
        };
        if flow.binding.is_some() {
            // Asterisk sees the CSeq the edge renumbers it to (renumber_for_edge_auth).
            let offset = flow.calls().offset(&key.call_id);
            attempt.cseq = attempt.cseq.saturating_add(offset);
        }
        let offender = dial::offender(flow, msg);
        let limits = self.ctx.dialing.limits();
        let started = self.dial_slots.start(
            &self.ctx.dialing,
            &offender,
            key,
            attempt,
            flow.id,
            limits,
            now,
        );
        match started {
            Ok(()) => true,
            Err(NoSlot::Limited(limited)) => {
                let destination = dial::dialled(msg).unwrap_or("s").to_string();
                self.refuse_call(
                    flow,
                    msg,
                    limited.rule,
                    destination,
                    Some(limited.retry_after),
                );
                false
            }
            Err(NoSlot::Merged) => {
                self.count_client("merged");
                self.answer(flow, msg, 482, "Loop Detected", &[]);
                false
            }
            Err(NoSlot::Repeated) => {
                self.count_client("repeated_invite");
                self.answer(flow, msg, 482, "Loop Detected", &[]);
                false
            }
            Err(NoSlot::Full) => {
                self.count_client("dial_table_full");
                self.answer(
                    flow,
                    msg,
                    503,
                    "Service Unavailable",
                    &[("Retry-After", "5".into())],
                );
                false
            }
        }
    }

    /// Refuses a phone's call by toll-fraud rule `rule`: `403` for what it dialled, `486` or
    /// `503` with `Retry-After` for a limit, each with a `Warning` naming the rule and nothing
    /// else (not the prefix, not how close a limit is); reported (log, metric, audit row,
    /// alert) through the shared guard.
    fn refuse_call(
        &self,
        flow: &Flow,
        msg: &Message,
        rule: Rule,
        destination: String,
        retry: Option<Duration>,
    ) {
        self.count_client("dial_refused");
        self.ctx.dialing.refused(Refused {
            rule,
            offender: dial::offender(flow, msg),
            address: flow.peer.ip(),
            destination,
        });
        let (code, reason) = match rule {
            Rule::MaxConcurrentCalls => (486, "Busy Here"),
            Rule::MaxCallAttemptsPerMinute => (503, "Service Unavailable"),
            _ => (403, "Forbidden"),
        };
        let named = Refusal {
            reason: rule.name().to_string(),
        };
        let mut extra = vec![self.warning(&named)];
        if let Some(wait) = retry {
            extra.push(("Retry-After", dial::retry_after_secs(wait).to_string()));
        }
        self.answer(flow, msg, code, reason, &extra);
    }

    /// What a client's request changes in its connection's calls. (A BYE ends its call when
    /// Asterisk answers it: the answer still needs the call's CSeq offset.)
    fn track_client_request(&self, flow: &Flow, msg: &Message, method: &Method, cseq: Option<u32>) {
        let (Some(call_id), Some(n)) = (msg.call_id(), cseq) else {
            return;
        };
        if !matches!(method, Method::Ack | Method::Cancel) {
            flow.calls().client_sent(call_id, n);
        }
    }

    /// A bound WebSocket's request on its way to Asterisk: its CSeq shifted past the numbers
    /// our earlier re-sends used in that call (PRACK's `RAck` too), and a CANCEL or the ACK of
    /// a failure aimed at the latest copy of its INVITE. The branch to send it under; `None`
    /// when the edge answered it itself (a CANCEL that stopped a re-send being prepared).
    fn renumber_for_edge_auth(
        &self,
        flow: &Flow,
        msg: &mut Message,
        method: &Method,
        branch: String,
    ) -> Option<String> {
        let (Some(call_id), Some((n, _))) = (msg.call_id().map(str::to_owned), msg.cseq()) else {
            return Some(branch);
        };
        if matches!(method, Method::Cancel | Method::Ack) {
            let target = self
                .resends
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .cancel_target(&branch, *method == Method::Cancel);
            match (target, msg.top_via()) {
                (CancelTarget::Moved(moved, cseq), Some(mut top)) => {
                    top.set_param("branch", Some(moved.clone()));
                    msg.set_top_via(&top);
                    msg.set_cseq(cseq, method);
                    return Some(moved);
                }
                (CancelTarget::Stopped, _) => {
                    self.answer_cancelled_resend(flow, msg);
                    return None;
                }
                _ => {}
            }
        }
        let offset = flow.calls().offset(&call_id);
        if offset > 0 {
            msg.set_cseq(n.saturating_add(offset), method);
            if *method == Method::Prack {
                shift_rack(msg, offset);
            }
        }
        Some(branch)
    }

    /// The client cancelled an INVITE while the edge was preparing its answer to Asterisk's
    /// challenge: Asterisk's transaction is over (its 401 was ACKed) and the INVITE will not go
    /// out again, so the edge answers the CANCEL (200) and the INVITE (487) itself.
    fn answer_cancelled_resend(&self, flow: &Flow, cancel: &Message) {
        self.count_client("forwarded");
        // Our Via is on top by now: answers go along the client's.
        let mut cancel = cancel.clone();
        cancel.remove_first("Via");
        let tag = crate::ids::random_hex(8);
        let ok = cancel.response(200, "OK", &tag, &[]);
        flow.send(Bytes::from(ok.to_bytes()));
        let Some((n, _)) = cancel.cseq() else {
            return;
        };
        if let Some(key) = CallKey::of_caller(&cancel) {
            self.dial_slots.end(&self.ctx.dialing, &key);
        }
        let mut invite = cancel;
        invite.set_cseq(n, &Method::Invite);
        if let Some(b) = invite.top_via().and_then(|v| v.branch().map(str::to_owned)) {
            self.absorb_ack_for(&b);
        }
        let terminated = invite.response(487, "Request Terminated", &tag, &[]);
        flow.send(Bytes::from(terminated.to_bytes()));
    }

    /// A TLS client may not claim an extension bound to a web user: such an extension is
    /// reachable only through its tickets (and the edge answers its challenges). Checked
    /// on what names the caller: `From` of a request that starts something, `To` of a
    /// REGISTER, and the user name of any credentials.
    fn check_unbound_claim(&self, msg: &Message, method: &Method) -> Result<(), String> {
        let bound = self.bound_extensions.load();
        if bound.is_empty() {
            return Ok(());
        }
        let user_of = |na: Option<super::uri::NameAddr>| na.and_then(|n| n.uri.user);
        let in_dialog = msg.to().and_then(|t| t.tag().map(str::to_owned)).is_some();
        let mut claims = Vec::new();
        if !in_dialog {
            claims.push(user_of(msg.from()));
        }
        if *method == Method::Register {
            claims.push(user_of(msg.to()));
        }
        for h in ["Authorization", "Proxy-Authorization"] {
            for v in msg.headers(h) {
                match super::digest::credentials_user(v) {
                    Some(user) => claims.push(Some(user)),
                    // pjsip may read what we cannot: unreadable credentials name nobody we
                    // could vouch for.
                    None => return Err("credentials pbxguard cannot read".to_string()),
                }
            }
        }
        match claims.into_iter().flatten().find(|u| bound.contains(u)) {
            Some(ext) => Err(format!(
                "extension {ext} belongs to a browser softphone; only its WebSocket may use it"
            )),
            None => Ok(()),
        }
    }

    /// A client's answer to a request Asterisk sent it through us.
    fn client_response(&self, flow: &Arc<Flow>, mut msg: Message, sip: &SipConfig) {
        let Some(top) = msg.top_via() else { return };
        let ours = top
            .param(TOKEN_PARAM)
            .flatten()
            .and_then(|t| self.flows.parse_token(t));
        // A client may only answer what we sent it.
        if ours.map(|(id, _)| id) != Some(flow.id) {
            self.count_client("stray");
            return;
        }
        msg.remove_first("Via");
        strip_identities(&mut msg, sip);
        if let Some((_, 'l')) = ours {
            // The answer to a request we made up ourselves (a teardown BYE): ours to keep.
            return;
        }
        let role = answer_role(&msg);
        if role == BodyRole::Capability {
            strip_body(&mut msg);
        } else if let Err(refusal) = self.check_media(&msg, flow.kind, sip) {
            self.count_client("media_refused");
            let status = msg.status().unwrap_or(0);
            if status < 200 {
                // Provisional answers with refused early media are simply not passed on.
                debug!(peer = %flow.peer, reason = %refusal, "not relaying a provisional answer with media the policy refuses");
                return;
            }
            if role == BodyRole::Session && status < 300 {
                self.refuse_client_answer(flow, &msg, &refusal);
                return;
            }
            // A failure, or an answer outside any session: relayed, without the body.
            info!(peer = %flow.peer, reason = %refusal, status, "removed media the policy refuses from a phone's answer");
            strip_body(&mut msg);
        }
        self.track_client_answer(flow, &msg);
        self.count_client("forwarded");
        self.up().send(Bytes::from(msg.to_bytes()));
    }

    /// A client's final answer to Asterisk's INVITE: a 2xx starts a dialog to remember.
    fn track_client_answer(&self, flow: &Flow, msg: &Message) {
        let (Some(call_id), Some((_, Method::Invite)), Some(status)) =
            (msg.call_id(), msg.cseq(), msg.status())
        else {
            return;
        };
        if status < 200 {
            return;
        }
        let mut calls = flow.calls();
        if !(200..300).contains(&status) {
            calls.answered(call_id);
            return;
        }
        let target = calls
            .ringing(call_id)
            .and_then(|invite| invite.contacts().first().map(|c| c.uri.to_string()));
        if let (Some(target), Some(local), Some(remote)) =
            (target, msg.header("To"), msg.header("From"))
        {
            let dialog = Dialog {
                local: local.to_string(),
                remote: remote.to_string(),
                target,
                client_cseq: None,
            };
            calls.confirm(call_id, dialog);
        }
    }

    /// A phone accepted an offer from Asterisk (a 2xx to INVITE, UPDATE or PRACK) with media
    /// the policy refuses: Asterisk gets 488 in its place; for an INVITE the phone also gets
    /// an ACK and a BYE, since its side of the call is up.
    fn refuse_client_answer(&self, flow: &Arc<Flow>, msg: &Message, refusal: &Refusal) {
        let is_invite = matches!(msg.cseq(), Some((_, Method::Invite)));
        if is_invite {
            warn!(peer = %flow.peer, reason = %refusal, "a phone answered a call with media the policy refuses; ending that call");
            // The 488 is ours, so is Asterisk's ACK for it (the phone's 2xx got ours).
            self.absorb_upstream_ack(msg);
            let target = msg.contacts().first().map(|c| c.uri.to_string());
            if let (Some(target), Some((n, _))) = (target, msg.cseq()) {
                for (method, seq) in [("ACK", n), ("BYE", n.saturating_add(1))] {
                    let req = self.generated(method, &target, msg, seq, &client_via(self, flow));
                    flow.send(req);
                }
            }
        } else {
            info!(peer = %flow.peer, reason = %refusal, "a phone accepted an offer with media the policy refuses; Asterisk gets 488");
        }
        self.up().send(restatus(
            msg,
            488,
            "Not Acceptable Here",
            &[self.warning(refusal)],
        ));
    }

    fn check_media(&self, msg: &Message, kind: Kind, sip: &SipConfig) -> Result<(), Refusal> {
        if msg.body().is_empty() {
            return Ok(());
        }
        sdp::check_body(
            msg.content_type(),
            msg.header("Content-Encoding"),
            msg.body(),
            &policy(sip),
            kind == Kind::Wss,
        )
        .map(|_| ())
    }

    fn remember_invite(&self, flow: u64, via: &Via, msg: &Message) {
        let (Some(branch), Some(uri), Some(from), Some(to), Some(call_id), Some((cseq, _))) = (
            via.branch(),
            msg.request_uri(),
            msg.header("From"),
            msg.header("To"),
            msg.call_id(),
            msg.cseq(),
        ) else {
            return;
        };
        let now = Instant::now();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.len() >= MAX_PENDING {
            pending.retain(|_, p| now.duration_since(p.at) < PENDING_TTL);
            if pending.len() >= MAX_PENDING {
                return;
            }
        }
        pending.insert(
            branch.to_string(),
            Pending {
                flow,
                request_uri: uri.to_string(),
                from: from.to_string(),
                to: to.to_string(),
                call_id: call_id.to_string(),
                cseq,
                cancelled: false,
                at: now,
            },
        );
    }

    /// Contacts of a REGISTER in flight: they route calls to this connection only once
    /// Asterisk has accepted the registration (an unauthenticated REGISTER must not be able
    /// to claim another phone's Contact).
    fn remember_register(&self, branch: &str, flow: u64, register: &Message) {
        let contacts = register
            .contacts()
            .iter()
            .map(|c| c.uri.to_string())
            .collect();
        let user = register.from().and_then(|f| f.uri.user);
        let now = Instant::now();
        let mut registers = self.registers.lock().unwrap_or_else(|e| e.into_inner());
        if registers.len() >= MAX_PENDING {
            registers.retain(|_, (_, _, _, at)| now.duration_since(*at) < PENDING_TTL);
            if registers.len() >= MAX_PENDING {
                return;
            }
        }
        registers.insert(branch.to_string(), (flow, contacts, user, now));
    }

    /// Asterisk answered a REGISTER: on 2xx its contacts now lead to the connection, and its
    /// user is an extension the connection places calls as.
    fn registered(&self, branch: &str, flow: u64, status: u16) {
        if status < 200 {
            return;
        }
        let done = self
            .registers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(branch);
        if let Some((owner, contacts, user, _)) = done.filter(|_| (200..300).contains(&status)) {
            if owner == flow {
                for c in contacts {
                    self.flows.remember_contact(c, flow);
                }
                if let (Some(user), Some(f)) = (user, self.flows.get(flow)) {
                    dial::registered(&f, &user);
                }
            }
        }
    }

    /// True when `ack` acknowledges a final answer we gave ourselves (it ends here).
    fn absorbed(&self, ack: &Message) -> bool {
        let Some(branch) = ack.top_via().and_then(|v| v.branch().map(str::to_owned)) else {
            return false;
        };
        let mut absorb = self.absorb.lock().unwrap_or_else(|e| e.into_inner());
        absorb.remove(&branch).is_some()
    }

    /// Asterisk's INVITE `msg` (or a response carrying its `Via` on top) got a failure answer
    /// from us: the ACK Asterisk sends for it stops here instead of reaching a phone that
    /// never saw that answer.
    fn absorb_upstream_ack(&self, msg: &Message) {
        if let Some(branch) = msg.top_via().and_then(|v| v.branch().map(str::to_owned)) {
            self.absorb_ack_for(&branch);
        }
    }

    fn absorb_ack_for(&self, client_branch: &str) {
        let now = Instant::now();
        let mut absorb = self.absorb.lock().unwrap_or_else(|e| e.into_inner());
        if absorb.len() >= MAX_PENDING {
            absorb.retain(|_, at| now.duration_since(*at) < PENDING_TTL);
            // Still full of live entries: the table stays bounded; at worst that ACK is
            // relayed, which its receiver ignores as a stray.
            if absorb.len() >= MAX_PENDING {
                return;
            }
        }
        absorb.insert(client_branch.to_string(), now);
    }

    // ---- Asterisk -> client -----------------------------------------------------------------

    /// One message from Asterisk.
    pub fn from_upstream(self: &Arc<Self>, raw: &[u8]) {
        let cfg = self.ctx.config.load();
        let Some(sip) = cfg.as_ref().map(|c| &c.sip) else {
            return;
        };
        let msg = match Message::parse(raw) {
            Ok(m) => m,
            Err(e) => {
                self.count_upstream("invalid");
                warn!(error = %e, "Asterisk sent a SIP message pbxguard cannot parse; dropped");
                return;
            }
        };
        if msg.status().is_some() {
            self.upstream_response(msg, sip);
        } else {
            self.upstream_request(msg, sip);
        }
    }

    fn upstream_response(self: &Arc<Self>, mut msg: Message, sip: &SipConfig) {
        let Some(top) = msg.top_via() else { return };
        let token = top
            .param(TOKEN_PARAM)
            .flatten()
            .and_then(|t| self.flows.parse_token(t));
        let Some((flow_id, flag)) = token else {
            self.count_upstream("stray");
            return;
        };
        let status = msg.status().unwrap_or(0);
        let method = msg.cseq().map(|(_, m)| m);
        let branch = top.branch().unwrap_or_default().to_string();
        if let Some(m) = &method {
            // Before anything counts it: a duplicate must not count twice (bans) or reach the
            // phone again.
            let key = Key {
                branch: branch.clone(),
                method: m.clone(),
            };
            let answer = self
                .transactions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .answer(&key, status, Instant::now());
            match answer {
                Answer::Absorb => {
                    self.count_upstream("duplicate");
                    return;
                }
                Answer::ResendAck(ack) => {
                    self.count_upstream("duplicate");
                    self.up().send(ack);
                    return;
                }
                Answer::Forward | Answer::Unknown => {}
            }
        }
        let flow = self.flows.get(flow_id);
        let bound = flow.as_ref().is_some_and(|f| f.binding.is_some());
        if let Some(flow) = &flow {
            // A bound WebSocket sends no credentials of its own: the edge's are the ones
            // judged, and a failure of those is no guess from the browser's address.
            if !bound {
                self.track_failure(flow, &msg, flag, method.as_ref(), sip);
            }
            let authenticated = matches!(
                method,
                Some(Method::Register | Method::Invite | Method::Subscribe | Method::Message)
            );
            if (200..300).contains(&status) && authenticated {
                flow.prove();
            }
        }
        if flag == 'l' {
            return;
        }
        if method == Some(Method::Register) {
            self.registered(&branch, flow_id, status);
        }
        // The phone's calls, whether or not its connection is still there: a BYE that ended
        // the dialog ends one; a CANCEL Asterisk knew nothing of after a challenge leaves no
        // answer to wait for.
        match (&method, CallKey::of_caller(&msg)) {
            (Some(Method::Bye), Some(key)) if status >= 200 => {
                let tag = msg.to().and_then(|t| t.tag().map(str::to_owned));
                self.dial_slots
                    .bye_answered(&self.ctx.dialing, &key, tag.as_deref(), status);
            }
            (Some(Method::Cancel), Some(key)) if status == 481 => {
                self.dial_slots.unknown_to_asterisk(&self.ctx.dialing, &key);
            }
            _ => {}
        }
        let mut invite = None;
        if method == Some(Method::Invite) && status >= 200 {
            let done = self
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&branch);
            if let Some(key) = CallKey::of_caller(&msg) {
                let cancelled = done.as_ref().is_some_and(|p| p.cancelled);
                if cancelled && (200..300).contains(&status) {
                    // Ended below with an ACK and a BYE.
                    self.dial_slots.end(&self.ctx.dialing, &key);
                } else if let Some((cseq, _)) = msg.cseq() {
                    let tag = msg.to().and_then(|t| t.tag().map(str::to_owned));
                    self.dial_slots.answered(
                        &self.ctx.dialing,
                        &key,
                        cseq,
                        status,
                        tag.as_deref(),
                        Instant::now(),
                    );
                }
            }
            if let Some(p) = done.as_ref().filter(|p| p.cancelled) {
                if status >= 300 {
                    self.ack_failure(p, &branch, &msg);
                } else {
                    // Answered before our CANCEL arrived: the call is up at Asterisk, and
                    // its client is gone or refused it. ACK and BYE end it now, rather than
                    // pjsip's wait for an ACK that never comes.
                    self.ack_and_bye_upstream(p.flow, &msg);
                }
                return;
            }
            invite = done;
        }
        if let (Some(flow), Some(m), true) = (&flow, &method, bound) {
            if self.edge_auth_answer(flow, &mut msg, &branch, status, m, invite.as_ref()) {
                return;
            }
        }
        msg.remove_first("Via");
        let Some(flow) = flow else {
            self.count_upstream("no_route");
            return;
        };
        let role = answer_role(&msg);
        if role == BodyRole::Capability {
            strip_body(&mut msg);
        } else if let Err(refusal) = self.check_media(&msg, flow.kind, sip) {
            self.count_upstream("media_refused");
            if role == BodyRole::Session && status < 300 {
                self.refuse_upstream_answer(&flow, &msg, &branch, &refusal);
                return;
            }
            if status < 200 {
                return;
            }
            // A failure, or an answer outside any session: relayed, without the body.
            info!(peer = %flow.peer, reason = %refusal, status, "removed media the policy refuses from Asterisk's answer");
            strip_body(&mut msg);
        }
        if let (Some(Method::Bye), true, Some(call_id)) = (&method, status >= 200, msg.call_id()) {
            flow.calls().end(call_id);
        }
        if method == Some(Method::Invite) && (200..300).contains(&status) {
            // The client's call is up: remembered, to be ended if its connection goes.
            if let (Some(call_id), Some(local), Some(remote), Some(target), Some((n, _))) = (
                msg.call_id(),
                msg.header("From"),
                msg.header("To"),
                msg.contacts().first().map(|c| c.uri.to_string()),
                msg.cseq(),
            ) {
                let dialog = Dialog {
                    local: local.to_string(),
                    remote: remote.to_string(),
                    target,
                    client_cseq: Some(n),
                };
                flow.calls().confirm(call_id, dialog);
            }
        }
        self.count_upstream("forwarded");
        flow.send(Bytes::from(msg.to_bytes()));
    }

    /// Asterisk's answer to a bound WebSocket's request. A challenge is answered by the edge
    /// itself, with the extension's credential from the vault (`true`: nothing goes to the
    /// browser now); any other answer gets the browser's own CSeq number back.
    fn edge_auth_answer(
        self: &Arc<Self>,
        flow: &Arc<Flow>,
        msg: &mut Message,
        branch: &str,
        status: u16,
        method: &Method,
        invite: Option<&Pending>,
    ) -> bool {
        // A CANCEL shares its INVITE's branch (and entry); only the INVITE's answer ends it.
        let last = status >= 200 && *method != Method::Cancel;
        let (client_cseq, sent) = {
            let mut resends = self.resends.lock().unwrap_or_else(|e| e.into_inner());
            if last {
                let sent = resends.finish(branch);
                (sent.as_ref().map(|s| s.client_cseq), sent)
            } else {
                (resends.get(branch).map(|s| s.client_cseq), None)
            }
        };
        if matches!(status, 401 | 407) {
            if let Some(p) = invite {
                // The challenged INVITE's transaction is ours to end (the browser never sees
                // the challenge): the hop-by-hop ACK.
                self.ack_failure(p, branch, msg);
            }
            let Some(sent) = sent else {
                // Not kept (the table was full): the browser cannot answer a challenge, so it
                // is told to try again shortly.
                self.count_client("edge_auth_failed");
                msg.remove_first("Via");
                if let Some(n) = self.client_cseq_of(flow, msg, None) {
                    msg.set_cseq(n, method);
                }
                if *method == Method::Invite {
                    self.absorb_upstream_ack(msg);
                    if let Some(key) = CallKey::of_caller(msg) {
                        self.dial_slots.end(&self.ctx.dialing, &key);
                    }
                }
                flow.send(restatus(
                    msg,
                    503,
                    "Service Unavailable",
                    &[("Retry-After", "5".into())],
                ));
                return true;
            };
            let header = if status == 407 {
                "Proxy-Authenticate"
            } else {
                "WWW-Authenticate"
            };
            match Challenge::best(msg.headers(header)) {
                Some(c) if sent.attempt == 0 || (c.stale && sent.attempt < MAX_ATTEMPTS) => {
                    self.resends
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .answering(&sent.first_branch);
                    self.answer_challenge(flow.clone(), sent, c, status);
                }
                Some(_) => self.edge_auth_failed(
                    flow,
                    &sent,
                    "Asterisk refused the extension's SIP credential held by pbxguard",
                ),
                None => self.edge_auth_failed(
                    flow,
                    &sent,
                    "Asterisk's challenge is not one pbxguard can answer",
                ),
            }
            return true;
        }
        if let Some(n) = self.client_cseq_of(flow, msg, client_cseq) {
            msg.set_cseq(n, method);
        }
        // A request outside a dialog that ended without one (a refused call, a MESSAGE):
        // its Call-ID will not be numbered again.
        let dialog = (200..300).contains(&status)
            && matches!(method, Method::Invite | Method::Subscribe | Method::Refer);
        if sent.is_some() && *method != Method::Register && !dialog {
            if let Some(call_id) = msg.call_id() {
                flow.calls().forget_offset(call_id);
            }
        }
        false
    }

    /// The client's CSeq number for an answer: remembered with its request, else (a request
    /// inside a dialog, or one not kept) the answer's number less the call's offset.
    fn client_cseq_of(&self, flow: &Flow, msg: &Message, kept: Option<u32>) -> Option<u32> {
        kept.or_else(|| {
            let offset = msg.call_id().map_or(0, |c| flow.calls().offset(c));
            msg.cseq()
                .filter(|_| offset > 0)
                .map(|(n, _)| n.saturating_sub(offset))
        })
    }

    /// Fetches the extension's credential and re-sends the challenged request with it
    /// (asynchronously: the vault and the store are).
    fn answer_challenge(
        self: &Arc<Self>,
        flow: Arc<Flow>,
        sent: Sent,
        challenge: Challenge,
        status: u16,
    ) {
        let edge = self.clone();
        tokio::spawn(async move {
            let Some(binding) = flow.binding.as_ref() else {
                return;
            };
            let credential = edge.sip_credential(&binding.extension).await;
            let Some((username, password)) = credential else {
                edge.give_up_resend(
                    &flow,
                    &sent,
                    "pbxguard holds no SIP credential for this extension",
                );
                return;
            };
            let answer = Credentials {
                challenge: &challenge,
                header: if status == 407 {
                    "Proxy-Authorization"
                } else {
                    "Authorization"
                },
                username: &username,
                password: &password,
            };
            if let Err(why) = edge.resend_with_credentials(&flow, &sent, &answer) {
                edge.give_up_resend(&flow, &sent, why);
            }
        });
    }

    /// A challenge the edge set out to answer cannot be: the browser gets 403, unless it
    /// cancelled meanwhile (it already has its 487).
    fn give_up_resend(&self, flow: &Flow, sent: &Sent, why: &'static str) {
        let go_on = self
            .resends
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .answered(&sent.first_branch);
        if go_on {
            self.edge_auth_failed(flow, sent, why);
        }
    }

    /// The SIP credential whose id is `extension` (`pbxguard sip credential set`): its user
    /// name and, decrypted for this one use, its password.
    async fn sip_credential(
        &self,
        extension: &str,
    ) -> Option<(String, zeroize::Zeroizing<Vec<u8>>)> {
        let row = match self.ctx.store.sip_credential(extension).await {
            Ok(Some(row)) => row,
            Ok(None) => return None,
            Err(e) => {
                warn!(extension, error = %e, "reading a SIP credential failed");
                return None;
            }
        };
        match self
            .ctx
            .vault
            .get(&crate::realtime::secret_name(extension))
            .await
        {
            Ok(password) => Some((row.username, password)),
            Err(e) => {
                warn!(extension, error = %e, "decrypting a SIP credential failed");
                None
            }
        }
    }

    /// The challenged request again: the next CSeq, a new branch (a new transaction), and the
    /// answer to the challenge. Decided and sent under the flow's call lock, so that the
    /// connection's teardown sees either this copy (and cancels it) or a closed table (and
    /// nothing goes out); and under the re-send table's lock, so that a client's CANCEL either
    /// stopped it or finds where it went.
    fn resend_with_credentials(
        &self,
        flow: &Flow,
        sent: &Sent,
        answer: &Credentials<'_>,
    ) -> Result<(), &'static str> {
        let mut req = Message::parse(&sent.request).map_err(|_| "the request cannot be re-sent")?;
        let (Some(call_id), Some((n, method)), Some(uri), Some(mut top)) = (
            req.call_id().map(str::to_owned),
            req.cseq(),
            req.request_uri().map(|u| u.to_string()),
            req.top_via(),
        ) else {
            return Err("the request cannot be re-sent");
        };
        let next = n.checked_add(1).filter(|c| req.set_cseq(*c, &method));
        let Some(next) = next else {
            return Err("the call's CSeq numbers are used up");
        };
        let attempt = sent.attempt + 1;
        // NUL cannot occur in a client's branch: no client branch derives the same.
        let branch = self.flows.branch(
            flow.id,
            &format!("{}\0edge-auth\0{attempt}", sent.client_branch),
        );
        top.set_param("branch", Some(branch.clone()));
        req.set_top_via(&top);
        let kept = sent.next(Bytes::from(req.to_bytes()));
        let cnonce = crate::ids::random_hex(16);
        let value = answer.challenge.answer(
            answer.username,
            answer.password,
            method.as_str(),
            &uri,
            &cnonce,
        );
        req.push_back(answer.header, value);
        let bytes = Bytes::from(req.to_bytes());

        let mut calls = flow.calls();
        let mut resends = self.resends.lock().unwrap_or_else(|e| e.into_inner());
        if !resends.answered(&sent.first_branch) || calls.is_closed() || flow.close.is_cancelled() {
            // Cancelled meanwhile (the client was answered 487), or the connection is gone.
            return Ok(());
        }
        calls.shift(&call_id);
        resends.keep(&branch, kept);
        if method == Method::Invite {
            resends.moved(&sent.first_branch, &branch, next);
            self.remember_invite(flow.id, &top, &req);
            if let Some(key) = CallKey::of_caller(&req) {
                self.dial_slots.resent(&key, next, Instant::now());
            }
        }
        if method == Method::Register {
            self.remember_register(&branch, flow.id, &req);
        }
        self.count_client("edge_authenticated");
        self.send_request(&branch, &method, bytes, Some(flow.id));
        Ok(())
    }

    /// The edge could not authenticate a bound WebSocket's request: the browser gets 403 for
    /// it (with why in `Warning`), never the challenge it cannot answer.
    fn edge_auth_failed(&self, flow: &Flow, sent: &Sent, why: &'static str) {
        if flow.close.is_cancelled() {
            return;
        }
        let extension = flow.binding.as_ref().map_or("", |b| b.extension.as_str());
        warn!(extension, peer = %flow.peer, why, "the edge could not authenticate a browser softphone to Asterisk");
        self.count_client("edge_auth_failed");
        let Ok(mut req) = Message::parse(&sent.request) else {
            return;
        };
        req.remove_first("Via");
        let Some((_, method)) = req.cseq() else {
            return;
        };
        req.set_cseq(sent.client_cseq, &method);
        if method == Method::Invite {
            self.absorb_ack_for(&sent.client_branch);
            if let Some(key) = CallKey::of_caller(&req) {
                self.dial_slots.end(&self.ctx.dialing, &key);
            }
        }
        if let Some(call_id) = req.call_id() {
            if method != Method::Register {
                flow.calls().forget_offset(call_id);
            }
        }
        let refusal = Refusal {
            reason: why.to_string(),
        };
        let tag = crate::ids::random_hex(8);
        let resp = req.response(403, "Forbidden", &tag, &[self.warning(&refusal)]);
        flow.send(Bytes::from(resp.to_bytes()));
    }

    /// A client connection ended. A WebSocket's calls end with it (a browser cannot come back
    /// into them), as do those of a TLS connection the edge closed; a phone that dropped its
    /// connection may reconnect and end its calls itself.
    pub fn connection_ended(&self, flow: &Flow, by_edge: bool) {
        self.resends
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .forget_flow(flow.id);
        if flow.kind == Kind::Wss || by_edge {
            self.end_calls(flow);
        }
    }

    /// Ends every call of every connection (shutdown), while Asterisk can still be told.
    pub fn end_all_calls(&self) {
        for flow in self.flows.all() {
            self.end_calls(&flow);
        }
    }

    /// Ends `flow`'s calls towards Asterisk: CANCEL for its INVITEs still ringing, 480 for
    /// Asterisk's INVITEs still ringing at it, BYE for its confirmed dialogs. Once per flow.
    fn end_calls(&self, flow: &Flow) {
        let left = flow.calls().take();
        self.dial_slots.flow_ended(&self.ctx.dialing, flow.id);
        let cancels: Vec<(String, Pending)> = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending
                .iter_mut()
                .filter(|(_, p)| p.flow == flow.id && !p.cancelled)
                .map(|(b, p)| {
                    p.cancelled = true;
                    (b.clone(), p.clone())
                })
                .collect()
        };
        for (branch, p) in &cancels {
            let cancel = self.cancel_for(p, branch);
            self.send_request(branch, &Method::Cancel, cancel, None);
        }
        for invite in &left.ringing {
            self.answer_upstream(invite, 480, "Temporarily Unavailable", &[]);
        }
        for (call_id, d, offset) in &left.dialogs {
            let via = self.generated_upstream_via(flow.id);
            let branch = via.branch().unwrap_or_default().to_string();
            // Past whatever the client used: requests in the early dialog (PRACK, UPDATE)
            // are not counted, and pjsip only wants a higher number.
            let seq = d
                .client_cseq
                .unwrap_or(0)
                .saturating_add(TEARDOWN_CSEQ_STEP)
                .saturating_add(*offset)
                .min((1 << 31) - 1);
            let bye = format!(
                "BYE {} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {call_id}\r\nCSeq: {seq} BYE\r\nContent-Length: 0\r\n\r\n",
                d.target, d.local, d.remote
            );
            self.send_request(&branch, &Method::Bye, Bytes::from(bye), None);
        }
        let (calls, early) = (left.dialogs.len(), cancels.len() + left.ringing.len());
        if calls + early > 0 {
            info!(peer = %flow.peer, calls, early, "a SIP connection closed; its calls were ended on Asterisk's side");
            self.ctx
                .metrics
                .sip_client_messages
                .get_or_create(&label("call_ended"))
                .inc_by((calls + early) as u64);
        }
    }

    /// 401/407 or 403 to a request that carried credentials, and 404 to a REGISTER, count as
    /// failed authentications from the client's address (brute force, enumeration). A
    /// challenge marked `stale=true` is not a failure: the password was right, only the nonce
    /// had expired (pjsip's last 32 s), which phones meet on nearly every refresh.
    fn track_failure(
        &self,
        flow: &Flow,
        msg: &Message,
        flag: char,
        method: Option<&Method>,
        sip: &SipConfig,
    ) {
        if !auth_failure(msg, flag, method) {
            return;
        }
        let ip = flow.peer.ip();
        if self.bans.strike(
            ip,
            crate::bans::Source::Sip,
            "auth_failures",
            sip.ban_threshold,
            sip.ban_window,
            Some(sip.ban_duration),
        ) {
            self.banned(ip, "auth_failures");
        }
    }

    /// Asterisk answered a client's INVITE (provisional or 2xx) with media the policy
    /// refuses: the client gets a 488 instead; Asterisk gets a CANCEL (provisional answer) or
    /// an ACK and a BYE (2xx). A 2xx to UPDATE or PRACK becomes a 488 for the client.
    fn refuse_upstream_answer(
        &self,
        flow: &Arc<Flow>,
        msg: &Message,
        branch: &str,
        refusal: &Refusal,
    ) {
        let status = msg.status().unwrap_or(0);
        let is_invite = matches!(msg.cseq(), Some((_, Method::Invite)));
        if !is_invite {
            if (200..300).contains(&status) {
                info!(peer = %flow.peer, reason = %refusal, "Asterisk accepted an offer with media the policy refuses; the phone gets 488");
                flow.send(restatus(
                    msg,
                    488,
                    "Not Acceptable Here",
                    &[self.warning(refusal)],
                ));
            }
            return;
        }
        warn!(peer = %flow.peer, reason = %refusal, "Asterisk answered a call with media the policy refuses; ending that call");
        let client_branch = msg
            .top_via()
            .and_then(|v| v.branch().map(str::to_owned))
            .unwrap_or_default();
        if (200..300).contains(&status) {
            self.ack_and_bye_upstream(flow.id, msg);
            if let Some(key) = CallKey::of_caller(msg) {
                self.dial_slots.end(&self.ctx.dialing, &key);
            }
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(branch);
        } else {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let Some(p) = pending.get_mut(branch) else {
                return;
            };
            if p.cancelled {
                return;
            }
            p.cancelled = true;
            let cancel = self.cancel_for(p, branch);
            drop(pending);
            self.send_request(branch, &Method::Cancel, cancel, None);
        }
        self.absorb_ack_for(&client_branch);
        flow.send(restatus(
            msg,
            488,
            "Not Acceptable Here",
            &[self.warning(refusal)],
        ));
    }

    /// Ends a call Asterisk answered (2xx `msg`) that its client will never have: ACK, then
    /// BYE, each its own transaction, their answers stopping here.
    fn ack_and_bye_upstream(&self, flow: u64, msg: &Message) {
        let target = msg.contacts().first().map(|c| c.uri.to_string());
        let (Some(target), Some((n, _))) = (target, msg.cseq()) else {
            return;
        };
        for (method, seq) in [(Method::Ack, n), (Method::Bye, n.saturating_add(1))] {
            let via = self.generated_upstream_via(flow);
            let branch = via.branch().unwrap_or_default().to_string();
            let req = self.generated(method.as_str(), &target, msg, seq, &via);
            self.send_request(&branch, &method, req, None);
        }
    }

    fn generated_upstream_via(&self, flow: u64) -> Via {
        let seed = crate::ids::random_hex(8);
        self.upstream_via(flow, 'l', &seed)
    }

    /// An in-dialog request we originate (teardown), along the dialog of response `msg`.
    fn generated(&self, method: &str, target: &str, msg: &Message, seq: u32, via: &Via) -> Bytes {
        let from = msg.header("From").unwrap_or_default();
        let to = msg.header("To").unwrap_or_default();
        let call_id = msg.call_id().unwrap_or_default();
        Bytes::from(format!(
            "{method} {target} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {seq} {method}\r\nContent-Length: 0\r\n\r\n"
        ))
    }

    /// CANCEL for an INVITE we forwarded: same Request-URI, From, To, Call-ID, CSeq number
    /// and top `Via` (our branch), as RFC 3261 §9.1 wants.
    fn cancel_for(&self, p: &Pending, branch: &str) -> Bytes {
        let via = self.cancel_via(p.flow, branch);
        Bytes::from(format!(
            "CANCEL {} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} CANCEL\r\nContent-Length: 0\r\n\r\n",
            p.request_uri, p.from, p.to, p.call_id, p.cseq
        ))
    }

    /// Our `Via` with the INVITE's branch but a local flag, so the CANCEL's 200 stops here.
    fn cancel_via(&self, flow: u64, branch: &str) -> Via {
        let local = self.up().local();
        Via {
            transport: self.up().via_transport().to_string(),
            host: host_of(local.ip()),
            port: Some(local.port()),
            params: vec![
                ("branch".into(), Some(branch.to_string())),
                ("rport".into(), None),
                (TOKEN_PARAM.into(), Some(self.flows.token(flow, 'l'))),
            ],
        }
    }

    /// The hop-by-hop ACK for the failure answer to an INVITE we cancelled.
    fn ack_failure(&self, p: &Pending, branch: &str, msg: &Message) {
        let via = self.cancel_via(p.flow, branch);
        let to = msg.header("To").unwrap_or(&p.to);
        let ack = Bytes::from(format!(
            "ACK {} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {} ACK\r\nContent-Length: 0\r\n\r\n",
            p.request_uri, p.from, p.call_id, p.cseq
        ));
        self.send_request(branch, &Method::Ack, ack, None);
    }

    fn upstream_request(&self, mut msg: Message, sip: &SipConfig) {
        let Some(method) = msg.method().cloned() else {
            return;
        };
        if method == Method::Ack && self.absorbed(&msg) {
            return;
        }
        if method == Method::Bye {
            // Asterisk ended a call a phone placed: its slot is free, whether or not the phone
            // is still connected to hear of it.
            if let Some(key) = CallKey::of_callee(&msg) {
                self.dial_slots.end(&self.ctx.dialing, &key);
            }
        }
        let routed = msg.routes().iter().find_map(|r| {
            r.uri
                .param(TOKEN_PARAM)
                .flatten()
                .and_then(|t| self.flows.parse_token(t))
        });
        // A route naming a connection that has gone means that phone is gone: never hand its
        // calls to whoever holds the same Contact now. Only route-less requests (Asterisk
        // without `support_path`) fall back to the registered Contact.
        let flow = match routed {
            Some((id, _)) => self.flows.get(id),
            None => msg
                .request_uri()
                .and_then(|u| self.flows.by_contact(&u.to_string())),
        };
        let Some(flow) = flow else {
            self.count_upstream("no_route");
            // pjsip's qualify counts any answer as "reachable": a qualify for a connection that
            // has gone stays unanswered, so the contact turns Unreachable and queues stop
            // ringing a logged-out agent. Everything else learns at once.
            if method != Method::Options {
                self.answer_upstream(&msg, 480, "Temporarily Unavailable", &[]);
            }
            return;
        };
        msg.remove_all("Route");
        match msg.max_forwards() {
            Some(0) | None => {
                self.answer_upstream(&msg, 483, "Too Many Hops", &[]);
                return;
            }
            Some(n) => msg.set_max_forwards(n - 1),
        }
        if body_role(&method) == BodyRole::Capability {
            strip_body(&mut msg);
        } else if let Err(refusal) = self.check_media(&msg, flow.kind, sip) {
            self.count_upstream("media_refused");
            info!(peer = %flow.peer, reason = %refusal, "refused a media offer from Asterisk");
            self.answer_upstream(&msg, 488, "Not Acceptable Here", &[self.warning(&refusal)]);
            return;
        }
        if let Some(call_id) = msg.call_id() {
            let starts = msg.to().and_then(|t| t.tag().map(str::to_owned)).is_none();
            match method {
                Method::Invite if starts => flow.calls().ring(call_id, msg.clone()),
                Method::Bye => flow.calls().end(call_id),
                Method::Cancel => flow.calls().answered(call_id),
                _ => {}
            }
        }
        let incoming = msg
            .top_via()
            .and_then(|v| v.branch().map(str::to_owned))
            .unwrap_or_default();
        let mut via = client_via(self, &flow);
        via.set_param("branch", Some(self.flows.branch(flow.id, &incoming)));
        via.set_param(TOKEN_PARAM, Some(self.flows.token(flow.id, 'n')));
        msg.push_front("Via", via.to_string());
        let in_dialog = msg.to().and_then(|t| t.tag().map(str::to_owned)).is_some();
        if record_routes(&method) && !in_dialog {
            msg.push_front("Record-Route", self.loopback_uri(flow.id));
            msg.push_front("Record-Route", self.public_uri(&flow, sip));
        }
        self.count_upstream("forwarded");
        flow.send(Bytes::from(msg.to_bytes()));
    }

    /// Re-reads which extensions belong to web users (TLS clients may not claim them).
    pub async fn refresh_bound_extensions(&self) {
        match self.ctx.store.user_extensions().await {
            Ok(rows) => self
                .bound_extensions
                .store(Arc::new(rows.into_iter().map(|(_, ext)| ext).collect())),
            Err(e) => {
                warn!(error = %e, "reading users' extensions failed; keeping the ones in memory")
            }
        }
    }

    /// Forgets INVITEs and absorbed ACKs older than their transactions can live.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.resends
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sweep(now);
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, p| now.duration_since(p.at) < PENDING_TTL);
        self.absorb
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, at| now.duration_since(*at) < PENDING_TTL);
        self.registers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, (_, _, _, at)| now.duration_since(*at) < PENDING_TTL);
        self.dial_slots.sweep(&self.ctx.dialing, now);
    }
}

/// The methods we pass; anything else is answered 501 here.
pub const ALLOW: &str =
    "INVITE, ACK, BYE, CANCEL, REGISTER, OPTIONS, INFO, UPDATE, PRACK, SUBSCRIBE, NOTIFY, REFER, MESSAGE, PUBLISH";

/// Our `Via` towards a client (a fresh branch and a local flag, for requests we make up).
fn client_via(edge: &Edge, flow: &Flow) -> Via {
    let host = edge
        .ctx
        .config
        .load()
        .as_ref()
        .and_then(|c| c.sip.public_host.clone())
        .unwrap_or_else(|| host_of(flow.local.ip()));
    Via {
        transport: flow.kind.via_name().to_string(),
        host,
        port: Some(flow.local.port()),
        params: vec![
            (
                "branch".into(),
                Some(format!("z9hG4bK-pg{}", crate::ids::random_hex(8))),
            ),
            (TOKEN_PARAM.into(), Some(edge.flows.token(flow.id, 'l'))),
        ],
    }
}

/// Whether Asterisk's answer `msg` (to a request our token flagged `flag`: `a` = it carried
/// credentials) is a failed authentication.
fn auth_failure(msg: &Message, flag: char, method: Option<&Method>) -> bool {
    let stale = || {
        ["WWW-Authenticate", "Proxy-Authenticate"].iter().any(|h| {
            msg.headers(h).any(|v| {
                v.to_ascii_lowercase()
                    .replace([' ', '"'], "")
                    .contains("stale=true")
            })
        })
    };
    match msg.status().unwrap_or(0) {
        401 | 407 => flag == 'a' && !stale(),
        403 => flag == 'a' || method == Some(&Method::Register),
        404 => method == Some(&Method::Register),
        _ => false,
    }
}

/// Identity assertions only pbxguard (or a trusted peer of Asterisk) may make: our own
/// header under any `X-PBXGuard-` name, whatever is configured now (a reload may have renamed
/// it while pjsip still matches the old name), and the asserted-identity headers that
/// pjsip's `trust_id_inbound` would believe.
fn strip_identities(msg: &mut Message, sip: &SipConfig) {
    let ours = sip.identity_header.to_ascii_lowercase();
    msg.remove_where(|name| {
        let name = name.to_ascii_lowercase();
        name == ours
            || name.starts_with("x-pbxguard-")
            || matches!(
                name.as_str(),
                "p-asserted-identity" | "p-preferred-identity" | "remote-party-id"
            )
    });
}

/// Shifts the CSeq number inside a PRACK's `RAck` (`response-num CSeq-num method`, RFC 3262
/// §7.2) by `offset`, as the INVITE it acknowledges was renumbered.
fn shift_rack(msg: &mut Message, offset: u32) {
    let Some(rack) = msg.header("RAck").map(str::to_owned) else {
        return;
    };
    let parts: Vec<&str> = rack.split_whitespace().collect();
    if let [rseq, cseq, method] = parts[..] {
        if let Some(n) = cseq.parse::<u32>().ok().and_then(|n| n.checked_add(offset)) {
            if n < 1 << 31 {
                msg.set_header("RAck", format!("{rseq} {n} {method}"));
            }
        }
    }
}

/// Adds `path` to `Supported` (RFC 3327 §5.2: the registrar must know Path is in use).
fn add_supported_path(msg: &mut Message) {
    let current = msg.header("Supported").map(str::to_owned);
    let has = current
        .as_deref()
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("path")));
    if has {
        return;
    }
    msg.remove_all("Supported");
    let value = match current {
        Some(v) if !v.trim().is_empty() => format!("{v}, path"),
        _ => "path".to_string(),
    };
    msg.push_back("Supported", value);
}

/// A WebSocket bound to a web session may only speak as that session's extension: `From` on
/// every request that starts something (no To-tag), and `To` as well on REGISTER.
fn check_identity(flow: &Flow, msg: &Message, method: &Method) -> Result<(), &'static str> {
    let Some(binding) = &flow.binding else {
        return Ok(());
    };
    let user_of = |na: Option<super::uri::NameAddr>| na.and_then(|n| n.uri.user);
    let in_dialog = msg.to().and_then(|t| t.tag().map(str::to_owned)).is_some();
    let from_ok = user_of(msg.from()).as_deref() == Some(binding.extension.as_str());
    if *method == Method::Register {
        let to_ok = user_of(msg.to()).as_deref() == Some(binding.extension.as_str());
        if !(from_ok && to_ok) {
            return Err("REGISTER From and To must be the extension of this session");
        }
    } else if !in_dialog && !from_ok {
        return Err("From must be the extension of this session");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::ticket::Binding;
    use tokio_util::sync::CancellationToken;

    fn msg(method: &str, from: &str, to: &str, extra: &str) -> Message {
        // `extra` is a To parameter (";tag=t") or further header lines ("\r\nName: value").
        let raw = format!(
            "{method} sip:x@pbx SIP/2.0\r\nVia: SIP/2.0/WSS a.invalid;branch=z9hG4bK1\r\nMax-Forwards: 70\r\nFrom: <sip:{from}@pbx>;tag=f\r\nTo: <sip:{to}@pbx>{extra}\r\nCall-ID: c\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
        );
        Message::parse(raw.as_bytes()).unwrap()
    }

    fn flow(binding: Option<Binding>) -> Arc<Flow> {
        let flows = Flows::new();
        let (f, _rx) = flows.add(
            Kind::Wss,
            "192.0.2.1:1".parse().unwrap(),
            "192.0.2.2:8089".parse().unwrap(),
            binding,
            CancellationToken::new(),
        );
        f
    }

    #[test]
    fn a_bound_websocket_speaks_only_as_its_extension() {
        let bound = flow(Some(Binding {
            user: "alice".into(),
            extension: "1001".into(),
            session: "s".into(),
        }));
        let ok = |m: &Message| check_identity(&bound, m, m.method().unwrap()).is_ok();
        assert!(ok(&msg("REGISTER", "1001", "1001", "")));
        assert!(!ok(&msg("REGISTER", "1001", "1002", "")));
        assert!(!ok(&msg("REGISTER", "1002", "1001", "")));
        assert!(ok(&msg("INVITE", "1001", "2000", "")));
        assert!(!ok(&msg("INVITE", "1002", "2000", "")));
        assert!(!ok(&msg("MESSAGE", "10011", "2000", "")));
        // In a dialog Asterisk started, the phone's From is whatever Asterisk addressed it as.
        assert!(ok(&msg("BYE", "abc123", "2000", ";tag=t")));
        // TLS phones are not bound.
        let free = flow(None);
        assert!(check_identity(&free, &msg("INVITE", "9", "2", ""), &Method::Invite).is_ok());
    }

    #[test]
    fn only_real_authentication_failures_count() {
        let resp = |status: &str, method: &str, extra: &str| {
            let raw = format!(
                "SIP/2.0 {status}\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\nFrom: <sip:1@pbx>;tag=f\r\nTo: <sip:1@pbx>;tag=t\r\nCall-ID: c\r\nCSeq: 2 {method}\r\n{extra}Content-Length: 0\r\n\r\n"
            );
            Message::parse(raw.as_bytes()).unwrap()
        };
        let reg = Some(&Method::Register);
        let inv = Some(&Method::Invite);
        let challenge = "WWW-Authenticate: Digest realm=\"asterisk\",nonce=\"n\"\r\n";
        let stale = "WWW-Authenticate: Digest realm=\"asterisk\",nonce=\"n\",stale=true\r\n";
        let stale_quoted =
            "Proxy-Authenticate: Digest realm=\"asterisk\", nonce=\"n\", stale=\"TRUE\"\r\n";
        assert!(auth_failure(
            &resp("401 Unauthorized", "REGISTER", challenge),
            'a',
            reg
        ));
        assert!(!auth_failure(
            &resp("401 Unauthorized", "REGISTER", challenge),
            'n',
            reg
        ));
        assert!(!auth_failure(
            &resp("401 Unauthorized", "REGISTER", stale),
            'a',
            reg
        ));
        assert!(!auth_failure(
            &resp("407 Proxy Authentication Required", "INVITE", stale_quoted),
            'a',
            inv
        ));
        assert!(auth_failure(
            &resp("403 Forbidden", "REGISTER", ""),
            'n',
            reg
        ));
        assert!(auth_failure(&resp("403 Forbidden", "INVITE", ""), 'a', inv));
        // A 403 to an INVITE without credentials (dialplan, ACL) is no guess at a password.
        assert!(!auth_failure(
            &resp("403 Forbidden", "INVITE", ""),
            'n',
            inv
        ));
        assert!(auth_failure(
            &resp("404 Not Found", "REGISTER", ""),
            'n',
            reg
        ));
        assert!(!auth_failure(
            &resp("404 Not Found", "INVITE", ""),
            'n',
            inv
        ));
        assert!(!auth_failure(&resp("200 OK", "REGISTER", ""), 'a', reg));
    }

    #[test]
    fn path_support_is_announced_once() {
        let mut m = msg("REGISTER", "1", "1", "");
        add_supported_path(&mut m);
        assert_eq!(m.header("Supported"), Some("path"));
        let mut m = msg("REGISTER", "1", "1", "\r\nSupported: outbound, gruu");
        add_supported_path(&mut m);
        assert_eq!(m.header("Supported"), Some("outbound, gruu, path"));
        let mut m = msg("REGISTER", "1", "1", "\r\nSupported: PATH");
        add_supported_path(&mut m);
        assert_eq!(m.header("Supported"), Some("PATH"));
    }

    #[test]
    fn the_media_policy_reads_bodies_by_method() {
        for m in [Method::Invite, Method::Update, Method::Prack, Method::Ack] {
            assert_eq!(body_role(&m), BodyRole::Session, "{m}");
        }
        assert_eq!(body_role(&Method::Options), BodyRole::Capability);
        for m in [
            Method::Message,
            Method::Notify,
            Method::Register,
            Method::Bye,
        ] {
            assert_eq!(body_role(&m), BodyRole::Other, "{m}");
        }
        // A response by the request it answers.
        let raw = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\nFrom: <sip:1@pbx>;tag=f\r\nTo: <sip:1@pbx>;tag=t\r\nCall-ID: c\r\nCSeq: 2 OPTIONS\r\nContent-Type: application/sdp\r\nContent-Disposition: session\r\nContent-Length: 4\r\n\r\nv=0\n";
        let mut m = Message::parse(raw.as_bytes()).unwrap();
        assert_eq!(answer_role(&m), BodyRole::Capability);
        strip_body(&mut m);
        let out = String::from_utf8(m.to_bytes()).unwrap();
        assert!(out.ends_with("Content-Length: 0\r\n\r\n"), "{out}");
        assert!(!out.contains("Content-Type") && !out.contains("Content-Disposition"));
        assert!(Message::parse(out.as_bytes()).is_ok());
    }

    #[test]
    fn only_dialog_starting_methods_are_record_routed() {
        for m in [
            Method::Invite,
            Method::Subscribe,
            Method::Refer,
            Method::Notify,
        ] {
            assert!(record_routes(&m));
        }
        for m in [
            Method::Register,
            Method::Options,
            Method::Message,
            Method::Bye,
        ] {
            assert!(!record_routes(&m));
        }
    }
}
