//! The security console's pages (issue 22) through the real binary: who may see which page,
//! CSRF tokens on every form, hostile text escaped, and what each form does. The pages in a
//! real browser (CSP violations, screenshots) are in `console_browser_run` below.

mod common;

use common::*;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

const PW: &str = "correct horse battery";

fn env_with_users() -> (Env, Daemon) {
    let env = Env::new();
    env.init();
    for (name, level) in [("agent", 2), ("sup", 5), ("manager", 7), ("root", 9)] {
        env.add_user(name, level, PW);
    }
    let d = env.start();
    (env, d)
}

fn cookie(token: &str) -> String {
    format!("Cookie: pbxguard_session={token}")
}

fn get(env: &Env, path: &str, token: Option<&str>) -> Resp {
    let c = token.map(cookie);
    let headers: Vec<&str> = c.iter().map(|s| s.as_str()).collect();
    env.request("GET", path, &headers, None)
}

fn post(env: &Env, path: &str, token: &str, form: &[(&str, &str)]) -> Resp {
    let body: Vec<String> = form
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, NON_ALPHANUMERIC),
                utf8_percent_encode(v, NON_ALPHANUMERIC)
            )
        })
        .collect();
    let c = cookie(token);
    env.request(
        "POST",
        path,
        &[&c, "Content-Type: application/x-www-form-urlencoded"],
        Some(&body.join("&")),
    )
}

/// The CSRF token the page's forms carry.
fn csrf(page: &Resp) -> String {
    let at = page
        .body
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no csrf field: {}", page.body));
    let rest = &page.body[at + 19..];
    rest[..rest.find('"').unwrap()].to_string()
}

#[test]
fn pages_need_a_session_and_admin_pages_an_admin() {
    let (env, _d) = env_with_users();
    for path in ["/account", "/admin", "/admin/settings"] {
        let r = get(&env, path, None);
        assert_eq!(r.status, 303, "{path}: {r:?}");
        assert_eq!(
            r.header("location").as_deref(),
            Some(format!("/login?next={path}").as_str())
        );
    }
    for name in ["agent", "sup", "manager"] {
        let t = env.token(name, PW);
        let page = get(&env, "/account", Some(&t));
        assert_eq!(page.status, 200, "{name}: {page:?}");
        assert!(page.body.contains(&format!("{name} (")), "{name}");
        assert!(
            !page.body.contains("href=\"/admin\""),
            "{name} sees no admin link"
        );
        for path in ["/admin", "/admin/settings"] {
            assert_eq!(get(&env, path, Some(&t)).status, 403, "{name} {path}");
        }
        let token = csrf(&page);
        let r = post(
            &env,
            "/admin/settings",
            &t,
            &[("csrf", &token), ("lockout_threshold", "1")],
        );
        assert_eq!(r.status, 403, "{name} cannot save settings");
    }
    assert_eq!(
        env.sql("SELECT COUNT(*) FROM settings"),
        "0",
        "nothing was written by the refused posts"
    );
    let root = env.token("root", PW);
    for path in ["/account", "/admin", "/admin/settings"] {
        let r = get(&env, path, Some(&root));
        assert_eq!(r.status, 200, "{path}: {r:?}");
        let csp = r.header("content-security-policy").unwrap();
        assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
        assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
        assert_eq!(r.header("x-frame-options").as_deref(), Some("DENY"));
        // No inline script: on /account the one static file that adds passkeys, elsewhere none.
        let scripts: Vec<&str> = r
            .body
            .match_indices("<script")
            .map(|(i, _)| &r.body[i..])
            .collect();
        let allowed = usize::from(path == "/account");
        assert_eq!(scripts.len(), allowed, "{path}: {}", r.body);
        for s in scripts {
            assert!(
                s.starts_with("<script src=\"/console/passkeys.js\" defer></script>"),
                "{path}: {s}"
            );
        }
        assert!(!r.body.contains("style="), "{path}: no inline style");
    }
    // The forward-auth rules cover the console: /admin needs the admin role there too.
    let agent = env.token("agent", PW);
    let check = env.request(
        "GET",
        "/api/v1/auth/check",
        &[
            &format!("Authorization: Bearer {agent}"),
            "X-Original-URI: /admin/settings",
        ],
        None,
    );
    assert_eq!(check.status, 403, "{check:?}");
}

