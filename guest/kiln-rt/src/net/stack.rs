//! The network stack: one smoltcp [`Interface`] over one driver, the
//! sockets, and the bookkeeping that gives them the usual semantics on top
//! of smoltcp's one-connection-per-socket model:
//!
//! * a listener keeps a *backlog* of listening sockets and refills it after
//!   every received frame, so bursts of connections are all accepted;
//! * a dropped stream closes in the background (an *orphan*) and is removed
//!   once closed, or after [`ORPHAN_LINGER`]; TIME-WAIT is not kept;
//! * TCP sockets are capped by memory ([`Limits`]); at the cap, the oldest
//!   half-open connection makes room for a new one (SYN floods cannot lock
//!   out real clients or exhaust the heap).
//!
//! The executor drives the stack through [`NetReactor`]: a turn receives
//! every waiting frame (in bounded batches), sends what the sockets queued,
//! and computes when smoltcp next needs attention.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec;
use alloc::vec::Vec;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use core::task::{Context, Poll, Waker};
use core::time::Duration;

use smoltcp::iface::{
    Config, Interface, PollIngressSingleResult, PollResult, SocketHandle, SocketSet,
};
use smoltcp::socket::{dhcpv4, tcp};
use smoltcp::time::{Duration as SmolDuration, Instant as SmolInstant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Cidr};

use super::config::{self, IfaceConfig};
pub(crate) use super::device::FrameDevice;
use super::driver::{HypercallDriver, LoopbackDriver, NetDriver};
use super::Error;
use crate::executor::{LazyNow, Reactor};
use crate::global::Global;
use crate::time;

/// Frames taken in per turn at most, so a flood cannot starve the tasks.
const MAX_FRAMES_PER_TURN: usize = 256;
/// Egress passes per turn at most (each sends at most one frame per socket).
const MAX_EGRESS_PASSES: usize = 64;
/// Fragments of one IPv4 packet sent per call of `send_fragments` at most
/// (a 65,535-byte packet needs 45 at an MTU of 1500, under 120 at 576).
const MAX_FRAGMENTS: usize = 128;
/// How long an incomplete fragmented IPv4 packet may wait for its missing
/// fragments (they normally arrive back to back). smoltcp's 60 s would let
/// a few lost fragments occupy all [`REASSEMBLY_SLOTS`] for a minute.
const REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(5);
/// IPv4 packets in reassembly at once (the `reassembly-buffer-count-*`
/// feature of smoltcp; each buffer grows on the heap to its packet's size).
pub(crate) const REASSEMBLY_SLOTS: usize = 4;
const _: () = assert!(smoltcp::config::REASSEMBLY_BUFFER_COUNT == REASSEMBLY_SLOTS);
/// The largest UDP payload sent over IPv4 in fragments: a 65,535-byte packet
/// less the IP and UDP headers, or less when smoltcp's fragmentation buffer
/// (which holds the whole packet) is smaller: 1,500 bytes by default, 64 KiB
/// with the `udp-64k` feature.
pub(crate) const MAX_UDP_PAYLOAD_V4: usize = {
    let packet = if smoltcp::config::FRAGMENTATION_BUFFER_SIZE < 65535 {
        smoltcp::config::FRAGMENTATION_BUFFER_SIZE
    } else {
        65535
    };
    packet - 28
};
/// A half-open or unresponsive connection is dropped after this much
/// silence from the peer while we wait for it (SYN-RECEIVED, unacknowledged
/// data).
const TCP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a half-open connection may wait for the handshake to finish.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stream dropped by the application may take to close.
pub(crate) const ORPHAN_LINGER: Duration = Duration::from_secs(30);
/// First ephemeral port.
const EPHEMERAL_FIRST: u16 = 49152;

/// Sizes and limits of the sockets.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Receive buffer of a TCP socket.
    pub(crate) tcp_rx: usize,
    /// Transmit buffer of a TCP socket.
    pub(crate) tcp_tx: usize,
    /// Listening sockets kept ready per listener.
    pub(crate) backlog: usize,
    /// TCP sockets at most (listening, connected and closing).
    pub(crate) max_tcp: usize,
}

