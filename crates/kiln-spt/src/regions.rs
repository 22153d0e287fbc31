//! Which addresses belong to the guest, and with which rights.
//!
//! The guest runs inside the tender's own address space, so "is this guest
//! memory?" cannot be answered by the MMU: a guest pointer into the
//! tender's heap is perfectly readable. Every address a hypercall hands in is
//! therefore checked against this table, built from the [`Layout`] before
//! the guest starts and never changed afterwards: readable are the image
//! segments with `r`, the heap, the stack and the BootInfo block; writable
//! are the segments with `w`, the heap and the stack. Anything else
//! (the tender, the guard page, the gaps) is refused.

use crate::layout::{Layout, Span};

/// How a hypercall wants to use a guest range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The tender reads guest bytes.
    Read,
    /// The tender writes guest bytes.
    Write,
}

/// A sorted list of disjoint, non-adjacent spans. Built before the guest
/// starts; lookups never allocate (they run in the hypercall path, under
/// seccomp).
#[derive(Debug, Clone)]
struct SpanSet {
    spans: Vec<Span>,
}

impl SpanSet {
    fn new(mut input: Vec<Span>) -> SpanSet {
        input.retain(|s| !s.is_empty());
        input.sort_by_key(|s| s.start);
        let mut spans: Vec<Span> = Vec::with_capacity(input.len());
        for s in input {
            match spans.last_mut() {
                // Touching or overlapping the previous span: one range.
                Some(last) if s.start <= last.end => last.end = last.end.max(s.end),
                _ => spans.push(s),
            }
        }
        SpanSet { spans }
    }

    /// Whether `[addr, addr + len)` lies inside one span. `len > 0`.
    fn covers(&self, addr: u64, len: u64) -> bool {
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        self.spans.iter().any(|s| s.start <= addr && end <= s.end)
    }
}

/// The guest's memory map, as the hypercall path checks it.
#[derive(Debug, Clone)]
pub struct Regions {
    readable: SpanSet,
    writable: SpanSet,
}

impl Regions {
    /// The regions of an instance laid out as `layout`.
    pub fn from_layout(layout: &Layout) -> Regions {
        let mut readable = vec![layout.heap, layout.stack, layout.boot];
        let mut writable = vec![layout.heap, layout.stack];
        for s in &layout.segments {
            if s.prot.read {
                readable.push(s.span);
            }
            if s.prot.write {
                writable.push(s.span);
            }
        }
        Regions::new(readable, writable)
    }

    /// A table from explicit span lists (used by tests).
    pub fn new(readable: Vec<Span>, writable: Vec<Span>) -> Regions {
        Regions {
            readable: SpanSet::new(readable),
            writable: SpanSet::new(writable),
        }
    }

