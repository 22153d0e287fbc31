//! Hypercall decoding and execution, identical on every tender.
//!
//! Arguments are read from guest memory as whole little-endian words into a
//! local array ("parse, then use"); every guest range is checked as a whole
//! before anything is read or written, so a rejected hypercall has no effect
//! at all. Nothing here allocates.
//!
//! READY answers EINVAL in `ret` for a nonzero reserved word (and reports
//! nothing); a READY after the first is accepted and reports nothing.
//!
//! Network hypercalls answer recoverable conditions in `ret`: ENODEV (no
//! such network device), EINVAL (a frame length outside 14..=MTU+14),
//! EAGAIN (no frame waiting; or, for NET_WRITE, the backend cannot take
//! the frame now), EIO (the frame was refused, or the device is down).

use crate::block::{self, BLOCK_SIZE};
use crate::host::Device;
use crate::net::Sent;
use crate::outcome::{Message, Outcome, Violation};
use crate::{sys, GuestMemory, Host};
use kiln_abi::{errno, nr, ABORT_MSG_MAX, BLOCK_IO_MAX, CONSOLE_WRITE_MAX};

/// What the tender does after a hypercall.
#[derive(Debug)]
pub enum Control {
    /// Resume the guest.
    Continue,
    /// End the instance.
    Exit(Outcome),
}

/// Size of the bounce buffer used to move data between guest memory and
/// host files; small enough for the guest stack that spt runs this on.
const CHUNK: usize = 4096;

struct Call<'a, M: GuestMemory> {
    mem: &'a mut M,
    name: &'static str,
}

type Result<T> = std::result::Result<T, Outcome>;

impl<M: GuestMemory> Call<'_, M> {
    fn violation(&self, reason: Violation) -> Outcome {
        Outcome::Violation {
            hypercall: self.name,
            reason,
        }
    }

    /// The violation for the guest range `(addr, len)` named `what`.
    fn bad_range(&self, what: &'static str, addr: u64, len: u64, write: bool) -> Outcome {
        self.violation(Violation::BadRange {
            what,
            addr,
            len,
            write,
        })
    }

    fn check(&self, what: &'static str, addr: u64, len: u64, write: bool) -> Result<()> {
        self.mem
            .check(addr, len, write)
            .map_err(|_| self.bad_range(what, addr, len, write))
    }

    /// Reads `buf.len()` bytes at `at`, a part of the guest range
    /// `(addr, len)` named `what`; a failure names the whole range.
    fn read_part(
        &self,
        what: &'static str,
        (addr, len): (u64, u64),
        at: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        self.mem
            .read(at, buf)
            .map_err(|_| self.bad_range(what, addr, len, false))
    }

    /// Writes `data` at `at`, a part of the guest range `(addr, len)` named `what`.
    fn write_part(
        &mut self,
        what: &'static str,
        (addr, len): (u64, u64),
        at: u64,
        data: &[u8],
    ) -> Result<()> {
        self.mem
            .write(at, data)
            .map_err(|_| self.bad_range(what, addr, len, true))
    }

    /// Reads the argument struct: `N` little-endian u64 words at `addr`.
    fn args<const N: usize>(&self, addr: u64) -> Result<[u64; N]> {
        let len = (N * 8) as u64;
        // The struct is written back by most hypercalls: it must be writable.
        self.check("argument struct", addr, len, true)?;
        let mut raw = [0u8; 64];
        self.read_part("argument struct", (addr, len), addr, &mut raw[..N * 8])?;
        let mut words = [0u64; N];
        for (i, w) in words.iter_mut().enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[i * 8..i * 8 + 8]);
            *w = u64::from_le_bytes(b);
        }
        Ok(words)
    }

    /// Writes word `index` of the argument struct at `addr`.
    fn set(&mut self, addr: u64, index: u64, value: u64) -> Result<()> {
        let at = addr + index * 8;
        self.write_part("argument struct", (at, 8), at, &value.to_le_bytes())
    }

    fn limit(&self, what: &'static str, len: u64, max: u64) -> Result<()> {
        if len > max {
            return Err(self.violation(Violation::TooLong { what, len, max }));
        }
        Ok(())
    }
}

