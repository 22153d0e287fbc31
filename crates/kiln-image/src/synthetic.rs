//! Hand-made images for tests and tools: a minimal valid kiln image (a
//! `hlt` in an r-x page, a rw- data segment, a manifest note) and the pieces
//! to make malformed variants of it.

use crate::encode_manifest;
use kiln_abi::{Manifest, IMAGE_BASE, NOTE_TYPE_MANIFEST};

/// A program header as written into a synthetic image.
#[derive(Clone, Copy)]
pub struct Ph {
    pub ptype: u32,
    pub flags: u32,
    pub offset: u64,
    pub vaddr: u64,
    pub filesz: u64,
    pub memsz: u64,
}

/// Writes an ELF64 file with the given headers; contents are placed by the caller.
pub fn write_elf(entry: u64, phs: &[Ph], total: usize) -> Vec<u8> {
    let mut b = vec![0u8; total];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 2;
    b[5] = 1;
    b[6] = 1;
    b[16..18].copy_from_slice(&2u16.to_le_bytes());
    b[18..20].copy_from_slice(&62u16.to_le_bytes());
    b[20..24].copy_from_slice(&1u32.to_le_bytes());
    b[24..32].copy_from_slice(&entry.to_le_bytes());
    b[32..40].copy_from_slice(&64u64.to_le_bytes());
    b[52..54].copy_from_slice(&64u16.to_le_bytes());
    b[54..56].copy_from_slice(&56u16.to_le_bytes());
    b[56..58].copy_from_slice(&(phs.len() as u16).to_le_bytes());
    for (i, p) in phs.iter().enumerate() {
        let at = 64 + i * 56;
        b[at..at + 4].copy_from_slice(&p.ptype.to_le_bytes());
        b[at + 4..at + 8].copy_from_slice(&p.flags.to_le_bytes());
        b[at + 8..at + 16].copy_from_slice(&p.offset.to_le_bytes());
        b[at + 16..at + 24].copy_from_slice(&p.vaddr.to_le_bytes());
        b[at + 24..at + 32].copy_from_slice(&p.vaddr.to_le_bytes());
        b[at + 32..at + 40].copy_from_slice(&p.filesz.to_le_bytes());
        b[at + 40..at + 48].copy_from_slice(&p.memsz.to_le_bytes());
        b[at + 48..at + 56].copy_from_slice(&4096u64.to_le_bytes());
    }
    b
}

pub fn note_bytes(m: &Manifest) -> Vec<u8> {
    let desc = encode_manifest(m);
    let mut n = Vec::new();
    n.extend_from_slice(&5u32.to_le_bytes());
    n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    n.extend_from_slice(&NOTE_TYPE_MANIFEST.to_le_bytes());
    n.extend_from_slice(b"kiln\0\0\0\0");
    n.extend_from_slice(&desc);
    n
}

pub const TEXT: u64 = IMAGE_BASE;
pub const DATA: u64 = IMAGE_BASE + 0x1000;

pub fn phs() -> Vec<Ph> {
    vec![
        Ph {
            ptype: 1,
            flags: 5,
            offset: 0x1000,
            vaddr: TEXT,
            filesz: 0x10,
            memsz: 0x10,
        },
        Ph {
            ptype: 1,
            flags: 6,
            offset: 0x2000,
            vaddr: DATA,
            filesz: 0x100,
            memsz: 0x3000,
        },
        Ph {
            ptype: 4,
            flags: 4,
            offset: 0x3000,
            vaddr: 0,
            filesz: 0,
            memsz: 0,
        },
    ]
}

pub fn build(phs: &[Ph], m: &Manifest) -> Vec<u8> {
    let note = note_bytes(m);
    let mut phs = phs.to_vec();
    if let Some(p) = phs.iter_mut().find(|p| p.ptype == 4) {
        p.filesz = note.len() as u64;
    }
    let mut b = write_elf(TEXT, &phs, 0x4000);
    b[0x1000] = 0xf4;
    b[0x3000..0x3000 + note.len()].copy_from_slice(&note);
    b
}

/// A minimal valid image with `manifest`.
pub fn minimal(manifest: &Manifest) -> Vec<u8> {
    build(&phs(), manifest)
}
