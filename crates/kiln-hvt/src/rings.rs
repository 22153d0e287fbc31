//! The tender's side of the shared-memory network rings
//! ([`kiln_abi::nr::NET_RINGS`]).
//!
//! A ring lives in guest memory, so everything read from it is the guest's
//! word and is checked before use: the frame count between the indices
//! (at most [`NET_RING_SLOTS`]) and every transmit length (at most
//! [`NET_SLOT_FRAME_MAX`] and the device's MTU + 14). An impossible value is
//! a [`Violation::Ring`] that ends the instance. Each value is read from
//! guest memory exactly once (the length word, then the frame into the
//! tender's own buffer), so a guest rewriting a slot while the tender reads
//! it can only garble its own frame. The tender keeps its own indices (rx
//! producer, tx consumer) and only ever writes them to the ring, never
//! reads them back.
//!
//! Indices are read with acquire and written with release ordering (the
//! guest runs on another CPU); slot contents need no ordering of their own.
//! The back-pressure flag (`wants_kick`) is a Dekker handshake: each side
//! stores, issues a full fence, then loads the other side's word, so at
//! least one of them sees the other.
//!
//! The rings reach guest memory only through [`RingMemory`]: hvt's
//! `GuestMemoryMmap` in production, and memory whose contents a test or
//! the `net_rings` fuzz target controls ([`VecRingMemory`]), so the same
//! code is driven by both.
//!
//! Nothing here allocates: it runs on the I/O thread under seccomp.

use std::cell::RefCell;
use std::sync::atomic::{fence, Ordering};

use kiln_abi::{
    NET_RING_CONSUMER, NET_RING_PRODUCER, NET_RING_SIZE, NET_RING_SLOT0, NET_RING_SLOTS,
    NET_RING_WANTS_KICK, NET_SLOT_FRAME, NET_SLOT_FRAME_MAX, NET_SLOT_SIZE, PAGE_SIZE,
};
use kiln_tender::net::{NetDevice, Sent};
use kiln_tender::{MemError, Violation};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::Mapping;
use crate::memory::allowed;

/// Where one device's rings are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingPair {
    /// The receive ring (the tender produces).
    pub rx: u64,
    /// The transmit ring (the guest produces).
    pub tx: u64,
}

fn ring_violation(device: u64, problem: &'static str, value: u64, limit: Option<u64>) -> Violation {
    Violation::Ring {
        device,
        problem,
        value,
        limit,
    }
}

fn overlaps(a: u64, b: u64) -> bool {
    a.abs_diff(b) < NET_RING_SIZE
}

/// Checks where NET_RINGS wants device `device`'s rings: each page
/// aligned, wholly in memory the image may write itself (so never in the
/// BootInfo page, the tender's pages, the image's code or the guard page),
/// and overlapping neither each other nor the rings of other devices
/// (`others`).
pub fn check_placement(
    device: u64,
    pair: RingPair,
    mappings: &[Mapping],
    others: &[RingPair],
) -> Result<(), Violation> {
    for (what, addr) in [("rx ring", pair.rx), ("tx ring", pair.tx)] {
        if addr % PAGE_SIZE != 0 {
            let problem = if what == "rx ring" {
                "rx ring at {:#x} is not page aligned"
            } else {
                "tx ring at {:#x} is not page aligned"
            };
            return Err(ring_violation(device, problem, addr, None));
        }
        if !allowed(mappings, addr, NET_RING_SIZE, true) {
            return Err(Violation::BadRange {
                what,
                addr,
                len: NET_RING_SIZE,
                write: true,
            });
        }
    }
    if overlaps(pair.rx, pair.tx) {
        return Err(ring_violation(
            device,
            "tx ring at {:#x} overlaps the rx ring",
            pair.tx,
            None,
        ));
    }
    for other in others {
        for addr in [pair.rx, pair.tx] {
            if overlaps(addr, other.rx) || overlaps(addr, other.tx) {
                return Err(ring_violation(
                    device,
                    "ring at {:#x} overlaps the rings of another device",
                    addr,
                    None,
                ));
            }
        }
    }
    Ok(())
}

