//! Two-factor authentication end to end: the real daemon, TOTP codes from Debian's `oathtool`,
//! emailed codes through a real SMTP server (aiosmtpd, with and without STARTTLS), the admin
//! policy through the API and the CLI.

mod common;
use common::smtp::Sink;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const PW: &str = "a long password";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The TOTP code `oathtool` computes for `secret` (base32) at now + `offset` seconds.
fn oathtool(secret: &str, offset: i64) -> String {
    let out = Command::new("oathtool")
        .args([
            "--totp",
            "-b",
            secret,
            "-N",
            &format!("@{}", now() + offset),
        ])
        .output()
        .expect("oathtool is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Login codes as the daemon mails them.
impl Sink {
    /// Waits for message number `n` (1-based) and returns its code.
    fn code(&self, n: usize) -> (String, String) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mails = self.mails();
            if mails.len() >= n {
                let m = mails[n - 1].clone();
                let code = m
                    .split("login code is ")
                    .nth(1)
                    .map(|r| r[..6].to_string())
                    .unwrap_or_else(|| panic!("no code in {m}"));
                return (code, m);
            }
            assert!(Instant::now() < deadline, "no mail number {n} arrived");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// POSTs every JSON body at once, one thread each; (status, body) in order.
fn post_all(env: &Env, path: &str, bodies: Vec<String>) -> Vec<(u16, String)> {
    let cert = env.cert().display().to_string();
    let url = format!("https://localhost:{}{path}", env.http_port);
    let handles: Vec<_> = bodies
        .into_iter()
        .map(|body| {
            let (cert, url) = (cert.clone(), url.clone());
            std::thread::spawn(move || {
                let out = curl(&[
                    "-sS",
                    "-w",
                    "\n%{http_code}",
                    "--cacert",
                    &cert,
                    "-H",
                    "Content-Type: application/json",
                    "--data-binary",
                    &body,
                    &url,
                ]);
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
                (status.trim().parse().unwrap_or(0), body.to_string())
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn json_post(env: &Env, path: &str, bearer: Option<&str>, body: serde_json::Value) -> Resp {
    let auth = bearer.map(|t| format!("Authorization: Bearer {t}"));
    let mut headers = vec!["Content-Type: application/json"];
    if let Some(a) = &auth {
        headers.push(a);
    }
    env.request("POST", path, &headers, Some(&body.to_string()))
}

fn mfa(env: &Env, token: &str, method: &str, code: &str) -> Resp {
    json_post(
        env,
        "/api/v1/auth/mfa",
        None,
        serde_json::json!({ "mfa_token": token, "method": method, "code": code }),
    )
}

/// A daemon with `[mfa]`/`[smtp]` settings (`extra` goes after `[http]`).
fn setup(extra: &str) -> (Env, Daemon) {
    let env = Env::new();
    env.write_config(&env.config_text(env.http_port, env.redirect_port, extra));
    env.init();
    let d = env.start();
    (env, d)
}

/// Logs `name` in with a session and enrolls TOTP through the API; returns the secret.
fn enroll_with_session(env: &Env, name: &str) -> String {
    let jwt = env.token(name, PW);
    let e = json_post(
        env,
        "/api/v1/auth/totp/enroll",
        Some(&jwt),
        serde_json::json!({}),
    );
    assert_eq!(e.status, 200, "{e:?}");
    let secret = e.json()["secret"].as_str().unwrap().to_string();
    let c = json_post(
        env,
        "/api/v1/auth/totp/confirm",
        Some(&jwt),
        serde_json::json!({ "code": oathtool(&secret, 0) }),
    );
    assert_eq!(c.status, 200, "{c:?}");
    secret
}

#[test]
fn totp_enrollment_then_logins_with_single_use_codes() {
    let (env, d) = setup("");
    env.add_user("alice", 5, PW);
    let jwt = env.token("alice", PW);

    let e = json_post(
        &env,
        "/api/v1/auth/totp/enroll",
        Some(&jwt),
        serde_json::json!({}),
    );
    assert_eq!(e.status, 200, "{e:?}");
    let v = e.json();
    let secret = v["secret"].as_str().unwrap().to_string();
    assert_eq!(secret.len(), 32, "160 bits in base32");
    assert!(secret
        .bytes()
        .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)));
    assert_eq!(
        v["otpauth_uri"],
        format!("otpauth://totp/pbxguard:alice?secret={secret}&issuer=pbxguard&algorithm=SHA1&digits=6&period=30")
    );
    assert!(v["qr_svg"].as_str().unwrap().contains("<svg"));
    assert_eq!(e.header("cache-control").as_deref(), Some("no-store"));
    // Stored encrypted, pending until confirmed.
    let rows = env.sql("SELECT name FROM secrets WHERE name LIKE 'mfa/%'");
    assert!(rows.starts_with("mfa/totp-pending/"), "{rows}");
    let hex = if env.is_postgres() {
        "upper(encode(ciphertext, 'hex'))"
    } else {
        "hex(ciphertext)"
    };
    let raw = env.sql(&format!(
        "SELECT {hex} FROM secrets WHERE name LIKE 'mfa/totp-pending/%'"
    ));
    assert!(!raw.is_empty() && !raw.contains(&hex_of_base32(&secret)));
    // Until confirmed, logins need the password only.
    assert_eq!(env.login("alice", PW, &[]).json()["status"], "ok");

    let wrong = json_post(
        &env,
        "/api/v1/auth/totp/confirm",
        Some(&jwt),
        serde_json::json!({ "code": "000000" }),
    );
    assert_eq!(wrong.status, 401);
    let confirming = oathtool(&secret, 0);
    let ok = json_post(
        &env,
        "/api/v1/auth/totp/confirm",
        Some(&jwt),
        serde_json::json!({ "code": confirming }),
    );
    assert_eq!(ok.status, 200, "{ok:?}");

    // Now the password alone is not enough.
    let r = env.login("alice", PW, &[]);
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["status"], "mfa_required");
    assert_eq!(j["methods"], serde_json::json!(["totp", "recovery"]));
    assert!(j.get("token").is_none());
    let token = j["mfa_token"].as_str().unwrap().to_string();
    // The mfa_token is no session.
    assert_eq!(env.check(&token, &[]).status, 401);
    // The confirming code is spent.
    let reused = mfa(&env, &token, "totp", &confirming);
    assert_eq!(
        (reused.status, reused.json()["error"].as_str()),
        (401, Some("invalid_code"))
    );
    // Two steps ahead is outside the window.
    assert_eq!(
        mfa(&env, &token, "totp", &oathtool(&secret, 60)).status,
        401
    );
    // Malformed codes: a clear 400.
    for bad in [
        " 12345",
        "12345 ",
        "+12345",
        "12345",
        "1234567",
        "１２３４５６",
        "12 345",
        "abcdef",
    ] {
        let r = mfa(&env, &token, "totp", bad);
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (400, Some("bad_code")),
            "{bad:?}"
        );
    }
    // The next step's code (within the ±1 window) completes the login.
    let next = oathtool(&secret, 30);
    let done = mfa(&env, &token, "totp", &next);
    assert_eq!(done.status, 200, "{done:?}");
    let session = done.json()["token"].as_str().unwrap().to_string();
    assert_eq!(env.check(&session, &[]).status, 200);
    assert!(done
        .header("set-cookie")
        .unwrap()
        .starts_with("pbxguard_session="));
    // The mfa_token is used up, and the code too (for a new login).
    assert_eq!(mfa(&env, &token, "totp", &next).status, 401);
    let again = env.login("alice", PW, &[]).json()["mfa_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(mfa(&env, &again, "totp", &next).status, 401);
    // Unknown and foreign tokens.
    assert_eq!(
        mfa(
            &env,
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "totp",
            &next
        )
        .json()["error"],
        "invalid_mfa_token"
    );
    assert_eq!(
        mfa(&env, &session, "totp", &next).status,
        401,
        "a JWT is not an mfa_token"
    );
    let history = env.sql("SELECT result FROM login_history WHERE username = 'alice' ORDER BY id");
    assert!(history.contains("mfa_failed"), "{history}");
    assert!(!d.log().contains(&secret), "the secret is never logged");
}

/// What the base32 secret's bytes look like in hex, to search a ciphertext for them.
fn hex_of_base32(b32: &str) -> String {
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bits = 0u64;
    let mut n = 0;
    let mut out = String::new();
    for c in b32.chars() {
        bits = (bits << 5) | alphabet.find(c).unwrap() as u64;
        n += 5;
        if n >= 8 {
            n -= 8;
            out.push_str(&format!("{:02X}", (bits >> n) & 0xff));
        }
    }
    out
}

#[test]
fn the_same_code_in_parallel_wins_exactly_once() {
    let (env, _d) = setup("");
    env.add_user("bob", 2, PW);
    let secret = enroll_with_session(&env, "bob");
    // Two logins waiting, one code (the next step's, so the confirming one is not in the way).
    let tokens: Vec<String> = (0..4)
        .map(|_| {
            env.login("bob", PW, &[]).json()["mfa_token"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let code = oathtool(&secret, 30);
    let bodies = tokens
        .iter()
        .map(|t| serde_json::json!({ "mfa_token": t, "method": "totp", "code": code }).to_string())
        .collect();
    let codes: Vec<String> = post_all(&env, "/api/v1/auth/mfa", bodies)
        .into_iter()
        .map(|(status, _)| status.to_string())
        .collect();
    assert_eq!(codes.iter().filter(|c| *c == "200").count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| *c == "401").count(), 3, "{codes:?}");
}

#[test]
fn wrong_codes_void_the_login_and_lock_the_account() {
    let (env, _d) = setup("[auth]\nlockout_threshold = 6\n[mfa]\nmax_code_failures = 3\n");
    env.add_user("carol", 2, PW);
    let _secret = enroll_with_session(&env, "carol");
    let token = env.login("carol", PW, &[]).json()["mfa_token"]
        .as_str()
        .unwrap()
        .to_string();
    for _ in 0..3 {
        assert_eq!(
            mfa(&env, &token, "totp", "000000").json()["error"],
            "invalid_code"
        );
    }
    assert_eq!(
        mfa(&env, &token, "totp", "000000").json()["error"],
        "invalid_mfa_token",
        "void after 3"
    );
    let token = env.login("carol", PW, &[]).json()["mfa_token"]
        .as_str()
        .unwrap()
        .to_string();
    for _ in 0..3 {
        mfa(&env, &token, "totp", "111111");
    }
    // Six second-factor failures: the account is locked, even for the right password.
    let r = env.login("carol", PW, &[]);
    assert_eq!(r.status, 429, "{r:?}");
    let fails = env.sql(
        "SELECT count(*) FROM login_history WHERE username = 'carol' AND result = 'mfa_failed'",
    );
    assert_eq!(fails, "6");
}

#[test]
fn forced_enrollment_exemptions_and_resets() {
    let (env, _d) = setup("");
    env.add_user("root", 9, PW);
    env.add_user("dave", 3, PW);
    env.add_user("erin", 3, PW);
    let admin = env.token("root", PW);
    let agent = env.token("dave", PW);
    let auth = format!("Authorization: Bearer {admin}");
    let put = env.request(
        "PUT",
        "/api/v1/admin/mfa/policy",
        &[&auth, "Content-Type: application/json"],
        Some(r#"{"force":true}"#),
    );
    assert_eq!(put.status, 200, "{put:?}");
    assert_eq!(put.json()["force"], true);
    let denied = env.request(
        "PUT",
        "/api/v1/admin/mfa/policy",
        &[
            &format!("Authorization: Bearer {agent}"),
            "Content-Type: application/json",
        ],
        Some(r#"{"force":false}"#),
    );
    assert_eq!(denied.status, 403);

    // dave has no TOTP and no email: enrollment only.
    let r = env.login("dave", PW, &[]).json();
    assert_eq!(r["status"], "enroll_required");
    assert!(
        r.get("mfa_token").is_none() && r.get("token").is_none(),
        "{r}"
    );
    let enroll = r["enroll_token"].as_str().unwrap().to_string();
    // The enroll_token opens nothing else.
    assert_eq!(env.check(&enroll, &[]).status, 401);
    assert_eq!(
        env.request(
            "GET",
            "/api/v1/me",
            &[&format!("Authorization: Bearer {enroll}")],
            None
        )
        .status,
        401
    );
    let e = json_post(
        &env,
        "/api/v1/auth/totp/enroll",
        Some(&enroll),
        serde_json::json!({}),
    );
    assert_eq!(e.status, 200);
    let secret = e.json()["secret"].as_str().unwrap().to_string();
    let done = json_post(
        &env,
        "/api/v1/auth/totp/confirm",
        Some(&enroll),
        serde_json::json!({ "code": oathtool(&secret, 0) }),
    );
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(done.json()["status"], "ok", "confirming finishes the login");
    let dave_session = done.json()["token"].as_str().unwrap().to_string();
    assert_eq!(env.check(&dave_session, &[]).status, 200);
    // Used up.
    assert_eq!(
        json_post(
            &env,
            "/api/v1/auth/totp/enroll",
            Some(&enroll),
            serde_json::json!({})
        )
        .status,
        401
    );

    // An exemption lets erin in with the password alone, until it is lifted.
    let ex = env.request(
        "POST",
        "/api/v1/admin/users/erin/mfa/exempt",
        &[&auth, "Content-Type: application/json"],
        Some(&format!(r#"{{"until":"{}"}}"#, rfc3339(now() + 3600))),
    );
    assert_eq!(ex.status, 200, "{ex:?}");
    assert_eq!(env.login("erin", PW, &[]).json()["status"], "ok");
    let status = env
        .request("GET", "/api/v1/admin/mfa", &[&auth], None)
        .json();
    let row = |u: &str| {
        status
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["user"] == u)
            .unwrap()
            .clone()
    };
    assert_eq!(row("dave")["method"], "totp");
    assert!(row("dave")["enrolled_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(row("erin")["method"], "none");
    assert!(row("erin")["exempt_until"].is_string());
    env.ok(&["mfa", "unexempt", "erin"], b"");
    assert_eq!(
        env.login("erin", PW, &[]).json()["status"],
        "enroll_required"
    );
    let past = env.request(
        "POST",
        "/api/v1/admin/users/erin/mfa/exempt",
        &[&auth, "Content-Type: application/json"],
        Some(r#"{"until":"2001-01-01T00:00:00Z"}"#),
    );
    assert_eq!(past.status, 400);

    // Reset: TOTP gone, sessions ended, enrollment again.
    let reset = env.request("POST", "/api/v1/admin/users/dave/mfa/reset", &[&auth], None);
    assert_eq!(reset.status, 200, "{reset:?}");
    assert_eq!(env.check(&dave_session, &[]).status, 401);
    assert_eq!(
        env.login("dave", PW, &[]).json()["status"],
        "enroll_required"
    );
    let audit = env.sql("SELECT action FROM audit_log WHERE action LIKE 'mfa.%' ORDER BY id");
    for a in [
        "mfa.policy",
        "mfa.totp.confirm",
        "mfa.exempt",
        "mfa.unexempt",
        "mfa.reset",
    ] {
        assert!(audit.lines().any(|l| l == a), "{a} missing: {audit}");
    }

    // The CLI sees and changes the same state.
    let cli: serde_json::Value =
        serde_json::from_slice(&env.ok(&["mfa", "status", "--json"], b"")).unwrap();
    assert!(cli
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["user"] == "dave" && r["method"] == "none"));
    let out = String::from_utf8(env.ok(&["mfa", "policy", "--force", "off"], b"")).unwrap();
    assert!(out.contains("force enrollment: off"));
    assert_eq!(env.login("dave", PW, &[]).json()["status"], "ok");
    env.ok(&["mfa", "exempt", "erin", "--for", "2d"], b"");
    assert_eq!(
        env.run(&["mfa", "exempt", "erin", "--for", "400d"], b"")
            .status
            .code(),
        Some(64)
    );
    assert_eq!(
        env.run(&["mfa", "reset", "nobody"], b"").status.code(),
        Some(1)
    );
}

fn rfc3339(t: i64) -> String {
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{t}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A CA and a server certificate for 127.0.0.1 signed by it: (ca.pem, cert.pem, key.pem).
fn private_ca(env: &Env) -> (PathBuf, PathBuf, PathBuf) {
    let p = |n: &str| env.path(n);
    std::fs::write(
        p("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(env.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut a = vec!["req", "-x509"];
    a.extend(ec);
    a.extend([
        "-days",
        "2",
        "-subj",
        "/CN=pbxguard test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&a);
    let mut a = vec!["req"];
    a.extend(ec);
    a.extend([
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "smtp-key.pem",
        "-out",
        "smtp.csr",
    ]);
    run(&a);
    run(&[
        "x509",
        "-req",
        "-in",
        "smtp.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
        "-out",
        "smtp-cert.pem",
    ]);
    (p("ca.pem"), p("smtp-cert.pem"), p("smtp-key.pem"))
}

fn smtp_config(port: u16, starttls: &str, ca: Option<&Path>) -> String {
    let ca = ca
        .map(|p| format!("ca_file = \"{}\"\n", p.display()))
        .unwrap_or_default();
    format!(
        "[smtp]\nhost = \"127.0.0.1\"\nport = {port}\nstarttls = \"{starttls}\"\nfrom = \"pbxguard@pbx.example.com\"\ntimeout = \"3s\"\n{ca}"
    )
}

#[test]
fn emailed_codes_finish_a_forced_login() {
    let env = Env::new();
    let sink = Sink::start(env.path("mail"), None);
    let extra = format!(
        "{}\n[mfa]\nemail_resend_interval = \"2s\"\n",
        smtp_config(sink.port, "none", None)
    );
    env.write_config(&env.config_text(env.http_port, env.redirect_port, &extra));
    env.init();
    let _d = env.start();
    env.ok(
        &[
            "user",
            "add",
            "fred",
            "--level",
            "3",
            "--email",
            "fred@example.com",
            "--password-stdin",
        ],
        format!("{PW}\n").as_bytes(),
    );
    env.ok(&["mfa", "policy", "--force", "on"], b"");

    let r = env.login("fred", PW, &[]).json();
    assert_eq!(r["status"], "enroll_required");
    assert_eq!(r["methods"], serde_json::json!(["email"]));
    let token = r["mfa_token"].as_str().unwrap().to_string();
    let sent = json_post(
        &env,
        "/api/v1/auth/mfa/email",
        None,
        serde_json::json!({ "mfa_token": token }),
    );
    assert_eq!(sent.status, 202, "{sent:?}");
    let (code, mail) = sink.code(1);
    assert!(mail.contains("X-Test-Rcpt: fred@example.com"), "{mail}");
    assert!(mail.contains("From: pbxguard@pbx.example.com"), "{mail}");
    // Rate-limited resends.
    let again = json_post(
        &env,
        "/api/v1/auth/mfa/email",
        None,
        serde_json::json!({ "mfa_token": token }),
    );
    assert_eq!(again.status, 429);
    // A TOTP attempt with an email-only token is refused clearly.
    assert_eq!(
        mfa(&env, &token, "totp", &code).json()["error"],
        "method_not_allowed"
    );
    // The code is stored only as a keyed hash.
    let stored =
        env.sql("SELECT email_code_hash FROM mfa_pending WHERE email_code_hash IS NOT NULL");
    assert!(!stored.contains(&code) && stored.len() == 64, "{stored}");
    let done = mfa(&env, &token, "email", &code);
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(
        env.check(done.json()["token"].as_str().unwrap(), &[])
            .status,
        200
    );
    assert_eq!(mfa(&env, &token, "email", &code).status, 401, "single use");

    // Three wrong tries void a code; a newer code replaces the old one.
    let token = env.login("fred", PW, &[]).json()["mfa_token"]
        .as_str()
        .unwrap()
        .to_string();
    json_post(
        &env,
        "/api/v1/auth/mfa/email",
        None,
        serde_json::json!({ "mfa_token": token }),
    );
    let (first, _) = sink.code(2);
    std::thread::sleep(Duration::from_millis(2100));
    json_post(
        &env,
        "/api/v1/auth/mfa/email",
        None,
        serde_json::json!({ "mfa_token": token }),
    );
    let (second, _) = sink.code(3);
    if first != second {
        assert_eq!(
            mfa(&env, &token, "email", &first).status,
            401,
            "the older code is void"
        );
    }
    let wrong = if second == "000000" {
        "000001"
    } else {
        "000000"
    };
    for _ in 0..2 {
        assert_eq!(mfa(&env, &token, "email", wrong).status, 401);
    }
    // (3 failures so far when the first code differed; void now either way after one more.)
    assert_eq!(mfa(&env, &token, "email", wrong).status, 401);
    assert_eq!(
        mfa(&env, &token, "email", &second).status,
        401,
        "void after 3 wrong tries"
    );
}

/// W9: at most 5 codes are mailed for one login, however long the client waits between them;
/// the sixth request is refused with its reason and nothing more is sent.
#[test]
fn at_most_five_codes_are_mailed_for_one_login() {
    let env = Env::new();
    let sink = Sink::start(env.path("mail"), None);
    let extra = format!(
        "{}\n[mfa]\nemail_resend_interval = \"1s\"\n",
        smtp_config(sink.port, "none", None)
    );
    env.write_config(&env.config_text(env.http_port, env.redirect_port, &extra));
    env.init();
    let _d = env.start();
    env.ok(
        &[
            "user",
            "add",
            "gina",
            "--level",
            "3",
            "--email",
            "gina@example.com",
            "--password-stdin",
        ],
        format!("{PW}\n").as_bytes(),
    );
    env.ok(&["mfa", "policy", "--force", "on"], b"");
    let token = env.login("gina", PW, &[]).json()["mfa_token"]
        .as_str()
        .unwrap()
        .to_string();
    let send = || {
        json_post(
            &env,
            "/api/v1/auth/mfa/email",
            None,
            serde_json::json!({ "mfa_token": token }),
        )
    };
    for n in 1..=5 {
        let r = send();
        assert_eq!(r.status, 202, "code {n}: {r:?}");
        sink.code(n);
        std::thread::sleep(Duration::from_millis(1100));
    }
    let r = send();
    assert_eq!(r.status, 429, "{r:?}");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("too many codes for this login"),
        "{r:?}"
    );
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(send().status, 429, "still refused after the interval");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.mails().len(), 5);
    // The last code still finishes the login; a new login may mail again.
    let (last, _) = sink.code(5);
    assert_eq!(mfa(&env, &token, "email", &last).status, 200);
}

#[test]
fn smtp_trouble_is_a_clear_503_and_starttls_is_enforced() {
    let env = Env::new();
    // A STARTTLS server with a certificate for 127.0.0.1 from a private CA (ca_file).
    let (ca, cert, key) = private_ca(&env);
    let tls_sink = Sink::start(env.path("mail-tls"), Some((&cert, &key)));
    let plain_sink = Sink::start(env.path("mail-plain"), None);
    let dead_port = free_port();
    let write = |smtp: String| {
        let extra = format!("{smtp}\n[mfa]\nemail_resend_interval = \"1s\"\n");
        env.write_config(&env.config_text(env.http_port, env.redirect_port, &extra));
    };
    write(smtp_config(tls_sink.port, "required", Some(&ca)));
    env.init();
    let d = env.start();
    env.ok(
        &[
            "user",
            "add",
            "gina",
            "--level",
            "3",
            "--email",
            "gina@example.com",
            "--password-stdin",
        ],
        format!("{PW}\n").as_bytes(),
    );
    env.ok(&["mfa", "policy", "--force", "on"], b"");
    let token = env.login("gina", PW, &[]).json()["mfa_token"]
        .as_str()
        .unwrap()
        .to_string();
    let send = || {
        json_post(
            &env,
            "/api/v1/auth/mfa/email",
            None,
            serde_json::json!({ "mfa_token": token }),
        )
    };

    // Over STARTTLS, verified against ca_file.
    assert_eq!(send().status, 202);
    let (code, mail) = tls_sink.code(1);
    assert!(mail.starts_with("X-Test-TLS: yes"), "{mail}");

    // Required STARTTLS against a server without it: refused, nothing half-done.
    write(smtp_config(plain_sink.port, "required", None));
    d.signal("HUP");
    d.wait_for_log("configuration reloaded");
    std::thread::sleep(Duration::from_millis(1100));
    let r = send();
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (503, Some("smtp_unavailable")),
        "{r:?}"
    );
    assert!(plain_sink.mails().is_empty(), "nothing sent in clear");
    // Server down.
    write(smtp_config(dead_port, "none", None));
    d.signal("HUP");
    std::thread::sleep(Duration::from_millis(1500));
    let r = send();
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (503, Some("smtp_unavailable")),
        "{r:?}"
    );
    d.wait_for_log("mailing a login code failed");
    // The code mailed before still works: the failures stored nothing.
    assert_eq!(mfa(&env, &token, "email", &code).status, 200);
    assert_eq!(env.request("GET", "/healthz", &[], None).status, 200);
}

#[test]
fn email_can_be_forbidden_for_admins_and_needs_an_address() {
    let env = Env::new();
    let sink = Sink::start(env.path("mail"), None);
    let extra = format!(
        "{}\n[mfa]\nemail_for_admins = false\n",
        smtp_config(sink.port, "none", None)
    );
    env.write_config(&env.config_text(env.http_port, env.redirect_port, &extra));
    env.init();
    let _d = env.start();
    env.ok(
        &[
            "user",
            "add",
            "boss",
            "--level",
            "9",
            "--email",
            "boss@example.com",
            "--password-stdin",
        ],
        format!("{PW}\n").as_bytes(),
    );
    env.add_user("hank", 3, PW);
    env.ok(&["mfa", "policy", "--force", "on"], b"");
    let r = env.login("boss", PW, &[]).json();
    assert_eq!(r["status"], "enroll_required");
    assert!(r.get("mfa_token").is_none(), "no email for admins: {r}");
    let r = env.login("hank", PW, &[]).json();
    assert!(r.get("mfa_token").is_none(), "no address, no email: {r}");
    let status: serde_json::Value =
        serde_json::from_slice(&env.ok(&["mfa", "status", "--json"], b"")).unwrap();
    assert!(
        status
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["method"] == "none"),
        "{status}"
    );
}

#[test]
fn expired_mfa_tokens_and_old_codes_are_refused() {
    // Expiry is kept in whole seconds, so a 3 s token lives between 2 and 3 s: long enough for
    // the fresh login below on a loaded machine, and surely gone after 3.1 s.
    let (env, _d) = setup("[mfa]\nmfa_token_ttl = \"3s\"\n");
    env.add_user("jane", 2, PW);
    let secret = enroll_with_session(&env, "jane");
    let token = env.login("jane", PW, &[]).json()["mfa_token"]
        .as_str()
        .unwrap()
        .to_string();
    // Two steps back is outside the window too.
    assert_eq!(
        mfa(&env, &token, "totp", &oathtool(&secret, -60)).json()["error"],
        "invalid_code"
    );
    std::thread::sleep(Duration::from_millis(3100));
    let r = mfa(&env, &token, "totp", &oathtool(&secret, 30));
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (401, Some("invalid_mfa_token"))
    );
    // A fresh login with the same (unspent) code works: the expiry, not the code, refused it.
    let token = env.login("jane", PW, &[]).json()["mfa_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        mfa(&env, &token, "totp", &oathtool(&secret, 30)).status,
        200
    );
}

#[test]
fn tokens_open_only_their_own_door() {
    let (env, _d) = setup("[auth]\nlockout_threshold = 3\n");
    env.add_user("kim", 3, PW);
    env.add_user("lee", 3, PW);
    env.ok(&["mfa", "policy", "--force", "on"], b"");
    // kim holds two enroll_tokens (two logins), enrolls with the first.
    let stale = env.login("kim", PW, &[]).json()["enroll_token"]
        .as_str()
        .unwrap()
        .to_string();
    let fresh = env.login("kim", PW, &[]).json()["enroll_token"]
        .as_str()
        .unwrap()
        .to_string();
    let e = json_post(
        &env,
        "/api/v1/auth/totp/enroll",
        Some(&fresh),
        serde_json::json!({}),
    );
    let secret = e.json()["secret"].as_str().unwrap().to_string();
    // Malformed codes are refused before anything else at /totp/confirm too.
    assert_eq!(
        json_post(
            &env,
            "/api/v1/auth/totp/confirm",
            Some(&fresh),
            serde_json::json!({ "code": "12 345" })
        )
        .status,
        400
    );
    let done = json_post(
        &env,
        "/api/v1/auth/totp/confirm",
        Some(&fresh),
        serde_json::json!({ "code": oathtool(&secret, 0) }),
    );
    assert_eq!(done.status, 200);
    let session = done.json()["token"].as_str().unwrap().to_string();
    // The other enroll_token can no longer replace the confirmed factor.
    assert_eq!(
        json_post(
            &env,
            "/api/v1/auth/totp/enroll",
            Some(&stale),
            serde_json::json!({})
        )
        .status,
        401
    );
    assert_eq!(
        json_post(
            &env,
            "/api/v1/auth/totp/confirm",
            Some(&stale),
            serde_json::json!({ "code": "123456" })
        )
        .status,
        401
    );
    // Nor can a session.
    let r = json_post(
        &env,
        "/api/v1/auth/totp/enroll",
        Some(&session),
        serde_json::json!({}),
    );
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (409, Some("already_enrolled"))
    );
    // Tokens of one kind do not work at the other's endpoints.
    let lee = env.login("lee", PW, &[]).json();
    let lee_enroll = lee["enroll_token"].as_str().unwrap();
    assert_eq!(
        mfa(&env, lee_enroll, "totp", "123456").json()["error"],
        "invalid_mfa_token"
    );
    let kim_mfa = env.login("kim", PW, &[]).json()["mfa_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        json_post(
            &env,
            "/api/v1/auth/totp/enroll",
            Some(&kim_mfa),
            serde_json::json!({})
        )
        .status,
        401
    );

    // A lock applies to a login that was already waiting for its code.
    for _ in 0..3 {
        assert_eq!(env.login("kim", "wrong password!", &[]).status, 401);
    }
    let r = mfa(&env, &kim_mfa, "totp", &oathtool(&secret, 30));
    assert_eq!(r.status, 429, "{r:?}");
}

#[test]
fn parallel_mail_requests_send_one_mail() {
    let env = Env::new();
    let sink = Sink::start(env.path("mail"), None);
    env.write_config(&env.config_text(
        env.http_port,
        env.redirect_port,
        &smtp_config(sink.port, "none", None),
    ));
    env.init();
    let _d = env.start();
    env.ok(
        &[
            "user",
            "add",
            "max",
            "--level",
            "3",
            "--email",
            "max@example.com",
            "--password-stdin",
        ],
        format!("{PW}\n").as_bytes(),
    );
    env.ok(&["mfa", "policy", "--force", "on"], b"");
    let token = env.login("max", PW, &[]).json()["mfa_token"]
        .as_str()
        .unwrap()
        .to_string();
    let body = serde_json::json!({ "mfa_token": token }).to_string();
    let codes: Vec<String> = post_all(&env, "/api/v1/auth/mfa/email", vec![body; 6])
        .into_iter()
        .map(|(status, _)| status.to_string())
        .collect();
    assert_eq!(codes.iter().filter(|c| *c == "202").count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| *c == "429").count(), 5, "{codes:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.mails().len(), 1);
}

#[test]
fn parallel_guesses_on_one_login_get_at_most_its_tries() {
    let (env, _d) = setup("[auth]\nlockout_threshold = 50\n[mfa]\nmax_code_failures = 3\n");
    env.add_user("ned", 2, PW);
    let _secret = enroll_with_session(&env, "ned");
    let token = env.login("ned", PW, &[]).json()["mfa_token"]
        .as_str()
        .unwrap()
        .to_string();
    let bodies = (0..10)
        .map(|i| {
            serde_json::json!({ "mfa_token": token, "method": "totp", "code": format!("{:06}", 100_000 + i) })
                .to_string()
        })
        .collect();
    let answers: Vec<String> = post_all(&env, "/api/v1/auth/mfa", bodies)
        .into_iter()
        .map(|(_, body)| body)
        .collect();
    let verdicts = answers
        .iter()
        .filter(|a| a.contains("invalid_code"))
        .count();
    assert!(
        verdicts <= 3,
        "{verdicts} guesses were judged: {answers:#?}"
    );
    assert!(
        answers
            .iter()
            .all(|a| a.contains("invalid_code") || a.contains("invalid_mfa_token")),
        "{answers:#?}"
    );
}

// ---- recovery codes (issue 22) ------------------------------------------------------------

/// Enrolls `name` with a session; the recovery codes the confirmation showed, and the session.
fn enroll_with_codes(env: &Env, name: &str) -> (String, Vec<String>) {
    let jwt = env.token(name, PW);
    let e = json_post(
        env,
        "/api/v1/auth/totp/enroll",
        Some(&jwt),
        serde_json::json!({}),
    );
    let secret = e.json()["secret"].as_str().unwrap().to_string();
    let c = json_post(
        env,
        "/api/v1/auth/totp/confirm",
        Some(&jwt),
        serde_json::json!({ "code": oathtool(&secret, 0) }),
    );
    assert_eq!(c.status, 200, "{c:?}");
    assert_eq!(c.header("cache-control").as_deref(), Some("no-store"));
    let codes: Vec<String> = c.json()["recovery_codes"]
        .as_array()
        .unwrap_or_else(|| panic!("no recovery_codes: {c:?}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    (jwt, codes)
}

fn mfa_token(env: &Env, name: &str) -> String {
    let r = env.login(name, PW, &[]).json();
    r["mfa_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no mfa_token: {r}"))
        .to_string()
}

fn recovery_count(env: &Env, jwt: &str) -> serde_json::Value {
    let auth = format!("Authorization: Bearer {jwt}");
    let r = env.request("GET", "/api/v1/auth/recovery-codes", &[&auth], None);
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

#[test]
fn recovery_codes_are_shown_once_work_once_and_are_mailed_about() {
    let env = Env::new();
    let sink = Sink::start(env.path("mail"), None);
    let extra = smtp_config(sink.port, "none", None);
    env.write_config(&env.config_text(env.http_port, env.redirect_port, &extra));
    env.init();
    let _d = env.start();
    env.ok(
        &[
            "user",
            "add",
            "gina",
            "--level",
            "3",
            "--email",
            "gina@example.com",
            "--password-stdin",
        ],
        format!("{PW}\n").as_bytes(),
    );
    let (jwt, codes) = enroll_with_codes(&env, "gina");
    assert_eq!(codes.len(), 10);
    for c in &codes {
        assert_eq!(c.len(), 14, "{c}");
        assert!(c
            .chars()
            .all(|ch| ch == '-' || ch.is_ascii_digit() || ch.is_ascii_lowercase()));
    }
    // Stored only as keyed hashes.
    let stored = env.sql("SELECT code_hash FROM mfa_recovery_codes");
    assert_eq!(stored.lines().count(), 10);
    for c in &codes {
        assert!(!stored.contains(&c.replace('-', "")), "a code in clear");
    }

    assert_eq!(
        recovery_count(&env, &jwt),
        serde_json::json!({"total": 10, "left": 10})
    );

    // The login offers them; one finishes it, is audited and mailed.
    let r = env.login("gina", PW, &[]).json();
    assert_eq!(r["methods"], serde_json::json!(["totp", "recovery"]));
    let token = r["mfa_token"].as_str().unwrap().to_string();
    let ok = mfa(&env, &token, "recovery", &codes[0]);
    assert_eq!(ok.status, 200, "{ok:?}");
    assert!(ok.json()["token"].is_string());
    let audit = env.sql("SELECT detail FROM audit_log WHERE action = 'mfa.recovery.use'");
    assert!(audit.starts_with("9 left"), "{audit}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mail = loop {
        if let Some(m) = sink
            .mails()
            .into_iter()
            .find(|m| m.contains("recovery code was used"))
        {
            break m;
        }
        assert!(Instant::now() < deadline, "no notice mailed");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(mail.contains("X-Test-Rcpt: gina@example.com"), "{mail}");
    assert!(mail.contains("9 recovery codes are left"), "{mail}");
    assert!(!mail.contains(&codes[0]), "the code itself is never mailed");

    // Used once: the same code again is a wrong code.
    let again = mfa(&env, &mfa_token(&env, "gina"), "recovery", &codes[0]);
    assert_eq!(
        (again.status, again.json()["error"].as_str()),
        (401, Some("invalid_code"))
    );
    // Typed loosely (upper case, blanks) it still reads.
    let loose = codes[1].to_uppercase().replace('-', " ");
    assert_eq!(
        mfa(&env, &mfa_token(&env, "gina"), "recovery", &loose).status,
        200
    );
    // Malformed: 400, not a try.
    for junk in ["123456", "not-a-code", ""] {
        let r = mfa(&env, &mfa_token(&env, "gina"), "recovery", junk);
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (400, Some("bad_code")),
            "{junk}"
        );
    }
    assert_eq!(
        recovery_count(&env, &jwt),
        serde_json::json!({"total": 10, "left": 8})
    );

    // Regeneration needs the password and voids the old set.
    let auth = format!("Authorization: Bearer {jwt}");
    let headers = [auth.as_str(), "Content-Type: application/json"];
    let wrong = env.request(
        "POST",
        "/api/v1/auth/recovery-codes",
        &headers,
        Some(r#"{"password":"not the password"}"#),
    );
    assert_eq!(wrong.status, 401, "{wrong:?}");
    let body = serde_json::json!({ "password": PW }).to_string();
    let fresh = env.request("POST", "/api/v1/auth/recovery-codes", &headers, Some(&body));
    assert_eq!(fresh.status, 200, "{fresh:?}");
    assert_eq!(fresh.header("cache-control").as_deref(), Some("no-store"));
    let new_codes: Vec<String> = fresh.json()["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(new_codes.len(), 10);
    assert!(new_codes.iter().all(|c| !codes.contains(c)));
    // The user is told of the new set too.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sink
        .mails()
        .iter()
        .any(|m| m.contains("New recovery codes were made for gina"))
    {
        assert!(Instant::now() < deadline, "no regeneration notice mailed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let old = mfa(&env, &mfa_token(&env, "gina"), "recovery", &codes[2]);
    assert_eq!(old.status, 401, "an old code is void: {old:?}");
    assert_eq!(
        mfa(&env, &mfa_token(&env, "gina"), "recovery", &new_codes[0]).status,
        200
    );
    let actions = env
        .sql("SELECT action FROM audit_log WHERE action LIKE 'mfa.recovery.%' ORDER BY at, action");
    assert!(actions.contains("mfa.recovery.issue"), "{actions}");
    assert!(actions.contains("mfa.recovery.regenerate"), "{actions}");
    assert_eq!(actions.matches("mfa.recovery.use").count(), 3, "{actions}");

    // An admin reset takes them with the TOTP; re-enrolling shows a new first set.
    env.ok(&["mfa", "reset", "gina"], b"");
    assert_eq!(env.sql("SELECT COUNT(*) FROM mfa_recovery_codes"), "0");
    assert_eq!(env.login("gina", PW, &[]).json()["status"], "ok");
    let (_, after_reset) = enroll_with_codes(&env, "gina");
    assert_eq!(after_reset.len(), 10);
}

#[test]
fn one_recovery_code_used_in_parallel_wins_exactly_once() {
    let (env, _d) = setup("");
    env.add_user("hugo", 2, PW);
    let (_, codes) = enroll_with_codes(&env, "hugo");
    let bodies = (0..4)
        .map(|_| {
            serde_json::json!({ "mfa_token": mfa_token(&env, "hugo"), "method": "recovery", "code": codes[3] })
                .to_string()
        })
        .collect();
    let statuses: Vec<u16> = post_all(&env, "/api/v1/auth/mfa", bodies)
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        env.sql("SELECT COUNT(*) FROM mfa_recovery_codes WHERE used_at IS NOT NULL"),
        "1"
    );
}

#[test]
fn wrong_recovery_codes_count_towards_the_lockout() {
    let (env, _d) = setup("[auth]\nlockout_threshold = 3\n[mfa]\nmax_code_failures = 5\n");
    env.add_user("ivan", 2, PW);
    let (_, codes) = enroll_with_codes(&env, "ivan");
    let token = mfa_token(&env, "ivan");
    for guess in ["aaaa-bbbb-cccc", "2222-3333-4444", "zzzz-yyyy-xxxx"] {
        let r = mfa(&env, &token, "recovery", guess);
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (401, Some("invalid_code"))
        );
    }
    // Locked now, even with a right code and the right password.
    let r = mfa(&env, &token, "recovery", &codes[0]);
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(env.login("ivan", PW, &[]).status, 429);
    let fails = env.sql(
        "SELECT count(*) FROM login_history WHERE username = 'ivan' AND result = 'mfa_failed'",
    );
    assert_eq!(fails, "3");
    assert_eq!(
        env.sql("SELECT COUNT(*) FROM mfa_recovery_codes WHERE used_at IS NULL"),
        "10",
        "the right code was not spent by the locked attempt"
    );
}

#[test]
fn regenerating_needs_a_second_factor_and_a_session() {
    let (env, _d) = setup("");
    env.add_user("jill", 2, PW);
    let jwt = env.token("jill", PW);
    let body = serde_json::json!({ "password": PW });
    let r = json_post(
        &env,
        "/api/v1/auth/recovery-codes",
        Some(&jwt),
        body.clone(),
    );
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (409, Some("no_second_factor"))
    );
    let r = json_post(&env, "/api/v1/auth/recovery-codes", None, body);
    assert_eq!(r.status, 401);
    assert_eq!(
        recovery_count(&env, &jwt),
        serde_json::json!({"total": 0, "left": 0})
    );
    // Without codes left, a login offers TOTP alone.
    let (_, codes) = enroll_with_codes(&env, "jill");
    env.sql("UPDATE mfa_recovery_codes SET used_at = 1");
    assert_eq!(
        env.login("jill", PW, &[]).json()["methods"],
        serde_json::json!(["totp"])
    );
    let r = mfa(&env, &mfa_token(&env, "jill"), "recovery", &codes[0]);
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("method_not_allowed"))
    );
}
