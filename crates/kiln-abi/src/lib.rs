//! The contract between a kiln image and a tender.
//!
//! Everything an image and a tender (hvt or spt) must agree on lives here and
//! nowhere else: the [`BootInfo`] handed to the image's entry point, the
//! hypercall numbers and their `#[repr(C)]` argument structs, the manifest the
//! image carries in an ELF note, the memory layout constants and the ABI
//! version. The crate is `no_std`, has no dependencies, and is kept small on
//! purpose: every hypercall is attack surface.
//!
//! # Calling convention
//!
//! A hypercall passes the address of its argument struct (an address inside
//! guest memory) and hypercall number `nr`:
//!
//! * **hvt**: `out dx, eax` with `dx = HVT_PORT_BASE + nr` and
//!   `eax` = the struct's guest-physical address (guest memory is identity
//!   mapped and lies below 4 GiB). The port I/O exits to the monitor.
//! * **spt**: a call through [`BootInfo::hypercall`], the System V function
//!   `extern "C" fn(nr: u64, arg: u64)`.
//!
//! The tender validates every address and length before use. Results are
//! written back into the argument struct (`ret` fields use negative
//! [`errno`] values). A hypercall with an unknown number, or with arguments
//! that point outside guest memory, ends the instance with an error that
//! names the hypercall.
#![no_std]
#![forbid(unsafe_code)]

/// Version of this ABI. A tender refuses an image whose manifest names
/// another version.
pub const ABI_VERSION: u32 = 3;

/// Size of a page, the granularity of all protections.
pub const PAGE_SIZE: u64 = 4096;

/// Address at which images are linked. Memory below it belongs to the tender.
pub const IMAGE_BASE: u64 = 0x10_0000;

/// Highest end address (exclusive) of any image segment.
pub const IMAGE_LIMIT: u64 = 0x4000_0000;

/// hvt: the I/O port of hypercall `nr` is `HVT_PORT_BASE + nr`.
pub const HVT_PORT_BASE: u16 = 0x500;

/// Default size of the guest stack (the manifest may ask for more).
pub const DEFAULT_STACK_SIZE: u64 = 256 * 1024;

/// Largest guest stack a manifest may ask for.
pub const MAX_STACK_SIZE: u64 = 64 * 1024 * 1024;

/// Maximum number of devices an image may declare.
pub const MAX_DEVICES: usize = 8;

/// Maximum length of a device name, in bytes (names are NUL padded).
pub const DEVICE_NAME_LEN: usize = 16;

/// Hypercall numbers.
pub mod nr {
    /// Write bytes to the console. Argument: [`super::ConsoleWrite`].
    pub const CONSOLE_WRITE: u32 = 1;
    /// Read the monotonic and the wall clock. Argument: [`super::Clock`].
    pub const CLOCK: u32 = 2;
    /// Wait until a device has input or a deadline passes. Argument: [`super::Poll`].
    pub const POLL: u32 = 3;
    /// Send one frame on a network device. Argument: [`super::NetWrite`].
    pub const NET_WRITE: u32 = 4;
    /// Receive one frame from a network device. Argument: [`super::NetRead`].
    pub const NET_READ: u32 = 5;
    /// Write to a block device. Argument: [`super::BlockIo`].
    pub const BLOCK_WRITE: u32 = 6;
    /// Read from a block device. Argument: [`super::BlockIo`].
    pub const BLOCK_READ: u32 = 7;
    /// End the instance with an exit code. Argument: [`super::Halt`].
    pub const HALT: u32 = 8;
    /// End the instance abnormally with a message. Argument: [`super::Abort`].
    pub const ABORT: u32 = 9;
    /// Hand the tender shared-memory rings for a network device, so frames
    /// travel without an exit each. Argument: [`super::NetRings`].
    pub const NET_RINGS: u32 = 10;
    /// The application is ready to serve. Argument: [`super::Ready`].
    pub const READY: u32 = 11;
    /// One past the highest hypercall number.
    pub const COUNT: u32 = 12;

