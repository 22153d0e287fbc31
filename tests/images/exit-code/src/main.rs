//! Exits with the integer given as `argv[1]`.
#![no_std]
#![no_main]

use kiln_rt::println;

kiln_rt::entry!(main);

fn main() -> i32 {
    let Some(arg) = kiln_rt::env::args().nth(1) else {
        println!("exit-code: usage: exit-code CODE");
        return 2;
    };
    match arg.parse::<i32>() {
        Ok(code) => {
            println!("exit-code: exiting with {code}");
            code
        }
        Err(_) => {
            println!("exit-code: {arg:?} is not a number");
            2
        }
    }
}
