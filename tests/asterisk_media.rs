//! Audio off the box: a phone that is not on loopback calls through pbxguard's SIP edge into a
//! real Asterisk 22 configured from the shipped `etc/asterisk/pjsip.conf`, and its SRTP reaches
//! Asterisk and comes back.
//!
//! Media never passes through pbxguard: the edge relays the SDP untouched, so whatever address
//! Asterisk writes in `c=` is where the phone sends its audio. The phone is baresip in its own
//! network namespace ([`common::netns::PhoneNet`]: a veth pair with documentation addresses,
//! no route anywhere else). The same call is made with the example's `media_address` set to
//! the PBX end (audio both ways) and set to 127.0.0.1, what a loopback transport gives without
//! it (the call connects, no packet of audio crosses the wire, and `pbxguard audit asterisk`
//! reports it).
//!
//! Needs root for `ip netns`: without it the tests are skipped after one loud line; under
//! `CI=true` they fail instead.

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::asterisk::{self, Asterisk, Setup};
use common::netns::{Counters, PhoneNet};
use common::{free_port, run_for, Daemon, Env};

const CLIENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");
const RT_USER: &str = "asterisk";
const RT_PASSWORD: &str = "realtime-password-for-media";
const PHONE_PASSWORD: &str = "media-test-1001-pw";
/// Seconds the phone stays in the call: 20 ms packets, so about 200 each way.
const HOLD: u32 = 4;
/// The least RTP packets that count as "audio flows" in one direction during [`HOLD`].
const FLOWING: u64 = 100;

// ---- the PBX: pbxguard (edge + realtime) and Asterisk from the examples ---------------------

struct Pbx {
    ast: Asterisk,
    env: Env,
    _daemon: Daemon,
    /// The edge's SIP/TLS port on the PBX end of the veth.
    tls: SocketAddr,
}

/// pbxguard serving the phone's password over `[realtime]` and its SIP edge on the PBX end of
/// the veth; Asterisk from the shipped examples with `media_address` as given.
fn pbx(prefix: &Path, net: &PhoneNet, media_address: &str) -> Pbx {
    let env = Env::new();
    let rt_port = free_port();
    let realtime =
        format!("\n[realtime]\nlisten = \"127.0.0.1:{rt_port}\"\nusername = \"{RT_USER}\"\n");
    env.write_config(&env.config_text(env.http_port, env.redirect_port, &realtime));
    env.init();
    env.ok(
        &["secret", "set", "realtime/password"],
        format!("{RT_PASSWORD}\n").as_bytes(),
    );
    env.set_sip_credential("1001", PHONE_PASSWORD);
    let ast = Asterisk::start(
        prefix,
        &Setup {
            realtime: Some((rt_port, RT_USER.into(), RT_PASSWORD.into())),
            pjsip: true,
            media_address: media_address.into(),
            ..Setup::default()
        },
    );
    let conf = std::fs::read_to_string(ast.etc().join("pjsip.conf")).expect("pjsip.conf");
    assert!(
        conf.contains(&format!("media_address = {media_address}"))
            && conf.contains("bind_rtp_to_media_address = yes"),
        "{conf}"
    );
    let tls = SocketAddr::from((net.host_ip, free_port()));
    let sip = format!(
        "\n[sip]\ntls_listen = \"{tls}\"\nwss_listen = \"127.0.0.1:{}\"\n\
         upstream = \"127.0.0.1:{}\"\nupstream_bind = \"127.0.0.1:0\"\n",
        free_port(),
        ast.sip_port
    );
    env.write_config(&env.config_text(
        env.http_port,
        env.redirect_port,
        &format!("{realtime}{sip}"),
    ));
    let daemon = env.start();
    daemon.wait_for_port(rt_port);
    let end = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&tls, Duration::from_secs(1)).is_err() {
        assert!(
            Instant::now() < end,
            "the edge never listened on {tls}:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Pbx {
        ast,
        env,
        _daemon: daemon,
        tls,
    }
}

impl Pbx {
    /// Lines of Asterisk's RTP debug output (`rtp set debug on`) containing both needles.
    fn rtp_debug(&self, what: &str, peer: Ipv4Addr) -> u64 {
        let peer = format!(" {peer}:");
        self.ast
            .log()
            .lines()
            .filter(|l| l.contains(what) && l.contains(&peer))
            .count() as u64
    }

