//! What a configuration can get wrong, collected with its dotted key.
//!
//! Every section, whichever feature owns it, converts its raw (serde) values through a
//! [`Checker`]: each helper reports a bad value under the key the admin typed and hands back a
//! usable fallback, so that conversion continues and the admin sees every mistake at once. This
//! module sits below every feature so that each can own its section without importing the
//! loader in [`crate::config`].

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

/// What an unknown key is told; the loader also uses it to tell unknown keys (which leave the
/// section usable) from type errors (which do not).
pub(crate) const UNKNOWN_KEY: &str =
    "unknown key (check the spelling; every key is listed in etc/pbxguard.toml)";

/// Longest duration accepted anywhere; keeps time arithmetic far from overflow.
const MAX_DURATION: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

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

impl Problem {
    /// Adds "line N" to a syntax error so the admin can find it.
    pub(crate) fn with_span(mut self, text: &str, span: Option<std::ops::Range<usize>>) -> Problem {
        if let Some(span) = span {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            self.key = format!("(line {line})");
        }
        self
    }
}

pub use crate::net::is_loopback;
pub use crate::tls::TlsFiles;

/// Collects problems while converting raw values; each helper returns a usable fallback so
/// that conversion continues past the first mistake.
#[derive(Debug, Default)]
pub(crate) struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    pub(crate) fn bad(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.to_string(),
            message: message.into(),
        });
    }

    /// Reports the error of a check that explains itself (e.g. a secret name's rules).
    pub(crate) fn check(&mut self, key: &str, result: Result<(), String>) {
        if let Err(message) = result {
            self.bad(key, message);
        }
    }

    /// Whether anything other than an unknown key was reported.
    pub(crate) fn has_errors_besides_unknown_keys(&self) -> bool {
        self.problems.iter().any(|p| p.message != UNKNOWN_KEY)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    pub(crate) fn into_problems(self) -> Vec<Problem> {
        self.problems
    }

    /// Reads one section: unknown keys and the first type error inside it become problems
    /// named by their full key; `None` when the section cannot be read at all.
    pub(crate) fn section<T: serde::de::DeserializeOwned>(
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

    /// Like [`Checker::duration`], where `"0"` (or any zero duration) is a meaningful setting.
    pub(crate) fn duration_or_zero(
        &mut self,
        key: &str,
        raw: Option<&str>,
        default: &str,
    ) -> Duration {
        let text = raw.unwrap_or(default);
        if text.trim() == "0" || humantime::parse_duration(text).is_ok_and(|d| d.is_zero()) {
            return Duration::ZERO;
        }
        self.duration(key, Some(text), default)
    }

    pub(crate) fn duration(&mut self, key: &str, raw: Option<&str>, default: &str) -> Duration {
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

    pub(crate) fn addr(&mut self, key: &str, raw: Option<&str>, default: &str) -> SocketAddr {
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

    pub(crate) fn nets(
        &mut self,
        key: &str,
        raw: Option<&Vec<String>>,
        default: &[&str],
    ) -> Vec<IpNet> {
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

    pub(crate) fn int<T>(
        &mut self,
        key: &str,
        raw: Option<i64>,
        default: T,
        min: i64,
        max: i64,
    ) -> T
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

    pub(crate) fn nonempty(&mut self, key: &str, raw: Option<&String>, default: &str) -> String {
        let value = raw.map(String::as_str).unwrap_or(default);
        if value.trim().is_empty() {
            self.bad(key, "must not be empty");
        }
        value.to_string()
    }

    /// A section's `tls_cert`/`tls_key`: both or neither.
    pub(crate) fn tls_pair(
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

    /// A section's certificate and key must exist on disk (`pbxguard init` creates them).
    pub(crate) fn tls_files_exist(&mut self, section: &str, files: &TlsFiles) {
        for (name, path) in [("tls_cert", &files.cert), ("tls_key", &files.key)] {
            if !path.exists() {
                self.bad(
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

/// A section converted from TOML text, with the keys of the problems it reported: the one way
/// every section's unit tests read their input.
#[cfg(test)]
pub(crate) fn convert_section<R: serde::de::DeserializeOwned, T>(
    text: &str,
    from_raw: impl FnOnce(R, &mut Checker) -> T,
) -> (T, Vec<String>) {
    let mut c = Checker::default();
    let section = from_raw(toml::from_str(text).expect("test TOML"), &mut c);
    (
        section,
        c.into_problems().into_iter().map(|p| p.key).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(c: Checker) -> Vec<String> {
        c.into_problems().into_iter().map(|p| p.key).collect()
    }

    #[test]
    fn durations_must_be_positive_and_bounded() {
        let mut c = Checker::default();
        assert_eq!(
            c.duration("a.ok", Some("90s"), "1s"),
            Duration::from_secs(90)
        );
        assert_eq!(
            c.duration("a.default", None, "2m"),
            Duration::from_secs(120)
        );
        c.duration("a.zero", Some("0s"), "1s");
        c.duration("a.long", Some("11years"), "1s");
        // A typo falls back to the default so the rest still converts.
        assert_eq!(
            c.duration("a.typo", Some("soon"), "5m"),
            Duration::from_secs(300)
        );
        assert_eq!(keys(c), ["a.zero", "a.long", "a.typo"]);
    }

    #[test]
    fn ints_outside_their_range_keep_the_default() {
        let mut c = Checker::default();
        assert_eq!(c.int("a.n", Some(0), 7u32, 1, 10), 7);
        assert_eq!(c.int("a.m", Some(10), 7u32, 1, 10), 10);
        assert_eq!(keys(c), ["a.n"]);
    }

    #[test]
    fn half_a_tls_pair_names_the_missing_key() {
        let mut c = Checker::default();
        assert!(c.tls_pair("x", Some("c".into()), None).is_none());
        assert!(c.tls_pair("y", None, Some("k".into())).is_none());
        assert!(c
            .tls_pair("z", Some("c".into()), Some("k".into()))
            .is_some());
        assert_eq!(keys(c), ["x.tls_key", "y.tls_cert"]);
    }

    #[test]
    fn networks_accept_addresses_and_cidrs() {
        let mut c = Checker::default();
        let nets = c.nets(
            "a.nets",
            Some(&vec!["10.1.2.3/8".into(), "::1".into(), "nope".into()]),
            &[],
        );
        assert_eq!(
            nets,
            vec![
                "10.0.0.0/8".parse::<IpNet>().unwrap(),
                "::1/128".parse().unwrap()
            ]
        );
        assert_eq!(keys(c), ["a.nets"]);
    }

    #[test]
    fn mapped_loopback_is_loopback() {
        assert!(is_loopback(&"[::ffff:127.0.0.1]:1".parse().unwrap()));
        assert!(is_loopback(&"[::1]:1".parse().unwrap()));
        assert!(!is_loopback(&"0.0.0.0:1".parse().unwrap()));
    }
}
