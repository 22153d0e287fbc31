//! Hands bad arguments to hypercalls; the tender must end the instance with
//! a violation naming the hypercall (exit status 139) and never crash.
//!
//! `argv[1]` picks the case:
//! * (none) or `console`: CONSOLE_WRITE with buf = 0xdead_beef_0000, len 16;
//! * `huge-len`: CONSOLE_WRITE of a valid buffer with len = u64::MAX;
//! * `tender-memory`: CONSOLE_WRITE with buf = 0x1000 (the tender's pages);
//! * `unknown`: hypercall number 77;
//! * `bad-struct`: CLOCK with the argument struct itself at 0xfff0_0000,
//!   beyond guest memory;
//! * `ready`: READY with its argument struct at 0xfff0_0000;
//! * `ready-readonly`: READY with its argument struct in read-only data
//!   (the tender writes `ret` back, so it must be writable);
//! * `ready-reserved`: READY with a nonzero reserved word, which is not a
//!   violation: it answers EINVAL, reports nothing, and the image exits 0
//!   after printing the answer.
#![no_std]
#![no_main]

use kiln_rt::abi::{self, nr, ConsoleWrite};
use kiln_rt::println;

kiln_rt::entry!(main);

static MESSAGE: &[u8] = b"valid bytes here";

/// A READY argument in read-only memory.
static READONLY_READY: abi::Ready = abi::Ready {
    reserved: 0,
    ret: 0,
};

fn console_write(buf: u64, len: u64) {
    let mut arg = ConsoleWrite { buf, len };
    // SAFETY: CONSOLE_WRITE only reads; the tender must refuse the range.
    unsafe { abi::hypercall(nr::CONSOLE_WRITE, &mut arg) };
}

fn main() -> i32 {
    let case = kiln_rt::env::args().nth(1).unwrap_or("console");
    println!("wild-pointer: case {case}");
    match case {
        "console" => console_write(0xdead_beef_0000, 16),
        "huge-len" => console_write(MESSAGE.as_ptr() as u64, u64::MAX),
        "tender-memory" => console_write(0x1000, 16),
        "unknown" => {
            let mut arg = ConsoleWrite {
                buf: MESSAGE.as_ptr() as u64,
                len: MESSAGE.len() as u64,
            };
            // SAFETY: the struct is valid; the number is not a hypercall.
            unsafe { abi::hypercall(77, &mut arg) };
        }
        // SAFETY: the address is outside guest memory; the tender must refuse it.
        "bad-struct" => unsafe { abi::hypercall_raw(nr::CLOCK, 0xfff0_0000) },
        // SAFETY: as above.
        "ready" => unsafe { abi::hypercall_raw(nr::READY, 0xfff0_0000) },
        // SAFETY: the tender must refuse to write the read-only struct.
        "ready-readonly" => unsafe {
            abi::hypercall_raw(nr::READY, &READONLY_READY as *const abi::Ready as u64)
        },
        "ready-reserved" => {
            let mut arg = abi::Ready {
                reserved: 1,
                ret: 0,
            };
            // SAFETY: READY reads and writes only the struct.
            unsafe { abi::hypercall(nr::READY, &mut arg) };
            println!("wild-pointer: ready-reserved ret {}", arg.ret);
            return 0;
        }
        other => {
            println!("wild-pointer: unknown case {other:?}");
            return 2;
        }
    }
    println!("wild-pointer: survived case {case} (must not happen)");
    1
}
