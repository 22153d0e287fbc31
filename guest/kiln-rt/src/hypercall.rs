//! The hypercall glue: the only code that transfers control to the tender.
//!
//! A hypercall passes the number `nr` and the address of its argument struct:
//!
//! * spt: [`BootInfo::hypercall`](kiln_abi::BootInfo::hypercall) is the
//!   address of an `extern "C" fn(nr: u64, arg: u64)`; we call it;
//! * hvt: that field is zero and we execute `out dx, eax` with
//!   `dx = HVT_PORT_BASE + nr` and `eax` = the struct's address.
//!
//! Either way the tender reads the struct and writes results back into it,
//! so the compiler must assume the struct (and any buffer it names) is read
//! and written: the function call does so by taking the pointer, the `asm!`
//! block by not being `nomem`/`readonly`.
//!
//! On top of the raw [`hypercall`] sit small safe wrappers, one per hypercall
//! the rest of kiln-rt uses.

use core::sync::atomic::{AtomicUsize, Ordering};
use kiln_abi::{
    nr, Abort, Clock, ConsoleWrite, Halt, NetRead, NetWrite, Poll, ABORT_MSG_MAX, HVT_PORT_BASE,
};

/// The spt hypercall function's address, or 0 for port I/O (hvt). Set once
/// by `_start` from the BootInfo.
static HYPERCALL_FN: AtomicUsize = AtomicUsize::new(0);

/// Records how to reach the tender: `entry` is `BootInfo::hypercall`.
pub(crate) fn set_entry(entry: u64) {
    HYPERCALL_FN.store(entry as usize, Ordering::Relaxed);
}

/// Issues hypercall `nr` with `arg` as its argument struct. Low level: the
/// safe functions of kiln-rt ([`println!`](crate::println),
/// [`time`](crate::time), [`block`](crate::block), ...) are the normal way to
/// reach the tender.
///
/// The tender checks every address before use; a hypercall with an unknown
/// number or an address outside the image's memory ends the instance with an
/// error naming the hypercall (`kiln run` exits with
/// [`EXIT_CRASHED`](kiln_abi::EXIT_CRASHED)).
///
/// # Safety
///
/// `arg` must be the argument struct hypercall `nr` expects (see
/// [`kiln_abi::nr`]). Any memory the struct names for the tender to write
/// (for example the buffer of `BLOCK_READ`) must be valid for writes of the
/// given length and not otherwise borrowed, since the tender overwrites it
/// behind the compiler's back.
pub unsafe fn hypercall<T>(nr: u32, arg: &mut T) {
    // SAFETY: forwarded caller guarantee; `arg` is a valid, exclusive
    // reference to the struct for the duration of the call.
    unsafe { hypercall_raw(nr, arg as *mut T as u64) }
}

/// Issues hypercall `nr` with the argument struct at guest address `arg`,
/// which need not be valid (tests use this to check that tenders refuse bad
/// addresses). Even lower level than [`hypercall`].
///
/// # Safety
///
/// As for [`hypercall`]: if `arg` is a valid struct, any memory it names for
/// the tender to write must be writable and not otherwise borrowed, and `arg`
/// itself must not be borrowed.
pub unsafe fn hypercall_raw(nr: u32, arg: u64) {
    let entry = HYPERCALL_FN.load(Ordering::Relaxed);
    if entry != 0 {
        // SAFETY: `entry` came from `BootInfo::hypercall`, which the spt
        // tender sets to the address of an `extern "C" fn(u64, u64)` that
        // stays valid for the instance's lifetime (kiln_abi contract).
        let call: extern "C" fn(u64, u64) = unsafe { core::mem::transmute(entry) };
        call(u64::from(nr), arg);
    } else {
        // Guest memory lies below 4 GiB on hvt (identity mapped), so the
        // struct's address fits in eax; never pass a truncated address.
        if arg > u64::from(u32::MAX) {
            after_end();
        }
        let port = HVT_PORT_BASE.wrapping_add(nr as u16);
        // SAFETY: on hvt the port write traps to the monitor, which reads and
        // writes the argument struct (and the memory it names, which the
        // caller vouched for) and then resumes us; no register other than the
        // inputs is touched. The block is not `nomem`, so the compiler treats
        // memory as read and written.
        unsafe {
            core::arch::asm!(
                "out dx, eax",
                in("dx") port,
                in("eax") arg as u32,
                options(nostack, preserves_flags),
            );
        }
    }
}

/// Writes `bytes` to the console in as few hypercalls as the
/// [`CONSOLE_WRITE_MAX`](kiln_abi::CONSOLE_WRITE_MAX) limit allows.
pub(crate) fn console_write(bytes: &[u8]) {
    for chunk in bytes.chunks(kiln_abi::CONSOLE_WRITE_MAX as usize) {
        let mut arg = ConsoleWrite {
            buf: chunk.as_ptr() as u64,
            len: chunk.len() as u64,
        };
        // SAFETY: CONSOLE_WRITE only reads `len` bytes at `buf`, which is
        // `chunk`, alive for the call.
        unsafe { hypercall(nr::CONSOLE_WRITE, &mut arg) };
    }
}

/// Reads the host's monotonic and wall clocks.
pub(crate) fn clock() -> Clock {
    let mut arg = Clock::default();
    // SAFETY: CLOCK writes only the struct itself.
    unsafe { hypercall(nr::CLOCK, &mut arg) };
    arg
}

