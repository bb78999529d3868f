//! Typed configuration: `/etc/pbxguard/pbxguard.toml`.
//!
//! Loading happens in two passes so that an admin sees every mistake at once: serde reads the
//! TOML into a permissive "raw" form (strings for durations and addresses, every key optional,
//! unknown keys recorded instead of rejected), then [`Config::from_raw`] converts each value and
//! collects one [`Problem`] per bad key. Nothing binds a socket until this has succeeded, both at
//! start and on SIGHUP.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

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

const UNKNOWN_KEY: &str =
    "unknown key (check the spelling; every key is listed in etc/pbxguard.toml)";

/// Longest duration accepted anywhere; keeps time arithmetic far from overflow.
const MAX_DURATION: Duration = Duration::from_secs(10 * 366 * 24 * 3600);
/// Largest configuration file we read; a real one is a few KiB.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// One thing wrong with the configuration, named by its dotted key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

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

/// Least role names usable in `[auth.routes]`; the levels behind them live in `auth::roles`
/// once that module exists, the names are part of the config contract already.
pub const ROLE_NAMES: [&str; 4] = ["agent", "supervisor", "manager", "admin"];

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
}

#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    pub state_dir: PathBuf,
    /// `sqlite://…` URL; defaults to `state_dir/pbxguard.db`.
    pub database: String,
    pub init_if_missing: bool,
    /// How long SIGTERM waits for open connections; below the unit's `TimeoutStopSec`.
    pub shutdown_grace: Duration,
    /// Async worker threads; `None` = half the cores (at least one), leaving the rest to Asterisk.
    pub worker_threads: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VaultConfig {
    pub key_file: PathBuf,
}

pub use crate::tls::TlsFiles;

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

