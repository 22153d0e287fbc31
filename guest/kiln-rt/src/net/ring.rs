//! The shared-memory ring driver ([`kiln_abi::nr::NET_RINGS`], hvt).
//!
//! Two rings in guest memory carry the frames: the image produces into
//! `tx` and consumes from `rx`, the tender's I/O thread does the opposite
//! (the layout and the rules are in [`kiln_abi::NetRings`]). Receiving
//! reads `rx` without any exit; transmitting fills `tx` slots and publishes
//! them, and [`flush`](NetDriver::flush) kicks the tender once per batch
//! with the doorbell, which KVM catches in the host kernel. When it has
//! nothing to do the executor still waits in POLL, which the tender answers
//! as soon as `rx` holds frames.
//!
//! The rings are slices of [`AtomicU32`], so this module needs no `unsafe`:
//! the indices are loaded with acquire and stored with release ordering,
//! slot words are copied with relaxed atomic accesses. The rings of the
//! device the stack drives live in a zero-initialized static (`.bss`):
//! zero without a single store, so a page of them is first touched when a
//! frame needs it. (Zeroing 1 MiB of heap instead cost about 1 ms of
//! start-up on hvt, where every first touch of a page faults to the host.)
//! Rings for any further device come from the heap, zeroed, and leaked:
//! the tender may use them for the rest of the instance's life.
//!
//! [`RingDriver::attach`] offers the rings to the tender; when the tender
//! declines (spt, or an hvt without rings: ENODEV) the stack keeps the
//! [`HypercallDriver`](super::driver::HypercallDriver). The environment
//! variable `KILN_NET_RINGS=off` (`kiln run -e KILN_NET_RINGS=off`) keeps
//! it too, for comparisons and tests of the hypercall path.

use alloc::vec::Vec;
use core::sync::atomic::{fence, AtomicBool, AtomicU32, Ordering};

use kiln_abi::{
    NET_RING_CONSUMER, NET_RING_KICK_BATCH, NET_RING_PRODUCER, NET_RING_SIZE, NET_RING_SLOT0,
    NET_RING_SLOTS, NET_RING_WANTS_KICK, NET_SLOT_FRAME, NET_SLOT_FRAME_MAX, NET_SLOT_SIZE,
    PAGE_SIZE,
};

use super::driver::{NetDriver, ETHERNET_HEADER_LEN};

const WORD: usize = 4;
const RING_WORDS: usize = NET_RING_SIZE as usize / WORD;
const PRODUCER: usize = NET_RING_PRODUCER as usize / WORD;
const CONSUMER: usize = NET_RING_CONSUMER as usize / WORD;
const WANTS_KICK: usize = NET_RING_WANTS_KICK as usize / WORD;
const SLOT0: usize = NET_RING_SLOT0 as usize / WORD;
const SLOT_WORDS: usize = NET_SLOT_SIZE as usize / WORD;
const FRAME: usize = NET_SLOT_FRAME as usize / WORD;
const SLOTS: u32 = NET_RING_SLOTS as u32;
const KICK_BATCH: u32 = NET_RING_KICK_BATCH as u32;

/// One ring: [`NET_RING_SIZE`] bytes of atomics.
#[derive(Clone, Copy)]
pub(crate) struct Ring {
    words: &'static [AtomicU32],
}

impl Ring {
    /// A ring over `words`, which must hold [`NET_RING_SIZE`] bytes.
    fn new(words: &'static [AtomicU32]) -> Option<Ring> {
        (words.len() == RING_WORDS).then_some(Ring { words })
    }

    /// The guest address of the ring.
    fn addr(&self) -> u64 {
        self.words.as_ptr() as u64
    }

    fn producer(&self) -> &AtomicU32 {
        &self.words[PRODUCER]
    }

    fn consumer(&self) -> &AtomicU32 {
        &self.words[CONSUMER]
    }

    fn wants_kick(&self) -> &AtomicU32 {
        &self.words[WANTS_KICK]
    }

    /// The words of the slot of `index` (length word, reserved word, frame).
    fn slot(&self, index: u32) -> &[AtomicU32] {
        let start = SLOT0 + (index % SLOTS) as usize * SLOT_WORDS;
        &self.words[start..start + SLOT_WORDS]
    }
}

/// Both rings of one device, page aligned.
#[repr(C, align(4096))]
struct RingArea([AtomicU32; 2 * RING_WORDS]);

const _: () = assert!(core::mem::align_of::<RingArea>() == PAGE_SIZE as usize);

