//! The ELF64 subset kiln images use, read field by field with bounds checks.

use crate::{page_up, ImageError};
use kiln_abi::{IMAGE_BASE, IMAGE_LIMIT, NOTE_NAME, NOTE_TYPE_MANIFEST, PAGE_SIZE};

const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const MAX_PHDRS: usize = 64;

const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const PT_NOTE: u32 = 4;
const PT_TLS: u32 = 7;
const PF_X: u32 = 1;
const PF_W: u32 = 2;
const PF_R: u32 = 4;

/// A loadable segment of a validated image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Program header index in the file.
    pub index: usize,
    /// Page-aligned load address.
    pub vaddr: u64,
    /// Size in memory (at least `file_size`).
    pub mem_size: u64,
    /// Offset of the initialized bytes in the file.
    pub file_offset: u64,
    /// Number of initialized bytes.
    pub file_size: u64,
    /// Readable.
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub execute: bool,
}

impl Segment {
    /// One past the last byte in memory.
    pub fn end(&self) -> u64 {
        self.vaddr + self.mem_size
    }

    /// Permissions as `r-x`-style text.
    pub fn perms(&self) -> String {
        format!(
            "{}{}{}",
            if self.read { 'r' } else { '-' },
            if self.write { 'w' } else { '-' },
            if self.execute { 'x' } else { '-' }
        )
    }
}

pub(crate) struct Elf {
    pub entry: u64,
    pub segments: Vec<Segment>,
    /// File range of the manifest note's descriptor.
    pub manifest_note: Option<(usize, usize)>,
}

fn field<const N: usize>(
    bytes: &[u8],
    at: usize,
    what: &'static str,
) -> Result<[u8; N], ImageError> {
    let end = at.checked_add(N).ok_or(ImageError::Truncated {
        what,
        start: at as u64,
        end: u64::MAX,
        len: bytes.len() as u64,
    })?;
    bytes
        .get(at..end)
        .and_then(|s| s.try_into().ok())
        .ok_or(ImageError::Truncated {
            what,
            start: at as u64,
            end: end as u64,
            len: bytes.len() as u64,
        })
}

fn u16_at(b: &[u8], at: usize, what: &'static str) -> Result<u16, ImageError> {
    field::<2>(b, at, what).map(u16::from_le_bytes)
}
fn u32_at(b: &[u8], at: usize, what: &'static str) -> Result<u32, ImageError> {
    field::<4>(b, at, what).map(u32::from_le_bytes)
}
fn u64_at(b: &[u8], at: usize, what: &'static str) -> Result<u64, ImageError> {
    field::<8>(b, at, what).map(u64::from_le_bytes)
}

fn unsupported(msg: impl Into<String>) -> ImageError {
    ImageError::Unsupported(msg.into())
}

