//! The daemon: services with their listeners, routing of connections to
//! instances (starting them on demand), admission (connection caps, the
//! first-byte timeout, starting caps, descriptors and tasks; see
//! [`crate::capacity`]), idle stops, warm instances, reloads and shutdown.

use crate::capacity::{ConnRefusal, Host, InstanceRefusal, Limits, NoStart, Usage};
use crate::config::{self, Config, ServiceSpec};
use crate::instance::{self, Exit, Hooks, Instance, Phase};
use crate::logs::{unix_ms, LogRing, LogStore, Source};
use crate::metrics::ServiceMetrics;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// Ended instances remembered per service, for `kiln ps`.
const HISTORY: usize = 8;
/// How often idle instances and warm services are looked at.
const TICK: Duration = Duration::from_millis(50);
/// Longest a reload lets a replaced instance finish its connections.
const DRAIN_MAX: Duration = Duration::from_secs(30);
/// Longest wait between restarts of a warm instance that keeps failing.
const WARM_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long an accept loop waits after the kernel refused it (EMFILE and
/// friends) before it tries again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Longest a handed-over connection stays pending while its link has not
/// yet counted it.
const LINK_COUNTS: Duration = Duration::from_secs(1);
/// At most one line per this long about refusals, per service.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One declared service.
pub struct Service {
    /// What the configuration says.
    pub spec: ServiceSpec,
    /// Its console and kilnd's lines about it.
    pub logs: Arc<LogRing>,
    /// Its counters.
    pub metrics: Arc<ServiceMetrics>,
    /// The address actually bound (differs from spec.listen with port 0).
    pub bound: SocketAddr,
    listener: Arc<TcpListener>,
    accept: Mutex<Option<AbortHandle>>,
    instances: Mutex<Vec<Arc<Instance>>>,
    history: Mutex<VecDeque<Exit>>,
    retired: AtomicBool,
    warm_retry: Mutex<(Instant, Duration)>,
    daemon: Weak<Daemon>,
    usage: Arc<Usage>,
    /// Client connections accepted and not yet handed to an instance.
    held: AtomicUsize,
    /// Client connections its instances' links hold.
    spliced: Arc<AtomicUsize>,
    last_refusal: Mutex<Option<Refusal>>,
    refusal_log: Mutex<RateLimit>,
}

/// The last thing a service refused, for `kiln ps`.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    /// "connection" or "instance".
    pub what: &'static str,
    /// Its metrics label.
    pub reason: &'static str,
    /// In words, with the numbers.
    pub message: String,
    /// When, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
}

/// Lets one line through per [`REFUSAL_LOG_EVERY`] and counts the rest.
#[derive(Debug, Default)]
struct RateLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    /// `Some(n)`: log now, mentioning the `n` lines suppressed since.
    fn pass(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < REFUSAL_LOG_EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Where [`Service::pick`] sends a connection.
enum Pick {
    /// To this instance (its `pending` already counts the connection).
    Route(Arc<Instance>),
    /// Another instance would be needed, but the client has not sent
    /// anything yet: wait for its first byte.
    WaitFirstByte,
    /// No instance runs and `[daemon] max_starting` are starting: wait for
    /// a starting slot.
    WaitSlot,
    /// No instance runs and none may start.
    Refused(String),
}

/// Why a held connection did not become ready.
enum Held {
    Silent,
    Gone,
    Failed(String),
}

/// A connection routed to an instance and not yet handed over.
struct Pending(Arc<Instance>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Relaxed);
    }
}

/// Counts an admitted connection as held by its service (and open in
/// kilnd: [`Usage::admit_connection`] counted it there) until it is
/// handed to a link or dropped.
struct Holding<'a> {
    svc: &'a Service,
    held: bool,
    /// Counted in kilnd's [`Usage`] too.
    counted: bool,
}

impl<'a> Holding<'a> {
    /// A connection already admitted (and counted in [`Usage`]).
    fn new(svc: &'a Service) -> Self {
        svc.held.fetch_add(1, Relaxed);
        Holding {
            svc,
            held: true,
            counted: true,
        }
    }

