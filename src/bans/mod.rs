//! One ban list for every door of the PBX host: the SIP edge, the AMI gateway, the HTTP login,
//! Asterisk's own security events, blocklist feeds and admins. The store holds the truth; each
//! daemon keeps an in-memory copy its listeners consult per connection, and, with
//! `[bans] firewall = "nftables"`, a copy in the kernel that drops a banned address's packets
//! before TLS and before Asterisk.

pub mod active;
pub mod admin;
pub mod config;
pub mod feeds;
pub mod firewall;
pub mod key;
pub mod list;
pub mod nft;

use ipnet::IpNet;

pub use key::{BanKey, KeyError};
pub use list::{Bans, ImposeError};

/// Why `key` must never be banned: it is loopback or unspecified, or it overlaps `allow` or
/// the daemon's own `exempt` networks: the proxies it trusts, the Asterisk it relays to and
/// the address it relays from (Asterisk's events name pbxguard as the client of everything
/// it relays; on one host that is loopback or the address Asterisk listens on).
pub fn never_banned(key: &BanKey, allow: &[IpNet], exempt: &[IpNet]) -> Option<String> {
    let net = key.net();
    let (loopback, local_link) = match net {
        IpNet::V4(n) => (
            n.addr().is_loopback()
                || n.addr().is_unspecified()
                || n.contains(&std::net::Ipv4Addr::LOCALHOST),
            n.addr().is_link_local()
                || n.addr().is_multicast()
                || n.addr().is_broadcast()
                || n.contains(&std::net::Ipv4Addr::new(169, 254, 0, 1)),
        ),
        IpNet::V6(n) => {
            let first = n.addr().segments()[0];
            (
                n.addr().is_loopback()
                    || n.addr().is_unspecified()
                    || n.contains(&std::net::Ipv6Addr::LOCALHOST),
                // fe80::/10 link-local (neighbour discovery, router adverts), ff00::/8.
                first & 0xffc0 == 0xfe80 || first & 0xff00 == 0xff00 || n.prefix_len() < 10,
            )
        }
    };
    if loopback {
        return Some("loopback (this host)".into());
    }
    if local_link {
        return Some("a link-local or multicast address (the host's own network plumbing)".into());
    }
    if let Some(a) = allow.iter().find(|a| key.overlaps(a)) {
        return Some(format!("it overlaps {a} in [bans] allow"));
    }
    if let Some(a) = exempt.iter().find(|a| key.overlaps(a)) {
        return Some(format!(
            "it overlaps {a}, which pbxguard trusts or relays to"
        ));
    }
    None
}

/// Where a ban came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// The SIP edge: failed authentications, scanners.
    Sip,
    /// The AMI gateway: failed logins.
    Ami,
    /// The HTTP login: repeated failures from one address (beyond the per-account lockout).
    Http,
    /// Asterisk's security events (its own SIP port, its own AMI).
    Asterisk,
    /// A blocklist feed.
    Feed,
    /// An admin (`pbxguard ban add`, the admin API).
    Manual,
}

impl Source {
    pub const ALL: [Source; 6] = [
        Source::Sip,
        Source::Ami,
        Source::Http,
        Source::Asterisk,
        Source::Feed,
        Source::Manual,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Sip => "sip",
            Source::Ami => "ami",
            Source::Http => "http",
            Source::Asterisk => "asterisk",
            Source::Feed => "feed",
            Source::Manual => "manual",
        }
    }

    pub fn parse(text: &str) -> Option<Source> {
        Source::ALL.into_iter().find(|s| s.as_str() == text)
    }
}
