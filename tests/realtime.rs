//! Asterisk's realtime interface end to end: the real daemon, SIP credentials stored with the
//! CLI, and requests made with curl (libcurl is what res_config_curl uses) carrying exactly what
//! res_config_curl sends, answers parsed the way Asterisk parses them.

mod common;
use common::*;

use std::collections::BTreeMap;

const RT_USER: &str = "asterisk";
const RT_PASSWORD: &str = "realtime-password-for-tests";

struct Rt {
    env: Env,
    daemon: Daemon,
    port: u16,
}

fn setup(writable: &str) -> Rt {
    let env = Env::new();
    let port = free_port();
    let extra = format!(
        "\n[realtime]\nlisten = \"127.0.0.1:{port}\"\nusername = \"{RT_USER}\"\n{writable}\n"
    );
    env.write_config(&env.config_text(env.http_port, env.redirect_port, &extra));
    env.init();
    env.ok(
        &["secret", "set", "realtime/password"],
        format!("{RT_PASSWORD}\n").as_bytes(),
    );
    let daemon = env.start();
    daemon.wait_for_port(port);
    Rt { env, daemon, port }
}

/// `ast_uri_encode(…, ast_uri_http)`: only unreserved characters pass.
fn ast_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `ast_uri_decode(…, ast_uri_http)`: `%XX` only; `+` stays `+`.
fn ast_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() + 1 {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).expect("UTF-8")
}

/// One record line as realtime_curl parses it: split on `&`, then on the first `=`.
fn ast_record(line: &str) -> BTreeMap<String, String> {
    line.split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = ast_decode(k);
            (!k.is_empty()).then(|| (k, ast_decode(v)))
        })
        .collect()
}

