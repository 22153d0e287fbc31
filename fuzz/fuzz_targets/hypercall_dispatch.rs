//! Hostile hypercalls against an instance with devices: a short sequence
//! of hypercalls, each a number and an argument address chosen by the
//! fuzzer, against guest memory whose contents the fuzzer also chose (and
//! rewrites between calls), with the frames the network peer sends in
//! between. The host is opened the way `kiln run --net net0=fd:N
//! --net net1=none --disk disk0=FILE --ready-fd M` opens it: `net0` on one
//! end of a fresh socket pair (datagram or seqpacket), `net1` attached to
//! nothing, `disk0` an 8 KiB file, READY on a pipe. So every hypercall
//! gets past ENODEV.
//!
//! Properties:
//! * `dispatch` continues or ends the instance, never panics;
//! * it reads or writes no guest memory that it did not check first, and
//!   none that the guest may not reach (a read-only page, the world
//!   outside guest memory): the memory below panics if it does;
//! * a call that ends the instance with a violation has no effect at all:
//!   guest memory, the disk and the peer see nothing of it;
//! * BLOCK_WRITE writes exactly the guest's buffer at the offset, BLOCK_READ
//!   reads exactly what the disk holds, EINVAL exactly when the request is
//!   not whole blocks inside the disk; the disk never changes size (no I/O
//!   outside it), whatever size of pieces `block_io` moves;
//! * NET_WRITE sends exactly the guest's frame, NET_READ returns exactly
//!   the peer's next usable frame, in order; POLL reports `net0` exactly
//!   when a frame waits (its deadline is moved into the past, so it never
//!   sleeps) and no other device;
//! * the ready pipe gets one byte iff a READY succeeded.
#![no_main]

use kiln_abi::{errno, nr, Manifest};
use kiln_tender::net::Attach;
use kiln_tender::{dispatch, Control, GuestMemory, Host, MemError, Outcome, RunConfig};
use libfuzzer_sys::fuzz_target;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

const BASE: u64 = 0x10_0000;
const SIZE: usize = 0x4000;
/// The last page is read-only to the guest (like its rodata or BootInfo).
const READ_ONLY: usize = SIZE - 0x1000;
const DISK: usize = 8192;
const NET0: u64 = 0;
const DISK0: u64 = 1;
const FRAME_MAX: usize = kiln_tender::net::MTU as usize + 14;

/// Guest memory that answers `check` truthfully and panics when anything
/// reads or writes a range `check` would refuse: `dispatch` promises to
/// check every range before it touches it.
struct StrictMemory {
    bytes: Vec<u8>,
}

impl StrictMemory {
    fn allowed(&self, addr: u64, len: u64, write: bool) -> bool {
        let Some(start) = addr.checked_sub(BASE) else {
            return false;
        };
        let Some(end) = start.checked_add(len) else {
            return false;
        };
        end <= SIZE as u64 && (!write || end <= READ_ONLY as u64)
    }
}

impl GuestMemory for StrictMemory {
    fn check(&self, addr: u64, len: u64, write: bool) -> Result<(), MemError> {
        if self.allowed(addr, len, write) {
            Ok(())
        } else {
            Err(MemError { addr, len, write })
        }
    }
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        assert!(
            self.allowed(addr, buf.len() as u64, false),
            "dispatch read {addr:#x}+{:#x}, which is not readable guest memory",
            buf.len()
        );
        let at = (addr - BASE) as usize;
        buf.copy_from_slice(&self.bytes[at..at + buf.len()]);
        Ok(())
    }
    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), MemError> {
        assert!(
            self.allowed(addr, data.len() as u64, true),
            "dispatch wrote {addr:#x}+{:#x}, which is not writable guest memory",
            data.len()
        );
        let at = (addr - BASE) as usize;
        self.bytes[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }
}

/// What stays the same for every input: the image and the disk file.
struct Fixture {
    config: RunConfig,
    disk: OwnedFd,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // CONSOLE_WRITE goes to descriptor 1: not to the terminal.
        let null = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .unwrap();
        // SAFETY: dup2 onto descriptor 1, which this process owns.
        assert!(unsafe { libc::dup2(null.as_raw_fd(), 1) } == 1);
        // SAFETY: the name is a valid C string; the new descriptor is ours.
        let disk = unsafe { libc::memfd_create(c"kiln-fuzz-disk".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(disk >= 0);
        // SAFETY: `disk` is a new descriptor owned by nothing else.
        let disk = unsafe { OwnedFd::from_raw_fd(disk) };
        let manifest = Manifest::new()
            .with_device(kiln_abi::device::NET, "net0")
            .with_device(kiln_abi::device::BLOCK, "disk0")
            .with_device(kiln_abi::device::NET, "net1");
        let image = kiln_image::synthetic::minimal(&manifest);
        let config = RunConfig {
            image: kiln_image::Image::parse(image).expect("synthetic image"),
            args: vec!["fuzz".into()],
            env: Vec::new(),
            mem_size: 1 << 20,
            disks: vec![(
                "disk0".into(),
                format!("/proc/self/fd/{}", disk.as_raw_fd()).into(),
            )],
            net: Default::default(),
            verbose: false,
            ready_fd: None,
            started: std::time::Instant::now(),
        };
        Fixture { config, disk }
    })
}

