//! kilnd end to end: real kilnd, real `kiln run` instances of the
//! kilnd-probe image on every tender this host has, real TCP clients.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn first_request_starts_an_instance_and_later_ones_reuse_it() {
    for tender in tenders() {
        let k = Kilnd::start(
            "cold",
            &probe_service("web", tender, "idle_timeout = \"60s\""),
        );
        let v = k.service("web");
        assert_eq!(
            v["instances"].as_array().unwrap().len(),
            0,
            "nothing runs before a request"
        );

        let mut c = Client::connect(k.addr("web"));
        let body = pattern(10_000, 1);
        let a = c
            .request("/echo", &body)
            .expect("answer to the first request");
        assert_eq!(a.body, body, "{tender}: echoed body");
        // Same connection, then a new connection: the same instance answers.
        let b = c.request("/echo", b"again").unwrap();
        assert_eq!((b.boot, b.body.as_slice()), (a.boot, &b"again"[..]));
        let d = Client::connect(k.addr("web")).request("/", b"").unwrap();
        assert_eq!(
            d.boot, a.boot,
            "{tender}: a second connection reuses the instance"
        );

        let v = k.service("web");
        assert_eq!(v["cold_starts"], 1, "{v:#}");
        assert_eq!(v["requests"], 2, "{v:#}");
        let inst = &v["instances"][0];
        assert_eq!(inst["state"], "ready");
        assert_eq!(inst["tender"], tender);
        assert!(inst["ready_ms"].as_f64().unwrap() > 0.0, "{inst}");
        assert!(inst["rss_bytes"].as_u64().unwrap() > 0, "{inst}");
        assert!(inst["bytes_in"].as_u64().unwrap() >= 10_000, "{inst}");

        let (st, metrics) = k.call("GET", "/metrics");
        assert_eq!(st, 200);
        assert!(
            metrics.contains("kilnd_cold_starts_total{service=\"web\"} 1\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("kilnd_requests_total{service=\"web\"} 2\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("kilnd_cold_start_seconds_count{service=\"web\"} 1\n"),
            "{metrics}"
        );
    }
}

#[test]
fn connection_is_held_while_the_instance_boots_and_loses_nothing() {
    // The probe sleeps 400 ms before it listens and says READY: everything
    // below is sent while kilnd holds the connection.
    let k = Kilnd::start(
        "held",
        &probe_service("slow", "spt", "env = { DELAY_MS = \"400\" }"),
    );
    let mut c = Client::connect(k.addr("slow"));
    let bodies: Vec<Vec<u8>> = (0..3).map(|i| pattern(50_000 + i * 7, i as u8)).collect();
    for b in &bodies {
        c.send("/echo", b);
    }
    let v = k.wait_for("slow", "the instance", |v| {
        !v["instances"].as_array().unwrap().is_empty()
    });
    assert_eq!(
        v["instances"][0]["state"], "starting",
        "the requests must have been sent before READY: {v:#}"
    );
    for b in &bodies {
        let a = c.answer().expect("answer after the held start");
        assert_eq!(&a.body, b);
    }
}

#[test]
fn idle_instances_are_stopped_and_started_again_on_demand() {
    for tender in tenders() {
        let k = Kilnd::start(
            "idle",
            &probe_service("idle", tender, "idle_timeout = \"300ms\""),
        );
        let first = Client::connect(k.addr("idle")).request("/", b"x").unwrap();
        let pid = k.service("idle")["instances"][0]["pid"].as_u64().unwrap();
        let v = k.wait_for("idle", "the idle stop", |v| {
            v["instances"].as_array().unwrap().is_empty()
        });
        let last = &v["recent_exits"][0];
        assert_eq!(last["requested"], true, "{v:#}");
        assert!(last["reason"].as_str().unwrap().contains("idle"), "{v:#}");
        assert!(
            gone(pid),
            "{tender}: tender pid {pid} still runs after the idle stop"
        );

        let second = Client::connect(k.addr("idle")).request("/", b"y").unwrap();
        assert_ne!(second.boot, first.boot, "a new instance answers");
        assert_eq!(k.service("idle")["cold_starts"], 2);
    }
}

#[test]
fn crashed_instance_is_reported_and_restarted_on_the_next_request() {
    for tender in tenders() {
        let k = Kilnd::start("crash", &probe_service("fragile", tender, ""));
        let first = Client::connect(k.addr("fragile"))
            .request("/", b"")
            .unwrap();
        let mut c = Client::connect(k.addr("fragile"));
        assert!(
            c.request("/crash", b"").is_none(),
            "a crash gives no answer"
        );
        let v = k.wait_for("fragile", "the crash", |v| {
            v["instances"].as_array().unwrap().is_empty()
        });
        let last = &v["recent_exits"][0];
        assert_eq!(last["crashed"], true, "{v:#}");
        assert_eq!(last["code"], 134, "{v:#}");
        assert_eq!(v["crashes"], 1);

        // `kiln ps` shows it.
        let ps = Command::new(kiln_bin())
            .args(["ps", "--api"])
            .arg(format!("unix:{}", k.api.display()))
            .output()
            .unwrap();
        let table = String::from_utf8_lossy(&ps.stdout);
        assert!(ps.status.success());
        assert!(
            table.contains("fragile") && table.contains("status 134"),
            "{table}"
        );

        let again = Client::connect(k.addr("fragile"))
            .request("/", b"z")
            .unwrap();
        assert_ne!(again.boot, first.boot);
        assert_eq!(again.body, b"z");
        assert!(k.log().contains("aborted"), "{}", k.log());
    }
}

#[test]
fn cpu_limit_stops_a_spinning_instance_and_others_go_on() {
    for tender in tenders() {
        let k = Kilnd::start(
            "cpu",
            &probe_service(
                "spin",
                tender,
                "cpu_limit = \"1s\"\nmax_instances = 2\nconcurrency = 1",
            ),
        );
        let mut spinner = Client::connect(k.addr("spin"));
        spinner.send("/spin", b"");
        // While one instance spins, a second one serves.
        let other = Client::connect(k.addr("spin")).request("/", b"ok").unwrap();
        assert_eq!(other.body, b"ok");
        assert!(
            spinner.answer().is_none(),
            "the spinning instance never answers"
        );
        let v = k.wait_for("spin", "the CPU limit", |v| {
            v["recent_exits"].as_array().is_some_and(|e| !e.is_empty())
        });
        let last = &v["recent_exits"][0];
        assert_eq!(last["signal"], libc::SIGXCPU, "{tender}: {v:#}");
        assert!(
            last["reason"].as_str().unwrap().contains("CPU time limit"),
            "{v:#}"
        );
        assert!(last["lived_ms"].as_u64().unwrap() >= 1000, "{v:#}");
    }
}

#[test]
fn max_instances_is_respected_under_concurrent_load() {
    let k = Kilnd::start(
        "max",
        &probe_service("busy", "spt", "max_instances = 2\nconcurrency = 1"),
    );
    let addr = k.addr("busy");
    // Twelve clients at once; each keeps its connection open.
    let clients: Vec<_> = (0..12)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let a = c.request("/", &[i as u8; 100]).expect("answer");
                assert_eq!(a.body, vec![i as u8; 100]);
                (c, a.boot)
            })
        })
        .collect();
    let held: Vec<_> = clients.into_iter().map(|t| t.join().unwrap()).collect();
    let v = k.service("busy");
    let running = v["instances"].as_array().unwrap().len();
    assert_eq!(v["starts"], 2, "{v:#}");
    assert_eq!(running, 2, "{v:#}");
    let mut boots: Vec<u64> = held.iter().map(|(_, b)| *b).collect();
    boots.sort();
    boots.dedup();
    assert_eq!(boots.len(), 2, "both instances served");
    let active: u64 = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["connections_active"].as_u64().unwrap())
        .sum();
    assert_eq!(active, 12, "{v:#}");
}

