//! Encoding of the x86-64 system structures the monitor owns: the GDT, the
//! 64-bit TSS with its I/O permission bitmap, the IDT and the ring-0
//! exception stubs.
//!
//! Everything here is pure byte encoding, independent of KVM, so it can be
//! checked by unit tests against the architecture manuals.

use kiln_abi::{nr, HVT_NET_DOORBELL_PORT, HVT_PORT_BASE};

/// GDT selector of the ring-0 64-bit code segment (IDT gates point here).
pub const KERNEL_CS: u16 = 0x08;
/// GDT selector of the ring-0 data segment (present for completeness;
/// 64-bit exception entry from CPL3 loads a null SS).
#[cfg(test)]
pub const KERNEL_DS: u16 = 0x10;
/// GDT selector of the ring-3 data segment, with RPL 3.
pub const USER_DS: u16 = 0x18 | 3;
/// GDT selector of the ring-3 64-bit code segment, with RPL 3.
pub const USER_CS: u16 = 0x20 | 3;
/// GDT selector of the TSS (a 16-byte system descriptor, slots 5 and 6).
pub const TSS_SELECTOR: u16 = 0x28;
/// Number of 8-byte slots in the GDT.
pub const GDT_ENTRIES: usize = 7;
/// Size of the GDT in bytes.
pub const GDT_SIZE: usize = GDT_ENTRIES * 8;

/// Access byte of the ring-0 code segment: present, DPL 0, code,
/// execute/read, accessed (preset so the CPU never writes the GDT).
const ACCESS_KERNEL_CODE: u8 = 0x9b;
/// Ring-0 data: present, DPL 0, data, read/write, accessed.
const ACCESS_KERNEL_DATA: u8 = 0x93;
/// Ring-3 data: present, DPL 3, data, read/write, accessed.
const ACCESS_USER_DATA: u8 = 0xf3;
/// Ring-3 code: present, DPL 3, code, execute/read, accessed.
const ACCESS_USER_CODE: u8 = 0xfb;
/// Flags nibble for 64-bit code: G=1, L=1, D=0.
const FLAGS_CODE64: u8 = 0xa;
/// Flags nibble for data: G=1, D/B=1.
const FLAGS_DATA: u8 = 0xc;
/// System descriptor type of a busy 64-bit TSS (what `TR` holds once loaded).
pub const TSS_TYPE_BUSY: u8 = 0xb;

/// Encodes an 8-byte code or data segment descriptor.
pub const fn segment_descriptor(base: u32, limit: u32, access: u8, flags: u8) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | ((access as u64) << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (((flags as u64) & 0xf) << 52)
        | (((base >> 24) & 0xff) << 56)
}

