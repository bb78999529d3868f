//! Passkeys (WebAuthn) against the real binary: the whole life of a passkey in headless
//! Chromium with its virtual authenticator (tests/browser/passkeys.py), and every bad input
//! of the passkey endpoints over real TLS with curl.

mod common;
use common::*;

use serde_json::json;

const PW: &str = "a long password";

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

fn post_json(env: &Env, path: &str, token: Option<&str>, body: serde_json::Value) -> Resp {
    let auth = token.map(bearer);
    let mut headers = vec!["Content-Type: application/json"];
    if let Some(a) = &auth {
        headers.push(a);
    }
    env.request("POST", path, &headers, Some(&body.to_string()))
}

/// A credential of the right JSON shape whose contents no authenticator made.
fn forged_registration() -> serde_json::Value {
    json!({
        "id": "AAAA",
        "rawId": "AAAA",
        "type": "public-key",
        "response": {
            "attestationObject": "o2NmbXRkbm9uZQ",
            "clientDataJSON": "eyJ0eXBlIjoid2ViYXV0aG4uY3JlYXRlIn0",
        },
    })
}

fn forged_assertion() -> serde_json::Value {
    json!({
        "id": "AAAA",
        "rawId": "AAAA",
        "type": "public-key",
        "response": {
            "authenticatorData": "AAAA",
            "clientDataJSON": "eyJ0eXBlIjoid2ViYXV0aG4uZ2V0In0",
            "signature": "AAAA",
            "userHandle": null,
        },
    })
}

/// Password login, registration, passkey login, passwordless, and the refusals (replay, wrong
/// user, removed passkey, cloned counter) in Chromium; then what the database kept and an
/// admin reset that removes a user's passkeys.
#[test]
fn passkeys_in_chromium_register_log_in_and_refuse_replays_other_users_removed_keys_and_clones() {
    let env = Env::new();
    let port = env.http_port;
    let d = env.dir.path().display();
    let database = env
        .database_url()
        .map(|u| format!("database = \"{u}\"\n"))
        .unwrap_or_default();
    // Plain HTTP on loopback under the name localhost: a secure context for WebAuthn without a
    // certificate exception (browsers refuse passkeys on a page with certificate errors, and
    // an IP address as the relying party).
    env.write_config(&format!(
        "[daemon]\nstate_dir = \"{d}/state\"\n{database}shutdown_grace = \"2s\"\n[vault]\nkey_file = \"{d}/master.key\"\n[http]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://localhost:{port}\"\n"
    ));
    env.init();
    env.add_user("ana", 4, PW);
    env.add_user("bob", 4, PW);
    let daemon = env.start();
    let browser = BrowserRun::new("passkeys.py", "passkeys");
    let base = format!("http://localhost:{port}");
    let profile = env.path("chromium-profile");
    let args = [
        base.as_ref(),
        PW.as_ref(),
        browser.shots.as_os_str(),
        profile.as_os_str(),
    ];
    browser.run(&args, &daemon);
    browser.assert_shots(&[
        "1-passkey-added.png",
        "2-account-passkeys.png",
        "3-logged-in-with-passkey.png",
        "4-passwordless.png",
        "5-passkey-removed.png",
    ]);
    let audit = |action: &str| {
        env.sql(&format!(
            "SELECT COUNT(*) FROM audit_log WHERE action = '{action}'"
        ))
    };
    assert_eq!(audit("mfa.passkey.add"), "2");
    assert_eq!(audit("mfa.passkey.clone"), "1");
    assert_eq!(audit("mfa.passkey.remove"), "1");
    assert_eq!(audit("mfa.passwordless.on"), "1");
    assert_eq!(audit("mfa.recovery.issue"), "2", "one first set each");
    // What is stored is public: no private key, and the counter the last login left.
    let bob_key = env.sql(
        "SELECT p.name, p.sign_count > 0 FROM passkeys p JOIN users u ON u.id = p.user_id WHERE u.name = 'bob'",
    );
    assert!(bob_key == "key|1" || bob_key == "key|t", "{bob_key}");
    assert_eq!(
        env.sql("SELECT COUNT(*) FROM passkeys WHERE credential LIKE '%private%'"),
        "0"
    );
    // Each refused assertion is a failed second factor in ana's history.
    let failed: u32 = env
        .sql("SELECT COUNT(*) FROM login_history WHERE username = 'ana' AND result = 'mfa_failed'")
        .parse()
        .unwrap();
    assert!(failed >= 3, "{failed}");

    // An admin's 2FA reset removes the user's passkeys (and says so).
    let out = env.ok(&["mfa", "reset", "bob"], b"");
    let said = String::from_utf8_lossy(&out);
    assert!(said.contains("1 passkey removed"), "{said}");
    assert_eq!(env.sql("SELECT COUNT(*) FROM passkeys"), "0");
    assert_eq!(
        env.sql("SELECT detail FROM audit_log WHERE action = 'mfa.reset'"),
        "1 passkeys removed"
    );
}

