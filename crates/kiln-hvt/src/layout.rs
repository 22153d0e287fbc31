//! Where everything lives in guest memory, and with which permissions.
//!
//! Guest-physical addresses equal guest-virtual ones (identity map).
//!
//! ```text
//! 0x0000_0000  page 0                          unmapped (null pointers fault)
//! 0x0000_1000  GDT, TSS + I/O bitmap, IDT      supervisor RW  NX
//! 0x0000_2000  ring-0 exception stubs          supervisor R   X
//! 0x0000_3000  ring-0 stack (TSS.RSP0=0x4000)  supervisor RW  NX
//! 0x0000_4000  page tables (PML4, PDPT, PD,    not mapped at all: only the
//!              PTs), as many as needed         MMU's walker reads them
//!     ...      free                            unmapped
//! IMAGE_BASE-n BootInfo block (BootInfo,       user R NX
//!              argv/envp StrRefs, strings)
//! IMAGE_BASE   image segments                  user, W^X from p_flags;
//!              (gaps between them unmapped)    R-only, RX or RW NX
//! image end    heap                            user RW NX
//! stack-4K     guard page                      unmapped
//! mem - stack  stack (top = end of memory)     user RW NX
//! ```
//!
//! The image runs at CPL3, so it can neither read nor write the supervisor
//! pages, and nothing maps the page tables, so it cannot even name them.
//! The same permission list drives the hypercall memory checks
//! (the `memory` module): a hypercall may read only what the image itself can
//! read and write only what it can write.

use kiln_abi::{IMAGE_BASE, IMAGE_LIMIT, MAX_STACK_SIZE, PAGE_SIZE};
use kiln_image::Segment;

use crate::x86;

/// Smallest guest memory accepted.
pub const MIN_MEM: u64 = 2 << 20;
/// Largest guest memory accepted (one page directory maps it).
pub const MAX_MEM: u64 = 1 << 30;

/// Page holding the GDT, the TSS and the IDT.
pub const SYSTEM_PAGE: u64 = 0x1000;
/// Address of the GDT.
pub const GDT_ADDR: u64 = SYSTEM_PAGE;
/// Address of the TSS.
pub const TSS_ADDR: u64 = SYSTEM_PAGE + 0x100;
/// Address of the IDT.
pub const IDT_ADDR: u64 = SYSTEM_PAGE + 0x800;
/// Page holding the exception stubs.
pub const STUBS_PAGE: u64 = 0x2000;
/// The ring-0 stack page.
pub const RING0_STACK_PAGE: u64 = 0x3000;
/// Top of the ring-0 stack (TSS.RSP0).
pub const RING0_STACK_TOP: u64 = RING0_STACK_PAGE + PAGE_SIZE;
/// First page-table page (the PML4); the others follow.
pub const PAGE_TABLES_BASE: u64 = 0x4000;

const _: () = assert!(GDT_ADDR + x86::GDT_SIZE as u64 <= TSS_ADDR);
const _: () = assert!(TSS_ADDR + x86::TSS_SIZE as u64 <= IDT_ADDR);
const _: () = assert!(IDT_ADDR + x86::IDT_SIZE as u64 <= SYSTEM_PAGE + PAGE_SIZE);
const _: () = assert!(x86::STUBS_SIZE as u64 <= PAGE_SIZE);

/// Access rights of a mapped page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Perm {
    /// Reachable from CPL3 (the U/S bit).
    pub user: bool,
    /// Writable.
    pub write: bool,
    /// Executable (no NX bit).
    pub exec: bool,
}

impl Perm {
    const SUPERVISOR_DATA: Perm = Perm {
        user: false,
        write: true,
        exec: false,
    };
    const SUPERVISOR_CODE: Perm = Perm {
        user: false,
        write: false,
        exec: true,
    };
    const USER_RO: Perm = Perm {
        user: true,
        write: false,
        exec: false,
    };
    const USER_RW: Perm = Perm {
        user: true,
        write: true,
        exec: false,
    };
}

/// What a mapping holds (for messages and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Area {
    /// GDT, TSS, IDT.
    SystemTables,
    /// Ring-0 exception stubs.
    Stubs,
    /// Ring-0 stack.
    Ring0Stack,
    /// The BootInfo block.
    BootInfo,
    /// An image segment (its program header index).
    Segment(usize),
    /// The heap.
    Heap,
    /// The stack.
    Stack,
}

/// A page-aligned range of guest memory mapped with one permission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// First byte (page aligned).
    pub start: u64,
    /// One past the last byte (page aligned).
    pub end: u64,
    /// Its rights.
    pub perm: Perm,
    /// What it holds.
    pub area: Area,
}

