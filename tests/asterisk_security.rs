//! Asterisk's own security events, read by pbxguard's monitoring session on a real Asterisk 22
//! (built by `tests/asterisk/build.sh`; `PBXGUARD_ASTERISK` must name it, else these tests
//! return early): wrong SIP passwords sent straight to Asterisk's SIP port and failed AMI
//! logins reach the sink with the client's address within a second; a correct REGISTER and a
//! correct login do not; the monitor comes back after Asterisk restarts; an upstream user
//! without the `security` class gets no events, and the audit says so.
//!
//! The monitor runs in the test through the library API, with a sink that records. Clients
//! use their own loopback addresses (127.0.0.2 and up) so that the address in each event is
//! the client's, not Asterisk's or pbxguard's.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use common::asterisk::{self, Asterisk, Setup};
use common::sip::{digest, rnd, SipMsg};
use pbxguard::ami::config::AmiConfig;
use pbxguard::ami::security::{Monitor, SecurityEvent, Settings, Stats};
use pbxguard::store::Store;
use pbxguard::vault::{Key, Vault};

const SECRET_NAME: &str = "ami/upstream";
const SIP_USER: &str = "7001";
/// Read classes of the shipped example before this monitor existed.
const READ_WITHOUT_SECURITY: &str = "system,call,agent,user,dtmf,reporting,cdr,dialplan";
const WRITE_EXAMPLE: &str = "call,agent,user,reporting,originate";
const T: Duration = Duration::from_secs(10);

/// A SIP account of the test's own (static auth: no realtime needed), on the example's
/// loopback transport.
fn pjsip_account(password: &str) -> String {
    format!(
        "\n[{SIP_USER}]\ntype = endpoint\ncontext = phones\ndisallow = all\nallow = ulaw\n\
         auth = {SIP_USER}-auth\naors = {SIP_USER}\ntransport = transport-loopback\n\
         \n[{SIP_USER}-auth]\ntype = auth\nauth_type = userpass\nusername = {SIP_USER}\n\
         password = {password}\n\
         \n[{SIP_USER}]\ntype = aor\nmax_contacts = 10\nremove_existing = yes\n"
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Every tracing line of the test process (the monitor logs through `tracing`).
fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: std::sync::OnceLock<&'static Mutex<Vec<u8>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("pbxguard=debug")
            .with_ansi(false)
            .with_writer(move || Captured(logs))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        logs
    })
}

