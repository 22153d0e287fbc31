use super::*;
use crate::config::{Lines, Tender};
use std::path::PathBuf;
use std::time::Duration;

const GIB: u64 = 1 << 30;

/// This build host: 20,000 descriptors, pid_max 32,768, 24 GiB.
fn host() -> Host {
    Host {
        descriptors: 20_000,
        tasks: 32_768,
        memory: 24 * GIB,
    }
}

fn service(name: &str, max_instances: u32, memory: u64, warm: bool) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        image: PathBuf::from("/x.kiln"),
        listen: "127.0.0.1:0".parse().unwrap(),
        guest_port: 80,
        tender: Tender::Spt,
        memory,
        idle_timeout: Duration::from_secs(30),
        max_instances,
        warm,
        env: Default::default(),
        args: Vec::new(),
        concurrency: 1,
        cpu_limit: None,
        ready_timeout: Duration::from_secs(10),
        max_connections: None,
        max_starting: 4,
        first_byte_timeout: Duration::from_secs(10),
        lines: Lines {
            name: 2,
            listen: 4,
            max_instances: 7,
            max_connections: 2,
        },
    }
}

fn config(services: Vec<ServiceSpec>) -> Config {
    Config {
        path: "services.toml".into(),
        daemon: DaemonSpec {
            max_starting: 64,
            ..DaemonSpec::default()
        },
        services,
    }
}

#[test]
fn the_issue_example_cannot_be_held() {
    // concurrency = 1, max_instances = 100000, memory = "1G".
    let e = check(&config(vec![service("a", 100_000, GIB, false)]), &host()).unwrap_err();
    assert_eq!(e.line, Some(7), "{e}");
    assert!(e.reason.contains("200000 descriptors"), "{e}");
    assert!(e.reason.contains("20000"), "{e}");
    // With descriptors and tasks to spare, memory still says no.
    let big = Host {
        descriptors: 1 << 30,
        tasks: 1 << 30,
        memory: 24 * GIB,
    };
    let e = check(&config(vec![service("a", 100_000, GIB, false)]), &big).unwrap_err();
    assert!(
        e.reason.contains("102600000 MiB") && e.reason.contains("24576 MiB"),
        "{e}"
    );
}

#[test]
fn tasks_are_checked_per_service() {
    let host = Host {
        descriptors: 1 << 20,
        tasks: 32_768,
        memory: 1 << 50,
    };
    let e = check(&config(vec![service("a", 20_000, 2 << 20, false)]), &host).unwrap_err();
    assert!(e.reason.contains("60000 tasks"), "{e}");
    assert!(check(&config(vec![service("a", 10_000, 2 << 20, false)]), &host).is_ok());
}

#[test]
fn sums_beyond_the_host_are_warnings_with_numbers() {
    // Each fits; all of them at their peak do not.
    let services = (0..3)
        .map(|i| service(&format!("s{i}"), 12, GIB, false))
        .collect();
    let w = check(&config(services), &host()).unwrap();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("36936 MiB") && w[0].contains("24576 MiB"),
        "{w:?}"
    );
    // The 5,000-instance density run: warm, 8 MiB each; fits in
    // descriptors and tasks, not if every guest used all its memory.
    let density = (0..5000)
        .map(|i| service(&format!("d{i}"), 1, 8 << 20, true))
        .collect();
    let w = check(&config(density), &host()).unwrap();
    assert!(w.iter().all(|w| !w.contains("tasks")), "{w:?}");
    assert!(w.iter().any(|w| w.contains("MiB")), "{w:?}");
}

#[test]
fn warm_services_beyond_the_descriptors_are_an_error() {
    let warm = (0..7000)
        .map(|i| service(&format!("w{i}"), 1, 2 << 20, true))
        .collect();
    let e = check(&config(warm), &host()).unwrap_err();
    assert!(e.reason.contains("warm services"), "{e}");
    assert_eq!(e.line, Some(2));
}

#[test]
fn connection_caps_beyond_the_descriptors_are_warnings() {
    let mut c = config(vec![service("a", 1, 2 << 20, false)]);
    c.daemon.max_connections = Some(50_000);
    c.services[0].max_connections = Some(30_000);
    let w = check(&c, &host()).unwrap();
    assert!(
        w.iter()
            .any(|w| w.contains("[daemon] max_connections = 50000") && w.contains("19935")),
        "{w:?}"
    );
    assert!(
        w.iter()
            .any(|w| w.contains("\"a\": max_connections = 30000")),
        "{w:?}"
    );
}

