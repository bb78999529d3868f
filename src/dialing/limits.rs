//! Per-offender call limits: calls up at once and call attempts per minute. A key is an
//! extension (`ext:1001`) or an AMI client (`ami:dialer`); a call is known by an id the door
//! chooses (the SIP Call-ID, the AMI ActionID), so a retransmitted INVITE is not a second call.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Rule;

const WINDOW: Duration = Duration::from_secs(60);
/// A call not ended after this is forgotten: a lost BYE must not hold a slot for ever.
pub const MAX_CALL_AGE: Duration = Duration::from_secs(12 * 3600);
/// Keys tracked at most; past it, idle keys are dropped, and while it stays full new keys are
/// refused.
const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// 0 = unlimited.
    pub max_concurrent: u32,
    pub max_per_minute: u32,
}

/// A refused start: the rule and how long the caller should wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub rule: Rule,
    pub retry_after: Duration,
}

#[derive(Debug, Default)]
struct KeyState {
    /// Call id → when it started.
    calls: HashMap<String, Instant>,
    /// Start times of admitted attempts within the window, oldest first.
    attempts: VecDeque<Instant>,
}

impl KeyState {
    fn prune(&mut self, now: Instant) {
        while self
            .attempts
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            self.attempts.pop_front();
        }
        self.calls
            .retain(|_, at| now.duration_since(*at) < MAX_CALL_AGE);
    }

    fn idle(&self) -> bool {
        self.calls.is_empty() && self.attempts.is_empty()
    }
}

#[derive(Debug, Default)]
pub struct Limiter {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    keys: HashMap<String, KeyState>,
    /// When idle keys were last dropped: a full table is swept at most once a second, so a
    /// flood of new keys costs one pass per second, not one per call.
    swept: Option<Instant>,
}

impl Limiter {
    /// Starts call `id` for `key` unless a limit is reached. A call already started (the same
    /// id again) is admitted without counting twice. Only admitted attempts count towards the
    /// per-minute limit, so a phone that is refused is admitted again once its earlier calls
    /// leave the window.
    pub fn begin(&self, key: &str, id: &str, limits: Limits, now: Instant) -> Result<(), Limited> {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let State { keys, swept } = &mut *guard;
        if keys.len() >= MAX_KEYS && !keys.contains_key(key) {
            if swept.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1)) {
                *swept = Some(now);
                keys.retain(|_, s| {
                    s.prune(now);
                    !s.idle()
                });
            }
            // Still full: more callers than any site has are active at once, which only a
            // flood of invented names makes. New ones wait; known ones go on.
            if keys.len() >= MAX_KEYS {
                return Err(Limited {
                    rule: Rule::MaxConcurrentCalls,
                    retry_after: Duration::from_secs(30),
                });
            }
        }
        let state = keys.entry(key.to_string()).or_default();
        state.prune(now);
        if state.calls.contains_key(id) {
            return Ok(());
        }
        if limits.max_concurrent > 0 && state.calls.len() >= limits.max_concurrent as usize {
            return Err(Limited {
                rule: Rule::MaxConcurrentCalls,
                retry_after: Duration::from_secs(30),
            });
        }
        if limits.max_per_minute > 0 && state.attempts.len() >= limits.max_per_minute as usize {
            let oldest = state.attempts.front().copied().unwrap_or(now);
            let wait = WINDOW.saturating_sub(now.duration_since(oldest));
            return Err(Limited {
                rule: Rule::MaxCallAttemptsPerMinute,
                retry_after: wait.max(Duration::from_secs(1)),
            });
        }
        state.calls.insert(id.to_string(), now);
        state.attempts.push_back(now);
        Ok(())
    }

    /// Ends call `id` of `key` (unknown ids are ignored: a refused call never began).
    pub fn end(&self, key: &str, id: &str) {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let keys = &mut guard.keys;
        if let Some(state) = keys.get_mut(key) {
            state.calls.remove(id);
            if state.idle() {
                keys.remove(key);
            }
        }
    }

    /// Calls of `key` up now.
    pub fn active(&self, key: &str) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys
            .get(key)
            .map_or(0, |s| s.calls.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        max_concurrent: 2,
        max_per_minute: 3,
    };

    #[test]
    fn concurrent_calls_are_limited_and_freed() {
        let l = Limiter::default();
        let t = Instant::now();
        l.begin("ext:1001", "a", L, t).unwrap();
        l.begin("ext:1001", "b", L, t).unwrap();
        // The same call again (a retransmission) is not a third.
        l.begin("ext:1001", "b", L, t).unwrap();
        let e = l.begin("ext:1001", "c", L, t).unwrap_err();
        assert_eq!(e.rule, Rule::MaxConcurrentCalls);
        // Another extension is not affected.
        l.begin("ext:1002", "c", L, t).unwrap();
        l.end("ext:1001", "a");
        l.begin("ext:1001", "c", L, t).unwrap();
        assert_eq!(l.active("ext:1001"), 2);
    }

    #[test]
    fn attempts_per_minute_are_limited_then_allowed_again() {
        let l = Limiter::default();
        let t = Instant::now();
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            l.begin("ami:d", id, L, t + Duration::from_secs(i as u64))
                .unwrap();
            l.end("ami:d", id);
        }
        let e = l
            .begin("ami:d", "d", L, t + Duration::from_secs(10))
            .unwrap_err();
        assert_eq!(e.rule, Rule::MaxCallAttemptsPerMinute);
        assert_eq!(e.retry_after, Duration::from_secs(50));
        // Refused attempts do not count: once the first leaves the window one more passes.
        l.begin("ami:d", "d", L, t + Duration::from_secs(60))
            .unwrap();
        assert!(l
            .begin("ami:d", "e", L, t + Duration::from_secs(60))
            .is_err());
    }

    #[test]
    fn a_flood_of_invented_callers_is_bounded() {
        let l = Limiter::default();
        let t = Instant::now();
        for i in 0..MAX_KEYS {
            l.begin(&format!("ext:{i}"), "c", L, t).unwrap();
        }
        // Full of active callers: a new one waits, a known one goes on.
        let e = l.begin("ext:new", "c", L, t).unwrap_err();
        assert_eq!(e.rule, Rule::MaxConcurrentCalls);
        l.begin("ext:7", "d", L, t).unwrap();
        // Once calls end and leave the window, room is made again.
        for i in 0..MAX_KEYS {
            l.end(&format!("ext:{i}"), "c");
        }
        l.begin("ext:new", "c", L, t + WINDOW).unwrap();
    }

    #[test]
    fn zero_is_unlimited_and_lost_calls_expire() {
        let l = Limiter::default();
        let t = Instant::now();
        let none = Limits {
            max_concurrent: 0,
            max_per_minute: 0,
        };
        for i in 0..1000 {
            l.begin("k", &i.to_string(), none, t).unwrap();
        }
        let one = Limits {
            max_concurrent: 1,
            max_per_minute: 0,
        };
        l.begin("j", "x", one, t).unwrap();
        assert!(l.begin("j", "y", one, t).is_err());
        l.begin("j", "y", one, t + MAX_CALL_AGE).unwrap();
    }
}
