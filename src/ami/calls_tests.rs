//! Unit tests of calls.rs: contexts and destinations of the call actions.

use super::*;
use crate::dialing::destination::check_named;
use crate::dialing::DialingConfig;

fn policy(contexts: &[&str]) -> ClientPolicy {
    ClientPolicy {
        name: "dialer".into(),
        allow: vec!["*".into()],
        read: 0,
        permit: vec![],
        overrides: vec![],
        contexts: contexts.iter().map(|s| s.to_string()).collect(),
        max_concurrent_calls: None,
        max_call_attempts_per_minute: None,
        updated_at: 0,
    }
}

fn run(p: &ClientPolicy, pairs: &[(&str, &str)]) -> Result<Option<Originate>, CallRefusal> {
    let m = Message::from_pairs(pairs);
    let action = super::super::policy::lower(m.action().unwrap_or_default());
    let cfg = DialingConfig::default();
    check(p, &action, &m, |d| check_named(d, &cfg))
}

/// The rule a message is refused by, `None` when it passes.
fn rule(p: &ClientPolicy, pairs: &[(&str, &str)]) -> Option<Rule> {
    run(p, pairs).err().map(|r| r.rule)
}

fn originate(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut m = vec![("Action", "Originate"), ("Channel", "PJSIP/1001")];
    m.extend_from_slice(extra);
    m
}

const INTO_SALES: &[(&str, &str)] = &[("Context", "sales"), ("Exten", "100"), ("Priority", "1")];

#[test]
fn originate_into_an_allowed_context_passes() {
    let p = policy(&["sales", "out-*"]);
    assert_eq!(rule(&p, &originate(INTO_SALES)), None);
    assert_eq!(
        rule(
            &p,
            &originate(&[("Context", "out-intl"), ("Exten", "s"), ("Priority", "1")])
        ),
        None
    );
    // Case matters, as in Asterisk: `Sales` is another context.
    assert_eq!(
        rule(
            &p,
            &originate(&[("Context", "Sales"), ("Exten", "100"), ("Priority", "1")])
        ),
        Some(Rule::Context)
    );
}

#[test]
fn originate_into_another_context_is_refused() {
    let p = policy(&["sales"]);
    let r = run(
        &p,
        &originate(&[("Context", "default"), ("Exten", "100"), ("Priority", "1")]),
    )
    .unwrap_err();
    assert_eq!(r.rule, Rule::Context);
    assert_eq!(r.what, "Context: default");
    assert!(r.message().contains("(context)"), "{}", r.message());
    assert!(r.message().contains(Rule::Context.explain()));
    // Only the first Context counts for Asterisk, so only the first is judged.
    let dup = [
        ("Action", "Originate"),
        ("Channel", "PJSIP/1001"),
        ("Context", "default"),
        ("Context", "sales"),
        ("Exten", "1"),
    ];
    assert_eq!(rule(&p, &dup), Some(Rule::Context));
    let dup = [
        ("Action", "Originate"),
        ("Channel", "PJSIP/1001"),
        ("Context", "sales"),
        ("Context", "default"),
        ("Exten", "1"),
    ];
    assert_eq!(rule(&p, &dup), None);
    // Leading blanks are skipped as Asterisk skips them; trailing ones are part of the name.
    assert_eq!(
        rule(&p, &originate(&[("Context", "   sales"), ("Exten", "1")])),
        None
    );
    assert_eq!(
        rule(&p, &originate(&[("Context", "sales "), ("Exten", "1")])),
        Some(Rule::Context)
    );
}

