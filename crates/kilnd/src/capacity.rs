//! What kilnd may hold, and who gets it.
//!
//! - [`Host`]: the host's ceilings (descriptors, tasks, memory), read once.
//! - [`check`]: whether a configuration fits the host (`kilnd --check`,
//!   start-up and reloads): what can never fit is an error, what fits only
//!   while not every service is at its peak is a warning with the numbers.
//! - [`Usage`]: the descriptors kilnd holds now, counted as it opens and
//!   closes them (one per listener, [`FDS_PER_INSTANCE`] per instance, one
//!   more while it starts, one per client connection, one per API
//!   connection, plus what was open when it started), and the admission
//!   rules built on that count: a new connection or a new instance is
//!   refused, with a [`ConnRefusal`] or [`InstanceRefusal`], before the
//!   kernel would refuse a descriptor, and always leaves [`API_RESERVE`]
//!   free so that the API keeps answering.

use crate::config::{Config, ConfigError, DaemonSpec, ServiceSpec};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// Descriptors kilnd holds per running instance: its end of the link
/// socketpair and the read end of the tender's output pipe (stdout and
/// stderr share it). The READY pipe is held only while it starts, and the
/// tender is reaped without a pidfd.
pub const FDS_PER_INSTANCE: usize = 2;
/// Descriptors held per instance while it starts (the READY pipe).
pub const FDS_PER_STARTING: usize = 1;
/// Descriptors held per service (its listener).
pub const FDS_PER_SERVICE: usize = 1;
/// Descriptors a spawn needs at its peak (both ends of the link, output,
/// READY and exec-status pipes, and a duplicate for stderr).
pub const SPAWN_FDS: usize = 9;
/// Descriptors no connection and no instance may take: the API's
/// connections, `/proc` reads, a reload's file and images.
pub const API_RESERVE: usize = 16;
/// Descriptors connections leave free: the API's reserve plus room to
/// start four instances, so that one service's clients cannot keep
/// another service from starting.
pub const CONNECTION_RESERVE: usize = API_RESERVE + 4 * SPAWN_FDS;
/// What `--check` assumes kilnd needs for itself besides its services.
pub const DAEMON_FDS: usize = 64;
/// Tasks (threads) per instance: hvt runs a vCPU thread and a network I/O
/// thread beside its main thread; spt fewer.
pub const TASKS_PER_INSTANCE: usize = 3;
/// Tasks an instance start leaves free for everything else on the host.
pub const TASK_RESERVE: usize = 64;
/// Host memory an instance takes beyond its guest memory (the tender's
/// own pages, page tables, socket buffers), for `--check`.
pub const TENDER_MEMORY: u64 = 2 << 20;

/// The host's ceilings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    /// Descriptors kilnd may open: the RLIMIT_NOFILE hard limit, which
    /// kilnd raises its soft limit to at start.
    pub descriptors: u64,
    /// Tasks the host can run: the lower of `kernel.pid_max` and
    /// `kernel.threads-max`.
    pub tasks: u64,
    /// Memory and swap, bytes.
    pub memory: u64,
}

impl Host {
    /// Reads the ceilings of this host (unknown ones are taken as
    /// unlimited, so that nothing is refused on a guess).
    pub fn probe() -> Host {
        let num = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
        };
        let tasks = [
            num("/proc/sys/kernel/pid_max"),
            num("/proc/sys/kernel/threads-max"),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(u64::MAX);
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib = |key: &str| {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        };
        let memory = match (kib("MemTotal:"), kib("SwapTotal:")) {
            (Some(m), s) => (m + s.unwrap_or(0)) * 1024,
            _ => u64::MAX,
        };
        Host {
            descriptors: nofile().1,
            tasks,
            memory,
        }
    }
}

/// RLIMIT_NOFILE: (soft, hard).
pub fn nofile() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the valid rlimit struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return (u64::MAX, u64::MAX);
    }
    (lim.rlim_cur, lim.rlim_max)
}

/// Raises RLIMIT_NOFILE's soft limit to its hard limit; returns the soft
/// limit now in force.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return u64::MAX;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    lim.rlim_cur
}

