//! Blocklist feeds (`[[bans.feeds]]`) through the library API against a real HTTP server on
//! loopback that each test writes its answers into: import, change, broken feeds that keep
//! the last good list, `max_entries`, APIBAN with its key from a real vault, reload and stop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pbxguard::bans::feeds::{self, FeedConfig, FeedError, FeedFormat, FeedSink, FeedUpdate};
use pbxguard::metrics::{FeedLabels, Metrics};
use pbxguard::store::Store;
use pbxguard::vault::{Key, Vault};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What the server answers on one path.
#[derive(Clone)]
enum Reply {
    /// 200 with this body.
    Ok(String),
    Status(u16, String),
    Redirect(String),
    /// Reads the request and never answers.
    Hang,
    /// 200 without a length, then 20 MiB of addresses until the client goes away.
    Endless,
    /// 200 declaring this many bytes, then a few.
    Declared(u64),
}

#[derive(Clone, Default)]
struct Routes {
    exact: Arc<Mutex<HashMap<String, Reply>>>,
    /// Paths asked for, in order.
    log: Arc<Mutex<Vec<String>>>,
}

impl Routes {
    fn set(&self, path: &str, reply: Reply) {
        self.exact.lock().unwrap().insert(path.to_string(), reply);
    }

    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn count(&self, path: &str) -> usize {
        self.requests().iter().filter(|p| *p == path).count()
    }
}

/// A plain HTTP/1.1 server on 127.0.0.1 that answers from `routes` (404 otherwise).
async fn server() -> (SocketAddr, Routes) {
    log();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let routes = Routes::default();
    let r = routes.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(answer(stream, r.clone()));
        }
    });
    (addr, routes)
}

async fn answer(mut stream: TcpStream, routes: Routes) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        assert!(head.len() < 65536, "request head too long");
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let path = head.split(' ').nth(1).unwrap_or_default().to_string();
    assert!(head.starts_with("GET "), "{head}");
    assert!(
        head.contains("\r\nhost: 127.0.0.1:") || head.contains("\r\nHost: 127.0.0.1:"),
        "{head}"
    );
    routes.log.lock().unwrap().push(path.clone());
    let reply = routes.exact.lock().unwrap().get(&path).cloned();
    let simple = |status: u16, extra: &str, body: &str| {
        format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
            body.len()
        )
    };
    let text = match reply {
        None => simple(404, "", "not here\n"),
        Some(Reply::Ok(body)) => simple(200, "Content-Type: text/plain\r\n", &body),
        Some(Reply::Status(status, body)) => simple(status, "", &body),
        Some(Reply::Redirect(to)) => simple(302, &format!("Location: {to}\r\n"), ""),
        Some(Reply::Hang) => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            return;
        }
        Some(Reply::Declared(n)) => {
            format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n192.0.2.1\n")
        }
        Some(Reply::Endless) => {
            let head = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n";
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = "192.0.2.1\n".repeat(6554);
            for _ in 0..(20 << 20) / chunk.len() {
                if stream.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
            }
            return;
        }
    };
    let _ = stream.write_all(text.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// A sink that hands every update to the test.
fn sink() -> (FeedSink, mpsc::UnboundedReceiver<FeedUpdate>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sink: FeedSink = Arc::new(move |u: FeedUpdate| {
        let tx = tx.clone();
        Box::pin(async move {
            let _ = tx.send(u);
        })
    });
    (sink, rx)
}

async fn next_update(rx: &mut mpsc::UnboundedReceiver<FeedUpdate>) -> FeedUpdate {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no feed update within 10 s")
        .expect("sink dropped")
}

/// Waits for an update whose entries are `want` (earlier ones may still be on their way).
async fn update_with(rx: &mut mpsc::UnboundedReceiver<FeedUpdate>, want: &[&str]) -> FeedUpdate {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let u = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no update listing {want:?} within 10 s"))
            .expect("sink dropped");
        if entries(&u) == want {
            return u;
        }
    }
}

fn entries(u: &FeedUpdate) -> Vec<String> {
    u.entries.iter().map(|k| k.to_string()).collect()
}

fn count(metrics: &Metrics, feed: &str, result: &'static str) -> u64 {
    metrics
        .ban_feed_refreshes
        .get_or_create(&FeedLabels {
            feed: feed.to_string(),
            result,
        })
        .get()
}

