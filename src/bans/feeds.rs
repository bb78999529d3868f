//! Blocklist feeds (`[[bans.feeds]]`): lists of addresses that someone else curates (a plain
//! text list on a web server, the APIBAN service), fetched every `interval` and handed to a
//! sink that keeps them in the ban list as `feed` bans.
//!
//! Each feed runs in a task of its own ([`spawn`]). A refresh that works hands the feed's
//! whole list to the sink, which replaces that feed's rows: an address the feed dropped goes
//! away. A refresh that fails (network, HTTP status, a body over [`MAX_BODY`], JSON that is
//! not APIBAN's, a body without a single address) leaves the last good list in place, logs
//! one warning and is retried with a bounded backoff. Every ban the sink writes expires `ttl`
//! after the refresh that listed it, so a feed that stays broken stops banning on its own.
//!
//! Modules: `config` reads `[[bans.feeds]]`, `parse` turns a body into ban keys, `http`
//! fetches one URL with limits, `run` is the refresh loop.

pub mod config;
mod http;
pub mod parse;
mod run;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::bans::BanKey;

pub(crate) use config::RawFeed;
pub use config::{FeedConfig, FeedFormat, APIBAN_URL};
pub use parse::{BadLine, FeedList};
pub use run::{fetch, spawn, Feeds, Reloaded};

/// Largest body read from a feed (one APIBAN page, or a whole plain list). A million IPv4
/// addresses a line take about 15 MiB.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// A feed's complete current list, as the sink receives it after each good refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedUpdate {
    /// The feed's `name` (the ban's origin).
    pub feed: String,
    /// Every entry, deduplicated, in the feed's order, at most `max_entries`.
    pub entries: Vec<BanKey>,
    /// How long these entries stay banned unless a later refresh lists them again.
    pub ttl: Duration,
}

/// Where good refreshes go: the daemon's sink replaces the feed's rows in the store.
pub type FeedSink = Arc<dyn Fn(FeedUpdate) -> BoxFuture<'static, ()> + Send + Sync>;

/// Why one refresh failed. Messages name the feed's host, never its path: an APIBAN key
/// sits in the path.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("url: {0}")]
    Url(String),
    #[error("http is only allowed to a loopback address; {host} is not one (use https)")]
    Insecure { host: String },
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("cannot connect to {host}: {reason}")]
    Connect { host: String, reason: String },
    #[error("TLS with {host} failed: {reason}")]
    Tls { host: String, reason: String },
    #[error(
        "no trusted root certificates on this system (install the ca-certificates package): {0}"
    )]
    NoRoots(String),
    #[error("HTTP exchange with {host} failed: {reason}")]
    Http { host: String, reason: String },
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("{host} answered {status}, a redirect; redirects are not followed (set url to the final address)")]
    Redirect { host: String, status: u16 },
    #[error("{host} answered HTTP status {status}")]
    Status { host: String, status: u16 },
    #[error("the body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("none of the {lines} non-comment lines is an address (first: line {first}: {reason}); not a blocklist?")]
    NoAddresses {
        lines: usize,
        first: usize,
        reason: String,
    },
    #[error("the answer is not APIBAN's JSON: {0}")]
    Json(String),
    #[error("APIBAN: {0}")]
    Apiban(String),
    #[error("the APIBAN key cannot be read from the vault secret {secret:?}: {reason}")]
    Key { secret: String, reason: String },
}

impl FeedError {
    /// Replaces any occurrence of `secret` in the message's free text: the errors never take
    /// a URL path, but a library's message might echo one one day.
    fn scrub(self, secret: &str) -> FeedError {
        if secret.is_empty() {
            return self;
        }
        let s = |t: String| t.replace(secret, "<key>");
        match self {
            FeedError::Url(t) => FeedError::Url(s(t)),
            FeedError::Resolve { host, reason } => FeedError::Resolve {
                host,
                reason: s(reason),
            },
            FeedError::Connect { host, reason } => FeedError::Connect {
                host,
                reason: s(reason),
            },
            FeedError::Tls { host, reason } => FeedError::Tls {
                host,
                reason: s(reason),
            },
            FeedError::Http { host, reason } => FeedError::Http {
                host,
                reason: s(reason),
            },
            FeedError::Json(t) => FeedError::Json(s(t)),
            FeedError::Apiban(t) => FeedError::Apiban(s(t)),
            other => other,
        }
    }
}
