//! The one ban list end to end, with the daemon on loopback and `[bans] firewall = "none"`:
//! `pbxguard ban …` and the admin API, bad input, what is never banned, bans by failed web
//! logins, and a banned address refused by the HTTPS listener within 2 s of a CLI change (the
//! client connects from a documentation address of this host, since loopback is never banned).
//! The kernel side (nftables, network namespaces, Asterisk's security events) is in
//! tests/firewall.rs.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::{Daemon, Env};

const PW: &str = "correct horse battery";

fn setup(bans: &str) -> (Env, Daemon) {
    let env = Env::new();
    let text = format!(
        "{}\ntrusted_proxies = [\"127.0.0.1/32\"]\n[bans]\n{bans}\n",
        env.config_text(env.http_port, env.redirect_port, "")
    );
    env.write_config(&text);
    env.init();
    env.add_user("root", 9, PW);
    env.add_user("bob", 2, PW);
    let d = env.start();
    (env, d)
}

fn list(env: &Env) -> serde_json::Value {
    serde_json::from_slice(&env.ok(&["ban", "list", "--json"], b"")).expect("ban list is JSON")
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Whether a TLS-less TCP connect from `src` to the HTTPS port gets a TLS server hello: a
/// banned address is closed before the handshake.
fn https_answers_from(env: &Env, src: IpAddr) -> bool {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "3",
            "--interface",
            &src.to_string(),
            "--cacert",
            &env.cert().display().to_string(),
            &format!("https://localhost:{}/healthz", env.http_port),
        ])
        .output()
        .expect("curl is installed");
    String::from_utf8_lossy(&out.stdout).trim() == "200"
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

#[test]
fn the_cli_bans_lists_and_lifts_and_the_daemon_follows_within_two_seconds() {
    let (env, _d) = setup("duration = \"1h\"");
    assert_eq!(list(&env), serde_json::json!([]));

    let Some(net) = common::netns::PhoneNet::create() else {
        return;
    };
    let src = IpAddr::V4(net.host_ip);
    assert!(https_answers_from(&env, src), "not banned yet");
    let t = Instant::now();
    env.ok(
        &[
            "ban",
            "add",
            &src.to_string(),
            "--duration",
            "2h",
            "--reason",
            "seen scanning",
        ],
        b"",
    );
    let took = wait_for(
        "the daemon refusing the banned address",
        Duration::from_secs(2),
        || !https_answers_from(&env, src),
    );
    println!(
        "CLI ban enforced after {:?} (connect check took {took:?})",
        t.elapsed()
    );
    // Loopback is never refused.
    assert_eq!(env.curl_https("/healthz", &[]).status.code(), Some(0));

    // A prefix of the other documentation range than the client's.
    let prefix = if src.to_string().starts_with("192.0.2.") {
        "198.51.100.0/24"
    } else {
        "192.0.2.0/24"
    };
    env.ok(&["ban", "add", prefix], b"");
    env.ok(
        &["sip", "ban", "add", "2001:db8:1::5", "--duration", "30m"],
        b"",
    );
    let bans = list(&env);
    let rows = bans.as_array().unwrap();
    assert_eq!(rows.len(), 3, "{bans}");
    let find = |a: &str| rows.iter().find(|r| r["address"] == a).cloned();
    let manual = find(&src.to_string()).expect("the first ban");
    assert_eq!(manual["source"], "manual");
    assert_eq!(manual["reason"], "seen scanning");
    assert_eq!(manual["hits"], 1);
    assert!(manual["node"].is_string());
    let created = manual["created_at"].as_str().unwrap();
    let expires = manual["expires_at"].as_str().unwrap();
    assert!(created.ends_with('Z') && expires > created, "{manual}");
    assert!(find(prefix).is_some(), "{bans}");
    assert!(
        find("2001:db8:1::/64").is_some(),
        "an IPv6 address is banned by its /64: {bans}"
    );
    // Soonest to end first: the 30-minute ban.
    assert_eq!(rows[0]["address"], "2001:db8:1::/64");

    // The audit log keeps who did it.
    let audit = env.sql("SELECT action || ' ' || target FROM audit_log WHERE action LIKE 'ban.%'");
    assert!(audit.contains(&format!("ban.add {src}")), "{audit}");

    env.ok(&["ban", "rm", &src.to_string()], b"");
    wait_for("the lifted ban ending", Duration::from_secs(2), || {
        https_answers_from(&env, src)
    });
    let out = env.run(&["ban", "rm", &src.to_string()], b"");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no ban on"), "{}", stderr(&out));
    env.ok(&["ban", "rm", "--all"], b"");
    assert_eq!(list(&env), serde_json::json!([]));
}

