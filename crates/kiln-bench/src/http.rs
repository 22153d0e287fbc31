//! `kiln-bench http`: examples/http served by spt and hvt next to the same
//! handler compiled as a native Linux process (bench/native-http), in the
//! same run: requests/s and latency percentiles under wrk, in interleaved
//! rounds, then the time from spawning each server to its first successful
//! HTTP response.
//!
//! `--net user` (default) reaches the unikernels through `kiln run -p`
//! (passt); `--net tap:NAME --guest-ip A.B.C.D` through an existing tap whose
//! host side has an address in the same /24 (bench/run sets this up inside a
//! network namespace it creates, so no traffic leaves it).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Opts {
    kiln: String,
    image: String,
    native: String,
    duration: u32,
    rounds: usize,
    connections: u32,
    first_reply_runs: usize,
    net: String,
    guest_ip: String,
}

struct Contender {
    name: String,
    /// Command line that starts the server.
    argv: Vec<String>,
    /// Where it answers.
    addr: SocketAddr,
    rps: Vec<f64>,
    p50_ms: Vec<f64>,
    p99_ms: Vec<f64>,
    first_reply_ms: Vec<f64>,
}

fn parse(args: Vec<String>) -> Result<Opts, String> {
    let mut o = Opts {
        kiln: "target/x86_64-unknown-linux-gnu/release/kiln".into(),
        image: "target/kiln/http.kiln".into(),
        native: "target/bench/native-http".into(),
        duration: 5,
        rounds: 3,
        connections: 50,
        first_reply_runs: 30,
        net: "user".into(),
        guest_ip: "10.79.0.2".into(),
    };
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let mut v = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--kiln" => o.kiln = v()?,
            "--image" => o.image = v()?,
            "--native" => o.native = v()?,
            "--duration" => o.duration = v()?.parse().map_err(|_| "--duration: seconds")?,
            "--rounds" => o.rounds = v()?.parse().map_err(|_| "--rounds: a number")?,
            "--connections" => {
                o.connections = v()?.parse().map_err(|_| "--connections: a number")?
            }
            "--first-reply-runs" => o.first_reply_runs = v()?.parse().map_err(|_| "a number")?,
            "--net" => o.net = v()?,
            "--guest-ip" => o.guest_ip = v()?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(o)
}

fn spawn(argv: &[String]) -> std::io::Result<Child> {
    Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// One GET /health; true on a 200. The timeouts are short on purpose: a
/// SYN or request sent before the server is up is lost, and the figure must
/// say when the server could answer, not how long a client waited to retry
/// (a kernel client retries a lost SYN only after a second).
fn get_ok(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(5)));
    if s.write_all(b"GET /health HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    buf[..got].starts_with(b"HTTP/1.1 200")
}

/// Spawns, polls until the first 200, returns the elapsed time and the child.
fn first_reply(argv: &[String], addr: SocketAddr) -> Result<(Duration, Child), String> {
    let start = Instant::now();
    let mut child = spawn(argv).map_err(|e| format!("cannot start {}: {e}", argv[0]))?;
    loop {
        if get_ok(addr) {
            return Ok((start.elapsed(), child));
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{} exited with {status} before answering",
                argv.join(" ")
            ));
        }
        if start.elapsed() > Duration::from_secs(10) {
            stop(child);
            return Err(format!("{} did not answer within 10 s", argv.join(" ")));
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// Parses wrk's output: requests/s, p50 and p99 in milliseconds.
fn parse_wrk(out: &str) -> Option<(f64, f64, f64)> {
    let ms = |v: &str| -> Option<f64> {
        let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic())?);
        let n: f64 = num.parse().ok()?;
        Some(match unit {
            "us" => n / 1000.0,
            "ms" => n,
            "s" => n * 1000.0,
            _ => return None,
        })
    };
    let mut rps = None;
    let (mut p50, mut p99) = (None, None);
    for line in out.lines() {
        let mut f = line.split_whitespace();
        match (f.next(), f.next()) {
            (Some("Requests/sec:"), Some(v)) => rps = v.parse().ok(),
            (Some("50%"), Some(v)) => p50 = ms(v),
            (Some("99%"), Some(v)) => p99 = ms(v),
            _ => {}
        }
    }
    Some((rps?, p50?, p99?))
}

fn wrk(o: &Opts, addr: SocketAddr) -> Result<(f64, f64, f64), String> {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{}", o.connections),
            &format!("-d{}s", o.duration),
            "--latency",
        ])
        .arg(format!("http://{addr}/"))
        .output()
        .map_err(|e| format!("cannot run wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        eprintln!("kiln-bench: wrk against {addr} reported errors:\n{text}");
    }
    parse_wrk(&text).ok_or_else(|| format!("cannot read wrk's output:\n{text}"))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn p(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[((v.len() - 1) as f64 * q).round() as usize]
    }
}