/// The guest memory rings live in, as the ring code needs it: 32-bit
/// words loaded and stored with an ordering (the guest runs on another
/// CPU while the tender reads and writes), and frames copied in and out.
/// It takes `&self` for writes because the vCPU thread and the I/O thread
/// share it. (kiln-tender's `GuestMemory` is the hypercall path's view:
/// checked against the image's rights, one thread, no ordering.)
///
/// The rings only ever pass addresses inside rings that
/// [`check_placement`] accepted; an error here is a tender bug
/// ([`RingError::Memory`]), not the guest's doing.
pub trait RingMemory {
    /// Loads the word at `addr`.
    fn load(&self, addr: u64, order: Ordering) -> Result<u32, MemError>;
    /// Stores `value` at `addr`.
    fn store(&self, addr: u64, value: u32, order: Ordering) -> Result<(), MemError>;
    /// Copies `buf.len()` bytes at `addr` into `buf`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError>;
    /// Copies `data` to `addr`.
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemError>;
}

/// hvt's guest memory.
impl RingMemory for GuestMemoryMmap {
    fn load(&self, addr: u64, order: Ordering) -> Result<u32, MemError> {
        Bytes::load(self, GuestAddress(addr), order).map_err(|_| MemError {
            addr,
            len: 4,
            write: false,
        })
    }
    fn store(&self, addr: u64, value: u32, order: Ordering) -> Result<(), MemError> {
        Bytes::store(self, value, GuestAddress(addr), order).map_err(|_| MemError {
            addr,
            len: 4,
            write: true,
        })
    }
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.read_slice(buf, GuestAddress(addr))
            .map_err(|_| MemError {
                addr,
                len: buf.len() as u64,
                write: false,
            })
    }
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemError> {
        self.write_slice(data, GuestAddress(addr))
            .map_err(|_| MemError {
                addr,
                len: data.len() as u64,
                write: true,
            })
    }
}

/// Guest memory held in vectors, one per area (`base`, contents): for
/// tests and the fuzz target, which put rings in it and play the guest.
/// Anything outside the areas is refused, so a test sees any access
/// outside the rings as [`RingError::Memory`]. Single-threaded: orderings
/// are moot.
#[derive(Debug, Default)]
pub struct VecRingMemory {
    areas: Vec<(u64, RefCell<Vec<u8>>)>,
}

impl VecRingMemory {
    /// Memory made of zeroed areas of `len` bytes at each `base`.
    pub fn new(areas: &[(u64, usize)]) -> Self {
        VecRingMemory {
            areas: areas
                .iter()
                .map(|&(base, len)| (base, RefCell::new(vec![0; len])))
                .collect(),
        }
    }

    /// Runs `f` on the bytes of `[addr, addr + len)`, if one area holds
    /// them all.
    fn with<R>(
        &self,
        addr: u64,
        len: usize,
        write: bool,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> Result<R, MemError> {
        let err = MemError {
            addr,
            len: len as u64,
            write,
        };
        for (base, bytes) in &self.areas {
            let Some(start) = addr.checked_sub(*base) else {
                continue;
            };
            let mut bytes = bytes.borrow_mut();
            let Some(end) = start
                .checked_add(len as u64)
                .filter(|&e| e <= bytes.len() as u64)
            else {
                continue;
            };
            return Ok(f(&mut bytes[start as usize..end as usize]));
        }
        Err(err)
    }
}

impl RingMemory for VecRingMemory {
    fn load(&self, addr: u64, _: Ordering) -> Result<u32, MemError> {
        self.with(addr, 4, false, |b| {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        })
    }
    fn store(&self, addr: u64, value: u32, _: Ordering) -> Result<(), MemError> {
        self.with(addr, 4, true, |b| b.copy_from_slice(&value.to_le_bytes()))
    }
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.with(addr, buf.len(), false, |b| buf.copy_from_slice(b))
    }
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemError> {
        self.with(addr, data.len(), true, |b| b.copy_from_slice(data))
    }
}

/// Why ring work stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingError {
    /// The guest broke the ring rules.
    Violation(Violation),
    /// Guest memory could not be accessed where a checked ring lies (a
    /// tender bug, not the guest's doing).
    Memory(u64),
}

