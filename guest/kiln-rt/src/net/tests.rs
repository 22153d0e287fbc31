//! Host tests of the network stack over the loopback driver: the socket
//! API end to end, resource accounting, and hostile input.

use super::*;
use crate::executor::{block_on, sleep, spawn, timeout};
use crate::global::tests::serial;
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::collections::VecDeque;

fn v4(port: u16) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port)
}

fn v6(port: u16) -> SocketAddr {
    SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port)
}

/// A fresh loopback stack for one test.
fn loopback() -> std::sync::MutexGuard<'static, ()> {
    let guard = serial();
    crate::executor::reset();
    stack::reset();
    init_loopback().expect("loopback stack");
    guard
}

/// A pattern that differs between offsets, so misordered bytes show.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Serves one echo connection: reads until EOF, writes everything back.
async fn echo(mut stream: TcpStream) {
    let mut buf = vec![0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Sends `data`, half-closes, reads the echo until EOF.
async fn round_trip(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => panic!("connect to {addr}: {e:?}; {:?}", stats()),
    };
    let mut received = Vec::new();
    let mut buf = vec![0u8; 3000];
    let mut sent = 0;
    // Interleave writing and reading so neither buffer fills up for good.
    while sent < data.len() {
        let n = stream.write(&data[sent..]).await.expect("write");
        sent += n;
        while let Ok(Ok(n)) = timeout(Duration::from_millis(1), stream.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            received.extend_from_slice(&buf[..n]);
        }
    }
    stream.shutdown().expect("shutdown");
    loop {
        let n = stream.read(&mut buf).await.expect("read");
        if n == 0 {
            break;
        }
        received.extend_from_slice(&buf[..n]);
    }
    received
}

#[test]
fn tcp_round_trips_of_many_sizes_over_ipv4_and_ipv6() {
    let _g = loopback();
    block_on(async {
        let listener = TcpListener::bind(7).unwrap();
        spawn(async move {
            loop {
                let stream = listener.accept().await;
                spawn(echo(stream));
            }
        });
        for len in [0usize, 1, 1500, 100_000] {
            let data = pattern(len);
            assert_eq!(round_trip(v4(7), &data).await, data, "IPv4, {len} bytes");
        }
        let data = pattern(20_000);
        assert_eq!(round_trip(v6(7), &data).await, data, "IPv6");
    });
}

#[test]
fn fifty_concurrent_connections_are_all_served() {
    let _g = loopback();
    let done = block_on(async {
        let listener = TcpListener::bind(80).unwrap();
        spawn(async move {
            loop {
                let stream = listener.accept().await;
                spawn(echo(stream));
            }
        });
        let clients: Vec<_> = (0..50)
            .map(|i| {
                spawn(async move {
                    let data = pattern(1000 + i * 37);
                    round_trip(v4(80), &data).await == data
                })
            })
            .collect();
        let mut ok = 0;
        for c in clients {
            ok += usize::from(c.await);
        }
        ok
    });
    assert_eq!(done, 50);
}

#[test]
fn closed_connections_are_freed() {
    let _g = loopback();
    block_on(async {
        let listener = TcpListener::bind(9).unwrap();
        spawn(async move {
            loop {
                let stream = listener.accept().await;
                spawn(echo(stream));
            }
        });
        // Let the listener set up its backlog.
        sleep(Duration::from_millis(1)).await;
        let baseline = stats().tcp_sockets;
        for _ in 0..300 {
            assert_eq!(round_trip(v4(9), b"ping").await, b"ping");
        }
        // Closing finishes in the background.
        sleep(Duration::from_secs(1)).await;
        let after = stats();
        assert_eq!(after.tcp_sockets, baseline, "{after:?}");
        assert_eq!(after.closing, 0);
    });
}

#[test]
fn connecting_to_a_closed_port_is_refused() {
    let _g = loopback();
    let result = block_on(TcpStream::connect(v4(1234)));
    assert_eq!(result.err(), Some(Error::ConnectionRefused));
    assert_eq!(stats().tcp_sockets, 0);
}

#[test]
fn peer_reset_is_reported_and_eof_is_zero() {
    let _g = loopback();
    block_on(async {
        let listener = TcpListener::bind(81).unwrap();
        let server = spawn(async move {
            let mut s = listener.accept().await;
            let mut buf = [0u8; 8];
            let n = s.read(&mut buf).await.unwrap();
            s.write_all(&buf[..n]).await.unwrap();
            s.shutdown().unwrap();
            // Reading still works after our shutdown, up to the client's end.
            assert_eq!(s.read(&mut buf).await, Ok(1));
            assert_eq!(s.read(&mut buf).await, Ok(0));
        });
        let mut c = TcpStream::connect(v4(81)).await.unwrap();
        assert_eq!(c.peer_addr(), v4(81));
        c.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(c.read(&mut buf).await, Ok(2));
        assert_eq!(c.read(&mut buf).await, Ok(0));
        assert_eq!(c.write(b"x").await.map(|_| ()), Ok(()));
        c.shutdown().unwrap();
        server.await;
    });
}

#[test]
fn udp_round_trips_and_limits() {
    let _g = loopback();
    block_on(async {
        let server = UdpSocket::bind(7).unwrap();
        assert_eq!(UdpSocket::bind(7).err(), Some(Error::AddrInUse));
        spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                let (n, from) = server.recv_from(&mut buf).await.unwrap();
                server.send_to(&buf[..n], from).await.unwrap();
            }
        });
        let client = UdpSocket::bind(0).unwrap();
        assert!(client.port() >= 49152);
        // Over IPv4, datagrams larger than a frame (1472 bytes) go in
        // fragments, up to the largest IPv4 datagram.
        for (addr, len) in [
            (v4(7), 0),
            (v4(7), 1),
            (v4(7), 1472),
            (v4(7), 1473),
            (v4(7), 3000),
            (v4(7), 8192),
            (v4(7), 65507),
            (v6(7), 10),
            (v6(7), 1452),
        ] {
            let data = pattern(len);
            client.send_to(&data, addr).await.unwrap();
            let mut buf = vec![0u8; 65536];
            // (The first IPv6 datagram waits for neighbour discovery of ::1,
            // which smoltcp completes on its one-second retry.)
            let (n, from) = timeout(Duration::from_secs(5), client.recv_from(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("echo of {len} bytes to {addr} arrives"))
                .unwrap();
            assert_eq!(from, addr);
            assert_eq!(&buf[..n], &data[..]);
        }
        // Larger than IPv4 allows; larger than one frame over IPv6.
        assert_eq!(
            client.send_to(&vec![0; 65508], v4(7)).await,
            Err(Error::MessageTooLong)
        );
        assert_eq!(
            client.send_to(&[0; 1453], v6(7)).await,
            Err(Error::MessageTooLong)
        );
        assert_eq!(client.send_to(b"x", v4(0)).await, Err(Error::Unaddressable));
    });
}

