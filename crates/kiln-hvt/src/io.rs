//! The network I/O thread: moves frames between the backends and the
//! shared-memory rings of devices in NET_RINGS mode, so that the vCPU
//! thread sees no exit per frame.
//!
//! It sleeps in `ppoll` on
//! * the doorbell eventfd, which KVM signals in the kernel when the guest
//!   kicks (`KVM_IOEVENTFD` on [`kiln_abi::HVT_NET_DOORBELL_PORT`]) and the
//!   vCPU thread signals when it hands over a device;
//! * each backend descriptor: readable (unless the receive ring is full and
//!   the tender waits for the guest's kick) and, while a frame waits for
//!   room, writable.
//!
//! After every wake-up it drains each device's transmit ring and, when the
//! backend was readable or the receive ring had been full, fills the
//! receive ring ([`crate::rings`]). When it produced frames (or made room
//! the guest waits for) and the vCPU thread is in POLL, it signals the wake
//! eventfd, which that POLL waits on. The `polling` flag and the rings'
//! indices form a Dekker handshake with the vCPU thread's check before it
//! sleeps (see `monitor`), so no wake-up is lost and none is sent while the
//! guest is busy.
//!
//! The thread has its own seccomp filter (`seccomp::build_io`), installed
//! before the guest's first instruction, and does not allocate. A guest
//! that breaks the ring rules ends the instance from here.

use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use kiln_abi::MAX_DEVICES;
use kiln_tender::net::NetDevice;
use kiln_tender::{Message, Outcome};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::rings::{RingError, Rings};

/// A device in ring mode: its rings and its backend.
#[derive(Debug)]
pub struct Lent {
    /// The rings.
    pub rings: Rings,
    /// The backend, taken from the instance's `Host`.
    pub dev: NetDevice,
}

/// What the vCPU thread and the I/O thread share. Built before the
/// sandbox; nothing in it allocates afterwards.
#[derive(Debug)]
pub struct Shared {
    /// All of guest memory (another handle on the same mapping).
    pub mem: GuestMemoryMmap,
    /// Kicks: from the guest through KVM, and from the vCPU thread.
    pub doorbell: EventFd,
    /// Set by the I/O thread for a vCPU thread waiting in POLL.
    pub wake: EventFd,
    /// Devices handed over and not yet picked up.
    inbox: Mutex<[Option<Lent>; MAX_DEVICES]>,
    inbox_full: AtomicBool,
    /// The vCPU thread is in POLL (or about to sleep there).
    pub polling: AtomicBool,
}

/// Counters for `-v` (relaxed; read at the end).
#[derive(Debug)]
pub struct IoStats {
    /// Wake-ups of the I/O thread on the doorbell.
    pub kicks: AtomicU64,
    /// Frames placed in receive rings.
    pub rx_frames: AtomicU64,
    /// Frames sent from transmit rings.
    pub tx_frames: AtomicU64,
    /// Transmit frames dropped (too short, or refused by the backend).
    pub tx_dropped: AtomicU64,
    /// Times a receive ring was full.
    pub rx_full: AtomicU64,
    /// Wake-ups sent to the vCPU thread's POLL.
    pub wakes: AtomicU64,
}

/// The I/O thread's counters.
pub static STATS: IoStats = IoStats {
    kicks: AtomicU64::new(0),
    rx_frames: AtomicU64::new(0),
    tx_frames: AtomicU64::new(0),
    tx_dropped: AtomicU64::new(0),
    rx_full: AtomicU64::new(0),
    wakes: AtomicU64::new(0),
};

impl Shared {
    /// Shared state over `mem`, with fresh nonblocking eventfds.
    pub fn new(mem: GuestMemoryMmap) -> std::io::Result<Shared> {
        Ok(Shared {
            mem,
            doorbell: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            wake: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            inbox: Mutex::new(std::array::from_fn(|_| None)),
            inbox_full: AtomicBool::new(false),
            polling: AtomicBool::new(false),
        })
    }

    /// vCPU thread: hands `lent` to the I/O thread and wakes it. False
    /// when that is impossible (a poisoned lock, a failed eventfd write);
    /// the instance then ends, and `lent` is leaked rather than freed
    /// under seccomp.
    pub fn hand_over(&self, lent: Lent) -> bool {
        let index = lent.rings.device() as usize;
        let Ok(mut inbox) = self.inbox.lock() else {
            std::mem::forget(lent);
            return false;
        };
        let Some(slot) = inbox.get_mut(index) else {
            std::mem::forget(lent);
            return false;
        };
        *slot = Some(lent);
        self.inbox_full.store(true, Ordering::Release);
        drop(inbox);
        self.doorbell.write(1).is_ok()
    }

    /// vCPU thread, when the guest kicks with an exit instead of through
    /// the ioeventfd (an `out` KVM did not catch).
    pub fn kick(&self) {
        let _ = self.doorbell.write(1);
    }
}

/// One device the thread drives.
struct Active {
    lent: Lent,
    /// A transmit frame waits for room in the backend.
    tx_stalled: bool,
    /// Input may be waiting: the backend was readable (or hung up), or
    /// the device is new. Descriptors are level-triggered, so skipping a
    /// look at an idle backend on a transmit kick loses nothing.
    rx_due: bool,
}

/// The outcome of a ring error, for the I/O thread and POLL alike.
pub(crate) fn fatal(e: RingError) -> Outcome {
    match e {
        RingError::Violation(reason) => Outcome::Violation {
            hypercall: "NET_RINGS",
            reason,
        },
        RingError::Memory(addr) => {
            let mut m = Message::new();
            let _ = std::fmt::Write::write_fmt(
                &mut m,
                format_args!("network rings: guest memory at {addr:#x} is unreachable"),
            );
            Outcome::TenderFailure(m)
        }
    }
}

