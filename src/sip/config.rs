//! The `[sip]` section: the edge's listeners, its way to Asterisk, its limits and bans, and
//! the media policy it enforces.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::sdp::MediaPolicy;
use super::uri::SipUri;
use crate::problems::{Checker, TlsFiles};

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

/// `[sip]` as serde reads it: every key optional, values unconverted.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawSip {
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

fn upstream_transport(c: &mut Checker, raw: Option<&str>) -> SipTransport {
    match raw.unwrap_or("udp") {
        "udp" => SipTransport::Udp,
        "tcp" => SipTransport::Tcp,
        other => {
            c.bad(
                "sip.upstream_transport",
                format!("{other:?} is not one of udp, tcp"),
            );
            SipTransport::Udp
        }
    }
}

impl SipConfig {
    /// Converts `[sip]` with its defaults, reporting each bad value under its key.
    /// `default_origins`: the web tier's origin, allowed when `wss_origins` is not set.
    pub(crate) fn from_raw(s: RawSip, c: &mut Checker, default_origins: Vec<String>) -> SipConfig {
        let upstream_transport = upstream_transport(c, s.upstream_transport.as_deref());
        let sip = SipConfig {
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
            wss_origins: s.wss_origins.unwrap_or(default_origins),
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
                .unwrap_or_else(|| MediaPolicy::default().crypto_suites),
            allow_t38: s.allow_t38.unwrap_or(false),
        };
        sip.check(c);
        sip
    }

    /// The values whose shape matters beyond their type.
    fn check(&self, c: &mut Checker) {
        for origin in &self.wss_origins {
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
        let name = &self.identity_header;
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            || !name.to_ascii_lowercase().starts_with("x-")
        {
            c.bad(
                "sip.identity_header",
                format!(
                    "{name:?} must be a header name starting with X- (letters, digits, dashes)"
                ),
            );
        }
        if let Some(host) = &self.public_host {
            if SipUri::parse(&format!("sip:{host}")).is_err() {
                c.bad(
                    "sip.public_host",
                    format!("{host:?} is not a host name or address (add no port or scheme)"),
                );
            }
        }
        if self.blocked_user_agents.iter().any(|s| s.trim().is_empty()) {
            c.bad(
                "sip.blocked_user_agents",
                "entries must not be empty (an empty one would block everyone)",
            );
        }
        self.check_crypto_suites(c);
    }

    fn check_crypto_suites(&self, c: &mut Checker) {
        let known = MediaPolicy::default().crypto_suites;
        for suite in &self.crypto_suites {
            if !known.contains(suite) {
                c.bad(
                    "sip.crypto_suites",
                    format!("{suite:?} is not one of {}", known.join(", ")),
                );
            }
        }
        if self.crypto_suites.is_empty() {
            c.bad(
                "sip.crypto_suites",
                "at least one suite is needed for SDES-SRTP phones",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(text: &str, origins: &[&str]) -> (SipConfig, Vec<String>) {
        let origins = origins.iter().map(|o| o.to_string()).collect();
        crate::problems::convert_section(text, |raw, c| SipConfig::from_raw(raw, c, origins))
    }

    #[test]
    fn defaults_block_scanners_and_take_the_web_origin() {
        let (cfg, problems) = convert("", &["https://pbx.example.com:8443"]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(cfg.wss_origins, ["https://pbx.example.com:8443"]);
        assert_eq!(cfg.blocked_user_agents.len(), DEFAULT_SCANNERS.len());
        assert_eq!(cfg.upstream_transport, SipTransport::Udp);
        assert_eq!(cfg.crypto_suites, MediaPolicy::default().crypto_suites);
        let (cfg, _) = convert("wss_origins = []\n", &["https://pbx.example.com"]);
        assert!(cfg.wss_origins.is_empty());
    }

    #[test]
    fn shapes_are_checked_after_the_values() {
        let (_, problems) = convert(
            "upstream_transport = \"sctp\"\nburst_per_ip = 0\n\
             wss_origins = [\"https://pbx.example.com/phone\"]\n\
             identity_header = \"P-Asserted-Identity\"\npublic_host = \"pbx example.com\"\n\
             blocked_user_agents = [\" \"]\ncrypto_suites = [\"NULL_CIPHER\"]\n",
            &[],
        );
        assert_eq!(
            problems,
            [
                "sip.upstream_transport",
                "sip.burst_per_ip",
                "sip.wss_origins",
                "sip.identity_header",
                "sip.public_host",
                "sip.blocked_user_agents",
                "sip.crypto_suites",
            ]
        );
    }

    #[test]
    fn phones_need_at_least_one_suite() {
        let (_, problems) = convert("crypto_suites = []\n", &[]);
        assert_eq!(problems, ["sip.crypto_suites"]);
    }
}
