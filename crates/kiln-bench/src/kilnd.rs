//! `kiln-bench kilnd`: kilnd's figures, each next to a baseline from the
//! same run.
//!
//! * **first request**: connect → first response byte for a cold service
//!   (no instance running: kilnd starts one and holds the connection), next
//!   to a warm request on the same instance right after; per tender.
//! * **spawn rate**: a burst of one request to each of many cold services
//!   at once; instances started (and answered) per second, next to the rate
//!   at which this host forks and reaps a native static hello with the same
//!   parallelism.
//! * **density**: many warm idle instances of examples/http; memory per
//!   instance from the tenders' RSS and PSS and from the host's
//!   MemAvailable (which also sees kernel memory: page tables, KVM, socket
//!   buffers), kilnd's own growth and the descriptors it holds per
//!   instance; a sample of instances is asked for a page to show they are
//!   real.
//!
//! No kilnd outlives a run: each is stopped when its [`Daemon`] is dropped
//! (every return, error or panic), and gets SIGTERM from the kernel if
//! kiln-bench itself dies (Ctrl-C, a signal), which stops its instances.
//!
//! Usage: `kiln-bench kilnd [--kilnd PATH] [--kiln PATH] [--image PATH]
//! [--native PATH] [--runs N] [--burst N] [--density N] [--tender T]...
//! [--only first|burst|density]`

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Opts {
    kilnd: PathBuf,
    kiln: PathBuf,
    image: PathBuf,
    native: PathBuf,
    runs: usize,
    burst: usize,
    density: usize,
    tenders: Vec<String>,
    only: Option<String>,
}

