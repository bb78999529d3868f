//! Address helpers shared by every layer that looks at a peer: the canonical form of an IP
//! (dual-stack sockets report IPv4 peers as IPv4-mapped IPv6), the key an address is banned
//! under (the AMI gateway and the SIP edge ban alike), and the per-request facts about the
//! connection that the HTTP accept loop hands to handlers.

use std::net::{IpAddr, SocketAddr};

/// IPv4 peers on a dual-stack socket arrive as `::ffff:a.b.c.d`; match them as IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The key an address is banned under: IPv4 as is (IPv4-mapped IPv6 included), IPv6 by the
/// start of its /64, since one host is handed a whole /64 and would otherwise step around a ban
/// by changing its interface id.
pub fn ban_prefix(ip: IpAddr) -> IpAddr {
    match canonical_ip(ip) {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

/// Per-request facts about the connection, inserted as a request extension.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: SocketAddr,
    /// Whether this request arrived over TLS (drives HSTS and the cookie's `Secure`).
    pub tls: bool,
}

/// Whether a listener stays on this host (IPv4-mapped loopback included).
pub fn is_loopback(addr: &SocketAddr) -> bool {
    match addr.ip() {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_ipv4_is_ipv4() {
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(canonical_ip(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        assert_eq!(canonical_ip(v6), v6);
        let v4: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(canonical_ip(v4), v4);
    }

    #[test]
    fn ipv6_is_banned_by_its_64_and_ipv4_as_is() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(ban_prefix(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(ban_prefix(ip("2001:db8:1:2::")), ip("2001:db8:1:2::"));
        assert_ne!(ban_prefix(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
        assert_eq!(ban_prefix(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(ban_prefix(ip("198.51.100.9")), ip("198.51.100.9"));
    }
}
