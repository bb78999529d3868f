//! `init` and the vault through the real binary, with the SQLite file inspected and tampered
//! with by the real `sqlite3` shell.

mod common;
use common::*;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

fn rustix_uid() -> u32 {
    std::fs::metadata(std::env::temp_dir()).map(|_| ()).ok();
    // The uid that created the temp folder is ours.
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(tempfile::tempdir().unwrap().path())
        .unwrap()
        .uid()
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Everything init produces, as bytes: key file, cert, key, and the vault tables' contents.
fn snapshot(env: &Env) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for f in ["etc/master.key", "etc/tls/cert.pem", "etc/tls/key.pem"] {
        out.push(std::fs::read(env.path(f)).unwrap());
    }
    for sql in [
        "SELECT id, hex(nonce), hex(wrapped), created_at FROM vault_keys ORDER BY id",
        "SELECT name, key_id, hex(nonce), hex(ciphertext), updated_at FROM secrets ORDER BY name",
        "SELECT COUNT(*) FROM audit_log",
    ] {
        out.push(sqlite(&env.db(), sql).into_bytes());
    }
    out
}

#[test]
fn init_twice_changes_nothing_and_uses_strict_modes() {
    let env = Env::new();
    let first = String::from_utf8(env.ok(&["init"], b"")).unwrap();
    for what in [
        "master key",
        "database",
        "vault data key k1",
        "signing key keys/jwt/",
        "signing key keys/links/",
        "signing key keys/mfa/",
        "self-signed certificate",
    ] {
        assert!(first.contains(what), "init did not report {what}: {first}");
    }
    let before = snapshot(&env);
    let second = String::from_utf8(env.ok(&["init"], b"")).unwrap();
    assert!(second.contains("nothing changed"), "{second}");
    assert_eq!(before, snapshot(&env), "second init changed state");

    assert_eq!(mode(&env.path("etc/master.key")), 0o600);
    assert_eq!(
        std::fs::metadata(env.path("etc/master.key")).unwrap().len(),
        32
    );
    assert_eq!(mode(&env.path("etc/tls/key.pem")), 0o600);
    for dir in ["state", "etc", "etc/tls"] {
        assert_eq!(mode(&env.path(dir)), 0o700, "{dir}");
    }
    // WAL mode, as the daemon relies on readers not blocking the writer.
    assert_eq!(sqlite(&env.db(), "PRAGMA journal_mode"), "wal");
}

#[test]
fn a_key_file_others_can_read_is_refused_with_a_clear_error() {
    let env = Env::new();
    env.init();
    let key = env.path("etc/master.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = env.run(&["secret", "list"], b"");
    assert_eq!(out.status.code(), Some(1));
    let msg = text(&out);
    assert!(
        msg.contains("mode 0644") && msg.contains("chmod 600"),
        "{msg}"
    );
    // serve refuses too, before binding anything.
    let out = env.run(&["serve"], b"");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("chmod 600"));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
    env.ok(&["secret", "list"], b"");
    // Owned by someone else (the tests run as root in CI, so chown works there).
    if std::os::unix::fs::chown(&key, Some(65534), None).is_ok() {
        let msg = text(&env.run(&["secret", "list"], b""));
        assert!(msg.contains("owned by uid 65534"), "{msg}");
        std::os::unix::fs::chown(&key, Some(rustix_uid()), None).unwrap();
    }
}

#[test]
fn a_wrong_master_key_is_named_not_a_panic() {
    let env = Env::new();
    env.init();
    env.ok(&["secret", "set", "smtp/password"], b"s3cret\n");
    std::fs::write(env.path("etc/master.key"), [9u8; 32]).unwrap();
    let out = env.run(&["secret", "get", "smtp/password"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out).matches("master key is not the one").count(),
        1,
        "{}",
        text(&out)
    );
    // `serve` with init_if_missing reaches it through init: the sentence once there too.
    let config = std::fs::read_to_string(&env.config).unwrap();
    env.write_config(&config.replace("[daemon]\n", "[daemon]\ninit_if_missing = true\n"));
    let out = env.run(&["serve"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out).matches("master key is not the one").count(),
        1,
        "{}",
        text(&out)
    );
}

