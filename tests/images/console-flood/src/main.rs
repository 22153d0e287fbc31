//! Prints `$FLOOD_LINE` (default: nothing) followed by a newline, over and
//! over, until `$FLOOD_BYTES` bytes (default 0) are out, then
//! `console-flood: done`, says READY and sleeps. kilnd's tests use it to
//! flood kilnd's log ring with bare newlines or short lines, and to send
//! terminal escape sequences through `kiln logs` and `kilnd -v`.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use core::time::Duration;
use kiln_rt::{console, env, println};

// kilnd gives every instance a network link; the image only needs to accept it.
kiln_rt::entry!(main, net = ["service0"]);

fn main() -> i32 {
    let line = env::var("FLOOD_LINE").unwrap_or("");
    let total: usize = env::var("FLOOD_BYTES")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // Whole lines in batches of about 64 KiB: one console write per batch.
    let mut batch: Vec<u8> = Vec::new();
    while batch.len() < 64 * 1024 {
        batch.extend_from_slice(line.as_bytes());
        batch.push(b'\n');
    }
    let mut left = total;
    while left > 0 {
        let n = left.min(batch.len());
        console::write_bytes(&batch[..n]);
        left -= n;
    }
    println!("console-flood: done");
    kiln_rt::ready();
    loop {
        kiln_rt::time::sleep(Duration::from_secs(3600));
    }
}