/// The request body res_config_curl builds from (field, value) pairs.
fn body(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", ast_encode(k), ast_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

impl Rt {
    /// POST (or GET without a body) as libcurl does for `${CURL(url,body)}`; (status, body).
    fn call(&self, path: &str, body: Option<&str>, user: Option<(&str, &str)>) -> (u16, String) {
        self.call_from(None, path, body, user)
    }

    /// [`Rt::call`] from another loopback address (`curl --interface`).
    fn call_from(
        &self,
        from: Option<&str>,
        path: &str,
        body: Option<&str>,
        user: Option<(&str, &str)>,
    ) -> (u16, String) {
        let auth = user.map(|(u, p)| format!("{u}:{p}@")).unwrap_or_default();
        let url = format!("http://{auth}127.0.0.1:{}{path}", self.port);
        let mut args = vec![
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            "-A",
            "asterisk-libcurl-agent/1.0",
        ];
        if let Some(b) = body {
            args.extend(["--data-binary", b]);
        }
        if let Some(ip) = from {
            args.extend(["--interface", ip]);
        }
        args.push(&url);
        let out = curl(&args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    fn asterisk(&self, op: &str, fields: &[(&str, &str)]) -> (u16, String) {
        let b = body(fields);
        self.call(
            &format!("/realtime/ps_auths/{op}"),
            Some(&b),
            Some((RT_USER, RT_PASSWORD)),
        )
    }

    fn set(&self, id: &str, user: &str, password: &str) {
        self.env.ok(
            &[
                "sip",
                "credential",
                "set",
                id,
                "--username",
                user,
                "--password-stdin",
                "--raw",
            ],
            password.as_bytes(),
        );
    }
}

const NASTY: &str = "p&ss=w%rd +plus ünï€ode;'\"";

#[test]
fn single_and_multi_serve_decrypted_credentials_as_asterisk_reads_them() {
    let rt = setup("");
    rt.set("1001", "1001", NASTY);
    rt.set("1002", "agent-two", "second password 2");
    rt.set("2001", "trunk", "third");

    // Lookup by id, as res_sorcery_realtime does it.
    let (code, text) = rt.asterisk("single", &[("id", "1001")]);
    assert_eq!(code, 200);
    let first_line = text.split(['\r', '\n']).next().unwrap();
    let rec = ast_record(first_line);
    assert_eq!(rec["id"], "1001");
    assert_eq!(rec["auth_type"], "userpass");
    assert_eq!(rec["username"], "1001");
    assert_eq!(
        rec["password"], NASTY,
        "the password survives Asterisk's decoder"
    );
    assert!(
        !first_line.contains('+'),
        "a + would not survive: {first_line}"
    );

    // `id LIKE %` (every object) and a prefix.
    let (_, text) = rt.asterisk("multi", &[("id LIKE", "%")]);
    let recs: Vec<_> = text
        .split(['\r', '\n'])
        .filter(|l| !l.is_empty())
        .map(ast_record)
        .collect();
    let ids: Vec<&str> = recs.iter().map(|r| r["id"].as_str()).collect();
    assert_eq!(ids, ["1001", "1002", "2001"]);
    assert_eq!(recs[1]["password"], "second password 2");
    let (_, text) = rt.asterisk("multi", &[("id LIKE", "10%")]);
    assert_eq!(text.lines().count(), 2, "{text}");
    let (_, text) = rt.asterisk("multi", &[("username", "trunk")]);
    assert_eq!(ast_record(text.trim())["id"], "2001");

    // Unknown ids and families: an empty body, which Asterisk reads as "no such object".
    assert_eq!(
        rt.asterisk("single", &[("id", "9999")]),
        (200, String::new())
    );
    let (code, text) = rt.call(
        "/realtime/ps_endpoints/single",
        Some("id=1001"),
        Some((RT_USER, RT_PASSWORD)),
    );
    assert_eq!((code, text.as_str()), (200, ""));
    // A lookup without conditions gets nothing rather than everything.
    assert_eq!(rt.asterisk("multi", &[]), (200, String::new()));
    // No oracle: a condition on the password matches nothing.
    assert_eq!(
        rt.asterisk("single", &[("id", "2001"), ("password", "third")])
            .1,
        ""
    );
    // require: all columns exist; static files are not served.
    assert_eq!(
        rt.asterisk("require", &[("username", "char:40")]).1.trim(),
        "0"
    );
    assert_eq!(
        rt.call(
            "/realtime/ps_auths/static?file=pjsip.conf",
            None,
            Some((RT_USER, RT_PASSWORD))
        ),
        (200, String::new())
    );

    let metrics = rt.env.request("GET", "/metrics", &[], None).body;
    assert!(
        metrics.contains("pbxguard_realtime_decryptions_total{result=\"ok\"} 7"),
        "1 + 3 + 2 + 1 decryptions, none for the lookups that matched nothing: {metrics}"
    );
    assert!(!rt.daemon.log().contains(NASTY));
}

#[test]
fn credentials_are_required_and_checked() {
    let rt = setup("");
    rt.set("1001", "1001", "pw");
    let b = body(&[("id", "1001")]);
    for user in [
        None,
        Some((RT_USER, "wrong")),
        Some(("someone", RT_PASSWORD)),
    ] {
        let (code, text) = rt.call("/realtime/ps_auths/single", Some(&b), user);
        assert_eq!(code, 401, "{user:?}");
        assert_eq!(text, "", "nothing for Asterisk to misread");
    }
    // Writes always get a number: res_config_curl reads past the end of an empty body.
    for op in ["store", "update?id=1001", "destroy"] {
        let (code, text) = rt.call(
            &format!("/realtime/ps_auths/{op}"),
            Some("id=1001&"),
            Some((RT_USER, "wrong")),
        );
        assert_eq!((code, text.as_str()), (401, "-1\n"), "{op}");
    }
    let (code, text) = rt.call(
        "/realtime/ps_auths/store",
        Some("id=%zz"),
        Some((RT_USER, RT_PASSWORD)),
    );
    assert_eq!((code, text.as_str()), (400, "-1\n"));
    rt.daemon
        .wait_for_log("realtime request with wrong credentials refused");
    rt.daemon
        .wait_for_log("realtime request without credentials refused");
    assert!(!rt.daemon.log().contains("wrong\""));
    let metrics = rt.env.request("GET", "/metrics", &[], None).body;
    assert!(
        !metrics.contains("pbxguard_realtime_decryptions_total{result=\"ok\"}"),
        "refused requests decrypt nothing: {metrics}"
    );
    assert!(
        metrics.contains(
            "pbxguard_realtime_requests_total{family=\"ps_auths\",op=\"single\",status=\"401\"} 3"
        ),
        "{metrics}"
    );
    // Still serving the right client.
    assert_eq!(rt.asterisk("single", &[("id", "1001")]).0, 200);
}

/// An address that sends ten wrong credentials within a minute gets 429 with nothing to
/// misread, even with the right password, while other addresses are served; logged once.
#[test]
fn an_address_guessing_the_password_gets_429_and_others_are_served() {
    let rt = setup("");
    rt.set("1001", "1001", "pw");
    let b = body(&[("id", "1001")]);
    for i in 0..10 {
        let (code, text) = rt.call(
            "/realtime/ps_auths/single",
            Some(&b),
            Some((RT_USER, "wrong")),
        );
        assert_eq!((code, text.as_str()), (401, ""), "try {i}");
    }
    let (code, text) = rt.asterisk("single", &[("id", "1001")]);
    assert_eq!((code, text.as_str()), (429, ""), "not even looked at");
    let (code, text) = rt.call(
        "/realtime/ps_auths/store",
        Some("id=1001&"),
        Some((RT_USER, RT_PASSWORD)),
    );
    assert_eq!(
        (code, text.as_str()),
        (429, "-1\n"),
        "writes still get a number"
    );
    // Another address is served.
    let (code, text) = rt.call_from(
        Some("127.0.0.2"),
        "/realtime/ps_auths/single",
        Some(&b),
        Some((RT_USER, RT_PASSWORD)),
    );
    assert_eq!(code, 200, "{text}");
    assert!(
        ast_record(text.trim_end())
            .get("password")
            .is_some_and(|p| p == "pw"),
        "{text}"
    );
    rt.daemon
        .wait_for_log("too many wrong credentials from this address");
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(
        rt.daemon
            .log()
            .matches("too many wrong credentials from this address")
            .count(),
        1
    );
    let metrics = rt.env.request("GET", "/metrics", &[], None).body;
    assert!(
        metrics.contains(
            "pbxguard_realtime_requests_total{family=\"ps_auths\",op=\"single\",status=\"429\"} 1"
        ),
        "{metrics}"
    );
}

/// D3: the realtime listener has the `[http]` limits: a request head that never ends is cut
/// off after `header_timeout`, a connection that says nothing within the timeouts too, and
/// connections over `max_connections` are closed at once, while the API listener is
/// unaffected.
#[test]
fn the_realtime_listener_enforces_the_http_timeouts_and_connection_cap() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    let env = Env::new();
    let port = free_port();
    let extra = format!(
        "max_connections = 3\nheader_timeout = \"1s\"\nrequest_timeout = \"1s\"\nidle_timeout = \"2s\"\n\
         \n[realtime]\nlisten = \"127.0.0.1:{port}\"\nusername = \"{RT_USER}\"\n"
    );
    env.write_config(&env.config_text(env.http_port, env.redirect_port, &extra));
    env.init();
    env.ok(
        &["secret", "set", "realtime/password"],
        format!("{RT_PASSWORD}\n").as_bytes(),
    );
    let daemon = env.start();
    daemon.wait_for_port(port);
    let closed_after = |mut s: TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
        let started = Instant::now();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        started.elapsed()
    };
    // A head that never ends.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.write_all(b"POST /realtime/ps_auths/single HTTP/1.1\r\n")
        .unwrap();
    let waited = closed_after(slow);
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "header timeout: {waited:?}"
    );
    // A connection that says nothing at all (the first of the timeouts closes it).
    let silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let waited = closed_after(silent);
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "idle timeout: {waited:?}"
    );
    // Three connections hold every slot; the fourth is closed at once.
    let held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let extra_conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let waited = closed_after(extra_conn);
    assert!(
        waited < Duration::from_millis(800),
        "over the cap: {waited:?}"
    );
    // The API listener has its own slots.
    assert_eq!(env.request("GET", "/healthz", &[], None).status, 200);
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    let metrics = env.request("GET", "/metrics", &[], None).body;
    assert!(
        metrics.contains("pbxguard_connections_refused_total{listener=\"realtime\"} 1"),
        "{metrics}"
    );
    // And realtime serves again.
    let rt = Rt { env, daemon, port };
    rt.set("1001", "1001", "pw");
    assert_eq!(rt.asterisk("single", &[("id", "1001")]).0, 200);
}