struct Captured(&'static Mutex<Vec<u8>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        std::io::stderr().write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_text() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

/// A real Asterisk with the shipped manager.conf (upstream user `pbxguard`), the monitor on
/// it, and what reached the sink.
struct Site {
    ast: Asterisk,
    sip_password: String,
    monitor: Monitor,
    events: mpsc::UnboundedReceiver<(Instant, SecurityEvent)>,
    stop: CancellationToken,
    _vault_dir: tempfile::TempDir,
}

impl Drop for Site {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn vault_with(secret: &str) -> (Vault, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("vault.db").display());
    let store = Store::open(&url, true).await.unwrap();
    store.migrate().await.unwrap();
    let vault = Vault::new(Key::random(), store);
    vault.initialise().await.unwrap();
    vault.set(SECRET_NAME, secret.as_bytes()).await.unwrap();
    (vault, dir)
}

/// `[ami]` as the daemon reads it (the master key file must exist for the config to parse;
/// the vault here has its own key).
fn ami_config(ast: &Asterisk, dir: &Path) -> AmiConfig {
    let key = dir.join("master.key");
    std::fs::write(&key, b"").unwrap();
    let text = format!(
        "[vault]\nkey_file = \"{}\"\n[ami]\nupstream = \"127.0.0.1:{}\"\nupstream_username = \"pbxguard\"\n\
         upstream_secret = \"{SECRET_NAME}\"\nupstream_timeout = \"3s\"\n",
        key.display(),
        ast.ami_port
    );
    pbxguard::config::Config::parse(&text)
        .unwrap_or_else(|p| panic!("{p:?}"))
        .ami
        .expect("[ami]")
}

async fn site(read: Option<&str>) -> Option<Site> {
    logs();
    let prefix = asterisk::prefix()?;
    let sip_password = format!("pw-{}", rnd());
    let setup = Setup {
        pjsip: true,
        pjsip_extra: pjsip_account(&sip_password),
        manager_permissions: read.map(|r| (r.to_string(), WRITE_EXAMPLE.to_string())),
        ..Setup::default()
    };
    let ast = tokio::task::spawn_blocking(move || Asterisk::start(&prefix, &setup))
        .await
        .unwrap();
    let (vault, vault_dir) = vault_with(&ast.ami_secret).await;
    let (tx, events) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let monitor = Monitor::spawn(
        &tracker,
        stop.clone(),
        Settings::fixed(ami_config(&ast, vault_dir.path()), vault),
        Arc::new(move |ev| {
            let _ = tx.send((Instant::now(), ev));
        }),
    );
    Some(Site {
        ast,
        sip_password,
        monitor,
        events,
        stop,
        _vault_dir: vault_dir,
    })
}

impl Site {
    async fn wait_stats(&self, what: &str, ok: impl Fn(&Stats) -> bool) -> Stats {
        let end = Instant::now() + T;
        loop {
            let s = self.monitor.stats();
            if ok(&s) {
                return s;
            }
            assert!(Instant::now() < end, "{what}: {s:?}\n{}", log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Logged in and reading: its own login's SuccessfulAuth has arrived.
    async fn ready(&self) {
        self.wait_stats("the monitor reads security events", |s| {
            s.connected && s.class_confirmed
        })
        .await;
    }

    /// The next event at the sink, and how long after `since` it arrived.
    async fn next(&mut self, since: Instant) -> (Duration, SecurityEvent) {
        match tokio::time::timeout(T, self.events.recv()).await {
            Ok(Some((at, ev))) => (at.saturating_duration_since(since), ev),
            _ => panic!(
                "no security event reached the sink within {T:?}\n{}",
                log_text()
            ),
        }
    }

    /// Everything that reaches the sink within `d`.
    async fn drain(&mut self, d: Duration) -> Vec<SecurityEvent> {
        let mut out = Vec::new();
        let end = tokio::time::Instant::now() + d;
        while let Ok(Some((_, ev))) = tokio::time::timeout_at(end, self.events.recv()).await {
            out.push(ev);
        }
        out
    }

    fn sip(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ast.sip_port))
    }

    fn ami(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ast.ami_port))
    }
}

// ---- SIP straight to Asterisk's port -----------------------------------------------------------

/// A SIP client on UDP from its own loopback address.
struct Phone {
    sock: UdpSocket,
    server: SocketAddr,
    call_id: String,
    cseq: u32,
}

impl Phone {
    async fn new(from: &str, server: SocketAddr) -> Phone {
        let sock = UdpSocket::bind((ip(from), 0)).await.unwrap();
        Phone {
            sock,
            server,
            call_id: rnd(),
            cseq: 0,
        }
    }

    fn local(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    /// Sends a REGISTER for `user` (From `from_user`), with `auth` when given; returns the
    /// final response and when the request left.
    async fn register(
        &mut self,
        user: &str,
        from_user: &str,
        auth: Option<String>,
    ) -> (SipMsg, Instant) {
        self.cseq += 1;
        let local = self.local();
        let uri = format!("sip:{}", self.server);
        let mut text = format!(
            "REGISTER {uri} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK{};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{from_user}@{}>;tag={}\r\n\
             To: <sip:{user}@{}>\r\n\
             Call-ID: {}\r\n\
             CSeq: {} REGISTER\r\n\
             Contact: <sip:{user}@{local}>\r\n\
             Expires: 60\r\n\
             User-Agent: pbxguard-tests\r\n",
            rnd(),
            self.server,
            rnd(),
            self.server,
            self.call_id,
            self.cseq
        );
        if let Some(a) = auth {
            text.push_str(&format!("Authorization: {a}\r\n"));
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        let sent = Instant::now();
        self.sock
            .send_to(text.as_bytes(), self.server)
            .await
            .unwrap();
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, _) = tokio::time::timeout(T, self.sock.recv_from(&mut buf))
                .await
                .expect("Asterisk answers the REGISTER")
                .unwrap();
            let msg = SipMsg::parse(&buf[..n]).expect("a SIP response");
            if msg.status().is_some_and(|s| s >= 200) {
                return (msg, sent);
            }
        }
    }

