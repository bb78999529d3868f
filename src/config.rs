//! Typed configuration: `/etc/pbxguard/pbxguard.toml`.
//!
//! Loading happens in two passes so that an admin sees every mistake at once: serde reads the
//! TOML into a permissive "raw" form (strings for durations and addresses, every key optional,
//! unknown keys recorded instead of rejected), then [`Config::from_raw`] converts each value and
//! collects one [`Problem`] per bad key. Nothing binds a socket until this has succeeded, both at
//! start and on SIGHUP.
//!
//! Each feature owns its section (types, raw form, defaults, checks) beside its code, e.g.
//! [`crate::ami::config`]; this module keeps the loader, the sections no feature owns
//! (`[daemon]`, `[vault]`, `[http]`), the checks that span sections, and re-exports the
//! feature sections so that `config::AmiConfig` and the like name them for every caller.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::ami::config::RawAmi;
use crate::audit::config::RawAudit;
use crate::auth::config::{RawAuth, RawMfa};
use crate::bans::config::RawBans;
use crate::dialing::config::RawDialing;
use crate::mail::config::RawSmtp;
use crate::problems::{is_loopback, Checker, UNKNOWN_KEY};
use crate::realtime::config::RawRealtime;
use crate::recordings::config::RawRecordings;
use crate::sip::config::RawSip;

pub use crate::ami::config::AmiConfig;
pub use crate::audit::config::AuditConfig;
pub use crate::auth::config::{AuthConfig, MfaConfig};
pub use crate::bans::config::BansConfig;
pub use crate::dialing::config::DialingConfig;
pub use crate::mail::config::{SmtpConfig, StartTls};
pub use crate::problems::{Problem, TlsFiles};
pub use crate::realtime::config::RealtimeConfig;
pub use crate::recordings::config::RecordingsConfig;
pub use crate::sip::config::{SipConfig, SipTransport, DEFAULT_SCANNERS};

/// A top-level key as the admin would have to type it: bare when TOML allows, else quoted (an
/// empty or dotted name printed bare would name nothing, or another key).
fn shown_key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        name.to_string()
    } else {
        format!("{name:?}")
    }
}

/// Largest configuration file we read; a real one is a few KiB.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("{} problem(s) in {}:\n{}", .problems.len(), .path.display(), list(.problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// Every problem, for callers that print or log them one per line.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            ConfigError::Invalid { problems, .. } => problems.clone(),
            other => vec![Problem {
                key: "(file)".into(),
                message: other.to_string(),
            }],
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub vault: VaultConfig,
    pub http: Option<HttpConfig>,
    pub auth: AuthConfig,
    pub mfa: MfaConfig,
    pub smtp: SmtpConfig,
    pub recordings: RecordingsConfig,
    pub realtime: Option<RealtimeConfig>,
    pub ami: Option<AmiConfig>,
    pub sip: Option<SipConfig>,
    /// `[dialing]`: the toll-fraud rules both the SIP edge and the AMI gateway apply.
    pub dialing: DialingConfig,
    /// `[bans]`: the one ban list, Asterisk's security events, the firewall and the feeds.
    pub bans: BansConfig,
    /// `[audit]`: `audit asterisk` run by the daemon on a schedule.
    pub audit: AuditConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    pub state_dir: PathBuf,
    /// `sqlite://…` URL (defaults to `state_dir/pbxguard.db`) or `postgres://…` URL.
    pub database: String,
    /// The PostgreSQL password, kept out of `database` (read when the store opens).
    pub database_password_file: Option<PathBuf>,
    pub init_if_missing: bool,
    /// How long SIGTERM waits for open connections; below the unit's `TimeoutStopSec`.
    pub shutdown_grace: Duration,
    /// Async worker threads; `None` = half the cores (at least one), leaving the rest to Asterisk.
    pub worker_threads: Option<usize>,
    /// This host's name among the nodes sharing a database (default: the host name); recorded
    /// on sessions, history, audit rows and recording links.
    pub node_name: String,
    /// While the database is unreachable, the forward-auth check keeps accepting sessions it
    /// verified this recently; zero fails closed at once.
    pub store_outage_grace: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VaultConfig {
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// `None` means plain HTTP, which validation allows on loopback only.
    pub tls: Option<TlsFiles>,
    pub redirect_listen: Option<SocketAddr>,
    /// Scheme, host and port without a trailing slash, e.g. `https://pbx.example.com:8443`.
    pub public_url: String,
    pub trusted_proxies: Vec<IpNet>,
    pub metrics_allow: Vec<IpNet>,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    /// Connections that move no byte for this long are closed (HTTP/1 keep-alive and HTTP/2).
    pub idle_timeout: Duration,
}

