//! Wrong realtime credentials per address: after [`MAX_FAILURES`] within [`WINDOW`], the address
//! gets 429 for [`BLOCK`] without its credentials being looked at. Asterisk retries, so a
//! mistyped password on its side costs at most a minute once fixed; a local process guessing
//! the password gets ten tries a minute.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const MAX_FAILURES: u32 = 10;
pub const WINDOW: Duration = Duration::from_secs(60);
pub const BLOCK: Duration = Duration::from_secs(60);
/// Addresses remembered at most (realtime listens on loopback: a handful in practice).
const MAX_ADDRESSES: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Failures {
    since: Instant,
    count: u32,
    blocked_until: Option<Instant>,
}

/// What a failure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    Counted,
    /// This failure started a block (log it, once).
    Blocked,
}

#[derive(Debug, Default)]
pub struct Throttle {
    by_address: Mutex<HashMap<IpAddr, Failures>>,
}

impl Throttle {
    /// Whether `ip` is blocked at `now`.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> bool {
        let map = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&ip)
            .and_then(|f| f.blocked_until)
            .is_some_and(|until| now < until)
    }

    /// Counts a wrong or missing credential from `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> Failed {
        let mut map = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ADDRESSES && !map.contains_key(&ip) {
            map.retain(|_, f| {
                now.saturating_duration_since(f.since) < WINDOW
                    || f.blocked_until.is_some_and(|u| now < u)
            });
        }
        let f = map.entry(ip).or_insert(Failures {
            since: now,
            count: 0,
            blocked_until: None,
        });
        let ended_block = f.blocked_until.is_some_and(|u| now >= u);
        if ended_block || now.saturating_duration_since(f.since) >= WINDOW {
            *f = Failures {
                since: now,
                count: 0,
                blocked_until: None,
            };
        }
        f.count += 1;
        if f.count >= MAX_FAILURES && f.blocked_until.is_none() {
            f.blocked_until = Some(now + BLOCK);
            Failed::Blocked
        } else {
            Failed::Counted
        }
    }

    /// A right credential from `ip` forgets its failures.
    pub fn succeeded(&self, ip: IpAddr) {
        let mut map = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_failures_in_a_minute_block_for_a_minute() {
        let t = Throttle::default();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "::1".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..MAX_FAILURES - 1 {
            assert_eq!(
                t.failed(a, t0 + Duration::from_secs(u64::from(i))),
                Failed::Counted
            );
            assert!(!t.blocked(a, t0 + Duration::from_secs(u64::from(i))));
        }
        let tenth = t0 + Duration::from_secs(30);
        assert_eq!(t.failed(a, tenth), Failed::Blocked);
        assert!(t.blocked(a, tenth));
        assert!(!t.blocked(b, tenth), "other addresses are served");
        assert!(t.blocked(a, tenth + BLOCK - Duration::from_millis(1)));
        assert!(!t.blocked(a, tenth + BLOCK));
        // After the block, counting starts over.
        assert_eq!(t.failed(a, tenth + BLOCK), Failed::Counted);
        assert!(!t.blocked(a, tenth + BLOCK));
    }

    #[test]
    fn failures_spread_over_more_than_a_minute_do_not_block_and_success_forgets() {
        let t = Throttle::default();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..30u64 {
            // One every 7 s: never ten within one window.
            assert_eq!(
                t.failed(a, t0 + Duration::from_secs(i * 7)),
                Failed::Counted,
                "{i}"
            );
        }
        for i in 0..MAX_FAILURES - 1 {
            t.failed(a, t0 + Duration::from_secs(300 + u64::from(i)));
        }
        t.succeeded(a);
        assert_eq!(t.failed(a, t0 + Duration::from_secs(320)), Failed::Counted);
    }
}
