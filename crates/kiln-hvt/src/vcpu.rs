//! The VM and its one vCPU: guest memory registration and the register
//! state that enters the image in 64-bit mode at CPL3.

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::layout::{Layout, GDT_ADDR, IDT_ADDR, PAGE_TABLES_BASE, TSS_ADDR};
use crate::x86;

/// A KVM call that failed during setup.
#[derive(Debug, thiserror::Error)]
#[error("KVM {what} failed")]
pub struct KvmError {
    /// Which call.
    pub what: &'static str,
    /// The errno.
    #[source]
    pub source: kvm_ioctls::Error,
}

fn kvm<T>(what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, KvmError> {
    r.map_err(|source| KvmError { what, source })
}

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;

/// Registers `mem` (one region at guest address 0) as memory slot 0.
pub fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap, size: u64) -> Result<(), KvmError> {
    let host = mem
        .get_host_address(GuestAddress(0))
        .map_err(|_| KvmError {
            what: "memory registration (no host mapping)",
            source: kvm_ioctls::Error::new(libc::EFAULT),
        })?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: size,
        userspace_addr: host as u64,
    };
    // SAFETY: `host` is the start of the anonymous mapping of `size` bytes
    // that `mem` owns. The caller keeps `mem` alive longer than the VM
    // (`Instance` drops the VM first; the run loop ends the process through
    // `finish`), so KVM never maps a dangling range, and slot 0 is
    // registered once per VM.
    kvm("KVM_SET_USER_MEMORY_REGION", unsafe {
        vm.set_user_memory_region(region)
    })
}

fn user_segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        // Code: execute/read, accessed. Data: read/write, accessed.
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 3,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// The special registers: long mode with paging on at CR3 =
/// `PAGE_TABLES_BASE`, every segment register at DPL/RPL 3 (so the very first
/// instruction already runs at CPL3, natively on PVM), TR on the TSS, GDT
/// and IDT in the tender's system page.
pub fn configure_sregs(vcpu: &VcpuFd) -> Result<(), KvmError> {
    let mut s = kvm("KVM_GET_SREGS", vcpu.get_sregs())?;
    s.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    s.cr3 = PAGE_TABLES_BASE;
    s.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    s.efer = EFER_LME | EFER_LMA | EFER_NXE;
    s.cs = user_segment(x86::USER_CS, true);
    let data = user_segment(x86::USER_DS, false);
    s.ss = data;
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.tr = kvm_segment {
        base: TSS_ADDR,
        limit: x86::TSS_LIMIT,
        selector: x86::TSS_SELECTOR,
        type_: x86::TSS_TYPE_BUSY,
        present: 1,
        dpl: 0,
        db: 0,
        s: 0,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    s.ldt = kvm_segment {
        type_: 2,
        unusable: 1,
        ..Default::default()
    };
    s.gdt.base = GDT_ADDR;
    s.gdt.limit = (x86::GDT_SIZE - 1) as u16;
    s.idt.base = IDT_ADDR;
    s.idt.limit = (x86::IDT_SIZE - 1) as u16;
    kvm("KVM_SET_SREGS", vcpu.set_sregs(&s))
}

/// The general registers: entry point, BootInfo address in `rdi`, the stack
/// pointer as after a `call`, interrupts off.
pub fn configure_regs(vcpu: &VcpuFd, entry: u64, layout: &Layout) -> Result<(), KvmError> {
    let regs = kvm_bindings::kvm_regs {
        rip: entry,
        rdi: layout.boot_info,
        rsp: layout.initial_rsp(),
        rflags: 0x2,
        ..Default::default()
    };
    kvm("KVM_SET_REGS", vcpu.set_regs(&regs))
}

/// Where `syscall` would land if it were enabled: an address in page 0,
/// which is never mapped.
///
/// `EFER.SCE` is off, so on VMX/SVM hardware `syscall` raises #UD. PVM
/// (shared/HOST-FACTS.md) instead jumps to `MSR_LSTAR` at CPL3 regardless
/// of `EFER.SCE`; pointing LSTAR (and CSTAR) here turns that into a page
/// fault at this address with `rcx` = the instruction after the `syscall`,
/// which the monitor recognizes and reports as the architectural #UD.
pub const SYSCALL_TRAP: u64 = 0xff0;

const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;

/// Points the `syscall` entry MSRs at [`SYSCALL_TRAP`].
pub fn configure_msrs(vcpu: &VcpuFd) -> Result<(), KvmError> {
    let entry = |index| kvm_bindings::kvm_msr_entry {
        index,
        data: SYSCALL_TRAP,
        ..Default::default()
    };
    let msrs =
        kvm_bindings::Msrs::from_entries(&[entry(MSR_LSTAR), entry(MSR_CSTAR)]).map_err(|_| {
            KvmError {
                what: "KVM_SET_MSRS (building the list)",
                source: kvm_ioctls::Error::new(libc::EINVAL),
            }
        })?;
    let set = kvm("KVM_SET_MSRS", vcpu.set_msrs(&msrs))?;
    if set != 2 {
        return Err(KvmError {
            what: "KVM_SET_MSRS (LSTAR/CSTAR)",
            source: kvm_ioctls::Error::new(libc::EINVAL),
        });
    }
    Ok(())
}

/// Gives the vCPU its CPUID table (see [`crate::cpuid`]): long mode and NX,
/// which `KVM_SET_SREGS` requires, and the x86-64 baseline.
pub fn configure_cpuid(vcpu: &VcpuFd) -> Result<(), KvmError> {
    let table = crate::cpuid::table().ok_or(KvmError {
        what: "KVM_SET_CPUID2 (building the table)",
        source: kvm_ioctls::Error::new(libc::EINVAL),
    })?;
    kvm("KVM_SET_CPUID2", vcpu.set_cpuid2(&table))
}

/// The vCPU's TSC frequency in Hz, or 0 when KVM cannot tell.
pub fn tsc_hz(vcpu: &VcpuFd) -> u64 {
    vcpu.get_tsc_khz().map_or(0, |khz| u64::from(khz) * 1000)
}
