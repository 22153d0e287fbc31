//! One instance: a `kiln run` child whose only network device is one end
//! of a datagram socketpair (the other end is a [`kiln_peer`] link owned
//! here), and whose READY hypercall arrives as a byte on a pipe.
//!
//! Descriptors kilnd holds per instance ([`crate::capacity::FDS_PER_INSTANCE`]):
//! its end of the link and the read end of one pipe that carries both the
//! tender's standard output and standard error; while it starts, also the
//! READY pipe, closed once READY arrives. The child is reaped by
//! [`crate::reaper`], without a pidfd.

use crate::capacity::StartSlot;
use crate::config::ServiceSpec;
use crate::logs::{unix_ms, LineSplitter, LogRing, Piece, Source};
use crate::metrics::ServiceMetrics;
use crate::reaper;
use kiln_peer::{LinkConfig, PeerHandle};
use kilnd_api::term::escape_controls;
use serde::Serialize;
use std::io::{self, IsTerminal};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::{watch, Notify};

/// The guest's address on its private link to kilnd.
pub const GUEST_CIDR: &str = "10.0.0.2/24";
/// kilnd's address on every link.
pub const HOST_IP: &str = "10.0.0.1";
/// Address space a tender may map beyond its guest memory (its own
/// binary, stacks, the I/O thread, KVM's mappings).
const ADDRESS_SPACE_HEADROOM: u64 = 512 << 20;
/// Descriptor numbers the child finds its link and ready pipe at.
const CHILD_NET_FD: RawFd = 3;
const CHILD_READY_FD: RawFd = 4;
/// How long the link may take to see that its instance has gone (and to
/// reset, and count, the connections it still had) before it is closed.
const LINK_END_WAIT: Duration = Duration::from_secs(2);
/// The prefix of the tender's own messages on standard error; lines with
/// it are tagged `err` in the log, others `out`. (Both streams share one
/// pipe; a guest that prints such a line only mislabels its own output.)
const TENDER_PREFIX: &str = "kiln: ";

/// Where an instance is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Spawned; its application has not said READY yet.
    Starting,
    /// Serving.
    Ready,
    /// kilnd asked it to stop.
    Stopping,
    /// Gone.
    Exited(Exit),
}

impl Phase {
    /// Short name for `kiln ps`.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Stopping => "stopping",
            Phase::Exited(e) if e.crashed => "crashed",
            Phase::Exited(_) => "exited",
        }
    }
}

/// How an instance ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exit {
    /// The instance.
    pub instance: u64,
    /// Its exit status, if it exited.
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Whether kilnd asked for it (idle, stop, reload, shutdown).
    pub requested: bool,
    /// Whether it failed: a status other than 0, or a signal, unasked.
    pub crashed: bool,
    /// In words.
    pub reason: String,
    /// When, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// How long it lived, in milliseconds.
    pub lived_ms: u64,
}

/// One running (or just ended) instance.
#[derive(Debug)]
pub struct Instance {
    /// Number, unique in this kilnd.
    pub id: u64,
    /// The service.
    pub service: String,
    /// The tender process.
    pub pid: u32,
    /// `--tender` it was started with.
    pub tender: &'static str,
    /// When it was spawned.
    pub started: Instant,
    /// The same, in milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// The host end of its network link.
    pub peer: PeerHandle,
    /// Connections routed to it that are not yet spliced.
    pub pending: AtomicUsize,
    /// Microseconds from spawn to READY (0 until then).
    pub ready_us: AtomicU64,
    phase: watch::Sender<Phase>,
    active: watch::Receiver<usize>,
    stop_reason: Mutex<Option<String>>,
    kill: Notify,
    killed: AtomicBool,
    /// Since when it has had no connection (None while it has some).
    pub idle_since: Mutex<Option<Instant>>,
    /// Client connections reset because kilnd stopped it (set when it has
    /// been reaped).
    pub reset_on_stop: AtomicU64,
    /// Its admission: counted as starting until READY, as an instance
    /// until reaped.
    slot: Mutex<Option<StartSlot>>,
}

impl Instance {
    /// Its phase now.
    pub fn phase(&self) -> Phase {
        self.phase.borrow().clone()
    }

    /// Whether new connections may go to it.
    pub fn usable(&self) -> bool {
        matches!(*self.phase.borrow(), Phase::Starting | Phase::Ready)
    }

