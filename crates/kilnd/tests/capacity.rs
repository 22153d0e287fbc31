//! kilnd under resource pressure: connection caps, silent clients,
//! descriptor exhaustion, resets caused by stops, inherited descriptors,
//! and `--check` against the host. A real kilnd with real instances of the
//! kilnd-probe image (spt: these are about kilnd, not the tenders).

mod common;

use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

/// Whether the server closed (or reset) a connection within 20 s without
/// sending anything.
fn closed_unanswered(mut s: &TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 64];
    loop {
        return match s.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            // Not restarted after a stop or a freeze (signal(7)).
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
            ),
        };
    }
}

fn refused(v: &Value, what: &str, reason: &str) -> u64 {
    v["refused"][what][reason].as_u64().unwrap_or(0)
}

/// The case: 420 idle connections to one service under a
/// 400-descriptor limit made another service's cold start time out.
#[test]
fn idle_connections_to_one_service_do_not_stop_another_services_cold_start() {
    // The hog's instance never gets ready during the test, so kilnd holds
    // every connection to it (each has sent part of a request).
    let config = probe_service(
        "hog",
        "spt",
        "concurrency = 10000\nenv = { DELAY_MS = \"120000\" }\nready_timeout = \"120s\"",
    ) + &probe_service("other", "spt", "");
    let k = Kilnd::start_limited("hog", &config, 400);
    let hog = k.addr("hog");
    let mut held = Vec::new();
    for _ in 0..420 {
        // A refused connection can be reset before connect() returns.
        let mut s = match TcpStream::connect(hog) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => continue,
            Err(e) => panic!("connect to the hog: {e}"),
        };
        // Refused ones may be reset before this is written.
        let _ = s.write_all(b"GET / HTTP/1.1\r\n");
        held.push(s);
    }
    // kilnd takes its share and refuses the rest, counting them.
    let v = k.wait_for("hog", "the refusals", |v| {
        refused(v, "connections", "service_max_connections") + v["requests"].as_u64().unwrap()
            == 420
    });
    let cap = v["requests"].as_u64().unwrap();
    assert_eq!(cap, 50, "a quarter of half of 400 descriptors: {v:#}");
    assert_eq!(v["starts"], 1, "one instance for all of them: {v:#}");
    assert_eq!(v["last_refusal"]["what"], "connection", "{v:#}");
    // Another service still starts cold and answers.
    let a = Client::connect(k.addr("other"))
        .request("/", b"still here")
        .unwrap_or_else(|| panic!("the other service did not answer:\n{}", k.log()));
    assert_eq!(a.body, b"still here");
    assert_eq!(
        k.metric(
            "kilnd_connections_refused_total{service=\"hog\",reason=\"service_max_connections\"}"
        ),
        370.0
    );
    drop(held);
}

/// `concurrency = 1` and many silent connects: only the first starts an
/// instance; the others wait for a first byte and are closed after
/// `first_byte_timeout`, counted as silent.
#[test]
fn silent_connects_start_one_instance_and_are_closed_after_first_byte_timeout() {
    let k = Kilnd::start(
        "silent",
        &probe_service(
            "svc",
            "spt",
            "concurrency = 1\nmax_instances = 50\nfirst_byte_timeout = \"1s\"",
        ),
    );
    let addr = k.addr("svc");
    let silent: Vec<TcpStream> = (0..30).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // The first one is spliced to the instance it started (unless that
    // took longer than a second to boot); the others are closed.
    let v = k.wait_for("svc", "the silent refusals", |v| {
        refused(v, "connections", "silent") >= 29
    });
    assert_eq!(v["starts"], 1, "silent connects started instances: {v:#}");
    let closed = silent.iter().filter(|s| closed_unanswered(s)).count();
    assert!(closed >= 29, "{closed} of 30 silent clients were closed");
    assert_eq!(
        k.metric("kilnd_connections_refused_total{service=\"svc\",reason=\"silent\"}"),
        refused(&k.service("svc"), "connections", "silent") as f64
    );
    // A client that talks still gets an instance of its own.
    let a = Client::connect(addr).request("/", b"hello").unwrap();
    assert_eq!(a.body, b"hello");
}

