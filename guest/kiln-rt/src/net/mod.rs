//! Networking: async TCP and UDP sockets over the image's network device
//! (feature `net`).
//!
//! ```ignore
//! use kiln_rt::net::TcpListener;
//!
//! kiln_rt::entry!(main, net = ["service0"]);
//!
//! fn main() {
//!     kiln_rt::block_on(async {
//!         let listener = TcpListener::bind(80).expect("bind");
//!         loop {
//!             let mut stream = listener.accept().await;
//!             kiln_rt::spawn(async move {
//!                 let mut buf = [0u8; 1024];
//!                 while let Ok(n) = stream.read(&mut buf).await {
//!                     if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
//!                         break;
//!                     }
//!                 }
//!             });
//!         }
//!     })
//! }
//! ```
//!
//! The stack ([smoltcp](https://docs.rs/smoltcp)) starts on first use, on
//! the first network device the manifest declares (or explicitly with
//! [`init`], [`init_device`] or [`init_loopback`]). Its addresses come from
//! `kiln run`: a static IPv4 address, prefix and gateway, or DHCPv4 (await
//! [`wait_configured`] before talking to the outside); an IPv6 link-local
//! address derived from the MAC, plus a static IPv6 address if one was
//! given. Sockets listen on every address of the interface.
//!
//! The executor drives the stack: whenever tasks ran or frames arrived it
//! receives every waiting frame and sends what the sockets queued; when no
//! task can run it sleeps in POLL until the next frame, timer or TCP
//! deadline. Nothing busy-waits.
//!
//! Limits: each TCP socket has 16 KiB buffers each way; TCP sockets may
//! take half the heap (about 480 with the default 32 MiB; `kiln run --mem`
//! raises it); at the limit the oldest half-open connection makes room for a
//! new one. Streams dropped by the application close in the background and
//! are freed once closed (at most [`CLOSE_LINGER`] later). One network
//! device is driven. UDP datagrams over IPv4 of up to 65,507 bytes are
//! received (IP fragments are reassembled) and, with the `udp-64k` feature,
//! sent; otherwise, and over IPv6, a datagram must fit one frame.
#![forbid(unsafe_code)]

mod config;
mod device;
pub mod driver;
mod ring;
mod stack;
mod tcp;
mod udp;

#[cfg(test)]
mod tests;

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
use core::net::IpAddr;
use core::time::Duration;

pub use driver::{HypercallDriver, LoopbackDriver, NetDriver};
pub use stack::Stats;
pub use tcp::{TcpListener, TcpStream};
pub use udp::UdpSocket;

/// How long a stream dropped by the application may take to close before
/// it is reset.
pub const CLOSE_LINGER: Duration = stack::ORPHAN_LINGER;

/// What went wrong with a network operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The image has no network device (declare one with
    /// `entry!(main, net = ["name"])`), or none of that name.
    NoDevice,
    /// The stack is already running ([`init_loopback`] after first use).
    AlreadyStarted,
    /// The port is taken by another listener.
    AddrInUse,
    /// No more sockets: the memory set aside for them is used up.
    TooManySockets,
    /// The peer refused the connection (or did not answer in time).
    ConnectionRefused,
    /// The peer reset the connection.
    ConnectionReset,
    /// The connection is closed for writing (after [`TcpStream::shutdown`]).
    Closed,
    /// No route to the address, or the address cannot be used (unspecified,
    /// port 0).
    Unaddressable,
    /// A datagram larger than `send_to` takes: one frame (1,472 bytes over
    /// IPv4 at an MTU of 1500, 1,452 over IPv6), or 65,507 bytes over IPv4
    /// with the `udp-64k` feature.
    MessageTooLong,
    /// A bad argument (port 0 to listen on, for example).
    InvalidInput,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::NoDevice => "no network device",
            Error::AlreadyStarted => "the network stack is already running",
            Error::AddrInUse => "address in use",
            Error::TooManySockets => "too many sockets",
            Error::ConnectionRefused => "connection refused",
            Error::ConnectionReset => "connection reset by peer",
            Error::Closed => "connection closed",
            Error::Unaddressable => "address unreachable or unusable",
            Error::MessageTooLong => "message too long",
            Error::InvalidInput => "invalid argument",
        })
    }
}

impl core::error::Error for Error {}

/// Starts the stack on the first network device the manifest declares.
/// Socket constructors do this on first use; calling it early makes DHCP
/// start sooner. Does nothing if the stack is running.
pub fn init() -> Result<(), Error> {
    stack::with(|_| ())
}

/// Starts the stack on the network device the manifest declares as `name`.
pub fn init_device(name: &str) -> Result<(), Error> {
    stack::install(|| stack::Stack::from_boot(Some(name)))
}

/// Starts the stack on an in-image loopback device with the addresses
/// 127.0.0.1/8 and ::1: sockets talk to each other without any device or
/// tender support. For tests, and for images that only need local sockets.
pub fn init_loopback() -> Result<(), Error> {
    stack::install(|| Ok(stack::Stack::loopback()))
}

/// Starts the stack on a driver of your own (for example a new transport),
/// with only the IPv6 link-local address; add others as the driver's
/// network requires.
pub fn init_with_driver(driver: Box<dyn NetDriver>) -> Result<(), Error> {
    stack::install(|| Ok(stack::Stack::new(driver, config::IfaceConfig::default())))
}

/// Completes once IPv4 is configured: at once for a static address (or
/// none), after the DHCP server answered otherwise. Starts the stack if
/// needed.
pub async fn wait_configured() -> Result<(), Error> {
    stack::with(|_| ())?;
    core::future::poll_fn(|cx| {
        stack::with(|s| s.poll_configured(cx))
            .map_or_else(|e| core::task::Poll::Ready(Err(e)), |p| p.map(Ok))
    })
    .await
}

/// The interface's addresses with their prefix lengths (empty when the
/// stack is not running).
pub fn addresses() -> Vec<(IpAddr, u8)> {
    stack::with_running(|s| s.addresses()).unwrap_or_default()
}

/// Counters of the running stack (all zero when it is not running).
pub fn stats() -> Stats {
    stack::with_running(|s| s.stats()).unwrap_or_default()
}
