//! `kiln run --ready-fd N` and `--net fd:N`, as kilnd uses them: the test
//! is the parent that hands kiln a pipe for the READY byte and one end of
//! a datagram socket pair for the network, and is itself the instance's
//! only network peer (a small smoltcp client: ARP, TCP, `GET /`). No
//! passt, no tap, no root; every tender this host supports.

mod common;

use common::{image, kiln, tcp_syn_frame, tenders};
use kiln_abi::EXIT_TENDER_ERROR;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};

/// Upper bound for anything to happen (a hang, not a measurement).
const PATIENCE: Duration = Duration::from_secs(30);
/// The guest's address and the test peer's, on the link between them.
const GUEST: [u8; 4] = [10, 0, 0, 2];
const PEER: [u8; 4] = [10, 0, 0, 1];

/// A descriptor copied to 10 or above (close-on-exec), so that placing the
/// copies at 3 and 4 in the child cannot overwrite one with the other.
fn high(fd: &impl AsRawFd) -> OwnedFd {
    // SAFETY: F_DUPFD_CLOEXEC takes an integer and returns a new
    // descriptor that nothing else owns.
    let raw = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    assert!(raw >= 10, "F_DUPFD_CLOEXEC failed");
    // SAFETY: `raw` is new and ours.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2");
    // SAFETY: both are new and ours.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// `kiln run --tender T ARGS... IMAGE` with `inherit` placed at the given
/// descriptor numbers in the child (and every other descriptor of ours
/// closed there, as std does).
fn spawn(
    tender: &str,
    args: &[&str],
    image: &std::path::Path,
    inherit: &[(OwnedFd, RawFd)],
) -> Running {
    let moves: Vec<(RawFd, RawFd)> = inherit
        .iter()
        .map(|(fd, at)| (fd.as_raw_fd(), *at))
        .collect();
    let mut cmd = kiln();
    cmd.args(["run", "--tender", tender])
        .args(args)
        .arg(image)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs between fork and exec and calls only dup2,
    // which is async-signal-safe; every source is open and at 10 or above.
    unsafe {
        cmd.pre_exec(move || {
            for &(from, to) in &moves {
                if libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Running(Some(cmd.spawn().expect("start kiln")))
}

/// A started `kiln run`, killed and reaped when dropped, so that a failing
/// test leaves no instance behind.
struct Running(Option<Child>);

impl Running {
    fn into_inner(mut self) -> Child {
        self.0.take().expect("a running kiln")
    }
}

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.0.as_ref().expect("a running kiln")
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("a running kiln")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits up to `limit` for `fd` to become readable (or hang up).
fn readable(fd: &OwnedFd, limit: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, limit.as_millis() as libc::c_int) };
    n > 0
}

/// Everything the ready pipe carries until end of file.
fn drain(fd: OwnedFd) -> Vec<u8> {
    let mut out = Vec::new();
    std::fs::File::from(fd)
        .read_to_end(&mut out)
        .expect("read the ready pipe");
    out
}

fn finish(child: Running) -> (i32, String) {
    let mut child = child.into_inner();
    let _ = child.kill();
    let out = child.wait_with_output().expect("wait for kiln");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Descriptors to place in the child: ours, and the number it gets there.
type Inherit = Vec<(OwnedFd, RawFd)>;

// ---- the test-side network peer ---------------------------------------

/// Frames the peer sent, by kind.
#[derive(Debug, Default, Clone, Copy)]
struct Sent {
    arp_requests: u32,
    syns: u32,
}

/// One Ethernet frame per datagram on the test's end of the socket pair.
struct Link<'a> {
    sock: &'a UnixDatagram,
    buf: Vec<u8>,
    sent: Sent,
}

struct Rx(Vec<u8>);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

struct Tx<'a> {
    sock: &'a UnixDatagram,
    sent: &'a mut Sent,
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; len];
        let r = f(&mut frame);
        // ARP request: ethertype 0x0806, operation 1.
        if frame.len() >= 22 && frame[12..14] == [0x08, 0x06] && frame[20..22] == [0, 1] {
            self.sent.arp_requests += 1;
        }
        // TCP (IPv4 protocol 6, header without options) with SYN and no ACK.
        if frame.len() >= 48 && frame[12..14] == [0x08, 0x00] && frame[23] == 6 {
            let flags = frame[14 + 20 + 13];
            if flags & 0x02 != 0 && flags & 0x10 == 0 {
                self.sent.syns += 1;
            }
        }
        self.sock.send(&frame).expect("send a frame to the guest");
        r
    }
}