impl Limits {
    /// Buffers of 16 KiB each way; TCP sockets may use half the heap.
    fn for_heap(heap: u64) -> Self {
        let tcp_rx = 16 * 1024;
        let tcp_tx = 16 * 1024;
        let per_socket = (tcp_rx + tcp_tx + 1024) as u64;
        let max_tcp = if heap == 0 {
            256
        } else {
            (heap / 2 / per_socket).clamp(16, 65536) as usize
        };
        Limits {
            tcp_rx,
            tcp_tx,
            backlog: 4,
            max_tcp,
        }
    }
}

/// One listening port.
struct Listener {
    port: u16,
    /// Sockets in LISTEN, waiting for a SYN.
    listening: Vec<SocketHandle>,
    /// Sockets that got a SYN, oldest first, with when they did: waiting
    /// for the handshake or for `accept`.
    pending: VecDeque<(SocketHandle, u64)>,
    /// The task waiting in `accept`.
    waker: Option<Waker>,
}

/// A stream the application dropped, closing in the background.
struct Orphan {
    handle: SocketHandle,
    since: u64,
    aborted: bool,
}

/// Counters, for tests and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames received from the driver.
    pub rx_frames: u64,
    /// Frames handed to the driver.
    pub tx_frames: u64,
    /// TCP sockets alive (listening, connected, closing).
    pub tcp_sockets: usize,
    /// Streams dropped by the application and still closing.
    pub closing: usize,
    /// UDP sockets alive.
    pub udp_sockets: usize,
    /// Half-open connections dropped to make room at the socket limit.
    pub evicted: u64,
}

/// All network state of the image.
pub(crate) struct Stack {
    /// On the heap: with `udp-64k` it holds smoltcp's 64 KiB IPv4
    /// fragmentation buffer, which would otherwise sit in the static that
    /// holds the stack (and in the image's data, since that static is not
    /// all zeros) and be copied with every move of the stack.
    pub(crate) iface: Box<Interface>,
    pub(crate) device: FrameDevice,
    pub(crate) sockets: SocketSet<'static>,
    pub(crate) limits: Limits,
    listeners: BTreeMap<u64, Listener>,
    next_listener: u64,
    orphans: Vec<Orphan>,
    dhcp: Option<SocketHandle>,
    /// Whether IPv4 is configured (static, or DHCP got a lease), or no
    /// DHCP was asked for.
    configured: bool,
    config_waiters: Vec<Waker>,
    /// Whether this stack tells the tender it is ready (READY) once an
    /// application socket is bound and IPv4 is configured: stacks on a
    /// device the tender attached do, loopback and custom drivers do not.
    announce: bool,
    /// A `TcpListener` or `UdpSocket` was bound.
    bound: bool,
    /// Sockets were used since the last turn: output may be queued.
    pub(crate) dirty: bool,
    /// An empty socket set: egress passes over it only send fragments.
    no_sockets: SocketSet<'static>,
    tcp_count: usize,
    pub(crate) udp_count: usize,
    next_port: u16,
    /// When smoltcp next needs a turn (monotonic ns).
    poll_at: Option<u64>,
    /// Consecutive turns that did nothing although smoltcp asked for one.
    idle_turns: u32,
    evicted: u64,
}

/// Converts monotonic nanoseconds to smoltcp's clock.
fn smol_now(ns: u64) -> SmolInstant {
    SmolInstant::from_micros((ns / 1000) as i64)
}

/// Converts smoltcp's clock back to monotonic nanoseconds.
fn from_smol(t: SmolInstant) -> u64 {
    u64::try_from(t.total_micros())
        .unwrap_or(0)
        .saturating_mul(1000)
}

