//! A real Asterisk 22 for the end-to-end tests, built by `tests/asterisk/build.sh` and named by
//! `PBXGUARD_ASTERISK` (its install prefix; `tests/run.sh` sets it).
//!
//! Each [`Asterisk`] runs from its own folder (config, run, db, log) with its own ports, so
//! tests run side by side. Its configuration is the project's own `etc/asterisk/` examples with
//! only what the admin guide tells an admin to fill in (ports, secrets, the realtime URL)
//! replaced, plus what the examples leave to the site: `asterisk.conf`, `modules.conf`,
//! `logger.conf` and a small test dialplan.
//!
//! Without Asterisk a test returns early after one loud line; under `CI=true` it fails instead.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

pub const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/etc/asterisk");

/// The installed prefix, or `None` (and a loud line) when this machine has no Asterisk build.
pub fn prefix() -> Option<PathBuf> {
    let found = std::env::var_os("PBXGUARD_ASTERISK")
        .map(PathBuf::from)
        .filter(|p| p.join("sbin/asterisk").is_file());
    if found.is_none() {
        let why = "SKIPPED: real-Asterisk test: PBXGUARD_ASTERISK does not name an Asterisk \
                   build (run tests/run.sh with PBXGUARD_ASTERISK_SOURCES set)";
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{why}; CI=true requires it"
        );
        eprintln!("{why}");
    }
    found
}

/// Which parts of the shipped examples an instance loads.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    /// pjsip from `etc/asterisk/pjsip.conf` (transport on `sip_port`).
    pub pjsip: bool,
    /// Realtime auth objects from pbxguard (`extconfig.conf` + `sorcery.conf`): the port and
    /// basic-auth user/password of pbxguard's `[realtime]` listener.
    pub realtime: Option<(u16, String, String)>,
    /// Replaces the example's `read =`/`write =` lines of the `pbxguard` manager user (tests
    /// that prove a refusal never reaches Asterisk give Asterisk every permission).
    pub manager_permissions: Option<(String, String)>,
    /// Extra text appended to `pjsip.conf` (test endpoints, qualify settings).
    pub pjsip_extra: String,
    /// Extra dialplan appended to `extensions.conf`.
    pub dialplan_extra: String,
    /// What the example's `media_address` placeholder becomes: the address phones send RTP to
    /// (`127.0.0.1` when empty, for phones on this host).
    pub media_address: String,
    /// Modules loaded besides the admin guide's set (e.g. `res_clioriginate.so` for the CLI's
    /// `channel originate`).
    pub extra_modules: Vec<String>,
    /// Runs Asterisk behind this command, e.g. `ip netns exec NS` to put it in a network
    /// namespace (empty: started directly). `asterisk -rx` needs no prefix: the control
    /// socket is a file.
    pub command_prefix: Vec<String>,
    /// The address the example's pjsip transport binds to instead of 127.0.0.1.
    pub sip_bind: Option<IpAddr>,
    /// That transport's port instead of a free one (a test that adds a transport on the
    /// same port in `pjsip_extra` needs to know it beforehand).
    pub sip_port: Option<u16>,
    /// manager.conf's `bindaddr` instead of 127.0.0.1 (the upstream user's ACL still admits
    /// 127.0.0.1 only).
    pub ami_bind: Option<IpAddr>,
}

pub struct Asterisk {
    pub dir: tempfile::TempDir,
    pub prefix: PathBuf,
    pub ami_port: u16,
    pub sip_port: u16,
    /// The manager.conf secret of the `pbxguard` user (pbxguard's `ami/upstream`).
    pub ami_secret: String,
    child: Option<Child>,
    /// [`Setup::command_prefix`], for every boot.
    command_prefix: Vec<String>,
}

/// Modules loaded with `autoload = no`: the set docs/admin-guide.md lists ("Point Asterisk at
/// pbxguard"), plus what the tests use.
const CORE_MODULES: &[&str] = &[
    "pbx_config.so",
    "app_echo.so",
    "app_dial.so",
    "app_system.so",
    "res_speech.so",
    "res_agi.so",
    "func_shell.so",
    "func_env.so",
    "func_curl.so",
    "res_curl.so",
    "func_strings.so",
    "codec_ulaw.so",
    "codec_alaw.so",
    "format_wav.so",
];

