//! The `[auth]` (sessions, lockout, forward-auth routes) and `[mfa]` sections.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::problems::Checker;

/// `[auth] password_min_length` default, and the range admins may set (here and at run time).
pub const PASSWORD_MIN_LENGTH: u32 = 12;
pub const PASSWORD_LENGTH_FLOOR: i64 = 8;
pub const PASSWORD_LENGTH_CEILING: i64 = 128;
/// `[auth] password_min_strength` default: zxcvbn's "somewhat guessable" (about 10^8
/// guesses) is the least a password behind a throttled login with a second factor should
/// reach.
pub const PASSWORD_MIN_STRENGTH: u8 = 2;

#[derive(Debug, Clone, PartialEq)]
pub struct AuthConfig {
    pub session_idle_timeout: Duration,
    pub session_max_lifetime: Duration,
    pub lockout_threshold: u32,
    pub lockout_window: Duration,
    pub lockout_duration: Duration,
    /// Shortest new password, in characters.
    pub password_min_length: u32,
    /// Least strength estimate (0-4) a new password must reach.
    pub password_min_strength: u8,
    /// URI prefix -> least role name.
    pub routes: BTreeMap<String, String>,
    /// Login history rows older than this are deleted (hourly).
    pub history_retention: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MfaConfig {
    pub email_code_ttl: Duration,
    pub email_fallback: bool,
    /// Whether every user must have a second factor (the default of the runtime setting).
    pub force: bool,
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
    /// The passkeys' relying party id when it is not `public_url`'s host: a domain every
    /// node's host is under (several hosts, one set of passkeys).
    pub passkey_rp_id: Option<String>,
    /// Browser origins besides `public_url`'s that may finish a passkey ceremony (the other
    /// hosts and a load balancer's name; each under `passkey_rp_id`).
    pub passkey_origins: Vec<String>,
}

/// `[auth]` as serde reads it: every key optional, values unconverted.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawAuth {
    session_idle_timeout: Option<String>,
    session_max_lifetime: Option<String>,
    lockout_threshold: Option<i64>,
    lockout_window: Option<String>,
    lockout_duration: Option<String>,
    password_min_length: Option<i64>,
    password_min_strength: Option<i64>,
    routes: Option<BTreeMap<String, String>>,
    history_retention: Option<String>,
}

/// `[mfa]` as serde reads it.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawMfa {
    email_code_ttl: Option<String>,
    email_fallback: Option<bool>,
    force: Option<bool>,
    totp_issuer: Option<String>,
    email_for_admins: Option<bool>,
    mfa_token_ttl: Option<String>,
    enroll_token_ttl: Option<String>,
    max_code_failures: Option<i64>,
    email_resend_interval: Option<String>,
    passkey_rp_id: Option<String>,
    passkey_origins: Option<Vec<String>>,
}

fn check_routes(c: &mut Checker, routes: &BTreeMap<String, String>) {
    for (prefix, role) in routes {
        let key = format!("auth.routes.{prefix:?}");
        if !prefix.starts_with('/') {
            c.bad(&key, "a route prefix must start with '/'");
        }
        // Least roles are the names of `Role`, which are part of the config contract.
        if super::roles::Role::parse(role).is_none() {
            c.bad(
                &key,
                format!("{role:?} is not a role (agent, supervisor, manager, admin)"),
            );
        }
    }
}