#[test]
fn originate_without_context_or_into_an_application_is_refused_when_confined() {
    let p = policy(&["*"]);
    // No Context: the channel's own context would run.
    let r = run(&p, &originate(&[("Exten", "100"), ("Priority", "1")])).unwrap_err();
    assert_eq!((r.rule, r.what.as_str()), (Rule::Context, "no Context"));
    assert!(r.message().contains("Context"));
    assert_eq!(
        rule(&p, &originate(&[("Context", ""), ("Exten", "1")])),
        Some(Rule::Context)
    );
    // An application bypasses the dialplan, whatever it is.
    for app in ["Dial", "Playback", "Queue", "Gosub"] {
        let r = run(
            &p,
            &originate(&[("Application", app), ("Data", "x"), ("Context", "sales")]),
        )
        .unwrap_err();
        assert_eq!(r.rule, Rule::Context, "{app}");
        assert!(r.message().contains("Application"), "{}", r.message());
    }
    // Not confined: both pass (only destinations are checked).
    let legacy = policy(&[]);
    assert_eq!(rule(&legacy, &originate(&[("Exten", "100")])), None);
    assert_eq!(
        rule(
            &legacy,
            &originate(&[("Application", "Playback"), ("Data", "demo")])
        ),
        None
    );
}

#[test]
fn local_channels_name_contexts_too() {
    let p = policy(&["sales"]);
    let with = |channel: &'static str| {
        let mut m = vec![("Action", "Originate"), ("Channel", channel)];
        m.extend_from_slice(INTO_SALES);
        m
    };
    assert_eq!(rule(&p, &with("Local/100@sales")), None);
    assert_eq!(rule(&p, &with("Local/100@sales/n")), None);
    assert_eq!(rule(&p, &with("Local/x@default")), Some(Rule::Context));
    assert_eq!(rule(&p, &with("LOCAL/x@default/n")), Some(Rule::Context));
    // No context: `default`.
    assert_eq!(rule(&p, &with("Local/100")), Some(Rule::Context));
    assert_eq!(rule(&p, &with("Local/100@")), Some(Rule::Context));
    // Options are after the LAST slash (core_local.c): the context is `default/x`.
    assert_eq!(rule(&p, &with("Local/1@default/x/n")), Some(Rule::Context));
    // Every `&` part, and the whole string as Originate hands it over.
    assert_eq!(
        rule(&p, &with("Local/1@sales&Local/2@default")),
        Some(Rule::Context)
    );
    assert_eq!(
        rule(&p, &with("PJSIP/1001&Local/2@default")),
        Some(Rule::Context)
    );
    // Longer than Asterisk keeps: refused even when a glob would match it.
    let glob = policy(&["sales*"]);
    let long = format!("Local/1@sales{}", "x".repeat(80));
    let long: &'static str = Box::leak(long.into_boxed_str());
    let mut m = vec![("Action", "Originate"), ("Channel", long)];
    m.extend_from_slice(INTO_SALES);
    assert_eq!(rule(&glob, &m), Some(Rule::Context));
}

#[test]
fn predial_gosub_must_name_an_allowed_context() {
    let p = policy(&["sales"]);
    let with = |gosub: &'static str| {
        let mut m = originate(INTO_SALES);
        m.push(("PreDialGoSub", gosub));
        m
    };
    assert_eq!(rule(&p, &with("sales,s,1")), None);
    assert_eq!(rule(&p, &with("sales,s,1(arg,more)")), None);
    assert_eq!(rule(&p, &with("default,s,1")), Some(Rule::Context));
    // Without a context Gosub runs in the channel's own one.
    assert_eq!(rule(&p, &with("s,1")), Some(Rule::Context));
    assert_eq!(rule(&p, &with(",s,1")), Some(Rule::Context));
    assert_eq!(rule(&policy(&[]), &with("default,s,1")), None);
}

