//! Catching the guest's fatal signals.
//!
//! SIGSEGV, SIGBUS, SIGILL, SIGFPE and SIGTRAP (CPU exceptions raised by
//! guest code) and SIGSYS (a system call the seccomp filter refused) end the
//! instance with a report instead of a bare core dump. The handlers run on
//! an alternate signal stack, so that an overflow of the guest's stack can
//! still be reported, and they are async-signal-safe: they read plain
//! atomics, format into stack buffers, and end with `write(2)` and
//! `_exit(2)` through [`kiln_tender::finish`], which does not allocate.
//!
//! All of this module's `unsafe` is the `sigaction`/`sigaltstack` setup and
//! the reads of the kernel's `siginfo_t` and `ucontext_t`.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use kiln_tender::{finish, Outcome};

use crate::layout::Span;
use crate::report::{classify, Trap};
use crate::sys::{self, Mapping};

/// Size of the alternate signal stack. The handler keeps an [`Outcome`]
/// and a report line (4 KiB each) on it, plus formatting frames.
pub const SIGNAL_STACK_SIZE: u64 = 64 * 1024;

/// Signals raised by faulting instructions.
const FAULT_SIGNALS: [i32; 5] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGTRAP,
];

/// The guest's stack guard page, for telling overflows from other faults.
static GUARD_START: AtomicU64 = AtomicU64::new(0);
static GUARD_END: AtomicU64 = AtomicU64::new(0);

/// One more than the number of the hypercall the tender is executing, or 0
/// while the guest runs.
static IN_HYPERCALL: AtomicU64 = AtomicU64::new(0);

/// Notes that the tender is now executing hypercall `nr` (`None`: back in
/// the guest), so that a fault in tender code is reported as the tender's.
pub fn set_hypercall(nr: Option<u32>) {
    IN_HYPERCALL.store(nr.map_or(0, |n| u64::from(n) + 1), Ordering::Relaxed);
}