/// The rings of the first device that asks: all zero, in `.bss`.
static RING_AREA: RingArea = RingArea([const { AtomicU32::new(0) }; 2 * RING_WORDS]);
/// Whether [`RING_AREA`] is handed out.
static RING_AREA_TAKEN: AtomicBool = AtomicBool::new(false);

/// Both rings, page aligned and zero, for good (the tender keeps using
/// them): the static area the first time, else from the heap. `None` when
/// the heap cannot spare them.
pub(crate) fn alloc_rings() -> Option<(Ring, Ring)> {
    static_rings().or_else(heap_rings)
}

/// The static ring area, once.
fn static_rings() -> Option<(Ring, Ring)> {
    if RING_AREA_TAKEN.swap(true, Ordering::AcqRel) {
        return None;
    }
    let (rx, tx) = RING_AREA.0.split_at(RING_WORDS);
    Some((Ring::new(rx)?, Ring::new(tx)?))
}

/// Both rings from the heap, zeroed.
fn heap_rings() -> Option<(Ring, Ring)> {
    let align = PAGE_SIZE as usize / WORD;
    let total = 2 * RING_WORDS + align;
    let mut words: Vec<AtomicU32> = Vec::new();
    words.try_reserve_exact(total).ok()?;
    words.resize_with(total, || AtomicU32::new(0));
    let all: &'static [AtomicU32] = words.leak();
    let to_page = (all.as_ptr() as usize).wrapping_neg() % PAGE_SIZE as usize;
    let rest = all.get(to_page / WORD..)?;
    let (rx, rest) = rest.split_at_checked(RING_WORDS)?;
    Some((Ring::new(rx)?, Ring::new(rest.get(..RING_WORDS)?)?))
}

/// Copies `frame` into the frame words of `slot`.
fn write_frame(slot: &[AtomicU32], frame: &[u8]) {
    for (word, chunk) in slot[FRAME..].iter().zip(frame.chunks(WORD)) {
        let mut b = [0u8; WORD];
        b[..chunk.len()].copy_from_slice(chunk);
        word.store(u32::from_le_bytes(b), Ordering::Relaxed);
    }
}

