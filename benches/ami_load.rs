//! Load harness for the AMI gateway: the same work directly against the Asterisk AMI peer and
//! through pbxguard, alternating, in one run. `cargo bench --bench ami_load` (release build).
//!
//! 1. Events: 20 clients that may read `call` events; the peer sends EVENTS `dialplan` events
//!    (filtered away) and then EVENTS `call` events. Each client counts the call events; the
//!    rate is call events / time until every client has the last one. Direct clients log in
//!    with `Events: call`, so Asterisk's own filter does the same job.
//! 2. Round trip: 5000 sequential Pings from one client; p50 and p99, direct and through.
//! 3. Logins per second: sequential connect + Login + Logoff through the gateway (each login
//!    includes pbxguard's own MD5 login to Asterisk), with and without a pool.
//! 4. Memory per idle client: RSS of the daemon before and after 200 logged-in idle clients
//!    (measured first, on a fresh daemon).
//!
//! Knobs: EVENTS (default 50000), RUNS (3), PINGS (5000), LOGINS (200).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::ami::{header, AmiClient, AmiPeer};
use common::{free_port, Daemon, Env};

const UP: &str = "bench-upstream-secret";
const SECRET: &str = "bench-client-secret";
const CLIENTS: usize = 20;

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Setup {
    _env: Env,
    peer: AmiPeer,
    daemon: Daemon,
    port: u16,
}

fn setup(extra: &str) -> Setup {
    let peer = AmiPeer::start_with(
        &[
            ("pbxguard", UP, "all", "all"),
            ("direct", SECRET, "call", "all"),
        ],
        &["--writetimeout", "0", "--authlimit", "1000"],
    );
    let env = Env::new();
    let port = free_port();
    let ami = format!(
        "[ami]\nlisten = \"127.0.0.1:{port}\"\nupstream = \"127.0.0.1:{}\"\nmax_unauthenticated = 1000\naction_rate = 100000\naction_burst = 100000\nmax_output_bytes = 1073741824\n{extra}",
        peer.port()
    );
    env.write_config(&env.config_text(env.http_port, env.redirect_port, &ami));
    env.init();
    env.ok(&["secret", "set", "ami/upstream"], UP.as_bytes());
    env.ok(
        &[
            "ami",
            "user",
            "add",
            "direct",
            "--password-stdin",
            "--allow",
            "Ping",
            "--events",
            "call",
        ],
        SECRET.as_bytes(),
    );
    let daemon = env.start();
    daemon.wait_for_port(port);
    Setup {
        _env: env,
        peer,
        daemon,
        port,
    }
}

/// Reads raw lines until `Seq: last` of an event is seen; returns when.
fn count_until(stream: TcpStream, last: usize) -> Instant {
    let mut r = BufReader::with_capacity(1 << 16, stream);
    let needle = format!("Seq: {last}");
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            panic!("connection closed before the last event");
        }
        if line.trim_end() == needle {
            return Instant::now();
        }
    }
}

/// Call events per second each client received: the peer sends `events` filtered events, then
/// `events` call events, both paced at `rate` per second (0: as fast as the sockets take them).
fn events_run(s: &Setup, port: u16, events: usize, rate: usize) -> f64 {
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut c = AmiClient::connect(port);
        c.send(&[
            ("Action", "Login"),
            ("Username", "direct"),
            ("Secret", SECRET),
            ("Events", "call"),
        ]);
        let r = c.read_response(Duration::from_secs(10)).expect("login");
        assert_eq!(header(&r, "Response"), Some("Success"), "{r:?}");
        clients.push(c);
    }
    // Everyone (20 here + 20 upstream sessions or 20 direct) must be logged in at the peer.
    std::thread::sleep(Duration::from_millis(300));
    let readers: Vec<_> = clients
        .iter()
        .map(|c| {
            let stream = c.stream().try_clone().expect("clone");
            stream.set_read_timeout(Some(Duration::from_secs(120))).ok();
            std::thread::spawn(move || count_until(stream, events - 1))
        })
        .collect();
    let blast = |name: &str, class: &str| {
        let fields = [["Channel", "PJSIP/100-00000001"], ["Context", "default"]];
        let r = s.peer.control(&serde_json::json!({
            "cmd": "blast", "name": name, "class": class, "fields": fields, "count": events, "rate": rate
        }));
        assert_eq!(r["ok"], true, "{r}");
    };
    blast("Newexten", "dialplan");
    let start = Instant::now();
    blast("Newchannel", "call");
    let done = readers
        .into_iter()
        .map(|h| h.join().expect("reader"))
        .max()
        .expect("clients");
    drop(clients);
    events as f64 / (done - start).as_secs_f64()
}