    /// Human-readable name of a hypercall, for error messages.
    pub const fn name(nr: u32) -> &'static str {
        match nr {
            CONSOLE_WRITE => "CONSOLE_WRITE",
            CLOCK => "CLOCK",
            POLL => "POLL",
            NET_WRITE => "NET_WRITE",
            NET_READ => "NET_READ",
            BLOCK_WRITE => "BLOCK_WRITE",
            BLOCK_READ => "BLOCK_READ",
            HALT => "HALT",
            ABORT => "ABORT",
            NET_RINGS => "NET_RINGS",
            READY => "READY",
            _ => "UNKNOWN",
        }
    }
}

/// Negative values stored in `ret` fields when a hypercall fails in a way the
/// guest may recover from.
pub mod errno {
    /// I/O error on the host side.
    pub const EIO: i64 = -5;
    /// Nothing to read now; try again after POLL.
    pub const EAGAIN: i64 = -11;
    /// No such device, or the device is of another kind.
    pub const ENODEV: i64 = -19;
    /// An argument is invalid (for example a length too large for the device).
    pub const EINVAL: i64 = -22;
}

/// Argument of [`nr::CONSOLE_WRITE`]: write `len` bytes at `buf` to the
/// console (the tender's standard output). The whole buffer is written.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsoleWrite {
    /// Guest address of the bytes.
    pub buf: u64,
    /// Number of bytes; at most [`CONSOLE_WRITE_MAX`].
    pub len: u64,
}

/// Largest buffer one CONSOLE_WRITE may pass.
pub const CONSOLE_WRITE_MAX: u64 = 64 * 1024;

/// Argument of [`nr::CLOCK`]: the tender fills both fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Clock {
    /// Nanoseconds on a monotonic clock (the host's `CLOCK_MONOTONIC`).
    pub monotonic_ns: u64,
    /// Nanoseconds since the Unix epoch (the host's `CLOCK_REALTIME`).
    pub wall_ns: u64,
}

/// Argument of [`nr::POLL`]: block until one of the image's input devices
/// has data or the monotonic clock reaches `deadline_ns`, whichever comes
/// first. A deadline in the past returns at once.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Poll {
    /// Absolute monotonic deadline in nanoseconds; `u64::MAX` waits for input only.
    pub deadline_ns: u64,
    /// Out: bit `i` is set when device `i` of [`BootInfo::devices`] has input.
    pub ready: u64,
}

/// Argument of [`nr::NET_WRITE`]: send one Ethernet frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetWrite {
    /// Index of the device in [`BootInfo::devices`].
    pub device: u64,
    /// Guest address of the frame.
    pub buf: u64,
    /// Frame length; at most the device's `mtu` + 14.
    pub len: u64,
    /// Out: bytes sent, or a negative [`errno`].
    pub ret: i64,
}

/// Argument of [`nr::NET_READ`]: receive one Ethernet frame if one is waiting.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetRead {
    /// Index of the device in [`BootInfo::devices`].
    pub device: u64,
    /// Guest address of the receive buffer.
    pub buf: u64,
    /// Capacity of the buffer.
    pub len: u64,
    /// Out: frame length, [`errno::EAGAIN`] if none is waiting, or another negative [`errno`].
    pub ret: i64,
}

/// Argument of [`nr::BLOCK_READ`] and [`nr::BLOCK_WRITE`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockIo {
    /// Index of the device in [`BootInfo::devices`].
    pub device: u64,
    /// Byte offset on the device; a multiple of the device's `block_size`.
    pub offset: u64,
    /// Guest address of the data.
    pub buf: u64,
    /// Length; a multiple of `block_size`, at most [`BLOCK_IO_MAX`].
    pub len: u64,
    /// Out: bytes transferred, or a negative [`errno`].
    pub ret: i64,
}