fn parse(args: Vec<String>) -> Result<Opts, String> {
    let rel = "target/x86_64-unknown-linux-gnu/release";
    let mut o = Opts {
        kilnd: format!("{rel}/kilnd").into(),
        kiln: format!("{rel}/kiln").into(),
        image: "target/kiln/http.kiln".into(),
        native: "target/bench/hello-native".into(),
        runs: 200,
        burst: 200,
        density: 2000,
        tenders: Vec::new(),
        only: None,
    };
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| {
            v.parse::<usize>()
                .map_err(|_| format!("{flag} takes a number"))
        };
        match flag.as_str() {
            "--kilnd" => o.kilnd = value()?.into(),
            "--kiln" => o.kiln = value()?.into(),
            "--image" => o.image = value()?.into(),
            "--native" => o.native = value()?.into(),
            "--runs" => o.runs = num(value()?)?,
            "--burst" => o.burst = num(value()?)?,
            "--density" => o.density = num(value()?)?,
            "--tender" => o.tenders.push(value()?),
            "--only" => o.only = Some(value()?),
            "-h" | "--help" => {
                println!("usage: kiln-bench kilnd [--kilnd PATH] [--kiln PATH] [--image PATH] [--native PATH] [--runs N] [--burst N] [--density N] [--tender spt|hvt]... [--only first|burst|density]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    for p in [&mut o.kilnd, &mut o.kiln, &mut o.image, &mut o.native] {
        *p = p
            .canonicalize()
            .map_err(|_| format!("{} does not exist (bench/run kilnd builds it)", p.display()))?;
    }
    if o.tenders.is_empty() {
        o.tenders.push("spt".into());
        if std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
        {
            o.tenders.push("hvt".into());
        } else {
            eprintln!("kiln-bench: SKIPPING hvt: /dev/kvm cannot be opened here");
        }
    }
    Ok(o)
}

/// One service: listen address, instance count, pids of ready instances.
struct Svc(SocketAddr, usize, Vec<u32>);

/// One part of the benchmark.
type Step = fn(&Opts) -> Result<(), String>;

/// A kilnd running a generated configuration; stopped when dropped.
struct Daemon {
    child: Child,
    api: PathBuf,
    dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM: kilnd stops its instances and exits; SIGKILL if it does
        // not within a minute (its tenders die with it then).
        // SAFETY: kill on our own child, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while matches!(self.child.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Daemon {
    fn start(o: &Opts, tag: &str, services: &str) -> Result<Daemon, String> {
        let dir =
            std::env::temp_dir().join(format!("kiln-bench-kilnd-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let config = dir.join("services.toml");
        std::fs::write(&config, services).map_err(|e| e.to_string())?;
        let api = dir.join("api.sock");
        let mut cmd = Command::new(&o.kilnd);
        {
            use std::os::unix::process::CommandExt;
            let parent = std::process::id();
            // SAFETY: prctl and getppid are async-signal-safe and touch
            // only the child.
            unsafe {
                cmd.pre_exec(move || {
                    // kiln-bench dies (even by SIGKILL): kilnd is told to
                    // stop. Spawned from the main thread, which lives as
                    // long as the process.
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if libc::getppid() as u32 != parent {
                        libc::_exit(1);
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .arg("--config")
            .arg(&config)
            .arg("--api")
            .arg(format!("unix:{}", api.display()))
            .arg("--kiln")
            .arg(&o.kiln)
            .arg("--quiet")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{}: {e}", o.kilnd.display()))?;
        let err = child.stderr.take().ok_or("no stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.starts_with("kilnd: ready") {
                    let _ = tx.send(Ok(()));
                } else if !line.starts_with("kilnd: ") || line.contains("crash") {
                    eprintln!("  kilnd> {line}");
                } else {
                    let _ = tx.send(Err(line));
                }
            }
        });
        // From here on, dropping it stops it.
        let d = Daemon { child, api, dir };
        let mut said = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(300)) {
                Ok(Ok(())) => break,
                Ok(Err(line)) => said.push(line),
                Err(_) => return Err(format!("kilnd did not start: {}", said.join(" / "))),
            }
        }
        Ok(d)
    }

    fn call(&self, method: &str, path: &str) -> Result<String, String> {
        let mut s =
            std::os::unix::net::UnixStream::connect(&self.api).map_err(|e| e.to_string())?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: k\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut raw = String::new();
        s.read_to_string(&mut raw).map_err(|e| e.to_string())?;
        raw.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .ok_or_else(|| "bad API answer".into())
    }

    /// Every service, as kilnd reports it.
    fn services(&self) -> Result<Vec<Svc>, String> {
        // A light parse of the JSON: enough for the fields we need.
        let body = self.call("GET", "/v1/services")?;
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                let pids: Vec<u32> = s["instances"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|i| i["state"] == "ready")
                    .filter_map(|i| i["pid"].as_u64().map(|p| p as u32))
                    .collect();
                Svc(
                    s["listen"]
                        .as_str()
                        .unwrap_or("0.0.0.0:0")
                        .parse()
                        .unwrap_or_else(|_| "0.0.0.0:0".parse().unwrap()),
                    s["instances"].as_array().map_or(0, |a| a.len()),
                    pids,
                )
            })
            .collect())
    }

    fn stop(self) {
        drop(self);
    }

    /// Why kilnd refused instances lately, if it did (one example).
    fn refusal(&self) -> Option<String> {
        let body = self.call("GET", "/v1/services").ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v.as_array()?
            .iter()
            .filter(|s| s["last_refusal"]["what"] == "instance")
            .find_map(|s| {
                Some(format!(
                    "{}: {}",
                    s["name"].as_str()?,
                    s["last_refusal"]["message"].as_str()?
                ))
            })
    }
}

fn service(name: &str, image: &Path, tender: &str, extra: &str) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nimage = \"{}\"\nlisten = \"127.0.0.1:0\"\nguest_port = 80\ntender = \"{tender}\"\nmemory = \"8M\"\n{extra}\n",
        image.display()
    )
}

