//! A single-threaded async executor that needs no interrupts.
//!
//! [`block_on`] runs a future to completion together with every task started
//! by [`spawn`]. When no task can run, the executor waits in the POLL
//! hypercall until the earliest timer ([`sleep`], [`sleep_until`],
//! [`timeout`]) is due, a device it waits on ([`device_ready`]) has input,
//! or the network stack needs attention (frames arrived, a TCP timer); the
//! instance uses no CPU meanwhile. Between rounds of tasks it lets the
//! network stack send what the tasks wrote and take in waiting frames.
//!
//! ```ignore
//! use core::time::Duration;
//! use kiln_rt::executor::{block_on, sleep, spawn};
//!
//! let answer = block_on(async {
//!     let task = spawn(async {
//!         sleep(Duration::from_millis(10)).await;
//!         21
//!     });
//!     task.await * 2
//! });
//! ```
//!
//! Futures need not be `Send`: everything runs on the one thread of the
//! image. Tasks that are still pending when `block_on` returns stay
//! suspended and continue in the next `block_on`.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::rc::Rc;
use alloc::sync::Arc;
use alloc::task::Wake;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::future::Future;
use core::pin::{pin, Pin};
use core::sync::atomic::{AtomicBool, Ordering};
use core::task::{Context, Poll, Waker};
use core::time::Duration;

use crate::global::Global;
use crate::time::{self, Instant};

/// Identifies a task; [`MAIN`] is the future given to `block_on`.
type TaskId = u64;
const MAIN: TaskId = 0;

/// A spawned task's future, type-erased.
type BoxedTask = Pin<Box<dyn Future<Output = ()>>>;

/// All executor state. Lives in a [`Global`]; every access is a short
/// `with` that never polls a future or drops one while borrowed.
struct Runtime {
    /// Spawned tasks; `None` while that task is being polled.
    tasks: BTreeMap<TaskId, (Option<BoxedTask>, Arc<TaskWaker>)>,
    next_task: TaskId,
    /// Tasks woken and not yet polled, in wake order.
    ready: VecDeque<TaskId>,
    /// Pending timers by (deadline, registration number).
    timers: BTreeMap<(u64, u64), Waker>,
    /// Futures waiting for input on a device: registration -> (index, waker).
    device_waiters: BTreeMap<u64, (usize, Waker)>,
    next_registration: u64,
    /// Whether `block_on` is running (it must not be nested).
    running: bool,
    /// An I/O driver turned between rounds of tasks (the network stack).
    reactor: Option<&'static dyn Reactor>,
}

impl Runtime {
    const fn new() -> Self {
        Runtime {
            tasks: BTreeMap::new(),
            next_task: MAIN + 1,
            ready: VecDeque::new(),
            timers: BTreeMap::new(),
            device_waiters: BTreeMap::new(),
            next_registration: 0,
            running: false,
            reactor: None,
        }
    }

    fn registration(&mut self) -> u64 {
        self.next_registration += 1;
        self.next_registration
    }
}

static RUNTIME: Global<Runtime> = Global::new(Runtime::new());

/// An event source the executor drives itself, between rounds of tasks:
/// the network stack. It does its I/O in [`turn`](Reactor::turn) and wakes
/// the tasks waiting on it; the executor turns it whenever it has work (tasks
/// queued output, input is waiting, or its deadline passed) and, when no task
/// can run, waits in POLL for its device input or its deadline as well as
/// for the timers.
///
/// Kept behind a `&'static dyn` so that images that never start the network
/// stack link none of it.
pub(crate) trait Reactor {
    /// Bits of POLL's ready mask (device indices) whose input it consumes.
    fn interest(&self) -> u64;
    /// Whether a turn is due at `now` (monotonic ns) given POLL's latest
    /// `ready` mask (0 when POLL was not called).
    fn has_work(&self, ready: u64, now: &mut LazyNow) -> bool;
    /// Does the pending I/O and wakes tasks. Must not call into the executor
    /// except to wake wakers.
    fn turn(&self, now: u64);
    /// When it next needs a turn without new input (monotonic ns).
    fn deadline(&self) -> Option<u64>;
}