/// Encodes the 16-byte system descriptor of a 64-bit TSS (present, DPL 0,
/// byte granular) as two GDT slots.
pub const fn tss_descriptor(base: u64, limit: u32) -> [u64; 2] {
    let limit = limit as u64;
    let low = (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (((0x80 | TSS_TYPE_BUSY) as u64) << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    [low, base >> 32]
}

/// The GDT: null, ring-0 code, ring-0 data, ring-3 data, ring-3 code, TSS.
///
/// Ring-3 data precedes ring-3 code (the `SYSRET` layout) although nothing
/// uses `SYSRET`: `EFER.SCE` stays clear, so `syscall` raises #UD.
pub fn gdt(tss_base: u64) -> [u8; GDT_SIZE] {
    let tss = tss_descriptor(tss_base, TSS_LIMIT);
    let entries: [u64; GDT_ENTRIES] = [
        0,
        segment_descriptor(0, 0xf_ffff, ACCESS_KERNEL_CODE, FLAGS_CODE64),
        segment_descriptor(0, 0xf_ffff, ACCESS_KERNEL_DATA, FLAGS_DATA),
        segment_descriptor(0, 0xf_ffff, ACCESS_USER_DATA, FLAGS_DATA),
        segment_descriptor(0, 0xf_ffff, ACCESS_USER_CODE, FLAGS_CODE64),
        tss[0],
        tss[1],
    ];
    let mut out = [0u8; GDT_SIZE];
    for (chunk, e) in out.chunks_exact_mut(8).zip(entries) {
        chunk.copy_from_slice(&e.to_le_bytes());
    }
    out
}

/// Offset of the I/O map base field in the 64-bit TSS.
pub const TSS_IOMAP_BASE_FIELD: usize = 0x66;
/// Size of the fixed part of the 64-bit TSS; the I/O bitmap follows it.
pub const TSS_HEADER_SIZE: usize = 0x68;

/// Ports whose bit is clear (allowed) in the I/O permission bitmap.
///
/// A hypercall is `out dx, eax` with `dx = HVT_PORT_BASE + nr`, a 4-byte
/// access; the CPU checks the bits of all four ports it touches, so the
/// bitmap clears `HVT_PORT_BASE + nr ..= HVT_PORT_BASE + nr + 3` for every
/// valid `nr` (1 .. `nr::COUNT`). The three ports above the last hypercall
/// are therefore reachable with narrower accesses; the monitor treats any
/// exit on them (or any access that is not 4 bytes wide) as an unknown
/// hypercall. Port `HVT_PORT_BASE` itself (nr 0) stays denied.
///
/// The bitmap also admits the four ports of the network doorbell
/// ([`DOORBELL_FIRST`]..=[`DOORBELL_LAST`]), which a 4-byte `out` to
/// `HVT_NET_DOORBELL_PORT` touches.
pub const IO_ALLOWED_FIRST: u16 = HVT_PORT_BASE + 1;
/// Last allowed hypercall port (inclusive); see [`IO_ALLOWED_FIRST`].
pub const HYPERCALL_PORTS_LAST: u16 = HVT_PORT_BASE + nr::COUNT as u16 - 1 + 3;
/// The doorbell port (NET_RINGS kicks).
pub const DOORBELL_FIRST: u16 = HVT_NET_DOORBELL_PORT;
/// The last port a 4-byte doorbell write touches.
pub const DOORBELL_LAST: u16 = HVT_NET_DOORBELL_PORT + 3;
const _: () = assert!(HYPERCALL_PORTS_LAST < DOORBELL_FIRST);
/// Bytes of bitmap: enough to describe every port up to `DOORBELL_LAST`.
/// Ports beyond the TSS limit count as denied.
pub const IOPB_BYTES: usize = DOORBELL_LAST as usize / 8 + 1;
/// Total TSS size: header, bitmap, and the trailing 0xff byte the
/// architecture requires after the bitmap.
pub const TSS_SIZE: usize = TSS_HEADER_SIZE + IOPB_BYTES + 1;
/// The TSS segment limit (size - 1).
pub const TSS_LIMIT: u32 = TSS_SIZE as u32 - 1;

/// The 64-bit TSS: `RSP0` = `ring0_stack_top`, no IST stacks, and an I/O
/// permission bitmap that admits only the hypercall and doorbell ports.
pub fn tss(ring0_stack_top: u64) -> [u8; TSS_SIZE] {
    let mut t = [0u8; TSS_SIZE];
    t[4..12].copy_from_slice(&ring0_stack_top.to_le_bytes());
    t[TSS_IOMAP_BASE_FIELD..TSS_IOMAP_BASE_FIELD + 2]
        .copy_from_slice(&(TSS_HEADER_SIZE as u16).to_le_bytes());
    let bitmap = &mut t[TSS_HEADER_SIZE..];
    bitmap.fill(0xff);
    for port in (IO_ALLOWED_FIRST..=HYPERCALL_PORTS_LAST).chain(DOORBELL_FIRST..=DOORBELL_LAST) {
        let port = usize::from(port);
        bitmap[port / 8] &= !(1u8 << (port % 8));
    }
    t
}

/// Whether the bitmap in an encoded TSS admits a one-byte access to `port`.
#[cfg(test)]
pub fn tss_allows_port(tss: &[u8], port: u16) -> bool {
    let base = usize::from(u16::from_le_bytes([
        tss[TSS_IOMAP_BASE_FIELD],
        tss[TSS_IOMAP_BASE_FIELD + 1],
    ]));
    let byte = base + usize::from(port) / 8;
    // Bytes beyond the limit count as all ones.
    byte < tss.len() && tss[byte] & (1 << (port % 8)) == 0
}

/// Number of exception vectors with a gate (the architecture's 0..32).
pub const VECTORS: usize = 32;
/// Size of one IDT gate.
pub const GATE_SIZE: usize = 16;
/// Size of the IDT.
pub const IDT_SIZE: usize = VECTORS * GATE_SIZE;
/// Bytes reserved for each exception stub.
pub const STUB_SIZE: usize = 16;
/// Size of the stub table.
pub const STUBS_SIZE: usize = VECTORS * STUB_SIZE;

/// The port the ring-0 stubs write the vector number to. Not in the I/O
/// bitmap, so ring-3 code cannot reach it (an attempt raises #GP).
pub const FAULT_PORT: u16 = 0xfa;

/// Type/attribute byte of a 64-bit interrupt gate: present, DPL 0, type 0xe.
/// DPL 0 makes `int n` from CPL3 raise #GP instead of entering the stub.
const GATE_INTERRUPT_DPL0: u8 = 0x8e;

/// Encodes one 16-byte 64-bit interrupt gate.
pub const fn interrupt_gate(handler: u64, selector: u16) -> [u8; GATE_SIZE] {
    let mut g = [0u8; GATE_SIZE];
    let h = handler.to_le_bytes();
    let s = selector.to_le_bytes();
    g[0] = h[0];
    g[1] = h[1];
    g[2] = s[0];
    g[3] = s[1];
    g[4] = 0; // IST 0: use TSS.RSP0 (every fault comes from CPL3).
    g[5] = GATE_INTERRUPT_DPL0;
    g[6] = h[2];
    g[7] = h[3];
    g[8] = h[4];
    g[9] = h[5];
    g[10] = h[6];
    g[11] = h[7];
    g
}

/// The IDT: gate `v` enters the stub at `stubs_base + v * STUB_SIZE`.
pub fn idt(stubs_base: u64) -> [u8; IDT_SIZE] {
    let mut out = [0u8; IDT_SIZE];
    for (v, gate) in out.chunks_exact_mut(GATE_SIZE).enumerate() {
        gate.copy_from_slice(&interrupt_gate(
            stubs_base + (v * STUB_SIZE) as u64,
            KERNEL_CS,
        ));
    }
    out
}

/// The ring-0 exception stubs. Stub `v` is
///
/// ```text
///     mov al, v            b0 v
///     out FAULT_PORT, al   e6 fa
/// 1:  hlt                  f4
///     jmp 1b               eb fd
/// ```
///
/// padded with `int3`. The `out` exits to the monitor, which reads the
/// exception frame from the ring-0 stack and ends the instance; the stub
/// never returns to the image.
pub fn stubs() -> [u8; STUBS_SIZE] {
    let mut out = [0xccu8; STUBS_SIZE];
    for (v, stub) in out.chunks_exact_mut(STUB_SIZE).enumerate() {
        stub[..7].copy_from_slice(&[0xb0, v as u8, 0xe6, FAULT_PORT as u8, 0xf4, 0xeb, 0xfd]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_descriptors_match_the_usual_encodings() {
        // The flat 64-bit descriptors every x86-64 kernel uses.
        assert_eq!(
            segment_descriptor(0, 0xf_ffff, ACCESS_KERNEL_CODE, FLAGS_CODE64),
            0x00af_9b00_0000_ffff
        );
        assert_eq!(
            segment_descriptor(0, 0xf_ffff, ACCESS_KERNEL_DATA, FLAGS_DATA),
            0x00cf_9300_0000_ffff
        );
        assert_eq!(
            segment_descriptor(0, 0xf_ffff, ACCESS_USER_DATA, FLAGS_DATA),
            0x00cf_f300_0000_ffff
        );
        assert_eq!(
            segment_descriptor(0, 0xf_ffff, ACCESS_USER_CODE, FLAGS_CODE64),
            0x00af_fb00_0000_ffff
        );
        assert_eq!(
            segment_descriptor(0x1234_5678, 0xa_bcde, 0x93, 0xc),
            0x12ca_9334_5678_bcde
        );
    }

    #[test]
    fn gdt_layout_matches_the_selectors() {
        let g = gdt(0x1080);
        let slot = |sel: u16| {
            let i = usize::from(sel & !7);
            u64::from_le_bytes(g[i..i + 8].try_into().unwrap())
        };
        assert_eq!(slot(0), 0);
        assert_eq!(slot(KERNEL_CS) >> 40 & 0xff, 0x9b);
        assert_eq!(slot(KERNEL_CS) >> 53 & 1, 1, "kernel CS is 64-bit (L)");
        assert_eq!(slot(KERNEL_DS) >> 40 & 0xff, 0x93);
        assert_eq!(slot(USER_DS) >> 45 & 3, 3, "user DS has DPL 3");
        assert_eq!(slot(USER_CS) >> 45 & 3, 3, "user CS has DPL 3");
        assert_eq!(slot(USER_CS) >> 53 & 1, 1, "user CS is 64-bit (L)");
        assert_eq!(USER_CS & 3, 3);
        assert_eq!(USER_DS & 3, 3);
        // The TSS descriptor: base 0x1080, limit TSS_LIMIT, busy 64-bit TSS.
        let lo = slot(TSS_SELECTOR);
        let hi = slot(TSS_SELECTOR + 8);
        assert_eq!(lo & 0xffff, u64::from(TSS_LIMIT));
        assert_eq!((lo >> 16) & 0xff_ffff, 0x1080);
        assert_eq!((lo >> 40) & 0xff, 0x8b);
        assert_eq!(hi, 0);
    }

    #[test]
    fn tss_descriptor_splits_a_64_bit_base() {
        let [lo, hi] = tss_descriptor(0xdead_beef_1234_5678, 0x10a);
        assert_eq!(lo & 0xffff, 0x10a);
        assert_eq!((lo >> 16) & 0xff_ffff, 0x34_5678);
        assert_eq!(lo >> 56, 0x12);
        assert_eq!(hi, 0xdead_beef);
    }

    #[test]
    fn tss_has_rsp0_and_an_iomap_base() {
        let t = tss(0x4000);
        assert_eq!(u64::from_le_bytes(t[4..12].try_into().unwrap()), 0x4000);
        assert_eq!(u16::from_le_bytes([t[0x66], t[0x67]]), 0x68);
        // The trailing byte the architecture requires.
        assert_eq!(*t.last().unwrap(), 0xff);
        assert_eq!(TSS_SIZE, 0x68 + 0xa9 + 1);
    }

    #[test]
    fn io_bitmap_admits_only_the_hypercall_ports() {
        let t = tss(0x4000);
        let allowed: Vec<u16> = (0..=u16::MAX).filter(|&p| tss_allows_port(&t, p)).collect();
        let expected: Vec<u16> = (HVT_PORT_BASE + 1..=HVT_PORT_BASE + nr::COUNT as u16 + 2)
            .chain(HVT_NET_DOORBELL_PORT..HVT_NET_DOORBELL_PORT + 4)
            .collect();
        assert_eq!(allowed, expected);
        // Every hypercall's 4-byte access is fully admitted.
        for n in 1..nr::COUNT as u16 {
            for p in HVT_PORT_BASE + n..HVT_PORT_BASE + n + 4 {
                assert!(tss_allows_port(&t, p), "port {p:#x}");
            }
        }
        assert!(!tss_allows_port(&t, HVT_PORT_BASE));
        assert!(!tss_allows_port(&t, FAULT_PORT));
        assert!(!tss_allows_port(&t, 0x3f8));
    }

    #[test]
    fn idt_gates_point_at_the_stubs_through_kernel_cs() {
        let idt = idt(0x2000);
        for v in 0..VECTORS {
            let g = &idt[v * GATE_SIZE..(v + 1) * GATE_SIZE];
            let offset = u64::from(u16::from_le_bytes([g[0], g[1]]))
                | u64::from(u16::from_le_bytes([g[6], g[7]])) << 16
                | u64::from(u32::from_le_bytes(g[8..12].try_into().unwrap())) << 32;
            assert_eq!(offset, 0x2000 + (v * STUB_SIZE) as u64);
            assert_eq!(u16::from_le_bytes([g[2], g[3]]), KERNEL_CS);
            assert_eq!(g[4], 0, "no IST");
            assert_eq!(g[5], 0x8e, "present, DPL 0, interrupt gate");
            assert_eq!(&g[12..], &[0; 4]);
        }
        let g = interrupt_gate(0x1122_3344_5566_7788, 8);
        assert_eq!(
            g,
            [0x88, 0x77, 8, 0, 0, 0x8e, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0, 0, 0, 0]
        );
    }

    #[test]
    fn stubs_report_their_vector_on_the_fault_port() {
        let s = stubs();
        for v in 0..VECTORS {
            let stub = &s[v * STUB_SIZE..(v + 1) * STUB_SIZE];
            assert_eq!(stub[..7], [0xb0, v as u8, 0xe6, 0xfa, 0xf4, 0xeb, 0xfd]);
            assert!(stub[7..].iter().all(|&b| b == 0xcc));
        }
    }
}