/// smoltcp (0.14) keeps one IPv4 packet in fragments at a time and sends a
/// fragment per egress pass; large datagrams queued at once, on one socket
/// and on several, must not replace one another before their last fragment
/// went out.
#[test]
fn large_datagrams_queued_at_once_all_arrive_whole() {
    let _g = loopback();
    block_on(async {
        let server = UdpSocket::bind(7).unwrap();
        let a = UdpSocket::bind(0).unwrap();
        let b = UdpSocket::bind(0).unwrap();
        // `send_to` does not yield when there is room: all are queued
        // before the stack turns.
        let mut want = Vec::new();
        for i in 0..3 {
            for (sock, len) in [(&a, 12_000 + i), (&b, 3000 + i)] {
                let data = pattern(len);
                sock.send_to(&data, v4(7)).await.unwrap();
                want.push(data);
            }
        }
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        for _ in 0..want.len() {
            let (n, _) = timeout(Duration::from_secs(5), server.recv_from(&mut buf))
                .await
                .unwrap_or_else(|_| {
                    panic!("only {} of {} datagrams arrived", got.len(), want.len())
                })
                .unwrap();
            got.push(buf[..n].to_vec());
        }
        got.sort();
        want.sort();
        assert!(got == want, "datagrams arrived damaged");
    });
}