// ---- raw form: what serde reads (the feature sections keep theirs beside them) ---------------

#[derive(Debug, Default, Deserialize)]
struct Raw {
    #[serde(default)]
    daemon: RawDaemon,
    #[serde(default)]
    vault: RawVault,
    http: Option<RawHttp>,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    mfa: RawMfa,
    #[serde(default)]
    smtp: RawSmtp,
    #[serde(default)]
    recordings: RawRecordings,
    realtime: Option<RawRealtime>,
    ami: Option<RawAmi>,
    sip: Option<RawSip>,
    dialing: Option<RawDialing>,
    bans: Option<RawBans>,
    audit: Option<RawAudit>,
}

#[derive(Debug, Default, Deserialize)]
struct RawDaemon {
    state_dir: Option<PathBuf>,
    database: Option<String>,
    database_password_file: Option<PathBuf>,
    init_if_missing: Option<bool>,
    shutdown_grace: Option<String>,
    worker_threads: Option<i64>,
    node_name: Option<String>,
    store_outage_grace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawVault {
    key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
struct RawHttp {
    listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    redirect_listen: Option<String>,
    public_url: Option<String>,
    trusted_proxies: Option<Vec<String>>,
    metrics_allow: Option<Vec<String>>,
    max_connections: Option<i64>,
    header_timeout: Option<String>,
    request_timeout: Option<String>,
    max_body_bytes: Option<i64>,
    idle_timeout: Option<String>,
}

// ---- conversion of the sections no feature owns ---------------------------------------------

impl DaemonConfig {
    fn from_raw(raw: RawDaemon, c: &mut Checker) -> DaemonConfig {
        let state_dir = raw
            .state_dir
            .unwrap_or_else(|| PathBuf::from("/var/lib/pbxguard"));
        let database = match raw.database {
            Some(url) => {
                if url.starts_with("postgres:") || url.starts_with("postgresql:") {
                    // Checked when the store opens it (sqlx's parser); only the scheme here,
                    // and the URL, which may hold a password, is not echoed.
                    if !crate::store::is_postgres_url(&url) {
                        c.bad(
                            "daemon.database",
                            "a PostgreSQL database is named postgres://USER@HOST[:PORT]/DB (or postgresql://)",
                        );
                    }
                } else if !url.starts_with("sqlite:") {
                    c.bad(
                        "daemon.database",
                        format!("{url:?}: only sqlite:// and postgres:// URLs are supported"),
                    );
                }
                url
            }
            None => format!("sqlite://{}", state_dir.join("pbxguard.db").display()),
        };
        if raw.database_password_file.is_some() {
            if !crate::store::is_postgres_url(&database) {
                c.bad(
                    "daemon.database_password_file",
                    "applies to a PostgreSQL database only (daemon.database names SQLite)",
                );
            } else if crate::store::url_has_password(&database) {
                c.bad(
                    "daemon.database_password_file",
                    "daemon.database already carries a password (USER:PASSWORD@ or ?password=); keep one of the two",
                );
            }
        }
        DaemonConfig {
            state_dir,
            database,
            database_password_file: raw.database_password_file,
            init_if_missing: raw.init_if_missing.unwrap_or(false),
            shutdown_grace: c.duration(
                "daemon.shutdown_grace",
                raw.shutdown_grace.as_deref(),
                "10s",
            ),
            worker_threads: raw
                .worker_threads
                .map(|n| c.int("daemon.worker_threads", Some(n), 1usize, 1, 256)),
            node_name: node_name(raw.node_name, c),
            store_outage_grace: c.duration_or_zero(
                "daemon.store_outage_grace",
                raw.store_outage_grace.as_deref(),
                "30s",
            ),
        }
    }
}

/// The longest node name: a DNS label, which is what host names are.
const MAX_NODE_NAME: usize = 63;

/// `[daemon] node_name`, or the host name: letters, digits, `.`, `-` and `_`, so that it
/// reads well in listings and needs no quoting anywhere.
fn node_name(configured: Option<String>, c: &mut Checker) -> String {
    let (name, key) = match configured {
        Some(name) => (name, "daemon.node_name"),
        None => (host_name(), "daemon.node_name (the host name)"),
    };
    let valid = !name.is_empty()
        && name.len() <= MAX_NODE_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if !valid {
        c.bad(
            key,
            format!("{name:?}: 1 to {MAX_NODE_NAME} letters, digits, '.', '-' or '_'"),
        );
    }
    name
}

/// The kernel's host name (what `hostname` prints); `localhost` when it cannot be read.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

impl VaultConfig {
    fn from_raw(raw: RawVault) -> VaultConfig {
        VaultConfig {
            key_file: raw
                .key_file
                .unwrap_or_else(|| PathBuf::from("/etc/pbxguard/master.key")),
        }
    }
}

/// `public_url` must be an absolute http(s) URL without a path.
fn check_public_url(c: &mut Checker, public_url: &str) {
    match public_url.parse::<axum::http::Uri>() {
        Ok(uri)
            if matches!(uri.scheme_str(), Some("https" | "http"))
                && uri.host().is_some()
                && uri
                    .path_and_query()
                    .is_none_or(|p| p.as_str() == "/" || p.as_str().is_empty()) => {}
        _ => c.bad(
            "http.public_url",
            format!("{public_url:?} must be an absolute http(s) URL with no path, e.g. \"https://pbx.example.com:8443\""),
        ),
    }
}

impl HttpConfig {
    fn from_raw(h: RawHttp, c: &mut Checker) -> HttpConfig {
        let listen = c.addr("http.listen", h.listen.as_deref(), "0.0.0.0:8443");
        let tls = c.tls_pair("http", h.tls_cert, h.tls_key);
        if tls.is_none() && !is_loopback(&listen) {
            c.bad(
                "http.listen",
                format!(
                    "plain HTTP (no tls_cert/tls_key) is allowed on loopback only, not on {listen}"
                ),
            );
        }
        let redirect_listen = h
            .redirect_listen
            .as_deref()
            .map(|r| c.addr("http.redirect_listen", Some(r), "127.0.0.1:0"));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let default_url = format!("{scheme}://{listen}");
        let public_url = h
            .public_url
            .unwrap_or(default_url)
            .trim_end_matches('/')
            .to_string();
        check_public_url(c, &public_url);
        if redirect_listen.is_some() && !public_url.starts_with("https://") {
            c.bad(
                "http.public_url",
                "redirect_listen redirects to public_url, which must then be https://",
            );
        }
        let http = HttpConfig {
            listen,
            tls,
            redirect_listen,
            public_url,
            trusted_proxies: c.nets("http.trusted_proxies", h.trusted_proxies.as_ref(), &[]),
            metrics_allow: c.nets(
                "http.metrics_allow",
                h.metrics_allow.as_ref(),
                &["127.0.0.0/8", "::1/128"],
            ),
            max_connections: c.int(
                "http.max_connections",
                h.max_connections,
                1024,
                1,
                1_000_000,
            ),
            header_timeout: c.duration("http.header_timeout", h.header_timeout.as_deref(), "10s"),
            request_timeout: c.duration(
                "http.request_timeout",
                h.request_timeout.as_deref(),
                "30s",
            ),
            max_body_bytes: c.int(
                "http.max_body_bytes",
                h.max_body_bytes,
                64 * 1024,
                1024,
                64 * 1024 * 1024,
            ),
            idle_timeout: c.duration("http.idle_timeout", h.idle_timeout.as_deref(), "60s"),
        };
        if http.idle_timeout < http.request_timeout {
            c.bad(
                "http.idle_timeout",
                "must be at least http.request_timeout (a slow request would be cut off)",
            );
        }
        http
    }

    /// The browser origin of the web tier (`public_url` without its path), the one page
    /// allowed to open the SIP WebSocket unless `sip.wss_origins` says otherwise.
    fn origins(http: Option<&HttpConfig>) -> Vec<String> {
        http.and_then(|h| h.public_url.parse::<axum::http::Uri>().ok())
            .and_then(|u| Some(format!("{}://{}", u.scheme_str()?, u.authority()?)))
            .into_iter()
            .collect()
    }
}

impl Config {
    /// Reads and validates a configuration file; all problems come back together.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_inner(path, true)
    }

    /// As [`Config::load`], but without requiring the files that `init` is about to create.
    pub fn load_for_init(path: &Path) -> Result<Config, ConfigError> {
        Config::load_inner(path, false)
    }

    fn load_inner(path: &Path, check_files: bool) -> Result<Config, ConfigError> {
        let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse_inner(&text, check_files).map_err(|problems| ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        })
    }