    /// Connections routed to it: spliced and open, or waiting for it.
    pub fn load(&self) -> usize {
        *self.active.borrow() + self.pending.load(Relaxed)
    }

    /// Waits until it is ready; `Err` with the reason when it ends first
    /// or `timeout` passes.
    pub async fn ready(&self, timeout: Duration) -> Result<(), String> {
        let mut rx = self.phase.subscribe();
        let outcome = tokio::time::timeout(timeout, async {
            rx.wait_for(|p| !matches!(p, Phase::Starting))
                .await
                .map(|p| p.clone())
        })
        .await;
        match outcome {
            Err(_) => Err(format!(
                "instance {} was not ready after {} ms",
                self.id,
                timeout.as_millis()
            )),
            Ok(Err(_)) => Err(format!("instance {} is gone", self.id)),
            Ok(Ok(Phase::Ready)) => Ok(()),
            Ok(Ok(Phase::Exited(e))) => Err(format!("instance {} {}", self.id, e.reason)),
            Ok(Ok(_)) => Err(format!("instance {} is stopping", self.id)),
        }
    }

    /// Waits until it has exited.
    pub async fn exited(&self) -> Exit {
        let mut rx = self.phase.subscribe();
        let p = rx.wait_for(|p| matches!(p, Phase::Exited(_))).await;
        match p.as_deref() {
            Ok(Phase::Exited(e)) => e.clone(),
            _ => unreachable_exit(self.id),
        }
    }

    /// Asks it to stop (SIGKILL: an instance kilnd stops has no connection
    /// whose state could be lost, or is being torn down on purpose).
    pub fn stop(&self, reason: &str) {
        {
            let mut r = self.stop_reason.lock().unwrap_or_else(|e| e.into_inner());
            if r.is_none() {
                *r = Some(reason.to_string());
            }
        }
        self.phase.send_modify(|p| {
            if matches!(p, Phase::Starting | Phase::Ready) {
                *p = Phase::Stopping;
            }
        });
        self.killed.store(true, Relaxed);
        self.kill.notify_one();
    }

