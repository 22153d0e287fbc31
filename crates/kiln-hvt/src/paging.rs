//! 4-level page tables for the identity map, built from the layout's
//! permission list.
//!
//! Guest memory is at most 1 GiB, so one PML4 entry, one PDPT entry and one
//! page directory cover it. A 2 MiB window that one mapping covers entirely
//! becomes a single large page; any other window gets a page table with a
//! 4 KiB entry per mapped page. Unmapped pages have no entry at all.
//!
//! Leaf entries carry the mapping's rights (`U/S`, `R/W`, `NX`); the upper
//! levels are permissive (present, writable, user) so that the leaf alone
//! decides. Accessed and dirty bits are preset, so neither the MMU nor a
//! shadow-paging hypervisor needs to write the tables back.

use kiln_abi::PAGE_SIZE;

use crate::layout::{Mapping, Perm};

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const ACCESSED: u64 = 1 << 5;
const DIRTY: u64 = 1 << 6;
const LARGE: u64 = 1 << 7;
const NO_EXECUTE: u64 = 1 << 63;
#[cfg(test)]
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Bytes one page-directory entry maps as a large page.
const LARGE_PAGE: u64 = 2 << 20;
#[cfg(test)]
const ENTRIES: usize = 512;

/// Page tables laid out contiguously at `base`: PML4, PDPT, PD, then the
/// page tables, one 4 KiB page each.
#[derive(Clone, Debug)]
pub struct PageTables {
    /// Guest address of the PML4 (the value for CR3).
    pub base: u64,
    /// The table pages.
    pub bytes: Vec<u8>,
}

/// How one 2 MiB window is mapped.
enum Window<'a> {
    Empty,
    Large(Perm),
    Pages(&'a [Mapping]),
}

/// Classifies the 2 MiB window `[start, start + 2 MiB)` of guest memory.
fn classify(mappings: &[Mapping], start: u64, mem_size: u64) -> Window<'_> {
    let end = start + LARGE_PAGE;
    let first = mappings.partition_point(|m| m.end <= start);
    let last = mappings.partition_point(|m| m.start < end);
    let overlapping = &mappings[first..last.max(first)];
    match overlapping {
        [] => Window::Empty,
        [m] if m.start <= start && m.end >= end && end <= mem_size => Window::Large(m.perm),
        _ => Window::Pages(overlapping),
    }
}

fn windows(mem_size: u64) -> impl Iterator<Item = u64> {
    (0..mem_size.div_ceil(LARGE_PAGE)).map(|i| i * LARGE_PAGE)
}

/// Number of table pages [`build`] will produce.
pub fn tables_needed(mappings: &[Mapping], mem_size: u64) -> usize {
    3 + windows(mem_size)
        .filter(|&w| matches!(classify(mappings, w, mem_size), Window::Pages(_)))
        .count()
}

fn leaf(addr: u64, perm: Perm) -> u64 {
    let mut e = addr | PRESENT | ACCESSED | DIRTY;
    if perm.write {
        e |= WRITABLE;
    }
    if perm.user {
        e |= USER;
    }
    if !perm.exec {
        e |= NO_EXECUTE;
    }
    e
}

fn put(bytes: &mut [u8], table: usize, index: usize, entry: u64) {
    let at = table * PAGE_SIZE as usize + index * 8;
    bytes[at..at + 8].copy_from_slice(&entry.to_le_bytes());
}

