//! The monitor's own sandbox, installed after setup and before the first
//! `KVM_RUN`, on every thread: the vCPU thread and, when the image has
//! network devices, the network I/O thread (`io`), each with its own
//! filter (filters are per thread; the I/O thread installs its own before
//! the vCPU thread installs its filter and enters the guest).
//!
//! From then on the process does only what the run loop, the hypercall
//! path and the ring I/O need. The vCPU thread's filter ([`build`]):
//!
//! | system call       | restricted to                         | used by |
//! |-------------------|---------------------------------------|---------|
//! | `ioctl`           | the vCPU fd; `KVM_RUN`, `KVM_GET_REGS`, `KVM_GET_SREGS` | the run loop; reading the exception frame and CR2 after a fault |
//! | `write`           | fds 1 and 2; the network backends' fds; the doorbell eventfd; the `--ready-fd` descriptor | CONSOLE_WRITE (stdout), the exit report and `-v` timings (stderr); NET_WRITE; handing a device to the I/O thread; READY's byte |
//! | `read`            | the network backends' fds of [`kiln_tender::Host::net_fds`]; the wake eventfd | NET_READ; POLL draining the I/O thread's wake-ups |
//! | `ppoll`           | no signal mask (argument 3 is null); only with network devices | POLL waiting on the backends or the wake eventfd |
//! | `futex`           | private wait and wake; only with network devices | the lock on the hand-over to the I/O thread |
//! | `pread64`, `pwrite64` | the block-device fds of [`kiln_tender::Host::fds`] | BLOCK_READ, BLOCK_WRITE |
//! | `clock_gettime`   | —                                     | CLOCK, POLL and timings (normally served by the vDSO; allowed for hosts whose clock source forces the system call) |
//! | `clock_nanosleep` | —                                     | POLL's sleep until its deadline |
//! | `exit_group`      | —                                     | `kiln_tender::finish` |
//! | `rt_sigreturn`    | —                                     | returning from a signal handler (SIGINT/SIGTERM with `-v`) |
//!
//! The I/O thread's filter ([`build_io`]) has no `ioctl` at all:
//!
//! | system call       | restricted to                         | used by |
//! |-------------------|---------------------------------------|---------|
//! | `read`            | the network backends' fds; the doorbell eventfd | frames in; kicks |
//! | `write`           | fd 2; the network backends' fds; the wake eventfd | reports (a device that went down, a ring violation); frames out; waking POLL |
//! | `ppoll`           | no signal mask                        | waiting for kicks and backends |
//! | `futex`           | private wait and wake                 | the hand-over lock |
//! | `exit_group`, `rt_sigreturn` | —                          | ending the instance; signal handlers |
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

/// The descriptors of an instance's network rings.
#[derive(Debug, Clone, Copy)]
pub struct RingFds {
    /// Kicks toward the I/O thread.
    pub doorbell: RawFd,
    /// Wake-ups toward the vCPU thread's POLL.
    pub wake: RawFd,
}

/// `futex` operations `std`'s locks use (private wait, private wake).
const FUTEX_OPS: [u64; 3] = [
    (libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG) as u64,
    (libc::FUTEX_WAIT_BITSET | libc::FUTEX_PRIVATE_FLAG) as u64,
    (libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG) as u64,
];

fn fd_values(fds: &[RawFd]) -> impl Iterator<Item = u64> + Clone + '_ {
    fds.iter().map(|&fd| fd as u64)
}

/// Builds the filter for a run loop on `vcpu_fd` whose hypercalls use the
/// block-device descriptors `disk_fds`, the network backends `net_fds` and
/// READY's descriptor `ready_fd`, with the eventfds of the ring I/O thread
/// when there is one.
pub fn build(
    vcpu_fd: RawFd,
    disk_fds: &[RawFd],
    net_fds: &[RawFd],
    ready_fd: Option<RawFd>,
    rings: Option<RingFds>,
) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    rules.insert(
        libc::SYS_ioctl,
        [KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS]
            .into_iter()
            .map(|req| SeccompRule::new(vec![eq(0, vcpu_fd as u64)?, eq(1, req)?]))
            .collect::<Result<_, _>>()?,
    );
    let mut writable: Vec<u64> = vec![1, 2];
    writable.extend(fd_values(net_fds));
    writable.extend(ready_fd.map(|fd| fd as u64));
    let mut readable: Vec<u64> = fd_values(net_fds).collect();
    if let Some(r) = rings {
        writable.push(r.doorbell as u64);
        readable.push(r.wake as u64);
    }
    rules.insert(libc::SYS_write, any_of(0, writable)?);
    if !readable.is_empty() {
        rules.insert(libc::SYS_read, any_of(0, readable)?);
    }
    if !net_fds.is_empty() || rings.is_some() {
        // ppoll's descriptors sit in memory, out of the filter's sight;
        // the signal mask is pinned to none.
        rules.insert(libc::SYS_ppoll, vec![SeccompRule::new(vec![eq(3, 0)?])?]);
    }
    if rings.is_some() {
        rules.insert(libc::SYS_futex, any_of(1, FUTEX_OPS)?);
    }
    let disks = fd_values(disk_fds);
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
    compile(rules)
}

