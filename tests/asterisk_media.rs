//! Audio off the box: a phone that is not on loopback calls through pbxguard's SIP edge into a
//! real Asterisk 22 configured from the shipped `etc/asterisk/pjsip.conf`, and its SRTP reaches
//! Asterisk and comes back.
//!
//! Media never passes through pbxguard: the edge relays the SDP untouched, so whatever address
//! Asterisk writes in `c=` is where the phone sends its audio. The phone is baresip in its own
//! network namespace, joined to this host by a veth pair with documentation addresses only
//! (a /30 of 192.0.2.0/24, or of 198.51.100.0/24 or 203.0.113.0/24 when this host's own
//! network is in 192.0.2.0/24: the PBX end on the host, the phone end in the namespace, no
//! route anywhere else). The same call is made with the example's `media_address` set to the PBX end (audio
//! both ways) and set to 127.0.0.1, what a loopback transport gives without it (the call
//! connects, no packet of audio crosses the wire, and `pbxguard audit asterisk` reports it).
//!
//! Needs root for `ip netns`: without it the tests are skipped after one loud line; under
//! `CI=true` they fail instead.

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::asterisk::{self, Asterisk, Setup};
use common::{free_port, run_for, Daemon, Env};

const CLIENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");
const RT_USER: &str = "asterisk";
const RT_PASSWORD: &str = "realtime-password-for-media";
const PHONE_PASSWORD: &str = "media-test-1001-pw";
/// Seconds the phone stays in the call: 20 ms packets, so about 200 each way.
const HOLD: u32 = 4;
/// The least RTP packets that count as "audio flows" in one direction during [`HOLD`].
const FLOWING: u64 = 100;
/// Netns names start with this; the veth names with `pgm`. Both carry the creating pid.
const NS_PREFIX: &str = "pbxguard-media-";

// ---- the phone's network -------------------------------------------------------------------

/// A network namespace with a veth pair: `host_ip` on this host, `phone_ip` inside, a /30 of a
/// documentation range between them and no other route. Deleted on drop, panics included.
struct PhoneNet {
    ns: String,
    host_if: String,
    phone_if: String,
    host_ip: Ipv4Addr,
    phone_ip: Ipv4Addr,
}

fn ip(args: &[&str]) -> Output {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip {args:?}: {e}"))
}

fn ip_ok(args: &[&str]) {
    let out = ip(args);
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Allocation of /30 blocks is serialised within this process; across processes the block is
/// chosen by what the host already has.
static NETS: Mutex<()> = Mutex::new(());
static SERIAL: AtomicU32 = AtomicU32::new(0);

impl PhoneNet {
    /// `None` (after one loud line) when this machine does not let us create a namespace.
    fn create() -> Option<PhoneNet> {
        let _serial = NETS.lock().unwrap_or_else(|p| p.into_inner());
        reap_leftovers();
        let pid = std::process::id();
        let n = SERIAL.fetch_add(1, Ordering::Relaxed);
        let ns = format!("{NS_PREFIX}{pid}-{n}");
        let (host_ip, phone_ip) = free_block();
        let added = Command::new("ip")
            .args(["netns", "add", &ns])
            .stdin(Stdio::null())
            .output();
        let refused = match &added {
            Ok(o) if o.status.success() => None,
            Ok(o) => Some(String::from_utf8_lossy(&o.stderr).trim().to_string()),
            Err(e) => Some(format!("cannot run ip: {e}")),
        };
        if let Some(why) = refused {
            let why = format!(
                "SKIPPED: media test: `ip netns add` is not permitted here ({why}); it needs root \
                 (CAP_SYS_ADMIN and CAP_NET_ADMIN) and iproute2"
            );
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{why}; CI=true requires it"
            );
            eprintln!("{why}");
            return None;
        }
        // From here on, drop deletes whatever exists.
        let net = PhoneNet {
            host_if: format!("pgm{pid}n{n}h"),
            phone_if: format!("pgm{pid}n{n}p"),
            ns,
            host_ip,
            phone_ip,
        };
        assert!(net.host_if.len() <= 15, "interface name too long");
        ip_ok(&[
            "link",
            "add",
            &net.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &net.phone_if,
        ]);
        ip_ok(&["link", "set", &net.phone_if, "netns", &net.ns]);
        // No IPv6 on the pair: no link-local address, no router solicitation, nothing but the
        // two documentation addresses on the wire.
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", net.host_if),
            "1",
        );
        let _ = ip(&[
            "netns",
            "exec",
            &net.ns,
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{}.disable_ipv6=1", net.phone_if),
        ]);
        ip_ok(&[
            "addr",
            "add",
            &format!("{}/30", net.host_ip),
            "dev",
            &net.host_if,
        ]);
        ip_ok(&["link", "set", &net.host_if, "up"]);
        net.exec_ok(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", net.phone_ip),
            "dev",
            &net.phone_if,
        ]);
        net.exec_ok(&["ip", "link", "set", &net.phone_if, "up"]);
        // baresip_call.py talks to baresip's ctrl_tcp on the namespace's own loopback.
        net.exec_ok(&["ip", "link", "set", "lo", "up"]);
        let routes = net.exec(&["ip", "-4", "route", "show"]);
        assert!(
            !routes.contains("default"),
            "the phone's namespace must reach nothing but the PBX end: {routes}"
        );
        Some(net)
    }

    /// Runs `cmd` inside the namespace; its stdout.
    fn exec(&self, cmd: &[&str]) -> String {
        let mut all = vec!["netns", "exec", &self.ns];
        all.extend_from_slice(cmd);
        String::from_utf8_lossy(&ip(&all).stdout).to_string()
    }

    fn exec_ok(&self, cmd: &[&str]) {
        let mut all = vec!["netns", "exec", &self.ns];
        all.extend_from_slice(cmd);
        ip_ok(&all);
    }

    /// Packet counters of the host end of the veth (what crossed the wire) and the UDP
    /// counters of the phone's namespace (SIP is TLS, so every UDP datagram there is media).
    fn counters(&self) -> Counters {
        let sys = |what: &str| -> u64 {
            std::fs::read_to_string(format!("/sys/class/net/{}/statistics/{what}", self.host_if))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {what} counter on {}", self.host_if))
        };
        let snmp = self.exec(&["cat", "/proc/net/snmp"]);
        let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
        assert_eq!(udp.len(), 2, "{snmp}");
        let names: Vec<&str> = udp[0].split_whitespace().collect();
        let values: Vec<&str> = udp[1].split_whitespace().collect();
        let udp = |name: &str| -> u64 {
            names
                .iter()
                .position(|n| *n == name)
                .and_then(|i| values.get(i))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no Udp {name} in {snmp}"))
        };
        Counters {
            wire_from_phone: sys("rx_packets"),
            wire_to_phone: sys("tx_packets"),
            phone_udp_in: udp("InDatagrams"),
            phone_udp_out: udp("OutDatagrams"),
            phone_udp_no_port: udp("NoPorts"),
        }
    }
}

