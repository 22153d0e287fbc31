//! The host end of an instance's network link.
//!
//! kilnd gives each instance one end of a `socketpair(AF_UNIX, SOCK_DGRAM)`
//! (or `SOCK_SEQPACKET`) as its only network device: one Ethernet frame per
//! message, both ways. This crate is the other end: a small TCP/IP endpoint
//! (smoltcp: ARP, IPv4, TCP) driven by one tokio task per link, which splices
//! host TCP connections (`tokio::net::TcpStream`) to `guest_ip:guest_port`
//! inside the guest.
//!
//! - [`stack`]: the TCP/IP endpoint without I/O (smoltcp behind `guard`,
//!   which refuses the frames that could only attack it), fed one frame at
//!   a time; also what the fuzz target and the benchmark drive.
//! - `wire`: the datagram socket as the endpoint's frame sink (transmit
//!   queue, peer-gone detection).
//! - `splice`: one spliced connection, client stream to guest TCP socket.
//! - `link`: the task: one `poll_fn` loop over the socket, the interface,
//!   the connections, the command channel and one timer.
//!
//! An idle link (no connection) holds no TCP buffers: a connection gets its
//! two [`TCP_BUFFER`]-byte buffers when it is handed in and gives them back
//! when it ends.

#![forbid(unsafe_code)]

mod guard;
mod link;
mod splice;
pub mod stack;
#[cfg(test)]
mod tests;
mod wire;

use std::net::Ipv4Addr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// Bytes of TCP buffer per spliced connection, in each direction.
pub const TCP_BUFFER: usize = 64 * 1024;

/// How long a connection may take to be established (ARP answered, SYN
/// answered) before it is counted as failed and the client is closed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Keep-alive interval of spliced connections. Besides its usual purpose, a
/// keep-alive segment is what reveals a closed `SOCK_DGRAM` peer while every
/// connection is idle: Linux reports nothing to the surviving end of a
/// datagram socketpair until it sends (see [`LinkEnd::PeerGone`]).
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// How long a connection whose client is already closed may wait for the
/// guest to acknowledge our FIN before its TCP state is dropped.
pub const LINGER: Duration = Duration::from_secs(10);

/// The largest frame the link accepts or sends: 1500 bytes of MTU plus the
/// 14-byte Ethernet header (no FCS, no VLAN tag).
pub const MAX_FRAME: usize = 1514;

/// Addressing of one link. The host end is the guest's gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkConfig {
    /// MAC address of the host end (default 02:6b:69:6c:6e:01, "kiln").
    pub host_mac: [u8; 6],
    /// IPv4 address of the host end (default 10.0.0.1).
    pub host_ip: Ipv4Addr,
    /// IPv4 address of the guest (default 10.0.0.2).
    pub guest_ip: Ipv4Addr,
    /// Prefix length of the link's subnet (default 24).
    pub prefix: u8,
    /// The guest port spliced connections go to (default 80).
    pub guest_port: u16,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            host_mac: [0x02, 0x6b, 0x69, 0x6c, 0x6e, 0x01],
            host_ip: Ipv4Addr::new(10, 0, 0, 1),
            guest_ip: Ipv4Addr::new(10, 0, 0, 2),
            prefix: 24,
            guest_port: 80,
        }
    }
}

/// Live counters of one link (all `Relaxed`).
#[derive(Debug, Default)]
pub struct Counters {
    /// Payload bytes read from clients and queued to the guest.
    pub bytes_to_guest: AtomicU64,
    /// Payload bytes received from the guest and written to clients.
    pub bytes_from_guest: AtomicU64,
    /// Connections handed in with [`PeerHandle::splice`].
    pub connections_total: AtomicU64,
    /// Connections that failed: the guest refused or reset them, they timed
    /// out ([`CONNECT_TIMEOUT`]), or the link ended under them for any reason
    /// other than [`PeerHandle::close`].
    pub connections_failed: AtomicU64,
    /// Frames from the guest dropped before the TCP/IP stack saw them
    /// (empty, shorter than an Ethernet header, or longer than
    /// [`MAX_FRAME`]). Frames the stack itself ignores are not counted.
    pub frames_dropped: AtomicU64,
    /// Frames from the guest refused before the TCP/IP stack saw them
    /// because they could only be part of an attack on it: a SYN without
    /// ACK (nothing listens on the host end), a SYN-ACK for a connection
    /// whose SYN has not been sent, an IPv4 fragment.
    pub frames_refused: AtomicU64,
}

