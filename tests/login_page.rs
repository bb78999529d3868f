//! The /login page in a real browser: headless Chromium driven by Selenium through
//! enrollment and a TOTP login, codes from oathtool. Screenshots are kept under
//! target/tmp/login-page/ as the test's artefact.

mod common;
use common::*;

const PW: &str = "a long password";

/// Plain HTTP on loopback (allowed there), so the browser needs no certificate exception.
fn plain_env() -> (Env, u16) {
    let env = Env::new();
    let port = env.http_port;
    let d = env.dir.path().display();
    env.write_config(&format!(
        "[daemon]\nstate_dir = \"{d}/state\"\nshutdown_grace = \"2s\"\n[vault]\nkey_file = \"{d}/master.key\"\n[http]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\n"
    ));
    (env, port)
}

#[test]
fn the_login_page_serves_its_assets_with_a_strict_policy() {
    let env = Env::new();
    env.init();
    let _d = env.start();
    for (path, ctype) in [
        ("/login", "text/html"),
        ("/login/app.js", "text/javascript"),
        ("/login/style.css", "text/css"),
        ("/console/passkeys.js", "text/javascript"),
    ] {
        let r = env.request("GET", path, &[], None);
        assert_eq!(r.status, 200, "{path}");
        assert!(
            r.header("content-type").unwrap().starts_with(ctype),
            "{path}"
        );
        let csp = r.header("content-security-policy").unwrap();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
        assert_eq!(r.header("x-frame-options").as_deref(), Some("DENY"));
    }
    let page = env.request("GET", "/login", &[], None).body;
    assert!(!page.contains("<script>"), "no inline script");
}

/// The browser softphone module: a stable path, revalidated on every load (no-cache + ETag, 304
/// while unchanged), the strict policy, and an ES module that imports nothing (the page passes
/// JsSIP in), byte for byte the file in the repository.
#[test]
fn the_softphone_module_is_served_as_a_revalidated_module_without_imports() {
    let env = Env::new();
    env.init();
    let d = env.start();
    let r = env.request("GET", "/sip/softphone.js", &[], None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(
        r.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
    assert_eq!(r.header("cache-control").as_deref(), Some("no-cache"));
    let csp = r.header("content-security-policy").expect("CSP");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    let etag = r.header("etag").expect("ETag");
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() == 34,
        "{etag}"
    );
    let source = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/assets/sip/softphone.js"
    ))
    .unwrap();
    assert_eq!(r.body, source, "the served module is the repository's file");
    // A module: it exports the class; it imports nothing (no static or dynamic import).
    assert!(r
        .body
        .contains("export class Softphone extends EventTarget"));
    assert!(r.body.contains("export default Softphone"));
    for line in r.body.lines().map(str::trim_start) {
        assert!(
            !line.starts_with("import ") && !line.starts_with("import{") || line.starts_with("//"),
            "{line}"
        );
    }
    assert!(!r.body.contains("import("), "no dynamic import");
    // Its code (comments aside) never mentions a password: JsSIP gets none.
    let code: String = r
        .body
        .lines()
        .map(str::trim_start)
        .filter(|l| !l.starts_with("//") && !l.starts_with('*') && !l.starts_with("/*"))
        .map(|l| l.split(" // ").next().unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        !code.to_lowercase().contains("password"),
        "the module must not configure a password"
    );

    // Revalidation: the same ETag (plain, weak or in a list) gives 304 with no body; another
    // ETag, a malformed one or none gives the module again.
    let weak = format!("W/{etag}");
    let list = format!("\"0000\", {etag}");
    for inm in [etag.as_str(), weak.as_str(), list.as_str(), "*"] {
        let h = format!("If-None-Match: {inm}");
        let r = env.request("GET", "/sip/softphone.js", &[&h], None);
        assert_eq!(r.status, 304, "{inm}: {r:?}");
        assert!(r.body.is_empty(), "{inm}");
        assert_eq!(r.header("etag").as_deref(), Some(etag.as_str()));
        assert_eq!(r.header("cache-control").as_deref(), Some("no-cache"));
    }
    for inm in ["\"0000\"", "nonsense", "W/"] {
        let h = format!("If-None-Match: {inm}");
        let r = env.request("GET", "/sip/softphone.js", &[&h], None);
        assert_eq!(r.status, 200, "{inm}: {r:?}");
        assert_eq!(r.body, source);
    }
    // Only GET (and HEAD) are served; the daemon keeps serving after a refusal.
    let r = env.request("DELETE", "/sip/softphone.js", &[], None);
    assert_eq!(r.status, 405, "{r:?}");
    let r = env.request("GET", "/sip/softphone.js?v=2", &[], None);
    assert_eq!(r.status, 200, "{r:?}");
    d.signal("TERM");
}

#[test]
fn enrollment_and_login_in_headless_chromium() {
    let (env, port) = plain_env();
    env.init();
    let d = env.start();
    env.add_user("ivy", 4, PW);
    env.add_user("jack", 2, PW);
    env.ok(&["mfa", "policy", "--force", "on"], b"");
    env.ok(&["mfa", "exempt", "jack", "--for", "1h"], b"");

    let browser = BrowserRun::new("login_page.py", "login-page");
    let base = format!("http://127.0.0.1:{port}");
    let profile = env.path("chromium-profile");
    let args = [
        base.as_ref(),
        "ivy".as_ref(),
        PW.as_ref(),
        browser.shots.as_os_str(),
        profile.as_os_str(),
        "jack".as_ref(),
    ];
    assert!(browser.run(&args, &d).starts_with("OK "));
    browser.assert_shots(&[
        "1-enroll.png",
        "2a-recovery-codes.png",
        "2-enrolled.png",
        "3-totp.png",
        "4-logged-in.png",
        "5-wrong-code.png",
        "6-recovery.png",
    ]);
    let results = sqlite(
        &env.db(),
        "SELECT group_concat(result, ' ') FROM login_history WHERE username = 'ivy'",
    );
    assert_eq!(results, "ok ok mfa_failed ok");
    let used = sqlite(
        &env.db(),
        "SELECT count(*) FROM mfa_recovery_codes WHERE used_at IS NOT NULL",
    );
    assert_eq!(used, "1", "the recovery login spent one code");
    let totp = sqlite(&env.db(), "SELECT count(*) FROM mfa_totp");
    assert_eq!(totp, "1");
    d.signal("TERM");
}
