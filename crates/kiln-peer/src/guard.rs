//! What the link refuses before smoltcp sees it.
//!
//! smoltcp 0.14.0 panics (`wire/tcp.rs:73`, "attempt to subtract sequence
//! numbers with underflow", reached from `socket/tcp.rs:1783`) when a
//! socket in SYN-SENT takes a SYN or SYN-ACK *before its own SYN has been
//! sent*: the socket then records the peer's sequence number as the last
//! acknowledged one with a receive window of zero, so its window ends one
//! byte before it starts, and a later segment 2^31 away from the window
//! passes the acceptability test and underflows the offset arithmetic.
//! A guest can arrange exactly that: it answers the link's ARP request and,
//! in the same breath, sends a SYN (simultaneous open) or a SYN-ACK, then
//! the far segment. (`../shared/repro/smoltcp-0.14-peer-panic.frames`.)
//!
//! The link only ever opens connections, so it never needs what starts
//! that path. The guard drops, before smoltcp parses anything:
//! - a TCP segment with SYN and without ACK (a simultaneous open or a
//!   connection request: nothing listens here);
//! - a SYN-ACK for a local port whose SYN has not left yet (no honest guest
//!   can answer a SYN it has not seen);
//! - any IPv4 fragment (the link's MTU is fixed and both ends respect it;
//!   smoltcp as built here drops fragments anyway, and the guard must never
//!   look at a different TCP header than smoltcp would).
//!
//! Once a connection's SYN has gone out, smoltcp's window is the one it
//! advertised and the defect cannot be reached. The guard learns that from
//! the frames the link sends ([`Guard::sent`]), which is exact: smoltcp
//! sends a connection's first SYN only from `poll_egress`, after ARP.
//!
//! Parsing uses smoltcp's own checked wire types, the same way its ingress
//! does, so the guard and the stack always agree on which bytes are the TCP
//! header. Frames the guard cannot parse are passed on: smoltcp drops them.

use smoltcp::wire::{EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, TcpPacket};

/// Why a frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// SYN without ACK: nothing listens on the host end of a link.
    Syn,
    /// SYN-ACK for a connection whose SYN has not been sent.
    EarlySynAck,
    /// An IPv4 fragment.
    Fragment,
}

/// The TCP flags and ports the guard looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    src_port: u16,
    dst_port: u16,
    syn: bool,
    ack: bool,
}

/// What a frame is to the guard.
enum Parsed {
    /// Not IPv4, or not parseable: smoltcp decides.
    Other,
    /// An IPv4 fragment.
    Fragment,
    /// A TCP segment in one IPv4 packet.
    Tcp(Segment),
}

fn parse(frame: &[u8]) -> Parsed {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return Parsed::Other;
    };
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return Parsed::Other;
    }
    let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
        return Parsed::Other;
    };
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Parsed::Fragment;
    }
    if ip.next_header() != IpProtocol::Tcp {
        return Parsed::Other;
    }
    let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
        return Parsed::Other;
    };
    Parsed::Tcp(Segment {
        src_port: tcp.src_port(),
        dst_port: tcp.dst_port(),
        syn: tcp.syn(),
        ack: tcp.ack(),
    })
}

/// The guard of one link: the local ports of connections whose SYN is
/// still to be sent (usually none, at most a few: connections wait here
/// only until the guest answers ARP).
#[derive(Debug, Default)]
pub(crate) struct Guard {
    unsent_syn: Vec<u16>,
}

impl Guard {
    /// A connection from local `port` was just opened; its SYN is not out.
    pub(crate) fn opened(&mut self, port: u16) {
        self.unsent_syn.push(port);
    }

    /// The connection from `port` is gone.
    pub(crate) fn closed(&mut self, port: u16) {
        self.unsent_syn.retain(|&p| p != port);
        if self.unsent_syn.is_empty() {
            self.unsent_syn = Vec::new();
        }
    }

    /// Whether any connection still waits for its SYN to leave (when none
    /// does, [`Guard::sent`] need not look at frames).
    pub(crate) fn watching(&self) -> bool {
        !self.unsent_syn.is_empty()
    }

    /// A frame the link sent to the guest.
    pub(crate) fn sent(&mut self, frame: &[u8]) {
        if !self.watching() {
            return;
        }
        if let Parsed::Tcp(s) = parse(frame) {
            if s.syn && !s.ack {
                self.closed(s.src_port);
            }
        }
    }

