//! Shared helpers for the end-to-end tests: a private folder per test with its own config and
//! free loopback ports, the real `pbxguard` binary started as a process, and real clients
//! (curl, openssl, sqlite3).
#![allow(dead_code)] // each test binary uses a different subset of these helpers

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub mod ami;
pub mod asterisk;
pub mod netns;
pub mod nginx;
pub mod postgres;
pub mod sip;
pub mod smtp;

pub const BIN: &str = env!("CARGO_BIN_EXE_pbxguard");

/// A free loopback port (the tiny race between drop and reuse is acceptable in tests), never
/// one this process handed out before: the kernel may offer a port again once its probe
/// socket is closed, before the daemon it was meant for has bound it.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port");
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// The store the end-to-end tests' daemons use, from `PBXGUARD_TEST_STORE`: `sqlite` (the
/// default: the file under `state_dir`) or `postgres` (a database of its own on a throwaway
/// cluster, see [`Env::new`]). Any other value is a mistake, not a reason to fall back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestStore {
    Sqlite,
    Postgres,
}

pub fn test_store() -> TestStore {
    let value = std::env::var_os("PBXGUARD_TEST_STORE").unwrap_or_default();
    match value.to_str() {
        Some("" | "sqlite") => TestStore::Sqlite,
        Some("postgres") => TestStore::Postgres,
        _ => panic!("PBXGUARD_TEST_STORE={value:?}: expected sqlite or postgres"),
    }
}

/// One cluster per test process, one database per [`Env`]: an `initdb` and start cost about
/// a second of CPU, a new database a tenth of that. The cluster is never dropped (a
/// `static`); its watcher stops it when the process ends.
fn shared_cluster() -> &'static postgres::Postgres {
    static CLUSTER: std::sync::OnceLock<postgres::Postgres> = std::sync::OnceLock::new();
    CLUSTER.get_or_init(|| {
        assert!(
            postgres::installed(),
            "PBXGUARD_TEST_STORE=postgres but PostgreSQL (initdb, pg_ctl) is not installed; \
             tests/run.sh installs the postgresql package"
        );
        // Every test thread runs a daemon (a pool of up to 8) and CLI processes at once.
        let pg = postgres::Postgres::start_with("e2e", "-c max_connections=400")
            .expect("PostgreSQL is installed");
        pg.stop_when_process_exits();
        pg
    })
}

/// An [`Env`]'s own database on the shared cluster, dropped with the `Env`.
struct PgDatabase {
    cluster: &'static postgres::Postgres,
    name: String,
    url: String,
}

impl PgDatabase {
    fn create() -> PgDatabase {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let cluster = shared_cluster();
        let name = format!(
            "e2e_{}",
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let url = cluster.create_database(&name);
        PgDatabase { cluster, name, url }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // FORCE: a daemon the test still holds may be connected. A failure only costs disk
        // until the cluster goes.
        let sql = format!("DROP DATABASE \"{}\" WITH (FORCE)", self.name);
        if let Err(e) = self.cluster.try_psql("postgres", &sql) {
            eprintln!("{sql}: {e}");
        }
    }
}

/// Under PostgreSQL, a daemon or CLI that made a SQLite file ran on the wrong store, which
/// would pass a test without testing PostgreSQL: that fails the test here.
impl Drop for Env {
    fn drop(&mut self) {
        if self.pg.is_some() && !std::thread::panicking() && self.db().exists() {
            panic!(
                "PBXGUARD_TEST_STORE=postgres, yet {} was created: a config without the \
                 database line (write it with Env::config_text)",
                self.db().display()
            );
        }
    }
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub http_port: u16,
    pub redirect_port: u16,
    /// Set when `PBXGUARD_TEST_STORE=postgres`: `[daemon] database` names it.
    pg: Option<PgDatabase>,
}

impl Env {
    /// A fresh folder with a production-like config: TLS on, redirect listener, not initialised.
    /// The store is the one `PBXGUARD_TEST_STORE` names ([`test_store`]).
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("pbxguard.toml");
        let pg = match test_store() {
            TestStore::Sqlite => None,
            TestStore::Postgres => Some(PgDatabase::create()),
        };
        let env = Env {
            dir,
            config,
            http_port: free_port(),
            redirect_port: free_port(),
            pg,
        };
        env.write_config(&env.config_text(env.http_port, env.redirect_port, ""));
        env
    }

    /// The `postgres://` URL of this Env's database, when it runs on PostgreSQL.
    pub fn database_url(&self) -> Option<&str> {
        self.pg.as_ref().map(|p| p.url.as_str())
    }

    pub fn is_postgres(&self) -> bool {
        self.pg.is_some()
    }

