//! Login, sessions, the forward-auth check, history and throttling, end to end: the real
//! daemon over TLS, curl as the client, the CLI as a separate process.

mod common;
use common::*;

use std::time::{Duration, Instant};

use base64::Engine;
use hmac::Mac;

const PW: &str = "correct horse battery";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A started daemon with `[auth]` settings and routes, users alice (supervisor, 5),
/// bob (agent, 2) and root (admin, 9).
fn setup(auth: &str) -> (Env, Daemon) {
    let env = Env::new();
    let text = format!(
        "{}\ntrusted_proxies = [\"127.0.0.1/32\"]\n[auth]\n{auth}\n[auth.routes]\n\"/monitoring\" = \"supervisor\"\n\"/admin\" = \"admin\"\n",
        env.config_text(env.http_port, env.redirect_port, "")
    );
    env.write_config(&text);
    env.init();
    env.add_user("alice", 5, PW);
    env.add_user("bob", 2, PW);
    env.add_user("root", 9, PW);
    let d = env.start();
    (env, d)
}

fn claims_of(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("three parts");
    serde_json::from_slice(&B64.decode(payload).expect("base64url")).expect("JSON claims")
}

/// The current JWT signing key (kid, bytes), read through the CLI like an attacker with vault
/// access would — used to prove that a *validly signed* token still needs its session.
fn signing_key(env: &Env) -> (String, Vec<u8>) {
    let list: serde_json::Value =
        serde_json::from_slice(&env.ok(&["secret", "list", "--json"], b"")).unwrap();
    let name = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .find(|n| n.starts_with("keys/jwt/"))
        .unwrap();
    let key = env.ok(&["secret", "get", &name], b"");
    (name["keys/jwt/".len()..].to_string(), key)
}

fn sign(header: &str, payload: &str, key: &[u8]) -> String {
    let input = format!("{}.{}", B64.encode(header), B64.encode(payload));
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", B64.encode(mac.finalize().into_bytes()))
}

fn history(env: &Env, user: &str) -> Vec<serde_json::Value> {
    let out = env.ok(&["history", "--user", user, "--json"], b"");
    serde_json::from_slice::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn login_issues_a_session_token_and_cookie() {
    let (env, d) = setup("");
    let r = env.login("alice", PW, &[]);
    assert_eq!(r.status, 200, "{r:?}");
    let body = r.json();
    assert_eq!(body["status"], "ok");
    assert_eq!(
        body["user"],
        serde_json::json!({"name": "alice", "level": 5, "role": "supervisor"})
    );
    let token = body["token"].as_str().unwrap();
    let claims = claims_of(token);
    for field in ["sub", "lvl", "role", "sid", "iat", "exp", "iss", "aud"] {
        assert!(!claims[field].is_null(), "claim {field} missing: {claims}");
    }
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["lvl"], 5);
    let sid = claims["sid"].as_str().unwrap();
    assert_eq!(sid.len(), 32, "128-bit session id");
    let header: serde_json::Value =
        serde_json::from_slice(&B64.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
    assert_eq!(header["alg"], "HS256");
    assert!(header["kid"].is_string());
    // 12 h absolute lifetime by default.
    let exp = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(exp, 12 * 3600);

    let cookie = r.header("set-cookie").unwrap();
    assert!(
        cookie.starts_with(&format!("pbxguard_session={token};")),
        "{cookie}"
    );
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attr), "{attr} missing in {cookie}");
    }
    assert_eq!(
        env.sql(&format!("SELECT u.name || ' ' || s.ip FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = '{sid}'")),
        "alice 127.0.0.1"
    );
    // The cookie alone authenticates too.
    let r = env.request(
        "GET",
        "/api/v1/me",
        &[&format!("Cookie: other=1; pbxguard_session={token}")],
        None,
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["session"]["id"], sid);
    assert_eq!(history(&env, "alice")[0]["result"], "ok");
    // Every store operation hands its connection back clean (none closed for coming back
    // inside a transaction, which on PostgreSQL once hit every connection).
    assert!(
        !d.log().contains("came back inside a transaction"),
        "{}",
        d.log()
    );
}

