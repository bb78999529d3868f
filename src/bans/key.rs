//! What a ban covers: one IPv4 address, one IPv6 /64 (a host is handed a whole /64 and would
//! otherwise step around a ban by changing its interface id), or a wider prefix that an admin
//! or a feed names. The text form is the one `pbxguard ban list` prints and the store keeps:
//! `192.0.2.66`, `198.51.100.0/24`, `2001:db8:1::/64`.

use std::fmt;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// An IPv6 ban never covers less than a /64.
pub const V6_MIN_PREFIX: u8 = 64;
/// Wider prefixes than these are refused: they would cut off a continent by mistake.
pub const V4_MAX_WIDTH: u8 = 8;
pub const V6_MAX_WIDTH: u8 = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("{0:?} is not an IP address or prefix (ADDRESS or ADDRESS/LEN)")]
    Syntax(String),
    #[error("{0:?} has host bits set after the prefix length (did you mean {1}?)")]
    HostBits(String, String),
    #[error("{0:?} is wider than a /{1}: refused, it would ban a large part of the Internet")]
    TooWide(String, u8),
}

/// A normalised ban target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BanKey(IpNet);

impl BanKey {
    /// The key a misbehaving peer is banned under.
    pub fn host(ip: IpAddr) -> BanKey {
        match crate::net::canonical_ip(ip) {
            IpAddr::V4(v4) => BanKey(IpNet::V4(Ipv4Net::from(v4))),
            IpAddr::V6(v6) => BanKey(IpNet::V6(
                Ipv6Net::new(v6, V6_MIN_PREFIX)
                    .map(|n| n.trunc())
                    .unwrap_or_else(|_| Ipv6Net::from(v6)),
            )),
        }
    }

    /// What an admin or a feed wrote: `ADDRESS` or `ADDRESS/LEN`. IPv6 prefixes longer than
    /// /64 widen to their /64; IPv4-mapped IPv6 is IPv4. Host bits after the length are an
    /// error (a typo in `192.0.2.7/24` must not silently ban the whole /24).
    pub fn parse(text: &str) -> Result<BanKey, KeyError> {
        let t = text.trim();
        if t.is_empty() || t.len() > 64 {
            return Err(KeyError::Syntax(text.to_string()));
        }
        let Some((addr, len)) = t.split_once('/') else {
            return t
                .parse::<IpAddr>()
                .map(BanKey::host)
                .map_err(|_| KeyError::Syntax(text.to_string()));
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| KeyError::Syntax(text.to_string()))?;
        if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(KeyError::Syntax(text.to_string()));
        }
        let len: u8 = len
            .parse()
            .map_err(|_| KeyError::Syntax(text.to_string()))?;
        let net = match crate::net::canonical_ip(addr) {
            IpAddr::V4(v4) if addr.is_ipv6() => {
                // ::ffff:a.b.c.d/LEN: the mapped prefix length counts the 96 mapping bits.
                let l = len
                    .checked_sub(96)
                    .ok_or_else(|| KeyError::Syntax(text.to_string()))?;
                IpNet::V4(Ipv4Net::new(v4, l).map_err(|_| KeyError::Syntax(text.to_string()))?)
            }
            IpAddr::V4(v4) => {
                IpNet::V4(Ipv4Net::new(v4, len).map_err(|_| KeyError::Syntax(text.to_string()))?)
            }
            IpAddr::V6(v6) => {
                IpNet::V6(Ipv6Net::new(v6, len).map_err(|_| KeyError::Syntax(text.to_string()))?)
            }
        };
        let key = match net {
            IpNet::V6(n) if n.prefix_len() > V6_MIN_PREFIX => BanKey::host(IpAddr::V6(n.addr())),
            n => {
                if n.trunc() != n {
                    return Err(KeyError::HostBits(text.to_string(), n.trunc().to_string()));
                }
                BanKey(n)
            }
        };
        let (width, min) = match key.0 {
            IpNet::V4(n) => (n.prefix_len(), V4_MAX_WIDTH),
            IpNet::V6(n) => (n.prefix_len(), V6_MAX_WIDTH),
        };
        if width < min {
            return Err(KeyError::TooWide(text.to_string(), min));
        }
        Ok(key)
    }

    pub fn net(&self) -> IpNet {
        self.0
    }

    /// Whether this ban covers `ip`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&crate::net::canonical_ip(ip))
    }

    /// Whether the two share any address.
    pub fn overlaps(&self, net: &IpNet) -> bool {
        self.0.contains(net) || net.contains(&self.0)
    }

    pub fn is_v4(&self) -> bool {
        matches!(self.0, IpNet::V4(_))
    }
}

impl fmt::Display for BanKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpNet::V4(n) if n.prefix_len() == 32 => write!(f, "{}", n.addr()),
            n => write!(f, "{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> String {
        BanKey::parse(s).unwrap().to_string()
    }

    #[test]
    fn hosts_and_prefixes_normalise() {
        assert_eq!(key("192.0.2.66"), "192.0.2.66");
        assert_eq!(key("192.0.2.66/32"), "192.0.2.66");
        assert_eq!(key("198.51.100.0/24"), "198.51.100.0/24");
        assert_eq!(key("2001:db8:1::5"), "2001:db8:1::/64");
        assert_eq!(key("2001:db8:1:0:1::/80"), "2001:db8:1::/64");
        assert_eq!(key("2001:db8::/48"), "2001:db8::/48");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("::ffff:198.51.100.0/120"), "198.51.100.0/24");
        assert_eq!(
            BanKey::host("2001:db8:1:2:aaaa::1".parse().unwrap()).to_string(),
            "2001:db8:1:2::/64"
        );
    }

    #[test]
    fn bad_text_is_refused_with_the_reason() {
        for bad in [
            "",
            "banana",
            "192.0.2.300",
            "192.0.2.0/33",
            "192.0.2.0/",
            "192.0.2.0/+8",
            "2001:db8::/129",
            "192.0.2.0/24/1",
            "[2001:db8::1]",
            "192.0.2.1 ",
            "1.2.3",
        ] {
            if bad == "192.0.2.1 " {
                assert!(BanKey::parse(bad).is_ok(), "surrounding space is trimmed");
                continue;
            }
            assert!(
                matches!(BanKey::parse(bad), Err(KeyError::Syntax(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            BanKey::parse("192.0.2.7/24").unwrap_err().to_string(),
            "\"192.0.2.7/24\" has host bits set after the prefix length (did you mean 192.0.2.0/24?)"
        );
        assert!(matches!(
            BanKey::parse("0.0.0.0/0"),
            Err(KeyError::TooWide(_, 8))
        ));
        assert!(matches!(
            BanKey::parse("2000::/3"),
            Err(KeyError::TooWide(_, 16))
        ));
        assert!(BanKey::parse("10.0.0.0/8").is_ok());
    }

    #[test]
    fn containment() {
        let k = BanKey::parse("2001:db8:1::/64").unwrap();
        assert!(k.contains("2001:db8:1::ffff".parse().unwrap()));
        assert!(!k.contains("2001:db8:2::1".parse().unwrap()));
        let v4 = BanKey::parse("198.51.100.0/24").unwrap();
        assert!(v4.contains("::ffff:198.51.100.9".parse().unwrap()));
        assert!(v4.overlaps(&"198.51.100.128/25".parse().unwrap()));
        assert!(v4.overlaps(&"198.51.0.0/16".parse().unwrap()));
        assert!(!v4.overlaps(&"192.0.2.0/24".parse().unwrap()));
    }
}
