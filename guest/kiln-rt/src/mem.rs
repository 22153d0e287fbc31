//! `memcpy`, `memmove`, `memset`, `memcmp` and `bcmp`, which the compiler
//! emits calls to (the prebuilt `compiler_builtins` of the
//! `x86_64-unknown-linux-gnu` target expects libc to provide them).
//!
//! Copies and fills use `rep movsb` / `rep stosb`, fast on every CPU with
//! ERMS and, being `asm!`, immune to the optimiser recognising a byte loop
//! as a `memcpy` idiom and calling the function from itself. Comparisons
//! are plain loops over 8-byte words and bytes, which LLVM does not turn into
//! `memcmp`/`bcmp` calls (checked in the disassembly of the images).
//!
//! The exported symbols are left out of host unit tests, where libc's
//! versions are in use; the tests exercise the same functions under their
//! Rust names.

use core::arch::asm;

/// Copies `n` bytes from `src` to `dst`, lowest address first.
///
/// # Safety
///
/// `src` valid for reading and `dst` for writing `n` bytes; if the regions
/// overlap, `dst` must not lie inside `(src, src + n)`.
#[inline(always)]
pub(crate) unsafe fn copy_forward(dst: *mut u8, src: *const u8, n: usize) {
    // SAFETY: the caller guarantees both ranges; `rep movsb` with DF clear
    // (the ABI state) copies exactly `rcx` bytes upwards and changes no flags.
    unsafe {
        asm!(
            "rep movsb",
            inout("rcx") n => _,
            inout("rdi") dst => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags),
        );
    }
}

/// Copies `n` bytes from `src` to `dst`, highest address first.
///
/// # Safety
///
/// `src` valid for reading and `dst` for writing `n` bytes.
#[inline(always)]
pub(crate) unsafe fn copy_backward(dst: *mut u8, src: *const u8, n: usize) {
    if n == 0 {
        return;
    }
    // SAFETY: the caller guarantees both ranges, so the last bytes
    // `dst + n - 1` and `src + n - 1` are in bounds. With DF set, `rep movsb`
    // copies `rcx` bytes downwards from there; DF is cleared again before the
    // block ends, as the ABI requires.
    unsafe {
        asm!(
            "std",
            "rep movsb",
            "cld",
            inout("rcx") n => _,
            inout("rdi") dst.add(n - 1) => _,
            inout("rsi") src.add(n - 1) => _,
            options(nostack),
        );
    }
}

/// Sets `n` bytes at `dst` to `value`.
///
/// # Safety
///
/// `dst` valid for writing `n` bytes.
#[inline(always)]
pub(crate) unsafe fn fill(dst: *mut u8, value: u8, n: usize) {
    // SAFETY: the caller guarantees the range; `rep stosb` with DF clear
    // stores `al` into exactly `rcx` bytes upwards and changes no flags.
    unsafe {
        asm!(
            "rep stosb",
            inout("rcx") n => _,
            inout("rdi") dst => _,
            in("al") value,
            options(nostack, preserves_flags),
        );
    }
}

/// Copies `n` bytes between possibly overlapping regions.
///
/// # Safety
///
/// `src` valid for reading and `dst` for writing `n` bytes.
#[inline(always)]
pub(crate) unsafe fn copy(dst: *mut u8, src: *const u8, n: usize) {
    // When dst - src (mod 2^64) >= n, dst does not start inside (src, src+n):
    // a forward copy never reads a byte it has already overwritten.
    if (dst as usize).wrapping_sub(src as usize) >= n {
        // SAFETY: forwarded caller guarantee; overlap condition checked above.
        unsafe { copy_forward(dst, src, n) }
    } else {
        // SAFETY: forwarded caller guarantee.
        unsafe { copy_backward(dst, src, n) }
    }
}