    /// Whether smoltcp may see this frame from the guest.
    pub(crate) fn check(&self, frame: &[u8]) -> Result<(), Refusal> {
        match parse(frame) {
            Parsed::Other => Ok(()),
            Parsed::Fragment => Err(Refusal::Fragment),
            Parsed::Tcp(s) if s.syn && !s.ack => Err(Refusal::Syn),
            Parsed::Tcp(s) if s.syn && self.unsent_syn.contains(&s.dst_port) => {
                Err(Refusal::EarlySynAck)
            }
            Parsed::Tcp(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetAddress, EthernetRepr, Ipv4Address, Ipv4Repr, TcpControl, TcpRepr, TcpSeqNumber,
    };

    const HOST: Ipv4Address = Ipv4Address::new(10, 0, 0, 1);
    const GUEST: Ipv4Address = Ipv4Address::new(10, 0, 0, 2);

    /// A frame from the guest's port 80 to `dst_port`.
    fn segment(dst_port: u16, control: TcpControl, ack: bool) -> Vec<u8> {
        let tcp = TcpRepr {
            src_port: 80,
            dst_port,
            control,
            seq_number: TcpSeqNumber(1000),
            ack_number: ack.then_some(TcpSeqNumber(2000)),
            window_len: 1024,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        };
        let ip = Ipv4Repr {
            src_addr: GUEST,
            dst_addr: HOST,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let eth = EthernetRepr {
            src_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
            dst_addr: EthernetAddress([2, 0x6b, 0x69, 0x6c, 0x6e, 1]),
            ethertype: EthernetProtocol::Ipv4,
        };
        let mut buf = vec![0u8; eth.buffer_len() + ip.buffer_len() + tcp.buffer_len()];
        let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
        eth.emit(&mut f);
        let caps = ChecksumCapabilities::default();
        let mut p = Ipv4Packet::new_unchecked(f.payload_mut());
        ip.emit(&mut p, &caps);
        let mut t = TcpPacket::new_unchecked(p.payload_mut());
        tcp.emit(&mut t, &HOST.into(), &GUEST.into(), &caps);
        buf
    }

    /// The same frame as the link would send it (host to guest), so that
    /// the guard sees its own SYN leave.
    fn outgoing_syn(src_port: u16) -> Vec<u8> {
        let mut f = segment(80, TcpControl::Syn, false);
        let mut eth = EthernetFrame::new_unchecked(&mut f[..]);
        let mut ip = Ipv4Packet::new_unchecked(eth.payload_mut());
        ip.set_src_addr(HOST);
        ip.set_dst_addr(GUEST);
        let mut tcp = TcpPacket::new_unchecked(ip.payload_mut());
        tcp.set_src_port(src_port);
        tcp.set_dst_port(80);
        f
    }

    #[test]
    fn a_bare_syn_is_always_refused() {
        let g = Guard::default();
        assert_eq!(
            g.check(&segment(50000, TcpControl::Syn, false)),
            Err(Refusal::Syn)
        );
    }

    #[test]
    fn a_syn_ack_waits_for_our_syn() {
        let mut g = Guard::default();
        g.opened(50000);
        let syn_ack = segment(50000, TcpControl::Syn, true);
        assert_eq!(g.check(&syn_ack), Err(Refusal::EarlySynAck));
        // Another connection's SYN leaving changes nothing for this one.
        g.sent(&outgoing_syn(50001));
        assert_eq!(g.check(&syn_ack), Err(Refusal::EarlySynAck));
        g.sent(&outgoing_syn(50000));
        assert!(!g.watching());
        assert_eq!(g.check(&syn_ack), Ok(()));
    }

    #[test]
    fn ordinary_segments_and_other_frames_pass() {
        let mut g = Guard::default();
        g.opened(50000);
        assert_eq!(g.check(&segment(50000, TcpControl::None, true)), Ok(()));
        assert_eq!(g.check(&segment(50000, TcpControl::Rst, true)), Ok(()));
        assert_eq!(g.check(&[0u8; 3]), Ok(()));
        let mut arp = segment(50000, TcpControl::None, true);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(g.check(&arp), Ok(()));
    }

    #[test]
    fn fragments_are_refused() {
        let g = Guard::default();
        let mut f = segment(50000, TcpControl::None, true);
        let mut eth = EthernetFrame::new_unchecked(&mut f[..]);
        let mut ip = Ipv4Packet::new_unchecked(eth.payload_mut());
        ip.set_more_frags(true);
        assert_eq!(g.check(&f), Err(Refusal::Fragment));
    }

    #[test]
    fn a_closed_connection_is_forgotten() {
        let mut g = Guard::default();
        g.opened(50000);
        g.closed(50000);
        assert!(!g.watching());
    }
}
