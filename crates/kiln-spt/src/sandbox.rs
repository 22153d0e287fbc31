//! The seccomp filter that confines the process once the guest runs.
//!
//! It admits exactly the system calls of the hypercall path, with the
//! arguments [`kiln_tender::Policy::hypercall_path`] pins (one definition,
//! shared with hvt's vCPU thread): `write` to stdout and stderr, to the
//! network backends (count at most what the device writes at once) and to
//! the `--ready-fd` descriptor (one byte); `read` on the backends and
//! `ppoll` without a signal mask when there are any; `pread64`/`pwrite64`
//! on each disk with a count of exactly 4096 or 512 and an offset that
//! keeps the call inside the disk; the two clocks (normally read through
//! the vDSO without a system call) and the absolute monotonic sleep of
//! POLL; `exit_group`; `rt_sigreturn`. Everything else, including any
//! 32-bit or x32 system call, raises SIGSYS (`SECCOMP_RET_TRAP`), which
//! [`crate::fault`] reports.
//!
//! Before any of that, the filter looks at where the call comes from: a
//! `syscall` instruction below [`IMAGE_LIMIT`] is guest code (only image
//! segments are executable there; the tender lives far above), and traps
//! whatever it asks for, even a `write` to stdout. That catches a guest
//! that bypasses the hypercalls by mistake; it is no barrier to a hostile
//! guest, which can jump into the tender's own `syscall` instructions — for
//! that, the argument pins are the boundary (docs/security.md says what
//! such a guest can still do).

use kiln_abi::IMAGE_LIMIT;
use kiln_tender::{HostFds, Policy};
use seccompiler::{sock_filter, BpfProgram};

/// Why the filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The policy could not be compiled.
    #[error(transparent)]
    Build(#[from] kiln_tender::policy::PolicyError),
    /// seccompiler's program does not start the way this module expects.
    #[error("unexpected seccomp program layout from seccompiler")]
    Layout,
    /// The kernel refused the filter.
    #[error("cannot install the seccomp filter")]
    Install(#[source] seccompiler::Error),
}

/// Index of the `ret KILL_PROCESS` in the architecture check seccompiler
/// starts every program with (see [`patch`]).
const ARCH_MISMATCH_INDEX: usize = 2;

/// The policy of an instance whose hypercalls use the descriptors `fds`.
pub fn policy(fds: &HostFds) -> Policy {
    Policy::hypercall_path(fds)
}

/// Builds the filter for an instance whose hypercalls use the descriptors
/// `fds`.
pub fn filter(fds: &HostFds) -> Result<BpfProgram, SandboxError> {
    let mut program = policy(fds).compile()?;
    patch(&mut program).ok_or(SandboxError::Layout)?;
    Ok(program)
}

// Classic BPF opcodes (linux/bpf_common.h).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_RET_K: u16 = 0x06;

/// Offsets in `struct seccomp_data`: the instruction pointer's low and
/// high words (little endian).
const IP_LOW: u32 = 8;
const IP_HIGH: u32 = 12;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// Adjusts seccompiler's program, which starts with `ld arch; jeq
/// X86_64 ? +1; ret KILL_PROCESS; ld nr; ...`: a foreign architecture
/// (`int 0x80`) traps instead of killing, so that it is reported like any
/// other forbidden call; and calls from guest code trap before the
/// syscall number is even looked at. `None` when the program does not
/// start as expected (a seccompiler change).
fn patch(program: &mut BpfProgram) -> Option<()> {
    let kill = program.get_mut(ARCH_MISMATCH_INDEX)?;
    if kill.code != BPF_RET_K || kill.k != libc::SECCOMP_RET_KILL_PROCESS {
        return None;
    }
    kill.k = libc::SECCOMP_RET_TRAP;
    let load_nr = program.get(ARCH_MISMATCH_INDEX + 1)?;
    if load_nr.code != BPF_LD_W_ABS || load_nr.k != 0 {
        return None;
    }
    let from_guest = [
        stmt(BPF_LD_W_ABS, IP_HIGH),
        // High word zero: maybe guest code; else on to `ld nr`.
        jump(BPF_JMP_JEQ_K, 0, 0, 3),
        stmt(BPF_LD_W_ABS, IP_LOW),
        // At or above IMAGE_LIMIT: not guest code; on to `ld nr`.
        jump(BPF_JMP_JGE_K, IMAGE_LIMIT as u32, 1, 0),
        stmt(BPF_RET_K, libc::SECCOMP_RET_TRAP),
    ];
    let at = ARCH_MISMATCH_INDEX + 1;
    program.splice(at..at, from_guest);
    Some(())
}

/// Installs `program` on the calling thread (the only one). From here on
/// only the admitted system calls work; everything the tender still has to
/// do must already be done.
pub fn install(program: &BpfProgram) -> Result<(), SandboxError> {
    seccompiler::apply_filter(program).map_err(SandboxError::Install)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_tender::policy::{Disk, NetFd};

    fn none() -> HostFds {
        HostFds::default()
    }

    #[test]
    fn arch_mismatch_traps_instead_of_killing() {
        let p = filter(&none()).unwrap();
        assert_eq!(p[ARCH_MISMATCH_INDEX].code, BPF_RET_K);
        assert_eq!(p[ARCH_MISMATCH_INDEX].k, libc::SECCOMP_RET_TRAP);
        assert!(p
            .iter()
            .all(|i| !(i.code == BPF_RET_K && i.k == libc::SECCOMP_RET_KILL_PROCESS)));
    }

    #[test]
    fn guest_code_check_comes_before_the_syscall_number() {
        let p = filter(&none()).unwrap();
        let at = ARCH_MISMATCH_INDEX + 1;
        assert_eq!(p[at], stmt(BPF_LD_W_ABS, IP_HIGH));
        // Both skips land on `ld nr`.
        assert_eq!(p[at + 1 + 1 + 3], stmt(BPF_LD_W_ABS, 0));
        assert_eq!(p[at + 3].k, IMAGE_LIMIT as u32);
        assert_eq!(p[at + 4], stmt(BPF_RET_K, libc::SECCOMP_RET_TRAP));
    }

    #[test]
    fn unexpected_programs_are_refused() {
        let mut p = filter(&none()).unwrap();
        p.remove(0);
        assert!(patch(&mut p).is_none());
    }

    /// The figures of docs/security.md: system calls allowed with and
    /// without devices (print them with `-- --nocapture`).
    #[test]
    fn allowed_system_calls() {
        let disk = Disk {
            fd: 3,
            capacity: 1 << 20,
        };
        let net = NetFd {
            fd: 4,
            largest_write: 1514,
        };
        for (what, fds, count) in [
            ("no devices", none(), 5),
            (
                "one net device",
                HostFds {
                    nets: vec![net],
                    ..none()
                },
                7,
            ),
            (
                "one block device",
                HostFds {
                    disks: vec![disk],
                    ..none()
                },
                7,
            ),
            (
                "one of each, --ready-fd",
                HostFds {
                    disks: vec![disk],
                    nets: vec![net],
                    ready: Some(5),
                },
                9,
            ),
        ] {
            let p = policy(&fds);
            println!("spt, {what}: {} system calls\n{p}", p.len());
            assert_eq!(p.len(), count, "spt, {what}:\n{p}");
            assert!(filter(&fds).is_ok());
        }
    }
}
