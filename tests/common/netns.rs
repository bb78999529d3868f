//! A "phone" network for end-to-end tests that must not run on loopback: a network namespace
//! joined to this host by a veth pair with documentation addresses only (a /30 of
//! 192.0.2.0/24, or of 198.51.100.0/24 when this host's own network is in 192.0.2.0/24: the
//! PBX end on the host, the phone end in the namespace, no route anywhere else). Clients
//! (baresip, a headless Chromium) run inside it with `ip netns exec`, so what they reach of the
//! PBX is what a device on the network would reach.
//!
//! Needs root for `ip netns`: without it [`PhoneNet::create`] returns `None` after one loud
//! line; under `CI=true` it fails instead.
//!
//! [`DaemonNet`] is the other way round: the daemon (and Asterisk, nft) run inside the
//! namespace, and the clients, attackers included, connect from this host's side. It has IPv4
//! and IPv6, and a second IPv6 /64 on the host's side so a test can show that banning one /64
//! spares the other.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
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
        let Some((pid, n)) = ns
            .strip_prefix(NS_PREFIX)
            .or_else(|| ns.strip_prefix(DAEMON_NS_PREFIX))
            .and_then(|r| r.split_once('-'))
        else {
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
        // PhoneNet's pgm<pid>n<n>h, DaemonNet's pgm<pid>d<n>h.
        let Some((pid, n)) = name
            .strip_prefix("pgm")
            .and_then(|r| r.strip_suffix('h'))
            .and_then(|r| r.split_once('n').or_else(|| r.split_once('d')))
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

// ---- the daemon's network ------------------------------------------------------------------

/// DaemonNet's namespaces; its veths are `pgm<pid>d<n>h` (host end) and `pgm<pid>d<n>p`.
const DAEMON_NS_PREFIX: &str = "pbxguard-dnet-";

/// The IPv6 /64s a DaemonNet may take: `2001:db8:21:<2k+1>::/64` on the link and
/// `2001:db8:21:<2k+2>::/64` as the host's second prefix.
const V6_BASE: [u16; 3] = [0x2001, 0x0db8, 0x0021];

/// A network namespace for the daemon under test, joined to this host by a veth pair. The
/// daemon end (`daemon_v4`, `daemon_v6`) is inside; the client end (`host_v4`, `host_v6`, and
/// `host_v6_other` in a second /64) stays in this host's namespace, where the test's clients
/// run. Documentation addresses only, no default route inside, no link-local addresses, no
/// duplicate address detection delay: every address works as soon as `create` returns.
/// Everything started in the namespace is killed, and the pair and the namespace deleted, on
/// drop (panics included).
///
/// ```ignore
/// let net = DaemonNet::create()?;               // None (after one loud line) without root
/// let mut daemon = net.command(BIN).args(["-c", &cfg, "serve"]).spawn()?;
/// TcpStream::connect((net.daemon_v4, port));    // from the host side, source host_v4
/// ```
pub struct DaemonNet {
    pub ns: String,
    pub host_if: String,
    pub daemon_if: String,
    pub host_v4: Ipv4Addr,
    pub daemon_v4: Ipv4Addr,
    /// The host's end of the link's /64 (the source of the host's IPv6 connects by default).
    pub host_v6: Ipv6Addr,
    /// The host's address in a second /64, routed to the namespace over the same link: a
    /// client that a /64 ban on `host_v6` must spare (bind to it before connecting).
    pub host_v6_other: Ipv6Addr,
    pub daemon_v6: Ipv6Addr,
    /// `host_v6`'s /64 and `host_v6_other`'s /64.
    pub link_v6_net: ipnet::Ipv6Net,
    pub other_v6_net: ipnet::Ipv6Net,
}

impl DaemonNet {
    /// `None` (after one loud line) when this machine does not let us create a namespace;
    /// under `CI=true` that fails instead.
    pub fn create() -> Option<DaemonNet> {
        let _serial = NETS.lock().unwrap_or_else(|p| p.into_inner());
        reap_leftovers();
        let pid = std::process::id();
        let n = SERIAL.fetch_add(1, Ordering::Relaxed);
        let ns = format!("{DAEMON_NS_PREFIX}{pid}-{n}");
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
                "SKIPPED: daemon network: `ip netns add` is not permitted here ({why}); it \
                 needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and iproute2"
            );
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{why}; CI=true requires it"
            );
            eprintln!("{why}");
            return None;
        }
        let (host_v4, daemon_v4) = free_block();
        let k = free_v6_pair();
        let [a, b, c] = V6_BASE;
        let link = Ipv6Addr::new(a, b, c, 2 * k + 1, 0, 0, 0, 0);
        let other = Ipv6Addr::new(a, b, c, 2 * k + 2, 0, 0, 0, 0);
        let with_host = |net: Ipv6Addr, host: u16| {
            let mut s = net.segments();
            s[7] = host;
            Ipv6Addr::from(s)
        };
        // From here on, drop deletes whatever exists.
        let net = DaemonNet {
            host_if: format!("pgm{pid}d{n}h"),
            daemon_if: format!("pgm{pid}d{n}p"),
            ns,
            host_v4,
            daemon_v4,
            host_v6: with_host(link, 2),
            host_v6_other: with_host(other, 2),
            daemon_v6: with_host(link, 1),
            link_v6_net: ipnet::Ipv6Net::new(link, 64).expect("a /64"),
            other_v6_net: ipnet::Ipv6Net::new(other, 64).expect("a /64"),
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
            &net.daemon_if,
        ]);
        ip_ok(&["link", "set", &net.daemon_if, "netns", &net.ns]);
        // IPv6 without link-local addresses (addr_gen_mode 1: none), so that only the
        // documentation addresses are ever on the wire; neighbour discovery works with the
        // global ones. Set before the links come up.
        std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{}/addr_gen_mode", net.host_if),
            "1",
        )
        .unwrap_or_else(|e| panic!("addr_gen_mode on {}: {e}", net.host_if));
        net.exec_ok(&[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{}.addr_gen_mode=1", net.daemon_if),
        ]);
        net.exec_ok(&[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{}.accept_ra=0", net.daemon_if),
        ]);
        let host_addrs = [
            format!("{}/30", net.host_v4),
            format!("{}/64", net.host_v6),
            format!("{}/64", net.host_v6_other),
        ];
        for addr in &host_addrs {
            ip_ok(&["addr", "add", addr, "dev", &net.host_if, "nodad"]);
        }
        ip_ok(&["link", "set", &net.host_if, "up"]);
        for addr in [
            format!("{}/30", net.daemon_v4),
            format!("{}/64", net.daemon_v6),
        ] {
            net.exec_ok(&["ip", "addr", "add", &addr, "dev", &net.daemon_if, "nodad"]);
        }
        net.exec_ok(&["ip", "link", "set", &net.daemon_if, "up"]);
        // The host's second /64 is on-link for the namespace too (the host answers neighbour
        // solicitations for it on the same veth).
        net.exec_ok(&[
            "ip",
            "-6",
            "route",
            "add",
            &net.other_v6_net.to_string(),
            "dev",
            &net.daemon_if,
        ]);
        // The daemon talks to Asterisk and its own helpers over the namespace's loopback.
        net.exec_ok(&["ip", "link", "set", "lo", "up"]);
        for family in ["-4", "-6"] {
            let routes = net.exec_ok(&["ip", family, "route", "show"]);
            assert!(
                !routes.contains("default"),
                "the daemon's namespace must reach nothing but the host end: {routes}"
            );
        }
        Some(net)
    }

    /// A command that runs `program` inside the namespace (add arguments, environment, pipes,
    /// then `output()` or `spawn()`). Standard input is /dev/null unless changed.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns])
            .arg(program)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `cmd` inside the namespace to its end; its whole output, whatever its status.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        let (program, args) = cmd.split_first().expect("a program to run");
        self.command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?} in {}: {e}", self.ns))
    }

    /// Runs `cmd` inside the namespace; its stdout. Panics with its stderr if it fails.
    pub fn exec_ok(&self, cmd: &[&str]) -> String {
        let out = self.exec(cmd);
        assert!(
            out.status.success(),
            "{cmd:?} in {}: {}",
            self.ns,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Starts `cmd` inside the namespace (stdout and stderr inherited: they show in the test's
    /// output on failure). Drop kills it at the latest.
    pub fn spawn(&self, cmd: &[&str]) -> Child {
        let (program, args) = cmd.split_first().expect("a program to run");
        self.command(program)
            .args(args)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?} in {}: {e}", self.ns))
    }

    /// The argument vector that runs `nft` inside the namespace (for `Nft::with_program`).
    pub fn nft_program(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.ns, "nft"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
}

impl Drop for DaemonNet {
    fn drop(&mut self) {
        let pids = String::from_utf8_lossy(&ip(&["netns", "pids", &self.ns]).stdout).to_string();
        for pid in pids.split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.ns]);
    }
}

/// The first k whose two /64s (see [`V6_BASE`]) no address or route of this host uses yet
/// (another DaemonNet of this or another run).
fn free_v6_pair() -> u16 {
    let text = |args: &[&str]| String::from_utf8_lossy(&ip(args).stdout).to_string();
    let seen = format!(
        "{}\n{}",
        text(&["-o", "-6", "addr", "show"]),
        text(&["-6", "route", "show", "table", "all"])
    );
    let [a, b, c] = V6_BASE;
    // Shown as "2001:db8:21:<net>::", followed by "/64" or the host part.
    let used = |net: u16| seen.contains(&Ipv6Addr::new(a, b, c, net, 0, 0, 0, 0).to_string());
    (0..1000u16)
        .find(|k| !used(2 * k + 1) && !used(2 * k + 2))
        .expect("a free pair of /64s in 2001:db8:21::/48")
}