#[test]
fn writes_are_refused_unless_the_family_is_writable() {
    let rt = setup("");
    rt.set("1001", "1001", "pw");
    for (op, fields) in [
        (
            "store",
            vec![("id", "x"), ("username", "x"), ("password", "y")],
        ),
        ("destroy", vec![("id", "1001")]),
    ] {
        assert_eq!(rt.asterisk(op, &fields).1.trim(), "-1", "{op}");
    }
    let (_, text) = rt.call(
        "/realtime/ps_auths/update?id=1001",
        Some("password=new"),
        Some((RT_USER, RT_PASSWORD)),
    );
    assert_eq!(text.trim(), "-1");
    assert_eq!(
        ast_record(rt.asterisk("single", &[("id", "1001")]).1.trim())["password"],
        "pw"
    );
}

#[test]
fn a_writable_family_stores_updates_and_destroys() {
    let rt = setup("writable = [\"ps_auths\"]");
    let (_, n) = rt.asterisk(
        "store",
        &[
            ("id", "3001"),
            ("auth_type", "userpass"),
            ("username", "3001"),
            ("password", NASTY),
        ],
    );
    assert_eq!(n.trim(), "1");
    assert_eq!(
        ast_record(rt.asterisk("single", &[("id", "3001")]).1.trim())["password"],
        NASTY
    );
    let list = String::from_utf8(rt.env.ok(&["sip", "credential", "list", "--json"], b"")).unwrap();
    assert!(list.contains("\"3001\"") && !list.contains("ünï"), "{list}");

    let (_, n) = rt.call(
        "/realtime/ps_auths/update?id=3001",
        Some(&body(&[("password", "changed")])),
        Some((RT_USER, RT_PASSWORD)),
    );
    assert_eq!(n.trim(), "1");
    let rec = ast_record(rt.asterisk("single", &[("id", "3001")]).1.trim());
    assert_eq!(
        (rec["password"].as_str(), rec["username"].as_str()),
        ("changed", "3001")
    );
    let (_, n) = rt.call(
        "/realtime/ps_auths/update?id=nope",
        Some("password=x"),
        Some((RT_USER, RT_PASSWORD)),
    );
    assert_eq!(n.trim(), "0");
    // md5 credentials cannot be stored as passwords.
    let (_, n) = rt.asterisk(
        "store",
        &[
            ("id", "3002"),
            ("auth_type", "md5"),
            ("username", "u"),
            ("password", "p"),
        ],
    );
    assert_eq!(n.trim(), "-1");
    // destroy sends a trailing `&`.
    let (_, n) = rt.call(
        "/realtime/ps_auths/destroy",
        Some("id=3001&"),
        Some((RT_USER, RT_PASSWORD)),
    );
    assert_eq!(n.trim(), "1");
    assert_eq!(rt.asterisk("single", &[("id", "3001")]).1, "");
    let secrets = sqlite(
        &rt.env.db(),
        "SELECT count(*) FROM secrets WHERE name LIKE 'sip/%'",
    );
    assert_eq!(secrets, "0", "the password left the vault too");
}

