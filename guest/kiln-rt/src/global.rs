//! [`Global`]: mutable state in a `static`, for a program with one thread.
//!
//! A kiln image has exactly one thread of execution and no interrupt or
//! signal handlers, so a `static` may hold a `RefCell` of non-`Send` data
//! (task futures, wakers): nothing can ever observe it from a second thread.
//! The `RefCell` still catches re-entrant use (for example a `Drop` impl that
//! touches the state while it is borrowed) with a clear panic.

use core::cell::RefCell;

/// A `RefCell` usable in a `static` of a single-threaded kiln image.
pub(crate) struct Global<T>(RefCell<T>);

// SAFETY: a kiln image runs one thread and has no interrupt or signal
// handlers (the tenders deliver neither), so a `Global` is only ever accessed
// from that one thread; `Sync` is never exercised across threads. In host
// unit tests, every test that touches a `Global` holds `tests::serial()`, so
// accesses never overlap there either.
unsafe impl<T> Sync for Global<T> {}

impl<T> Global<T> {
    /// Wraps `value`.
    pub(crate) const fn new(value: T) -> Self {
        Global(RefCell::new(value))
    }

    /// Runs `f` with exclusive access to the value.
    ///
    /// Panics if called again from inside `f` (re-entrancy is a bug). Values
    /// whose `Drop` might touch this `Global` again must be returned out of
    /// `f` and dropped by the caller.
    #[track_caller]
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut self.0.borrow_mut())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Mutex, MutexGuard};

    /// Serialises the host unit tests that touch global runtime state.
    pub(crate) fn serial() -> MutexGuard<'static, ()> {
        static LOCK: Mutex<()> = Mutex::new(());
        LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