/// The current monotonic time, read at most once and only if needed.
pub(crate) struct LazyNow(Option<u64>);

impl LazyNow {
    fn new() -> Self {
        LazyNow(None)
    }

    /// The time, read on first use.
    pub(crate) fn get(&mut self) -> u64 {
        *self.0.get_or_insert_with(time::monotonic_ns)
    }
}

/// Installs the reactor the executor turns between rounds (once; later calls
/// replace it).
#[cfg_attr(not(feature = "net"), allow(dead_code))]
pub(crate) fn set_reactor(reactor: &'static dyn Reactor) {
    RUNTIME.with(|rt| rt.reactor = Some(reactor));
}

/// Forgets every task, timer and the reactor (host tests only; a test that
/// panicked inside `block_on` leaves its state behind otherwise).
#[cfg(test)]
pub(crate) fn reset() {
    let old = RUNTIME.with(|rt| core::mem::replace(rt, Runtime::new()));
    drop(old);
}

/// The waker of one task: waking queues the task once until it is polled.
struct TaskWaker {
    id: TaskId,
    queued: AtomicBool,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::Relaxed) {
            RUNTIME.with(|rt| rt.ready.push_back(self.id));
        }
    }
}

/// Runs `future` to completion, running spawned tasks meanwhile, and
/// returns its output.
///
/// Panics if called from inside a task (`block_on` does not nest), and if
/// every task is waiting with no timer or device left to wake one (the
/// program could never continue).
pub fn block_on<F: Future>(future: F) -> F::Output {
    RUNTIME.with(|rt| {
        assert!(
            !rt.running,
            "kiln_rt::executor::block_on called inside block_on"
        );
        rt.running = true;
    });
    let mut future = pin!(future);
    let main_waker = Arc::new(TaskWaker {
        id: MAIN,
        queued: AtomicBool::new(true),
    });
    RUNTIME.with(|rt| rt.ready.push_back(MAIN));
    let waker = Waker::from(main_waker.clone());
    let mut cx = Context::from_waker(&waker);
    loop {
        // Run everything that is ready now, once each; tasks woken meanwhile
        // wait for the next round so timers and devices are not starved.
        let round = RUNTIME.with(|rt| rt.ready.len());
        for _ in 0..round {
            let Some(id) = RUNTIME.with(|rt| rt.ready.pop_front()) else {
                break;
            };
            if id == MAIN {
                main_waker.queued.store(false, Ordering::Relaxed);
                if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                    RUNTIME.with(|rt| rt.running = false);
                    return output;
                }
            } else {
                run_task(id);
            }
        }
        let busy = RUNTIME.with(|rt| !rt.ready.is_empty());
        wait_for_events(busy);
    }
}

/// Polls spawned task `id` once, if it still exists.
fn run_task(id: TaskId) {
    let Some((mut task, waker)) = RUNTIME.with(|rt| {
        let (slot, waker) = rt.tasks.get_mut(&id)?;
        Some((slot.take()?, waker.clone()))
    }) else {
        return;
    };
    waker.queued.store(false, Ordering::Relaxed);
    let as_waker = Waker::from(waker);
    let mut cx = Context::from_waker(&as_waker);
    if task.as_mut().poll(&mut cx).is_ready() {
        let removed = RUNTIME.with(|rt| rt.tasks.remove(&id));
        // Dropped here, outside the borrow: the task's destructors may touch
        // the runtime.
        drop(removed);
        drop(task);
    } else {
        let leftover = RUNTIME.with(|rt| match rt.tasks.get_mut(&id) {
            Some((slot, _)) => slot.replace(task),
            None => Some(task),
        });
        drop(leftover);
    }
}

