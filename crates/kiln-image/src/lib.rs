//! Parsing and validation of kiln images.
//!
//! An image is a static ELF64 x86-64 executable linked at
//! [`kiln_abi::IMAGE_BASE`] with page-aligned `PT_LOAD` segments and a
//! `PT_NOTE` holding the kiln manifest. Every tender loads an image only
//! through [`Image::parse`], which checks everything a loader relies on before
//! any field is used: bounds of every header and segment, the machine, the
//! segment permissions (never writable and executable), overlaps, the address
//! window, the entry point and the manifest. Bad input yields an
//! [`ImageError`] that says what is wrong and where; this module never panics
//! on any input (it is fuzzed).
#![forbid(unsafe_code)]

mod elf;
mod manifest;
pub mod synthetic;

use std::path::Path;

pub use elf::Segment;
use kiln_abi::{Manifest, DEFAULT_STACK_SIZE, PAGE_SIZE};
pub use manifest::{device_name, encode as encode_manifest, ManifestError};

/// Why an image was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file could not be read.
    #[error("cannot read image {path}")]
    Read {
        /// The path given.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not an ELF file.
    #[error("not an ELF file (bad magic bytes)")]
    NotElf,
    /// The file ends before a structure it declares.
    #[error("truncated image: {what} needs bytes {start:#x}..{end:#x} but the file has {len:#x}")]
    Truncated {
        /// Which structure.
        what: &'static str,
        /// Its first byte.
        start: u64,
        /// One past its last byte.
        end: u64,
        /// The file length.
        len: u64,
    },
    /// A header field has a value kiln does not accept.
    #[error("unsupported image: {0}")]
    Unsupported(String),
    /// The program headers contain no loadable segment.
    #[error("image has no PT_LOAD segment")]
    NoLoadSegment,
    /// A loadable segment is writable and executable.
    #[error("segment {index} at {vaddr:#x} is writable and executable (W^X)")]
    WritableAndExecutable {
        /// Program header index.
        index: usize,
        /// Its address.
        vaddr: u64,
    },
    /// A loadable segment is malformed.
    #[error("segment {index} at {vaddr:#x}: {reason}")]
    BadSegment {
        /// Program header index.
        index: usize,
        /// Its address.
        vaddr: u64,
        /// What is wrong.
        reason: String,
    },
    /// Two loadable segments share a page.
    #[error("segments {first} and {second} overlap (pages {start:#x}..{end:#x})")]
    Overlap {
        /// One segment's index.
        first: usize,
        /// The other's.
        second: usize,
        /// Start of the shared range.
        start: u64,
        /// End of the shared range.
        end: u64,
    },
    /// The entry point is not in an executable segment.
    #[error("entry point {0:#x} is not inside an executable segment")]
    BadEntry(u64),
    /// The image carries no kiln manifest note.
    #[error("image has no kiln manifest (an ELF note named \"kiln\"); was it built with kiln-rt's entry! macro?")]
    NoManifest,
    /// The manifest is invalid.
    #[error("invalid manifest")]
    Manifest(#[from] ManifestError),
}

/// A validated image. Owns the file bytes; segments refer into them.
#[derive(Debug, Clone)]
pub struct Image {
    bytes: Vec<u8>,
    entry: u64,
    segments: Vec<Segment>,
    manifest: Manifest,
}

impl Image {
    /// Validates `bytes` as a kiln image.
    pub fn parse(bytes: Vec<u8>) -> Result<Image, ImageError> {
        let elf = elf::parse(&bytes)?;
        let note = elf.manifest_note.ok_or(ImageError::NoManifest)?;
        let manifest = manifest::decode(&bytes[note.0..note.1])?;
        Ok(Image {
            entry: elf.entry,
            segments: elf.segments,
            manifest,
            bytes,
        })
    }

    /// Reads and validates the image at `path`.
    pub fn load(path: &Path) -> Result<Image, ImageError> {
        let bytes = std::fs::read(path).map_err(|source| ImageError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Image::parse(bytes)
    }

    /// The entry point's address.
    pub fn entry(&self) -> u64 {
        self.entry
    }

    /// The loadable segments, in address order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The bytes a segment takes from the file (`file_size` of them); the rest
    /// of its `mem_size` is zero.
    pub fn segment_data(&self, s: &Segment) -> &[u8] {
        // Bounds were checked by `parse` for every segment it produced; a
        // segment from elsewhere gets an empty slice rather than a panic.
        let start = s.file_offset as usize;
        let end = start.saturating_add(s.file_size as usize);
        self.bytes.get(start..end).unwrap_or(&[])
    }

    /// The image's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The stack size the image asked for, or the default.
    pub fn stack_size(&self) -> u64 {
        match self.manifest.stack_size {
            0 => DEFAULT_STACK_SIZE,
            n => u64::from(n),
        }
    }

    /// The page-aligned end of the highest segment.
    pub fn end(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| page_up(s.vaddr + s.mem_size))
            .max()
            .unwrap_or(kiln_abi::IMAGE_BASE)
    }

    /// Size of the image file in bytes.
    pub fn file_size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// The raw file bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Rounds up to a page boundary (saturating).
pub fn page_up(x: u64) -> u64 {
    x.saturating_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1)
}

#[cfg(test)]
mod tests;
