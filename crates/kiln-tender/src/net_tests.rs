//! The network hypercalls against fake backends (and, for POLL, real
//! socket pairs): frame limits, drops, short writes, broken streams, and
//! the instance carrying on through all of it.

use crate::net::{Framing, NetDevice, Port};
use crate::tests::{put_words, violation, word, ARG, BASE, BUF};
use crate::*;
use kiln_abi::{errno, nr};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

const FRAME_MAX: usize = 1514;
const RET: u64 = ARG + 24;

#[derive(Debug, Default)]
struct FakeState {
    /// Chunks the backend will hand out: frames (datagram) or bytes (stream).
    incoming: VecDeque<Vec<u8>>,
    /// What the device wrote.
    written: Vec<Vec<u8>>,
    /// Bytes a write may take before the backend says WouldBlock.
    room: Option<usize>,
    /// After the chunks run out: end of stream.
    eof: bool,
}

/// A backend held in memory, shared with the test.
#[derive(Debug, Clone, Default)]
struct Fake {
    state: Arc<Mutex<FakeState>>,
    stream: bool,
}

impl Fake {
    fn push(&self, chunk: &[u8]) {
        self.state
            .lock()
            .unwrap()
            .incoming
            .push_back(chunk.to_vec());
    }
    fn written(&self) -> Vec<Vec<u8>> {
        self.state.lock().unwrap().written.clone()
    }
}

impl Port for Fake {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut s = self.state.lock().unwrap();
        let Some(mut chunk) = s.incoming.pop_front() else {
            return if s.eof {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        };
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        if self.stream && n < chunk.len() {
            s.incoming.push_front(chunk.split_off(n));
        }
        Ok(n)
    }
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut s = self.state.lock().unwrap();
        let n = match s.room {
            Some(0) => return Err(io::ErrorKind::WouldBlock.into()),
            Some(room) => room.min(buf.len()),
            None => buf.len(),
        };
        if let Some(room) = s.room.as_mut() {
            *room -= n;
        }
        s.written.push(buf[..n].to_vec());
        Ok(n)
    }
    fn fd(&self) -> Option<RawFd> {
        None
    }
}

fn name(n: &str) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..n.len()].copy_from_slice(n.as_bytes());
    b
}

fn tap_like() -> (Fake, NetDevice) {
    let fake = Fake::default();
    let dev = NetDevice::new(
        name("tap0"),
        Some(Box::new(fake.clone())),
        Framing::datagram(),
        FRAME_MAX,
    );
    (fake, dev)
}

fn passt_like() -> (Fake, NetDevice) {
    let fake = Fake {
        stream: true,
        ..Fake::default()
    };
    let dev = NetDevice::new(
        name("user0"),
        Some(Box::new(fake.clone())),
        Framing::stream(FRAME_MAX),
        FRAME_MAX,
    );
    (fake, dev)
}

fn memory() -> VecMemory {
    VecMemory {
        base: BASE,
        bytes: vec![0; 0x10000],
    }
}

fn frame(len: usize, fill: u8) -> Vec<u8> {
    vec![fill; len]
}

fn framed(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut v = Vec::new();
    for f in frames {
        v.extend_from_slice(&(f.len() as u32).to_be_bytes());
        v.extend_from_slice(f);
    }
    v
}

/// NET_READ on `device` into BUF with capacity `cap`; the ret word.
fn net_read(host: &mut Host, mem: &mut VecMemory, device: u64, cap: u64) -> i64 {
    put_words(mem, ARG, &[device, BUF, cap, 0]);
    assert!(matches!(
        dispatch(host, mem, nr::NET_READ, ARG),
        Control::Continue
    ));
    word(mem, RET) as i64
}

fn net_write(host: &mut Host, mem: &mut VecMemory, device: u64, data: &[u8]) -> i64 {
    mem.write(BUF, data).unwrap();
    put_words(mem, ARG, &[device, BUF, data.len() as u64, 0]);
    assert!(matches!(
        dispatch(host, mem, nr::NET_WRITE, ARG),
        Control::Continue
    ));
    word(mem, RET) as i64
}

