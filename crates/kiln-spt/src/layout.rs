//! Where everything of one instance goes in the tender's address space.
//!
//! Pure arithmetic, no system calls: the image's segments at their link
//! addresses; right after the image the heap, then a guard page, then the
//! stack (heap and stack together take `mem_size` bytes, as
//! [`kiln_tender::RunConfig::mem_size`] defines for spt); the BootInfo block
//! in the pages just below [`IMAGE_BASE`] (or, when it is too big for them,
//! just above the stack).

use kiln_abi::{IMAGE_BASE, PAGE_SIZE};
use kiln_image::Image;

/// Lowest address the tender maps anything at: page 0 and its neighbours
/// stay unmapped so that small null-pointer offsets fault.
pub const LOW_LIMIT: u64 = 0x1_0000;

/// Highest end address of anything the tender maps for the guest; keeps
/// guest memory far below the tender's own mappings (PIE binary, heap,
/// libraries and stack all live above 0x5500_0000_0000).
pub const HIGH_LIMIT: u64 = 0x1000_0000_0000;

/// Access rights of a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prot {
    /// Readable.
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub exec: bool,
}

impl Prot {
    /// Read and write, not executable: heap, stack.
    pub const RW: Prot = Prot {
        read: true,
        write: true,
        exec: false,
    };
    /// No access: guard pages.
    pub const NONE: Prot = Prot {
        read: false,
        write: false,
        exec: false,
    };
    /// Read only.
    pub const R: Prot = Prot {
        read: true,
        write: false,
        exec: false,
    };

    /// The `PROT_*` bits for `mmap`/`mprotect`.
    pub fn bits(self) -> i32 {
        let mut p = libc::PROT_NONE;
        if self.read {
            p |= libc::PROT_READ;
        }
        if self.write {
            p |= libc::PROT_WRITE;
        }
        if self.exec {
            p |= libc::PROT_EXEC;
        }
        p
    }
}

/// A page-aligned range `[start, end)` of addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
}

impl Span {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the span holds no byte.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// Whether `addr` lies inside.
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }
}

/// One image segment as it will be mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentPlan {
    /// Program header index, for messages.
    pub index: usize,
    /// The pages it occupies.
    pub span: Span,
    /// Its final protection, exactly its `p_flags`.
    pub prot: Prot,
}

/// The whole address-space plan of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Image segments in address order (empty ones left out).
    pub segments: Vec<SegmentPlan>,
    /// Free memory for the guest's heap.
    pub heap: Span,
    /// The page below the stack, mapped `PROT_NONE`.
    pub guard: Span,
    /// The guest's stack.
    pub stack: Span,
    /// The BootInfo block (BootInfo, argv/envp, strings), read-only.
    pub boot: Span,
}

/// Why no layout fits.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// Memory size too small for the stack and a heap page.
    #[error(
        "memory size {mem_size:#x} is too small: the image's stack alone takes {stack:#x} bytes \
         and the heap needs at least a page"
    )]
    TooSmall {
        /// Requested memory size.
        mem_size: u64,
        /// Stack size.
        stack: u64,
    },
    /// Memory size beyond what the tender can place.
    #[error("memory size {mem_size:#x} is too large (at most {max:#x})")]
    TooLarge {
        /// Requested memory size.
        mem_size: u64,
        /// The limit.
        max: u64,
    },
    /// The BootInfo block does not fit anywhere.
    #[error("the BootInfo block ({size} bytes of arguments and environment) is too large")]
    BootTooLarge {
        /// Bytes needed.
        size: u64,
    },
}

/// Rounds `x` up to a page boundary, `None` on overflow.
pub fn page_up(x: u64) -> Option<u64> {
    Some(x.checked_add(PAGE_SIZE - 1)? & !(PAGE_SIZE - 1))
}

/// The protection an image segment gets: exactly its flags.
pub fn segment_prot(s: &kiln_image::Segment) -> Prot {
    Prot {
        read: s.read,
        write: s.write,
        exec: s.execute,
    }
}

