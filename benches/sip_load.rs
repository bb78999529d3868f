//! Load harness for the SIP edge: REGISTER transactions per second over TLS through pbxguard
//! and through Kamailio 5.6 (Debian 12 packages `kamailio` + `kamailio-tls-modules`, `tls`
//! module), both in front of the same loopback UDP registrar, driven by the same client,
//! alternating, in one run. `cargo bench --bench sip_load` (release build).
//!
//! Pieces (all in this file, no external tool):
//! - Registrar: one thread on a blocking loopback UDP socket that answers every request with
//!   `200 OK` (Via list, From, To + tag, Call-ID, CSeq, Contact copied; `Content-Length: 0`).
//!   It does no work beyond that, so the proxies are what is measured.
//! - Certificate: one self-signed ECDSA P-256 certificate (rcgen) for `localhost`/127.0.0.1,
//!   served by both proxies; the client trusts exactly that certificate.
//! - Client: CONNS TLS connections, each keeping WINDOW REGISTERs in flight (one Call-ID per
//!   connection, a new CSeq and branch per REGISTER). Responses are matched to requests by
//!   CSeq. Completed transactions are counted over DURATION seconds after WARMUP seconds;
//!   p50/p99 are of the transactions completed in that window. A REGISTER unanswered after
//!   LOST_MS counts as lost and is replaced, so the window stays full.
//! - Kamailio: benches/kamailio/kamailio.cfg + tls.cfg, copied into a temporary folder with
//!   the certificate, run in the foreground as the current user (`-DD -E`), `-m 2048 -M 64`.
//! - pbxguard: `target/release/pbxguard serve` with a temporary state dir and a `[sip]`
//!   section (see `pbxguard_sip_section`).
//!
//! Reported: per round REGISTER/s, p50, p99 for each proxy, medians and the ratio
//! pbxguard / Kamailio (target >= 1.0); proxy CPU per transaction; memory per idle TLS
//! connection (Pss summed over Kamailio's processes, which share memory; Pss and RSS of
//! pbxguard's single process), measured on fresh processes; optionally memory per idle WSS
//! connection (pbxguard only, SIP_WSS_IDLE=N).
//!
//! Knobs (environment): SIP_LOAD_ONLY=kamailio|pbxguard (default: both, alternating),
//! ROUNDS (3), CONNS (50), WINDOW (2), WARMUP (2 s), DURATION (10 s), LOST_MS (2000),
//! IDLE (2000 idle TLS connections; 0 skips), IDLE_REGISTER (1: each idle connection
//! registers once first, as a phone does), IDLE_SETTLE (6 s before measuring),
//! CLIENT_THREADS (1), KAMAILIO_CHILDREN (2),
//! KAMAILIO_TCP_CHILDREN (2), KAMAILIO_STATELESS (0; 1 = forward() instead of t_relay()),
//! KAMAILIO_SHM_MB (2048), KAMAILIO_PKG_MB (64), SIP_WSS_IDLE (0; e.g. 10000),
//! SIP_WSS_PATH ("/ws"), SIP_WSS_ORIGIN, SIP_WSS_BIND (pbxguard CLI words binding an extension
//! to a user), SIP_PBXGUARD_OMIT (comma-separated [sip] keys to leave out), SIP_PBXGUARD_EXTRA
//! (lines appended to [sip], `\n`-separated), KAMAILIO (binary), KAMAILIO_OSSL3_FIX (1).
//!
//! The harness raises RLIMIT_NOFILE to its hard limit; the proxies inherit it. In production
//! the daemon needs the same (systemd `LimitNOFILE=`) to hold 10,000 connections.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::io::Write as _;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use common::{free_port, Daemon, Env};

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn knob_str(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

// ---- registrar --------------------------------------------------------------------------------

struct Registrar {
    port: u16,
    requests: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Registrar {
    fn start() -> Registrar {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("registrar bind");
        sock.set_read_timeout(Some(Duration::from_millis(200))).ok();
        let port = sock.local_addr().expect("addr").port();
        let requests = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            let mut out = Vec::with_capacity(4096);
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                out.clear();
                if answer(&buf[..n], &mut out) {
                    r.fetch_add(1, Ordering::Relaxed);
                    let _ = sock.send_to(&out, from);
                }
            }
        });
        Registrar {
            port,
            requests,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Registrar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The header name of `line` if it is one of the headers a `200 OK` to REGISTER copies
/// (long or compact form), normalised.
fn copied_header(name: &str) -> Option<&'static str> {
    let n = name.trim();
    for (long, short, out) in [
        ("via", "v", "Via"),
        ("from", "f", "From"),
        ("to", "t", "To"),
        ("call-id", "i", "Call-ID"),
        ("cseq", "", "CSeq"),
        ("contact", "m", "Contact"),
        ("path", "", "Path"),
    ] {
        if n.eq_ignore_ascii_case(long) || (!short.is_empty() && n.eq_ignore_ascii_case(short)) {
            return Some(out);
        }
    }
    None
}

/// Builds the registrar's answer to one datagram; false for responses and garbage (ignored).
fn answer(req: &[u8], out: &mut Vec<u8>) -> bool {
    let Ok(text) = std::str::from_utf8(req) else {
        return false;
    };
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or("");
    if first.starts_with("SIP/2.0") || !first.ends_with("SIP/2.0") {
        return false;
    }
    out.extend_from_slice(b"SIP/2.0 200 OK\r\n");
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let Some(h) = copied_header(name) else {
            continue;
        };
        let value = value.trim();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        if h == "To" && !value.contains(";tag=") {
            out.extend_from_slice(b";tag=reg");
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Server: sip-load-registrar\r\nContent-Length: 0\r\n\r\n");
    true
}

// ---- TLS ----------------------------------------------------------------------------------

struct Cert {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

fn make_cert(dir: &Path) -> Cert {
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("cert params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "sip-load");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    Cert {
        cert: cert_path,
        key: key_path,
        der: cert.der().clone(),
    }
}

fn client_tls(roots: &[CertificateDer<'static>], alpn: &[&[u8]]) -> TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).expect("root");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(store)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(cfg))
}

fn pem_der(path: &Path) -> CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_file(path).expect("PEM certificate")
}

async fn tls_connect(tls: &TlsConnector, port: u16) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost").expect("name");
    tls.connect(name, tcp).await
}

// ---- process accounting -------------------------------------------------------------------

/// (Pss, Rss) in kB from /proc/PID/smaps_rollup.
fn pss_rss_kb(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Pss:"), field("Rss:"))
}

/// user + system CPU ticks of a process (all its threads).
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at ") ".
    let rest = s.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime is field 14, stime 15 (1-based); here index 0 is field 3.
    get(11) + get(12)
}

fn ticks_per_sec() -> f64 {
    // CLK_TCK is 100 on every Linux this runs on.
    100.0
}

fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let s = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let ppid = s
            .rsplit_once(") ")
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

fn raise_nofile() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    let hard = lim.maximum;
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: hard,
            maximum: hard,
        },
    );
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---- the proxies --------------------------------------------------------------------------

