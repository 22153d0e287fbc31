//! What a fatal signal means, in kiln's words.
//!
//! Pure and allocation-free: the signal handlers in [`crate::fault`] copy
//! the raw facts out of `siginfo_t` and the saved registers into a
//! [`Trap`], and [`classify`] turns them into the [`Fault`] that
//! [`kiln_tender::finish`] reports, worded as hvt words the same CPU
//! exceptions (the x86 vector comes from the kernel's saved `trapno`).

use kiln_tender::Fault;

use crate::layout::Span;

/// Raw facts of one fatal signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Trap {
    /// Signal number.
    pub signal: i32,
    /// `si_code`.
    pub code: i32,
    /// `si_addr` (faulting data address; SIGSYS: the call's address).
    pub addr: u64,
    /// Saved instruction pointer.
    pub rip: u64,
    /// Saved page-fault error code (`REG_ERR`).
    pub err: u64,
    /// Saved exception vector (`REG_TRAPNO`).
    pub trapno: u64,
    /// SIGSYS: the system call number.
    pub syscall: i32,
    /// SIGSYS: the audit architecture of the call.
    pub arch: u32,
}

/// x86 exception vectors, as the kernel saves them in `trapno`.
mod vector {
    pub const DIVIDE: u64 = 0;
    pub const DEBUG: u64 = 1;
    pub const BREAKPOINT: u64 = 3;
    pub const INVALID_OPCODE: u64 = 6;
    pub const GENERAL_PROTECTION: u64 = 13;
    pub const PAGE_FAULT: u64 = 14;
    pub const X87: u64 = 16;
    pub const ALIGNMENT: u64 = 17;
    pub const SIMD: u64 = 19;
}

/// `si_code` values (asm-generic/siginfo.h) that the libc crate lacks.
mod si {
    #[cfg(test)]
    pub const SEGV_MAPERR: i32 = 1;
    pub const SEGV_ACCERR: i32 = 2;
    pub const FPE_INTDIV: i32 = 1;
    pub const FPE_INTOVF: i32 = 2;
    #[cfg(test)]
    pub const FPE_FLTINV: i32 = 7;
    #[cfg(test)]
    pub const ILL_ILLOPN: i32 = 2;
}

/// Page-fault error code bits.
const PF_WRITE: u64 = 1 << 1;
const PF_FETCH: u64 = 1 << 4;

/// `AUDIT_ARCH_X86_64`.
pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// `AUDIT_ARCH_I386` (`int 0x80` from a 64-bit process).
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
/// Bit that marks an x32 system call number.
const X32_SYSCALL_BIT: i32 = 0x4000_0000;

/// Turns a fatal signal into the fault kiln reports. `guard` is the page
/// below the guest's stack: a page fault there is a stack overflow.
pub fn classify(t: &Trap, guard: Span) -> Fault {
    let mut f = Fault {
        kind: "fatal signal",
        addr: None,
        rip: t.rip,
        detail: signal_name(t.signal),
        code: Some(t.signal as u64),
    };
    if t.code <= 0 {
        // SI_USER, SI_QUEUE, SI_TKILL...: sent, not raised by an instruction.
        f.kind = "signal from another process";
        return f;
    }
    match t.signal {
        libc::SIGSEGV if t.trapno == vector::PAGE_FAULT => {
            f.kind = "page fault";
            f.addr = Some(t.addr);
            f.code = Some(vector::PAGE_FAULT);
            f.detail = if guard.contains(t.addr) {
                "stack overflow (hit the guard page below the stack)"
            } else {
                page_fault_detail(t.err, t.code == si::SEGV_ACCERR)
            };
        }
        libc::SIGSEGV if t.trapno == vector::GENERAL_PROTECTION => {
            f.kind = "general protection fault";
            f.code = Some(vector::GENERAL_PROTECTION);
            f.detail = "a privileged instruction or a non-canonical address";
        }
        libc::SIGSEGV => {
            f.kind = "segmentation fault";
            f.addr = Some(t.addr);
            f.code = Some(t.trapno);
            f.detail = "";
        }
        libc::SIGBUS if t.trapno == vector::ALIGNMENT => {
            f.kind = "alignment check";
            f.addr = Some(t.addr);
            f.code = Some(vector::ALIGNMENT);
            f.detail = "";
        }
        libc::SIGBUS => {
            f.kind = "bus error";
            f.addr = Some(t.addr);
            f.detail = "";
        }
        libc::SIGILL => {
            f.kind = "invalid opcode";
            f.code = Some(vector::INVALID_OPCODE);
            f.detail = "";
        }
        libc::SIGFPE => {
            (f.kind, f.code) = match t.trapno {
                vector::X87 => ("x87 floating-point exception", Some(vector::X87)),
                vector::SIMD => ("SIMD floating-point exception", Some(vector::SIMD)),
                _ => ("divide error", Some(vector::DIVIDE)),
            };
            f.detail = if t.code == si::FPE_INTOVF {
                "quotient overflow"
            } else if t.code == si::FPE_INTDIV {
                "division by zero"
            } else {
                ""
            };
        }
        libc::SIGTRAP => {
            (f.kind, f.code) = if t.trapno == vector::DEBUG {
                ("debug exception", Some(vector::DEBUG))
            } else {
                ("breakpoint", Some(vector::BREAKPOINT))
            };
            f.detail = "";
        }
        libc::SIGSYS => {
            f.kind = "forbidden system call";
            f.code = Some(t.syscall as u32 as u64);
            f.detail = if t.arch == AUDIT_ARCH_I386 {
                "32-bit system call (int 0x80)"
            } else if t.arch != AUDIT_ARCH_X86_64 {
                "system call of a foreign architecture"
            } else if t.syscall & X32_SYSCALL_BIT != 0 {
                "x32 system call"
            } else {
                syscall_name(i64::from(t.syscall)).unwrap_or("unknown system call")
            };
        }
        _ => {}
    }
    f
}