    /// Parses and validates TOML text, including that referenced files exist. Relative paths are
    /// taken relative to the current directory, as the admin typed them.
    pub fn parse(text: &str) -> Result<Config, Vec<Problem>> {
        Config::parse_inner(text, true)
    }

    fn parse_inner(text: &str, check_files: bool) -> Result<Config, Vec<Problem>> {
        // Syntax first (one error, with its line); then each section on its own, so a type
        // error in one section does not hide the problems of the others.
        let table: toml::Table = match text.parse() {
            Ok(t) => t,
            Err(e) => {
                let e: toml::de::Error = e;
                return Err(vec![Problem {
                    key: "(syntax)".into(),
                    message: e.message().trim().to_string(),
                }
                .with_span(text, e.span())]);
            }
        };
        let mut c = Checker::default();
        let raw = Raw::read(table, &mut c);
        if c.has_errors_besides_unknown_keys() {
            // A section did not deserialize; its defaults would only add confusing problems.
            return Err(c.into_problems());
        }
        let config = Config::from_raw(raw, &mut c);
        if check_files {
            config.check_files(&mut c);
        }
        if c.is_empty() {
            Ok(config)
        } else {
            Err(c.into_problems())
        }
    }

    /// Converts every section in file order of the reference config; problems come out in the
    /// same order, section by section.
    fn from_raw(raw: Raw, c: &mut Checker) -> Config {
        let daemon = DaemonConfig::from_raw(raw.daemon, c);
        let vault = VaultConfig::from_raw(raw.vault);
        let http = raw.http.map(|h| HttpConfig::from_raw(h, c));
        let auth = AuthConfig::from_raw(raw.auth, c);
        let mfa = MfaConfig::from_raw(raw.mfa, c);
        let smtp = SmtpConfig::from_raw(raw.smtp, c);
        let recordings = RecordingsConfig::from_raw(raw.recordings, c);
        let realtime = raw.realtime.map(|r| RealtimeConfig::from_raw(r, c));
        let ami = raw.ami.map(|a| AmiConfig {
            recordings_root: recordings.root.clone(),
            ..AmiConfig::from_raw(a, c)
        });
        let origins = HttpConfig::origins(http.as_ref());
        let sip = raw.sip.map(|s| SipConfig::from_raw(s, c, origins));
        let dialing = DialingConfig::from_raw(raw.dialing.unwrap_or_default(), c);
        let bans = BansConfig::from_raw(raw.bans.unwrap_or_default(), c);
        let audit = AuditConfig::from_raw(raw.audit.unwrap_or_default(), c);
        let config = Config {
            daemon,
            vault,
            http,
            auth,
            mfa,
            smtp,
            recordings,
            realtime,
            ami,
            sip,
            dialing,
            bans,
            audit,
        };
        config.check_sip_tls(c);
        config.check_listener_clashes(c);
        config.check_passkey_rp_id(c);
        config
    }

