//! Storage faults against the real binary: the state folder's file system fills up, its writes
//! fail for a few seconds, or the daemon is killed under write load. Every answered 200 must
//! have its committed rows (read by the sqlite3 CLI, another process), a write that cannot be
//! committed answers 503 `store_unavailable` at once, reads keep working, and the next write
//! after the fault succeeds without a restart.
//!
//! The full disk is a small tmpfs mounted over the state folder (needs root); failing writes
//! come from `tests/peers/failwrite.c`, an LD_PRELOAD shim compiled here with gcc. Without
//! either the test says so loudly and returns; under `CI=true` it fails instead.

mod common;
use common::*;

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const PASSWORD: &str = "correct-horse-battery-9";
/// No request may take longer than this, fault or not.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

fn skip(why: &str) {
    let why = format!("SKIPPED: storage fault test: {why}");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{why}; CI=true requires it"
    );
    eprintln!("{why}");
}

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("pbxguard-test")
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(dir.to_path_buf())),
            Ok(o) => {
                let err = String::from_utf8_lossy(&o.stderr);
                skip(&format!(
                    "mounting a tmpfs is not permitted here ({})",
                    err.trim()
                ));
                None
            }
            Err(e) => {
                skip(&format!("cannot run mount: {e}"));
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system of `path` to 0 bytes free; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).unwrap();
    let mut total = 0u64;
    for chunk in [64 * 1024, 1] {
        let buf = vec![0xa5u8; chunk];
        loop {
            match file.write(&buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
    total
}

fn free_bytes(dir: &Path) -> u64 {
    let s = rustix::fs::statvfs(dir).unwrap();
    s.f_bavail * s.f_frsize
}

/// `tests/peers/failwrite.c` compiled into the test's folder.
fn build_shim(env: &Env) -> Option<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/failwrite.c");
    let out = env.path("failwrite.so");
    let built = Command::new("gcc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .arg("-ldl")
        .output();
    match built {
        Ok(o) if o.status.success() => Some(out),
        Ok(o) => {
            skip(&format!(
                "gcc cannot build the failwrite shim: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
            None
        }
        Err(e) => {
            skip(&format!("gcc is needed for the failwrite shim ({e})"));
            None
        }
    }
}

/// One login as the test saw it. `agent` (the User-Agent) is unique per attempt, so its
/// history row can be found.
#[derive(Debug)]
struct Attempt {
    agent: String,
    status: u16,
    body: String,
    /// The session id inside the token of a 200.
    sid: Option<String>,
    started: Instant,
    took: Duration,
}

fn sid_of(token: &str) -> String {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a JWT");
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    let claims: serde_json::Value = serde_json::from_slice(&json).unwrap();
    claims["sid"].as_str().expect("sid").to_string()
}

fn attempt(env: &Env, agent: &str) -> Attempt {
    let started = Instant::now();
    let ua = format!("User-Agent: {agent}");
    let r = env.login("alice", PASSWORD, &[&ua]);
    let took = started.elapsed();
    let sid = (r.status == 200).then(|| sid_of(r.json()["token"].as_str().expect("token")));
    Attempt {
        agent: agent.to_string(),
        status: r.status,
        body: r.body,
        sid,
        started,
        took,
    }
}

/// Logs in over and over from `threads` threads until `stop` is set.
/// Stops the load when dropped: an assertion failing inside a `thread::scope` then fails the
/// test instead of waiting for ever on load threads nobody stops.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn login_load(env: &Env, threads: usize, stop: &AtomicBool, tag: &str) -> Vec<Attempt> {
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut done = Vec::new();
                    let mut n = 0;
                    while !stop.load(Ordering::SeqCst) {
                        done.push(attempt(env, &format!("{tag}-{t}-{n}")));
                        n += 1;
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    })
}

/// Every 200 has its session row and its `ok` history row in the database file; every other
/// answer is a 503 `store_unavailable`, never a 500; none took longer than [`ANSWER_WITHIN`].
fn assert_acknowledged_logins_are_stored(env: &Env, attempts: &[Attempt]) {
    let sessions: HashSet<String> = sqlite(&env.db(), "SELECT id FROM sessions")
        .lines()
        .map(str::to_string)
        .collect();
    let history: HashSet<String> = sqlite(
        &env.db(),
        "SELECT user_agent FROM login_history WHERE result = 'ok'",
    )
    .lines()
    .map(str::to_string)
    .collect();
    for a in attempts {
        assert!(a.took < ANSWER_WITHIN, "answered after {:?}: {a:?}", a.took);
        match a.status {
            200 => {
                let sid = a.sid.as_deref().unwrap_or_default();
                assert!(sessions.contains(sid), "200 without its session row: {a:?}");
                assert!(
                    history.contains(&a.agent),
                    "200 without its history row: {a:?}"
                );
            }
            503 => assert!(a.body.contains("\"store_unavailable\""), "{a:?}"),
            _ => panic!("unexpected answer: {a:?}"),
        }
    }
}

fn metric(env: &Env, name: &str) -> u64 {
    let out = env.curl_https("/metrics", &[]);
    let body = String::from_utf8_lossy(&out.stdout).to_string();
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{body}"))
}

fn integrity_ok(env: &Env) {
    assert_eq!(sqlite(&env.db(), "PRAGMA integrity_check"), "ok");
}

#[test]
fn a_full_disk_answers_503_keeps_reads_and_recovers_without_restart() {
    let env = Env::new();
    let state = env.path("state");
    let Some(mount) = Tmpfs::mount(&state, "16m") else {
        return;
    };
    let root = env.path("rec");
    std::fs::create_dir_all(&root).unwrap();
    let recording: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(root.join("call.wav"), &recording).unwrap();
    let extra = format!("\n[recordings]\nroot = \"{}\"\n", root.display());
    env.write_config(&env.config_text(env.http_port, env.redirect_port, &extra));
    env.init();
    env.add_user("alice", 9, PASSWORD);
    let mut daemon = env.start();
    let token = env.token("alice", PASSWORD);
    let url = String::from_utf8(env.ok(&["recording", "link", "call.wav"], b"")).unwrap();
    let rec_path = url[url.find("/rec/").unwrap()..].trim().to_string();

    let filler = state.join("filler");
    let filled = fill(&filler);
    assert!(filled > 1_000_000, "filled only {filled} bytes");
    assert_eq!(free_bytes(&state), 0);

    let mut attempts: Vec<Attempt> = (0..6)
        .map(|i| attempt(&env, &format!("full-{i}")))
        .collect();
    let refused = attempts.iter().filter(|a| a.status == 503).count();
    assert!(
        refused > 0,
        "no login was refused on a full disk: {attempts:?}"
    );

    // Reads keep working: the forward-auth check, the API's history, a recording download.
    let check = env.check(&token, &[]);
    assert_eq!(check.status, 200, "{check:?}");
    let auth = format!("Authorization: Bearer {token}");
    let history = env.request("GET", "/api/v1/admin/login-history", &[&auth], None);
    assert_eq!(history.status, 200, "{history:?}");
    let download = env.curl_https(&rec_path, &[]);
    assert_eq!(status(&download), 200, "{}", text(&download));
    let body_at = download
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    assert_eq!(download.stdout[body_at + 4..], recording[..]);

    // The CLI reads too.
    assert!(String::from_utf8(env.ok(&["user", "list"], b""))
        .unwrap()
        .contains("alice"));

    // Space again: the next login succeeds within 5 s, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    loop {
        let a = attempt(&env, &format!("after-{}", attempts.len()));
        let ok = a.status == 200;
        attempts.push(a);
        if ok {
            break;
        }
        assert!(
            freed.elapsed() < ANSWER_WITHIN,
            "no login succeeded within 5 s of freeing space: {attempts:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_acknowledged_logins_are_stored(&env, &attempts);
    eprintln!(
        "full disk: {refused} of 6 logins answered 503 (slowest {:?}), recovery {:?}",
        attempts.iter().map(|a| a.took).max().unwrap_or_default(),
        freed.elapsed()
    );
    assert!(
        metric(&env, "pbxguard_store_commit_failures_total") >= refused as u64,
        "fewer failed commits counted than refused logins"
    );
    // The download's log row was stored once writes worked, or counted as kept in the log.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stored: u64 = sqlite(
            &env.db(),
            "SELECT count(*) FROM audit_log WHERE action = 'recording.download'",
        )
        .parse()
        .unwrap();
        let overflow = metric(&env, "pbxguard_recording_download_log_overflow_total");
        if stored + overflow >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the download's log row vanished");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Each fault logged when it starts and when it ends, not per request. (A full disk can
    // heal for a moment by itself: SQLite deletes the write-ahead log when its last
    // connection closes, and the failed writes close theirs.)
    let log = daemon.log();
    let started = log.matches("database writes are failing").count();
    assert!(started >= 1 && started < refused.max(2), "{log}");
    assert_eq!(
        log.matches("database writes work again").count(),
        started,
        "{log}"
    );
    integrity_ok(&env);
    daemon.signal("TERM");
    daemon.wait_exit(Duration::from_secs(10));
    integrity_ok(&env);
    drop(mount);
}

/// `user add` while the shim fails its writes: exit 75 and one clear line; nothing added.
fn cli_write_fails_clearly(env: &Env, shim: &Path, control: &Path) {
    let mut child = Command::new(BIN)
        .arg("-c")
        .arg(&env.config)
        .args(["user", "add", "bob", "--level", "3", "--password-stdin"])
        .env("RUST_LOG", "warn")
        .env("LD_PRELOAD", shim)
        .env("FAILWRITE_DIR", env.path("state"))
        .env("FAILWRITE_CONTROL", control)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(format!("{PASSWORD}\n").as_bytes()).unwrap();
    drop(stdin);
    let out = finish(child, Duration::from_secs(20));
    let said = text(&out);
    assert_eq!(out.status.code(), Some(75), "{said}");
    assert!(
        said.starts_with("pbxguard: database unavailable: "),
        "{said}"
    );
    assert!(said.contains("nothing is confirmed as saved"), "{said}");
    assert_eq!(said.lines().count(), 1, "{said}");
    assert_eq!(
        sqlite(&env.db(), "SELECT count(*) FROM users WHERE name = 'bob'"),
        "0"
    );
}

#[test]
fn failing_writes_under_concurrent_logins_lose_no_acknowledged_login() {
    let env = Env::new();
    let Some(shim) = build_shim(&env) else {
        return;
    };
    env.init();
    env.add_user("alice", 9, PASSWORD);
    let control = env.path("writes-fail");
    let mut daemon = env.start_with(&[
        ("LD_PRELOAD", shim.display().to_string()),
        ("FAILWRITE_DIR", env.path("state").display().to_string()),
        ("FAILWRITE_CONTROL", control.display().to_string()),
    ]);
    let token = env.token("alice", PASSWORD);
    let stop = AtomicBool::new(false);
    let mut fault = (Instant::now(), Instant::now());
    let attempts = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        let load = s.spawn(|| login_load(&env, 3, &stop, "load"));
        std::thread::sleep(Duration::from_secs(1));
        std::fs::write(&control, b"").unwrap();
        fault.0 = Instant::now();
        std::thread::sleep(Duration::from_millis(1500));
        let check = env.check(&token, &[]);
        assert_eq!(
            check.status, 200,
            "the check failed during the fault: {check:?}"
        );
        cli_write_fails_clearly(&env, &shim, &control);
        std::thread::sleep(Duration::from_millis(1500));
        std::fs::remove_file(&control).unwrap();
        fault.1 = Instant::now();
        std::thread::sleep(Duration::from_secs(6));
        stop.store(true, Ordering::SeqCst);
        load.join().unwrap()
    });
    assert_acknowledged_logins_are_stored(&env, &attempts);
    let during = |a: &&Attempt| a.started > fault.0 && a.started + a.took < fault.1;
    let refused = attempts
        .iter()
        .filter(during)
        .filter(|a| a.status == 503)
        .count();
    let granted = attempts
        .iter()
        .filter(during)
        .filter(|a| a.status == 200)
        .count();
    assert!(refused > 0, "no login was refused while writes failed");
    assert_eq!(granted, 0, "a login got 200 while every write failed");
    // Recovery without restart: the first success after the fault came within 5 s, and none
    // failed after it.
    let mut after: Vec<&Attempt> = attempts.iter().filter(|a| a.started > fault.1).collect();
    after.sort_by_key(|a| a.started);
    let first_ok = after
        .iter()
        .position(|a| a.status == 200)
        .expect("no login succeeded after the fault");
    let recovered = after[first_ok].started + after[first_ok].took - fault.1;
    assert!(
        recovered < ANSWER_WITHIN,
        "recovered only after {recovered:?}"
    );
    assert!(
        after[first_ok..].iter().all(|a| a.status == 200),
        "a login failed after recovery: {after:?}"
    );
    eprintln!(
        "failing writes: {} logins, {refused} answered 503 during the fault, recovery {recovered:?}",
        attempts.len()
    );
    // Every failed write is counted, but not every 503 is a failed write: a failed commit
    // closes its connection, and a login's reads that need a fresh one fail too while the
    // disk refuses writes (opening a WAL database writes its index). So the count proves the
    // fault was seen, not one count per refused login.
    let counted = metric(&env, "pbxguard_store_commit_failures_total");
    assert!(
        counted > 0,
        "commit failures counted: {counted}, logins refused: {refused}"
    );
    let log = daemon.log();
    assert_eq!(
        log.matches("database writes are failing").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("database writes work again").count(),
        1,
        "{log}"
    );
    daemon.signal("TERM");
    daemon.wait_exit(Duration::from_secs(10));
    integrity_ok(&env);
}