impl phy::Device for Link<'_> {
    type RxToken<'a>
        = Rx
    where
        Self: 'a;
    type TxToken<'a>
        = Tx<'a>
    where
        Self: 'a;

    fn receive(&mut self, _: SmolInstant) -> Option<(Rx, Tx<'_>)> {
        match self.sock.recv(&mut self.buf) {
            Ok(n) => Some((
                Rx(self.buf[..n].to_vec()),
                Tx {
                    sock: self.sock,
                    sent: &mut self.sent,
                },
            )),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("the guest's link failed: {e}"),
        }
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<Tx<'_>> {
        Some(Tx {
            sock: self.sock,
            sent: &mut self.sent,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

/// Connects once to the guest's port 80, sends `GET /` and returns the
/// whole response (the server closes after it) and what the peer sent.
fn http_get(sock: &UnixDatagram) -> Result<(String, Sent), String> {
    sock.set_nonblocking(true).unwrap();
    let start = Instant::now();
    let now = || SmolInstant::from_micros(start.elapsed().as_micros() as i64);
    let mut link = Link {
        sock,
        buf: vec![0; 65536],
        sent: Sent::default(),
    };
    let mac = EthernetAddress([0x02, 0x74, 0x65, 0x73, 0x74, 0x01]);
    let mut iface = Interface::new(
        Config::new(HardwareAddress::Ethernet(mac)),
        &mut link,
        now(),
    );
    iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(IpAddress::Ipv4(Ipv4Address::from(PEER)), 24))
            .unwrap();
    });
    let mut sockets = SocketSet::new(Vec::new());
    let tcp = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 65536]),
        tcp::SocketBuffer::new(vec![0; 4096]),
    );
    let handle = sockets.add(tcp);
    let guest = (IpAddress::Ipv4(Ipv4Address::from(GUEST)), 80);
    sockets
        .get_mut::<tcp::Socket>(handle)
        .connect(iface.context(), guest, 40_000)
        .map_err(|e| format!("connect: {e}"))?;
    let request = b"GET / HTTP/1.1\r\nHost: guest\r\nConnection: close\r\n\r\n";
    let mut sent_request = false;
    let mut response = Vec::new();
    while start.elapsed() < PATIENCE {
        iface.poll(now(), &mut link, &mut sockets);
        let s = sockets.get_mut::<tcp::Socket>(handle);
        if !sent_request && s.may_send() {
            s.send_slice(request).map_err(|e| format!("send: {e}"))?;
            sent_request = true;
        }
        while s.can_recv() {
            s.recv(|data| {
                response.extend_from_slice(data);
                (data.len(), ())
            })
            .map_err(|e| format!("recv: {e}"))?;
        }
        if sent_request && !s.may_recv() {
            // The server closed after its response (Connection: close).
            return Ok((String::from_utf8_lossy(&response).into_owned(), link.sent));
        }
        if s.state() == tcp::State::Closed {
            return Err(format!(
                "the connection was closed before a response (refused or reset); got {:?}, sent {:?}",
                String::from_utf8_lossy(&response),
                link.sent
            ));
        }
        let wait = iface
            .poll_delay(now(), &sockets)
            .map_or(Duration::from_millis(50), |d| {
                Duration::from_micros(d.total_micros()).min(Duration::from_millis(50))
            });
        let mut pfd = libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, wait.as_millis() as libc::c_int) };
    }
    Err(format!(
        "no complete response within {PATIENCE:?}; got {:?}, sent {:?}",
        String::from_utf8_lossy(&response),
        link.sent
    ))
}

// ---- the tests --------------------------------------------------------

/// READY arrives on the pipe, and right after it the first connection
/// attempt is answered: the guest listens by the time it says so.
#[test]
fn ready_byte_comes_before_the_first_request_which_succeeds_at_once() {
    let img = image("examples/http");
    for t in tenders() {
        let (ready_r, ready_w) = pipe();
        let (ours, theirs) = UnixDatagram::pair().unwrap();
        let child = spawn(
            t,
            &[
                "-v",
                "--ready-fd",
                "3",
                "--net",
                "fd:4",
                "--ip",
                "10.0.0.2/24",
                "--gateway",
                "10.0.0.1",
            ],
            &img,
            &[(high(&ready_w), 3), (high(&theirs), 4)],
        );
        // Only the child holds the write end and the guest's socket now.
        drop(ready_w);
        drop(theirs);
        if !readable(&ready_r, PATIENCE) {
            let (status, stderr) = finish(child);
            panic!("{t}: no READY within {PATIENCE:?} (status {status}):\n{stderr}");
        }
        let mut byte = [0u8; 1];
        // SAFETY: `byte` is valid for a one-byte write.
        let n = unsafe { libc::read(ready_r.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
        assert_eq!((n, byte[0]), (1, b'R'), "{t}: the READY byte");
        // At once: one connection, no retry.
        let result = http_get(&ours);
        drop(ours);
        let (status, stderr) = finish(child);
        let (response, sent) = match result {
            Ok(r) => r,
            Err(e) => panic!("{t}: HTTP after READY failed: {e}\n{stderr}"),
        };
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "{t}: response {response:?}\n{stderr}"
        );
        assert_eq!(
            sent.syns, 1,
            "{t}: the connection needed a retry:\n{stderr}"
        );
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with("kiln: ready after ") && l.ends_with(" ms")),
            "{t}: no -v ready line (status {status}):\n{stderr}"
        );
        // Exactly one byte in all, then end of file once kiln is gone.
        assert_eq!(drain(ready_r), b"", "{t}: more than one READY byte");
    }
}

