//! `kiln-bench ready`: how soon an instance says it serves, started the
//! way kilnd starts it: `kiln run -v --net fd:4 --ip 10.0.0.2/24
//! --ready-fd 3 IMAGE` with a datagram socket pair and a pipe the bench
//! holds the other ends of. Two figures per run, tenders interleaved:
//!
//! * `ready after`: what the tender prints with `-v` (from the start of
//!   `kiln run`'s `main` to the guest's READY);
//! * spawn to byte: from just before `fork` here to the READY byte arriving
//!   on the pipe (adds exec and the dynamic part of process start).
//!
//! Usage: `kiln-bench ready [--runs N] [--kiln PATH] [--image PATH]`.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Opts {
    runs: usize,
    kiln: String,
    image: String,
}

fn parse(args: Vec<String>) -> Result<Opts, String> {
    let mut o = Opts {
        runs: 20,
        kiln: "target/x86_64-unknown-linux-gnu/release/kiln".into(),
        image: "target/kiln/http.kiln".into(),
    };
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--runs" => o.runs = value()?.parse().map_err(|_| "--runs takes a number")?,
            "--kiln" => o.kiln = value()?,
            "--image" => o.image = value()?,
            "-h" | "--help" => {
                println!("usage: kiln-bench ready [--runs N] [--kiln PATH] [--image PATH]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(o)
}

/// `fd` copied to 10 or above, close-on-exec.
fn high(fd: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC takes an integer and returns a new descriptor.
    let raw = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is new and ours.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// One run: (`ready after` ms from `-v`, spawn-to-byte ms).
fn once(o: &Opts, tender: &str) -> Result<(f64, f64), String> {
    let io = |e: std::io::Error| e.to_string();
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: both are new and ours.
    let (ready_r, ready_w) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let (peer, guest) = UnixDatagram::pair().map_err(io)?;
    let w = high(ready_w.as_raw_fd()).map_err(io)?;
    let g = high(guest.as_raw_fd()).map_err(io)?;
    let (w_raw, g_raw) = (w.as_raw_fd(), g.as_raw_fd());
    let mut cmd = Command::new(&o.kiln);
    cmd.args(["run", "-v", "--tender", tender, "--net", "fd:4"])
        .args(["--ip", "10.0.0.2/24", "--ready-fd", "3", &o.image])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: only dup2 (async-signal-safe) between fork and exec, from
    // descriptors at 10 or above onto 3 and 4.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(w_raw, 3) < 0 || libc::dup2(g_raw, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(io)?;
    drop((w, g, ready_w, guest));
    let mut pfd = libc::pollfd {
        fd: ready_r.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut pfd, 1, 10_000) };
    let mut byte = [0u8; 1];
    // SAFETY: `byte` is valid for a one-byte write.
    let n = unsafe { libc::read(ready_r.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
    let to_byte = start.elapsed();
    // The `-v` line follows the byte; give it time before the kill.
    std::thread::sleep(Duration::from_millis(30));
    let _ = child.kill();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let _ = child.wait();
    drop(peer);
    if n != 1 || byte[0] != b'R' {
        return Err(format!("{tender}: no READY byte; stderr:\n{stderr}"));
    }
    let ready = stderr
        .lines()
        .find_map(|l| l.strip_prefix("kiln: ready after "))
        .and_then(|r| r.strip_suffix(" ms"))
        .and_then(|ms| ms.parse::<f64>().ok())
        .ok_or_else(|| format!("{tender}: no `ready after` line; stderr:\n{stderr}"))?;
    Ok((ready, to_byte.as_secs_f64() * 1e3))
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn main(args: Vec<String>) -> i32 {
    let o = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("kiln-bench ready: {e}");
            return 2;
        }
    };
    let mut tenders = vec!["spt"];
    if once(&o, "hvt").is_ok() {
        tenders.push("hvt");
    } else {
        eprintln!("kiln-bench ready: SKIPPING hvt: it does not start here");
    }
    let _ = once(&o, "spt");
    let mut results: Vec<(Vec<f64>, Vec<f64>)> = vec![(vec![], vec![]); tenders.len()];
    for _ in 0..o.runs {
        for (t, r) in tenders.iter().zip(results.iter_mut()) {
            match once(&o, t) {
                Ok((ready, byte)) => {
                    r.0.push(ready);
                    r.1.push(byte);
                }
                Err(e) => {
                    eprintln!("kiln-bench ready: {e}");
                    return 1;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    println!(
        "## Ready: `kiln run -v --net fd:4 --ip 10.0.0.2/24 --ready-fd 3 {}` ({} runs each, interleaved)\n",
        o.image, o.runs
    );
    println!(
        "| tender | `ready after` median ms | p90 | min | spawn to READY byte median ms | p90 |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (t, (ready, byte)) in tenders.iter().zip(results.iter_mut()) {
        ready.sort_by(f64::total_cmp);
        byte.sort_by(f64::total_cmp);
        println!(
            "| {t} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            pct(ready, 0.5),
            pct(ready, 0.9),
            ready.first().copied().unwrap_or(f64::NAN),
            pct(byte, 0.5),
            pct(byte, 0.9)
        );
    }
    0
}
