//! The monitor's own sandbox, installed after setup and before the first
//! `KVM_RUN`, on every thread: the vCPU thread and, when the image has
//! network devices, the network I/O thread (`io`), each with its own
//! filter (filters are per thread; the I/O thread installs its own before
//! the vCPU thread installs its filter and enters the guest).
//!
//! From then on the process does only what the run loop, the hypercall
//! path and the ring I/O need. The vCPU thread's filter ([`build`]) is the
//! hypercall path's policy, the same spt confines itself with
//! ([`kiln_tender::Policy::hypercall_path`]: `write` to stdout, stderr, the
//! network backends with count ≤ what the device writes at once and the
//! `--ready-fd` descriptor with count 1; `read` and `ppoll` on the
//! backends; `pread64`/`pwrite64` on each disk with count 4096 or 512 and
//! offset ≤ capacity − count; the two clocks; POLL's absolute monotonic
//! sleep; `exit_group`; `rt_sigreturn`), plus what only the monitor needs:
//!
//! | system call       | restricted to                         | used by |
//! |-------------------|---------------------------------------|---------|
//! | `ioctl`           | the vCPU fd; `KVM_RUN`, `KVM_GET_REGS`, `KVM_GET_SREGS` | the run loop; reading the exception frame and CR2 after a fault |
//! | `write`           | the doorbell eventfd, count 8 (with rings) | handing a device to the I/O thread |
//! | `read`            | the wake eventfd, count 8 (with rings) | POLL draining the I/O thread's wake-ups |
//! | `ppoll`           | signal mask null (with rings)         | POLL waiting on the wake eventfd |
//! | `futex`           | private wait and wake (with rings)    | the lock on the hand-over to the I/O thread |
//!
//! The I/O thread's filter ([`build_io`]) has no `ioctl` and no disk at all:
//!
//! | system call       | restricted to                         | used by |
//! |-------------------|---------------------------------------|---------|
//! | `read`            | the network backends' fds; the doorbell eventfd (count 8) | frames in; kicks |
//! | `write`           | fd 2; the network backends' fds (count ≤ the device's largest write); the wake eventfd (count 8) | reports (a device that went down, a ring violation); frames out; waking POLL |
//! | `ppoll`           | signal mask null                      | waiting for kicks and backends |
//! | `futex`           | private wait and wake                 | the hand-over lock |
//! | `exit_group`, `rt_sigreturn` | —                          | ending the instance; signal handlers |
//!
//! Everything else — opening files, sockets, `mmap`, creating more KVM
//! objects, `ioctl` on the VM or `/dev/kvm` fds — raises `SIGSYS`; the
//! handler installed here reports the system call number on stderr and ends
//! the process with [`kiln_abi::EXIT_CRASHED`] (the same effect as killing
//! it, plus a diagnosis).

use std::os::fd::RawFd;

use kiln_tender::policy::{Cond, NetFd, PolicyError, Rule};
use kiln_tender::{HostFds, Policy};
use seccompiler::BpfProgram;

