//! Reads through a null pointer: page 0 is unmapped, so the tender must stop
//! the instance with a fault (exit status 139).
#![no_std]
#![no_main]

use kiln_rt::println;

kiln_rt::entry!(main);

fn main() -> i32 {
    println!("null-deref: reading address 0");
    // The address is hidden from the optimiser, so the load really happens.
    let ptr = core::hint::black_box(0usize) as *const u64;
    // SAFETY: none; this image exists to fault here.
    let value = unsafe { ptr.read_volatile() };
    println!("null-deref: read {value:#x} (must not happen)");
    1
}
