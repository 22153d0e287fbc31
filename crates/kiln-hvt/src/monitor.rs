//! The run loop: every VM exit becomes a hypercall, a reported fault, or
//! another clear [`Outcome`] — never a panic.
//!
//! Most hypercalls go to [`kiln_tender::dispatch`]. With network devices
//! the loop handles two itself: NET_RINGS (checks the rings, takes the
//! device off the hypercall path and hands it to the I/O thread, see
//! [`crate::io`]) and POLL (which must also wake for frames the I/O thread
//! put in a receive ring).

use std::fmt::Write as _;
use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kiln_abi::{errno, nr, HVT_PORT_BASE, MAX_DEVICES, PAGE_SIZE};
use kiln_tender::{dispatch, Control, Fault, GuestMemory, Message, Outcome, Violation};
use kvm_ioctls::VcpuExit;
use vm_memory::{Bytes, GuestAddress};

use crate::fault::{self, ExceptionFrame, MAX_FRAME_WORDS};
use crate::instance::{Instance, Timings};
use crate::io::{self, Lent};
use crate::layout::{RING0_STACK_PAGE, RING0_STACK_TOP};
use crate::memory::GuestView;
use crate::rings::{self, RingPair, Rings};
use crate::vcpu::SYSCALL_TRAP;
use crate::x86;

/// What the loop counted, for `-v`. Atomics in a static, so that a signal
/// handler or the I/O thread can report them too.
#[derive(Debug)]
pub struct Stats {
    /// VM exits seen by the run loop (exits KVM handles in the kernel,
    /// such as ioeventfd doorbell kicks, are not among them).
    pub exits: AtomicU64,
    /// Exits per hypercall number.
    pub hypercalls: [AtomicU64; nr::COUNT as usize],
    /// Doorbell kicks that exited to the run loop (KVM did not catch them).
    pub doorbell_exits: AtomicU64,
    /// POLLs answered at once because a ring already had frames.
    pub poll_ring_ready: AtomicU64,
    /// Nanoseconds from VM creation to the first exit (0: none yet).
    pub first_exit_ns: AtomicU64,
}

/// The run loop's counters.
pub static STATS: Stats = Stats {
    exits: AtomicU64::new(0),
    hypercalls: [const { AtomicU64::new(0) }; nr::COUNT as usize],
    doorbell_exits: AtomicU64::new(0),
    poll_ring_ready: AtomicU64::new(0),
    first_exit_ns: AtomicU64::new(0),
};

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn failure(args: std::fmt::Arguments<'_>) -> Outcome {
    let mut m = Message::new();
    let _ = m.write_fmt(args);
    Outcome::TenderFailure(m)
}

/// The hypercall number of an exit on `port`, for every port the I/O bitmap
/// can let through to the monitor besides the fault and doorbell ports: from
/// `HVT_PORT_BASE` to [`x86::HYPERCALL_PORTS_LAST`]. Numbers without a
/// hypercall are left to `dispatch`, which reports them.
fn hypercall_number(port: u16) -> Option<u32> {
    (HVT_PORT_BASE..=x86::HYPERCALL_PORTS_LAST)
        .contains(&port)
        .then(|| u32::from(port - HVT_PORT_BASE))
}

