//! Several pbxguard nodes on one PostgreSQL database, as real processes: sessions, lockouts,
//! revocations and recording links across nodes, and a database outage ridden out without a
//! restart (issue 19). Each test makes its own throwaway cluster (tests/common/postgres.rs).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::postgres::Postgres;
use common::{curl, status, text, Daemon, Env};

const KEY: [u8; 32] = [7; 32];

/// A node: its own folder, ports, certificate and recordings folder; `node_name` NAME; the
/// shared database and master key; `extra` appended to `[daemon]`, `sections` to the file.
fn node(url: &str, name: &str, extra: &str, sections: &str) -> Env {
    let env = Env::new();
    // Under PBXGUARD_TEST_STORE=postgres the Env already names a database: this one wins.
    let config: String = std::fs::read_to_string(&env.config)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("database = "))
        .map(|l| format!("{l}\n"))
        .collect();
    let rec = env.path("recordings");
    std::fs::create_dir_all(&rec).unwrap();
    env.write_config(&format!(
        "{}\n[recordings]\nroot = \"{}\"\n{sections}\n",
        config.replace(
            "[daemon]\n",
            &format!(
                "[daemon]\ndatabase = \"{url}\"\ninit_if_missing = true\nnode_name = \"{name}\"\n{extra}\n"
            ),
        ),
        rec.display()
    ));
    let etc = env.path("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o700)).unwrap();
    let file = env.path("etc/master.key");
    std::fs::write(&file, KEY).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    env
}