async fn wait_count(metrics: &Metrics, feed: &str, result: &'static str, at_least: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while count(metrics, feed, result) < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{feed}: {result} refreshes stayed at {} (want {at_least})",
            count(metrics, feed, result)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn vault(dir: &tempfile::TempDir) -> Vault {
    let url = format!("sqlite://{}", dir.path().join("feeds.db").display());
    let store = Store::open(&url, true).await.unwrap();
    store.migrate().await.unwrap();
    let vault = Vault::new(Key::random(), store);
    vault.initialise().await.unwrap();
    vault
}

/// A plain feed that refreshes every 300 ms (the config refuses less than a minute; the
/// struct does not) and gives up on an answer after 500 ms.
fn plain(name: &str, addr: SocketAddr, path: &str) -> FeedConfig {
    let mut f = FeedConfig::with_defaults(name, &format!("http://{addr}{path}"), FeedFormat::Plain);
    f.interval = Duration::from_millis(300);
    f.ttl = Duration::from_secs(1);
    f.timeout = Duration::from_millis(500);
    f
}

struct Running {
    tracker: TaskTracker,
    shutdown: CancellationToken,
    feeds: Option<feeds::Feeds>,
    metrics: Metrics,
    rx: mpsc::UnboundedReceiver<FeedUpdate>,
    _dir: tempfile::TempDir,
}

async fn start(configs: Vec<FeedConfig>) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let v = vault(&dir).await;
    start_with(configs, v, dir)
}

fn start_with(configs: Vec<FeedConfig>, vault: Vault, dir: tempfile::TempDir) -> Running {
    let tracker = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let metrics = Metrics::new();
    let (sink, rx) = sink();
    let feeds = feeds::spawn(
        &tracker,
        shutdown.clone(),
        configs,
        vault,
        metrics.clone(),
        sink,
    );
    Running {
        tracker,
        shutdown,
        feeds: Some(feeds),
        metrics,
        rx,
        _dir: dir,
    }
}

impl Running {
    /// Stops everything and checks that every task ended.
    async fn finish(mut self) {
        drop(self.feeds.take());
        self.tracker.close();
        tokio::time::timeout(Duration::from_secs(3), self.tracker.wait())
            .await
            .expect("feed tasks still running 3 s after the handle was dropped");
        self.shutdown.cancel();
    }
}

#[tokio::test]
async fn a_plain_feed_is_imported_and_follows_its_changes() {
    let (addr, routes) = server().await;
    routes.set(
        "/list.txt",
        Reply::Ok(
            "# test list\n192.0.2.1\n198.51.100.0/24  # a prefix\n2001:db8:1::7\nbanana\n".into(),
        ),
    );
    let mut run = start(vec![plain("drop", addr, "/list.txt")]).await;
    let first = next_update(&mut run.rx).await;
    assert_eq!(first.feed, "drop");
    assert_eq!(
        entries(&first),
        ["192.0.2.1", "198.51.100.0/24", "2001:db8:1::/64"]
    );
    assert_eq!(first.ttl, Duration::from_secs(1));

    // The feed drops the prefix and adds a host: the next update is the new list, whole.
    routes.set("/list.txt", Reply::Ok("192.0.2.1\n192.0.2.2\n".into()));
    update_with(&mut run.rx, &["192.0.2.1", "192.0.2.2"]).await;
    // An empty list is a list: every entry went away.
    routes.set("/list.txt", Reply::Ok("# nothing today\n".into()));
    update_with(&mut run.rx, &[]).await;

    assert!(count(&run.metrics, "drop", "ok") >= 3);
    assert_eq!(count(&run.metrics, "drop", "failed"), 0);
    run.finish().await;
    // The garbage line made one summary line naming its line number, not a line of its own.
    let text = log().text();
    let summaries: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("feed=drop") && l.contains("skipped=1"))
        .collect();
    assert_eq!(summaries.len(), 1, "{text}");
    assert!(
        summaries[0].contains("first_bad_line=5"),
        "{}",
        summaries[0]
    );
    assert!(summaries[0].contains("WARN"), "{}", summaries[0]);
}