struct Kamailio {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free udp port")
}

impl Kamailio {
    fn start(cert: &Cert, registrar: u16) -> Result<Kamailio, String> {
        let bin = knob_str("KAMAILIO", "/usr/sbin/kamailio");
        if !Path::new(&bin).exists() {
            return Err(format!(
                "{bin} not found (apt-get install kamailio kamailio-tls-modules)"
            ));
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/kamailio");
        for f in ["kamailio.cfg", "tls.cfg"] {
            std::fs::copy(src.join(f), dir.path().join(f)).map_err(|e| format!("{f}: {e}"))?;
        }
        std::fs::copy(&cert.cert, dir.path().join("cert.pem")).map_err(|e| e.to_string())?;
        std::fs::copy(&cert.key, dir.path().join("key.pem")).map_err(|e| e.to_string())?;
        // The OpenSSL 3 workaround (see benches/kamailio/ossl3_fork_fix.c): without it,
        // Kamailio 5.6.3's workers share OpenSSL's per-thread state and corrupt each other.
        let preload = if knob("KAMAILIO_OSSL3_FIX", 1) == 1 {
            let so = dir.path().join("ossl3_fork_fix.so");
            let out = Command::new(knob_str("CC", "cc"))
                .args(["-shared", "-fPIC", "-O2", "-o"])
                .arg(&so)
                .arg(src.join("ossl3_fork_fix.c"))
                .arg("-ldl")
                .output()
                .map_err(|e| format!("cc (needed for the OpenSSL 3 workaround): {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "building ossl3_fork_fix.so failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Some(so)
        } else {
            None
        };
        let port = free_port();
        let udp = free_udp_port();
        let log = dir.path().join("kamailio.log");
        let d = dir.path().display().to_string();
        let mut cmd = Command::new(&bin);
        cmd.current_dir(dir.path())
            .args(["-f", "kamailio.cfg", "-DD", "-E", "--atexit=no"])
            .args(["-m", &knob("KAMAILIO_SHM_MB", 2048).to_string()])
            .args(["-M", &knob("KAMAILIO_PKG_MB", 64).to_string()])
            .args(["-w", &d, "-Y", &d])
            .args(["-l", &format!("tls:127.0.0.1:{port}")])
            .args(["-l", &format!("udp:127.0.0.1:{udp}")])
            .args([
                "-A",
                &format!("REGISTRAR=\"sip:127.0.0.1:{registrar};transport=udp\""),
            ])
            .args([
                "-A",
                &format!("CHILDREN={}", knob("KAMAILIO_CHILDREN", 2)),
                "-A",
                &format!("TCP_CHILDREN={}", knob("KAMAILIO_TCP_CHILDREN", 2)),
            ]);
        if knob("KAMAILIO_STATELESS", 0) == 1 {
            cmd.args(["-A", "STATELESS"]);
        }
        if let Some(so) = &preload {
            cmd.env("LD_PRELOAD", so);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("spawn {bin}: {e}"))?;
        let mut k = Kamailio {
            child,
            port,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = k.child.try_wait() {
                return Err(format!("kamailio exited ({st}):\n{}", tail(&k.log, 30)));
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "kamailio never opened {port}:\n{}",
                    tail(&k.log, 30)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Its workers fork after the listeners open.
        std::thread::sleep(Duration::from_millis(500));
        Ok(k)
    }

    fn pids(&self) -> Vec<u32> {
        let main = self.child.id();
        let mut v = vec![main];
        v.extend(children_of(main));
        v
    }

    /// A crashed worker makes Kamailio's main process shut everything down.
    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        // SIGTERM: the main process stops its workers (SIGKILL would orphan them).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for p in children_of(self.child.id()) {
            let _ = Command::new("kill")
                .args(["-KILL", &p.to_string()])
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Pbxguard {
    env: Env,
    daemon: Daemon,
    tls_port: u16,
    wss_port: u16,
}

/// The `[sip]` section the edge reads (keys as in etc/pbxguard.toml). `rate_per_ip = 0` and
/// `rate_per_user = 0` turn its limits off so the bench is not throttled; every bench client
/// comes from 127.0.0.1, so the per-address connection cap is lifted too.
fn pbxguard_sip_section(cert: &Cert, tls: u16, wss: u16, registrar: u16) -> String {
    // A fixed address (it goes into Via/Path/Record-Route), free right now.
    let upstream_bind = free_udp_port();
    format!(
        r#"
[sip]
tls_listen = "127.0.0.1:{tls}"
wss_listen = "127.0.0.1:{wss}"
tls_cert = "{}"
tls_key = "{}"
upstream = "127.0.0.1:{registrar}"
upstream_transport = "udp"
upstream_bind = "127.0.0.1:{upstream_bind}"
rate_per_ip = 0
rate_per_user = 0
max_connections = 20000
max_connections_per_ip = 20000
"#,
        cert.cert.display(),
        cert.key.display()
    )
}

impl Pbxguard {
    fn start(cert: &Cert, registrar: u16) -> Result<Pbxguard, String> {
        let env = Env::new();
        let (tls_port, wss_port) = (free_port(), free_port());
        let mut sip = pbxguard_sip_section(cert, tls_port, wss_port, registrar);
        // SIP_PBXGUARD_OMIT=key,key drops keys a given build does not know yet (the config
        // refuses unknown keys); SIP_PBXGUARD_EXTRA appends lines to [sip].
        let omit = knob_str("SIP_PBXGUARD_OMIT", "");
        let omit: Vec<&str> = omit
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .collect();
        sip = sip
            .lines()
            .filter(|l| {
                !omit
                    .iter()
                    .any(|k| l.split('=').next().map(str::trim) == Some(*k))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        sip.push_str(&knob_str("SIP_PBXGUARD_EXTRA", "").replace("\\n", "\n"));
        sip.push('\n');
        env.write_config(&env.config_text(env.http_port, env.redirect_port, &sip));
        let out = env.run(&["init"], b"");
        if !out.status.success() {
            return Err(format!(
                "pbxguard init failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        // Env::start panics when the API port never opens; turn that into an error.
        let daemon = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| env.start()))
            .map_err(|_| "pbxguard serve did not start (see the panic above)".to_string())?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_ok() {
                break;
            }
            let log = daemon.log();
            if log.contains("does not serve [sip] yet") {
                return Err("this pbxguard build does not serve [sip] yet".into());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "pbxguard never opened sip.tls_listen {tls_port}:\n{}",
                    tail(&daemon.log, 30)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        Ok(Pbxguard {
            env,
            daemon,
            tls_port,
            wss_port,
        })
    }
}

enum Proxy {
    Kamailio(Kamailio),
    Pbxguard(Pbxguard),
}

impl Proxy {
    fn name(&self) -> &'static str {
        match self {
            Proxy::Kamailio(_) => "kamailio",
            Proxy::Pbxguard(_) => "pbxguard",
        }
    }
    fn port(&self) -> u16 {
        match self {
            Proxy::Kamailio(k) => k.port,
            Proxy::Pbxguard(p) => p.tls_port,
        }
    }
    fn pids(&self) -> Vec<u32> {
        match self {
            Proxy::Kamailio(k) => k.pids(),
            Proxy::Pbxguard(p) => vec![p.daemon.pid()],
        }
    }
    /// (Pss, Rss) summed over the proxy's processes. Rss double-counts Kamailio's shared
    /// memory (every worker maps the same shm); Pss splits it.
    fn mem_kb(&self) -> (u64, u64) {
        self.pids()
            .into_iter()
            .map(pss_rss_kb)
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }
    /// Lines in the proxy's log that report memory corruption or a crashed worker.
    fn trouble(&self) -> usize {
        let log = match self {
            Proxy::Kamailio(k) => &k.log,
            Proxy::Pbxguard(p) => &p.daemon.log,
        };
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.contains("BUG")
                    || l.contains("CRITICAL")
                    || l.contains("ALERT")
                    || l.contains("panicked")
            })
            .count()
    }
    fn check_alive(&mut self) -> Result<(), String> {
        match self {
            Proxy::Kamailio(k) => {
                if k.alive() {
                    Ok(())
                } else {
                    Err(format!("kamailio died:\n{}", tail(&k.log, 40)))
                }
            }
            Proxy::Pbxguard(p) => match p.daemon.child.try_wait() {
                Ok(None) => Ok(()),
                _ => Err(format!("pbxguard died:\n{}", tail(&p.daemon.log, 40))),
            },
        }
    }
    fn log_tail(&self) -> String {
        match self {
            Proxy::Kamailio(k) => tail(&k.log, 20),
            Proxy::Pbxguard(p) => tail(&p.daemon.log, 20),
        }
    }
}

fn start_proxy(which: &str, cert: &Cert, registrar: u16) -> Result<Proxy, String> {
    match which {
        "kamailio" => Kamailio::start(cert, registrar).map(Proxy::Kamailio),
        _ => Pbxguard::start(cert, registrar).map(Proxy::Pbxguard),
    }
}

// ---- SIP client ---------------------------------------------------------------------------

fn register(out: &mut Vec<u8>, transport: &str, lport: u16, user: &str, call_id: &str, cseq: u32) {
    let lower = transport.to_ascii_lowercase();
    let _ = write!(
        out,
        "REGISTER sip:127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/{transport} 127.0.0.1:{lport};branch=z9hG4bK{call_id}x{cseq};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@127.0.0.1>;tag={user}t\r\n\
         To: <sip:{user}@127.0.0.1>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} REGISTER\r\n\
         Contact: <sip:{user}@127.0.0.1:{lport};transport={lower}>;expires=600\r\n\
         User-Agent: sip-load\r\n\
         Content-Length: 0\r\n\r\n"
    );
}

/// One parsed response: status code and CSeq number.
struct Resp {
    status: u16,
    cseq: u32,
}

/// Takes complete messages off the front of `buf`.
fn parse_responses(buf: &mut Vec<u8>, out: &mut Vec<Resp>) -> Result<(), String> {
    let mut start = 0;
    loop {
        let rest = &buf[start..];
        // Keep-alive CRLFs (RFC 5626) between messages.
        let skip = rest
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        let rest = &rest[skip..];
        let Some(end) = find(rest, b"\r\n\r\n") else {
            start += skip;
            break;
        };
        let head = std::str::from_utf8(&rest[..end]).map_err(|_| "non-UTF-8 head")?;
        let mut status = 0;
        let mut cseq = 0;
        let mut clen = 0usize;
        for (i, line) in head.split("\r\n").enumerate() {
            if i == 0 {
                if !line.starts_with("SIP/2.0 ") {
                    return Err(format!("not a response: {line:?}"));
                }
                status = line[8..]
                    .get(..3)
                    .and_then(|c| c.parse().ok())
                    .ok_or_else(|| format!("bad status line {line:?}"))?;
                continue;
            }
            let Some((n, v)) = line.split_once(':') else {
                continue;
            };
            let n = n.trim();
            if n.eq_ignore_ascii_case("cseq") {
                cseq = v
                    .split_whitespace()
                    .next()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
            } else if n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("l") {
                clen = v.trim().parse().unwrap_or(0);
            }
        }
        let total = skip + end + 4 + clen;
        if buf.len() - start < total {
            break;
        }
        out.push(Resp { status, cseq });
        start += total;
    }
    buf.drain(..start);
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[derive(Default)]
struct ConnResult {
    completed: u64,
    non_200: u64,
    lost: u64,
    latencies_us: Vec<u32>,
    error: Option<String>,
}

struct Plan {
    port: u16,
    window: usize,
    warm_end: Instant,
    end: Instant,
    lost_after: Duration,
}

async fn load_conn(id: usize, tls: TlsConnector, plan: Arc<Plan>) -> ConnResult {
    let mut res = ConnResult::default();
    if let Err(e) = load_conn_inner(id, &tls, &plan, &mut res).await {
        res.error = Some(e);
    }
    res
}

async fn load_conn_inner(
    id: usize,
    tls: &TlsConnector,
    plan: &Plan,
    res: &mut ConnResult,
) -> Result<(), String> {
    let mut s = tls_connect(tls, plan.port)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let lport = s
        .get_ref()
        .0
        .local_addr()
        .map_err(|e| e.to_string())?
        .port();
    let user = format!("u{id}");
    let call_id = format!("sl{id}r{}", rand::random::<u32>());
    let mut pending: HashMap<u32, Instant> = HashMap::new();
    let mut cseq = 0u32;
    let mut wbuf = Vec::with_capacity(8192);
    let mut rbuf: Vec<u8> = Vec::with_capacity(65536);
    let mut chunk = vec![0u8; 65536];
    let mut resps = Vec::new();
    for _ in 0..plan.window {
        cseq += 1;
        register(&mut wbuf, "TLS", lport, &user, &call_id, cseq);
        pending.insert(cseq, Instant::now());
    }
    s.write_all(&wbuf)
        .await
        .map_err(|e| format!("write: {e}"))?;
    wbuf.clear();
    let drain_until = plan.end + plan.lost_after;
    loop {
        let now = Instant::now();
        if now >= plan.end && pending.is_empty() || now >= drain_until {
            break;
        }
        let n = match tokio::time::timeout(Duration::from_millis(200), s.read(&mut chunk)).await {
            Ok(Ok(0)) => return Err("closed by the proxy".into()),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(format!("read: {e}")),
            Err(_) => 0,
        };
        rbuf.extend_from_slice(&chunk[..n]);
        parse_responses(&mut rbuf, &mut resps)?;
        let now = Instant::now();
        let counting = now >= plan.warm_end && now < plan.end;
        let mut replace = 0;
        for r in resps.drain(..) {
            if r.status < 200 {
                continue;
            }
            let Some(t) = pending.remove(&r.cseq) else {
                continue; // answered after being given up as lost
            };
            if counting {
                res.completed += 1;
                res.latencies_us
                    .push((now - t).as_micros().min(u32::MAX as u128) as u32);
                if r.status != 200 {
                    res.non_200 += 1;
                }
            }
            replace += 1;
        }
        // Give up on REGISTERs unanswered for too long, so the window stays full.
        let lost: Vec<u32> = pending
            .iter()
            .filter(|(_, t)| now - **t > plan.lost_after)
            .map(|(c, _)| *c)
            .collect();
        for c in lost {
            pending.remove(&c);
            if counting {
                res.lost += 1;
            }
            replace += 1;
        }
        if now < plan.end {
            for _ in 0..replace {
                cseq += 1;
                register(&mut wbuf, "TLS", lport, &user, &call_id, cseq);
                pending.insert(cseq, now);
            }
            if !wbuf.is_empty() {
                s.write_all(&wbuf)
                    .await
                    .map_err(|e| format!("write: {e}"))?;
                wbuf.clear();
            }
        }
    }
    let _ = s.shutdown().await;
    Ok(())
}

struct RunResult {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_200: u64,
    lost: u64,
    errors: Vec<String>,
    proxy_cpu_us_per_tx: f64,
    client_cpu_pct: f64,
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

fn load_run(rt: &tokio::runtime::Runtime, proxy: &Proxy, tls: &TlsConnector) -> RunResult {
    let conns = knob("CONNS", 50);
    let warm = Duration::from_secs(knob("WARMUP", 2) as u64);
    let dur = Duration::from_secs(knob("DURATION", 10) as u64);
    let start = Instant::now();
    let plan = Arc::new(Plan {
        port: proxy.port(),
        window: knob("WINDOW", 2),
        warm_end: start + warm,
        end: start + warm + dur,
        lost_after: Duration::from_millis(knob("LOST_MS", 2000) as u64),
    });
    let me = std::process::id();
    // CPU over the measured window only: sampled when the warm-up ends and when it stops.
    let sampler = {
        let pids_proxy = proxy.pids();
        let plan = plan.clone();
        std::thread::spawn(move || {
            std::thread::sleep(plan.warm_end.saturating_duration_since(Instant::now()));
            let p0: u64 = pids_proxy.iter().map(|p| cpu_ticks(*p)).sum();
            let c0 = cpu_ticks(me);
            std::thread::sleep(plan.end.saturating_duration_since(Instant::now()));
            let p1: u64 = pids_proxy.iter().map(|p| cpu_ticks(*p)).sum();
            let c1 = cpu_ticks(me);
            (p1.saturating_sub(p0), c1.saturating_sub(c0))
        })
    };
    let results: Vec<ConnResult> = rt.block_on(async {
        let tasks: Vec<_> = (0..conns)
            .map(|i| tokio::spawn(load_conn(i, tls.clone(), plan.clone())))
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("conn task"));
        }
        out
    });
    let (proxy_ticks, client_ticks) = sampler.join().expect("sampler");
    let mut lat = Vec::new();
    let (mut done, mut non_200, mut lost) = (0u64, 0u64, 0u64);
    let mut errors = Vec::new();
    for r in results {
        done += r.completed;
        non_200 += r.non_200;
        lost += r.lost;
        lat.extend(r.latencies_us);
        if let Some(e) = r.error {
            errors.push(e);
        }
    }
    lat.sort_unstable();
    let secs = dur.as_secs_f64();
    RunResult {
        rate: done as f64 / secs,
        p50_ms: pct(&lat, 0.50),
        p99_ms: pct(&lat, 0.99),
        non_200,
        lost,
        errors,
        proxy_cpu_us_per_tx: if done > 0 {
            proxy_ticks as f64 / ticks_per_sec() * 1e6 / done as f64
        } else {
            f64::NAN
        },
        client_cpu_pct: client_ticks as f64 / ticks_per_sec() / secs * 100.0,
    }
}

// ---- idle connections ---------------------------------------------------------------------

/// Opens `n` TLS connections (each registering once when `register_first`) and returns them
/// open. 64 handshakes at a time, so the listen backlog never overflows.
async fn open_idle_tls(
    tls: &TlsConnector,
    port: u16,
    n: usize,
    register_first: bool,
) -> Result<Vec<TlsStream<TcpStream>>, String> {
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (tls, sem) = (tls.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await.expect("semaphore");
            let mut s = tls_connect(&tls, port)
                .await
                .map_err(|e| format!("connect {i}: {e}"))?;
            if register_first {
                let lport = s
                    .get_ref()
                    .0
                    .local_addr()
                    .map_err(|e| e.to_string())?
                    .port();
                let mut w = Vec::new();
                let call_id = format!("idle{i}r{}", rand::random::<u32>());
                register(&mut w, "TLS", lport, &format!("idle{i}"), &call_id, 1);
                s.write_all(&w).await.map_err(|e| e.to_string())?;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut resps = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(10);
                while resps.iter().all(|r: &Resp| r.status < 200) {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let n = tokio::time::timeout(left, s.read(&mut chunk))
                        .await
                        .map_err(|_| format!("conn {i}: no answer to REGISTER"))?
                        .map_err(|e| e.to_string())?;
                    if n == 0 {
                        return Err(format!("conn {i}: closed"));
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    parse_responses(&mut buf, &mut resps)?;
                }
            }
            Ok::<_, String>(s)
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.map_err(|e| e.to_string())??);
    }
    Ok(out)
}

fn idle_tls(
    rt: &tokio::runtime::Runtime,
    proxy: &Proxy,
    tls: &TlsConnector,
    n: usize,
) -> Result<(), String> {
    let register_first = knob("IDLE_REGISTER", 1) == 1;
    std::thread::sleep(Duration::from_millis(500));
    let (pss0, rss0) = proxy.mem_kb();
    let conns = rt.block_on(open_idle_tls(tls, proxy.port(), n, register_first))?;
    // Past Kamailio's tm wait timer (5 s), so finished transactions are not counted.
    std::thread::sleep(Duration::from_secs(knob("IDLE_SETTLE", 6) as u64));
    let (pss1, rss1) = proxy.mem_kb();
    println!(
        "{:<9} {n} idle TLS connections{}: Pss {pss0} -> {pss1} kB, {:.1} kB per connection (Rss {rss0} -> {rss1} kB, {:.1} kB) [{} process(es)]",
        proxy.name(),
        if register_first { " (registered once each)" } else { "" },
        (pss1.saturating_sub(pss0)) as f64 / n as f64,
        (rss1.saturating_sub(rss0)) as f64 / n as f64,
        proxy.pids().len()
    );
    rt.block_on(async move {
        for mut c in conns {
            let _ = tokio::time::timeout(Duration::from_millis(50), c.shutdown()).await;
        }
    });
    Ok(())
}

// ---- WSS (pbxguard only) ------------------------------------------------------------------
//
// What this relies on (as the edge is being written; check when it lands):
// 1. `pbxguard user set-extension USER EXT` binds the extension (SIP_WSS_BIND overrides).
// 2. `POST /api/v1/sip/ticket` with `Authorization: Bearer <token>` answers JSON with a
//    `ticket` string: single-use, valid `sip.ticket_ttl` (30 s), so tickets are minted one by
//    one as connections open rather than all up front.
// 3. Path /ws (SIP_WSS_PATH) with `?ticket=`, subprotocol `sip` (RFC 7118), and an `Origin`
//    from `sip.wss_origins`, by default the origin of http.public_url:
//    `https://localhost:<http port>` here (SIP_WSS_ORIGIN overrides).
// 4. REGISTER over the WebSocket: From and To must be the bound extension; every connection
//    registers the same extension (100), so `rate_per_user = 0` is needed, and the edge must
//    not refuse several simultaneous WebSockets for one user.
// 5. `sip.idle_timeout` (15 m) and `sip.max_connections` (20,000 set here) leave 10,000 idle
//    sockets alone; the daemon's RLIMIT_NOFILE (systemd LimitNOFILE=) must be above 10,000.

async fn https_keepalive_post(
    s: &mut TlsStream<TcpStream>,
    path: &str,
    token: &str,
    body: &str,
) -> Result<(u16, String), String> {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let clen: usize = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.trim()
                        .eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .ok_or("answer without Content-Length")?;
            while buf.len() < end + 4 + clen {
                let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("closed".into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok((
                status,
                String::from_utf8_lossy(&buf[end + 4..end + 4 + clen]).to_string(),
            ));
        }
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A client WebSocket frame (masked, FIN, one frame).
fn ws_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    let len = payload.len();
    if len < 126 {
        f.push(0x80 | len as u8);
    } else if len < 65536 {
        f.push(0x80 | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let mask: [u8; 4] = rand::random();
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

async fn open_wss(
    tls: &TlsConnector,
    port: u16,
    path: &str,
    ticket: &str,
    origin: &str,
    register_as: Option<&str>,
) -> Result<TlsStream<TcpStream>, String> {
    use base64::Engine as _;
    let mut s = tls_connect(tls, port).await.map_err(|e| e.to_string())?;
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    let sep = if path.contains('?') { '&' } else { '?' };
    let req = format!(
        "GET {path}{sep}ticket={ticket} HTTP/1.1\r\nHost: localhost:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\nOrigin: {origin}\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            break end;
        }
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!(
                "closed during upgrade: {}",
                String::from_utf8_lossy(&buf)
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    if !head.starts_with("HTTP/1.1 101") {
        return Err(format!(
            "upgrade refused: {}",
            head.lines().next().unwrap_or("")
        ));
    }
    if let Some(user) = register_as {
        let lport = s
            .get_ref()
            .0
            .local_addr()
            .map_err(|e| e.to_string())?
            .port();
        let mut msg = Vec::new();
        register(
            &mut msg,
            "WSS",
            lport,
            user,
            &format!("wss{user}r{}", rand::random::<u32>()),
            1,
        );
        s.write_all(&ws_frame(1, &msg))
            .await
            .map_err(|e| e.to_string())?;
        // Wait for one final answer in a server frame (unmasked).
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = buf[end + 4..].to_vec();
        loop {
            if got.len() >= 2 {
                let len7 = (got[1] & 0x7f) as usize;
                let (hdr, len) = match len7 {
                    126 if got.len() >= 4 => (4, u16::from_be_bytes([got[2], got[3]]) as usize),
                    127 if got.len() >= 10 => (
                        10,
                        u64::from_be_bytes(got[2..10].try_into().expect("8")) as usize,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (2, n),
                };
                if hdr != usize::MAX && got.len() >= hdr + len {
                    let text = String::from_utf8_lossy(&got[hdr..hdr + len]).to_string();
                    got.drain(..hdr + len);
                    let code: u16 = text.get(8..11).and_then(|c| c.parse().ok()).unwrap_or(0);
                    if code >= 200 {
                        break;
                    }
                    continue;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let n = tokio::time::timeout(left, s.read(&mut chunk))
                .await
                .map_err(|_| "no answer to REGISTER over WSS".to_string())?
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed after REGISTER".into());
            }
            got.extend_from_slice(&chunk[..n]);
        }
    }
    Ok(s)
}

fn idle_wss(rt: &tokio::runtime::Runtime, p: &Pbxguard, n: usize) -> Result<(), String> {
    let (user, pass, ext) = ("sipbench", "sip-bench-password-1", "100");
    p.env.add_user(user, 1, pass);
    let words = knob_str("SIP_WSS_BIND", "user set-extension {user} {ext}");
    let args: Vec<String> = words
        .split_whitespace()
        .map(|w| w.replace("{user}", user).replace("{ext}", ext))
        .collect();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = p.env.run(&argv, b"");
    if !out.status.success() {
        return Err(format!(
            "binding the extension (`pbxguard {words}`) failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let token = p.env.token(user, pass);
    let http_tls = client_tls(&[pem_der(&p.env.cert())], &[b"http/1.1"]);
    let http_port = p.env.http_port;
    let path = knob_str("SIP_WSS_PATH", "/ws");
    let origin = knob_str("SIP_WSS_ORIGIN", &format!("https://localhost:{http_port}"));
    let register_first = knob("IDLE_REGISTER", 1) == 1;
    let wss_tls = client_tls(
        &[pem_der(&p.env.cert()), pem_der(&cert_path_of(p))],
        &[b"http/1.1"],
    );
    let pid = p.daemon.pid();
    std::thread::sleep(Duration::from_millis(500));
    let (pss0, rss0) = pss_rss_kb(pid);
    let port = p.wss_port;
    // Tickets are single-use and short-lived: mint each one just before its connection, with
    // at most 64 upgrades under way.
    let conns = rt.block_on(async {
        let mut http = None;
        let sem = Arc::new(tokio::sync::Semaphore::new(64));
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let permit = sem.clone().acquire_owned().await.expect("semaphore");
            let mut answer = Err(String::new());
            for _attempt in 0..2 {
                if http.is_none() {
                    http = Some(
                        tls_connect(&http_tls, http_port)
                            .await
                            .map_err(|e| format!("API connect: {e}"))?,
                    );
                }
                let s = http.as_mut().expect("connected");
                answer = https_keepalive_post(s, "/api/v1/sip/ticket", &token, "{}").await;
                if answer.is_ok() {
                    break;
                }
                http = None; // the server closed the keep-alive connection: reconnect once
            }
            let (status, body) = answer.map_err(|e| format!("ticket {i}: {e}"))?;
            if status != 200 && status != 201 {
                return Err(format!("ticket {i}: HTTP {status}: {body}"));
            }
            let j: serde_json::Value =
                serde_json::from_str(&body).map_err(|e| format!("ticket JSON: {e}: {body}"))?;
            let t = j["ticket"]
                .as_str()
                .ok_or_else(|| format!("no \"ticket\" in {body}"))?
                .to_string();
            let (tls, path, origin) = (wss_tls.clone(), path.clone(), origin.clone());
            tasks.push(tokio::spawn(async move {
                let _p = permit;
                let who = register_first.then(|| ext.to_string());
                open_wss(&tls, port, &path, &t, &origin, who.as_deref())
                    .await
                    .map_err(|e| format!("wss {i}: {e}"))
            }));
        }
        let mut v = Vec::with_capacity(n);
        for t in tasks {
            v.push(t.await.map_err(|e| e.to_string())??);
        }
        Ok::<_, String>(v)
    })?;
    std::thread::sleep(Duration::from_secs(knob("IDLE_SETTLE", 6) as u64));
    let (pss1, rss1) = pss_rss_kb(pid);
    println!(
        "pbxguard  {n} idle WSS connections held: Pss {pss0} -> {pss1} kB, {:.1} kB per connection (Rss {:.1} kB) (target <= 40)",
        (pss1.saturating_sub(pss0)) as f64 / n as f64,
        (rss1.saturating_sub(rss0)) as f64 / n as f64,
    );
    drop(conns);
    Ok(())
}

/// The SIP certificate pbxguard serves (the harness's own, shared with Kamailio).
fn cert_path_of(p: &Pbxguard) -> PathBuf {
    let text = std::fs::read_to_string(&p.env.config).unwrap_or_default();
    text.lines()
        .skip_while(|l| l.trim() != "[sip]")
        .find_map(|l| l.trim().strip_prefix("tls_cert = "))
        .map(|v| PathBuf::from(v.trim_matches('"')))
        .unwrap_or_else(|| p.env.cert())
}

// ---- main ---------------------------------------------------------------------------------

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this too: do nothing there.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let nofile = raise_nofile();
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = make_cert(dir.path());
    let registrar = Registrar::start();
    let tls = client_tls(std::slice::from_ref(&cert.der), &[]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(knob("CLIENT_THREADS", 1))
        .enable_all()
        .build()
        .expect("runtime");

    let only = knob_str("SIP_LOAD_ONLY", "");
    let wanted: Vec<&str> = match only.as_str() {
        "kamailio" => vec!["kamailio"],
        "pbxguard" => vec!["pbxguard"],
        _ => vec!["pbxguard", "kamailio"],
    };
    println!(
        "== SIP REGISTER over TLS: registrar 127.0.0.1:{} (UDP), RLIMIT_NOFILE {nofile}",
        registrar.port
    );
    // Which proxies can run here at all (a pbxguard without the edge is skipped, not fatal).
    let mut available = Vec::new();
    for w in &wanted {
        match start_proxy(w, &cert, registrar.port) {
            Ok(p) => {
                available.push(*w);
                drop(p);
            }
            Err(e) => println!("{w}: skipped: {e}"),
        }
    }
    if available.is_empty() {
        println!("nothing to measure");
        return;
    }

    let idle = knob("IDLE", 2000);
    if idle > 0 {
        println!("== memory: {idle} idle TLS connections, fresh process each");
        for w in &available {
            let p = start_proxy(w, &cert, registrar.port).expect("proxy");
            if let Err(e) = idle_tls(&rt, &p, &tls, idle) {
                println!("{w}: idle TLS failed: {e}\n{}", p.log_tail());
            }
            if p.trouble() > 0 {
                println!(
                    "    {w} logged {} BUG/CRITICAL/ALERT lines:\n{}",
                    p.trouble(),
                    p.log_tail()
                );
            }
        }
    }
    let wss = knob("SIP_WSS_IDLE", 0);
    if wss > 0 && available.contains(&"pbxguard") {
        println!("== memory: {wss} idle WSS connections (pbxguard)");
        let p = Pbxguard::start(&cert, registrar.port).expect("pbxguard");
        if let Err(e) = idle_wss(&rt, &p, wss) {
            println!(
                "pbxguard: idle WSS failed: {e}\n{}",
                tail(&p.daemon.log, 20)
            );
        }
    }

    let rounds = knob("ROUNDS", 3);
    if rounds == 0 {
        return;
    }
    println!(
        "== throughput: {} connections x {} REGISTERs in flight, {} s warm-up + {} s measured, {rounds} rounds, alternating",
        knob("CONNS", 50),
        knob("WINDOW", 2),
        knob("WARMUP", 2),
        knob("DURATION", 10)
    );
    let mut proxies: Vec<Proxy> = available
        .iter()
        .map(|w| start_proxy(w, &cert, registrar.port).expect("proxy"))
        .collect();
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); proxies.len()];
    let mut p99s: Vec<Vec<f64>> = vec![Vec::new(); proxies.len()];
    let mut p50s: Vec<Vec<f64>> = vec![Vec::new(); proxies.len()];
    for round in 1..=rounds {
        for (i, p) in proxies.iter_mut().enumerate() {
            let before = registrar.requests.load(Ordering::Relaxed);
            let r = load_run(&rt, p, &tls);
            let forwarded = registrar.requests.load(Ordering::Relaxed) - before;
            println!(
                "round {round} {:<9} {:>8.0} REGISTER/s  p50 {:>6.2} ms  p99 {:>6.2} ms  non-200 {}  lost {}  conn errors {}  proxy CPU {:.1} us/tx  client CPU {:.0}%  (registrar saw {forwarded})",
                p.name(),
                r.rate,
                r.p50_ms,
                r.p99_ms,
                r.non_200,
                r.lost,
                r.errors.len(),
                r.proxy_cpu_us_per_tx,
                r.client_cpu_pct,
            );
            if let Some(e) = r.errors.first() {
                println!("    first connection error: {e}");
            }
            if let Err(e) = p.check_alive() {
                println!("{e}");
            }
            if p.trouble() > 0 {
                println!(
                    "    {} has logged {} BUG/CRITICAL/ALERT lines so far",
                    p.name(),
                    p.trouble()
                );
            }
            rates[i].push(r.rate);
            p50s[i].push(r.p50_ms);
            p99s[i].push(r.p99_ms);
        }
    }
    println!("== medians over {rounds} rounds");
    for (i, p) in proxies.iter().enumerate() {
        println!(
            "{:<9} {:>8.0} REGISTER/s  p50 {:.2} ms  p99 {:.2} ms",
            p.name(),
            median(rates[i].clone()),
            median(p50s[i].clone()),
            median(p99s[i].clone())
        );
    }
    let find = |n: &str| proxies.iter().position(|p| p.name() == n);
    if let (Some(g), Some(k)) = (find("pbxguard"), find("kamailio")) {
        println!(
            "ratio pbxguard / kamailio: {:.2} (target >= 1.0)",
            median(rates[g].clone()) / median(rates[k].clone())
        );
    }
    drop(proxies);
    let _ = std::io::stdout().flush();
}
