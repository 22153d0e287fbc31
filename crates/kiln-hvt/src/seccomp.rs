//! The monitor's own sandbox, installed after setup and before the first
//! `KVM_RUN`.
//!
//! From then on the process does only what the run loop and the hypercall
//! path need. Each allowed system call, and why:
//!
//! | system call       | restricted to                         | used by |
//! |-------------------|---------------------------------------|---------|
//! | `ioctl`           | the vCPU fd; `KVM_RUN`, `KVM_GET_REGS`, `KVM_GET_SREGS` | the run loop; reading the exception frame and CR2 after a fault |
//! | `write`           | fds 1 and 2                           | CONSOLE_WRITE (stdout), the exit report and `-v` timings (stderr) |
//! | `pread64`, `pwrite64` | the block-device fds of [`kiln_tender::Host::fds`] | BLOCK_READ, BLOCK_WRITE |
//! | `clock_gettime`   | —                                     | CLOCK, POLL and timings (normally served by the vDSO; allowed for hosts whose clock source forces the system call) |
//! | `clock_nanosleep` | —                                     | POLL's sleep until its deadline |
//! | `exit_group`      | —                                     | `kiln_tender::finish` |
//! | `rt_sigreturn`    | —                                     | returning from a signal handler the runtime may run (none is expected) |
//!
//! Everything else — opening files, sockets, `mmap`, creating more KVM
//! objects, `ioctl` on the VM or `/dev/kvm` fds — raises `SIGSYS`; the
//! handler installed here reports the system call number on stderr and ends
//! the process with [`kiln_abi::EXIT_CRASHED`] (the same effect as killing
//! it, plus a diagnosis).

use std::collections::BTreeMap;
use std::os::fd::RawFd;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The sandbox could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The kernel refused the filter.
    #[error("cannot install the seccomp filter")]
    Filter(#[from] seccompiler::Error),
    /// seccompiler rejected the rules.
    #[error("cannot compile the seccomp filter")]
    Backend(#[from] seccompiler::BackendError),
    /// `sigaction(SIGSYS)` failed.
    #[error("cannot install the SIGSYS handler")]
    Handler(#[source] std::io::Error),
}

const KVMIO: u64 = 0xae;

/// `_IO(KVMIO, nr)`.
const fn io(nr: u64) -> u64 {
    (KVMIO << 8) | nr
}

/// `_IOR(KVMIO, nr, size)`.
const fn ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}

/// `KVM_RUN`.
pub const KVM_RUN: u64 = io(0x80);
/// `KVM_GET_REGS`.
pub const KVM_GET_REGS: u64 = ior(0x81, std::mem::size_of::<kvm_bindings::kvm_regs>());
/// `KVM_GET_SREGS`.
pub const KVM_GET_SREGS: u64 = ior(0x83, std::mem::size_of::<kvm_bindings::kvm_sregs>());

fn eq(arg: u8, value: u64) -> Result<SeccompCondition, seccompiler::BackendError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
}

/// One rule per allowed value of argument `arg`.
fn any_of(
    arg: u8,
    values: impl IntoIterator<Item = u64>,
) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    values
        .into_iter()
        .map(|v| SeccompRule::new(vec![eq(arg, v)?]))
        .collect()
}

/// Builds the filter for a run loop on `vcpu_fd` whose hypercalls use the
/// block-device descriptors `disk_fds`.
pub fn build(vcpu_fd: RawFd, disk_fds: &[RawFd]) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    rules.insert(
        libc::SYS_ioctl,
        [KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS]
            .into_iter()
            .map(|req| SeccompRule::new(vec![eq(0, vcpu_fd as u64)?, eq(1, req)?]))
            .collect::<Result<_, _>>()?,
    );
    rules.insert(libc::SYS_write, any_of(0, [1, 2])?);
    let disks = disk_fds.iter().map(|&fd| fd as u64);
    if disk_fds.is_empty() {
        // No block device: no pread/pwrite at all.
    } else {
        rules.insert(libc::SYS_pread64, any_of(0, disks.clone())?);
        rules.insert(libc::SYS_pwrite64, any_of(0, disks)?);
    }
    for unconditional in [
        libc::SYS_clock_gettime,
        libc::SYS_clock_nanosleep,
        libc::SYS_exit_group,
        libc::SYS_rt_sigreturn,
    ] {
        rules.insert(unconditional, Vec::new());
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?;
    Ok(filter.try_into()?)
}

