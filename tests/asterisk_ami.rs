//! The AMI gateway in front of a real Asterisk 22 (built by `tests/asterisk/build.sh`),
//! configured from the shipped `etc/asterisk/manager.conf` the way the admin guide tells an admin.
//! The stand-in peer (`tests/ami.rs`) stays for faults Asterisk cannot be made to produce.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use common::ami::{header, headers, AmiClient, Msg};
use common::asterisk::{self, Asterisk, Setup};
use common::{free_port, Daemon, Env};

const DIALER_SECRET: &str = "dialer-secret-real-1";
const BOARD_SECRET: &str = "wallboard-secret-real-1";
const T: Duration = Duration::from_secs(10);

/// The admin guide's variant for clients that need `Command`: `command` added to `write`.
const WRITE_WITH_COMMAND: &str = "call,agent,user,reporting,originate,command";
const READ_EXAMPLE: &str = "system,call,agent,user,dtmf,reporting,cdr,dialplan";

struct Gw {
    ast: Asterisk,
    env: Env,
    daemon: Daemon,
    port: u16,
}

fn start(setup: Setup) -> Option<Gw> {
    let prefix = asterisk::prefix()?;
    let ast = Asterisk::start(&prefix, &setup);
    let env = Env::new();
    let port = free_port();
    let ami = format!(
        "[ami]\nlisten = \"127.0.0.1:{port}\"\nupstream = \"127.0.0.1:{}\"\nupstream_timeout = \"3s\"\n",
        ast.ami_port
    );
    env.write_config(&env.config_text(env.http_port, env.redirect_port, &ami));
    env.init();
    env.ok(
        &["secret", "set", "ami/upstream"],
        ast.ami_secret.as_bytes(),
    );
    env.add_ami_client("dialer",
        DIALER_SECRET,
        &[
            "--allow",
            "Originate,Hangup,CoreShowChannels,Status,CoreSettings,Command,Getvar,Setvar,GetConfig,UpdateConfig,CreateConfig,Redirect",
            "--events",
            "call",
            "--context",
            "gateway-test",
        ],
    );
    env.add_ami_client(
        "wallboard",
        BOARD_SECRET,
        &["--allow", "CoreShowChannels,Status", "--events", "call"],
    );
    let daemon = env.start();
    daemon.wait_for_port(port);
    Some(Gw {
        ast,
        env,
        daemon,
        port,
    })
}

fn with_command() -> Setup {
    Setup {
        manager_permissions: Some((READ_EXAMPLE.into(), WRITE_WITH_COMMAND.into())),
        ..Setup::default()
    }
}

impl Gw {
    fn login(&self, user: &str, secret: &str) -> AmiClient {
        let mut c = AmiClient::connect(self.port);
        let r = c.login(user, secret);
        assert_eq!(header(&r, "Response"), Some("Success"), "{r:?}");
        c
    }

    fn dialer(&self) -> AmiClient {
        self.login("dialer", DIALER_SECRET)
    }
}

fn is_refusal(m: &Msg) -> bool {
    header(m, "Response") == Some("Error")
        && header(m, "Message").is_some_and(|v| v.contains("not allowed"))
}

#[test]
fn banner_logins_and_plain_actions_match_asterisk() {
    let Some(gw) = start(with_command()) else {
        return;
    };
    // The banner a client sees is Asterisk's own, byte for byte.
    let direct = AmiClient::connect(gw.ast.ami_port);
    let through = AmiClient::connect(gw.port);
    assert!(
        direct.banner.starts_with("Asterisk Call Manager/"),
        "{}",
        direct.banner
    );
    assert_eq!(through.banner, direct.banner);

    // Plain and MD5 logins of the gateway's own clients.
    let mut plain = gw.dialer();
    let mut md5 = AmiClient::connect(gw.port);
    let r = md5.login_md5("dialer", DIALER_SECRET);
    assert_eq!(
        header(&r, "Message"),
        Some("Authentication accepted"),
        "{r:?}"
    );
    let mut wrong = AmiClient::connect(gw.port);
    let r = wrong.login("dialer", "not-the-secret");
    assert_eq!(header(&r, "Response"), Some("Error"), "{r:?}");

    let pong = plain.action(&[("Action", "Ping")]);
    assert_eq!(header(&pong, "Ping"), Some("Pong"), "{pong:?}");
    assert!(header(&pong, "Timestamp").is_some(), "{pong:?}");
    let settings = md5.action(&[("Action", "CoreSettings")]);
    assert_eq!(
        header(&settings, "AsteriskVersion"),
        Some("22.10.1"),
        "{settings:?}"
    );
    // Command output as Asterisk 22 frames it: Output: lines inside the response.
    let cmd = plain.action(&[("Action", "Command"), ("Command", "core show version")]);
    assert_eq!(header(&cmd, "Response"), Some("Success"), "{cmd:?}");
    let out = headers(&cmd, "Output").join("\n");
    assert!(out.contains("Asterisk 22.10.1"), "{cmd:?}");
    // A client may run only what its policy allows, even when Asterisk would.
    let mut board = gw.login("wallboard", BOARD_SECRET);
    let r = board.action(&[("Action", "Command"), ("Command", "core show version")]);
    assert_eq!(header(&r, "Response"), Some("Error"), "{r:?}");
    assert_eq!(header(&r, "Message"), Some("Permission denied"), "{r:?}");
    // Each client session is its own Asterisk session, logged in as the pbxguard user.
    let managers = gw.ast.cli("manager show connected");
    assert!(managers.matches("pbxguard").count() >= 3, "{managers}");
}

