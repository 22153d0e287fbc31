//! The link task: one `poll_fn` loop per link.
//!
//! Each turn (1) takes new commands, (2) reads frames from the socket into
//! smoltcp, (3) lets smoltcp send, (4) moves bytes of every connection,
//! (5) lets smoltcp send again and flushes queued frames, (6) arms one timer
//! at the earliest of smoltcp's next deadline and the connections'
//! deadlines. Every source it waits on registers the task's waker before
//! the turn returns `Pending`, so nothing is polled without cause.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::net::{TcpStream, UnixDatagram};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Sleep};

use crate::splice::Splice;
use crate::stack::Stack;
use crate::wire::{SocketSink, TxQueue, WireFailure, MIN_FRAME};
use crate::{Command, Counters, LinkConfig, LinkEnd, MAX_FRAME};

/// Frames read per turn before the other work of the turn runs.
const INGRESS_BUDGET: usize = 64;

/// Turns per wake-up before the task yields to others on its thread.
const TURNS: usize = 4;

/// Receive buffer: larger than any frame by far, so an oversized datagram
/// is recognised (and dropped) instead of being silently truncated to a
/// plausible frame.
const RX_BUFFER: usize = 64 * 1024 + 14;

/// Local ports of spliced connections.
const EPHEMERAL: std::ops::RangeInclusive<u16> = 49152..=65535;

