//! `check-config` and the CLI's exit codes, with the real binary.

mod common;
use common::*;

#[test]
fn check_config_reports_every_mistake_and_exits_64() {
    let env = Env::new();
    env.write_config(
        r#"
[daemon]
state_dir = "/nonexistent/state"
shutdown_grace = "a while"
[vault]
key_file = "/nonexistent/master.key"
[http]
listen = "0.0.0.0:8443"
tls_cert = "/nonexistent/cert.pem"
redirect_listen = "localhost"
trusted_proxies = ["127.0.0.1/33"]
[auth]
session_idle_timeout = "8 hours please"
lockout_window = "-5m"
[auth.routes]
"monitoring" = "supervisor"
[smtp]
starttls = "sometimes"
portt = 25
[ami]
listen = "127.0.0.1:5039"
upstream = "127.0.0.1"
"#,
    );
    let out = env.run(&["check-config"], b"");
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "daemon.shutdown_grace:",
        "vault.key_file:",
        "http.tls_key:",
        "http.listen:",
        "http.redirect_listen:",
        "http.trusted_proxies:",
        "auth.session_idle_timeout:",
        "auth.lockout_window:",
        "auth.routes.\"monitoring\":",
        "smtp.starttls:",
        "smtp.portt:",
        "ami.upstream:",
    ] {
        assert!(err.contains(key), "missing {key} in:\n{err}");
    }
    // One line per problem, plus the heading line.
    assert!(err.lines().count() >= 13, "{err}");
}

#[test]
fn a_malformed_dialing_section_fails_check_config_naming_each_key() {
    let env = Env::new();
    env.init();
    let good = env.config_text(env.http_port, env.redirect_port, "");
    env.write_config(&format!(
        "{good}\n[dialing]\n\
         deny_prefixes = [\"+882\", \"0900-123\", \"44x\"]\n\
         international_prefix = \"+1\"\n\
         extra_dial_characters = \"ab&\"\n\
         max_concurrent_calls = -1\n\
         max_call_attempts_per_minute = 1000000000\n\
         alert_to = [\"admin@example.com\", \"not an address\"]\n\
         alert_interval = \"soon\"\n\
         deny_prefix = [\"1\"]\n"
    ));
    let out = env.run(&["check-config"], b"");
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "dialing.deny_prefixes: \"0900-123\"",
        "dialing.deny_prefixes: \"44x\"",
        "dialing.international_prefix:",
        "dialing.extra_dial_characters: '&'",
        "dialing.max_concurrent_calls:",
        "dialing.max_call_attempts_per_minute:",
        "dialing.alert_to: \"not an address\"",
        "dialing.alert_interval:",
        "dialing.deny_prefix:",
    ] {
        assert!(err.contains(needle), "missing {needle} in:\n{err}");
    }
    // The good prefix and address are not reported.
    assert!(!err.contains("\"+882\""), "{err}");
    assert!(!err.contains("admin@example.com"), "{err}");

    // A value of the wrong type is named too.
    env.write_config(&format!("{good}\n[dialing]\ndeny_prefixes = \"900\"\n"));
    let out = env.run(&["check-config"], b"");
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(
        text(&out).contains("dialing.deny_prefixes"),
        "{}",
        text(&out)
    );

    // And a well-formed section passes.
    env.write_config(&format!(
        "{good}\n[dialing]\ndeny_prefixes = [\"+882\", \"1900\"]\ninternational_prefix = \"011\"\n\
         max_concurrent_calls = 0\nalert_to = [\"noc@example.com\"]\nalert_interval = \"1h\"\n"
    ));
    let out = env.run(&["check-config"], b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn a_good_config_passes_and_serve_refuses_a_bad_one_before_binding() {
    let env = Env::new();
    env.init();
    let out = env.run(&["check-config"], b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("configuration OK"));

    let bad = env.config_text(env.http_port, env.redirect_port, "bogus_key = 1\n");
    env.write_config(&bad);
    let out = env.run(&["serve"], b"");
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(text(&out).contains("http.bogus_key"), "{}", text(&out));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", env.http_port)).is_err(),
        "serve must not bind with a bad config"
    );
}

#[test]
fn syntax_errors_name_the_line() {
    let env = Env::new();
    env.write_config("[daemon]\nstate_dir = \"/x\"\n[http\nlisten = 1\n");
    let out = env.run(&["check-config"], b"");
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out).contains("(line 3)"), "{}", text(&out));
}