#[test]
fn secrets_round_trip_and_never_appear_in_plaintext() {
    let env = Env::new();
    env.init();
    let value = b"Plaintext-Marker-7f3a9c-do-not-store";
    let mut input = value.to_vec();
    input.extend_from_slice(b"\r\n");
    env.ok(&["secret", "set", "sip/1001"], &input);
    assert_eq!(
        env.ok(&["secret", "get", "sip/1001"], b""),
        value,
        "one trailing CRLF is stripped"
    );
    env.ok(&["secret", "set", "raw/value", "--raw"], b"keep\n");
    assert_eq!(env.ok(&["secret", "get", "raw/value"], b""), b"keep\n");

    // The marker must be nowhere in the database, its WAL or shared-memory file.
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", env.db().display());
        if let Ok(bytes) = std::fs::read(&path) {
            assert!(
                !bytes.windows(value.len()).any(|w| w == value),
                "plaintext found in {path}"
            );
        }
    }
    // Listing shows names and key ids, never values.
    let list = String::from_utf8(env.ok(&["secret", "list", "--json"], b"")).unwrap();
    assert!(!list.contains("Plaintext-Marker"));
    let json: serde_json::Value = serde_json::from_str(&list).unwrap();
    let names: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"sip/1001") && names.contains(&"raw/value"),
        "{names:?}"
    );

    env.ok(&["secret", "rm", "raw/value"], b"");
    let out = env.run(&["secret", "get", "raw/value"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("\"raw/value\" does not exist"),
        "{}",
        text(&out)
    );
}

#[test]
fn bad_secret_input_is_refused_clearly() {
    let env = Env::new();
    env.init();
    let out = env.run(&["secret", "set", "../etc/passwd"], b"x");
    assert_eq!(out.status.code(), Some(64), "{}", text(&out));
    assert!(text(&out).contains("secret name"));
    let out = env.run(&["secret", "set", "empty"], b"\n");
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out).contains("empty"));
    let huge = vec![b'a'; 64 * 1024 + 10];
    let out = env.run(&["secret", "set", "huge"], &huge);
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out).contains("larger than"));
    let out = env.run(&["secret", "get", "nobody/here"], b"");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn ciphertexts_are_bound_to_their_row_and_tampering_is_detected() {
    let env = Env::new();
    env.init();
    env.ok(&["secret", "set", "a/one"], b"value-one");
    env.ok(&["secret", "set", "b/two"], b"value-two");
    let db = env.db();

    // Swap the two ciphertexts (and nonces): each must now fail, naming its secret.
    sqlite(
        &db,
        "CREATE TEMP TABLE t AS SELECT name, nonce, ciphertext FROM secrets;
         UPDATE secrets SET nonce = (SELECT nonce FROM t WHERE name = 'b/two'),
                            ciphertext = (SELECT ciphertext FROM t WHERE name = 'b/two') WHERE name = 'a/one';
         UPDATE secrets SET nonce = (SELECT nonce FROM t WHERE name = 'a/one'),
                            ciphertext = (SELECT ciphertext FROM t WHERE name = 'a/one') WHERE name = 'b/two';",
    );
    for name in ["a/one", "b/two"] {
        let out = env.run(&["secret", "get", name], b"");
        assert_eq!(out.status.code(), Some(1));
        let msg = text(&out);
        assert!(
            msg.contains(&format!("{name:?} cannot be decrypted")),
            "{msg}"
        );
        assert!(!msg.contains("value-"), "error leaks plaintext: {msg}");
    }

    // One flipped bit in the ciphertext.
    env.ok(&["secret", "set", "c/three"], b"value-three");
    let hex = sqlite(
        &db,
        "SELECT hex(ciphertext) FROM secrets WHERE name = 'c/three'",
    );
    let mut bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    bytes[3] ^= 0x01;
    let flipped: String = bytes.iter().map(|b| format!("{b:02X}")).collect();
    assert_ne!(flipped, hex);
    sqlite(
        &db,
        &format!("UPDATE secrets SET ciphertext = X'{flipped}' WHERE name = 'c/three'"),
    );
    let out = env.run(&["secret", "get", "c/three"], b"");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("\"c/three\" cannot be decrypted"),
        "{}",
        text(&out)
    );

    // Truncated ciphertext and a key id that does not exist.
    env.ok(&["secret", "set", "d/four"], b"value-four");
    sqlite(
        &db,
        "UPDATE secrets SET ciphertext = substr(ciphertext, 1, 10) WHERE name = 'd/four'",
    );
    assert!(text(&env.run(&["secret", "get", "d/four"], b"")).contains("cannot be decrypted"));
    env.ok(&["secret", "set", "e/five"], b"value-five");
    sqlite(
        &db,
        "UPDATE secrets SET key_id = 'k99' WHERE name = 'e/five'",
    );
    let msg = text(&env.run(&["secret", "get", "e/five"], b""));
    assert!(msg.contains("names data key \"k99\""), "{msg}");

    // Rotation refuses to proceed past a broken secret and changes nothing.
    let before = sqlite(&db, "SELECT name || key_id FROM secrets ORDER BY name");
    let out = env.run(&["secret", "rotate-key"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        before,
        sqlite(&db, "SELECT name || key_id FROM secrets ORDER BY name")
    );
}