/// Turns the reactor if it has work; fires due timers; if nothing is
/// runnable (`busy` false) and no timer is due, first waits in POLL for the
/// next timer, reactor deadline or device input (when tasks are runnable,
/// only checks for device input without waiting). Wakes whoever was
/// waiting.
fn wait_for_events(busy: bool) {
    let reactor = RUNTIME.with(|rt| rt.reactor);
    let mut clock = LazyNow::new();
    // Flush what the tasks of this round queued (and take in input that an
    // earlier POLL announced) before deciding whether to sleep.
    let mut reactor_busy = false;
    if let Some(r) = reactor {
        if r.has_work(0, &mut clock) {
            r.turn(clock.get());
            clock = LazyNow::new();
            // Still work left (a capped batch, frames sent to ourselves):
            // do not sleep.
            reactor_busy = r.has_work(0, &mut clock);
        }
    }
    let (next_timer, waiting_on_devices, busy) = RUNTIME.with(|rt| {
        (
            rt.timers.keys().next().map(|&(deadline, _)| deadline),
            !rt.device_waiters.is_empty(),
            busy || reactor_busy || !rt.ready.is_empty(),
        )
    });
    let reactor_deadline = reactor.and_then(|r| r.deadline());
    let next_deadline = match (next_timer, reactor_deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let interest = reactor.map_or(0, |r| r.interest());
    let waiting_on_devices = waiting_on_devices || interest != 0;
    let due = match next_deadline {
        Some(d) => d <= clock.get(),
        None => false,
    };
    let mut ready_mask = 0;
    if busy || due {
        // Tasks are runnable: do not block, but still notice device input,
        // so a busy task cannot starve one waiting on a device.
        if waiting_on_devices {
            ready_mask = time::wait(0);
        }
    } else if next_deadline.is_none() && !waiting_on_devices {
        RUNTIME.with(|rt| rt.running = false);
        panic!("kiln_rt::executor: every task is waiting, but no timer or device can wake one");
    } else {
        ready_mask = time::wait(next_deadline.unwrap_or(u64::MAX));
        clock = LazyNow::new();
    }
    // Input or a deadline: let the reactor handle it now, so the tasks it
    // wakes run in the next round.
    if let Some(r) = reactor {
        if r.has_work(ready_mask, &mut clock) {
            r.turn(clock.get());
            clock = LazyNow::new();
        }
    }
    let now = match next_timer {
        Some(_) => clock.get(),
        None => 0,
    };
    let to_wake: Vec<Waker> = RUNTIME.with(|rt| {
        let mut wakers = Vec::new();
        while let Some(entry) = rt.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            wakers.push(entry.remove());
        }
        if ready_mask != 0 {
            let fired: Vec<u64> = rt
                .device_waiters
                .iter()
                .filter(|(_, (index, _))| *index < 64 && ready_mask & (1 << *index) != 0)
                .map(|(&key, _)| key)
                .collect();
            for key in fired {
                if let Some((_, waker)) = rt.device_waiters.remove(&key) {
                    wakers.push(waker);
                }
            }
        }
        wakers
    });
    for waker in to_wake {
        waker.wake();
    }
}

/// Starts `future` as a new task and returns a handle to await its output.
///
/// The task runs during [`block_on`] (including one already running, when
/// called from a task). Dropping the handle detaches the task; it still runs
/// to completion.
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let state = Rc::new(RefCell::new(JoinState {
        output: None,
        waiter: None,
    }));
    let task_state = state.clone();
    let task: BoxedTask = Box::pin(async move {
        let output = future.await;
        let waiter = {
            let mut state = task_state.borrow_mut();
            state.output = Some(output);
            state.waiter.take()
        };
        if let Some(waiter) = waiter {
            waiter.wake();
        }
    });
    RUNTIME.with(|rt| {
        let id = rt.next_task;
        rt.next_task += 1;
        let waker = Arc::new(TaskWaker {
            id,
            queued: AtomicBool::new(true),
        });
        rt.tasks.insert(id, (Some(task), waker));
        rt.ready.push_back(id);
    });
    JoinHandle { state }
}

