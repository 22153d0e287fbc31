//! Counters kilnd keeps per service, and their Prometheus text form.

use crate::capacity::{ConnRefusal, InstanceRefusal};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds (seconds) of the cold-start histogram's buckets.
pub const BUCKETS: [f64; 15] = [
    0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A histogram of durations with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, seconds: f64) {
        if let Some(i) = BUCKETS.iter().position(|&b| seconds <= b) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add((seconds * 1e6) as u64, Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Counters of one service. Bytes and instance time of running instances
/// are added when they are read, from the instances themselves.
#[derive(Debug, Default)]
pub struct ServiceMetrics {
    /// Instances started.
    pub starts: AtomicU64,
    /// Instances started because a connection found none ready (cold starts).
    pub cold_starts: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections closed without reaching an instance.
    pub connections_failed: AtomicU64,
    /// Bytes from clients to instances, of instances that have ended.
    pub bytes_in: AtomicU64,
    /// Bytes from instances to clients, of instances that have ended.
    pub bytes_out: AtomicU64,
    /// Microseconds lived by instances that have ended.
    pub instance_us: AtomicU64,
    /// Instances that crashed or exited with a failure status.
    pub crashes: AtomicU64,
    /// Instances stopped by kilnd (idle, `kiln stop`, reload, shutdown).
    pub stops: AtomicU64,
    /// Instances that exited with status 0 on their own.
    pub exits: AtomicU64,
    /// Instances stopped because their network link failed (a panic in
    /// the link's network stack, a socket error).
    pub link_failures: AtomicU64,
    /// Time from spawning an instance to its READY.
    pub cold_start_seconds: Histogram,
    /// Connections closed unserved, by [`ConnRefusal`] (not counted in
    /// `connections`).
    pub refused: [AtomicU64; ConnRefusal::ALL.len()],
    /// Instance starts refused, by [`InstanceRefusal`].
    pub instance_refusals: [AtomicU64; InstanceRefusal::ALL.len()],
    /// Open client connections reset because kilnd stopped their instance
    /// (idle, `kiln stop`, reload, shutdown), of instances that have ended.
    pub reset_on_stop: AtomicU64,
    /// Other connections the links reported failed (refused or reset by
    /// the guest, timed out, or cut by an instance that ended on its own),
    /// of instances that have ended.
    pub link_failed: AtomicU64,
    /// Accepts the kernel refused (EMFILE, ENFILE, ...).
    pub accept_errors: AtomicU64,
}

/// What the exporter needs of one service at the moment it is scraped.
pub struct Snapshot<'a> {
    /// Service name.
    pub name: &'a str,
    /// Its counters.
    pub m: &'a ServiceMetrics,
    /// Bytes in/out of its running instances.
    pub live_bytes: (u64, u64),
    /// Seconds lived so far by its running instances.
    pub live_seconds: f64,
    /// Instances by state: starting, ready.
    pub starting: usize,
    /// Ready instances.
    pub ready: usize,
    /// Connections the links of its running instances reported failed.
    pub live_link_failed: u64,
    /// Client connections open now (held or spliced).
    pub open: usize,
}

/// Daemon-wide figures at the moment of a scrape.
pub struct DaemonSnapshot {
    /// Descriptors kilnd holds, as it counts them.
    pub descriptors: usize,
    /// Its descriptor limit.
    pub descriptor_limit: usize,
    /// Client connections open, all services.
    pub connections: usize,
    /// Instances starting, all services.
    pub starting: usize,
}

/// Prometheus text exposition (format 0.0.4) of every service, and of the
/// daemon as a whole.
pub fn render(services: &[Snapshot<'_>], daemon: &DaemonSnapshot) -> String {
    let mut out = String::new();
    let counter = |out: &mut String, name: &str, help: &str, value: &dyn Fn(&Snapshot) -> f64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for s in services {
            let _ = writeln!(out, "{name}{{service=\"{}\"}} {}", s.name, value(s));
        }
    };
    let n = |a: &AtomicU64| a.load(Relaxed) as f64;
    counter(
        &mut out,
        "kilnd_instance_starts_total",
        "Instances started.",
        &|s| n(&s.m.starts),
    );
    counter(
        &mut out,
        "kilnd_cold_starts_total",
        "Instances started because a connection found none ready.",
        &|s| n(&s.m.cold_starts),
    );
    counter(
        &mut out,
        "kilnd_requests_total",
        "Client connections accepted (each one is spliced to an instance).",
        &|s| n(&s.m.connections),
    );
    counter(
        &mut out,
        "kilnd_requests_failed_total",
        "Client connections closed without reaching an instance.",
        &|s| n(&s.m.connections_failed),
    );
    counter(
        &mut out,
        "kilnd_received_bytes_total",
        "Bytes from clients to instances.",
        &|s| n(&s.m.bytes_in) + s.live_bytes.0 as f64,
    );
    counter(
        &mut out,
        "kilnd_sent_bytes_total",
        "Bytes from instances to clients.",
        &|s| n(&s.m.bytes_out) + s.live_bytes.1 as f64,
    );
    counter(
        &mut out,
        "kilnd_instance_seconds_total",
        "Seconds lived by instances, running ones included.",
        &|s| n(&s.m.instance_us) / 1e6 + s.live_seconds,
    );
    counter(
        &mut out,
        "kilnd_instance_crashes_total",
        "Instances that ended with a failure status kilnd did not ask for.",
        &|s| n(&s.m.crashes),
    );
    counter(
        &mut out,
        "kilnd_instance_stops_total",
        "Instances stopped by kilnd (idle timeout, kiln stop, reload, shutdown).",
        &|s| n(&s.m.stops),
    );
    counter(
        &mut out,
        "kilnd_link_failures_total",
        "Instances stopped because their network link failed (a panic in its network stack, a socket error).",
        &|s| n(&s.m.link_failures),
    );
    let _ = writeln!(
        out,
        "# HELP kilnd_instances Instances now, by state.\n# TYPE kilnd_instances gauge"
    );
    for s in services {
        let _ = writeln!(
            out,
            "kilnd_instances{{service=\"{}\",state=\"starting\"}} {}\nkilnd_instances{{service=\"{}\",state=\"ready\"}} {}",
            s.name, s.starting, s.name, s.ready
        );
    }
    let labelled = |out: &mut String,
                    name: &str,
                    help: &str,
                    label: &str,
                    values: &dyn Fn(&Snapshot) -> Vec<(&'static str, u64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for s in services {
            for (v, n) in values(s) {
                let _ = writeln!(out, "{name}{{service=\"{}\",{label}=\"{v}\"}} {n}", s.name);
            }
        }
    };
    labelled(
        &mut out,
        "kilnd_connections_refused_total",
        "Client connections closed unserved: over a connection cap, too few descriptors left, or silent past first_byte_timeout.",
        "reason",
        &|s| {
            ConnRefusal::ALL
                .iter()
                .map(|r| (r.label(), s.m.refused[r.index()].load(Relaxed)))
                .collect()
        },
    );
    labelled(
        &mut out,
        "kilnd_instance_refusals_total",
        "Instance starts refused: daemon max_instances, too few descriptors or tasks left, or the spawn failed.",
        "reason",
        &|s| {
            InstanceRefusal::ALL
                .iter()
                .map(|r| (r.label(), s.m.instance_refusals[r.index()].load(Relaxed)))
                .collect()
        },
    );
    labelled(
        &mut out,
        "kilnd_connections_reset_total",
        "Spliced connections cut with a reset: because kilnd stopped their instance (idle, kiln stop, reload, shutdown), or reported failed by the link (guest refused or reset, timed out, instance ended on its own).",
        "cause",
        &|s| {
            vec![
                ("instance_stopped", s.m.reset_on_stop.load(Relaxed)),
                ("link", s.m.link_failed.load(Relaxed) + s.live_link_failed),
            ]
        },
    );
    counter(
        &mut out,
        "kilnd_accept_errors_total",
        "Accepts the kernel refused (EMFILE, ENFILE, ...); the connection waits in the backlog.",
        &|s| n(&s.m.accept_errors),
    );
    let _ = writeln!(
        out,
        "# HELP kilnd_connections_open Client connections open now (held or spliced).\n# TYPE kilnd_connections_open gauge"
    );
    for s in services {
        let _ = writeln!(
            out,
            "kilnd_connections_open{{service=\"{}\"}} {}",
            s.name, s.open
        );
    }
    for (name, help, v) in [
        (
            "kilnd_descriptors",
            "Descriptors kilnd holds, as it counts them.",
            daemon.descriptors,
        ),
        (
            "kilnd_descriptor_limit",
            "kilnd's descriptor limit (RLIMIT_NOFILE).",
            daemon.descriptor_limit,
        ),
        (
            "kilnd_connections",
            "Client connections open now, all services.",
            daemon.connections,
        ),
        (
            "kilnd_instances_starting",
            "Instances starting now, all services.",
            daemon.starting,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
    let name = "kilnd_cold_start_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time from spawning an instance to its READY hypercall.\n# TYPE {name} histogram"
    );
    for s in services {
        s.m.cold_start_seconds
            .render(&mut out, name, &format!("service=\"{}\"", s.name));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let m = ServiceMetrics::default();
        m.cold_start_seconds.observe(0.0015);
        m.cold_start_seconds.observe(0.004);
        m.cold_start_seconds.observe(60.0);
        m.cold_starts.fetch_add(3, Relaxed);
        m.refused[ConnRefusal::Silent.index()].fetch_add(4, Relaxed);
        m.reset_on_stop.fetch_add(2, Relaxed);
        let text = render(
            &[Snapshot {
                name: "web",
                m: &m,
                live_bytes: (10, 20),
                live_seconds: 1.5,
                starting: 1,
                ready: 2,
                live_link_failed: 3,
                open: 5,
            }],
            &DaemonSnapshot {
                descriptors: 40,
                descriptor_limit: 1024,
                connections: 5,
                starting: 1,
            },
        );
        assert!(text.contains("kilnd_cold_start_seconds_bucket{service=\"web\",le=\"0.001\"} 0\n"));
        assert!(text.contains("kilnd_cold_start_seconds_bucket{service=\"web\",le=\"0.002\"} 1\n"));
        assert!(text.contains("kilnd_cold_start_seconds_bucket{service=\"web\",le=\"0.005\"} 2\n"));
        assert!(text.contains("kilnd_cold_start_seconds_bucket{service=\"web\",le=\"10\"} 2\n"));
        assert!(text.contains("kilnd_cold_start_seconds_bucket{service=\"web\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("kilnd_cold_start_seconds_count{service=\"web\"} 3\n"));
        assert!(text.contains("kilnd_cold_starts_total{service=\"web\"} 3\n"));
        assert!(text.contains("kilnd_received_bytes_total{service=\"web\"} 10\n"));
        assert!(text.contains("kilnd_instance_seconds_total{service=\"web\"} 1.5\n"));
        assert!(text.contains("kilnd_instances{service=\"web\",state=\"ready\"} 2\n"));
        assert!(
            text.contains("kilnd_connections_refused_total{service=\"web\",reason=\"silent\"} 4\n")
        );
        assert!(text.contains(
            "kilnd_connections_reset_total{service=\"web\",cause=\"instance_stopped\"} 2\n"
        ));
        assert!(text.contains("kilnd_connections_reset_total{service=\"web\",cause=\"link\"} 3\n"));
        assert!(text.contains("kilnd_descriptor_limit 1024\n"));
        // Every sample line is NAME{labels} VALUE.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
