//! The system calls of the loader, wrapped: anonymous mappings at fixed
//! addresses (never over an existing mapping), protection changes, raw
//! copies to and from validated guest ranges, and the async-signal-safe
//! `write` used on the fault path.
//!
//! All of this module's `unsafe` is here; callers get safe functions whose
//! preconditions are stated and checked where they can be.

use std::io;

use crate::layout::{Prot, Span};

/// Why a mapping could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// Something (the tender's binary, its heap, a library) already lives
    /// in the range.
    #[error("{what} at {start:#x}..{end:#x} would overlap memory the tender already uses")]
    Clash {
        /// What was to be mapped.
        what: String,
        /// First address.
        start: u64,
        /// One past the last.
        end: u64,
    },
    /// The kernel refused for another reason.
    #[error("cannot map {what} at {start:#x}..{end:#x}")]
    Map {
        /// What was to be mapped.
        what: String,
        /// First address.
        start: u64,
        /// One past the last.
        end: u64,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// `mprotect` failed.
    #[error("cannot set the protection of {what} at {start:#x}..{end:#x}")]
    Protect {
        /// What was protected.
        what: String,
        /// First address.
        start: u64,
        /// One past the last.
        end: u64,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// An anonymous private mapping this process made, unmapped on drop (the tender
/// forgets the mappings it hands to the guest).
#[derive(Debug)]
pub struct Mapping {
    span: Span,
}

impl Mapping {
    /// Maps `span` (page aligned, non-empty) at exactly that address with
    /// `prot`, failing with [`MapError::Clash`] rather than replacing
    /// anything already mapped there. `lazy` skips reserving swap for it
    /// (heap: the guest may never touch most of it).
    pub fn fixed(span: Span, prot: Prot, lazy: bool, what: &str) -> Result<Mapping, MapError> {
        let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE;
        if lazy {
            flags |= libc::MAP_NORESERVE;
        }
        let err = |source: io::Error| MapError::Map {
            what: what.to_string(),
            start: span.start,
            end: span.end,
            source,
        };
        let len =
            usize::try_from(span.len()).map_err(|_| err(io::ErrorKind::InvalidInput.into()))?;
        // SAFETY: an anonymous mapping with MAP_FIXED_NOREPLACE never
        // replaces an existing mapping (the kernel fails with EEXIST
        // instead), so no memory that Rust code refers to can change under
        // it. The address is only a number here.
        let got = unsafe {
            libc::mmap(
                span.start as *mut libc::c_void,
                len,
                prot.bits(),
                flags,
                -1,
                0,
            )
        };
        if got == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::EEXIST) {
                MapError::Clash {
                    what: what.to_string(),
                    start: span.start,
                    end: span.end,
                }
            } else {
                err(e)
            });
        }
        let mapping = Mapping {
            span: Span {
                start: got as u64,
                end: got as u64 + span.len(),
            },
        };
        if got as u64 != span.start {
            // A kernel older than 4.17 treats the unknown flag as a hint and
            // may place the mapping elsewhere; `mapping` unmaps it on drop.
            return Err(MapError::Clash {
                what: what.to_string(),
                start: span.start,
                end: span.end,
            });
        }
        Ok(mapping)
    }

    /// Maps `len` bytes wherever the kernel likes, read-write (the signal
    /// stack).
    pub fn anywhere(len: u64, what: &str) -> Result<Mapping, MapError> {
        let err = |source: io::Error| MapError::Map {
            what: what.to_string(),
            start: 0,
            end: len,
            source,
        };
        let size = usize::try_from(len).map_err(|_| err(io::ErrorKind::InvalidInput.into()))?;
        // SAFETY: a fresh anonymous mapping at an address of the kernel's
        // choosing cannot overlap memory in use.
        let got = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                Prot::RW.bits(),
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if got == libc::MAP_FAILED {
            return Err(err(io::Error::last_os_error()));
        }
        Ok(Mapping {
            span: Span {
                start: got as u64,
                end: got as u64 + len,
            },
        })
    }

    /// The mapped range.
    pub fn span(&self) -> Span {
        self.span
    }

    /// Copies `data` to `offset` bytes into the mapping. The mapping must
    /// still be writable (it is, until [`Mapping::protect`] says otherwise).
    pub fn fill(&mut self, offset: u64, data: &[u8]) {
        let fits = offset
            .checked_add(data.len() as u64)
            .is_some_and(|end| end <= self.span.len());
        assert!(fits, "fill beyond the end of a mapping");
        // SAFETY: the destination lies inside this mapping (checked just
        // above), which this process created and nothing else refers to;
        // the source is a live slice, and fresh anonymous memory cannot
        // overlap it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                (self.span.start + offset) as *mut u8,
                data.len(),
            );
        }
    }

    /// Changes the protection of the whole mapping.
    pub fn protect(&mut self, prot: Prot, what: &str) -> Result<(), MapError> {
        // SAFETY: the range is exactly this mapping, which no Rust
        // reference points into (only the guest uses it).
        let rc = unsafe {
            libc::mprotect(
                self.span.start as *mut libc::c_void,
                self.span.len() as usize,
                prot.bits(),
            )
        };
        if rc != 0 {
            return Err(MapError::Protect {
                what: what.to_string(),
                start: self.span.start,
                end: self.span.end,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the range is exactly a mapping this value created and
        // still owns; nothing refers into it once its owner is dropped.
        unsafe {
            libc::munmap(
                self.span.start as *mut libc::c_void,
                self.span.len() as usize,
            );
        }
    }
}

/// Copies guest bytes at `addr` into `buf`.
///
/// # Safety
///
/// `[addr, addr + buf.len())` must be readable memory that the tender
/// mapped for the guest and keeps mapped (checked with
/// [`crate::regions::Regions::allows`]).
pub unsafe fn read_guest(addr: u64, buf: &mut [u8]) {
    // SAFETY: the caller guarantees the source range is mapped and
    // readable; guest memory is never the tender's own, so it cannot
    // overlap `buf`.
    unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, buf.as_mut_ptr(), buf.len()) }
}

