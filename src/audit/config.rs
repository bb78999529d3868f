//! The `[audit]` section: the daemon runs `audit asterisk` on a schedule, so that the
//! console shows the last findings without a shell on the PBX. Off unless `interval` is set.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::problems::Checker;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// How often; `None`: never (the default).
    pub interval: Option<Duration>,
    /// Asterisk's configuration folder.
    pub dir: PathBuf,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            interval: None,
            dir: PathBuf::from("/etc/asterisk"),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawAudit {
    interval: Option<String>,
    dir: Option<PathBuf>,
}

/// Runs closer together than this would only reread the same files.
const MIN_INTERVAL: Duration = Duration::from_secs(60);

impl AuditConfig {
    pub(crate) fn from_raw(raw: RawAudit, c: &mut Checker) -> AuditConfig {
        let interval = match raw.interval.as_deref() {
            None => None,
            Some(text) => {
                let d = c.duration_or_zero("audit.interval", Some(text), "0");
                if d.is_zero() {
                    None
                } else if d < MIN_INTERVAL {
                    c.bad("audit.interval", "must be at least 1m (or 0: off)");
                    None
                } else {
                    Some(d)
                }
            }
        };
        let dir = raw.dir.unwrap_or_else(|| AuditConfig::default().dir);
        if !dir.is_absolute() {
            c.bad("audit.dir", "must be an absolute path");
        }
        AuditConfig { interval, dir }
    }
}
