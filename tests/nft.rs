//! The kernel side of the ban list against real nftables, each test in a network namespace of
//! its own ([`common::netns::DaemonNet`]): the table is created, kept, repaired after someone
//! flushed or deleted it, never touches another table, and really drops a banned client's
//! packets (IPv4 and an IPv6 /64) while sparing everyone else.
//!
//! Needs root and `nft` (package nftables): without them each test is skipped after one loud
//! line; under `CI=true` they fail instead.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::netns::DaemonNet;
use ipnet::IpNet;
use pbxguard::bans::nft::{Element, Nft, Reconciled};
use serde_json::Value;

const TABLE: &str = "pbxguard";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs() as i64
}

/// A namespace with nft in it, or `None` after one loud line.
fn setup() -> Option<(DaemonNet, Nft)> {
    let net = DaemonNet::create()?;
    let found = net.command("nft").arg("--version").output();
    if !found.as_ref().is_ok_and(|o| o.status.success()) {
        let why = "SKIPPED: nft tests: `nft` is not installed (package nftables)";
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{why}; CI=true requires it"
        );
        eprintln!("{why}");
        return None;
    }
    let nft = Nft::with_program(TABLE, net.nft_program());
    Some((net, nft))
}

fn el(net: &str, left: i64) -> Element {
    Element {
        net: net.parse().expect("a prefix"),
        expires_at: now() + left,
    }
}

fn nft(net: &DaemonNet, args: &[&str]) -> String {
    let mut all = vec!["nft"];
    all.extend_from_slice(args);
    net.exec_ok(&all)
}

/// The elements of our set `set` as nft lists them: (value as text, timeout, expires).
fn elements(net: &DaemonNet, set: &str) -> Vec<(String, Option<u64>, Option<u64>)> {
    let out = nft(net, &["-j", "list", "set", "inet", TABLE, set]);
    let doc: Value = serde_json::from_str(&out).expect("nft's JSON");
    let set = doc["nftables"]
        .as_array()
        .expect("nftables array")
        .iter()
        .find_map(|i| i.get("set"))
        .expect("the set");
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        v if v.get("prefix").is_some() => {
            format!(
                "{}/{}",
                v["prefix"]["addr"].as_str().unwrap(),
                v["prefix"]["len"]
            )
        }
        v => v.to_string(),
    };
    let mut out: Vec<_> = set["elem"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|e| match e.get("elem") {
            Some(b) => (
                text(&b["val"]),
                b["timeout"].as_u64(),
                b["expires"].as_u64(),
            ),
            None => (text(e), None, None),
        })
        .collect();
    out.sort();
    out
}

fn names(elems: &[(String, Option<u64>, Option<u64>)]) -> Vec<&str> {
    elems.iter().map(|e| e.0.as_str()).collect()
}