fn pair(ty: libc::c_int) -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors.
    let rc =
        unsafe { libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) };
    assert_eq!(rc, 0);
    // SAFETY: both are new and ours.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors.
    assert_eq!(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) },
        0
    );
    // SAFETY: both are new and ours.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// One nonblocking message or read; `None` when nothing waits.
fn recv(fd: RawFd, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    usize::try_from(n).ok()
}

fn send(fd: RawFd, frame: &[u8]) -> bool {
    // SAFETY: `frame` is valid for reads of its length.
    let n = unsafe { libc::send(fd, frame.as_ptr().cast(), frame.len(), libc::MSG_DONTWAIT) };
    n == frame.len() as isize
}

fn disk_contents(fd: RawFd) -> Vec<u8> {
    // SAFETY: an all-zero stat is valid for fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid stat buffer.
    assert_eq!(unsafe { libc::fstat(fd, &mut st) }, 0);
    assert_eq!(
        st.st_size, DISK as i64,
        "block I/O outside the disk changed its size"
    );
    let mut v = vec![0u8; DISK];
    // SAFETY: `v` is valid for writes of DISK bytes.
    assert_eq!(
        unsafe { libc::pread(fd, v.as_mut_ptr().cast(), DISK, 0) },
        DISK as isize
    );
    v
}

fn words<const N: usize>(mem: &[u8], arg: u64) -> Option<[u64; N]> {
    let at = usize::try_from(arg.checked_sub(BASE)?).ok()?;
    let bytes = mem.get(at..at.checked_add(N * 8)?)?;
    let mut w = [0u64; N];
    for (i, x) in w.iter_mut().enumerate() {
        *x = u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap());
    }
    Some(w)
}

fn range(mem: &[u8], addr: u64, len: u64) -> &[u8] {
    let at = (addr - BASE) as usize;
    &mem[at..at + len as usize]
}

