//! Writes 200,000 bytes in one `print!` (more than one CONSOLE_WRITE may
//! carry), then `big-output: done`. The host checks that exactly the line of
//! 199,999 `x` and a newline arrived, in order.
#![no_std]
#![no_main]

extern crate alloc;

use kiln_rt::println;

kiln_rt::entry!(main);

fn main() -> i32 {
    let line = "x".repeat(199_999);
    println!("{line}");
    println!("big-output: done");
    0
}
