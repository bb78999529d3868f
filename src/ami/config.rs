//! The `[ami]` section: the gateway's listener, its Asterisk session and its limits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::problems::{Checker, TlsFiles};

#[derive(Debug, Clone, PartialEq)]
pub struct AmiConfig {
    pub listen: SocketAddr,
    /// Optional TLS towards clients (AMI over TLS, as Asterisk's `tlsenable`).
    pub tls: Option<TlsFiles>,
    /// The admin's explicit yes to plain AMI on an address other hosts reach (secrets and
    /// call events in clear text); warned about at every start.
    pub allow_plaintext: bool,
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
    /// `[recordings] root` (not a key of `[ami]`): where the `MixMonitor` action may write.
    pub recordings_root: PathBuf,
}

/// `[ami]` as serde reads it: every key optional, values unconverted.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawAmi {
    listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    allow_plaintext: Option<bool>,
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

impl AmiConfig {
    /// Converts `[ami]` with its defaults, reporting each bad value under its key.
    pub(crate) fn from_raw(a: RawAmi, c: &mut Checker) -> AmiConfig {
        let cfg = AmiConfig {
            listen: c.addr("ami.listen", a.listen.as_deref(), "127.0.0.1:5039"),
            tls: c.tls_pair("ami", a.tls_cert, a.tls_key),
            allow_plaintext: a.allow_plaintext.unwrap_or(false),
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
            recordings_root: PathBuf::from(crate::recordings::config::DEFAULT_ROOT),
        };
        c.check(
            "ami.upstream_secret",
            crate::vault::check_configured_name(&cfg.upstream_secret),
        );
        if cfg.plaintext_off_loopback() && !cfg.allow_plaintext {
            c.bad(
                "ami.listen",
                format!(
                    "plain AMI (no tls_cert/tls_key) on {}, which other hosts reach, sends client secrets and call events in clear text: add tls_cert and tls_key, listen on loopback, or set ami.allow_plaintext = true",
                    cfg.listen
                ),
            );
        }
        cfg
    }

    /// Whether clients on other hosts would talk to the gateway without TLS.
    pub fn plaintext_off_loopback(&self) -> bool {
        self.tls.is_none() && !self.listen.ip().to_canonical().is_loopback()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(text: &str) -> (AmiConfig, Vec<String>) {
        crate::problems::convert_section(text, AmiConfig::from_raw)
    }

    #[test]
    fn plain_ami_off_loopback_needs_tls_or_an_explicit_yes() {
        for listen in [
            "0.0.0.0:5039",
            "[::]:5039",
            "192.0.2.10:5039",
            "[::ffff:192.0.2.10]:5039",
        ] {
            let (_, problems) = convert(&format!("listen = \"{listen}\"\n"));
            assert_eq!(problems, ["ami.listen"], "{listen}");
            let (cfg, problems) =
                convert(&format!("listen = \"{listen}\"\nallow_plaintext = true\n"));
            assert!(problems.is_empty(), "{listen}: {problems:?}");
            assert!(cfg.allow_plaintext && cfg.plaintext_off_loopback());
        }
        for listen in ["127.0.0.1:5039", "[::1]:5039", "[::ffff:127.0.0.1]:5039"] {
            let (cfg, problems) = convert(&format!("listen = \"{listen}\"\n"));
            assert!(problems.is_empty(), "{listen}: {problems:?}");
            assert!(!cfg.plaintext_off_loopback());
        }
        let (cfg, problems) =
            convert("listen = \"0.0.0.0:5039\"\ntls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\n");
        assert!(problems.is_empty(), "{problems:?}");
        assert!(!cfg.plaintext_off_loopback());
    }

    #[test]
    fn an_empty_section_is_a_loopback_gateway() {
        let (cfg, problems) = convert("");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(cfg.listen, "127.0.0.1:5039".parse().unwrap());
        assert_eq!(cfg.upstream, "127.0.0.1:5038".parse().unwrap());
        assert_eq!(cfg.upstream_secret, "ami/upstream");
        assert_eq!(cfg.max_output_bytes, 1 << 20);
        assert!(cfg.tls.is_none());
    }

    #[test]
    fn bad_values_are_named_in_section_order() {
        let (_, problems) = convert(
            "tls_cert = \"/c.pem\"\npool_size = 300\nmax_output_bytes = 1\n\
             upstream_username = \" \"\nupstream_secret = \"ami/clients/crm\"\n",
        );
        assert_eq!(
            problems,
            [
                "ami.tls_key",
                "ami.pool_size",
                "ami.max_output_bytes",
                "ami.upstream_username",
                "ami.upstream_secret",
            ]
        );
    }
}
