//! Uses the block device "data" (`kiln run --disk data=FILE`, at least
//! 64 KiB): writes a pattern at offset 4096, reads it back, and prints
//! `block ok <block size> <capacity>`; prints `block: ...` errors and exits 1
//! otherwise.
#![no_std]
#![no_main]

extern crate alloc;

use kiln_rt::block::{Device, Error};
use kiln_rt::println;

kiln_rt::entry!(main, block = ["data"]);

fn run() -> Result<(u64, u64), Error> {
    let disk = Device::open("data")?;
    let len = 8 * disk.block_size() as usize;
    let pattern: alloc::vec::Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
    disk.write_at(4096, &pattern)?;
    let mut back = alloc::vec![0u8; len];
    disk.read_at(4096, &mut back)?;
    if back != pattern {
        println!("block: read back different data");
        return Err(Error::Io(kiln_rt::abi::errno::EIO));
    }
    let mut unaligned = [0u8; 3];
    if disk.read_at(1, &mut unaligned) != Err(Error::Unaligned) {
        println!("block: an unaligned read was not refused");
        return Err(Error::Io(kiln_rt::abi::errno::EIO));
    }
    Ok((disk.block_size(), disk.capacity()))
}

fn main() -> i32 {
    match run() {
        Ok((block_size, capacity)) => {
            println!("block ok {block_size} {capacity}");
            0
        }
        Err(e) => {
            println!("block: {e}");
            1
        }
    }
}
