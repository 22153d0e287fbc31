//! How fast hvt's ring code alone moves frames: nanoseconds per frame
//! through `Rings::drain_tx` (guest to backend) and `Rings::fill_rx`
//! (backend to guest) over real guest memory (`GuestMemoryMmap`), with a
//! backend that only copies. No KVM, no I/O thread, no sockets: the cost
//! of the ring checks and copies, to compare builds side by side.
//!
//! `cargo run --release -p kiln-hvt --example ring_bench [ROUNDS]`

use kiln_abi::{
    NET_RING_CONSUMER, NET_RING_PRODUCER, NET_RING_SIZE, NET_RING_SLOT0, NET_RING_SLOTS,
    NET_SLOT_FRAME, NET_SLOT_SIZE,
};
use kiln_hvt::rings::{FramePort, RingPair, Rings};
use kiln_tender::net::Sent;
use std::sync::atomic::Ordering;
use std::time::Instant;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const RX: u64 = 0x40_0000;
const TX: u64 = RX + NET_RING_SIZE;
const FRAME_MAX: usize = 1514;

/// A backend that copies frames out and hands the same frame in.
struct Copy {
    tx: Vec<u8>,
    rx: Vec<u8>,
    sent: u64,
    pending: u32,
}

impl FramePort for Copy {
    fn tx_buffer(&mut self, len: usize) -> Option<&mut [u8]> {
        (14..=FRAME_MAX).contains(&len).then(|| &mut self.tx[..len])
    }
    fn send(&mut self, len: usize) -> Sent {
        self.sent += len as u64;
        Sent::Ok
    }
    fn recv<R>(&mut self, cap: usize, deliver: impl FnOnce(&[u8]) -> R) -> Option<R> {
        if self.pending == 0 || self.rx.len() > cap {
            return None;
        }
        self.pending -= 1;
        Some(deliver(&self.rx))
    }
}

fn slot(ring: u64, index: u32) -> u64 {
    ring + NET_RING_SLOT0 + (u64::from(index) % NET_RING_SLOTS) * NET_SLOT_SIZE
}

fn main() {
    let rounds: u32 = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("ROUNDS is a number"))
        .unwrap_or(20_000);
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
    println!("frame bytes | tx ns/frame | rx ns/frame   ({rounds} rounds of {NET_RING_SLOTS} frames, best of 5)");
    for size in [64usize, 1514] {
        let frame = vec![0x5a; size];
        let mut best = (f64::MAX, f64::MAX);
        for _ in 0..5 {
            let mut rings = Rings::new(0, RingPair { rx: RX, tx: TX }, FRAME_MAX);
            rings.reset(&mem).unwrap();
            // The guest's words too: every repetition starts at index 0.
            for word in [RX + NET_RING_CONSUMER, TX + NET_RING_PRODUCER] {
                mem.store(0u32, GuestAddress(word), Ordering::Release)
                    .unwrap();
            }
            let mut port = Copy {
                tx: vec![0; FRAME_MAX],
                rx: frame.clone(),
                sent: 0,
                pending: 0,
            };
            let (mut tx_ns, mut rx_ns) = (0u128, 0u128);
            let mut producer = 0u32;
            let mut consumer = 0u32;
            for _ in 0..rounds {
                // The guest queues a ring's worth of frames.
                for _ in 0..NET_RING_SLOTS {
                    let s = slot(TX, producer);
                    mem.store(size as u32, GuestAddress(s), Ordering::Relaxed)
                        .unwrap();
                    mem.write_slice(&frame, GuestAddress(s + NET_SLOT_FRAME))
                        .unwrap();
                    producer = producer.wrapping_add(1);
                }
                mem.store(
                    producer,
                    GuestAddress(TX + NET_RING_PRODUCER),
                    Ordering::Release,
                )
                .unwrap();
                let t = Instant::now();
                let pass = rings.drain_tx(&mem, &mut port).unwrap();
                tx_ns += t.elapsed().as_nanos();
                assert_eq!(pass.sent as u64, NET_RING_SLOTS);
                // The backend has a ring's worth for the guest.
                port.pending = NET_RING_SLOTS as u32;
                let t = Instant::now();
                let pass = rings.fill_rx(&mem, &mut port).unwrap();
                rx_ns += t.elapsed().as_nanos();
                assert_eq!(pass.produced as u64, NET_RING_SLOTS);
                // The guest consumes them.
                consumer = consumer.wrapping_add(NET_RING_SLOTS as u32);
                mem.store(
                    consumer,
                    GuestAddress(RX + NET_RING_CONSUMER),
                    Ordering::Release,
                )
                .unwrap();
            }
            let frames = f64::from(rounds) * NET_RING_SLOTS as f64;
            best.0 = best.0.min(tx_ns as f64 / frames);
            best.1 = best.1.min(rx_ns as f64 / frames);
            assert_eq!(port.sent, frames as u64 * size as u64);
        }
        println!("{size:>11} | {:>11.1} | {:>11.1}", best.0, best.1);
    }
}