/// The I/O edge the rings move frames to and from: a
/// [`kiln_tender::net::NetDevice`], or a test double.
pub trait FramePort {
    /// The buffer for a frame of `len` bytes to send; `None` when the
    /// device takes no frame of that length.
    fn tx_buffer(&mut self, len: usize) -> Option<&mut [u8]>;
    /// Sends the first `len` bytes of the buffer.
    fn send(&mut self, len: usize) -> Sent;
    /// Hands the next received frame of at most `cap` bytes to `deliver`;
    /// `None` when none is waiting (or the device is down).
    fn recv<R>(&mut self, cap: usize, deliver: impl FnOnce(&[u8]) -> R) -> Option<R>;
}

impl FramePort for NetDevice {
    fn tx_buffer(&mut self, len: usize) -> Option<&mut [u8]> {
        NetDevice::tx_buffer(self, len)
    }
    fn send(&mut self, len: usize) -> Sent {
        NetDevice::send(self, len)
    }
    fn recv<R>(&mut self, cap: usize, deliver: impl FnOnce(&[u8]) -> R) -> Option<R> {
        // A device that went down said so on stderr; it has no more input.
        NetDevice::recv(self, cap, deliver).ok().flatten()
    }
}

/// What one pass over the transmit ring did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TxPass {
    /// Frames taken from the ring (sent or dropped).
    pub consumed: u32,
    /// Frames sent.
    pub sent: u32,
    /// Frames dropped (too short for Ethernet, or refused by the backend).
    pub dropped: u32,
    /// The backend could not take a frame now; it stays in the ring.
    pub stalled: bool,
    /// The guest waits for room in the ring (its `wants_kick`) and room
    /// was made: wake it.
    pub wake_guest: bool,
}

/// What one pass over the receive ring did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RxPass {
    /// Frames placed in the ring.
    pub produced: u32,
    /// The ring is full: stop reading the backend until the guest kicks.
    pub full: bool,
}

/// The tender's state for one device's rings.
#[derive(Debug)]
pub struct Rings {
    device: u64,
    pair: RingPair,
    /// Largest frame: the device's MTU + 14, and at most what a slot holds.
    frame_max: u64,
    /// The tender's own indices: it writes them, never trusts the copies
    /// in guest memory.
    rx_producer: u32,
    tx_consumer: u32,
    /// `wants_kick` is set in the rx ring.
    rx_waiting: bool,
}

impl Rings {
    /// The rings of `device` at `pair` (checked by [`check_placement`]),
    /// carrying frames of at most `frame_max` bytes.
    pub fn new(device: u64, pair: RingPair, frame_max: usize) -> Rings {
        Rings {
            device,
            pair,
            frame_max: (frame_max as u64).min(NET_SLOT_FRAME_MAX),
            rx_producer: 0,
            tx_consumer: 0,
            rx_waiting: false,
        }
    }

    /// The device index.
    pub fn device(&self) -> u64 {
        self.device
    }

    /// Whether the receive ring is full and the tender waits for a kick.
    pub fn rx_waiting(&self) -> bool {
        self.rx_waiting
    }

    /// Writes the tender's words of both headers (indices start at 0).
    pub fn reset(&self, mem: &impl RingMemory) -> Result<(), RingError> {
        store(mem, self.pair.rx + NET_RING_PRODUCER, 0, Ordering::Release)?;
        store(
            mem,
            self.pair.rx + NET_RING_WANTS_KICK,
            0,
            Ordering::Release,
        )?;
        store(mem, self.pair.tx + NET_RING_CONSUMER, 0, Ordering::Release)
    }

    fn violation(&self, problem: &'static str, value: u64, limit: Option<u64>) -> RingError {
        RingError::Violation(ring_violation(self.device, problem, value, limit))
    }

