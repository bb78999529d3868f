//! End to end, media side: SDES-SRTP keys negotiated *through* the SIP edge must still protect
//! real SRTP. The edge only checks the SDP (Asterisk does the media crypto), but it parses and
//! re-serialises every INVITE and 200 OK, so a key that lost a character, its padding or its
//! salt on the way would make the call's audio undecryptable without any signalling error.
//!
//! A raw SIP/TLS client offers its own key through the edge to the Asterisk stand-in
//! (`tests/peers/sip_peer.py`), which answers with a fresh key of its own. The keys are then
//! taken from where each side really got them: the client's from the 200 OK it received through
//! the edge, "Asterisk"'s from the INVITE as the peer logged it on arrival, and the peer's own
//! answer key from the 200 OK it logged on sending. `webrtc-srtp` contexts built from those keys
//! exchange RTP (version 2, PCMU, 20 ms frames) over loopback UDP sockets at the addresses the
//! two SDPs name, in both directions; contexts keyed with a different key, or with one salt bit
//! flipped, must reject the same packets.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use base64::Engine;
use common::sip::{base_headers, request, rnd, sdp_sdes, Edge, SipMsg, SipTls};
use webrtc_srtp::context::Context;
use webrtc_srtp::protection_profile::ProtectionProfile;

const T: Duration = Duration::from_secs(10);
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// RTP packets sent each way per call.
const PACKETS: usize = 6;
/// One 20 ms PCMU frame at 8 kHz.
const FRAME: usize = 160;
const RTP_HEADER: usize = 12;

/// An RFC 4568 suite, as named in `a=crypto` and in `webrtc-srtp`.
#[derive(Clone, Copy, Debug)]
struct Suite {
    sdp: &'static str,
    profile: ProtectionProfile,
}

const AES_CM_128_HMAC_SHA1_80: Suite = Suite {
    sdp: "AES_CM_128_HMAC_SHA1_80",
    profile: ProtectionProfile::Aes128CmHmacSha1_80,
};

/// The other suites that both the edge's default policy and `webrtc-srtp` know.
const OTHER_SUITES: [Suite; 5] = [
    Suite {
        sdp: "AES_CM_128_HMAC_SHA1_32",
        profile: ProtectionProfile::Aes128CmHmacSha1_32,
    },
    Suite {
        sdp: "AES_256_CM_HMAC_SHA1_80",
        profile: ProtectionProfile::Aes256CmHmacSha1_80,
    },
    Suite {
        sdp: "AES_256_CM_HMAC_SHA1_32",
        profile: ProtectionProfile::Aes256CmHmacSha1_32,
    },
    Suite {
        sdp: "AEAD_AES_128_GCM",
        profile: ProtectionProfile::AeadAes128Gcm,
    },
    Suite {
        sdp: "AEAD_AES_256_GCM",
        profile: ProtectionProfile::AeadAes256Gcm,
    },
];

impl Suite {
    fn key_salt_len(self) -> usize {
        self.profile.key_len() + self.profile.salt_len()
    }

    /// Bytes SRTP appends to each RTP packet (HMAC tag or GCM tag).
    fn overhead(self) -> usize {
        self.profile.rtp_auth_tag_len() + self.profile.aead_auth_tag_len()
    }

    /// A context keyed with `master` (key || salt, as in `inline:`).
    fn context(self, master: &[u8]) -> Context {
        assert_eq!(
            master.len(),
            self.key_salt_len(),
            "{}: key||salt length",
            self.sdp
        );
        let (key, salt) = master.split_at(self.profile.key_len());
        Context::new(key, salt, self.profile, None, None).expect("SRTP context")
    }
}

/// What one side's SDP says about its media: the `a=crypto` suite, the decoded key||salt, and
/// where it wants RTP sent.
#[derive(Debug)]
struct Media {
    suite: String,
    key: Vec<u8>,
    rtp: SocketAddr,
}

