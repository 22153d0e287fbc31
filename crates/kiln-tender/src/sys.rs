//! The few raw system calls the hypercall path makes. They are called after
//! the tender's seccomp filter is installed, so they must not allocate and
//! must use only the syscalls the filters allow: `write`, `clock_gettime`,
//! `clock_nanosleep`, `pread64`, `pwrite64`, `exit_group` (and, for network
//! devices, `read`, `write` and `ppoll` on their descriptors: see
//! [`crate::net`]).

use std::os::fd::RawFd;

/// Writes all of `buf` to `fd`, retrying on EINTR and short writes.
pub fn write_all(fd: RawFd, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is a valid, initialized slice for its whole length;
        // write(2) reads at most `buf.len()` bytes from it.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Reads a clock in nanoseconds.
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes it.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Sleeps until the monotonic clock reaches `deadline_ns`.
pub fn sleep_until(deadline_ns: u64) {
    let secs = (deadline_ns / 1_000_000_000).min(i64::MAX as u64) as libc::time_t;
    let ts = libc::timespec {
        tv_sec: secs,
        tv_nsec: (deadline_ns % 1_000_000_000) as libc::c_long,
    };
    loop {
        // SAFETY: `ts` is a valid timespec; a null remainder is allowed with
        // TIMER_ABSTIME.
        let rc = unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &ts,
                std::ptr::null_mut(),
            )
        };
        if rc != libc::EINTR {
            return;
        }
    }
}

/// Ends the process now with `status`, without running destructors or
/// atexit handlers (nothing of the guest's may run after this).
pub fn exit_now(status: u8) -> ! {
    // SAFETY: _exit never returns and takes no pointers.
    unsafe { libc::_exit(i32::from(status)) }
}