fn poll(host: &mut Host, mem: &mut VecMemory, deadline: u64) -> u64 {
    put_words(mem, ARG, &[deadline, 0xdead]);
    assert!(matches!(
        dispatch(host, mem, nr::POLL, ARG),
        Control::Continue
    ));
    word(mem, ARG + 8)
}

fn guest_bytes(mem: &VecMemory, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    mem.read(BUF, &mut v).unwrap();
    v
}

#[test]
fn net_write_sends_one_frame_and_checks_its_length() {
    let (fake, dev) = tap_like();
    let mut host = Host::with_net(vec![dev]);
    let mut mem = memory();
    assert_eq!(net_write(&mut host, &mut mem, 0, &frame(60, 1)), 60);
    assert_eq!(
        net_write(&mut host, &mut mem, 0, &frame(FRAME_MAX, 2)),
        FRAME_MAX as i64
    );
    assert_eq!(
        net_write(&mut host, &mut mem, 0, &frame(FRAME_MAX + 1, 3)),
        errno::EINVAL
    );
    assert_eq!(
        net_write(&mut host, &mut mem, 0, &frame(13, 4)),
        errno::EINVAL
    );
    assert_eq!(net_write(&mut host, &mut mem, 0, &[]), errno::EINVAL);
    assert_eq!(
        net_write(&mut host, &mut mem, 1, &frame(60, 5)),
        errno::ENODEV
    );
    assert_eq!(fake.written(), vec![frame(60, 1), frame(FRAME_MAX, 2)]);
    // A huge length is EINVAL, not a violation: nothing is read.
    put_words(&mut mem, ARG, &[0, BUF, u64::MAX, 0]);
    dispatch(&mut host, &mut mem, nr::NET_WRITE, ARG);
    assert_eq!(word(&mem, RET) as i64, errno::EINVAL);
    // A plausible length at a wild address ends the instance.
    put_words(&mut mem, ARG, &[0, 0xdead_0000_0000, 60, 0]);
    let (name, _) = violation(dispatch(&mut host, &mut mem, nr::NET_WRITE, ARG));
    assert_eq!(name, "NET_WRITE");
}

#[test]
fn net_read_returns_frames_and_drops_what_does_not_fit() {
    let (fake, dev) = tap_like();
    let mut host = Host::with_net(vec![dev]);
    let mut mem = memory();
    assert_eq!(net_read(&mut host, &mut mem, 0, 2048), errno::EAGAIN);
    fake.push(&frame(60, 1));
    fake.push(&frame(9000, 2)); // jumbo: more than MTU + 14
    fake.push(&frame(3, 3)); // runt
    fake.push(&frame(1514, 4));
    fake.push(&frame(1000, 5)); // longer than the guest's buffer below
    fake.push(&frame(100, 6));
    assert_eq!(net_read(&mut host, &mut mem, 0, 2048), 60);
    assert_eq!(guest_bytes(&mem, 60), frame(60, 1));
    assert_eq!(net_read(&mut host, &mut mem, 0, 2048), 1514);
    assert_eq!(guest_bytes(&mem, 1514), frame(1514, 4));
    assert_eq!(net_read(&mut host, &mut mem, 0, 500), 100);
    assert_eq!(guest_bytes(&mem, 100), frame(100, 6));
    assert_eq!(net_read(&mut host, &mut mem, 0, 2048), errno::EAGAIN);
    let stats = host.net_stats(0).unwrap();
    assert_eq!((stats.rx_frames, stats.rx_dropped), (3, 3));
    assert_eq!(net_read(&mut host, &mut mem, 3, 2048), errno::ENODEV);
    // The guest's buffer must be writable guest memory.
    put_words(&mut mem, ARG, &[0, BASE + 0x10000 - 10, 2048, 0]);
    violation(dispatch(&mut host, &mut mem, nr::NET_READ, ARG));
}