/// Argument of [`nr::NET_RINGS`]: from now on frames of `device` travel
/// through two rings in guest memory instead of NET_READ/NET_WRITE. Each ring
/// is [`NET_RING_SIZE`] bytes, page aligned, in writable guest memory (the
/// two must not overlap), laid out as a [`NetRingHeader`] in its first page
/// followed by [`NET_RING_SLOTS`] slots of [`NET_SLOT_SIZE`] bytes (a
/// little-endian u32 frame length, 4 reserved bytes, then the frame). The
/// guest zeroes both rings before the call: indices start at 0.
///
/// Each ring has one producer and one consumer; indices run freely and wrap
/// at 2^32, slot = index % NET_RING_SLOTS, and `producer - consumer` (mod
/// 2^32) is the number of frames in the ring, never more than
/// NET_RING_SLOTS. The producer fills a slot, then publishes it by storing
/// the new `producer` index (release); the consumer reads `producer`
/// (acquire), copies the frame out, then stores its new `consumer` index
/// (release). The guest produces into `tx` and consumes from `rx`; the
/// tender does the opposite.
///
/// * Transmit: after producing a batch into `tx`, the guest kicks the
///   tender once with a 4-byte `out dx, eax` of the device index to
///   [`HVT_NET_DOORBELL_PORT`] (caught in the host kernel by an ioeventfd:
///   no exit to the tender's user space). A full `tx` ring means the
///   tender is behind: the guest kicks and may drop the frame.
/// * Receive: the guest reads `rx` without any hypercall. When it has
///   nothing else to do it waits in POLL, which reports the device ready
///   (bit `device`) once `rx` holds frames.
/// * Back-pressure: a producer that finds its ring full sets
///   [`NetRingHeader::wants_kick`], issues a full memory barrier, looks at
///   `consumer` once more, and waits if the ring is still full. The
///   consumer, after storing `consumer` and a full barrier, looks at the
///   flag and, while it is set, notifies the producer at least once per
///   [`NET_RING_KICK_BATCH`] frames it consumes: the guest by kicking the
///   doorbell (for `rx`), the tender by making POLL return (for `tx`). The
///   producer clears the flag when it goes on.
///
/// After a successful call NET_READ and NET_WRITE on the device answer
/// ENODEV. The tender validates every value it reads from the rings: a
/// frame count above NET_RING_SLOTS, or a `tx` frame length above
/// [`NET_SLOT_FRAME_MAX`] or the device's MTU + 14, ends the instance, as
/// do rings that are not page aligned, overlap, or are not writable guest
/// memory. A `tx` frame shorter than an Ethernet header is dropped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetRings {
    /// Index of the device in [`BootInfo::devices`].
    pub device: u64,
    /// Guest address of the receive ring (tender produces).
    pub rx: u64,
    /// Guest address of the transmit ring (guest produces).
    pub tx: u64,
    /// Out: 0, or a negative [`errno`]: ENODEV when the tender offers no
    /// rings for this device (keep using NET_READ/NET_WRITE), EINVAL when
    /// the device already uses rings.
    pub ret: i64,
}

/// Header at the start of a ring.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetRingHeader {
    /// Written by the producer: number of frames produced so far.
    pub producer: u32,
    /// Written by the consumer: number of frames consumed so far.
    pub consumer: u32,
    /// Written by the producer: nonzero while it waits for a free slot and
    /// wants to be notified when the consumer frees one (see [`NetRings`]).
    pub wants_kick: u32,
    /// Reserved, zero.
    pub _reserved: [u32; 13],
}

/// Slots in one ring (a power of two).
pub const NET_RING_SLOTS: u64 = 256;
/// Bytes per slot: a 4-byte length, 4 reserved bytes and up to 2040 bytes of frame.
pub const NET_SLOT_SIZE: u64 = 2048;
/// Largest frame a slot carries.
pub const NET_SLOT_FRAME_MAX: u64 = NET_SLOT_SIZE - 8;
/// While a producer waits ([`NetRingHeader::wants_kick`]), the consumer
/// notifies it at least once per this many frames consumed.
pub const NET_RING_KICK_BATCH: u64 = 32;
/// Bytes in one ring: one page of header, then the slots.
pub const NET_RING_SIZE: u64 = PAGE_SIZE + NET_RING_SLOTS * NET_SLOT_SIZE;
/// hvt: the doorbell port for kicks in [`nr::NET_RINGS`] mode: a 4-byte
/// `out dx, eax` with `eax` = the device index.
pub const HVT_NET_DOORBELL_PORT: u16 = HVT_PORT_BASE + 0x40;
/// Byte offset of [`NetRingHeader::producer`] in a ring.
pub const NET_RING_PRODUCER: u64 = 0;
/// Byte offset of [`NetRingHeader::consumer`] in a ring.
pub const NET_RING_CONSUMER: u64 = 4;
/// Byte offset of [`NetRingHeader::wants_kick`] in a ring.
pub const NET_RING_WANTS_KICK: u64 = 8;
/// Byte offset of slot `i` in a ring: `NET_RING_SLOT0 + i * NET_SLOT_SIZE`.
pub const NET_RING_SLOT0: u64 = PAGE_SIZE;
/// Byte offset of the frame in a slot (after the length word and 4 reserved bytes).
pub const NET_SLOT_FRAME: u64 = 8;

