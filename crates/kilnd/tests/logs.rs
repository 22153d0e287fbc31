//! What instances print, end to end: a real kilnd keeping the output of
//! real `kiln run` instances of the console-flood image.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// One `[[service]]` of the console-flood image printing `line` and a
/// newline until `bytes` are out.
fn flood_service(name: &str, line: &str, bytes: usize) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nimage = \"{}\"\nlisten = \"127.0.0.1:0\"\nguest_port = 80\ntender = \"spt\"\nmemory = \"16M\"\nidle_timeout = \"600s\"\nready_timeout = \"300s\"\nenv = {{ FLOOD_LINE = \"{line}\", FLOOD_BYTES = \"{bytes}\" }}\n",
        image("tests/images/console-flood").display()
    )
}

/// kilnd's resident memory, from /proc/PID/status.
fn vm_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

/// Waits (bounded) until kilnd has taken in everything `name`'s instance
/// printed: the image's last line is in the service's log.
fn wait_until_logged(k: &Kilnd, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (st, body) = k.call("GET", &format!("/v1/services/{name}/logs?lines=5"));
        assert_eq!(st, 200, "{body}");
        if body.contains("console-flood: done") {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{name}'s output never reached its log:\n{body}\n{}",
            k.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_flood_of_console_lines_leaves_kilnds_memory_bounded() {
    const MIB: usize = 1 << 20;
    // Bare newlines (the text budget used to count them as free) and
    // one-character lines (whose real cost is mostly per-line overhead).
    let config = flood_service("blank", "", 8 * MIB)
        + &flood_service("short1", "a", 4 * MIB)
        + &flood_service("short2", "a", 4 * MIB);
    let dir = scratch("flood");
    let path = dir.join("services.toml");
    std::fs::write(&path, config).unwrap();
    // Not --verbose: the echo of every line would land in this test's memory.
    let k = Kilnd::launch(
        dir,
        path,
        &Opts {
            quiet: true,
            ..Opts::default()
        },
    );
    let pid = k.child.id();
    let before = vm_rss(pid);
    for name in ["blank", "short1", "short2"] {
        let (st, body) = k.call("POST", &format!("/v1/services/{name}/start"));
        assert_eq!(st, 200, "{name}: {body}\n{}", k.log());
    }
    let mut tails = Vec::new();
    for name in ["blank", "short1", "short2"] {
        tails.push(wait_until_logged(&k, name));
    }
    let after = vm_rss(pid);
    let grown = after.saturating_sub(before);
    eprintln!(
        "kilnd's RSS: {:.1} MiB before the flood, {:.1} MiB after 16 MiB of console lines (+{:.1} MiB)",
        before as f64 / MIB as f64,
        after as f64 / MIB as f64,
        grown as f64 / MIB as f64
    );
    // The logs may keep 4 MiB in all; the rest is three instances' worth of
    // links and tasks, and the allocator's slack.
    assert!(
        grown < 40 * MIB as u64,
        "kilnd grew by {} MiB while instances printed 16 MiB of short lines",
        grown >> 20
    );
    // What is kept is the newest output.
    for t in &tails {
        assert!(t.contains("console-flood: done"), "{t}");
    }
}