/// Runs the guest until it ends; returns how it ended.
pub fn run(inst: &mut Instance) -> Outcome {
    loop {
        let exit = inst.vcpu.run();
        if STATS.exits.fetch_add(1, Ordering::Relaxed) == 0 {
            let ns = inst.created.elapsed().as_nanos().max(1);
            STATS
                .first_exit_ns
                .store(u64::try_from(ns).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
        let port_out = match exit {
            Ok(VcpuExit::IoOut(port, data)) => {
                // Copy out of the kvm_run page so `inst` is free again.
                let mut word = [0u8; 4];
                let width = data.len();
                word[..width.min(4)].copy_from_slice(&data[..width.min(4)]);
                Some((port, width, word))
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                let width = data.len();
                if hypercall_number(port).is_some() {
                    return guest_stopped(
                        inst,
                        "malformed hypercall",
                        "port input is not part of the ABI (a hypercall is `out dx, eax`)",
                    );
                }
                return unexpected_port(inst, port, width, "input");
            }
            Ok(VcpuExit::Hlt) => {
                return guest_stopped(inst, "halt", "the CPU halted outside a fault stub")
            }
            Ok(VcpuExit::Shutdown) => {
                return guest_stopped(
                    inst,
                    "triple fault",
                    "the CPU shut down (an exception while delivering an exception)",
                )
            }
            Ok(VcpuExit::MmioRead(addr, _)) | Ok(VcpuExit::MmioWrite(addr, _)) => {
                let rip = inst.vcpu.get_regs().map_or(0, |r| r.rip);
                return Outcome::Fault(Fault {
                    kind: "access outside guest memory",
                    addr: Some(addr),
                    rip,
                    detail: "no device is mapped there",
                    code: None,
                });
            }
            Ok(VcpuExit::InternalError) => {
                let suberror = internal_suberror(inst);
                let rip = inst.vcpu.get_regs().map_or(0, |r| r.rip);
                return failure(format_args!(
                    "KVM internal error (suberror {suberror}) at rip {rip:#x}"
                ));
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                return failure(format_args!(
                    "KVM could not enter the guest (hardware reason {reason:#x}, cpu {cpu})"
                ))
            }
            Ok(VcpuExit::Intr) => None,
            Ok(other) => return failure(format_args!("unexpected VM exit {other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => return failure(format_args!("KVM_RUN failed: {e}")),
        };
        let Some((port, width, word)) = port_out else {
            continue;
        };
        if let Some(number) = hypercall_number(port) {
            if width != 4 {
                return guest_stopped(
                    inst,
                    "malformed hypercall",
                    "a hypercall is a 4-byte `out dx, eax` to HVT_PORT_BASE + nr",
                );
            }
            let arg = u64::from(u32::from_le_bytes(word));
            if let Some(c) = STATS.hypercalls.get(number as usize) {
                bump(c);
            }
            let control = match number {
                nr::NET_RINGS if inst.rings.is_some() => net_rings(inst, arg),
                nr::POLL if inst.rings.is_some() => poll(inst, arg),
                _ => {
                    let mut view = GuestView::new(&inst.mem, &inst.layout.mappings);
                    dispatch(&mut inst.host, &mut view, number, arg)
                }
            };
            match control {
                Control::Continue => continue,
                Control::Exit(outcome) => return outcome,
            }
        }
        if port == x86::FAULT_PORT && width == 1 {
            return exception(inst, word[0]);
        }
        if (x86::DOORBELL_FIRST..=x86::DOORBELL_LAST).contains(&port) {
            if port != x86::DOORBELL_FIRST || width != 4 {
                return guest_stopped(
                    inst,
                    "malformed doorbell",
                    "a kick is a 4-byte `out dx, eax` to HVT_NET_DOORBELL_PORT",
                );
            }
            // KVM did not catch the kick in the kernel: pass it on.
            bump(&STATS.doorbell_exits);
            if let Some(r) = &inst.rings {
                r.shared.kick();
            }
            continue;
        }
        return unexpected_port(inst, port, width, "output");
    }
}

/// Reads the `N` words of a hypercall's argument struct at `arg`, which
/// must be writable (results are written back).
fn read_args<const N: usize>(view: &GuestView<'_>, arg: u64) -> Result<[u64; N], Violation> {
    let bad = Violation::BadRange {
        what: "argument struct",
        addr: arg,
        len: (N * 8) as u64,
        write: true,
    };
    let mut raw = [0u8; 64];
    let raw = raw.get_mut(..N * 8).ok_or(bad)?;
    if view.check(arg, raw.len() as u64, true).is_err() || view.read(arg, raw).is_err() {
        return Err(bad);
    }
    let mut words = [0u64; N];
    for (w, b) in words.iter_mut().zip(raw.chunks_exact(8)) {
        let mut le = [0u8; 8];
        le.copy_from_slice(b);
        *w = u64::from_le_bytes(le);
    }
    Ok(words)
}

fn tender_failure(what: &str) -> Outcome {
    failure(format_args!("{what}"))
}

/// NET_RINGS: checks the rings, takes the device off the hypercall path
/// and hands it to the I/O thread.
fn net_rings(inst: &mut Instance, arg: u64) -> Control {
    const NAME: &str = "NET_RINGS";
    let view = GuestView::new(&inst.mem, &inst.layout.mappings);
    let [device, rx, tx, _] = match read_args::<4>(&view, arg) {
        Ok(w) => w,
        Err(reason) => {
            return Control::Exit(Outcome::Violation {
                hypercall: NAME,
                reason,
            })
        }
    };
    let Some(r) = inst.rings.as_mut() else {
        return Control::Exit(tender_failure("NET_RINGS without ring support"));
    };
    let pair = RingPair { rx, tx };
    let ret = 'ret: {
        let Some(index) = usize::try_from(device)
            .ok()
            .filter(|&i| i < MAX_DEVICES && inst.net.mask & (1 << i) != 0)
        else {
            break 'ret errno::ENODEV;
        };
        if r.pairs[index].is_some() {
            break 'ret errno::EINVAL;
        }
        let mut others = [RingPair { rx: 0, tx: 0 }; MAX_DEVICES];
        let mut n = 0;
        for p in r.pairs.iter().flatten() {
            others[n] = *p;
            n += 1;
        }
        if let Err(reason) =
            rings::check_placement(device, pair, &inst.layout.mappings, &others[..n])
        {
            return Control::Exit(Outcome::Violation {
                hypercall: NAME,
                reason,
            });
        }
        let rings = Rings::new(device, pair, inst.net.frame_max[index]);
        if rings.reset(&inst.mem).is_err() {
            return Control::Exit(tender_failure("cannot initialize the network rings"));
        }
        let Some(dev) = inst.host.lend_net(device, r.shared.wake.as_raw_fd()) else {
            break 'ret errno::ENODEV;
        };
        if !r.shared.hand_over(Lent { rings, dev }) {
            return Control::Exit(tender_failure(
                "cannot hand a network device to the I/O thread",
            ));
        }
        r.pairs[index] = Some(pair);
        0
    };
    let mut view = GuestView::new(&inst.mem, &inst.layout.mappings);
    match view.write(arg + 24, &ret.to_le_bytes()) {
        Ok(()) => Control::Continue,
        Err(_) => Control::Exit(Outcome::Violation {
            hypercall: NAME,
            reason: Violation::BadRange {
                what: "argument struct",
                addr: arg,
                len: 32,
                write: true,
            },
        }),
    }
}

/// POLL with network devices: answers at once when a ring device has
/// frames waiting; otherwise sleeps in the tender's POLL, which also wakes
/// on the I/O thread's wake eventfd.
///
/// The `polling` flag, the fence and the ring check pair with the I/O
/// thread's "produce, fence, read `polling`, signal": either this check
/// sees the new frames, or the I/O thread sees `polling` and signals. The
/// wake eventfd is drained first, so that an old signal (frames consumed
/// since) does not end the sleep at once.
fn poll(inst: &mut Instance, arg: u64) -> Control {
    let Some(r) = inst
        .rings
        .as_ref()
        .filter(|r| r.pairs.iter().any(Option::is_some))
    else {
        let mut view = GuestView::new(&inst.mem, &inst.layout.mappings);
        return dispatch(&mut inst.host, &mut view, nr::POLL, arg);
    };
    let shared = &r.shared;
    shared.polling.store(true, Ordering::SeqCst);
    let _ = shared.wake.read();
    fence(Ordering::SeqCst);
    let mut ready = 0u64;
    for (i, pair) in r.pairs.iter().enumerate() {
        if let Some(p) = pair {
            let rx = match rings::rx_pending(&inst.mem, i as u64, p.rx) {
                Ok(pending) => pending,
                Err(e) => {
                    shared.polling.store(false, Ordering::Relaxed);
                    return Control::Exit(crate::io::fatal(e));
                }
            };
            if rx || rings::tx_room_awaited(&inst.mem, p.tx) {
                ready |= 1 << i;
            }
        }
    }
    let mut view = GuestView::new(&inst.mem, &inst.layout.mappings);
    let control = if ready != 0 && view.check(arg, 16, true).is_ok() {
        bump(&STATS.poll_ring_ready);
        match view.write(arg + 8, &ready.to_le_bytes()) {
            Ok(()) => Control::Continue,
            // Checked just above; let dispatch report it if it happens.
            Err(_) => dispatch(&mut inst.host, &mut view, nr::POLL, arg),
        }
    } else {
        dispatch(&mut inst.host, &mut view, nr::POLL, arg)
    };
    shared.polling.store(false, Ordering::Relaxed);
    control
}

/// A stop that is the guest's doing, reported with its RIP.
fn guest_stopped(inst: &Instance, kind: &'static str, detail: &'static str) -> Outcome {
    let rip = inst.vcpu.get_regs().map_or(0, |r| r.rip);
    Outcome::Fault(Fault {
        kind,
        addr: None,
        rip,
        detail,
        code: None,
    })
}

fn unexpected_port(inst: &Instance, port: u16, width: usize, dir: &str) -> Outcome {
    // The I/O bitmap admits only the hypercall ports, so this means the
    // hardware let through something the TSS should have stopped.
    let rip = inst.vcpu.get_regs().map_or(0, |r| r.rip);
    failure(format_args!(
        "unexpected {width}-byte port {dir} on port {port:#x} at rip {rip:#x}"
    ))
}

fn internal_suberror(inst: &mut Instance) -> u32 {
    let run = inst.vcpu.get_kvm_run();
    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, for which the
    // kernel fills the `internal` member of the union.
    unsafe { run.__bindgen_anon_1.internal.suberror }
}

/// Builds the outcome for exception `vector`, reported by a ring-0 stub.
fn exception(inst: &Instance, vector: u8) -> Outcome {
    let (regs, sregs) = match (inst.vcpu.get_regs(), inst.vcpu.get_sregs()) {
        (Ok(r), Ok(s)) => (r, s),
        (Err(e), _) | (_, Err(e)) => {
            return failure(format_args!(
                "exception {vector} ({}) but the vCPU state is unreadable: {e}",
                fault::exception_name(vector)
            ))
        }
    };
    if sregs.cs.selector != x86::KERNEL_CS {
        // Only the ring-0 stubs can reach the fault port.
        return failure(format_args!(
            "fault port written from selector {:#x} at rip {:#x}",
            sregs.cs.selector, regs.rip
        ));
    }
    let Some(frame) = read_frame(inst, vector, regs.rsp) else {
        return failure(format_args!(
            "exception {vector} ({}) with the ring-0 stack pointer at {:#x}",
            fault::exception_name(vector),
            regs.rsp
        ));
    };
    if frame.cpl() != 3 {
        // The image never runs at CPL0: this is a fault in a stub.
        return failure(format_args!(
            "exception {vector} ({}) in the tender's ring-0 code at rip {:#x}",
            fault::exception_name(vector),
            frame.rip
        ));
    }
    // A hypercall to a number beyond the bitmap's window: `out dx, eax`
    // with dx past the last hypercall port raises #GP. When dx is within
    // 256 ports of HVT_PORT_BASE, report it the way dispatch reports
    // unknown numbers (and spt does).
    if vector == GP
        && frame.error_code == Some(0)
        && instruction_at(inst, frame.rip).is_some_and(|b| b[0] == 0xef)
    {
        let number = (regs.rdx as u16).wrapping_sub(HVT_PORT_BASE);
        if number < 0x100 {
            let number = u32::from(number);
            return Outcome::Violation {
                hypercall: kiln_abi::nr::name(number),
                reason: Violation::UnknownNumber(number),
            };
        }
    }
    Outcome::Fault(describe(inst, vector, &frame, sregs.cr2, regs.rcx))
}

/// Reads the frame the CPU pushed at `rsp`, which must lie in the ring-0
/// stack page.
fn read_frame(inst: &Instance, vector: u8, rsp: u64) -> Option<ExceptionFrame> {
    let words_needed = if fault::has_error_code(vector) { 6 } else { 5 };
    if rsp < RING0_STACK_PAGE || rsp.saturating_add(words_needed * 8) > RING0_STACK_TOP {
        return None;
    }
    let mut bytes = [0u8; MAX_FRAME_WORDS * 8];
    let n = (words_needed * 8) as usize;
    inst.mem
        .read_slice(&mut bytes[..n], GuestAddress(rsp))
        .ok()?;
    let mut words = [0u64; MAX_FRAME_WORDS];
    for (w, b) in words.iter_mut().zip(bytes.chunks_exact(8)) {
        *w = u64::from_le_bytes(b.try_into().ok()?);
    }
    ExceptionFrame::decode(vector, &words[..words_needed as usize])
}

const BP: u8 = 3;
const UD: u8 = 6;
const GP: u8 = 13;
const PF: u8 = 14;

/// Whether `bytes` (at a faulting RIP) start a port I/O instruction.
fn is_port_io(bytes: [u8; 2]) -> bool {
    let op = if bytes[0] == 0x66 { bytes[1] } else { bytes[0] };
    matches!(op, 0xe4..=0xe7 | 0xec..=0xef | 0x6c..=0x6f)
}

/// Names the fault and, where it helps, says what the image did. `rcx` is
/// the guest's RCX (the ring-0 stubs leave it alone).
fn describe(inst: &Instance, vector: u8, frame: &ExceptionFrame, cr2: u64, rcx: u64) -> Fault {
    const SYSCALL: &str = "syscall instruction (an image has no system calls; EFER.SCE is off)";
    const INT_N: &str = "software interrupt (int n) through a ring-0 gate";
    let code = frame.error_code.unwrap_or(0);
    let at_rip = instruction_at(inst, frame.rip);
    // PVM runs `syscall` as a jump to LSTAR (see vcpu::SYSCALL_TRAP): report
    // it as the #UD the architecture specifies, at the `syscall` itself.
    if vector == PF
        && frame.rip == SYSCALL_TRAP
        && cr2 == SYSCALL_TRAP
        && rcx >= 2
        && instruction_at(inst, rcx - 2) == Some([0x0f, 0x05])
    {
        return Fault {
            kind: fault::exception_name(UD),
            addr: None,
            rip: rcx - 2,
            detail: SYSCALL,
            code: Some(u64::from(UD)),
        };
    }
    let detail = match vector {
        PF if inst.layout.guard_page().contains(&cr2) => "stack overflow into the guard page",
        PF if cr2 < PAGE_SIZE && code & 1 == 0 => {
            "null pointer dereference (page 0 is never mapped)"
        }
        PF => fault::describe_page_fault(code),
        GP if code != 0 => fault::describe_gp_error(code),
        GP => match at_rip {
            Some(b) if is_port_io(b) => "port I/O outside the hypercall ports",
            Some([0xf4, _]) => "hlt is privileged (the image runs at CPL3)",
            _ => "privileged instruction or non-canonical address",
        },
        // Hardware raises #GP for `int n` through a DPL-0 gate; PVM raises
        // #UD at the instruction, or #BP after an `int3`.
        UD => match at_rip {
            Some([0x0f, 0x05]) => SYSCALL,
            Some([0x0f, 0x0b]) => "ud2 (explicit trap)",
            Some([0xcd, _]) => INT_N,
            _ => "undefined or unsupported instruction",
        },
        BP => "int3 (breakpoint instruction)",
        _ => "",
    };
    Fault {
        kind: fault::exception_name(vector),
        addr: (vector == PF).then_some(cr2),
        rip: frame.rip,
        detail,
        code: Some(u64::from(vector)),
    }
}

/// The two bytes at guest address `rip`, if they are guest memory.
fn instruction_at(inst: &Instance, rip: u64) -> Option<[u8; 2]> {
    let mut b = [0u8; 2];
    inst.mem.read_slice(&mut b, GuestAddress(rip)).ok()?;
    Some(b)
}

/// What the `-v` report needs besides the counters.
#[derive(Debug, Clone, Copy)]
struct ReportInfo {
    verbose: bool,
    started: Instant,
    created: Instant,
    timings: Timings,
    doorbell_in_kernel: Option<bool>,
}

static REPORT: OnceLock<ReportInfo> = OnceLock::new();

/// Records what [`end`] reports with `-v`.
pub fn prepare_report(inst: &Instance, started: Instant, verbose: bool) {
    let _ = REPORT.set(ReportInfo {
        verbose,
        started,
        created: inst.created,
        timings: inst.timings,
        doorbell_in_kernel: inst.rings.as_ref().map(|r| r.doorbell_in_kernel),
    });
}

/// Ends the process with `outcome`, after the `-v` report when asked for.
/// Called by whichever thread ends the instance. Allocation-free.
pub fn end(outcome: &Outcome) -> ! {
    if REPORT.get().is_some_and(|r| r.verbose) {
        report();
    }
    kiln_tender::finish(outcome)
}

extern "C" fn on_stop_signal(sig: libc::c_int) {
    report();
    kiln_tender::sys::exit_now(128u8.wrapping_add(sig as u8))
}

/// With `-v`: SIGINT and SIGTERM print the report before the process ends
/// (a server is usually stopped that way). Installed before the sandbox.
pub fn report_on_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: an all-zero sigaction is valid (empty mask, no flags).
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_stop_signal as *const () as usize;
        // SAFETY: `action` is initialized; the handler only reads atomics
        // and a OnceLock, formats into a stack buffer, and calls write and
        // exit_group.
        unsafe { libc::sigaction(sig, &action, std::ptr::null_mut()) };
    }
}

/// `-v` report: setup steps, time to the first exit, exits (by hypercall)
/// and run time, and what the network I/O thread did.
fn report() {
    let Some(info) = REPORT.get() else {
        return;
    };
    let t = &info.timings;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut m = Message::new();
    let _ = writeln!(
        m,
        "kiln-hvt: setup: host+layout {:.0} µs, VM {:.0} µs, memory {:.0} µs, load {:.0} µs, vCPU {:.0} µs, net {:.0} µs, seccomp {:.0} µs",
        us(t.host),
        us(t.vm),
        us(t.memory),
        us(t.load),
        us(t.vcpu),
        us(t.net),
        us(t.seccomp)
    );
    let first = load(&STATS.first_exit_ns);
    if first != 0 {
        let _ = writeln!(
            m,
            "kiln-hvt: VM creation to first exit: {:.0} µs",
            first as f64 / 1e3
        );
    }
    let _ = write!(
        m,
        "kiln-hvt: {} exits; {:.3} ms from the start of setup, {:.3} ms from VM creation",
        load(&STATS.exits),
        info.started.elapsed().as_secs_f64() * 1e3,
        info.created.elapsed().as_secs_f64() * 1e3,
    );
    let mut sep = "\nkiln-hvt: exits by hypercall:";
    for (n, c) in STATS.hypercalls.iter().enumerate() {
        let count = load(c);
        if count != 0 {
            let _ = write!(m, "{sep} {} {count}", nr::name(n as u32));
            sep = ",";
        }
    }
    let doorbell = load(&STATS.doorbell_exits);
    if doorbell != 0 {
        let _ = write!(m, "{sep} doorbell {doorbell}");
    }
    let _ = writeln!(m);
    if let Some(in_kernel) = info.doorbell_in_kernel {
        let s = &io::STATS;
        let _ = writeln!(
            m,
            "kiln-hvt: rings: {} frames in, {} out ({} dropped), {} kicks (doorbell {}), {} POLL wake-ups, {} POLLs answered from the rings, rx ring full {} times",
            load(&s.rx_frames),
            load(&s.tx_frames),
            load(&s.tx_dropped),
            load(&s.kicks),
            if in_kernel { "in the kernel" } else { "through exits" },
            load(&s.wakes),
            load(&STATS.poll_ring_ready),
            load(&s.rx_full),
        );
    }
    let _ = kiln_tender::sys::write_all(2, m.as_str().as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_abi::nr;

    #[test]
    fn hypercall_ports() {
        let count = nr::COUNT as u16;
        assert_eq!(hypercall_number(HVT_PORT_BASE), Some(0));
        assert_eq!(hypercall_number(HVT_PORT_BASE + 1), Some(nr::CONSOLE_WRITE));
        assert_eq!(
            hypercall_number(HVT_PORT_BASE + count - 1),
            Some(nr::COUNT - 1)
        );
        // The three ports the last hypercall's 4-byte access also covers.
        assert_eq!(
            hypercall_number(HVT_PORT_BASE + count + 2),
            Some(nr::COUNT + 2)
        );
        assert_eq!(hypercall_number(HVT_PORT_BASE + count + 3), None);
        assert_eq!(hypercall_number(x86::FAULT_PORT), None);
    }
}