/// The daemon-wide limits in force: the `[daemon]` table with its
/// defaults filled in from the descriptor limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Client connections open at once over all services.
    pub max_connections: usize,
    /// Instances running at once over all services.
    pub max_instances: usize,
    /// Instances starting at once over all services.
    pub max_starting: usize,
}

impl Limits {
    /// `d` with its defaults: half the descriptors for connections, no
    /// instance count beyond what each start's checks allow.
    pub fn resolve(d: &DaemonSpec, descriptors: u64) -> Limits {
        let descriptors = usize::try_from(descriptors).unwrap_or(usize::MAX);
        Limits {
            max_connections: d
                .max_connections
                .map_or((descriptors / 2).max(1), |n| n as usize),
            max_instances: d.max_instances.map_or(usize::MAX, |n| n as usize),
            max_starting: d.max_starting.max(1) as usize,
        }
    }

    /// A service's own connection cap: its `max_connections`, else a
    /// quarter of the daemon-wide cap (so that no single service can take
    /// every connection).
    pub fn service_connections(&self, spec: &ServiceSpec) -> usize {
        spec.max_connections
            .map_or((self.max_connections / 4).max(1), |n| n as usize)
    }
}

/// Why a client connection was closed without being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnRefusal {
    /// Its service already holds `max_connections`.
    ServiceConnections,
    /// kilnd already holds `[daemon] max_connections`.
    DaemonConnections,
    /// Too few descriptors would be left ([`CONNECTION_RESERVE`]).
    Descriptors,
    /// Its client sent nothing within `first_byte_timeout` while kilnd
    /// held it.
    Silent,
}

impl ConnRefusal {
    /// Every reason, in the order of [`ConnRefusal::index`].
    pub const ALL: [ConnRefusal; 4] = [
        ConnRefusal::ServiceConnections,
        ConnRefusal::DaemonConnections,
        ConnRefusal::Descriptors,
        ConnRefusal::Silent,
    ];

    /// Label in metrics and JSON.
    pub fn label(self) -> &'static str {
        match self {
            ConnRefusal::ServiceConnections => "service_max_connections",
            ConnRefusal::DaemonConnections => "daemon_max_connections",
            ConnRefusal::Descriptors => "descriptors",
            ConnRefusal::Silent => "silent",
        }
    }

    /// Position in [`ConnRefusal::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why kilnd did not start an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceRefusal {
    /// `[daemon] max_instances` run already.
    DaemonInstances,
    /// Too few descriptors would be left ([`API_RESERVE`]).
    Descriptors,
    /// Too few tasks would be left on the host ([`TASK_RESERVE`]).
    Tasks,
    /// The spawn itself failed (the kernel refused a descriptor, a
    /// process or memory, or `kiln` could not be executed).
    Spawn,
}

impl InstanceRefusal {
    /// Every reason, in the order of [`InstanceRefusal::index`].
    pub const ALL: [InstanceRefusal; 4] = [
        InstanceRefusal::DaemonInstances,
        InstanceRefusal::Descriptors,
        InstanceRefusal::Tasks,
        InstanceRefusal::Spawn,
    ];

    /// Label in metrics and JSON.
    pub fn label(self) -> &'static str {
        match self {
            InstanceRefusal::DaemonInstances => "daemon_max_instances",
            InstanceRefusal::Descriptors => "descriptors",
            InstanceRefusal::Tasks => "tasks",
            InstanceRefusal::Spawn => "spawn_failed",
        }
    }

    /// Position in [`InstanceRefusal::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why [`Usage::admit_instance`] said no.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoStart {
    /// `[daemon] max_starting` instances are starting: wait for one.
    Busy,
    /// Refused, with the numbers.
    Refused(InstanceRefusal, String),
}

/// What kilnd holds now (see the module documentation).
#[derive(Debug)]
pub struct Usage {
    /// The descriptor limit in force (RLIMIT_NOFILE soft limit).
    limit: usize,
    /// Descriptors kilnd's other counts do not cover: what was open at
    /// start (standard streams, the runtime, the API listener, inherited
    /// ones). Corrected by [`Usage::recount`].
    base: AtomicUsize,
    listeners: AtomicUsize,
    instances: AtomicUsize,
    starting: AtomicUsize,
    connections: AtomicUsize,
    api: AtomicUsize,
    /// Tasks the host can run.
    tasks_max: usize,
    /// Woken when an instance stops starting (READY or gone).
    pub slot_freed: tokio::sync::Notify,
}