#[tokio::test]
async fn reconcile_creates_the_table_and_a_second_changes_nothing() {
    let Some((net, fw)) = setup() else { return };
    let desired = [
        el("198.51.100.66/32", 3600),
        el("203.0.113.0/24", 600),
        el("2001:db8:99:1::/64", 7200),
        el("192.0.2.9/32", -1), // expired: left out
    ];
    let r = fw.reconcile(&desired, now()).await.unwrap();
    assert_eq!(
        r,
        Reconciled {
            created: true,
            added: 3,
            ..Reconciled::default()
        }
    );
    let text = nft(&net, &["list", "table", "inet", TABLE]);
    for needle in [
        "set v4 {",
        "type ipv4_addr",
        "set v6 {",
        "type ipv6_addr",
        "flags interval,timeout",
        "chain input {",
        "type filter hook input priority raw; policy accept;",
        "ip saddr @v4 counter packets 0 bytes 0 drop",
        "ip6 saddr @v6 counter packets 0 bytes 0 drop",
    ] {
        assert!(text.contains(needle), "{needle:?} not in\n{text}");
    }
    // Each element carries the ban's remaining time as its timeout.
    let v4 = elements(&net, "v4");
    assert_eq!(names(&v4), ["198.51.100.66", "203.0.113.0/24"]);
    let v6 = elements(&net, "v6");
    assert_eq!(names(&v6), ["2001:db8:99:1::/64"]);
    for ((_, timeout, expires), left) in v4.iter().chain(&v6).zip([3600, 600, 7200]) {
        let (timeout, expires) = (timeout.unwrap(), expires.unwrap());
        assert!((left - 2..=left).contains(&timeout), "{timeout} for {left}");
        assert!(
            expires <= timeout && expires + 3 >= timeout,
            "{expires} of {timeout}"
        );
    }
    let handles = nft(&net, &["-a", "list", "table", "inet", TABLE]);

    // The same list again (a little later): nothing to do, nothing rewritten.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = fw.reconcile(&desired, now()).await.unwrap();
    assert_eq!(r, Reconciled::default());
    let again = nft(&net, &["-a", "list", "table", "inet", TABLE]);
    let strip = |t: &str| -> String {
        // The "expires" countdown moves; everything else, handles included, must not.
        let words: Vec<&str> = t.split_whitespace().collect();
        words
            .iter()
            .enumerate()
            .filter(|(i, _)| *i == 0 || words[i - 1] != "expires")
            .map(|(_, w)| *w)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(strip(&handles), strip(&again));
}

#[tokio::test]
async fn elements_are_added_removed_and_their_expiry_follows_the_ban() {
    let Some((net, fw)) = setup() else { return };
    let r = fw
        .reconcile(
            &[
                el("198.51.100.1/32", 600),
                el("198.51.100.2/32", 600),
                el("198.51.100.3/32", 600),
                el("2001:db8:99:1::/64", 600),
            ],
            now(),
        )
        .await
        .unwrap();
    assert_eq!(r.added, 4);
    let r = fw
        .reconcile(
            &[
                el("198.51.100.1/32", 600),  // kept
                el("198.51.100.2/32", 7200), // extended: replaced
                el("198.51.100.4/32", 600),  // new
                el("2001:db8:99:2::/64", 60),
            ],
            now(),
        )
        .await
        .unwrap();
    assert_eq!(
        (r.added, r.removed, r.replaced, r.repaired),
        (2, 2, 1, false),
        "{r:?}"
    );
    let v4 = elements(&net, "v4");
    assert_eq!(names(&v4), ["198.51.100.1", "198.51.100.2", "198.51.100.4"]);
    assert!(v4[1].1.unwrap() > 7000, "{v4:?}");
    assert_eq!(names(&elements(&net, "v6")), ["2001:db8:99:2::/64"]);

    // A wider ban arrives over narrower ones already in the set: they go, it comes, in one
    // transaction (interval sets refuse overlaps).
    let r = fw
        .reconcile(
            &[
                el("198.51.100.0/24", 600),
                el("198.51.100.1/32", 600),
                el("2001:db8:99::/48", 600),
            ],
            now(),
        )
        .await
        .unwrap();
    assert!(!r.repaired, "{r:?}");
    assert_eq!(names(&elements(&net, "v4")), ["198.51.100.0/24"]);
    assert_eq!(names(&elements(&net, "v6")), ["2001:db8:99::/48"]);

    // Everything lifted.
    let r = fw.reconcile(&[], now()).await.unwrap();
    assert_eq!((r.removed, r.repaired), (2, false), "{r:?}");
    assert!(elements(&net, "v4").is_empty());
    assert!(elements(&net, "v6").is_empty());
}

#[tokio::test]
async fn a_flushed_set_a_flushed_table_and_a_deleted_table_are_repaired() {
    let Some((net, fw)) = setup() else { return };
    let desired = [
        el("198.51.100.1/32", 600),
        el("198.51.100.2/32", 600),
        el("2001:db8:99:1::/64", 600),
    ];
    fw.reconcile(&desired, now()).await.unwrap();
    let full = (elements(&net, "v4").len(), elements(&net, "v6").len());
    assert_eq!(full, (2, 1));

    nft(&net, &["flush", "set", "inet", TABLE, "v4"]);
    let r = fw.reconcile(&desired, now()).await.unwrap();
    assert!(r.repaired && !r.created && r.added == 2, "{r:?}");
    assert_eq!(elements(&net, "v4").len(), 2);

    // Someone adds an element by hand (no timeout): ours is the only say.
    nft(
        &net,
        &["add", "element", "inet", TABLE, "v4", "{ 203.0.113.7 }"],
    );
    let r = fw.reconcile(&desired, now()).await.unwrap();
    assert!(r.repaired && r.removed == 1, "{r:?}");

    // `flush table` empties the chain: no rule drops anything any more.
    nft(&net, &["flush", "table", "inet", TABLE]);
    let r = fw.reconcile(&desired, now()).await.unwrap();
    assert!(r.repaired && !r.created, "{r:?}");
    let text = nft(&net, &["list", "table", "inet", TABLE]);
    assert!(text.contains("ip saddr @v4 counter"), "{text}");
    assert_eq!(
        (elements(&net, "v4").len(), elements(&net, "v6").len()),
        full
    );

    // A rule of someone else's in our chain.
    nft(&net, &["add", "rule", "inet", TABLE, "input", "accept"]);
    let r = fw.reconcile(&desired, now()).await.unwrap();
    assert!(r.repaired, "{r:?}");
    assert!(!nft(&net, &["list", "table", "inet", TABLE]).contains("accept\n"));

    // A dormant table drops nothing.
    nft(&net, &["add", "table", "inet", TABLE, "{ flags dormant; }"]);
    let r = fw.reconcile(&desired, now()).await.unwrap();
    assert!(r.repaired, "{r:?}");
    assert!(!nft(&net, &["list", "table", "inet", TABLE]).contains("dormant"));

    nft(&net, &["delete", "table", "inet", TABLE]);
    let r = fw.reconcile(&desired, now()).await.unwrap();
    assert!(r.repaired && r.created && r.added == 3, "{r:?}");
    assert_eq!(
        (elements(&net, "v4").len(), elements(&net, "v6").len()),
        full
    );

    // And then left alone again.
    let r = fw.reconcile(&desired, now()).await.unwrap();
    assert_eq!(r, Reconciled::default());
}

#[tokio::test]
async fn other_tables_are_never_touched_and_remove_deletes_only_ours() {
    let Some((net, fw)) = setup() else { return };
    // Another inet table, and one with our name in another family.
    let script = "table inet other {
        set s { type ipv4_addr; flags interval; elements = { 198.51.100.0/24 } }
        chain c { type filter hook input priority -400; policy accept; ip saddr @s accept; }
    }
    table ip pbxguard {
        chain c { type filter hook input priority 0; policy accept; counter; }
    }";
    let mut child = net
        .command("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    let others = || {
        (
            nft(&net, &["list", "table", "inet", "other"]),
            nft(&net, &["list", "table", "ip", "pbxguard"])
                .lines()
                .filter(|l| !l.contains("counter"))
                .collect::<Vec<_>>()
                .join("\n"),
        )
    };
    let before = others();

    assert!(!fw.remove().await.unwrap(), "nothing of ours to remove yet");
    fw.reconcile(&[el("198.51.100.1/32", 600)], now())
        .await
        .unwrap();
    nft(&net, &["flush", "table", "inet", TABLE]);
    assert!(
        fw.reconcile(&[el("198.51.100.2/32", 600)], now())
            .await
            .unwrap()
            .repaired
    );
    assert_eq!(others(), before);

    assert!(fw.remove().await.unwrap());
    let tables = nft(&net, &["list", "tables"]);
    assert!(!tables.contains("table inet pbxguard"), "{tables}");
    assert!(tables.contains("table inet other"), "{tables}");
    assert!(tables.contains("table ip pbxguard"), "{tables}");
    assert_eq!(others(), before);
    assert!(!fw.remove().await.unwrap());

    // After remove, a reconcile makes the table anew: created, not a repair.
    let r = fw.reconcile(&[], now()).await.unwrap();
    assert!(r.created && !r.repaired, "{r:?}");
}