/// `pbxguard secret set NAME` with `value` on stdin; true when it exited 0. With `kill_after`,
/// the process gets SIGKILL after that long (if still running).
fn secret_set(env: &Env, name: &str, value: &str, kill_after: Option<Duration>) -> bool {
    let mut child = std::process::Command::new(BIN)
        .arg("-c")
        .arg(&env.config)
        .args(["secret", "set", name])
        .env("RUST_LOG", "warn")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn pbxguard");
    if let Some(mut input) = child.stdin.take() {
        let _ = std::io::Write::write_all(&mut input, value.as_bytes());
    }
    if let Some(after) = kill_after {
        std::thread::sleep(after);
        let _ = child.kill();
    }
    child.wait().is_ok_and(|s| s.success())
}

#[test]
fn kill_9_under_write_load_keeps_every_acknowledged_write() {
    let env = Env::new();
    env.init();
    env.add_user("alice", 9, PASSWORD);
    let mut daemon = env.start();
    let stop = AtomicBool::new(false);
    let mut killed_at = Instant::now();
    let (attempts, sets) = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        let load = s.spawn(|| login_load(&env, 3, &stop, "load"));
        let setters: Vec<_> = (0..2)
            .map(|t| {
                let (env, stop) = (&env, &stop);
                s.spawn(move || {
                    let mut done = Vec::new();
                    let mut n = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let (name, value) = (format!("load/{t}-{n}"), format!("value-{t}-{n}"));
                        // Every third writer is itself killed with SIGKILL a few milliseconds
                        // in: whatever it did not report as done may be missing, what it did
                        // report must be there.
                        let kill_after = (n % 3 == 0).then(|| Duration::from_millis(n % 7 * 3));
                        if secret_set(env, &name, &value, kill_after) {
                            done.push((name, value));
                        }
                        n += 1;
                    }
                    done
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(2500));
        daemon.child.kill().unwrap(); // SIGKILL
        daemon.child.wait().unwrap();
        killed_at = Instant::now();
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::SeqCst);
        let sets: Vec<(String, String)> = setters
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        (load.join().unwrap(), sets)
    });
    // After the kill the daemon is gone: curl gets no answer (status 0).
    let (answered, unanswered): (Vec<Attempt>, Vec<Attempt>) =
        attempts.into_iter().partition(|a| a.status != 0);
    assert!(
        unanswered
            .iter()
            .all(|a| a.started + a.took >= killed_at - Duration::from_millis(100)),
        "a login went unanswered before the kill: {unanswered:?}"
    );
    let ok = answered.iter().filter(|a| a.status == 200).count();
    assert!(ok > 3, "only {ok} logins before the kill");
    assert!(sets.len() > 3, "only {} secret sets", sets.len());
    integrity_ok(&env);
    assert_acknowledged_logins_are_stored(&env, &answered);
    for (name, value) in &sets {
        assert_eq!(
            &env.ok(&["secret", "get", name], b""),
            value.as_bytes(),
            "{name}"
        );
    }
    // And it serves again after a restart.
    let _daemon = env.start();
    assert_eq!(attempt(&env, "restarted").status, 200);
    eprintln!(
        "kill -9: {ok} logins and {} secret sets acknowledged, all stored",
        sets.len()
    );
}