/// Why the handlers could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    /// `sigaltstack` failed.
    #[error("cannot install the signal stack")]
    AltStack(#[source] io::Error),
    /// `sigaction` failed.
    #[error("cannot install the handler for signal {signal}")]
    Action {
        /// The signal.
        signal: i32,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// The dispositions the handlers replaced, to put back if the guest never
/// starts after all.
pub struct Installed {
    old_actions: Vec<(i32, libc::sigaction)>,
    old_stack: libc::stack_t,
    _stack: Mapping,
}

impl Installed {
    /// Puts the previous handlers and signal stack back.
    pub fn restore(self) {
        for (signal, old) in &self.old_actions {
            // SAFETY: `old` is a disposition the kernel returned for this
            // signal; reinstating it is what it was before `install`.
            unsafe { libc::sigaction(*signal, old, std::ptr::null_mut()) };
        }
        // SAFETY: as above, the signal stack that was in place before.
        unsafe { libc::sigaltstack(&self.old_stack, std::ptr::null_mut()) };
        // `_stack` is unmapped when `self` drops, after nothing uses it.
    }

    /// Keeps the handlers and their stack for the rest of the process.
    pub fn keep(self) {
        std::mem::forget(self);
    }
}

/// Installs the handlers on a fresh signal stack. `guard` is the page below
/// the guest's stack.
pub fn install(guard: Span) -> Result<Installed, FaultError> {
    GUARD_START.store(guard.start, Ordering::Relaxed);
    GUARD_END.store(guard.end, Ordering::Relaxed);
    let stack = Mapping::anywhere(SIGNAL_STACK_SIZE, "the signal stack")
        .map_err(|e| FaultError::AltStack(io::Error::other(e)))?;
    let new_stack = libc::stack_t {
        ss_sp: stack.span().start as *mut libc::c_void,
        ss_flags: 0,
        ss_size: SIGNAL_STACK_SIZE as usize,
    };
    // SAFETY: an all-zero stack_t is a valid value to be overwritten.
    let mut old_stack: libc::stack_t = unsafe { std::mem::zeroed() };
    // SAFETY: `new_stack` describes a live read-write mapping that
    // `Installed` owns until it is restored or kept forever.
    if unsafe { libc::sigaltstack(&new_stack, &mut old_stack) } != 0 {
        return Err(FaultError::AltStack(io::Error::last_os_error()));
    }
    let mut installed = Installed {
        old_actions: Vec::new(),
        old_stack,
        _stack: stack,
    };
    let mut set = |signal: i32, handler: usize| -> Result<(), FaultError> {
        // SAFETY: an all-zero sigaction is a valid value to be filled in.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = handler;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        // SAFETY: `sa_mask` is a valid sigset_t to fill; blocking every
        // signal keeps a second signal from interrupting the report.
        unsafe { libc::sigfillset(&mut action.sa_mask) };
        // SAFETY: as above.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: `handler` is an `extern "C" fn(i32, *mut siginfo_t, *mut
        // c_void)` as SA_SIGINFO requires, and is async-signal-safe.
        if unsafe { libc::sigaction(signal, &action, &mut old) } != 0 {
            return Err(FaultError::Action {
                signal,
                source: io::Error::last_os_error(),
            });
        }
        installed.old_actions.push((signal, old));
        Ok(())
    };
    let result = FAULT_SIGNALS
        .iter()
        .try_for_each(|&s| set(s, on_fault as *const () as usize))
        .and_then(|()| set(libc::SIGSYS, on_fault as *const () as usize));
    match result {
        Ok(()) => Ok(installed),
        Err(e) => {
            installed.restore();
            Err(e)
        }
    }
}

/// The kernel's `siginfo_t` for SIGSYS (`_sigsys` member of the union).
#[repr(C)]
struct SigsysInfo {
    signo: i32,
    errno: i32,
    code: i32,
    _pad: i32,
    call_addr: u64,
    syscall: i32,
    arch: u32,
}

/// The handler of every fatal signal: reports and ends the process.
extern "C" fn on_fault(signal: i32, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let mut trap = Trap {
        signal,
        ..Trap::default()
    };
    if !info.is_null() {
        // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t.
        let si = unsafe { &*info };
        trap.code = si.si_code;
        if signal == libc::SIGSYS {
            // SAFETY: for SIGSYS the kernel fills the `_sigsys` member,
            // laid out as `SigsysInfo`; siginfo_t is 128 bytes, larger.
            let sys = unsafe { &*(info as *const SigsysInfo) };
            trap.addr = sys.call_addr;
            trap.syscall = sys.syscall;
            trap.arch = sys.arch;
        } else {
            // SAFETY: for the fault signals `si_addr` is the member the
            // kernel filled.
            trap.addr = unsafe { si.si_addr() } as u64;
        }
    }
    if !context.is_null() {
        // SAFETY: with SA_SIGINFO the third argument is the interrupted
        // context, a valid ucontext_t.
        let uc = unsafe { &*(context as *const libc::ucontext_t) };
        let regs = &uc.uc_mcontext.gregs;
        trap.rip = regs[libc::REG_RIP as usize] as u64;
        trap.err = regs[libc::REG_ERR as usize] as u64;
        trap.trapno = regs[libc::REG_TRAPNO as usize] as u64;
    }
    let guard = Span {
        start: GUARD_START.load(Ordering::Relaxed),
        end: GUARD_END.load(Ordering::Relaxed),
    };
    let fault = classify(&trap, guard);
    let hypercall = IN_HYPERCALL.load(Ordering::Relaxed);
    if let Some(nr) = hypercall.checked_sub(1) {
        // Guest code does not run during a hypercall: this is the tender's
        // own fault (or a system call its filter lacks). Say so first.
        sys::write_raw(
            2,
            b"kiln: spt: the following fault is the tender's, in hypercall ",
        );
        sys::write_raw(2, kiln_abi::nr::name(nr as u32).as_bytes());
        sys::write_raw(2, b"\n");
    }
    finish(&Outcome::Fault(fault))
}