    /// Takes one of the service's `max` places for a new connection, or
    /// `None` when all are taken. Atomic: every accepted connection is
    /// served by its own task, and many race here.
    fn reserve(svc: &'a Service, max: usize) -> Option<Self> {
        svc.held
            .fetch_update(Relaxed, Relaxed, |held| {
                (held + svc.spliced.load(Relaxed) < max).then_some(held + 1)
            })
            .ok()?;
        Some(Holding {
            svc,
            held: true,
            counted: false,
        })
    }

    /// The link counts it from now on.
    fn handed_over(&mut self) {
        if std::mem::take(&mut self.held) {
            self.svc.held.fetch_sub(1, Relaxed);
            if std::mem::take(&mut self.counted) {
                self.svc.usage.connection_closed();
            }
        }
    }
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        self.handed_over();
    }
}

/// What a held client has done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    /// Sent nothing yet.
    Silent,
    /// Sent at least one byte.
    Sent,
    /// Closed (or failed) without sending anything.
    Gone,
}

impl Client {
    fn from_peek(r: std::io::Result<usize>) -> Client {
        match r {
            Ok(n) if n > 0 => Client::Sent,
            _ => Client::Gone,
        }
    }
}

/// What the client has done, without waiting.
fn peek_now(client: &TcpStream) -> Client {
    let mut byte = [0u8; 1];
    let mut buf = tokio::io::ReadBuf::new(&mut byte);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match client.poll_peek(&mut cx, &mut buf) {
        std::task::Poll::Pending => Client::Silent,
        std::task::Poll::Ready(r) => Client::from_peek(r),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.usage.listener(false);
    }
}

impl Service {
    /// Instances not yet reaped.
    pub fn instances(&self) -> Vec<Arc<Instance>> {
        lock(&self.instances).clone()
    }

    /// The most recent ended instances, newest last.
    pub fn history(&self) -> Vec<Exit> {
        lock(&self.history).iter().cloned().collect()
    }

    /// Starts one instance. `cold`: a connection is waiting for it.
    pub fn start(self: &Arc<Self>, cold: bool) -> Result<Arc<Instance>, NoStart> {
        let mut list = lock(&self.instances);
        self.start_locked(&mut list, cold)
    }

    /// Client connections open now: held, or spliced by its instances.
    pub fn open_connections(&self) -> usize {
        self.held.load(Relaxed) + self.spliced.load(Relaxed)
    }

    /// What it refused last.
    pub fn last_refusal(&self) -> Option<Refusal> {
        lock(&self.last_refusal).clone()
    }

