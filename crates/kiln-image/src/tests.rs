//! Synthetic images: one valid image built by hand, then one mutation per
//! rejection the loader promises.

use super::*;
use kiln_abi::{device, Manifest, IMAGE_BASE, NOTE_TYPE_MANIFEST};

/// A program header as the test writes it.
#[derive(Clone, Copy)]
pub(crate) struct Ph {
    pub ptype: u32,
    pub flags: u32,
    pub offset: u64,
    pub vaddr: u64,
    pub filesz: u64,
    pub memsz: u64,
}

/// Writes an ELF64 file with the given headers; contents are placed by the caller.
pub(crate) fn write_elf(entry: u64, phs: &[Ph], total: usize) -> Vec<u8> {
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

fn note_bytes(m: &Manifest) -> Vec<u8> {
    let desc = encode_manifest(m);
    let mut n = Vec::new();
    n.extend_from_slice(&5u32.to_le_bytes());
    n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    n.extend_from_slice(&NOTE_TYPE_MANIFEST.to_le_bytes());
    n.extend_from_slice(b"kiln\0\0\0\0");
    n.extend_from_slice(&desc);
    n
}

const TEXT: u64 = IMAGE_BASE;
const DATA: u64 = IMAGE_BASE + 0x1000;

fn phs() -> Vec<Ph> {
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

fn build(phs: &[Ph], m: &Manifest) -> Vec<u8> {
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

fn good() -> Vec<u8> {
    build(
        &phs(),
        &Manifest::new().with_device(device::NET, "service0"),
    )
}

fn err(bytes: Vec<u8>) -> String {
    Image::parse(bytes)
        .expect_err("image should be rejected")
        .to_string()
}

#[test]
fn valid_image_parses() {
    let img = Image::parse(good()).unwrap();
    assert_eq!(img.entry(), TEXT);
    assert_eq!(img.segments().len(), 2);
    assert_eq!(img.segments()[0].perms(), "r-x");
    assert_eq!(img.segments()[1].perms(), "rw-");
    assert_eq!(img.segment_data(&img.segments()[0])[0], 0xf4);
    assert_eq!(img.end(), DATA + 0x3000);
    assert_eq!(img.manifest().device_count, 1);
    assert_eq!(device_name(&img.manifest().devices[0]), "service0");
    assert_eq!(img.stack_size(), kiln_abi::DEFAULT_STACK_SIZE);
}

#[test]
fn not_elf() {
    assert_eq!(
        err(b"#!/bin/sh\necho hi\n".to_vec()),
        "not an ELF file (bad magic bytes)"
    );
    assert_eq!(err(Vec::new()), "not an ELF file (bad magic bytes)");
}

#[test]
fn truncated_anywhere_is_an_error_not_a_panic() {
    let full = good();
    let needed = 0x3000 + 20 + kiln_abi::MANIFEST_SIZE;
    assert!(Image::parse(full[..needed].to_vec()).is_ok());
    for len in 0..needed {
        assert!(
            Image::parse(full[..len].to_vec()).is_err(),
            "prefix of {len} bytes accepted"
        );
    }
    assert!(err(full[..40].to_vec()).contains("truncated"));
    assert!(err(full[..0x1008].to_vec()).contains("truncated image: segment contents"));
}

#[test]
fn wrong_architecture() {
    let mut b = good();
    b[18] = 183; // aarch64
    assert!(err(b).contains("machine 183"));
    let mut b = good();
    b[4] = 1;
    assert!(err(b).contains("ELF64"));
}

#[test]
fn pie_is_rejected() {
    let mut b = good();
    b[16] = 3;
    assert!(err(b).contains("PIE"));
}

#[test]
fn no_load_segment() {
    let only_note = vec![phs()[2]];
    assert_eq!(
        err(build(&only_note, &Manifest::new())),
        "image has no PT_LOAD segment"
    );
}

#[test]
fn writable_and_executable_segment() {
    let mut p = phs();
    p[1].flags = 7;
    assert!(err(build(&p, &Manifest::new())).contains("is writable and executable (W^X)"));
}

#[test]
fn overlapping_segments() {
    let mut p = phs();
    p[1].vaddr = TEXT; // same page as text
    p[0].flags = 5;
    assert!(err(build(&p, &Manifest::new())).contains("overlap"));
}

#[test]
fn segment_outside_image_window() {
    let mut p = phs();
    p[1].vaddr = 0x1000;
    assert!(err(build(&p, &Manifest::new())).contains("outside the image window"));
    let mut p = phs();
    p[1].memsz = u64::MAX - DATA + 1;
    assert!(err(build(&p, &Manifest::new())).contains("outside the image window"));
}

#[test]
fn unaligned_segment_and_bad_sizes() {
    let mut p = phs();
    p[1].vaddr += 8;
    assert!(err(build(&p, &Manifest::new())).contains("not page aligned"));
    let mut p = phs();
    p[1].filesz = 0x200;
    p[1].memsz = 0x100;
    assert!(err(build(&p, &Manifest::new())).contains("exceeds memory size"));
}

#[test]
fn entry_outside_text() {
    let mut b = good();
    b[24..32].copy_from_slice(&DATA.to_le_bytes());
    assert!(err(b).contains("entry point"));
}

#[test]
fn missing_manifest() {
    let p: Vec<Ph> = phs().into_iter().filter(|p| p.ptype == 1).collect();
    assert!(err(build(&p, &Manifest::new())).contains("no kiln manifest"));
}

#[test]
fn wrong_abi_version() {
    let mut m = Manifest::new();
    m.abi_version = 99;
    let e = Image::parse(build(&phs(), &m)).unwrap_err();
    let cause = std::error::Error::source(&e).unwrap().to_string();
    assert!(cause.contains("ABI version 99"), "{cause}");
}

#[test]
fn bad_device_names_and_kinds() {
    let mut m = Manifest::new().with_device(device::NET, "a");
    m.devices[0].name[0] = b'A';
    assert!(matches!(
        Image::parse(build(&phs(), &m)),
        Err(ImageError::Manifest(ManifestError::DeviceName(0)))
    ));
    let mut m = Manifest::new().with_device(device::NET, "a");
    m.devices[0].kind = 9;
    assert!(matches!(
        Image::parse(build(&phs(), &m)),
        Err(ImageError::Manifest(ManifestError::DeviceKind {
            index: 0,
            kind: 9
        }))
    ));
    let m = Manifest::new()
        .with_device(device::NET, "x")
        .with_device(device::BLOCK, "x");
    assert!(matches!(
        Image::parse(build(&phs(), &m)),
        Err(ImageError::Manifest(ManifestError::DuplicateName(_)))
    ));
    let mut m = Manifest::new();
    m.device_count = 200;
    assert!(Image::parse(build(&phs(), &m)).is_err());
}

#[test]
fn single_byte_corruptions_never_panic() {
    // Cheap deterministic stand-in for the fuzz target: flip every byte of
    // the headers and the note to a few values.
    let base = good();
    let positions: Vec<usize> = (0..64 + 3 * 56).chain(0x3000..0x3000 + 240).collect();
    for &at in &positions {
        for v in [0u8, 1, 0x7f, 0x80, 0xff] {
            let mut b = base.clone();
            b[at] = v;
            let _ = Image::parse(b);
        }
    }
}