/// The thread's loop. It ends the instance (and the process) itself when
/// the guest breaks the ring rules or the thread cannot go on; it never
/// returns, so nothing is freed under seccomp (a `free` may shrink the
/// heap with `brk`, which the filter refuses).
pub fn run(shared: &Shared) -> ! {
    let outcome = serve(shared);
    crate::monitor::end(&outcome)
}

/// The loop proper; returns the outcome that ends the instance. The
/// devices it drives are leaked, not dropped (see [`run`]).
fn serve(shared: &Shared) -> Outcome {
    let mut devs = std::mem::ManuallyDrop::new(
        std::array::from_fn::<Option<Active>, MAX_DEVICES, _>(|_| None),
    );
    let devs = &mut *devs;
    let idle = libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    };
    loop {
        let mut fds = [idle; MAX_DEVICES + 1];
        let mut owner = [usize::MAX; MAX_DEVICES + 1];
        fds[0] = libc::pollfd {
            fd: shared.doorbell.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let mut count = 1;
        for (i, a) in devs.iter().enumerate() {
            let Some(a) = a else { continue };
            let Some(fd) = a.lent.dev.fd() else { continue };
            let mut events = a.lent.dev.poll_events();
            if a.lent.rings.rx_waiting() {
                events &= !libc::POLLIN;
            }
            if a.tx_stalled {
                events |= libc::POLLOUT;
            }
            fds[count] = libc::pollfd {
                fd,
                events,
                revents: 0,
            };
            owner[count] = i;
            count += 1;
        }
        if let Err(e) = ppoll(&mut fds[..count]) {
            let mut m = Message::new();
            let _ = std::fmt::Write::write_fmt(
                &mut m,
                format_args!("network I/O thread: ppoll failed: {e}"),
            );
            return Outcome::TenderFailure(m);
        }
        if fds[0].revents & libc::POLLIN != 0 {
            // Resets the counter (nonblocking); how many kicks it held
            // does not matter: every ring is looked at below.
            let _ = shared.doorbell.read();
            STATS.kicks.fetch_add(1, Ordering::Relaxed);
            if shared.inbox_full.swap(false, Ordering::Acquire) {
                adopt(shared, devs);
            }
        }
        for (pfd, &i) in fds[1..count].iter().zip(&owner[1..count]) {
            if pfd.revents == 0 {
                continue;
            }
            if let Some(Some(a)) = devs.get_mut(i) {
                // Flushes queued output, pulls in input, or notices a
                // backend that went away.
                a.lent.dev.on_poll(pfd.revents);
                if pfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                    a.rx_due = true;
                }
            }
        }
        let mut wake = false;
        for a in devs.iter_mut().flatten() {
            match service(shared, a) {
                Ok(w) => wake |= w,
                Err(e) => return fatal(e),
            }
        }
        if wake {
            fence(Ordering::SeqCst);
            if shared.polling.load(Ordering::SeqCst) {
                STATS.wakes.fetch_add(1, Ordering::Relaxed);
                let _ = shared.wake.write(1);
            }
        }
    }
}

/// Picks up the devices the vCPU thread handed over.
fn adopt(shared: &Shared, devs: &mut [Option<Active>; MAX_DEVICES]) {
    let Ok(mut inbox) = shared.inbox.lock() else {
        return;
    };
    for (slot, dev) in inbox.iter_mut().zip(devs.iter_mut()) {
        if let Some(lent) = slot.take() {
            *dev = Some(Active {
                lent,
                tx_stalled: false,
                rx_due: true,
            });
        }
    }
}

/// One pass over a device's rings; true when the guest should be woken.
fn service(shared: &Shared, a: &mut Active) -> Result<bool, RingError> {
    let Lent { rings, dev } = &mut a.lent;
    let tx = rings.drain_tx(&shared.mem, dev)?;
    a.tx_stalled = tx.stalled;
    if tx.sent > 0 {
        STATS
            .tx_frames
            .fetch_add(u64::from(tx.sent), Ordering::Relaxed);
    }
    if tx.dropped > 0 {
        STATS
            .tx_dropped
            .fetch_add(u64::from(tx.dropped), Ordering::Relaxed);
    }
    let was_waiting = rings.rx_waiting();
    // A full ring may have room now (the guest kicked), and frames already
    // read from a stream may wait in the device's buffer.
    if !(a.rx_due || was_waiting || dev.has_buffered_frame()) {
        return Ok(tx.wake_guest);
    }
    a.rx_due = false;
    let rx = rings.fill_rx(&shared.mem, dev)?;
    if rx.produced > 0 {
        STATS
            .rx_frames
            .fetch_add(u64::from(rx.produced), Ordering::Relaxed);
    }
    if rx.full && !was_waiting {
        STATS.rx_full.fetch_add(1, Ordering::Relaxed);
    }
    Ok(rx.produced > 0 || tx.wake_guest)
}

/// `ppoll(2)` without a timeout or a signal mask; an interrupted wait
/// counts as a wake-up with nothing ready.
fn ppoll(fds: &mut [libc::pollfd]) -> std::io::Result<()> {
    // SAFETY: `fds` is a valid array of `fds.len()` pollfds the kernel may
    // update; a null timeout waits indefinitely and a null signal mask
    // leaves the mask alone.
    let n = unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if n >= 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::Interrupted {
        for f in fds.iter_mut() {
            f.revents = 0;
        }
        return Ok(());
    }
    Err(e)
}