/// Fragments that never complete a packet, more packets in reassembly than
/// there are slots: they expire, and later datagrams still get through.
#[test]
fn incomplete_fragments_expire() {
    let _g = serial();
    crate::executor::reset();
    stack::reset();
    let queue: Rc<RefCell<VecDeque<Vec<u8>>>> = Rc::default();
    stack::install(|| {
        Ok(stack::Stack::new(
            Box::new(SharedLoopback(queue.clone())),
            loopback_config(),
        ))
    })
    .unwrap();
    block_on(async {
        let server = UdpSocket::bind(7).unwrap();
        let client = UdpSocket::bind(0).unwrap();
        let mut buf = vec![0u8; 65536];
        // First fragments (more to come, offset 0) of UDP packets from
        // 127.0.0.1 to 127.0.0.1, each with its own ident.
        let fragment = |ident: u16| {
            let mut f = Vec::new();
            f.extend_from_slice(&LoopbackDriver::MAC);
            f.extend_from_slice(&LoopbackDriver::MAC);
            f.extend_from_slice(&[0x08, 0x00]);
            let mut ip = vec![
                0x45, 0, 0, 0, 0, 0, 0x20, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1,
            ];
            ip[2..4].copy_from_slice(&(20u16 + 1000).to_be_bytes());
            ip[4..6].copy_from_slice(&ident.to_be_bytes());
            let mut sum = 0u32;
            for pair in ip.chunks(2) {
                sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
            }
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
            f.extend_from_slice(&ip);
            f.extend_from_slice(&[0xab; 1000]);
            f
        };
        for ident in 0..(stack::REASSEMBLY_SLOTS as u16 + 2) {
            queue.borrow_mut().push_back(fragment(ident));
        }
        sleep(Duration::from_millis(10)).await;
        // Every slot is taken: a fragmented datagram is lost for now.
        client.send_to(&pattern(3000), v4(7)).await.unwrap();
        assert!(
            timeout(Duration::from_millis(500), server.recv_from(&mut buf))
                .await
                .is_err(),
            "a fragmented datagram got through with every reassembly slot taken"
        );
        // Unfragmented ones are not held up.
        client.send_to(b"small", v4(7)).await.unwrap();
        let (n, _) = timeout(Duration::from_secs(1), server.recv_from(&mut buf))
            .await
            .expect("a small datagram arrives")
            .unwrap();
        assert_eq!(&buf[..n], b"small");
        // Once the incomplete ones expire, fragmented datagrams get through.
        sleep(Duration::from_secs(6)).await;
        client.send_to(&pattern(3000), v4(7)).await.unwrap();
        let (n, _) = timeout(Duration::from_secs(1), server.recv_from(&mut buf))
            .await
            .expect("a fragmented datagram arrives after the others expired")
            .unwrap();
        assert!(buf[..n] == pattern(3000)[..]);
    });
}

#[test]
fn timeouts_cut_waits_short() {
    let _g = loopback();
    block_on(async {
        let listener = TcpListener::bind(82).unwrap();
        assert_eq!(
            timeout(Duration::from_millis(50), listener.accept())
                .await
                .err(),
            Some(crate::executor::Elapsed)
        );
        let sock = UdpSocket::bind(5000).unwrap();
        let mut buf = [0u8; 16];
        assert!(timeout(Duration::from_millis(50), sock.recv_from(&mut buf))
            .await
            .is_err());
    });
}

#[test]
fn listeners_and_ports_are_checked() {
    let _g = loopback();
    let a = TcpListener::bind(8080).unwrap();
    assert_eq!(TcpListener::bind(8080).err(), Some(Error::AddrInUse));
    assert_eq!(TcpListener::bind(0).err(), Some(Error::InvalidInput));
    drop(a);
    assert_eq!(stats().tcp_sockets, 0);
    let _b = TcpListener::bind(8080).unwrap();
    assert_eq!(init_loopback(), Err(Error::AlreadyStarted));
}

/// A driver fed by the test: frames it "receives" come from `input`;
/// frames the stack sends are counted.
struct FedDriver {
    input: Rc<RefCell<VecDeque<Vec<u8>>>>,
    sent: Rc<RefCell<usize>>,
    mac: [u8; 6],
}

impl NetDriver for FedDriver {
    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        let frame = self.input.borrow_mut().pop_front()?;
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Some(n)
    }
    fn transmit(&mut self, _frame: &[u8]) -> bool {
        *self.sent.borrow_mut() += 1;
        true
    }
    fn input_pending(&self) -> bool {
        !self.input.borrow().is_empty()
    }
    fn poll_interest(&self) -> u64 {
        0
    }
    fn note_ready(&mut self, _ready: u64) {}
    fn mtu(&self) -> usize {
        1500
    }
    fn mac(&self) -> [u8; 6] {
        self.mac
    }
}