/// Shared between a task and its [`JoinHandle`].
struct JoinState<T> {
    output: Option<T>,
    waiter: Option<Waker>,
}

/// Awaits the output of a task started with [`spawn`].
pub struct JoinHandle<T> {
    state: Rc<RefCell<JoinState<T>>>,
}

impl<T> JoinHandle<T> {
    /// Whether the task has finished (its output is waiting to be taken).
    pub fn is_finished(&self) -> bool {
        self.state.borrow().output.is_some()
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut state = self.state.borrow_mut();
        match state.output.take() {
            Some(output) => Poll::Ready(output),
            None => {
                state.waiter = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Completes after `duration`; see [`sleep_until`].
pub fn sleep(duration: Duration) -> Sleep {
    sleep_until(Instant::now() + duration)
}

/// Completes once the monotonic clock reaches `deadline`.
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep {
        deadline,
        registration: None,
    }
}

/// A timer future, returned by [`sleep`] and [`sleep_until`].
#[must_use = "futures do nothing unless awaited"]
pub struct Sleep {
    deadline: Instant,
    /// Our key in the runtime's timer table, once registered.
    registration: Option<(u64, u64)>,
}

/// Alias of [`Sleep`], for readers looking for a timer type.
pub type Timer = Sleep;

impl Sleep {
    /// When this timer fires.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    fn unregister(&mut self) {
        if let Some(key) = self.registration.take() {
            let old = RUNTIME.with(|rt| rt.timers.remove(&key));
            drop(old);
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            self.unregister();
            return Poll::Ready(());
        }
        let deadline = self.deadline.as_nanos();
        let waker = cx.waker().clone();
        let registration = self.registration;
        let (key, old) = RUNTIME.with(|rt| match registration {
            // Still registered: refresh the waker.
            Some(key) if rt.timers.contains_key(&key) => (key, rt.timers.insert(key, waker)),
            _ => {
                let key = (deadline, rt.registration());
                (key, rt.timers.insert(key, waker))
            }
        });
        drop(old);
        self.registration = Some(key);
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.unregister();
    }
}

/// The error of [`timeout`]: the time ran out first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Elapsed;

impl core::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("deadline elapsed")
    }
}

/// Runs `future` for at most `duration`: its output, or `Err(Elapsed)` if
/// the time runs out first (the future is then dropped).
pub async fn timeout<F: Future>(duration: Duration, future: F) -> Result<F::Output, Elapsed> {
    let mut future = pin!(future);
    let mut timer = pin!(sleep(duration));
    core::future::poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        timer.as_mut().poll(cx).map(|()| Err(Elapsed))
    })
    .await
}

/// Gives other ready tasks a turn before continuing.
pub async fn yield_now() {
    let mut yielded = false;
    core::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// Completes when POLL reports input on device `index` (its position in
/// [`devices`](crate::devices)). For device drivers: try the read first,
/// await this only after it reported `EAGAIN`.
pub fn device_ready(index: usize) -> DeviceReady {
    DeviceReady {
        index,
        registration: None,
    }
}

/// Future returned by [`device_ready`].
#[must_use = "futures do nothing unless awaited"]
pub struct DeviceReady {
    index: usize,
    registration: Option<u64>,
}

impl Future for DeviceReady {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let index = self.index;
        let waker = cx.waker().clone();
        let registration = self.registration;
        let (state, old) = RUNTIME.with(|rt| match registration {
            // Registered before and removed since: the device fired.
            Some(key) if !rt.device_waiters.contains_key(&key) => (None, Some(waker)),
            Some(key) => {
                let old = rt.device_waiters.insert(key, (index, waker));
                (Some(key), old.map(|(_, w)| w))
            }
            None => {
                let key = rt.registration();
                rt.device_waiters.insert(key, (index, waker));
                (Some(key), None)
            }
        });
        drop(old);
        self.registration = state;
        match state {
            None => Poll::Ready(()),
            Some(_) => Poll::Pending,
        }
    }
}

