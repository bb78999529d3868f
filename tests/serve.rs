//! The daemon as a process: TLS, redirect, HSTS, limits, metrics, SIGHUP and SIGTERM, with
//! curl, openssl s_client and raw sockets as clients.

mod common;
use common::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

fn started(extra: &str) -> (Env, Daemon) {
    let env = Env::new();
    if !extra.is_empty() {
        env.write_config(&env.config_text(env.http_port, env.redirect_port, extra));
    }
    env.init();
    let daemon = env.start();
    (env, daemon)
}

#[test]
fn healthz_over_verified_tls_with_hsts() {
    let (env, _d) = started("");
    let out = env.curl_https("/healthz", &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(status(&out), 200);
    let body = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        body.contains("strict-transport-security: max-age=31536000"),
        "{body}"
    );
    assert!(body.contains(r#"{"status":"ok","version":""#), "{body}");

    // Unknown paths and wrong methods get the JSON error shape.
    let out = env.curl_https("/nope", &[]);
    assert_eq!(status(&out), 404);
    assert!(String::from_utf8_lossy(&out.stdout).contains(r#""error":"not_found""#));
    let out = env.curl_https("/healthz", &["-X", "DELETE"]);
    assert_eq!(status(&out), 405);
}

#[test]
fn redirect_listener_sends_308_to_public_url() {
    let (env, _d) = started("");
    let out = curl(&[
        "-sS",
        "-i",
        "-H",
        "Host: evil.example",
        &format!("http://127.0.0.1:{}/api/v1/me?x=1&y=%2F", env.redirect_port),
    ]);
    assert_eq!(status(&out), 308, "{}", text(&out));
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    let expected = format!(
        "location: https://localhost:{}/api/v1/me?x=1&y=%2f",
        env.http_port
    );
    assert!(head.contains(&expected), "{head}");
    // Following it lands on the TLS listener.
    let cert = env.cert().display().to_string();
    let url = format!("http://127.0.0.1:{}/healthz", env.redirect_port);
    let out = curl(&["-sS", "-L", "--cacert", &cert, &url]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(r#""status":"ok""#),
        "{}",
        text(&out)
    );
}

fn s_client(port: u16, version: &str, cert: &str) -> (bool, String) {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            version,
            "-cipher",
            "DEFAULT:@SECLEVEL=0",
            "-CAfile",
            cert,
            "-verify_return_error",
            "-servername",
            "localhost",
        ])
        // No system openssl.cnf: Debian's MinProtocol would stop the client from even
        // offering TLS 1.1, and the test would pass without the server refusing anything.
        .env("OPENSSL_CONF", "/dev/null")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl is installed");
    (out.status.success(), text(&out))
}

#[test]
fn tls_1_1_is_refused_and_1_2_and_1_3_are_accepted() {
    let (env, _d) = started("");
    let cert = env.cert().display().to_string();
    let (ok, out) = s_client(env.http_port, "-tls1_1", &cert);
    assert!(!ok, "TLS 1.1 handshake succeeded:\n{out}");
    assert!(
        out.contains("SSL alert number"),
        "the server did not refuse with an alert:\n{out}"
    );
    for v in ["-tls1_2", "-tls1_3"] {
        let (ok, out) = s_client(env.http_port, v, &cert);
        assert!(
            ok && out.contains("Verify return code: 0 (ok)"),
            "{v}:\n{out}"
        );
    }
}

#[test]
fn metrics_count_requests_and_are_limited_to_allowed_networks() {
    let (env, d) = started("");
    env.curl_https("/healthz", &[]);
    let out = env.curl_https("/metrics", &[]);
    assert_eq!(status(&out), 200);
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.contains(
            r#"pbxguard_http_requests_total{route="/healthz",method="GET",status="200"} 1"#
        ),
        "{body}"
    );
    assert!(body.contains("pbxguard_build_info{version="));
    assert!(body.contains("pbxguard_connections_total{listener=\"http\"}"));

    // Reload with metrics restricted to a network we are not in: 403.
    env.write_config(&env.config_text(
        env.http_port,
        env.redirect_port,
        "metrics_allow = [\"192.0.2.0/24\"]\n",
    ));
    d.signal("HUP");
    d.wait_for_log("configuration reloaded");
    let out = env.curl_https("/metrics", &[]);
    assert_eq!(status(&out), 403, "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(r#""error":"forbidden""#));
}

#[test]
fn sighup_applies_a_valid_config_and_keeps_serving_on_a_broken_one() {
    let (env, d) = started("");
    let new_port = free_port();
    env.write_config(&env.config_text(new_port, env.redirect_port, ""));
    d.signal("HUP");
    d.wait_for_port(new_port);
    d.wait_for_log("configuration reloaded");
    let cert = env.cert().display().to_string();
    let get = |port: u16| {
        curl(&[
            "-sS",
            "--max-time",
            "5",
            "--cacert",
            &cert,
            &format!("https://localhost:{port}/healthz"),
        ])
    };
    assert!(String::from_utf8_lossy(&get(new_port).stdout).contains("\"ok\""));
    // The old address was released.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", env.http_port)).is_ok() {
        assert!(Instant::now() < deadline, "old listener still open");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A broken file: every problem logged, the old config keeps serving.
    env.write_config("[http]\nlisten = \"nonsense\"\nwhat = 1\n");
    d.signal("HUP");
    d.wait_for_log("reload refused");
    let log = d.log();
    assert!(
        log.contains("http.listen") && log.contains("http.what"),
        "{log}"
    );
    assert!(String::from_utf8_lossy(&get(new_port).stdout).contains("\"ok\""));

    // A config whose new port is taken is refused as a whole, too.
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = blocker.local_addr().unwrap().port();
    env.write_config(&env.config_text(taken, env.redirect_port, ""));
    d.signal("HUP");
    d.wait_for_log("cannot listen on");
    assert!(String::from_utf8_lossy(&get(new_port).stdout).contains("\"ok\""));
}

/// Reload is all-or-nothing across sections: a later section that cannot bind undoes what an
/// earlier one bound, and nothing is put in force.
#[test]
fn a_reload_refused_by_a_later_section_moves_no_listener() {
    let (env, d) = started("");
    let new_port = free_port();
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = blocker.local_addr().unwrap().port();
    let ami = format!("[ami]\nlisten = \"127.0.0.1:{taken}\"\nupstream = \"127.0.0.1:9\"\n");
    env.write_config(&env.config_text(new_port, env.redirect_port, &ami));
    d.signal("HUP");
    d.wait_for_log("reload refused");
    let log = d.log();
    assert!(
        log.contains(&format!("ami.listen: cannot listen on 127.0.0.1:{taken}")),
        "{log}"
    );
    // [http]'s new address was bound during the attempt and released with it.
    assert!(TcpStream::connect(("127.0.0.1", new_port)).is_err());
    let out = env.curl_https("/healthz", &[]);
    assert_eq!(status(&out), 200, "{}", text(&out));
    assert!(!log.contains("configuration reloaded"), "{log}");
}

#[test]
fn sigterm_lets_an_in_flight_request_finish_then_exits_0() {
    let (env, mut d) = started("");
    // A request whose head is half sent when SIGTERM arrives (plain listener, so the bytes
    // are exactly what hyper sees).
    let mut s = TcpStream::connect(("127.0.0.1", env.redirect_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /in-flight HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    d.signal("TERM");
    d.wait_for_log("shutting down");
    s.write_all(b"\r\n").unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 308"),
        "in-flight request was cut: {answer:?}"
    );
    assert!(
        answer.to_lowercase().contains("connection: close"),
        "{answer}"
    );
    let status = d.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", d.log());
    // No new connections after shutdown.
    assert!(TcpStream::connect(("127.0.0.1", env.http_port)).is_err());
}

#[test]
fn oversized_and_garbage_requests_get_errors_and_the_daemon_keeps_serving() {
    let (env, _d) = started("");
    // 64 KiB of headers: refused (431), not buffered without bound.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let answer = raw_exchange(env.redirect_port, big.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    let answer = raw_exchange(env.redirect_port, b"\x16\x03\x01garbage\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    // Plain HTTP spoken to the TLS port: the handshake fails, nothing else happens.
    let answer = raw_exchange(env.http_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(!answer.contains("200 OK"), "{answer:?}");
    // A body over the limit is refused from its Content-Length, before it is read (with
    // Expect: 100-continue the client waits, so the answer is deterministic).
    let body = env.path("big-body");
    std::fs::write(&body, vec![b'x'; 100_000]).unwrap();
    let out = env.post_expecting_continue("/healthz", &body, &[]);
    assert_eq!(status(&out), 413, "{}", text(&out));
    assert_eq!(status(&env.curl_https("/healthz", &[])), 200);
}

#[test]
fn slow_clients_time_out_and_the_connection_limit_holds() {
    let (env, _d) = started("max_connections = 3\nheader_timeout = \"1s\"\n");
    // A client that never finishes its request head is cut off after header_timeout.
    let mut slow = TcpStream::connect(("127.0.0.1", env.redirect_port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "{waited:?}"
    );

    // Three idle TLS connections hold every slot; the fourth is closed at once.
    let idle: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(("127.0.0.1", env.http_port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = TcpStream::connect(("127.0.0.1", env.http_port)).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let n = extra.read(&mut [0u8; 16]).unwrap_or(0);
    assert_eq!(n, 0, "the connection over the limit was not closed");
    drop(idle);
    std::thread::sleep(Duration::from_millis(300));
    let out = env.curl_https("/metrics", &[]);
    assert_eq!(status(&out), 200, "{}", text(&out));
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.contains("pbxguard_connections_refused_total{listener=\"http\"} 1"),
        "{body}"
    );
}

/// D1/D2: a request whose body arrives slower than `request_timeout` is answered 408 and its
/// connection closed; the daemon goes on serving.
#[test]
fn a_request_slower_than_request_timeout_gets_408_and_the_daemon_serves_on() {
    let env = Env::new();
    let port = env.http_port;
    let d = env.dir.path().display();
    // Plain HTTP on loopback: the test speaks HTTP/1.1 over the socket itself.
    env.write_config(&format!(
        "[daemon]\nstate_dir = \"{d}/state\"\nshutdown_grace = \"2s\"\n[vault]\nkey_file = \"{d}/master.key\"\n[http]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\nrequest_timeout = \"1s\"\n"
    ));
    env.init();
    let _d = env.start();
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    slow.write_all(
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: pbx\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n{\"username\"",
    )
    .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    let waited = started.elapsed();
    let answer = String::from_utf8_lossy(&buf);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    let mut ok = TcpStream::connect(("127.0.0.1", port)).unwrap();
    ok.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    ok.write_all(b"GET /healthz HTTP/1.1\r\nHost: pbx\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = ok.read_to_end(&mut buf);
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
}

#[test]
fn serve_without_init_says_what_to_do() {
    let env = Env::new();
    let out = env.run(&["serve"], b"");
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(text(&out).contains("run `pbxguard init`"), "{}", text(&out));
}

#[test]
fn init_if_missing_initialises_on_first_start() {
    let env = Env::new();
    env.write_config(
        &env.config_text(env.http_port, env.redirect_port, "")
            .replacen("[daemon]\n", "[daemon]\ninit_if_missing = true\n", 1),
    );
    let _d = env.start();
    assert!(env.path("etc/master.key").exists());
    assert_eq!(status(&env.curl_https("/healthz", &[])), 200);
}

#[test]
fn sighup_rereads_the_certificate() {
    let (env, d) = started("");
    let old_cert = env.path("old-cert.pem");
    std::fs::copy(env.cert(), &old_cert).unwrap();
    std::fs::remove_file(env.cert()).unwrap();
    std::fs::remove_file(env.path("etc/tls/key.pem")).unwrap();
    env.init(); // writes a new self-signed pair
    d.signal("HUP");
    d.wait_for_log("configuration reloaded");
    assert_eq!(
        status(&env.curl_https("/healthz", &[])),
        200,
        "new certificate not served"
    );
    let old = old_cert.display().to_string();
    let url = format!("https://localhost:{}/healthz", env.http_port);
    let out = curl(&["-sS", "--max-time", "5", "--cacert", &old, &url]);
    assert!(!out.status.success(), "old certificate still served");
}

#[test]
fn a_missing_certificate_on_reload_keeps_the_old_one() {
    let (env, d) = started("");
    std::fs::write(env.cert(), "not a certificate").unwrap();
    d.signal("HUP");
    d.wait_for_log("reload refused");
    assert!(d.log().contains("no CERTIFICATE block"), "{}", d.log());
    // Existing TLS config still in use (the served cert is the one in memory).
    let out = env.curl_https("/healthz", &["--insecure"]);
    assert_eq!(status(&out), 200);
}

/// The sd_notify protocol as systemd speaks it: datagrams on $NOTIFY_SOCKET.
#[test]
fn tells_systemd_ready_reloading_stopping_and_feeds_the_watchdog() {
    use std::os::unix::net::UnixDatagram;
    let env = Env::new();
    env.init();
    let sock_path = env.path("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut d = env.start_with(&[
        ("NOTIFY_SOCKET", sock_path.display().to_string()),
        ("WATCHDOG_USEC", "400000".to_string()),
    ]);
    let mut seen: Vec<String> = Vec::new();
    let count = |seen: &[String], m: &str| seen.iter().filter(|l| l.as_str() == m).count();
    collect(&sock, &mut seen, &|s| {
        count(s, "READY=1") >= 1 && count(s, "WATCHDOG=1") >= 3
    });
    d.signal("HUP");
    collect(&sock, &mut seen, &|s| {
        count(s, "RELOADING=1") == 1 && count(s, "READY=1") >= 2
    });
    let reloading = seen.iter().position(|l| l == "RELOADING=1").unwrap();
    assert!(
        seen[reloading..].iter().any(|l| l == "READY=1"),
        "READY=1 must follow RELOADING=1: {seen:?}"
    );
    assert!(seen.iter().any(|l| l.starts_with("MONOTONIC_USEC=")));
    d.signal("TERM");
    collect(&sock, &mut seen, &|s| count(s, "STOPPING=1") == 1);
    assert_eq!(d.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

/// Reads notify datagrams until `until` holds (10 s at most).
fn collect(
    sock: &std::os::unix::net::UnixDatagram,
    seen: &mut Vec<String>,
    until: &dyn Fn(&[String]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    while !until(seen) {
        assert!(
            Instant::now() < deadline,
            "notify messages so far: {seen:?}"
        );
        if let Ok(n) = sock.recv(&mut buf) {
            seen.extend(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_string),
            );
        }
    }
}

#[test]
fn silent_connections_are_closed_after_the_idle_timeout() {
    // A connection that never sends a byte is not caught by the header timeout (hyper is still
    // waiting to tell HTTP/1 from HTTP/2); the idle timeout closes it.
    let (env, _d) =
        started("header_timeout = \"30s\"\nrequest_timeout = \"1s\"\nidle_timeout = \"2s\"\n");
    for port in [env.redirect_port, env.http_port] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        let started = Instant::now();
        let n = s.read(&mut [0u8; 64]).unwrap_or(usize::MAX);
        let waited = started.elapsed();
        assert_eq!(
            n, 0,
            "port {port}: expected the server to close the connection"
        );
        assert!(
            waited >= Duration::from_millis(1800) && waited < Duration::from_secs(6),
            "port {port}: {waited:?}"
        );
    }
    // Busy connections are not affected: a keep-alive client making a request every second.
    let cert = env.cert().display().to_string();
    let url = format!("https://localhost:{}/healthz", env.http_port);
    let out = curl(&[
        "-sS", "--cacert", &cert, &url, "--next", "--cacert", &cert, &url,
    ]);
    assert!(out.status.success(), "{}", text(&out));
}