/// Why the image does not fit in the guest memory asked for.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// The memory size is out of range or not page aligned.
    #[error("guest memory size {0:#x} must be a multiple of 4 KiB between 2 MiB and 1 GiB")]
    MemSize(u64),
    /// The stack size is invalid.
    #[error("stack size {0:#x} must be a non-zero multiple of 4 KiB of at most 64 MiB")]
    StackSize(u64),
    /// A segment lies outside the image window.
    #[error("segment {index} ({start:#x}..{end:#x}) lies outside the image window {IMAGE_BASE:#x}..{IMAGE_LIMIT:#x}")]
    Segment {
        /// Program header index.
        index: usize,
        /// Start address.
        start: u64,
        /// End address.
        end: u64,
    },
    /// Image, guard page and stack need more memory than there is.
    #[error("the image (up to {image_end:#x}), a guard page and the {stack_size} KiB stack do not fit in {mem_size} KiB of guest memory; use a larger --mem")]
    TooSmall {
        /// End of the image.
        image_end: u64,
        /// Stack size in KiB.
        stack_size: u64,
        /// Memory size in KiB.
        mem_size: u64,
    },
    /// The BootInfo block (mostly arguments and environment) is too large.
    #[error("arguments and environment need {0} bytes of boot information, more than the tender area has room for")]
    BootInfoTooLarge(u64),
    /// The page tables and the BootInfo block collide in the tender area.
    #[error("{tables} page tables and {boot} bytes of boot information do not fit below {IMAGE_BASE:#x}")]
    TenderAreaFull {
        /// Number of page-table pages.
        tables: usize,
        /// BootInfo bytes.
        boot: u64,
    },
}

/// The complete memory plan of one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Size of guest memory.
    pub mem_size: u64,
    /// Every mapped range, sorted by address, non-overlapping.
    pub mappings: Vec<Mapping>,
    /// Address of the BootInfo block.
    pub boot_info: u64,
    /// Start of the heap.
    pub heap_start: u64,
    /// Size of the heap.
    pub heap_size: u64,
    /// Lowest stack address (the guard page is just below).
    pub stack_bottom: u64,
}

/// Rounds `x` up to a page boundary (saturating).
pub const fn page_up(x: u64) -> u64 {
    x.saturating_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1)
}

impl Layout {
    /// Plans memory for an image with `segments`, a stack of `stack_size`
    /// bytes and a BootInfo block of `boot_size` bytes in `mem_size` bytes
    /// of guest memory.
    pub fn new(
        segments: &[Segment],
        mem_size: u64,
        stack_size: u64,
        boot_size: u64,
    ) -> Result<Layout, LayoutError> {
        if !(MIN_MEM..=MAX_MEM).contains(&mem_size) || mem_size % PAGE_SIZE != 0 {
            return Err(LayoutError::MemSize(mem_size));
        }
        if stack_size == 0 || stack_size > MAX_STACK_SIZE || stack_size % PAGE_SIZE != 0 {
            return Err(LayoutError::StackSize(stack_size));
        }
        let boot_pages = page_up(boot_size);
        if boot_size == 0 || boot_pages > IMAGE_BASE - PAGE_TABLES_BASE {
            return Err(LayoutError::BootInfoTooLarge(boot_size));
        }
        let boot_info = IMAGE_BASE - boot_pages;

        let mut mappings = vec![
            Mapping {
                start: SYSTEM_PAGE,
                end: SYSTEM_PAGE + PAGE_SIZE,
                perm: Perm::SUPERVISOR_DATA,
                area: Area::SystemTables,
            },
            Mapping {
                start: STUBS_PAGE,
                end: STUBS_PAGE + PAGE_SIZE,
                perm: Perm::SUPERVISOR_CODE,
                area: Area::Stubs,
            },
            Mapping {
                start: RING0_STACK_PAGE,
                end: RING0_STACK_TOP,
                perm: Perm::SUPERVISOR_DATA,
                area: Area::Ring0Stack,
            },
            Mapping {
                start: boot_info,
                end: IMAGE_BASE,
                perm: Perm::USER_RO,
                area: Area::BootInfo,
            },
        ];

        let mut image_end = IMAGE_BASE;
        let mut segs: Vec<&Segment> = segments.iter().collect();
        segs.sort_by_key(|s| s.vaddr);
        for s in segs {
            let start = s.vaddr;
            let end = page_up(s.vaddr.saturating_add(s.mem_size));
            let bad = start % PAGE_SIZE != 0
                || start < IMAGE_BASE
                || end > IMAGE_LIMIT
                || end <= start
                || start < image_end;
            if bad {
                return Err(LayoutError::Segment {
                    index: s.index,
                    start,
                    end,
                });
            }
            mappings.push(Mapping {
                start,
                end,
                perm: Perm {
                    user: true,
                    write: s.write,
                    exec: s.execute,
                },
                area: Area::Segment(s.index),
            });
            image_end = end;
        }

        // image_end ≥ IMAGE_BASE > PAGE_SIZE, so a fitting guard page
        // implies no underflow below.
        if image_end + PAGE_SIZE + stack_size > mem_size {
            return Err(LayoutError::TooSmall {
                image_end,
                stack_size: stack_size >> 10,
                mem_size: mem_size >> 10,
            });
        }
        let stack_bottom = mem_size - stack_size;
        let guard = stack_bottom - PAGE_SIZE;
        let heap_start = image_end;
        let heap_size = guard - image_end;
        if heap_size > 0 {
            mappings.push(Mapping {
                start: heap_start,
                end: guard,
                perm: Perm::USER_RW,
                area: Area::Heap,
            });
        }
        mappings.push(Mapping {
            start: stack_bottom,
            end: mem_size,
            perm: Perm::USER_RW,
            area: Area::Stack,
        });

        let layout = Layout {
            mem_size,
            mappings,
            boot_info,
            heap_start,
            heap_size,
            stack_bottom,
        };
        let tables = crate::paging::tables_needed(&layout.mappings, mem_size);
        if PAGE_TABLES_BASE + tables as u64 * PAGE_SIZE > boot_info {
            return Err(LayoutError::TenderAreaFull {
                tables,
                boot: boot_size,
            });
        }
        Ok(layout)
    }

