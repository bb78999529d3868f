//! SIP helpers for the end-to-end tests: the Asterisk stand-in (`tests/peers/sip_peer.py`), a
//! SIP-over-TLS client and a SIP-over-WebSocket client that speak raw messages, so a test can
//! send exactly the bytes it means (malformed ones included) and read exactly what came back.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};

use super::{free_port, Daemon, Env};
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};

pub const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/sip_peer.py");

/// A running `sip_peer.py` (registrar + answering UAS, as Asterisk's pjsip); killed on drop.
pub struct SipPeer {
    child: Child,
    _stdout: BufReader<ChildStdout>,
    pub udp: u16,
    pub tcp: u16,
    pub control: u16,
    dir: tempfile::TempDir,
}

impl SipPeer {
    /// `users` as `name:password` (`name:!` answers 403 to that user).
    pub fn start(users: &[&str], extra: &[&str]) -> SipPeer {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("peer.jsonl");
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr log");
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(PEER)
            .args(["--udp", "127.0.0.1:0", "--tcp", "127.0.0.1:0"])
            .args(["--control", "127.0.0.1:0"])
            .arg("--log")
            .arg(&log)
            .args(["--users", &users.join(",")])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = cmd.spawn().expect("start sip_peer.py");
        let mut stdout = BufReader::new(child.stdout.take().expect("peer stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("peer ports line");
        let ports: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("peer did not print its ports ({e}): {line:?}"));
        let port = |k: &str| ports[k].as_u64().unwrap_or(0) as u16;
        SipPeer {
            udp: port("udp"),
            tcp: port("tcp"),
            control: port("control"),
            child,
            _stdout: stdout,
            dir,
        }
    }

    /// Every logged message, in order.
    pub fn log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("peer.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The raw text of every message the peer received, in order.
    pub fn received(&self) -> Vec<String> {
        self.log()
            .iter()
            .filter(|e| e["dir"] == "in")
            .filter_map(|e| e["raw"].as_str().map(str::to_owned))
            .collect()
    }

    /// Received requests of `method`.
    pub fn requests(&self, method: &str) -> Vec<SipMsg> {
        self.received()
            .iter()
            .filter(|r| r.starts_with(&format!("{method} ")))
            .filter_map(|r| SipMsg::parse(r.as_bytes()))
            .collect()
    }

    /// Waits until the peer has received at least `n` requests of `method`.
    pub fn wait_requests(&self, method: &str, n: usize, timeout: Duration) -> Vec<SipMsg> {
        let end = Instant::now() + timeout;
        loop {
            let got = self.requests(method);
            if got.len() >= n || Instant::now() > end {
                return got;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One control command (JSON), its JSON answer.
    pub fn control(&self, cmd: serde_json::Value) -> serde_json::Value {
        let mut s = TcpStream::connect(("127.0.0.1", self.control)).expect("peer control");
        s.set_read_timeout(Some(Duration::from_secs(20))).ok();
        s.write_all(format!("{cmd}\n").as_bytes())
            .expect("control write");
        let mut line = String::new();
        BufReader::new(s)
            .read_line(&mut line)
            .expect("control answer");
        serde_json::from_str(&line).unwrap_or(serde_json::Value::Null)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }
}

impl Drop for SipPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A SIP message as the tests read it: lenient, compact names expanded, for assertions only.
#[derive(Debug, Clone)]
pub struct SipMsg {
    pub raw: String,
    pub start: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

fn long_name(name: &str) -> String {
    let long = match name.to_ascii_lowercase().as_str() {
        "v" => "via",
        "f" => "from",
        "t" => "to",
        "i" => "call-id",
        "m" => "contact",
        "l" => "content-length",
        "c" => "content-type",
        "k" => "supported",
        "e" => "content-encoding",
        other => return other.to_string(),
    };
    long.to_string()
}

impl SipMsg {
    pub fn parse(raw: &[u8]) -> Option<SipMsg> {
        let text = String::from_utf8_lossy(raw).to_string();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let mut lines = head.split("\r\n");
        let start = lines.next()?.to_string();
        let headers = lines
            .filter_map(|l| {
                let (n, v) = l.split_once(':')?;
                Some((long_name(n.trim()), v.trim().to_string()))
            })
            .collect();
        Some(SipMsg {
            raw: text.clone(),
            start,
            headers,
            body: body.to_string(),
        })
    }

    pub fn status(&self) -> Option<u16> {
        self.start
            .strip_prefix("SIP/2.0 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse().ok())
    }

    pub fn method(&self) -> Option<&str> {
        (!self.start.starts_with("SIP/2.0")).then(|| self.start.split(' ').next().unwrap_or(""))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        let name = long_name(name);
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        let name = long_name(name);
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A TLS client configuration trusting exactly `cert` (the daemon's).
pub fn tls_config(cert: &Path) -> Arc<rustls::ClientConfig> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert).expect("cert file") {
        roots.add(c.expect("cert")).expect("add root");
    }
    Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// The first complete message of a SIP stream in `buf` (framed by Content-Length), taken off
/// the front; CRLF keep-alives before it are skipped.
pub fn take_message(buf: &mut Vec<u8>) -> Option<SipMsg> {
    while buf.starts_with(b"\r\n") {
        buf.drain(..2);
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let len = head
        .split("\r\n")
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            matches!(long_name(n.trim()).as_str(), "content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    if buf.len() < end + len {
        return None;
    }
    let raw: Vec<u8> = buf.drain(..end + len).collect();
    SipMsg::parse(&raw)
}

/// Raises this process's open-file limit to its hard limit (the daemon started from it
/// inherits it): tests that open thousands of connections need more than the usual 1024.
pub fn raise_nofile() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let hard = getrlimit(Resource::Nofile).maximum;
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: hard,
            maximum: hard,
        },
    );
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// A TCP connection to 127.0.0.1:`port`, from `source` when given (bound first; connecting
/// to loopback from another local address works on Linux).
pub fn connect_from(source: Option<std::net::IpAddr>, port: u16) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(("127.0.0.1", port));
    };
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&std::net::SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)).into(),
        Duration::from_secs(5),
    )?;
    Ok(socket.into())
}

/// SIP over TLS, verified against the daemon's certificate (name `localhost`).
pub struct SipTls {
    stream: Tls,
    buf: Vec<u8>,
}

impl SipTls {
    pub fn connect(port: u16, cert: &Path) -> SipTls {
        SipTls::try_connect(port, cert).expect("TLS connect")
    }

    pub fn try_connect(port: u16, cert: &Path) -> std::io::Result<SipTls> {
        SipTls::try_connect_from(None, port, cert)
    }

    /// From `source` (an address of this host other than loopback, which is never banned:
    /// see `netns::PhoneNet::host_ip`) when given.
    pub fn try_connect_from(
        source: Option<std::net::IpAddr>,
        port: u16,
        cert: &Path,
    ) -> std::io::Result<SipTls> {
        let tcp = connect_from(source, port)?;
        tcp.set_read_timeout(Some(Duration::from_millis(200)))?;
        let name = ServerName::try_from("localhost").expect("name");
        let conn =
            rustls::ClientConnection::new(tls_config(cert), name).map_err(std::io::Error::other)?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        // Finish the handshake now, so a refused connection shows here.
        let end = Instant::now() + Duration::from_secs(5);
        while stream.conn.is_handshaking() {
            match stream.conn.complete_io(&mut stream.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < end => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut && Instant::now() < end => {}
                Err(e) => return Err(e),
            }
        }
        Ok(SipTls {
            stream,
            buf: Vec::new(),
        })
    }

    pub fn local_port(&self) -> u16 {
        self.stream.sock.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("TLS write");
        self.stream.flush().expect("TLS flush");
    }

    /// Writes, tolerating a connection the daemon already closed.
    pub fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok() && self.stream.flush().is_ok()
    }

    fn take_message(&mut self) -> Option<SipMsg> {
        take_message(&mut self.buf)
    }

    /// The next message within `timeout`; `None` on timeout or when the connection closed.
    pub fn recv(&mut self, timeout: Duration) -> Option<SipMsg> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(m) = self.take_message() {
                return Some(m);
            }
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return None,
            }
            if Instant::now() > end {
                return None;
            }
        }
    }

    /// The next response (skipping requests), within `timeout`.
    pub fn response(&mut self, timeout: Duration) -> Option<SipMsg> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            match self.recv(end.saturating_duration_since(Instant::now())) {
                Some(m) if m.status().is_some() => return Some(m),
                Some(_) => continue,
                None => return None,
            }
        }
        None
    }

    /// The next final (>= 200) response.
    pub fn final_response(&mut self, timeout: Duration) -> Option<SipMsg> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            let m = self.response(end.saturating_duration_since(Instant::now()))?;
            if m.status().unwrap_or(0) >= 200 {
                return Some(m);
            }
        }
        None
    }

    /// True when the daemon has closed the connection (read gives EOF or an error).
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return true,
            }
        }
        false
    }
}