#[test]
fn rotate_key_keeps_every_secret_and_changes_key_ids() {
    let env = Env::new();
    env.init();
    for i in 0..20 {
        env.ok(
            &["secret", "set", &format!("sip/{i}")],
            format!("pw-{i}").as_bytes(),
        );
    }
    let ids = |env: &Env| sqlite(&env.db(), "SELECT DISTINCT key_id FROM secrets");
    assert_eq!(ids(&env), "k1");
    let out = String::from_utf8(env.ok(&["secret", "rotate-key"], b"")).unwrap();
    assert!(out.contains("k1 -> k2 (23 secrets)"), "{out}"); // 20 + three signing keys
    assert_eq!(ids(&env), "k2");
    assert_eq!(
        sqlite(&env.db(), "SELECT id FROM vault_keys"),
        "k2",
        "old key deleted"
    );
    env.ok(&["secret", "rotate-key"], b"");
    assert_eq!(ids(&env), "k3");
    for i in 0..20 {
        assert_eq!(
            env.ok(&["secret", "get", &format!("sip/{i}")], b""),
            format!("pw-{i}").as_bytes()
        );
    }
    let audit = sqlite(
        &env.db(),
        "SELECT action FROM audit_log WHERE action = 'secret.rotate-key'",
    );
    assert_eq!(audit.lines().count(), 2);
}

#[test]
fn kill_9_during_a_burst_of_sets_loses_nothing_completed() {
    use std::io::Write;
    let env = Env::new();
    env.init();
    let mut completed = Vec::new();
    let mut killed = 0;
    // Rounds of six concurrent writers; two of each round get SIGKILL at a different moment
    // of their run (a `secret set` takes some tens of milliseconds here).
    for round in 0..8u64 {
        let mut children = Vec::new();
        for j in 0..6u64 {
            let name = format!("burst/{round}-{j}");
            let value = format!("value-{round}-{j}");
            let mut child = Command::new(BIN)
                .args(["-c", env.config.to_str().unwrap(), "secret", "set", &name])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(value.as_bytes())
                .unwrap();
            children.push((name, value, child));
        }
        std::thread::sleep(Duration::from_millis(4 + round * 5));
        for (_, _, child) in children.iter_mut().take(2) {
            let _ = child.kill(); // SIGKILL
        }
        for (name, value, mut child) in children {
            match child.wait().unwrap().success() {
                true => completed.push((name, value)),
                false => killed += 1,
            }
        }
    }
    assert!(killed > 0, "no process was killed: the test proved nothing");
    assert!(
        completed.len() >= 32,
        "only {} sets completed",
        completed.len()
    );
    assert_eq!(sqlite(&env.db(), "PRAGMA integrity_check"), "ok");
    for (name, value) in &completed {
        assert_eq!(
            &env.ok(&["secret", "get", name], b""),
            value.as_bytes(),
            "{name}"
        );
    }
    // The store still accepts writes after the kills.
    env.ok(&["secret", "set", "after/kill"], b"fine");
}

