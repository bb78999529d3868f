//! The `[smtp]` section: the relay that carries the emailed second factor.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::problems::Checker;

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

/// `[smtp]` as serde reads it: every key optional, values unconverted.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawSmtp {
    host: Option<String>,
    port: Option<i64>,
    starttls: Option<String>,
    username: Option<String>,
    password_secret: Option<String>,
    from: Option<String>,
    ca_file: Option<PathBuf>,
    timeout: Option<String>,
}

fn starttls(c: &mut Checker, raw: Option<&str>) -> StartTls {
    match raw.unwrap_or("required") {
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
    }
}

impl SmtpConfig {
    /// Converts `[smtp]` with its defaults, reporting each bad value under its key.
    pub(crate) fn from_raw(raw: RawSmtp, c: &mut Checker) -> SmtpConfig {
        let starttls = starttls(c, raw.starttls.as_deref());
        let smtp = SmtpConfig {
            host: c.nonempty("smtp.host", raw.host.as_ref(), "127.0.0.1"),
            port: c.int("smtp.port", raw.port, 587, 1, 65535),
            starttls,
            username: raw.username.unwrap_or_default(),
            password_secret: raw
                .password_secret
                .unwrap_or_else(|| "smtp/password".into()),
            from: c.nonempty("smtp.from", raw.from.as_ref(), "pbxguard@localhost"),
            ca_file: raw.ca_file,
            timeout: c.duration("smtp.timeout", raw.timeout.as_deref(), "10s"),
        };
        c.check(
            "smtp.password_secret",
            crate::vault::check_configured_name(&smtp.password_secret),
        );
        smtp
    }

    /// The files the section names must exist (checked when the daemon is about to use them).
    pub(crate) fn check_files(&self, c: &mut Checker) {
        if let Some(ca) = &self.ca_file {
            if !ca.is_file() {
                c.bad("smtp.ca_file", format!("{} does not exist", ca.display()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(text: &str) -> (SmtpConfig, Vec<String>) {
        crate::problems::convert_section(text, SmtpConfig::from_raw)
    }

    #[test]
    fn defaults_require_starttls_on_the_submission_port() {
        let (cfg, problems) = convert("");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(cfg.starttls, StartTls::Required);
        assert_eq!(cfg.port, 587);
        assert_eq!(cfg.password_secret, "smtp/password");
    }

    #[test]
    fn bad_values_are_named_in_section_order() {
        let (cfg, problems) = convert(
            "starttls = \"maybe\"\nport = 0\nfrom = \"\"\npassword_secret = \"keys/jwt/x\"\n",
        );
        // An unknown mode falls back to the strict one.
        assert_eq!(cfg.starttls, StartTls::Required);
        assert_eq!(
            problems,
            [
                "smtp.starttls",
                "smtp.port",
                "smtp.from",
                "smtp.password_secret"
            ]
        );
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (mut cfg, _) = convert("");
        let mut c = Checker::default();
        cfg.check_files(&mut c);
        cfg.ca_file = Some(dir.path().join("absent.pem"));
        cfg.check_files(&mut c);
        assert_eq!(
            c.into_problems()
                .into_iter()
                .map(|p| p.key)
                .collect::<Vec<_>>(),
            ["smtp.ca_file"]
        );
    }
}
