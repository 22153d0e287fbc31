//! Console output: [`print!`](crate::print), [`println!`](crate::println),
//! [`eprint!`](crate::eprint), [`eprintln!`](crate::eprintln).
//!
//! The console is the tender's standard output. Each macro call formats
//! into a small buffer on the stack and normally reaches the tender in one
//! CONSOLE_WRITE hypercall, so a line is never split across hypercalls unless
//! it is longer than the buffer. There is one console; the `e` variants write
//! to it too and exist so code ported from std reads naturally.

use core::fmt::{self, Write};

/// Bytes formatted on the stack before a hypercall is made.
const BUFFER_SIZE: usize = 1024;

/// Writes raw bytes to the console, in CONSOLE_WRITE-sized pieces.
pub fn write_bytes(bytes: &[u8]) {
    if !bytes.is_empty() {
        crate::hypercall::console_write(bytes);
    }
}

/// Writes a string to the console.
pub fn write_str(s: &str) {
    write_bytes(s.as_bytes());
}

/// Formats `args` to the console (what the macros call).
#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    // A plain string needs no buffering.
    if let Some(s) = args.as_str() {
        write_str(s);
        return;
    }
    let mut out = Buffered::new(write_bytes);
    let _ = out.write_fmt(args);
    out.flush();
}

/// A [`fmt::Write`] that collects output in a fixed buffer and hands it to
/// `sink` when full and on [`flush`](Buffered::flush). Pieces larger than the
/// buffer go to the sink directly.
pub(crate) struct Buffered<F: FnMut(&[u8])> {
    buf: [u8; BUFFER_SIZE],
    len: usize,
    sink: F,
}

impl<F: FnMut(&[u8])> Buffered<F> {
    pub(crate) fn new(sink: F) -> Self {
        Buffered {
            buf: [0; BUFFER_SIZE],
            len: 0,
            sink,
        }
    }

    pub(crate) fn flush(&mut self) {
        if self.len > 0 {
            (self.sink)(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl<F: FnMut(&[u8])> Write for Buffered<F> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let bytes = s.as_bytes();
        if bytes.len() > BUFFER_SIZE - self.len {
            self.flush();
        }
        if bytes.len() >= BUFFER_SIZE {
            (self.sink)(bytes);
        } else {
            self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
            self.len += bytes.len();
        }
        Ok(())
    }
}

/// Prints to the console, like `std::print!`.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::console::_print(::core::format_args!($($arg)*))
    };
}

/// Prints to the console with a newline, like `std::println!`; one
/// hypercall for lines up to 1 KiB.
#[macro_export]
macro_rules! println {
    () => {
        $crate::console::write_str("\n")
    };
    ($($arg:tt)*) => {
        $crate::console::_print(::core::format_args!("{}\n", ::core::format_args!($($arg)*)))
    };
}

/// Like [`print!`](crate::print); the console has a single stream.
#[macro_export]
macro_rules! eprint {
    ($($arg:tt)*) => {
        $crate::print!($($arg)*)
    };
}

/// Like [`println!`](crate::println); the console has a single stream.
#[macro_export]
macro_rules! eprintln {
    ($($arg:tt)*) => {
        $crate::println!($($arg)*)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(f: impl FnOnce(&mut dyn Write)) -> Vec<Vec<u8>> {
        let mut writes = Vec::new();
        let mut out = Buffered::new(|b: &[u8]| writes.push(b.to_vec()));
        f(&mut out);
        out.flush();
        writes
    }

    #[test]
    fn a_formatted_line_is_one_write() {
        let writes = collect(|w| {
            writeln!(w, "{}", format_args!("x = {} and {:?}", 42, "s")).unwrap();
        });
        assert_eq!(writes, vec![b"x = 42 and \"s\"\n".to_vec()]);
    }

    #[test]
    fn long_output_is_split_at_the_buffer_size_and_keeps_order() {
        let long = "y".repeat(3000);
        let writes = collect(|w| {
            write!(w, "a{}b{}", long, "c".repeat(1000)).unwrap();
        });
        let all: Vec<u8> = writes.concat();
        assert_eq!(all, format!("a{}b{}", long, "c".repeat(1000)).into_bytes());
        assert!(writes.iter().all(|w| w.len() <= 3000));
        // "a" (flushed before the long piece), the long piece, then "b" + c...
        assert_eq!(writes.len(), 3);
    }

    #[test]
    fn nothing_written_means_no_write() {
        assert!(collect(|_| {}).is_empty());
    }
}
