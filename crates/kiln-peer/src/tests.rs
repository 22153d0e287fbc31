//! Unit tests that look inside a running link, against the guest double of
//! the integration tests.

#[path = "../tests/guest/mod.rs"]
mod guest;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::link::Footprint;
use crate::{Command, LinkConfig, PeerHandle};

async fn footprint(peer: &PeerHandle) -> Footprint {
    let (reply, answer) = tokio::sync::oneshot::channel();
    peer.commands.send(Command::Probe(reply)).unwrap();
    answer.await.unwrap()
}

/// Connection buffers exist only while connections do.
#[tokio::test]
async fn connection_state_is_given_back_when_connections_end() {
    let (host, guest_end) = std::os::unix::net::UnixDatagram::pair().unwrap();
    let (_guest, _) = guest::spawn(guest_end, guest::Server::Echo);
    let (peer, _link) = crate::spawn(host, LinkConfig::default()).unwrap();
    let idle = Footprint {
        sockets: 0,
        splices: 0,
        queued_frames: false,
    };
    assert_eq!(footprint(&peer).await, idle);

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut clients = Vec::new();
    for _ in 0..10 {
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        peer.splice(accepted.unwrap().0).unwrap();
        clients.push(client.unwrap());
    }
    for client in &mut clients {
        client.write_all(b"abc").await.unwrap();
        let mut back = [0u8; 3];
        client.read_exact(&mut back).await.unwrap();
    }
    let busy = footprint(&peer).await;
    assert_eq!(busy.sockets, 10);
    for mut client in clients {
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
    }
    let mut active = peer.active();
    tokio::time::timeout(Duration::from_secs(5), active.wait_for(|n| *n == 0))
        .await
        .unwrap()
        .unwrap();
    // The last connection lingers until the guest has acknowledged our FIN.
    tokio::time::timeout(Duration::from_secs(5), async {
        while footprint(&peer).await != idle {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("connection state kept after every connection ended");
}

/// What a unit test may change in a link (see `Command::Rig`).
#[derive(Debug, Default, Clone)]
pub(crate) struct Rig {
    /// Seed of the context that picks initial sequence numbers, instead of
    /// the OS's randomness (so that a recorded attack's guessed numbers
    /// are right).
    pub(crate) isn_seed: Option<u64>,
    /// The next local port to use.
    pub(crate) next_port: Option<u16>,
    /// Hand frames to smoltcp without the guard.
    pub(crate) unguarded: bool,
}

/// The recorded attack on smoltcp 0.14.0 (`tests/data/`, from
/// `shared/repro/`): `[u16 LE length][frame]...`, three frames with four
/// empty records between the second and the third (sent as they are: the
/// link drops them as too short).
fn repro_frames() -> Vec<Vec<u8>> {
    let data = include_bytes!("../tests/data/smoltcp-0.14-peer-panic.frames");
    let mut frames = Vec::new();
    let mut at = 0;
    while at + 2 <= data.len() {
        let len = u16::from_le_bytes([data[at], data[at + 1]]) as usize;
        frames.push(data[at + 2..at + 2 + len].to_vec());
        at += 2 + len;
    }
    assert_eq!(
        frames.iter().filter(|f| !f.is_empty()).count(),
        3,
        "the recording holds three frames"
    );
    frames
}

/// The guest's MAC address in the recording.
const REPRO_GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// A link set up as the recording expects (sequence numbers as with seed
/// 1, first local port 49152), with a client spliced in whose SYN has not
/// been sent, and the recorded frames waiting on the link's socket: they
/// are all read in the link's next turn, before it sends anything.
async fn replay(
    unguarded: bool,
) -> (
    PeerHandle,
    tokio::task::JoinHandle<crate::LinkEnd>,
    std::os::unix::net::UnixDatagram,
    TcpStream,
) {
    let (host, guest_end) = std::os::unix::net::UnixDatagram::pair().unwrap();
    let (peer, link) = crate::spawn(host, LinkConfig::default()).unwrap();
    peer.commands
        .send(Command::Rig(Rig {
            isn_seed: Some(1),
            next_port: Some(49152),
            unguarded,
        }))
        .unwrap();
    for frame in repro_frames() {
        guest_end.send(&frame).unwrap();
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (client, accepted) = tokio::join!(
        TcpStream::connect(listener.local_addr().unwrap()),
        listener.accept()
    );
    peer.splice(accepted.unwrap().0).unwrap();
    (peer, link, guest_end, client.unwrap())
}

async fn echo_once(client: &mut TcpStream, what: &[u8]) -> std::io::Result<Vec<u8>> {
    client.write_all(what).await?;
    let mut back = vec![0u8; what.len()];
    tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut back))
        .await
        .map_err(|_| std::io::Error::other("no echo within 10 s"))??;
    Ok(back)
}

/// The recorded frames, replayed into a live link, do not end it: the
/// guard refuses the SYN that starts the attack, and the connection that
/// was waiting goes on to work once a real guest answers.
#[tokio::test]
async fn the_recorded_smoltcp_attack_does_not_end_a_live_link() {
    let (peer, link, guest_end, mut client) = replay(false).await;
    // The real guest takes over the address the attacker announced.
    let (_guest, _) = guest::spawn_as(guest_end, guest::Server::Echo, REPRO_GUEST_MAC);
    let back = echo_once(&mut client, b"still here").await;
    assert!(!link.is_finished(), "the link ended: {:?}", link.await);
    assert_eq!(back.unwrap(), b"still here");
    assert!(
        peer.counters()
            .frames_refused
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1,
        "the SYN was not refused"
    );
}

/// Without the guard the same frames make smoltcp panic; the panic ends
/// that link alone: its client is reset, the link reports why, later
/// hand-ins are given back, and another link on the same runtime thread
/// serves on.
#[tokio::test]
async fn a_panic_in_one_link_ends_that_link_alone() {
    let (other_host, other_guest) = std::os::unix::net::UnixDatagram::pair().unwrap();
    let (_guest, _) = guest::spawn(other_guest, guest::Server::Echo);
    let (other, _other_link) = crate::spawn(other_host, LinkConfig::default()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (c, a) = tokio::join!(TcpStream::connect(addr), listener.accept());
    other.splice(a.unwrap().0).unwrap();
    let mut other_client = c.unwrap();
    assert_eq!(
        echo_once(&mut other_client, b"before").await.unwrap(),
        b"before"
    );

    let (peer, link, _guest_end, mut client) = replay(true).await;
    let end = tokio::time::timeout(Duration::from_secs(10), link)
        .await
        .expect("the link did not end")
        .expect("the panic escaped the link");
    match end {
        crate::LinkEnd::Panicked(msg) => assert!(msg.contains("sequence"), "{msg}"),
        other => panic!("the link ended otherwise: {other:?}"),
    }
    let mut rest = Vec::new();
    let read = client.read_to_end(&mut rest).await;
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "the client of the broken link was not reset"
    );
    let (c, a) = tokio::join!(TcpStream::connect(addr), listener.accept());
    assert!(
        peer.splice(a.unwrap().0).is_err(),
        "a hand-in to the ended link was taken"
    );
    drop(c);
    assert_eq!(*peer.active().borrow(), 0);

    assert_eq!(
        echo_once(&mut other_client, b"after").await.unwrap(),
        b"after"
    );
}

/// Builds an Ethernet frame from the guest (MAC [`REPRO_GUEST_MAC`],
/// 10.0.0.2:80) to the link's `port`.
fn guest_segment(port: u16, tcp: smoltcp::wire::TcpRepr<'_>) -> Vec<u8> {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::*;
    let cfg = LinkConfig::default();
    let tcp = TcpRepr {
        src_port: cfg.guest_port,
        dst_port: port,
        ..tcp
    };
    let ip = Ipv4Repr {
        src_addr: cfg.guest_ip,
        dst_addr: cfg.host_ip,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(REPRO_GUEST_MAC),
        dst_addr: EthernetAddress(cfg.host_mac),
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut buf = vec![0u8; eth.buffer_len() + ip.buffer_len() + tcp.buffer_len()];
    let caps = ChecksumCapabilities::default();
    let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.emit(&mut f);
    let mut p = Ipv4Packet::new_unchecked(f.payload_mut());
    ip.emit(&mut p, &caps);
    tcp.emit(
        &mut TcpPacket::new_unchecked(p.payload_mut()),
        &cfg.guest_ip.into(),
        &cfg.host_ip.into(),
        &caps,
    );
    buf
}

/// The next TCP segment the link sends to the guest (ARP requests are
/// answered on the way).
async fn next_segment(guest: &tokio::net::UnixDatagram) -> (u16, u32, Option<u32>, bool) {
    use smoltcp::wire::*;
    let cfg = LinkConfig::default();
    let mut buf = vec![0u8; 2048];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), guest.recv(&mut buf))
            .await
            .expect("the link sent nothing for 10 s")
            .unwrap();
        let eth = EthernetFrame::new_checked(&buf[..n]).unwrap();
        if eth.ethertype() == EthernetProtocol::Arp {
            let arp = ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Reply,
                source_hardware_addr: EthernetAddress(REPRO_GUEST_MAC),
                source_protocol_addr: cfg.guest_ip,
                target_hardware_addr: EthernetAddress(cfg.host_mac),
                target_protocol_addr: cfg.host_ip,
            };
            let head = EthernetRepr {
                src_addr: EthernetAddress(REPRO_GUEST_MAC),
                dst_addr: EthernetAddress(cfg.host_mac),
                ethertype: EthernetProtocol::Arp,
            };
            let mut reply = vec![0u8; head.buffer_len() + arp.buffer_len()];
            let mut f = EthernetFrame::new_unchecked(&mut reply[..]);
            head.emit(&mut f);
            arp.emit(&mut ArpPacket::new_unchecked(f.payload_mut()));
            guest.send(&reply).await.unwrap();
            continue;
        }
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        let ack = tcp.ack().then(|| tcp.ack_number().0 as u32);
        return (tcp.src_port(), tcp.seq_number().0 as u32, ack, tcp.syn());
    }
}

