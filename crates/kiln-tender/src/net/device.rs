//! One network device on the hypercall path: frames in and out of its
//! backend, with every buffer allocated up front.
//!
//! The backend's I/O edge is a [`Port`] (a nonblocking descriptor, or a
//! test double); how frames sit on it is the device's [`Framing`]: one
//! frame per `read`/`write` (a tap), or a length-prefixed byte stream
//! (passt). A device whose backend fails for good goes *down*: it says so
//! once on stderr, answers EIO from then on and is left out of POLL, while
//! the instance keeps running.

use super::stream::{Decoder, Encoder, StreamError, FRAME_MIN};
use crate::outcome::Message;
use std::fmt::{self, Write as _};
use std::io;
use std::os::fd::RawFd;

/// Largest frame the device carries: MTU plus the Ethernet header.
pub fn frame_max(mtu: u32) -> usize {
    mtu as usize + 14
}

/// Buffer for frames read from a tap: large enough that an oversized
/// frame is seen whole (and dropped) rather than cut to a plausible size.
const TAP_READ_BUF: usize = 65_536 + 14;
/// Read buffer of a stream: room for many frames per `read`, and all a
/// stream device ever holds of what its peer sent.
pub const STREAM_READ_BUF: usize = 64 * 1024;
/// Frames queued toward a stream peer that is slow to read (frames and
/// length words).
pub const STREAM_WRITE_BUF: usize = 256 * 1024;
/// Frames one NET_READ may drop before it answers EAGAIN, so that a flood
/// of unusable frames cannot hold a hypercall indefinitely.
const DROPS_PER_READ: u32 = 64;

/// The I/O edge of a device: nonblocking reads and writes, `WouldBlock`
/// when nothing can move now.
pub trait Port: fmt::Debug + Send {
    /// Reads what is waiting (one frame on a tap; bytes on a stream);
    /// `Ok(0)` means the peer is gone.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes (one frame on a tap; bytes on a stream).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// The descriptor to wait on in POLL, if any.
    fn fd(&self) -> Option<RawFd>;
    /// Whether a read of 0 bytes means the peer is gone (a
    /// `SOCK_SEQPACKET` socket) rather than an empty frame to drop.
    fn empty_read_is_eof(&self) -> bool {
        false
    }
}

/// A backend descriptor.
#[derive(Debug)]
pub struct FdPort(pub std::os::fd::OwnedFd);

impl Port for FdPort {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        super::sys::read(std::os::fd::AsRawFd::as_raw_fd(&self.0), buf)
    }
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        super::sys::write(std::os::fd::AsRawFd::as_raw_fd(&self.0), buf)
    }
    fn fd(&self) -> Option<RawFd> {
        Some(std::os::fd::AsRawFd::as_raw_fd(&self.0))
    }
}

/// An inherited `AF_UNIX` frame socket (`--net fd:N`): one frame per
/// message, like a tap. A `SOCK_SEQPACKET` peer that closes reads as end
/// of file; a `SOCK_DGRAM` peer that closes shows only when the next frame
/// is sent (ECONNREFUSED), which takes the device down just the same.
#[derive(Debug)]
pub struct SocketPort {
    fd: std::os::fd::OwnedFd,
    seqpacket: bool,
}

impl SocketPort {
    /// A port on `fd`, a nonblocking socket of `kind`.
    pub fn new(fd: std::os::fd::OwnedFd, kind: crate::inherit::FrameSocket) -> Self {
        SocketPort {
            fd,
            seqpacket: kind == crate::inherit::FrameSocket::SeqPacket,
        }
    }
}

impl Port for SocketPort {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        super::sys::read(std::os::fd::AsRawFd::as_raw_fd(&self.fd), buf)
    }
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        super::sys::write(std::os::fd::AsRawFd::as_raw_fd(&self.fd), buf)
    }
    fn fd(&self) -> Option<RawFd> {
        Some(std::os::fd::AsRawFd::as_raw_fd(&self.fd))
    }
    fn empty_read_is_eof(&self) -> bool {
        self.seqpacket
    }
}

