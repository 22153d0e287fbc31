//! Panics with "boom from the panic image": the instance must end with
//! exit status 134 and the tender must print the panic message.
#![no_std]
#![no_main]

use kiln_rt::println;

kiln_rt::entry!(main);

fn main() -> i32 {
    println!("panic: about to panic");
    if core::hint::black_box(true) {
        panic!("boom from the panic image");
    }
    0
}
