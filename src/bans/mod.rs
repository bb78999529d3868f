//! One ban list for every door of the PBX host: the SIP edge, the AMI gateway, the HTTP login,
//! Asterisk's own security events, blocklist feeds and admins. The store holds the truth; each
//! daemon keeps an in-memory copy its listeners consult per connection, and, with
//! `[bans] firewall = "nftables"`, a copy in the kernel that drops a banned address's packets
//! before TLS and before Asterisk.

pub mod config;
pub mod feeds;
pub mod key;
pub mod nft;

pub use key::{BanKey, KeyError};

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