impl Drop for DeviceReady {
    fn drop(&mut self) {
        if let Some(key) = self.registration.take() {
            let old = RUNTIME.with(|rt| rt.device_waiters.remove(&key));
            drop(old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::global::tests::serial;
    use alloc::rc::Rc;
    use core::cell::RefCell;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn block_on_returns_the_output() {
        let _s = serial();
        assert_eq!(block_on(async { 40 + 2 }), 42);
    }

    #[test]
    fn spawned_tasks_interleave_by_timer_and_join() {
        let _s = serial();
        let log = Rc::new(RefCell::new(Vec::new()));
        let start = Instant::now();
        let total = block_on({
            let log = log.clone();
            async move {
                let a = spawn({
                    let log = log.clone();
                    async move {
                        for i in 0..3 {
                            sleep(ms(10)).await;
                            log.borrow_mut().push(alloc::format!("a{i}"));
                        }
                        1
                    }
                });
                let b = spawn({
                    let log = log.clone();
                    async move {
                        sleep(ms(5)).await;
                        for i in 0..3 {
                            log.borrow_mut().push(alloc::format!("b{i}"));
                            sleep(ms(10)).await;
                        }
                        2
                    }
                });
                a.await + b.await
            }
        });
        assert_eq!(total, 3);
        assert_eq!(*log.borrow(), ["b0", "a0", "b1", "a1", "b2", "a2"]);
        // The fake clock only moves when the executor waits: 30 ms of timers,
        // in the fewest possible POLLs.
        assert_eq!(start.elapsed(), ms(35));
    }

    #[test]
    fn timeout_cuts_a_slow_future_and_passes_a_fast_one() {
        let _s = serial();
        let slow = block_on(timeout(ms(5), sleep(ms(50))));
        assert_eq!(slow, Err(Elapsed));
        let fast = block_on(timeout(ms(50), async {
            sleep(ms(1)).await;
            7
        }));
        assert_eq!(fast, Ok(7));
        // The dropped timers left nothing behind.
        assert!(RUNTIME.with(|rt| rt.timers.is_empty()));
    }

    #[test]
    fn yield_now_lets_other_tasks_run() {
        let _s = serial();
        let log = Rc::new(RefCell::new(Vec::new()));
        block_on({
            let log = log.clone();
            async move {
                let other = spawn({
                    let log = log.clone();
                    async move { log.borrow_mut().push("other") }
                });
                log.borrow_mut().push("main before");
                yield_now().await;
                log.borrow_mut().push("main after");
                other.await;
            }
        });
        assert_eq!(*log.borrow(), ["main before", "other", "main after"]);
    }

    #[test]
    fn waiting_forever_is_reported_instead_of_hanging() {
        let _s = serial();
        let result = std::panic::catch_unwind(|| block_on(core::future::pending::<()>()));
        let message = *result.unwrap_err().downcast::<&str>().unwrap();
        assert!(
            message.contains("no timer or device can wake one"),
            "{message}"
        );
        // The executor is usable again.
        assert_eq!(block_on(async { 1 }), 1);
    }

    #[test]
    fn detached_tasks_finish_and_handles_report_it() {
        let _s = serial();
        let done = Rc::new(RefCell::new(false));
        block_on({
            let done = done.clone();
            async move {
                let handle = spawn(async { 5 });
                drop(spawn(async move {
                    sleep(ms(2)).await;
                    *done.borrow_mut() = true;
                }));
                yield_now().await;
                assert!(handle.is_finished());
                sleep(ms(5)).await;
            }
        });
        assert!(*done.borrow());
        assert!(RUNTIME.with(|rt| rt.tasks.is_empty()));
    }
}
