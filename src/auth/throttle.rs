//! Login throttling per account and per client IP, computed from the login history (so locks
//! hold across restarts): after `lockout_threshold` failures within `lockout_window`, attempts
//! are refused until `lockout_duration` after the last of them — even with the right password.

use crate::config::AuthConfig;
use crate::store::{Store, StoreError};

/// Seconds until the lock ends, for a list of failure times (newest first).
fn lock_from(failures: &[i64], cfg: &AuthConfig, now: i64) -> Option<u64> {
    let threshold = cfg.lockout_threshold as usize;
    if failures.len() < threshold || threshold == 0 {
        return None;
    }
    let newest = failures[0];
    let oldest = failures[threshold - 1];
    let window = cfg.lockout_window.as_secs() as i64;
    let until = newest + cfg.lockout_duration.as_secs() as i64;
    (newest - oldest <= window && now < until).then(|| (until - now) as u64)
}

/// `Some(retry_after_secs)` when the account or the IP is locked.
pub async fn locked(
    store: &Store,
    cfg: &AuthConfig,
    account: &str,
    ip: &str,
    now: i64,
) -> Result<Option<u64>, StoreError> {
    let since = now - (cfg.lockout_window + cfg.lockout_duration).as_secs() as i64;
    let by_account = store
        .account_failures(account, since, cfg.lockout_threshold)
        .await?;
    let by_ip = store.ip_failures(ip, since, cfg.lockout_threshold).await?;
    Ok([
        lock_from(&by_account, cfg, now),
        lock_from(&by_ip, cfg, now),
    ]
    .into_iter()
    .flatten()
    .max())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg() -> AuthConfig {
        AuthConfig {
            session_idle_timeout: Duration::from_secs(3600),
            session_max_lifetime: Duration::from_secs(7200),
            lockout_threshold: 3,
            lockout_window: Duration::from_secs(60),
            lockout_duration: Duration::from_secs(300),
            routes: Default::default(),
        }
    }

    #[test]
    fn locks_after_threshold_within_window_until_duration_passes() {
        let c = cfg();
        assert_eq!(lock_from(&[100, 90], &c, 101), None, "below threshold");
        assert_eq!(lock_from(&[100, 90, 50], &c, 101), Some(299));
        assert_eq!(
            lock_from(&[100, 90, 30], &c, 101),
            None,
            "spread wider than the window"
        );
        assert_eq!(lock_from(&[100, 90, 50], &c, 400), None, "lock over");
        assert_eq!(lock_from(&[100, 90, 50], &c, 399), Some(1));
    }
}
