//! Which peer addresses a relay may talk to.
//!
//! The default refuses everything that is not a public unicast address, because a TURN server that relays into its
//! own network is an SSRF gateway (coturn CVE-2020-26262). IPv6 forms that embed an IPv4 address (IPv4-mapped,
//! IPv4-compatible, 6to4, NAT64, Teredo) are judged by the address they embed, so `::ffff:127.0.0.1` is loopback.

use std::net::{IpAddr, Ipv4Addr};

pub use source::{IpNet, IpNetParseError};

/// Why a peer address was refused, for logs and for the 403 reason phrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    DenyList,
    /// A non-public range, named (e.g. "loopback").
    Reserved(&'static str),
    ServerAddress,
}

/// The relay's peer policy: explicit allow list, explicit deny list and the built-in reserved ranges. The server's
/// own addresses are judged live by [`crate::OwnAddresses`] (only a live relay allocation of this server passes).
#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    /// Checked first; a match is allowed whatever else says (e.g. `127.0.0.0/8` in a lab).
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

impl PeerPolicy {
    /// Judges a peer by its IP alone (permissions are per IP, RFC 8656 §9).
    pub fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        let canonical = embedded_ipv4(ip).map(IpAddr::V4).unwrap_or(ip);
        if self.is_allowed_explicitly(ip) {
            return Ok(());
        }
        if self.deny.iter().any(|n| n.contains(ip) || n.contains(canonical)) {
            return Err(Refusal::DenyList);
        }
        if let Some(name) = reserved_range(ip).or_else(|| reserved_range(canonical)) {
            return Err(Refusal::Reserved(name));
        }
        Ok(())
    }

    /// Whether the allow list names `ip` (or the IPv4 address it embeds): then nothing else is checked, not even
    /// the server's own addresses.
    pub fn is_allowed_explicitly(&self, ip: IpAddr) -> bool {
        let canonical = embedded_ipv4(ip).map(IpAddr::V4).unwrap_or(ip);
        self.allow.iter().any(|n| n.contains(ip) || n.contains(canonical))
    }
}

/// The IPv4 address an IPv6 address stands for, if it is one of the embedding forms.
pub(crate) fn embedded_ipv4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    let bits = u128::from(v6);
    let low32 = Ipv4Addr::from(bits as u32);
    let seg = v6.segments();
    if bits >> 32 == 0xffff {
        return Some(low32); // ::ffff:a.b.c.d, IPv4-mapped (RFC 4291 §2.5.5.2)
    }
    if bits >> 32 == 0 && bits > 1 {
        return Some(low32); // ::a.b.c.d, IPv4-compatible (deprecated, RFC 4291 §2.5.5.1)
    }
    if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
        return Some(low32); // 64:ff9b::/96, NAT64 well-known prefix (RFC 6052)
    }
    if seg[0] == 0x2002 {
        return Some(Ipv4Addr::from(((u32::from(seg[1])) << 16) | u32::from(seg[2])));
        // 6to4 (RFC 3056)
    }
    if seg[0] == 0x2001 && seg[1] == 0 {
        return Some(Ipv4Addr::from(!(bits as u32))); // Teredo client address, obfuscated (RFC 4380 §4)
    }
    None
}

/// Names the reserved range `ip` falls in, if any.
fn reserved_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            Some(match o {
                [0, ..] => "this-network 0.0.0.0/8",
                [10, ..] => "private 10.0.0.0/8",
                [100, b, ..] if (64..128).contains(&b) => "shared CGNAT 100.64.0.0/10",
                [127, ..] => "loopback 127.0.0.0/8",
                [169, 254, ..] => "link-local 169.254.0.0/16 (cloud metadata)",
                [172, b, ..] if (16..32).contains(&b) => "private 172.16.0.0/12",
                [192, 0, 0, _] => "IETF protocol assignments 192.0.0.0/24",
                [192, 168, ..] => "private 192.168.0.0/16",
                [198, b, ..] if b == 18 || b == 19 => "benchmarking 198.18.0.0/15",
                [a, ..] if (224..240).contains(&a) => "multicast 224.0.0.0/4",
                [255, 255, 255, 255] => "broadcast",
                [a, ..] if a >= 240 => "reserved 240.0.0.0/4",
                _ => return None,
            })
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            let bits = u128::from(v6);
            Some(match seg {
                _ if bits == 0 => "unspecified ::",
                _ if bits == 1 => "loopback ::1",
                [s, ..] if s & 0xfe00 == 0xfc00 => "unique-local fc00::/7",
                [s, ..] if s & 0xffc0 == 0xfe80 => "link-local fe80::/10",
                [s, ..] if s & 0xffc0 == 0xfec0 => "site-local fec0::/10",
                [s, ..] if s & 0xff00 == 0xff00 => "multicast ff00::/8",
                [0x64, 0xff9b, 1, ..] => "local-use NAT64 64:ff9b:1::/48",
                [0x100, 0, 0, 0, ..] => "discard-only 100::/64",
                _ => return None,
            })
        }
    }
}

/// Whether `ip` is a public unicast address under the default policy (used to pick advertised addresses).
pub fn is_public(ip: IpAddr) -> bool {
    PeerPolicy::default().check(ip).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(s: &str) -> bool {
        PeerPolicy::default().check(s.parse().unwrap()).is_err()
    }

    #[test]
    fn default_policy_refuses_every_non_public_form() {
        for s in [
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "127.255.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "192.0.0.8",
            "198.18.0.1",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "::ffff:0.0.0.0",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2002:a00:1::",
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
            "100::1",
        ] {
            assert!(refused(s), "{s} should be refused");
        }
    }

    #[test]
    fn default_policy_allows_public_and_documentation_addresses() {
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "203.0.113.5",
            "198.51.100.7",
            "2001:db8::1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!refused(s), "{s} should be allowed");
        }
    }

    #[test]
    fn allow_list_overrides_and_deny_list_adds() {
        let policy = PeerPolicy {
            allow: vec!["127.0.0.0/8".parse().unwrap()],
            deny: vec!["203.0.113.0/24".parse().unwrap()],
        };
        assert!(policy.check("127.0.0.1".parse().unwrap()).is_ok());
        assert!(policy.check("::ffff:127.0.0.1".parse().unwrap()).is_ok());
        assert_eq!(policy.check("203.0.113.9".parse().unwrap()), Err(Refusal::DenyList));
        assert!(policy.check("10.0.0.1".parse().unwrap()).is_err());
        assert!(policy.is_allowed_explicitly("::ffff:127.0.0.9".parse().unwrap()));
        assert!(!policy.is_allowed_explicitly("198.51.100.1".parse().unwrap()));
    }

    #[test]
    fn parses_blocks() {
        assert!("10.0.0.0/8"
            .parse::<IpNet>()
            .unwrap()
            .contains("10.9.9.9".parse().unwrap()));
        assert!("::/0"
            .parse::<IpNet>()
            .unwrap()
            .contains("2001:db8::1".parse().unwrap()));
        assert!("1.2.3.4".parse::<IpNet>().unwrap().contains("1.2.3.4".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("nonsense".parse::<IpNet>().is_err());
    }
}
