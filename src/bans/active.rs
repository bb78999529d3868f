//! The in-memory copy of the bans in force, consulted on every new connection: one hash map
//! per prefix length present, so a lookup is a handful of hash probes however many bans and
//! feed prefixes there are.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

use super::BanKey;

/// Bans in force: the key's network address, by (family, prefix length), to the ban's end.
#[derive(Debug, Default, Clone)]
pub struct Active {
    v4: BTreeMap<u8, HashMap<u32, i64>>,
    v6: BTreeMap<u8, HashMap<u128, i64>>,
    len: usize,
}

fn mask4(bits: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        bits & (u32::MAX << (32 - u32::from(len)))
    }
}

fn mask6(bits: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        bits & (u128::MAX << (128 - u32::from(len)))
    }
}

impl Active {
    /// Records a ban; a key already present keeps the later end.
    pub fn insert(&mut self, key: BanKey, until: i64) {
        let slot = match key.net() {
            IpNet::V4(n) => self
                .v4
                .entry(n.prefix_len())
                .or_default()
                .entry(u32::from(n.network())),
            IpNet::V6(n) => {
                let map = self.v6.entry(n.prefix_len()).or_default();
                match map.entry(u128::from(n.network())) {
                    std::collections::hash_map::Entry::Occupied(mut o) => {
                        let v = o.get_mut();
                        *v = (*v).max(until);
                        return;
                    }
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(until);
                        self.len += 1;
                        return;
                    }
                }
            }
        };
        match slot {
            std::collections::hash_map::Entry::Occupied(mut o) => {
                let v = o.get_mut();
                *v = (*v).max(until);
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(until);
                self.len += 1;
            }
        }
    }

    /// The latest end among the bans covering `ip` that are in force at `now`.
    pub fn lookup(&self, ip: IpAddr, now: i64) -> Option<i64> {
        let best = match crate::net::canonical_ip(ip) {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                self.v4
                    .iter()
                    .filter_map(|(len, map)| map.get(&mask4(bits, *len)).copied())
                    .max()
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                self.v6
                    .iter()
                    .filter_map(|(len, map)| map.get(&mask6(bits, *len)).copied())
                    .max()
            }
        }?;
        (best > now).then_some(best)
    }

    /// Whether a ban is recorded on exactly this key (in force at `now`).
    pub fn has(&self, key: &BanKey, now: i64) -> bool {
        let end = match key.net() {
            IpNet::V4(n) => self
                .v4
                .get(&n.prefix_len())
                .and_then(|m| m.get(&u32::from(n.network()))),
            IpNet::V6(n) => self
                .v6
                .get(&n.prefix_len())
                .and_then(|m| m.get(&u128::from(n.network()))),
        };
        end.is_some_and(|e| *e > now)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> BanKey {
        BanKey::parse(s).unwrap()
    }

    #[test]
    fn hosts_prefixes_and_ends() {
        let mut a = Active::default();
        a.insert(k("192.0.2.66"), 100);
        a.insert(k("198.51.100.0/24"), 50);
        a.insert(k("2001:db8:1::9"), 80);
        a.insert(k("192.0.2.66"), 90);
        assert_eq!(a.len(), 3);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(a.lookup(ip("192.0.2.66"), 10), Some(100));
        assert_eq!(a.lookup(ip("::ffff:192.0.2.66"), 10), Some(100));
        assert_eq!(a.lookup(ip("192.0.2.67"), 10), None);
        assert_eq!(a.lookup(ip("198.51.100.200"), 10), Some(50));
        assert_eq!(a.lookup(ip("198.51.100.200"), 50), None, "ended");
        assert_eq!(a.lookup(ip("2001:db8:1::ffff:1"), 10), Some(80));
        assert_eq!(a.lookup(ip("2001:db8:2::1"), 10), None);
        assert!(a.has(&k("198.51.100.0/24"), 10));
        assert!(!a.has(&k("198.51.100.0/25"), 10));
    }
}
