//! The global allocator: [`talc`] over the heap region the tender gives the
//! image (`BootInfo::heap_start .. heap_start + heap_size`).
//!
//! A kiln image is single-threaded, so the lock around the allocator never
//! waits: it is a flag that catches re-entrance (which would be a bug, for
//! example allocating from inside the allocator) and aborts.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use talc::lock_api::{GuardNoSend, RawMutex};
use talc::source::Manual;
use talc::TalcLock;

/// A non-waiting lock for a single-threaded program: taking it while it is
/// held can only mean re-entrance, which aborts the instance.
pub(crate) struct SingleThreadLock(AtomicBool);

// SAFETY: `try_lock` succeeds only when the flag was clear and sets it
// (atomic swap), `unlock` clears it; so at most one guard exists at a time,
// which is what `RawMutex` requires. `lock` never returns without the lock.
unsafe impl RawMutex for SingleThreadLock {
    #[allow(clippy::declare_interior_mutable_const)] // lock_api's required initialiser
    const INIT: Self = SingleThreadLock(AtomicBool::new(false));
    type GuardMarker = GuardNoSend;

    fn lock(&self) {
        if !self.try_lock() {
            crate::hypercall::abort("kiln-rt: the allocator was re-entered");
        }
    }

    fn try_lock(&self) -> bool {
        !self.0.swap(true, Ordering::Acquire)
    }

    unsafe fn unlock(&self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The allocator. It owns no memory until [`init`] claims the heap.
#[cfg_attr(not(test), global_allocator)]
static ALLOCATOR: TalcLock<SingleThreadLock, Manual> = TalcLock::new(Manual);

/// Size of the claimed heap, for [`heap_size`].
static HEAP_SIZE: AtomicU64 = AtomicU64::new(0);

/// Hands `[start, start + size)` to the allocator.
///
/// # Safety
///
/// The range must be memory the image may read and write, used by nothing
/// else for the rest of the program, and this must be called at most once.
pub(crate) unsafe fn init(start: u64, size: u64) {
    if start == 0 || size == 0 {
        return;
    }
    // SAFETY: the caller hands us exclusive use of this range for good.
    let claimed = unsafe { ALLOCATOR.lock().claim(start as *mut u8, size as usize) };
    if claimed.is_some() {
        HEAP_SIZE.store(size, Ordering::Relaxed);
    }
}

/// Size in bytes of the heap the allocator manages (0 if it has none).
/// `kiln run --mem` sets how much memory the instance has; the heap is what
/// is left after the image and its stack.
pub fn heap_size() -> u64 {
    HEAP_SIZE.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::alloc::{GlobalAlloc, Layout};

    #[test]
    fn lock_is_exclusive() {
        let lock = SingleThreadLock::INIT;
        assert!(lock.try_lock());
        assert!(!lock.try_lock());
        // SAFETY: we hold the lock.
        unsafe { lock.unlock() };
        assert!(lock.try_lock());
    }

    #[test]
    fn talc_allocates_from_a_claimed_region() {
        let talc: TalcLock<SingleThreadLock, Manual> = TalcLock::new(Manual);
        let region = Box::leak(vec![0u64; 8192].into_boxed_slice());
        // SAFETY: the leaked region is ours alone, forever.
        unsafe {
            talc.lock()
                .claim(region.as_mut_ptr().cast(), region.len() * 8)
        }
        .expect("claim");
        let layout = Layout::from_size_align(1000, 16).unwrap();
        // SAFETY: a non-zero-sized layout.
        let p = unsafe { talc.alloc(layout) };
        assert!(!p.is_null());
        let range = region.as_ptr_range();
        assert!(range.contains(&(p as *const u64)));
        // SAFETY: allocated above with the same layout.
        unsafe { talc.dealloc(p, layout) };
        let huge = Layout::from_size_align(1 << 20, 8).unwrap();
        // SAFETY: a non-zero-sized layout.
        assert!(unsafe { talc.alloc(huge) }.is_null());
    }
}
