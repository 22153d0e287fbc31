//! Network drivers: how Ethernet frames get in and out of the image.
//!
//! A [`NetDriver`] moves whole frames and nothing else; the stack glue
//! (`net::device`, private) adapts any driver to smoltcp, so a new transport (for
//! example the shared-memory rings of [`kiln_abi::nr::NET_RINGS`]) is one
//! more implementation of this trait and touches nothing above it.
//!
//! Two drivers exist today:
//!
//! * [`HypercallDriver`]: one NET_READ / NET_WRITE hypercall per frame, for
//!   a device the tender attached;
//! * [`LoopbackDriver`]: frames sent are received again, inside the image;
//!   for tests and for images without a network device.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use kiln_abi::errno;

/// Ethernet header length (destination, source, EtherType).
pub const ETHERNET_HEADER_LEN: usize = 14;

/// Moves Ethernet frames between the image and the outside.
///
/// Drivers never fail loudly: a frame that cannot be sent is dropped
/// (TCP retransmits; UDP is unreliable anyway) and an error reading is "no
/// frame". Nothing a peer sends can make a driver panic.
pub trait NetDriver {
    /// Receives one waiting frame into `buf` and returns its length, or
    /// `None` when no frame is waiting. A frame longer than `buf` is dropped
    /// by the driver (the next one is returned instead); `buf` is always at
    /// least [`mtu`](Self::mtu) + 14 bytes.
    fn receive(&mut self, buf: &mut [u8]) -> Option<usize>;

    /// Sends one frame (at most `mtu() + 14` bytes). Returns whether the
    /// frame went out; a dropped frame is not an error the stack can act on.
    fn transmit(&mut self, frame: &[u8]) -> bool;

    /// Whether input may be waiting (a hint: `receive` may still return
    /// `None`). After `receive` returned `None` this is false until
    /// [`note_ready`](Self::note_ready) says otherwise, or, for a driver that
    /// can see its input directly (a loopback queue, a shared ring), until
    /// input arrives.
    fn input_pending(&self) -> bool;

    /// Bits of the POLL ready mask that announce input for this driver (0 if
    /// POLL cannot announce it, as for the loopback driver).
    fn poll_interest(&self) -> u64;

    /// POLL returned `ready` (only the bits of `poll_interest`).
    fn note_ready(&mut self, ready: u64);

    /// Whether a frame could be sent now. A driver with a bounded queue (a
    /// full transmit ring) says no, and the stack keeps its data queued
    /// instead of losing a frame. The default is always yes.
    fn can_transmit(&self) -> bool {
        true
    }

    /// Called after a batch of transmits: a driver that queues frames
    /// (shared rings) kicks the tender once here. The default does nothing.
    fn flush(&mut self) {}

    /// The IP MTU in bytes (frames carry up to MTU + 14 bytes).
    fn mtu(&self) -> usize;

    /// The device's MAC address.
    fn mac(&self) -> [u8; 6];
}

/// A network device the tender attached, driven by one NET_READ or
/// NET_WRITE hypercall per frame.
///
/// The tender's rule for oversized frames: a frame longer than the receive
/// buffer is dropped on the host side and the next one is returned, so a
/// buffer of MTU + 14 bytes never sees a truncated frame.
#[derive(Debug)]
pub struct HypercallDriver {
    index: usize,
    mtu: usize,
    mac: [u8; 6],
    pending: bool,
}

impl HypercallDriver {
    /// The driver of device `index` (its position in
    /// [`devices`](crate::devices)), with the MTU and MAC the tender gave.
    pub fn new(index: usize, mtu: usize, mac: [u8; 6]) -> Self {
        HypercallDriver {
            index,
            mtu,
            mac,
            // Frames may have arrived before we first looked.
            pending: true,
        }
    }
}