/// A connection held while its instance boots is closed when its client
/// has sent nothing by `first_byte_timeout`; the instance still starts.
#[test]
fn a_silent_client_held_while_its_instance_boots_is_closed() {
    let k = Kilnd::start(
        "boot",
        &probe_service(
            "slow",
            "spt",
            "env = { DELAY_MS = \"3000\" }\nfirst_byte_timeout = \"300ms\"",
        ),
    );
    let s = TcpStream::connect(k.addr("slow")).unwrap();
    assert!(closed_unanswered(&s), "the silent client was not closed");
    let v = k.service("slow");
    assert_eq!(refused(&v, "connections", "silent"), 1, "{v:#}");
    assert!(
        v["last_refusal"]["message"]
            .as_str()
            .unwrap()
            .contains("while instance"),
        "{v:#}"
    );
    // The instance it started comes up and serves the next client.
    let a = Client::connect(k.addr("slow"))
        .request("/", b"x")
        .unwrap_or_else(|| {
            panic!(
                "the next client got no answer:\n{}\n{:#}",
                k.log(),
                k.service("slow")
            )
        });
    assert_eq!(a.body, b"x");
    assert_eq!(k.service("slow")["starts"], 1);
}

#[test]
fn connections_beyond_the_caps_are_refused_and_counted() {
    let config = format!(
        "[daemon]\nmax_connections = 7\n{}{}",
        probe_service("a", "spt", "max_connections = 5"),
        probe_service("b", "spt", "max_connections = 5")
    );
    let k = Kilnd::start("caps", &config);
    let mut open = Vec::new();
    let mut answered = 0;
    let mut refused_a = 0;
    for i in 0..8u8 {
        let mut c = Client::connect(k.addr("a"));
        c.send("/", &[i; 10]);
        match c.answer() {
            Some(a) => {
                assert_eq!(a.body, [i; 10]);
                answered += 1;
                open.push(c);
                // kilnd learns from the link that it holds the connection.
                k.wait_for("a", "the open connection", |v| {
                    v["connections_open"] == answered
                });
            }
            None => refused_a += 1,
        }
    }
    assert_eq!((answered, refused_a), (5, 3), "{}", k.log());
    // Two more fit under the daemon-wide cap of 7, on another service.
    for n in 1..=2 {
        let mut c = Client::connect(k.addr("b"));
        assert!(c.request("/", b"b").is_some());
        open.push(c);
        k.wait_for("b", "the open connection", |v| v["connections_open"] == n);
    }
    let mut c = Client::connect(k.addr("b"));
    assert!(c.request("/", b"b").is_none(), "the 8th connection in all");
    let a = k.service("a");
    let b = k.service("b");
    assert_eq!(refused(&a, "connections", "service_max_connections"), 3);
    assert_eq!(refused(&b, "connections", "daemon_max_connections"), 1);
    assert_eq!(a["connections_open"], 5, "{a:#}");
    assert_eq!(
        k.metric(
            "kilnd_connections_refused_total{service=\"b\",reason=\"daemon_max_connections\"}"
        ),
        1.0
    );
    assert_eq!(k.metric("kilnd_connections"), 7.0);
    // Closing them frees their places.
    drop(open);
    k.wait_for("a", "the connections to close", |v| {
        v["connections_open"] == 0
    });
    assert!(Client::connect(k.addr("a")).request("/", b"a").is_some());
}

