//! Synthetic images: one valid image built by hand, then one mutation per
//! rejection the loader promises.

use super::synthetic::*;
use super::*;
use kiln_abi::{device, Manifest};

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