    /// Runs `sql` on this Env's store (`sqlite3` on the file, or `psql`) and returns the rows
    /// in the same shape on both: one line per row, columns joined by `|`, NULL as an empty
    /// string, trimmed. Booleans differ (`1`/`0` against `t`/`f`): cast them to INTEGER.
    /// The SQL itself must be valid on both (no `group_concat` or `hex`).
    pub fn sql(&self, sql: &str) -> String {
        match &self.pg {
            Some(pg) => pg.cluster.psql(&pg.name, sql),
            None => sqlite(&self.db(), sql),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn config_text(&self, http_port: u16, redirect_port: u16, extra: &str) -> String {
        let d = self.dir.path().display();
        let database = match self.database_url() {
            Some(url) => format!("database = \"{url}\"\n"),
            None => String::new(),
        };
        format!(
            r#"[daemon]
state_dir = "{d}/state"
{database}shutdown_grace = "3s"

[vault]
key_file = "{d}/etc/master.key"

[http]
listen = "127.0.0.1:{http_port}"
tls_cert = "{d}/etc/tls/cert.pem"
tls_key = "{d}/etc/tls/key.pem"
redirect_listen = "127.0.0.1:{redirect_port}"
public_url = "https://localhost:{http_port}"
{extra}
"#
        )
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text).expect("write config");
    }

    pub fn db(&self) -> PathBuf {
        self.path("state/pbxguard.db")
    }

    pub fn cert(&self) -> PathBuf {
        self.path("etc/tls/cert.pem")
    }

    /// Runs `pbxguard -c CONFIG ARGS…` with `stdin` piped in.
    pub fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = Command::new(BIN)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "warn")
            .env_remove("CREDENTIALS_DIRECTORY")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pbxguard");
        if let Some(mut input) = child.stdin.take() {
            let _ = input.write_all(stdin);
        }
        child.wait_with_output().expect("wait pbxguard")
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str], stdin: &[u8]) -> Vec<u8> {
        let out = self.run(args, stdin);
        assert!(
            out.status.success(),
            "pbxguard {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    pub fn init(&self) {
        self.ok(&["init"], b"");
    }

    /// Starts `serve` and waits until the API port accepts connections.
    pub fn start(&self) -> Daemon {
        self.start_with(&[])
    }

    /// As [`Env::start`], with extra environment variables (e.g. a systemd notify socket).
    pub fn start_with(&self, vars: &[(&str, String)]) -> Daemon {
        let log = self.path("serve.log");
        // Through `sh … exec` so that WATCHDOG_PID can name the daemon's own pid, as systemd
        // sets it (sd_notify ignores WATCHDOG_USEC meant for another process).
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\"", BIN]);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        if !vars.iter().any(|(k, _)| *k == "NOTIFY_SOCKET") {
            cmd.env_remove("NOTIFY_SOCKET");
        }
        let child = cmd
            .arg("-c")
            .arg(&self.config)
            .arg("serve")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("CREDENTIALS_DIRECTORY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn serve");
        let daemon = Daemon { child, log };
        daemon.wait_for_port(self.http_port);
        daemon
    }

    /// GET over TLS with the generated certificate as the only root of trust.
    pub fn curl_https(&self, path: &str, extra: &[&str]) -> Output {
        let cert = self.cert().display().to_string();
        let url = format!("https://localhost:{}{path}", self.http_port);
        let mut args: Vec<&str> = vec!["-sS", "-i", "--max-time", "10", "--cacert", &cert];
        args.extend_from_slice(extra);
        args.push(&url);
        curl(&args)
    }
}