/// Reads the first audio stream's `a=crypto`, `c=` and port from an SDP body.
fn media(sdp: &str) -> Media {
    let lines: Vec<&str> = sdp.lines().map(str::trim_end).collect();
    let crypto = lines
        .iter()
        .find_map(|l| l.strip_prefix("a=crypto:"))
        .unwrap_or_else(|| panic!("no a=crypto in\n{sdp}"));
    let mut fields = crypto.split(' ');
    let (_tag, suite, params) = (
        fields.next().unwrap_or_default(),
        fields.next().unwrap_or_default(),
        fields.next().unwrap_or_default(),
    );
    let inline = params
        .strip_prefix("inline:")
        .unwrap_or_else(|| panic!("a=crypto without inline key: {crypto}"));
    let key_b64 = inline.split('|').next().unwrap_or_default();
    let key = B64
        .decode(key_b64)
        .unwrap_or_else(|e| panic!("a=crypto key {key_b64:?} is not base64 ({e})"));
    let host = lines
        .iter()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))
        .unwrap_or_else(|| panic!("no c= in\n{sdp}"));
    let port: u16 = lines
        .iter()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no audio port in\n{sdp}"));
    let rtp: SocketAddr = format!("{host}:{port}").parse().expect("media address");
    // Media in a test goes to this machine only.
    assert!(
        rtp.ip().is_loopback(),
        "SDP names a non-loopback media address: {rtp}"
    );
    Media {
        suite: suite.to_string(),
        key,
        rtp,
    }
}

