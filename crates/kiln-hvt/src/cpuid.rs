//! The CPUID table the vCPU reports: a small, fixed baseline.
//!
//! KVM needs guest CPUID to accept `EFER.LME` (long mode) and `EFER.NXE`
//! (no-execute) in `KVM_SET_SREGS`. The usual recipe, passing all of
//! `KVM_GET_SUPPORTED_CPUID` through, costs about 300 µs on this project's
//! hosts (the kernel executes some fifty CPUID leaves, each a trap to the
//! outer hypervisor) — a fifth of the whole start-up. Images are built for
//! the x86-64 baseline and never need more, so the table is built from five
//! host CPUID leaves, each masked to a short allow-list of features that
//! work at CPL3 without any setup by an operating system:
//!
//! * leaf 0 / 0x8000_0000: vendor, highest leaves (1 and 0x8000_0008);
//! * leaf 1: family/model, x87, TSC, CMOV, MMX, FXSR, SSE..SSE4.2, POPCNT,
//!   CX16, AES, PCLMULQDQ, and the hypervisor bit;
//! * leaf 0x8000_0001: long mode, NX, LAHF/SAHF in 64-bit mode;
//! * leaf 0x8000_0008: physical and linear address widths.
//!
//! Not offered: XSAVE/AVX (CR4.OSXSAVE is off), SYSCALL (EFER.SCE is off),
//! RDTSCP, x2APIC, and everything an operating system must enable first.

use std::arch::x86_64::{__cpuid, CpuidResult};

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Leaf 1 EDX: FPU, PSE, TSC, MSR, PAE, CX8, PGE, CMOV, CLFSH, MMX, FXSR,
/// SSE, SSE2.
const LEAF1_EDX: u32 = (1 << 0)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 6)
    | (1 << 8)
    | (1 << 13)
    | (1 << 15)
    | (1 << 19)
    | (1 << 23)
    | (1 << 24)
    | (1 << 25)
    | (1 << 26);
/// Leaf 1 ECX: SSE3, PCLMULQDQ, SSSE3, CX16, SSE4.1, SSE4.2, POPCNT, AES.
const LEAF1_ECX: u32 =
    (1 << 0) | (1 << 1) | (1 << 9) | (1 << 13) | (1 << 19) | (1 << 20) | (1 << 23) | (1 << 25);
/// Leaf 1 ECX bit 31: running under a hypervisor.
const HYPERVISOR: u32 = 1 << 31;
/// Leaf 0x8000_0001 EDX: NX, LM.
const EXT1_EDX: u32 = (1 << 20) | (1 << 29);
/// Leaf 0x8000_0001 ECX: LAHF/SAHF in long mode.
const EXT1_ECX: u32 = 1 << 0;

fn entry(function: u32, r: CpuidResult) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        index: 0,
        flags: 0,
        eax: r.eax,
        ebx: r.ebx,
        ecx: r.ecx,
        edx: r.edx,
        padding: [0; 3],
    }
}

/// The five masked leaves, from the host's own CPUID results.
pub fn entries(host: impl Fn(u32) -> CpuidResult) -> [kvm_cpuid_entry2; 5] {
    let vendor = host(0);
    let leaf1 = host(1);
    let ext1 = host(0x8000_0001);
    let widths = host(0x8000_0008);
    [
        entry(0, CpuidResult { eax: 1, ..vendor }),
        entry(
            1,
            CpuidResult {
                eax: leaf1.eax,
                // Keep only the CLFLUSH line size: APIC ID 0, one logical CPU.
                ebx: leaf1.ebx & 0xff00,
                ecx: (leaf1.ecx & LEAF1_ECX) | HYPERVISOR,
                edx: leaf1.edx & LEAF1_EDX,
            },
        ),
        entry(
            0x8000_0000,
            CpuidResult {
                eax: 0x8000_0008,
                ..vendor
            },
        ),
        entry(
            0x8000_0001,
            CpuidResult {
                eax: ext1.eax,
                ebx: 0,
                ecx: ext1.ecx & EXT1_ECX,
                edx: ext1.edx & EXT1_EDX,
            },
        ),
        entry(
            0x8000_0008,
            CpuidResult {
                eax: widths.eax & 0xffff,
                ebx: 0,
                ecx: 0,
                edx: 0,
            },
        ),
    ]
}

/// The table for `KVM_SET_CPUID2`, from this host's CPUID (`None` only if
/// the wrapper could not hold five entries, which cannot happen).
pub fn table() -> Option<CpuId> {
    CpuId::from_entries(&entries(__cpuid)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(leaf: u32) -> CpuidResult {
        match leaf {
            0 => CpuidResult {
                eax: 0x1c,
                ebx: 0x6874_7541,
                ecx: 0x444d_4163,
                edx: 0x6974_6e65,
            },
            1 => CpuidResult {
                eax: 0x00a1_0f11,
                ebx: 0x0102_0800,
                ecx: 0xfffa_3203,
                edx: 0x178b_fbff,
            },
            0x8000_0001 => CpuidResult {
                eax: 0x00a1_0f11,
                ebx: 0x4000_0000,
                ecx: 0x0040_03f3,
                edx: 0x2fd3_fbff,
            },
            0x8000_0008 => CpuidResult {
                eax: 0x0030_3030,
                ebx: 0x5002_0005,
                ecx: 0x7001,
                edx: 0,
            },
            _ => CpuidResult {
                eax: 0,
                ebx: 0,
                ecx: 0,
                edx: 0,
            },
        }
    }

    #[test]
    fn long_mode_and_nx_are_offered_and_little_else() {
        let e = entries(fake);
        assert_eq!(e[0].function, 0);
        assert_eq!(e[0].eax, 1, "highest basic leaf");
        assert_eq!(e[0].ebx, 0x6874_7541, "vendor kept");
        assert_eq!(e[2].eax, 0x8000_0008, "highest extended leaf");
        let ext = &e[3];
        assert_eq!(ext.function, 0x8000_0001);
        assert_ne!(ext.edx & (1 << 29), 0, "LM");
        assert_ne!(ext.edx & (1 << 20), 0, "NX");
        assert_eq!(ext.edx & (1 << 11), 0, "no SYSCALL");
        assert_eq!(ext.edx & (1 << 27), 0, "no RDTSCP");
        let l1 = &e[1];
        assert_ne!(l1.edx & (1 << 25), 0, "SSE");
        assert_ne!(l1.edx & (1 << 26), 0, "SSE2");
        assert_eq!(l1.ecx & (1 << 26), 0, "no XSAVE");
        assert_eq!(l1.ecx & (1 << 28), 0, "no AVX");
        assert_eq!(l1.ecx & (1 << 21), 0, "no x2APIC");
        assert_ne!(l1.ecx & (1 << 31), 0, "hypervisor bit");
        assert_eq!(l1.ebx, 0x0800, "APIC ID 0, CLFLUSH size kept");
        assert_eq!(e[4].eax, 0x3030, "address widths");
    }
}