    /// A passkey RP id must be the host of `public_url` or a domain it is under.
    fn check_passkey_rp_id(&self, c: &mut Checker) {
        let Some(domain) = &self.mfa.passkey_rp_id else {
            return;
        };
        let host = self
            .http
            .as_ref()
            .and_then(|h| h.public_url.parse::<axum::http::Uri>().ok())
            .and_then(|u| u.host().map(str::to_string));
        match host {
            Some(h) if crate::auth::config::host_within(&h, domain) => {}
            _ => c.bad(
                "mfa.passkey_rp_id",
                format!("{domain:?} must be http.public_url's host or a domain it is under"),
            ),
        }
    }

    /// SIP is TLS only: its own pair, or the web tier's.
    fn check_sip_tls(&self, c: &mut Checker) {
        if let Some(sip) = &self.sip {
            if sip.tls.is_none() && self.http.as_ref().is_none_or(|h| h.tls.is_none()) {
                c.bad(
                    "sip.tls_cert",
                    "SIP needs TLS: set sip.tls_cert/tls_key or http.tls_cert/tls_key",
                );
            }
        }
    }

    /// Every listening socket with the key that configures it.
    pub fn listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        let mut out = Vec::new();
        if let Some(h) = &self.http {
            out.push(("http.listen", h.listen));
            if let Some(r) = h.redirect_listen {
                out.push(("http.redirect_listen", r));
            }
        }
        if let Some(r) = &self.realtime {
            out.push(("realtime.listen", r.listen));
        }
        if let Some(a) = &self.ami {
            out.push(("ami.listen", a.listen));
        }
        if let Some(s) = &self.sip {
            out.push(("sip.tls_listen", s.tls_listen));
            out.push(("sip.wss_listen", s.wss_listen));
            if s.upstream_transport == SipTransport::Tcp {
                out.push(("sip.upstream_bind", s.upstream_bind));
            }
        }
        out
    }

    fn check_listener_clashes(&self, c: &mut Checker) {
        let all = self.listeners();
        for (i, (key, addr)) in all.iter().enumerate() {
            if addr.port() == 0 {
                continue;
            }
            if let Some((other, _)) = all[..i].iter().find(|(_, a)| a == addr) {
                c.bad(key, format!("{addr} is already used by {other}"));
            }
        }
    }

    /// Referenced files must exist, unless `serve` is going to create them (`init_if_missing`).
    fn check_files(&self, c: &mut Checker) {
        if self.daemon.init_if_missing {
            return;
        }
        let credential = std::env::var_os("CREDENTIALS_DIRECTORY")
            .map(|d| PathBuf::from(d).join("master.key"))
            .is_some_and(|p| p.exists());
        // master_key_source also finds `<key_file>.cred`, the encrypted key the package leaves.
        if !credential && !crate::vault::master_key_source(&self.vault.key_file).exists() {
            c.bad(
                "vault.key_file",
                format!(
                    "{} does not exist (nor its encrypted form {}.cred) and no systemd credential master.key was passed; run `pbxguard init`",
                    self.vault.key_file.display(),
                    self.vault.key_file.display()
                ),
            );
        }
        self.smtp.check_files(c);
        let tls_files = [
            ("http", self.http.as_ref().and_then(|h| h.tls.as_ref())),
            ("sip", self.sip.as_ref().and_then(|s| s.tls.as_ref())),
            ("ami", self.ami.as_ref().and_then(|a| a.tls.as_ref())),
        ];
        for (section, files) in tls_files {
            if let Some(files) = files {
                c.tls_files_exist(section, files);
            }
        }
    }

    /// The SQLite file behind `daemon.database`, when it is a plain file URL.
    pub fn database_path(&self) -> Option<PathBuf> {
        let rest = self.daemon.database.strip_prefix("sqlite:")?;
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let file = rest.split('?').next().unwrap_or(rest);
        (!file.is_empty() && file != ":memory:").then(|| PathBuf::from(file))
    }
}

