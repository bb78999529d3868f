//! The Asterisk side of the AMI gateway tests: `tests/peers/ami_peer.py` (a byte-faithful
//! stand-in for Asterisk's manager.c) started as a process, its JSON control port, and a small
//! blocking AMI client speaking the protocol the way a real client does.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const PEER_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/ami_peer.py");
pub const PYTHON: &str = "/usr/bin/python3";

/// One AMI message: its `Name: value` lines in order (the value without the blanks after ':').
pub type Msg = Vec<(String, String)>;

/// First value of header `name` in a message (case-insensitive name, as Asterisk matches).
pub fn header<'a>(msg: &'a Msg, name: &str) -> Option<&'a str> {
    msg.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Every value of header `name`, in order (e.g. the `Output` lines of a Command response).
pub fn headers<'a>(msg: &'a Msg, name: &str) -> Vec<&'a str> {
    msg.iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// An action message as the peer ("Asterisk") received it.
#[derive(Debug, Clone)]
pub struct PeerAction {
    /// The `Action:` value (first non-empty one), or "" when missing.
    pub action: String,
    /// Every received line split at its first ':'; `None` for a line without ':'.
    pub headers: Vec<(String, Option<String>)>,
    /// The AMI user of the session that sent it ("" before login).
    pub user: String,
    pub authenticated: bool,
    /// The sending socket as `ip:port` (the gateway's upstream connection).
    pub peer: String,
    /// What manager.c did with it: `executed`, `permission-denied`, `not-authenticated`,
    /// `unknown`, `missing-action`, `too-many-lines`, `line-too-long`.
    pub outcome: String,
}