    /// Starts one instance while the caller holds the instance list, so
    /// that concurrent connections cannot start more than max_instances.
    fn start_locked(
        self: &Arc<Self>,
        list: &mut Vec<Arc<Instance>>,
        cold: bool,
    ) -> Result<Arc<Instance>, NoStart> {
        let shutting_down =
            || NoStart::Refused(InstanceRefusal::Spawn, "kilnd is shutting down".into());
        let daemon = self.daemon.upgrade().ok_or_else(shutting_down)?;
        if daemon.stopping.load(Relaxed) || self.retired.load(Relaxed) {
            return Err(shutting_down());
        }
        let slot = daemon
            .usage
            .admit_instance(&daemon.limits())
            .inspect_err(|e| {
                if let NoStart::Refused(why, msg) = e {
                    self.refused_instance(*why, msg);
                }
            })?;
        let id = daemon.next_id.fetch_add(1, Relaxed);
        let weak = Arc::downgrade(self);
        let spliced = self.spliced.clone();
        let usage = self.usage.clone();
        let hooks = Hooks {
            logs: self.logs.clone(),
            metrics: self.metrics.clone(),
            events: daemon.verbosity >= Verbosity::Events,
            output: daemon.verbosity >= Verbosity::Output,
            on_spliced: Box::new(move |from, to| {
                spliced.fetch_add(to, Relaxed);
                let _ = spliced.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(from)));
                usage.spliced(from, to);
            }),
            on_exit: Box::new(move |inst, exit| {
                if let Some(svc) = weak.upgrade() {
                    svc.reaped(inst, exit);
                }
            }),
        };
        let inst = instance::spawn(&self.spec, id, &daemon.kiln, slot, hooks).map_err(|e| {
            if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                self.usage.recount();
            }
            let msg = format!("cannot start {}: {e}", daemon.kiln.display());
            self.refused_instance(InstanceRefusal::Spawn, &msg);
            NoStart::Refused(InstanceRefusal::Spawn, msg)
        })?;
        if cold {
            self.metrics.cold_starts.fetch_add(1, Relaxed);
        }
        if daemon.verbosity >= Verbosity::Events {
            eprintln!(
                "kilnd: {}#{}: started (pid {}{})",
                self.spec.name,
                id,
                inst.pid,
                if cold { ", cold" } else { "" }
            );
        }
        list.push(inst.clone());
        Ok(inst)
    }

    /// Records a refused instance start: counted, shown by `kiln ps`,
    /// logged (at most once a second).
    fn refused_instance(&self, why: InstanceRefusal, msg: &str) {
        self.metrics.instance_refusals[why.index()].fetch_add(1, Relaxed);
        self.refusal(
            "instance",
            why.label(),
            format!("new instance refused: {msg}"),
        );
    }

    /// Closes a connection kilnd will not serve (with a reset, so that its
    /// client sees at once that it was not served), and records why.
    fn refuse_connection(&self, client: TcpStream, why: ConnRefusal, detail: String) {
        // On record before the client can see the reset: whoever the
        // client tells finds it counted.
        self.metrics.refused[why.index()].fetch_add(1, Relaxed);
        self.refusal(
            "connection",
            why.label(),
            format!("connection refused: {detail}"),
        );
        let _ = client.set_zero_linger();
        drop(client);
    }

    fn refusal(&self, what: &'static str, reason: &'static str, message: String) {
        let now = Instant::now();
        let pass = lock(&self.refusal_log).pass(now);
        if let Some(more) = pass {
            let line = match more {
                0 => message.clone(),
                n => format!("{message} (and {n} more refusals since the last line)"),
            };
            self.logs.push(0, Source::Kilnd, &line);
            eprintln!("kilnd: {}: {line}", self.spec.name);
        }
        *lock(&self.last_refusal) = Some(Refusal {
            what,
            reason,
            message,
            unix_ms: unix_ms(),
        });
    }

    fn reaped(&self, inst: &Arc<Instance>, exit: &Exit) {
        let m = &self.metrics;
        let c = inst.peer.counters();
        m.bytes_in
            .fetch_add(c.bytes_to_guest.load(Relaxed), Relaxed);
        m.bytes_out
            .fetch_add(c.bytes_from_guest.load(Relaxed), Relaxed);
        m.instance_us
            .fetch_add(inst.started.elapsed().as_micros() as u64, Relaxed);
        let reset = inst.reset_on_stop.load(Relaxed);
        m.reset_on_stop.fetch_add(reset, Relaxed);
        m.link_failed.fetch_add(
            c.connections_failed.load(Relaxed).saturating_sub(reset),
            Relaxed,
        );
        if exit.requested {
            m.stops.fetch_add(1, Relaxed);
        } else if exit.crashed {
            m.crashes.fetch_add(1, Relaxed);
        } else {
            m.exits.fetch_add(1, Relaxed);
        }
        if let Some(d) = self.daemon.upgrade() {
            if d.verbosity >= Verbosity::Events || exit.crashed {
                eprintln!("kilnd: {}#{}: {}", self.spec.name, inst.id, exit.reason);
            }
        }
        // The exit is on record before the instance leaves the list, so a
        // reader of both never sees it in neither.
        let mut list = lock(&self.instances);
        let mut h = lock(&self.history);
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(exit.clone());
        drop(h);
        list.retain(|i| !Arc::ptr_eq(i, inst));
    }

    /// Stops every instance; returns how many were asked.
    pub fn stop_all(&self, reason: &str) -> usize {
        let all = self.instances();
        for i in &all {
            i.stop(reason);
        }
        all.len()
    }

    /// Picks the instance for a new connection: the least-loaded usable
    /// one while it is below `concurrency` (or `max_instances` run), else
    /// a new one. A new one is started for a client that has sent nothing
    /// only when none runs at all (so silent connects start at most one
    /// instance), and no more than `max_starting` of the service (and
    /// `[daemon] max_starting` in all) start at once: beyond that, the
    /// connection queues on a running or starting instance.
    fn pick(self: &Arc<Self>, sent: bool) -> Pick {
        let mut list = lock(&self.instances);
        let route = |i: Arc<Instance>| {
            i.pending.fetch_add(1, Relaxed);
            // Routed to it just now: not idle, even before the link
            // counts the connection.
            *lock(&i.idle_since) = None;
            Pick::Route(i)
        };
        let (best, usable, starting) = {
            let live: Vec<&Arc<Instance>> = list.iter().filter(|i| i.usable()).collect();
            let starting = live.iter().filter(|i| i.phase() == Phase::Starting).count();
            let best = live.iter().min_by_key(|i| i.load()).map(|i| (*i).clone());
            (best, live.len(), starting)
        };
        if let Some(b) = &best {
            if b.load() < self.spec.concurrency as usize
                || usable >= self.spec.max_instances as usize
            {
                return route(b.clone());
            }
            if !sent {
                return if self.spec.first_byte_timeout.is_zero() {
                    route(b.clone())
                } else {
                    Pick::WaitFirstByte
                };
            }
            if starting >= self.spec.max_starting as usize {
                return route(b.clone());
            }
        }
        match self.start_locked(&mut list, true) {
            Ok(i) => route(i),
            Err(NoStart::Busy) => best.map_or(Pick::WaitSlot, route),
            Err(NoStart::Refused(_, msg)) => match best {
                Some(b) => route(b),
                None => Pick::Refused(msg),
            },
        }
    }

    /// Waits until `inst` is ready; meanwhile notices the client's first
    /// byte, and gives up on a client still silent at `silent` or gone
    /// without a word.
    async fn wait_ready(
        &self,
        inst: &Instance,
        client: &TcpStream,
        said: &mut Client,
        silent: Option<Instant>,
    ) -> Result<(), Held> {
        let ready = inst.ready(self.spec.ready_timeout);
        tokio::pin!(ready);
        let mut byte = [0u8; 1];
        loop {
            let waiting = *said == Client::Silent;
            tokio::select! {
                r = &mut ready => return r.map_err(Held::Failed),
                r = client.peek(&mut byte), if waiting => {
                    *said = Client::from_peek(r);
                    if *said == Client::Gone {
                        return Err(Held::Gone);
                    }
                }
                _ = sleep_until(silent), if waiting => return Err(Held::Silent),
            }
        }
    }

    /// Serves one client connection: admit, route, wait for ready, splice.
    async fn serve(self: Arc<Self>, client: TcpStream, accepted: Instant) {
        let Some(daemon) = self.daemon.upgrade() else {
            return;
        };
        let limits = daemon.limits();
        let service_max = limits.service_connections(&self.spec);
        let Some(mut holding) = Holding::reserve(&self, service_max) else {
            let open = self.open_connections();
            self.refuse_connection(
                client,
                ConnRefusal::ServiceConnections,
                format!("{open} connections open, max_connections = {service_max}"),
            );
            return;
        };
        if let Err(why) = daemon.usage.admit_connection(&limits) {
            drop(holding);
            let detail = match why {
                ConnRefusal::DaemonConnections => format!(
                    "kilnd holds {} connections, [daemon] max_connections = {}",
                    daemon.usage.connections(),
                    limits.max_connections
                ),
                _ => format!(
                    "kilnd holds {} of its {} descriptors",
                    daemon.usage.fds(),
                    daemon.usage.limit()
                ),
            };
            self.refuse_connection(client, why, detail);
            return;
        }
        drop(daemon);
        holding.counted = true;
        self.metrics.connections.fetch_add(1, Relaxed);
        let _ = client.set_nodelay(true);
        let mut client = client;
        let timeout = self.spec.first_byte_timeout;
        let silent = (!timeout.is_zero()).then(|| accepted + timeout);
        let give_up = accepted + self.spec.ready_timeout;
        let mut said = Client::Silent;
        let silent_detail = |also: &str| {
            format!(
                "its client sent nothing within first_byte_timeout = {}{also}",
                human(timeout)
            )
        };
        // A second try only when the chosen instance died between READY
        // and the splice (its link hands the connection back).
        let mut attempt = 0;
        loop {
            if said == Client::Silent {
                said = peek_now(&client);
            }
            if said == Client::Gone {
                // It left without a word (a port probe, say): nothing to
                // serve, nothing to report.
                return;
            }
            let inst = match self.pick(said == Client::Sent) {
                Pick::Route(i) => i,
                Pick::WaitFirstByte => {
                    let mut byte = [0u8; 1];
                    tokio::select! {
                        r = client.peek(&mut byte) => said = Client::from_peek(r),
                        _ = sleep_until(silent) => {
                            drop(holding);
                            self.refuse_connection(client, ConnRefusal::Silent, silent_detail(""));
                            return;
                        }
                    }
                    continue;
                }
                Pick::WaitSlot => {
                    let Some(usage) = self.daemon.upgrade().map(|d| d.usage.clone()) else {
                        return;
                    };
                    let freed = usage.slot_freed.notified();
                    let mut byte = [0u8; 1];
                    let waiting = said == Client::Silent;
                    tokio::select! {
                        _ = freed => {}
                        // A slot freed just before we began to wait is
                        // found on the next try.
                        _ = tokio::time::sleep(TICK) => {}
                        r = client.peek(&mut byte), if waiting => said = Client::from_peek(r),
                        _ = sleep_until(silent), if waiting => {
                            drop(holding);
                            self.refuse_connection(client, ConnRefusal::Silent, silent_detail(""));
                            return;
                        }
                        _ = tokio::time::sleep_until(give_up.into()) => {
                            self.dropped(0, &format!(
                                "no instance could start within ready_timeout = {}: {} instances are starting in all ([daemon] max_starting)",
                                human(self.spec.ready_timeout), usage.starting()
                            ));
                            return;
                        }
                    }
                    continue;
                }
                Pick::Refused(msg) => {
                    self.dropped(0, &msg);
                    return;
                }
            };
            let pending = Pending(inst);
            let inst = &pending.0;
            match self.wait_ready(inst, &client, &mut said, silent).await {
                Ok(()) => {}
                Err(Held::Silent) => {
                    let detail = silent_detail(&format!(" while instance {} started", inst.id));
                    drop(holding);
                    self.refuse_connection(client, ConnRefusal::Silent, detail);
                    return;
                }
                Err(Held::Gone) => return,
                Err(Held::Failed(e)) => {
                    self.dropped(inst.id, &e);
                    if inst.phase() == Phase::Starting {
                        // Not ready in time: do not leave it half-started.
                        inst.stop("not ready in time");
                    }
                    return;
                }
            }
            holding.handed_over();
            let mut counted = inst.peer.active();
            counted.mark_unchanged();
            let result = inst.peer.splice(client);
            let id = inst.id;
            if result.is_ok() {
                // The connection stays pending until the link publishes it
                // (its next change of the count): in between, the
                // instance must not look idle or below its concurrency.
                let _ = tokio::time::timeout(LINK_COUNTS, counted.changed()).await;
            }
            drop(pending);
            match result {
                Ok(()) => return,
                Err(kiln_peer::LinkGone(back)) if attempt == 0 => {
                    attempt += 1;
                    client = back;
                    self.usage.connection_taken_back();
                    holding = Holding::new(&self);
                }
                Err(_) => {
                    self.dropped(id, "its instance's link is gone");
                    return;
                }
            }
        }
    }

    fn dropped(&self, instance: u64, why: &str) {
        self.metrics.connections_failed.fetch_add(1, Relaxed);
        self.logs.push(
            instance,
            Source::Kilnd,
            &format!("connection dropped: {why}"),
        );
    }

    /// Idle stops and warm restarts; called every [`TICK`]. Decided under
    /// the instance list's lock, which [`Service::pick`] also holds while
    /// it routes a connection (and marks the instance not idle), so an
    /// idle stop never takes an instance a connection was just given.
    fn tick(self: &Arc<Self>, now: Instant) {
        let list = lock(&self.instances);
        let mut live = list.iter().filter(|i| i.usable()).count();
        for inst in list.iter() {
            if inst.phase() != Phase::Ready {
                continue;
            }
            let mut since = lock(&inst.idle_since);
            if inst.load() > 0 {
                *since = None;
                continue;
            }
            let t = *since.get_or_insert(now);
            if now.duration_since(t) >= self.spec.idle_timeout && !(self.spec.warm && live <= 1) {
                drop(since);
                let why = format!("idle for {}", human(self.spec.idle_timeout));
                inst.stop(&why);
                live -= 1;
            }
        }
        drop(list);
        if self.spec.warm && live == 0 {
            let mut retry = lock(&self.warm_retry);
            if now >= retry.0 {
                let crashed_last = lock(&self.history).back().is_some_and(|e| e.crashed);
                let backoff =
                    |d: Duration| (d * 2).clamp(Duration::from_millis(250), WARM_BACKOFF_MAX);
                match self.start(false) {
                    Ok(_) => {
                        retry.1 = if crashed_last {
                            backoff(retry.1)
                        } else {
                            Duration::ZERO
                        };
                        retry.0 = now + retry.1;
                    }
                    // Waits for a starting slot: try again next tick.
                    Err(NoStart::Busy) => {}
                    Err(NoStart::Refused(..)) => {
                        retry.1 = backoff(retry.1);
                        retry.0 = now + retry.1;
                    }
                }
            }
        }
    }
}

fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// What kilnd reports on standard error (crashes are always reported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// Only crashes and errors.
    Quiet,
    /// Instance starts, READY, stops and exits.
    Events,
    /// Events and every line instances print.
    Output,
}

/// The daemon.
pub struct Daemon {
    /// The `kiln` binary instances are started with.
    pub kiln: PathBuf,
    /// What kilnd reports on standard error.
    pub verbosity: Verbosity,
    /// The configuration file reloads read.
    pub config_path: PathBuf,
    /// When kilnd started.
    pub started: Instant,
    /// The host's ceilings, read at start.
    pub host: Host,
    /// What kilnd holds now.
    pub usage: Arc<Usage>,
    limits: Mutex<Limits>,
    /// The logs of all services, under one budget.
    logs: Arc<LogStore>,
    services: Mutex<BTreeMap<String, Arc<Service>>>,
    reload_lock: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
    stopping: AtomicBool,
}

impl Daemon {
    /// A daemon with no services yet; [`Daemon::apply`] gives it some.
    /// Must run on a tokio runtime: it starts the tick and the reaper, and
    /// takes what is open now as the base of its descriptor count.
    pub fn new(kiln: PathBuf, config_path: PathBuf, verbosity: Verbosity) -> Arc<Daemon> {
        crate::reaper::start();
        let host = Host::probe();
        let usage = Usage::new(crate::capacity::nofile().0, host.tasks);
        let limits = Limits::resolve(&config::DaemonSpec::default(), usage.limit() as u64);
        let d = Arc::new(Daemon {
            kiln,
            verbosity,
            config_path,
            host,
            usage,
            limits: Mutex::new(limits),
            started: Instant::now(),
            logs: LogStore::standard(),
            services: Mutex::new(BTreeMap::new()),
            reload_lock: tokio::sync::Mutex::new(()),
            next_id: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&d);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(d) = weak.upgrade() else { return };
                if d.stopping.load(Relaxed) {
                    return;
                }
                let now = Instant::now();
                for s in d.services() {
                    s.tick(now);
                }
            }
        });
        d
    }

    /// The services, by name.
    pub fn services(&self) -> Vec<Arc<Service>> {
        lock(&self.services).values().cloned().collect()
    }

    /// One service.
    pub fn service(&self, name: &str) -> Option<Arc<Service>> {
        lock(&self.services).get(name).cloned()
    }

    /// The daemon-wide limits in force.
    pub fn limits(&self) -> Limits {
        *lock(&self.limits)
    }

    /// Re-reads the configuration file and applies it; on error the
    /// running configuration stays. What fits the host only while not
    /// every service peaks is said in the answer.
    pub async fn reload(self: &Arc<Self>) -> Result<String, String> {
        let cfg = config::load(&self.config_path).map_err(|e| e.to_string())?;
        let warnings = crate::capacity::check(&cfg, &self.host).map_err(|e| e.to_string())?;
        let mut msg = self.apply(cfg).await?;
        for w in warnings {
            msg.push_str(&format!("; warning: {w}"));
        }
        Ok(msg)
    }

    /// Makes `cfg` the running configuration: binds new addresses first
    /// (all or nothing), then retires removed or changed services and
    /// starts new ones. Unchanged services keep their instances.
    pub async fn apply(self: &Arc<Self>, cfg: Config) -> Result<String, String> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let limits = Limits::resolve(&cfg.daemon, self.usage.limit() as u64);
        let old: BTreeMap<String, Arc<Service>> = lock(&self.services).clone();
        let mut listeners: HashMap<SocketAddr, Arc<TcpListener>> = old
            .values()
            .map(|s| (s.bound, s.listener.clone()))
            .collect();
        // Bind what is new before touching anything.
        let mut fresh: Vec<(ServiceSpec, Arc<TcpListener>)> = Vec::new();
        for spec in &cfg.services {
            if let Some(s) = old.get(&spec.name) {
                if s.spec.same_as(spec) {
                    continue;
                }
            }
            let listener = match reusable(&mut listeners, spec.listen) {
                Some(l) => l,
                None => Arc::new(bind(spec.listen).map_err(|e| {
                    format!(
                        "{}:{}: service \"{}\": cannot listen on {}: {e}",
                        cfg.path.display(),
                        spec.lines.listen,
                        spec.name,
                        spec.listen
                    )
                })?),
            };
            fresh.push((spec.clone(), listener));
        }
        // Commit.
        *lock(&self.limits) = limits;
        let mut retired = 0;
        for (name, s) in &old {
            let keep = cfg
                .services
                .iter()
                .any(|n| &n.name == name && s.spec.same_as(n));
            if !keep {
                s.drain();
                lock(&self.services).remove(name);
                retired += 1;
            }
        }
        let started = fresh.len();
        for (spec, listener) in fresh {
            let svc = self.add(spec, listener);
            if svc.spec.warm {
                let _ = svc.start(false);
            }
        }
        Ok(format!(
            "{} services ({} new or changed, {} removed or replaced)",
            cfg.services.len(),
            started,
            retired
        ))
    }

    fn add(self: &Arc<Self>, spec: ServiceSpec, listener: Arc<TcpListener>) -> Arc<Service> {
        let bound = listener.local_addr().unwrap_or(spec.listen);
        self.usage.listener(true);
        let svc = Arc::new(Service {
            spec,
            logs: Arc::new(self.logs.ring()),
            metrics: Arc::new(ServiceMetrics::default()),
            bound,
            listener: listener.clone(),
            accept: Mutex::new(None),
            instances: Mutex::new(Vec::new()),
            history: Mutex::new(VecDeque::new()),
            retired: AtomicBool::new(false),
            warm_retry: Mutex::new((Instant::now(), Duration::ZERO)),
            daemon: Arc::downgrade(self),
            usage: self.usage.clone(),
            held: AtomicUsize::new(0),
            spliced: Arc::new(AtomicUsize::new(0)),
            last_refusal: Mutex::new(None),
            refusal_log: Mutex::new(RateLimit::default()),
        });
        let weak = Arc::downgrade(&svc);
        let task = tokio::spawn(async move {
            // Failed accepts since the last one that worked.
            let mut failing = 0u64;
            loop {
                let accepted = listener.accept().await;
                let Some(svc) = weak.upgrade() else { return };
                match accepted {
                    Ok((stream, _)) => {
                        if failing > 0 {
                            let msg = format!("accepting again after {failing} failed accepts");
                            svc.logs.push(0, Source::Kilnd, &msg);
                            eprintln!("kilnd: {}: {msg}", svc.spec.name);
                            failing = 0;
                        }
                        tokio::spawn(svc.serve(stream, Instant::now()));
                    }
                    Err(e) => {
                        // EMFILE and friends: the connection waits in the
                        // backlog; say so once, wait a little, go on.
                        svc.metrics.accept_errors.fetch_add(1, Relaxed);
                        if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                            svc.usage.recount();
                        }
                        if failing == 0 {
                            let msg = format!(
                                "accept failed: {e} (kilnd holds {} of {} descriptors); retrying every {} ms",
                                svc.usage.fds(),
                                svc.usage.limit(),
                                ACCEPT_BACKOFF.as_millis()
                            );
                            svc.logs.push(0, Source::Kilnd, &msg);
                            eprintln!("kilnd: {}: {msg}", svc.spec.name);
                        }
                        failing += 1;
                        drop(svc);
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                }
            }
        });
        *lock(&svc.accept) = Some(task.abort_handle());
        svc.logs.push(
            0,
            Source::Kilnd,
            &format!(
                "serving {} -> guest port {} of {}",
                bound,
                svc.spec.guest_port,
                svc.spec.image.display()
            ),
        );
        lock(&self.services).insert(svc.spec.name.clone(), svc.clone());
        svc
    }

    /// Stops accepting, stops every instance and waits (bounded) until all
    /// are reaped.
    pub async fn shutdown(&self) {
        self.stopping.store(true, Relaxed);
        let all = self.services();
        for s in &all {
            s.retire();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for s in &all {
            for i in s.instances() {
                let left = deadline.saturating_duration_since(Instant::now());
                let _ = tokio::time::timeout(left, i.exited()).await;
            }
        }
        lock(&self.services).clear();
    }

    /// Whether shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Relaxed)
    }
}