/// Waits until a device has input or the monotonic clock reaches
/// `deadline_ns`; returns the bit set of devices with input.
pub(crate) fn poll(deadline_ns: u64) -> u64 {
    let mut arg = Poll {
        deadline_ns,
        ready: 0,
    };
    // SAFETY: POLL writes only the struct itself.
    unsafe { hypercall(nr::POLL, &mut arg) };
    arg.ready
}

/// Receives one Ethernet frame from network device `device` into `buf`:
/// the frame length, or a negative errno (`EAGAIN` when none is waiting).
#[cfg_attr(not(feature = "net"), allow(dead_code))]
pub(crate) fn net_read(device: usize, buf: &mut [u8]) -> i64 {
    let mut arg = NetRead {
        device: device as u64,
        buf: buf.as_mut_ptr() as u64,
        len: buf.len() as u64,
        ret: 0,
    };
    // SAFETY: NET_READ writes at most `len` bytes at `buf`, which is `buf`,
    // exclusively borrowed for the call.
    unsafe { hypercall(nr::NET_READ, &mut arg) };
    arg.ret
}

/// Sends one Ethernet frame on network device `device`: the number of
/// bytes sent, or a negative errno.
#[cfg_attr(not(feature = "net"), allow(dead_code))]
pub(crate) fn net_write(device: usize, frame: &[u8]) -> i64 {
    let mut arg = NetWrite {
        device: device as u64,
        buf: frame.as_ptr() as u64,
        len: frame.len() as u64,
        ret: 0,
    };
    // SAFETY: NET_WRITE only reads `len` bytes at `buf`, which is `frame`,
    // borrowed for the call.
    unsafe { hypercall(nr::NET_WRITE, &mut arg) };
    arg.ret
}

/// Offers network device `device` the shared-memory rings `rx` and `tx`
/// (NET_RINGS; each [`NET_RING_SIZE`](kiln_abi::NET_RING_SIZE) bytes, page
/// aligned, zeroed): 0 when the tender took them, else a negative errno
/// (ENODEV: keep using NET_READ/NET_WRITE). The rings are `'static`
/// atomics because the tender reads and writes them, concurrently, for the
/// rest of the instance's life.
#[cfg(feature = "net")]
pub(crate) fn net_rings(
    device: usize,
    rx: &'static [core::sync::atomic::AtomicU32],
    tx: &'static [core::sync::atomic::AtomicU32],
) -> i64 {
    let size = kiln_abi::NET_RING_SIZE as usize;
    if core::mem::size_of_val(rx) != size || core::mem::size_of_val(tx) != size {
        return kiln_abi::errno::EINVAL;
    }
    let mut arg = kiln_abi::NetRings {
        device: device as u64,
        rx: rx.as_ptr() as u64,
        tx: tx.as_ptr() as u64,
        ret: 0,
    };
    // SAFETY: NET_RINGS writes the struct, then (on success) the tender
    // accesses the two rings for good; they are 'static, never freed, and
    // only ever accessed through atomics on our side.
    unsafe { hypercall(nr::NET_RINGS, &mut arg) };
    arg.ret
}

/// Kicks the tender to look at network device `device`'s transmit ring
/// (hvt: the NET_RINGS doorbell, caught in the host kernel). Does nothing
/// on spt, which offers no rings.
#[cfg(feature = "net")]
pub(crate) fn net_kick(device: usize) {
    if HYPERCALL_FN.load(Ordering::Relaxed) != 0 {
        return;
    }
    // SAFETY: a port write the TSS admits and KVM turns into an eventfd
    // signal (or the monitor forwards); it touches no guest memory. Not
    // `nomem`, so the ring stores before it stay before it.
    unsafe {
        core::arch::asm!(
            "out dx, eax",
            in("dx") kiln_abi::HVT_NET_DOORBELL_PORT,
            in("eax") device as u32,
            options(nostack, preserves_flags),
        );
    }
}

/// Tells the tender the application is ready to serve (READY): 0, or a
/// negative errno.
pub(crate) fn ready() -> i64 {
    let mut arg = kiln_abi::Ready::default();
    // SAFETY: READY reads and writes only the struct itself.
    unsafe { hypercall(nr::READY, &mut arg) };
    arg.ret
}

/// Ends the instance with `code`; `kiln run` exits with `code & 0xff`.
///
/// Nothing runs after it: no destructors, no pending tasks. Returning from
/// the application's `main` does the same.
pub fn exit(code: i32) -> ! {
    let mut arg = Halt {
        exit_code: code as i64 as u64,
    };
    // SAFETY: HALT reads only the struct itself.
    unsafe { hypercall(nr::HALT, &mut arg) };
    after_end()
}

/// Ends the instance abnormally; the tender prints `msg` (cut to
/// [`ABORT_MSG_MAX`](kiln_abi::ABORT_MSG_MAX) bytes) and `kiln run` exits with
/// [`EXIT_ABORTED`](kiln_abi::EXIT_ABORTED).
pub fn abort(msg: &str) -> ! {
    let mut len = msg.len().min(ABORT_MSG_MAX as usize);
    while !msg.is_char_boundary(len) {
        len -= 1;
    }
    let mut arg = Abort {
        msg: msg.as_ptr() as u64,
        len: len as u64,
    };
    // SAFETY: ABORT only reads `len` bytes at `msg`, a prefix of `msg`.
    unsafe { hypercall(nr::ABORT, &mut arg) };
    after_end()
}

/// HALT and ABORT never return; if a tender ever did return, stop with a
/// CPU fault (`ud2`) rather than run on.
fn after_end() -> ! {
    loop {
        // SAFETY: `ud2` raises an invalid-opcode fault, which the tender
        // reports and which ends the instance; it touches no memory.
        unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
    }
}
