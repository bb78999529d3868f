//! Unit tests of policy.rs: what a client may send.

use super::*;

fn policy(allow: &[&str]) -> ClientPolicy {
    ClientPolicy {
        name: "dialer".into(),
        allow: allow.iter().map(|s| s.to_string()).collect(),
        read: 0,
        permit: vec![],
        overrides: vec![],
        contexts: vec![],
        max_concurrent_calls: None,
        max_call_attempts_per_minute: None,
        updated_at: 0,
    }
}

fn decide(p: &ClientPolicy, pairs: &[(&str, &str)]) -> Verdict {
    let m = Message::from_pairs(pairs);
    let action = lower(m.action().unwrap_or_default());
    p.decide(&action, &m, std::path::Path::new(ROOT))
}

/// `[recordings] root` in these tests.
const ROOT: &str = "/var/spool/asterisk/monitor";

fn refused(v: &Verdict) -> Option<Rule> {
    match v {
        Verdict::Refuse(r) => r.rule,
        Verdict::Pass { .. } => panic!("passed"),
    }
}

/// What one request should get.
#[derive(Debug, Clone, Copy)]
enum Want {
    Pass,
    /// Refused by this rule; `None`: by default deny (not on the allow list).
    Refused(Option<Rule>),
}

/// Checks that `p` gives the message made of `pairs` what `want` says.
fn expect(p: &ClientPolicy, pairs: &[(&str, &str)], want: Want) {
    let verdict = decide(p, pairs);
    match want {
        Want::Pass => assert!(
            matches!(verdict, Verdict::Pass { .. }),
            "{pairs:?}: {verdict:?}"
        ),
        Want::Refused(rule) => assert_eq!(refused(&verdict), rule, "{pairs:?}"),
    }
}

/// [`expect`] for each `(message, want)` row.
fn expect_all(p: &ClientPolicy, rows: &[(&[(&str, &str)], Want)]) {
    for (pairs, want) in rows {
        expect(p, pairs, *want);
    }
}

#[test]
fn default_deny_with_globs() {
    let p = policy(&["originate", "queue*"]);
    expect_all(
        &p,
        &[
            (&[("Action", "QueueAdd")], Want::Pass),
            (&[("Action", "Ping")], Want::Pass),
            (&[("Action", "Hangup")], Want::Refused(None)),
        ],
    );
}

#[test]
fn originate_into_programs_is_refused_in_any_spelling() {
    let p = policy(&["*"]);
    for app in [
        "System",
        "TRYSYSTEM",
        " exec",
        "ExecIf",
        "agi",
        "EAGI",
        "ExternalIVR",
        "MixMonitor",
        "Originate",
        "Reload",
        "DBdeltree",
        "system\t",
    ] {
        let v = decide(
            &p,
            &[
                ("Action", "Originate"),
                ("Channel", "Local/1@x"),
                ("Application", app),
            ],
        );
        assert_eq!(refused(&v), Some(Rule::Application), "{app}");
    }
    let ok = decide(
        &p,
        &[
            ("Action", "Originate"),
            ("Application", "Playback"),
            ("Data", "demo-congrats"),
        ],
    );
    assert!(matches!(ok, Verdict::Pass { .. }));
}

#[test]
fn dangerous_functions_anywhere() {
    let p = policy(&["*"]);
    for (h, v) in [
        ("Data", "${SHELL(id)}"),
        ("Data", "${shell (id)}"),
        // C's isspace includes the vertical tab (found by the ami_client fuzz target).
        ("Data", "${FILE\t\x0b(/etc/passwd)}"),
        ("Variable", "x=${EVAL(${y})}"),
        ("Variable", "FILE(/etc/passwd)=x"),
        ("Value", "${CURL(http://a)}"),
        ("Data", "${ODBC_READ(1)}"),
        ("Data", "${REALTIME(sippeers,name,1)}"),
        ("Data", "${DB(a/b)}"),
        ("Data", "${DB_DELETE(a/b)}"),
        ("Data", "${${X}ELL(id)}"),
        ("Data", "$[${SHELL(id)}]"),
    ] {
        let verdict = decide(
            &p,
            &[("Action", "Originate"), ("Application", "NoOp"), (h, v)],
        );
        assert_eq!(refused(&verdict), Some(Rule::Function), "{h}: {v}");
    }
    // Every Variable header is read, as Asterisk collects them all.
    let v = decide(
        &p,
        &[
            ("Action", "Originate"),
            ("Variable", "a=1"),
            ("Variable", "b=${SHELL(id)}"),
        ],
    );
    assert_eq!(refused(&v), Some(Rule::Function));
    let ok = decide(
        &p,
        &[
            ("Action", "Setvar"),
            ("Variable", "DBX"),
            ("Value", "${CALLERID(num)}"),
        ],
    );
    assert!(matches!(ok, Verdict::Pass { .. }));
}