#[derive(Debug, Clone, PartialEq)]
pub struct AuthConfig {
    pub session_idle_timeout: Duration,
    pub session_max_lifetime: Duration,
    pub lockout_threshold: u32,
    pub lockout_window: Duration,
    pub lockout_duration: Duration,
    /// URI prefix -> least role name.
    pub routes: BTreeMap<String, String>,
    /// Login history rows older than this are deleted (hourly).
    pub history_retention: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MfaConfig {
    pub email_code_ttl: Duration,
    pub email_fallback: bool,
    pub totp_issuer: String,
    /// Whether admins (level 9) may use emailed codes at all; email is the weaker factor.
    pub email_for_admins: bool,
    /// Lifetime of an `mfa_token` (the pending login after a correct password).
    pub mfa_token_ttl: Duration,
    /// Lifetime of an `enroll_token` (scanning a QR code takes a while).
    pub enroll_token_ttl: Duration,
    /// Wrong codes one pending login may take before it is void.
    pub max_code_failures: u32,
    /// Shortest interval between two mailed codes for one login.
    pub email_resend_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartTls {
    Required,
    Opportunistic,
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub starttls: StartTls,
    pub username: String,
    pub password_secret: String,
    pub from: String,
    /// Extra CA certificate (PEM) trusted for STARTTLS besides the system's, e.g. a relay with
    /// a private CA.
    pub ca_file: Option<PathBuf>,
    /// Connect, STARTTLS and every SMTP command must finish within this.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RecordingsConfig {
    pub root: PathBuf,
    pub link_ttl: Duration,
    /// The longest lifetime a link may be given (`--ttl`, the API's `ttl`).
    pub max_link_ttl: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RealtimeConfig {
    pub listen: SocketAddr,
    pub username: String,
    pub password_secret: String,
    /// Families whose `store`/`update`/`destroy` are honoured; the others answer -1.
    pub writable: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AmiConfig {
    pub listen: SocketAddr,
    /// Optional TLS towards clients (AMI over TLS, as Asterisk's `tlsenable`).
    pub tls: Option<TlsFiles>,
    pub upstream: SocketAddr,
    pub upstream_username: String,
    pub upstream_secret: String,
    /// Connecting and logging in to Asterisk must finish within this.
    pub upstream_timeout: Duration,
    /// Pre-authenticated upstream sessions kept ready for clients that connect per action.
    pub pool_size: usize,
    /// Asterisk's `authtimeout`: an unauthenticated client is closed after this.
    pub auth_timeout: Duration,
    /// Asterisk's `authlimit`: connections not yet logged in, beyond which new ones are closed.
    pub max_unauthenticated: usize,
    /// All client connections at once.
    pub max_clients: usize,
    /// Failed logins from one IP (or for one user) within `ban_window` that ban it.
    pub ban_threshold: u32,
    pub ban_window: Duration,
    pub ban_duration: Duration,
    /// Actions per second a client may send (token bucket), and the burst above that.
    pub action_rate: u32,
    pub action_burst: u32,
    /// Bytes waiting for one client above which pbxguard stops reading the client's Asterisk
    /// session (backpressure), until half of them have been written.
    pub max_output_bytes: usize,
    /// A client that accepts no bytes at all for this long is disconnected (Asterisk's
    /// `writetimeout`, counted as time without progress).
    pub write_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SipTransport {
    Udp,
    Tcp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SipConfig {
    pub tls_listen: SocketAddr,
    pub wss_listen: SocketAddr,
    /// `None`: the `[http]` pair.
    pub tls: Option<TlsFiles>,
    pub upstream: SocketAddr,
    pub upstream_transport: SipTransport,
    /// Our loopback address towards Asterisk: the `Via`, `Record-Route` and `Path` we add name
    /// it, so it must stay put while phones are registered (port 0: any, for tests).
    pub upstream_bind: SocketAddr,
    /// The host phones should use in our `Record-Route` entries; default: the address each
    /// connection arrived on.
    pub public_host: Option<String>,
    /// Browser origins allowed to open the WebSocket (exact `scheme://host[:port]`).
    pub wss_origins: Vec<String>,
    /// Lifetime of a WebSocket ticket minted by `POST /api/v1/sip/ticket`.
    pub ticket_ttl: Duration,
    /// Header carrying the bound extension to Asterisk (`identify_by = header`); any copy a
    /// client sends is removed.
    pub identity_header: String,
    /// Requests per second (and burst) per client address and per bound user; 0 = unlimited.
    pub rate_per_ip: u32,
    pub burst_per_ip: u32,
    pub rate_per_user: u32,
    pub burst_per_user: u32,
    /// Case-insensitive substrings of `User-Agent` that mark a scanner (banned at once).
    pub blocked_user_agents: Vec<String>,
    /// Failed authentications (401/407 after credentials, 403, 404 on REGISTER) from one
    /// address within `ban_window` that ban it for `ban_duration`.
    pub ban_threshold: u32,
    pub ban_window: Duration,
    pub ban_duration: Duration,
    /// Client connections at once (TLS and WSS together), and from one address (IPv6: /64).
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// A TLS connection from which Asterisk has accepted nothing (no 2xx to a REGISTER,
    /// INVITE, SUBSCRIBE or MESSAGE) is closed after this, however chatty.
    pub auth_timeout: Duration,
    /// A client connection that sends nothing for this long is closed (phones refresh
    /// registrations and send CRLF keep-alives well within it).
    pub idle_timeout: Duration,
    /// Media policy: accepted SDES suites, and whether T.38 fax (`m=image`) may pass.
    pub crypto_suites: Vec<String>,
    pub allow_t38: bool,
}

// ---- raw form: what serde reads -------------------------------------------------------------

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
}

#[derive(Debug, Default, Deserialize)]
struct RawDaemon {
    state_dir: Option<PathBuf>,
    database: Option<String>,
    init_if_missing: Option<bool>,
    shutdown_grace: Option<String>,
    worker_threads: Option<i64>,
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

#[derive(Debug, Default, Deserialize)]
struct RawAuth {
    session_idle_timeout: Option<String>,
    session_max_lifetime: Option<String>,
    lockout_threshold: Option<i64>,
    lockout_window: Option<String>,
    lockout_duration: Option<String>,
    routes: Option<BTreeMap<String, String>>,
    history_retention: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawMfa {
    email_code_ttl: Option<String>,
    email_fallback: Option<bool>,
    totp_issuer: Option<String>,
    email_for_admins: Option<bool>,
    mfa_token_ttl: Option<String>,
    enroll_token_ttl: Option<String>,
    max_code_failures: Option<i64>,
    email_resend_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawSmtp {
    host: Option<String>,
    port: Option<i64>,
    starttls: Option<String>,
    username: Option<String>,
    password_secret: Option<String>,
    from: Option<String>,
    ca_file: Option<PathBuf>,
    timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawRecordings {
    root: Option<PathBuf>,
    link_ttl: Option<String>,
    max_link_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawRealtime {
    listen: Option<String>,
    username: Option<String>,
    password_secret: Option<String>,
    writable: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
struct RawAmi {
    listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    upstream: Option<String>,
    upstream_username: Option<String>,
    upstream_secret: Option<String>,
    upstream_timeout: Option<String>,
    pool_size: Option<i64>,
    auth_timeout: Option<String>,
    max_unauthenticated: Option<i64>,
    max_clients: Option<i64>,
    ban_threshold: Option<i64>,
    ban_window: Option<String>,
    ban_duration: Option<String>,
    action_rate: Option<i64>,
    action_burst: Option<i64>,
    max_output_bytes: Option<i64>,
    write_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawSip {
    tls_listen: Option<String>,
    wss_listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    upstream: Option<String>,
    upstream_transport: Option<String>,
    upstream_bind: Option<String>,
    public_host: Option<String>,
    wss_origins: Option<Vec<String>>,
    ticket_ttl: Option<String>,
    identity_header: Option<String>,
    rate_per_ip: Option<i64>,
    burst_per_ip: Option<i64>,
    rate_per_user: Option<i64>,
    burst_per_user: Option<i64>,
    blocked_user_agents: Option<Vec<String>>,
    ban_threshold: Option<i64>,
    ban_window: Option<String>,
    ban_duration: Option<String>,
    max_connections: Option<i64>,
    max_connections_per_ip: Option<i64>,
    auth_timeout: Option<String>,
    idle_timeout: Option<String>,
    crypto_suites: Option<Vec<String>>,
    allow_t38: Option<bool>,
}

// ---- conversion with collected problems -----------------------------------------------------

/// Collects problems while converting raw values; each helper returns a usable fallback so
/// that conversion continues past the first mistake.
#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn bad(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.to_string(),
            message: message.into(),
        });
    }

    /// Reads one section: unknown keys and the first type error inside it become problems
    /// named by their full key; `None` when the section cannot be read at all.
    fn section<T: serde::de::DeserializeOwned>(
        &mut self,
        name: &str,
        value: toml::Value,
    ) -> Option<T> {
        let mut unknown = Vec::new();
        let mut on_unknown = |path: serde_ignored::Path| {
            // serde_ignored marks an Option layer as "?"; admins know only the TOML keys.
            unknown.push(path.to_string().replace("?.", "").replace(".?", ""))
        };
        let de = serde_ignored::Deserializer::new(value, &mut on_unknown);
        let result: Result<T, _> = serde_path_to_error::deserialize(de);
        for key in unknown {
            self.bad(&format!("{name}.{key}"), UNKNOWN_KEY);
        }
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                let path = e.path().to_string();
                let key = if path == "." || path.is_empty() {
                    name.to_string()
                } else {
                    format!("{name}.{path}")
                };
                self.bad(&key, e.into_inner().to_string().trim().to_string());
                None
            }
        }
    }

    fn duration(&mut self, key: &str, raw: Option<&str>, default: &str) -> Duration {
        let text = raw.unwrap_or(default);
        match humantime::parse_duration(text) {
            Ok(d) if d.is_zero() => {
                self.bad(key, "must be longer than zero");
                Duration::from_secs(1)
            }
            Ok(d) if d > MAX_DURATION => {
                self.bad(key, format!("{text:?} is longer than 10 years"));
                Duration::from_secs(1)
            }
            Ok(d) => d,
            Err(_) => {
                self.bad(
                    key,
                    format!(
                        "{text:?} is not a duration (examples: \"30s\", \"10m\", \"8h\", \"2d\")"
                    ),
                );
                humantime::parse_duration(default).unwrap_or(Duration::from_secs(1))
            }
        }
    }

    fn addr(&mut self, key: &str, raw: Option<&str>, default: &str) -> SocketAddr {
        let text = raw.unwrap_or(default);
        match text.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                self.bad(
                    key,
                    format!("{text:?} is not a socket address (expected IP:PORT, e.g. \"127.0.0.1:8443\" or \"[::1]:8443\")"),
                );
                SocketAddr::from(([127, 0, 0, 1], 0))
            }
        }
    }

    fn nets(&mut self, key: &str, raw: Option<&Vec<String>>, default: &[&str]) -> Vec<IpNet> {
        let items: Vec<String> = match raw {
            Some(v) => v.clone(),
            None => default.iter().map(|s| s.to_string()).collect(),
        };
        let mut out = Vec::new();
        for item in items {
            if let Ok(net) = item.parse::<IpNet>() {
                out.push(net.trunc());
            } else if let Ok(ip) = item.parse::<IpAddr>() {
                out.push(IpNet::from(ip));
            } else {
                self.bad(
                    key,
                    format!("{item:?} is not an IP address or CIDR network"),
                );
            }
        }
        out
    }

    fn int<T>(&mut self, key: &str, raw: Option<i64>, default: T, min: i64, max: i64) -> T
    where
        T: TryFrom<i64> + Copy,
    {
        match raw {
            None => default,
            Some(v) if v < min || v > max => {
                self.bad(key, format!("{v} is out of range ({min} to {max})"));
                default
            }
            Some(v) => T::try_from(v).unwrap_or(default),
        }
    }

    fn nonempty(&mut self, key: &str, raw: Option<&String>, default: &str) -> String {
        let value = raw.map(String::as_str).unwrap_or(default);
        if value.trim().is_empty() {
            self.bad(key, "must not be empty");
        }
        value.to_string()
    }

    fn tls_pair(
        &mut self,
        section: &str,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Option<TlsFiles> {
        match (cert, key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => {
                self.bad(
                    &format!("{section}.tls_key"),
                    "tls_cert is set but tls_key is missing; set both or neither",
                );
                None
            }
            (None, Some(_)) => {
                self.bad(
                    &format!("{section}.tls_cert"),
                    "tls_key is set but tls_cert is missing; set both or neither",
                );
                None
            }
        }
    }
}

fn is_loopback(addr: &SocketAddr) -> bool {
    match addr.ip() {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Secret names follow the vault's rule; repeated here so config problems are reported with keys.
/// Vault name prefixes pbxguard manages itself; a configured secret there would be overwritten
/// or deleted (a SIP credential `set`, a key rotation, a 2FA reset).
const RESERVED_SECRET_PREFIXES: &[&str] = &["sip/", "keys/", "mfa/", "ami/clients/"];

/// User-Agent fragments of the SIP scanners seen on the Internet (SIPVicious and its forks,
/// sipcli, the VaxSIP-based and other toll-fraud scanners).
pub const DEFAULT_SCANNERS: &[&str] = &[
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "vaxsipuseragent",
    "sip-scan",
    "sundayddr",
    "iwar",
    "sivus",
    "pplsip",
    "voip-scanner",
];

/// The browser origin of the web tier (`http.public_url` without its path), the one page
/// allowed to open the SIP WebSocket unless `sip.wss_origins` says otherwise.
fn default_origins(http: Option<&HttpConfig>) -> Vec<String> {
    http.and_then(|h| h.public_url.parse::<axum::http::Uri>().ok())
        .and_then(|u| Some(format!("{}://{}", u.scheme_str()?, u.authority()?)))
        .into_iter()
        .collect()
}

/// The `[sip]` values whose shape matters beyond their type.
fn check_sip(c: &mut Checker, sip: &SipConfig) {
    for origin in &sip.wss_origins {
        let ok = origin
            .parse::<axum::http::Uri>()
            .ok()
            .filter(|u| matches!(u.scheme_str(), Some("https" | "http")))
            .filter(|u| u.authority().is_some() && u.path() == "/" && !origin.ends_with('/'))
            .is_some();
        if !ok {
            c.bad(
                "sip.wss_origins",
                format!("{origin:?} is not an origin like \"https://pbx.example.com\" (scheme and host, optional port, no path)"),
            );
        }
    }
    let name = &sip.identity_header;
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        || !name.to_ascii_lowercase().starts_with("x-")
    {
        c.bad(
            "sip.identity_header",
            format!("{name:?} must be a header name starting with X- (letters, digits, dashes)"),
        );
    }
    if let Some(host) = &sip.public_host {
        if crate::sip::uri::SipUri::parse(&format!("sip:{host}")).is_err() {
            c.bad(
                "sip.public_host",
                format!("{host:?} is not a host name or address (add no port or scheme)"),
            );
        }
    }
    if sip.blocked_user_agents.iter().any(|s| s.trim().is_empty()) {
        c.bad(
            "sip.blocked_user_agents",
            "entries must not be empty (an empty one would block everyone)",
        );
    }
    let known = crate::sip::sdp::MediaPolicy::default().crypto_suites;
    for suite in &sip.crypto_suites {
        if !known.contains(suite) {
            c.bad(
                "sip.crypto_suites",
                format!("{suite:?} is not one of {}", known.join(", ")),
            );
        }
    }
    if sip.crypto_suites.is_empty() {
        c.bad(
            "sip.crypto_suites",
            "at least one suite is needed for SDES-SRTP phones",
        );
    }
}

fn check_secret_name(c: &mut Checker, key: &str, name: &str) {
    if let Err(e) = crate::vault::validate_name(name) {
        c.bad(key, e.to_string());
    } else if let Some(p) = RESERVED_SECRET_PREFIXES
        .iter()
        .find(|p| name.starts_with(*p))
    {
        c.bad(
            key,
            format!("{name:?} is under {p}, which pbxguard manages itself; choose another name"),
        );
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
                _ => c.bad(&shown_key(&name), UNKNOWN_KEY),
            }
        }
        if c.problems.iter().any(|p| p.message != UNKNOWN_KEY) {
            // A section did not deserialize; its defaults would only add confusing problems.
            return Err(c.problems);
        }
        let config = Config::from_raw(raw, &mut c);
        if check_files {
            config.check_files(&mut c);
        }
        if c.problems.is_empty() {
            Ok(config)
        } else {
            Err(c.problems)
        }
    }

    fn from_raw(raw: Raw, c: &mut Checker) -> Config {
        let state_dir = raw
            .daemon
            .state_dir
            .unwrap_or_else(|| PathBuf::from("/var/lib/pbxguard"));
        let database = match raw.daemon.database {
            Some(url) => {
                if !url.starts_with("sqlite:") {
                    c.bad(
                        "daemon.database",
                        format!("{url:?}: only sqlite:// URLs are supported"),
                    );
                }
                url
            }
            None => format!("sqlite://{}", state_dir.join("pbxguard.db").display()),
        };
        let daemon = DaemonConfig {
            state_dir,
            database,
            init_if_missing: raw.daemon.init_if_missing.unwrap_or(false),
            shutdown_grace: c.duration(
                "daemon.shutdown_grace",
                raw.daemon.shutdown_grace.as_deref(),
                "10s",
            ),
            worker_threads: raw
                .daemon
                .worker_threads
                .map(|n| c.int("daemon.worker_threads", Some(n), 1usize, 1, 256)),
        };
        let vault = VaultConfig {
            key_file: raw
                .vault
                .key_file
                .unwrap_or_else(|| PathBuf::from("/etc/pbxguard/master.key")),
        };

        let http = raw.http.map(|h| {
            let listen = c.addr("http.listen", h.listen.as_deref(), "0.0.0.0:8443");
            let tls = c.tls_pair("http", h.tls_cert, h.tls_key);
            if tls.is_none() && !is_loopback(&listen) {
                c.bad(
                    "http.listen",
                    format!("plain HTTP (no tls_cert/tls_key) is allowed on loopback only, not on {listen}"),
                );
            }
            let redirect_listen = h
                .redirect_listen
                .as_deref()
                .map(|r| c.addr("http.redirect_listen", Some(r), "127.0.0.1:0"));
            let scheme = if tls.is_some() { "https" } else { "http" };
            let default_url = format!("{scheme}://{listen}");
            let public_url = h.public_url.unwrap_or(default_url).trim_end_matches('/').to_string();
            match public_url.parse::<axum::http::Uri>() {
                Ok(uri)
                    if matches!(uri.scheme_str(), Some("https" | "http"))
                        && uri.host().is_some()
                        && uri.path_and_query().is_none_or(|p| p.as_str() == "/" || p.as_str().is_empty()) => {}
                _ => c.bad(
                    "http.public_url",
                    format!("{public_url:?} must be an absolute http(s) URL with no path, e.g. \"https://pbx.example.com:8443\""),
                ),
            }
            if redirect_listen.is_some() && !public_url.starts_with("https://") {
                c.bad("http.public_url", "redirect_listen redirects to public_url, which must then be https://");
            }
            HttpConfig {
                listen,
                tls,
                redirect_listen,
                public_url,
                trusted_proxies: c.nets("http.trusted_proxies", h.trusted_proxies.as_ref(), &[]),
                metrics_allow: c.nets("http.metrics_allow", h.metrics_allow.as_ref(), &["127.0.0.0/8", "::1/128"]),
                max_connections: c.int("http.max_connections", h.max_connections, 1024, 1, 1_000_000),
                header_timeout: c.duration("http.header_timeout", h.header_timeout.as_deref(), "10s"),
                request_timeout: c.duration("http.request_timeout", h.request_timeout.as_deref(), "30s"),
                max_body_bytes: c.int("http.max_body_bytes", h.max_body_bytes, 64 * 1024, 1024, 64 * 1024 * 1024),
                idle_timeout: c.duration("http.idle_timeout", h.idle_timeout.as_deref(), "60s"),
            }
        });

        if let Some(h) = &http {
            if h.idle_timeout < h.request_timeout {
                c.bad(
                    "http.idle_timeout",
                    "must be at least http.request_timeout (a slow request would be cut off)",
                );
            }
        }
        let routes = raw.auth.routes.unwrap_or_default();
        for (prefix, role) in &routes {
            let key = format!("auth.routes.{prefix:?}");
            if !prefix.starts_with('/') {
                c.bad(&key, "a route prefix must start with '/'");
            }
            if !ROLE_NAMES.contains(&role.as_str()) {
                c.bad(
                    &key,
                    format!("{role:?} is not a role (agent, supervisor, manager, admin)"),
                );
            }
        }
        let auth = AuthConfig {
            session_idle_timeout: c.duration(
                "auth.session_idle_timeout",
                raw.auth.session_idle_timeout.as_deref(),
                "8h",
            ),
            session_max_lifetime: c.duration(
                "auth.session_max_lifetime",
                raw.auth.session_max_lifetime.as_deref(),
                "12h",
            ),
            lockout_threshold: c.int(
                "auth.lockout_threshold",
                raw.auth.lockout_threshold,
                10,
                1,
                1000,
            ),
            lockout_window: c.duration(
                "auth.lockout_window",
                raw.auth.lockout_window.as_deref(),
                "15m",
            ),
            lockout_duration: c.duration(
                "auth.lockout_duration",
                raw.auth.lockout_duration.as_deref(),
                "15m",
            ),
            routes,
            history_retention: c.duration(
                "auth.history_retention",
                raw.auth.history_retention.as_deref(),
                "365d",
            ),
        };
        if auth.session_idle_timeout > auth.session_max_lifetime {
            c.bad(
                "auth.session_idle_timeout",
                "is longer than auth.session_max_lifetime",
            );
        }

        let mfa = MfaConfig {
            email_code_ttl: c.duration(
                "mfa.email_code_ttl",
                raw.mfa.email_code_ttl.as_deref(),
                "10m",
            ),
            email_fallback: raw.mfa.email_fallback.unwrap_or(true),
            totp_issuer: c.nonempty("mfa.totp_issuer", raw.mfa.totp_issuer.as_ref(), "pbxguard"),
            email_for_admins: raw.mfa.email_for_admins.unwrap_or(true),
            mfa_token_ttl: c.duration("mfa.mfa_token_ttl", raw.mfa.mfa_token_ttl.as_deref(), "5m"),
            enroll_token_ttl: c.duration(
                "mfa.enroll_token_ttl",
                raw.mfa.enroll_token_ttl.as_deref(),
                "15m",
            ),
            max_code_failures: c.int(
                "mfa.max_code_failures",
                raw.mfa.max_code_failures,
                5,
                1,
                100,
            ),
            email_resend_interval: c.duration(
                "mfa.email_resend_interval",
                raw.mfa.email_resend_interval.as_deref(),
                "30s",
            ),
        };
        if mfa.totp_issuer.contains(':') {
            c.bad(
                "mfa.totp_issuer",
                "must not contain ':' (it separates issuer and user in the otpauth URI)",
            );
        }

        let starttls = match raw.smtp.starttls.as_deref().unwrap_or("required") {
            "required" => StartTls::Required,
            "opportunistic" => StartTls::Opportunistic,
            "none" => StartTls::None,
            other => {
                c.bad(
                    "smtp.starttls",
                    format!("{other:?} is not one of required, opportunistic, none"),
                );
                StartTls::Required
            }
        };
        let smtp = SmtpConfig {
            host: c.nonempty("smtp.host", raw.smtp.host.as_ref(), "127.0.0.1"),
            port: c.int("smtp.port", raw.smtp.port, 587, 1, 65535),
            starttls,
            username: raw.smtp.username.unwrap_or_default(),
            password_secret: raw
                .smtp
                .password_secret
                .unwrap_or_else(|| "smtp/password".into()),
            from: c.nonempty("smtp.from", raw.smtp.from.as_ref(), "pbxguard@localhost"),
            ca_file: raw.smtp.ca_file,
            timeout: c.duration("smtp.timeout", raw.smtp.timeout.as_deref(), "10s"),
        };
        check_secret_name(c, "smtp.password_secret", &smtp.password_secret);

        let recordings = RecordingsConfig {
            root: raw
                .recordings
                .root
                .unwrap_or_else(|| PathBuf::from("/var/spool/asterisk/monitor")),
            link_ttl: c.duration(
                "recordings.link_ttl",
                raw.recordings.link_ttl.as_deref(),
                "8h",
            ),
            max_link_ttl: c.duration(
                "recordings.max_link_ttl",
                raw.recordings.max_link_ttl.as_deref(),
                "7d",
            ),
        };
        if recordings.link_ttl > recordings.max_link_ttl {
            c.bad(
                "recordings.link_ttl",
                format!(
                    "{} is longer than recordings.max_link_ttl ({})",
                    humantime::format_duration(recordings.link_ttl),
                    humantime::format_duration(recordings.max_link_ttl)
                ),
            );
        }

        let realtime = raw.realtime.map(|r| {
            let listen = c.addr("realtime.listen", r.listen.as_deref(), "127.0.0.1:8088");
            if !is_loopback(&listen) {
                c.bad(
                    "realtime.listen",
                    format!("Asterisk's realtime interface must stay on loopback, not {listen}"),
                );
            }
            let cfg = RealtimeConfig {
                listen,
                username: c.nonempty("realtime.username", r.username.as_ref(), "asterisk"),
                password_secret: r
                    .password_secret
                    .unwrap_or_else(|| "realtime/password".into()),
                writable: r.writable.unwrap_or_default(),
            };
            for family in &cfg.writable {
                if !crate::realtime::FAMILIES.contains(&family.as_str()) {
                    c.bad(
                        "realtime.writable",
                        format!(
                            "{family:?} is not a family pbxguard serves (served: {})",
                            crate::realtime::FAMILIES.join(", ")
                        ),
                    );
                }
            }
            check_secret_name(c, "realtime.password_secret", &cfg.password_secret);
            cfg
        });

        let ami = raw.ami.map(|a| {
            let cfg = AmiConfig {
                listen: c.addr("ami.listen", a.listen.as_deref(), "127.0.0.1:5039"),
                tls: c.tls_pair("ami", a.tls_cert, a.tls_key),
                upstream: c.addr("ami.upstream", a.upstream.as_deref(), "127.0.0.1:5038"),
                upstream_timeout: c.duration(
                    "ami.upstream_timeout",
                    a.upstream_timeout.as_deref(),
                    "5s",
                ),
                pool_size: c.int("ami.pool_size", a.pool_size, 0, 0, 256),
                auth_timeout: c.duration("ami.auth_timeout", a.auth_timeout.as_deref(), "30s"),
                max_unauthenticated: c.int(
                    "ami.max_unauthenticated",
                    a.max_unauthenticated,
                    50,
                    1,
                    100_000,
                ),
                max_clients: c.int("ami.max_clients", a.max_clients, 1000, 1, 100_000),
                ban_threshold: c.int("ami.ban_threshold", a.ban_threshold, 5, 1, 1000),
                ban_window: c.duration("ami.ban_window", a.ban_window.as_deref(), "5m"),
                ban_duration: c.duration("ami.ban_duration", a.ban_duration.as_deref(), "15m"),
                action_rate: c.int("ami.action_rate", a.action_rate, 50, 1, 1_000_000),
                action_burst: c.int("ami.action_burst", a.action_burst, 200, 1, 1_000_000),
                max_output_bytes: c.int(
                    "ami.max_output_bytes",
                    a.max_output_bytes,
                    1 << 20,
                    64 << 10,
                    1 << 30,
                ),
                write_timeout: c.duration("ami.write_timeout", a.write_timeout.as_deref(), "10s"),
                upstream_username: c.nonempty(
                    "ami.upstream_username",
                    a.upstream_username.as_ref(),
                    "pbxguard",
                ),
                upstream_secret: a.upstream_secret.unwrap_or_else(|| "ami/upstream".into()),
            };
            check_secret_name(c, "ami.upstream_secret", &cfg.upstream_secret);
            cfg
        });

        let sip = raw.sip.map(|s| {
            let upstream_transport = match s.upstream_transport.as_deref().unwrap_or("udp") {
                "udp" => SipTransport::Udp,
                "tcp" => SipTransport::Tcp,
                other => {
                    c.bad(
                        "sip.upstream_transport",
                        format!("{other:?} is not one of udp, tcp"),
                    );
                    SipTransport::Udp
                }
            };
            SipConfig {
                tls_listen: c.addr("sip.tls_listen", s.tls_listen.as_deref(), "0.0.0.0:5061"),
                wss_listen: c.addr("sip.wss_listen", s.wss_listen.as_deref(), "0.0.0.0:8089"),
                tls: c.tls_pair("sip", s.tls_cert, s.tls_key),
                upstream: c.addr("sip.upstream", s.upstream.as_deref(), "127.0.0.1:5060"),
                upstream_transport,
                upstream_bind: c.addr(
                    "sip.upstream_bind",
                    s.upstream_bind.as_deref(),
                    "127.0.0.1:5070",
                ),
                public_host: s.public_host,
                wss_origins: s
                    .wss_origins
                    .unwrap_or_else(|| default_origins(http.as_ref())),
                ticket_ttl: c.duration("sip.ticket_ttl", s.ticket_ttl.as_deref(), "30s"),
                identity_header: c.nonempty(
                    "sip.identity_header",
                    s.identity_header.as_ref(),
                    "X-PBXGuard-Identity",
                ),
                rate_per_ip: c.int("sip.rate_per_ip", s.rate_per_ip, 20, 0, 1_000_000),
                burst_per_ip: c.int("sip.burst_per_ip", s.burst_per_ip, 100, 1, 1_000_000),
                rate_per_user: c.int("sip.rate_per_user", s.rate_per_user, 10, 0, 1_000_000),
                burst_per_user: c.int("sip.burst_per_user", s.burst_per_user, 50, 1, 1_000_000),
                blocked_user_agents: s
                    .blocked_user_agents
                    .unwrap_or_else(|| DEFAULT_SCANNERS.iter().map(|s| s.to_string()).collect()),
                ban_threshold: c.int("sip.ban_threshold", s.ban_threshold, 10, 1, 100_000),
                ban_window: c.duration("sip.ban_window", s.ban_window.as_deref(), "10m"),
                ban_duration: c.duration("sip.ban_duration", s.ban_duration.as_deref(), "1h"),
                max_connections: c.int(
                    "sip.max_connections",
                    s.max_connections,
                    20_000,
                    1,
                    1_000_000,
                ),
                max_connections_per_ip: c.int(
                    "sip.max_connections_per_ip",
                    s.max_connections_per_ip,
                    256,
                    1,
                    1_000_000,
                ),
                auth_timeout: c.duration("sip.auth_timeout", s.auth_timeout.as_deref(), "60s"),
                idle_timeout: c.duration("sip.idle_timeout", s.idle_timeout.as_deref(), "15m"),
                crypto_suites: s
                    .crypto_suites
                    .unwrap_or_else(|| crate::sip::sdp::MediaPolicy::default().crypto_suites),
                allow_t38: s.allow_t38.unwrap_or(false),
            }
        });
        if let Some(sip) = &sip {
            check_sip(c, sip);
            if sip.tls.is_none() && http.as_ref().is_none_or(|h| h.tls.is_none()) {
                c.bad(
                    "sip.tls_cert",
                    "SIP needs TLS: set sip.tls_cert/tls_key or http.tls_cert/tls_key",
                );
            }
        }

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
        };
        config.check_listener_clashes(c);
        config
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
        if let Some(ca) = &self.smtp.ca_file {
            if !ca.is_file() {
                c.bad("smtp.ca_file", format!("{} does not exist", ca.display()));
            }
        }
        let mut tls_files = Vec::new();
        if let Some(t) = self.http.as_ref().and_then(|h| h.tls.as_ref()) {
            tls_files.push(("http", t));
        }
        if let Some(t) = self.sip.as_ref().and_then(|s| s.tls.as_ref()) {
            tls_files.push(("sip", t));
        }
        if let Some(t) = self.ami.as_ref().and_then(|a| a.tls.as_ref()) {
            tls_files.push(("ami", t));
        }
        for (section, t) in tls_files {
            for (name, path) in [("tls_cert", &t.cert), ("tls_key", &t.key)] {
                if !path.exists() {
                    c.bad(
                        &format!("{section}.{name}"),
                        format!(
                            "{} does not exist (`pbxguard init` creates a self-signed pair)",
                            path.display()
                        ),
                    );
                }
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

impl Problem {
    /// Adds "line N" to a syntax error so the admin can find it.
    fn with_span(mut self, text: &str, span: Option<std::ops::Range<usize>>) -> Problem {
        if let Some(span) = span {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            self.key = format!("(line {line})");
        }
        self
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
        let dev = parse(include_str!("../etc/pbxguard.dev.toml")).unwrap();
        assert!(dev.daemon.init_if_missing);
        assert!(dev.http.is_some_and(|h| h.listen.ip().is_loopback()));
    }

    #[test]
    fn realtime_must_stay_on_loopback() {
        let problems =
            parse("[daemon]\ninit_if_missing = true\n[realtime]\nlisten = \"0.0.0.0:8088\"\n")
                .unwrap_err();
        assert_eq!(keys(&problems), vec!["realtime.listen"]);
    }
}