/// Descriptors run out: the API and the listeners keep working, and a new
/// instance is refused with the reason in the API, `kiln ps` and the
/// metrics.
#[test]
fn at_its_descriptor_limit_kilnd_refuses_new_instances_and_keeps_its_api() {
    // 160 descriptors; the hog's held connections take what connections
    // may (no cap of their own gets in the way).
    let config = "[daemon]\nmax_connections = 1000\n".to_string()
        + &probe_service(
            "hog",
            "spt",
            "concurrency = 10000\nmax_connections = 1000\nenv = { DELAY_MS = \"120000\" }\nready_timeout = \"120s\"",
        )
        + &probe_service("many", "spt", "max_instances = 40");
    let k = Kilnd::start_limited("fdlimit", &config, 160);
    let hog = k.addr("hog");
    let mut held = Vec::new();
    for _ in 0..160 {
        let mut s = TcpStream::connect(hog).unwrap();
        let _ = s.write_all(b"GET / HTTP/1.1\r\n");
        held.push(s);
    }
    let v = k.wait_for("hog", "the descriptor refusals", |v| {
        refused(v, "connections", "descriptors") + v["requests"].as_u64().unwrap() == 160
    });
    assert!(refused(&v, "connections", "descriptors") > 0, "{v:#}");
    // Start instances by hand until kilnd says no.
    let mut started = 0;
    let refusal = loop {
        let (st, body) = k.call("POST", "/v1/services/many/start");
        match st {
            200 => started += 1,
            503 => break body,
            _ => panic!("{st}: {body}\n{}", k.log()),
        }
        assert!(started < 40, "never refused:\n{}", k.log());
    };
    assert!(started > 0, "{refusal}");
    assert!(refusal.contains("descriptors"), "{refusal}");
    let v = k.service("many");
    assert_eq!(refused(&v, "instances", "descriptors"), 1, "{v:#}");
    assert_eq!(v["last_refusal"]["what"], "instance");
    assert_eq!(v["last_refusal"]["reason"], "descriptors");
    assert_eq!(
        k.metric("kilnd_instance_refusals_total{service=\"many\",reason=\"descriptors\"}"),
        1.0
    );
    let ps = Command::new(kiln_bin())
        .args(["ps", "--api"])
        .arg(format!("unix:{}", k.api.display()))
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&ps.stdout);
    assert!(
        table.contains("many: new instance refused") && table.contains("descriptors"),
        "{table}"
    );
    // Once the hog's held clients are gone (stopping its instance, which
    // never got ready, ends them), the running instances serve: the
    // refused start cost them nothing.
    let (st, body) = k.call("POST", "/v1/services/hog/stop");
    assert_eq!(st, 200, "{body}");
    k.wait_for("hog", "its clients to go", |v| v["connections_open"] == 0);
    drop(held);
    let a = Client::connect(k.addr("many")).request("/", b"m").unwrap();
    assert_eq!(a.body, b"m");
    assert_eq!(k.service("many")["starts"], started);
}