/// A small deterministic generator for hostile input.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.next().is_multiple_of(n)
    }
}

/// A plausible Ethernet + IPv4 + TCP/UDP header to mutate, so the garbage
/// reaches deep into the stack rather than dying at the first check.
fn frame_template(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    for b in f.iter_mut() {
        *b = rng.next() as u8;
    }
    let header: &[u8] = &[
        0x02, 0, 0, 0, 0, 9, 0x02, 0, 0, 0, 0, 7, 0x08, 0x00, // Ethernet, IPv4
        0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, // IPv4, TCP
        10, 0, 0, 7, 10, 0, 0, 2, // src, dst
        0x30, 0x39, 0, 80, // ports
    ];
    let n = header.len().min(len);
    if !rng.one_in(4) {
        f[..n].copy_from_slice(&header[..n]);
        if len > 23 && rng.one_in(2) {
            f[23] = 17; // UDP
        }
        if len > 13 && rng.one_in(5) {
            f[12] = 0x86; // IPv6 / ARP EtherTypes
            f[13] = if rng.one_in(2) { 0xdd } else { 0x06 };
            if len > 14 {
                f[14] = 0x60;
            }
        }
        if len > 14 && rng.one_in(8) {
            f[12] = 0x08;
            f[13] = 0x06;
        }
    }
    f
}

#[test]
fn garbage_frames_of_every_size_never_panic() {
    let _g = serial();
    crate::executor::reset();
    stack::reset();
    let input = Rc::new(RefCell::new(VecDeque::new()));
    let sent = Rc::new(RefCell::new(0));
    init_with_driver(Box::new(FedDriver {
        input: input.clone(),
        sent: sent.clone(),
        mac: [0x02, 0, 0, 0, 0, 9],
    }))
    .unwrap();
    stack::with(|s| {
        s.iface.update_ip_addrs(|a| {
            let _ = a.push(smoltcp::wire::IpCidr::new(
                Ipv4Addr::new(10, 0, 0, 2).into(),
                24,
            ));
        });
    })
    .unwrap();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    block_on(async {
        let _l = TcpListener::bind(80).unwrap();
        let _u = UdpSocket::bind(80).unwrap();
        let sizes = (0..=64usize)
            .chain([1513, 1514, 1515, 9000, 65535])
            .chain((0..400).map(|_| (rng.next() % 65536) as usize));
        let sizes: Vec<usize> = sizes.collect();
        for (i, len) in sizes.into_iter().enumerate() {
            input.borrow_mut().push_back(frame_template(&mut rng, len));
            if i % 16 == 0 {
                sleep(Duration::from_millis(3)).await;
            }
        }
        sleep(Duration::from_millis(100)).await;
    });
    assert!(input.borrow().is_empty());
    assert!(stats().rx_frames >= 470);
}

/// Two queues of frames: a wire between the kiln stack and a test peer.
type Queue = Rc<RefCell<VecDeque<Vec<u8>>>>;

/// The kiln stack's end of the wire.
struct WireDriver {
    rx: Queue,
    tx: Queue,
}

impl NetDriver for WireDriver {
    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        loop {
            let frame = self.rx.borrow_mut().pop_front()?;
            if let Some(dst) = buf.get_mut(..frame.len()) {
                dst.copy_from_slice(&frame);
                return Some(frame.len());
            }
        }
    }
    fn transmit(&mut self, frame: &[u8]) -> bool {
        self.tx.borrow_mut().push_back(frame.to_vec());
        true
    }
    fn input_pending(&self) -> bool {
        !self.rx.borrow().is_empty()
    }
    fn poll_interest(&self) -> u64 {
        0
    }
    fn note_ready(&mut self, _ready: u64) {}
    fn mtu(&self) -> usize {
        1500
    }
    fn mac(&self) -> [u8; 6] {
        [0x02, 0, 0, 0, 0, 2]
    }
}

/// The peer's end: a plain smoltcp device; `deaf` drops what the kiln
/// stack sends (a SYN flood's spoofed sources never answer).
struct PeerDevice {
    rx: Queue,
    tx: Queue,
    deaf: bool,
}

struct PeerRx(Vec<u8>);
struct PeerTx(Queue);

