//! One check per fuzz target. Each takes the raw bytes a peer controls, runs them through the
//! daemon's own parser, and panics when a property fails: a panic inside pbxguard, or an
//! answer that contradicts an independent, simpler statement of the rule.
//!
//! Kept free of libFuzzer so that `tests/fuzz_corpus.rs` can include this file and replay the
//! seed corpora and the saved crashes under `cargo test`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri};
use percent_encoding::percent_decode_str;

use pbxguard::ami::codec::{header_value, ClientFramer, Message as AmiMessage, MAX_HEADERS};
use pbxguard::ami::policy::{ClientPolicy, Verdict};
use pbxguard::app::App;
use pbxguard::realtime::wire;
use pbxguard::recordings::{paths, range, token};
use pbxguard::sip::framing::{Frame, FrameError, StreamFramer};
use pbxguard::sip::message::{error_response, Message as SipMessage};
use pbxguard::sip::sdp::{self, MediaPolicy, DEFAULT_CRYPTO_SUITES};

/// A target's check: the raw input in, a panic out when a property fails.
pub type Check = fn(&[u8]);

/// Every target, by the name `cargo fuzz run` knows it under.
pub const TARGETS: &[(&str, Check)] = &[
    ("ami_client", ami_client),
    ("sip_stream", sip_stream),
    ("sip_websocket", sip_websocket),
    ("sdp_policy", sdp_policy),
    ("recording_token", recording_token),
    ("check_request", check_request),
    ("realtime_body", realtime_body),
    ("config_file", config_file),
    ("asterisk_conf", asterisk_conf),
];

// ---------------------------------------------------------------------------------------------
// AMI: client bytes -> framing -> header model -> policy decision.

/// Raw client bytes after login. Properties: the cut points of reads do not change the
/// messages; whatever the policy passes is forwarded as bytes that Asterisk frames into exactly
/// the message that was judged (no smuggling); and a passed message breaks none of the rules
/// below, restated independently of `policy.rs`.
pub fn ami_client(data: &[u8]) {
    let mut whole = Vec::new();
    ClientFramer::default().push(data, &mut whole);
    let mut pieces = Vec::new();
    let mut framer = ClientFramer::default();
    for chunk in data.chunks(7) {
        framer.push(chunk, &mut pieces);
    }
    assert_eq!(whole, pieces, "read boundaries changed the messages");

    let policy = ClientPolicy {
        name: "fuzz".into(),
        allow: vec!["*".into()],
        read: u32::MAX,
        permit: Vec::new(),
        overrides: Vec::new(),
        contexts: Vec::new(),
        max_concurrent_calls: None,
        max_call_attempts_per_minute: None,
        updated_at: 0,
    };
    let confined = ClientPolicy {
        contexts: vec!["sales".into(), "out-*".into()],
        ..policy.clone()
    };
    let dialing = pbxguard::dialing::DialingConfig::default();
    for msg in &whole {
        assert!(msg.lines.len() <= MAX_HEADERS);
        if msg.line_too_long || msg.header_loss {
            continue; // answered with Asterisk's own error, never forwarded
        }
        let Some(raw_action) = msg.action() else {
            continue;
        };
        let action = String::from_utf8_lossy(raw_action).to_ascii_lowercase();
        match policy.decide(
            &action,
            msg,
            std::path::Path::new("/var/spool/asterisk/monitor"),
        ) {
            Verdict::Refuse(refusal) => assert!(!refusal.message.is_empty()),
            Verdict::Pass { overrides } => {
                assert!(overrides.is_empty(), "no override was configured");
                let forwarded = msg.to_bytes();
                let mut seen = Vec::new();
                ClientFramer::default().push(&forwarded, &mut seen);
                assert_eq!(seen.len(), 1, "one judged message became {}", seen.len());
                assert_eq!(&seen[0], msg, "Asterisk would read another message");
                if let Some(why) = ami_forbidden(&action, msg) {
                    panic!("the policy passed {why}: {msg:?}");
                }
                // The toll-fraud rules read any message without panicking, and a refusal
                // names its rule.
                for p in [&policy, &confined] {
                    let named = |d: &str| pbxguard::dialing::destination::check_named(d, &dialing);
                    if let Err(r) = pbxguard::ami::calls::check(p, &action, msg, named) {
                        assert!(r.message().contains(r.rule.name()));
                    }
                }
            }
        }
    }
}