impl Raw {
    /// Reads each top-level table on its own; unknown tables and keys become problems.
    fn read(table: toml::Table, c: &mut Checker) -> Raw {
        let mut raw = Raw::default();
        for (name, value) in table {
            match name.as_str() {
                "daemon" => raw.daemon = c.section(&name, value).unwrap_or_default(),
                "vault" => raw.vault = c.section(&name, value).unwrap_or_default(),
                "http" => raw.http = c.section(&name, value),
                "auth" => raw.auth = c.section(&name, value).unwrap_or_default(),
                "mfa" => raw.mfa = c.section(&name, value).unwrap_or_default(),
                "smtp" => raw.smtp = c.section(&name, value).unwrap_or_default(),
                "recordings" => raw.recordings = c.section(&name, value).unwrap_or_default(),
                "realtime" => raw.realtime = c.section(&name, value),
                "ami" => raw.ami = c.section(&name, value),
                "sip" => raw.sip = c.section(&name, value),
                "dialing" => raw.dialing = c.section(&name, value),
                "bans" => raw.bans = c.section(&name, value),
                "audit" => raw.audit = c.section(&name, value),
                _ => c.bad(&shown_key(&name), UNKNOWN_KEY),
            }
        }
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Vec<Problem>> {
        Config::parse(text)
    }

    fn keys(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|p| p.key.as_str()).collect()
    }