/// Largest transfer one block hypercall may ask for.
pub const BLOCK_IO_MAX: u64 = 1024 * 1024;

/// Argument of [`nr::READY`]: the application is ready to serve, that is
/// it listens (its first TCP listener or UDP socket is bound) and its
/// network address is configured. kiln-rt calls it on its own
/// (`kiln_rt::ready`).
///
/// The tender reports the first READY to whoever started the instance
/// (`kiln run --ready-fd N`: one byte `b'R'` on descriptor N; with `-v` a
/// line on stderr) and answers later ones with 0 without reporting again.
/// READY never blocks and never fails because of the host side: a reader
/// that is gone or slow loses the byte, not the instance.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    /// Reserved, zero.
    pub reserved: u64,
    /// Out: 0, or [`errno::EINVAL`] when `reserved` is not zero (then
    /// nothing is reported).
    pub ret: i64,
}

/// Argument of [`nr::HALT`]: the instance ends and `kiln run` exits with
/// `exit_code & 0xff`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Halt {
    /// The application's exit code.
    pub exit_code: u64,
}

/// Argument of [`nr::ABORT`]: the instance ends abnormally; the tender
/// prints the message and exits with [`EXIT_ABORTED`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Abort {
    /// Guest address of a UTF-8 message.
    pub msg: u64,
    /// Its length; longer messages are cut to [`ABORT_MSG_MAX`].
    pub len: u64,
}

/// Longest abort message a tender prints.
pub const ABORT_MSG_MAX: u64 = 1024;

/// Exit status of `kiln run` when the image aborted (for example a panic).
pub const EXIT_ABORTED: u8 = 134;
/// Exit status when the instance was stopped for a CPU fault, a forbidden
/// system call or a hypercall that broke the ABI.
pub const EXIT_CRASHED: u8 = 139;
/// Exit status when the tender could not start the image (bad image, no
/// KVM, bad arguments).
pub const EXIT_TENDER_ERROR: u8 = 125;

/// Which tender runs the image.
pub mod tender {
    /// The KVM monitor: hypercalls are port I/O.
    pub const HVT: u32 = 1;
    /// The process tender: hypercalls are calls through [`super::BootInfo::hypercall`].
    pub const SPT: u32 = 2;
}

/// Kinds of device an image may declare.
pub mod device {
    /// An Ethernet device.
    pub const NET: u32 = 1;
    /// A block device.
    pub const BLOCK: u32 = 2;
}

/// A string in guest memory: `len` bytes of UTF-8 at `ptr`, not NUL terminated.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StrRef {
    /// Guest address of the first byte.
    pub ptr: u64,
    /// Length in bytes.
    pub len: u64,
}

/// A device attached by the tender, as the image sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    /// [`device::NET`] or [`device::BLOCK`].
    pub kind: u32,
    /// Network: the MTU. Block: the block size in bytes.
    pub unit: u32,
    /// The name the image declared in its manifest, NUL padded.
    pub name: [u8; DEVICE_NAME_LEN],
    /// Network: the MAC address. Block: zero.
    pub mac: [u8; 6],
    /// Reserved, zero.
    pub _reserved: [u8; 2],
    /// Block: the capacity in bytes. Network: zero.
    pub capacity: u64,
    /// Network: how the image configures its addresses; zero for block devices.
    pub net: NetConfig,
}

/// Flags of [`NetConfig::flags`].
pub mod net_flags {
    /// Configure IPv4 by DHCP (the static fields are then zero).
    pub const DHCP4: u32 = 1;
}

