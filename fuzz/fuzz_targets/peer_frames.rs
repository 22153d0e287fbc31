//! A hostile guest on kilnd's side of its link: frames the fuzzer chooses,
//! interleaved with what the host side does (open connections, read and
//! write their data, close them, let time pass), into kiln-peer's endpoint
//! (`kiln_peer::stack::Stack`, the code kilnd's links run), with its guard
//! and checksums verified as in kilnd.
//!
//! Most inputs would die on a checksum or on a sequence number the fuzzer
//! cannot guess, so besides raw frames an input can ask for a segment to be
//! built: the harness fills in addresses, ports and valid checksums, and
//! places its sequence and acknowledgement numbers relative to what the
//! endpoint last sent on that connection (a real guest sees those frames
//! too). Raw frames get their checksums fixed when the input asks for it.
//!
//! The property: nothing the guest sends makes the endpoint panic.
#![no_main]

use kiln_peer::stack::Stack;
use kiln_peer::LinkConfig;
use libfuzzer_sys::fuzz_target;
use smoltcp::iface::SocketHandle;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl,
    TcpPacket, TcpRepr, TcpSeqNumber,
};

const GUEST_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x02]);
const FIRST_PORT: u16 = 49152;

struct Conn {
    handle: SocketHandle,
    port: u16,
    /// Sequence and acknowledgement numbers of the last segment the
    /// endpoint sent on this connection.
    our_seq: u32,
    our_ack: u32,
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.byte()?, self.byte()?]))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes([
            self.byte()?,
            self.byte()?,
            self.byte()?,
            self.byte()?,
        ]))
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

/// Recomputes the IPv4 header and TCP checksums of `frame` where it parses
/// as such (a hostile guest computes them too).
fn fix_checksums(frame: &mut [u8]) {
    let Ok(mut eth) = EthernetFrame::new_checked(&mut *frame) else {
        return;
    };
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return;
    }
    let Ok(mut ip) = Ipv4Packet::new_checked(eth.payload_mut()) else {
        return;
    };
    ip.fill_checksum();
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    if ip.next_header() != IpProtocol::Tcp {
        return;
    }
    if let Ok(mut tcp) = TcpPacket::new_checked(ip.payload_mut()) {
        tcp.fill_checksum(&src.into(), &dst.into());
    }
}

fn arp_reply(cfg: &LinkConfig) -> Vec<u8> {
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: GUEST_MAC,
        source_protocol_addr: cfg.guest_ip,
        target_hardware_addr: EthernetAddress(cfg.host_mac),
        target_protocol_addr: cfg.host_ip,
    };
    let eth = EthernetRepr {
        src_addr: GUEST_MAC,
        dst_addr: EthernetAddress(cfg.host_mac),
        ethertype: EthernetProtocol::Arp,
    };
    let mut buf = vec![0u8; eth.buffer_len() + arp.buffer_len()];
    let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.emit(&mut f);
    arp.emit(&mut ArpPacket::new_unchecked(f.payload_mut()));
    buf
}

/// A segment from the guest port to `conn`, its fields from the input.
fn segment(input: &mut Input, cfg: &LinkConfig, conn: Option<&Conn>) -> Option<Vec<u8>> {
    let flags = input.byte()?;
    let seq_delta = input.u32()?;
    let ack_delta = input.u32()?;
    let window = input.u16()?;
    let options = input.byte()?;
    let len = input.u16()? as usize % 1461;
    let payload = input.bytes(len).to_vec();
    let (port, our_seq, our_ack) = conn.map_or((FIRST_PORT, 0, 0), |c| (c.port, c.our_seq, c.our_ack));
    let control = match flags & 7 {
        0 => TcpControl::None,
        1 => TcpControl::Syn,
        2 => TcpControl::Fin,
        3 => TcpControl::Rst,
        4 => TcpControl::Psh,
        _ => TcpControl::None,
    };
    // Small deltas from what we expect most of the time, anything at all
    // when the input says so (the far segments of the smoltcp defect).
    let near = |d: u32| if flags & 0x40 != 0 { d } else { (d as i32 % 70_000) as u32 };
    let tcp = TcpRepr {
        src_port: cfg.guest_port,
        dst_port: port,
        control,
        seq_number: TcpSeqNumber(our_ack.wrapping_add(near(seq_delta)) as i32),
        ack_number: (flags & 8 != 0).then(|| TcpSeqNumber(our_seq.wrapping_add(near(ack_delta)) as i32)),
        window_len: window,
        window_scale: (options & 1 != 0).then_some(options >> 5),
        max_seg_size: (options & 2 != 0).then_some(window),
        sack_permitted: options & 4 != 0,
        sack_ranges: if options & 8 != 0 {
            [Some((our_seq.wrapping_add(seq_delta), our_seq.wrapping_add(ack_delta))), None, None]
        } else {
            [None; 3]
        },
        timestamp: None,
        payload: &payload,
    };
    let ip = Ipv4Repr {
        src_addr: cfg.guest_ip,
        dst_addr: cfg.host_ip,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: GUEST_MAC,
        dst_addr: EthernetAddress(cfg.host_mac),
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut buf = vec![0u8; eth.buffer_len() + ip.buffer_len() + tcp.buffer_len()];
    let caps = ChecksumCapabilities::default();
    let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.emit(&mut f);
    let mut p = Ipv4Packet::new_unchecked(f.payload_mut());
    ip.emit(&mut p, &caps);
    let mut t = TcpPacket::new_unchecked(p.payload_mut());
    tcp.emit(
        &mut t,
        &IpAddress::Ipv4(cfg.guest_ip),
        &IpAddress::Ipv4(cfg.host_ip),
        &caps,
    );
    if flags & 0x80 != 0 {
        // Nudge the built segment: one byte anywhere, checksums kept right.
        let at = (seq_delta as usize) % buf.len();
        buf[at] ^= (ack_delta as u8) | 1;
        fix_checksums(&mut buf);
    }
    Some(buf)
}

/// Learns the sequence numbers of what the endpoint sent.
fn observe(sent: &mut Vec<Vec<u8>>, conns: &mut [Conn]) {
    for frame in sent.drain(..) {
        let Ok(eth) = EthernetFrame::new_checked(&frame[..]) else {
            continue;
        };
        let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
            continue;
        };
        let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
            continue;
        };
        if let Some(c) = conns.iter_mut().find(|c| c.port == tcp.src_port()) {
            c.our_seq = tcp.seq_number().0 as u32;
            if tcp.ack() {
                c.our_ack = tcp.ack_number().0 as u32;
            }
        }
    }
}