    /// Moves the frames the guest queued in the transmit ring to `port`,
    /// at most one ring's worth. A frame the backend cannot take now stays
    /// in the ring (`stalled`).
    pub fn drain_tx(
        &mut self,
        mem: &impl RingMemory,
        port: &mut impl FramePort,
    ) -> Result<TxPass, RingError> {
        let tx = self.pair.tx;
        let producer = load(mem, tx + NET_RING_PRODUCER, Ordering::Acquire)?;
        let queued = producer.wrapping_sub(self.tx_consumer);
        if u64::from(queued) > NET_RING_SLOTS {
            return Err(self.violation(
                "tx ring producer index is {} frames ahead of the consumer",
                u64::from(queued),
                Some(NET_RING_SLOTS),
            ));
        }
        let mut pass = TxPass::default();
        for _ in 0..queued {
            let slot = slot_addr(tx, self.tx_consumer);
            // Read once; the acquire load of `producer` ordered it.
            let len = u64::from(load(mem, slot, Ordering::Relaxed)?);
            if len > self.frame_max {
                return Err(self.violation(
                    "tx ring slot holds a frame of {} bytes",
                    len,
                    Some(self.frame_max),
                ));
            }
            match port.tx_buffer(len as usize) {
                // Shorter than an Ethernet header: dropped, as NET_WRITE
                // refuses it with EINVAL.
                None => pass.dropped += 1,
                Some(buf) => {
                    mem.read(slot + NET_SLOT_FRAME, buf)
                        .map_err(|_| RingError::Memory(slot))?;
                    match port.send(len as usize) {
                        Sent::Ok => pass.sent += 1,
                        Sent::Busy => {
                            pass.stalled = true;
                            break;
                        }
                        Sent::Refused | Sent::Down => pass.dropped += 1,
                    }
                }
            }
            self.tx_consumer = self.tx_consumer.wrapping_add(1);
            pass.consumed += 1;
        }
        if pass.consumed > 0 {
            store(
                mem,
                tx + NET_RING_CONSUMER,
                self.tx_consumer,
                Ordering::Release,
            )?;
            fence(Ordering::SeqCst);
            pass.wake_guest = load(mem, tx + NET_RING_WANTS_KICK, Ordering::Relaxed)? != 0;
        }
        Ok(pass)
    }

    /// Moves frames waiting at `port` into the receive ring while it has
    /// room. When it fills up, sets `wants_kick` and reports `full`: the
    /// caller then stops reading the backend until the guest kicks.
    pub fn fill_rx(
        &mut self,
        mem: &impl RingMemory,
        port: &mut impl FramePort,
    ) -> Result<RxPass, RingError> {
        let rx = self.pair.rx;
        let mut pass = RxPass::default();
        // Twice at most: a second round when the guest freed slots while
        // the tender was setting `wants_kick`.
        for _ in 0..2 {
            let consumer = load(mem, rx + NET_RING_CONSUMER, Ordering::Acquire)?;
            let used = u64::from(self.rx_producer.wrapping_sub(consumer));
            if used > NET_RING_SLOTS {
                return Err(self.violation(
                    "rx ring consumer index leaves {} frames in the ring",
                    used,
                    Some(NET_RING_SLOTS),
                ));
            }
            let mut free = NET_RING_SLOTS - used;
            let mut produced = 0u32;
            while free > 0 {
                let slot = slot_addr(rx, self.rx_producer.wrapping_add(produced));
                let cap = self.frame_max as usize;
                let got = port.recv(cap, |frame| -> Result<(), RingError> {
                    // `recv` never hands over more than `cap` bytes; the
                    // slot holds `frame_max` at least.
                    let frame = frame.get(..cap).unwrap_or(frame);
                    mem.write(slot + NET_SLOT_FRAME, frame)
                        .map_err(|_| RingError::Memory(slot))?;
                    store(mem, slot, frame.len() as u32, Ordering::Relaxed)
                });
                match got {
                    None => break,
                    Some(r) => r?,
                }
                produced += 1;
                free -= 1;
            }
            if produced > 0 {
                self.rx_producer = self.rx_producer.wrapping_add(produced);
                store(
                    mem,
                    rx + NET_RING_PRODUCER,
                    self.rx_producer,
                    Ordering::Release,
                )?;
                pass.produced += produced;
            }
            if free > 0 {
                if self.rx_waiting {
                    store(mem, rx + NET_RING_WANTS_KICK, 0, Ordering::Relaxed)?;
                    self.rx_waiting = false;
                }
                pass.full = false;
                return Ok(pass);
            }
            // Full: ask for a kick, then look again in case the guest
            // consumed meanwhile and did not see the flag.
            if !self.rx_waiting {
                store(mem, rx + NET_RING_WANTS_KICK, 1, Ordering::Relaxed)?;
                self.rx_waiting = true;
            }
            fence(Ordering::SeqCst);
            let consumer = load(mem, rx + NET_RING_CONSUMER, Ordering::Acquire)?;
            if u64::from(self.rx_producer.wrapping_sub(consumer)) >= NET_RING_SLOTS {
                pass.full = true;
                return Ok(pass);
            }
        }
        pass.full = self.rx_waiting;
        Ok(pass)
    }
}

