//! The kernel side of the ban list under load: `cargo bench --bench bans_load` (as root, with
//! `nft`; release build). In a network namespace of its own (tests/common/netns.rs's
//! DaemonNet) it measures, for BANS banned prefixes (default 100,000, half IPv4 /32s from
//! 198.18.0.0/15, the range RFC 2544 sets aside for benchmarks, half IPv6 /64s from
//! 2001:db8::/32):
//!
//! - the first reconcile (creates the table with every element), one that finds nothing to
//!   change, and one that adds a single element to the full set (medians of ROUNDS);
//! - memory: the growth of this process's peak RSS during the first reconcile (the listing
//!   and the JSON are built and parsed here), and the peak RSS of the `nft` processes
//!   (sampled from /proc while they run);
//! - the added latency of a client that is not banned: CONNECTS TCP connects (default 2,000)
//!   from the host's side to a listener in the namespace, over IPv4 and IPv6, with the sets
//!   empty and with them full (alternating, twice each), median and p99.
//!
//! Without root or nft it prints one line and exits 0. Addresses in the sets are never sent
//! anything; the clients use the DaemonNet's documentation addresses.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::netns::DaemonNet;
use ipnet::{IpNet, Ipv6Net};
use pbxguard::bans::nft::{Element, Nft};

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn bans(n: usize) -> Vec<Element> {
    let now = now();
    (0..n as u32)
        .map(|i| {
            let k = i / 2;
            let net = if i % 2 == 0 {
                IpNet::from(IpAddr::V4(Ipv4Addr::from(0xC612_0000 + k))) // 198.18.0.0/15
            } else {
                let seg = |x: u32| x as u16;
                IpNet::V6(
                    Ipv6Net::new(
                        Ipv6Addr::new(0x2001, 0xdb8, 0x4000 + seg(k >> 16), seg(k), 0, 0, 0, 0),
                        64,
                    )
                    .expect("a /64"),
                )
            };
            Element {
                net,
                expires_at: now + 3600 + i64::from(i % 600),
            }
        })
        .collect()
}