/// An image that never binds never says it is ready: the reader sees end
/// of file when the instance ends, and no byte.
#[test]
fn an_image_that_never_binds_sends_no_ready() {
    let img = image("examples/hello");
    for t in tenders() {
        let (ready_r, ready_w) = pipe();
        let child = spawn(t, &["--ready-fd", "3"], &img, &[(high(&ready_w), 3)]);
        drop(ready_w);
        let out = child.into_inner().wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{t}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Hello from kiln!"),
            "{t}: {out:?}"
        );
        assert_eq!(drain(ready_r), b"", "{t}: a READY byte from hello");
    }
}

/// `--net fd:N` and `--ready-fd N` that name no usable descriptor are
/// clear errors (status 125), before anything starts.
#[test]
fn bad_inherited_descriptors_are_refused() {
    let img = image("examples/http");
    let file = std::fs::File::open(common::root().join("Cargo.toml")).unwrap();
    let (stream, _stream_peer) = std::os::unix::net::UnixStream::pair().unwrap();
    let (pipe_r, _pipe_w) = pipe();
    for t in tenders() {
        let cases: Vec<(Vec<&str>, Inherit, &str)> = vec![
            (
                vec!["--net", "fd:200"],
                vec![],
                "--net fd:200: descriptor 200 is not open",
            ),
            (
                vec!["--net", "fd:5"],
                vec![(high(&file), 5)],
                "--net fd:5: descriptor 5 is a regular file, not a socket",
            ),
            (
                vec!["--net", "fd:6"],
                vec![(high(&stream), 6)],
                "--net fd:6: descriptor 6 is a stream socket; kiln expects one frame per message",
            ),
            (
                vec!["--net", "fd:1"],
                vec![],
                "--net fd:1: descriptor 1 is standard input, output or error",
            ),
            (
                vec!["--ready-fd", "200"],
                vec![],
                "--ready-fd 200: descriptor 200 is not open",
            ),
            (
                vec!["--ready-fd", "7"],
                vec![(high(&pipe_r), 7)],
                "--ready-fd 7: descriptor 7 is open for reading only",
            ),
        ];
        for (args, inherit, want) in cases {
            let child = spawn(t, &args, &img, &inherit);
            let out = child.into_inner().wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(i32::from(EXIT_TENDER_ERROR)),
                "{t} {args:?}: {stderr}"
            );
            assert!(
                stderr.contains(want),
                "{t} {args:?}: want {want:?} in {stderr}"
            );
        }
    }
    // A descriptor given twice is refused too.
    let (a, _b) = UnixDatagram::pair().unwrap();
    let child = spawn(
        "spt",
        &["--net", "fd:4", "--ready-fd", "4"],
        &img,
        &[(high(&a), 4)],
    );
    let out = child.into_inner().wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(i32::from(EXIT_TENDER_ERROR)),
        "{stderr}"
    );
    assert!(
        stderr.contains("descriptor 4 is given both as --ready-fd 4 and as --net fd:4"),
        "{stderr}"
    );
}

/// An ARP request from the test peer for the guest's address.
fn arp_request() -> Vec<u8> {
    let mac = [0x02, 0x74, 0x65, 0x73, 0x74, 0x01];
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&PEER);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&GUEST);
    f
}

/// When the peer closes its end, the device goes down (said once on
/// stderr) and the instance keeps running.
#[test]
fn a_closed_peer_takes_the_device_down_not_the_instance() {
    use std::io::BufRead;
    let img = image("examples/http");
    for t in tenders() {
        let (ready_r, ready_w) = pipe();
        let (ours, theirs) = UnixDatagram::pair().unwrap();
        let mut child = spawn(
            t,
            &["--ready-fd", "3", "--net", "fd:4", "--ip", "10.0.0.2/24"],
            &img,
            &[(high(&ready_w), 3), (high(&theirs), 4)],
        );
        drop(ready_w);
        drop(theirs);
        let (tx, lines) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        assert!(readable(&ready_r, PATIENCE), "{t}: no READY");
        // A datagram socket learns that its peer closed only on its next
        // send. The guest answers the SYN and, with nobody acknowledging,
        // sends its SYN-ACK again after a timeout: at least that send
        // comes after the close, even if the first answers were quick or
        // a process forked by a test running alongside briefly held a copy
        // of `ours`.
        ours.send(&arp_request()).unwrap();
        ours.send(&tcp_syn_frame(
            ([0x02, 0x74, 0x65, 0x73, 0x74, 0x01], PEER, 40_001),
            ([0xff; 6], GUEST, 80),
        ))
        .unwrap();
        drop(ours);
        let mut seen = String::new();
        let down = loop {
            match lines.recv_timeout(PATIENCE) {
                Ok(line) => {
                    seen += &line;
                    seen.push('\n');
                    if line.contains("network device 'service0' is down") {
                        break line;
                    }
                }
                Err(_) => panic!("{t}: the device did not go down:\n{seen}"),
            }
        };
        assert!(
            down.contains("the backend closed the connection"),
            "{t}: {down}"
        );
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            matches!(child.try_wait(), Ok(None)),
            "{t}: the instance ended when its peer closed:\n{seen}"
        );
        finish(child);
    }
}