/// Every bad input of the passkey endpoints gets its own clear answer, changes nothing, and
/// the daemon goes on serving.
#[test]
fn passkey_endpoints_refuse_bad_input_clearly_and_change_nothing() {
    let env = Env::new();
    env.init();
    env.add_user("ana", 4, PW);
    let _d = env.start();
    let token = env.token("ana", PW);
    let t = Some(token.as_str());
    let register = "/api/v1/auth/passkeys/register";

    // Signed in only.
    let r = post_json(&env, register, None, json!({"name": "x", "password": PW}));
    assert_eq!(r.status, 401, "{r:?}");
    let r = env.request("GET", "/api/v1/auth/passkeys", &[], None);
    assert_eq!(r.status, 401, "{r:?}");

    // Names: 1 to 64 characters, no control characters.
    for name in ["", "   ", &"n".repeat(65), "tab\there", "bell\u{7}"] {
        let r = post_json(&env, register, t, json!({"name": name, "password": PW}));
        assert_eq!(r.status, 400, "{name:?}: {r:?}");
        assert_eq!(r.json()["error"], "bad_name", "{r:?}");
    }
    // The password is checked (and a wrong one is a failed login in the history).
    let r = post_json(
        &env,
        register,
        t,
        json!({"name": "laptop", "password": "not it at all"}),
    );
    assert_eq!(r.status, 401, "{r:?}");
    let r = post_json(&env, register, t, json!({"name": "laptop", "password": ""}));
    assert_eq!(r.status, 400, "{r:?}");
    let r = post_json(&env, register, t, json!({"name": "laptop"}));
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(env.sql("SELECT COUNT(*) FROM passkey_registrations"), "0");

    // A good start: options for navigator.credentials.create with this relying party and
    // user verification required.
    let r = post_json(&env, register, t, json!({"name": "laptop", "password": PW}));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    let body = r.json();
    let reg_token = body["registration_token"].as_str().unwrap().to_string();
    let pk = &body["options"]["publicKey"];
    assert_eq!(pk["rp"]["id"], "localhost", "{body}");
    assert_eq!(pk["user"]["name"], "ana");
    assert_eq!(
        pk["authenticatorSelection"]["userVerification"], "required",
        "{body}"
    );
    assert!(pk["challenge"].as_str().unwrap().len() >= 43);

    let finish = "/api/v1/auth/passkeys/register/finish";
    // Not a credential: refused before the registration is touched.
    for junk in [
        json!({"x": 1}),
        json!("text"),
        json!({"id": "AAAA", "rawId": "!!"}),
    ] {
        let r = post_json(
            &env,
            finish,
            t,
            json!({"registration_token": reg_token, "credential": junk}),
        );
        assert_eq!(r.status, 400, "{r:?}");
        assert_eq!(r.json()["error"], "bad_credential", "{r:?}");
    }
    assert_eq!(env.sql("SELECT COUNT(*) FROM passkey_registrations"), "1");
    // An unknown token.
    let r = post_json(
        &env,
        finish,
        t,
        json!({"registration_token": "x".repeat(43), "credential": forged_registration()}),
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.json()["error"], "invalid_registration");
    // A forged answer: refused, and the registration is used up.
    let r = post_json(
        &env,
        finish,
        t,
        json!({"registration_token": reg_token, "credential": forged_registration()}),
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.json()["error"], "passkey_rejected", "{r:?}");
    let r = post_json(
        &env,
        finish,
        t,
        json!({"registration_token": reg_token, "credential": forged_registration()}),
    );
    assert_eq!(r.json()["error"], "invalid_registration", "{r:?}");
    assert_eq!(env.sql("SELECT COUNT(*) FROM passkeys"), "0");

    // Passwordless needs a passkey; removing one that is not there is a 404.
    let r = env.request(
        "PUT",
        "/api/v1/auth/passwordless",
        &[&bearer(&token), "Content-Type: application/json"],
        Some(&json!({"enabled": true, "password": PW}).to_string()),
    );
    assert_eq!(r.status, 409, "{r:?}");
    assert_eq!(r.json()["error"], "no_passkey");
    let r = env.request(
        "DELETE",
        "/api/v1/auth/passkeys/0123456789abcdef",
        &[&bearer(&token), "Content-Type: application/json"],
        Some(&json!({"password": PW}).to_string()),
    );
    assert_eq!(r.status, 404, "{r:?}");
    let r = env.request("GET", "/api/v1/auth/passkeys", &[&bearer(&token)], None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.json(),
        json!({"passkeys": [], "passwordless": false, "available": true})
    );

    // Finishing a login with a passkey: the credential is required and must be one; a login
    // that was never started is the same 401 as a wrong assertion.
    let mfa = "/api/v1/auth/mfa";
    let r = post_json(
        &env,
        mfa,
        None,
        json!({"mfa_token": "x".repeat(43), "method": "webauthn"}),
    );
    assert_eq!(r.status, 400, "{r:?}");
    let r = post_json(
        &env,
        mfa,
        None,
        json!({"mfa_token": "x".repeat(43), "method": "webauthn", "credential": {"id": 1}}),
    );
    assert_eq!(r.json()["error"], "bad_credential", "{r:?}");
    let r = post_json(
        &env,
        mfa,
        None,
        json!({"mfa_token": "x".repeat(43), "method": "webauthn", "credential": forged_assertion()}),
    );
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.json()["error"], "invalid_code", "{r:?}");
    // A TOTP finish still needs its code.
    let r = post_json(
        &env,
        mfa,
        None,
        json!({"mfa_token": "x".repeat(43), "method": "totp"}),
    );
    assert_eq!(r.status, 400, "{r:?}");

    // A passwordless start for a name that may not use it looks like one that may; a decoy
    // token finishes nothing.
    let login = "/api/v1/auth/passkey/login";
    for name in ["ana", "nobody"] {
        let r = post_json(&env, login, None, json!({"username": name}));
        assert_eq!(r.status, 200, "{r:?}");
        let b = r.json();
        assert_eq!(b["status"], "mfa_required");
        assert_eq!(b["methods"], json!(["webauthn"]));
        let allowed = b["webauthn"]["publicKey"]["allowCredentials"]
            .as_array()
            .unwrap();
        assert_eq!(allowed.len(), 1, "{b}");
        assert_eq!(b["webauthn"]["publicKey"]["rpId"], "localhost");
        let r = post_json(
            &env,
            mfa,
            None,
            json!({"mfa_token": b["mfa_token"], "method": "webauthn", "credential": forged_assertion()}),
        );
        assert_eq!(r.status, 401, "{r:?}");
    }
    for bad in [
        json!({"username": ""}),
        json!({"username": "a".repeat(257)}),
        json!({}),
    ] {
        let r = post_json(&env, login, None, bad);
        assert_eq!(r.status, 400, "{r:?}");
    }
    assert_eq!(env.sql("SELECT COUNT(*) FROM mfa_pending"), "0");

    // Still serving, nothing stored, ana still logs in with the password alone.
    assert_eq!(env.request("GET", "/healthz", &[], None).status, 200);
    assert_eq!(env.sql("SELECT COUNT(*) FROM passkeys"), "0");
    assert_eq!(env.login("ana", PW, &[]).json()["status"], "ok");

    // A passkey name is the user's own text: the account page escapes it. (This one was made
    // on another host, under its own name.)
    env.sql(
        "INSERT INTO passkeys (id, user_id, name, rp_id, credential_id, user_handle, credential, sign_count, created_at)
         SELECT 'aa11', id, '<script>alert(1)</script>\"&', 'pbx2.example.test', 'Y3JlZA', 'h', '{}', 0, 1 FROM users WHERE name = 'ana'",
    );
    let page = env.request(
        "GET",
        "/account",
        &[&format!("Cookie: pbxguard_session={token}")],
        None,
    );
    assert_eq!(page.status, 200, "{page:?}");
    assert!(
        page.body
            .contains("&#60;script&#62;alert(1)&#60;/script&#62;&#34;&#38;"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("<script>alert"));
    // Its only second factor works on the other host: here the password alone is refused,
    // with the reason.
    let sessions = || env.sql("SELECT COUNT(*) FROM sessions");
    let before = sessions();
    let r = env.login("ana", PW, &[]);
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.json()["error"], "no_usable_factor", "{r:?}");
    assert_eq!(sessions(), before, "no session for the refused login");

    // The account page's forms: passwordless on (the password needed), then the passkey
    // removed, which ends the opt-in.
    let cookie = format!("Cookie: pbxguard_session={token}");
    let form = |path: &str, body: &str| {
        env.request(
            "POST",
            path,
            &[&cookie, "Content-Type: application/x-www-form-urlencoded"],
            Some(body),
        )
    };
    let at = page.body.find("name=\"csrf\" value=\"").unwrap() + 19;
    let csrf = &page.body[at..at + page.body[at..].find('"').unwrap()];
    let r = form(
        "/account/passwordless",
        &format!("csrf={csrf}&enabled=on&password=wrong+password+here"),
    );
    assert_eq!(r.status, 401, "{r:?}");
    let pw = PW.replace(' ', "+");
    let r = form(
        "/account/passwordless",
        &format!("csrf={csrf}&enabled=on&password={pw}"),
    );
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(env.sql("SELECT COUNT(*) FROM passkey_passwordless"), "1");
    let r = form(
        "/account/passkeys/remove",
        &format!("csrf={csrf}&id=nope&password={pw}"),
    );
    assert_eq!(r.status, 409, "{r:?}");
    let r = form(
        "/account/passkeys/remove",
        &format!("csrf={csrf}&id=aa11&password={pw}"),
    );
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(
        r.header("location").as_deref(),
        Some("/account?done=passkey-removed")
    );
    assert_eq!(env.sql("SELECT COUNT(*) FROM passkeys"), "0");
    assert_eq!(env.sql("SELECT COUNT(*) FROM passkey_passwordless"), "0");
}

