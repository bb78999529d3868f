//! Login throttling per account and per client IP, computed from the login history (so locks
//! hold across restarts): after `lockout_threshold` failures within `lockout_window`, attempts
//! are refused until `lockout_duration` after the last of them — even with the right password.

use std::collections::HashMap;

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

/// Attempts that passed the lock check but whose outcome is not in the history yet (their
/// argon2 hash is still running). They count as failures happening now, so a burst of parallel
/// guesses cannot all slip past the check before the first failure is written.
#[derive(Debug, Default)]
pub struct Pending {
    /// An async mutex held across the history queries and the reservation: a release (which
    /// also takes it) cannot fall between another attempt's query and its reservation.
    counts: tokio::sync::Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    accounts: HashMap<String, u32>,
    ips: HashMap<String, u32>,
}

/// A reserved attempt; hand it back with [`Pending::release`] once its outcome is recorded.
#[derive(Debug)]
pub struct Ticket {
    account: String,
    ip: String,
}

fn dec(map: &mut HashMap<String, u32>, key: &str) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl Pending {
    /// `Ok(Ok(ticket))` to go ahead, `Ok(Err(retry_after_secs))` when the account (lower-case)
    /// or the IP is locked.
    pub async fn admit(
        &self,
        store: &Store,
        cfg: &AuthConfig,
        account: &str,
        ip: &str,
        now: i64,
    ) -> Result<Result<Ticket, u64>, StoreError> {
        let mut counts = self.counts.lock().await;
        let since = now - (cfg.lockout_window + cfg.lockout_duration).as_secs() as i64;
        let mut by_account = store
            .account_failures(account, since, cfg.lockout_threshold)
            .await?;
        let mut by_ip = store.ip_failures(ip, since, cfg.lockout_threshold).await?;
        for (list, pending) in [
            (
                &mut by_account,
                counts.accounts.get(account).copied().unwrap_or(0),
            ),
            (&mut by_ip, counts.ips.get(ip).copied().unwrap_or(0)),
        ] {
            // Newest first: the in-flight attempts are the newest.
            list.splice(0..0, std::iter::repeat_n(now, pending as usize));
        }
        let lock = [
            lock_from(&by_account, cfg, now),
            lock_from(&by_ip, cfg, now),
        ]
        .into_iter()
        .flatten()
        .max();
        if let Some(retry_after) = lock {
            return Ok(Err(retry_after));
        }
        *counts.accounts.entry(account.to_string()).or_default() += 1;
        *counts.ips.entry(ip.to_string()).or_default() += 1;
        Ok(Ok(Ticket {
            account: account.to_string(),
            ip: ip.to_string(),
        }))
    }

    pub async fn release(&self, ticket: Ticket) {
        let mut counts = self.counts.lock().await;
        dec(&mut counts.accounts, &ticket.account);
        dec(&mut counts.ips, &ticket.ip);
    }
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
            history_retention: Duration::from_secs(86400),
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