#[test]
fn commands_and_config_files() {
    let p = policy(&["*"]);
    for (c, want) in [
        ("module load chan_x.so", Want::Refused(Some(Rule::Command))),
        (
            "MODULE   unload res_pjsip.so",
            Want::Refused(Some(Rule::Command)),
        ),
        (
            "channel originate Local/1@x application System id",
            Want::Refused(Some(Rule::Command)),
        ),
        (
            "originate Local/1@x application TrySystem id",
            Want::Refused(Some(Rule::Command)),
        ),
        ("core show channels", Want::Pass),
        // Quotes as parse_args reads them: a closed pair is part of the word, an unclosed one
        // takes the rest of the line into that word, so Asterisk unloads nothing (the fuzz
        // target's saved `unclosed-quote-module-unload`).
        ("module un\"\"load x.so", Want::Refused(Some(Rule::Command))),
        ("module unload\"\"\" x.so", Want::Pass),
    ] {
        expect(&p, &[("Action", "Command"), ("Command", c)], want);
    }
    for f in [
        "manager.conf",
        "Manager.conf",
        "../../etc/passwd",
        "/etc/asterisk/sip.conf",
        "a\\b",
        "manager_custom.conf",
    ] {
        for a in [
            "GetConfig",
            "getconfigjson",
            "UpdateConfig",
            "CreateConfig",
            "ListCategories",
        ] {
            assert_eq!(
                refused(&decide(&p, &[("Action", a), ("Filename", f)])),
                Some(Rule::Config),
                "{a} {f}"
            );
        }
    }
    expect_all(
        &p,
        &[
            (
                &[
                    ("Action", "UpdateConfig"),
                    ("SrcFilename", "sip.conf"),
                    ("DstFilename", "manager.conf"),
                ],
                Want::Refused(Some(Rule::Config)),
            ),
            (
                &[("Action", "GetConfig"), ("Filename", "queues.conf")],
                Want::Pass,
            ),
            (
                &[("Action", "ModuleLoad"), ("Module", "x")],
                Want::Refused(Some(Rule::ModuleLoad)),
            ),
        ],
    );
}

#[test]
fn escapes_quotes_and_cli_quoting_do_not_hide_anything() {
    let p = policy(&["*"]);
    for (h, v) in [
        ("Variable", "FI\\LE(/etc/asterisk/extensions.conf,,,al)=x"),
        ("Variable", "\"FILE\"(/tmp/pwned,,,a)=x"),
        ("Data", "FI\\LE(/tmp/pwned,,,a)=x"),
        ("Variable", "SH\\ELL(id)"),
        ("Variable", "AST_CONFIG(manager.conf,pbxguard,secret)"),
        ("Variable", "AST_SORCERY(res_pjsip,auth,1001,password)"),
        ("Variable", "ENV(LD_PRELOAD)=/tmp/x.so"),
        ("Variable", "MONITOR_EXEC=/tmp/x"),
    ] {
        let v = decide(
            &p,
            &[("Action", "Originate"), ("Application", "MSet"), (h, v)],
        );
        assert_eq!(refused(&v), Some(Rule::Function), "{h}: {v:?}");
    }
    for c in [
        "module \"load\" /tmp/evil.so",
        "mod\\ule load x.so",
        "\"channel\" originate Local/s@default application System id",
        "dialplan add extension 666,1,Sys\"tem\",id into default",
    ] {
        assert_eq!(
            refused(&decide(&p, &[("Action", "Command"), ("Command", c)])),
            Some(Rule::Command),
            "{c}"
        );
    }
    // A harmless CLI originate is not caught by the word "originate" itself.
    let ok = decide(
        &p,
        &[
            ("Action", "Command"),
            (
                "Command",
                "channel originate Local/100@default extension 200@default",
            ),
        ],
    );
    assert!(matches!(ok, Verdict::Pass { .. }), "{ok:?}");
    expect_all(
        &p,
        &[
            (
                &[
                    ("Action", "AGI"),
                    ("Channel", "PJSIP/1"),
                    ("Command", "EXEC Playback x"),
                ],
                Want::Refused(Some(Rule::Application)),
            ),
            (
                &[
                    ("Action", "Originate"),
                    ("Application", "Queue"),
                    ("Data", "support,,,,,agi://evil"),
                ],
                Want::Refused(Some(Rule::Application)),
            ),
            (
                &[
                    ("Action", "Originate"),
                    ("Application", "Queue"),
                    ("Data", "support"),
                ],
                Want::Pass,
            ),
            // Every config write is refused; reads only of files that hold secrets.
            (
                &[
                    ("Action", "UpdateConfig"),
                    ("SrcFilename", "extensions.conf"),
                    ("DstFilename", "extensions.conf"),
                ],
                Want::Refused(Some(Rule::Config)),
            ),
            (
                &[("Action", "GetConfig"), ("Filename", "pjsip.conf")],
                Want::Refused(Some(Rule::Config)),
            ),
        ],
    );
}