/// What Asterisk's argument splitting leaves of a value: quotes dropped, `\x` read as `x`.
fn unquoted(v: &[u8]) -> String {
    let mut out = Vec::new();
    let mut bytes = v.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'\\' => out.extend(bytes.next()),
            b'"' => {}
            _ => out.push(b),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `name(`, with optional blanks before the parenthesis, not preceded by an identifier
/// character, anywhere in `text` (upper-cased).
fn calls(text: &str, name: &str) -> bool {
    let upper = text.to_ascii_uppercase();
    let b = upper.as_bytes();
    let mut from = 0;
    while let Some(at) = upper[from..].find(name).map(|p| p + from) {
        from = at + 1;
        let before_ok = at == 0 || !(b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_');
        // C's isspace, as Asterisk trims.
        let rest =
            upper[at + name.len()..].trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
        if before_ok && rest.starts_with('(') {
            return true;
        }
    }
    false
}

/// The AMI rules that matter most, stated simply: no module loading, no application that runs
/// programs, no call of the functions that reach the shell, files or URLs, no config writes and
/// no config reads outside Asterisk's folder or of manager.conf. `None` when `msg` breaks none.
pub fn ami_forbidden(action: &str, msg: &AmiMessage) -> Option<String> {
    if action == "moduleload" {
        return Some("ModuleLoad".into());
    }
    if action == "mixmonitor" && msg.all("Command").any(|c| !c.trim_ascii().is_empty()) {
        return Some("a MixMonitor post-recording command".into());
    }
    for line in &msg.lines {
        if let Some(app) = header_value(line, "Application") {
            let app = unquoted(app).to_ascii_lowercase();
            if ["system", "exec", "agi"]
                .iter()
                .any(|bad| app.contains(bad))
            {
                return Some(format!("Application {app:?}"));
            }
        }
        if header_value(line, "ActionID").is_some() {
            continue;
        }
        let text = unquoted(line);
        if ["SHELL", "FILE", "EVAL", "CURL", "ODBC_SQL"]
            .iter()
            .any(|f| calls(&text, f))
        {
            return Some(format!("a function call in {text:?}"));
        }
    }
    if action == "command" {
        if let Some(command) = msg.get("Command") {
            // Only plain spellings are restated: how Asterisk's parse_args reads quotes and
            // backslashes (an unclosed quote swallows the rest of the line into one word) is
            // the policy's own unit tests' business.
            let plain = !command.iter().any(|&b| matches!(b, b'"' | b'\\' | 0));
            let text = unquoted(command).to_ascii_lowercase();
            let words: Vec<&str> = text.split([' ', '\t']).filter(|w| !w.is_empty()).collect();
            if plain
                && words.len() >= 2
                && words[0] == "module"
                && matches!(words[1], "load" | "unload")
            {
                return Some(format!("the CLI command {text:?}"));
            }
            // Commands that print secrets (the vault's SIP passwords, astdb values).
            let starts = |prefix: &[&str]| {
                words.len() >= prefix.len() && words.iter().zip(prefix).all(|(w, p)| w == p)
            };
            let secret = [
                &["pjsip", "show", "auth"][..],
                &["realtime", "load"],
                &["database", "get"],
                &["database", "show"],
                &["database", "showkey"],
                &["database", "query"],
                &["iax2", "show", "users"],
            ];
            if plain && secret.iter().any(|p| starts(p)) {
                return Some(format!("the secret-printing CLI command {text:?}"));
            }
        }
    }
    if ["getconfig", "getconfigjson", "updateconfig", "createconfig"].contains(&action) {
        let write = matches!(action, "updateconfig" | "createconfig");
        for name in ["Filename", "SrcFilename", "DstFilename"] {
            for file in msg.all(name) {
                let file = String::from_utf8_lossy(file);
                let lower = file
                    .trim_matches(|c: char| c.is_ascii_whitespace())
                    .to_ascii_lowercase();
                if write
                    || file.contains("..")
                    || file.contains('/')
                    || lower.starts_with("manager")
                {
                    return Some(format!("{action} on {file:?}"));
                }
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// SIP: TLS stream bytes and WebSocket messages -> framing -> message model -> SDP policy.

/// Raw bytes of a TLS stream from a phone. Properties: framing does not depend on how the
/// bytes were cut into reads; every framed message either parses, re-serialises and parses
/// back to the same model (and frames as one message at Asterisk), or gets an error response
/// that is itself a valid SIP response; the SDP policy never panics.
pub fn sip_stream(data: &[u8]) {
    let whole = frames(&[data]);
    // Cut in the middle, then in odd-sized reads (the listener reads at most 4 KiB at a time).
    let (head, tail) = data.split_at(data.len() / 2);
    let mut cut: Vec<&[u8]> = head.chunks(1021).collect();
    cut.extend(tail.chunks(1021));
    assert_eq!(whole, frames(&cut), "read boundaries changed the framing");
    for frame in whole {
        if let Ok(Frame::Message(bytes)) = frame {
            sip_message(&bytes, false);
        }
    }
}

/// Frames from `reads`, pushed one at a time and drained after each, as the transport does;
/// ends with the first error or when no more bytes are buffered.
fn frames(reads: &[&[u8]]) -> Vec<Result<Frame, FrameError>> {
    let mut framer = StreamFramer::new();
    let mut out = Vec::new();
    for read in reads {
        framer.push(read);
        loop {
            match framer.next() {
                Ok(Some(frame)) => out.push(Ok(frame)),
                Ok(None) => break,
                Err(e) => {
                    out.push(Err(e));
                    return out;
                }
            }
        }
    }
    out
}

/// One SIP message as the edge receives it (from a TLS frame or a WebSocket message).
pub fn sip_message(raw: &[u8], websocket: bool) {
    let msg = match SipMessage::parse(raw) {
        Ok(m) => m,
        Err(e) => {
            let (code, _) = e.status();
            assert!((400..700).contains(&code), "error status {code}");
            if let Some(answer) = error_response(raw, &e) {
                let parsed = SipMessage::parse(&answer)
                    .unwrap_or_else(|e| panic!("our own error response does not parse: {e}"));
                assert_eq!(parsed.status(), Some(code));
            }
            return;
        }
    };
    let bytes = msg.to_bytes();
    let again = SipMessage::parse(&bytes)
        .unwrap_or_else(|e| panic!("re-serialised message does not parse: {e}"));
    assert_eq!(again, msg, "round trip changed the message");
    assert_eq!(again.to_bytes(), bytes, "serialisation is not stable");
    // Asterisk reads the forwarded bytes as exactly one message.
    assert_eq!(
        frames(&[&bytes]),
        vec![Ok(Frame::Message(bytes.clone().into()))],
        "the forwarded message frames differently"
    );
    // The accessors the proxy uses must cope with whatever parsed.
    let _ = (
        msg.vias(),
        msg.top_via(),
        msg.from(),
        msg.to(),
        msg.contacts(),
    );
    let _ = (
        msg.routes(),
        msg.record_routes(),
        msg.cseq(),
        msg.max_forwards(),
    );
    let _ = (msg.contact_star(), msg.user_agent(), msg.call_id());
    if let Some(uri) = msg.request_uri() {
        let text = uri.to_string();
        let back = pbxguard::sip::uri::SipUri::parse(&text)
            .unwrap_or_else(|e| panic!("Request-URI {text:?} does not parse back: {e}"));
        assert_eq!(back.to_string(), text);
    }
    if msg.method().is_some() {
        let answer = msg
            .response(488, "Not Acceptable Here", "fuzz", &[])
            .to_bytes();
        let parsed = SipMessage::parse(&answer)
            .unwrap_or_else(|e| panic!("our response to a parsed request does not parse: {e}"));
        assert_eq!(parsed.status(), Some(488));
    }
    let encoding: Vec<&str> = msg.headers("Content-Encoding").collect();
    let encoding = (!encoding.is_empty()).then(|| encoding.join(", "));
    let policy = MediaPolicy::default();
    let verdict = sdp::check_body(
        msg.content_type(),
        encoding.as_deref(),
        msg.body(),
        &policy,
        websocket,
    );
    if let (Ok(sdp::Verdict::Accepted), Some(ct)) = (&verdict, msg.content_type()) {
        if ct
            .trim()
            .to_ascii_lowercase()
            .starts_with("application/sdp")
        {
            if let Some(why) = forbidden_media(&String::from_utf8_lossy(msg.body()), websocket) {
                panic!("accepted SDP body has {why}");
            }
        }
    }
}

/// The bytes a browser sends after the upgrade: WebSocket frames (masked, as from a client),
/// read with the listener's own WebSocket limits; each text or binary message is one SIP
/// message, judged with the WebSocket (DTLS-only) media rule.
pub fn sip_websocket(data: &[u8]) {
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket};
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    let stream = Duplex { input: data };
    let config = pbxguard::sip::transport::ws_config();
    let mut ws = WebSocket::from_raw_socket(stream, Role::Server, Some(config));
    // Each loop consumes input or ends; the bound is a guard against a library regression.
    for _ in 0..=data.len() {
        match ws.read() {
            Ok(WsMessage::Text(t)) => sip_message(t.as_bytes(), true),
            Ok(WsMessage::Binary(b)) => {
                assert!(b.len() <= pbxguard::sip::message::MAX_MESSAGE_BYTES);
                sip_message(&b, true)
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// A socket whose reads come from the fuzz input and whose writes (pongs, closes) vanish.
struct Duplex<'a> {
    input: &'a [u8],
}

impl Read for Duplex<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Duplex<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// SDP text. Properties: no panic; and an accepted SDP has no media line that the SRTP rule,
/// restated here independently of `sdp.rs`, forbids. Run for a phone (SDES or DTLS) and for a
/// browser (DTLS only), and once inside a multipart body.
pub fn sdp_policy(data: &[u8]) {
    let policy = MediaPolicy::default();
    let text = String::from_utf8_lossy(data);
    for websocket in [false, true] {
        if sdp::check_sdp(data, &policy, websocket).is_ok() {
            if let Some(why) = forbidden_media(&text, websocket) {
                panic!("accepted SDP has {why}");
            }
        }
    }
    let _ = sdp::check_body(
        Some("multipart/mixed;boundary=fuzz"),
        None,
        data,
        &policy,
        false,
    );
}

const SRTP_PROTOS: [&str; 4] = [
    "RTP/SAVP",
    "RTP/SAVPF",
    "UDP/TLS/RTP/SAVP",
    "UDP/TLS/RTP/SAVPF",
];

/// The policy in a few lines: every active `m=` line (port not 0) uses an SRTP profile; an
/// SDES one (RTP/SAVP, RTP/SAVPF) carries an `a=crypto` line of a default suite with an
/// `inline:` key and no parameter switching protection off, and is not allowed on a
/// WebSocket; a DTLS one (UDP/TLS/…) has an `a=fingerprint` at session or media level.
pub fn forbidden_media(sdp: &str, websocket: bool) -> Option<String> {
    let lines: Vec<&str> = sdp
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    let first_m = lines.iter().position(|l| l.starts_with("m="))?;
    let fingerprint = |l: &&str| l.starts_with("a=fingerprint:");
    let session_fingerprint = lines[..first_m].iter().any(fingerprint);
    let mut at = first_m;
    while at < lines.len() {
        let end = lines[at + 1..]
            .iter()
            .position(|l| l.starts_with("m="))
            .map_or(lines.len(), |p| at + 1 + p);
        let fields: Vec<&str> = lines[at][2..].split(' ').collect();
        let attrs = &lines[at + 1..end];
        let port: Option<u32> = fields
            .get(1)
            .and_then(|p| p.split('/').next())
            .and_then(|p| p.parse().ok());
        if port != Some(0) {
            let proto = fields.get(2).map(|p| p.to_ascii_uppercase());
            let proto = proto.as_deref().unwrap_or("");
            if !SRTP_PROTOS.contains(&proto) {
                return Some(format!("an active m= line with proto {proto:?}"));
            }
            if proto.starts_with("UDP/TLS/") {
                if !session_fingerprint && !attrs.iter().any(fingerprint) {
                    return Some("a DTLS stream without a fingerprint".into());
                }
            } else if websocket {
                return Some("an SDES stream offered over a WebSocket".into());
            } else if !attrs.iter().any(|a| good_crypto(a)) {
                return Some("an SDES stream without a usable a=crypto line".into());
            }
        }
        at = end;
    }
    None
}

fn good_crypto(line: &str) -> bool {
    let Some(rest) = line.strip_prefix("a=crypto:") else {
        return false;
    };
    let mut words = rest.split(' ');
    let _tag = words.next();
    let suite_ok = words
        .next()
        .is_some_and(|s| DEFAULT_CRYPTO_SUITES.contains(&s));
    let key_ok = words.next().is_some_and(|k| k.starts_with("inline:"));
    let weakened = words.any(|p| {
        matches!(
            p,
            "UNENCRYPTED_SRTP" | "UNENCRYPTED_SRTCP" | "UNAUTHENTICATED_SRTP"
        )
    });
    suite_ok && key_ok && !weakened
}

// ---------------------------------------------------------------------------------------------
// Recording links.

const LINK_KID: &str = "0a1b2c3d";
const OLD_KID: &str = "99887766";

fn link_keys() -> &'static token::LinkKeys {
    static KEYS: OnceLock<token::LinkKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        token::LinkKeys::from_keys(&[
            (OLD_KID.to_string(), &[7u8; 32][..]),
            (LINK_KID.to_string(), &[9u8; 32][..]),
        ])
    })
}

/// A download request's pieces, one per line: the link token, the recording path (as the web
/// tier sends it to be minted), then the Range and conditional headers. Properties: a token
/// that verifies is the one spelling we mint for its fields (no malleability, no forgery);
/// a token minted from the input's bytes and then changed in one byte never verifies; an
/// accepted path stays beneath the recordings folder; every planned range lies in the file.
/// An input starting with `!` is read as `!` + 16 id bytes + 8 expiry bytes + position + byte.
pub fn recording_token(data: &[u8]) {
    let keys = link_keys();
    let now = 1_800_000_000;
    if let Some(rest) = data.strip_prefix(b"!") {
        if rest.len() >= 26 {
            let mut id = [0u8; token::LINK_ID_LEN];
            id.copy_from_slice(&rest[..16]);
            let mut exp = [0u8; 8];
            exp.copy_from_slice(&rest[16..24]);
            let minted = keys
                .mint(&id, i64::from_be_bytes(exp))
                .unwrap_or_else(|e| panic!("minting failed: {e}"));
            let link = keys
                .authenticate(&minted)
                .unwrap_or_else(|e| panic!("a minted token does not verify: {e}"));
            assert_eq!(link.id, id);
            let mut forged = minted.clone().into_bytes();
            let at = usize::from(rest[24]) % forged.len();
            forged[at] = rest[25];
            if forged != minted.as_bytes() {
                if let Ok(forged) = std::str::from_utf8(&forged) {
                    assert!(
                        keys.authenticate(forged).is_err(),
                        "a changed token verified: {forged}"
                    );
                }
            }
        }
        return;
    }
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let tok = lines.next().unwrap_or("");
    if let Ok(link) = keys.verify(tok, now) {
        assert!(link.expires_at > now);
        let again = keys.mint(&link.id, link.expires_at);
        assert_eq!(again.as_deref(), Ok(tok), "a second spelling verified");
    }
    if let Ok(link) = token::decode(tok) {
        let _ = (link.id_hex(), link.kid_hex());
    }
    if let Some(id) = token::parse_link_id(tok) {
        assert_eq!(token::hex(&id), tok.to_ascii_lowercase());
    }

    let root = paths::Root::new("/srv/recordings");
    if let Ok(rel) = root.normalise(lines.next().unwrap_or("")) {
        assert!(!rel.is_empty() && !rel.starts_with('/'), "{rel:?}");
        for part in rel.split('/') {
            assert!(!part.is_empty() && part != "." && part != "..", "{rel:?}");
        }
        assert!(!rel.chars().any(char::is_control), "{rel:?}");
    }

    fn header(s: Option<&str>) -> Option<&str> {
        s.filter(|v| !v.is_empty())
    }
    let (r, ir, im, inm, ims, ius) = (
        lines.next(),
        lines.next(),
        lines.next(),
        lines.next(),
        lines.next(),
        lines.next(),
    );
    let conditions = range::Conditions {
        range: header(r),
        if_range: header(ir),
        if_match: header(im),
        if_none_match: header(inm),
        if_modified_since: header(ims),
        if_unmodified_since: header(ius),
    };
    let len = u64::from(data.len() as u32 % 100_000);
    let v = range::Validators::new(
        len,
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
    );
    if let range::Plan::Partial(parts) = range::plan(&conditions, &v) {
        assert!(!parts.is_empty());
        for (start, end) in parts {
            assert!(start < end && end <= len, "{start}..{end} of {len}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The forward-auth check endpoint, on a real App over a real SQLite file.

struct CheckHarness {
    runtime: tokio::runtime::Runtime,
    app: Arc<App>,
    /// A valid token of a supervisor (level 5) session; `@T@` in the input stands for it.
    token: String,
}

fn check_harness() -> &'static CheckHarness {
    static H: OnceLock<CheckHarness> = OnceLock::new();
    H.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"));
        let dir = scratch_dir("check");
        let (app, token) = runtime.block_on(build_app(&dir));
        CheckHarness {
            runtime,
            app,
            token,
        }
    })
}

/// A folder of its own per process (under `$TMPDIR`), left behind for the caller to clear:
/// libFuzzer ends the process without running destructors.
pub fn scratch_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "pbxguard-fuzz-{what}-{}-{}",
        std::process::id(),
        pbxguard::ids::random_hex(4)
    ));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

async fn build_app(dir: &Path) -> (Arc<App>, String) {
    use pbxguard::auth::login::{issue_session, Client};
    let d = dir.display();
    let text = format!(
        "[daemon]\nstate_dir = \"{d}/state\"\ninit_if_missing = true\n\
         [vault]\nkey_file = \"{d}/master.key\"\n\
         [http]\nlisten = \"127.0.0.1:9\"\npublic_url = \"https://pbx.example.com\"\n\
         [recordings]\nroot = \"{d}/recordings\"\n\
         [auth.routes]\n\"/monitoring\" = \"supervisor\"\n\"/admin\" = \"admin\"\n"
    );
    let path = dir.join("pbxguard.toml");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("config: {e}"));
    let config =
        pbxguard::config::Config::load_for_init(&path).unwrap_or_else(|e| panic!("config: {e}"));
    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! { panic!("{what}: {e}") };
    let (store, vault) = pbxguard::daemon::prepare(&config)
        .await
        .unwrap_or_else(|e| fail("prepare", &e));
    let auth = pbxguard::auth::Auth::new(&vault, &config.daemon.state_dir)
        .await
        .unwrap_or_else(|e| fail("auth", &e));
    let metrics = pbxguard::metrics::Metrics::new();
    let recordings = pbxguard::recordings::Recordings::start(
        &vault,
        store.clone(),
        metrics.download_log_overflow.clone(),
        paths::Root::new(&config.recordings.root),
    )
    .await
    .unwrap_or_else(|e| fail("recordings", &e));
    store
        .insert_user(
            "sam",
            5,
            None,
            "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA",
        )
        .await
        .unwrap_or_else(|e| fail("user", &e));
    let user = store
        .user("sam")
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("user sam missing"));
    let app = App::new(config, store, vault, auth, recordings, metrics, None);
    let client = Client {
        ip: "192.0.2.7".into(),
        user_agent: "fuzz".into(),
    };
    let config = app.config.load_full();
    let gate = pbxguard::auth::login::Gate {
        auth: &app.auth,
        store: &app.store,
        metrics: &app.metrics,
        cfg: &config.auth,
        bans: &app.bans,
        bans_cfg: &config.bans,
    };
    let issued = issue_session(gate, &user, &client)
        .await
        .unwrap_or_else(|e| fail("session", &e));
    (app, issued.token)
}

/// A request as nginx's `auth_request` would pass it: the first line is the check URI (with
/// `?role=`), every further line a `Name: value` header; `@T@` anywhere stands for a valid
/// supervisor token. Properties: the answer is 200, 401 or 403 only; a 200 needs exactly the
/// valid token and reports level 5; and no 200 for a target that the routes, an
/// `X-Required-Role` or a `?role=` put above a supervisor (restated independently).
pub fn check_request(data: &[u8]) {
    let h = check_harness();
    let text = String::from_utf8_lossy(data).replace("@T@", &h.token);
    let mut lines = text.split('\n');
    let uri: Uri = lines
        .next()
        .and_then(|l| l.trim_end_matches('\r').parse().ok())
        .unwrap_or_else(|| Uri::from_static("/api/v1/auth/check"));
    let mut headers = HeaderMap::new();
    for line in lines {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) {
            headers.append(n, v);
        }
    }
    let response = h.runtime.block_on(pbxguard::web::auth_api::check_response(
        &h.app, &headers, &uri,
    ));
    let status = response.status().as_u16();
    assert!(matches!(status, 200 | 401 | 403), "status {status}");
    if status != 200 {
        return;
    }
    let used = pbxguard::web::auth_api::token_from(&headers);
    assert_eq!(used, Some(h.token.as_str()), "a 200 without the real token");
    assert_eq!(
        response.headers().get("x-auth-level").map(|v| v.as_bytes()),
        Some(&b"5"[..])
    );
    for v in headers.get_all("x-required-role") {
        let v = String::from_utf8_lossy(v.as_bytes());
        assert!(
            !matches!(v.as_ref(), "manager" | "admin"),
            "200 despite X-Required-Role: {v}"
        );
    }
    for pair in uri.query().unwrap_or("").split('&') {
        if let Some(v) = pair.strip_prefix("role=") {
            let v = percent_decode_str(v).decode_utf8_lossy();
            assert!(
                !matches!(v.as_ref(), "manager" | "admin"),
                "200 despite ?role={v}"
            );
        }
    }
    for v in headers.get_all("x-original-uri") {
        let target = String::from_utf8_lossy(v.as_bytes());
        assert!(
            !lands_under_admin(&target),
            "200 for {target:?}, which leads under /admin"
        );
    }
}

/// Where a request target really leads, resolved with a stack: query and fragment cut, one
/// percent-decoding, `\` as `/`, `.` and `..` segments applied; whether it is under `/admin`
/// (prefix match, any case, as the routes are documented).
pub fn lands_under_admin(target: &str) -> bool {
    let path = target.split(['?', '#']).next().unwrap_or("");
    let decoded = percent_decode_str(path)
        .decode_utf8_lossy()
        .replace('\\', "/");
    let mut stack: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                stack.pop();
            }
            s => stack.push(s),
        }
    }
    stack
        .first()
        .is_some_and(|s| s.to_ascii_lowercase().starts_with("admin"))
}