#[test]
fn missing_config_file_is_a_clear_usage_error() {
    let env = Env::new();
    std::fs::remove_file(&env.config).unwrap();
    let out = env.run(&["secret", "list"], b"");
    assert_eq!(out.status.code(), Some(64));
    let msg = text(&out);
    assert!(
        msg.contains("cannot read") && msg.contains("pbxguard.toml"),
        "{msg}"
    );
}

#[test]
fn usage_errors_exit_64_and_help_exits_0() {
    let env = Env::new();
    assert_eq!(env.run(&["no-such-command"], b"").status.code(), Some(64));
    assert_eq!(env.run(&["secret", "set"], b"").status.code(), Some(64));
    assert_eq!(env.run(&["--help"], b"").status.code(), Some(0));
}

#[test]
fn completions_and_man_pages_are_generated() {
    let env = Env::new();
    let bash = String::from_utf8(env.ok(&["completions", "bash"], b"")).unwrap();
    assert!(
        bash.contains("_pbxguard()") && bash.contains("check-config"),
        "{bash}"
    );
    let man_dir = env.path("man");
    env.ok(&["man", "--dir", man_dir.to_str().unwrap()], b"");
    let page = std::fs::read_to_string(man_dir.join("pbxguard.8")).unwrap();
    assert!(page.contains(".TH pbxguard 8"), "{page}");
    assert!(man_dir.join("pbxguard-secret-rotate-key.8").exists());
    assert!(man_dir.join("pbxguard-check-config.8").exists());
}

#[test]
fn audit_log_lists_rows_newest_first_filtered_by_action() {
    let env = Env::new();
    env.init();
    for (name, value) in [("smtp/password", "one"), ("api/crm", "two")] {
        let out = env.run(&["secret", "set", name], value.as_bytes());
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let out = env.run(&["secret", "rm", "api/crm"], b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let out = env.run(&["audit", "log", "--action", "secret.", "--json"], b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let seen: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r["action"].as_str().unwrap(), r["target"].as_str().unwrap()))
        .collect();
    assert_eq!(
        seen,
        [
            ("secret.rm", "api/crm"),
            ("secret.set", "api/crm"),
            ("secret.set", "smtp/password")
        ],
        "{rows:?}"
    );
    // Values never appear in the audit log.
    assert!(!String::from_utf8_lossy(&out.stdout).contains("\"one\""));

    // `_` in a prefix is a character, not a wildcard; no match is a clear empty answer.
    let out = env.run(&["audit", "log", "--action", "secret_"], b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("no audit rows"), "{}", text(&out));

    let out = env.run(&["audit", "log", "--limit", "1"], b"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    assert!(text(&out).contains("secret.rm api/crm"), "{}", text(&out));

    let out = env.run(&["audit", "log", "--limit", "0"], b"");
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
}

/// Plain AMI where other hosts reach it: refused by `check-config` (exit 64, naming
/// `ami.listen`) unless TLS is configured or the admin says `allow_plaintext = true`.
#[test]
fn plain_ami_off_loopback_is_refused_unless_tls_or_allowed() {
    let env = Env::new();
    env.init();
    let good = env.config_text(env.http_port, env.redirect_port, "");
    let cert = env.cert().display().to_string();
    let key = env.path("etc/tls/key.pem").display().to_string();
    let with = |ami: &str| {
        env.write_config(&format!("{good}\n[ami]\n{ami}\n"));
        env.run(&["check-config"], b"")
    };
    for listen in ["0.0.0.0:5039", "[::]:5039", "192.0.2.10:5039"] {
        let out = with(&format!("listen = \"{listen}\""));
        assert_eq!(out.status.code(), Some(64), "{listen}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("ami.listen")
                && err.contains("allow_plaintext")
                && err.contains("tls_cert"),
            "{err}"
        );
        let out = with(&format!("listen = \"{listen}\"\nallow_plaintext = true"));
        assert_eq!(out.status.code(), Some(0), "{listen}: {}", text(&out));
        let out = with(&format!(
            "listen = \"{listen}\"\ntls_cert = \"{cert}\"\ntls_key = \"{key}\""
        ));
        assert_eq!(out.status.code(), Some(0), "{listen}: {}", text(&out));
    }
    let out = with("listen = \"127.0.0.1:5039\"");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