/// Performs hypercall `number` whose argument struct is at guest address
/// `arg`. Unknown numbers and arguments that are not guest memory end the
/// instance with [`Outcome::Violation`]; recoverable errors (a device that
/// does not exist, a failed host read) are returned to the guest in `ret`.
pub fn dispatch(host: &mut Host, mem: &mut impl GuestMemory, number: u32, arg: u64) -> Control {
    let mut call = Call {
        mem,
        name: nr::name(number),
    };
    match run(host, &mut call, number, arg) {
        Ok(()) => Control::Continue,
        Err(outcome) => Control::Exit(outcome),
    }
}

fn run<M: GuestMemory>(
    host: &mut Host,
    call: &mut Call<'_, M>,
    number: u32,
    arg: u64,
) -> Result<()> {
    match number {
        nr::CONSOLE_WRITE => {
            let [buf, len] = call.args::<2>(arg)?;
            call.limit("buffer", len, CONSOLE_WRITE_MAX)?;
            call.check("buffer", buf, len, false)?;
            let mut chunk = [0u8; CHUNK];
            let mut done = 0;
            while done < len {
                let n = (len - done).min(CHUNK as u64) as usize;
                call.read_part("buffer", (buf, len), buf + done, &mut chunk[..n])?;
                // The console is best effort: a closed stdout must not stop the guest.
                let _ = sys::write_all(1, &chunk[..n]);
                done += n as u64;
            }
            Ok(())
        }
        nr::CLOCK => {
            call.args::<2>(arg)?;
            call.set(arg, 0, sys::clock_ns(libc::CLOCK_MONOTONIC))?;
            call.set(arg, 1, sys::clock_ns(libc::CLOCK_REALTIME))
        }
        nr::POLL => {
            let [deadline, _] = call.args::<2>(arg)?;
            let ready = host.poll(deadline);
            call.set(arg, 1, ready)
        }
        nr::NET_WRITE => {
            let [device, buf, len, _] = call.args::<4>(arg)?;
            let ret = net_write(host, call, device, buf, len)?;
            call.set(arg, 3, ret as u64)
        }
        nr::NET_READ => {
            let [device, buf, len, _] = call.args::<4>(arg)?;
            let ret = net_read(host, call, device, buf, len)?;
            call.set(arg, 3, ret as u64)
        }
        nr::NET_RINGS => {
            call.args::<4>(arg)?;
            // No tender offers rings yet: the guest keeps NET_READ/NET_WRITE.
            call.set(arg, 3, errno::ENODEV as u64)
        }
        nr::READY => {
            let [reserved, _] = call.args::<2>(arg)?;
            let ret = if reserved != 0 {
                errno::EINVAL
            } else {
                host.ready.signal();
                0
            };
            call.set(arg, 1, ret as u64)
        }
        nr::BLOCK_READ | nr::BLOCK_WRITE => {
            let [device, offset, buf, len, _] = call.args::<5>(arg)?;
            call.limit("buffer", len, BLOCK_IO_MAX)?;
            let reading = number == nr::BLOCK_READ;
            call.check("buffer", buf, len, reading)?;
            let ret = block_io(host, call, device, offset, buf, len, reading)?;
            call.set(arg, 4, ret as u64)
        }
        nr::HALT => {
            let [code] = call.args::<1>(arg)?;
            Err(Outcome::Exited(code as u8))
        }
        nr::ABORT => {
            let [msg, len] = call.args::<2>(arg)?;
            let len = len.min(ABORT_MSG_MAX);
            call.check("message", msg, len, false)?;
            let mut bytes = [0u8; ABORT_MSG_MAX as usize];
            call.read_part("message", (msg, len), msg, &mut bytes[..len as usize])?;
            Err(Outcome::Aborted(Message::from_guest(
                &bytes[..len as usize],
            )))
        }
        other => Err(call.violation(Violation::UnknownNumber(other))),
    }
}

