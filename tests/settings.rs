//! Runtime security settings (issue 22) through the real binary: the CLI and the admin API
//! read and change them, every bad value is refused with its key and changes nothing, each
//! change is audited with its old and new value, and it applies from the daemon's next
//! request: lockouts, session lifetimes, the idle timeout of sessions already issued, the
//! 2FA policy and the password rules.

mod common;

use common::{text, Env};
use serde_json::{json, Value};

const PW: &str = "correct horse battery";

fn env_with(extra_auth: &str) -> Env {
    let env = Env::new();
    let text = format!(
        "{}\n[auth]\n{extra_auth}\n",
        env.config_text(
            env.http_port,
            env.redirect_port,
            "trusted_proxies = [\"127.0.0.1/32\"]"
        )
    );
    env.write_config(&text);
    env.init();
    env.add_user("root", 9, PW);
    env.add_user("bob", 2, PW);
    env
}

fn get_json(env: &Env) -> Value {
    serde_json::from_slice(&env.ok(&["settings", "get", "--json"], b"")).expect("JSON")
}

fn put(env: &Env, token: &str, body: &str) -> common::Resp {
    let auth = format!("Authorization: Bearer {token}");
    env.request(
        "PUT",
        "/api/v1/admin/settings",
        &[&auth, "Content-Type: application/json"],
        Some(body),
    )
}

fn get(env: &Env, token: &str) -> common::Resp {
    let auth = format!("Authorization: Bearer {token}");
    env.request("GET", "/api/v1/admin/settings", &[&auth], None)
}

fn audit_rows(env: &Env) -> Vec<Value> {
    let out = env.ok(&["audit", "log", "--action", "settings.", "--json"], b"");
    serde_json::from_slice::<Value>(&out)
        .expect("audit JSON")
        .as_array()
        .expect("array")
        .clone()
}

#[test]
fn the_cli_shows_the_file_defaults_changes_them_and_refuses_bad_values() {
    let env = env_with("lockout_threshold = 7\nsession_idle_timeout = \"2h\"\n");
    let all = get_json(&env);
    let keys: Vec<&str> = all
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(keys.len(), 9, "{all}");
    assert_eq!(
        all["lockout_threshold"], 7,
        "the file's value is the default"
    );
    assert_eq!(all["session_idle_timeout"], "2h");
    assert_eq!(all["session_max_lifetime"], "12h");
    assert_eq!(all["password_min_length"], 12);
    assert_eq!(all["password_min_strength"], 2);
    assert_eq!(all["mfa_force"], false);
    assert_eq!(all["mfa_email_fallback"], true);

    let out = env.run(&["settings", "set", "lockout_threshold", "3"], b"");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lockout_threshold: 7 -> 3"),
        "{}",
        text(&out)
    );
    let one = env.ok(&["settings", "get", "lockout_threshold"], b"");
    assert_eq!(String::from_utf8_lossy(&one).trim(), "3");
    let table = String::from_utf8_lossy(&env.ok(&["settings", "get"], b"")).to_string();
    let row = table
        .lines()
        .find(|l| l.starts_with("lockout_threshold"))
        .unwrap();
    assert!(row.contains("database"), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("lockout_window"))
        .unwrap();
    assert!(row.contains("config file"), "{table}");

    // Bad values: exit 64, the key named, nothing changed.
    for (key, value, needle) in [
        ("lockout_threshold", "0", "between 1 and 1000"),
        ("lockout_threshold", "ten", "not a whole number"),
        ("session_idle_timeout", "8 lightyears", "not a duration"),
        ("session_idle_timeout", "30s", "between"),
        ("session_idle_timeout", "13h", "session_max_lifetime"),
        ("password_min_strength", "5", "between 0 and 4"),
        ("password_min_length", "4", "between 8 and 128"),
        ("mfa_force", "maybe", "on or off"),
        ("no_such_setting", "1", "no such setting"),
        (
            "lockout_window",
            "'; DROP TABLE settings; --",
            "not a duration",
        ),
    ] {
        let out = env.run(&["settings", "set", key, value], b"");
        assert_eq!(out.status.code(), Some(64), "{key}={value}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{key}: {err}");
        assert!(err.contains(needle), "{key}: {err}");
    }
    let after = get_json(&env);
    let mut expected = all.clone();
    expected["lockout_threshold"] = json!(3);
    assert_eq!(after, expected, "refused values changed nothing");

    // Audited once, with the old and the new value; setting the same value again is no change.
    env.ok(&["settings", "set", "lockout_threshold", "3"], b"");
    let rows = audit_rows(&env);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["target"], "lockout_threshold");
    assert_eq!(rows[0]["detail"], "7 -> 3");

    // A stored value that no longer reads (edited by hand) gives way to the file's value.
    env.sql("UPDATE settings SET value = 'garbage' WHERE key = 'security.lockout_threshold'");
    let out = env.run(&["settings", "get", "--json"], b"");
    assert!(out.status.success(), "{}", text(&out));
    let now: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(now["lockout_threshold"], 7);
}

