//! Time: a monotonic clock ([`Instant`]), the wall clock ([`wall_clock`]) and
//! a blocking [`sleep`]. For sleeping inside async code use
//! [`executor::sleep`](crate::executor::sleep); to bound how long a future
//! may take, [`timeout`].
//!
//! The monotonic clock is the host's `CLOCK_MONOTONIC`. When the tender
//! allows reading the time-stamp counter (`BootInfo::tsc_hz != 0`), kiln-rt
//! calibrates it once against a CLOCK hypercall and then reads time with
//! `rdtsc` alone, without leaving the guest; otherwise every reading is a
//! CLOCK hypercall. Readings never go backwards.

use core::ops::{Add, AddAssign, Sub};

pub use crate::executor::{timeout, Elapsed};
use core::time::Duration;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// A reading of the monotonic clock, for measuring elapsed time.
///
/// Like `std::time::Instant`: opaque, only differences mean something.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// The current time.
    pub fn now() -> Instant {
        Instant(monotonic_ns())
    }

    /// Time passed since `self` (zero if `self` is in the future).
    pub fn elapsed(&self) -> Duration {
        Instant::now().duration_since(*self)
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn duration_since(&self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// `self + d`, or `None` on overflow.
    pub fn checked_add(&self, d: Duration) -> Option<Instant> {
        let d = u64::try_from(d.as_nanos()).ok()?;
        self.0.checked_add(d).map(Instant)
    }

    /// Nanoseconds on the host's monotonic clock (what POLL deadlines use).
    pub fn as_nanos(&self) -> u64 {
        self.0
    }

    /// The instant `ns` nanoseconds on the host's monotonic clock.
    pub fn from_nanos(ns: u64) -> Instant {
        Instant(ns)
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;

    /// Saturates at the end of time rather than overflowing.
    fn add(self, d: Duration) -> Instant {
        self.checked_add(d).unwrap_or(Instant(u64::MAX))
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;

    /// Same as [`Instant::duration_since`].
    fn sub(self, earlier: Instant) -> Duration {
        self.duration_since(earlier)
    }
}

/// The current time on the monotonic clock; same as [`Instant::now`].
pub fn now() -> Instant {
    Instant::now()
}

/// Time since the Unix epoch according to the host's wall clock. May jump
/// when the host's clock is set; use [`Instant`] to measure intervals.
/// Always one CLOCK hypercall.
pub fn wall_clock() -> Duration {
    Duration::from_nanos(platform::wall_ns())
}

/// Blocks the whole instance for `d` (no other task runs meanwhile). Waits
/// in the POLL hypercall, so the instance uses no CPU while it sleeps.
pub fn sleep(d: Duration) {
    let deadline = Instant::now() + d;
    while Instant::now() < deadline {
        wait(deadline.0);
    }
}

/// Monotonic nanoseconds.
pub(crate) fn monotonic_ns() -> u64 {
    platform::monotonic_ns()
}

/// Waits in POLL until a device has input or the monotonic clock reaches
/// `deadline_ns`; returns the ready mask.
pub(crate) fn wait(deadline_ns: u64) -> u64 {
    platform::wait(deadline_ns)
}

/// Prepares the clock; `tsc_hz` from the BootInfo (0: no TSC).
pub(crate) fn init(tsc_hz: u64) {
    platform::init(tsc_hz);
}

/// Nanoseconds corresponding to `ticks` of a counter running at `hz`.
fn ticks_to_ns(ticks: u64, hz: u64) -> u64 {
    if hz == 0 {
        return 0;
    }
    let ns = u128::from(ticks) * NANOS_PER_SEC / u128::from(hz);
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// A TSC-based clock anchored at one (tsc, ns) reading: pure arithmetic,
/// separate from the hardware so it can be tested.
#[derive(Debug, Clone, Copy)]
struct TscClock {
    hz: u64,
    anchor_tsc: u64,
    anchor_ns: u64,
    /// The highest reading handed out so far; readings never go below it.
    last_ns: u64,
}

impl TscClock {
    const fn off() -> Self {
        TscClock {
            hz: 0,
            anchor_tsc: 0,
            anchor_ns: 0,
            last_ns: 0,
        }
    }

    /// A clock where `tsc` corresponds to `ns`.
    fn anchored(hz: u64, tsc: u64, ns: u64) -> Self {
        TscClock {
            hz,
            anchor_tsc: tsc,
            anchor_ns: ns,
            last_ns: ns,
        }
    }

    /// The time at counter value `tsc`, never less than a previous reading.
    fn read(&mut self, tsc: u64) -> u64 {
        let ns = self
            .anchor_ns
            .saturating_add(ticks_to_ns(tsc.saturating_sub(self.anchor_tsc), self.hz));
        self.last_ns = self.last_ns.max(ns);
        self.last_ns
    }

    /// Learned that the host clock is at least `host_ns` at counter value
    /// `tsc`: if we are behind (the tender's `tsc_hz` is a little off),
    /// re-anchor there. Never moves time backwards.
    fn catch_up(&mut self, tsc: u64, host_ns: u64) {
        if host_ns > self.read(tsc) {
            *self = TscClock::anchored(self.hz, tsc, host_ns);
        }
    }
}

#[cfg(not(test))]
mod platform {
    //! The real clock: rdtsc and the CLOCK / POLL hypercalls.
    use super::TscClock;
    use crate::global::Global;
    use crate::hypercall;

    static TSC: Global<TscClock> = Global::new(TscClock::off());

    fn rdtsc() -> u64 {
        // SAFETY: `rdtsc` only reads the time-stamp counter; we call it only
        // when the tender announced (tsc_hz != 0) that it is readable.
        unsafe { core::arch::x86_64::_rdtsc() }
    }

    pub(super) fn init(tsc_hz: u64) {
        if tsc_hz == 0 {
            return;
        }
        let before = rdtsc();
        let host = hypercall::clock();
        let after = rdtsc();
        // The host read its clock somewhere between our two counter reads.
        let mid = before + after.saturating_sub(before) / 2;
        TSC.with(|c| *c = TscClock::anchored(tsc_hz, mid, host.monotonic_ns));
    }

    fn tsc_enabled() -> bool {
        TSC.with(|c| c.hz != 0)
    }

    pub(super) fn monotonic_ns() -> u64 {
        if tsc_enabled() {
            let tsc = rdtsc();
            TSC.with(|c| c.read(tsc))
        } else {
            hypercall::clock().monotonic_ns
        }
    }

    pub(super) fn wall_ns() -> u64 {
        let host = hypercall::clock();
        if tsc_enabled() {
            let tsc = rdtsc();
            TSC.with(|c| c.catch_up(tsc, host.monotonic_ns));
        }
        host.wall_ns
    }

    pub(super) fn wait(deadline_ns: u64) -> u64 {
        let ready = hypercall::poll(deadline_ns);
        // With no input, POLL returned because the host clock reached the
        // deadline: make sure our TSC-based clock agrees, or a sleeper would
        // spin through POLLs until it caught up.
        if ready == 0 && deadline_ns != u64::MAX && tsc_enabled() {
            let tsc = rdtsc();
            TSC.with(|c| c.catch_up(tsc, deadline_ns));
        }
        ready
    }
}

#[cfg(test)]
pub(crate) mod platform {
    //! A fake clock for host unit tests: time moves only when a test waits.
    use std::sync::atomic::{AtomicU64, Ordering};

    static NOW: AtomicU64 = AtomicU64::new(1_000_000_000);

    pub(super) fn init(_tsc_hz: u64) {}

    pub(super) fn monotonic_ns() -> u64 {
        NOW.load(Ordering::SeqCst)
    }

    pub(super) fn wall_ns() -> u64 {
        NOW.load(Ordering::SeqCst)
    }

    /// Jumps straight to the deadline (there are no devices in tests).
    pub(super) fn wait(deadline_ns: u64) -> u64 {
        assert_ne!(deadline_ns, u64::MAX, "test would wait forever");
        NOW.fetch_max(deadline_ns, Ordering::SeqCst);
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_convert_without_overflow() {
        assert_eq!(ticks_to_ns(3_000_000_000, 3_000_000_000), 1_000_000_000);
        assert_eq!(ticks_to_ns(1, 2_000_000_000), 0);
        assert_eq!(ticks_to_ns(u64::MAX, 1_000_000_000), u64::MAX);
        assert_eq!(ticks_to_ns(u64::MAX, 1), u64::MAX);
        assert_eq!(ticks_to_ns(5, 0), 0);
    }

    #[test]
    fn tsc_clock_advances_from_its_anchor_and_never_goes_back() {
        let mut c = TscClock::anchored(1_000_000_000, 1000, 50);
        assert_eq!(c.read(1000), 50);
        assert_eq!(c.read(1500), 550);
        // A counter reading below the anchor (another CPU) keeps the time.
        assert_eq!(c.read(10), 550);
    }

    #[test]
    fn tsc_clock_catches_up_but_never_rewinds() {
        let mut c = TscClock::anchored(1_000_000_000, 0, 0);
        c.catch_up(100, 1000);
        assert_eq!(c.read(100), 1000);
        assert_eq!(c.read(200), 1100);
        // Host behind us: nothing changes.
        c.catch_up(300, 50);
        assert_eq!(c.read(300), 1200);
    }

    #[test]
    fn instants_subtract_and_saturate() {
        let a = Instant::from_nanos(10);
        let b = a + Duration::from_nanos(5);
        assert_eq!(b - a, Duration::from_nanos(5));
        assert_eq!(a - b, Duration::ZERO);
        assert_eq!(
            Instant::from_nanos(u64::MAX - 1) + Duration::from_secs(1),
            Instant(u64::MAX)
        );
        assert_eq!(a.checked_add(Duration::MAX), None);
    }
}
