//! TCP: [`TcpListener`] and [`TcpStream`].

use core::future::poll_fn;
use core::net::SocketAddr;
use core::task::Poll;
use core::time::Duration;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::IpEndpoint;

use super::stack::{self, smol_duration};
use super::Error;

/// How long `connect` waits for the handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn socket_addr(e: Option<IpEndpoint>) -> SocketAddr {
    match e {
        Some(e) => SocketAddr::new(e.addr.into(), e.port),
        None => SocketAddr::new(core::net::Ipv4Addr::UNSPECIFIED.into(), 0),
    }
}

/// A TCP port accepting connections on every address of the interface.
///
/// It keeps a few listening sockets ready and replaces each one as soon as a
/// connection arrives, so many clients connecting at once are all accepted.
/// Dropping the listener closes the connections not yet accepted.
#[derive(Debug)]
pub struct TcpListener {
    id: u64,
    port: u16,
}

impl TcpListener {
    /// Listens on `port` (1..=65535). Starts the network stack if needed.
    pub fn bind(port: u16) -> Result<TcpListener, Error> {
        let id = stack::with(|s| s.listen(port))??;
        Ok(TcpListener { id, port })
    }

    /// The port listened on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Waits for the next established connection.
    pub async fn accept(&self) -> TcpStream {
        let handle = poll_fn(|cx| match stack::with(|s| s.poll_accept(self.id, cx)) {
            Ok(Poll::Ready(Ok(handle))) => Poll::Ready(handle),
            // The listener exists as long as `self`, and the stack never
            // stops once started: nothing else can happen.
            _ => Poll::Pending,
        })
        .await;
        TcpStream::from_handle(handle)
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        stack::with_running(|s| s.unlisten(self.id));
    }
}

/// A TCP connection.
///
/// Reads and writes are async and copy into and out of the socket's
/// buffers (16 KiB each way). Dropping the stream closes it gracefully in
/// the background (unsent data is still delivered); [`shutdown`] closes the
/// sending half and keeps reading possible.
///
/// [`shutdown`]: TcpStream::shutdown
#[derive(Debug)]
pub struct TcpStream {
    handle: SocketHandle,
    peer: SocketAddr,
    local: SocketAddr,
}

impl TcpStream {
    fn from_handle(handle: SocketHandle) -> TcpStream {
        let (peer, local) = stack::with_running(|s| {
            let socket = s.tcp(handle);
            (
                socket_addr(socket.remote_endpoint()),
                socket_addr(socket.local_endpoint()),
            )
        })
        .unwrap_or((socket_addr(None), socket_addr(None)));
        TcpStream {
            handle,
            peer,
            local,
        }
    }

    /// Connects to `addr`; fails with [`Error::ConnectionRefused`] when the
    /// peer resets or does not answer within 10 seconds.
    pub async fn connect(addr: SocketAddr) -> Result<TcpStream, Error> {
        if addr.port() == 0 || addr.ip().is_unspecified() {
            return Err(Error::Unaddressable);
        }
        let handle = stack::with(|s| {
            let handle = s.new_tcp().ok_or(Error::TooManySockets)?;
            let port = s.ephemeral_port();
            let socket = s.sockets.get_mut::<tcp::Socket>(handle);
            socket.set_timeout(Some(smol_duration(CONNECT_TIMEOUT)));
            match socket.connect(s.iface.context(), IpEndpoint::from(addr), port) {
                Ok(()) => Ok(handle),
                Err(_) => {
                    s.release_tcp(handle);
                    Err(Error::Unaddressable)
                }
            }
        })??;
        // From here on, dropping `stream` (also when this future is dropped)
        // releases the socket.
        let stream = TcpStream {
            handle,
            peer: addr,
            local: socket_addr(None),
        };
        poll_fn(|cx| {
            stack::with(|s| {
                let socket = s.tcp(handle);
                match socket.state() {
                    tcp::State::SynSent | tcp::State::SynReceived => {
                        socket.register_recv_waker(cx.waker());
                        Poll::Pending
                    }
                    tcp::State::Closed => Poll::Ready(Err(Error::ConnectionRefused)),
                    _ => Poll::Ready(Ok(())),
                }
            })
            .unwrap_or(Poll::Ready(Err(Error::NoDevice)))
        })
        .await?;
        let mut stream = stream;
        stack::with_running(|s| {
            let socket = s.tcp(handle);
            socket.set_timeout(None);
            stream.local = socket_addr(socket.local_endpoint());
        });
        Ok(stream)
    }

