//! How BLOCK_READ and BLOCK_WRITE reach a disk file, and the seccomp rule
//! that admits exactly that.
//!
//! A transfer is moved in *pieces* of [`PIECE_SIZES`] bytes: 4096 while at
//! least 4096 bytes remain, then 512 ([`BLOCK_SIZE`]). Each piece is one
//! `pread64`/`pwrite64` of exactly its size; a short one ends the transfer
//! with EIO rather than being retried with a smaller length. So the only
//! calls that ever reach the host have a count of 4096 or 512 and end
//! inside the disk, and [`rules`] can pin exactly that: descriptor, count,
//! and offset ≤ capacity − count. On spt that pin is the boundary (a
//! hostile guest can call the tender's own `syscall` instructions and
//! skip [`crate::dispatch`]'s checks); on hvt, where the guest cannot reach
//! tender code, it is defense in depth behind the same checks.

use crate::policy::{Disk, Rule};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Block size of every block device (`DeviceInfo::unit`): offsets and
/// lengths of BLOCK_READ and BLOCK_WRITE are multiples of it.
pub const BLOCK_SIZE: u32 = 512;

/// The sizes of the pieces a transfer is moved in, largest first: the only
/// counts `pread64`/`pwrite64` are called with.
pub const PIECE_SIZES: [u64; 2] = [4096, BLOCK_SIZE as u64];

/// The largest piece: the size of the bounce buffer.
pub const PIECE_MAX: usize = PIECE_SIZES[0] as usize;

/// The pieces of a transfer of `len` bytes (a multiple of [`BLOCK_SIZE`])
/// at disk offset `offset`: `(offset, size)` of each, in order.
pub(crate) fn pieces(offset: u64, len: u64) -> impl Iterator<Item = (u64, usize)> {
    let end = offset.saturating_add(len);
    let mut at = offset;
    std::iter::from_fn(move || {
        let left = end - at;
        let size = PIECE_SIZES.into_iter().find(|&s| s <= left)?;
        let piece = (at, size as usize);
        at += size;
        Some(piece)
    })
}

/// Reads one piece: a single `pread64` of `buf.len()` bytes (again on
/// EINTR). False when it failed or came back short.
pub(crate) fn read_piece(file: &File, buf: &mut [u8], offset: u64) -> bool {
    loop {
        match file.read_at(buf, offset) {
            Ok(n) => return n == buf.len(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

/// Writes one piece: a single `pwrite64` of `buf.len()` bytes (again on
/// EINTR). False when it failed or came back short.
pub(crate) fn write_piece(file: &File, buf: &[u8], offset: u64) -> bool {
    loop {
        match file.write_at(buf, offset) {
            Ok(n) => return n == buf.len(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

/// The rules that admit `pread64`/`pwrite64` of the pieces of any transfer
/// inside `disk`, and nothing else on it: descriptor, count exactly one
/// piece size, offset ≤ capacity − count (64-bit, unsigned, so a negative
/// offset is out). A piece size larger than the disk gets no rule at all;
/// a disk smaller than one block gets none.
pub fn rules(disk: &Disk) -> impl Iterator<Item = Rule> + '_ {
    PIECE_SIZES
        .into_iter()
        .filter(|&size| size <= disk.capacity)
        .map(|size| {
            Rule::fd(disk.fd)
                .eq64(2, "count", size)
                .at_most(3, "offset", disk.capacity - size)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Cond;

    #[test]
    fn transfers_are_cut_into_the_two_piece_sizes() {
        let p: Vec<_> = pieces(512, 4096 + 4096 + 1024).collect();
        assert_eq!(p, [(512, 4096), (4608, 4096), (8704, 512), (9216, 512)]);
        assert_eq!(pieces(0, 512).collect::<Vec<_>>(), [(0, 512)]);
        assert_eq!(pieces(7, 0).count(), 0);
        // 1 MiB, the ABI's largest transfer: 256 pieces of 4096.
        assert!(pieces(0, 1 << 20).all(|(_, n)| n == 4096));
        assert_eq!(pieces(0, 1 << 20).count(), 256);
    }

    /// Whether `rules` admit a call with this count and offset on `fd`.
    fn admits(rules: &[Rule], fd: u64, count: u64, offset: u64) -> bool {
        let args = [fd, 0, count, offset, 0, 0];
        rules
            .iter()
            .any(|r| r.conds().iter().all(|c| c.holds(&args)))
    }

    #[test]
    fn every_piece_of_every_transfer_passes_the_rules() {
        // Capacities below, at and around the large piece, and not
        // multiples of it.
        for blocks in [1u64, 2, 7, 8, 9, 15, 16, 17, 100] {
            let capacity = blocks * 512;
            let disk = Disk { fd: 5, capacity };
            let rules: Vec<Rule> = rules(&disk).collect();
            for first in 0..blocks {
                for count in 1..=blocks - first {
                    for (at, n) in pieces(first * 512, count * 512) {
                        assert!(
                            admits(&rules, 5, n as u64, at),
                            "capacity {capacity}: piece {n} at {at}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn rules_refuse_what_pieces_never_do() {
        let disk = Disk {
            fd: 5,
            capacity: 9 * 512,
        };
        let rules: Vec<Rule> = rules(&disk).collect();
        assert!(admits(&rules, 5, 4096, 512));
        assert!(admits(&rules, 5, 512, 8 * 512));
        // Past the end, by one block or by a terabyte.
        assert!(!admits(&rules, 5, 4096, 1024));
        assert!(!admits(&rules, 5, 512, 9 * 512));
        assert!(!admits(&rules, 5, 512, 1 << 40));
        // Negative offsets are huge unsigned ones.
        assert!(!admits(&rules, 5, 512, (-512i64) as u64));
        // Other counts, including ones whose low 32 bits look right.
        for count in [0, 1, 511, 1024, 8192, 1 << 20, (1 << 32) | 512] {
            assert!(!admits(&rules, 5, count, 0), "count {count}");
        }
        // Another descriptor.
        assert!(!admits(&rules, 6, 512, 0));
    }

    #[test]
    fn small_disks_get_only_the_rules_they_can_use() {
        let rules: Vec<Rule> = rules(&Disk {
            fd: 3,
            capacity: 1024,
        })
        .collect();
        assert_eq!(rules.len(), 1);
        assert!(rules[0].conds().contains(&Cond::eq64(2, "count", 512)));
        assert!(rules[0].conds().contains(&Cond::at_most(3, "offset", 512)));
        assert_eq!(rules_for(0), 0);
        assert_eq!(rules_for(4096), 2);
    }

    fn rules_for(capacity: u64) -> usize {
        rules(&Disk { fd: 3, capacity }).count()
    }
}
