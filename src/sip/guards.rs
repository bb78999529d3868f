//! The edge's defences that do not depend on message content: scanner user agents, request
//! rates per address and per user, and bans by client address after failed authentications.
//!
//! Bans live in the store so that the CLI can list and lift them and a restart keeps them;
//! the daemon serves from an in-memory copy refreshed every few seconds.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::rate::Bucket;

/// Addresses and users tracked at most per table; past this the stale half is dropped (an
/// address-spraying attacker cannot grow memory without bound).
const MAX_TRACKED: usize = 65_536;

/// The key a ban is stored under: an IPv4 address as is, an IPv6 address by its /64 (one
/// host's whole allocation), as `prefix/64`.
pub fn ban_key(ip: IpAddr) -> String {
    match crate::net::ban_prefix(ip) {
        IpAddr::V6(prefix) => format!("{prefix}/64"),
        v4 => v4.to_string(),
    }
}

/// Normalises what an admin typed (`1.2.3.4`, `2001:db8::5`, `2001:db8::/64`) to a ban key.
pub fn parse_ban_key(text: &str) -> Option<String> {
    if let Some(prefix) = text.strip_suffix("/64") {
        return prefix
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(|a| ban_key(a.into()));
    }
    text.parse::<IpAddr>().ok().map(ban_key)
}

/// True when `user_agent` contains one of the (lower-case) scanner fragments.
pub fn is_scanner(user_agent: &str, fragments: &[String]) -> bool {
    let ua = user_agent.to_ascii_lowercase();
    fragments
        .iter()
        .any(|f| !f.is_empty() && ua.contains(&f.to_ascii_lowercase()))
}

/// Bans in force (key -> end, unix seconds), as last read from the store plus our own new ones.
#[derive(Debug, Default)]
pub struct Bans {
    active: RwLock<HashMap<String, i64>>,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
    /// Bans made here whose row may not be in the store yet: a refresh keeps them.
    unsaved: Mutex<HashMap<String, Instant>>,
}

/// How long a ban made here survives refreshes without its row (a slow or failed write).
const UNSAVED_GRACE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
pub struct BanRules {
    pub threshold: u32,
    pub window: Duration,
    pub duration: Duration,
}

impl Bans {
    /// Seconds left on the ban covering `ip`.
    pub fn banned(&self, ip: IpAddr, now_unix: i64) -> Option<i64> {
        let active = self.active.read().unwrap_or_else(|e| e.into_inner());
        let until = *active.get(&ban_key(ip))?;
        (until > now_unix).then_some(until - now_unix)
    }

    /// Replaces the copy with what the store holds (bans lifted by the CLI disappear), keeping
    /// our own recent bans whose row has not been written yet.
    pub fn replace(&self, rows: impl IntoIterator<Item = (String, i64)>, now: Instant) {
        let mut fresh: HashMap<String, i64> = rows.into_iter().collect();
        let mut unsaved = self.unsaved.lock().unwrap_or_else(|e| e.into_inner());
        unsaved.retain(|_, at| now.saturating_duration_since(*at) < UNSAVED_GRACE);
        let mut active = self.active.write().unwrap_or_else(|e| e.into_inner());
        for key in unsaved.keys() {
            if let Some(until) = active.get(key) {
                let slot = fresh.entry(key.clone()).or_insert(*until);
                *slot = (*slot).max(*until);
            }
        }
        *active = fresh;
    }

    /// The row of a ban made here is in the store now.
    pub fn saved(&self, key: &str) {
        self.unsaved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Bans `ip` now (a scanner); returns the key and end to persist.
    pub fn ban(&self, ip: IpAddr, duration: Duration, now_unix: i64) -> (String, i64) {
        let key = ban_key(ip);
        let until = now_unix + duration.as_secs() as i64;
        self.unsaved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), Instant::now());
        let mut active = self.active.write().unwrap_or_else(|e| e.into_inner());
        let slot = active.entry(key.clone()).or_insert(until);
        *slot = (*slot).max(until);
        (key, *slot)
    }

    /// Counts one failed authentication from `ip`; `Some((key, end))` when that crosses the
    /// threshold and the address is now banned.
    pub fn failure(
        &self,
        ip: IpAddr,
        rules: BanRules,
        now: Instant,
        now_unix: i64,
    ) -> Option<(String, i64)> {
        let key = ban_key(ip);
        let crossed = {
            let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            if failures.len() >= MAX_TRACKED && !failures.contains_key(&key) {
                failures.retain(|_, q| {
                    q.back()
                        .is_some_and(|t| now.duration_since(*t) < rules.window)
                });
                if failures.len() >= MAX_TRACKED {
                    failures.clear();
                }
            }
            let q = failures.entry(key.clone()).or_default();
            while q
                .front()
                .is_some_and(|t| now.duration_since(*t) >= rules.window)
            {
                q.pop_front();
            }
            q.push_back(now);
            let crossed = q.len() >= rules.threshold as usize;
            if crossed {
                failures.remove(&key);
            }
            crossed
        };
        crossed.then(|| self.ban(ip, rules.duration, now_unix))
    }
}

/// Token buckets per client address and per bound user.
#[derive(Debug, Default)]
pub struct Rates {
    /// By ban key: an IPv6 client gets one bucket for its whole /64, as it gets one ban.
    by_ip: Mutex<HashMap<String, Bucket>>,
    by_user: Mutex<HashMap<String, Bucket>>,
}

