//! Networking on hvt: real images in real VMs.
//!
//! * `tests/images/ring-hostile` breaks every rule of the NET_RINGS
//!   shared-memory rings (`--net none`: no backend needed); each case must
//!   end the instance with a violation naming the ring problem (exit status
//!   139), or get its errno, and never crash the tender.
//! * `examples/http` served through passt (`-p`), once over the rings and
//!   once over NET_READ/NET_WRITE (`KILN_NET_RINGS=off`), checked from the
//!   host with plain std sockets on loopback; the `-v` report (printed on
//!   SIGINT) shows which path the frames took.
//!
//! Images are built with the `kiln` binary next to this test binary
//! (`cargo test --workspace` builds it). `kiln_hvt::run` ends its process,
//! so every instance runs in a child: this test binary, re-executed with
//! `KILN_HVT_NET_CHILD` describing the run. Without /dev/kvm, passt or the
//! `kiln` binary the tests say so loudly and pass.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{boot_here, config, rerun};
use kiln_image::Image;
use kiln_tender::net::{Attach, NetOptions, Publish};
use kiln_tender::RunConfig;
use kiln_testkit::{free_port, passt_available, root, skip, wait_child};

/// Upper bound for anything to happen (a hang, not a measurement).
const PATIENCE: Duration = Duration::from_secs(60);

/// The `kiln` binary of this build (target/<profile>/kiln, next to the
/// `deps` directory holding this test).
fn kiln_exe() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let candidates = [
        exe.parent()?.parent()?.join("kiln"),
        root().join("target/debug/kiln"),
    ];
    let found = candidates.into_iter().find(|p| p.is_file());
    if found.is_none() {
        skip("the kiln binary is not built (cargo build -p kiln-cli, or cargo test --workspace)");
    }
    found
}

/// Builds the guest crate at `dir` once per test process; `None` (loudly)
/// without a kiln binary.
fn image(dir: &str) -> Option<PathBuf> {
    Some(kiln_testkit::image(&kiln_exe()?, dir))
}

fn kvm_available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| match kiln_hvt::probe() {
        Ok(()) => true,
        Err(e) => {
            skip(&format!(
                "hvt network tests: KVM is not available here: {e}"
            ));
            false
        }
    })
}

fn have_passt() -> bool {
    passt_available("the hvt user-mode networking test does not run")
}

/// What a child runs, passed in `KILN_HVT_NET_CHILD` as
/// `TEST|IMAGE|NET|ENV|ARG`: NET is `none` or a `-p` spec, ENV one
/// `KEY=VALUE` or empty, ARG one argument or empty.
const CHILD: &str = "KILN_HVT_NET_CHILD";

/// In a child started for `test`: boots the instance it describes and
/// never returns. Returns in the parent.
fn child_mode(test: &str) {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let [name, image, net, env, arg] = parts[..] else {
        panic!("bad {CHILD}: {spec}");
    };
    if name != test {
        return;
    }
    let net = if net == "none" {
        NetOptions {
            attach: vec![Attach::from_str("none").unwrap()],
            ..NetOptions::default()
        }
    } else {
        NetOptions {
            publish: vec![Publish::from_str(net).unwrap()],
            ..NetOptions::default()
        }
    };
    let mut args = vec!["test".to_string()];
    if !arg.is_empty() {
        args.push(arg.to_string());
    }
    boot_here(RunConfig {
        args,
        env: if env.is_empty() {
            vec![]
        } else {
            vec![env.to_string()]
        },
        net,
        ..config(Image::load(Path::new(image)).expect("image loads"))
    })
}

fn child(test: &str, image: &Path, net: &str, env: &str, arg: &str) -> Command {
    let spec = format!("{test}|{}|{net}|{env}|{arg}", image.display());
    rerun(test, CHILD, &spec)
}