#[test]
fn a_credential_that_cannot_be_decrypted_gives_no_record() {
    let rt = setup("");
    rt.set("1001", "1001", "pw-one");
    rt.set("1002", "1002", "pw-two");
    sqlite(
        &rt.env.db(),
        "UPDATE secrets SET ciphertext = zeroblob(40) WHERE name = 'sip/1002'",
    );
    assert_eq!(
        rt.asterisk("single", &[("id", "1002")]),
        (500, String::new())
    );
    let (code, text) = rt.asterisk("multi", &[("id LIKE", "%")]);
    assert_eq!((code, text.as_str()), (500, ""), "never a partial list");
    rt.daemon.wait_for_log("SIP credential cannot be decrypted");
    assert_eq!(
        ast_record(rt.asterisk("single", &[("id", "1001")]).1.trim())["password"],
        "pw-one"
    );
    let metrics = rt.env.request("GET", "/metrics", &[], None).body;
    assert!(
        metrics.contains("pbxguard_realtime_decryptions_total{result=\"error\"} 2"),
        "{metrics}"
    );
}

#[test]
fn malformed_requests_get_empty_answers_and_the_daemon_carries_on() {
    let rt = setup("");
    rt.set("1001", "1001", "pw");
    let auth = Some((RT_USER, RT_PASSWORD));
    for bad in ["id=%zz", "=x", "id=%ff%fe"] {
        let (code, text) = rt.call("/realtime/ps_auths/single", Some(bad), auth);
        assert_eq!((code, text.as_str()), (400, ""), "{bad}");
    }
    let huge = format!("id={}", "a".repeat(70_000));
    let (code, text) = rt.call("/realtime/ps_auths/single", Some(&huge), auth);
    assert_eq!((code, text.as_str()), (413, ""));
    assert_eq!(
        rt.call("/realtime/ps_auths/single", None, auth).0,
        405,
        "GET single"
    );
    assert_eq!(
        rt.call("/realtime/ps_auths/bogus", Some("id=1"), auth).0,
        404
    );
    assert_eq!(rt.call("/elsewhere", None, auth).0, 404);
    assert_eq!(rt.asterisk("single", &[("id", "1001")]).0, 200);
}