impl Usage {
    /// Counts from now on, with `limit` descriptors and `tasks_max` tasks;
    /// what is open now is the base.
    pub fn new(limit: u64, tasks_max: u64) -> Arc<Usage> {
        let u = Arc::new(Usage {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            base: AtomicUsize::new(0),
            listeners: AtomicUsize::new(0),
            instances: AtomicUsize::new(0),
            starting: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            api: AtomicUsize::new(0),
            tasks_max: usize::try_from(tasks_max).unwrap_or(usize::MAX),
            slot_freed: tokio::sync::Notify::new(),
        });
        u.recount();
        u
    }

    /// The descriptor limit in force.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Descriptors in use now, as counted.
    pub fn fds(&self) -> usize {
        self.base.load(Relaxed)
            + self.listeners.load(Relaxed) * FDS_PER_SERVICE
            + self.instances.load(Relaxed) * FDS_PER_INSTANCE
            + self.starting.load(Relaxed) * FDS_PER_STARTING
            + self.connections.load(Relaxed)
            + self.api.load(Relaxed)
    }

    /// Client connections open now (held or spliced).
    pub fn connections(&self) -> usize {
        self.connections.load(Relaxed)
    }

    /// Instances now (starting, running or stopping, until reaped).
    pub fn instances(&self) -> usize {
        self.instances.load(Relaxed)
    }

    /// Instances starting now.
    pub fn starting(&self) -> usize {
        self.starting.load(Relaxed)
    }

    /// Counts the descriptors really open (`/proc/self/fd`) and makes the
    /// base what the other counts do not explain. Called at start and
    /// whenever the kernel refused a descriptor, so a count that drifted
    /// is corrected where it matters.
    pub fn recount(&self) {
        let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
            return;
        };
        // The directory's own descriptor is in the listing.
        let open = dir.count().saturating_sub(1);
        self.base.store(0, Relaxed);
        let counted = self.fds();
        self.base.store(open.saturating_sub(counted), Relaxed);
    }

    /// One more listener (a service) or one less.
    pub fn listener(&self, added: bool) {
        if added {
            self.listeners.fetch_add(1, Relaxed);
        } else {
            sub(&self.listeners, 1);
        }
    }

    /// An API connection, counted until the guard drops.
    pub fn api_connection(self: &Arc<Self>) -> ApiConn {
        self.api.fetch_add(1, Relaxed);
        ApiConn(self.clone())
    }

    /// Admits a client connection as far as the daemon is concerned (its
    /// service has taken one of its own places already); the connection is
    /// counted until it is handed to an instance's link ([`Usage::spliced`]
    /// then follows it) or dropped.
    pub fn admit_connection(self: &Arc<Self>, limits: &Limits) -> Result<(), ConnRefusal> {
        if self.fds() + 1 + CONNECTION_RESERVE > self.limit {
            return Err(ConnRefusal::Descriptors);
        }
        self.connections
            .fetch_update(Relaxed, Relaxed, |n| {
                (n < limits.max_connections).then_some(n + 1)
            })
            .map(|_| ())
            .map_err(|_| ConnRefusal::DaemonConnections)
    }

    /// A connection handed to a link came back unused: counted again
    /// (it was admitted already).
    pub fn connection_taken_back(&self) {
        self.connections.fetch_add(1, Relaxed);
    }

    /// A connection counted by [`Usage::admit_connection`] is gone (or
    /// handed to a link, which counts it from then on).
    pub fn connection_closed(&self) {
        sub(&self.connections, 1);
    }

    /// Spliced connections of an instance's link went from `from` to `to`
    /// (the link publishes its count; connections it holds are counted
    /// here from then on).
    pub fn spliced(&self, from: usize, to: usize) {
        if to > from {
            self.connections.fetch_add(to - from, Relaxed);
        } else {
            sub(&self.connections, from - to);
        }
    }

    /// Admits a new instance: a starting slot, and enough descriptors and
    /// tasks for it. The slot counts the instance until it is dropped.
    pub fn admit_instance(self: &Arc<Self>, limits: &Limits) -> Result<StartSlot, NoStart> {
        if self.instances() >= limits.max_instances {
            return Err(NoStart::Refused(
                InstanceRefusal::DaemonInstances,
                format!(
                    "{} instances run, [daemon] max_instances = {}",
                    self.instances(),
                    limits.max_instances
                ),
            ));
        }
        // A slot first: it is the cheap check, and what most callers (warm
        // services waiting to start) are told no by.
        self.starting
            .fetch_update(Relaxed, Relaxed, |n| {
                (n < limits.max_starting).then_some(n + 1)
            })
            .map_err(|_| NoStart::Busy)?;
        let give_back = |refusal: NoStart| {
            sub(&self.starting, 1);
            self.slot_freed.notify_waiters();
            refusal
        };
        // The slot just taken is counted in fds() already.
        let fds = self.fds();
        if fds + SPAWN_FDS + API_RESERVE > self.limit + FDS_PER_STARTING {
            return Err(give_back(NoStart::Refused(
                InstanceRefusal::Descriptors,
                format!(
                    "kilnd holds {} of its {} descriptors; an instance start needs {SPAWN_FDS} and {API_RESERVE} stay free for the API",
                    fds - FDS_PER_STARTING,
                    self.limit
                ),
            )));
        }
        if let Some(tasks) = tasks_now() {
            if tasks + TASKS_PER_INSTANCE + TASK_RESERVE > self.tasks_max {
                return Err(give_back(NoStart::Refused(
                    InstanceRefusal::Tasks,
                    format!(
                        "the host runs {tasks} tasks of at most {}; an instance needs {TASKS_PER_INSTANCE} and {TASK_RESERVE} stay free",
                        self.tasks_max
                    ),
                )));
            }
        }
        self.instances.fetch_add(1, Relaxed);
        Ok(StartSlot {
            usage: self.clone(),
            starting: AtomicBool::new(true),
        })
    }
}

