//! The panic handler: formats `panicked at FILE:LINE:COL: MESSAGE` into a
//! fixed buffer on the stack (no allocation, so it works with an exhausted
//! heap) and ends the instance with the ABORT hypercall; `kiln run` prints
//! the message and exits with 134.
//!
//! Allocation failure takes the same path: without a custom handler (not
//! available on stable Rust) `alloc` panics with "memory allocation of N
//! bytes failed", which is reported like any other panic.

use core::fmt::{self, Write};

/// Longest panic message sent; longer ones end in `...`.
const MESSAGE_MAX: usize = 1024;

/// A [`fmt::Write`] into a fixed buffer that keeps what fits (cut at a
/// character boundary) and marks the cut with `...`.
pub(crate) struct FixedBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
    truncated: bool,
}

impl<const N: usize> FixedBuf<N> {
    pub(crate) const fn new() -> Self {
        FixedBuf {
            buf: [0; N],
            len: 0,
            truncated: false,
        }
    }

    /// What was written (valid UTF-8: only whole characters are kept).
    pub(crate) fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }

    /// Ends a truncated message with `...` (overwriting its last bytes).
    pub(crate) fn finish(&mut self) -> &str {
        if self.truncated && N >= 3 {
            let mut end = self.len.min(N - 3);
            while !self.as_str().is_char_boundary(end) {
                end -= 1;
            }
            self.buf[end..end + 3].copy_from_slice(b"...");
            self.len = end + 3;
        }
        self.as_str()
    }
}

impl<const N: usize> Write for FixedBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = N - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        if take < s.len() {
            self.truncated = true;
            return Err(fmt::Error);
        }
        Ok(())
    }
}

/// Writes the report for a panic at `location` with `message`.
pub(crate) fn format_report(
    out: &mut impl Write,
    location: Option<&core::panic::Location<'_>>,
    message: impl fmt::Display,
) {
    let _ = match location {
        Some(l) => write!(
            out,
            "panicked at {}:{}:{}: {}",
            l.file(),
            l.line(),
            l.column(),
            message
        ),
        None => write!(out, "panicked: {message}"),
    };
}

#[cfg(not(test))]
mod handler {
    use super::*;
    use core::sync::atomic::{AtomicBool, Ordering};

    /// Set when a panic starts, to catch a panic while reporting one.
    static PANICKING: AtomicBool = AtomicBool::new(false);

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
        if PANICKING.swap(true, Ordering::Relaxed) {
            crate::hypercall::abort("panicked while reporting a panic");
        }
        let mut out = FixedBuf::<MESSAGE_MAX>::new();
        format_report(&mut out, info.location(), info.message());
        crate::hypercall::abort(out.finish())
    }

    /// The prebuilt `core`/`alloc` were compiled for unwinding, so their
    /// cleanup paths reference `_Unwind_Resume`. Images abort on panic and
    /// never unwind, so it is never reached; if it were, end the instance.
    #[unsafe(no_mangle)]
    extern "C" fn _Unwind_Resume() -> ! {
        crate::hypercall::abort("kiln-rt: _Unwind_Resume called, but images never unwind")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_names_location_and_message() {
        let mut out = FixedBuf::<256>::new();
        let loc = core::panic::Location::caller();
        format_report(&mut out, Some(loc), format_args!("boom {}", 7));
        let expected = format!(
            "panicked at {}:{}:{}: boom 7",
            loc.file(),
            loc.line(),
            loc.column()
        );
        assert_eq!(out.finish(), expected);
    }

    #[test]
    fn long_messages_are_cut_at_a_char_boundary_with_an_ellipsis() {
        let mut out = FixedBuf::<10>::new();
        let _ = out.write_str("aaaaaaaé€xyz");
        let s = out.finish();
        assert!(s.ends_with("..."), "{s}");
        assert!(s.len() <= 10);
        assert!(s.starts_with("aaaaaa"));
    }

    #[test]
    fn short_messages_are_kept_whole() {
        let mut out = FixedBuf::<10>::new();
        let _ = write!(out, "abc");
        assert_eq!(out.finish(), "abc");
    }
}