/// SIP over secure WebSocket (RFC 7118), verified against the daemon's certificate.
pub struct SipWs {
    ws: tokio_tungstenite::tungstenite::WebSocket<Tls>,
}

impl SipWs {
    /// Opens `wss://localhost:PORT{path}` with `Origin: origin` (when given) and the `sip`
    /// subprotocol; `Err(status)` when the upgrade is refused.
    pub fn connect(port: u16, path: &str, origin: Option<&str>, cert: &Path) -> Result<SipWs, u16> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|_| 0u16)?;
        tcp.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let name = ServerName::try_from("localhost").expect("name");
        let conn = rustls::ClientConnection::new(tls_config(cert), name).map_err(|_| 0u16)?;
        let stream = rustls::StreamOwned::new(conn, tcp);
        let mut req = format!("wss://localhost:{port}{path}")
            .into_client_request()
            .expect("request");
        req.headers_mut()
            .insert("sec-websocket-protocol", "sip".parse().expect("header"));
        if let Some(o) = origin {
            req.headers_mut()
                .insert("origin", o.parse().expect("origin header"));
        }
        match tokio_tungstenite::tungstenite::client(req, stream) {
            Ok((ws, resp)) => {
                assert_eq!(
                    resp.headers()
                        .get("sec-websocket-protocol")
                        .and_then(|v| v.to_str().ok()),
                    Some("sip"),
                    "the upgrade must confirm the sip subprotocol"
                );
                ws.get_ref()
                    .sock
                    .set_read_timeout(Some(Duration::from_millis(200)))
                    .ok();
                Ok(SipWs { ws })
            }
            Err(tokio_tungstenite::tungstenite::HandshakeError::Failure(
                tokio_tungstenite::tungstenite::Error::Http(resp),
            )) => Err(resp.status().as_u16()),
            Err(_) => Err(0),
        }
    }

    pub fn send(&mut self, text: &str) {
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::text(text))
            .expect("ws send");
    }

    /// The next SIP message; `None` on timeout or close.
    pub fn recv(&mut self, timeout: Duration) -> Option<SipMsg> {
        use tokio_tungstenite::tungstenite::{Error, Message};
        let end = Instant::now() + timeout;
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => return SipMsg::parse(t.as_bytes()),
                Ok(Message::Binary(b)) => return SipMsg::parse(&b),
                Ok(Message::Close(_)) => return None,
                Ok(_) => {}
                Err(Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return None,
            }
            if Instant::now() > end {
                return None;
            }
        }
    }

    /// The next final response.
    pub fn final_response(&mut self, timeout: Duration) -> Option<SipMsg> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            let m = self.recv(end.saturating_duration_since(Instant::now()))?;
            if m.status().unwrap_or(0) >= 200 {
                return Some(m);
            }
        }
        None
    }

    /// True when the daemon closes the WebSocket within `timeout`.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        use tokio_tungstenite::tungstenite::{Error, Message};
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            match self.ws.read() {
                Ok(Message::Close(_)) => return true,
                Ok(_) => {}
                Err(Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return true,
            }
        }
        false
    }
}