    /// Messages of `pbxguard audit asterisk --json` on the configuration Asterisk runs with.
    fn audit(&self) -> Vec<String> {
        let dir = self.ast.etc().display().to_string();
        let out = self
            .env
            .run(&["audit", "asterisk", "--dir", &dir, "--json"], b"");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "audit output is not JSON ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        v.as_array()
            .expect("an array of findings")
            .iter()
            .map(|f| format!("{} [{}] {}", f["severity"], f["object"], f["message"]))
            .collect()
    }
}

// ---- the phone ------------------------------------------------------------------------------

/// baresip in the phone's namespace: registers as 1001 over TLS through the edge with
/// srtp-mand, calls 600 (Answer + Echo), stays [`HOLD`] seconds and hangs up.
fn call_echo(net: &PhoneNet, pbx: &Pbx) -> serde_json::Value {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &net.ns, "/usr/bin/python3"])
        .arg(Path::new(CLIENTS).join("baresip_call.py"))
        .args([
            "--registrar",
            &format!("sip:{};transport=tls", pbx.tls),
            "--domain",
            "pbx.test",
        ])
        .args(["--user", "1001", "--password", PHONE_PASSWORD])
        .args(["--mediaenc", "srtp-mand", "--dial", "600", "--rtp-stats"])
        .arg("--ca")
        .arg(pbx.env.cert())
        .args(["--net-interface", &net.phone_ip.to_string()])
        .args(["--sip-listen", &format!("{}:0", net.phone_ip)])
        .args(["--timeout", &(HOLD + 15).to_string()])
        .args(["--hold", &HOLD.to_string()]);
    // baresip itself, if the driver leaves it behind, dies with the namespace.
    let output = run_for(&mut cmd, Duration::from_secs(u64::from(HOLD) + 30));
    let status = output.status;
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    let err = String::from_utf8_lossy(&output.stderr).into_owned();
    let r: serde_json::Value = out
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("baresip_call.py ({status}) printed no result:\n{out}\n{err}"));
    assert_eq!(r["registered"], true, "{r}\n{err}");
    assert_eq!(
        r["call"],
        "established",
        "{r}\n{err}\nAsterisk:\n{}",
        pbx.ast.log()
    );
    assert_eq!(
        r["closed_by"], "local",
        "the call must last the whole hold: {r}"
    );
    r
}

struct Figures {
    answer: Vec<String>,
    wire: Counters,
    /// RTP packets Asterisk logged as received from / sent to the phone's address.
    ast_got: u64,
    ast_sent: u64,
    phone: serde_json::Value,
}

/// One call to Echo from the namespace with `media_address` as given.
fn echo_call(media_address: Option<&str>) -> Option<(PhoneNet, Pbx, Figures)> {
    let prefix = asterisk::prefix()?;
    let net = PhoneNet::create()?;
    let media = media_address.map_or_else(|| net.host_ip.to_string(), str::to_owned);
    let pbx = pbx(&prefix, &net, &media);
    let on = pbx.ast.cli("rtp set debug on");
    assert!(on.contains("RTP Packet Debugging Enabled"), "{on}");
    let before = net.counters();
    let phone = call_echo(&net, &pbx);
    let wire = net.counters().since(before);
    let answer: Vec<String> = phone["answer"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l.as_str())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let figures = Figures {
        answer,
        wire,
        ast_got: pbx.rtp_debug("Got  RTP packet from", net.phone_ip),
        ast_sent: pbx.rtp_debug("Sent RTP packet to", net.phone_ip),
        phone,
    };
    eprintln!(
        "media_address {media}: Asterisk got {} / sent {} RTP from/to {}; wire phone->PBX {} \
         PBX->phone {} packets (signalling included); phone UDP in {} out {} no-port {}; \
         baresip rtp {} from {}",
        figures.ast_got,
        figures.ast_sent,
        net.phone_ip,
        wire.wire_from_phone,
        wire.wire_to_phone,
        wire.phone_udp_in,
        wire.phone_udp_out,
        wire.phone_udp_no_port,
        figures.phone["rtp"],
        figures.phone["rtp_from"],
    );
    Some((net, pbx, figures))
}

// ---- the tests ------------------------------------------------------------------------------

