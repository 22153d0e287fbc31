//! hvt's shared-memory network rings against a hostile guest. The fuzzer
//! places the two rings (NET_RINGS' addresses, checked against the guest
//! memory map of a real image layout), then plays the guest, which writes
//! whatever it likes into the rings between the tender's passes, and the
//! backend, which offers frames of any length and takes frames only when
//! it has room. The real `kiln_hvt::rings` code runs against memory that
//! holds the two rings and nothing else.
//!
//! Properties:
//! * placement is accepted exactly when both rings are page aligned, lie
//!   wholly in memory the image may write and do not overlap;
//! * no pass reads or writes guest memory outside the two rings (it would
//!   fail as `RingError::Memory`), and none panics;
//! * an impossible index or length ends the instance with a violation,
//!   and only an impossible one does;
//! * frames leave exactly as the guest put them in the transmit slots,
//!   short ones are dropped, a busy backend keeps the frame in the ring;
//!   frames arrive in the receive slots exactly as the backend gave them,
//!   never more than a ring's worth, and the producer index says so.
#![no_main]

use kiln_abi::{
    Manifest, NET_RING_CONSUMER, NET_RING_PRODUCER, NET_RING_SIZE, NET_RING_SLOT0, NET_RING_SLOTS,
    NET_RING_WANTS_KICK, NET_SLOT_FRAME, NET_SLOT_SIZE, PAGE_SIZE,
};
use kiln_hvt::layout::{Layout, Mapping};
use kiln_hvt::rings::{
    check_placement, rx_pending, tx_room_awaited, FramePort, RingError, RingMemory, RingPair,
    Rings, VecRingMemory,
};
use kiln_tender::net::Sent;
use libfuzzer_sys::fuzz_target;
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::OnceLock;

/// The device's largest frame (MTU 1500 + 14).
const FRAME_MAX: usize = 1514;
const SLOTS: u32 = NET_RING_SLOTS as u32;

fn layout() -> &'static Layout {
    static L: OnceLock<Layout> = OnceLock::new();
    L.get_or_init(|| {
        let image = kiln_image::Image::parse(kiln_image::synthetic::minimal(&Manifest::new()))
            .expect("synthetic image");
        Layout::new(image.segments(), 8 << 20, 64 << 10, 200).expect("layout")
    })
}

/// Whether every page of `[addr, addr + NET_RING_SIZE)` is user-writable.
fn writable(mappings: &[Mapping], addr: u64) -> bool {
    (0..NET_RING_SIZE / PAGE_SIZE).all(|i| {
        let Some(page) = addr.checked_add(i * PAGE_SIZE) else {
            return false;
        };
        mappings
            .iter()
            .any(|m| m.start <= page && page < m.end && m.perm.user && m.perm.write)
    })
}

/// The backend: frames to hand in, frames sent, and how many more frames
/// it takes before it is busy.
#[derive(Default)]
struct Backend {
    incoming: VecDeque<Vec<u8>>,
    sent: Vec<Vec<u8>>,
    buf: Vec<u8>,
    room: Option<usize>,
}

impl FramePort for Backend {
    fn tx_buffer(&mut self, len: usize) -> Option<&mut [u8]> {
        if !(14..=FRAME_MAX).contains(&len) {
            return None;
        }
        self.buf.resize(len, 0);
        Some(&mut self.buf[..])
    }
    fn send(&mut self, len: usize) -> Sent {
        match self.room.as_mut() {
            Some(0) => return Sent::Busy,
            Some(r) => *r -= 1,
            None => {}
        }
        self.sent.push(self.buf[..len].to_vec());
        Sent::Ok
    }
    fn recv<R>(&mut self, cap: usize, deliver: impl FnOnce(&[u8]) -> R) -> Option<R> {
        // As a NetDevice does: frames longer than the buffer are dropped.
        loop {
            let f = self.incoming.pop_front()?;
            if f.len() <= cap {
                return Some(deliver(&f));
            }
        }
    }
}

fn slot(ring: u64, index: u32) -> u64 {
    ring + NET_RING_SLOT0 + (u64::from(index) % NET_RING_SLOTS) * NET_SLOT_SIZE
}

fn word(mem: &VecRingMemory, addr: u64) -> u32 {
    mem.load(addr, Relaxed).expect("inside the rings")
}

fn set(mem: &VecRingMemory, addr: u64, value: u32) {
    mem.store(addr, value, Relaxed).expect("inside the rings");
}

fn is_violation<T>(r: &Result<T, RingError>) -> bool {
    match r {
        Err(RingError::Memory(addr)) => panic!("the rings touched {addr:#x}, outside the rings"),
        Err(RingError::Violation(_)) => true,
        Ok(_) => false,
    }
}