impl smoltcp::phy::RxToken for PeerRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl smoltcp::phy::TxToken for PeerTx {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let r = f(&mut frame);
        self.0.borrow_mut().push_back(frame);
        r
    }
}

impl smoltcp::phy::Device for PeerDevice {
    type RxToken<'a> = PeerRx;
    type TxToken<'a> = PeerTx;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(PeerRx, PeerTx)> {
        loop {
            let frame = self.rx.borrow_mut().pop_front()?;
            if !self.deaf {
                return Some((PeerRx(frame), PeerTx(self.tx.clone())));
            }
        }
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<PeerTx> {
        Some(PeerTx(self.tx.clone()))
    }

    fn capabilities(&self) -> smoltcp::phy::DeviceCapabilities {
        let mut caps = smoltcp::phy::DeviceCapabilities::default();
        caps.max_transmission_unit = 1514;
        caps
    }
}

/// A smoltcp host on the other end of the wire, driven by the test.
struct Peer {
    iface: smoltcp::iface::Interface,
    dev: PeerDevice,
    sockets: smoltcp::iface::SocketSet<'static>,
}

impl Peer {
    fn new(rx: Queue, tx: Queue) -> Peer {
        use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr};
        let mut dev = PeerDevice {
            rx,
            tx,
            deaf: false,
        };
        let cfg = smoltcp::iface::Config::new(HardwareAddress::Ethernet(EthernetAddress([
            0x02, 0, 0, 0, 0, 7,
        ])));
        let mut iface = smoltcp::iface::Interface::new(cfg, &mut dev, Self::now());
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(Ipv4Addr::new(10, 0, 0, 7).into(), 24));
        });
        Peer {
            iface,
            dev,
            sockets: smoltcp::iface::SocketSet::new(Vec::new()),
        }
    }

    fn now() -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros((crate::time::Instant::now().as_nanos() / 1000) as i64)
    }

    fn poll(&mut self) {
        self.iface
            .poll(Self::now(), &mut self.dev, &mut self.sockets);
    }

    /// Opens a connection to the kiln stack's port 80 from `port`.
    fn connect(&mut self, port: u16) -> smoltcp::iface::SocketHandle {
        use smoltcp::socket::tcp;
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 4096]),
            tcp::SocketBuffer::new(vec![0; 4096]),
        );
        s.connect(self.iface.context(), (Ipv4Addr::new(10, 0, 0, 2), 80), port)
            .unwrap();
        self.sockets.add(s)
    }

    /// Sends `msg` on a new connection and waits for the echo.
    async fn echo_round_trip(&mut self, port: u16, msg: &[u8]) -> Vec<u8> {
        use smoltcp::socket::tcp;
        let h = self.connect(port);
        let mut sent = false;
        let mut got = Vec::new();
        for _ in 0..10_000 {
            self.poll();
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            if !sent && s.may_send() {
                s.send_slice(msg).unwrap();
                sent = true;
            }
            let mut buf = [0u8; 256];
            if let Ok(n) = s.recv_slice(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
            if got.len() >= msg.len() {
                break;
            }
            sleep(Duration::from_millis(1)).await;
        }
        got
    }
}

/// A fresh stack at 10.0.0.2/24 on a wire whose other end is the
/// returned peer (callers hold `serial()`).
fn wired_peer() -> Peer {
    crate::executor::reset();
    stack::reset();
    let to_kiln: Queue = Rc::default();
    let to_peer: Queue = Rc::default();
    init_with_driver(Box::new(WireDriver {
        rx: to_kiln.clone(),
        tx: to_peer.clone(),
    }))
    .unwrap();
    stack::with(|s| {
        s.iface.update_ip_addrs(|a| {
            let _ = a.push(smoltcp::wire::IpCidr::new(
                Ipv4Addr::new(10, 0, 0, 2).into(),
                24,
            ));
        });
    })
    .unwrap();
    Peer::new(to_peer, to_kiln)
}