fn md5_hex(s: &str) -> String {
    Md5::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `Authorization` value answering `challenge` (a WWW-Authenticate value), RFC 2617 MD5
/// with qop=auth when offered.
pub fn digest(challenge: &str, user: &str, password: &str, method: &str, uri: &str) -> String {
    let param = |name: &str| -> Option<String> {
        let i = challenge.find(&format!("{name}="))? + name.len() + 1;
        let rest = &challenge[i..];
        let v = if let Some(stripped) = rest.strip_prefix('"') {
            stripped.split('"').next()?.to_string()
        } else {
            rest.split([',', ' ']).next()?.to_string()
        };
        Some(v)
    };
    let realm = param("realm").unwrap_or_default();
    let nonce = param("nonce").unwrap_or_default();
    let ha1 = md5_hex(&format!("{user}:{realm}:{password}"));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    let opaque = param("opaque")
        .map(|o| format!(", opaque=\"{o}\""))
        .unwrap_or_default();
    if param("qop").is_some_and(|q| q.split(',').any(|x| x.trim() == "auth")) {
        let cnonce = "0a4f113b";
        let nc = "00000001";
        let response = md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
        format!(
            "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", algorithm=MD5, qop=auth, nc={nc}, cnonce=\"{cnonce}\"{opaque}"
        )
    } else {
        let response = md5_hex(&format!("{ha1}:{nonce}:{ha2}"));
        format!(
            "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", algorithm=MD5{opaque}"
        )
    }
}

/// A random token for branches, tags and Call-IDs.
pub fn rnd() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Builds a request: `lines` are the header lines after the start line (without
/// Content-Length, which is computed); `\n` in the input becomes CRLF.
pub fn request(start: &str, lines: &[String], body: &str) -> Vec<u8> {
    let mut out = format!("{start}\r\n");
    for l in lines {
        out.push_str(l);
        out.push_str("\r\n");
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    out.into_bytes()
}

/// The usual headers of a request from `user` over `transport` (`TLS` or `WSS`).
pub fn base_headers(
    method: &str,
    user: &str,
    to_user: &str,
    transport: &str,
    call_id: &str,
    cseq: u32,
) -> Vec<String> {
    vec![
        format!(
            "Via: SIP/2.0/{transport} client.invalid;branch=z9hG4bK{};rport",
            rnd()
        ),
        "Max-Forwards: 70".into(),
        format!("From: <sip:{user}@pbx.test>;tag={}", rnd()),
        format!("To: <sip:{to_user}@pbx.test>"),
        format!("Call-ID: {call_id}"),
        format!("CSeq: {cseq} {method}"),
        format!(
            "Contact: <sip:{user}@client.invalid;transport={}>",
            transport.to_ascii_lowercase()
        ),
        "User-Agent: pbxguard-tests".into(),
    ]
}

/// An SDES-SRTP offer (`RTP/SAVP` + AES_CM_128_HMAC_SHA1_80), as baresip's srtp-mand sends.
pub fn sdp_sdes(key_b64: &str) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/SAVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key_b64}\r\na=sendrecv\r\n"
    )
}