impl Drop for PhoneNet {
    fn drop(&mut self) {
        // Whatever still runs in the namespace was started by this test (baresip left behind
        // by a killed driver); then the pair (deleting one end deletes both), then the name.
        let pids = String::from_utf8_lossy(&ip(&["netns", "pids", &self.ns]).stdout).to_string();
        for pid in pids.split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.ns]);
    }
}

/// Namespaces and veths of earlier runs whose process died without dropping them (SIGKILL):
/// only names of exactly our shape whose pid no longer runs.
fn reap_leftovers() {
    let dead = |pid: &str| {
        !pid.is_empty()
            && pid.bytes().all(|b| b.is_ascii_digit())
            && !Path::new("/proc").join(pid).exists()
    };
    let list = String::from_utf8_lossy(&ip(&["netns", "list"]).stdout).to_string();
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some((pid, n)) = ns.strip_prefix(NS_PREFIX).and_then(|r| r.split_once('-')) else {
            continue;
        };
        if dead(pid) && n.bytes().all(|b| b.is_ascii_digit()) {
            let _ = ip(&["netns", "del", ns]);
        }
    }
    let links = String::from_utf8_lossy(&ip(&["-o", "link", "show"]).stdout).to_string();
    for name in links
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n))
    {
        let Some((pid, n)) = name
            .strip_prefix("pgm")
            .and_then(|r| r.strip_suffix('h'))
            .and_then(|r| r.split_once('n'))
        else {
            continue;
        };
        if dead(pid) && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
            let _ = ip(&["link", "del", name]);
        }
    }
}

/// RFC 5737's documentation ranges, in order of preference.
const RANGES: [[u8; 3]; 3] = [[192, 0, 2], [198, 51, 100], [203, 0, 113]];

/// A /30 for the pair: in the first documentation range that this host's own network does not
/// use (no address, route or gateway in it outside our veths: a sandbox's eth0 may well sit in
/// 192.0.2.0/24, and taking its gateway's address would answer ARP for it), the first block
/// none of whose addresses is on this host yet (another run's pair).
fn free_block() -> (Ipv4Addr, Ipv4Addr) {
    let text = |args: &[&str]| String::from_utf8_lossy(&ip(args).stdout).to_string();
    let addrs = text(&["-o", "-4", "addr", "show"]);
    let routes = text(&["-4", "route", "show", "table", "all"]);
    let ours = |line: &str| {
        line.split_whitespace()
            .skip_while(|w| *w != "dev")
            .nth(1)
            .or_else(|| line.split_whitespace().nth(1))
            .is_some_and(|dev| dev.starts_with("pgm"))
    };
    let range = RANGES
        .iter()
        .find(|[a, b, c]| {
            let p = format!("{a}.{b}.{c}.");
            !addrs
                .lines()
                .chain(routes.lines())
                .filter(|l| !ours(l))
                .any(|l| l.split_whitespace().any(|w| w.starts_with(&p)))
        })
        .expect("this host uses all three documentation ranges");
    let [a, b, c] = *range;
    let used = |d: u8| addrs.contains(&format!(" {a}.{b}.{c}.{d}/"));
    let block = (0..64u8)
        .find(|k| (k * 4..k * 4 + 4).all(|d| !used(d)))
        .expect("a free /30 in the documentation range");
    (
        Ipv4Addr::new(a, b, c, block * 4 + 1),
        Ipv4Addr::new(a, b, c, block * 4 + 2),
    )
}

#[derive(Clone, Copy, Debug)]
struct Counters {
    wire_from_phone: u64,
    wire_to_phone: u64,
    phone_udp_in: u64,
    phone_udp_out: u64,
    phone_udp_no_port: u64,
}

impl Counters {
    fn since(self, before: Counters) -> Counters {
        Counters {
            wire_from_phone: self.wire_from_phone - before.wire_from_phone,
            wire_to_phone: self.wire_to_phone - before.wire_to_phone,
            phone_udp_in: self.phone_udp_in - before.phone_udp_in,
            phone_udp_out: self.phone_udp_out - before.phone_udp_out,
            phone_udp_no_port: self.phone_udp_no_port - before.phone_udp_no_port,
        }
    }
}

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
