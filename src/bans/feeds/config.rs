//! One `[[bans.feeds]]` entry: what to fetch, how to read it, how often, and how long its
//! entries last.

use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::problems::Checker;

/// The APIBAN API root used when an `apiban` feed has no `url`.
pub const APIBAN_URL: &str = "https://apiban.org/api";
/// Longest `url` accepted.
pub const MAX_URL_LEN: usize = 2048;
/// Longest feed name: it is a metrics label and the ban's origin.
pub const MAX_NAME_LEN: usize = 32;
/// `max_entries` when unset, and its hard cap.
pub const DEFAULT_MAX_ENTRIES: usize = 10_000;
pub const MAX_MAX_ENTRIES: usize = 1_000_000;
/// Refreshing more often than this is refused: feeds are curated lists, not live streams.
pub const MIN_INTERVAL: Duration = Duration::from_secs(60);
/// `ttl` when unset: three intervals, so that two refreshes in a row may fail before the
/// entries lapse.
pub const DEFAULT_TTL_INTERVALS: u32 = 3;
/// `timeout` bounds.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);
/// APIBAN allows 11 requests in 2 minutes per key; one request every 12 s stays under it
/// even when a full download takes many pages.
pub const APIBAN_REQUEST_GAP: Duration = Duration::from_secs(12);

/// How a feed's body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedFormat {
    /// One address or CIDR a line, `#` comments.
    Plain,
    /// The APIBAN JSON API.
    Apiban,
}

impl FeedFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            FeedFormat::Plain => "plain",
            FeedFormat::Apiban => "apiban",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedConfig {
    /// Names the feed in `ban list` (origin), metrics and logs.
    pub name: String,
    /// `plain`: the list's URL. `apiban`: the API root (requests go to
    /// `{url}/{key}/banned[/{id}]`).
    pub url: String,
    pub format: FeedFormat,
    /// Time between the starts of two refreshes.
    pub interval: Duration,
    /// How long an entry stays banned after the last good refresh that listed it.
    pub ttl: Duration,
    /// Entries beyond this many are ignored (the first ones are kept).
    pub max_entries: usize,
    /// The vault secret holding the APIBAN key.
    pub key_secret: Option<String>,
    /// Longest one HTTP request may take, from connecting to the body's last byte.
    pub timeout: Duration,
    /// Pause between two requests of one refresh (APIBAN pages its list): 12 s for `apiban`,
    /// zero for `plain`. Not a config key; tests shorten it.
    pub request_gap: Duration,
}

/// `[[bans.feeds]]` as serde reads it.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawFeed {
    name: Option<String>,
    url: Option<String>,
    format: Option<String>,
    interval: Option<String>,
    ttl: Option<String>,
    max_entries: Option<i64>,
    key_secret: Option<String>,
    timeout: Option<String>,
}

/// A feed URL taken apart: what the HTTP client needs, and what logs may show (scheme, host
/// and port, never the path or query).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FeedUrl {
    pub https: bool,
    /// Without IPv6 brackets.
    pub host: String,
    pub port: u16,
    /// The `Host` header: host as written (brackets kept) and the port if one was written.
    pub authority: String,
    /// Path and query, at least `/`.
    pub path: String,
}

impl FeedUrl {
    /// `https://HOST[:PORT]/PATH[?QUERY]`, or `http://` to a loopback host. No user or
    /// password (they would end up in logs), no fragment.
    pub fn parse(text: &str) -> Result<FeedUrl, String> {
        if text.len() > MAX_URL_LEN {
            return Err(format!("longer than {MAX_URL_LEN} characters"));
        }
        if text.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err("contains spaces or control characters".into());
        }
        if text.contains('#') {
            return Err("has a fragment (#…); remove it".into());
        }
        let uri: hyper::Uri = text
            .parse()
            .map_err(|_| "not a URL (expected https://HOST/PATH)".to_string())?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("the scheme must be https (or http to a loopback address)".into()),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| "has no host".to_string())?
            .as_str()
            .to_string();
        if authority.contains('@') {
            return Err("carries a user name or password; pbxguard would log them".into());
        }
        let host = uri.host().unwrap_or_default();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_string();
        if host.is_empty() {
            return Err("has no host".into());
        }
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        if port == 0 {
            return Err("port 0".into());
        }
        if !https && !is_loopback_host(&host) {
            return Err(format!(
                "http is only allowed to a loopback address ({host} is not one); use https"
            ));
        }
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".into());
        Ok(FeedUrl {
            https,
            host,
            port,
            authority,
            path,
        })
    }

    /// What logs show: scheme, host and port.
    pub fn origin(&self) -> String {
        format!(
            "{}://{}",
            if self.https { "https" } else { "http" },
            self.authority
        )
    }
}

