//! Unit tests of routes.rs: CLI commands, QueueAdd, DialplanExtensionAdd and context
//! variables, through the same verdict the relay asks for ([`super::super::calls::check`]).

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

/// The rule a message is refused by, `None` when it passes.
fn rule(p: &ClientPolicy, pairs: &[(&str, &str)]) -> Option<Rule> {
    let m = Message::from_pairs(pairs);
    let action = super::super::policy::lower(m.action().unwrap_or_default());
    let cfg = DialingConfig::default();
    super::super::calls::check(p, &action, &m, |d| check_named(d, &cfg))
        .err()
        .map(|r| r.rule)
}

fn command(c: &str) -> Vec<(&str, &str)> {
    vec![("Action", "Command"), ("Command", c)]
}

#[test]
fn a_confined_client_may_not_place_or_route_calls_through_the_cli() {
    let sales = policy(&["sales"]);
    for c in [
        "channel originate PJSIP/0088212345@trunk extension x@any",
        "channel originate PJSIP/100 extension 100@sales",
        "  CHANNEL   Originate Local/1@other application Wait 1",
        "channel redirect PJSIP/100-00000001 other,s,1",
        "originate PJSIP/100 extension 100@sales",
        "dialplan add extension 9,1,Dial(PJSIP/${EXTEN}@trunk) into sales",
        "dialplan add include trunk-out into sales",
        "dialplan set global FORWARD_CONTEXT intl",
        "dialplan set global __transfer_context intl",
        "dialplan set chanvar PJSIP/100-00000001 TRANSFER_CONTEXT intl",
        "\"channel\" \"originate\" PJSIP/100 extension 100@sales",
    ] {
        assert_eq!(rule(&sales, &command(c)), Some(Rule::Context), "{c}");
    }
    // Other commands are the allow list's business, not this one's.
    for c in [
        "core show channels",
        "dialplan show sales",
        "dialplan set global AGENT_GROUP 4",
        "channel request hangup PJSIP/100-00000001",
        "channelx originate PJSIP/100",
    ] {
        assert_eq!(rule(&sales, &command(c)), None, "{c}");
    }
}

#[test]
fn cli_originates_have_their_destinations_checked_for_every_client() {
    let legacy = policy(&[]);
    assert_eq!(
        rule(
            &legacy,
            &command("channel originate PJSIP/0088212345@trunk extension x@any")
        ),
        Some(Rule::DenyPrefix)
    );
    assert_eq!(
        rule(
            &legacy,
            &command("channel originate PJSIP/100 extension 0088212345@default")
        ),
        Some(Rule::DenyPrefix)
    );
    assert_eq!(
        rule(
            &legacy,
            &command("channel originate PJSIP/trunk/sip:0088212345@192.0.2.1 application Wait 1")
        ),
        Some(Rule::DenyPrefix)
    );
    assert_eq!(
        rule(
            &legacy,
            &command("channel originate PJSIP/100 extension 100@default")
        ),
        None
    );
}

#[test]
fn dialplan_extension_add_is_refused_to_a_confined_client() {
    let add = [
        ("Action", "DialplanExtensionAdd"),
        ("Context", "sales"),
        ("Extension", "9"),
        ("Priority", "1"),
        ("Application", "Dial"),
        ("ApplicationData", "PJSIP/0088212345@trunk"),
    ];
    assert_eq!(rule(&policy(&["sales"]), &add), Some(Rule::Context));
    assert_eq!(rule(&policy(&[]), &add), None);
}

#[test]
fn queue_members_dial_only_allowed_contexts_and_numbers() {
    let sales = policy(&["sales"]);
    let member = |iface: &'static str| {
        vec![
            ("Action", "QueueAdd"),
            ("Queue", "support"),
            ("Interface", iface),
        ]
    };
    assert_eq!(rule(&sales, &member("Local/100@sales/n")), None);
    assert_eq!(rule(&sales, &member("PJSIP/100")), None);
    assert_eq!(
        rule(&sales, &member("Local/100@other/n")),
        Some(Rule::Context)
    );
    assert_eq!(rule(&sales, &member("Local/100")), Some(Rule::Context));
    for p in [&sales, &policy(&[])] {
        assert_eq!(
            rule(p, &member("PJSIP/0088212345@trunk")),
            Some(Rule::DenyPrefix)
        );
    }
    // The state interface dials nothing.
    let mut m = member("PJSIP/100");
    m.push(("StateInterface", "Local/100@other"));
    assert_eq!(rule(&sales, &m), None);
}

