//! Adapts any [`NetDriver`] to smoltcp's [`Device`] interface.
//!
//! smoltcp asks for frames through tokens; we receive a frame into our own
//! buffer (one copy) and build transmitted frames in another buffer before
//! handing them to the driver. Neither buffer ever grows from peer input, and
//! no length from the driver is used unchecked.
//!
//! The device also keeps smoltcp's one IPv4 fragmenter from being
//! overwritten: smoltcp (0.14) holds one outgoing packet too large for a frame
//! and sends it a fragment per egress pass, but a socket that sends another
//! such packet meanwhile replaces it. Once the first fragment of a packet
//! went out, the device gives sockets no frame until the stack has sent the
//! rest ([`fragments_pending`](FrameDevice::fragments_pending)).

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::driver::{NetDriver, ETHERNET_HEADER_LEN};

/// Smallest IP MTU we run with (IPv4's minimum); a driver reporting less is
/// raised to it (its frames may then be refused, which TCP survives, rather
/// than the stack misbehaving).
pub(crate) const MIN_MTU: usize = 576;
/// Largest IP MTU we run with.
pub(crate) const MAX_MTU: usize = 65535 - ETHERNET_HEADER_LEN;

/// A driver plus the buffers smoltcp's tokens use.
pub(crate) struct FrameDevice {
    driver: Box<dyn NetDriver>,
    mtu: usize,
    rx: Vec<u8>,
    tx: Vec<u8>,
    /// Frames received / sent since start, for statistics.
    pub(crate) rx_frames: u64,
    pub(crate) tx_frames: u64,
    /// Whether a frame was sent since the last [`flush`](Self::flush).
    unflushed: bool,
    /// The first fragment of an IPv4 packet went out and smoltcp's
    /// fragmenter holds the rest: no frames for sockets until the stack has
    /// sent them (see `Stack::send_fragments`) and clears this.
    pub(crate) fragments_pending: bool,
    /// Verify and compute checksums (only fuzzing tests turn this off, to
    /// reach past the checksum checks).
    checksums: bool,
}

impl FrameDevice {
    pub(crate) fn new(driver: Box<dyn NetDriver>) -> Self {
        let mtu = driver.mtu().clamp(MIN_MTU, MAX_MTU);
        let frame = mtu + ETHERNET_HEADER_LEN;
        FrameDevice {
            driver,
            mtu,
            rx: vec![0; frame],
            tx: vec![0; frame],
            rx_frames: 0,
            tx_frames: 0,
            unflushed: false,
            fragments_pending: false,
            checksums: true,
        }
    }

    /// Turns checksum verification off (tests that fuzz deep paths).
    #[cfg(test)]
    pub(crate) fn ignore_checksums(&mut self) {
        self.checksums = false;
    }

    /// The IP MTU in use.
    pub(crate) fn mtu(&self) -> usize {
        self.mtu
    }

    pub(crate) fn driver(&self) -> &dyn NetDriver {
        &*self.driver
    }

    pub(crate) fn driver_mut(&mut self) -> &mut dyn NetDriver {
        &mut *self.driver
    }

    /// Ends a batch of transmits (one kick for drivers that batch).
    pub(crate) fn flush(&mut self) {
        if self.unflushed {
            self.unflushed = false;
            self.driver.flush();
        }
    }
}

impl Device for FrameDevice {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let len = self.driver.receive(&mut self.rx)?;
        self.rx_frames += 1;
        // `receive` promises len <= rx.len(); `get` keeps a broken driver
        // from turning into a panic.
        let frame = self.rx.get(..len).unwrap_or(&[]);
        Some((
            RxToken { frame },
            TxToken {
                driver: &mut *self.driver,
                buf: &mut self.tx,
                sent: &mut self.tx_frames,
                unflushed: &mut self.unflushed,
                fragments_pending: &mut self.fragments_pending,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<TxToken<'_>> {
        if self.fragments_pending || !self.driver.can_transmit() {
            return None;
        }
        Some(TxToken {
            driver: &mut *self.driver,
            buf: &mut self.tx,
            sent: &mut self.tx_frames,
            unflushed: &mut self.unflushed,
            fragments_pending: &mut self.fragments_pending,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu + ETHERNET_HEADER_LEN;
        if !self.checksums {
            caps.checksum = smoltcp::phy::ChecksumCapabilities::ignored();
        }
        caps
    }
}

/// One received frame, borrowed from the device's receive buffer.
pub(crate) struct RxToken<'a> {
    frame: &'a [u8],
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.frame)
    }
}

/// Permission to send one frame.
pub(crate) struct TxToken<'a> {
    driver: &'a mut dyn NetDriver,
    buf: &'a mut Vec<u8>,
    sent: &'a mut u64,
    unflushed: &'a mut bool,
    fragments_pending: &'a mut bool,
}

/// Whether `frame` is the first fragment of an IPv4 packet (more fragments
/// follow, offset 0).
fn first_ipv4_fragment(frame: &[u8]) -> bool {
    const IPV4: [u8; 2] = [0x08, 0x00];
    const MORE_FRAGMENTS: u16 = 0x2000;
    const OFFSET: u16 = 0x1fff;
    let (Some(ethertype), Some(flags)) = (frame.get(12..14), frame.get(20..22)) else {
        return false;
    };
    let flags = u16::from_be_bytes([flags[0], flags[1]]);
    ethertype == IPV4 && flags & MORE_FRAGMENTS != 0 && flags & OFFSET == 0
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        // smoltcp never builds frames over the MTU; should it, the frame is
        // built anyway (into a grown buffer) and the driver refuses it.
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
        let frame = &mut self.buf[..len];
        let result = f(frame);
        if first_ipv4_fragment(frame) {
            *self.fragments_pending = true;
        }
        if self.driver.transmit(frame) {
            *self.sent += 1;
        }
        *self.unflushed = true;
        result
    }
}
