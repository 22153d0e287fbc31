//! Hypercall access to guest memory, with the image's own rights.
//!
//! [`GuestView`] implements [`kiln_tender::GuestMemory`] over the VM's
//! `GuestMemoryMmap`. A range passes only when every byte of it lies in a
//! mapping the image can reach from CPL3 — and, for writes, in a writable
//! one. So a hypercall can never be used to read the GDT, IDT, TSS, stubs or
//! page tables (supervisor-only or unmapped), to write into the image's code
//! or read-only data (that would defeat W^X: e.g. BLOCK_READ into `.text`),
//! to write the read-only BootInfo block, or to touch the guard page. The
//! BootInfo pages are the only tender-area pages that pass, and only for
//! reads, because the image may read them itself.
//!
//! The checks are cheap: the mapping list is short and sorted.

use kiln_tender::{GuestMemory, MemError};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::Mapping;

/// Guest memory as the image's hypercalls may reach it.
pub struct GuestView<'a> {
    mem: &'a GuestMemoryMmap,
    mappings: &'a [Mapping],
}

impl<'a> GuestView<'a> {
    /// A view of `mem` admitting the user-accessible parts of `mappings`
    /// (sorted, disjoint).
    pub fn new(mem: &'a GuestMemoryMmap, mappings: &'a [Mapping]) -> Self {
        GuestView { mem, mappings }
    }
}

/// Whether `[addr, addr + len)` is wholly inside user mappings that allow
/// the access (reads need `user`, writes `user` and `write`).
pub fn allowed(mappings: &[Mapping], addr: u64, len: u64, write: bool) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    if len == 0 {
        // Nothing is accessed; still require a sane address.
        return mappings
            .iter()
            .any(|m| m.perm.user && m.start <= addr && addr <= m.end);
    }
    let mut at = addr;
    let mut i = mappings.partition_point(|m| m.end <= at);
    while at < end {
        match mappings.get(i) {
            Some(m) if m.start <= at && m.perm.user && (!write || m.perm.write) => {
                at = m.end;
                i += 1;
            }
            _ => return false,
        }
    }
    true
}

impl GuestMemory for GuestView<'_> {
    fn check(&self, addr: u64, len: u64, write: bool) -> Result<(), MemError> {
        if allowed(self.mappings, addr, len, write) {
            Ok(())
        } else {
            Err(MemError { addr, len, write })
        }
    }

    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.check(addr, buf.len() as u64, false)?;
        self.mem
            .read_slice(buf, GuestAddress(addr))
            .map_err(|_| MemError {
                addr,
                len: buf.len() as u64,
                write: false,
            })
    }

    fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), MemError> {
        self.check(addr, data.len() as u64, true)?;
        self.mem
            .write_slice(data, GuestAddress(addr))
            .map_err(|_| MemError {
                addr,
                len: data.len() as u64,
                write: true,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::tests::hello_segments;
    use crate::layout::{Layout, GDT_ADDR, PAGE_TABLES_BASE, STUBS_PAGE};
    use kiln_abi::IMAGE_BASE;

    fn layout() -> Layout {
        Layout::new(&hello_segments(), 4 << 20, 64 << 10, 200).unwrap()
    }

    #[test]
    fn tender_area_is_out_of_reach_except_boot_info_reads() {
        let l = layout();
        let m = &l.mappings;
        for addr in [
            0,
            8,
            GDT_ADDR,
            STUBS_PAGE,
            0x3ff0,
            PAGE_TABLES_BASE,
            0x8_0000,
        ] {
            assert!(!allowed(m, addr, 8, false), "{addr:#x}");
            assert!(!allowed(m, addr, 8, true), "{addr:#x}");
        }
        assert!(allowed(m, l.boot_info, 96, false));
        assert!(!allowed(m, l.boot_info, 96, true), "BootInfo is read-only");
        assert!(!allowed(m, l.boot_info - 8, 16, false), "starts below");
    }

    #[test]
    fn image_rights_are_enforced() {
        let m = &layout().mappings;
        // Text: readable, not writable (no BLOCK_READ into code).
        assert!(allowed(m, IMAGE_BASE, 16, false));
        assert!(!allowed(m, IMAGE_BASE, 16, true));
        // Rodata, then data+bss, then heap: reads may span all of them.
        assert!(allowed(m, 0x10_2000, 0x3000, false));
        assert!(!allowed(m, 0x10_2ff0, 0x20, true), "starts in rodata");
        // Data runs into the heap: one writable stretch.
        assert!(allowed(m, 0x10_3000, 0x10_0000, true));
    }

    #[test]
    fn guard_page_stack_and_the_end_of_memory() {
        let l = layout();
        let m = &l.mappings;
        assert!(allowed(m, l.stack_bottom, 4096, true));
        assert!(allowed(m, l.mem_size - 8, 8, true));
        assert!(!allowed(m, l.mem_size - 8, 9, true), "runs past the end");
        assert!(!allowed(m, l.stack_bottom - 8, 16, true), "guard page");
        assert!(!allowed(m, l.stack_bottom - 4096 - 8, 8 + 4096 + 8, true));
        assert!(!allowed(m, u64::MAX - 4, 8, false), "wraps around");
        assert!(!allowed(m, l.mem_size, 1, false));
    }

    #[test]
    fn empty_ranges_need_a_user_address() {
        let l = layout();
        assert!(allowed(&l.mappings, IMAGE_BASE, 0, true));
        assert!(!allowed(&l.mappings, 0, 0, false));
        assert!(!allowed(&l.mappings, GDT_ADDR, 0, false));
    }
}