#[tokio::test]
async fn ten_thousand_elements_reconcile_in_one_go() {
    let Some((net, fw)) = setup() else { return };
    let desired: Vec<Element> = (0..10_000u32)
        .map(|i| {
            // Every address of the three IPv4 documentation /24s, then IPv6 /64s.
            let net: IpNet = if i < 768 {
                let [a, b, c] = [[192, 0, 2], [198, 51, 100], [203, 0, 113]][(i / 256) as usize];
                IpNet::from(IpAddr::from([a, b, c, (i % 256) as u8]))
            } else {
                format!("2001:db8:100:{i:x}::/64").parse().unwrap()
            };
            Element {
                net,
                expires_at: now() + 600 + i64::from(i % 100),
            }
        })
        .collect();
    let t = Instant::now();
    let r = fw.reconcile(&desired, now()).await.unwrap();
    let first = t.elapsed();
    assert_eq!((r.added, r.created), (10_000, true));
    let t = Instant::now();
    let r = fw.reconcile(&desired, now()).await.unwrap();
    let second = t.elapsed();
    assert_eq!(r, Reconciled::default());
    let mut more = desired.clone();
    more.push(el("2001:db8:200::/64", 60));
    more.swap_remove(0);
    let r = fw.reconcile(&more, now()).await.unwrap();
    assert_eq!((r.added, r.removed), (1, 1), "{r:?}");
    assert_eq!(elements(&net, "v4").len(), 767);
    assert_eq!(elements(&net, "v6").len(), 10_000 - 768 + 1);
    // Lifting them all (one by one, nft would take minutes: it rebuilds the table instead).
    let t = Instant::now();
    let r = fw.reconcile(&more[..100], now()).await.unwrap();
    let lifted = t.elapsed();
    assert_eq!((r.added, r.removed, r.repaired), (0, 9_900, false), "{r:?}");
    assert_eq!(elements(&net, "v4").len() + elements(&net, "v6").len(), 100);
    let r = fw.reconcile(&more[..100], now()).await.unwrap();
    assert_eq!(r, Reconciled::default());
    eprintln!(
        "10,000 elements: first reconcile {first:?}, unchanged {second:?}, 9,900 lifted {lifted:?}"
    );
}