#[test]
fn originate_answers_and_events_reach_the_right_clients() {
    let Some(gw) = start(Setup::default()) else {
        return;
    };
    let mut a = gw.dialer();
    let mut b = gw.dialer();
    // Both ask for call events; only the originator may see its OriginateResponse.
    let r = a.action(&[
        ("Action", "Originate"),
        ("Channel", "Local/wait@gateway-test"),
        ("Context", "gateway-test"),
        ("Exten", "echo"),
        ("Priority", "1"),
        ("Async", "true"),
        ("ActionID", "orig-1"),
    ]);
    assert_eq!(header(&r, "Response"), Some("Success"), "{r:?}");
    let mut seen_a = Vec::new();
    let resp = a
        .read_until(
            T,
            |m| header(m, "Event") == Some("OriginateResponse"),
            &mut seen_a,
        )
        .unwrap_or_else(|| panic!("no OriginateResponse; got {seen_a:?}"));
    assert_eq!(header(&resp, "Response"), Some("Success"), "{resp:?}");
    assert_eq!(header(&resp, "ActionID"), Some("orig-1"), "{resp:?}");
    assert!(
        seen_a
            .iter()
            .any(|m| header(m, "Event") == Some("Newchannel")),
        "the originator sees the call's events: {seen_a:?}"
    );
    // B sees the call (it subscribed to call events) but never A's OriginateResponse.
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut seen_b = Vec::new();
    while let Some(m) = b.read_message(deadline.saturating_duration_since(Instant::now())) {
        seen_b.push(m);
    }
    assert!(
        seen_b
            .iter()
            .any(|m| header(m, "Event") == Some("Newchannel")),
        "{seen_b:?}"
    );
    assert!(
        !seen_b
            .iter()
            .any(|m| header(m, "Event") == Some("OriginateResponse")),
        "{seen_b:?}"
    );
    // A failed originate (no such extension) answers Failure to the originator.
    let r = a.action(&[
        ("Action", "Originate"),
        ("Channel", "Local/nowhere@gateway-test"),
        ("Context", "gateway-test"),
        ("Exten", "echo"),
        ("Priority", "1"),
        ("Async", "true"),
        ("ActionID", "orig-2"),
    ]);
    assert_eq!(header(&r, "Response"), Some("Success"), "{r:?}");
    let resp = a
        .read_until(
            T,
            |m| {
                header(m, "Event") == Some("OriginateResponse")
                    && header(m, "ActionID") == Some("orig-2")
            },
            &mut Vec::new(),
        )
        .expect("OriginateResponse for the failed originate");
    assert_eq!(header(&resp, "Response"), Some("Failure"), "{resp:?}");
}

