//! Login throttling per account and per client IP, computed from the login history (so locks
//! hold across restarts): after `lockout_threshold` failures within `lockout_window`, attempts
//! are refused until `lockout_duration` after the last of them — even with the right password.

use std::collections::HashMap;

use super::config::AuthConfig;
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
    /// Woken whenever an attempt's outcome is recorded, for attempts waiting their turn.
    released: tokio::sync::Notify,
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

/// How long an attempt waits for earlier in-flight attempts of the same account or IP before
/// it is answered as throttled.
const QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Pending {
    /// `Ok(Ok(ticket))` to go ahead, `Ok(Err(retry_after_secs))` when the account (lower-case)
    /// or the IP is locked.
    ///
    /// Recorded failures alone decide a lock. When the attempts still in flight could complete
    /// a lock, this one waits for them instead of being refused: a shift of agents logging in at
    /// once behind one NAT address is served, while a burst of parallel guesses never gets more
    /// verdicts than `lockout_threshold`.
    pub async fn admit(
        &self,
        store: &Store,
        cfg: &AuthConfig,
        account: &str,
        ip: &str,
        now: i64,
    ) -> Result<Result<Ticket, u64>, StoreError> {
        let deadline = tokio::time::Instant::now() + QUEUE_WAIT;
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            // Register before checking, so a release between our check and our wait is not lost.
            released.as_mut().enable();
            {
                let mut counts = self.counts.lock().await;
                let now = now.max(crate::clock::now_unix());
                let since = now - (cfg.lockout_window + cfg.lockout_duration).as_secs() as i64;
                let by_account = store
                    .account_failures(account, since, cfg.lockout_threshold)
                    .await?;
                let by_ip = store.ip_failures(ip, since, cfg.lockout_threshold).await?;
                let recorded = [
                    lock_from(&by_account, cfg, now),
                    lock_from(&by_ip, cfg, now),
                ];
                if let Some(retry_after) = recorded.into_iter().flatten().max() {
                    return Ok(Err(retry_after));
                }
                let pending_account = counts.accounts.get(account).copied().unwrap_or(0);
                let pending_ip = counts.ips.get(ip).copied().unwrap_or(0);
                let could_lock = |list: &[i64], pending: u32| {
                    // Newest first: the in-flight attempts would be the newest failures.
                    let mut with: Vec<i64> = std::iter::repeat_n(now, pending as usize).collect();
                    with.extend_from_slice(list);
                    lock_from(&with, cfg, now).is_some()
                };
                if !could_lock(&by_account, pending_account) && !could_lock(&by_ip, pending_ip) {
                    *counts.accounts.entry(account.to_string()).or_default() += 1;
                    *counts.ips.entry(ip.to_string()).or_default() += 1;
                    return Ok(Ok(Ticket {
                        account: account.to_string(),
                        ip: ip.to_string(),
                    }));
                }
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return Ok(Err(cfg
                    .lockout_duration
                    .as_secs()
                    .min(QUEUE_WAIT.as_secs())));
            }
        }
    }

    pub async fn release(&self, ticket: Ticket) {
        let mut counts = self.counts.lock().await;
        dec(&mut counts.accounts, &ticket.account);
        dec(&mut counts.ips, &ticket.ip);
        self.released.notify_waiters();
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
            password_min_length: 12,
            password_min_strength: 2,
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
