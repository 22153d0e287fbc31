//! One spliced connection: a host client stream and the link's TCP socket
//! to the guest, with bytes moved between them without an intermediate
//! buffer (client reads land in smoltcp's send buffer, smoltcp's receive
//! buffer is written straight to the client).
//!
//! Phases: `Connecting` (until the guest answers or [`CONNECT_TIMEOUT`]),
//! `Open` (copying; half-closes are passed on), `Lingering` (client closed,
//! waiting for the guest to take our last data and FIN, at most
//! [`LINGER`]). Only `Connecting` and `Open` count as active.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{self, State};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::{Counters, CONNECT_TIMEOUT, LINGER};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Open,
    Lingering,
}

#[derive(Debug)]
pub(crate) struct Splice {
    client: Option<TcpStream>,
    pub(crate) handle: SocketHandle,
    pub(crate) port: u16,
    phase: Phase,
    /// Failed before it was established: nothing left to say to the guest.
    failed: bool,
    /// The client sent EOF (or could not be read): our FIN is queued.
    client_eof: bool,
    /// The guest's FIN has been seen.
    guest_fin: bool,
    /// The guest's FIN has been passed on (`shutdown(Write)` on the client).
    client_shut: bool,
    /// Connect deadline while connecting, give-up time while lingering.
    deadline: Instant,
}

/// What one attempt to move bytes produced.
enum Step {
    Moved(usize),
    Eof,
    Blocked,
    Failed,
}

impl Splice {
    pub(crate) fn new(client: TcpStream, handle: SocketHandle, port: u16, now: Instant) -> Self {
        // A proxy forwards what it has at once; the guest side has its own
        // segmenting.
        let _ = client.set_nodelay(true);
        Splice {
            client: Some(client),
            handle,
            port,
            phase: Phase::Connecting,
            failed: false,
            client_eof: false,
            guest_fin: false,
            client_shut: false,
            deadline: now + CONNECT_TIMEOUT,
        }
    }

    /// Whether the client side is still open.
    pub(crate) fn is_active(&self) -> bool {
        self.client.is_some()
    }

    /// When this connection needs the link's attention without any I/O.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match self.phase {
            _ if self.failed => None,
            Phase::Connecting | Phase::Lingering => Some(self.deadline),
            Phase::Open => None,
        }
    }

    /// Closes the client with a reset (SO_LINGER 0): the connection did not
    /// end cleanly, and a plain FIN could pass a cut-off reply for a whole
    /// one. Returns whether a client was open.
    pub(crate) fn reset_client(&mut self) -> bool {
        match self.client.take() {
            Some(client) => {
                let _ = client.set_zero_linger();
                true
            }
            None => false,
        }
    }

    /// Aborts the guest side (one RST) and resets the client.
    fn abort(&mut self, socket: &mut tcp::Socket<'_>, now: Instant) {
        socket.abort();
        self.reset_client();
        self.linger(now);
    }

    fn linger(&mut self, now: Instant) {
        self.phase = Phase::Lingering;
        self.deadline = now + LINGER;
    }

    /// Whether the connection's TCP socket can be removed from the set.
    pub(crate) fn is_finished(&self, socket: &tcp::Socket<'_>, now: Instant) -> bool {
        if self.failed {
            return true;
        }
        if self.phase != Phase::Lingering {
            return false;
        }
        match socket.state() {
            State::TimeWait => true,
            // Once an RST or our last ACK is out, the socket forgets its
            // peer.
            State::Closed => socket.remote_endpoint().is_none(),
            _ => now >= self.deadline,
        }
    }

    fn fail(&mut self, counters: &Counters) {
        counters.connections_failed.fetch_add(1, Relaxed);
        self.reset_client();
        self.failed = true;
    }

    /// Advances the connection: checks its TCP state and moves whatever
    /// bytes can move now, registering for the readiness it waits on.
    pub(crate) fn service(
        &mut self,
        cx: &mut Context<'_>,
        socket: &mut tcp::Socket<'_>,
        counters: &Counters,
        now: Instant,
    ) {
        if self.phase == Phase::Connecting {
            match socket.state() {
                State::SynSent | State::SynReceived => {
                    // Past the deadline the guest has not answered ARP or
                    // the SYN: there is no one to send an RST to.
                    if now >= self.deadline {
                        self.fail(counters);
                    }
                    return;
                }
                State::Closed | State::Listen | State::TimeWait => {
                    // Refused (RST) before the handshake completed.
                    return self.fail(counters);
                }
                _ => self.phase = Phase::Open,
            }
        }
        if self.phase == Phase::Open {
            self.copy(cx, socket, counters, now);
        }
    }

    fn copy(
        &mut self,
        cx: &mut Context<'_>,
        socket: &mut tcp::Socket<'_>,
        counters: &Counters,
        now: Instant,
    ) {
        let Some(client) = self.client.as_mut() else {
            return self.linger(now);
        };

        // Guest to client.
        while socket.can_recv() {
            match client.poll_write_ready(cx) {
                Poll::Pending => break,
                Poll::Ready(Err(_)) => return self.abort(socket, now),
                Poll::Ready(Ok(())) => {}
            }
            let step = socket.recv(|buf| match client.try_write(buf) {
                Ok(n) => (n, Step::Moved(n)),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => (0, Step::Blocked),
                Err(_) => (0, Step::Failed),
            });
            match step {
                Ok(Step::Moved(n)) => {
                    counters.bytes_from_guest.fetch_add(n as u64, Relaxed);
                }
                // Stale readiness: the next poll_write_ready registers.
                Ok(Step::Blocked) => {}
                Ok(Step::Failed) => return self.abort(socket, now),
                Ok(Step::Eof) | Err(_) => break,
            }
        }

        match socket.state() {
            State::CloseWait | State::LastAck | State::Closing | State::TimeWait => {
                self.guest_fin = true
            }
            State::Closed if !self.guest_fin => {
                // The guest reset the connection (or smoltcp gave up on it).
                self.reset_client();
                return self.linger(now);
            }
            _ => {}
        }

        // Client to guest, only while the socket has room: a slow guest
        // leaves the data in the client's kernel buffers.
        while !self.client_eof && socket.can_send() {
            match client.poll_read_ready(cx) {
                Poll::Pending => break,
                Poll::Ready(Err(_)) => return self.abort(socket, now),
                Poll::Ready(Ok(())) => {}
            }
            let step = socket.send(|buf| {
                if buf.is_empty() {
                    return (0, Step::Blocked);
                }
                match client.try_read(buf) {
                    Ok(0) => (0, Step::Eof),
                    Ok(n) => (n, Step::Moved(n)),
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => (0, Step::Blocked),
                    Err(_) => (0, Step::Failed),
                }
            });
            match step {
                Ok(Step::Moved(n)) => {
                    counters.bytes_to_guest.fetch_add(n as u64, Relaxed);
                }
                Ok(Step::Eof) => {
                    self.client_eof = true;
                    socket.close();
                }
                Ok(Step::Blocked) => {}
                Ok(Step::Failed) => return self.abort(socket, now),
                Err(_) => break,
            }
        }

        // The guest's FIN goes to the client once everything before it has.
        if self.guest_fin && socket.recv_queue() == 0 && !self.client_shut {
            // TcpStream's shutdown is a plain shutdown(2): always ready.
            // An error means the client is gone already, which is as good.
            let _ = Pin::new(&mut *client).poll_shutdown(cx);
            self.client_shut = true;
        }
        if self.client_shut && self.client_eof {
            // Both directions are done; our FIN follows the data still in
            // the socket's send buffer.
            self.client = None;
            self.linger(now);
        }
    }
}