    /// Whether the guest may let the tender `access` the `len` bytes at
    /// `addr`. The whole range must lie in guest memory with that right;
    /// ranges that wrap around the address space never do. An empty range
    /// touches no memory and is always allowed (Rust hands out dangling
    /// pointers such as `0x1` for empty slices).
    pub fn allows(&self, access: Access, addr: u64, len: u64) -> bool {
        if len == 0 {
            return true;
        }
        match access {
            Access::Read => self.readable.covers(addr, len),
            Access::Write => self.writable.covers(addr, len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{Prot, SegmentPlan};

    const TEXT: Span = Span {
        start: 0x10_0000,
        end: 0x10_3000,
    };
    const RODATA: Span = Span {
        start: 0x10_3000,
        end: 0x10_4000,
    };
    const DATA: Span = Span {
        start: 0x10_5000, // a gap page before it
        end: 0x10_6000,
    };

    fn layout() -> Layout {
        let rx = Prot {
            read: true,
            write: false,
            exec: true,
        };
        Layout::plan_spans(
            vec![
                SegmentPlan {
                    index: 0,
                    span: TEXT,
                    prot: rx,
                },
                SegmentPlan {
                    index: 1,
                    span: RODATA,
                    prot: Prot::R,
                },
                SegmentPlan {
                    index: 2,
                    span: DATA,
                    prot: Prot::RW,
                },
            ],
            DATA.end,
            0x4_0000,
            0x100_0000,
            100,
        )
        .unwrap()
    }

    #[test]
    fn reads_inside_guest_regions_are_allowed() {
        let l = layout();
        let r = Regions::from_layout(&l);
        for (addr, len) in [
            (TEXT.start, 1),
            (TEXT.start, TEXT.len() + RODATA.len()), // text and rodata touch
            (RODATA.end - 8, 8),
            (DATA.start, DATA.len()),
            (DATA.start, DATA.len() + 64), // data runs into the heap
            (l.heap.start, l.heap.len()),
            (l.stack.start, l.stack.len()),
            (l.boot.start, l.boot.len()),
            (l.boot.end - 1, 2), // the boot block ends where the image begins
        ] {
            assert!(r.allows(Access::Read, addr, len), "{addr:#x}+{len:#x}");
        }
    }

    #[test]
    fn reads_outside_guest_regions_are_refused() {
        let l = layout();
        let r = Regions::from_layout(&l);
        for (addr, len) in [
            (0, 8),                   // null page
            (RODATA.end, 1),          // the gap page
            (RODATA.end - 1, 2),      // straddles into the gap
            (l.guard.start, 1),       // guard page
            (l.heap.end - 4, 8),      // heap into guard
            (l.stack.end - 4, 8),     // past the top of the stack
            (l.stack.end, 1),         // just above
            (l.boot.start - 1, 1),    // below the boot block
            (0x5555_5555_0000, 16),   // the tender's binary
            (0x7fff_ffff_0000, 16),   // the tender's stack
            (u64::MAX - 3, 8),        // wraps around
            (l.heap.start, u64::MAX), // absurd length
        ] {
            assert!(!r.allows(Access::Read, addr, len), "{addr:#x}+{len:#x}");
        }
    }

    #[test]
    fn writes_only_to_writable_regions() {
        let l = layout();
        let r = Regions::from_layout(&l);
        assert!(r.allows(Access::Write, DATA.start, 8));
        assert!(r.allows(Access::Write, l.heap.start, 4096));
        assert!(r.allows(Access::Write, l.stack.end - 16, 16));
        assert!(r.allows(Access::Write, DATA.end - 8, 16)); // data -> heap
        assert!(!r.allows(Access::Write, TEXT.start, 8));
        assert!(!r.allows(Access::Write, RODATA.start, 8));
        assert!(!r.allows(Access::Write, l.boot.start, 8));
        assert!(!r.allows(Access::Write, l.guard.start, 8));
        assert!(!r.allows(Access::Write, l.heap.end - 8, 16)); // heap -> guard
        assert!(!r.allows(Access::Write, l.heap.end - 8, 8 + 4096 + 8)); // over the guard
    }

    #[test]
    fn unreadable_segments_are_not_readable() {
        let xo = Prot {
            read: false,
            write: false,
            exec: true,
        };
        let l = Layout::plan_spans(
            vec![SegmentPlan {
                index: 0,
                span: TEXT,
                prot: xo,
            }],
            TEXT.end,
            0x1000,
            0x100_0000,
            1,
        )
        .unwrap();
        let r = Regions::from_layout(&l);
        assert!(!r.allows(Access::Read, TEXT.start + 8, 8));
    }

    #[test]
    fn empty_ranges_touch_nothing() {
        let r = Regions::from_layout(&layout());
        assert!(r.allows(Access::Read, 1, 0));
        assert!(r.allows(Access::Write, u64::MAX, 0));
    }

    #[test]
    fn neighbours_merge() {
        let touching = vec![
            Span {
                start: 0x3000,
                end: 0x4000,
            },
            Span {
                start: 0x1000,
                end: 0x3000,
            },
            Span {
                start: 0x8000,
                end: 0x9000,
            },
        ];
        let r = Regions::new(touching, vec![]);
        assert!(r.allows(Access::Read, 0x1000, 0x3000));
        assert!(!r.allows(Access::Read, 0x1000, 0x3001));
        assert!(!r.allows(Access::Read, 0x3000, 0x6000));
        assert!(r.allows(Access::Read, 0x8000, 0x1000));
    }
}
