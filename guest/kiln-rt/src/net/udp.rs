//! UDP: [`UdpSocket`].

use alloc::vec;
use core::future::poll_fn;
use core::net::SocketAddr;
use core::task::Poll;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::udp;
use smoltcp::wire::IpEndpoint;

use super::stack;
use super::Error;

/// Datagrams queued per direction at most.
const QUEUE_DATAGRAMS: usize = 64;
/// Bytes of payload queued for receiving: room for the largest datagram.
const RX_BYTES: usize = 64 * 1024;
/// Bytes of payload queued for sending: 32 KiB, or room for the largest
/// datagram `send_to` takes (64 KiB with the `udp-64k` feature).
const TX_BYTES: usize = {
    let largest = stack::MAX_UDP_PAYLOAD_V4.next_power_of_two();
    if largest > 32 * 1024 {
        largest
    } else {
        32 * 1024
    }
};
const _: () =
    assert!(RX_BYTES >= stack::MAX_UDP_PAYLOAD_V4 && TX_BYTES >= stack::MAX_UDP_PAYLOAD_V4);

/// A UDP socket bound to a port on every address of the interface.
///
/// Over IPv4, datagrams of up to 65,507 bytes are received: those larger
/// than a frame (the MTU less 28 bytes of IP and UDP headers; 1,472 bytes at
/// kiln's MTU of 1500) arrive in IP fragments and are reassembled. Sending
/// them takes the `udp-64k` feature; without it `send_to` takes one frame.
/// Over IPv6 datagrams must fit one frame (MTU − 48 bytes) both ways; IPv6
/// fragments are neither sent nor reassembled. Larger ones are refused with
/// [`Error::MessageTooLong`]. When the receive queue (64 KiB) is full, new
/// datagrams are dropped, as are those whose fragments do not all arrive
/// within 5 seconds. One task at a time should wait in
/// [`recv_from`](Self::recv_from) (and one in [`send_to`](Self::send_to)).
#[derive(Debug)]
pub struct UdpSocket {
    handle: SocketHandle,
    port: u16,
}

impl UdpSocket {
    /// Binds `port`; 0 picks a free ephemeral port. Starts the network
    /// stack if needed.
    pub fn bind(port: u16) -> Result<UdpSocket, Error> {
        stack::with(|s| {
            let port = if port == 0 { s.ephemeral_port() } else { port };
            let in_use = s.sockets.iter().any(|(_, sock)| {
                matches!(sock, smoltcp::socket::Socket::Udp(u) if u.endpoint().port == port)
            });
            if in_use {
                return Err(Error::AddrInUse);
            }
            let rx = udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; QUEUE_DATAGRAMS],
                vec![0; RX_BYTES],
            );
            let tx = udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; QUEUE_DATAGRAMS],
                vec![0; TX_BYTES],
            );
            let mut socket = udp::Socket::new(rx, tx);
            socket.bind(port).map_err(|_| Error::InvalidInput)?;
            let handle = s.sockets.add(socket);
            s.udp_count += 1;
            s.note_bound();
            Ok(UdpSocket { handle, port })
        })?
    }

    /// The local port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sends `buf` as one datagram to `addr` (waiting for room in the send
    /// queue): `buf.len()`. [`Error::MessageTooLong`] when `buf` is larger
    /// than a datagram to `addr` can be (see [`UdpSocket`]).
    pub async fn send_to(&self, buf: &[u8], addr: SocketAddr) -> Result<usize, Error> {
        if addr.port() == 0 || addr.ip().is_unspecified() {
            return Err(Error::Unaddressable);
        }
        let handle = self.handle;
        let too_long = stack::with(|s| {
            let socket = s.sockets.get::<udp::Socket>(handle);
            buf.len() > s.max_udp_payload(&addr.ip()) || buf.len() > socket.payload_send_capacity()
        })?;
        if too_long {
            return Err(Error::MessageTooLong);
        }
        poll_fn(|cx| {
            stack::with(|s| {
                let socket = s.sockets.get_mut::<udp::Socket>(handle);
                match socket.send_slice(buf, IpEndpoint::from(addr)) {
                    Ok(()) => {
                        s.dirty = true;
                        Poll::Ready(Ok(buf.len()))
                    }
                    Err(udp::SendError::BufferFull) => {
                        socket.register_send_waker(cx.waker());
                        Poll::Pending
                    }
                    Err(udp::SendError::Unaddressable) => Poll::Ready(Err(Error::Unaddressable)),
                }
            })
            .unwrap_or(Poll::Ready(Err(Error::NoDevice)))
        })
        .await
    }

    /// Receives one datagram into `buf` (waiting for one): its length and
    /// sender. A datagram longer than `buf` is cut to fit; the rest is lost.
    pub async fn recv_from(&self, buf: &mut [u8]) -> Result<(usize, SocketAddr), Error> {
        let handle = self.handle;
        poll_fn(|cx| {
            stack::with(|s| {
                let socket = s.sockets.get_mut::<udp::Socket>(handle);
                match socket.recv() {
                    Ok((data, meta)) => {
                        let n = data.len().min(buf.len());
                        buf[..n].copy_from_slice(&data[..n]);
                        let from = SocketAddr::new(meta.endpoint.addr.into(), meta.endpoint.port);
                        Poll::Ready(Ok((n, from)))
                    }
                    Err(udp::RecvError::Exhausted) | Err(udp::RecvError::Truncated) => {
                        socket.register_recv_waker(cx.waker());
                        Poll::Pending
                    }
                }
            })
            .unwrap_or(Poll::Ready(Err(Error::NoDevice)))
        })
        .await
    }
}

impl Drop for UdpSocket {
    fn drop(&mut self) {
        stack::with_running(|s| {
            let socket = s.sockets.remove(self.handle);
            s.udp_count = s.udp_count.saturating_sub(1);
            drop(socket);
        });
    }
}
