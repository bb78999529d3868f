//! The SIP edge (the real binary) in front of a real Asterisk 22: pjsip configured from the
//! shipped `etc/asterisk/pjsip.conf`, its auth objects fetched from pbxguard's `[realtime]`,
//! and `[sip] upstream` pointing at the example's loopback UDP transport. Real clients
//! (baresip over TLS with SDES and DTLS-SRTP, JsSIP over secure WebSocket with a ticket) and a
//! raw SIP/TLS phone for what those clients cannot be made to do (plain RTP, 183 early media,
//! CANCEL at a chosen moment, answering Asterisk's INVITE by hand).
//!
//! What Asterisk saw is read from Asterisk itself: `pjsip show contacts`, the registrar's
//! contacts in its database (the stored Path), `core show channels`, and its full log with
//! `pjsip set logger on`. The stand-in peer
//! (`tests/peers/sip_peer.py`, used by `tests/sip*.rs`) stays for faults Asterisk cannot be made
//! to produce on demand.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::asterisk::{self, Asterisk, Setup};
use common::sip::{
    digest, register_on, rnd, sdes_key, sdp_plain, sdp_sdes, SipMsg, SipTls, ORIGIN,
};
use common::smtp::Sink;
use common::{finish, free_port, run_for, Daemon, Env};

const T: Duration = Duration::from_secs(10);
const CLIENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");
const RT_USER: &str = "asterisk";
const RT_PASSWORD: &str = "realtime-password-for-sip-tests";
/// qualify on the phone's AOR, as most PBXs run it (issue: the edge once dropped the answers).
const QUALIFY: &str = "\n[1001](+type=aor)\nqualify_frequency = 2\n";
/// A desk phone doing DTLS-SRTP over TLS: the shipped example's 1001 is SDES-only (pjsip takes one
/// `media_encryption` per endpoint and answers any other offer 488), so a site with such phones
/// adds an endpoint like this one; baresip offers `UDP/TLS/RTP/SAVPF`, which pjsip accepts only
/// with `use_avpf = yes`.
const DTLS_PHONE: &str = "
[1002]
type = endpoint
context = phones
disallow = all
allow = ulaw,alaw
auth = 1002
aors = 1002
transport = transport-loopback
media_encryption = dtls
dtls_auto_generate_cert = yes
dtls_setup = actpass
use_avpf = yes
rtp_symmetric = yes
force_rport = yes
media_address = 127.0.0.1
bind_rtp_to_media_address = yes
rewrite_contact = no

[1002]
type = aor
max_contacts = 2
remove_existing = yes
support_path = yes
";
/// An extension that rings until cancelled, for CANCEL before answer.
const RINGING: &str =
    "[phones](+)\nexten => 602,1,Ringing()\n same => n,Wait(30)\n same => n,Answer()\n";

/// Asterisk with the shipped pjsip.conf and realtime auth, and pbxguard (`[realtime]` and
/// `[sip]`) in front of it; extension N's password is `pwN`, only in the vault.
struct Site {
    ast: Asterisk,
    env: Env,
    daemon: Daemon,
    tls: u16,
    wss: u16,
}

fn site(pjsip_extra: &str, dialplan_extra: &str) -> Option<Site> {
    site_with(pjsip_extra, dialplan_extra, "")
}

/// As [`site`], with `daemon_extra` (further sections: `[dialing]`, `[smtp]`) in pbxguard's
/// configuration.
fn site_with(pjsip_extra: &str, dialplan_extra: &str, daemon_extra: &str) -> Option<Site> {
    let prefix = asterisk::prefix()?;
    let env = Env::new();
    let rt_port = free_port();
    let (tls, wss) = (free_port(), free_port());
    // Asterisk's SIP port is known once it runs, and Asterisk needs the realtime port first.
    let write = |ast_sip: u16| {
        let extra = format!(
            "\n[realtime]\nlisten = \"127.0.0.1:{rt_port}\"\nusername = \"{RT_USER}\"\n\
             \n[sip]\ntls_listen = \"127.0.0.1:{tls}\"\nwss_listen = \"127.0.0.1:{wss}\"\n\
             upstream = \"127.0.0.1:{ast_sip}\"\nupstream_bind = \"127.0.0.1:0\"\n\
             wss_origins = [\"{ORIGIN}\"]\n{daemon_extra}\n"
        );
        env.write_config(&env.config_text(env.http_port, env.redirect_port, &extra));
    };
    write(1);
    env.init();
    env.ok(
        &["secret", "set", "realtime/password"],
        format!("{RT_PASSWORD}\n").as_bytes(),
    );
    for ext in ["1001", "1002", "2001"] {
        env.set_sip_credential(ext, &format!("pw{ext}"));
    }
    let ast = Asterisk::start(
        &prefix,
        &Setup {
            pjsip: true,
            realtime: Some((rt_port, RT_USER.into(), RT_PASSWORD.into())),
            pjsip_extra: pjsip_extra.to_string(),
            dialplan_extra: dialplan_extra.to_string(),
            extra_modules: asterisk::callback_modules(),
            ..Setup::default()
        },
    );
    // Every SIP message Asterisk receives or sends goes to its full log from now on.
    ast.cli("pjsip set logger on");
    write(ast.sip_port);
    let daemon = env.start();
    daemon.wait_for_port(tls);
    daemon.wait_for_port(wss);
    Some(Site {
        ast,
        env,
        daemon,
        tls,
        wss,
    })
}