/// Whether the receive ring of `device` at `rx` holds frames the guest has
/// not consumed (for POLL). The indices are the guest's to write, so the
/// same rule the I/O thread enforces holds here too: a consumer index that
/// leaves more than a ring's worth of frames is a violation, not a reason to
/// answer every POLL at once (which would let a guest spin the vCPU thread
/// with no I/O thread ever looking at the ring).
pub fn rx_pending(mem: &impl RingMemory, device: u64, rx: u64) -> Result<bool, RingError> {
    let producer = load(mem, rx + NET_RING_PRODUCER, Ordering::Acquire)?;
    let consumer = load(mem, rx + NET_RING_CONSUMER, Ordering::Acquire)?;
    let used = u64::from(producer.wrapping_sub(consumer));
    if used > NET_RING_SLOTS {
        return Err(RingError::Violation(ring_violation(
            device,
            "rx ring consumer index leaves {} frames in the ring",
            used,
            Some(NET_RING_SLOTS),
        )));
    }
    Ok(used != 0)
}

/// Whether the guest waits for room in the transmit ring at `tx` and there
/// is some (for POLL).
pub fn tx_room_awaited(mem: &impl RingMemory, tx: u64) -> bool {
    let wants = load(mem, tx + NET_RING_WANTS_KICK, Ordering::Acquire);
    let producer = load(mem, tx + NET_RING_PRODUCER, Ordering::Acquire);
    let consumer = load(mem, tx + NET_RING_CONSUMER, Ordering::Acquire);
    matches!((wants, producer, consumer),
        (Ok(w), Ok(p), Ok(c)) if w != 0 && u64::from(p.wrapping_sub(c)) < NET_RING_SLOTS)
}

fn slot_addr(ring: u64, index: u32) -> u64 {
    ring + NET_RING_SLOT0 + (u64::from(index) % NET_RING_SLOTS) * NET_SLOT_SIZE
}

fn load(mem: &impl RingMemory, addr: u64, order: Ordering) -> Result<u32, RingError> {
    mem.load(addr, order).map_err(|_| RingError::Memory(addr))
}