/// Copies `data` to guest memory at `addr`.
///
/// # Safety
///
/// `[addr, addr + data.len())` must be writable memory that the tender
/// mapped for the guest and keeps mapped (checked with
/// [`crate::regions::Regions::allows`]). Rust code holds no reference into
/// guest memory, so writing it breaks no aliasing rule.
pub unsafe fn write_guest(addr: u64, data: &[u8]) {
    // SAFETY: as the caller guarantees; `data` is tender memory and cannot
    // overlap guest memory.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), addr as *mut u8, data.len()) }
}

/// Writes all of `bytes` to `fd` with raw `write(2)` calls. Async-signal-safe,
/// allocation-free; errors are ignored (there is nowhere left to report them).
pub fn write_raw(fd: i32, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: the pointer and length describe a live slice.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_abi::PAGE_SIZE;

    #[test]
    fn fixed_mapping_never_replaces_an_existing_one() {
        let first = Mapping::anywhere(2 * PAGE_SIZE, "test").unwrap();
        let clash = Mapping::fixed(
            Span {
                start: first.span().start + PAGE_SIZE,
                end: first.span().end + PAGE_SIZE,
            },
            Prot::RW,
            false,
            "segment 3",
        )
        .unwrap_err();
        assert!(matches!(clash, MapError::Clash { .. }));
        assert!(clash.to_string().starts_with("segment 3 at 0x"), "{clash}");
    }

    #[test]
    fn fill_protect_and_guest_copies() {
        let mut m = Mapping::anywhere(PAGE_SIZE, "test").unwrap();
        m.fill(10, b"kiln");
        m.protect(Prot::R, "test").unwrap();
        let mut buf = [0u8; 6];
        // SAFETY: the range lies inside `m`, mapped readable.
        unsafe { read_guest(m.span().start + 9, &mut buf) };
        assert_eq!(&buf, b"\0kiln\0");
        m.protect(Prot::RW, "test").unwrap();
        // SAFETY: the range lies inside `m`, mapped writable.
        unsafe { write_guest(m.span().start + PAGE_SIZE - 2, b"ok") };
        // SAFETY: as above.
        unsafe { read_guest(m.span().start + PAGE_SIZE - 2, &mut buf[..2]) };
        assert_eq!(&buf[..2], b"ok");
    }

    #[test]
    #[should_panic(expected = "fill beyond")]
    fn fill_is_bounds_checked() {
        let mut m = Mapping::anywhere(PAGE_SIZE, "test").unwrap();
        m.fill(PAGE_SIZE - 1, b"ab");
    }
}
