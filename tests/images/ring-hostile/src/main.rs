//! Breaks the rules of the NET_RINGS shared-memory rings; hvt must end the
//! instance with a violation that names the ring problem (exit status 139)
//! or answer with an errno, and never crash.
//!
//! Run with `--net none` (no backend is needed). `argv[1]` picks the case:
//! * `producer-ahead`: the tx producer index 1000 frames ahead, then a kick;
//! * `producer-behind`: the tx producer index behind the consumer;
//! * `slot-huge`: a tx slot length of 0x7fff_ffff;
//! * `slot-over-mtu`: a tx slot length of 1515 (MTU + 15);
//! * `rx-consumer`: the rx consumer index ahead of the producer;
//! * `bootinfo`: the rx ring on the (read-only) BootInfo page;
//! * `outside`: the rx ring beyond the end of guest memory;
//! * `code`: the rx ring on the image's code;
//! * `tender-pages`: the rx ring on the tender's page tables and GDT;
//! * `overlap`: the tx ring one page after the rx ring;
//! * `unaligned`: the rx ring 8 bytes past a page boundary;
//! * `twice`: a second NET_RINGS for the same device (EINVAL; exits 0);
//! * `no-device`: NET_RINGS for device 5 (ENODEV; exits 0);
//! * `short-frame`: a 3-byte tx frame (dropped; exits 0);
//! * `kick-flood`: 100 000 kicks on valid, empty rings (exits 0);
//! * `doorbell-narrow`: a 1-byte `out` to the doorbell's second port.
#![no_std]
#![no_main]

use core::cell::UnsafeCell;
use core::time::Duration;

use kiln_rt::abi::{
    self, errno, nr, NetRings, HVT_NET_DOORBELL_PORT, IMAGE_BASE, NET_RING_CONSUMER,
    NET_RING_PRODUCER, NET_RING_SIZE, NET_RING_SLOT0, PAGE_SIZE,
};
use kiln_rt::println;

kiln_rt::entry!(main, net = ["service0"]);

const RING: usize = NET_RING_SIZE as usize;
const PAGE: usize = PAGE_SIZE as usize;

/// Room for two rings (plus slack for the misplaced ones), page aligned.
#[repr(C, align(4096))]
struct Memory(UnsafeCell<[u8; 2 * RING + 4 * PAGE]>);

// SAFETY: the image has one thread; the tender accesses the rings
// concurrently, which is what this image is about.
unsafe impl Sync for Memory {}

static MEMORY: Memory = Memory(UnsafeCell::new([0; 2 * RING + 4 * PAGE]));

fn base() -> u64 {
    MEMORY.0.get() as u64
}

fn poke(addr: u64, value: u32) {
    // SAFETY: `addr` lies inside MEMORY (the callers add small offsets to
    // a ring address inside it); a volatile store, since the tender reads
    // the memory behind the compiler's back.
    unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
}

fn net_rings(device: u64, rx: u64, tx: u64) -> i64 {
    let mut arg = NetRings {
        device,
        rx,
        tx,
        ret: 0,
    };
    // SAFETY: the struct is valid; the rings are MEMORY (or addresses the
    // tender must refuse), which lives for good.
    unsafe { abi::hypercall(nr::NET_RINGS, &mut arg) };
    arg.ret
}

fn kick(device: u32) {
    // SAFETY: the doorbell port; touches no memory.
    unsafe {
        core::arch::asm!("out dx, eax", in("dx") HVT_NET_DOORBELL_PORT, in("eax") device,
            options(nostack, preserves_flags));
    }
}

/// Gives the tender's I/O thread time to act (the instance should end).
fn wait() {
    kiln_rt::block_on(kiln_rt::executor::sleep(Duration::from_secs(5)));
}

fn main() -> i32 {
    let case = kiln_rt::env::args().nth(1).unwrap_or("producer-ahead");
    println!("ring-hostile: case {case}");
    let rx = base();
    let tx = base() + RING as u64;
    let boot_page = kiln_rt::devices()
        .next()
        .map_or(0, |(_, d)| d as *const _ as u64 & !(PAGE_SIZE - 1));
    let setup = |rx, tx| {
        let ret = net_rings(0, rx, tx);
        println!("ring-hostile: NET_RINGS returned {ret}");
        ret
    };
    match case {
        "producer-ahead" | "producer-behind" | "slot-huge" | "slot-over-mtu" | "rx-consumer"
        | "short-frame" | "kick-flood" => {
            if setup(rx, tx) != 0 {
                return 3;
            }
            let slot0 = tx + NET_RING_SLOT0;
            match case {
                "producer-ahead" => poke(tx + NET_RING_PRODUCER, 1000),
                "producer-behind" => poke(tx + NET_RING_PRODUCER, u32::MAX),
                "slot-huge" | "slot-over-mtu" | "short-frame" => {
                    let len = match case {
                        "slot-huge" => 0x7fff_ffff,
                        "slot-over-mtu" => 1515,
                        _ => 3,
                    };
                    poke(slot0, len);
                    poke(tx + NET_RING_PRODUCER, 1);
                }
                "rx-consumer" => poke(rx + NET_RING_CONSUMER, 7),
                _ => {
                    let start = kiln_rt::time::now();
                    for _ in 0..100_000 {
                        kick(0);
                    }
                    let took = kiln_rt::time::now().duration_since(start);
                    println!(
                        "ring-hostile: survived the kicks (100000 in {} µs)",
                        took.as_micros()
                    );
                    return 0;
                }
            }
            kick(0);
            if case == "short-frame" {
                kiln_rt::block_on(kiln_rt::executor::sleep(Duration::from_millis(200)));
                println!("ring-hostile: the short frame was dropped");
                return 0;
            }
            wait();
        }
        "bootinfo" => {
            setup(boot_page, tx);
        }
        "outside" => {
            setup(0x4000_0000, tx);
        }
        "code" => {
            setup(IMAGE_BASE, tx);
        }
        "tender-pages" => {
            setup(0x1000, tx);
        }
        "overlap" => {
            setup(rx, rx + PAGE_SIZE);
        }
        "unaligned" => {
            setup(rx + 8, tx + PAGE_SIZE);
        }
        "twice" => {
            if setup(rx, tx) != 0 {
                return 3;
            }
            let again = net_rings(0, tx + RING as u64, rx + 2 * RING as u64);
            println!("ring-hostile: second NET_RINGS returned {again}");
            return if again == errno::EINVAL { 0 } else { 4 };
        }
        "no-device" => {
            let ret = net_rings(5, rx, tx);
            println!("ring-hostile: NET_RINGS for device 5 returned {ret}");
            return if ret == errno::ENODEV { 0 } else { 4 };
        }
        "doorbell-narrow" => {
            // SAFETY: a port the TSS admits (the doorbell's second byte);
            // touches no memory.
            unsafe {
                core::arch::asm!("out dx, al", in("dx") HVT_NET_DOORBELL_PORT + 1, in("al") 0u8,
                    options(nostack, preserves_flags));
            }
        }
        other => {
            println!("ring-hostile: unknown case {other:?}");
            return 2;
        }
    }
    println!("ring-hostile: survived case {case} (must not happen)");
    1
}