#[test]
fn a_syn_flood_cannot_lock_out_real_clients() {
    let _g = serial();
    let mut peer = wired_peer();
    let max = stack::with(|s| s.limits.max_tcp).unwrap();
    block_on(async move {
        let listener = TcpListener::bind(80).unwrap();
        spawn(async move {
            loop {
                let stream = listener.accept().await;
                spawn(echo(stream));
            }
        });
        // A real client first (the peers learn each other's MAC).
        assert_eq!(peer.echo_round_trip(30000, b"before").await, b"before");

        // The flood: twice as many half-open connections as sockets.
        peer.dev.deaf = true;
        for i in 0..(2 * max as u16) {
            peer.connect(31000 + i);
            if i % 16 == 0 {
                peer.poll();
                sleep(Duration::from_millis(1)).await;
            }
        }
        peer.poll();
        sleep(Duration::from_millis(5)).await;
        let flooded = stats();
        assert!(flooded.tcp_sockets <= max, "{flooded:?}");
        assert!(flooded.evicted >= max as u64 / 2, "{flooded:?}");

        // The attacker goes away silently; a real client still gets in.
        peer.sockets = smoltcp::iface::SocketSet::new(Vec::new());
        peer.dev.deaf = false;
        assert_eq!(peer.echo_round_trip(50000, b"after").await, b"after");

        // Half-open connections time out and are freed.
        sleep(stack::ORPHAN_LINGER + Duration::from_secs(60)).await;
        let later = stats();
        assert!(later.tcp_sockets < 16, "{later:?}");
    });
}

/// A peer that resets a connection while the listener is still in its
/// handshake (passt does this when its own client resets at once): smoltcp
/// puts that socket back into LISTEN. It must not be handed out by
/// `accept` nor keep a later connection from being served.
#[test]
fn connections_reset_during_their_handshake_leave_the_listener_whole() {
    let _g = serial();
    let mut peer = wired_peer();
    block_on(async move {
        let listener = TcpListener::bind(80).unwrap();
        let accepted = Rc::new(RefCell::new(Vec::new()));
        let seen = accepted.clone();
        spawn(async move {
            loop {
                let stream = listener.accept().await;
                seen.borrow_mut().push(stream.peer_addr());
                spawn(echo(stream));
            }
        });
        assert_eq!(peer.echo_round_trip(30000, b"before").await, b"before");
        for round in 0..8u16 {
            // SYN and RST reach the stack in the same turn.
            for i in 0..8 {
                let h = peer.connect(31000 + round * 8 + i);
                peer.poll();
                peer.sockets
                    .get_mut::<smoltcp::socket::tcp::Socket>(h)
                    .abort();
                peer.poll();
                peer.sockets.remove(h);
            }
            sleep(Duration::from_millis(2)).await;
            let port = 40000 + round;
            let msg = format!("after round {round}");
            assert_eq!(
                peer.echo_round_trip(port, msg.as_bytes()).await,
                msg.as_bytes(),
                "round {round}: the next connection was not served"
            );
        }
        // Every stream `accept` gave out was a real connection.
        for addr in accepted.borrow().iter() {
            assert_ne!(addr.port(), 0, "accept handed out a listening socket");
        }
    });
}

/// A loopback driver that keeps a copy of every frame sent.
struct RecordingLoopback {
    queue: VecDeque<Vec<u8>>,
    log: Rc<RefCell<Vec<Vec<u8>>>>,
}

impl NetDriver for RecordingLoopback {
    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        let frame = self.queue.pop_front()?;
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Some(n)
    }
    fn transmit(&mut self, frame: &[u8]) -> bool {
        self.log.borrow_mut().push(frame.to_vec());
        self.queue.push_back(frame.to_vec());
        true
    }
    fn input_pending(&self) -> bool {
        !self.queue.is_empty()
    }
    fn poll_interest(&self) -> u64 {
        0
    }
    fn note_ready(&mut self, _ready: u64) {}
    fn mtu(&self) -> usize {
        1500
    }
    fn mac(&self) -> [u8; 6] {
        LoopbackDriver::MAC
    }
}

/// A loopback device whose queue the test can reach, to add frames of its
/// own.
struct SharedLoopback(Rc<RefCell<VecDeque<Vec<u8>>>>);

impl NetDriver for SharedLoopback {
    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        let frame = self.0.borrow_mut().pop_front()?;
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Some(n)
    }
    fn transmit(&mut self, frame: &[u8]) -> bool {
        self.0.borrow_mut().push_back(frame.to_vec());
        true
    }
    fn input_pending(&self) -> bool {
        !self.0.borrow().is_empty()
    }
    fn poll_interest(&self) -> u64 {
        0
    }
    fn note_ready(&mut self, _ready: u64) {}
    fn mtu(&self) -> usize {
        1500
    }
    fn mac(&self) -> [u8; 6] {
        LoopbackDriver::MAC
    }
}