    /// Resident memory of the tender process (guest memory included), in
    /// bytes; 0 once it is gone.
    pub fn rss(&self) -> u64 {
        let Ok(s) = std::fs::read_to_string(format!("/proc/{}/statm", self.pid)) else {
            return 0;
        };
        s.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())
            .map(|pages| pages * 4096)
            .unwrap_or(0)
    }

    /// Connections currently spliced to it.
    pub fn active(&self) -> usize {
        *self.active.borrow()
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<StartSlot>> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn unreachable_exit(id: u64) -> Exit {
    Exit {
        instance: id,
        code: None,
        signal: None,
        requested: false,
        crashed: true,
        reason: "vanished".into(),
        unix_ms: unix_ms(),
        lived_ms: 0,
    }
}

/// Called once when an instance has exited and been reaped.
pub type OnExit = Box<dyn FnOnce(&Arc<Instance>, &Exit) + Send>;

/// What an instance reports to its service.
pub struct Hooks {
    /// The service's log ring.
    pub logs: Arc<LogRing>,
    /// The service's counters.
    pub metrics: Arc<ServiceMetrics>,
    /// Report starts, READY and exits on kilnd's standard error.
    pub events: bool,
    /// Echo instance output on kilnd's standard error.
    pub output: bool,
    /// Called with (before, now) whenever the number of client
    /// connections its link holds changes, last with now = 0.
    pub on_spliced: Box<dyn Fn(usize, usize) + Send + Sync>,
    /// Called once, after the instance has exited and been reaped.
    pub on_exit: OnExit,
}

/// Starts an instance of `spec` with the `kiln` binary at `kiln`; `slot`
/// is its admission (see [`crate::capacity::Usage::admit_instance`]).
pub fn spawn(
    spec: &ServiceSpec,
    id: u64,
    kiln: &Path,
    slot: StartSlot,
    hooks: Hooks,
) -> io::Result<Arc<Instance>> {
    let (ours, theirs) = seqpacket_pair()?;
    let (ready_rx, ready_tx) = pipe(libc::O_NONBLOCK)?;
    // One pipe for standard output and standard error: one descriptor
    // held per instance instead of two. Blocking on the tender's side,
    // like a terminal.
    let (out_rx, out_tx) = pipe(0)?;

    let tender = spec.tender.resolve().as_str();
    let mut cmd = std::process::Command::new(kiln);
    cmd.arg("run")
        .arg("--tender")
        .arg(tender)
        .arg("--mem")
        .arg(spec.memory.to_string())
        .arg("--net")
        .arg(format!("fd:{CHILD_NET_FD}"))
        .arg("--ready-fd")
        .arg(CHILD_READY_FD.to_string())
        .arg("--ip")
        .arg(GUEST_CIDR)
        .arg("--gateway")
        .arg(HOST_IP);
    for (k, v) in &spec.env {
        cmd.arg("-e").arg(format!("{k}={v}"));
    }
    cmd.arg(&spec.image);
    if !spec.args.is_empty() {
        cmd.arg("--").args(&spec.args);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out_tx.try_clone()?))
        .stderr(Stdio::from(out_tx));
    let net = theirs.as_raw_fd();
    let ready = ready_tx.as_raw_fd();
    let parent = std::process::id();
    let cpu = spec.cpu_limit.map(|d| d.as_secs().max(1));
    let address_space = spec.memory.saturating_add(ADDRESS_SPACE_HEADROOM);
    // SAFETY: the closure runs in the forked child before exec and makes
    // only async-signal-safe system calls on descriptors and values
    // captured by copy; it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || child_setup(net, ready, parent, cpu, address_space));
    }
    // std's spawn, not tokio's: tokio would hold a pidfd per child.
    let child = cmd.spawn()?;
    let pid = child.id();
    let exited = reaper::register(pid);
    // The child has its copies; ours go now.
    drop(cmd);
    drop(child);
    drop(theirs);
    drop(ready_tx);

    let link = LinkConfig {
        guest_port: spec.guest_port,
        ..LinkConfig::default()
    };
    let (peer, link_task) = match kiln_peer::spawn(ours, link) {
        Ok(p) => p,
        Err(e) => {
            reaper::kill(pid);
            return Err(e);
        }
    };
    let active = peer.active();
    let (phase, _) = watch::channel(Phase::Starting);
    let inst = Arc::new(Instance {
        id,
        service: spec.name.clone(),
        pid,
        tender,
        started: Instant::now(),
        started_unix_ms: unix_ms(),
        peer,
        pending: AtomicUsize::new(0),
        ready_us: AtomicU64::new(0),
        phase,
        active: active.clone(),
        stop_reason: Mutex::new(None),
        kill: Notify::new(),
        killed: AtomicBool::new(false),
        idle_since: Mutex::new(None),
        reset_on_stop: AtomicU64::new(0),
        slot: Mutex::new(Some(slot)),
    });
    hooks.metrics.starts.fetch_add(1, Relaxed);
    hooks.logs.push(
        id,
        Source::Kilnd,
        &format!("started: pid {pid}, tender {tender}"),
    );

    // Output of the instance.
    {
        let logs = hooks.logs.clone();
        let output = hooks.output;
        let name = spec.name.clone();
        match tokio::net::unix::pipe::Receiver::from_owned_fd(out_rx) {
            Ok(rx) => {
                tokio::spawn(copy_lines(rx, logs, id, output, name));
            }
            Err(e) => logs.push(id, Source::Kilnd, &format!("its output is lost: {e}")),
        }
    }

    // READY.
    {
        let inst = inst.clone();
        let logs = hooks.logs.clone();
        let metrics = hooks.metrics.clone();
        let events = hooks.events;
        tokio::spawn(async move {
            let Ok(mut rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(ready_rx) else {
                return;
            };
            let mut byte = [0u8; 1];
            if let Ok(1) = rx.read(&mut byte).await {
                // One byte is all it says: close the pipe now.
                drop(rx);
                let took = inst.started.elapsed();
                inst.ready_us.store(took.as_micros() as u64, Relaxed);
                let mut became_ready = false;
                inst.phase.send_modify(|p| {
                    if *p == Phase::Starting {
                        *p = Phase::Ready;
                        became_ready = true;
                    }
                });
                if let Some(slot) = inst.slot().as_ref() {
                    slot.started();
                }
                if became_ready {
                    metrics.cold_start_seconds.observe(took.as_secs_f64());
                    let msg = format!("ready after {:.2} ms", took.as_secs_f64() * 1e3);
                    if events {
                        eprintln!("kilnd: {}#{}: {msg}", inst.service, inst.id);
                    }
                    logs.push(inst.id, Source::Kilnd, &msg);
                }
            }
        });
    }

    // Exit.
    {
        let inst = inst.clone();
        let on_exit = hooks.on_exit;
        let on_spliced = hooks.on_spliced;
        let logs = hooks.logs;
        let metrics = hooks.metrics;
        tokio::spawn(async move {
            let mut exited = exited;
            let mut active = active;
            let mut link_task = link_task;
            let mut link_ended = false;
            let mut spliced = 0;
            let mut link_open = true;
            let mut failed_at_kill: Option<u64> = None;
            let failed = || inst.peer.counters().connections_failed.load(Relaxed);
            let status = loop {
                tokio::select! {
                    s = &mut exited => break s,
                    _ = inst.kill.notified(), if failed_at_kill.is_none() => {
                        // What the link counts as failed from here on are
                        // the connections this stop resets.
                        failed_at_kill = Some(failed());
                        reaper::kill(inst.pid);
                    }
                    r = active.changed(), if link_open => {
                        link_open = r.is_ok();
                        let now = *active.borrow_and_update();
                        on_spliced(spliced, now);
                        spliced = now;
                    }
                    // A link that fails while its instance runs (a panic in
                    // the network stack, reached by what the guest sent; a
                    // broken socket) leaves the instance unreachable: it is
                    // stopped, and why is kept.
                    end = &mut link_task, if !link_ended => {
                        link_ended = true;
                        if let Some(why) = link_failure(end) {
                            metrics.link_failures.fetch_add(1, Relaxed);
                            let msg = format!("its network link failed: {why}");
                            eprintln!("kilnd: {}#{}: {msg}", inst.service, inst.id);
                            logs.push(inst.id, Source::Kilnd, &msg);
                            inst.stop(&msg);
                        }
                    }
                }
            };
            // The instance is gone, and with it the other end of the link:
            // the link resets (and counts) what it still holds. Close it
            // only if it does not notice in time.
            if !link_ended
                && tokio::time::timeout(LINK_END_WAIT, &mut link_task)
                    .await
                    .is_err()
            {
                inst.peer.close();
                let _ = tokio::time::timeout(LINK_END_WAIT, &mut link_task).await;
            }
            on_spliced(spliced, 0);
            let reset = failed_at_kill.map_or(0, |at| failed().saturating_sub(at));
            inst.reset_on_stop.store(reset, Relaxed);
            // Its descriptors are closed: no longer counted.
            drop(inst.slot().take());
            // A stop() that raced with the exit still counts as asked for.
            let requested = inst.killed.load(Relaxed);
            let reason_asked = inst
                .stop_reason
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let status = status.map_err(|_| io::Error::other("the reaper is gone"));
            let mut exit = describe(&inst, status, requested, reason_asked);
            if reset > 0 {
                exit.reason.push_str(&format!(
                    "; {reset} open connection{} reset",
                    if reset == 1 { "" } else { "s" }
                ));
            }
            logs.push(inst.id, Source::Kilnd, &exit.reason);
            inst.phase.send_replace(Phase::Exited(exit.clone()));
            on_exit(&inst, &exit);
        });
    }
    Ok(inst)
}