    #[test]
    fn empty_file_gives_production_defaults() {
        let cfg = parse("[daemon]\ninit_if_missing = true\n").unwrap();
        assert_eq!(cfg.auth.session_idle_timeout, Duration::from_secs(8 * 3600));
        assert_eq!(
            cfg.auth.session_max_lifetime,
            Duration::from_secs(12 * 3600)
        );
        assert_eq!(cfg.recordings.link_ttl, Duration::from_secs(8 * 3600));
        assert_eq!(cfg.mfa.email_code_ttl, Duration::from_secs(600));
        assert_eq!(
            cfg.daemon.database,
            "sqlite:///var/lib/pbxguard/pbxguard.db"
        );
        assert!(cfg.http.is_none());
    }

    #[test]
    fn unknown_top_level_keys_are_named_as_typed() {
        // Found by the config_file fuzz target: `'' = 1` was reported under an empty key.
        let problems = parse(
            "'' = 1
\"a.b\" = 2\nsmpt = 3\n",
        )
        .unwrap_err();
        assert_eq!(keys(&problems)[..3], ["\"\"", "\"a.b\"", "smpt"]);
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = r#"
[daemon]
init_if_missing = true
shutdown_grace = "soon"
colour = "blue"
[http]
listen = "0.0.0.0:99999"
tls_cert = "/x/cert.pem"
public_url = "ftp://x"
sparkle = true
trusted_proxies = ["10.0.0.0/8", "not-a-net"]
[auth]
session_idle_timeout = "8 lightyears"
lockout_threshold = 0
[auth.routes]
"/monitoring" = "overlord"
[smtp]
starttls = "maybe"
"#;
        let problems = parse(text).unwrap_err();
        let keys = keys(&problems);
        for expected in [
            "daemon.colour",
            "http.sparkle",
            "daemon.shutdown_grace",
            "http.listen",
            "http.tls_key",
            "http.public_url",
            "http.trusted_proxies",
            "auth.session_idle_timeout",
            "auth.lockout_threshold",
            "auth.routes.\"/monitoring\"",
            "smtp.starttls",
        ] {
            assert!(
                keys.contains(&expected),
                "missing {expected} in {problems:#?}"
            );
        }
    }

    #[test]
    fn type_errors_in_several_sections_are_all_named() {
        let text = "[daemon]\ninit_if_missing = \"yes\"\n[auth]\nlockout_threshold = \"ten\"\n[http]\ntrusted_proxies = \"10.0.0.1\"\n[bogus]\nx = 1\n";
        let problems = parse(text).unwrap_err();
        let keys = keys(&problems);
        for k in [
            "daemon.init_if_missing",
            "auth.lockout_threshold",
            "http.trusted_proxies",
            "bogus",
        ] {
            assert!(keys.contains(&k), "missing {k}: {problems:#?}");
        }
    }

    #[test]
    fn worker_threads_are_bounded() {
        assert_eq!(
            parse("[daemon]\ninit_if_missing = true\n")
                .unwrap()
                .daemon
                .worker_threads,
            None
        );
        let one = parse("[daemon]\ninit_if_missing = true\nworker_threads = 1\n").unwrap();
        assert_eq!(one.daemon.worker_threads, Some(1));
        let problems = parse("[daemon]\ninit_if_missing = true\nworker_threads = 0\n").unwrap_err();
        assert_eq!(keys(&problems), vec!["daemon.worker_threads"]);
    }

