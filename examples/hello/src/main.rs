//! The smallest kiln image: prints a greeting and its arguments.
//!
//! ```text
//! kiln build examples/hello
//! kiln run hello.kiln a b    # Hello from kiln! / arg[1] = a / arg[2] = b
//! ```
#![no_std]
#![no_main]

use kiln_rt::println;

kiln_rt::entry!(main);

fn main() -> i32 {
    println!("Hello from kiln!");
    for (i, arg) in kiln_rt::env::args().enumerate().skip(1) {
        println!("arg[{i}] = {arg}");
    }
    0
}