pub fn main(args: Vec<String>) -> i32 {
    let o = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("kiln-bench http: {e}");
            return 2;
        }
    };
    let s = |x: &str| x.to_string();
    let mut contenders = vec![Contender {
        name: s("native process (same handler)"),
        argv: vec![o.native.clone(), s("18180")],
        addr: "127.0.0.1:18180".parse().unwrap(),
        rps: vec![],
        p50_ms: vec![],
        p99_ms: vec![],
        first_reply_ms: vec![],
    }];
    for (i, tender) in ["spt", "hvt"].into_iter().enumerate() {
        let mut argv = vec![o.kiln.clone(), s("run"), s("--tender"), s(tender)];
        let addr: SocketAddr = if o.net == "user" {
            let port = 18181 + i as u16;
            argv.extend([s("-p"), format!("127.0.0.1:{port}:80")]);
            format!("127.0.0.1:{port}").parse().unwrap()
        } else {
            argv.extend([
                s("--net"),
                o.net.clone(),
                s("--ip"),
                format!("{}/24", o.guest_ip),
            ]);
            format!("{}:80", o.guest_ip).parse().unwrap()
        };
        argv.push(o.image.clone());
        contenders.push(Contender {
            name: format!(
                "kiln {tender} ({})",
                if o.net == "user" {
                    "user-mode net, passt"
                } else {
                    "tap"
                }
            ),
            argv,
            addr,
            rps: vec![],
            p50_ms: vec![],
            p99_ms: vec![],
            first_reply_ms: vec![],
        });
    }
    // Throughput: interleaved rounds, a fresh server per round.
    for round in 0..o.rounds {
        for c in contenders.iter_mut() {
            let (_, child) = match first_reply(&c.argv, c.addr) {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("kiln-bench http: {}: {e}", c.name);
                    return 1;
                }
            };
            let r = wrk(&o, c.addr);
            stop(child);
            match r {
                Ok((rps, p50, p99)) => {
                    eprintln!(
                        "round {round}: {:<40} {rps:>10.0} req/s  p50 {p50:.3} ms  p99 {p99:.3} ms",
                        c.name
                    );
                    c.rps.push(rps);
                    c.p50_ms.push(p50);
                    c.p99_ms.push(p99);
                }
                Err(e) => {
                    eprintln!("kiln-bench http: {}: {e}", c.name);
                    return 1;
                }
            }
        }
    }
    // Cold start to first reply, interleaved.
    for _ in 0..o.first_reply_runs {
        for c in contenders.iter_mut() {
            match first_reply(&c.argv, c.addr) {
                Ok((t, child)) => {
                    c.first_reply_ms.push(t.as_secs_f64() * 1e3);
                    stop(child);
                }
                Err(e) => {
                    eprintln!("kiln-bench http: {}: {e}", c.name);
                    return 1;
                }
            }
        }
    }
    let native_rps = median(&mut contenders[0].rps.clone());
    let native_first = median(&mut contenders[0].first_reply_ms.clone());
    println!(
        "## HTTP: wrk -t1 -c{} -d{}s, median of {} interleaved rounds ({} networking)\n",
        o.connections, o.duration, o.rounds, o.net
    );
    println!("| server | req/s | vs native | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|---:|");
    for c in contenders.iter_mut() {
        let rps = median(&mut c.rps);
        println!(
            "| {} | {:.0} | {:.2}x | {:.3} | {:.3} |",
            c.name,
            rps,
            rps / native_rps,
            median(&mut c.p50_ms),
            median(&mut c.p99_ms)
        );
    }
    println!(
        "\n## Spawn to first HTTP 200 ({} runs each, interleaved)\n",
        o.first_reply_runs
    );
    println!("| server | median ms | p90 ms | min ms | vs native |");
    println!("|---|---:|---:|---:|---:|");
    for c in contenders.iter_mut() {
        let med = median(&mut c.first_reply_ms);
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2}x |",
            c.name,
            med,
            p(&mut c.first_reply_ms, 0.9),
            p(&mut c.first_reply_ms, 0.0),
            med / native_first
        );
    }
    let size = std::fs::metadata(&o.image).map(|m| m.len()).unwrap_or(0);
    println!(
        "\nimage {}: {} bytes ({:.1} KiB)",
        o.image,
        size,
        size as f64 / 1024.0
    );
    0
}

#[cfg(test)]
mod tests {
    use super::parse_wrk;

    #[test]
    fn reads_wrk_output() {
        let out = "Running 5s test @ http://127.0.0.1:8080/\n  Latency Distribution\n     50%  310.00us\n     75%  400.00us\n     90%    1.20ms\n     99%    2.50ms\n  100 requests in 5.00s, 10.00KB read\nRequests/sec:  12345.67\nTransfer/sec:      2.00KB\n";
        let (rps, p50, p99) = parse_wrk(out).unwrap();
        assert_eq!(rps, 12345.67);
        assert!((p50 - 0.31).abs() < 1e-9);
        assert!((p99 - 2.5).abs() < 1e-9);
        assert!(parse_wrk("garbage").is_none());
    }
}
