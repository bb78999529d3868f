//! Login lockouts of AMI clients by name (their action rate limit is a [`crate::rate::Bucket`];
//! bans by address are in the one ban list, `crate::bans`, source `ami`). Kept in memory: a
//! restart forgets a lockout, which costs an attacker nothing they could not get by waiting
//! `ban_duration`, and keeps the login path free of disk writes.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Names tracked at most; past this, expired ones are dropped, and new names go untracked
/// rather than dropping lockouts in force.
const MAX_TRACKED: usize = 65_536;

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
pub struct Lockouts {
    entries: Mutex<HashMap<String, Entry>>,
}

impl Lockouts {
    /// How long `user` stays locked out.
    pub fn check(&self, user: &str, now: Instant) -> Option<Duration> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let until = entries.get(user)?.banned_until?;
        (until > now).then(|| until - now)
    }

    /// Records a failed login of an existing user from an address it may log in from (only
    /// such failures count: otherwise anyone could lock it out); returns whether this failure
    /// started a lockout.
    pub fn failure(&self, user: &str, rules: BanRules, now: Instant) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_TRACKED && !entries.contains_key(user) {
            entries.retain(|_, e| {
                e.banned_until.is_some_and(|u| u > now)
                    || e.failures.back().is_some_and(|&t| now - t < rules.window)
            });
            if entries.len() >= MAX_TRACKED {
                return false;
            }
        }
        let entry = entries.entry(user.to_string()).or_default();
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
            return true;
        }
        false
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
    fn a_user_is_locked_out_at_the_threshold() {
        let l = Lockouts::default();
        let t = Instant::now();
        assert!(!l.failure("dialer", RULES, t));
        assert!(!l.failure("dialer", RULES, t));
        assert!(l.check("dialer", t).is_none());
        assert!(l.failure("dialer", RULES, t));
        assert!(l.check("dialer", t).is_some());
        assert!(l.check("wallboard", t).is_none());
        assert!(l.check("dialer", t + Duration::from_secs(601)).is_none());
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let l = Lockouts::default();
        let t = Instant::now();
        l.failure("u", RULES, t);
        l.failure("u", RULES, t + Duration::from_secs(30));
        assert!(!l.failure("u", RULES, t + Duration::from_secs(120)));
        assert!(!l.failure("u", RULES, t + Duration::from_secs(121)));
        assert!(l.failure("u", RULES, t + Duration::from_secs(122)));
    }
}
