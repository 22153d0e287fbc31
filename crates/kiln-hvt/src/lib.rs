//! hvt: kiln's KVM monitor.
//!
//! One image, one VM, one vCPU. The monitor enters 64-bit long mode
//! directly (no firmware, no real mode) and runs the image at **CPL3**: the
//! first `KVM_SET_SREGS` already loads ring-3 code and data segments. The
//! monitor owns everything privileged — page tables, GDT, IDT, the TSS with
//! its I/O permission bitmap, and 32 tiny ring-0 exception stubs — in pages
//! the image cannot reach (see [`layout`] for the memory map). This keeps
//! W^X, page 0 and the stack guard page in force even against a compromised
//! image, and it is what lets images run natively on PVM hosts, where code
//! at CPL0 is emulated (shared/HOST-FACTS.md).
//!
//! * Hypercalls are `out dx, eax` to `HVT_PORT_BASE + nr` with the guest
//!   address of the argument struct in `eax`. The TSS bitmap admits only
//!   those ports; everything else raises #GP. Arguments are checked by
//!   [`kiln_tender::dispatch`] through `memory::GuestView`, which admits
//!   only memory the image could access itself the same way.
//! * A CPU exception enters its ring-0 stub through a DPL-0 interrupt gate
//!   (so `int n` from the image is itself a #GP); the stub writes the vector
//!   to a private port and the monitor reads the exception frame from the
//!   ring-0 stack, plus CR2, and ends the instance with a
//!   [`kiln_tender::Outcome::Fault`].
//! * Before the first `KVM_RUN` the monitor confines itself with seccomp
//!   (the `seccomp` module lists each allowed call and why).
//!
//! # Networking
//!
//! Network devices work two ways. Through the hypercalls NET_READ,
//! NET_WRITE and POLL (one exit each, served by [`kiln_tender::dispatch`]),
//! and, once the image calls NET_RINGS for a device, through two
//! shared-memory rings in guest memory ([`rings`]): the device then leaves
//! the hypercall path and belongs to a per-instance I/O thread (`io`), which
//! moves frames between the backend and the rings, checking every index and
//! length the guest wrote. The guest kicks the thread after a batch of
//! transmits by writing the doorbell port, which a `KVM_IOEVENTFD` catches
//! in the host kernel (no exit to this process: ~5 µs instead of ~30 µs
//! here); the thread wakes the vCPU thread's POLL through an eventfd when
//! it has put frames in a receive ring. So a busy server exits only to
//! POLL when it has nothing left to do. Both threads run under their own
//! seccomp filter from before the guest's first instruction. A guest that
//! breaks the ring rules ends its instance with a violation naming the
//! problem (exit status 139). `-v` prints the exits per hypercall and the
//! rings' counters, also when the instance is stopped with SIGINT/SIGTERM.
//!
//! # Start-up cost
//!
//! Setup is a handful of ioctls; `-v` prints each step. Two choices keep it
//! short: the CPUID table is a small masked baseline instead of the whole of
//! `KVM_GET_SUPPORTED_CPUID` (see the `cpuid` module: saves ~0.3 ms here),
//! and the VM made by [`probe`] is reused by the [`run`] that follows it.
//! Fresh guest memory is zero, so only segment file bytes are copied. With
//! network devices the I/O thread is started before the VM is built and
//! installs its seccomp filter while the vCPU thread builds the VM; before
//! the first `KVM_RUN` the vCPU thread only checks that it did (it used to
//! wait ~0.2 ms for it at that point).
//!
//! # Behaviour on PVM
//!
//! PVM delivers some events differently from VMX/SVM hardware; the monitor
//! reports them the same way on both:
//! * `syscall` with `EFER.SCE` clear jumps to `MSR_LSTAR` at CPL3 instead of
//!   raising #UD. LSTAR points at an unmapped address the monitor recognizes
//!   (`vcpu::SYSCALL_TRAP`), and the fault is reported as the invalid opcode
//!   the architecture specifies, at the `syscall` instruction.
//! * `int n` through a DPL-0 gate raises #UD (hardware: #GP) and `int3`
//!   raises #BP (hardware: #GP); both end the instance with the exception
//!   named and the instruction explained.

mod cpuid;
mod fault;
mod instance;
mod io;
pub mod layout;
mod memory;
mod monitor;
mod paging;
// Public for the `net_rings` fuzz target and the `ring_bench` example,
// which drive the ring code without a VM.
pub mod rings;
mod seccomp;
mod vcpu;
mod x86;

use std::convert::Infallible;
use std::time::Instant;

use kiln_tender::RunConfig;

pub use layout::LayoutError;
pub use seccomp::SeccompError;
pub use vcpu::KvmError;

/// Why an instance could not be started. Once the guest runs, the monitor
/// no longer returns: it ends the process through [`kiln_tender::finish`].
#[derive(Debug, thiserror::Error)]
pub enum HvtError {
    /// /dev/kvm is missing, inaccessible, or a KVM call failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// The image and its stack do not fit the memory asked for.
    #[error("cannot lay out guest memory")]
    Layout(#[from] LayoutError),
    /// The instance's devices or BootInfo could not be prepared.
    #[error(transparent)]
    Tender(#[from] kiln_tender::TenderError),
    /// Guest memory could not be allocated.
    #[error("cannot allocate {} MiB of guest memory", size >> 20)]
    Memory {
        /// Bytes asked for.
        size: u64,
        /// The cause.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// Writing the image or a tender structure into guest memory failed.
    #[error("cannot write the {what} at {addr:#x} into guest memory")]
    Load {
        /// What was being written.
        what: &'static str,
        /// Where.
        addr: u64,
        /// The cause.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// The sandbox could not be installed.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// The network ring machinery (eventfds, I/O thread) could not be set up.
    #[error("cannot set up the network I/O thread")]
    Net(#[source] std::io::Error),
}

/// Whether this host can run hvt instances: /dev/kvm opens and a VM can be
/// created. Used by `kiln run --tender auto`. The VM is kept for the next
/// [`run`] in this process, so probing costs nothing extra.
pub fn probe() -> Result<(), HvtError> {
    instance::probe()?;
    Ok(())
}

/// Runs `cfg`'s image in a new VM. Returns only when the instance could not
/// be started; otherwise the process ends with the instance's outcome.
pub fn run(cfg: RunConfig) -> Result<Infallible, HvtError> {
    let started = Instant::now();
    let mut inst = instance::Instance::create(&cfg)?;
    let verbose = cfg.verbose;
    // Everything the run loop does not need goes before the sandbox closes.
    drop(cfg);
    if verbose {
        monitor::report_on_signals();
    }
    inst.sandbox()?;
    monitor::prepare_report(&inst, started, verbose);
    let outcome = monitor::run(&mut inst);
    monitor::end(&outcome)
}