fn store(mem: &impl RingMemory, addr: u64, value: u32, order: Ordering) -> Result<(), RingError> {
    mem.store(addr, value, order)
        .map_err(|_| RingError::Memory(addr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::tests::hello_segments;
    use crate::layout::Layout;
    use std::collections::VecDeque;

    /// A fake backend: frames to deliver, frames sent, and a room limit.
    #[derive(Default)]
    struct Fake {
        incoming: VecDeque<Vec<u8>>,
        sent: Vec<Vec<u8>>,
        buf: Vec<u8>,
        room: Option<usize>,
    }

    impl FramePort for Fake {
        fn tx_buffer(&mut self, len: usize) -> Option<&mut [u8]> {
            if !(14..=1514).contains(&len) {
                return None;
            }
            self.buf.resize(len, 0);
            Some(&mut self.buf[..])
        }
        fn send(&mut self, len: usize) -> Sent {
            if self.room == Some(self.sent.len()) {
                return Sent::Busy;
            }
            self.sent.push(self.buf[..len].to_vec());
            Sent::Ok
        }
        fn recv<R>(&mut self, cap: usize, deliver: impl FnOnce(&[u8]) -> R) -> Option<R> {
            loop {
                let f = self.incoming.pop_front()?;
                if f.len() <= cap {
                    return Some(deliver(&f));
                }
            }
        }
    }

    const MEM: u64 = 8 << 20;
    const RX: u64 = 0x40_0000;
    const TX: u64 = RX + NET_RING_SIZE + PAGE_SIZE * 3;

    fn setup() -> (GuestMemoryMmap, Rings) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        let r = Rings::new(0, RingPair { rx: RX, tx: TX }, 1514);
        r.reset(&mem).unwrap();
        (mem, r)
    }

    fn put(mem: &impl RingMemory, addr: u64, v: u32) {
        RingMemory::store(mem, addr, v, Ordering::Release).unwrap();
    }

    fn get(mem: &impl RingMemory, addr: u64) -> u32 {
        RingMemory::load(mem, addr, Ordering::Acquire).unwrap()
    }

    /// The guest's side of a transmit: frame into slot, then producer.
    fn guest_send(mem: &impl RingMemory, index: u32, frame: &[u8]) {
        let slot = slot_addr(TX, index);
        put(mem, slot, frame.len() as u32);
        RingMemory::write(mem, slot + NET_SLOT_FRAME, frame).unwrap();
        put(mem, TX + NET_RING_PRODUCER, index.wrapping_add(1));
    }

    fn ring_problem(e: RingError) -> &'static str {
        match e {
            RingError::Violation(Violation::Ring { problem, .. }) => problem,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn transmit_moves_frames_and_publishes_the_consumer() {
        let (mem, mut r) = setup();
        let mut port = Fake::default();
        guest_send(&mem, 0, &[1; 60]);
        guest_send(&mem, 1, &[2; 1514]);
        guest_send(&mem, 2, &[3; 5]); // too short: dropped
        let pass = r.drain_tx(&mem, &mut port).unwrap();
        assert_eq!((pass.consumed, pass.sent, pass.dropped), (3, 2, 1));
        assert_eq!(port.sent, vec![vec![1; 60], vec![2; 1514]]);
        assert_eq!(get(&mem, TX + NET_RING_CONSUMER), 3);
        assert!(!pass.wake_guest);
        // Nothing new: nothing happens.
        assert_eq!(r.drain_tx(&mem, &mut port).unwrap().consumed, 0);
    }

    #[test]
    fn a_busy_backend_leaves_the_frame_in_the_ring() {
        let (mem, mut r) = setup();
        let mut port = Fake {
            room: Some(1),
            ..Fake::default()
        };
        guest_send(&mem, 0, &[1; 60]);
        guest_send(&mem, 1, &[2; 60]);
        put(&mem, TX + NET_RING_WANTS_KICK, 1);
        let pass = r.drain_tx(&mem, &mut port).unwrap();
        assert!(pass.stalled && pass.wake_guest);
        assert_eq!(pass.consumed, 1);
        port.room = None;
        let pass = r.drain_tx(&mem, &mut port).unwrap();
        assert_eq!((pass.consumed, pass.stalled), (1, false));
        assert_eq!(port.sent.len(), 2);
    }

    #[test]
    fn indices_wrap_at_two_to_the_32() {
        let (mem, mut r) = setup();
        let mut port = Fake::default();
        r.tx_consumer = u32::MAX;
        guest_send(&mem, u32::MAX, &[9; 64]);
        assert_eq!(get(&mem, TX + NET_RING_PRODUCER), 0);
        let pass = r.drain_tx(&mem, &mut port).unwrap();
        assert_eq!(pass.sent, 1);
        assert_eq!(get(&mem, TX + NET_RING_CONSUMER), 0);
    }

    #[test]
    fn impossible_transmit_values_are_violations() {
        let (mem, mut r) = setup();
        let mut port = Fake::default();
        put(&mem, TX + NET_RING_PRODUCER, 257);
        let e = r.drain_tx(&mem, &mut port).unwrap_err();
        assert_eq!(
            e,
            RingError::Violation(Violation::Ring {
                device: 0,
                problem: "tx ring producer index is {} frames ahead of the consumer",
                value: 257,
                limit: Some(256),
            })
        );
        // Behind the consumer is just as impossible.
        put(&mem, TX + NET_RING_PRODUCER, u32::MAX);
        assert!(r.drain_tx(&mem, &mut port).is_err());
        // A full ring is fine.
        let (mem, mut r) = setup();
        for i in 0..256 {
            guest_send(&mem, i, &[0; 14]);
        }
        assert_eq!(r.drain_tx(&mem, &mut port).unwrap().sent, 256);
        // Lengths: over the MTU, over a slot, absurd.
        for len in [1515, 2041, u32::MAX] {
            let (mem, mut r) = setup();
            put(&mem, slot_addr(TX, 0), len);
            put(&mem, TX + NET_RING_PRODUCER, 1);
            let e = r.drain_tx(&mem, &mut port).unwrap_err();
            assert_eq!(ring_problem(e), "tx ring slot holds a frame of {} bytes");
        }
    }

    #[test]
    fn receive_fills_the_ring_then_waits_for_a_kick() {
        let (mem, mut r) = setup();
        let mut port = Fake::default();
        for i in 0..300u32 {
            port.incoming
                .push_back(vec![i as u8; 60 + (i as usize % 7)]);
        }
        port.incoming.insert(5, vec![0; 3000]); // too long for the device: skipped
        let pass = r.fill_rx(&mem, &mut port).unwrap();
        assert_eq!(
            pass,
            RxPass {
                produced: 256,
                full: true
            }
        );
        assert_eq!(get(&mem, RX + NET_RING_PRODUCER), 256);
        assert_eq!(get(&mem, RX + NET_RING_WANTS_KICK), 1);
        let slot = slot_addr(RX, 7);
        assert_eq!(get(&mem, slot), 60);
        let mut b = [0u8; 60];
        mem.read_slice(&mut b, GuestAddress(slot + NET_SLOT_FRAME))
            .unwrap();
        assert_eq!(b, [7; 60]);
        // Nothing consumed: still full, nothing read.
        assert_eq!(r.fill_rx(&mem, &mut port).unwrap().produced, 0);
        assert_eq!(port.incoming.len(), 44);
        // The guest consumes 10 and kicks.
        put(&mem, RX + NET_RING_CONSUMER, 10);
        let pass = r.fill_rx(&mem, &mut port).unwrap();
        assert_eq!(
            pass,
            RxPass {
                produced: 10,
                full: true
            }
        );
        put(&mem, RX + NET_RING_CONSUMER, 266);
        let pass = r.fill_rx(&mem, &mut port).unwrap();
        assert_eq!(
            pass,
            RxPass {
                produced: 34,
                full: false
            }
        );
        assert_eq!(get(&mem, RX + NET_RING_WANTS_KICK), 0, "flag cleared");
        assert!(rx_pending(&mem, 0, RX).unwrap());
        put(&mem, RX + NET_RING_CONSUMER, 300);
        assert!(!rx_pending(&mem, 0, RX).unwrap());
        // A consumer run ahead of the producer is caught at POLL too.
        put(&mem, RX + NET_RING_CONSUMER, 301);
        assert!(matches!(
            rx_pending(&mem, 0, RX),
            Err(RingError::Violation(Violation::Ring {
                value: 0xffff_ffff,
                ..
            }))
        ));
    }

    #[test]
    fn an_impossible_receive_consumer_is_a_violation() {
        let (mem, mut r) = setup();
        let mut port = Fake::default();
        port.incoming.push_back(vec![1; 60]);
        r.fill_rx(&mem, &mut port).unwrap();
        put(&mem, RX + NET_RING_CONSUMER, 2); // ahead of the producer (1)
        let e = r.fill_rx(&mem, &mut port).unwrap_err();
        assert_eq!(
            ring_problem(e),
            "rx ring consumer index leaves {} frames in the ring"
        );
    }

    #[test]
    fn guest_waiting_for_transmit_room_is_seen() {
        let (mem, _) = setup();
        assert!(!tx_room_awaited(&mem, TX));
        put(&mem, TX + NET_RING_WANTS_KICK, 1);
        assert!(tx_room_awaited(&mem, TX));
        put(&mem, TX + NET_RING_PRODUCER, 256);
        assert!(!tx_room_awaited(&mem, TX), "still full");
    }

    fn is_violation<T: std::fmt::Debug>(r: Result<T, RingError>) -> bool {
        matches!(r, Err(RingError::Violation(_)))
    }

    /// Memory that holds the two rings and nothing else: every ring
    /// operation, on good and on hostile indices and lengths, stays inside
    /// them (an access outside would be `RingError::Memory`).
    #[test]
    fn ring_work_touches_only_the_rings() {
        let mem = VecRingMemory::new(&[(RX, NET_RING_SIZE as usize), (TX, NET_RING_SIZE as usize)]);
        let mut r = Rings::new(0, RingPair { rx: RX, tx: TX }, 1514);
        r.reset(&mem).unwrap();
        let mut port = Fake::default();
        // Every slot three times over, the indices wrapping past 2^32.
        r.tx_consumer = u32::MAX - 300;
        r.rx_producer = u32::MAX - 300;
        put(&mem, RX + NET_RING_CONSUMER, u32::MAX - 300);
        for round in 0..3u32 {
            for i in 0..256u32 {
                let index = (u32::MAX - 300).wrapping_add(round * 256 + i);
                guest_send(&mem, index, &[i as u8; 1514]);
                port.incoming.push_back(vec![i as u8; 14 + i as usize]);
            }
            assert_eq!(r.drain_tx(&mem, &mut port).unwrap().sent, 256);
            assert_eq!(r.fill_rx(&mem, &mut port).unwrap().produced, 256);
            put(
                &mem,
                RX + NET_RING_CONSUMER,
                get(&mem, RX + NET_RING_PRODUCER),
            );
            assert!(!rx_pending(&mem, 0, RX).unwrap());
            assert!(!tx_room_awaited(&mem, TX));
        }
        // Hostile words end in violations, never in a stray access: a
        // producer behind the consumer, an absurd frame length, a
        // consumer ahead of the producer.
        put(&mem, TX + NET_RING_PRODUCER, r.tx_consumer.wrapping_sub(1));
        assert!(is_violation(r.drain_tx(&mem, &mut port)));
        put(&mem, slot_addr(TX, r.tx_consumer), u32::MAX);
        put(&mem, TX + NET_RING_PRODUCER, r.tx_consumer.wrapping_add(1));
        assert!(is_violation(r.drain_tx(&mem, &mut port)));
        let producer = get(&mem, RX + NET_RING_PRODUCER);
        put(&mem, RX + NET_RING_CONSUMER, producer.wrapping_add(1));
        port.incoming.push_back(vec![1; 60]);
        assert!(is_violation(r.fill_rx(&mem, &mut port)));
        assert!(is_violation(rx_pending(&mem, 0, RX)));
        // And the memory does refuse what lies outside the rings.
        assert_eq!(
            RingMemory::load(&mem, RX - 4, Ordering::Relaxed),
            Err(MemError {
                addr: RX - 4,
                len: 4,
                write: false
            })
        );
        assert!(RingMemory::write(&mem, TX + NET_RING_SIZE - 2, &[0; 4]).is_err());
    }

    #[test]
    fn placement_rules() {
        let l = Layout::new(&hello_segments(), 8 << 20, 64 << 10, 200).unwrap();
        let m = &l.mappings;
        let ok = RingPair {
            rx: l.heap_start,
            tx: l.heap_start + NET_RING_SIZE,
        };
        assert_eq!(check_placement(0, ok, m, &[]), Ok(()));
        let bad = |rx, tx| check_placement(0, RingPair { rx, tx }, m, &[]).unwrap_err();
        assert!(matches!(
            bad(ok.rx + 8, ok.tx),
            Violation::Ring {
                problem: "rx ring at {:#x} is not page aligned",
                ..
            }
        ));
        assert!(matches!(
            bad(ok.rx, ok.rx + PAGE_SIZE),
            Violation::Ring {
                problem: "tx ring at {:#x} overlaps the rx ring",
                ..
            }
        ));
        // BootInfo (read-only), code, the tender's pages, past the end,
        // across the guard page.
        for addr in [
            l.boot_info,
            kiln_abi::IMAGE_BASE,
            0x1000,
            0,
            l.mem_size,
            l.stack_bottom - PAGE_SIZE * 2,
        ] {
            assert!(
                matches!(
                    bad(addr, ok.tx),
                    Violation::BadRange {
                        what: "rx ring",
                        ..
                    }
                ),
                "{addr:#x}"
            );
        }
        assert!(matches!(
            bad(ok.rx, !(PAGE_SIZE - 1)),
            Violation::BadRange {
                what: "tx ring",
                ..
            }
        ));
        // Another device's rings.
        let e = check_placement(
            1,
            RingPair {
                rx: ok.tx,
                tx: ok.tx + NET_RING_SIZE,
            },
            m,
            &[ok],
        )
        .unwrap_err();
        assert!(matches!(e, Violation::Ring { device: 1, .. }));
    }
}