fn page_fault_detail(err: u64, protected: bool) -> &'static str {
    match (err & PF_FETCH != 0, err & PF_WRITE != 0, protected) {
        (true, _, true) => "instruction fetch from non-executable memory",
        (true, _, false) => "instruction fetch from unmapped memory",
        (false, true, true) => "write to read-only memory",
        (false, true, false) => "write to unmapped memory",
        (false, false, true) => "read of inaccessible memory",
        (false, false, false) => "read of unmapped memory",
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGSYS => "SIGSYS",
        _ => "",
    }
}

macro_rules! syscall_table {
    ($($name:ident)*) => {
        &[$((libc::$name, {
            let s = stringify!($name);
            // "SYS_getpid" -> "getpid"
            let (_, rest) = s.as_bytes().split_at(4);
            match core::str::from_utf8(rest) { Ok(n) => n, Err(_) => s }
        })),*]
    };
}

/// Names of the system calls a guest is likely to try.
const SYSCALLS: &[(i64, &str)] = syscall_table!(
    SYS_read SYS_write SYS_open SYS_close SYS_stat SYS_fstat SYS_lstat SYS_poll SYS_lseek
    SYS_mmap SYS_mprotect SYS_munmap SYS_brk SYS_rt_sigaction SYS_rt_sigprocmask
    SYS_rt_sigreturn SYS_ioctl SYS_pread64 SYS_pwrite64 SYS_readv SYS_writev SYS_access
    SYS_pipe SYS_select SYS_sched_yield SYS_mremap SYS_msync SYS_madvise SYS_dup SYS_dup2
    SYS_pause SYS_nanosleep SYS_getpid SYS_sendfile SYS_socket SYS_connect SYS_accept
    SYS_sendto SYS_recvfrom SYS_sendmsg SYS_recvmsg SYS_shutdown SYS_bind SYS_listen
    SYS_clone SYS_fork SYS_vfork SYS_execve SYS_exit SYS_wait4 SYS_kill SYS_uname
    SYS_fcntl SYS_flock SYS_fsync SYS_truncate SYS_ftruncate SYS_getdents SYS_getcwd
    SYS_chdir SYS_rename SYS_mkdir SYS_rmdir SYS_creat SYS_link SYS_unlink SYS_symlink
    SYS_readlink SYS_chmod SYS_chown SYS_umask SYS_gettimeofday SYS_getrlimit
    SYS_getrusage SYS_sysinfo SYS_times SYS_ptrace SYS_getuid SYS_getgid SYS_setuid
    SYS_setgid SYS_geteuid SYS_getegid SYS_getppid SYS_sigaltstack SYS_personality
    SYS_prctl SYS_arch_prctl SYS_mount SYS_reboot SYS_gettid SYS_tkill SYS_time SYS_futex
    SYS_getdents64 SYS_set_tid_address SYS_clock_gettime SYS_clock_nanosleep
    SYS_exit_group SYS_epoll_wait SYS_tgkill SYS_openat SYS_newfstatat SYS_ppoll
    SYS_epoll_pwait SYS_eventfd2 SYS_epoll_create1 SYS_pipe2 SYS_prlimit64 SYS_getrandom
    SYS_memfd_create SYS_bpf SYS_execveat SYS_statx SYS_rseq SYS_io_uring_setup
    SYS_io_uring_enter SYS_pidfd_open SYS_clone3 SYS_seccomp SYS_process_vm_readv
    SYS_process_vm_writev SYS_pkey_mprotect SYS_userfaultfd SYS_perf_event_open
);

