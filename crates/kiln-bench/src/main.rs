//! `kiln-bench`: prints the foundation figures of kiln next to native
//! baselines measured in the same run, interleaved so that host noise hits
//! every contender alike.
//!
//! * cold start, process exec to exit: `kiln run --tender {spt,hvt}` of the
//!   hello image vs a native static hello process (median, p90, ratio);
//! * hvt: time from VM creation to the first exit, and exits per run;
//! * image size of hello vs the native static binary;
//! * peak RSS of one instance per tender (from wait4's rusage).
//!
//! Usage: `kiln-bench [--runs N] [--kiln PATH] [--image PATH] [--native PATH]`;
//! `kiln-bench http ...` measures HTTP serving instead (see `http.rs`),
//! `kiln-bench kilnd ...` kilnd's cold first request, spawn rate and density
//! (see `kilnd.rs`), `kiln-bench ready ...` the time to READY as kilnd
//! starts instances (see `ready.rs`), `kiln-bench peer ...` what kilnd's
//! protection of an instance's link costs per frame (see `peer.rs`).
//! `bench/run` builds everything and calls it.

mod http;
mod kilnd;
mod peer;
mod proc;
mod ready;

use std::path::PathBuf;
use std::process::Command;

struct Args {
    runs: usize,
    kiln: PathBuf,
    image: PathBuf,
    native: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        runs: 200,
        kiln: "target/x86_64-unknown-linux-gnu/release/kiln".into(),
        image: "target/kiln/hello.kiln".into(),
        native: "target/bench/hello-native".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--runs" => args.runs = value()?.parse().map_err(|_| "--runs takes a number")?,
            "--kiln" => args.kiln = value()?.into(),
            "--image" => args.image = value()?.into(),
            "--native" => args.native = value()?.into(),
            "-h" | "--help" => {
                println!(
                    "usage: kiln-bench [--runs N] [--kiln PATH] [--image PATH] [--native PATH]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    for p in [&args.kiln, &args.image, &args.native] {
        if !p.exists() {
            return Err(format!(
                "{} does not exist (run bench/run, which builds it)",
                p.display()
            ));
        }
    }
    Ok(args)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx]
}

struct Series {
    name: String,
    cmd: Vec<String>,
    times_ms: Vec<f64>,
    max_rss_kib: u64,
    stderr_tail: String,
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("http") => std::process::exit(http::main(std::env::args().skip(2).collect())),
        Some("kilnd") => std::process::exit(kilnd::main(std::env::args().skip(2).collect())),
        Some("ready") => std::process::exit(ready::main(std::env::args().skip(2).collect())),
        Some("peer") => std::process::exit(peer::main(std::env::args().skip(2).collect())),
        _ => {}
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kiln-bench: {e}");
            std::process::exit(2);
        }
    };
    let kiln = args.kiln.display().to_string();
    let image = args.image.display().to_string();
    let hvt_ok = proc::run_once(&[&kiln, "run", "--tender", "hvt", &image])
        .map(|r| r.status == 0)
        .unwrap_or(false);
    let mut series = vec![Series {
        name: "native static hello".into(),
        cmd: vec![args.native.display().to_string()],
        times_ms: vec![],
        max_rss_kib: 0,
        stderr_tail: String::new(),
    }];
    for tender in ["spt", "hvt"] {
        if tender == "hvt" && !hvt_ok {
            eprintln!(
                "kiln-bench: SKIPPING hvt: `kiln run --tender hvt` does not work on this host"
            );
            continue;
        }
        series.push(Series {
            name: format!("kiln run --tender {tender}"),
            cmd: vec![
                kiln.clone(),
                "run".into(),
                "--tender".into(),
                tender.into(),
                image.clone(),
            ],
            times_ms: vec![],
            max_rss_kib: 0,
            stderr_tail: String::new(),
        });
    }
    // Warm the page cache and the dynamic loader's caches.
    for s in &series {
        let argv: Vec<&str> = s.cmd.iter().map(String::as_str).collect();
        let _ = proc::run_once(&argv);
    }
    for _ in 0..args.runs {
        for s in series.iter_mut() {
            let argv: Vec<&str> = s.cmd.iter().map(String::as_str).collect();
            match proc::run_once(&argv) {
                Ok(r) if r.status == 0 => {
                    s.times_ms.push(r.wall.as_secs_f64() * 1e3);
                    s.max_rss_kib = s.max_rss_kib.max(r.max_rss_kib);
                }
                Ok(r) => {
                    eprintln!(
                        "kiln-bench: {} exited with {}: {}",
                        s.name, r.status, r.stderr
                    );
                    std::process::exit(1);
                }
                Err(e) => {
                    eprintln!("kiln-bench: cannot run {}: {e}", s.name);
                    std::process::exit(1);
                }
            }
        }
    }
    for s in series.iter_mut() {
        s.times_ms.sort_by(|a, b| a.total_cmp(b));
        let argv: Vec<&str> = s.cmd.iter().map(String::as_str).collect();
        if s.name.contains("hvt") {
            let mut v = argv.clone();
            v.insert(2, "-v");
            if let Ok(r) = proc::run_once(&v) {
                s.stderr_tail = r.stderr;
            }
        }
    }

    let native_median = percentile(&series[0].times_ms, 0.5);
    println!(
        "## Cold start: process exec to exit ({} runs each, interleaved)\n",
        args.runs
    );
    println!("| contender | median ms | p90 ms | min ms | vs native | peak RSS KiB |");
    println!("|---|---:|---:|---:|---:|---:|");
    for s in &series {
        let med = percentile(&s.times_ms, 0.5);
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.2}x | {} |",
            s.name,
            med,
            percentile(&s.times_ms, 0.9),
            s.times_ms.first().copied().unwrap_or(f64::NAN),
            med / native_median,
            s.max_rss_kib
        );
    }
    if let Some(hvt) = series.iter().find(|s| s.name.contains("hvt")) {
        println!("\n## hvt details (from `kiln run -v`)\n");
        for line in hvt.stderr_tail.lines().filter(|l| l.starts_with("kiln")) {
            println!("    {line}");
        }
    }
    let size = |p: &PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    println!("\n## Image size\n");
    println!("| file | bytes | KiB |");
    println!("|---|---:|---:|");
    for (name, p) in [
        ("hello.kiln", &args.image),
        ("native static hello", &args.native),
    ] {
        println!("| {name} | {} | {:.1} |", size(p), size(p) as f64 / 1024.0);
    }
    let host = Command::new("uname").arg("-srm").output().ok();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "\nhost: {} | {} | {} cpus",
        host.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default(),
        cpu,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
}