/// Addresses of the loopback stack, for stacks built by hand.
fn loopback_config() -> config::IfaceConfig {
    config::IfaceConfig {
        ipv4: Some((Ipv4Addr::LOCALHOST, 8)),
        ipv6: Some((Ipv6Addr::LOCALHOST, 128)),
        ..config::IfaceConfig::default()
    }
}

/// Servers on TCP and UDP port 7 that echo, for traffic to hit sockets.
fn spawn_echo_servers() {
    let listener = TcpListener::bind(7).unwrap();
    spawn(async move {
        loop {
            let stream = listener.accept().await;
            spawn(echo(stream));
        }
    });
    let udp = UdpSocket::bind(7).unwrap();
    spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = udp.recv_from(&mut buf).await {
            let _ = udp.send_to(&buf[..n], from).await;
        }
    });
}

/// Real traffic (ARP, NDP, TCP over IPv4 and IPv6 with data, FIN and RST,
/// UDP) is recorded, then replayed with random mutations into a stack that
/// skips checksum checks, so the mutations reach every parser.
#[test]
fn mutated_real_traffic_never_panics() {
    let _g = serial();
    crate::executor::reset();
    stack::reset();
    let log = Rc::new(RefCell::new(Vec::new()));
    stack::install(|| {
        Ok(stack::Stack::new(
            Box::new(RecordingLoopback {
                queue: VecDeque::new(),
                log: log.clone(),
            }),
            loopback_config(),
        ))
    })
    .unwrap();
    block_on(async {
        spawn_echo_servers();
        for addr in [v4(7), v6(7)] {
            assert_eq!(round_trip(addr, &pattern(3000)).await, pattern(3000));
            let u = UdpSocket::bind(0).unwrap();
            u.send_to(b"datagram", addr).await.unwrap();
            let mut buf = vec![0u8; 65536];
            let _ = timeout(Duration::from_secs(3), u.recv_from(&mut buf)).await;
            if addr.is_ipv4() {
                // IPv4 fragments, for the reassembly code.
                u.send_to(&pattern(3000), addr).await.unwrap();
                let _ = timeout(Duration::from_secs(3), u.recv_from(&mut buf)).await;
            }
        }
        assert_eq!(
            TcpStream::connect(v4(9)).await.err(),
            Some(Error::ConnectionRefused)
        );
    });
    let corpus = log.borrow().clone();
    assert!(corpus.len() > 20, "{}", corpus.len());

    crate::executor::reset();
    stack::reset();
    let input: Rc<RefCell<VecDeque<Vec<u8>>>> = Rc::default();
    let sent = Rc::new(RefCell::new(0));
    stack::install(|| {
        let mut device = stack::FrameDevice::new(Box::new(FedDriver {
            input: input.clone(),
            sent: sent.clone(),
            mac: LoopbackDriver::MAC,
        }));
        device.ignore_checksums();
        Ok(stack::Stack::with_device(device, loopback_config()))
    })
    .unwrap();
    // KILN_FUZZ_ROUNDS / KILN_FUZZ_SEED run it longer, or differently.
    let rounds: u32 = std::env::var("KILN_FUZZ_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let seed: u64 = std::env::var("KILN_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15);
    let mut rng = Rng(seed | 1);
    block_on(async {
        spawn_echo_servers();
        for round in 0..rounds {
            let mut frame = corpus[(rng.next() % corpus.len() as u64) as usize].clone();
            match rng.next() % 4 {
                0 => frame.truncate((rng.next() % (frame.len() as u64 + 1)) as usize),
                1 => frame.extend((0..rng.next() % 64).map(|_| rng.next() as u8)),
                _ => {}
            }
            for _ in 0..1 + rng.next() % 4 {
                if !frame.is_empty() {
                    let i = (rng.next() % frame.len() as u64) as usize;
                    frame[i] = rng.next() as u8;
                }
            }
            input.borrow_mut().push_back(frame);
            if round % 64 == 0 {
                sleep(Duration::from_millis(1)).await;
            }
        }
        sleep(Duration::from_secs(5)).await;
    });
    assert!(input.borrow().is_empty());
    // The mutants got through to the stack, which answered many of them.
    assert!(*sent.borrow() > 1000, "{}", sent.borrow());
}
