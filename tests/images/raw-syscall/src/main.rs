//! Executes a raw `syscall` instruction (write(1, "x", 1)) instead of a
//! hypercall: spt's seccomp filter and hvt's CPU setup must both stop it.
#![no_std]
#![no_main]

use kiln_rt::println;

kiln_rt::entry!(main);

fn main() -> i32 {
    // This line must not contain the letter the syscall would write: the host
    // test checks that it never appears.
    println!("raw-syscall: issuing write(1, buf, 1) with the syscall instruction");
    let byte = b"x";
    let ret: i64;
    // SAFETY: Linux's write(2) only reads the one byte; if the tender let it
    // through, it returns normally, clobbering rcx and r11 as declared.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") 1i64 => ret,
            in("rdi") 1u64,
            in("rsi") byte.as_ptr(),
            in("rdx") 1u64,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    println!("raw-syscall: syscall returned {ret} (must not happen)");
    1
}