impl PeerAction {
    fn from_json(v: &Value) -> PeerAction {
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        PeerAction {
            action: s("action"),
            headers: v["headers"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|p| {
                            (
                                p[0].as_str().unwrap_or_default().to_string(),
                                p[1].as_str().map(str::to_string),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
            user: s("user"),
            authenticated: v["authenticated"].as_bool().unwrap_or(false),
            peer: s("peer"),
            outcome: s("outcome"),
        }
    }

    /// First value of a header (case-insensitive name, colon right after it, like Asterisk).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, v)| n.eq_ignore_ascii_case(name) && v.is_some())
            .and_then(|(_, v)| v.as_deref())
    }
}

/// A running `ami_peer.py`; killed on drop.
pub struct AmiPeer {
    child: Child,
    _stdout: BufReader<ChildStdout>,
    port: u16,
    control_port: u16,
    args: Vec<String>,
    dir: tempfile::TempDir,
}

impl AmiPeer {
    /// Users as `(name, secret, read classes, write classes)`, e.g.
    /// `("admin", "s3cret", "all", "all")` or `("mon", "pw", "call,reporting", "none")`.
    /// Banner `Asterisk Call Manager/11.0.0` (Asterisk 22).
    pub fn start(users: &[(&str, &str, &str, &str)]) -> AmiPeer {
        AmiPeer::start_with(users, &[])
    }

    /// As [`AmiPeer::start`] with extra command-line options, e.g. `["--version", "7.0.3"]`,
    /// `["--authtimeout", "2"]`, `["--fail-delay", "0.1"]`, `["--writetimeout", "0"]`.
    pub fn start_with(users: &[(&str, &str, &str, &str)], extra: &[&str]) -> AmiPeer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut args = Vec::new();
        for (name, secret, read, write) in users {
            args.push("--user".to_string());
            args.push(format!("{name}:{secret}:{read}:{write}"));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let (child, stdout, port, control_port) = spawn_peer(&dir, &args, 0);
        AmiPeer {
            child,
            _stdout: stdout,
            port,
            control_port,
            args,
            dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn control_port(&self) -> u16 {
        self.control_port
    }

    /// The peer's own log (connections, every message and what became of it).
    pub fn log(&self) -> String {
        let mut s = std::fs::read_to_string(self.dir.path().join("peer.log")).unwrap_or_default();
        s.push_str(
            &std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default(),
        );
        s
    }

    /// One control request; returns the peer's JSON answer (`{"ok":true,…}`).
    pub fn control(&self, req: &Value) -> Value {
        let mut s = TcpStream::connect(("127.0.0.1", self.control_port)).expect("control port");
        s.set_read_timeout(Some(Duration::from_secs(120))).ok();
        let mut line = serde_json::to_vec(req).expect("json");
        line.push(b'\n');
        s.write_all(&line).expect("control write");
        let mut answer = String::new();
        BufReader::new(s)
            .read_line(&mut answer)
            .expect("control read");
        serde_json::from_str(&answer)
            .unwrap_or_else(|e| panic!("control answer not JSON ({e}): {answer:?}\n{}", self.log()))
    }

    fn control_ok(&self, req: Value) -> Value {
        let v = self.control(&req);
        assert_eq!(v["ok"], json!(true), "control {req} failed: {v}");
        v
    }

    /// Emits an event (`count` copies) to every logged-in session whose read classes and event
    /// mask allow `class`; returns the number of sessions it went to.
    pub fn event(&self, name: &str, class: &str, fields: &[(&str, &str)], count: usize) -> usize {
        let fields: Vec<Value> = fields.iter().map(|(k, v)| json!([k, v])).collect();
        let v = self.control_ok(json!({
            "cmd": "event", "name": name, "class": class, "fields": fields, "count": count
        }));
        v["sent"].as_u64().unwrap_or(0) as usize
    }

    /// High-rate emission: `count` events, each with a trailing `Seq: <n>` (0-based) header.
    /// Answers once everything has been handed to the kernel. Returns the peer's answer:
    /// `{"sent": sessions, "count", "bytes", "seconds", "closed": sessions cut for not reading}`.
    pub fn blast(&self, name: &str, class: &str, fields: &[(&str, &str)], count: usize) -> Value {
        let fields: Vec<Value> = fields.iter().map(|(k, v)| json!([k, v])).collect();
        self.control_ok(json!({
            "cmd": "blast", "name": name, "class": class, "fields": fields, "count": count
        }))
    }

    /// As [`AmiPeer::blast`] for `seconds` instead of a count: events go out as fast as the
    /// sessions take them (a session's socket must drain before the next batch). The answer's
    /// `count` says how many were sent.
    pub fn flood(&self, name: &str, class: &str, fields: &[(&str, &str)], seconds: f64) -> Value {
        let fields: Vec<Value> = fields.iter().map(|(k, v)| json!([k, v])).collect();
        self.control_ok(json!({
            "cmd": "blast", "name": name, "class": class, "fields": fields, "seconds": seconds
        }))
    }

    /// Every message the peer received so far, in order.
    pub fn actions(&self) -> Vec<PeerAction> {
        let v = self.control_ok(json!({"cmd": "actions"}));
        v["actions"]
            .as_array()
            .map(|a| a.iter().map(PeerAction::from_json).collect())
            .unwrap_or_default()
    }

    /// Received messages whose `Action` is `name` (case-insensitive).
    pub fn actions_named(&self, name: &str) -> Vec<PeerAction> {
        self.actions()
            .into_iter()
            .filter(|a| a.action.eq_ignore_ascii_case(name))
            .collect()
    }

    pub fn clear_actions(&self) {
        self.control_ok(json!({"cmd": "clear"}));
    }

    /// Current AMI sessions: `[{"id","user","authenticated","peer","read","write","events"}]`.
    pub fn sessions(&self) -> Vec<Value> {
        let v = self.control_ok(json!({"cmd": "sessions"}));
        v["sessions"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until exactly `n` logged-in sessions exist (e.g. the gateway's upstream login).
    pub fn wait_logged_in(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.sessions();
            let count = s
                .iter()
                .filter(|x| x["authenticated"] == json!(true))
                .count();
            if count == n {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "expected {n} logged-in AMI sessions, have {count}: {s:?}\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Replaces the channel list behind CoreShowChannels/Status/Hangup/Redirect/Setvar.
    pub fn set_channels(&self, channels: Value) {
        self.control_ok(json!({"cmd": "channels", "channels": channels}));
    }

    /// Closes every AMI connection (what clients see when Asterisk goes away).
    pub fn drop_all(&self) {
        self.control_ok(json!({"cmd": "drop"}));
    }

    /// Kills the peer and starts a fresh one (no sessions, empty action log) on the same AMI
    /// port; the control port changes.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, stdout, port, control_port) = spawn_peer(&self.dir, &self.args, self.port);
        self.child = child;
        self._stdout = stdout;
        assert_eq!(port, self.port);
        self.control_port = control_port;
    }

    /// Kills the peer without restarting it (Asterisk down: connections refused).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AmiPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_peer(
    dir: &tempfile::TempDir,
    args: &[String],
    port: u16,
) -> (Child, BufReader<ChildStdout>, u16, u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("stderr.log"))
            .expect("stderr log");
        let log: PathBuf = dir.path().join("peer.log");
        let mut child = Command::new(PYTHON)
            .arg(PEER_SCRIPT)
            .arg("--port")
            .arg(port.to_string())
            .arg("--log")
            .arg(&log)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn /usr/bin/python3 ami_peer.py");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        // Read the READY line on a helper thread so that a hung peer cannot hang the test.
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut line = String::new();
            let _ = stdout.read_line(&mut line);
            let _ = tx.send(line);
            stdout
        });
        let line = rx.recv_timeout(Duration::from_secs(15)).unwrap_or_default();
        let parsed = parse_ready(&line);
        if let Some((p, c)) = parsed {
            let stdout = reader.join().expect("ready reader");
            return (child, stdout, p, c);
        }
        let _ = child.kill();
        let _ = child.wait();
        let _ = reader.join();
        // The same port right after a kill can still be busy for a moment: retry.
        if port == 0 || Instant::now() > deadline {
            let err = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
            panic!("ami_peer.py did not start (got {line:?}):\n{err}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn parse_ready(line: &str) -> Option<(u16, u16)> {
    let mut it = line.split_whitespace();
    if it.next()? != "READY" {
        return None;
    }
    let port = it.next()?.strip_prefix("port=")?.parse().ok()?;
    let control = it.next()?.strip_prefix("control=")?.parse().ok()?;
    Some((port, control))
}

/// Lowercase MD5 hex of `data`, as Asterisk computes the `Key` of an `AuthType: MD5` login
/// (md5(challenge + secret)).
pub fn md5_hex(data: &str) -> String {
    use md5::{Digest, Md5};
    Md5::digest(data.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A tiny blocking AMI client (what a PBX panel or script does on port 5038).
pub struct AmiClient {
    stream: TcpStream,
    buf: Vec<u8>,
    closed: bool,
    next_id: u64,
    /// The greeting line without its line end, e.g. `Asterisk Call Manager/11.0.0`.
    pub banner: String,
}

impl AmiClient {
    /// Connects and reads the banner line (panics if none comes within 5 s).
    pub fn connect(port: u16) -> AmiClient {
        let mut c = AmiClient::try_connect(port).expect("AMI connect");
        let banner = c
            .read_line(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("no AMI banner on port {port}"));
        c.banner = banner;
        c
    }

    /// Connects without reading anything.
    pub fn try_connect(port: u16) -> std::io::Result<AmiClient> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true).ok();
        Ok(AmiClient {
            stream,
            buf: Vec::new(),
            closed: false,
            next_id: 0,
            banner: String::new(),
        })
    }

    pub fn banner(&self) -> &str {
        &self.banner
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Sends one message: each pair as `Name: value\r\n`, then the blank line.
    pub fn send(&mut self, headers: &[(&str, &str)]) {
        let mut out = String::new();
        for (k, v) in headers {
            out.push_str(k);
            out.push_str(": ");
            out.push_str(v);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        self.send_raw(out.as_bytes());
    }

    /// Writes bytes as they are (framing tests, pipelining, garbage).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        // A peer that already closed may reset the connection: the reads tell the story.
        let _ = self.stream.write_all(bytes);
    }

    /// Half-closes our side (EOF for the other end).
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Reads more bytes within `deadline`; false on timeout or EOF.
    fn fill(&mut self, deadline: Instant) -> bool {
        if self.closed {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let wait = (deadline - now).max(Duration::from_millis(1));
        self.stream.set_read_timeout(Some(wait)).ok();
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) => {
                self.closed = true;
                false
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
            Err(e) if e.kind() == ErrorKind::Interrupted => true,
            Err(_) => {
                self.closed = true;
                false
            }
        }
    }

    /// One line (CRLF or LF) without its terminator.
    pub fn read_line(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Some(String::from_utf8_lossy(&line).into_owned());
            }
            if !self.fill(deadline) {
                return None;
            }
        }
    }

    /// The next complete message (lines up to a blank line). `None` on timeout or when the
    /// connection closed before a complete message; blank lines between messages are skipped.
    pub fn read_message(&mut self, timeout: Duration) -> Option<Msg> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(msg) = self.take_message() {
                return Some(msg);
            }
            if !self.fill(deadline) {
                return None;
            }
        }
    }

    /// Parses a complete message out of the buffer, if there is one.
    fn take_message(&mut self) -> Option<Msg> {
        loop {
            let mut lines = Vec::new();
            let mut start = 0;
            let mut end = None;
            while let Some(rel) = self.buf[start..].iter().position(|&b| b == b'\n') {
                let mut line = &self.buf[start..start + rel];
                if line.last() == Some(&b'\r') {
                    line = &line[..line.len() - 1];
                }
                start += rel + 1;
                if line.is_empty() {
                    end = Some(start);
                    break;
                }
                lines.push(String::from_utf8_lossy(line).into_owned());
            }
            let end = end?;
            self.buf.drain(..end);
            if lines.is_empty() {
                continue; // a stray blank line
            }
            return Some(
                lines
                    .into_iter()
                    .map(|l| match l.split_once(':') {
                        Some((n, v)) => (n.to_string(), v.trim_start_matches(' ').to_string()),
                        None => (l, String::new()),
                    })
                    .collect(),
            );
        }
    }

    /// Reads messages until one satisfies `pred`; the others are returned in `skipped`.
    pub fn read_until(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Msg) -> bool,
        skipped: &mut Vec<Msg>,
    ) -> Option<Msg> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = self.read_message(left)?;
            if pred(&msg) {
                return Some(msg);
            }
            skipped.push(msg);
        }
    }

    /// The next message that has a `Response` header (events before it are dropped).
    pub fn read_response(&mut self, timeout: Duration) -> Option<Msg> {
        self.read_until(
            timeout,
            |m| header(m, "Response").is_some(),
            &mut Vec::new(),
        )
    }

    /// Sends an action with a fresh ActionID (unless one is given) and returns the response
    /// carrying that ActionID; events and other messages read meanwhile are dropped.
    pub fn action(&mut self, headers: &[(&str, &str)]) -> Msg {
        let (msg, _) = self.action_collect(headers, Duration::from_secs(10));
        msg
    }

    /// As [`AmiClient::action`], also returning the messages that arrived before the response.
    pub fn action_collect(
        &mut self,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> (Msg, Vec<Msg>) {
        let id = match headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("ActionID"))
        {
            Some((_, v)) => v.to_string(),
            None => {
                self.next_id += 1;
                format!("t-{}", self.next_id)
            }
        };
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("ActionID"))
        {
            all.push(("ActionID", id.as_str()));
        }
        self.send(&all);
        let mut skipped = Vec::new();
        let msg = self
            .read_until(
                timeout,
                |m| header(m, "Response").is_some() && header(m, "ActionID") == Some(id.as_str()),
                &mut skipped,
            )
            .unwrap_or_else(|| {
                panic!("no response to {headers:?} (ActionID {id}); got {skipped:?}")
            });
        (msg, skipped)
    }

