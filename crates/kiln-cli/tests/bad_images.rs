//! Malformed images made from the real hello image: every tender refuses
//! each with exit status 125 and a message saying what is wrong.

mod common;

use common::{image, kiln, run, tenders};
use kiln_abi::EXIT_TENDER_ERROR;
use std::path::PathBuf;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Offsets of the program headers of type `ptype`.
fn phdrs(b: &[u8], ptype: u32) -> Vec<usize> {
    let (off, n) = (u64_at(b, 32) as usize, u16_at(b, 56) as usize);
    (0..n)
        .map(|i| off + i * 56)
        .filter(|&at| u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) == ptype)
        .collect()
}

fn hello() -> Vec<u8> {
    std::fs::read(image("examples/hello")).unwrap()
}

fn write_case(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = common::root().join("target/kiln-test-bad");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{name}.kiln"));
    std::fs::write(&p, bytes).unwrap();
    p
}

fn rejected(name: &str, bytes: Vec<u8>, want: &str) {
    let p = write_case(name, &bytes);
    for t in tenders() {
        let r = run(t, &p, &[], &[]);
        assert_eq!(
            r.status,
            i32::from(EXIT_TENDER_ERROR),
            "{name} on {t}: {r:?}"
        );
        assert!(
            r.stderr.contains(want),
            "{name} on {t}: want {want:?} in {r:?}"
        );
        assert!(
            !r.stderr.contains("panicked"),
            "{name} on {t}: the tender panicked: {r:?}"
        );
    }
    let out = kiln().arg("inspect").arg(&p).output().unwrap();
    assert!(!out.status.success(), "inspect accepted {name}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(want),
        "inspect {name}"
    );
}

#[test]
fn not_an_elf() {
    rejected(
        "not-elf",
        b"#!/bin/sh\necho hello\n".to_vec(),
        "not an ELF file",
    );
}

#[test]
fn truncated() {
    let b = hello();
    rejected("truncated-header", b[..40].to_vec(), "truncated image");
    rejected(
        "truncated-body",
        b[..b.len() / 2].to_vec(),
        "truncated image",
    );
}

#[test]
fn wrong_architecture() {
    let mut b = hello();
    b[18..20].copy_from_slice(&183u16.to_le_bytes());
    rejected("aarch64", b, "machine 183");
}

#[test]
fn no_load_segment() {
    let mut b = hello();
    for at in phdrs(&b, 1) {
        b[at..at + 4].copy_from_slice(&6u32.to_le_bytes()); // PT_PHDR
    }
    rejected("no-load", b, "no PT_LOAD segment");
}

#[test]
fn writable_and_executable_segment() {
    let mut b = hello();
    let text = phdrs(&b, 1)[0];
    b[text + 4..text + 8].copy_from_slice(&7u32.to_le_bytes());
    rejected("wx", b, "writable and executable");
}

#[test]
fn overlapping_segments() {
    let mut b = hello();
    let loads = phdrs(&b, 1);
    let first_vaddr = u64_at(&b, loads[0] + 16);
    let last = *loads.last().unwrap();
    b[last + 16..last + 24].copy_from_slice(&first_vaddr.to_le_bytes());
    rejected("overlap", b, "overlap");
}

#[test]
fn segment_outside_the_image_window() {
    let mut b = hello();
    let last = *phdrs(&b, 1).last().unwrap();
    b[last + 16..last + 24].copy_from_slice(&0x1000u64.to_le_bytes());
    rejected("low-segment", b, "outside the image window");
}

#[test]
fn segment_outside_guest_memory_on_hvt() {
    if !common::hvt_available() {
        return;
    }
    let mut b = hello();
    let last = *phdrs(&b, 1).last().unwrap();
    b[last + 16..last + 24].copy_from_slice(&0x3000_0000u64.to_le_bytes());
    let p = write_case("beyond-mem", &b);
    let r = run("hvt", &p, &["--mem", "32M"], &[]);
    assert_eq!(r.status, i32::from(EXIT_TENDER_ERROR), "{r:?}");
    assert!(r.stderr.contains("memory"), "{r:?}");
}

#[test]
fn wrong_abi_version() {
    let mut b = hello();
    let pos = b
        .windows(4)
        .position(|w| w == b"KLNM")
        .expect("manifest magic in hello");
    b[pos + 4..pos + 8].copy_from_slice(&99u32.to_le_bytes());
    rejected("abi99", b, "ABI version 99");
}

#[test]
fn missing_manifest() {
    let mut b = hello();
    for at in phdrs(&b, 4) {
        b[at..at + 4].copy_from_slice(&6u32.to_le_bytes());
    }
    rejected("no-manifest", b, "no kiln manifest");
}

#[test]
fn missing_file_and_bad_flags_are_clear() {
    let r = run("spt", std::path::Path::new("does/not/exist.kiln"), &[], &[]);
    assert_eq!(r.status, i32::from(EXIT_TENDER_ERROR), "{r:?}");
    assert!(r.stderr.contains("cannot read image"), "{r:?}");
    let img = image("examples/hello");
    let r = run("spt", &img, &["--mem", "12X"], &[]);
    assert_eq!(r.status, 2, "{r:?}");
    assert!(r.stderr.contains("not a size"), "{r:?}");
    let r = run("spt", &img, &["--disk", "data=/tmp/x"], &[]);
    assert_eq!(r.status, i32::from(EXIT_TENDER_ERROR), "{r:?}");
    assert!(
        r.stderr.contains("declares no block device named 'data'"),
        "{r:?}"
    );
}