/// Builds the filter of the network I/O thread, which moves frames between
/// the backends `net_fds` and the rings.
pub fn build_io(net_fds: &[RawFd], rings: RingFds) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut readable: Vec<u64> = fd_values(net_fds).collect();
    readable.push(rings.doorbell as u64);
    let mut writable: Vec<u64> = vec![2];
    writable.extend(fd_values(net_fds));
    writable.push(rings.wake as u64);
    rules.insert(libc::SYS_read, any_of(0, readable)?);
    rules.insert(libc::SYS_write, any_of(0, writable)?);
    rules.insert(libc::SYS_ppoll, vec![SeccompRule::new(vec![eq(3, 0)?])?]);
    rules.insert(libc::SYS_futex, any_of(1, FUTEX_OPS)?);
    for unconditional in [libc::SYS_exit_group, libc::SYS_rt_sigreturn] {
        rules.insert(unconditional, Vec::new());
    }
    compile(rules)
}

fn compile(rules: BTreeMap<i64, Vec<SeccompRule>>) -> Result<BpfProgram, SeccompError> {
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?;
    Ok(filter.try_into()?)
}

/// Installs the SIGSYS reporter for the whole process.
pub fn install_reporter() -> Result<(), SeccompError> {
    install_sigsys_handler().map_err(SeccompError::Handler)
}

/// Installs `filter` on the calling thread only.
pub fn install_thread(filter: &BpfProgram) -> Result<(), SeccompError> {
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

    /// Runs test `name` again in a child process with `case` set (where it
    /// confines itself and must be stopped by its filter); asserts that the
    /// child crashed the way a filter violation ends an instance and
    /// returns its stderr.
    fn crashed_in_child(name: &str, case: &str) -> String {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([&format!("seccomp::tests::{name}"), "--exact", "--nocapture"])
            .env(case, "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(i32::from(kiln_abi::EXIT_CRASHED)),
            "{stderr}"
        );
        stderr
    }

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
            let filter = build(1000, &[], &[], None, None).unwrap();
            install_reporter().unwrap();
            install_thread(&filter).unwrap();
            // Allowed: write to stderr.
            let _ = kiln_tender::sys::write_all(2, b"sandboxed\n");
            // Forbidden: getpid.
            // SAFETY: getpid has no arguments and no memory effects.
            unsafe { libc::getpid() };
            unreachable!("getpid returned under the filter");
        }
        let stderr = crashed_in_child("blocked_call_is_reported", CASE);
        assert!(stderr.contains("sandboxed\n"), "{stderr}");
        let want = format!("system call {} is not allowed", libc::SYS_getpid);
        assert!(stderr.contains(&want), "{stderr}");
    }

    /// In a child process: the I/O thread's filter admits eventfd I/O on
    /// its descriptors and ppoll, and nothing else (here: a read of
    /// another descriptor).
    #[test]
    fn io_thread_filter_admits_only_its_descriptors() {
        const CASE: &str = "KILN_HVT_SECCOMP_IO_CHILD";
        if std::env::var_os(CASE).is_some() {
            let doorbell = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let wake = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let other = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
            use std::os::fd::AsRawFd;
            let fds = RingFds {
                doorbell: doorbell.as_raw_fd(),
                wake: wake.as_raw_fd(),
            };
            let filter = build_io(&[], fds).unwrap();
            install_reporter().unwrap();
            std::thread::spawn(move || {
                install_thread(&filter).unwrap();
                wake.write(1).unwrap();
                // Nothing to read: EAGAIN, but the call is admitted.
                assert!(doorbell.read().is_err());
                let _ = kiln_tender::sys::write_all(2, b"io thread confined\n");
                // Forbidden: a descriptor that is not the thread's.
                let _ = other.read();
                unreachable!("read of another descriptor returned");
            })
            .join()
            .unwrap();
            unreachable!("the I/O thread returned");
        }
        let stderr = crashed_in_child("io_thread_filter_admits_only_its_descriptors", CASE);
        assert!(stderr.contains("io thread confined\n"), "{stderr}");
        let want = format!("system call {} is not allowed", libc::SYS_read);
        assert!(stderr.contains(&want), "{stderr}");
    }

    #[test]
    fn filter_compiles_with_and_without_disks() {
        assert!(!build(5, &[], &[], None, None).unwrap().is_empty());
        assert!(!build(5, &[7, 8], &[], None, None).unwrap().is_empty());
        let rings = RingFds {
            doorbell: 10,
            wake: 11,
        };
        assert!(!build(5, &[7, 8], &[9], Some(12), Some(rings))
            .unwrap()
            .is_empty());
        assert!(!build_io(&[9], rings).unwrap().is_empty());
    }
}