#[test]
fn a_stream_in_pieces_yields_every_frame_in_order() {
    let (fake, dev) = passt_like();
    let mut host = Host::with_net(vec![dev]);
    let mut mem = memory();
    let frames: Vec<Vec<u8>> = (0..50u8).map(|i| frame(14 + i as usize * 30, i)).collect();
    let bytes = framed(&frames);
    // Odd-sized chunks: headers and frames cut everywhere.
    for chunk in bytes.chunks(333) {
        fake.push(chunk);
    }
    let mut got = Vec::new();
    loop {
        let n = net_read(&mut host, &mut mem, 0, 2048);
        if n == errno::EAGAIN {
            break;
        }
        assert!(n > 0, "ret {n}");
        got.push(guest_bytes(&mem, n as usize));
    }
    assert_eq!(got, frames);
}

#[test]
fn a_garbage_length_takes_the_device_down_but_not_the_instance() {
    let (fake, dev) = passt_like();
    let (tap, tap_dev) = tap_like();
    let mut host = Host::with_net(vec![dev, tap_dev]);
    let mut mem = memory();
    let mut bytes = framed(&[frame(60, 1)]);
    bytes.extend_from_slice(&[0x7f, 0xff, 0xff, 0xff, 0, 0, 0]);
    fake.push(&bytes);
    assert_eq!(net_read(&mut host, &mut mem, 0, 2048), 60);
    assert_eq!(net_read(&mut host, &mut mem, 0, 2048), errno::EIO);
    assert!(host.net_device(0).unwrap().down().is_some());
    assert_eq!(net_write(&mut host, &mut mem, 0, &frame(60, 2)), errno::EIO);
    assert_eq!(net_read(&mut host, &mut mem, 0, 2048), errno::EIO);
    // The other device carries on, and POLL reports only it.
    tap.push(&frame(70, 3));
    assert_eq!(net_read(&mut host, &mut mem, 1, 2048), 70);
    assert_eq!(poll(&mut host, &mut mem, 1), 0);
    // The guest keeps running: CLOCK still works.
    assert!(matches!(
        dispatch(&mut host, &mut mem, nr::CLOCK, ARG),
        Control::Continue
    ));
}

#[test]
fn a_closed_stream_takes_the_device_down() {
    let (fake, dev) = passt_like();
    let mut host = Host::with_net(vec![dev]);
    let mut mem = memory();
    fake.push(&framed(&[frame(60, 1)])[..30]);
    fake.state.lock().unwrap().eof = true;
    assert_eq!(net_read(&mut host, &mut mem, 0, 2048), errno::EIO);
    assert_eq!(
        host.net_device(0).unwrap().down(),
        Some(crate::net::Down::Closed)
    );
}

#[test]
fn short_writes_finish_frames_and_a_full_queue_is_eagain() {
    let (fake, dev) = passt_like();
    let mut host = Host::with_net(vec![dev]);
    let mut mem = memory();
    // The peer takes 100 bytes now.
    fake.state.lock().unwrap().room = Some(100);
    let frames: Vec<Vec<u8>> = (0..3u8).map(|i| frame(60 + i as usize, i)).collect();
    for f in &frames {
        assert_eq!(net_write(&mut host, &mut mem, 0, f), f.len() as i64);
    }
    // Fill the queue (256 KiB) until the device refuses.
    let big = frame(FRAME_MAX, 9);
    let mut accepted = 0;
    loop {
        let r = net_write(&mut host, &mut mem, 0, &big);
        if r == errno::EAGAIN {
            break;
        }
        assert_eq!(r, FRAME_MAX as i64);
        accepted += 1;
        assert!(accepted < 1000, "the queue never filled");
    }
    assert!(host.net_stats(0).unwrap().tx_busy >= 1);
    // The peer drains: a POLL with output pending flushes on POLLOUT for
    // real descriptors; here the next write flushes.
    fake.state.lock().unwrap().room = None;
    assert_eq!(
        net_write(&mut host, &mut mem, 0, &frames[0]),
        frames[0].len() as i64
    );
    let stream: Vec<u8> = fake.written().concat();
    let mut expect = frames.clone();
    expect.extend(std::iter::repeat_n(big.clone(), accepted));
    expect.push(frames[0].clone());
    assert_eq!(stream, framed(&expect));
}

