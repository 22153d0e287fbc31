//! Spawning a child and collecting its wall time, status and peak RSS.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One finished run.
pub struct RunResult {
    pub status: i32,
    pub wall: Duration,
    pub max_rss_kib: u64,
    pub stderr: String,
}

/// Runs `argv` with stdout discarded; times spawn to reaped exit.
pub fn run_once(argv: &[&str]) -> std::io::Result<RunResult> {
    let start = Instant::now();
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `status` and `usage` are valid for writes; `pid` is our child,
    // not yet reaped (Child::wait is never called for it).
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let exit = std::process::ExitStatus::from_raw(status);
    Ok(RunResult {
        status: exit.code().unwrap_or(128 + exit.signal().unwrap_or(0)),
        wall,
        max_rss_kib: usage.ru_maxrss as u64,
        stderr,
    })
}
