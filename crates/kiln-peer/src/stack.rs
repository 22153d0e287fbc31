//! The link's TCP/IP endpoint without any I/O: smoltcp's interface and
//! sockets behind the [`guard`](crate::guard), fed one frame at a time,
//! sending into any [`FrameSink`].
//!
//! The link task (`link.rs`) drives it with the instance's socket; the fuzz
//! target `peer_frames` and `kiln-bench peer` drive the same code with
//! frames from memory, so what they find and measure is what runs.

use std::io;

use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr, IpEndpoint, IpListenEndpoint};

use crate::guard::Guard;
pub use crate::guard::Refusal;
use crate::{LinkConfig, KEEP_ALIVE, MAX_FRAME, TCP_BUFFER};

/// Calls of `poll_egress` per [`Stack::egress`]: smoltcp sends at most one
/// segment per socket per call.
const EGRESS_BUDGET: usize = 256;

/// Where the endpoint's outgoing frames go.
pub trait FrameSink {
    /// Whether a frame can be taken now. When it cannot, smoltcp keeps the
    /// data in its TCP buffers and tries again later.
    fn ready(&self) -> bool;

    /// Takes one frame of `len` bytes, which `build` writes.
    fn send<R>(&mut self, len: usize, build: impl FnOnce(&mut [u8]) -> R) -> R;
}

/// Frames collected in memory (tests, fuzzing, measurements).
impl FrameSink for Vec<Vec<u8>> {
    fn ready(&self) -> bool {
        true
    }

    fn send<R>(&mut self, len: usize, build: impl FnOnce(&mut [u8]) -> R) -> R {
        let mut frame = vec![0u8; len];
        let result = build(&mut frame);
        self.push(frame);
        result
    }
}

/// One link's endpoint: the host end (gateway) of a point-to-point
/// Ethernet link to one guest, connecting to one guest port.
pub struct Stack {
    iface: Interface,
    sockets: SocketSet<'static>,
    guard: Guard,
    host_ip: IpAddress,
    guest: IpEndpoint,
}

/// Why [`Stack::connect`] could not connect.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to the guest: {0}")]
pub struct ConnectFailed(#[from] tcp::ConnectError);

impl Stack {
    /// An endpoint as `cfg` describes, whose generator (ARP and other
    /// non-secret choices) is seeded with `seed`.
    pub fn new(cfg: &LinkConfig, seed: u64) -> io::Result<Stack> {
        if cfg.prefix > 32 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("link prefix /{} is longer than 32 bits", cfg.prefix),
            ));
        }
        let mut config = Config::new(EthernetAddress(cfg.host_mac).into());
        config.random_seed = seed;
        let mut iface = Interface::new(config, &mut NoDevice, Instant::ZERO);
        iface.update_ip_addrs(|addrs| {
            // Room for one address is guaranteed by smoltcp's minimum.
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(cfg.host_ip), cfg.prefix));
        });
        Ok(Stack {
            iface,
            sockets: SocketSet::new(Vec::new()),
            guard: Guard::default(),
            host_ip: IpAddress::Ipv4(cfg.host_ip),
            guest: IpEndpoint::new(IpAddress::Ipv4(cfg.guest_ip), cfg.guest_port),
        })
    }

    /// Opens a connection from local `port` to the guest port, with two
    /// [`TCP_BUFFER`]-byte buffers, Nagle off and [`KEEP_ALIVE`] probes.
    ///
    /// Its initial sequence number is the first draw of a generator seeded
    /// with `isn_seed`, which the link takes from the OS for every
    /// connection. smoltcp would otherwise draw it from the interface's
    /// generator (sPCG32), whose state a guest can recover from the
    /// sequence numbers it has already seen; `connect` uses its context for
    /// nothing else once the local address is given, so a throwaway context
    /// does it (a few hundred bytes zeroed per connection).
    pub fn connect(&mut self, port: u16, isn_seed: u64) -> Result<SocketHandle, ConnectFailed> {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
            tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
        );
        socket.set_nagle_enabled(false);
        socket.set_keep_alive(Some(Duration::from_micros(KEEP_ALIVE.as_micros() as u64)));
        let mut config = Config::new(self.iface.hardware_addr());
        config.random_seed = isn_seed;
        let mut fresh = Interface::new(config, &mut NoDevice, Instant::ZERO);
        let local = IpListenEndpoint {
            addr: Some(self.host_ip),
            port,
        };
        socket.connect(fresh.context(), self.guest, local)?;
        self.guard.opened(port);
        Ok(self.sockets.add(socket))
    }

    /// The connection's socket.
    ///
    /// # Panics
    /// If `handle` was removed (a caller's bug, never the guest's doing).
    pub fn socket(&mut self, handle: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(handle)
    }

    /// Forgets the connection from `port` whose socket is `handle`.
    pub fn remove(&mut self, handle: SocketHandle, port: u16) {
        self.sockets.remove(handle);
        self.guard.closed(port);
    }

    /// Gives back the socket set's storage (call when no connection is
    /// left: an idle link holds no buffers).
    pub fn shrink(&mut self) {
        if self.sockets.iter().next().is_none() {
            self.sockets = SocketSet::new(Vec::new());
        }
    }

    /// Sockets held.
    pub fn sockets(&self) -> usize {
        self.sockets.iter().count()
    }

    /// Takes one frame from the guest, unless the guard refuses it.
    /// Replies smoltcp makes at once (ARP, RST) go to `sink`.
    pub fn ingest<S: FrameSink>(
        &mut self,
        now: Instant,
        frame: &[u8],
        sink: &mut S,
    ) -> Result<(), Refusal> {
        self.guard.check(frame)?;
        self.ingest_unguarded(now, frame, sink);
        Ok(())
    }

    /// Takes one frame from the guest **without the guard**. Only for tests
    /// and measurements: a guest can make smoltcp 0.14 panic through it.
    pub fn ingest_unguarded<S: FrameSink>(&mut self, now: Instant, frame: &[u8], sink: &mut S) {
        let mut port = Port {
            rx: Some(frame),
            sink,
            guard: &mut self.guard,
        };
        self.iface
            .poll_ingress_single(now, &mut port, &mut self.sockets);
    }

    /// Lets smoltcp send until it has nothing more or `sink` is not ready.
    /// Returns whether the budget ran out first (more may be waiting).
    pub fn egress<S: FrameSink>(&mut self, now: Instant, sink: &mut S) -> bool {
        let mut port = Port {
            rx: None,
            sink,
            guard: &mut self.guard,
        };
        for _ in 0..EGRESS_BUDGET {
            if self.iface.poll_egress(now, &mut port, &mut self.sockets) == PollResult::None {
                return false;
            }
        }
        true
    }

    /// How long until smoltcp next needs to run (a retransmission, a
    /// keep-alive), if at all.
    pub fn poll_delay(&mut self, now: Instant) -> Option<Duration> {
        self.iface.poll_delay(now, &self.sockets)
    }
}