fn sub(a: &AtomicUsize, n: usize) {
    let _ = a.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(n)));
}

/// Tasks (threads) on the host now: the fourth field of `/proc/loadavg`
/// is `running/total`.
pub fn tasks_now() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    s.split_whitespace().nth(3)?.split_once('/')?.1.parse().ok()
}

/// An API connection being counted.
#[derive(Debug)]
pub struct ApiConn(Arc<Usage>);

impl Drop for ApiConn {
    fn drop(&mut self) {
        sub(&self.0.api, 1);
    }
}

/// One admitted instance: counted as starting until [`StartSlot::started`]
/// and as an instance until dropped.
#[derive(Debug)]
pub struct StartSlot {
    usage: Arc<Usage>,
    starting: AtomicBool,
}

impl StartSlot {
    /// The instance is no longer starting (READY, or it ended): its READY
    /// pipe is closed and its starting slot goes to whoever waits.
    pub fn started(&self) {
        if self.starting.swap(false, Relaxed) {
            sub(&self.usage.starting, 1);
            self.usage.slot_freed.notify_waiters();
        }
    }
}

impl Drop for StartSlot {
    fn drop(&mut self) {
        self.started();
        sub(&self.usage.instances, 1);
    }
}

/// A configuration the host can hold only while not every service is at
/// its peak: what would not fit, with the numbers.
pub type Warning = String;