const PJSIP_MODULES: &[&str] = &[
    "res_pjproject.so",
    "res_sorcery_config.so",
    "res_sorcery_memory.so",
    "res_sorcery_astdb.so",
    "res_sorcery_realtime.so",
    "res_pjsip.so",
    "res_pjsip_session.so",
    "res_pjsip_pubsub.so",
    "chan_pjsip.so",
    "res_pjsip_authenticator_digest.so",
    "res_pjsip_outbound_authenticator_digest.so",
    "res_pjsip_endpoint_identifier_user.so",
    "res_pjsip_endpoint_identifier_ip.so",
    "res_pjsip_registrar.so",
    "res_pjsip_path.so",
    "res_pjsip_sdp_rtp.so",
    "res_pjsip_nat.so",
    "res_pjsip_caller_id.so",
    "res_pjsip_dtmf_info.so",
    "res_pjsip_rfc3326.so",
    "res_pjsip_logger.so",
    "res_pjsip_header_funcs.so",
    "res_rtp_asterisk.so",
    "res_srtp.so",
    "res_config_curl.so",
];

impl Asterisk {
    /// Writes the configuration and starts Asterisk; returns once it is fully booted.
    pub fn start(prefix: &Path, setup: &Setup) -> Asterisk {
        let dir = tempfile::Builder::new()
            .prefix("ast")
            .tempdir()
            .expect("tempdir");
        let ast = Asterisk {
            dir,
            prefix: prefix.to_path_buf(),
            ami_port: free_port(),
            sip_port: setup.sip_port.unwrap_or_else(free_port),
            ami_secret: format!("ast-{:016x}", rand_u64()),
            child: None,
            command_prefix: setup.command_prefix.clone(),
        };
        ast.write_configs(setup);
        let mut ast = ast;
        ast.boot();
        ast
    }

    pub fn etc(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    fn conf(&self) -> PathBuf {
        self.etc().join("asterisk.conf")
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.etc().join(name), text).expect("write asterisk config");
    }

    fn example(name: &str) -> String {
        std::fs::read_to_string(Path::new(EXAMPLES).join(name)).expect("example config")
    }

