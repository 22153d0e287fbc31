//! Writes to the address of one of its own functions: code pages are not
//! writable (W^X), so the tender must stop the instance with a fault.
#![no_std]
#![no_main]

use kiln_rt::println;

kiln_rt::entry!(main);

fn main() -> i32 {
    let target = core::hint::black_box(main as fn() -> i32 as usize);
    println!("write-text: writing to code at {target:#x}");
    let ptr = target as *mut u8;
    // SAFETY: none; this image exists to fault here.
    unsafe { ptr.write_volatile(0xcc) };
    println!("write-text: wrote to code (must not happen)");
    1
}
