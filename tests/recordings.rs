//! Signed recording links end to end: the real daemon over verified TLS, links minted by the
//! CLI and the API, downloads with curl, the audit log read back with sqlite3 or psql.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

const PW: &str = "a long password";
/// An Asterisk-style name: date, time, caller number, agent.
const REC: &str = "2026/11/29/20261129-101500_5551234567_agent1-all.wav";

struct Rec {
    env: Env,
    daemon: Daemon,
}

fn root(env: &Env) -> PathBuf {
    env.path("rec")
}

/// A daemon whose [recordings] root holds REC (1 MiB + 17 bytes of pseudo-random data).
fn setup(extra: &str) -> Rec {
    let env = Env::new();
    let rec = format!(
        "\n[recordings]\nroot = \"{}\"\nlink_ttl = \"8h\"\nmax_link_ttl = \"1d\"\n{extra}",
        root(&env).display()
    );
    env.write_config(&env.config_text(env.http_port, env.redirect_port, &rec));
    env.init();
    write_file(&root(&env).join(REC), &pattern(1024 * 1024 + 17, 1));
    let daemon = env.start();
    Rec { env, daemon }
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn write_file(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

fn sha(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

/// `pbxguard recording link ARGS…`: the URL.
fn link(env: &Env, args: &[&str]) -> String {
    let mut all = vec!["recording", "link"];
    all.extend_from_slice(args);
    String::from_utf8(env.ok(&all, b""))
        .unwrap()
        .trim()
        .to_string()
}

/// The path-and-query part of a link URL (the tests talk to the daemon by port).
fn rec_path(url: &str) -> String {
    let at = url.find("/rec/").expect("a /rec/ URL");
    url[at..].to_string()
}

fn token_of(url: &str) -> String {
    rec_path(url)["/rec/".len()..].to_string()
}

/// A download: status, headers (lower-case names) and body bytes.
#[derive(Debug)]
struct Got {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// GET (or `-I`/`-X` via `extra`) over verified TLS, body to a file so binary data survives.
fn fetch(env: &Env, path: &str, extra: &[&str]) -> Got {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let body = env.path(&format!("body.{n}"));
    let head = env.path(&format!("head.{n}"));
    let cert = env.cert().display().to_string();
    let url = format!("https://localhost:{}{path}", env.http_port);
    let mut args: Vec<&str> = vec!["-sS", "--max-time", "30", "--cacert", &cert, "--path-as-is"];
    let (b, h) = (body.display().to_string(), head.display().to_string());
    args.extend_from_slice(&["-o", &b, "-D", &h]);
    args.extend_from_slice(extra);
    args.push(&url);
    let out = curl(&args);
    assert!(out.status.success(), "curl {path}: {}", text(&out));
    let head_text = std::fs::read_to_string(&head).unwrap_or_default();
    let mut lines = head_text.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let got = Got {
        status,
        headers,
        body: std::fs::read(&body).unwrap_or_default(),
    };
    let _ = std::fs::remove_file(&body);
    let _ = std::fs::remove_file(&head);
    got
}

fn json_of(got: &Got) -> serde_json::Value {
    serde_json::from_slice(&got.body).unwrap_or_else(|e| panic!("not JSON ({e}): {got:?}"))
}

/// Audit rows of one action, oldest first, as `actor|target|detail`; waits for the batched
/// download log to catch up with `want` rows.
fn audit(env: &Env, action: &str, want: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = env.sql(&format!("SELECT actor || '|' || target || '|' || detail FROM audit_log WHERE action = '{action}' ORDER BY id"),
        );
        let rows: Vec<String> = rows.lines().map(str::to_string).collect();
        if rows.len() >= want || Instant::now() > deadline {
            return rows;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn mint_api(env: &Env, token: &str, body: &str) -> Resp {
    let auth = format!("Authorization: Bearer {token}");
    env.request(
        "POST",
        "/api/v1/recordings/links",
        &[&auth, "Content-Type: application/json"],
        Some(body),
    )
}

#[test]
fn cli_links_download_byte_exact_with_the_right_headers() {
    let Rec { env, daemon } = setup("");
    let data = std::fs::read(root(&env).join(REC)).unwrap();
    let url = link(&env, &[REC]);
    assert!(url.starts_with(&format!("https://localhost:{}/rec/", env.http_port)));
    // The URL reveals nothing of the recording.
    for leak in ["5551234567", "agent1", "2026", ".wav", "20261129"] {
        assert!(!url.contains(leak), "{url} leaks {leak}");
    }
    assert_eq!(token_of(&url).len(), 82);

    let full = fetch(&env, &rec_path(&url), &[]);
    assert_eq!(full.status, 200, "{full:?}");
    assert_eq!(sha(&full.body), sha(&data));
    assert_eq!(
        full.header("content-length"),
        Some(data.len().to_string().as_str())
    );
    assert_eq!(full.header("content-type"), Some("audio/wav"));
    assert_eq!(full.header("accept-ranges"), Some("bytes"));
    assert_eq!(full.header("cache-control"), Some("private, no-store"));
    assert_eq!(full.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(
        full.header("content-disposition"),
        Some("attachment; filename=\"20261129-101500_5551234567_agent1-all.wav\"")
    );
    let etag = full.header("etag").expect("etag").to_string();
    assert!(full.header("last-modified").is_some());

    // One range.
    let part = fetch(&env, &rec_path(&url), &["-H", "Range: bytes=1000-200999"]);
    assert_eq!(part.status, 206);
    assert_eq!(part.body, data[1000..201_000]);
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 1000-200999/{}", data.len()).as_str())
    );
    let tail = fetch(&env, &rec_path(&url), &["-H", "Range: bytes=-17"]);
    assert_eq!(tail.body, data[data.len() - 17..]);
    let bad = fetch(&env, &rec_path(&url), &["-H", "Range: bytes=99999999-"]);
    assert_eq!(bad.status, 416);
    assert_eq!(
        bad.header("content-range"),
        Some(format!("bytes */{}", data.len()).as_str())
    );

    // Conditional requests.
    let inm = format!("If-None-Match: {etag}");
    let not_modified = fetch(&env, &rec_path(&url), &["-H", &inm]);
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());
    let if_range_old = fetch(
        &env,
        &rec_path(&url),
        &["-H", "Range: bytes=0-9", "-H", "If-Range: \"stale\""],
    );
    assert_eq!(
        if_range_old.status, 200,
        "a stale If-Range gets the whole file"
    );
    assert_eq!(if_range_old.body.len(), data.len());
    let ifr = format!("If-Range: {etag}");
    let if_range_ok = fetch(
        &env,
        &rec_path(&url),
        &["-H", "Range: bytes=0-9", "-H", &ifr],
    );
    assert_eq!(if_range_ok.status, 206);
    assert_eq!(if_range_ok.body, data[..10]);

    // HEAD: the headers of a GET, no body.
    let head = fetch(&env, &rec_path(&url), &["-I"]);
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(data.len().to_string().as_str())
    );
    assert_eq!(head.header("etag"), Some(etag.as_str()));

    // Every request is in the audit log, with bytes and status, never with the token.
    let minted = audit(&env, "recording.link", 1);
    assert_eq!(minted.len(), 1);
    assert!(
        minted[0].starts_with("cli:") && minted[0].contains(REC),
        "{minted:?}"
    );
    let rows = audit(&env, "recording.download", 8);
    assert_eq!(rows.len(), 8, "{rows:?}");
    assert!(rows[0].starts_with("ip:127.0.0.1|") && rows[0].contains(REC));
    assert!(
        rows[0].contains(&format!("status=200 bytes={} complete=true", data.len())),
        "{rows:?}"
    );
    assert!(
        rows[1].contains("status=206 bytes=200000 complete=true"),
        "{rows:?}"
    );
    assert!(rows.iter().any(|r| r.contains("status=304")));
    assert!(rows
        .iter()
        .any(|r| r.contains("method=HEAD status=200 bytes=0")));
    let everything = env.sql("SELECT target, detail FROM audit_log");
    assert!(
        !everything.contains(&token_of(&url)),
        "the token is never logged"
    );
    assert!(
        !daemon.log().contains(&token_of(&url)),
        "nor in the daemon log"
    );
}

#[test]
fn multiple_ranges_come_as_multipart_byteranges() {
    let Rec { env, daemon: _d } = setup("");
    let data = std::fs::read(root(&env).join(REC)).unwrap();
    let url = link(&env, &[REC]);
    let got = fetch(
        &env,
        &rec_path(&url),
        &["-H", "Range: bytes=0-9,100-109,-5"],
    );
    assert_eq!(got.status, 206);
    let ctype = got.header("content-type").unwrap().to_string();
    let boundary = ctype
        .strip_prefix("multipart/byteranges; boundary=")
        .expect("multipart type");
    let len = data.len();
    let mut want = Vec::new();
    for (s, e) in [(0usize, 9usize), (100, 109), (len - 5, len - 1)] {
        want.extend_from_slice(
            format!("\r\n--{boundary}\r\nContent-Type: audio/wav\r\nContent-Range: bytes {s}-{e}/{len}\r\n\r\n")
                .as_bytes(),
        );
        want.extend_from_slice(&data[s..=e]);
    }
    want.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    assert_eq!(got.body, want);
    assert_eq!(
        got.header("content-length"),
        Some(want.len().to_string().as_str())
    );
}

#[test]
fn minting_through_the_api_needs_a_supervisor_and_a_safe_path() {
    let Rec { env, daemon } = setup("");
    env.add_user("agent", 2, PW);
    env.add_user("sup", 5, PW);
    let agent = env.token("agent", PW);
    let sup = env.token("sup", PW);
    let r = root(&env);
    std::fs::create_dir_all(r.join("dir.wav")).unwrap();
    std::fs::write(env.path("outside.wav"), b"not a recording").unwrap();
    std::os::unix::fs::symlink(env.path("outside.wav"), r.join("escape.wav")).unwrap();
    std::os::unix::fs::symlink("2026/11/29", r.join("today")).unwrap();
    assert!(Command::new("mkfifo")
        .arg(r.join("pipe.wav"))
        .status()
        .unwrap()
        .success());

    let body = |p: &str| serde_json::json!({ "path": p }).to_string();
    let denied = mint_api(&env, &agent, &body(REC));
    assert_eq!(denied.status, 403, "{denied:?}");
    assert_eq!(denied.json()["error"], "forbidden");
    let anonymous = env.request(
        "POST",
        "/api/v1/recordings/links",
        &["Content-Type: application/json"],
        Some(&body(REC)),
    );
    assert_eq!(anonymous.status, 401);

    let ok = mint_api(&env, &sup, &body(REC));
    assert_eq!(ok.status, 200, "{ok:?}");
    let url = ok.json()["url"].as_str().unwrap().to_string();
    let expires = ok.json()["expires_at"].as_str().unwrap().to_string();
    assert!(expires.ends_with('Z'));
    assert_eq!(fetch(&env, &rec_path(&url), &[]).status, 200);
    let minted = audit(&env, "recording.link", 1);
    assert!(
        minted[0].starts_with("sup|") && minted[0].contains("ip=127.0.0.1"),
        "{minted:?}"
    );

    // An absolute path inside root, and a symlink that stays inside, are fine.
    let abs = r.join(REC).display().to_string();
    assert_eq!(mint_api(&env, &sup, &body(&abs)).status, 200);
    let via_link = mint_api(
        &env,
        &sup,
        &body("today/20261129-101500_5551234567_agent1-all.wav"),
    );
    assert_eq!(via_link.status, 200, "{via_link:?}");

    for (path, status) in [
        ("../outside.wav", 400),
        ("2026/../../outside.wav", 400),
        ("%2e%2e%2foutside.wav", 400),
        ("%252e%252e%252foutside.wav", 400),
        ("2026/11/29/..%2f..%2f..%2f..%2foutside.wav", 400),
        ("/etc/passwd", 400),
        (&env.path("outside.wav").display().to_string(), 400),
        ("escape.wav", 400),
        ("dir.wav", 400),
        ("pipe.wav", 400),
        ("a\u{0}b.wav", 400),
        ("", 400),
        ("2026/11/29/missing.wav", 404),
    ] {
        let got = mint_api(&env, &sup, &body(path));
        assert_eq!(got.status, status, "{path:?}: {got:?}");
        let code = if status == 404 {
            "not_found"
        } else {
            "bad_path"
        };
        assert_eq!(got.json()["error"], code, "{path:?}");
    }
    for bad in [
        r#"{"path": 5}"#.to_string(),
        r#"{"path": "x", "extra": 1}"#.to_string(),
        "not json".to_string(),
        serde_json::json!({"path": REC, "ttl": "2d"}).to_string(),
        serde_json::json!({"path": REC, "ttl": "soon"}).to_string(),
    ] {
        let got = mint_api(&env, &sup, &bad);
        assert_eq!(got.status, 400, "{bad}: {got:?}");
    }
    let short = mint_api(
        &env,
        &sup,
        &serde_json::json!({"path": REC, "ttl": "10m"}).to_string(),
    );
    assert_eq!(short.status, 200);
    // Nothing above upset the daemon.
    assert_eq!(env.request("GET", "/healthz", &[], None).status, 200);
    assert!(!daemon.log().contains("panick"));
}

#[test]
fn altered_tokens_are_403_and_expired_ones_410() {
    let Rec { env, daemon } = setup("");
    let url = link(&env, &[REC]);
    let token = token_of(&url);
    let raw = URL_SAFE_NO_PAD.decode(&token).unwrap();

    // Flip one bit in every byte (version, key id, link id, expiry, MAC).
    for i in 0..raw.len() {
        let mut b = raw.clone();
        b[i] ^= 0x10;
        let forged = URL_SAFE_NO_PAD.encode(&b);
        let got = fetch(&env, &format!("/rec/{forged}"), &[]);
        assert_eq!(got.status, 403, "byte {i}");
        assert_eq!(json_of(&got)["error"], "bad_link");
    }
    // A later expiry is a forgery, not a renewal.
    let mut later = raw.clone();
    later[21..29].copy_from_slice(&(i64::MAX / 2).to_be_bytes());
    assert_eq!(
        fetch(
            &env,
            &format!("/rec/{}", URL_SAFE_NO_PAD.encode(&later)),
            &[]
        )
        .status,
        403
    );
    for bad in [
        &token[..81],
        &token[..40],
        &format!("{token}A"),
        "",
        "x",
        "..%2f..%2fetc%2fpasswd",
        "../../etc/passwd",
        &format!("{}%{:02X}", &token[..81], token.as_bytes()[81]),
        &format!("{token}/extra"),
    ] {
        let got = fetch(&env, &format!("/rec/{bad}"), &[]);
        assert_eq!(got.status, 403, "{bad:?}");
    }
    // Refusals before the database leave no audit rows, only a metric: after one genuine
    // download, that download is the only row.
    assert_eq!(fetch(&env, &rec_path(&url), &["-I"]).status, 200);
    let rows = audit(&env, "recording.download", 1);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let metrics = env.request("GET", "/metrics", &[], None);
    assert!(
        metrics
            .body
            .contains("pbxguard_recording_link_refusals_total{result=\"bad_signature\"}"),
        "{}",
        metrics.body
    );

    let short = link(&env, &[REC, "--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(2100));
    let gone = fetch(&env, &rec_path(&short), &[]);
    assert_eq!(gone.status, 410, "{gone:?}");
    assert_eq!(json_of(&gone)["error"], "link_expired");
    // Still the whole catalogue of refusals, and the daemon still serves the good link.
    assert_eq!(fetch(&env, &rec_path(&url), &["-I"]).status, 200);
    let rows = audit(&env, "recording.download", 3);
    assert!(rows[1].contains("status=410"), "{rows:?}");
    assert!(!daemon.log().contains("panick"));
}

#[test]
fn revocation_applies_at_once_from_the_cli_and_the_api() {
    let Rec { env, daemon: _d } = setup("");
    env.add_user("boss", 9, PW);
    env.add_user("sup", 5, PW);
    let admin = env.token("boss", PW);
    let sup = env.token("sup", PW);
    let a = link(&env, &[REC]);
    let b = link(&env, &[REC]);
    let c = link(&env, &[REC]);
    for u in [&a, &b, &c] {
        assert_eq!(fetch(&env, &rec_path(u), &["-I"]).status, 200);
    }

    // CLI, by URL.
    env.ok(&["recording", "revoke", &a], b"");
    let got = fetch(&env, &rec_path(&a), &[]);
    assert_eq!(got.status, 403);
    assert_eq!(json_of(&got)["error"], "link_revoked");

    // API, by id, admin only.
    let auth = format!("Authorization: Bearer {admin}");
    let list = env.request("GET", "/api/v1/admin/recordings/links", &[&auth], None);
    assert_eq!(list.status, 200);
    let links = list.json();
    let links = links.as_array().unwrap();
    assert_eq!(links.len(), 2, "revoked links are not live: {links:?}");
    assert!(links
        .iter()
        .all(|l| l["path"] == REC && l["state"] == "active"));
    let id_b = links
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_string())
        .find(|id| fetch_id(&b) == *id)
        .expect("b is listed");
    let sup_auth = format!("Authorization: Bearer {sup}");
    let path = format!("/api/v1/admin/recordings/links/{id_b}");
    assert_eq!(env.request("DELETE", &path, &[&sup_auth], None).status, 403);
    assert_eq!(env.request("DELETE", &path, &[&auth], None).status, 204);
    assert_eq!(fetch(&env, &rec_path(&b), &[]).status, 403);
    assert_eq!(
        env.request(
            "DELETE",
            "/api/v1/admin/recordings/links/00000000000000000000000000000000",
            &[&auth],
            None
        )
        .status,
        404
    );
    let all = env.request(
        "GET",
        "/api/v1/admin/recordings/links?all=true",
        &[&auth],
        None,
    );
    let states: Vec<String> = all
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        states.iter().filter(|s| *s == "revoked").count(),
        2,
        "{states:?}"
    );

    // Every live link to a recording at once.
    let out = String::from_utf8(env.ok(&["recording", "revoke", "--path", REC], b"")).unwrap();
    assert!(out.contains("revoked 1 link"), "{out}");
    assert_eq!(fetch(&env, &rec_path(&c), &[]).status, 403);
    let json = env.ok(&["recording", "list", "--all", "--json"], b"");
    let listed: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["state"] == "revoked"));
    assert_eq!(audit(&env, "recording.revoke", 3).len(), 3);
}

fn fetch_id(url: &str) -> String {
    let raw = URL_SAFE_NO_PAD.decode(token_of(url)).unwrap();
    raw[5..21].iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn files_are_checked_again_when_served() {
    let Rec { env, daemon } = setup("");
    let r = root(&env);
    write_file(&r.join("a.wav"), b"first");
    write_file(&r.join("b.wav"), b"second");
    write_file(&r.join("c.wav"), b"third");
    std::fs::write(env.path("secret.txt"), b"outside root").unwrap();
    let a = link(&env, &["a.wav"]);
    let b = link(&env, &["b.wav"]);
    let c = link(&env, &["c.wav"]);

    // Replaced by a symlink out of root after minting.
    std::fs::remove_file(r.join("a.wav")).unwrap();
    std::os::unix::fs::symlink(env.path("secret.txt"), r.join("a.wav")).unwrap();
    let got = fetch(&env, &rec_path(&a), &[]);
    assert_eq!(got.status, 403, "{got:?}");
    assert!(!String::from_utf8_lossy(&got.body).contains("outside root"));
    // Gone.
    std::fs::remove_file(r.join("b.wav")).unwrap();
    assert_eq!(fetch(&env, &rec_path(&b), &[]).status, 404);
    // Replaced by a directory.
    std::fs::remove_file(r.join("c.wav")).unwrap();
    std::fs::create_dir(r.join("c.wav")).unwrap();
    assert_eq!(fetch(&env, &rec_path(&c), &[]).status, 403);
    daemon.wait_for_log("no longer exists");
    daemon.wait_for_log("no longer resolves to a regular file");
    // And the daemon carries on.
    let ok = link(&env, &[REC]);
    assert_eq!(fetch(&env, &rec_path(&ok), &["-I"]).status, 200);

    // The recordings folder itself unusable (a file where the folder was): a 500 with the
    // reason in the log, and service resumes when the folder is back.
    std::fs::rename(&r, env.path("rec.away")).unwrap();
    std::fs::write(&r, b"not a folder").unwrap();
    let broken = fetch(&env, &rec_path(&ok), &[]);
    assert_eq!(broken.status, 500, "{broken:?}");
    assert_eq!(json_of(&broken)["error"], "internal");
    daemon.wait_for_log("recording cannot be read");
    std::fs::remove_file(&r).unwrap();
    std::fs::rename(env.path("rec.away"), &r).unwrap();
    assert_eq!(fetch(&env, &rec_path(&ok), &["-I"]).status, 200);

    let rows = audit(&env, "recording.download", 6);
    assert!(rows.iter().any(|r| r.contains("status=404")), "{rows:?}");
    assert!(rows.iter().any(|r| r.contains("status=500")), "{rows:?}");
    assert!(
        rows.iter().filter(|r| r.contains("status=403")).count() == 2,
        "{rows:?}"
    );
}

#[test]
fn cli_refuses_bad_paths_and_lifetimes_clearly() {
    let Rec { env, daemon: _d } = setup("");
    for (args, code, needle) in [
        (vec!["../x.wav"], 64, "`..`"),
        (vec!["/etc/passwd"], 64, "leaves the recordings folder"),
        (vec!["2026"], 64, "not a regular file"),
        (vec!["nope.wav"], 1, "no such recording"),
        (vec![REC, "--ttl", "2d"], 64, "max_link_ttl"),
        (vec![REC, "--ttl", "0s"], 64, "more than zero"),
        (vec![REC, "--ttl", "later"], 64, "later"),
    ] {
        let mut all = vec!["recording", "link"];
        all.extend_from_slice(&args);
        let out = env.run(&all, b"");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let json = env.ok(&["recording", "link", REC, "--json", "--ttl", "5m"], b"");
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v["path"], REC);
    assert_eq!(v["id"].as_str().unwrap().len(), 32);
    assert_eq!(
        fetch(&env, &rec_path(v["url"].as_str().unwrap()), &["-I"]).status,
        200
    );
    let out = env.run(&["recording", "revoke", "nonsense"], b"");
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn rotating_the_key_keeps_earlier_links_valid() {
    let Rec { env, daemon: _d } = setup("");
    let before = link(&env, &[REC]);
    assert_eq!(fetch(&env, &rec_path(&before), &["-I"]).status, 200);
    let out = String::from_utf8(env.ok(&["recording", "rotate-key"], b"")).unwrap();
    assert!(out.contains("now signed with key"), "{out}");
    let after = link(&env, &[REC]);
    let kid = |u: &str| URL_SAFE_NO_PAD.decode(token_of(u)).unwrap()[1..5].to_vec();
    assert_ne!(kid(&before), kid(&after), "a new key signs");
    // The running daemon learns the new key from the auth stamp; the old one still verifies.
    assert_eq!(fetch(&env, &rec_path(&after), &["-I"]).status, 200);
    assert_eq!(fetch(&env, &rec_path(&before), &["-I"]).status, 200);
    let keys = env.sql("SELECT count(*) FROM secrets WHERE name LIKE 'keys/links/%'");
    assert_eq!(keys, "2");
}

#[test]
fn concurrent_downloads_are_all_byte_exact() {
    let Rec { env, daemon } = setup("");
    let data = pattern(8 * 1024 * 1024 + 3, 7);
    write_file(&root(&env).join("big.wav"), &data);
    let url = link(&env, &["big.wav"]);
    let want = sha(&data);
    let cert = env.cert().display().to_string();
    let full = format!("https://localhost:{}{}", env.http_port, rec_path(&url));
    let children: Vec<_> = (0..16)
        .map(|i| {
            let out = env.path(&format!("dl.{i}"));
            let mut cmd = Command::new("curl");
            cmd.args(["-sS", "--max-time", "60", "--cacert", &cert, "-o"])
                .arg(&out)
                .arg(&full);
            if i % 2 == 1 {
                cmd.arg("--http1.1");
            }
            (cmd.spawn().expect("curl"), out)
        })
        .collect();
    for (mut child, out) in children {
        assert!(child.wait().unwrap().success());
        assert_eq!(sha(&std::fs::read(&out).unwrap()), want);
    }
    let rows = audit(&env, "recording.download", 16);
    assert_eq!(
        rows.iter()
            .filter(|r| r.contains(&format!("bytes={} complete=true", data.len())))
            .count(),
        16,
        "{rows:#?}"
    );
    assert!(!daemon.log().contains("ERROR"));
}

#[test]
fn an_aborted_download_is_logged_with_the_bytes_sent() {
    let Rec { env, daemon } = setup("");
    let data = pattern(32 * 1024 * 1024, 3);
    write_file(&root(&env).join("long.wav"), &data);
    let url = link(&env, &["long.wav"]);
    let cert = env.cert().display().to_string();
    let full = format!("https://localhost:{}{}", env.http_port, rec_path(&url));
    // Read 1 MiB at 4 MiB/s for a moment, then hang up.
    let out = curl(&[
        "-sS",
        "--cacert",
        &cert,
        "--limit-rate",
        "4M",
        "--max-time",
        "1",
        "-o",
        "/dev/null",
        &full,
    ]);
    assert!(!out.status.success(), "the transfer was cut short");
    let rows = audit(&env, "recording.download", 1);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].contains("complete=false"), "{rows:?}");
    let sent: u64 = rows[0]
        .split("bytes=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(sent > 0 && sent < data.len() as u64, "{sent}");
    assert_eq!(env.request("GET", "/healthz", &[], None).status, 200);
    drop(daemon);
}