fn take<K: std::hash::Hash + Eq>(
    map: &Mutex<HashMap<K, Bucket>>,
    key: K,
    rate: u32,
    burst: u32,
    now: Instant,
) -> bool {
    if rate == 0 {
        return true;
    }
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    if map.len() >= MAX_TRACKED && !map.contains_key(&key) {
        // Buckets idle long enough to be full again carry no information.
        let refill = Duration::from_secs_f64(f64::from(burst) / f64::from(rate) + 1.0);
        map.retain(|_, b| b.idle_for(now) < refill);
        if map.len() >= MAX_TRACKED {
            map.clear();
        }
    }
    map.entry(key)
        .or_insert_with(|| Bucket::new(burst, now))
        .take(rate, burst, now)
}

impl Rates {
    pub fn allow_ip(&self, ip: IpAddr, rate: u32, burst: u32, now: Instant) -> bool {
        if rate == 0 {
            return true;
        }
        take(&self.by_ip, ban_key(ip), rate, burst, now)
    }

    pub fn allow_user(&self, user: &str, rate: u32, burst: u32, now: Instant) -> bool {
        if rate == 0 {
            return true;
        }
        take(&self.by_user, user.to_string(), rate, burst, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ban_keys_group_ipv6_by_64_and_unmap_v4() {
        assert_eq!(ban_key("192.0.2.7".parse().unwrap()), "192.0.2.7");
        assert_eq!(ban_key("::ffff:192.0.2.7".parse().unwrap()), "192.0.2.7");
        assert_eq!(
            ban_key("2001:db8:1:2:aaaa::1".parse().unwrap()),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            parse_ban_key("2001:db8:1:2::9"),
            Some("2001:db8:1:2::/64".into())
        );
        assert_eq!(
            parse_ban_key("2001:db8:1:2::/64"),
            Some("2001:db8:1:2::/64".into())
        );
        assert_eq!(parse_ban_key("10.0.0.1"), Some("10.0.0.1".into()));
        assert_eq!(parse_ban_key("10.0.0.1/24"), None);
        assert_eq!(parse_ban_key("host.example"), None);
    }

    #[test]
    fn scanners_are_matched_without_case() {
        let list: Vec<String> = crate::sip::config::DEFAULT_SCANNERS
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(is_scanner("friendly-scanner", &list));
        assert!(is_scanner("SIPVicious 0.3.3", &list));
        assert!(is_scanner("VaxSIPUserAgent/3.1", &list));
        assert!(!is_scanner("baresip v1.0.0 (x86_64/linux)", &list));
        assert!(!is_scanner("JsSIP 3.10.1", &list));
        assert!(!is_scanner("anything", &[String::new()]));
    }

    #[test]
    fn failures_ban_at_the_threshold_within_the_window() {
        let bans = Bans::default();
        let rules = BanRules {
            threshold: 3,
            window: Duration::from_secs(60),
            duration: Duration::from_secs(600),
        };
        let ip: IpAddr = "198.51.100.4".parse().unwrap();
        let t0 = Instant::now();
        assert!(bans.failure(ip, rules, t0, 1000).is_none());
        // The first failure has left the window: still two in it.
        assert!(bans
            .failure(ip, rules, t0 + Duration::from_secs(61), 1061)
            .is_none());
        assert!(bans
            .failure(ip, rules, t0 + Duration::from_secs(62), 1062)
            .is_none());
        assert_eq!(bans.banned(ip, 1062), None);
        let (key, until) = bans
            .failure(ip, rules, t0 + Duration::from_secs(63), 1063)
            .unwrap();
        assert_eq!((key.as_str(), until), ("198.51.100.4", 1663));
        assert_eq!(bans.banned(ip, 1063), Some(600));
        assert_eq!(bans.banned(ip, 1663), None);
        // Unsaved, the ban survives a refresh; saved and lifted in the store, it goes.
        // (The ban noted itself unsaved at the real now, which t0 approximates.)
        bans.replace(Vec::new(), t0 + Duration::from_secs(1));
        assert_eq!(bans.banned(ip, 1100), Some(563));
        bans.replace(Vec::new(), t0 + Duration::from_secs(120));
        assert_eq!(bans.banned(ip, 1100), None, "unsaved for too long: dropped");
        bans.ban(ip, Duration::from_secs(600), 1000);
        bans.saved("198.51.100.4");
        bans.replace(Vec::new(), t0 + Duration::from_secs(1));
        assert_eq!(bans.banned(ip, 1100), None);
    }

    #[test]
    fn rates_limit_per_address_and_user_and_zero_is_unlimited() {
        let rates = Rates::default();
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        let now = Instant::now();
        assert!(rates.allow_ip(ip, 1, 2, now));
        assert!(rates.allow_ip(ip, 1, 2, now));
        assert!(!rates.allow_ip(ip, 1, 2, now));
        assert!(rates.allow_ip(ip, 1, 2, now + Duration::from_secs(1)));
        // One bucket for a whole IPv6 /64.
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        assert!(rates.allow_ip(a, 1, 1, now));
        assert!(!rates.allow_ip(b, 1, 1, now));
        assert!(rates.allow_user("1001", 1, 1, now));
        assert!(!rates.allow_user("1001", 1, 1, now));
        assert!(rates.allow_user("1002", 1, 1, now));
        for _ in 0..1000 {
            assert!(rates.allow_ip(ip, 0, 1, now));
        }
    }
}