#[test]
fn list_actions_keep_their_event_list_framing() {
    let Some(gw) = start(Setup::default()) else {
        return;
    };
    let mut a = gw.dialer();
    let r = a.action(&[
        ("Action", "Originate"),
        ("Channel", "Local/long@gateway-test"),
        ("Context", "gateway-test"),
        ("Exten", "long"),
        ("Priority", "1"),
        ("Async", "true"),
    ]);
    assert_eq!(header(&r, "Response"), Some("Success"), "{r:?}");
    let mut board = gw.login("wallboard", BOARD_SECRET);
    let deadline = Instant::now() + T;
    let (resp, items, complete) = loop {
        let (resp, items, complete) = board.list_action(&[("Action", "CoreShowChannels")]);
        if !items.is_empty() || Instant::now() > deadline {
            break (resp, items, complete);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(header(&resp, "EventList"), Some("start"), "{resp:?}");
    assert!(!items.is_empty(), "the call is listed");
    assert!(items
        .iter()
        .all(|m| header(m, "Event") == Some("CoreShowChannel")));
    assert_eq!(
        header(&complete, "ListItems"),
        Some(items.len().to_string().as_str()),
        "{complete:?}"
    );
    let (resp, items, complete) = board.list_action(&[("Action", "Status")]);
    assert_eq!(header(&resp, "Response"), Some("Success"), "{resp:?}");
    assert!(items.iter().all(|m| header(m, "Event") == Some("Status")));
    assert_eq!(header(&complete, "Event"), Some("StatusComplete"));
    assert_eq!(
        header(&complete, "Items"),
        Some(items.len().to_string().as_str()),
        "{complete:?}"
    );
}

/// A plain HTTP listener that records whether anything connected (CURL() must never run).
fn canary_http() -> (u16, std::sync::mpsc::Receiver<()>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let _ = tx.send(());
            let mut b = [0u8; 512];
            let _ = s.read(&mut b);
        }
    });
    (port, rx)
}

#[test]
fn built_in_refusals_never_reach_asterisk() {
    // Asterisk is given every permission here, so pbxguard is all that stands in between.
    let Some(gw) = start(Setup {
        manager_permissions: Some(("all".into(), "all".into())),
        ..Setup::default()
    }) else {
        return;
    };
    let mut c = gw.dialer();
    let dir = gw.env.dir.path();
    let canary = |name: &str| dir.join(name);
    let (http_port, curl_hits) = canary_http();

    let sys = canary("system-ran");
    let shell = canary("shell-ran");
    let shell_set = canary("shell-set-ran");
    let exec = canary("exec-ran");
    let written = dir.join("written.conf");
    // An AGI script Asterisk would run from its agi folder if the Originate reached it.
    let agi = canary("agi-ran");
    let script = gw.ast.dir.path().join("agi/canary.sh");
    std::fs::write(&script, format!("#!/bin/sh\ntouch {}\n", agi.display())).expect("agi");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let attempts: Vec<Vec<(String, String)>> = vec![
        vec![
            ("Action".into(), "Originate".into()),
            ("Channel".into(), "Local/echo@gateway-test".into()),
            ("Application".into(), "System".into()),
            ("Data".into(), format!("touch {}", sys.display())),
        ],
        vec![
            ("Action".into(), "Originate".into()),
            ("Channel".into(), "Local/echo@gateway-test".into()),
            ("Application".into(), "Exec".into()),
            ("Data".into(), format!("System(touch {})", exec.display())),
        ],
        vec![
            ("Action".into(), "Originate".into()),
            ("Channel".into(), "Local/echo@gateway-test".into()),
            ("Application".into(), "AGI".into()),
            ("Data".into(), "canary.sh".into()),
        ],
        vec![
            ("Action".into(), "Getvar".into()),
            (
                "Variable".into(),
                format!("SHELL(touch {})", shell.display()),
            ),
        ],
        vec![
            ("Action".into(), "Setvar".into()),
            ("Variable".into(), "X".into()),
            (
                "Value".into(),
                format!("${{SHELL(touch {})}}", shell_set.display()),
            ),
        ],
        vec![
            ("Action".into(), "Getvar".into()),
            ("Variable".into(), "FILE(/etc/hostname)".into()),
        ],
        vec![
            ("Action".into(), "Getvar".into()),
            (
                "Variable".into(),
                format!("CURL(http://127.0.0.1:{http_port}/)"),
            ),
        ],
        vec![
            ("Action".into(), "GetConfig".into()),
            ("Filename".into(), "manager.conf".into()),
        ],
        vec![
            ("Action".into(), "GetConfig".into()),
            ("Filename".into(), "../../../../etc/passwd".into()),
        ],
        vec![
            ("Action".into(), "UpdateConfig".into()),
            ("SrcFilename".into(), "extensions.conf".into()),
            ("DstFilename".into(), written.display().to_string()),
            ("Reload".into(), "no".into()),
        ],
        vec![
            ("Action".into(), "Command".into()),
            ("Command".into(), "module load app_verbose.so".into()),
        ],
    ];
    for a in &attempts {
        let pairs: Vec<(&str, &str)> = a.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let r = c.action(&pairs);
        assert!(is_refusal(&r), "{pairs:?} -> {r:?}");
    }
    // The session still works, and none of the effects happened.
    let pong = c.action(&[("Action", "Ping")]);
    assert_eq!(header(&pong, "Ping"), Some("Pong"));
    std::thread::sleep(Duration::from_secs(1));
    for f in [&sys, &exec, &agi, &shell, &shell_set, &written] {
        assert!(
            !f.exists(),
            "{} exists: the action reached Asterisk",
            f.display()
        );
    }
    assert!(curl_hits.try_recv().is_err(), "CURL() reached the canary");
    let modules = gw.ast.cli("module show like app_verbose");
    assert!(modules.contains("0 modules loaded"), "{modules}");

    // Control: the canaries work. Straight to Asterisk (not through pbxguard), the same
    // System and AGI originates leave their files.
    let mut direct = AmiClient::connect(gw.ast.ami_port);
    let r = direct.login("pbxguard", &gw.ast.ami_secret);
    assert_eq!(header(&r, "Response"), Some("Success"), "{r:?}");
    let sys_direct = canary("system-direct");
    for (app, data) in [
        ("System", format!("touch {}", sys_direct.display())),
        ("AGI", "canary.sh".to_string()),
    ] {
        let r = direct.action(&[
            ("Action", "Originate"),
            ("Channel", "Local/echo@gateway-test"),
            ("Application", app),
            ("Data", data.as_str()),
        ]);
        assert_eq!(header(&r, "Response"), Some("Success"), "{app}: {r:?}");
    }
    for f in [&sys_direct, &agi] {
        let deadline = Instant::now() + T;
        while !f.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            f.exists(),
            "{} never appeared:\n{}",
            f.display(),
            gw.ast.log()
        );
    }

    // Control: the same Asterisk does run what pbxguard lets through (an allowed Getvar).
    let r = c.action(&[("Action", "Getvar"), ("Variable", "EPOCH")]);
    assert_eq!(header(&r, "Response"), Some("Success"), "{r:?}");
    assert!(
        header(&r, "Value").is_some_and(|v| v.parse::<u64>().is_ok()),
        "{r:?}"
    );
}