/// A value from /proc/PID/status in KiB.
fn status_kib(pid: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Watches for `nft` processes that are children of this one and keeps the largest VmHWM.
struct NftRss {
    peak_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NftRss {
    fn start() -> NftRss {
        let peak_kib = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (peak, halt) = (peak_kib.clone(), stop.clone());
        let me = std::process::id().to_string();
        let thread = std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    let pid = entry.file_name().to_string_lossy().to_string();
                    if !pid.bytes().all(|b| b.is_ascii_digit()) {
                        continue;
                    }
                    let comm =
                        std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    if comm.trim() != "nft" {
                        continue;
                    }
                    let parent = status_kib(&pid, "PPid:").map(|p| p.to_string());
                    if parent.as_deref() != Some(me.as_str()) {
                        continue;
                    }
                    if let Some(hwm) = status_kib(&pid, "VmHWM:") {
                        peak.fetch_max(hwm, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        NftRss {
            peak_kib,
            stop,
            thread: Some(thread),
        }
    }

    fn peak_mib(&self) -> f64 {
        self.peak_kib.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

impl Drop for NftRss {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn p99(v: &mut [Duration]) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

fn connects(to: SocketAddr, n: usize) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            let s = TcpStream::connect_timeout(&to, Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("connect to {to}: {e}"));
            let d = t.elapsed();
            drop(s);
            d
        })
        .collect()
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this too: do nothing there.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n = knob("BANS", 100_000);
    let rounds = knob("ROUNDS", 3).max(1);
    let n_conn = knob("CONNECTS", 2000).max(1);
    let Some(net) = DaemonNet::create() else {
        println!("bans_load: SKIPPED (needs root for network namespaces)");
        return;
    };
    let version = net.exec(&["nft", "--version"]);
    if !version.status.success() {
        println!("bans_load: SKIPPED (nft not installed: package nftables)");
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let fw =
        Nft::with_program("pbxguard", net.nft_program()).with_timeout(Duration::from_secs(600));
    let rss = NftRss::start();
    let desired = bans(n);

    // ---- reconcile times and memory
    let _ = std::fs::write("/proc/self/clear_refs", "5"); // resets VmHWM to the current RSS
    let base = status_kib("self", "VmRSS:").unwrap_or(0);
    let t = Instant::now();
    let r = rt
        .block_on(fw.reconcile(&desired, now()))
        .expect("first reconcile");
    let first = t.elapsed();
    let rust_peak = status_kib("self", "VmHWM:")
        .unwrap_or(0)
        .saturating_sub(base);
    assert_eq!(r.added, n);
    let mut unchanged = Vec::new();
    let mut add_one = Vec::new();
    let mut current = desired.clone();
    for i in 0..rounds {
        let t = Instant::now();
        let r = rt
            .block_on(fw.reconcile(&current, now()))
            .expect("reconcile");
        unchanged.push(t.elapsed());
        assert_eq!((r.added, r.removed, r.replaced), (0, 0, 0), "{r:?}");
        current.push(Element {
            net: IpNet::from(IpAddr::V4(Ipv4Addr::new(198, 19, 255, 200 + i as u8))),
            expires_at: now() + 3600,
        });
        let t = Instant::now();
        let r = rt
            .block_on(fw.reconcile(&current, now()))
            .expect("reconcile");
        add_one.push(t.elapsed());
        assert_eq!(r.added, 1, "{r:?}");
    }
    let nft_peak = rss.peak_mib();
    drop(rss);

    // ---- connect latency of a client that is not banned
    let port = 20_000 + (std::process::id() % 20_000) as u16;
    let listen = format!(
        "import socket\ns = socket.socket(socket.AF_INET6)\n\
         s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('::', {port}))\ns.listen(4096)\n\
         while True:\n    c, _ = s.accept()\n    c.close()\n"
    );
    let mut listener = net.spawn(&["python3", "-c", &listen]);
    let v4 = SocketAddr::new(net.daemon_v4.into(), port);
    let v6 = SocketAddr::new(net.daemon_v6.into(), port);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&v4, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "the listener never came up");
        std::thread::sleep(Duration::from_millis(50));
    }
    connects(v4, 200); // warm up
    let mut lat: [[Vec<Duration>; 2]; 2] = Default::default(); // [empty|full][v4|v6]
    for round in 0..4 {
        let full = round % 2 == 1;
        let list: &[Element] = if full { &desired } else { &[] };
        rt.block_on(fw.reconcile(list, now())).expect("reconcile");
        lat[usize::from(full)][0].extend(connects(v4, n_conn));
        lat[usize::from(full)][1].extend(connects(v6, n_conn));
    }
    let _ = listener.kill();
    let _ = listener.wait();
    let removed = rt.block_on(fw.remove()).expect("remove");
    assert!(removed);

    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!();
    println!(
        "bans_load: {n} bans ({} IPv4 /32, {} IPv6 /64), {}, kernel {}",
        n.div_ceil(2),
        n / 2,
        String::from_utf8_lossy(&version.stdout).trim(),
        kernel.trim()
    );
    println!();
    println!("| step | time |");
    println!("|---|---|");
    println!(
        "| first reconcile (create the table, {n} elements) | {} |",
        ms(first)
    );
    println!(
        "| reconcile, nothing to change (median of {rounds}) | {} |",
        ms(median(&mut unchanged))
    );
    println!(
        "| reconcile adding 1 element to the full set (median of {rounds}) | {} |",
        ms(median(&mut add_one))
    );
    println!();
    println!("| memory | MiB |");
    println!("|---|---|");
    println!(
        "| pbxguard side: peak RSS growth during the first reconcile | {:.1} |",
        rust_peak as f64 / 1024.0
    );
    println!("| nft: largest peak RSS of one run | {nft_peak:.1} |");
    println!();
    println!(
        "| TCP connect of a client not banned ({} each) | median | p99 |",
        2 * n_conn
    );
    println!("|---|---|---|");
    for (fi, fname) in ["sets empty", "sets full"].iter().enumerate() {
        for (vi, vname) in ["IPv4", "IPv6"].iter().enumerate() {
            let v = &mut lat[fi][vi];
            let (m, p) = (median(v), p99(v));
            println!("| {vname}, {fname} | {} | {} |", us(m), us(p));
        }
    }
}