#[tokio::test]
async fn a_broken_feed_keeps_its_last_good_list() {
    let (addr, routes) = server().await;
    routes.set("/l", Reply::Ok("192.0.2.1\n".into()));
    let mut run = start(vec![plain("flaky", addr, "/l")]).await;
    assert_eq!(entries(&next_update(&mut run.rx).await), ["192.0.2.1"]);

    let broken = [
        ("500", Reply::Status(500, "oops".into())),
        ("timeout", Reply::Hang),
        ("endless body", Reply::Endless),
        ("declared oversize", Reply::Declared(64 << 20)),
        (
            "html",
            Reply::Ok("<html>\n<body>maintenance</body>\n</html>\n".into()),
        ),
        (
            "redirect",
            Reply::Redirect("https://elsewhere.example/l".into()),
        ),
        ("404", Reply::Status(404, "".into())),
    ];
    for (what, reply) in broken {
        routes.set("/l", reply);
        let failed = count(&run.metrics, "flaky", "failed");
        // A refresh that began before the switch may still bring the good list: wait for the
        // first failure, forget what came before it, then watch two more failures.
        wait_count(&run.metrics, "flaky", "failed", failed + 1).await;
        while run.rx.try_recv().is_ok() {}
        wait_count(&run.metrics, "flaky", "failed", failed + 3).await;
        assert!(
            run.rx.try_recv().is_err(),
            "{what}: a failed refresh called the sink"
        );
    }
    // Repaired: the feed's new list arrives.
    routes.set("/l", Reply::Ok("192.0.2.9\n".into()));
    update_with(&mut run.rx, &["192.0.2.9"]).await;
    run.finish().await;
}

#[tokio::test]
async fn fetch_says_why_a_feed_is_broken() {
    let (addr, routes) = server().await;
    let mut f = plain("x", addr, "/b");
    f.timeout = Duration::from_secs(10);
    let fr = &f;
    let err = move |routes: &Routes, reply: Reply| {
        routes.set("/b", reply);
        feeds::fetch(fr, None)
    };
    match err(&routes, Reply::Status(500, "".into())).await {
        Err(FeedError::Status { status: 500, host }) => assert_eq!(host, format!("http://{addr}")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        err(&routes, Reply::Redirect("https://e.example/".into())).await,
        Err(FeedError::Redirect { status: 302, .. })
    ));
    assert!(matches!(
        err(&routes, Reply::Endless).await,
        Err(FeedError::TooLarge { limit }) if limit == feeds::MAX_BODY
    ));
    assert!(matches!(
        err(&routes, Reply::Declared(64 << 20)).await,
        Err(FeedError::TooLarge { .. })
    ));
    assert!(matches!(
        err(&routes, Reply::Ok("<html>\n</html>".into())).await,
        Err(FeedError::NoAddresses {
            lines: 2,
            first: 1,
            ..
        })
    ));
    f.timeout = Duration::from_millis(300);
    routes.set("/b", Reply::Hang);
    assert!(matches!(
        feeds::fetch(&f, None).await,
        Err(FeedError::Timeout(_))
    ));

    // A port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let gone = plain("x", closed, "/");
    assert!(matches!(
        feeds::fetch(&gone, None).await,
        Err(FeedError::Connect { .. })
    ));
    // Plain http never leaves this machine, whatever the struct says.
    let mut far = plain("x", addr, "/");
    far.url = "http://192.0.2.1/list".into();
    assert!(matches!(
        feeds::fetch(&far, None).await,
        Err(FeedError::Url(m)) if m.contains("loopback")
    ));
}