#[test]
fn poll_reports_buffered_frames_at_once() {
    let (fake, dev) = passt_like();
    let (_, idle) = tap_like();
    let mut host = Host::with_net(vec![idle, dev]);
    let mut mem = memory();
    // Two frames in one chunk: the first NET_READ buffers the second.
    fake.push(&framed(&[frame(60, 1), frame(61, 2)]));
    assert_eq!(net_read(&mut host, &mut mem, 1, 2048), 60);
    // No deadline: it must not wait, the second frame is buffered.
    assert_eq!(poll(&mut host, &mut mem, u64::MAX), 0b10);
    assert_eq!(net_read(&mut host, &mut mem, 1, 2048), 61);
    assert_eq!(poll(&mut host, &mut mem, 1), 0);
}

fn datagram_pair() -> (OwnedFd, OwnedFd) {
    let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    (OwnedFd::from(a), OwnedFd::from(b))
}

#[test]
fn poll_waits_on_real_descriptors() {
    use std::os::unix::net::UnixStream;
    // A tap stand-in (one datagram per frame) and a passt stand-in.
    let (tap_ours, tap_peer) = datagram_pair();
    let (stream_ours, mut stream_peer) = UnixStream::pair().unwrap();
    stream_ours.set_nonblocking(true).unwrap();
    let tap_dev = NetDevice::new(
        name("tap0"),
        Some(Box::new(crate::net::FdPort(tap_ours))),
        Framing::datagram(),
        FRAME_MAX,
    );
    let stream_dev = NetDevice::new(
        name("user0"),
        Some(Box::new(crate::net::FdPort(OwnedFd::from(stream_ours)))),
        Framing::stream(FRAME_MAX),
        FRAME_MAX,
    );
    let mut host = Host::with_net(vec![tap_dev, stream_dev]);
    assert_eq!(host.net_fds().len(), 2);
    let mut mem = memory();
    // Nothing arrives: a near deadline passes with nothing ready.
    let soon = sys::clock_ns(libc::CLOCK_MONOTONIC) + 1_000_000;
    assert_eq!(poll(&mut host, &mut mem, soon), 0);

    // Half a frame on the stream wakes nothing; the rest, later, does.
    let bytes = framed(&[frame(80, 7)]);
    use std::io::Write;
    stream_peer.write_all(&bytes[..10]).unwrap();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(20));
        stream_peer.write_all(&bytes[10..]).unwrap();
        stream_peer
    });
    assert_eq!(poll(&mut host, &mut mem, u64::MAX), 0b10);
    let mut stream_peer = writer.join().unwrap();
    assert_eq!(net_read(&mut host, &mut mem, 1, 2048), 80);

    // A datagram on the tap stand-in.
    let peer = std::os::unix::net::UnixDatagram::from(tap_peer);
    peer.send(&frame(90, 8)).unwrap();
    assert_eq!(poll(&mut host, &mut mem, u64::MAX), 0b01);
    assert_eq!(net_read(&mut host, &mut mem, 0, 2048), 90);
    assert_eq!(net_read(&mut host, &mut mem, 0, 2048), errno::EAGAIN);

    // Frames the guest sends reach the peers.
    assert_eq!(net_write(&mut host, &mut mem, 0, &frame(64, 9)), 64);
    let mut got = [0u8; 2048];
    assert_eq!(peer.recv(&mut got).unwrap(), 64);
    assert_eq!(net_write(&mut host, &mut mem, 1, &frame(64, 10)), 64);
    let mut got = [0u8; 68];
    use std::io::Read;
    stream_peer.read_exact(&mut got).unwrap();
    assert_eq!(&got[..4], &[0, 0, 0, 64]);

    // The passt stand-in goes away: the device goes down, POLL stops
    // reporting it, and the tap carries on.
    drop(stream_peer);
    let soon = sys::clock_ns(libc::CLOCK_MONOTONIC) + 1_000_000;
    assert_eq!(poll(&mut host, &mut mem, soon), 0);
    assert!(host.net_device(1).unwrap().down().is_some());
    assert_eq!(host.net_fds().len(), 1);
    peer.send(&frame(95, 8)).unwrap();
    assert_eq!(poll(&mut host, &mut mem, u64::MAX), 0b01);
}