    /// The remote address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Reads what is available into `buf` (waiting until something is):
    /// the number of bytes read, 0 once the peer closed its sending half
    /// (or when `buf` is empty).
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        let handle = self.handle;
        poll_fn(|cx| {
            stack::with(|s| {
                let socket = s.tcp(handle);
                match socket.recv_slice(buf) {
                    Ok(0) => {
                        socket.register_recv_waker(cx.waker());
                        Poll::Pending
                    }
                    Ok(n) => {
                        // The window grew: the stack may owe the peer an update.
                        s.dirty = true;
                        Poll::Ready(Ok(n))
                    }
                    Err(tcp::RecvError::Finished) => Poll::Ready(Ok(0)),
                    Err(tcp::RecvError::InvalidState) => Poll::Ready(Err(Error::ConnectionReset)),
                }
            })
            .unwrap_or(Poll::Ready(Err(Error::NoDevice)))
        })
        .await
    }

    /// Writes some of `buf` (waiting for room in the send buffer): the
    /// number of bytes queued for sending.
    pub async fn write(&mut self, buf: &[u8]) -> Result<usize, Error> {
        if buf.is_empty() {
            return Ok(0);
        }
        let handle = self.handle;
        poll_fn(|cx| {
            stack::with(|s| {
                let socket = s.tcp(handle);
                match socket.send_slice(buf) {
                    Ok(0) => {
                        socket.register_send_waker(cx.waker());
                        Poll::Pending
                    }
                    Ok(n) => {
                        s.dirty = true;
                        Poll::Ready(Ok(n))
                    }
                    Err(tcp::SendError::InvalidState) => Poll::Ready(Err(write_error(socket))),
                }
            })
            .unwrap_or(Poll::Ready(Err(Error::NoDevice)))
        })
        .await
    }

    /// Writes all of `buf`.
    pub async fn write_all(&mut self, mut buf: &[u8]) -> Result<(), Error> {
        while !buf.is_empty() {
            let n = self.write(buf).await?;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Waits until everything written so far has been sent and acknowledged
    /// by the peer.
    pub async fn flush(&mut self) -> Result<(), Error> {
        let handle = self.handle;
        poll_fn(|cx| {
            stack::with(|s| {
                let socket = s.tcp(handle);
                if socket.send_queue() == 0 {
                    Poll::Ready(Ok(()))
                } else if !socket.is_open() {
                    Poll::Ready(Err(Error::ConnectionReset))
                } else {
                    socket.register_send_waker(cx.waker());
                    Poll::Pending
                }
            })
            .unwrap_or(Poll::Ready(Err(Error::NoDevice)))
        })
        .await
    }

    /// Closes the sending half: the peer reads end-of-stream after the data
    /// already written. Reading stays possible.
    pub fn shutdown(&mut self) -> Result<(), Error> {
        stack::with_running(|s| {
            s.tcp(self.handle).close();
            s.dirty = true;
        })
        .ok_or(Error::NoDevice)
    }

    /// Sends small writes at once instead of coalescing them while data is
    /// unacknowledged (disables Nagle's algorithm), like `TCP_NODELAY`.
    pub fn set_nodelay(&mut self, nodelay: bool) {
        stack::with_running(|s| s.tcp(self.handle).set_nagle_enabled(!nodelay));
    }

    /// Sends keep-alive probes after `interval` of silence; with them, a
    /// peer that vanished is detected (the connection then resets).
    pub fn set_keepalive(&mut self, interval: Option<Duration>) {
        stack::with_running(|s| {
            s.tcp(self.handle)
                .set_keep_alive(interval.map(smol_duration))
        });
    }

    /// Whether the peer closed its sending half and everything it sent was
    /// read.
    pub fn is_read_closed(&self) -> bool {
        stack::with_running(|s| !s.tcp(self.handle).may_recv()).unwrap_or(true)
    }
}

/// Why `socket` cannot send.
fn write_error(socket: &tcp::Socket<'_>) -> Error {
    match socket.state() {
        tcp::State::Closed => Error::ConnectionReset,
        _ => Error::Closed,
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        stack::with_running(|s| s.release_tcp(self.handle));
    }
}
