//! Brute-force bans for AMI clients (their action rate limit is a [`crate::rate::Bucket`]).
//! Kept in memory: a restart forgets bans, which costs an attacker nothing they could not get
//! by waiting `ban_duration`, and keeps the login path free of disk writes.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries tracked at most; past this, expired ones are dropped and, failing that, the oldest
/// (an address-spraying attacker cannot grow memory without bound).
const MAX_TRACKED: usize = 65_536;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Ip(IpAddr),
    User(String),
}

#[derive(Debug, Default)]
struct Entry {
    failures: VecDeque<Instant>,
    banned_until: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
pub struct BanRules {
    pub threshold: u32,
    pub window: Duration,
    pub duration: Duration,
}

#[derive(Debug, Default)]
pub struct Bans {
    entries: Mutex<HashMap<Key, Entry>>,
}

fn ip_key(ip: IpAddr) -> Key {
    Key::Ip(crate::net::ban_prefix(ip))
}

impl Bans {
    fn banned(&self, key: &Key, now: Instant) -> Option<Duration> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let until = entries.get(key)?.banned_until?;
        (until > now).then(|| until - now)
    }

    /// How long the IP (or, when given, the user) stays banned.
    pub fn check(&self, ip: IpAddr, user: Option<&str>, now: Instant) -> Option<Duration> {
        let by_ip = self.banned(&ip_key(ip), now);
        let by_user = user.and_then(|u| self.banned(&Key::User(u.to_string()), now));
        by_ip.max(by_user)
    }

    /// Records a failed login against the address and, when given, the user (only an existing
    /// user failing from an address it may log in from: otherwise anyone could lock it out);
    /// returns whether this failure started a ban.
    pub fn failure(&self, ip: IpAddr, user: Option<&str>, rules: BanRules, now: Instant) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_TRACKED {
            entries.retain(|_, e| {
                e.banned_until.is_some_and(|u| u > now)
                    || e.failures.back().is_some_and(|&t| now - t < rules.window)
            });
        }
        let mut started = false;
        let keys = std::iter::once(ip_key(ip)).chain(user.map(|u| Key::User(u.to_string())));
        for key in keys {
            // Full of live entries (an address-spraying attack): new keys go untracked rather
            // than dropping bans in force.
            if entries.len() >= MAX_TRACKED && !entries.contains_key(&key) {
                continue;
            }
            let entry = entries.entry(key).or_default();
            while entry
                .failures
                .front()
                .is_some_and(|&t| now.duration_since(t) > rules.window)
            {
                entry.failures.pop_front();
            }
            entry.failures.push_back(now);
            if entry.failures.len() >= rules.threshold as usize {
                entry.failures.clear();
                entry.banned_until = Some(now + rules.duration);
                started = true;
            }
        }
        started
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: BanRules = BanRules {
        threshold: 3,
        window: Duration::from_secs(60),
        duration: Duration::from_secs(600),
    };

    #[test]
    fn bans_by_ip_and_by_user() {
        let bans = Bans::default();
        let t = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(!bans.failure(a, Some("dialer"), RULES, t));
        assert!(!bans.failure(b, Some("dialer"), RULES, t));
        assert!(bans.check(a, Some("dialer"), t).is_none());
        // Third failure for the user (from a third address) bans the user everywhere.
        assert!(bans.failure("192.0.2.3".parse().unwrap(), Some("dialer"), RULES, t));
        assert!(bans.check(a, Some("dialer"), t).is_some());
        assert!(bans.check(a, Some("wallboard"), t).is_none());
        assert!(bans
            .check(a, Some("dialer"), t + Duration::from_secs(601))
            .is_none());
    }

    #[test]
    fn ipv6_is_banned_by_its_64() {
        let bans = Bans::default();
        let t = Instant::now();
        for host in ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"] {
            bans.failure(host.parse().unwrap(), None, RULES, t);
        }
        assert!(bans
            .check("2001:db8:1:2::99".parse().unwrap(), None, t)
            .is_some());
        assert!(bans
            .check("2001:db8:1:3::1".parse().unwrap(), None, t)
            .is_none());
        // An IPv4-mapped address is the IPv4 address.
        for _ in 0..3 {
            bans.failure("::ffff:192.0.2.7".parse().unwrap(), None, RULES, t);
        }
        assert!(bans.check("192.0.2.7".parse().unwrap(), None, t).is_some());
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let bans = Bans::default();
        let t = Instant::now();
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        bans.failure(ip, None, RULES, t);
        bans.failure(ip, None, RULES, t + Duration::from_secs(30));
        // Both earlier failures are older than the window by now: this is the first again.
        assert!(!bans.failure(ip, None, RULES, t + Duration::from_secs(120)));
        assert!(!bans.failure(ip, None, RULES, t + Duration::from_secs(121)));
        assert!(bans.check(ip, None, t + Duration::from_secs(121)).is_none());
        assert!(bans.failure(ip, None, RULES, t + Duration::from_secs(122)));
        assert!(bans.check(ip, None, t + Duration::from_secs(123)).is_some());
    }
}