#[test]
fn cli_manages_credentials_without_ever_printing_passwords() {
    let env = Env::new();
    env.init();
    env.ok(
        &[
            "sip",
            "credential",
            "set",
            "1001",
            "--username",
            "1001",
            "--password-stdin",
        ],
        b"very secret\n",
    );
    env.ok(
        &[
            "sip",
            "credential",
            "set",
            "1001",
            "--username",
            "renamed",
            "--password-stdin",
        ],
        b"newer secret\n",
    );
    let text = String::from_utf8(env.ok(&["sip", "credential", "list"], b"")).unwrap();
    assert!(
        text.contains("renamed") && !text.contains("secret"),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&env.ok(&["sip", "credential", "list", "--json"], b"")).unwrap();
    assert_eq!(json[0]["id"], "1001");
    assert_eq!(json[0]["username"], "renamed");
    assert!(json[0].get("password").is_none());
    assert_eq!(
        String::from_utf8(env.ok(&["secret", "get", "sip/1001"], b"")).unwrap(),
        "newer secret"
    );
    for (args, stdin, code) in [
        (
            vec![
                "sip",
                "credential",
                "set",
                "../x",
                "--username",
                "u",
                "--password-stdin",
            ],
            &b"p\n"[..],
            64,
        ),
        (
            vec![
                "sip",
                "credential",
                "set",
                "x",
                "--username",
                "a b",
                "--password-stdin",
            ],
            &b"p\n"[..],
            64,
        ),
        (
            vec![
                "sip",
                "credential",
                "set",
                "x",
                "--username",
                "u",
                "--password-stdin",
            ],
            &b"\n"[..],
            64,
        ),
        (vec!["sip", "credential", "rm", "nope"], &b""[..], 1),
    ] {
        let out = env.run(&args, stdin);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    env.ok(&["sip", "credential", "rm", "1001"], b"");
    assert!(env.run(&["secret", "get", "sip/1001"], b"").status.code() != Some(0));
    let rows = sqlite(
        &env.db(),
        "SELECT action FROM audit_log WHERE action LIKE 'sip.%' ORDER BY id",
    );
    assert_eq!(
        rows,
        "sip.credential.set\nsip.credential.set\nsip.credential.rm"
    );
}
