//! End to end with real SIP software through the real binary: baresip (SIP/TLS, SDES and
//! DTLS-SRTP), JsSIP in Node (SIP over secure WebSocket with a ticket), SIPVicious (the scanner
//! every SIP server on the Internet meets, bridged from UDP to TLS with socat) and sipsak (raw
//! messages and floods over TLS). The Asterisk side is `tests/peers/sip_peer.py`, whose log
//! shows what Asterisk would have received.
//!
//! Needs Debian's `baresip`, `sipvicious`, `sipsak`, `socat` and `nodejs`, plus `npm ci` in
//! `tests/clients` (tests/run.sh does both).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::sip::{base_headers, request, rnd, Edge, SipMsg, SipTls, ORIGIN};
use common::{free_port, run_for};

const T: Duration = Duration::from_secs(10);
const CLIENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");

/// Checks this file adds to the shared edge harness.
trait EdgeExt {
    fn options_ok(&self);
    fn bans(&self) -> serde_json::Value;
    fn metric(&self, sample: &str) -> f64;
}

impl EdgeExt for Edge {
    /// A TLS client that sends an OPTIONS and must get Asterisk's 200.
    fn options_ok(&self) {
        let mut c = SipTls::connect(self.tls, &self.env.cert());
        c.send(&request(
            "OPTIONS sip:pbx.test SIP/2.0",
            &base_headers("OPTIONS", "1001", "1001", "TLS", &rnd(), 1),
            "",
        ));
        let r = c.final_response(T);
        assert_eq!(r.as_ref().and_then(SipMsg::status), Some(200), "{r:?}");
    }

    /// `pbxguard sip ban list --json`.
    fn bans(&self) -> serde_json::Value {
        serde_json::from_slice(&self.env.ok(&["sip", "ban", "list", "--json"], b""))
            .expect("ban list is JSON")
    }