/// How frames sit on a port.
#[derive(Debug)]
pub enum Framing {
    /// One frame per read and per write (a tap, an inherited frame socket).
    Datagram {
        /// Receive buffer.
        rx: Box<[u8]>,
    },
    /// Length-prefixed frames on a byte stream (passt).
    Stream {
        /// Received bytes.
        rx: Decoder,
        /// Bytes to send.
        tx: Encoder,
    },
}

impl Framing {
    /// Framing for a tap.
    pub fn datagram() -> Self {
        Framing::Datagram {
            rx: vec![0; TAP_READ_BUF].into_boxed_slice(),
        }
    }

    /// Framing for a stream carrying frames up to `frame_max` bytes.
    pub fn stream(frame_max: usize) -> Self {
        Framing::Stream {
            rx: Decoder::new(frame_max, STREAM_READ_BUF),
            tx: Encoder::new(STREAM_WRITE_BUF),
        }
    }
}

/// Why a device went down for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Down {
    /// The peer closed its end.
    Closed,
    /// The byte stream is out of step.
    Stream(StreamError),
    /// A read or write failed with this errno.
    Io(i32),
}

impl fmt::Display for Down {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Down::Closed => f.write_str("the backend closed the connection"),
            Down::Stream(e) => write!(f, "{e}"),
            Down::Io(errno) => write!(f, "{}", io::Error::from_raw_os_error(*errno)),
        }
    }
}

/// Counters of one device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames handed to the guest.
    pub rx_frames: u64,
    /// Frames sent for the guest.
    pub tx_frames: u64,
    /// Received frames dropped: too long or too short.
    pub rx_dropped: u64,
    /// Guest frames refused because the backend could not take them now.
    pub tx_busy: u64,
}

/// What NET_WRITE answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The frame is on its way.
    Ok,
    /// The backend cannot take it now (EAGAIN; the guest may drop it).
    Busy,
    /// The backend refused this frame (EIO), for example a tap that is down.
    Refused,
    /// The device is down.
    Down,
}

/// One network device.
#[derive(Debug)]
pub struct NetDevice {
    /// The manifest name, for messages.
    name: [u8; kiln_abi::DEVICE_NAME_LEN],
    /// `None`: `--net none`, nothing attached.
    port: Option<Box<dyn Port>>,
    framing: Framing,
    frame_max: usize,
    /// Bounce buffer for a frame on its way from guest memory.
    tx: Box<[u8]>,
    down: Option<Down>,
    stats: Stats,
}

impl NetDevice {
    /// A device named `name` sending and receiving frames of up to
    /// `frame_max` bytes through `port` (none: nothing attached).
    pub fn new(
        name: [u8; kiln_abi::DEVICE_NAME_LEN],
        port: Option<Box<dyn Port>>,
        framing: Framing,
        frame_max: usize,
    ) -> Self {
        NetDevice {
            name,
            port,
            framing,
            frame_max,
            tx: vec![0; frame_max].into_boxed_slice(),
            down: None,
            stats: Stats::default(),
        }
    }

    /// Largest frame NET_WRITE accepts.
    pub fn frame_max(&self) -> usize {
        self.frame_max
    }