/// Connect, send GET /, time to the first response byte; then read the
/// whole (Connection: close) answer and check it is a 200.
fn first_byte(addr: SocketAddr) -> Result<Duration, String> {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut first = [0u8; 1];
    s.read_exact(&mut first)
        .map_err(|e| format!("no answer: {e}"))?;
    let t = t0.elapsed();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    if first[0] != b'H' || !rest.starts_with(b"TTP/1.1 200") {
        return Err("not a 200".into());
    }
    Ok(t)
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn first_request(o: &Opts) -> Result<(), String> {
    println!(
        "## First request: connect -> first response byte ({} runs per tender)\n",
        o.runs
    );
    println!("| tender | cold median | cold p99 | warm median | warm p99 | cold/warm | instance spawn -> READY (median) |");
    println!("|---|---|---|---|---|---|---|");
    for tender in &o.tenders {
        let d = Daemon::start(
            o,
            &format!("first-{tender}"),
            &service("web", &o.image, tender, "idle_timeout = \"60s\""),
        )?;
        let addr = d.services()?.first().map(|s| s.0).ok_or("no service")?;
        let (mut cold, mut warm, mut ready) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..o.runs + 3 {
            let c = first_byte(addr)?;
            let w = first_byte(addr)?;
            let body = d.call("GET", "/v1/instances")?;
            let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            let r = v[0]["ready_ms"].as_f64().unwrap_or(f64::NAN);
            d.call("POST", "/v1/services/web/stop")?;
            // Wait until it is gone, so the next request is cold again.
            let deadline = Instant::now() + Duration::from_secs(10);
            while d.services()?.first().map_or(0, |s| s.1) > 0 {
                if Instant::now() > deadline {
                    return Err("instance did not stop".into());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            if i >= 3 {
                cold.push(c.as_secs_f64() * 1e3);
                warm.push(w.as_secs_f64() * 1e3);
                ready.push(r);
            }
        }
        let (cold, warm, ready) = (sorted(cold), sorted(warm), sorted(ready));
        println!(
            "| {tender} | {:.2} ms | {:.2} ms | {:.3} ms | {:.3} ms | {:.0}× | {:.2} ms |",
            pct(&cold, 0.5),
            pct(&cold, 0.99),
            pct(&warm, 0.5),
            pct(&warm, 0.99),
            pct(&cold, 0.5) / pct(&warm, 0.5),
            pct(&ready, 0.5)
        );
        d.stop();
    }
    println!();
    Ok(())
}

/// Forks and reaps `argv` `n` times with `parallel` at once; returns the
/// wall time.
fn native_burst(argv: &Path, n: usize, parallel: usize) -> Duration {
    let t0 = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..parallel {
            s.spawn(|| {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                    let _ = Command::new(argv).stdout(Stdio::null()).status();
                }
            });
        }
    });
    t0.elapsed()
}

fn spawn_rate(o: &Opts) -> Result<(), String> {
    let n = o.burst;
    let parallel = 64.min(n);
    println!("## Spawn rate: one request to each of {n} cold services at once ({parallel} clients in parallel)\n");
    println!("| | instances/s | burst wall time | first byte median | p99 | failed |");
    println!("|---|---|---|---|---|---|");
    let native = native_burst(&o.native, n, parallel);
    println!(
        "| native static hello, fork+exec+exit ({parallel} parallel) | {:.0} | {:.0} ms | | | |",
        n as f64 / native.as_secs_f64(),
        native.as_secs_f64() * 1e3
    );
    for tender in &o.tenders {
        let cfg: String = (0..n)
            .map(|i| service(&format!("s{i}"), &o.image, tender, "idle_timeout = \"60s\""))
            .collect();
        let d = Daemon::start(o, &format!("burst-{tender}"), &cfg)?;
        let addrs: Vec<SocketAddr> = d.services()?.into_iter().map(|s| s.0).collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results = std::sync::Mutex::new(Vec::new());
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..parallel {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= addrs.len() {
                        return;
                    }
                    let r = first_byte(addrs[i]);
                    results
                        .lock()
                        .unwrap()
                        .push(r.map(|d| d.as_secs_f64() * 1e3));
                });
            }
        });
        let wall = t0.elapsed();
        let results = results.into_inner().unwrap();
        let failed = results.iter().filter(|r| r.is_err()).count();
        let lat = sorted(results.into_iter().filter_map(Result::ok).collect());
        let running: usize = d.services()?.iter().map(|s| s.1).sum();
        println!(
            "| kilnd, {tender} ({running} instances running after) | {:.0} | {:.0} ms | {:.2} ms | {:.2} ms | {failed} |",
            (n - failed) as f64 / wall.as_secs_f64(),
            wall.as_secs_f64() * 1e3,
            pct(&lat, 0.5),
            pct(&lat, 0.99)
        );
        d.stop();
    }
    println!();
    Ok(())
}

/// Descriptors a process holds.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn mem_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// (RSS, PSS) in KiB of a process.
fn rss_pss_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("Pss:"))
}