#[test]
fn bad_configurations_are_rejected_with_line_and_reason() {
    let dir = scratch("badcfg");
    let good = probe_service("ok", "spt", "");
    let cases = [
        (
            "[[service]]\nname = \"a\"\nimage = \n",
            3,
            "services.toml:3",
        ),
        (
            &good.replace("kilnd-probe.kiln", "missing.kiln") as &str,
            3,
            "no such file",
        ),
        (&good.replace("memory", "memroy"), 7, "memroy"),
    ];
    for (text, line, needle) in cases {
        let (code, err) = check(&dir.join("services.toml"), text);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains(&format!("services.toml:{line}:")), "{err}");
        assert!(err.contains(needle), "{err}");
    }

    // A port that is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let text = good.replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let path = dir.join("services.toml");
    std::fs::write(&path, &text).unwrap();
    let out = Command::new(kilnd_bin())
        .arg("--config")
        .arg(&path)
        .arg("--api")
        .arg(format!("unix:{}", dir.join("api.sock").display()))
        .arg("--kiln")
        .arg(kiln_bin())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("services.toml:4:") && err.contains("in use"),
        "{err}"
    );
    assert!(
        !dir.join("api.sock").exists(),
        "the API socket is removed again"
    );
}

#[test]
fn a_failed_reload_keeps_the_running_configuration() {
    let k = Kilnd::start("reload", &probe_service("one", "spt", ""));
    let a = Client::connect(k.addr("one")).request("/", b"1").unwrap();

    std::fs::write(&k.config, "[[service]]\nname = \"one\"\nbogus = 1\n").unwrap();
    let (st, body) = k.call("POST", "/v1/reload");
    assert_eq!(st, 400, "{body}");
    assert!(
        body.contains("services.toml:3") && body.contains("bogus"),
        "{body}"
    );
    let b = Client::connect(k.addr("one")).request("/", b"2").unwrap();
    assert_eq!(
        a.boot, b.boot,
        "the old service and its instance still serve"
    );

    // A good reload adds a service and keeps the unchanged one running.
    let both = format!(
        "{}{}",
        probe_service("one", "spt", ""),
        probe_service("two", "spt", "")
    );
    std::fs::write(&k.config, both).unwrap();
    // Through SIGHUP this time.
    // SAFETY: kill on our own child.
    unsafe { libc::kill(k.child.id() as i32, libc::SIGHUP) };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while k.services().as_array().unwrap().len() < 2 {
        assert!(std::time::Instant::now() < deadline, "{}", k.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let c = Client::connect(k.addr("one")).request("/", b"3").unwrap();
    assert_eq!(c.boot, a.boot, "an unchanged service keeps its instance");
    assert!(Client::connect(k.addr("two")).request("/", b"4").is_some());
}

#[test]
fn stopping_kilnd_leaves_nothing_behind() {
    let dir = scratch("restart");
    let config = dir.join("services.toml");
    let port = free_port();
    std::fs::write(
        &config,
        probe_service("keep", "spt", "warm = true")
            .replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
    )
    .unwrap();

    // SIGTERM: instances stopped, socket file removed, port free.
    let mut k = Kilnd::start_in(dir.clone(), config.clone());
    let v = k.wait_for("keep", "the warm instance", |v| {
        v["instances"][0]["state"] == "ready"
    });
    let pid = v["instances"][0]["pid"].as_u64().unwrap();
    assert!(k.terminate().success(), "{}", k.log());
    assert!(gone(pid), "tender {pid} outlived kilnd");
    assert!(!k.api.exists(), "API socket left behind");
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("port free after kilnd stopped");
    drop(k);

    // SIGKILL: the tender dies with kilnd; a new kilnd takes over the
    // stale socket file and the port.
    let mut k = Kilnd::start_in(dir.clone(), config.clone());
    let v = k.wait_for("keep", "the warm instance", |v| {
        v["instances"][0]["state"] == "ready"
    });
    let pid = v["instances"][0]["pid"].as_u64().unwrap();
    k.child.kill().unwrap();
    k.child.wait().unwrap();
    assert!(gone(pid), "tender {pid} outlived a killed kilnd");
    drop(k);
    let k = Kilnd::start_in(dir, config);
    let a = Client::connect(k.addr("keep"))
        .request("/", b"back")
        .unwrap();
    assert_eq!(a.body, b"back");
}

#[test]
fn kiln_cli_commands_drive_kilnd() {
    let k = Kilnd::start("cli", &probe_service("cli", "spt", ""));
    let api = format!("unix:{}", k.api.display());
    let kiln = |args: &[&str]| {
        let out = Command::new(kiln_bin())
            .args(args)
            .args(["--api", &api])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = kiln(&["start", "cli"]);
    assert!(ok && out.contains("ready after"), "{out}");
    let (ok, out) = kiln(&["ps"]);
    assert!(ok && out.contains("cli") && out.contains("ready"), "{out}");
    let (ok, out) = kiln(&["logs", "cli"]);
    assert!(ok && out.contains("probe: listening"), "{out}");
    let (ok, out) = kiln(&["stop", "cli"]);
    assert!(ok && out.contains("stopped 1"), "{out}");
    k.wait_for("cli", "the stop", |v| {
        v["instances"].as_array().unwrap().is_empty()
    });
    let (ok, out) = kiln(&["logs", "nope"]);
    assert!(!ok && out.contains("no service"), "{out}");
    let (ok, out) = kiln(&["reload"]);
    assert!(ok, "{out}");
    let (ok, out) = kiln(&["down"]);
    assert!(ok, "{out}");
    let mut k = k;
    assert!(wait_child(&mut k.child, Duration::from_secs(20)).is_some_and(|s| s.success()));
    let (ok, out) = kiln(&["ps"]);
    assert!(!ok && out.contains("cannot reach kilnd"), "{out}");
}

#[test]
fn the_example_services_file_is_valid() {
    image("examples/http");
    image("examples/echo");
    let out = Command::new(kilnd_bin())
        .arg("--check")
        .arg("--config")
        .arg(root().join("examples/services.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 services"));
}

#[test]
fn a_reload_lets_replaced_instances_finish_their_connections() {
    let k = Kilnd::start("drain", &probe_service("svc", "spt", ""));
    let addr = k.addr("svc");
    let mut held = Client::connect(addr);
    let old = held
        .request("/", b"before")
        .unwrap_or_else(|| panic!("the first connection got no answer:\n{}", k.log()));

    // Change the service (new environment) but keep its address.
    let changed = std::fs::read_to_string(&k.config)
        .unwrap()
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{addr}\""))
        + "env = { CHANGED = \"yes\" }\n";
    std::fs::write(&k.config, changed).unwrap();
    let (st, body) = k.call("POST", "/v1/reload");
    assert_eq!(st, 200, "{body}");

    // New connections reach a new instance...
    let new = Client::connect(addr)
        .request("/", b"new")
        .unwrap_or_else(|| panic!("the new connection got no answer:\n{}", k.log()));
    assert_ne!(new.boot, old.boot);
    // ...while the open one is still served by the old instance.
    let again = held.request("/", b"still here").unwrap_or_else(|| {
        panic!(
            "the held connection got no answer:\n{}\n{}\n{}",
            k.log(),
            k.call("GET", "/v1/services").1,
            k.call("GET", "/metrics").1
        )
    });
    assert_eq!(
        (again.boot, again.body.as_slice()),
        (old.boot, &b"still here"[..])
    );
    drop(held);
    // Once its last connection is gone the old instance is stopped.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while k.log().matches("configuration reloaded").count() == 0 {
        assert!(std::time::Instant::now() < deadline, "{}", k.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}