/// How a link task ended.
#[derive(Debug)]
pub enum LinkEnd {
    /// [`PeerHandle::close`] was called, or every [`PeerHandle`] was dropped.
    Closed,
    /// The other end of the socket is closed: the instance exited. On a
    /// `SOCK_SEQPACKET` pair this is seen at once; on a `SOCK_DGRAM` pair
    /// Linux only reports it when the link next sends a frame (a new
    /// connection, data, a retransmission or a [`KEEP_ALIVE`] probe).
    PeerGone,
    /// The socket failed in another way.
    Io(std::io::Error),
    /// Handling the link panicked (a defect in smoltcp or in this crate,
    /// reached by what the guest sent); the message says where. Only this
    /// link ended: its clients were reset, nothing else was touched.
    Panicked(String),
}

/// The link task is gone; the client connection comes back unused so the
/// caller may hand it to another link.
#[derive(Debug, thiserror::Error)]
#[error("the network link of this instance has ended")]
pub struct LinkGone(pub tokio::net::TcpStream);

/// What the handle asks of the task.
#[derive(Debug)]
enum Command {
    Splice(tokio::net::TcpStream),
    Close,
    /// Reports what the link holds (unit tests).
    #[cfg(test)]
    Probe(tokio::sync::oneshot::Sender<link::Footprint>),
    /// Rigs the link for a test (unit tests).
    #[cfg(test)]
    Rig(tests::Rig),
}

/// A handle on a running link. Cheap to clone; dropping every clone ends the
/// link as [`PeerHandle::close`] does.
#[derive(Clone, Debug)]
pub struct PeerHandle {
    commands: mpsc::UnboundedSender<Command>,
    counters: Arc<Counters>,
    active: watch::Receiver<usize>,
}

impl PeerHandle {
    /// Hands a client connection over; returns at once. The link connects
    /// to `guest_ip:guest_port` and copies both ways (half-close respected:
    /// client EOF -> FIN to the guest, guest FIN -> `shutdown(Write)` on the
    /// client) until both sides are done, then closes the client. A
    /// connection that fails (refused, [`CONNECT_TIMEOUT`], reset, link gone)
    /// is closed with a reset, so a client never mistakes a cut-off reply
    /// for a complete one.
    ///
    /// Errs, giving the client back, if the link task is gone.
    pub fn splice(&self, client: tokio::net::TcpStream) -> Result<(), LinkGone> {
        match self.commands.send(Command::Splice(client)) {
            Ok(()) => {
                self.counters
                    .connections_total
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::SendError(Command::Splice(client))) => Err(LinkGone(client)),
            // What was sent comes back; nothing else can.
            Err(mpsc::error::SendError(_)) => Ok(()),
        }
    }

    /// The link's live counters.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Number of spliced connections currently open (client side not yet
    /// closed); every change is published.
    pub fn active(&self) -> watch::Receiver<usize> {
        self.active.clone()
    }

    /// Ends the link task: resets every spliced connection (RST to the guest
    /// and to the client) and drops the socket. Does nothing if the task is
    /// already gone.
    pub fn close(&self) {
        let _ = self.commands.send(Command::Close);
    }
}

/// Starts the link's task on the current tokio runtime.
///
/// `sock` is the host end of the instance's socketpair (`SOCK_DGRAM` or
/// `SOCK_SEQPACKET`); it is made nonblocking here. Fails if it is not a
/// datagram or seqpacket socket, or cannot be registered with the runtime.
///
/// Prefer a `SOCK_SEQPACKET` pair where the instance side accepts one:
/// Linux tells the surviving end of a `SOCK_DGRAM` pair nothing when the
/// other end closes, so a quiet link notices an exited instance only when
/// it next sends (see [`LinkEnd::PeerGone`]).
///
/// # Panics
/// Outside a tokio runtime with I/O and time enabled (as
/// `UnixDatagram::from_std` and `tokio::time::sleep` do).
pub fn spawn(
    sock: std::os::unix::net::UnixDatagram,
    cfg: LinkConfig,
) -> std::io::Result<(PeerHandle, tokio::task::JoinHandle<LinkEnd>)> {
    let counters = Arc::new(Counters::default());
    let (commands, command_rx) = mpsc::unbounded_channel();
    let (active_tx, active) = watch::channel(0);
    let link = link::Link::new(sock, &cfg, counters.clone(), command_rx, active_tx)?;
    let task = tokio::spawn(link.run());
    Ok((
        PeerHandle {
            commands,
            counters,
            active,
        },
        task,
    ))
}