fn density(o: &Opts) -> Result<(), String> {
    let n = o.density;
    println!(
        "## Density: {n} idle warm instances of {} (8 MiB guest memory each)\n",
        o.image.display()
    );
    println!("| tender | start-up of all | tender RSS / instance | tender PSS / instance | host memory / instance (MemAvailable) | kilnd / instance | kilnd descriptors: all (per instance) | sampled answers |");
    println!("|---|---|---|---|---|---|---|---|");
    for tender in &o.tenders {
        let cfg: String = (0..n)
            .map(|i| {
                service(
                    &format!("d{i}"),
                    &o.image,
                    tender,
                    "idle_timeout = \"1h\"\nwarm = true",
                )
            })
            .collect();
        // Baseline: kilnd with the same services and no instance.
        let cold_cfg: String = (0..n)
            .map(|i| service(&format!("d{i}"), &o.image, tender, "idle_timeout = \"1h\""))
            .collect();
        let base = Daemon::start(o, &format!("dens0-{tender}"), &cold_cfg)?;
        std::thread::sleep(Duration::from_millis(500));
        let kilnd_base = rss_pss_kib(base.child.id()).0;
        let fds_base = open_fds(base.child.id());
        base.stop();
        std::thread::sleep(Duration::from_millis(500));
        let avail0 = mem_available_kib();
        let t0 = Instant::now();
        let d = Daemon::start(o, &format!("dens-{tender}"), &cfg)?;
        let deadline = Instant::now() + Duration::from_secs(600);
        let (mut last, mut progress) = (0, Instant::now());
        let services = loop {
            let s = d.services()?;
            let ready = s.iter().filter(|s| !s.2.is_empty()).count();
            if ready == n {
                break s;
            }
            if ready > last {
                (last, progress) = (ready, Instant::now());
            }
            if Instant::now() > deadline || progress.elapsed() > Duration::from_secs(60) {
                return Err(format!(
                    "{ready} of {n} instances ready after {:.0} s; {}",
                    t0.elapsed().as_secs_f64(),
                    d.refusal()
                        .unwrap_or_else(|| "kilnd refused no instance".into())
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let startup = t0.elapsed();
        std::thread::sleep(Duration::from_secs(2));
        let avail1 = mem_available_kib();
        let (mut rss, mut pss) = (0u64, 0u64);
        for s in &services {
            for &pid in &s.2 {
                let (r, p) = rss_pss_kib(pid);
                rss += r;
                pss += p;
            }
        }
        let kilnd_rss = rss_pss_kib(d.child.id()).0;
        let fds = open_fds(d.child.id());
        let step = (services.len() / 50).max(1);
        let sample: Vec<&SocketAddr> = services.iter().step_by(step).map(|s| &s.0).collect();
        let ok = sample.iter().filter(|a| first_byte(***a).is_ok()).count();
        let per = |kib: u64| kib as f64 / n as f64 / 1024.0;
        println!(
            "| {tender} | {:.1} s | {:.2} MiB | {:.2} MiB | {:.2} MiB | {:.3} MiB | {fds} ({:.2}) | {ok}/{} |",
            startup.as_secs_f64(),
            per(rss),
            per(pss),
            per(avail0.saturating_sub(avail1)),
            per(kilnd_rss.saturating_sub(kilnd_base)),
            fds.saturating_sub(fds_base) as f64 / n as f64,
            sample.len()
        );
        d.stop();
        std::thread::sleep(Duration::from_secs(2));
    }
    println!("\n(host memory per instance counts everything the host gave up: tender processes, kernel page tables and KVM state, socket buffers, and kilnd's growth. kilnd's descriptors: all it holds with every instance running, and per instance beyond the same kilnd with no instance running, which already holds one listener per service.)\n");
    Ok(())
}

/// Entry point of `kiln-bench kilnd`.
pub fn main(args: Vec<String>) -> i32 {
    let o = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("kiln-bench kilnd: {e}");
            return 2;
        }
    };
    println!(
        "# kilnd: {} ({}), {} CPUs\n",
        o.image.display(),
        std::fs::metadata(&o.image)
            .map(|m| m.len() / 1024)
            .unwrap_or(0)
            .to_string()
            + " KiB",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let steps: [(&str, Step); 3] = [
        ("first", first_request),
        ("burst", spawn_rate),
        ("density", density),
    ];
    for (name, f) in steps {
        if o.only.as_deref().is_some_and(|only| only != name) {
            continue;
        }
        if let Err(e) = f(&o) {
            eprintln!("kiln-bench kilnd: {name}: {e}");
            return 1;
        }
    }
    0
}
