//! The real binary serving from PostgreSQL: `serve` with `init_if_missing` on a throwaway
//! cluster (tests/common/postgres.rs), several hosts on one database, a key that does not open
//! the shared vault refused at start.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::postgres::Postgres;
use common::{run_for, status, text, Env, BIN};

/// A host: its own folder, ports and TLS certificate, `[daemon] database = url`, and
/// `init_if_missing`, so `serve` initialises what is missing.
fn host(url: &str) -> Env {
    let env = Env::new();
    let config = std::fs::read_to_string(&env.config).unwrap();
    env.write_config(&config.replace(
        "[daemon]\n",
        &format!("[daemon]\ndatabase = \"{url}\"\ninit_if_missing = true\n"),
    ));
    env
}

/// Installs `key` as the host's master key file (what an admin copies to a second host).
fn install_key(env: &Env, key: &[u8]) {
    let etc = env.path("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o700)).unwrap();
    let file = env.path("etc/master.key");
    std::fs::write(&file, key).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Runs `serve` for a host that must refuse to start; its output (killed after 30 s, which
/// then fails the caller's exit-code check).
fn refused_serve(env: &Env) -> std::process::Output {
    run_for(
        Command::new(BIN)
            .arg("-c")
            .arg(&env.config)
            .arg("serve")
            .env("RUST_LOG", "warn")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("NOTIFY_SOCKET"),
        Duration::from_secs(30),
    )
}

#[test]
fn two_hosts_serving_one_empty_database_share_one_vault_and_users() {
    let Some(pg) = Postgres::start("two_hosts_serve_one_empty_database") else {
        return;
    };
    let db = "pbxguard";
    let url = pg.create_database(db);
    let key: Vec<u8> = (0u8..32)
        .map(|b| b.wrapping_mul(29).wrapping_add(3))
        .collect();
    let hosts = [host(&url), host(&url)];
    for h in &hosts {
        install_key(h, &key);
    }

    // Both start at once on the empty database: each migrates and initialises what is
    // missing, and the two make one vault between them.
    let daemons: Vec<_> = std::thread::scope(|scope| {
        let starts: Vec<_> = hosts.iter().map(|h| scope.spawn(|| h.start())).collect();
        starts.into_iter().map(|s| s.join().unwrap()).collect()
    });
    for h in &hosts {
        assert_eq!(status(&h.curl_https("/healthz", &[])), 200);
    }
    assert_eq!(pg.psql(db, "SELECT COUNT(*) FROM vault_keys"), "1");
    for prefix in ["keys/jwt/", "keys/links/", "keys/mfa/"] {
        assert_eq!(
            pg.psql(
                db,
                &format!("SELECT COUNT(*) FROM secrets WHERE name LIKE '{prefix}%'")
            ),
            "1",
            "one signing key under {prefix}"
        );
    }
    assert!(
        !hosts[0].path("state/pbxguard.db").exists(),
        "no SQLite file beside the PostgreSQL store"
    );

    // A user added through one host's CLI logs in on the other; the token it gets is
    // accepted by both (one signing key, one sessions table).
    hosts[0].add_user("alice", 3, "correct horse battery");
    let r = hosts[1].login("alice", "wrong password", &[]);
    assert_eq!(r.status, 401, "{r:?}");
    let token = hosts[1].token("alice", "correct horse battery");
    for h in &hosts {
        let r = h.check(&token, &[]);
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(
        pg.psql(db, "SELECT COUNT(*) FROM sessions WHERE revoked_at IS NULL"),
        "1"
    );
    assert!(
        pg.psql(db, "SELECT COUNT(*) FROM login_history")
            .parse::<u32>()
            .unwrap()
            >= 2,
        "both attempts recorded"
    );
    // A bad token is refused by both, and both keep serving.
    for h in &hosts {
        assert_eq!(h.check("not-a-token", &[]).status, 401);
        assert_eq!(status(&h.curl_https("/healthz", &[])), 200);
    }
    drop(daemons);
}

#[test]
fn a_host_whose_key_does_not_open_the_shared_vault_refuses_to_serve() {
    let Some(pg) = Postgres::start("a_host_with_another_key_refuses_to_serve") else {
        return;
    };
    let db = "pbxguard";
    let url = pg.create_database(db);
    let first = host(&url);
    let _d = first.start();
    assert_eq!(status(&first.curl_https("/healthz", &[])), 200);
    let vault = || {
        pg.psql(
            db,
            "SELECT string_agg(name || ':' || key_id, ',' ORDER BY name) FROM secrets",
        ) + &pg.psql(db, "SELECT string_agg(id, ',') FROM vault_keys")
    };
    let before = vault();

    // No key file: refused, and no new key is made beside the vault.
    let second = host(&url);
    let out = refused_serve(&second);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("already holds a vault") && text(&out).contains("master key"),
        "{}",
        text(&out)
    );
    assert!(!second.path("etc/master.key").exists());

    // Another key: refused, with a message that says so.
    install_key(&second, &[7u8; 32]);
    let out = refused_serve(&second);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("master key is not the one"),
        "{}",
        text(&out)
    );
    assert_eq!(before, vault(), "nothing created in the shared vault");
    // The first host keeps serving.
    assert_eq!(status(&first.curl_https("/healthz", &[])), 200);
}

/// Writes `password` (and a newline, as an editor leaves it) into the host's password file,
/// mode 0600, and names it in `[daemon] database_password_file`.
fn use_password_file(env: &Env, password: &str) {
    let file = env.path("db.password");
    std::fs::write(&file, format!("{password}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = std::fs::read_to_string(&env.config).unwrap();
    if !config.contains("database_password_file") {
        env.write_config(&config.replace(
            "[daemon]\n",
            &format!(
                "[daemon]\ndatabase_password_file = \"{}\"\n",
                file.display()
            ),
        ));
    }
}

#[test]
fn the_database_password_comes_from_its_file_and_a_wrong_one_is_refused() {
    let Some(pg) = Postgres::start("database_password_file") else {
        return;
    };
    let password = "Corr3ct-h0rse-battery-staple";
    let url = pg.password_database("pbxnode", password, "pbxguard");
    let env = host(&url);

    // No password at all: the server asks for one, the daemon exits 1.
    let out = refused_serve(&env);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("password"), "{}", text(&out));

    // A wrong password in the file: refused, with a message that names the failure and
    // shows neither password.
    let wrong = "Wr0ng-guess-of-the-password";
    use_password_file(&env, wrong);
    let out = refused_serve(&env);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("password authentication failed for user \"pbxnode\""),
        "{said}"
    );
    assert!(!said.contains(wrong) && !said.contains(password), "{said}");

    // A file others may read is refused before anything is sent.
    use_password_file(&env, password);
    let file = env.path("db.password");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = refused_serve(&env);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("chmod 600"), "{}", text(&out));
    assert!(!text(&out).contains(password), "{}", text(&out));

    // The right one: the daemon initialises the database and serves; the CLI reads the
    // same file.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let daemon = env.start();
    assert_eq!(status(&env.curl_https("/healthz", &[])), 200);
    env.add_user("alice", 3, "correct horse battery");
    let token = env.token("alice", "correct horse battery");
    assert_eq!(env.check(&token, &[]).status, 200);
    assert_eq!(pg.psql("pbxguard", "SELECT COUNT(*) FROM users"), "1");
    assert!(
        !daemon.log().contains(password),
        "the password is never logged"
    );
}