/// Waits for `child` with a deadline; kills it when it runs too long.
fn wait_with_deadline(mut child: Child, limit: Duration) -> Output {
    if wait_child(&mut child, limit).is_none() {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!(
            "instance did not end within {limit:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    child.wait_with_output().unwrap()
}

/// Cases that must end the instance, and what the report must say.
const VIOLATIONS: &[(&str, &str)] = &[
    (
        "producer-ahead",
        "network device 0: tx ring producer index is 1000 frames ahead of the consumer (at most 256)",
    ),
    (
        "producer-behind",
        "tx ring producer index is 4294967295 frames ahead of the consumer (at most 256)",
    ),
    (
        "slot-huge",
        "tx ring slot holds a frame of 2147483647 bytes (at most 1514)",
    ),
    (
        "slot-over-mtu",
        "tx ring slot holds a frame of 1515 bytes (at most 1514)",
    ),
    (
        "rx-consumer",
        "rx ring consumer index leaves 4294967289 frames in the ring (at most 256)",
    ),
    ("bootinfo", "(length 0x81000) is not writable guest memory"),
    (
        "outside",
        "rx ring at 0x40000000 (length 0x81000) is not writable guest memory",
    ),
    (
        "code",
        "rx ring at 0x100000 (length 0x81000) is not writable guest memory",
    ),
    (
        "tender-pages",
        "rx ring at 0x1000 (length 0x81000) is not writable guest memory",
    ),
    ("overlap", "overlaps the rx ring"),
    ("unaligned", "is not page aligned"),
];

/// Cases the tender answers without ending the instance; the image exits 0.
const RECOVERABLE: &[(&str, &str)] = &[
    ("twice", "second NET_RINGS returned -22"),
    ("no-device", "NET_RINGS for device 5 returned -19"),
    ("short-frame", "the short frame was dropped"),
    ("kick-flood", "survived the kicks"),
];

#[test]
fn hostile_rings_end_only_their_instance() {
    const TEST: &str = "hostile_rings_end_only_their_instance";
    child_mode(TEST);
    if !kvm_available() {
        return;
    }
    let Some(img) = image("tests/images/ring-hostile") else {
        return;
    };
    let run = |case: &str| {
        let c = child(TEST, &img, "none", "", case)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = wait_with_deadline(c, PATIENCE);
        let status = out.status.code();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("--- {case}: status {status:?}\n{text}");
        (status, text)
    };
    for (case, wanted) in VIOLATIONS {
        let (status, text) = run(case);
        assert_eq!(
            status,
            Some(i32::from(kiln_abi::EXIT_CRASHED)),
            "{case}:\n{text}"
        );
        assert!(
            text.contains("kiln: instance stopped: hypercall NET_RINGS: "),
            "{case}:\n{text}"
        );
        assert!(text.contains(wanted), "{case}: {wanted:?} not in\n{text}");
        assert!(!text.contains("survived"), "{case}:\n{text}");
        assert!(!text.contains("seccomp filter"), "{case}:\n{text}");
    }
    for (case, wanted) in RECOVERABLE {
        let (status, text) = run(case);
        assert_eq!(status, Some(0), "{case}:\n{text}");
        assert!(text.contains(wanted), "{case}: {wanted:?} not in\n{text}");
    }
    // A kick that is not a 4-byte `out` to the doorbell port.
    let (status, text) = run("doorbell-narrow");
    assert_eq!(status, Some(i32::from(kiln_abi::EXIT_CRASHED)), "{text}");
    assert!(text.contains("malformed doorbell"), "{text}");
    // The flood of kicks never reached the run loop: KVM caught them.
    let (_, text) = run("kick-flood");
    let line = text
        .lines()
        .find(|l| l.starts_with("kiln-hvt: exits by hypercall:"))
        .unwrap_or("");
    assert!(!line.contains("doorbell"), "kicks exited:\n{text}");
}

fn connect(port: u16) -> std::io::Result<BufReader<TcpStream>> {
    let s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(BufReader::new(s))
}

/// One GET on a keep-alive connection; returns the status line and body.
fn get(reader: &mut BufReader<TcpStream>, path: &str) -> std::io::Result<(String, String)> {
    reader
        .get_mut()
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())?;
    let mut status = String::new();
    if reader.read_line(&mut status)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A connection on which a first request was answered: passt accepts
/// connections before the guest listens, so retry until the guest answers.
fn first_connection(port: u16) -> BufReader<TcpStream> {
    let start = Instant::now();
    loop {
        if let Ok(mut r) = connect(port) {
            if let Ok((status, _)) = get(&mut r, "/") {
                assert!(status.starts_with("HTTP/1.1 200"), "{status}");
                return r;
            }
        }
        assert!(start.elapsed() < PATIENCE, "port {port}: no answer");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Serves `examples/http` through passt, with the rings or without, and
/// returns the `-v` report.
fn serve_http(test: &str, env: &str) -> Option<String> {
    if !kvm_available() || !have_passt() {
        return None;
    }
    let img = image("examples/http")?;
    let port = free_port();
    let mut c = child(test, &img, &format!("127.0.0.1:{port}:80"), env, "")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let served = std::panic::catch_unwind(|| {
        // Many requests on one connection, then several connections.
        let mut r = first_connection(port);
        for _ in 0..200 {
            let (status, body) = get(&mut r, "/").unwrap();
            assert!(status.starts_with("HTTP/1.1 200"), "{status}");
            assert!(!body.is_empty());
        }
        for _ in 0..20 {
            let mut r = connect(port).unwrap();
            let (status, body) = get(&mut r, "/health").unwrap();
            assert!(status.starts_with("HTTP/1.1 200"), "{status}");
            assert_eq!(body.trim(), "ok");
        }
    });
    // SIGINT: with -v the tender prints its report, then ends.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGINT) };
    let mut stderr = String::new();
    c.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let out = wait_with_deadline(c, PATIENCE);
    eprintln!("--- {test}: status {:?}\n{stderr}", out.status.code());
    if let Err(p) = served {
        std::panic::resume_unwind(p);
    }
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    Some(stderr)
}

fn exits_line(report: &str) -> &str {
    report
        .lines()
        .find(|l| l.starts_with("kiln-hvt: exits by hypercall:"))
        .unwrap_or_else(|| panic!("no exit counts in\n{report}"))
}

/// How many frames the rings carried: (in, out).
fn ring_frames(report: &str) -> (u64, u64) {
    let line = report
        .lines()
        .find(|l| l.starts_with("kiln-hvt: rings:"))
        .unwrap_or_else(|| panic!("no ring counters in\n{report}"));
    let mut words = line.split_whitespace();
    let number_before = |words: &mut std::str::SplitWhitespace<'_>, word: &str| {
        let mut last = "";
        for w in words.by_ref() {
            if w == word {
                return last.parse::<u64>().unwrap();
            }
            last = w;
        }
        panic!("{word} not in {line}");
    };
    let frames_in = number_before(&mut words, "frames");
    let frames_out = number_before(&mut words, "out");
    (frames_in, frames_out)
}

#[test]
fn http_over_the_rings() {
    const TEST: &str = "http_over_the_rings";
    child_mode(TEST);
    let Some(report) = serve_http(TEST, "") else {
        return;
    };
    let exits = exits_line(&report);
    assert!(exits.contains("NET_RINGS 1"), "{report}");
    assert!(!exits.contains("NET_READ"), "{report}");
    assert!(!exits.contains("NET_WRITE"), "{report}");
    assert!(!exits.contains("doorbell"), "kicks exited:\n{report}");
    let (frames_in, frames_out) = ring_frames(&report);
    assert!(frames_in >= 220 && frames_out >= 220, "{report}");
}

#[test]
fn http_over_hypercalls() {
    const TEST: &str = "http_over_hypercalls";
    child_mode(TEST);
    let Some(report) = serve_http(TEST, "KILN_NET_RINGS=off") else {
        return;
    };
    let exits = exits_line(&report);
    assert!(!exits.contains("NET_RINGS"), "{report}");
    assert!(exits.contains("NET_READ"), "{report}");
    assert!(exits.contains("NET_WRITE"), "{report}");
    assert_eq!(ring_frames(&report), (0, 0), "{report}");
}