#[test]
fn redirect_checks_both_contexts_and_local_channel_names() {
    let p = policy(&["sales", "queue-*"]);
    let redirect = |extra: &[(&'static str, &'static str)]| {
        let mut m = vec![
            ("Action", "Redirect"),
            ("Channel", "PJSIP/1001-00000001"),
            ("Exten", "200"),
            ("Priority", "1"),
        ];
        m.extend_from_slice(extra);
        m
    };
    assert_eq!(rule(&p, &redirect(&[("Context", "sales")])), None);
    assert_eq!(
        rule(&p, &redirect(&[("Context", "default")])),
        Some(Rule::Context)
    );
    assert_eq!(
        rule(
            &p,
            &redirect(&[
                ("Context", "sales"),
                ("ExtraChannel", "PJSIP/1002-00000002"),
                ("ExtraContext", "queue-a"),
                ("ExtraExten", "1"),
            ])
        ),
        None
    );
    assert_eq!(
        rule(
            &p,
            &redirect(&[
                ("Context", "sales"),
                ("ExtraChannel", "PJSIP/1002-00000002"),
                ("ExtraContext", "from-trunk"),
                ("ExtraExten", "1"),
            ])
        ),
        Some(Rule::Context)
    );
    // An existing Local channel's name says where it was created.
    let local = |name: &'static str| {
        vec![
            ("Action", "Redirect"),
            ("Channel", name),
            ("Context", "sales"),
            ("Exten", "200"),
            ("Priority", "1"),
        ]
    };
    assert_eq!(rule(&p, &local("Local/100@sales-0000002a;1")), None);
    assert_eq!(
        rule(&p, &local("Local/100@default-0000002a;2")),
        Some(Rule::Context)
    );
    assert_eq!(local_channel_context("100@queue-a-0000002a;1"), "queue-a");
    assert_eq!(local_channel_context("100@queue-a"), "queue-a");
}

#[test]
fn transfers_need_an_allowed_context() {
    let p = policy(&["sales"]);
    for action in ["BlindTransfer", "Atxfer"] {
        let t = |ctx: Option<&'static str>| {
            let mut m = vec![
                ("Action", action),
                ("Channel", "PJSIP/1001-00000001"),
                ("Exten", "200"),
            ];
            if let Some(c) = ctx {
                m.push(("Context", c));
            }
            rule(&p, &m)
        };
        assert_eq!(t(Some("sales")), None, "{action}");
        assert_eq!(t(Some("default")), Some(Rule::Context), "{action}");
        // Without Context Asterisk uses the channel's own context.
        assert_eq!(t(None), Some(Rule::Context), "{action}");
    }
}

#[test]
fn destinations_are_checked_for_every_client() {
    for p in [policy(&[]), policy(&["*"])] {
        // Exten in a denied range, or with injection characters.
        assert_eq!(
            rule(
                &p,
                &originate(&[
                    ("Context", "out"),
                    ("Exten", "0088212345"),
                    ("Priority", "1")
                ])
            ),
            Some(Rule::DenyPrefix)
        );
        assert_eq!(
            rule(
                &p,
                &originate(&[
                    ("Context", "out"),
                    ("Exten", "1001&PJSIP/x"),
                    ("Priority", "1")
                ])
            ),
            Some(Rule::DialCharacters)
        );
        // The number inside Channel, in every form.
        for channel in [
            "PJSIP/0088212345@trunk",
            "PJSIP/trunk/sip:+88212345@203.0.113.9",
            "SIP/trunk/0088212345",
            "Local/0088212345@out",
            "PJSIP/1001&PJSIP/trunk/0088212345",
        ] {
            let mut m = vec![("Action", "Originate"), ("Channel", channel)];
            m.extend_from_slice(&[("Context", "out"), ("Exten", "s"), ("Priority", "1")]);
            let r = run(&p, &m).unwrap_err();
            assert_eq!(r.rule, Rule::DenyPrefix, "{channel}");
            assert!(r.what.contains("88212345"), "{channel}: {}", r.what);
        }
        let r = run(
            &p,
            &[
                ("Action", "Redirect"),
                ("Channel", "PJSIP/1-1"),
                ("Context", "out"),
                ("Exten", "1"),
                ("ExtraChannel", "PJSIP/2-2"),
                ("ExtraContext", "out"),
                ("ExtraExten", "+8816123456"),
                ("Priority", "1"),
            ],
        )
        .unwrap_err();
        assert_eq!(r.rule, Rule::DenyPrefix);
        for action in ["BlindTransfer", "Atxfer"] {
            let m = [
                ("Action", action),
                ("Channel", "PJSIP/1-1"),
                ("Context", "out"),
                ("Exten", "1,2"),
            ];
            assert_eq!(rule(&p, &m), Some(Rule::DialCharacters), "{action}");
        }
    }
    // Names are destinations too: an endpoint, `s`.
    let legacy = policy(&[]);
    assert_eq!(
        rule(
            &legacy,
            &[
                ("Action", "Originate"),
                ("Channel", "PJSIP/alice"),
                ("Exten", "s")
            ]
        ),
        None
    );
    // An Originate into Dial dials Data's channels (quotes removed as Asterisk removes them).
    for data in ["PJSIP/0088212345@trunk,30", "\"PJSIP/0088212345@trunk\",30"] {
        assert_eq!(
            rule(
                &legacy,
                &originate(&[("Application", "Dial"), ("Data", data)])
            ),
            Some(Rule::DenyPrefix),
            "{data}"
        );
    }
    // Other actions are not looked at.
    assert_eq!(
        rule(
            &legacy,
            &[("Action", "Hangup"), ("Channel", "PJSIP/00882123-1")]
        ),
        None
    );
}

