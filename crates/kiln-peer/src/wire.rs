//! The instance's socket as the endpoint's frame sink: one Ethernet frame
//! per message.
//!
//! (Ingress needs nothing here: the link reads the socket itself, so it can
//! budget and check sizes, and hands the endpoint one frame at a time.)
//! Egress writes each frame straight to the socket from a stack buffer;
//! only when the socket is full does a frame get copied into the
//! [`TxQueue`], which the link flushes when the socket is writable again.
//! A full queue makes the sink report itself not ready, so smoltcp keeps
//! the data in its TCP buffers instead.

use std::collections::VecDeque;
use std::io;
use std::task::{Context, Poll};

use tokio::net::UnixDatagram;

use crate::stack::FrameSink;
use crate::MAX_FRAME;

/// Frames queued for a full socket before the device stops accepting more.
const TX_QUEUE_LIMIT: usize = 128;

/// Shortest frame worth handing to smoltcp: an Ethernet header.
pub(crate) const MIN_FRAME: usize = 14;

/// Why the socket can no longer be used.
#[derive(Debug)]
pub(crate) enum WireFailure {
    /// The other end is closed.
    PeerGone,
    /// Any other error.
    Io(io::Error),
}

impl WireFailure {
    /// Sorts a socket error: the ones Linux gives when the peer of a
    /// socketpair is closed mean the instance is gone.
    pub(crate) fn from_io(err: io::Error) -> Self {
        match err.kind() {
            io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::NotConnected => WireFailure::PeerGone,
            _ => WireFailure::Io(err),
        }
    }
}

/// Outgoing frames the socket could not take yet, and the first send
/// failure.
#[derive(Debug, Default)]
pub(crate) struct TxQueue {
    frames: VecDeque<Box<[u8]>>,
    failure: Option<WireFailure>,
}

impl TxQueue {
    /// Whether frames are waiting for the socket to become writable.
    pub(crate) fn is_waiting(&self) -> bool {
        !self.frames.is_empty()
    }

    /// Whether the queue is full (smoltcp is told the device is busy, and
    /// the link stops reading frames that could need replies).
    pub(crate) fn is_full(&self) -> bool {
        self.frames.len() >= TX_QUEUE_LIMIT
    }

    /// The first send failure, if any; taking it leaves none.
    pub(crate) fn take_failure(&mut self) -> Option<WireFailure> {
        self.failure.take()
    }

    fn fail(&mut self, err: io::Error) {
        if self.failure.is_none() {
            self.failure = Some(WireFailure::from_io(err));
        }
        self.frames = VecDeque::new();
    }

    /// Sends what is queued, in order, until the socket is full (then the
    /// task is woken when it is writable again) or the queue is empty.
    pub(crate) fn flush(&mut self, sock: &UnixDatagram, cx: &mut Context<'_>) {
        while let Some(frame) = self.frames.front() {
            match sock.poll_send_ready(cx) {
                Poll::Pending => return,
                Poll::Ready(Err(err)) => return self.fail(err),
                Poll::Ready(Ok(())) => {}
            }
            match sock.try_send(frame) {
                Ok(_) => {
                    self.frames.pop_front();
                }
                // Readiness was stale; poll_send_ready registers the waker.
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return self.fail(err),
            }
        }
        // A burst may have grown the queue; an idle link keeps no capacity.
        if self.frames.capacity() > 0 {
            self.frames = VecDeque::new();
        }
    }

    /// Sends one frame that smoltcp builds with `build`, or queues it.
    fn transmit<R>(
        &mut self,
        sock: &UnixDatagram,
        len: usize,
        build: impl FnOnce(&mut [u8]) -> R,
    ) -> R {
        if self.frames.is_empty() && len <= MAX_FRAME {
            let mut buf = [0u8; MAX_FRAME];
            let frame = &mut buf[..len];
            let result = build(frame);
            if self.failure.is_none() {
                match sock.try_send(frame) {
                    Ok(_) => {}
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                        self.frames.push_back(Box::from(&*frame));
                    }
                    Err(err) => self.fail(err),
                }
            }
            result
        } else {
            // Behind queued frames (order matters to TCP), or a frame larger
            // than the link's MTU, which smoltcp never builds and the guest
            // would drop anyway.
            let mut frame = vec![0u8; len].into_boxed_slice();
            let result = build(&mut frame);
            if self.failure.is_none() && len <= MAX_FRAME {
                self.frames.push_back(frame);
            }
            result
        }
    }
}

/// The instance's socket with its transmit queue, as the endpoint's sink.
pub(crate) struct SocketSink<'a> {
    pub(crate) sock: &'a UnixDatagram,
    pub(crate) tx: &'a mut TxQueue,
}

impl FrameSink for SocketSink<'_> {
    fn ready(&self) -> bool {
        !self.tx.is_full() && self.tx.failure.is_none()
    }

    fn send<R>(&mut self, len: usize, build: impl FnOnce(&mut [u8]) -> R) -> R {
        self.tx.transmit(self.sock, len, build)
    }
}