/// Two nodes started at once on an empty database.
fn two_nodes(pg: &Postgres, db: &str, extra: &str, sections: [&str; 2]) -> ([Env; 2], Vec<Daemon>) {
    let url = pg.create_database(db);
    let nodes = [
        node(&url, "pbx-a", extra, sections[0]),
        node(&url, "pbx-b", extra, sections[1]),
    ];
    let daemons: Vec<_> = std::thread::scope(|scope| {
        let starts: Vec<_> = nodes.iter().map(|n| scope.spawn(|| n.start())).collect();
        starts.into_iter().map(|s| s.join().unwrap()).collect()
    });
    (nodes, daemons)
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn json(out: &[u8]) -> serde_json::Value {
    serde_json::from_slice(out).expect("JSON")
}

/// Waits until `env`'s daemon follows the change feed (its log says so).
fn following(daemon: &Daemon) {
    daemon.wait_for_log("following the database's change notifications");
}

#[test]
fn nodes_share_sessions_lockouts_revocations_and_links() {
    let Some(pg) = Postgres::start("nodes_share_sessions") else {
        return;
    };
    let db = "pbxguard";
    let (nodes, daemons) = two_nodes(&pg, db, "", ["", ""]);
    let [a, b] = &nodes;
    // Two nodes migrating one empty database at once applied each migration once.
    let versions = pg.psql(
        db,
        "SELECT COUNT(*), COUNT(DISTINCT version) FROM _sqlx_migrations",
    );
    let (total, distinct) = versions.split_once('|').unwrap();
    assert_eq!(total, distinct, "{versions}");
    for d in &daemons {
        following(d);
    }
    // Each node announces its public_url.
    wait_until(
        "both nodes in the nodes table",
        Duration::from_secs(10),
        || {
            pg.psql(
                db,
                "SELECT COUNT(*) FROM nodes WHERE public_url LIKE 'https://localhost:%'",
            ) == "2"
        },
    );

    a.add_user("agent1", 1, "agent one password");
    a.add_user("admin", 9, "admin password here");

    // Logged in on A, accepted on B; the session and the history name node A, on B.
    let token = a.token("agent1", "agent one password");
    assert_eq!(b.check(&token, &[]).status, 200);
    let sessions = json(&b.ok(&["session", "list", "--user", "agent1", "--json"], b""));
    assert_eq!(sessions[0]["node"], "pbx-a", "{sessions}");
    let history = json(&b.ok(&["history", "--user", "agent1", "--json"], b""));
    assert_eq!(history[0]["node"], "pbx-a", "{history}");
    assert_eq!(history[0]["result"], "ok");

    // Revoked on B, refused on A: measured over 200 revocations with a kept-alive client.
    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/revocations.py"))
        .args([
            &format!("https://localhost:{}", a.http_port),
            a.cert().to_str().unwrap(),
            &format!("https://localhost:{}", b.http_port),
            b.cert().to_str().unwrap(),
            "agent1",
            "agent one password",
            "admin",
            "admin password here",
            "200",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let figures = json(&out.stdout);
    println!("revocation on B refused on A, over 200 revocations: {figures}");
    assert_eq!(figures["n"], 200);
    assert_eq!(figures["over_1s"], 0, "{figures}");
    // Measured on the cache path: A trusted its caches throughout (had it lost the change
    // feed, every check would have read the database and the figures would prove nothing).
    assert!(
        !daemons[0]
            .log()
            .contains("lost the database's change notifications"),
        "{}",
        daemons[0].log()
    );

    // A link minted on A for a file on B's disk: A answers 307 to B, which serves it.
    let file = b.path("recordings/2026/12/call.wav");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let body: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &body).unwrap();
    let admin = a.token("admin", "admin password here");
    let auth = format!("Authorization: Bearer {admin}");
    let minted = a.request(
        "POST",
        "/api/v1/recordings/links",
        &[&auth, "Content-Type: application/json"],
        Some(r#"{"path":"2026/12/call.wav","node":"pbx-b"}"#),
    );
    assert_eq!(minted.status, 200, "{minted:?}");
    let link = minted.json()["url"].as_str().unwrap().to_string();
    assert!(link.starts_with(&format!("https://localhost:{}/rec/", a.http_port)));
    let first = curl(&[
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        "--cacert",
        a.cert().to_str().unwrap(),
        &link,
    ]);
    let path = link.split_once("/rec/").unwrap().1;
    assert_eq!(
        text(&first),
        format!("307 https://localhost:{}/rec/{path}", b.http_port)
    );
    let bundle = a.path("both.pem");
    let mut pems = std::fs::read(a.cert()).unwrap();
    pems.extend(std::fs::read(b.cert()).unwrap());
    std::fs::write(&bundle, pems).unwrap();
    let out = bundle.with_extension("out");
    let followed = curl(&[
        "-sS",
        "-L",
        "-o",
        out.to_str().unwrap(),
        "-w",
        "%{http_code}",
        "--cacert",
        bundle.to_str().unwrap(),
        &link,
    ]);
    assert_eq!(text(&followed), "200");
    assert_eq!(std::fs::read(&out).unwrap(), body);
    let links = json(&b.ok(&["recording", "list", "--json"], b""));
    assert_eq!(links[0]["node"], "pbx-b", "{links}");

    // Never a redirect to itself (a node renamed, or nodes sharing one public_url), nor to a
    // node that stopped refreshing its row: 503 node_unknown instead of a loop.
    let code = |link: &str| {
        text(&curl(&[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
            a.cert().to_str().unwrap(),
            link,
        ]))
    };
    let b_url = pg.psql(db, "SELECT public_url FROM nodes WHERE name = 'pbx-b'");
    // B refreshes its row every 30 s and may undo an edit in between: edited again then.
    let answers_after = |edit: &str| {
        (0..3)
            .map(|_| {
                pg.psql(db, edit);
                code(&link)
            })
            .find(|c| c != "307")
            .unwrap_or_else(|| "307".into())
    };
    let own = format!(
        "UPDATE nodes SET public_url = 'https://localhost:{}' WHERE name = 'pbx-b'",
        a.http_port
    );
    assert_eq!(answers_after(&own), "503");
    let stale = format!(
        "UPDATE nodes SET public_url = '{b_url}', seen_at = {} WHERE name = 'pbx-b'",
        unix_now() - 1000
    );
    assert_eq!(answers_after(&stale), "503");
    pg.psql(
        db,
        "UPDATE nodes SET seen_at = seen_at + 1000 WHERE name = 'pbx-b'",
    );
    assert_eq!(code(&link), "307");

    // A node nobody announced is refused at minting.
    let unknown = a.request(
        "POST",
        "/api/v1/recordings/links",
        &[&auth, "Content-Type: application/json"],
        Some(r#"{"path":"2026/12/call.wav","node":"pbx-z"}"#),
    );
    assert_eq!(unknown.status, 400, "{unknown:?}");
    assert_eq!(unknown.json()["error"], "unknown_node");

    // A link revoked through B's CLI stops on A at once.
    let id = links[0]["id"].as_str().unwrap();
    b.ok(&["recording", "revoke", id], b"");
    wait_until(
        "the revoked link refused on A",
        Duration::from_secs(1),
        || {
            let r = curl(&[
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--cacert",
                a.cert().to_str().unwrap(),
                &link,
            ]);
            text(&r) == "403"
        },
    );

    // Failures on A lock the user (and the address) out on B too; last, as the address
    // stays locked.
    a.add_user("agent2", 1, "agent two password");
    for _ in 0..10 {
        assert_eq!(a.login("agent2", "wrong", &[]).status, 401);
    }
    let locked = b.login("agent2", "agent two password", &[]);
    assert_eq!(locked.status, 429, "{locked:?}");
    drop(daemons);
}

#[test]
fn a_database_outage_is_ridden_out_without_a_restart() {
    let Some(pg) = Postgres::start("database_outage") else {
        return;
    };
    let db = "pbxguard";
    let realtime = common::free_port();
    let (nodes, daemons) = two_nodes(
        &pg,
        db,
        "store_outage_grace = \"4s\"",
        [
            &format!("[realtime]\nlisten = \"127.0.0.1:{realtime}\"\nusername = \"asterisk\"\n"),
            "",
        ],
    );
    let [a, b] = &nodes;
    for d in &daemons {
        following(d);
    }
    a.ok(
        &["secret", "set", "realtime/password"],
        b"realtime-password\n",
    );
    a.set_sip_credential("1001", "sip-password-1001");
    // Asterisk asking for a credential (as res_config_curl does): (status, body).
    let asterisk = || {
        let out = curl(&[
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            "--data-binary",
            "id=1001",
            &format!(
                "http://asterisk:realtime-password@127.0.0.1:{realtime}/realtime/ps_auths/single"
            ),
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse::<u16>().unwrap_or(0), body.to_string())
    };
    let (code, body) = asterisk();
    assert_eq!(code, 200);
    assert!(body.contains("sip-password-1001"), "{body}");
    a.add_user("agent1", 1, "agent one password");
    let token = a.token("agent1", "agent one password");
    assert_eq!(b.check(&token, &[]).status, 200);
    let pids: Vec<u32> = daemons.iter().map(Daemon::pid).collect();

    // Checks keep coming while the database goes away and comes back.
    let stop_load = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            let mut answers = std::collections::BTreeMap::<u16, u32>::new();
            // Bounded too: a failed assertion below must not leave the scope waiting for it.
            let until = Instant::now() + Duration::from_secs(120);
            while !stop_load.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < until {
                *answers.entry(b.check(&token, &[]).status).or_default() += 1;
            }
            answers
        });

        assert_eq!(a.check(&token, &[]).status, 200);
        let verified = Instant::now();
        pg.stop_server();

        // The check answers from sessions verified within the grace, quickly.
        let started = Instant::now();
        let r = a.check(&token, &[]);
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );

        // A login is refused at once with store_unavailable (three attempts, each to be
        // recorded once the database is back).
        for _ in 0..3 {
            let started = Instant::now();
            let r = a.login("agent1", "agent one password", &[]);
            assert_eq!(r.status, 503, "{r:?}");
            assert_eq!(r.json()["error"], "store_unavailable");
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{:?}",
                started.elapsed()
            );
        }

        // Realtime: 500 with an empty body (Asterisk keeps what it has).
        assert_eq!(asterisk(), (500, String::new()));

        // Past the grace (and a second, the grace counting whole seconds): 401, within 3 s.
        std::thread::sleep(Duration::from_secs(5).saturating_sub(verified.elapsed()));
        let started = Instant::now();
        assert_eq!(a.check(&token, &[]).status, 401);
        assert!(started.elapsed() < Duration::from_secs(3));

        pg.start_server();
        // Back without a restart: the check and logins work again on both nodes.
        wait_until(
            "checks accepted again on A",
            Duration::from_secs(15),
            || a.check(&token, &[]).status == 200,
        );
        wait_until("logins on B again", Duration::from_secs(15), || {
            b.login("agent1", "agent one password", &[]).status == 200
        });
        assert_eq!(asterisk().0, 200);
        stop_load.store(true, std::sync::atomic::Ordering::Relaxed);
        let answers = load.join().unwrap();
        println!("checks on B during the outage, by status: {answers:?}");
        assert!(answers.contains_key(&200));
        assert!(
            answers.keys().all(|s| [200, 401].contains(s)),
            "{answers:?}"
        );
    });

    // The attempts made during the outage reached the history.
    wait_until(
        "the outage's login attempts in the history",
        Duration::from_secs(10),
        || {
            pg.psql(
            db,
            "SELECT COUNT(*) FROM login_history WHERE result = 'store_unavailable' AND node = 'pbx-a'",
        ) == "3"
        },
    );
    // The change feed is followed again: a revocation on B is refused on A at once.
    for d in &daemons {
        wait_until(
            "change feed followed again",
            Duration::from_secs(15),
            || {
                d.log()
                    .matches("following the database's change notifications")
                    .count()
                    >= 2
            },
        );
    }
    let fresh = a.token("agent1", "agent one password");
    assert_eq!(a.check(&fresh, &[]).status, 200);
    let sessions = json(&b.ok(&["session", "list", "--user", "agent1", "--json"], b""));
    let sid = sessions
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect::<Vec<_>>();
    b.ok(&["session", "revoke", "--user", "agent1"], b"");
    wait_until(
        "revocation after the outage",
        Duration::from_secs(1),
        || a.check(&fresh, &[]).status == 401,
    );
    assert!(!sid.is_empty());
    let still: Vec<u32> = daemons.iter().map(Daemon::pid).collect();
    assert_eq!(pids, still, "no daemon restarted");
    for n in &nodes {
        assert_eq!(status(&n.curl_https("/healthz", &[])), 200);
    }
    drop(daemons);
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The TOTP code `oathtool` computes for `secret` (base32) at unix time `at`.
fn totp(secret: &str, at: i64) -> String {
    let out = Command::new("oathtool")
        .args(["--totp", "-b", secret, "-N", &format!("@{at}")])
        .output()
        .expect("oathtool is installed");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn post_json(env: &Env, path: &str, bearer: Option<&str>, body: serde_json::Value) -> common::Resp {
    let auth = bearer.map(|t| format!("Authorization: Bearer {t}"));
    let mut headers = vec!["Content-Type: application/json"];
    if let Some(a) = &auth {
        headers.push(a);
    }
    env.request("POST", path, &headers, Some(&body.to_string()))
}

#[test]
fn mfa_ami_clients_and_sip_bans_reach_every_node() {
    use common::ami::{header, AmiClient, AmiPeer};
    use common::sip::{base_headers, request, rnd, SipPeer, SipTls, ORIGIN};

    let Some(pg) = Postgres::start("mfa_ami_sip_across_nodes") else {
        return;
    };
    let url = pg.create_database("pbxguard");
    let sip_peer = SipPeer::start(&["1001:pw1001"], &[]);
    let ami_peer = AmiPeer::start_with(&[("pbxguard", "upstream-secret", "all", "all")], &[]);
    let ports: Vec<(u16, u16, u16)> = (0..2)
        .map(|_| {
            (
                common::free_port(),
                common::free_port(),
                common::free_port(),
            )
        })
        .collect();
    let nodes: Vec<Env> = ["pbx-a", "pbx-b"]
        .iter()
        .zip(&ports)
        .map(|(name, (tls, wss, ami))| {
            let env = node(&url, name, "", "");
            let config = std::fs::read_to_string(&env.config).unwrap();
            env.write_config(&format!(
                "{config}\n[sip]\ntls_listen = \"127.0.0.1:{tls}\"\nwss_listen = \"127.0.0.1:{wss}\"\n\
                 upstream = \"127.0.0.1:{}\"\nupstream_bind = \"127.0.0.1:0\"\nwss_origins = [\"{ORIGIN}\"]\n\
                 \n[ami]\nlisten = \"127.0.0.1:{ami}\"\nupstream = \"127.0.0.1:{}\"\nupstream_timeout = \"2s\"\n",
                sip_peer.udp,
                ami_peer.port()
            ));
            env
        })
        .collect();
    let (a, b) = (&nodes[0], &nodes[1]);
    // The shared vault first (through A), with Asterisk's AMI secret in it; then both nodes.
    a.init();
    a.ok(&["secret", "set", "ami/upstream"], b"upstream-secret");
    let daemons: Vec<Daemon> = nodes.iter().map(Env::start).collect();
    for (d, (tls, _, ami)) in daemons.iter().zip(&ports) {
        d.wait_for_port(*tls);
        d.wait_for_port(*ami);
        following(d);
    }

    // TOTP enrolled on A is asked for, and accepted, at a login on B; the code of the next
    // step, as the confirmation's step is spent (on every node: it is stored).
    a.add_user("alice", 5, "alice password here");
    let jwt = a.token("alice", "alice password here");
    let e = post_json(
        a,
        "/api/v1/auth/totp/enroll",
        Some(&jwt),
        serde_json::json!({}),
    );
    assert_eq!(e.status, 200, "{e:?}");
    let secret = e.json()["secret"].as_str().unwrap().to_string();
    let confirmed_at = unix_now();
    let c = post_json(
        a,
        "/api/v1/auth/totp/confirm",
        Some(&jwt),
        serde_json::json!({ "code": totp(&secret, confirmed_at) }),
    );
    assert_eq!(c.status, 200, "{c:?}");
    let pending = b.login("alice", "alice password here", &[]);
    assert_eq!(pending.json()["status"], "mfa_required", "{pending:?}");
    let token = pending.json()["mfa_token"].as_str().unwrap().to_string();
    let replayed = post_json(
        b,
        "/api/v1/auth/mfa",
        None,
        serde_json::json!({ "mfa_token": token, "method": "totp", "code": totp(&secret, confirmed_at) }),
    );
    assert_eq!(
        replayed.status, 401,
        "the code spent on A is refused on B: {replayed:?}"
    );
    let done = post_json(
        b,
        "/api/v1/auth/mfa",
        None,
        serde_json::json!({ "mfa_token": token, "method": "totp", "code": totp(&secret, confirmed_at + 30) }),
    );
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(
        a.check(done.json()["token"].as_str().unwrap(), &[]).status,
        200
    );

    // An AMI client added through A's CLI logs in on B's gateway; removed through A's CLI,
    // its session on B ends.
    a.add_ami_client(
        "crm",
        "crm-secret-value-1",
        &["--allow", "Originate", "--context", "from-crm"],
    );
    let mut crm = AmiClient::connect(ports[1].2);
    let r = crm.login("crm", "crm-secret-value-1");
    assert_eq!(
        header(&r, "Message"),
        Some("Authentication accepted"),
        "{r:?}"
    );
    a.ok(&["ami", "user", "rm", "crm"], b"");
    assert!(
        crm.wait_closed(Duration::from_secs(15)),
        "the removed client's session on B ended"
    );
    let mut again = AmiClient::connect(ports[1].2);
    let r = again.login("crm", "crm-secret-value-1");
    assert_ne!(
        header(&r, "Message"),
        Some("Authentication accepted"),
        "{r:?}"
    );

    // A scanner banned by A's SIP edge is refused by B's within a second. It connects from a
    // documentation address of this host: loopback is never banned.
    let Some(net) = common::netns::PhoneNet::create() else {
        return;
    };
    let src = Some(std::net::IpAddr::V4(net.host_ip));
    let mut scanner =
        SipTls::try_connect_from(src, ports[0].0, &a.cert()).expect("scanner connects");
    let mut l = base_headers("OPTIONS", "100", "100", "TLS", &rnd(), 1);
    l.retain(|h| !h.starts_with("User-Agent"));
    l.push("User-Agent: friendly-scanner".into());
    scanner.try_send(&request("OPTIONS sip:100@pbx.test SIP/2.0", &l, ""));
    assert!(
        scanner.closed_within(Duration::from_secs(10)),
        "scanner not cut off on A"
    );
    wait_until("the ban in the database", Duration::from_secs(10), || {
        pg.psql("pbxguard", "SELECT COUNT(*) FROM bans WHERE source = 'sip'") != "0"
    });
    let banned_at = Instant::now();
    wait_until(
        "B refusing the banned address",
        Duration::from_secs(3),
        || match SipTls::try_connect_from(src, ports[1].0, &b.cert()) {
            Err(_) => true,
            Ok(mut c) => {
                let l = base_headers("OPTIONS", "100", "100", "TLS", &rnd(), 1);
                c.try_send(&request("OPTIONS sip:100@pbx.test SIP/2.0", &l, ""));
                c.closed_within(Duration::from_millis(300))
            }
        },
    );
    println!(
        "ban made on A enforced on B after {:?}",
        banned_at.elapsed()
    );
    // The list names the node that banned.
    let bans: serde_json::Value =
        serde_json::from_slice(&b.ok(&["ban", "list", "--json"], b"")).expect("JSON");
    assert_eq!(bans[0]["node"], "pbx-a", "{bans}");
    // Lifted through B's CLI: A accepts the address again.
    b.ok(&["sip", "ban", "rm", "--all"], b"");
    wait_until(
        "A accepting the address again",
        Duration::from_secs(3),
        || {
            SipTls::try_connect_from(src, ports[0].0, &a.cert()).is_ok_and(|mut c| {
                let l = base_headers("OPTIONS", "100", "100", "TLS", &rnd(), 1);
                c.try_send(&request("OPTIONS sip:100@pbx.test SIP/2.0", &l, ""));
                !c.closed_within(Duration::from_millis(500))
            })
        },
    );
    drop(daemons);
}

/// Runtime security settings changed on one node apply on the other from its next request
/// (issue 22): the settings read the same, and a lockout threshold lowered on A locks on B.
#[test]
fn settings_changed_on_one_node_apply_on_the_other() {
    let Some(pg) = Postgres::start("settings_nodes") else {
        return;
    };
    let (nodes, daemons) = two_nodes(&pg, "pbxguard", "", ["", ""]);
    let [a, b] = &nodes;
    for d in &daemons {
        following(d);
    }
    a.add_user("root", 9, "root password for nodes");
    a.add_user("bob", 2, "bob password for nodes");
    let root_a = a.token("root", "root password for nodes");
    let root_b = b.token("root", "root password for nodes");
    let settings = |env: &Env, token: &str| {
        let auth = format!("Authorization: Bearer {token}");
        env.request("GET", "/api/v1/admin/settings", &[&auth], None)
    };
    let auth = format!("Authorization: Bearer {root_a}");
    let r = a.request(
        "PUT",
        "/api/v1/admin/settings",
        &[&auth, "Content-Type: application/json"],
        Some(r#"{"lockout_threshold":2,"session_max_lifetime":"10h"}"#),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let on_b = settings(b, &root_b);
    assert_eq!(on_b.status, 200, "{on_b:?}");
    assert_eq!(on_b.json(), r.json(), "B reads what A wrote");
    daemons[1].wait_for_log("runtime security settings changed");
    // B's next login already has the new lifetime, and the new threshold.
    b.token("bob", "bob password for nodes");
    let span = pg.psql(
        "pbxguard",
        "SELECT s.expires_at - s.created_at FROM sessions s JOIN users u ON u.id = s.user_id WHERE u.name = 'bob'",
    );
    assert_eq!(span, "36000");
    for _ in 0..2 {
        assert_eq!(b.login("bob", "wrong password 123", &[]).status, 401);
    }
    let r = b.login("bob", "bob password for nodes", &[]);
    assert_eq!(r.status, 429, "{r:?}");
    // The audit row names the node that wrote it.
    let rows = pg.psql(
        "pbxguard",
        "SELECT target, detail, node FROM audit_log WHERE action = 'settings.set' ORDER BY target",
    );
    assert_eq!(
        rows,
        "lockout_threshold|10 -> 2|pbx-a\nsession_max_lifetime|12h -> 10h|pbx-a"
    );
}
