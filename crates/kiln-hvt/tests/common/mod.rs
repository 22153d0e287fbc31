//! Shared by kiln-hvt's tests: `kiln_hvt::run` ends its process, so each
//! instance boots in a child, this test binary re-executed for one test.
//! What other crates' tests share too is in kiln-testkit.

#![allow(dead_code)]

use std::process::{Command, Stdio};

use kiln_image::Image;
use kiln_tender::RunConfig;

/// Guest memory of a test instance.
pub const MEM: u64 = 32 << 20;

/// A verbose run of `image` with `args` ["test"], no environment, [`MEM`]
/// of memory, no disks and no network; change fields with `..config(i)`.
pub fn config(image: Image) -> RunConfig {
    RunConfig {
        image,
        args: vec!["test".into()],
        env: vec![],
        mem_size: MEM,
        disks: vec![],
        net: Default::default(),
        verbose: true,
        ready_fd: None,
        started: std::time::Instant::now(),
    }
}

/// Boots `cfg` in this process (a child) and never returns: the process
/// ends with the guest's status, or with 125 after printing the error and
/// its causes.
pub fn boot_here(cfg: RunConfig) -> ! {
    match kiln_hvt::run(cfg) {
        Err(e) => {
            let mut msg = format!("hvt error: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg += &format!(": {s}");
                src = s.source();
            }
            eprintln!("{msg}");
            std::process::exit(125)
        }
        Ok(never) => match never {},
    }
}

/// This test binary, to run only `test` (with `var` set to `value` to say
/// what the child boots), stdin closed.
pub fn rerun(test: &str, var: &str, value: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(var, value)
        .stdin(Stdio::null());
    c
}