fn command(p: &ClientPolicy, c: &str) -> Verdict {
    decide(p, &[("Action", "Command"), ("Command", c)])
}

#[test]
fn cli_words_are_split_as_main_cli_c_parse_args_does() {
    for (line, words) in [
        (
            &b"  pjsip\tshow   auth 1001 "[..],
            &["pjsip", "show", "auth", "1001"][..],
        ),
        // Leading C isspace is skipped (vertical tab, form feed, CR, LF too); inside the line
        // only blank and tab separate.
        (b"\x0b\x0c\r\n pjsip show", &["pjsip", "show"]),
        (b"pjsip\x0bshow", &["pjsip\x0bshow"]),
        // Quotes: removed; one opening after a separator starts a word, even an empty one.
        (b"p\"jsip\" \"show\" \"\" x", &["pjsip", "show", "", "x"]),
        (b"\"pjsip show\" auth", &["pjsip show", "auth"]),
        // A backslash takes the next character; alone at the end it makes no word.
        (b"pj\\sip sh\\\"ow a\\ b \\", &["pjsip", "sh\"ow", "a b"]),
        // A NUL ends the line.
        (b"pjsip\0 show auth", &["pjsip"]),
    ] {
        assert_eq!(
            cli_words(line),
            words,
            "{:?}",
            String::from_utf8_lossy(line)
        );
    }
    // AST_MAX_ARGS - 1 words at most; the last one is cut after its first character.
    let long = "a ".repeat(62) + "bcd e";
    let words = cli_words(long.as_bytes());
    assert_eq!(words.len(), 63);
    assert_eq!(words[62], "b");
}

#[test]
fn cli_commands_that_print_secrets_are_refused_in_any_spelling() {
    let p = policy(&["command"]);
    for c in [
        "pjsip show auth 1001",
        "PJSIP SHOW AUTH 1001",
        "  pjsip\tshow  auth  1001",
        "\x0bpjsip show auth 1001",
        "\"pjsip\" \"show\" auth 1001",
        "pj\\sip show a\"ut\"h 1001",
        "pjsip show auth",
        "pjsip show transport transport-tls",
        "core show config mappings",
        "Core Show Config Mappings",
        "realtime load ps_auths id 1001",
        "realtime update ps_auths id 1001 password x",
        "realtime update2 ps_auths id 1001 password x",
        "realtime store ps_contacts id x uri sip:evil@192.0.2.1",
        "realtime destroy ps_auths id 1001",
        "database show",
        "database show registrar",
        "database showkey x",
        "database get family key",
        "database query \"select * from astdb\"",
        "iax2 show users",
        "iax2 show users like trunk",
        "iax2 show provisioning default",
        "confbridge show profile user default_user",
        "pjsip show history entry 3",
        "pjsip set history on",
    ] {
        assert_eq!(refused(&command(&p, c)), Some(Rule::Secrets), "{c:?}");
    }
    // Not secrets: listings of names, and words that only look alike (the CLI has no
    // abbreviations, so `pjsip show auths` is another command; a quoted line is one word,
    // which Asterisk does not run either).
    for c in [
        "pjsip show auths",
        "pjsip list auths",
        "pjsip show endpoint 1001",
        "pjsip show endpoints",
        "pjsip show transports",
        "pjsip show authx 1001",
        "pjsip show",
        "core show config",
        "core show channels",
        "manager show user pbxguard",
        "database put a b c",
        "iax2 show peers",
        "confbridge show profile users",
        "\"pjsip show auth 1001\"",
        "pjsip \"\" show auth 1001",
        "pjsip\x0bshow auth 1001",
    ] {
        assert!(
            matches!(command(&p, c), Verdict::Pass { .. }),
            "{c:?} was refused"
        );
    }
    // The message names the command, never echoes arguments.
    match command(&p, "pjsip show auth 1001") {
        Verdict::Refuse(r) => {
            assert!(r.message.contains("`pjsip show auth`"), "{}", r.message);
            assert!(!r.message.contains("1001"), "{}", r.message);
        }
        v => panic!("{v:?}"),
    }
    // Its own rule: lifting `command` (module loading) does not lift it.
    let mut lifted = policy(&["command"]);
    lifted.overrides = vec![Rule::Command];
    assert_eq!(
        refused(&command(&lifted, "pjsip show auth 1001")),
        Some(Rule::Secrets)
    );
    lifted.overrides = vec![Rule::Secrets];
    assert_eq!(
        command(&lifted, "pjsip show auth 1001"),
        Verdict::Pass {
            overrides: vec![Rule::Secrets]
        }
    );
    assert_eq!(Rule::parse("secrets"), Some(Rule::Secrets));
}

