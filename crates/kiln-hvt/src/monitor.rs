//! The run loop: every VM exit becomes a hypercall, a reported fault, or
//! another clear [`Outcome`] — never a panic.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use kiln_abi::{HVT_PORT_BASE, PAGE_SIZE};
use kiln_tender::{dispatch, Control, Fault, Message, Outcome, Violation};
use kvm_ioctls::VcpuExit;
use vm_memory::{Bytes, GuestAddress};

use crate::fault::{self, ExceptionFrame, MAX_FRAME_WORDS};
use crate::instance::Instance;
use crate::layout::{RING0_STACK_PAGE, RING0_STACK_TOP};
use crate::memory::GuestView;
use crate::vcpu::SYSCALL_TRAP;
use crate::x86;

/// What the loop counted, for `-v`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// VM exits handled.
    pub exits: u64,
    /// Time from VM creation to the first exit.
    pub first_exit: Option<Duration>,
}

fn failure(args: std::fmt::Arguments<'_>) -> Outcome {
    let mut m = Message::new();
    let _ = m.write_fmt(args);
    Outcome::TenderFailure(m)
}

/// The hypercall number of an exit on `port`, for every port the I/O bitmap
/// can let through to the monitor besides the fault port: from
/// `HVT_PORT_BASE` to [`x86::IO_ALLOWED_LAST`]. Numbers without a hypercall
/// are left to `dispatch`, which reports them.
fn hypercall_number(port: u16) -> Option<u32> {
    (HVT_PORT_BASE..=x86::IO_ALLOWED_LAST)
        .contains(&port)
        .then(|| u32::from(port - HVT_PORT_BASE))
}

/// Runs the guest until it ends; returns how it ended.
pub fn run(inst: &mut Instance, stats: &mut Stats) -> Outcome {
    loop {
        let exit = inst.vcpu.run();
        stats.exits += 1;
        if stats.first_exit.is_none() {
            stats.first_exit = Some(inst.created.elapsed());
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
            let mut view = GuestView::new(&inst.mem, &inst.layout.mappings);
            match dispatch(&mut inst.host, &mut view, number, arg) {
                Control::Continue => continue,
                Control::Exit(outcome) => return outcome,
            }
        }
        if port == x86::FAULT_PORT && width == 1 {
            return exception(inst, word[0]);
        }
        return unexpected_port(inst, port, width, "output");
    }
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

/// `-v` report: setup steps, time to the first exit, exits and run time.
pub fn report(inst: &Instance, stats: &Stats, started: Instant) {
    let t = &inst.timings;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mut m = Message::new();
    let _ = writeln!(
        m,
        "kiln-hvt: setup: host+layout {:.0} µs, VM {:.0} µs, memory {:.0} µs, load {:.0} µs, vCPU {:.0} µs, seccomp {:.0} µs",
        us(t.host),
        us(t.vm),
        us(t.memory),
        us(t.load),
        us(t.vcpu),
        us(t.seccomp)
    );
    if let Some(first) = stats.first_exit {
        let _ = writeln!(
            m,
            "kiln-hvt: VM creation to first exit: {:.0} µs",
            us(first)
        );
    }
    let _ = writeln!(
        m,
        "kiln-hvt: {} exits; {:.3} ms from the start of setup, {:.3} ms from VM creation",
        stats.exits,
        started.elapsed().as_secs_f64() * 1e3,
        inst.created.elapsed().as_secs_f64() * 1e3,
    );
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
