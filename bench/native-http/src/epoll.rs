//! The single-threaded server: one level-triggered epoll loop over
//! non-blocking sockets.

use crate::{Conn, IDLE, OUT_BUFFER};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

/// Token of the listening socket.
const LISTENER: u64 = u64::MAX;

/// An epoll instance.
struct Epoll(OwnedFd);

impl Epoll {
    fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call;
        // both descriptors are open.
        let r = unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut ev) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        let max = i32::try_from(events.len()).unwrap_or(i32::MAX);
        // SAFETY: the kernel writes at most `max` events into `events`,
        // which has room for that many.
        let n =
            unsafe { libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), max, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            };
        }
        Ok(n as usize)
    }
}

/// One client connection.
struct Client {
    stream: TcpStream,
    conn: Conn,
    /// Response bytes not yet accepted by the kernel.
    pending: Vec<u8>,
    /// Close once `pending` is sent.
    closing: bool,
    last_active: Instant,
}

/// What the loop should do with a client after handling an event.
enum Next {
    Keep,
    /// Pending output: wait for writability instead of reading.
    WaitWrite,
    Drop,
}

impl Client {
    /// Tries to send `pending`.
    fn send_pending(&mut self) -> Next {
        while !self.pending.is_empty() {
            match self.stream.write(&self.pending) {
                Ok(0) => return Next::Drop,
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Next::WaitWrite,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Next::Drop,
            }
        }
        if self.closing {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
            Next::Drop
        } else {
            Next::Keep
        }
    }

    /// Reads what is there and answers it.
    fn on_readable(&mut self, out: &mut [u8]) -> Next {
        let n = match self.stream.read(self.conn.spare()) {
            Ok(0) => return Next::Drop,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                return Next::Keep
            }
            Err(_) => return Next::Drop,
        };
        self.last_active = Instant::now();
        let pending = &mut self.pending;
        let fed = self.conn.feed(n, out, |bytes| {
            pending.extend_from_slice(bytes);
            true
        });
        self.closing = fed.close;
        if self.pending.is_empty() {
            // The common case: write straight from the output buffer.
            let mut sent = 0;
            while sent < fed.written {
                match self.stream.write(&out[sent..fed.written]) {
                    Ok(0) => return Next::Drop,
                    Ok(k) => sent += k,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => return Next::Drop,
                }
            }
            self.pending.extend_from_slice(&out[sent..fed.written]);
        } else {
            self.pending.extend_from_slice(&out[..fed.written]);
        }
        self.send_pending()
    }
}

/// Serves `listener` forever.
pub fn serve(listener: TcpListener) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let ep = Epoll::new()?;
    ep.ctl(
        libc::EPOLL_CTL_ADD,
        listener.as_raw_fd(),
        libc::EPOLLIN as u32,
        LISTENER,
    )?;
    let mut clients: Vec<Option<Client>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut out = vec![0u8; OUT_BUFFER];
    let mut last_sweep = Instant::now();
    loop {
        let n = ep.wait(&mut events, 1000)?;
        for ev in &events[..n] {
            let token = ev.u64;
            if token == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            if stream.set_nonblocking(true).is_err() {
                                continue;
                            }
                            let _ = stream.set_nodelay(true);
                            let slot = free.pop().unwrap_or_else(|| {
                                clients.push(None);
                                clients.len() - 1
                            });
                            let fd = stream.as_raw_fd();
                            clients[slot] = Some(Client {
                                stream,
                                conn: Conn::new(),
                                pending: Vec::new(),
                                closing: false,
                                last_active: Instant::now(),
                            });
                            if ep
                                .ctl(libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32, slot as u64)
                                .is_err()
                            {
                                clients[slot] = None;
                                free.push(slot);
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        // Out of descriptors and the like: try again later.
                        Err(_) => break,
                    }
                }
                continue;
            }
            let slot = token as usize;
            let Some(client) = clients.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            let was_waiting = !client.pending.is_empty();
            let next = if was_waiting {
                client.send_pending()
            } else if ev.events & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                client.on_readable(&mut out)
            } else {
                Next::Keep
            };
            let fd = client.stream.as_raw_fd();
            match next {
                Next::Keep if was_waiting => {
                    let _ = ep.ctl(libc::EPOLL_CTL_MOD, fd, libc::EPOLLIN as u32, token);
                }
                Next::Keep => {}
                Next::WaitWrite if !was_waiting => {
                    let _ = ep.ctl(libc::EPOLL_CTL_MOD, fd, libc::EPOLLOUT as u32, token);
                }
                Next::WaitWrite => {}
                Next::Drop => {
                    // Closing the descriptor removes it from the epoll set.
                    clients[slot] = None;
                    free.push(slot);
                }
            }
        }
        if last_sweep.elapsed().as_secs() >= 1 {
            last_sweep = Instant::now();
            for (slot, entry) in clients.iter_mut().enumerate() {
                if entry
                    .as_ref()
                    .is_some_and(|c| c.last_active.elapsed() > IDLE)
                {
                    *entry = None;
                    free.push(slot);
                }
            }
        }
    }
}