/// The name of x86-64 system call `nr`, if it is one the table knows.
pub fn syscall_name(nr: i64) -> Option<&'static str> {
    SYSCALLS
        .iter()
        .find(|(n, _)| *n == nr)
        .map(|(_, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_tender::Outcome;

    const GUARD: Span = Span {
        start: 0x200_0000,
        end: 0x200_1000,
    };

    fn segv(addr: u64, err: u64, accerr: bool) -> Trap {
        Trap {
            signal: libc::SIGSEGV,
            code: if accerr {
                si::SEGV_ACCERR
            } else {
                si::SEGV_MAPERR
            },
            addr,
            rip: 0x10_0123,
            err,
            trapno: 14,
            ..Trap::default()
        }
    }

    #[test]
    fn null_read_is_a_page_fault_like_on_hvt() {
        let f = classify(&segv(0, 0x4, false), GUARD);
        assert_eq!(f.kind, "page fault");
        assert_eq!(f.addr, Some(0));
        assert_eq!(f.code, Some(14));
        assert_eq!(f.rip, 0x10_0123);
        assert_eq!(f.detail, "read of unmapped memory");
        assert_eq!(
            Outcome::Fault(f).to_string(),
            "instance crashed: page fault (14) at address 0x0, rip 0x100123: read of unmapped memory"
        );
    }

    #[test]
    fn page_fault_details() {
        let d = |err, acc| classify(&segv(0x10_0000, err, acc), GUARD).detail;
        assert_eq!(d(0x7, true), "write to read-only memory");
        assert_eq!(d(0x6, false), "write to unmapped memory");
        assert_eq!(
            d(0x15, true),
            "instruction fetch from non-executable memory"
        );
        assert_eq!(d(0x14, false), "instruction fetch from unmapped memory");
        assert_eq!(d(0x5, true), "read of inaccessible memory");
    }

    #[test]
    fn guard_page_hits_are_stack_overflows() {
        for addr in [GUARD.start, GUARD.end - 8] {
            let f = classify(&segv(addr, 0x6, true), GUARD);
            assert!(f.detail.starts_with("stack overflow"), "{}", f.detail);
        }
        let f = classify(&segv(GUARD.end, 0x6, false), GUARD);
        assert!(!f.detail.starts_with("stack overflow"));
    }

    #[test]
    fn other_exceptions() {
        let t = |signal, code, trapno| Trap {
            signal,
            code,
            trapno,
            rip: 0x10_0000,
            ..Trap::default()
        };
        let f = classify(&t(libc::SIGSEGV, 0x80, 13), GUARD);
        assert_eq!(
            (f.kind, f.addr, f.code),
            ("general protection fault", None, Some(13))
        );
        let f = classify(&t(libc::SIGILL, si::ILL_ILLOPN, 6), GUARD);
        assert_eq!((f.kind, f.code), ("invalid opcode", Some(6)));
        let f = classify(&t(libc::SIGFPE, si::FPE_INTDIV, 0), GUARD);
        assert_eq!((f.kind, f.detail), ("divide error", "division by zero"));
        let f = classify(&t(libc::SIGFPE, si::FPE_FLTINV, 19), GUARD);
        assert_eq!(f.kind, "SIMD floating-point exception");
        let f = classify(&t(libc::SIGTRAP, 0x80, 3), GUARD);
        assert_eq!((f.kind, f.code), ("breakpoint", Some(3)));
        let f = classify(&t(libc::SIGBUS, 2, 14), GUARD);
        assert_eq!(f.kind, "bus error");
        // kill -SEGV from outside: si_code SI_USER (0).
        let f = classify(&t(libc::SIGSEGV, 0, 0), GUARD);
        assert_eq!(
            (f.kind, f.detail),
            ("signal from another process", "SIGSEGV")
        );
    }

    #[test]
    fn forbidden_system_calls_are_named() {
        let sys = |syscall, arch| Trap {
            signal: libc::SIGSYS,
            code: 1, // SYS_SECCOMP
            rip: 0x10_0042,
            syscall,
            arch,
            ..Trap::default()
        };
        let f = classify(&sys(libc::SYS_getpid as i32, AUDIT_ARCH_X86_64), GUARD);
        assert_eq!(
            (f.kind, f.code, f.detail),
            ("forbidden system call", Some(39), "getpid")
        );
        assert_eq!(
            Outcome::Fault(f).to_string(),
            "instance crashed: forbidden system call (39), rip 0x100042: getpid"
        );
        let f = classify(&sys(4000, AUDIT_ARCH_X86_64), GUARD);
        assert_eq!(f.detail, "unknown system call");
        let f = classify(&sys(1 | X32_SYSCALL_BIT, AUDIT_ARCH_X86_64), GUARD);
        assert_eq!(f.detail, "x32 system call");
        let f = classify(&sys(20, AUDIT_ARCH_I386), GUARD);
        assert_eq!(f.detail, "32-bit system call (int 0x80)");
    }

    #[test]
    fn syscall_names_strip_the_prefix() {
        assert_eq!(syscall_name(libc::SYS_write), Some("write"));
        assert_eq!(syscall_name(libc::SYS_mprotect), Some("mprotect"));
        assert_eq!(syscall_name(-1), None);
    }
}
