//! [`GuestMemory`] for spt: guest addresses are this process's own
//! addresses, so every access is first checked against the guest's
//! [`Regions`] and only then copied with a plain memory copy.

use kiln_tender::{GuestMemory, MemError};

use crate::regions::{Access, Regions};
use crate::sys;

/// The guest memory of the instance running in this process.
#[derive(Debug, Clone)]
pub struct SptMemory {
    regions: Regions,
}

impl SptMemory {
    /// Guest memory as `regions` describe it. The ranges must stay mapped,
    /// with at least the rights the table grants, for as long as this value
    /// is used: the loader maps them before building it and never unmaps
    /// them once the guest runs.
    pub fn new(regions: Regions) -> SptMemory {
        SptMemory { regions }
    }
}

impl GuestMemory for SptMemory {
    fn check(&self, addr: u64, len: u64, write: bool) -> Result<(), MemError> {
        let access = if write { Access::Write } else { Access::Read };
        if self.regions.allows(access, addr, len) {
            Ok(())
        } else {
            Err(MemError { addr, len, write })
        }
    }

    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.check(addr, buf.len() as u64, false)?;
        if !buf.is_empty() {
            // SAFETY: `check` proved the whole range readable guest memory,
            // which stays mapped for the life of the process (see `new`).
            unsafe { sys::read_guest(addr, buf) };
        }
        Ok(())
    }

    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), MemError> {
        self.check(addr, data.len() as u64, true)?;
        if !data.is_empty() {
            // SAFETY: `check` proved the whole range writable guest memory,
            // which stays mapped for the life of the process (see `new`).
            unsafe { sys::write_guest(addr, data) };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Span;
    use crate::sys::Mapping;
    use kiln_abi::PAGE_SIZE;

    /// Three pages of real memory: read-only, read-write, then an unmapped
    /// (inaccessible) one, the way the loader leaves a segment and a gap.
    fn memory() -> (Mapping, SptMemory) {
        let mut m = Mapping::anywhere(3 * PAGE_SIZE, "test").unwrap();
        let base = m.span().start;
        m.fill(0, b"rodata");
        let ro = Span {
            start: base,
            end: base + PAGE_SIZE,
        };
        let rw = Span {
            start: base + PAGE_SIZE,
            end: base + 2 * PAGE_SIZE,
        };
        let mem = SptMemory::new(Regions::new(vec![ro, rw], vec![rw]));
        (m, mem)
    }

    #[test]
    fn reads_and_writes_inside_the_regions() {
        let (m, mut mem) = memory();
        let base = m.span().start;
        let mut buf = [0u8; 6];
        mem.read(base, &mut buf).unwrap();
        assert_eq!(&buf, b"rodata");
        mem.write(base + PAGE_SIZE + 8, b"hello").unwrap();
        // A range crossing from the read-only page into the writable one is
        // readable as a whole.
        let mut two = [0u8; 16];
        mem.read(base + PAGE_SIZE - 3, &mut two).unwrap();
        assert_eq!(&two[11..16], b"hello");
        mem.read(base + 2 * PAGE_SIZE - 6, &mut buf).unwrap();
    }

    #[test]
    fn refuses_everything_else() {
        let (m, mut mem) = memory();
        let base = m.span().start;
        let mut buf = [0u8; 8];
        // Writes to the read-only page, and partly into it.
        let e = mem.write(base, b"x").unwrap_err();
        assert_eq!(
            e,
            MemError {
                addr: base,
                len: 1,
                write: true
            }
        );
        assert!(mem.write(base + PAGE_SIZE - 1, b"xy").is_err());
        // Past the end, into the third page the table does not list.
        assert!(mem.read(base + 2 * PAGE_SIZE - 4, &mut buf).is_err());
        assert!(mem.write(base + 2 * PAGE_SIZE, b"x").is_err());
        // The tender's own memory: this very buffer, and a static.
        static TENDER: [u8; 8] = [0; 8];
        assert!(mem.read(buf.as_ptr() as u64, &mut [0u8; 8]).is_err());
        assert!(mem.read(TENDER.as_ptr() as u64, &mut buf).is_err());
        assert!(mem.write(TENDER.as_ptr() as u64, b"x").is_err());
        // Null and wrap-around.
        assert!(mem.read(0, &mut buf).is_err());
        assert!(mem.read(u64::MAX - 2, &mut buf).is_err());
        assert!(mem.check(base, u64::MAX, false).is_err());
        // Nothing was changed by the refused writes.
        mem.read(base, &mut buf[..6]).unwrap();
        assert_eq!(&buf[..6], b"rodata");
    }

    #[test]
    fn empty_accesses_touch_nothing() {
        let (_m, mut mem) = memory();
        mem.read(1, &mut []).unwrap();
        mem.write(1, &[]).unwrap();
        assert!(mem.check(0xdead, 0, true).is_ok());
    }
}
