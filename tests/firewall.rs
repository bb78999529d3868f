//! The ban list enforced in nftables, end to end: the daemon runs inside a network namespace
//! of its own (tests/common/netns.rs `DaemonNet`) with `[bans] firewall = "nftables"`, the
//! client connects from this host's side of the link (documentation addresses only). A banned
//! client's TCP connect to the HTTPS, AMI and SIP listeners times out (the kernel drops its
//! packets: no answer at all, not a refusal); lifted, it connects; bans expire; an IPv6 ban
//! covers the /64; a flushed table is restored; an allowlisted address is never banned.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::netns::DaemonNet;
use common::{free_port, Daemon, Env};

/// How long a connect may take before it counts as dropped.
const DROPPED_AFTER: Duration = Duration::from_millis(800);

/// What a TCP connect got: a banned client's SYN is dropped (no answer at all), which is not
/// a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    Connected,
    Dropped,
    Refused,
}

struct Site {
    net: DaemonNet,
    env: Env,
    _daemon: Daemon,
    https: u16,
    ami: u16,
    sip: u16,
}

/// The daemon inside `net`, listening on every address of the namespace, with `bans` as its
/// `[bans]` section (after `firewall = "nftables"`).
fn site(bans: &str) -> Option<Site> {
    let net = DaemonNet::create()?;
    let env = Env::new();
    let (ami, sip, wss) = (free_port(), free_port(), free_port());
    let base = env
        .config_text(env.http_port, env.redirect_port, "")
        .replace(
            &format!("listen = \"127.0.0.1:{}\"", env.http_port),
            &format!("listen = \"[::]:{}\"", env.http_port),
        );
    let text = format!(
        "{base}
[ami]
listen = \"[::]:{ami}\"
allow_plaintext = true
upstream = \"127.0.0.1:{}\"
upstream_timeout = \"2s\"

[sip]
tls_listen = \"[::]:{sip}\"
wss_listen = \"127.0.0.1:{wss}\"
upstream = \"127.0.0.1:{}\"
upstream_bind = \"127.0.0.1:0\"

[bans]
firewall = \"nftables\"
reconcile_interval = \"2s\"
{bans}
",
        free_port(),
        free_port(),
    );
    env.write_config(&text);
    env.init();
    env.ok(&["secret", "set", "ami/upstream"], b"upstream-secret\n");
    let log = env.path("serve.log");
    let child = net
        .command(common::BIN)
        .arg("-c")
        .arg(&env.config)
        .arg("serve")
        .env("RUST_LOG", "info,pbxguard::bans=debug")
        .env("NO_COLOR", "1")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("spawn serve in the namespace");
    let daemon = Daemon { child, log };
    let site = Site {
        https: env.http_port,
        net,
        env,
        _daemon: daemon,
        ami,
        sip,
    };
    let end = Instant::now() + Duration::from_secs(20);
    while !site.connects(site.v4(), site.https) {
        assert!(
            Instant::now() < end,
            "the daemon never listened: {}",
            site.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The table exists once the first reconcile ran.
    site.wait("the table", Duration::from_secs(10), || {
        site.net
            .exec(&["nft", "list", "table", "inet", "pbxguard"])
            .status
            .success()
    });
    Some(site)
}

impl Site {
    fn v4(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.net.daemon_v4), 0)
    }

    fn v6(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(self.net.daemon_v6), 0)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.env.path("serve.log")).unwrap_or_default()
    }

    /// What a TCP connect from `from` (this host's default source when `None`) to `to`'s
    /// address on `port` gets within [`DROPPED_AFTER`].
    fn probe(&self, from: Option<IpAddr>, to: SocketAddr, port: u16) -> Probe {
        let to = SocketAddr::new(to.ip(), port);
        let domain = if to.is_ipv4() {
            socket2::Domain::IPV4
        } else {
            socket2::Domain::IPV6
        };
        let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None).expect("socket");
        if let Some(ip) = from {
            socket
                .bind(&SocketAddr::new(ip, 0).into())
                .expect("bind the client's address");
        }
        match socket.connect_timeout(&to.into(), DROPPED_AFTER) {
            Ok(()) => Probe::Connected,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Probe::Dropped,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Probe::Dropped,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Probe::Refused,
            Err(e) => panic!("connect to {to} failed otherwise than by a timeout: {e}"),
        }
    }

    fn connects_from(&self, from: Option<IpAddr>, to: SocketAddr, port: u16) -> bool {
        self.probe(from, to, port) == Probe::Connected
    }

    fn connects(&self, to: SocketAddr, port: u16) -> bool {
        self.connects_from(None, to, port)
    }

    /// Each listener, from `from` to `to`.
    fn all_connect(&self, from: Option<IpAddr>, to: SocketAddr) -> [Probe; 3] {
        [self.https, self.ami, self.sip].map(|p| self.probe(from, to, p))
    }

    fn set(&self, family: &str) -> String {
        let out = self
            .net
            .exec(&["nft", "list", "set", "inet", "pbxguard", family]);
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    fn wait(&self, what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
        let start = Instant::now();
        while !f() {
            assert!(
                start.elapsed() < limit,
                "{what} within {limit:?}\nlog:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        start.elapsed()
    }

    /// A metric as `/metrics` gives it to loopback (inside the namespace; the default
    /// `metrics_allow` is loopback only).
    fn metric(&self, name: &str) -> String {
        let cert = self.env.cert().display().to_string();
        let url = format!("https://localhost:{}/metrics", self.https);
        let out = self
            .net
            .exec(&["curl", "-sS", "--max-time", "5", "--cacert", &cert, &url]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with(name))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[test]
fn a_banned_client_is_dropped_by_the_kernel_on_every_listener_until_lifted() {
    let Some(s) = site("") else {
        return;
    };
    let me = IpAddr::V4(s.net.host_v4);
    assert_eq!(
        s.all_connect(None, s.v4()),
        [Probe::Connected; 3],
        "before the ban"
    );
    // Plain AMI where other hosts reach it runs only with the admin's explicit yes, and says
    // what it costs at every start.
    assert!(
        s.log()
            .contains("the AMI gateway listens without TLS where other hosts reach it"),
        "{}",
        s.log()
    );

    let t = Instant::now();
    s.env
        .ok(&["ban", "add", &me.to_string(), "--duration", "1h"], b"");
    let in_set = s.wait(
        "the ban in the kernel's set",
        Duration::from_secs(2),
        || s.set("v4").contains(&me.to_string()),
    );
    println!("CLI ban in the kernel after {in_set:?}");
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(s.set("v4").contains("timeout"), "{}", s.set("v4"));
    assert_eq!(
        s.all_connect(None, s.v4()),
        [Probe::Dropped; 3],
        "HTTPS, AMI, SIP all dropped"
    );

    // Someone flushes the set, then deletes the table: both are repaired.
    s.net
        .exec_ok(&["nft", "flush", "set", "inet", "pbxguard", "v4"]);
    s.wait("the flushed set restored", Duration::from_secs(5), || {
        s.set("v4").contains(&me.to_string())
    });
    s.net
        .exec_ok(&["nft", "delete", "table", "inet", "pbxguard"]);
    s.wait("the deleted table restored", Duration::from_secs(5), || {
        s.set("v4").contains(&me.to_string())
    });
    assert_eq!(s.probe(None, s.v4(), s.https), Probe::Dropped);
    // Another table in the namespace is never touched.
    s.net
        .exec_ok(&["nft", "add", "table", "inet", "someone_else"]);

    s.env.ok(&["ban", "rm", &me.to_string()], b"");
    s.wait(
        "the lifted ban out of the kernel",
        Duration::from_secs(2),
        || !s.set("v4").contains(&me.to_string()),
    );
    assert_eq!(
        s.all_connect(None, s.v4()),
        [Probe::Connected; 3],
        "after the lift"
    );
    assert!(s
        .net
        .exec(&["nft", "list", "table", "inet", "someone_else"])
        .status
        .success());
    let dropped = s.metric("pbxguard_ban_dropped_packets_total");
    let n: f64 = dropped
        .split_whitespace()
        .last()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(n >= 3.0, "dropped packets counted: {dropped:?}");
    assert!(s
        .metric("pbxguard_ban_reconciles_total")
        .contains("repaired"));

    // A short ban ends by itself, in the kernel too.
    s.env
        .ok(&["ban", "add", &me.to_string(), "--duration", "3s"], b"");
    s.wait("the short ban in force", Duration::from_secs(2), || {
        s.probe(None, s.v4(), s.https) == Probe::Dropped
    });
    s.wait("the short ban ended", Duration::from_secs(8), || {
        s.connects(s.v4(), s.https)
    });
}

#[test]
fn an_ipv6_ban_covers_the_64_and_allowlisted_addresses_are_never_banned() {
    let Some(s) = site("") else {
        return;
    };
    let v6 = IpAddr::V6(s.net.host_v6);
    let other = IpAddr::V6(s.net.host_v6_other);
    assert!(s.connects_from(Some(v6), s.v6(), s.https));
    assert!(s.connects_from(Some(other), s.v6(), s.https));

    s.env.ok(&["ban", "add", &v6.to_string()], b"");
    let key = s.net.link_v6_net.to_string();
    s.wait("the /64 in the kernel", Duration::from_secs(2), || {
        s.set("v6").contains(&key)
    });
    assert_eq!(s.all_connect(Some(v6), s.v6()), [Probe::Dropped; 3]);
    assert!(
        s.connects_from(Some(other), s.v6(), s.https),
        "another /64 is not banned"
    );
    // The banned /64 holds the daemon's own address: the host still reaches itself there.
    let own = format!("https://[{}]:{}/healthz", s.net.daemon_v6, s.https);
    let out = s.net.exec(&[
        "curl",
        "-gsSk",
        "--max-time",
        "3",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &own,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "the PBX cut off from itself: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.net.exec_ok(&["nft", "list", "table", "inet", "pbxguard"])
    );
    // The IPv4 address of the same host is not banned either.
    assert!(s.connects(s.v4(), s.https));
    s.env.ok(&["ban", "rm", &v6.to_string()], b"");
    s.wait("the lifted /64", Duration::from_secs(2), || {
        s.connects_from(Some(v6), s.v6(), s.https)
    });

    // An allowlisted address: refused by the CLI, and never in the kernel after a reload.
    let allowed = s.net.other_v6_net.to_string();
    let text = std::fs::read_to_string(&s.env.config).unwrap().replace(
        "reconcile_interval = \"2s\"",
        &format!("reconcile_interval = \"2s\"\nallow = [\"{allowed}\"]"),
    );
    s.env.write_config(&text);
    s.net
        .exec_ok(&["kill", "-HUP", &s._daemon.child.id().to_string()]);
    s.wait("the reload", Duration::from_secs(5), || {
        s.log().contains("configuration reloaded")
    });
    let out = s.env.run(&["ban", "add", &other.to_string()], b"");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("never banned"));
    assert!(s.connects_from(Some(other), s.v6(), s.https));
}