/// `localhost` or a loopback IP literal. The connection still checks the resolved address.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<IpAddr>()
        .map(|ip| crate::net::canonical_ip(ip).is_loopback())
        .unwrap_or(false)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl FeedConfig {
    /// A feed with every optional key at its default (tests, and the defaults' one place).
    pub fn with_defaults(name: &str, url: &str, format: FeedFormat) -> FeedConfig {
        let interval = Duration::from_secs(3600);
        FeedConfig {
            name: name.to_string(),
            url: url.to_string(),
            format,
            interval,
            ttl: interval * DEFAULT_TTL_INTERVALS,
            max_entries: DEFAULT_MAX_ENTRIES,
            key_secret: None,
            timeout: Duration::from_secs(30),
            request_gap: match format {
                FeedFormat::Plain => Duration::ZERO,
                FeedFormat::Apiban => APIBAN_REQUEST_GAP,
            },
        }
    }

    /// `None` when the feed has no usable name (its other problems are reported all the
    /// same); otherwise the feed with fallbacks where values were bad, as every section does.
    pub(crate) fn from_raw(raw: RawFeed, index: usize, c: &mut Checker) -> Option<FeedConfig> {
        let key = |k: &str| format!("bans.feeds[{index}].{k}");
        let name = match raw.name.as_deref() {
            None => {
                c.bad(
                    &key("name"),
                    "is required (it names the feed's bans and metrics)",
                );
                None
            }
            Some(n) if !valid_name(n) => {
                c.bad(
                    &key("name"),
                    format!("{n:?}: up to {MAX_NAME_LEN} of a-z 0-9 _ -"),
                );
                None
            }
            Some(n) => Some(n.to_string()),
        };
        let format = match raw.format.as_deref() {
            None | Some("plain") => FeedFormat::Plain,
            Some("apiban") => FeedFormat::Apiban,
            Some(other) => {
                c.bad(
                    &key("format"),
                    format!("{other:?}: expected \"plain\" or \"apiban\""),
                );
                FeedFormat::Plain
            }
        };
        let url = match (raw.url, format) {
            (Some(u), _) => u,
            (None, FeedFormat::Apiban) => APIBAN_URL.to_string(),
            (None, FeedFormat::Plain) => {
                c.bad(&key("url"), "is required for a plain feed");
                String::new()
            }
        };
        if !url.is_empty() {
            match FeedUrl::parse(&url) {
                Err(e) => c.bad(&key("url"), e),
                Ok(u) if format == FeedFormat::Apiban && u.path.contains('?') => c.bad(
                    &key("url"),
                    "an APIBAN url is the API root (such as https://apiban.org/api), without a query",
                ),
                Ok(_) => {}
            }
        }
        let interval = c.duration(&key("interval"), raw.interval.as_deref(), "1h");
        if interval < MIN_INTERVAL {
            c.bad(&key("interval"), "must be at least 1m");
        }
        let ttl = match raw.ttl.as_deref() {
            None => interval.saturating_mul(DEFAULT_TTL_INTERVALS),
            Some(t) => {
                let ttl = c.duration(&key("ttl"), Some(t), "3h");
                if ttl <= interval {
                    c.bad(
                        &key("ttl"),
                        format!(
                            "must be longer than interval ({}): entries would lapse between two refreshes",
                            humantime::format_duration(interval)
                        ),
                    );
                }
                ttl
            }
        };
        let max_entries = c.int(
            &key("max_entries"),
            raw.max_entries,
            DEFAULT_MAX_ENTRIES,
            1,
            MAX_MAX_ENTRIES as i64,
        );
        let key_secret = match (raw.key_secret, format) {
            (Some(s), FeedFormat::Apiban) => {
                c.check(&key("key_secret"), crate::vault::check_configured_name(&s));
                Some(s)
            }
            (None, FeedFormat::Apiban) => {
                c.bad(
                    &key("key_secret"),
                    "is required for an apiban feed (the vault secret holding the API key)",
                );
                None
            }
            (Some(_), FeedFormat::Plain) => {
                c.bad(&key("key_secret"), "only applies to format = \"apiban\"");
                None
            }
            (None, FeedFormat::Plain) => None,
        };
        let timeout = c.duration(&key("timeout"), raw.timeout.as_deref(), "30s");
        if timeout > MAX_TIMEOUT {
            c.bad(&key("timeout"), "must be at most 10m");
        }
        let mut feed = FeedConfig::with_defaults(&name?, &url, format);
        feed.interval = interval;
        feed.ttl = ttl;
        feed.max_entries = max_entries;
        feed.key_secret = key_secret;
        feed.timeout = timeout;
        Some(feed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (Option<FeedConfig>, Vec<String>) {
        let raw: RawFeed = toml::from_str(text).unwrap();
        let mut c = Checker::default();
        let feed = FeedConfig::from_raw(raw, 2, &mut c);
        let p = c
            .into_problems()
            .into_iter()
            .map(|p| p.to_string())
            .collect();
        (feed, p)
    }

    #[test]
    fn a_plain_feed_with_defaults() {
        let (f, p) = parse("name = \"drop\"\nurl = \"https://lists.example/drop.txt\"");
        assert!(p.is_empty(), "{p:?}");
        let f = f.unwrap();
        assert_eq!(f.name, "drop");
        assert_eq!(f.format, FeedFormat::Plain);
        assert_eq!(f.interval, Duration::from_secs(3600));
        assert_eq!(f.ttl, Duration::from_secs(3 * 3600));
        assert_eq!(f.max_entries, 10_000);
        assert_eq!(f.timeout, Duration::from_secs(30));
        assert_eq!(f.key_secret, None);
        assert_eq!(f.request_gap, Duration::ZERO);
        assert_eq!(
            f,
            FeedConfig::with_defaults("drop", "https://lists.example/drop.txt", FeedFormat::Plain)
        );
    }

    #[test]
    fn every_key_is_read() {
        let (f, p) = parse(
            "name = \"a-1_b\"\nurl = \"https://[2001:db8::1]:8443/l?x=1\"\ninterval = \"10m\"\n\
             ttl = \"1d\"\nmax_entries = 1000000\ntimeout = \"5s\"",
        );
        assert!(p.is_empty(), "{p:?}");
        let f = f.unwrap();
        assert_eq!(f.interval, Duration::from_secs(600));
        assert_eq!(f.ttl, Duration::from_secs(86400));
        assert_eq!(f.max_entries, 1_000_000);
        assert_eq!(f.timeout, Duration::from_secs(5));
        // Unset ttl follows interval.
        let (f, _) = parse("name = \"x\"\nurl = \"https://l.example/\"\ninterval = \"2h\"");
        assert_eq!(f.unwrap().ttl, Duration::from_secs(6 * 3600));
    }

    #[test]
    fn an_apiban_feed_defaults_to_apiban_org_and_needs_a_key() {
        let (f, p) = parse("name = \"apiban\"\nformat = \"apiban\"\nkey_secret = \"apiban/key\"");
        assert!(p.is_empty(), "{p:?}");
        let f = f.unwrap();
        assert_eq!(f.url, APIBAN_URL);
        assert_eq!(f.key_secret.as_deref(), Some("apiban/key"));
        assert_eq!(f.request_gap, APIBAN_REQUEST_GAP);

        let (_, p) = parse("name = \"apiban\"\nformat = \"apiban\"");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("bans.feeds[2].key_secret: is required"),
            "{p:?}"
        );

        let (_, p) = parse("name = \"a\"\nformat = \"apiban\"\nkey_secret = \"sip/1001\"");
        assert!(p[0].contains("bans.feeds[2].key_secret") && p[0].contains("manages itself"));
        let (_, p) = parse("name = \"a\"\nformat = \"apiban\"\nkey_secret = \"../x\"");
        assert!(p[0].starts_with("bans.feeds[2].key_secret"), "{p:?}");
        let (_, p) = parse(
            "name = \"a\"\nformat = \"apiban\"\nkey_secret = \"k\"\nurl = \"https://apiban.example/api?k=1\"",
        );
        assert!(p[0].starts_with("bans.feeds[2].url"), "{p:?}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases: &[(&str, &str)] = &[
            ("url = \"https://l.example/\"", "name: is required"),
            (
                "name = \"Drop\"\nurl = \"https://l.example/\"",
                "name: \"Drop\": up to 32",
            ),
            ("name = \"a b\"\nurl = \"https://l.example/\"", "name:"),
            (
                "name = \"abcdefghijklmnopqrstuvwxyz0123456\"\nurl = \"https://l.example/\"",
                "name:",
            ),
            ("name = \"x\"", "url: is required for a plain feed"),
            (
                "name = \"x\"\nurl = \"ftp://l.example/\"",
                "url: the scheme must be https",
            ),
            ("name = \"x\"\nurl = \"l.example/list\"", "url:"),
            (
                "name = \"x\"\nurl = \"http://l.example/\"",
                "url: http is only allowed to a loopback",
            ),
            (
                "name = \"x\"\nurl = \"http://192.0.2.1/\"",
                "url: http is only allowed",
            ),
            (
                "name = \"x\"\nurl = \"https://u:p@l.example/\"",
                "url: carries a user name",
            ),
            (
                "name = \"x\"\nurl = \"https://l.example/#top\"",
                "url: has a fragment",
            ),
            (
                "name = \"x\"\nurl = \"https://l.example/a b\"",
                "url: contains spaces",
            ),
            (
                "name = \"x\"\nurl = \"https://l.example/\"\nformat = \"csv\"",
                "format: \"csv\"",
            ),
            (
                "name = \"x\"\nurl = \"https://l.example/\"\ninterval = \"30s\"",
                "interval: must be at least 1m",
            ),
            (
                "name = \"x\"\nurl = \"https://l.example/\"\ninterval = \"soon\"",
                "interval: \"soon\" is not a duration",
            ),
            (
                "name = \"x\"\nurl = \"https://l.example/\"\nttl = \"30m\"",
                "ttl: must be longer than interval (1h)",
            ),
            (
                "name = \"x\"\nurl = \"https://l.example/\"\nttl = \"1h\"",
                "ttl: must be longer",
            ),
            (
                "name = \"x\"\nurl = \"https://l.example/\"\nmax_entries = 0",
                "max_entries: 0 is out of range",
            ),
            (
                "name = \"x\"\nurl = \"https://l.example/\"\nmax_entries = 1000001",
                "max_entries: 1000001 is out of range",
            ),
            (
                "name = \"x\"\nurl = \"https://l.example/\"\nkey_secret = \"k\"",
                "key_secret: only applies",
            ),
            (
                "name = \"x\"\nurl = \"https://l.example/\"\ntimeout = \"1h\"",
                "timeout: must be at most 10m",
            ),
            (
                "name = \"x\"\nurl = \"https://l.example/\"\ntimeout = \"0s\"",
                "timeout: must be longer than zero",
            ),
        ];
        for (text, want) in cases {
            let (_, p) = parse(text);
            let want = format!("bans.feeds[2].{want}");
            assert!(
                p.iter().any(|p| p.starts_with(&want)),
                "{text:?}: want {want:?} in {p:?}"
            );
        }
        let long = format!(
            "name = \"x\"\nurl = \"https://l.example/{}\"",
            "a".repeat(2100)
        );
        assert!(parse(&long).1[0].contains("longer than 2048"));
    }

    #[test]
    fn http_is_allowed_to_loopback_only() {
        for ok in [
            "http://127.0.0.1:8080/l",
            "http://[::1]/l",
            "http://localhost/l",
            "http://127.9.9.9/",
        ] {
            let (_, p) = parse(&format!("name = \"x\"\nurl = \"{ok}\""));
            assert!(p.is_empty(), "{ok}: {p:?}");
        }
        let u = FeedUrl::parse("http://[::1]:81/x?y=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 81, "/x?y=1")
        );
        assert_eq!(u.origin(), "http://[::1]:81");
        let u = FeedUrl::parse("https://l.example").unwrap();
        assert_eq!((u.port, u.path.as_str(), u.https), (443, "/", true));
    }

    #[test]
    fn a_feed_without_a_usable_name_is_left_out() {
        let (f, _) = parse("url = \"https://l.example/\"");
        assert!(f.is_none());
        let (f, p) = parse("name = \"x\"\nurl = \"https://l.example/\"\ninterval = \"10s\"");
        assert!(
            f.is_some(),
            "a bad value is reported, the feed keeps its name"
        );
        assert!(!p.is_empty());
    }
}
