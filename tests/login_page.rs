//! The /login page in a real browser: headless Chromium driven by Selenium through
//! enrollment and a TOTP login, codes from oathtool. Screenshots are kept under
//! target/tmp/login-page/ as the test's artefact.

mod common;
use common::*;

use std::process::Command;

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

#[test]
fn enrollment_and_login_in_headless_chromium() {
    let (env, port) = plain_env();
    env.init();
    let d = env.start();
    env.add_user("ivy", 4, PW);
    env.add_user("jack", 2, PW);
    env.ok(&["mfa", "policy", "--force", "on"], b"");
    env.ok(&["mfa", "exempt", "jack", "--for", "1h"], b"");

    let out_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("login-page");
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).unwrap();
    let profile = env.path("chromium-profile");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/login_page.py");
    let out = Command::new("/usr/bin/python3")
        .arg(script)
        .arg(format!("http://127.0.0.1:{port}"))
        .args(["ivy", PW])
        .arg(&out_dir)
        .arg(&profile)
        .arg("jack")
        .output()
        .expect("python3 with selenium");
    assert!(
        out.status.success(),
        "browser run failed:\n{}\n{}\ndaemon log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("OK "));
    for shot in [
        "1-enroll.png",
        "2-enrolled.png",
        "3-totp.png",
        "4-logged-in.png",
        "5-wrong-code.png",
    ] {
        let png = std::fs::read(out_dir.join(shot)).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 2000, "{shot}");
    }
    let results = sqlite(
        &env.db(),
        "SELECT group_concat(result, ' ') FROM login_history WHERE username = 'ivy'",
    );
    assert_eq!(results, "ok ok mfa_failed");
    let totp = sqlite(&env.db(), "SELECT count(*) FROM mfa_totp");
    assert_eq!(totp, "1");
    d.signal("TERM");
}