#[test]
fn overrides_lift_only_their_rule() {
    let mut p = policy(&["*"]);
    p.overrides = vec![Rule::Application];
    let v = decide(
        &p,
        &[
            ("Action", "Originate"),
            ("Application", "AGI"),
            ("Data", "agi://x"),
        ],
    );
    assert_eq!(
        v,
        Verdict::Pass {
            overrides: vec![Rule::Application]
        }
    );
    let v = decide(
        &p,
        &[
            ("Action", "Originate"),
            ("Application", "AGI"),
            ("Data", "${SHELL(x)}"),
        ],
    );
    assert_eq!(refused(&v), Some(Rule::Function));
}

#[test]
fn mixmonitor_writes_only_under_the_recordings_folder_and_runs_nothing() {
    let p = policy(&["mixmonitor"]);
    let mm = |extra: &[(&str, &str)]| {
        let mut pairs = vec![("Action", "MixMonitor"), ("Channel", "PJSIP/1001-0001")];
        pairs.extend_from_slice(extra);
        decide(&p, &pairs)
    };
    for bad in [
        vec![("File", "/etc/asterisk/manager.conf")],
        vec![("File", "/var/spool/asterisk/monitor/../../../etc/cron.d/x")],
        vec![("File", "/var/spool/asterisk/monitorx/a.wav")],
        vec![("File", "calls/../../x.wav")],
        vec![("File", "a.wav"), ("Command", "rm -rf /")],
        vec![("File", "a.wav"), ("command", "  /usr/bin/id ")],
        vec![("File", "a.wav"), ("Options", "br(/etc/cron.d/x)")],
        vec![("File", "a.wav"), ("Options", "bT(../x.wav)")],
        vec![("File", "a.wav"), ("Options", "v(1)t(/tmp/x.wav)")],
    ] {
        let v = mm(&bad);
        assert!(
            matches!(&v, Verdict::Refuse(r) if r.rule == Some(Rule::MixMonitor)),
            "{bad:?}: {v:?}"
        );
    }
    for good in [
        vec![("File", "call-1001.wav")],
        vec![("File", "2026/12/08/call.wav"), ("Options", "bv(2)W(1)")],
        vec![("File", "/var/spool/asterisk/monitor/2026/call.wav")],
        vec![("File", "a.wav"), ("Options", "r(in.wav)t(out.wav)")],
        vec![("File", "a.wav"), ("Command", "")],
    ] {
        assert!(matches!(mm(&good), Verdict::Pass { .. }), "{good:?}");
    }
    // The rule is about the MixMonitor action only, and an override lifts it.
    let mut lifted = policy(&["mixmonitor"]);
    lifted.overrides = vec![Rule::MixMonitor];
    let m = Message::from_pairs(&[("Action", "MixMonitor"), ("File", "/tmp/x.wav")]);
    assert_eq!(
        lifted.decide("mixmonitor", &m, std::path::Path::new(ROOT)),
        Verdict::Pass {
            overrides: vec![Rule::MixMonitor]
        }
    );
    assert_eq!(Rule::parse("mixmonitor"), Some(Rule::MixMonitor));
}