impl AuthConfig {
    /// Converts `[auth]` with its defaults, reporting each bad value under its key.
    pub(crate) fn from_raw(raw: RawAuth, c: &mut Checker) -> AuthConfig {
        let mut routes = raw.routes.unwrap_or_default();
        check_routes(c, &routes);
        // The console's admin pages need the admin role at the forward-auth check too (nginx
        // in front of pbxguard), unless the file says otherwise for that prefix.
        routes
            .entry("/admin".to_string())
            .or_insert_with(|| "admin".to_string());
        let auth = AuthConfig {
            session_idle_timeout: c.duration(
                "auth.session_idle_timeout",
                raw.session_idle_timeout.as_deref(),
                "8h",
            ),
            session_max_lifetime: c.duration(
                "auth.session_max_lifetime",
                raw.session_max_lifetime.as_deref(),
                "12h",
            ),
            lockout_threshold: c.int("auth.lockout_threshold", raw.lockout_threshold, 10, 1, 1000),
            lockout_window: c.duration("auth.lockout_window", raw.lockout_window.as_deref(), "15m"),
            lockout_duration: c.duration(
                "auth.lockout_duration",
                raw.lockout_duration.as_deref(),
                "15m",
            ),
            password_min_length: c.int(
                "auth.password_min_length",
                raw.password_min_length,
                PASSWORD_MIN_LENGTH,
                PASSWORD_LENGTH_FLOOR,
                PASSWORD_LENGTH_CEILING,
            ),
            password_min_strength: c.int(
                "auth.password_min_strength",
                raw.password_min_strength,
                PASSWORD_MIN_STRENGTH,
                0,
                4,
            ),
            routes,
            history_retention: c.duration(
                "auth.history_retention",
                raw.history_retention.as_deref(),
                "365d",
            ),
        };
        if auth.session_idle_timeout > auth.session_max_lifetime {
            c.bad(
                "auth.session_idle_timeout",
                "is longer than auth.session_max_lifetime",
            );
        }
        auth
    }
}

impl MfaConfig {
    /// Converts `[mfa]` with its defaults, reporting each bad value under its key.
    pub(crate) fn from_raw(raw: RawMfa, c: &mut Checker) -> MfaConfig {
        let mfa = MfaConfig {
            email_code_ttl: c.duration("mfa.email_code_ttl", raw.email_code_ttl.as_deref(), "10m"),
            email_fallback: raw.email_fallback.unwrap_or(true),
            force: raw.force.unwrap_or(false),
            totp_issuer: c.nonempty("mfa.totp_issuer", raw.totp_issuer.as_ref(), "pbxguard"),
            email_for_admins: raw.email_for_admins.unwrap_or(true),
            mfa_token_ttl: c.duration("mfa.mfa_token_ttl", raw.mfa_token_ttl.as_deref(), "5m"),
            enroll_token_ttl: c.duration(
                "mfa.enroll_token_ttl",
                raw.enroll_token_ttl.as_deref(),
                "15m",
            ),
            max_code_failures: c.int("mfa.max_code_failures", raw.max_code_failures, 5, 1, 100),
            email_resend_interval: c.duration(
                "mfa.email_resend_interval",
                raw.email_resend_interval.as_deref(),
                "30s",
            ),
            passkey_rp_id: raw.passkey_rp_id.map(|d| d.to_ascii_lowercase()),
            passkey_origins: raw
                .passkey_origins
                .unwrap_or_default()
                .into_iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        };
        for o in &mfa.passkey_origins {
            let host = origin_host(o);
            match (&mfa.passkey_rp_id, host) {
                (Some(domain), Some(h)) if host_within(h, domain) => {}
                (None, _) => c.bad(
                    "mfa.passkey_origins",
                    "needs mfa.passkey_rp_id (the domain every origin is under)",
                ),
                _ => c.bad(
                    "mfa.passkey_origins",
                    format!("{o:?} must be https://HOST[:PORT] with HOST under mfa.passkey_rp_id"),
                ),
            }
        }
        if let Some(d) = &mfa.passkey_rp_id {
            if !is_domain(d) {
                c.bad(
                    "mfa.passkey_rp_id",
                    "must be a domain name such as example.com (not an IP address, no scheme or port)",
                );
            }
        }
        if mfa.totp_issuer.contains(':') {
            c.bad(
                "mfa.totp_issuer",
                "must not contain ':' (it separates issuer and user in the otpauth URI)",
            );
        }
        mfa
    }
}