/// A `core` duration as smoltcp's.
pub(crate) fn smol_duration(d: Duration) -> SmolDuration {
    SmolDuration::from_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A 64-bit mix (splitmix64's finaliser), for the random seed.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Stack {
    /// A stack over `driver` with `cfg`'s addresses.
    pub(crate) fn new(driver: Box<dyn NetDriver>, cfg: IfaceConfig) -> Stack {
        Stack::with_device(FrameDevice::new(driver), cfg)
    }

    /// A stack over `device` with `cfg`'s addresses.
    pub(crate) fn with_device(mut device: FrameDevice, cfg: IfaceConfig) -> Stack {
        let now = time::monotonic_ns();
        let mac = device.driver().mac();
        let seed = mix(time::wall_clock().as_nanos() as u64 ^ mix(now))
            ^ mix(u64::from_le_bytes([
                mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 0, 0,
            ]));
        let mac = if config::valid_mac(mac) {
            mac
        } else {
            let replacement = config::fallback_mac(seed);
            log::warn!("net: device MAC {mac:02x?} is not unicast; using {replacement:02x?}");
            replacement
        };
        let mut iface_config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        iface_config.random_seed = seed;
        let mut iface = Box::new(Interface::new(iface_config, &mut device, smol_now(now)));
        iface.set_reassembly_timeout(smol_duration(REASSEMBLY_TIMEOUT));
        let link_local = config::link_local(mac);
        iface.update_ip_addrs(|addrs| {
            let mut add = |cidr: IpCidr| {
                if addrs.push(cidr).is_err() {
                    log::warn!("net: too many addresses; {cidr} left out");
                }
            };
            add(IpCidr::new(link_local.into(), 64));
            if let Some((a, prefix)) = cfg.ipv6 {
                add(IpCidr::new(a.into(), prefix));
            }
            if let Some((a, prefix)) = cfg.ipv4 {
                add(IpCidr::new(a.into(), prefix));
            }
        });
        if let Some(gw) = cfg.ipv4_gateway {
            if iface.routes_mut().add_default_ipv4_route(gw).is_err() {
                log::warn!("net: cannot add the IPv4 default route via {gw}");
            }
        }
        if let Some(gw) = cfg.ipv6_gateway {
            if iface.routes_mut().add_default_ipv6_route(gw).is_err() {
                log::warn!("net: cannot add the IPv6 default route via {gw}");
            }
        }
        let mut sockets = SocketSet::new(Vec::new());
        let dhcp = (cfg.dhcp4 && cfg.ipv4.is_none()).then(|| {
            let mut socket = dhcpv4::Socket::new();
            // Leases are renewed by the socket; cap them so a lost server is
            // noticed within a reasonable time.
            socket.set_max_lease_duration(Some(SmolDuration::from_secs(3600)));
            // An instance starts in milliseconds; a DISCOVER lost while the
            // host side came up should not cost smoltcp's default 10 s.
            let mut retry = dhcpv4::RetryConfig::default();
            retry.discover_timeout = SmolDuration::from_secs(2);
            retry.initial_request_timeout = SmolDuration::from_secs(2);
            socket.set_retry_config(retry);
            sockets.add(socket)
        });
        Stack {
            iface,
            device,
            sockets,
            limits: Limits::for_heap(crate::heap_size()),
            listeners: BTreeMap::new(),
            next_listener: 1,
            orphans: Vec::new(),
            configured: dhcp.is_none(),
            dhcp,
            announce: false,
            bound: false,
            config_waiters: Vec::new(),
            dirty: true,
            no_sockets: SocketSet::new(Vec::new()),
            tcp_count: 0,
            udp_count: 0,
            next_port: EPHEMERAL_FIRST.wrapping_add((seed as u16) % 8192),
            poll_at: None,
            idle_turns: 0,
            evicted: 0,
        }
    }

    /// The stack of the first network device the tender attached (or the
    /// one named `name`).
    pub(crate) fn from_boot(name: Option<&str>) -> Result<Stack, Error> {
        let (index, dev) = crate::boot::devices()
            .find(|(_, d)| {
                d.kind == kiln_abi::device::NET
                    && name.is_none_or(|n| crate::boot::device_name(d) == n)
            })
            .ok_or(Error::NoDevice)?;
        let driver: Box<dyn NetDriver> =
            match super::ring::RingDriver::attach(index, dev.unit as usize, dev.mac) {
                Some(rings) => Box::new(rings),
                None => Box::new(HypercallDriver::new(index, dev.unit as usize, dev.mac)),
            };
        let cfg = IfaceConfig::from_abi(&dev.net);
        let mut stack = Stack::new(driver, cfg);
        stack.announce = true;
        let m = dev.mac;
        log::info!(
            "net: {} up, mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, mtu {}{}",
            crate::boot::device_name(dev),
            m[0],
            m[1],
            m[2],
            m[3],
            m[4],
            m[5],
            stack.device.mtu(),
            if stack.dhcp.is_some() {
                ", IPv4 by DHCP"
            } else {
                ""
            }
        );
        Ok(stack)
    }

    /// A stack on an in-image loopback device: 127.0.0.1/8 and ::1.
    pub(crate) fn loopback() -> Stack {
        let cfg = IfaceConfig {
            ipv4: Some((Ipv4Addr::LOCALHOST, 8)),
            ipv6: Some((Ipv6Addr::LOCALHOST, 128)),
            ..IfaceConfig::default()
        };
        Stack::new(Box::new(LoopbackDriver::new(1500)), cfg)
    }

    /// Counters.
    pub(crate) fn stats(&self) -> Stats {
        Stats {
            rx_frames: self.device.rx_frames,
            tx_frames: self.device.tx_frames,
            tcp_sockets: self.tcp_count,
            closing: self.orphans.len(),
            udp_sockets: self.udp_count,
            evicted: self.evicted,
        }
    }

    /// The interface's addresses.
    pub(crate) fn addresses(&self) -> Vec<(IpAddr, u8)> {
        self.iface
            .ip_addrs()
            .iter()
            .map(|c| (c.address().into(), c.prefix_len()))
            .collect()
    }

    /// The largest UDP payload `send_to` takes for `addr`'s family. IPv4
    /// datagrams too large for a frame go out in fragments, up to
    /// [`MAX_UDP_PAYLOAD_V4`], when the MTU lets each fragment carry a
    /// multiple of 8 bytes, as kiln's MTU of 1500 does (1,480; smoltcp 0.12
    /// did not round fragments down, so other MTUs garbled them; 0.13 fixed
    /// that, and this rule could be relaxed). IPv6 datagrams must fit one
    /// frame: smoltcp (0.14) has no IPv6 fragmentation.
    pub(crate) fn max_udp_payload(&self, addr: &IpAddr) -> usize {
        let mtu = self.device.mtu();
        if addr.is_ipv4() {
            if mtu.saturating_sub(20).is_multiple_of(8) {
                MAX_UDP_PAYLOAD_V4.max(mtu.saturating_sub(28))
            } else {
                mtu.saturating_sub(28)
            }
        } else {
            mtu.saturating_sub(48)
        }
    }

    // ---- TCP sockets -------------------------------------------------

    /// A new TCP socket with our buffers, or `None` at the limit.
    pub(crate) fn new_tcp(&mut self) -> Option<SocketHandle> {
        if self.tcp_count >= self.limits.max_tcp {
            return None;
        }
        let rx = tcp::SocketBuffer::new(vec![0; self.limits.tcp_rx]);
        let tx = tcp::SocketBuffer::new(vec![0; self.limits.tcp_tx]);
        let mut socket = tcp::Socket::new(rx, tx);
        socket.set_timeout(Some(smol_duration(TCP_TIMEOUT)));
        self.tcp_count += 1;
        self.dirty = true;
        Some(self.sockets.add(socket))
    }

    /// Removes a TCP socket from the set.
    fn remove_tcp(&mut self, handle: SocketHandle) {
        let socket = self.sockets.remove(handle);
        self.tcp_count = self.tcp_count.saturating_sub(1);
        drop(socket);
    }

    pub(crate) fn tcp(&mut self, handle: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(handle)
    }

    /// The application dropped a stream: close it in the background.
    pub(crate) fn release_tcp(&mut self, handle: SocketHandle) {
        let socket = self.tcp(handle);
        match socket.state() {
            tcp::State::Closed | tcp::State::TimeWait => self.remove_tcp(handle),
            tcp::State::Listen | tcp::State::SynSent => {
                socket.abort();
                self.remove_tcp(handle);
            }
            _ => {
                socket.close();
                self.orphans.push(Orphan {
                    handle,
                    since: time::monotonic_ns(),
                    aborted: false,
                });
                self.dirty = true;
            }
        }
    }

    /// An unused local port for a new connection or UDP socket.
    pub(crate) fn ephemeral_port(&mut self) -> u16 {
        for _ in 0..(65535 - EPHEMERAL_FIRST) {
            let port = self.next_port;
            self.next_port = if self.next_port == u16::MAX {
                EPHEMERAL_FIRST
            } else {
                self.next_port + 1
            };
            if !self.port_in_use(port) {
                return port;
            }
        }
        // Every port is taken by a live socket: reuse one (connections are
        // told apart by the remote end as well).
        self.next_port
    }

    fn port_in_use(&self, port: u16) -> bool {
        self.sockets.iter().any(|(_, s)| match s {
            smoltcp::socket::Socket::Tcp(t) => {
                t.local_endpoint().is_some_and(|e| e.port == port)
                    || t.listen_endpoint().port == port
            }
            smoltcp::socket::Socket::Udp(u) => u.endpoint().port == port,
            _ => false,
        })
    }

    // ---- listeners ---------------------------------------------------

    /// Starts listening on `port` (all addresses); returns the listener id.
    pub(crate) fn listen(&mut self, port: u16) -> Result<u64, Error> {
        if port == 0 {
            return Err(Error::InvalidInput);
        }
        if self.listeners.values().any(|l| l.port == port) {
            return Err(Error::AddrInUse);
        }
        let id = self.next_listener;
        self.next_listener += 1;
        self.listeners.insert(
            id,
            Listener {
                port,
                listening: Vec::new(),
                pending: VecDeque::new(),
                waker: None,
            },
        );
        self.refill(id, time::monotonic_ns());
        match self.listeners.get(&id) {
            Some(l) if !l.listening.is_empty() => {
                self.note_bound();
                Ok(id)
            }
            _ => {
                self.unlisten(id);
                Err(Error::TooManySockets)
            }
        }
    }

    /// Stops a listener: its listening sockets go, connections not yet
    /// accepted are closed.
    pub(crate) fn unlisten(&mut self, id: u64) {
        let Some(listener) = self.listeners.remove(&id) else {
            return;
        };
        for handle in listener.listening {
            self.remove_tcp(handle);
        }
        for (handle, _) in listener.pending {
            self.release_tcp(handle);
        }
        drop(listener.waker);
    }

    /// Moves listener `id`'s sockets that left LISTEN to its pending queue,
    /// those that went back to LISTEN to its backlog, and tops the backlog
    /// up.
    fn refill(&mut self, id: u64, now: u64) {
        let Some(mut listener) = self.checkout(id) else {
            return;
        };
        // smoltcp puts a socket reset during its handshake back into LISTEN
        // (RFC 9293 3.10.7.4): it is a listening socket again, not a
        // connection to hand out.
        let mut i = 0;
        while i < listener.pending.len() {
            let (handle, _) = listener.pending[i];
            if self.tcp(handle).state() == tcp::State::Listen {
                listener.pending.remove(i);
                listener.listening.push(handle);
            } else {
                i += 1;
            }
        }
        let mut i = 0;
        while i < listener.listening.len() {
            let handle = listener.listening[i];
            match self.tcp(handle).state() {
                tcp::State::Listen => i += 1,
                tcp::State::Closed => {
                    listener.listening.swap_remove(i);
                    self.remove_tcp(handle);
                }
                _ => {
                    listener.listening.swap_remove(i);
                    listener.pending.push_back((handle, now));
                }
            }
        }
        while listener.listening.len() < self.limits.backlog {
            // At the limit, keep one listening socket by dropping the oldest
            // half-open connection (a SYN flood must not lock clients out).
            if self.tcp_count >= self.limits.max_tcp
                && (!listener.listening.is_empty() || !self.evict_half_open(&mut listener))
            {
                break;
            }
            let Some(handle) = self.new_tcp() else { break };
            let socket = self.tcp(handle);
            socket.set_timeout(Some(smol_duration(HANDSHAKE_TIMEOUT)));
            if socket.listen(listener.port).is_err() {
                self.remove_tcp(handle);
                break;
            }
            listener.listening.push(handle);
        }
        self.checkin(id, listener);
    }

    /// Takes listener `id`'s state out of the table (leaving the entry, so
    /// the hot path allocates nothing), to work on it alongside `self`.
    fn checkout(&mut self, id: u64) -> Option<Listener> {
        let l = self.listeners.get_mut(&id)?;
        Some(Listener {
            port: l.port,
            listening: core::mem::take(&mut l.listening),
            pending: core::mem::take(&mut l.pending),
            waker: l.waker.take(),
        })
    }

    /// Puts back what [`checkout`](Self::checkout) took.
    fn checkin(&mut self, id: u64, listener: Listener) {
        if let Some(slot) = self.listeners.get_mut(&id) {
            *slot = listener;
        }
    }

    /// At the socket limit: drops the oldest connection of `listener` still
    /// in its handshake, if any. Returns whether one was dropped.
    fn evict_half_open(&mut self, listener: &mut Listener) -> bool {
        let oldest = listener
            .pending
            .iter()
            .position(|&(h, _)| self.tcp(h).state() == tcp::State::SynReceived);
        match oldest.and_then(|i| listener.pending.remove(i)) {
            Some((handle, _)) => {
                self.tcp(handle).abort();
                self.remove_tcp(handle);
                self.evicted += 1;
                true
            }
            None => false,
        }
    }

    fn refill_all(&mut self, now: u64) {
        let mut next = 0;
        while let Some(&id) = self.listeners.range(next..).next().map(|(id, _)| id) {
            self.refill(id, now);
            next = id + 1;
        }
    }

    /// `accept` for listener `id`: the oldest established connection, or
    /// `Pending` with the waker stored.
    pub(crate) fn poll_accept(
        &mut self,
        id: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Result<SocketHandle, Error>> {
        let Some(mut listener) = self.checkout(id) else {
            return Poll::Ready(Err(Error::InvalidInput));
        };
        let mut found = None;
        let mut i = 0;
        while i < listener.pending.len() {
            let (handle, _) = listener.pending[i];
            match self.tcp(handle).state() {
                // Back in LISTEN: the refill below returns it to the backlog.
                tcp::State::SynReceived | tcp::State::Listen => i += 1,
                tcp::State::Closed => {
                    listener.pending.remove(i);
                    self.remove_tcp(handle);
                }
                _ => {
                    listener.pending.remove(i);
                    found = Some(handle);
                    break;
                }
            }
        }
        let result = match found {
            Some(handle) => {
                self.tcp(handle)
                    .set_timeout(Some(smol_duration(TCP_TIMEOUT)));
                Poll::Ready(Ok(handle))
            }
            None => {
                listener.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        };
        self.checkin(id, listener);
        // The backlog may have been short (socket limit): try again now
        // that sockets may have been freed.
        self.refill(id, time::monotonic_ns());
        result
    }

    /// Wakes `accept`ers whose listener has a connection ready.
    fn wake_acceptors(&mut self) {
        let sockets = &self.sockets;
        for listener in self.listeners.values_mut() {
            if listener.waker.is_none() {
                continue;
            }
            let ready = listener.pending.iter().any(|&(h, _)| {
                !matches!(
                    sockets.get::<tcp::Socket>(h).state(),
                    tcp::State::SynReceived | tcp::State::Listen
                )
            });
            if ready {
                if let Some(waker) = listener.waker.take() {
                    waker.wake();
                }
            }
        }
    }

    /// Removes closed orphans; aborts those that linger too long.
    fn reap(&mut self, now: u64) {
        let linger = ORPHAN_LINGER.as_nanos() as u64;
        let mut i = 0;
        while i < self.orphans.len() {
            let orphan = &mut self.orphans[i];
            let handle = orphan.handle;
            let socket = self.sockets.get_mut::<tcp::Socket>(handle);
            let done = match socket.state() {
                tcp::State::Closed | tcp::State::TimeWait => true,
                _ if orphan.aborted => true,
                _ if now.saturating_sub(orphan.since) > linger => {
                    // One more turn so the reset goes out.
                    socket.abort();
                    orphan.aborted = true;
                    false
                }
                _ => false,
            };
            if done {
                self.orphans.swap_remove(i);
                self.remove_tcp(handle);
            } else {
                i += 1;
            }
        }
    }

    // ---- readiness ---------------------------------------------------

    /// An application socket was bound: the application serves once IPv4
    /// is configured too.
    pub(crate) fn note_bound(&mut self) {
        self.bound = true;
        self.announce_if_ready();
    }

    /// Whether the stack would call READY now (bound and configured).
    pub(crate) fn serving(&self) -> bool {
        self.bound && self.configured
    }

    /// Calls READY when the application serves (once; later calls are
    /// no-ops in [`crate::ready`]).
    fn announce_if_ready(&mut self) {
        if self.announce && self.serving() {
            crate::ready();
        }
    }

    // ---- configuration -----------------------------------------------

    /// Applies DHCP results.
    fn dhcp_events(&mut self) {
        let Some(handle) = self.dhcp else { return };
        let event = match self.sockets.get_mut::<dhcpv4::Socket>(handle).poll() {
            None => return,
            Some(dhcpv4::Event::Configured(cfg)) => Some((cfg.address, cfg.router)),
            Some(dhcpv4::Event::Deconfigured) => None,
        };
        self.set_ipv4(event);
    }

    /// Replaces the IPv4 address and default route.
    fn set_ipv4(&mut self, config: Option<(Ipv4Cidr, Option<Ipv4Addr>)>) {
        self.iface.update_ip_addrs(|addrs| {
            addrs.retain(|c| !matches!(c, IpCidr::Ipv4(_)));
            if let Some((cidr, _)) = config {
                if addrs.push(IpCidr::Ipv4(cidr)).is_err() {
                    log::warn!("net: too many addresses; {cidr} left out");
                }
            }
        });
        self.iface.routes_mut().remove_default_ipv4_route();
        match config {
            Some((cidr, router)) => {
                if let Some(gw) = router {
                    let _ = self.iface.routes_mut().add_default_ipv4_route(gw);
                }
                match router {
                    Some(gw) => log::info!("net: IPv4 {cidr} via {gw} (DHCP)"),
                    None => log::info!("net: IPv4 {cidr} (DHCP)"),
                }
                self.configured = true;
                for waker in self.config_waiters.drain(..) {
                    waker.wake();
                }
                self.announce_if_ready();
            }
            None => {
                // The DHCP socket reports "deconfigured" once at start too.
                if self.configured {
                    log::warn!("net: DHCP lease lost");
                }
                self.configured = false;
            }
        }
    }

    /// `wait_configured`: ready once IPv4 is configured.
    pub(crate) fn poll_configured(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.configured {
            Poll::Ready(())
        } else {
            if !self.config_waiters.iter().any(|w| w.will_wake(cx.waker())) {
                self.config_waiters.push(cx.waker().clone());
            }
            Poll::Pending
        }
    }

    // ---- driving -----------------------------------------------------

    /// Whether a turn is due.
    fn has_work(&mut self, ready: u64, now: &mut LazyNow) -> bool {
        let driver = self.device.driver_mut();
        driver.note_ready(ready);
        self.dirty || driver.input_pending() || self.poll_at.is_some_and(|t| t <= now.get())
    }

    /// Sends the rest of the IPv4 packet smoltcp's fragmenter holds, if the
    /// device saw its first fragment go out, and lets sockets send again.
    /// Returns whether the fragmenter is free (false: the device ran out of
    /// room first; the next turn goes on).
    fn send_fragments(&mut self, ts: SmolInstant) -> bool {
        if !self.device.fragments_pending {
            return true;
        }
        // Egress over no sockets sends one fragment (or, after the last,
        // frees the fragmenter); with no sockets, `poll_at` is then only
        // `Some` while the fragmenter holds a packet.
        self.device.fragments_pending = false;
        for _ in 0..MAX_FRAGMENTS {
            self.iface
                .poll_egress(ts, &mut self.device, &mut self.no_sockets);
            if self.iface.poll_at(ts, &self.no_sockets).is_none() {
                return true;
            }
            if !self.device.driver().can_transmit() {
                break;
            }
        }
        self.device.fragments_pending = true;
        false
    }

    /// Receives waiting frames, sends queued ones, wakes tasks.
    pub(crate) fn turn(&mut self, now: u64) {
        let ts = smol_now(now);
        let rx_before = self.device.rx_frames;
        let tx_before = self.device.tx_frames;
        for _ in 0..MAX_FRAMES_PER_TURN {
            match self
                .iface
                .poll_ingress_single(ts, &mut self.device, &mut self.sockets)
            {
                PollIngressSingleResult::None => break,
                PollIngressSingleResult::PacketProcessed => {}
                // A SYN may have used up a listening socket: replace it
                // before the next frame, which may be another SYN.
                PollIngressSingleResult::SocketStateChanged => self.refill_all(now),
            }
        }
        self.dhcp_events();
        for _ in 0..MAX_EGRESS_PASSES {
            // A packet in fragments goes out whole before sockets send more
            // (one may start another; the device holds back the rest).
            if !self.send_fragments(ts) {
                break;
            }
            let sent = self
                .iface
                .poll_egress(ts, &mut self.device, &mut self.sockets);
            if sent == PollResult::None {
                break;
            }
        }
        self.send_fragments(ts);
        self.device.flush();
        self.refill_all(now);
        self.wake_acceptors();
        self.reap(now);
        self.dirty = false;

        let moved = self.device.rx_frames != rx_before || self.device.tx_frames != tx_before;
        self.poll_at = match self.iface.poll_at(ts, &self.sockets).map(from_smol) {
            Some(at) if at <= now => {
                if moved {
                    self.idle_turns = 0;
                    Some(at)
                } else {
                    // smoltcp wants attention but could do nothing: back
                    // off (1 ms, doubling to 64 ms) instead of spinning.
                    self.idle_turns = (self.idle_turns + 1).min(7);
                    Some(now + (1_000_000u64 << (self.idle_turns - 1)))
                }
            }
            other => {
                self.idle_turns = 0;
                other
            }
        };
    }
}

/// The stack, once started.
static STACK: Global<Option<Stack>> = Global::new(None);

/// Runs `f` on the stack, starting it on the first network device if it is
/// not running yet.
pub(crate) fn with<R>(f: impl FnOnce(&mut Stack) -> R) -> Result<R, Error> {
    STACK.with(|slot| {
        let stack = match slot {
            Some(stack) => stack,
            None => {
                let stack = Stack::from_boot(None)?;
                crate::executor::set_reactor(&NetReactor);
                slot.insert(stack)
            }
        };
        Ok(f(stack))
    })
}

/// Runs `f` on the stack if it is running (for destructors).
pub(crate) fn with_running<R>(f: impl FnOnce(&mut Stack) -> R) -> Option<R> {
    STACK.with(|slot| slot.as_mut().map(f))
}

/// Installs `stack` unless one is running already.
pub(crate) fn install(make: impl FnOnce() -> Result<Stack, Error>) -> Result<(), Error> {
    STACK.with(|slot| {
        if slot.is_some() {
            return Err(Error::AlreadyStarted);
        }
        *slot = Some(make()?);
        crate::executor::set_reactor(&NetReactor);
        Ok(())
    })
}

/// Tears the stack down (host tests only).
#[cfg(test)]
pub(crate) fn reset() {
    let old = STACK.with(|slot| slot.take());
    drop(old);
}

/// The executor's handle on the stack.
struct NetReactor;

impl Reactor for NetReactor {
    fn interest(&self) -> u64 {
        with_running(|s| s.device.driver().poll_interest()).unwrap_or(0)
    }

    fn has_work(&self, ready: u64, now: &mut LazyNow) -> bool {
        with_running(|s| s.has_work(ready, now)).unwrap_or(false)
    }

    fn turn(&self, now: u64) {
        with_running(|s| s.turn(now));
    }

    fn deadline(&self) -> Option<u64> {
        with_running(|s| s.poll_at).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_waits_for_both_a_bound_socket_and_the_dhcp_lease() {
        let _serial = crate::global::tests::serial();
        let cfg = IfaceConfig {
            dhcp4: true,
            ..IfaceConfig::default()
        };
        let mut stack = Stack::new(Box::new(LoopbackDriver::new(1500)), cfg);
        stack.announce = true;
        assert!(!stack.serving());
        stack.note_bound();
        assert!(!stack.serving(), "no address yet: not ready");
        assert!(!crate::is_ready());
        let lease = Ipv4Cidr::new(Ipv4Addr::new(10, 0, 0, 2), 24);
        stack.set_ipv4(Some((lease, Some(Ipv4Addr::new(10, 0, 0, 1)))));
        assert!(stack.serving());
        assert!(crate::is_ready(), "the lease after the bind calls READY");
        // Losing the lease does not take READY back (it is reported once).
        stack.set_ipv4(None);
        assert!(!stack.serving());
        assert!(crate::is_ready());
    }

    #[test]
    fn udp_datagrams_go_in_fragments_only_over_ipv4_at_a_suitable_mtu() {
        let _serial = crate::global::tests::serial();
        let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let stack = |mtu| Stack::new(Box::new(LoopbackDriver::new(mtu)), IfaceConfig::default());
        let s = stack(1500);
        assert_eq!(s.max_udp_payload(&v4), MAX_UDP_PAYLOAD_V4.max(1472));
        assert_eq!(s.max_udp_payload(&v6), 1452);
        // 1479 - 20 is no multiple of 8: one frame at most.
        let s = stack(1479);
        assert_eq!(s.max_udp_payload(&v4), 1451);
        assert_eq!(s.max_udp_payload(&v6), 1431);
    }

    #[test]
    fn static_addresses_serve_on_the_first_bind() {
        let _serial = crate::global::tests::serial();
        let cfg = IfaceConfig {
            ipv4: Some((Ipv4Addr::new(10, 0, 0, 2), 24)),
            ..IfaceConfig::default()
        };
        let mut stack = Stack::new(Box::new(LoopbackDriver::new(1500)), cfg);
        assert!(!stack.serving());
        stack.listen(80).unwrap();
        assert!(stack.serving());
        assert_eq!(stack.listen(0), Err(Error::InvalidInput));
    }
}
