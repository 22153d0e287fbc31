//! What the link refuses before smoltcp sees it.
//!
//! smoltcp 0.14.0 trusts the numbers it keeps about its own receive window
//! before the handshake is complete on its side, and two of them are wrong
//! there; a guest can exploit both (found by the recorded attack in
//! `../shared/repro/` and by the `peer_frames` fuzz target):
//!
//! 1. A socket in SYN-SENT that takes a SYN or SYN-ACK *before its own SYN
//!    has been sent* records the peer's sequence number as the last one it
//!    acknowledged, with a window of zero: its window ends one byte before
//!    it starts, and a segment 2^31 away then passes the acceptability test
//!    and underflows the offset arithmetic (`wire/tcp.rs:73`, "attempt to
//!    subtract sequence numbers with underflow", from `socket/tcp.rs:1783`).
//! 2. After a SYN-ACK that offers window scaling, and until the socket has
//!    sent its first ACK, it scales the window of its own SYN (which is
//!    never scaled) by its shift: with 64 KiB buffers it accepts data up to
//!    128 KiB ahead. Data beyond the buffer is half-written, and once such
//!    data is contiguous, queueing it fails `assert!(count <= window)`
//!    (`storage/ring_buffer.rs:345`) in a release build, or
//!    `debug_assert!(len_written == payload_len)` (`socket/tcp.rs:2233`)
//!    before that in a debug one. A guest needs only a SYN-ACK and ~45 full
//!    segments in one burst, before the link's ACK goes out.
//!
//! The link only ever opens connections and needs none of that, so the
//! guard follows each connection's handshake as the link sends it and
//! drops, before smoltcp parses anything:
//! - a TCP segment with SYN and without ACK (a simultaneous open or a
//!   connection request: nothing listens here);
//! - a SYN-ACK for a connection whose SYN has not left yet (no honest guest
//!   answers a SYN it has not seen);
//! - a segment carrying data for a connection on which the link has not
//!   yet acknowledged the guest's SYN (an honest guest sends data only
//!   after that ACK; one that does not retransmits);
//! - any IPv4 fragment (the link's MTU is fixed and both ends respect it;
//!   smoltcp as built here drops fragments anyway, and the guard must never
//!   look at a different TCP header than smoltcp would).
//!
//! Once the link has sent its first ACK on a connection, smoltcp's window is
//! the one it advertised and neither defect can be reached: the guard
//! forgets the connection. It learns what left from the frames the link
//! sends ([`Guard::sent`]); smoltcp sends a connection's SYN and its first
//! ACK only from `poll_egress`, after ARP.
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
    /// Data for a connection whose handshake the link has not completed.
    EarlyData,
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
    rst: bool,
    /// Bytes of payload.
    data: usize,
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
        rst: tcp.rst(),
        data: tcp.payload().len(),
    })
}

/// Where a connection's handshake is, as far as the link has sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handshake {
    /// Opened; its SYN has not left (ARP is not answered yet).
    SynUnsent,
    /// Its SYN has left; no ACK from the link yet.
    SynSent,
}

/// The guard of one link: the connections whose handshake the link has not
/// completed (usually none, at most a few, and each only until the guest
/// answers ARP and the SYN).
#[derive(Debug, Default)]
pub(crate) struct Guard {
    opening: Vec<(u16, Handshake)>,
}

impl Guard {
    /// A connection from local `port` was just opened; its SYN is not out.
    pub(crate) fn opened(&mut self, port: u16) {
        self.closed(port);
        self.opening.push((port, Handshake::SynUnsent));
    }

    /// The connection from `port` is gone, or complete.
    pub(crate) fn closed(&mut self, port: u16) {
        self.opening.retain(|&(p, _)| p != port);
        if self.opening.is_empty() {
            self.opening = Vec::new();
        }
    }

    fn state(&self, port: u16) -> Option<Handshake> {
        self.opening
            .iter()
            .find(|&&(p, _)| p == port)
            .map(|&(_, h)| h)
    }

    /// Whether any connection is still opening (when none is, [`Guard::sent`]
    /// need not look at frames).
    pub(crate) fn watching(&self) -> bool {
        !self.opening.is_empty()
    }

    /// A frame the link sent to the guest.
    pub(crate) fn sent(&mut self, frame: &[u8]) {
        if !self.watching() {
            return;
        }
        let Parsed::Tcp(s) = parse(frame) else {
            return;
        };
        match (self.state(s.src_port), s.syn, s.ack, s.rst) {
            (Some(Handshake::SynUnsent), true, false, false) => {
                for entry in &mut self.opening {
                    if entry.0 == s.src_port {
                        entry.1 = Handshake::SynSent;
                    }
                }
            }
            // The link's first ACK: smoltcp now holds the window it
            // advertised; nothing more to watch on this connection.
            (Some(Handshake::SynSent), false, true, false) => self.closed(s.src_port),
            _ => {}
        }
    }

