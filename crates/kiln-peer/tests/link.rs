//! kiln-peer against a guest double on the other end of the socketpair, with
//! real tokio TCP clients on 127.0.0.1.

mod guest;

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram as StdDatagram;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use guest::{GuestStats, Server};
use kiln_peer::{Counters, LinkConfig, LinkEnd, PeerHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const HTTP_RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";

/// A link with a guest double (or none) and a local listener for clients.
struct Rig {
    peer: PeerHandle,
    link: JoinHandle<LinkEnd>,
    guest: Option<JoinHandle<()>>,
    guest_stats: Option<std::sync::Arc<GuestStats>>,
    /// Another descriptor of the guest's end, to inject frames through
    /// (and, for a silent guest, the only one: nobody reads it).
    guest_end: Option<StdDatagram>,
    listener: TcpListener,
}

fn socket_pair(seqpacket: bool) -> (StdDatagram, StdDatagram) {
    if seqpacket {
        let (a, b) =
            socket2::Socket::pair(socket2::Domain::UNIX, socket2::Type::SEQPACKET, None).unwrap();
        (
            StdDatagram::from(OwnedFd::from(a)),
            StdDatagram::from(OwnedFd::from(b)),
        )
    } else {
        StdDatagram::pair().unwrap()
    }
}

impl Rig {
    async fn new(server: Option<Server>) -> Rig {
        Rig::with(server, false).await
    }

    async fn with(server: Option<Server>, seqpacket: bool) -> Rig {
        let (host, guest_sock) = socket_pair(seqpacket);
        let guest_end = guest_sock.try_clone().unwrap();
        let (guest, guest_stats) = match server {
            Some(server) => {
                let (task, stats) = guest::spawn(guest_sock, server);
                (Some(task), Some(stats))
            }
            None => (None, None),
        };
        let (peer, link) = kiln_peer::spawn(host, LinkConfig::default()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Rig {
            peer,
            link,
            guest,
            guest_stats,
            guest_end: Some(guest_end),
            listener,
        }
    }

    /// A client connection whose accepted end is spliced into the guest.
    async fn client(&self) -> TcpStream {
        let addr = self.listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), self.listener.accept());
        self.peer.splice(accepted.unwrap().0).unwrap();
        client.unwrap()
    }

    /// A client whose kernel buffers (its receive buffer, the send buffer of
    /// the accepted end) are small, so a stall reaches the link quickly.
    async fn small_buffered_client(&self) -> TcpStream {
        let addr = self.listener.local_addr().unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(16 * 1024).unwrap();
        let (client, accepted) = tokio::join!(socket.connect(addr), self.listener.accept());
        let accepted = accepted.unwrap().0;
        socket2::SockRef::from(&accepted)
            .set_send_buffer_size(16 * 1024)
            .unwrap();
        self.peer.splice(accepted).unwrap();
        client.unwrap()
    }

    fn counters(&self) -> &Counters {
        self.peer.counters()
    }

    async fn wait_idle(&self) {
        let mut active = self.peer.active();
        tokio::time::timeout(Duration::from_secs(10), active.wait_for(|n| *n == 0))
            .await
            .expect("connections still active after 10 s")
            .unwrap();
    }
}

/// A payload that differs per connection and per position.
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes `data` (then EOF) while reading the echo to the end.
async fn echo(client: TcpStream, data: &[u8]) -> Vec<u8> {
    let (mut rd, mut wr) = client.into_split();
    let data = data.to_vec();
    let writer = tokio::spawn(async move {
        wr.write_all(&data).await.unwrap();
        wr.shutdown().await.unwrap();
        wr
    });
    let mut back = Vec::new();
    rd.read_to_end(&mut back).await.unwrap();
    drop(writer.await.unwrap());
    back
}

async fn within<T>(secs: u64, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {secs} s"))
}