/// A `public_url` with an IP address can be no relying party: passkeys are unavailable, said
/// so on the API and the account page, and logins go on as before.
#[test]
fn a_public_url_with_an_ip_address_offers_no_passkeys() {
    let env = Env::new();
    let text = env
        .config_text(env.http_port, env.redirect_port, "")
        .replace("https://localhost:", "https://127.0.0.1:");
    env.write_config(&text);
    env.init();
    env.add_user("ana", 4, PW);
    let _d = env.start();
    let token = env.token("ana", PW);
    let r = post_json(
        &env,
        "/api/v1/auth/passkeys/register",
        Some(&token),
        json!({"name": "laptop", "password": PW}),
    );
    assert_eq!(r.status, 409, "{r:?}");
    assert_eq!(r.json()["error"], "passkeys_unavailable");
    assert!(r.json()["message"].as_str().unwrap().contains("public_url"));
    let r = env.request("GET", "/api/v1/auth/passkeys", &[&bearer(&token)], None);
    assert_eq!(r.json()["available"], false);
    let page = env.request(
        "GET",
        "/account",
        &[&format!("Cookie: pbxguard_session={token}")],
        None,
    );
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.body.contains("[http] public_url"), "{}", page.body);
    assert!(!page.body.contains("id=\"add-passkey\""));
    let r = post_json(
        &env,
        "/api/v1/auth/passkey/login",
        None,
        json!({"username": "ana"}),
    );
    assert_eq!(r.status, 409, "{r:?}");
}