/// NET_WRITE: one frame from guest memory to the device's backend.
fn net_write<M: GuestMemory>(
    host: &mut Host,
    call: &mut Call<'_, M>,
    device: u64,
    buf: u64,
    len: u64,
) -> Result<i64> {
    let Some(dev) = host.net_device(device) else {
        return Ok(errno::ENODEV);
    };
    // Not a frame this device carries (shorter than an Ethernet header,
    // longer than MTU + 14): the guest's mistake, and recoverable.
    let Some(frame) = usize::try_from(len).ok().and_then(|n| dev.tx_buffer(n)) else {
        return Ok(errno::EINVAL);
    };
    call.check("buffer", buf, len, false)?;
    call.read_part("buffer", (buf, len), buf, frame)?;
    Ok(match dev.send(len as usize) {
        Sent::Ok => len as i64,
        Sent::Busy => errno::EAGAIN,
        Sent::Refused | Sent::Down => errno::EIO,
    })
}

/// NET_READ: one waiting frame from the device's backend to guest memory.
/// A frame longer than the guest's buffer is dropped and the next one is
/// returned (guest buffers are at least MTU + 14 bytes, so only frames the
/// device could never carry are lost this way).
fn net_read<M: GuestMemory>(
    host: &mut Host,
    call: &mut Call<'_, M>,
    device: u64,
    buf: u64,
    len: u64,
) -> Result<i64> {
    let Some(dev) = host.net_device(device) else {
        return Ok(errno::ENODEV);
    };
    call.check("buffer", buf, len, true)?;
    let cap = usize::try_from(len).unwrap_or(usize::MAX);
    let mem = &mut *call.mem;
    match dev.recv(cap, |frame| {
        mem.write(buf, frame).map(|()| frame.len() as i64)
    }) {
        Ok(Some(Ok(n))) => Ok(n),
        Ok(Some(Err(_))) => Err(call.bad_range("buffer", buf, len, true)),
        Ok(None) => Ok(errno::EAGAIN),
        Err(_) => Ok(errno::EIO),
    }
}

fn block_io<M: GuestMemory>(
    host: &mut Host,
    call: &mut Call<'_, M>,
    device: u64,
    offset: u64,
    buf: u64,
    len: u64,
    reading: bool,
) -> Result<i64> {
    let Some((_, Device::Block { file, capacity })) = usize::try_from(device)
        .ok()
        .and_then(|i| host.devices.get(i))
    else {
        return Ok(errno::ENODEV);
    };
    // This check is the boundary on hvt, where the guest cannot reach
    // tender code; both filters pin the same bounds behind it
    // (`block::rules`), which is all that holds on spt.
    let bs = u64::from(BLOCK_SIZE);
    if offset % bs != 0
        || len % bs != 0
        || offset.checked_add(len).is_none_or(|end| end > *capacity)
    {
        return Ok(errno::EINVAL);
    }
    // Only the piece sizes of `block`, whose offsets and counts the
    // sandboxes pin: a short transfer is EIO, not a retry with another
    // length.
    let mut piece = [0u8; block::PIECE_MAX];
    for (at, n) in block::pieces(offset, len) {
        let guest = buf + (at - offset);
        if reading {
            if !block::read_piece(file, &mut piece[..n], at) {
                return Ok(errno::EIO);
            }
            call.write_part("buffer", (buf, len), guest, &piece[..n])?;
        } else {
            call.read_part("buffer", (buf, len), guest, &mut piece[..n])?;
            if !block::write_piece(file, &piece[..n], at) {
                return Ok(errno::EIO);
            }
        }
    }
    Ok(len as i64)
}