impl Site {
    /// `core show channels count`: Asterisk's active channels.
    fn channels(&self) -> usize {
        let out = self.ast.cli("core show channels count");
        out.lines()
            .find_map(|l| {
                l.strip_suffix(" active channels")
                    .or(l.strip_suffix(" active channel"))
            })
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("core show channels count: {out:?}"))
    }

    /// Waits until Asterisk has `n` channels; panics with the evidence otherwise.
    fn wait_channels(&self, n: usize, what: &str) {
        let end = Instant::now() + T;
        while self.channels() != n {
            assert!(
                Instant::now() < end,
                "{what}: Asterisk still has {} channels:\n{}\n{}",
                self.channels(),
                self.ast.cli("core show channels verbose"),
                self.ast.cli("pjsip show channels")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `pjsip show contacts` has a line containing every one of `needles`.
    fn wait_contact(&self, needles: &[&str]) -> String {
        let end = Instant::now() + T;
        loop {
            let out = self.ast.cli("pjsip show contacts");
            if out.lines().any(|l| needles.iter().all(|n| l.contains(n))) {
                return out;
            }
            assert!(
                Instant::now() < end,
                "no contact with {needles:?}:\n{out}\nedge log:\n{}",
                self.daemon.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIP messages Asterisk logged as received (pjsip logger), whole.
    fn ast_received(&self) -> Vec<String> {
        self.ast
            .log()
            .split("<--- Received SIP ")
            .skip(1)
            .map(|m| m.split("\n[").next().unwrap_or(m).replace("\r\n", "\n"))
            .collect()
    }

    /// The edge's log lines at WARN or above.
    fn edge_warnings(&self) -> Vec<String> {
        self.daemon
            .log()
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .filter(|l| !l.contains("[recordings]"))
            .map(str::to_owned)
            .collect()
    }

    /// Whether `pjsip show contacts` has a line containing every one of `needles`.
    fn contact_has(&self, needles: &[&str]) -> bool {
        self.ast
            .cli("pjsip show contacts")
            .lines()
            .any(|l| needles.iter().all(|n| l.contains(n)))
    }

    fn phone(&self) -> Phone {
        Phone::connect(self, "1001")
    }
}

// ---- a raw SIP/TLS phone ---------------------------------------------------------------------

/// A phone that speaks raw SIP over TLS through the edge, answers qualify OPTIONS by itself
/// (with `options_sdp` as the capability body, when set) and keeps the rest for the test.
struct Phone {
    c: SipTls,
    user: String,
    tag: String,
    contact: String,
    options_sdp: Option<String>,
    options_answered: usize,
    cseq: u32,
}

/// One call as the phone knows it (either direction).
#[derive(Debug, Clone)]
struct Dialog {
    call_id: String,
    /// Our From (we called) or To (we were called) header value, with our tag.
    local: String,
    /// The other side's, with its tag once known.
    remote: String,
    /// Where in-dialog requests go (the other side's Contact).
    target: String,
    /// Route headers for in-dialog requests, in order.
    route: Vec<String>,
}

impl Phone {
    fn connect(s: &Site, user: &str) -> Phone {
        Phone {
            c: SipTls::connect(s.tls, &s.env.cert()),
            user: user.to_string(),
            tag: rnd(),
            contact: format!("<sip:{user}@client.invalid;transport=tls>"),
            options_sdp: None,
            options_answered: 0,
            cseq: 1,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.c.send(bytes);
    }

    /// REGISTER with the digest dance (password `pw<user>`); the final answer.
    fn register(&mut self) -> SipMsg {
        let (user, pw) = (self.user.clone(), format!("pw{}", self.user));
        let c = &mut self.c;
        register_on(
            |b| {
                c.send(b);
                c.final_response(T)
            },
            &user,
            &pw,
            "TLS",
        )
    }

    /// The next message, answering qualify OPTIONS on the way.
    fn next(&mut self, timeout: Duration) -> Option<SipMsg> {
        let end = Instant::now() + timeout;
        loop {
            let m = self.c.recv(end.saturating_duration_since(Instant::now()))?;
            if m.method() == Some("OPTIONS") {
                let body = self.options_sdp.clone();
                self.respond(&m, 200, "OK", body.as_deref());
                self.options_answered += 1;
                continue;
            }
            return Some(m);
        }
    }

    /// The next message, which must be a request of `method`.
    fn expect_request(&mut self, method: &str) -> SipMsg {
        let m = self
            .next(T)
            .unwrap_or_else(|| panic!("no {method} reached the phone"));
        assert_eq!(m.method(), Some(method), "{}", m.raw);
        m
    }

    /// The next final response (provisional ones are skipped).
    fn final_response(&mut self) -> SipMsg {
        let end = Instant::now() + T;
        loop {
            let m = self
                .next(end.saturating_duration_since(Instant::now()))
                .expect("no final response");
            if m.status().is_some_and(|s| s >= 200) {
                return m;
            }
            assert!(m.status().is_some(), "unexpected request: {}", m.raw);
        }
    }

    /// Answers request `req` (To-tag ours, Record-Route copied on dialog answers).
    fn respond(&mut self, req: &SipMsg, code: u16, reason: &str, sdp: Option<&str>) {
        let mut lines = vec![format!("SIP/2.0 {code} {reason}")];
        lines.extend(req.all("Via").iter().map(|v| format!("Via: {v}")));
        let dialog = req.method() == Some("INVITE") && (101..300).contains(&code);
        if dialog {
            lines.extend(
                req.all("Record-Route")
                    .iter()
                    .map(|r| format!("Record-Route: {r}")),
            );
        }
        let to = req.header("To").unwrap_or_default();
        let to = if to.contains(";tag=") || code == 100 {
            to.to_string()
        } else {
            format!("{to};tag={}", self.tag)
        };
        lines.push(format!("From: {}", req.header("From").unwrap_or_default()));
        lines.push(format!("To: {to}"));
        lines.push(format!(
            "Call-ID: {}",
            req.header("Call-ID").unwrap_or_default()
        ));
        lines.push(format!("CSeq: {}", req.header("CSeq").unwrap_or_default()));
        if dialog {
            lines.push(format!("Contact: {}", self.contact));
        }
        let body = sdp.unwrap_or("");
        if !body.is_empty() {
            lines.push("Content-Type: application/sdp".into());
        }
        let text = format!(
            "{}\r\nContent-Length: {}\r\n\r\n{body}",
            lines.join("\r\n"),
            body.len()
        );
        self.send(text.as_bytes());
    }

    /// The dialog an INVITE from Asterisk starts (after we answered it with our tag).
    fn dialog_as_callee(&self, invite: &SipMsg) -> Dialog {
        Dialog {
            call_id: invite.header("Call-ID").unwrap_or_default().to_string(),
            local: format!(
                "{};tag={}",
                invite.header("To").unwrap_or_default(),
                self.tag
            ),
            remote: invite.header("From").unwrap_or_default().to_string(),
            target: uri_of(invite.header("Contact").unwrap_or_default()),
            route: invite
                .all("Record-Route")
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }

    fn via(&self) -> String {
        format!(
            "Via: SIP/2.0/TLS client.invalid;branch=z9hG4bK{};rport",
            rnd()
        )
    }

    /// An in-dialog request with the next CSeq; its CSeq number and `Via` line.
    fn request_in(&mut self, d: &Dialog, method: &str, sdp: Option<&str>) -> (u32, String) {
        let cseq = self.cseq;
        self.cseq += 1;
        let via = self.via();
        self.send_in(d, method, cseq, &via, sdp);
        (cseq, via)
    }

    /// The ACK of a 2xx to the INVITE with CSeq `cseq` (end to end: a new branch).
    fn ack(&mut self, d: &Dialog, cseq: u32) {
        let via = self.via();
        self.send_in(d, "ACK", cseq, &via, None);
    }

    /// The ACK of a failure to an in-dialog INVITE (hop by hop: its branch).
    fn ack_failure(&mut self, d: &Dialog, cseq: u32, via: &str) {
        self.send_in(d, "ACK", cseq, via, None);
    }

    /// A REFER within `d` (a blind transfer to `refer_to`); its CSeq number.
    fn refer(&mut self, d: &Dialog, refer_to: &str) -> u32 {
        let cseq = self.cseq;
        self.cseq += 1;
        let mut lines = vec![
            format!("REFER {} SIP/2.0", d.target),
            self.via(),
            "Max-Forwards: 70".into(),
        ];
        lines.extend(d.route.iter().map(|r| format!("Route: {r}")));
        lines.push(format!("From: {}", d.local));
        lines.push(format!("To: {}", d.remote));
        lines.push(format!("Call-ID: {}", d.call_id));
        lines.push(format!("CSeq: {cseq} REFER"));
        lines.push(format!("Contact: {}", self.contact));
        lines.push(format!("Refer-To: {refer_to}"));
        lines.push(format!("Referred-By: <sip:{}@pbx.test>", self.user));
        self.send(&with_body(lines, None));
        cseq
    }

    fn send_in(&mut self, d: &Dialog, method: &str, cseq: u32, via: &str, sdp: Option<&str>) {
        let mut lines = vec![
            format!("{method} {} SIP/2.0", d.target),
            via.to_string(),
            "Max-Forwards: 70".into(),
        ];
        lines.extend(d.route.iter().map(|r| format!("Route: {r}")));
        lines.push(format!("From: {}", d.local));
        lines.push(format!("To: {}", d.remote));
        lines.push(format!("Call-ID: {}", d.call_id));
        lines.push(format!("CSeq: {cseq} {method}"));
        lines.push(format!("Contact: {}", self.contact));
        self.send(&with_body(lines, sdp));
    }

    /// Calls `to` with `sdp` (answering Asterisk's digest challenge); returns the INVITE's
    /// first non-challenge answer: the final one, or with `until` the first with that status.
    fn invite(&mut self, to: &str, sdp: &str, until: Option<u16>) -> (Dialog, SipMsg, Vec<String>) {
        let call_id = rnd();
        let uri = format!("sip:{to}@pbx.test");
        let from = format!("<sip:{}@pbx.test>;tag={}", self.user, self.tag);
        let mut auth: Option<String> = None;
        loop {
            let cseq = self.cseq;
            self.cseq += 1;
            let via = self.via();
            let mut lines = vec![
                format!("INVITE {uri} SIP/2.0"),
                via.clone(),
                "Max-Forwards: 70".into(),
                format!("From: {from}"),
                format!("To: <{uri}>"),
                format!("Call-ID: {call_id}"),
                format!("CSeq: {cseq} INVITE"),
                format!("Contact: {}", self.contact),
                "User-Agent: pbxguard-tests".into(),
            ];
            if let Some(a) = &auth {
                lines.push(a.clone());
            }
            let head = lines.clone();
            self.send(&with_body(lines, Some(sdp)));
            let resp = loop {
                let m = self.next(T).expect("no answer to INVITE");
                let st = m.status().expect("a response");
                if st >= 200 || Some(st) == until {
                    break m;
                }
            };
            let status = resp.status().unwrap_or(0);
            if status >= 300 {
                // ACK for a failure: hop by hop, same branch and Request-URI.
                let ack = vec![
                    format!("ACK {uri} SIP/2.0"),
                    via,
                    "Max-Forwards: 70".into(),
                    format!("From: {from}"),
                    format!("To: {}", resp.header("To").unwrap_or_default()),
                    format!("Call-ID: {call_id}"),
                    format!("CSeq: {cseq} ACK"),
                ];
                self.send(&with_body(ack, None));
            }
            if status == 401 && auth.is_none() {
                let ch = resp
                    .header("WWW-Authenticate")
                    .expect("challenge")
                    .to_string();
                let pw = format!("pw{}", self.user);
                auth = Some(format!(
                    "Authorization: {}",
                    digest(&ch, &self.user, &pw, "INVITE", &uri)
                ));
                continue;
            }
            let d = Dialog {
                call_id: call_id.clone(),
                local: from.clone(),
                remote: resp.header("To").unwrap_or_default().to_string(),
                target: uri_of(resp.header("Contact").unwrap_or(&uri)),
                // A caller's route set is the Record-Route of the answer, reversed.
                route: resp
                    .all("Record-Route")
                    .iter()
                    .rev()
                    .map(|s| s.to_string())
                    .collect(),
            };
            return (d, resp, head);
        }
    }
}

/// The CANCEL of the INVITE whose lines (as sent) are `head` (RFC 3261 §9.1: same
/// Request-URI, top Via, From, To, Call-ID and CSeq number).
fn cancel_of(head: &[String]) -> Vec<u8> {
    let pick = |name: &str| {
        head.iter()
            .find(|l| l.starts_with(name))
            .cloned()
            .unwrap_or_default()
    };
    let n = pick("CSeq: ")
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let lines = vec![
        head[0].replacen("INVITE ", "CANCEL ", 1),
        pick("Via: "),
        "Max-Forwards: 70".into(),
        pick("From: "),
        pick("To: "),
        pick("Call-ID: "),
        format!("CSeq: {n} CANCEL"),
    ];
    with_body(lines, None)
}

fn with_body(mut lines: Vec<String>, sdp: Option<&str>) -> Vec<u8> {
    let body = sdp.unwrap_or("");
    if !body.is_empty() {
        lines.push("Content-Type: application/sdp".into());
    }
    format!(
        "{}\r\nContent-Length: {}\r\n\r\n{body}",
        lines.join("\r\n"),
        body.len()
    )
    .into_bytes()
}

/// The URI inside a name-addr (`<sip:x@h>;p` -> `sip:x@h`).
fn uri_of(v: &str) -> String {
    match (v.find('<'), v.find('>')) {
        (Some(a), Some(b)) if a < b => v[a + 1..b].to_string(),
        _ => v.split(';').next().unwrap_or(v).trim().to_string(),
    }
}

/// An SDES offer with a session version, and a direction (hold is `sendonly`).
fn sdes_offer(version: u32, direction: &str) -> String {
    sdp_sdes(&sdes_key())
        .replace("o=- 1 1 IN", &format!("o=- 1 {version} IN"))
        .replace("a=sendrecv", &format!("a={direction}"))
}

// ---- real clients ---------------------------------------------------------------------------

/// The last JSON line a client driver printed.
fn json_line(out: &Output) -> serde_json::Value {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "no JSON result: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// `tests/clients/baresip_call.py` as `user` through the edge.
fn baresip_cmd(s: &Site, user: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(Path::new(CLIENTS).join("baresip_call.py"))
        .args([
            "--registrar",
            &format!("sip:127.0.0.1:{};transport=tls", s.tls),
        ])
        .args(["--domain", "pbx.test", "--user", user, "--password"])
        .arg(format!("pw{user}"))
        .args(["--rtp-stats"])
        .args(args);
    cmd
}

fn lines_contain(lines: &serde_json::Value, part: &str) -> bool {
    lines.as_array().is_some_and(|a| {
        a.iter()
            .any(|l| l.as_str().is_some_and(|l| l.contains(part)))
    })
}

fn lines_have(lines: &serde_json::Value, prefix: &str) -> bool {
    lines.as_array().is_some_and(|a| {
        a.iter()
            .any(|l| l.as_str().is_some_and(|l| l.starts_with(prefix)))
    })
}

/// Audio flowed both ways: baresip sent and received RTP (SRTP-protected: the call's
/// `mediaenc` refuses anything else).
fn assert_media_both_ways(r: &serde_json::Value, what: &str) {
    let tx = r["rtp"]["tx"].as_u64().unwrap_or(0);
    let rx = r["rtp"]["rx"].as_u64().unwrap_or(0);
    assert!(tx >= 10 && rx >= 10, "{what}: RTP tx {tx} rx {rx}: {r}");
}

// ---- tests ----------------------------------------------------------------------------------

#[test]
fn baresip_over_tls_calls_echo_with_sdes_and_with_dtls_srtp() {
    let Some(s) = site(DTLS_PHONE, "") else {
        return;
    };
    for (user, mediaenc, proto, key) in [
        (
            "1001",
            "srtp-mand",
            " RTP/SAVP ",
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:",
        ),
        (
            "1002",
            "dtls_srtp",
            " UDP/TLS/RTP/SAVPF ",
            "a=fingerprint:SHA-256 ",
        ),
    ] {
        let r = json_line(&run_for(
            &mut baresip_cmd(
                &s,
                user,
                &["--mediaenc", mediaenc, "--dial", "600", "--hold", "1.5"],
            ),
            Duration::from_secs(30),
        ));
        assert_eq!(r["register_code"], 200, "{mediaenc}: {r}");
        assert_eq!(r["call"], "established", "{mediaenc}: {r}");
        assert!(lines_contain(&r["answer"], proto), "{mediaenc}: {r}");
        assert!(
            lines_have(&r["answer"], key),
            "{mediaenc}: Asterisk's answer: {r}"
        );
        assert!(r["menc"].is_string(), "{mediaenc}: no CALL_MENC: {r}");
        assert_media_both_ways(&r, mediaenc);
        s.wait_channels(0, mediaenc);
    }
    let log = s.ast.log();
    assert!(
        log.contains("Executing [600@phones:2] Echo(\"PJSIP/1001-"),
        "{log}"
    );
    assert!(
        log.contains("Executing [600@phones:2] Echo(\"PJSIP/1002-"),
        "{log}"
    );
    assert!(s.edge_warnings().is_empty(), "{:?}", s.edge_warnings());
}

#[test]
fn asterisk_calls_baresip_back_through_the_edge_with_qualify_on() {
    let Some(s) = site(QUALIFY, "") else {
        return;
    };
    let child = baresip_cmd(
        &s,
        "1001",
        &[
            "--mediaenc",
            "srtp-mand",
            "--answer",
            "--timeout",
            "20",
            "--hold",
            "1.5",
        ],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("baresip_call.py");
    // Registered through the edge and qualified through it: Asterisk's OPTIONS went along the
    // Path to baresip, and baresip's 200 (which carries a capability SDP) came back.
    s.wait_contact(&["1001/sip:1001-", "Avail"]);
    // pjsip stored the edge's Path (support_path) with the contact: the loopback URI with the
    // token naming baresip's TLS connection.
    let db = s.ast.cli("database show registrar");
    assert!(
        db.contains("\"path\":\"<sip:127.0.0.1:") && db.contains(";transport=udp;lr;pbxg="),
        "{db}"
    );
    let out = s
        .ast
        .cli("channel originate PJSIP/1001 extension 600@phones");
    assert!(out.trim().is_empty(), "{out}");
    let r = json_line(&finish(child, Duration::from_secs(30)));
    assert_eq!(r["call"], "established", "{r}");
    // Asterisk's offer reached baresip as Asterisk made it: SDES, several suites.
    assert!(lines_have(&r["offer"], "m=audio "), "{r}");
    assert!(
        lines_have(&r["offer"], "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"),
        "{r}"
    );
    assert_eq!(r["menc"], "0,audio,AES_CM_128_HMAC_SHA1_80", "{r}");
    assert_media_both_ways(&r, "Asterisk to baresip");
    s.wait_channels(0, "after baresip hung up");
    // The INVITE went along the Path, and the answer came back with the edge's two
    // Record-Routes (towards Asterisk and towards the phone).
    let got = s.ast_received();
    let answer = got
        .iter()
        .find(|m| m.contains("SIP/2.0 200 ") && m.contains(" INVITE\n"))
        .unwrap_or_else(|| panic!("no 200 to INVITE in Asterisk's log: {got:?}"));
    assert_eq!(
        answer.matches("Record-Route: <sip:127.0.0.1:").count(),
        2,
        "{answer}"
    );
    // Qualify went on during the call: several OPTIONS answered, each a 200.
    let qualified = got
        .iter()
        .filter(|m| m.contains(" OPTIONS\n") && m.contains("SIP/2.0 200 "))
        .count();
    assert!(qualified >= 1, "{got:?}");
    assert!(s.edge_warnings().is_empty(), "{:?}", s.edge_warnings());
}

/// `tests/clients/sip_jssip.js` through the edge's WebSocket with `ticket`, as `user` and
/// without any SIP password (the edge answers Asterisk's challenges).
fn jssip_command(s: &Site, ticket: &str, user: &str, extra: &[&str]) -> Command {
    assert!(
        Path::new(CLIENTS).join("node_modules/jssip").is_dir(),
        "JsSIP is missing: run `npm ci` in tests/clients (tests/run.sh does)"
    );
    let url = format!("wss://localhost:{}/ws?ticket={ticket}", s.wss);
    let mut cmd = Command::new("node");
    cmd.current_dir(CLIENTS)
        .arg("sip_jssip.js")
        .args(["--url", &url, "--origin", ORIGIN])
        .arg("--ca")
        .arg(s.env.cert())
        .args(["--user", user, "--domain", "pbx.test", "--timeout", "15"])
        .args(extra);
    cmd
}

fn jssip(s: &Site, ticket: &str, user: &str, extra: &[&str]) -> serde_json::Value {
    json_line(&run_for(
        &mut jssip_command(s, ticket, user, extra),
        Duration::from_secs(25),
    ))
}

/// A web user `alice` with extension 2001 (whose password only the vault holds); her token.
fn alice(s: &Site) -> String {
    s.env.add_user("alice", 2, "agent-password-1");
    s.env.ok(&["user", "set-extension", "alice", "2001"], b"");
    s.env.token("alice", "agent-password-1")
}

fn ticket_for(s: &Site, token: &str) -> String {
    let r = s.env.request(
        "POST",
        "/api/v1/sip/ticket",
        &[&format!("Authorization: Bearer {token}")],
        None,
    );
    assert_eq!(r.status, 200, "{r:?}");
    r.json()["ticket"].as_str().expect("ticket").to_string()
}

#[test]
fn jssip_over_wss_with_a_ticket_registers_as_2001_and_calls_echo() {
    let Some(s) = site("", RINGING) else {
        return;
    };
    let token = alice(&s);
    let ticket = || ticket_for(&s, &token);
    let r = jssip(&s, &ticket(), "2001", &["--call", "600", "--hold", "1"]);
    assert_eq!(r["registered"], true, "{r}");
    assert_eq!(r["register_code"], 200, "{r}");
    assert_eq!(r["call"], "confirmed", "{r}");
    assert_eq!(r["call_code"], 200, "{r}");
    assert_eq!(r["ended_by"], "local", "{r}");
    // Asterisk's answer is DTLS-SRTP for a browser: SAVPF, fingerprint, setup, ICE.
    for want in [
        "m=audio ",
        "a=fingerprint:SHA-256 ",
        "a=setup:active",
        "a=ice-ufrag:",
        "a=rtcp-mux",
    ] {
        assert!(lines_have(&r["answer"], want), "{want}: {r}");
    }
    assert!(lines_contain(&r["answer"], " UDP/TLS/RTP/SAVPF "), "{r}");
    // Asterisk took the offer's loopback candidate: its connectivity checks arrived there.
    assert!(r["media_packets_in"].as_u64().unwrap_or(0) >= 1, "{r}");
    // pjsip registered AOR 2001 and ran the call on endpoint 2001; every request it got from
    // the WebSocket carried the edge's identity header exactly once.
    let log = s.ast.log();
    assert!(log.contains("to AOR '2001'"), "{log}");
    assert!(
        log.contains("Executing [600@phones:2] Echo(\"PJSIP/2001-"),
        "{log}"
    );
    let got = s.ast_received();
    let requests: Vec<&String> = got.iter().filter(|m| m.starts_with("request")).collect();
    assert!(requests.len() >= 6, "{got:?}");
    for m in requests.iter().filter(|m| !made_by_the_edge(m)) {
        assert_eq!(m.matches("X-PBXGuard-Identity: 2001\n").count(), 1, "{m}");
    }
    // JsSIP had no password: pjsip challenged the REGISTER and the INVITE, and the edge
    // answered both with the vault's credential (JsSIP would have failed on a 401).
    for method in ["REGISTER", "INVITE"] {
        let answered = requests
            .iter()
            .filter(|m| m.contains(&format!("\n{method} sip:")))
            .filter(|m| m.contains("Authorization: Digest username=\"2001\""))
            .count();
        assert!(answered >= 1, "{method}: {got:?}");
    }
    // The BYE came after the challenged INVITE's renumbering: Asterisk took it (the channel
    // is gone at once, not after its session timer).
    s.wait_channels(0, "after JsSIP hung up");

    // A CANCEL of a ringing call reaches the INVITE's re-sent copy.
    let r = jssip(
        &s,
        &ticket(),
        "2001",
        &["--call", "602", "--cancel-after", "300"],
    );
    assert_eq!(r["call"], "failed", "{r}");
    assert_eq!(r["call_cause"], "Canceled", "{r}");
    s.wait_channels(0, "after JsSIP cancelled");
    // The browser's own CANCEL (not the edge's teardown) reached the INVITE's re-sent copy:
    // same CSeq number as the INVITE that carried the edge's credentials.
    let got = s.ast_received();
    let cseq_of_logged = |m: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix("CSeq: "))
            .and_then(|c| c.split_whitespace().next())
            .map(str::to_owned)
    };
    let answered = got
        .iter()
        .find(|m| m.contains("\nINVITE sip:602@") && m.contains("Authorization: Digest"))
        .and_then(|m| cseq_of_logged(m))
        .expect("the INVITE to 602 with the edge's credentials");
    assert!(
        got.iter().any(|m| m.contains("\nCANCEL sip:602@")
            && !made_by_the_edge(m)
            && cseq_of_logged(m).as_deref() == Some(answered.as_str())),
        "{got:?}"
    );

    // 2001 belongs to a web user now: no TLS client may claim it, even one that knows its
    // password; the edge refuses before Asterisk hears of it.
    let before = s.ast_received().len();
    let mut tls = Phone::connect(&s, "2001");
    let refused = tls.register();
    assert_eq!(refused.status(), Some(403), "{}", refused.raw);
    assert!(
        refused
            .header("Warning")
            .is_some_and(|w| w.contains("browser softphone")),
        "{}",
        refused.raw
    );
    assert_eq!(s.ast_received().len(), before);
    drop(tls);

    // Why `identify_by = header,username`: with `header` alone the header identifies the
    // WebSocket's requests as 2001, but pjsip's registrar looks the AOR up only by username or
    // auth_username, so the browser's REGISTER gets 404.
    let conf = s.ast.etc().join("pjsip.conf");
    let mut text = std::fs::read_to_string(&conf).expect("pjsip.conf");
    text.push_str("\n[2001](+type=endpoint)\nidentify_by = header\n");
    std::fs::write(&conf, text).expect("pjsip.conf");
    s.ast.cli("module reload res_pjsip.so");
    let end = Instant::now() + T;
    while !s
        .ast
        .cli("pjsip show endpoint 2001")
        .lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["identify_by", ":", "header"])
    {
        assert!(
            Instant::now() < end,
            "{}",
            s.ast.cli("pjsip show endpoint 2001")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = jssip(&s, &ticket(), "2001", &[]);
    assert_eq!(r["register_code"], 404, "header only: {r}");
    assert!(
        s.ast.wait_for_log(
            "AOR '' not found for endpoint '2001'",
            Duration::from_secs(2)
        ),
        "{}",
        s.ast.log()
    );
    assert!(s.edge_warnings().is_empty(), "{:?}", s.edge_warnings());
}

/// Whether a request Asterisk logged was made up by the edge itself (the ACK of a challenge it
/// answered, a teardown): its top Via's flow token carries the local flag `l`.
fn made_by_the_edge(logged: &str) -> bool {
    logged
        .lines()
        .find(|l| l.starts_with("Via: "))
        .and_then(|via| via.split(";pbxg=").nth(1))
        .map(|t| t.split([';', ' ']).next().unwrap_or(t))
        .is_some_and(|t| t.len() > 17 && t.as_bytes()[t.len() - 17] == b'l')
}

#[test]
fn a_second_websocket_never_gets_the_edge_to_answer_for_another_extension() {
    let Some(s) = site("", "") else {
        return;
    };
    let _alice = alice(&s);
    // bob's extension 2002: a browser endpoint like 2001, with its own credential.
    s.env.add_user("bob", 2, "agent-password-2");
    s.env.ok(&["user", "set-extension", "bob", "2002"], b"");
    s.env.set_sip_credential("2002", "pw2002");
    let bob = s.env.token("bob", "agent-password-2");
    let conf = s.ast.etc().join("pjsip.conf");
    let mut text = std::fs::read_to_string(&conf).expect("pjsip.conf");
    text.push_str(
        "\n[2002]\ntype = endpoint\ncontext = phones\ndisallow = all\nallow = opus,ulaw\n\
         auth = 2002\naors = 2002\nidentify_by = header,username\ntransport = transport-loopback\n\
         [2002-header]\ntype = identify\nendpoint = 2002\nmatch_header = X-PBXGuard-Identity: 2002\n\
         [2002]\ntype = aor\nmax_contacts = 1\nsupport_path = yes\n",
    );
    std::fs::write(&conf, text).expect("pjsip.conf");
    s.ast.cli("module reload res_pjsip.so");
    let end = Instant::now() + T;
    while !s.ast.cli("pjsip show endpoints").contains("2002") {
        assert!(
            Instant::now() < end,
            "{}",
            s.ast.cli("pjsip show endpoints")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // bob's WebSocket, registering as 2001: refused by the edge, Asterisk never hears of it.
    let r = jssip(&s, &ticket_for(&s, &bob), "2002", &["--as", "2001"]);
    assert_eq!(r["register_code"], 403, "{r}");
    assert!(
        s.ast_received().iter().all(|m| !m.contains("sip:2001@")),
        "{:?}",
        s.ast_received()
    );
    // As himself, while alice is registered too: the edge answers each challenge with the
    // credential of the flow's own extension only.
    let alice_run = jssip_command(&s, &ticket_for(&s, &_alice), "2001", &["--stay", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node");
    let r = jssip(&s, &ticket_for(&s, &bob), "2002", &[]);
    assert_eq!(r["register_code"], 200, "{r}");
    let out = finish(alice_run, Duration::from_secs(20));
    assert_eq!(json_line(&out)["registered"], true);
    let got = s.ast_received();
    let credentials: Vec<(&str, bool)> = got
        .iter()
        .filter(|m| m.contains("Authorization: Digest "))
        .map(|m| {
            let id = if m.contains("X-PBXGuard-Identity: 2002\n") {
                "2002"
            } else {
                "2001"
            };
            (
                id,
                m.contains(&format!("Authorization: Digest username=\"{id}\"")),
            )
        })
        .collect();
    assert!(credentials.iter().any(|(id, _)| *id == "2002"), "{got:?}");
    assert!(credentials.iter().any(|(id, _)| *id == "2001"), "{got:?}");
    assert!(credentials.iter().all(|(_, own)| *own), "{credentials:?}");
}

/// How long Asterisk takes to drop every channel, at most `limit`.
fn channels_gone_within(s: &Site, limit: Duration, what: &str) -> Duration {
    let start = Instant::now();
    while s.channels() != 0 {
        assert!(
            start.elapsed() < limit,
            "{what}: Asterisk still has channels after {limit:?}:\n{}\nedge log:\n{}",
            s.ast.cli("core show channels verbose"),
            s.daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

fn logout(s: &Site, token: &str) {
    let r = s.env.request(
        "POST",
        "/api/v1/auth/logout",
        &[&format!("Authorization: Bearer {token}")],
        None,
    );
    assert_eq!(r.status, 204, "{r:?}");
}

#[test]
fn logging_out_ends_the_browsers_calls_on_asterisk_within_5_s() {
    let Some(s) = site("\n[2001](+type=aor)\nqualify_frequency = 2\n", RINGING) else {
        return;
    };
    // Answered calls (Echo), a call still ringing at Asterisk (602), and Asterisk's call
    // ringing at the browser: each ends on Asterisk's side when the session ends.
    let mut token = alice(&s);
    for (dial, what) in [("600", "answered"), ("602", "ringing")] {
        let mut js = jssip_command(
            &s,
            &ticket_for(&s, &token),
            "2001",
            &["--call", dial, "--hold", "30", "--timeout", "40"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node");
        let end = Instant::now() + T;
        while s.channels() == 0 {
            assert!(Instant::now() < end, "{what}: no call reached Asterisk");
            std::thread::sleep(Duration::from_millis(100));
        }
        // The call is answered (Echo) or rings (Wait), as meant, before the logout.
        let want = if dial == "600" { "Echo(" } else { "Wait(" };
        let end = Instant::now() + T;
        while !s.ast.cli("core show channels").contains(want) {
            assert!(
                Instant::now() < end,
                "{what}: {}",
                s.ast.cli("core show channels")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        if dial == "600" {
            assert!(s.ast.cli("core show channels").contains(" Up "));
        }
        logout(&s, &token);
        let took = channels_gone_within(&s, Duration::from_secs(5), what);
        eprintln!("{what} call: Asterisk's channel gone {took:?} after the logout");
        let _ = js.kill();
        let _ = js.wait();
        token = s.env.token("alice", "agent-password-1");
    }
    assert!(
        s.daemon
            .log()
            .contains("a SIP connection closed; its calls were ended"),
        "{}",
        s.daemon.log()
    );
    // The last registration outlives its socket until it expires, but qualify finds it gone:
    // the edge leaves a qualify for a closed connection unanswered (pjsip counts any answer as
    // reachable), so queues stop ringing the logged-out agent.
    let end = Instant::now() + T;
    while !s.contact_has(&["2001/", "Unavail"]) {
        assert!(Instant::now() < end, "{}", s.ast.cli("pjsip show contacts"));
        std::thread::sleep(Duration::from_millis(200));
    }
    // Asterisk calls the browser, which lets it ring; then pbxguard stops (SIGTERM): the
    // ringing INVITE is answered for it and the channel goes.
    let registrations = || s.ast.log().matches("to AOR '2001'").count();
    let before = registrations();
    let mut js = jssip_command(
        &s,
        &ticket_for(&s, &token),
        "2001",
        &["--timeout", "40", "--stay", "30"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("node");
    // Registered anew (the killed clients' contacts may still be listed).
    let end = Instant::now() + T;
    while registrations() == before {
        assert!(Instant::now() < end, "JsSIP did not register");
        std::thread::sleep(Duration::from_millis(100));
    }
    s.ast
        .cli("channel originate PJSIP/2001 extension 601@phones");
    let end = Instant::now() + T;
    while !s.ast.cli("core show channels").contains("Ringing") {
        assert!(
            Instant::now() < end,
            "Asterisk's call never rang at the browser:\n{}",
            s.ast.cli("core show channels"),
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut s = s;
    s.daemon.signal("TERM");
    s.daemon.wait_exit(T);
    let took = channels_gone_within(&s, Duration::from_secs(5), "ringing at the browser");
    eprintln!("incoming call: Asterisk's channel gone {took:?} after pbxguard stopped");
    let _ = js.kill();
    let _ = js.wait();
}

/// A phone's answer to a qualify OPTIONS, as the issue saw it: its capabilities, SRTP profile
/// without keys (RFC 3261 §11.2 allows it; it is neither offer nor answer).
const CAPABILITY_SDP: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/SAVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n";

/// The m= line of `sdp_plain()`: plain RTP that must never reach Asterisk.
const PLAIN_M_LINE: &str = "m=audio 40000 RTP/AVP";

/// The Call-ID of an INVITE's lines as sent.
fn call_id_of(head: &[String]) -> String {
    head.iter()
        .find_map(|l| l.strip_prefix("Call-ID: "))
        .unwrap_or_default()
        .to_string()
}

fn cseq_of(m: &SipMsg) -> u32 {
    m.header("CSeq")
        .and_then(|c| c.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn plain_rtp_is_refused_both_ways_and_never_reaches_asterisk() {
    let Some(s) = site("", "") else {
        return;
    };
    let mut p = s.phone();
    let reg = p.register();
    assert_eq!(reg.status(), Some(200), "{}", reg.raw);
    // Control: the logger shows what the phone sent that did reach Asterisk.
    assert!(
        s.ast_received()
            .iter()
            .any(|m| m.contains("REGISTER sip:pbx.test") && m.contains("pbxguard-tests")),
        "{}",
        s.ast.log()
    );

    // A plain-RTP offer: 488 from the edge, with the reason; Asterisk hears nothing of it.
    let (_, resp, head) = p.invite("600", &sdp_plain(), None);
    assert_eq!(resp.status(), Some(488), "{}", resp.raw);
    assert!(
        resp.header("Warning")
            .is_some_and(|w| w.starts_with("399 ")),
        "{}",
        resp.raw
    );
    let call_id = call_id_of(&head);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !s.ast_received().iter().any(|m| m.contains(&call_id)),
        "the refused INVITE (or its ACK) reached Asterisk:\n{}",
        s.ast.log()
    );
    assert!(!s.ast.log().contains("600@phones"), "{}", s.ast.log());
    assert_eq!(s.channels(), 0);

    // A plain-RTP answer to Asterisk's INVITE: the phone's side is ended by the edge (ACK,
    // BYE), Asterisk gets 488 and never the plain SDP.
    let out = s
        .ast
        .cli("channel originate PJSIP/1001 extension 600@phones");
    assert!(out.trim().is_empty(), "{out}");
    let inv = p.expect_request("INVITE");
    assert!(
        inv.body.contains("RTP/SAVP") && inv.body.contains("a=crypto:"),
        "{}",
        inv.raw
    );
    p.respond(&inv, 200, "OK", Some(&sdp_plain()));
    let ack = p.expect_request("ACK");
    let bye = p.expect_request("BYE");
    for m in [&ack, &bye] {
        assert_eq!(m.header("Call-ID"), inv.header("Call-ID"), "{}", m.raw);
        assert!(
            m.header("To").is_some_and(|t| t.contains(&p.tag)),
            "{}",
            m.raw
        );
    }
    p.respond(&bye, 200, "OK", None);
    s.wait_channels(0, "after the refused answer");
    let call_id = inv.header("Call-ID").unwrap_or_default();
    let got = s.ast_received();
    assert!(
        got.iter()
            .any(|m| m.contains("SIP/2.0 488 ") && m.contains(call_id)),
        "Asterisk got no 488: {got:?}"
    );
    assert!(
        !got.iter().any(|m| m.contains(PLAIN_M_LINE)),
        "plain SDP reached Asterisk: {got:?}"
    );
    // Asterisk ACKs the 488 hop by hop, to the edge that made it up: it ends there.
    let stray = p.next(Duration::from_millis(500));
    assert!(stray.is_none(), "the phone got {stray:?}");
    assert_eq!(
        s.ast_received()
            .iter()
            .filter(|m| m.contains(call_id))
            .count(),
        1
    );
    assert!(
        s.edge_warnings()
            .iter()
            .all(|w| w.contains("a phone answered a call with media the policy refuses")),
        "{:?}",
        s.edge_warnings()
    );
}

#[test]
fn a_phones_call_holds_resumes_is_cancelled_and_hung_up_from_either_side() {
    let Some(s) = site("", RINGING) else {
        return;
    };
    let mut p = s.phone();
    assert_eq!(p.register().status(), Some(200));

    // Call Echo(), hold (sendonly) and resume with re-INVITEs; a plain re-INVITE is refused
    // by the edge and the call stays up; the phone hangs up.
    let (d, ok, _) = p.invite("600", &sdes_offer(1, "sendrecv"), None);
    assert_eq!(ok.status(), Some(200), "{}", ok.raw);
    assert!(
        ok.body.contains("RTP/SAVP") && ok.body.contains("a=crypto:1 "),
        "{}",
        ok.raw
    );
    p.ack(&d, cseq_of(&ok));
    s.wait_channels(1, "call to Echo");
    let (n, _) = p.request_in(&d, "INVITE", Some(&sdes_offer(2, "sendonly")));
    let held = p.final_response();
    assert_eq!(held.status(), Some(200), "{}", held.raw);
    assert!(
        held.body.contains("a=recvonly"),
        "Asterisk's answer to hold: {}",
        held.raw
    );
    p.ack(&d, n);
    let (n, via) = p.request_in(&d, "INVITE", Some(&sdp_plain()));
    let refused = p.final_response();
    assert_eq!(refused.status(), Some(488), "{}", refused.raw);
    p.ack_failure(&d, n, &via);
    let (n, _) = p.request_in(&d, "INVITE", Some(&sdes_offer(3, "sendrecv")));
    let resumed = p.final_response();
    assert_eq!(resumed.status(), Some(200), "{}", resumed.raw);
    assert!(resumed.body.contains("a=sendrecv"), "{}", resumed.raw);
    p.ack(&d, n);
    assert_eq!(
        s.channels(),
        1,
        "the refused re-INVITE must not end the call"
    );
    p.request_in(&d, "BYE", None);
    let bye_ok = p.final_response();
    assert_eq!(bye_ok.status(), Some(200), "{}", bye_ok.raw);
    s.wait_channels(0, "after the phone's BYE");
    let got = s.ast_received();
    assert!(!got.iter().any(|m| m.contains(PLAIN_M_LINE)), "{got:?}");
    assert_eq!(
        got.iter()
            .filter(|m| m.contains(&d.call_id)
                && m.starts_with("request")
                && m.contains("\nINVITE "))
            .count(),
        4,
        "the first INVITE twice (challenge), hold and resume; never the plain one: {got:?}"
    );

    // CANCEL before the answer: 602 rings; the phone cancels; 200 for the CANCEL, 487 for the
    // INVITE, and Asterisk's channel goes away.
    let (_, ringing, head) = p.invite("602", &sdes_offer(1, "sendrecv"), Some(180));
    assert_eq!(ringing.status(), Some(180), "{}", ringing.raw);
    s.wait_channels(1, "ringing 602");
    p.send(&cancel_of(&head));
    let (a, b) = (p.final_response(), p.final_response());
    let mut answers = [a.start.clone(), b.start.clone()];
    answers.sort();
    assert_eq!(
        answers,
        ["SIP/2.0 200 OK", "SIP/2.0 487 Request Terminated"]
    );
    let inv487 = if a.status() == Some(487) { a } else { b };
    assert_eq!(inv487.status(), Some(487), "{}", inv487.raw);
    let ack = format!(
        "ACK {} SIP/2.0\r\n{}\r\nMax-Forwards: 70\r\n{}\r\nTo: {}\r\n{}\r\nCSeq: {} ACK\r\nContent-Length: 0\r\n\r\n",
        head[0].split(' ').nth(1).unwrap_or_default(),
        head[1],
        head.iter().find(|l| l.starts_with("From: ")).cloned().unwrap_or_default(),
        inv487.header("To").unwrap_or_default(),
        head.iter().find(|l| l.starts_with("Call-ID: ")).cloned().unwrap_or_default(),
        cseq_of(&inv487),
    );
    p.send(ack.as_bytes());
    s.wait_channels(0, "after CANCEL");

    // Asterisk hangs up: 601 answers and waits; the BYE comes back through the edge.
    let (d, ok, _) = p.invite("601", &sdes_offer(1, "sendrecv"), None);
    assert_eq!(ok.status(), Some(200), "{}", ok.raw);
    p.ack(&d, cseq_of(&ok));
    s.wait_channels(1, "call to 601");
    s.ast.cli("channel request hangup all");
    let bye = p.expect_request("BYE");
    assert_eq!(
        bye.header("Call-ID"),
        Some(d.call_id.as_str()),
        "{}",
        bye.raw
    );
    p.respond(&bye, 200, "OK", None);
    s.wait_channels(0, "after Asterisk's BYE");
    assert!(s.edge_warnings().is_empty(), "{:?}", s.edge_warnings());
}

#[test]
fn calls_to_a_qualified_phone_early_media_refused_and_asterisk_cancelling() {
    let Some(s) = site(QUALIFY, "") else {
        return;
    };
    let mut p = s.phone();
    p.options_sdp = Some(CAPABILITY_SDP.to_string());
    assert_eq!(p.register().status(), Some(200));
    // Qualify: OPTIONS through the edge, the phone's 200 with its capability SDP back (the
    // edge removes that body); the contact turns Avail and stays so.
    let end = Instant::now() + T;
    while !(s.contact_has(&["1001/sip:1001@client.invalid", "Avail"]) && p.options_answered >= 2) {
        assert!(
            Instant::now() < end,
            "{}\n{}",
            s.ast.cli("pjsip show contacts"),
            s.ast.log()
        );
        if let Some(m) = p.next(Duration::from_millis(200)) {
            panic!("unexpected: {}", m.raw);
        }
    }
    let got = s.ast_received();
    let answers: Vec<&String> = got
        .iter()
        .filter(|m| m.contains(" OPTIONS\n") && m.contains("SIP/2.0 200 "))
        .collect();
    assert!(answers.len() >= 2, "{got:?}");
    assert!(
        answers
            .iter()
            .all(|m| !m.contains("m=audio") && !m.contains("Content-Type")),
        "{answers:?}"
    );

    // 1. A call to the qualified phone works: Asterisk's SDES offer, the phone's SDES answer.
    let originate = |what: &str| {
        let out = s
            .ast
            .cli("channel originate PJSIP/1001 extension 600@phones");
        assert!(out.trim().is_empty(), "{what}: {out}");
    };
    originate("answered");
    let inv = p.expect_request("INVITE");
    assert_eq!(inv.all("Record-Route").len(), 2, "{}", inv.raw);
    p.respond(&inv, 180, "Ringing", None);
    p.respond(&inv, 200, "OK", Some(&sdp_sdes(&sdes_key())));
    let ack = p.expect_request("ACK");
    assert_eq!(ack.header("Call-ID"), inv.header("Call-ID"));
    s.wait_channels(1, "answered call");
    let mut d = p.dialog_as_callee(&inv);
    d.route = inv
        .all("Record-Route")
        .iter()
        .map(|r| r.to_string())
        .collect();
    p.request_in(&d, "BYE", None);
    let ok = p.final_response();
    assert_eq!(ok.status(), Some(200), "{}", ok.raw);
    s.wait_channels(0, "after the phone's BYE");

    // 2. The phone answers 183 with plain early media: the edge does not pass it on (Asterisk
    // never sees it); its 200 with the same plain SDP ends the call: ACK and BYE for the
    // phone, 488 for Asterisk, and Asterisk's channel goes away.
    originate("early media");
    let inv = p.expect_request("INVITE");
    let call_id = inv.header("Call-ID").unwrap_or_default().to_string();
    p.respond(&inv, 183, "Session Progress", Some(&sdp_plain()));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !s.ast_received()
            .iter()
            .any(|m| m.contains(&call_id) && m.contains("SIP/2.0 183")),
        "{}",
        s.ast.log()
    );
    assert_eq!(s.channels(), 1);
    p.respond(&inv, 200, "OK", Some(&sdp_plain()));
    assert_eq!(
        p.expect_request("ACK").header("Call-ID"),
        Some(call_id.as_str())
    );
    let bye = p.expect_request("BYE");
    assert_eq!(bye.header("Call-ID"), Some(call_id.as_str()));
    p.respond(&bye, 200, "OK", None);
    s.wait_channels(0, "after the refused early media");
    let got = s.ast_received();
    assert!(
        got.iter()
            .any(|m| m.contains(&call_id) && m.contains("SIP/2.0 488 ")),
        "{got:?}"
    );
    assert!(!got.iter().any(|m| m.contains(PLAIN_M_LINE)), "{got:?}");

    // 3. Asterisk gives up while the phone rings: its CANCEL reaches the phone, which answers
    // 200 and 487; Asterisk's ACK for the 487 comes back too.
    originate("cancelled");
    let inv = p.expect_request("INVITE");
    p.respond(&inv, 180, "Ringing", None);
    s.wait_channels(1, "ringing phone");
    s.ast.cli("channel request hangup all");
    let cancel = p.expect_request("CANCEL");
    assert_eq!(cancel.header("Call-ID"), inv.header("Call-ID"));
    p.respond(&cancel, 200, "OK", None);
    p.respond(&inv, 487, "Request Terminated", None);
    let ack = p.expect_request("ACK");
    assert_eq!(ack.header("Call-ID"), inv.header("Call-ID"));
    s.wait_channels(0, "after Asterisk's CANCEL");

    // Qualify went on all along, and the contact is still reachable; the edge warned about
    // the one call it ended, nothing else (no answer to a call it does not know).
    assert!(s.contact_has(&["1001/sip:1001@client.invalid", "Avail"]));
    let warnings = s.edge_warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("a phone answered a call with media the policy refuses"),
        "{warnings:?}"
    );
}

// ---- the toll-fraud guard -------------------------------------------------------------------

/// pbxguard's `[smtp]` at the sink and `[dialing]` alerting `soc@pbx.example.com`, with `more`.
fn toll_fraud(smtp_port: u16, more: &str) -> String {
    format!(
        "\n[smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\nstarttls = \"none\"\n\
         from = \"pbxguard@pbx.example.com\"\ntimeout = \"3s\"\n\
         \n[dialing]\nalert_to = [\"soc@pbx.example.com\"]\n{more}\n"
    )
}

/// A mail's subject and its body as text, whatever transfer encoding the mailer chose.
fn mail_text(raw: &str) -> (String, String) {
    use base64::Engine;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .or_else(|| raw.split_once("\n\n"))
        .unwrap_or((raw, ""));
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let body = match header("Content-Transfer-Encoding:")
        .to_ascii_lowercase()
        .as_str()
    {
        "base64" => {
            let compact: String = body.split_whitespace().collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(compact)
                .expect("base64 body");
            String::from_utf8_lossy(&bytes).to_string()
        }
        "quoted-printable" => {
            let joined = body.replace("=\r\n", "").replace("=\n", "");
            let mut out = Vec::new();
            let b = joined.as_bytes();
            let mut i = 0;
            while i < b.len() {
                let hex = (b[i] == b'=')
                    .then(|| joined.get(i + 1..i + 3))
                    .flatten()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                    }
                    None => {
                        out.push(b[i]);
                        i += 1;
                    }
                }
            }
            String::from_utf8_lossy(&out).to_string()
        }
        _ => body.to_string(),
    };
    (header("Subject:"), body.replace("\r\n", "\n"))
}

/// The phone hangs up dialog `d`; the BYE's answer must be 200.
fn hang_up(p: &mut Phone, d: &Dialog) {
    let (n, _) = p.request_in(d, "BYE", None);
    let end = Instant::now() + T;
    loop {
        let m = p.final_response();
        if cseq_of(&m) == n && m.header("CSeq").is_some_and(|c| c.ends_with(" BYE")) {
            assert_eq!(m.status(), Some(200), "{}", m.raw);
            return;
        }
        assert!(Instant::now() < end, "no answer to the BYE");
    }
}

/// A refusal by the toll-fraud guard: `code` and a `Warning` naming `rule`, nothing more.
fn assert_refused(m: &SipMsg, code: u16, rule: &str) {
    assert_eq!(m.status(), Some(code), "{}", m.raw);
    assert_eq!(
        m.header("Warning"),
        Some(format!("399 pbxguard \"{rule}\"").as_str()),
        "{}",
        m.raw
    );
}

#[test]
fn a_denied_range_or_a_dialplan_injection_gets_403_before_asterisk_and_one_alert_per_rule() {
    let mail = tempfile::tempdir().expect("tempdir");
    let sink = Sink::start(mail.path().join("mail"), None);
    let Some(s) = site_with("", "", &toll_fraud(sink.port, "")) else {
        return;
    };
    // baresip, a real phone, dials a satellite number: the edge refuses it.
    let r = json_line(&run_for(
        &mut baresip_cmd(
            &s,
            "1001",
            &["--mediaenc", "srtp-mand", "--dial", "0088216123456"],
        ),
        Duration::from_secs(30),
    ));
    assert_eq!(r["register_code"], 200, "{r}");
    assert_eq!(r["call"], "failed", "{r}");
    assert_eq!(r["call_code"], 403, "{r}");
    // A raw phone: `Dial(PJSIP/${EXTEN})` injection escaped (pjsip would decode it) and raw,
    // then the range again, in both international forms.
    let mut p = s.phone();
    assert_eq!(p.register().status(), Some(200));
    let mut refused_calls = Vec::new();
    for (to, rule) in [
        ("1001%26PJSIP%2Ftrunk%2F0088216123456", "dial_characters"),
        ("1001&PJSIP/trunk/0088216123456", "dial_characters"),
        ("0088216123456", "deny_prefix"),
        ("+8816123456", "deny_prefix"),
    ] {
        let (_, resp, head) = p.invite(to, &sdes_offer(1, "sendrecv"), None);
        assert_refused(&resp, 403, rule);
        refused_calls.push(call_id_of(&head));
    }
    // Asterisk heard of none of them: no INVITE at all (nor the ACKs), nothing dialled.
    std::thread::sleep(Duration::from_millis(300));
    let got = s.ast_received();
    assert!(!got.iter().any(|m| m.contains("\nINVITE ")), "{got:?}");
    for id in &refused_calls {
        assert!(!got.iter().any(|m| m.contains(id.as_str())), "{got:?}");
    }
    let log = s.ast.log();
    assert!(
        !log.contains("0088216") && !log.contains("8816123456"),
        "{log}"
    );
    assert_eq!(s.channels(), 0);
    // The edge keeps serving that phone: a call to Echo() goes through.
    let (d, ok, _) = p.invite("600", &sdes_offer(1, "sendrecv"), None);
    assert_eq!(ok.status(), Some(200), "{}", ok.raw);
    p.ack(&d, cseq_of(&ok));
    s.wait_channels(1, "call to Echo after the refusals");
    // A blind transfer of that call to the range: Asterisk would dial it from the dialplan.
    let n = p.refer(&d, "<sip:0088216123456@pbx.test>");
    let refused = p.final_response();
    assert_eq!(cseq_of(&refused), n, "{}", refused.raw);
    assert_refused(&refused, 403, "deny_prefix");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !s.ast_received().iter().any(|m| m.contains("\nREFER ")),
        "{:?}",
        s.ast_received()
    );
    assert_eq!(
        s.channels(),
        1,
        "the refused transfer must not end the call"
    );
    hang_up(&mut p, &d);
    s.wait_channels(0, "after the BYE");

    // Six refusals, two rules, one extension (baresip and the raw phone both registered
    // 1001): one email per rule, naming who, from where, what and why.
    sink.wait_mails(2, T);
    std::thread::sleep(Duration::from_secs(2));
    let mails = sink.mails();
    assert_eq!(mails.len(), 2, "{mails:?}");
    for (rule, destination) in [
        ("deny_prefix", "0088216123456"),
        ("dial_characters", "1001&PJSIP/trunk/0088216123456"),
    ] {
        let (subject, body) = mails
            .iter()
            .map(|m| (m, mail_text(m)))
            .find(|(_, (subject, _))| subject.contains(rule))
            .map(|(m, text)| {
                assert!(m.contains("X-Test-Rcpt: soc@pbx.example.com"), "{m}");
                text
            })
            .unwrap_or_else(|| panic!("no alert for {rule}: {mails:?}"));
        assert!(subject.contains("extension 1001"), "{subject}");
        for want in [
            format!("Rule:        {rule}"),
            "Who:         extension 1001".to_string(),
            "From:        127.0.0.1".to_string(),
            format!("Destination: {destination}"),
            "Door:        sip".to_string(),
        ] {
            assert!(body.contains(&want), "{want}:\n{body}");
        }
    }
    // Each refusal has its audit row, the held-back ones included.
    let out = s.env.ok(
        &["audit", "log", "--action", "dialing.refused", "--json"],
        b"",
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out).expect("JSON rows");
    assert_eq!(rows.len(), 6, "{rows:?}");
    assert!(rows.iter().all(|r| r["actor"] == "sip:1001"), "{rows:?}");
}

#[test]
fn a_third_call_at_once_gets_486_while_two_stay_up_and_attempts_past_the_minute_get_503() {
    let Some(s) = site_with(
        "",
        "",
        "\n[dialing]\nmax_concurrent_calls = 2\nmax_call_attempts_per_minute = 4\n",
    ) else {
        return;
    };
    let mut p = s.phone();
    assert_eq!(p.register().status(), Some(200));
    // Two answered calls (601: Answer, Wait(60)). pjsip challenges each INVITE and the phone
    // sends it again with credentials: still one call and one attempt each.
    let mut up = Vec::new();
    for n in 1..=2 {
        let (d, ok, _) = p.invite("601", &sdes_offer(1, "sendrecv"), None);
        assert_eq!(ok.status(), Some(200), "{}", ok.raw);
        p.ack(&d, cseq_of(&ok));
        s.wait_channels(n, "answered calls");
        up.push(d);
    }
    // The third at once: 486 with Retry-After from the edge; Asterisk never sees it, and the
    // two calls stay up.
    let (_, busy, head) = p.invite("601", &sdes_offer(1, "sendrecv"), None);
    assert_refused(&busy, 486, "max_concurrent_calls");
    assert_eq!(busy.header("Retry-After"), Some("30"), "{}", busy.raw);
    let third = call_id_of(&head);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !s.ast_received().iter().any(|m| m.contains(&third)),
        "{:?}",
        s.ast_received()
    );
    assert_eq!(s.channels(), 2);
    assert_eq!(
        s.ast.cli("core show channels").matches(" Up ").count(),
        2,
        "{}",
        s.ast.cli("core show channels")
    );
    // The phone hangs up one: the third attempt goes through.
    hang_up(&mut p, &up.remove(0));
    s.wait_channels(1, "after the phone's BYE");
    let (d, ok, _) = p.invite("601", &sdes_offer(1, "sendrecv"), None);
    assert_eq!(ok.status(), Some(200), "{}", ok.raw);
    p.ack(&d, cseq_of(&ok));
    s.wait_channels(2, "the third call");
    // Asterisk hangs both up: its BYEs free their slots.
    s.ast.cli("channel request hangup all");
    for _ in 0..2 {
        let bye = p.expect_request("BYE");
        p.respond(&bye, 200, "OK", None);
    }
    s.wait_channels(0, "after Asterisk's BYEs");
    // The fourth attempt within the minute passes; the fifth gets 503 and when to come back.
    let (d, ok, _) = p.invite("600", &sdes_offer(1, "sendrecv"), None);
    assert_eq!(ok.status(), Some(200), "{}", ok.raw);
    p.ack(&d, cseq_of(&ok));
    hang_up(&mut p, &d);
    let (_, refused, head) = p.invite("600", &sdes_offer(1, "sendrecv"), None);
    assert_refused(&refused, 503, "max_call_attempts_per_minute");
    let wait: u64 = refused
        .header("Retry-After")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((1..=60).contains(&wait), "{}", refused.raw);
    let fifth = call_id_of(&head);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!s.ast_received().iter().any(|m| m.contains(&fifth)));
    s.wait_channels(0, "nothing left");
}