#[test]
fn limits_default_from_the_descriptor_limit() {
    let l = Limits::resolve(&DaemonSpec::default(), 400);
    assert_eq!(l.max_connections, 200);
    assert_eq!(l.max_instances, usize::MAX);
    let s = service("a", 1, 2 << 20, false);
    assert_eq!(l.service_connections(&s), 50);
    let mut own = s.clone();
    own.max_connections = Some(7);
    assert_eq!(l.service_connections(&own), 7);
}

fn usage(limit: u64) -> Arc<Usage> {
    let u = Usage::new(limit, u64::MAX);
    // Only what this test counts.
    u.base.store(10, Relaxed);
    u
}

fn limits(max_connections: usize, max_starting: usize) -> Limits {
    Limits {
        max_connections,
        max_instances: usize::MAX,
        max_starting,
    }
}

#[test]
fn connections_leave_room_for_instances_and_the_api() {
    let u = usage(100);
    let l = limits(1000, 64);
    let mut admitted = 0;
    while u.admit_connection(&l).is_ok() {
        admitted += 1;
    }
    assert_eq!(admitted, 100 - 10 - CONNECTION_RESERVE);
    assert_eq!(u.admit_connection(&l), Err(ConnRefusal::Descriptors));
    // Connections at their limit still leave room to start instances.
    let slot = u.admit_instance(&l).expect("an instance still starts");
    assert_eq!(u.starting(), 1);
    slot.started();
    assert_eq!(u.starting(), 0);
    drop(slot);
    assert_eq!(u.instances(), 0);
}

#[test]
fn connection_caps_are_exact() {
    let u = usage(1 << 20);
    let l = limits(3, 64);
    for _ in 0..3 {
        u.admit_connection(&l).unwrap();
    }
    assert_eq!(u.admit_connection(&l), Err(ConnRefusal::DaemonConnections));
    u.connection_closed();
    assert!(u.admit_connection(&l).is_ok());
    // Spliced connections count too.
    u.spliced(0, 2);
    assert_eq!(u.connections(), 5);
    u.spliced(2, 0);
    assert_eq!(u.connections(), 3);
}

#[test]
fn instances_stop_at_the_descriptor_reserve() {
    let u = usage(100);
    let l = limits(1000, 1000);
    let mut slots = Vec::new();
    loop {
        match u.admit_instance(&l) {
            Ok(s) => {
                s.started();
                slots.push(s);
            }
            Err(NoStart::Refused(why, msg)) => {
                assert_eq!(why, InstanceRefusal::Descriptors);
                assert!(msg.contains("of its 100 descriptors"), "{msg}");
                break;
            }
            Err(NoStart::Busy) => panic!("no start is pending"),
        }
    }
    // 10 base + 2 per instance + a spawn's 9 + the API's 16 <= 100.
    assert_eq!(slots.len(), (100 - 10 - SPAWN_FDS - API_RESERVE) / 2 + 1);
    assert!(u.fds() + API_RESERVE <= 100);
}

#[test]
fn starting_slots_are_capped_and_freed() {
    let u = usage(1 << 20);
    let l = limits(10, 2);
    let a = u.admit_instance(&l).unwrap();
    let _b = u.admit_instance(&l).unwrap();
    assert_eq!(u.admit_instance(&l).unwrap_err(), NoStart::Busy);
    a.started();
    let _c = u.admit_instance(&l).expect("a slot was freed");
    let capped = Limits {
        max_instances: 3,
        ..limits(10, 10)
    };
    assert!(matches!(
        u.admit_instance(&capped),
        Err(NoStart::Refused(InstanceRefusal::DaemonInstances, _))
    ));
}

#[test]
fn recount_sees_real_descriptors() {
    let u = Usage::new(1 << 20, u64::MAX);
    let files: Vec<std::fs::File> = (0..20)
        .map(|_| std::fs::File::open("/proc/self/stat").unwrap())
        .collect();
    u.base.store(0, Relaxed);
    assert_eq!(u.fds(), 0);
    u.recount();
    // The twenty files and the three standard streams at least.
    assert!(u.fds() >= 23, "{}", u.fds());
    drop(files);
}