#[test]
fn asterisk_restart_ends_sessions_and_logins_recover_at_once() {
    let Some(mut gw) = start(Setup::default()) else {
        return;
    };
    let mut a = gw.dialer();
    let _ = a.action(&[("Action", "Ping")]);
    gw.ast.stop();
    // The client's Asterisk session is gone: the gateway closes it, as Asterisk would have.
    assert!(a.wait_closed(T), "client kept open after Asterisk stopped");
    // Logins while Asterisk is down fail cleanly and quickly.
    let mut c = AmiClient::connect(gw.port);
    let r = c.login("dialer", DIALER_SECRET);
    assert_eq!(header(&r, "Response"), Some("Error"), "{r:?}");
    // Down long enough for a growing backoff to have passed 16 s.
    std::thread::sleep(Duration::from_secs(20));
    gw.ast.restart();
    let up = Instant::now();
    let mut ok = false;
    while up.elapsed() < Duration::from_secs(5) {
        let mut c = AmiClient::connect(gw.port);
        let r = c.login("dialer", DIALER_SECRET);
        if header(&r, "Response") == Some("Success") {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        ok,
        "no login within 5 s of Asterisk's return; log:\n{}",
        gw.daemon.log()
    );
    assert!(up.elapsed() < Duration::from_secs(3), "{:?}", up.elapsed());
}

fn run_client(program: &str, script: &str, args: &[&str]) {
    let dir = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new(program)
        .arg(Path::new(dir).join("tests/clients").join(script))
        .args(args)
        .env("NODE_PATH", format!("{dir}/tests/clients/node_modules"))
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{script} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn real_client_libraries_through_the_gateway() {
    let Some(gw) = start(with_command()) else {
        return;
    };
    let port = gw.port.to_string();
    for auth in ["plain", "md5"] {
        run_client(
            "/usr/bin/python3",
            "ami_panoramisk.py",
            &[&port, "dialer", DIALER_SECRET, auth],
        );
    }
    run_client("node", "ami_node.js", &[&port, "dialer", DIALER_SECRET]);
    run_client(
        "node",
        "ami_ami_client.js",
        &[&port, "dialer", DIALER_SECRET],
    );
}

/// `sales` (where the confined clients may call) and `default` (where they may not); the
/// `NoOp`s show in Asterisk's log whether a call ever reached them (verbose 3 logs every
/// priority it runs).
const CONTEXTS_DIALPLAN: &str = "[sales]\n\
     exten => 100,1,NoOp(sales reached)\n same => n,Answer()\n same => n,Wait(1)\n same => n,Hangup()\n\
     exten => _0088X.,1,NoOp(premium number reached)\n same => n,Hangup()\n\
     [default]\n\
     exten => _X.,1,NoOp(default context reached)\n same => n,Answer()\n same => n,Hangup()\n\
     exten => x,1,NoOp(default context reached)\n same => n,Hangup()\n";

fn with_contexts() -> Setup {
    Setup {
        dialplan_extra: CONTEXTS_DIALPLAN.into(),
        ..Setup::default()
    }
}

#[test]
fn a_client_confined_to_sales_calls_there_and_nowhere_else() {
    let Some(gw) = start(with_contexts()) else {
        return;
    };
    gw.env.add_ami_client(
        "salesbot",
        "salesbot-secret-1",
        &[
            "--allow",
            "Originate",
            "--events",
            "call",
            "--context",
            "sales",
            "--max-call-attempts-per-minute",
            "3",
        ],
    );
    // panoramisk, a real client: Success in sales; refused in default, via Local/x@default, to
    // a denied prefix; the fourth call of the minute refused.
    run_client(
        "/usr/bin/python3",
        "ami_contexts.py",
        &[&gw.port.to_string(), "salesbot", "salesbot-secret-1"],
    );
    assert!(gw.ast.wait_for_log("sales reached", T), "{}", gw.ast.log());
    // The refused ones never reached Asterisk.
    std::thread::sleep(Duration::from_secs(2));
    let log = gw.ast.log();
    assert!(!log.contains("default context reached"), "{log}");
    assert!(!log.contains("premium number reached"), "{log}");
    assert!(!log.contains("0088212345"), "{log}");
    // Each refusal is an audit row under its rule.
    let deadline = Instant::now() + T;
    let rows = loop {
        let rows = gw.env.sql(
            "SELECT action FROM audit_log WHERE actor = 'ami:salesbot' AND action LIKE 'dialing.refused.%' ORDER BY id",
        );
        if rows.lines().count() >= 5 || Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let rows: Vec<&str> = rows.lines().map(str::trim).collect();
    assert_eq!(
        rows,
        [
            "dialing.refused.context",
            "dialing.refused.context",
            "dialing.refused.deny_prefix",
            "dialing.refused.deny_prefix",
            "dialing.refused.max_call_attempts_per_minute"
        ]
    );
}

#[test]
fn an_edit_applies_to_an_open_session_within_seconds() {
    let Some(gw) = start(with_contexts()) else {
        return;
    };
    gw.env.add_ami_client(
        "mover",
        "mover-secret-1",
        &["--allow", "Originate", "--context", "sales"],
    );
    let mut c = gw.login("mover", "mover-secret-1");
    let into_default = [
        ("Action", "Originate"),
        ("Channel", "Local/100@sales"),
        ("Context", "default"),
        ("Exten", "200"),
        ("Priority", "1"),
    ];
    let r = c.action(&into_default);
    assert_eq!(header(&r, "Response"), Some("Error"), "{r:?}");
    assert!(header(&r, "Message").is_some_and(|m| m.contains("(context)")));
    gw.env.ok(
        &["ami", "user", "edit", "mover", "--context", "sales,default"],
        b"",
    );
    let edited = Instant::now();
    let r = loop {
        let r = c.action(&into_default);
        if header(&r, "Response") == Some("Success") || edited.elapsed() > Duration::from_secs(8) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(header(&r, "Response"), Some("Success"), "{r:?}");
    assert!(
        edited.elapsed() < Duration::from_secs(7),
        "{:?}",
        edited.elapsed()
    );
    assert!(!c.is_closed(), "the session was ended instead of updated");
    assert!(
        gw.ast.wait_for_log("default context reached", T),
        "{}",
        gw.ast.log()
    );
    assert_eq!(
        header(&c.action(&[("Action", "Ping")]), "Ping"),
        Some("Pong")
    );
}