/// Checks `cfg` against the host. An error (with the line of the key at
/// fault) for what can never fit: one service's `max_instances` beyond the
/// descriptors, tasks or memory of the host, every `warm` instance
/// together beyond the descriptors or tasks. Warnings for sums over all
/// services that fit only while not every service is at its peak, and for
/// connection caps beyond the descriptors (connections are refused before
/// descriptors run out anyway).
pub fn check(cfg: &Config, host: &Host) -> Result<Vec<Warning>, ConfigError> {
    let err = |line: usize, reason: String| ConfigError {
        path: cfg.path.clone(),
        line: (line > 0).then_some(line),
        reason,
    };
    let fds_max = host.descriptors;
    let services = cfg.services.len() as u64;
    let kilnd_fds = DAEMON_FDS as u64 + services * FDS_PER_SERVICE as u64;
    let limits = Limits::resolve(&cfg.daemon, host.descriptors);
    let cap = |n: u64| n.min(limits.max_instances as u64);
    let mib = |b: u64| b >> 20;

    let (mut sum_fds, mut sum_tasks, mut sum_mem) = (kilnd_fds, 0u64, 0u64);
    let (mut warm_fds, mut warm_tasks) = (kilnd_fds, 0u64);
    for s in &cfg.services {
        let n = cap(s.max_instances as u64);
        let fds = n * FDS_PER_INSTANCE as u64;
        let tasks = n * TASKS_PER_INSTANCE as u64;
        let mem = n.saturating_mul(s.memory + TENDER_MEMORY);
        let name = &s.name;
        let at = s.lines.max_instances;
        if fds + kilnd_fds > fds_max {
            return Err(err(at, format!(
                "service \"{name}\": {n} instances need {fds} descriptors ({FDS_PER_INSTANCE} each) beside kilnd's {kilnd_fds}, but kilnd may hold only {fds_max} (RLIMIT_NOFILE hard limit); lower max_instances"
            )));
        }
        if tasks + TASK_RESERVE as u64 > host.tasks {
            return Err(err(at, format!(
                "service \"{name}\": {n} instances need {tasks} tasks ({TASKS_PER_INSTANCE} each), but the host runs at most {} (kernel.pid_max, kernel.threads-max); lower max_instances",
                host.tasks
            )));
        }
        if mem > host.memory {
            return Err(err(at, format!(
                "service \"{name}\": {n} instances of {} MiB guest memory need {} MiB, but the host has {} MiB of memory and swap; lower max_instances or memory",
                mib(s.memory), mib(mem), mib(host.memory)
            )));
        }
        if s.warm {
            warm_fds += (FDS_PER_INSTANCE) as u64;
            warm_tasks += TASKS_PER_INSTANCE as u64;
            if warm_fds > fds_max || warm_tasks + TASK_RESERVE as u64 > host.tasks {
                return Err(err(s.lines.name, format!(
                    "service \"{name}\": the warm services up to this one keep {} instances running, which need {warm_fds} descriptors and {warm_tasks} tasks; kilnd may hold {fds_max} descriptors and the host runs at most {} tasks",
                    warm_tasks / TASKS_PER_INSTANCE as u64, host.tasks
                )));
            }
        }
        sum_fds += fds + limits.service_connections(s) as u64;
        sum_tasks += tasks;
        sum_mem = sum_mem.saturating_add(mem);
    }
    let mut warnings = Vec::new();
    // A connection cap is a ceiling: beyond the descriptors, connections
    // are refused as "descriptors" first. Said, not refused.
    let room = fds_max.saturating_sub(kilnd_fds);
    if let Some(n) = cfg.daemon.max_connections.filter(|&n| n as u64 > room) {
        warnings.push(format!(
            "[daemon] max_connections = {n} is more than kilnd's descriptors allow (about {room} beside its own {kilnd_fds} of {fds_max}); connections beyond are refused as \"descriptors\""
        ));
    }
    for s in &cfg.services {
        if let Some(n) = s.max_connections.filter(|&n| n as u64 > room) {
            warnings.push(format!(
                "service \"{}\": max_connections = {n} is more than kilnd's descriptors allow (about {room} beside its own {kilnd_fds} of {fds_max}); connections beyond are refused as \"descriptors\"",
                s.name
            ));
        }
    }
    if sum_fds > fds_max {
        warnings.push(format!(
            "every service at max_instances and max_connections at once would need {sum_fds} descriptors; kilnd may hold {fds_max} (further connections and instances are then refused and counted)"
        ));
    }
    if sum_tasks + TASK_RESERVE as u64 > host.tasks {
        warnings.push(format!(
            "every service at max_instances at once would need {sum_tasks} tasks; the host runs at most {} (further instances are then refused and counted)",
            host.tasks
        ));
    }
    if sum_mem > host.memory {
        warnings.push(format!(
            "every service at max_instances at once, each instance using all its guest memory, would need {} MiB; the host has {} MiB of memory and swap",
            mib(sum_mem),
            mib(host.memory)
        ));
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests;