#[tokio::test]
async fn a_feed_over_max_entries_keeps_the_first_ones() {
    let (addr, routes) = server().await;
    let body: String = (1..=50).map(|i| format!("198.51.100.{i}\n")).collect();
    routes.set("/big", Reply::Ok(format!("{body}192.0.2.1/24\n")));
    let mut f = plain("big", addr, "/big");
    f.max_entries = 10;
    let mut run = start(vec![f]).await;
    let u = next_update(&mut run.rx).await;
    let want: Vec<String> = (1..=10).map(|i| format!("198.51.100.{i}")).collect();
    assert_eq!(entries(&u), want);
    // Truncated is still a success.
    wait_count(&run.metrics, "big", "ok", 1).await;
    assert_eq!(count(&run.metrics, "big", "failed"), 0);
    run.finish().await;
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused() {
    pbxguard::tls::install_provider();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let handshakes = Arc::new(Mutex::new(0));
    let h = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            *h.lock().unwrap() += 1;
            let _ = acceptor.accept(s).await;
        }
    });
    let f = FeedConfig::with_defaults(
        "tls",
        &format!("https://127.0.0.1:{port}/list"),
        FeedFormat::Plain,
    );
    match feeds::fetch(&f, None).await {
        Err(FeedError::Tls { reason, .. }) => {
            assert!(reason.contains("certificate"), "{reason}")
        }
        // A system without roots trusts nothing, which refuses it too.
        Err(FeedError::NoRoots(_)) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(
        *handshakes.lock().unwrap(),
        1,
        "the client did reach the server"
    );
}

/// Writes everything the feeds log, for checks that the key never shows.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).to_string()
    }
}

/// Everything every test of this file logs. One global subscriber, installed before any feed
/// runs: a per-test (thread-local) one misses events when tests run in parallel, because
/// tracing caches each call site's interest process-wide.
fn log() -> &'static Captured {
    static LOG: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let log = Captured::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        log
    })
}

fn apiban_page(ips: &[&str], id: &str) -> Reply {
    Reply::Ok(serde_json::json!({ "ipaddress": ips, "ID": id }).to_string())
}

