//! End to end: the real binary as the SIP edge, between raw SIP-over-TLS / WebSocket clients
//! and the Asterisk stand-in (`tests/peers/sip_peer.py`). Each test asserts both what the
//! client got back and what "Asterisk" saw (the peer logs every message it received).

mod common;

use std::time::{Duration, Instant};

use common::free_port;
use common::sip::{
    base_headers, digest, register_on, request, rnd, sdes_key, sdp_dtls, sdp_plain, sdp_sdes, Edge,
    SipMsg, SipTls, SipWs, ORIGIN,
};

const T: Duration = Duration::from_secs(10);
/// A bodiless answer from the phone to a request it received.
fn answer(req: &SipMsg, status: &str) -> Vec<u8> {
    let mut lines: Vec<String> = req.all("Via").iter().map(|v| format!("Via: {v}")).collect();
    for name in ["From", "Call-ID", "CSeq"] {
        lines.push(format!("{name}: {}", req.header(name).unwrap()));
    }
    lines.push(format!("To: {};tag={}", req.header("To").unwrap(), rnd()));
    request(&format!("SIP/2.0 {status}"), &lines, "")
}

fn invite(user: &str, to: &str, transport: &str, sdp: &str) -> Vec<u8> {
    let mut lines = base_headers("INVITE", user, to, transport, &rnd(), 1);
    lines.push("Content-Type: application/sdp".into());
    request(&format!("INVITE sip:{to}@pbx.test SIP/2.0"), &lines, sdp)
}

fn options(user: &str) -> Vec<u8> {
    request(
        "OPTIONS sip:pbx.test SIP/2.0",
        &base_headers("OPTIONS", user, user, "TLS", &rnd(), 1),
        "",
    )
}

#[test]
fn register_over_tls_reaches_asterisk_rewritten_with_path_and_our_via() {
    let e = Edge::start("");
    let mut c = e.client();
    // Compact forms from the client; Asterisk must see long names only.
    let call_id = rnd();
    let compact = format!(
        "REGISTER sip:pbx.test SIP/2.0\r\nv: SIP/2.0/TLS client.invalid;branch=z9hG4bK{};rport\r\nMax-Forwards: 70\r\nf: <sip:1001@pbx.test>;tag={}\r\nt: <sip:1001@pbx.test>\r\ni: {call_id}\r\nCSeq: 1 REGISTER\r\nm: <sip:1001@client.invalid;transport=tls>\r\nl: 0\r\n\r\n",
        rnd(),
        rnd()
    );
    c.send(compact.as_bytes());
    let challenge = c.final_response(T).expect("401");
    assert_eq!(challenge.status(), Some(401), "{challenge:?}");
    let seen = e.peer.wait_requests("REGISTER", 1, T);
    let first = &seen[0];
    for compact in ["\r\nv:", "\r\nf:", "\r\nt:", "\r\ni:", "\r\nm:", "\r\nl:"] {
        assert!(
            !first.raw.contains(compact),
            "compact header reached Asterisk: {}",
            first.raw
        );
    }
    let vias = first.all("Via");
    assert_eq!(vias.len(), 2, "{}", first.raw);
    assert!(
        vias[0].starts_with("SIP/2.0/UDP 127.0.0.1:"),
        "our Via on top: {vias:?}"
    );
    assert!(vias[0].contains(";pbxg="), "{vias:?}");
    assert!(
        vias[1].contains("received=127.0.0.1"),
        "client Via gets received: {vias:?}"
    );
    let path = first.header("Path").expect("Path added");
    assert!(path.contains(";lr") && path.contains("pbxg="), "{path}");
    assert!(first
        .header("Supported")
        .is_some_and(|s| s.contains("path")));

    let ok = e.register(&mut c, "1001", "pw1001");
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    assert!(
        ok.all("Via").len() == 1,
        "our Via is removed before the client: {ok:?}"
    );
}

#[test]
fn invalid_messages_get_a_4xx_and_the_connection_keeps_serving() {
    let e = Edge::start("");
    let mut c = e.client();
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (
            {
                let mut l = base_headers("OPTIONS", "1001", "1001", "TLS", &rnd(), 1);
                l.push("To: <sip:1002@pbx.test>".into());
                request("OPTIONS sip:pbx.test SIP/2.0", &l, "")
            },
            400,
            "duplicate To",
        ),
        (
            {
                let mut l = base_headers("OPTIONS", "1001", "1001", "TLS", &rnd(), 1);
                l.retain(|h| !h.starts_with("Max-Forwards"));
                l.push("Max-Forwards: 0".into());
                request("OPTIONS sip:pbx.test SIP/2.0", &l, "")
            },
            483,
            "Max-Forwards 0",
        ),
        (
            request(
                "FOOBAR sip:pbx.test SIP/2.0",
                &base_headers("FOOBAR", "1001", "1001", "TLS", &rnd(), 1),
                "",
            ),
            501,
            "unknown method",
        ),
        (
            {
                let mut l = base_headers("OPTIONS", "1001", "1001", "TLS", &rnd(), 1);
                l.retain(|h| !h.starts_with("CSeq"));
                l.push("CSeq: 1 INVITE".into());
                request("OPTIONS sip:pbx.test SIP/2.0", &l, "")
            },
            400,
            "CSeq method mismatch",
        ),
        (
            request(
                "OPTIONS tel:+15551234 SIP/2.0",
                &base_headers("OPTIONS", "1001", "1001", "TLS", &rnd(), 1),
                "",
            ),
            416,
            "tel: Request-URI",
        ),
        (
            {
                let mut l = base_headers("OPTIONS", "1001", "1001", "TLS", &rnd(), 1);
                l.push("Subject : spaced".into());
                request("OPTIONS sip:pbx.test SIP/2.0", &l, "")
            },
            400,
            "whitespace before colon",
        ),
        (
            {
                let mut l = base_headers("OPTIONS", "1001", "1001", "TLS", &rnd(), 1);
                l.push("Subject: folded\r\n continued".into());
                request("OPTIONS sip:pbx.test SIP/2.0", &l, "")
            },
            400,
            "obs-fold",
        ),
    ];
    let before = e.peer.received().len();
    for (bytes, want, what) in cases {
        c.send(&bytes);
        let r = c
            .final_response(T)
            .unwrap_or_else(|| panic!("no answer for {what}"));
        assert_eq!(r.status(), Some(want), "{what}: {r:?}");
    }
    // None of them reached Asterisk, and the connection still works.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        e.peer.received().len(),
        before,
        "refused messages reached Asterisk"
    );
    c.send(&options("1001"));
    assert_eq!(c.final_response(T).and_then(|r| r.status()), Some(200));
}

#[test]
fn framing_errors_close_the_stream_without_forwarding() {
    let e = Edge::start("");
    let cases: Vec<(&str, String)> = vec![
        (
            "no Content-Length",
            format!(
                "OPTIONS sip:pbx.test SIP/2.0\r\n{}\r\n\r\n",
                base_headers("OPTIONS", "1001", "1001", "TLS", &rnd(), 1).join("\r\n")
            ),
        ),
        (
            "two Content-Length (long and compact)",
            format!(
                "OPTIONS sip:pbx.test SIP/2.0\r\n{}\r\nContent-Length: 0\r\nl: 4\r\n\r\nABCD",
                base_headers("OPTIONS", "1001", "1001", "TLS", &rnd(), 1).join("\r\n")
            ),
        ),
        (
            "negative Content-Length",
            format!(
                "OPTIONS sip:pbx.test SIP/2.0\r\n{}\r\nContent-Length: -5\r\n\r\n",
                base_headers("OPTIONS", "1001", "1001", "TLS", &rnd(), 1).join("\r\n")
            ),
        ),
        (
            "oversized header block",
            format!(
                "OPTIONS sip:pbx.test SIP/2.0\r\nX-Big: {}\r\n",
                "a".repeat(40_000)
            ),
        ),
    ];
    for (what, bytes) in cases {
        let mut c = e.client();
        c.try_send(bytes.as_bytes());
        assert!(c.closed_within(T), "{what}: connection stayed open");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        e.peer.requests("OPTIONS").is_empty(),
        "an unframeable message reached Asterisk"
    );
    let mut c = e.client();
    c.send(&options("1001"));
    assert_eq!(c.final_response(T).and_then(|r| r.status()), Some(200));
}

#[test]
fn crlf_keepalive_gets_a_pong() {
    let e = Edge::start("");
    let mut c = e.client();
    c.send(b"\r\n\r\n");
    std::thread::sleep(Duration::from_millis(300));
    c.send(&options("1001"));
    assert_eq!(c.final_response(T).and_then(|r| r.status()), Some(200));
}

#[test]
fn media_policy_refuses_plain_and_optimistic_offers_and_passes_srtp() {
    let e = Edge::start("");
    let mut c = e.client();
    let optimistic = sdp_plain().replace(
        "a=rtpmap:0 PCMU/8000\r\n",
        &format!(
            "a=rtpmap:0 PCMU/8000\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{}\r\n",
            sdes_key()
        ),
    );
    let unencrypted =
        sdp_sdes(&sdes_key()).replace("\r\na=sendrecv", " UNENCRYPTED_SRTP\r\na=sendrecv");
    let refused = [
        ("plain RTP/AVP", sdp_plain()),
        ("optimistic RTP/AVP with a=crypto", optimistic),
        ("UNENCRYPTED_SRTP", unencrypted),
        (
            "SAVP without crypto",
            sdp_plain().replace("RTP/AVP", "RTP/SAVP"),
        ),
        (
            "DTLS without fingerprint",
            sdp_dtls()
                .lines()
                .filter(|l| !l.starts_with("a=fingerprint"))
                .map(|l| format!("{l}\r\n"))
                .collect(),
        ),
        ("fax", sdp_sdes(&sdes_key()) + "m=image 40002 udptl t38\r\n"),
    ];
    for (what, sdp) in &refused {
        c.send(&invite("1001", "1002", "TLS", sdp));
        let r = c
            .final_response(T)
            .unwrap_or_else(|| panic!("no answer for {what}"));
        assert_eq!(r.status(), Some(488), "{what}: {r:?}");
        let warning = r.header("Warning").unwrap_or_default();
        assert!(warning.starts_with("399 "), "{what}: Warning {warning:?}");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        e.peer.requests("INVITE").is_empty(),
        "a refused offer reached Asterisk"
    );

    for (what, sdp) in [("SDES", sdp_sdes(&sdes_key())), ("DTLS", sdp_dtls())] {
        c.send(&invite("1001", "1002", "TLS", &sdp));
        let r = c
            .final_response(T)
            .unwrap_or_else(|| panic!("no answer for {what}"));
        assert_eq!(r.status(), Some(200), "{what}: {r:?}");
        assert!(r.body.contains("m=audio"), "{what}: answer carries SDP");
    }
    assert_eq!(e.peer.requests("INVITE").len(), 2);
}