// ---------------------------------------------------------------------------------------------
// res_config_curl bodies, the config file, Asterisk's config files.

/// A `res_config_curl` request body (or query string). Properties: percent-encoding round
/// trips for any bytes; an answer line built from parsed fields parses back to them.
pub fn realtime_body(data: &[u8]) {
    assert_eq!(
        wire::decode(&wire::encode(data)).as_deref(),
        Ok(data),
        "encode/decode round trip"
    );
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(fields) = wire::parse_fields(text) else {
        return;
    };
    for f in &fields {
        assert!(!f.name.is_empty());
        let _ = f.matches("1001");
        let _ = pbxguard::realtime::validate_id(&f.value);
        let _ = pbxguard::realtime::validate_username(&f.value);
        let _ = wire::like(&f.value, &f.name);
    }
    let pairs: Vec<(&str, &[u8])> = fields
        .iter()
        .filter(|f| !f.value.is_empty())
        .map(|f| (f.name.as_str(), f.value.as_bytes()))
        .collect();
    let line = wire::line(&pairs);
    let back = wire::parse_fields(&line)
        .unwrap_or_else(|e| panic!("our own answer line {line:?} does not parse: {e}"));
    let back: Vec<(&str, &[u8])> = back
        .iter()
        .map(|f| (f.name.as_str(), f.value.as_bytes()))
        .collect();
    assert_eq!(back, pairs, "answer line round trip");
}