fuzz_target!(|data: &[u8]| {
    // Input: flags, op count, ops (12 bytes each), initial guest memory
    // (also the pool the peer's frames are cut from).
    let [flags, count, rest @ ..] = data else {
        return;
    };
    let nops = (*count as usize % 17).min(rest.len() / 12);
    let (ops, pool) = rest.split_at(nops * 12);
    let fx = fixture();

    let seqpacket = flags & 1 != 0;
    let (ours, peer) = pair(if seqpacket {
        libc::SOCK_SEQPACKET
    } else {
        libc::SOCK_DGRAM
    });
    let (ready_r, ready_w) = pipe();
    let mut cfg = fx.config.clone();
    let net_fd = ours.into_raw_fd();
    cfg.net.attach = vec![
        format!("net0=fd:{net_fd}").parse::<Attach>().unwrap(),
        "net1=none".parse::<Attach>().unwrap(),
    ];
    let ready_fd = if flags & 2 != 0 {
        Some(ready_w.into_raw_fd())
    } else {
        drop(ready_w);
        None
    };
    cfg.ready_fd = ready_fd;
    let disk = fx.disk.as_raw_fd();
    // SAFETY: ftruncate on our own memfd: empty it, then 8 KiB of zeros.
    assert!(unsafe { libc::ftruncate(disk, 0) == 0 && libc::ftruncate(disk, DISK as i64) == 0 });
    // The host takes ownership of the inherited descriptors.
    let mut host = Host::open(&cfg).expect("host");

    let mut mem = StrictMemory {
        bytes: vec![0; SIZE],
    };
    let n = pool.len().min(SIZE);
    mem.bytes[..n].copy_from_slice(&pool[..n]);
    let mut model_disk = vec![0u8; DISK];
    // Frames the peer sent that NET_READ has not passed over yet.
    let mut queued: VecDeque<Vec<u8>> = VecDeque::new();
    let mut peer = Some(peer);
    let mut readied = false;
    // net0 answered EIO: it is down.
    let mut down = false;
    let mut frame = vec![0u8; 70_000];

    for op in ops.chunks(12) {
        let (kind, x) = (op[0] % 16, op[1]);
        let y = u16::from_le_bytes([op[2], op[3]]) as usize;
        let raw = u64::from_le_bytes(op[4..12].try_into().unwrap());
        match kind {
            // The peer sends a frame cut from the pool.
            13 => {
                let Some(p) = &peer else { continue };
                if pool.is_empty() {
                    continue;
                }
                let len = y % 1600;
                let start = raw as usize % pool.len();
                let f: Vec<u8> = pool.iter().cycle().skip(start).take(len).copied().collect();
                if send(p.as_raw_fd(), &f) {
                    queued.push_back(f);
                }
                continue;
            }
            // The guest rewrites some of its memory.
            14 => {
                if pool.is_empty() {
                    continue;
                }
                let at = raw as usize % SIZE;
                let n = (x as usize).min(SIZE - at);
                for i in 0..n {
                    mem.bytes[at + i] = pool[(y + i) % pool.len()];
                }
                continue;
            }
            // The peer goes away.
            15 => {
                peer = None;
                continue;
            }
            _ => {}
        }
        let number = if kind == 12 {
            nr::COUNT + u32::from(x)
        } else {
            u32::from(kind)
        };
        let arg = if x & 0x80 == 0 {
            BASE + raw % (SIZE as u64 + 0x100)
        } else {
            raw
        };
        if number == nr::POLL && mem.allowed(arg, 16, true) {
            // The deadline is in the past: POLL only looks.
            let at = (arg - BASE) as usize;
            mem.bytes[at..at + 8].copy_from_slice(&0u64.to_le_bytes());
        }
        let before = mem.bytes.clone();
        let control = dispatch(&mut host, &mut mem, number, arg);
        if let Control::Exit(outcome) = control {
            // Ended: nothing may have happened.
            if let Outcome::Violation { .. } = outcome {
                assert!(
                    mem.bytes == before,
                    "a refused hypercall changed guest memory"
                );
                if let Some(p) = &peer {
                    assert!(
                        recv(p.as_raw_fd(), &mut frame).is_none(),
                        "a refused hypercall sent a frame"
                    );
                }
            } else {
                assert!(
                    matches!(
                        (number, &outcome),
                        (nr::HALT, Outcome::Exited(_)) | (nr::ABORT, Outcome::Aborted(_))
                    ),
                    "{number}: {outcome}"
                );
            }
            break;
        }
        // What guest memory must hold now: `before` with the call's
        // results written over it (its buffer first, then the argument
        // words it answers in, which may lie inside that buffer).
        let mut expect = before.clone();
        let put = |expect: &mut Vec<u8>, addr: u64, bytes: &[u8]| {
            let at = (addr - BASE) as usize;
            expect[at..at + bytes.len()].copy_from_slice(bytes);
        };
        let ret_word = |index: u64| {
            let at = (arg - BASE + index * 8) as usize;
            u64::from_le_bytes(mem.bytes[at..at + 8].try_into().unwrap()) as i64
        };
        match number {
            nr::BLOCK_READ | nr::BLOCK_WRITE => {
                let [device, offset, buf, len, _] = words::<5>(&before, arg).unwrap();
                let ret = ret_word(4);
                let whole = offset % 512 == 0
                    && len % 512 == 0
                    && offset.checked_add(len).is_some_and(|e| e <= DISK as u64);
                if device != DISK0 {
                    assert_eq!(ret, errno::ENODEV);
                } else if !whole {
                    assert_eq!(ret, errno::EINVAL, "{offset:#x}+{len:#x}");
                } else {
                    assert_eq!(ret, len as i64, "{offset:#x}+{len:#x}");
                    let on_disk = offset as usize..(offset + len) as usize;
                    if number == nr::BLOCK_WRITE {
                        model_disk[on_disk].copy_from_slice(range(&before, buf, len));
                    } else {
                        put(&mut expect, buf, &model_disk[on_disk]);
                    }
                }
                put(&mut expect, arg + 32, &ret.to_le_bytes());
                assert!(
                    disk_contents(disk) == model_disk,
                    "the disk is not what was written"
                );
            }
            nr::NET_WRITE => {
                let [device, buf, len, _] = words::<4>(&before, arg).unwrap();
                let ret = ret_word(3);
                let got = peer.as_ref().and_then(|p| recv(p.as_raw_fd(), &mut frame));
                let frame_len = (14..=FRAME_MAX as u64).contains(&len);
                match device {
                    NET0 if frame_len && ret == len as i64 => {
                        if let Some(n) = got {
                            assert!(
                                &frame[..n] == range(&before, buf, len),
                                "NET_WRITE sent something else"
                            );
                        } else {
                            assert!(peer.is_none(), "NET_WRITE sent nothing");
                        }
                    }
                    NET0 if frame_len => {
                        assert!(got.is_none());
                        assert!(
                            ret == errno::EIO || ret == errno::EAGAIN,
                            "NET_WRITE: {ret}"
                        );
                        down |= ret == errno::EIO;
                    }
                    // net1 is attached to nothing: frames vanish.
                    NET0 | 2 => {
                        assert!(got.is_none());
                        assert_eq!(ret, if frame_len { len as i64 } else { errno::EINVAL });
                    }
                    _ => {
                        assert!(got.is_none());
                        assert_eq!(ret, errno::ENODEV);
                    }
                }
                put(&mut expect, arg + 24, &ret.to_le_bytes());
            }
            nr::NET_READ => {
                let [device, buf, len, _] = words::<4>(&before, arg).unwrap();
                let ret = ret_word(3);
                let cap = usize::try_from(len).unwrap_or(usize::MAX).min(FRAME_MAX);
                let usable = |f: &Vec<u8>| (14..=cap).contains(&f.len());
                match device {
                    NET0 if ret > 0 => {
                        // The first usable frame; those before it were no
                        // use to this buffer.
                        let at = queued
                            .iter()
                            .position(usable)
                            .expect("NET_READ made up a frame");
                        let f = queued.drain(..=at).last().unwrap();
                        assert_eq!(ret, f.len() as i64, "NET_READ returned another frame");
                        put(&mut expect, buf, &f);
                    }
                    NET0 if ret == errno::EAGAIN => {
                        // Nothing usable among what waited (up to 64).
                        let n = queued.len().min(64);
                        assert!(
                            !queued.iter().take(n).any(usable),
                            "EAGAIN with a usable frame waiting"
                        );
                        queued.drain(..n);
                    }
                    NET0 => {
                        // Down: a closed peer, or an empty seqpacket
                        // message, which reads as end of file.
                        assert_eq!(ret, errno::EIO);
                        assert!(
                            down || peer.is_none()
                                || (seqpacket && queued.iter().any(Vec::is_empty)),
                            "NET_READ: the device went down for nothing"
                        );
                        queued.clear();
                        down = true;
                    }
                    2 => assert_eq!(ret, errno::EAGAIN),
                    _ => assert_eq!(ret, errno::ENODEV),
                }
                put(&mut expect, arg + 24, &ret.to_le_bytes());
            }
            nr::POLL => {
                let ready = ret_word(1) as u64;
                assert_eq!(ready & !1, 0, "POLL reported a device without input");
                if ready & 1 != 0 {
                    assert!(
                        !queued.is_empty() || peer.is_none(),
                        "POLL reported input that is not there"
                    );
                } else {
                    assert!(
                        queued.is_empty() || down || peer.is_none(),
                        "POLL missed a waiting frame"
                    );
                }
                put(&mut expect, arg + 8, &ready.to_le_bytes());
            }
            nr::READY => {
                let [reserved, _] = words::<2>(&before, arg).unwrap();
                let ret = ret_word(1);
                assert_eq!(ret, if reserved == 0 { 0 } else { errno::EINVAL });
                readied |= reserved == 0;
                assert_eq!(host.is_ready(), readied);
                put(&mut expect, arg + 8, &ret.to_le_bytes());
            }
            nr::NET_RINGS => {
                assert_eq!(ret_word(3), errno::ENODEV);
                put(&mut expect, arg + 24, &errno::ENODEV.to_le_bytes());
            }
            nr::CLOCK => {
                let (mono, real) = (ret_word(0), ret_word(1));
                put(&mut expect, arg, &mono.to_le_bytes());
                put(&mut expect, arg + 8, &real.to_le_bytes());
            }
            // CONSOLE_WRITE changes nothing in the guest.
            _ => {}
        }
        assert!(
            mem.bytes == expect,
            "hypercall {number} changed guest memory it should not have"
        );
    }
    assert!(disk_contents(disk) == model_disk);
    drop(host);
    // The ready pipe: one byte for the first successful READY, then end
    // of file (the host closed it).
    let mut b = [0u8; 4];
    let got = recv_pipe(ready_r.as_raw_fd(), &mut b);
    if ready_fd.is_some() && readied {
        assert_eq!(&b[..got], b"R");
    } else {
        assert_eq!(got, 0);
    }
});

fn recv_pipe(fd: RawFd, buf: &mut [u8]) -> usize {
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(n).unwrap_or(0)
}
