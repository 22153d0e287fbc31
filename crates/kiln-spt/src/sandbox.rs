//! The seccomp filter that confines the process once the guest runs.
//!
//! It admits exactly the system calls `kiln_tender::dispatch` and
//! `kiln_tender::finish` make (see `kiln_tender::sys`), with their
//! arguments pinned where that is possible: `write` to stdout and stderr
//! (and to the `--ready-fd` descriptor, for READY),
//! `pread64`/`pwrite64` on the block devices' descriptors, `read`/`write`
//! on the network backends' descriptors and `ppoll` (without a signal
//! mask) for POLL when there are any, the two clocks (normally read through
//! the vDSO without a system call), the absolute monotonic sleep of POLL,
//! `exit_group`, and `rt_sigreturn`. Everything
//! else, including any 32-bit or x32 system call, raises SIGSYS
//! (`SECCOMP_RET_TRAP`), which [`crate::fault`] reports.
//!
//! Before any of that, the filter looks at where the call comes from: a
//! `syscall` instruction below [`IMAGE_LIMIT`] is guest code (only image
//! segments are executable there; the tender lives far above), and traps
//! whatever it asks for, even a `write` to stdout. That catches a guest
//! that bypasses the hypercalls by mistake; it is no barrier to a hostile
//! guest, which can jump into the tender's own `syscall` instructions — for
//! that, the allow list above is the boundary.

use std::collections::BTreeMap;
use std::os::fd::RawFd;

use kiln_abi::IMAGE_LIMIT;
use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// Why the filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// seccompiler rejected the rules.
    #[error("cannot build the seccomp filter")]
    Build(#[source] seccompiler::Error),
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

fn eq(arg: u8, value: u64) -> Result<SeccompCondition, SandboxError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
        .map_err(|e| SandboxError::Build(e.into()))
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, SandboxError> {
    SeccompRule::new(conditions).map_err(|e| SandboxError::Build(e.into()))
}

/// Builds the filter for an instance whose block devices use `fds`, whose
/// network backends use `net_fds` and whose READY writes to `ready_fd`.
pub fn filter(
    fds: &[RawFd],
    net_fds: &[RawFd],
    ready_fd: Option<RawFd>,
) -> Result<BpfProgram, SandboxError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let on = |fds: &[RawFd]| -> Result<Vec<SeccompRule>, SandboxError> {
        fds.iter()
            .map(|&fd| rule(vec![eq(0, fd as u64)?]))
            .collect()
    };
    // Console on stdout, reports on stderr; frames to network backends;
    // READY's byte.
    let mut writable = vec![1, 2];
    writable.extend_from_slice(net_fds);
    writable.extend(ready_fd);
    rules.insert(libc::SYS_write, on(&writable)?);
    // Frames from network backends, and POLL waiting on them. ppoll's
    // descriptors sit in memory, out of the filter's sight; the signal
    // mask argument is pinned to none.
    if !net_fds.is_empty() {
        rules.insert(libc::SYS_read, on(net_fds)?);
        rules.insert(libc::SYS_ppoll, vec![rule(vec![eq(3, 0)?])?]);
    }
    // Block devices. An empty rule list would mean "any arguments", so the
    // calls are left out entirely when there is no device.
    if !fds.is_empty() {
        rules.insert(libc::SYS_pread64, on(fds)?);
        rules.insert(libc::SYS_pwrite64, on(fds)?);
    }
    // CLOCK. The vDSO answers without a system call unless the clock source
    // does not allow it.
    rules.insert(
        libc::SYS_clock_gettime,
        vec![
            rule(vec![eq(0, libc::CLOCK_MONOTONIC as u64)?])?,
            rule(vec![eq(0, libc::CLOCK_REALTIME as u64)?])?,
        ],
    );
    // POLL: an absolute sleep on the monotonic clock.
    rules.insert(
        libc::SYS_clock_nanosleep,
        vec![rule(vec![
            eq(0, libc::CLOCK_MONOTONIC as u64)?,
            eq(1, libc::TIMER_ABSTIME as u64)?,
        ])?],
    );
    rules.insert(libc::SYS_exit_group, vec![]);
    rules.insert(libc::SYS_rt_sigreturn, vec![]);

    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| SandboxError::Build(e.into()))?;
    let mut program: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SandboxError::Build(e.into()))?;
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

    #[test]
    fn arch_mismatch_traps_instead_of_killing() {
        let p = filter(&[], &[], None).unwrap();
        assert_eq!(p[ARCH_MISMATCH_INDEX].code, BPF_RET_K);
        assert_eq!(p[ARCH_MISMATCH_INDEX].k, libc::SECCOMP_RET_TRAP);
        assert!(p
            .iter()
            .all(|i| !(i.code == BPF_RET_K && i.k == libc::SECCOMP_RET_KILL_PROCESS)));
    }

    #[test]
    fn guest_code_check_comes_before_the_syscall_number() {
        let p = filter(&[], &[], None).unwrap();
        let at = ARCH_MISMATCH_INDEX + 1;
        assert_eq!(p[at], stmt(BPF_LD_W_ABS, IP_HIGH));
        // Both skips land on `ld nr`.
        assert_eq!(p[at + 1 + 1 + 3], stmt(BPF_LD_W_ABS, 0));
        assert_eq!(p[at + 3].k, IMAGE_LIMIT as u32);
        assert_eq!(p[at + 4], stmt(BPF_RET_K, libc::SECCOMP_RET_TRAP));
    }

    #[test]
    fn unexpected_programs_are_refused() {
        let mut p = filter(&[], &[], None).unwrap();
        p.remove(0);
        assert!(patch(&mut p).is_none());
    }

    #[test]
    fn device_calls_only_with_devices() {
        let without = filter(&[], &[], None).unwrap();
        let with = filter(&[5, 6], &[], None).unwrap();
        let mentions = |p: &BpfProgram, nr: i64| {
            p.iter()
                .any(|i| i.code == BPF_JMP_JEQ_K && i.k == nr as u32)
        };
        assert!(!mentions(&without, libc::SYS_pread64));
        assert!(mentions(&with, libc::SYS_pread64));
        assert!(mentions(&with, libc::SYS_pwrite64));
        assert!(mentions(&with, libc::SYS_write));
        // (SYS_read is 0, which other comparisons use too: not checkable
        // this way.)
        assert!(!mentions(&with, libc::SYS_ppoll));
    }

    #[test]
    fn ready_fd_is_writable_only_when_given() {
        let with = filter(&[], &[], Some(9)).unwrap();
        let without = filter(&[], &[], None).unwrap();
        let compares_with_9 =
            |p: &BpfProgram| p.iter().any(|i| i.code == BPF_JMP_JEQ_K && i.k == 9);
        assert!(compares_with_9(&with));
        assert!(!compares_with_9(&without));
        assert!(with.len() > without.len());
    }

    #[test]
    fn network_calls_only_with_network_devices() {
        let with = filter(&[], &[7], None).unwrap();
        let mentions = |p: &BpfProgram, nr: i64| {
            p.iter()
                .any(|i| i.code == BPF_JMP_JEQ_K && i.k == nr as u32)
        };
        assert!(mentions(&with, libc::SYS_ppoll));
        assert!(with.len() > filter(&[], &[], None).unwrap().len() + 4);
        assert!(!mentions(&with, libc::SYS_pread64));
        // The descriptor is compared with (as an argument value).
        assert!(with.iter().any(|i| i.code == BPF_JMP_JEQ_K && i.k == 7));
    }
}