    #[test]
    fn a_database_password_file_goes_with_a_password_free_postgres_url() {
        let daemon = |lines: &str| format!("[daemon]\ninit_if_missing = true\n{lines}");
        let ok = parse(&daemon(
            "database = \"postgres://pbx@db.example.org/pbx?sslmode=verify-full\"\ndatabase_password_file = \"/etc/pbxguard/db.password\"\n",
        ))
        .unwrap();
        assert_eq!(
            ok.daemon.database_password_file.as_deref(),
            Some(Path::new("/etc/pbxguard/db.password"))
        );
        assert_eq!(
            parse(&daemon("")).unwrap().daemon.database_password_file,
            None
        );
        let password_file = "database_password_file = \"/etc/pbxguard/db.password\"\n";
        for database in [
            "postgres://pbx:hunter2@db/pbx",
            "postgresql://pbx@db/pbx?sslmode=require&password=hunter2",
            "sqlite:///var/lib/pbxguard/pbxguard.db",
            "",
        ] {
            let line = if database.is_empty() {
                String::new()
            } else {
                format!("database = \"{database}\"\n")
            };
            let problems = parse(&daemon(&format!("{line}{password_file}"))).unwrap_err();
            assert_eq!(
                keys(&problems),
                vec!["daemon.database_password_file"],
                "{database}: {problems:#?}"
            );
            let shown = format!("{problems:?}");
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        // A password in the URL alone is still accepted.
        assert!(parse(&daemon("database = \"postgres://pbx:pw@db/pbx\"\n")).is_ok());
    }

    #[test]
    fn plain_http_is_refused_off_loopback() {
        let problems =
            parse("[daemon]\ninit_if_missing = true\n[http]\nlisten = \"0.0.0.0:8080\"\n")
                .unwrap_err();
        assert_eq!(keys(&problems), vec!["http.listen"]);
        assert!(
            parse("[daemon]\ninit_if_missing = true\n[http]\nlisten = \"[::1]:8080\"\n").is_ok()
        );
    }

    #[test]
    fn missing_files_are_reported_unless_init_if_missing() {
        let text = "[vault]\nkey_file = \"/nonexistent/master.key\"\n[http]\nlisten = \"127.0.0.1:1\"\ntls_cert = \"/nonexistent/c.pem\"\ntls_key = \"/nonexistent/k.pem\"\n";
        let problems = parse(text).unwrap_err();
        assert_eq!(
            keys(&problems),
            vec!["vault.key_file", "http.tls_cert", "http.tls_key"]
        );
        assert!(parse(&format!("[daemon]\ninit_if_missing = true\n{text}")).is_ok());
    }

    #[test]
    fn two_listeners_on_one_address_clash() {
        let text = "[daemon]\ninit_if_missing = true\n[http]\nlisten = \"127.0.0.1:9000\"\n[ami]\nlisten = \"127.0.0.1:9000\"\n";
        let problems = parse(text).unwrap_err();
        assert_eq!(keys(&problems), vec!["ami.listen"]);
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let problems = parse("[daemon]\nstate_dir = \n").unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "(line 2)");
    }

    #[test]
    fn shipped_configs_parse() {
        // The production file names /etc paths that exist only on an installed host.
        let prod = include_str!("../etc/pbxguard.toml")
            .replace("init_if_missing = false", "init_if_missing = true");
        let cfg = parse(&prod).unwrap();
        assert!(cfg.http.as_ref().is_some_and(|h| h.tls.is_some()));
        // The shipped [dialing] section spells out the built-in defaults, sources and all.
        assert_eq!(cfg.dialing, DialingConfig::default());
        let dev = parse(include_str!("../etc/pbxguard.dev.toml")).unwrap();
        assert!(dev.daemon.init_if_missing);
        assert!(dev.http.is_some_and(|h| h.listen.ip().is_loopback()));
    }
}