    fn write_configs(&self, setup: &Setup) {
        let d = self.dir.path();
        for sub in ["etc", "run", "db", "log", "lib", "spool", "keys", "agi"] {
            std::fs::create_dir_all(d.join(sub)).expect("asterisk dir");
        }
        let p = self.prefix.display();
        let d = d.display();
        self.write(
            "asterisk.conf",
            &format!(
                "[directories]\nastetcdir => {d}/etc\nastmoddir => {p}/lib/asterisk/modules\n\
                 astvarlibdir => {d}/lib\nastdbdir => {d}/db\nastkeydir => {d}/keys\n\
                 astdatadir => {d}/lib\nastagidir => {d}/agi\nastspooldir => {d}/spool\n\
                 astrundir => {d}/run\nastlogdir => {d}/log\nastsbindir => {p}/sbin\n\
                 [options]\nverbose = 3\ndebug = 0\nhideconnect = no\n"
            ),
        );
        self.write(
            "logger.conf",
            "[general]\ndateformat = %F %T.%3q\n[logfiles]\nfull => notice,warning,error,verbose,dtmf\n",
        );
        let mut modules = String::from("[modules]\nautoload = no\n");
        let pjsip = setup.pjsip || setup.realtime.is_some();
        for m in CORE_MODULES
            .iter()
            .chain(if pjsip { PJSIP_MODULES } else { &[] })
        {
            modules.push_str(&format!("load = {m}\n"));
        }
        for m in &setup.extra_modules {
            modules.push_str(&format!("load = {m}\n"));
        }
        self.write("modules.conf", &modules);

        // manager.conf: the example with its port and secret filled in, as the admin guide says.
        let mut manager = Self::example("manager.conf")
            .replace("port = 5038", &format!("port = {}", self.ami_port))
            .replace("CHANGE-ME-TO-32-RANDOM-CHARACTERS", &self.ami_secret);
        if let Some(ip) = setup.ami_bind {
            assert!(
                manager.contains("bindaddr = 127.0.0.1\n"),
                "manager.conf example changed shape"
            );
            manager = manager.replace("bindaddr = 127.0.0.1\n", &format!("bindaddr = {ip}\n"));
        }
        if let Some((read, write)) = &setup.manager_permissions {
            manager = manager
                .lines()
                .map(|l| {
                    if l.starts_with("read =") {
                        format!("read = {read}")
                    } else if l.starts_with("write =") {
                        format!("write = {write}")
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
        }
        assert!(
            manager.contains(&self.ami_secret),
            "manager.conf example changed shape"
        );
        self.write("manager.conf", &manager);

        if pjsip {
            let bind = SocketAddr::new(
                setup.sip_bind.unwrap_or(IpAddr::from([127, 0, 0, 1])),
                self.sip_port,
            );
            let text = Self::example("pjsip.conf")
                .replace("bind = 127.0.0.1:5060", &format!("bind = {bind}"));
            assert!(
                text.contains(&self.sip_port.to_string()),
                "pjsip.conf example changed"
            );
            let media = if setup.media_address.is_empty() {
                "127.0.0.1"
            } else {
                setup.media_address.as_str()
            };
            assert!(
                text.contains("media_address = 192.0.2.10"),
                "pjsip.conf example changed"
            );
            let text = text.replace(
                "media_address = 192.0.2.10",
                &format!("media_address = {media}"),
            );
            let mut text = text;
            text.push_str(&setup.pjsip_extra);
            self.write("pjsip.conf", &text);
            self.write("rtp.conf", "[general]\nrtpstart = 20000\nrtpend = 30000\n");
        }
        if let Some((port, user, password)) = &setup.realtime {
            let ext = Self::example("extconfig.conf").replace(
                "http://asterisk:CHANGE-ME@127.0.0.1:8088/",
                &format!("http://{user}:{password}@127.0.0.1:{port}/"),
            );
            assert!(
                ext.contains(&format!(":{port}/")),
                "extconfig.conf example changed"
            );
            self.write("extconfig.conf", &ext);
            self.write("sorcery.conf", &Self::example("sorcery.conf"));
        }
        self.write(
            "extensions.conf",
            &format!(
                "[general]\nstatic = yes\nwriteprotect = yes\n\
                 [phones]\n\
                 exten => 600,1,Answer()\n same => n,Echo()\n same => n,Hangup()\n\
                 exten => 601,1,Answer()\n same => n,Wait(60)\n same => n,Hangup()\n\
                 exten => _[12]00X,1,Dial(PJSIP/${{EXTEN}},30)\n same => n,Hangup()\n\
                 [gateway-test]\n\
                 exten => echo,1,Answer()\n same => n,Echo()\n same => n,Hangup()\n\
                 exten => wait,1,Answer()\n same => n,Wait(2)\n same => n,Hangup()\n\
                 exten => long,1,Answer()\n same => n,Wait(30)\n same => n,Hangup()\n\
                 {}\n",
                setup.dialplan_extra
            ),
        );
    }

    fn boot(&mut self) {
        let out = std::fs::File::create(self.dir.path().join("log/console.log")).expect("log");
        let asterisk = self.prefix.join("sbin/asterisk");
        let mut cmd = match self.command_prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&asterisk);
                c
            }
            None => Command::new(&asterisk),
        };
        let child = cmd
            .arg("-C")
            .arg(self.conf())
            .args(["-f", "-n", "-q"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn asterisk");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "Asterisk exited during boot ({status}):\n{}",
                    self.log_tail()
                );
            }
            let ok = Command::new(self.prefix.join("sbin/asterisk"))
                .arg("-C")
                .arg(self.conf())
                .args(["-rx", "core waitfullybooted"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .output()
                .map(|o| {
                    o.status.success()
                        && String::from_utf8_lossy(&o.stdout).contains("fully booted")
                })
                .unwrap_or(false);
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Asterisk did not boot within 60 s:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The PID of the running Asterisk.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `asterisk -rx CMD` on this instance's control socket.
    pub fn cli(&self, cmd: &str) -> String {
        let out = Command::new(self.prefix.join("sbin/asterisk"))
            .arg("-C")
            .arg(self.conf())
            .args(["-rx", cmd])
            .output()
            .expect("asterisk -rx");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Asterisk's `full` log (notice, warning, error, verbose).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log/full")).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let mut s =
            std::fs::read_to_string(self.dir.path().join("log/console.log")).unwrap_or_default();
        s.push_str(&self.log());
        let start = s.len().saturating_sub(6000);
        s[s.floor_char_boundary_compat(start)..].to_string()
    }

    /// Waits until the full log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Stops Asterisk by its PID (SIGTERM, then SIGKILL after 10 s).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops and starts again with the same folder and ports.
    pub fn restart(&mut self) {
        self.stop();
        self.boot();
    }
}

impl Drop for Asterisk {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

trait FloorBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorBoundary for String {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        while i > 0 && !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// Modules beyond the admin guide's list for calling phones and browsers back: `channel
/// originate`, and the WebSocket transport, without which pjsip cannot send to a browser's
/// `transport=ws` Contact at all (the call still goes through the edge's Path; Asterisk's
/// HTTP server stays off).
pub fn callback_modules() -> Vec<String> {
    [
        "res_clioriginate.so",
        "res_http_websocket.so",
        "res_pjsip_transport_websocket.so",
    ]
    .map(String::from)
    .to_vec()
}