#[test]
fn a_phone_off_the_box_gets_audio_both_ways_with_the_shipped_media_address() {
    let Some((net, pbx, f)) = echo_call(None) else {
        return;
    };
    let ctx = format!("{:?}\n{}", f.wire, f.phone);
    // Asterisk's answer, relayed untouched by the edge, names the PBX end, with an SDES key.
    let c = format!("c=IN IP4 {}", net.host_ip);
    assert!(f.answer.contains(&c), "{ctx}");
    assert!(
        !f.answer.iter().any(|l| l.contains("127.0.0.1")),
        "Asterisk still offers loopback: {ctx}"
    );
    assert!(
        f.answer
            .iter()
            .any(|l| l.starts_with("m=audio ") && l.contains("RTP/SAVP"))
            && f.answer.iter().any(|l| l.starts_with("a=crypto:")),
        "{ctx}"
    );
    // Phone -> Asterisk: Asterisk received the phone's SRTP from its namespace address, and
    // Echo sent it back there.
    assert!(
        f.ast_got >= FLOWING,
        "Asterisk got {} RTP: {ctx}",
        f.ast_got
    );
    assert!(
        f.ast_sent >= FLOWING,
        "Asterisk sent {} RTP: {ctx}",
        f.ast_sent
    );
    // Asterisk -> phone: the echoed packets crossed the veth and reached a socket in the
    // phone's namespace (its only UDP peer is the PBX end: no other route, SIP over TLS).
    assert!(f.wire.wire_from_phone >= FLOWING, "{ctx}");
    assert!(f.wire.wire_to_phone >= FLOWING, "{ctx}");
    assert!(f.wire.phone_udp_in >= FLOWING, "{ctx}");
    // And baresip itself counted them, arriving from the PBX end.
    assert!(
        f.phone["rtp"]["rx"].as_u64().unwrap_or(0) >= FLOWING,
        "{ctx}"
    );
    assert!(
        f.phone["rtp"]["tx"].as_u64().unwrap_or(0) >= FLOWING,
        "{ctx}"
    );
    assert!(
        f.phone["rtp_from"]
            .as_str()
            .is_some_and(|a| a.starts_with(&format!("{}:", net.host_ip))),
        "{ctx}"
    );
    // The audit has nothing to say about this endpoint's media.
    let audit = pbx.audit();
    assert!(
        !audit.iter().any(|m| m.contains("get no audio")),
        "{audit:#?}"
    );
}

#[test]
fn with_media_on_loopback_the_call_connects_but_no_audio_reaches_the_phone() {
    // What the old example did (RTP on the loopback transport's 127.0.0.1): the negative
    // control of the measurement above.
    let Some((_net, pbx, f)) = echo_call(Some("127.0.0.1")) else {
        return;
    };
    let ctx = format!("{:?}\n{}", f.wire, f.phone);
    assert!(f.answer.iter().any(|l| l == "c=IN IP4 127.0.0.1"), "{ctx}");
    // The phone sent its audio to 127.0.0.1, its own namespace's loopback: nobody there.
    assert!(
        f.wire.phone_udp_no_port >= FLOWING,
        "the phone's audio did not go to its own loopback: {ctx}"
    );
    // Nothing reached Asterisk, so Echo had nothing to return, and no datagram reached the
    // phone.
    assert_eq!(f.ast_got, 0, "{ctx}");
    assert_eq!(f.ast_sent, 0, "{ctx}");
    assert_eq!(f.wire.phone_udp_in, 0, "{ctx}");
    assert_eq!(f.phone["rtp"]["rx"].as_u64().unwrap_or(0), 0, "{ctx}");
    assert!(f.phone["rtp_from"].is_null(), "{ctx}");
    // The wire carried the TLS signalling only: far fewer packets than a call's audio.
    assert!(f.wire.wire_from_phone < FLOWING, "{ctx}");
    assert!(f.wire.wire_to_phone < FLOWING, "{ctx}");
    // The audit names both endpoints of the running configuration.
    let audit = pbx.audit();
    let hits: Vec<&String> = audit
        .iter()
        .filter(|m| m.contains("media_address 127.0.0.1 is a loopback address"))
        .collect();
    assert_eq!(hits.len(), 2, "{audit:#?}");
    assert!(hits.iter().any(|m| m.contains("[\"1001\"]")), "{audit:#?}");
}
