//! How an instance ends, and how the tender reports it.
//!
//! Everything here works without allocating, so that a signal handler or the
//! hypercall path under seccomp can build and report an outcome.

use core::fmt::{self, Write as _};
use kiln_abi::{ABORT_MSG_MAX, EXIT_ABORTED, EXIT_CRASHED};

/// What starts every line after the first of a guest-supplied message.
const CONTINUATION: &[u8] = b"  ";

/// A bounded UTF-8 message held inline (no allocation).
#[derive(Clone)]
pub struct Message {
    buf: [u8; ABORT_MSG_MAX as usize],
    len: usize,
}

impl Message {
    /// An empty message.
    pub const fn new() -> Self {
        Message {
            buf: [0; ABORT_MSG_MAX as usize],
            len: 0,
        }
    }

    /// A message from bytes the guest supplied: cut to the capacity, with
    /// invalid UTF-8 and control characters (other than newline and tab)
    /// replaced by '?', so a guest cannot forge terminal escapes, and every
    /// line after the first indented by two spaces, so that it cannot
    /// pass for a report line of the tender's own ("kiln: ...").
    pub fn from_guest(bytes: &[u8]) -> Self {
        let mut m = Message::new();
        let mut rest = bytes.iter().peekable();
        while let Some(&b) = rest.next() {
            let b = if b == b'\n' || b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80 {
                b
            } else {
                b'?'
            };
            if !m.push(b) {
                break;
            }
            if b == b'\n' && rest.peek().is_some() && !CONTINUATION.iter().all(|&c| m.push(c)) {
                break;
            }
        }
        // Keep the longest valid UTF-8 prefix, turning stray bytes into '?'.
        while let Err(e) = core::str::from_utf8(&m.buf[..m.len]) {
            let at = e.valid_up_to();
            match e.error_len() {
                Some(bad) => m.buf[at..at + bad].fill(b'?'),
                None => m.len = at,
            }
        }
        m
    }