#[test]
fn rotate_key_can_replace_the_master_key() {
    let env = Env::new();
    env.init();
    env.ok(&["secret", "set", "ami/upstream"], b"upstream-pw");
    let old_key = std::fs::read(env.path("etc/master.key")).unwrap();
    let new_path = env.path("etc/master.key.new");
    let out = String::from_utf8(env.ok(
        &[
            "secret",
            "rotate-key",
            "--new-master-key",
            new_path.to_str().unwrap(),
        ],
        b"",
    ))
    .unwrap();
    assert!(out.contains("new master key installed"), "{out}");
    assert!(!new_path.exists(), "the new key was moved into place");
    let installed = std::fs::read(env.path("etc/master.key")).unwrap();
    assert_ne!(installed, old_key);
    assert_eq!(mode(&env.path("etc/master.key")), 0o600);
    assert_eq!(
        env.ok(&["secret", "get", "ami/upstream"], b""),
        b"upstream-pw"
    );
    // The old master key no longer opens anything.
    std::fs::write(env.path("etc/master.key"), &old_key).unwrap();
    let msg = text(&env.run(&["secret", "get", "ami/upstream"], b""));
    assert!(msg.contains("master key is not the one"), "{msg}");
    // Rotating to the very same key is refused.
    std::fs::write(env.path("etc/master.key"), &installed).unwrap();
    let same = env.path("same.key");
    std::fs::write(&same, &installed).unwrap();
    std::fs::set_permissions(&same, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = env.run(
        &[
            "secret",
            "rotate-key",
            "--new-master-key",
            same.to_str().unwrap(),
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("is the current one"));
}

#[test]
fn init_owner_hands_the_state_to_the_service_account() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    let out = env.run(&["init", "--owner", "no-such-account"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("no user \"no-such-account\""),
        "{}",
        text(&out)
    );
    if rustix_uid() != 0 {
        return; // chown needs root; CI runs as root
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let nobody: Vec<u32> = passwd
        .lines()
        .find(|l| l.starts_with("nobody:"))
        .map(|l| {
            l.split(':')
                .skip(2)
                .take(2)
                .map(|n| n.parse().unwrap())
                .collect()
        })
        .expect("a nobody account");
    env.ok(&["init", "--owner", "nobody"], b"");
    for f in [
        "state",
        "state/pbxguard.db",
        "etc/master.key",
        "etc/tls/key.pem",
        "etc/tls/cert.pem",
    ] {
        let m = std::fs::metadata(env.path(f)).unwrap();
        assert_eq!((m.uid(), m.gid()), (nobody[0], nobody[1]), "{f}");
    }
    assert_eq!(mode(&env.path("etc/master.key")), 0o600);
    for dir in ["etc", "etc/tls"] {
        let m = std::fs::metadata(env.path(dir)).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), mode(&env.path(dir))),
            (0, nobody[1], 0o750),
            "{dir}"
        );
    }
}

#[test]
fn init_never_pairs_a_new_master_key_with_an_existing_vault() {
    let env = Env::new();
    env.init();
    env.ok(&["secret", "set", "smtp/password"], b"kept\n");
    let before = sqlite(
        &env.db(),
        "SELECT name || key_id || hex(ciphertext) FROM secrets ORDER BY name",
    );
    // The key file is gone (say it now lives only in an encrypted systemd credential).
    std::fs::remove_file(env.path("etc/master.key")).unwrap();
    let out = env.run(&["init"], b"");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already holds a vault") && err.contains("master key"),
        "{err}"
    );
    assert!(
        !env.path("etc/master.key").exists(),
        "no new key was written"
    );
    assert_eq!(
        before,
        sqlite(
            &env.db(),
            "SELECT name || key_id || hex(ciphertext) FROM secrets ORDER BY name"
        ),
        "the vault is untouched"
    );
}

#[test]
fn every_name_a_feature_manages_is_refused_as_a_configured_secret() {
    // The vault keeps its own list of managed prefixes (it sits below the features); each
    // feature's names must fall under one, or a config could point a secret at a managed key.
    use pbxguard::{ami, auth, realtime, recordings, vault};
    let managed = [
        format!("{}k1", auth::jwt::JWT_KEY_PREFIX),
        format!("{}k1", auth::mfa::MFA_KEY_PREFIX),
        auth::mfa::totp_secret_name(1),
        auth::mfa::pending_totp_secret_name(1),
        format!("{}k1", recordings::token::LINK_KEY_PREFIX),
        realtime::secret_name("1001"),
        ami::client_secret_name("crm"),
    ];
    for name in &managed {
        let refused = vault::check_configured_name(name);
        assert!(
            refused.is_err(),
            "{name} is managed but could be configured"
        );
    }
    assert!(vault::check_configured_name("smtp/relay").is_ok());
}

