//! Prints every argument as `arg N: VALUE` and every environment variable as
//! `env KEY=VALUE`, then exits with the number in `EXIT_CODE` (default 0).
#![no_std]
#![no_main]

use kiln_rt::{env, println};

kiln_rt::entry!(main);

fn main() -> i32 {
    println!("args-env: start");
    for (i, arg) in env::args().enumerate() {
        println!("arg {i}: {arg}");
    }
    for (key, value) in env::vars() {
        println!("env {key}={value}");
    }
    let code = match env::var("EXIT_CODE") {
        None => 0,
        Some(text) => match text.parse::<i32>() {
            Ok(code) => code,
            Err(_) => {
                println!("args-env: EXIT_CODE={text:?} is not a number");
                return 2;
            }
        },
    };
    println!("args-env: exit {code}");
    code
}