#[test]
fn a_device_with_nothing_attached_swallows_frames() {
    let dev = NetDevice::new(name("n"), None, Framing::datagram(), FRAME_MAX);
    let mut host = Host::with_net(vec![dev]);
    let mut mem = memory();
    assert_eq!(net_write(&mut host, &mut mem, 0, &frame(60, 1)), 60);
    assert_eq!(net_read(&mut host, &mut mem, 0, 2048), errno::EAGAIN);
    assert!(host.net_fds().is_empty());
    assert_eq!(poll(&mut host, &mut mem, 1), 0);
}

#[test]
fn a_lent_device_leaves_the_hypercall_path_and_polls_on_its_wake_fd() {
    let (fake, dev) = tap_like();
    let (_, other) = tap_like();
    let mut host = Host::with_net(vec![dev, other]);
    let mut mem = memory();
    let (wake_r, wake_w) = datagram_pair();
    use std::os::fd::AsRawFd;
    let lent = host
        .lend_net(0, wake_r.as_raw_fd())
        .expect("device 0 is lent");
    assert_eq!(lent.frame_max(), FRAME_MAX);
    assert!(host.lend_net(0, wake_r.as_raw_fd()).is_none(), "lent once");
    assert!(
        host.lend_net(7, wake_r.as_raw_fd()).is_none(),
        "no device 7"
    );
    // Off the hypercall path: its frames are the borrower's now.
    fake.push(&frame(60, 1));
    assert_eq!(net_read(&mut host, &mut mem, 0, 2048), errno::ENODEV);
    assert_eq!(
        net_write(&mut host, &mut mem, 0, &frame(60, 2)),
        errno::ENODEV
    );
    assert!(fake.written().is_empty());
    assert_eq!(host.net_fds(), Vec::<RawFd>::new());
    // POLL reports it while the wake descriptor is readable.
    assert_eq!(poll(&mut host, &mut mem, 1), 0);
    let w = std::os::unix::net::UnixDatagram::from(wake_w);
    w.send(&[1]).unwrap();
    assert_eq!(poll(&mut host, &mut mem, u64::MAX), 0b01);
}

/// A host for an image with one network device `net0` attached with
/// `--net fd:N` to one end of a fresh `ty` socket pair; the other end.
fn fd_host(ty: libc::c_int, ready_fd: Option<RawFd>) -> (Host, OwnedFd) {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors.
    let rc = unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, fds.as_mut_ptr()) };
    assert_eq!(rc, 0);
    // SAFETY: both are new and ours; the first is handed to the host,
    // which takes ownership of it (as of an inherited descriptor).
    let (ours, peer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let manifest = kiln_abi::Manifest::new().with_device(kiln_abi::device::NET, "net0");
    let mut cfg = crate::tests::config(&manifest);
    cfg.ready_fd = ready_fd;
    cfg.net.attach = vec![format!("fd:{}", ours.into_raw_fd()).parse().unwrap()];
    cfg.net.ip = Some("10.0.0.2/24".parse().unwrap());
    let host = Host::open(&cfg).unwrap();
    (host, peer)
}