pub fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(args)
        .output()
        .expect("curl is installed")
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Status code of the first response in `curl -i` output.
pub fn status(out: &Output) -> u16 {
    let s = String::from_utf8_lossy(&out.stdout);
    s.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

pub fn sqlite(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(sql)
        .output()
        .expect("sqlite3 is installed");
    assert!(
        out.status.success(),
        "sqlite3 {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn wait_for_port(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("port {port} never opened; log:\n{}", self.log());
    }

    /// Waits until the log contains `needle` (the daemon logs each state change).
    pub fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("log never showed {needle:?}:\n{}", self.log());
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "daemon did not exit within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends raw bytes on a plain TCP connection and returns everything read until close/timeout.
pub fn raw_exchange(port: u16, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).to_string()
}

/// An HTTP answer as curl saw it.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub head: String,
    pub body: String,
    /// curl's own complaints (empty when the exchange went fine).
    pub curl_error: String,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// First value of a response header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

impl Env {
    /// One request over verified TLS; `headers` are `Name: value` lines.
    pub fn request(&self, method: &str, path: &str, headers: &[&str], body: Option<&str>) -> Resp {
        let cert = self.cert().display().to_string();
        let url = format!("https://localhost:{}{path}", self.http_port);
        let mut args: Vec<String> = [
            "-sS",
            "-i",
            "--max-time",
            "20",
            "--cacert",
            &cert,
            "-X",
            method,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for h in headers {
            args.push("-H".into());
            args.push(h.to_string());
        }
        if let Some(b) = body {
            args.push("--data-binary".into());
            args.push(b.to_string());
        }
        args.push(url);
        let out = Command::new("curl")
            .args(&args)
            .output()
            .expect("curl is installed");
        let raw = String::from_utf8_lossy(&out.stdout).to_string();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw.as_str(), ""));
        Resp {
            status: head
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0),
            head: head.to_string(),
            body: body.to_string(),
            curl_error: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    }

    /// POSTs `file` over HTTP/1.1 with `Expect: 100-continue`, so a refusal made from the
    /// headers (413) arrives before curl sends the body: a deterministic answer.
    pub fn post_expecting_continue(&self, path: &str, file: &Path, headers: &[&str]) -> Output {
        let data = format!("@{}", file.display());
        let mut args = vec![
            "--http1.1",
            "-H",
            "Expect: 100-continue",
            "--expect100-timeout",
            "10",
        ];
        for h in headers {
            args.extend(["-H", h]);
        }
        args.extend(["--data-binary", &data]);
        self.curl_https(path, &args)
    }

    pub fn add_user(&self, name: &str, level: u8, password: &str) {
        self.ok(
            &[
                "user",
                "add",
                name,
                "--level",
                &level.to_string(),
                "--password-stdin",
            ],
            format!("{password}\n").as_bytes(),
        );
    }

    pub fn login(&self, name: &str, password: &str, headers: &[&str]) -> Resp {
        let body = serde_json::json!({ "username": name, "password": password }).to_string();
        let mut all = vec!["Content-Type: application/json"];
        all.extend_from_slice(headers);
        self.request("POST", "/api/v1/auth/login", &all, Some(&body))
    }

    /// Logs in and returns the token.
    pub fn token(&self, name: &str, password: &str) -> String {
        let r = self.login(name, password, &[]);
        assert_eq!(r.status, 200, "{r:?}");
        r.json()["token"].as_str().expect("token").to_string()
    }

    pub fn check(&self, token: &str, headers: &[&str]) -> Resp {
        let auth = format!("Authorization: Bearer {token}");
        let mut all = vec![auth.as_str()];
        all.extend_from_slice(headers);
        self.request("GET", "/api/v1/auth/check", &all, None)
    }
}

/// Runs `cmd` (stdin closed, output piped), killing it after `limit`; its output, read while
/// it runs (a flood or a chatty client writes more than a pipe holds).
pub fn run_for(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    finish(child, limit)
}

/// Waits for a child started with piped stdout and stderr, killing it after `limit`.
pub fn finish(mut child: Child, limit: Duration) -> Output {
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = pipe.read_to_end(&mut out);
            out
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let end = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > end {
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

impl Env {
    /// `pbxguard ami user add NAME --password-stdin ARGS…` with `secret`.
    pub fn add_ami_client(&self, name: &str, secret: &str, args: &[&str]) {
        let mut all = vec!["ami", "user", "add", name, "--password-stdin"];
        all.extend_from_slice(args);
        self.ok(&all, secret.as_bytes());
    }

    /// `pbxguard sip credential set EXT --username EXT --password-stdin`.
    pub fn set_sip_credential(&self, ext: &str, password: &str) {
        self.ok(
            &[
                "sip",
                "credential",
                "set",
                ext,
                "--username",
                ext,
                "--password-stdin",
            ],
            format!("{password}\n").as_bytes(),
        );
    }
}

/// A browser run of `tests/browser/SCRIPT` (headless Chromium through Debian's selenium): its
/// screenshot folder, emptied first, under the test target's tmp folder.
pub struct BrowserRun {
    pub shots: PathBuf,
    script: &'static str,
}

impl BrowserRun {
    pub fn new(script: &'static str, shots: &str) -> BrowserRun {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(shots);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("screenshot folder");
        BrowserRun { shots: dir, script }
    }

    /// Runs the script with `args` and fails the test with its output and the daemon's log
    /// when it fails; its standard output when it passes.
    pub fn run(&self, args: &[&std::ffi::OsStr], daemon: &Daemon) -> String {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/browser")
            .join(self.script);
        let out = Command::new("/usr/bin/python3")
            .arg(script)
            .args(args)
            .output()
            .expect("python3 with selenium");
        assert!(
            out.status.success(),
            "browser run failed:\n{}\n{}\ndaemon log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            daemon.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Each screenshot is a real PNG with something drawn in it.
    pub fn assert_shots(&self, names: &[&str]) {
        for shot in names {
            let png =
                std::fs::read(self.shots.join(shot)).unwrap_or_else(|e| panic!("{shot}: {e}"));
            assert!(png.starts_with(b"\x89PNG") && png.len() > 2000, "{shot}");
        }
    }
}