#[test]
fn the_api_reads_and_changes_settings_for_admins_only() {
    let env = env_with("");
    let d = env.start();
    let root = env.token("root", PW);
    let bob = env.token("bob", PW);
    assert_eq!(get(&env, &bob).status, 403);
    assert_eq!(put(&env, &bob, r#"{"lockout_threshold":3}"#).status, 403);
    assert_eq!(
        env.request("GET", "/api/v1/admin/settings", &[], None)
            .status,
        401
    );

    let r = get(&env, &root);
    assert_eq!(r.status, 200, "{r:?}");
    let before = r.json();
    assert_eq!(before, get_json(&env), "the API and the CLI agree");

    let r = put(
        &env,
        &root,
        r#"{"lockout_threshold":4,"lockout_window":"20m","mfa_email_fallback":false}"#,
    );
    assert_eq!(r.status, 200, "{r:?}");
    let now = r.json();
    assert_eq!(now["lockout_threshold"], 4);
    assert_eq!(now["lockout_window"], "20m");
    assert_eq!(now["mfa_email_fallback"], false);
    assert_eq!(now, get(&env, &root).json());
    let rows = audit_rows(&env);
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows.iter().all(|r| r["actor"] == "api:root"), "{rows:?}");
    assert!(
        rows.iter()
            .any(|r| r["target"] == "lockout_window" && r["detail"] == "15m -> 20m"),
        "{rows:?}"
    );

    // Every bad body: 400 invalid_setting naming the field, and nothing written (a valid key
    // beside a bad one included).
    for (body, field) in [
        (r#"{"lockout_threshold":0}"#, "lockout_threshold"),
        (r#"{"lockout_threshold":"3"}"#, "lockout_threshold"),
        (r#"{"lockout_threshold":2.5}"#, "lockout_threshold"),
        (r#"{"lockout_window":900}"#, "lockout_window"),
        (
            r#"{"session_idle_timeout":"forever"}"#,
            "session_idle_timeout",
        ),
        (
            r#"{"session_max_lifetime":"1h","session_idle_timeout":"2h"}"#,
            "session_idle_timeout",
        ),
        (r#"{"session_max_lifetime":"1h"}"#, "session_max_lifetime"),
        (r#"{"password_min_strength":9}"#, "password_min_strength"),
        (r#"{"mfa_force":"on"}"#, "mfa_force"),
        (
            r#"{"lockout_threshold":2,"password_min_length":3}"#,
            "password_min_length",
        ),
        (r#"{"bogus\u0000key":1}"#, "bogus\u{0}key"),
    ] {
        let r = put(&env, &root, body);
        assert_eq!(r.status, 400, "{body}: {r:?}");
        let e = r.json();
        assert_eq!(e["error"], "invalid_setting", "{body}: {e}");
        assert_eq!(e["field"], field, "{body}: {e}");
        assert!(!e["message"].as_str().unwrap().is_empty());
    }
    for body in ["[1,2]", "\"x\"", "{"] {
        let r = put(&env, &root, body);
        assert_eq!(r.status, 400, "{body}: {r:?}");
    }
    assert_eq!(
        get(&env, &root).json(),
        now,
        "refused bodies changed nothing"
    );
    assert_eq!(audit_rows(&env).len(), 3);
    // The daemon keeps serving.
    assert_eq!(env.check(&root, &[]).status, 200);
    drop(d);
}

#[test]
fn a_change_applies_from_the_next_request() {
    let env = env_with("");
    let _d = env.start();
    let root = env.token("root", PW);

    // Lockout: the CLI's change reaches the running daemon. (Bob's client address is one
    // the proxy names, so that the address lock leaves the other logins alone.)
    let xff = "X-Forwarded-For: 192.0.2.10";
    env.ok(&["settings", "set", "lockout_threshold", "2"], b"");
    for _ in 0..2 {
        assert_eq!(env.login("bob", "wrong password 123", &[xff]).status, 401);
    }
    let r = env.login("bob", PW, &[xff]);
    assert_eq!(r.status, 429, "locked after 2 failures: {r:?}");

    // Idle timeout: a session issued before the change follows the new one. Its last
    // activity is moved two hours back in the database (with 8 h idle it would live on).
    let token = env.token("root", PW);
    assert_eq!(env.check(&token, &[]).status, 200);
    env.sql("UPDATE sessions SET last_seen = last_seen - 7200");
    let r = put(&env, &root, r#"{"session_idle_timeout":"1h"}"#);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(env.check(&token, &[]).status, 401, "idle past the new 1 h");
    let root = env.token("root", PW);
    let r = put(&env, &root, r#"{"session_idle_timeout":"8h"}"#);
    assert_eq!(r.status, 200, "{r:?}");

    // Lifetime: new sessions get the new one; those already issued keep their expiry.
    let before: i64 = env
        .sql("SELECT MAX(expires_at - created_at) FROM sessions")
        .parse()
        .unwrap();
    assert_eq!(before, 12 * 3600);
    let r = put(&env, &root, r#"{"session_max_lifetime":"9h"}"#);
    assert_eq!(r.status, 200, "{r:?}");
    env.token("root", PW);
    let spans = env.sql("SELECT DISTINCT expires_at - created_at FROM sessions ORDER BY 1");
    assert_eq!(spans, format!("{}\n{}", 9 * 3600, 12 * 3600), "{spans}");

    // 2FA policy: forcing it sends the next login without a second factor to enrollment,
    // through the setting as through `mfa policy`.
    let r = put(&env, &root, r#"{"mfa_force":true}"#);
    assert_eq!(r.status, 200, "{r:?}");
    let out = env.ok(&["mfa", "policy"], b"");
    assert!(
        String::from_utf8_lossy(&out).contains("force enrollment: on"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let r = env.login("root", PW, &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.json()["enroll_token"].is_string(), "{r:?}");
}

#[test]
fn password_rules_follow_the_settings_and_say_what_passes() {
    let env = env_with("");
    let add = |name: &str, pw: &str| {
        env.run(
            &["user", "add", name, "--level", "2", "--password-stdin"],
            format!("{pw}\n").as_bytes(),
        )
    };
    for (name, pw, needle) in [
        ("carol", "short", "at least 12 characters"),
        ("carol", "password1234", "most common passwords"),
        ("carol", "qwertyuiop123", "most common passwords"),
        (
            "carol",
            "Carol2026carol",
            "little more than the user's name",
        ),
    ] {
        let out = add(name, pw);
        assert_eq!(out.status.code(), Some(64), "{pw}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{pw}: {err}");
        assert!(err.contains("passphrase of four or more"), "{pw}: {err}");
        assert!(
            !err.contains(pw) || pw == "short",
            "the password is not echoed: {err}"
        );
    }
    // The floor and the length are settings.
    env.ok(&["settings", "set", "password_min_strength", "4"], b"");
    let out = add("dave", "Charlotte1987!");
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at least 4 needed"),
        "{}",
        text(&out)
    );
    assert!(add("dave", "glacier tram obelisk harbour").status.success());
    env.ok(&["settings", "set", "password_min_length", "30"], b"");
    let out = add("erin", "glacier tram obelisk harbour");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at least 30 characters"),
        "{}",
        text(&out)
    );
    let out = env.run(
        &["user", "passwd", "dave", "--password-stdin"],
        b"glacier tram obelisk harbour tide\n",
    );
    assert!(out.status.success(), "{}", text(&out));
}