#[test]
fn an_inherited_datagram_socket_carries_frames_and_a_closed_peer_takes_it_down() {
    let (mut host, peer) = fd_host(libc::SOCK_DGRAM, None);
    assert_eq!(host.net_fds().len(), 1);
    let infos = host.device_infos();
    assert_eq!(infos[0].net.ipv4, [10, 0, 0, 2]);
    assert_eq!(infos[0].net.flags, 0);
    let peer = std::os::unix::net::UnixDatagram::from(peer);
    let mut mem = memory();
    assert_eq!(net_write(&mut host, &mut mem, 0, &frame(70, 3)), 70);
    let mut got = [0u8; 2048];
    assert_eq!(peer.recv(&mut got).unwrap(), 70);
    assert_eq!(&got[..70], &frame(70, 3)[..]);
    peer.send(&frame(100, 4)).unwrap();
    assert_eq!(poll(&mut host, &mut mem, u64::MAX), 1);
    assert_eq!(net_read(&mut host, &mut mem, 0, 2048), 100);
    assert_eq!(guest_bytes(&mem, 100), frame(100, 4));
    // An empty datagram is no frame: dropped, the device stays up.
    peer.send(&[]).unwrap();
    assert_eq!(net_read(&mut host, &mut mem, 0, 2048), errno::EAGAIN);
    assert!(host.net_device(0).unwrap().down().is_none());
    // The peer goes away: a datagram socket learns it on the next send.
    drop(peer);
    assert_eq!(net_write(&mut host, &mut mem, 0, &frame(60, 5)), errno::EIO);
    assert_eq!(
        host.net_device(0).unwrap().down(),
        Some(crate::net::Down::Closed)
    );
    assert!(host.net_fds().is_empty());
}

#[test]
fn an_inherited_seqpacket_socket_goes_down_when_the_peer_closes() {
    let (mut host, peer) = fd_host(libc::SOCK_SEQPACKET, None);
    let mut mem = memory();
    let sent = crate::net::write_once(std::os::fd::AsRawFd::as_raw_fd(&peer), &frame(64, 6));
    assert_eq!(sent.unwrap(), 64);
    assert_eq!(poll(&mut host, &mut mem, u64::MAX), 1);
    assert_eq!(net_read(&mut host, &mut mem, 0, 2048), 64);
    drop(peer);
    // End of file wakes POLL once and takes the device down.
    let soon = sys::clock_ns(libc::CLOCK_MONOTONIC) + 1_000_000_000;
    poll(&mut host, &mut mem, soon);
    assert_eq!(net_read(&mut host, &mut mem, 0, 2048), errno::EIO);
    assert_eq!(
        host.net_device(0).unwrap().down(),
        Some(crate::net::Down::Closed)
    );
    assert_eq!(poll(&mut host, &mut mem, 1), 0);
}