/// Reads until EOF or reset; returns what was read and whether it ended
/// with an error (reset).
async fn read_until_closed(client: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match client.read(&mut buf).await {
            Ok(0) => return (got, false),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, true),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_sizes_are_byte_exact_and_counted() {
    let rig = Rig::new(Some(Server::Echo)).await;
    let mut total = 0u64;
    for (i, len) in [0usize, 1, 1460, 1461, 100_000, 1_000_000]
        .into_iter()
        .enumerate()
    {
        let data = payload(len, i as u64);
        let back = within(30, "echo", echo(rig.client().await, &data)).await;
        assert_eq!(back.len(), data.len(), "echo of {len} bytes");
        assert!(back == data, "echo of {len} bytes differs");
        total += len as u64;
    }
    rig.wait_idle().await;
    let c = rig.counters();
    assert_eq!(c.bytes_to_guest.load(Relaxed), total);
    assert_eq!(c.bytes_from_guest.load(Relaxed), total);
    assert_eq!(
        rig.guest_stats.as_ref().unwrap().received.load(Relaxed),
        total
    );
    assert_eq!(c.connections_total.load(Relaxed), 6);
    assert_eq!(c.connections_failed.load(Relaxed), 0);
    assert_eq!(c.frames_dropped.load(Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_connections() {
    let rig = Rig::new(Some(Server::Echo)).await;
    let mut clients = Vec::new();
    for i in 0..100u64 {
        clients.push(rig.client().await);
        let _ = i;
    }
    let mut active = rig.peer.active();
    // All 100 are handed in before any is finished (none has sent EOF).
    within(10, "100 active", active.wait_for(|n| *n == 100))
        .await
        .unwrap();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            tokio::spawn(async move {
                let data = payload(10_000 + i * 97, i as u64 + 100);
                let back = echo(client, &data).await;
                assert!(back == data, "connection {i} echoed wrong bytes");
                data.len() as u64
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += within(60, "concurrent echo", t).await.unwrap();
    }
    rig.wait_idle().await;
    assert_eq!(*rig.peer.active().borrow(), 0);
    let c = rig.counters();
    assert_eq!(c.connections_total.load(Relaxed), 100);
    assert_eq!(c.connections_failed.load(Relaxed), 0);
    assert_eq!(c.bytes_to_guest.load(Relaxed), total);
    assert_eq!(c.bytes_from_guest.load(Relaxed), total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_holds_back_the_guest_and_the_link() {
    let rig = Rig::new(Some(Server::Echo)).await;
    let data = payload(4 << 20, 3);
    let (mut rd, mut wr) = rig.small_buffered_client().await.into_split();
    let to_send = data.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(&to_send).await.unwrap();
        wr.shutdown().await.unwrap();
        wr
    });
    // Nobody reads: the echo fills the client's socket, then the link's
    // receive window, then the guest's buffers, then the link's send buffer;
    // from then on the link must leave the client's data in the kernel.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let queued = rig.counters().bytes_to_guest.load(Relaxed);
    let taken = rig.guest_stats.as_ref().unwrap().received.load(Relaxed);
    eprintln!("stalled: {queued} bytes taken from the client, {taken} read by the guest");
    assert!(
        queued < data.len() as u64,
        "the link read everything regardless"
    );
    // What the link took but the guest has not read fits in the link's send
    // buffer and the guest's receive buffer (plus a few segments).
    assert!(
        queued - taken <= 2 * kiln_peer::TCP_BUFFER as u64 + 4 * 1460,
        "{} bytes held between client and guest",
        queued - taken
    );
    let mut back = Vec::new();
    within(30, "draining", rd.read_to_end(&mut back))
        .await
        .unwrap();
    drop(writer.await.unwrap());
    assert!(back == data);
    rig.wait_idle().await;
}

#[tokio::test]
async fn client_half_close_still_gets_replies() {
    let rig = Rig::new(Some(Server::Echo)).await;
    let mut client = rig.client().await;
    client.write_all(b"first ").await.unwrap();
    client.write_all(b"second").await.unwrap();
    client.shutdown().await.unwrap();
    // The replies come after our FIN went through.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (got, reset) = within(10, "replies", read_until_closed(&mut client)).await;
    assert!(!reset);
    assert_eq!(got, b"first second");
    rig.wait_idle().await;
}

#[tokio::test]
async fn guest_half_close_reaches_the_client_which_may_still_send() {
    let rig = Rig::new(Some(Server::Http(HTTP_RESPONSE))).await;
    let mut client = rig.client().await;
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The guest answers and closes its sending half: we see EOF...
    let (got, reset) = within(10, "response", read_until_closed(&mut client)).await;
    assert!(!reset);
    assert_eq!(got, HTTP_RESPONSE);
    // ...but the connection is still open towards the guest.
    assert_eq!(*rig.peer.active().borrow(), 1);
    client
        .write_all(b"more after the guest's FIN")
        .await
        .unwrap();
    client.shutdown().await.unwrap();
    rig.wait_idle().await;
    let sent = 27 + 26;
    assert_eq!(rig.counters().bytes_to_guest.load(Relaxed), sent);
    let stats = rig.guest_stats.as_ref().unwrap();
    within(5, "guest got all", async {
        while stats.received.load(Relaxed) != sent {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(
        rig.counters().bytes_from_guest.load(Relaxed),
        HTTP_RESPONSE.len() as u64
    );
}

#[tokio::test]
async fn refused_connection_fails_promptly() {
    let rig = Rig::new(Some(Server::Refuse)).await;
    let started = Instant::now();
    let mut client = rig.client().await;
    let (got, _reset) = within(3, "refusal", read_until_closed(&mut client)).await;
    assert!(got.is_empty());
    eprintln!("refused after {:?}", started.elapsed());
    rig.wait_idle().await;
    assert_eq!(rig.counters().connections_failed.load(Relaxed), 1);
    assert_eq!(rig.counters().connections_total.load(Relaxed), 1);
}

#[tokio::test]
async fn silent_guest_times_out() {
    // Nobody reads the guest end: ARP is never answered.
    let rig = Rig::new(None).await;
    let started = Instant::now();
    let mut client = rig.client().await;
    let (got, _reset) = within(10, "connect timeout", read_until_closed(&mut client)).await;
    let waited = started.elapsed();
    assert!(got.is_empty());
    assert!(
        waited >= kiln_peer::CONNECT_TIMEOUT,
        "gave up after {waited:?}"
    );
    assert_eq!(rig.counters().connections_failed.load(Relaxed), 1);
    assert_eq!(*rig.peer.active().borrow(), 0);
}

/// Closes the guest end under an established, idle connection.
async fn peer_gone(seqpacket: bool) {
    let mut rig = Rig::with(Some(Server::Echo), seqpacket).await;
    let mut client = rig.client().await;
    client.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    within(5, "ping", client.read_exact(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf, b"ping");

    // Let the delayed ACK of the echo go out first: then only keep-alive
    // makes the link send again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let guest = rig.guest.take().unwrap();
    guest.abort();
    let _ = guest.await;
    drop(rig.guest_end.take());
    let started = Instant::now();

    // SOCK_SEQPACKET shows the close at once; SOCK_DGRAM only when the link
    // next sends, here the keep-alive probe.
    let limit = if seqpacket {
        2
    } else {
        kiln_peer::KEEP_ALIVE.as_secs() + 3
    };
    let end = within(limit, "link end", &mut rig.link).await.unwrap();
    eprintln!(
        "link ended ({end:?}) {:?} after the guest end closed",
        started.elapsed()
    );
    assert!(matches!(end, LinkEnd::PeerGone), "{end:?}");
    let (_, _) = within(2, "client closed", read_until_closed(&mut client)).await;
    assert_eq!(rig.counters().connections_failed.load(Relaxed), 1);
    assert_eq!(*rig.peer.active().borrow(), 0);
    let addr = rig.listener.local_addr().unwrap();
    let (_c, accepted) = tokio::join!(TcpStream::connect(addr), rig.listener.accept());
    assert!(rig.peer.splice(accepted.unwrap().0).is_err());
}

#[tokio::test]
async fn peer_gone_seqpacket_is_seen_at_once() {
    peer_gone(true).await;
}

#[tokio::test]
async fn peer_gone_dgram_is_seen_by_keep_alive() {
    peer_gone(false).await;
}

#[tokio::test]
async fn splice_after_peer_gone_dgram() {
    // The instance exited before the first connection: the first frame the
    // link sends (ARP) reveals it.
    let mut rig = Rig::new(None).await;
    drop(rig.guest_end.take());
    let addr = rig.listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), rig.listener.accept());
    let mut client = client.unwrap();
    rig.peer.splice(accepted.unwrap().0).unwrap();
    let end = within(2, "link end", rig.link).await.unwrap();
    assert!(matches!(end, LinkEnd::PeerGone), "{end:?}");
    let (got, _) = within(2, "client closed", read_until_closed(&mut client)).await;
    assert!(got.is_empty());
    assert_eq!(rig.peer.counters().connections_failed.load(Relaxed), 1);
    // A dead link hands the client back.
    let (_c, accepted) = tokio::join!(TcpStream::connect(addr), rig.listener.accept());
    let err = rig.peer.splice(accepted.unwrap().0).unwrap_err();
    assert!(err.0.peer_addr().is_ok());
}

fn garbage_frames() -> Vec<Vec<u8>> {
    let host_mac = LinkConfig::default().host_mac;
    let mut frames = Vec::new();
    let mut rng = payload(1 << 20, 99).into_iter();
    let mut next = move || rng.next().unwrap();
    // Random bytes of random lengths, some addressed to the host's MAC.
    for i in 0..300 {
        let len = (usize::from(next()) << 3 | usize::from(next()) & 7) % 1600;
        let mut f: Vec<u8> = (0..len).map(|_| next()).collect();
        if i % 2 == 0 && len >= 6 {
            f[..6].copy_from_slice(&host_mac);
        }
        frames.push(f);
    }
    // Truncated headers: Ethernet, then IPv4/ARP with short bodies.
    for len in 0..60 {
        let mut f = vec![0u8; len];
        for (i, b) in f.iter_mut().enumerate() {
            *b = match i {
                0..=5 => host_mac[i],
                6..=11 => 0x02,
                12 => 0x08,
                13 => {
                    if len % 2 == 0 {
                        0x00
                    } else {
                        0x06
                    }
                }
                14 => 0x45,
                _ => next(),
            };
        }
        frames.push(f);
    }
    // IPv4 to the host with a bad checksum, from a wrong IP, and IPv6.
    let mut ipv4 = vec![0u8; 60];
    ipv4[..6].copy_from_slice(&host_mac);
    ipv4[6..12].copy_from_slice(&guest::GUEST_MAC);
    ipv4[12..14].copy_from_slice(&[0x08, 0x00]);
    ipv4[14..34].copy_from_slice(&[
        0x45, 0, 0, 46, 0, 0, 0x40, 0, 64, 6, 0xde, 0xad, 10, 0, 0, 9, 10, 0, 0, 1,
    ]);
    frames.push(ipv4.clone());
    let mut v6 = ipv4;
    v6[12..14].copy_from_slice(&[0x86, 0xdd]);
    frames.push(v6);
    // Jumbo and oversized frames.
    for len in [1515, 1600, 9000, 65_536, 100_000] {
        let mut f: Vec<u8> = (0..len).map(|_| next()).collect();
        f[..6].copy_from_slice(&host_mac);
        frames.push(f);
    }
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frames_do_not_disturb_a_running_connection() {
    let rig = Rig::new(Some(Server::Echo)).await;
    let data = payload(1_000_000, 5);
    let client = rig.client().await;
    let inject = rig.guest_end.as_ref().unwrap().try_clone().unwrap();
    let frames = garbage_frames();
    let count = frames.len();
    let injector = std::thread::spawn(move || {
        let mut sent = 0;
        for round in 0..5 {
            for f in &frames {
                // Sent from the guest's end, so they reach the link; a full
                // socket is waited out.
                loop {
                    match inject.send(f) {
                        Ok(_) => break sent += 1,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_micros(200))
                        }
                        Err(e) => panic!("injecting garbage: {e}"),
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10 * round));
        }
        sent
    });
    let back = within(60, "echo under garbage", echo(client, &data)).await;
    let sent = injector.join().unwrap();
    assert!(back == data, "echo under garbage differs");
    eprintln!(
        "{sent} garbage datagrams ({count} kinds), {} dropped before the stack",
        rig.counters().frames_dropped.load(Relaxed)
    );
    assert!(rig.counters().frames_dropped.load(Relaxed) > 0);
    // And the link still works afterwards.
    let back = within(
        10,
        "echo after garbage",
        echo(rig.client().await, b"still here"),
    )
    .await;
    assert_eq!(back, b"still here");
    rig.wait_idle().await;
    assert_eq!(rig.counters().connections_failed.load(Relaxed), 0);
}

#[tokio::test]
async fn close_resets_clients_and_ends_the_link() {
    let rig = Rig::new(Some(Server::Echo)).await;
    let mut client = rig.client().await;
    client.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    within(5, "echo", client.read_exact(&mut b)).await.unwrap();
    rig.peer.close();
    let end = within(2, "link end", rig.link).await.unwrap();
    assert!(matches!(end, LinkEnd::Closed), "{end:?}");
    let (_, reset) = within(2, "client closed", read_until_closed(&mut client)).await;
    assert!(reset, "close() resets spliced clients");
    assert_eq!(*rig.peer.active().borrow(), 0);
    // close() is not a failure of the connection.
    assert_eq!(rig.peer.counters().connections_failed.load(Relaxed), 0);
    let addr = rig.listener.local_addr().unwrap();
    let (_c, accepted) = tokio::join!(TcpStream::connect(addr), rig.listener.accept());
    assert!(rig.peer.splice(accepted.unwrap().0).is_err());
}

#[tokio::test]
async fn dropping_every_handle_ends_the_link() {
    let (host, _guest) = StdDatagram::pair().unwrap();
    let (peer, link) = kiln_peer::spawn(host, LinkConfig::default()).unwrap();
    let other = peer.clone();
    drop(peer);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!link.is_finished());
    drop(other);
    let end = within(2, "link end", link).await.unwrap();
    assert!(matches!(end, LinkEnd::Closed), "{end:?}");
}

#[tokio::test]
async fn a_stream_socket_is_refused() {
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let not_datagram = StdDatagram::from(OwnedFd::from(a));
    let err = kiln_peer::spawn(not_datagram, LinkConfig::default()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    let (a, _b) = StdDatagram::pair().unwrap();
    let bad = LinkConfig {
        prefix: 33,
        ..LinkConfig::default()
    };
    assert!(kiln_peer::spawn(a, bad).is_err());
}

/// Prints MB/s of an echo through both stacks (each byte crosses the link
/// twice); no assertion on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput() {
    let rig = Rig::new(Some(Server::Echo)).await;
    let len = 32 << 20;
    let data = payload(len, 1);
    let started = Instant::now();
    let back = within(300, "throughput echo", echo(rig.client().await, &data)).await;
    let secs = started.elapsed().as_secs_f64();
    assert!(back == data);
    println!(
        "throughput: {} MiB echoed in {secs:.2} s: {:.1} MB/s each way",
        len >> 20,
        len as f64 / secs / 1e6
    );
}
