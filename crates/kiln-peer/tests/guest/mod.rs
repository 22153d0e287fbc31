//! A guest double: the other end of the link's socketpair, played by a
//! second smoltcp interface (guest_ip, its own MAC) in a test task, with a
//! TCP server on the guest port.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::net::UnixDatagram as StdDatagram;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp::{self, State};
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr};
use tokio::net::UnixDatagram;
use tokio::task::JoinHandle;

pub const GUEST_MAC: [u8; 6] = [0x02, 0x6b, 0x69, 0x6c, 0x6e, 0x02];
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const PORT: u16 = 80;

/// Listening sockets kept ready: smoltcp has no accept queue, so a burst of
/// SYNs needs one listener each.
const LISTENERS: usize = 128;
const BUFFER: usize = 64 * 1024;

/// What the guest's server does.
#[derive(Clone, Copy, Debug)]
pub enum Server {
    /// Echoes everything; closes after the client's FIN.
    Echo,
    /// Reads a request up to the blank line, answers with this, closes its
    /// sending half (and keeps receiving until the client closes).
    Http(&'static [u8]),
    /// No listener: every SYN is answered with an RST.
    Refuse,
}

#[derive(Default)]
pub struct GuestStats {
    /// Payload bytes the server received.
    pub received: AtomicU64,
}

/// Starts a guest double on `sock`. Aborting the task drops the socket: the
/// instance "exits".
pub fn spawn(sock: StdDatagram, server: Server) -> (JoinHandle<()>, Arc<GuestStats>) {
    spawn_as(sock, server, GUEST_MAC)
}

/// [`spawn`] with another MAC address for the guest.
pub fn spawn_as(
    sock: StdDatagram,
    server: Server,
    mac: [u8; 6],
) -> (JoinHandle<()>, Arc<GuestStats>) {
    sock.set_nonblocking(true).unwrap();
    let sock = UnixDatagram::from_std(sock).unwrap();
    let stats = Arc::new(GuestStats::default());
    let task = tokio::spawn(run(sock, server, stats.clone(), mac));
    (task, stats)
}

struct Device<'a> {
    rx: Option<&'a [u8]>,
    tx: &'a mut VecDeque<Vec<u8>>,
}

struct Rx<'a>(&'a [u8]);
struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let r = f(&mut frame);
        self.0.push_back(frame);
        r
    }
}

impl phy::Device for Device<'_> {
    type RxToken<'b>
        = Rx<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = Tx<'b>
    where
        Self: 'b;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(Rx<'_>, Tx<'_>)> {
        let frame = self.rx.take()?;
        Some((Rx(frame), Tx(self.tx)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Tx<'_>> {
        if self.tx.len() > 256 {
            return None;
        }
        Some(Tx(self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

struct Conn {
    handle: SocketHandle,
    /// Http: bytes of the request so far, until the blank line.
    request: Vec<u8>,
    answered: bool,
}

async fn run(sock: UnixDatagram, server: Server, stats: Arc<GuestStats>, mac: [u8; 6]) {
    let epoch = tokio::time::Instant::now();
    let now = || smoltcp::time::Instant::from_micros(epoch.elapsed().as_micros() as i64);
    let mut tx = VecDeque::new();
    let mut config = Config::new(EthernetAddress(mac).into());
    config.random_seed = 7;
    let mut iface = Interface::new(
        config,
        &mut Device {
            rx: None,
            tx: &mut tx,
        },
        now(),
    );
    iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(IpAddress::Ipv4(GUEST_IP), 24)).unwrap();
    });
    iface.routes_mut().add_default_ipv4_route(HOST_IP).unwrap();
    let mut sockets = SocketSet::new(Vec::new());
    let mut conns = Vec::new();
    if !matches!(server, Server::Refuse) {
        for _ in 0..LISTENERS {
            let mut s = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; BUFFER]),
                tcp::SocketBuffer::new(vec![0; BUFFER]),
            );
            s.listen(PORT).unwrap();
            conns.push(Conn {
                handle: sockets.add(s),
                request: Vec::new(),
                answered: false,
            });
        }
    }
    let mut buf = vec![0u8; 65536];
    let mut scratch = vec![0u8; 16384];
    loop {
        // Ingress.
        loop {
            match sock.try_recv(&mut buf) {
                Ok(n) => {
                    let mut dev = Device {
                        rx: Some(&buf[..n]),
                        tx: &mut tx,
                    };
                    iface.poll_ingress_single(now(), &mut dev, &mut sockets);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return,
            }
        }
        let egress = |iface: &mut Interface,
                      sockets: &mut SocketSet,
                      tx: &mut VecDeque<Vec<u8>>| {
            let mut dev = Device { rx: None, tx };
            while iface.poll_egress(now(), &mut dev, sockets) == PollResult::SocketStateChanged {}
        };
        egress(&mut iface, &mut sockets, &mut tx);
        for conn in &mut conns {
            let s = sockets.get_mut::<tcp::Socket>(conn.handle);
            serve(server, s, conn, &mut scratch, &stats);
        }
        egress(&mut iface, &mut sockets, &mut tx);
        // Flush.
        while let Some(frame) = tx.front() {
            match sock.try_send(frame) {
                Ok(_) => {
                    tx.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return,
            }
        }
        let delay = if tx.is_empty() {
            iface
                .poll_delay(now(), &sockets)
                .map(|d| Duration::from_micros(d.total_micros()))
                .unwrap_or(Duration::from_secs(3600))
        } else {
            Duration::from_secs(3600)
        };
        if delay.is_zero() {
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            r = sock.readable() => if r.is_err() { return },
            r = sock.writable(), if !tx.is_empty() => if r.is_err() { return },
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

fn serve(
    server: Server,
    s: &mut tcp::Socket,
    conn: &mut Conn,
    scratch: &mut [u8],
    stats: &GuestStats,
) {
    if matches!(s.state(), State::Listen | State::SynReceived) {
        return;
    }
    // Data first: it may have come with the FIN that ended the connection.
    match server {
        Server::Echo => {
            while s.can_recv() && s.can_send() {
                let room = (s.send_capacity() - s.send_queue()).min(scratch.len());
                let n = s.recv_slice(&mut scratch[..room]).unwrap_or(0);
                if n == 0 {
                    break;
                }
                stats.received.fetch_add(n as u64, Relaxed);
                s.send_slice(&scratch[..n]).unwrap();
            }
        }
        Server::Http(response) => {
            while s.can_recv() {
                let n = s.recv_slice(scratch).unwrap_or(0);
                if n == 0 {
                    break;
                }
                stats.received.fetch_add(n as u64, Relaxed);
                if !conn.answered {
                    conn.request.extend_from_slice(&scratch[..n]);
                }
            }
            if !conn.answered && conn.request.windows(4).any(|w| w == b"\r\n\r\n") {
                if s.may_send() {
                    s.send_slice(response).unwrap();
                    s.close();
                }
                conn.answered = true;
            }
        }
        Server::Refuse => {}
    }
    match s.state() {
        State::CloseWait if s.recv_queue() == 0 => s.close(),
        State::Closed | State::TimeWait if s.recv_queue() == 0 => {
            conn.request.clear();
            conn.answered = false;
            let _ = s.listen(PORT);
        }
        _ => {}
    }
}