/// A plain RTP offer (no encryption).
pub fn sdp_plain() -> String {
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n".to_string()
}

/// A DTLS-SRTP offer as a browser makes it (`UDP/TLS/RTP/SAVPF`, fingerprint, setup).
pub fn sdp_dtls() -> String {
    let fp: Vec<String> = (0..32).map(|i| format!("{:02X}", i * 7 % 256)).collect();
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\na=fingerprint:sha-256 {}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=setup:actpass\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\na=rtcp-mux\r\n",
        fp.join(":")
    )
}

/// 30 random bytes (AES-128 key + salt), base64, for `a=crypto`.
pub fn sdes_key() -> String {
    use base64::Engine;
    let key: [u8; 30] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// The browser origin the test edges allow.
pub const ORIGIN: &str = "https://softphone.test";

/// The real daemon as the SIP edge in front of a [`SipPeer`].
pub struct Edge {
    pub env: Env,
    pub peer: SipPeer,
    pub daemon: Daemon,
    pub tls: u16,
    pub wss: u16,
}

impl Edge {
    /// Peer (users 1001:pw1001, 1002:pw1002, 1003 forbidden) + initialised daemon with `[sip]`
    /// (plus `extra` keys in that section, which may end with further sections such as
    /// `[dialing]`; `{tcp}` names the peer's TCP port).
    pub fn start(extra: &str) -> Edge {
        Edge::start_with_peer(extra, &[])
    }

    pub fn start_with_peer(extra: &str, peer_args: &[&str]) -> Edge {
        let peer = SipPeer::start(&["1001:pw1001", "1002:pw1002", "1003:!"], peer_args);
        let env = Env::new();
        let (tls, wss) = (free_port(), free_port());
        let extra = extra.replace("{tcp}", &peer.tcp.to_string());
        let upstream = if extra.contains("upstream =") {
            String::new()
        } else {
            format!("upstream = \"127.0.0.1:{}\"", peer.udp)
        };
        // The stand-in answers calls by name (`slow`, `busy`, `plain`): a site with named
        // extensions allows letters in what phones dial. A test about the toll-fraud rules
        // writes its own `[dialing]`.
        let dialing = if extra.contains("[dialing]") {
            ""
        } else {
            "\n[dialing]\nextra_dial_characters = \"abcdefghijklmnopqrstuvwxyz\"\n"
        };
        let sip = format!(
            r#"
[sip]
tls_listen = "127.0.0.1:{tls}"
wss_listen = "127.0.0.1:{wss}"
{upstream}
upstream_bind = "127.0.0.1:0"
wss_origins = ["{ORIGIN}"]
{extra}
{dialing}"#
        );
        env.write_config(&env.config_text(env.http_port, env.redirect_port, &sip));
        env.init();
        let daemon = env.start();
        daemon.wait_for_port(tls);
        daemon.wait_for_port(wss);
        Edge {
            env,
            peer,
            daemon,
            tls,
            wss,
        }
    }

    pub fn client(&self) -> SipTls {
        SipTls::connect(self.tls, &self.env.cert())
    }

    /// A client connecting from `source` (a documentation address of this host: loopback is
    /// never banned).
    pub fn client_from(&self, source: std::net::IpAddr) -> SipTls {
        SipTls::try_connect_from(Some(source), self.tls, &self.env.cert()).expect("TLS connect")
    }

    /// A web user (level 2) bound to SIP extension `ext`; its session token.
    pub fn web_user(&self, name: &str, ext: &str) -> String {
        self.env.add_user(name, 2, "agent-password-1");
        self.env.ok(&["user", "set-extension", name, ext], b"");
        self.env.token(name, "agent-password-1")
    }

    /// `POST /api/v1/sip/ticket` with `token`; the JSON answer (must be 200).
    pub fn ticket(&self, token: &str) -> serde_json::Value {
        let r = self.env.request(
            "POST",
            "/api/v1/sip/ticket",
            &[&format!("Authorization: Bearer {token}")],
            None,
        );
        assert_eq!(r.status, 200, "{r:?}");
        r.json()
    }

    /// REGISTER over `c` with the digest dance; the final answer.
    pub fn register(&self, c: &mut SipTls, user: &str, password: &str) -> SipMsg {
        register_on(
            |b| {
                c.send(b);
                c.final_response(Duration::from_secs(10))
            },
            user,
            password,
            "TLS",
        )
    }
}

/// REGISTER through `exchange` (send, then the final response), answering one challenge.
pub fn register_on(
    mut exchange: impl FnMut(&[u8]) -> Option<SipMsg>,
    user: &str,
    password: &str,
    transport: &str,
) -> SipMsg {
    let call_id = rnd();
    let uri = "sip:pbx.test";
    let first = request(
        &format!("REGISTER {uri} SIP/2.0"),
        &base_headers("REGISTER", user, user, transport, &call_id, 1),
        "",
    );
    let resp = exchange(&first).expect("answer to REGISTER");
    if resp.status() != Some(401) {
        return resp;
    }
    let challenge = resp
        .header("WWW-Authenticate")
        .expect("challenge")
        .to_string();
    let mut lines = base_headers("REGISTER", user, user, transport, &call_id, 2);
    lines.push(format!(
        "Authorization: {}",
        digest(&challenge, user, password, "REGISTER", uri)
    ));
    exchange(&request(&format!("REGISTER {uri} SIP/2.0"), &lines, "")).expect("final answer")
}