/// Why a link's end is a failure that must stop its instance, or `None`
/// when it ended because kilnd closed it or the instance exited.
fn link_failure(end: Result<kiln_peer::LinkEnd, tokio::task::JoinError>) -> Option<String> {
    match end {
        Ok(kiln_peer::LinkEnd::Closed | kiln_peer::LinkEnd::PeerGone) => None,
        Ok(kiln_peer::LinkEnd::Io(e)) => Some(format!("socket error: {e}")),
        Ok(kiln_peer::LinkEnd::Panicked(msg)) => Some(format!("the network stack panicked: {msg}")),
        Err(e) if e.is_cancelled() => None,
        Err(e) => Some(format!("its task failed: {e}")),
    }
}

async fn copy_lines(
    mut stream: tokio::net::unix::pipe::Receiver,
    logs: Arc<LogRing>,
    id: u64,
    verbose: bool,
    service: String,
) {
    let mut split = LineSplitter::default();
    let mut buf = vec![0u8; 4096];
    // Guest text on a terminal is shown, not obeyed.
    let escape = verbose && std::io::stderr().is_terminal();
    let mut emit = |piece: Piece<'_>| {
        if verbose {
            let text = piece.text();
            if escape {
                eprintln!("{service}#{id}: {}", escape_controls(&text));
            } else {
                eprintln!("{service}#{id}: {text}");
            }
        }
        // One pipe carries both the console and the tender's own lines;
        // the tender's start with its prefix (a guest that prints one only
        // mislabels its own output: kilnd's lines come from the wait status).
        let source = match &piece {
            Piece::Line(b) | Piece::Cut(b) if b.starts_with(TENDER_PREFIX.as_bytes()) => {
                Source::Tender
            }
            _ => Source::Console,
        };
        logs.push_piece(id, source, piece);
    };
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => split.feed(&buf[..n], &mut emit),
        }
    }
    split.finish(&mut emit);
}