/// Several hosts, one set of passkeys: `[mfa] passkey_rp_id` names the domain the hosts are
/// under; a domain `public_url` is not under is a configuration error.
#[test]
fn a_shared_relying_party_id_covers_every_host_under_it() {
    let env = Env::new();
    let config = env
        .config_text(env.http_port, env.redirect_port, "")
        .replace("https://localhost:", "https://pbx1.example.test:")
        + "\n[mfa]\npasskey_rp_id = \"example.test\"\npasskey_origins = [\"https://pbx.example.test\", \"https://pbx2.example.test:8443\"]\n";
    env.write_config(&config);
    env.init();
    env.add_user("ana", 4, PW);
    let _d = env.start();
    let token = env.token("ana", PW);
    let r = post_json(
        &env,
        "/api/v1/auth/passkeys/register",
        Some(&token),
        json!({"name": "laptop", "password": PW}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["options"]["publicKey"]["rp"]["id"], "example.test");

    env.write_config(&config.replace("\"example.test\"", "\"example.org\""));
    let out = env.run(&["check-config"], b"");
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(text(&out).contains("mfa.passkey_rp_id"), "{}", text(&out));
    // Every other origin is named and under the domain (no "any subdomain").
    env.write_config(&config.replace("https://pbx.example.test\"", "https://pbx.example.org\""));
    let out = env.run(&["check-config"], b"");
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(text(&out).contains("mfa.passkey_origins"), "{}", text(&out));
}
