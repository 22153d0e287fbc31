//! Shared by the boot tests: building images once and running `kiln`.
//! What the other crates' tests share too is in kiln-testkit.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

pub use kiln_testkit::root;

/// The kiln binary under test.
pub fn kiln() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.current_dir(root());
    c
}

/// Builds the crate at `dir` (relative to the root) with the kiln under
/// test, once per test process, and returns the image path.
pub fn image(dir: &str) -> std::path::PathBuf {
    kiln_testkit::image(Path::new(env!("CARGO_BIN_EXE_kiln")), dir)
}

/// Whether hvt can run here; prints a loud notice when it cannot.
pub fn hvt_available() -> bool {
    kiln_testkit::hvt_available("hvt boot tests")
}

/// The tenders to test on this host.
pub fn tenders() -> Vec<&'static str> {
    kiln_testkit::tenders("hvt boot tests")
}

/// Result of one `kiln run`.
pub struct Run {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status {}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

fn finish(out: Output) -> Run {
    use std::os::unix::process::ExitStatusExt;
    Run {
        status: out
            .status
            .code()
            .unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0)),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `kiln run --tender T [extra...] IMAGE [args...]`.
pub fn run(tender: &str, image: &Path, extra: &[&str], args: &[&str]) -> Run {
    let mut c = kiln();
    c.args(["run", "--tender", tender]).args(extra).arg(image);
    if !args.is_empty() {
        c.arg("--").args(args);
    }
    finish(c.output().expect("run kiln"))
}
