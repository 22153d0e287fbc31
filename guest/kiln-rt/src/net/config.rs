//! Interface addresses from the tender's [`NetConfig`]: checked once here,
//! so the stack only ever sees values smoltcp accepts (a prefix over 32
//! would make smoltcp panic; a multicast MAC would too).

use core::net::{Ipv4Addr, Ipv6Addr};
use kiln_abi::{net_flags, NetConfig};

/// The addresses an interface starts with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct IfaceConfig {
    /// Configure IPv4 by DHCP.
    pub(crate) dhcp4: bool,
    /// Static IPv4 address and prefix length.
    pub(crate) ipv4: Option<(Ipv4Addr, u8)>,
    /// IPv4 default gateway.
    pub(crate) ipv4_gateway: Option<Ipv4Addr>,
    /// Static IPv6 address and prefix length.
    pub(crate) ipv6: Option<(Ipv6Addr, u8)>,
    /// IPv6 default gateway.
    pub(crate) ipv6_gateway: Option<Ipv6Addr>,
}

impl IfaceConfig {
    /// What the tender asked for, with anything unusable left out (and
    /// logged).
    pub(crate) fn from_abi(cfg: &NetConfig) -> Self {
        let mut out = IfaceConfig {
            dhcp4: cfg.flags & net_flags::DHCP4 != 0,
            ..IfaceConfig::default()
        };
        let v4 = Ipv4Addr::from(cfg.ipv4);
        if !v4.is_unspecified() {
            if cfg.ipv4_prefix <= 32 && unicast_v4(v4) {
                out.ipv4 = Some((v4, cfg.ipv4_prefix));
            } else {
                log::warn!("net: ignoring static IPv4 {v4}/{}", cfg.ipv4_prefix);
            }
        }
        let gw4 = Ipv4Addr::from(cfg.ipv4_gateway);
        if !gw4.is_unspecified() && unicast_v4(gw4) {
            out.ipv4_gateway = Some(gw4);
        }
        let v6 = Ipv6Addr::from(cfg.ipv6);
        if !v6.is_unspecified() {
            if cfg.ipv6_prefix <= 128 && !v6.is_multicast() && !v6.is_loopback() {
                out.ipv6 = Some((v6, cfg.ipv6_prefix));
            } else {
                log::warn!("net: ignoring static IPv6 {v6}/{}", cfg.ipv6_prefix);
            }
        }
        let gw6 = Ipv6Addr::from(cfg.ipv6_gateway);
        if !gw6.is_unspecified() && !gw6.is_multicast() {
            out.ipv6_gateway = Some(gw6);
        }
        out
    }
}

/// Whether `a` can be an interface's (or a gateway's) own address.
fn unicast_v4(a: Ipv4Addr) -> bool {
    !a.is_multicast() && !a.is_broadcast() && !a.is_unspecified()
}

/// Whether `mac` is usable as the interface's address (unicast, not zero).
pub(crate) fn valid_mac(mac: [u8; 6]) -> bool {
    mac[0] & 1 == 0 && mac != [0; 6]
}

/// A locally administered unicast MAC made from `seed`, for a device whose
/// MAC is unusable.
pub(crate) fn fallback_mac(seed: u64) -> [u8; 6] {
    let b = seed.to_le_bytes();
    [(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

/// The IPv6 link-local address of `mac` (fe80::/64 with the modified EUI-64
/// interface identifier of RFC 4291, appendix A).
pub(crate) fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_flips_the_universal_bit_and_inserts_fffe() {
        let ll = link_local([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
        assert_eq!(ll, "fe80::5054:ff:fe12:3456".parse::<Ipv6Addr>().unwrap());
    }

    #[test]
    fn static_config_is_taken_and_bad_values_dropped() {
        let mut cfg = NetConfig {
            ipv4: [10, 0, 0, 2],
            ipv4_prefix: 24,
            ipv4_gateway: [10, 0, 0, 1],
            ..NetConfig::default()
        };
        cfg.ipv6[0] = 0xfd;
        cfg.ipv6[15] = 2;
        cfg.ipv6_prefix = 64;
        let c = IfaceConfig::from_abi(&cfg);
        assert!(!c.dhcp4);
        assert_eq!(c.ipv4, Some((Ipv4Addr::new(10, 0, 0, 2), 24)));
        assert_eq!(c.ipv4_gateway, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(c.ipv6.map(|(_, p)| p), Some(64));
        assert_eq!(c.ipv6_gateway, None);

        cfg.ipv4_prefix = 33;
        cfg.ipv6_prefix = 129;
        cfg.ipv4_gateway = [255; 4];
        let c = IfaceConfig::from_abi(&cfg);
        assert_eq!((c.ipv4, c.ipv6, c.ipv4_gateway), (None, None, None));

        let c = IfaceConfig::from_abi(&NetConfig {
            flags: net_flags::DHCP4,
            ipv4: [224, 0, 0, 1],
            ipv4_prefix: 4,
            ..NetConfig::default()
        });
        assert!(c.dhcp4);
        assert_eq!(c.ipv4, None);
    }

    #[test]
    fn macs_are_checked_and_replaced() {
        assert!(valid_mac([0x52, 0x54, 0, 0, 0, 1]));
        assert!(!valid_mac([0; 6]));
        assert!(!valid_mac([0x01, 0, 0x5e, 0, 0, 1]));
        for seed in [0, 1, u64::MAX, 0x0123_4567_89ab_cdef] {
            assert!(valid_mac(fallback_mac(seed)));
            assert_eq!(fallback_mac(seed)[0] & 0x03, 0x02);
        }
    }
}