/// Addresses of a network device, as given to `kiln run` (or DHCP).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetConfig {
    /// [`net_flags`] bits.
    pub flags: u32,
    /// Static IPv4 address (network byte order); all zero when unset.
    pub ipv4: [u8; 4],
    /// Static IPv4 default gateway; all zero when none.
    pub ipv4_gateway: [u8; 4],
    /// IPv4 prefix length (0..=32).
    pub ipv4_prefix: u8,
    /// IPv6 prefix length (0..=128) of `ipv6`.
    pub ipv6_prefix: u8,
    /// Reserved, zero.
    pub _reserved: [u8; 2],
    /// Static IPv6 address; all zero when unset (a link-local address
    /// derived from the MAC is always configured).
    pub ipv6: [u8; 16],
    /// Static IPv6 default gateway; all zero when none.
    pub ipv6_gateway: [u8; 16],
}

/// Magic value of [`BootInfo::magic`]: `"KILNBOOT"` read as a little-endian u64.
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"KILNBOOT");

/// What the tender hands to the image's entry point.
///
/// The entry point is `extern "C" fn(*const BootInfo) -> !`, called with
/// `rsp ≡ 8 (mod 16)` as after a `call`. Every address in it is a guest
/// address that the image may use directly. The tender keeps the pages that
/// hold it mapped, readable and non-executable for the image's lifetime.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    /// [`BOOT_MAGIC`].
    pub magic: u64,
    /// [`ABI_VERSION`] as spoken by the tender.
    pub abi_version: u32,
    /// [`tender::HVT`] or [`tender::SPT`].
    pub tender: u32,
    /// spt: address of `extern "C" fn(nr: u64, arg: u64)`. hvt: zero (use port I/O).
    pub hypercall: u64,
    /// Start of the free memory the image may use as its heap (page aligned).
    pub heap_start: u64,
    /// Size of that memory in bytes.
    pub heap_size: u64,
    /// Lowest address of the stack (a guard page lies just below it).
    pub stack_bottom: u64,
    /// Number of command-line arguments in `argv`.
    pub argc: u64,
    /// Guest address of `argc` [`StrRef`]s; `argv[0]` is the image name.
    pub argv: u64,
    /// Number of environment entries in `envp`.
    pub envc: u64,
    /// Guest address of `envc` [`StrRef`]s, each `KEY=VALUE`.
    pub envp: u64,
    /// Frequency of the time-stamp counter in Hz, when the image may read the
    /// monotonic clock with `rdtsc` (calibrated against one CLOCK hypercall);
    /// zero when it must use the CLOCK hypercall.
    pub tsc_hz: u64,
    /// Number of valid entries in `devices`.
    pub device_count: u64,
    /// Devices attached by the tender, in manifest order.
    pub devices: [DeviceInfo; MAX_DEVICES],
}

/// Magic value of [`Manifest::magic`]: `"KLNM"` read as a little-endian u32.
pub const MANIFEST_MAGIC: u32 = u32::from_le_bytes(*b"KLNM");

/// ELF note name under which the manifest is stored (with a trailing NUL).
pub const NOTE_NAME: [u8; 8] = *b"kiln\0\0\0\0";
/// ELF note type of the manifest.
pub const NOTE_TYPE_MANIFEST: u32 = 0x4b4c_0001;

/// A device an image asks for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ManifestDevice {
    /// [`device::NET`] or [`device::BLOCK`].
    pub kind: u32,
    /// Reserved, zero.
    pub _reserved: u32,
    /// Name, NUL padded; unique within the manifest; `[a-z0-9_-]`.
    pub name: [u8; DEVICE_NAME_LEN],
}

/// What an image declares about itself: the ABI it speaks and the devices it
/// needs. A tender attaches only these devices.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// [`MANIFEST_MAGIC`].
    pub magic: u32,
    /// The ABI version the image was built for.
    pub abi_version: u32,
    /// Stack size in bytes (a multiple of [`PAGE_SIZE`]; 0 means [`DEFAULT_STACK_SIZE`]).
    /// Every field is 32 bits wide so that the manifest keeps the 4-byte
    /// alignment of an ELF note's descriptor.
    pub stack_size: u32,
    /// Number of valid entries in `devices`.
    pub device_count: u32,
    /// The devices.
    pub devices: [ManifestDevice; MAX_DEVICES],
}