/// The kernel itself refuses descriptors (EMFILE): API connections are not
/// capped, so many idle ones exhaust them. The API's and the services'
/// accept loops say so once, wait and go on; once descriptors are back,
/// both answer.
#[test]
fn accept_loops_survive_emfile() {
    let k = Kilnd::start_limited("emfile", &probe_service("svc", "spt", ""), 96);
    let svc = k.addr("svc");
    let mut idle = Vec::new();
    for _ in 0..150 {
        idle.push(std::os::unix::net::UnixStream::connect(&k.api).unwrap());
    }
    let wait_log = |what: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !k.log().contains(what) {
            assert!(std::time::Instant::now() < deadline, "{what}:\n{}", k.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_log("API: accept failed");
    // A client of the service meets the same limit (it waits in the
    // backlog, or is refused once accepted if descriptors are still short).
    let waiting = TcpStream::connect(svc).unwrap();
    wait_log("svc: accept failed");
    std::thread::sleep(Duration::from_millis(500));
    drop(idle);
    drop(waiting);
    let (st, body) = k.call("GET", "/v1/status");
    assert_eq!(st, 200, "{body}");
    wait_log("API: accepting again");
    let a = Client::connect(svc)
        .request("/", b"after")
        .unwrap_or_else(|| panic!("no answer once descriptors were back:\n{}", k.log()));
    assert_eq!(a.body, b"after");
    // Said at the first accept that works again. (Not earlier: with a
    // descriptor short, Linux fails accept4 with EMFILE even when no
    // connection waits, so the loop may fail on an empty backlog and
    // find out it can accept only when the next client comes.)
    wait_log("svc: accepting again");
    // Said once per episode, not once per failed accept.
    let failed = k.metric("kilnd_accept_errors_total{service=\"svc\"}") as usize;
    let said = k.log().matches("svc: accept failed").count();
    assert!(failed >= 5, "the accept loop retried only {failed} times");
    assert!(said < failed, "{said} lines for {failed} failed accepts");
}

/// A client connection open when kilnd stops its instance is reset, and
/// the reset is counted (before, only crashes' resets reached the link's
/// own counter, and no metric showed either).
#[test]
fn resets_caused_by_stopping_an_instance_are_counted() {
    let k = Kilnd::start("resets", &probe_service("svc", "spt", ""));
    let mut c = Client::connect(k.addr("svc"));
    assert!(c.request("/", b"1").is_some());
    let (st, body) = k.call("POST", "/v1/services/svc/stop");
    assert_eq!(st, 200, "{body}");
    assert!(c.answer().is_none(), "the connection was cut");
    let v = k.wait_for("svc", "the stop", |v| {
        v["instances"].as_array().unwrap().is_empty()
    });
    assert_eq!(v["connections_reset_on_stop"], 1, "{v:#}");
    let last = &v["recent_exits"][0];
    assert!(
        last["reason"]
            .as_str()
            .unwrap()
            .contains("1 open connection reset"),
        "{v:#}"
    );
    assert_eq!(
        k.metric("kilnd_connections_reset_total{service=\"svc\",cause=\"instance_stopped\"}"),
        1.0
    );
    // An idle stop with nothing open resets nothing.
    let k = Kilnd::start(
        "idlereset",
        &probe_service("idle", "spt", "idle_timeout = \"200ms\""),
    );
    assert!(Client::connect(k.addr("idle")).request("/", b"1").is_some());
    let v = k.wait_for("idle", "the idle stop", |v| {
        v["recent_exits"].as_array().is_some_and(|e| !e.is_empty())
    });
    assert_eq!(v["connections_reset_on_stop"], 0, "{v:#}");
}

/// A descriptor kilnd inherited without close-on-exec does not reach its
/// tenders.
#[test]
fn inherited_descriptors_do_not_reach_tenders() {
    let dir = scratch("inherit");
    let marker = dir.join("inherited-marker");
    let file = std::fs::File::create(&marker).unwrap();
    let config = dir.join("services.toml");
    std::fs::write(&config, probe_service("warm", "spt", "warm = true")).unwrap();
    let k = Kilnd::start_with(dir, config, |cmd| {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let fd = file.as_raw_fd();
        // SAFETY: dup2 is async-signal-safe; descriptor 50 of the child
        // becomes the marker file, without close-on-exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd, 50) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let leaks = |pid: u64| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .any(|target| target == marker)
    };
    assert!(
        leaks(k.child.id() as u64),
        "the test must give kilnd the marker"
    );
    let v = k.wait_for("warm", "the warm instance", |v| {
        v["instances"][0]["state"] == "ready"
    });
    let pid = v["instances"][0]["pid"].as_u64().unwrap();
    assert!(!leaks(pid), "tender {pid} inherited kilnd's descriptor 50");
}

#[test]
fn check_refuses_what_the_host_cannot_hold_and_warns_with_numbers() {
    let dir = scratch("check");
    let path = dir.join("services.toml");
    let run = |text: &str| check(&path, text);
    // The file.
    let (code, err) = run(
        &probe_service("big", "spt", "concurrency = 1\nmax_instances = 100000")
            .replace("\"16M\"", "\"1G\""),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("services.toml:9:"), "{err}");
    assert!(err.contains("100000 instances"), "{err}");

    // Each service fits the host's memory, both at their peak do not.
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib = |key: &str| -> u64 {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let host_mib = (kib("MemTotal:") + kib("SwapTotal:")) / 1024;
    let n = host_mib * 6 / 10 / 1026 + 1;
    let each = format!("max_instances = {n}");
    let text = probe_service("one", "spt", &each) + &probe_service("two", "spt", &each);
    let (code, err) = run(&text.replace("\"16M\"", "\"1G\""));
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("warning") && err.contains(&format!("{} MiB of memory and swap", host_mib)),
        "{err}"
    );

    // One port, one service: a wildcard overlaps a specific address.
    let port = free_port();
    let text = probe_service("a", "spt", "").replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
        + &probe_service("b", "spt", "").replace("127.0.0.1:0", &format!("0.0.0.0:{port}"));
    let (code, err) = run(&text);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("services.toml:12:") && err.contains("overlaps"),
        "{err}"
    );
}