fuzz_target!(|data: &[u8]| {
    // Input: rx page (u16), tx page (u16), a byte offset added to rx,
    // then ops of 8 bytes.
    if data.len() < 5 {
        return;
    }
    let page = |at: usize| u64::from(u16::from_le_bytes([data[at], data[at + 1]])) * PAGE_SIZE;
    let pair = RingPair {
        rx: page(0) + u64::from(data[4] & 0x0f) * 8,
        tx: page(2),
    };
    let l = layout();
    let placed = check_placement(0, pair, &l.mappings, &[]);
    let sound = pair.rx % PAGE_SIZE == 0
        && writable(&l.mappings, pair.rx)
        && writable(&l.mappings, pair.tx)
        && pair.rx.abs_diff(pair.tx) >= NET_RING_SIZE;
    assert_eq!(placed.is_ok(), sound, "{pair:x?}: {placed:?}");
    if !sound {
        return;
    }

    let size = NET_RING_SIZE as usize;
    let mem = VecRingMemory::new(&[(pair.rx, size), (pair.tx, size)]);
    let mut rings = Rings::new(0, pair, FRAME_MAX);
    rings.reset(&mem).expect("reset stays in the rings");
    let mut port = Backend::default();
    // The tender's own indices, as far as the guest can know them.
    let mut tx_consumer = 0u32;
    let mut rx_producer = 0u32;
    let mut counter = 0u8;

    for op in data[5..].chunks_exact(8) {
        let (kind, a) = (op[0] % 12, op[1]);
        let b = u16::from_le_bytes([op[2], op[3]]);
        let c = u32::from_le_bytes(op[4..8].try_into().unwrap());
        match kind {
            // The guest queues a frame of `b` bytes in the next free slot
            // (or `a` slots further on) and publishes it.
            0 => {
                let producer = word(&mem, pair.tx + NET_RING_PRODUCER);
                let index = producer.wrapping_add(u32::from(a % 4));
                let s = slot(pair.tx, index);
                let len = usize::from(b) % (NET_SLOT_SIZE as usize - 8 + 1);
                counter = counter.wrapping_add(1);
                set(&mem, s, len as u32);
                mem.write(s + NET_SLOT_FRAME, &vec![counter; len]).unwrap();
                set(&mem, pair.tx + NET_RING_PRODUCER, index.wrapping_add(1));
            }
            // The guest writes any word anywhere in either ring.
            1 => {
                let ring = if a & 1 == 0 { pair.rx } else { pair.tx };
                let at = (u64::from(b) * 4) % NET_RING_SIZE;
                set(&mem, ring + at, c);
            }
            // The guest writes a header word of either ring.
            2 => {
                let ring = if a & 1 == 0 { pair.rx } else { pair.tx };
                let at = [NET_RING_PRODUCER, NET_RING_CONSUMER, NET_RING_WANTS_KICK]
                    [usize::from(a >> 1) % 3];
                set(&mem, ring + at, c);
            }
            // The guest consumes `b` received frames (or all of them).
            3 => {
                let consumer = word(&mem, pair.rx + NET_RING_CONSUMER);
                let producer = word(&mem, pair.rx + NET_RING_PRODUCER);
                let waiting = producer.wrapping_sub(consumer);
                let n = if b == 0 {
                    waiting
                } else {
                    u32::from(b).min(waiting)
                };
                set(&mem, pair.rx + NET_RING_CONSUMER, consumer.wrapping_add(n));
            }
            // The backend has a frame of `b` bytes for the guest.
            4 => {
                counter = counter.wrapping_add(1);
                port.incoming
                    .push_back(vec![counter; usize::from(b) % 2100]);
            }
            5 => {
                port.room = if a == 0xff {
                    None
                } else {
                    Some(usize::from(a))
                }
            }
            // The I/O thread: a pass over the transmit ring.
            6 | 7 => {
                let producer = word(&mem, pair.tx + NET_RING_PRODUCER);
                let queued = producer.wrapping_sub(tx_consumer);
                // What the guest put in, read before the tender looks.
                let slots: Vec<(u32, Vec<u8>)> = (0..queued.min(SLOTS))
                    .map(|i| {
                        let s = slot(pair.tx, tx_consumer.wrapping_add(i));
                        let len = word(&mem, s);
                        let mut f = vec![0; (len as usize).min(FRAME_MAX)];
                        mem.read(s + NET_SLOT_FRAME, &mut f).unwrap();
                        (len, f)
                    })
                    .collect();
                let sent_before = port.sent.len();
                let room_before = port.room;
                let result = rings.drain_tx(&mem, &mut port);
                if is_violation(&result) {
                    // Only for a count above a ring, or a length above a
                    // frame before the backend stalled.
                    let stall_at = room_before.map(|r| {
                        slots
                            .iter()
                            .enumerate()
                            .filter(|(_, (len, _))| (14..=FRAME_MAX as u32).contains(len))
                            .nth(r)
                            .map_or(usize::MAX, |(i, _)| i)
                    });
                    let bad_len = slots.iter().position(|(len, _)| *len > FRAME_MAX as u32);
                    assert!(
                        queued > SLOTS || bad_len.is_some_and(|i| stall_at.is_none_or(|s| i < s)),
                        "a violation for a sound transmit ring"
                    );
                    return;
                }
                assert!(queued <= SLOTS, "{queued} frames queued and no violation");
                let pass = result.unwrap();
                // Frames went out whole and in order; short ones dropped.
                let out = &port.sent[sent_before..];
                let taken = &slots[..pass.consumed as usize];
                assert!(
                    taken.iter().all(|(len, _)| *len <= FRAME_MAX as u32),
                    "a frame longer than the device's was taken"
                );
                let expect: Vec<&Vec<u8>> = taken
                    .iter()
                    .filter(|(len, _)| *len >= 14)
                    .map(|(_, f)| f)
                    .collect();
                assert!(out.iter().eq(expect.iter().copied()), "frames left changed");
                assert_eq!(pass.sent as usize, out.len());
                assert_eq!(pass.dropped as usize, taken.len() - out.len());
                assert!(
                    pass.stalled || pass.consumed == queued,
                    "frames left behind"
                );
                tx_consumer = tx_consumer.wrapping_add(pass.consumed);
                if pass.consumed > 0 {
                    assert_eq!(word(&mem, pair.tx + NET_RING_CONSUMER), tx_consumer);
                }
            }
            // The I/O thread: a pass over the receive ring.
            8 | 9 => {
                let consumer = word(&mem, pair.rx + NET_RING_CONSUMER);
                let used = rx_producer.wrapping_sub(consumer);
                let offered: Vec<Vec<u8>> = port.incoming.iter().cloned().collect();
                let result = rings.fill_rx(&mem, &mut port);
                if is_violation(&result) {
                    assert!(used > SLOTS, "a violation for a sound receive ring");
                    return;
                }
                assert!(used <= SLOTS, "{used} frames in the ring and no violation");
                let pass = result.unwrap();
                let delivered: Vec<&Vec<u8>> = offered
                    .iter()
                    .filter(|f| f.len() <= FRAME_MAX)
                    .take(pass.produced as usize)
                    .collect();
                assert_eq!(delivered.len(), pass.produced as usize);
                for (i, f) in delivered.iter().enumerate() {
                    let s = slot(pair.rx, rx_producer.wrapping_add(i as u32));
                    assert_eq!(word(&mem, s) as usize, f.len(), "slot length");
                    let mut got = vec![0; f.len()];
                    mem.read(s + NET_SLOT_FRAME, &mut got).unwrap();
                    assert!(&got == *f, "a received frame changed in the ring");
                }
                rx_producer = rx_producer.wrapping_add(pass.produced);
                let now_used = rx_producer.wrapping_sub(consumer);
                assert!(now_used <= SLOTS, "more than a ring's worth in the ring");
                assert_eq!(pass.full, now_used == SLOTS);
                if pass.produced > 0 {
                    assert_eq!(word(&mem, pair.rx + NET_RING_PRODUCER), rx_producer);
                }
                if !pass.full {
                    assert!(
                        port.incoming.is_empty(),
                        "frames left waiting with room in the ring"
                    );
                }
            }
            // POLL's looks at the rings.
            10 => {
                let producer = word(&mem, pair.rx + NET_RING_PRODUCER);
                let consumer = word(&mem, pair.rx + NET_RING_CONSUMER);
                let used = producer.wrapping_sub(consumer);
                let result = rx_pending(&mem, 0, pair.rx);
                if is_violation(&result) {
                    assert!(used > SLOTS);
                    return;
                }
                assert_eq!(result.unwrap(), used != 0);
            }
            _ => {
                let wants = word(&mem, pair.tx + NET_RING_WANTS_KICK);
                let queued = word(&mem, pair.tx + NET_RING_PRODUCER)
                    .wrapping_sub(word(&mem, pair.tx + NET_RING_CONSUMER));
                assert_eq!(tx_room_awaited(&mem, pair.tx), wants != 0 && queued < SLOTS);
            }
        }
    }
});