fn no_new_bans() -> Reply {
    Reply::Status(400, r#"{"ipaddress":["no new bans"],"ID":"none"}"#.into())
}

/// APIBAN against a fake: the key comes from the vault at every refresh, the whole list is
/// downloaded once and then only what is new, a refused key keeps the list, and no key
/// ever reaches the log.
#[tokio::test]
async fn apiban_with_its_key_from_the_vault() {
    let (addr, routes) = server().await;
    routes.set(
        "/api/k3y-abc/banned",
        apiban_page(&["192.0.2.10", "192.0.2.11"], "1001"),
    );
    routes.set(
        "/api/k3y-abc/banned/1001",
        apiban_page(&["2001:db8:5::1", "not an address", "192.0.2.10"], "1002"),
    );
    routes.set("/api/k3y-abc/banned/1002", no_new_bans());

    let dir = tempfile::tempdir().unwrap();
    let v = vault(&dir).await;
    // A trailing newline (as `vault set` from a file may store it) is not part of the key.
    v.set("apiban/key", b"k3y-abc\n").await.unwrap();
    let mut f =
        FeedConfig::with_defaults("apiban", &format!("http://{addr}/api/"), FeedFormat::Apiban);
    f.key_secret = Some("apiban/key".into());
    f.interval = Duration::from_millis(300);
    f.ttl = Duration::from_secs(1);
    f.timeout = Duration::from_millis(500);
    f.request_gap = Duration::from_millis(20);

    // The one-shot fetch does a full download too.
    let list = feeds::fetch(&f, Some(&v)).await.unwrap();
    assert_eq!(list.entries.len(), 3);
    assert_eq!((list.bad, list.duplicates), (1, 1));
    assert!(matches!(
        feeds::fetch(&f, None).await,
        Err(FeedError::Key { .. })
    ));

    let mut run = start_with(vec![f], v.clone(), dir);
    let first = next_update(&mut run.rx).await;
    assert_eq!(
        entries(&first),
        ["192.0.2.10", "192.0.2.11", "2001:db8:5::/64"]
    );

    // Something new: only the pages after the last ID are asked for.
    routes.set(
        "/api/k3y-abc/banned/1002",
        apiban_page(&["198.51.100.20"], "1003"),
    );
    routes.set("/api/k3y-abc/banned/1003", no_new_bans());
    update_with(
        &mut run.rx,
        &[
            "192.0.2.10",
            "192.0.2.11",
            "2001:db8:5::/64",
            "198.51.100.20",
        ],
    )
    .await;
    assert_eq!(
        routes.count("/api/k3y-abc/banned"),
        2,
        "one full download each: fetch, task"
    );

    // A new key in the vault is used at the next refresh, without a reload.
    routes.set("/api/n3w/banned/1003", no_new_bans());
    v.set("apiban/key", b"n3w").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while routes.count("/api/n3w/banned/1003") == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new key was never used"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let kept = update_with(
        &mut run.rx,
        &[
            "192.0.2.10",
            "192.0.2.11",
            "2001:db8:5::/64",
            "198.51.100.20",
        ],
    )
    .await;
    assert_eq!(kept.ttl, Duration::from_secs(1));

    // A refused key, garbage JSON, a key that is not one, a missing secret: each fails and the
    // list stays as it was.
    let broken: [(&str, Option<&[u8]>, Reply); 4] = [
        (
            "refused",
            Some(b"wr0ng"),
            Reply::Status(
                400,
                r#"{"ipaddress":["unauthorized"],"ID":"unauthorized"}"#.into(),
            ),
        ),
        (
            "garbage",
            Some(b"n3w"),
            Reply::Ok("{\"ipaddress\": [".into()),
        ),
        ("bad key", Some(b"a/b c"), no_new_bans()),
        ("missing", None, no_new_bans()),
    ];
    for (what, key, reply) in broken {
        routes.set("/api/wr0ng/banned/1003", reply.clone());
        routes.set("/api/n3w/banned/1003", reply);
        match key {
            Some(k) => v.set("apiban/key", k).await.unwrap(),
            None => v.remove("apiban/key").await.unwrap(),
        }
        let failed = count(&run.metrics, "apiban", "failed");
        wait_count(&run.metrics, "apiban", "failed", failed + 1).await;
        while run.rx.try_recv().is_ok() {}
        wait_count(&run.metrics, "apiban", "failed", failed + 3).await;
        assert!(
            run.rx.try_recv().is_err(),
            "{what}: a failed refresh called the sink"
        );
    }
    assert!(
        !routes
            .requests()
            .iter()
            .any(|p| p.contains("a/b") || p.contains("a%2Fb")),
        "a value that is not a key never went into a path"
    );

    // Back to a good key: the list kept its entries and follows on from the last ID.
    v.set("apiban/key", b"n3w").await.unwrap();
    routes.set(
        "/api/n3w/banned/1003",
        apiban_page(&["198.51.100.21"], "1004"),
    );
    routes.set("/api/n3w/banned/1004", no_new_bans());
    update_with(
        &mut run.rx,
        &[
            "192.0.2.10",
            "192.0.2.11",
            "2001:db8:5::/64",
            "198.51.100.20",
            "198.51.100.21",
        ],
    )
    .await;
    run.finish().await;

    let text = log().text();
    assert!(text.contains("feed refresh failed"), "{text}");
    assert!(
        text.contains("the key was refused (unauthorized)"),
        "{text}"
    );
    // The keys of every test in this file, logged or not.
    for key in ["k3y-abc", "n3w", "wr0ng", "s3cr3t-k"] {
        assert!(!text.contains(key), "the key {key} is in the log:\n{text}");
    }
}