#[test]
fn every_form_without_its_csrf_token_is_refused_and_changes_nothing() {
    let (env, _d) = env_with_users();
    let root = env.token("root", PW);
    let other = env.token("root", PW);
    let page = get(&env, "/account", Some(&root));
    let token = csrf(&page);
    // Another session's token is not this session's.
    let foreign = csrf(&get(&env, "/account", Some(&other)));
    assert_ne!(token, foreign);
    let other_id = env.sql(
        "SELECT id FROM sessions WHERE revoked_at IS NULL ORDER BY created_at DESC, id LIMIT 1",
    );
    let forms: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "/account/password",
            vec![
                ("current", PW),
                ("new", "glacier tram obelisk harbour"),
                ("again", "glacier tram obelisk harbour"),
            ],
        ),
        ("/account/totp", vec![("code", "123456")]),
        ("/account/totp/remove", vec![("password", PW)]),
        ("/account/recovery-codes", vec![("password", PW)]),
        ("/account/sessions/revoke", vec![("id", other_id.as_str())]),
        ("/account/sessions/revoke-others", vec![]),
        ("/account/logout", vec![]),
        ("/admin/settings", vec![("lockout_threshold", "2")]),
        (
            "/account/passkeys/remove",
            vec![("id", "ab01"), ("password", PW)],
        ),
        (
            "/account/passwordless",
            vec![("enabled", "on"), ("password", PW)],
        ),
    ];
    // A passkey the refused forms would remove or turn into the only factor.
    env.sql(
        "INSERT INTO passkeys (id, user_id, name, rp_id, credential_id, user_handle, credential, sign_count, created_at)
         SELECT 'ab01', id, 'key', 'localhost', 'Y3JlZA', 'h', '{}', 0, 1 FROM users WHERE name = 'root'",
    );
    for (path, fields) in &forms {
        for bad in [None, Some(""), Some("00"), Some(foreign.as_str())] {
            let mut form: Vec<(&str, &str)> = fields.clone();
            if let Some(b) = bad {
                form.push(("csrf", b));
            }
            let r = post(&env, path, &root, &form);
            assert!(
                r.status == 403 || r.status == 422 || r.status == 400,
                "{path} with {bad:?}: {r:?}"
            );
        }
    }
    // Nothing happened: both sessions live, no setting, the password unchanged.
    assert_eq!(env.check(&root, &[]).status, 200);
    assert_eq!(env.check(&other, &[]).status, 200);
    assert_eq!(env.sql("SELECT COUNT(*) FROM settings"), "0");
    assert_eq!(env.sql("SELECT COUNT(*) FROM passkeys"), "1");
    assert_eq!(env.sql("SELECT COUNT(*) FROM passkey_passwordless"), "0");
    // (The stand-in passkey holds no usable key: out of the way of the password check.)
    env.sql("DELETE FROM passkeys");
    assert_eq!(env.login("root", PW, &[]).status, 200);
    assert_eq!(
        env.sql("SELECT COUNT(*) FROM audit_log WHERE action IN ('user.passwd', 'session.revoke', 'settings.set', 'mfa.passkey.remove', 'mfa.passwordless.on')"),
        "0"
    );
}

#[test]
fn hostile_text_is_shown_as_text() {
    let (env, _d) = env_with_users();
    let hostile = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'&";
    let ua = format!("User-Agent: {hostile}");
    let r = env.login("agent", PW, &[&ua]);
    assert_eq!(r.status, 200);
    let token = r.json()["token"].as_str().unwrap().to_string();
    env.login("agent", "wrong password!!", &[&ua]);
    let page = get(&env, "/account", Some(&token));
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("<script>alert"), "{}", page.body);
    assert!(!page.body.contains("<img src=x"), "{}", page.body);
    assert!(
        page.body
            .contains("&#60;script&#62;alert(1)&#60;/script&#62;&#60;img src=x"),
        "{}",
        page.body
    );
    // A settings value as typed comes back escaped in the refused form.
    let root = env.token("root", PW);
    let t = csrf(&get(&env, "/admin/settings", Some(&root)));
    let r = post(
        &env,
        "/admin/settings",
        &root,
        &[("csrf", &t), ("lockout_window", "\"><script>x</script>")],
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(!r.body.contains("<script>x"), "{}", r.body);
    assert!(r.body.contains("lockout_window: "), "{}", r.body);
}