thread_local! {
    /// One receive buffer per runtime thread, shared by every link polled
    /// there: idle links own none.
    static RX: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

pub(crate) struct Link {
    sock: UnixDatagram,
    /// SOCK_SEQPACKET: a zero-length read is the peer closing.
    seqpacket: bool,
    stack: Stack,
    splices: Vec<Splice>,
    tx: TxQueue,
    commands: mpsc::UnboundedReceiver<Command>,
    active: watch::Sender<usize>,
    counters: Arc<Counters>,
    next_port: u16,
    epoch: Instant,
    #[cfg(test)]
    rig: crate::tests::Rig,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl Link {
    pub(crate) fn new(
        sock: std::os::unix::net::UnixDatagram,
        cfg: &LinkConfig,
        counters: Arc<Counters>,
        commands: mpsc::UnboundedReceiver<Command>,
        active: watch::Sender<usize>,
    ) -> io::Result<Self> {
        let ty = socket2::SockRef::from(&sock).r#type()?;
        let seqpacket = if ty == socket2::Type::SEQPACKET {
            true
        } else if ty == socket2::Type::DGRAM {
            false
        } else {
            return Err(invalid(
                "the link socket is neither SOCK_DGRAM nor SOCK_SEQPACKET; one frame per message is expected"
                    .to_string(),
            ));
        };
        sock.set_nonblocking(true)?;
        let sock = UnixDatagram::from_std(sock)?;

        let seed = os_random()?;
        let stack = Stack::new(cfg, seed)?;
        let epoch = Instant::now();

        let span = u32::from(*EPHEMERAL.end() - *EPHEMERAL.start()) + 1;
        let next_port = *EPHEMERAL.start() + (seed >> 32) as u16 % span as u16;

        Ok(Link {
            sock,
            seqpacket,
            stack,
            splices: Vec::new(),
            tx: TxQueue::default(),
            commands,
            active,
            counters,
            next_port,
            epoch,
            #[cfg(test)]
            rig: Default::default(),
        })
    }

    /// Runs the link until it ends. A panic while handling this link
    /// (smoltcp's, or ours) ends this link alone: it is caught here, at the
    /// edge of the one `poll` that touches the link's state, and the link
    /// is abandoned without touching that state again. This needs
    /// `panic = "unwind"` (kilnd refuses to build without it); the catch
    /// itself costs nothing while nothing panics.
    pub(crate) async fn run(mut self) -> LinkEnd {
        let mut timer = std::pin::pin!(tokio::time::sleep_until(self.epoch));
        let end = poll_fn(|cx| {
            catch_unwind(AssertUnwindSafe(|| self.poll(cx, timer.as_mut())))
                .unwrap_or_else(|payload| Poll::Ready(LinkEnd::Panicked(panic_message(&*payload))))
        })
        .await;
        match end {
            LinkEnd::Panicked(_) => self.abandon(end),
            end => self.finish(end),
        }
    }

    fn smol_now(&self, now: Instant) -> smoltcp::time::Instant {
        let micros = now.saturating_duration_since(self.epoch).as_micros();
        smoltcp::time::Instant::from_micros(i64::try_from(micros).unwrap_or(i64::MAX))
    }

    fn poll(&mut self, cx: &mut Context<'_>, mut timer: Pin<&mut Sleep>) -> Poll<LinkEnd> {
        for _ in 0..TURNS {
            loop {
                match self.commands.poll_recv(cx) {
                    Poll::Ready(Some(Command::Splice(client))) => self.open(client),
                    Poll::Ready(Some(Command::Close)) | Poll::Ready(None) => {
                        return Poll::Ready(LinkEnd::Closed)
                    }
                    #[cfg(test)]
                    Poll::Ready(Some(Command::Probe(reply))) => {
                        let _ = reply.send(self.footprint());
                    }
                    #[cfg(test)]
                    Poll::Ready(Some(Command::Rig(rig))) => {
                        if let Some(port) = rig.next_port {
                            self.next_port = port;
                        }
                        self.rig = rig;
                    }
                    Poll::Pending => break,
                }
            }

            let now = Instant::now();
            let mut more = match self.ingress(cx, now) {
                Ok(more) => more,
                Err(failure) => return Poll::Ready(end_of(failure)),
            };
            more |= self.egress(now);
            self.service(cx, now);
            more |= self.egress(now);
            self.tx.flush(&self.sock, cx);
            self.reap(now);
            if let Some(failure) = self.tx.take_failure() {
                return Poll::Ready(end_of(failure));
            }

            // While frames wait for the socket, smoltcp's "send now" is
            // answered by the socket's writability, not by the timer.
            let mut deadline = None;
            if !self.tx.is_waiting() {
                let smol_now = self.smol_now(now);
                if let Some(delay) = self.stack.poll_delay(smol_now) {
                    let delay = std::time::Duration::from_micros(delay.total_micros());
                    deadline = now.checked_add(delay);
                }
            }
            for splice in &self.splices {
                if let Some(at) = splice.deadline() {
                    deadline = Some(deadline.map_or(at, |d: Instant| d.min(at)));
                }
            }
            if let Some(at) = deadline {
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    continue;
                }
            }
            if !more {
                return Poll::Pending;
            }
        }
        // Work is left but others on this thread get a turn first.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Reads frames into smoltcp. Returns whether the budget ran out with
    /// frames possibly left.
    fn ingress(&mut self, cx: &mut Context<'_>, now: Instant) -> Result<bool, WireFailure> {
        let smol_now = self.smol_now(now);
        RX.with(|rx| {
            let mut shared = rx.try_borrow_mut();
            let mut own = Vec::new();
            // Never contended (a task's poll does not nest), but a spare
            // buffer is cheaper than a panic.
            let buf = match shared.as_deref_mut() {
                Ok(buf) => buf,
                Err(_) => &mut own,
            };
            if buf.len() < RX_BUFFER {
                buf.resize(RX_BUFFER, 0);
            }
            for _ in 0..INGRESS_BUDGET {
                // Replies to what we read would have nowhere to go.
                if self.tx.is_full() {
                    return Ok(false);
                }
                match self.sock.poll_recv_ready(cx) {
                    Poll::Pending => return Ok(false),
                    Poll::Ready(Err(err)) => return Err(WireFailure::from_io(err)),
                    Poll::Ready(Ok(())) => {}
                }
                let len = match self.sock.try_recv(buf) {
                    Ok(len) => len,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(err) => return Err(WireFailure::from_io(err)),
                };
                if len == 0 && self.seqpacket {
                    return Err(WireFailure::PeerGone);
                }
                if !(MIN_FRAME..=MAX_FRAME).contains(&len) {
                    self.counters.frames_dropped.fetch_add(1, Relaxed);
                    continue;
                }
                let mut sink = SocketSink {
                    sock: &self.sock,
                    tx: &mut self.tx,
                };
                #[cfg(test)]
                if self.rig.unguarded {
                    self.stack
                        .ingest_unguarded(smol_now, &buf[..len], &mut sink);
                    continue;
                }
                if self.stack.ingest(smol_now, &buf[..len], &mut sink).is_err() {
                    self.counters.frames_refused.fetch_add(1, Relaxed);
                }
            }
            Ok(true)
        })
    }

    /// Lets smoltcp send until it has nothing more (or the socket is
    /// full). Returns whether the budget ran out first.
    fn egress(&mut self, now: Instant) -> bool {
        let smol_now = self.smol_now(now);
        let mut sink = SocketSink {
            sock: &self.sock,
            tx: &mut self.tx,
        };
        self.stack.egress(smol_now, &mut sink)
    }

    /// Starts splicing one client.
    fn open(&mut self, client: TcpStream) {
        let Some(port) = self.free_port() else {
            // 16,384 connections on one link: refuse the newest.
            self.counters.connections_failed.fetch_add(1, Relaxed);
            let _ = client.set_zero_linger();
            return;
        };
        #[cfg(test)]
        let isn_seed = self.rig.isn_seed.map_or_else(os_random, Ok);
        #[cfg(not(test))]
        let isn_seed = os_random();
        let handle = match isn_seed.map(|seed| self.stack.connect(port, seed)) {
            Ok(Ok(handle)) => handle,
            _ => {
                self.counters.connections_failed.fetch_add(1, Relaxed);
                let _ = client.set_zero_linger();
                return;
            }
        };
        self.splices
            .push(Splice::new(client, handle, port, Instant::now()));
        self.publish_active();
    }

    fn free_port(&mut self) -> Option<u16> {
        for _ in EPHEMERAL {
            let port = self.next_port;
            self.next_port = if port == *EPHEMERAL.end() {
                *EPHEMERAL.start()
            } else {
                port + 1
            };
            if !self.splices.iter().any(|s| s.port == port) {
                return Some(port);
            }
        }
        None
    }

    fn service(&mut self, cx: &mut Context<'_>, now: Instant) {
        for splice in &mut self.splices {
            let socket = self.stack.socket(splice.handle);
            splice.service(cx, socket, &self.counters, now);
        }
        self.publish_active();
    }

    /// Removes finished connections (after the turn's last egress, so an
    /// RST or final ACK has gone out); an idle link gives back its socket
    /// storage.
    fn reap(&mut self, now: Instant) {
        let stack = &mut self.stack;
        self.splices.retain(|splice| {
            if splice.is_finished(stack.socket(splice.handle), now) {
                stack.remove(splice.handle, splice.port);
                false
            } else {
                true
            }
        });
        if self.splices.is_empty() && self.splices.capacity() > 0 {
            self.splices = Vec::new();
            self.stack.shrink();
        }
    }

    fn publish_active(&self) {
        let n = self.splices.iter().filter(|s| s.is_active()).count();
        self.active.send_if_modified(|active| {
            let changed = *active != n;
            *active = n;
            changed
        });
    }

    /// New hand-ins now fail with LinkGone; those already queued are
    /// dropped (their clients reset) and count as failed.
    fn refuse_commands(&mut self) {
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            if let Command::Splice(client) = command {
                self.counters.connections_failed.fetch_add(1, Relaxed);
                let _ = client.set_zero_linger();
            }
        }
    }

    /// Ends a link whose handling panicked. Its smoltcp state may be
    /// half-updated, so it is not touched again: every client is reset (a
    /// client must never take a cut-off reply for a whole one) and counts
    /// as failed, and everything else is dropped.
    fn abandon(mut self, end: LinkEnd) -> LinkEnd {
        self.refuse_commands();
        for splice in &mut self.splices {
            if splice.reset_client() {
                self.counters.connections_failed.fetch_add(1, Relaxed);
            }
        }
        self.splices.clear();
        self.publish_active();
        end
    }

    /// Ends the link: every connection is closed, the socket dropped.
    fn finish(mut self, end: LinkEnd) -> LinkEnd {
        self.refuse_commands();
        let died = !matches!(end, LinkEnd::Closed);
        for splice in &mut self.splices {
            self.stack.socket(splice.handle).abort();
            if splice.reset_client() && died {
                self.counters.connections_failed.fetch_add(1, Relaxed);
            }
        }
        if !died {
            // One RST per connection, so the guest frees its side; the
            // socket is about to go, so what does not fit now is dropped.
            self.egress(Instant::now());
        }
        self.splices.clear();
        self.publish_active();
        end
    }
}

/// What a link holds beyond its fixed size (unit tests).
#[cfg(test)]
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Footprint {
    /// Sockets in the socket set.
    pub(crate) sockets: usize,
    /// Capacity of the connection list (it is given back together with the
    /// socket set's storage).
    pub(crate) splices: usize,
    /// Frames waiting for the socket.
    pub(crate) queued_frames: bool,
}

#[cfg(test)]
impl Link {
    fn footprint(&self) -> Footprint {
        Footprint {
            sockets: self.stack.sockets(),
            splices: self.splices.capacity(),
            queued_frames: self.tx.is_waiting(),
        }
    }
}

/// 64 bits from the OS's randomness (getrandom(2)).
fn os_random() -> io::Result<u64> {
    getrandom::u64().map_err(|e| io::Error::other(format!("no randomness from the OS: {e}")))
}

/// The text of a panic, for the report.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

fn end_of(failure: WireFailure) -> LinkEnd {
    match failure {
        WireFailure::PeerGone => LinkEnd::PeerGone,
        WireFailure::Io(err) => LinkEnd::Io(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prints what an idle link holds inline (its task also holds the
    /// timer and the `run` future's state around it).
    #[test]
    fn idle_link_sizes() {
        println!(
            "Link {} B (Stack {} B, TxQueue {} B, UnixDatagram {} B), tcp::Socket {} B, Splice {} B",
            std::mem::size_of::<Link>(),
            std::mem::size_of::<Stack>(),
            std::mem::size_of::<TxQueue>(),
            std::mem::size_of::<UnixDatagram>(),
            std::mem::size_of::<smoltcp::socket::tcp::Socket<'static>>(),
            std::mem::size_of::<Splice>(),
        );
        assert!(std::mem::size_of::<Link>() < 4096);
    }
}
