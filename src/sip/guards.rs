//! The edge's defences that do not depend on message content: scanner user agents and request
//! rates per address and per user. Its bans (failed authentications, scanners) go to the one
//! ban list, `crate::bans`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::rate::Bucket;

/// Addresses and users tracked at most per table; past this the stale half is dropped (an
/// address-spraying attacker cannot grow memory without bound).
const MAX_TRACKED: usize = 65_536;

/// The key a rate is kept under: an IPv4 address as is, an IPv6 address by its /64 (one
/// host's whole allocation), as `prefix/64`.
pub fn ban_key(ip: IpAddr) -> String {
    match crate::net::ban_prefix(ip) {
        IpAddr::V6(prefix) => format!("{prefix}/64"),
        v4 => v4.to_string(),
    }
}

/// True when `user_agent` contains one of the (lower-case) scanner fragments.
pub fn is_scanner(user_agent: &str, fragments: &[String]) -> bool {
    let ua = user_agent.to_ascii_lowercase();
    fragments
        .iter()
        .any(|f| !f.is_empty() && ua.contains(&f.to_ascii_lowercase()))
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
