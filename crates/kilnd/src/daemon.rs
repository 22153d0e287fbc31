//! The daemon: services with their listeners, routing of connections to
//! instances (starting them on demand), idle stops, warm instances,
//! reloads and shutdown.

use crate::config::{self, Config, ServiceSpec};
use crate::instance::{self, Exit, Hooks, Instance, Phase};
use crate::logs::{LogRing, LogStore, Source};
use crate::metrics::ServiceMetrics;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
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
    pub fn start(self: &Arc<Self>, cold: bool) -> Result<Arc<Instance>, String> {
        let mut list = lock(&self.instances);
        self.start_locked(&mut list, cold)
    }

    /// Starts one instance while the caller holds the instance list, so
    /// that concurrent connections cannot start more than max_instances.
    fn start_locked(
        self: &Arc<Self>,
        list: &mut Vec<Arc<Instance>>,
        cold: bool,
    ) -> Result<Arc<Instance>, String> {
        let daemon = self.daemon.upgrade().ok_or("kilnd is shutting down")?;
        if daemon.stopping.load(Relaxed) || self.retired.load(Relaxed) {
            return Err("kilnd is shutting down".into());
        }
        let id = daemon.next_id.fetch_add(1, Relaxed);
        let weak = Arc::downgrade(self);
        let hooks = Hooks {
            logs: self.logs.clone(),
            metrics: self.metrics.clone(),
            events: daemon.verbosity >= Verbosity::Events,
            output: daemon.verbosity >= Verbosity::Output,
            on_exit: Box::new(move |inst, exit| {
                if let Some(svc) = weak.upgrade() {
                    svc.reaped(inst, exit);
                }
            }),
        };
        let inst = instance::spawn(&self.spec, id, &daemon.kiln, hooks).map_err(|e| {
            let msg = format!("cannot start {}: {e}", daemon.kiln.display());
            self.logs.push(0, Source::Kilnd, &msg);
            msg
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

    fn reaped(&self, inst: &Arc<Instance>, exit: &Exit) {
        let m = &self.metrics;
        let c = inst.peer.counters();
        m.bytes_in
            .fetch_add(c.bytes_to_guest.load(Relaxed), Relaxed);
        m.bytes_out
            .fetch_add(c.bytes_from_guest.load(Relaxed), Relaxed);
        m.instance_us
            .fetch_add(inst.started.elapsed().as_micros() as u64, Relaxed);
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

    /// Picks the instance for a new connection, starting one when none is
    /// usable or all are at their concurrency and the service may grow.
    fn pick(self: &Arc<Self>) -> Result<Arc<Instance>, String> {
        let mut list = lock(&self.instances);
        let live: Vec<&Arc<Instance>> = list.iter().filter(|i| i.usable()).collect();
        let best = live.iter().min_by_key(|i| i.load()).map(|i| (*i).clone());
        let chosen = match best {
            Some(b)
                if b.load() < self.spec.concurrency as usize
                    || live.len() >= self.spec.max_instances as usize =>
            {
                b
            }
            _ => self.start_locked(&mut list, true)?,
        };
        chosen.pending.fetch_add(1, Relaxed);
        Ok(chosen)
    }

    /// Serves one client connection: route, wait for ready, splice.
    async fn serve(self: Arc<Self>, client: TcpStream) {
        self.metrics.connections.fetch_add(1, Relaxed);
        let _ = client.set_nodelay(true);
        let mut client = client;
        // A second try only when the chosen instance died between READY
        // and the splice (its link hands the connection back).
        for attempt in 0..2 {
            let inst = match self.pick() {
                Ok(i) => i,
                Err(e) => {
                    self.dropped(0, &e);
                    return;
                }
            };
            let ready = inst.ready(self.spec.ready_timeout).await;
            let result = match ready {
                Ok(()) => inst.peer.splice(client),
                Err(e) => {
                    inst.pending.fetch_sub(1, Relaxed);
                    self.dropped(inst.id, &e);
                    if inst.phase() == Phase::Starting {
                        // Not ready in time: do not leave it half-started.
                        inst.stop("not ready in time");
                    }
                    return;
                }
            };
            inst.pending.fetch_sub(1, Relaxed);
            match result {
                Ok(()) => return,
                Err(kiln_peer::LinkGone(back)) if attempt == 0 => client = back,
                Err(_) => {
                    self.dropped(inst.id, "its instance's link is gone");
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

    /// Idle stops and warm restarts; called every [`TICK`].
    fn tick(self: &Arc<Self>, now: Instant) {
        let list = self.instances();
        let mut live = list.iter().filter(|i| i.usable()).count();
        for inst in &list {
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
        if self.spec.warm && live == 0 {
            let mut retry = lock(&self.warm_retry);
            if now >= retry.0 {
                let crashed_last = lock(&self.history).back().is_some_and(|e| e.crashed);
                retry.1 = if crashed_last {
                    (retry.1 * 2).clamp(Duration::from_millis(250), WARM_BACKOFF_MAX)
                } else {
                    Duration::ZERO
                };
                retry.0 = now + retry.1;
                drop(retry);
                let _ = self.start(false);
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
    /// The logs of all services, under one budget.
    logs: Arc<LogStore>,
    services: Mutex<BTreeMap<String, Arc<Service>>>,
    reload_lock: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
    stopping: AtomicBool,
}

impl Daemon {
    /// A daemon with no services yet; [`Daemon::apply`] gives it some.
    pub fn new(kiln: PathBuf, config_path: PathBuf, verbosity: Verbosity) -> Arc<Daemon> {
        let d = Arc::new(Daemon {
            kiln,
            verbosity,
            config_path,
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

    /// Re-reads the configuration file and applies it; on error the
    /// running configuration stays.
    pub async fn reload(self: &Arc<Self>) -> Result<String, String> {
        let cfg = config::load(&self.config_path).map_err(|e| e.to_string())?;
        self.apply(cfg).await
    }

    /// Makes `cfg` the running configuration: binds new addresses first
    /// (all or nothing), then retires removed or changed services and
    /// starts new ones. Unchanged services keep their instances.
    pub async fn apply(self: &Arc<Self>, cfg: Config) -> Result<String, String> {
        let _one_at_a_time = self.reload_lock.lock().await;
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
                        spec.listen_line,
                        spec.name,
                        spec.listen
                    )
                })?),
            };
            fresh.push((spec.clone(), listener));
        }
        // Commit.
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
        });
        let weak = Arc::downgrade(&svc);
        let task = tokio::spawn(async move {
            loop {
                let accepted = listener.accept().await;
                let Some(svc) = weak.upgrade() else { return };
                match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(svc.serve(stream));
                    }
                    Err(e) => {
                        // EMFILE and friends: say so, wait a little, go on.
                        svc.logs
                            .push(0, Source::Kilnd, &format!("accept failed: {e}"));
                        drop(svc);
                        tokio::time::sleep(Duration::from_millis(50)).await;
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