pub(crate) fn parse(b: &[u8]) -> Result<Elf, ImageError> {
    if b.get(..4) != Some(&b"\x7fELF"[..]) {
        return Err(ImageError::NotElf);
    }
    let ident: [u8; 16] = field(b, 0, "ELF header")?;
    field::<EHDR_SIZE>(b, 0, "ELF header")?;
    if ident[4] != 2 {
        return Err(unsupported(format!(
            "ELF class {} (kiln needs ELF64)",
            ident[4]
        )));
    }
    if ident[5] != 1 {
        return Err(unsupported("big-endian ELF (kiln needs little-endian)"));
    }
    let machine = u16_at(b, 18, "ELF header")?;
    if machine != EM_X86_64 {
        return Err(unsupported(format!(
            "machine {machine} (kiln needs x86-64, machine 62)"
        )));
    }
    let etype = u16_at(b, 16, "ELF header")?;
    if etype != ET_EXEC {
        return Err(unsupported(format!(
            "ELF type {etype} (kiln needs a static executable, type 2; is it linked as PIE?)"
        )));
    }
    let entry = u64_at(b, 24, "ELF header")?;
    let phoff = u64_at(b, 32, "ELF header")?;
    let phentsize = u16_at(b, 54, "ELF header")? as usize;
    let phnum = u16_at(b, 56, "ELF header")? as usize;
    if phentsize != PHDR_SIZE {
        return Err(unsupported(format!(
            "program header size {phentsize} (expected 56)"
        )));
    }
    if phnum > MAX_PHDRS {
        return Err(unsupported(format!(
            "{phnum} program headers (at most {MAX_PHDRS})"
        )));
    }
    let table_end = phoff.saturating_add((phnum * PHDR_SIZE) as u64);
    if table_end > b.len() as u64 {
        return Err(ImageError::Truncated {
            what: "program header table",
            start: phoff,
            end: table_end,
            len: b.len() as u64,
        });
    }

    let mut segments = Vec::new();
    let mut manifest_note = None;
    for index in 0..phnum {
        let at = phoff as usize + index * PHDR_SIZE;
        let ptype = u32_at(b, at, "program header")?;
        let flags = u32_at(b, at + 4, "program header")?;
        let offset = u64_at(b, at + 8, "program header")?;
        let vaddr = u64_at(b, at + 16, "program header")?;
        let filesz = u64_at(b, at + 32, "program header")?;
        let memsz = u64_at(b, at + 40, "program header")?;
        let file_end = offset.checked_add(filesz).filter(|&e| e <= b.len() as u64);
        let bad = |reason: String| ImageError::BadSegment {
            index,
            vaddr,
            reason,
        };
        match ptype {
            PT_LOAD => {
                let Some(_) = file_end else {
                    return Err(ImageError::Truncated {
                        what: "segment contents",
                        start: offset,
                        end: offset.saturating_add(filesz),
                        len: b.len() as u64,
                    });
                };
                if memsz == 0 {
                    continue;
                }
                if filesz > memsz {
                    return Err(bad(format!(
                        "file size {filesz:#x} exceeds memory size {memsz:#x}"
                    )));
                }
                if vaddr % PAGE_SIZE != 0 {
                    return Err(bad("address is not page aligned".into()));
                }
                let end = vaddr.saturating_add(memsz);
                if vaddr < IMAGE_BASE || end > IMAGE_LIMIT {
                    return Err(bad(format!(
                        "spans {vaddr:#x}..{end:#x}, outside the image window {IMAGE_BASE:#x}..{IMAGE_LIMIT:#x}"
                    )));
                }
                let (read, write, execute) =
                    (flags & PF_R != 0, flags & PF_W != 0, flags & PF_X != 0);
                if write && execute {
                    return Err(ImageError::WritableAndExecutable { index, vaddr });
                }
                if !read && !write && !execute {
                    return Err(bad("has no permissions".into()));
                }
                segments.push(Segment {
                    index,
                    vaddr,
                    mem_size: memsz,
                    file_offset: offset,
                    file_size: filesz,
                    read,
                    write,
                    execute,
                });
            }
            PT_NOTE => {
                let Some(end) = file_end else {
                    return Err(ImageError::Truncated {
                        what: "note segment",
                        start: offset,
                        end: offset.saturating_add(filesz),
                        len: b.len() as u64,
                    });
                };
                if let Some(found) = find_manifest(b, offset as usize, end as usize)? {
                    manifest_note = Some(found);
                }
            }
            PT_INTERP | PT_DYNAMIC => {
                return Err(unsupported(
                    "dynamically linked image (kiln images are static)",
                ))
            }
            PT_TLS => return Err(unsupported("thread-local storage segment (not supported)")),
            _ => {}
        }
    }
    if segments.is_empty() {
        return Err(ImageError::NoLoadSegment);
    }
    segments.sort_by_key(|s| s.vaddr);
    for pair in segments.windows(2) {
        let (a, c) = (&pair[0], &pair[1]);
        let a_end = page_up(a.end());
        if a_end > c.vaddr {
            return Err(ImageError::Overlap {
                first: a.index,
                second: c.index,
                start: c.vaddr,
                end: a_end.min(page_up(c.end())),
            });
        }
    }
    if !segments
        .iter()
        .any(|s| s.execute && entry >= s.vaddr && entry < s.end())
    {
        return Err(ImageError::BadEntry(entry));
    }
    Ok(Elf {
        entry,
        segments,
        manifest_note,
    })
}

/// Walks the notes in `b[start..end]`; returns the file range of the kiln
/// manifest's descriptor if present.
fn find_manifest(b: &[u8], start: usize, end: usize) -> Result<Option<(usize, usize)>, ImageError> {
    let align4 = |x: usize| x.checked_add(3).map(|v| v & !3);
    let mut at = start;
    while at + 12 <= end {
        let namesz = u32_at(b, at, "note header")? as usize;
        let descsz = u32_at(b, at + 4, "note header")? as usize;
        let ntype = u32_at(b, at + 8, "note header")?;
        let name_start = at + 12;
        let desc_start = align4(name_start.saturating_add(namesz)).unwrap_or(usize::MAX);
        let desc_end = desc_start.saturating_add(descsz);
        if desc_end > end {
            return Err(ImageError::Truncated {
                what: "note",
                start: at as u64,
                end: desc_end as u64,
                len: end as u64,
            });
        }
        let name = &b[name_start..name_start + namesz];
        if ntype == NOTE_TYPE_MANIFEST && name == &NOTE_NAME[..5] {
            return Ok(Some((desc_start, desc_end)));
        }
        at = align4(desc_end).unwrap_or(usize::MAX);
    }
    Ok(None)
}