    /// Appends one byte; false when full.
    fn push(&mut self, b: u8) -> bool {
        match self.buf.get_mut(self.len) {
            Some(slot) => {
                *slot = b;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl Default for Message {
    fn default() -> Self {
        Message::new()
    }
}

impl fmt::Write for Message {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len() - self.len;
        // Cut at a character boundary.
        let mut n = s.len().min(room);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A CPU exception (hvt) or a fatal signal (spt) raised by guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// What happened: "page fault", "invalid opcode", "general protection
    /// fault", "forbidden system call", ...
    pub kind: &'static str,
    /// The faulting data address, when there is one (CR2 or `si_addr`).
    pub addr: Option<u64>,
    /// The guest instruction pointer.
    pub rip: u64,
    /// More detail: the access ("write to a read-only page"), "stack
    /// overflow (guard page)", a syscall name; empty when none.
    pub detail: &'static str,
    /// A number qualifying `kind`: the vector (hvt), signal or syscall number (spt).
    pub code: Option<u64>,
}

/// Why a hypercall broke the ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// No hypercall has this number.
    UnknownNumber(u32),
    /// A range the guest passed is not (suitably) guest memory.
    BadRange {
        /// Which argument: "argument struct", "buffer", "message".
        what: &'static str,
        /// First address.
        addr: u64,
        /// Length.
        len: u64,
        /// Whether the tender needed to write there.
        write: bool,
    },
    /// A length above the hypercall's limit.
    TooLong {
        /// Which argument.
        what: &'static str,
        /// Length passed.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// Shared-memory network rings (NET_RINGS) that break their rules: a
    /// ring placed where it may not be, or an impossible index or length
    /// found in one while the instance runs.
    Ring {
        /// The network device (BootInfo index).
        device: u64,
        /// What is wrong; `{}` marks where `value` goes in decimal, `{:#x}`
        /// in hex.
        problem: &'static str,
        /// The offending value.
        value: u64,
        /// The limit it broke, when there is one.
        limit: Option<u64>,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Violation::UnknownNumber(n) => write!(f, "unknown hypercall number {n}"),
            Violation::BadRange {
                what,
                addr,
                len,
                write,
            } => write!(
                f,
                "{what} at {addr:#x} (length {len:#x}) is not {} guest memory",
                if write { "writable" } else { "readable" }
            ),
            Violation::TooLong { what, len, max } => {
                write!(f, "{what} length {len:#x} exceeds the limit {max:#x}")
            }
            Violation::Ring {
                device,
                problem,
                value,
                limit,
            } => {
                write!(f, "network device {device}: ")?;
                match (problem.split_once("{:#x}"), problem.split_once("{}")) {
                    (Some((a, b)), _) => write!(f, "{a}{value:#x}{b}")?,
                    (None, Some((a, b))) => write!(f, "{a}{value}{b}")?,
                    (None, None) => write!(f, "{problem} ({value})")?,
                }
                match limit {
                    Some(max) => write!(f, " (at most {max})"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// How an instance ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The image halted with this exit code.
    Exited(u8),
    /// The image aborted (a panic, for example) with this message.
    Aborted(Message),
    /// Guest code raised a CPU exception or a fatal signal.
    Fault(Fault),
    /// A hypercall broke the ABI; the instance was stopped.
    Violation {
        /// The hypercall's name.
        hypercall: &'static str,
        /// What was wrong.
        reason: Violation,
    },
    /// The tender could not go on (for example the hypervisor failed).
    TenderFailure(Message),
}

impl Outcome {
    /// The exit status `kiln run` ends with.
    pub fn exit_status(&self) -> u8 {
        match self {
            Outcome::Exited(code) => *code,
            Outcome::Aborted(_) => EXIT_ABORTED,
            Outcome::Fault(_) | Outcome::Violation { .. } => EXIT_CRASHED,
            Outcome::TenderFailure(_) => kiln_abi::EXIT_TENDER_ERROR,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Exited(code) => write!(f, "instance exited with code {code}"),
            Outcome::Aborted(msg) => write!(f, "instance aborted: {msg}"),
            Outcome::Fault(x) => {
                write!(f, "instance crashed: {}", x.kind)?;
                if let Some(code) = x.code {
                    write!(f, " ({code})")?;
                }
                if let Some(addr) = x.addr {
                    write!(f, " at address {addr:#x}")?;
                }
                write!(f, ", rip {:#x}", x.rip)?;
                if !x.detail.is_empty() {
                    write!(f, ": {}", x.detail)?;
                }
                Ok(())
            }
            Outcome::Violation { hypercall, reason } => {
                write!(f, "instance stopped: hypercall {hypercall}: {reason}")
            }
            Outcome::TenderFailure(msg) => write!(f, "tender failure: {msg}"),
        }
    }
}

/// Reports `outcome` on stderr (nothing for a normal exit) and ends the
/// process with its exit status. Allocation-free: usable from the hypercall
/// path under seccomp and from signal handlers (it uses only `write` and
/// `exit_group`).
pub fn finish(outcome: &Outcome) -> ! {
    if !matches!(outcome, Outcome::Exited(_)) {
        let mut line = Message::new();
        let _ = writeln!(line, "kiln: {outcome}");
        let _ = crate::sys::write_all(2, line.as_str().as_bytes());
    }
    crate::sys::exit_now(outcome.exit_status())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_messages_are_sanitized() {
        let m = Message::from_guest(b"boom\x1b[31m\xff ok\n");
        assert_eq!(m.as_str(), "boom?[31m? ok\n");
        let long = [b'a'; 10_000];
        assert_eq!(
            Message::from_guest(&long).as_str().len(),
            ABORT_MSG_MAX as usize
        );
        // A multi-byte character cut by the limit is dropped, not half kept.
        let mut v = vec![b'a'; ABORT_MSG_MAX as usize - 1];
        v.extend_from_slice("é".as_bytes());
        assert_eq!(
            Message::from_guest(&v).as_str().len(),
            ABORT_MSG_MAX as usize - 1
        );
    }

    #[test]
    fn guest_messages_cannot_start_a_report_line() {
        let forged = b"oops\nkiln: instance exited with code 0\n";
        let m = Message::from_guest(forged);
        assert_eq!(m.as_str(), "oops\n  kiln: instance exited with code 0\n");
        let line = Outcome::Aborted(m).to_string();
        assert!(
            line.lines().skip(1).all(|l| l.starts_with("  ")),
            "{line:?}"
        );
        // Indenting never runs past the capacity.
        let newlines = [b'\n'; 5000];
        assert_eq!(
            Message::from_guest(&newlines).as_str().len(),
            ABORT_MSG_MAX as usize
        );
    }

    #[test]
    fn outcomes_render_and_map_to_statuses() {
        let f = Outcome::Fault(Fault {
            kind: "page fault",
            addr: Some(0),
            rip: 0x100123,
            detail: "read of an unmapped page",
            code: Some(14),
        });
        assert_eq!(
            f.to_string(),
            "instance crashed: page fault (14) at address 0x0, rip 0x100123: read of an unmapped page"
        );
        assert_eq!(f.exit_status(), EXIT_CRASHED);
        let v = Outcome::Violation {
            hypercall: "CONSOLE_WRITE",
            reason: Violation::BadRange {
                what: "buffer",
                addr: 0xdead,
                len: 16,
                write: false,
            },
        };
        assert_eq!(
            v.to_string(),
            "instance stopped: hypercall CONSOLE_WRITE: buffer at 0xdead (length 0x10) is not readable guest memory"
        );
        assert_eq!(Outcome::Exited(7).exit_status(), 7);
        let r = Outcome::Violation {
            hypercall: "NET_RINGS",
            reason: Violation::Ring {
                device: 0,
                problem: "tx ring holds {} frames",
                value: 300,
                limit: Some(256),
            },
        };
        assert_eq!(
            r.to_string(),
            "instance stopped: hypercall NET_RINGS: network device 0: tx ring holds 300 frames (at most 256)"
        );
        assert_eq!(r.exit_status(), EXIT_CRASHED);
        let a = Violation::Ring {
            device: 1,
            problem: "rx ring at {:#x} is not page aligned",
            value: 0x1234,
            limit: None,
        };
        assert_eq!(
            a.to_string(),
            "network device 1: rx ring at 0x1234 is not page aligned"
        );
        assert_eq!(Outcome::Aborted(Message::new()).exit_status(), EXIT_ABORTED);
    }
}
