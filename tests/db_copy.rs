//! `pbxguard db copy`: the real binary copies a real SQLite store, filled through the CLI and
//! the daemon's APIs, into a throwaway PostgreSQL cluster (tests/common/postgres.rs); the
//! daemon then serves from the copy.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::postgres::Postgres;
use common::sip::{base_headers, request, rnd, Edge};
use common::{free_port, sqlite, text, Env};

const PW: &str = "a long password";
const DB: &str = "pbxguard";
const ROLE: &str = "pbxcopy";
const DB_PASSWORD: &str = "Copy-t4rget-pass";

/// The TOTP code `oathtool` computes for `secret` (base32) now.
fn oathtool(secret: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let out = Command::new("oathtool")
        .args(["--totp", "-b", secret, "-N", &format!("@{now}")])
        .output()
        .expect("oathtool is installed");
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn json_post(env: &Env, path: &str, bearer: &str, body: serde_json::Value) -> common::Resp {
    let auth = format!("Authorization: Bearer {bearer}");
    env.request(
        "POST",
        path,
        &["Content-Type: application/json", &auth],
        Some(&body.to_string()),
    )
}

/// A password file (mode 0600) holding `password` and a newline.
fn password_file(dir: &Path, password: &str) -> PathBuf {
    let file = dir.join("target.password");
    std::fs::write(&file, format!("{password}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    file
}

/// `pbxguard db copy --to URL [--password-file FILE]` for `env`'s configuration.
fn db_copy(env: &Env, url: &str, file: Option<&Path>) -> Output {
    let mut args = vec!["db", "copy", "--to", url];
    let file = file.map(|f| f.display().to_string());
    if let Some(f) = &file {
        args.extend(["--password-file", f]);
    }
    env.run(&args, b"")
}

/// The application tables of the SQLite store, by name.
fn sqlite_tables(db: &Path) -> Vec<String> {
    let list = sqlite(
        db,
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         AND name <> '_sqlx_migrations' ORDER BY name",
    );
    list.lines().map(str::to_string).collect()
}

/// The application tables of the PostgreSQL database, by name.
fn pg_tables(pg: &Postgres) -> Vec<String> {
    pg.psql(
        DB,
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' \
         AND tablename <> '_sqlx_migrations' ORDER BY tablename",
    )
    .lines()
    .map(str::to_string)
    .collect()
}

/// `table`'s columns and their PostgreSQL types.
fn pg_columns(pg: &Postgres, table: &str) -> Vec<(String, String)> {
    pg.psql(
        DB,
        &format!(
            "SELECT column_name || ':' || data_type FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name = '{table}' ORDER BY column_name"
        ),
    )
    .lines()
    .map(|l| {
        let (c, t) = l.split_once(':').unwrap();
        (c.to_string(), t.to_string())
    })
    .collect()
}

/// Every row of `table` as text, one line each, sorted: bytes in hex, booleans as 0/1, NULL
/// as `<null>`, so SQLite's and PostgreSQL's dumps compare equal when the rows are.
fn dump_sqlite(db: &Path, table: &str, columns: &[(String, String)]) -> Vec<String> {
    let exprs: Vec<String> = columns
        .iter()
        .map(|(c, t)| {
            let e = match t.as_str() {
                "bytea" => format!("lower(hex(\"{c}\"))"),
                "boolean" => format!("CAST(\"{c}\" AS INTEGER)"),
                _ => format!("CAST(\"{c}\" AS TEXT)"),
            };
            format!("COALESCE({e}, '<null>')")
        })
        .collect();
    let out = sqlite(db, &format!("SELECT {} FROM \"{table}\"", exprs.join(", ")));
    sorted_lines(&out)
}

fn dump_pg(pg: &Postgres, table: &str, columns: &[(String, String)]) -> Vec<String> {
    let exprs: Vec<String> = columns
        .iter()
        .map(|(c, t)| {
            let e = match t.as_str() {
                "bytea" => format!("encode(\"{c}\", 'hex')"),
                "boolean" => format!("(\"{c}\")::INT::TEXT"),
                _ => format!("(\"{c}\")::TEXT"),
            };
            format!("COALESCE({e}, '<null>')")
        })
        .collect();
    let out = pg.psql(DB, &format!("SELECT {} FROM \"{table}\"", exprs.join(", ")));
    sorted_lines(&out)
}

fn sorted_lines(out: &str) -> Vec<String> {
    let mut lines: Vec<String> = out
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// Every table of the PostgreSQL database, dumped.
fn dump_all_pg(pg: &Postgres) -> Vec<(String, Vec<String>)> {
    pg_tables(pg)
        .into_iter()
        .map(|t| {
            let columns = pg_columns(pg, &t);
            let rows = dump_pg(pg, &t, &columns);
            (t, rows)
        })
        .collect()
}

/// A source host: initialised SQLite store with two users, their history and audit rows.
fn small_source() -> Env {
    let env = Env::new();
    env.init();
    env.add_user("alice", 5, PW);
    env.add_user("bob", 2, PW);
    env
}

#[test]
fn every_table_is_copied_and_the_daemon_serves_from_the_copy() {
    let Some(pg) = Postgres::start("db_copy_round_trip") else {
        return;
    };
    let url = pg.password_database(ROLE, DB_PASSWORD, DB);

    // The source: a SIP edge host (for a ban) with a recordings folder.
    let recordings = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(recordings.path().join("2025")).unwrap();
    std::fs::write(recordings.path().join("2025/call.wav"), b"RIFF-not-really").unwrap();
    // The scheduled Asterisk audit fills audit_runs.
    let mut edge = Edge::start(&format!(
        "\n[recordings]\nroot = \"{}\"\n[audit]\ninterval = \"1m\"\ndir = \"{}/tests/data/asterisk/secure\"\n",
        recordings.path().display(),
        env!("CARGO_MANIFEST_DIR"),
    ));
    let env = &edge.env;
    env.add_user("alice", 5, PW);
    env.add_user("bob", 2, PW);
    env.add_user("carl", 3, PW);
    env.ok(&["user", "disable", "carl"], b"");
    env.ok(&["user", "set-extension", "bob", "1002"], b"");
    // History (a failure and successes) and sessions.
    assert_eq!(env.login("bob", "wrong password", &[]).status, 401);
    let bob = env.token("bob", PW);
    // TOTP enrollment through the API, then a login that waits for its code (mfa_pending).
    let alice = env.token("alice", PW);
    let e = json_post(
        env,
        "/api/v1/auth/totp/enroll",
        &alice,
        serde_json::json!({}),
    );
    assert_eq!(e.status, 200, "{e:?}");
    let secret = e.json()["secret"].as_str().unwrap().to_string();
    let c = json_post(
        env,
        "/api/v1/auth/totp/confirm",
        &alice,
        serde_json::json!({ "code": oathtool(&secret) }),
    );
    assert_eq!(c.status, 200, "{c:?}");
    assert_eq!(env.login("alice", PW, &[]).json()["status"], "mfa_required");
    // A passkey registration waiting for its authenticator (passkey_registrations).
    let r = json_post(
        env,
        "/api/v1/auth/passkeys/register",
        &alice,
        serde_json::json!({ "name": "laptop", "password": PW }),
    );
    assert_eq!(r.status, 200, "{r:?}");
    // MFA policy (settings) and an exemption.
    env.ok(&["mfa", "exempt", "bob", "--for", "2h"], b"");
    env.ok(&["mfa", "policy", "--force", "on"], b"");
    // Vault secrets, a recording link, an AMI client, a SIP credential.
    env.ok(&["secret", "set", "app/crm-token"], b"crm-token-value\n");
    let link = env.ok(&["recording", "link", "2025/call.wav", "--json"], b"");
    let link: serde_json::Value = serde_json::from_slice(&link).unwrap();
    assert!(link["id"].is_string(), "{link}");
    env.add_ami_client(
        "dialer",
        "ami-secret-1",
        &[
            "--allow",
            "Originate,Queue*",
            "--context",
            "from-crm",
            "--max-call-attempts-per-minute",
            "600",
        ],
    );
    env.set_sip_credential("1001", "sip-password-1001");
    // A SIP scanner: banned by the edge (from a documentation address: loopback is never
    // banned).
    let Some(net) = common::netns::PhoneNet::create() else {
        return;
    };
    let mut c = edge.client_from(std::net::IpAddr::V4(net.host_ip));
    let mut l = base_headers("OPTIONS", "100", "100", "TLS", &rnd(), 1);
    l.retain(|h| !h.starts_with("User-Agent"));
    l.push("User-Agent: friendly-scanner".into());
    c.try_send(&request("OPTIONS sip:100@pbx.test SIP/2.0", &l, ""));
    assert!(
        c.closed_within(Duration::from_secs(10)),
        "scanner not cut off"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sqlite(&env.db(), "SELECT COUNT(*) FROM bans") == "0" {
        assert!(std::time::Instant::now() < deadline, "no ban recorded");
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while sqlite(&env.db(), "SELECT COUNT(*) FROM audit_runs") == "0" {
        assert!(
            std::time::Instant::now() < deadline,
            "no scheduled audit stored"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The procedure: stop the daemon, copy, point the config at PostgreSQL, start.
    edge.daemon.signal("TERM");
    assert!(edge.daemon.wait_exit(Duration::from_secs(20)).success());
    let env = &edge.env;
    // A passkey and the passwordless opt-in, as a browser registration leaves them (the
    // browser itself is tests/passkeys.rs's); the registration waiting above stays too.
    sqlite(
        &env.db(),
        "INSERT INTO passkeys (id, user_id, name, rp_id, credential_id, user_handle, credential, sign_count, created_at)
         SELECT '00112233445566778899aabbccddeeff', id, 'laptop', 'localhost', 'Y3JlZA', '0f6d3a52-5d8e-4c57-9a63-0d8f4b8a9e11', '{}', 3, 1700000000
         FROM users WHERE name = 'alice';
         INSERT INTO passkey_passwordless (user_id, enabled_at) SELECT id, 1700000000 FROM users WHERE name = 'alice';",
    );
    let mut tables = sqlite_tables(&env.db());
    for t in &tables {
        assert_ne!(
            sqlite(&env.db(), &format!("SELECT COUNT(*) FROM \"{t}\"")),
            "0",
            "table {t} has no row to copy"
        );
    }
    let file = password_file(env.dir.path(), DB_PASSWORD);
    let out = db_copy(env, &url, Some(&file));
    assert!(out.status.success(), "{}", text(&out));
    let summary = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!text(&out).contains(DB_PASSWORD), "{}", text(&out));

    // Same tables, same rows, and the summary counts them; except `nodes`, which names the
    // hosts running on a database and is not copied (each node writes its row at start).
    assert_eq!(pg_tables(&pg), tables);
    assert_eq!(pg.psql(DB, "SELECT COUNT(*) FROM nodes"), "0");
    tables.retain(|t| t != "nodes");
    for t in &tables {
        let columns = pg_columns(&pg, t);
        let source = dump_sqlite(&env.db(), t, &columns);
        let copy = dump_pg(&pg, t, &columns);
        assert_eq!(source, copy, "table {t}");
        let counted = summary
            .lines()
            .find_map(|l| {
                let mut words = l.split_whitespace();
                (words.next() == Some(t)).then(|| words.next().unwrap().to_string())
            })
            .unwrap_or_else(|| panic!("{t} missing from the summary:\n{summary}"));
        assert_eq!(counted, source.len().to_string(), "{summary}");
    }
    assert!(
        summary.contains(&format!("in {} tables", tables.len())),
        "{summary}"
    );

    // The daemon on the copy, with the same master key.
    let config = std::fs::read_to_string(&env.config).unwrap();
    env.write_config(&config.replace(
        "[daemon]\n",
        &format!(
            "[daemon]\ndatabase = \"{url}\"\ndatabase_password_file = \"{}\"\n",
            file.display()
        ),
    ));
    let _daemon = env.start();
    // A session made on SQLite is still good; a copied user logs in; MFA state came along.
    assert_eq!(env.check(&bob, &[]).status, 200);
    let r = env.login("bob", PW, &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.json()["status"],
        "ok",
        "bob is exempt from the forced 2FA"
    );
    assert_eq!(env.login("alice", PW, &[]).json()["status"], "mfa_required");
    let r = env.login("carl", PW, &[]);
    assert_eq!(r.json()["error"], "account_disabled", "{r:?}");
    // A copied secret decrypts with the same master key.
    let value = env.ok(&["secret", "get", "app/crm-token"], b"");
    assert_eq!(value, b"crm-token-value");
    // New rows get fresh ids past the copied ones.
    env.add_user("dora", 4, PW);
    env.ok(&["mfa", "exempt", "dora", "--for", "1h"], b"");
    assert_eq!(env.login("dora", PW, &[]).json()["status"], "ok");
    assert_eq!(pg.psql(DB, "SELECT id FROM users WHERE name = 'dora'"), "4");
    assert_eq!(
        sqlite(&env.db(), "SELECT COUNT(*) FROM users WHERE name = 'dora'"),
        "0",
        "the SQLite file is no longer written"
    );
}

#[test]
fn a_target_holding_rows_is_refused_and_left_unchanged() {
    let Some(pg) = Postgres::start("db_copy_refuses_non_empty") else {
        return;
    };
    let url = pg.create_database(DB);
    let first = small_source();
    let out = db_copy(&first, &url, None);
    assert!(out.status.success(), "{}", text(&out));
    let before = dump_all_pg(&pg);

    // Another host's store into the same database: refused, nothing written.
    let second = small_source();
    second.add_user("carol", 3, PW);
    let out = db_copy(&second, &url, None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("not empty") && said.contains("users"),
        "{said}"
    );
    assert_eq!(before, dump_all_pg(&pg));

    // A table of someone else's holding a row counts too, before any migration runs.
    let other = pg.create_database("other");
    pg.psql(
        "other",
        "CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('x')",
    );
    let out = db_copy(&second, &other, None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("rows in notes"), "{}", text(&out));
    assert_eq!(
        pg.psql(
            "other",
            "SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'"
        ),
        "1",
        "not migrated"
    );
}

#[test]
fn wrong_unreachable_and_mismatched_targets_and_sources_are_clear_errors() {
    let Some(pg) = Postgres::start("db_copy_bad_targets") else {
        return;
    };
    let url = pg.password_database(ROLE, DB_PASSWORD, DB);
    let env = small_source();

    // A wrong password: exit 1, the server's reason, no password shown.
    let wrong = password_file(env.dir.path(), "Not-the-passw0rd");
    let out = db_copy(&env, &url, Some(&wrong));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("password authentication failed"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("Not-the-passw0rd"), "{}", text(&out));
    // The password in the URL: hidden in messages, and not together with a file.
    let with_password = url.replace(&format!("{ROLE}@"), &format!("{ROLE}:Not-the-passw0rd@"));
    let out = db_copy(&env, &with_password, None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{ROLE}:***@")),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("Not-the-passw0rd"), "{}", text(&out));
    let right = password_file(env.dir.path(), DB_PASSWORD);
    let out = db_copy(&env, &format!("{url}?password=x"), Some(&right));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("keep one"), "{}", text(&out));
    assert!(text(&out).contains("password=***"), "{}", text(&out));

    // Nobody listening.
    let nowhere = format!("postgres://{ROLE}@127.0.0.1:{}/{DB}", free_port());
    let out = db_copy(&env, &nowhere, Some(&right));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("127.0.0.1"), "{}", text(&out));

    // Not a PostgreSQL URL; a host already on PostgreSQL.
    let out = db_copy(&env, "sqlite://elsewhere.db", None);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    let pg_host = Env::new();
    let config = std::fs::read_to_string(&pg_host.config).unwrap();
    pg_host.write_config(&config.replace(
        "[daemon]\n",
        &format!(
            "[daemon]\ndatabase = \"{}\"\ninit_if_missing = true\n",
            pg.url(DB)
        ),
    ));
    let out = db_copy(&pg_host, &url, Some(&right));
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(text(&out).contains("already PostgreSQL"), "{}", text(&out));

    // A store of another schema version: refused, with what to do.
    let last = sqlite(&env.db(), "SELECT MAX(version) FROM _sqlx_migrations");
    sqlite(
        &env.db(),
        &format!(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES ({}, 'future', 1, x'00', 0)",
            last.parse::<i64>().unwrap() + 1
        ),
    );
    let out = db_copy(&env, &url, Some(&right));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("upgrade pbxguard"), "{}", text(&out));
    sqlite(
        &env.db(),
        &format!("DELETE FROM _sqlx_migrations WHERE version >= {last}"),
    );
    let out = db_copy(&env, &url, Some(&right));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("run `pbxguard init`"), "{}", text(&out));
    // None of this wrote to the target.
    assert_eq!(pg_tables(&pg), Vec::<String>::new());

    // A missing SQLite file is not created.
    std::fs::remove_file(env.db()).unwrap();
    let out = db_copy(&env, &url, Some(&right));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not initialised"), "{}", text(&out));
    assert!(!env.db().exists());
}

#[test]
fn a_copy_that_fails_halfway_leaves_the_target_empty() {
    let Some(pg) = Postgres::start("db_copy_fails_halfway") else {
        return;
    };
    let url = pg.create_database(DB);
    let env = small_source();
    // A first copy migrates the target; then it is emptied and given a rule that a table
    // copied late (vault_keys: last by name) breaks.
    let out = db_copy(&env, &url, None);
    assert!(out.status.success(), "{}", text(&out));
    let tables = pg_tables(&pg);
    pg.psql(DB, &format!("TRUNCATE {} CASCADE", tables.join(", ")));
    pg.psql(
        DB,
        "ALTER TABLE vault_keys ADD CONSTRAINT copy_fault CHECK (generation < 0)",
    );
    let out = db_copy(&env, &url, None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("writing table vault_keys") && said.contains("copy_fault"),
        "{said}"
    );
    // Every table before it had been written in the same transaction: none kept a row.
    for t in &tables {
        assert_eq!(
            pg.psql(DB, &format!("SELECT COUNT(*) FROM \"{t}\"")),
            "0",
            "{t}"
        );
    }
    // Without the fault the same copy goes through.
    pg.psql(DB, "ALTER TABLE vault_keys DROP CONSTRAINT copy_fault");
    let out = db_copy(&env, &url, None);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(pg.psql(DB, "SELECT COUNT(*) FROM users"), "2");
}