#[test]
fn ready_writes_one_byte_once_and_checks_its_argument() {
    use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0);
    // SAFETY: both are new and ours; the write end goes to the host.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let write_raw = write_end.into_raw_fd();
    let (mut host, _peer) = fd_host(libc::SOCK_DGRAM, Some(write_raw));
    assert_eq!(host.ready_fd(), Some(write_raw));
    assert!(!host.is_ready());
    let mut mem = memory();
    let ready = |host: &mut Host, mem: &mut VecMemory, reserved: u64| {
        put_words(mem, ARG, &[reserved, 0x77]);
        assert!(matches!(
            dispatch(host, mem, nr::READY, ARG),
            Control::Continue
        ));
        word(mem, ARG + 8) as i64
    };
    // A nonzero reserved word is refused and reports nothing.
    assert_eq!(ready(&mut host, &mut mem, 1), errno::EINVAL);
    assert!(!host.is_ready());
    assert_eq!(ready(&mut host, &mut mem, 0), 0);
    assert_eq!(ready(&mut host, &mut mem, 0), 0);
    assert!(host.is_ready());
    // SAFETY: F_SETFL takes an integer.
    unsafe { libc::fcntl(read_end.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let mut got = [0u8; 8];
    // SAFETY: `got` is valid for writes of its length.
    let n = unsafe { libc::read(read_end.as_raw_fd(), got.as_mut_ptr().cast(), got.len()) };
    assert_eq!(n, 1, "exactly one byte for two READYs");
    assert_eq!(got[0], READY_BYTE);
    // The write end closes with the host: the reader sees end of file.
    drop(host);
    // SAFETY: as above.
    let n = unsafe { libc::read(read_end.as_raw_fd(), got.as_mut_ptr().cast(), got.len()) };
    assert_eq!(n, 0);
    // A wild argument is a violation naming READY.
    let (mut host, _peer) = fd_host(libc::SOCK_DGRAM, None);
    let (name, why) = violation(dispatch(&mut host, &mut mem, nr::READY, 0xdead_0000));
    assert_eq!(name, "READY");
    assert!(matches!(why, Violation::BadRange { .. }));
}

#[test]
fn inherited_descriptors_are_checked_before_use() {
    use std::os::fd::AsRawFd;
    let manifest = kiln_abi::Manifest::new().with_device(kiln_abi::device::NET, "net0");
    let mut cfg = crate::tests::config(&manifest);
    // A stream socket is refused with the flag named.
    let (stream, _other) = std::os::unix::net::UnixStream::pair().unwrap();
    cfg.net.attach = vec![format!("fd:{}", stream.as_raw_fd()).parse().unwrap()];
    let e = Host::open(&cfg).unwrap_err();
    let msg = crate::tests::chain(&e);
    assert!(msg.contains("network device 'net0'"), "{msg}");
    assert!(
        msg.contains(&format!("--net fd:{}: descriptor", stream.as_raw_fd())),
        "{msg}"
    );
    assert!(msg.contains("is a stream socket"), "{msg}");
    // One descriptor for both flags.
    let (dgram, _other) = std::os::unix::net::UnixDatagram::pair().unwrap();
    cfg.net.attach = vec![format!("fd:{}", dgram.as_raw_fd()).parse().unwrap()];
    cfg.ready_fd = Some(dgram.as_raw_fd());
    let e = Host::open(&cfg).unwrap_err();
    assert!(matches!(e, TenderError::FdShared(_)), "{e}");
    // A ready fd that is not open.
    cfg.net.attach.clear();
    cfg.ready_fd = Some(987);
    let e = Host::open(&cfg).unwrap_err().to_string();
    assert_eq!(e, "--ready-fd 987: descriptor 987 is not open");
}

#[test]
fn ready_survives_a_full_pipe_and_a_reader_that_is_gone() {
    use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
    for reader_gone in [false, true] {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for two descriptors.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
        assert_eq!(rc, 0);
        // SAFETY: both are new and ours; the write end goes to the host.
        let (read_end, write_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let _reader = if reader_gone {
            drop(read_end);
            None
        } else {
            // Fill the pipe: the READY byte will not fit (EAGAIN).
            while crate::net::write_once(write_end.as_raw_fd(), &[0; 4096]).is_ok() {}
            Some(read_end)
        };
        let (mut host, _peer) = fd_host(libc::SOCK_DGRAM, Some(write_end.into_raw_fd()));
        let mut mem = memory();
        put_words(&mut mem, ARG, &[0, 0x77]);
        // EPIPE (SIGPIPE is ignored) or EAGAIN: the instance goes on.
        assert!(matches!(
            dispatch(&mut host, &mut mem, nr::READY, ARG),
            Control::Continue
        ));
        assert_eq!(word(&mem, ARG + 8), 0);
        assert!(host.is_ready());
    }
}

#[test]
fn a_full_stream_buffer_is_not_mistaken_for_a_closed_peer() {
    // POLL twice without a NET_READ in between while the peer has more
    // than the device's read buffer (64 KiB) waiting: the second POLL
    // found the buffer full, read into an empty slice, got 0 bytes and
    // took the device down as if the peer had closed (found while
    // writing the net_stream fuzz target).
    let (fake, mut dev) = passt_like();
    let frames: Vec<Vec<u8>> = (0..100u8).map(|i| frame(1000, i)).collect();
    fake.push(&framed(&frames));
    assert!(dev.on_poll(libc::POLLIN));
    assert!(dev.on_poll(libc::POLLIN));
    assert_eq!(dev.down(), None);
    let mut got = Vec::new();
    while let Ok(Some(f)) = dev.recv(FRAME_MAX, <[u8]>::to_vec) {
        got.push(f);
    }
    assert_eq!(dev.down(), None);
    assert_eq!(got, frames);
}