    /// A list action: the response, then every message with its ActionID up to and including
    /// the `EventList: Complete` event. Returns (response, items, complete event).
    pub fn list_action(&mut self, headers: &[(&str, &str)]) -> (Msg, Vec<Msg>, Msg) {
        let (resp, _) = self.action_collect(headers, Duration::from_secs(10));
        let id = header(&resp, "ActionID").unwrap_or_default().to_string();
        let mut items = Vec::new();
        loop {
            let msg = self
                .read_message(Duration::from_secs(10))
                .unwrap_or_else(|| panic!("list {headers:?} never completed; items {items:?}"));
            if header(&msg, "ActionID") != Some(id.as_str()) {
                continue;
            }
            if header(&msg, "EventList").is_some_and(|v| v.eq_ignore_ascii_case("Complete")) {
                return (resp, items, msg);
            }
            items.push(msg);
        }
    }

    /// Plain-text login; returns the Login response (FullyBooted, if any, stays unread).
    pub fn login(&mut self, user: &str, secret: &str) -> Msg {
        self.action(&[("Action", "Login"), ("Username", user), ("Secret", secret)])
    }

    /// Challenge/response login (`AuthType: MD5`, key = md5(challenge + secret)).
    pub fn login_md5(&mut self, user: &str, secret: &str) -> Msg {
        let ch = self.action(&[("Action", "Challenge"), ("AuthType", "MD5")]);
        let challenge = header(&ch, "Challenge")
            .unwrap_or_else(|| panic!("no challenge: {ch:?}"))
            .to_string();
        let key = md5_hex(&format!("{challenge}{secret}"));
        self.action(&[
            ("Action", "Login"),
            ("AuthType", "MD5"),
            ("Username", user),
            ("Key", key.as_str()),
        ])
    }

    /// True once the other side has closed the connection (waits up to `timeout`; bytes that
    /// arrive meanwhile are kept for the reads).
    pub fn wait_closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.closed {
            if !self.fill(deadline) && Instant::now() >= deadline {
                break;
            }
        }
        self.closed
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Takes the bytes received but not yet parsed (before reading the socket directly).
    pub fn take_buffered(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Everything received but not yet parsed, as text.
    pub fn pending_text(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }
}
