#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]
//! Who a budget is charged to: the client's address, with IPv6 grouped by /64.
//!
//! One IPv4 address is one household, office or carrier NAT; one IPv6 host holds a whole /64 (SLAAC and privacy
//! addresses rotate inside it), so charging a single IPv6 address would let one machine present 2^64 identities.

use std::net::{IpAddr, Ipv6Addr};

mod net;
mod rate;
mod throttle;

pub use net::{IpNet, IpNetParseError};
pub use rate::{Bucket, Rate, RateLimiter, RetryAfter};
pub use throttle::ThrottledLog;

/// The unit a per-source budget is charged to: an IPv4 address, or the /64 an IPv6 address lies in. An
/// IPv4-mapped IPv6 address counts as its IPv4 address (a dual-stack socket sees IPv4 clients that way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source(IpAddr);

impl Source {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => Self(IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1)))),
            },
        }
    }

    /// The address (IPv4) or the network address of the /64 (IPv6).
    pub fn ip(&self) -> IpAddr {
        self.0
    }
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        Self::of(ip)
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_groups_by_64_and_mapped_ipv4_is_ipv4() {
        let a = Source::of("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = Source::of("2001:db8:1:2:ffff:1:2:3".parse().unwrap());
        let c = Source::of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        assert_eq!(
            Source::of("::ffff:192.0.2.7".parse().unwrap()),
            Source::of("192.0.2.7".parse().unwrap())
        );
        assert_ne!(
            Source::of("192.0.2.7".parse().unwrap()),
            Source::of("192.0.2.8".parse().unwrap())
        );
    }
}
