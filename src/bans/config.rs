//! The `[bans]` section: who is never banned, how Asterisk's security events and failed web
//! logins turn into bans, how long bans last, the firewall that enforces them, and the
//! blocklist feeds.

use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::feeds::{FeedConfig, RawFeed};
use crate::problems::Checker;

/// How bans reach the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firewall {
    /// Only pbxguard's own listeners refuse banned addresses (Asterisk's ports stay open).
    None,
    /// A table of pbxguard's own in nftables drops their packets on input.
    Nftables,
}

impl Firewall {
    pub fn as_str(self) -> &'static str {
        match self {
            Firewall::None => "none",
            Firewall::Nftables => "nftables",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BansConfig {
    /// Never banned (the office NAT, the trunk provider), besides loopback and the addresses
    /// pbxguard relays from.
    pub allow: Vec<IpNet>,
    /// Asterisk security events from one address within `window` that ban it.
    pub threshold: u32,
    pub window: Duration,
    /// A first ban's length (every source but `feed`, and `manual` without `--duration`).
    pub duration: Duration,
    /// Repeat offenders' bans double up to this.
    pub max_duration: Duration,
    /// Failed web logins from one address within `window` that ban it (0 = never).
    pub http_threshold: u32,
    pub firewall: Firewall,
    /// The nftables table pbxguard owns (family `inet`).
    pub table: String,
    /// How often the kernel's copy is compared with the store and repaired.
    pub reconcile_interval: Duration,
    /// Whether the monitoring session on Asterisk's AMI reads security events (needs `[ami]`
    /// with an upstream user that has the `security` read class).
    pub asterisk_events: bool,
    pub feeds: Vec<FeedConfig>,
}

impl Default for BansConfig {
    fn default() -> BansConfig {
        let mut c = Checker::default();
        BansConfig::from_raw(RawBans::default(), &mut c)
    }
}

/// `[bans]` as serde reads it.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawBans {
    allow: Option<Vec<String>>,
    threshold: Option<i64>,
    window: Option<String>,
    duration: Option<String>,
    max_duration: Option<String>,
    http_threshold: Option<i64>,
    firewall: Option<String>,
    table: Option<String>,
    reconcile_interval: Option<String>,
    asterisk_events: Option<bool>,
    feeds: Option<Vec<RawFeed>>,
}

/// nftables names: letters, digits and `_`, starting with a letter; short.
fn table_name(raw: Option<&str>, c: &mut Checker) -> String {
    let name = raw.unwrap_or("pbxguard");
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.starts_with(|ch: char| ch.is_ascii_alphabetic())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok {
        c.bad(
            "bans.table",
            format!("{name:?}: an nftables table name is up to 32 letters, digits and _, starting with a letter"),
        );
        return "pbxguard".into();
    }
    name.to_string()
}

impl BansConfig {
    pub(crate) fn from_raw(raw: RawBans, c: &mut Checker) -> BansConfig {
        let firewall = match raw.firewall.as_deref() {
            None | Some("none") => Firewall::None,
            Some("nftables") => Firewall::Nftables,
            Some(other) => {
                c.bad(
                    "bans.firewall",
                    format!("{other:?}: expected \"nftables\" or \"none\""),
                );
                Firewall::None
            }
        };
        let duration = c.duration("bans.duration", raw.duration.as_deref(), "1h");
        let max_duration = c.duration("bans.max_duration", raw.max_duration.as_deref(), "1w");
        if max_duration < duration {
            c.bad(
                "bans.max_duration",
                format!(
                    "shorter than bans.duration ({}): repeat offenders would get shorter bans",
                    humantime::format_duration(duration)
                ),
            );
        }
        let reconcile_interval = c.duration(
            "bans.reconcile_interval",
            raw.reconcile_interval.as_deref(),
            "30s",
        );
        let mut feeds = Vec::new();
        for (i, f) in raw.feeds.unwrap_or_default().into_iter().enumerate() {
            if let Some(feed) = FeedConfig::from_raw(f, i, c) {
                if feeds.iter().any(|o: &FeedConfig| o.name == feed.name) {
                    c.bad(
                        &format!("bans.feeds[{i}].name"),
                        format!("{:?} names two feeds", feed.name),
                    );
                    continue;
                }
                feeds.push(feed);
            }
        }
        BansConfig {
            allow: c.nets("bans.allow", raw.allow.as_ref(), &[]),
            threshold: c.int("bans.threshold", raw.threshold, 5, 1, 10_000),
            window: c.duration("bans.window", raw.window.as_deref(), "10m"),
            duration,
            max_duration,
            http_threshold: c.int("bans.http_threshold", raw.http_threshold, 20, 0, 100_000),
            firewall,
            table: table_name(raw.table.as_deref(), c),
            reconcile_interval,
            asterisk_events: raw.asterisk_events.unwrap_or(true),
            feeds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (BansConfig, Vec<String>) {
        let raw: RawBans = toml::from_str(text).unwrap();
        let mut c = Checker::default();
        let cfg = BansConfig::from_raw(raw, &mut c);
        let p = c
            .into_problems()
            .into_iter()
            .map(|p| p.to_string())
            .collect();
        (cfg, p)
    }

    #[test]
    fn defaults_are_fail2bans_asterisk_jail() {
        let (c, p) = parse("");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(c.threshold, 5);
        assert_eq!(c.window, Duration::from_secs(600));
        assert_eq!(c.duration, Duration::from_secs(3600));
        assert_eq!(c.firewall, Firewall::None);
        assert_eq!(c.table, "pbxguard");
        assert_eq!(c.reconcile_interval, Duration::from_secs(30));
        assert_eq!(c, BansConfig::default());
    }

    #[test]
    fn bad_values_name_their_key() {
        let (_, p) = parse(
            "firewall = \"iptables\"\ntable = \"my table\"\nallow = [\"office\"]\nduration = \"2h\"\nmax_duration = \"1h\"",
        );
        let all = p.join("\n");
        for key in [
            "bans.firewall",
            "bans.table",
            "bans.allow",
            "bans.max_duration",
        ] {
            assert!(all.contains(key), "{key} missing from {all}");
        }
    }
}