impl Manifest {
    /// A manifest for this ABI version with no devices and the default stack.
    pub const fn new() -> Self {
        Manifest {
            magic: MANIFEST_MAGIC,
            abi_version: ABI_VERSION,
            stack_size: 0,
            device_count: 0,
            devices: [ManifestDevice {
                kind: 0,
                _reserved: 0,
                name: [0; DEVICE_NAME_LEN],
            }; MAX_DEVICES],
        }
    }

    /// Adds a device. Fails to compile (in const context) when the name is
    /// too long or the table is full.
    pub const fn with_device(mut self, kind: u32, name: &str) -> Self {
        let bytes = name.as_bytes();
        assert!(
            !bytes.is_empty() && bytes.len() <= DEVICE_NAME_LEN,
            "device name must be 1..=16 bytes"
        );
        assert!(
            (self.device_count as usize) < MAX_DEVICES,
            "too many devices"
        );
        let mut dev = ManifestDevice {
            kind,
            _reserved: 0,
            name: [0; DEVICE_NAME_LEN],
        };
        let mut i = 0;
        while i < bytes.len() {
            dev.name[i] = bytes[i];
            i += 1;
        }
        self.devices[self.device_count as usize] = dev;
        self.device_count += 1;
        self
    }

    /// Sets the stack size.
    pub const fn with_stack_size(mut self, bytes: u32) -> Self {
        self.stack_size = bytes;
        self
    }
}

impl Default for Manifest {
    fn default() -> Self {
        Self::new()
    }
}

/// The manifest wrapped in an ELF note, ready to be placed in a
/// `.note.kiln` section (kiln-rt's `entry!` macro does this).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug)]
pub struct ManifestNote {
    /// Length of `name` that is meaningful (`"kiln\0"`), as ELF requires.
    pub namesz: u32,
    /// Size of `desc`.
    pub descsz: u32,
    /// [`NOTE_TYPE_MANIFEST`].
    pub ntype: u32,
    /// [`NOTE_NAME`], padded to 4-byte alignment.
    pub name: [u8; 8],
    /// The manifest.
    pub desc: Manifest,
}

impl ManifestNote {
    /// Wraps a manifest.
    pub const fn new(desc: Manifest) -> Self {
        ManifestNote {
            namesz: 5,
            descsz: core::mem::size_of::<Manifest>() as u32,
            ntype: NOTE_TYPE_MANIFEST,
            name: NOTE_NAME,
            desc,
        }
    }
}

/// Size of the manifest's serialized form (the note's `desc`).
pub const MANIFEST_SIZE: usize = core::mem::size_of::<Manifest>();

// The layouts are part of the ABI: pin them.
const _: () = assert!(core::mem::size_of::<ManifestDevice>() == 24);
const _: () = assert!(MANIFEST_SIZE == 16 + 24 * MAX_DEVICES);
const _: () = assert!(core::mem::align_of::<Manifest>() == 4);
const _: () = assert!(core::mem::size_of::<DeviceInfo>() == 40 + 48);
const _: () = assert!(core::mem::size_of::<NetRingHeader>() == 64);
const _: () = assert!(core::mem::size_of::<Ready>() == 16);
const _: () = assert!(core::mem::offset_of!(NetRingHeader, consumer) == NET_RING_CONSUMER as usize);
const _: () =
    assert!(core::mem::offset_of!(NetRingHeader, wants_kick) == NET_RING_WANTS_KICK as usize);
const _: () = assert!(NET_RING_SLOTS.is_power_of_two());
const _: () = assert!(core::mem::size_of::<BootInfo>() == 96 + 88 * MAX_DEVICES);
const _: () = assert!(core::mem::size_of::<ManifestNote>() == 20 + MANIFEST_SIZE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_builder_fills_devices_in_order() {
        const M: Manifest = Manifest::new()
            .with_device(device::NET, "service0")
            .with_device(device::BLOCK, "data");
        assert_eq!(M.device_count, 2);
        assert_eq!(&M.devices[0].name[..8], b"service0");
        assert_eq!(M.devices[1].kind, device::BLOCK);
        assert_eq!(M.devices[2].kind, 0);
    }

    #[test]
    fn hypercall_names_cover_every_number() {
        for n in 1..nr::COUNT {
            assert_ne!(nr::name(n), "UNKNOWN", "hypercall {n} has no name");
        }
        assert_eq!(nr::name(nr::COUNT), "UNKNOWN");
    }
}