    /// Whether smoltcp may see this frame from the guest.
    pub(crate) fn check(&self, frame: &[u8]) -> Result<(), Refusal> {
        let s = match parse(frame) {
            Parsed::Other => return Ok(()),
            Parsed::Fragment => return Err(Refusal::Fragment),
            Parsed::Tcp(s) => s,
        };
        if s.syn && !s.ack {
            return Err(Refusal::Syn);
        }
        match self.state(s.dst_port) {
            Some(Handshake::SynUnsent) if s.syn => Err(Refusal::EarlySynAck),
            Some(_) if s.data > 0 && !s.syn => Err(Refusal::EarlyData),
            _ => Ok(()),
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

    /// A frame from `src` (address, port) to `dst`.
    fn frame(
        src: (Ipv4Address, u16),
        dst: (Ipv4Address, u16),
        control: TcpControl,
        ack: bool,
        payload: &[u8],
    ) -> Vec<u8> {
        let tcp = TcpRepr {
            src_port: src.1,
            dst_port: dst.1,
            control,
            seq_number: TcpSeqNumber(1000),
            ack_number: ack.then_some(TcpSeqNumber(2000)),
            window_len: 1024,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        let ip = Ipv4Repr {
            src_addr: src.0,
            dst_addr: dst.0,
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
        tcp.emit(&mut t, &src.0.into(), &dst.0.into(), &caps);
        buf
    }

    /// From the guest's port 80 to the link's `port`.
    fn incoming(port: u16, control: TcpControl, ack: bool, payload: &[u8]) -> Vec<u8> {
        frame((GUEST, 80), (HOST, port), control, ack, payload)
    }

    /// From the link's `port` to the guest's port 80.
    fn outgoing(port: u16, control: TcpControl, ack: bool) -> Vec<u8> {
        frame((HOST, port), (GUEST, 80), control, ack, &[])
    }

    #[test]
    fn a_bare_syn_is_always_refused() {
        let g = Guard::default();
        assert_eq!(
            g.check(&incoming(50000, TcpControl::Syn, false, &[])),
            Err(Refusal::Syn)
        );
    }

    #[test]
    fn a_syn_ack_waits_for_our_syn() {
        let mut g = Guard::default();
        g.opened(50000);
        let syn_ack = incoming(50000, TcpControl::Syn, true, &[]);
        assert_eq!(g.check(&syn_ack), Err(Refusal::EarlySynAck));
        // Another connection's SYN leaving changes nothing for this one.
        g.sent(&outgoing(50001, TcpControl::Syn, false));
        assert_eq!(g.check(&syn_ack), Err(Refusal::EarlySynAck));
        g.sent(&outgoing(50000, TcpControl::Syn, false));
        assert_eq!(g.check(&syn_ack), Ok(()));
    }

    #[test]
    fn data_waits_for_our_first_ack() {
        let mut g = Guard::default();
        g.opened(50000);
        g.sent(&outgoing(50000, TcpControl::Syn, false));
        let data = incoming(50000, TcpControl::Psh, true, b"early");
        assert_eq!(g.check(&data), Err(Refusal::EarlyData));
        // Our RST is not our first ACK.
        g.sent(&outgoing(50000, TcpControl::Rst, true));
        assert_eq!(g.check(&data), Err(Refusal::EarlyData));
        // Segments without data pass meanwhile (a duplicate SYN-ACK, an RST).
        assert_eq!(
            g.check(&incoming(50000, TcpControl::Syn, true, &[])),
            Ok(())
        );
        assert_eq!(
            g.check(&incoming(50000, TcpControl::Rst, true, &[])),
            Ok(())
        );
        g.sent(&outgoing(50000, TcpControl::None, true));
        assert!(!g.watching());
        assert_eq!(g.check(&data), Ok(()));
    }

    #[test]
    fn other_connections_and_other_frames_pass() {
        let mut g = Guard::default();
        g.opened(50000);
        assert_eq!(
            g.check(&incoming(50001, TcpControl::Psh, true, b"data")),
            Ok(())
        );
        assert_eq!(
            g.check(&incoming(50000, TcpControl::Rst, true, &[])),
            Ok(())
        );
        assert_eq!(g.check(&[0u8; 3]), Ok(()));
        let mut arp = incoming(50000, TcpControl::None, true, &[]);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(g.check(&arp), Ok(()));
    }

    #[test]
    fn fragments_are_refused() {
        let g = Guard::default();
        let mut f = incoming(50000, TcpControl::None, true, &[]);
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