    /// REGISTER, then the answer to the challenge with `password`: the second request's
    /// final response and when it left.
    async fn login(&mut self, user: &str, password: &str) -> (SipMsg, Instant) {
        let (challenge, _) = self.register(user, user, None).await;
        assert_eq!(challenge.status(), Some(401), "{}", challenge.raw);
        let www = challenge
            .header("WWW-Authenticate")
            .expect("a challenge")
            .to_string();
        let uri = format!("sip:{}", self.server);
        let auth = digest(&www, user, password, "REGISTER", &uri);
        self.register(user, user, Some(auth)).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_sip_passwords_reach_the_sink_within_a_second() {
    let Some(mut s) = site(None).await else {
        return;
    };
    s.ready().await;
    // A correct REGISTER first: nothing counts against its address.
    let mut good = Phone::new("127.0.0.4", s.sip()).await;
    let password = s.sip_password.clone();
    let (ok, _) = good.login(SIP_USER, &password).await;
    assert_eq!(ok.status(), Some(200), "{}", ok.raw);

    // Five wrong passwords from another address.
    let mut bad = Phone::new("127.0.0.2", s.sip()).await;
    for i in 0..5 {
        let (refused, sent) = bad.login(SIP_USER, &format!("guess-{i}")).await;
        assert!(
            matches!(refused.status(), Some(401 | 403)),
            "{}",
            refused.raw
        );
        let (took, ev) = s.next(sent).await;
        assert_eq!(
            ev,
            SecurityEvent {
                event: "ChallengeResponseFailed",
                address: ip("127.0.0.2"),
                service: "PJSIP".into(),
                account: Some(SIP_USER.into()),
            }
        );
        assert!(took < Duration::from_secs(1), "took {took:?}");
    }
    // An account that does not exist: InvalidAccountID, at once.
    let mut scan = Phone::new("127.0.0.2", s.sip()).await;
    let (_, sent) = scan.register("nobody", "nobody", None).await;
    let (took, ev) = s.next(sent).await;
    assert_eq!(
        (
            ev.event,
            ev.address,
            ev.service.as_str(),
            ev.account.as_deref()
        ),
        ("InvalidAccountID", ip("127.0.0.2"), "PJSIP", Some("nobody"))
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");

    // The correct REGISTER again, refreshed: still nothing from 127.0.0.4, nor anything else.
    let (ok, _) = good.login(SIP_USER, &password).await;
    assert_eq!(ok.status(), Some(200), "{}", ok.raw);
    let rest = s.drain(Duration::from_millis(1500)).await;
    assert!(
        rest.iter().all(|e| e.address != ip("127.0.0.4")),
        "{rest:?}"
    );
    assert!(rest.is_empty(), "{rest:?}");
    let stats = s.monitor.stats();
    assert_eq!((stats.events, stats.skipped), (6, 0), "{stats:?}");
}

/// A real attack tool: SIPVicious' svcrack guesses the account's password from a dictionary.
/// (Its `-b` binding address is not passed on in 0.3.3, so it sends from 127.0.0.1.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svcrack_guesses_are_each_reported() {
    let Some(mut s) = site(None).await else {
        return;
    };
    s.ready().await;
    let dir = tempfile::tempdir().unwrap();
    let words: Vec<String> = (0..8).map(|i| format!("wrong{i}")).collect();
    std::fs::write(dir.path().join("words.txt"), words.join("\n") + "\n").unwrap();
    let out = tokio::process::Command::new("svcrack")
        .args(["-u", SIP_USER, "-d", "words.txt"])
        .args(["-p", &s.ast.sip_port.to_string(), "-t", "0.1", "127.0.0.1"])
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("svcrack finishes")
        .expect("sipvicious is installed (tests/run.sh installs it)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let events = s.drain(Duration::from_secs(2)).await;
    let failures: Vec<&SecurityEvent> = events
        .iter()
        .filter(|e| e.event == "ChallengeResponseFailed")
        .collect();
    assert_eq!(failures.len(), words.len(), "{events:?}\n{said}");
    assert!(
        events
            .iter()
            .all(|e| e.address == ip("127.0.0.1") && e.service == "PJSIP"),
        "{events:?}"
    );
    assert!(
        failures
            .iter()
            .all(|e| e.account.as_deref() == Some(SIP_USER)),
        "{events:?}"
    );
}

// ---- AMI ---------------------------------------------------------------------------------------

/// A raw AMI client from its own loopback address.
struct AmiRaw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl AmiRaw {
    async fn connect(from: &str, to: SocketAddr) -> AmiRaw {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(ip(from), 0)).unwrap();
        let mut stream = sock.connect(to).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.windows(2).any(|w| w == b"\r\n") {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "no banner");
            buf.extend_from_slice(&chunk[..n]);
        }
        let at = buf.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
        buf.drain(..at);
        AmiRaw { stream, buf }
    }

    /// Sends `action` and returns when it was sent and the first message answering it.
    async fn send(&mut self, action: &str) -> (Instant, String) {
        let sent = Instant::now();
        self.stream.write_all(action.as_bytes()).await.unwrap();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let msg = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 4);
                if msg.starts_with("Response:") {
                    return (sent, msg);
                }
                continue;
            }
            let n = tokio::time::timeout(T, self.stream.read(&mut chunk))
                .await
                .expect("Asterisk answers")
                .unwrap();
            assert!(n > 0, "Asterisk closed the AMI connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_ami_logins_reach_the_sink_within_a_second() {
    let Some(mut s) = site(None).await else {
        return;
    };
    s.ready().await;
    let secret = s.ast.ami_secret.clone();

    // A correct login (another session of the upstream user) counts for nothing.
    let mut good = AmiRaw::connect("127.0.0.1", s.ami()).await;
    let (_, ok) = good
        .send(&format!(
            "Action: Login\r\nUsername: pbxguard\r\nSecret: {secret}\r\n\r\n"
        ))
        .await;
    assert!(ok.contains("Success"), "{ok}");
    assert!(s.drain(Duration::from_millis(500)).await.is_empty());

    // (from, action, event expected). The upstream user's ACL admits 127.0.0.1 only.
    let cases = [
        (
            "127.0.0.3",
            "Action: Login\r\nUsername: admin\r\nSecret: admin\r\n\r\n".to_string(),
            "InvalidAccountID",
            Some("admin"),
        ),
        (
            "127.0.0.3",
            format!("Action: Login\r\nUsername: pbxguard\r\nSecret: {secret}\r\n\r\n"),
            "FailedACL",
            Some("pbxguard"),
        ),
        (
            "127.0.0.1",
            "Action: Login\r\nUsername: pbxguard\r\nSecret: wrong-secret\r\n\r\n".to_string(),
            "InvalidPassword",
            Some("pbxguard"),
        ),
    ];
    for (from, action, event, account) in cases {
        let mut c = AmiRaw::connect(from, s.ami()).await;
        let (sent, answer) = c.send(&action).await;
        assert!(answer.contains("Authentication failed"), "{answer}");
        let (took, ev) = s.next(sent).await;
        assert_eq!(
            (
                ev.event,
                ev.address,
                ev.service.as_str(),
                ev.account.as_deref()
            ),
            (event, ip(from), "AMI", account),
            "{ev:?}"
        );
        assert!(took < Duration::from_secs(1), "{event} took {took:?}");
    }
    // The MD5 login with a wrong key.
    let mut c = AmiRaw::connect("127.0.0.1", s.ami()).await;
    let (_, challenge) = c.send("Action: Challenge\r\nAuthType: MD5\r\n\r\n").await;
    assert!(challenge.contains("Challenge:"), "{challenge}");
    let (sent, answer) = c
        .send("Action: Login\r\nAuthType: MD5\r\nUsername: pbxguard\r\nKey: 00000000000000000000000000000000\r\n\r\n")
        .await;
    assert!(answer.contains("Authentication failed"), "{answer}");
    let (took, ev) = s.next(sent).await;
    // Asterisk names no account here: the session has no user name until a login succeeds.
    assert_eq!(
        (
            ev.event,
            ev.address,
            ev.service.as_str(),
            ev.account.as_deref()
        ),
        ("ChallengeResponseFailed", ip("127.0.0.1"), "AMI", None)
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");

    // Logged in: an action outside the user's write classes, and one that does not exist.
    let (sent, answer) = good
        .send("Action: Command\r\nCommand: core show version\r\n\r\n")
        .await;
    assert!(answer.contains("Permission denied"), "{answer}");
    let (took, ev) = s.next(sent).await;
    assert_eq!(
        (ev.event, ev.address, ev.account.as_deref()),
        ("RequestNotAllowed", ip("127.0.0.1"), Some("pbxguard"))
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let (sent, answer) = good.send("Action: FakeActionBLAH\r\n\r\n").await;
    assert!(answer.contains("Invalid/unknown command"), "{answer}");
    let (took, ev) = s.next(sent).await;
    assert_eq!(
        (ev.event, ev.address),
        ("RequestBadFormat", ip("127.0.0.1"))
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");

    let rest = s.drain(Duration::from_millis(500)).await;
    assert!(rest.is_empty(), "{rest:?}");
    assert_eq!(s.monitor.stats().skipped, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_comes_back_after_asterisk_restarts() {
    let Some(mut s) = site(None).await else {
        return;
    };
    s.ready().await;
    assert_eq!(s.monitor.stats().logins, 1);
    // Asterisk goes away (its AMI closes the session) and comes back on the same ports.
    tokio::task::block_in_place(|| s.ast.restart());
    s.wait_stats("logged in again after the restart", |st| {
        st.logins == 2 && st.connected && st.class_confirmed
    })
    .await;
    let mut c = AmiRaw::connect("127.0.0.3", s.ami()).await;
    let (sent, _) = c
        .send("Action: Login\r\nUsername: intruder\r\nSecret: x\r\n\r\n")
        .await;
    let (took, ev) = s.next(sent).await;
    assert_eq!(
        (ev.event, ev.address),
        ("InvalidAccountID", ip("127.0.0.3"))
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

// ---- fields that carry line breaks ---------------------------------------------------------------

/// A second session with the monitor's event mask, to see what Asterisk writes.
async fn tap(s: &Site) -> AmiRaw {
    let mut c = AmiRaw::connect("127.0.0.1", s.ami()).await;
    let (_, ok) = c
        .send(&format!(
            "Action: Login\r\nUsername: pbxguard\r\nSecret: {}\r\nEvents: security\r\n\r\n",
            s.ast.ami_secret
        ))
        .await;
    assert!(ok.contains("Success"), "{ok}");
    c
}

impl AmiRaw {
    /// Every message that arrives within `d`.
    async fn collect(&mut self, d: Duration) -> Vec<String> {
        let end = tokio::time::Instant::now() + d;
        let mut chunk = [0u8; 4096];
        let mut out = Vec::new();
        loop {
            while let Some(e) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                out.push(String::from_utf8_lossy(&self.buf[..e]).into_owned());
                self.buf.drain(..e + 4);
            }
            match tokio::time::timeout_at(end, self.stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return out,
            }
        }
    }
}

/// Asterisk 22 writes pjsip's unescaped SIP From user into `AccountID` as it is, line breaks
/// included (36 characters at most), ahead of `RemoteAddress`. A scanner can so add headers to
/// the event or end it early; none of that may get a chosen address to the sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_break_in_the_sip_from_user_names_no_address() {
    let Some(mut s) = site(None).await else {
        return;
    };
    s.ready().await;
    let mut tap = tap(&s).await;
    let _ = tap.collect(Duration::from_millis(300)).await;
    let forged = [
        // A second RemoteAddress before Asterisk's own.
        "%0D%0ARemoteAddress%3A%20IPV4/192.0.2.1",
        // A RemoteAddress, then the end of the event (Asterisk's own line break follows).
        "%0D%0ARemoteAddress%3A%20IPV4/192.0.2.1%0D%0A",
        // The end of the event, then a new one made of Asterisk's remaining fields.
        "%0D%0A%0D%0AEvent%3A%20InvalidPassword%0D%0AX%3A%20",
    ];
    for user in forged {
        let mut p = Phone::new("127.0.0.2", s.sip()).await;
        let (r, _) = p.register(user, user, None).await;
        assert_eq!(r.status(), Some(401), "{}", r.raw);
    }
    let raw = tap.collect(Duration::from_secs(1)).await.join("\r\n\r\n");
    // The attack did reach the monitor's stream: Asterisk wrote the injected lines.
    assert!(
        raw.contains("\r\nRemoteAddress: IPV4/192.0.2.1\r\nSessionID: ")
            && raw.contains("\r\nRemoteAddress: IPV4/192.0.2.1\r\n\r\nSessionID: "),
        "Asterisk no longer writes the From user as it is:\n{raw}"
    );
    assert!(
        raw.contains("\r\n\r\nEvent: InvalidPassword\r\nX: \r\nSessionID"),
        "{raw}"
    );
    let got = s.drain(Duration::from_millis(500)).await;
    assert!(
        got.iter().all(|e| e.address != ip("192.0.2.1")),
        "a forged address reached the sink: {got:?}"
    );
    assert!(got.is_empty(), "{got:?}");
    let stats = s.monitor.stats();
    // One skipped event per attempt, and the third one's made-up InvalidPassword too.
    assert_eq!(stats.skipped, 4, "{stats:?}");
    let logs = log_text();
    assert!(
        logs.contains("InvalidAccountID skipped: header \"RemoteAddress\" appears twice"),
        "{logs}"
    );
    assert!(
        logs.contains("InvalidAccountID skipped: it lacks SessionID"),
        "{logs}"
    );
    assert!(
        logs.contains("InvalidPassword skipped: it lacks EventTV"),
        "{logs}"
    );
    // And an honest scan from the same address still counts.
    let mut p = Phone::new("127.0.0.2", s.sip()).await;
    let (_, sent) = p.register("admin", "admin", None).await;
    let (took, ev) = s.next(sent).await;
    assert_eq!(
        (ev.event, ev.address),
        ("InvalidAccountID", ip("127.0.0.2"))
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

// ---- the security class ------------------------------------------------------------------------

/// The example's read list before this monitor: Asterisk accepts the login and sends nothing.
/// The monitor stays connected, warns once, and the audit of the same manager.conf says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_security_class_nothing_arrives_and_the_audit_says_so() {
    let Some(mut s) = site(Some(READ_WITHOUT_SECURITY)).await else {
        return;
    };
    s.wait_stats("logged in", |st| st.connected).await;
    let mut c = AmiRaw::connect("127.0.0.3", s.ami()).await;
    let (_, answer) = c
        .send("Action: Login\r\nUsername: admin\r\nSecret: admin\r\n\r\n")
        .await;
    assert!(answer.contains("Authentication failed"), "{answer}");
    let mut p = Phone::new("127.0.0.2", s.sip()).await;
    p.register("nobody", "nobody", None).await;
    assert!(s.drain(Duration::from_secs(2)).await.is_empty());
    // The warning comes once the grace period after login has passed.
    let end = Instant::now() + Duration::from_secs(20);
    while !log_text().contains("lacks the security read class") {
        assert!(Instant::now() < end, "no warning:\n{}", log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let st = s.monitor.stats();
    assert!(st.connected && !st.class_confirmed, "{st:?}");
    assert_eq!((st.events, st.logins), (0, 1), "{st:?}");

    // The audit reads the manager.conf this Asterisk runs with.
    let findings = pbxguard::audit::asterisk_for(&s.ast.etc(), &[], "pbxguard").unwrap();
    let found: Vec<_> = findings
        .iter()
        .filter(|f| f.message.contains("cannot read class security"))
        .collect();
    assert_eq!(found.len(), 1, "{findings:#?}");
    assert_eq!(found[0].file, "manager.conf");
    assert_eq!(found[0].object, "pbxguard");
    assert!(found[0].message.contains("unbanned"), "{:?}", found[0]);
}

/// The shipped example grants the class: the monitor confirms it and the audit is silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_manager_conf_grants_the_security_class() {
    let shipped = Path::new(asterisk::EXAMPLES);
    let findings = pbxguard::audit::asterisk_with(shipped, &[]).unwrap();
    assert!(
        findings
            .iter()
            .all(|f| !f.message.contains("class security")),
        "{findings:#?}"
    );
    let Some(s) = site(None).await else {
        return;
    };
    s.ready().await;
    let findings = pbxguard::audit::asterisk_for(&s.ast.etc(), &[], "pbxguard").unwrap();
    assert!(
        findings
            .iter()
            .all(|f| !f.message.contains("class security")),
        "{findings:#?}"
    );
    // Told another upstream user, which this manager.conf does not have: nothing to say.
    let findings = pbxguard::audit::asterisk_for(&s.ast.etc(), &[], "gateway").unwrap();
    assert!(findings
        .iter()
        .all(|f| !f.message.contains("class security")));
}