#[tokio::test]
async fn apiban_answers_that_are_not_apiban() {
    let (addr, routes) = server().await;
    let dir = tempfile::tempdir().unwrap();
    let v = vault(&dir).await;
    v.set("apiban/key", b"s3cr3t-k").await.unwrap();
    let mut f = FeedConfig::with_defaults("a", &format!("http://{addr}/api"), FeedFormat::Apiban);
    f.key_secret = Some("apiban/key".into());
    f.request_gap = Duration::ZERO;
    f.timeout = Duration::from_secs(10);
    let (fr, vr, rr) = (&f, &v, &routes);
    let try_with = move |reply: Reply| {
        rr.set("/api/s3cr3t-k/banned", reply);
        feeds::fetch(fr, Some(vr))
    };
    assert!(matches!(
        try_with(Reply::Ok("<html></html>".into())).await,
        Err(FeedError::Json(_))
    ));
    assert!(matches!(
        try_with(Reply::Ok(r#"{"ipaddress":[1,2],"ID":"5"}"#.into())).await,
        Err(FeedError::Json(_))
    ));
    assert!(matches!(
        try_with(Reply::Ok(r#"{"ipaddress":[],"ID":"../../x"}"#.into())).await,
        Err(FeedError::Json(_))
    ));
    assert!(matches!(
        try_with(Reply::Declared(64 << 20)).await,
        Err(FeedError::TooLarge { .. })
    ));
    assert!(matches!(
        try_with(Reply::Status(502, "".into())).await,
        Err(FeedError::Apiban(_))
    ));
    assert!(matches!(
        try_with(Reply::Status(400, r#"{"ipaddress":"rate limit exceeded","ID":"none"}"#.into())).await,
        Err(FeedError::Apiban(m)) if m.contains("rate limit")
    ));
    // Nothing but garbage is not a list.
    routes.set("/api/s3cr3t-k/banned/7", no_new_bans());
    assert!(matches!(
        try_with(apiban_page(&["x", "y"], "7")).await,
        Err(FeedError::NoAddresses { lines: 2, .. })
    ));
    // An empty list is one; an ID that does not move ends the download.
    assert!(try_with(apiban_page(&[], "7"))
        .await
        .unwrap()
        .entries
        .is_empty());
    routes.set("/api/s3cr3t-k/banned/8", apiban_page(&["192.0.2.8"], "8"));
    let list = try_with(apiban_page(&["192.0.2.7"], "8")).await.unwrap();
    assert_eq!(list.entries.len(), 2);
    assert_eq!(routes.count("/api/s3cr3t-k/banned/8"), 1);
    // A big answer is cut at max_entries.
    let many: Vec<String> = (0..2000)
        .map(|i| format!("10.0.{}.{}", i / 256, i % 256))
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    routes.set("/api/s3cr3t-k/banned/9", no_new_bans());
    routes.set("/api/s3cr3t-k/banned", apiban_page(&many, "9"));
    f.max_entries = 100;
    let list = feeds::fetch(&f, Some(&v)).await.unwrap();
    assert_eq!(list.entries.len(), 100);
    assert_eq!(list.over_max, 1900);
}

#[tokio::test]
async fn reload_restarts_what_changed_and_stops_what_went() {
    let (addr, routes) = server().await;
    routes.set("/a", Reply::Ok("192.0.2.1\n".into()));
    routes.set("/b", Reply::Ok("192.0.2.2\n".into()));
    routes.set("/c", Reply::Ok("192.0.2.3\n".into()));
    let mut run = start(vec![plain("a", addr, "/a")]).await;
    assert_eq!(next_update(&mut run.rx).await.feed, "a");

    let feeds = run.feeds.as_mut().unwrap();
    let done = feeds.reload(vec![plain("b", addr, "/b")]);
    assert_eq!(
        (done.started, done.removed, done.kept),
        (vec!["b".to_string()], vec!["a".to_string()], vec![])
    );
    assert_eq!(feeds.names(), ["b"]);
    // Feed a is gone: no more requests for it, no more updates from it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let u = tokio::time::timeout_at(deadline, run.rx.recv())
            .await
            .unwrap()
            .unwrap();
        if u.feed == "b" {
            break;
        }
    }
    let asked = routes.count("/a");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(routes.count("/a"), asked, "a removed feed is still fetched");
    while let Ok(u) = run.rx.try_recv() {
        assert_eq!(u.feed, "b");
    }

    // b unchanged and c new; then b changed.
    let feeds = run.feeds.as_mut().unwrap();
    let done = feeds.reload(vec![plain("b", addr, "/b"), plain("c", addr, "/c")]);
    assert_eq!(
        (done.started, done.kept),
        (vec!["c".to_string()], vec!["b".to_string()])
    );
    let mut b2 = plain("b", addr, "/b");
    b2.max_entries = 5;
    let done = feeds.reload(vec![b2, plain("c", addr, "/c")]);
    assert_eq!(
        (done.started, done.kept),
        (vec!["b".to_string()], vec!["c".to_string()])
    );
    let mut names = feeds.names();
    names.sort();
    assert_eq!(names, ["b", "c"]);
    assert_eq!(update_with(&mut run.rx, &["192.0.2.3"]).await.feed, "c");

    // The daemon's shutdown stops them all too.
    run.shutdown.cancel();
    run.tracker.close();
    tokio::time::timeout(Duration::from_secs(3), run.tracker.wait())
        .await
        .expect("feed tasks outlived the shutdown");
    run.finish().await;
}