/// Builds the tables for `mappings` (sorted, disjoint, page aligned, below
/// `mem_size` ≤ 1 GiB), to be placed at guest address `base`.
pub fn build(mappings: &[Mapping], mem_size: u64, base: u64) -> PageTables {
    const PML4: usize = 0;
    const PDPT: usize = 1;
    const PD: usize = 2;
    let table_addr = |t: usize| base + t as u64 * PAGE_SIZE;
    let upper = PRESENT | WRITABLE | USER | ACCESSED;

    let mut bytes = vec![0u8; tables_needed(mappings, mem_size) * PAGE_SIZE as usize];
    put(&mut bytes, PML4, 0, table_addr(PDPT) | upper);
    put(&mut bytes, PDPT, 0, table_addr(PD) | upper);
    let mut next = PD + 1;
    for (i, w) in windows(mem_size).enumerate() {
        match classify(mappings, w, mem_size) {
            Window::Empty => {}
            Window::Large(perm) => put(&mut bytes, PD, i, leaf(w, perm) | LARGE),
            Window::Pages(ms) => {
                let pt = next;
                next += 1;
                put(&mut bytes, PD, i, table_addr(pt) | upper);
                for m in ms {
                    let from = m.start.max(w);
                    let to = m.end.min(w + LARGE_PAGE);
                    let mut page = from;
                    while page < to {
                        let index = ((page - w) / PAGE_SIZE) as usize;
                        put(&mut bytes, pt, index, leaf(page, m.perm));
                        page += PAGE_SIZE;
                    }
                }
            }
        }
    }
    debug_assert_eq!(next * PAGE_SIZE as usize, bytes.len());
    PageTables { base, bytes }
}

#[cfg(test)]
impl PageTables {
    fn entry(&self, table_addr: u64, index: usize) -> Option<u64> {
        let offset = table_addr.checked_sub(self.base)? as usize + index * 8;
        let b = self.bytes.get(offset..offset + 8)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }

