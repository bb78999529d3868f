//! The client's IP for history and throttling: the peer address, unless the peer is one of
//! `[http] trusted_proxies`; then the right-most `X-Forwarded-For` entry that is not a trusted
//! proxy. Entries left of that are client-controlled and ignored.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::net::canonical_ip;

fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    proxies.iter().any(|n| n.contains(&ip))
}

/// Parses one X-Forwarded-For element: an IP, `a.b.c.d:port` or `[v6]:port`.
fn parse_hop(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// `forwarded_for` are the X-Forwarded-For header values in the order received.
pub fn client_ip<'a>(
    peer: IpAddr,
    forwarded_for: impl Iterator<Item = &'a str>,
    proxies: &[IpNet],
) -> IpAddr {
    let peer = canonical_ip(peer);
    if !trusted(peer, proxies) {
        return peer;
    }
    let hops: Vec<&str> = forwarded_for.flat_map(|v| v.split(',')).collect();
    let mut nearest = peer;
    for hop in hops.iter().rev() {
        match parse_hop(hop).map(canonical_ip) {
            // Garbage in the chain: trust nothing beyond the last proxy we know.
            None => return nearest,
            Some(ip) if trusted(ip, proxies) => nearest = ip,
            Some(ip) => return ip,
        }
    }
    nearest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn untrusted_peers_cannot_claim_another_address() {
        let got = client_ip(
            ip("203.0.113.9"),
            ["10.0.0.1"].into_iter(),
            &nets(&["127.0.0.1/32"]),
        );
        assert_eq!(got, ip("203.0.113.9"));
    }

    #[test]
    fn trusted_proxy_yields_right_most_untrusted_hop() {
        let proxies = nets(&["127.0.0.1/32", "10.0.0.0/8"]);
        let got = client_ip(
            ip("127.0.0.1"),
            ["6.6.6.6, 198.51.100.7, 10.1.2.3"].into_iter(),
            &proxies,
        );
        assert_eq!(
            got,
            ip("198.51.100.7"),
            "the spoofed left-most entry is ignored"
        );
        let got = client_ip(
            ip("127.0.0.1"),
            ["6.6.6.6", "198.51.100.7:4431"].into_iter(),
            &proxies,
        );
        assert_eq!(
            got,
            ip("198.51.100.7"),
            "several header lines form one list"
        );
        let got = client_ip(
            ip("::ffff:127.0.0.1"),
            ["[2001:db8::1]:443"].into_iter(),
            &proxies,
        );
        assert_eq!(got, ip("2001:db8::1"));
        let got = client_ip(ip("127.0.0.1"), std::iter::empty(), &proxies);
        assert_eq!(got, ip("127.0.0.1"));
        let got = client_ip(
            ip("127.0.0.1"),
            ["1.2.3.4, garbage, 10.0.0.5"].into_iter(),
            &proxies,
        );
        assert_eq!(
            got,
            ip("10.0.0.5"),
            "garbage stops the walk at the last trusted hop"
        );
    }
}