#[test]
fn smuggled_sdp_in_multipart_compact_type_or_encoding_is_refused() {
    let e = Edge::start("");
    let mut c = e.client();
    let boundary = "b0undary";
    let multipart = format!(
        "--{boundary}\r\nContent-Type: text/plain\r\n\r\nhello\r\n--{boundary}\r\nContent-Type: application/sdp\r\n\r\n{}\r\n--{boundary}--\r\n",
        sdp_plain()
    );
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut l = base_headers("INVITE", "1001", "1002", "TLS", &rnd(), 1);
    l.push(format!("Content-Type: multipart/mixed;boundary={boundary}"));
    cases.push((
        "plain SDP inside multipart/mixed",
        request("INVITE sip:2000@pbx.test SIP/2.0", &l, &multipart),
    ));
    let mut l = base_headers("INVITE", "1001", "1002", "TLS", &rnd(), 1);
    l.push("c: application/sdp".into());
    cases.push((
        "compact c: header",
        request("INVITE sip:2000@pbx.test SIP/2.0", &l, &sdp_plain()),
    ));
    let mut l = base_headers("INVITE", "1001", "1002", "TLS", &rnd(), 1);
    l.push("Content-Type: application/sdp".into());
    l.push("Content-Encoding: gzip".into());
    cases.push((
        "Content-Encoding on SDP",
        request(
            "INVITE sip:2000@pbx.test SIP/2.0",
            &l,
            &sdp_sdes(&sdes_key()),
        ),
    ));
    let mut l = base_headers("INVITE", "1001", "1002", "TLS", &rnd(), 1);
    l.push("Content-Type: APPLICATION/SDP".into());
    cases.push((
        "upper-case content type",
        request("INVITE sip:2000@pbx.test SIP/2.0", &l, &sdp_plain()),
    ));
    let bare_cr =
        sdp_sdes(&sdes_key()).replace("a=sendrecv\r\n", "a=sendrecv\rm=audio 40002 RTP/AVP 0\r\n");
    let mut l = base_headers("INVITE", "1001", "1002", "TLS", &rnd(), 1);
    l.push("Content-Type: application/sdp".into());
    cases.push((
        "bare CR hiding a second m= line",
        request("INVITE sip:2000@pbx.test SIP/2.0", &l, &bare_cr),
    ));
    for (what, bytes) in cases {
        c.send(&bytes);
        let r = c
            .final_response(T)
            .unwrap_or_else(|| panic!("no answer for {what}"));
        assert_eq!(r.status(), Some(488), "{what}: {r:?}");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(e.peer.requests("INVITE").is_empty());
}

#[test]
fn a_plain_answer_from_asterisk_tears_the_call_down_on_both_sides() {
    let e = Edge::start("");
    let mut c = e.client();
    c.send(&invite("1001", "plain", "TLS", &sdp_sdes(&sdes_key())));
    let r = c.final_response(T).expect("answer");
    assert_eq!(
        r.status(),
        Some(488),
        "the client gets 488 instead of Asterisk's 200: {r:?}"
    );
    assert!(r.header("Warning").is_some());
    // Asterisk got its 200 acknowledged and the call ended.
    let acks = e.peer.wait_requests("ACK", 1, T);
    let byes = e.peer.wait_requests("BYE", 1, T);
    assert_eq!(acks.len(), 1, "{:?}", e.peer.received());
    assert_eq!(byes.len(), 1, "{:?}", e.peer.received());
    assert_eq!(byes[0].header("Call-ID"), r.header("Call-ID"));
    // The client's ACK for our 488 stops at the edge.
    let ack = {
        let mut l: Vec<String> = vec![
            format!("Via: {}", r.header("Via").unwrap()),
            "Max-Forwards: 70".into(),
            format!("From: {}", r.header("From").unwrap()),
            format!("To: {}", r.header("To").unwrap()),
            format!("Call-ID: {}", r.header("Call-ID").unwrap()),
        ];
        l.push("CSeq: 1 ACK".into());
        request("ACK sip:plain@pbx.test SIP/2.0", &l, "")
    };
    c.send(&ack);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        e.peer.requests("ACK").len(),
        1,
        "the client's ACK for our 488 reached Asterisk"
    );
}

#[test]
fn incoming_calls_reach_the_phone_through_path_and_record_route() {
    let e = Edge::start("");
    let mut c = e.client();
    assert_eq!(e.register(&mut c, "1001", "pw1001").status(), Some(200));
    let peer = &e.peer;
    let handle = std::thread::scope(|s| {
        let h = s.spawn(|| {
            peer.control(serde_json::json!({"cmd": "invite", "user": "1001", "sdp": "sdes"}))
        });
        let inv = c.recv(T).expect("INVITE from Asterisk reaches the phone");
        assert_eq!(inv.method(), Some("INVITE"), "{inv:?}");
        let vias = inv.all("Via");
        assert!(
            vias[0].starts_with("SIP/2.0/TLS "),
            "our Via towards the phone: {vias:?}"
        );
        let rr = inv.all("Record-Route");
        assert_eq!(rr.len(), 2, "double Record-Route: {rr:?}");
        assert!(rr[0].contains("transport=tls"), "{rr:?}");
        assert!(inv.header("Route").is_none(), "Path route removed: {inv:?}");
        // The phone answers with SRTP.
        let mut lines: Vec<String> = vias.iter().map(|v| format!("Via: {v}")).collect();
        lines.extend(rr.iter().map(|r| format!("Record-Route: {r}")));
        lines.push(format!("From: {}", inv.header("From").unwrap()));
        lines.push(format!("To: {};tag={}", inv.header("To").unwrap(), rnd()));
        lines.push(format!("Call-ID: {}", inv.header("Call-ID").unwrap()));
        lines.push(format!("CSeq: {}", inv.header("CSeq").unwrap()));
        lines.push("Contact: <sip:1001@client.invalid;transport=tls>".into());
        lines.push("Content-Type: application/sdp".into());
        c.send(&request("SIP/2.0 200 OK", &lines, &sdp_sdes(&sdes_key())));
        let ack = c.recv(T).expect("ACK from Asterisk");
        assert_eq!(ack.method(), Some("ACK"), "{ack:?}");
        h.join().unwrap()
    });
    assert_eq!(handle["code"], 200, "{handle}");
}

/// The phone's answer to a request it received, carrying `sdp`.
fn answer_with_sdp(req: &SipMsg, status: &str, sdp: &str) -> Vec<u8> {
    let mut lines: Vec<String> = req.all("Via").iter().map(|v| format!("Via: {v}")).collect();
    lines.extend(
        req.all("Record-Route")
            .iter()
            .map(|r| format!("Record-Route: {r}")),
    );
    for name in ["From", "Call-ID", "CSeq"] {
        lines.push(format!("{name}: {}", req.header(name).unwrap()));
    }
    lines.push(format!("To: {};tag={}", req.header("To").unwrap(), rnd()));
    lines.push("Contact: <sip:1001@client.invalid;transport=tls>".into());
    lines.push("Content-Type: application/sdp".into());
    request(&format!("SIP/2.0 {status}"), &lines, sdp)
}

