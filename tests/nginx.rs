//! The shipped nginx snippet (`etc/nginx/pbxguard-auth.conf`) end to end: a real nginx with
//! `auth_request` in front of a stub upstream, the real daemon over verified TLS behind it,
//! curl as the browser. The snippet file itself is included, with only pbxguard's port and
//! certificate path replaced by the test's.

mod common;
use std::time::{Duration, Instant};

use common::nginx::Nginx;
use common::*;

const PW: &str = "a long password";
const SNIPPET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/etc/nginx/pbxguard-auth.conf");
/// What the snippet ships with, replaced by the test daemon's values.
const SHIPPED_ADDR: &str = "127.0.0.1:8443";
const SHIPPED_CERT: &str = "/etc/pbxguard/tls/cert.pem";

/// Writes the shipped snippet (pointed at the test daemon) and an nginx.conf around it into
/// the test's folder, and starts nginx.
fn start_nginx(env: &Env) -> Nginx {
    let prefix = env.path("nginx");
    std::fs::create_dir_all(&prefix).expect("nginx folder");
    let shipped = std::fs::read_to_string(SNIPPET).expect("read the shipped snippet");
    assert!(
        shipped.contains(SHIPPED_ADDR) && shipped.contains(SHIPPED_CERT),
        "the snippet no longer names {SHIPPED_ADDR} and {SHIPPED_CERT}; update this test"
    );
    let snippet = shipped
        .replace(SHIPPED_ADDR, &format!("127.0.0.1:{}", env.http_port))
        .replace(SHIPPED_CERT, &env.cert().display().to_string());
    std::fs::write(prefix.join("pbxguard-auth.conf"), snippet).expect("write snippet");

    let port = free_port();
    let upstream = free_port();
    let p = prefix.display();
    let http = format!(
        r#"    default_type text/plain;

    # The protected web app.
    server {{
        listen 127.0.0.1:{port};
        include "{p}/pbxguard-auth.conf";
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_set_header X-Auth-User $pbxguard_user;
            proxy_set_header X-Auth-Level $pbxguard_level;
            proxy_set_header X-Auth-Role $pbxguard_role;
            proxy_set_header X-Auth-Session $pbxguard_session;
        }}
    }}

    # The app itself: says whom nginx said the request is from.
    server {{
        listen 127.0.0.1:{upstream};
        location / {{
            return 200 "upstream body for $http_x_auth_user level=$http_x_auth_level role=$http_x_auth_role session=$http_x_auth_session\n";
        }}
    }}
"#
    );
    let mut nginx = Nginx::start(&prefix, port, &http);
    nginx.wait_for_port(upstream);
    nginx
}

/// Logs in directly at pbxguard (as the login page would) and returns the token.
fn token(env: &Env, name: &str) -> String {
    let cert = env.cert().display().to_string();
    let url = format!("https://localhost:{}/api/v1/auth/login", env.http_port);
    let body = serde_json::json!({ "username": name, "password": PW }).to_string();
    let out = curl(&[
        "-sS",
        "--max-time",
        "30",
        "--cacert",
        &cert,
        "-H",
        "Content-Type: application/json",
        "-d",
        &body,
        &url,
    ]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("login answer is not JSON ({e}): {}", text(&out)));
    json["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {json}"))
        .to_string()
}

