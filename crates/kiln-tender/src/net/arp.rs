//! The one frame kiln itself sends on a user-mode link: an ARP request
//! for the gateway, whose answer proves passt is up (its ports are bound
//! before it reads its socket). Pure.

use std::net::Ipv4Addr;

const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];
/// Ethernet header + ARP for IPv4 over Ethernet.
pub const LEN: usize = 14 + 28;

/// An ARP request "who has `target`? tell `ip`" from `mac`, broadcast.
pub fn request(mac: [u8; 6], ip: Ipv4Addr, target: Ipv4Addr) -> [u8; LEN] {
    let mut f = [0u8; LEN];
    f[0..6].fill(0xff);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETHERTYPE_ARP);
    // Hardware Ethernet, protocol IPv4, sizes 6 and 4, operation request.
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    // Target hardware address unknown (zero).
    f[38..42].copy_from_slice(&target.octets());
    f
}

/// Whether `frame` answers [`request`]: an ARP reply to `mac` saying
/// where `target` is.
pub fn is_reply(frame: &[u8], mac: [u8; 6], target: Ipv4Addr) -> bool {
    frame.len() >= LEN
        && frame[0..6] == mac
        && frame[12..14] == ETHERTYPE_ARP
        && frame[14..22] == [0, 1, 0x08, 0x00, 6, 4, 0, 2]
        && frame[28..32] == target.octets()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_reply() {
        let mac = [2, 0x6b, 1, 2, 3, 4];
        let gw = Ipv4Addr::new(10, 0, 2, 2);
        let req = request(mac, Ipv4Addr::new(10, 0, 2, 15), gw);
        assert_eq!(&req[12..14], &[8, 6]);
        assert_eq!(&req[38..42], &[10, 0, 2, 2]);
        assert!(!is_reply(&req, mac, gw), "a request is no reply");
        // The reply a peer builds: swap addresses, operation 2.
        let mut rep = [0u8; 60];
        rep[0..6].copy_from_slice(&mac);
        rep[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        rep[12..14].copy_from_slice(&[8, 6]);
        rep[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
        rep[22..28].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        rep[28..32].copy_from_slice(&gw.octets());
        assert!(is_reply(&rep, mac, gw));
        assert!(!is_reply(&rep[..41], mac, gw));
        assert!(!is_reply(&rep, [2, 0, 0, 0, 0, 9], gw));
        assert!(!is_reply(&rep, mac, Ipv4Addr::new(10, 0, 2, 3)));
    }
}
