//! A browser softphone as a site would run it: headless Chromium with fake media devices, in its
//! own network namespace ([`common::netns::PhoneNet`]), loads the minimal page of
//! docs/http-api.md ("Browser softphone module") from nginx, which also passes that page's
//! locations (`/sip/softphone.js`, the ticket API) and the login API to pbxguard; the page's
//! module fetches a ticket, opens pbxguard's WebSocket on the PBX end of the veth and registers
//! as 2001 with a real Asterisk 22 from the shipped `etc/asterisk/pjsip.conf` (endpoint 2001
//! with `auth`, its media on the PBX end), then calls 600 (Echo). 2001's SIP password is only in
//! pbxguard's vault: it must appear nowhere the browser can see. JsSIP is bundled for the
//! browser at test time with esbuild (tests/clients), into the test's folder.
//!
//! Needs root (`ip netns`), Asterisk (PBXGUARD_ASTERISK), nginx, chromium, chromedriver and
//! python3-selenium: without the first two the tests are skipped after one loud line (under
//! `CI=true` they fail instead).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use common::asterisk::{self, Asterisk, Setup};
use common::netns::PhoneNet;
use common::nginx::Nginx;
use common::{free_port, Daemon, Env};
use serde_json::{json, Value};

const CLIENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");
const DRIVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/softphone.py");
const HTTP_API_DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/http-api.md");
const RT_USER: &str = "asterisk";
const RT_PASSWORD: &str = "realtime-password-for-browser";
const USER: &str = "alice";
const USER_PASSWORD: &str = "alice's long web password";
/// How long pbxguard stays down in the reconnection test.
const DOWN: Duration = Duration::from_secs(3);

// ---- the site ------------------------------------------------------------------------------

/// The fenced block of `lang` in docs/http-api.md's "### Browser softphone module".
fn doc_block(lang: &str) -> String {
    let text = std::fs::read_to_string(HTTP_API_DOC).expect("docs/http-api.md");
    let section = text
        .split("### Browser softphone module")
        .nth(1)
        .expect("docs/http-api.md has a Browser softphone module section");
    let fence = format!("```{lang}\n");
    let start = section.find(&fence).expect("a fenced block") + fence.len();
    let len = section[start..].find("```").expect("the block's end");
    section[start..start + len].to_string()
}

struct Site {
    // Dropped in this order: the browser first (in the tests), then the servers, the network last.
    daemon: Option<Daemon>,
    nginx: Nginx,
    ast: Asterisk,
    env: Env,
    www: PathBuf,
    /// `https://<PBX end>:<nginx port>`: the site's origin, `public_url`.
    base: String,
    wss: u16,
    sip_password: String,
    net: PhoneNet,
}