impl Layout {
    /// Plans an instance of `image` with `mem_size` bytes of heap and stack
    /// and a BootInfo block of `boot_size` bytes.
    pub fn plan(image: &Image, mem_size: u64, boot_size: u64) -> Result<Layout, LayoutError> {
        let segments = image
            .segments()
            .iter()
            .filter(|s| s.mem_size > 0)
            .map(|s| SegmentPlan {
                index: s.index,
                span: Span {
                    start: s.vaddr,
                    // Validated images end below IMAGE_LIMIT, so this cannot overflow.
                    end: page_up(s.vaddr + s.mem_size).unwrap_or(u64::MAX),
                },
                prot: segment_prot(s),
            })
            .collect();
        Self::plan_spans(
            segments,
            image.end(),
            page_up(image.stack_size()).unwrap_or(u64::MAX),
            mem_size,
            boot_size,
        )
    }

    /// [`Layout::plan`] on plain numbers (what the tests use).
    pub fn plan_spans(
        segments: Vec<SegmentPlan>,
        image_end: u64,
        stack_size: u64,
        mem_size: u64,
        boot_size: u64,
    ) -> Result<Layout, LayoutError> {
        let too_large = LayoutError::TooLarge {
            mem_size,
            max: HIGH_LIMIT - image_end,
        };
        let mem = page_up(mem_size).ok_or(too_large.clone())?;
        let heap_size = mem
            .checked_sub(stack_size)
            .filter(|&h| h >= PAGE_SIZE)
            .ok_or(LayoutError::TooSmall {
                mem_size,
                stack: stack_size,
            })?;
        let heap_end = image_end.checked_add(heap_size).ok_or(too_large.clone())?;
        let stack_bottom = heap_end.checked_add(PAGE_SIZE).ok_or(too_large.clone())?;
        let top = stack_bottom
            .checked_add(stack_size)
            .ok_or(too_large.clone())?;
        if top > HIGH_LIMIT {
            return Err(too_large);
        }
        let boot_len =
            page_up(boot_size.max(1)).ok_or(LayoutError::BootTooLarge { size: boot_size })?;
        let boot = if IMAGE_BASE - LOW_LIMIT >= boot_len {
            Span {
                start: IMAGE_BASE - boot_len,
                end: IMAGE_BASE,
            }
        } else {
            match top.checked_add(boot_len) {
                Some(end) if end <= HIGH_LIMIT => Span { start: top, end },
                _ => return Err(LayoutError::BootTooLarge { size: boot_size }),
            }
        };
        Ok(Layout {
            segments,
            heap: Span {
                start: image_end,
                end: heap_end,
            },
            guard: Span {
                start: heap_end,
                end: stack_bottom,
            },
            stack: Span {
                start: stack_bottom,
                end: top,
            },
            boot,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn seg(index: usize, start: u64, end: u64, prot: Prot) -> SegmentPlan {
        SegmentPlan {
            index,
            span: Span { start, end },
            prot,
        }
    }

    #[test]
    fn prot_bits_follow_flags_exactly() {
        let rx = Prot {
            read: true,
            write: false,
            exec: true,
        };
        assert_eq!(rx.bits(), libc::PROT_READ | libc::PROT_EXEC);
        assert_eq!(Prot::R.bits(), libc::PROT_READ);
        assert_eq!(Prot::RW.bits(), libc::PROT_READ | libc::PROT_WRITE);
        let none = Prot {
            read: false,
            write: false,
            exec: false,
        };
        assert_eq!(none.bits(), libc::PROT_NONE);
        let xo = Prot {
            read: false,
            write: false,
            exec: true,
        };
        assert_eq!(xo.bits(), libc::PROT_EXEC);
    }

    #[test]
    fn segment_prot_copies_the_elf_flags() {
        let s = kiln_image::Segment {
            index: 2,
            vaddr: 0x10_3000,
            mem_size: 10,
            file_offset: 0,
            file_size: 10,
            read: true,
            write: true,
            execute: false,
        };
        assert_eq!(segment_prot(&s), Prot::RW);
        let t = kiln_image::Segment {
            write: false,
            execute: true,
            ..s
        };
        assert_eq!(segment_prot(&t).bits(), libc::PROT_READ | libc::PROT_EXEC);
    }

    #[test]
    fn heap_guard_and_stack_follow_the_image() {
        let segs = vec![seg(0, 0x10_0000, 0x10_2000, Prot::R)];
        let l = Layout::plan_spans(segs.clone(), 0x10_2000, 256 * 1024, 32 * MIB, 300).unwrap();
        assert_eq!(l.segments, segs);
        assert_eq!(l.heap.start, 0x10_2000);
        assert_eq!(l.heap.len() + l.stack.len(), 32 * MIB);
        assert_eq!(l.guard.start, l.heap.end);
        assert_eq!(l.guard.len(), PAGE_SIZE);
        assert_eq!(l.stack.start, l.guard.end);
        assert_eq!(l.stack.len(), 256 * 1024);
        assert_eq!(
            l.boot,
            Span {
                start: IMAGE_BASE - PAGE_SIZE,
                end: IMAGE_BASE
            }
        );
    }

    #[test]
    fn odd_memory_size_is_rounded_up() {
        let l = Layout::plan_spans(vec![], 0x10_1000, 0x1000, 32 * MIB - 5, 1).unwrap();
        assert_eq!(l.heap.len() + l.stack.len(), 32 * MIB);
    }

    #[test]
    fn too_small_memory_is_refused() {
        // Exactly the stack leaves no heap page.
        let err = Layout::plan_spans(vec![], 0x10_1000, 0x4_0000, 0x4_0000, 1).unwrap_err();
        assert!(matches!(err, LayoutError::TooSmall { .. }), "{err}");
        assert!(Layout::plan_spans(vec![], 0x10_1000, 0x4_0000, 0x4_1000, 1).is_ok());
        assert!(Layout::plan_spans(vec![], 0x10_1000, 0x4_0000, 0, 1).is_err());
        assert!(Layout::plan_spans(vec![], 0x10_1000, u64::MAX, 32 * MIB, 1).is_err());
    }

    #[test]
    fn huge_memory_is_refused() {
        for mem in [u64::MAX, u64::MAX - 4000, HIGH_LIMIT] {
            let err = Layout::plan_spans(vec![], 0x10_1000, 0x1000, mem, 1).unwrap_err();
            assert!(matches!(err, LayoutError::TooLarge { .. }), "{err}");
        }
    }

    #[test]
    fn big_boot_block_goes_above_the_stack() {
        let size = IMAGE_BASE; // cannot fit below the image
        let l = Layout::plan_spans(vec![], 0x10_1000, 0x1000, 32 * MIB, size).unwrap();
        assert_eq!(l.boot.start, l.stack.end);
        assert_eq!(l.boot.len(), size);
        let fits = IMAGE_BASE - LOW_LIMIT;
        let l = Layout::plan_spans(vec![], 0x10_1000, 0x1000, 32 * MIB, fits).unwrap();
        assert_eq!(l.boot.start, LOW_LIMIT);
        assert!(Layout::plan_spans(vec![], 0x10_1000, 0x1000, 32 * MIB, u64::MAX).is_err());
    }

    #[test]
    fn spans() {
        let s = Span {
            start: 0x1000,
            end: 0x3000,
        };
        assert!(s.contains(0x1000) && s.contains(0x2fff) && !s.contains(0x3000));
        assert_eq!(s.len(), 0x2000);
        assert!(!s.is_empty());
        assert_eq!(page_up(1), Some(PAGE_SIZE));
        assert_eq!(page_up(u64::MAX), None);
    }
}
