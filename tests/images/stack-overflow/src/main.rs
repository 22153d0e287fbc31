//! Recurses without bound with large frames: the guard page below the stack
//! must stop the instance with a fault instead of letting the stack run into
//! other memory.
#![no_std]
#![no_main]

use core::hint::black_box;
use kiln_rt::println;

kiln_rt::entry!(main);

/// Each call keeps a 4 KiB buffer alive across the recursive call, so the
/// recursion can be neither removed nor turned into a loop.
#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let mut frame = [0u8; 4096];
    frame[(depth % 4096) as usize] = depth as u8;
    black_box(&mut frame);
    let deeper = recurse(black_box(depth + 1));
    deeper + u64::from(black_box(&frame)[0])
}

fn main() -> i32 {
    println!("stack-overflow: recursing");
    let total = recurse(0);
    println!("stack-overflow: returned {total} (must not happen)");
    1
}