// ---- init on a shared PostgreSQL database --------------------------------------------------

/// An Env whose `[daemon] database` is `url`.
fn pg_env(url: &str) -> Env {
    let env = Env::new();
    let config = std::fs::read_to_string(&env.config).unwrap();
    env.write_config(&config.replace("[daemon]\n", &format!("[daemon]\ndatabase = \"{url}\"\n")));
    env
}

/// Installs `key` as the env's master key file, as an admin bringing it from another host.
fn install_key(env: &Env, key: &[u8]) {
    let etc = env.path("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o700)).unwrap();
    let file = env.path("etc/master.key");
    std::fs::write(&file, key).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The vault as stored: data keys and secrets (names, key ids, ciphertexts).
fn pg_vault(pg: &common::postgres::Postgres, db: &str) -> (String, String) {
    (
        pg.psql(
            db,
            "SELECT string_agg(id || ':' || encode(wrapped, 'hex'), ',' ORDER BY id) FROM vault_keys",
        ),
        pg.psql(
            db,
            "SELECT string_agg(name || ':' || key_id || ':' || encode(ciphertext, 'hex'), ',' ORDER BY name) FROM secrets",
        ),
    )
}

#[test]
fn init_on_a_database_that_holds_a_vault_creates_nothing_there() {
    let Some(pg) = common::postgres::Postgres::start("init_on_a_postgres_vault") else {
        return;
    };
    let url = pg.create_database("pbxguard");
    let first = pg_env(&url);
    let out = String::from_utf8(first.ok(&["init"], b"")).unwrap();
    assert!(out.contains("vault data key k1"), "{out}");
    first.ok(&["secret", "set", "smtp/password"], b"shared\n");
    let before = pg_vault(&pg, "pbxguard");
    assert_eq!(before.0.matches(':').count(), 1, "one data key");

    // A second host without the key: refused before a key file is made.
    let second = pg_env(&url);
    let out = second.run(&["init"], b"");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already holds a vault") && err.contains("master key"),
        "{err}"
    );
    assert!(
        !second.path("etc/master.key").exists(),
        "no new key was written"
    );
    assert_eq!(before, pg_vault(&pg, "pbxguard"));

    // With a different key: named, nothing created.
    install_key(&second, &[9u8; 32]);
    let out = second.run(&["init"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("master key is not the one"),
        "{}",
        text(&out)
    );
    assert_eq!(before, pg_vault(&pg, "pbxguard"));

    // With the cluster's key: init checks it opens the vault and adds nothing to it.
    install_key(
        &second,
        &std::fs::read(first.path("etc/master.key")).unwrap(),
    );
    let out = String::from_utf8(second.ok(&["init"], b"")).unwrap();
    assert!(
        !out.contains("vault data key") && !out.contains("signing key"),
        "{out}"
    );
    assert_eq!(before, pg_vault(&pg, "pbxguard"));
    assert_eq!(
        second.ok(&["secret", "get", "smtp/password"], b""),
        b"shared".to_vec()
    );
}

#[test]
fn two_hosts_initialising_one_empty_database_at_once_make_one_vault() {
    let Some(pg) = common::postgres::Postgres::start("two_hosts_init_at_once") else {
        return;
    };
    let key: Vec<u8> = (0u8..32)
        .map(|b| b.wrapping_mul(37).wrapping_add(11))
        .collect();
    for round in 0..3 {
        let db = format!("pbxguard{round}");
        let url = pg.create_database(&db);
        let hosts = [pg_env(&url), pg_env(&url)];
        for h in &hosts {
            install_key(h, &key);
        }
        std::thread::scope(|scope| {
            let runs: Vec<_> = hosts
                .iter()
                .map(|h| scope.spawn(|| h.run(&["init"], b"")))
                .collect();
            for r in runs {
                let out = r.join().unwrap();
                assert!(out.status.success(), "{}", text(&out));
            }
        });
        assert_eq!(pg.psql(&db, "SELECT COUNT(*) FROM vault_keys"), "1");
        for prefix in ["keys/jwt/", "keys/links/", "keys/mfa/"] {
            assert_eq!(
                pg.psql(
                    &db,
                    &format!("SELECT COUNT(*) FROM secrets WHERE name LIKE '{prefix}%'")
                ),
                "1",
                "one signing key under {prefix}"
            );
        }
    }
}