/// The sandbox could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The kernel refused the filter.
    #[error("cannot install the seccomp filter")]
    Filter(#[from] seccompiler::Error),
    /// The policy could not be compiled.
    #[error(transparent)]
    Policy(#[from] PolicyError),
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

/// Bytes of every eventfd read and write.
const EVENTFD_COUNT: u64 = 8;

/// An eventfd read or write on `fd`.
fn eventfd(fd: RawFd) -> Rule {
    Rule::fd(fd).eq64(2, "count", EVENTFD_COUNT)
}

/// `ppoll` without a signal mask (all 64 bits of the pointer null).
fn ppoll_without_mask() -> Rule {
    Rule::new(vec![Cond::eq64(3, "sigmask", 0)])
}

fn allow_futex(p: &mut Policy) {
    for op in FUTEX_OPS {
        p.allow(libc::SYS_futex, Rule::new(vec![Cond::eq32(1, "op", op)]));
    }
}

/// The vCPU thread's policy for a run loop on `vcpu_fd` whose hypercalls
/// use the descriptors `fds`, with the eventfds of the ring I/O thread when
/// there is one.
pub fn vcpu_policy(vcpu_fd: RawFd, fds: &HostFds, rings: Option<RingFds>) -> Policy {
    let mut p = Policy::hypercall_path(fds);
    for req in [KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS] {
        p.allow(libc::SYS_ioctl, Rule::fd(vcpu_fd).eq32(1, "request", req));
    }
    if let Some(r) = rings {
        p.allow(libc::SYS_write, eventfd(r.doorbell));
        p.allow(libc::SYS_read, eventfd(r.wake));
        p.allow(libc::SYS_ppoll, ppoll_without_mask());
        allow_futex(&mut p);
    }
    p
}

/// The network I/O thread's policy: it moves frames between the backends
/// `nets` and the rings.
pub fn io_policy(nets: &[NetFd], rings: RingFds) -> Policy {
    let mut p = Policy::new();
    for net in nets {
        p.allow(libc::SYS_read, Rule::fd(net.fd));
    }
    p.allow(libc::SYS_read, eventfd(rings.doorbell));
    p.allow(libc::SYS_write, Rule::fd(2));
    for net in nets {
        p.allow(
            libc::SYS_write,
            Rule::fd(net.fd).at_most(2, "count", net.largest_write),
        );
    }
    p.allow(libc::SYS_write, eventfd(rings.wake));
    p.allow(libc::SYS_ppoll, ppoll_without_mask());
    allow_futex(&mut p);
    p.allow_any(libc::SYS_exit_group);
    p.allow_any(libc::SYS_rt_sigreturn);
    p
}

/// Builds the vCPU thread's filter (see [`vcpu_policy`]).
pub fn build(
    vcpu_fd: RawFd,
    fds: &HostFds,
    rings: Option<RingFds>,
) -> Result<BpfProgram, SeccompError> {
    Ok(vcpu_policy(vcpu_fd, fds, rings).compile()?)
}

/// Builds the network I/O thread's filter (see [`io_policy`]).
pub fn build_io(nets: &[NetFd], rings: RingFds) -> Result<BpfProgram, SeccompError> {
    Ok(io_policy(nets, rings).compile()?)
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
            let filter = build(1000, &HostFds::default(), None).unwrap();
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

    /// The figures of docs/security.md: system calls each thread's filter
    /// allows, with and without devices (print them with `--
    /// --nocapture`).
    #[test]
    fn allowed_system_calls() {
        use kiln_tender::policy::Disk;
        let disk = Disk {
            fd: 7,
            capacity: 1 << 20,
        };
        let net = NetFd {
            fd: 9,
            largest_write: 1514,
        };
        let rings = RingFds {
            doorbell: 10,
            wake: 11,
        };
        let none = HostFds::default();
        let with_net = HostFds {
            nets: vec![net],
            ..HostFds::default()
        };
        let with_disk = HostFds {
            disks: vec![disk],
            ..HostFds::default()
        };
        let with_both = HostFds {
            disks: vec![disk],
            nets: vec![net],
            ready: Some(12),
        };
        for (what, policy, count) in [
            ("vCPU, no devices", vcpu_policy(5, &none, None), 6),
            (
                "vCPU, one block device",
                vcpu_policy(5, &with_disk, None),
                8,
            ),
            (
                "vCPU, one net device (rings)",
                vcpu_policy(5, &with_net, Some(rings)),
                9,
            ),
            (
                "vCPU, one of each (rings), --ready-fd",
                vcpu_policy(5, &with_both, Some(rings)),
                11,
            ),
            (
                "I/O thread, one net device",
                io_policy(&with_net.nets, rings),
                6,
            ),
        ] {
            println!("hvt {what}: {} system calls\n{policy}", policy.len());
            assert_eq!(policy.len(), count, "hvt {what}:\n{policy}");
            assert!(!policy.compile().unwrap().is_empty());
        }
        // The block-I/O pins are the very rules spt's filter has.
        let hypercalls = Policy::hypercall_path(&with_disk);
        let vcpu = vcpu_policy(5, &with_disk, None);
        for nr in [libc::SYS_pread64, libc::SYS_pwrite64] {
            let pick = |p: &Policy| p.calls().find(|(n, _)| *n == nr).map(|(_, a)| a.clone());
            assert_eq!(pick(&vcpu), pick(&hypercalls));
            assert!(pick(&vcpu).is_some());
        }
        // The I/O thread never touches a disk or the vCPU.
        let io = io_policy(&with_both.nets, rings);
        assert!(!io.admits(libc::SYS_pwrite64, &[7, 0, 512, 0, 0, 0]));
        assert!(!io.admits(libc::SYS_ioctl, &[5, KVM_RUN, 0, 0, 0, 0]));
    }
}