/// Installs the SIGSYS reporter, then `filter`, on the calling thread (the
/// only thread of a tender).
pub fn install(filter: &BpfProgram) -> Result<(), SeccompError> {
    install_sigsys_handler().map_err(SeccompError::Handler)?;
    seccompiler::apply_filter(filter)?;
    Ok(())
}

/// Offset of `si_syscall` in the kernel's `siginfo_t` for SIGSYS
/// (`si_signo`, `si_errno`, `si_code`, padding, then `_call_addr`).
const SI_SYSCALL_OFFSET: usize = 24;

/// Appends the decimal digits of `n` to `buf` at `*len`.
fn push_decimal(buf: &mut [u8], len: &mut usize, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        if *len < buf.len() {
            buf[*len] = d;
            *len += 1;
        }
    }
}

/// Builds the report line for a blocked system call.
fn report(syscall: i32) -> ([u8; 128], usize) {
    let mut buf = [0u8; 128];
    let mut len = 0;
    for part in [
        &b"kiln: hvt tender stopped: system call "[..],
        b"",
        b" is not allowed by its seccomp filter\n",
    ] {
        if part.is_empty() {
            push_decimal(&mut buf, &mut len, syscall as u64);
            continue;
        }
        buf[len..len + part.len()].copy_from_slice(part);
        len += part.len();
    }
    (buf, len)
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers;
    // for a seccomp SIGSYS, the int at SI_SYSCALL_OFFSET is `si_syscall`,
    // inside the 128-byte structure.
    let syscall = unsafe {
        info.cast::<u8>()
            .add(SI_SYSCALL_OFFSET)
            .cast::<i32>()
            .read_unaligned()
    };
    let (buf, len) = report(syscall);
    let _ = kiln_tender::sys::write_all(2, &buf[..len]);
    kiln_tender::sys::exit_now(kiln_abi::EXIT_CRASHED)
}

fn install_sigsys_handler() -> std::io::Result<()> {
    // SAFETY: an all-zero sigaction is a valid value (empty mask, no flags).
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigsys as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `action` is fully initialized and the handler only uses
    // async-signal-safe calls (write, exit_group); the old action is not
    // wanted (null).
    let rc = unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
    }

    #[test]
    fn report_names_the_system_call() {
        let (buf, len) = report(257);
        assert_eq!(
            std::str::from_utf8(&buf[..len]).unwrap(),
            "kiln: hvt tender stopped: system call 257 is not allowed by its seccomp filter\n"
        );
    }

    /// In a child process: install the filter, make a forbidden call, and
    /// check the report and the exit status.
    #[test]
    fn blocked_call_is_reported() {
        const CASE: &str = "KILN_HVT_SECCOMP_CHILD";
        if std::env::var_os(CASE).is_some() {
            let filter = build(1000, &[]).unwrap();
            install(&filter).unwrap();
            // Allowed: write to stderr.
            let _ = kiln_tender::sys::write_all(2, b"sandboxed\n");
            // Forbidden: getpid.
            // SAFETY: getpid has no arguments and no memory effects.
            unsafe { libc::getpid() };
            unreachable!("getpid returned under the filter");
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "seccomp::tests::blocked_call_is_reported",
                "--exact",
                "--nocapture",
            ])
            .env(CASE, "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(i32::from(kiln_abi::EXIT_CRASHED)),
            "{stderr}"
        );
        assert!(stderr.contains("sandboxed\n"), "{stderr}");
        let want = format!("system call {} is not allowed", libc::SYS_getpid);
        assert!(stderr.contains(&want), "{stderr}");
    }

    #[test]
    fn filter_compiles_with_and_without_disks() {
        assert!(!build(5, &[]).unwrap().is_empty());
        assert!(!build(5, &[7, 8]).unwrap().is_empty());
    }
}
