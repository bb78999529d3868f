//! Blocklist feeds (`[[bans.feeds]]`): placeholder, written by the feeds work.

use std::time::Duration;

use serde::Deserialize;

use crate::problems::Checker;

/// How a feed's body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedFormat {
    /// One address or CIDR a line, `#` comments.
    Plain,
    /// The APIBAN JSON API.
    Apiban,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedConfig {
    /// Names the feed in `ban list` (origin), metrics and logs.
    pub name: String,
    pub url: String,
    pub format: FeedFormat,
    pub interval: Duration,
    pub ttl: Duration,
    pub max_entries: usize,
    /// The vault secret holding the APIBAN key.
    pub key_secret: Option<String>,
}

/// `[[bans.feeds]]` as serde reads it.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawFeed {
    name: Option<String>,
    url: Option<String>,
}

impl FeedConfig {
    pub(crate) fn from_raw(raw: RawFeed, index: usize, c: &mut Checker) -> Option<FeedConfig> {
        let _ = (raw.name, raw.url, index, c);
        None
    }
}
