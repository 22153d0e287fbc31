//! Reaps kilnd's children without a descriptor per child.
//!
//! tokio's `Child::wait` holds a pidfd per child on Linux: thousands of
//! idle instances would hold thousands of descriptors only to learn when
//! they exit. Instead one task waits for SIGCHLD and reaps the children
//! registered here, handing each exit status to whoever waits for it.
//!
//! Only registered children are reaped: `std::process::Command::spawn`
//! reaps a child itself when its exec fails, and must not find it gone. A
//! child that exits before it is registered stays a zombie until
//! [`register`] looks at it.

use std::collections::HashMap;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Mutex, MutexGuard, OnceLock};
use tokio::sync::oneshot;

struct Reaper {
    /// Children not yet reaped, with whoever waits for their status.
    waiting: Mutex<HashMap<u32, oneshot::Sender<ExitStatus>>>,
}

fn reaper() -> &'static Reaper {
    static R: OnceLock<Reaper> = OnceLock::new();
    R.get_or_init(|| {
        // The SIGCHLD task, started once, on the runtime of the first
        // registration.
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
            .map_err(|e| eprintln!("kilnd: cannot watch SIGCHLD ({e}); polling for exits"))
            .ok();
        tokio::spawn(async move {
            loop {
                match &mut sigchld {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                }
                reap_all();
            }
        });
        Reaper {
            waiting: Mutex::new(HashMap::new()),
        }
    })
}

fn waiting() -> MutexGuard<'static, HashMap<u32, oneshot::Sender<ExitStatus>>> {
    reaper().waiting.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts watching SIGCHLD (on the current tokio runtime) before the
/// first child is spawned.
pub fn start() {
    reaper();
}

/// Registers a child just spawned; the receiver gets its exit status once
/// it has been reaped. Must run on a tokio runtime with signals enabled.
pub fn register(pid: u32) -> oneshot::Receiver<ExitStatus> {
    let (tx, rx) = oneshot::channel();
    let mut w = waiting();
    match try_reap(pid) {
        // It exited before it was registered (its SIGCHLD found nothing
        // to reap).
        Some(status) => {
            let _ = tx.send(status);
        }
        None => {
            w.insert(pid, tx);
        }
    }
    rx
}

/// Sends SIGKILL to a registered child that has not been reaped yet
/// (a reaped pid may already belong to another process).
pub fn kill(pid: u32) {
    let w = waiting();
    if w.contains_key(&pid) {
        // SAFETY: kill has no memory effects; the pid is our unreaped
        // child (the lock keeps it from being reaped meanwhile), so it
        // cannot name another process.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
}

/// `waitpid(pid, WNOHANG)`: the status if it has exited.
fn try_reap(pid: u32) -> Option<ExitStatus> {
    let mut status = 0;
    // SAFETY: waitpid writes the status into a valid int.
    let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
    (r == pid as libc::pid_t).then(|| ExitStatus::from_raw(status))
}

/// Which child has exited, without reaping it (`waitid(WNOWAIT)`).
fn exited_child() -> io::Result<Option<u32>> {
    // SAFETY: siginfo_t is plain data; all zeroes is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid writes into the valid siginfo_t it is given.
    let r = unsafe {
        libc::waitid(
            libc::P_ALL,
            0,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: waitid filled `info` for a CLD_* event (or left it zeroed,
    // which reads as pid 0: nothing has exited).
    let pid = unsafe { info.si_pid() };
    Ok((pid > 0).then_some(pid as u32))
}

/// Reaps every registered child that has exited.
fn reap_all() {
    let mut w = waiting();
    loop {
        match exited_child() {
            Ok(Some(pid)) if w.contains_key(&pid) => match try_reap(pid) {
                Some(status) => {
                    if let Some(tx) = w.remove(&pid) {
                        let _ = tx.send(status);
                    }
                }
                // Named as exited but not reapable: do not spin on it.
                None => return,
            },
            // A child not registered (yet): one being spawned, whose
            // failed exec std reaps itself, or one about to be
            // registered. waitid would keep naming it, so look at every
            // registered child by pid instead.
            Ok(Some(_)) => {
                let done: Vec<(u32, ExitStatus)> = w
                    .keys()
                    .filter_map(|&pid| try_reap(pid).map(|s| (pid, s)))
                    .collect();
                for (pid, status) in done {
                    if let Some(tx) = w.remove(&pid) {
                        let _ = tx.send(status);
                    }
                }
                return;
            }
            Ok(None) => return,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(_) => return,
        }
    }
}