fn body(out: &std::process::Output) -> String {
    let s = String::from_utf8_lossy(&out.stdout);
    s.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// Daemon with `/monitoring` = supervisor and nginx as trusted proxy, users `agent` (level 2)
/// and `sup` (level 5), nginx in front.
fn setup() -> (Env, Daemon, Nginx) {
    let env = Env::new();
    env.write_config(&format!(
        "{}trusted_proxies = [\"127.0.0.1/32\"]\n\n[auth.routes]\n\"/monitoring\" = \"supervisor\"\n",
        env.config_text(env.http_port, env.redirect_port, "")
    ));
    env.init();
    env.add_user("agent", 2, PW);
    env.add_user("sup", 5, PW);
    let daemon = env.start();
    let nginx = start_nginx(&env);
    (env, daemon, nginx)
}

/// The session id (`sid` claim) inside a token.
fn sid_of(token: &str) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT has three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    let claims: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON claims");
    claims["sid"].as_str().expect("sid claim").to_string()
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

#[test]
fn nginx_admits_by_token_and_role_and_passes_the_identity_upstream() {
    let (env, mut daemon, nginx) = setup();
    let agent = token(&env, "agent");
    let sup = token(&env, "sup");

    // No token, or a bad one: 401 from nginx, and the app never sees the request.
    for extra in [
        vec![],
        vec!["-H", "Authorization: Bearer not.a.token"],
        vec!["-H", "Cookie: pbxguard_session=garbage"],
        vec!["-H", "X-Auth-User: sup"],
    ] {
        let out = nginx.get("/monitoring/x", &extra);
        assert_eq!(status(&out), 401, "{extra:?}: {}", text(&out));
        assert!(!body(&out).contains("upstream body"), "{}", text(&out));
    }
    let out = nginx.get("/home", &[]);
    assert_eq!(status(&out), 401, "{}", text(&out));

    // An agent below the route's least role: 403.
    let h = bearer(&agent);
    let out = nginx.get("/monitoring/x", &["-H", &h]);
    assert_eq!(status(&out), 403, "{}", text(&out));
    assert!(!body(&out).contains("upstream body"), "{}", text(&out));

    // A supervisor: through, and the app learns who it is.
    let sid = sid_of(&sup);
    let h = bearer(&sup);
    let out = nginx.get("/monitoring/x", &["-H", &h]);
    assert_eq!(status(&out), 200, "{}", text(&out));
    let b = body(&out);
    assert!(
        b.starts_with("upstream body for sup level=5 role=supervisor session="),
        "{b}"
    );
    let session = b.trim_end().rsplit('=').next().unwrap_or("");
    assert_eq!(session.len(), 32, "session id passed on: {b}");
    assert_eq!(session, sid, "the session the app sees is the token's: {b}");

    // The session cookie works as well as the header.
    let cookie = format!("Cookie: theme=dark; pbxguard_session={sup}");
    let out = nginx.get("/monitoring/x", &["-H", &cookie]);
    assert_eq!(status(&out), 200, "{}", text(&out));
    assert!(
        body(&out).starts_with("upstream body for sup "),
        "{}",
        text(&out)
    );
    let cookie = format!("Cookie: pbxguard_session={agent}");
    let out = nginx.get("/monitoring/x", &["-H", &cookie]);
    assert_eq!(status(&out), 403, "{}", text(&out));

    // The agent on a path no route protects: through, under its own name even when it sends
    // X-Auth-* headers of its own (nginx replaces them).
    let h = bearer(&agent);
    let out = nginx.get(
        "/home",
        &[
            "-H",
            &h,
            "-H",
            "X-Auth-User: sup",
            "-H",
            "X-Auth-Level: 9",
            "-H",
            "X-Auth-Role: admin",
        ],
    );
    assert_eq!(status(&out), 200, "{}", text(&out));
    let b = body(&out);
    assert!(
        b.starts_with("upstream body for agent level=2 role=agent session="),
        "{b}"
    );

    // POST with a body: the check gets no body and no Content-Length, so it answers at once.
    let started = Instant::now();
    let out = nginx.get("/home", &["-H", &h, "--data-binary", "x=1&y=2"]);
    assert_eq!(status(&out), 200, "{}", text(&out));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the check waited for a body: {:?}",
        started.elapsed()
    );

    // Logging out ends access through nginx on the very next request (nothing is cached).
    let cert = env.cert().display().to_string();
    let logout = curl(&[
        "-sS",
        "-i",
        "--max-time",
        "10",
        "--cacert",
        &cert,
        "-X",
        "POST",
        "-H",
        &bearer(&sup),
        &format!("https://localhost:{}/api/v1/auth/logout", env.http_port),
    ]);
    assert_eq!(status(&logout), 204, "{}", text(&logout));
    let out = nginx.get("/monitoring/x", &["-H", &bearer(&sup)]);
    assert_eq!(status(&out), 401, "{}", text(&out));

    // pbxguard gone: nginx fails closed.
    let _ = daemon.child.kill();
    let _ = daemon.child.wait();
    let out = nginx.get("/home", &["-H", &h]);
    assert_eq!(status(&out), 500, "{}", text(&out));
    assert!(!body(&out).contains("upstream body"), "{}", text(&out));

    let log = nginx.error_log();
    assert!(!log.contains("[emerg]"), "{log}");
}

#[test]
fn path_tricks_and_forged_headers_do_not_lower_the_requirement() {
    let (env, _daemon, nginx) = setup();
    let agent = token(&env, "agent");
    let h = bearer(&agent);

    // Each of these reaches the app as /monitoring/… (nginx decodes and resolves them the same
    // way pbxguard normalises X-Original-URI), so each needs a supervisor.
    for path in [
        "/monitoring/x",
        "/home/..%2fmonitoring/x",
        "/home/%2e%2e/monitoring/x",
        "/home/../monitoring/x",
        "/home/./../monitoring",
        "//monitoring/x",
        "/%6donitoring/x",
        "/monitoring%2fx",
        "/monitoring/x?role=agent",
        "/monitoring/x?x=/home",
    ] {
        let out = nginx.get(path, &["-H", &h]);
        assert_eq!(status(&out), 403, "{path}: {}", text(&out));
        assert!(
            !body(&out).contains("upstream body"),
            "{path}: {}",
            text(&out)
        );
    }

    // Headers a client could send to steer the check: the snippet overrides or strips them.
    for forged in [
        "X-Required-Role: agent",
        "X-Original-URI: /home",
        "X-Forwarded-For: 127.0.0.1",
    ] {
        let out = nginx.get("/monitoring/x", &["-H", &h, "-H", forged]);
        assert_eq!(status(&out), 403, "{forged}: {}", text(&out));
    }

    // The internal check location cannot be requested from outside.
    let out = nginx.get("/_pbxguard_auth", &["-H", &h]);
    assert_eq!(status(&out), 404, "{}", text(&out));

    // And the agent still gets where it may.
    let out = nginx.get("/home/../home/x", &["-H", &h]);
    assert_eq!(status(&out), 200, "{}", text(&out));
    assert!(
        body(&out).starts_with("upstream body for agent "),
        "{}",
        text(&out)
    );
}