impl NetDriver for HypercallDriver {
    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        // POLL tells us when frames arrive; asking the tender before it did
        // would cost a hypercall (an exit, on hvt) for nothing.
        if !self.pending {
            return None;
        }
        let ret = crate::hypercall::net_read(self.index, buf);
        match usize::try_from(ret) {
            // A tender never reports more than it wrote; if one did, the
            // frame is not to be trusted.
            Ok(len) if len <= buf.len() => Some(len),
            Ok(_) => Some(0),
            Err(_) => {
                if ret != errno::EAGAIN {
                    log::debug!("net: NET_READ on device {} failed: {ret}", self.index);
                }
                self.pending = false;
                None
            }
        }
    }

    fn transmit(&mut self, frame: &[u8]) -> bool {
        let ret = crate::hypercall::net_write(self.index, frame);
        if ret < 0 {
            log::debug!(
                "net: NET_WRITE of {} bytes on device {} failed: {ret}",
                frame.len(),
                self.index
            );
        }
        ret >= 0
    }

    fn input_pending(&self) -> bool {
        self.pending
    }

    fn poll_interest(&self) -> u64 {
        if self.index < 64 {
            1 << self.index
        } else {
            0
        }
    }

    fn note_ready(&mut self, ready: u64) {
        if ready & self.poll_interest() != 0 {
            self.pending = true;
        }
    }

    fn mtu(&self) -> usize {
        self.mtu
    }

    fn mac(&self) -> [u8; 6] {
        self.mac
    }
}

/// Frames transmitted are received again, in order: a network inside the
/// image. [`net::init_loopback`](super::init_loopback) builds a stack on it.
#[derive(Debug, Default)]
pub struct LoopbackDriver {
    queue: VecDeque<Vec<u8>>,
    mtu: usize,
    /// Frames queued at most, so a runaway sender cannot eat the heap.
    limit: usize,
}

impl LoopbackDriver {
    /// MAC address of the loopback device (locally administered, unicast).
    pub const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

    /// A loopback device with this IP MTU.
    pub fn new(mtu: usize) -> Self {
        LoopbackDriver {
            queue: VecDeque::new(),
            mtu,
            limit: 4096,
        }
    }

    /// Queues a frame as if it had arrived from outside (tests feed the
    /// stack hostile input this way). Frames beyond the queue limit are
    /// dropped.
    pub fn inject(&mut self, frame: &[u8]) {
        if self.queue.len() < self.limit {
            self.queue.push_back(frame.to_vec());
        }
    }
}

impl NetDriver for LoopbackDriver {
    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        while let Some(frame) = self.queue.pop_front() {
            if let Some(dst) = buf.get_mut(..frame.len()) {
                dst.copy_from_slice(&frame);
                return Some(frame.len());
            }
            // Too long for the buffer: dropped, like a tender does.
        }
        None
    }

    fn transmit(&mut self, frame: &[u8]) -> bool {
        if self.queue.len() >= self.limit {
            return false;
        }
        self.queue.push_back(frame.to_vec());
        true
    }

    fn input_pending(&self) -> bool {
        !self.queue.is_empty()
    }

    fn can_transmit(&self) -> bool {
        self.queue.len() < self.limit
    }

    fn poll_interest(&self) -> u64 {
        0
    }

    fn note_ready(&mut self, _ready: u64) {}

    fn mtu(&self) -> usize {
        self.mtu
    }

    fn mac(&self) -> [u8; 6] {
        Self::MAC
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_returns_frames_in_order_and_drops_oversized_ones() {
        let mut d = LoopbackDriver::new(1500);
        assert!(!d.input_pending());
        assert!(d.transmit(&[1, 2, 3]));
        d.inject(&[0; 2000]);
        assert!(d.transmit(&[]));
        assert!(d.transmit(&[4]));
        let mut buf = [0u8; 1514];
        assert_eq!(d.receive(&mut buf), Some(3));
        assert_eq!(&buf[..3], &[1, 2, 3]);
        // The 2000-byte frame does not fit: skipped.
        assert_eq!(d.receive(&mut buf), Some(0));
        assert_eq!(d.receive(&mut buf), Some(1));
        assert_eq!(d.receive(&mut buf), None);
    }

    #[test]
    fn loopback_queue_is_bounded() {
        let mut d = LoopbackDriver::new(1500);
        for _ in 0..d.limit {
            assert!(d.can_transmit());
            assert!(d.transmit(&[0]));
        }
        assert!(!d.can_transmit());
        assert!(!d.transmit(&[0]));
    }
}