    /// The guard page below the stack.
    pub fn guard_page(&self) -> std::ops::Range<u64> {
        self.stack_bottom - PAGE_SIZE..self.stack_bottom
    }

    /// The initial stack pointer: the top of memory minus 8, as if the
    /// entry point had been called (`rsp ≡ 8 mod 16`).
    pub fn initial_rsp(&self) -> u64 {
        self.mem_size - 8
    }

    /// The mapping containing `addr`, if any.
    pub fn mapping_at(&self, addr: u64) -> Option<&Mapping> {
        let i = self.mappings.partition_point(|m| m.end <= addr);
        self.mappings.get(i).filter(|m| m.start <= addr)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn seg(index: usize, vaddr: u64, mem_size: u64, flags: &str) -> Segment {
        Segment {
            index,
            vaddr,
            mem_size,
            file_offset: 0,
            file_size: 0,
            read: flags.contains('r'),
            write: flags.contains('w'),
            execute: flags.contains('x'),
        }
    }

    /// A typical image: text, rodata, data+bss.
    pub fn hello_segments() -> Vec<Segment> {
        vec![
            seg(0, 0x10_0000, 0x1234, "rx"),
            seg(1, 0x10_2000, 0x800, "r"),
            seg(2, 0x10_3000, 0x2100, "rw"),
        ]
    }

    #[test]
    fn plans_a_typical_image() {
        let l = Layout::new(&hello_segments(), 32 << 20, 256 << 10, 1000).unwrap();
        assert_eq!(l.boot_info, IMAGE_BASE - 0x1000);
        assert_eq!(l.heap_start, 0x10_6000);
        assert_eq!(l.stack_bottom, (32 << 20) - (256 << 10));
        assert_eq!(l.heap_size, l.stack_bottom - 0x1000 - 0x10_6000);
        assert_eq!(l.initial_rsp() % 16, 8);
        assert_eq!(l.guard_page(), l.stack_bottom - 0x1000..l.stack_bottom);
        // Sorted and disjoint.
        for w in l.mappings.windows(2) {
            assert!(w[0].end <= w[1].start, "{w:?}");
        }
        assert_eq!(l.mapping_at(0), None);
        assert_eq!(l.mapping_at(0x10_1fff).unwrap().area, Area::Segment(0));
        assert_eq!(l.mapping_at(0x10_2000).unwrap().area, Area::Segment(1));
        assert_eq!(l.mapping_at(l.stack_bottom - 1), None);
        assert_eq!(l.mapping_at(l.stack_bottom).unwrap().area, Area::Stack);
        assert_eq!(l.mapping_at(l.mem_size), None);
    }

    #[test]
    fn rejects_bad_sizes() {
        let s = hello_segments();
        assert_eq!(
            Layout::new(&s, 1 << 20, 0x1000, 100),
            Err(LayoutError::MemSize(1 << 20))
        );
        assert!(Layout::new(&s, (2 << 30) + 0x1000, 0x1000, 100).is_err());
        assert!(Layout::new(&s, (4 << 20) + 1, 0x1000, 100).is_err());
        assert!(Layout::new(&s, 4 << 20, 0, 100).is_err());
        assert!(Layout::new(&s, 4 << 20, 0x1001, 100).is_err());
        assert!(matches!(
            Layout::new(&s, 2 << 20, 2 << 20, 100),
            Err(LayoutError::TooSmall { .. })
        ));
        assert!(matches!(
            Layout::new(&s, 4 << 20, 0x1000, 0x10_0000),
            Err(LayoutError::BootInfoTooLarge(_))
        ));
    }

    #[test]
    fn image_may_fill_memory_up_to_the_guard() {
        let s = vec![seg(0, 0x10_0000, 0x1000, "rx")];
        let l = Layout::new(&s, 2 << 20, (2 << 20) - 0x10_2000, 10).unwrap();
        assert_eq!(l.heap_size, 0);
        assert!(l.mappings.iter().all(|m| m.area != Area::Heap));
    }

    #[test]
    fn rejects_segments_outside_the_window() {
        let s = vec![seg(3, 0x8_0000, 0x1000, "rx")];
        assert!(matches!(
            Layout::new(&s, 32 << 20, 0x1000, 10),
            Err(LayoutError::Segment { index: 3, .. })
        ));
    }
}