#[test]
fn the_account_page_signs_out_sessions_and_changes_the_password() {
    let (env, _d) = env_with_users();
    let here = env.token("agent", PW);
    let phone = env.token("agent", PW);
    let laptop = env.token("agent", PW);
    let page = get(&env, "/account", Some(&here));
    assert_eq!(
        page.body.matches("Sign out</button>").count(),
        2,
        "{}",
        page.body
    );
    assert!(page.body.contains("this one"));
    let t = csrf(&page);
    let sid = |token: &str| {
        let auth = format!("Authorization: Bearer {token}");
        env.request("GET", "/api/v1/me", &[&auth], None).json()["session"]["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // Someone else's session cannot be signed out from here.
    let root = env.token("root", PW);
    let r = post(
        &env,
        "/account/sessions/revoke",
        &here,
        &[("csrf", &t), ("id", &sid(&root))],
    );
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(env.check(&root, &[]).status, 200);
    // One of mine: the phone's.
    let r = post(
        &env,
        "/account/sessions/revoke",
        &here,
        &[("csrf", &t), ("id", &sid(&phone))],
    );
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(
        r.header("location").as_deref(),
        Some("/account?done=revoked")
    );
    assert_eq!(
        env.check(&phone, &[]).status,
        401,
        "the second login (the phone) is out"
    );
    assert_eq!(env.check(&laptop, &[]).status, 200);
    let r = post(
        &env,
        "/account/sessions/revoke-others",
        &here,
        &[("csrf", &t)],
    );
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(env.check(&laptop, &[]).status, 401);
    assert_eq!(env.check(&here, &[]).status, 200, "this session stays");
    let done = get(&env, "/account?done=others", Some(&here));
    assert!(done.body.contains("Every other session is signed out."));

    // Password: the wrong current one, a weak new one, two that differ, then a good one.
    for (current, new, again, status, needle) in [
        (
            "not my password",
            "glacier tram obelisk harbour",
            "glacier tram obelisk harbour",
            401,
            "current password is wrong",
        ),
        (
            PW,
            "password1234",
            "password1234",
            400,
            "most common passwords",
        ),
        (
            PW,
            "glacier tram obelisk harbour",
            "glacier tram obelisk harbor",
            400,
            "differ",
        ),
    ] {
        let r = post(
            &env,
            "/account/password",
            &here,
            &[
                ("csrf", &t),
                ("current", current),
                ("new", new),
                ("again", again),
            ],
        );
        assert_eq!(r.status, status, "{needle}: {r:?}");
        assert!(r.body.contains(needle), "{needle}: {}", r.body);
        assert!(
            !r.body.contains(new) || new.len() < 12,
            "the password is not echoed"
        );
    }
    let r = post(
        &env,
        "/account/password",
        &here,
        &[
            ("csrf", &t),
            ("current", PW),
            ("new", "glacier tram obelisk harbour"),
            ("again", "glacier tram obelisk harbour"),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(env.check(&here, &[]).status, 401, "every session ended");
    assert_eq!(env.login("agent", PW, &[]).status, 401);
    assert_eq!(
        env.login("agent", "glacier tram obelisk harbour", &[])
            .status,
        200
    );
    let audit = env.sql("SELECT actor FROM audit_log WHERE action = 'user.passwd'");
    assert_eq!(audit, "web:agent");
}

#[test]
fn the_settings_form_saves_checks_and_names_the_field_at_fault() {
    let (env, _d) = env_with_users();
    let root = env.token("root", PW);
    let page = get(&env, "/admin/settings", Some(&root));
    assert!(
        page.body
            .contains("name=\"lockout_threshold\" value=\"10\""),
        "{}",
        page.body
    );
    let t = csrf(&page);
    let r = post(
        &env,
        "/admin/settings",
        &root,
        &[
            ("csrf", &t),
            ("lockout_threshold", "4"),
            ("mfa_email_fallback", "off"),
            ("session_idle_timeout", "8h"),
        ],
    );
    assert_eq!(r.status, 303, "{r:?}");
    let saved = get(&env, "/admin/settings?done=saved", Some(&root));
    assert!(saved.body.contains("Saved."));
    assert!(saved
        .body
        .contains("name=\"lockout_threshold\" value=\"4\""));
    let rows = env.sql(
        "SELECT actor, target, detail FROM audit_log WHERE action = 'settings.set' ORDER BY target",
    );
    assert_eq!(
        rows,
        "web:root|lockout_threshold|10 -> 4\nweb:root|mfa_email_fallback|on -> off"
    );
    // A bad value: 400, the field marked, nothing written.
    let r = post(
        &env,
        "/admin/settings",
        &root,
        &[
            ("csrf", &t),
            ("lockout_threshold", "5"),
            ("session_idle_timeout", "40d"),
        ],
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        r.body.contains("session_idle_timeout: must be between"),
        "{}",
        r.body
    );
    assert!(r.body.contains("class=\"bad\""));
    assert_eq!(
        env.sql("SELECT value FROM settings WHERE key = 'security.lockout_threshold'"),
        "4"
    );
    // It applies at once: two failures lock.
    let r = post(
        &env,
        "/admin/settings",
        &root,
        &[("csrf", &t), ("lockout_threshold", "2")],
    );
    assert_eq!(r.status, 303);
    env.login("agent", "wrong password!!", &["X-Forwarded-For: 192.0.2.7"]);
    env.login("agent", "wrong password!!", &["X-Forwarded-For: 192.0.2.7"]);
    assert_eq!(env.login("agent", PW, &[]).status, 429);
}

/// The pages in headless Chromium: every page rendered and screenshotted, no CSP violation in
/// the browser's log, forms that work with scripts off (the console has none).
#[test]
fn console_browser_run() {
    let env = Env::new();
    let port = env.http_port;
    let d = env.dir.path().display();
    env.write_config(&format!(
        "[daemon]\nstate_dir = \"{d}/state\"\nshutdown_grace = \"2s\"\n[vault]\nkey_file = \"{d}/master.key\"\n[http]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\n"
    ));
    env.init();
    env.add_user("root", 9, PW);
    let daemon = env.start();
    let browser = BrowserRun::new("console.py", "console");
    let base = format!("http://127.0.0.1:{port}");
    let profile = env.path("chromium-profile");
    let args = [
        base.as_ref(),
        "root".as_ref(),
        PW.as_ref(),
        browser.shots.as_os_str(),
        profile.as_os_str(),
    ];
    browser.run(&args, &daemon);
    browser.assert_shots(&[
        "1-account.png",
        "2-admin.png",
        "3-settings.png",
        "4-saved.png",
        "5-refused.png",
        "6-users.png",
        "7-sessions.png",
        "8-history.png",
        "9-bans.png",
        "10-ami.png",
    ]);
    assert_eq!(
        env.sql("SELECT value FROM settings WHERE key = 'security.lockout_threshold'"),
        "7"
    );
    assert_eq!(env.sql("SELECT address FROM bans"), "198.51.100.7");
}

/// W12: a form posted from another site in a real browser carries no session cookie
/// (`SameSite=Strict`), even with a valid CSRF token in it: nothing happens. The same action
/// from the account page works.
#[test]
fn a_cross_site_form_post_in_a_browser_changes_nothing() {
    let env = Env::new();
    let port = env.http_port;
    let d = env.dir.path().display();
    env.write_config(&format!(
        "[daemon]\nstate_dir = \"{d}/state\"\nshutdown_grace = \"2s\"\n[vault]\nkey_file = \"{d}/master.key\"\n[http]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://localhost:{port}\"\n"
    ));
    env.init();
    env.add_user("root", 9, PW);
    let daemon = env.start();
    // A second session of the same user, which "sign out everywhere else" would end.
    let api = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
            .args(args)
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().to_string(), body.to_string())
    };
    let login = serde_json::json!({"username": "root", "password": PW}).to_string();
    let (code, body) = api(&[
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &login,
        &format!("http://127.0.0.1:{port}/api/v1/auth/login"),
    ]);
    assert_eq!(code, "200", "{body}");
    let other: serde_json::Value = serde_json::from_str(&body).unwrap();
    let bearer = format!("Authorization: Bearer {}", other["token"].as_str().unwrap());
    let other_alive = || {
        api(&[
            "-H",
            &bearer,
            &format!("http://127.0.0.1:{port}/api/v1/auth/check"),
        ])
        .0
    };
    assert_eq!(other_alive(), "200");

    let browser = BrowserRun::new("cross_site.py", "cross-site");
    let base = format!("http://localhost:{port}");
    let profile = env.path("chromium-profile");
    let args = [
        base.as_ref(),
        "root".as_ref(),
        PW.as_ref(),
        browser.shots.as_os_str(),
        profile.as_os_str(),
    ];
    let said = browser.run(&args, &daemon);
    assert!(said.contains("cross-site refused"), "{said}");
    assert!(said.contains("same-site done"), "{said}");
    browser.assert_shots(&["1-cross-site.png", "2-same-site.png"]);
    // Only the same-site click ended the other session, and only once.
    assert_eq!(other_alive(), "401");
    assert_eq!(
        env.sql("SELECT COUNT(*) FROM audit_log WHERE action = 'session.revoke'"),
        "1"
    );
}

#[test]
fn admin_pages_manage_users_sessions_history_bans_and_list_ami_clients() {
    let (env, _d) = env_with_users();
    let root = env.token("root", PW);
    let agent = env.token("agent", PW);
    for path in [
        "/admin/users",
        "/admin/sessions",
        "/admin/history",
        "/admin/history.csv",
        "/admin/bans",
        "/admin/ami",
    ] {
        assert_eq!(get(&env, path, Some(&agent)).status, 403, "{path}");
        let r = get(&env, path, Some(&root));
        assert_eq!(r.status, 200, "{path}: {r:?}");
    }
    let t = csrf(&get(&env, "/admin/users", Some(&root)));

    // Users: create (the password rules apply), level, state, exemption, reset.
    let weak = post(
        &env,
        "/admin/users/create",
        &root,
        &[
            ("csrf", &t),
            ("name", "newbie"),
            ("level", "3"),
            ("password", "password1234"),
        ],
    );
    assert_eq!(weak.status, 400, "{weak:?}");
    assert!(weak.body.contains("most common passwords"), "{}", weak.body);
    let r = post(
        &env,
        "/admin/users/create",
        &root,
        &[
            ("csrf", &t),
            ("name", "newbie"),
            ("level", "3"),
            ("email", "newbie@example.com"),
            ("password", "glacier tram obelisk harbour"),
        ],
    );
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(
        env.login("newbie", "glacier tram obelisk harbour", &[])
            .status,
        200
    );
    let again = post(
        &env,
        "/admin/users/create",
        &root,
        &[
            ("csrf", &t),
            ("name", "newbie"),
            ("level", "3"),
            ("password", "glacier tram obelisk harbour"),
        ],
    );
    assert_eq!(again.status, 409, "{again:?}");
    let r = post(
        &env,
        "/admin/users/level",
        &root,
        &[("csrf", &t), ("name", "agent"), ("level", "5")],
    );
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(env.sql("SELECT level FROM users WHERE name = 'agent'"), "5");
    assert_eq!(
        env.check(&agent, &[]).status,
        401,
        "a level change ends sessions"
    );
    let r = post(
        &env,
        "/admin/users/state",
        &root,
        &[("csrf", &t), ("name", "agent"), ("disabled", "on")],
    );
    assert_eq!(r.status, 303);
    assert_eq!(env.login("agent", PW, &[]).status, 403);
    post(
        &env,
        "/admin/users/state",
        &root,
        &[("csrf", &t), ("name", "agent"), ("disabled", "off")],
    );
    assert_eq!(env.login("agent", PW, &[]).status, 200);
    let r = post(
        &env,
        "/admin/users/state",
        &root,
        &[("csrf", &t), ("name", "root"), ("disabled", "on")],
    );
    assert_eq!(r.status, 400, "no admin locks themselves out here");
    let r = post(
        &env,
        "/admin/users/exempt",
        &root,
        &[("csrf", &t), ("name", "agent"), ("for", "2d")],
    );
    assert_eq!(r.status, 303, "{r:?}");
    let r = post(
        &env,
        "/admin/users/exempt",
        &root,
        &[("csrf", &t), ("name", "agent"), ("for", "100d")],
    );
    assert_eq!(r.status, 400, "{r:?}");
    let r = post(
        &env,
        "/admin/users/reset-2fa",
        &root,
        &[("csrf", &t), ("name", "ghost")],
    );
    assert_eq!(r.status, 404);
    let page = get(&env, "/admin/users", Some(&root));
    assert!(page.body.contains("id=\"user-newbie\""), "{}", page.body);
    assert!(page.body.contains("exempt until"), "{}", page.body);
    let actions = env.sql("SELECT action FROM audit_log WHERE actor = 'web:root' ORDER BY id");
    for a in [
        "user.add",
        "user.set-level",
        "user.disable",
        "user.enable",
        "mfa.exempt",
    ] {
        assert!(actions.lines().any(|l| l == a), "{a}: {actions}");
    }

    // Sessions: everyone's, revocable.
    let newbie = env.token("newbie", "glacier tram obelisk harbour");
    let page = get(&env, "/admin/sessions", Some(&root));
    assert!(page.body.contains("newbie"), "{}", page.body);
    let auth = format!("Authorization: Bearer {newbie}");
    let sid = env.request("GET", "/api/v1/me", &[&auth], None).json()["session"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = post(
        &env,
        "/admin/sessions/revoke",
        &root,
        &[("csrf", &t), ("id", &sid)],
    );
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(env.check(&newbie, &[]).status, 401);

    // History: filters, a bad time refused, CSV with formulas neutralised.
    env.login(
        "newbie",
        "not the password!",
        &["User-Agent: =HYPERLINK(\"http://x\")"],
    );
    let r = get(
        &env,
        "/admin/history?user=NEWBIE&result=bad_password",
        Some(&root),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body.matches("<td>bad_password</td>").count(),
        1,
        "{}",
        r.body
    );
    assert!(
        !r.body.contains("<td>ok</td>"),
        "only the failure: {}",
        r.body
    );
    let r = get(&env, "/admin/history?from=yesterday", Some(&root));
    assert_eq!(r.status, 400);
    let r = get(
        &env,
        "/admin/history?from=2000-01-01T00:00:00Z&to=2000-01-02T00:00:00Z",
        Some(&root),
    );
    assert!(!r.body.contains("<td>ok</td>"), "nothing in 2000");
    let csv = get(&env, "/admin/history.csv?user=newbie", Some(&root));
    assert_eq!(csv.status, 200);
    assert!(csv.header("content-type").unwrap().starts_with("text/csv"));
    assert!(csv
        .header("content-disposition")
        .unwrap()
        .contains("attachment"));
    let lines: Vec<&str> = csv.body.lines().collect();
    assert_eq!(lines[0], "at,user,result,ip,user_agent,node");
    assert!(lines.len() >= 3, "{}", csv.body);
    assert!(
        csv.body.contains("\"'=HYPERLINK(\"\"http://x\"\")\""),
        "{}",
        csv.body
    );

    // Bans: add (escaped reason), never-banned refused, lift.
    let r = post(
        &env,
        "/admin/bans/add",
        &root,
        &[
            ("csrf", &t),
            ("address", "192.0.2.66"),
            ("duration", "2h"),
            ("reason", "<b>scanner</b>"),
        ],
    );
    assert_eq!(r.status, 303, "{r:?}");
    let page = get(&env, "/admin/bans", Some(&root));
    assert!(
        page.body.contains("192.0.2.66") && !page.body.contains("<b>scanner"),
        "{}",
        page.body
    );
    let list: serde_json::Value =
        serde_json::from_slice(&env.ok(&["ban", "list", "--json"], b"")).unwrap();
    assert_eq!(list[0]["address"], "192.0.2.66");
    assert_eq!(list[0]["source"], "manual");
    let r = post(
        &env,
        "/admin/bans/add",
        &root,
        &[("csrf", &t), ("address", "127.0.0.1")],
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        r.body.contains("never banned") || r.body.contains("loopback"),
        "{}",
        r.body
    );
    let r = post(
        &env,
        "/admin/bans/add",
        &root,
        &[("csrf", &t), ("address", "not an address")],
    );
    assert_eq!(r.status, 400);
    let r = post(
        &env,
        "/admin/bans/remove",
        &root,
        &[("csrf", &t), ("address", "192.0.2.66")],
    );
    assert_eq!(r.status, 303);
    assert_eq!(
        String::from_utf8_lossy(&env.ok(&["ban", "list", "--json"], b"")).trim(),
        "[]"
    );

    // AMI clients, read only.
    env.add_ami_client(
        "dialer",
        "a dialer secret value",
        &["--allow", "Originate,Ping", "--context", "sales"],
    );
    let page = get(&env, "/admin/ami", Some(&root));
    assert!(page.body.contains("<td>dialer</td>"), "{}", page.body);
    assert!(page.body.contains("sales"), "{}", page.body);
    assert!(!page.body.contains("a dialer secret value"));
}

/// TOTP from the account page: set up (QR code and key, then a code from oathtool), the first
/// recovery codes shown once, then removed with the password.
#[test]
fn the_account_page_sets_up_and_removes_the_authenticator_app() {
    let (env, _d) = env_with_users();
    let me = env.token("sup", PW);
    let page = get(&env, "/account", Some(&me));
    assert!(page.body.contains("id=\"setup-totp\""), "{}", page.body);
    let t = csrf(&page);
    let setup = get(&env, "/account/totp", Some(&me));
    assert_eq!(setup.status, 200, "{setup:?}");
    assert!(setup.body.contains("src=\"data:image/svg+xml;base64,"));
    let at = setup.body.find("<code id=\"secret\">").unwrap() + 18;
    let secret = &setup.body[at..at + 32];
    // A wrong code: the page says so, nothing is set up.
    let r = post(
        &env,
        "/account/totp",
        &me,
        &[("csrf", &t), ("code", "000000")],
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(env.sql("SELECT COUNT(*) FROM mfa_totp"), "0");
    let code = std::process::Command::new("oathtool")
        .args(["--totp", "-b", secret])
        .output()
        .expect("oathtool is installed");
    let code = String::from_utf8_lossy(&code.stdout).trim().to_string();
    let r = post(&env, "/account/totp", &me, &[("csrf", &t), ("code", &code)]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.body.matches("<li>").count(),
        10,
        "the first codes: {}",
        r.body
    );
    assert_eq!(env.sql("SELECT COUNT(*) FROM mfa_totp"), "1");
    let page = get(&env, "/account", Some(&me));
    assert!(
        page.body.contains("Recovery codes left: 10 of 10"),
        "{}",
        page.body
    );
    assert_eq!(env.login("sup", PW, &[]).json()["status"], "mfa_required");
    // Set up already: the setup page leads back to the account.
    assert_eq!(get(&env, "/account/totp", Some(&me)).status, 303);
    // Removal needs the password; then TOTP and codes are gone and the sessions ended.
    let r = post(
        &env,
        "/account/totp/remove",
        &me,
        &[("csrf", &t), ("password", "not it at all")],
    );
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(env.sql("SELECT COUNT(*) FROM mfa_totp"), "1");
    let r = post(
        &env,
        "/account/totp/remove",
        &me,
        &[("csrf", &t), ("password", PW)],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(env.sql("SELECT COUNT(*) FROM mfa_totp"), "0");
    assert_eq!(env.sql("SELECT COUNT(*) FROM mfa_recovery_codes"), "0");
    assert_eq!(env.check(&me, &[]).status, 401);
    assert_eq!(env.login("sup", PW, &[]).json()["status"], "ok");
}

/// `[audit] interval`: the daemon audits Asterisk's folder on its own and the console shows
/// the last findings; a folder that is not there is shown as the reason there are none.
#[test]
fn the_scheduled_asterisk_audit_shows_on_the_console() {
    let env = Env::new();
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/asterisk/insecure");
    let text = format!(
        "{}\n[audit]\ninterval = \"1m\"\ndir = \"{data}\"\n",
        env.config_text(env.http_port, env.redirect_port, "")
    );
    env.write_config(&text);
    env.init();
    env.add_user("root", 9, PW);
    let _d = env.start();
    let root = env.token("root", PW);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let page = loop {
        let p = get(&env, "/admin/audit", Some(&root));
        if p.body.contains("high,") {
            break p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no audit shown: {}",
            p.body
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    assert!(page.body.contains("manager.conf:"), "{}", page.body);
    assert_eq!(env.sql("SELECT COUNT(*) FROM audit_runs"), "1");
    // The same findings as the CLI's.
    let out = env.run(&["audit", "asterisk", "--dir", data, "--json"], b"");
    assert_eq!(out.status.code(), Some(1), "exit 1: high findings");
    let cli: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stored: serde_json::Value =
        serde_json::from_str(&env.sql("SELECT findings FROM audit_runs")).unwrap();
    assert_eq!(stored, cli);

    // A bad interval is a configuration problem.
    let bad = format!(
        "{}\n[audit]\ninterval = \"10s\"\n",
        env.config_text(env.http_port, env.redirect_port, "")
    );
    env.write_config(&bad);
    let out = env.run(&["check-config"], b"");
    assert_eq!(out.status.code(), Some(64));
    assert!(
        text_of(&out).contains("audit.interval"),
        "{}",
        text_of(&out)
    );
}

fn text_of(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