/// What the link's device is: Ethernet, 1500 bytes of MTU, checksums
/// computed and verified by smoltcp (a guest's frames are checked like any
/// other peer's).
fn capabilities() -> DeviceCapabilities {
    let mut caps = DeviceCapabilities::default();
    caps.medium = Medium::Ethernet;
    caps.max_transmission_unit = MAX_FRAME;
    caps
}

/// The device smoltcp polls: at most one received frame, the sink, and the
/// guard, which sees every frame smoltcp builds on its way out.
struct Port<'a, S> {
    rx: Option<&'a [u8]>,
    sink: &'a mut S,
    guard: &'a mut Guard,
}

impl<S: FrameSink> phy::Device for Port<'_, S> {
    type RxToken<'b>
        = RxToken<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = TxToken<'b, S>
    where
        Self: 'b;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_, S>)> {
        let frame = self.rx.take()?;
        Some((
            RxToken(frame),
            TxToken {
                sink: self.sink,
                guard: self.guard,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_, S>> {
        if !self.sink.ready() {
            return None;
        }
        Some(TxToken {
            sink: self.sink,
            guard: self.guard,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        capabilities()
    }
}

struct RxToken<'a>(&'a [u8]);

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

struct TxToken<'a, S> {
    sink: &'a mut S,
    guard: &'a mut Guard,
}

impl<S: FrameSink> phy::TxToken for TxToken<'_, S> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let guard = self.guard;
        self.sink.send(len, |frame| {
            let result = f(frame);
            // Built means dispatched, as far as smoltcp's state is
            // concerned, whether the sink sends it now or queues it.
            guard.sent(frame);
            result
        })
    }
}

/// A device with no frames in either direction, for interfaces that only
/// need the link's capabilities.
struct NoDevice;

impl phy::Device for NoDevice {
    type RxToken<'b>
        = RxToken<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = TxToken<'b, Vec<Vec<u8>>>
    where
        Self: 'b;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        None
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        None
    }

    fn capabilities(&self) -> DeviceCapabilities {
        capabilities()
    }
}