#[test]
fn setvar_may_not_name_another_context() {
    let sales = policy(&["sales"]);
    let set = |name: &'static str, value: &'static str| {
        vec![
            ("Action", "Setvar"),
            ("Channel", "PJSIP/100-00000001"),
            ("Variable", name),
            ("Value", value),
        ]
    };
    for name in [
        "FORWARD_CONTEXT",
        "_FORWARD_CONTEXT",
        "__FORWARD_CONTEXT",
        "transfer_context",
        "__TRANSFER_CONTEXT",
    ] {
        assert_eq!(
            rule(&sales, &set(name, "intl")),
            Some(Rule::Context),
            "{name}"
        );
        assert_eq!(rule(&sales, &set(name, "sales")), None, "{name}");
    }
    assert_eq!(
        rule(&sales, &set("GOTO_ON_BLINDXFR", "intl^s^1")),
        Some(Rule::Context)
    );
    assert_eq!(
        rule(&sales, &set("GOTO_ON_BLINDXFR", "s,1")),
        Some(Rule::Context)
    );
    assert_eq!(rule(&sales, &set("GOTO_ON_BLINDXFR", "sales,s,1")), None);
    // A global (no Channel) too.
    assert_eq!(
        rule(
            &sales,
            &[
                ("Action", "Setvar"),
                ("Variable", "FORWARD_CONTEXT"),
                ("Value", "intl")
            ]
        ),
        Some(Rule::Context)
    );
    assert_eq!(rule(&sales, &set("AGENT", "intl")), None);
    assert_eq!(rule(&policy(&[]), &set("FORWARD_CONTEXT", "intl")), None);
}

#[test]
fn originate_variables_may_not_name_another_context() {
    let sales = policy(&["sales"]);
    let with = |v: &'static str| {
        vec![
            ("Action", "Originate"),
            ("Channel", "PJSIP/100"),
            ("Context", "sales"),
            ("Exten", "100"),
            ("Priority", "1"),
            ("Variable", "A=1"),
            ("Variable", v),
        ]
    };
    for v in [
        "FORWARD_CONTEXT=intl",
        "__FORWARD_CONTEXT=intl",
        "B=2,_TRANSFER_CONTEXT=intl",
        "\"FORWARD_CONTEXT=intl\"",
        "FORWARD\\_CONTEXT=intl",
        "  FORWARD_CONTEXT=intl",
        "GOTO_ON_BLINDXFR=intl,s,1",
    ] {
        assert_eq!(rule(&sales, &with(v)), Some(Rule::Context), "{v}");
    }
    for v in [
        "FORWARD_CONTEXT=sales",
        // One item: the comma is inside the parentheses, as Asterisk splits it.
        "X=(a,FORWARD_CONTEXT=intl)",
        "FORWARD_CONTEXT=",
    ] {
        assert_eq!(rule(&sales, &with(v)), None, "{v}");
    }
    assert_eq!(rule(&policy(&[]), &with("FORWARD_CONTEXT=intl")), None);
}

#[test]
fn variable_items_are_split_as_asterisk_splits_them() {
    let items = |v: &str| -> Vec<String> {
        variable_items(v.as_bytes())
            .iter()
            .map(|i| String::from_utf8_lossy(i).into_owned())
            .collect()
    };
    assert_eq!(items("  a=1,b=2"), ["a=1", "b=2"]);
    assert_eq!(items("a=\"x,y\",b=\\,"), ["a=x,y", "b=,"]);
    assert_eq!(items("a=f(1,2),b=[3,4]"), ["a=f(1,2)", "b=[3,4]"]);
    assert_eq!(items("a=1,"), ["a=1", ""]);
    assert_eq!(items(""), Vec::<String>::new());
    // The 64th item takes the rest, unsplit.
    let many: Vec<String> = (0..70).map(|n| format!("v{n}=1")).collect();
    let got = items(&many.join(","));
    assert_eq!(got.len(), 64);
    assert_eq!(got[63], many[63..].join(","));
}
