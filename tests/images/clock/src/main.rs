//! Exercises time and the rest of the runtime an ordinary program leans on:
//!
//! * `slept ok <ms>`: the monotonic clock advanced by at least 20 ms across a
//!   blocking `sleep(20 ms)`;
//! * `clock reads: 1000 in <us> us`: informational, never checked;
//! * `wall clock <s> s`: seconds since the epoch (after 2020);
//! * `order: b0 a0 b1 a1 b2 a2`: two spawned tasks whose timers interleave;
//! * `heap ok ...`: Vec, String, BTreeMap and Box on the heap;
//! * `float 3.142857`: floating-point formatting;
//! * `clock: done`, exit 0. Any failed check prints `FAIL ...` and exits 1.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::RefCell;
use core::time::Duration;
use kiln_rt::executor::{self, block_on, spawn};
use kiln_rt::println;
use kiln_rt::time::{self, Instant};

kiln_rt::entry!(main);

fn check(ok: bool, what: &str) -> bool {
    if !ok {
        println!("FAIL {what}");
    }
    ok
}

fn sleeping() -> bool {
    let t0 = Instant::now();
    time::sleep(Duration::from_millis(20));
    let slept = t0.elapsed();
    println!("slept ok {}", slept.as_millis());
    check(
        slept >= Duration::from_millis(20),
        "monotonic clock advanced 20 ms",
    ) && check(
        Instant::now() >= t0 + slept,
        "monotonic clock never goes back",
    )
}

/// Informational: what reading the clock costs (no hypercall per reading
/// when the tender offers the TSC).
fn read_cost() -> bool {
    let t0 = Instant::now();
    let mut last = t0;
    let mut monotonic = true;
    for _ in 0..1000 {
        let now = Instant::now();
        monotonic &= now >= last;
        last = now;
    }
    println!("clock reads: 1000 in {} us", t0.elapsed().as_micros());
    check(monotonic, "successive readings never decrease")
}

fn wall() -> bool {
    let secs = time::wall_clock().as_secs();
    println!("wall clock {secs} s");
    check(secs > 1_600_000_000, "wall clock is after 2020")
}

fn tasks() -> bool {
    let order = Rc::new(RefCell::new(Vec::new()));
    let t0 = Instant::now();
    let sum = block_on({
        let order = order.clone();
        async move {
            let a = spawn({
                let order = order.clone();
                async move {
                    for i in 0..3 {
                        executor::sleep(Duration::from_millis(10)).await;
                        order.borrow_mut().push(alloc::format!("a{i}"));
                    }
                    1
                }
            });
            let b = spawn({
                let order = order.clone();
                async move {
                    executor::sleep(Duration::from_millis(5)).await;
                    for i in 0..3 {
                        order.borrow_mut().push(alloc::format!("b{i}"));
                        executor::sleep(Duration::from_millis(10)).await;
                    }
                    2
                }
            });
            a.await + b.await
        }
    });
    let order = order.borrow().join(" ");
    println!("order: {order}");
    check(
        order == "b0 a0 b1 a1 b2 a2",
        "timers fire in deadline order",
    ) && check(sum == 3, "join handles return the task outputs")
        && check(
            t0.elapsed() >= Duration::from_millis(35),
            "the tasks waited",
        )
}

fn heap() -> bool {
    let numbers: Vec<u64> = (1..=1000).collect();
    let sum: u64 = numbers.iter().sum();
    let mut words = BTreeMap::new();
    for word in "the quick brown fox jumps over the lazy dog the end".split(' ') {
        *words.entry(word.to_string()).or_insert(0u32) += 1;
    }
    let mut text = String::new();
    for (word, count) in &words {
        text.push_str(&alloc::format!("{word}:{count},"));
    }
    let boxed: Box<[u8]> = alloc::vec![7u8; 100_000].into_boxed_slice();
    println!(
        "heap ok sum={sum} the={} words={} boxed={} heap={} KiB",
        words["the"],
        words.len(),
        boxed.len(),
        kiln_rt::heap_size() / 1024
    );
    check(sum == 500_500, "vector sum")
        && check(words["the"] == 3 && words.len() == 9, "map counts")
        && check(text.starts_with("brown:1,dog:1,end:1,"), "string building")
        && check(boxed.iter().all(|&b| b == 7), "large allocation")
}

fn float() -> bool {
    let x = core::hint::black_box(22.0f64) / core::hint::black_box(7.0f64);
    let text = alloc::format!("{x:.6}");
    println!("float {text}");
    check(text == "3.142857", "float formatting")
}

fn main() -> i32 {
    let tender = match kiln_rt::tender() {
        kiln_rt::abi::tender::HVT => "hvt",
        kiln_rt::abi::tender::SPT => "spt",
        _ => "unknown",
    };
    println!("clock: start on {tender}");
    let ok = [sleeping(), read_cost(), wall(), tasks(), heap(), float()];
    if ok.iter().all(|&ok| ok) {
        println!("clock: done");
        0
    } else {
        1
    }
}