#[test]
fn bad_input_and_never_banned_addresses_are_refused_with_the_reason() {
    let (env, d) = setup("allow = [\"198.51.100.128/25\"]");
    let cases: &[(&[&str], &str)] = &[
        (&["ban", "add", "banana"], "is not an IP address or prefix"),
        (
            &["ban", "add", "192.0.2.300"],
            "is not an IP address or prefix",
        ),
        (&["ban", "add", "192.0.2.7/24"], "did you mean 192.0.2.0/24"),
        (&["ban", "add", "0.0.0.0/0"], "wider than a /8"),
        (&["ban", "add", "127.0.0.1"], "never banned: loopback"),
        (&["ban", "add", "::1"], "never banned: loopback"),
        (
            &["ban", "add", "198.51.100.130"],
            "overlaps 198.51.100.128/25 in [bans] allow",
        ),
        (
            &["ban", "add", "198.51.100.0/24"],
            "overlaps 198.51.100.128/25",
        ),
        // The proxy the web tier trusts.
        (&["ban", "add", "127.0.0.0/8"], "never banned"),
        (
            &["ban", "add", "192.0.2.1", "--duration", "0s"],
            "between 1 second and 10 years",
        ),
        (
            &["ban", "add", "192.0.2.1", "--duration", "20y"],
            "between 1 second and 10 years",
        ),
        (
            &["ban", "add", "192.0.2.1", "--reason", "a\u{7}b"],
            "control characters",
        ),
        (&["ban", "rm", "not-an-ip"], "is not an IP address"),
    ];
    for (args, want) in cases {
        let out = env.run(args, b"");
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
    let out = env.run(&["ban", "add", "192.0.2.1", "--duration", "soon"], b"");
    assert_ne!(out.status.code(), Some(0));
    assert_eq!(list(&env), serde_json::json!([]), "nothing was banned");
    // The daemon kept serving.
    assert_eq!(env.curl_https("/healthz", &[]).status.code(), Some(0));
    assert!(d.log().is_empty() || !d.log().contains("panicked"));
}

#[test]
fn the_admin_api_bans_lists_and_lifts_and_needs_the_admin_role() {
    let (env, _d) = setup("");
    let root = env.token("root", PW);
    let bob = env.token("bob", PW);
    let auth = |t: &str| format!("Authorization: Bearer {t}");
    let json = "Content-Type: application/json";

    assert_eq!(
        env.request("GET", "/api/v1/admin/bans", &[&auth(&bob)], None)
            .status,
        403
    );
    assert_eq!(
        env.request("GET", "/api/v1/admin/bans", &[], None).status,
        401
    );
    let r = env.request(
        "POST",
        "/api/v1/admin/bans",
        &[&auth(&bob), json],
        Some(r#"{"address":"192.0.2.50"}"#),
    );
    assert_eq!(r.status, 403);

    let r = env.request(
        "POST",
        "/api/v1/admin/bans",
        &[&auth(&root), json],
        Some(r#"{"address":"192.0.2.50","duration":"2h","reason":"console"}"#),
    );
    assert_eq!(r.status, 201, "{r:?}");
    let ban = r.json();
    assert_eq!(ban["address"], "192.0.2.50");
    assert_eq!(ban["source"], "manual");
    assert_eq!(ban["reason"], "console");
    let r = env.request("GET", "/api/v1/admin/bans", &[&auth(&root)], None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()[0]["address"], "192.0.2.50");
    assert_eq!(
        list(&env),
        r.json(),
        "the API and the CLI show the same list"
    );

    for (body, status, code) in [
        (r#"{"address":"127.0.0.1"}"#, 422, "never_banned"),
        (r#"{"address":"banana"}"#, 400, "bad_request"),
        (
            r#"{"address":"192.0.2.1","duration":"forever"}"#,
            400,
            "bad_request",
        ),
        (r#"{"address":"192.0.2.1","extra":1}"#, 400, ""),
        (r#"{"nothing":"here"}"#, 400, ""),
    ] {
        let r = env.request(
            "POST",
            "/api/v1/admin/bans",
            &[&auth(&root), json],
            Some(body),
        );
        assert_eq!(r.status, status, "{body}: {r:?}");
        if !code.is_empty() {
            assert_eq!(r.json()["error"], code, "{body}: {r:?}");
        }
    }
    let r = env.request("DELETE", "/api/v1/admin/bans", &[&auth(&root)], None);
    assert_eq!(r.status, 400, "neither address nor all: {r:?}");
    let r = env.request(
        "DELETE",
        "/api/v1/admin/bans?address=192.0.2.50",
        &[&auth(&root)],
        None,
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["count"], 1);
    let r = env.request(
        "DELETE",
        "/api/v1/admin/bans?all=true",
        &[&auth(&root)],
        None,
    );
    assert_eq!(r.json()["count"], 0);
    let audit = env.sql("SELECT actor FROM audit_log WHERE action = 'ban.rm'");
    assert!(audit.contains("api:root"), "{audit}");
}

#[test]
fn failed_web_logins_from_one_address_ban_it() {
    let (env, _d) = setup("http_threshold = 4\nwindow = \"1m\"");
    let from = |ip: &str| format!("X-Forwarded-For: {ip}");
    for name in ["a1", "a2", "a3", "a4"] {
        let r = env.login(name, "guess guess", &[&from("192.0.2.77")]);
        assert_eq!(r.status, 401, "{r:?}");
    }
    let bans = {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let b = list(&env);
            if b[0].is_object() || Instant::now() > end {
                break b;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert_eq!(bans[0]["address"], "192.0.2.77", "{bans}");
    assert_eq!(bans[0]["source"], "http", "{bans}");
    assert_eq!(bans[0]["reason"], "login_failures", "{bans}");
    // Banned: even the right password, answered like a throttled attempt.
    let r = env.login("root", PW, &[&from("192.0.2.77")]);
    assert_eq!(r.status, 429, "{r:?}");
    assert!(r.json()["retry_after"].as_u64().unwrap() > 3000);
    // Another address, and the proxy itself, are not affected.
    assert_eq!(env.login("root", PW, &[&from("192.0.2.78")]).status, 200);
    assert_eq!(env.login("root", PW, &[]).status, 200);
}

/// A child process killed on drop (panics included).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The addresses `ban list` has from feeds, sorted.
fn feed_rows(env: &Env) -> Vec<String> {
    let mut rows: Vec<String> = list(env)
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["source"] == "feed")
        .map(|r| r["address"].as_str().unwrap().to_string())
        .collect();
    rows.sort();
    rows
}

#[test]
fn a_feed_served_over_http_is_imported_followed_kept_when_broken_and_lifted_when_removed() {
    let env = Env::new();
    let www = env.path("www");
    std::fs::create_dir_all(&www).unwrap();
    let list_file = www.join("list.txt");
    std::fs::write(
        &list_file,
        "# a blocklist\n192.0.2.10\n198.51.100.0/24 ; a network\ngarbage line\n127.0.0.1\n",
    )
    .unwrap();
    let port = common::free_port();
    let _server = Killed(
        std::process::Command::new("/usr/bin/python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(&www)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3"),
    );
    let feed = |ttl: &str, url: &str| {
        format!(
            "[[bans.feeds]]\nname = \"office\"\nurl = \"{url}\"\nformat = \"plain\"\ninterval = \"1m\"\nttl = \"{ttl}\"\n"
        )
    };
    let url = format!("http://127.0.0.1:{port}/list.txt");
    let base = env.config_text(env.http_port, env.redirect_port, "");
    env.write_config(&format!("{base}\n{}", feed("10m", &url)));
    env.init();
    let d = env.start();
    let want = |rows: &[&str]| rows.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // Imported at start; the garbage line is skipped, loopback is never banned.
    wait_for("the feed imported", Duration::from_secs(10), || {
        feed_rows(&env) == want(&["192.0.2.10", "198.51.100.0/24"])
    });
    let bans = list(&env);
    assert!(
        bans[0]["reason"].as_str().unwrap().contains("office"),
        "{bans}"
    );
    // The feed drops an entry and adds one; a changed ttl restarts it at the reload.
    std::fs::write(&list_file, "198.51.100.0/24\n192.0.2.11\n").unwrap();
    env.write_config(&format!("{base}\n{}", feed("11m", &url)));
    d.signal("HUP");
    wait_for("the feed's change applied", Duration::from_secs(10), || {
        feed_rows(&env) == want(&["192.0.2.11", "198.51.100.0/24"])
    });
    // Broken (404 now, then an HTML page): the last good list stays.
    std::fs::remove_file(&list_file).unwrap();
    env.write_config(&format!("{base}\n{}", feed("12m", &url)));
    d.signal("HUP");
    let failed = || {
        let metrics = env.curl_https("/metrics", &[]);
        String::from_utf8_lossy(&metrics.stdout).lines().any(|l| {
            l.starts_with("pbxguard_ban_feed_refreshes_total")
                && l.contains("feed=\"office\"")
                && l.contains("result=\"failed\"")
        })
    };
    wait_for(
        "the failed refresh counted",
        Duration::from_secs(10),
        failed,
    );
    assert_eq!(feed_rows(&env), want(&["192.0.2.11", "198.51.100.0/24"]));
    // Removed from the configuration: its bans are lifted.
    env.write_config(&base);
    d.signal("HUP");
    wait_for(
        "the removed feed's bans lifted",
        Duration::from_secs(10),
        || feed_rows(&env).is_empty(),
    );
}
