//! Allocates until the heap is exhausted: the instance must abort (exit
//! status 134) with "memory allocation of N bytes failed", not crash.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use kiln_rt::println;

kiln_rt::entry!(main);

fn main() -> i32 {
    println!("oom: heap is {} KiB", kiln_rt::heap_size() / 1024);
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut block = Vec::with_capacity(1 << 20);
        block.push(1u8);
        blocks.push(core::hint::black_box(block));
        println!("oom: holding {} MiB", blocks.len());
    }
}