    /// The value of one `/metrics` sample (0 when absent).
    fn metric(&self, sample: &str) -> f64 {
        let r = self.env.request("GET", "/metrics", &[], None);
        assert_eq!(r.status, 200, "{r:?}");
        r.body
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

fn out_text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The last JSON line a client driver printed.
fn json_line(out: &Output) -> serde_json::Value {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON result: {}", out_text(out)))
}

/// A child process killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---- baresip over TLS: the media policy against a real softphone -------------------------

/// One `tests/clients/baresip_call.py` run as 1001 through the edge, dialling 1002.
fn baresip(e: &Edge, mediaenc: &str) -> serde_json::Value {
    let out = run_for(
        Command::new("/usr/bin/python3")
            .arg(Path::new(CLIENTS).join("baresip_call.py"))
            .args([
                "--registrar",
                &format!("sip:127.0.0.1:{};transport=tls", e.tls),
            ])
            .args([
                "--domain",
                "pbx.test",
                "--user",
                "1001",
                "--password",
                "pw1001",
            ])
            .args(["--mediaenc", mediaenc, "--dial", "1002"])
            .args(["--timeout", "10", "--hold", "0.5"]),
        Duration::from_secs(30),
    );
    let r = json_line(&out);
    assert_eq!(r["register_code"], 200, "{mediaenc}: {r}");
    assert_eq!(r["registered"], true, "{mediaenc}: {r}");
    r
}

/// The audio m= line of an SDP body, and whether it carries `attr` (at any level).
fn sdp_has(body: &str, proto: &str, attr: &str) -> bool {
    body.lines()
        .any(|l| l.starts_with("m=audio ") && l.split(' ').nth(2) == Some(proto))
        && body.lines().any(|l| l.starts_with(attr))
}

#[test]
fn baresip_calls_with_sdes_or_dtls_srtp_through_the_edge() {
    let e = Edge::start("");
    let r = baresip(&e, "srtp-mand");
    assert_eq!(r["call"], "established", "srtp-mand: {r}");
    // What Asterisk saw: the offer exactly as baresip made it, RTP/SAVP with an SDES key.
    let invites = e.peer.wait_requests("INVITE", 1, T);
    assert_eq!(invites.len(), 1, "{:?}", e.peer.received());
    assert!(
        invites[0].start.starts_with("INVITE sip:1002@pbx.test"),
        "{}",
        invites[0].raw
    );
    assert!(
        sdp_has(
            &invites[0].body,
            "RTP/SAVP",
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"
        ),
        "{}",
        invites[0].raw
    );
    // And baresip got Asterisk's SRTP answer back.
    let answer = r["answer"].to_string();
    assert!(
        answer.contains("RTP/SAVP") && answer.contains("a=crypto"),
        "{r}"
    );

    let r = baresip(&e, "dtls_srtp");
    assert_eq!(r["call"], "established", "dtls_srtp: {r}");
    let invites = e.peer.wait_requests("INVITE", 2, T);
    assert_eq!(invites.len(), 2, "{:?}", e.peer.received());
    assert!(
        sdp_has(&invites[1].body, "UDP/TLS/RTP/SAVPF", "a=fingerprint:"),
        "{}",
        invites[1].raw
    );
    assert!(
        invites[1].body.contains("a=setup:actpass"),
        "{}",
        invites[1].raw
    );
    // Both calls were hung up by baresip, and the BYEs reached Asterisk.
    assert_eq!(
        e.peer.wait_requests("BYE", 2, T).len(),
        2,
        "{:?}",
        e.peer.received()
    );
}

#[test]
fn baresip_without_mandatory_srtp_is_refused_with_488_before_asterisk() {
    let e = Edge::start("");
    for mediaenc in ["srtp", "none"] {
        let r = baresip(&e, mediaenc);
        assert_eq!(r["call"], "failed", "{mediaenc}: {r}");
        assert_eq!(r["call_code"], 488, "{mediaenc}: {r}");
        let offer = r["offer"].to_string();
        assert!(
            offer.contains("RTP/AVP"),
            "{mediaenc} offers plain RTP/AVP: {r}"
        );
    }
    // Both registrations went through (asserted in `baresip`); no INVITE ever did.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        e.peer.requests("INVITE").is_empty(),
        "{:?}",
        e.peer.received()
    );
}

// ---- JsSIP over secure WebSocket -----------------------------------------------------------

/// One `tests/clients/sip_jssip.js` run; its JSON result.
fn jssip(e: &Edge, ticket: &str, extra: &[&str]) -> serde_json::Value {
    assert!(
        Path::new(CLIENTS).join("node_modules/jssip").is_dir(),
        "JsSIP is missing: run `npm ci` in tests/clients (tests/run.sh does)"
    );
    let url = format!("wss://localhost:{}/ws?ticket={ticket}", e.wss);
    let cert = e.env.cert();
    let out = run_for(
        Command::new("node")
            .current_dir(CLIENTS)
            .arg("sip_jssip.js")
            .args(["--url", &url, "--origin", ORIGIN])
            .arg("--ca")
            .arg(&cert)
            .args(["--user", "1001", "--domain", "pbx.test"])
            .args(["--timeout", "10"])
            .args(extra),
        Duration::from_secs(20),
    );
    json_line(&out)
}

#[test]
fn jssip_registers_and_messages_over_wss_with_a_single_use_ticket() {
    let e = Edge::start("");
    let token = e.web_user("alice", "1001");
    // Only the vault knows 1001's password; JsSIP gets none.
    e.env.set_sip_credential("1001", "pw1001");
    let tk = e.ticket(&token)["ticket"]
        .as_str()
        .expect("ticket")
        .to_string();
    let r = jssip(&e, &tk, &["--message-to", "1002", "--reregister", "1"]);
    assert_eq!(r["connected"], true, "{r}");
    assert_eq!(r["registered"], true, "{r}");
    assert_eq!(r["register_code"], 200, "{r}");
    assert_eq!(r["reregistered"], 1, "{r}");
    assert_eq!(r["message_code"], 202, "res_pjsip_messaging's answer: {r}");
    // The edge answered every challenge: each of JsSIP's REGISTERs (register, unregister,
    // register) reached Asterisk twice, without and then with credentials, numbered past the
    // edge's earlier re-sends (JsSIP's CSeq 1, 2, 3 became 1+2, 3+4, 5+6), and JsSIP got its
    // own numbers back (or it would not have matched the answers).
    let regs = e.peer.requests("REGISTER");
    assert!(regs.len() >= 6, "{:?}", e.peer.received());
    for (i, pair) in regs[..6].chunks(2).enumerate() {
        assert!(pair[0].header("Authorization").is_none(), "{}", pair[0].raw);
        assert!(
            pair[1]
                .header("Authorization")
                .is_some_and(|a| a.contains("username=\"1001\"")),
            "{}",
            pair[1].raw
        );
        let n = |m: &SipMsg| m.header("CSeq").unwrap_or_default().to_string();
        assert_eq!(n(&pair[0]), format!("{} REGISTER", 2 * i + 1));
        assert_eq!(n(&pair[1]), format!("{} REGISTER", 2 * i + 2));
    }
    assert!(regs
        .iter()
        .all(|r| r.all("X-PBXGuard-Identity") == vec!["1001"]));
    let msgs = e.peer.wait_requests("MESSAGE", 1, T);
    assert_eq!(msgs.len(), 1, "{:?}", e.peer.received());
    assert_eq!(
        msgs[0].all("X-PBXGuard-Identity"),
        vec!["1001"],
        "{}",
        msgs[0].raw
    );
    assert!(msgs[0].body.contains("hello from JsSIP"), "{}", msgs[0].raw);
    assert!(
        msgs[0].all("Via")[0].starts_with("SIP/2.0/UDP 127.0.0.1:"),
        "the edge's Via on top: {}",
        msgs[0].raw
    );

    // The ticket was used up: the upgrade is refused, JsSIP never connects.
    let r = jssip(&e, &tk, &[]);
    assert_eq!(r["connected"], false, "{r}");
    assert!(
        r["connect_error"]
            .as_str()
            .is_some_and(|m| m.contains("401")),
        "{r}"
    );

    // A fresh ticket, but registering another extension than the web user's: 403 from the
    // edge, Asterisk never hears of 1002.
    let tk = e.ticket(&token)["ticket"]
        .as_str()
        .expect("ticket")
        .to_string();
    let r = jssip(&e, &tk, &["--as", "1002"]);
    assert_eq!(r["connected"], true, "{r}");
    assert_eq!(r["registered"], false, "{r}");
    assert_eq!(r["register_code"], 403, "{r}");
    let from_1002 = e
        .peer
        .received()
        .into_iter()
        .filter(|m| m.contains("sip:1002@pbx.test>;tag="))
        .count();
    assert_eq!(from_1002, 0, "{:?}", e.peer.received());
}

// ---- SIPVicious through a UDP -> TLS bridge --------------------------------------------------

#[test]
fn sipvicious_svmap_is_banned_at_once_and_never_reaches_asterisk() {
    let e = Edge::start("");
    // The bridge connects from a documentation address of this host: loopback is never
    // banned.
    let Some(net) = common::netns::PhoneNet::create() else {
        return;
    };
    let src = std::net::IpAddr::V4(net.host_ip);
    let udp = free_port();
    let _bridge = Killed(
        Command::new("socat")
            .arg(format!("UDP4-LISTEN:{udp},bind=127.0.0.1,reuseaddr"))
            .arg(format!("OPENSSL:127.0.0.1:{},verify=0,bind={src}", e.tls))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat is installed"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let scan = run_for(
        Command::new("svmap")
            .args(["-p", &udp.to_string(), "-t", "0.2", "127.0.0.1"])
            .current_dir(e.env.dir.path())
            .env("HOME", e.env.dir.path()),
        Duration::from_secs(10),
    );
    // The scanner learned nothing: no answer, so no "SIP Device" line naming Asterisk.
    assert!(
        !String::from_utf8_lossy(&scan.stdout).contains("Asterisk"),
        "{}",
        out_text(&scan)
    );
    let end = Instant::now() + T;
    let bans = loop {
        let bans = e.bans();
        if bans.as_array().is_some_and(|b| !b.is_empty()) || Instant::now() > end {
            break bans;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        bans[0]["address"],
        src.to_string(),
        "{bans}\n{}",
        out_text(&scan)
    );
    assert_eq!(bans[0]["reason"], "scanner", "{bans}");
    assert_eq!(bans[0]["source"], "sip", "{bans}");
    assert!(
        e.peer.received().is_empty(),
        "the scan reached Asterisk: {:?}",
        e.peer.received()
    );
    assert!(
        SipTls::try_connect_from(Some(src), e.tls, &e.env.cert()).is_err(),
        "a banned address still gets a TLS session"
    );
    e.env.ok(&["sip", "ban", "rm", &src.to_string()], b"");
    let end = Instant::now() + T;
    while SipTls::try_connect_from(Some(src), e.tls, &e.env.cert()).is_err() {
        assert!(Instant::now() < end, "the lifted ban still holds");
        std::thread::sleep(Duration::from_millis(200));
    }
    e.options_ok();
}

// ---- sipsak over TLS -----------------------------------------------------------------------

/// `sipsak -E tls` against the edge (TLS 1.3), with `args` (a raw message file, flood...).
///
/// sipsak 0.9.8.1 takes a post-handshake NewSessionTicket record for the answer and gives up
/// ("nothing received"): this passes only because the edge sends no session tickets on SIP.
fn sipsak(e: &Edge, args: &[&str]) -> Output {
    run_for(
        Command::new("sipsak")
            .args(["-E", "tls", "--tls-ignore-cert-failure", "-vv"])
            .args(["-s", "sip:1001@127.0.0.1", "-r", &e.tls.to_string()])
            .args(args),
        Duration::from_secs(30),
    )
}

fn write_message(e: &Edge, name: &str, text: &str) -> PathBuf {
    let path = e.env.path(name);
    std::fs::write(&path, text).expect("write message file");
    path
}

#[test]
fn sipsak_raw_options_pass_and_a_smuggled_content_type_is_refused() {
    let e = Edge::start("");
    let call_id = format!("sipsak-ok-{}", rnd());
    let ok = write_message(
        &e,
        "options.sip",
        &format!(
            "OPTIONS sip:1001@pbx.test SIP/2.0\nMax-Forwards: 70\nFrom: <sip:1001@pbx.test>;tag={}\nTo: <sip:1001@pbx.test>\nCall-ID: {call_id}\nCSeq: 1 OPTIONS\nUser-Agent: sipsak-tests\nContent-Length: 0\n\n",
            rnd()
        ),
    );
    let out = sipsak(&e, &["-f", ok.to_str().unwrap()]);
    let text = out_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SIP/2.0 200 OK"), "{text}");
    let seen: Vec<SipMsg> = e
        .peer
        .requests("OPTIONS")
        .into_iter()
        .filter(|m| m.header("Call-ID") == Some(call_id.as_str()))
        .collect();
    assert_eq!(seen.len(), 1, "{:?}", e.peer.received());
    let vias = seen[0].all("Via");
    assert!(vias[0].starts_with("SIP/2.0/UDP 127.0.0.1:"), "{vias:?}");
    assert!(
        vias[1].starts_with("SIP/2.0/TLS "),
        "sipsak's own Via below ours: {vias:?}"
    );

    // A MESSAGE with the body typed twice, compact and long: which one a parser keeps decides
    // what the body is, so the edge refuses it.
    let smuggled_id = format!("sipsak-smuggle-{}", rnd());
    let body = "v=0\r\n";
    let smuggled = write_message(
        &e,
        "smuggled.sip",
        &format!(
            "MESSAGE sip:1002@pbx.test SIP/2.0\nMax-Forwards: 70\nFrom: <sip:1001@pbx.test>;tag={}\nTo: <sip:1002@pbx.test>\nCall-ID: {smuggled_id}\nCSeq: 1 MESSAGE\nc: text/plain\nContent-Type: application/sdp\nContent-Length: {}\n\n{body}",
            rnd(),
            body.len()
        ),
    );
    let out = sipsak(&e, &["-f", smuggled.to_str().unwrap()]);
    let text = out_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("SIP/2.0 400 Bad Request"), "{text}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !e.peer.received().iter().any(|m| m.contains(&smuggled_id)),
        "the smuggled MESSAGE reached Asterisk: {:?}",
        e.peer.received()
    );
}

#[test]
fn sipsak_flood_is_rate_limited_and_the_edge_keeps_serving() {
    let e = Edge::start("rate_per_ip = 5\nburst_per_ip = 10");
    let sent = 200;
    let out = sipsak(&e, &["-F", "-e", &sent.to_string()]);
    assert!(
        out_text(&out).contains("flood end reached"),
        "{}",
        out_text(&out)
    );
    // The first burst reaches Asterisk; the edge answers the rest 503 itself. sipsak never
    // reads its answers, so once 64 of them are queued the edge cuts it off as a slow reader,
    // and sipsak's reset on exit discards what the edge had not read yet: how many flooded
    // OPTIONS get judged at all varies from run to run (as few as 14 seen), but every judged one
    // beyond the burst is a 503, and Asterisk sees the burst at most.
    let end = Instant::now() + T;
    let mut last = (usize::MAX, usize::MAX);
    let (limited, forwarded) = loop {
        let limited = e.metric("pbxguard_sip_client_messages_total{result=\"rate_limited\"}");
        let now = (limited as usize, e.peer.requests("OPTIONS").len());
        if (now == last && now.0 > 0) || Instant::now() > end {
            break now;
        }
        last = now;
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(limited >= 1, "none of {sent} answered 503");
    assert!(
        (5..=20).contains(&forwarded),
        "burst 10 at 5/s, yet {forwarded} OPTIONS reached Asterisk"
    );
    assert!(limited + forwarded <= sent);
    // Rate limiting is not a ban: once the bucket refills, a new connection is served.
    assert!(
        e.bans().as_array().is_some_and(|b| b.is_empty()),
        "{}",
        e.bans()
    );
    std::thread::sleep(Duration::from_secs(1));
    e.options_ok();
}