/// Compares `n` bytes as unsigned: negative, zero or positive like C's
/// `memcmp`.
///
/// # Safety
///
/// `a` and `b` valid for reading `n` bytes.
#[inline(always)]
pub(crate) unsafe fn compare(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    // Skip equal 8-byte words quickly, then find the first differing byte.
    while i + 8 <= n {
        // SAFETY: `i + 8 <= n`, so both 8-byte reads are in bounds;
        // `read_unaligned` has no alignment requirement.
        let (x, y) = unsafe {
            (
                (a.add(i) as *const u64).read_unaligned(),
                (b.add(i) as *const u64).read_unaligned(),
            )
        };
        if x != y {
            break;
        }
        i += 8;
    }
    while i < n {
        // SAFETY: `i < n`.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// The C symbols. Not in host test builds, where they would replace libc's.
#[cfg(not(test))]
mod exports {
    /// C `memcpy`.
    ///
    /// # Safety
    ///
    /// As in C: valid, non-overlapping ranges of `n` bytes.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        // SAFETY: the C contract of memcpy is the caller's.
        unsafe { super::copy_forward(dst, src, n) };
        dst
    }

    /// C `memmove`.
    ///
    /// # Safety
    ///
    /// As in C: valid ranges of `n` bytes, which may overlap.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        // SAFETY: the C contract of memmove is the caller's.
        unsafe { super::copy(dst, src, n) };
        dst
    }

    /// C `memset`.
    ///
    /// # Safety
    ///
    /// As in C: a valid range of `n` bytes.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn memset(dst: *mut u8, value: i32, n: usize) -> *mut u8 {
        // SAFETY: the C contract of memset is the caller's. C converts the
        // value to unsigned char, hence the truncation.
        unsafe { super::fill(dst, value as u8, n) };
        dst
    }

    /// C `memcmp`.
    ///
    /// # Safety
    ///
    /// As in C: valid ranges of `n` bytes.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
        // SAFETY: the C contract of memcmp is the caller's.
        unsafe { super::compare(a, b, n) }
    }

    /// C `bcmp`: zero when equal, non-zero otherwise.
    ///
    /// # Safety
    ///
    /// As in C: valid ranges of `n` bytes.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
        // SAFETY: the C contract of bcmp is the caller's.
        unsafe { super::compare(a, b, n) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + 3) as u8).collect()
    }

    #[test]
    fn copy_forward_copies_every_length() {
        for n in 0..70 {
            let src = pattern(n);
            let mut dst = vec![0xaa; n + 2];
            // SAFETY: both buffers hold at least `n` bytes and do not overlap.
            unsafe { copy_forward(dst.as_mut_ptr().add(1), src.as_ptr(), n) };
            assert_eq!(&dst[1..=n], &src[..]);
            assert_eq!(dst[0], 0xaa);
            assert_eq!(dst[n + 1], 0xaa);
        }
    }

    #[test]
    fn copy_handles_overlap_both_ways() {
        for n in 0..40 {
            for shift in 0..10usize {
                let orig = pattern(n + shift);
                // dst above src
                let mut buf = orig.clone();
                // SAFETY: both ranges lie inside `buf` (len n + shift).
                unsafe { copy(buf.as_mut_ptr().add(shift), buf.as_ptr(), n) };
                assert_eq!(&buf[shift..shift + n], &orig[..n], "up n={n} shift={shift}");
                // dst below src
                let mut buf = orig.clone();
                // SAFETY: as above.
                unsafe { copy(buf.as_mut_ptr(), buf.as_ptr().add(shift), n) };
                assert_eq!(
                    &buf[..n],
                    &orig[shift..shift + n],
                    "down n={n} shift={shift}"
                );
            }
        }
    }

    #[test]
    fn fill_sets_exactly_n_bytes() {
        for n in 0..40 {
            let mut buf = vec![1u8; n + 2];
            // SAFETY: `buf` holds n + 2 bytes; we fill [1, n + 1).
            unsafe { fill(buf.as_mut_ptr().add(1), 0xee, n) };
            assert!(buf[1..=n].iter().all(|&b| b == 0xee));
            assert_eq!((buf[0], buf[n + 1]), (1, 1));
        }
    }

    #[test]
    fn compare_orders_like_memcmp() {
        for n in 0..40 {
            let a = pattern(n);
            // SAFETY: both slices hold `n` bytes.
            assert_eq!(unsafe { compare(a.as_ptr(), a.clone().as_ptr(), n) }, 0);
            for i in 0..n {
                let mut b = a.clone();
                b[i] = b[i].wrapping_add(1);
                // SAFETY: both slices hold `n` bytes.
                let r = unsafe { compare(a.as_ptr(), b.as_ptr(), n) };
                let expected = a[i].cmp(&b[i]) as i32;
                assert_eq!(r.signum(), expected, "n={n} i={i}");
                // SAFETY: as above.
                let r = unsafe { compare(b.as_ptr(), a.as_ptr(), n) };
                assert_eq!(r.signum(), -expected);
            }
        }
        // Bytes compare unsigned.
        // SAFETY: one byte each.
        assert!(unsafe { compare([0x80].as_ptr(), [0x01].as_ptr(), 1) } > 0);
    }
}
