//! A throwaway PostgreSQL cluster per test: `initdb` and `pg_ctl` from Debian's `postgresql`
//! package, a data folder and socket folder inside a temporary folder, listening on a free
//! loopback port only, never the system service. Stopped and removed on drop.
//!
//! `initdb` refuses to run as root, so when the tests run as root (CI does) every PostgreSQL
//! program runs through `runuser` as the package's `postgres` account (or `nobody` when that
//! account is missing), and the temporary folder is handed to that account first.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::{free_port, nginx::is_root, run_for};

/// The role the cluster is made with (its superuser); the tests connect as it.
pub const ROLE: &str = "pbxguard";

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// The account the server runs as when the tests run as root.
    user: Option<String>,
    pub port: u16,
    /// Extra `postgres` options given at creation, kept for [`Postgres::start_server`].
    server_options: String,
}

/// Whether PostgreSQL's server programs are installed (what [`Postgres::start`] needs).
pub fn installed() -> bool {
    bin_dir().is_some()
}

/// The folder with `initdb` and `pg_ctl`: the newest `/usr/lib/postgresql/N/bin`, else `PATH`.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let out = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && path.is_absolute()).then(|| path.parent().map(Path::to_path_buf))?
}

fn account_ids(user: &str) -> Option<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, user]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

impl Postgres {
    /// Starts a cluster, or prints one loud `SKIPPED` line and returns `None` when PostgreSQL
    /// is not installed (under `CI=true` that fails instead).
    pub fn start(test: &str) -> Option<Postgres> {
        Postgres::start_with(test, "")
    }

