//! Uses the block device "data" of any size (`kiln run --disk data=FILE`,
//! a multiple of 512 bytes): writes a pattern over the whole disk in one
//! call (so its last host piece ends exactly at the capacity), reads it
//! back, reads the disk from its second block to the end, then rewrites
//! the last block with 0x5a bytes. Prints `block edge ok <capacity>`;
//! prints `block: ...` and exits 1 otherwise.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use kiln_rt::block::{Device, Error};
use kiln_rt::println;

kiln_rt::entry!(main, block = ["data"]);

fn pattern(i: usize) -> u8 {
    (i * 13 + 5) as u8
}

fn check(ok: bool, what: &str) -> Result<(), Error> {
    if ok {
        Ok(())
    } else {
        println!("block: {what}");
        Err(Error::Io(kiln_rt::abi::errno::EIO))
    }
}

fn run() -> Result<u64, Error> {
    let disk = Device::open("data")?;
    let cap = disk.capacity() as usize;
    let bs = disk.block_size() as usize;
    let all: alloc::vec::Vec<u8> = (0..cap).map(pattern).collect();
    disk.write_at(0, &all)?;
    let mut back = vec![0u8; cap];
    disk.read_at(0, &mut back)?;
    check(back == all, "the whole disk read back different data")?;
    let mut tail = vec![0u8; cap - bs];
    disk.read_at(bs as u64, &mut tail)?;
    check(
        tail[..] == all[bs..],
        "the disk after its first block read back different data",
    )?;
    disk.write_at((cap - bs) as u64, &vec![0x5a; bs])?;
    let mut last = vec![0u8; bs];
    disk.read_at((cap - bs) as u64, &mut last)?;
    check(
        last.iter().all(|&b| b == 0x5a),
        "the last block read back different data",
    )?;
    Ok(cap as u64)
}

fn main() -> i32 {
    match run() {
        Ok(capacity) => {
            println!("block edge ok {capacity}");
            0
        }
        Err(e) => {
            println!("block: {e}");
            1
        }
    }
}