    /// Walks the tables like the MMU would and returns the effective
    /// rights of the page holding `addr` (`None` when not mapped or when a
    /// table lies outside these pages).
    pub fn translate(&self, addr: u64) -> Option<(u64, Perm)> {
        let indices = [
            (addr >> 39) as usize % ENTRIES,
            (addr >> 30) as usize % ENTRIES,
            (addr >> 21) as usize % ENTRIES,
            (addr >> 12) as usize % ENTRIES,
        ];
        let mut table = self.base;
        let mut perm = Perm {
            user: true,
            write: true,
            exec: true,
        };
        for (level, &index) in indices.iter().enumerate() {
            let e = self.entry(table, index)?;
            if e & PRESENT == 0 {
                return None;
            }
            perm.user &= e & USER != 0;
            perm.write &= e & WRITABLE != 0;
            perm.exec &= e & NO_EXECUTE == 0;
            if level == 2 && e & LARGE != 0 {
                let phys = (e & ADDR_MASK & !(LARGE_PAGE - 1)) | (addr & (LARGE_PAGE - 1));
                return Some((phys, perm));
            }
            if level == 3 {
                return Some(((e & ADDR_MASK) | (addr & (PAGE_SIZE - 1)), perm));
            }
            table = e & ADDR_MASK;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::tests::{hello_segments, seg};
    use crate::layout::{Layout, PAGE_TABLES_BASE};
    use kiln_abi::IMAGE_BASE as IMAGE_BASE_PUB;

    const RX: Perm = Perm {
        user: true,
        write: false,
        exec: true,
    };
    const R: Perm = Perm {
        user: true,
        write: false,
        exec: false,
    };
    const RW: Perm = Perm {
        user: true,
        write: true,
        exec: false,
    };

    fn perm_at(t: &PageTables, addr: u64) -> Option<Perm> {
        let (phys, perm) = t.translate(addr)?;
        assert_eq!(phys, addr, "identity map");
        Some(perm)
    }

    fn hello_tables(mem: u64) -> (Layout, PageTables) {
        let l = Layout::new(&hello_segments(), mem, 256 << 10, 3000).unwrap();
        let t = build(&l.mappings, l.mem_size, PAGE_TABLES_BASE);
        (l, t)
    }

    #[test]
    fn image_pages_follow_p_flags() {
        let (_, t) = hello_tables(32 << 20);
        assert_eq!(perm_at(&t, IMAGE_BASE_PUB), Some(RX));
        assert_eq!(perm_at(&t, 0x10_1fff), Some(RX));
        assert_eq!(perm_at(&t, 0x10_2000), Some(R));
        assert_eq!(perm_at(&t, 0x10_3000), Some(RW));
        assert_eq!(perm_at(&t, 0x10_5fff), Some(RW));
        // The heap follows the image directly.
        assert_eq!(perm_at(&t, 0x10_6000), Some(RW));
    }

    #[test]
    fn low_memory_is_private_to_the_tender() {
        let (l, t) = hello_tables(32 << 20);
        assert_eq!(perm_at(&t, 0), None, "page 0");
        assert_eq!(perm_at(&t, 0xfff), None, "page 0");
        let sys = perm_at(&t, 0x1000).unwrap();
        assert!(!sys.user && !sys.exec);
        let stubs = perm_at(&t, 0x2000).unwrap();
        assert!(!stubs.user && stubs.exec && !stubs.write);
        let stack0 = perm_at(&t, 0x3ff8).unwrap();
        assert!(!stack0.user && stack0.write && !stack0.exec);
        // The page tables themselves are not mapped at all.
        for a in (PAGE_TABLES_BASE..PAGE_TABLES_BASE + t.bytes.len() as u64).step_by(4096) {
            assert_eq!(perm_at(&t, a), None, "table page {a:#x}");
        }
        assert_eq!(perm_at(&t, l.boot_info - 1), None);
        assert_eq!(perm_at(&t, l.boot_info), Some(R));
        assert_eq!(perm_at(&t, IMAGE_BASE_PUB - 1), Some(R));
    }

    #[test]
    fn stack_sits_on_top_of_a_guard_page() {
        for mem in [2 << 20, 3 << 20, 32 << 20, 1 << 30] {
            let (l, t) = hello_tables(mem);
            assert_eq!(perm_at(&t, mem - 8), Some(RW));
            assert_eq!(perm_at(&t, l.stack_bottom), Some(RW));
            assert_eq!(perm_at(&t, l.stack_bottom - 1), None, "guard, mem {mem:#x}");
            assert_eq!(perm_at(&t, l.stack_bottom - 4096), None);
            assert_eq!(perm_at(&t, l.stack_bottom - 4097), Some(RW), "heap top");
            assert_eq!(perm_at(&t, mem), None, "beyond memory");
        }
    }

    #[test]
    fn uniform_windows_use_large_pages() {
        let (_, t) = hello_tables(1 << 30);
        // PML4 + PDPT + PD, a table for the first window (tender area +
        // image) and one for the window holding the guard page.
        assert_eq!(t.bytes.len(), 5 * 4096);
        assert_eq!(perm_at(&t, 0x20_0000), Some(RW));
        assert_eq!(perm_at(&t, 0x2000_1234), Some(RW));
        let (_, small) = hello_tables(2 << 20);
        assert_eq!(small.bytes.len(), 4 * 4096);
    }

    #[test]
    fn every_page_matches_the_layout() {
        let segs = vec![
            seg(0, 0x10_0000, 0x3000, "rx"),
            // A gap at 0x103000, then a segment straddling a 2 MiB line.
            seg(1, 0x10_4000, 0x20_0000, "r"),
            seg(2, 0x30_4000, 0x10_0001, "rw"),
        ];
        let l = Layout::new(&segs, 8 << 20, 64 << 10, 5000).unwrap();
        let t = build(&l.mappings, l.mem_size, PAGE_TABLES_BASE);
        assert_eq!(
            t.bytes.len(),
            crate::paging::tables_needed(&l.mappings, l.mem_size) * 4096
        );
        for page in (0..l.mem_size + (4 << 20)).step_by(4096) {
            let want = l.mapping_at(page).map(|m| m.perm);
            assert_eq!(perm_at(&t, page), want, "page {page:#x}");
        }
        assert_eq!(perm_at(&t, 0x10_3000), None, "gap between segments");
    }
}
