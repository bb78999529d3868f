//! Unit tests of policy.rs: what a client may send.

use super::*;

fn policy(allow: &[&str]) -> ClientPolicy {
    ClientPolicy {
        name: "dialer".into(),
        allow: allow.iter().map(|s| s.to_string()).collect(),
        read: 0,
        permit: vec![],
        overrides: vec![],
        updated_at: 0,
    }
}

fn decide(p: &ClientPolicy, pairs: &[(&str, &str)]) -> Verdict {
    let m = Message::from_pairs(pairs);
    let action = lower(m.action().unwrap_or_default());
    p.decide(&action, &m)
}

fn refused(v: &Verdict) -> Option<Rule> {
    match v {
        Verdict::Refuse(r) => r.rule,
        Verdict::Pass { .. } => panic!("passed"),
    }
}

#[test]
fn default_deny_with_globs() {
    let p = policy(&["originate", "queue*"]);
    assert!(matches!(
        decide(&p, &[("Action", "QueueAdd")]),
        Verdict::Pass { .. }
    ));
    assert!(matches!(
        decide(&p, &[("Action", "Ping")]),
        Verdict::Pass { .. }
    ));
    assert_eq!(refused(&decide(&p, &[("Action", "Hangup")])), None);
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
    for c in [
        "module load chan_x.so",
        "MODULE   unload res_pjsip.so",
        "channel originate Local/1@x application System id",
        "originate Local/1@x application TrySystem id",
    ] {
        assert_eq!(
            refused(&decide(&p, &[("Action", "Command"), ("Command", c)])),
            Some(Rule::Command),
            "{c}"
        );
    }
    assert!(matches!(
        decide(
            &p,
            &[("Action", "Command"), ("Command", "core show channels")]
        ),
        Verdict::Pass { .. }
    ));
    // Quotes as parse_args reads them: a closed pair is part of the word, an unclosed one
    // takes the rest of the line into that word, so Asterisk unloads nothing (the fuzz
    // target's saved `unclosed-quote-module-unload`).
    assert_eq!(
        refused(&decide(
            &p,
            &[("Action", "Command"), ("Command", "module un\"\"load x.so")]
        )),
        Some(Rule::Command)
    );
    assert!(matches!(
        decide(
            &p,
            &[
                ("Action", "Command"),
                ("Command", "module unload\"\"\" x.so")
            ]
        ),
        Verdict::Pass { .. }
    ));
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
    assert_eq!(
        refused(&decide(
            &p,
            &[
                ("Action", "UpdateConfig"),
                ("SrcFilename", "sip.conf"),
                ("DstFilename", "manager.conf")
            ]
        )),
        Some(Rule::Config)
    );
    assert!(matches!(
        decide(&p, &[("Action", "GetConfig"), ("Filename", "queues.conf")]),
        Verdict::Pass { .. }
    ));
    assert_eq!(
        refused(&decide(&p, &[("Action", "ModuleLoad"), ("Module", "x")])),
        Some(Rule::ModuleLoad)
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
    assert_eq!(
        refused(&decide(
            &p,
            &[
                ("Action", "AGI"),
                ("Channel", "PJSIP/1"),
                ("Command", "EXEC Playback x")
            ]
        )),
        Some(Rule::Application)
    );
    assert_eq!(
        refused(&decide(
            &p,
            &[
                ("Action", "Originate"),
                ("Application", "Queue"),
                ("Data", "support,,,,,agi://evil")
            ]
        )),
        Some(Rule::Application)
    );
    assert!(matches!(
        decide(
            &p,
            &[
                ("Action", "Originate"),
                ("Application", "Queue"),
                ("Data", "support")
            ]
        ),
        Verdict::Pass { .. }
    ));
    // Every config write is refused; reads only of files that hold secrets.
    assert_eq!(
        refused(&decide(
            &p,
            &[
                ("Action", "UpdateConfig"),
                ("SrcFilename", "extensions.conf"),
                ("DstFilename", "extensions.conf")
            ]
        )),
        Some(Rule::Config)
    );
    assert_eq!(
        refused(&decide(
            &p,
            &[("Action", "GetConfig"), ("Filename", "pjsip.conf")]
        )),
        Some(Rule::Config)
    );
}

fn command(p: &ClientPolicy, c: &str) -> Verdict {
    decide(p, &[("Action", "Command"), ("Command", c)])
}

#[test]
fn cli_words_are_split_as_main_cli_c_parse_args_does() {
    let w = |s: &[u8]| cli_words(s);
    assert_eq!(
        w(b"  pjsip\tshow   auth 1001 "),
        ["pjsip", "show", "auth", "1001"]
    );
    // Leading C isspace is skipped (vertical tab, form feed, CR, LF too); inside the line
    // only blank and tab separate.
    assert_eq!(w(b"\x0b\x0c\r\n pjsip show"), ["pjsip", "show"]);
    assert_eq!(w(b"pjsip\x0bshow"), ["pjsip\x0bshow"]);
    // Quotes: removed; one opening after a separator starts a word, even an empty one.
    assert_eq!(w(b"p\"jsip\" \"show\" \"\" x"), ["pjsip", "show", "", "x"]);
    assert_eq!(w(b"\"pjsip show\" auth"), ["pjsip show", "auth"]);
    // A backslash takes the next character; alone at the end it makes no word.
    assert_eq!(w(b"pj\\sip sh\\\"ow a\\ b \\"), ["pjsip", "sh\"ow", "a b"]);
    // A NUL ends the line.
    assert_eq!(w(b"pjsip\0 show auth"), ["pjsip"]);
    // AST_MAX_ARGS - 1 words at most; the last one is cut after its first character.
    let long = "a ".repeat(62) + "bcd e";
    let words = w(long.as_bytes());
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