#[test]
fn unknown_users_and_wrong_passwords_look_the_same() {
    let (env, _d) = setup("");
    let timed = |name: &str, pw: &str| {
        let start = Instant::now();
        let r = env.login(name, pw, &[]);
        (r, start.elapsed())
    };
    let mut unknown = Vec::new();
    let mut wrong = Vec::new();
    for i in 0..3 {
        let (a, ta) = timed(&format!("nobody{i}"), "whatever password");
        let (b, tb) = timed("alice", "wrong password!");
        assert_eq!(a.status, 401);
        assert_eq!(a.status, b.status);
        assert_eq!(a.body, b.body, "bodies differ");
        assert_eq!(a.json()["error"], "invalid_credentials");
        unknown.push(ta);
        wrong.push(tb);
    }
    unknown.sort();
    wrong.sort();
    // Both pay for an argon2 verification (tens of ms); an unknown user is not answered early.
    assert!(
        unknown[1] * 10 > wrong[1] * 7,
        "unknown {unknown:?} vs wrong {wrong:?}"
    );
    let results: Vec<String> = history(&env, "alice")
        .iter()
        .map(|h| h["result"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(results, vec!["bad_password"; 3]);
    assert_eq!(history(&env, "nobody0")[0]["result"], "unknown_user");
}

#[test]
fn disabled_users_are_refused_and_their_sessions_end() {
    let (env, _d) = setup("");
    let token = env.token("bob", PW);
    assert_eq!(env.check(&token, &[]).status, 200);
    env.ok(&["user", "disable", "bob"], b"");
    assert_eq!(
        env.check(&token, &[]).status,
        401,
        "disabling ends sessions at once"
    );
    let r = env.login("bob", PW, &[]);
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "account_disabled");
    assert_eq!(
        env.login("bob", "not the password", &[]).status,
        401,
        "no hint without the password"
    );
    assert_eq!(history(&env, "bob")[1]["result"], "disabled");
    env.ok(&["user", "enable", "bob"], b"");
    assert_eq!(env.login("bob", PW, &[]).status, 200);
}

#[test]
fn level_and_password_changes_end_sessions_from_another_process() {
    let (env, _d) = setup("");
    let token = env.token("bob", PW);
    assert_eq!(env.check(&token, &[]).status, 200);
    env.ok(&["user", "set-level", "bob", "6"], b"");
    assert_eq!(env.check(&token, &[]).status, 401);
    let token = env.token("bob", PW);
    assert_eq!(claims_of(&token)["role"], "supervisor");
    env.ok(
        &["user", "passwd", "bob", "--password-stdin"],
        b"another long password\n",
    );
    assert_eq!(env.check(&token, &[]).status, 401);
    assert_eq!(env.login("bob", PW, &[]).status, 401);
    assert_eq!(env.login("bob", "another long password", &[]).status, 200);
}

#[test]
fn revocation_applies_on_the_very_next_request() {
    let (env, _d) = setup("");
    let a = env.token("alice", PW);
    let b = env.token("alice", PW);
    let sid_a = claims_of(&a)["sid"].as_str().unwrap().to_string();
    assert_eq!(env.check(&a, &[]).status, 200);
    let list: serde_json::Value =
        serde_json::from_slice(&env.ok(&["session", "list", "--user", "alice", "--json"], b""))
            .unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    for field in [
        "id",
        "user",
        "created_at",
        "last_seen",
        "ip",
        "user_agent",
        "expires_at",
    ] {
        assert!(list[0][field].is_string(), "{field}: {}", list[0]);
    }
    env.ok(&["session", "revoke", &sid_a], b"");
    assert_eq!(env.check(&a, &[]).status, 401, "revoked by the CLI");
    assert_eq!(env.check(&b, &[]).status, 200, "other sessions live on");
    env.ok(&["session", "revoke", "--user", "alice"], b"");
    assert_eq!(env.check(&b, &[]).status, 401);
    let out = env.run(&["session", "revoke", "0123"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("no live session"));
}

#[test]
fn admin_api_lists_and_revokes_and_needs_the_admin_role() {
    let (env, _d) = setup("");
    let admin = env.token("root", PW);
    let alice = env.token("alice", PW);
    let bob = env.token("bob", PW);
    let auth = |t: &str| format!("Authorization: Bearer {t}");

    assert_eq!(
        env.request("GET", "/api/v1/admin/sessions", &[&auth(&alice)], None)
            .status,
        403
    );
    assert_eq!(
        env.request("GET", "/api/v1/admin/sessions", &[], None)
            .status,
        401
    );
    let r = env.request(
        "GET",
        "/api/v1/admin/sessions?user=bob",
        &[&auth(&admin)],
        None,
    );
    assert_eq!(r.status, 200, "{r:?}");
    let list = r.json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["user"], "bob");
    let sid = claims_of(&bob)["sid"].as_str().unwrap().to_string();
    assert_eq!(list[0]["id"], sid.as_str());

    let r = env.request(
        "DELETE",
        &format!("/api/v1/admin/sessions/{sid}"),
        &[&auth(&admin)],
        None,
    );
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(env.check(&bob, &[]).status, 401);
    let r = env.request(
        "DELETE",
        &format!("/api/v1/admin/sessions/{sid}"),
        &[&auth(&admin)],
        None,
    );
    assert_eq!(r.status, 404);

    let r = env.request(
        "DELETE",
        "/api/v1/admin/users/alice/sessions",
        &[&auth(&admin)],
        None,
    );
    assert_eq!(r.json()["revoked"], 1);
    assert_eq!(env.check(&alice, &[]).status, 401);
    assert_eq!(
        env.request(
            "DELETE",
            "/api/v1/admin/users/ghost/sessions",
            &[&auth(&admin)],
            None
        )
        .status,
        404
    );

    let r = env.request(
        "GET",
        "/api/v1/admin/login-history?user=alice&limit=5",
        &[&auth(&admin)],
        None,
    );
    assert_eq!(r.status, 200);
    let h = r.json();
    for field in ["at", "user", "ip", "user_agent", "result"] {
        assert!(h[0][field].is_string(), "{field}: {h}");
    }
    for bad in ["limit=0", "limit=5000", "limit=abc", "bogus=1"] {
        let r = env.request(
            "GET",
            &format!("/api/v1/admin/login-history?{bad}"),
            &[&auth(&admin)],
            None,
        );
        assert_eq!(r.status, 400, "{bad}: {r:?}");
    }
    let audit = env
        .sql("SELECT actor || ' ' || action FROM audit_log WHERE actor LIKE 'api:%' ORDER BY id");
    assert_eq!(
        audit,
        "api:root session.revoke\napi:root session.revoke-user"
    );
}

#[test]
fn logout_revokes_and_clears_the_cookie() {
    let (env, _d) = setup("");
    let token = env.token("alice", PW);
    let r = env.request(
        "POST",
        "/api/v1/auth/logout",
        &[&format!("Authorization: Bearer {token}")],
        None,
    );
    assert_eq!(r.status, 204, "{r:?}");
    assert!(r
        .header("set-cookie")
        .unwrap()
        .contains("pbxguard_session=; HttpOnly"));
    assert_eq!(env.check(&token, &[]).status, 401);
    assert_eq!(
        env.request(
            "POST",
            "/api/v1/auth/logout",
            &[&format!("Authorization: Bearer {token}")],
            None
        )
        .status,
        401
    );
    assert_eq!(history(&env, "alice")[0]["result"], "logout");
}

#[test]
fn check_enforces_least_roles_from_every_source() {
    let (env, _d) = setup("");
    let agent = env.token("bob", PW);
    let sup = env.token("alice", PW);
    let admin = env.token("root", PW);

    let r = env.request("GET", "/api/v1/auth/check", &[], None);
    assert_eq!(r.status, 401, "no token");
    let r = env.check(&sup, &["X-Original-URI: /monitoring/queues"]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-auth-user").as_deref(), Some("alice"));
    assert_eq!(r.header("x-auth-level").as_deref(), Some("5"));
    assert_eq!(r.header("x-auth-role").as_deref(), Some("supervisor"));
    assert_eq!(
        r.header("x-auth-session"),
        claims_of(&sup)["sid"].as_str().map(String::from)
    );

    for (token, uri, want) in [
        (&agent, "/monitoring/queues", 403),
        (&agent, "/agent/home", 200),
        (&agent, "/admin/../monitoring", 403),
        (&agent, "/agent/..%2fmonitoring", 403),
        (&agent, "/agent/%2e%2e/monitoring", 403),
        (&agent, "//monitoring", 403),
        (&agent, "/agent/./../admin/users?x=/agent", 403),
        (&agent, "/MONITORING/queues", 403),
        (&sup, "/admin", 403),
        (&sup, "/monitoring/../admin/x", 403),
        (&admin, "/admin/x", 200),
        (&admin, "/monitoring", 200),
    ] {
        let r = env.check(token, &[&format!("X-Original-URI: {uri}")]);
        assert_eq!(r.status, want, "{uri} for {}", claims_of(token)["sub"]);
    }
    assert_eq!(
        env.check(&agent, &["X-Required-Role: supervisor"]).status,
        403
    );
    assert_eq!(
        env.check(&sup, &["X-Required-Role: supervisor"]).status,
        200
    );
    assert_eq!(env.check(&sup, &["X-Required-Role: overlord"]).status, 403);
    // The strictest requirement wins: a header can raise what a route needs, never lower it.
    assert_eq!(
        env.check(
            &agent,
            &["X-Required-Role: agent", "X-Original-URI: /monitoring/x"]
        )
        .status,
        403
    );
    assert_eq!(
        env.check(
            &sup,
            &["X-Required-Role: admin", "X-Original-URI: /monitoring/x"]
        )
        .status,
        403
    );
    // Every copy counts, in either order: a client's own copy placed before the proxy's
    // cannot lower the requirement (found by the check_request fuzz target).
    for headers in [
        [
            "X-Original-URI: /monitoring/x",
            "X-Original-URI: /admin/users",
        ],
        [
            "X-Original-URI: /admin/users",
            "X-Original-URI: /monitoring/x",
        ],
        ["X-Required-Role: agent", "X-Required-Role: admin"],
    ] {
        assert_eq!(env.check(&sup, &headers).status, 403, "{headers:?}");
    }
    let q = |t: &str, role: &str| {
        env.request(
            "GET",
            &format!("/api/v1/auth/check?role={role}"),
            &[&format!("Authorization: Bearer {t}")],
            None,
        )
    };
    assert_eq!(q(&agent, "manager").status, 403);
    assert_eq!(q(&admin, "manager").status, 200);
    assert_eq!(q(&admin, "%61dmin").status, 200);
    assert_eq!(q(&admin, "%ff").status, 403);
    let m = env.request("GET", "/metrics", &[], None).body;
    assert!(
        m.contains("pbxguard_auth_checks_total{status=\"403\"}"),
        "{m}"
    );
}

#[test]
fn bad_tokens_never_get_in_and_never_cause_a_5xx() {
    let (env, d) = setup("");
    let good = env.token("bob", PW);
    let claims = claims_of(&good);
    let (kid, key) = signing_key(&env);
    let now = claims["iat"].as_i64().unwrap();
    let hdr = |alg: &str, kid: &str| format!(r#"{{"alg":"{alg}","typ":"JWT","kid":"{kid}"}}"#);
    let payload = |lvl: u64, role: &str, exp: &str| {
        format!(
            r#"{{"sub":"bob","lvl":{lvl},"role":"{role}","sid":"{}","iat":{now},"nbf":{now},"exp":{exp},"iss":"pbxguard","aud":"pbxguard-web"}}"#,
            claims["sid"].as_str().unwrap()
        )
    };
    let valid_exp = (now + 3600).to_string();
    let parts: Vec<&str> = good.split('.').collect();
    let mut tokens: Vec<(String, String)> = vec![
        ("garbage".into(), "garbage".into()),
        ("empty".into(), String::new()),
        ("10 kB".into(), "a".repeat(10_000)),
        (
            "changed lvl, old signature".into(),
            format!(
                "{}.{}.{}",
                parts[0],
                B64.encode(payload(9, "admin", &valid_exp)),
                parts[2]
            ),
        ),
        (
            "validly signed, lvl differs from the session".into(),
            sign(&hdr("HS256", &kid), &payload(9, "admin", &valid_exp), &key),
        ),
        (
            "exp as a string".into(),
            sign(
                &hdr("HS256", &kid),
                &payload(2, "agent", &format!("\"{valid_exp}\"")),
                &key,
            ),
        ),
        (
            "exp 1e309".into(),
            sign(&hdr("HS256", &kid), &payload(2, "agent", "1e309"), &key),
        ),
        (
            "kid with a path".into(),
            sign(
                &hdr("HS256", "../../master.key"),
                &payload(2, "agent", &valid_exp),
                &key,
            ),
        ),
        (
            "kid with SQL".into(),
            sign(
                &hdr("HS256", "x' OR '1'='1"),
                &payload(2, "agent", &valid_exp),
                &key,
            ),
        ),
    ];
    for alg in [
        "none", "None", "NONE", "nOnE", "HS512", "HS384", "RS256", "ES256",
    ] {
        tokens.push((
            format!("alg {alg}"),
            sign(&hdr(alg, &kid), &payload(2, "agent", &valid_exp), &key),
        ));
        tokens.push((
            format!("alg {alg}, no signature"),
            format!(
                "{}.{}.",
                B64.encode(hdr(alg, &kid)),
                B64.encode(payload(2, "agent", &valid_exp))
            ),
        ));
    }
    // Sanity: the forging helper makes tokens the daemon accepts when nothing is wrong.
    let honest = sign(&hdr("HS256", &kid), &payload(2, "agent", &valid_exp), &key);
    assert_eq!(env.check(&honest, &[]).status, 200, "forge helper broken");
    for (what, token) in &tokens {
        let r = env.check(token, &[]);
        assert_eq!(r.status, 401, "{what}: {r:?}");
        let r = env.request(
            "GET",
            "/api/v1/auth/check",
            &[&format!("Cookie: pbxguard_session={token}")],
            None,
        );
        assert_eq!(r.status, 401, "{what} as cookie");
    }
    for h in [
        "Authorization: Bearer",
        "Authorization: Basic Ym9iOnB3",
        "Cookie: pbxguard_session",
        "Cookie: pbxguard_session=;",
    ] {
        let s = env.request("GET", "/api/v1/auth/check", &[h], None).status;
        assert!(s == 401, "{h}: {s}");
    }
    // A valid token of a revoked session.
    env.ok(&["session", "revoke", "--user", "bob"], b"");
    assert_eq!(env.check(&good, &[]).status, 401);
    assert_eq!(status(&env.curl_https("/healthz", &[])), 200);
    assert!(!d.log().contains("panicked"));
}

#[test]
fn sessions_expire_when_idle_and_at_their_maximum_lifetime() {
    // Times are whole seconds server-side, so every wait below has a second of margin.
    let (env, _d) = setup("session_idle_timeout = \"3s\"\nsession_max_lifetime = \"8s\"\n");
    let idle = env.token("alice", PW);
    let idle_since = Instant::now();
    let busy = env.token("alice", PW);
    let busy_since = Instant::now();
    // Checks every 700 ms, never after `deadline` (a check slept into past the deadline could
    // land after the 8 s maximum).
    let keep_busy_until = |deadline: Duration| loop {
        std::thread::sleep(Duration::from_millis(700));
        if busy_since.elapsed() >= deadline {
            break;
        }
        assert_eq!(
            env.check(&busy, &[]).status,
            200,
            "activity keeps a session alive"
        );
    };
    keep_busy_until(Duration::from_millis(4200));
    assert!(idle_since.elapsed() > Duration::from_millis(4100));
    assert_eq!(env.check(&idle, &[]).status, 401, "idle for over 3 s");
    keep_busy_until(Duration::from_millis(6500));
    // The token's exp equals the session's end: once that passes, the token is "expired by
    // a second" — within the JWT leeway, yet the session itself has ended.
    std::thread::sleep(Duration::from_millis(2700));
    assert_eq!(env.check(&busy, &[]).status, 401, "past the 8 s maximum");
}

#[test]
fn throttling_locks_accounts_and_ips_separately() {
    let (env, _d) =
        setup("lockout_threshold = 3\nlockout_window = \"1m\"\nlockout_duration = \"1m\"\n");
    let from = |ip: &str| format!("X-Forwarded-For: {ip}");
    for _ in 0..3 {
        assert_eq!(
            env.login("alice", "wrong password", &[&from("198.51.100.1")])
                .status,
            401
        );
    }
    // Locked: even the right password, and from another IP.
    let r = env.login("alice", PW, &[&from("198.51.100.2")]);
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.json()["error"], "too_many_attempts");
    let retry = r.json()["retry_after"].as_u64().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(r.header("retry-after"), Some(retry.to_string()));
    // Other accounts from other IPs are unaffected.
    assert_eq!(env.login("bob", PW, &[&from("198.51.100.2")]).status, 200);

    // One IP guessing many names is locked as an IP.
    for name in ["x1", "x2", "x3"] {
        assert_eq!(
            env.login(name, "guess guess", &[&from("203.0.113.66")])
                .status,
            401
        );
    }
    assert_eq!(env.login("root", PW, &[&from("203.0.113.66")]).status, 429);
    assert_eq!(env.login("root", PW, &[&from("203.0.113.67")]).status, 200);
    let h = history(&env, "alice");
    assert_eq!(h[0]["result"], "throttled");
    assert_eq!(
        h[0]["ip"], "198.51.100.2",
        "X-Forwarded-For from a trusted proxy"
    );
}

#[test]
fn forwarded_for_is_ignored_from_untrusted_peers() {
    let env = Env::new();
    env.init();
    env.add_user("alice", 5, PW);
    let _d = env.start(); // no trusted_proxies: loopback is not trusted here
    assert_eq!(
        env.login("alice", PW, &["X-Forwarded-For: 6.6.6.6"]).status,
        200
    );
    assert_eq!(history(&env, "alice")[0]["ip"], "127.0.0.1");
}

#[test]
fn malformed_login_requests_get_clear_errors() {
    let (env, d) = setup("");
    let json = "Content-Type: application/json";
    let post = |headers: &[&str], body: &str| {
        env.request("POST", "/api/v1/auth/login", headers, Some(body))
    };
    for (what, headers, body, want, code) in [
        (
            "malformed JSON",
            vec![json],
            "{\"username\": ",
            400,
            "invalid_json",
        ),
        (
            "wrong types",
            vec![json],
            r#"{"username": 1, "password": 123456789012}"#,
            400,
            "invalid_json",
        ),
        (
            "unknown field",
            vec![json],
            r#"{"username":"a","password":"b","admin":true}"#,
            400,
            "invalid_json",
        ),
        (
            "empty user name",
            vec![json],
            r#"{"username":"","password":"x"}"#,
            400,
            "invalid_request",
        ),
        (
            "wrong content type",
            vec!["Content-Type: text/plain"],
            r#"{"username":"a","password":"b"}"#,
            415,
            "unsupported_media_type",
        ),
    ] {
        let r = post(&headers, body);
        assert_eq!(r.status, want, "{what}: {r:?}");
        assert_eq!(r.json()["error"], code, "{what}");
        assert!(
            !r.body.contains("123456789012"),
            "the error echoes input: {}",
            r.body
        );
    }
    let long_name =
        serde_json::json!({"username": "a".repeat(10_000), "password": "x"}).to_string();
    assert_eq!(post(&[json], &long_name).status, 400);
    let nul = r#"{"username":"ali\u0000ce","password":"correct horse battery"}"#;
    assert_eq!(post(&[json], nul).status, 401);
    assert_eq!(
        env.sql("SELECT result FROM login_history WHERE username = 'ali\u{FFFD}ce'"),
        "unknown_user",
        "recorded, with the NUL replaced"
    );
    let huge =
        serde_json::json!({"username": "alice", "password": "x".repeat(200_000)}).to_string();
    let path = env.path("huge.json");
    std::fs::write(&path, huge).unwrap();
    // HTTP/1.1 with Expect: 100-continue, so the refusal arrives before curl sends the body.
    let out = env.post_expecting_continue("/api/v1/auth/login", &path, &[json]);
    assert_eq!(status(&out), 413, "{}", text(&out));
    assert!(
        text(&out).contains(r#""error":"payload_too_large""#),
        "{}",
        text(&out)
    );
    // Still serving, and still logging people in.
    assert_eq!(env.login("alice", PW, &[]).status, 200);
    assert!(!d.log().contains("panicked"));
}

#[test]
fn bad_user_commands_are_refused_clearly() {
    let env = Env::new();
    env.init();
    for (args, stdin, needle) in [
        (
            vec!["user", "add", "Alice", "--level", "5", "--password-stdin"],
            PW,
            "user name may only contain",
        ),
        (
            vec!["user", "add", "alice", "--level", "5", "--password-stdin"],
            "short",
            "at least 12",
        ),
        (
            vec!["user", "add", "alice", "--level", "10", "--password-stdin"],
            PW,
            "10",
        ),
        (
            vec![
                "user",
                "add",
                "alice",
                "--level",
                "5",
                "--email",
                "not-an-email",
                "--password-stdin",
            ],
            PW,
            "not an email",
        ),
        (
            vec!["user", "add", "alice", "--level", "5"],
            PW,
            "--password-stdin",
        ),
    ] {
        let out = env.run(&args, format!("{stdin}\n").as_bytes());
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(needle), "{args:?}: {}", text(&out));
    }
    env.add_user("alice", 5, PW);
    let out = env.run(
        &["user", "add", "alice", "--level", "5", "--password-stdin"],
        format!("{PW}\n").as_bytes(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("already exists"));
    let out = env.run(&["user", "set-level", "ghost", "3"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("does not exist"));
    let list: serde_json::Value =
        serde_json::from_slice(&env.ok(&["user", "list", "--json"], b"")).unwrap();
    assert_eq!(list[0]["name"], "alice");
    assert_eq!(list[0]["role"], "supervisor");
    assert!(!String::from_utf8_lossy(&env.ok(&["user", "list", "--json"], b"")).contains("argon2"));
}

#[test]
fn rotate_key_keeps_sessions_unless_logout_all_is_asked() {
    let (env, _d) = setup("");
    let token = env.token("alice", PW);
    env.ok(&["secret", "rotate-key"], b"");
    assert_eq!(
        env.check(&token, &[]).status,
        200,
        "a data-key rotation logs nobody out"
    );
    let old_kid = signing_key(&env).0;
    let out = String::from_utf8(env.ok(&["secret", "rotate-key", "--logout-all"], b"")).unwrap();
    assert!(out.contains("1 session(s) revoked"), "{out}");
    // New logins are signed with the new key at once (no request in between to notice it).
    let first = env.token("alice", PW);
    assert_eq!(env.check(&first, &[]).status, 200);
    assert_eq!(env.check(&token, &[]).status, 401);
    // New logins are signed with the new key, which the daemon picked up by itself.
    let fresh = env.token("alice", PW);
    let (new_kid, _) = signing_key(&env);
    assert_ne!(new_kid, old_kid);
    let header: serde_json::Value =
        serde_json::from_slice(&B64.decode(fresh.split('.').next().unwrap()).unwrap()).unwrap();
    assert_eq!(header["kid"], new_kid.as_str());
    assert_eq!(env.check(&fresh, &[]).status, 200);
}

#[test]
fn parallel_guesses_in_any_letter_case_cannot_outrun_the_lockout() {
    let (env, _d) =
        setup("lockout_threshold = 3\nlockout_window = \"1m\"\nlockout_duration = \"1m\"\n");
    let variants = [
        "alice", "ALICE", "Alice", "aLICE", "alIce", "aliCE", "ALice", "alicE", "AlIcE", "aLiCe",
        "ALICe", "aLIce",
    ];
    // Distinct client IPs, so only the account lock can stop them.
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = variants
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let env = &env;
                scope.spawn(move || {
                    env.login(
                        name,
                        "wrong password",
                        &[&format!("X-Forwarded-For: 198.51.100.{}", i + 10)],
                    )
                    .status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let guesses = statuses.iter().filter(|s| **s == 401).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(guesses + refused, variants.len(), "{statuses:?}");
    assert!(
        guesses <= 3,
        "{guesses} guesses got a verdict with lockout_threshold = 3: {statuses:?}"
    );
    let r = env.login("alice", PW, &["X-Forwarded-For: 198.51.100.99"]);
    assert_eq!(
        r.status, 429,
        "the account is locked for every case variant: {r:?}"
    );
    // The history shows every variant under `history --user alice`.
    assert_eq!(history(&env, "alice").len(), variants.len() + 1);
}

#[test]
fn every_error_has_the_json_shape() {
    let (env, _d) = setup("");
    let admin = env.token("root", PW);
    // A path parameter that is not valid UTF-8 once decoded: axum's own rejection, reshaped.
    let r = env.request(
        "DELETE",
        "/api/v1/admin/sessions/%ff",
        &[&format!("Authorization: Bearer {admin}")],
        None,
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.json()["error"], "bad_request");
}

#[test]
fn a_shift_logging_in_at_once_from_one_address_is_not_throttled() {
    let (env, _d) = setup("lockout_threshold = 3\n");
    let names: Vec<String> = (0..8).map(|i| format!("agent{i}")).collect();
    for n in &names {
        env.add_user(n, 2, PW);
    }
    // Everyone behind the same NAT address, all at once, more than lockout_threshold of them.
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = names
            .iter()
            .map(|n| {
                let env = &env;
                scope.spawn(move || env.login(n, PW, &["X-Forwarded-For: 203.0.113.5"]).status)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(statuses, vec![200; 8]);
}