    /// As [`Postgres::start`], with more server options (`-c name=value …`).
    pub fn start_with(test: &str, server_options: &str) -> Option<Postgres> {
        let Some(bin) = bin_dir() else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test}: CI=true but PostgreSQL (initdb, pg_ctl) is not installed"
            );
            eprintln!("######## SKIPPED {test}: PostgreSQL is not installed (tests/run.sh installs the postgresql package) ########");
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let user = if is_root() {
            let name = ["postgres", "nobody"]
                .into_iter()
                .find(|u| account_ids(u).is_some())
                .expect("a postgres or nobody account to run PostgreSQL as");
            let (uid, gid) = account_ids(name).expect("account ids");
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown temp dir");
            Some(name.to_string())
        } else {
            None
        };
        let pg = Postgres {
            dir,
            bin,
            user,
            port: free_port(),
            server_options: server_options.to_string(),
        };
        let data = pg.data();
        let out = pg.run(
            "initdb",
            &[
                "-D",
                path_str(&data),
                "-U",
                ROLE,
                "--auth=trust",
                "--no-locale",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        assert!(out.status.success(), "initdb: {}", both(&out));
        std::fs::create_dir(pg.socket_dir()).expect("socket dir");
        if let Some((uid, gid)) = pg.user.as_deref().and_then(account_ids) {
            std::os::unix::fs::chown(pg.socket_dir(), Some(uid), Some(gid)).expect("chown");
        }
        pg.start_server();
        Some(pg)
    }

    /// Starts the server on the cluster's port (at creation, and again after
    /// [`Postgres::stop_server`]: a database outage and its end).
    pub fn start_server(&self) {
        let data = self.data();
        // Loopback and the private socket only; fsync off: a test cluster needs no durability.
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60 {}",
            self.port,
            path_str(&self.socket_dir()),
            self.server_options
        );
        let log = self.dir.path().join("postgres.log");
        let out = self.run(
            "pg_ctl",
            &[
                "start",
                "-w",
                "-t",
                "30",
                "-D",
                path_str(&data),
                "-l",
                path_str(&log),
                "-o",
                &options,
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}\n{}",
            both(&out),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the server (fast shutdown: clients are disconnected at once), as an outage of
    /// the database server does.
    pub fn stop_server(&self) {
        let data = self.data();
        let out = self.run(
            "pg_ctl",
            &["stop", "-w", "-m", "fast", "-D", path_str(&data)],
        );
        assert!(out.status.success(), "pg_ctl stop: {}", both(&out));
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// Runs one of the cluster's programs, as the cluster's account when the tests are root.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let exe = self.bin.join(program);
        let mut cmd = match &self.user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.args(args).current_dir(self.dir.path());
        run_for(&mut cmd, Duration::from_secs(60))
    }

    /// Runs `sql` through `psql` on database `db` over TCP; returns its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql)
            .unwrap_or_else(|e| panic!("psql {sql}: {e}"))
    }

    /// As [`Postgres::psql`], with the failure as `Err` instead of a panic (for `Drop`).
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let port = self.port.to_string();
        let out = self.run(
            "psql",
            &[
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                ROLE,
                "-d",
                db,
                "-c",
                sql,
            ],
        );
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(both(&out))
        }
    }

    /// For a cluster that lives as long as the test process (held in a `static`, so never
    /// dropped): a watcher in its own process group stops the cluster and removes its folder
    /// once this process is gone, however it ends (every test done, a panic outside a test,
    /// Ctrl-C, SIGKILL). Without it the server would outlive the tests.
    pub fn stop_when_process_exits(&self) {
        use std::os::unix::process::CommandExt;
        let data = self.data();
        let pg_ctl = self.bin.join("pg_ctl");
        let mut stop: Vec<&str> = Vec::new();
        if let Some(user) = &self.user {
            stop.extend(["runuser", "-u", user, "--"]);
        }
        stop.extend([
            path_str(&pg_ctl),
            "stop",
            "-w",
            "-m",
            "immediate",
            "-D",
            path_str(&data),
        ]);
        let pid = std::process::id().to_string();
        // The shell starts the watcher in the background and exits at once, so the watcher is
        // nobody's child here (no zombie, nothing to wait for).
        let started = Command::new("sh")
            .args([
                "-c",
                r#"(pid=$1 dir=$2; shift 2
                    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
                    "$@"; rm -rf "$dir") &"#,
                "pbxguard-test-postgres-watch",
                &pid,
                path_str(self.dir.path()),
            ])
            .args(&stop)
            // Its own process group: Ctrl-C on the terminal must not end the watcher with the
            // tests it is there to clean up after.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("start the cluster's watcher");
        assert!(started.success(), "the cluster's watcher: {started}");
    }

    /// Creates an empty database and returns its `postgres://` URL.
    pub fn create_database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        self.url(name)
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://{ROLE}@127.0.0.1:{}/{db}", self.port)
    }

    /// Turns TLS on with `cert` (chain) and `key`: copied into the data folder, readable by
    /// the server's account only, then `ssl = on` and a reload (no restart needed). Clients
    /// may still connect without TLS; `sslmode` decides.
    pub fn enable_tls(&self, cert: &Path, key: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let ids = self.user.as_deref().and_then(account_ids);
        for (from, name) in [(cert, "server.crt"), (key, "server.key")] {
            let to = self.data().join(name);
            std::fs::copy(from, &to).expect("copy TLS file");
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).expect("chmod");
            if let Some((uid, gid)) = ids {
                std::os::unix::fs::chown(&to, Some(uid), Some(gid)).expect("chown");
            }
        }
        self.psql("postgres", "ALTER SYSTEM SET ssl = on");
        self.psql("postgres", "SELECT pg_reload_conf()");
        // The reload is signalled, not awaited: wait until a new session sees it.
        for _ in 0..100 {
            if self.psql("postgres", "SHOW ssl") == "on" {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("ssl did not turn on");
    }

    /// Makes `role` a login role whose password is `password`, required over TCP
    /// (scram-sha-256, PostgreSQL's default hash), and an empty database `db` it owns; returns
    /// the database's URL, without the password. The cluster's superuser keeps trust
    /// authentication, so [`Postgres::psql`] still works.
    pub fn password_database(&self, role: &str, password: &str, db: &str) -> String {
        self.psql(
            "postgres",
            &format!(
                "SET password_encryption = 'scram-sha-256'; CREATE ROLE \"{role}\" LOGIN PASSWORD '{}'",
                password.replace('\'', "''")
            ),
        );
        self.psql(
            "postgres",
            &format!("CREATE DATABASE \"{db}\" OWNER \"{role}\""),
        );
        // The first matching line wins: this one goes before initdb's trust lines.
        let hba = self.data().join("pg_hba.conf");
        let old = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
        std::fs::write(
            &hba,
            format!("host all \"{role}\" 127.0.0.1/32 scram-sha-256\n{old}"),
        )
        .expect("write pg_hba.conf");
        self.psql("postgres", "SELECT pg_reload_conf()");
        // The reload is signalled, not awaited: wait until a login without the password fails.
        let port = self.port.to_string();
        for _ in 0..100 {
            let out = self.run(
                "psql",
                &[
                    "-X",
                    "-w",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-U",
                    role,
                    "-d",
                    db,
                    "-c",
                    "SELECT 1",
                ],
            );
            if !out.status.success() {
                return format!("postgres://{role}@127.0.0.1:{}/{db}", self.port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("pg_hba.conf did not ask {role} for a password");
    }
}

/// A test certificate authority and a server certificate it signs, made with `openssl`:
/// `ca.pem`, `server.pem` (for `names`, as subjectAltName entries such as `IP:127.0.0.1`)
/// and `server.key`, in `dir`.
pub struct TestCa {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path, label: &str, names: &str) -> TestCa {
        let file = |n: &str| dir.join(format!("{label}-{n}"));
        let (ca, ca_key) = (file("ca.pem"), file("ca.key"));
        let (cert, key, csr, ext) = (
            file("server.pem"),
            file("server.key"),
            file("server.csr"),
            file("server.ext"),
        );
        std::fs::write(&ext, format!("subjectAltName={names}\n")).expect("ext file");
        let subject = format!("/CN=pbxguard test CA {label}");
        let steps: [Vec<&str>; 3] = [
            vec![
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &subject,
                "-keyout",
                path_str(&ca_key),
                "-out",
                path_str(&ca),
            ],
            vec![
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                "/CN=pbxguard test database",
                "-keyout",
                path_str(&key),
                "-out",
                path_str(&csr),
            ],
            vec![
                "x509",
                "-req",
                "-in",
                path_str(&csr),
                "-CA",
                path_str(&ca),
                "-CAkey",
                path_str(&ca_key),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                path_str(&ext),
                "-out",
                path_str(&cert),
            ],
        ];
        for args in steps {
            let out = run_for(Command::new("openssl").args(&args), Duration::from_secs(30));
            assert!(out.status.success(), "openssl {args:?}: {}", both(&out));
        }
        TestCa { ca, cert, key }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data();
        let out = self.run(
            "pg_ctl",
            &["stop", "-w", "-m", "immediate", "-D", path_str(&data)],
        );
        if !out.status.success() {
            eprintln!("pg_ctl stop: {}", both(&out));
        }
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

fn both(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
