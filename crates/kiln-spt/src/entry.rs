//! Crossing between tender and guest: the jump into the image and the
//! hypercall entry the image calls back through.
//!
//! The guest runs on the tender's only thread. `enter` saves the tender's
//! stack pointer (everything below it is free: `run` never returns), switches
//! to the guest's stack and jumps to the entry point. The guest calls
//! [`hypercall_address`] as `extern "C" fn(nr: u64, arg: u64)` on its own
//! stack; the entry switches back to the saved tender stack (so that the
//! tender's frames never eat into the guest's stack, and a guest with little
//! stack left still gets its hypercall served), clears the direction flag,
//! and calls [`dispatch`] on the instance published by [`publish`].
//!
//! All of this module's `unsafe`: the one global instance pointer, the
//! assembly, and the jump.

use std::arch::{asm, global_asm};
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use kiln_tender::{dispatch, finish, Control, Host, Message, Outcome};

use crate::fault;
use crate::memory::SptMemory;

/// What a hypercall needs: the instance's devices and its memory.
pub struct Instance {
    /// Console, clocks, devices.
    pub host: Host,
    /// The guest's memory, checked.
    pub mem: SptMemory,
}

/// The running instance; set once by [`publish`] just before the jump.
static INSTANCE: AtomicPtr<Instance> = AtomicPtr::new(std::ptr::null_mut());

/// Top of the stack hypercalls run on (16-byte aligned), saved by [`enter`].
/// Read by the assembly below as a plain 64-bit word.
static HYPERCALL_STACK: AtomicU64 = AtomicU64::new(0);

/// Bytes left between the tender's stack pointer at the jump and the top of
/// the hypercall stack (nothing lives there; a margin against mistakes).
const STACK_MARGIN: u64 = 256;

// The hypercall entry the guest calls (System V: rdi = nr, rsi = arg).
//
//   rax := guest rsp; rsp := tender stack; push guest rsp; realign to 16;
//   cld (the ABI the Rust code expects); call the Rust side; back to the
//   guest's stack; return to the guest. rdi and rsi pass through untouched;
//   the Rust side preserves the callee-saved registers.
global_asm!(
    ".pushsection .text.kiln_spt_hypercall_entry,\"ax\",@progbits",
    ".globl kiln_spt_hypercall_entry",
    ".hidden kiln_spt_hypercall_entry",
    ".type kiln_spt_hypercall_entry,@function",
    ".p2align 4",
    "kiln_spt_hypercall_entry:",
    "mov rax, rsp",
    "mov rsp, qword ptr [rip + {stack}]",
    "push rax",
    "sub rsp, 8",
    "cld",
    "call {handler}",
    "add rsp, 8",
    "pop rsp",
    "ret",
    ".size kiln_spt_hypercall_entry, . - kiln_spt_hypercall_entry",
    ".popsection",
    stack = sym HYPERCALL_STACK,
    handler = sym hypercall,
);

extern "C" {
    fn kiln_spt_hypercall_entry(nr: u64, arg: u64);
}

/// The address the guest finds in `BootInfo::hypercall`.
pub fn hypercall_address() -> u64 {
    kiln_spt_hypercall_entry as *const () as usize as u64
}

/// The Rust side of a hypercall, on the tender's stack.
extern "C" fn hypercall(nr: u64, arg: u64) {
    let instance = INSTANCE.load(Ordering::Acquire);
    if instance.is_null() {
        let mut msg = Message::new();
        let _ = std::fmt::Write::write_str(&mut msg, "spt: hypercall before the instance started");
        finish(&Outcome::TenderFailure(msg));
    }
    // SAFETY: `publish` stored a pointer from `Box::leak`, never freed. The
    // tender is single-threaded and this function is not reentrant: the
    // guest does not run until it returns, `dispatch` never calls guest
    // code, and the signal handlers do not touch the instance. So this is
    // the only reference to it while it lives.
    let instance = unsafe { &mut *instance };
    // Numbers beyond u32 must not alias valid ones after truncation.
    let nr = u32::try_from(nr).unwrap_or(u32::MAX);
    fault::set_hypercall(Some(nr));
    match dispatch(&mut instance.host, &mut instance.mem, nr, arg) {
        Control::Continue => fault::set_hypercall(None),
        Control::Exit(outcome) => finish(&outcome),
    }
}

/// Makes `instance` the one hypercalls act on. Called once, before
/// [`enter`].
pub fn publish(instance: Instance) {
    let ptr = Box::into_raw(Box::new(instance));
    // A previous instance can only be here if its start failed after
    // publishing and `unpublish` was skipped; no guest ever used it.
    let old = INSTANCE.swap(ptr, Ordering::AcqRel);
    drop_instance(old);
}

/// Takes back the published instance when the guest will not start after
/// all.
pub fn unpublish() {
    drop_instance(INSTANCE.swap(std::ptr::null_mut(), Ordering::AcqRel));
}

fn drop_instance(ptr: *mut Instance) {
    if !ptr.is_null() {
        // SAFETY: `ptr` came from `Box::into_raw` in `publish` and was just
        // swapped out of INSTANCE, so nothing else can reach it; no guest ran
        // with it (a running guest never lets `run` return), so no
        // hypercall holds a reference.
        drop(unsafe { Box::from_raw(ptr) });
    }
}

/// Jumps to the guest's `entry` with `rsp = stack_top - 8` (≡ 8 mod 16, as
/// after a call) and `rdi = boot_info`, direction flag clear, every other
/// general-purpose register zero. Never returns: the instance ends in a
/// hypercall or a signal handler.
///
/// # Safety
///
/// `entry` must be the entry point of an image mapped executable,
/// `stack_top` the 16-byte aligned top of a mapped, writable stack,
/// `boot_info` a mapped BootInfo block, and the instance must have been
/// published. Nothing on the current stack may be needed again except by
/// hypercalls: this function's caller never resumes.
pub unsafe fn enter(entry: u64, stack_top: u64, boot_info: u64) -> ! {
    // SAFETY: per the contract above. The hypercall stack is set below the
    // current stack pointer, in the part of the tender's stack that no live
    // frame uses, since no frame above this one ever resumes.
    unsafe {
        asm!(
            "lea rax, [rsp - {margin}]",
            "and rax, -16",
            "mov qword ptr [rip + {hstack}], rax",
            "mov rsp, r10",
            "xor eax, eax",
            "xor ebx, ebx",
            "xor ecx, ecx",
            "xor edx, edx",
            "xor esi, esi",
            "xor ebp, ebp",
            "xor r8d, r8d",
            "xor r9d, r9d",
            "xor r10d, r10d",
            "xor r12d, r12d",
            "xor r13d, r13d",
            "xor r14d, r14d",
            "xor r15d, r15d",
            "cld",
            "jmp r11",
            margin = const STACK_MARGIN,
            hstack = sym HYPERCALL_STACK,
            in("r10") stack_top - 8,
            in("r11") entry,
            in("rdi") boot_info,
            options(noreturn),
        )
    }
}