/// Copies the frame words of `slot` into `buf`.
fn read_frame(slot: &[AtomicU32], buf: &mut [u8]) {
    for (word, chunk) in slot[FRAME..].iter().zip(buf.chunks_mut(WORD)) {
        let b = word.load(Ordering::Relaxed).to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// A network device driven through NET_RINGS.
pub struct RingDriver {
    index: usize,
    mtu: usize,
    mac: [u8; 6],
    /// Largest frame: MTU + 14, at most what a slot holds.
    frame_max: usize,
    rx: Ring,
    tx: Ring,
    /// Our own indices (we are their only writer).
    rx_consumer: u32,
    tx_producer: u32,
    /// The other side's indices as last read.
    rx_producer_seen: u32,
    tx_consumer_seen: u32,
    /// Frames published since the last kick.
    unkicked: bool,
    /// Frames consumed while the tender waits for room, since the last kick.
    consumed_while_waited: u32,
    /// Rings the doorbell (the device index is its argument).
    kick: fn(usize),
}

impl core::fmt::Debug for RingDriver {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RingDriver")
            .field("index", &self.index)
            .field("rx", &self.rx.addr())
            .field("tx", &self.tx.addr())
            .finish()
    }
}

impl RingDriver {
    /// Offers the tender rings for device `index` (MTU and MAC from
    /// BootInfo). `None` when it declines, the heap cannot hold the rings, or
    /// `KILN_NET_RINGS=off`: keep the hypercall driver. Only hvt offers
    /// rings, so on spt nothing is allocated. Should hvt decline, the rings' megabyte stays
    /// allocated (it was handed to the tender, which might have kept it).
    pub fn attach(index: usize, mtu: usize, mac: [u8; 6]) -> Option<RingDriver> {
        if crate::boot::tender() != kiln_abi::tender::HVT
            || crate::env::var("KILN_NET_RINGS") == Some("off")
        {
            return None;
        }
        let (rx, tx) = alloc_rings()?;
        let ret = crate::hypercall::net_rings(index, rx.words, tx.words);
        if ret != 0 {
            log::debug!("net: device {index}: no shared rings ({ret}), using hypercalls");
            return None;
        }
        log::debug!(
            "net: device {index}: shared rings rx {:#x}, tx {:#x}",
            rx.addr(),
            tx.addr()
        );
        Some(RingDriver::with_rings(
            index,
            mtu,
            mac,
            rx,
            tx,
            crate::hypercall::net_kick,
        ))
    }

    /// A driver over rings the tender accepted (zeroed when handed over).
    pub(crate) fn with_rings(
        index: usize,
        mtu: usize,
        mac: [u8; 6],
        rx: Ring,
        tx: Ring,
        kick: fn(usize),
    ) -> RingDriver {
        RingDriver {
            index,
            mtu,
            mac,
            frame_max: (mtu + ETHERNET_HEADER_LEN).min(NET_SLOT_FRAME_MAX as usize),
            rx,
            tx,
            rx_consumer: 0,
            tx_producer: 0,
            rx_producer_seen: 0,
            tx_consumer_seen: 0,
            unkicked: false,
            consumed_while_waited: 0,
            kick,
        }
    }
}

impl NetDriver for RingDriver {
    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        loop {
            if self.rx_consumer == self.rx_producer_seen {
                self.rx_producer_seen = self.rx.producer().load(Ordering::Acquire);
                if self.rx_consumer == self.rx_producer_seen {
                    return None;
                }
            }
            let slot = self.rx.slot(self.rx_consumer);
            let len = slot[0].load(Ordering::Relaxed) as usize;
            // The tender never writes a frame longer than the device's; if
            // it did, the frame is dropped like an oversized one.
            let fits = len <= buf.len() && len <= self.frame_max;
            if fits {
                read_frame(slot, &mut buf[..len]);
            }
            self.rx_consumer = self.rx_consumer.wrapping_add(1);
            self.rx
                .consumer()
                .store(self.rx_consumer, Ordering::Release);
            // Back-pressure: the tender may be waiting for room.
            fence(Ordering::SeqCst);
            if self.rx.wants_kick().load(Ordering::Relaxed) != 0 {
                self.consumed_while_waited += 1;
                if self.consumed_while_waited >= KICK_BATCH {
                    self.consumed_while_waited = 0;
                    (self.kick)(self.index);
                }
            } else {
                self.consumed_while_waited = 0;
            }
            if fits {
                return Some(len);
            }
        }
    }

    fn transmit(&mut self, frame: &[u8]) -> bool {
        // A frame the tender would reject (a length it cannot carry ends
        // the instance) is dropped here instead.
        if frame.len() > self.frame_max {
            return false;
        }
        if self.tx_producer.wrapping_sub(self.tx_consumer_seen) >= SLOTS {
            self.tx_consumer_seen = self.tx.consumer().load(Ordering::Acquire);
            if self.tx_producer.wrapping_sub(self.tx_consumer_seen) >= SLOTS {
                // The tender is behind: make sure it knows, drop the frame
                // (TCP sends it again).
                self.flush();
                (self.kick)(self.index);
                return false;
            }
        }
        let slot = self.tx.slot(self.tx_producer);
        slot[0].store(frame.len() as u32, Ordering::Relaxed);
        write_frame(slot, frame);
        self.tx_producer = self.tx_producer.wrapping_add(1);
        self.tx
            .producer()
            .store(self.tx_producer, Ordering::Release);
        self.unkicked = true;
        true
    }

    fn input_pending(&self) -> bool {
        self.rx.producer().load(Ordering::Acquire) != self.rx_consumer
    }

    fn poll_interest(&self) -> u64 {
        if self.index < 64 {
            1 << self.index
        } else {
            0
        }
    }

    fn note_ready(&mut self, _ready: u64) {
        // `input_pending` reads the ring itself.
    }

    fn flush(&mut self) {
        if self.unkicked {
            self.unkicked = false;
            (self.kick)(self.index);
        }
    }

    fn mtu(&self) -> usize {
        self.mtu
    }

    fn mac(&self) -> [u8; 6] {
        self.mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    std::thread_local! {
        /// Kicks on this test's thread.
        static KICKS: Cell<usize> = const { Cell::new(0) };
    }

    fn count_kick(_device: usize) {
        KICKS.with(|k| k.set(k.get() + 1));
    }

    fn kicks() -> usize {
        KICKS.with(Cell::get)
    }

    #[test]
    fn the_static_area_is_handed_out_once_page_aligned_and_zero() {
        let (rx, tx) = static_rings().unwrap();
        assert_eq!(rx.addr(), RING_AREA.0.as_ptr() as u64);
        assert_eq!(rx.addr() % PAGE_SIZE, 0);
        assert_eq!(tx.addr(), rx.addr() + NET_RING_SIZE);
        assert!(rx
            .words
            .iter()
            .chain(tx.words)
            .all(|w| w.load(Ordering::Relaxed) == 0));
        assert!(static_rings().is_none());
        // Later devices get heap rings.
        let (rx2, _) = alloc_rings().unwrap();
        assert_ne!(rx2.addr(), rx.addr());
    }

    fn driver() -> (RingDriver, Ring, Ring) {
        let (rx, tx) = heap_rings().unwrap();
        assert_eq!(rx.addr() % PAGE_SIZE, 0);
        assert_eq!(tx.addr() % PAGE_SIZE, 0);
        assert!(tx.addr() >= rx.addr() + NET_RING_SIZE);
        (
            RingDriver::with_rings(0, 1500, [2, 0, 0, 0, 0, 1], rx, tx, count_kick),
            rx,
            tx,
        )
    }

    /// The tender's side: put a frame into `rx`.
    fn tender_put(rx: Ring, frame: &[u8]) {
        let p = rx.producer().load(Ordering::Relaxed);
        let slot = rx.slot(p);
        slot[0].store(frame.len() as u32, Ordering::Relaxed);
        write_frame(slot, frame);
        rx.producer().store(p.wrapping_add(1), Ordering::Release);
    }

    /// The tender's side: take a frame from `tx`.
    fn tender_take(tx: Ring) -> Option<Vec<u8>> {
        let c = tx.consumer().load(Ordering::Relaxed);
        if c == tx.producer().load(Ordering::Acquire) {
            return None;
        }
        let slot = tx.slot(c);
        let mut f = vec![0u8; slot[0].load(Ordering::Relaxed) as usize];
        read_frame(slot, &mut f);
        tx.consumer().store(c.wrapping_add(1), Ordering::Release);
        Some(f)
    }

    #[test]
    fn frames_travel_both_ways_with_one_kick_per_batch() {
        let (mut d, rx, tx) = driver();
        let before = kicks();
        let mut buf = [0u8; 1514];
        assert!(!d.input_pending());
        assert_eq!(d.receive(&mut buf), None);
        tender_put(rx, &[7; 61]);
        tender_put(rx, &[8; 1514]);
        assert!(d.input_pending());
        assert_eq!(d.receive(&mut buf), Some(61));
        assert_eq!(&buf[..61], &[7; 61]);
        assert_eq!(d.receive(&mut buf), Some(1514));
        assert_eq!(buf, [8; 1514]);
        assert_eq!(d.receive(&mut buf), None);
        assert_eq!(rx.consumer().load(Ordering::Relaxed), 2);

        assert!(d.transmit(&[1, 2, 3, 4, 5]));
        assert!(d.transmit(&[9; 1514]));
        assert!(!d.transmit(&[0; 1515]), "longer than the device's frames");
        d.flush();
        d.flush();
        assert_eq!(kicks() - before, 1);
        assert_eq!(tender_take(tx).unwrap(), vec![1, 2, 3, 4, 5]);
        assert_eq!(tender_take(tx).unwrap(), vec![9; 1514]);
        assert_eq!(tender_take(tx), None);
    }

    #[test]
    fn a_full_transmit_ring_drops_and_kicks() {
        let (mut d, _rx, tx) = driver();
        for _ in 0..SLOTS {
            assert!(d.transmit(&[0; 60]));
        }
        let before = kicks();
        assert!(!d.transmit(&[0; 60]));
        assert!(kicks() > before);
        tender_take(tx).unwrap();
        assert!(d.transmit(&[0; 60]), "room again");
    }

    #[test]
    fn a_waiting_tender_is_kicked_in_batches() {
        let (mut d, rx, _tx) = driver();
        for _ in 0..SLOTS {
            tender_put(rx, &[1; 60]);
        }
        rx.wants_kick().store(1, Ordering::Relaxed);
        let before = kicks();
        let mut buf = [0u8; 1514];
        for _ in 0..SLOTS {
            assert_eq!(d.receive(&mut buf), Some(60));
        }
        assert_eq!(kicks() - before, (SLOTS / KICK_BATCH) as usize);
    }

    #[test]
    fn oversized_frames_from_the_ring_are_skipped() {
        let (mut d, rx, _tx) = driver();
        tender_put(rx, &[1; 1600]);
        tender_put(rx, &[2; 64]);
        let mut buf = [0u8; 1514];
        assert_eq!(d.receive(&mut buf), Some(64));
        assert_eq!(d.receive(&mut buf), None);
    }
}