// ---- real traffic --------------------------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
enum Connect {
    Ok,
    TimedOut,
    Refused(String),
}

/// A TCP connect from this host's side (from `from`, if given) to `to`.
async fn connect(to: SocketAddr, from: Option<IpAddr>) -> Connect {
    let sock = match to {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .unwrap();
    if let Some(from) = from {
        sock.bind(SocketAddr::new(from, 0)).unwrap();
    }
    match tokio::time::timeout(Duration::from_millis(1500), sock.connect(to)).await {
        Ok(Ok(_)) => Connect::Ok,
        Ok(Err(e)) => Connect::Refused(e.to_string()),
        Err(_) => Connect::TimedOut,
    }
}

/// A listener inside the namespace on both families; waits until the host reaches it.
async fn listener(net: &DaemonNet) -> (u16, std::process::Child) {
    let port = 20_000 + (std::process::id() % 20_000) as u16;
    let child = net.spawn(&[
        "socat",
        &format!("TCP6-LISTEN:{port},ipv6only=0,reuseaddr,fork"),
        "/dev/null",
    ]);
    let to = SocketAddr::new(net.daemon_v4.into(), port);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match connect(to, None).await {
            Connect::Ok => return (port, child),
            other if Instant::now() > deadline => panic!("socat never listened: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test]
async fn a_banned_client_cannot_connect_and_everyone_else_can() {
    let Some((net, fw)) = setup() else { return };
    let (port, mut socat) = listener(&net).await;
    let v4 = SocketAddr::new(net.daemon_v4.into(), port);
    let v6 = SocketAddr::new(net.daemon_v6.into(), port);
    let host_v6 = Some(IpAddr::from(net.host_v6));
    let other_v6 = Some(IpAddr::from(net.host_v6_other));
    // Another table accepts everything on input, earlier than ours: a drop anywhere drops.
    nft(&net, &["add", "table", "inet", "permissive"]);
    nft(
        &net,
        &[
            "add",
            "chain",
            "inet",
            "permissive",
            "c",
            "{ type filter hook input priority -400; policy accept; }",
        ],
    );
    nft(&net, &["add", "rule", "inet", "permissive", "c", "accept"]);

    assert_eq!(connect(v4, None).await, Connect::Ok);
    assert_eq!(connect(v6, host_v6).await, Connect::Ok);
    assert_eq!(connect(v6, other_v6).await, Connect::Ok);
    let r = fw.reconcile(&[], now()).await.unwrap();
    assert_eq!(r.dropped_packets, 0);

    // The host's IPv4 address and the link's IPv6 /64.
    let bans = [
        Element {
            net: IpNet::from(IpAddr::from(net.host_v4)),
            expires_at: now() + 600,
        },
        Element {
            net: IpNet::V6(net.link_v6_net),
            expires_at: now() + 600,
        },
    ];
    fw.reconcile(&bans, now()).await.unwrap();
    assert_eq!(connect(v4, None).await, Connect::TimedOut);
    assert_eq!(connect(v6, host_v6).await, Connect::TimedOut);
    // The other /64 of the same host is not banned.
    assert_eq!(connect(v6, other_v6).await, Connect::Ok);
    let r = fw.reconcile(&bans, now()).await.unwrap();
    assert!(r.dropped_packets >= 2, "{r:?}");
    let dropped = r.dropped_packets;

    // A repair keeps the count (and the drop).
    nft(&net, &["flush", "table", "inet", TABLE]);
    assert_eq!(
        connect(v4, None).await,
        Connect::Ok,
        "flushed: nothing drops"
    );
    let r = fw.reconcile(&bans, now()).await.unwrap();
    assert!(r.repaired && r.dropped_packets >= dropped, "{r:?}");
    assert_eq!(connect(v4, None).await, Connect::TimedOut);

    // Unbanned: both connect again.
    fw.reconcile(&[], now()).await.unwrap();
    assert_eq!(connect(v4, None).await, Connect::Ok);
    assert_eq!(connect(v6, host_v6).await, Connect::Ok);

    // The kernel lifts a ban on its own when it expires, without another reconcile.
    let short = [Element {
        net: IpNet::from(IpAddr::from(net.host_v4)),
        expires_at: now() + 3,
    }];
    fw.reconcile(&short, now()).await.unwrap();
    assert_eq!(connect(v4, None).await, Connect::TimedOut);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(connect(v4, None).await, Connect::Ok);

    // remove() lifts everything.
    fw.reconcile(&bans, now()).await.unwrap();
    assert_eq!(connect(v6, host_v6).await, Connect::TimedOut);
    assert!(fw.remove().await.unwrap());
    assert_eq!(connect(v6, host_v6).await, Connect::Ok);
    assert_eq!(connect(v4, None).await, Connect::Ok);
    let _ = socat.kill();
    let _ = socat.wait();
}