/// A DNS name of at least two labels (browsers refuse IP addresses and bare TLDs as RP ids).
fn is_domain(d: &str) -> bool {
    d.len() <= 253
        && d.split('.').count() >= 2
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && !d.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// The host of an `https://HOST[:PORT]` origin (no path, no user part).
pub fn origin_host(origin: &str) -> Option<&str> {
    let rest = origin.strip_prefix("https://")?;
    if rest.is_empty() || rest.contains(['/', '@', '?', '#']) {
        return None;
    }
    let host = match rest.rsplit_once(':') {
        Some((h, port)) if port.parse::<u16>().is_ok() => h,
        Some(_) => return None,
        None => rest,
    };
    is_domain(host).then_some(host)
}

/// Whether `host` is `domain` or a name under it.
pub fn host_within(host: &str, domain: &str) -> bool {
    let host = host.to_ascii_lowercase();
    host == domain || host.ends_with(&format!(".{domain}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_passkey_rp_id_is_a_domain() {
        for good in ["example.com", "pbx.example.co.uk", "EXAMPLE.com"] {
            let (cfg, problems) = mfa(&format!("passkey_rp_id = \"{good}\"\n"));
            assert!(problems.is_empty(), "{good}: {problems:?}");
            assert_eq!(cfg.passkey_rp_id, Some(good.to_ascii_lowercase()));
        }
        for bad in [
            "com",
            "192.0.2.1",
            "https://example.com",
            "example.com:8443",
            "-a.example.com",
            "a..b",
        ] {
            let (_, problems) = mfa(&format!("passkey_rp_id = \"{bad}\"\n"));
            assert_eq!(problems, ["mfa.passkey_rp_id"], "{bad}");
        }
        let with_origins = |o: &str| {
            mfa(&format!(
                "passkey_rp_id = \"example.com\"\npasskey_origins = [{o}]\n"
            ))
        };
        let (cfg, problems) =
            with_origins("\"https://pbx.example.com\", \"https://PBX2.example.com:8443/\"");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            cfg.passkey_origins,
            ["https://pbx.example.com", "https://pbx2.example.com:8443"]
        );
        for bad in [
            "\"http://pbx.example.com\"",
            "\"https://pbx.example.org\"",
            "\"https://pbx.example.com/login\"",
            "\"https://192.0.2.1\"",
            "\"https://pbx.example.com:x\"",
        ] {
            let (_, problems) = with_origins(bad);
            assert_eq!(problems, ["mfa.passkey_origins"], "{bad}");
        }
        let (_, problems) = mfa("passkey_origins = [\"https://pbx.example.com\"]\n");
        assert_eq!(problems, ["mfa.passkey_origins"]);
        assert!(host_within("pbx1.example.com", "example.com"));
        assert!(host_within("example.com", "example.com"));
        assert!(!host_within("badexample.com", "example.com"));
        assert!(!host_within("example.com.evil.test", "example.com"));
    }

    fn auth(text: &str) -> (AuthConfig, Vec<String>) {
        crate::problems::convert_section(text, AuthConfig::from_raw)
    }

    fn mfa(text: &str) -> (MfaConfig, Vec<String>) {
        crate::problems::convert_section(text, MfaConfig::from_raw)
    }

    #[test]
    fn routes_need_a_path_and_a_role() {
        let (cfg, problems) =
            auth("[routes]\n\"/ok\" = \"manager\"\n\"nope\" = \"agent\"\n\"/x\" = \"Admin\"\n");
        // The three as written, and the console's /admin.
        assert_eq!(cfg.routes.len(), 4);
        assert_eq!(cfg.routes.get("/admin").map(String::as_str), Some("admin"));
        assert_eq!(problems, ["auth.routes.\"/x\"", "auth.routes.\"nope\""]);
        // A file that names /admin keeps its own rule.
        let (cfg, _) = auth("[routes]\n\"/admin\" = \"manager\"\n");
        assert_eq!(
            cfg.routes.get("/admin").map(String::as_str),
            Some("manager")
        );
    }

    #[test]
    fn an_idle_timeout_beyond_the_lifetime_is_refused() {
        let (_, problems) = auth("session_idle_timeout = \"13h\"\n");
        assert_eq!(problems, ["auth.session_idle_timeout"]);
        let (cfg, problems) = auth("");
        assert!(problems.is_empty());
        assert_eq!(cfg.lockout_threshold, 10);
    }

    #[test]
    fn the_totp_issuer_cannot_hold_the_uri_separator() {
        let (_, problems) = mfa("totp_issuer = \"pbx:main\"\n");
        assert_eq!(problems, ["mfa.totp_issuer"]);
        let (cfg, problems) = mfa("");
        assert!(problems.is_empty());
        assert_eq!(cfg.totp_issuer, "pbxguard");
        assert!(cfg.email_fallback && cfg.email_for_admins);
    }
}
