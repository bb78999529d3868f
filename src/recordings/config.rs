//! The `[recordings]` section: where Asterisk writes recordings and how long links live.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::problems::Checker;

/// Asterisk's monitor folder, where MixMonitor writes relative names.
pub const DEFAULT_ROOT: &str = "/var/spool/asterisk/monitor";

#[derive(Debug, Clone, PartialEq)]
pub struct RecordingsConfig {
    pub root: PathBuf,
    pub link_ttl: Duration,
    /// The longest lifetime a link may be given (`--ttl`, the API's `ttl`).
    pub max_link_ttl: Duration,
}

/// `[recordings]` as serde reads it: every key optional, values unconverted.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawRecordings {
    root: Option<PathBuf>,
    link_ttl: Option<String>,
    max_link_ttl: Option<String>,
}

impl RecordingsConfig {
    /// Converts `[recordings]` with its defaults, reporting each bad value under its key.
    pub(crate) fn from_raw(raw: RawRecordings, c: &mut Checker) -> RecordingsConfig {
        let recordings = RecordingsConfig {
            root: raw.root.unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT)),
            link_ttl: c.duration("recordings.link_ttl", raw.link_ttl.as_deref(), "8h"),
            max_link_ttl: c.duration("recordings.max_link_ttl", raw.max_link_ttl.as_deref(), "7d"),
        };
        if recordings.link_ttl > recordings.max_link_ttl {
            c.bad(
                "recordings.link_ttl",
                format!(
                    "{} is longer than recordings.max_link_ttl ({})",
                    humantime::format_duration(recordings.link_ttl),
                    humantime::format_duration(recordings.max_link_ttl)
                ),
            );
        }
        recordings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(text: &str) -> (RecordingsConfig, Vec<crate::problems::Problem>) {
        let mut c = Checker::default();
        let cfg = RecordingsConfig::from_raw(toml::from_str(text).unwrap(), &mut c);
        (cfg, c.into_problems())
    }

    #[test]
    fn the_default_link_lifetime_fits_the_longest() {
        let (cfg, problems) = convert("");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(cfg.link_ttl, Duration::from_secs(8 * 3600));
        assert_eq!(cfg.max_link_ttl, Duration::from_secs(7 * 86400));
    }

    #[test]
    fn a_default_lifetime_beyond_the_longest_is_refused() {
        let (_, problems) = convert("link_ttl = \"2d\"\nmax_link_ttl = \"1d\"\n");
        assert_eq!(problems.len(), 1);
        assert_eq!(
            problems[0].to_string(),
            "recordings.link_ttl: 2days is longer than recordings.max_link_ttl (1day)"
        );
    }
}