fn pings(port: u16, user: &str, n: usize) -> Vec<Duration> {
    let mut c = AmiClient::connect(port);
    assert_eq!(header(&c.login(user, SECRET), "Response"), Some("Success"));
    let mut stream = c.stream().try_clone().expect("clone");
    let mut r = BufReader::new(c.stream().try_clone().expect("clone"));
    let mut out = Vec::with_capacity(n);
    let mut line = String::new();
    for i in 0..n {
        let t = Instant::now();
        write!(stream, "Action: Ping\r\nActionID: {i}\r\n\r\n").expect("write");
        loop {
            line.clear();
            r.read_line(&mut line).expect("read");
            if line == "\r\n" {
                break;
            }
        }
        out.push(t.elapsed());
    }
    out.sort();
    out
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e6
}

fn logins(port: u16, n: usize) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        let mut c = AmiClient::connect(port);
        assert_eq!(
            header(&c.login("direct", SECRET), "Response"),
            Some("Success")
        );
        c.send(&[("Action", "Logoff")]);
        assert!(c.wait_closed(Duration::from_secs(5)));
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this too: do nothing there.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let events = knob("EVENTS", 50_000);
    let runs = knob("RUNS", 3);
    let s = setup("");
    s.daemon.wait_for_log("logged in to Asterisk's AMI");

    println!("== memory: 200 idle logged-in clients");
    let before = rss_kb(s.daemon.pid());
    let mut idle = Vec::new();
    for _ in 0..200 {
        let mut c = AmiClient::connect(s.port);
        assert_eq!(
            header(&c.login("direct", SECRET), "Response"),
            Some("Success")
        );
        idle.push(c);
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kb(s.daemon.pid());
    println!(
        "RSS {before} kB -> {after} kB: {:.1} kB per idle client (client + its Asterisk session)",
        (after.saturating_sub(before)) as f64 / 200.0
    );
    drop(idle);
    std::thread::sleep(Duration::from_millis(500));
    let rate = knob("RATE", 20_000);
    for (label, rate) in [("paced", rate), ("unpaced (saturation)", 0)] {
        println!("== events, {label}: {CLIENTS} clients, {events} filtered + {events} delivered events per run{}",
            if rate > 0 { format!(" at {rate}/s") } else { String::new() });
        let (mut direct, mut via) = (Vec::new(), Vec::new());
        for run in 1..=runs {
            let d = events_run(&s, s.peer.port(), events, rate);
            let g = events_run(&s, s.port, events, rate);
            println!("run {run}: direct {d:.0} events/s per client, through pbxguard {g:.0} (ratio {:.2})", g / d);
            direct.push(d);
            via.push(g);
        }
        let (d, g) = (median(direct), median(via));
        println!("median: direct {d:.0}, through pbxguard {g:.0} events/s per client; ratio {:.2} (target >= 0.9)", g / d);
    }

    let n = knob("PINGS", 5000);
    println!("== round trip: {n} sequential Pings");
    let direct = pings(s.peer.port(), "direct", n);
    let via = pings(s.port, "direct", n);
    let direct2 = pings(s.peer.port(), "direct", n);
    let via2 = pings(s.port, "direct", n);
    let (d50, d99) = (
        pct(&direct, 0.5).min(pct(&direct2, 0.5)),
        pct(&direct, 0.99).min(pct(&direct2, 0.99)),
    );
    let (g50, g99) = (
        pct(&via, 0.5).min(pct(&via2, 0.5)),
        pct(&via, 0.99).min(pct(&via2, 0.99)),
    );
    println!("direct p50 {d50:.0} us p99 {d99:.0} us; through pbxguard p50 {g50:.0} us p99 {g99:.0} us; added p99 {:.0} us (target <= 500)", g99 - d99);

    let n = knob("LOGINS", 200);
    println!("== logins: {n} sequential connect + Login + Logoff");
    println!(
        "without pool: {:.0} logins/s (target >= 50)",
        logins(s.port, n)
    );
    let pooled = setup("pool_size = 8\n");
    pooled.daemon.wait_for_log("logged in to Asterisk's AMI");
    std::thread::sleep(Duration::from_millis(500));
    println!("pool_size = 8: {:.0} logins/s", logins(pooled.port, n));
    drop(pooled);

    let _ = std::io::stdout().flush();
}