/// `pbxguard.toml` text: every input ends in a configuration or a list of problems, each
/// naming a key; nothing panics (durations, sizes, addresses and paths included).
pub fn config_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match pbxguard::config::Config::parse(text) {
        Ok(config) => {
            let _ = config.listeners();
        }
        Err(problems) => {
            assert!(!problems.is_empty(), "refused without a reason");
            for p in problems {
                assert!(!p.key.is_empty(), "a problem without a key: {}", p.message);
            }
        }
    }
}

/// Asterisk's config files for `pbxguard audit asterisk`: the input, split at `\0`, becomes
/// pjsip.conf, manager.conf, http.conf, ari.conf, an includable extra.conf and extensions.conf
/// (last, so that older seeds keep their meaning) in a folder held in memory (the audit's own reader, with includes and globs, over a map instead of the disk).
/// Properties: the audit ends (includes are bounded) and every finding has a text and a fix.
pub fn asterisk_conf(data: &[u8]) {
    // Include fan-out is bounded by the reader (cycles, depth, 4096 files; unit-tested in
    // audit/conf.rs). Inputs with many include lines only re-parse the same six files
    // thousands of times, which starved the campaign (under 1000 runs/s), so they are skipped.
    let includes = data.windows(7).filter(|w| w == b"include").count();
    if includes > 8 {
        return;
    }
    let dir = Path::new("/etc/asterisk");
    let names = [
        "pjsip.conf",
        "manager.conf",
        "http.conf",
        "ari.conf",
        "extra.conf",
        "extensions.conf",
    ];
    let files = MemoryFiles(
        names
            .iter()
            .zip(data.splitn(names.len(), |&b| b == 0))
            .map(|(name, bytes)| (dir.join(name), bytes.to_vec()))
            .collect(),
    );
    match pbxguard::audit::asterisk_from(&files, dir) {
        Ok(findings) => {
            for f in findings {
                assert!(!f.message.is_empty() && !f.fix.is_empty(), "{f:?}");
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

struct MemoryFiles(Vec<(PathBuf, Vec<u8>)>);

impl pbxguard::audit::conf::Source for MemoryFiles {
    fn read(&self, path: &Path) -> std::io::Result<Option<Vec<u8>>> {
        self.0
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, b)| Some(b.clone()))
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    }

    fn is_file(&self, path: &Path) -> bool {
        self.0.iter().any(|(p, _)| p == path)
    }

    fn names(&self, dir: &Path) -> Vec<String> {
        self.0
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .filter_map(|(p, _)| p.file_name()?.to_str().map(str::to_string))
            .collect()
    }
}