impl Service {
    fn retire(&self) {
        self.stop_accepting();
        self.stop_all("kilnd stopping");
    }

    fn stop_accepting(&self) {
        self.retired.store(true, Relaxed);
        if let Some(a) = lock(&self.accept).take() {
            a.abort();
        }
    }

    /// For a reload that removes or replaces the service: new connections
    /// go to its successor (if any) at once, while each of its instances
    /// finishes the connections it has (up to [`DRAIN_MAX`]) and is then
    /// stopped.
    fn drain(self: &Arc<Self>) {
        self.stop_accepting();
        let svc = self.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + DRAIN_MAX;
            loop {
                let now = Instant::now();
                for i in svc.instances() {
                    if i.usable() && (i.load() == 0 || now >= deadline) {
                        i.stop("configuration reloaded");
                    }
                }
                if svc.instances().is_empty() {
                    return;
                }
                tokio::time::sleep(TICK).await;
            }
        });
    }
}

/// A listener already bound to `addr` by the running configuration
/// (a service that keeps or takes over its address).
fn reusable(
    listeners: &mut HashMap<SocketAddr, Arc<TcpListener>>,
    addr: SocketAddr,
) -> Option<Arc<TcpListener>> {
    if addr.port() == 0 {
        return None;
    }
    listeners.remove(&addr)
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}
