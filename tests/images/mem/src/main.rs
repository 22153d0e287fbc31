//! Checks the C memory functions kiln-rt links into every image (memcpy,
//! memmove, memset, memcmp, bcmp) by calling the exported symbols directly
//! with sizes and overlaps the optimiser cannot see. Prints `mem ok` and
//! exits 0, or prints `FAIL ...` and exits 1.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use core::hint::black_box;
use kiln_rt::println;

kiln_rt::entry!(main);

extern "C" {
    fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8;
    fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8;
    fn memset(dst: *mut u8, value: i32, n: usize) -> *mut u8;
    fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32;
    fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32;
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

fn check(ok: bool, what: &str, n: usize) -> bool {
    if !ok {
        println!("FAIL {what} n={n}");
    }
    ok
}

fn main() -> i32 {
    let mut ok = true;
    for n in [0usize, 1, 7, 8, 9, 31, 64, 100, 4095, 4097, 70_000] {
        let n = black_box(n);
        let src = pattern(n + 16);

        let mut dst = alloc::vec![0u8; n + 2];
        // SAFETY: both buffers hold at least n bytes and do not overlap.
        let r = unsafe { memcpy(dst.as_mut_ptr().add(1), src.as_ptr(), n) };
        ok &= check(r == dst.as_mut_ptr().wrapping_add(1), "memcpy return", n);
        ok &= check(
            dst[1..=n] == src[..n] && dst[0] == 0 && dst[n + 1] == 0,
            "memcpy",
            n,
        );

        for shift in [1usize, 3, 8, 16] {
            let mut buf = src.clone();
            // SAFETY: [shift, shift + n) and [0, n) lie within buf (n + 16).
            unsafe { memmove(buf.as_mut_ptr().add(shift), buf.as_ptr(), n) };
            ok &= check(buf[shift..shift + n] == src[..n], "memmove up", n);
            let mut buf = src.clone();
            // SAFETY: as above.
            unsafe { memmove(buf.as_mut_ptr(), buf.as_ptr().add(shift), n) };
            ok &= check(buf[..n] == src[shift..shift + n], "memmove down", n);
        }

        let mut buf = alloc::vec![1u8; n + 2];
        // SAFETY: [1, n + 1) lies within buf.
        unsafe { memset(buf.as_mut_ptr().add(1), 0x1ee, n) };
        ok &= check(buf[1..=n].iter().all(|&b| b == 0xee), "memset value", n);
        ok &= check(buf[0] == 1 && buf[n + 1] == 1, "memset bounds", n);

        let mut a = pattern(n);
        let mut b = a.clone();
        // SAFETY: both hold n bytes.
        ok &= check(
            unsafe { memcmp(a.as_ptr(), b.as_ptr(), n) } == 0,
            "memcmp equal",
            n,
        );
        // SAFETY: both hold n bytes.
        ok &= check(
            unsafe { bcmp(a.as_ptr(), b.as_ptr(), n) } == 0,
            "bcmp equal",
            n,
        );
        if n > 0 {
            // 0xff must compare above 0x01: bytes are unsigned.
            let i = black_box(n / 2);
            a[i] = 0x01;
            b[i] = 0xff;
            // SAFETY: both hold n bytes.
            let (less, more) = unsafe {
                (
                    memcmp(a.as_ptr(), b.as_ptr(), n),
                    memcmp(b.as_ptr(), a.as_ptr(), n),
                )
            };
            ok &= check(less < 0 && more > 0, "memcmp order", n);
            // SAFETY: both hold n bytes.
            ok &= check(
                unsafe { bcmp(a.as_ptr(), b.as_ptr(), n) } != 0,
                "bcmp differ",
                n,
            );
        }
    }
    // What the compiler emits for slices goes through the same symbols.
    let x = black_box(pattern(1000));
    let y = black_box(pattern(1000));
    ok &= check(x == y && x[..999] != y[1..], "slice compare", 1000);
    if ok {
        println!("mem ok");
        0
    } else {
        1
    }
}