#[test]
fn an_originate_says_how_its_final_answer_comes() {
    let p = policy(&["sales"]);
    let timing = |extra: &[(&'static str, &'static str)]| {
        let mut m = originate(INTO_SALES);
        m.extend_from_slice(extra);
        run(&p, &m).unwrap().unwrap()
    };
    assert_eq!(
        timing(&[]),
        Originate {
            asynchronous: false,
            timeout: Some(Duration::from_secs(30))
        }
    );
    assert!(timing(&[("Async", "true")]).asynchronous);
    assert!(timing(&[("Async", "YES")]).asynchronous);
    assert!(timing(&[("Async", "1")]).asynchronous);
    // ast_true compares the whole value: a trailing blank makes it false.
    assert!(!timing(&[("Async", "true ")]).asynchronous);
    assert!(!timing(&[("Async", "no")]).asynchronous);
    assert_eq!(
        timing(&[("Timeout", "5000")]).timeout,
        Some(Duration::from_secs(5))
    );
    assert_eq!(
        timing(&[("Timeout", " 2500ms")]).timeout,
        Some(Duration::from_millis(2500))
    );
    // Zero or negative: Asterisk lets it ring without limit.
    assert_eq!(timing(&[("Timeout", "0")]).timeout, None);
    assert_eq!(timing(&[("Timeout", "-1")]).timeout, None);
    assert_eq!(
        timing(&[("Timeout", "x")]).timeout,
        Some(Duration::from_secs(30))
    );
    // Other call actions are not Originates.
    let m = [
        ("Action", "BlindTransfer"),
        ("Channel", "PJSIP/1-1"),
        ("Context", "sales"),
        ("Exten", "1"),
    ];
    assert_eq!(run(&p, &m), Ok(None));
}

#[test]
fn call_actions_an_allow_list_admits() {
    let list =
        |a: &[&str]| call_actions_allowed(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(list(&["Ping", "Queue*"]), Vec::<&str>::new());
    assert_eq!(list(&["originate"]), ["Originate"]);
    assert_eq!(list(&["Orig*"]), ["Originate"]);
    assert_eq!(
        list(&["*"]),
        ["Originate", "Redirect", "BlindTransfer", "Atxfer"]
    );
    assert_eq!(list(&["*Transfer", "Atx*"]), ["BlindTransfer", "Atxfer"]);
}

#[test]
fn page_has_its_channels_checked_like_dial() {
    let legacy = policy(&[]);
    for data in [
        "PJSIP/100&PJSIP/0088212345@trunk",
        "PJSIP/100&PJSIP/0088212345@trunk,d",
        "\"PJSIP/0088212345@trunk\",i",
    ] {
        assert_eq!(
            rule(
                &legacy,
                &originate(&[("Application", "Page"), ("Data", data)])
            ),
            Some(Rule::DenyPrefix),
            "{data}"
        );
    }
    assert_eq!(
        rule(
            &legacy,
            &originate(&[("Application", "Page"), ("Data", "PJSIP/100&PJSIP/101,d")])
        ),
        None
    );
}