/// smoltcp 0.14.0, between a SYN-ACK that offers window scaling and its
/// first ACK, scales its own SYN's window and takes data up to twice its
/// buffer ahead; once such data is contiguous it panics. A guest that
/// sends a SYN-ACK and a burst of data before the link's ACK went out:
/// `unguarded` shows the panic, guarded the burst is refused, the
/// handshake completes, and the same data sent again arrives whole.
async fn early_burst(unguarded: bool) -> Result<(), crate::LinkEnd> {
    use smoltcp::wire::{TcpControl, TcpRepr, TcpSeqNumber};
    let (host, guest_end) = std::os::unix::net::UnixDatagram::pair().unwrap();
    guest_end.set_nonblocking(true).unwrap();
    let guest = tokio::net::UnixDatagram::from_std(guest_end).unwrap();
    let (peer, mut link) = crate::spawn(host, LinkConfig::default()).unwrap();
    peer.commands
        .send(Command::Rig(Rig {
            unguarded,
            ..Rig::default()
        }))
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (client, accepted) = tokio::join!(
        TcpStream::connect(listener.local_addr().unwrap()),
        listener.accept()
    );
    peer.splice(accepted.unwrap().0).unwrap();
    let mut client = client.unwrap();

    let (port, isn, _, syn) = next_segment(&guest).await;
    assert!(syn, "the link's first segment is not its SYN");
    let guest_isn: u32 = 7_000_000;
    let plain = TcpRepr {
        src_port: 0,
        dst_port: 0,
        control: TcpControl::None,
        seq_number: TcpSeqNumber(guest_isn as i32),
        ack_number: Some(TcpSeqNumber(isn.wrapping_add(1) as i32)),
        window_len: 65535,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let syn_ack = TcpRepr {
        control: TcpControl::Syn,
        window_scale: Some(7),
        max_seg_size: Some(1460),
        ..plain
    };
    let payload = vec![0x61u8; 1460];
    let data = |k: u32| TcpRepr {
        seq_number: TcpSeqNumber(guest_isn.wrapping_add(1 + k * 1460) as i32),
        payload: &payload,
        ..plain
    };
    // 50 segments: 73,000 bytes, more than the link's 64 KiB buffer.
    let mut burst = vec![guest_segment(port, syn_ack)];
    burst.extend((0..50).map(|k| guest_segment(port, data(k))));
    for frame in &burst {
        guest.send(frame).await.unwrap();
    }
    // The link's answer: its ACK of the SYN-ACK, or nothing at all.
    loop {
        tokio::select! {
            end = &mut link => {
                return Err(end.expect("the panic escaped the link"));
            }
            seg = next_segment(&guest) => {
                if seg.2 == Some(guest_isn.wrapping_add(1)) {
                    break;
                }
            }
        }
    }
    assert!(
        peer.counters()
            .frames_refused
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 50,
        "the early data was not refused"
    );
    // An honest guest's retransmission, within the window: arrives whole.
    for k in 0..40 {
        guest.send(&guest_segment(port, data(k))).await.unwrap();
    }
    let mut got = vec![0u8; 40 * 1460];
    tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut got))
        .await
        .expect("the data did not arrive")
        .unwrap();
    assert!(got.iter().all(|&b| b == 0x61));
    Ok(())
}

#[tokio::test]
async fn data_before_the_links_first_ack_is_refused_and_the_link_goes_on() {
    early_burst(false).await.unwrap();
}

#[tokio::test]
async fn without_the_guard_data_before_the_first_ack_panics_smoltcp() {
    match early_burst(true).await {
        Err(crate::LinkEnd::Panicked(msg)) => {
            assert!(msg.contains("assert"), "{msg}")
        }
        other => panic!("the unguarded link did not panic: {other:?}"),
    }
}
