//! READY: telling whoever started the instance that the application
//! serves.
//!
//! The first READY writes one byte, `b'R'`, to the descriptor given with
//! `kiln run --ready-fd N` (a pipe or socket of the parent, kilnd) and,
//! with `-v`, prints `kiln: ready after X.XX ms` (since `kiln run`
//! started). Later READYs change nothing. The descriptor is nonblocking
//! and the byte is written once: a reader that is slow (EAGAIN) or gone
//! (EPIPE; SIGPIPE is ignored) loses it, never the instance. It stays open
//! until the instance ends, so the reader sees end of file then. Allocation-free.

use crate::outcome::Message;
use std::fmt::Write as _;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

/// The byte a READY writes to the ready descriptor.
pub const READY_BYTE: u8 = b'R';

/// The ready state of one instance.
#[derive(Debug)]
pub(crate) struct ReadySignal {
    fd: Option<OwnedFd>,
    sent: bool,
    started: Instant,
    verbose: bool,
}

impl ReadySignal {
    pub(crate) fn new(fd: Option<OwnedFd>, started: Instant, verbose: bool) -> Self {
        ReadySignal {
            fd,
            sent: false,
            started,
            verbose,
        }
    }

    /// The descriptor READY writes to, if any.
    pub(crate) fn fd(&self) -> Option<RawFd> {
        self.fd.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Whether READY was reported.
    pub(crate) fn sent(&self) -> bool {
        self.sent
    }

    /// Reports the first READY; does nothing after that.
    pub(crate) fn signal(&mut self) {
        if self.sent {
            return;
        }
        self.sent = true;
        if let Some(fd) = &self.fd {
            // One nonblocking write; EAGAIN, EPIPE and the like are the
            // reader's loss (see the module comment).
            let _ = crate::net::write_once(fd.as_raw_fd(), &[READY_BYTE]);
        }
        if self.verbose {
            let ms = self.started.elapsed().as_secs_f64() * 1e3;
            let mut m = Message::new();
            let _ = writeln!(m, "kiln: ready after {ms:.2} ms");
            let _ = crate::sys::write_all(2, m.as_str().as_bytes());
        }
    }
}