fn site() -> Option<Site> {
    let prefix = asterisk::prefix()?;
    let net = PhoneNet::create()?;
    let host = net.host_ip;
    let env = Env::new();
    let (rt_port, tls, wss, web) = (free_port(), free_port(), free_port(), free_port());
    let base = format!("https://{host}:{web}");
    // A fresh password per run: finding it anywhere the browser looked is then no accident.
    let sip_password = format!(
        "vault-only-{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(7)
    );
    let write = |ast_sip: u16| {
        let extra = format!(
            "\n[realtime]\nlisten = \"127.0.0.1:{rt_port}\"\nusername = \"{RT_USER}\"\n\
             \n[sip]\ntls_listen = \"127.0.0.1:{tls}\"\nwss_listen = \"{host}:{wss}\"\n\
             upstream = \"127.0.0.1:{ast_sip}\"\nupstream_bind = \"127.0.0.1:0\"\n"
        );
        let text = env.config_text(env.http_port, env.redirect_port, &extra);
        let public = format!("public_url = \"https://localhost:{}\"", env.http_port);
        assert!(text.contains(&public), "{text}");
        // nginx is the site: its origin is the public URL (and so the WebSocket's only
        // allowed Origin and the ticket's ws_url host), and it is the trusted proxy.
        env.write_config(&text.replace(
            &public,
            &format!("public_url = \"{base}\"\ntrusted_proxies = [\"127.0.0.1/32\"]"),
        ));
    };
    write(1);
    env.init();
    env.ok(
        &["secret", "set", "realtime/password"],
        format!("{RT_PASSWORD}\n").as_bytes(),
    );
    env.set_sip_credential("2001", &sip_password);
    env.add_user(USER, 2, USER_PASSWORD);
    env.ok(&["user", "set-extension", USER, "2001"], b"");
    let ast = Asterisk::start(
        &prefix,
        &Setup {
            pjsip: true,
            realtime: Some((rt_port, RT_USER.into(), RT_PASSWORD.into())),
            media_address: host.to_string(),
            extra_modules: asterisk::callback_modules(),
            ..Setup::default()
        },
    );
    ast.cli("pjsip set logger on");
    write(ast.sip_port);
    let daemon = env.start();
    daemon.wait_for_port(rt_port);
    wait_tcp(&format!("{host}:{wss}"), &daemon);

    // The site's files: the page from docs/http-api.md and JsSIP bundled for the browser.
    let www = env.path("www");
    std::fs::create_dir_all(www.join("js")).expect("www");
    std::fs::write(www.join("phone.html"), doc_block("html")).expect("page");
    bundle_jssip(&www.join("js/jssip.min.js"));

    let cert = env.cert().display().to_string();
    let key = env.path("etc/tls/key.pem").display().to_string();
    let upstream = format!("127.0.0.1:{}", env.http_port);
    let doc_locations = doc_block("nginx")
        .replace("127.0.0.1:8443", &upstream)
        .replace("/etc/pbxguard/tls/cert.pem", &cert);
    assert!(doc_locations.contains(&upstream), "{doc_locations}");
    let w = www.display();
    let server = format!(
        r#"    server {{
        listen {host}:{web} ssl;
        listen 127.0.0.1:{web} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {w};
        location / {{ try_files $uri =404; }}
        # Step 5 of "Install on a PBX": the login API is public.
        location /api/v1/auth/ {{
            auth_request off;
            proxy_pass https://{upstream};
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {cert};
            proxy_ssl_name localhost;
            proxy_ssl_server_name on;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
{doc_locations}
    }}
"#
    );
    let nginx = Nginx::start(&env.path("nginx"), web, &server);
    Some(Site {
        daemon: Some(daemon),
        nginx,
        ast,
        env,
        www,
        base,
        wss,
        sip_password,
        net,
    })
}

