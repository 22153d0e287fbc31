//! Block devices declared with `entry!(main, block = ["name"])` and attached
//! with `kiln run --disk name=PATH`.
//!
//! ```ignore
//! let disk = kiln_rt::block::Device::open("data")?;
//! let mut sector = [0u8; 512];
//! disk.read_at(0, &mut sector)?;
//! ```
//!
//! Offsets and lengths must be multiples of the device's
//! [`block_size`](Device::block_size); transfers are split into hypercalls
//! of at most [`BLOCK_IO_MAX`] bytes.

use core::fmt;
use kiln_abi::{device, errno, nr, BlockIo, DeviceInfo, BLOCK_IO_MAX};

/// What went wrong with a block device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// No block device of that name is attached.
    NotFound,
    /// Offset or length is not a multiple of the block size.
    Unaligned,
    /// The range reaches past the end of the device.
    OutOfRange,
    /// The tender reported an error (a negative `errno` value).
    Io(i64),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotFound => f.write_str("no such block device"),
            Error::Unaligned => f.write_str("offset or length is not a multiple of the block size"),
            Error::OutOfRange => f.write_str("range reaches past the end of the device"),
            Error::Io(e) if *e == errno::EIO => f.write_str("I/O error on the host"),
            Error::Io(e) if *e == errno::EINVAL => f.write_str("invalid argument"),
            Error::Io(e) if *e == errno::ENODEV => f.write_str("no such device"),
            Error::Io(e) => write!(f, "block device error {e}"),
        }
    }
}

/// An attached block device.
#[derive(Clone, Copy, Debug)]
pub struct Device {
    index: u64,
    info: &'static DeviceInfo,
}

impl Device {
    /// The block device the manifest declared as `name`.
    pub fn open(name: &str) -> Result<Device, Error> {
        crate::boot::devices()
            .find(|(_, d)| d.kind == device::BLOCK && crate::boot::device_name(d) == name)
            .map(|(index, info)| Device {
                index: index as u64,
                info,
            })
            .ok_or(Error::NotFound)
    }

    /// Size of the device in bytes.
    pub fn capacity(&self) -> u64 {
        self.info.capacity
    }

    /// Size of one block in bytes: the unit of offsets and lengths.
    pub fn block_size(&self) -> u64 {
        u64::from(self.info.unit)
    }

    /// Reads `buf.len()` bytes at byte `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        let chunks = plan(offset, buf.len(), self.block_size(), self.capacity())?;
        for (offset, range) in chunks {
            let piece = &mut buf[range];
            let mut arg = BlockIo {
                device: self.index,
                offset,
                buf: piece.as_mut_ptr() as u64,
                len: piece.len() as u64,
                ret: 0,
            };
            // SAFETY: BLOCK_READ writes at most `len` bytes at `buf`, which is
            // `piece`, exclusively borrowed for the call.
            unsafe { crate::hypercall::hypercall(nr::BLOCK_READ, &mut arg) };
            check(arg.ret, piece.len())?;
        }
        Ok(())
    }

    /// Writes `data` at byte `offset`.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), Error> {
        let chunks = plan(offset, data.len(), self.block_size(), self.capacity())?;
        for (offset, range) in chunks {
            let piece = &data[range];
            let mut arg = BlockIo {
                device: self.index,
                offset,
                buf: piece.as_ptr() as u64,
                len: piece.len() as u64,
                ret: 0,
            };
            // SAFETY: BLOCK_WRITE only reads `len` bytes at `buf`, which is
            // `piece`, borrowed for the call.
            unsafe { crate::hypercall::hypercall(nr::BLOCK_WRITE, &mut arg) };
            check(arg.ret, piece.len())?;
        }
        Ok(())
    }
}

/// Turns a hypercall's `ret` into a result.
fn check(ret: i64, expected: usize) -> Result<(), Error> {
    if ret < 0 {
        Err(Error::Io(ret))
    } else if ret as u64 != expected as u64 {
        Err(Error::Io(errno::EIO))
    } else {
        Ok(())
    }
}

/// Checks a transfer and splits it into hypercall-sized pieces:
/// (device offset, range of the buffer).
fn plan(
    offset: u64,
    len: usize,
    block_size: u64,
    capacity: u64,
) -> Result<impl Iterator<Item = (u64, core::ops::Range<usize>)>, Error> {
    if block_size == 0
        || !offset.is_multiple_of(block_size)
        || !(len as u64).is_multiple_of(block_size)
    {
        return Err(Error::Unaligned);
    }
    match offset.checked_add(len as u64) {
        Some(end) if end <= capacity => {}
        _ => return Err(Error::OutOfRange),
    }
    // The largest multiple of the block size within one hypercall.
    let step = (BLOCK_IO_MAX / block_size * block_size).max(block_size) as usize;
    Ok((0..len)
        .step_by(step)
        .map(move |start| (offset + start as u64, start..len.min(start + step))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfers_are_checked() {
        assert!(matches!(plan(1, 512, 512, 4096), Err(Error::Unaligned)));
        assert!(matches!(plan(0, 100, 512, 4096), Err(Error::Unaligned)));
        assert!(matches!(plan(0, 512, 0, 4096), Err(Error::Unaligned)));
        assert!(matches!(plan(4096, 512, 512, 4096), Err(Error::OutOfRange)));
        assert!(matches!(
            plan(u64::MAX - 511, 512, 512, u64::MAX),
            Err(Error::OutOfRange)
        ));
        assert_eq!(plan(0, 0, 512, 0).unwrap().count(), 0);
    }

    #[test]
    fn large_transfers_split_at_the_hypercall_limit() {
        let max = BLOCK_IO_MAX as usize;
        let pieces: Vec<_> = plan(512, 2 * max + 1024, 512, u64::MAX).unwrap().collect();
        assert_eq!(
            pieces,
            [
                (512, 0..max),
                (512 + max as u64, max..2 * max),
                (512 + 2 * max as u64, 2 * max..2 * max + 1024),
            ]
        );
    }

    #[test]
    fn short_or_failed_transfers_are_errors() {
        assert_eq!(check(512, 512), Ok(()));
        assert_eq!(check(256, 512), Err(Error::Io(errno::EIO)));
        assert_eq!(check(errno::EINVAL, 512), Err(Error::Io(errno::EINVAL)));
    }
}
