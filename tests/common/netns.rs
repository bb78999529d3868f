//! A "phone" network for end-to-end tests that must not run on loopback: a network namespace
//! joined to this host by a veth pair with documentation addresses only (a /30 of
//! 192.0.2.0/24, or of 198.51.100.0/24 when this host's own network is in 192.0.2.0/24: the
//! PBX end on the host, the phone end in the namespace, no route anywhere else). Clients
//! (baresip, a headless Chromium) run inside it with `ip netns exec`, so what they reach of the
//! PBX is what a device on the network would reach.
//!
//! Needs root for `ip netns`: without it [`PhoneNet::create`] returns `None` after one loud
//! line; under `CI=true` it fails instead.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// Netns names start with this; the veth names with `pgm`. Both carry the creating pid.
const NS_PREFIX: &str = "pbxguard-phone-";

// ---- the phone's network -------------------------------------------------------------------

/// A network namespace with a veth pair: `host_ip` on this host, `phone_ip` inside, a /30 of a
/// documentation range between them and no other route. Deleted on drop, panics included.
pub struct PhoneNet {
    pub ns: String,
    pub host_if: String,
    pub phone_if: String,
    pub host_ip: Ipv4Addr,
    pub phone_ip: Ipv4Addr,
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
    pub fn create() -> Option<PhoneNet> {
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
        // Clients talk to their own helpers on the namespace's loopback (baresip's ctrl_tcp,
        // chromedriver).
        net.exec_ok(&["ip", "link", "set", "lo", "up"]);
        let routes = net.exec(&["ip", "-4", "route", "show"]);
        assert!(
            !routes.contains("default"),
            "the phone's namespace must reach nothing but the PBX end: {routes}"
        );
        Some(net)
    }

    /// Runs `cmd` inside the namespace; its stdout.
    pub fn exec(&self, cmd: &[&str]) -> String {
        let mut all = vec!["netns", "exec", &self.ns];
        all.extend_from_slice(cmd);
        String::from_utf8_lossy(&ip(&all).stdout).to_string()
    }

    pub fn exec_ok(&self, cmd: &[&str]) {
        let mut all = vec!["netns", "exec", &self.ns];
        all.extend_from_slice(cmd);
        ip_ok(&all);
    }

    /// Packet counters of the host end of the veth (what crossed the wire) and the UDP
    /// counters of the phone's namespace (SIP is TLS, so every UDP datagram there is media).
    pub fn counters(&self) -> Counters {
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

/// RFC 5737's documentation ranges the tests may use, in order of preference.
const RANGES: [[u8; 3]; 2] = [[192, 0, 2], [198, 51, 100]];

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
        .expect("this host uses both documentation ranges the tests may take");
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
pub struct Counters {
    pub wire_from_phone: u64,
    pub wire_to_phone: u64,
    pub phone_udp_in: u64,
    pub phone_udp_out: u64,
    pub phone_udp_no_port: u64,
}

impl Counters {
    pub fn since(self, before: Counters) -> Counters {
        Counters {
            wire_from_phone: self.wire_from_phone - before.wire_from_phone,
            wire_to_phone: self.wire_to_phone - before.wire_to_phone,
            phone_udp_in: self.phone_udp_in - before.phone_udp_in,
            phone_udp_out: self.phone_udp_out - before.phone_udp_out,
            phone_udp_no_port: self.phone_udp_no_port - before.phone_udp_no_port,
        }
    }
}