fn wait_tcp(addr: &str, daemon: &Daemon) {
    let addr: std::net::SocketAddr = addr.parse().expect("address");
    let end = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
        assert!(
            Instant::now() < end,
            "nothing listens on {addr}:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// JsSIP's npm package (pinned in tests/clients) has no browser build: esbuild makes one that
/// sets `globalThis.JsSIP`, as a site's own build would.
fn bundle_jssip(out: &Path) {
    let esbuild = Path::new(CLIENTS).join("node_modules/.bin/esbuild");
    assert!(
        esbuild.exists(),
        "esbuild is missing: run `npm ci` in tests/clients (tests/run.sh does)"
    );
    let built = Command::new(esbuild)
        .current_dir(CLIENTS)
        .args([
            "node_modules/jssip/lib/JsSIP.js",
            "--bundle",
            "--minify",
            "--format=iife",
            "--global-name=JsSIP",
            "--platform=browser",
            "--log-level=warning",
        ])
        .arg(format!("--outfile={}", out.display()))
        .output()
        .expect("esbuild runs");
    assert!(
        built.status.success(),
        "esbuild: {}",
        String::from_utf8_lossy(&built.stderr)
    );
}

/// The SHA-256 of the certificate's SubjectPublicKeyInfo, base64: what Chromium's
/// `--ignore-certificate-errors-spki-list` takes to trust this one key and nothing else.
fn spki_hash(cert: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(
            "openssl x509 -in \"$0\" -pubkey -noout | openssl pkey -pubin -outform der \
             | openssl dgst -sha256 -binary | openssl base64 -A",
        )
        .arg(cert)
        .output()
        .expect("openssl");
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(hash.len(), 44, "SPKI hash: {hash:?}");
    hash
}

impl Site {
    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("pbxguard runs")
    }

    /// Asterisk's channels of endpoint 2001 (`core show channels concise`).
    fn channels_2001(&self) -> Vec<String> {
        self.ast
            .cli("core show channels concise")
            .lines()
            .filter(|l| l.starts_with("PJSIP/2001-"))
            .map(str::to_owned)
            .collect()
    }

    /// `pjsip show contacts` lines of AOR 2001.
    fn contacts_2001(&self) -> Vec<String> {
        self.ast
            .cli("pjsip show contacts")
            .lines()
            .filter(|l| l.trim_start().starts_with("Contact:") && l.contains("2001/"))
            .map(|l| l.split_whitespace().nth(1).unwrap_or_default().to_string())
            .collect()
    }

    /// Successful and failed ticket requests that went through nginx.
    fn ticket_requests(&self) -> (usize, usize) {
        let log = std::fs::read_to_string(self.nginx.prefix.join("access.log")).unwrap_or_default();
        let tickets: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("\"POST /api/v1/sip/ticket "))
            .collect();
        let ok = tickets.iter().filter(|l| l.contains("\" 200 ")).count();
        (ok, tickets.len() - ok)
    }

    fn browser(&self) -> Browser {
        let profile = self.env.path("chromium-profile");
        let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("asterisk-browser");
        std::fs::create_dir_all(&shots).expect("shots");
        let stderr = std::fs::File::create(self.env.path("driver.log")).expect("driver log");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.net.ns, "/usr/bin/python3", DRIVER])
            .arg(&self.base)
            .arg(&profile)
            .arg(spki_hash(&self.env.cert()))
            .arg(&shots)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("python3 with selenium");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Browser {
            stdin: child.stdin.take(),
            child,
            rx,
            log: self.env.path("driver.log"),
            transcript: String::new(),
        }
    }

    /// The browser's page, logged in, connected and registered; the session's token.
    fn registered_page(&self, b: &mut Browser) -> (String, Value) {
        b.ok(json!({"cmd": "open", "path": "/phone.html"}), 30);
        let token = b.ok(
            json!({"cmd": "login", "user": USER, "password": USER_PASSWORD}),
            20,
        )["token"]
            .as_str()
            .expect("token")
            .to_string();
        b.ok(json!({"cmd": "click", "id": "connect"}), 5);
        let r = b.wait(self, "registered", 1, 20);
        assert_eq!(r["event"]["detail"]["extension"], "2001", "{r}");
        (token, r)
    }

    /// Everything the browser got (and the site's files): 2001's password is nowhere; the
    /// browser sent no SIP credentials and was never challenged.
    fn assert_no_sip_secret_in_the_browser(&self, b: &mut Browser) -> Value {
        let dir = self.env.path("browser-got");
        std::fs::create_dir_all(&dir).expect("dir");
        let got = b.ok(json!({"cmd": "collect", "dir": dir}), 30);
        let mut looked = 0;
        for folder in [&dir, &self.www] {
            for file in walk(folder) {
                let bytes = std::fs::read(&file).expect("read");
                looked += bytes.len();
                let text = String::from_utf8_lossy(&bytes);
                assert!(
                    !text.contains(&self.sip_password),
                    "the SIP password is in {}",
                    file.display()
                );
            }
        }
        assert!(
            !b.transcript.contains(&self.sip_password),
            "the SIP password reached the driver"
        );
        let sent = std::fs::read_to_string(dir.join("ws-sent.txt")).expect("ws-sent");
        let received = std::fs::read_to_string(dir.join("ws-received.txt")).expect("ws-received");
        assert!(sent.contains("REGISTER sip:"), "no REGISTER seen: {got}");
        assert!(
            !sent.to_ascii_lowercase().contains("authorization:"),
            "the browser sent SIP credentials:\n{sent}"
        );
        for challenge in ["SIP/2.0 401 ", "SIP/2.0 407 "] {
            assert!(
                !received.contains(challenge),
                "the browser was challenged ({challenge}):\n{received}"
            );
        }
        let bodies = std::fs::read_to_string(dir.join("http-bodies.txt")).expect("bodies");
        assert!(bodies.contains("/sip/softphone.js"), "{got}");
        let unread: Vec<&str> = bodies
            .split("\n\x1e\n")
            .filter(|b| b.contains("\n(no body:"))
            .collect();
        assert!(
            unread.is_empty(),
            "some response bodies could not be read back: {unread:?}"
        );
        eprintln!(
            "browser got {} HTTP responses, {} WebSocket frames received, {} sent ({} bytes \
             searched): no SIP password, no Authorization, no 401/407",
            got["responses"], got["ws_received"], got["ws_sent"], looked
        );
        got
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

// ---- the browser ----------------------------------------------------------------------------

/// `tests/browser/softphone.py` in the phone's namespace: one JSON command, one JSON answer.
struct Browser {
    child: Child,
    stdin: Option<ChildStdin>,
    rx: Receiver<String>,
    log: PathBuf,
    /// Every answer the driver printed.
    transcript: String,
}

impl Browser {
    fn send(&mut self, cmd: &Value, timeout: u64) -> Value {
        let stdin = self.stdin.as_mut().expect("driver stdin");
        writeln!(stdin, "{cmd}").expect("write to the driver");
        stdin.flush().expect("flush");
        let line = self
            .rx
            .recv_timeout(Duration::from_secs(timeout + 15))
            .unwrap_or_else(|e| {
                panic!(
                    "the driver did not answer {cmd} ({e}):\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                )
            });
        self.transcript.push_str(&line);
        self.transcript.push('\n');
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("driver said {line:?}: {e}"))
    }

    fn ok(&mut self, cmd: Value, timeout: u64) -> Value {
        let r = self.send(&cmd, timeout);
        assert_eq!(
            r["ok"],
            true,
            "{cmd} -> {r}\ndriver log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
        r
    }

    /// Waits for the `count`th event of `kind`; the site's logs on failure.
    fn wait(&mut self, site: &Site, kind: &str, count: u32, timeout: u64) -> Value {
        let cmd = json!({"cmd": "wait", "type": kind, "count": count, "timeout": timeout});
        let r = self.send(&cmd, timeout);
        assert_eq!(
            r["ok"],
            true,
            "{cmd} -> {r}\nedge log:\n{}\nAsterisk:\n{}",
            site.daemon.as_ref().map(Daemon::log).unwrap_or_default(),
            tail(&site.ast.log(), 8000)
        );
        r
    }

    fn events(&mut self) -> Vec<Value> {
        self.ok(json!({"cmd": "events"}), 5)["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "{}", json!({"cmd": "quit"}));
        }
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Chromium and chromedriver, if left, die with the namespace (PhoneNet's drop).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(s: &str, n: usize) -> &str {
    let mut i = s.len().saturating_sub(n);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

/// The wall clock in ms, as the page's `Date.now()` (same host, same clock).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn at(event: &Value) -> i64 {
    event["event"]["at"].as_i64().unwrap_or(0)
}

// ---- the tests ------------------------------------------------------------------------------

#[test]
fn a_browser_calls_echo_with_no_sip_password_and_logout_ends_the_call() {
    let Some(s) = site() else {
        return;
    };
    let started = Instant::now();
    let mut b = s.browser();
    let (token, registered) = s.registered_page(&mut b);
    eprintln!(
        "registered in {:.1} s after the browser started",
        started.elapsed().as_secs_f64()
    );
    assert!(registered["waited_ms"].as_u64().is_some());
    // Asterisk registered 2001's contact through the edge (its WebSocket, hence `.invalid`).
    assert!(
        s.contacts_2001().iter().any(|c| c.contains(".invalid")),
        "{}",
        s.ast.cli("pjsip show contacts")
    );
    // The edge answered Asterisk's challenge for it: Asterisk sent a 401 and then got the
    // REGISTER again with the digest (which the browser never sent: checked below).
    let log = s.ast.log();
    assert!(
        log.contains("SIP/2.0 401 Unauthorized"),
        "no challenge:\n{}",
        tail(&log, 6000)
    );
    assert!(
        log.contains("Authorization: Digest username=\"2001\""),
        "{}",
        tail(&log, 6000)
    );

    b.ok(json!({"cmd": "type", "id": "target", "text": "600"}), 5);
    let t = Instant::now();
    b.ok(json!({"cmd": "click", "id": "call"}), 5);
    b.wait(&s, "confirmed", 1, 20);
    eprintln!(
        "call to 600 confirmed in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    // DTLS-SRTP up and audio both ways: Chromium's own counters over 2 s.
    let mut stats = b.ok(json!({"cmd": "stats", "seconds": 2}), 10);
    if stats["second"]["dtlsState"] != "connected" {
        // ICE and DTLS may still be finishing right after the 200: one more look.
        stats = b.ok(json!({"cmd": "stats", "seconds": 2}), 10);
    }
    let (first, second) = (&stats["first"], &stats["second"]);
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
    eprintln!(
        "RTP over 2 s: sent {} -> {} bytes ({} -> {} packets), received {} -> {} bytes \
         ({} -> {} packets); DTLS {}, ICE {}, media peer {}",
        n(first, "bytesSent"),
        n(second, "bytesSent"),
        n(first, "packetsSent"),
        n(second, "packetsSent"),
        n(first, "bytesReceived"),
        n(second, "bytesReceived"),
        n(first, "packetsReceived"),
        n(second, "packetsReceived"),
        second["dtlsState"],
        second["iceConnectionState"],
        second["remote"]
    );
    assert_eq!(second["dtlsState"], "connected", "{stats}");
    assert_eq!(second["connectionState"], "connected", "{stats}");
    // 20 ms packets: about 100 in 2 s each way; half of that is plenty to say "flowing".
    assert!(
        n(second, "packetsSent") >= n(first, "packetsSent") + 50,
        "{stats}"
    );
    assert!(
        n(second, "packetsReceived") >= n(first, "packetsReceived") + 50,
        "{stats}"
    );
    assert!(n(second, "bytesSent") > n(first, "bytesSent"), "{stats}");
    assert!(
        n(second, "bytesReceived") > n(first, "bytesReceived"),
        "{stats}"
    );
    // Media goes to Asterisk on the PBX end of the veth, not through pbxguard.
    assert!(
        second["remote"]
            .as_str()
            .is_some_and(|r| r.starts_with(&format!("{}:", s.net.host_ip))),
        "{stats}"
    );
    // The page as the user sees it, kept as the test's artefact.
    b.ok(json!({"cmd": "shot", "name": "in-call.png"}), 10);
    let channels = s.ast.cli("core show channels");
    assert!(
        channels.contains("PJSIP/2001-") && channels.contains("Echo"),
        "{channels}"
    );

    // Logging out ends the call: the edge closes the WebSocket and ends its dialog towards
    // Asterisk, within 5 s.
    assert_eq!(
        s.channels_2001().len(),
        1,
        "{}",
        s.ast.cli("core show channels")
    );
    let logout_at = now_ms();
    let out = s.env.request(
        "POST",
        "/api/v1/auth/logout",
        &[&format!("Authorization: Bearer {token}")],
        None,
    );
    assert_eq!(out.status, 204, "{out:?}");
    let t = Instant::now();
    let mut gone = None;
    while t.elapsed() < Duration::from_secs(5) {
        if s.channels_2001().is_empty() {
            gone = Some(t.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let still = s.ast.cli("core show channels verbose");
    let disconnected = b.wait(&s, "disconnected", 1, 10);
    let ended = b.wait(&s, "ended", 1, 10);
    let over = b.wait(&s, "sessionEnded", 1, 15);
    eprintln!(
        "logout: Asterisk's channel gone after {gone:.2?}; the page saw its socket close {} ms \
         after the logout, the call end ({}) {} ms and the session end ({}) {} ms after the close",
        at(&disconnected) - logout_at,
        ended["event"]["detail"]["cause"],
        at(&ended) - at(&disconnected),
        over["event"]["detail"]["status"],
        at(&over) - at(&disconnected),
    );
    assert!(at(&disconnected) - logout_at <= 5000, "{disconnected}");
    assert_eq!(
        ended["event"]["detail"]["cause"], "Connection Error",
        "{ended}"
    );
    assert_eq!(over["event"]["detail"]["status"], 401, "{over}");
    assert_eq!(over["event"]["detail"]["error"], "unauthorized", "{over}");
    // No second socket: the session is over, so the ticket endpoint said 401 and the module
    // stopped instead of retrying.
    let (ok, refused) = s.ticket_requests();
    assert_eq!((ok, refused), (1, 1), "ticket requests (ok, refused)");
    let events = b.events();
    assert_eq!(
        events.iter().filter(|e| e["type"] == "registered").count(),
        1,
        "{events:?}"
    );
    let got = s.assert_no_sip_secret_in_the_browser(&mut b);
    assert_eq!(got["sockets"].as_array().map(Vec::len), Some(1), "{got}");
    // The edge ended the call towards Asterisk when it closed the socket.
    assert!(
        gone.is_some(),
        "Asterisk still has the call 5 s after logout:\n{still}\nedge log:\n{}",
        s.daemon().log()
    );
}

#[test]
fn the_module_reconnects_with_a_fresh_ticket_when_the_server_drops_the_socket() {
    let Some(mut s) = site() else {
        return;
    };
    let mut b = s.browser();
    s.registered_page(&mut b);
    let before = s.contacts_2001();
    assert_eq!(before.len(), 1, "{}", s.ast.cli("pjsip show contacts"));
    assert_eq!(s.ticket_requests(), (1, 0));

    // pbxguard restarts on the same ports and state folder: the WebSocket drops, the web
    // session survives in the database. It stays down a few seconds, as a slow restart would,
    // so that the module's first attempts find no ticket endpoint (nginx answers 502).
    let mut daemon = s.daemon.take().expect("daemon");
    let down = Instant::now();
    daemon.signal("TERM");
    daemon.wait_exit(Duration::from_secs(15));
    drop(daemon);
    std::thread::sleep(DOWN);
    s.daemon = Some(s.env.start());
    wait_tcp(&format!("{}:{}", s.net.host_ip, s.wss), s.daemon());
    let back = down.elapsed();

    let disconnected = b.wait(&s, "disconnected", 1, 10);
    let registered = b.wait(&s, "registered", 2, 60);
    let reconnect_ms = at(&registered) - at(&disconnected);
    let events = b.events();
    let retries: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "reconnecting")
        .collect();
    eprintln!(
        "pbxguard down for {:.2} s; the page re-registered {reconnect_ms} ms after its socket \
         closed, after {} reconnection attempt(s): {:?}",
        back.as_secs_f64(),
        retries.len(),
        retries
            .iter()
            .map(|e| (e["detail"]["delay"].clone(), e["detail"]["error"].clone()))
            .collect::<Vec<_>>()
    );
    // At least one attempt found pbxguard down; the module kept going.
    assert!(retries.len() >= 2, "{events:?}");
    assert_eq!(retries[0]["detail"]["attempt"], 1, "{events:?}");
    // Backoff: each delay within its step (1 s, 2 s, 4 s …, half fixed, half random).
    for (i, e) in retries.iter().enumerate() {
        let step = 1000u64 << i;
        let delay = e["detail"]["delay"].as_u64().unwrap_or(0);
        assert!(delay >= step / 2 && delay <= step, "{e}");
    }
    assert!(reconnect_ms < 30_000, "{reconnect_ms} ms");

    // A fresh ticket for every socket, and no ticket used twice: one ticket request per
    // attempt (the first, then one per retry; those made while pbxguard was down failed),
    // one WebSocket per ticket obtained, each with its own ticket, each upgrade accepted (a
    // spent ticket would have got 401).
    let (ok, failed) = s.ticket_requests();
    assert_eq!(
        ok + failed,
        1 + retries.len(),
        "ticket requests: {ok} ok, {failed} failed"
    );
    assert!(ok >= 2 && failed >= 1, "{ok} ok, {failed} failed");
    let got = s.assert_no_sip_secret_in_the_browser(&mut b);
    let sockets: Vec<&str> = got["sockets"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert_eq!(sockets.len(), ok, "{got}");
    let distinct: std::collections::HashSet<&&str> = sockets.iter().collect();
    assert_eq!(
        distinct.len(),
        sockets.len(),
        "a ticket was reused: {sockets:?}"
    );
    assert!(
        sockets.iter().all(|u| u.contains("?ticket=")),
        "{sockets:?}"
    );
    assert!(
        got["handshakes"]
            .as_array()
            .is_some_and(|h| !h.is_empty() && h.iter().all(|c| c == 101)),
        "{got}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "registrationFailed")
            .count(),
        0,
        "{events:?}"
    );
    // Asterisk has 2001 again, at the new socket's contact.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let now = s.contacts_2001();
        if now.len() == 1 && now != before {
            eprintln!("contact before {before:?}, after {now:?}");
            break;
        }
        assert!(Instant::now() < end, "{}", s.ast.cli("pjsip show contacts"));
        std::thread::sleep(Duration::from_millis(100));
    }
    // The new registration works: Asterisk calls 2001, the page rings on the new socket, the
    // user answers (Echo on the other side) and hangs up.
    let origin = s
        .ast
        .cli("channel originate PJSIP/2001 extension 600@phones");
    let incoming = b.wait(&s, "incoming", 1, 15);
    b.ok(json!({"cmd": "click", "id": "answer"}), 5);
    b.wait(&s, "confirmed", 1, 15);
    let stats = b.ok(json!({"cmd": "stats", "seconds": 1}), 10);
    let n = |k: &str| {
        stats["second"][k].as_u64().unwrap_or(0) > stats["first"][k].as_u64().unwrap_or(0)
    };
    assert!(n("bytesSent") && n("bytesReceived"), "{stats}");
    assert_eq!(
        s.channels_2001().len(),
        1,
        "{origin}{}",
        s.ast.cli("core show channels")
    );
    b.ok(json!({"cmd": "click", "id": "hangup"}), 5);
    let ended = b.wait(&s, "ended", 1, 10);
    assert_eq!(ended["event"]["detail"]["originator"], "local", "{ended}");
    let end = Instant::now() + Duration::from_secs(5);
    while !s.channels_2001().is_empty() {
        assert!(Instant::now() < end, "{}", s.ast.cli("core show channels"));
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "after the reconnection Asterisk called 2001 (from {}), the page answered; RTP in 1 s: \
         sent {} -> {} bytes, received {} -> {} bytes",
        incoming["event"]["detail"]["from"],
        stats["first"]["bytesSent"],
        stats["second"]["bytesSent"],
        stats["first"]["bytesReceived"],
        stats["second"]["bytesReceived"]
    );

    // The page's Disconnect (`stop()`): the module unregisters (the edge answers that
    // REGISTER's challenge too) and does not come back.
    let reconnects = |b: &mut Browser| {
        b.ok(json!({"cmd": "events"}), 5)["events"]
            .as_array()
            .map_or(0, |e| {
                e.iter().filter(|e| e["type"] == "reconnecting").count()
            })
    };
    let before_stop = reconnects(&mut b);
    b.ok(json!({"cmd": "click", "id": "disconnect"}), 5);
    let end = Instant::now() + Duration::from_secs(10);
    while !s.contacts_2001().is_empty() {
        assert!(
            Instant::now() < end,
            "2001 still registered after stop(): {}",
            s.ast.cli("pjsip show contacts")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        reconnects(&mut b),
        before_stop,
        "the module came back after stop()"
    );
    assert!(s.contacts_2001().is_empty());
}