/// What phones put in a 200 to OPTIONS (RFC 3261 §11.2): what they can do, no keys.
fn capability_sdp(proto: &str) -> String {
    format!(
        "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio 9 {proto} 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    )
}

#[test]
fn qualify_reaches_the_phone_and_its_capability_answer_returns_but_plain_calls_do_not() {
    let e = Edge::start("");
    let mut c = e.client();
    assert_eq!(e.register(&mut c, "1001", "pw1001").status(), Some(200));
    let peer = &e.peer;
    // Asterisk's qualify (qualify_frequency): the phone answers with its capabilities,
    // plain RTP or SAVP without keys. Asterisk gets the 200, without that description.
    for proto in ["RTP/AVP", "RTP/SAVP"] {
        let got = std::thread::scope(|s| {
            let h = s.spawn(|| peer.control(serde_json::json!({"cmd": "options", "user": "1001"})));
            let opt = c.recv(T).expect("OPTIONS reaches the phone");
            assert_eq!(opt.method(), Some("OPTIONS"), "{opt:?}");
            c.send(&answer_with_sdp(&opt, "200 OK", &capability_sdp(proto)));
            h.join().unwrap()
        });
        assert_eq!(got["code"], 200, "{proto}: {got}");
        assert_eq!(got["answers"][0]["body"], "", "{proto}: {got}");
        assert_eq!(got["answers"][0]["content_type"], "", "{proto}: {got}");
    }
    // A phone's own OPTIONS with a description: answered, and Asterisk sees no body.
    let mut l = base_headers("OPTIONS", "1001", "1001", "TLS", &rnd(), 7);
    l.push("Content-Type: application/sdp".into());
    c.send(&request(
        "OPTIONS sip:pbx.test SIP/2.0",
        &l,
        &capability_sdp("RTP/AVP"),
    ));
    assert_eq!(c.final_response(T).and_then(|r| r.status()), Some(200));
    let seen = e.peer.wait_requests("OPTIONS", 1, T);
    assert!(
        seen[0].body.is_empty() && seen[0].header("Content-Type").is_none(),
        "{}",
        seen[0].raw
    );
    assert!(!e.daemon.log().contains("ending that call"));

    // A plain answer to a call is still refused: Asterisk gets 488, the phone ACK and BYE.
    let got = std::thread::scope(|s| {
        let h = s.spawn(|| {
            peer.control(serde_json::json!({"cmd": "invite", "user": "1001", "sdp": "sdes"}))
        });
        let inv = c.recv(T).expect("INVITE reaches the phone");
        assert_eq!(inv.method(), Some("INVITE"), "{inv:?}");
        c.send(&answer_with_sdp(&inv, "200 OK", &sdp_plain()));
        let ack = c.recv(T).expect("ACK from the edge");
        let bye = c.recv(T).expect("BYE from the edge");
        assert_eq!(ack.method(), Some("ACK"), "{ack:?}");
        assert_eq!(bye.method(), Some("BYE"), "{bye:?}");
        assert_eq!(bye.header("Call-ID"), inv.header("Call-ID"));
        h.join().unwrap()
    });
    assert_eq!(got["code"], 488, "{got}");
    let log = e.daemon.log();
    assert_eq!(log.matches("ending that call").count(), 1, "{log}");
}

#[test]
fn tcp_towards_asterisk_carries_requests_answers_and_calls_back() {
    let e = Edge::start("upstream = \"127.0.0.1:{tcp}\"\nupstream_transport = \"tcp\"");
    let mut c = e.client();
    assert_eq!(e.register(&mut c, "1001", "pw1001").status(), Some(200));
    let seen = e.peer.requests("REGISTER");
    assert!(
        seen[0].all("Via")[0].starts_with("SIP/2.0/TCP 127.0.0.1:"),
        "{}",
        seen[0].raw
    );
    assert!(seen[1]
        .header("Path")
        .is_some_and(|p| p.contains("transport=tcp")));
    assert!(e
        .peer
        .log()
        .iter()
        .all(|m| m["dir"] != "in" || m["proto"] == "tcp"));
    // Asterisk opens its own connection to our Path address to reach the phone.
    let peer = &e.peer;
    std::thread::scope(|s| {
        let h = s.spawn(|| peer.control(serde_json::json!({"cmd": "notify", "user": "1001"})));
        let notify = c.recv(T).expect("NOTIFY reaches the phone");
        assert_eq!(notify.method(), Some("NOTIFY"), "{notify:?}");
        c.send(&answer(&notify, "200 OK"));
        assert_eq!(
            h.join().unwrap()["code"],
            200,
            "the phone's 200 reaches Asterisk over TCP"
        );
    });
}

#[test]
fn a_scanner_is_banned_at_once_and_the_cli_lifts_the_ban() {
    let e = Edge::start("");
    // From loopback a scanner is turned away but never banned: it is this host.
    let mut c = e.client();
    let mut l = base_headers("OPTIONS", "100", "100", "TLS", &rnd(), 1);
    l.retain(|h| !h.starts_with("User-Agent"));
    l.push("User-Agent: friendly-scanner".into());
    c.try_send(&request("OPTIONS sip:100@pbx.test SIP/2.0", &l, ""));
    assert!(c.closed_within(T), "the scanner's connection stays open");
    let Some(net) = common::netns::PhoneNet::create() else {
        return;
    };
    let src = std::net::IpAddr::V4(net.host_ip);
    let mut c = e.client_from(src);
    c.try_send(&request("OPTIONS sip:100@pbx.test SIP/2.0", &l, ""));
    assert!(c.closed_within(T), "the scanner's connection stays open");
    assert!(
        e.peer.requests("OPTIONS").is_empty(),
        "the scanner reached Asterisk"
    );
    // Banned: a new connection is dropped before TLS; loopback still gets in.
    assert!(
        SipTls::try_connect_from(Some(src), e.tls, &e.env.cert()).is_err(),
        "banned address got in again"
    );
    let end = Instant::now() + T;
    let bans = loop {
        let list = e.env.ok(&["sip", "ban", "list", "--json"], b"");
        let bans: serde_json::Value = serde_json::from_slice(&list).unwrap();
        if bans[0].is_object() || Instant::now() > end {
            break bans;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(bans.as_array().map(Vec::len), Some(1), "{bans}");
    assert_eq!(bans[0]["address"], src.to_string(), "{bans}");
    assert_eq!(bans[0]["reason"], "scanner", "{bans}");
    assert_eq!(bans[0]["source"], "sip", "{bans}");
    assert_eq!(bans[0]["hits"], 1, "{bans}");
    let mut ok = e.client();
    ok.send(&options("1001"));
    assert_eq!(ok.final_response(T).and_then(|r| r.status()), Some(200));
    e.env.ok(&["sip", "ban", "rm", &src.to_string()], b"");
    let end = Instant::now() + T;
    let mut c = loop {
        if let Ok(c) = SipTls::try_connect_from(Some(src), e.tls, &e.env.cert()) {
            break c;
        }
        assert!(Instant::now() < end, "the lifted ban still holds");
        std::thread::sleep(Duration::from_millis(200));
    };
    c.send(&options("1001"));
    assert_eq!(c.final_response(T).and_then(|r| r.status()), Some(200));
    // Lifting an unknown ban is a clear error.
    let out = e.env.run(&["sip", "ban", "rm", "192.0.2.99"], b"");
    assert!(!out.status.success());
    let out = e.env.run(&["sip", "ban", "rm", "not-an-ip"], b"");
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn register_brute_force_bans_the_address() {
    let e = Edge::start("ban_threshold = 3\nban_window = \"1m\"\nban_duration = \"10m\"");
    let Some(net) = common::netns::PhoneNet::create() else {
        return;
    };
    let src = std::net::IpAddr::V4(net.host_ip);
    let mut c = e.client_from(src);
    for _ in 0..2 {
        let r = e.register(&mut c, "1001", "wrong");
        assert_eq!(r.status(), Some(401));
    }
    // The third failure bans: the connection is closed (before or after the 401 gets out).
    let call_id = rnd();
    c.send(&request(
        "REGISTER sip:pbx.test SIP/2.0",
        &base_headers("REGISTER", "1001", "1001", "TLS", &call_id, 1),
        "",
    ));
    let challenge = c.final_response(T).expect("challenge");
    let mut lines = base_headers("REGISTER", "1001", "1001", "TLS", &call_id, 2);
    lines.push(format!(
        "Authorization: {}",
        digest(
            challenge.header("WWW-Authenticate").unwrap(),
            "1001",
            "wrong",
            "REGISTER",
            "sip:pbx.test"
        )
    ));
    c.try_send(&request("REGISTER sip:pbx.test SIP/2.0", &lines, ""));
    assert!(c.closed_within(T), "still connected after the threshold");
    // In force at once; in the store (and so the list) a moment later.
    assert!(SipTls::try_connect_from(Some(src), e.tls, &e.env.cert()).is_err());
    let end = Instant::now() + T;
    let bans = loop {
        let bans: serde_json::Value =
            serde_json::from_slice(&e.env.ok(&["ban", "list", "--json"], b"")).unwrap();
        if bans[0].is_object() || Instant::now() > end {
            break bans;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(bans[0]["reason"], "auth_failures", "{bans}");
    assert_eq!(bans[0]["source"], "sip", "{bans}");
    assert!(SipTls::try_connect_from(Some(src), e.tls, &e.env.cert()).is_err());
}

#[test]
fn forbidden_answers_count_too_and_unchallenged_401s_do_not() {
    let e = Edge::start("ban_threshold = 2");
    let Some(net) = common::netns::PhoneNet::create() else {
        return;
    };
    let mut c = e.client_from(std::net::IpAddr::V4(net.host_ip));
    // Plain challenges (no credentials sent) never count.
    for _ in 0..5 {
        c.send(&request(
            "REGISTER sip:pbx.test SIP/2.0",
            &base_headers("REGISTER", "1001", "1001", "TLS", &rnd(), 1),
            "",
        ));
        assert_eq!(c.final_response(T).and_then(|r| r.status()), Some(401));
    }
    assert_eq!(e.register(&mut c, "1003", "x").status(), Some(403));
    // The second 403 bans; the connection closes (its answer may or may not get out first).
    c.try_send(&request(
        "REGISTER sip:pbx.test SIP/2.0",
        &base_headers("REGISTER", "1003", "1003", "TLS", &rnd(), 1),
        "",
    ));
    assert!(c.closed_within(T), "two 403s within the window ban");
}

#[test]
fn rate_limits_answer_503() {
    let e = Edge::start("rate_per_ip = 2\nburst_per_ip = 5");
    let mut c = e.client();
    for _ in 0..20 {
        c.send(&options("1001"));
    }
    let mut codes = Vec::new();
    while let Some(r) = c.final_response(Duration::from_secs(3)) {
        codes.push(r.status().unwrap_or(0));
        if codes.len() == 20 {
            break;
        }
    }
    let limited = codes.iter().filter(|c| **c == 503).count();
    assert!(limited >= 10, "{codes:?}");
    assert!(codes.contains(&200), "{codes:?}");
}

// ---- WebSocket: tickets, origin, binding ----------------------------------------------------

fn ws(e: &Edge, ticket: &str, origin: Option<&str>) -> Result<SipWs, u16> {
    SipWs::connect(
        e.wss,
        &format!("/ws?ticket={ticket}"),
        origin,
        &e.env.cert(),
    )
}

#[test]
fn websocket_needs_a_fresh_ticket_and_an_allowed_origin() {
    let e = Edge::start("ticket_ttl = \"2s\"");
    let token = e.web_user("alice", "1001");
    let t = e.ticket(&token);
    assert_eq!(t["extension"], "1001");
    assert!(t["ws_url"].as_str().unwrap().contains("/ws?ticket="), "{t}");
    let tk = t["ticket"].as_str().unwrap().to_string();
    assert_eq!(
        ws(&e, &tk, Some("https://evil.test")).err(),
        Some(403),
        "foreign origin"
    );
    assert_eq!(ws(&e, &tk, None).err(), Some(403), "no origin");
    assert!(
        ws(&e, &tk, Some(ORIGIN)).is_ok(),
        "the right origin with the ticket"
    );
    assert_eq!(
        ws(&e, &tk, Some(ORIGIN)).err(),
        Some(401),
        "the ticket was single-use"
    );
    assert_eq!(
        ws(&e, "x", Some(ORIGIN)).err(),
        Some(401),
        "a made-up ticket"
    );
    let old = e.ticket(&token)["ticket"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        ws(&e, &old, Some(ORIGIN)).err(),
        Some(401),
        "an expired ticket"
    );
    let fresh = e.ticket(&token)["ticket"].as_str().unwrap().to_string();
    let path = SipWs::connect(
        e.wss,
        &format!("/other?ticket={fresh}"),
        Some(ORIGIN),
        &e.env.cert(),
    );
    assert_eq!(path.err(), Some(404));
    // Without a session there is no ticket; without an extension neither.
    let r = e.env.request("POST", "/api/v1/sip/ticket", &[], None);
    assert_eq!(r.status, 401);
    e.env.add_user("bob", 2, "agent-password-1");
    let bob = e.env.token("bob", "agent-password-1");
    let r = e.env.request(
        "POST",
        "/api/v1/sip/ticket",
        &[&format!("Authorization: Bearer {bob}")],
        None,
    );
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "no_extension");
}

#[test]
fn websocket_is_bound_to_the_extension_and_carries_the_identity_header() {
    let e = Edge::start("");
    let token = e.web_user("alice", "1001");
    let tk = e.ticket(&token)["ticket"].as_str().unwrap().to_string();
    let mut w = ws(&e, &tk, Some(ORIGIN)).expect("ws");
    // Another extension: refused before Asterisk.
    let r = register_on(
        |b| {
            w.send(std::str::from_utf8(b).unwrap());
            w.final_response(T)
        },
        "1002",
        "pw1002",
        "WSS",
    );
    assert_eq!(r.status(), Some(403), "{r:?}");
    assert!(e.peer.requests("REGISTER").is_empty());
    // Its own extension, with a forged identity header that must be replaced.
    let mut lines = base_headers("MESSAGE", "1001", "1002", "WSS", &rnd(), 1);
    lines.push("X-PBXGuard-Identity: 1002".into());
    lines.push("Content-Type: text/plain".into());
    w.send(
        std::str::from_utf8(&request("MESSAGE sip:1002@pbx.test SIP/2.0", &lines, "hi")).unwrap(),
    );
    // Asterisk's res_pjsip_messaging answers 202.
    assert_eq!(w.final_response(T).and_then(|r| r.status()), Some(202));
    let seen = e.peer.wait_requests("MESSAGE", 1, T);
    assert_eq!(
        seen[0].all("X-PBXGuard-Identity"),
        vec!["1001"],
        "{}",
        seen[0].raw
    );
    // The browser holds no SIP password: the edge answers Asterisk's challenge with the
    // extension's credential from the vault. Without one it cannot, and the browser gets a
    // 403 saying so, never the 401.
    let reg = |w: &mut SipWs| {
        register_on(
            |b| {
                w.send(std::str::from_utf8(b).unwrap());
                w.final_response(T)
            },
            "1001",
            "the-browser-knows-no-password",
            "WSS",
        )
    };
    let r = reg(&mut w);
    assert_eq!(r.status(), Some(403), "{r:?}");
    assert!(
        r.header("Warning")
            .is_some_and(|v| v.contains("no SIP credential")),
        "{r:?}"
    );
    e.env.set_sip_credential("1001", "pw1001");
    let before = e.peer.requests("REGISTER").len();
    let r = reg(&mut w);
    assert_eq!(r.status(), Some(200), "{r:?}");
    // The browser's own CSeq comes back although Asterisk saw two REGISTERs.
    assert_eq!(r.header("CSeq"), Some("1 REGISTER"), "{r:?}");
    let seen = e.peer.requests("REGISTER");
    assert_eq!(seen.len(), before + 2, "{seen:?}");
    let (challenged, answered) = (&seen[before], &seen[before + 1]);
    assert!(
        challenged.header("Authorization").is_none(),
        "{}",
        challenged.raw
    );
    let auth = answered.header("Authorization").unwrap_or_default();
    assert!(auth.contains("username=\"1001\""), "{}", answered.raw);
    let cseq = |m: &SipMsg| m.header("CSeq").unwrap_or_default().to_string();
    assert_eq!(
        (cseq(challenged).as_str(), cseq(answered).as_str()),
        ("1 REGISTER", "2 REGISTER")
    );
    // WebSocket clients must use DTLS-SRTP: SDES is refused, DTLS passes.
    w.send(std::str::from_utf8(&invite("1001", "1002", "WSS", &sdp_sdes(&sdes_key()))).unwrap());
    assert_eq!(w.final_response(T).and_then(|r| r.status()), Some(488));
    w.send(std::str::from_utf8(&invite("1001", "1002", "WSS", &sdp_dtls())).unwrap());
    assert_eq!(w.final_response(T).and_then(|r| r.status()), Some(200));
}

#[test]
fn revoking_the_web_session_closes_the_websocket() {
    let e = Edge::start("");
    let token = e.web_user("alice", "1001");
    let tk = e.ticket(&token)["ticket"].as_str().unwrap().to_string();
    let mut w = ws(&e, &tk, Some(ORIGIN)).expect("ws");
    e.env.ok(&["session", "revoke", "--user", "alice"], b"");
    assert!(
        w.closed_within(Duration::from_secs(5)),
        "the WebSocket outlived its session by 5 s"
    );
}

#[test]
fn reload_moves_the_listener_and_removing_the_section_closes_connections() {
    let mut e = Edge::start("");
    let mut c = e.client();
    assert_eq!(e.register(&mut c, "1001", "pw1001").status(), Some(200));
    let new_tls = free_port();
    let text = std::fs::read_to_string(&e.env.config).unwrap();
    e.env.write_config(&text.replace(
        &format!("tls_listen = \"127.0.0.1:{}\"", e.tls),
        &format!("tls_listen = \"127.0.0.1:{new_tls}\""),
    ));
    e.daemon.signal("HUP");
    e.daemon.wait_for_port(new_tls);
    // The established connection survives a listener move.
    c.send(&options("1001"));
    assert_eq!(c.final_response(T).and_then(|r| r.status()), Some(200));
    e.tls = new_tls;
    let mut c2 = e.client();
    c2.send(&options("1001"));
    assert_eq!(c2.final_response(T).and_then(|r| r.status()), Some(200));
    let text = std::fs::read_to_string(&e.env.config).unwrap();
    let cut = text.find("[sip]").unwrap();
    e.env.write_config(&text[..cut]);
    e.daemon.signal("HUP");
    assert!(c.closed_within(T), "[sip] removed but connections stay");
}

#[test]
fn only_tls_1_2_and_later_and_never_plain_sip() {
    let e = Edge::start("");
    let handshake = |version: &str, port: u16| {
        // SECLEVEL=0: OpenSSL 3 would refuse TLS 1.1 itself; the server must be the one.
        std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{port}"),
                version,
            ])
            .args(["-cipher", "DEFAULT@SECLEVEL=0"])
            .args(["-CAfile", &e.env.cert().display().to_string(), "-brief"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl")
    };
    for port in [e.tls, e.wss] {
        let old = handshake("-tls1_1", port);
        assert!(!old.status.success(), "TLS 1.1 accepted on {port}");
        for v in ["-tls1_2", "-tls1_3"] {
            let out = handshake(v, port);
            let text = String::from_utf8_lossy(&out.stderr);
            assert!(
                text.contains("CONNECTION ESTABLISHED"),
                "{v} on {port}: {text}"
            );
        }
    }
    // Plain SIP on the TLS port gets nothing back and never reaches Asterisk.
    let mut plain = std::net::TcpStream::connect(("127.0.0.1", e.tls)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    std::io::Write::write_all(&mut plain, &options("1001")).unwrap();
    let mut buf = [0u8; 256];
    let n = std::io::Read::read(&mut plain, &mut buf).unwrap_or(0);
    assert!(!buf[..n].starts_with(b"SIP/2.0"), "answered plain SIP");
    assert!(e.peer.requests("OPTIONS").is_empty());
}

// ---- regressions from the security review --------------------------------------------------

#[test]
fn an_unauthenticated_register_cannot_take_over_a_gone_phones_calls() {
    let e = Edge::start("");
    let mut victim = e.client();
    assert_eq!(
        e.register(&mut victim, "1001", "pw1001").status(),
        Some(200)
    );
    drop(victim);
    // Same Contact (base_headers uses client.invalid), no credentials: Asterisk says 401.
    let mut attacker = e.client();
    attacker.send(&request(
        "REGISTER sip:pbx.test SIP/2.0",
        &base_headers("REGISTER", "1001", "1001", "TLS", &rnd(), 1),
        "",
    ));
    assert_eq!(
        attacker.final_response(T).and_then(|r| r.status()),
        Some(401)
    );
    let answer = e
        .peer
        .control(serde_json::json!({"cmd": "invite", "user": "1001", "sdp": "sdes", "timeout": 3}));
    assert!(
        attacker.recv(Duration::from_secs(2)).is_none(),
        "the attacker got the victim's call"
    );
    assert_eq!(answer["code"], 480, "{answer}");
}

#[test]
fn connections_per_address_are_capped_and_unaccepted_ones_do_not_linger() {
    let e = Edge::start("max_connections_per_ip = 3\nauth_timeout = \"2s\"");
    let mut held: Vec<SipTls> = (0..3).map(|_| e.client()).collect();
    assert!(
        SipTls::try_connect(e.tls, &e.env.cert())
            .map(|mut c| c.closed_within(Duration::from_secs(2)))
            .unwrap_or(true),
        "a fourth connection from one address got in"
    );
    // Chatty but never accepted by Asterisk (OPTIONS only): closed after auth_timeout.
    let start = Instant::now();
    held[0].send(&options("1001"));
    assert_eq!(
        held[0].final_response(T).and_then(|r| r.status()),
        Some(200)
    );
    assert!(held[0].closed_within(Duration::from_secs(5)));
    assert!(start.elapsed() >= Duration::from_millis(1500));
    // A registered phone is kept.
    let mut phone = e.client();
    assert_eq!(e.register(&mut phone, "1001", "pw1001").status(), Some(200));
    assert!(
        !phone.closed_within(Duration::from_secs(3)),
        "a registered phone was cut off"
    );
    drop(held);
}

#[test]
fn changing_the_extension_closes_the_websocket_and_stale_tickets_die() {
    let e = Edge::start("");
    let token = e.web_user("alice", "1001");
    let tk = e.ticket(&token)["ticket"].as_str().unwrap().to_string();
    let mut w = ws(&e, &tk, Some(ORIGIN)).expect("ws");
    e.env.ok(&["user", "set-extension", "alice", "1009"], b"");
    assert!(
        w.closed_within(Duration::from_secs(12)),
        "the WebSocket kept the old extension"
    );
    // A ticket minted before the session was revoked opens nothing.
    let tk = e.ticket(&token)["ticket"].as_str().unwrap().to_string();
    e.env.ok(&["session", "revoke", "--user", "alice"], b"");
    if let Ok(mut w) = ws(&e, &tk, Some(ORIGIN)) {
        assert!(
            w.closed_within(Duration::from_secs(2)),
            "a revoked session's ticket still works"
        );
    }
    assert!(e.peer.received().is_empty());
}

#[test]
fn asserted_identities_from_clients_never_reach_asterisk() {
    let e = Edge::start("");
    let mut c = e.client();
    let mut lines = base_headers("OPTIONS", "1001", "1001", "TLS", &rnd(), 1);
    for h in [
        "P-Asserted-Identity: <sip:1002@pbx.test>",
        "Remote-Party-ID: <sip:1002@pbx.test>;party=calling",
        "P-Preferred-Identity: <sip:1002@pbx.test>",
        "X-PBXGuard-Identity: 1002",
        "X-PBXGuard-Anything: 1",
    ] {
        lines.push(h.to_string());
    }
    c.send(&request("OPTIONS sip:pbx.test SIP/2.0", &lines, ""));
    assert_eq!(c.final_response(T).and_then(|r| r.status()), Some(200));
    let seen = &e.peer.requests("OPTIONS")[0];
    for h in [
        "P-Asserted-Identity",
        "Remote-Party-ID",
        "P-Preferred-Identity",
    ] {
        assert!(
            seen.header(h).is_none(),
            "{h} reached Asterisk: {}",
            seen.raw
        );
    }
    assert!(
        !seen.raw.to_ascii_lowercase().contains("x-pbxguard"),
        "{}",
        seen.raw
    );
}

#[test]
fn the_ack_for_our_own_refusal_stops_at_the_edge() {
    let e = Edge::start("");
    let mut c = e.client();
    let offer = invite("1001", "1002", "TLS", &sdp_plain());
    c.send(&offer);
    let r = c.final_response(T).expect("488");
    assert_eq!(r.status(), Some(488));
    let mut lines = vec![
        format!("Via: {}", r.header("Via").unwrap()),
        "Max-Forwards: 70".to_string(),
    ];
    for h in ["From", "To", "Call-ID"] {
        lines.push(format!("{h}: {}", r.header(h).unwrap()));
    }
    lines.push("CSeq: 1 ACK".into());
    c.send(&request("ACK sip:1002@pbx.test SIP/2.0", &lines, ""));
    c.send(&options("1001"));
    assert_eq!(c.final_response(T).and_then(|r| r.status()), Some(200));
    assert!(
        e.peer.requests("ACK").is_empty(),
        "our 488's ACK reached Asterisk"
    );
}

/// The To tag of a message, if any.
fn to_tag(m: &SipMsg) -> Option<String> {
    m.header("To")
        .and_then(|t| t.split(";tag=").nth(1))
        .map(|t| t.split(';').next().unwrap_or(t).to_string())
}

#[test]
fn a_browsers_challenged_call_is_renumbered_and_ended_when_its_socket_closes() {
    // Asterisk (the stand-in) challenges every request, INVITEs included; one failed
    // authentication would ban the address.
    let e = Edge::start_with_peer("ban_threshold = 1", &["--authenticate"]);
    let token = e.web_user("alice", "1001");
    let tk = e.ticket(&token)["ticket"].as_str().unwrap().to_string();
    let mut w = ws(&e, &tk, Some(ORIGIN)).expect("ws");
    // The vault holds a password Asterisk refuses: the edge tries once, then the browser gets
    // 403 saying so; its address is not counted towards a ban (it guessed nothing).
    e.env.set_sip_credential("1001", "not-what-asterisk-has");
    for attempt in 1..=2 {
        w.send(std::str::from_utf8(&invite("1001", "1002", "WSS", &sdp_dtls())).unwrap());
        let refused = w.final_response(T).expect("an answer");
        assert_eq!(refused.status(), Some(403), "{refused:?}");
        assert!(
            refused
                .header("Warning")
                .is_some_and(|v| v.contains("refused the extension's SIP credential")),
            "{refused:?}"
        );
        assert_eq!(e.peer.requests("INVITE").len(), 2 * attempt);
    }
    let bans: serde_json::Value =
        serde_json::from_slice(&e.env.ok(&["sip", "ban", "list", "--json"], b"")).unwrap();
    assert_eq!(bans, serde_json::json!([]));

    e.env.set_sip_credential("1001", "pw1001");
    let call_id = rnd();
    let mut lines = base_headers("INVITE", "1001", "1002", "WSS", &call_id, 7);
    lines.push("Content-Type: application/sdp".into());
    w.send(
        std::str::from_utf8(&request(
            "INVITE sip:1002@pbx.test SIP/2.0",
            &lines,
            &sdp_dtls(),
        ))
        .unwrap(),
    );
    let ok = w.final_response(T).expect("an answer");
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    // The browser's own number, although Asterisk saw 7 challenged and 8 answered.
    assert_eq!(ok.header("CSeq"), Some("7 INVITE"), "{ok:?}");
    let seen: Vec<SipMsg> = e
        .peer
        .requests("INVITE")
        .into_iter()
        .filter(|m| m.header("Call-ID") == Some(call_id.as_str()))
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].header("CSeq"), Some("7 INVITE"));
    assert!(seen[0].header("Authorization").is_none());
    assert_eq!(seen[1].header("CSeq"), Some("8 INVITE"));
    assert!(seen[1]
        .header("Authorization")
        .is_some_and(|a| a.contains("username=\"1001\"")));
    // The edge ACKed the challenge itself: Asterisk got an ACK for CSeq 7.
    let acks = e.peer.wait_requests("ACK", 1, T);
    assert!(
        acks.iter()
            .any(|a| a.header("CSeq") == Some("7 ACK")
                && a.header("Call-ID") == Some(call_id.as_str())),
        "{acks:?}"
    );

    // The browser's own in-dialog request (an INFO, as for DTMF) is shifted by the call's
    // offset, and its answer comes back with the browser's number.
    let from = seen[0].header("From").unwrap().to_string();
    let to = ok.header("To").unwrap().to_string();
    let in_dialog = |method: &str, cseq: u32| {
        let lines = vec![
            format!("Via: SIP/2.0/WSS client.invalid;branch=z9hG4bK{}", rnd()),
            "Max-Forwards: 70".to_string(),
            format!("From: {from}"),
            format!("To: {to}"),
            format!("Call-ID: {call_id}"),
            format!("CSeq: {cseq} {method}"),
        ];
        request(&format!("{method} sip:1002@pbx.test SIP/2.0"), &lines, "")
    };
    w.send(std::str::from_utf8(&in_dialog("INFO", 8)).unwrap());
    let info_ok = w.final_response(T).expect("an answer to INFO");
    assert_eq!(info_ok.header("CSeq"), Some("8 INFO"), "{info_ok:?}");
    let infos = e.peer.wait_requests("INFO", 1, T);
    assert_eq!(infos[0].header("CSeq"), Some("9 INFO"), "{:?}", infos[0]);

    // The tab closes without a BYE: the edge sends one in the browser's name, numbered past
    // everything the browser used in the call as Asterisk saw it.
    drop(w);
    let byes = e.peer.wait_requests("BYE", 1, T);
    let bye = byes
        .iter()
        .find(|b| b.header("Call-ID") == Some(call_id.as_str()))
        .unwrap_or_else(|| panic!("no BYE for the call: {byes:?}"));
    let bye_cseq: u32 = bye
        .header("CSeq")
        .and_then(|c| c.strip_suffix(" BYE"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(bye_cseq > 9, "{bye:?}");
    assert_eq!(to_tag(bye), to_tag(&ok), "{bye:?}");
    assert!(bye
        .header("From")
        .is_some_and(|f| f.contains("sip:1001@pbx.test")));
}

#[test]
fn a_browsers_cancel_and_ack_follow_the_re_sent_invite() {
    // Asterisk (the stand-in) challenges, then lets a call to `slow` ring until cancelled.
    let e = Edge::start_with_peer("", &["--authenticate"]);
    let token = e.web_user("alice", "1001");
    e.env.set_sip_credential("1001", "pw1001");
    let tk = e.ticket(&token)["ticket"].as_str().unwrap().to_string();
    let mut w = ws(&e, &tk, Some(ORIGIN)).expect("ws");
    let call_id = rnd();
    let mut lines = base_headers("INVITE", "1001", "slow", "WSS", &call_id, 20);
    lines.push("Content-Type: application/sdp".into());
    let invite = request("INVITE sip:slow@pbx.test SIP/2.0", &lines, &sdp_dtls());
    w.send(std::str::from_utf8(&invite).unwrap());
    let ringing = loop {
        let m = w.recv(T).expect("a provisional answer");
        if m.status().is_some_and(|s| s > 100) {
            break m;
        }
    };
    assert_eq!(ringing.status(), Some(180), "{ringing:?}");
    assert_eq!(ringing.header("CSeq"), Some("20 INVITE"));
    // The browser's CANCEL: same branch and number as its INVITE; Asterisk must get it on the
    // re-sent INVITE's branch with that copy's number (21).
    let cancel_lines: Vec<String> = lines
        .iter()
        .filter(|l| !l.starts_with("Content-Type") && !l.starts_with("Contact"))
        .map(|l| l.replace("CSeq: 20 INVITE", "CSeq: 20 CANCEL"))
        .collect();
    w.send(
        std::str::from_utf8(&request(
            "CANCEL sip:slow@pbx.test SIP/2.0",
            &cancel_lines,
            "",
        ))
        .unwrap(),
    );
    let mut got = Vec::new();
    while got.len() < 2 {
        let m = w.recv(T).expect("answers to CANCEL and INVITE");
        got.push((m.status(), m.header("CSeq").map(str::to_owned)));
    }
    assert!(
        got.contains(&(Some(200), Some("20 CANCEL".into()))),
        "{got:?}"
    );
    assert!(
        got.contains(&(Some(487), Some("20 INVITE".into()))),
        "{got:?}"
    );
    let invites: Vec<SipMsg> = e
        .peer
        .requests("INVITE")
        .into_iter()
        .filter(|m| m.header("Call-ID") == Some(call_id.as_str()))
        .collect();
    assert_eq!(invites.len(), 2);
    let branch = |m: &SipMsg| {
        m.all("Via")[0]
            .split(";branch=")
            .nth(1)
            .map(|b| b.split(';').next().unwrap_or(b).to_string())
    };
    let cancels = e.peer.wait_requests("CANCEL", 1, T);
    assert_eq!(
        cancels[0].header("CSeq"),
        Some("21 CANCEL"),
        "{:?}",
        cancels[0]
    );
    assert_eq!(branch(&cancels[0]), branch(&invites[1]));
    // The browser's ACK for the 487 goes to that transaction too.
    let ack_lines: Vec<String> = cancel_lines
        .iter()
        .map(|l| l.replace("CSeq: 20 CANCEL", "CSeq: 20 ACK"))
        .collect();
    w.send(std::str::from_utf8(&request("ACK sip:slow@pbx.test SIP/2.0", &ack_lines, "")).unwrap());
    let end = Instant::now() + T;
    let ack = loop {
        let acks: Vec<SipMsg> = e
            .peer
            .requests("ACK")
            .into_iter()
            .filter(|m| m.header("CSeq") == Some("21 ACK"))
            .collect();
        if let Some(a) = acks.into_iter().next() {
            break a;
        }
        assert!(Instant::now() < end, "{:?}", e.peer.received());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(branch(&ack), branch(&invites[1]));
}

#[test]
fn the_edge_ends_the_calls_of_a_tls_connection_it_closes() {
    let e = Edge::start("");
    let Some(net) = common::netns::PhoneNet::create() else {
        return;
    };
    let src = std::net::IpAddr::V4(net.host_ip);
    let mut c = e.client_from(src);
    c.send(&invite("1001", "1002", "TLS", &sdp_sdes(&sdes_key())));
    let ok = c.final_response(T).expect("an answer");
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    let call_id = ok.header("Call-ID").unwrap().to_string();
    // A scanner from the same address: banned, and every connection from it is closed.
    let mut s = e.client_from(src);
    let mut l = base_headers("OPTIONS", "100", "100", "TLS", &rnd(), 1);
    l.retain(|h| !h.starts_with("User-Agent"));
    l.push("User-Agent: friendly-scanner".into());
    s.try_send(&request("OPTIONS sip:100@pbx.test SIP/2.0", &l, ""));
    assert!(c.closed_within(T), "the phone's connection stays open");
    let byes = e.peer.wait_requests("BYE", 1, T);
    assert_eq!(byes[0].header("Call-ID"), Some(call_id.as_str()));
    assert!(byes[0]
        .header("CSeq")
        .is_some_and(|c| c.ends_with(" BYE") && c != "1 BYE"));
    assert_eq!(to_tag(&byes[0]), to_tag(&ok));
    // A phone that drops its own connection may come back to end its calls: the edge leaves
    // them alone.
    e.env.ok(&["sip", "ban", "rm", "--all"], b"");
    std::thread::sleep(Duration::from_millis(2500));
    let mut c = e.client();
    c.send(&invite("1001", "1002", "TLS", &sdp_sdes(&sdes_key())));
    let ok = c.final_response(T).expect("an answer");
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    drop(c);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        e.peer.requests("BYE").len(),
        1,
        "{:?}",
        e.peer.requests("BYE")
    );
}

#[test]
fn a_tls_client_cannot_claim_an_extension_bound_to_a_web_user() {
    let e = Edge::start("");
    let _ = e.web_user("alice", "1001");
    let mut c = e.client();
    // The edge re-reads the bound extensions every 2 s.
    let end = Instant::now() + T;
    loop {
        let r = e.register(&mut c, "1001", "pw1001");
        if r.status() == Some(403) {
            assert!(
                r.header("Warning")
                    .is_some_and(|w| w.contains("belongs to a browser softphone")),
                "{r:?}"
            );
            break;
        }
        assert!(Instant::now() < end, "a TLS client registered 1001: {r:?}");
        std::thread::sleep(Duration::from_millis(300));
        c = e.client();
    }
    let before = e.peer.received().len();
    let with_auth = |auth: &str| {
        let mut l = base_headers("OPTIONS", "1002", "1002", "TLS", &rnd(), 1);
        l.push(format!("Authorization: {auth}"));
        request("OPTIONS sip:pbx.test SIP/2.0", &l, "")
    };
    // Credentials naming the bound extension, behind another From.
    c.send(&with_auth(
        "Digest username=\"1001\", realm=\"asterisk\", nonce=\"n\", uri=\"sip:pbx.test\", response=\"00\"",
    ));
    assert_eq!(c.final_response(T).and_then(|r| r.status()), Some(403));
    // Credentials pbxguard cannot read could name anyone.
    c.send(&with_auth("Digest username=\"1001"));
    assert_eq!(c.final_response(T).and_then(|r| r.status()), Some(403));
    // An INVITE from it, outside any dialog.
    c.send(&invite("1001", "1002", "TLS", &sdp_sdes(&sdes_key())));
    assert_eq!(c.final_response(T).and_then(|r| r.status()), Some(403));
    assert_eq!(e.peer.received().len(), before, "{:?}", e.peer.received());
    // Other extensions are untouched.
    c.send(&options("1002"));
    assert_eq!(c.final_response(T).and_then(|r| r.status()), Some(200));
}

// ---- the toll-fraud guard -------------------------------------------------------------------

/// `[sip]` keys without the rate limits (these tests place many calls quickly), then a
/// `[dialing]` section for the stand-in's named users with `limits`.
fn dialing(limits: &str) -> String {
    format!(
        "rate_per_ip = 0\nrate_per_user = 0\n\n[dialing]\n\
         extra_dial_characters = \"abcdefghijklmnopqrstuvwxyz\"\n{limits}\n"
    )
}

/// A phone's INVITE from `from` to Request-URI user `to` (written as given: escapes, `&` and
/// all) over `c`; its header lines, for what follows in that call.
fn dial(c: &mut SipTls, from: &str, to: &str) -> Vec<String> {
    let mut lines = base_headers("INVITE", from, to, "TLS", &rnd(), 1);
    lines.push("Content-Type: application/sdp".into());
    c.send(&request(
        &format!("INVITE sip:{to}@pbx.test SIP/2.0"),
        &lines,
        &sdp_sdes(&sdes_key()),
    ));
    lines
}

/// The value of header `name` among a request's `lines`.
fn line<'a>(lines: &'a [String], name: &str) -> &'a str {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_default()
}

/// The first answer past `100 Trying` to the call whose INVITE was `lines`.
fn answer_of(c: &mut SipTls, lines: &[String]) -> SipMsg {
    let call_id = line(lines, "Call-ID");
    let end = Instant::now() + T;
    loop {
        let m = c
            .response(end.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|| panic!("no answer to the INVITE of {call_id}"));
        if m.header("Call-ID") == Some(call_id) && m.status().is_some_and(|s| s > 100) {
            return m;
        }
    }
}

/// The request `method` within the call of `lines` (`to`: the To value with its tag,
/// `via`: the Via line; an ACK of a failure reuses the INVITE's).
fn in_call(method: &str, uri: &str, lines: &[String], to: &str, via: &str, cseq: u32) -> Vec<u8> {
    let head = vec![
        via.to_string(),
        "Max-Forwards: 70".into(),
        format!("From: {}", line(lines, "From")),
        format!("To: {to}"),
        format!("Call-ID: {}", line(lines, "Call-ID")),
        format!("CSeq: {cseq} {method}"),
    ];
    request(&format!("{method} {uri} SIP/2.0"), &head, "")
}

/// The hop-by-hop ACK of a failure answer `resp` to the INVITE of `lines` (to user `to`).
fn ack_failure(c: &mut SipTls, to: &str, lines: &[String], resp: &SipMsg) {
    let uri = format!("sip:{to}@pbx.test");
    let cseq = line(lines, "CSeq")
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    c.send(&in_call(
        "ACK",
        &uri,
        lines,
        resp.header("To").unwrap_or_default(),
        &lines[0],
        cseq,
    ));
}

/// Cancels the ringing call of `lines` (to user `to`): 200 for the CANCEL, 487 for the
/// INVITE, which the phone ACKs.
fn cancel(c: &mut SipTls, to: &str, lines: &[String]) {
    let uri = format!("sip:{to}@pbx.test");
    let to_value = format!("<{uri}>");
    c.send(&in_call("CANCEL", &uri, lines, &to_value, &lines[0], 1));
    let mut got = Vec::new();
    let end = Instant::now() + T;
    while got.len() < 2 {
        let m = c
            .final_response(end.saturating_duration_since(Instant::now()))
            .expect("answers to the CANCEL and the INVITE");
        if m.header("Call-ID") != Some(line(lines, "Call-ID")) {
            continue;
        }
        if m.status() == Some(487) {
            ack_failure(c, to, lines, &m);
        }
        got.push(m.start.clone());
    }
    got.sort();
    assert_eq!(got, ["SIP/2.0 200 OK", "SIP/2.0 487 Request Terminated"]);
}

/// An answered call's ACK and, later, its BYE (answered 200).
fn ack_and_bye(c: &mut SipTls, lines: &[String], ok: &SipMsg) {
    let contact = ok.header("Contact").unwrap_or_default();
    let target = contact.trim_start_matches('<').split('>').next().unwrap();
    let to = ok.header("To").unwrap_or_default();
    let via = || {
        format!(
            "Via: SIP/2.0/TLS client.invalid;branch=z9hG4bK{};rport",
            rnd()
        )
    };
    c.send(&in_call("ACK", target, lines, to, &via(), 1));
    c.send(&in_call("BYE", target, lines, to, &via(), 2));
    // (A copy of the INVITE's 200 may still be on its way.)
    let bye = loop {
        let m = c.final_response(T).expect("an answer to the BYE");
        if m.header("CSeq") == Some("2 BYE") {
            break m;
        }
    };
    assert_eq!(bye.status(), Some(200), "{bye:?}");
}

/// `code` with a `Warning` naming `rule` and nothing else an attacker could tune to.
fn assert_refused(m: &SipMsg, code: u16, rule: &str) {
    assert_eq!(m.status(), Some(code), "{m:?}");
    assert_eq!(
        m.header("Warning"),
        Some(format!("399 pbxguard \"{rule}\"").as_str()),
        "{m:?}"
    );
}

/// `Retry-After` of a limit's refusal: whole seconds within the minute.
fn retry_after(m: &SipMsg) -> u64 {
    let secs = m
        .header("Retry-After")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After: {m:?}"));
    assert!((1..=60).contains(&secs), "{m:?}");
    secs
}

/// INVITEs the stand-in Asterisk received for the call of `lines`.
fn invites_seen(e: &Edge, lines: &[String]) -> usize {
    let call_id = line(lines, "Call-ID");
    e.peer
        .requests("INVITE")
        .iter()
        .filter(|m| m.header("Call-ID") == Some(call_id))
        .count()
}

/// The audit rows of refused calls, once `n` are there.
fn refusal_rows(e: &Edge, n: usize) -> Vec<serde_json::Value> {
    let end = Instant::now() + T;
    loop {
        let out = e.env.ok(
            &["audit", "log", "--action", "dialing.refused", "--json"],
            b"",
        );
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out).expect("JSON rows");
        if rows.len() >= n || Instant::now() > end {
            return rows;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_denied_or_injected_destination_gets_403_and_never_reaches_asterisk() {
    let e = Edge::start(&dialing(""));
    let mut c = e.client();
    let cases = [
        // Premium and satellite ranges of the default list, in every international form.
        ("0088216123456", "deny_prefix"),
        ("+8816123456", "deny_prefix"),
        ("19005551234", "deny_prefix"),
        // Dialplan injection into `Dial(PJSIP/${EXTEN})`: escaped as pjsip decodes it, raw
        // where the URI grammar admits it, and the other argument splitters.
        ("1001%26PJSIP%2Ftrunk%2F0088216123456", "dial_characters"),
        ("1001&PJSIP/trunk/0088216123456", "dial_characters"),
        ("1001,30,tT", "dial_characters"),
        ("1001%7C2", "dial_characters"),
        ("%24%7BSHELL(id)%7D", "dial_characters"),
        ("12%2034", "dial_characters"),
    ];
    for (to, rule) in cases {
        let lines = dial(&mut c, "1001", to);
        let refused = answer_of(&mut c, &lines);
        assert_refused(&refused, 403, rule);
        assert!(refused.header("Retry-After").is_none(), "{refused:?}");
        ack_failure(&mut c, to, &lines, &refused);
    }
    // Asterisk heard nothing of them, not even the ACKs of the refusals.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        e.peer.requests("INVITE").is_empty(),
        "{:?}",
        e.peer.received()
    );
    assert!(e.peer.requests("ACK").is_empty(), "{:?}", e.peer.received());
    // The same connection goes on calling; extensions that overlap a range are no premium
    // number (four digits are internal).
    for to in ["1002", "8816"] {
        let lines = dial(&mut c, "1001", to);
        let answer = c.final_response(T).expect("an answer");
        if to == "1002" {
            assert_eq!(answer.status(), Some(200), "{answer:?}");
            ack_and_bye(&mut c, &lines, &answer);
        } else {
            // The stand-in knows no 8816: its own 404, not the edge's refusal.
            assert_eq!(answer.status(), Some(404), "{answer:?}");
            assert!(answer.header("Warning").is_none(), "{answer:?}");
            ack_failure(&mut c, to, &lines, &answer);
        }
        assert_eq!(invites_seen(&e, &lines), 1);
    }
    // Each refusal reported: the edge's message counter, the shared one by rule, and an
    // audit row naming the extension, the destination as Asterisk would have read it and
    // the address.
    let metrics = e.env.request("GET", "/metrics", &[], None).body;
    for want in [
        "pbxguard_sip_client_messages_total{result=\"dial_refused\"} 9",
        "pbxguard_dial_refusals_total{door=\"sip\",rule=\"deny_prefix\"} 3",
        "pbxguard_dial_refusals_total{door=\"sip\",rule=\"dial_characters\"} 6",
    ] {
        assert!(metrics.contains(want), "{want}:\n{metrics}");
    }
    let rows = refusal_rows(&e, cases.len());
    assert_eq!(rows.len(), cases.len(), "{rows:?}");
    assert!(rows
        .iter()
        .all(|r| r["actor"] == "sip:1001" && r["detail"] == "door=sip address=127.0.0.1"));
    let targets: Vec<&str> = rows.iter().filter_map(|r| r["target"].as_str()).collect();
    assert!(
        targets.contains(&"1001&PJSIP/trunk/0088216123456"),
        "{targets:?}"
    );
    assert!(targets.contains(&"${SHELL(id)}"), "{targets:?}");
    assert!(rows
        .iter()
        .any(|r| r["action"] == "dialing.refused.deny_prefix" && r["target"] == "+8816123456"));
}

#[test]
fn limits_count_the_calls_an_extension_places_and_every_ended_call_frees_its_slot() {
    let e = Edge::start(&dialing(
        "max_concurrent_calls = 2\nmax_call_attempts_per_minute = 0",
    ));
    let mut a = e.client();
    assert_eq!(e.register(&mut a, "1001", "pw1001").status(), Some(200));
    // A hundred calls that end every way but answered leave no slot behind.
    for n in 0..100 {
        let to = ["busy", "4444", "slow", "0088216123456"][n % 4];
        let lines = dial(&mut a, "1001", to);
        let answer = answer_of(&mut a, &lines);
        match to {
            "slow" => {
                assert_eq!(answer.status(), Some(180), "{answer:?}");
                cancel(&mut a, to, &lines);
            }
            _ => {
                let want = [486, 404, 0, 403][n % 4];
                assert_eq!(answer.status(), Some(want), "{to}: {answer:?}");
                ack_failure(&mut a, to, &lines, &answer);
            }
        }
    }
    // Two calls ring; a third from this connection is refused, even with a From it did not
    // register (its calls count against the extension Asterisk accepted here).
    let first = dial(&mut a, "1001", "slow");
    assert_eq!(answer_of(&mut a, &first).status(), Some(180));
    let second = dial(&mut a, "1001", "slow");
    assert_eq!(answer_of(&mut a, &second).status(), Some(180));
    for from in ["1001", "1002"] {
        let third = dial(&mut a, from, "slow");
        let busy = answer_of(&mut a, &third);
        assert_refused(&busy, 486, "max_concurrent_calls");
        assert_eq!(retry_after(&busy), 30);
        ack_failure(&mut a, "slow", &third, &busy);
        assert_eq!(invites_seen(&e, &third), 0);
    }
    // Another phone calling as 1002 has its own count.
    let mut b = e.client();
    let other = dial(&mut b, "1002", "slow");
    assert_eq!(answer_of(&mut b, &other).status(), Some(180));
    cancel(&mut b, "slow", &other);
    // The first call cancelled: an answered call takes its place and still counts.
    cancel(&mut a, "slow", &first);
    let answered = dial(&mut a, "1001", "1002");
    let mut ok = answer_of(&mut a, &answered);
    while ok.status() == Some(180) {
        ok = answer_of(&mut a, &answered);
    }
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    let third = dial(&mut a, "1001", "slow");
    assert_refused(&answer_of(&mut a, &third), 486, "max_concurrent_calls");
    // Its BYE frees it.
    ack_and_bye(&mut a, &answered, &ok);
    let again = dial(&mut a, "1001", "slow");
    assert_eq!(answer_of(&mut a, &again).status(), Some(180));
    let metrics = e.env.request("GET", "/metrics", &[], None).body;
    assert!(
        metrics
            .contains("pbxguard_dial_refusals_total{door=\"sip\",rule=\"max_concurrent_calls\"} 3"),
        "{metrics}"
    );
    let rows = refusal_rows(&e, 28);
    assert!(
        rows.iter()
            .filter(|r| r["action"] == "dialing.refused.max_concurrent_calls")
            .all(|r| r["actor"] == "sip:1001"),
        "{rows:?}"
    );
}

#[test]
fn a_challenged_call_is_one_attempt_and_the_next_one_over_the_minute_gets_503() {
    // The stand-in challenges every INVITE, as pjsip does; one call and one attempt a minute.
    let e = Edge::start_with_peer(
        &dialing("max_concurrent_calls = 1\nmax_call_attempts_per_minute = 1"),
        &["--authenticate"],
    );
    let mut c = e.client();
    let lines = dial(&mut c, "1001", "1002");
    let challenge = answer_of(&mut c, &lines);
    assert_eq!(challenge.status(), Some(401), "{challenge:?}");
    ack_failure(&mut c, "1002", &lines, &challenge);
    // The same INVITE with credentials: same Call-ID and tag, the next CSeq. Were the
    // challenge the end of a call, this would be a second attempt within the minute.
    let uri = "sip:1002@pbx.test";
    let mut again: Vec<String> = lines
        .iter()
        .map(|l| {
            if l.starts_with("Via: ") {
                format!(
                    "Via: SIP/2.0/TLS client.invalid;branch=z9hG4bK{};rport",
                    rnd()
                )
            } else if l.starts_with("CSeq: ") {
                "CSeq: 2 INVITE".to_string()
            } else {
                l.clone()
            }
        })
        .collect();
    let ch = challenge.header("WWW-Authenticate").expect("a challenge");
    again.push(format!(
        "Authorization: {}",
        digest(ch, "1001", "pw1001", "INVITE", uri)
    ));
    c.send(&request(
        &format!("INVITE {uri} SIP/2.0"),
        &again,
        &sdp_sdes(&sdes_key()),
    ));
    let ok = c.final_response(T).expect("an answer");
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    ack_and_bye(&mut c, &lines, &ok);
    // The next call within the minute: 503, told when to come back; Asterisk never sees it.
    let next = dial(&mut c, "1001", "1002");
    let refused = answer_of(&mut c, &next);
    assert_refused(&refused, 503, "max_call_attempts_per_minute");
    retry_after(&refused);
    ack_failure(&mut c, "1002", &next, &refused);
    assert_eq!(invites_seen(&e, &next), 0);

    // A browser, whose challenges the edge answers itself: its call is one attempt too.
    let token = e.web_user("bob", "1002");
    e.env.set_sip_credential("1002", "pw1002");
    let tk = e.ticket(&token)["ticket"].as_str().unwrap().to_string();
    let mut w = ws(&e, &tk, Some(ORIGIN)).expect("ws");
    w.send(std::str::from_utf8(&invite("1002", "1001", "WSS", &sdp_dtls())).unwrap());
    let ok = w.final_response(T).expect("an answer");
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    w.send(std::str::from_utf8(&invite("1002", "1001", "WSS", &sdp_dtls())).unwrap());
    let busy = w.final_response(T).expect("an answer");
    assert_eq!(busy.status(), Some(486), "{busy:?}");
    // The WebSocket closes: the edge ends its call, and the slot with it (the minute's one
    // attempt is still spent).
    drop(w);
    let byes = e.peer.wait_requests("BYE", 2, T);
    assert_eq!(byes.len(), 2);
    let tk = e.ticket(&token)["ticket"].as_str().unwrap().to_string();
    let mut w = ws(&e, &tk, Some(ORIGIN)).expect("ws");
    w.send(std::str::from_utf8(&invite("1002", "1001", "WSS", &sdp_dtls())).unwrap());
    let later = w.final_response(T).expect("an answer");
    assert_eq!(later.status(), Some(503), "{later:?}");
    assert!(
        later
            .header("Warning")
            .is_some_and(|v| v.ends_with("\"max_call_attempts_per_minute\"")),
        "{later:?}"
    );
}

#[test]
fn a_blind_transfer_to_a_denied_range_gets_403_and_the_call_stays_up() {
    let e = Edge::start(&dialing(""));
    let mut c = e.client();
    let lines = dial(&mut c, "1001", "1002");
    let ok = c.final_response(T).expect("an answer");
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    let target = ok
        .header("Contact")
        .and_then(|v| v.trim_start_matches('<').split('>').next())
        .unwrap()
        .to_string();
    let to = ok.header("To").unwrap().to_string();
    let via = || {
        format!(
            "Via: SIP/2.0/TLS client.invalid;branch=z9hG4bK{};rport",
            rnd()
        )
    };
    c.send(&in_call("ACK", &target, &lines, &to, &via(), 1));
    // Asterisk would dial a REFER's target from the dialplan (a blind transfer): it is checked
    // as a dialled number, escapes decoded; one pbxguard cannot read is refused as well.
    let mut cseq = 2;
    for (refer_to, rule) in [
        ("<sip:0088216123456@pbx.test>", "deny_prefix"),
        (
            "<sip:1001%26PJSIP%2Ftrunk%2F0088216123456@pbx.test>",
            "dial_characters",
        ),
        ("<tel:+8816123456>", "dial_characters"),
    ] {
        let mut refer =
            String::from_utf8(in_call("REFER", &target, &lines, &to, &via(), cseq)).unwrap();
        refer = refer.replacen(
            "Content-Length: 0",
            &format!("Refer-To: {refer_to}\r\nContent-Length: 0"),
            1,
        );
        c.send(refer.as_bytes());
        let refused = c.final_response(T).expect("an answer to the REFER");
        assert_refused(&refused, 403, rule);
        assert_eq!(
            refused.header("CSeq"),
            Some(format!("{cseq} REFER").as_str())
        );
        cseq += 1;
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        e.peer.requests("REFER").is_empty(),
        "{:?}",
        e.peer.received()
    );
    // A transfer to an extension goes through; the call is still there to hang up.
    let mut refer =
        String::from_utf8(in_call("REFER", &target, &lines, &to, &via(), cseq)).unwrap();
    refer = refer.replacen(
        "Content-Length: 0",
        "Refer-To: <sip:1003@pbx.test>\r\nContent-Length: 0",
        1,
    );
    c.send(refer.as_bytes());
    assert_eq!(e.peer.wait_requests("REFER", 1, T).len(), 1);
    let _ = c.final_response(T);
    c.send(&in_call("BYE", &target, &lines, &to, &via(), cseq + 1));
    let bye = loop {
        let m = c.final_response(T).expect("an answer to the BYE");
        if m.header("CSeq") == Some(format!("{} BYE", cseq + 1).as_str()) {
            break m;
        }
    };
    assert_eq!(bye.status(), Some(200), "{bye:?}");
    let rows = refusal_rows(&e, 3);
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(
        rows.iter().any(|r| r["target"] == "<tel:+8816123456>"),
        "{rows:?}"
    );
}

/// `lines` with a fresh Via branch and CSeq `cseq`: another INVITE of the same Call-ID and
/// From tag, which pjsip would take for a new dialog.
fn same_call_again(lines: &[String], cseq: u32) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            if l.starts_with("Via: ") {
                format!(
                    "Via: SIP/2.0/TLS client.invalid;branch=z9hG4bK{};rport",
                    rnd()
                )
            } else if l.starts_with("CSeq: ") {
                format!("CSeq: {cseq} INVITE")
            } else {
                l.clone()
            }
        })
        .collect()
}

#[test]
fn a_repeated_invite_or_a_fake_cancel_frees_no_slot_and_a_bye_answered_481_does() {
    let e = Edge::start(&dialing(
        "max_concurrent_calls = 1\nmax_call_attempts_per_minute = 0",
    ));
    let mut a = e.client();
    assert_eq!(e.register(&mut a, "1001", "pw1001").status(), Some(200));
    let first = dial(&mut a, "1001", "slow");
    assert_eq!(answer_of(&mut a, &first).status(), Some(180));
    // The same Call-ID and From tag with a new branch and CSeq, to a number that does not
    // exist: refused here (a second dialog at pjsip, counted nowhere), and its failure does
    // not end the ringing call's slot.
    let repeated = same_call_again(&first, 2);
    a.send(&request(
        "INVITE sip:4444@pbx.test SIP/2.0",
        &repeated,
        &sdp_sdes(&sdes_key()),
    ));
    let loop_detected = a.final_response(T).expect("an answer");
    assert_eq!(loop_detected.status(), Some(482), "{loop_detected:?}");
    assert_eq!(loop_detected.header("CSeq"), Some("2 INVITE"));
    ack_failure(&mut a, "4444", &repeated, &loop_detected);
    assert_eq!(invites_seen(&e, &first), 1, "{:?}", e.peer.received());
    // A CANCEL of the call with a branch Asterisk knows nothing of: 481, and the INVITE rings
    // on, still counted.
    let uri = "sip:slow@pbx.test";
    let fake = format!(
        "Via: SIP/2.0/TLS client.invalid;branch=z9hG4bK{};rport",
        rnd()
    );
    a.send(&in_call(
        "CANCEL",
        uri,
        &first,
        &format!("<{uri}>"),
        &fake,
        1,
    ));
    let unknown = a.final_response(T).expect("an answer to the CANCEL");
    assert_eq!(unknown.status(), Some(481), "{unknown:?}");
    let second = dial(&mut a, "1001", "slow");
    let busy = answer_of(&mut a, &second);
    assert_refused(&busy, 486, "max_concurrent_calls");
    ack_failure(&mut a, "slow", &second, &busy);
    // The real CANCEL frees it.
    cancel(&mut a, "slow", &first);
    let metrics = e.env.request("GET", "/metrics", &[], None).body;
    assert!(
        metrics.contains("pbxguard_sip_client_messages_total{result=\"repeated_invite\"} 1"),
        "{metrics}"
    );

    // An answered call whose dialog Asterisk no longer knows (after a restart; here the
    // stand-in, which keeps one dialog per Call-ID, forgets it when another phone's INVITE
    // reuses the Call-ID and fails): the phone's BYE gets 481, which ends the dialog (RFC 3261
    // §15.1.1), and the slot with it.
    let answered = dial(&mut a, "1001", "1002");
    let mut ok = answer_of(&mut a, &answered);
    while ok.status() == Some(180) {
        ok = answer_of(&mut a, &answered);
    }
    assert_eq!(ok.status(), Some(200), "{ok:?}");
    let target = ok
        .header("Contact")
        .and_then(|v| v.trim_start_matches('<').split('>').next())
        .unwrap()
        .to_string();
    let to = ok.header("To").unwrap().to_string();
    let via = || {
        format!(
            "Via: SIP/2.0/TLS client.invalid;branch=z9hG4bK{};rport",
            rnd()
        )
    };
    a.send(&in_call("ACK", &target, &answered, &to, &via(), 1));
    let mut b = e.client();
    let mut other = base_headers(
        "INVITE",
        "1003",
        "busy",
        "TLS",
        line(&answered, "Call-ID"),
        1,
    );
    other.push("Content-Type: application/sdp".into());
    b.send(&request(
        "INVITE sip:busy@pbx.test SIP/2.0",
        &other,
        &sdp_sdes(&sdes_key()),
    ));
    let gone = b.final_response(T).expect("an answer");
    assert_eq!(gone.status(), Some(486), "{gone:?}");
    ack_failure(&mut b, "busy", &other, &gone);
    // Still counted until the BYE.
    let third = dial(&mut a, "1001", "slow");
    let busy = answer_of(&mut a, &third);
    assert_refused(&busy, 486, "max_concurrent_calls");
    ack_failure(&mut a, "slow", &third, &busy);
    a.send(&in_call("BYE", &target, &answered, &to, &via(), 2));
    let bye = loop {
        let m = a.final_response(T).expect("an answer to the BYE");
        if m.header("CSeq") == Some("2 BYE") {
            break m;
        }
    };
    assert_eq!(bye.status(), Some(481), "{bye:?}");
    let next = dial(&mut a, "1001", "slow");
    assert_eq!(answer_of(&mut a, &next).status(), Some(180));
    cancel(&mut a, "slow", &next);
}
