//! The one way host code touches guest memory.

/// A guest range that may not be accessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{addr:#x}..+{len:#x} is not {} guest memory", if *.write { "writable" } else { "readable" })]
pub struct MemError {
    /// First guest address of the range.
    pub addr: u64,
    /// Its length.
    pub len: u64,
    /// Whether a write was refused (else a read).
    pub write: bool,
}

/// Checked access to one instance's guest memory. Implementations fail
/// unless the whole range lies in memory the guest itself may access in the
/// same way; a guest must never reach tender memory through a hypercall.
pub trait GuestMemory {
    /// Checks, without copying, that `[addr, addr + len)` may be read (or
    /// written, when `write`) as a whole.
    fn check(&self, addr: u64, len: u64, write: bool) -> Result<(), MemError>;
    /// Copies `buf.len()` bytes at guest address `addr` into `buf`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError>;
    /// Copies `data` to guest address `addr`.
    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), MemError>;
}

/// Guest memory held in a vector, starting at `base`: for tests and tools.
#[derive(Debug, Clone)]
pub struct VecMemory {
    /// Guest address of `bytes[0]`.
    pub base: u64,
    /// The contents.
    pub bytes: Vec<u8>,
}

impl VecMemory {
    fn range(
        &self,
        addr: u64,
        len: usize,
        write: bool,
    ) -> Result<std::ops::Range<usize>, MemError> {
        let err = MemError {
            addr,
            len: len as u64,
            write,
        };
        let start = addr.checked_sub(self.base).ok_or(err)?;
        let end = start.checked_add(len as u64).ok_or(err)?;
        if end > self.bytes.len() as u64 {
            return Err(err);
        }
        Ok(start as usize..end as usize)
    }
}

impl GuestMemory for VecMemory {
    fn check(&self, addr: u64, len: u64, write: bool) -> Result<(), MemError> {
        let len = usize::try_from(len).map_err(|_| MemError { addr, len, write })?;
        self.range(addr, len, write).map(|_| ())
    }
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let r = self.range(addr, buf.len(), false)?;
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }
    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), MemError> {
        let r = self.range(addr, data.len(), true)?;
        self.bytes[r].copy_from_slice(data);
        Ok(())
    }
}