/// `PEER_FRAMES_TRACE=1 cargo fuzz run peer_frames INPUT` prints every
/// operation and frame of an input (to understand a crash).
fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("PEER_FRAMES_TRACE").is_some())
}

fn trace_frame(dir: &str, frame: &[u8]) {
    if tracing() {
        eprintln!("  {dir} {}", smoltcp::wire::PrettyPrinter::<EthernetFrame<&[u8]>>::new("", &frame));
    }
}

fuzz_target!(|data: &[u8]| {
    let cfg = LinkConfig::default();
    let Ok(mut stack) = Stack::new(&cfg, 1) else {
        return;
    };
    let mut input = Input(data);
    let mut now = Instant::ZERO;
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let mut conns: Vec<Conn> = Vec::new();
    let mut next_port = FIRST_PORT;
    let mut ops = 0;
    while let Some(op) = input.byte() {
        ops += 1;
        if tracing() {
            eprintln!("op {} at {now}", op % 10);
        }
        if ops > 256 {
            break;
        }
        let pick = |b: u8, conns: &[Conn]| (!conns.is_empty()).then(|| b as usize % conns.len());
        match op % 10 {
            // Open a connection (its SYN leaves only once ARP is answered).
            0 => {
                if conns.len() < 4 {
                    let seed = input.u32().unwrap_or(0) as u64;
                    if let Ok(handle) = stack.connect(next_port, seed) {
                        conns.push(Conn { handle, port: next_port, our_seq: 0, our_ack: 0 });
                    }
                    next_port = next_port.wrapping_add(1).max(FIRST_PORT);
                }
            }
            // The guest answers ARP.
            1 => {
                let _ = stack.ingest(now, &arp_reply(&cfg), &mut sent);
            }
            // A segment built from fields.
            2 => {
                let which = input.byte().unwrap_or(0);
                let conn = pick(which, &conns).map(|i| &conns[i]);
                if let Some(frame) = segment(&mut input, &cfg, conn) {
                    { trace_frame("guest->host", &frame); let _ = stack.ingest(now, &frame, &mut sent); }
                }
            }
            // A raw frame, checksums fixed or not.
            3 => {
                let len = input.u16().unwrap_or(0) as usize % 1515;
                let fix = len & 1 == 0;
                let mut frame = input.bytes(len).to_vec();
                if fix {
                    fix_checksums(&mut frame);
                }
                { trace_frame("guest->host", &frame); let _ = stack.ingest(now, &frame, &mut sent); }
            }
            // The endpoint sends.
            4 => {
                stack.egress(now, &mut sent);
            }
            // Time passes (retransmissions, keep-alives, timeouts).
            5 => {
                let ms = input.u16().unwrap_or(0) as u64;
                now += Duration::from_millis(ms);
                if let Some(delay) = stack.poll_delay(now) {
                    if delay.total_millis() < 120_000 && ms & 1 == 1 {
                        now += delay;
                    }
                }
                stack.egress(now, &mut sent);
            }
            // The client reads what the guest sent.
            6 => {
                if let Some(i) = pick(input.byte().unwrap_or(0), &conns) {
                    let s = stack.socket(conns[i].handle);
                    let _ = s.recv(|b| (b.len(), ()));
                }
            }
            // The client writes.
            7 => {
                if let Some(i) = pick(input.byte().unwrap_or(0), &conns) {
                    let n = input.u16().unwrap_or(0) as usize;
                    let chunk = vec![0x5a; n % 70_000];
                    let _ = stack.socket(conns[i].handle).send_slice(&chunk);
                }
            }
            // The client closes or aborts; or the connection is dropped.
            8 => {
                if let Some(i) = pick(input.byte().unwrap_or(0), &conns) {
                    match input.byte().unwrap_or(0) % 3 {
                        0 => stack.socket(conns[i].handle).close(),
                        1 => stack.socket(conns[i].handle).abort(),
                        _ => {
                            let c = conns.swap_remove(i);
                            stack.remove(c.handle, c.port);
                        }
                    }
                }
            }
            // Frames from the recorded attack's shapes: a bare SYN, a
            // SYN-ACK, an ACK far away, on the first connection.
            _ => {
                let conn = conns.first();
                let mut far = Input(&[0x48, 0, 0, 0, 0x80, 1, 0, 0, 0, 0, 0x10, 0, 0, 0, 0]);
                if let Some(frame) = segment(&mut far, &cfg, conn) {
                    { trace_frame("guest->host", &frame); let _ = stack.ingest(now, &frame, &mut sent); }
                }
            }
        }
        for f in &sent {
            trace_frame("host->guest", f);
        }
        observe(&mut sent, &mut conns);
    }
});