    /// The most bytes one `write` to the backend carries: a frame on a
    /// tap or frame socket, the send queue on a stream. The sandboxes pin
    /// the count of `write` on the backend's descriptor to this.
    pub fn largest_write(&self) -> usize {
        match &self.framing {
            Framing::Datagram { .. } => self.frame_max,
            Framing::Stream { tx, .. } => tx.capacity(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats;
        if let Framing::Stream { rx, .. } = &self.framing {
            s.rx_dropped += rx.skipped();
        }
        s
    }

    /// Why the device is down, if it is.
    pub fn down(&self) -> Option<Down> {
        self.down
    }

    /// The descriptor of the backend while the device is up.
    pub fn fd(&self) -> Option<RawFd> {
        if self.down.is_some() {
            return None;
        }
        self.port.as_ref().and_then(|p| p.fd())
    }

    fn name(&self) -> &str {
        let n = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.name.len());
        std::str::from_utf8(&self.name[..n]).unwrap_or("?")
    }

    /// Takes the device down and says why on stderr (once).
    fn fail(&mut self, why: Down) {
        if self.down.is_some() {
            return;
        }
        self.down = Some(why);
        let mut m = Message::new();
        let _ = writeln!(m, "kiln: network device '{}' is down: {why}", self.name());
        let _ = crate::sys::write_all(2, m.as_str().as_bytes());
    }

    /// Receives the next frame of at most `cap` bytes and hands it to
    /// `deliver`; `Ok(None)` when none is waiting. A frame longer than
    /// `cap` (or than the device's frame size) is dropped and the next one
    /// is tried.
    pub fn recv<R>(
        &mut self,
        cap: usize,
        deliver: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>, Down> {
        if let Some(d) = self.down {
            return Err(d);
        }
        let Some(port) = self.port.as_mut() else {
            return Ok(None);
        };
        let cap = cap.min(self.frame_max);
        let mut drops = 0;
        let result = match &mut self.framing {
            Framing::Datagram { rx } => loop {
                if drops >= DROPS_PER_READ {
                    break Ok(None);
                }
                match port.read(rx) {
                    Ok(n) if (FRAME_MIN..=cap).contains(&n) => {
                        self.stats.rx_frames += 1;
                        break Ok(Some(deliver(&rx[..n])));
                    }
                    Ok(0) if port.empty_read_is_eof() => break Err(Down::Closed),
                    Ok(_) => {
                        // A tap never reads 0 bytes while attached; a short
                        // or long frame is dropped.
                        self.stats.rx_dropped += 1;
                        drops += 1;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(None),
                    Err(e) => break Err(Down::Io(e.raw_os_error().unwrap_or(libc::EIO))),
                }
            },
            Framing::Stream { rx, .. } => loop {
                match rx.peek_len() {
                    Err(e) => break Err(Down::Stream(e)),
                    Ok(Some(len)) if len <= cap => {
                        let Ok(Some(frame)) = rx.next_frame() else {
                            break Ok(None);
                        };
                        self.stats.rx_frames += 1;
                        break Ok(Some(deliver(frame)));
                    }
                    Ok(Some(_)) => {
                        rx.discard();
                        self.stats.rx_dropped += 1;
                        drops += 1;
                        if drops >= DROPS_PER_READ {
                            break Ok(None);
                        }
                    }
                    Ok(None) => match port.read(rx.space()) {
                        Ok(0) => break Err(Down::Closed),
                        Ok(n) => rx.filled(n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(None),
                        Err(e) => break Err(Down::Io(e.raw_os_error().unwrap_or(libc::EIO))),
                    },
                }
            },
        };
        result.inspect_err(|&why| self.fail(why))
    }

    /// The buffer NET_WRITE copies a frame of `len` bytes into, `None`
    /// when `len` is not a frame length this device takes.
    pub fn tx_buffer(&mut self, len: usize) -> Option<&mut [u8]> {
        if (FRAME_MIN..=self.frame_max).contains(&len) {
            Some(&mut self.tx[..len])
        } else {
            None
        }
    }

    /// Sends the first `len` bytes of the [`Self::tx_buffer`].
    pub fn send(&mut self, len: usize) -> Sent {
        if self.down.is_some() {
            return Sent::Down;
        }
        let Some(port) = self.port.as_mut() else {
            // Nothing attached: the frame goes nowhere, like on a cable
            // that is plugged into nothing.
            self.stats.tx_frames += 1;
            return Sent::Ok;
        };
        let frame = &self.tx[..len.min(self.tx.len())];
        let sent = match &mut self.framing {
            Framing::Datagram { .. } => match port.write(frame) {
                Ok(_) => Ok(Sent::Ok),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Sent::Busy),
                Err(e) if e.raw_os_error() == Some(libc::EBADFD) => Err(Down::Io(libc::EBADFD)),
                // A frame socket whose peer is gone (never a tap).
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ECONNREFUSED | libc::ENOTCONN | libc::EPIPE | libc::ECONNRESET)
                    ) =>
                {
                    Err(Down::Closed)
                }
                // A tap that is administratively down answers EIO: this
                // frame is lost, the next may pass.
                Err(_) => Ok(Sent::Refused),
            },
            Framing::Stream { tx, .. } => {
                // Queue, then write what the socket takes; when the queue
                // is full, make room first.
                let mut queued = tx.push(frame).is_ok();
                let mut flushed = flush(port.as_mut(), tx);
                if flushed.is_ok() && !queued {
                    queued = tx.push(frame).is_ok();
                    flushed = flush(port.as_mut(), tx);
                }
                match flushed {
                    Err(d) => Err(d),
                    Ok(()) if queued => Ok(Sent::Ok),
                    Ok(()) => Ok(Sent::Busy),
                }
            }
        };
        match sent {
            Ok(Sent::Ok) => {
                self.stats.tx_frames += 1;
                Sent::Ok
            }
            Ok(Sent::Busy) => {
                self.stats.tx_busy += 1;
                Sent::Busy
            }
            Ok(other) => other,
            Err(d) => self.failed(d),
        }
    }

    fn failed(&mut self, why: Down) -> Sent {
        self.fail(why);
        Sent::Down
    }

    /// Whether a whole frame is already buffered (no system call needed).
    pub fn has_buffered_frame(&mut self) -> bool {
        if self.down.is_some() {
            return false;
        }
        match &mut self.framing {
            Framing::Datagram { .. } => false,
            Framing::Stream { rx, .. } => match rx.has_frame() {
                Ok(yes) => yes,
                Err(e) => {
                    self.fail(Down::Stream(e));
                    false
                }
            },
        }
    }

    /// The `poll` events to wait for: input, and output while queued bytes
    /// wait for room.
    pub fn poll_events(&self) -> libc::c_short {
        match &self.framing {
            Framing::Stream { tx, .. } if !tx.pending().is_empty() => libc::POLLIN | libc::POLLOUT,
            _ => libc::POLLIN,
        }
    }

    /// Handles `revents` from `poll`; true when a frame is waiting for
    /// NET_READ.
    pub fn on_poll(&mut self, revents: libc::c_short) -> bool {
        if self.down.is_some() {
            return false;
        }
        let Some(port) = self.port.as_mut() else {
            return false;
        };
        if revents & libc::POLLNVAL != 0 {
            self.fail(Down::Io(libc::EBADF));
            return false;
        }
        match &mut self.framing {
            Framing::Datagram { .. } => {
                if revents & libc::POLLIN != 0 {
                    return true;
                }
                if revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                    self.fail(Down::Closed);
                }
                false
            }
            Framing::Stream { rx, tx } => {
                if revents & libc::POLLOUT != 0 {
                    if let Err(d) = flush(port.as_mut(), tx) {
                        self.fail(d);
                        return false;
                    }
                }
                if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) == 0 {
                    return false;
                }
                // Pull in what arrived; a hang-up with nothing left reads 0.
                // A buffer full of whole frames takes nothing until the
                // guest reads some: a read into no room would also return
                // 0 and look like a hang-up.
                let space = rx.space();
                if space.is_empty() {
                    return self.has_buffered_frame();
                }
                let read = port.read(space);
                match read {
                    Ok(0) => self.fail(Down::Closed),
                    Ok(n) => rx.filled(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => self.fail(Down::Io(e.raw_os_error().unwrap_or(libc::EIO))),
                }
                self.has_buffered_frame()
            }
        }
    }
}

/// Writes queued bytes until the port would block.
fn flush(port: &mut dyn Port, tx: &mut Encoder) -> Result<(), Down> {
    while !tx.pending().is_empty() {
        match port.write(tx.pending()) {
            Ok(0) => return Err(Down::Closed),
            Ok(n) => tx.consume(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(Down::Io(e.raw_os_error().unwrap_or(libc::EIO))),
        }
    }
    Ok(())
}