fn describe(
    inst: &Instance,
    status: io::Result<std::process::ExitStatus>,
    requested: bool,
    asked: Option<String>,
) -> Exit {
    use std::os::unix::process::ExitStatusExt as _;
    let lived_ms = inst.started.elapsed().as_millis() as u64;
    let (code, signal) = match &status {
        Ok(s) => (s.code(), s.signal()),
        Err(_) => (None, None),
    };
    let what = match (&status, code, signal) {
        (Err(e), _, _) => format!("could not be waited for: {e}"),
        (_, Some(0), _) => "exited with status 0".to_string(),
        (_, Some(134), _) => "aborted (status 134: the application panicked)".to_string(),
        (_, Some(139), _) => "crashed (status 139: a fault or a forbidden call)".to_string(),
        (_, Some(125), _) => "could not start (status 125: tender error)".to_string(),
        (_, Some(c), _) => format!("exited with status {c}"),
        (_, None, Some(libc::SIGXCPU)) => "was stopped at its CPU time limit".to_string(),
        (_, None, Some(s)) => format!("was killed by signal {s}"),
        (_, None, None) => "ended".to_string(),
    };
    let crashed = !requested && code != Some(0);
    let reason = match (requested, asked) {
        (true, Some(why)) => format!("stopped ({why}) after {:.1} s", lived_ms as f64 / 1e3),
        _ => what,
    };
    Exit {
        instance: inst.id,
        code,
        signal,
        requested,
        crashed,
        reason,
        unix_ms: unix_ms(),
        lived_ms,
    }
}

/// A connected AF_UNIX SOCK_SEQPACKET pair: one frame per message, like a
/// datagram socket, but a closed end is seen as end of file by the other.
/// Ours is nonblocking.
fn seqpacket_pair() -> io::Result<(UnixDatagram, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two descriptors for socketpair to fill.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socketpair succeeded; both descriptors are open and ours alone.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let ours = UnixDatagram::from(a);
    ours.set_nonblocking(true)?;
    Ok((ours, b))
}

/// `pipe2(O_CLOEXEC | flags)`: (read end, write end).
fn pipe(flags: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two descriptors for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and ours alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// In the child, before exec: the link at fd 3 and the ready pipe at fd 4
/// (both without CLOEXEC), death with kilnd, its own session (a terminal's
/// ^C goes to kilnd, which stops its instances itself), and its limits.
fn child_setup(
    net: RawFd,
    ready: RawFd,
    parent: u32,
    cpu: Option<u64>,
    address_space: u64,
) -> io::Result<()> {
    let check = |r: libc::c_int| {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    };
    // SAFETY: plain system calls on descriptors this process owns and on
    // values passed by copy; no memory is shared with the parent.
    unsafe {
        // Move both out of the way first so that dup2 cannot clobber one
        // with the other.
        let net_hi = check(libc::fcntl(net, libc::F_DUPFD_CLOEXEC, 10))?;
        let ready_hi = check(libc::fcntl(ready, libc::F_DUPFD_CLOEXEC, 10))?;
        check(libc::dup2(net_hi, CHILD_NET_FD))?;
        check(libc::dup2(ready_hi, CHILD_READY_FD))?;
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
        if libc::getppid() as u32 != parent {
            // kilnd died between fork and prctl.
            libc::_exit(125);
        }
        check(libc::setsid())?;
        if let Some(secs) = cpu {
            let lim = libc::rlimit {
                rlim_cur: secs,
                rlim_max: secs + 1,
            };
            check(libc::setrlimit(libc::RLIMIT_CPU, &lim))?;
        }
        let lim = libc::rlimit {
            rlim_cur: address_space,
            rlim_max: address_space,
        };
        check(libc::setrlimit(libc::RLIMIT_AS, &lim))?;
    }
    Ok(())
}