/// A loopback UDP socket standing for one side's RTP port.
fn rtp_socket(port: u16) -> UdpSocket {
    let s = UdpSocket::bind(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("bind RTP port {port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    s
}

/// `PACKETS` plain RTP packets: V=2, no padding/extension/CSRC, PT 0 (PCMU), marker on the
/// first, consecutive sequence numbers from a random start, timestamps 160 apart, one SSRC;
/// random 160-byte payloads (every byte is a valid mu-law sample).
fn rtp_stream() -> Vec<Vec<u8>> {
    let ssrc: u32 = rand::random();
    let seq0: u16 = rand::random();
    let ts0: u32 = rand::random();
    (0..PACKETS)
        .map(|i| {
            let mut p = Vec::with_capacity(RTP_HEADER + FRAME);
            p.push(0x80);
            p.push(if i == 0 { 0x80 } else { 0x00 });
            p.extend_from_slice(&seq0.wrapping_add(i as u16).to_be_bytes());
            p.extend_from_slice(&ts0.wrapping_add((i * FRAME) as u32).to_be_bytes());
            p.extend_from_slice(&ssrc.to_be_bytes());
            p.extend((0..FRAME).map(|_| rand::random::<u8>()));
            p
        })
        .collect()
}

/// Encrypts `stream` with `sender`, sends each packet from `from` to `to` over UDP, receives
/// them on `at`, decrypts with `receiver` and checks every packet comes back bit for bit.
/// Returns the SRTP packets as they crossed the wire (for the negative controls).
#[allow(clippy::too_many_arguments)]
fn carry(
    what: &str,
    suite: Suite,
    stream: &[Vec<u8>],
    sender: &mut Context,
    from: &UdpSocket,
    to: SocketAddr,
    at: &UdpSocket,
    receiver: &mut Context,
) -> Vec<Vec<u8>> {
    let mut wire = Vec::new();
    for plain in stream {
        let srtp = sender.encrypt_rtp(plain).expect("encrypt_rtp");
        assert_eq!(
            srtp.len(),
            plain.len() + suite.overhead(),
            "{what}: SRTP packet size"
        );
        assert_eq!(
            srtp[..RTP_HEADER],
            plain[..RTP_HEADER],
            "{what}: header in clear"
        );
        assert_ne!(
            srtp[RTP_HEADER..plain.len()],
            plain[RTP_HEADER..],
            "{what}: payload encrypted"
        );
        from.send_to(&srtp, to).expect("send SRTP");
        let mut buf = [0u8; 2048];
        let (n, src) = at
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("{what}: no SRTP packet arrived at {to}: {e}"));
        assert_eq!(
            src,
            from.local_addr().expect("local addr"),
            "{what}: source"
        );
        assert_eq!(
            &buf[..n],
            &srtp[..],
            "{what}: UDP carried the packet unchanged"
        );
        let got = receiver.decrypt_rtp(&buf[..n]).unwrap_or_else(|e| {
            panic!("{what}: the far end could not authenticate/decrypt SRTP: {e}")
        });
        assert_eq!(
            &got[..],
            &plain[..],
            "{what}: decrypted RTP differs from what was sent"
        );
        wire.push(buf[..n].to_vec());
    }
    wire
}

/// Negative controls: contexts with a fresh random key, and with the right key but one salt bit
/// flipped, reject every packet of `wire` (so a key mangled anywhere in the edge is caught).
fn rejected_by_wrong_keys(what: &str, suite: Suite, right: &[u8], wire: &[Vec<u8>]) {
    let random: Vec<u8> = (0..suite.key_salt_len()).map(|_| rand::random()).collect();
    let mut salt_bit = right.to_vec();
    *salt_bit.last_mut().expect("key") ^= 0x01;
    for (how, key) in [("a random key", random), ("one salt bit flipped", salt_bit)] {
        assert_ne!(key, right);
        let mut wrong = suite.context(&key);
        for (i, p) in wire.iter().enumerate() {
            assert!(
                wrong.decrypt_rtp(p).is_err(),
                "{what}: packet {i} authenticated under {how}"
            );
        }
    }
}

/// Places one call from 1001 to 1002 offering `suite` through the edge, then carries SRTP both
/// ways with the keys each side actually received.
fn call_and_carry_srtp(e: &Edge, suite: Suite) {
    let what = suite.sdp;
    // The client's RTP socket; its port goes into the offer.
    let client_rtp = rtp_socket(0);
    let client_port = client_rtp.local_addr().expect("addr").port();

    // 1. INVITE with the client's own key K_client.
    let k_client: Vec<u8> = (0..suite.key_salt_len()).map(|_| rand::random()).collect();
    let offer = sdp_sdes(&B64.encode(&k_client))
        .replace("AES_CM_128_HMAC_SHA1_80", suite.sdp)
        .replace("m=audio 40000 ", &format!("m=audio {client_port} "));
    let call_id = rnd();
    let mut lines = base_headers("INVITE", "1001", "1002", "TLS", &call_id, 1);
    lines.push("Content-Type: application/sdp".into());
    let mut c = SipTls::connect(e.tls, &e.env.cert());
    c.send(&request("INVITE sip:1002@pbx.test SIP/2.0", &lines, &offer));

    // 2. The 200 OK through the edge, and K_asterisk as the client received it.
    let ok = c
        .final_response(T)
        .unwrap_or_else(|| panic!("{what}: no final answer to the INVITE"));
    assert_eq!(ok.status(), Some(200), "{what}: {ok:?}");
    let answer_at_client = media(&ok.body);
    assert_eq!(answer_at_client.suite, suite.sdp, "{what}: answered suite");
    assert!(
        ok.header("Content-Type")
            .is_some_and(|t| t.eq_ignore_ascii_case("application/sdp")),
        "{what}: {ok:?}"
    );

    // 3. The peer's own record: the INVITE as it arrived (after the edge) and the 200 it sent.
    // The peer writes a message to its log after sending it, so the client can hold the 200
    // before the log does: read it again until the entry is there.
    let logged = |dir: &str, pred: &dyn Fn(&SipMsg) -> bool| -> SipMsg {
        let deadline = std::time::Instant::now() + T;
        loop {
            let log = e.peer.log();
            let found = log
                .iter()
                .filter(|m| m["dir"] == dir)
                .filter_map(|m| m["raw"].as_str())
                .filter_map(|raw| SipMsg::parse(raw.as_bytes()))
                .find(|m| m.header("Call-ID") == Some(call_id.as_str()) && pred(m));
            if let Some(m) = found {
                return m;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: peer log has no such {dir} message: {log:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let invite_seen = logged("in", &|m| m.method() == Some("INVITE"));
    let ok_sent = logged("out", &|m| {
        m.status() == Some(200) && m.header("CSeq").is_some_and(|s| s.ends_with(" INVITE"))
    });
    // Both really crossed the edge (its Via on top towards Asterisk, removed towards the client).
    let vias = invite_seen.all("Via");
    assert!(
        vias.len() == 2 && vias[0].contains(";pbxg="),
        "{what}: INVITE did not come through the edge: {}",
        invite_seen.raw
    );
    assert_eq!(ok.all("Via").len(), 1, "{what}: {ok:?}");
    let offer_at_asterisk = media(&invite_seen.body);
    let answer_at_asterisk = media(&ok_sent.body);
    assert_eq!(
        offer_at_asterisk.suite, suite.sdp,
        "{what}: offered suite at Asterisk"
    );
    assert_eq!(
        offer_at_asterisk.rtp.port(),
        client_port,
        "{what}: client's RTP port as Asterisk saw it"
    );
    assert_eq!(
        answer_at_client.rtp, answer_at_asterisk.rtp,
        "{what}: Asterisk's RTP address as the client saw it"
    );

    // 4. The media path: Asterisk's RTP socket at the port its answer names.
    let far_rtp = rtp_socket(answer_at_asterisk.rtp.port());

    // Client -> Asterisk: encrypted with K_client, decrypted with the key Asterisk received.
    let up = rtp_stream();
    let wire_up = carry(
        &format!("{what} client->Asterisk"),
        suite,
        &up,
        &mut suite.context(&k_client),
        &client_rtp,
        answer_at_client.rtp,
        &far_rtp,
        &mut suite.context(&offer_at_asterisk.key),
    );
    // Asterisk -> client: encrypted with the key Asterisk sent, decrypted with the key the
    // client received through the edge.
    let down = rtp_stream();
    let wire_down = carry(
        &format!("{what} Asterisk->client"),
        suite,
        &down,
        &mut suite.context(&answer_at_asterisk.key),
        &far_rtp,
        offer_at_asterisk.rtp,
        &client_rtp,
        &mut suite.context(&answer_at_client.key),
    );

    // 5. Negative controls on the very same packets.
    rejected_by_wrong_keys(
        &format!("{what} client->Asterisk"),
        suite,
        &k_client,
        &wire_up,
    );
    rejected_by_wrong_keys(
        &format!("{what} Asterisk->client"),
        suite,
        &answer_at_client.key,
        &wire_down,
    );
    // The two directions really use different keys.
    assert_ne!(
        k_client, answer_at_asterisk.key,
        "{what}: the peer echoed the offer's key"
    );
    let mut cross = suite.context(&answer_at_client.key);
    assert!(
        wire_up.iter().all(|p| cross.decrypt_rtp(p).is_err()),
        "{what}: client->Asterisk packets authenticated under Asterisk's own key"
    );
}

#[test]
fn sdes_keys_negotiated_through_the_edge_protect_srtp_both_ways() {
    let e = Edge::start("");
    call_and_carry_srtp(&e, AES_CM_128_HMAC_SHA1_80);
    assert_eq!(e.peer.requests("INVITE").len(), 1);
}

#[test]
fn aead_gcm_and_other_sdes_suites_survive_the_edge() {
    let e = Edge::start("");
    for suite in OTHER_SUITES {
        call_and_carry_srtp(&e, suite);
    }
    assert_eq!(e.peer.requests("INVITE").len(), OTHER_SUITES.len());
}
